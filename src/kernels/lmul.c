/* L-Mul products and the matmul on them (lmul.h). The reference works on the
 * operands' float32 fields; the matmul computes the same bits with integer
 * operations the compiler vectorises, and takes the reference for the rare
 * operands outside the normal range (built with -O3: the Makefile says why; an
 * integer-only variant of the product loop measured 30% slower). */
#include "lmul.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

int lmul_offset(int m) { return m <= 3 ? m : m == 4 ? 3 : 4; }

static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* 2^e for e in [-126, 127] */
static float pow2(int e) { return from_bits((uint32_t)(e + 127) << 23); }

/* (2^23 + s) * 2^(e - 23): the sum of mantissa fields s (units of 2^-23, may pass
 * 2^23 when 1 + xm + ym >= 2) converted to float32 (round to nearest even), then
 * scaled in two exact steps so no factor leaves float32's normal range. */
static float assemble(int32_t s, int e)
{
    float v = (float)(0x800000 + s);
    int h = (e - 23) / 2;
    return (v * pow2(h)) * pow2(e - 23 - h);
}

float lmul_ref(float x, float y, int l)
{
    float ax = fabsf(x), ay = fabsf(y);
    float sign = (bits(x) ^ bits(y)) >> 31 ? -1.0f : 1.0f;
    if (!isfinite(ax) || !isfinite(ay)) return x * y;
    if (ax == 0.0f || ay == 0.0f) return sign * 0.0f;
    int ex, ey;
    float fx = frexpf(ax, &ex), fy = frexpf(ay, &ey);  /* [0.5, 1): subnormals normalised too */
    /* mantissa fields in units of 2^-23: (2f - 1) * 2^23, exact */
    int32_t mx = (int32_t)ldexpf(2.0f * fx - 1.0f, 23), my = (int32_t)ldexpf(2.0f * fy - 1.0f, 23);
    int e = (ex - 1) + (ey - 1);
    int32_t s = mx + my + (int32_t)(1u << (23 - l));
    if (e - 23 < -2 * 126 || e - 23 > 2 * 127) return sign * (float)ldexp((double)(0x800000 + s), e - 23);
    return sign * assemble(s, e);
}

enum { CHUNK = 256, LANES = 16 };

/* One output: the products of a chunk into prod[], then LANES running sums (k mod
 * LANES) added pairwise at the end, a fixed order that vectorises. */
__attribute__((target_clones("avx2", "default")))
static float dot_lmul(const float *xr, const float *wr, int in, int32_t off, int l)
{
    float prod[CHUNK], acc[LANES] = {0};
    for (int k0 = 0; k0 < in; k0 += CHUNK) {
        int m = in - k0 < CHUNK ? in - k0 : CHUNK, slow = 0;
        /* normal operands whose product stays normal: integer fields, no branches */
        for (int i = 0; i < m; i++) {
            uint32_t ux = bits(xr[k0 + i]), uy = bits(wr[k0 + i]);
            int32_t ex = (int32_t)((ux >> 23) & 0xff), ey = (int32_t)((uy >> 23) & 0xff);
            int32_t e = ex + ey - 254;  /* unbiased exponent of the product */
            /* zero times a finite value: a signed zero (zero times Inf/NaN is the reference's NaN) */
            int zero = ((!(ux & 0x7fffffffu)) & (ey != 255)) | ((!(uy & 0x7fffffffu)) & (ex != 255));
            /* far from 2^0 the result may be subnormal: the reference takes it, and the lane
             * computes with exponent 0 so no subnormal (slow) arithmetic happens here */
            int big = (e < -100) | (e > 100);
            int32_t ec = (zero | big) ? 0 : e;
            int32_t s = (int32_t)(ux & 0x7fffff) + (int32_t)(uy & 0x7fffff) + off;
            float v = (float)(0x800000 + s);
            int32_t h = (ec - 23) / 2, g = ec - 23 - h;  /* two factors, each a normal power of two */
            float p = (v * from_bits((uint32_t)(h + 127) << 23)) * from_bits((uint32_t)(g + 127) << 23);
            prod[i] = from_bits((zero ? 0u : bits(p)) | ((ux ^ uy) & 0x80000000u));
            slow |= (!zero) & ((ex == 0) | (ey == 0) | (ex == 255) | (ey == 255) | big);
        }
        if (slow)  /* a subnormal, Inf/NaN or an extreme exponent somewhere: the reference */
            for (int i = 0; i < m; i++) {
                uint32_t ux = bits(xr[k0 + i]), uy = bits(wr[k0 + i]);
                int32_t ex = (int32_t)((ux >> 23) & 0xff), ey = (int32_t)((uy >> 23) & 0xff), e = ex + ey - 254;
                int zero = (!(ux & 0x7fffffffu) && ey != 255) || (!(uy & 0x7fffffffu) && ex != 255);
                if (!zero && (ex == 0 || ey == 0 || ex == 255 || ey == 255 || e < -100 || e > 100))
                    prod[i] = lmul_ref(xr[k0 + i], wr[k0 + i], l);
            }
        int i = 0;
        for (; i + LANES <= m; i += LANES)
            for (int j = 0; j < LANES; j++) acc[j] += prod[i + j];
        for (; i < m; i++) acc[(k0 + i) % LANES] += prod[i];  /* only the last chunk can be ragged */
    }
    for (int w = LANES / 2; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    return acc[0];
}

void lmul_matmul(const float *x, int n, const float *w, int in, float *y, int ldy, int o0, int o1, int l)
{
    const int32_t off = (int32_t)(1u << (23 - l));
    for (int t = 0; t < n; t++)
        for (int o = o0; o < o1; o++) y[(size_t)t * ldy + o] = dot_lmul(x + (size_t)t * in, w + (size_t)(o - o0) * in, in, off, l);
}
