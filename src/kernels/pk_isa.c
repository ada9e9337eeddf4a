/* Matmuls on panel-packed weights (layout in pmat.c), compiled once per ISA
 * (BQ_ISA = scalar, avx2, avx512). Every ISA computes each output lane with
 * the same operations in the same order, so all give identical bits:
 *
 *   integer path:  y[t][r] = fma chain over groups of  (float)(sum_k w[r][k] a[t][k])  *  (sw[r] * sa[t])
 *                  the inner sum is exact in int32;
 *   float path:    four partial sums per row, P_i over the columns k = i (mod 4):
 *                    b_i = fma chain of (float)w[r][k] * x[t][k] over k in the group, k ascending
 *                    P_i = fma(b_i, sw[r], P_i) group after group
 *                  y[t][r] = (P_0 + P_1) + (P_2 + P_3)   (what the SIMD lanes hold: row x k mod 4)
 *   sw[r] = (s1 * s2) * emult of the row's group (the table pmat->sc for 1-byte scales).
 * No FMA contraction by the compiler (the build forbids it); FMAs are written out.
 */
#include "isa.h"
#include "pmat.h"
#include "qkern.h"
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif


enum { TB = 64, MV_T = 4 };

/* ---- scales ---- */

INLINE const uint8_t *scale_codes(const pmat *m, int p, int g)
{
    return m->ps + ((size_t)p * m->nb + g) * PM_ROWS * m->sbytes;
}

/* The two factors of group g's scale for the 16 rows of panel p (exact decode). */
INLINE void group_scales(const pmat *m, int p, int g, float *s1, float *s2)
{
    const uint8_t *c = scale_codes(m, p, g);
    for (int r = 0; r < PM_ROWS; r++) {
        if (m->sbytes == 1) { s1[r] = m->s1[c[r]]; s2[r] = m->s2[c[r]]; continue; }
        uint32_t v = 0;
        memcpy(&v, c + (size_t)r * m->sbytes, (size_t)m->sbytes);
        if (m->sbytes == 4) s1[r] = u2f(v);
        else s1[r] = m->f->scale.ebits == 5 ? half_to_f32(v) : u2f(v << 16);
        s2[r] = 1.0f;
    }
}

INLINE const uint8_t *panel(const pmat *m, int p) { return m->pw + (size_t)p * m->cols * PM_ROWS * m->eb / 8; }

/* Integer weight of (row-in-panel r, column k): the reference the SIMD paths follow. */
INLINE int wval(const pmat *m, const uint8_t *pw, int r, int k)
{
    if (m->eb == 8) return m->lut[pw[(size_t)(k / 4) * 64 + (size_t)r * 4 + (size_t)(k % 4)]];
    int u = k / 8, i = k % 8;
    uint8_t b = pw[(size_t)u * 64 + (size_t)r * 4 + (size_t)(i % 4)];
    return m->lut[i < 4 ? b & 15 : b >> 4];
}

/* Rows r0..r1 of panel p as float32: wval's values, each ((w * emult) * s1) * s2 as
 * the reference writes it, a row's group at a time. A 4-bit group's sixteen values
 * are made once into a table (the same products), read by code. */
static void decode_panel(const pmat *m, int p, int r0, int r1, float *out)
{
    const uint8_t *pw = panel(m, p);
    const int K = m->K, per = m->eb == 4 ? 8 : 4;  /* codes in 4 bytes of a row */
    float s1[PM_ROWS], s2[PM_ROWS], tab[16];
    for (int g = 0; g < m->nb; g++) {
        group_scales(m, p, g, s1, s2);
        for (int r = r0; r < r1; r++) {
            float *y = out + (size_t)(r - r0) * m->cols + (size_t)g * K;
            const uint8_t *b = pw + (size_t)(g * K / per) * 64 + (size_t)r * 4;
            if (m->eb == 4) {
                for (int c = 0; c < 16; c++) tab[c] = (((float)m->lut[c] * m->emult) * s1[r]) * s2[r];
                for (int k = 0; k < K; k += 8, b += 64)
                    for (int j = 0; j < 4; j++) { y[k + j] = tab[b[j] & 15]; y[k + 4 + j] = tab[b[j] >> 4]; }
            } else {
                const float f1 = s1[r], f2 = s2[r];
                for (int k = 0; k < K; k += 4, b += 64)
                    for (int j = 0; j < 4; j++) y[k + j] = (((float)m->lut[b[j]] * m->emult) * f1) * f2;
            }
        }
    }
}

INLINE void store_rows(float *y, const float *acc, int nr)
{
    for (int r = 0; r < nr; r++) y[r] = acc[r];
}

INLINE int rows_in(const pmat *m, int p) { return m->rows - p * PM_ROWS < PM_ROWS ? m->rows - p * PM_ROWS : PM_ROWS; }

typedef int32_t __attribute__((may_alias, aligned(1))) i32u;

/* q8_0 activation codes (+ 128) of x * id: qkern.h's ggml_q8_code, sixteen lanes at a time. */
static void q8_0_codes(const float *x, int n, float id, uint8_t *u)
{
    int i = 0;
#if defined(__AVX512F__)
    const __m512 idv = _mm512_set1_ps(id), lim = _mm512_set1_ps(127.0f), half = _mm512_set1_ps(0.5f);
    const __m512i one = _mm512_set1_epi32(1), k80 = _mm512_set1_epi32(0x80);
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i), idv);
        v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);
        v = _mm512_min_ps(_mm512_max_ps(v, _mm512_sub_ps(_mm512_setzero_ps(), lim)), lim);
        __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC), fr = _mm512_sub_ps(v, t);
        __m512i c = _mm512_cvttps_epi32(t);
        c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(fr, half, _CMP_GE_OQ), c, one);
        c = _mm512_mask_sub_epi32(c, _mm512_cmp_ps_mask(fr, _mm512_sub_ps(_mm512_setzero_ps(), half), _CMP_LE_OQ), c, one);
        _mm_storeu_si128((__m128i *)(u + i), _mm512_cvtepi32_epi8(_mm512_xor_si512(c, k80)));
    }
#endif
    for (; i < n; i++) u[i] = (uint8_t)(ggml_q8_code(x[i] * id) ^ 0x80);
}

#if defined(__AVX512VNNI__)
/* ---- AVX-512 VNNI ---- */

/* Sixteen rows x 4 columns of int8 weights starting at column k (k % 4 == 0). */
INLINE __m512i wvec(const pmat *m, const uint8_t *pw, int k, __m512i lut4)
{
    if (m->eb == 8) {
        __m512i v = _mm512_loadu_si512(pw + (size_t)(k / 4) * 64);
        if (m->f->el.signmag) {
            __mmask64 neg = _mm512_movepi8_mask(v);
            v = _mm512_and_si512(v, _mm512_set1_epi8(0x7f));
            v = _mm512_mask_sub_epi8(v, neg, _mm512_setzero_si512(), v);
        }
        return v;
    }
    __m512i b = _mm512_loadu_si512(pw + (size_t)(k / 8) * 64);
    __m512i nib = k % 8 ? _mm512_srli_epi16(b, 4) : b;
    return _mm512_shuffle_epi8(lut4, _mm512_and_si512(nib, _mm512_set1_epi8(0x0f)));
}

INLINE __m512 factors(const pmat *m, int p, int g)
{
    const uint8_t *c = scale_codes(m, p, g);
    if (m->sbytes == 1) {
        __m512i code = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)c));
        if (m->pow2_scales) {  /* build 2^(c + shift - 127); the table only for the lanes outside normal range */
            __m512i e = _mm512_add_epi32(code, _mm512_set1_epi32(m->pow2_shift));
            __mmask16 odd = _mm512_cmpgt_epi32_mask(_mm512_set1_epi32(1), e) | _mm512_cmpgt_epi32_mask(e, _mm512_set1_epi32(254)) |
                            _mm512_cmpeq_epi32_mask(code, _mm512_set1_epi32(255));
            __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
            return odd ? _mm512_mask_i32gather_ps(v, odd, code, m->sc, 4) : v;
        }
        return _mm512_i32gather_ps(code, m->sc, 4);
    }
    __m512 s1;
    if (m->sbytes == 4) s1 = _mm512_loadu_ps(c);
    else if (m->f->scale.ebits == 5) s1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)c));
    else s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)c)), 16));
    return _mm512_mul_ps(s1, _mm512_set1_ps(m->emult));  /* (s1 * 1) * emult */
}

/* NT tokens of one panel: accumulators stay in registers over all columns.
 * VNNI multiplies unsigned by signed bytes: the weights go in as w + 128
 * (unsigned), the activations as themselves (signed, broadcast straight from
 * a->q), and each group's sum is corrected by 128 * (the sum of its activations,
 * asum): the same exact int32 as sum w * a, so the same bits as the other ISAs. */
#define MM_TOKENS(NT)                                                                                              \
    static void mm_tokens_##NT(const pmat *m, const pm_act *a, int t0, const uint8_t *pw, const int32_t *asum,     \
                               const __m512 *swv, int C, __m512i lut4u, float *out)                                \
    {                                                                                                              \
        int cols = m->cols, nga = cols / a->K, ngc = cols / C;                                                     \
        const __m512i k128 = _mm512_set1_epi8((char)0x80);                                                         \
        __m512 acc[NT];                                                                                            \
        __m512i d[NT];                                                                                             \
        for (int i = 0; i < NT; i++) acc[i] = _mm512_setzero_ps();                                                 \
        const int8_t *q = a->q + (size_t)t0 * cols;                                                                \
        for (int c0 = 0; c0 < cols; c0 += C) {                                                                     \
            for (int i = 0; i < NT; i++) d[i] = _mm512_set1_epi32(-128 * asum[(size_t)i * ngc + c0 / C]);          \
            for (int k = c0; k < c0 + C; k += 8) {                                                                 \
                __m512i w0, w1;                                                                                    \
                if (m->eb == 4) {                                                                                  \
                    const uint8_t *b4 = pw + (size_t)((unsigned)k / 8) * 64;                                       \
                    _mm_prefetch((const char *)b4 + 4096, _MM_HINT_T0);                                            \
                    __m512i b = _mm512_loadu_si512(b4), lo4 = _mm512_set1_epi8(0x0f);                              \
                    w0 = _mm512_shuffle_epi8(lut4u, _mm512_and_si512(b, lo4));                                     \
                    w1 = _mm512_shuffle_epi8(lut4u, _mm512_and_si512(_mm512_srli_epi16(b, 4), lo4));               \
                } else {                                                                                           \
                    _mm_prefetch((const char *)pw + (size_t)((unsigned)k / 4) * 64 + 4096, _MM_HINT_T0);           \
                    _mm_prefetch((const char *)pw + (size_t)((unsigned)k / 4) * 64 + 4160, _MM_HINT_T0);           \
                    w0 = _mm512_xor_si512(wvec(m, pw, k, lut4u), k128);                                            \
                    w1 = _mm512_xor_si512(wvec(m, pw, k + 4, lut4u), k128);                                        \
                }                                                                                                  \
                for (int i = 0; i < NT; i++) {                                                                     \
                    const int8_t *qt = q + (size_t)i * cols + k;                                                   \
                    d[i] = _mm512_dpbusd_epi32(d[i], w0, _mm512_set1_epi32(*(const i32u *)qt));                    \
                    d[i] = _mm512_dpbusd_epi32(d[i], w1, _mm512_set1_epi32(*(const i32u *)(qt + 4)));              \
                }                                                                                                  \
            }                                                                                                      \
            __m512 sw = swv[c0 / m->K];                                                                            \
            for (int i = 0; i < NT; i++) {                                                                         \
                __m512 sc = _mm512_mul_ps(sw, _mm512_set1_ps(a->s[(size_t)(t0 + i) * nga + c0 / a->K]));          \
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[i]), sc, acc[i]);                                    \
            }                                                                                                      \
        }                                                                                                          \
        for (int i = 0; i < NT; i++) _mm512_storeu_ps(out + 16 * i, acc[i]);                                      \
    }
MM_TOKENS(8)

/* One token (decoding): one accumulator would chain every VNNI product of a group
 * through its latency, so four take turns over each 16 columns and are added when
 * the group ends (exact int32: the same sums, the same bits). */
static void mm_tokens_1(const pmat *m, const pm_act *a, int t0, const uint8_t *pw, const int32_t *asum,
                        const __m512 *swv, int C, __m512i lut4u, float *out)
{
    int cols = m->cols, nga = cols / a->K;
    const __m512i k128 = _mm512_set1_epi8((char)0x80), lo4 = _mm512_set1_epi8(0x0f);
    __m512 acc = _mm512_setzero_ps();
    const int8_t *q = a->q + (size_t)t0 * cols;
    for (int c0 = 0; c0 < cols; c0 += C) {  /* (C is a multiple of 16: pmat_int_ok) */
        __m512i d[4] = {_mm512_set1_epi32(-128 * asum[c0 / C]), _mm512_setzero_si512(), _mm512_setzero_si512(),
                        _mm512_setzero_si512()};
        for (int k = c0; k < c0 + C; k += 16) {
            __m512i w[4];
            if (m->eb == 4) {
                const uint8_t *b4 = pw + (size_t)((unsigned)k / 8) * 64;
                _mm_prefetch((const char *)b4 + 4096, _MM_HINT_T0);
                __m512i b0 = _mm512_loadu_si512(b4), b1 = _mm512_loadu_si512(b4 + 64);
                w[0] = _mm512_shuffle_epi8(lut4u, _mm512_and_si512(b0, lo4));
                w[1] = _mm512_shuffle_epi8(lut4u, _mm512_and_si512(_mm512_srli_epi16(b0, 4), lo4));
                w[2] = _mm512_shuffle_epi8(lut4u, _mm512_and_si512(b1, lo4));
                w[3] = _mm512_shuffle_epi8(lut4u, _mm512_and_si512(_mm512_srli_epi16(b1, 4), lo4));
            } else {
                _mm_prefetch((const char *)pw + (size_t)((unsigned)k / 4) * 64 + 4096, _MM_HINT_T0);
                _mm_prefetch((const char *)pw + (size_t)((unsigned)k / 4) * 64 + 4160, _MM_HINT_T0);
                for (int j = 0; j < 4; j++) w[j] = _mm512_xor_si512(wvec(m, pw, k + 4 * j, lut4u), k128);
            }
            for (int j = 0; j < 4; j++) d[j] = _mm512_dpbusd_epi32(d[j], w[j], _mm512_set1_epi32(*(const i32u *)(q + k + 4 * j)));
        }
        __m512i dsum = _mm512_add_epi32(_mm512_add_epi32(d[0], d[1]), _mm512_add_epi32(d[2], d[3]));
        __m512 sc = _mm512_mul_ps(swv[c0 / m->K], _mm512_set1_ps(a->s[(size_t)t0 * nga + c0 / a->K]));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dsum), sc, acc);
    }
    _mm512_storeu_ps(out, acc);
}

static void mm_int(const pmat *m, const pm_act *a, float *y, int ldy, int p0, int p1)
{
    enum { ONSTACK = 256 };  /* groups whose factors and sums live on the stack (no allocation a call) */
    int C = m->K < a->K ? m->K : a->K, cols = m->cols, ngc = cols / C;
    /* 4-bit codes map straight to w + 128 (the table shifted); 8-bit ones are flipped after wvec */
    __m512i lut4u = _mm512_xor_si512(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)m->lut)),
                                     m->eb == 4 ? _mm512_set1_epi8((char)0x80) : _mm512_setzero_si512());
    __m512 swv_stack[ONSTACK];
    int32_t asum_stack[8 * ONSTACK];
    size_t na = (size_t)a->n * ngc;
    __m512 *swv = m->nb <= ONSTACK ? swv_stack : aligned_alloc(64, (size_t)m->nb * sizeof *swv);
    int32_t *asum = na <= 8 * ONSTACK ? asum_stack : malloc(na * sizeof *asum);
    float out[8 * PM_ROWS];
    if (!asum || !swv) goto done;  /* a few bytes per group: cannot fail in practice */
    for (size_t i = 0; i < na; i++) {  /* the activations' sums over each group of C (token i / ngc; C % 16 == 0) */
        int32_t sum = 0;
        for (int k = 0; k < C / 16; k++) sum += a->qsum[i * (C / 16) + (size_t)k];
        asum[i] = sum;
    }
    for (int p = p0; p < p1; p++) {
        const uint8_t *pw = panel(m, p);
        for (int g = 0; g < m->nb; g++) swv[g] = factors(m, p, g);
        int t = 0, nr = rows_in(m, p);
        for (; t + 8 <= a->n; t += 8) {
            mm_tokens_8(m, a, t, pw, asum + (size_t)t * ngc, swv, C, lut4u, out);
            for (int i = 0; i < 8; i++) store_rows(y + (size_t)(t + i) * ldy + p * PM_ROWS, out + 16 * i, nr);
        }
        for (; t < a->n; t++) {
            mm_tokens_1(m, a, t, pw, asum + (size_t)t * ngc, swv, C, lut4u, out);
            store_rows(y + (size_t)t * ldy + p * PM_ROWS, out, nr);
        }
    }
done:
    if (asum != asum_stack) free(asum);
    if (swv != swv_stack) free(swv);
}

/* Lanes (row, k mod 4) of quarter Q (rows 4Q..4Q+3) of a 16x4 int8 tile, as float. */
#define QUARTER(w, Q) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(w, Q)))

/* Sum each 128-bit lane's four floats as (p0 + p1) + (p2 + p3) into lane 4i. */
INLINE __m512 hsum4(__m512 v)
{
    __m512 t = _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1));   /* [p0+p1, p1+p0, p2+p3, p3+p2] */
    return _mm512_add_ps(t, _mm512_permute_ps(t, 0x4E));       /* lane 0: (p0+p1)+(p2+p3) */
}

/* NT tokens of panel p: sixteen accumulators a token, in registers (NT is a
 * constant: a runtime token count spills them to the stack). Each token's sums run
 * in the same order whatever NT is, so pairs and single tokens give the same bits. */
#define MV_TOKENS(NT)                                                                                              \
    static void mv_tokens_##NT(const pmat *m, int p, const float *x, int cols, float *y, int ldy,                 \
                               const __m512i expand[4], __m512i lut4)                                             \
    {                                                                                                              \
        const __m512i pick = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);         \
        const uint8_t *pw = panel(m, p);                                                                           \
        __m512 P[NT][4];                                                                                           \
        for (int t = 0; t < NT; t++)                                                                               \
            for (int q = 0; q < 4; q++) P[t][q] = _mm512_setzero_ps();                                             \
        for (int g = 0; g < m->nb; g++) {                                                                          \
            __m512 b[NT][4];                                                                                       \
            for (int t = 0; t < NT; t++)                                                                           \
                for (int q = 0; q < 4; q++) b[t][q] = _mm512_setzero_ps();                                         \
            for (int k = g * m->K; k < (g + 1) * m->K; k += 4) {                                                   \
                _mm_prefetch((const char *)pw + (size_t)k * 16 * m->eb / 8 + 4096, _MM_HINT_T0);                   \
                __m512i w = wvec(m, pw, k, lut4);                                                                  \
                __m512 wf[4] = {QUARTER(w, 0), QUARTER(w, 1), QUARTER(w, 2), QUARTER(w, 3)};                       \
                for (int t = 0; t < NT; t++) {                                                                     \
                    __m512 xv = _mm512_broadcast_f32x4(_mm_loadu_ps(x + (size_t)t * cols + k));                    \
                    for (int q = 0; q < 4; q++) b[t][q] = _mm512_fmadd_ps(wf[q], xv, b[t][q]);                     \
                }                                                                                                  \
            }                                                                                                      \
            __m512 swv = factors(m, p, g);                                                                         \
            for (int q = 0; q < 4; q++) {                                                                          \
                __m512 se = _mm512_permutexvar_ps(expand[q], swv);                                                 \
                for (int t = 0; t < NT; t++) P[t][q] = _mm512_fmadd_ps(b[t][q], se, P[t][q]);                      \
            }                                                                                                      \
        }                                                                                                          \
        for (int t = 0; t < NT; t++) {                                                                             \
            __m512 lo = _mm512_permutex2var_ps(hsum4(P[t][0]), pick, hsum4(P[t][1]));                              \
            __m512 hi = _mm512_permutex2var_ps(hsum4(P[t][2]), pick, hsum4(P[t][3]));                              \
            float out[PM_ROWS];                                                                                    \
            _mm512_storeu_ps(out, _mm512_shuffle_f32x4(lo, hi, 0x44));                                             \
            store_rows(y + (size_t)t * ldy + p * PM_ROWS, out, rows_in(m, p));                                     \
        }                                                                                                          \
    }
MV_TOKENS(2)
MV_TOKENS(1)

static void mv_f32(const pmat *m, const float *x, int n, float *y, int ldy, int p0, int p1)
{
    __m512i lut4 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)m->lut));
    __m512i expand[4];
    for (int q = 0; q < 4; q++) {
        int idx[16];
        for (int l = 0; l < 16; l++) idx[l] = 4 * q + l / 4;
        expand[q] = _mm512_loadu_si512(idx);
    }
    int cols = m->cols;
    for (int p = p0; p < p1; p++) {
        int t = 0;
        for (; t + 2 <= n; t += 2) mv_tokens_2(m, p, x + (size_t)t * cols, cols, y + (size_t)t * ldy, ldy, expand, lut4);
        if (t < n) mv_tokens_1(m, p, x + (size_t)t * cols, cols, y + (size_t)t * ldy, ldy, expand, lut4);
    }
}

#elif defined(__AVX2__)
/* ---- AVX2: two halves of 8 rows; u8 x s8 products by the sign trick ---- */

/* Eight rows x 4 columns (half h of the panel) as int8. */
INLINE __m256i wvec8(const pmat *m, const uint8_t *pw, int k, int h, __m256i lut4)
{
    if (m->eb == 8) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(pw + (size_t)(k / 4) * 64 + 32 * h));
        if (m->f->el.signmag) {
            __m256i mag = _mm256_and_si256(v, _mm256_set1_epi8(0x7f));
            v = _mm256_blendv_epi8(mag, _mm256_sub_epi8(_mm256_setzero_si256(), mag), v);
        }
        return v;
    }
    __m256i b = _mm256_loadu_si256((const __m256i *)(pw + (size_t)(k / 8) * 64 + 32 * h));
    __m256i nib = k % 8 ? _mm256_srli_epi16(b, 4) : b;
    return _mm256_shuffle_epi8(lut4, _mm256_and_si256(nib, _mm256_set1_epi8(0x0f)));
}

/* The matmul factors of group g for rows 8h..8h+7 of panel p, as group_factors
 * computes them ((s1 * 1) * emult for 2- and 4-byte scales), converted in
 * registers (F16C for fp16) instead of one scale at a time. */
INLINE __m256 factors8(const pmat *m, int p, int g, int h)
{
    const uint8_t *c = scale_codes(m, p, g) + (size_t)8 * h * m->sbytes;
    if (m->sbytes == 1) {
        __m256i code = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)c));
        return _mm256_i32gather_ps(m->sc, code, 4);
    }
    __m256 s1;
    if (m->sbytes == 4) s1 = _mm256_loadu_ps((const float *)c);
    else if (m->f->scale.ebits == 5) s1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)c));
    else s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)c)), 16));
    return _mm256_mul_ps(s1, _mm256_set1_ps(m->emult));
}

static void mm_int(const pmat *m, const pm_act *a, float *y, int ldy, int p0, int p1)
{
    int C = m->K < a->K ? m->K : a->K, S = C % 32 ? 16 : 32, J = S / 4, cols = m->cols, nga = cols / a->K;
    __m256i lut4 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)m->lut));
    const __m256i ones16 = _mm256_set1_epi16(1), flip = _mm256_set1_epi8((char)0x80);
    float acc[TB][PM_ROWS] __attribute__((aligned(32)));
    int32_t iacc[TB][PM_ROWS] __attribute__((aligned(32)));
    for (int p = p0; p < p1; p++) {
        const uint8_t *pw = panel(m, p);
        for (int t0 = 0; t0 < a->n; t0 += TB) {
            int tb = a->n - t0 < TB ? a->n - t0 : TB;
            memset(acc, 0, (size_t)tb * sizeof acc[0]);
            for (int c0 = 0; c0 < cols; c0 += C) {
                const float *sa = a->s + (size_t)t0 * nga + c0 / a->K;
                for (int k0 = c0; k0 < c0 + C; k0 += S) {
                    int first = k0 == c0, last = k0 + S == c0 + C;
                    for (int h = 0; h < 2; h++) {
                        __m256i wa[8], ww[8];
                        for (int j = 0; j < J; j++) {
                            ww[j] = wvec8(m, pw, k0 + 4 * j, h, lut4);
                            wa[j] = _mm256_abs_epi8(ww[j]);
                        }
                        __m256 swv = factors8(m, p, c0 / m->K, h);
                        const uint8_t *u = a->u + (size_t)t0 * cols + k0;
                        for (int t = 0; t < tb; t++) {
                            __m256i d = first ? _mm256_setzero_si256() : _mm256_load_si256((const __m256i *)(iacc[t] + 8 * h));
                            for (int j = 0; j < J; j++) {
                                __m256i av = _mm256_xor_si256(_mm256_set1_epi32(*(const i32u *)(u + (size_t)t * cols + 4 * j)), flip);
                                __m256i pr = _mm256_maddubs_epi16(wa[j], _mm256_sign_epi8(av, ww[j]));
                                d = _mm256_add_epi32(d, _mm256_madd_epi16(pr, ones16));
                            }
                            if (!last) { _mm256_store_si256((__m256i *)(iacc[t] + 8 * h), d); continue; }
                            __m256 sc = _mm256_mul_ps(swv, _mm256_set1_ps(sa[(size_t)t * nga]));
                            __m256 f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), sc, _mm256_load_ps(acc[t] + 8 * h));
                            _mm256_store_ps(acc[t] + 8 * h, f);
                        }
                    }
                }
            }
            for (int t = 0; t < tb; t++) store_rows(y + (size_t)(t0 + t) * ldy + p * PM_ROWS, acc[t], rows_in(m, p));
        }
    }
}

/* (p0 + p1) + (p2 + p3) of each 128-bit lane into its lane 0. */
INLINE __m256 hsum4_8(__m256 v)
{
    __m256 t = _mm256_add_ps(v, _mm256_permute_ps(v, 0xB1));
    return _mm256_add_ps(t, _mm256_permute_ps(t, 0x4E));
}

/* b[q] += w[rows 2q, 2q+1][k..k+3] * x[k..k+3], lane by lane (w: 8 rows x 4 int8). */
INLINE void quad_fma(__m256 *b, __m256i w, const float *x)
{
    __m256 xv = _mm256_broadcast_ps((const __m128 *)x);
    __m128i lo = _mm256_castsi256_si128(w), hi = _mm256_extracti128_si256(w, 1);
    __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int q = 0; q < 4; q++) b[q] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part[q])), xv, b[q]);
}

static void mv_f32(const pmat *m, const float *x, int n, float *y, int ldy, int p0, int p1)
{
    __m256i lut4 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)m->lut));
    const __m256i nib = _mm256_set1_epi8(0x0f);
    int cols = m->cols;
    float out[PM_ROWS];
    __m256i pair[4];  /* lanes of rows 2q, 2q+1, four each */
    for (int q = 0; q < 4; q++) pair[q] = _mm256_setr_epi32(2 * q, 2 * q, 2 * q, 2 * q, 2 * q + 1, 2 * q + 1, 2 * q + 1, 2 * q + 1);
    for (int p = p0; p < p1; p++) {
        const uint8_t *pw = panel(m, p);
        for (int t = 0; t < n; t++) {
            const float *xt = x + (size_t)t * cols;
            for (int h = 0; h < 2; h++) {  /* rows 8h..8h+7: four ymm of 2 rows x 4 k */
                __m256 P[4];
                for (int q = 0; q < 4; q++) P[q] = _mm256_setzero_ps();
                for (int g = 0; g < m->nb; g++) {
                    __m256 b[4];
                    for (int q = 0; q < 4; q++) b[q] = _mm256_setzero_ps();
                    int k = g * m->K, ke = k + m->K;
                    if (m->eb == 4)  /* 8 columns a load: the low nibbles, then the high ones */
                        for (; k + 8 <= ke; k += 8) {
                            __m256i by = _mm256_loadu_si256((const __m256i *)(pw + (size_t)(k / 8) * 64 + 32 * h));
                            quad_fma(b, _mm256_shuffle_epi8(lut4, _mm256_and_si256(by, nib)), xt + k);
                            quad_fma(b, _mm256_shuffle_epi8(lut4, _mm256_and_si256(_mm256_srli_epi16(by, 4), nib)), xt + k + 4);
                        }
                    for (; k < ke; k += 4) quad_fma(b, wvec8(m, pw, k, h, lut4), xt + k);
                    __m256 sw = factors8(m, p, g, h);
                    for (int q = 0; q < 4; q++) P[q] = _mm256_fmadd_ps(b[q], _mm256_permutevar8x32_ps(sw, pair[q]), P[q]);
                }
                for (int q = 0; q < 4; q++) {
                    float v[8];
                    _mm256_storeu_ps(v, hsum4_8(P[q]));
                    out[8 * h + 2 * q] = v[0];
                    out[8 * h + 2 * q + 1] = v[4];
                }
            }
            store_rows(y + (size_t)t * ldy + p * PM_ROWS, out, rows_in(m, p));
        }
    }
}

#else
/* ---- portable scalar: the reference ---- */

/* sw[r] = (s1 * s2) * emult for the 16 rows: the matmul factor (the SIMD paths
 * compute it eight rows at a time). */
INLINE void group_factors(const pmat *m, int p, int g, float *sw)
{
    const uint8_t *c = scale_codes(m, p, g);
    if (m->sbytes == 1) {
        for (int r = 0; r < PM_ROWS; r++) sw[r] = m->sc[c[r]];
        return;
    }
    float s1[PM_ROWS], s2[PM_ROWS];
    group_scales(m, p, g, s1, s2);
    for (int r = 0; r < PM_ROWS; r++) sw[r] = (s1[r] * s2[r]) * m->emult;
}

static void mm_int(const pmat *m, const pm_act *a, float *y, int ldy, int p0, int p1)
{
    int C = m->K < a->K ? m->K : a->K, cols = m->cols, nga = cols / a->K;
    float sw[PM_ROWS], acc[PM_ROWS];
    for (int p = p0; p < p1; p++) {
        const uint8_t *pw = panel(m, p);
        for (int t = 0; t < a->n; t++) {
            const uint8_t *u = a->u + (size_t)t * cols;
            memset(acc, 0, sizeof acc);
            for (int c0 = 0; c0 < cols; c0 += C) {
                group_factors(m, p, c0 / m->K, sw);
                float sa = a->s[(size_t)t * nga + c0 / a->K];
                for (int r = 0; r < PM_ROWS; r++) {
                    int32_t d = 0;
                    for (int k = c0; k < c0 + C; k++) d += wval(m, pw, r, k) * ((int)u[k] - 128);
                    acc[r] = fmaf((float)d, sw[r] * sa, acc[r]);
                }
            }
            store_rows(y + (size_t)t * ldy + p * PM_ROWS, acc, rows_in(m, p));
        }
    }
}

static void mv_f32(const pmat *m, const float *x, int n, float *y, int ldy, int p0, int p1)
{
    float sw[PM_ROWS], out[PM_ROWS];
    int cols = m->cols;
    for (int p = p0; p < p1; p++) {
        const uint8_t *pw = panel(m, p);
        for (int t = 0; t < n; t++) {
            const float *xt = x + (size_t)t * cols;
            float P[PM_ROWS][4] = {{0}};
            for (int g = 0; g < m->nb; g++) {
                group_factors(m, p, g, sw);
                for (int r = 0; r < PM_ROWS; r++) {
                    float b[4] = {0, 0, 0, 0};
                    for (int k = g * m->K; k < (g + 1) * m->K; k++) b[k % 4] = fmaf((float)wval(m, pw, r, k), xt[k], b[k % 4]);
                    for (int i = 0; i < 4; i++) P[r][i] = fmaf(b[i], sw[r], P[r][i]);
                }
            }
            for (int r = 0; r < PM_ROWS; r++) out[r] = (P[r][0] + P[r][1]) + (P[r][2] + P[r][3]);
            store_rows(y + (size_t)t * ldy + p * PM_ROWS, out, rows_in(m, p));
        }
    }
}
#endif

const pk_isa CAT(pk, BQ_ISA) = {mm_int, mv_f32, decode_panel, q8_0_codes};
