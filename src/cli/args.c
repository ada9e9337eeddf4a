/* Argument parsing helpers shared by the subcommands. */
#include "cli.h"
#include "bq_cuda.h"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cli_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "blockq %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return EXIT_BADINPUT;
}

int cli_status(const char *cmd, bq_status st)
{
    /* the library names no options; the CLI says which one goes on past NaN/Inf */
    fprintf(stderr, "blockq %s: %s%s\n", cmd, bq_last_error(), st == BQ_ERR_NONFINITE ? " (use --allow-nonfinite to go on)" : "");
    return st == BQ_ERR_NOMEM ? EXIT_FAIL : EXIT_BADINPUT;
}

int parse_u64(const char *s, uint64_t *v)
{
    if (!s || !*s || *s == '-' || *s == '+') return 0;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *end) return 0;
    *v = x;
    return 1;
}

int parse_shape(const char *s, size_t *rows, size_t *cols)
{
    const char *x = s ? strchr(s, 'x') : NULL;
    if (!x) return 0;
    char a[32];
    size_t n = (size_t)(x - s);
    if (n == 0 || n >= sizeof a) return 0;
    memcpy(a, s, n);
    a[n] = 0;
    uint64_t r, c;
    if (!parse_u64(a, &r) || !parse_u64(x + 1, &c) || r == 0 || c == 0) return 0;
    if (r > (1ull << 40) || c > (1ull << 40) || r * c > (1ull << 40)) return 0;
    *rows = (size_t)r;
    *cols = (size_t)c;
    return 1;
}

int parse_round(const char *s, bq_round *r)
{
    static const char *names[] = {"rne", "away", "zero", "stochastic"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) { *r = (bq_round)i; return 1; }
    return 0;
}

/* --device cpu|cuda|auto -> 0 or 1 in *dev; auto falls back to the CPU, saying why. */
int cli_device(const char *cmd, const char *s, int *dev)
{
    *dev = 0;
    if (!s || !strcmp(s, "cpu")) return 0;
    char why[256];
    if (!strcmp(s, "cuda")) {  /* insisted on: no GPU is an error before anything is loaded */
        if (bq_cuda_devices(why, sizeof why) == 0) return cli_error(cmd, "--device cuda: %s", why);
        *dev = 1;
        return 0;
    }
    if (!strcmp(s, "auto")) {
        *dev = bq_cuda_devices(why, sizeof why) > 0;
        if (!*dev) fprintf(stderr, "blockq %s: %s; running on the CPU\n", cmd, why);
        return 0;
    }
    return cli_error(cmd, "bad --device '%s': expected cpu, cuda or auto", s);
}

bq_status cli_qconfig(const char *const *names, const char *const *values, int n, const char *config, int round_set,
                      bq_round r, uint64_t seed, bq_qconfig **out)
{
    bq_qconfig *q;
    bq_status st = bq_qconfig_new(&q);
    if (st) return st;
    for (int i = 0; i < n && !st; i++)
        if (values[i]) st = bq_qconfig_set(q, names[i], values[i]);
    if (!st && config) st = bq_qconfig_load(q, config);
    if (!st && (round_set || !config)) bq_qconfig_set_round(q, r, seed);
    if (st) { bq_qconfig_free(q); q = NULL; }
    *out = q;
    return st;
}

int cli_ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* The model's own tokenizer: from the loaded model, or for a folder its tokenizer.json,
 * or the one a .bq or GGUF file carries (read from the file's header and vocabulary). */
int cli_load_tokenizer(const char *cmd, const char *path, const bq_model *m, bq_tokenizer **t)
{
    bq_status st;
    if (m) return (st = bq_tokenizer_from_model(m, t)) ? cli_status(cmd, st) : 0;
    char tp[4200];
    snprintf(tp, sizeof tp, "%s/tokenizer.json", path);
    if (access(path, F_OK) == 0 && access(tp, F_OK) != 0) {  /* a .bq or GGUF file */
        bq_model *fm;
        if ((st = bq_model_load(path, &fm))) return cli_status(cmd, st);
        st = bq_tokenizer_from_model(fm, t);
        bq_model_free(fm);
        return st ? cli_status(cmd, st) : 0;
    }
    return (st = bq_tokenizer_load(tp, t)) ? cli_status(cmd, st) : 0;
}

int cli_tokenize_file(const char *cmd, const char *model, const bq_model *m, const char *text, int32_t **ids, size_t *n,
                      bq_tokenizer **keep)
{
    void *t = NULL;
    size_t len;
    bq_tokenizer *tk = NULL;
    int rc = cli_load_tokenizer(cmd, model, m, &tk);
    if (rc) return rc;
    bq_status st = bq_read_file(text, &t, &len);
    if (!st) st = bq_tokenize(tk, t, len, ids, n);
    free(t);
    if (keep && !st) *keep = tk;
    else bq_tokenizer_free(tk);
    return st ? cli_status(cmd, st) : 0;
}
