// Programmatic dependent launch (Hopper's griddepcontrol). Decoding a token is
// a queue of ~17 small kernels a layer; between two of them the GPU drains one
// grid and only then starts the next's blocks, a gap of a few microseconds each
// that, on the 7B shape, was a third of a token (bench/gpu/round16/call6_ops_*).
// A kernel launched with `pdl` may start while the one before it in the stream
// is still running: its blocks do what needs no earlier result (the GEMVs load
// their first weights), then wait for the earlier grid to finish and its writes
// to be visible (pdl_wait), then let the next kernel start (pdl_go). Every
// kernel launched with pdl must call pdl_wait before it reads anything an
// earlier kernel wrote or writes anything an earlier one reads; without the
// attribute (or before sm_90) both calls do nothing. Kernels that call pdl_go
// only after their own pdl_wait keep at most two grids in flight.
#ifndef BQ_LAUNCH_CUH
#define BQ_LAUNCH_CUH
#include <cuda_runtime.h>

static __device__ __forceinline__ void pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

static __device__ __forceinline__ void pdl_go()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// A kernel's dynamic shared memory (launch_ks's smem bytes); the CPU simulator
// (tests/cusim) has its own.
#ifndef BQ_DYN_SHARED
#define BQ_DYN_SHARED(T, name) extern __shared__ T name[]
#endif

// kernel<<<grid, block, smem>>>(args...) on the per-thread stream, with programmatic
// serialisation when pdl is set. The error is also left for cudaGetLastError.
template <typename... P, typename... A>
static cudaError_t launch_ks(bool pdl, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A &&...args)
{
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = cudaStreamPerThread;
    cfg.attrs = at;
    cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, static_cast<A &&>(args)...);
}

// kernel<<<grid, block>>>(args...), as launch_ks
template <typename... P, typename... A>
static cudaError_t launch_k(bool pdl, void (*kernel)(P...), dim3 grid, dim3 block, A &&...args)
{
    return launch_ks(pdl, kernel, grid, block, 0, static_cast<A &&>(args)...);
}

#endif
