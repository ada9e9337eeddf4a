/* Downstream tasks (issue 19): bq_eval_file's log-likelihoods against an
 * independent computation with bq_model_logits on the whole sequence (the scorer
 * reuses the context's cache across choices and runs other row counts through
 * BLAS: equal to 1e-4), acc / acc_norm / greedy from those numbers, standard errors
 * by hand, and malformed files refused with their line. */
#include "blockq.h"
#include "harness.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <unistd.h>

static bq_model *M;
static bq_tokenizer *T;
static double got[64][8];
static int got_n[64];

static void on_item(void *arg, size_t i, const double *ll, int n)
{
    if (i < 64) { for (int k = 0; k < n && k < 8; k++) got[i][k] = ll[k]; got_n[i] = n; }
}

static int32_t *enc(const char *a, const char *b, size_t *n)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s%s", a, b ? b : "");
    int32_t *ids = NULL;
    OK(bq_tokenize(T, buf, strlen(buf), &ids, n));
    return ids;
}

/* log-likelihood of tok(ctx + c)[len(tok(ctx)):] from one full forward pass; *greedy */
static double ref_ll(const char *ctx, const char *c, int *greedy)
{
    size_t nc, nw;
    int32_t *a = enc(ctx, NULL, &nc), *w = enc(ctx, c, &nw);
    int V = bq_model_vocab(M);
    float *lg = malloc(nw * (size_t)V * 4);
    OK(bq_model_logits(M, w, (int)nw, lg));
    double ll = 0;
    *greedy = 1;
    for (size_t j = nc; j < nw; j++) {
        const float *row = lg + (j - 1) * (size_t)V;
        double mx = row[0], se = 0;
        int best = 0;
        for (int v = 1; v < V; v++) if (row[v] > mx) { mx = row[v]; best = v; }
        for (int v = 0; v < V; v++) se += exp((double)row[v] - mx);
        ll += row[w[j]] - mx - log(se);
        *greedy &= best == w[j];
    }
    free(lg); free(a); free(w);
    return ll;
}

static void test_against_logits(const char *path, int mc)
{
    memset(got_n, 0, sizeof got_n);
    bq_eval_opts o = {.size = sizeof o, .max_ctx = 512, .on_item = on_item};
    bq_eval_result r;
    OK(bq_eval_file(M, T, path, &o, &r));
    void *js;
    size_t len;
    OK(bq_read_file(path, &js, &len));
    char *line = strtok((char *)js, "\n");
    double acc = 0, accn = 0, sumll = 0, worst = 0;
    int n = 0;
    for (; line; line = strtok(NULL, "\n"), n++) {
        cJSON *it = cJSON_Parse(line);
        const char *ctx = cJSON_GetObjectItem(it, "context")->valuestring;
        if (mc) {
            cJSON *ch = cJSON_GetObjectItem(it, "choices");
            int k = cJSON_GetArraySize(ch), gold = cJSON_GetObjectItem(it, "gold")->valueint, pick = 0, pickn = 0, g;
            double best = -INFINITY, bestn = -INFINITY;
            CHECK(got_n[n] == k, "item %d: %d log-likelihoods reported", n, got_n[n]);
            for (int i = 0; i < k; i++) {
                const char *c = cJSON_GetArrayItem(ch, i)->valuestring;
                double ll = ref_ll(ctx, c, &g);
                worst = t_max(worst, fabs(ll - got[n][i]));
                if (ll > best) { best = ll; pick = i; }
                if (ll / (double)strlen(c) > bestn) { bestn = ll / (double)strlen(c); pickn = i; }
            }
            acc += pick == gold;
            accn += pickn == gold;
        } else {
            int g;
            double ll = ref_ll(ctx, cJSON_GetObjectItem(it, "target")->valuestring, &g);
            worst = t_max(worst, fabs(ll - got[n][0]));
            acc += g;
            sumll += ll;
        }
        cJSON_Delete(it);
    }
    free(js);
    CHECK(r.items == (size_t)n && n > 0, "%s: %zu items of %d", path, r.items, n);
    CHECK(worst <= 1e-4, "%s: log-likelihoods differ from whole-sequence logits by %.3g", path, worst);
    CHECK(r.acc == acc / n, "%s: acc %.4f, by hand %.4f", path, r.acc, acc / n);
    if (mc) CHECK(r.acc_norm == accn / n, "%s: acc_norm %.4f, by hand %.4f", path, r.acc_norm, accn / n);
    else CHECK(fabs(r.ppl - exp(-sumll / n)) <= 1e-3 * r.ppl, "%s: ppl %.4f, by hand %.4f", path, r.ppl, exp(-sumll / n));
    double p = acc / n, se = n > 1 ? sqrt(p * (1 - p) * n / (n - 1)) / sqrt((double)n) : NAN;
    CHECK(fabs(r.acc_stderr - se) < 1e-12 || (isnan(se) && isnan(r.acc_stderr)), "%s: stderr %.6f, by hand %.6f", path, r.acc_stderr, se);
    if (mc) CHECK(r.tokens_reused > 0, "%s: no context was reused across choices", path);
}

static void expect(const char *content, const char *msg)
{
    const char *p = t_tmp("bq_eval_bad.jsonl");
    FILE *f = fopen(p, "w");
    fputs(content, f);
    fclose(f);
    bq_eval_opts o = {.size = sizeof o, .max_ctx = 512};
    bq_eval_result r;
    bq_status st = bq_eval_file(M, T, p, &o, &r);
    CHECK(st != BQ_OK && strstr(bq_last_error(), msg), "'%.40s': %s (want '%s')", content, st ? bq_last_error() : "accepted", msg);
    unlink(p);
}

/* Items dealt over parts (how eval runs under mpirun): the scores gathered in item
 * order and summarised give the whole file's numbers, bit for bit. */
typedef struct { double acc[64], second[64]; int seen[64]; } gathered;
static void gather(void *arg, size_t index, double acc, double second)
{
    gathered *g = arg;
    if (index < 64) { g->acc[index] = acc; g->second[index] = second; g->seen[index]++; }
}

static void test_parts(const char *path, int mc)
{
    bq_eval_opts o = {.size = sizeof o, .max_ctx = 512};
    bq_eval_result whole, r;
    OK(bq_eval_file(M, T, path, &o, &whole));
    gathered g = {0};
    size_t tokens = 0;
    for (int part = 0; part < 3; part++) {
        bq_eval_opts p = {.size = sizeof p, .max_ctx = 512, .part = part, .parts = 3, .on_score = gather, .arg = &g};
        OK(bq_eval_file(M, T, path, &p, &r));
        tokens += r.tokens_computed;
    }
    double a[64], b[64];
    size_t n = 0;
    int once = 1;
    for (int i = 0; i < 64; i++) {
        once &= g.seen[i] <= 1;
        if (g.seen[i]) { a[n] = g.acc[i]; b[n] = g.second[i]; n++; }
    }
    r = whole;
    bq_eval_summarise(mc, a, b, n, &r);
    CHECK(once && n == whole.items && tokens == whole.tokens_computed, "%s: %zu items in 3 parts (%zu whole), every item once: %d",
          path, n, whole.items, once);
    CHECK(r.acc == whole.acc && r.acc_stderr == whole.acc_stderr && (mc ? r.acc_norm == whole.acc_norm : r.ppl == whole.ppl),
          "%s: 3 parts give acc %.17g, whole %.17g", path, r.acc, whole.acc);
    bq_eval_opts bad = {.size = sizeof bad, .max_ctx = 512, .part = 3, .parts = 3};
    CHECK(bq_eval_file(M, T, path, &bad, &r) != BQ_OK && strstr(bq_last_error(), "part 3 of 3"), "part 3 of 3 accepted");
}

int main(void)
{
    if (bq_model_load("models/llama-19m-en", &M) || bq_tokenizer_from_model(M, &T)) {
        CHECK(0, "load: %s", bq_last_error());
        return test_summary("test_eval");
    }
    test_against_logits("tests/data/mc_tiny.jsonl", 1);
    test_against_logits("tests/data/cloze_tiny.jsonl", 0);
    test_parts("tests/data/mc_tiny.jsonl", 1);
    test_parts("tests/data/cloze_tiny.jsonl", 0);
    /* a limit, and a context the window cannot hold without its left part */
    bq_eval_opts o = {.size = sizeof o, .limit = 2, .max_ctx = 512};
    bq_eval_result r;
    OK(bq_eval_file(M, T, "tests/data/mc_tiny.jsonl", &o, &r));
    CHECK(r.items == 2, "--limit 2 scored %zu", r.items);
    o.limit = 0;
    o.max_ctx = 8;
    OK(bq_eval_file(M, T, "tests/data/cloze_tiny.jsonl", &o, &r));
    CHECK(r.items == 3 && r.skipped == 0, "left truncation: %zu items, %zu skipped", r.items, r.skipped);
    expect("{\"context\": \"a\", \"choices\": [\" b\"], \"gold\": 0}\n{\"context\": \"a\", \"choices\": []", ":2: not valid JSON");
    expect("{\"context\": \"a\", \"choices\": [], \"gold\": 0}\n", ":1: \"choices\" must be a non-empty list");
    expect("\n{\"context\": \"a\", \"choices\": [\" b\"], \"gold\": 3}\n", ":2: \"gold\" must be an index");
    expect("{\"context\": \"a\", \"choices\": [\" b\"], \"gold\": 0}\n{\"context\": \"a\", \"target\": \" b\"}\n", ":2: a cloze item in a multiple-choice file");
    expect("{\"context\": 3, \"target\": \" b\"}\n", ":1: needs a \"context\" string");
    expect("{\"context\": \"a\", \"target\": \" b\", \"target\": \" c\"}\n", "appears twice");
    expect("\n\n", "no items");
    bq_tokenizer_free(T);
    bq_model_free(M);
    return test_summary("test_eval");
}
