// Attention of a few queries (decoding) over the KV cache, one kernel: the CUDA
// engine's path for up to 8 new tokens (engine.cu's cuda_attention; more go through
// cuBLAS). Two kernels of the same arithmetic: k_attn_few (the reference) and
// k_attn_vec (16-byte loads, every key of a round in flight at once, shuffle
// reductions), chosen by bq_cuda_attend_few's caller; test_cuda checks both against
// a double reference, on a GPU and on the simulator (tests/cusim).
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
extern "C" {
#include "bq_cuda.h"
}
#include "block.cuh"
#include "launch.cuh"

// Attention of a few queries (decoding) over the cache, without the scores GEMMs:
// one block a (token, head), as cpu.c's attend_heads for few queries. Scores
// q.k / sqrt(d) a warp a key; the causal softmax of k_softmax (float exponentials,
// their sum in double); then sum_j p_j v_j with each thread owning one element of
// the head and a slice of the keys, the slices added in a fixed order. s: the
// block's scores row (stride T floats). head_dim <= 256.
__global__ void k_attn_few(const float *q, const float *K, const float *V, float *a, float *s, int T, int heads, int group,
                           int d, int kvd, float scale, int pos0, const int *dpos, int window)
{
    pdl_wait();
    pdl_go();
    __shared__ float fm[256];
    __shared__ double ds[256];
    const int h = blockIdx.x % heads, t = blockIdx.x / heads, kh = h / group, qd = heads * d;
    const int last = first_pos(pos0, dpos) + t, first = window && last >= window ? last - window + 1 : 0;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const float *qh = q + (size_t)t * qd + (size_t)h * d;
    float *sr = s + (size_t)blockIdx.x * T;
    // KU keys a warp at a time, their loads in flight together (one key at a time
    // left this kernel waiting on memory: 22.5 us a layer at 129 positions, 7B shape);
    // each key's sum in the same order as one at a time
    constexpr int KU = 4;
    for (int j0 = first + warp * KU; j0 <= last; j0 += warps * KU) {
        float acc[KU] = {0.0f, 0.0f, 0.0f, 0.0f};
        const float *kr = K + (size_t)j0 * kvd + (size_t)kh * d;
        for (int i = lane; i < d; i += 32) {
            float qi = qh[i];
#pragma unroll
            for (int u = 0; u < KU; u++)
                if (j0 + u <= last) acc[u] += qi * kr[(size_t)u * kvd + i];
        }
#pragma unroll
        for (int u = 0; u < KU; u++) {
            for (int o = 16; o; o >>= 1) acc[u] += __shfl_xor_sync(0xffffffffu, acc[u], o);
            if (lane == 0 && j0 + u <= last) sr[j0 + u] = acc[u] * scale;
        }
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int j = first + threadIdx.x; j <= last; j += blockDim.x) mx = fmaxf(mx, sr[j]);
    mx = block_reduce(mx, fm, max_op());
    double sum = 0;
    for (int j = first + threadIdx.x; j <= last; j += blockDim.x) { sr[j] = expf(sr[j] - mx); sum += sr[j]; }
    float inv = (float)(1.0 / block_reduce(sum, ds, sum_op()));
    const int parts = blockDim.x / d, part = threadIdx.x / d, i = threadIdx.x % d;
    float acc = 0.0f;
    if (part < parts) {  // four values loaded ahead, summed in order
        const float *vh = V + (size_t)kh * d + i;
        int j = first + part;
        for (; j + 3 * parts <= last; j += 4 * parts) {
            float v0 = vh[(size_t)j * kvd], v1 = vh[(size_t)(j + parts) * kvd], v2 = vh[(size_t)(j + 2 * parts) * kvd],
                  v3 = vh[(size_t)(j + 3 * parts) * kvd];
            acc += (sr[j] * inv) * v0;
            acc += (sr[j + parts] * inv) * v1;
            acc += (sr[j + 2 * parts] * inv) * v2;
            acc += (sr[j + 3 * parts] * inv) * v3;
        }
        for (; j <= last; j += parts) acc += (sr[j] * inv) * vh[(size_t)j * kvd];
    }
    fm[threadIdx.x] = acc;
    __syncthreads();
    if ((int)threadIdx.x < d) {
        float o = 0.0f;
        for (int p = 0; p < parts; p++) o += fm[p * d + threadIdx.x];
        a[(size_t)t * qd + (size_t)h * d + threadIdx.x] = o;
    }
}

// k_attn_few with each lane taking four consecutive elements of the head (L = d / 4
// lanes a key, 32 / L keys side by side in a warp, KU keys a lane in flight), the
// softmax's reductions by shuffles (block_max, block_sum: 2 barriers each instead of
// 9), and the weighted sum of V by float4 over 256 / L slices of the keys, VU of a
// slice's values in flight, added in a fixed order. The same operations per score,
// exponential and product as k_attn_few; the sums in another order (a few ulp apart).
// d = 4, 8, .., 128. KU and VU change what is in flight, not the order of any sum, so
// every depth gives the same bits. A decoding step has one CTA a head (32 on a 7B
// shape), each waiting on memory: a 7B layer's attention over 128 positions takes
// 8.9 us on the H100 at KU = VU = 4 (one round trip per 32 keys), 6.5 at 16 (the
// engine's default, BQ_CUDA_ATTN=deep: NVFP4's decode 321.7 -> 333.5 tokens/s).
template <int L, int KU, int VU>
__global__ void __launch_bounds__(256) k_attn_vec(const float *q, const float *K, const float *V, float *a, float *s, int T, int heads,
                                                  int group, int kvd, float scale, int pos0, const int *dpos, int window)
{
    constexpr int d = 4 * L, KPW = 32 / L;
    __shared__ float fm[32];
    __shared__ double ds[32];
    __shared__ float4 part[256];
    pdl_wait();
    pdl_go();
    const int h = blockIdx.x % heads, t = blockIdx.x / heads, kh = h / group, qd = heads * d;
    const int last = first_pos(pos0, dpos) + t, first = window && last >= window ? last - window + 1 : 0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5, e = lane % L, sub = lane / L;
    const size_t kv4 = (size_t)kvd / 4;
    float *sr = s + (size_t)blockIdx.x * T;
    const float4 q4 = ((const float4 *)(q + (size_t)t * qd + (size_t)h * d))[e];
    const float4 *K4 = (const float4 *)(K + (size_t)kh * d) + e, *V4 = (const float4 *)(V + (size_t)kh * d);
    // scores: a warp's round is KPW x KU keys (the loop is the same for its lanes, so
    // that the shuffles meet); sub-group sub takes KU consecutive ones
    for (int jw = first + warp * KPW * KU; jw <= last; jw += warps * KPW * KU) {
        const int j0 = jw + sub * KU;
        float4 k[KU];
#pragma unroll
        for (int u = 0; u < KU; u++) k[u] = j0 + u <= last ? K4[(size_t)(j0 + u) * kv4] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int u = 0; u < KU; u++) {
            float p = q4.x * k[u].x + q4.y * k[u].y + q4.z * k[u].z + q4.w * k[u].w;
#pragma unroll
            for (int o = L / 2; o; o >>= 1) p += __shfl_xor_sync(0xffffffffu, p, o);
            if (e == 0 && j0 + u <= last) sr[j0 + u] = p * scale;
        }
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int j = first + threadIdx.x; j <= last; j += blockDim.x) mx = fmaxf(mx, sr[j]);
    mx = block_max(mx, fm);
    double sum = 0;
    for (int j = first + threadIdx.x; j <= last; j += blockDim.x) { sr[j] = expf(sr[j] - mx); sum += sr[j]; }
    const float inv = (float)(1.0 / block_sum(sum, ds));
    const int parts = blockDim.x / L, pt = threadIdx.x / L;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    auto add = [&](int j, float4 v) {
        float p = sr[j] * inv;
        acc.x += p * v.x, acc.y += p * v.y, acc.z += p * v.z, acc.w += p * v.w;
    };
    for (int j = first + pt; j <= last; j += VU * parts) {  // VU values loaded ahead (the last round's too), summed in order
        float4 v[VU];
#pragma unroll
        for (int u = 0; u < VU; u++) v[u] = j + u * parts <= last ? V4[(size_t)(j + u * parts) * kv4 + e] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int u = 0; u < VU; u++)
            if (j + u * parts <= last) add(j + u * parts, v[u]);
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    if ((int)threadIdx.x < L) {
        float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (int p = 0; p < parts; p++) {
            float4 v = part[p * L + threadIdx.x];
            o.x += v.x, o.y += v.y, o.z += v.z, o.w += v.w;
        }
        ((float4 *)(a + (size_t)t * qd + (size_t)h * d))[threadIdx.x] = o;
    }
}

static bq_status attend_launched(void)
{
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? BQ_OK : bq_fail(BQ_ERR_UNSUPPORTED, "CUDA attention launch: %s", cudaGetErrorString(e));
}

extern "C" int bq_cuda_attend_vec_takes(int d, const void *q, const void *K, const void *V, const void *a)
{
    return (d == 4 || d == 8 || d == 16 || d == 32 || d == 64 || d == 128) && !(((uintptr_t)q | (uintptr_t)K | (uintptr_t)V | (uintptr_t)a) & 15);
}

extern "C" bq_status bq_cuda_attend_few(int kernel, int pdl, const float *q, const float *K, const float *V, float *a, float *s, int T, int n,
                                        int heads, int group, int d, int kvd, float scale, int pos0, const int *dpos, int window)
{
    if (n < 1 || n > 8 || d < 1 || d > 256 || heads < 1 || group < 1 || heads % group)
        return bq_fail(BQ_ERR_ARG, "CUDA attention of few queries: %d queries, heads %d in groups of %d, head_dim %d", n, heads, group, d);
    const unsigned blocks = (unsigned)(n * heads);
    if (kernel == BQ_ATTN_FEW) {
        launch_k(pdl, k_attn_few, blocks, 256, q, K, V, a, s, T, heads, group, d, kvd, scale, pos0, dpos, window);
        return attend_launched();
    }
    if (!bq_cuda_attend_vec_takes(d, q, K, V, a))
        return bq_fail(BQ_ERR_ARG, "CUDA attention (16-byte loads): head_dim %d (4, 8, .., 128) or operands not 16-byte aligned", d);
#define L2(N, U) launch_k(pdl, k_attn_vec<N, U, U>, blocks, 256, q, K, V, a, s, T, heads, group, kvd, scale, pos0, dpos, window)
#define L(N) if (kernel == BQ_ATTN_DEEP) { L2(N, 16); } else { L2(N, 4); }
    switch (d) {
    case 4: L(1); break;
    case 8: L(2); break;
    case 16: L(4); break;
    case 32: L(8); break;
    case 64: L(16); break;
    default: L(32); break;
    }
#undef L
#undef L2
    return attend_launched();
}
