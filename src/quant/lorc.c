/* LoRC (`--ptq lorc[:RANK]`, ZeroQuant-V2 / ZeroQuant-FP's low-rank compensation):
 * the error a weight's quantisation leaves, E = W - Q(W), replaced by its best
 * rank-r approximation (truncated SVD, LAPACK dgesdd in double), kept in float32
 * beside the quantised weight and added in the forward pass (src/engine/cpu.c):
 *     y = q(x) Q(W)^T + (q(x) B^T) A^T,   A [out][r] = V_r sqrt(S_r),  B [r][in] = sqrt(S_r) U_r^T
 * (E^T = U S V^T column-major). r (in + out) float32 numbers a linear: rank 8 adds
 * 0.125 bits a weight to a 4096 x 4096 matrix. The factors run on the CPU and the
 * GPU (src/cuda/engine.cu) and travel in .bq files (version 2); GGUF and Hugging
 * Face folders cannot hold them and refuse such a model by name. */
#include "quant.h"
#include "model.h"
#include "pmat.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

extern void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s, double *u,
                    const int *ldu, double *vt, const int *ldvt, double *work, const int *lwork, int *iwork, int *info);

bq_status ptq_lorc(struct linear *l, const float *w0, int rank)
{
    const int out = l->out, in = l->in, k = out < in ? out : in, r = rank < k ? rank : k;
    size_t n = (size_t)out * in;
    float *wq = l->w;
    double *a = malloc(n * sizeof *a), *s = malloc((size_t)k * sizeof *s), *u = malloc((size_t)in * k * sizeof *u),
           *vt = malloc((size_t)k * out * sizeof *vt), *work = NULL;
    int *iwork = malloc((size_t)8 * k * sizeof *iwork);
    bq_status st = a && s && u && vt && iwork ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "%s: out of memory for LoRC's SVD", l->name);
    if (!st && !wq) {  /* packed or held: the values it multiplies by */
        if (!(wq = malloc(n * sizeof *wq))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        else pmat_decode(l->pw, 0, out, wq);
    }
    /* row-major E [out][in] is column-major E^T [in][out]: m = in, n = out */
    for (size_t i = 0; i < n && !st; i++) a[i] = (double)w0[i] - (double)wq[i];
    int info = 0, lwork = -1;
    double q;
    if (!st) {
        dgesdd_("S", &in, &out, a, &in, s, u, &in, vt, &k, &q, &lwork, iwork, &info);  /* workspace query */
        lwork = (int)q;
        if (!(work = malloc((size_t)lwork * sizeof *work))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    }
    if (!st) dgesdd_("S", &in, &out, a, &in, s, u, &in, vt, &k, work, &lwork, iwork, &info);
    if (!st && info) st = bq_fail(BQ_ERR_ARG, "%s: LAPACK's SVD failed (info %d)", l->name, info);
    float *fa = NULL, *fb = NULL;
    if (!st && (!(fa = malloc((size_t)out * r * sizeof *fa)) || !(fb = malloc((size_t)r * in * sizeof *fb))))
        st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int j = 0; j < r && !st; j++) {
        double sq = sqrt(s[j]);
        for (int o = 0; o < out; o++) fa[(size_t)o * r + j] = (float)(vt[j + (size_t)o * k] * sq);
        for (int i = 0; i < in; i++) fb[(size_t)j * in + i] = (float)(sq * u[i + (size_t)j * in]);
    }
    if (!st) {
        free(l->lr_a);
        free(l->lr_b);
        l->lr_a = fa;
        l->lr_b = fb;
        l->lr_rank = r;
        fa = fb = NULL;
    }
    free(fa); free(fb);
    if (wq != l->w) free(wq);
    free(a); free(s); free(u); free(vt); free(work); free(iwork);
    return st;
}
