// One row's RMSNorm or LayerNorm on a block of up to 1024 threads, the row held in
// registers. The CUDA engine's norm of rows up to 16384 wide (engine.cu's k_norm_v)
// and the norm that also makes the int8 GEMV's activation pieces (gemv.cu's norm_i8)
// both call norm_row_v, so they give the same bits.
#ifndef BQ_NORM_CUH
#define BQ_NORM_CUH
#include "block.cuh"
#include "launch.cuh"

// y = norm(x) for one row of d = 4 x V x blockDim.x floats at most (d % 4 == 0,
// 16-byte aligned), as forward.c's norm(): each thread holds its V float4 of the row
// in registers, so the row is read once with every load in flight at once, and the
// block reduces with shuffles (the engine's k_norm: 7.6 us for a 4096-wide row, 16
// dependent loads a thread and an 8-step tree of barriers; this: 3.6 us). The same
// float operations per element; sums in double. buf: 32 doubles of shared memory; yv:
// this thread's float4 of y (zeros past the row).
// res (may be NULL): a residual connection first, x += res, written back to x, res
// checked for NaN/Inf into *bad (may be NULL) as engine.cu's k_add_check, element
// indices from `at` (the row's first): the same bits as that kernel and then the norm.
// It starts the kernel: the norm's weights (no earlier kernel writes them) are loaded
// before the launch's wait for the kernel before (pdl_wait), x after it (rows over 8192,
// V = 4: after the sums, or a 1024-thread block's 64 registers a thread spill).
template <int V>
static __device__ __forceinline__ void norm_row_v(float *x, const float *res, unsigned long long *bad, size_t at, const float *w,
                                                  const float *b, float *y, int d, float eps, int layernorm, double *buf, float4 (&yv)[V])
{
    float4 *xr = (float4 *)x;
    const float4 *w4 = (const float4 *)w, *b4 = (const float4 *)b, *r4 = (const float4 *)res;
    float4 *yr = (float4 *)y;
    const int n4 = d / 4;
    constexpr bool early = V <= 2;
    const float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 v[V], g[V], c[V];
#pragma unroll
    for (int j = 0; j < V; j++) {
        int i = threadIdx.x + j * blockDim.x;
        yv[j] = z;
        g[j] = early && i < n4 ? w4[i] : z;
        c[j] = early && i < n4 && b && layernorm ? b4[i] : z;
    }
    pdl_wait();
    pdl_go();
#pragma unroll
    for (int j = 0; j < V; j++) {
        int i = threadIdx.x + j * blockDim.x;
        v[j] = i < n4 ? xr[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (res && i < n4) {
            const float4 r = r4[i];
            if (bad) {
                note_bad(bad, at + 4 * (size_t)i, r.x), note_bad(bad, at + 4 * (size_t)i + 1, r.y);
                note_bad(bad, at + 4 * (size_t)i + 2, r.z), note_bad(bad, at + 4 * (size_t)i + 3, r.w);
            }
            v[j].x += r.x, v[j].y += r.y, v[j].z += r.z, v[j].w += r.w;
            xr[i] = v[j];
        }
    }
    double s = 0;
    if (!layernorm) {
#pragma unroll
        for (int j = 0; j < V; j++)
            s += (double)v[j].x * v[j].x + (double)v[j].y * v[j].y + (double)v[j].z * v[j].z + (double)v[j].w * v[j].w;
        float r = (float)(1.0 / sqrt(block_sum(s, buf) / d + eps));
#pragma unroll
        for (int j = 0; j < V; j++) {
            int i = threadIdx.x + j * blockDim.x;
            if (i >= n4) continue;
            if (!early) g[j] = w4[i];
            yr[i] = yv[j] = make_float4(g[j].x * (v[j].x * r), g[j].y * (v[j].y * r), g[j].z * (v[j].z * r), g[j].w * (v[j].w * r));
        }
        return;
    }
#pragma unroll
    for (int j = 0; j < V; j++) s += (double)v[j].x + (double)v[j].y + (double)v[j].z + (double)v[j].w;
    double mean = block_sum(s, buf) / d, q = 0;
#pragma unroll
    for (int j = 0; j < V; j++) {
        int i = threadIdx.x + j * blockDim.x;
        if (i >= n4) continue;
        q += (v[j].x - mean) * (v[j].x - mean) + (v[j].y - mean) * (v[j].y - mean) + (v[j].z - mean) * (v[j].z - mean) +
             (v[j].w - mean) * (v[j].w - mean);
    }
    float r = (float)(1.0 / sqrt(block_sum(q, buf) / d + eps));
#pragma unroll
    for (int j = 0; j < V; j++) {
        int i = threadIdx.x + j * blockDim.x;
        if (i >= n4) continue;
        if (!early) g[j] = w4[i], c[j] = b ? b4[i] : z;
        yr[i] = yv[j] = make_float4((float)(v[j].x - mean) * r * g[j].x + c[j].x, (float)(v[j].y - mean) * r * g[j].y + c[j].y,
                            (float)(v[j].z - mean) * r * g[j].z + c[j].z, (float)(v[j].w - mean) * r * g[j].w + c[j].w);
    }
}

// The launch shape of norm_row_v for rows of d: threads a block and V (0: too wide or
// not float4-aligned: another kernel's job).
static inline int norm_v_shape(int d, const void *x, const void *y, const void *w, const void *b, int *threads)
{
    int n4 = d / 4;
    *threads = n4 < 1024 ? (n4 + 31) / 32 * 32 : 1024;
    int v = (n4 + *threads - 1) / *threads;
    bool vec = d % 4 == 0 && !(((uintptr_t)x | (uintptr_t)y | (uintptr_t)w | (uintptr_t)b) & 15);
    return vec && v <= 4 ? (v <= 2 ? v : 4) : 0;
}
#endif
