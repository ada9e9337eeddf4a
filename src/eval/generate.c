/* Generation: the prompt in one forward pass, then one token at a time from the
 * KV cache; greedy at temperature 0, else top-p sampling with a seeded RNG
 * (xorshift64: the same seed gives the same tokens on every machine). Timings
 * for the prompt and the new tokens are kept apart, as llama.cpp reports them. */
#include "core.h"
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <time.h>

uint64_t bq_sampler_seed(uint64_t seed) { return seed * 0x9e3779b97f4a7c15ull + 1; }

int32_t bq_sample(const float *logits, int V, double temperature, double top_p, uint64_t *rng)
{
    int best = 0;
    for (int j = 1; j < V; j++) best = logits[j] > logits[best] ? j : best;
    if (temperature <= 0) return best;
    double *p = malloc((size_t)V * sizeof *p), sum = 0;
    int *idx = malloc((size_t)V * sizeof *idx);
    if (!p || !idx) { free(p); free(idx); return best; }
    for (int j = 0; j < V; j++) { p[j] = exp((logits[j] - logits[best]) / temperature); sum += p[j]; idx[j] = j; }
    /* indices by probability, descending; the smallest prefix with mass >= top_p is kept */
    for (int i = 1; i < V; i++) {
        int k = idx[i], j = i - 1;
        while (j >= 0 && p[idx[j]] < p[k]) { idx[j + 1] = idx[j]; j--; }
        idx[j + 1] = k;
        if (i > 2048) break;  /* the tail beyond the top 2048 never matters at sane top_p */
    }
    double keep = 0;
    int cut = 0;
    while (cut < V && keep < top_p * sum) keep += p[idx[cut++]];
    *rng ^= *rng << 13; *rng ^= *rng >> 7; *rng ^= *rng << 17;
    double u = (double)(*rng >> 11) * 0x1p-53 * keep, acc = 0;
    int choice = idx[0];
    for (int i = 0; i < cut; i++) { acc += p[idx[i]]; if (u < acc) { choice = idx[i]; break; } }
    free(p);
    free(idx);
    return choice;
}

bq_status bq_generate(const bq_model *m, const int32_t *prompt, size_t n, const bq_gen_opts *o, int32_t *out,
                      bq_gen_result *r)
{
    /* older callers' options end before .device (they run on the CPU) */
    if (!o || o->size < offsetof(bq_gen_opts, device))
        return bq_fail(BQ_ERR_ARG, "generate: options without their size (set .size = sizeof(bq_gen_opts))");
    if (n == 0) return bq_fail(BQ_ERR_ARG, "generate: the prompt is empty");
    if (o->n_new < 0 || !(o->top_p > 0 && o->top_p <= 1) || !(o->temperature >= 0))
        return bq_fail(BQ_ERR_ARG, "generate: n_new >= 0, temperature >= 0 and top_p in (0, 1] are required");
    if (n + (size_t)o->n_new > (size_t)1 << 24) return bq_fail(BQ_ERR_ARG, "generate: %zu tokens are too many", n + (size_t)o->n_new);
    bq_gen_result res = {0};
    int V = bq_model_vocab(m);
    float *lg = malloc((size_t)V * sizeof *lg);
    bq_ctx *c = NULL;
#define GEN_HAS(field) (o->size >= offsetof(bq_gen_opts, field) + sizeof o->field)
    bq_ctx_opts co = {.size = sizeof co, .device = GEN_HAS(device) ? o->device : 0, .eager = GEN_HAS(eager) ? o->eager : 0,
                      .stages = GEN_HAS(stages) ? o->stages : 0};
#undef GEN_HAS
    bq_status st = lg ? bq_ctx_new_ex(m, (int)(n + (size_t)o->n_new), &co, &c) : bq_fail(BQ_ERR_NOMEM, "out of memory");
    if (!st) bq_ctx_set_check(c, !o->allow_nonfinite);
    double t0 = bq_now();
    if (!st) st = bq_forward(c, prompt, (int)n, lg, 0);
    res.prompt_seconds = bq_now() - t0;
    res.prompt_tokens = n;
    uint64_t rng = bq_sampler_seed(o->seed);
    t0 = bq_now();
    for (int i = 0; i < o->n_new && !st; i++) {
        int32_t next = bq_sample(lg, V, o->temperature, o->top_p, &rng);
        out[i] = next;
        res.gen_tokens++;
        if (o->on_token) o->on_token(o->arg, next);
        if (i + 1 < o->n_new) st = bq_forward(c, &next, 1, lg, 0);
    }
    res.gen_seconds = bq_now() - t0;
    if (r) *r = res;
    bq_ctx_free(c);
    free(lg);
    return st;
}
