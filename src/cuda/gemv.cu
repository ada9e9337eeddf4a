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

template <int EB, int K, int SB>
__global__ void gemv_kernel(const uint8_t *__restrict__ codes, const uint8_t *__restrict__ scales,
                            const float *__restrict__ factor, float emult, const float *__restrict__ x, float *__restrict__ y,
                            int rows, int cols, int n, int4 lut_lo, int4 lut_hi)
{
    __shared__ float fac[256], flut[16];
    if (SB == 1) for (int i = threadIdx.x; i < 256; i += blockDim.x) fac[i] = factor[i];
    if (threadIdx.x < 16) {
        signed char l[16];
        memcpy(l, &lut_lo, 16);
        flut[threadIdx.x] = (float)l[threadIdx.x];
    }
    (void)lut_hi;
    __syncthreads();
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= rows) return;
    const size_t rb = (size_t)cols * EB / 8;
    const uint8_t *cr = codes + (size_t)warp * rb;
    const uint8_t *sr = scales + (size_t)warp * (cols / K) * SB;
    float acc[4] = {0, 0, 0, 0};
    // each lane takes chunks of 32 columns: 16 bytes (4-bit) or 32 bytes (8-bit)
    for (int c0 = lane * 32; c0 < cols; c0 += 32 * 32) {
        uint8_t b[32];
        if (EB == 4) *(uint4 *)b = __ldg((const uint4 *)(cr + c0 / 2));
        else { *(uint4 *)b = __ldg((const uint4 *)(cr + c0)); *(uint4 *)(b + 16) = __ldg((const uint4 *)(cr + c0 + 16)); }
        float f[32 / K];
        for (int h = 0; h < 32 / K; h++) {
            int g = c0 / K + h;
            if (SB == 1) f[h] = fac[sr[g]];
            else f[h] = __half2float(__ushort_as_half(*(const unsigned short *)(sr + 2 * g))) * emult;
        }
        for (int t = 0; t < n; t++) {
            const float4 *xv = (const float4 *)(x + (size_t)t * cols + c0);
            float part[32 / K];
            for (int h = 0; h < 32 / K; h++) part[h] = 0.0f;
#pragma unroll
            for (int q = 0; q < 8; q++) {
                float4 xx = __ldg(xv + q);
                float xs[4] = {xx.x, xx.y, xx.z, xx.w};
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    int k = 4 * q + j;
                    int code = EB == 4 ? (k & 1 ? b[k / 2] >> 4 : b[k / 2] & 15) : (int)(signed char)b[k];
                    float wv = EB == 4 ? flut[code] : (float)code;
                    part[k / K] += wv * xs[j];
                }
            }
            for (int h = 0; h < 32 / K; h++) acc[t] += part[h] * f[h];
        }
    }
    for (int t = 0; t < n; t++) {
        float v = acc[t];
        for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) y[(size_t)t * rows + warp] = v;
    }
}

extern "C" bq_status bq_cuda_gemv(const bq_cuda_w *w, const float *d_x, int n, float *d_y)
{
    if (n < 1 || n > 4) return bq_fail(BQ_ERR_ARG, "CUDA GEMV takes 1 to 4 tokens, not %d", n);
    int4 lo, hi;
    memcpy(&lo, w->lut, 16);
    memset(&hi, 0, sizeof hi);
    unsigned blocks = (unsigned)((w->rows + 7) / 8);
#define L(EB, K, SB) gemv_kernel<EB, K, SB><<<blocks, 256>>>(w->codes, w->scales, w->d_factor, w->emult, d_x, d_y, w->rows, w->cols, n, lo, hi)
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
