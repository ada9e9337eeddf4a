/* Hostile inputs, round 2 (issue 14): one check per class of defect found by the
 * outside attack, each on an input shaped like the attack's (docs/robustness.md
 * maps classes to these checks). Super-linear paths are exercised at sizes where
 * the old code took minutes; the fuzzers' per-input time limit is what fails CI. */
#include "blockq.h"
#include "harness.h"
#include "model.h"
#include "qkern.h"
#include "quant.h"
#include "slots.h"
#include "hostile_fixtures.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <unistd.h>

/* A small byte-level BPE tokenizer as JSON, with extra members spliced in. */
static char *tok_json(const char *model_extra, const char *merges, const char *added)
{
    static char buf[1 << 16];
    snprintf(buf, sizeof buf,
             "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"d\": 3, \"x\": 4, \"ab\": 5, \"bc\": 6, "
             "\"abc\": 7, \"\\u0120\": 8}, \"merges\": [%s]%s}, \"normalizer\": null, \"pre_tokenizer\": {\"type\": "
             "\"ByteLevel\", \"use_regex\": true}, \"added_tokens\": [%s]}",
             merges, model_extra, added);
    return buf;
}

static int encode(const char *js, const char *text, int32_t *out, size_t cap)
{
    bq_tokenizer *t;
    if (tokenizer_parse(js, strlen(js), "t", &t)) { CHECK(0, "parse: %s", bq_last_error()); return -1; }
    int32_t *ids;
    size_t n;
    int r = -1;
    if (bq_tokenize(t, text, strlen(text), &ids, &n) == BQ_OK) {
        r = (int)n;
        memcpy(out, ids, (n < cap ? n : cap) * sizeof *ids);
        free(ids);
    }
    bq_tokenizer_free(t);
    return r;
}

static void expect_refused(const char *js, const char *msg, const char *what)
{
    bq_tokenizer *t = NULL;
    bq_status st = tokenizer_parse(js, strlen(js), "t", &t);
    CHECK(st != BQ_OK && strstr(bq_last_error(), msg), "%s: accepted or said '%s' (want '%s')", what, st ? bq_last_error() : "ok", msg);
    bq_tokenizer_free(t);
}

/* Classes 1-3: tokenizer validation, BPE order, added tokens. */
static void test_tokenizer(void)
{
    int32_t ids[16];
    /* merges by rank: "b c" (0) before "a b" (1), then "a bc" (2): abc -> [abc] */
    int n = encode(tok_json("", "\"b c\", \"a b\", \"a bc\"", ""), "abc", ids, 16);
    CHECK(n == 1 && ids[0] == 7, "bpe abc: %d tokens, first %d", n, n > 0 ? ids[0] : -1);
    /* without "a bc": a + bc */
    n = encode(tok_json("", "\"b c\", \"a b\"", ""), "abc", ids, 16);
    CHECK(n == 2 && ids[0] == 0 && ids[1] == 6, "bpe a+bc: %d tokens", n);
    /* ignore_merges takes a word that is a token whole (LLaMA-3) */
    n = encode(tok_json(", \"ignore_merges\": true", "", ""), "abc", ids, 16);
    CHECK(n == 1 && ids[0] == 7, "ignore_merges: %d tokens", n);
    n = encode(tok_json(", \"ignore_merges\": false", "", ""), "abc", ids, 16);
    CHECK(n == 3, "no merges: %d tokens", n);
    /* added tokens: the leftmost match, then the longest one there */
    const char *added = "{\"id\": 9, \"content\": \"ab\"}, {\"id\": 10, \"content\": \"abcd\"}, {\"id\": 11, \"content\": \"bcd\"}";
    n = encode(tok_json("", "", added), "xabcdabc", ids, 16);
    CHECK(n == 4 && ids[0] == 4 && ids[1] == 10 && ids[2] == 9 && ids[3] == 2, "leftmost-longest: %d tokens [%d %d %d %d]", n,
          ids[0], ids[1], ids[2], ids[3]);
    n = encode(tok_json("", "", added), "xbcdab", ids, 16);
    CHECK(n == 3 && ids[0] == 4 && ids[1] == 11 && ids[2] == 9, "bcd then ab: %d tokens", n);

    /* a long word and a text dense with added tokens (minutes before: quadratic) */
    size_t L = 1 << 20;
    char *w = malloc(L + 1);
    for (size_t i = 0; i < L; i++) w[i] = "abc"[i % 3];
    w[L] = 0;
    bq_tokenizer *t;
    int32_t *out;
    size_t k;
    const char *js = tok_json("", "\"b c\", \"a b\", \"a bc\"", "");
    if (tokenizer_parse(js, strlen(js), "t", &t) == BQ_OK) {
        CHECK(bq_tokenize(t, w, L, &out, &k) == BQ_OK && k == (L + 2) / 3, "1 MiB word: %zu tokens", k);
        for (size_t i = 0; i + 1 < k; i++)
            if (out[i] != 7) { CHECK(0, "1 MiB word: token %zu is %d", i, out[i]); break; }
        free(out);
        bq_tokenizer_free(t);
    }
    js = tok_json("", "", added);
    if (tokenizer_parse(js, strlen(js), "t", &t) == BQ_OK) {
        for (size_t i = 0; i < L; i++) w[i] = "abcdx"[i % 5];
        CHECK(bq_tokenize(t, w, L, &out, &k) == BQ_OK && k == 2 * (L / 5) + 1, "added tokens over 1 MiB: %zu tokens", k);
        free(out);
        bq_tokenizer_free(t);
    }
    free(w);

    /* refused, each by name */
    expect_refused(tok_json("", "", "{\"content\": \"<x>\"}"), "added token 0 has no valid id", "added token without id");
    expect_refused(tok_json("", "", "{\"id\": 12}"), "no valid id and content", "added token without content");
    expect_refused(tok_json("", "[]", ""), "neither", "empty merge");
    expect_refused(tok_json("", "[1, 2]", ""), "neither", "numeric merge");
    expect_refused(tok_json("", "\"c d\"", ""), "merge 0: 'cd' is not", "merge result not in the vocabulary");  /* cd */
    expect_refused(tok_json("", "\"a b\", \"a b\"", ""), "repeats", "duplicate merge");
    expect_refused(tok_json("", "\"a  b\"", ""), "one space", "merge with two spaces");
    expect_refused(tok_json(", \"dropout\": 0.1", "", ""), "dropout", "dropout");
    expect_refused(tok_json(", \"continuing_subword_prefix\": \"##\"", "", ""), "continuing_subword_prefix", "prefix");
    expect_refused(tok_json(", \"end_of_word_suffix\": \"</w>\"", "", ""), "end_of_word_suffix", "suffix");
    expect_refused(tok_json(", \"byte_fallback\": true", "", ""), "byte_fallback", "byte_fallback");
    expect_refused(tok_json(", \"ignore_merges\": 1", "", ""), "true or false", "ignore_merges of the wrong type");
    expect_refused(tok_json("", "", "{\"id\": 12, \"content\": \"<x>\", \"lstrip\": true}"), "lstrip", "lstrip");
    expect_refused(tok_json("", "", "{\"id\": 12, \"content\": \"<x>\"}, {\"id\": 13, \"content\": \"<x>\"}"), "appears twice",
                   "duplicate added content");
    expect_refused(tok_json(", \"vocab\": {}", "", ""), "appears twice in one object", "duplicate JSON key");
    expect_refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -3}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", "bad id", "negative id");
    expect_refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 1e7}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", "bad id", "id 1e7");
    expect_refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", "id 0 appears twice", "dup id");
    expect_refused("{\"model\": {\"type\": \"BPE\", \"merges\": []}}", "vocab object", "no vocab");
}

/* Class 4 and 15: linear globbing; TOML duplicate checks in linear time. */
static void test_glob_toml(void)
{
    static const struct { const char *p, *s; int m; } g[] = {
        {"layers.*.mlp.*", "layers.3.mlp.up_proj", 1}, {"*", "", 1}, {"", "", 1}, {"", "a", 0}, {"a*b*c", "abxbc", 1},
        {"a*b*c", "abxbcx", 0}, {"*proj", "q_proj", 1}, {"?_proj", "q_proj", 1}, {"??_proj", "q_proj", 0},
        {"*a*a*a", "aaa", 1}, {"*a*a*a*", "aa", 0}, {"lm_head", "lm_head", 1}, {"lm_hea?", "lm_head", 1},
    };
    for (size_t i = 0; i < sizeof g / sizeof *g; i++)
        CHECK(glob_match(g[i].p, g[i].s) == g[i].m, "glob '%s' on '%s'", g[i].p, g[i].s);
    char pat[202], name[4096];
    memset(pat, '*', 200);
    pat[200] = 'Z';
    pat[201] = 0;
    memset(name, 'a', sizeof name - 1);
    name[sizeof name - 1] = 0;
    CHECK(!glob_match(pat, name), "200 stars matched");  /* exponential before: never returned */
    /* 100,000 entries (26 s before) and a duplicate found in one pass */
    size_t cap = 100000 * 48, len = 0;
    char *src = malloc(cap);
    for (int i = 0; i < 100000; i++) len += (size_t)snprintf(src + len, cap - len, "\"layers.%d.x\" = { w = \"int8\" }\n", i);
    tdoc d;
    CHECK(toml_parse(src, len, "big", &d) == BQ_OK && d.n == 100000, "100,000 entries: %s", bq_last_error());
    toml_free(&d);
    len += (size_t)snprintf(src + len, cap - len, "\"layers.7.x\" = \"int4\"\n");
    CHECK(toml_parse(src, len, "big", &d) == BQ_ERR_PARSE && strstr(bq_last_error(), "duplicate key"), "duplicate not found");
    free(src);
    const char *dup = "\"a\" = { w = \"int8\", w = \"int4\" }\n";
    CHECK(toml_parse(dup, strlen(dup), "t", &d) == BQ_ERR_PARSE && strstr(bq_last_error(), "duplicate key"), "inline duplicate");
}

/* Classes 5-6: finite inputs stay finite in wide-element blocks; unpack(pack) == qdq bit for bit. */
static void test_formats(void)
{
    static const char *const names[] = {"e8m7_b16_sbf16", "e8m7_b16_sfp32", "e8m7_b16_sfp16", "e5m2_b16_sfp32"};
    float x[64], q[64], u[64];
    for (size_t f = 0; f < sizeof names / sizeof *names; f++) {
        bq_format *fmt;
        if (bq_format_parse(names[f], &fmt)) { CHECK(0, "%s: %s", names[f], bq_last_error()); continue; }
        for (int trial = 0; trial < 200; trial++) {
            for (int i = 0; i < 64; i++) {  /* magnitudes across the whole float32 range, subnormals included */
                int e = (int)(t_rand() % 280) - 150;
                x[i] = ldexpf(1.0f + (float)(t_rand() % 1000) / 1000.0f, e > 127 ? 127 : e) * (t_rand() & 1 ? -1.0f : 1.0f);
            }
            if (trial == 0) { x[0] = FLT_MAX; x[1] = -FLT_MAX; x[2] = 0x1p-149f; }
            bq_qopts o = {BQ_ROUND_RNE, 0, 1};
            size_t sz = bq_packed_size(fmt, 1, 64);
            uint8_t *p = malloc(sz);
            int ok = bq_qdq(fmt, x, q, 1, 64, &o) == BQ_OK && bq_pack(fmt, x, 1, 64, &o, p, sz) == BQ_OK &&
                     bq_unpack(fmt, p, sz, 1, 64, u) == BQ_OK;
            free(p);
            CHECK(ok, "%s: %s", names[f], bq_last_error());
            int finite = 1, same = 1;
            for (int i = 0; i < 64; i++) {
                finite &= isfinite(q[i]) != 0;
                same &= !memcmp(&q[i], &u[i], 4);
            }
            if (!finite || !same) { CHECK(0, "%s trial %d: finite %d, unpack(pack) == qdq %d", names[f], trial, finite, same); break; }
        }
        bq_format_free(fmt);
    }
    bq_format *f;
    CHECK(bq_format_parse("e2m0:ieee", &f) != BQ_OK, "e2m0:ieee accepted (it has no NaN code)");
}

/* Classes 10-13: config settings refused or implemented; every derived dimension real. */
static const char *LLAMA =
    "{\"model_type\": \"%s\", \"hidden_size\": %d, \"intermediate_size\": 32, \"num_hidden_layers\": 1, "
    "\"num_attention_heads\": 4, \"vocab_size\": 16%s}";

static bq_status cfg(const char *type, int hidden, const char *extra)
{
    char js[1024];
    bq_config c;
    snprintf(js, sizeof js, LLAMA, type, hidden, extra);
    return config_parse(js, strlen(js), "config.json", &c);
}

static void test_config(void)
{
    CHECK(cfg("llama", 64, "") == BQ_OK, "plain llama: %s", bq_last_error());
    static const struct { const char *type, *extra, *msg; } bad[] = {
        {"llama", ", \"hidden_act\": 7", "must be a string"},
        {"llama", ", \"partial_rotary_factor\": 0.5", "partial_rotary_factor"},
        {"llama", ", \"rope_scaling\": \"linear\"", "rope_scaling"},
        {"llama", ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}", "rope_scaling"},
        {"llama", ", \"rope_parameters\": {\"rope_type\": \"yarn\"}", "rope_type"},
        {"llama", ", \"rope_parameters\": {\"rope_type\": 3}", "rope_type"},
        {"llama", ", \"rope_parameters\": {\"partial_rotary_factor\": 0.25}", "partial_rotary_factor"},
        {"llama", ", \"hidden_size\": 64", "appears twice"},
        {"qwen2", ", \"use_sliding_window\": true", "use_sliding_window"},
        {"qwen3", ", \"layer_types\": [\"sliding_attention\"]", "layer_types"},
        {"mistral", ", \"sliding_window\": -4", "sliding_window"},
        {"mistral", ", \"rms_norm_eps\": \"x\"", "positive number"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        bq_status st = cfg(bad[i].type, 64, bad[i].extra);
        CHECK(st != BQ_OK && strstr(bq_last_error(), bad[i].msg), "%s%s: %s", bad[i].type, bad[i].extra, st ? bq_last_error() : "accepted");
    }
    CHECK(cfg("llama", 2, "") != BQ_OK && strstr(bq_last_error(), "head dimension of 0"), "hidden 2 < 4 heads: %s", bq_last_error());
    char js[1024];
    bq_config c;
    snprintf(js, sizeof js, LLAMA, "mistral", 64, ", \"sliding_window\": 3");
    CHECK(config_parse(js, strlen(js), "c", &c) == BQ_OK && c.sliding_window == 3, "mistral window");
    snprintf(js, sizeof js, LLAMA, "mistral", 64, ", \"sliding_window\": null");
    CHECK(config_parse(js, strlen(js), "c", &c) == BQ_OK && c.sliding_window == 0, "mistral without a window");
}

/* A sliding window of 1 makes each position attend to itself only: its logits are
 * then those of the same token alone (V does not depend on the rotary position). */
static void test_sliding_window(void)
{
    bq_model *m;
    if (bq_model_load("models/llama-19m-en", &m)) { CHECK(0, "load: %s", bq_last_error()); return; }
    int V = bq_model_vocab(m), n = 6;
    int32_t ids[6] = {17, 250, 1033, 9, 77, 4000};
    float *all = malloc((size_t)n * V * 4), *one = malloc((size_t)V * 4), *full = malloc((size_t)n * V * 4);
    CHECK(bq_model_logits(m, ids, n, full) == BQ_OK, "logits: %s", bq_last_error());
    m->c.sliding_window = 1;
    CHECK(bq_model_logits(m, ids, n, all) == BQ_OK, "logits: %s", bq_last_error());
    /* one row against n rows may take other BLAS kernels: equal up to float32 sums (1e-4 relative) */
    double worst = 0, moved = 0;
    for (int t = 0; t < n; t++) {
        CHECK(bq_model_logits(m, &ids[t], 1, one) == BQ_OK, "logits: %s", bq_last_error());
        for (int v = 0; v < V; v++) {
            double d = fabs((double)one[v] - all[(size_t)t * V + v]) / (1.0 + fabs(one[v]));
            worst = d > worst || d != d ? d : worst;  /* NaN wins */
        }
    }
    for (int v = 0; v < V; v++) moved += fabs((double)full[(size_t)(n - 1) * V + v] - all[(size_t)(n - 1) * V + v]);
    CHECK(worst <= 1e-4, "window 1: a position's logits differ from its token alone by %g", worst);
    CHECK(moved > 1e-2, "the window changed nothing (%g)", moved);
    m->c.sliding_window = n;  /* a window as long as the text is no window */
    CHECK(bq_model_logits(m, ids, n, all) == BQ_OK && !memcmp(all, full, (size_t)n * V * 4), "window n != no window");
    free(all);
    free(one);
    free(full);
    bq_model_free(m);
}

/* Class 11: a tensor name twice, in one header or across two. */
static void test_safetensors_dup(void)
{
    static const char hdr[] = "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
                              "\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}";
    static const char one[] = "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}";
    uint8_t data[8] = {0};
    st_set s = {0};
    CHECK(st_parse_header(&s, "a", hdr, strlen(hdr), data, 8) != BQ_OK && strstr(bq_last_error(), "twice"), "dup in a header");
    st_close(&s);
    memset(&s, 0, sizeof s);
    CHECK(st_parse_header(&s, "a", one, strlen(one), data, 8) == BQ_OK && st_find(&s, "w"), "one header");
    CHECK(st_parse_header(&s, "b", one, strlen(one), data, 8) != BQ_OK && strstr(bq_last_error(), "twice"), "dup across shards");
    CHECK(s.n == 1 && st_find(&s, "w") && st_find(&s, "w")->data == data, "the first shard's tensor stays");
    st_close(&s);
}

/* Class 13: the run-time quantisation of .bq headers and GGUF's blockq.runtime. */
static void test_runtime_json(void)
{
    static const struct { const char *js; int ok; } c[] = {
        {"{\"round\": \"away\", \"seed\": 12}", 1}, {"{\"round\": \"up\"}", 0}, {"{\"round\": 3}", 0},
        {"{\"seed\": 1e30}", 0}, {"{\"seed\": -1}", 0}, {"{\"seed\": 1.5}", 0}, {"{\"seed\": \"18446744073709551615\"}", 1},
        {"{\"seed\": \"18446744073709551616\"}", 0}, {"{\"attn\": \"mxfp3\"}", 0}, {"{\"kv\": \"bfp8_b16\"}", 1},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        bq_model m;
        memset(&m, 0, sizeof m);
        cJSON *o = cJSON_Parse(c[i].js);
        bq_status st = runtime_from_json(o, &m, "h");
        CHECK((st == BQ_OK) == c[i].ok, "%s: %s", c[i].js, st ? bq_last_error() : "accepted");
        if (!st && i == 6) CHECK(m.qopts.seed == UINT64_MAX, "seed 2^64-1 read as %llu", (unsigned long long)m.qopts.seed);
        bq_format_free(m.attn_q);
        bq_format_free(m.kv_q);
        cJSON_Delete(o);
    }
}

/* Classes 1, 8: GGUF export carries --aq/--attn/--kv and pads the token list;
 * a tokenizer id past the embedding is refused before anything is written. */
static void test_gguf_export(void)
{
    bq_model *m, *back;
    if (bq_model_load("models/llama-19m-en", &m)) { CHECK(0, "load: %s", bq_last_error()); return; }
    bq_qconfig *q;
    bq_qconfig_new(&q);
    CHECK(bq_qconfig_add_rule(q, "default", "int8_b32_sfp16", "mxint8") == BQ_OK, "rule: %s", bq_last_error());
    CHECK(bq_model_pack(m, q, 0) == BQ_OK, "pack: %s", bq_last_error());
    bq_qconfig_free(q);
    bq_format_parse("bfp8_b16", &m->attn_q);
    bq_format_parse("mxfp6_e2m3", &m->kv_q);
    m->qopts.round = BQ_ROUND_AWAY;
    const char *path = t_tmp("bq_hostile.gguf");
    CHECK(bq_model_save_gguf(m, path) == BQ_OK, "save: %s", bq_last_error());
    if (bq_model_load(path, &back) == BQ_OK) {
        CHECK(back->attn_q && !strcmp(back->attn_q->name, m->attn_q->name) && back->kv_q && !strcmp(back->kv_q->name, m->kv_q->name) &&
              back->qopts.round == BQ_ROUND_AWAY && back->L[3].down.aq && !strcmp(back->L[3].down.aq->name, "mxint8"),
              "run-time quantisation lost in GGUF");
        int32_t ids[5] = {5, 99, 1234, 7, 42};
        int V = bq_model_vocab(m);
        float *a = malloc(5 * (size_t)V * 4), *b = malloc(5 * (size_t)V * 4);
        CHECK(bq_model_logits(m, ids, 5, a) == BQ_OK && bq_model_logits(back, ids, 5, b) == BQ_OK &&
              !memcmp(a, b, 5 * (size_t)V * 4), "GGUF model computes something else");
        free(a);
        free(b);
        bq_model_free(back);
    } else CHECK(0, "reload: %s", bq_last_error());
    /* a tokenizer naming id 1e6 (a 124 MB token list before) */
    char *saved = m->tokenizer_json;
    size_t saved_len = m->tokenizer_len;
    const char *far = tok_json("", "", "{\"id\": 1000000, \"content\": \"<far>\"}");
    m->tokenizer_json = (char *)far;
    m->tokenizer_len = strlen(far);
    unlink(path);
    CHECK(bq_model_save_gguf(m, path) != BQ_OK && strstr(bq_last_error(), "embedding rows") && access(path, F_OK) != 0,
          "id past the embedding: %s", bq_last_error());
    const char *broken = tok_json("", "[1, 2]", "");
    m->tokenizer_json = (char *)broken;
    m->tokenizer_len = strlen(broken);
    CHECK(bq_model_save_gguf(m, path) != BQ_OK && access(path, F_OK) != 0, "numeric merge exported");
    CHECK(bq_model_save(m, t_tmp("bq_hostile.bq")) != BQ_OK, "numeric merge stored in .bq");
    /* a small tokenizer is padded to the embedding's rows with [PAD<id>] */
    const char *small = tok_json("", "\"a b\"", "");
    m->tokenizer_json = (char *)small;
    m->tokenizer_len = strlen(small);
    CHECK(bq_model_save_gguf(m, path) == BQ_OK, "small tokenizer: %s", bq_last_error());
    bq_tokenizer *t;
    if (bq_model_load(path, &back) == BQ_OK) {
        if (bq_tokenizer_from_model(back, &t) == BQ_OK) {
            int kind;
            const char *p = tokenizer_token(t, bq_model_vocab(m) - 1, &kind);
            CHECK(tokenizer_size(t) == bq_model_vocab(m) && p && !strncmp(p, "[PAD", 4), "token list not padded");
            bq_tokenizer_free(t);
        } else CHECK(0, "tokenizer: %s", bq_last_error());
        bq_model_free(back);
    } else CHECK(0, "reload: %s", bq_last_error());
    unlink(path);
    m->tokenizer_json = saved;
    m->tokenizer_len = saved_len;
    bq_model_free(m);
}

/* Class 7: a GGUF with Qwen2's vocabulary size (152k tokens) loads and its tokenizer
 * works (37 s before: a linear lookup per token; bench/bench_hostile times it). */
static void test_gguf_big_vocab(void)
{
    const char *path = t_tmp("bq_hostile_vocab.gguf");
    enum { NV = 151936 };
    CHECK(hostile_big_vocab_gguf(path, NV) == BQ_OK, "write: %s", bq_last_error());
    bq_model *m;
    bq_tokenizer *t;
    if (bq_model_load(path, &m) == BQ_OK) {
        CHECK(bq_model_vocab(m) == NV, "vocab %d", bq_model_vocab(m));
        if (bq_tokenizer_from_model(m, &t) == BQ_OK) {
            int32_t *ids;
            size_t n;
            CHECK(tokenizer_size(t) == NV && bq_tokenize(t, "t151935", 7, &ids, &n) == BQ_ERR_PARSE, "tokenizer of %d", tokenizer_size(t));
            bq_tokenizer_free(t);
        } else CHECK(0, "tokenizer: %s", bq_last_error());
        int32_t ids[2] = {151935, 3};
        float *lg = malloc(2 * (size_t)NV * 4);
        CHECK(bq_model_logits(m, ids, 2, lg) == BQ_OK, "logits: %s", bq_last_error());
        free(lg);
        bq_model_free(m);
    } else CHECK(0, "load: %s", bq_last_error());
    unlink(path);
}

int main(void)
{
    test_tokenizer();
    test_glob_toml();
    test_formats();
    test_config();
    test_sliding_window();
    test_safetensors_dup();
    test_runtime_json();
    test_gguf_export();
    test_gguf_big_vocab();
    return test_summary("test_hostile");
}
