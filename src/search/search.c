/* Mixed-precision assignment: an exact multiple-choice knapsack over measured
 * per-layer sensitivities (HAWQ-style), and a seeded random sampler; the Pareto
 * front of (calibration loss, bits) over everything evaluated. */
#include "core.h"
#include "model.h"
#include "quant.h"
#include <math.h>
#include <stdio.h>
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

/* The loaded model m scored with linear i quantised to formats[choose[i]] (weights and
 * input; choose NULL or -1: left as loaded). The quantised linears are trial copies
 * (ptq_trial_linear) swapped in for the scoring and out after it: m comes back as it
 * was, so one load serves every trial. */
static bq_status score(bq_model *m, const int32_t *ids, size_t n, int nl, const int *choose, const char *const *formats,
                       const bq_trial_opts *o, double *nll, double *ppl)
{
    bq_status st = BQ_OK;
    if (choose && nl != bq_model_n_linears(m))
        st = bq_fail(BQ_ERR_ARG, "an assignment of %d linears for a model with %d", nl, bq_model_n_linears(m));
    bq_qconfig *q = NULL;  /* its default options: what bq_model_quantize would round with */
    linear *kept = NULL;   /* the swapped-out linears, as loaded */
    int swapped = 0;
    if (!st && choose) {
        st = bq_qconfig_new(&q);
        if (!st && !(kept = malloc((size_t)(nl ? nl : 1) * sizeof *kept))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        if (!st) m->qopts = q->opts;
        for (int i = 0; i < nl && !st; i++, swapped = i) {
            linear *l = model_nth_linear(m, i), t;
            kept[i] = *l;
            if (choose[i] < 0 || !strcmp(formats[choose[i]], "fp32")) continue;
            if (!(st = ptq_trial_linear(l, formats[choose[i]], formats[choose[i]], &q->opts, &t))) *l = t;
        }
    }
    bq_ppl_opts po = {.ctx = o->ctx, .chunks = o->chunks, .threads = o->threads, .device = o->device};
    bq_ppl_result r;
    if (!st) st = bq_perplexity(m, ids, n, &po, &r);
    if (!st) {
        *nll = r.nll;
        if (ppl) *ppl = r.ppl;
    }
    for (int i = 0; i < swapped; i++) {
        linear *l = model_nth_linear(m, i), t = *l;
        *l = kept[i];
        ptq_trial_free(l, &t);
    }
    free(kept);
    bq_qconfig_free(q);
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

/* bq_sensitivity on the loaded model m. */
static bq_status sensitivity(bq_model *m, const int32_t *ids, size_t n, const char *const *formats, int nf,
                             const bq_trial_opts *o, double *base_nll, double *sens)
{
    int nl = bq_model_n_linears(m), parts = o->parts ? o->parts : 1;
    bq_status st = score(m, ids, n, nl, NULL, formats, o, base_nll, NULL);  /* the float model */
    int *choose = st ? NULL : malloc((size_t)(nl ? nl : 1) * sizeof *choose);
    if (!st && !choose) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (size_t k = 0; k < (size_t)nl * nf; k++) sens[k] = 0.0;
    for (int i = 0; i < nl && !st; i++) {
        for (int f = 0; f < nf && !st; f++) {
            if ((i * nf + f) % parts != o->part) continue;
            for (int j = 0; j < nl; j++) choose[j] = -1;
            choose[i] = f;
            double nll;
            if (!(st = score(m, ids, n, nl, choose, formats, o, &nll, NULL))) sens[(size_t)i * nf + f] = nll - *base_nll;
        }
        if (!st && o->progress) o->progress(o->progress_arg, i + 1, nl);
    }
    free(choose);
    return st;
}

bq_status bq_sensitivity(const char *model, const int32_t *ids, size_t n, const char *const *formats, int nf,
                         const bq_trial_opts *o, double *base_nll, double *sens)
{
    bq_status st = trial_opts(o);
    bq_model *m = NULL;
    if (!st) st = bq_model_load(model, &m);
    if (!st) st = sensitivity(m, ids, n, formats, nf, o, base_nll, sens);
    bq_model_free(m);
    return st;
}

/* ---- the search ---- */

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return *s;
}

/* A random assignment within the budget: uniform choice per linear, then random
 * downgrades of linears above the cheapest format until the average fits. */
static void sample_assign(uint64_t *rng, int nl, int nf, const size_t *params, const double *bits, double budget,
                          int cheapest, int *choose)
{
    double tp = 0, tb = 0;
    for (int i = 0; i < nl; i++) {
        choose[i] = (int)(rng_next(rng) % (uint64_t)nf);
        tp += (double)params[i];
        tb += (double)params[i] * bits[choose[i]];
    }
    for (int guard = 0; tb > budget * tp && guard < 100000; guard++) {
        int i = (int)(rng_next(rng) % (uint64_t)nl);
        if (choose[i] == cheapest) continue;
        int next = cheapest;  /* the next cheaper format */
        for (int f = 0; f < nf; f++)
            if (bits[f] < bits[choose[i]] && bits[f] > bits[next]) next = f;
        tb -= (double)params[i] * (bits[choose[i]] - bits[next]);
        choose[i] = next;
    }
}

void bq_search_result_free(bq_search_result *r)
{
    if (!r) return;
    free(r->choose); free(r->nll); free(r->bits); free(r->density); free(r->pareto); free(r->kind); free(r->sens);
    free(r);
}

/* Every format on every linear before any trial runs: a block longer than a linear's
 * input, a packed model's other format, a name that does not parse fail here. */
static bq_status formats_fit(bq_model *m, const char *const *formats, int nf, int nl)
{
    bq_status st = BQ_OK;
    for (int f = 0; f < nf && !st; f++) {
        bq_format *fm;
        if ((st = bq_format_parse(formats[f], &fm))) break;
        bq_format_info in;
        bq_format_get_info(fm, &in);
        bq_format_free(fm);
        for (int i = 0; i < nl && !st; i++) {
            const linear *l = model_nth_linear(m, i);
            if (in.block > l->in)
                st = bq_fail(BQ_ERR_SHAPE, "%s: format %s has blocks of %d but the reduction dimension is %d", l->name,
                             formats[f], in.block, l->in);
        }
        if (!st && nl) {  /* one real trial copy: what else a model refuses (a packed one's other formats) */
            linear t;
            bq_qopts qo = {0};
            if (!(st = ptq_trial_linear(model_nth_linear(m, 0), formats[f], formats[f], &qo, &t)))
                ptq_trial_free(model_nth_linear(m, 0), &t);
        }
    }
    return st;
}

/* The processes' sums (o->reduce) after each did its part; a failure anywhere fails all. */
static bq_status reduced(const bq_search_opts *o, bq_status st, double *v, size_t n)
{
    if (!o->reduce) return st;
    int any = o->reduce(o->arg, v, n, st != BQ_OK);
    if (st) return st;
    return any ? bq_fail(BQ_ERR_UNSUPPORTED, "search: another process failed") : BQ_OK;
}

bq_status bq_search(const char *model, const int32_t *ids, size_t n, const char *const *formats, int nf,
                    const bq_search_opts *o, bq_search_result **out)
{
    *out = NULL;
    if (!o || o->size < sizeof *o) return bq_fail(BQ_ERR_ARG, "search options without their size");
    bq_status st = trial_opts(&o->trial);
    if (st) return st;
    if (nf < 1 || !formats || !o->bits || !o->area) return bq_fail(BQ_ERR_ARG, "search: no formats, or their bits or areas");
    if (o->trials < 0) return bq_fail(BQ_ERR_ARG, "search: %d random trials", o->trials);
    int cheapest = 0;
    for (int f = 0; f < nf; f++)
        if (o->bits[f] < o->bits[cheapest]) cheapest = f;
    if (!(o->budget >= o->bits[cheapest]))
        return bq_fail(BQ_ERR_ARG, "impossible budget %.3f bits: the cheapest format given, %s, takes %.3f bits per element",
                       o->budget, formats[cheapest], o->bits[cheapest]);
    bq_model *m;
    if ((st = bq_model_load(model, &m))) return st;
    int nl = bq_model_n_linears(m), np = 1 + nf + o->trials;
    bq_search_result *r = calloc(1, sizeof *r);
    size_t *params = malloc((size_t)(nl ? nl : 1) * sizeof *params);
    if (r) {
        r->n_points = np; r->n_linears = nl; r->n_formats = nf;
        r->choose = malloc((size_t)np * (nl ? nl : 1) * sizeof *r->choose);
        r->nll = calloc((size_t)np, sizeof *r->nll);
        r->bits = calloc((size_t)np, sizeof *r->bits);
        r->density = calloc((size_t)np, sizeof *r->density);
        r->pareto = calloc((size_t)np, sizeof *r->pareto);
        r->kind = calloc((size_t)np, sizeof *r->kind);
        r->sens = calloc((size_t)(nl ? nl : 1) * nf, sizeof *r->sens);
    }
    if (!r || !params || !r->choose || !r->nll || !r->bits || !r->density || !r->pareto || !r->kind || !r->sens)
        st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int i = 0; i < nl && !st; i++) params[i] = bq_model_linear_params(m, i);
    if (!st) st = formats_fit(m, formats, nf, nl);
    if (!st) {  /* each process's share of the trials (the progress is the first's) */
        bq_trial_opts to = o->trial;
        to.progress = NULL;
        st = sensitivity(m, ids, n, formats, nf, &to, &r->base_nll, r->sens);
    }
    if (!st || o->reduce) st = reduced(o, st, r ? r->sens : NULL, r ? (size_t)nl * nf : 0);
    /* the points: the knapsack, the uniform assignments, the seeded random samples
     * (every process makes the same ones) */
    if (!st) {
        st = bq_knapsack(nl, nf, r->sens, params, o->bits, o->budget, 4096, r->choose, NULL);
        snprintf(r->kind[0], sizeof r->kind[0], "knapsack");
    }
    for (int f = 0; f < nf && !st; f++) {
        for (int i = 0; i < nl; i++) r->choose[(size_t)(1 + f) * nl + i] = f;
        snprintf(r->kind[1 + f], sizeof r->kind[1 + f], "uniform %.63s", formats[f]);
    }
    uint64_t rng = o->seed * 0x9e3779b97f4a7c15ull + 0x2545f4914f6cdd1dull;
    for (int k = 0; k < o->trials && !st; k++) {
        sample_assign(&rng, nl, nf, params, o->bits, o->budget, cheapest, r->choose + (size_t)(1 + nf + k) * nl);
        snprintf(r->kind[1 + nf + k], sizeof r->kind[1 + nf + k], "trial %d", k);
    }
    /* scoring: point j by process j % parts; a random trial an earlier run scored is recalled */
    int parts = o->trial.parts ? o->trial.parts : 1, mine = 0;
    for (int j = 1 + nf; j < np; j++) mine += j % parts == o->trial.part;
    double recalled = 0;
    for (int j = 0, done = 0; j < np && !st; j++) {
        if (j % parts != o->trial.part) continue;
        int k = j - 1 - nf;  /* the random trial's number */
        const int *ch = r->choose + (size_t)j * nl;
        if (k >= 0 && o->recall && o->recall(o->arg, k, nl, ch, &r->nll[j])) recalled++;
        else if ((st = score(m, ids, n, nl, ch, formats, &o->trial, &r->nll[j], NULL))) break;
        else if (k >= 0 && o->record) o->record(o->arg, k, nl, ch, r->nll[j]);
        if (k >= 0 && o->progress) o->progress(o->arg, ++done, mine);
    }
    if (r && r->nll) {
        for (int j = 0; j < np; j++)
            if (j % parts != o->trial.part) r->nll[j] = 0.0;
        st = reduced(o, st, r->nll, (size_t)np);
        if (!st) st = reduced(o, st, &recalled, 1);
    }
    if (!st) {
        r->recalled = (int)recalled;
        double tp = 0;
        for (int i = 0; i < nl; i++) tp += (double)params[i];
        for (int j = 0; j < np; j++) {
            double tb = 0, ta = 0;
            for (int i = 0; i < nl; i++) {
                int f = r->choose[(size_t)j * nl + i];
                tb += (double)params[i] * o->bits[f];
                ta += (double)params[i] * o->area[f];
            }
            r->bits[j] = tb / tp;
            r->density[j] = o->fp32_area / (ta / tp);
        }
        int *front = malloc((size_t)np * sizeof *front);
        if (!front) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        int nfront = front ? bq_pareto(np, r->nll, r->bits, r->density, front) : 0;
        for (int k = 0; k < nfront; k++) r->pareto[front[k]] = 1;
        free(front);
    }
    free(params);
    bq_model_free(m);
    if (st) bq_search_result_free(r);
    else *out = r;
    return st;
}
