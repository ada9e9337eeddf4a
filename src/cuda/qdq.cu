// Fake quantisation on CUDA devices, plus the device plumbing of bq_cuda.h.
//
// The arithmetic is qkern.h itself, compiled for the device (its functions are
// __host__ __device__ under nvcc), and the choices per scheme follow the CPU
// kernels (src/formats/kernels.c), so a GPU result has the same bits as bq_qdq.
// nvcc is run with --fmad=false: no contraction, as on the CPU.
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <type_traits>
extern "C" {
#include "bq_cuda.h"
#include "qkern.h"
}
#include "knobs.h"
#include "launch.cuh"

static bq_status cuda_fail(cudaError_t e, const char *what)
{
    return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA: %s: %s", what, cudaGetErrorString(e));
}

#ifndef BQ_CUSIM  // the CPU simulator's device is host memory (tests/cusim_kernels.cc)
static char g_name[400];

extern "C" int bq_cuda_devices(char *why, size_t why_len)
{
    static int known;  // a found device stays found (asked before every fake quantisation)
    if (known) return known;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        if (why) snprintf(why, why_len, "no CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        cudaGetLastError();
        return 0;
    }
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, 0) == cudaSuccess)
        snprintf(g_name, sizeof g_name, "%s (sm_%d%d, %d SMs, %.0f GiB)", p.name, p.major, p.minor, p.multiProcessorCount,
                 p.totalGlobalMem / 1073741824.0);
    return known = n;
}

extern "C" const char *bq_cuda_device_name(void) { return g_name; }

extern "C" bq_status bq_cuda_malloc(void **d, size_t bytes)
{
    cudaError_t e = cudaMalloc(d, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        *d = NULL;
        size_t fr = 0, tot = 0;
        cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        return bq_fail(BQ_ERR_NOMEM, "CUDA: cannot allocate %.2f GiB on the device (%.2f GiB free of %.2f): %s",
                       bytes / 1073741824.0, fr / 1073741824.0, tot / 1073741824.0, cudaGetErrorString(e));
    }
    return BQ_OK;
}
extern "C" void bq_cuda_free(void *d) { if (d) cudaFree(d); }
extern "C" bq_status bq_cuda_upload(void *d, const void *h, size_t n)
{
    cudaError_t e = cudaMemcpy(d, h, n, cudaMemcpyHostToDevice);
    return e == cudaSuccess ? BQ_OK : cuda_fail(e, "copy to device");
}
extern "C" bq_status bq_cuda_download(void *h, const void *d, size_t n)
{
    cudaError_t e = cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost);
    return e == cudaSuccess ? BQ_OK : cuda_fail(e, "copy from device");
}
extern "C" bq_status bq_cuda_sync(void)
{
    cudaError_t e = cudaDeviceSynchronize();
    return e == cudaSuccess ? BQ_OK : cuda_fail(e, "kernel");
}
#endif

// ---- one element / one group, exactly as the CPU kernels decide ----

// A block-scaled element, the block's scale already known (qdq_block, qdq_row_scaled).
static __device__ __forceinline__ float block_value(const bq_format &f, const qctx &c, const bscale &s, float x,
                                                    uint64_t idx)
{
    if (f.sch != SCH_BL && grid_fast(&f.el) && !s.pow2 && !(s.div > 0.0f)) return copysignf(0.0f, sgn_of(x));
    float q;
    return block_elem(&f, &s, x, c.round, c.seed, idx, &q);
}

// intB with an fp32 scale over a group (qdq_int_group).
static __device__ __forceinline__ float int_value(const bq_format &f, const qctx &c, float x, uint64_t idx, float s,
                                                  float z, int bad)
{
    const elem_t *e = &f.el;
    if (bad || s != s) return NAN;
    if (!(s > 0.0f)) return copysignf(0.0f, sgn_of(x));
    if (!f.asym) return deq_sat(elem_quant(e, x / s, c.round, c.seed, idx), s, 1.0f);
    float out = asym_deq(asym_q(e, x, s, z, c.round, c.seed, idx), z, s);
    return out == 0.0f ? copysignf(0.0f, sgn_of(x)) : out;
}

// Generic: one thread per group (block, int group, row, or element).
__global__ void qdq_groups(bq_format f, qctx c, const float *__restrict__ x, float *__restrict__ y, size_t rows,
                           size_t cols, size_t G, scale_place sp)
{
    size_t ng = (cols + G - 1) / G, gid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (gid >= rows * ng) return;
    size_t r = gid / ng, b = (gid % ng) * G, n = cols - b < G ? cols - b : G, idx = r * cols + b;
    const float *xb = x + idx;
    float *yb = y + idx;
    if (sp == SCALE_NONE) {
        for (size_t i = 0; i < n; i++) yb[i] = elem_quant(&f.el, xb[i], c.round, c.seed, idx + i);
    } else if (sp != SCALE_BLOCK) {  // an int format's float32 scale
        float s = c.tensor_scale, z = c.tensor_zero;
        int bad = c.tensor_nonfinite;
        if (sp != SCALE_TENSOR) int_group_scale(&f, xb, n, &s, &z, &bad);
        for (size_t i = 0; i < n; i++) yb[i] = int_value(f, c, xb[i], idx + i, s, z, bad);
    } else {
        uint32_t mb = amax_bits(xb, n);
        if (mb > 0x7f7fffffu) { for (size_t i = 0; i < n; i++) yb[i] = NAN; return; }
        bscale s = block_scale(&f, &c, u2f(mb));
        for (size_t i = 0; i < n; i++) yb[i] = block_value(f, c, s, xb[i], idx + i);
    }
}

// Block formats with K = 16 or 32 dividing the row: one thread per element,
// the block's max found across its lanes. Coalesced loads and stores.
template <int K>
__global__ void qdq_lanes(bq_format f, qctx c, const float *__restrict__ x, float *__restrict__ y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? x[i] : 0.0f;
    uint32_t m = f2u(v) & 0x7fffffffu;
    for (int o = K / 2; o; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (i >= n) return;
    if (m > 0x7f7fffffu) { y[i] = NAN; return; }
    bscale s = block_scale(&f, &c, u2f(m));
    y[i] = block_value(f, c, s, v, i);
}

// A thread's eight values of a block of K (zeros past n8) and their block's max |x|
// bits, across the block's K / 8 threads (every lane calls it: the shuffles). False
// where there is nothing left to do: i past n8, or a block holding Inf or NaN, which
// it has written as NaN.
template <int K>
static __device__ __forceinline__ bool chunk8(const float4 *__restrict__ x, float4 *__restrict__ y, size_t i, size_t n8, float e[8],
                                              uint32_t *mb)
{
    float4 v0 = make_float4(0.0f, 0.0f, 0.0f, 0.0f), v1 = v0;
    if (i < n8) { v0 = x[2 * i]; v1 = x[2 * i + 1]; }
    e[0] = v0.x; e[1] = v0.y; e[2] = v0.z; e[3] = v0.w;
    e[4] = v1.x; e[5] = v1.y; e[6] = v1.z; e[7] = v1.w;
    uint32_t m = 0;
#pragma unroll
    for (int k = 0; k < 8; k++) m = max(m, f2u(e[k]) & 0x7fffffffu);
    for (int o = K / 16; o; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
    *mb = m;
    if (i >= n8) return false;
    if (m > 0x7f7fffffu) {
        y[2 * i] = y[2 * i + 1] = make_float4(NAN, NAN, NAN, NAN);
        return false;
    }
    return true;
}

// N elements of a block or group whose scale divides (d in [2^-126, 2^126]) as x * (1 / d)
// where grid_by_recip says each rounds as x / d would, dequantised by p1, p2; false with e
// untouched where d is out of range or any element is in doubt (the caller divides).
template <int N>
static __device__ __forceinline__ bool recip_values(const elem_t *el, float *e, float d, bq_round rnd, float p1, float p2)
{
    if (!(d >= 0x1p-126f && d <= 0x1p126f)) return false;
    const float r = 1.0f / d;
    float out[N];
    bool ok = true;
#pragma unroll
    for (int k = 0; k < N; k++) {
        float q;
        ok &= grid_by_recip(el, e[k], r, rnd, &q);
        out[k] = deq_sat(copysignf(q, e[k] != 0.0f ? e[k] : 0.0f), p1, p2);  // (sgn_of(x / d))
    }
    if (!ok) return false;
#pragma unroll
    for (int k = 0; k < N; k++) e[k] = out[k];
    return true;
}

// The same with eight elements per thread (two 16-byte loads and stores; the
// block's scale computed once per eight elements).
// RND and EV (0: minifloat elements with the float32 path, 1: minifloat through
// double, 2: integer, 3: logarithmic) are the run-time choices made constants, so
// that the per-element switches fold away (the kernel was issue-bound without).
// Log blocks take the CPU's bit arithmetic (log_bits_elem) where it applies.
// Blocks whose scale is 2^E with E in [fl, fh] take pow2_fused_elem (qkern.h; the CPU's
// grid_loop_pow2, the same bits): two multiplies an element instead of five; fl > fh
// where the grid is not one the fused path takes.
// Scaled blocks of a grid_fast grid (int8_b32_sfp16, e4m3_b16_sbf16, NVFP4 under
// 16384 values: rcp set) under a deterministic rounding take recip_values.
template <int K, int RND, int EV>
__global__ void qdq_lanes8(bq_format f, qctx c, const float4 *__restrict__ x, float4 *__restrict__ y, size_t n8, int fl, int fh,
                           int rcp)
{
    c.round = (bq_round)RND;
    f.el.kind = EV < 2 ? EK_MF : EV == 2 ? EK_INT : EK_LOG;
    if (EV < 2) f.el.fast = EV == 0;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    float e[8];
    uint32_t m;
    if (!chunk8<K>(x, y, i, n8, e, &m)) return;
    bscale s = block_scale(&f, &c, u2f(m));
    if (EV == 3 && f.sch == SCH_BL) {  // as kernels.c's qdq_block
#pragma unroll
        for (int k = 0; k < 8; k++) e[k] = log_bits_elem(e[k], f.el.lemin + s.E, f.el.lemax + s.E, (bq_round)RND, c.seed, 8 * i + k);
    } else if ((EV == 0 || EV == 2) && s.pow2 && s.E >= fl && s.E <= fh) {
        const pow2_fused p = pow2_fused_of(&f.el, s.E, EV == 0);
#pragma unroll
        for (int k = 0; k < 8; k++) e[k] = pow2_fused_elem(&p, e[k], EV == 0, (bq_round)RND, c.seed, 8 * i + k);
    } else if (!((EV == 0 || EV == 2) && RND != BQ_ROUND_STOCHASTIC && rcp && !s.pow2 &&
                 recip_values<8>(&f.el, e, s.div, (bq_round)RND, s.post1, s.post2))) {  // (done where it held)
#pragma unroll
        for (int k = 0; k < 8; k++) e[k] = block_value(f, c, s, e[k], 8 * i + k);
    }
    y[2 * i] = make_float4(e[0], e[1], e[2], e[3]);
    y[2 * i + 1] = make_float4(e[4], e[5], e[6], e[7]);
}

// ---- scaled blocks by levels: NVFP4, and blocks of a 4-bit grid under an 8-bit
// minifloat scale ----
//
// Such a block's scale is one of at most 256 values and its element grid has at
// most LV magnitudes g_0 = 0 < g_1 < ..., so under a deterministic rounding the
// block's output is a step function of |x|: Y_k = the dequantised g_k for the
// largest k whose threshold T_k |x| reaches, negative where x is and x / div is
// not 0 (|x| >= T_0). levels_build finds each threshold by bisection over the
// float's bits with block_elem itself as the test (the output grows with |x|), so
// the steps give the CPU's bits by construction; each element then costs LV - 1
// compares and selects instead of a division and the grid's rounding (NVFP4's
// quantising pass was issue-bound: 45% of copy with its amax pass).
enum { LV = 8 };
struct levels {
    float g[LV];  // the grid's magnitudes, ascending from 0
    int n;
};

// A table row per scale value (key), 2 * LV floats: T_0..T_{LV-1}, then Y_0..Y_{LV-1}.
__global__ void levels_build(bq_format f, qctx c, levels lv, uint32_t key0, int shift, int nkey, float *tab)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= nkey * LV) return;
    int key = t / LV, k = t % LV;
    bscale s = scaled_bscale(&f, &c, u2f((key0 + (uint32_t)key) << shift));
    float *T = tab + (size_t)key * 2 * LV, *Y = T + LV;
    Y[k] = k < lv.n ? deq_sat(lv.g[k], s.post1, s.post2) : 0.0f;
    uint32_t lo = k < lv.n ? 0u : 0x7f800000u, hi = 0x7f800000u;  // the first bits that reach level k; +Inf: none
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        float q, a = u2f(mid);
        bool reached = k == 0 ? a / s.div != 0.0f : (block_elem(&f, &s, a, c.round, 0, 0, &q), fabsf(q) >= lv.g[k]);
        if (reached) hi = mid;
        else lo = mid + 1;
    }
    T[k] = u2f(lo);
}

static __device__ __forceinline__ float level_value(float x, const float *T, const float *Y)
{
    float a = fabsf(x), y = Y[0];
#pragma unroll
    for (int k = 1; k < LV; k++) y = a >= T[k] ? Y[k] : y;
    return u2f(f2u(y) | (a >= T[0] ? f2u(x) & 0x80000000u : 0u));
}

// qdq_lanes8's blocks, the elements by the table (in shared memory); a grid-stride
// loop, so that each CTA loads the table once for many blocks.
template <int K>
__global__ void qdq_levels8(bq_format f, qctx c, const float4 *__restrict__ x, float4 *__restrict__ y, size_t n8,
                            const float4 *__restrict__ tab, uint32_t key0, int shift, int nkey)
{
    BQ_DYN_SHARED(float4, st);
    for (int i = threadIdx.x; i < nkey * 2 * LV / 4; i += blockDim.x) st[i] = tab[i];
    __syncthreads();
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t base = (size_t)blockIdx.x * blockDim.x; base < n8; base += step) {  // uniform in a CTA (the shuffles)
        size_t i = base + threadIdx.x;
        float e[8];
        uint32_t m;
        if (!chunk8<K>(x, y, i, n8, e, &m)) continue;
        bscale s = block_scale(&f, &c, u2f(m));
        uint32_t key = (f2u(s.post1) >> shift) - key0;
        if (s.div > 0.0f && key < (uint32_t)nkey) {
            float t[2 * LV];
#pragma unroll
            for (int q = 0; q < 2 * LV / 4; q++) {
                float4 w = st[key * (2 * LV / 4) + q];
                t[4 * q] = w.x; t[4 * q + 1] = w.y; t[4 * q + 2] = w.z; t[4 * q + 3] = w.w;
            }
#pragma unroll
            for (int k = 0; k < 8; k++) e[k] = level_value(e[k], t, t + LV);
        } else {
#pragma unroll
            for (int k = 0; k < 8; k++) e[k] = block_value(f, c, s, e[k], 8 * i + k);
        }
        y[2 * i] = make_float4(e[0], e[1], e[2], e[3]);
        y[2 * i + 1] = make_float4(e[4], e[5], e[6], e[7]);
    }
}

// Where qdq_levels8 applies: a scaled block format (SCH_SCALED, SCH_NVFP4) with a
// minifloat scale of at most 8 bits (each value's float32 bits above `shift` tell
// it apart: keys key0 .. key0 + nkey - 1) and a sign-symmetric element grid of at
// most LV magnitudes.
struct level_plan {
    levels lv;
    uint32_t key0;
    int shift, nkey;
};
static bool level_plan_of(const bq_format *f, level_plan *p)
{
    const elem_t *e = &f->el, *se = &f->scale;
    if ((f->sch != SCH_SCALED && f->sch != SCH_NVFP4) || se->kind != EK_MF || se->bits > 8 || e->bits > 8 ||
        !(e->kind == EK_MF || (e->kind == EK_INT && e->lo == -e->hi)))
        return false;
    p->lv.n = 0;
    for (uint32_t code = 0; code < (1u << e->bits); code++) {
        float v = pack_elem_value(f, code);
        if (!(v >= 0.0f && v <= FLT_MAX)) continue;
        int k = 0;
        while (k < p->lv.n && p->lv.g[k] < v) k++;
        if (k < p->lv.n && p->lv.g[k] == v) continue;
        if (p->lv.n == LV) return false;
        memmove(p->lv.g + k + 1, p->lv.g + k, (p->lv.n - k) * sizeof(float));
        p->lv.g[k] = v;
        p->lv.n++;
    }
    if (!p->lv.n || p->lv.g[0] != 0.0f) return false;
    p->shift = 23 - se->mbits;
    uint32_t lo = UINT32_MAX, hi = 0;
    for (uint32_t code = 0; code < (1u << se->bits); code++) {
        float v = mf_decode(se, code);
        if (!(v > 0.0f && v <= FLT_MAX)) continue;
        if (f2u(v) & ((1u << p->shift) - 1)) return false;
        lo = f2u(v) >> p->shift < lo ? f2u(v) >> p->shift : lo;
        hi = f2u(v) >> p->shift > hi ? f2u(v) >> p->shift : hi;
    }
    if (lo > hi || hi - lo >= 256) return false;
    p->key0 = lo;
    p->nkey = (int)(hi - lo + 1);
    return true;
}

template <int K, int R>
static void lanes8_ev(const bq_format &f, const qctx &c, int ev, unsigned nb, const float4 *x, float4 *y, size_t n8, int fresh)
{
    int rcp = fresh && !scheme_of(&f)->pow2_code && grid_fast(&f.el);
    int fused[2] = {1, 0};  // as kernels.c's qdq_block
    if (scheme_of(&f)->linear && grid_fast(&f.el)) pow2_fused_range(&f.el, fused);
    switch (ev) {
    case 0: launch_k(false, qdq_lanes8<K, R, 0>, nb, 256, f, c, x, y, n8, fused[0], fused[1], rcp); break;
    case 1: launch_k(false, qdq_lanes8<K, R, 1>, nb, 256, f, c, x, y, n8, fused[0], fused[1], 0); break;
    case 2: launch_k(false, qdq_lanes8<K, R, 2>, nb, 256, f, c, x, y, n8, fused[0], fused[1], rcp); break;
    default: launch_k(false, qdq_lanes8<K, R, 3>, nb, 256, f, c, x, y, n8, fused[0], fused[1], 0);
    }
}
// Runs f with the rounding mode as a compile-time constant (an integral_constant),
// so that each kernel is built once per mode.
template <typename F> static void by_round(bq_round r, F &&f)
{
    switch (r) {
    case BQ_ROUND_RNE: f(std::integral_constant<int, BQ_ROUND_RNE>()); break;
    case BQ_ROUND_AWAY: f(std::integral_constant<int, BQ_ROUND_AWAY>()); break;
    case BQ_ROUND_ZERO: f(std::integral_constant<int, BQ_ROUND_ZERO>()); break;
    default: f(std::integral_constant<int, BQ_ROUND_STOCHASTIC>());
    }
}

// Elementwise formats (SCH_ELEM) and int formats with one tensor-wide scale:
// eight elements per thread.
template <int INT, int RND>
__global__ void qdq_elem8(bq_format f, qctx c, const float4 *__restrict__ x, float4 *__restrict__ y, size_t n8)
{
    c.round = (bq_round)RND;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    float4 v0 = x[2 * i], v1 = x[2 * i + 1];
    float e[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
    if (!INT && f.el.kind == EK_LOG) {  // as kernels.c's qdq_elem
#pragma unroll
        for (int k = 0; k < 8; k++) e[k] = log_bits_elem(e[k], f.el.lemin, f.el.lemax, (bq_round)RND, c.seed, 8 * i + k);
    } else {
#pragma unroll
        for (int k = 0; k < 8; k++)
            e[k] = INT ? int_value(f, c, e[k], 8 * i + k, c.tensor_scale, c.tensor_zero, c.tensor_nonfinite)
                       : elem_quant(&f.el, e[k], c.round, c.seed, 8 * i + k);
    }
    y[2 * i] = make_float4(e[0], e[1], e[2], e[3]);
    y[2 * i + 1] = make_float4(e[4], e[5], e[6], e[7]);
}

// An int group's statistics (max |x| bits, min and max with 0 included) over
// four values, and their combination across lanes (max and min commute, so
// any order gives the CPU's values).
struct istats {
    uint32_t mb;
    float mn, mx;
};
// (MNMX 0: max |x| alone, for symmetric formats)
template <int MNMX = 1> static __device__ __forceinline__ void stats_add(istats &s, float4 v)
{
    float e[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        s.mb = max(s.mb, f2u(e[k]) & 0x7fffffffu);
        if (!MNMX) continue;
        s.mn = e[k] < s.mn ? e[k] : s.mn;
        s.mx = e[k] > s.mx ? e[k] : s.mx;
    }
}
// combined over a team of L lanes (a power of two, aligned in the warp)
template <int MNMX = 1> static __device__ __forceinline__ void stats_team(istats &s, int L)
{
    for (int o = L / 2; o; o >>= 1) {
        s.mb = max(s.mb, __shfl_xor_sync(0xffffffffu, s.mb, o));
        if (!MNMX) continue;
        float a = __shfl_xor_sync(0xffffffffu, s.mn, o), b = __shfl_xor_sync(0xffffffffu, s.mx, o);
        s.mn = a < s.mn ? a : s.mn;
        s.mx = b > s.mx ? b : s.mx;
    }
}
// combined over a CTA's warps' parts
static __device__ __forceinline__ void stats_parts(istats &st, const istats *part, int n)
{
    st = part[0];
    for (int w = 1; w < n; w++) {
        st.mb = max(st.mb, part[w].mb);
        st.mn = part[w].mn < st.mn ? part[w].mn : st.mn;
        st.mx = part[w].mx > st.mx ? part[w].mx : st.mx;
    }
}
static __device__ __forceinline__ float4 int_value4(const bq_format &f, const qctx &c, float4 v, size_t idx, float s, float z,
                                                    int bad)
{
    return make_float4(int_value(f, c, v.x, idx, s, z, bad), int_value(f, c, v.y, idx + 1, s, z, bad),
                       int_value(f, c, v.z, idx + 2, s, z, bad), int_value(f, c, v.w, idx + 3, s, z, bad));
}

// The int formats' per-group kernels below run with the format's fixed facts made
// constants (kind int, no fraction bits, symmetric range unless ASYM), so that
// elem_quant's switches fold away as in qdq_lanes8.
template <int ASYM> static __device__ __forceinline__ void int_consts(bq_format &f)
{
    f.el.kind = EK_INT;
    f.el.frac = 0;
    f.asym = ASYM;
    if (!ASYM) f.el.lo = -f.el.hi;
}

static bool int_consts_hold(const bq_format *f)
{
    return f->el.kind == EK_INT && f->el.frac == 0 && (f->asym || f->el.lo == -f->el.hi);
}

// int_value4 of the per-group kernels: symmetric formats under a deterministic
// rounding take grid_by_recip's x * (1 / s) where it rounds as x / s would.
template <int ASYM, int RND>
static __device__ __forceinline__ float4 int_group4(const bq_format &f, const qctx &c, float4 v, size_t idx, float s, float z, int bad,
                                                    int rcp)
{
    if (!ASYM && RND != BQ_ROUND_STOCHASTIC && rcp && !bad) {
        float e[4] = {v.x, v.y, v.z, v.w};
        if (recip_values<4>(&f.el, e, s, (bq_round)RND, s, 1.0f)) return make_float4(e[0], e[1], e[2], e[3]);
    }
    return int_value4(f, c, v, idx, s, z, bad);
}

// A thread's part of a group in the team and row kernels: float4s lane + stride * j
// (j < CH) of the group's q4, loaded all at once (zeros past q4, or for !valid), and
// their statistics; then, from the group's statistics, their quantised values out.
template <int CH, int ASYM>
static __device__ __forceinline__ void group_in(const float4 *__restrict__ xg, int lane, int stride, int q4, bool valid, float4 *v,
                                                istats &st)
{
#pragma unroll
    for (int j = 0; j < CH; j++) {
        int q = lane + stride * j;
        v[j] = valid && q < q4 ? xg[q] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int j = 0; j < CH; j++) stats_add<ASYM>(st, v[j]);
}
template <int CH, int ASYM, int RND>
static __device__ __forceinline__ void group_out(const bq_format &f, const qctx &c, const istats &st, const float4 *v,
                                                 float4 *__restrict__ yg, size_t idx0, int lane, int stride, int q4, int rcp)
{
    float s, z;
    int bad;
    int_scale_of(&f, st.mb, st.mn, st.mx, &s, &z, &bad);
#pragma unroll
    for (int j = 0; j < CH; j++) {
        int q = lane + stride * j;
        if (q < q4) yg[q] = int_group4<ASYM, RND>(f, c, v[j], idx0 + 4 * q, s, z, bad, rcp);
    }
}

// Int formats with a scale per group of G <= 4 * L * CH values (rows or groups,
// G % 4 == 0): a team of L = 2^lgL lanes (up to 32) per group, each lane
// holding CH float4s between the two passes, so that every lane has CH loads in
// flight at once (the warp per group and CTA per row this replaces up to 16384
// values had one 16-byte load a thread in flight: 58-59% of the H200's copy).
template <int CH, int ASYM, int RND>
__global__ void qdq_int_team(bq_format f, qctx c, const float4 *__restrict__ x, float4 *__restrict__ y, size_t ngroups, int G,
                             int lgL, int rcp)
{
    c.round = (bq_round)RND;
    int_consts<ASYM>(f);
    const int L = 1 << lgL;
    size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x, gid = t >> lgL;
    int lane = (int)(t & (L - 1)), q4 = G / 4;
    float4 v[CH];
    istats st = {0, 0.0f, 0.0f};
    group_in<CH, ASYM>(x + (gid < ngroups ? gid : 0) * q4, lane, L, q4, gid < ngroups, v, st);
    stats_team<ASYM>(st, L);
    if (gid >= ngroups) return;
    group_out<CH, ASYM, RND>(f, c, st, v, y + gid * q4, gid * G, lane, L, q4, rcp);
}

// Whole rows of up to 4 * 8 * 512 = 16384 values: a CTA of 512 per row, each
// thread holding up to 8 float4s (registers instead of shared memory, so two
// rows an SM are in flight with all their loads issued up front).
enum { ROW_T = 512, ROW_CH = 8 };
template <int ASYM, int RND>
__global__ void __launch_bounds__(ROW_T) qdq_int_row(bq_format f, qctx c, const float4 *__restrict__ x, float4 *__restrict__ y,
                                                     int G)
{
    c.round = (bq_round)RND;
    int_consts<ASYM>(f);
    __shared__ istats part[ROW_T / 32];
    const int q4 = G / 4, tid = threadIdx.x;
    float4 v[ROW_CH];
    istats st = {0, 0.0f, 0.0f};
    group_in<ROW_CH, ASYM>(x + (size_t)blockIdx.x * q4, tid, ROW_T, q4, true, v, st);
    stats_team<ASYM>(st, 32);
    if ((tid & 31) == 0) part[tid >> 5] = st;
    __syncthreads();
    stats_parts(st, part, ROW_T / 32);
    group_out<ROW_CH, ASYM, RND>(f, c, st, v, y + (size_t)blockIdx.x * q4, (size_t)blockIdx.x * G, tid, ROW_T, q4, 1);
}

// Rows longer than that: a CTA of 256 per group, the values held in shared
// memory (`cache`) when they fit, else read twice.
template <int RND>
__global__ void __launch_bounds__(256) qdq_int_cta(bq_format f, qctx c, const float4 *__restrict__ x, float4 *__restrict__ y,
                                                   int G, int cache)
{
    c.round = (bq_round)RND;
    BQ_DYN_SHARED(float4, buf);
    __shared__ istats part[8];
    const int q4 = G / 4, tid = threadIdx.x;
    const float4 *xg = x + (size_t)blockIdx.x * q4;
    istats st = {0, 0.0f, 0.0f};
    for (int q = tid; q < q4; q += 256) {
        float4 v = xg[q];
        if (cache) buf[q] = v;
        stats_add(st, v);
    }
    stats_team(st, 32);
    if ((tid & 31) == 0) part[tid >> 5] = st;
    __syncthreads();
    stats_parts(st, part, 8);
    float s, z;
    int bad;
    int_scale_of(&f, st.mb, st.mn, st.mx, &s, &z, &bad);
    for (int q = tid; q < q4; q += 256)
        y[(size_t)blockIdx.x * q4 + q] = int_value4(f, c, cache ? buf[q] : xg[q], (size_t)blockIdx.x * G + 4 * q, s, z, bad);
}

// A team per group up to 1024 values (4 float4s a lane, 8 past 512 values), a CTA
// per row up to 16384, else a CTA per group (values cached in shared memory up to
// 96 KB). Symmetric and asymmetric int each have their constants.
// (teams 0: the twentieth session's kernels for A/B runs, a warp per group up to 1024
// values and the CTA with shared memory beyond, x / s per element)
template <int R>
static void int_groups(const bq_format &f, const qctx &c, const float4 *x4, float4 *y4, size_t ng, int G, int teams)
{
    int q4 = G / 4, lg = teams ? 0 : 5;
    while (lg < 5 && 4 << lg < q4) lg++;
    unsigned nb = (unsigned)(((ng << lg) + 255) / 256);
    if (G <= 4 * 32 * 4) {
        if (f.asym) launch_k(false, qdq_int_team<4, 1, R>, nb, 256, f, c, x4, y4, ng, G, lg, teams);
        else launch_k(false, qdq_int_team<4, 0, R>, nb, 256, f, c, x4, y4, ng, G, lg, teams);
    } else if (G <= 4 * 32 * 8) {
        if (f.asym) launch_k(false, qdq_int_team<8, 1, R>, nb, 256, f, c, x4, y4, ng, G, 5, teams);
        else launch_k(false, qdq_int_team<8, 0, R>, nb, 256, f, c, x4, y4, ng, G, 5, teams);
    } else if (teams && G <= 4 * ROW_CH * ROW_T) {
        if (f.asym) launch_k(false, qdq_int_row<1, R>, (unsigned)ng, ROW_T, f, c, x4, y4, G);
        else launch_k(false, qdq_int_row<0, R>, (unsigned)ng, ROW_T, f, c, x4, y4, G);
    } else {
        static int raised;  // asked for once
        if (!raised) raised = cudaFuncSetAttribute(qdq_int_cta<R>, cudaFuncAttributeMaxDynamicSharedMemorySize, 96 << 10) == cudaSuccess;
        cudaGetLastError();
        int cache = raised && (size_t)G * 4 <= (96u << 10);
        launch_ks(false, qdq_int_cta<R>, (unsigned)ng, 256, cache ? (size_t)G * 4 : 0, f, c, x4, y4, G, cache);
    }
}

// max |x| bits over the whole tensor, and over its finite values only.
// Four values per load where x is 16-byte aligned (vec).
__global__ void amax_kernel(const float *__restrict__ x, size_t n, unsigned *out, int vec)
{
    unsigned all = 0, fin = 0;
    auto take = [&](float v) {
        unsigned u = f2u(v) & 0x7fffffffu;
        all = max(all, u);
        if (u <= 0x7f7fffffu) fin = max(fin, u);
    };
    size_t i0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x, n4 = vec ? n / 4 : 0;
    const float4 *x4 = (const float4 *)x;
    size_t i = i0;
    for (; i + 3 * step < n4; i += 4 * step) {  // four loads in flight a thread
        float4 v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) v[u] = x4[i + u * step];
#pragma unroll
        for (int u = 0; u < 4; u++) { take(v[u].x); take(v[u].y); take(v[u].z); take(v[u].w); }
    }
    for (; i < n4; i += step) {
        float4 v = x4[i];
        take(v.x); take(v.y); take(v.z); take(v.w);
    }
    for (size_t i = 4 * n4 + i0; i < n; i += step) take(x[i]);
    for (int o = 16; o; o >>= 1) {
        all = max(all, __shfl_xor_sync(0xffffffffu, all, o));
        fin = max(fin, __shfl_xor_sync(0xffffffffu, fin, o));
    }
    if ((threadIdx.x & 31) == 0) { atomicMax(&out[0], all); atomicMax(&out[1], fin); }
}

extern "C" int bq_cuda_qdq_reads_back(const bq_format *f)
{
    return scheme_of(f)->tensor_factor || format_scale_place(f) == SCALE_TENSOR;
}

// A device buffer kept for the calling thread, of one size: an allocation per call
// costs more than the kernels, and threads quantise side by side (GPTQ's workers do),
// each with its own.
struct scratch {
    void *p = nullptr;
    int device = -1;
    bq_status get(size_t bytes, void **out)
    {
        int dev = 0;
        cudaGetDevice(&dev);
        if (p && device != dev) bq_cuda_free(p), p = nullptr;
        bq_status st = p ? BQ_OK : bq_cuda_malloc(&p, bytes);
        device = dev;
        *out = p;
        return st;
    }
};

// The tensor-wide facts bq_tensor_ctx computes, from device data.
static bq_status tensor_ctx(const bq_format *f, const float *d_x, size_t n, const bq_qopts *o, qctx *c, size_t cols)
{
    memset(c, 0, sizeof *c);
    c->round = o ? o->round : BQ_ROUND_RNE;
    c->seed = o ? o->seed : 0;
    c->cols = cols;
    if ((unsigned)c->round > BQ_ROUND_STOCHASTIC) return bq_fail(BQ_ERR_ARG, "unknown rounding mode %d", (int)c->round);
    if (!bq_cuda_qdq_reads_back(f)) return BQ_OK;
    if (format_float_scale(f) && f->asym)
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA: per-tensor asymmetric int (%s) is not implemented on the GPU", f->name);
    static thread_local scratch words;
    unsigned *d_m, h[2] = {0, 0};
    bq_status st = words.get(8, (void **)&d_m);
    if (st) return st;
    cudaMemsetAsync(d_m, 0, 8);
    // eight float4s a thread at least (1056 CTAs: 8 an H200's SM, from 8.7M values on)
    size_t nb = (n / 4 + 2047) / 2048;
    launch_k(false, amax_kernel, (unsigned)(nb < 1 ? 1 : nb > 1056 ? 1056 : nb), 256, d_x, n, d_m, (uintptr_t)d_x % 16 == 0);
    st = bq_cuda_download(h, d_m, 8);
    if (st) return st;
    if (format_float_scale(f)) {
        c->tensor_nonfinite = h[0] > 0x7f7fffffu;
        c->tensor_scale = c->tensor_nonfinite ? NAN : u2f(h[0]) / (float)f->el.hi;
    } else {
        float amax = h[0] <= 0x7f7fffffu ? u2f(h[0]) : u2f(h[1]);
        c->tensor_scale = amax / (448.0f * 6.0f);
    }
    return BQ_OK;
}

// llama.cpp's Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 rules, a thread per block of 32 along a row
// (qkern.h's ggml_qdq_block, as kernels.c's qdq_row_ggml).
static __global__ void qdq_ggml(bq_format f, const float *x, float *y, size_t rows, size_t cols)
{
    size_t per = (cols + 31) / 32;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < rows * per; k += (size_t)gridDim.x * blockDim.x) {
        size_t b = k / per * cols + k % per * 32, n = cols - k % per * 32 < 32 ? cols - k % per * 32 : 32;
        ggml_qdq_block(&f, x + b, y + b, n);
    }
}

// The levels' table is built per call (one small kernel), worth it from this size on.
enum { LEVELS_MIN = 16384 };
// Whether this thread's stream is being recorded as a graph (the engine's decoding
// step): a graph would keep the thread's table buffer, so such calls take qdq_lanes8.
static bool capturing(void)
{
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    return cudaStreamIsCapturing(cudaStreamPerThread, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone;
}

extern "C" bq_status bq_cuda_qdq(const bq_format *f, const float *d_x, float *d_y, size_t rows, size_t cols,
                                 const bq_qopts *o)
{
    // BQ_CUDA_QDQ=0: the twentieth session's choices, for A/B runs (no levels' table, x / div
    // everywhere, int groups a warp each, rows past 1024 values in shared memory)
    int fresh;
    bq_status st = env_switch("BQ_CUDA_QDQ", 1, &fresh);
    if (st) return st;
    if (!bq_cuda_devices(NULL, 0)) return bq_fail(BQ_ERR_UNSUPPORTED, "no CUDA device");
    size_t n = rows * cols;
    if (f->ggml) {
        size_t blocks = rows * ((cols + 31) / 32);
        if (blocks) launch_k(false, qdq_ggml, (unsigned)(blocks / 128 + 1 < 65536 ? blocks / 128 + 1 : 65536), 128, *f, d_x, d_y, rows, cols);
        cudaError_t e = cudaGetLastError();
        return e == cudaSuccess ? BQ_OK : cuda_fail(e, "fake-quantisation kernel launch");
    }
    qctx c;
    if ((st = tensor_ctx(f, d_x, n, o, &c, cols)) || !n) return st;
    const scale_place sp = format_scale_place(f);
    const bool block = sp == SCALE_BLOCK;
    int aligned = ((uintptr_t)d_x | (uintptr_t)d_y) % 16 == 0;
    level_plan lp;
    if (fresh && block && (f->block == 32 || f->block == 16) && cols % (size_t)f->block == 0 && aligned && n >= LEVELS_MIN &&
        c.round != BQ_ROUND_STOCHASTIC && !capturing() && level_plan_of(f, &lp)) {
        static thread_local scratch table;
        float *tab;
        if ((st = table.get(256 * 2 * LV * sizeof(float), (void **)&tab))) return st;
        launch_k(false, levels_build, (unsigned)(lp.nkey * LV + 127) / 128, 128, *f, c, lp.lv, lp.key0, lp.shift, lp.nkey, tab);
        size_t n8 = n / 8, smem = (size_t)lp.nkey * 2 * LV * sizeof(float);
        unsigned nb = (unsigned)((n8 + 255) / 256 < 4096 ? (n8 + 255) / 256 : 4096);
        if (f->block == 32) launch_ks(false, qdq_levels8<32>, nb, 256, smem, *f, c, (const float4 *)d_x, (float4 *)d_y, n8, (const float4 *)tab, lp.key0, lp.shift, lp.nkey);
        else launch_ks(false, qdq_levels8<16>, nb, 256, smem, *f, c, (const float4 *)d_x, (float4 *)d_y, n8, (const float4 *)tab, lp.key0, lp.shift, lp.nkey);
    } else if (block && (f->block == 32 || f->block == 16) && cols % (size_t)f->block == 0 && aligned && f->el.kind != EK_FP32) {
        size_t n8 = n / 8;
        unsigned nb = (unsigned)((n8 + 255) / 256);
        int ev = f->el.kind == EK_MF ? !f->el.fast : f->el.kind == EK_INT ? 2 : 3;
        by_round(c.round, [&](auto R) {
            if (f->block == 32) lanes8_ev<32, R.value>(*f, c, ev, nb, (const float4 *)d_x, (float4 *)d_y, n8, fresh);
            else lanes8_ev<16, R.value>(*f, c, ev, nb, (const float4 *)d_x, (float4 *)d_y, n8, fresh);
        });
    } else if (block && (f->block == 32 || f->block == 16) && cols % (size_t)f->block == 0) {
        unsigned nb = (unsigned)((n + 255) / 256);
        if (f->block == 32) launch_k(false, qdq_lanes<32>, nb, 256, *f, c, d_x, d_y, n);
        else launch_k(false, qdq_lanes<16>, nb, 256, *f, c, d_x, d_y, n);
    } else if (aligned && n % 8 == 0 && format_rows_unscaled(f)) {
        size_t n8 = n / 8;
        unsigned nb = (unsigned)((n8 + 255) / 256);
        by_round(c.round, [&](auto R) {
            if (sp == SCALE_NONE) launch_k(false, qdq_elem8<0, R.value>, nb, 256, *f, c, (const float4 *)d_x, (float4 *)d_y, n8);
            else launch_k(false, qdq_elem8<1, R.value>, nb, 256, *f, c, (const float4 *)d_x, (float4 *)d_y, n8);
        });
    } else if (aligned && (sp == SCALE_ROW || (sp == SCALE_GROUP && cols % (size_t)f->block == 0)) &&
               pack_group_len(f, cols) % 4 == 0 && cols <= (1u << 30) && int_consts_hold(f)) {
        int G = (int)pack_group_len(f, cols);
        size_t ng = n / (size_t)G;
        const float4 *x4 = (const float4 *)d_x;
        float4 *y4 = (float4 *)d_y;
        by_round(c.round, [&](auto R) { int_groups<R.value>(*f, c, x4, y4, ng, G, fresh); });
    } else {
        size_t G = sp == SCALE_NONE ? 1 : pack_group_len(f, cols);
        size_t groups = rows * ((cols + G - 1) / G);
        launch_k(false, qdq_groups, (unsigned)((groups + 127) / 128), 128, *f, c, d_x, d_y, rows, cols, G, sp);
    }
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? BQ_OK : cuda_fail(e, "fake-quantisation kernel launch");
}
