/* blockq cost | sensitivity | search */
#include "cli.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- shared option parsing ---- */
typedef struct {
    const char *model, *text, *test, *formats, *out, *device;
    int ctx, chunks, test_chunks, threads, trials, json, dev, synth;
    double budget;
    uint64_t seed;
} sargs;

enum { COST = 1, SENS = 2, SEARCH = 4 };

static int set_cost(const char *cmd, const char *v, void *args)
{
    if (strcmp(v, "synth") && strcmp(v, "model")) return cli_error(cmd, "bad --cost '%s': expected synth or model", v);
    ((sargs *)args)->synth = !strcmp(v, "synth");
    return 0;
}

#define F(field) offsetof(sargs, field)
static const cli_opt sargs_opts[] = {
    {"--model", "M", CLI_STR, F(model), .help = "a Hugging Face folder, a .bq file or a GGUF file (cost: its bytes in each format)"},
    {"--text", "CALIB", CLI_STR, F(text), .cmds = SENS | SEARCH, .help = "the text the perplexities are measured on"},
    {"--formats", "F1,F2,...", CLI_STR, F(formats), .help = "the candidate formats"},
    {"--budget", "BITS", CLI_NUM, F(budget), 1e-9, 64, .cmds = SEARCH, .help = "average bits per weight allowed, e.g. 5"},
    {"--ctx", "S", CLI_INT, F(ctx), 2, 1 << 30, .help = "window length (default 256; cost: the KV cache's tokens)"},
    {"--chunks", "N", CLI_INT, F(chunks), 1, 1 << 30, .cmds = SENS | SEARCH, .help = "windows scored per trial (default 4)"},
    {"--trials", "T", CLI_INT, F(trials), 0, 1 << 30, .cmds = SEARCH, .help = "search trials (default 24)"},
    {"--seed", "S", CLI_U64, F(seed), .cmds = SEARCH, .help = "the search's seed"},
    {"--test", "FILE", CLI_STR, F(test), .cmds = SEARCH, .help = "a held-out text the chosen configurations are scored on"},
    {"--test-chunks", "N", CLI_INT, F(test_chunks), 1, 1 << 30, .cmds = SEARCH, .help = "its windows"},
    {"--cost", "KIND", CLI_CALL, 0, .call = set_cost, .cmds = COST | SEARCH, .help = "model (hand-counted MAC area, default) or synth (Yosys)"},
    {"--synth", NULL, CLI_FLAG, F(synth), .cmds = COST, .help = "the same as --cost synth"},
    {"--device", "D", CLI_STR, F(device), .cmds = SENS | SEARCH, .help = "cpu, cuda or auto"},
    {"--threads", "T", CLI_INT, F(threads), 0, 256, .help = "CPU threads (0: all cores)"},
    {"--out", "PREFIX", CLI_STR, F(out), .cmds = SENS | SEARCH, .help = "PREFIX.md, .json, .svg and the chosen configurations"},
    {"--json", NULL, CLI_FLAG, F(json), .help = "machine-readable output"},
    {0}};
#undef F
static const cli_cmd sargs_cmds[] = {
    {.cmd = "cost", .usage = "[--formats F1,F2,...] [--model M] [options]", .opts = sargs_opts, .bit = COST},
    {.cmd = "sensitivity", .usage = "--model M --text CALIB --formats F1,F2,... [options]", .opts = sargs_opts, .bit = SENS},
    {.cmd = "search", .usage = "--model M --text CALIB --formats F1,F2,... --budget BITS [options]", .opts = sargs_opts, .bit = SEARCH},
};

static int parse_sargs(int which, int argc, char **argv, sargs *a)
{
    memset(a, 0, sizeof *a);
    a->ctx = 256;
    a->chunks = 4;
    a->trials = 24;
    a->budget = NAN;
    const cli_cmd *c = &sargs_cmds[which == COST ? 0 : which == SENS ? 1 : 2];
    a->out = c->cmd;
    int rc = cli_parse(c, argc, argv, a);
    if (rc) return rc;
    if (a->device && cli_device(c->cmd, a->device, &a->dev)) return EXIT_BADINPUT;
    bq_set_threads(a->threads);
    return 0;
}

/* Split a comma list of format names; checks every name. */
static int split_formats(const char *cmd, const char *list, char names[][64], int max)
{
    int n = 0;
    const char *p = list;
    while (*p) {
        const char *c = strchr(p, ',');
        size_t l = c ? (size_t)(c - p) : strlen(p);
        if (l == 0 || l >= 64 || n == max) { cli_error(cmd, "bad format list '%s'", list); return -1; }
        memcpy(names[n], p, l);
        names[n][l] = 0;
        bq_format *f;
        if (bq_format_parse(names[n], &f)) { cli_status(cmd, BQ_ERR_FORMAT); return -1; }
        bq_format_free(f);
        n++;
        p = c ? c + 1 : p + l;
    }
    if (!n) { cli_error(cmd, "empty format list"); return -1; }
    return n;
}


static double fmt_area(const char *name)
{
    bq_format *f;
    if (bq_format_parse(name, &f)) return NAN;
    bq_cost c;
    bq_cost_pair(f, f, &c);
    bq_format_free(f);
    return c.mac_area;
}

/* The synthesised area per lane of a format's generated dot product (W = A), or a
 * message saying why there is none. */
static int synth_area(const char *cmd, const char *name, double *area, double *luts)
{
    int r = cli_rtl_synth(name, area, luts);
    if (r > 0) return 0;
    if (r == 0) cli_error(cmd, "%s has no generated hardware to synthesise (%s); use --cost model", name, bq_last_error());
    return EXIT_BADINPUT;
}

/* ---- blockq cost ---- */

int cmd_cost(int argc, char **argv)
{
    sargs a;
    int rc = parse_sargs(COST, argc, argv, &a);
    if (rc) return CLI_DONE(rc);
    const char *list = a.formats ? a.formats
        : "fp32,bf16,fp16,fp8_e4m3,fixed8.4,int8_row,bfp8_b16,bfp6_b16,bfp5_b16,bfp4_b16,bme2m3_b16,bl6_b16,"
          "mxint8,mxfp8_e4m3,mxfp6_e2m3,mxfp4,nvfp4,int4_g128";
    char names[64][64];
    int n = split_formats("cost", list, names, 64);
    if (n < 0) return EXIT_BADINPUT;
    bq_model *m = NULL;
    if (a.model && bq_model_load(a.model, &m)) return cli_status("cost", BQ_ERR_IO);
    size_t lin = 0, other = 0, kvt = 0;
    if (m) {
        for (int i = 0; i < bq_model_n_linears(m); i++) lin += bq_model_linear_params(m, i);
        other = bq_model_other_params(m);
        kvt = bq_model_kv_per_token(m);
    }
    /* --synth: the generated dot product's area per lane (docs/rtl.md), density against
     * mxint8's and, when fp32 is listed, against a float32 FMA's */
    double base_area = 0, base_luts, f32_area = 0;
    if (a.synth && cli_rtl_synth("mxint8", &base_area, &base_luts) < 0) { bq_model_free(m); return EXIT_BADINPUT; }
    for (int i = 0; i < n && a.synth; i++)
        if (!strcmp(names[i], "fp32") && cli_rtl_synth("fp32", &f32_area, &base_luts) < 0) { bq_model_free(m); return EXIT_BADINPUT; }
    if (!a.json) {
        printf("%-14s %8s %9s %9s %10s %9s %9s", "format (W=A)", "bits/el", "mem dens", "arith dens", "MAC area", "L-Mul MAC", "L-Mul dens");
        if (m) printf(" %11s %11s", "weights MB", "KV MB");
        if (a.synth) printf(" %11s %10s %10s %10s", "synth area", "iCE40 LUT", "vs mxint8", f32_area > 0 ? "vs fp32" : "");
        printf("\n");
    } else printf("[\n");
    for (int i = 0; i < n; i++) {
        bq_format *f;
        bq_format_parse(names[i], &f);
        bq_cost c;
        bq_cost_pair(f, f, &c);
        bq_format_free(f);
        /* weights: block linears in the format, the rest float32; KV cache in the format at --ctx */
        double wmb = m ? ((double)lin * c.w_bits + (double)other * 32) / 8 / 1e6 : 0;
        double kvmb = m ? (double)kvt * a.ctx * c.a_bits / 8 / 1e6 : 0;
        double sa = 0, sl = 0;
        int syn = a.synth ? cli_rtl_synth(names[i], &sa, &sl) : 0;
        if (syn < 0) { bq_model_free(m); return EXIT_BADINPUT; }
        if (a.json) {
            printf("  {\"format\": \"%s\", \"bits_per_element\": %.4f, \"memory_density\": %.4f, \"arith_density\": %.4f, "
                   "\"mac_area_fa\": %.2f, \"weights_mb\": %.4f, \"kv_mb\": %.4f, \"lmul_mac_area_fa\": %.2f, "
                   "\"lmul_arith_density\": %.4f", names[i], c.w_bits, c.mem_density,
                   c.arith_density, c.mac_area, wmb, kvmb, c.lmul_mac_area, c.lmul_arith_density);
            if (syn) printf(", \"synth_area_lane\": %.2f, \"synth_luts_lane\": %.2f, \"synth_density_vs_mxint8\": %.4f", sa, sl, base_area / sa);
            if (syn && f32_area > 0) printf(", \"synth_density_vs_fp32\": %.4f", f32_area / sa);
            printf("}%s\n", i + 1 < n ? "," : "");
        } else {
            printf("%-14s %8.3f %8.2fx %9.2fx %10.1f", names[i], c.w_bits, c.mem_density, c.arith_density, c.mac_area);
            if (c.lmul_mac_area > 0) printf(" %9.1f %8.2fx", c.lmul_mac_area, c.lmul_arith_density);
            else printf(" %9s %9s", "-", "-");
            if (m) printf(" %11.2f %11.2f", wmb, kvmb);
            if (syn) printf(" %11.1f %10.1f %9.2fx", sa, sl, base_area / sa);
            if (syn && f32_area > 0) printf(" %9.2fx", f32_area / sa);
            else if (a.synth && !syn) printf(" %11s %10s %10s", "-", "-", "-");
            printf("\n");
        }
    }
    if (a.json) printf("]\n");
    else if (m) printf("\n%s: %zu parameters in block linears, %zu elsewhere (float32); KV cache at ctx %d\n", a.model, lin, other, a.ctx);
    bq_model_free(m);
    return 0;
}

/* ---- evaluation of assignments (the library's bq_assignment_nll, bq_sensitivity) ---- */

typedef struct {
    const char *model;
    int32_t *ids;
    size_t n;
    bq_trial_opts o;
} evalctx;

static evalctx eval_of(const sargs *a, int chunks)
{
    return (evalctx){a->model, NULL, 0, {.size = sizeof(bq_trial_opts), .ctx = a->ctx, .chunks = chunks, .threads = a->threads,
                                         .device = a->dev}};
}

/* nll (mean, nats) with linear i in format names[choose[i]] (W and A); NULL choose = float32 */
static bq_status eval_assign(const evalctx *e, int nl, const int *choose, char names[][64], double *nll, double *ppl)
{
    const char *fp[32];
    for (int f = 0; f < 32; f++) fp[f] = names[f];
    return bq_assignment_nll(e->model, e->ids, e->n, nl, choose, fp, &e->o, nll, ppl);
}

static void sens_progress(void *arg, int done, int total)
{
    (void)arg;
    fprintf(stderr, "\rsensitivity: %d/%d linears%s", done, total, done == total ? "\n" : "");
}

/* The float nll (*base) and per-linear sensitivities sens[i*nf + f]. Under mpirun
 * the (linear, format) trials are dealt round-robin over the ranks and their
 * entries added (one non-zero contribution each: exact, the same bits for any
 * rank count). */
static int measure_sensitivity(const char *cmd, const evalctx *e, int nl, int nf, char names[][64], double *base, double *sens)
{
    const char *fp[32];
    for (int f = 0; f < 32; f++) fp[f] = names[f];
    const int rank = cli_mpi_rank(), ranks = cli_mpi_size();
    bq_trial_opts o = e->o;
    o.part = rank;
    o.parts = ranks;
    if (isatty(2) && rank == 0) o.progress = sens_progress;
    bq_status st = bq_sensitivity(e->model, e->ids, e->n, fp, nf, &o, base, sens);
    if (st && ranks > 1) fprintf(stderr, "blockq %s: rank %d of %d: %s\n", cmd, rank, ranks, bq_last_error());
    if (cli_mpi_max(st != BQ_OK)) return st ? cli_status(cmd, st) : EXIT_FAILURE;
    cli_mpi_sum(sens, (size_t)nl * nf);
    return 0;
}

int cmd_sensitivity(int argc, char **argv)
{
    sargs a;
    int rc = parse_sargs(SENS, argc, argv, &a);
    if (rc) return CLI_DONE(rc);
    if (!a.model || !a.text || !a.formats)
        return cli_usage(&sargs_cmds[1]);
    char names[32][64];
    int nf = split_formats("sensitivity", a.formats, names, 32);
    if (nf < 0) return EXIT_BADINPUT;
    evalctx e = eval_of(&a, a.chunks);
    bq_model *m;
    if (bq_model_load(a.model, &m)) return cli_status("sensitivity", BQ_ERR_IO);
    if ((rc = cli_tokenize_file("sensitivity", a.model, m, a.text, &e.ids, &e.n, NULL))) { bq_model_free(m); return rc; }
    int nl = bq_model_n_linears(m);
    double base, *sens = malloc((size_t)(nl ? nl : 1) * nf * sizeof *sens);
    if (!sens) rc = cli_error("sensitivity", "out of memory");
    if (!rc) rc = measure_sensitivity("sensitivity", &e, nl, nf, names, &base, sens);
    if (!rc && cli_mpi_rank() == 0) {
        size_t len = 0, cap = 0;
        char *md = NULL, path[4200];
        md = cli_appendf(md, &len, &cap, "Delta nll (nats/token) on %s, ctx %d, %d windows, float32 nll %.5f\n\n| linear |", a.text,
                     a.ctx, a.chunks, base);
        for (int f = 0; f < nf; f++) md = cli_appendf(md, &len, &cap, " %s |", names[f]);
        md = cli_appendf(md, &len, &cap, "\n|---|");
        for (int f = 0; f < nf; f++) md = cli_appendf(md, &len, &cap, "---|");
        md = cli_appendf(md, &len, &cap, "\n");
        for (int i = 0; i < nl && md; i++) {
            md = cli_appendf(md, &len, &cap, "| %s |", bq_model_linear_name(m, i));
            for (int f = 0; f < nf; f++) md = cli_appendf(md, &len, &cap, " %+.5f |", sens[(size_t)i * nf + f]);
            md = cli_appendf(md, &len, &cap, "\n");
        }
        snprintf(path, sizeof path, "%s.md", a.out);
        if (!(rc = cli_save("sensitivity", path, md, len))) {
            len = cap = 0;
            char *js = NULL;
            js = cli_appendf(js, &len, &cap, "{\"base_nll\": %.8f, \"formats\": [", base);
            for (int f = 0; f < nf; f++) js = cli_appendf(js, &len, &cap, "%s\"%s\"", f ? ", " : "", names[f]);
            js = cli_appendf(js, &len, &cap, "], \"linears\": [\n");
            for (int i = 0; i < nl && js; i++) {
                js = cli_appendf(js, &len, &cap, "  {\"name\": \"%s\", \"params\": %zu, \"delta_nll\": [", bq_model_linear_name(m, i),
                             bq_model_linear_params(m, i));
                for (int f = 0; f < nf; f++) js = cli_appendf(js, &len, &cap, "%s%.8f", f ? ", " : "", sens[(size_t)i * nf + f]);
                js = cli_appendf(js, &len, &cap, "]}%s\n", i + 1 < nl ? "," : "");
            }
            if (js) js = cli_appendf(js, &len, &cap, "]}\n");
            snprintf(path, sizeof path, "%s.json", a.out);
            rc = cli_save("sensitivity", path, js, len);
        }
        if (!rc) printf("wrote %s.md and %s.json\n", a.out, a.out);
    }
    free(sens);
    free(e.ids);
    bq_model_free(m);
    return rc;
}

/* ---- blockq search ---- */

/* Trials already in the resume file: "trial K nll X choose a,b,c,..." lines. */
static int read_trial(FILE *f, int k, int nl, const int *choose, double *nll)
{
    if (!f) return 0;
    rewind(f);
    char line[16384];
    while (fgets(line, sizeof line, f)) {
        int kk, pos;
        double x;
        if (sscanf(line, "trial %d nll %lf choose %n", &kk, &x, &pos) != 2 || kk != k) continue;
        const char *p = line + pos;
        for (int i = 0; i < nl; i++) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || v != choose[i]) return 0;  /* a different search: do not reuse */
            p = *end == ',' ? end + 1 : end;
        }
        *nll = x;
        return 1;
    }
    return 0;
}

/* bq_search's hooks: the ranks' sums (MPI), the resume file, progress on a terminal. */
typedef struct { FILE *prev, *log; const char *path; int rank; } search_io;

static int search_reduce(void *arg, double *v, size_t n, int failed)
{
    (void)arg;
    if (cli_mpi_max(failed)) return 1;
    cli_mpi_sum(v, n);
    return 0;
}

static int search_recall(void *arg, int k, int nl, const int *choose, double *nll)
{
    return read_trial(((search_io *)arg)->prev, k, nl, choose, nll);
}

static void search_record(void *arg, int k, int nl, const int *choose, double nll)
{
    search_io *io = arg;
    if (!io->log && !(io->log = fopen(io->path, "a"))) return;  /* opened at the first finished trial */
    char line[16384];  /* ranks append whole lines, each with one write */
    /* 17 significant digits: the same double when read back, so a resumed search writes
     * the bits a fresh one does (10 decimals moved a trial's nll across the JSON's 8th) */
    int n = snprintf(line, sizeof line, "trial %d nll %.17g choose ", k, nll);
    for (int i = 0; i < nl && n < (int)sizeof line - 16; i++)
        n += snprintf(line + n, sizeof line - (size_t)n, "%d%s", choose[i], i + 1 < nl ? "," : "\n");
    fputs(line, io->log);
    fflush(io->log);
}

static void search_progress(void *arg, int done, int total)
{
    search_io *io = arg;
    if (io->rank == 0) fprintf(stderr, "\rsearch: trial %d/%d of this process's%s", done, total, done == total ? "\n" : "");
}

int cmd_search(int argc, char **argv)
{
    sargs a;
    int rc = parse_sargs(SEARCH, argc, argv, &a);
    if (rc) return CLI_DONE(rc);
    if (!a.model || !a.text || !a.formats || isnan(a.budget))
        return cli_usage(&sargs_cmds[2]);
    char names[32][64];
    int nf = split_formats("search", a.formats, names, 32);
    if (nf < 0) return EXIT_BADINPUT;
    /* arithmetic density against float32: the hand-counted MAC area, or (--cost synth)
     * the synthesised area per lane of the generated hardware against a float32 FMA */
    double bits[32], area[32], fp32_area = fmt_area("fp32"), luts;
    const char *fp[32];
    for (int f = 0; f < nf; f++) {
        fp[f] = names[f];
        bits[f] = cli_format_bits(names[f]);
        area[f] = fmt_area(names[f]);
        if (a.synth && synth_area("search", names[f], &area[f], &luts)) return EXIT_BADINPUT;
    }
    if (a.synth && synth_area("search", "fp32", &fp32_area, &luts)) return EXIT_BADINPUT;
    bq_model *m;  /* the linears' names and the tokenizer (bq_search loads its own) */
    bq_status st = bq_model_load(a.model, &m);
    if (st) return cli_status("search", st);
    int nl = bq_model_n_linears(m);
    evalctx e = eval_of(&a, a.chunks);
    if ((rc = cli_tokenize_file("search", a.model, m, a.text, &e.ids, &e.n, NULL))) { bq_model_free(m); return rc; }

    /* The library scores the points; under mpirun each rank its share, the sums exact
     * (one non-zero entry each), so the result is the same for any rank count. Trials
     * in PREFIX-trials.txt are read back instead of scored: an interrupted search resumes. */
    const int rank = cli_mpi_rank(), ranks = cli_mpi_size();
    char path[4200];
    snprintf(path, sizeof path, "%s-trials.txt", a.out);
    search_io io = {fopen(path, "r"), NULL, path, rank};
    bq_search_opts so = {.size = sizeof so, .trial = e.o, .budget = a.budget, .trials = a.trials, .seed = a.seed, .bits = bits,
                         .area = area, .fp32_area = fp32_area, .reduce = ranks > 1 ? search_reduce : NULL,
                         .recall = search_recall, .record = search_record,
                         .progress = isatty(2) && a.trials ? search_progress : NULL, .arg = &io};
    so.trial.part = rank;
    so.trial.parts = ranks;
    bq_search_result *res = NULL;
    st = bq_search(a.model, e.ids, e.n, fp, nf, &so, &res);
    if (io.prev) fclose(io.prev);
    if (io.log) fclose(io.log);
    if (st && ranks > 1) fprintf(stderr, "blockq search: rank %d of %d: %s\n", rank, ranks, bq_last_error());
    if (st) rc = cli_status("search", st);
    if (!rc && res->recalled && rank == 0) fprintf(stderr, "search: %d trials resumed from %s\n", res->recalled, path);
    int np = rc ? 0 : res->n_points;
    double base = rc ? 0.0 : res->base_nll;
    int nfront = 0;
    for (int i = 0; i < np; i++) nfront += res->pareto[i];

    if (!rc && rank == 0) {  /* only rank 0 writes */
        double *L = malloc((size_t)np * sizeof *L), *Bt = res->bits, *D = res->density;  /* L: ppl, for the plots */
        int *hl = res->pareto;
        for (int i = 0; L && i < np; i++) L[i] = res->nll[i];
        /* the best point within budget from each method */
        int best_trial = -1;
        for (int i = 0; i < np; i++)
            if (!strncmp(res->kind[i], "trial", 5) && res->bits[i] <= a.budget + 1e-9 &&
                (best_trial < 0 || res->nll[i] < res->nll[best_trial])) best_trial = i;
        /* configs: one TOML per Pareto point and for the two chosen points */
        size_t len = 0, cp = 0;
        char *md = NULL;
        md = cli_appendf(md, &len, &cp, "Search on %s (%s, ctx %d, %d windows), budget %.3f bits/element, formats %s, "
                         "%d trials, seed %llu. float32 calibration ppl %.3f.\n\n"
                         "Arithmetic density: %s.\n\n"
                         "| point | avg bits (W=A) | arith density vs fp32 | calibration ppl | Pareto | config |\n|---|---|---|---|---|---|\n",
                         a.model, a.text, a.ctx, a.chunks, a.budget, a.formats, a.trials, (unsigned long long)a.seed, exp(base),
                         a.synth ? "synthesised area per lane (blockq rtl, Yosys gates) against a float32 FMA's"
                                 : "the hand-counted MAC area (docs/cost-model.md) against float32's");
        for (int i = 0; i < np && md; i++) {
            char cfg[4300] = "";
            if (res->pareto[i] || i == 0 || i == best_trial) {
                snprintf(cfg, sizeof cfg, "%s-p%d.toml", a.out, i);
                size_t tl = 0, tc = 0;
                char *toml = NULL;
                toml = cli_appendf(toml, &tl, &tc, "# %s: avg %.3f bits, calibration ppl %.4f (blockq search)\n", res->kind[i],
                                   res->bits[i], exp(res->nll[i]));
                for (int j = 0; j < nl && toml; j++)
                    toml = cli_appendf(toml, &tl, &tc, "\"%s\" = { w = \"%s\", a = \"%s\" }\n", bq_model_linear_name(m, j),
                                       names[res->choose[(size_t)i * nl + j]], names[res->choose[(size_t)i * nl + j]]);
                if ((rc = cli_save("search", cfg, toml, tl))) break;
            }
            md = cli_appendf(md, &len, &cp, "| %s | %.3f | %.2fx | %.3f | %s | %s |\n", res->kind[i], res->bits[i], res->density[i],
                             exp(res->nll[i]), res->pareto[i] ? "yes" : "", cfg);
        }
        /* evaluation of the chosen points and the uniform formats on the test text */
        if (!rc && a.test && md) {
            evalctx te = eval_of(&a, a.test_chunks);
            if (!(rc = cli_tokenize_file("search", a.model, m, a.test, &te.ids, &te.n, NULL))) {
                double tb;
                if ((st = eval_assign(&te, nl, NULL, names, &tb, NULL))) rc = cli_status("search", st);
                md = cli_appendf(md, &len, &cp, "\nOn %s (%d windows of %d): float32 ppl %.3f\n\n| point | avg bits | test ppl | vs float32 |\n|---|---|---|---|\n",
                                 a.test, a.test_chunks, a.ctx, exp(tb));
                for (int i = 0; i < np && !rc && md; i++) {
                    if (!(i == 0 || i == best_trial || !strncmp(res->kind[i], "uniform", 7))) continue;
                    double tn;
                    if ((st = eval_assign(&te, nl, res->choose + (size_t)i * nl, names, &tn, NULL))) { rc = cli_status("search", st); break; }
                    md = cli_appendf(md, &len, &cp, "| %s%s | %.3f | %.3f | %+.2f%% |\n", res->kind[i],
                                     i == best_trial ? " (best sampled)" : "", res->bits[i], exp(tn), 100 * (exp(tn - tb) - 1));
                }
                free(te.ids);
            }
        }
        if (!rc) {
            snprintf(path, sizeof path, "%s.md", a.out);
            rc = cli_save("search", path, md, len);
        } else free(md);
        if (!rc) {
            len = cp = 0;
            char *js = NULL;
            js = cli_appendf(js, &len, &cp, "{\"budget\": %.4f, \"base_nll\": %.8f, \"formats\": [", a.budget, base);
            for (int f = 0; f < nf; f++) js = cli_appendf(js, &len, &cp, "%s\"%s\"", f ? ", " : "", names[f]);
            js = cli_appendf(js, &len, &cp, "], \"points\": [\n");
            for (int i = 0; i < np && js; i++) {
                js = cli_appendf(js, &len, &cp, "  {\"kind\": \"%s\", \"avg_bits\": %.5f, \"arith_density\": %.4f, \"nll\": %.8f, "
                                 "\"ppl\": %.5f, \"pareto\": %s, \"assignment\": [", res->kind[i], res->bits[i], res->density[i],
                                 res->nll[i], exp(res->nll[i]), res->pareto[i] ? "true" : "false");
                for (int j = 0; j < nl && js; j++) js = cli_appendf(js, &len, &cp, "%s\"%s\"", j ? ", " : "", names[res->choose[(size_t)i * nl + j]]);
                js = cli_appendf(js, &len, &cp, "]}%s\n", i + 1 < np ? "," : "");
            }
            if (js) js = cli_appendf(js, &len, &cp, "]}\n");
            snprintf(path, sizeof path, "%s.json", a.out);
            rc = cli_save("search", path, js, len);
        }
        if (!rc) {
            const char **lb = calloc((size_t)np, sizeof *lb);
            for (int i = 0; i < np && lb; i++)
                lb[i] = strncmp(res->kind[i], "trial", 5) ? res->kind[i] : "";
            for (int i = 0; i < np; i++) L[i] = exp(L[i]);
            char title[300];
            snprintf(title, sizeof title, "Mixed-precision search: calibration ppl vs bits (red: Pareto front)");
            char *svg = svg_scatter(Bt, L, lb, hl, np, exp(base), title, "average bits per element (W=A, parameter-weighted)",
                                    "calibration perplexity (log scale)");
            snprintf(path, sizeof path, "%s.svg", a.out);
            rc = cli_save("search", path, svg, svg ? strlen(svg) : 0);  /* frees svg */
            /* the same points against arithmetic density, from the chosen cost */
            snprintf(title, sizeof title, "Mixed-precision search: calibration ppl vs arithmetic density (%s; red: Pareto front)",
                     a.synth ? "synthesised" : "hand model");
            svg = svg_scatter(D, L, lb, hl, np, exp(base), title, "arithmetic density vs float32 (parameter-weighted)",
                              "calibration perplexity (log scale)");
            snprintf(path, sizeof path, "%s-density.svg", a.out);
            int rc2 = cli_save("search", path, svg, svg ? strlen(svg) : 0);
            rc = rc ? rc : rc2;
            free(lb);
        }
        if (!rc) printf("wrote %s.md, %s.json, %s.svg, %s-density.svg and %s-p*.toml (%d Pareto points)\n", a.out, a.out, a.out, a.out,
                        a.out, nfront);
        free(L);
    }
    bq_search_result_free(res);
    free(e.ids);
    bq_model_free(m);
    return rc;
}
