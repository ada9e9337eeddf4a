/* The export path under a hostile tokenizer.json: a micro model takes the fuzz
 * input as its tokenizer and is written as GGUF and as .bq. Writing must either
 * refuse, or produce a file that reads back with a tokenizer that encodes a text
 * exactly as the one given does (never "(null)" tokens, never a different model). */
#include "slots.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static bq_model *base;

static int same_encoding(const bq_tokenizer *a, const bq_tokenizer *b, const char *text)
{
    int32_t *ia = NULL, *ib = NULL;
    size_t na = 0, nb = 0;
    bq_status sa = bq_tokenize(a, text, strlen(text), &ia, &na), sb = bq_tokenize(b, text, strlen(text), &ib, &nb);
    int same = sa == sb && na == nb && (!na || !memcmp(ia, ib, na * sizeof *ia));
    free(ia);
    free(ib);
    return same;
}

static void round_trip(const char *path, bq_status (*save)(const bq_model *, const char *), const bq_tokenizer *given)
{
    bq_status st = save(base, path);
    if (st != BQ_OK) {  /* a tokenizer that loads must export, unless the file format cannot hold it */
        if (given && st != BQ_ERR_UNSUPPORTED) abort();
        return;
    }
    if (!given) abort();  /* one that does not load must be refused */
    bq_model *back;
    bq_tokenizer *t;
    if (bq_model_load(path, &back) != BQ_OK || bq_tokenizer_from_model(back, &t) != BQ_OK) abort();
    static const char *const texts[] = {"abc ab", "ba  ab\n", "<s>ab</s>", "aab aab ab"};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++)
        if (!same_encoding(given, t, texts[i])) abort();
    bq_tokenizer_free(t);
    bq_model_free(back);
    unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    if (!base) {
        const char *p = getenv("BQ_FUZZ_MODEL");
        if (bq_model_load(p ? p : "fuzz/seeds/bqfile/micro_mxfp4.bq", &base)) abort();
        free(base->tokenizer_json);
        base->tokenizer_json = NULL;
    }
    char *js = malloc(n + 1);
    memcpy(js, d, n);
    js[n] = 0;
    base->tokenizer_json = js;
    base->tokenizer_len = n;
    bq_tokenizer *given = NULL;
    /* GGUF also needs every id below the embedding rows */
    if (tokenizer_parse(js, n, "fuzz", &given) == BQ_OK && tokenizer_size(given) > bq_model_vocab(base)) {
        bq_tokenizer_free(given);
        given = NULL;
    }
    char path[64];
    snprintf(path, sizeof path, "/tmp/bq_fuzz_export_%d.gguf", (int)getpid());
    round_trip(path, bq_model_save_gguf, given);
    bq_tokenizer_free(given);
    given = NULL;
    tokenizer_parse(js, n, "fuzz", &given);
    snprintf(path, sizeof path, "/tmp/bq_fuzz_export_%d.bq", (int)getpid());
    round_trip(path, bq_model_save, given);
    bq_tokenizer_free(given);
    base->tokenizer_json = NULL;
    base->tokenizer_len = 0;
    free(js);
    return 0;
}
