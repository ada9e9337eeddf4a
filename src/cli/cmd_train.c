/* blockq finetune: quantisation-aware fine-tuning on a text, windows in a seeded
 * order, checkpoints beside the output (OUT.ckpt) to resume from, the result as a
 * Hugging Face folder or a .bq file. */
#include "cli.h"
#include "core.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const qroles[] = {"wq", "aq", "kv", "head", "attn", "emb", "mul", "ptq"};
enum { NQ = 8 };

typedef struct {
    const char *model, *text, *val, *out, *config, *train, *device, *qv[NQ];
    int threads, json, save_every, resume, val_chunks, log_every, round_set, stop_after;
    bq_round round;
    uint64_t qseed;
    bq_train_opts o;
} ft_args;

static int set_seed(const char *cmd, const char *v, void *args)
{
    ft_args *a = args;
    if (!parse_u64(v, &a->o.seed)) return cli_error(cmd, "bad --seed '%s': expected an unsigned integer", v);
    a->qseed = a->o.seed;  /* the quantisers' stochastic rounding too */
    return 0;
}

static int set_round(const char *cmd, const char *v, void *args) { ft_args *a = args; return cli_opt_round(cmd, v, &a->round, &a->round_set); }

#define F(field) offsetof(ft_args, field)
static const cli_opt ft_opts[] = {
    {"--model", "M", CLI_STR, F(model), .help = "a LLaMA-family Hugging Face folder or .bq file"},
    {"--text", "TRAIN.txt", CLI_STR, F(text), .help = "the training text"},
    {"--out", "DIR|FILE.bq", CLI_STR, F(out), .help = "a Hugging Face folder (safetensors) or a packed .bq"},
    {"--steps", "N", CLI_INT, F(o.steps), 1, 1 << 30, .help = "optimiser steps"},
    {"--ctx", "S", CLI_INT, F(o.ctx), 1, 1 << 20, .help = "tokens a window"},
    {"--accum", "A", CLI_INT, F(o.accum), 1, 1 << 20, .help = "windows a step (gradient accumulation)"},
    {"--lr", "X", CLI_NUM, F(o.lr), 1e-12, 10, .help = "peak learning rate (AdamW)"},
    {"--warmup", "W", CLI_INT, F(o.warmup), 0, 1 << 30, .help = "warm-up steps (default 5% of the steps)"},
    {"--min-lr-frac", "F", CLI_NUM, F(o.min_lr_frac), 0, 1, .help = "the cosine schedule's floor, a fraction of --lr"},
    {"--weight-decay", "X", CLI_NUM, F(o.weight_decay), 0, 10, .help = "AdamW's decoupled weight decay"},
    {"--clip", "X", CLI_NUM, F(o.clip_norm), 0, 1e9, .help = "gradient norm clip (0: none)"},
    {"--lora", "R", CLI_INT, F(o.lora), 0, 1 << 16, .help = "LoRA adapters of rank R on the linears (0: full fine-tuning)"},
    {"--lora-alpha", "A", CLI_NUM, F(o.lora_alpha), 0, 1e6, .help = "LoRA's scale numerator (scale alpha / R)"},
    {"--lora-beside", NULL, CLI_FLAG, F(o.lora_beside), .help = "adapters outside the weight quantiser (QLoRA's form; .bq output)"},
    {"--train", "WHAT", CLI_STR, F(train), .help = "linears,norms,emb,head or all"},
    {"--seed", "S", CLI_CALL, 0, .call = set_seed, .help = "windows' order, initialisation and stochastic rounding"},
    {"--threads", "T", CLI_INT, F(threads), 0, 256, .help = "CPU threads (0: all cores)"},
    {"--device", "D", CLI_STR, F(device), .help = "cpu (default), cuda or auto: where the passes run"},
    {"--tf32", NULL, CLI_FLAG, F(o.tf32), .help = "CUDA: products on the tensor cores in TF32 (10-bit mantissas)"},
    {"--val", "TEXT", CLI_STR, F(val), .help = "a validation text scored at each checkpoint"},
    {"--val-chunks", "N", CLI_INT, F(val_chunks), 1, 1 << 30, .help = "its windows (default 16)"},
    {"--save-every", "K", CLI_INT, F(save_every), 0, 1 << 30, .help = "a checkpoint every K steps (default 50)"},
    {"--stop-after", "K", CLI_INT, F(stop_after), 1, 1 << 30, .help = "stop after K steps (a later --resume goes on)"},
    {"--resume", NULL, CLI_FLAG, F(resume), .help = "go on from OUT.ckpt"},
    {"--log-every", "K", CLI_INT, F(log_every), 1, 1 << 30, .help = "progress every K steps"},
    {"--json", NULL, CLI_FLAG, F(json), .help = "progress as JSON lines"},
    {"--wq", "F", CLI_STR, F(qv[0]), .help = "weight format in the forward pass (straight-through)"},
    {"--aq", "F", CLI_STR, F(qv[1]), .help = "activation format"},
    {"--kv", "F", CLI_STR, F(qv[2]), .help = "KV cache format"},
    {"--head", "F", CLI_STR, F(qv[3]), .help = "LM head format"},
    {"--attn", "F", CLI_STR, F(qv[4]), .help = "attention operands' format"},
    {"--emb", "F", CLI_STR, F(qv[5]), .help = "embedding format"},
    {"--mul", "M", CLI_STR, F(qv[6]), .help = "approximate products (lmul)"},
    {"--ptq", "LIST", CLI_STR, F(qv[7]), .help = "post-training quantisation before training"},
    {"--config", "FILE", CLI_STR, F(config), .help = "per-layer formats, TOML"},
    {"--round", "MODE", CLI_CALL, 0, .call = set_round, .help = "rne (default), away, zero or stochastic"},
    {0}};
#undef F
static const cli_cmd ft_cmd = {.cmd = "finetune", .usage = "--model M --text TRAIN.txt --out DIR|FILE.bq [options]",
                               .about = "docs/finetune.md: what is computed, the straight-through estimator, checkpoints.", .opts = ft_opts};

static int parse(int argc, char **argv, ft_args *a)
{
    memset(a, 0, sizeof *a);
    bq_train_opts_default(&a->o);
    a->save_every = 50;
    a->val_chunks = 16;
    a->log_every = 1;
    a->o.warmup = -1;  /* not given: 5% of the steps */
    int rc = cli_parse(&ft_cmd, argc, argv, a);
    if (rc) return rc;
    if (!a->model || !a->text || !a->out) return cli_usage(&ft_cmd);
    if (a->o.lora_beside && !a->o.lora) return cli_error("finetune", "--lora-beside needs adapters (--lora R)");
    if (a->o.lora_beside && !cli_ends_with(a->out, ".bq"))  /* said before training, not after it */
        return cli_error("finetune", "--lora-beside keeps the adapters as factors beside each weight, which only a .bq file holds: --out %s is a Hugging Face folder; give --out FILE.bq", a->out);
    if (a->o.warmup < 0) a->o.warmup = a->o.steps / 20;
    a->o.train = a->train;
    if (a->device && cli_device("finetune", a->device, &a->o.device)) return EXIT_BADINPUT;
    a->o.threads = a->threads;
    return 0;
}


static int tokenize_file(const bq_model *m, const char *path, int32_t **ids, size_t *n)
{
    void *text;
    size_t len;
    bq_tokenizer *t = NULL;
    bq_status st = bq_read_file(path, &text, &len);
    if (!st && !(st = bq_tokenizer_from_model(m, &t))) st = bq_tokenize(t, text, len, ids, n);
    if (!st) free(text);
    bq_tokenizer_free(t);
    return st ? cli_status("finetune", st) : 0;
}

/* The windows in a seeded order, a new permutation each epoch: window k of the run
 * (k = step * accum + a) depends on the seed and k alone, so a resumed run reads the
 * same windows as an uninterrupted one. */
static uint64_t mix(uint64_t z) { return bq_splitmix(&z); }

static void epoch_order(uint64_t seed, long epoch, size_t nwin, size_t *perm)
{
    for (size_t i = 0; i < nwin; i++) perm[i] = i;
    uint64_t s = mix(seed ^ mix((uint64_t)epoch));
    for (size_t i = nwin - 1; i > 0; i--) {
        s = mix(s);
        size_t j = (size_t)(s % (i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

int cmd_finetune(int argc, char **argv)
{
    ft_args a;
    int rc = parse(argc, argv, &a);
    if (rc) return CLI_DONE(rc);
    bq_model *m = NULL;
    bq_qconfig *q = NULL;
    bq_trainer *t = NULL;
    int32_t *ids = NULL, *vids = NULL, *batch = NULL;
    size_t n = 0, vn = 0, *perm = NULL;
    char ckpt[4200];
    snprintf(ckpt, sizeof ckpt, "%s.ckpt", a.out);
    bq_load_opts lo = {sizeof lo, BQ_HOLD_F32};
    bq_status st = bq_model_load_ex(a.model, &lo, &m);
    if (!st) st = bq_model_check_finite(m);
    if (st) { rc = cli_status("finetune", st); goto done; }
    if ((st = cli_qconfig(qroles, a.qv, NQ, a.config, a.round_set, a.round, a.qseed, &q))) { rc = cli_status("finetune", st); goto done; }
    if ((st = bq_trainer_new(m, q, &a.o, &t))) { rc = cli_status("finetune", st); goto done; }
    if (!cli_ends_with(a.out, ".bq") && (st = bq_model_hf_writable(m))) {  /* said before training, not after it */
        rc = cli_error("finetune", "--out %s: %s; give --out FILE.bq", a.out, bq_last_error());
        goto done;
    }
    if ((rc = tokenize_file(m, a.text, &ids, &n))) goto done;
    size_t T = (size_t)a.o.ctx + 1, nwin = n > (size_t)a.o.ctx ? (n - 1) / (size_t)a.o.ctx : 0;
    if (!nwin) {
        rc = cli_error("finetune", "%s: %zu tokens, shorter than one window of %zu (--ctx %d + 1)", a.text, n, T, a.o.ctx);
        goto done;
    }
    if (a.val && (rc = tokenize_file(m, a.val, &vids, &vn))) goto done;
    size_t vwin = vn > (size_t)a.o.ctx ? (vn - 1) / (size_t)a.o.ctx : 0;
    if (a.val && !vwin) {
        rc = cli_error("finetune", "%s: %zu tokens, shorter than one window of %zu", a.val, vn, T);
        goto done;
    }
    vwin = vwin < (size_t)a.val_chunks ? vwin : (size_t)a.val_chunks;
    if (a.resume && access(ckpt, F_OK) == 0) {
        if ((st = bq_trainer_load_state(t, ckpt))) { rc = cli_status("finetune", st); goto done; }
        fprintf(stderr, "blockq finetune: resumed from %s at step %ld\n", ckpt, bq_trainer_steps_done(t));
    } else if (!a.resume && access(ckpt, F_OK) == 0) {
        rc = cli_error("finetune", "%s exists from an earlier run: --resume to continue it, or remove it", ckpt);
        goto done;
    }
    batch = malloc(T * (size_t)a.o.accum * sizeof *batch);
    perm = malloc(nwin * sizeof *perm);
    if (!batch || !perm) { rc = cli_error("finetune", "out of memory"); goto done; }
    fprintf(stderr, "blockq finetune: %s, %zu trainable values (%s%s), %zu windows of %zu tokens, %d steps of %d\n", a.model,
            bq_trainer_params(t), a.o.lora ? "LoRA adapters" : "full", a.train ? "" : " (all)", nwin, T, a.o.steps, a.o.accum);
    long epoch = -1;
    double t0 = bq_now(), loss = 0, first = NAN;
    size_t tokens = 0;
    for (long s = bq_trainer_steps_done(t); s < a.o.steps; s++) {
        for (int k = 0; k < a.o.accum; k++) {
            long w = s * a.o.accum + k;
            if (w / (long)nwin != epoch) epoch_order(a.o.seed, epoch = w / (long)nwin, nwin, perm);
            memcpy(batch + (size_t)k * T, ids + perm[w % (long)nwin] * (size_t)a.o.ctx, T * sizeof *batch);
        }
        double lr = bq_trainer_lr(t, s);
        if ((st = bq_trainer_step(t, batch, &loss))) {
            rc = cli_status("finetune", st);
            if (access(ckpt, F_OK) == 0) fprintf(stderr, "blockq finetune: the last good checkpoint is %s\n", ckpt);
            goto done;
        }
        if (first != first) first = loss;
        tokens += T * (size_t)a.o.accum;
        double el = bq_now() - t0;
        if ((s + 1) % a.log_every == 0 || s + 1 == a.o.steps) {
            if (a.json)
                printf("{\"step\": %ld, \"loss\": %.6f, \"lr\": %.6g, \"tokens\": %zu, \"seconds\": %.3f}\n", s + 1, loss, lr,
                       tokens, el);
            else
                fprintf(stderr, "step %ld/%d  loss %.4f  lr %.3g  %.0f tok/s\n", s + 1, a.o.steps, loss, lr, tokens / el);
            fflush(stdout);
        }
        int stop = a.stop_after && s + 1 == a.stop_after && s + 1 < a.o.steps;
        if (((a.save_every && (s + 1) % a.save_every == 0 && s + 1 < a.o.steps) || stop) &&
            (st = bq_trainer_save_state(t, ckpt))) {
            rc = cli_status("finetune", st);
            goto done;
        }
        if (stop) {  /* a time-boxed part of the run: --resume continues it */
            fprintf(stderr, "blockq finetune: stopped after step %ld of %d; %s holds the run (--resume)\n", s + 1, a.o.steps, ckpt);
            goto done;
        }
    }
    double secs = bq_now() - t0, vloss = NAN;
    /* held-out windows, consecutive, with the trainer's quantisers */
    if (vwin && (st = bq_trainer_loss(t, vids, vwin * (size_t)a.o.ctx + 1, &vloss))) { rc = cli_status("finetune", st); goto done; }
    if ((st = bq_trainer_merge(t))) { rc = cli_status("finetune", st); goto done; }
    st = cli_ends_with(a.out, ".bq") ? bq_model_save(m, a.out) : bq_model_save_hf(m, a.out);
    if (st) { rc = cli_status("finetune", st); goto done; }
    remove(ckpt);  /* the run is complete: nothing left to resume */
    char *qm = cli_json_quote(a.model), *qo = cli_json_quote(a.out), vbuf[32] = "null";  /* JSON has no NaN */
    if (vwin) snprintf(vbuf, sizeof vbuf, "%.6f", vloss);
    if (a.json && qm && qo)
        printf("{\"model\": %s, \"out\": %s, \"steps\": %d, \"tokens\": %zu, \"seconds\": %.3f, \"tokens_per_second\": %.1f, "
               "\"first_loss\": %.6f, \"final_loss\": %.6f, \"val_loss\": %s, \"val_windows\": %zu, \"trainable\": %zu}\n",
               qm, qo, a.o.steps, tokens, secs, tokens / secs, first, loss, vbuf, vwin, bq_trainer_params(t));
    else if (!a.json) {
        printf("%s: %d steps, %zu tokens in %.1f s (%.0f tok/s); loss %.4f -> %.4f", a.out, a.o.steps, tokens, secs,
               tokens / secs, first, loss);
        if (vwin) printf(", held-out %.4f (%zu windows)", vloss, vwin);
        printf("\n");
    }
    free(qm);
    free(qo);
done:
    bq_trainer_free(t);
    bq_qconfig_free(q);
    bq_model_free(m);
    free(ids);
    free(vids);
    free(batch);
    free(perm);
    return rc;
}
