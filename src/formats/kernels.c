/* Fake-quantisation row kernels. This file is compiled once per instruction
 * set (scalar, AVX2, AVX-512) with BQ_ISA set to the suffix; the loops are
 * written so that the compiler vectorises them, and the arithmetic is the same
 * IEEE float32 in every build, so all ISAs give identical bits. */
#include "isa.h"
#include "qkern.h"

/* One block on a minifloat or integer grid with saturation: the hot loop.
 * use_div / is_mf / r are compile-time constants after inlining. */
INLINE void grid_loop(const elem_t *e, const float *restrict x, float *restrict y, size_t n, int use_div,
                      float a1, float a2, float div, float p1, float p2, int is_mf,
                      bq_round r, uint64_t seed, size_t idx0)
{
    const int emin = e->emin, emax1 = e->emax + 1, mb = e->mbits, sub = e->subnorm;
    const float fs = pow2f(e->frac), fsi = pow2f(-e->frac);
    const float maxv = is_mf ? e->maxval : (float)e->hi * fsi;
    const float maxn = is_mf || e->lo >= 0 ? maxv : (float)-e->lo * fsi;  /* two's complement: one more below */
    for (size_t i = 0; i < n; i++) {
        float v = use_div ? x[i] / div : (x[i] * a1) * a2;
        float a = fabsf(v), q;
        if (is_mf) {
            int pe = (int)(f2u(a) >> 23) - 127;
            int m = (pe >= emin || sub) ? mb : 0;
            pe = pe < emin ? emin : pe;
            pe = pe > emax1 ? emax1 : pe;
            q = round_mag(a * u2f((uint32_t)(m - pe + 127) << 23), r, seed, idx0 + i) *
                u2f((uint32_t)(pe - m + 127) << 23);
        } else {
            q = round_mag(a * fs, r, seed, idx0 + i) * fsi;
        }
        float lim = v < 0 ? maxn : maxv;
        q = q > lim ? lim : q;
        y[i] = deq_sat(copysignf(q, sgn_of(v)), p1, p2);
    }
}

/* pow2_fused_elem over a block (qkern.h). */
INLINE void grid_loop_pow2(const elem_t *e, const float *restrict x, float *restrict y, size_t n, int E,
                           int is_mf, bq_round r, uint64_t seed, size_t idx0)
{
    const pow2_fused p = pow2_fused_of(e, E, is_mf);
    for (size_t i = 0; i < n; i++) y[i] = pow2_fused_elem(&p, x[i], is_mf, r, seed, idx0 + i);
}

/* Instantiate a loop once per (grid kind, rounding mode) so each is a constant
 * inside it: the compiler then drops the other branches and vectorises. */
#define DISPATCH_GRID_ROUND(e, r, LOOP)                                                   \
    do {                                                                                  \
        int mf_ = (e)->kind == EK_MF;                                                     \
        switch ((r) * 2 + mf_) {                                                          \
        case BQ_ROUND_RNE * 2 + 1: LOOP(1, BQ_ROUND_RNE); break;                          \
        case BQ_ROUND_RNE * 2: LOOP(0, BQ_ROUND_RNE); break;                              \
        case BQ_ROUND_AWAY * 2 + 1: LOOP(1, BQ_ROUND_AWAY); break;                        \
        case BQ_ROUND_AWAY * 2: LOOP(0, BQ_ROUND_AWAY); break;                            \
        case BQ_ROUND_ZERO * 2 + 1: LOOP(1, BQ_ROUND_ZERO); break;                        \
        case BQ_ROUND_ZERO * 2: LOOP(0, BQ_ROUND_ZERO); break;                            \
        case BQ_ROUND_STOCHASTIC * 2 + 1: LOOP(1, BQ_ROUND_STOCHASTIC); break;            \
        default: LOOP(0, BQ_ROUND_STOCHASTIC); break;                                     \
        }                                                                                 \
    } while (0)

INLINE void pow2_dispatch(const elem_t *e, const float *restrict x, float *restrict y, size_t n, int E,
                          bq_round r, uint64_t seed, size_t idx0)
{
#define GL(MF, R) grid_loop_pow2(e, x, y, n, E, MF, R, seed, idx0)
    DISPATCH_GRID_ROUND(e, r, GL);
#undef GL
}

INLINE void grid_dispatch(const elem_t *e, const float *restrict x, float *restrict y, size_t n, int use_div,
                          float a1, float a2, float div, float p1, float p2, bq_round r,
                          uint64_t seed, size_t idx0)
{
#define GL(MF, R) grid_loop(e, x, y, n, use_div, a1, a2, div, p1, p2, MF, R, seed, idx0)
    DISPATCH_GRID_ROUND(e, r, GL);
#undef GL
}

/* Log grid 2^k, k = round(log2|x|) clamped to [lo, hi], in bit arithmetic
 * (qkern.h's log_bits_elem). */
INLINE void log_loop(const float *restrict x, float *restrict y, size_t n, int lo, int hi, bq_round r,
                     uint64_t seed, size_t idx0)
{
    for (size_t i = 0; i < n; i++) y[i] = log_bits_elem(x[i], lo, hi, r, seed, idx0 + i);
}

INLINE void log_dispatch(const float *restrict x, float *restrict y, size_t n, int lo, int hi, bq_round r,
                         uint64_t seed, size_t idx0)
{
    switch (r) {
    case BQ_ROUND_ZERO: log_loop(x, y, n, lo, hi, BQ_ROUND_ZERO, seed, idx0); break;
    case BQ_ROUND_STOCHASTIC: log_loop(x, y, n, lo, hi, BQ_ROUND_STOCHASTIC, seed, idx0); break;
    default: log_loop(x, y, n, lo, hi, BQ_ROUND_RNE, seed, idx0); break;
    }
}

static void fill_nan(float *y, size_t n) { for (size_t i = 0; i < n; i++) y[i] = NAN; }

/* A block-scaled chunk (MX, BFP, BM, BL, SCALED, NVFP4). Inlined with a
 * constant n for the common block sizes so the loops need no remainder code. */
INLINE void qdq_block(const bq_format *f, const qctx *c, const float *restrict x, float *restrict y, size_t n,
                      size_t idx0, const int fused[2])
{
    uint32_t mbits = amax_bits(x, n);
    if (mbits > 0x7f7fffffu) { fill_nan(y, n); return; }  /* Inf or NaN in the block */
    float amax = u2f(mbits);
    bscale s = block_scale(f, c, amax);
    const elem_t *e = &f->el;
    if (!scheme_of(f)->linear) {
        log_dispatch(x, y, n, e->lemin + s.E, e->lemax + s.E, c->round, c->seed, idx0);
        return;
    }
    if (scheme_of(f)->linear && grid_fast(e)) {
        if (s.pow2 && s.E >= fused[0] && s.E <= fused[1]) {
            pow2_dispatch(e, x, y, n, s.E, c->round, c->seed, idx0);
        } else if (s.pow2) {
            grid_dispatch(e, x, y, n, 0, s.pre1, s.pre2, 1.0f, s.post1, s.post2, c->round, c->seed, idx0);
        } else if (s.div > 0.0f) {
            grid_dispatch(e, x, y, n, 1, 1.0f, 1.0f, s.div, s.post1, s.post2, c->round, c->seed, idx0);
        } else {
            for (size_t i = 0; i < n; i++) y[i] = copysignf(0.0f, sgn_of(x[i]));
        }
        return;
    }
    float q;
    for (size_t i = 0; i < n; i++) y[i] = block_elem(f, &s, x[i], c->round, c->seed, idx0 + i, &q);
}

/* Scaled blocks (SCH_SCALED, NVFP4) a row at a time: the block scales need two
 * float divisions each, so they are computed for up to CHUNK blocks in one
 * vectorised pass, then the elements block by block. Same arithmetic as
 * block_scale() + grid_loop(), so the same bits. */
enum { CHUNK = 256 };
static void qdq_row_scaled(const bq_format *f, const qctx *c, const float *x, float *y, size_t cols, size_t idx0)
{
    const size_t K = (size_t)f->block;
    const elem_t *e = &f->el, *se = &f->scale;
    const int nv = scheme_of(f)->tensor_factor;
    const float ts = c->tensor_scale, emaxv = e->kind == EK_MF ? e->maxval : (float)e->hi;
    float amax[CHUNK], div[CHUNK], sc[CHUNK];
    uint32_t bits[CHUNK];
    for (size_t b0 = 0; b0 < cols; b0 += CHUNK * K) {
        size_t nb = (cols - b0 + K - 1) / K;
        nb = nb > CHUNK ? CHUNK : nb;
        for (size_t b = 0; b < nb; b++) {
            size_t s0 = b0 + b * K, n = cols - s0 < K ? cols - s0 : K;
            bits[b] = K == 16 && n == 16 ? amax_bits(x + s0, 16) : amax_bits(x + s0, n);
        }
        for (size_t b = 0; b < nb; b++) {  /* vectorised: ideal scale, rounded to the scale format */
            float a = u2f(bits[b] > 0x7f7fffffu ? 0 : bits[b]);
            float ideal = nv ? (ts > 0 ? a / 6.0f / ts : 0.0f) : a / emaxv;
            amax[b] = ideal;
        }
        for (size_t b = 0; b < nb; b++) sc[b] = mf_quant_mag(se, amax[b], BQ_ROUND_RNE, 0, 0);
        for (size_t b = 0; b < nb; b++) div[b] = nv ? sc[b] * ts : sc[b];
        for (size_t b = 0; b < nb; b++) {
            size_t s0 = b0 + b * K, n = cols - s0 < K ? cols - s0 : K;
            const float *xb = x + s0;
            float *yb = y + s0;
            if (bits[b] > 0x7f7fffffu) { fill_nan(yb, n); continue; }
            if (!(div[b] > 0.0f)) { for (size_t i = 0; i < n; i++) yb[i] = copysignf(0.0f, sgn_of(xb[i])); continue; }
            float p2 = nv ? ts : 1.0f;
            if (n == 16) grid_dispatch(e, xb, yb, 16, 1, 1.0f, 1.0f, div[b], sc[b], p2, c->round, c->seed, idx0 + s0);
            else grid_dispatch(e, xb, yb, n, 1, 1.0f, 1.0f, div[b], sc[b], p2, c->round, c->seed, idx0 + s0);
        }
    }
}

/* llama.cpp's Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 rules (qkern.h's ggml_block), block by block. */
static void qdq_row_ggml(const bq_format *f, const float *x, float *y, size_t cols)
{
    for (size_t b = 0; b < cols; b += 32) ggml_qdq_block(f, x + b, y + b, cols - b < 32 ? cols - b : 32);
}

/* Element formats: no scale. */
static void qdq_elem(const bq_format *f, const qctx *c, const float *x, float *y, size_t n, size_t idx0)
{
    const elem_t *e = &f->el;
    if ((e->kind == EK_MF && e->fast && !e->overflow_inf) || e->kind == EK_INT) {
        grid_dispatch(e, x, y, n, 0, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, c->round, c->seed, idx0);
        if (e->kind == EK_MF)
            for (size_t i = 0; i < n; i++)  /* Inf/NaN follow the element's own rules */
                if (!(fabsf(x[i]) <= FLT_MAX)) y[i] = elem_quant(e, x[i], c->round, c->seed, idx0 + i);
        return;
    }
    if (e->kind == EK_LOG) {
        log_dispatch(x, y, n, e->lemin, e->lemax, c->round, c->seed, idx0);
        return;
    }
    for (size_t i = 0; i < n; i++) y[i] = elem_quant(e, x[i], c->round, c->seed, idx0 + i);
}

/* intB with an fp32 scale over a group (tensor-wide scale comes in c). */
static void qdq_int_group(const bq_format *f, const qctx *c, const float *x, float *y, size_t n,
                          size_t idx0, float s, float z, int nonfinite)
{
    const elem_t *e = &f->el;
    if (nonfinite || s != s) { fill_nan(y, n); return; }
    if (!(s > 0.0f)) { for (size_t i = 0; i < n; i++) y[i] = copysignf(0.0f, sgn_of(x[i])); return; }
    if (!f->asym) {
        grid_dispatch(e, x, y, n, 1, 1.0f, 1.0f, s, s, 1.0f, c->round, c->seed, idx0);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float out = asym_deq(asym_q(e, x[i], s, z, c->round, c->seed, idx0 + i), z, s);
        y[i] = out == 0.0f ? copysignf(0.0f, sgn_of(x[i])) : out;
    }
}

static void qdq_rows(const bq_format *f, const qctx *c, const float *x, float *y, size_t r0, size_t r1)
{
    const size_t cols = c->cols;
    int fused[2];  /* block exponents E for which the fused path is exact (a range) */
    pow2_fused_range(&f->el, fused);
    for (size_t r = r0; r < r1; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        size_t idx = r * cols;
        switch (format_scale_place(f)) {
        case SCALE_NONE: qdq_elem(f, c, xr, yr, cols, idx); break;
        case SCALE_TENSOR: qdq_int_group(f, c, xr, yr, cols, idx, c->tensor_scale, c->tensor_zero, c->tensor_nonfinite); break;
        case SCALE_ROW:
        case SCALE_GROUP: {
            size_t g = pack_group_len(f, cols);
            for (size_t b = 0; b < cols; b += g) {
                size_t n = cols - b < g ? cols - b : g;
                float s, z;
                int bad;
                int_group_scale(f, xr + b, n, &s, &z, &bad);
                qdq_int_group(f, c, xr + b, yr + b, n, idx + b, s, z, bad);
            }
            break;
        }
        case SCALE_BLOCK: {
            if (f->ggml) { qdq_row_ggml(f, xr, yr, cols); break; }
            if (scheme_minifloat_scale(f) && ((f->el.kind == EK_MF && f->el.fast) || f->el.kind == EK_INT)) {
                qdq_row_scaled(f, c, xr, yr, cols, idx);
                break;
            }
            size_t K = (size_t)f->block, b = 0, full = cols - cols % K;
            if (K == 32) for (; b < full; b += 32) qdq_block(f, c, xr + b, yr + b, 32, idx + b, fused);
            else if (K == 16) for (; b < full; b += 16) qdq_block(f, c, xr + b, yr + b, 16, idx + b, fused);
            for (; b < cols; b += K) qdq_block(f, c, xr + b, yr + b, cols - b < K ? cols - b : K, idx + b, fused);
            break;
        }
        }
    }
}

/* ---- packing's first half: codes ------------------------------------------- */

/* Codes of grid values q (what grid_loop gives with unit post-scales): a minifloat
 * value's sign, biased exponent and top mantissa bits (mf_encode's rule), an
 * integer's two's complement or sign-magnitude code (elem_code's). */
INLINE void codes_of(const elem_t *e, const float *restrict q, uint8_t *restrict c, size_t n, int is_mf)
{
    const uint32_t top = (uint32_t)(e->bits - 1), mask = (1u << e->bits) - 1;
    const int emin = e->emin, bias = e->bias, mb = e->mbits, sm = e->signmag;
    const float sub = is_mf ? pow2f(e->mbits - e->emin) : pow2f(e->frac);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = f2u(q[i]), ua = u & 0x7fffffffu, sign = (u >> 31) << top, code;
        if (is_mf) {
            int E = (int)(ua >> 23) - 127;
            uint32_t norm = (uint32_t)(E + bias) << mb | (ua & 0x7fffffu) >> (23 - mb);
            code = sign | (E >= emin ? norm : (uint32_t)(u2f(ua) * sub));
        } else {
            int32_t k = (int32_t)(q[i] * sub);
            code = sm ? sign | (uint32_t)(k < 0 ? -k : k) : (uint32_t)k & mask;
        }
        c[i] = (uint8_t)code;
    }
}

/* One group's grid values (qb) and scale code (*sc); 0 if it holds Inf or NaN. */
INLINE int codes_group(const bq_format *f, scale_place sp, const qctx *c, const float *restrict xb, float *restrict qb, size_t n,
                       size_t at, uint32_t *sc)
{
    const elem_t *e = &f->el;
    uint32_t mbits = amax_bits(xb, n);
    if (mbits > 0x7f7fffffu) return 0;
    if (sp == SCALE_BLOCK) {
        bscale s = block_scale(f, c, u2f(mbits));
        if (s.pow2) {
            *sc = s.code;
            grid_dispatch(e, xb, qb, n, 0, s.pre1, s.pre2, 1.0f, 1.0f, 1.0f, c->round, c->seed, at);
        } else {
            *sc = mf_encode(&f->scale, s.post1);
            if (s.div > 0.0f) grid_dispatch(e, xb, qb, n, 1, 1.0f, 1.0f, s.div, 1.0f, 1.0f, c->round, c->seed, at);
            else for (size_t i = 0; i < n; i++) qb[i] = copysignf(0.0f, sgn_of(xb[i]));
        }
    } else if (sp == SCALE_NONE) {
        grid_dispatch(e, xb, qb, n, 0, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, c->round, c->seed, at);
    } else {
        float s = c->tensor_scale, z;
        int bad = c->tensor_nonfinite;
        if (sp != SCALE_TENSOR) {
            int_scale_of(f, mbits, 0.0f, 0.0f, &s, &z, &bad);  /* symmetric: max |x| bits are all it reads */
            *sc = f2u(s);
        }
        if (bad) return 0;
        if (s > 0.0f) grid_dispatch(e, xb, qb, n, 1, 1.0f, 1.0f, s, 1.0f, 1.0f, c->round, c->seed, at);
        else for (size_t i = 0; i < n; i++) qb[i] = 0.0f;
    }
    return 1;
}

/* One row's codes for bq_pack: a scale code per group (scodes) and an element code
 * per value (ecodes, the short last group padded with zeros to its full length).
 * The same grid values as pack.c's scalar pack_row (block_scale, then the element
 * rounding grid_loop shares with fake quantisation), so the same bits. Returns 0
 * where the row needs that scalar path: a group holding Inf or NaN, an element kind
 * or scheme this does not cover (block log, llama.cpp's rules, asymmetric ints,
 * codes wider than 8 bits). tmp holds a row's floats. */
int CAT(bq_pack_codes, BQ_ISA)(const bq_format *f, const qctx *c, const float *x, size_t cols, size_t idx0,
                               uint32_t *scodes, uint8_t *ecodes, float *tmp);
int CAT(bq_pack_codes, BQ_ISA)(const bq_format *f, const qctx *c, const float *x, size_t cols, size_t idx0,
                               uint32_t *scodes, uint8_t *ecodes, float *tmp)
{
    const elem_t *e = &f->el;
    const int mf = e->kind == EK_MF;
    if (e->bits > 8 || f->ggml || f->asym || !scheme_of(f)->linear) return 0;
    if (!(mf && e->fast && !e->overflow_inf) && e->kind != EK_INT) return 0;
    if (e->kind == EK_INT && format_scale_place(f) == SCALE_BLOCK && e->lo != -e->hi) return 0;
    const size_t g = pack_group_len(f, cols);
    const scale_place sp = format_scale_place(f);
    size_t k = 0, b = 0;
    /* full blocks of 32 or 16 with a constant length (the loops then need no remainder code) */
    if (g == 32)
        for (; b + 32 <= cols; b += 32, k++)
            if (!codes_group(f, sp, c, x + b, tmp + b, 32, idx0 + b, scodes + k)) return 0;
    if (g == 16)
        for (; b + 16 <= cols; b += 16, k++)
            if (!codes_group(f, sp, c, x + b, tmp + b, 16, idx0 + b, scodes + k)) return 0;
    for (; b < cols; b += g, k++)
        if (!codes_group(f, sp, c, x + b, tmp + b, cols - b < g ? cols - b : g, idx0 + b, scodes + k)) return 0;
    if (mf) codes_of(e, tmp, ecodes, cols, 1);
    else codes_of(e, tmp, ecodes, cols, 0);
    size_t padded = k * g;
    for (size_t i = cols; i < padded; i++) ecodes[i] = 0;
    return 1;
}

void CAT(bq_qdq_rows, BQ_ISA)(const bq_format *f, const qctx *c, const float *x, float *y, size_t r0, size_t r1);
void CAT(bq_qdq_rows, BQ_ISA)(const bq_format *f, const qctx *c, const float *x, float *y, size_t r0, size_t r1)
{
    qdq_rows(f, c, x, y, r0, r1);
}

/* max |x| bits over a whole tensor (for tensor-wide scales), in this ISA */
uint32_t CAT(bq_amax_bits, BQ_ISA)(const float *x, size_t n);
uint32_t CAT(bq_amax_bits, BQ_ISA)(const float *x, size_t n) { return amax_bits(x, n); }
