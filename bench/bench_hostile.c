/* The shapes of the hostile inputs of issue 14, timed at a size and at ten times
 * that size: linear code takes about 10x as long, quadratic 100x. Run from the
 * repository root (it reads the bundled tokenizer and the micro model seed):
 *
 *   build/bench/bench_hostile [--json FILE]
 *
 * Prints a Markdown table; --json writes one JSON object per measurement. */
#include "blockq.h"
#include "hostile_fixtures.h"
#include "quant.h"
#include <cjson/cJSON.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static bq_tokenizer *g_tok, *g_added;

/* seconds to tokenize text (freed here), -1 on failure */
static double time_tokenize(const bq_tokenizer *t, char *text, size_t len)
{
    int32_t *ids;
    size_t k;
    double s = now();
    bq_status st = bq_tokenize(t, text, len, &ids, &k);
    s = now() - s;
    if (!st) free(ids);
    free(text);
    return st ? -1 : s;
}

/* a word of n letters, no spaces */
static double long_word(size_t n)
{
    char *w = malloc(n);
    for (size_t i = 0; i < n; i++) w[i] = "etaoinshrd"[(i * 7 + i / 3) % 10];
    return time_tokenize(g_tok, w, n);
}

/* n bytes of text dense with 255 added tokens */
static double added_tokens(size_t n)
{
    char *s = malloc(n + 64);
    size_t len = 0;
    for (int i = 0; len < n; i++) len += (size_t)snprintf(s + len, n + 64 - len, "word %d <t%d|x> ", i, i % 255);
    return time_tokenize(g_added, s, len);
}

/* a TOML file of n entries */
static double toml_entries(size_t n)
{
    size_t cap = n * 48, len = 0;
    char *src = malloc(cap);
    for (size_t i = 0; i < n; i++) len += (size_t)snprintf(src + len, cap - len, "\"layers.%zu.x\" = { w = \"int8\" }\n", i);
    tdoc d;
    double t = now();
    bq_status st = toml_parse(src, len, "bench", &d);
    t = now() - t;
    if (!st) toml_free(&d);
    free(src);
    return st ? -1 : t;
}

/* n stars before a 'Z' against a 4096-letter name (never returned before) */
static double glob_stars(size_t n)
{
    char *p = malloc(n + 2), name[4097];
    memset(p, '*', n);
    p[n] = 'Z';
    p[n + 1] = 0;
    memset(name, 'a', 4096);
    name[4096] = 0;
    double t = now();
    volatile int r = 0;
    for (int i = 0; i < 100; i++) r += glob_match(p, name);
    t = now() - t;
    free(p);
    return t;
}

/* loading a GGUF of n tokens (the file is written first, untimed) */
static double gguf_vocab(size_t n)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/bq_bench_vocab_%d.gguf", (int)getpid());
    if (hostile_big_vocab_gguf(path, (int)n)) return -1;
    bq_model *m;
    bq_tokenizer *t;
    double s = now();
    bq_status st = bq_model_load(path, &m);
    if (!st) st = bq_tokenizer_from_model(m, &t);
    s = now() - s;
    if (!st) { bq_tokenizer_free(t); bq_model_free(m); }
    unlink(path);
    return st ? -1 : s;
}

static char *added_json(void)
{
    void *js;
    size_t n;
    if (bq_read_file("models/llama-19m-en/tokenizer.json", &js, &n)) return NULL;
    cJSON *root = cJSON_ParseWithLength(js, n), *adds = cJSON_GetObjectItem(root, "added_tokens");
    free(js);
    for (int i = 0; i < 255; i++) {
        char c[32];
        snprintf(c, sizeof c, "<t%d|x>", i);
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", 8192 + i);
        cJSON_AddStringToObject(a, "content", c);
        cJSON_AddItemToArray(adds, a);
    }
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

int main(int argc, char **argv)
{
    const char *json = argc > 2 && !strcmp(argv[1], "--json") ? argv[2] : NULL;
    char *aj = added_json();
    if (bq_tokenizer_load("models/llama-19m-en/tokenizer.json", &g_tok) || !aj ||
        tokenizer_parse(aj, strlen(aj), "added", &g_added)) {
        fprintf(stderr, "bench_hostile: %s (run from the repository root)\n", bq_last_error());
        return 1;
    }
    free(aj);
    static const struct { const char *shape, *unit; double (*fn)(size_t); size_t n; const char *before; } cases[] = {
        {"BPE, one long word", "letters", long_word, 100000, "12 s at 100k, minutes beyond"},
        {"255 added tokens in a text", "bytes", added_tokens, 200000, "over a minute at 2 MB"},
        {"TOML entries", "entries", toml_entries, 10000, "26 s at 100,000"},
        {"glob '*...*Z' x100 calls", "stars", glob_stars, 10, "exponential: no answer at 100"},
        {"GGUF vocabulary, load", "tokens", gguf_vocab, 15194, "37 s at 152k"},
    };
    FILE *jf = json ? fopen(json, "w") : NULL;
    printf("| input shape | n | seconds at n | seconds at 10n | ratio (linear ~10) | before this fix |\n|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        double a = cases[i].fn(cases[i].n), b = cases[i].fn(10 * cases[i].n);
        printf("| %s | %zu %s | %.4f | %.4f | %.1f | %s |\n", cases[i].shape, cases[i].n, cases[i].unit, a, b, b / a, cases[i].before);
        if (jf)
            fprintf(jf, "{\"shape\": \"%s\", \"n\": %zu, \"seconds_n\": %.6f, \"seconds_10n\": %.6f, \"ratio\": %.3f}\n", cases[i].shape,
                    cases[i].n, a, b, b / a);
    }
    if (jf) fclose(jf);
    bq_tokenizer_free(g_tok);
    bq_tokenizer_free(g_added);
    return 0;
}
