// W8A8 matrix products with per-block (32) E8M0 scales on the tensor cores:
// MXINT8 (int8 mma) and MXFP8 E4M3 (fp8 mma). Each 32-deep slice of K is one
// scale block and exactly one m16n8k32 MMA step: its exact partial product is
// scaled by 2^(ea + eb - 254) * emult and added to the float accumulators, so the
// block scales are applied inside the accumulation, not before or after it.
//
// Tiles: 128 x 128 per CTA, 8 warps of 64 x 32, K slices of 32 bytes staged in
// shared memory by cp.async, three stages deep. Rows of a tile are 48 bytes
// apart (32 + 16 padding) so that the fragment loads hit 32 different banks.
#include <cuda_runtime.h>
#include <stdint.h>
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
}  // namespace

extern "C" bq_status bq_cuda_gemm_mx8(int kind, const void *d_a, const uint8_t *d_sa, const void *d_b, const uint8_t *d_sb,
                                      float *d_c, int M, int N, int K)
{
    if (M % BM || N % BN || K % BK || M <= 0 || N <= 0 || K <= 0)
        return bq_fail(BQ_ERR_SHAPE, "CUDA W8A8 GEMM needs M and N multiples of %d and K of %d (got %dx%dx%d)", BM, BK, M, N, K);
    dim3 grid((unsigned)(N / BN), (unsigned)(M / BM));
    // MXINT8 elements are 1.6 fixed point: two of them multiply to 2^-12 units
    if (kind == 0) gemm_mx8<0><<<grid, THREADS>>>((const uint8_t *)d_a, d_sa, (const uint8_t *)d_b, d_sb, d_c, M, N, K, 0x1p-12f);
    else gemm_mx8<1><<<grid, THREADS>>>((const uint8_t *)d_a, d_sa, (const uint8_t *)d_b, d_sb, d_c, M, N, K, 1.0f);
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? BQ_OK : bq_fail(BQ_ERR_UNSUPPORTED, "CUDA W8A8 GEMM launch: %s", cudaGetErrorString(e));
}
