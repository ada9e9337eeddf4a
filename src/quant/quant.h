/* Quantisation configuration: which format each role of each layer takes. */
#ifndef BQ_QUANT_H
#define BQ_QUANT_H
#include "core.h"

/* ---- the TOML subset (toml.c) ---- */
typedef enum { TV_STR, TV_INT, TV_BOOL, TV_TABLE } tv_kind;
typedef struct tkv {
    char *key;
    tv_kind kind;
    char *s;
    long long i;
    struct tkv *items;
    int nitems;
    int line;
} tkv;
typedef struct { tkv *items; int n; } tdoc;

bq_status toml_parse(const char *src, size_t len, const char *path, tdoc *out);
void toml_free(tdoc *d);

/* ---- rules ---- */
typedef struct {
    char pattern[128];
    char w[64], a[64];  /* "" = leave as is */
    char mul[16];       /* "" = leave as is, "exact", "lmul" or "lmul:L" */
    int line;           /* 0 for command-line rules */
} qrule;

struct bq_qconfig {
    qrule *rules;       /* in order; later rules win */
    int nrules;
    char attn[64], kv[64];
    bq_qopts opts;
    char source[256];   /* file name, for messages */
    void (*warn)(void *arg, const char *msg);  /* NULL: standard error */
    void *warn_arg;
};

/* Rules from TOML text already in memory. */
bq_status qconfig_parse(bq_qconfig *q, const char *src, size_t n, const char *path);

/* Glob match with * and ? (whole string). */
int glob_match(const char *pat, const char *s);

#endif
