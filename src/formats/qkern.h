/* Quantisation arithmetic shared by fake quantisation (kernels.c, compiled once
 * per ISA) and packing (pack.c). Everything is static inline BQ_HD so that each
 * translation unit gets code for its own instruction set.
 *
 * Float32 semantics follow the references (microxcaling, the seed code):
 * scaling by powers of two is exact, rounding happens once on the grid, and
 * the output keeps the input's sign (a negative value rounding to 0 is -0).
 */
#ifndef BQ_QKERN_H
#define BQ_QKERN_H
#include "format.h"
#include <float.h>
#include <math.h>
#include <string.h>

/* The same functions compile for CUDA devices (src/cuda), so the GPU's fake
 * quantisation is this arithmetic too. */
#ifdef __CUDACC__
#define BQ_HD __host__ __device__
#define BQ_HD_ALWAYS __host__ __device__  /* (nvcc inlines these anyway) */
#define restrict __restrict__
#else
#define BQ_HD
#define BQ_HD_ALWAYS __attribute__((always_inline))  /* per element in the row kernels' loops */
#endif
#ifdef __CUDA_ARCH__
#define BQ_CLZ(u) __clz((int)(u))
#else
#define BQ_CLZ(u) __builtin_clz(u)
#endif

static inline BQ_HD uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline BQ_HD float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* IEEE half (bits) to float32, exactly: subnormals, Inf and NaN included. */
static inline BQ_HD float half_to_f32(uint32_t h)
{
    uint32_t s = (h & 0x8000u) << 16, e = (h >> 10) & 0x1f, mt = h & 0x3ff;
    if (e == 0x1f) return u2f(s | 0x7f800000u | (mt << 13));
    if (e == 0) { float v = (float)mt * 0x1p-24f; return s ? -v : v; }
    return u2f(s | ((e + 112) << 23) | (mt << 13));
}

/* bf16 (bits) to float32: the top half of its bits. */
static inline BQ_HD float bf16_to_f32(uint32_t h) { return u2f(h << 16); }
/* The top half of a float32's bits: its bf16 value where the low half is zero. */
static inline BQ_HD uint16_t f32_top_bf16(float x) { return (uint16_t)(f2u(x) >> 16); }

/* Whether every value is a bf16 number (the low 16 bits of each float are zero). */
static inline int all_bf16(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (f2u(x[i]) & 0xffffu) return 0;
    return 1;
}

/* The top halves of n floats as little-endian bf16 bytes (out holds 2n), in one pass;
 * returns the low halves or-ed together: 0 when every value was a bf16 number and the
 * bytes are those values exactly (-0, Inf and NaN included). */
static inline uint32_t f32_top_halves(const float *x, size_t n, uint8_t *out)
{
    uint32_t low = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u = f2u(x[i]);
        low |= u & 0xffffu;
        out[2 * i] = (uint8_t)(u >> 16);
        out[2 * i + 1] = (uint8_t)(u >> 24);
    }
    return low;
}

/* A 16-bit float of either kind: bf16 when bf, else IEEE half. */
static inline BQ_HD float f16_to_f32(int bf, uint32_t h) { return bf ? bf16_to_f32(h) : half_to_f32(h); }

/* 2^e as float32 for e in [-149, 127] (subnormals included). */
static inline BQ_HD float pow2f(int e)
{
    return e >= -126 ? u2f((uint32_t)(e + 127) << 23) : u2f(1u << (e + 149));
}

/* floor(log2 a) for finite a > 0, subnormals included. */
static inline BQ_HD int floor_log2f(float a)
{
    uint32_t u = f2u(a) & 0x7fffffffu;
    int e = (int)(u >> 23);
    if (e) return e - 127;
    return -118 - BQ_CLZ(u);  /* subnormal: 31-clz(u) - 149 */
}

static inline BQ_HD int ceil_log2f(float a)
{
    int e = floor_log2f(a);
    return a == pow2f(e) ? e : e + 1;
}

/* Bits of max |x| over n values: for non-NaN floats the order of |x| is the
 * order of its bits, and an integer max vectorises where a float max cannot.
 * A result above 0x7f7fffff means an Inf or NaN is present. */
static inline BQ_HD uint32_t amax_bits(const float *restrict x, size_t n)
{
    uint32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u = f2u(x[i]) & 0x7fffffffu;
        m = u > m ? u : m;
    }
    return m;
}

/* Sign source for results: -0.0 counts as positive (as in the references, where
 * sign(-0) = 0), a negative value that rounds to zero gives -0. */
static inline BQ_HD float sgn_of(float v) { return v == 0.0f ? 0.0f : v; }

/* A uniform float in [0,1) from (seed, index): splitmix64, 24 bits. */
static inline BQ_HD float noise01(uint64_t seed, uint64_t idx)
{
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * (idx + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)(z >> 40) * 0x1p-24f;
}

/* Round a non-negative float to an integer-valued float. */
static inline BQ_HD float round_mag(float s, bq_round r, uint64_t seed, uint64_t idx)
{
    switch (r) {
    case BQ_ROUND_RNE: return rintf(s);
    case BQ_ROUND_AWAY: { float t = truncf(s); return t + (s - t >= 0.5f ? 1.0f : 0.0f); }
    case BQ_ROUND_ZERO: return truncf(s);
    default: { float t = floorf(s); return t + (noise01(seed, idx) < s - t ? 1.0f : 0.0f); }
    }
}

static inline BQ_HD double round_mag_d(double s, bq_round r, uint64_t seed, uint64_t idx)
{
    switch (r) {
    case BQ_ROUND_RNE: return rint(s);
    case BQ_ROUND_AWAY: { double t = trunc(s); return t + (s - t >= 0.5 ? 1.0 : 0.0); }
    case BQ_ROUND_ZERO: return trunc(s);
    default: { double t = floor(s); return t + ((double)noise01(seed, idx) < s - t ? 1.0 : 0.0); }
    }
}

/* ---- element grids: magnitude a >= 0 (may be +Inf, never NaN) -> grid value */

static inline BQ_HD float mf_overflow(const elem_t *e, float q)
{
    if (q <= e->maxval) return q;
    if (!e->overflow_inf) return e->maxval;
    return e->flavour == FL_IEEE ? INFINITY : NAN;
}

static inline BQ_HD float mf_quant_mag(const elem_t *e, float a, bq_round r, uint64_t seed, uint64_t idx)
{
    int pe = (int)((f2u(a) >> 23) & 0xff) - 127;   /* floor(log2 a); -127 for 0/subnormal */
    int m = (pe >= e->emin || e->subnorm) ? e->mbits : 0;
    pe = pe < e->emin ? e->emin : pe;
    pe = pe > e->emax + 1 ? e->emax + 1 : pe;      /* beyond that everything overflows */
    float q;
    if (e->fast) {
        q = round_mag(a * pow2f(m - pe), r, seed, idx) * pow2f(pe - m);
    } else {
        double s = ldexp((double)a, m - pe);
        q = (float)ldexp(round_mag_d(s, r, seed, idx), pe - m);
    }
    if (a == INFINITY && e->flavour == FL_IEEE) return INFINITY;
    return mf_overflow(e, q);
}

/* The grid value (magnitude) of |x| / d for a grid_fast element grid (a minifloat on
 * the float32 path, or symmetric integers), from w = |x| * r with r = 1 / d rounded,
 * under a deterministic rounding: mf_quant_mag's or int_quant_mag's steps on w. w is
 * within 2^-22 w of the rounded quotient, so where w, in the grid's units at w's binade
 * (s), lies farther than 2^-20 s from every rounding boundary (half units; whole units
 * toward zero) and the quotient is normal (or x is 0), both give the same grid value:
 * where w and the quotient sit in two binades, s is near a whole unit, which rounds to
 * the power of two between them (a boundary only toward zero, which the check refuses).
 * Returns 0 where that is not sure (the caller divides). The CUDA kernels' scaled blocks
 * and int groups. */
static inline BQ_HD_ALWAYS int grid_by_recip(const elem_t *e, float x, float r, bq_round rnd, float *q)
{
    float a = fabsf(x), w = a * r, up, down;
    if (e->kind == EK_MF) {
        int pe = (int)((f2u(w) >> 23) & 0xff) - 127;
        int m = (pe >= e->emin || e->subnorm) ? e->mbits : 0;
        pe = pe < e->emin ? e->emin : (pe > e->emax + 1 ? e->emax + 1 : pe);
        up = pow2f(m - pe);
        down = pow2f(pe - m);
    } else {
        up = pow2f(e->frac);
        down = pow2f(-e->frac);
    }
    float s = w * up, edge = rnd == BQ_ROUND_ZERO ? rintf(s) : floorf(s) + 0.5f;
    float k = round_mag(s, rnd, 0, 0);
    if (e->kind == EK_MF) *q = mf_overflow(e, k * down);
    else *q = (k > (float)e->hi ? (float)e->hi : k) * down;
    return a == 0.0f || (fabsf(s - edge) > s * 0x1p-20f && w >= 0x1p-100f);
}

/* Integer grid with `frac` fraction bits, magnitude clamped to hi. */
static inline BQ_HD float int_quant_mag(const elem_t *e, float a, bq_round r, uint64_t seed, uint64_t idx)
{
    float s = a * pow2f(e->frac);
    float q = round_mag(s, r, seed, idx);
    q = q > (float)e->hi ? (float)e->hi : q;
    return q * pow2f(-e->frac);
}

/* Round an exponent k in the log domain, given the 23 mantissa bits m of the
 * value 2^k * (1 + m/2^23): to nearest is "1 + m/2^23 >= sqrt(2)" (no ties
 * exist), toward zero keeps k, stochastic rounds up with probability m/2^23. */
static inline BQ_HD int log_round(int k, uint32_t m, bq_round r, uint64_t seed, uint64_t idx)
{
    if (r == BQ_ROUND_STOCHASTIC) return k + (noise01(seed, idx) < (float)m * 0x1p-23f);
    if (r == BQ_ROUND_ZERO) return k;
    return k + (m >= 0x3504f4u);
}

/* The log grid's value of x with its sign (a zero's dropped): 2^k, k = round(log2 |x|)
 * clamped to [lo, hi] for any lo <= hi, in bit arithmetic: log_round() on the float's
 * own exponent and mantissa bits (a subnormal's shifted up to its leading one: the
 * fraction of |x| 2^-k), 2^k from its bits (a subnormal for k in [-149, -127], 0 below,
 * as ldexpf(1, k) rounds 2^-150 to even; Inf above 127); zero stays zero, an Inf takes
 * hi, NaN stays NaN. Selects, no branch: elem_quant, block_elem, the CPU's log loops and
 * the CUDA kernels all take it (no warp divides between blocks whose grid reaches under
 * 2^-126 and blocks whose grid does not). */
static inline BQ_HD_ALWAYS float log_bits_elem(float x, int lo, int hi, bq_round r, uint64_t seed, uint64_t idx)
{
    uint32_t u = f2u(x) & 0x7fffffffu;
    int sh = u < 0x800000u ? BQ_CLZ(u | 1u) - 8 : 0;  /* (u | 1: zero, whose result is replaced below) */
    int k = log_round(u < 0x800000u ? -126 - sh : (int)(u >> 23) - 127, (u << sh) & 0x7fffffu, r, seed, idx);
    k = k < lo ? lo : (k > hi ? hi : k);
    float q = u2f(k >= -126 ? (uint32_t)(k + 127) << 23 : k >= -149 ? 1u << (k + 149) : 0u);
    q = k > 127 ? INFINITY : q;
    q = u == 0 ? 0.0f : q;
    q = u > 0x7f800000u ? x : q;
    return copysignf(q, sgn_of(x));
}

/* Signed value -> grid value of elem e (no scaling). Sign always preserved. */
static inline BQ_HD float elem_quant(const elem_t *e, float v, bq_round r, uint64_t seed, uint64_t idx)
{
    float a = fabsf(v), q;
    if (v != v) return v;
    switch (e->kind) {
    case EK_FP32: return v;
    case EK_MF: q = mf_quant_mag(e, a, r, seed, idx); break;
    case EK_LOG: q = log_bits_elem(a, e->lemin, e->lemax, r, seed, idx); break;
    default:
        if (e->lo == -e->hi) { q = int_quant_mag(e, a, r, seed, idx); break; }
        /* asymmetric range (fixed point): round the magnitude, clamp signed */
        q = round_mag(a * pow2f(e->frac), r, seed, idx);
        q = v < 0 ? (q > (float)-e->lo ? (float)-e->lo : q) : (q > (float)e->hi ? (float)e->hi : q);
        return copysignf(q * pow2f(-e->frac), sgn_of(v));
    }
    return copysignf(q, sgn_of(v));
}

/* Asymmetric int code q in [0, 2^B-1] for x with scale s and zero point z. */
static inline BQ_HD float asym_q(const elem_t *e, float x, float s, float z, bq_round r, uint64_t seed, uint64_t idx)
{
    float v = x / s;
    float q = copysignf(round_mag(fabsf(v), r, seed, idx), v) + z;
    float qmax = (float)((1 << e->bits) - 1);
    return q < 0.0f ? 0.0f : (q > qmax ? qmax : q);
}

/* Dequantised asymmetric value; saturates where a range wider than float32 would overflow. */
static inline BQ_HD float asym_deq(float q, float z, float s)
{
    float out = (q - z) * s;
    return out > FLT_MAX ? FLT_MAX : (out < -FLT_MAX ? -FLT_MAX : out);
}

/* intB scale over one group: symmetric s = amax/qmax; asymmetric over a range
 * widened to include 0 (so zero is exact), s = (max-min)/(2^B-1), z = round(-min/s).
 * Inline so the per-ISA kernels vectorise the symmetric reduction. */
/* A group's int scale from its statistics (max |x| bits; for asym, min and max
 * over the values with 0 included): the split lets the GPU reduce in parallel. */
static inline BQ_HD void int_scale_of(const bq_format *f, uint32_t mb, float mn, float mx, float *s, float *z, int *nonfinite)
{
    *nonfinite = mb > 0x7f7fffffu;
    *z = 0.0f;
    if (*nonfinite) {  /* the group decodes to NaN; keep the zero point a valid code */
        *s = NAN;
        return;
    }
    if (!f->asym) {
        *s = u2f(mb) / (float)f->el.hi;
        return;
    }
    float qm = (float)((1 << f->el.bits) - 1), range = mx - mn;
    *s = range <= FLT_MAX ? range / qm : mx / qm - mn / qm;  /* range may overflow float32 */
    *z = *s > 0.0f ? rintf(-mn / *s) : 0.0f;
    *z = *z > qm ? qm : *z;  /* subnormal scales can round -mn/s past the top code; the code must fit */
}

static inline BQ_HD void int_group_scale(const bq_format *f, const float *x, size_t n, float *s, float *z, int *nonfinite)
{
    float mn = 0.0f, mx = 0.0f;
    if (f->asym)
        for (size_t i = 0; i < n; i++) {
            mn = x[i] < mn ? x[i] : mn;
            mx = x[i] > mx ? x[i] : mx;
        }
    int_scale_of(f, amax_bits(x, n), mn, mx, s, z, nonfinite);
}

/* ---- block scales --------------------------------------------------------- */

/* A block's shared scale as both a stored code and the arithmetic it implies:
 * v = x * 2^-E (pow2 schemes) or v = x / div (scaled schemes); y = q * post1 * post2. */
typedef struct {
    int pow2;         /* 1: scale is 2^E; 0: divide by div */
    int E;
    float pre1, pre2; /* pow2: v = (x * pre1) * pre2 = x * 2^-E without overflow */
    float div, post1, post2;
    uint32_t code;    /* stored scale code (pow2 schemes; scaled ones encode post1) */
} bscale;

static inline BQ_HD void split_pow2(int E, float *a, float *b)
{
    int h = E / 2;
    *a = pow2f(h);
    *b = pow2f(E - h);
}

/* Minifloat code of an exactly representable magnitude q (used for scales). */
#ifdef __cplusplus
extern "C" {  /* (qkern.h is included outside extern "C" by some CUDA files) */
#endif
uint32_t mf_encode(const elem_t *e, float q);
float mf_decode(const elem_t *e, uint32_t code);
#ifdef __cplusplus
}
#endif

/* llama.cpp's reference quantisers (f->ggml: 4 for q4_0/q4_1, 5 for q5_0/q5_1, 8 for q8_0),
 * so its GGUF types come out bit for bit: q4_0 and q5_0: d = (the first value of
 * largest magnitude) / -h with h = 8 or 16, codes min(2h - 1, trunc(x * (1/d) + h + 0.5)) - h;
 * q8_0: d = amax / 127, codes round-half-away(x * (1/d)). The stored scale is
 * fp16(d) (round to nearest even) and values are code * fp16(d); 1/d uses the
 * unrounded d. Returns fp16(d)'s code. */
/* fp16 code of d, rounded to nearest even (saturating at 65504, where llama.cpp's
 * conversion gives Inf: only for blocks spanning more than ~1e6, never a trained weight). */
/* d rounded to the block's fp16 scale, as a float (what its code decodes to) */
static inline BQ_HD float ggml_round16(const bq_format *f, float d)
{
    return copysignf(mf_quant_mag(&f->scale, fabsf(d), BQ_ROUND_RNE, 0, 0), d);
}
static inline uint32_t ggml_fp16(const bq_format *f, float d) { return mf_encode(&f->scale, ggml_round16(f, d)); }

/* q4_1 and q5_1 (f->asym): d = (max - min) / (2^b - 1), codes
 * min(2^b - 1, trunc((x - min) * (1/d) + 0.5)), value = code * fp16(d) + fp16(min);
 * *dd and *mm get d and min before their fp16 rounding. */
static inline BQ_HD void ggml_codes_min(const bq_format *f, const float *x, size_t n, int8_t *q, float *dd, float *mm)
{
    float mn = FLT_MAX, mx = -FLT_MAX;
    for (size_t i = 0; i < n; i++) {
        if (x[i] < mn) mn = x[i];
        if (x[i] > mx) mx = x[i];
    }
    const int top = (1 << f->ggml) - 1;
    float d = (mx - mn) / (float)top;
    if (d > FLT_MAX) d = FLT_MAX;  /* a range past float32 (llama.cpp: d = Inf, values NaN): saturate */
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (size_t i = 0; i < n; i++) {
        float v = (x[i] - mn) * id;  /* in [0, top] up to rounding; 0 * Inf (d subnormal) saturates */
        v = v != v ? 0.0f : v > (float)top ? (float)top : v < 0.0f ? 0.0f : v;
        int c = (int)(v + 0.5f);
        q[i] = (int8_t)(c < top ? c : top);
    }
    *dd = d;
    *mm = mn;
}

/* A llama.cpp block's scale code as d and the minimum m (0 without one); 0 if NaN. */
static inline int ggml_scale(const bq_format *f, uint32_t code, float *d, float *m)
{
    *d = mf_decode(&f->scale, f->asym ? code & 0xffffu : code);
    *m = f->asym ? mf_decode(&f->scale, code >> 16) : 0.0f;
    return *d == *d && *m == *m;
}

/* Value of code q in a llama.cpp block: q * d, or q * d + m with a minimum. */
static inline BQ_HD float ggml_value(const bq_format *f, float q, float d, float m) { return f->asym ? q * d + m : q * d; }

/* q8_0's code of x / d given v = x * (1/d): NaN (0 * Inf, d subnormal) to 0, clamped to
 * [-127, 127], rounded half away from zero (roundf, without a libm call: v - trunc(v)
 * is exact). pk_isa.c's q8_0_codes is this, sixteen lanes at a time. */
static inline BQ_HD int ggml_q8_code(float v)
{
    v = v != v ? 0.0f : v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
    int c = (int)v;
    float fr = v - (float)c;
    return c + (fr >= 0.5f) - (fr <= -0.5f);
}

/* The codes of one llama.cpp block (q) and its scale d and minimum m (0 without
 * one) before their fp16 rounding (ggml_round16). */
static inline BQ_HD void ggml_codes(const bq_format *f, const float *x, size_t n, int8_t *q, float *dd, float *m)
{
    *m = 0.0f;
    if (f->asym) { ggml_codes_min(f, x, n, q, dd, m); return; }
    float amax = 0.0f, mx = 0.0f;
    for (size_t i = 0; i < n; i++)
        if (amax < fabsf(x[i])) { amax = fabsf(x[i]); mx = x[i]; }
    const int h = f->ggml == 8 ? 0 : 1 << (f->ggml - 1);  /* the half range of the nibble rules */
    float d = h ? mx / (float)-h : amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    const float lim = h ? (float)h : 127.0f;
    for (size_t i = 0; i < n; i++) {
        /* x / d lies in [-lim, lim] unless 1/d overflowed (d subnormal): then the
         * codes saturate (0 for 0 * Inf), where llama.cpp's C conversion is undefined */
        float v = x[i] * id;
        if (!h) { q[i] = (int8_t)ggml_q8_code(v); continue; }
        v = v != v ? 0.0f : v > lim ? lim : v < -lim ? -lim : v;
        int c = (int)(v + ((float)h + 0.5f));
        q[i] = (int8_t)((c < 2 * h - 1 ? c : 2 * h - 1) - h);
    }
    *dd = d;
}

/* The codes of one llama.cpp block, returning its scale code (with a minimum:
 * fp16(d) in the low half, fp16(min) in the high half). */
static inline uint32_t ggml_block(const bq_format *f, const float *x, size_t n, int8_t *q)
{
    float d, m;
    ggml_codes(f, x, n, q, &d, &m);
    return f->asym ? ggml_fp16(f, d) | ggml_fp16(f, m) << 16 : ggml_fp16(f, d);
}

/* One llama.cpp block of n <= 32 fake-quantised (in place allowed): each code's value,
 * the scale and minimum as their fp16 codes decode; NaN for a block holding Inf or NaN.
 * The CPU kernels and the CUDA kernel both. */
static inline BQ_HD void ggml_qdq_block(const bq_format *f, const float *x, float *y, size_t n)
{
    if (amax_bits(x, n) > 0x7f7fffffu) {
        for (size_t i = 0; i < n; i++) y[i] = NAN;
        return;
    }
    int8_t q[32];
    float d, m;
    ggml_codes(f, x, n, q, &d, &m);
    d = ggml_round16(f, d);
    m = f->asym ? ggml_round16(f, m) : 0.0f;
    for (size_t i = 0; i < n; i++) y[i] = ggml_value(f, (float)q[i], d, m);
}

static inline BQ_HD int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* A scaled block's arithmetic (SCH_SCALED, SCH_NVFP4) from its scale sc, already
 * on the scale format's grid: v = x / div, y = (q * post1) * post2. */
static inline BQ_HD bscale scaled_bscale(const bq_format *f, const qctx *c, float sc)
{
    bscale s = {0};
    s.post1 = sc;
    s.post2 = 1.0f;
    s.div = sc;
    if (f->sch == SCH_NVFP4) {
        s.div = sc * c->tensor_scale;
        s.post2 = c->tensor_scale;
    }
    return s;
}

/* Scale of one block from its amax (finite, >= 0). */
static inline BQ_HD bscale block_scale(const bq_format *f, const qctx *c, float amax)
{
    bscale s = {0};
    s.pow2 = 1;
    s.post2 = 1.0f;
    switch (f->sch) {
    case SCH_MX: {
        int emax = f->el.kind == EK_MF ? f->el.emax : 0;
        int e = amax == 0.0f ? -127 : clampi(floor_log2f(amax) - emax, -127, 127);
        s.E = e;
        s.code = (uint32_t)(e + 127);
        break;
    }
    case SCH_BFP: {
        int e = amax == 0.0f ? -127 : clampi(ceil_log2f(amax), -127, 128);
        s.E = e;
        s.code = (uint32_t)(e + 127);
        break;
    }
    case SCH_BM: {
        /* bias = 2^X - 1 - floor(log2 amax) as int8; E = standard bias - bias */
        int b = amax == 0.0f ? 127 : clampi((1 << f->el.ebits) - 1 - floor_log2f(amax), -128, 127);
        s.E = f->el.bias - b;
        s.code = (uint32_t)(uint8_t)(int8_t)b;
        break;
    }
    case SCH_BL: {
        /* emax of the block = ceil(log2 amax); E shifts the standard grid's lemax there */
        int top = amax == 0.0f ? -127 : ceil_log2f(amax);
        /* int8 shift, and no grid value above 2^127 (the largest power of two in float32) */
        int E = clampi(top - f->el.lemax, -128, 127 - f->el.lemax < 127 ? 127 - f->el.lemax : 127);
        s.E = E;
        s.code = (uint32_t)(uint8_t)(int8_t)E;
        break;
    }
    case SCH_SCALED:
    case SCH_NVFP4: {
        float emaxv = f->el.kind == EK_MF ? f->el.maxval : (float)f->el.hi;
        float ideal = f->sch == SCH_NVFP4 ? (c->tensor_scale > 0 ? amax / 6.0f / c->tensor_scale : 0.0f)
                                          : amax / emaxv;
        return scaled_bscale(f, c, mf_quant_mag(&f->scale, ideal, BQ_ROUND_RNE, 0, 0));
    }
    default: break;
    }
    split_pow2(s.E, &s.post1, &s.post2);
    split_pow2(-s.E, &s.pre1, &s.pre2);
    return s;
}

/* The grid quantisation of a block whose scale is 2^E, with 2^E folded into the
 * exponent arithmetic: two multiplies per element instead of five (kernels.c's
 * grid_loop_pow2, and the CUDA block kernels). Exact where every power of two
 * involved is a normal float32 (pow2_fused_ok): there the same bits as block_elem. */
typedef struct {
    int E, emin, emax1, mb, sub;
    float thr, pre1, pre2, pin, pout;
} pow2_fused;

static inline BQ_HD pow2_fused pow2_fused_of(const elem_t *e, int E, int is_mf)
{
    pow2_fused p;
    p.E = E;
    p.emin = e->emin;
    p.emax1 = e->emax + 1;
    p.mb = e->mbits;
    p.sub = e->subnorm;
    p.thr = is_mf ? e->maxval * pow2f(E) : (float)e->hi * pow2f(E - e->frac);
    /* the sign of a zero result: that of (x * pre1) * pre2, the two-step product
     * block_elem and the other paths scale by (it can round to 0 where one product
     * by 2^-E would not: twice rounded among the subnormals; the fuzzer found it) */
    split_pow2(-E, &p.pre1, &p.pre2);
    p.pin = pow2f(e->frac - E);
    p.pout = pow2f(E - e->frac);
    return p;
}

static inline BQ_HD_ALWAYS float pow2_fused_elem(const pow2_fused *p, float x, int is_mf, bq_round r, uint64_t seed, uint64_t idx)
{
    float a = fabsf(x), yv;
    if (is_mf) {
        int pe = (int)(f2u(a) >> 23) - 127 - p->E;
        int m = (pe >= p->emin || p->sub) ? p->mb : 0;
        pe = pe < p->emin ? p->emin : pe;
        pe = pe > p->emax1 ? p->emax1 : pe;
        yv = round_mag(a * u2f((uint32_t)(m - pe - p->E + 127) << 23), r, seed, idx) * u2f((uint32_t)(pe - m + p->E + 127) << 23);
    } else {
        yv = round_mag(a * p->pin, r, seed, idx) * p->pout;
    }
    yv = yv > p->thr ? p->thr : yv;
    return copysignf(yv, sgn_of((x * p->pre1) * p->pre2));
}

/* Grids whose blocks take the vectorised grid loops (grid_loop, pow2_fused_elem):
 * minifloats on the float32 path that do not overflow to Inf, symmetric integers. */
static inline BQ_HD int grid_fast(const elem_t *e)
{
    return (e->kind == EK_MF && e->fast && !e->overflow_inf) || (e->kind == EK_INT && e->lo == -e->hi);
}

/* Whether pow2_fused_elem is exact for this element grid and block exponent. */
static inline int pow2_fused_ok(const elem_t *e, int E)
{
    int lo, hi;
    if (e->kind == EK_MF) {
        if (E < -127 - e->emin) return 0;          /* float32 subnormal inputs need the exact path */
        lo = -(e->emax + 1) - E;                   /* m - pe - E over pe in [emin, emax+1], m in {0, mbits} */
        hi = e->mbits - e->emin - E;
        if (e->emin - e->mbits + E < -126 || e->emax + 1 + E > 126) return 0;
        if (ldexp(e->maxval, E) > FLT_MAX) return 0;
    } else {
        lo = hi = e->frac - E;
        if (E - e->frac < -126 || E - e->frac > 126) return 0;
    }
    return lo >= -126 && hi <= 126;
}

/* The block exponents E for which pow2_fused_ok holds, [r[0], r[1]] (empty: r[0] > r[1]):
 * its bounds solved for E (test_formats checks them against pow2_fused_ok). */
static inline void pow2_fused_range(const elem_t *e, int r[2])
{
    if (e->kind == EK_MF) {
        int a = -127 - e->emin, b = e->mbits - e->emin - 126;
        r[0] = a > b ? a : b;
        r[1] = 125 - e->emax;
        while (r[1] >= r[0] && ldexp(e->maxval, r[1]) > FLT_MAX) r[1]--;
    } else {
        r[0] = e->frac - 126;
        r[1] = e->frac + 126;
    }
}

/* A finite grid value times its scale factors; past float32 it saturates at
 * +-FLT_MAX (an element grid near FLT_MAX under a scale above 1, or a scale
 * rounded up past amax / max grid value). Every dequantisation (fake
 * quantisation, unpacking, host and device) goes through this rule. */
static inline BQ_HD_ALWAYS float deq_sat(float q, float p1, float p2)
{
    float y = (q * p1) * p2;
    return fabsf(y) > FLT_MAX && fabsf(q) <= FLT_MAX ? copysignf(FLT_MAX, y) : y;
}

static inline BQ_HD float block_deq(const bscale *s, float q) { return deq_sat(q, s->post1, s->post2); }

/* Quantise one value against its block scale; returns the grid value q (signed)
 * through *qout and the dequantised value. */
static inline BQ_HD float block_elem(const bq_format *f, const bscale *s, float x, bq_round r,
                               uint64_t seed, uint64_t idx, float *qout)
{
    float q;
    if (f->sch == SCH_BL) {
        /* log grid shifted by E: exact in exponent arithmetic */
        q = log_bits_elem(x, f->el.lemin + s->E, f->el.lemax + s->E, r, seed, idx);
        *qout = q;
        return q;
    }
    float v;
    if (!s->pow2 && !(s->div > 0.0f)) {  /* a zero scale: every element is a zero of its input's sign */
        *qout = copysignf(0.0f, sgn_of(x));
        return *qout;
    }
    if (s->pow2) v = (x * s->pre1) * s->pre2;
    else v = x / s->div;
    /* a finite value whose quotient passes float32 (elements as wide as e8m7 under a
     * tiny scale) saturates, as every element inside a block does */
    if (fabsf(v) > FLT_MAX && fabsf(x) <= FLT_MAX) v = copysignf(FLT_MAX, v);
    q = elem_quant(&f->el, v, r, seed, idx);
    *qout = q;
    return block_deq(s, q);
}

#endif
