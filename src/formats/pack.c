/* Packing to the exact bit layout (docs/formats.md, "Packed layout").
 *
 * A packed tensor is: an optional tensor header (fp32 scale [+ u8 zero point]
 * for per-tensor int, fp32 s_t for NVFP4), then each row starting on a byte
 * boundary. Inside a row one LSB-first bit stream holds, per block/group, the
 * scale code then the element codes; a short last block is padded to full size.
 * Quantisation itself is the same code as fake quantisation (qkern.h).
 */
#include "qkern.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

/* LSB-first bit streams through a 64-bit accumulator (codes are <= 32 bits). */
typedef struct { uint8_t *p; uint64_t acc; int n; } bitw;
typedef struct { const uint8_t *p, *end; uint64_t acc; int n; } bitr;

static inline void put(bitw *w, uint32_t v, int bits)
{
    w->acc |= (uint64_t)(v & (uint32_t)((1ull << bits) - 1)) << w->n;
    w->n += bits;
    while (w->n >= 8) {
        *w->p++ = (uint8_t)w->acc;
        w->acc >>= 8;
        w->n -= 8;
    }
}

static inline void flush(bitw *w)
{
    if (w->n > 0) *w->p++ = (uint8_t)w->acc;
    w->acc = 0;
    w->n = 0;
}

static inline uint32_t get(bitr *r, int bits)
{
    while (r->n < bits) {
        r->acc |= (uint64_t)(r->p < r->end ? *r->p++ : 0) << r->n;
        r->n += 8;
    }
    uint32_t v = (uint32_t)(r->acc & ((1ull << bits) - 1));
    r->acc >>= bits;
    r->n -= bits;
    return v;
}

static size_t header_bytes(const bq_format *f)
{
    if (scheme_of(f)->tensor_factor) return 4;
    if (format_scale_place(f) == SCALE_TENSOR) return f->asym ? 5 : 4;
    return 0;
}

/* Elements sharing one scale in a row, and the scale bits per group. */
size_t pack_group_len(const bq_format *f, size_t cols)
{
    scale_place p = format_scale_place(f);
    return p == SCALE_GROUP || p == SCALE_BLOCK ? (size_t)f->block : cols;
}

static int group_scale_bits(const bq_format *f)
{
    return format_rows_unscaled(f) ? 0 : f->scale_bits;
}

static size_t row_bytes(const bq_format *f, size_t cols)
{
    if (!cols) return 0;
    size_t g = pack_group_len(f, cols);
    size_t ng = (cols + g - 1) / g;
    size_t bits = ng * ((size_t)group_scale_bits(f) + g * (size_t)f->el.bits);
    return (bits + 7) / 8;
}

size_t bq_packed_size(const bq_format *f, size_t rows, size_t cols)
{
    size_t rb = row_bytes(f, cols);
    if (rows && rb > (SIZE_MAX - 8) / rows) return SIZE_MAX;
    return header_bytes(f) + rows * rb;
}

/* ---- element codes -------------------------------------------------------- */

/* Code of grid value q (already on the element's grid); UINT32_MAX if unrepresentable. */
static uint32_t elem_code(const elem_t *e, float q, int E)
{
    switch (e->kind) {
    case EK_FP32: return f2u(q);
    case EK_MF: return mf_encode(e, q);
    case EK_LOG: {
        if (q != q || fabsf(q) == INFINITY) return UINT32_MAX;
        uint32_t sign = signbit(q) ? 1u << (e->bits - 1) : 0;
        if (q == 0.0f) return sign;
        return sign | (uint32_t)(floor_log2f(fabsf(q)) - E - e->lemin + 1);
    }
    default: {
        if (q != q) return UINT32_MAX;
        int32_t n = (int32_t)(q * pow2f(e->frac));
        uint32_t mask = e->bits == 32 ? UINT32_MAX : (1u << e->bits) - 1;
        if (e->signmag) return (signbit(q) ? 1u << (e->bits - 1) : 0) | (uint32_t)abs(n);
        return (uint32_t)n & mask;
    }
    }
}

static float elem_value(const elem_t *e, uint32_t c, int E)
{
    switch (e->kind) {
    case EK_FP32: return u2f(c);
    case EK_MF: return mf_decode(e, c);
    case EK_LOG: {
        uint32_t k = c & ((1u << (e->bits - 1)) - 1);
        float v = k ? ldexpf(1.0f, (int)k - 1 + e->lemin + E) : 0.0f;
        return (c >> (e->bits - 1)) & 1 ? -v : v;
    }
    default: {
        int32_t n;
        if (e->signmag) {
            n = (int32_t)(c & ((1u << (e->bits - 1)) - 1));
            float v = ldexpf((float)n, -e->frac);
            return (c >> (e->bits - 1)) & 1 ? -v : v;
        }
        if (e->lo < 0 && (c >> (e->bits - 1)) & 1) n = (int32_t)c - (int32_t)(1u << e->bits);
        else n = (int32_t)c;
        return ldexpf((float)n, -e->frac);
    }
    }
}

/* ---- scale codes ---------------------------------------------------------- */

static int scale_nan_code(const bq_format *f, uint32_t *code)
{
    switch (scheme_of(f)->nan_code) {
    case NAN_CODE_FF: *code = 0xff; return 1;
    case NAN_CODE_MINIFLOAT:
        *code = mf_encode(&f->scale, NAN);
        if (f->asym && *code != UINT32_MAX) *code |= *code << 16;  /* d and the minimum both NaN */
        return *code != UINT32_MAX;
    default: return 0;
    }
}

/* Decode a block scale code into the arithmetic of bscale; returns 0 if NaN. */
static int scale_from_code(const bq_format *f, const qctx *c, uint32_t code, bscale *s)
{
    memset(s, 0, sizeof *s);
    s->pow2 = 1;
    s->post2 = 1.0f;
    switch (f->sch) {
    case SCH_MX: if (code == 0xff) return 0; s->E = (int)code - 127; break;
    case SCH_BFP: s->E = (int)code - 127; break;
    case SCH_BM: s->E = f->el.bias - (int8_t)(uint8_t)code; break;
    case SCH_BL: s->E = (int8_t)(uint8_t)code; break;
    default: {
        float sc = mf_decode(&f->scale, code);
        if (sc != sc) return 0;
        s->pow2 = 0;
        s->post1 = sc;
        if (scheme_of(f)->tensor_factor) s->post2 = c->tensor_scale;
        return 1;
    }
    }
    split_pow2(s->E, &s->post1, &s->post2);
    return 1;
}

static float dequant(const bq_format *f, const bscale *s, float q)
{
    if (!scheme_of(f)->linear) return q;  /* log codes carry the block shift already */
    return block_deq(s, q);
}

/* ---- pack ------------------------------------------------------------------ */

static bq_status pack_row(const bq_format *f, const qctx *c, const float *x, size_t cols, size_t idx0, bitw *w)
{
    const elem_t *e = &f->el;
    size_t g = pack_group_len(f, cols);
    const scale_place sp = format_scale_place(f);
    for (size_t b = 0; b < cols; b += g) {
        size_t n = cols - b < g ? cols - b : g;
        const float *xb = x + b;
        uint32_t code;
        if (sp != SCALE_BLOCK) {
            float s = c->tensor_scale, z = c->tensor_zero;
            int bad = c->tensor_nonfinite;
            if (format_float_group_scale(f)) {
                int_group_scale(f, xb, n, &s, &z, &bad);
                put(w, f2u(s), 32);
                if (f->asym) put(w, (uint32_t)z, 8);
            }
            for (size_t i = 0; i < g; i++) {
                float q = 0.0f;
                if (i < n) {
                    if (sp == SCALE_NONE) q = elem_quant(e, xb[i], c->round, c->seed, idx0 + b + i);
                    else if (bad || !(s > 0.0f)) q = f->asym ? z : 0.0f;
                    else if (f->asym) q = asym_q(e, xb[i], s, z, c->round, c->seed, idx0 + b + i);
                    else q = elem_quant(e, xb[i] / s, c->round, c->seed, idx0 + b + i);
                }
                if ((code = elem_code(e, q, 0)) == UINT32_MAX)
                    return bq_fail(BQ_ERR_NONFINITE, "format '%s' has no code for %g (element %zu)",
                                   f->name, (double)xb[i], idx0 + b + i);
                put(w, code, e->bits);
            }
            continue;
        }
        /* block schemes */
        float amax = 0.0f;
        int bad = 0;
        for (size_t i = 0; i < n; i++) {
            float a = fabsf(xb[i]);
            amax = a > amax ? a : amax;
            bad |= !(a <= FLT_MAX);
        }
        if (bad) {
            if (!scale_nan_code(f, &code))
                return bq_fail(BQ_ERR_NONFINITE, "format '%s' cannot store NaN/Inf (block at element %zu)",
                               f->name, idx0 + b);
            put(w, code, f->scale_bits);
            for (size_t i = 0; i < g; i++) put(w, 0, e->bits);
            continue;
        }
        if (f->ggml) {  /* llama.cpp's rule: its own scale and codes */
            int8_t q[32];
            put(w, ggml_block(f, xb, n, q), f->scale_bits);
            for (size_t i = 0; i < g; i++) put(w, elem_code(e, i < n ? (float)q[i] : 0.0f, 0), e->bits);
            continue;
        }
        bscale s = block_scale(f, c, amax);
        put(w, s.pow2 ? s.code : mf_encode(&f->scale, s.post1), f->scale_bits);
        for (size_t i = 0; i < g; i++) {
            float q = 0.0f;
            if (i < n) block_elem(f, &s, xb[i], c->round, c->seed, idx0 + b + i, &q);
            put(w, elem_code(e, q, s.E), e->bits);
        }
    }
    return BQ_OK;
}

typedef struct {
    const bq_format *f;
    const qctx *c;
    const float *in;
    uint8_t *out;
    size_t rb, cols;
    pack_codes_fn fast;  /* NULL: every row through pack_row */
    char msg[256];
    bq_status st;
    size_t failed;  /* 1 + first failing row, 0 if none */
    pthread_mutex_t mu;
} pjob;

static void pack_range(void *arg, size_t r0, size_t r1)
{
    pjob *j = arg;
    /* the fast path's buffers: a row's grid values, its codes (the last group padded), its scale codes */
    size_t g = pack_group_len(j->f, j->cols), ng = (j->cols + g - 1) / g;
    float *tmp = j->fast ? malloc(j->cols * sizeof *tmp) : NULL;
    uint8_t *ec = tmp ? malloc(ng * g) : NULL;
    uint32_t *sc = ec ? malloc(ng * sizeof *sc) : NULL;
    for (size_t r = r0; r < r1; r++) {
        uint8_t *row = j->out + r * j->rb;
        const float *x = j->in + r * j->cols;
        if (sc && j->fast(j->f, j->c, x, j->cols, r * j->cols, sc, ec, tmp)) {
            pack_row_put(j->f, row, j->cols, sc, ec);
            continue;
        }
        bitw w = {row, 0, 0};
        bq_status st = pack_row(j->f, j->c, x, j->cols, r * j->cols, &w);
        flush(&w);
        if (st) {
            pthread_mutex_lock(&j->mu);
            if (!j->failed || r < j->failed - 1) {  /* report the first failing row */
                j->failed = r + 1;
                j->st = st;
                snprintf(j->msg, sizeof j->msg, "%s", bq_last_error());
            }
            pthread_mutex_unlock(&j->mu);
            break;
        }
    }
    free(tmp);
    free(ec);
    free(sc);
}

/* bq_pack, with or without the per-ISA code kernels (fast 0: pack_row alone,
 * the reference the tests hold the kernels to). */
bq_status pack_tensor(const bq_format *f, const float *in, size_t rows, size_t cols, const bq_qopts *o,
                      uint8_t *out, size_t out_size, int fast)
{
    if (!f || !in || !out) return bq_fail(BQ_ERR_ARG, "null argument");
    size_t need = bq_packed_size(f, rows, cols);
    if (out_size < need) return bq_fail(BQ_ERR_ARG, "output buffer holds %zu bytes, %zu needed", out_size, need);
    qctx c;
    bq_status st = bq_tensor_ctx(f, in, rows, cols, o, &c);
    if (st) return st;
    memset(out, 0, need);
    size_t h = header_bytes(f);
    if (h) {
        float s = c.tensor_nonfinite ? NAN : c.tensor_scale;
        memcpy(out, &s, 4);
        if (h == 5) out[4] = (uint8_t)c.tensor_zero;
    }
    pjob j = {.f = f, .c = &c, .in = in, .out = out + h, .rb = row_bytes(f, cols), .cols = cols,
              .fast = fast ? bq_pack_codes_for(f) : NULL};
    pthread_mutex_init(&j.mu, NULL);
    bq_parallel_for(rows, rows * cols < (1u << 16) ? 1 : (o ? o->threads : 0), pack_range, &j);
    pthread_mutex_destroy(&j.mu);
    if (j.failed) {
        bq_fail(j.st, "%s", j.msg);
        return j.st;
    }
    return BQ_OK;
}

bq_status bq_pack(const bq_format *f, const float *in, size_t rows, size_t cols, const bq_qopts *o,
                  uint8_t *out, size_t out_size)
{
    return pack_tensor(f, in, rows, cols, o, out, out_size, 1);
}

/* ---- unpack ---------------------------------------------------------------- */

static void unpack_row(const bq_format *f, const qctx *c, bitr *rd, size_t cols, float *y)
{
    const elem_t *e = &f->el;
    size_t g = pack_group_len(f, cols);
    const scale_place sp = format_scale_place(f);
    for (size_t b = 0; b < cols; b += g) {
        size_t n = cols - b < g ? cols - b : g;
        if (sp != SCALE_BLOCK) {
            float s = c->tensor_scale, z = c->tensor_zero;
            if (format_float_group_scale(f)) {
                s = u2f(get(rd, 32));
                if (f->asym) z = (float)get(rd, 8);
            }
            for (size_t i = 0; i < g; i++) {
                float q = elem_value(e, get(rd, e->bits), 0);
                if (i >= n) continue;
                if (sp == SCALE_NONE) y[b + i] = q;
                else y[b + i] = s != s ? NAN : (f->asym ? asym_deq(q, z, s) : deq_sat(q, s, 1.0f)) + 0.0f;
            }
            continue;
        }
        if (f->ggml) {  /* llama.cpp's blocks: q * d (+ m) */
            float d, m;
            int ok = ggml_scale(f, get(rd, f->scale_bits), &d, &m);
            for (size_t i = 0; i < g; i++) {
                float q = elem_value(e, get(rd, e->bits), 0);
                if (i < n) y[b + i] = ok ? ggml_value(f, q, d, m) : NAN;
            }
            continue;
        }
        bscale s;
        int ok = scale_from_code(f, c, get(rd, f->scale_bits), &s);
        for (size_t i = 0; i < g; i++) {
            uint32_t code = get(rd, e->bits);
            if (i < n) y[b + i] = ok ? dequant(f, &s, elem_value(e, code, s.E)) : NAN;
        }
    }
}

bq_status bq_unpack(const bq_format *f, const uint8_t *in, size_t in_size, size_t rows, size_t cols, float *out)
{
    if (!f || !in || !out) return bq_fail(BQ_ERR_ARG, "null argument");
    size_t need = bq_packed_size(f, rows, cols);
    if (in_size != need)
        return bq_fail(BQ_ERR_SHAPE, "packed data is %zu bytes; format '%s' at %zux%zu takes %zu",
                       in_size, f->name, rows, cols, need);
    return pack_decode_rows(f, in, cols, 0, rows, out);
}

/* ---- helpers for the packed-weight kernels (src/kernels) ------------------- */

size_t pack_header_bytes(const bq_format *f) { return header_bytes(f); }
size_t pack_row_bytes(const bq_format *f, size_t cols) { return row_bytes(f, cols); }

float pack_tensor_scale(const bq_format *f, const uint8_t *packed)
{
    float s = 1.0f;
    if (header_bytes(f)) memcpy(&s, packed, 4);
    return s;
}

bq_status pack_decode_rows(const bq_format *f, const uint8_t *in, size_t cols, size_t r0, size_t r1, float *out)
{
    qctx c;
    memset(&c, 0, sizeof c);
    c.cols = cols;
    size_t h = header_bytes(f);
    if (h) {
        memcpy(&c.tensor_scale, in, 4);
        if (h == 5) c.tensor_zero = in[4];
    }
    size_t rb = row_bytes(f, cols);
    for (size_t r = r0; r < r1; r++) {
        bitr rd = {in + h + r * rb, in + h + (r + 1) * rb, 0, 0};
        unpack_row(f, &c, &rd, cols, out + (r - r0) * cols);
    }
    return BQ_OK;
}

float pack_elem_value(const bq_format *f, uint32_t code) { return elem_value(&f->el, code, 0); }

void format_int_grid(bq_format *f)
{
    f->igrid = 0;
    if (f->el.bits > 8 || f->el.kind == EK_LOG || f->el.kind == EK_FP32) return;
    int n = 1 << f->el.bits, m = 0;
    if (f->asym) return;  /* zero points and minimums are not a scale times a grid */
    for (int c = 0; c < n; c++) {
        float v = pack_elem_value(f, (uint32_t)c);
        if (!isfinite(v)) return;
        int k = 0;
        while (k <= 16 && ldexpf(v, k) != floorf(ldexpf(v, k))) k++;
        if (k > 16) return;
        m = k > m ? k : m;
    }
    f->ilo = 0;
    for (int c = 0; c < n; c++) {
        float q = ldexpf(pack_elem_value(f, (uint32_t)c), m);
        if (q < -128.0f || q > 127.0f) return;
        f->ilut[c] = (int8_t)q;
        /* integer grids leave their most negative code unused ([-127, 127]) */
        int used = f->el.kind != EK_INT || ldexpf((float)f->el.lo, m - f->el.frac) <= q;
        if (used && f->ilut[c] < f->ilo) f->ilo = f->ilut[c];
    }
    f->iemult = ldexpf(1.0f, -m);
    f->igrid = 1;
}

int pack_scale_parts(const bq_format *f, float tensor_scale, uint32_t code, float *s1, float *s2)
{
    if (format_float_scale(f)) {  /* an int format's fp32 group scale */
        *s1 = u2f(code);
        *s2 = 1.0f;
        return *s1 == *s1;
    }
    qctx c;
    memset(&c, 0, sizeof c);
    c.tensor_scale = tensor_scale;
    bscale s;
    if (!scale_from_code(f, &c, code, &s)) { *s1 = *s2 = NAN; return 0; }
    *s1 = s.post1;
    *s2 = s.post2;
    return 1;
}

/* Whether a group of g codes is whole bytes with its scale (whole bytes too, at most
 * four), in a width the byte loops below take: then rows are read and written bytewise. */
static int byte_groups(const bq_format *f, size_t g, int sb)
{
    int b = f->el.bits;
    return sb % 8 == 0 && sb <= 32 &&
           (b == 8 || (b == 4 && g % 2 == 0) || (b == 6 && g % 4 == 0) || ((b == 3 || b == 5 || b == 7) && g % 8 == 0));
}

/* n codes of b in {3, ..., 8} bits to bytes, LSB first (the bit stream's order); odd b: n % 8 == 0 */
static uint8_t *put_codes(uint8_t *p, const uint8_t *c, size_t n, int b)
{
    if (b == 8) { memcpy(p, c, n); return p + n; }
    if (b % 2) {  /* eight codes in b bytes */
        const uint64_t mask = (1u << b) - 1;
        for (size_t i = 0; i < n; i += 8, p += b) {
            uint64_t v = 0;
            for (int j = 0; j < 8; j++) v |= (c[i + j] & mask) << (b * j);
            memcpy(p, &v, (size_t)b);
        }
        return p;
    }
    if (b == 4) {
        size_t i = 0;
        for (; i + 8 <= n; i += 8, p += 4) {  /* eight codes a (little-endian) word: byte 2j of v | v >> 4 holds codes 2j, 2j + 1 */
            uint64_t v;
            memcpy(&v, c + i, 8);
            v &= 0x0f0f0f0f0f0f0f0full;
            v |= v >> 4;
            uint32_t o = (uint32_t)(v & 0xff) | (uint32_t)(v >> 8 & 0xff00) | (uint32_t)(v >> 16 & 0xff0000) |
                         (uint32_t)(v >> 24 & 0xff000000u);
            memcpy(p, &o, 4);
        }
        for (; i < n; i += 2) *p++ = (uint8_t)((c[i] & 15) | (c[i + 1] & 15) << 4);
        return p;
    }
    size_t i = 0;
    for (; i + 8 <= n; i += 8, p += 6) {  /* eight codes a (little-endian) word, folded to 12-, 24-, then 48-bit fields */
        uint64_t v;
        memcpy(&v, c + i, 8);
        v &= 0x3f3f3f3f3f3f3f3full;
        v = (v & 0x003f003f003f003full) | (v >> 2 & 0x0fc00fc00fc00fc0ull);
        v = (v & 0x00000fff00000fffull) | (v >> 4 & 0x00fff00000fff000ull);
        v = (v & 0x0000000000ffffffull) | (v >> 8 & 0x0000ffffff000000ull);
        memcpy(p, &v, 6);
    }
    for (; i < n; i += 4) {
        uint32_t v = (c[i] & 63u) | (c[i + 1] & 63u) << 6 | (c[i + 2] & 63u) << 12 | (c[i + 3] & 63u) << 18;
        *p++ = (uint8_t)v;
        *p++ = (uint8_t)(v >> 8);
        *p++ = (uint8_t)(v >> 16);
    }
    return p;
}

static const uint8_t *get_codes(const uint8_t *p, uint8_t *c, size_t n, int b)
{
    if (b == 8) { memcpy(c, p, n); return p + n; }
    if (b % 2) {
        const uint64_t mask = (1u << b) - 1;
        for (size_t i = 0; i < n; i += 8, p += b) {
            uint64_t v = 0;
            memcpy(&v, p, (size_t)b);
            for (int j = 0; j < 8; j++) c[i + j] = (uint8_t)(v >> (b * j) & mask);
        }
        return p;
    }
    if (b == 4) {
        for (size_t i = 0; i < n; i += 2, p++) { c[i] = *p & 15; c[i + 1] = *p >> 4; }
        return p;
    }
    size_t i = 0;
    for (; i + 8 <= n; i += 8, p += 6) {  /* put_codes' folds undone */
        uint64_t v = 0;
        memcpy(&v, p, 6);
        v = (v & 0x0000000000ffffffull) | (v << 8 & 0x00ffffff00000000ull);
        v = (v & 0x00000fff00000fffull) | (v << 4 & 0x0fff00000fff0000ull);
        v = (v & 0x003f003f003f003full) | (v << 2 & 0x3f003f003f003f00ull);
        memcpy(c + i, &v, 8);
    }
    for (; i < n; i += 4, p += 3) {
        uint32_t v = p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
        c[i] = v & 63;
        c[i + 1] = (v >> 6) & 63;
        c[i + 2] = (v >> 12) & 63;
        c[i + 3] = (uint8_t)(v >> 18);
    }
    return p;
}

void pack_row_codes(const bq_format *f, const uint8_t *row, size_t cols, uint32_t *scodes, uint8_t *ecodes)
{
    size_t g = pack_group_len(f, cols), rb = row_bytes(f, cols);
    int sb = group_scale_bits(f);
    size_t b = 0, k = 0;
    if (byte_groups(f, g, sb))  /* whole groups bytewise; a short last one through the bit stream */
        for (const uint8_t *p = row; b + g <= cols; b += g, k++) {
            uint32_t s = 0;
            for (int i = 0; i < sb / 8; i++) s |= (uint32_t)*p++ << 8 * i;
            if (sb) scodes[k] = s;
            p = get_codes(p, ecodes + b, g, f->el.bits);
        }
    bitr rd = {row + k * (((size_t)sb + g * (size_t)f->el.bits) / 8), row + rb, 0, 0};
    for (; b < cols; b += g, k++) {
        if (sb) scodes[k] = get(&rd, sb);
        for (size_t i = 0; i < g; i++) {
            uint32_t v = get(&rd, f->el.bits);
            if (b + i < cols) ecodes[b + i] = (uint8_t)v;
        }
    }
}

void pack_row_put(const bq_format *f, uint8_t *row, size_t cols, const uint32_t *scodes, const uint8_t *ecodes)
{
    size_t g = pack_group_len(f, cols);
    int sb = group_scale_bits(f);
    size_t b = 0, k = 0;
    uint8_t *p = row;
    if (byte_groups(f, g, sb))  /* whole groups bytewise; a short last one through the bit stream */
        for (; b + g <= cols; b += g, k++) {
            for (int i = 0; i < sb / 8; i++) *p++ = (uint8_t)(scodes[k] >> 8 * i);
            p = put_codes(p, ecodes + b, g, f->el.bits);
        }
    bitw w = {p, 0, 0};
    for (; b < cols; b += g, k++) {
        if (sb) put(&w, scodes[k], sb);
        for (size_t i = 0; i < g; i++) put(&w, b + i < cols ? ecodes[b + i] : 0, f->el.bits);
    }
    flush(&w);
}
