/* SmoothQuant (`--ptq smoothquant[:alpha]`, Xiao et al. 2023): activation
 * outliers live in a few input channels, so migrate part of their range into
 * the weights. For each group of linears that read the same input, per input
 * channel j
 *     s_j = max|X_j|^alpha / max|W_.j|^(1 - alpha)
 * (max|X_j| from calibration, max|W_.j| over the group's rows); the weights'
 * columns are multiplied by s_j and the input divided by it, where that is
 * exact in the float model:
 *   - q, k, v: the attention's pre-norm weight (and LayerNorm bias) divided by s;
 *   - gate, up: the MLP's pre-norm likewise;
 *   - down: the up projection's rows (and bias) divided by s, exact for the
 *     SiLU-gated MLP (act(gate) * up) and for ReLU (positively homogeneous);
 *     not for GELU, whose down projection is left alone.
 * Left out: o_proj (its input comes from v through the attention; with grouped
 * KV heads one factor would serve several query heads) and post-LayerNorm
 * models (the norm's output also feeds the residual), which are refused.
 * The calibration statistics of the smoothed linears (and Gram matrices) are
 * rescaled with them, so a later `gptq` or `clip` sees the smoothed inputs. */
#include "quant.h"
#include "backend.h"
#include "pmat.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The scales of one group of linears that read the same input (smoothquant's
 * rule; awq.c has a searched one), then folded: the weights' columns times s_j,
 * the input's producer (`norm`, or the rows of `prev`) divided by it. */
static bq_status fold_group(calib_stats *cs, linear **ls, const int *k, int n, const normp *norm, linear *prev,
                            ptq_scale_fn fn, void *arg)
{
    int in = ls[0]->in;
    if (!cs->amax[k[0]]) return BQ_OK;  /* not calibrated */
    double *s = malloc((size_t)in * sizeof *s);
    if (!s) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    bq_status st = BQ_OK;
    for (int i = 0; i < n && !st; i++) st = ptq_float_weights(ls[i]);
    if (!st && prev) st = ptq_float_weights(prev);
    if (!st) st = fn(arg, cs, ls, k, n, s);
    for (int j = 0; j < in && !st; j++) s[j] = fmin(fmax(s[j], 1e-5), 1e5);
    for (int i = 0; i < n && !st && cs->gram; i++) {  /* the shared Gram matrix, once: G_ab / (s_a s_b) */
        int g = calib_gram_slot(cs, k[i]);
        double *G = g == k[i] ? cs->gram[g] : NULL;
        for (int a = 0; G && a < in; a++)
            for (int b = 0; b < in; b++) G[(size_t)a * in + b] /= s[a] * s[b];
    }
    for (int j = 0; j < in && !st; j++) {
        for (int i = 0; i < n; i++) {
            for (int r = 0; r < ls[i]->out; r++) ls[i]->w[(size_t)r * in + j] *= (float)s[j];
            if (cs->msq[k[i]]) cs->msq[k[i]][j] /= s[j] * s[j];
            if (cs->amax[k[i]]) cs->amax[k[i]][j] /= s[j];
        }
        if (norm) {
            norm->w[j] = (float)(norm->w[j] / s[j]);
            if (norm->b) norm->b[j] = (float)(norm->b[j] / s[j]);
        } else {
            for (int c = 0; c < prev->in; c++) prev->w[(size_t)j * prev->in + c] = (float)(prev->w[(size_t)j * prev->in + c] / s[j]);
            if (prev->b) prev->b[j] = (float)(prev->b[j] / s[j]);
        }
    }
    free(s);
    return st;
}

/* SmoothQuant's factors: s_j = max|X_j|^alpha / max|W_.j|^(1 - alpha). */
static bq_status smooth_scales(void *arg, const calib_stats *cs, linear **ls, const int *k, int n, double *s)
{
    double alpha = *(const double *)arg;
    const double *amax = cs->amax[k[0]];
    int in = ls[0]->in;
    for (int j = 0; j < in; j++) {
        double wmax = 0;
        for (int i = 0; i < n; i++)
            for (int r = 0; r < ls[i]->out; r++) wmax = fmax(wmax, fabs(ls[i]->w[(size_t)r * in + j]));
        s[j] = amax[j] > 0 && wmax > 0 ? pow(amax[j], alpha) / pow(wmax, 1 - alpha) : 1.0;
    }
    return BQ_OK;
}

bq_status ptq_fold_scales(bq_model *m, calib_stats *cs, ptq_scale_fn fn, void *arg, const char *who)
{
    if (!m->c.pre_norm)
        return bq_fail(BQ_ERR_UNSUPPORTED, "%s: a post-LayerNorm model (its norms also feed the residual) cannot absorb the factors", who);
    int L = m->c.layers;
    bq_status st = BQ_OK;
    for (int i = 0; i < L && !st; i++) {
        linear *q = (linear *)model_linear(m, i, R_Q), *kk = (linear *)model_linear(m, i, R_K), *v = (linear *)model_linear(m, i, R_V);
        linear *gate = (linear *)model_linear(m, i, R_GATE), *up = (linear *)model_linear(m, i, R_UP), *down = (linear *)model_linear(m, i, R_DOWN);
        const normp *n1 = model_norm(m, i, N_LN1), *n2 = model_norm(m, i, N_LN2);
        linear *qkv[3];
        int kq[3], nq = 0;
        linear *cand[3] = {q, kk, v};
        int roles[3] = {R_Q, R_K, R_V};
        for (int r = 0; r < 3; r++)
            if (LINEAR_PRESENT(cand[r]) && cand[r]->in == m->c.hidden) { qkv[nq] = cand[r]; kq[nq++] = calib_index(L, i, roles[r]); }
        if (nq && n1 && n1->w) st = fold_group(cs, qkv, kq, nq, n1, NULL, fn, arg);
        linear *mlp[2];
        int km[2], nm = 0;
        if (LINEAR_PRESENT(gate)) { mlp[nm] = gate; km[nm++] = calib_index(L, i, R_GATE); }
        if (LINEAR_PRESENT(up)) { mlp[nm] = up; km[nm++] = calib_index(L, i, R_UP); }
        if (!st && nm && n2 && n2->w) st = fold_group(cs, mlp, km, nm, n2, NULL, fn, arg);
        if (!st && LINEAR_PRESENT(down) && LINEAR_PRESENT(up) && m->c.act != ACT_GELU_TANH) {
            int kd = calib_index(L, i, R_DOWN);
            st = fold_group(cs, &down, &kd, 1, NULL, up, fn, arg);
        }
    }
    return st;
}

bq_status ptq_smooth(bq_model *m, calib_stats *cs, double alpha)
{
    return ptq_fold_scales(m, cs, smooth_scales, &alpha, "smoothquant");
}
