// cuBLAS and cuSOLVER, opened with dlopen at first use (the CUDA runtime is
// linked statically, so a blockq binary runs without these libraries and says
// so only when a GPU path needs them). C++ only: the .cu files share it.
#ifndef BQ_CUDA_LIBS_H
#define BQ_CUDA_LIBS_H
#include <cublas_v2.h>   // types only
#include <cusolverDn.h>  // types only
extern "C" {
#include "core.h"
}

typedef int (*create_fn)(void **);
typedef int (*destroy_fn)(void *);
typedef int (*sgemm_fn)(void *, int, int, int, int, int, const float *, const float *, int, const float *, int,
                        const float *, float *, int);
typedef int (*sgemm_batched_fn)(void *, int, int, int, int, int, const float *, const float *, int, long long,
                                const float *, int, long long, const float *, float *, int, long long, int);
typedef int (*set_stream_fn)(void *, cudaStream_t);
typedef int (*set_workspace_fn)(void *, void *, size_t);
typedef int (*set_math_mode_fn)(void *, int);
typedef cublasStatus_t (*gemmex_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                                    const void *, cudaDataType, int, const void *, cudaDataType, int, const void *, void *,
                                    cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
typedef int (*dsyrk_fn)(void *, int, int, int, int, const double *, const double *, int, const double *, double *, int);
typedef int (*dgemm_fn)(void *, int, int, int, int, int, const double *, const double *, int, const double *, int,
                        const double *, double *, int);
typedef int (*dtrsm_fn)(void *, int, int, int, int, int, int, const double *, const double *, int, double *, int);

// cuBLAS's entry points, found once per process (handles are per user: each
// belongs to the device current when it was made).
struct cublas_fns {
    create_fn create;
    destroy_fn destroy;
    sgemm_fn sgemm;
    sgemm_batched_fn sgemm_batched;
    gemmex_fn gemmex;
    set_stream_fn set_stream;
    set_workspace_fn set_workspace;
    set_math_mode_fn set_math_mode;
    dsyrk_fn dsyrk;
    dgemm_fn dgemm;
    dtrsm_fn dtrsm;
};
extern cublas_fns g_blas;

// A cuBLAS handle on the current device, on the per-thread default stream, with
// a workspace of its own (so that cuBLAS allocates nothing while a graph is
// captured). The caller frees both (g_blas.destroy, bq_cuda_free).
bq_status cublas_handle(void **h, void **ws);

// The cuSOLVER (dense) calls GPTQ's inverse factor needs.
struct cusolver_fns {
    int (*create)(void **);
    int (*destroy)(void *);
    int (*set_stream)(void *, cudaStream_t);
    int (*dpotrf_size)(void *, int, int, double *, int, int *);
    int (*dpotrf)(void *, int, int, double *, int, double *, int, int *);
    int (*xtrtri_size)(void *, int, int, int64_t, cudaDataType, void *, int64_t, size_t *, size_t *);
    int (*xtrtri)(void *, int, int, int64_t, cudaDataType, void *, int64_t, void *, size_t, void *, size_t, int *);
};
extern cusolver_fns g_solver;
bq_status cusolver_load(void);

#endif
