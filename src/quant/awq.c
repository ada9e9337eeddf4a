/* AWQ (`--ptq awq`, Lin et al. 2024): protect the weights of the input channels
 * that carry the most activation by scaling them up before quantisation (and the
 * input down, folded as smoothquant folds it: smooth.c). Per group of linears
 * that read one input, s_j = m_j^alpha / sqrt(max m^alpha * min m^alpha), with m_j
 * the input channel's RMS from calibration (the paper uses the mean |x|), and alpha
 * searched over 0, 0.05, ..., 0.95 for the least output error of the group:
 *     E(alpha) = sum over the group's linears of | (Q(W diag(s)) diag(s)^-1 - W) X^T |^2
 *              = sum over rows d of  d G d^T,   d = a row of Q(W s)/s - W,  G = X^T X
 * computed from the calibration's Gram matrix, so no activation is kept. alpha = 0
 * (s = 1) is round-to-nearest itself, so the search never does worse on the
 * calibration text. Linears without a weight format count no error. */
#include "quant.h"
#include "backend.h"
#include "format.h"
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { GRID = 20 };

typedef struct { const bq_qconfig *q; } awq_arg;

/* E for the group at scales s (the Gram matrix G of the shared input). */
static bq_status group_error(const awq_arg *A, linear **ls, int n, const double *G, const double *s, double *err)
{
    int in = ls[0]->in;
    *err = 0;
    bq_status st = BQ_OK;
    for (int i = 0; i < n && !st; i++) {
        const char *fmt = qconfig_weight_format(A->q, ls[i]->name);
        if (!*fmt) continue;
        bq_format *f;
        if ((st = bq_format_parse(fmt, &f))) break;
        size_t rows = (size_t)ls[i]->out, sz = rows * in;
        float *ws = malloc(sz * sizeof *ws);
        double *D = malloc(sz * sizeof *D), *T = malloc(sz * sizeof *T);
        if (!ws || !D || !T) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        for (size_t r = 0; r < rows && !st; r++)
            for (int j = 0; j < in; j++) ws[r * in + j] = (float)(ls[i]->w[r * in + j] * s[j]);
        if (!st) st = bq_qdq(f, ws, ws, rows, (size_t)in, &A->q->opts);
        if (!st) {
            for (size_t r = 0; r < rows; r++)
                for (int j = 0; j < in; j++) D[r * in + j] = ws[r * in + j] / s[j] - ls[i]->w[r * in + j];
            cblas_dsymm(CblasRowMajor, CblasRight, CblasUpper, (int)rows, in, 1.0, G, in, D, in, 0.0, T, in);
            for (size_t e = 0; e < sz; e++) *err += D[e] * T[e];
        }
        free(ws); free(D); free(T);
        bq_format_free(f);
    }
    return st;
}

static bq_status awq_scales(void *arg, const calib_stats *cs, linear **ls, const int *k, int n, double *s)
{
    const awq_arg *A = arg;
    int in = ls[0]->in;
    const double *G = cs->gram ? cs->gram[calib_gram_slot(cs, k[0])] : NULL;
    if (!G) return bq_fail(BQ_ERR_ARG, "awq: %s has no Gram matrix (calibrate with awq asked for)", ls[0]->name);
    const double *msq = cs->msq[k[0]];
    double *t = malloc((size_t)in * sizeof *t);
    if (!t) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    bq_status st = BQ_OK;
    double best = INFINITY;
    for (int j = 0; j < in; j++) s[j] = 1;
    for (int g = 0; g < GRID && !st; g++) {
        double alpha = (double)g / GRID, lo = INFINITY, hi = 0, err;
        for (int j = 0; j < in; j++) {
            t[j] = pow(fmax(sqrt(msq[j]), 1e-4), alpha);
            lo = fmin(lo, t[j]);
            hi = fmax(hi, t[j]);
        }
        for (int j = 0; j < in; j++) t[j] /= sqrt(lo * hi);
        if ((st = group_error(A, ls, n, G, t, &err))) break;
        if (err < best) { best = err; memcpy(s, t, (size_t)in * sizeof *s); }
    }
    free(t);
    return st;
}

bq_status ptq_awq(bq_model *m, calib_stats *cs, const bq_qconfig *q)
{
    awq_arg a = {q};
    return ptq_fold_scales(m, cs, awq_scales, &a, "awq");
}
