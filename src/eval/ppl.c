/* Perplexity over non-overlapping windows (protocols in refs/refs.json):
 *   all:         every token after the first of each window is scored;
 *   second-half: only the last S/2 tokens of each window (llama.cpp's protocol).
 * Each window starts from an empty cache; the remainder shorter than S is dropped. */
#include "core.h"
#include "bq_cuda.h"
#include <math.h>
#include <stdlib.h>
#include <time.h>

double log_softmax_at(const float *row, int V, int tok, int *is_argmax)
{
    float mx = -INFINITY;
    int best = 0;
    for (int v = 0; v < V; v++)
        if (row[v] > mx) { mx = row[v]; best = v; }
    double se = 0;
    for (int v = 0; v < V; v++) se += (double)expf(row[v] - mx);
    if (is_argmax) *is_argmax = best == tok;
    return (double)row[tok] - mx - log(se);
}

/* log p(next token) for each position, in parallel; summed in order afterwards. */
typedef struct { const float *lg; const int32_t *win; double *lp; int V; } lp_job;

static void logprobs(void *arg, size_t t0, size_t t1)
{
    const lp_job *j = arg;
    for (size_t t = t0; t < t1; t++) j->lp[t] = log_softmax_at(j->lg + t * (size_t)j->V, j->V, j->win[t + 1], NULL);
}

bq_status bq_perplexity(const bq_model *m, const int32_t *ids, size_t n, const bq_ppl_opts *o, bq_ppl_result *r)
{
    int S = o->ctx;
    if (S < 2) return bq_fail(BQ_ERR_ARG, "--ctx must be at least 2");
    size_t windows = n / (size_t)S;
    if (o->chunks > 0 && (size_t)o->chunks < windows) windows = (size_t)o->chunks;
    if (windows == 0)
        return bq_fail(BQ_ERR_ARG, "the text has %zu tokens, fewer than one window of %d", n, S);
    int V = bq_model_vocab(m);
    float *lg = o->device ? NULL : malloc((size_t)S * V * sizeof *lg);  /* the GPU keeps its logits */
    double *lp = malloc((size_t)S * sizeof *lp);
    bq_ctx *c = NULL;
    bq_cuda_model *g = NULL;
    bq_status st = (!lg && !o->device) || !lp ? bq_fail(BQ_ERR_NOMEM, "out of memory for logits")
                   : o->device ? bq_cuda_model_new(m, S, &g) : bq_ctx_new(m, S, &c);
    if (!st && !o->allow_nonfinite) st = bq_model_check_finite(m);
    if (!st && c) bq_ctx_set_check(c, !o->allow_nonfinite);
    /* both protocols are accumulated from the same forward passes */
    double nll = 0, nll_half = 0, t0 = bq_now();
    size_t scored = 0, scored_half = 0;
    const int half = S / 2 - 1;  /* position whose logits predict the first second-half token */
    for (size_t w = 0; w < windows && !st; w++) {
        const int32_t *win = ids + w * (size_t)S;
        if (g) {  /* the whole window on the GPU; log-probabilities come back */
            if ((st = bq_cuda_window_logprobs(g, win, S, lp))) break;
        } else {
            bq_ctx_reset(c);
            if ((st = bq_forward(c, win, S, lg, 1))) break;
            lp_job j = {lg, win, lp, V};
            bq_parallel_for((size_t)S - 1, o->threads, logprobs, &j);
        }
        for (int t = 0; t < S - 1; t++) {
            if (!isfinite(lp[t]) && !o->allow_nonfinite) {
                st = bq_fail(BQ_ERR_NONFINITE, "non-finite logits in window %zu at position %d (use --allow-nonfinite to go on)", w, t);
                break;
            }
            nll -= lp[t];
            scored++;
            if (t >= half) { nll_half -= lp[t]; scored_half++; }
        }
        if (o->progress) o->progress(o->progress_arg, w + 1, windows, (w + 1) * (size_t)S, bq_now() - t0);
    }
    bq_ctx_free(c);
    bq_cuda_model_free(g);
    free(lg);
    free(lp);
    if (st) return st;
    r->windows = windows;
    r->ppl_all = exp(nll / (double)scored);
    r->ppl_second_half = exp(nll_half / (double)scored_half);
    r->tokens_scored = o->second_half ? scored_half : scored;
    r->nll = o->second_half ? nll_half / (double)scored_half : nll / (double)scored;
    r->ppl = exp(r->nll);
    r->seconds = bq_now() - t0;
    return BQ_OK;
}
