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
 * rescaled with them, so a later `gptq` or `clip` sees the smoothed inputs.
 * alpha, when not given, is searched for q/k/v and for gate/up: of 0, 0.1, ..., 1 and
 * no smoothing, the one whose quantised group (weights and inputs in the formats
 * the configuration gives them) has the least output error on a sample of the
 * calibration tokens (calib.c keeps CALIB_SAMPLE_ROWS of each input). down_proj
 * keeps 0.5 (its factors reach up_proj's rows too, beyond its own error). */
#include "quant.h"
#include "backend.h"
#include "pmat.h"
#include <cblas.h>
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

/* SmoothQuant's factors: s_j = max|X_j|^alpha / max|W_.j|^(1 - alpha) (wmax: max|W_.j|). */
static void rule(const double *amax, const double *wmax, int in, double alpha, double *s)
{
    for (int j = 0; j < in; j++)
        s[j] = amax[j] > 0 && wmax[j] > 0 ? pow(amax[j], alpha) / pow(wmax[j], 1 - alpha) : 1.0;
}

enum { GRID = 10 };  /* alpha 0, 0.1, ..., 1 */

typedef struct {
    const bq_qconfig *q;
    char *note;        /* the alphas chosen, for the message at the end */
    size_t len, cap;
} smooth_arg;

/* The group's output error on the calibration sample X [S][in] at scales s, as the
 * quantised model computes it: sum over its linears of |X W^T - Qa(X / s) Qw(W s)^T|^2,
 * Qw and Qa the formats q gives each linear (none: not quantised). Y0 = X W^T per linear. */
static bq_status sample_error(const bq_qconfig *q, linear **ls, int n, const float *X, int S, float *const *Y0,
                              const double *s, double *err)
{
    int in = ls[0]->in;
    *err = 0;
    float *xs = malloc((size_t)S * in * sizeof *xs);
    bq_status st = xs ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n && !st; i++) {
        const char *wf, *af;
        qconfig_resolve(q, ls[i]->name, 1, &wf, &af);
        int out = ls[i]->out;
        float *ws = malloc((size_t)out * in * sizeof *ws), *y = malloc((size_t)S * out * sizeof *y);
        if (!ws || !y) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        for (size_t e = 0; !st && e < (size_t)S * in; e++) xs[e] = (float)(X[e] / s[e % in]);
        for (size_t e = 0; !st && e < (size_t)out * in; e++) ws[e] = (float)(ls[i]->w[e] * s[e % in]);
        if (!st && *af) st = qdq_named(af, xs, S, in, &q->opts);
        if (!st && *wf) st = qdq_named(wf, ws, out, in, &q->opts);
        if (!st) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, out, in, 1.0f, xs, in, ws, in, 0.0f, y, out);
            for (size_t e = 0; e < (size_t)S * out; e++) {
                double d = (double)y[e] - Y0[i][e];
                *err += d * d;
            }
        }
        free(ws);
        free(y);
    }
    free(xs);
    return st;
}

/* SmoothQuant's factors at the given alpha; alpha < 0: the alpha of 0, 0.1, ..., 1 (or no
 * smoothing at all) whose quantised group has the least output error on the sample. */
static bq_status smooth_scales(void *arg, const calib_stats *cs, linear **ls, const int *k, int n, double *s)
{
    smooth_arg *A = arg;
    const double *amax = cs->amax[k[0]];
    int in = ls[0]->in, slot = calib_gram_slot(cs, k[0]);
    double *wmax = calloc((size_t)in, sizeof *wmax), *t = malloc((size_t)in * sizeof *t);
    float *Y0[3] = {0};
    bq_status st = wmax && t ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n && !st; i++)
        for (int r = 0; r < ls[i]->out; r++)
            for (int j = 0; j < in; j++) wmax[j] = fmax(wmax[j], fabs(ls[i]->w[(size_t)r * in + j]));
    double alpha = A->q->smooth_alpha;
    /* down_proj's factors also divide up_proj's rows, whose quantisation its own output
     * error cannot see: searched, it chose alpha 0 and doubled the model's KL (int8/int8);
     * it keeps SmoothQuant's 0.5 */
    int fixed = alpha < 0 && k[0] % 7 == R_DOWN && k[0] < cs->n - 1;
    if (fixed) alpha = 0.5;
    if (!st && alpha >= 0) rule(amax, wmax, in, alpha, s);
    const float *X = cs->xs && !st && alpha < 0 ? cs->xs[slot] : NULL;
    int S = X ? cs->xrows[slot] : 0;
    if (!st && alpha < 0 && (!X || S < 1))
        st = bq_fail(BQ_ERR_ARG, "smoothquant: %s has no calibration sample to search alpha on (calibrate with smoothquant asked for)", ls[0]->name);
    for (int i = 0; i < n && !st && alpha < 0; i++) {
        if (!(Y0[i] = malloc((size_t)S * ls[i]->out * sizeof **Y0))) { st = bq_fail(BQ_ERR_NOMEM, "out of memory"); break; }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, ls[i]->out, in, 1.0f, X, in, ls[i]->w, in, 0.0f, Y0[i], ls[i]->out);
    }
    double best = INFINITY, err;
    for (int g = -1; g <= GRID && !st && alpha < 0; g++) {  /* g = -1: s = 1, no smoothing */
        if (g < 0) for (int j = 0; j < in; j++) t[j] = 1.0;
        else rule(amax, wmax, in, (double)g / GRID, t);
        for (int j = 0; j < in; j++) t[j] = fmin(fmax(t[j], 1e-5), 1e5);  /* as folded */
        if ((st = sample_error(A->q, ls, n, X, S, Y0, t, &err))) break;
        if (err < best) {
            best = err;
            memcpy(s, t, (size_t)in * sizeof *s);
            alpha = g < 0 ? -1 : (double)g / GRID;
        }
    }
    if (!st && A->q->smooth_alpha < 0) {  /* "q_proj 0.3", "gate_proj none", "down_proj 0.5 (fixed)" */
        char item[160];
        int w = snprintf(item, sizeof item, "%s%s ", A->len ? ", " : "", ls[0]->name);
        snprintf(item + w, sizeof item - (size_t)w, alpha < 0 ? "none" : fixed ? "%.1f (fixed)" : "%.1f", alpha);
        size_t il = strlen(item);
        if (A->len + il + 1 > A->cap) {
            char *p = realloc(A->note, A->cap = 2 * (A->len + il + 1));
            if (!p) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
            else A->note = p;
        }
        if (!st) { memcpy(A->note + A->len, item, il + 1); A->len += il; }
    }
    for (int i = 0; i < 3; i++) free(Y0[i]);
    free(wmax);
    free(t);
    return st;
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
        /* (not across an online rotation: down's inputs are no longer up's outputs) */
        if (!st && LINEAR_PRESENT(down) && LINEAR_PRESENT(up) && m->c.act != ACT_GELU_TANH && !m->rot_down) {
            int kd = calib_index(L, i, R_DOWN);
            st = fold_group(cs, &down, &kd, 1, NULL, up, fn, arg);
        }
    }
    return st;
}

bq_status ptq_smooth(bq_model *m, calib_stats *cs, const bq_qconfig *q)
{
    smooth_arg a = {q, NULL, 0, 0};
    bq_status st = ptq_fold_scales(m, cs, smooth_scales, &a, "smoothquant");
    if (!st && a.note) qconfig_note(q, "smoothquant: alpha chosen per input (on the calibration sample): %s", a.note);
    free(a.note);
    return st;
}
