/* GPTQ (`--ptq gptq`, Frantar et al. 2023) for every format whose scales are
 * shared by blocks (or groups) along a row, or by no elements at all: the
 * weights are quantised a group of columns at a time, and the error each group
 * leaves is compensated on the columns not yet quantised, weighted by the inverse
 * Hessian of the layer's output error, H = X^T X (calibration's Gram matrix).
 *
 * With U the upper Cholesky factor of H^-1 (H^-1 = U^T U), quantising group g
 * (columns [a, a+B)) with errors d (a row of B per output row) moves the columns
 * after it by  -d U_gg^-1 U_g,rest  -- for B = 1 the paper's -d / U_qq U_q,rest.
 * The B columns of a group are quantised together by the format itself (their
 * shared scale comes from all of them, as blockq's quantiser computes it); the
 * updates are applied lazily, 128 columns at a time (the paper's batching).
 *
 * The result is the updated weights before their last rounding: quantising them
 * as usual (fake quantisation or packing) gives each group exactly the codes the
 * algorithm chose, so both paths agree bit for bit. With clip, each group is also
 * clipped (clip.c) before it is quantised, weighted by H's diagonal.
 * On a CUDA device (src/cuda/gptq.cu) the same steps run in cuSOLVER and cuBLAS. */
#include "quant.h"
#include "format.h"
#include "bq_cuda.h"
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK (in OpenBLAS), column-major: on our row-major matrices 'U' works on the
 * lower triangle. */
extern void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
extern void dtrtri_(const char *uplo, const char *diag, const int *n, double *a, const int *lda, int *info);

enum { LAZY = 128 };

/* U, upper, with (H + damp I)^-1 = U^T U; damping 1% of H's mean diagonal, raised
 * tenfold (up to three times) if H is not positive definite. Returns 0 on success,
 * with *used the damping that succeeded (a fraction of the mean diagonal).
 * With J the order reversed: J H J = L L^T (lower Cholesky), so H = M M^T with M =
 * J L J upper, and U = M^-1 = J L^-1 J: one Cholesky and one triangular inverse
 * (2n^3/3 flops; the paper's Cholesky, inverse and Cholesky again take 4n^3/3). */
static int inverse_factor(const double *gram, int n, double *U, double *used)
{
    double mean = 0;
    for (int i = 0; i < n; i++) mean += gram[(size_t)i * n + i];
    mean = mean > 0 ? mean / n : 1;
    const size_t N = (size_t)n;
    for (double damp = 0.01; damp <= 10.01; damp *= 10) {
        for (size_t i = 0; i < N; i++)  /* J H J, damped */
            for (size_t j = 0; j <= i; j++) U[i * N + j] = gram[(N - 1 - i) * N + (N - 1 - j)];
        for (size_t i = 0; i < N; i++) {
            double *d = U + i * N + i;
            if (*d <= 0) *d = mean;  /* an input that never fired: nothing to weigh */
            *d += damp * mean;
        }
        int info = 0;
        dpotrf_("U", &n, U, &n, &info);  /* row-major lower L: J H J = L L^T */
        if (info) continue;
        dtrtri_("U", "N", &n, U, &n, &info);  /* row-major lower L^-1 */
        if (info) continue;
        for (size_t i = 0; i < N; i++)  /* U = J L^-1 J, upper; its lower triangle zero */
            for (size_t j = 0; j < N; j++) {
                size_t a = i * N + j, b = (N - 1 - i) * N + (N - 1 - j);
                if (a >= b) continue;
                double t = U[a];
                U[a] = U[b];
                U[b] = t;
            }
        for (size_t i = 0; i < N; i++)
            for (size_t j = 0; j < i; j++) U[i * N + j] = 0;
        *used = damp;
        return 0;
    }
    return -1;
}

bq_status ptq_gptq(const bq_format *f, float *w, int rows, int cols, const double *gram, int clip, const bq_qopts *o,
                   int device, double *damp)
{
    double used = 0;
    if (!damp) damp = &used;
    bq_format_info in;
    bq_format_get_info(f, &in);
    if (in.block < 0 || !strcmp(in.family, "nvfp4"))
        return bq_fail(BQ_ERR_UNSUPPORTED, "gptq: %s has a scale per %s; GPTQ quantises groups of columns, whose scales must be their own",
                       in.name, in.block == -1 ? "row" : "tensor");
    if (o && o->round == BQ_ROUND_STOCHASTIC)
        return bq_fail(BQ_ERR_UNSUPPORTED, "gptq: stochastic rounding would round each group again differently; use a deterministic mode");
    int B = in.block > 0 ? in.block : 1;
    if (cols % B) return bq_fail(BQ_ERR_SHAPE, "gptq: %d columns are not whole blocks of %d", cols, B);
    int lazy = B > LAZY ? B : LAZY - LAZY % B;
    if (device > 0) return bq_cuda_gptq(device - 1, f, w, rows, cols, gram, B, lazy, clip ? ptq_clip : NULL, o, damp);
    size_t n = (size_t)cols;
    double *U = malloc(n * n * sizeof *U), *W = malloc((size_t)rows * n * sizeof *W);
    double *Z = malloc((size_t)rows * lazy * sizeof *Z), *diag = clip ? malloc(n * sizeof *diag) : NULL;
    float *g = malloc((size_t)rows * B * sizeof *g), *q = malloc((size_t)rows * B * sizeof *q);
    bq_status st = BQ_OK;
    if (!U || !W || !Z || !g || !q || (clip && !diag)) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    else if (inverse_factor(gram, cols, U, damp)) st = bq_fail(BQ_ERR_ARG, "gptq: the Hessian is not positive definite, even damped");
    if (!st) {
        for (size_t i = 0; i < (size_t)rows * n; i++) W[i] = w[i];
        for (int i = 0; clip && i < cols; i++) diag[i] = gram[(size_t)i * n + i];
    }
    for (int b0 = 0; b0 < cols && !st; b0 += lazy) {
        int b1 = b0 + lazy < cols ? b0 + lazy : cols, nb = b1 - b0;
        for (int a = b0; a < b1 && !st; a += B) {
            /* the group as it stands now, quantised by the format (clipped first if asked) */
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < B; j++) g[(size_t)r * B + j] = (float)W[(size_t)r * n + a + j];
            if (clip && (st = ptq_clip(f, g, rows, B, diag + a, o))) break;
            if ((st = bq_qdq(f, g, q, (size_t)rows, (size_t)B, o))) break;
            /* Z_g = (W_g - Q_g) U_gg^-1, then the group's own later columns of this batch move */
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < B; j++) {
                    Z[(size_t)r * lazy + (a - b0) + j] = W[(size_t)r * n + a + j] - q[(size_t)r * B + j];
                    w[(size_t)r * n + a + j] = g[(size_t)r * B + j];  /* what the final rounding will see */
                }
            cblas_dtrsm(CblasRowMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, rows, B, 1.0,
                        U + (size_t)a * n + a, (int)n, Z + (a - b0), lazy);
            if (a + B < b1)
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, b1 - a - B, B, -1.0, Z + (a - b0), lazy,
                            U + (size_t)a * n + a + B, (int)n, 1.0, W + a + B, (int)n);
        }
        if (!st && b1 < cols)  /* the batch's errors onto every later column at once */
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols - b1, nb, -1.0, Z, lazy,
                        U + (size_t)b0 * n + b1, (int)n, 1.0, W + b1, (int)n);
    }
    free(U); free(W); free(Z); free(diag); free(g); free(q);
    return st;
}
