// A CUDA simulator on the CPU for the kernels of src/cuda/gemv.cu and qdq.cu: enough
// of the language and runtime that the files compile as C++ and their kernels run, so
// that their indexing, warp exchanges, reductions and splits are tested without a GPU
// (tests/cusim_kernels.cc, built into test_cusim). Not a model of timing or of the
// hardware's rounding inside an fp16 MMA: products are exact here and summed in
// double, where the tensor cores keep float32; tests compare with a tolerance.
//
// A launch runs its blocks one after another, each as blockDim.x fibers (below)
// that meet at barriers: __syncthreads the block's, warp operations (__syncwarp,
// __shfl_xor_sync, mma.sync) their warp's, where each lane leaves its operands
// and reads the others'. __shared__ is `static`: one block at a time, so a block's
// threads share it. A thread that returns leaves its barriers, as exited threads
// stop counting on a GPU.
#ifndef BQ_CUSIM_H
#define BQ_CUSIM_H
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>
#include "ptx_mma.h"

#define BQ_CUSIM 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint2 { unsigned x, y; };
struct uint4 { unsigned x, y, z, w; };
struct int4 { int x, y, z, w; };
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

inline dim3 threadIdx, blockIdx;  // of the running fiber (cusim_run sets them)
inline dim3 gridDim, blockDim;

// ---- arithmetic ----
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
template <typename T> inline T __ldg(const T *p) { return *p; }
template <typename T> inline T __ldcg(const T *p) { return *p; }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline unsigned atomicAdd(unsigned *p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }
inline unsigned atomicMax(unsigned *p, unsigned v)  // (one fiber runs at a time)
{
    unsigned o = *p;
    if (v > o) *p = v;
    return o;
}
inline unsigned long long atomicMin(unsigned long long *p, unsigned long long v)
{
    unsigned long long o = *p;
    if (v < o) *p = v;
    return o;
}
// byte i of the result: byte (s >> 4i) & 7 of {y, x}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s)
{
    uint64_t src = (uint64_t)y << 32 | x;
    unsigned d = 0;
    for (int i = 0; i < 4; i++) d |= (unsigned)((src >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
    return d;
}

// ---- fp16 and bf16 (bits; conversions round to nearest even) ----
struct __half { unsigned short x; };
struct __half2 { __half x, y; };
struct __nv_bfloat16 { unsigned short x; };
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
inline float __half2float(__half h)
{
    unsigned s = (h.x >> 15) & 1, e = (h.x >> 10) & 31, m = h.x & 1023;
    float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 1024), (int)e - 25);
    return s ? -v : v;
}
inline __half __float2half_rn(float f)
{
    unsigned u;
    memcpy(&u, &f, 4);
    unsigned short s = (unsigned short)((u >> 16) & 0x8000);
    float a = fabsf(f);
    if (a != a) return {(unsigned short)(s | 0x7E00)};
    if (a >= 65520.0f) return {(unsigned short)(s | 0x7C00)};  // rounds to Inf
    if (a < ldexpf(1.0f, -14)) {                                // subnormal: multiples of 2^-24
        float q = rintf(ldexpf(a, 24));
        return {(unsigned short)(s | (unsigned short)q)};
    }
    int e;
    float m = frexpf(a, &e);  // a = m 2^e, m in [0.5, 1)
    float q = rintf(ldexpf(m, 11));  // 11 significant bits
    if (q == 2048.0f) { q = 1024.0f; e++; }
    return {(unsigned short)(s | (unsigned short)((e + 14) << 10) | ((unsigned short)q & 1023))};
}
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline __half __ushort_as_half(unsigned short u) { return {u}; }
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    unsigned u;
    memcpy(&u, &f, 4);
    if (f != f) return {(unsigned short)((u >> 16) | 0x40)};
    return {(unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)}; }

// ---- threads of a block: fibers on one OS thread ----
// A block's threads are fibers (stacks of their own) run round robin by a
// scheduler on the calling thread: each runs until it waits at a barrier or returns, so a launch is
// deterministic, and AddressSanitizer (told of each stack switch) checks the
// kernels' memory accesses as host code.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define CUSIM_ASAN 1
#else
#define CUSIM_ASAN 0
#endif
// Stack switching: on x86-64 the six callee-saved registers and the stack pointer
// (glibc's swapcontext also sets the signal mask: a system call each switch);
// elsewhere ucontext.
#if defined(__x86_64__)
struct cusim_ctx { void *sp; };
extern "C" void cusim_switch_x86(void **save, void *load);
asm(R"(
    .text
    .globl cusim_switch_x86
    .type cusim_switch_x86, @function
cusim_switch_x86:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cusim_switch_x86, .-cusim_switch_x86
    .section .note.GNU-stack,"",@progbits
    .text
)");
inline void cusim_ctx_switch(cusim_ctx &from, const cusim_ctx &to) { cusim_switch_x86(&from.sp, to.sp); }
// The first switch to c pops six zero registers and returns into entry, with the
// stack aligned as a call leaves it.
inline void cusim_ctx_make(cusim_ctx &c, char *stack, size_t size, void (*entry)())
{
    void **sp = (void **)((uintptr_t)(stack + size) & ~(uintptr_t)15);
    *--sp = nullptr;  // entry's return address: it never returns
    *--sp = (void *)entry;
    for (int i = 0; i < 6; i++) *--sp = nullptr;
    c.sp = sp;
}
#else
#include <ucontext.h>
struct cusim_ctx { ucontext_t uc; };
inline void cusim_ctx_switch(cusim_ctx &from, const cusim_ctx &to) { swapcontext(&from.uc, &to.uc); }
// (not inlined: getcontext returns twice, which would leave a caller's locals unsafe)
__attribute__((noinline)) inline void cusim_ctx_make(cusim_ctx &c, char *stack, size_t size, void (*entry)())
{
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

struct cusim_fiber {
    cusim_ctx ctx;
    char *stack;
    bool done;
    void *fake;  // ASan's fake stack of this fiber while it is switched out
};
struct cusim_bar {
    int live, arrived;
    unsigned gen;
};
struct cusim_block {
    int nt, cur;
    std::vector<cusim_fiber> f;
    cusim_ctx sched;
    cusim_bar all;
    std::vector<cusim_bar> warp;
    std::vector<uint64_t> slot;  // [bank][thread][16]: what a lane leaves for its warp
    const void *sched_bottom;    // the scheduler's stack (ASan)
    size_t sched_size;
    void *sched_fake;
    std::function<void()> fn;
    dim3 bidx;
};
inline cusim_block *cusim_cur;
enum { CUSIM_STACK = 256 << 10 };

inline void cusim_yield()  // back to the scheduler; returns when resumed
{
    cusim_block &B = *cusim_cur;
    cusim_fiber &F = B.f[B.cur];
#if CUSIM_ASAN
    __sanitizer_start_switch_fiber(&F.fake, B.sched_bottom, B.sched_size);
#endif
    cusim_ctx_switch(F.ctx, B.sched);
#if CUSIM_ASAN
    __sanitizer_finish_switch_fiber(F.fake, nullptr, nullptr);
#endif
}

inline void cusim_arrive(cusim_bar &b)  // wait until every live thread of b has arrived
{
    if (++b.arrived == b.live) {
        b.arrived = 0;
        b.gen++;
        return;
    }
    unsigned g = b.gen;
    while (b.gen == g) cusim_yield();
}

inline void cusim_leave(cusim_bar &b)  // an exited thread stops counting
{
    if (--b.live > 0 && b.arrived == b.live) {
        b.arrived = 0;
        b.gen++;
    }
}

inline int cusim_lane() { return (int)(threadIdx.x & 31); }
inline cusim_bar &cusim_warp() { return cusim_cur->warp[threadIdx.x / 32]; }
inline void __syncthreads() { cusim_arrive(cusim_cur->all); }
inline void __syncwarp(unsigned = 0xffffffffu) { cusim_arrive(cusim_warp()); }
// A warp exchange: lanes leave words in their slot, meet, read others'. Two banks
// used in turn, so one meeting an exchange suffices: a lane can only come back to
// a bank after every lane has met at the next exchange, past its reads of this one.
inline uint64_t *cusim_bank(int lane)
{
    cusim_block &B = *cusim_cur;
    unsigned w = threadIdx.x / 32;
    return &B.slot[((size_t)(B.warp[w].gen & 1) * B.nt + 32 * w + (unsigned)lane) * 16];
}

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int o)
{
    static_assert(sizeof(T) <= 8, "one slot word");
    memcpy(cusim_bank(cusim_lane()), &v, sizeof v);
    unsigned g = cusim_warp().gen;
    cusim_arrive(cusim_warp());
    T r;
    memcpy(&r, &cusim_cur->slot[((size_t)(g & 1) * cusim_cur->nt + (threadIdx.x & ~31u) + (unsigned)(cusim_lane() ^ o)) * 16], sizeof r);
    return r;
}

// mma.sync m16n8kK: lanes leave A (na registers), B (nb) and read back the warp's;
// row/column maps as the PTX ISA's fragment tables. EL: 8-bit integers (k32 and
// k16) or fp16 pairs (k16).
inline void cusim_exchange(const uint32_t *a, int na, const uint32_t *b, int nb, uint32_t (*A)[4], uint32_t (*B)[2])
{
    uint64_t *s = cusim_bank(cusim_lane());
    for (int i = 0; i < na; i++) s[i] = a[i];
    for (int i = 0; i < nb; i++) s[4 + i] = b[i];
    unsigned g = cusim_warp().gen;
    cusim_arrive(cusim_warp());
    const uint64_t *bank = &cusim_cur->slot[((size_t)(g & 1) * cusim_cur->nt + (threadIdx.x & ~31u)) * 16];
    for (int l = 0; l < 32; l++) {
        for (int i = 0; i < na; i++) A[l][i] = (uint32_t)bank[16 * l + i];
        for (int i = 0; i < nb; i++) B[l][i] = (uint32_t)bank[16 * l + 4 + i];
    }
}

// d += a b, s8: k32 (a0..a3, b0, b1) or k16 (a0, a1, b0), fragments as ptx_mma.h.
inline void cusim_mma_s8(int (&d)[4], const uint32_t *a, const uint32_t *b, int K)
{
    uint32_t A[32][4], B[32][2];
    cusim_exchange(a, K / 8, b, K / 16, A, B);
    int32_t e[4] = {d[0], d[1], d[2], d[3]};
    ptx_mma_s8_lane(cusim_lane(), e, A, B, K);
    for (int i = 0; i < 4; i++) d[i] = e[i];
}

// d = a b + c, f16 m16n8k16 (A: a0 row g, columns 2t, 2t+1; a1 row g + 8; a2 row g,
// columns 2t + 8, 2t + 9; a3 row g + 8, those; B: b0 rows 2t, 2t + 1 of column g, b1
// rows 2t + 8, 2t + 9), float32 accumulators as the s8 case.
inline void cusim_mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, const float (&c)[4])
{
    uint32_t A[32][4], B[32][2], b[2] = {b0, b1};
    cusim_exchange(a, 4, b, 2, A, B);
    float Am[16][16], Bm[16][8];
    for (int l = 0; l < 32; l++) {
        int g = l / 4, t = l % 4;
        for (int r = 0; r < 4; r++)
            for (int h = 0; h < 2; h++) Am[g + 8 * (r & 1)][2 * t + h + 8 * (r >> 1)] = __half2float({(unsigned short)(A[l][r] >> (16 * h))});
        for (int r = 0; r < 2; r++)
            for (int h = 0; h < 2; h++) Bm[2 * t + h + 8 * r][g] = __half2float({(unsigned short)(B[l][r] >> (16 * h))});
    }
    int l = cusim_lane();
    for (int i = 0; i < 4; i++) {
        int row = l / 4 + 8 * (i >> 1), col = 2 * (l % 4) + (i & 1);
        double s = c[i];
        for (int k = 0; k < 16; k++) s += (double)Am[row][k] * Bm[k][col];
        d[i] = (float)s;
    }
}

// sub.rn.f16x2
inline uint32_t cusim_hsub2(uint32_t a, uint32_t b)
{
    uint32_t o = 0;
    for (int h = 0; h < 2; h++) {
        float x = __half2float({(unsigned short)(a >> (16 * h))}), y = __half2float({(unsigned short)(b >> (16 * h))});
        o |= (uint32_t)__float2half_rn((float)((double)x - y)).x << (16 * h);
    }
    return o;
}

// ---- the runtime ----
typedef enum { cudaSuccess = 0, cudaErrorMemoryAllocation = 2 } cudaError_t;
typedef enum { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrL2CacheSize = 38 } cudaDeviceAttr;
typedef enum { cudaLaunchAttributeProgrammaticStreamSerialization = 5 } cudaLaunchAttributeID;
typedef void *cudaStream_t;
#define cudaStreamPerThread ((cudaStream_t)0x2)
struct cudaLaunchAttribute {
    cudaLaunchAttributeID id;
    struct { int programmaticStreamSerializationAllowed; } val;
};
struct cudaLaunchConfig_t {
    dim3 gridDim, blockDim;
    size_t dynamicSmemBytes;
    cudaStream_t stream;
    cudaLaunchAttribute *attrs;
    unsigned numAttrs;
};
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char *cudaGetErrorString(cudaError_t e) { return e ? "simulated error" : "no error"; }
inline cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int)
{
    *v = a == cudaDevAttrMultiProcessorCount ? 132 : 50 << 20;  // an H100/H200's SMs
    return cudaSuccess;
}
inline cudaError_t cudaMemset(void *p, int v, size_t n) { memset(p, v, n); return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t = nullptr) { memset(p, v, n); return cudaSuccess; }
inline cudaError_t cudaGetDevice(int *d) { *d = 0; return cudaSuccess; }
typedef enum { cudaStreamCaptureStatusNone = 0, cudaStreamCaptureStatusActive = 1 } cudaStreamCaptureStatus;
inline cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus *s) { *s = cudaStreamCaptureStatusNone; return cudaSuccess; }
typedef enum { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 } cudaFuncAttribute;
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return cudaSuccess; }
// A launch's dynamic shared memory (launch_ks; blocks run one at a time, as __shared__'s statics)
inline std::vector<char> cusim_dyn;
#define BQ_DYN_SHARED(T, name) T *name = (T *)cusim_dyn.data()

inline void cusim_entry()  // a fiber's life: the kernel, then leave the barriers
{
    cusim_block &B = *cusim_cur;
#if CUSIM_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &B.sched_bottom, &B.sched_size);
#endif
    B.fn();
    cusim_fiber &F = B.f[B.cur];
    F.done = true;
    cusim_leave(B.all);
    cusim_leave(B.warp[threadIdx.x / 32]);
#if CUSIM_ASAN
    __sanitizer_start_switch_fiber(nullptr, B.sched_bottom, B.sched_size);
#endif
    cusim_ctx_switch(F.ctx, B.sched);  // never resumed
}


// A fresh fiber for a thread, on its stack.
inline void cusim_prepare(cusim_fiber &F, char *stack)
{
    F.done = false;
    F.stack = stack;
    F.fake = nullptr;
    cusim_ctx_make(F.ctx, stack, CUSIM_STACK, cusim_entry);
}

// Runs fiber t until it waits or returns.
inline void cusim_resume(cusim_block &B, int t)
{
    B.cur = t;
#if CUSIM_ASAN
    __sanitizer_start_switch_fiber(&B.sched_fake, B.f[t].stack, CUSIM_STACK);
#endif
    cusim_ctx_switch(B.sched, B.f[t].ctx);
#if CUSIM_ASAN
    __sanitizer_finish_switch_fiber(B.sched_fake, nullptr, nullptr);
#endif
}

inline unsigned long cusim_blocks, cusim_launches;
inline std::vector<std::unique_ptr<char[]>> cusim_stacks;  // a fiber's stack each, reused by every launch

// Runs fn as every thread of every block of grid x block, a block at a time, its
// threads round robin.
template <typename Fn>
inline void cusim_run(dim3 grid, dim3 block, Fn fn)
{
    cusim_launches++;
    cusim_blocks += (unsigned long)grid.x * grid.y * grid.z;
    gridDim = grid;
    blockDim = block;
    int nt = (int)(block.x * block.y * block.z);
    while ((int)cusim_stacks.size() < nt) cusim_stacks.emplace_back(new char[CUSIM_STACK]);
    cusim_block B;
    B.nt = nt;
    B.fn = fn;
    B.f.resize(nt);
    B.slot.assign((size_t)2 * nt * 16, 0);  // two banks
    cusim_cur = &B;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                B.all = {nt, 0, 0};
                B.warp.assign((nt + 31) / 32, cusim_bar{0, 0, 0});
                for (int t = 0; t < nt; t++) {
                    B.warp[t / 32].live++;
                    cusim_prepare(B.f[t], cusim_stacks[t].get());
                }
                blockIdx = dim3(bx, by, bz);
                for (int left = nt; left > 0;) {
                    left = 0;
                    for (int t = 0; t < nt; t++) {
                        if (B.f[t].done) continue;
                        threadIdx = dim3(t % block.x, t / block.x % block.y, t / block.x / block.y);
                        cusim_resume(B, t);
                        left += !B.f[t].done;
                    }
                }
            }
    cusim_cur = nullptr;
}

template <typename... P, typename... A>
inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t *cfg, void (*kernel)(P...), A &&...args)
{
    cusim_dyn.assign(cfg->dynamicSmemBytes + 16, 0);  // (new's alignment: 16)
    cusim_run(cfg->gridDim, cfg->blockDim, [&] { kernel(args...); });
    return cudaSuccess;
}

#endif
