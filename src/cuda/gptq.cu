// GPTQ on the device: gptq.c's steps, in the same order, with the Hessian's
// inverse factor by cuSOLVER (one Cholesky of the reversed matrix, one
// triangular inverse), each group quantised by bq_cuda_qdq (the CPU's bits) and
// the error updates by cuBLAS, all in float64 but the groups themselves. The
// host keeps the checks (gptq.c) and, with clip, each group's search (clip.c).
// The results differ from the CPU's only through the order of float64 sums.
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
extern "C" {
#include "bq_cuda.h"
}
#include "cuda_libs.h"

// A = J H J (the order reversed), its diagonal damped as gptq.c damps it
static __global__ void k_reverse_damped(const double *H, double *A, size_t n, double mean, double damp)
{
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n * n; k += (size_t)gridDim.x * blockDim.x) {
        size_t i = k / n, j = k % n;
        double v = H[(n - 1 - i) * n + (n - 1 - j)];
        if (i == j) v = (v <= 0 ? mean : v) + damp * mean;
        A[k] = v;
    }
}

// U = J L^-1 J from T, whose lower triangle (row-major) holds L^-1; U's lower triangle zero
static __global__ void k_unreverse_upper(const double *T, double *U, size_t n)
{
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n * n; k += (size_t)gridDim.x * blockDim.x) {
        size_t i = k / n, j = k % n;
        U[k] = j >= i ? T[(n - 1 - i) * n + (n - 1 - j)] : 0.0;
    }
}

static __global__ void k_widen(const float *w, double *W, size_t n)
{
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) W[k] = w[k];
}

// The pins on the device (bq_gptq_pins; P = 0: none).
struct dpins {
    int P;
    const float *lo, *hi;
    const int *clo, *chi;
};

// g's rows of B + P: the group [a, a + B) of every row of W, as float32 (pinned where
// the format holds a row or tensor scale), then the row's pins (written once, by gptq())
static __global__ void k_group_take(const double *W, float *g, int rows, size_t n, int a, int B, dpins p)
{
    const int gw = B + p.P;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < (size_t)rows * B; k += (size_t)gridDim.x * blockDim.x) {
        size_t r = k / B, j = k % B;
        double v = W[r * n + a + j];
        g[r * gw + j] = p.P ? bq_pin_take(v, a + (int)j, p.lo[r], p.hi[r], p.clo[r], p.chi[r]) : (float)v;
    }
}

// Z's columns [off, off + B) = W_g - Q_g; the output's group = g (what the last rounding will see)
static __global__ void k_group_done(const double *W, const float *g, const float *q, double *Z, float *w, int rows, size_t n,
                             int a, int B, int gw, int lazy, int off)
{
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < (size_t)rows * B; k += (size_t)gridDim.x * blockDim.x) {
        size_t r = k / B, j = k % B;
        Z[r * lazy + off + j] = W[r * n + a + j] - q[r * gw + j];
        w[r * n + a + j] = g[r * gw + j];
    }
}

static unsigned grid_for(size_t n) { return (unsigned)(n / 256 + 1 < 4096 ? n / 256 + 1 : 4096); }

static bq_status launched(const char *what)
{
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? BQ_OK : bq_fail(BQ_ERR_UNSUPPORTED, "CUDA gptq: %s: %s", what, cudaGetErrorString(e));
}

// One linear's work: device buffers and library handles, freed together.
struct job {
    void *blas = NULL, *blas_ws = NULL, *solver = NULL;
    double *H = NULL, *A = NULL, *W = NULL, *Z = NULL, *work = NULL;
    float *w = NULL, *g = NULL, *q = NULL, *bounds = NULL;
    int *cols = NULL;
    void *hwork = NULL;
    int *info = NULL;
    ~job()
    {
        cudaStreamSynchronize(cudaStreamPerThread);
        if (solver) g_solver.destroy(solver);
        if (blas) g_blas.destroy(blas);
        void *d[] = {blas_ws, H, A, W, Z, work, w, g, q, bounds, cols, info};
        for (void *p : d) bq_cuda_free(p);
        free(hwork);
    }
};

// U with (H + damp I)^-1 = U^T U into j->H (gptq.c's inverse_factor: the damping
// raised tenfold, up to three times, while H is not positive definite).
static bq_status inverse_factor(job *j, const double *gram, int n, double *used)
{
    const size_t N = (size_t)n;
    double mean = 0;
    for (size_t i = 0; i < N; i++) mean += gram[i * N + i];
    mean = mean > 0 ? mean / n : 1;
    bq_status st = bq_cuda_upload(j->H, gram, N * N * sizeof(double));
    int lwork = 0;
    size_t dws = 0, hws = 0;
    if (!st && (g_solver.dpotrf_size(j->solver, CUBLAS_FILL_MODE_UPPER, n, j->A, n, &lwork) ||
                g_solver.xtrtri_size(j->solver, CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT, n, CUDA_R_64F, j->A, n, &dws, &hws)))
        st = bq_fail(BQ_ERR_UNSUPPORTED, "CUDA gptq: cuSOLVER cannot size its workspace for %d x %d", n, n);
    size_t wbytes = (size_t)lwork * sizeof(double) > dws ? (size_t)lwork * sizeof(double) : dws;
    if (!st) st = bq_cuda_malloc((void **)&j->work, wbytes);
    if (!st && hws && !(j->hwork = malloc(hws))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (double damp = 0.01; damp <= 10.01 && !st; damp *= 10) {
        // row-major lower = column-major upper: 'U' here is the CPU's dpotrf_("U") on the same data
        k_reverse_damped<<<grid_for(N * N), 256, 0, cudaStreamPerThread>>>(j->H, j->A, N, mean, damp);
        if ((st = launched("reverse"))) break;
        int info[2] = {0, 0};
        if (g_solver.dpotrf(j->solver, CUBLAS_FILL_MODE_UPPER, n, j->A, n, j->work, lwork, j->info))
            st = bq_fail(BQ_ERR_UNSUPPORTED, "CUDA gptq: cusolverDnDpotrf failed on %d x %d", n, n);
        else if (!(st = bq_cuda_download(info, j->info, sizeof(int))) && info[0]) continue;
        if (!st && g_solver.xtrtri(j->solver, CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT, n, CUDA_R_64F, j->A, n, j->work,
                                   wbytes, j->hwork, hws, j->info + 1))
            st = bq_fail(BQ_ERR_UNSUPPORTED, "CUDA gptq: cusolverDnXtrtri failed on %d x %d", n, n);
        else if (!st && !(st = bq_cuda_download(info + 1, j->info + 1, sizeof(int))) && info[1]) continue;
        if (st) break;
        k_unreverse_upper<<<grid_for(N * N), 256, 0, cudaStreamPerThread>>>(j->A, j->H, N);
        *used = damp;
        return launched("unreverse");
    }
    return st ? st : bq_fail(BQ_ERR_ARG, "gptq: the Hessian is not positive definite, even damped");
}

extern "C" bq_status bq_cuda_gptq(int ordinal, const bq_format *f, float *w, int rows, int cols, const double *gram, int B,
                                  int lazy, bq_group_fn clip, const double *imp, const bq_gptq_pins *pins, const bq_qopts *o,
                                  double *damp)
{
    cudaError_t e = cudaSetDevice(ordinal);
    if (e != cudaSuccess) return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA gptq: device %d: %s", ordinal, cudaGetErrorString(e));
    bq_status st = cusolver_load();
    if (st) return st;
    job j;
    const size_t n = (size_t)cols, R = (size_t)rows;
    if ((st = cublas_handle(&j.blas, &j.blas_ws))) return st;
    if (g_solver.create(&j.solver)) {
        j.solver = NULL;
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA gptq: cusolverDnCreate failed");
    }
    if (g_solver.set_stream(j.solver, cudaStreamPerThread)) return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA gptq: cusolverDnSetStream failed");
    const int P = pins ? pins->P : 0, gw = B + P;
    void **bufs[] = {(void **)&j.H, (void **)&j.A, (void **)&j.W, (void **)&j.Z, (void **)&j.w, (void **)&j.g, (void **)&j.q,
                     (void **)&j.info};
    size_t bytes[] = {n * n * 8, n * n * 8, R * n * 8, R * lazy * 8, R * n * 4, R * gw * 4, R * gw * 4, 2 * sizeof(int)};
    for (int k = 0; k < 8 && !st; k++) st = bq_cuda_malloc(bufs[k], bytes[k]);
    dpins dp = {P, NULL, NULL, NULL, NULL};
    if (!st && P) {  // the bounds and pinned columns, and the pin columns of g: [lo, hi, 0...] in every row
        float *rows0 = (float *)calloc(R * gw, sizeof *rows0);
        if (!rows0) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        else bq_pin_rows(pins, rows0, R, B);
        if (!st) st = bq_cuda_upload(j.g, rows0, R * gw * 4);
        free(rows0);
        if (!st) st = bq_cuda_malloc((void **)&j.bounds, R * 2 * sizeof(float));
        if (!st) st = bq_cuda_malloc((void **)&j.cols, R * 2 * sizeof(int));
        if (!st) st = bq_cuda_upload(j.bounds, pins->lo, R * sizeof(float));
        if (!st) st = bq_cuda_upload(j.bounds + R, pins->hi, R * sizeof(float));
        if (!st) st = bq_cuda_upload(j.cols, pins->clo, R * sizeof(int));
        if (!st) st = bq_cuda_upload(j.cols + R, pins->chi, R * sizeof(int));
        dp = {P, j.bounds, j.bounds + R, j.cols, j.cols + R};
    }
    if (!st) st = inverse_factor(&j, gram, cols, damp);
    if (!st) st = bq_cuda_upload(j.w, w, R * n * 4);
    if (!st) {
        k_widen<<<grid_for(R * n), 256, 0, cudaStreamPerThread>>>(j.w, j.W, R * n);
        st = launched("widen");
    }
    float *hg = clip && !st ? (float *)malloc(R * B * sizeof *hg) : NULL;
    if (clip && !st && !hg) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    const double one = 1.0, minus = -1.0;
    const double *U = j.H;
    for (int b0 = 0; b0 < cols && !st; b0 += lazy) {
        int b1 = b0 + lazy < cols ? b0 + lazy : cols, nb = b1 - b0;
        for (int a = b0; a < b1 && !st; a += B) {
            k_group_take<<<grid_for(R * B), 256, 0, cudaStreamPerThread>>>(j.W, j.g, rows, n, a, B, dp);
            if ((st = launched("group"))) break;
            if (clip && ((st = bq_cuda_download(hg, j.g, R * B * 4)) || (st = clip(f, hg, rows, B, imp + a, o)) ||
                         (st = bq_cuda_upload(j.g, hg, R * B * 4))))
                break;
            if ((st = bq_cuda_qdq(f, j.g, j.q, R, (size_t)gw, o))) break;
            k_group_done<<<grid_for(R * B), 256, 0, cudaStreamPerThread>>>(j.W, j.g, j.q, j.Z, j.w, rows, n, a, B, gw, lazy, a - b0);
            if ((st = launched("group error"))) break;
            // row-major Z_g U_gg^-1 (right, upper) is column-major U_gg^-T Z_g^T (left, lower)
            if (g_blas.dtrsm(j.blas, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT, B, rows, &one,
                             U + (size_t)a * n + a, cols, j.Z + (a - b0), lazy))
                st = bq_fail(BQ_ERR_UNSUPPORTED, "CUDA gptq: cublasDtrsm failed");
            else if (a + B < b1 && g_blas.dgemm(j.blas, CUBLAS_OP_N, CUBLAS_OP_N, b1 - a - B, rows, B, &minus,
                                                 U + (size_t)a * n + a + B, cols, j.Z + (a - b0), lazy, &one, j.W + a + B, cols))
                st = bq_fail(BQ_ERR_UNSUPPORTED, "CUDA gptq: cublasDgemm failed");
        }
        if (!st && b1 < cols && g_blas.dgemm(j.blas, CUBLAS_OP_N, CUBLAS_OP_N, cols - b1, rows, nb, &minus,
                                              U + (size_t)b0 * n + b1, cols, j.Z, lazy, &one, j.W + b1, cols))
            st = bq_fail(BQ_ERR_UNSUPPORTED, "CUDA gptq: cublasDgemm failed");
    }
    free(hg);
    if (!st) st = bq_cuda_download(w, j.w, R * n * 4);  // synchronises: a kernel's error shows here
    return st;
}
