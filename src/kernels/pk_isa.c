/* Matmuls on panel-packed weights (layout in pmat.c), compiled once per ISA
 * (BQ_ISA = scalar, avx2, avx512). Every ISA computes each output lane with
 * the same operations in the same order, so all give identical bits:
 *
 *   integer path:  y[t][r] = sum over groups of  (float)(sum_k w[r][k] a[t][k])  *  (sw[r] * sa[t])
 *                  the inner sum is exact in int32;
 *   float path:    y[t][r] = sum over groups of  (sum_k (float)w[r][k] * x[t][k])  *  sw[r]
 *                  k ascending; no FMA contraction (the build forbids it).
 */
#include "pmat.h"
#include "qkern.h"
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef BQ_ISA
#define BQ_ISA scalar
#endif
#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define INLINE static inline __attribute__((always_inline))

enum { TB = 64, MV_T = 4 };

/* ---- scales ---- */

INLINE float half_to_float(uint32_t h)
{
    uint32_t s = (h & 0x8000u) << 16, e = (h >> 10) & 0x1f, mt = h & 0x3ff;
    if (e == 0x1f) return u2f(s | 0x7f800000u | (mt << 13));
    if (e == 0) { float v = (float)mt * 0x1p-24f; return s ? -v : v; }
    return u2f(s | ((e + 112) << 23) | (mt << 13));
}

/* The two factors of group g's scale for the 16 rows of panel p. */
INLINE void group_scales(const pmat *m, int p, int g, float *s1, float *s2)
{
    const uint8_t *c = m->ps + ((size_t)p * m->nb + g) * PM_ROWS * m->sbytes;
    for (int r = 0; r < PM_ROWS; r++) {
        if (m->sbytes == 1) { s1[r] = m->s1[c[r]]; s2[r] = m->s2[c[r]]; continue; }
        uint32_t v = 0;
        memcpy(&v, c + (size_t)r * m->sbytes, (size_t)m->sbytes);
        if (m->sbytes == 4) s1[r] = u2f(v);
        else s1[r] = m->f->scale.ebits == 5 ? half_to_float(v) : u2f(v << 16);
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

static void decode_panel(const pmat *m, int p, float *out)
{
    const uint8_t *pw = panel(m, p);
    float s1[PM_ROWS], s2[PM_ROWS];
    for (int g = 0; g < m->nb; g++) {
        group_scales(m, p, g, s1, s2);
        for (int r = 0; r < PM_ROWS; r++)
            for (int k = g * m->K; k < (g + 1) * m->K; k++)
                out[(size_t)r * m->cols + k] = (((float)wval(m, pw, r, k) * m->emult) * s1[r]) * s2[r];
    }
}

/* Store lanes [0, nr) of a 16-row accumulator. */
INLINE void store_rows(float *y, const float *acc, int nr)
{
    for (int r = 0; r < nr; r++) y[r] = acc[r];
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

static void mm_int(const pmat *m, const pm_act *a, float *y, int ldy, int p0, int p1)
{
    int C = m->K < a->K ? m->K : a->K, S = C % 32 ? 16 : 32, cols = m->cols, nga = cols / a->K;
    __m512i lut4 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)m->lut));
    const __m512i ones128 = _mm512_set1_epi8((char)0x80);
    float acc[TB][PM_ROWS] __attribute__((aligned(64)));
    int32_t iacc[TB][PM_ROWS] __attribute__((aligned(64)));
    float s1[PM_ROWS], s2[PM_ROWS], sw[PM_ROWS];
    for (int p = p0; p < p1; p++) {
        const uint8_t *pw = panel(m, p);
        int nr = m->rows - p * PM_ROWS < PM_ROWS ? m->rows - p * PM_ROWS : PM_ROWS;
        for (int t0 = 0; t0 < a->n; t0 += TB) {
            int tb = a->n - t0 < TB ? a->n - t0 : TB;
            memset(acc, 0, sizeof acc);
            for (int c0 = 0; c0 < cols; c0 += C) {
                group_scales(m, p, c0 / m->K, s1, s2);
                for (int r = 0; r < PM_ROWS; r++) sw[r] = (s1[r] * s2[r]) * m->emult;
                __m512 swv = _mm512_loadu_ps(sw);
                for (int k0 = c0; k0 < c0 + C; k0 += S) {
                    __m512i w[8], ws = _mm512_setzero_si512();
                    for (int j = 0; j < S / 4; j++) {
                        w[j] = wvec(m, pw, k0 + 4 * j, lut4);
                        ws = _mm512_dpbusd_epi32(ws, ones128, w[j]);
                    }
                    int first = k0 == c0, last = k0 + S == c0 + C;
                    for (int t = 0; t < tb; t++) {
                        const uint8_t *u = a->u + (size_t)(t0 + t) * cols + k0;
                        __m512i d = first ? _mm512_setzero_si512() : _mm512_load_si512(iacc[t]);
                        d = _mm512_sub_epi32(d, ws);
                        for (int j = 0; j < S / 4; j++) {
                            int32_t q;
                            memcpy(&q, u + 4 * j, 4);
                            d = _mm512_dpbusd_epi32(d, _mm512_set1_epi32(q), w[j]);
                        }
                        if (!last) { _mm512_store_si512(iacc[t], d); continue; }
                        __m512 sc = _mm512_mul_ps(swv, _mm512_set1_ps(a->s[(size_t)(t0 + t) * nga + c0 / a->K]));
                        __m512 f = _mm512_add_ps(_mm512_load_ps(acc[t]), _mm512_mul_ps(_mm512_cvtepi32_ps(d), sc));
                        _mm512_store_ps(acc[t], f);
                    }
                }
            }
            for (int t = 0; t < tb; t++) store_rows(y + (size_t)(t0 + t) * ldy + p * PM_ROWS, acc[t], nr);
        }
    }
}

/* Lane i of every 32-bit group, sign-extended, as float. */
INLINE __m512 lanef(__m512i v, int i)
{
    return _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * i), 24));
}

static void mv_f32(const pmat *m, const float *x, int n, float *y, int ldy, int p0, int p1)
{
    __m512i lut4 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)m->lut));
    float s1[PM_ROWS], s2[PM_ROWS], sw[PM_ROWS], out[PM_ROWS];
    int cols = m->cols;
    for (int p = p0; p < p1; p++) {
        const uint8_t *pw = panel(m, p);
        int nr = m->rows - p * PM_ROWS < PM_ROWS ? m->rows - p * PM_ROWS : PM_ROWS;
        for (int t0 = 0; t0 < n; t0 += MV_T) {
            int tn = n - t0 < MV_T ? n - t0 : MV_T;
            __m512 acc[MV_T];
            for (int t = 0; t < MV_T; t++) acc[t] = _mm512_setzero_ps();
            for (int g = 0; g < m->nb; g++) {
                __m512 b[MV_T];
                for (int t = 0; t < MV_T; t++) b[t] = _mm512_setzero_ps();
                for (int k = g * m->K; k < (g + 1) * m->K; k += 4) {
                    __m512i w = wvec(m, pw, k, lut4);
                    for (int i = 0; i < 4; i++) {
                        __m512 wf = lanef(w, i);
                        for (int t = 0; t < tn; t++)
                            b[t] = _mm512_add_ps(b[t], _mm512_mul_ps(wf, _mm512_set1_ps(x[(size_t)(t0 + t) * cols + k + i])));
                    }
                }
                group_scales(m, p, g, s1, s2);
                for (int r = 0; r < PM_ROWS; r++) sw[r] = (s1[r] * s2[r]) * m->emult;
                __m512 swv = _mm512_loadu_ps(sw);
                for (int t = 0; t < tn; t++) acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(b[t], swv));
            }
            for (int t = 0; t < tn; t++) {
                _mm512_storeu_ps(out, acc[t]);
                store_rows(y + (size_t)(t0 + t) * ldy + p * PM_ROWS, out, nr);
            }
        }
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

static void mm_int(const pmat *m, const pm_act *a, float *y, int ldy, int p0, int p1)
{
    int C = m->K < a->K ? m->K : a->K, S = C % 32 ? 16 : 32, cols = m->cols, nga = cols / a->K;
    __m256i lut4 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)m->lut));
    const __m256i ones16 = _mm256_set1_epi16(1), flip = _mm256_set1_epi8((char)0x80);
    float acc[TB][PM_ROWS] __attribute__((aligned(32)));
    int32_t iacc[TB][PM_ROWS] __attribute__((aligned(32)));
    float s1[PM_ROWS], s2[PM_ROWS], sw[PM_ROWS];
    for (int p = p0; p < p1; p++) {
        const uint8_t *pw = panel(m, p);
        int nr = m->rows - p * PM_ROWS < PM_ROWS ? m->rows - p * PM_ROWS : PM_ROWS;
        for (int t0 = 0; t0 < a->n; t0 += TB) {
            int tb = a->n - t0 < TB ? a->n - t0 : TB;
            memset(acc, 0, sizeof acc);
            for (int c0 = 0; c0 < cols; c0 += C) {
                group_scales(m, p, c0 / m->K, s1, s2);
                for (int r = 0; r < PM_ROWS; r++) sw[r] = (s1[r] * s2[r]) * m->emult;
                for (int k0 = c0; k0 < c0 + C; k0 += S) {
                    int first = k0 == c0, last = k0 + S == c0 + C;
                    for (int h = 0; h < 2; h++) {
                        __m256i wa[8], ww[8];
                        for (int j = 0; j < S / 4; j++) {
                            ww[j] = wvec8(m, pw, k0 + 4 * j, h, lut4);
                            wa[j] = _mm256_abs_epi8(ww[j]);
                        }
                        __m256 swv = _mm256_loadu_ps(sw + 8 * h);
                        for (int t = 0; t < tb; t++) {
                            const uint8_t *u = a->u + (size_t)(t0 + t) * cols + k0;
                            __m256i d = first ? _mm256_setzero_si256() : _mm256_load_si256((const __m256i *)(iacc[t] + 8 * h));
                            for (int j = 0; j < S / 4; j++) {
                                int32_t q;
                                memcpy(&q, u + 4 * j, 4);
                                __m256i av = _mm256_xor_si256(_mm256_set1_epi32(q), flip);
                                __m256i pr = _mm256_maddubs_epi16(wa[j], _mm256_sign_epi8(av, ww[j]));
                                d = _mm256_add_epi32(d, _mm256_madd_epi16(pr, ones16));
                            }
                            if (!last) { _mm256_store_si256((__m256i *)(iacc[t] + 8 * h), d); continue; }
                            __m256 sc = _mm256_mul_ps(swv, _mm256_set1_ps(a->s[(size_t)(t0 + t) * nga + c0 / a->K]));
                            __m256 f = _mm256_add_ps(_mm256_load_ps(acc[t] + 8 * h), _mm256_mul_ps(_mm256_cvtepi32_ps(d), sc));
                            _mm256_store_ps(acc[t] + 8 * h, f);
                        }
                    }
                }
            }
            for (int t = 0; t < tb; t++) store_rows(y + (size_t)(t0 + t) * ldy + p * PM_ROWS, acc[t], nr);
        }
    }
}

INLINE __m256 lanef8(__m256i v, int i)
{
    return _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(v, 24 - 8 * i), 24));
}

static void mv_f32(const pmat *m, const float *x, int n, float *y, int ldy, int p0, int p1)
{
    __m256i lut4 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)m->lut));
    float s1[PM_ROWS], s2[PM_ROWS], sw[PM_ROWS], out[PM_ROWS];
    int cols = m->cols;
    for (int p = p0; p < p1; p++) {
        const uint8_t *pw = panel(m, p);
        int nr = m->rows - p * PM_ROWS < PM_ROWS ? m->rows - p * PM_ROWS : PM_ROWS;
        for (int t0 = 0; t0 < n; t0 += MV_T) {
            int tn = n - t0 < MV_T ? n - t0 : MV_T;
            __m256 acc[MV_T][2];
            for (int t = 0; t < MV_T; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
            for (int g = 0; g < m->nb; g++) {
                group_scales(m, p, g, s1, s2);
                for (int r = 0; r < PM_ROWS; r++) sw[r] = (s1[r] * s2[r]) * m->emult;
                for (int h = 0; h < 2; h++) {
                    __m256 b[MV_T];
                    for (int t = 0; t < MV_T; t++) b[t] = _mm256_setzero_ps();
                    for (int k = g * m->K; k < (g + 1) * m->K; k += 4) {
                        __m256i w = wvec8(m, pw, k, h, lut4);
                        for (int i = 0; i < 4; i++) {
                            __m256 wf = lanef8(w, i);
                            for (int t = 0; t < tn; t++)
                                b[t] = _mm256_add_ps(b[t], _mm256_mul_ps(wf, _mm256_set1_ps(x[(size_t)(t0 + t) * cols + k + i])));
                        }
                    }
                    __m256 swv = _mm256_loadu_ps(sw + 8 * h);
                    for (int t = 0; t < tn; t++) acc[t][h] = _mm256_add_ps(acc[t][h], _mm256_mul_ps(b[t], swv));
                }
            }
            for (int t = 0; t < tn; t++) {
                _mm256_storeu_ps(out, acc[t][0]);
                _mm256_storeu_ps(out + 8, acc[t][1]);
                store_rows(y + (size_t)(t0 + t) * ldy + p * PM_ROWS, out, nr);
            }
        }
    }
}

#else
/* ---- portable scalar: the reference ---- */

static void mm_int(const pmat *m, const pm_act *a, float *y, int ldy, int p0, int p1)
{
    int C = m->K < a->K ? m->K : a->K, cols = m->cols, nga = cols / a->K;
    float s1[PM_ROWS], s2[PM_ROWS], sw[PM_ROWS], acc[PM_ROWS];
    for (int p = p0; p < p1; p++) {
        const uint8_t *pw = panel(m, p);
        int nr = m->rows - p * PM_ROWS < PM_ROWS ? m->rows - p * PM_ROWS : PM_ROWS;
        for (int t = 0; t < a->n; t++) {
            const uint8_t *u = a->u + (size_t)t * cols;
            memset(acc, 0, sizeof acc);
            for (int c0 = 0; c0 < cols; c0 += C) {
                group_scales(m, p, c0 / m->K, s1, s2);
                float sa = a->s[(size_t)t * nga + c0 / a->K];
                for (int r = 0; r < PM_ROWS; r++) {
                    int32_t d = 0;
                    for (int k = c0; k < c0 + C; k++) d += wval(m, pw, r, k) * ((int)u[k] - 128);
                    sw[r] = (s1[r] * s2[r]) * m->emult;
                    acc[r] = acc[r] + (float)d * (sw[r] * sa);
                }
            }
            store_rows(y + (size_t)t * ldy + p * PM_ROWS, acc, nr);
        }
    }
}

static void mv_f32(const pmat *m, const float *x, int n, float *y, int ldy, int p0, int p1)
{
    float s1[PM_ROWS], s2[PM_ROWS], acc[PM_ROWS];
    int cols = m->cols;
    for (int p = p0; p < p1; p++) {
        const uint8_t *pw = panel(m, p);
        int nr = m->rows - p * PM_ROWS < PM_ROWS ? m->rows - p * PM_ROWS : PM_ROWS;
        for (int t = 0; t < n; t++) {
            const float *xt = x + (size_t)t * cols;
            memset(acc, 0, sizeof acc);
            for (int g = 0; g < m->nb; g++) {
                group_scales(m, p, g, s1, s2);
                for (int r = 0; r < PM_ROWS; r++) {
                    float b = 0.0f;
                    for (int k = g * m->K; k < (g + 1) * m->K; k++) b = b + (float)wval(m, pw, r, k) * xt[k];
                    acc[r] = acc[r] + b * ((s1[r] * s2[r]) * m->emult);
                }
            }
            store_rows(y + (size_t)t * ldy + p * PM_ROWS, acc, nr);
        }
    }
}
#endif

const pk_isa CAT(pk, BQ_ISA) = {mm_int, mv_f32, decode_panel};
