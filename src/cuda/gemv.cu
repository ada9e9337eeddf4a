// Matrix-vector products on packed weights (generation): one warp per row, each
// lane streaming 16 bytes of codes at a time and decoding them in registers.
//
// Device layout, per row: the element codes (4-bit: two per byte, element 2j in
// the low nibble; 8-bit: one per byte), then separately the scale codes
// [rows][blocks] (1 byte, or 2 for fp16). value = lut[code] * factor(scale),
// factor = (s1 * s2) * emult as on the CPU (pmat.h).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>
extern "C" {
#include "bq_cuda.h"
}

struct bq_cuda_w {
    int rows, cols, eb, K, nb, sbytes;
    float emult;
    uint8_t *codes, *scales;   // device
    float *d_factor;           // device: 256 factors for 1-byte scales
    signed char lut[16];       // 4-bit code -> integer
    size_t bytes;
};

extern "C" size_t bq_cuda_w_bytes(const bq_cuda_w *w) { return w->bytes; }

extern "C" void bq_cuda_w_free(bq_cuda_w *w)
{
    if (!w) return;
    bq_cuda_free(w->codes);
    bq_cuda_free(w->scales);
    bq_cuda_free(w->d_factor);
    free(w);
}

extern "C" bq_status bq_cuda_w_upload(const pmat *m, bq_cuda_w **out)
{
    *out = NULL;
    if (m->kind != PM_PANEL || m->cols % 32 || (m->K != 16 && m->K != 32) || (m->sbytes != 1 && !(m->sbytes == 2 && m->f->scale.ebits == 5)))
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV: format %s at %dx%d is not supported (4/8-bit codes, blocks of 16 or 32, 8-bit or fp16 scales, cols %% 32 == 0)",
                       m->f->name, m->rows, m->cols);
    if (m->eb == 8 && m->f->el.signmag)
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV: 8-bit sign-magnitude codes (%s) are not supported", m->f->name);
    bq_cuda_w *w = (bq_cuda_w *)calloc(1, sizeof *w);
    if (!w) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    w->rows = m->rows; w->cols = m->cols; w->eb = m->eb; w->K = m->K; w->nb = m->nb; w->sbytes = m->sbytes;
    w->emult = m->emult;
    memcpy(w->lut, m->lut, 16);
    size_t rb = (size_t)m->cols * m->eb / 8, sb = (size_t)m->nb * m->sbytes;
    size_t psize = bq_packed_size(m->f, (size_t)m->rows, (size_t)m->cols), prb = pack_row_bytes(m->f, (size_t)m->cols);
    uint8_t *packed = (uint8_t *)malloc(psize), *codes = (uint8_t *)malloc((size_t)m->rows * rb),
            *scales = (uint8_t *)malloc((size_t)m->rows * sb), *ec = (uint8_t *)malloc((size_t)m->cols);
    uint32_t *sc = (uint32_t *)malloc((size_t)m->nb * 4);
    bq_status st = packed && codes && scales && ec && sc ? pmat_to_packed(m, packed, psize) : bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int r = 0; r < m->rows && !st; r++) {
        pack_row_codes(m->f, packed + pack_header_bytes(m->f) + (size_t)r * prb, (size_t)m->cols, sc, ec);
        uint8_t *cr = codes + (size_t)r * rb;
        if (m->eb == 8) memcpy(cr, ec, (size_t)m->cols);
        else for (int k = 0; k < m->cols; k += 2) cr[k / 2] = (uint8_t)(ec[k] | ec[k + 1] << 4);
        for (int g = 0; g < m->nb; g++) memcpy(scales + (size_t)r * sb + (size_t)g * m->sbytes, &sc[g], (size_t)m->sbytes);
    }
    w->bytes = (size_t)m->rows * (rb + sb);
    if (!st) st = bq_cuda_malloc((void **)&w->codes, (size_t)m->rows * rb);
    if (!st) st = bq_cuda_malloc((void **)&w->scales, (size_t)m->rows * sb);
    if (!st) st = bq_cuda_malloc((void **)&w->d_factor, 256 * sizeof(float));
    if (!st) st = bq_cuda_upload(w->codes, codes, (size_t)m->rows * rb);
    if (!st) st = bq_cuda_upload(w->scales, scales, (size_t)m->rows * sb);
    if (!st) st = bq_cuda_upload(w->d_factor, m->sc, 256 * sizeof(float));
    free(packed); free(codes); free(scales); free(ec); free(sc);
    if (st) { bq_cuda_w_free(w); return st; }
    *out = w;
    return BQ_OK;
}

// ROWS rows per warp share each lane's 32 activations (held in registers), so
// x is read once per ROWS rows; 4-bit codes decode in registers (nib_lut).
// Four 4-bit codes (one per byte) through a 16-entry int8 table held in four
// registers: byte permutes pick from entries 0-7 and 8-15, bit 3 chooses.
static __device__ __forceinline__ uint32_t nib_lut(uint32_t u, uint32_t L0, uint32_t L1, uint32_t L2, uint32_t L3)
{
    uint32_t sel = (u & 7u) | ((u >> 4) & 0x70u) | ((u >> 8) & 0x700u) | ((u >> 12) & 0x7000u);
    uint32_t lo = __byte_perm(L0, L1, sel), hi = __byte_perm(L2, L3, sel);
    uint32_t m = ((u >> 3) & 0x01010101u) * 0xFFu;
    return (lo & ~m) | (hi & m);
}

template <int EB, int K, int SB>
__global__ void __launch_bounds__(256) gemv_kernel(const uint8_t *__restrict__ codes, const uint8_t *__restrict__ scales,
                                                   const float *__restrict__ factor, float emult, const float *__restrict__ x,
                                                   float *__restrict__ y, int rows, int cols, int n, int4 lut_lo)
{
    constexpr int ROWS = 4;  // with the next chunk prefetched
    __shared__ float fac[256];
    if (SB == 1) for (int i = threadIdx.x; i < 256; i += blockDim.x) fac[i] = factor[i];
    const uint32_t L0 = (uint32_t)lut_lo.x, L1 = (uint32_t)lut_lo.y, L2 = (uint32_t)lut_lo.z, L3 = (uint32_t)lut_lo.w;
    __syncthreads();
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31, r0 = warp * ROWS;
    if (r0 >= rows) return;
    const size_t rb = (size_t)cols * EB / 8, sbr = (size_t)(cols / K) * SB;
    for (int t = 0; t < n; t++) {
        float acc[ROWS] = {};
        // software pipeline: the next chunk's weights are in flight while this one computes
        uint4 raw[ROWS][EB / 4], nxt[ROWS][EB / 4];
        auto fetch = [&](uint4 (&dst)[ROWS][EB / 4], int cc) {
#pragma unroll
            for (int rr = 0; rr < ROWS; rr++) {
                const uint8_t *cr = codes + (size_t)min(r0 + rr, rows - 1) * rb;
                dst[rr][0] = __ldg((const uint4 *)(cr + (size_t)cc * EB / 8));
                if (EB == 8) dst[rr][EB / 4 - 1] = __ldg((const uint4 *)(cr + cc + 16));
            }
        };
        if (lane * 32 < cols) fetch(raw, lane * 32);
        for (int c0 = lane * 32; c0 < cols; c0 += 32 * 32) {
            if (c0 + 32 * 32 < cols) fetch(nxt, c0 + 32 * 32);
            float xs[32];
            const float4 *xv = (const float4 *)(x + (size_t)t * cols + c0);
#pragma unroll
            for (int q = 0; q < 8; q++) {
                float4 v = __ldg(xv + q);
                xs[4 * q] = v.x; xs[4 * q + 1] = v.y; xs[4 * q + 2] = v.z; xs[4 * q + 3] = v.w;
            }
#pragma unroll
            for (int rr = 0; rr < ROWS; rr++) {
                int r = min(r0 + rr, rows - 1);
                const uint8_t *sr = scales + (size_t)r * sbr;
                const uint8_t *b = (const uint8_t *)raw[rr];
                float part[32 / K] = {};
                // codes become unsigned bytes u = value + 128; float(u) comes from the bit
                // pattern 2^23 + u (a byte permute) minus 2^23 + 128: exact, and full-rate
                // instructions instead of int-to-float conversions
#pragma unroll
                for (int q = 0; q < 4 * EB / 4; q++) {
                    uint32_t wd = ((const uint32_t *)b)[q], lo, hi;
                    if (EB == 4) {  // 8 codes: even ones in the low nibbles
                        lo = nib_lut(wd & 0x0F0F0F0Fu, L0, L1, L2, L3);
                        hi = nib_lut((wd >> 4) & 0x0F0F0F0Fu, L0, L1, L2, L3);
                    } else {
                        lo = wd ^ 0x80808080u;
                        hi = 0;
                    }
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        float a = __int_as_float((int)__byte_perm(lo, 0x4B000000u, 0x7650u + i)) - 8388736.0f;
                        if (EB == 4) {
                            float c = __int_as_float((int)__byte_perm(hi, 0x4B000000u, 0x7650u + i)) - 8388736.0f;
                            int k = 8 * q + 2 * i;
                            part[k / K] += a * xs[k] + c * xs[k + 1];
                        } else {
                            int k = 4 * q + i;
                            part[k / K] += a * xs[k];
                        }
                    }
                }
                float f = 0.0f;
#pragma unroll
                for (int h = 0; h < 32 / K; h++) {
                    int g = c0 / K + h;
                    float sc = SB == 1 ? fac[sr[g]] : __half2float(__ushort_as_half(*(const unsigned short *)(sr + 2 * g))) * emult;
                    f += part[h] * sc;
                }
                acc[rr] += f;
            }
#pragma unroll
            for (int rr = 0; rr < ROWS; rr++)
#pragma unroll
                for (int e = 0; e < EB / 4; e++) raw[rr][e] = nxt[rr][e];
        }
#pragma unroll
        for (int rr = 0; rr < ROWS; rr++) {
            float v = acc[rr];
            for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0 && r0 + rr < rows) y[(size_t)t * rows + r0 + rr] = v;
        }
    }
}

extern "C" bq_status bq_cuda_gemv(const bq_cuda_w *w, const float *d_x, int n, float *d_y)
{
    if (n < 1 || n > 4) return bq_fail(BQ_ERR_ARG, "CUDA GEMV takes 1 to 4 tokens, not %d", n);
    uint8_t biased[16];  /* the table as value + 128 */
    for (int i = 0; i < 16; i++) biased[i] = (uint8_t)(w->lut[i] + 128);
    int4 lo;
    memcpy(&lo, biased, 16);
    unsigned blocks = (unsigned)((w->rows + 31) / 32);  /* 8 warps x 4 rows */
#define L(EB, K, SB) gemv_kernel<EB, K, SB><<<blocks, 256>>>(w->codes, w->scales, w->d_factor, w->emult, d_x, d_y, w->rows, w->cols, n, lo)
    if (w->eb == 4 && w->K == 32 && w->sbytes == 1) L(4, 32, 1);
    else if (w->eb == 4 && w->K == 16 && w->sbytes == 1) L(4, 16, 1);
    else if (w->eb == 4 && w->K == 32 && w->sbytes == 2) L(4, 32, 2);
    else if (w->eb == 8 && w->K == 32 && w->sbytes == 1) L(8, 32, 1);
    else if (w->eb == 8 && w->K == 16 && w->sbytes == 1) L(8, 16, 1);
    else if (w->eb == 8 && w->K == 32 && w->sbytes == 2) L(8, 32, 2);
    else return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV: no kernel for %d-bit codes, blocks of %d", w->eb, w->K);
#undef L
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? BQ_OK : bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV launch: %s", cudaGetErrorString(e));
}
