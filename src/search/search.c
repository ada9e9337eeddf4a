/* Mixed-precision assignment: an exact multiple-choice knapsack over measured
 * per-layer sensitivities (HAWQ-style), and a seeded random sampler; the Pareto
 * front of (calibration loss, bits) over everything evaluated. */
#include "core.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* choose[i] in [0, nf): minimise sum sens[i*nf + choose[i]] subject to
 * sum params[i] * bits[choose[i]] <= budget * sum params. Exact on costs
 * rounded up to `grid` buckets of the budget (so the result never exceeds it). */
bq_status bq_knapsack(int n, int nf, const double *sens, const size_t *params, const double *bits, double budget,
                      int grid, int *choose, double *total_sens)
{
    double total = 0, cheapest = INFINITY;
    for (int i = 0; i < n; i++) total += (double)params[i];
    for (int f = 0; f < nf; f++) cheapest = fmin(cheapest, bits[f]);
    if (budget < cheapest)
        return bq_fail(BQ_ERR_ARG, "budget %.3f bits is below the cheapest format (%.3f bits)", budget, cheapest);
    if (grid < 16 || grid > (1 << 20)) return bq_fail(BQ_ERR_ARG, "bad knapsack grid %d", grid);
    double unit = budget * total / grid;
    size_t W = (size_t)grid + 1;
    double *dp = malloc(W * sizeof *dp), *nd = malloc(W * sizeof *nd);
    int *pick = malloc((size_t)n * W * sizeof *pick);
    if (!dp || !nd || !pick) { free(dp); free(nd); free(pick); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    for (size_t w = 0; w < W; w++) dp[w] = w == 0 ? 0 : INFINITY;
    for (int i = 0; i < n; i++) {
        for (size_t w = 0; w < W; w++) nd[w] = INFINITY;
        for (int f = 0; f < nf; f++) {
            size_t c = (size_t)ceil((double)params[i] * bits[f] / unit - 1e-9);
            for (size_t w = c; w < W; w++)
                if (dp[w - c] + sens[(size_t)i * nf + f] < nd[w]) {
                    nd[w] = dp[w - c] + sens[(size_t)i * nf + f];
                    pick[(size_t)i * W + w] = f;
                }
        }
        memcpy(dp, nd, W * sizeof *dp);
    }
    size_t best = 0;
    for (size_t w = 0; w < W; w++)
        if (dp[w] < dp[best]) best = w;
    bq_status st = BQ_OK;
    if (!isfinite(dp[best])) st = bq_fail(BQ_ERR_ARG, "no assignment fits a budget of %.3f bits", budget);
    else {
        if (total_sens) *total_sens = dp[best];
        for (int i = n - 1; i >= 0; i--) {  /* walk back */
            int f = pick[(size_t)i * W + best];
            choose[i] = f;
            best -= (size_t)ceil((double)params[i] * bits[f] / unit - 1e-9);
        }
    }
    free(dp);
    free(nd);
    free(pick);
    return st;
}

/* Indices of the points not dominated in (loss, bits, -density): lower loss,
 * fewer bits, higher density are better. */
int bq_pareto(int n, const double *loss, const double *bits, const double *density, int *front)
{
    int k = 0;
    for (int i = 0; i < n; i++) {
        int dominated = 0;
        for (int j = 0; j < n && !dominated; j++) {
            if (j == i) continue;
            int no_worse = loss[j] <= loss[i] && bits[j] <= bits[i] && density[j] >= density[i];
            int better = loss[j] < loss[i] || bits[j] < bits[i] || density[j] > density[i];
            dominated = no_worse && better;
        }
        if (!dominated) front[k++] = i;
    }
    return k;
}

/* ---- trials ---- */

static bq_status trial_opts(const bq_trial_opts *o)
{
    if (!o || o->size < sizeof *o) return bq_fail(BQ_ERR_ARG, "trial options without their size");
    if (o->parts < 0 || o->part < 0 || (o->parts && o->part >= o->parts))
        return bq_fail(BQ_ERR_ARG, "trial part %d of %d", o->part, o->parts);
    return BQ_OK;
}

/* The loaded model m quantised as choose says (NULL: left float), then scored. */
static bq_status score(bq_model *m, const int32_t *ids, size_t n, int nl, const int *choose, const char *const *formats,
                       const bq_trial_opts *o, double *nll, double *ppl)
{
    bq_status st = BQ_OK;
    if (choose && nl != bq_model_n_linears(m))
        st = bq_fail(BQ_ERR_ARG, "an assignment of %d linears for a model with %d", nl, bq_model_n_linears(m));
    bq_qconfig *q = NULL;
    if (!st && choose) {
        st = bq_qconfig_new(&q);
        for (int i = 0; i < nl && !st; i++) {
            if (choose[i] < 0 || !strcmp(formats[choose[i]], "fp32")) continue;
            st = bq_qconfig_add_rule(q, bq_model_linear_name(m, i), formats[choose[i]], formats[choose[i]]);
        }
        if (!st) st = bq_model_quantize(m, q, 1);
        bq_qconfig_free(q);
    }
    bq_ppl_opts po = {.ctx = o->ctx, .chunks = o->chunks, .threads = o->threads, .device = o->device};
    bq_ppl_result r;
    if (!st) st = bq_perplexity(m, ids, n, &po, &r);
    if (!st) {
        *nll = r.nll;
        if (ppl) *ppl = r.ppl;
    }
    return st;
}

bq_status bq_assignment_nll(const char *model, const int32_t *ids, size_t n, int nl, const int *choose,
                            const char *const *formats, const bq_trial_opts *o, double *nll, double *ppl)
{
    bq_status st = trial_opts(o);
    bq_model *m = NULL;
    if (!st) st = bq_model_load(model, &m);
    if (!st) st = score(m, ids, n, nl, choose, formats, o, nll, ppl);
    bq_model_free(m);
    return st;
}

bq_status bq_sensitivity(const char *model, const int32_t *ids, size_t n, const char *const *formats, int nf,
                         const bq_trial_opts *o, double *base_nll, double *sens)
{
    bq_status st = trial_opts(o);
    bq_model *m = NULL;
    if (!st) st = bq_model_load(model, &m);
    if (st) return st;
    int nl = bq_model_n_linears(m), parts = o->parts ? o->parts : 1;
    st = score(m, ids, n, nl, NULL, formats, o, base_nll, NULL);  /* the float model: this load's */
    bq_model_free(m);
    int *choose = st ? NULL : malloc((size_t)(nl ? nl : 1) * sizeof *choose);
    if (!st && !choose) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (size_t k = 0; k < (size_t)nl * nf; k++) sens[k] = 0.0;
    for (int i = 0; i < nl && !st; i++) {
        for (int f = 0; f < nf && !st; f++) {
            if ((i * nf + f) % parts != o->part) continue;
            for (int j = 0; j < nl; j++) choose[j] = -1;
            choose[i] = f;
            double nll;
            if (!(st = bq_assignment_nll(model, ids, n, nl, choose, formats, o, &nll, NULL))) sens[(size_t)i * nf + f] = nll - *base_nll;
        }
        if (!st && o->progress) o->progress(o->progress_arg, i + 1, nl);
    }
    free(choose);
    return st;
}
