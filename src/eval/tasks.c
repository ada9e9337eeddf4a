/* Downstream tasks scored by log-likelihood, as lm-evaluation-harness scores them
 * (docs/tasks.md):
 *   multiple choice: the continuation of each choice is tok(context + choice) past
 *     tok(context); acc picks the largest summed log-likelihood, acc_norm the largest
 *     per byte of the choice; the context runs once, and each choice continues from
 *     its cache (bq_ctx_truncate back to the context between choices);
 *   cloze: the target's tokens the same way; correct when every one is the greedy
 *     (argmax) token; ppl = exp(-mean over items of the target's log-likelihood).
 * Too long: the context loses tokens on the left until context + the longest
 * continuation fit max_ctx. Standard errors are the sample standard deviation over
 * sqrt(n), as the harness reports them. */
#include "core.h"
#include "model.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const bq_model *m;
    const bq_tokenizer *t;
    bq_ctx *c;
    float *lg, *last;  /* [max_ctx, V] logits; the context's last row */
    int V, max_ctx;
    size_t computed, reused;
} scorer;

static bq_status encode(const scorer *s, const char *a, const char *b, int32_t **ids, size_t *n)
{
    size_t la = strlen(a), lb = b ? strlen(b) : 0;
    char *txt = malloc(la + lb + 1);
    if (!txt) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    memcpy(txt, a, la);
    if (b) memcpy(txt + la, b, lb);
    bq_status st = bq_tokenize(s->t, txt, la + lb, ids, n);
    free(txt);
    return st;
}

/* Log-likelihood of cont[0..m) after the cached context of length P, whose last
 * logits are s->last; *greedy: every token was the argmax. */
static bq_status cont_ll(scorer *s, int P, const int32_t *cont, int m, double *ll, int *greedy)
{
    bq_ctx_truncate(s->c, P);
    int g;
    *ll = log_softmax_at(s->last, s->V, cont[0], &g);
    *greedy = g;
    if (m < 2) return BQ_OK;
    bq_status st = bq_forward(s->c, cont, m - 1, s->lg, 1);
    s->computed += (size_t)m - 1;
    for (int j = 1; j < m && !st; j++) {
        *ll += log_softmax_at(s->lg + (size_t)(j - 1) * s->V, s->V, cont[j], &g);
        *greedy &= g;
    }
    return st;
}

/* The context cached (left-truncated to leave room for `room` tokens); 0 = skipped. */
static bq_status run_context(scorer *s, const int32_t *ctx, size_t n, size_t room, int *P)
{
    if (room >= (size_t)s->max_ctx || n == 0) { *P = 0; return BQ_OK; }
    size_t keep = n + room > (size_t)s->max_ctx ? (size_t)s->max_ctx - room : n;
    bq_ctx_reset(s->c);
    bq_status st = bq_forward(s->c, ctx + (n - keep), (int)keep, s->last, 0);
    s->computed += keep;
    *P = st ? 0 : (int)keep;
    return st;
}

static double mean(const double *x, size_t n) { double a = 0; for (size_t i = 0; i < n; i++) a += x[i]; return n ? a / n : NAN; }
static double stderr_of(const double *x, size_t n)
{
    if (n < 2) return NAN;
    double mu = mean(x, n), v = 0;
    for (size_t i = 0; i < n; i++) v += (x[i] - mu) * (x[i] - mu);
    return sqrt(v / (double)(n - 1)) / sqrt((double)n);
}

/* One item; *score gets acc, acc_norm (MC) or greedy, ll (cloze); skipped: 1. */
static bq_status score_item(scorer *s, const cJSON *it, int mc, double out[2], int *skipped, const bq_eval_opts *o, size_t index)
{
    const char *context = cJSON_GetObjectItemCaseSensitive(it, "context")->valuestring;
    int32_t *ctx = NULL;
    size_t nc;
    bq_status st = encode(s, context, NULL, &ctx, &nc);
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(it, mc ? "choices" : "target");
    int k = mc ? cJSON_GetArraySize(ch) : 1;
    int32_t **conts = calloc((size_t)k, sizeof *conts);
    size_t *lens = calloc((size_t)k, sizeof *lens), longest = 0;
    if (!st && (!conts || !lens)) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int i = 0; i < k && !st; i++) {
        const char *c = mc ? cJSON_GetArrayItem(ch, i)->valuestring : ch->valuestring;
        int32_t *whole;
        size_t nw;
        if ((st = encode(s, context, c, &whole, &nw))) break;
        size_t skip = nw > nc ? nc : nw;  /* the harness's slice: tok(context + c)[len(tok(context)):] */
        lens[i] = nw - skip;
        conts[i] = malloc((lens[i] + 1) * sizeof **conts);
        if (conts[i]) memcpy(conts[i], whole + skip, lens[i] * sizeof **conts);
        free(whole);
        if (!conts[i]) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        if (lens[i] > longest) longest = lens[i];
    }
    int P = 0;
    *skipped = 0;
    for (int i = 0; i < k && !st; i++) *skipped |= lens[i] == 0;
    if (!st && !*skipped) st = run_context(s, ctx, nc, longest, &P);
    if (!st && !*skipped && P == 0) *skipped = 1;
    double best = -INFINITY, best_norm = -INFINITY, *lls = calloc((size_t)k, sizeof *lls);
    int pick = 0, pick_norm = 0;
    if (!st && !lls) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int i = 0; i < k && !st && !*skipped; i++) {
        double ll;
        int greedy;
        if ((st = cont_ll(s, P, conts[i], (int)lens[i], &ll, &greedy))) break;
        lls[i] = ll;
        if (!mc) { out[0] = greedy; out[1] = ll; break; }
        if (i) s->reused += (size_t)P;
        double bytes = (double)strlen(cJSON_GetArrayItem(ch, i)->valuestring);
        if (ll > best) { best = ll; pick = i; }
        if (ll / (bytes > 0 ? bytes : 1) > best_norm) { best_norm = ll / (bytes > 0 ? bytes : 1); pick_norm = i; }
    }
    if (mc && !st && !*skipped) {
        int gold = cJSON_GetObjectItemCaseSensitive(it, "gold")->valueint;
        out[0] = pick == gold;
        out[1] = pick_norm == gold;
    }
    if (!st && !*skipped && o->on_item) o->on_item(o->arg, index, lls, k);
    free(lls);
    for (int i = 0; conts && i < k; i++) free(conts[i]);
    free(conts);
    free(lens);
    free(ctx);
    return st;
}

/* A line's item, checked: the kind (1 MC, 0 cloze) or an error naming the line. */
static bq_status check_item(const cJSON *it, const char *path, int line, int *mc)
{
    if (!cJSON_IsObject(it)) return bq_fail(BQ_ERR_PARSE, "%s:%d: not a JSON object", path, line);
    bq_status st = json_unique_keys(it, path);
    if (st) return bq_fail(st, "%s:%d: %s", path, line, bq_last_error());
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(it, "context"), *ch = cJSON_GetObjectItemCaseSensitive(it, "choices"),
                *g = cJSON_GetObjectItemCaseSensitive(it, "gold"), *t = cJSON_GetObjectItemCaseSensitive(it, "target");
    if (!cJSON_IsString(c)) return bq_fail(BQ_ERR_PARSE, "%s:%d: needs a \"context\" string", path, line);
    if (ch && t) return bq_fail(BQ_ERR_PARSE, "%s:%d: has both \"choices\" and \"target\"", path, line);
    if (t) {
        if (!cJSON_IsString(t) || !*t->valuestring) return bq_fail(BQ_ERR_PARSE, "%s:%d: \"target\" must be a non-empty string", path, line);
        *mc = 0;
        return BQ_OK;
    }
    int n = cJSON_GetArraySize(ch);
    if (!cJSON_IsArray(ch) || n < 1) return bq_fail(BQ_ERR_PARSE, "%s:%d: \"choices\" must be a non-empty list", path, line);
    for (const cJSON *x = ch->child; x; x = x->next)
        if (!cJSON_IsString(x) || !*x->valuestring) return bq_fail(BQ_ERR_PARSE, "%s:%d: every choice must be a non-empty string", path, line);
    if (!cJSON_IsNumber(g) || g->valuedouble != (double)(int)g->valuedouble || g->valuedouble < 0 || g->valuedouble >= n)
        return bq_fail(BQ_ERR_PARSE, "%s:%d: \"gold\" must be an index into the %d choices", path, line, n);
    *mc = 1;
    return BQ_OK;
}

void bq_eval_summarise(int multiple_choice, const double *acc, const double *second, size_t n, bq_eval_result *r)
{
    r->acc = mean(acc, n);
    r->acc_stderr = stderr_of(acc, n);
    if (multiple_choice) { r->acc_norm = mean(second, n); r->acc_norm_stderr = stderr_of(second, n); r->ppl = NAN; }
    else { r->acc_norm = r->acc_norm_stderr = NAN; r->ppl = exp(-mean(second, n)); }
}

bq_status bq_eval_file(const bq_model *m, const bq_tokenizer *t, const char *path, const bq_eval_opts *o, bq_eval_result *r)
{
    memset(r, 0, sizeof *r);
    if (!o || o->size < offsetof(bq_eval_opts, device) || o->max_ctx < 2 || o->limit < 0)  /* older callers end before .device */
        return bq_fail(BQ_ERR_ARG, "eval: options without their size, max_ctx < 2 or a negative limit");
    char *text;
    size_t len;
    bq_status st = bq_read_file(path, (void **)&text, &len);
    if (st) return st;
    scorer s = {m, t, NULL, NULL, NULL, bq_model_vocab(m), o->max_ctx, 0, 0};
    s.lg = malloc((size_t)o->max_ctx * s.V * sizeof *s.lg);
    s.last = malloc((size_t)s.V * sizeof *s.last);
    double *a = NULL, *b = NULL;
    size_t cap = 0, n = 0;
    if (!s.lg || !s.last) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
#define EVAL_HAS(f) (o->size >= offsetof(bq_eval_opts, f) + sizeof o->f)
    bq_ctx_opts co = {.size = sizeof co, .device = EVAL_HAS(device) ? o->device : 0, .stages = EVAL_HAS(stages) ? o->stages : 0};
#undef EVAL_HAS
    if (!st && !(st = bq_ctx_new_ex(m, o->max_ctx, &co, &s.c))) bq_ctx_set_check(s.c, !o->allow_nonfinite);
    int kind = -1, line = 0;
    int has_part = o->size >= offsetof(bq_eval_opts, on_score) + sizeof o->on_score;
    int parts = has_part && o->parts > 1 ? o->parts : 1, part = parts > 1 ? o->part : 0;
    if (!st && (part < 0 || part >= parts)) st = bq_fail(BQ_ERR_ARG, "eval: part %d of %d", part, parts);
    size_t idx = 0;  /* items read, scored here or not */
    double t0 = bq_now();
    for (size_t p = 0; p < len && !st && (!o->limit || idx < (size_t)o->limit);) {
        size_t e = p;
        while (e < len && text[e] != '\n') e++;
        line++;
        size_t q = p;
        while (q < e && (text[q] == ' ' || text[q] == '\t' || text[q] == '\r')) q++;
        if (q < e) {
            cJSON *it = cJSON_ParseWithLength(text + p, e - p);
            int mc = 0;
            if (!it) st = bq_fail(BQ_ERR_PARSE, "%s:%d: not valid JSON", path, line);
            else st = check_item(it, path, line, &mc);
            if (!st && kind >= 0 && mc != kind)
                st = bq_fail(BQ_ERR_PARSE, "%s:%d: a %s item in a %s file", path, line, mc ? "multiple-choice" : "cloze",
                             kind ? "multiple-choice" : "cloze");
            kind = mc;
            if (!st && n == cap) {
                cap = cap ? 2 * cap : 256;
                double *na = realloc(a, cap * sizeof *a), *nb = na ? realloc(b, cap * sizeof *b) : NULL;
                if (na) a = na;
                if (nb) b = nb;
                if (!na || !nb) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
            }
            double out[2] = {0, 0};
            int skipped = 0, mine = idx % (size_t)parts == (size_t)part;
            if (!st && mine) st = score_item(&s, it, mc, out, &skipped, o, idx);
            if (!st && mine && skipped) r->skipped++;
            else if (!st && mine) {
                a[n] = out[0]; b[n] = out[1]; n++;
                if (has_part && o->on_score) o->on_score(o->arg, idx, out[0], out[1]);
            }
            idx++;
            if (st && !strstr(bq_last_error(), path)) st = bq_fail(st, "%s:%d: %s", path, line, bq_last_error());
            cJSON_Delete(it);
        }
        p = e + 1;
    }
    if (!st && kind < 0) st = bq_fail(BQ_ERR_PARSE, "%s: no items", path);
    if (!st) {
        snprintf(r->kind, sizeof r->kind, "%s", kind ? "multiple_choice" : "cloze");
        r->items = n;
        bq_eval_summarise(kind, a, b, n, r);
        r->tokens_computed = s.computed;
        r->tokens_reused = s.reused;
        r->seconds = bq_now() - t0;
    }
    bq_ctx_free(s.c);
    free(s.lg);
    free(s.last);
    free(a);
    free(b);
    free(text);
    return st;
}
