/* blockq logits | tokenize | generate | ppl */
#include "cli.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Options common to the model commands. */
typedef struct {
    const char *model, *ids, *out, *text, *prompt, *text_file, *protocol;
    int threads, json, n, ctx, chunks, top_k;
    double temp, top_p;
    uint64_t seed;
} model_args;

static int parse_int(const char *cmd, const char *opt, const char *s, int lo, int hi, int *v)
{
    uint64_t x;
    if (!parse_u64(s, &x) || x < (uint64_t)lo || x > (uint64_t)hi)
        return cli_error(cmd, "bad %s '%s': expected an integer in [%d, %d]", opt, s, lo, hi);
    *v = (int)x;
    return 0;
}

static int parse_model_args(const char *cmd, int argc, char **argv, model_args *a)
{
    memset(a, 0, sizeof *a);
    a->ctx = 512;
    a->n = 32;
    a->protocol = "all";
    a->temp = 0.0;
    a->top_p = 1.0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
#define OPT(name) (!strcmp(s, name) && v && (++i, 1))
        if (OPT("--model")) a->model = v;
        else if (OPT("--ids")) a->ids = v;
        else if (OPT("--out")) a->out = v;
        else if (OPT("--prompt")) a->prompt = v;
        else if (OPT("--protocol")) a->protocol = v;
        else if (!strcmp(cmd, "tokenize") && OPT("--text")) a->text = v;
        else if (!strcmp(cmd, "ppl") && OPT("--text")) a->text_file = v;
        else if (OPT("--threads")) rc = parse_int(cmd, s, v, 0, 256, &a->threads);
        else if (OPT("-n")) rc = parse_int(cmd, s, v, 0, 1 << 20, &a->n);
        else if (OPT("--ctx")) rc = parse_int(cmd, s, v, 2, 1 << 20, &a->ctx);
        else if (OPT("--chunks")) rc = parse_int(cmd, s, v, 1, 1 << 30, &a->chunks);
        else if (OPT("--seed")) { if (!parse_u64(v, &a->seed)) rc = cli_error(cmd, "bad --seed '%s'", v); }
        else if (OPT("--temperature")) { char *e; a->temp = strtod(v, &e); if (*e || !(a->temp >= 0) || a->temp > 100) rc = cli_error(cmd, "bad --temperature '%s'", v); }
        else if (OPT("--top-p")) { char *e; a->top_p = strtod(v, &e); if (*e || !(a->top_p > 0) || a->top_p > 1) rc = cli_error(cmd, "bad --top-p '%s': expected (0, 1]", v); }
        else if (!strcmp(s, "--json")) a->json = 1;
        else return cli_error(cmd, "unknown or incomplete option '%s'", s);
#undef OPT
        if (rc) return rc;
    }
    if (!a->model) return cli_error(cmd, "missing --model DIR");
    bq_set_threads(a->threads);
    return 0;
}

static int load_model(const char *cmd, const char *dir, bq_model **m)
{
    bq_status st = bq_model_load(dir, m);
    return st ? cli_status(cmd, st) : 0;
}

static int load_tokenizer(const char *cmd, const char *dir, bq_tokenizer **t)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    bq_status st = bq_tokenizer_load(path, t);
    return st ? cli_status(cmd, st) : 0;
}

int cmd_logits(int argc, char **argv)
{
    model_args a;
    int rc = parse_model_args("logits", argc, argv, &a);
    if (rc) return rc;
    if (!a.ids || !a.out) return cli_error("logits", "usage: blockq logits --model DIR --ids IDS.i32 --out OUT.f32");
    void *ids;
    size_t size;
    bq_status st = bq_read_file(a.ids, &ids, &size);
    if (st) return cli_status("logits", st);
    if (size == 0 || size % 4) { free(ids); return cli_error("logits", "'%s' holds %zu bytes: expected a non-empty list of int32 ids", a.ids, size); }
    bq_model *m;
    if ((rc = load_model("logits", a.model, &m))) { free(ids); return rc; }
    int n = (int)(size / 4), V = bq_model_vocab(m);
    float *lg = malloc((size_t)n * V * 4);
    if (!lg) rc = cli_error("logits", "out of memory");
    else if ((st = bq_model_logits(m, ids, n, lg)) || (st = bq_write_file_atomic(a.out, lg, (size_t)n * V * 4)))
        rc = cli_status("logits", st);
    free(lg);
    free(ids);
    bq_model_free(m);
    return rc;
}
