// Device helpers of the engine's kernels (engine.cu) that kernels in files of their
// own (norm.cuh, attn.cu) share: block-wide reductions, the NaN checks' note and a
// decoding step's position.
#ifndef BQ_BLOCK_CUH
#define BQ_BLOCK_CUH

struct sum_op { template <typename T> __device__ T operator()(T a, T b) const { return a + b; } };
struct max_op { __device__ float operator()(float a, float b) const { return fmaxf(a, b); } };

// Tree reduction over the block; every thread gets the result, and buf is free
// for reuse on return.
template <typename T, typename Op>
static __device__ __forceinline__ T block_reduce(T v, T *buf, Op op)
{
    buf[threadIdx.x] = v;
    __syncthreads();
    for (int o = blockDim.x / 2; o; o >>= 1) {
        if ((int)threadIdx.x < o) buf[threadIdx.x] = op(buf[threadIdx.x], buf[threadIdx.x + o]);
        __syncthreads();
    }
    T r = buf[0];
    __syncthreads();
    return r;
}

// The double sum over a block of up to 1024 threads (a multiple of 32): warps by
// shuffles, then warp 0 over the warps' sums; every thread gets it.
static __device__ __forceinline__ double block_sum(double v, double *buf)
{
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int wl = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if ((threadIdx.x & 31) == 0) buf[wl] = v;
    __syncthreads();
    v = (int)(threadIdx.x & 31) < nw ? buf[threadIdx.x & 31] : 0.0;
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();  // buf is free again
    return v;
}

// The largest float over a block of up to 1024 threads (a multiple of 32), as
// block_sum (fmaxf, as max_op: a NaN score still reaches the output through its exponential).
static __device__ __forceinline__ float block_max(float v, float *buf)
{
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int wl = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if ((threadIdx.x & 31) == 0) buf[wl] = v;
    __syncthreads();
    v = (int)(threadIdx.x & 31) < nw ? buf[threadIdx.x & 31] : -INFINITY;
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    return v;
}

// NaN/Inf in x[n]: the smallest 2 * index + isnan into *bad (all ones: none).
static __device__ __forceinline__ void note_bad(unsigned long long *bad, size_t i, float v)
{
    if (!isfinite(v)) atomicMin(bad, 2ull * i + (isnan(v) ? 1 : 0));
}

// The position of a step's first token: an argument, or (a recorded step, see
// engine.cu's cuda_replay) read from device memory, which the host sets before each replay.
static __device__ __forceinline__ int first_pos(int pos0, const int *dpos) { return dpos ? *dpos : pos0; }
#endif
