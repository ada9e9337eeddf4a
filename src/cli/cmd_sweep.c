/* blockq sweep: perplexity for a list of W/A format settings, written as a
 * Markdown table, JSON and an SVG plot of perplexity against bits/element. */
#include "cli.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The seed paper's grid (Zhang et al. 2023, Table 2 families) plus MX / NVFP4 / int baselines.
 * "W" means the same format for weights and activations; "W/A" sets them apart. */
static const char *DEFAULT_GRID =
    "fp32,fixed8.4,fixed6.3,fp8_e4m3:sat,fp6_e3m2,bfp8_b16,bfp6_b16,bfp5_b16,bfp4_b16,bme4m3_b16,bme2m3_b16,"
    "bl8_b16,bl6_b16,mxint8,mxfp8_e4m3,mxfp6_e2m3,mxfp4,nvfp4,int8_row,int4_g128/fp32";

typedef struct { char w[64], a[64]; double wbits, abits, ppl, seconds, acc, acc_se; int ok; char err[256]; } point;

static int split_setting(const char *s, point *p)
{
    const char *slash = strchr(s, '/');
    size_t lw = slash ? (size_t)(slash - s) : strlen(s);
    if (lw == 0 || lw >= sizeof p->w || (slash && strlen(slash + 1) >= sizeof p->a) || (slash && !slash[1])) return 0;
    memcpy(p->w, s, lw);
    p->w[lw] = 0;
    snprintf(p->a, sizeof p->a, "%s", slash ? slash + 1 : p->w);
    return 1;
}

/* Every rank's points to every rank: each field of a point comes from the rank
 * that computed it, the others adding zeros, so the sums are exact. */
static int gather_points(point *pts, int np, int rank, int ranks)
{
    enum { F = 5 };
    double *v = calloc((size_t)np * F, sizeof *v);
    unsigned char *e = calloc((size_t)np, sizeof pts->err);
    if (!v || !e) { free(v); free(e); return 1; }
    for (int i = rank; i < np; i += ranks) {
        const point *p = &pts[i];
        double f[F] = {p->ppl, p->seconds, p->acc, p->acc_se, p->ok};
        memcpy(v + (size_t)i * F, f, sizeof f);
        memcpy(e + (size_t)i * sizeof p->err, p->err, sizeof p->err);
    }
    cli_mpi_sum(v, (size_t)np * F);
    cli_mpi_sum_bytes(e, (size_t)np * sizeof pts->err);
    for (int i = 0; i < np; i++) {
        point *p = &pts[i];
        const double *f = v + (size_t)i * F;
        p->ppl = f[0]; p->seconds = f[1]; p->acc = f[2]; p->acc_se = f[3]; p->ok = f[4] != 0;
        memcpy(p->err, e + (size_t)i * sizeof p->err, sizeof p->err);
        p->err[sizeof p->err - 1] = 0;
    }
    free(v);
    free(e);
    return 0;
}

typedef struct {
    const char *model, *text, *list, *out, *task, *device;
    int task_limit, ctx, chunks, threads, dev;
    bq_round round;
} sweep_args;

static int set_round(const char *cmd, const char *v, void *a) { return cli_opt_round(cmd, v, &((sweep_args *)a)->round, NULL); }

#define F(field) offsetof(sweep_args, field)
static const cli_opt sweep_opts[] = {
    {"--model", "M", CLI_STR, F(model), .help = "a Hugging Face folder, a .bq file or a GGUF file"},
    {"--text", "FILE", CLI_STR, F(text), .help = "the text to score"},
    {"--formats", "LIST", CLI_STR, F(list), .help = "comma-separated FORMAT or W/A settings (default: the seed paper's grid)"},
    {"--ctx", "S", CLI_INT, F(ctx), 2, 1 << 20, .help = "window length (default 512)"},
    {"--chunks", "N", CLI_INT, F(chunks), 1, 1 << 30, .help = "score the first N windows (default all)"},
    {"--round", "MODE", CLI_CALL, 0, .call = set_round, .help = "rne (default), away, zero or stochastic"},
    {"--device", "D", CLI_STR, F(device), .help = "cpu, cuda or auto"},
    {"--task", "FILE.jsonl", CLI_STR, F(task), .help = "also a task's accuracy (docs/tasks.md)"},
    {"--task-limit", "N", CLI_INT, F(task_limit), 0, 1 << 30, .help = "the task's first N items"},
    {"--threads", "T", CLI_INT, F(threads), 0, 256, .help = "CPU threads (0: all cores)"},
    {"--out", "PREFIX", CLI_STR, F(out), .help = "PREFIX.md, .json and .svg (default sweep)"},
    {0}};
#undef F
static const cli_cmd sweep_cmd = {.cmd = "sweep", .usage = "--model M --text FILE [--formats W[/A],...] [options]", .opts = sweep_opts};

int cmd_sweep(int argc, char **argv)
{
    sweep_args a = {.list = DEFAULT_GRID, .out = "sweep", .ctx = 512};
    int prc = cli_parse(&sweep_cmd, argc, argv, &a);
    if (prc) return CLI_DONE(prc);
    if (!a.model || !a.text) return cli_usage(&sweep_cmd);
    if (a.device && cli_device("sweep", a.device, &a.dev)) return EXIT_BADINPUT;
    const char *model = a.model, *text = a.text, *list = a.list, *out = a.out, *task = a.task;
    int task_limit = a.task_limit, ctx = a.ctx, chunks = a.chunks, threads = a.threads, dev = a.dev;
    bq_round round = a.round;
    bq_set_threads(threads);
    /* parse and check the whole list before any long work */
    int n = 1;
    for (const char *c = list; *c; c++) n += *c == ',';
    point *pts = calloc((size_t)n, sizeof *pts);
    char *copy = strdup(list);
    if (!pts || !copy) { free(pts); free(copy); return cli_error("sweep", "out of memory"); }
    int np = 0, rc = 0;
    for (char *tok = copy, *next; tok && !rc; tok = next) {
        if ((next = strchr(tok, ','))) *next++ = 0;
        if (!*tok) { rc = cli_error("sweep", "--formats has an empty entry (give a comma-separated list of FORMAT or W/A)"); break; }
        if (!split_setting(tok, &pts[np])) { rc = cli_error("sweep", "bad setting '%s': expected FORMAT or W/A", tok); break; }
        pts[np].wbits = cli_format_bits(pts[np].w);
        pts[np].abits = cli_format_bits(pts[np].a);
        if (isnan(pts[np].wbits) || isnan(pts[np].abits)) { rc = cli_status("sweep", BQ_ERR_FORMAT); break; }
        np++;
    }
    free(copy);
    size_t nids = 0;
    int32_t *ids = NULL;
    bq_tokenizer *tk = NULL;
    bq_status st;
    if (!rc) rc = cli_tokenize_file("sweep", model, NULL, text, &ids, &nids, &tk);
    double ref = NAN;
    const int rank = cli_mpi_rank(), ranks = cli_mpi_size();  /* under mpirun: the points dealt round-robin */
    for (int i = 0; i < np && !rc; i++) {
        point *p = &pts[i];
        if (i % ranks != rank) continue;
        bq_model *m = NULL;
        bq_qconfig *q = NULL;
        st = bq_model_load(model, &m);
        if (!st) st = bq_qconfig_new(&q);
        if (!st && strcmp(p->w, "fp32")) st = bq_qconfig_set(q, "wq", p->w);
        if (!st && strcmp(p->a, "fp32")) st = bq_qconfig_set(q, "aq", p->a);
        if (!st) { bq_qconfig_set_round(q, round, 0); st = bq_model_quantize(m, q, 0); }
        bq_ppl_opts o = {.ctx = ctx, .chunks = chunks, .threads = threads, .device = dev};
        bq_ppl_result r;
        if (!st) st = bq_perplexity(m, ids, nids, &o, &r);
        bq_eval_result er = {0};
        bq_eval_opts eo = {.size = sizeof eo, .limit = task_limit, .max_ctx = ctx, .device = dev};
        if (!st && task) st = bq_eval_file(m, tk, task, &eo, &er);
        p->acc = task && !st ? er.acc : NAN;
        p->acc_se = task && !st ? er.acc_stderr : NAN;
        if (st) {
            snprintf(p->err, sizeof p->err, "%s", bq_last_error());
            p->ppl = NAN;
            if (st == BQ_ERR_NOMEM || st == BQ_ERR_IO) rc = cli_status("sweep", st);
        } else {
            p->ok = 1;
            p->ppl = r.ppl;
            p->seconds = r.seconds;
        }
        fprintf(stderr, "sweep %d/%d  W %-14s A %-14s ppl %s%.4f (%.1f s)%s%s\n", i + 1, np, p->w, p->a, p->ok ? "" : "failed ",
                p->ok ? p->ppl : 0.0, p->seconds, p->ok ? "" : ": ", p->err);
        bq_qconfig_free(q);
        bq_model_free(m);
    }
    if ((rc = cli_mpi_max(rc)) == 0 && ranks > 1 && gather_points(pts, np, rank, ranks)) rc = cli_error("sweep", "out of memory");
    for (int i = 0; i < np; i++)
        if (pts[i].ok && !strcmp(pts[i].w, "fp32") && !strcmp(pts[i].a, "fp32")) ref = pts[i].ppl;
    if (!rc && rank == 0) {
        char path[4200], title[300];
        size_t len = 0, cap = 0;
        char *md = NULL;
        md = cli_appendf(md, &len, &cap, "| W format | A format | W bits/el | A bits/el | perplexity | vs float32 |%s\n|---|---|---|---|---|---|%s\n",
                         task ? " task acc |" : "", task ? "---|" : "");
        for (int i = 0; i < np && md; i++) {
            point *p = &pts[i];
            if (!p->ok) { md = cli_appendf(md, &len, &cap, "| %s | %s | %.3f | %.3f | failed: %s | |%s\n", p->w, p->a, p->wbits, p->abits, p->err, task ? " |" : ""); continue; }
            md = cli_appendf(md, &len, &cap, "| %s | %s | %.3f | %.3f | %.3f | %+.2f%% |", p->w, p->a, p->wbits, p->abits, p->ppl,
                        isfinite(ref) ? 100.0 * (p->ppl / ref - 1.0) : NAN);
            md = task ? cli_appendf(md, &len, &cap, " %.4f +- %.4f |\n", p->acc, p->acc_se) : cli_appendf(md, &len, &cap, "\n");
        }
        snprintf(path, sizeof path, "%s.md", out);
        if ((rc = cli_save("sweep", path, md, len))) goto done;
        len = cap = 0;
        char *js = NULL;
        char *qm = cli_json_quote(model), *qt = cli_json_quote(text);
        if (qm && qt)
            js = cli_appendf(js, &len, &cap, "{\"model\": %s, \"text\": %s, \"ctx\": %d, \"chunks\": %d, \"points\": [\n", qm, qt, ctx, chunks);
        free(qm);
        free(qt);
        for (int i = 0; i < np && js; i++) {
            point *p = &pts[i];
            js = cli_appendf(js, &len, &cap, "  {\"w\": \"%s\", \"a\": \"%s\", \"w_bits\": %.4f, \"a_bits\": %.4f, ", p->w, p->a, p->wbits, p->abits);
            if (p->ok && task) js = cli_appendf(js, &len, &cap, "\"task_acc\": %.6f, \"task_acc_stderr\": %.6f, ", p->acc, p->acc_se);
            if (p->ok) js = cli_appendf(js, &len, &cap, "\"ppl\": %.6f, \"seconds\": %.3f}%s\n", p->ppl, p->seconds, i + 1 < np ? "," : "");
            else js = cli_appendf(js, &len, &cap, "\"ppl\": null, \"error\": \"%s\"}%s\n", "see the table", i + 1 < np ? "," : "");
        }
        if (js) js = cli_appendf(js, &len, &cap, "]}\n");
        snprintf(path, sizeof path, "%s.json", out);
        if ((rc = cli_save("sweep", path, js, len))) goto done;
        snprintf(title, sizeof title, "Perplexity vs weight bits: %s, ctx %d%s", model, ctx, chunks ? " (first windows)" : "");
        double *xs = malloc((size_t)np * sizeof *xs), *ys = malloc((size_t)np * sizeof *ys);
        const char **lb = malloc((size_t)np * sizeof *lb);
        char (*lt)[140] = malloc((size_t)np * sizeof *lt);
        char *svg = NULL;
        if (xs && ys && lb && lt) {
            for (int i = 0; i < np; i++) {
                xs[i] = pts[i].wbits;
                ys[i] = pts[i].ok ? pts[i].ppl : NAN;
                snprintf(lt[i], sizeof lt[i], "%s%s%s", pts[i].w, strcmp(pts[i].w, pts[i].a) ? "/" : "",
                         strcmp(pts[i].w, pts[i].a) ? pts[i].a : "");
                lb[i] = lt[i];
            }
            svg = svg_scatter(xs, ys, lb, NULL, np, ref, title, "weight bits per element (incl. shared scales)",
                              "perplexity (log scale)");
        }
        free(xs); free(ys); free(lb); free(lt);
        snprintf(path, sizeof path, "%s.svg", out);
        rc = cli_save("sweep", path, svg, svg ? strlen(svg) : 0);
        if (!rc) printf("wrote %s.md, %s.json, %s.svg\n", out, out, out);
    }
done:
    free(pts);
    free(ids);
    bq_tokenizer_free(tk);
    return rc;
}
