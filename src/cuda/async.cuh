// cp.async (sm_80+): 16 bytes from global to shared memory without passing through
// registers, so a warp can have several tiles of weights in flight for the price of
// their shared memory, where loads into registers cost registers (and with them CTAs
// a multiprocessor). A thread's copies form groups it commits in order; waiting for
// all but the newest n groups makes its own copies visible to it; other threads see
// them after a barrier (__syncwarp, __syncthreads). Until then the destination is
// undefined. The CPU simulator (tests/cusim) performs a copy only when its group is
// waited for and fills the destination with a pattern at issue, so reading too early,
// or refilling a slot another lane still reads, gives wrong results there too.
#ifndef BQ_ASYNC_CUH
#define BQ_ASYNC_CUH

#ifdef BQ_CUSIM
static __device__ __forceinline__ void cp_async16(void *smem, const void *gmem) { cusim_cp_async(smem, gmem, 16); }
static __device__ __forceinline__ void cp_async_commit() { cusim_cp_commit(); }
template <int N>
static __device__ __forceinline__ void cp_async_wait() { cusim_cp_wait(N); }
#else
static __device__ __forceinline__ void cp_async16(void *smem, const void *gmem)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((unsigned)__cvta_generic_to_shared(smem)), "l"(gmem) : "memory");
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
static __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
#endif

#endif
