// src/cuda/gemv.cu, qdq.cu and attn.cu compiled for the CUDA simulator
// (tests/cusim/cusim.h) with the runtime calls test_cuda.c makes: device memory is
// host memory. Linked with test_cuda.c (built with -DBQ_CUDA_SIM: its GEMV and fake
// quantisation tests) into test_cusim, which runs those kernels' own code without a
// GPU. The GEMM is not simulated here: it says so.
#include "cusim.h"
#define __CUDACC__ 1  // qkern.h's device spellings (BQ_HD, restrict); __CUDA_ARCH__ stays undefined
#include "../src/cuda/gemv.cu"
#include "../src/cuda/qdq.cu"
#include "../src/cuda/attn.cu"

extern "C" {
void cusim_report(void);
int bq_cuda_devices(char *why, size_t why_len)
{
    (void)why;
    (void)why_len;
    static int once = atexit(cusim_report);
    (void)once;
    return 1;
}
const char *bq_cuda_device_name(void) { return "CUDA simulator on the CPU (tests/cusim)"; }
void cusim_report(void) { fprintf(stderr, "cusim: %lu launches, %lu blocks\n", cusim_launches, cusim_blocks); }
bq_status bq_cuda_malloc(void **d, size_t bytes)
{
    *d = malloc(bytes ? bytes : 1);
    return *d ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory");
}
void bq_cuda_free(void *d) { free(d); }
bq_status bq_cuda_upload(void *d, const void *h, size_t n) { memcpy(d, h, n); return BQ_OK; }
bq_status bq_cuda_download(void *h, const void *d, size_t n) { memcpy(h, d, n); return BQ_OK; }
bq_status bq_cuda_sync(void) { return BQ_OK; }
bq_status bq_cuda_gemm_mx8(int kind, const void *a, const uint8_t *sa, const void *b, const uint8_t *sb, float *c, int M, int N, int K)
{
    (void)kind; (void)a; (void)sa; (void)b; (void)sb; (void)c; (void)M; (void)N; (void)K;
    return bq_fail(BQ_ERR_UNSUPPORTED, "the GEMM is not simulated (tests/cusim runs the GEMV kernels)");
}
}
