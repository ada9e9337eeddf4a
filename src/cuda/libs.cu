// cuBLAS and cuSOLVER through dlopen (cuda_libs.h says why).
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
extern "C" {
#include "bq_cuda.h"
}
#include "cuda_libs.h"

cublas_fns g_blas;
cusolver_fns g_solver;
static pthread_mutex_t g_libs_mu = PTHREAD_MUTEX_INITIALIZER;

// The first of `names` that opens, or NULL with dlerror's message in why.
static void *open_first(const char *const *names, size_t n)
{
    void *lib = NULL;
    for (size_t i = 0; i < n && !lib; i++) lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    return lib;
}

static bq_status cublas_load(void)
{
    pthread_mutex_lock(&g_libs_mu);
    bq_status st = BQ_OK;
    if (!g_blas.create) {
        static const char *names[] = {"libcublas.so.13", "libcublas.so", "/usr/local/cuda/lib64/libcublas.so.13",
                                      "/usr/local/cuda/lib64/libcublas.so", "libcublas.so.12"};
        void *lib = open_first(names, sizeof names / sizeof *names);
        if (!lib) st = bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cannot load cuBLAS (libcublas.so): %s", dlerror());
        else {
            cublas_fns f;
            f.destroy = (destroy_fn)dlsym(lib, "cublasDestroy_v2");
            f.sgemm = (sgemm_fn)dlsym(lib, "cublasSgemm_v2");
            f.gemmex = (gemmex_fn)dlsym(lib, "cublasGemmEx");
            f.sgemm_batched = (sgemm_batched_fn)dlsym(lib, "cublasSgemmStridedBatched");
            f.set_stream = (set_stream_fn)dlsym(lib, "cublasSetStream_v2");
            f.set_workspace = (set_workspace_fn)dlsym(lib, "cublasSetWorkspace_v2");
            f.set_math_mode = (set_math_mode_fn)dlsym(lib, "cublasSetMathMode");
            f.dsyrk = (dsyrk_fn)dlsym(lib, "cublasDsyrk_v2");
            f.dgemm = (dgemm_fn)dlsym(lib, "cublasDgemm_v2");
            f.dtrsm = (dtrsm_fn)dlsym(lib, "cublasDtrsm_v2");
            f.create = (create_fn)dlsym(lib, "cublasCreate_v2");
            if (!f.create || !f.destroy || !f.sgemm || !f.gemmex || !f.sgemm_batched || !f.set_stream || !f.set_workspace ||
                !f.set_math_mode ||
                !f.dsyrk || !f.dgemm || !f.dtrsm)
                st = bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cuBLAS lacks one of cublasCreate_v2, cublasSgemm_v2, "
                                                 "cublasSgemmStridedBatched, cublasGemmEx, cublasSetStream_v2, cublasSetWorkspace_v2, cublasSetMathMode, "
                                                 "cublasDsyrk_v2, cublasDgemm_v2, cublasDtrsm_v2");
            else g_blas = f;  // whole: create set is the mark that the rest is
        }
    }
    pthread_mutex_unlock(&g_libs_mu);
    return st;
}

// Every launch of blockq goes to the per-thread default stream (nvcc
// --default-stream per-thread), cuBLAS's too, so that a decoding step can be
// captured as a CUDA graph and two pipeline stages driven by two threads run
// side by side.
bq_status cublas_handle(void **h, void **ws)
{
    const size_t ws_bytes = (size_t)32 << 20;
    *h = *ws = NULL;
    bq_status st = cublas_load();
    if (st) return st;
    if (g_blas.create(h) != 0) { *h = NULL; return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cublasCreate failed"); }
    if (g_blas.set_stream(*h, cudaStreamPerThread) != 0)
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cublasSetStream failed");
    if ((st = bq_cuda_malloc(ws, ws_bytes))) return st;
    if (g_blas.set_workspace(*h, *ws, ws_bytes) != 0)
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cublasSetWorkspace failed");
    return BQ_OK;
}

bq_status cusolver_load(void)
{
    bq_status st = cublas_load();  // cuSOLVER's callers use cuBLAS too
    if (st) return st;
    pthread_mutex_lock(&g_libs_mu);
    if (!g_solver.create) {
        static const char *names[] = {"libcusolver.so.12", "libcusolver.so", "/usr/local/cuda/lib64/libcusolver.so.12",
                                      "/usr/local/cuda/lib64/libcusolver.so", "libcusolver.so.11"};
        void *lib = open_first(names, sizeof names / sizeof *names);
        if (!lib) st = bq_fail(BQ_ERR_UNSUPPORTED, "CUDA: cannot load cuSOLVER (libcusolver.so): %s", dlerror());
        else {
            cusolver_fns f;
            f.destroy = (int (*)(void *))dlsym(lib, "cusolverDnDestroy");
            f.set_stream = (int (*)(void *, cudaStream_t))dlsym(lib, "cusolverDnSetStream");
            f.dpotrf_size = (int (*)(void *, int, int, double *, int, int *))dlsym(lib, "cusolverDnDpotrf_bufferSize");
            f.dpotrf = (int (*)(void *, int, int, double *, int, double *, int, int *))dlsym(lib, "cusolverDnDpotrf");
            f.xtrtri_size = (int (*)(void *, int, int, int64_t, cudaDataType, void *, int64_t, size_t *, size_t *))dlsym(
                lib, "cusolverDnXtrtri_bufferSize");
            f.xtrtri = (int (*)(void *, int, int, int64_t, cudaDataType, void *, int64_t, void *, size_t, void *, size_t,
                                int *))dlsym(lib, "cusolverDnXtrtri");
            f.create = (int (*)(void **))dlsym(lib, "cusolverDnCreate");
            if (!f.create || !f.destroy || !f.set_stream || !f.dpotrf_size || !f.dpotrf || !f.xtrtri_size || !f.xtrtri)
                st = bq_fail(BQ_ERR_UNSUPPORTED, "CUDA: cuSOLVER lacks one of cusolverDnCreate, cusolverDnDestroy, "
                                                 "cusolverDnSetStream, cusolverDnDpotrf(_bufferSize), cusolverDnXtrtri(_bufferSize)");
            else g_solver = f;
        }
    }
    pthread_mutex_unlock(&g_libs_mu);
    return st;
}
