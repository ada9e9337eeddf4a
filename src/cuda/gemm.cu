// W8A8 matrix products with per-block (32) E8M0 scales on the tensor cores:
// MXINT8 (int8) and MXFP8 E4M3 (fp8). Each 32-deep slice of K is one scale block:
// its partial product is scaled by 2^(ea + eb - 254) * emult and added to the
// float accumulators, so the block scales are applied inside the accumulation,
// not before or after it. Two kernels: wgmma on Hopper (below), and this portable
// one on mma.sync.m16n8k32 (one MMA step per slice).
//
// mma.sync tiles: 128 x 128 per CTA, 8 warps of 64 x 32, K slices of 32 bytes
// staged in shared memory by cp.async, three stages deep. Rows of a tile are 48
// bytes apart (32 + 16 padding) so that the fragment loads hit 32 different banks.
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>
extern "C" {
#include "bq_cuda.h"
}

namespace {
constexpr int BM = 128, BN = 128, BK = 32, LDS = 48, STAGES = 3, THREADS = 256;

__device__ __forceinline__ void cp16(void *smem, const void *gmem)
{
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

template <int KIND>
__device__ __forceinline__ void mma(int (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2])
{
    if (KIND == 0)
        asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    else
        asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ float e8m0(unsigned e) { return e == 0xff ? __int_as_float(0x7fc00000) : (e ? __int_as_float(e << 23) : 0x1p-127f); }

template <int KIND>
__global__ void __launch_bounds__(THREADS) gemm_mx8(const uint8_t *__restrict__ A, const uint8_t *__restrict__ SA,
                                                    const uint8_t *__restrict__ B, const uint8_t *__restrict__ SB,
                                                    float *__restrict__ C, int M, int N, int K, float emult)
{
    __shared__ __align__(16) uint8_t sa[STAGES][BM * LDS], sb[STAGES][BN * LDS];
    __shared__ float fa[STAGES][BM], fb[STAGES][BN];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;  // warp tile origin in the CTA tile
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN, nk = K / BK, kb = K / 32;
    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[i][j][r] = 0.0f;

    auto load = [&](int stage, int ks) {
        // 128 rows x 2 chunks of 16 bytes for A and for B: 512 copies, two per thread
        for (int c = tid; c < 2 * BM; c += THREADS) {
            int row = c >> 1, half = c & 1;
            cp16(&sa[stage][row * LDS + half * 16], A + (size_t)(m0 + row) * K + ks * BK + half * 16);
            cp16(&sb[stage][row * LDS + half * 16], B + (size_t)(n0 + row) * K + ks * BK + half * 16);
        }
        if (tid < BM) fa[stage][tid] = e8m0(SA[(size_t)(m0 + tid) * kb + ks]);
        else fb[stage][tid - BM] = e8m0(SB[(size_t)(n0 + tid - BM) * kb + ks]);
    };
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < nk) load(s, s);
        cp_commit();
    }
    for (int ks = 0; ks < nk; ks++) {
        int st = ks % STAGES;
        cp_wait<STAGES - 2>();
        __syncthreads();
        if (ks + STAGES - 1 < nk) load((ks + STAGES - 1) % STAGES, ks + STAGES - 1);
        cp_commit();
        const uint8_t *As = sa[st], *Bs = sb[st];
        unsigned af[4][4], bf[4][2];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint8_t *p = As + (wm + 16 * i + g) * LDS + 4 * t;
            af[i][0] = *(const unsigned *)p;
            af[i][1] = *(const unsigned *)(p + 8 * LDS);
            af[i][2] = *(const unsigned *)(p + 16);
            af[i][3] = *(const unsigned *)(p + 8 * LDS + 16);
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const uint8_t *p = Bs + (wn + 8 * j + g) * LDS + 4 * t;
            bf[j][0] = *(const unsigned *)p;
            bf[j][1] = *(const unsigned *)(p + 16);
        }
        float ra[4][2], rb[4][2];
#pragma unroll
        for (int i = 0; i < 4; i++) { ra[i][0] = fa[st][wm + 16 * i + g] * emult; ra[i][1] = fa[st][wm + 16 * i + g + 8] * emult; }
#pragma unroll
        for (int j = 0; j < 4; j++) { rb[j][0] = fb[st][wn + 8 * j + 2 * t]; rb[j][1] = fb[st][wn + 8 * j + 2 * t + 1]; }
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int c[4] = {0, 0, 0, 0};
                mma<KIND>(c, af[i], bf[j]);
                float v[4];
#pragma unroll
                for (int r = 0; r < 4; r++) v[r] = KIND == 0 ? (float)c[r] : __int_as_float(c[r]);
                acc[i][j][0] += v[0] * (ra[i][0] * rb[j][0]);
                acc[i][j][1] += v[1] * (ra[i][0] * rb[j][1]);
                acc[i][j][2] += v[2] * (ra[i][1] * rb[j][0]);
                acc[i][j][3] += v[3] * (ra[i][1] * rb[j][1]);
            }
    }
    cp_wait<0>();
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int row = m0 + wm + 16 * i + g, col = n0 + wn + 8 * j + 2 * t;
            *(float2 *)&C[(size_t)row * N + col] = make_float2(acc[i][j][0], acc[i][j][1]);
            *(float2 *)&C[(size_t)(row + 8) * N + col] = make_float2(acc[i][j][2], acc[i][j][3]);
        }
}

// ---- Hopper: wgmma (sm_90a) ----
//
// CTA tile 128 x 128, two consumer warpgroups of 64 x 128, K staged 128 bytes
// (four scale blocks) at a time by cp.async into a 128-byte-swizzled layout that
// wgmma reads directly, four stages deep. Each 32-deep block is one wgmma into a
// fresh partial product; while the tensor cores compute block j+1 into the other
// partial, the warpgroup scales block j (float32: 2 ops per element; MXINT8's
// exact int32 partials become float through the 1.5 * 2^23 exponent trick) into
// its accumulators. Scales come as float32 from a pre-pass (E8M0 -> float, A's
// times emult; B's in the order threads read them, see mx_scales).
#pragma nv_diag_suppress 177  // the sm_90a helpers are unused in the portable compute_90 pass
namespace wg {
constexpr int BM = 128, BN = 128, BK = 128, THREADS = 256;
constexpr int A_BYTES = BM * BK, B_BYTES = BN * BK, SA_BYTES = BM * 4 * 4, SB_BYTES = 4 * BN * 4;
constexpr int STAGE_BYTES = A_BYTES + B_BYTES + SA_BYTES + SB_BYTES;
constexpr int STAGES = 4, SMEM = STAGES * STAGE_BYTES;  // one CTA per SM (255 registers a thread)
}

// The 64 accumulator registers of an m64n128 wgmma, as the asm's text and its operands
// (an asm string must be a literal, so the two wrappers differ only in the instruction).
#define WG_D64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define WG_D64_OPERANDS "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), \
    "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), \
    "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), \
    "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])

template <int KIND> __device__ __forceinline__ void wgmma_fresh(uint32_t (&d)[64], uint64_t da, uint64_t db);
template <>
__device__ __forceinline__ void wgmma_fresh<0>(uint32_t (&d)[64], uint64_t da, uint64_t db)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 "
                 WG_D64 ", %64, %65, p;\n}\n"
                 : WG_D64_OPERANDS
                 : "l"(da), "l"(db), "n"(0));
}
template <>
__device__ __forceinline__ void wgmma_fresh<1>(uint32_t (&d)[64], uint64_t da, uint64_t db)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
                 WG_D64 ", %64, %65, p, 1, 1;\n}\n"
                 : WG_D64_OPERANDS
                 : "l"(da), "l"(db), "n"(0));
}

// Shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row groups 1024 bytes apart.
static __device__ __forceinline__ uint64_t sdesc(const void *p)
{
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    return (uint64_t)((a & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}
static __device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
static __device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> static __device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// The partial's registers are written by the tensor cores until the wait: tie them to it.
static __device__ __forceinline__ void wg_hold(uint32_t (&d)[64])
{
#pragma unroll
    for (int i = 0; i < 64; i++) asm volatile("" : "+r"(d[i])::"memory");
}

// E8M0 codes to float32 factors. A: [M][K/32] row-major, times emult. B: per
// 128-column tile and block, the columns in the order threads read them: float4
// q of thread t (columns 8(2q) + 2t + {0,1}, 8(2q+1) + 2t + {0,1}) at 16q + 4t, so
// that the four t of one load hit different banks.
__global__ void mx_scales(const uint8_t *__restrict__ s, float *__restrict__ out, int rows, int kb, float emult, int permute)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * kb) return;
    int r = (int)(i / kb), b = (int)(i % kb);
    float v = e8m0(s[i]) * emult;
    if (!permute) { out[i] = v; return; }
    int tile = r / 128, c = r % 128, ii = c / 8, t = (c % 8) / 2, j = c % 2;
    out[((size_t)tile * kb + b) * 128 + (ii / 2) * 16 + t * 4 + (ii % 2) * 2 + j] = v;
}

template <int KIND>
__global__ void __launch_bounds__(wg::THREADS, 1) gemm_wgmma(const uint8_t *__restrict__ A, const float *__restrict__ SA,
                                                            const uint8_t *__restrict__ B, const float *__restrict__ SB,
                                                            float *__restrict__ C, int M, int N, int K)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int ST = wg::STAGES;
    extern __shared__ __align__(1024) uint8_t smem[];  // no static shared memory: the window starts 1024-aligned
    if (threadIdx.x == 0 && (__cvta_generic_to_shared(smem) & 1023)) __trap();  // the swizzle needs it; say so loudly
    const int tid = threadIdx.x, wgi = tid / 128, wtid = tid % 128, warp = wtid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int m0 = blockIdx.y * wg::BM, n0 = blockIdx.x * wg::BN, nk = K / wg::BK, kb = K / 32;
    // Each thread copies chunk c = tid % 8 of rows tid / 8 + 32 i (i < 4) of A and of B;
    // 128-byte swizzle: chunk c of row r sits at c ^ (r % 8), the same for all four rows.
    const int lr = tid / 8, lc = tid % 8, ldst = lr * 128 + ((lc ^ (lr & 7)) * 16);
    const uint8_t *asrc = A + (size_t)(m0 + lr) * K + lc * 16, *bsrc = B + (size_t)(n0 + lr) * K + lc * 16;
    const float *ssrc = tid < wg::BM ? SA + (size_t)(m0 + tid) * kb : SB + (size_t)blockIdx.x * kb * wg::BN + (tid - wg::BM) * 4;
    auto load = [&](int s, int kt) {
        uint8_t *sa = smem + s * wg::STAGE_BYTES, *sb = sa + wg::A_BYTES;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            cp16(sa + ldst + i * 32 * 128, asrc + (size_t)i * 32 * K + (size_t)kt * wg::BK);
            cp16(sb + ldst + i * 32 * 128, bsrc + (size_t)i * 32 * K + (size_t)kt * wg::BK);
        }
        // scales: A's four blocks of row tid, or four columns of B's [block][128] for this stage
        cp16(sb + wg::B_BYTES + tid * 16, ssrc + (tid < wg::BM ? kt * 4 : kt * 4 * wg::BN));
    };
    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; i++) acc[i] = 0.0f;
    uint32_t P0[64], P1[64];
    const int row = wgi * 64 + warp * 16 + g;  // this thread's rows: row, row + 8 (in the tile)
    // A block's factors for this thread (rows row and row + 8, its 32 columns), read
    // before waiting on the block's wgmma so that the loads overlap the wait.
    struct factors { float ra, rb; float4 c[8]; };
    auto fetch = [&](const float *fa, const float *fb, int b) {
        factors f;
        f.ra = fa[row * 4 + b];
        f.rb = fa[(row + 8) * 4 + b];
        const float4 *cs = (const float4 *)(fb + b * wg::BN + t * 4);
#pragma unroll
        for (int q = 0; q < 8; q++) f.c[q] = cs[4 * q];  // columns 8(2q) + 2t + {0,1}, 8(2q+1) + 2t + {0,1}
        return f;
    };
    auto rescale = [&](uint32_t(&P)[64], const factors &f) {
#pragma unroll
        for (int q = 0; q < 8; q++) {
            float sc[4] = {f.c[q].x, f.c[q].y, f.c[q].z, f.c[q].w};
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int i = 2 * q + h;
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    uint32_t u = P[4 * i + e];
                    float p = KIND == 0 ? __int_as_float((int)(u + 0x4B400000u)) - 12582912.0f : __uint_as_float(u);
                    acc[4 * i + e] = __fmaf_rn(p, (e < 2 ? f.ra : f.rb) * sc[2 * h + (e & 1)], acc[4 * i + e]);
                }
            }
        }
    };
    for (int s = 0; s < ST - 1; s++) {
        if (s < nk) load(s, s);
        cp_commit();
    }
    for (int kt = 0; kt < nk; kt++) {
        cp_wait<ST - 2>();
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // cp.async data -> the tensor cores' proxy
        __syncthreads();
        if (kt + ST - 1 < nk) load((kt + ST - 1) % ST, kt + ST - 1);
        cp_commit();
        const uint8_t *st = smem + (kt % ST) * wg::STAGE_BYTES, *sa = st + wgi * 64 * 128, *sb = st + wg::A_BYTES;
        const float *fa = (const float *)(st + wg::A_BYTES + wg::B_BYTES), *fb = fa + wg::BM * 4;
        // blocks 0..3 of this stage, two partials in flight
        factors f;
        wg_fence(); wgmma_fresh<KIND>(P0, sdesc(sa), sdesc(sb)); wg_commit();
        wg_fence(); wgmma_fresh<KIND>(P1, sdesc(sa + 32), sdesc(sb + 32)); wg_commit();
        f = fetch(fa, fb, 0); wg_wait<1>(); wg_hold(P0); rescale(P0, f);
        wg_fence(); wgmma_fresh<KIND>(P0, sdesc(sa + 64), sdesc(sb + 64)); wg_commit();
        f = fetch(fa, fb, 1); wg_wait<1>(); wg_hold(P1); rescale(P1, f);
        wg_fence(); wgmma_fresh<KIND>(P1, sdesc(sa + 96), sdesc(sb + 96)); wg_commit();
        f = fetch(fa, fb, 2); wg_wait<1>(); wg_hold(P0); rescale(P0, f);
        f = fetch(fa, fb, 3); wg_wait<0>(); wg_hold(P1); rescale(P1, f);
    }
    cp_wait<0>();
#pragma unroll
    for (int i = 0; i < 16; i++) {
        int r = m0 + row, c = n0 + 8 * i + 2 * t;
        *(float2 *)&C[(size_t)r * N + c] = make_float2(acc[4 * i], acc[4 * i + 1]);
        *(float2 *)&C[(size_t)(r + 8) * N + c] = make_float2(acc[4 * i + 2], acc[4 * i + 3]);
    }
#endif
}
}  // namespace

// Whether the device runs the sm_90a code (wgmma): Hopper, compute capability 9.0.
static int hopper(void)
{
    static int h = -1;
    if (h < 0) {
        int dev = 0, major = 0, minor = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
        h = major == 9 && minor == 0 &&
            cudaFuncSetAttribute(gemm_wgmma<0>, cudaFuncAttributeMaxDynamicSharedMemorySize, wg::SMEM) == cudaSuccess &&
            cudaFuncSetAttribute(gemm_wgmma<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, wg::SMEM) == cudaSuccess;
        cudaGetLastError();
    }
    return h;
}

// Float scales for the wgmma path, kept between calls (grown as needed).
static float *g_fs;
static size_t g_fs_n;

extern "C" bq_status bq_cuda_gemm_mx8(int kind, const void *d_a, const uint8_t *d_sa, const void *d_b, const uint8_t *d_sb,
                                      float *d_c, int M, int N, int K)
{
    if (M % BM || N % BN || K % BK || M <= 0 || N <= 0 || K <= 0)
        return bq_fail(BQ_ERR_SHAPE, "CUDA W8A8 GEMM needs M and N multiples of %d and K of %d (got %dx%dx%d)", BM, BK, M, N, K);
    // MXINT8 elements are 1.6 fixed point: two of them multiply to 2^-12 units
    float emult = kind == 0 ? 0x1p-12f : 1.0f;
    if (K % wg::BK == 0 && hopper() && !getenv("BQ_GEMM_MMA")) {
        size_t kb = (size_t)K / 32, need = ((size_t)M + N) * kb;
        if (need > g_fs_n) {
            bq_cuda_free(g_fs);
            g_fs = NULL;
            g_fs_n = 0;
            bq_status st = bq_cuda_malloc((void **)&g_fs, need * sizeof(float));
            if (st) return st;
            g_fs_n = need;
        }
        float *fa = g_fs, *fb = g_fs + (size_t)M * kb;
        mx_scales<<<(unsigned)(((size_t)M * kb + 255) / 256), 256>>>(d_sa, fa, M, (int)kb, emult, 0);
        mx_scales<<<(unsigned)(((size_t)N * kb + 255) / 256), 256>>>(d_sb, fb, N, (int)kb, 1.0f, 1);
        dim3 grid((unsigned)(N / wg::BN), (unsigned)(M / wg::BM));
        const uint8_t *a8 = (const uint8_t *)d_a, *b8 = (const uint8_t *)d_b;
        if (kind == 0) gemm_wgmma<0><<<grid, wg::THREADS, wg::SMEM>>>(a8, fa, b8, fb, d_c, M, N, K);
        else gemm_wgmma<1><<<grid, wg::THREADS, wg::SMEM>>>(a8, fa, b8, fb, d_c, M, N, K);
    } else {
        dim3 grid((unsigned)(N / BN), (unsigned)(M / BM));
        if (kind == 0) gemm_mx8<0><<<grid, THREADS>>>((const uint8_t *)d_a, d_sa, (const uint8_t *)d_b, d_sb, d_c, M, N, K, emult);
        else gemm_mx8<1><<<grid, THREADS>>>((const uint8_t *)d_a, d_sa, (const uint8_t *)d_b, d_sb, d_c, M, N, K, emult);
    }
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? BQ_OK : bq_fail(BQ_ERR_UNSUPPORTED, "CUDA W8A8 GEMM launch: %s", cudaGetErrorString(e));
}
