/* Perplexity over non-overlapping windows (protocols in refs/refs.json):
 *   all:         every token after the first of each window is scored;
 *   second-half: only the last S/2 tokens of each window (llama.cpp's protocol).
 * Each window starts from an empty cache; the remainder shorter than S is dropped. */
#include "core.h"
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

bq_status bq_perplexity(const bq_model *m, const int32_t *ids, size_t n, const bq_ppl_opts *o, bq_ppl_result *r)
{
    int S = o->ctx;
    if (S < 2) return bq_fail(BQ_ERR_ARG, "--ctx must be at least 2");
    size_t windows = n / (size_t)S;
    if (o->chunks > 0 && (size_t)o->chunks < windows) windows = (size_t)o->chunks;
    if (windows == 0)
        return bq_fail(BQ_ERR_ARG, "the text has %zu tokens, fewer than one window of %d", n, S);
    double *lp = malloc((size_t)S * sizeof *lp);
    bq_ctx *c = NULL;
    bq_ctx_opts co = {.size = sizeof co, .device = o->device, .threads = o->threads};
    bq_status st = !lp ? bq_fail(BQ_ERR_NOMEM, "out of memory for log-probabilities") : bq_ctx_new_ex(m, S, &co, &c);
    if (!st && !o->allow_nonfinite) st = bq_model_check_finite(m);
    if (!st) bq_ctx_set_check(c, !o->allow_nonfinite);
    /* both protocols are accumulated from the same forward passes */
    double nll = 0, nll_half = 0, t0 = bq_now();
    size_t scored = 0, scored_half = 0;
    const int half = S / 2 - 1;  /* position whose logits predict the first second-half token */
    for (size_t w = 0; w < windows && !st; w++) {
        const int32_t *win = ids + w * (size_t)S;
        bq_ctx_reset(c);
        if ((st = bq_forward_logprobs(c, win, S, lp))) break;
        for (int t = 0; t < S - 1; t++) {
            if (!isfinite(lp[t]) && !o->allow_nonfinite) {
                st = bq_fail(BQ_ERR_NONFINITE, "non-finite logits in window %zu at position %d", w, t);
                break;
            }
            nll -= lp[t];
            scored++;
            if (t >= half) { nll_half -= lp[t]; scored_half++; }
        }
        if (o->progress) o->progress(o->progress_arg, w + 1, windows, (w + 1) * (size_t)S, bq_now() - t0);
    }
    bq_ctx_free(c);
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
