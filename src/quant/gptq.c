/* GPTQ (`--ptq gptq`, Frantar et al. 2023) for every format: the
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
 * clipped (clip.c) before it is quantised, weighted by H's diagonal. With
 * act-order, whole blocks are taken in the order of their inputs' energy.
 * A scale shared by a whole row or the tensor (int8, int6_row, NVFP4's tensor
 * scale) is held where the original weights put it (bq_gptq_pins, bq_cuda.h),
 * each column is then its own group; with clip, the whole matrix is clipped first.
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

/* A scale shared by a whole row or the tensor (or NVFP4's tensor scale over its blocks'). */
static int gptq_row_scale(const bq_format *f)
{
    scale_place p = format_scale_place(f);
    return p == SCALE_ROW || p == SCALE_TENSOR || scheme_of(f)->tensor_factor;
}

static void pins_free(bq_gptq_pins *p)
{
    free(p->lo); free(p->hi); free(p->clo); free(p->chi);
    memset(p, 0, sizeof *p);
}

/* The pins of w in f (bq_gptq_pins): P = 0 where every scale is a group's own. */
static bq_status pins_make(const bq_format *f, const float *w, int rows, int cols, bq_gptq_pins *p)
{
    memset(p, 0, sizeof *p);
    if (!gptq_row_scale(f)) return BQ_OK;
    int per_tensor = format_scale_place(f) != SCALE_ROW;
    int asym = format_float_scale(f) && f->asym;
    p->lo = malloc((size_t)rows * sizeof *p->lo); p->hi = malloc((size_t)rows * sizeof *p->hi);
    p->clo = malloc((size_t)rows * sizeof *p->clo); p->chi = malloc((size_t)rows * sizeof *p->chi);
    if (!p->lo || !p->hi || !p->clo || !p->chi) {
        pins_free(p);
        return bq_fail(BQ_ERR_NOMEM, "out of memory");
    }
    p->P = scheme_of(f)->tensor_factor ? f->block : 2;  /* NVFP4: a whole block, its own scale ignored */
    for (int r = 0; r < rows; r++) {  /* each row's extremes: the first element holding each */
        const float *x = w + (size_t)r * cols;
        int imin = 0, imax = 0, iabs = 0;
        for (int c = 1; c < cols; c++) {
            if (x[c] < x[imin]) imin = c;
            if (x[c] > x[imax]) imax = c;
            if (fabsf(x[c]) > fabsf(x[iabs])) iabs = c;
        }
        if (asym) {
            p->lo[r] = x[imin], p->hi[r] = x[imax], p->clo[r] = imin, p->chi[r] = imax;
        } else {  /* a symmetric scale: [-amax, amax], the element of amax pinned */
            float a = fabsf(x[iabs]);
            p->lo[r] = -a, p->hi[r] = a;
            p->clo[r] = x[iabs] < 0 ? iabs : -1, p->chi[r] = x[iabs] < 0 ? -1 : iabs;
        }
    }
    if (per_tensor) {  /* the tensor's bounds in every row, pinned in the rows that hold them */
        int rlo = 0, rhi = 0;
        for (int r = 1; r < rows; r++) {
            if (p->lo[r] < p->lo[rlo]) rlo = r;
            if (p->hi[r] > p->hi[rhi]) rhi = r;
        }
        float lo = p->lo[rlo], hi = p->hi[rhi];  /* symmetric: one row, -amax and amax */
        int clo = p->clo[rlo], chi = p->chi[rhi];
        for (int r = 0; r < rows; r++) {
            p->lo[r] = lo, p->hi[r] = hi;
            p->clo[r] = r == rlo ? clo : -1, p->chi[r] = r == rhi ? chi : -1;
        }
    }
    return BQ_OK;
}

/* Act-order: the blocks of B columns (B = 1: columns) sorted by their inputs' energy
 * (the sum of H's diagonal over the block), the largest first, ties in column order;
 * GPTQ runs on the permuted matrix and Hessian, and the columns go back. Whole blocks
 * move, so every block keeps its columns and its scale. */
typedef struct { double e; int b; } block_energy;
static int by_energy(const void *x, const void *y)
{
    const block_energy *a = x, *b = y;
    return a->e > b->e ? -1 : a->e < b->e ? 1 : a->b - b->b;
}

static bq_status gptq_actorder(const bq_format *f, float *w, int rows, int cols, int B, const double *gram, int flags,
                               const bq_qopts *o, int device, double *damp)
{
    const size_t n = (size_t)cols, nb = n / (size_t)B;
    block_energy *order = malloc(nb * sizeof *order);
    int *col = malloc(n * sizeof *col);  /* permuted column -> original column */
    double *H = malloc(n * n * sizeof *H);
    float *wp = malloc((size_t)rows * n * sizeof *wp);
    bq_status st = order && col && H && wp ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (size_t k = 0; !st && k < nb; k++) {
        order[k] = (block_energy){0, (int)k};
        for (size_t j = k * B; j < (k + 1) * B; j++) order[k].e += gram[j * n + j];
    }
    if (!st) qsort(order, nb, sizeof *order, by_energy);
    for (size_t c = 0; !st && c < n; c++) col[c] = order[c / B].b * B + (int)(c % B);
    for (size_t i = 0; !st && i < n; i++)
        for (size_t j = 0; j < n; j++) H[i * n + j] = gram[(size_t)col[i] * n + col[j]];
    for (size_t r = 0; !st && r < (size_t)rows; r++)
        for (size_t c = 0; c < n; c++) wp[r * n + c] = w[r * n + col[c]];
    if (!st) st = ptq_gptq(f, wp, rows, cols, H, flags & ~PTQ_GPTQ_ACTORDER, o, device, damp);
    for (size_t r = 0; !st && r < (size_t)rows; r++)
        for (size_t c = 0; c < n; c++) w[r * n + col[c]] = wp[r * n + c];
    free(order); free(col); free(H); free(wp);
    return st;
}

bq_status ptq_gptq(const bq_format *f, float *w, int rows, int cols, const double *gram, int flags, const bq_qopts *o,
                   int device, double *damp)
{
    double used = 0;
    if (!damp) damp = &used;
    int clip = flags & PTQ_GPTQ_CLIP;
    bq_format_info in;
    bq_format_get_info(f, &in);
    if (o && o->round == BQ_ROUND_STOCHASTIC)
        return bq_fail(BQ_ERR_UNSUPPORTED, "gptq: stochastic rounding would round each group again differently; use a deterministic mode");
    int B = in.block > 0 ? in.block : 1;
    if (cols % B) return bq_fail(BQ_ERR_SHAPE, "gptq: %d columns are not whole blocks of %d", cols, B);
    if (flags & PTQ_GPTQ_ACTORDER) return gptq_actorder(f, w, rows, cols, B, gram, flags, o, device, damp);
    int lazy = B > LAZY ? B : LAZY - LAZY % B;
    size_t n = (size_t)cols;
    double *diag = clip ? malloc(n * sizeof *diag) : NULL;  /* clip's weights: H's diagonal */
    if (clip && !diag) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int i = 0; clip && i < cols; i++) diag[i] = gram[(size_t)i * n + i];
    bq_status st = BQ_OK;
    if (clip && gptq_row_scale(f)) {  /* a row or tensor scale: clipped as a whole first, then held */
        st = ptq_clip(f, w, rows, cols, diag, o);
        clip = 0;
    }
    bq_gptq_pins pins;
    if (st || (st = pins_make(f, w, rows, cols, &pins))) {
        free(diag);
        return st;
    }
    if (device > 0) {
        st = bq_cuda_gptq(device - 1, f, w, rows, cols, gram, B, lazy, clip ? ptq_clip : NULL, diag, &pins, o, damp);
        pins_free(&pins);
        free(diag);
        return st;
    }
    const int P = pins.P, gw = B + P;  /* a group's rows as quantised: B columns, then the pins */
    double *U = malloc(n * n * sizeof *U), *W = malloc((size_t)rows * n * sizeof *W);
    double *Z = malloc((size_t)rows * lazy * sizeof *Z);
    float *g = calloc((size_t)rows * gw, sizeof *g), *q = malloc((size_t)rows * gw * sizeof *q);
    if (!U || !W || !Z || !g || !q) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    else if (inverse_factor(gram, cols, U, damp)) st = bq_fail(BQ_ERR_ARG, "gptq: the Hessian is not positive definite, even damped");
    if (!st) {
        for (size_t i = 0; i < (size_t)rows * n; i++) W[i] = w[i];
        if (P) bq_pin_rows(&pins, g, (size_t)rows, B);
    }
    for (int b0 = 0; b0 < cols && !st; b0 += lazy) {
        int b1 = b0 + lazy < cols ? b0 + lazy : cols, nb = b1 - b0;
        for (int a = b0; a < b1 && !st; a += B) {
            /* the group as it stands now, quantised by the format (clipped first if asked) */
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < B; j++) {
                    double v = W[(size_t)r * n + a + j];
                    g[(size_t)r * gw + j] = P ? bq_pin_take(v, a + j, pins.lo[r], pins.hi[r], pins.clo[r], pins.chi[r]) : (float)v;
                }
            if (clip && (st = ptq_clip(f, g, rows, B, diag + a, o))) break;
            if ((st = bq_qdq(f, g, q, (size_t)rows, (size_t)gw, o))) break;
            /* Z_g = (W_g - Q_g) U_gg^-1, then the group's own later columns of this batch move */
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < B; j++) {
                    Z[(size_t)r * lazy + (a - b0) + j] = W[(size_t)r * n + a + j] - q[(size_t)r * gw + j];
                    w[(size_t)r * n + a + j] = g[(size_t)r * gw + j];  /* what the final rounding will see */
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
    pins_free(&pins);
    return st;
}
