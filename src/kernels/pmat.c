/* Packed weight matrices: choosing the representation, building panels, going
 * back to the file layout, quantised activations for the integer path.
 *
 * Panel layout (PM_PANEL), for panel p (rows 16p .. 16p+15, zero-padded):
 *   8-bit codes: cols/4 chunks of 64 bytes; chunk g holds, for each of the 16
 *     rows r, the codes of columns 4g..4g+3: byte 4r + i = code[16p + r][4g + i].
 *   4-bit codes: cols/8 chunks of 64 bytes; byte 4r + i of chunk u holds
 *     code[16p + r][8u + i] in its low nibble and code[16p + r][8u + 4 + i] in
 *     its high nibble.
 * So one 64-byte load gives 16 rows x 4 columns: AVX-512 lanes are rows, and a
 * VNNI dot product (4 bytes per lane) advances all 16 rows by 4 columns.
 * Scale codes: [panel][group][16 rows], sbytes each. */
#include "pmat.h"
#include "qkern.h"
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define ISA_DECL(isa) extern const pk_isa pk_##isa;
ISA_DECL(scalar)
#ifdef BQ_HAVE_X86
ISA_DECL(avx2)
ISA_DECL(avx512)
#endif

static const pk_isa *kernels(void)
{
#ifdef BQ_HAVE_X86
    const char *isa = bq_isa();
    if (!strcmp(isa, "avx512") && __builtin_cpu_supports("avx512vnni")) return &pk_avx512;
    if (!strcmp(isa, "avx512") || !strcmp(isa, "avx2")) return &pk_avx2;
#endif
    return &pk_scalar;
}

/* The format's integer grid (format.h: worked out once, when it was parsed). */
static int int_grid(const bq_format *f, int8_t lut[256], float *emult, int *lo)
{
    if (!f->igrid) return 0;
    memcpy(lut, f->ilut, sizeof f->ilut);
    *emult = f->iemult;
    *lo = f->ilo;
    return 1;
}

/* Elements per scale group along a row of `cols`. */
static int group_of(const bq_format *f, int cols) { return (int)pack_group_len(f, (size_t)cols); }

/* Block codes whose values are code x the block's factor: panels and the integer path take them. */
static int linear_blocks(const bq_format *f) { return scheme_of(f)->block_code && scheme_of(f)->linear; }

static int panel_ok(const bq_format *f, int cols, int8_t lut[256], float *emult)
{
    if (!linear_blocks(f) && format_scale_place(f) != SCALE_GROUP) return 0;
    if (f->el.bits != 4 && f->el.bits != 8) return 0;
    if (f->block % 16 || f->block > 512 || cols % f->block || f->scale_bits % 8) return 0;
    int lo;
    if (!int_grid(f, lut, emult, &lo)) return 0;
    if (f->el.bits == 8) /* 8-bit codes are used as they are: two's complement or sign-magnitude */
        for (int c = 0; c < 256; c++) {
            int tw = (int8_t)c, sm = c & 0x80 ? -(c & 0x7f) : c;
            if (lut[c] != (f->el.signmag ? sm : tw)) return 0;
        }
    return 1;
}

/* Block formats with 8-bit scales and byte-sized blocks (MXFP6, MXFP8, block
 * minifloat, e4m3-scaled, ...) decode through a code -> value table instead of
 * the generic bit reader: (value * s1) * s2 as bq_unpack computes it. */
/* The tensor factor and what each 1-byte scale code means: (s1, s2) as bq_unpack
 * applies them, and sc = (s1 * s2) * emult for the matmuls. */
static void scale_tables(pmat *m, float tscale)
{
    m->tscale = tscale;
    for (int c = 0; c < 256; c++) {
        pack_scale_parts(m->f, tscale, (uint32_t)c, &m->s1[c], &m->s2[c]);
        m->sc[c] = (m->s1[c] * m->s2[c]) * m->emult;
    }
}

/* A bf16/fp16 matrix (a checkpoint held as stored): rows widened with integer
 * shifts (bf16) or the exact half conversion (fp16); vectorises. */
static void float16_decode(const pmat *m, int r0, int r1, float *out)
{
    size_t n = (size_t)(r1 - r0) * (size_t)m->cols;
    const uint16_t *h = (const uint16_t *)m->data + (size_t)r0 * (size_t)m->cols;
    if (m->f->el.ebits != 8) {
        for (size_t i = 0; i < n; i++) out[i] = half_to_f32(h[i]);
        return;
    }
    for (size_t i = 0; i < n; i++) out[i] = u2f((uint32_t)h[i] << 16);  /* bf16: the top half of a float */
}

/* y[t][r] = x[t] . row r of a bf16/fp16 matrix, for a few tokens: each weight is
 * widened in registers and read once for all n tokens. Sums: 16 running sums
 * (k mod 16), added pairwise at the end, a fixed order on every machine. */
__attribute__((target_clones("avx512f", "avx2", "default")))
static void float16_mv(const pmat *m, const float *x, int n, float *y, int ldy, int r0, int r1)
{
    enum { L = 16, TMAX = 8 };
    const int C = m->cols, bf = m->f->el.ebits == 8;
    for (int r = r0; r < r1; r++) {
        const uint16_t *h = (const uint16_t *)m->data + (size_t)r * C;
        for (int t0 = 0; t0 < n; t0 += TMAX) {
            int nt = n - t0 < TMAX ? n - t0 : TMAX;
            float acc[TMAX][L] = {{0}};
            int k = 0;
            for (; k + L <= C; k += L) {
                float w[L];
                for (int j = 0; j < L; j++) w[j] = f16_to_f32(bf, h[k + j]);
                for (int t = 0; t < nt; t++)
                    for (int j = 0; j < L; j++) acc[t][j] += x[(size_t)(t0 + t) * C + k + j] * w[j];
            }
            for (; k < C; k++) {
                float w = f16_to_f32(bf, h[k]);
                for (int t = 0; t < nt; t++) acc[t][k % L] += x[(size_t)(t0 + t) * C + k] * w;
            }
            for (int t = 0; t < nt; t++) {
                for (int s = L / 2; s >= 1; s /= 2)
                    for (int j = 0; j < s; j++) acc[t][j] += acc[t][j + s];
                y[(size_t)(t0 + t) * ldy + r] = acc[t][0];
            }
        }
    }
}

/* Sixteen rows' dot products with x (cols a multiple of 16), as rows_f32 sums one row:
 * lane j of row r's accumulator adds x[k] * w[r][k] over k = j (mod 16), k ascending,
 * then the tree (j, j + 8), (j, j + 4), (j, j + 2), (0, 1). Here the sixteen trees run
 * transposed: each step adds the same pairs for two rows at once, shuffled side by
 * side, so every row gets the bits it gets alone. */
typedef float v16f __attribute__((vector_size(64)));
static inline __attribute__((always_inline)) void rows16_f32(const float *w, size_t ldw, int cols, const float *x, float *y)
{
    v16f A[16], xv, wv;
    for (int r = 0; r < 16; r++) A[r] = (v16f){0};
    for (int k = 0; k < cols; k += 16) {
        memcpy(&xv, x + k, sizeof xv);
        for (int r = 0; r < 16; r++) {
            memcpy(&wv, w + (size_t)r * ldw + k, sizeof wv);
            __builtin_prefetch(w + (size_t)(r + 16) * ldw + k);  /* the next sixteen rows: prefetch never faults */
            A[r] += xv * wv;
        }
    }
    /* lanes (0-7 | 8-15), (0-3 | 4-7), (0,1 | 2,3), (even | odd) of two vectors side by side
     * (__builtin_shufflevector: GCC 12 and clang alike) */
#define LO8(a, b) __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
#define HI8(a, b) __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31)
#define LO4(a, b) __builtin_shufflevector(a, b, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27)
#define HI4(a, b) __builtin_shufflevector(a, b, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31)
#define LO2(a, b) __builtin_shufflevector(a, b, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29)
#define HI2(a, b) __builtin_shufflevector(a, b, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31)
#define EVN(a, b) __builtin_shufflevector(a, b, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30)
#define ODD(a, b) __builtin_shufflevector(a, b, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31)
    for (int i = 0; i < 8; i++) A[i] = LO8(A[2 * i], A[2 * i + 1]) + HI8(A[2 * i], A[2 * i + 1]);
    for (int i = 0; i < 4; i++) A[i] = LO4(A[2 * i], A[2 * i + 1]) + HI4(A[2 * i], A[2 * i + 1]);
    for (int i = 0; i < 2; i++) A[i] = LO2(A[2 * i], A[2 * i + 1]) + HI2(A[2 * i], A[2 * i + 1]);
    v16f e = EVN(A[0], A[1]) + ODD(A[0], A[1]);
#undef LO8
#undef HI8
#undef LO4
#undef HI4
#undef LO2
#undef HI2
#undef EVN
#undef ODD
    /* lane 2j holds row ord[j], lane 2j + 1 row 8 + ord[j] */
    static const int ord[8] = {0, 4, 2, 6, 1, 5, 3, 7};
    for (int j = 0; j < 8; j++) { y[ord[j]] = e[2 * j]; y[8 + ord[j]] = e[2 * j + 1]; }
}

/* y[t][r] = W[r] . x[t] for rows r0..r1 of a float32 matrix (row stride ldw) and
 * up to 8 tokens (row stride ldx): each weight read once (an SGEMM of one token
 * repacks its whole operand first). The same 16 partial sums in the same order on
 * every path, so the bits never depend on the ISA chosen or on how rows are split
 * between threads. */
__attribute__((target_clones("avx512f", "avx2", "default")))  /* static: GCC exports a global clone's resolver */
static void rows_f32(const float *w, size_t ldw, int cols, const float *x, size_t ldx, int n, float *y, int ldy, int r0,
                     int r1)
{
    enum { L = 16, TMAX = 8 };
    if (n == 1) {  /* one token (a decoded query against the cache): the same sums, one row of accumulators */
        int r = r0;
        if (cols % L == 0)  /* sixteen rows at a time, their sums' trees side by side */
            for (; r + L <= r1; r += L) rows16_f32(w + (size_t)r * ldw, ldw, cols, x, y + r);
        for (; r < r1; r++) {
            const float *wr = w + (size_t)r * ldw;
            float acc[L] = {0};
            int k = 0;
            for (; k + L <= cols; k += L)
                for (int j = 0; j < L; j++) acc[j] += x[k + j] * wr[k + j];
            for (; k < cols; k++) acc[k % L] += x[k] * wr[k];
            for (int h = L / 2; h >= 1; h /= 2)
                for (int j = 0; j < h; j++) acc[j] += acc[j + h];
            y[r] = acc[0];
        }
        return;
    }
    for (int r = r0; r < r1; r++) {
        const float *wr = w + (size_t)r * ldw;
        for (int t0 = 0; t0 < n; t0 += TMAX) {
            int nt = n - t0 < TMAX ? n - t0 : TMAX;
            float acc[TMAX][L] = {{0}};
            int k = 0;
            if (nt == 1)  /* one token: the same sums, the accumulators kept in registers */
                for (; k + L <= cols; k += L)
                    for (int j = 0; j < L; j++) acc[0][j] += x[(size_t)t0 * ldx + k + j] * wr[k + j];
            for (; k + L <= cols; k += L)
                for (int t = 0; t < nt; t++)
                    for (int j = 0; j < L; j++) acc[t][j] += x[(size_t)(t0 + t) * ldx + k + j] * wr[k + j];
            for (; k < cols; k++)
                for (int t = 0; t < nt; t++) acc[t][k % L] += x[(size_t)(t0 + t) * ldx + k] * wr[k];
            for (int t = 0; t < nt; t++) {
                for (int h = L / 2; h >= 1; h /= 2)
                    for (int j = 0; j < h; j++) acc[t][j] += acc[t][j + h];
                y[(size_t)(t0 + t) * ldy + r] = acc[t][0];
            }
        }
    }
}

void mv_rows_f32(const float *w, int cols, const float *x, int n, float *y, int ldy, int r0, int r1)
{
    rows_f32(w, (size_t)cols, cols, x, (size_t)cols, n, y, ldy, r0, r1);
}

void mv_rows_f32_ld(const float *w, size_t ldw, int cols, const float *x, size_t ldx, int n, float *y, int ldy, int r0, int r1)
{
    rows_f32(w, ldw, cols, x, ldx, n, y, ldy, r0, r1);
}

/* out[j] = sum over i in [i0, i1] of p[i] * V[i][j], i ascending (row stride ldv). */
__attribute__((target_clones("avx512f", "avx2", "default")))
static void axpy_rows(const float *p, int i0, int i1, const float *V, size_t ldv, int d, float *out)
{
    enum { W = 64 };  /* columns held in registers while the keys go by (a head of 64 in one pass) */
    int j0 = 0;
    for (; j0 + W <= d; j0 += W) {
        float acc[W] = {0};
        for (int i = i0; i <= i1; i++) {
            const float *v = V + (size_t)i * ldv + j0;
            float pi = p[i];
            for (int j = 0; j < W; j++) acc[j] += pi * v[j];
        }
        memcpy(out + j0, acc, sizeof acc);
    }
    for (int j = j0; j < d; j++) out[j] = 0.0f;
    for (int i = i0; i <= i1 && j0 < d; i++) {
        const float *v = V + (size_t)i * ldv;
        float pi = p[i];
        for (int j = j0; j < d; j++) out[j] += pi * v[j];
    }
}

void mv_axpy_rows_f32(const float *p, int i0, int i1, const float *V, size_t ldv, int d, float *out)
{
    axpy_rows(p, i0, i1, V, ldv, d, out);
}

int pmat_mv_float16(const pmat *m, const float *x, int n, float *y, int ldy, int r0, int r1)
{
    if (!pmat_is_float16(m) || m->kind != PM_STREAM) return 0;
    float16_mv(m, x, n, y, ldy, r0, r1);
    return 1;
}

static void stream_setup(pmat *m)
{
    const bq_format *f = m->f;
    if (pmat_is_float16(m)) { m->fast_stream = 2; return; }
    if (!linear_blocks(f) || f->scale_bits != 8 || f->el.bits > 8 || ((size_t)f->block * f->el.bits) % 8) return;
    for (int c = 0; c < 1 << f->el.bits; c++) m->vlut[c] = pack_elem_value(f, (uint32_t)c);
    scale_tables(m, pack_tensor_scale(f, m->data));
    m->fast_stream = 1;
}

static void stream_decode_fast(const pmat *m, int r0, int r1, float *out)
{
    const bq_format *f = m->f;
    size_t cols = (size_t)m->cols, rb = pack_row_bytes(f, cols), K = (size_t)f->block;
    int bits = f->el.bits;
    uint64_t mask = (1u << bits) - 1;
    const uint8_t *body = m->data + pack_header_bytes(f);
    for (int r = r0; r < r1; r++) {
        const uint8_t *p = body + (size_t)r * rb;
        float *y = out + (size_t)(r - r0) * cols;
        for (size_t b = 0; b < cols; b += K) {
            uint8_t sc = *p++;
            float s1 = m->s1[sc], s2 = m->s2[sc];
            size_t n = cols - b < K ? cols - b : K;
            for (size_t i = 0; i < n; i++) {
                size_t bit = i * (size_t)bits;
                uint64_t w;
                memcpy(&w, p + bit / 8, 8);
                y[b + i] = (m->vlut[(w >> (bit % 8)) & mask] * s1) * s2;
            }
            p += K * (size_t)bits / 8;
        }
    }
}

static size_t panel_bytes(const pmat *m) { return (size_t)m->cols * PM_ROWS * (size_t)m->eb / 8; }

/* Position of (row-in-panel r, column k) in a panel: byte offset, and nibble shift. */
static size_t slot(const pmat *m, int r, int k, int *shift)
{
    if (m->eb == 8) { *shift = 0; return (size_t)(k / 4) * 64 + (size_t)r * 4 + (size_t)(k % 4); }
    int u = k / 8, i = k % 8;
    *shift = i < 4 ? 0 : 4;
    return (size_t)u * 64 + (size_t)r * 4 + (size_t)(i % 4);
}

int pmat_is_float16(const pmat *m) { return m && format_is_float16(m->f); }

void pmat_free(pmat *m)
{
    if (!m) return;
    bq_format_free(m->f);
    if (!m->borrowed) free(m->data);
    else if (m->borrowed == 1) {  /* a view of a mapped file: its pages leave the resident set (quantised copies replace it) */
        long pg = sysconf(_SC_PAGESIZE);
        uintptr_t b = ((uintptr_t)m->data + (uintptr_t)pg - 1) & ~(uintptr_t)(pg - 1);
        uintptr_t e = ((uintptr_t)m->data + m->size) & ~(uintptr_t)(pg - 1);
        if (e > b) madvise((void *)b, e - b, MADV_DONTNEED);
    }
    free(m->pw);
    free(m->ps);
    free(m);
}

size_t pmat_bytes(const pmat *m)
{
    if (m->kind == PM_STREAM) return m->size;
    return (size_t)m->npanel * panel_bytes(m) + (size_t)m->npanel * m->nb * PM_ROWS * m->sbytes;
}

/* Panels [p0, p1) from the bq_pack rows: each panel's bytes come from its own 16 rows. */
typedef struct { pmat *m; const bq_format *f; const uint8_t *body; size_t rb; int oom; } panel_job;

static void panel_range(void *arg, size_t p0, size_t p1)
{
    panel_job *j = arg;
    pmat *m = j->m;
    int cols = m->cols;
    uint32_t *sc = malloc((size_t)m->nb * sizeof *sc);
    uint8_t *ec = malloc((size_t)cols);
    if (!sc || !ec) { free(sc); free(ec); j->oom = 1; return; }
    for (int row = (int)p0 * PM_ROWS; row < (int)p1 * PM_ROWS && row < m->rows; row++) {
        pack_row_codes(j->f, j->body + (size_t)row * j->rb, (size_t)cols, sc, ec);
        int p = row / PM_ROWS, r = row % PM_ROWS, sh, k = 0;
        uint8_t *pw = m->pw + (size_t)p * panel_bytes(m);
        /* whole units of slot()'s layout at once: 4 codes of 8 bits, or 8 of 4 bits
         * (codes k..k+3 in the low nibbles of the row's 4 bytes, k+4..k+7 in the high) */
        if (m->eb == 8)
            for (; k + 4 <= cols; k += 4) memcpy(pw + (size_t)(k / 4) * 64 + (size_t)r * 4, ec + k, 4);
        else
            for (; k + 8 <= cols; k += 8) {
                uint32_t lo, hi;  /* four codes of under 16 each: one 32-bit or makes the four bytes */
                memcpy(&lo, ec + k, 4);
                memcpy(&hi, ec + k + 4, 4);
                lo |= hi << 4;
                memcpy(pw + (size_t)(k / 8) * 64 + (size_t)r * 4, &lo, 4);
            }
        for (; k < cols; k++) {
            size_t o = slot(m, r, k, &sh);
            pw[o] |= (uint8_t)(ec[k] << sh);
        }
        for (int g = 0; g < m->nb; g++)
            memcpy(m->ps + (((size_t)p * m->nb + g) * PM_ROWS + r) * m->sbytes, &sc[g], (size_t)m->sbytes);
    }
    free(sc);
    free(ec);
}

/* A pmat of rows x cols in f whose packed form takes `size` bytes (checked), nothing held yet. */
static bq_status pmat_alloc(const bq_format *f, int rows, int cols, size_t size, pmat **out)
{
    *out = NULL;
    if (rows < 1 || cols < 1) return bq_fail(BQ_ERR_SHAPE, "packed matrix of %dx%d", rows, cols);
    size_t need = bq_packed_size(f, (size_t)rows, (size_t)cols);
    if (size != need)
        return bq_fail(BQ_ERR_SHAPE, "packed data is %zu bytes; format '%s' at %dx%d takes %zu", size, f->name, rows,
                       cols, need);
    pmat *m = calloc(1, sizeof *m);
    if (!m) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    bq_status st = bq_format_parse(f->name, &m->f);
    if (st) { free(m); return st; }
    m->rows = rows;
    m->cols = cols;
    *out = m;
    return BQ_OK;
}

bq_status pmat_new(const bq_format *f, int rows, int cols, const uint8_t *packed, size_t size, pmat **out)
{
    pmat *m;
    bq_status st = pmat_alloc(f, rows, cols, size, &m);
    *out = NULL;
    if (st) return st;
    if (!panel_ok(f, cols, m->lut, &m->emult)) {
        m->kind = PM_STREAM;
        m->size = size;
        m->data = calloc(1, size + 8);  /* 8 spare bytes: the fast decoder reads whole words */
        if (!m->data) { pmat_free(m); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
        bq_parallel_copy(m->data, packed, size);  /* a held 16-bit checkpoint passes here whole */
        stream_setup(m);
        *out = m;
        return BQ_OK;
    }
    m->kind = PM_PANEL;
    m->eb = f->el.bits;
    m->K = f->block;
    m->nb = cols / f->block;
    m->npanel = (rows + PM_ROWS - 1) / PM_ROWS;
    m->sbytes = f->scale_bits / 8;
    scale_tables(m, pack_tensor_scale(f, packed));
    if (m->sbytes == 1) {
        /* Power-of-two scales (MX, BFP): factor(c) is the float with exponent field
         * c + pow2_shift wherever that is a normal number, so kernels can build it
         * instead of looking it up; checked here against the table for every code. */
        int le = 0;
        frexpf(m->emult, &le);
        le -= 1;  /* emult = 2^le */
        m->pow2_shift = le;
        m->pow2_scales = 1;
        for (int c = 0; c < 255 && m->pow2_scales; c++) {
            int e = c + le;
            if (e >= 1 && e <= 254) {
                uint32_t bits = (uint32_t)e << 23;
                float v;
                memcpy(&v, &bits, 4);
                m->pow2_scales = v == m->sc[c];
            }
        }
    }
    m->pw = calloc((size_t)m->npanel, panel_bytes(m));
    m->ps = calloc((size_t)m->npanel * m->nb * PM_ROWS, (size_t)m->sbytes);
    if (!m->pw || !m->ps) { pmat_free(m); return bq_fail(BQ_ERR_NOMEM, "out of memory for a %dx%d packed matrix", rows, cols); }
    /* regrouped panel by panel over all cores (a 7B model's 4 GB took a minute on one) */
    panel_job j = {m, f, packed + pack_header_bytes(f), pack_row_bytes(f, (size_t)cols), 0};
    bq_parallel_for((size_t)m->npanel, (size_t)rows * cols < (1u << 22) ? 1 : 0, panel_range, &j);
    if (j.oom) { pmat_free(m); return bq_fail(BQ_ERR_NOMEM, "out of memory for a %dx%d packed matrix", rows, cols); }
    *out = m;
    return BQ_OK;
}

bq_status pmat_view16(const bq_format *f, int rows, int cols, const uint8_t *data, size_t size, pmat **out)
{
    *out = NULL;
    if (!format_is_float16(f) || pack_header_bytes(f) || (uintptr_t)data % 2)
        return pmat_new(f, rows, cols, data, size, out);
    pmat *m;
    bq_status st = pmat_alloc(f, rows, cols, size, &m);
    if (st) return st;
    m->kind = PM_STREAM;
    m->size = size;
    m->data = (uint8_t *)data;  /* read only: float16's decoders never write it */
    m->borrowed = 1;
    stream_setup(m);
    *out = m;
    return BQ_OK;
}

bq_status pmat_view_of(const pmat *src, pmat **out)
{
    *out = NULL;
    if (!pmat_is_float16(src) || src->kind != PM_STREAM)
        return bq_fail(BQ_ERR_ARG, "a view of %s weights: only 16-bit float matrices have views", src->f->name);
    bq_status st = pmat_view16(src->f, src->rows, src->cols, src->data, src->size, out);
    if (!st && (*out)->borrowed) (*out)->borrowed = 2;  /* (an unaligned source is copied, as pmat_view16 does) */
    return st;
}

typedef struct { const pmat *m; float *x; } widen_job;

static void widen_range(void *arg, size_t r0, size_t r1)
{
    const widen_job *j = arg;
    pmat_decode(j->m, (int)r0, (int)r1, j->x + r0 * (size_t)j->m->cols);
}

bq_status pmat_widen(pmat **pm, float **w)
{
    pmat *m = *pm;
    float *x = malloc((size_t)m->rows * m->cols * sizeof *x);
    if (!x) return bq_fail(BQ_ERR_NOMEM, "out of memory widening a %dx%d matrix", m->rows, m->cols);
    widen_job j = {m, x};  /* rows over all cores: a 7B checkpoint's 6.5 G weights pass here */
    bq_parallel_for((size_t)m->rows, (size_t)m->rows * m->cols < (1u << 20) ? 1 : 0, widen_range, &j);
    pmat_free(m);
    *pm = NULL;
    *w = x;
    return BQ_OK;
}

bq_status pmat_pack(const bq_format *f, const float *x, int rows, int cols, const bq_qopts *o, pmat **out)
{
    *out = NULL;
    size_t size = bq_packed_size(f, (size_t)rows, (size_t)cols);
    uint8_t *buf = size == SIZE_MAX ? NULL : malloc(size ? size : 1);
    if (!buf) return bq_fail(BQ_ERR_NOMEM, "out of memory packing %dx%d", rows, cols);
    bq_status st = bq_pack(f, x, (size_t)rows, (size_t)cols, o, buf, size);
    if (!st) st = pmat_new(f, rows, cols, buf, size, out);
    free(buf);
    return st;
}

/* ---- a held 16-bit matrix quantised without a float32 copy of the whole ---- */

typedef struct {
    const pmat *src;
    const bq_format *f;
    bq_qopts o;
    uint8_t *out;      /* fake quantisation: rows x cols bf16 */
    uint8_t *pk;       /* packing: the bq_pack rows (no header: formats that need one are not taken) */
    size_t rb;
    atomic_int not_bf16, failed;
    bq_status st;
    char msg[256];
} q16_job;

enum { Q16_ROWS = 8 };  /* rows widened at a time: a few tens of KB, in cache */

/* The first failure of any worker, with its message. */
static void q16_fail(q16_job *j, bq_status st, const char *msg)
{
    if (!atomic_exchange(&j->failed, 1)) { j->st = st; snprintf(j->msg, sizeof j->msg, "%s", msg); }
}

static void q16_range(void *arg, size_t r0, size_t r1)
{
    q16_job *j = arg;
    size_t cols = (size_t)j->src->cols;
    float *t = malloc(Q16_ROWS * cols * sizeof *t);
    if (!t) { q16_fail(j, BQ_ERR_NOMEM, "out of memory"); return; }
    for (size_t r = r0; r < r1 && !atomic_load(&j->not_bf16) && !atomic_load(&j->failed); r += Q16_ROWS) {
        size_t n = r1 - r < Q16_ROWS ? r1 - r : Q16_ROWS;
        pmat_decode(j->src, (int)r, (int)(r + n), t);
        bq_status st = j->pk ? bq_pack(j->f, t, n, cols, &j->o, j->pk + r * j->rb, n * j->rb)
                             : bq_qdq(j->f, t, t, n, cols, &j->o);
        if (st) { q16_fail(j, st, bq_last_error()); break; }
        if (!j->pk && f32_top_halves(t, n * cols, j->out + 2 * r * cols)) atomic_store(&j->not_bf16, 1);
    }
    free(t);
}

/* The rows of src through q16_range over all cores; 0 if all went through. */
static int q16_run(q16_job *j, const bq_qopts *o)
{
    j->o = o ? *o : (bq_qopts){BQ_ROUND_RNE, 0, 0};
    j->o.threads = 1;  /* each worker's rows alone */
    size_t n = (size_t)j->src->rows * j->src->cols;
    bq_parallel_for((size_t)j->src->rows, n < (1u << 20) ? 1 : (o ? o->threads : 0), q16_range, j);
    return atomic_load(&j->failed) || atomic_load(&j->not_bf16);
}

bq_status pmat_qdq16(const bq_format *f, const pmat *src, const bq_qopts *o, pmat **out)
{
    *out = NULL;
    if (!pmat_is_float16(src)) return bq_fail(BQ_ERR_ARG, "pmat_qdq16: %s is not a 16-bit float matrix", src->f->name);
    bq_format *b16;
    bq_status st = bq_format_parse("bf16", &b16);
    if (st) return st;
    size_t size = bq_packed_size(b16, (size_t)src->rows, (size_t)src->cols);
    pmat *m = NULL;
    if (!(st = pmat_alloc(b16, src->rows, src->cols, size, &m)) && !(m->data = calloc(1, size + 8)))
        st = bq_fail(BQ_ERR_NOMEM, "out of memory for a %dx%d bf16 matrix", src->rows, src->cols);
    bq_format_free(b16);
    if (st) { pmat_free(m); return st; }
    q16_job j = {.src = src, .f = f, .out = m->data};
    if (q16_run(&j, o)) {
        pmat_free(m);
        return atomic_load(&j.failed) ? bq_fail(j.st, "%s", j.msg) : BQ_OK;  /* else: not bf16 numbers */
    }
    m->kind = PM_STREAM;
    m->size = size;
    stream_setup(m);
    *out = m;
    return BQ_OK;
}

bq_status pmat_pack16(const bq_format *f, const pmat *src, const bq_qopts *o, pmat **out)
{
    *out = NULL;
    if (!pmat_is_float16(src) || pack_header_bytes(f))
        return bq_fail(BQ_ERR_ARG, "pmat_pack16: %s from %s", f->name, src->f->name);
    size_t size = bq_packed_size(f, (size_t)src->rows, (size_t)src->cols);
    uint8_t *buf = size == SIZE_MAX ? NULL : malloc(size ? size : 1);
    if (!buf) return bq_fail(BQ_ERR_NOMEM, "out of memory packing %dx%d", src->rows, src->cols);
    q16_job j = {.src = src, .f = f, .pk = buf, .rb = pack_row_bytes(f, (size_t)src->cols)};
    bq_status st = q16_run(&j, o) ? BQ_OK : pmat_new(f, src->rows, src->cols, buf, size, out);
    free(buf);
    return st;
}

void pmat_row_codes(const pmat *m, int row, uint32_t *sc, uint8_t *ec)
{
    int p = row / PM_ROWS, r = row % PM_ROWS, sh, k = 0;
    const uint8_t *pw = m->pw + (size_t)p * panel_bytes(m);
    if (m->eb == 8)  /* whole units at once, as panel_range writes them */
        for (; k + 4 <= m->cols; k += 4) memcpy(ec + k, pw + (size_t)(k / 4) * 64 + (size_t)r * 4, 4);
    else
        for (; k + 8 <= m->cols; k += 8) {
            uint32_t v, lo, hi;
            memcpy(&v, pw + (size_t)(k / 8) * 64 + (size_t)r * 4, 4);
            lo = v & 0x0f0f0f0fu;
            hi = (v >> 4) & 0x0f0f0f0fu;
            memcpy(ec + k, &lo, 4);
            memcpy(ec + k + 4, &hi, 4);
        }
    for (; k < m->cols; k++) {
        size_t o = slot(m, r, k, &sh);
        ec[k] = (uint8_t)((pw[o] >> sh) & (m->eb == 8 ? 0xff : 0x0f));
    }
    for (int g = 0; g < m->nb; g++) {
        sc[g] = 0;
        memcpy(&sc[g], m->ps + (((size_t)p * m->nb + g) * PM_ROWS + r) * m->sbytes, (size_t)m->sbytes);
    }
}

/* Rows [r0, r1) back into the bq_pack layout (each row starts on a byte). */
typedef struct { const pmat *m; uint8_t *body; size_t rb; int oom; } unpanel_job;

static void unpanel_range(void *arg, size_t r0, size_t r1)
{
    unpanel_job *j = arg;
    const pmat *m = j->m;
    uint32_t *sc = malloc((size_t)m->nb * sizeof *sc);
    uint8_t *ec = malloc((size_t)m->cols);
    if (!sc || !ec) { free(sc); free(ec); j->oom = 1; return; }
    for (int row = (int)r0; row < (int)r1; row++) {
        pmat_row_codes(m, row, sc, ec);
        pack_row_put(m->f, j->body + (size_t)row * j->rb, (size_t)m->cols, sc, ec);
    }
    free(sc);
    free(ec);
}

bq_status pmat_to_packed(const pmat *m, uint8_t *out, size_t size)
{
    size_t need = bq_packed_size(m->f, (size_t)m->rows, (size_t)m->cols);
    if (size != need) return bq_fail(BQ_ERR_ARG, "buffer of %zu bytes for %zu", size, need);
    if (m->kind == PM_STREAM) { memcpy(out, m->data, size); return BQ_OK; }
    memset(out, 0, size);
    size_t h = pack_header_bytes(m->f);
    if (h) memcpy(out, &m->tscale, 4);
    unpanel_job j = {m, out + h, pack_row_bytes(m->f, (size_t)m->cols), 0};
    bq_parallel_for((size_t)m->rows, (size_t)m->rows * m->cols < (1u << 22) ? 1 : 0, unpanel_range, &j);
    return j.oom ? bq_fail(BQ_ERR_NOMEM, "out of memory") : BQ_OK;
}

void pmat_decode(const pmat *m, int r0, int r1, float *out)
{
    if (m->kind == PM_STREAM) {
        if (m->fast_stream == 2) float16_decode(m, r0, r1, out);
        else if (m->fast_stream) stream_decode_fast(m, r0, r1, out);
        else pack_decode_rows(m->f, m->data, (size_t)m->cols, (size_t)r0, (size_t)r1, out);
        return;
    }
    const pk_isa *k = kernels();
    for (int p = r0 / PM_ROWS; p * PM_ROWS < r1; p++) {
        int a = p * PM_ROWS, lo = a < r0 ? r0 - a : 0, hi = r1 - a < PM_ROWS ? r1 - a : PM_ROWS;
        k->decode(m, p, lo, hi, out + (size_t)(a + lo - r0) * m->cols);
    }
}

/* ---- activations for the integer path ---- */

int pmat_int_ok(const pmat *m, const bq_format *af)
{
    /* activations stay in [-127, 127]: keeps the AVX2 sign trick exact */
    if (m->kind != PM_PANEL || !af->igrid || af->ilo < -127) return 0;
    int ka = group_of(af, m->cols);
    if (ka % 16 || m->cols % ka) return 0;
    int small = ka < m->K ? ka : m->K, big = ka < m->K ? m->K : ka;
    return big % small == 0;
}

void pm_act_free(pm_act *a)
{
    free(a->u);
    free(a->s);
    free(a->q);
    free(a->qsum);
    memset(a, 0, sizeof *a);
}

/* Block formats: the codes straight from the shared quantisation arithmetic
 * (qkern.h, as bq_pack computes them), without the bit stream. */
static void act_block_rows(const bq_format *af, const qctx *c, float em, const float *x, int t0,
                           int t1, pm_act *a)
{
    float inv = 1.0f / em;
    int cols = a->cols, K = a->K, ng = cols / K;
    for (int t = t0; t < t1; t++)
        for (int g = 0; g < ng; g++) {
            const float *xb = x + (size_t)t * cols + (size_t)g * K;
            uint8_t *u = a->u + (size_t)t * cols + (size_t)g * K;
            uint32_t mb = amax_bits(xb, (size_t)K);
            if (mb > 0x7f7fffffu) {  /* Inf/NaN: fake quantisation gives NaN for the block, so does the matmul */
                memset(u, 0x80, (size_t)K);
                a->s[(size_t)t * ng + g] = NAN;
                continue;
            }
            if (af->ggml == 8 && !af->asym && em == 1.0f && K % 16 == 0) {  /* q8_0, the common case: SIMD */
                float amax = u2f(mb), d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
                kernels()->q8_0_codes(xb, K, id, u);
                a->s[(size_t)t * ng + g] = mf_decode(&af->scale, ggml_fp16(af, d));
                continue;
            }
            if (af->ggml) {  /* llama.cpp's rule (q8_0, q4_0, q5_0), as fake quantisation applies it */
                int8_t q[32];
                float d = mf_decode(&af->scale, ggml_block(af, xb, (size_t)K, q));
                for (int i = 0; i < K; i++) u[i] = (uint8_t)((int)((float)q[i] * inv) ^ 0x80);
                a->s[(size_t)t * ng + g] = d * em;
                continue;
            }
            bscale bs = block_scale(af, c, u2f(mb));
            for (int i = 0; i < K; i++) {
                float q;
                block_elem(af, &bs, xb[i], c->round, c->seed, (uint64_t)t * cols + (uint64_t)g * K + (uint64_t)i, &q);
                u[i] = (uint8_t)((int)(q * inv) ^ 0x80);
            }
            a->s[(size_t)t * ng + g] = (bs.post1 * bs.post2) * em;
        }
}

/* q and qsum from u (cols is a multiple of 16: pmat_int_ok). */
static void act_signed(pm_act *a)
{
    size_t nc = (size_t)a->n * a->cols;
    for (size_t i = 0; i < nc; i++) a->q[i] = (int8_t)(a->u[i] ^ 0x80);
    for (size_t c = 0; c < nc / 16; c++) {
        int32_t sum = 0;
        for (int i = 0; i < 16; i++) sum += a->q[16 * c + (size_t)i];
        a->qsum[c] = sum;
    }
}

typedef struct { const bq_format *af; const qctx *c; float em; const float *x; pm_act *a; } act_job;
static void act_range(void *arg, size_t b, size_t e)
{
    act_job *j = arg;
    act_block_rows(j->af, j->c, j->em, j->x, (int)b, (int)e, j->a);
}

bq_status pm_act_make(const bq_format *af, const float *x, int n, int cols, const bq_qopts *o, pm_act *a)
{
    memset(a, 0, sizeof *a);
    int8_t lut[256];
    float em;
    int lo;
    if (!int_grid(af, lut, &em, &lo)) return bq_fail(BQ_ERR_UNSUPPORTED, "format '%s' has no integer grid", af->name);
    int K = group_of(af, cols), ng = cols / K;
    a->u = malloc((size_t)n * cols);
    a->s = malloc((size_t)n * ng * sizeof *a->s);
    a->q = malloc((size_t)n * cols);
    a->qsum = malloc((size_t)n * (cols / 16) * sizeof *a->qsum);
    if (!a->u || !a->s || !a->q || !a->qsum) { pm_act_free(a); return bq_fail(BQ_ERR_NOMEM, "out of memory for quantised activations"); }
    a->n = n;
    a->cols = cols;
    a->K = K;
    if (linear_blocks(af)) {
        qctx c;
        bq_status st = bq_tensor_ctx(af, x, (size_t)n, (size_t)cols, o, &c);
        if (st) { pm_act_free(a); return st; }
        act_job j = {af, &c, em, x, a};
        bq_parallel_for((size_t)n, (size_t)n * cols < (1u << 16) ? 1 : (o ? o->threads : 0), act_range, &j);
        act_signed(a);
        return BQ_OK;
    }
    /* per-row / per-tensor int and plain grids: through the packer */
    size_t psz = bq_packed_size(af, (size_t)n, (size_t)cols), rb = pack_row_bytes(af, (size_t)cols);
    uint8_t *pk = malloc(psz);
    uint32_t *sc = malloc((size_t)ng * sizeof *sc);
    uint8_t *ec = malloc((size_t)cols);
    bq_status st = BQ_OK;
    if (!pk || !sc || !ec) st = bq_fail(BQ_ERR_NOMEM, "out of memory for quantised activations");
    if (!st) st = bq_pack(af, x, (size_t)n, (size_t)cols, o, pk, psz);
    if (!st) {
        float ts = pack_tensor_scale(af, pk);
        int has_codes = !format_rows_unscaled(af);
        const uint8_t *body = pk + pack_header_bytes(af);
        for (int t = 0; t < n; t++) {
            pack_row_codes(af, body + (size_t)t * rb, (size_t)cols, sc, ec);
            for (int k = 0; k < cols; k++) a->u[(size_t)t * cols + k] = (uint8_t)(lut[ec[k]] ^ 0x80);
            for (int g = 0; g < ng; g++) {
                float s1 = 1.0f, s2 = 1.0f;
                if (has_codes) pack_scale_parts(af, ts, sc[g], &s1, &s2);
                else if (format_float_scale(af)) s1 = ts;
                a->s[(size_t)t * ng + g] = (s1 * s2) * em;
            }
        }
    }
    free(pk);
    free(sc);
    free(ec);
    if (st) pm_act_free(a);
    else act_signed(a);
    return st;
}

void pmat_mm_int(const pmat *m, const pm_act *a, float *y, int ldy, int r0, int r1)
{
    kernels()->mm_int(m, a, y, ldy, r0 / PM_ROWS, (r1 + PM_ROWS - 1) / PM_ROWS);
}

void pmat_mv_f32(const pmat *m, const float *x, int n, float *y, int ldy, int r0, int r1)
{
    kernels()->mv_f32(m, x, n, y, ldy, r0 / PM_ROWS, (r1 + PM_ROWS - 1) / PM_ROWS);
}
