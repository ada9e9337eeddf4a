/* Engine: logits against Hugging Face transformers (refs/), tokenizer cases,
 * greedy continuation, KV-cache consistency, perplexity, and broken checkpoints. */
#include "blockq.h"
#include "harness.h"
#include "bq_cuda.h"
#include "model.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

static cJSON *refs;

static cJSON *load_json(const char *path)
{
    void *d;
    size_t n;
    if (bq_read_file(path, &d, &n)) return NULL;
    cJSON *j = cJSON_ParseWithLength(d, n);
    free(d);
    return j;
}

static int32_t *json_ids(cJSON *arr, size_t *n)
{
    *n = (size_t)cJSON_GetArraySize(arr);
    int32_t *v = malloc((*n ? *n : 1) * sizeof *v);
    size_t i = 0;
    for (cJSON *it = arr ? arr->child : NULL; it; it = it->next) v[i++] = (int32_t)it->valuedouble;
    return v;
}

/* max |a - b| / max |b| over n values */
static double rel_diff(const float *a, const float *b, size_t n)
{
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) md = d;  /* NaN propagates as a failure */
        if (fabs(b[i]) > mr) mr = fabs(b[i]);
    }
    return md / mr;
}

static void check_logits(const char *model_dir, const int32_t *ids, size_t n, const char *ref_path, const char *label)
{
    bq_model *m;
    bq_status st = bq_model_load(model_dir, &m);
    CHECK(st == BQ_OK, "%s: load: %s", label, bq_last_error());
    if (st) return;
    size_t V = (size_t)bq_model_vocab(m);
    float *lg = malloc(n * V * 4);
    CHECK(bq_model_logits(m, ids, (int)n, lg) == BQ_OK, "%s: logits: %s", label, bq_last_error());
    void *ref;
    size_t rsz;
    if (bq_read_file(ref_path, &ref, &rsz) == BQ_OK) {
        CHECK(rsz == n * V * 4, "%s: reference holds %zu bytes, expected %zu", label, rsz, n * V * 4);
        if (rsz == n * V * 4) {
            double r = rel_diff(lg, ref, n * V);
            CHECK(r < 1e-4, "%s: logits differ from transformers by %.3g (relative; tolerance 1e-4)", label, r);
            printf("  %-14s logits max rel diff %.2e\n", label, r);
        }
        free(ref);
    } else CHECK(0, "%s: cannot read %s", label, ref_path);

    /* the KV cache path: token by token gives the same logits as one batch */
    bq_ctx *c;
    float *one = malloc(V * 4);
    double worst = 0;
    if (bq_ctx_new(m, (int)n, &c) == BQ_OK) {
        for (size_t t = 0; t < n; t++) {
            OK(bq_forward(c, ids + t, 1, one, 0));
            double r = rel_diff(one, lg + t * V, V);
            if (r > worst) worst = r;
        }
        bq_ctx_free(c);
    }
    CHECK(worst < 1e-5, "%s: incremental decoding differs from the batch by %.3g", label, worst);
    free(one);
    free(lg);
    bq_model_free(m);
}

static void test_llama19m(void)
{
    cJSON *p = cJSON_GetObjectItem(cJSON_GetObjectItem(refs, "llama-19m-en"), "prompt");
    void *ids;
    size_t sz;
    if (bq_read_file("tests/refs/llama-19m-en.prompt.i32", &ids, &sz)) { CHECK(0, "prompt ids missing"); return; }
    check_logits("models/llama-19m-en", ids, sz / 4, "tests/refs/llama-19m-en.logits.f32", "llama-19m-en");

    /* greedy continuation of 32 tokens equals transformers' generate() */
    bq_model *m;
    if (bq_model_load("models/llama-19m-en", &m)) { free(ids); return; }
    size_t n = sz / 4, ng;
    int32_t *want = json_ids(cJSON_GetObjectItem(p, "greedy_32_tokens"), &ng);
    int V = bq_model_vocab(m);
    float *lg = malloc((size_t)V * 4);
    bq_ctx *c;
    OK(bq_ctx_new(m, (int)(n + ng), &c));
    OK(bq_forward(c, ids, (int)n, lg, 0));
    size_t same = 0;
    for (size_t i = 0; i < ng; i++) {
        int32_t best = 0;
        for (int j = 1; j < V; j++) best = lg[j] > lg[best] ? j : best;
        same += best == want[i];
        if (best != want[i]) break;
        OK(bq_forward(c, &best, 1, lg, 0));
    }
    CHECK(same == ng, "greedy continuation agrees for %zu of %zu tokens", same, ng);
    bq_ctx_free(c);
    free(lg);
    free(want);
    free(ids);
    bq_model_free(m);
}

static void test_tokenizer(void)
{
    bq_tokenizer *t;
    bq_status st = bq_tokenizer_load("models/llama-19m-en/tokenizer.json", &t);
    CHECK(st == BQ_OK, "tokenizer: %s", bq_last_error());
    if (st) return;
    cJSON *cases = cJSON_GetObjectItem(cJSON_GetObjectItem(refs, "llama-19m-en"), "tokenizer_cases");
    int nc = 0;
    for (cJSON *c = cases ? cases->child : NULL; c; c = c->next, nc++) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        size_t nw, n;
        int32_t *want = json_ids(cJSON_GetObjectItem(c, "ids"), &nw), *got;
        CHECK(bq_tokenize(t, text, strlen(text), &got, &n) == BQ_OK, "tokenize '%s': %s", text, bq_last_error());
        CHECK(n == nw && !memcmp(got, want, n * 4), "tokenize '%s': ids differ from transformers", text);
        /* decode gives the text back */
        char *back;
        size_t bl;
        CHECK(bq_detokenize(t, got, n, &back, &bl) == BQ_OK && bl == strlen(text) && !memcmp(back, text, bl),
              "detokenize of '%s' does not round-trip", text);
        free(back);
        free(got);
        free(want);
    }
    CHECK(nc >= 5, "only %d tokenizer cases", nc);
    /* not UTF-8: a specific error */
    int32_t *ids;
    size_t n;
    const char bad[] = {'o', 'k', (char)0xc3, '(', 0};
    CHECK(bq_tokenize(t, bad, 4, &ids, &n) == BQ_ERR_PARSE && strstr(bq_last_error(), "UTF-8") &&
          strstr(bq_last_error(), "offset 2"), "invalid UTF-8 accepted or unclear: %s", bq_last_error());
    int32_t oob = 999999;
    char *s;
    size_t sl;
    CHECK(bq_detokenize(t, &oob, 1, &s, &sl) == BQ_ERR_ARG, "out-of-vocabulary id decoded");
    bq_tokenizer_free(t);
}

/* The shared refs.json (free with cJSON_Delete) and its "tiny" entry: the token ids
 * the tiny checkpoints are run on, and their logits files by architecture. */
static cJSON *tiny_refs(const char *sh, cJSON **tiny, int32_t **ids, size_t *n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/refs/refs.json", sh);
    cJSON *r = load_json(path);
    *tiny = cJSON_GetObjectItem(r, "tiny");
    *ids = json_ids(cJSON_GetObjectItem(*tiny, "ids"), n);
    return r;
}

static void test_tiny(void)
{
    const char *sh = shared_dir();
    if (!sh) { SKIP("../shared not found: tiny-architecture logits tests skipped"); return; }
    cJSON *tiny;
    size_t n;
    int32_t *ids;
    cJSON *r = tiny_refs(sh, &tiny, &ids, &n);
    cJSON *files = cJSON_GetObjectItem(tiny, "logits_files");
    int count = 0;
    for (cJSON *f = files ? files->child : NULL; f; f = f->next, count++) {
        char dir[512], ref[512];
        snprintf(dir, sizeof dir, "%s/models/tiny/%s", sh, f->string);
        snprintf(ref, sizeof ref, "%s/refs/%s", sh, f->valuestring);
        check_logits(dir, ids, n, ref, f->string);
    }
    CHECK(count == 7, "expected 7 tiny architectures, found %d", count);
    free(ids);
    cJSON_Delete(r);
}

/* Perplexity on WikiText-2 test, both protocols, in one pass. Minutes: skipped
 * in the sanitizer tier (BQ_TEST_FAST), run in the optimised tier. */
static void test_ppl(void)
{
    if (getenv("BQ_TEST_FAST")) { SKIP("BQ_TEST_FAST set: full WikiText-2 perplexity skipped (runs in the optimised tier)"); return; }
    cJSON *w = cJSON_GetObjectItem(cJSON_GetObjectItem(refs, "llama-19m-en"), "wikitext2_test");
    double want = cJSON_GetObjectItem(w, "ppl_fp32_S512")->valuedouble;
    double want_half = cJSON_GetObjectItem(w, "ppl_fp32_second_half_512")->valuedouble;
    int want_tokens = cJSON_GetObjectItem(w, "n_tokens")->valueint;
    bq_model *m;
    bq_tokenizer *t;
    void *text;
    size_t len, n;
    int32_t *ids;
    if (bq_model_load("models/llama-19m-en", &m) || bq_tokenizer_load("models/llama-19m-en/tokenizer.json", &t) ||
        bq_read_file("data/wikitext-2-test.txt", &text, &len)) {
        CHECK(0, "cannot load the default model or data/wikitext-2-test.txt: %s", bq_last_error());
        return;
    }
    CHECK(bq_tokenize(t, text, len, &ids, &n) == BQ_OK, "tokenize wikitext: %s", bq_last_error());
    CHECK((int)n == want_tokens, "wikitext tokenises to %zu tokens, transformers %d", n, want_tokens);
    bq_ppl_opts o = {.ctx = 512};
    bq_ppl_result r;
    CHECK(bq_perplexity(m, ids, n, &o, &r) == BQ_OK, "ppl: %s", bq_last_error());
    double rel = fabs(r.ppl_all - want) / want, relh = fabs(r.ppl_second_half - want_half) / want_half;
    printf("  wikitext-2 S=512: ppl %.4f (transformers %.4f, rel %.2e); second-half %.4f (%.4f, rel %.2e); %.1f s\n",
           r.ppl_all, want, rel, r.ppl_second_half, want_half, relh, r.seconds);
    CHECK(rel < 5e-4, "perplexity %.4f vs %.4f: relative %.3g > 0.05%%", r.ppl_all, want, rel);
    CHECK(relh < 5e-4, "second-half perplexity %.4f vs %.4f: relative %.3g > 0.05%%", r.ppl_second_half, want_half, relh);
    free(ids);
    free(text);
    bq_tokenizer_free(t);
    bq_model_free(m);
}

/* ---- broken checkpoints --------------------------------------------------- */

static char tmpdir[64];

static void write_file(const char *name, const void *data, size_t n)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "wb");
    fwrite(data, 1, n, f);
    fclose(f);
}

static const char *good_config =
    "{\"model_type\": \"llama\", \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 1,"
    " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 4, \"vocab_size\": 16,"
    " \"rms_norm_eps\": 1e-6, \"rope_theta\": 10000.0, \"tie_word_embeddings\": true}";

/* The tensors of that config: name, rows, cols (0 = 1-D). */
static const struct { const char *name; int r, c; } tensors[] = {
    {"model.embed_tokens.weight", 16, 8}, {"model.norm.weight", 8, 0},
    {"model.layers.0.input_layernorm.weight", 8, 0}, {"model.layers.0.post_attention_layernorm.weight", 8, 0},
    {"model.layers.0.self_attn.q_proj.weight", 8, 8}, {"model.layers.0.self_attn.k_proj.weight", 4, 8},
    {"model.layers.0.self_attn.v_proj.weight", 4, 8}, {"model.layers.0.self_attn.o_proj.weight", 8, 8},
    {"model.layers.0.mlp.gate_proj.weight", 16, 8}, {"model.layers.0.mlp.up_proj.weight", 16, 8},
    {"model.layers.0.mlp.down_proj.weight", 8, 16},
};
enum { NT = sizeof tensors / sizeof tensors[0] };

/* Write model.safetensors; `skip` drops a tensor, `lie` adds bytes to one end offset,
 * `dtype` overrides the dtype string, `cut` truncates the file by that many bytes. */
static int nan_tensor = -1;  /* index of a tensor whose 6th value becomes NaN */

static void write_checkpoint(int skip, int lie, const char *dtype, size_t cut, int overlap)
{
    size_t nan_at = SIZE_MAX;
    char hdr[8192];
    size_t h = 0, off = 0;
    h += (size_t)snprintf(hdr + h, sizeof hdr - h, "{\"__metadata__\": {\"format\": \"pt\"}");
    for (int i = 0; i < NT; i++) {
        if (i == skip) continue;
        size_t bytes = (size_t)tensors[i].r * (tensors[i].c ? tensors[i].c : 1) * 4;
        size_t b = overlap && i == 3 ? off - 4 : off;
        if (i == nan_tensor) nan_at = b / 4 + 5;
        h += (size_t)snprintf(hdr + h, sizeof hdr - h, ", \"%s\": {\"dtype\": \"%s\", \"shape\": [%d%s%.0d], \"data_offsets\": [%zu, %zu]}",
                              tensors[i].name, i == 4 && dtype ? dtype : "F32", tensors[i].r, tensors[i].c ? ", " : "",
                              tensors[i].c, b, b + bytes + (i == 2 ? (size_t)lie : 0));
        off = b + bytes;
    }
    h += (size_t)snprintf(hdr + h, sizeof hdr - h, "}");
    size_t total = 8 + h + off;
    uint8_t *f = calloc(1, total);
    uint64_t hl = h;
    memcpy(f, &hl, 8);
    memcpy(f + 8, hdr, h);
    for (size_t i = 0; i < off / 4; i++) {  /* the data block need not be 4-byte aligned */
        float v = i == nan_at ? NAN : 0.01f * (float)((i * 7919) % 97) - 0.3f;
        memcpy(f + 8 + h + 4 * i, &v, 4);
    }
    write_file("model.safetensors", f, total - cut);
    free(f);
}

static void expect_load(bq_status want, const char *msg, const char *label)
{
    bq_model *m = NULL;
    bq_status st = bq_model_load(tmpdir, &m);
    CHECK(st == want && (want != BQ_OK || m), "%s: status %s, expected %s (%s)", label, bq_status_name(st),
          bq_status_name(want), bq_last_error());
    if (msg) CHECK(strstr(bq_last_error(), msg) != NULL, "%s: message '%s' lacks '%s'", label, bq_last_error(), msg);
    if (m) {
        float lg[16];
        int32_t id = 3;
        CHECK(bq_model_logits(m, &id, 1, lg) == BQ_OK, "%s: logits on the valid model", label);
        id = 16;
        CHECK(bq_model_logits(m, &id, 1, lg) == BQ_ERR_ARG, "%s: token id 16 of 16 accepted", label);
        bq_model_free(m);
    }
}

static void test_broken(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/bq_test_XXXXXX");
    if (!mkdtemp(tmpdir)) { CHECK(0, "mkdtemp"); return; }
    write_file("config.json", good_config, strlen(good_config));
    write_checkpoint(-1, 0, NULL, 0, 0);
    expect_load(BQ_OK, NULL, "valid checkpoint");
    write_checkpoint(-1, 0, NULL, 100, 0);
    expect_load(BQ_ERR_PARSE, "outside", "truncated shard");
    write_checkpoint(-1, 0, NULL, 0, 0);
    {   /* header length larger than the file */
        char p[256];
        snprintf(p, sizeof p, "%s/model.safetensors", tmpdir);
        FILE *f = fopen(p, "r+b");
        uint64_t big = 1u << 30;
        fwrite(&big, 8, 1, f);
        fclose(f);
    }
    expect_load(BQ_ERR_PARSE, "header length", "header length past the end");
    write_checkpoint(-1, 8, NULL, 0, 0);
    expect_load(BQ_ERR_PARSE, "need", "offsets disagree with shape");
    write_checkpoint(-1, 0, "I8", 0, 0);
    expect_load(BQ_ERR_UNSUPPORTED, "dtype I8", "unknown dtype");
    write_checkpoint(9, 0, NULL, 0, 0);
    expect_load(BQ_ERR_PARSE, "missing tensor 'model.layers.0.mlp.up_proj.weight'", "missing tensor");
    write_checkpoint(-1, 0, NULL, 0, 1);
    expect_load(BQ_ERR_PARSE, "overlap", "overlapping tensors");
    write_checkpoint(-1, 0, NULL, 0, 0);
    const char *bad_cfg = "{\"model_type\": \"llama\", \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 1,"
                          " \"num_attention_heads\": 3, \"num_key_value_heads\": 2, \"head_dim\": 4, \"vocab_size\": 16}";
    write_file("config.json", bad_cfg, strlen(bad_cfg));
    expect_load(BQ_ERR_PARSE, "not a multiple", "inconsistent heads");
    const char *shape_cfg = "{\"model_type\": \"llama\", \"hidden_size\": 8, \"intermediate_size\": 24, \"num_hidden_layers\": 1,"
                            " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 4, \"vocab_size\": 16}";
    write_file("config.json", shape_cfg, strlen(shape_cfg));
    expect_load(BQ_ERR_SHAPE, "config says", "config disagrees with tensor shapes");
    const char *arch_cfg = "{\"model_type\": \"mamba\", \"hidden_size\": 8}";
    write_file("config.json", arch_cfg, strlen(arch_cfg));
    expect_load(BQ_ERR_UNSUPPORTED, "model_type 'mamba'", "unknown architecture");
    write_file("config.json", "{\"model_type\": ", 15);
    expect_load(BQ_ERR_PARSE, "not a JSON object", "malformed config");
    /* shape x dtype overflowing size_t, absurd dimensions, deep nesting */
    {
        static const struct { const char *hdr, *msg; } bad[] = {
            {"{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4294967296], \"data_offsets\": [0, 4]}}", "overflows"},
            {"{\"w\": {\"dtype\": \"F32\", \"shape\": [1e15], \"data_offsets\": [0, 4]}}", "bad shape"},
            {"{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", "bad shape"},
            {"{\"w\": {\"dtype\": \"F32\", \"shape\": [1, 1, 1, 1, 1], \"data_offsets\": [0, 4]}}", "5 dimensions"},
            {"{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 0]}}", "outside"},
            {"[1, 2]", "not a JSON object"},
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            size_t hl = strlen(bad[i].hdr);
            uint8_t *f = calloc(1, 8 + hl + 8);
            uint64_t h64 = hl;
            memcpy(f, &h64, 8);
            memcpy(f + 8, bad[i].hdr, hl);
            st_set st = {0};
            bq_status rc = st_parse_buffer(&st, "t.safetensors", f, 8 + hl + 4);
            CHECK(rc != BQ_OK && strstr(bq_last_error(), bad[i].msg), "header %zu: '%s' (want '%s')", i, bq_last_error(), bad[i].msg);
            st_close(&st);
            free(f);
        }
        /* 5000 levels of nesting in config.json: refused, not a stack overflow */
        size_t depth = 5000;
        char *deep = malloc(2 * depth + 1);
        for (size_t i = 0; i < depth; i++) { deep[i] = '['; deep[2 * depth - 1 - i] = ']'; }
        deep[2 * depth] = 0;
        bq_config cfg;
        CHECK(config_parse(deep, 2 * depth, "deep.json", &cfg) == BQ_ERR_PARSE && strstr(bq_last_error(), "not a JSON object"),
              "deeply nested config: %s", bq_last_error());
        free(deep);
    }

    /* NaN in a weight: named at load; the forward pass names the layer */
    write_file("config.json", good_config, strlen(good_config));
    nan_tensor = 10;  /* model.layers.0.mlp.down_proj.weight */
    write_checkpoint(-1, 0, NULL, 0, 0);
    nan_tensor = -1;
    bq_model *m = NULL;
    CHECK(bq_model_load(tmpdir, &m) == BQ_OK, "NaN checkpoint should load: %s", bq_last_error());
    if (m) {
        CHECK(bq_model_check_finite(m) == BQ_ERR_NONFINITE && strstr(bq_last_error(), "layers.0.mlp.down_proj") &&
              strstr(bq_last_error(), "NaN"), "NaN weight not reported by name: %s", bq_last_error());
        float lg[16];
        int32_t id = 3;
        CHECK(bq_model_logits(m, &id, 1, lg) == BQ_ERR_NONFINITE && strstr(bq_last_error(), "layer 0") &&
              strstr(bq_last_error(), "down_proj"), "NaN activation not reported by layer: %s", bq_last_error());
        bq_ctx *c;
        OK(bq_ctx_new(m, 1, &c));
        bq_ctx_set_check(c, 0);
        CHECK(bq_forward(c, &id, 1, lg, 1) == BQ_OK && isnan(lg[0]), "check off: forward should pass NaN through");
        bq_ctx_free(c);
        bq_model_free(m);
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    CHECK(system(cmd) == 0, "cleanup");
}

/* Same bits whatever the thread count, float32 and quantised. */
static void test_thread_invariance(void)
{
    bq_model *m;
    if (bq_model_load("models/llama-19m-en", &m)) return;
    int n = 300, V = bq_model_vocab(m);
    int32_t *ids = malloc((size_t)n * 4);
    for (int i = 0; i < n; i++) ids[i] = (i * 2654435761u) % (unsigned)V;
    float *ref = malloc((size_t)n * V * 4), *got = malloc((size_t)n * V * 4);
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            bq_qconfig *q;
            bq_qconfig_new(&q);
            OK(bq_qconfig_set(q, "wq", "mxfp4"));
            OK(bq_qconfig_set(q, "aq", "bfp6_b16"));
            OK(bq_qconfig_set(q, "attn", "bfp8_b16"));
            OK(bq_qconfig_set(q, "kv", "mxfp8_e4m3"));
            bq_qconfig_set_round(q, BQ_ROUND_STOCHASTIC, 7);
            OK(bq_model_quantize(m, q, 1));
            bq_qconfig_free(q);
        }
        bq_set_threads(1);
        OK(bq_model_logits(m, ids, n, ref));
        for (int t = 2; t <= 3; t++) {
            bq_set_threads(t);
            OK(bq_model_logits(m, ids, n, got));
            CHECK(!memcmp(ref, got, (size_t)n * V * 4), "%s logits with %d threads differ from 1 thread",
                  pass ? "quantised" : "float32", t);
        }
    }
    bq_set_threads(0);
    free(ids); free(ref); free(got);
    bq_model_free(m);
}

/* Decoding one token at a time (the GEMV kernels and the pool's small jobs) on a
 * packed model, float32 weights and a float16-held one: the same bits for 1, 2 and 3 threads. */
static void test_decode_thread_invariance(void)
{
    const char *wq[] = {"q4_0", "mxfp4", NULL};
    for (int w = 0; w < 3; w++) {
        bq_model *m;
        if (bq_model_load("models/llama-19m-en", &m)) return;
        if (wq[w] && w < 2) {
            bq_qconfig *q;
            bq_qconfig_new(&q);
            OK(bq_qconfig_set(q, "wq", wq[w]));
            OK(bq_model_pack(m, q, 1));
            bq_qconfig_free(q);
        }
        int n = 24, V = bq_model_vocab(m);
        float *ref = malloc((size_t)n * V * 4), *got = malloc((size_t)V * 4);
        int diff = 0;
        for (int threads = 1; threads <= 3; threads++) {
            bq_ctx_opts o = {.size = sizeof o, .threads = threads};
            bq_ctx *c;
            OK(bq_ctx_new_ex(m, n, &o, &c));
            for (int t = 0; t < n; t++) {
                int32_t id = (int32_t)((t * 2654435761u) % (unsigned)V);
                OK(bq_forward(c, &id, 1, threads == 1 ? ref + (size_t)t * V : got, 0));
                if (threads > 1) diff += memcmp(ref + (size_t)t * V, got, (size_t)V * 4) != 0;
            }
            bq_ctx_free(c);
        }
        CHECK(diff == 0, "%s: %d decoded tokens' logits differ between 1, 2 and 3 threads", wq[w] ? wq[w] : "float32", diff);
        free(ref); free(got);
        bq_model_free(m);
    }
}

/* The persistent pool: every index exactly once, in the ranges bq_parallel_for
 * uses for the same count, job after job, also after its workers fell asleep. */
typedef struct { int *hits; size_t *start; } pool_probe;

static void pool_mark(void *arg, size_t b, size_t e)
{
    pool_probe *p = arg;
    for (size_t i = b; i < e; i++) { p->hits[i]++; p->start[i] = b; }
}

static void test_pool(void)
{
    enum { N = 97 };
    int hits[N];
    size_t start[N], want[N];
    for (int threads = 2; threads <= 4; threads++) {
        bq_pool *pool = bq_pool_new(threads);
        CHECK(pool && bq_pool_threads(pool) == threads, "bq_pool_new(%d) gave %d threads", threads, bq_pool_threads(pool));
        int bad = 0;
        for (int job = 0; job < 3000; job++) {
            size_t n = (size_t)(job * 7919) % (N + 1);
            int t = 1 + job % threads;
            pool_probe pp = {hits, start}, ref = {hits, want};
            memset(hits, 0, sizeof hits);
            bq_parallel_for(n, t, pool_mark, &ref);
            memset(hits, 0, sizeof hits);
            if (job % 500 == 499) usleep(2000);  /* long enough for the workers to sleep */
            bq_pool_for(pool, n, t, pool_mark, &pp);
            for (size_t i = 0; i < n; i++) bad += hits[i] != 1 || start[i] != want[i];
        }
        CHECK(bad == 0, "pool of %d threads: %d indices missed, repeated or in other ranges", threads, bad);
        bq_pool_free(pool);
    }
    CHECK(bq_pool_new(1) == NULL && bq_pool_threads(NULL) == 1, "a pool of one thread is no pool");
}

/* The CUDA engine against the CPU: the same perplexity within 0.1% (float32, and
 * with weights, activations and the KV cache quantised), where a GPU exists. */
/* Quantise (or pack) m as cfg says: weights, activations, KV cache, --attn (NULL: none). */
/* cfg: weight, activation, KV and attention formats (the last two may be NULL),
 * then optionally (cfg[4]) a --ptq list. */
static bq_status apply_cfg(bq_model *m, const char *const cfg[], int pack)
{
    bq_qconfig *q;
    bq_status st = bq_qconfig_new(&q);
    if (st) return st;
    OK(bq_qconfig_set(q, "wq", cfg[0]));
    OK(bq_qconfig_set(q, "aq", cfg[1]));
    if (cfg[2]) bq_qconfig_set(q, "kv", cfg[2]);
    if (cfg[3]) bq_qconfig_set(q, "attn", cfg[3]);
    if (cfg[4] && (st = bq_qconfig_set(q, "ptq", cfg[4]))) { bq_qconfig_free(q); return st; }
    st = pack ? bq_model_pack(m, q, 1) : bq_model_quantize(m, q, 1);
    bq_qconfig_free(q);
    return st;
}

/* Logits of all n tokens, then `steps` one-token steps after the first n - steps
 * (decoding), then log-probabilities of `nwin` windows through bq_score_windows:
 * everything a context computes, for comparing stage splits bit for bit. */
typedef struct { float *all, *dec; double *lp; } ctx_out;
typedef struct { double *lp; int n; } win_keep;
static bq_status keep_window(void *arg, size_t i, const double *lp)
{
    win_keep *k = arg;
    memcpy(k->lp + i * (size_t)(k->n - 1), lp, (size_t)(k->n - 1) * sizeof *lp);
    return BQ_OK;
}

static bq_status run_ctx(const bq_model *m, int device, int stages, const int32_t *ids, int n, int steps, int nwin, ctx_out *o)
{
    size_t V = (size_t)bq_model_vocab(m);
    bq_ctx *c;
    bq_ctx_opts co = {.size = sizeof co, .device = device, .threads = 2, .stages = stages};
    bq_status st = bq_ctx_new_ex(m, n, &co, &c);
    if (st) return st;
    o->all = malloc((size_t)n * V * 4);
    o->dec = malloc((size_t)steps * V * 4);
    o->lp = malloc((size_t)nwin * (size_t)(n - 1) * sizeof *o->lp);
    if (!o->all || !o->dec || !o->lp) st = BQ_ERR_NOMEM;
    if (!st) st = bq_forward(c, ids, n, o->all, 1);
    bq_ctx_reset(c);
    if (!st) st = bq_forward(c, ids, n - steps, o->dec, 0);
    for (int i = 0; i < steps && !st; i++) st = bq_forward(c, ids + n - steps + i, 1, o->dec + (size_t)i * V, 0);
    const int32_t *wins[8];
    int wn = n - nwin;  /* windows overlap: window i starts at token i */
    for (int i = 0; i < nwin; i++) wins[i] = ids + i;
    win_keep k = {o->lp, wn};
    if (!st) st = bq_score_windows(c, wins, (size_t)nwin, wn, keep_window, &k);
    bq_ctx_free(c);
    return st;
}

static int same_bits(const void *a, const void *b, size_t n) { return !memcmp(a, b, n); }

/* Pipeline stages (docs/distributed.md): every split of the layers computes the
 * bits one stage computes, for logits, decoding and windows streamed through the
 * stages, on the tiny architectures and the bundled model, float32, fake-quantised
 * (with the KV cache and attention quantised) and packed. device 1: the stages
 * share the GPU (one device; several where there are). */
static void test_stages(int device)
{
    char why[256];
    if (device && !bq_cuda_devices(why, sizeof why)) { SKIP("%s: pipeline stages not run on the GPU", why); return; }
    const char *sh = shared_dir();
    const char *dirs[9] = {"models/llama-19m-en"};
    char buf[8][512];
    int nd = 1;
    if (!sh) SKIP("../shared not found: pipeline stages of the tiny architectures not compared");
    const char *tiny[] = {"llama", "mistral", "qwen2", "qwen3", "opt", "opt-proj", "gpt2"};
    for (int i = 0; sh && i < 7; i++) {
        snprintf(buf[i], sizeof buf[i], "%s/models/tiny/%s/config.json", sh, tiny[i]);
        if (access(buf[i], R_OK)) { SKIP("%s absent: its pipeline stages not compared", buf[i]); continue; }
        buf[i][strlen(buf[i]) - strlen("/config.json")] = 0;
        dirs[nd++] = buf[i];
    }
    const char *cfg[][5] = {{NULL}, {"mxfp4", "mxint8", "bfp8_b16", "bfp6_b16"}, {"mxfp4", "mxint8", NULL, NULL},
                            {"int4_g32", "mxint8", NULL, NULL, "lorc:4"}};
    int32_t ids[40];
    for (int t = 0; t < 40; t++) ids[t] = (t * 7919 + 13) % 250;  /* in every vocabulary here */
    const int n = 40, steps = 3, nwin = 5;
    int compared = 0;
    for (int d = 0; d < nd; d++)
        for (int c = 0; c < 4; c++) {
            bq_model *m;
            if (bq_model_load(dirs[d], &m)) { CHECK(0, "%s: %s", dirs[d], bq_last_error()); break; }
            if (cfg[c][0] && apply_cfg(m, cfg[c], c >= 2)) { CHECK(0, "%s: %s", dirs[d], bq_last_error()); bq_model_free(m); break; }
            size_t V = (size_t)bq_model_vocab(m);
            int layers = 0, lo[BQ_MAX_STAGES + 1];
            while (bq_model_stage_plan(m, layers + 1, lo) == BQ_OK) layers++;
            ctx_out ref = {0};
            bq_status st = run_ctx(m, device, 1, ids, n, steps, nwin, &ref);
            CHECK(!st, "%s cfg %d: one stage: %s", dirs[d], c, bq_last_error());
            const int split[] = {2, 3, layers};
            for (int k = 0; !st && k < 3; k++) {
                int ns = split[k];
                if (ns > layers || (k == 2 && ns <= 3)) continue;
                CHECK(bq_model_stage_plan(m, ns, lo) == BQ_OK && lo[0] == 0 && lo[ns] == layers, "%s: plan of %d stages", dirs[d], ns);
                for (int s = 0; s < ns; s++) CHECK(lo[s + 1] > lo[s], "%s: stage %d of %d holds no layer", dirs[d], s, ns);
                ctx_out got = {0};
                bq_status s2 = run_ctx(m, device, ns, ids, n, steps, nwin, &got);
                CHECK(!s2, "%s cfg %d, %d stages: %s", dirs[d], c, ns, bq_last_error());
                if (!s2) {
                    CHECK(same_bits(ref.all, got.all, (size_t)n * V * 4), "%s cfg %d: logits differ with %d stages", dirs[d], c, ns);
                    CHECK(same_bits(ref.dec, got.dec, (size_t)steps * V * 4), "%s cfg %d: decoding differs with %d stages", dirs[d], c, ns);
                    CHECK(same_bits(ref.lp, got.lp, (size_t)nwin * (n - nwin - 1) * sizeof(double)),
                          "%s cfg %d: streamed windows differ with %d stages", dirs[d], c, ns);
                    compared++;
                }
                free(got.all); free(got.dec); free(got.lp);
            }
            free(ref.all); free(ref.dec); free(ref.lp);
            if (c == 0) {  /* more stages than layers: refused by name */
                bq_ctx *x = NULL;
                bq_ctx_opts co = {.size = sizeof co, .device = device, .stages = layers + 1};
                CHECK(bq_ctx_new_ex(m, 8, &co, &x) == BQ_ERR_ARG && strstr(bq_last_error(), "a stage holds at least one layer"),
                      "%s: %d stages for %d layers: %s", dirs[d], layers + 1, layers, bq_last_error());
                bq_ctx_free(x);
            }
            bq_model_free(m);
        }
    printf("  %s: %d stage splits compared bit for bit with one stage\n", device ? "cuda" : "cpu", compared);
    CHECK(compared >= 3, "only %d stage splits compared", compared);
}

static void test_cuda_ppl(void)
{
    char why[256];
    if (!bq_cuda_devices(why, sizeof why)) { SKIP("%s: CUDA perplexity not compared with the CPU", why); return; }
    void *txt;
    size_t len, n;
    int32_t *ids;
    bq_tokenizer *t;
    if (bq_read_file("data/wikitext-2-test.txt", &txt, &len) || bq_tokenizer_load("models/llama-19m-en/tokenizer.json", &t)) {
        CHECK(0, "inputs: %s", bq_last_error());
        return;
    }
    OK(bq_tokenize(t, txt, len, &ids, &n));
    /* Block formats and bf16 take the GPU's bf16 GEMM path (their values are bf16
     * numbers); int8_row weights (float32 scales) keep float32 SGEMM */
    const char *cfg[][5] = {{NULL, NULL, NULL, NULL},
                            {"mxfp4", "mxint8", "bfp8_b16", NULL},
                            {"bfp6_b16", "bfp6_b16", NULL, NULL},
                            {"bf16", "bf16", NULL, NULL},
                            {"int8_row", "mxint8", NULL, NULL},
                            {"mxint8", "mxint8", NULL, "mxint8"},  /* --attn: Q, K, V and P quantised too */
                            {"mxfp4", "mxint8", NULL, NULL},
                            {"mxint8", "mxint8", NULL, NULL},
                            {"mxfp6_e2m3", "mxint8", NULL, NULL}};
    for (int i = 0; i < 9; i++) {  /* the last three packed: the GPU keeps the codes and unpacks them */
        bq_model *m;
        OK(bq_model_load("models/llama-19m-en", &m));
        if (cfg[i][0]) CHECK(apply_cfg(m, cfg[i], i >= 6) == BQ_OK, "%s: %s", i >= 6 ? "pack" : "quantize", bq_last_error());
        /* quantised activations flip rounding decisions where the GPU's sums differ from
         * the CPU's in the last bit; over more windows the flips average out */
        bq_ppl_opts o = {.ctx = 512, .chunks = cfg[i][1] ? 24 : 8};
        bq_ppl_result rc, rg;
        bq_status s1 = bq_perplexity(m, ids, n, &o, &rc);
        o.device = 1;
        bq_status s2 = bq_perplexity(m, ids, n, &o, &rg);
        CHECK(!s1 && !s2, "ppl: %s", bq_last_error());
        double rel = fabs(rg.ppl - rc.ppl) / rc.ppl;
        /* 0.1%, the bound; 6-bit activations 0.2%: one step of their grid is 1/32
         * of the block maximum, so the rounding flips that float32 sums in another order
         * cause move the result most (measured up to 0.11% over 24 windows) */
        double tol = cfg[i][1] && !strcmp(cfg[i][1], "bfp6_b16") ? 2e-3 : 1e-3;
        CHECK(rel < tol, "CUDA ppl %.6f vs CPU %.6f (%s)", rg.ppl, rc.ppl, cfg[i][0] ? cfg[i][0] : "fp32");
        printf("  CUDA ppl %-9s%s %.6f vs CPU %.6f (rel %.1e); %.0f vs %.0f tok/s\n", cfg[i][0] ? cfg[i][0] : "fp32",
               i >= 6 ? " packed" : cfg[i][3] ? " +attn" : "", rg.ppl,
               rc.ppl, rel, o.chunks * 512 / rg.seconds, o.chunks * 512 / rc.seconds);
        bq_model_free(m);
    }
    free(ids);
    free(txt);
    bq_tokenizer_free(t);
}


/* Every architecture on the GPU against the CPU, token by token: the tiny
 * checkpoints in float32, with weights and activations quantised (the bf16 path,
 * biases and LayerNorm included), and with the KV cache and --attn quantised. */
static void test_cuda_tiny(void)
{
    char why[256];
    if (!bq_cuda_devices(why, sizeof why)) { SKIP("%s: tiny architectures not compared on the GPU", why); return; }
    const char *sh = shared_dir();
    if (!sh) { SKIP("../shared not found: tiny architectures not compared on the GPU"); return; }
    cJSON *tiny;
    size_t n;
    int32_t *ids;
    cJSON *r = tiny_refs(sh, &tiny, &ids, &n);
    const char *cfg[][5] = {{NULL, NULL, NULL, NULL}, {"mxfp4", "mxint8", NULL, NULL}, {"bfp8_b16", "bfp8_b16", "bme4m3_b16", "bfp6_b16"},
                            {"int4_g32", "mxint8", NULL, NULL, "lorc:4"}};  /* LoRC: two more products a linear */
    int count = 0;
    for (cJSON *f = cJSON_GetObjectItem(tiny, "logits_files")->child; f; f = f->next) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/models/tiny/%s/config.json", sh, f->string);
        if (access(dir, R_OK)) { SKIP("%s absent: not compared on the GPU", dir); continue; }
        dir[strlen(dir) - strlen("/config.json")] = 0;
        for (int i = 0; i < 4; i++) {
            bq_model *m;
            if (bq_model_load(dir, &m)) { CHECK(0, "%s: %s", dir, bq_last_error()); break; }
            if (cfg[i][0]) CHECK(apply_cfg(m, cfg[i], 0) == BQ_OK, "%s: quantize: %s", f->string, bq_last_error());
            size_t V = (size_t)bq_model_vocab(m);
            float *lg = malloc(n * V * 4);
            double *lp = malloc(n * 8), worst = 0;
            bq_ctx *g = NULL;
            bq_ctx_opts co = {.size = sizeof co, .device = 1};
            bq_status st = bq_model_logits(m, ids, (int)n, lg);
            if (!st) st = bq_ctx_new_ex(m, (int)n, &co, &g);
            if (!st) st = bq_forward_logprobs(g, ids, (int)n, lp);
            CHECK(!st, "%s: %s", f->string, bq_last_error());
            for (size_t t = 0; !st && t + 1 < n; t++) {  /* log p(ids[t+1]) from the CPU's logits */
                const float *row = lg + t * V;
                float mx = row[0];
                for (size_t v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
                double se = 0;
                for (size_t v = 0; v < V; v++) se += exp((double)row[v] - mx);
                double d = fabs(lp[t] - ((double)row[ids[t + 1]] - mx - log(se)));
                worst = t_max(worst, d);
            }
            /* float32: the same sums in another order; quantised activations: rare rounding flips */
            double tol = cfg[i][0] ? 2e-3 : 1e-5;
            CHECK(!st && worst < tol, "%s %s: GPU log-probabilities differ from the CPU's by %.3g (tolerance %.0e)", f->string,
                  cfg[i][0] ? cfg[i][0] : "fp32", worst, tol);
            printf("  CUDA %-9s %-9s max |log p GPU - CPU| %.2e\n", f->string, cfg[i][0] ? cfg[i][0] : "fp32", worst);
            bq_ctx_free(g);
            free(lg);
            free(lp);
            bq_model_free(m);
        }
        count++;
    }
    CHECK(count > 0, "no tiny architecture compared on the GPU");
    free(ids);
    cJSON_Delete(r);
}

/* `test_engine cuda`: the GPU tests alone (bench/gpu.sh) */
int main(int argc, char **argv)
{
    test_cuda_ppl();
    test_cuda_tiny();
    test_stages(1);
    if (argc > 1 && !strcmp(argv[1], "cuda")) return test_summary("test_engine");
    refs = load_json("tests/refs/refs.json");
    CHECK(refs != NULL, "tests/refs/refs.json missing");
    if (!refs) return test_summary("test_engine");
    bq_set_threads(0);
    test_tokenizer();
    test_llama19m();
    test_tiny();
    test_broken();
    test_pool();
    test_thread_invariance();
    test_decode_thread_invariance();
    test_stages(0);
    test_ppl();
    cJSON_Delete(refs);
    return test_summary("test_engine");
}
