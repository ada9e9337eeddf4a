// The CUDA backend of the forward pass (src/engine/backend.h): the operations
// src/engine/forward.c is written in, on the device, for every architecture the
// CPU runs. The KV cache and the activations live on the device; nothing
// synchronises with the host until the logits (or log-probabilities) come back,
// so decoding a token is one queue of kernels. Each linear goes up in one of three
// forms (packed, bf16 or float32, below; up_linear chooses); activations, the KV
// cache and (--attn) the attention operands are quantised on the device by
// bq_cuda_qdq (the CPU's bits). Attention is two strided-batched float32 GEMMs
// per group of heads around a causal softmax, as the CPU computes it. cuBLAS is
// opened at run time, so blockq needs no CUDA libraries where there is no GPU.
//
// Packed: where the CPU holds a linear packed (--packed, a .bq or GGUF file) and
// it takes the bf16 path, its codes go up as they are (bq_cuda_w: 4, 6 or 8 bits
// a weight) and are unpacked to bf16 just before each product.
//
// The bf16 path: a linear whose weights are all bf16 values and whose activation
// format only produces bf16 values keeps its weights as bf16 on the device and
// multiplies with cuBLAS's bf16 GEMM (float32 accumulation). The products of two
// bf16 numbers are exact in float32, so this computes what the float32 path
// computes (up to the order of the sums), in half the memory. It covers --wq/--aq
// bf16 on a bf16 checkpoint and most block formats (MX, BFP, block minifloat and
// logarithm), whose values have at most 8 significant bits and power-of-two scales.
//
// Float32 otherwise: cuBLAS SGEMM (no TF32) on the weights as the CPU holds them
// (fake-quantised, or decoded from packed storage).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
extern "C" {
#include "bq_cuda.h"
#include "backend.h"
#include "qkern.h"
}
#include "cuda_libs.h"
#include "knobs.h"
#include "launch.cuh"
#include "norm.cuh"

// ---- kernels (launched with 256 threads a block where they reduce) ----

__global__ void k_embed(const float *emb, const int *ids, float *x, int E)
{
    int t = blockIdx.x;
    for (int i = threadIdx.x; i < E; i += blockDim.x) x[(size_t)t * E + i] = emb[(size_t)ids[t] * E + i];
}

// Learned positions (OPT, GPT-2): row t gets pos[t + offset + first position].
__global__ void k_add_pos(float *x, const float *pos, size_t n, int H, int offset, int pos0, const int *dpos)
{
    pdl_wait();
    pdl_go();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += pos[(i / H + offset + first_pos(pos0, dpos)) * H + i % H];
}

// RMSNorm, or LayerNorm (with its bias, where b is not NULL), as forward.c's norm():
// sums in double, the same float operations in the same order. In place is fine.
__global__ void k_norm(const float *x, const float *w, const float *b, float *y, int d, float eps, int layer)
{
    pdl_wait();
    pdl_go();
    __shared__ double part[256];
    const float *xr = x + (size_t)blockIdx.x * d;
    float *yr = y + (size_t)blockIdx.x * d;
    double s = 0;
    // (rows of up to 16384 floats, 16-byte aligned: k_norm_v)
    if (!layer) {
        for (int i = threadIdx.x; i < d; i += blockDim.x) s += (double)xr[i] * xr[i];
        float r = (float)(1.0 / sqrt(block_reduce(s, part, sum_op()) / d + eps));
        for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = w[i] * (xr[i] * r);
        return;
    }
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += xr[i];
    double mean = block_reduce(s, part, sum_op()) / d, v = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) v += (xr[i] - mean) * (xr[i] - mean);
    float r = (float)(1.0 / sqrt(block_reduce(v, part, sum_op()) / d + eps));
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = (float)(xr[i] - mean) * r * w[i] + (b ? b[i] : 0.0f);
}

// k_norm for rows of up to 16384 floats (norm.cuh: the row held in registers, read
// once); res (may be NULL): x += res first (k_add_check's bits; bad may be NULL)
template <int V>
__global__ void __launch_bounds__(1024) k_norm_v(float *x, const float *res, unsigned long long *bad, const float *w, const float *b, float *y,
                                                 int d, float eps, int layer)
{
    __shared__ double buf[32];
    const size_t at = (size_t)blockIdx.x * d;
    float4 yv[V];
    norm_row_v<V>(x + at, res ? res + at : nullptr, bad, at, w, b, y + at, d, eps, layer, buf, yv);
}

// The online rotation (model_rot_rows: the same float operations in the same
// order, so the same bits), in two steps. k_rot_chunks, block (t, c) for chunk c of
// row t: the chunk times its signs into shared memory (m floats), then each thread a
// column j, t[c][j] = sum_i u[i] B[i][j] (B's row read across the warp: coalesced).
// k_rot_fwht, block (t, j): column j of the p x m view through the Walsh-Hadamard
// butterflies over the chunks in shared memory (p floats), then the scale. Each
// writes the other's input buffer: x -> tmp -> x.
__global__ void k_rot_chunks(const float *x, float *t, const float *B, const float *sign, int n, int m)
{
    extern __shared__ float u[];
    const size_t base = (size_t)blockIdx.x * n + (size_t)blockIdx.y * m;
    for (int i = threadIdx.x; i < m; i += blockDim.x) u[i] = x[base + i] * sign[(size_t)blockIdx.y * m + i];
    __syncthreads();
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
        float a;
        if (m > 1) {
            a = 0.0f;
            for (int i = 0; i < m; i++) a += u[i] * B[(size_t)i * m + j];
        } else
            a = u[0];
        t[base + j] = a;
    }
}

__global__ void k_rot_fwht(const float *t, float *x, int n, int p, int m, float s)
{
    extern __shared__ float col[];
    const int j = blockIdx.y;
    const float *v = t + (size_t)blockIdx.x * n;
    for (int c = threadIdx.x; c < p; c += blockDim.x) col[c] = v[(size_t)c * m + j];
    __syncthreads();
    for (int h = 1; h < p; h *= 2) {
        for (int k = threadIdx.x; k < p / 2; k += blockDim.x) {
            int c = k / h * 2 * h + k % h;
            float l = col[c], r = col[c + h];
            col[c] = l + r;
            col[c + h] = l - r;
        }
        __syncthreads();
    }
    float *o = x + (size_t)blockIdx.x * n;
    for (int c = threadIdx.x; c < p; c += blockDim.x) o[(size_t)c * m + j] = col[c] * s;
}

// float32 holding bf16 values -> bf16 (exact: the low halves are zero)
__global__ void k_top_half(const float *x, __nv_bfloat16 *y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __ushort_as_bfloat16(f32_top_bf16(x[i]));
}

__global__ void k_bias(float *y, const float *b, size_t n, int out)
{
    pdl_wait();
    pdl_go();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += b[i % out];
}

// Rotary position p on the pair (k, k + d/2) of one head's row v, in place.
static __device__ __forceinline__ void rope_pair(float *v, int k, int d, float theta, int p)
{
    int half = d / 2;
    float inv = (float)(1.0 / pow((double)theta, (double)(2 * k) / d));
    float ang = (float)p * inv, cs = cosf(ang), sn = sinf(ang);
    float a = v[k], b = v[k + half];
    v[k] = a * cs - b * sn;
    v[k + half] = b * cs + a * sn;
}

__global__ void k_rope(float *x, int T, int heads, int d, float theta, int pos0, const int *dpos)
{
    pdl_wait();
    pdl_go();
    pos0 = first_pos(pos0, dpos);
    int half = d / 2;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * heads * half) return;
    int k = (int)(i % half), h = (int)(i / half % heads), t = (int)(i / half / heads);
    rope_pair(x + ((size_t)t * heads + h) * d, k, d, theta, pos0 + t);
}

// k_rope of q (heads) and k (kvh heads), then k_kv_store of k and v (cache rows of
// kvh * d floats from the first position): one launch for the three.
__global__ void k_rope_store(float *q, float *k, const float *v, float *kc, float *vc, int T, int heads, int kvh, int d, float theta,
                             int pos0, const int *dpos)
{
    pdl_wait();
    pdl_go();
    pos0 = first_pos(pos0, dpos);
    const int half = d / 2, all = heads + kvh;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * all * half) return;
    int e = (int)(i % half), h = (int)(i / half % all), t = (int)(i / half / all);
    if (h < heads) { rope_pair(q + ((size_t)t * heads + h) * d, e, d, theta, pos0 + t); return; }
    size_t row = ((size_t)t * kvh + (h - heads)) * d, at = (size_t)pos0 * kvh * d + row;
    rope_pair(k + row, e, d, theta, pos0 + t);
    kc[at + e] = k[row + e];
    kc[at + e + half] = k[row + e + half];
    vc[at + e] = v[row + e];
    vc[at + e + half] = v[row + e + half];
}

// Causal softmax of one row of scores (row t of a head's [n][T] block: query
// pos + t against keys 0..T-1), as cpu.c's attend_heads: float exponentials,
// their sum in double, zeros outside keys [first, pos + t] (first > 0 under a
// sliding window of `window` keys).
__global__ void k_softmax(float *s, int n, int T, int pos, int window)
{
    __shared__ float fm[256];
    __shared__ double ds[256];
    int last = pos + blockIdx.x % n, first = window && last >= window ? last - window + 1 : 0;
    float *r = s + (size_t)blockIdx.x * T;
    float mx = -INFINITY;
    for (int j = first + threadIdx.x; j <= last; j += blockDim.x) mx = fmaxf(mx, r[j]);
    mx = block_reduce(mx, fm, max_op());
    double sum = 0;
    for (int j = first + threadIdx.x; j <= last; j += blockDim.x) { r[j] = expf(r[j] - mx); sum += r[j]; }
    float inv = (float)(1.0 / block_reduce(sum, ds, sum_op()));
    for (int j = threadIdx.x; j < T; j += blockDim.x) r[j] = j >= first && j <= last ? r[j] * inv : 0.0f;
}

// K and V of n tokens into a layer's cache at the first position (n * kvd floats each).
__global__ void k_kv_store(float *kc, float *vc, const float *k, const float *v, size_t nk, size_t kvd, int pos0, const int *dpos)
{
    pdl_wait();
    pdl_go();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x, off = (size_t)first_pos(pos0, dpos) * kvd;
    if (i < nk) { kc[off + i] = k[i]; vc[off + i] = v[i]; }
}


// V [n][kvd] -> V^T [kvd][n] (the attention format quantises V along the token axis)
__global__ void k_transpose(const float *v, float *vt, int n, int kvd)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)n * kvd) vt[(i % kvd) * n + i / kvd] = v[i];
}

// The MLP's activation, as forward.c: SiLU(gate) * up, ReLU or GELU (tanh form) of up.
__global__ void k_act(float *u, const float *g, size_t n, int act)
{
    pdl_wait();
    pdl_go();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    u[i] = mlp_act(act, u[i], act == ACT_SILU_GATED ? g[i] : 0.0f);
}

__global__ void k_copy(float *y, const float *x, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i];
}

__global__ void k_add(float *x, const float *h, size_t n)
{
    pdl_wait();
    pdl_go();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += h[i];
}

// log p(ids[t+1]) from the logits of row t, as log_softmax_at computes it.
__global__ void k_logprob(const float *lg, const int *ids, double *lp, int V)
{
    __shared__ float fm[256];
    __shared__ double ds[256];
    int t = blockIdx.x;
    const float *row = lg + (size_t)t * V;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, row[i]);
    mx = block_reduce(mx, fm, max_op());
    double se = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) se += (double)expf(row[i] - mx);
    se = block_reduce(se, ds, sum_op());
    if (threadIdx.x == 0) lp[t] = (double)row[ids[t + 1]] - mx - log(se);
}


__global__ void k_check(const float *x, size_t n, unsigned long long *bad)
{
    pdl_wait();
    pdl_go();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) note_bad(bad, i, x[i]);
}

// k_check of h, then x += h (a residual connection)
__global__ void k_add_check(float *x, const float *h, size_t n, unsigned long long *bad)
{
    pdl_wait();
    pdl_go();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = h[i];
    note_bad(bad, i, v);
    x[i] += v;
}


// x (float32) = hi + mid + lo, three bf16 numbers (exactly, above 2^-126): hi and
// mid truncate, so each remainder keeps at most 16 then 8 significant bits. Three
// bf16 GEMMs (float32 sums) then give float32 activations against bf16 weights.
__global__ void k_split3(const float *x, __nv_bfloat16 *y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i], hi = __uint_as_float(__float_as_uint(v) & 0xffff0000u), r = v - hi;
    float mid = __uint_as_float(__float_as_uint(r) & 0xffff0000u);
    y[i] = __float2bfloat16_rn(r - mid);               // lo: the first product summed
    y[n + i] = __ushort_as_bfloat16(f32_top_bf16(mid));
    y[2 * n + i] = __ushort_as_bfloat16(f32_top_bf16(hi));
}

// y[t][row] = W[row] . x[t] for N tokens: bf16 weights widened in registers,
// float32 activations and sums (as cpu's pmat_mv_float16). KS warps a row, each
// over a slice of its columns with U = 4 16-byte loads in flight per lane, the
// slices' sums added in order; rows of a multiple of 8 weights. Up to three
// matrices of one input in one launch (q, k, v; gate, up): rows [0, o[0]) of
// W[0], then W[1]'s, then W[2]'s. Measured on the H200 (bench/gpu_decode_ops.c),
// one warp a row: 60-68% of copy on a 7B layer's q/k/v, o and down matrices
// alone, 87% on gate and up together, 92% on the 32000-row head (U = 8: no
// faster): a launch whose rows fill one wave pays its ramp and tail in full, so
// fewer rows get more warps each (gemv_ks).
struct gemv3 { const __nv_bfloat16 *w[3]; float *y[3]; int o[3]; };
template <int N, int KS>
__global__ void k_gemv_bf16(gemv3 m, const float *x, int in)
{
    constexpr int U = 4;
    __shared__ float red[8][N];
    const int wp = threadIdx.x / 32, lane = threadIdx.x % 32, part = wp % KS;
    int row = blockIdx.x * (blockDim.x / 32 / KS) + wp / KS;
    const int seg = row < m.o[0] ? 0 : row < m.o[0] + m.o[1] ? 1 : row < m.o[0] + m.o[1] + m.o[2] ? 2 : 3;
    if (KS == 1 && seg == 3) return;  // (with KS > 1 every warp reaches the barrier below)
    row -= seg == 0 ? 0 : seg == 1 ? m.o[0] : m.o[0] + m.o[1];  // constant indices: m stays in registers
    const int out = seg == 0 ? m.o[0] : seg == 1 ? m.o[1] : m.o[2];
    float *y = seg == 0 ? m.y[0] : seg == 1 ? m.y[1] : m.y[2];
    const uint4 *w = (const uint4 *)((seg == 0 ? m.w[0] : seg == 1 ? m.w[1] : seg == 2 ? m.w[2] : m.w[0]) + (size_t)(seg == 3 ? 0 : row) * in);
    const int n8 = in / 8, i1 = seg == 3 ? 0 : (part + 1) * n8 / KS;
    float acc[N];
    for (int t = 0; t < N; t++) acc[t] = 0.0f;
    const int start = part * n8 / KS + lane;
    uint4 v[U];
    auto fetch = [&](int i0) {
#pragma unroll
        for (int u = 0; u < U; u++) v[u] = i0 + 32 * u < i1 ? __ldg(w + i0 + 32 * u) : make_uint4(0, 0, 0, 0);
    };
    fetch(start);  // weights need no earlier kernel: in flight while the one before finishes (launch.cuh)
    pdl_wait();
    pdl_go();
    for (int i0 = start; i0 < i1; i0 += 32 * U) {
        if (i0 != start) fetch(i0);
#pragma unroll
        for (int u = 0; u < U; u++) {
            int i = i0 + 32 * u;
            if (i >= i1) break;
            uint32_t wd[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
            float wf[8];
#pragma unroll
            for (int k = 0; k < 4; k++) { wf[2 * k] = __uint_as_float(wd[k] << 16); wf[2 * k + 1] = __uint_as_float(wd[k] & 0xffff0000u); }
#pragma unroll
            for (int t = 0; t < N; t++) {
                const float4 *xv = (const float4 *)(x + (size_t)t * in) + 2 * i;
                float4 a = xv[0], b = xv[1];
                acc[t] += wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w + wf[4] * b.x + wf[5] * b.y + wf[6] * b.z + wf[7] * b.w;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < N; t++) {
        float v = acc[t];
        for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (KS == 1) {
            if (lane == 0) y[(size_t)t * out + row] = v;
        } else if (lane == 0) red[wp][t] = v;
    }
    if (KS == 1) return;
    __syncthreads();
    if (part == 0 && lane == 0 && seg != 3)
        for (int t = 0; t < N; t++) {
            float v = red[wp][t];
            for (int p = 1; p < KS; p++) v += red[wp + p][t];
            y[(size_t)t * out + row] = v;
        }
}

// Warps a row: about 16384 warps in all (two waves and more of 8-warp blocks
// on 132 SMs), at least 64 columns of 8 weights each.
static int gemv_ks(int rows, int in)
{
    int ks = rows >= 16384 ? 1 : rows >= 8192 ? 2 : 4;
    while (ks > 1 && in / 8 / ks < 64) ks /= 2;
    return ks;
}

static void gemv_bf16_multi(bool pdl, const gemv3 &m, const float *x, int n, int in)
{
    const int rows = m.o[0] + m.o[1] + m.o[2], ks = n == 1 ? gemv_ks(rows, in) : 1;
    const unsigned blocks = (unsigned)((rows + 8 / ks - 1) / (8 / ks));
    switch (n * 10 + ks) {
    case 11: launch_k(pdl, k_gemv_bf16<1, 1>, blocks, 256, m, x, in); break;
    case 12: launch_k(pdl, k_gemv_bf16<1, 2>, blocks, 256, m, x, in); break;
    case 14: launch_k(pdl, k_gemv_bf16<1, 4>, blocks, 256, m, x, in); break;
    case 21: launch_k(pdl, k_gemv_bf16<2, 1>, blocks, 256, m, x, in); break;
    case 31: launch_k(pdl, k_gemv_bf16<3, 1>, blocks, 256, m, x, in); break;
    case 41: launch_k(pdl, k_gemv_bf16<4, 1>, blocks, 256, m, x, in); break;
    case 51: launch_k(pdl, k_gemv_bf16<5, 1>, blocks, 256, m, x, in); break;
    case 61: launch_k(pdl, k_gemv_bf16<6, 1>, blocks, 256, m, x, in); break;
    case 71: launch_k(pdl, k_gemv_bf16<7, 1>, blocks, 256, m, x, in); break;
    default: launch_k(pdl, k_gemv_bf16<8, 1>, blocks, 256, m, x, in); break;
    }
}

static void gemv_bf16(bool pdl, const __nv_bfloat16 *W, const float *x, float *y, int n, int in, int out)
{
    gemv3 m = {{W, NULL, NULL}, {y, NULL, NULL}, {out, 0, 0}};
    gemv_bf16_multi(pdl, m, x, n, in);
}

// ---- the backend ----
// A linear on the device: float32 weights (w), bf16 weights (w16), or packed codes
// (pw): through the packed GEMV for a few tokens, else unpacked into the shared
// bf16 buffer before each product. split: bf16 weights, activations that are not
// bf16 numbers (float32, or a format with float32 scales): three bf16 products.
// pw: packed codes (the GEMV decodes them); f32: their values are not bf16 numbers, so the
// prefill unpacks them to float32 (wf) instead of bf16 (wb)
// la, lb: LoRC's factors (--ptq lorc), y += (q(x) lb^T) la^T, rank of them (0: none)
struct glin { float *w, *b, *la, *lb; __nv_bfloat16 *w16; bq_cuda_w *pw; int in, out, split, f32, rank; const bq_format *aq; };
struct gnorm { float *w, *b; };
// tokens up to which a bf16 linear takes the GEMV (packed ones: bq_cuda_w_gemv_max); ATT_FEW:
// queries up to which attention skips the GEMMs
enum { GEMV16_MAX = 8, ATT_FEW = 8 };

struct cuda_be {
    be base;
    int dev;               // the CUDA device ordinal
    void *blas, *blas_ws;  // its cuBLAS handle and workspace
    float *emb, *pos;      // pos: learned positions (NULL with rotary ones)
    glin *lin;             // [layers][7] then head, proj_in, proj_out
    gnorm *norms;          // [layers][4] then the final one
    float *kc, *vc;        // the KV cache [layers][T][kv_dim]
    float *kq, *vt;        // attention quantisation: K copy [T][kv_dim], V^T [kv_dim][T]
    float *s;              // attention scores, s_floats of them
    size_t s_floats;
    float *xq;             // a quantised copy of a linear's input, xq_floats
    size_t xq_floats;
    __nv_bfloat16 *xb;     // bf16 activations for the bf16 path (xq_floats)
    __nv_bfloat16 *wb;     // one packed linear unpacked (the largest)
    float *wf;             // the same in float32, for packed linears with f32 set
    float *lt;             // LoRC's middle product [T][largest rank]
    struct { const bq_rot *h; float *B, *sign; } rot[2];  // the model's online rotations (rot_down, rot_qk) on the device
    int *ids;              // [T], then the position of a recorded step (dpos)
    int *dpos;
    double *lp;            // [T]
    unsigned long long *bad;  // per check site: first non-finite (2 * index + isnan), all ones if none
    int nsites, checked;
    int *site_d, *site_pos;   // host: each site's row length and first token
    size_t bytes;             // weights and buffers on the device
    // one-token steps as a CUDA graph (cuda_replay): the recording, its key, and
    // whether a capture is running (the kernels then read the position from dpos)
    cudaGraphExec_t graph;
    unsigned graph_key;
    int recording, graph_checks, recordable;
    int pdl;  // decoding's kernels launched programmatically (launch.cuh); BQ_CUDA_PDL=0 turns it off for A/B runs
    // BQ_CUDA_FUSE: 1 rope_store / add_check as one kernel each; 2 (default) also norm_linears
    // (a residual connection with the norm after it, and with BQ_CUDA_PIECES=1 the int8 GEMV's
    // pieces from the norm's and act_linear's kernels); 0 the separate kernels (A/B runs)
    int fuse;
    int pieces;   // at level 2, the int8 GEMV's pieces from the norm and act kernels (BQ_CUDA_PIECES=1; default 0: the GEMV's own split)
    int attn;     // attention of few queries (BQ_CUDA_ATTN): few (k_attn_few), vec (k_attn_vec where it takes the head), deep (default: vec, 16 keys a lane in flight)
    // calibration's sums per linear slot (cuda_stats_add), and the inputs widened for X^T X
    struct gstat { double *msq, *amax, *gram; int in; } *stats;
    double *xd;
    size_t xd_cap;
};

static unsigned nblk(size_t n) { return (unsigned)((n + 255) / 256); }
static cuda_be *G(be *b) { return (cuda_be *)b; }
static const int *dpos_of(const cuda_be *g) { return g->recording ? g->dpos : NULL; }
static const bq_config *cfg(const be *b) { return &b->m->c; }
static glin *glin_at(cuda_be *g, int layer, lin_role r)
{
    return layer < 0 ? &g->lin[(size_t)cfg(&g->base)->layers * 7 + (r - R_HEAD)] : &g->lin[(size_t)layer * 7 + r];
}

static bq_status up_floats(float **d, const float *h, size_t n, size_t *bytes)
{
    bq_status st = bq_cuda_malloc((void **)d, n * 4);
    if (!st) st = bq_cuda_upload(*d, h, n * 4);
    *bytes += n * 4;
    return st;
}

// Whether a linear held as 16-bit floats on the CPU holds bf16 (its stream is
// then the row-major bf16 matrix, after the format's header).
static const uint16_t *held_bf16(const linear *l)
{
    if (!l->pw || !pmat_is_float16(l->pw) || l->pw->kind != PM_STREAM || l->pw->f->el.ebits != 8) return NULL;
    return (const uint16_t *)(l->pw->data + pack_header_bytes(l->pw->f));
}

// Weights go up packed where the CPU holds them packed and the GPU's GEMV takes the
// format; as bf16 where their values are bf16 numbers
// (a bf16 checkpoint goes up as it is, never widened on the host); else as float32.
static bq_status up_weights(glin *g, const linear *l, size_t *bytes);

// The weights as below, then LoRC's factors as they are (float32)
static bq_status up_linear(glin *g, const linear *l, size_t *bytes)
{
    bq_status st = up_weights(g, l, bytes);
    if (st || !l->lr_rank) return st;
    g->rank = l->lr_rank;
    st = up_floats(&g->la, l->lr_a, (size_t)l->out * l->lr_rank, bytes);
    if (!st) st = up_floats(&g->lb, l->lr_b, (size_t)l->lr_rank * l->in, bytes);
    return st ? bq_fail(st, "%s: LoRC factors: %s", l->name, bq_last_error()) : BQ_OK;
}

static bq_status up_weights(glin *g, const linear *l, size_t *bytes)
{
    g->in = l->in;
    g->out = l->out;
    g->aq = l->aq;
    size_t n = (size_t)l->in * l->out;
    const uint16_t *h16 = held_bf16(l);
    const float *w = l->w;
    float *tmp = NULL;
    // packed codes go up as they are wherever the GPU's GEMV decodes their format (no
    // decoding on the host). The prefill unpacks them on the device: to bf16 where their
    // values are bf16 numbers by construction (split: activations that are not bf16
    // numbers), else (NVFP4's float32 tensor scale, fp16 block scales) to float32
    if (l->pw && !h16 && bq_cuda_w_upload(l->pw, &g->pw) == BQ_OK) {
        *bytes += bq_cuda_w_bytes(g->pw);
        g->f32 = !format_values_bf16(l->pw->f);
        g->split = !g->f32 && !(l->aq && format_values_bf16(l->aq));
        bq_status st = l->b ? up_floats(&g->b, l->b, (size_t)l->out, bytes) : BQ_OK;
        return st ? bq_fail(st, "%s: %s", l->name, bq_last_error()) : BQ_OK;
    }
    if (!w && !h16) {  // packed on the CPU: decode once (to check, or for upload)
        if (!(tmp = (float *)malloc(n * 4))) return bq_fail(BQ_ERR_NOMEM, "out of memory decoding %s", l->name);
        pmat_decode(l->pw, 0, l->out, tmp);
        w = tmp;
    }
    bq_status st = BQ_OK;
    int a16 = l->aq && format_values_bf16(l->aq), w16 = h16 || all_bf16(w, n);
    g->split = w16 && !a16;
    if (w16) {  // the top halves of the float32 bits are the bf16 values
        uint16_t *h = h16 ? NULL : (uint16_t *)malloc(n * 2);
        if (!h16 && !h) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        for (size_t i = 0; h && i < n; i++) h[i] = f32_top_bf16(w[i]);
        if (!st) st = bq_cuda_malloc((void **)&g->w16, n * 2);
        if (!st) st = bq_cuda_upload(g->w16, h16 ? h16 : h, n * 2);
        *bytes += n * 2;
        free(h);
    } else st = up_floats(&g->w, w, n, bytes);
    free(tmp);
    if (!st && l->b) st = up_floats(&g->b, l->b, (size_t)l->out, bytes);
    if (st) return bq_fail(st, "%s: %s", l->name, bq_last_error());
    return st;
}

static void glin_free(glin *l)
{
    bq_cuda_free(l->la);
    bq_cuda_free(l->lb);
    bq_cuda_free(l->w);
    bq_cuda_free(l->b);
    bq_cuda_free(l->w16);
    bq_cuda_w_free(l->pw);
}

static void cuda_drop_recording(be *b);

static bq_status cuda_bind(be *b);

static void cuda_destroy(be *b)
{
    cuda_be *g = G(b);
    cuda_bind(b);
    const bq_config *c = cfg(b);
    size_t nl = (size_t)c->layers * 7 + 3, nn = (size_t)c->layers * 4 + 1;
    for (size_t i = 0; g->lin && i < nl; i++) glin_free(&g->lin[i]);
    for (size_t i = 0; g->norms && i < nn; i++) { bq_cuda_free(g->norms[i].w); bq_cuda_free(g->norms[i].b); }
    free(g->lin);
    free(g->norms);
    for (size_t i = 0; g->stats && i < be_stats_slots(c); i++) {
        bq_cuda_free(g->stats[i].msq); bq_cuda_free(g->stats[i].amax); bq_cuda_free(g->stats[i].gram);
    }
    free(g->stats);
    bq_cuda_free(g->xd);
    cuda_drop_recording(b);
    if (g->graph) cudaGraphExecDestroy(g->graph);
    void *p[] = {g->emb, g->pos, g->kc, g->vc, g->kq, g->vt, g->s, g->xq, g->xb, g->wb, g->wf, g->lt, g->ids, g->lp, g->bad, g->blas_ws,
                 g->rot[0].B, g->rot[0].sign, g->rot[1].B, g->rot[1].sign};
    for (void *x : p) bq_cuda_free(x);
    if (g->blas) g_blas.destroy(g->blas);
    free(g->site_d);
    free(g->site_pos);
    free(g);
}

static void *cuda_alloc(be *b, size_t n)
{
    void *p;
    if (bq_cuda_malloc(&p, n)) return NULL;
    G(b)->bytes += n;
    return p;
}
static void cuda_release(be *b, void *p) { (void)b; bq_cuda_free(p); }

static bq_status launched(const char *what)
{
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? BQ_OK : bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine (%s): %s", what, cudaGetErrorString(e));
}

static bq_status cuda_embed(be *b, const int32_t *ids, int n, float *e)
{
    cuda_be *g = G(b);
    bq_status st = g->recording ? BQ_OK : bq_cuda_upload(g->ids, ids, (size_t)n * 4);  // recording: cuda_replay did
    if (st) return st;
    k_embed<<<n, 256>>>(g->emb, g->ids, e, cfg(b)->embed_dim);
    return launched("embed");
}

static bq_status cuda_add_pos(be *b, float *x, int n, int pos0)
{
    const bq_config *c = cfg(b);
    size_t nH = (size_t)n * c->hidden;
    launch_k(G(b)->pdl, k_add_pos, nblk(nH), 256, x, G(b)->pos, nH, c->hidden, c->pos_offset, pos0, dpos_of(G(b)));
    return launched("positions");
}

// y[n][out] += b (a linear's bias)
static void add_bias(const cuda_be *g, float *y, const float *b, int n, int out)
{
    launch_k(g->pdl, k_bias, nblk((size_t)n * out), 256, y, b, (size_t)n * out, out);
}

// y[n, out] = q(x[n, in]) W^T + b; column-major for cuBLAS: Y (out x n) = W^T (out x in) . X (in x n)
static bq_status cuda_linear(be *b, int layer, lin_role r, const float *x, float *y, int n)
{
    cuda_be *g = G(b);
    const glin *l = glin_at(g, layer, r);
    bq_status st;
    if (l->aq) {
        if ((st = bq_cuda_qdq(l->aq, x, g->xq, (size_t)n, (size_t)l->in, &b->m->qopts))) return st;
        x = g->xq;
    }
    const float one = 1.0f, zero = 0.0f;
    if (l->pw && n <= bq_cuda_w_gemv_max(l->pw)) {  // decoding (and short prompts): the packed codes straight from memory
        if ((st = bq_cuda_gemv(l->pw, x, n, y))) return st;
    } else if (l->w16 && n <= GEMV16_MAX && l->in % 8 == 0) {
        gemv_bf16(g->pdl, l->w16, x, y, n, l->in, l->out);
    } else if (l->w16 || (l->pw && !l->f32)) {  // bf16 x bf16 -> float32 on the tensor cores
        size_t nx = (size_t)n * l->in;
        int parts = l->split ? 3 : 1;  // split: x = lo + mid + hi, summed in that order
        if (l->split) k_split3<<<nblk(nx), 256>>>(x, g->xb, nx);
        else k_top_half<<<nblk(nx), 256>>>(x, g->xb, nx);  // x holds bf16 values (quantised above)
        if (l->pw && (st = bq_cuda_w_to_bf16(l->pw, g->wb))) return st;
        for (int p = 0; p < parts; p++)
            if (g_blas.gemmex((cublasHandle_t)g->blas, CUBLAS_OP_T, CUBLAS_OP_N, l->out, n, l->in, &one, l->pw ? g->wb : l->w16,
                         CUDA_R_16BF, l->in, g->xb + (size_t)p * nx, CUDA_R_16BF, l->in, p ? &one : &zero, y, CUDA_R_32F, l->out,
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS)
                return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cublasGemmEx (bf16) failed");
    } else {
        if (l->pw && (st = bq_cuda_w_to_f32(l->pw, g->wf))) return st;  // f32: unpacked exactly
        if (g_blas.sgemm(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, l->out, n, l->in, &one, l->pw ? g->wf : l->w, l->in, x, l->in, &zero, y,
                    l->out) != 0)
            return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cublasSgemm failed");
    }
    // LoRC, as the CPU: t [n][rank] = q(x) lb^T, then y += t la^T, before the bias
    if (l->rank && (g_blas.sgemm(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, l->rank, n, l->in, &one, l->lb, l->in, x, l->in, &zero,
                                 g->lt, l->rank) != 0 ||
                    g_blas.sgemm(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, l->out, n, l->rank, &one, l->la, l->rank, g->lt, l->rank,
                                 &one, y, l->out) != 0))
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cublasSgemm (LoRC) failed");
    if (l->b) add_bias(g, y, l->b, n, l->out);
    return launched("linear");
}

// Linears of one input (q, k, v; gate, up) without an activation format or LoRC, for
// a few tokens, in one GEMV launch (one ramp and tail instead of three; each row summed
// as alone): bf16 weights, or packed ones of one layout; else one by one.
static bq_status cuda_linears(be *b, int layer, const lin_role *rs, int count, const float *x, float *const *ys, int n)
{
    cuda_be *g = G(b);
    const glin *ls[3] = {NULL, NULL, NULL};
    int fuse = count >= 1 && count <= 3 && n <= GEMV16_MAX, packed = count >= 2 && count <= 3;
    for (int i = 0; i < count && (fuse || packed); i++) {
        ls[i] = glin_at(g, layer, rs[i]);
        int plain = !ls[i]->aq && !ls[i]->rank && ls[i]->in == ls[0]->in;
        fuse = fuse && plain && ls[i]->w16 && ls[i]->in % 8 == 0;
        packed = packed && plain && ls[i]->pw && bq_cuda_w_fusable(ls[0]->pw, ls[i]->pw) && n <= bq_cuda_w_gemv_max(ls[i]->pw);
    }
    if (packed) {
        const bq_cuda_w *ws[3] = {NULL, NULL, NULL};
        for (int i = 0; i < count; i++) ws[i] = ls[i]->pw;
        bq_status st = bq_cuda_gemv_multi(ws, count, x, n, ys);
        for (int i = 0; i < count && !st; i++)
            if (ls[i]->b) add_bias(g, ys[i], ls[i]->b, n, ls[i]->out);
        return st ? st : launched("linears");
    }
    if (!fuse) {
        bq_status st = BQ_OK;
        for (int i = 0; i < count && !st; i++) st = cuda_linear(b, layer, rs[i], x, ys[i], n);
        return st;
    }
    gemv3 m = {{NULL, NULL, NULL}, {NULL, NULL, NULL}, {0, 0, 0}};
    for (int i = 0; i < count; i++) { m.w[i] = ls[i]->w16; m.y[i] = ys[i]; m.o[i] = ls[i]->out; }
    gemv_bf16_multi(g->pdl, m, x, n, ls[0]->in);
    for (int i = 0; i < count; i++)
        if (ls[i]->b) add_bias(g, ys[i], ls[i]->b, n, ls[i]->out);
    return launched("linears");
}

static const gnorm *gnorm_at(cuda_be *g, int layer, norm_role r)
{
    return &g->norms[layer < 0 ? (size_t)cfg(&g->base)->layers * 4 : (size_t)layer * 4 + r];
}
static int is_layernorm(const bq_config *c, norm_role r) { return c->norm == NORM_LAYER && r != N_Q && r != N_K; }

// k_norm_v of V (norm_v_shape), after the residual x += res where res is not NULL
static bq_status norm_v(bool pdl, int v, int threads, float *x, const float *res, unsigned long long *bad, const gnorm *p, float *y, int rows,
                        int d, float eps, int layernorm)
{
    if (v == 1) launch_k(pdl, k_norm_v<1>, rows, threads, x, res, bad, p->w, p->b, y, d, eps, layernorm);
    else if (v == 2) launch_k(pdl, k_norm_v<2>, rows, threads, x, res, bad, p->w, p->b, y, d, eps, layernorm);
    else launch_k(pdl, k_norm_v<4>, rows, threads, x, res, bad, p->w, p->b, y, d, eps, layernorm);
    return launched("norm");
}

static bq_status cuda_norm(be *b, int layer, norm_role r, const float *x, float *y, int rows, int d)
{
    const bq_config *c = cfg(b);
    const gnorm *p = gnorm_at(G(b), layer, r);
    int layernorm = is_layernorm(c, r);
    int threads, v = norm_v_shape(d, x, y, p->w, p->b, &threads);
    if (v) return norm_v(G(b)->pdl, v, threads, (float *)x, nullptr, nullptr, p, y, rows, d, c->norm_eps, layernorm);
    launch_k(G(b)->pdl, k_norm, rows, 256, x, p->w, p->b, y, d, c->norm_eps, layernorm);
    return launched("norm");
}

static bq_status cuda_rope(be *b, float *x, int n, int heads, int pos0)
{
    const bq_config *c = cfg(b);
    int d = c->head_dim;
    launch_k(G(b)->pdl, k_rope, nblk((size_t)n * heads * (d / 2)), 256, x, n, heads, d, c->rope_theta, pos0, dpos_of(G(b)));
    return launched("rope");
}

static bq_status cuda_qdq(be *b, const bq_format *f, const float *x, float *y, size_t rows, size_t cols)
{
    return bq_cuda_qdq(f, x, y, rows, cols, &b->m->qopts);
}

// Where a layer's K (and V) cache starts: max_tokens rows of kv_heads * head_dim floats a layer.
static size_t cache_off(const be *b, int layer)
{
    const bq_config *c = cfg(b);
    return (size_t)(layer - b->lo) * b->max_tokens * c->kv_heads * c->head_dim;
}

static bq_status cuda_kv_store(be *b, int layer, const float *k, const float *v, int n, int pos)
{
    cuda_be *g = G(b);
    const bq_config *c = cfg(b);
    size_t kvd = (size_t)c->kv_heads * c->head_dim, off = cache_off(b, layer), nk = (size_t)n * kvd;
    launch_k(g->pdl, k_kv_store, nblk(nk), 256, g->kc + off, g->vc + off, k, v, nk, kvd, pos, dpos_of(g));
    return launched("KV cache");
}

static bq_status cuda_rope_store(be *b, int layer, float *q, float *k, const float *v, int n, int pos)
{
    cuda_be *g = G(b);
    const bq_config *c = cfg(b);
    if (!g->fuse) {
        bq_status st = cuda_rope(b, q, n, c->heads, pos);
        if (!st) st = cuda_rope(b, k, n, c->kv_heads, pos);
        return st ? st : cuda_kv_store(b, layer, k, v, n, pos);
    }
    size_t off = cache_off(b, layer), threads = (size_t)n * (c->heads + c->kv_heads) * (c->head_dim / 2);
    launch_k(g->pdl, k_rope_store, nblk(threads), 256, q, k, v, g->kc + off, g->vc + off, n, c->heads, c->kv_heads, c->head_dim,
             c->rope_theta, pos, dpos_of(g));
    return launched("rope and KV cache");
}

static bq_status sgemm_batched(void *blas, bool ta, bool tb, int m, int n, int k, float alpha, const float *A, int lda, long long sa,
                               const float *B, int ldb, long long sb, float *C, int ldc, long long sc, int count)
{
    const float zero = 0.0f;
    if (g_blas.sgemm_batched(blas, ta, tb, m, n, k, &alpha, A, lda, sa, B, ldb, sb, &zero, C, ldc, sc, count) != 0)
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cublasSgemmStridedBatched failed");
    return BQ_OK;
}

// Causal attention of n queries at pos.. against the layer's cache [0, T), as
// cpu.c's attention: per head, scores = Q K^T / sqrt(d), softmax, P V; the
// attention format quantises Q and K along head_dim, V along the tokens and P
// along the keys. Heads h = kh * group + j share kv head kh, so for each j the kv
// heads go in batches that fit the scores buffer (column-major views of the
// row-major buffers: S^T = K Q^T, then O^T = V^T P^T).
static bq_status cuda_attention(be *b, int layer, float *q, float *a, int n, int pos)
{
    cuda_be *g = G(b);
    const bq_model *M = b->m;
    const bq_config *c = cfg(b);
    const int d = c->head_dim, kvh = c->kv_heads, G_ = c->heads / kvh, qd = c->heads * d, kvd = kvh * d, T = pos + n;
    size_t at = cache_off(b, layer);
    const float *K = g->kc + at, *V = g->vc + at;
    const bq_format *aq = M->attn_q;
    bq_status st = BQ_OK;
    if (!aq && n <= ATT_FEW && d <= 256)
        return bq_cuda_attend_few(bq_cuda_attend_vec_takes(d, q, K, V, a) ? g->attn : BQ_ATTN_FEW, g->pdl, q, K, V, a, g->s, b->max_tokens, n,
                                  c->heads, G_, d, kvd, 1.0f / sqrtf((float)d), pos, dpos_of(g), c->sliding_window);
    if (g->recording) return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: this attention cannot be recorded");
    if (aq) {
        if ((st = bq_cuda_qdq(aq, q, q, (size_t)n * c->heads, (size_t)d, &M->qopts)) ||
            (st = bq_cuda_qdq(aq, K, g->kq, (size_t)T * kvh, (size_t)d, &M->qopts)))
            return st;
        K = g->kq;
        k_transpose<<<nblk((size_t)T * kvd), 256>>>(V, g->vt, T, kvd);
        if ((st = bq_cuda_qdq(aq, g->vt, g->vt, (size_t)kvd, (size_t)T, &M->qopts))) return st;
    }
    const long long nT = (long long)n * T;
    size_t fit = g->s_floats / (size_t)nT;
    int chunk = fit < 1 ? 1 : fit > (size_t)kvh ? kvh : (int)fit;
    for (int j = 0; j < G_ && !st; j++)
        for (int k0 = 0; k0 < kvh && !st; k0 += chunk) {
            int cnt = kvh - k0 < chunk ? kvh - k0 : chunk;
            size_t h0 = (size_t)k0 * G_ + j;
            st = sgemm_batched(g->blas, true, false, T, n, d, 1.0f / sqrtf((float)d), K + (size_t)k0 * d, kvd, d, q + h0 * d, qd,
                               (long long)G_ * d, g->s, T, nT, cnt);
            if (st) break;
            k_softmax<<<(unsigned)(cnt * n), 256>>>(g->s, n, T, pos, c->sliding_window);
            if (aq && (st = bq_cuda_qdq(aq, g->s, g->s, (size_t)cnt * n, (size_t)T, &M->qopts))) break;
            st = aq ? sgemm_batched(g->blas, true, false, d, n, T, 1.0f, g->vt + (size_t)k0 * d * T, T, (long long)d * T, g->s, T, nT,
                                    a + h0 * d, qd, (long long)G_ * d, cnt)
                    : sgemm_batched(g->blas, false, false, d, n, T, 1.0f, V + (size_t)k0 * d, kvd, d, g->s, T, nT, a + h0 * d, qd,
                                    (long long)G_ * d, cnt);
        }
    return st ? st : launched("attention");
}

static bq_status cuda_act(be *b, float *u, const float *gt, size_t n)
{
    launch_k(G(b)->pdl, k_act, nblk(n), 256, u, gt, n, cfg(b)->act);
    return launched("activation");
}

static bq_status cuda_add(be *b, float *x, const float *y, size_t n)
{
    launch_k(G(b)->pdl, k_add, nblk(n), 256, x, y, n);
    return launched("add");
}

// Checks are queued; be_finish reads them all at once (one copy per forward pass).
// The flag of a check site, noted for be_finish's message.
static unsigned long long *check_flag(cuda_be *g, int d, int layer, check_site s, int pos)
{
    int site = s == CHK_LOGITS ? 2 * g->base.m->c.layers : 2 * layer + (int)s;
    g->site_d[site] = d;
    g->site_pos[site] = pos;
    g->checked = 1;
    return g->bad + site;
}

static bq_status cuda_check(be *b, const float *x, int rows, int d, int layer, check_site s, int pos)
{
    cuda_be *g = G(b);
    size_t n = (size_t)rows * d;
    launch_k(g->pdl, k_check, nblk(n), 256, x, n, check_flag(g, d, layer, s, pos));
    return launched("check");
}

static bq_status cuda_add_check(be *b, float *x, const float *h, int rows, int d, int layer, check_site s, int pos)
{
    cuda_be *g = G(b);
    size_t n = (size_t)rows * d;
    if (!g->fuse) {
        bq_status st = cuda_check(b, h, rows, d, layer, s, pos);
        return st ? st : cuda_add(b, x, h, n);
    }
    launch_k(g->pdl, k_add_check, nblk(n), 256, x, h, n, check_flag(g, d, layer, s, pos));
    return launched("residual");
}

// ---- the int8 GEMV's pieces made by the kernel before it ----
// Linears rs[0..count) of a layer as one packed GEMV launch of int8-layout weights that
// take pieces for n tokens (one input width, no activation format or LoRC): their
// weights into ws. Only with BQ_CUDA_FUSE=2 and BQ_CUDA_PIECES=1 (else the GEMV splits
// its input).
static bool one_int8_launch(cuda_be *g, int layer, const lin_role *rs, int count, int n, int in, const bq_cuda_w **ws)
{
    if (g->fuse < 2 || !g->pieces || count < 1 || count > 3) return false;
    for (int i = 0; i < count; i++) {
        const glin *l = glin_at(g, layer, rs[i]);
        if (l->aq || l->rank || l->in != in || !l->pw || !bq_cuda_w_takes_pieces(l->pw, n) || (i && !bq_cuda_w_fusable(ws[0], l->pw)))
            return false;
        ws[i] = l->pw;
    }
    return true;
}

// The GEMV on pieces made already, then the biases
static bq_status ready_linears(cuda_be *g, int layer, const lin_role *rs, int count, const bq_cuda_w *const *ws, const float *x,
                               float *const *ys, int n)
{
    bq_status st = bq_cuda_gemv_multi_ready(ws, count, x, n, ys);
    for (int i = 0; i < count && !st; i++) {
        const glin *l = glin_at(g, layer, rs[i]);
        if (l->b) add_bias(g, ys[i], l->b, n, l->out);
    }
    return st ? st : launched("linears");
}

// The residual connection, the norm, then the linears (BQ_CUDA_FUSE=2): the residual
// and the norm one kernel (k_norm_v), which also makes the GEMV's pieces where the
// linears take them (norm_i8); else the separate ops.
static bq_status cuda_norm_linears(be *b, int layer, norm_role nr, float *x, const be_residual *res, int pos, float *h, int d,
                                   const lin_role *rs, int count, float *const *ys, int n)
{
    cuda_be *g = G(b);
    const bq_config *c = cfg(b);
    const gnorm *p = gnorm_at(g, layer, nr);
    const float *rh = res ? res->h : nullptr;
    const int ln = is_layernorm(c, nr);
    const bq_cuda_w *ws[3];
    int threads, v = g->fuse >= 2 && !((uintptr_t)rh & 15) ? norm_v_shape(d, x, h, p->w, p->b, &threads) : 0;
    unsigned long long *bad = v && res && res->check ? check_flag(g, d, res->layer, res->site, pos) : nullptr;
    bq_status st = BQ_OK;
    if (v && v <= 2 && one_int8_launch(g, layer, rs, count, n, d, ws)) {  // (norm_i8: rows up to 8192)
        st = bq_cuda_norm_pieces(ws[0], x, rh, bad, p->w, p->b, h, n, c->norm_eps, ln);
        return st ? st : ready_linears(g, layer, rs, count, ws, h, ys, n);
    }
    if (v) {
        st = norm_v(g->pdl, v, threads, x, rh, bad, p, h, n, d, c->norm_eps, ln);
    } else {
        if (res) st = res->check ? cuda_add_check(b, x, rh, n, d, res->layer, res->site, pos) : cuda_add(b, x, rh, (size_t)n * d);
        if (!st) st = cuda_norm(b, layer, nr, x, h, n, d);
    }
    return st ? st : cuda_linears(b, layer, rs, count, h, ys, n);
}

// act, then linear r (down_proj), likewise
static bq_status cuda_act_linear(be *b, int layer, lin_role r, float *u, const float *gt, float *y, int n)
{
    cuda_be *g = G(b);
    const bq_config *c = cfg(b);
    const bq_cuda_w *ws[1];
    if (!one_int8_launch(g, layer, &r, 1, n, c->inter, ws)) {
        bq_status st = cuda_act(b, u, gt, (size_t)n * c->inter);
        return st ? st : cuda_linear(b, layer, r, u, y, n);
    }
    bq_status st = bq_cuda_act_pieces(ws[0], u, gt, n, c->act);
    return st ? st : ready_linears(g, layer, &r, 1, ws, u, &y, n);
}

// ---- one-token steps as a CUDA graph ----
// Decoding launches ~20 kernels a layer for one token; for a small model the
// launches set the pace (the bundled model: 1.5-2x with graphs), for a 7B one
// the GEMVs do (1.12x; bench/RESULTS.md). The first one-token step after
// the buffers were (re)made is captured as it runs (the kernels read the token
// and the position from device memory: cuda_embed's upload, dpos) and replayed
// for every later step with one launch. key: the driver's buffers and options
// (a new key records again). Steps whose ops read back to the host (per-tensor
// activation scales), quantise attention operands or have heads over 256 are
// not recorded: they run as before (can_record, once at setup: g->recordable).
static bool can_record(const cuda_be *g)
{
    const bq_model *m = g->base.m;
    const bq_config *c = &m->c;
    if (m->attn_q || c->head_dim > 256 || (m->kv_q && bq_cuda_qdq_reads_back(m->kv_q))) return false;
    for (int l = -1; l < c->layers; l++)
        for (int r = l < 0 ? R_HEAD : R_Q; r < (l < 0 ? R_COUNT : R_HEAD); r++) {
            const glin *gl = glin_at((cuda_be *)g, l, (lin_role)r);
            if (gl->aq && bq_cuda_qdq_reads_back(gl->aq)) return false;
        }
    return true;
}

static bq_status cuda_replay(be *b, int32_t id, int pos, unsigned key, int *replayed)
{
    cuda_be *g = G(b);
    *replayed = 0;
    if (!g->recordable) return BQ_OK;
    int v[1] = {id};
    if (cudaMemcpyAsync(g->ids, v, 4, cudaMemcpyHostToDevice, cudaStreamPerThread) != cudaSuccess ||
        cudaMemcpyAsync(g->dpos, &pos, 4, cudaMemcpyHostToDevice, cudaStreamPerThread) != cudaSuccess)
        return launched("step");
    if (g->graph && g->graph_key == key) {
        if (cudaGraphLaunch(g->graph, cudaStreamPerThread) != cudaSuccess) return launched("replaying a step");
        for (int i = 0; i < g->nsites; i++) g->site_pos[i] = pos;
        g->checked = g->graph_checks;
        *replayed = 1;
        return BQ_OK;
    }
    if (g->graph) { cudaGraphExecDestroy(g->graph); g->graph = NULL; }
    if (cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeRelaxed) != cudaSuccess)
        return launched("recording a step");
    g->recording = 1;
    g->graph_key = key;
    return BQ_OK;
}

// The end of a recording: the graph made and launched (it has not run yet).
static bq_status end_recording(cuda_be *g, bool keep)
{
    cudaGraph_t graph = NULL;
    g->recording = 0;
    cudaError_t e = cudaStreamEndCapture(cudaStreamPerThread, &graph);
    if (e == cudaSuccess && keep) e = cudaGraphInstantiate(&g->graph, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (e == cudaSuccess && keep) e = cudaGraphLaunch(g->graph, cudaStreamPerThread);
    if (e != cudaSuccess) {
        cudaGetLastError();
        if (g->graph) { cudaGraphExecDestroy(g->graph); g->graph = NULL; }
        return keep ? bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: recording a step: %s", cudaGetErrorString(e)) : BQ_OK;
    }
    g->graph_checks = g->checked;
    return BQ_OK;
}

static void cuda_drop_recording(be *b)
{
    if (G(b)->recording) end_recording(G(b), false);
}

static bq_status cuda_finish(be *b)
{
    cuda_be *g = G(b);
    bq_status st = g->recording ? end_recording(g, true) : BQ_OK;
    if (!st) st = launched("forward");
    if (st || !g->checked) return st;
    g->checked = 0;
    unsigned long long *h = (unsigned long long *)malloc((size_t)g->nsites * 8);
    if (!h) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    st = bq_cuda_download(h, g->bad, (size_t)g->nsites * 8);
    for (int i = 0; !st && i < g->nsites; i++)
        if (h[i] != ~0ull) {
            cudaMemset(g->bad, 0xff, (size_t)g->nsites * 8);
            int layer = i / 2;
            check_site s = i == g->nsites - 1 ? CHK_LOGITS : (check_site)(i % 2);
            st = be_nonfinite((int)(h[i] & 1), layer, s, g->site_pos[i] + (int)((h[i] >> 1) / (unsigned long long)g->site_d[i]));
        }
    free(h);
    return st;
}

static bq_status cuda_logits(be *b, const float *lg, int rows, float *out)
{
    return bq_cuda_download(out, lg, (size_t)rows * cfg(b)->vocab * 4);
}

static bq_status cuda_logprobs(be *b, const float *lg, const int32_t *ids, int n, double *lp)
{
    cuda_be *g = G(b);  // the first stage's embedding uploaded the ids; a later one's did not
    bq_status st = b->lo > 0 ? bq_cuda_upload(g->ids, ids, (size_t)n * 4) : BQ_OK;
    if (st) return st;
    k_logprob<<<n - 1, 256>>>(lg, g->ids, g->lp, cfg(b)->vocab);
    st = launched("log-probabilities");
    return st ? st : bq_cuda_download(lp, g->lp, (size_t)(n - 1) * 8);
}

static bq_status cuda_get(be *b, void *host, const void *src, size_t bytes) { (void)b; return bq_cuda_download(host, src, bytes); }
static bq_status cuda_put(be *b, void *dst, const void *host, size_t bytes) { (void)b; return bq_cuda_upload(dst, host, bytes); }
static bq_status cuda_bind(be *b)
{
    cudaError_t e = cudaSetDevice(G(b)->dev);
    return e == cudaSuccess ? BQ_OK : bq_fail(BQ_ERR_UNSUPPORTED, "CUDA device %d: %s", G(b)->dev, cudaGetErrorString(e));
}

static bq_status cuda_rotate(be *b, const bq_rot *r, float *x, int rows)
{
    cuda_be *g = G(b);
    int k = g->rot[0].h == r ? 0 : g->rot[1].h == r ? 1 : -1;
    if (k < 0) return bq_fail(BQ_ERR_ARG, "CUDA engine: an online rotation that was not uploaded");
    // through the linear's scratch (free between ops: a linear fills it from its input) and back
    const int tc = r->m < 1024 ? (r->m + 31) / 32 * 32 : 1024, tf = r->p < 1024 ? (r->p + 31) / 32 * 32 : 1024;
    k_rot_chunks<<<dim3((unsigned)rows, (unsigned)r->p), tc, (size_t)r->m * 4>>>(x, g->xq, g->rot[k].B, g->rot[k].sign, r->n, r->m);
    k_rot_fwht<<<dim3((unsigned)rows, (unsigned)r->m), tf, (size_t)r->p * 4>>>(g->xq, x, r->n, r->p, r->m,
                                                                                (float)(1.0 / sqrt((double)r->p)));
    return launched("online rotation");
}

// ---- calibration's statistics ----

// Thread i: channel i's tokens in order, as calib.c adds them on the host (no fused
// multiply-add, so the same float64 sums from the same inputs).
__global__ void k_chan_stats(const float *x, int n, int in, double *msq, double *amax)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= in) return;
    double acc = msq[i], mx = amax[i];
    for (int t = 0; t < n; t++) {
        double v = x[(size_t)t * in + i];
        acc = __dadd_rn(acc, __dmul_rn(v, v));
        mx = fabs(v) > mx ? fabs(v) : mx;
    }
    msq[i] = acc;
    amax[i] = mx;
}

__global__ void k_widen(const float *x, double *y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i];
}

static bq_status cuda_stats_add(be *b, int slot, const float *x, int n, int in, int gram)
{
    cuda_be *g = G(b);
    const size_t slots = be_stats_slots(cfg(b)), cnt = (size_t)n * in;
    if (slot < 0 || (size_t)slot >= slots) return bq_fail(BQ_ERR_ARG, "CUDA engine: calibration slot %d of %zu", slot, slots);
    if (!g->stats && !(g->stats = (cuda_be::gstat *)calloc(slots, sizeof *g->stats))) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    cuda_be::gstat *s = &g->stats[slot];
    bq_status st = BQ_OK;
    if (!s->msq) {
        s->in = in;
        if (!(st = bq_cuda_malloc((void **)&s->msq, (size_t)in * 8)) && !(st = bq_cuda_malloc((void **)&s->amax, (size_t)in * 8))) {
            cudaMemsetAsync(s->msq, 0, (size_t)in * 8, cudaStreamPerThread);
            cudaMemsetAsync(s->amax, 0, (size_t)in * 8, cudaStreamPerThread);
        }
        if (!st && gram && !(st = bq_cuda_malloc((void **)&s->gram, (size_t)in * in * 8)))
            cudaMemsetAsync(s->gram, 0, (size_t)in * in * 8, cudaStreamPerThread);
        if (st) return bq_fail(st, "calibration's statistics on the device: %s", bq_last_error());
    }
    if (s->in != in || (gram && !s->gram)) return bq_fail(BQ_ERR_ARG, "CUDA engine: calibration slot %d changed shape", slot);
    k_chan_stats<<<nblk((size_t)in), 256>>>(x, n, in, s->msq, s->amax);
    if (!gram) return launched("calibration statistics");
    if (cnt > g->xd_cap) {
        bq_cuda_free(g->xd);
        g->xd = NULL;
        g->xd_cap = 0;
        if ((st = bq_cuda_malloc((void **)&g->xd, cnt * 8))) return st;
        g->xd_cap = cnt;
    }
    k_widen<<<nblk(cnt), 256>>>(x, g->xd, cnt);
    // column-major, X^T is in x n: C = X^T X with its lower triangle, the row-major upper one
    // (stats_read mirrors it)
    const double one = 1.0;
    if (g_blas.dsyrk(g->blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, in, n, &one, g->xd, in, &one, s->gram, in) != 0)
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cublasDsyrk failed");
    return launched("calibration's Gram matrix");
}

// The lower triangle from the upper one (row-major), before the Gram matrix goes to the host.
__global__ void k_mirror(double *G, int n)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x, i = blockIdx.y;
    if (j < i) G[(size_t)i * n + j] = G[(size_t)j * n + i];
}

static bq_status cuda_stats_read(be *b, int slot, double *msq, double *amax, double *gram)
{
    cuda_be *g = G(b);
    cuda_be::gstat *s = g->stats ? &g->stats[slot] : NULL;
    if (!s || !s->msq) return bq_fail(BQ_ERR_ARG, "CUDA engine: calibration slot %d saw no input", slot);
    size_t in = (size_t)s->in;
    bq_status st = bq_cuda_download(msq, s->msq, in * 8);
    if (!st) st = bq_cuda_download(amax, s->amax, in * 8);
    if (!st && gram && s->gram) {
        k_mirror<<<dim3(nblk(in), (unsigned)in), 256>>>(s->gram, (int)in);
        if (!(st = launched("calibration's Gram matrix"))) st = bq_cuda_download(gram, s->gram, in * in * 8);
    }
    bq_cuda_free(s->msq); bq_cuda_free(s->amax); bq_cuda_free(s->gram);
    *s = cuda_be::gstat{};
    return st;
}

static const be_ops cuda_ops = {
    "cuda", 0, cuda_destroy, cuda_alloc, cuda_release, cuda_embed, cuda_add_pos, cuda_linear, cuda_norm, cuda_rope,
    cuda_qdq, cuda_kv_store, cuda_attention, cuda_act, cuda_add, cuda_check, cuda_logits, cuda_logprobs, cuda_finish,
    cuda_replay, cuda_drop_recording, cuda_get, cuda_put, cuda_bind, cuda_linears, cuda_rotate,
    cuda_stats_add, cuda_stats_read, cuda_rope_store, cuda_add_check, cuda_norm_linears, cuda_act_linear,
};

static bq_status up_norm(gnorm *d, const normp *p, size_t n, size_t *bytes)
{
    bq_status st = p->w ? up_floats(&d->w, p->w, n, bytes) : BQ_OK;
    if (!st && p->b) st = up_floats(&d->b, p->b, n, bytes);
    return st;
}

static bq_status cuda_setup(cuda_be *g)
{
    const bq_model *m = g->base.m;
    const bq_config *c = &m->c;
    const int T = g->base.max_tokens;
    size_t H = (size_t)c->hidden, E = (size_t)c->embed_dim, V = (size_t)c->vocab, *b = &g->bytes, Tn = (size_t)T;
    g->lin = (glin *)calloc((size_t)c->layers * 7 + 3, sizeof *g->lin);
    g->norms = (gnorm *)calloc((size_t)c->layers * 4 + 1, sizeof *g->norms);
    g->nsites = 2 * c->layers + 1;
    g->site_d = (int *)calloc((size_t)g->nsites, sizeof(int));
    g->site_pos = (int *)calloc((size_t)g->nsites, sizeof(int));
    if (!g->lin || !g->norms || !g->site_d || !g->site_pos) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    // a pipeline stage holds its layers, the first one the embedding, the last one the head
    const int lo = g->base.lo, hi = g->base.hi, first = lo == 0, last = hi == c->layers;
    bq_status st = BQ_OK;
    if (first && m->tok_emb) st = up_floats(&g->emb, m->tok_emb, V * E, b);
    else if (first) {
        float *tmp = (float *)malloc(V * E * 4);
        if (!tmp) return bq_fail(BQ_ERR_NOMEM, "out of memory");
        pmat_decode(m->emb_p, 0, (int)V, tmp);
        st = up_floats(&g->emb, tmp, V * E, b);
        free(tmp);
    }
    if (!st && first && m->pos_emb) st = up_floats(&g->pos, m->pos_emb, (Tn + c->pos_offset) * H, b);
    if (!st && last && c->final_norm) st = up_norm(&g->norms[(size_t)c->layers * 4], &m->final_ln, H, b);
    int any16 = 0;  // what the bf16 buffers must hold (3: a split linear), noted as the linears go up
    size_t maxw = 0, maxw32 = 0;
    int rank = 0;  // the largest LoRC rank
    for (int l = -1; l < c->layers && !st; l++)
        for (int r = l < 0 ? R_HEAD : R_Q; r < (l < 0 ? R_COUNT : R_HEAD) && !st; r++) {
            if (l >= 0 ? l < lo || l >= hi : r == R_PROJ_IN ? !first : !last) continue;
            const linear *src = model_linear(m, l, (lin_role)r);
            glin *dst = glin_at(g, l, (lin_role)r);
            if (!LINEAR_PRESENT(src) || (st = up_linear(dst, src, b))) continue;
            if (dst->pw) bq_cuda_w_set_pdl(dst->pw, g->pdl);
            if (dst->w16 || (dst->pw && !dst->f32)) any16 = any16 > 1 ? any16 : 1;
            if (dst->split) any16 = 3;
            rank = dst->rank > rank ? dst->rank : rank;
            size_t *mx = dst->f32 ? &maxw32 : &maxw;
            if (dst->pw && (size_t)dst->in * dst->out > *mx) *mx = (size_t)dst->in * dst->out;
        }
    for (int l = lo; l < hi && !st; l++) {
        gnorm *n = &g->norms[(size_t)l * 4];
        st = up_norm(&n[N_LN1], &m->L[l].ln1, H, b);
        if (!st) st = up_norm(&n[N_LN2], &m->L[l].ln2, H, b);
        if (!st && c->qk_norm) st = up_norm(&n[N_Q], &m->L[l].q_norm, (size_t)c->head_dim, b);
        if (!st && c->qk_norm) st = up_norm(&n[N_K], &m->L[l].k_norm, (size_t)c->head_dim, b);
    }
    const bq_rot *rots[2] = {m->rot_down, m->rot_qk};
    int smem = 0, smem_m = 0;  // k_rot_fwht holds a column of p chunks in shared memory, k_rot_chunks a chunk of m
    for (int k = 0; k < 2 && !st && lo < hi; k++) {
        const bq_rot *r = rots[k];
        if (!r) continue;
        int most = 0;
        cudaDeviceGetAttribute(&most, cudaDevAttrMaxSharedMemoryPerBlockOptin, g->dev);
        if ((size_t)r->p * 4 > (size_t)most || (size_t)r->m * 4 > (size_t)most)
            st = bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: an online rotation of %d x %d needs %d bytes of shared memory a block (this GPU: %d)",
                         r->p, r->m, (r->p > r->m ? r->p : r->m) * 4, most);
        smem = r->p * 4 > smem ? r->p * 4 : smem;
        smem_m = r->m * 4 > smem_m ? r->m * 4 : smem_m;
        g->rot[k].h = r;
        if (!st) st = up_floats(&g->rot[k].sign, r->sign, (size_t)r->n, b);
        if (!st && r->B) st = up_floats(&g->rot[k].B, r->B, (size_t)r->m * r->m, b);
    }
    if (!st && smem && (cudaFuncSetAttribute(k_rot_fwht, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess ||
                        cudaFuncSetAttribute(k_rot_chunks, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_m) != cudaSuccess))
        st = launched("online rotation's shared memory");
    size_t qd = (size_t)c->heads * c->head_dim, kvd = (size_t)c->kv_heads * c->head_dim, I = (size_t)c->inter;
    size_t maxin = H > I ? H : I;
    maxin = maxin > qd ? maxin : qd;
    maxin = maxin > E ? maxin : E;
    g->xq_floats = Tn * maxin;
    // attention scores: all kv heads' [T][T] if they fit in 512 MiB, else as many
    // as fit there, at least one
    size_t one = Tn * Tn, all = one * (size_t)c->kv_heads, cap = (size_t)128 << 20;
    g->s_floats = all < cap ? all : one > cap ? one : cap;
    size_t few = (size_t)ATT_FEW * c->heads * Tn;  // k_attn_few's rows
    g->s_floats = g->s_floats > few ? g->s_floats : few;
    size_t kv = (size_t)(hi - lo) * Tn * kvd;
    float **bufs[] = {&g->kc, &g->vc, &g->xq, &g->s, &g->kq, &g->vt};
    size_t sizes[] = {kv, kv, g->xq_floats, g->s_floats, m->attn_q ? Tn * kvd : 0, m->attn_q ? Tn * kvd : 0};
    for (int i = 0; i < 6 && !st; i++)
        if (sizes[i]) { st = bq_cuda_malloc((void **)bufs[i], sizes[i] * 4); *b += sizes[i] * 4; }
    if (!st && any16) { st = bq_cuda_malloc((void **)&g->xb, g->xq_floats * 2 * any16); *b += g->xq_floats * 2 * any16; }
    if (!st && maxw) { st = bq_cuda_malloc((void **)&g->wb, maxw * 2); *b += maxw * 2; }
    if (!st && maxw32) { st = bq_cuda_malloc((void **)&g->wf, maxw32 * 4); *b += maxw32 * 4; }
    if (!st && rank) { st = bq_cuda_malloc((void **)&g->lt, Tn * rank * 4); *b += Tn * rank * 4; }
    if (!st) st = bq_cuda_malloc((void **)&g->ids, (Tn + 1) * 4);
    g->dpos = g->ids ? g->ids + Tn : NULL;
    if (!st) st = bq_cuda_malloc((void **)&g->lp, Tn * 8);
    if (!st) st = bq_cuda_malloc((void **)&g->bad, (size_t)g->nsites * 8);
    if (!st && cudaMemset(g->bad, 0xff, (size_t)g->nsites * 8) != cudaSuccess) st = launched("setup");
    if (!st) g->recordable = can_record(g);
    return st;
}

extern "C" bq_status be_cuda_new(const bq_model *m, int T, int dev, int lo, int hi, be **out)
{
    *out = NULL;
    int pdl, fuse, pieces, attn, int8, pf, off;  // the A/B switches (knobs.h), checked before any device work
    static const char *const fuse_levels[3] = {"0", "1", "2"};
    bq_status st = env_switch("BQ_CUDA_PDL", 1, &pdl);
    // level 2 without the norm's pieces: +2.9% bf16, +4.2% MXFP4, +0.5% int4_g128 decode on the H100 (bench/RESULTS.md)
    if (!st) st = env_knob("BQ_CUDA_FUSE", fuse_levels, 3, 2, &fuse);
    if (!st) st = env_switch("BQ_CUDA_PIECES", 0, &pieces);
    static const char *const attn_kernels[3] = {"few", "vec", "deep"};  // (BQ_ATTN_FEW, _VEC, _DEEP)
    // vec: +3 to +6% decode over few; deep: +3.7% over vec (NVFP4 7B on the H100; bench/RESULTS.md)
    if (!st) st = env_knob("BQ_CUDA_ATTN", attn_kernels, 3, BQ_ATTN_DEEP, &attn);
    if (!st) st = env_gemv_int8(&int8);  // (read again at each upload)
    if (!st) st = env_i8_pf(&pf);
    if (!st) st = env_i8_off(&off);
    if (st) return st;
    char why[256];
    int ndev = bq_cuda_devices(why, sizeof why);
    if (!ndev) return bq_fail(BQ_ERR_UNSUPPORTED, "%s", why);
    if (dev < 0 || dev >= ndev) return bq_fail(BQ_ERR_ARG, "CUDA device %d: only %d visible", dev, ndev);
    const bq_config *c = &m->c;
    for (int i = 0; i < c->layers; i++)  // L-Mul products have no GPU kernel: never a silently exact run
        for (int r = R_Q; r < R_HEAD; r++) {
            const linear *l = model_linear(m, i, (lin_role)r);
            if (l->lmul) return bq_fail(BQ_ERR_UNSUPPORTED, "%s: L-Mul products run on the CPU only", l->name);
        }
    cuda_be *g = (cuda_be *)calloc(1, sizeof *g);
    if (!g) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    g->base.ops = &cuda_ops;
    g->base.m = m;
    g->base.max_tokens = T;
    g->base.lo = lo;
    g->base.hi = hi;
    g->dev = dev;
    g->pdl = pdl;
    g->fuse = fuse;
    g->pieces = pieces;
    g->attn = attn;
    st = cuda_bind(&g->base);
    if (!st) st = cublas_handle(&g->blas, &g->blas_ws);
    if (!st) st = cuda_setup(g);
    if (st) { cuda_destroy(&g->base); return st; }
    *out = &g->base;
    return BQ_OK;
}

extern "C" size_t be_cuda_bytes(const be *b) { return b && b->ops == &cuda_ops ? ((const cuda_be *)b)->bytes : 0; }
extern "C" int be_cuda_ordinal(const be *b) { return b && b->ops == &cuda_ops ? ((const cuda_be *)b)->dev : -1; }
