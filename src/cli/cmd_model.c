/* blockq logits | tokenize | generate | ppl */
#include "cli.h"
#include "core.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Options common to the model commands. */
typedef struct {
    const char *model, *ids, *out, *text, *prompt, *text_file, *protocol, *config, *device, *tasks, *calib;
    int calib_ctx, calib_chunks;
    const char *role[8];  /* as roles[] */
    int threads, json, n, ctx, chunks, strict, allow_nonfinite, round_set, packed, kld;
    int dev;  /* --device: 0 CPU, 1 CUDA */
    int eager;  /* generate --eager: no CUDA graph for one-token steps */
    int stages; /* --stages: pipeline stages (docs/distributed.md) */
    bq_hold hold;
    double temp, top_p;
    uint64_t seed;
    bq_round round;
} model_args;

enum { NROLES = 8, ROLE_PTQ = 7 };
static const char *const roles[NROLES] = {"wq", "aq", "attn", "kv", "head", "emb", "mul", "ptq"};


/* The commands of this file, as bits of their option rows. */
enum { LOGITS = 1, TOKENIZE = 2, GENERATE = 4, PPL = 8, EVAL = 16, QUANTIZE = 32, INFO = 64 };
enum { RUN = LOGITS | GENERATE | PPL | EVAL,  /* run the model */
       LOAD = RUN | QUANTIZE | INFO };        /* load (and quantise) it */

static int set_round(const char *cmd, const char *v, void *a)
{
    model_args *m = a;
    return cli_opt_round(cmd, v, &m->round, &m->round_set);
}

static int set_hold(const char *cmd, const char *v, void *a)
{
    static const char *const names[] = {"auto", "f32", "native"};
    static const bq_hold holds[] = {BQ_HOLD_AUTO, BQ_HOLD_F32, BQ_HOLD_NATIVE};
    for (int i = 0; i < 3; i++)
        if (!strcmp(v, names[i])) { ((model_args *)a)->hold = holds[i]; return 0; }
    return cli_error(cmd, "bad --hold '%s': expected auto, f32 or native", v);
}

static int set_protocol(const char *cmd, const char *v, void *a)
{
    if (strcmp(v, "all") && strcmp(v, "second-half") && strcmp(v, "llama.cpp"))
        return cli_error(cmd, "bad --protocol '%s': expected all, second-half or llama.cpp", v);
    ((model_args *)a)->protocol = v;
    return 0;
}

#define F(field) offsetof(model_args, field)
static const cli_opt model_opts[] = {
    {"--model", "M", CLI_STR, F(model), .help = "a Hugging Face folder, a .bq file or a GGUF file"},
    {"--text", "STR", CLI_STR, F(text), .cmds = TOKENIZE, .help = "the text to tokenize"},
    {"--text", "FILE", CLI_STR, F(text_file), .cmds = PPL, .help = "the text file to score"},
    {"--ids", "IDS.i32", CLI_STR, F(ids), .cmds = LOGITS, .help = "token ids, int32"},
    {"--prompt", "STR", CLI_STR, F(prompt), .cmds = GENERATE, .help = "the text to continue"},
    {"--tasks", "F.jsonl[,...]", CLI_STR, F(tasks), .cmds = EVAL, .help = "task files (docs/tasks.md)"},
    {"--out", "FILE", CLI_STR, F(out), .cmds = LOGITS | QUANTIZE, .help = "logits: float32 [n, vocab]; quantize: MODEL.bq or MODEL.gguf"},
    {"-n", "N", CLI_INT, F(n), 0, 1 << 20, .cmds = GENERATE, .help = "new tokens (default 32)"},
    {"--temperature", "T", CLI_NUM, F(temp), 0, 100, .cmds = GENERATE, .help = "0: greedy (default)"},
    {"--top-p", "P", CLI_NUM, F(top_p), 1e-300, 1, .cmds = GENERATE, .help = "nucleus sampling, (0, 1] (default 1)"},
    {"--eager", NULL, CLI_FLAG, F(eager), .cmds = GENERATE, .help = "launch every GPU kernel (no CUDA graph)"},
    {"--ctx", "S", CLI_INT, F(ctx), 2, 1 << 20, .cmds = PPL | EVAL, .help = "window length in tokens (default 512)"},
    {"--chunks", "N", CLI_INT, F(chunks), 1, 1 << 30, .cmds = PPL, .help = "score the first N windows (default all)"},
    {"--protocol", "P", CLI_CALL, 0, .call = set_protocol, .cmds = PPL,
     .help = "all, second-half or llama.cpp (llama-perplexity's tokens)"},
    {"--kld", NULL, CLI_FLAG, F(kld), .cmds = PPL, .help = "also the KL divergence from the unquantised model"},
    {"--limit", "N", CLI_INT, F(chunks), 0, 1 << 30, .cmds = EVAL, .help = "the first N items of each task"},
    {"--device", "D", CLI_STR, F(device), .cmds = RUN | QUANTIZE, .help = "cpu, cuda or auto (quantize: where calibration runs)"},
    {"--stages", "N", CLI_INT, F(stages), 1, BQ_MAX_STAGES, .cmds = RUN, .help = "pipeline stages (docs/distributed.md)"},
    {"--threads", "T", CLI_INT, F(threads), 0, 256, .cmds = LOAD, .help = "CPU threads (0: all cores)"},
    {"--wq", "F", CLI_STR, F(role[0]), .cmds = LOAD, .help = "weight format of the linears (blockq formats)"},
    {"--aq", "F", CLI_STR, F(role[1]), .cmds = LOAD, .help = "activation format of the linears' inputs"},
    {"--attn", "F", CLI_STR, F(role[2]), .cmds = LOAD, .help = "format of attention's operands (Q, K, V, P)"},
    {"--kv", "F", CLI_STR, F(role[3]), .cmds = LOAD, .help = "format of the KV cache"},
    {"--head", "F", CLI_STR, F(role[4]), .cmds = LOAD, .help = "format of the LM head (weights and input)"},
    {"--emb", "F", CLI_STR, F(role[5]), .cmds = LOAD, .help = "format of the embedding"},
    {"--mul", "M", CLI_STR, F(role[6]), .cmds = LOAD, .help = "approximate products: lmul (docs/formats.md)"},
    {"--ptq", "LIST", CLI_STR, F(role[7]), .cmds = LOAD, .help = "post-training quantisation: gptq, awq, smoothquant, rotate, hadamard, lorc, ... (docs/quantisation.md)"},
    {"--config", "FILE", CLI_STR, F(config), .cmds = LOAD, .help = "per-layer formats, TOML (docs/quantisation.md)"},
    {"--round", "MODE", CLI_CALL, 0, .call = set_round, .cmds = LOAD, .help = "rne (default), away, zero or stochastic"},
    {"--seed", "S", CLI_U64, F(seed), .cmds = GENERATE | LOAD, .help = "sampling and stochastic rounding seed"},
    {"--calib", "FILE", CLI_STR, F(calib), .cmds = LOAD, .help = "calibration text for --ptq (default: the WikiText-2 validation text)"},
    {"--calib-ctx", "S", CLI_INT, F(calib_ctx), 2, 1 << 20, .cmds = LOAD, .help = "calibration window length (default 512)"},
    {"--calib-chunks", "N", CLI_INT, F(calib_chunks), 1, 1 << 20, .cmds = LOAD, .help = "calibration windows (default 8)"},
    {"--packed", NULL, CLI_FLAG, F(packed), .cmds = RUN | INFO, .help = "pack the weights and run the packed kernels"},
    {"--strict", NULL, CLI_FLAG, F(strict), .cmds = LOAD, .help = "refuse a tensor a format cannot take instead of leaving it float"},
    {"--hold", "H", CLI_CALL, 0, .call = set_hold, .cmds = LOAD, .help = "how 16-bit weights are held: auto, f32 or native (quantize: native unless given)"},
    {"--allow-nonfinite", NULL, CLI_FLAG, F(allow_nonfinite), .cmds = LOAD, .help = "go on past NaN/Inf in weights or activations"},
    {"--json", NULL, CLI_FLAG, F(json), .cmds = TOKENIZE | GENERATE | PPL | EVAL | INFO, .help = "machine-readable output"},
    {0}};
#undef F

static const cli_cmd model_cmds[] = {
    {.cmd = "logits", .usage = "--model M --ids IDS.i32 --out OUT.f32 [options]", .about = NULL, .opts = model_opts, .bit = LOGITS},
    {.cmd = "tokenize", .usage = "--model M --text STR [--json]", .about = NULL, .opts = model_opts, .bit = TOKENIZE},
    {.cmd = "generate", .usage = "--model M --prompt STR [-n N] [options]", .about = NULL, .opts = model_opts, .bit = GENERATE},
    {.cmd = "ppl", .usage = "--model M --text FILE [--ctx S] [--chunks N] [options]", .about = NULL, .opts = model_opts, .bit = PPL},
    {.cmd = "eval", .usage = "--model M --tasks FILE.jsonl[,FILE...] [options]", .about = NULL, .opts = model_opts, .bit = EVAL},
    {.cmd = "quantize", .usage = "--model M (--wq F | --config FILE) [options] --out MODEL.bq|MODEL.gguf", .about = NULL, .opts = model_opts, .bit = QUANTIZE},
    {.cmd = "info", .usage = "--model M [options]", .about = "Without formats only the headers are read.", .opts = model_opts, .bit = INFO},
};

static const cli_cmd *model_cmd(const char *cmd)
{
    for (size_t i = 0; i < sizeof model_cmds / sizeof model_cmds[0]; i++)
        if (!strcmp(model_cmds[i].cmd, cmd)) return &model_cmds[i];
    return NULL;
}

static int parse_model_args(const char *cmd, int argc, char **argv, model_args *a)
{
    memset(a, 0, sizeof *a);
    a->ctx = 512;
    a->n = 32;
    a->protocol = "all";
    a->temp = 0.0;
    a->top_p = 1.0;
    a->calib_ctx = 512;
    a->calib_chunks = 8;
    const cli_cmd *c = model_cmd(cmd);
    int rc = cli_parse(c, argc, argv, a);
    if (rc) return rc;
    if (!a->model) return cli_usage(c);
    if (a->device && cli_device(cmd, a->device, &a->dev)) return EXIT_BADINPUT;
    bq_set_threads(a->threads);
    return 0;
}

/* Load the model and apply the quantisation the options ask for. */
/* A --config or any role option (--wq, --aq, ..., --mul) was given. */
static int wants_quant(const model_args *a)
{
    int any = a->config != NULL;
    for (int r = 0; r < NROLES; r++) any |= a->role[r] != NULL;
    return any;
}

/* --ptq: statistics from the calibration text (--calib, else the bundled WikiText-2
 * validation text where it is, never the test text) on the float model. */
static bq_status calibrate(const char *cmd, const model_args *a, const bq_model *m, bq_qconfig *q)
{
    const char *path = a->calib ? a->calib : "data/wikitext-2-valid-tokenized.txt";
    if (!a->calib && access(path, R_OK)) {
        fprintf(stderr, "blockq %s: no calibration text (%s absent, no --calib): --ptq weighs every weight alike\n", cmd, path);
        return BQ_OK;
    }
    void *text;
    size_t len, n;
    int32_t *ids = NULL;
    bq_tokenizer *t = NULL;
    bq_status st = bq_read_file(path, &text, &len);
    if (st) return st;
    if (!(st = bq_tokenizer_from_model(m, &t)) && !(st = bq_tokenize(t, text, len, &ids, &n))) {
        double t0 = bq_now();
        st = bq_qconfig_calibrate(q, m, ids, n, a->calib_ctx, a->calib_chunks);
        const char *ptq = a->role[ROLE_PTQ] ? a->role[ROLE_PTQ] : "";  /* NULL when the ptq came from --config */
        int rotated = !strncmp(ptq, "rotate", 6) || strstr(ptq, ",rotate") || !strncmp(ptq, "hadamard", 8) || strstr(ptq, ",hadamard");
        if (!st && rotated)
            fprintf(stderr, "blockq %s: calibration on %s (up to %d windows of %d tokens) runs after the rotation\n", cmd,
                    path, a->calib_chunks, a->calib_ctx);
        else if (!st)
            fprintf(stderr, "blockq %s: calibrated on %s (up to %d windows of %d tokens) in %.1f s\n", cmd, path,
                    a->calib_chunks, a->calib_ctx, bq_now() - t0);
    }
    free(ids);
    free(text);
    bq_tokenizer_free(t);
    return st;
}

/* How the model's weights are held: on a GPU, 16-bit checkpoints stay 16-bit on the
 * host too (they go up as they are). */
static bq_load_opts load_opts(const model_args *a)
{
    return (bq_load_opts){sizeof(bq_load_opts), a->hold == BQ_HOLD_AUTO && a->dev ? BQ_HOLD_NATIVE : a->hold};
}

static int load_model(const char *cmd, const model_args *a, bq_model **m)
{
    bq_load_opts lo = load_opts(a);
    bq_status st = bq_model_load_ex(a->model, &lo, m);
    if (!st && !a->allow_nonfinite) st = bq_model_check_finite(*m);
    if (st) {
        bq_model_free(*m);
        *m = NULL;
        return cli_status(cmd, st);
    }
    if (!wants_quant(a)) return 0;
    bq_qconfig *q;
    if ((st = cli_qconfig(roles, a->role, NROLES, a->config, a->round_set, a->round, a->seed, &q))) return cli_status(cmd, st);
    bq_qconfig_set_device(q, a->dev);
    int calibrated = bq_qconfig_needs_calibration(q);
    if (!st && calibrated) st = calibrate(cmd, a, *m, q);  /* --ptq or the config's ptq key */
    double t0 = bq_now();
    if (!st) st = a->packed ? bq_model_pack(*m, q, a->strict) : bq_model_quantize(*m, q, a->strict);
    if (!st && calibrated) fprintf(stderr, "blockq %s: quantised with calibration in %.1f s\n", cmd, bq_now() - t0);
    bq_qconfig_free(q);
    if (st) {
        bq_model_free(*m);
        *m = NULL;
        return cli_status(cmd, st);
    }
    return 0;
}

/* --stages N: the layers each stage will hold, on stderr (or the error in N). */
static int print_stages(const char *cmd, const model_args *a, const bq_model *m)
{
    if (a->stages < 2) return 0;
    int lo[BQ_MAX_STAGES + 1];
    bq_status st = bq_model_stage_plan(m, a->stages, lo);
    if (st) return cli_status(cmd, st);
    fprintf(stderr, "pipeline: %d stages (%s), layers", a->stages, a->dev ? "cuda" : "cpu");
    for (int s = 0; s < a->stages; s++) fprintf(stderr, "%s %d-%d", s ? "," : "", lo[s], lo[s + 1] - 1);
    fputc('\n', stderr);
    return 0;
}

int cmd_logits(int argc, char **argv)
{
    model_args a;
    int rc = parse_model_args("logits", argc, argv, &a);
    if (rc) return CLI_DONE(rc);
    if (!a.ids || !a.out) return cli_usage(model_cmd("logits"));
    void *ids;
    size_t size;
    bq_status st = bq_read_file(a.ids, &ids, &size);
    if (st) return cli_status("logits", st);
    if (size == 0 || size % 4) { free(ids); return cli_error("logits", "'%s' holds %zu bytes: expected a non-empty list of int32 ids", a.ids, size); }
    bq_model *m;
    if ((rc = load_model("logits", &a, &m)) || (rc = print_stages("logits", &a, m))) { free(ids); bq_model_free(m); return rc; }
    int n = (int)(size / 4), V = bq_model_vocab(m);
    float *lg = malloc((size_t)n * V * 4);
    if (!lg) rc = cli_error("logits", "out of memory");
    else {
        bq_ctx *c = NULL;
        bq_ctx_opts co = {.size = sizeof co, .device = a.dev, .threads = a.threads, .stages = a.stages};
        if (!(st = bq_ctx_new_ex(m, n, &co, &c))) {
            bq_ctx_set_check(c, !a.allow_nonfinite);
            st = bq_forward(c, ids, n, lg, 1);
        }
        bq_ctx_free(c);
        if (st || (st = bq_write_file_atomic(a.out, lg, (size_t)n * V * 4))) rc = cli_status("logits", st);
    }
    free(lg);
    free(ids);
    bq_model_free(m);
    return rc;
}

static void print_ids(const int32_t *ids, size_t n, int json)
{
    if (json) putchar('[');
    for (size_t i = 0; i < n; i++) printf(json ? "%s%d" : "%s%d", i ? (json ? ", " : " ") : "", ids[i]);
    puts(json ? "]" : "");
}

int cmd_tokenize(int argc, char **argv)
{
    model_args a;
    int rc = parse_model_args("tokenize", argc, argv, &a);
    if (rc) return CLI_DONE(rc);
    if (!a.text) return cli_usage(model_cmd("tokenize"));
    bq_tokenizer *t;
    if ((rc = cli_load_tokenizer("tokenize", a.model, NULL, &t))) return rc;
    int32_t *ids;
    size_t n;
    bq_status st = bq_tokenize(t, a.text, strlen(a.text), &ids, &n);
    if (st) rc = cli_status("tokenize", st);
    else { print_ids(ids, n, a.json); free(ids); }
    bq_tokenizer_free(t);
    return rc;
}

static void progress_bar(void *arg, size_t done, size_t total, size_t tokens, double secs)
{
    (void)arg;
    int w = 30, fill = (int)(w * done / total);
    fprintf(stderr, "\r[%.*s%*s] %zu/%zu windows  %.0f tok/s", fill, "##############################", w - fill, "", done,
            total, secs > 0 ? tokens / secs : 0.0);
    if (done == total) fputc('\n', stderr);
}

static int ppl_kld(const model_args *a, const bq_model *m, const int32_t *ids, size_t n, const bq_ppl_opts *o,
                   bq_kld_result *kr)
{
    int rank = cli_mpi_rank(), ranks = cli_mpi_size();
    size_t count;
    bq_status st = bq_kld_rows(n, o, &count);
    if (st) return cli_status("ppl", st);
    double *kl = malloc(count * sizeof *kl), *same = malloc(count * sizeof *same), t0 = bq_now();
    bq_model *ref = NULL;
    bq_load_opts lo = load_opts(a);
    if (!kl || !same) st = bq_fail(BQ_ERR_NOMEM, "out of memory for %zu KL divergences", count);
    else if (!(st = bq_model_load_ex(a->model, &lo, &ref))) st = bq_kld_part(ref, m, ids, n, o, rank, ranks, kl, same);
    bq_model_free(ref);
    if (st && ranks > 1) fprintf(stderr, "blockq ppl: --kld: rank %d of %d: %s\n", rank, ranks, bq_last_error());
    int rc = 0;
    if (cli_mpi_max(st != BQ_OK)) rc = st ? cli_status("ppl", st) : EXIT_FAILURE;
    else {
        cli_mpi_sum(kl, count);
        cli_mpi_sum(same, count);
        bq_kld_finish(kl, same, count, kr);
        kr->seconds = cli_mpi_maxd(bq_now() - t0);
    }
    free(kl);
    free(same);
    return rc;
}

int cmd_ppl(int argc, char **argv)
{
    model_args a;
    int rc = parse_model_args("ppl", argc, argv, &a);
    if (rc) return CLI_DONE(rc);
    if (!a.text_file)
        return cli_usage(model_cmd("ppl"));
    int second = !strcmp(a.protocol, "second-half");
    if (!strcmp(a.protocol, "llama.cpp")) second = 2;
    if (second && a.ctx % 2) return cli_error("ppl", "--protocol %s needs an even --ctx", a.protocol);
    void *text;
    size_t len;
    bq_status st = bq_read_file(a.text_file, &text, &len);
    if (st) return cli_status("ppl", st);
    bq_model *m = NULL;
    bq_tokenizer *t = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    double t0 = bq_now();
    if ((rc = load_model("ppl", &a, &m)) || (rc = cli_load_tokenizer("ppl", a.model, m, &t))) goto done;
    double load_s = bq_now() - t0;
    if ((st = bq_tokenize(t, text, len, &ids, &n))) { rc = cli_status("ppl", st); goto done; }
    bq_ppl_opts o = {.ctx = a.ctx, .chunks = a.chunks, .second_half = second, .allow_nonfinite = a.allow_nonfinite,
                     .threads = a.threads};
    o.device = a.dev;
    o.stages = a.stages;
    int rank = cli_mpi_rank(), ranks = cli_mpi_size();
    if (rank == 0 && (rc = print_stages("ppl", &a, m))) goto done;
    if (isatty(2) && rank == 0) o.progress = progress_bar;
    bq_ppl_result r;
    size_t nw;
    if ((st = bq_ppl_windows(n, &o, &nw))) { rc = cli_status("ppl", st); goto done; }
    /* the windows dealt round-robin over the ranks (one rank: all of them), their
     * sums added exactly, so every rank count gives the same bits */
    double *nll = calloc(2 * nw, sizeof *nll), t1 = bq_now();
    if (!nll) { rc = cli_error("ppl", "out of memory"); goto done; }
    st = bq_perplexity_part(m, ids, n, &o, rank, ranks, nll, nll + nw);
    if (st) fprintf(stderr, "blockq ppl: rank %d of %d: %s\n", rank, ranks, bq_last_error());
    int failed = cli_mpi_max(st != BQ_OK);
    if (!failed) {
        cli_mpi_sum(nll, 2 * nw);
        bq_ppl_finish(nll, nll + nw, nw, &o, &r);
        r.seconds = bq_now() - t1;
    }
    free(nll);
    if (failed) { rc = st ? cli_status("ppl", st) : EXIT_FAILURE; goto done; }
    /* --kld: the unquantised model over the same windows, its distributions the
     * reference; the windows dealt over the ranks as above, the per-token values added */
    bq_kld_result kr = {0};
    if (a.kld && (rc = ppl_kld(&a, m, ids, n, &o, &kr))) goto done;
    if (rank) goto done;  /* rank 0 writes */
    if (a.json) {
        char *qm = cli_json_quote(a.model), *qt = cli_json_quote(a.text_file);
        if (!qm || !qt) rc = cli_error("ppl", "out of memory");
        else
            printf("{\"model\": %s, \"text\": %s, \"ctx\": %d, \"protocol\": \"%s\", \"tokens\": %zu, \"windows\": %zu, "
                   "\"tokens_scored\": %zu, \"nll\": %.9f, \"ppl\": %.6f, \"seconds\": %.3f, \"tokens_per_second\": %.1f, "
                   "\"load_seconds\": %.3f, \"device\": \"%s\"",
                   qm, qt, a.ctx, a.protocol, n, r.windows, r.tokens_scored, r.nll, r.ppl, r.seconds,
                   r.windows * (double)a.ctx / r.seconds, load_s, a.dev ? "cuda" : "cpu");
        if (a.kld)
            printf(", \"kld_mean\": %.8f, \"kld_p99\": %.8f, \"kld_max\": %.8f, \"top1_agreement\": %.6f", kr.kld_mean,
                   kr.kld_p99, kr.kld_max, kr.top1);
        printf("}\n");
        free(qm);
        free(qt);
    } else
        printf("model %s  text %s (%zu tokens)\nctx %d  protocol %s  windows %zu  scored %zu  %.1f s (%.0f tok/s)\nppl %.4f\n",
               a.model, a.text_file, n, a.ctx, a.protocol, r.windows, r.tokens_scored, r.seconds,
               r.windows * (double)a.ctx / r.seconds, r.ppl);
    if (!rc && !a.json && a.kld)
        printf("KL divergence from the unquantised model: mean %.6f, p99 %.6f, max %.6f; top-1 agreement %.2f%% (%zu tokens)\n",
               kr.kld_mean, kr.kld_p99, kr.kld_max, 100 * kr.top1, kr.tokens);
    if (!rc) fprintf(stderr, "load %.2f s; scored %zu windows of %d in %.2f s (%.0f tokens/s, %s)\n", load_s, r.windows, a.ctx,
                     r.seconds, r.windows * (double)a.ctx / r.seconds, a.dev ? "cuda" : "cpu");
done:
    free(text);
    free(ids);
    bq_tokenizer_free(t);
    bq_model_free(m);
    return rc;
}

/* Under mpirun, eval's items are dealt over the ranks (item i to rank i % ranks) and
 * the per-item scores gathered in item order, so the numbers are those of one process. */
typedef struct { size_t n, cap; size_t *idx; double *acc, *second; } item_scores;
static void keep_score(void *arg, size_t index, double acc, double second)
{
    item_scores *k = arg;
    if (k->n == k->cap) {
        size_t c = k->cap ? 2 * k->cap : 256;
        size_t *i = realloc(k->idx, c * sizeof *i);
        if (i) k->idx = i;
        double *a = i ? realloc(k->acc, c * sizeof *a) : NULL;
        if (a) k->acc = a;
        double *b = a ? realloc(k->second, c * sizeof *b) : NULL;
        if (b) k->second = b;
        if (!b) { k->cap = (size_t)-1; return; }  /* out of memory: reported after the run */
        k->cap = c;
    }
    k->idx[k->n] = index; k->acc[k->n] = acc; k->second[k->n] = second; k->n++;
}

static bq_status gather_scores(const item_scores *k, bq_eval_result *r)
{
    if (cli_mpi_max(k->cap == (size_t)-1)) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    int hi = 0;
    for (size_t j = 0; j < k->n; j++) hi = (int)k->idx[j] + 1 > hi ? (int)k->idx[j] + 1 : hi;
    size_t N = (size_t)cli_mpi_max(hi);
    double *v = calloc(3 * N + 4, sizeof *v);  /* scored flags, acc, second; then the counters */
    if (cli_mpi_max(!v)) { free(v); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    for (size_t j = 0; j < k->n; j++) { v[k->idx[j]] = 1; v[N + k->idx[j]] = k->acc[j]; v[2 * N + k->idx[j]] = k->second[j]; }
    double *c = v + 3 * N;
    c[0] = (double)r->skipped; c[1] = (double)r->tokens_computed; c[2] = (double)r->tokens_reused;
    cli_mpi_sum(v, 3 * N + 3);  /* each entry from one rank: exact */
    size_t n = 0;
    for (size_t i = 0; i < N; i++)
        if (v[i] != 0) { v[N + n] = v[N + i]; v[2 * N + n] = v[2 * N + i]; n++; }
    r->items = n;
    r->skipped = (size_t)c[0]; r->tokens_computed = (size_t)c[1]; r->tokens_reused = (size_t)c[2];
    r->seconds = cli_mpi_maxd(r->seconds);  /* the slowest rank's */
    bq_eval_summarise(!strcmp(r->kind, "multiple_choice"), v + N, v + 2 * N, n, r);
    free(v);
    return BQ_OK;
}

/* blockq eval: one line (or JSON object) per task file. */
int cmd_eval(int argc, char **argv)
{
    model_args a;
    int rc = parse_model_args("eval", argc, argv, &a);
    if (rc) return CLI_DONE(rc);
    if (!a.tasks)
        return cli_usage(model_cmd("eval"));
    bq_model *m = NULL;
    bq_tokenizer *t = NULL;
    if ((rc = load_model("eval", &a, &m)) || (rc = cli_load_tokenizer("eval", a.model, m, &t))) goto done;
    if (cli_mpi_rank() == 0 && (rc = print_stages("eval", &a, m))) goto done;
    char *list = strdup(a.tasks);
    if (!list) { rc = cli_error("eval", "out of memory"); goto done; }
    if (cli_mpi_rank() > 0) {}
    else if (a.json) printf("[");
    else printf("%-32s %-16s %6s %7s %16s %16s %10s %9s\n", "task", "kind", "items", "skipped", "acc", "acc_norm", "ppl", "tok/s");
    int first = 1;
    for (char *f = list, *next; f && !rc; f = next) {
        if ((next = strchr(f, ','))) *next++ = 0;
        if (!*f) { rc = cli_error("eval", "--tasks has an empty entry"); break; }
        const int rank = cli_mpi_rank(), ranks = cli_mpi_size();
        item_scores k = {0};
        bq_eval_opts o = {.size = sizeof o, .limit = a.chunks, .max_ctx = a.ctx, .allow_nonfinite = a.allow_nonfinite, .device = a.dev,
                          .part = rank, .parts = ranks, .on_score = ranks > 1 ? keep_score : NULL, .arg = &k, .stages = a.stages};
        bq_eval_result r;
        bq_status st = bq_eval_file(m, t, f, &o, &r);
        if (st && ranks > 1) fprintf(stderr, "blockq eval: rank %d of %d: %s\n", rank, ranks, bq_last_error());
        if (ranks > 1 && cli_mpi_max(st != BQ_OK)) rc = st ? cli_status("eval", st) : EXIT_FAILURE;
        else if (st) rc = cli_status("eval", st);
        else if (ranks > 1 && (st = gather_scores(&k, &r))) rc = cli_status("eval", st);
        free(k.idx); free(k.acc); free(k.second);
        if (rc) break;
        if (rank > 0) { first = 0; continue; }  /* only rank 0 prints */
        double tps = r.seconds > 0 ? r.tokens_computed / r.seconds : 0;
        if (a.json) {
            char *q = cli_json_quote(f);
            printf("%s\n  {\"task\": %s, \"kind\": \"%s\", \"items\": %zu, \"skipped\": %zu, \"acc\": %.6f, \"acc_stderr\": %.6f, ",
                   first ? "" : ",", q ? q : "null", r.kind, r.items, r.skipped, r.acc, r.acc_stderr);
            if (isnan(r.acc_norm)) printf("\"acc_norm\": null, \"acc_norm_stderr\": null, \"ppl\": %.6f, ", r.ppl);
            else printf("\"acc_norm\": %.6f, \"acc_norm_stderr\": %.6f, \"ppl\": null, ", r.acc_norm, r.acc_norm_stderr);
            printf("\"tokens_computed\": %zu, \"tokens_reused\": %zu, \"seconds\": %.3f, \"tokens_per_second\": %.1f}", r.tokens_computed,
                   r.tokens_reused, r.seconds, tps);
            free(q);
        } else {
            char accs[32], norms[32], ppls[16];
            snprintf(accs, sizeof accs, "%.4f+-%.4f", r.acc, r.acc_stderr);
            if (isnan(r.acc_norm)) snprintf(norms, sizeof norms, "-");
            else snprintf(norms, sizeof norms, "%.4f+-%.4f", r.acc_norm, r.acc_norm_stderr);
            if (isnan(r.ppl)) snprintf(ppls, sizeof ppls, "-");
            else snprintf(ppls, sizeof ppls, "%.3f", r.ppl);
            printf("%-32s %-16s %6zu %7zu %16s %16s %10s %9.0f\n", f, r.kind, r.items, r.skipped, accs, norms, ppls, tps);
        }
        first = 0;
    }
    if (a.json && !rc && cli_mpi_rank() == 0) printf("\n]\n");
    free(list);
done:
    bq_tokenizer_free(t);
    bq_model_free(m);
    return rc;
}

/* Each new token's text as soon as it is chosen. */
typedef struct { const bq_tokenizer *t; } printer;
static void print_token(void *arg, int32_t id)
{
    const printer *p = arg;
    char *piece;
    size_t pl;
    if (!bq_detokenize(p->t, &id, 1, &piece, &pl)) { fwrite(piece, 1, pl, stdout); free(piece); fflush(stdout); }
}

int cmd_generate(int argc, char **argv)
{
    model_args a;
    int rc = parse_model_args("generate", argc, argv, &a);
    if (rc) return CLI_DONE(rc);
    if (!a.prompt) return cli_usage(model_cmd("generate"));
    bq_model *m = NULL;
    bq_tokenizer *t = NULL;
    int32_t *ids = NULL, *out = NULL;
    size_t n = 0;
    bq_status st;
    double t0 = bq_now(), load_s = 0;
    if ((rc = load_model("generate", &a, &m)) || (rc = cli_load_tokenizer("generate", a.model, m, &t)) ||
        (rc = print_stages("generate", &a, m)))
        goto done;
    load_s = bq_now() - t0;
    if ((st = bq_tokenize(t, a.prompt, strlen(a.prompt), &ids, &n))) { rc = cli_status("generate", st); goto done; }
    if (n == 0) { rc = cli_error("generate", "the prompt encodes to no tokens"); goto done; }
    if (!(out = malloc(((size_t)a.n + 1) * sizeof *out))) { rc = cli_error("generate", "out of memory"); goto done; }
    printer pr = {t};
    bq_gen_opts o = {.size = sizeof o, .n_new = a.n, .temperature = a.temp, .top_p = a.top_p, .seed = a.seed,
                     .allow_nonfinite = a.allow_nonfinite, .on_token = a.json ? NULL : print_token, .arg = &pr, .device = a.dev, .eager = a.eager,
                     .stages = a.stages};
    bq_gen_result r;
    if (!a.json) fputs(a.prompt, stdout);
    if ((st = bq_generate(m, ids, n, &o, out, &r))) { rc = cli_status("generate", st); goto done; }
    double pps = r.prompt_seconds > 0 ? r.prompt_tokens / r.prompt_seconds : 0, gps = r.gen_seconds > 0 ? r.gen_tokens / r.gen_seconds : 0;
    if (a.json) {
        printf("{\"prompt_ids\": ");
        for (size_t i = 0; i < n; i++) printf("%s%d", i ? ", " : "[", ids[i]);
        printf("], \"ids\": ");
        for (int i = 0; i < a.n; i++) printf("%s%d", i ? ", " : "[", out[i]);
        printf("%s, \"load_seconds\": %.3f, \"prompt_tokens\": %zu, \"prompt_seconds\": %.4f, \"prompt_tokens_per_second\": %.1f, "
               "\"gen_tokens\": %zu, \"gen_seconds\": %.4f, \"gen_tokens_per_second\": %.1f, \"device\": \"%s\"}\n",
               a.n ? "]" : "[]", load_s, r.prompt_tokens, r.prompt_seconds, pps, r.gen_tokens, r.gen_seconds, gps, a.dev ? "cuda" : "cpu");
    } else {
        putchar('\n');
    }
    fprintf(stderr, "load %.2f s; prompt %zu tokens in %.3f s (%.1f tokens/s); generated %zu tokens in %.3f s (%.1f tokens/s)\n",
            load_s, r.prompt_tokens, r.prompt_seconds, pps, r.gen_tokens, r.gen_seconds, gps);
done:
    free(ids);
    free(out);
    bq_tokenizer_free(t);
    bq_model_free(m);
    return rc;
}

/* blockq quantize: a model packed to its true size, as .bq (or GGUF by extension). */
int cmd_quantize(int argc, char **argv)
{
    model_args a;
    int rc = parse_model_args("quantize", argc, argv, &a);
    if (rc) return CLI_DONE(rc);
    if (!a.out || (!a.config && !a.role[0] && !a.role[4] && !a.role[5]))
        return cli_usage(model_cmd("quantize"));
    int gguf = cli_ends_with(a.out, ".gguf") && strcmp(a.out, ".gguf");
    a.packed = 1;
    /* quantised from a 16-bit checkpoint as it lies (the same codes as from float32,
     * tested; float tensors keep their bits, -0 included): a 7B needs the file's memory,
     * not twice it */
    if (a.hold == BQ_HOLD_AUTO) a.hold = BQ_HOLD_NATIVE;
    bq_model *m;
    if ((rc = load_model("quantize", &a, &m))) return rc;
    bq_status st = gguf ? bq_model_save_gguf(m, a.out) : bq_model_save(m, a.out);
    if (st) rc = cli_status("quantize", st);
    else {
        struct stat sb;
        if (!stat(a.out, &sb)) printf("wrote %s: %.2f MB\n", a.out, (double)sb.st_size / 1e6);
    }
    bq_model_free(m);
    return rc;
}

/* blockq info: what a model holds and how much memory its weights take. */
int cmd_info(int argc, char **argv)
{
    model_args a;
    int rc = parse_model_args("info", argc, argv, &a);
    if (rc) return CLI_DONE(rc);
    bq_model *m = NULL;
    bq_model_mem mm;
    bq_status st;
    if (!wants_quant(&a)) {  /* headers only: no weight is read */
        bq_load_opts lo = {sizeof lo, a.hold};
        if ((st = bq_model_inspect(a.model, &lo, &mm))) return cli_status("info", st);
    } else {
        if ((rc = load_model("info", &a, &m))) return rc;
        if ((st = bq_model_memory(m, &mm))) { bq_model_free(m); return cli_status("info", st); }
    }
    double bpw = mm.packed_params ? 8.0 * (double)mm.packed_bytes / (double)mm.packed_params : 0;
    long pages = 0;  /* resident set now, after loading (file mappings are closed by then) */
    FILE *sf = fopen("/proc/self/statm", "r");
    if (sf) { if (fscanf(sf, "%*s %ld", &pages) != 1) pages = 0; fclose(sf); }
    double rss = m ? (double)pages * (double)sysconf(_SC_PAGESIZE) : (double)(mm.packed_bytes + mm.float_bytes);
    double ideal = mm.packed_params ? mm.packed_bits_ideal / (double)mm.packed_params : 0;
    if (a.json)
        printf("{\"packed_tensors\": %d, \"packed_params\": %zu, \"packed_bytes\": %zu, \"bits_per_weight\": %.4f, "
               "\"bits_per_weight_ideal\": %.4f, \"float_tensors\": %d, \"float_params\": %zu, \"float_bytes\": %zu, "
               "\"resident_bytes\": %.0f}\n",
               mm.packed_tensors, mm.packed_params, mm.packed_bytes, bpw, ideal, mm.float_tensors, mm.float_params, mm.float_bytes,
               rss);
    else
        printf("packed: %d tensors, %zu weights, %.2f MB in memory, %.3f bits/weight (formats' own: %.3f)\n"
               "float:  %d tensors, %zu values, %.2f MB as float32\n"
               "resident set after loading: %.2f MB%s\n",
               mm.packed_tensors, mm.packed_params, mm.packed_bytes / 1e6, bpw, ideal, mm.float_tensors, mm.float_params,
               mm.float_bytes / 1e6, rss / 1e6, m ? "" : " (the weights' bytes, from the headers; nothing loaded)");
    bq_model_free(m);
    return 0;
}
