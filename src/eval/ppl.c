/* Perplexity over non-overlapping windows (protocols in refs/refs.json):
 *   all:         every token after the first of each window is scored;
 *   second-half: only the last S/2 tokens of each window (refs.json's protocol);
 *   llama.cpp:   the last S/2 - 1 (what llama-perplexity scores: logits S/2 .. S-2).
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

/* The windows of o->ctx tokens that n tokens hold (at most o->chunks of them). */
static bq_status count_windows(size_t n, const bq_ppl_opts *o, size_t *windows)
{
    int S = o->ctx;
    if (S < 2) return bq_fail(BQ_ERR_ARG, "windows of at least 2 tokens are needed (ctx %d)", S);
    *windows = n / (size_t)S;
    if (o->chunks > 0 && (size_t)o->chunks < *windows) *windows = (size_t)o->chunks;
    if (*windows == 0) return bq_fail(BQ_ERR_ARG, "the text has %zu tokens, fewer than one window of %d", n, S);
    return BQ_OK;
}

/* The first position whose prediction the protocol scores: every one, the second
 * half's S/2 (from S/2 - 1), or llama-perplexity's S/2 - 1 (from S/2). */
static int first_scored(int S, int second_half) { return second_half == 2 ? S / 2 : second_half ? S / 2 - 1 : 0; }

bq_status bq_ppl_windows(size_t n, const bq_ppl_opts *o, size_t *windows) { return count_windows(n, o, windows); }

/* Each scored window's sums, and progress (called in window order). */
typedef struct {
    const bq_ppl_opts *o;
    int S, half, part, parts;
    double *nll, *nll_half, t0;
    size_t mine;
} ppl_acc;

static bq_status add_window(void *arg, size_t i, const double *lp)
{
    ppl_acc *a = arg;
    size_t w = (size_t)a->part + i * (size_t)a->parts;
    for (int t = 0; t < a->S - 1; t++) {
        if (!isfinite(lp[t]) && !a->o->allow_nonfinite)
            return bq_fail(BQ_ERR_NONFINITE, "non-finite logits in window %zu at position %d", w, t);
        a->nll[w] -= lp[t];
        if (t >= a->half) a->nll_half[w] -= lp[t];
    }
    if (a->o->progress) a->o->progress(a->o->progress_arg, i + 1, a->mine, (i + 1) * (size_t)a->S, bq_now() - a->t0);
    return BQ_OK;
}

bq_status bq_perplexity_part(const bq_model *m, const int32_t *ids, size_t n, const bq_ppl_opts *o, int part, int parts,
                             double *nll, double *nll_half)
{
    int S = o->ctx;
    size_t windows;
    bq_status st = count_windows(n, o, &windows);
    if (st) return st;
    if (parts < 1 || part < 0 || part >= parts) return bq_fail(BQ_ERR_ARG, "part %d of %d", part, parts);
    for (size_t w = 0; w < windows; w++) nll[w] = nll_half[w] = 0.0;
    if ((size_t)part >= windows) return BQ_OK;  /* more parts than windows: nothing here */
    /* both protocols are accumulated from the same forward passes */
    ppl_acc acc = {o, S, first_scored(S, o->second_half ? o->second_half : 1), part, parts, nll, nll_half, bq_now(),
                   (windows - (size_t)part + (size_t)parts - 1) / (size_t)parts};
    const int32_t **wins = malloc(acc.mine * sizeof *wins);
    bq_ctx *c = NULL;
    bq_ctx_opts co = {.size = sizeof co, .device = o->device, .threads = o->threads, .stages = o->stages};
    st = !wins ? bq_fail(BQ_ERR_NOMEM, "out of memory for %zu windows", acc.mine) : bq_ctx_new_ex(m, S, &co, &c);
    if (!st && !o->allow_nonfinite) st = bq_model_check_finite(m);
    if (!st) {
        bq_ctx_set_check(c, !o->allow_nonfinite);
        for (size_t i = 0; i < acc.mine; i++) wins[i] = ids + ((size_t)part + i * (size_t)parts) * (size_t)S;
        st = bq_score_windows(c, wins, acc.mine, S, add_window, &acc);
    }
    bq_ctx_free(c);
    free(wins);
    return st;
}

void bq_ppl_finish(const double *nll, const double *nll_half, size_t windows, const bq_ppl_opts *o, bq_ppl_result *r)
{
    int S = o->ctx;
    const int half = first_scored(S, o->second_half ? o->second_half : 1);
    double all = 0, second = 0;
    for (size_t w = 0; w < windows; w++) { all += nll[w]; second += nll_half[w]; }  /* window order: any split, the same sums */
    size_t scored = windows * (size_t)(S - 1), scored_half = windows * (size_t)(S - 1 - half);
    r->windows = windows;
    r->ppl_all = exp(all / (double)scored);
    r->ppl_second_half = exp(second / (double)scored_half);
    r->tokens_scored = o->second_half ? scored_half : scored;
    r->nll = o->second_half ? second / (double)scored_half : all / (double)scored;
    r->ppl = exp(r->nll);
}

bq_status bq_perplexity(const bq_model *m, const int32_t *ids, size_t n, const bq_ppl_opts *o, bq_ppl_result *r)
{
    size_t windows;
    bq_status st = count_windows(n, o, &windows);
    if (st) return st;
    double *nll = malloc(2 * windows * sizeof *nll), t0 = bq_now();
    if (!nll) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    if (!(st = bq_perplexity_part(m, ids, n, o, 0, 1, nll, nll + windows))) {
        bq_ppl_finish(nll, nll + windows, windows, o, r);
        r->seconds = bq_now() - t0;
    }
    free(nll);
    return st;
}

/* ---- KL divergence against a reference model -------------------------------- */

typedef struct { const float *a, *b; int V; double *kl; int *same; } kl_job;

/* KL(softmax(a) || softmax(b)) per row, in double; same: the argmaxes agree */
static void kl_rows(void *arg, size_t t0, size_t t1)
{
    const kl_job *j = arg;
    for (size_t t = t0; t < t1; t++) {
        const float *a = j->a + t * (size_t)j->V, *b = j->b + t * (size_t)j->V;
        int ia = 0, ib = 0;
        for (int v = 1; v < j->V; v++) { ia = a[v] > a[ia] ? v : ia; ib = b[v] > b[ib] ? v : ib; }
        double sa = 0, sb = 0;
        for (int v = 0; v < j->V; v++) { sa += exp((double)a[v] - a[ia]); sb += exp((double)b[v] - b[ib]); }
        double la = a[ia] + log(sa), lb = b[ib] + log(sb), kl = 0;  /* log-normalisers */
        for (int v = 0; v < j->V; v++) {
            double pa = (double)a[v] - la, pb = (double)b[v] - lb;
            kl += exp(pa) * (pa - pb);
        }
        j->kl[t] = kl;
        j->same[t] = ia == ib;
    }
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

bq_status bq_kld_rows(size_t n, const bq_ppl_opts *o, size_t *rows)
{
    size_t windows;
    bq_status st = count_windows(n, o, &windows);
    if (st) return st;
    *rows = windows * (size_t)(o->ctx - 1 - first_scored(o->ctx, o->second_half));
    return BQ_OK;
}

bq_status bq_kld_part(const bq_model *ref, const bq_model *m, const int32_t *ids, size_t n, const bq_ppl_opts *o,
                      int part, int parts, double *kl, double *same)
{
    int S = o->ctx, V = bq_model_vocab(m);
    if (bq_model_vocab(ref) != V) return bq_fail(BQ_ERR_ARG, "the reference model has another vocabulary (%d vs %d)", bq_model_vocab(ref), V);
    if (parts < 1 || part < 0 || part >= parts) return bq_fail(BQ_ERR_ARG, "part %d of %d", part, parts);
    size_t windows;
    bq_status st = count_windows(n, o, &windows);
    if (st) return st;
    int first = first_scored(S, o->second_half), rows = S - 1 - first;  /* the rows scored */
    for (size_t k = 0; k < windows * (size_t)rows; k++) kl[k] = same[k] = 0.0;
    if ((size_t)part >= windows) return BQ_OK;  /* more parts than windows: nothing here */
    float *la = malloc((size_t)S * V * 4), *lb = malloc((size_t)S * V * 4);
    int *sm = malloc((size_t)rows * sizeof *sm);
    bq_ctx *ca = NULL, *cb = NULL;
    bq_ctx_opts co = {.size = sizeof co, .device = o->device, .threads = o->threads, .stages = o->stages};
    st = !la || !lb || !sm ? bq_fail(BQ_ERR_NOMEM, "out of memory for two windows of logits")
                 : bq_ctx_new_ex(ref, S, &co, &ca);
    if (!st) st = bq_ctx_new_ex(m, S, &co, &cb);
    for (size_t w = (size_t)part; w < windows && !st; w += (size_t)parts) {
        const int32_t *win = ids + w * (size_t)S;
        double *k = kl + w * (size_t)rows;
        bq_ctx_reset(ca);
        bq_ctx_reset(cb);
        if ((st = bq_forward(ca, win, S, la, 1)) || (st = bq_forward(cb, win, S, lb, 1))) break;
        kl_job j = {la + (size_t)first * V, lb + (size_t)first * V, V, k, sm};
        bq_parallel_for((size_t)rows, o->threads, kl_rows, &j);
        for (int t = 0; t < rows && !st; t++) {
            if (!isfinite(k[t])) st = bq_fail(BQ_ERR_NONFINITE, "non-finite KL divergence in window %zu at position %d", w, first + t);
            same[w * (size_t)rows + (size_t)t] = sm[t];
        }
    }
    bq_ctx_free(ca);
    bq_ctx_free(cb);
    free(la); free(lb); free(sm);
    return st;
}

void bq_kld_finish(double *kl, const double *same, size_t count, bq_kld_result *r)
{
    double sum = 0, agree = 0;
    for (size_t k = 0; k < count; k++) { sum += kl[k]; agree += same[k]; }  /* in order: any split, the same sum */
    qsort(kl, count, sizeof *kl, cmp_double);
    r->tokens = count;
    r->kld_mean = sum / (double)count;
    r->kld_p99 = kl[(size_t)(0.99 * (double)(count - 1))];
    r->kld_max = kl[count - 1];
    r->top1 = agree / (double)count;
}

bq_status bq_kld(const bq_model *ref, const bq_model *m, const int32_t *ids, size_t n, const bq_ppl_opts *o,
                 bq_kld_result *r)
{
    size_t count;
    bq_status st = bq_kld_rows(n, o, &count);
    if (st) return st;
    double *kl = malloc(count * sizeof *kl), *same = malloc(count * sizeof *same), t0 = bq_now();
    st = !kl || !same ? bq_fail(BQ_ERR_NOMEM, "out of memory for %zu KL divergences", count)
                      : bq_kld_part(ref, m, ids, n, o, 0, 1, kl, same);
    if (!st) {
        bq_kld_finish(kl, same, count, r);
        r->seconds = bq_now() - t0;
    }
    free(kl);
    free(same);
    return st;
}
