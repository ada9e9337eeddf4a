/* Inputs shaped like the hostile ones of issue 14, built in memory, shared by
 * tests/test_hostile.c and bench/bench_hostile.c. Needs the internal headers. */
#ifndef BQ_HOSTILE_FIXTURES_H
#define BQ_HOSTILE_FIXTURES_H
#include "slots.h"
#include <stdio.h>
#include <stdlib.h>

/* A GGUF of nv tokens: the micro model (fuzz/seeds) with its tied embedding widened
 * to nv rows and a tokenizer of nv single-token words. */
static bq_status hostile_big_vocab_gguf(const char *path, int nv)
{
    bq_model *m;
    bq_status st = bq_model_load("fuzz/seeds/bqfile/micro_mxfp4.bq", &m);
    if (st) return st;
    int H = m->c.hidden;
    float *emb = calloc((size_t)nv * H, sizeof *emb);
    size_t cap = (size_t)nv * 24 + 4096, len = 0;
    char *js = malloc(cap);
    if (!emb || !js) { free(emb); free(js); bq_model_free(m); return BQ_ERR_NOMEM; }
    for (size_t i = 0; i < (size_t)nv * H; i++) emb[i] = (float)((i * 2654435761u) % 1000) / 4096.0f;
    free(m->tok_emb);
    m->tok_emb = m->head.w = emb;
    m->c.vocab = m->head.out = nv;
    len += (size_t)snprintf(js + len, cap - len, "{\"model\": {\"type\": \"BPE\", \"merges\": [], \"vocab\": {");
    for (int i = 0; i < nv; i++) len += (size_t)snprintf(js + len, cap - len, "%s\"t%d\": %d", i ? ", " : "", i, i);
    len += (size_t)snprintf(js + len, cap - len, "}}, \"normalizer\": null, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}");
    free(m->tokenizer_json);
    m->tokenizer_json = js;
    m->tokenizer_len = len;
    st = bq_model_save_gguf(m, path);
    bq_model_free(m);
    return st;
}

#endif
