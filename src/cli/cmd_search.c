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

typedef struct { int *choose; double nll, bits, density; char kind[80]; int pareto; } spoint;

/* Parameter-weighted bits and density of an assignment. */
static void assign_cost(int nl, const int *choose, const size_t *params, const double *bits, const double *area,
                        double fp32_area, double *avg_bits, double *density)
{
    double tp = 0, tb = 0, ta = 0;
    for (int i = 0; i < nl; i++) {
        tp += (double)params[i];
        tb += (double)params[i] * bits[choose[i]];
        ta += (double)params[i] * area[choose[i]];
    }
    *avg_bits = tb / tp;
    *density = fp32_area / (ta / tp);
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return *s;
}

/* A random assignment within the budget: uniform choice per layer, then random
 * downgrades of layers above the cheapest format until the average fits. */
static void sample_assign(uint64_t *rng, int nl, int nf, const size_t *params, const double *bits, double budget,
                          int cheapest, int *choose)
{
    double tp = 0, tb = 0;
    for (int i = 0; i < nl; i++) {
        choose[i] = (int)(rng_next(rng) % (uint64_t)nf);
        tp += (double)params[i];
        tb += (double)params[i] * bits[choose[i]];
    }
    for (int guard = 0; tb > budget * tp && guard < 100000; guard++) {
        int i = (int)(rng_next(rng) % (uint64_t)nl);
        if (choose[i] == cheapest) continue;
        int next = cheapest;  /* the next cheaper format */
        for (int f = 0; f < nf; f++)
            if (bits[f] < bits[choose[i]] && bits[f] > bits[next]) next = f;
        tb -= (double)params[i] * (bits[choose[i]] - bits[next]);
        choose[i] = next;
    }
}

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
    int cheapest = 0;
    for (int f = 0; f < nf; f++) {
        bits[f] = cli_format_bits(names[f]);
        area[f] = fmt_area(names[f]);
        if (a.synth && synth_area("search", names[f], &area[f], &luts)) return EXIT_BADINPUT;
        if (bits[f] < bits[cheapest]) cheapest = f;
    }
    if (a.synth && synth_area("search", "fp32", &fp32_area, &luts)) return EXIT_BADINPUT;
    if (a.budget < bits[cheapest])
        return cli_error("search", "impossible budget %.3f bits: the cheapest format given, %s, takes %.3f bits per element",
                         a.budget, names[cheapest], bits[cheapest]);
    bq_model *m;
    bq_status st = bq_model_load(a.model, &m);
    if (st) return cli_status("search", st);
    int nl = bq_model_n_linears(m);
    size_t *params = malloc((size_t)nl * sizeof *params);
    for (int i = 0; i < nl; i++) params[i] = bq_model_linear_params(m, i);
    /* formats must fit every layer: try each on the model once */
    for (int f = 0; f < nf && !st; f++) {
        bq_qconfig *q;
        bq_qconfig_new(&q);
        bq_qconfig_set(q, "wq", names[f]);
        bq_qconfig_set(q, "aq", names[f]);
        bq_model *t;
        if (!(st = bq_model_load(a.model, &t))) { st = bq_model_quantize(t, q, 1); bq_model_free(t); }
        bq_qconfig_free(q);
    }
    if (st) { free(params); bq_model_free(m); return cli_status("search", st); }

    evalctx e = eval_of(&a, a.chunks);
    if ((rc = cli_tokenize_file("search", a.model, m, a.text, &e.ids, &e.n, NULL))) { free(params); bq_model_free(m); return rc; }
    double base;
    double *sens = malloc((size_t)nl * nf * sizeof *sens);
    int np = 0, cap = nf + 1 + a.trials;
    spoint *pts = calloc((size_t)cap, sizeof *pts);
    rc = measure_sensitivity("search", &e, nl, nf, names, &base, sens);

    /* The points: (a) the knapsack on the measured sensitivities, the uniform
     * baselines, (b) seeded random samples. All ranks make the same assignments;
     * point j is scored by rank j % ranks (trials already in PREFIX-trials.txt are
     * read back instead: an interrupted search resumes) and the scores are summed
     * with every entry from one rank, so the result is the same for any rank count. */
    const int rank = cli_mpi_rank(), ranks = cli_mpi_size();
    for (int j = 0; j < cap && !rc; j++)
        if (!(pts[j].choose = malloc((size_t)nl * sizeof *pts[j].choose))) rc = cli_error("search", "out of memory");
    if (!rc && (st = bq_knapsack(nl, nf, sens, params, bits, a.budget, 4096, pts[0].choose, NULL))) rc = cli_status("search", st);
    if (!rc) {
        snprintf(pts[0].kind, sizeof pts[0].kind, "knapsack");
        for (int f = 0; f < nf; f++) {
            for (int i = 0; i < nl; i++) pts[1 + f].choose[i] = f;
            snprintf(pts[1 + f].kind, sizeof pts[1 + f].kind, "uniform %.63s", names[f]);
        }
        uint64_t rng = a.seed * 0x9e3779b97f4a7c15ull + 0x2545f4914f6cdd1dull;
        for (int k = 0; k < a.trials; k++) {
            sample_assign(&rng, nl, nf, params, bits, a.budget, cheapest, pts[1 + nf + k].choose);
            snprintf(pts[1 + nf + k].kind, sizeof pts[1 + nf + k].kind, "trial %d", k);
        }
        np = cap;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s-trials.txt", a.out);
    FILE *prev = fopen(path, "r");
    FILE *log = rc ? NULL : fopen(path, "a");  /* ranks append whole lines, each with one write */
    int reused = 0;
    for (int j = 0; j < np && !st; j++) {
        if (j % ranks != rank) continue;
        int k = j - 1 - nf;  /* the trial's number, when j is a trial */
        if (k >= 0 && read_trial(prev, k, nl, pts[j].choose, &pts[j].nll)) { reused++; continue; }
        if ((st = eval_assign(&e, nl, pts[j].choose, names, &pts[j].nll, NULL))) break;
        if (k >= 0 && log) {
            char line[16384];
            int n = snprintf(line, sizeof line, "trial %d nll %.10f choose ", k, pts[j].nll);
            for (int i = 0; i < nl && n < (int)sizeof line - 16; i++)
                n += snprintf(line + n, sizeof line - (size_t)n, "%d%s", pts[j].choose[i], i + 1 < nl ? "," : "\n");
            fputs(line, log);
            fflush(log);
        }
        if (isatty(2) && rank == 0 && k >= 0) fprintf(stderr, "\rsearch: trial %d/%d (%d resumed)", k + 1, a.trials, reused);
    }
    if (a.trials && isatty(2) && rank == 0) fprintf(stderr, "\n");
    if (prev) fclose(prev);
    if (log) fclose(log);
    if (st && ranks > 1) fprintf(stderr, "blockq search: rank %d of %d: %s\n", rank, ranks, bq_last_error());
    if (!rc && cli_mpi_max(st != BQ_OK)) rc = st ? cli_status("search", st) : EXIT_FAILURE;
    if (!rc) {
        double *nll = malloc((size_t)np * sizeof *nll);
        if (!nll) rc = cli_error("search", "out of memory");
        for (int j = 0; j < np && nll; j++) nll[j] = j % ranks == rank ? pts[j].nll : 0.0;
        if (nll) cli_mpi_sum(nll, (size_t)np);
        for (int j = 0; j < np && nll; j++) pts[j].nll = nll[j];
        free(nll);
        double r = reused;
        cli_mpi_sum(&r, 1);
        reused = (int)r;
        if (reused && rank == 0) fprintf(stderr, "search: %d trials resumed from %s\n", reused, path);
    }

    if (!rc && rank == 0) {  /* only rank 0 writes */
        double *L = malloc((size_t)np * sizeof *L), *Bt = malloc((size_t)np * sizeof *Bt), *D = malloc((size_t)np * sizeof *D);
        int *front = malloc((size_t)np * sizeof *front), *hl = calloc((size_t)np, sizeof *hl);
        for (int i = 0; i < np; i++) {
            assign_cost(nl, pts[i].choose, params, bits, area, fp32_area, &pts[i].bits, &pts[i].density);
            L[i] = pts[i].nll;
            Bt[i] = pts[i].bits;
            D[i] = pts[i].density;
        }
        int nfront = bq_pareto(np, L, Bt, D, front);
        for (int k = 0; k < nfront; k++) pts[front[k]].pareto = hl[front[k]] = 1;
        /* the best point within budget from each method */
        int best_trial = -1;
        for (int i = 0; i < np; i++)
            if (!strncmp(pts[i].kind, "trial", 5) && pts[i].bits <= a.budget + 1e-9 &&
                (best_trial < 0 || pts[i].nll < pts[best_trial].nll)) best_trial = i;
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
            if (pts[i].pareto || i == 0 || i == best_trial) {
                snprintf(cfg, sizeof cfg, "%s-p%d.toml", a.out, i);
                size_t tl = 0, tc = 0;
                char *toml = NULL;
                toml = cli_appendf(toml, &tl, &tc, "# %s: avg %.3f bits, calibration ppl %.4f (blockq search)\n", pts[i].kind,
                                   pts[i].bits, exp(pts[i].nll));
                for (int j = 0; j < nl && toml; j++)
                    toml = cli_appendf(toml, &tl, &tc, "\"%s\" = { w = \"%s\", a = \"%s\" }\n", bq_model_linear_name(m, j),
                                       names[pts[i].choose[j]], names[pts[i].choose[j]]);
                if ((rc = cli_save("search", cfg, toml, tl))) break;
            }
            md = cli_appendf(md, &len, &cp, "| %s | %.3f | %.2fx | %.3f | %s | %s |\n", pts[i].kind, pts[i].bits, pts[i].density,
                             exp(pts[i].nll), pts[i].pareto ? "yes" : "", cfg);
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
                    if (!(i == 0 || i == best_trial || !strncmp(pts[i].kind, "uniform", 7))) continue;
                    double tn;
                    if ((st = eval_assign(&te, nl, pts[i].choose, names, &tn, NULL))) { rc = cli_status("search", st); break; }
                    md = cli_appendf(md, &len, &cp, "| %s%s | %.3f | %.3f | %+.2f%% |\n", pts[i].kind,
                                     i == best_trial ? " (best sampled)" : "", pts[i].bits, exp(tn), 100 * (exp(tn - tb) - 1));
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
                                 "\"ppl\": %.5f, \"pareto\": %s, \"assignment\": [", pts[i].kind, pts[i].bits, pts[i].density,
                                 pts[i].nll, exp(pts[i].nll), pts[i].pareto ? "true" : "false");
                for (int j = 0; j < nl && js; j++) js = cli_appendf(js, &len, &cp, "%s\"%s\"", j ? ", " : "", names[pts[i].choose[j]]);
                js = cli_appendf(js, &len, &cp, "]}%s\n", i + 1 < np ? "," : "");
            }
            if (js) js = cli_appendf(js, &len, &cp, "]}\n");
            snprintf(path, sizeof path, "%s.json", a.out);
            rc = cli_save("search", path, js, len);
        }
        if (!rc) {
            const char **lb = calloc((size_t)np, sizeof *lb);
            for (int i = 0; i < np && lb; i++)
                lb[i] = strncmp(pts[i].kind, "trial", 5) ? pts[i].kind : "";
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
        free(L); free(Bt); free(D); free(front); free(hl);
    }
    for (int i = 0; i < cap && pts; i++) free(pts[i].choose);
    free(pts);
    free(sens);
    free(params);
    free(e.ids);
    bq_model_free(m);
    return rc;
}
