/* Fine-tuning: the training forward against the inference engine, the backward
 * pass against finite differences (and against PyTorch where Debian's python3-torch
 * is installed: tests/train_ref.py), straight-through quantisers, LoRA, thread
 * invariance, checkpoints and the Hugging Face folder. */
#include "blockq.h"
#include "harness.h"
#include "train.h"
#include "backend.h"

static char g_dir[512];

static bq_model *load(const char *name)
{
    char p[600];
    snprintf(p, sizeof p, "%s/models/tiny/%s", g_dir, name);
    bq_model *m = NULL;
    if (bq_model_load(p, &m)) { CHECK(0, "load %s: %s", p, bq_last_error()); return NULL; }
    return m;
}

static bq_trainer *trainer(bq_model *m, const bq_qconfig *q, int ctx, int lora, const char *train, int threads)
{
    bq_train_opts o;
    bq_train_opts_default(&o);
    o.ctx = ctx;
    o.lora = lora;
    o.train = train;
    o.threads = threads;
    o.steps = 10;
    o.warmup = 2;
    o.lr = 1e-3;
    bq_trainer *t = NULL;
    if (bq_trainer_new(m, q, &o, &t)) CHECK(0, "trainer: %s", bq_last_error());
    return t;
}

static void random_ids(int32_t *ids, int n, int vocab)
{
    for (int i = 0; i < n; i++) ids[i] = (int32_t)(t_rand() % (unsigned)vocab);
}

/* Mean NLL of ids[1..n) by the inference engine. */
static double engine_loss(const bq_model *m, const int32_t *ids, int n)
{
    bq_ctx *c;
    double *lp = malloc((size_t)n * sizeof *lp), s = 0;
    if (bq_ctx_new(m, n, &c)) { free(lp); return NAN; }
    if (bq_forward_logprobs(c, ids, n, lp)) s = NAN;
    for (int i = 0; i < n - 1; i++) s -= lp[i];
    bq_ctx_free(c);
    free(lp);
    return s / (n - 1);
}

/* The training forward computes the engine's loss: float, with quantisers, with a sliding window. */
static void test_forward_matches_engine(const char *arch)
{
    bq_model *m = load(arch), *mq = load(arch);
    if (!m || !mq) { bq_model_free(m); bq_model_free(mq); return; }
    int n = 33;
    int32_t ids[33];
    random_ids(ids, n, bq_model_vocab(m));
    for (int pass = 0; pass < 3; pass++) {
        bq_qconfig *q = NULL;
        if (pass == 1) {
            bq_qconfig_new(&q);
            OK(bq_qconfig_set(q, "wq", "mxfp4"));
            OK(bq_qconfig_set(q, "aq", "mxint8"));
            OK(bq_qconfig_set(q, "kv", "int8_g16"));
            OK(bq_qconfig_set(q, "head", "bfp6_b16"));
            OK(bq_qconfig_set(q, "emb", "mxfp6_e3m2"));  /* the lookup's table (a tied head: untied, its own) */
            OK(bq_model_quantize(mq, q, 0));
        }
        if (pass == 2) m->c.sliding_window = mq->c.sliding_window = 7;
        bq_trainer *t = trainer(m, q, n - 1, 0, NULL, 2);
        double lt = NAN, le = engine_loss(pass == 1 ? mq : m, ids, n);
        if (t) OK(bq_trainer_loss(t, ids, (size_t)n, &lt));
        /* float: only the order of the sums differs; quantised: an activation on a rounding
         * boundary may round the other way, so a looser bound */
        double tol = pass == 1 ? 2e-3 : 2e-5;
        CHECK(fabs(lt - le) <= tol * fabs(le), "%s pass %d: training loss %.7f, engine %.7f", arch, pass, lt, le);
        bq_trainer_free(t);
        bq_qconfig_free(q);
    }
    bq_model_free(m);
    bq_model_free(mq);
}

/* Directional finite differences: (L(w + h u) - L(w - h u)) / 2h against g . u for
 * each kind of tensor, u a random direction the size of the tensor. */
static void fd_check(bq_trainer *t, const int32_t *ids, const char *what)
{
    double l0;
    train_zero_grads(t);
    OK(train_prepare(t));
    OK(train_window(t, ids, t->T, 1.0, &l0));
    int checked = 0;
    for (int i = 0; i < t->np; i++) {
        tparam *p = &t->p[i];
        /* a few of each kind: the first layer's, the norms, the embedding, the head */
        if (strstr(p->name, "layers.1.") && !strstr(p->name, "lora")) continue;
        float *u = malloc(p->n * sizeof *u), *w0 = malloc(p->n * sizeof *w0), *g = malloc(p->n * sizeof *g);
        memcpy(w0, p->w, p->n * sizeof *w0);
        memcpy(g, p->g, p->n * sizeof *g);
        double wn = 0, gu = 0;
        for (size_t k = 0; k < p->n; k++) wn += (double)w0[k] * w0[k];
        wn = sqrt(wn / p->n) + 1e-3;
        for (size_t k = 0; k < p->n; k++) { u[k] = t_normal(); gu += (double)g[k] * u[k]; }
        double h = 1e-2 * wn, lp, lm;
        for (size_t k = 0; k < p->n; k++) p->w[k] = w0[k] + (float)h * u[k];
        OK(bq_trainer_loss(t, ids, (size_t)t->T, &lp));
        for (size_t k = 0; k < p->n; k++) p->w[k] = w0[k] - (float)h * u[k];
        OK(bq_trainer_loss(t, ids, (size_t)t->T, &lm));
        memcpy(p->w, w0, p->n * sizeof *w0);
        double fd = (lp - lm) / (2 * h), err = fabs(fd - gu) / (fabs(gu) + fabs(fd) + 5e-3);  /* 5e-3: float32 noise of the loss over 2h (up to 5e-5 seen, on another CPU's OpenBLAS) */
        CHECK(err < 2e-2, "%s %s: finite difference %.6g, gradient %.6g (relative error %.3g)", what, p->name, fd, gu, err);
        checked++;
        free(u); free(w0); free(g);
    }
    CHECK(checked >= 3, "%s: only %d tensors checked", what, checked);
}

static void test_gradients(const char *arch)
{
    bq_model *m = load(arch);
    if (!m) return;
    int32_t ids[17];
    random_ids(ids, 17, bq_model_vocab(m));
    bq_trainer *t = trainer(m, NULL, 16, 0, NULL, 2);
    if (t) fd_check(t, ids, arch);
    bq_trainer_free(t);
    /* LoRA: adapters given a non-zero B first, so both A's and B's gradients are non-trivial */
    t = trainer(m, NULL, 16, 4, "linears,norms", 2);
    if (t) {
        for (int i = 0; i < t->nlin; i++)
            if (t->lin[i].lora)
                for (size_t k = 0; k < (size_t)t->lin[i].l->out * t->lin[i].lora; k++) t->lin[i].B[k] = 0.05f * t_normal();
        fd_check(t, ids, "lora");
    }
    bq_trainer_free(t);
    bq_model_free(m);
}

/* Straight-through weights: the trainer with a weight (and embedding) format computes
 * exactly the float trainer's gradients on the model whose weights were quantised beforehand. */
static void test_ste(void)
{
    bq_model *m = load("llama"), *mq = load("llama");
    if (!m || !mq) { bq_model_free(m); bq_model_free(mq); return; }
    bq_qconfig *q;
    bq_qconfig_new(&q);
    OK(bq_qconfig_set(q, "wq", "bfp4_b16"));
    OK(bq_qconfig_set(q, "emb", "bfp4_b16"));
    OK(bq_model_quantize(mq, q, 0));
    int32_t ids[25];
    random_ids(ids, 25, bq_model_vocab(m));
    bq_trainer *a = trainer(m, q, 24, 0, "linears", 1), *b = trainer(mq, NULL, 24, 0, "linears", 1);
    if (a && b) {
        double la, lb;
        train_zero_grads(a); train_zero_grads(b);
        OK(train_prepare(a)); OK(train_prepare(b));
        OK(train_window(a, ids, 25, 1.0, &la));
        OK(train_window(b, ids, 25, 1.0, &lb));
        CHECK(la == lb, "loss %.9g against %.9g on the pre-quantised model", la, lb);
        size_t bad = 0, all = 0;
        for (int i = 0; i < a->np; i++)
            for (size_t k = 0; k < a->p[i].n; k++, all++) bad += memcmp(&a->p[i].g[k], &b->p[i].g[k], 4) != 0;
        CHECK(all > 0 && bad == 0, "%zu of %zu gradient values differ from the pre-quantised model's", bad, all);
    }
    bq_trainer_free(a); bq_trainer_free(b);
    bq_qconfig_free(q);
    bq_model_free(m); bq_model_free(mq);
}

/* Same seed, same bits, whatever the thread count; and training lowers the loss. */
static void test_threads_and_descent(void)
{
    bq_model *m1 = load("llama"), *m3 = load("llama");
    if (!m1 || !m3) { bq_model_free(m1); bq_model_free(m3); return; }
    bq_qconfig *q;
    bq_qconfig_new(&q);
    OK(bq_qconfig_set(q, "wq", "mxfp4"));
    OK(bq_qconfig_set(q, "aq", "mxfp8_e4m3"));
    int32_t ids[2 * 33];
    random_ids(ids, 2 * 33, bq_model_vocab(m1));
    bq_train_opts o;
    bq_train_opts_default(&o);
    o.ctx = 32; o.accum = 2; o.steps = 8; o.warmup = 1; o.lr = 3e-3;
    bq_trainer *t1 = NULL, *t3 = NULL;
    o.threads = 1;
    OK(bq_trainer_new(m1, q, &o, &t1));
    o.threads = 3;
    OK(bq_trainer_new(m3, q, &o, &t3));
    if (t1 && t3) {
        double first = 0, l1 = 0, l3 = 0;
        for (int s = 0; s < 8; s++) {
            OK(bq_trainer_step(t1, ids, &l1));
            OK(bq_trainer_step(t3, ids, &l3));
            if (!s) first = l1;
        }
        CHECK(l1 == l3, "1 thread: loss %.9g, 3 threads: %.9g", l1, l3);
        size_t bad = 0;
        for (int i = 0; i < t1->np; i++) bad += memcmp(t1->p[i].w, t3->p[i].w, t1->p[i].n * 4) != 0;
        CHECK(bad == 0, "%zu tensors differ between 1 and 3 threads after 8 steps", bad);
        CHECK(l1 < first - 0.5, "8 steps on the same windows: loss %.4f -> %.4f", first, l1);
        CHECK(bq_trainer_steps_done(t1) == 8, "steps done %ld", bq_trainer_steps_done(t1));
    }
    bq_trainer_free(t1); bq_trainer_free(t3);
    bq_qconfig_free(q);
    bq_model_free(m1); bq_model_free(m3);
}

/* Checkpoints restore the run exactly; another run's checkpoint is refused; the schedule. */
static void test_checkpoint(void)
{
    bq_model *a = load("llama"), *b = load("llama");
    if (!a || !b) { bq_model_free(a); bq_model_free(b); return; }
    int32_t ids[17];
    random_ids(ids, 17, bq_model_vocab(a));
    bq_trainer *ta = trainer(a, NULL, 16, 4, NULL, 2), *tb = trainer(b, NULL, 16, 4, NULL, 2);
    const char *path = "build/test_train.ckpt";
    double la, lb;
    if (ta && tb) {
        OK(bq_trainer_step(ta, ids, &la));
        OK(bq_trainer_save_state(ta, path));
        OK(bq_trainer_load_state(tb, path));
        OK(bq_trainer_step(ta, ids, &la));
        OK(bq_trainer_step(tb, ids, &lb));
        CHECK(la == lb && bq_trainer_steps_done(tb) == 2, "resumed: loss %.9g vs %.9g, step %ld", lb, la,
              bq_trainer_steps_done(tb));
        bq_trainer *tc = trainer(b, NULL, 16, 8, NULL, 2);
        if (tc) {
            bq_status st = bq_trainer_load_state(tc, path);
            CHECK(st == BQ_ERR_ARG && strstr(bq_last_error(), "another run"), "another run's checkpoint: %s", bq_last_error());
        }
        bq_trainer_free(tc);
        CHECK(fabs(bq_trainer_lr(ta, 0) - 5e-4) < 1e-12 && fabs(bq_trainer_lr(ta, 1) - 1e-3) < 1e-12 &&
              fabs(bq_trainer_lr(ta, 9) - 1e-4) < 1e-12, "schedule: %g %g %g", bq_trainer_lr(ta, 0), bq_trainer_lr(ta, 1),
              bq_trainer_lr(ta, 9));
    }
    remove(path);
    bq_trainer_free(ta); bq_trainer_free(tb);
    bq_model_free(a); bq_model_free(b);
}

/* Merged adapters and the Hugging Face folder: the written model computes what the trainer saw. */
static void test_merge_and_save(void)
{
    bq_model *m = load("qwen2");
    if (!m) return;
    int32_t ids[17];
    random_ids(ids, 17, bq_model_vocab(m));
    bq_trainer *t = trainer(m, NULL, 16, 4, "linears,norms", 2);
    double l, lt, lafter;
    if (t) {
        for (int s = 0; s < 3; s++) OK(bq_trainer_step(t, ids, &l));
        OK(bq_trainer_loss(t, ids, 17, &lt));
        OK(bq_trainer_merge(t));
        OK(bq_trainer_loss(t, ids, 17, &lafter));
        CHECK(fabs(lafter - lt) <= 1e-5 * lt, "merging the adapters changed the loss %.7f -> %.7f", lt, lafter);
        const char *dir = "build/test_train_hf";
        char cmd[256];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        if (system(cmd)) {}
        OK(bq_model_save_hf(m, dir));
        CHECK(bq_model_save_hf(m, dir) == BQ_ERR_IO, "writing over an existing folder: %s", bq_last_error());
        bq_model *r = NULL;
        OK(bq_model_load(dir, &r));
        if (r) {
            double le = engine_loss(r, ids, 17), lm = engine_loss(m, ids, 17);
            CHECK(le == lm && fabs(le - lt) <= 2e-5 * lt, "reloaded folder: %.7f, model %.7f, trainer %.7f", le, lm, lt);
        }
        bq_model_free(r);
        if (system(cmd)) {}
    }
    bq_trainer_free(t);
    bq_model_free(m);
}

/* LoRA beside the quantiser (QLoRA's q(W) + s B A): with q(W) fixed the adapters'
 * gradients are exact, so finite differences check them even with a 4-bit weight
 * format; merged, the adapters become the linears' low-rank factors and the inference
 * engine on the quantised model (and on its .bq file, reloaded) computes the
 * trainer's loss. A Hugging Face folder cannot hold them: refused. */
static void test_lora_beside(void)
{
    bq_model *m = load("qwen2");
    if (!m) return;
    bq_qconfig *q;
    OK(bq_qconfig_new(&q));
    OK(bq_qconfig_set(q, "wq", "mxfp4"));
    int32_t ids[17];
    random_ids(ids, 17, bq_model_vocab(m));
    bq_train_opts o;
    bq_train_opts_default(&o);
    o.ctx = 16; o.lora = 4; o.lora_beside = 1; o.train = "linears"; o.threads = 2; o.steps = 10; o.warmup = 2; o.lr = 1e-3;
    bq_trainer *t = NULL;
    OK(bq_trainer_new(m, q, &o, &t));
    if (t) {
        for (int i = 0; i < t->nlin; i++)
            if (t->lin[i].lora)
                for (size_t k = 0; k < (size_t)t->lin[i].l->out * t->lin[i].lora; k++) t->lin[i].B[k] = 0.05f * t_normal();
        fd_check(t, ids, "lora beside mxfp4");
        double l, lt;
        for (int s = 0; s < 3; s++) OK(bq_trainer_step(t, ids, &l));
        OK(bq_trainer_loss(t, ids, 17, &lt));
        OK(bq_trainer_merge(t));
        CHECK(model_lorc_linear(m) != NULL, "merged beside adapters must become low-rank factors");
        const char *path = "build/test_lora_beside.bq";
        OK(bq_model_save(m, path));
        CHECK(bq_model_save_hf(m, "build/test_lora_beside_hf") == BQ_ERR_UNSUPPORTED, "a folder cannot hold the factors: %s",
              bq_last_error());
        bq_model *r = NULL;
        OK(bq_model_load(path, &r));
        OK(bq_model_quantize(m, q, 0));
        if (r) OK(bq_model_quantize(r, q, 0));
        double le = engine_loss(m, ids, 17), lr = r ? engine_loss(r, ids, 17) : NAN;
        CHECK(fabs(le - lt) <= 2e-5 * lt, "engine on the quantised model with the factors: %.7f, trainer %.7f", le, lt);
        CHECK(lr == le, "the reloaded .bq: %.9g, the model: %.9g", lr, le);
        bq_model_free(r);
        remove(path);
    }
    bq_trainer_free(t);
    bq_qconfig_free(q);
    bq_model_free(m);
}

/* Hugging Face folders of every family the trainer covers: written, read back by the
 * checkpoint loader (Hugging Face's names, GPT-2's Conv1D layout with q, k, v in c_attn),
 * the same loss bit for bit. */
static void test_hf_roundtrip(void)
{
    static const char *archs[] = {"gpt2", "opt", "qwen3"};
    for (int k = 0; k < 3; k++) {
        bq_model *m = load(archs[k]), *r = NULL;
        if (!m) continue;
        int32_t ids[17];
        random_ids(ids, 17, bq_model_vocab(m));
        char dir[64];
        snprintf(dir, sizeof dir, "build/test_train_hf_%s", archs[k]);
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        if (system(cmd)) {}
        OK(bq_model_save_hf(m, dir));
        OK(bq_model_load(dir, &r));
        double a = engine_loss(m, ids, 17), b = r ? engine_loss(r, ids, 17) : NAN;
        CHECK(a == b, "%s: the written folder's loss %.9g, the model's %.9g", archs[k], b, a);
        if (system(cmd)) {}
        bq_model_free(r);
        bq_model_free(m);
    }
}

static void test_refusals(void)
{
    char p[600];
    snprintf(p, sizeof p, "%s/models/tiny/opt-proj", g_dir);
    bq_model *m = NULL;
    bq_trainer *t = NULL;
    bq_train_opts o;
    bq_train_opts_default(&o);
    if (!bq_model_load(p, &m)) {
        CHECK(bq_trainer_new(m, NULL, &o, &t) == BQ_ERR_UNSUPPORTED && strstr(bq_last_error(), "covers pre-norm decoders"),
              "opt-proj: %s", bq_last_error());
        bq_model_free(m);
    }
    if ((m = load("llama"))) {  /* TF32 is the tensor cores' */
        o.tf32 = 1;
        CHECK(bq_trainer_new(m, NULL, &o, &t) == BQ_ERR_ARG && strstr(bq_last_error(), "need a CUDA device"), "tf32 on the CPU: %s",
              bq_last_error());
        o.tf32 = 0;
        bq_model_free(m);
    }
    m = load("llama");
    if (!m) return;
    bq_qconfig *q;
    /* q, k and v keep one quantised copy of their input: different formats for them are refused */
    bq_qconfig_new(&q);
    OK(bq_qconfig_set(q, "aq", "mxfp8_e4m3"));
    OK(bq_qconfig_add_rule(q, "layers.1.self_attn.v_proj", NULL, "mxint8"));
    CHECK(bq_trainer_new(m, q, &o, &t) == BQ_ERR_UNSUPPORTED && strstr(bq_last_error(), "layers.1.self_attn.v_proj"),
          "v with its own input format: %s", bq_last_error());
    bq_qconfig_free(q);
    o.train = "linears,bias";
    CHECK(bq_trainer_new(m, NULL, &o, &t) == BQ_ERR_ARG && strstr(bq_last_error(), "'bias'"), "roles: %s", bq_last_error());
    o.train = NULL;
    o.lora = 1000;
    CHECK(bq_trainer_new(m, NULL, &o, &t) == BQ_ERR_ARG && strstr(bq_last_error(), "LoRA rank 1000"), "rank: %s", bq_last_error());
    o.lora = 0;
    o.ctx = 8;
    OK(bq_trainer_new(m, NULL, &o, &t));
    if (t) {
        int32_t ids[9] = {1, 2, 3, 4, 5, 6, 7, 8, 1 << 20};
        double l;
        CHECK(bq_trainer_step(t, ids, &l) == BQ_ERR_ARG && strstr(bq_last_error(), "outside the vocabulary"), "ids: %s",
              bq_last_error());
        /* a NaN weight: the step fails and names it, the weights stay */
        float keep = m->L[0].q.w[0];
        m->L[0].q.w[0] = NAN;
        ids[8] = 9;
        CHECK(bq_trainer_step(t, ids, &l) == BQ_ERR_NONFINITE && strstr(bq_last_error(), "step 1"), "NaN: %s", bq_last_error());
        CHECK(bq_trainer_steps_done(t) == 0 && isnan(m->L[0].q.w[0]) && m->L[0].k.w[0] == m->L[0].k.w[0], "after NaN");
        m->L[0].q.w[0] = keep;
    }
    bq_trainer_free(t);
    bq_model_free(m);
}

/* An independent reference: the same loss and gradients from PyTorch (tests/train_ref.py). */
static void test_torch_reference(const char *arch)
{
    if (system("/usr/bin/python3 -c 'import torch, numpy' >/dev/null 2>&1")) {
        SKIP("PyTorch reference gradients: /usr/bin/python3 has no torch (Debian's python3-torch)");
        return;
    }
    bq_model *m = load(arch);
    if (!m) return;
    int32_t ids[33];
    random_ids(ids, 33, bq_model_vocab(m));
    FILE *f = fopen("build/test_train_ids.bin", "wb");
    if (f) { fwrite(ids, 4, 33, f); fclose(f); }
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/train_ref.py %s/models/tiny/%s build/test_train_ids.bin build/test_train_ref.bin",
             g_dir, arch);
    int rc = system(cmd);
    CHECK(rc == 0, "tests/train_ref.py failed (%d)", rc);
    bq_trainer *t = trainer(m, NULL, 32, 0, NULL, 2);
    void *buf = NULL;
    size_t size = 0;
    if (t && !rc && !bq_read_file("build/test_train_ref.bin", &buf, &size)) {
        double l;
        train_zero_grads(t);
        OK(train_prepare(t));
        OK(train_window(t, ids, 33, 1.0, &l));
        /* the reference file: the loss (float64), then every parameter's gradient in the trainer's order */
        size_t want = 8, compared = 0;
        for (int i = 0; i < t->np; i++) want += t->p[i].n * 4;
        CHECK(size == want, "reference file of %zu bytes, expected %zu", size, want);
        if (size == want) {
            double ref;
            memcpy(&ref, buf, 8);
            CHECK(fabs(ref - l) <= 1e-5 * fabs(ref), "%s: loss %.8f, PyTorch %.8f", arch, l, ref);
            const float *g = (const float *)((char *)buf + 8);
            for (int i = 0; i < t->np; i++) {
                tparam *p = &t->p[i];
                double err = 0, nrm = 0;
                for (size_t k = 0; k < p->n; k++) {
                    err += ((double)p->g[k] - g[k]) * ((double)p->g[k] - g[k]);
                    nrm += (double)g[k] * g[k];
                }
                /* a tensor whose true gradient is zero (k's bias: softmax ignores a constant
                 * added to a row's scores) is compared against 1e-5 a value */
                double rel = sqrt(err / (nrm + 1e-10 * (double)p->n));
                CHECK(rel <= 1e-4, "%s %s: gradient differs from PyTorch's by %.3g (relative L2)", arch, p->name, rel);
                g += p->n;
                compared++;
            }
            CHECK(compared == (size_t)t->np, "compared %zu tensors", compared);
        }
    }
    free(buf);
    bq_trainer_free(t);
    bq_model_free(m);
}


/* The CUDA backend of the training pass against the CPU's (one window; then steps).
 * Stated tolerances: the loss to 1e-5 relative and each gradient to 1e-4 relative L2
 * in float32 (cuBLAS sums in another order); with MXFP4 weights and activations the
 * quantised weights must be the CPU's bit for bit (the same master weights, the same
 * fake quantiser), the loss within 1e-3 and the gradients within 3e-2 (an activation
 * on a rounding boundary may round the other way). Three steps on each give losses
 * within 1e-4; two CUDA runs give the same bits. */
static double rel_l2(const float *a, const float *b, size_t n)
{
    double e = 0, r = 0;
    for (size_t k = 0; k < n; k++) {
        e += ((double)a[k] - b[k]) * ((double)a[k] - b[k]);
        r += (double)b[k] * b[k];
    }
    /* a tensor whose true gradient is zero (k's bias: softmax ignores a constant added to a
     * row's scores) is compared against 1e-5 a value; NaN stays NaN and fails the comparison */
    return sqrt(e / (r + 1e-10 * (double)n));
}

static bq_trainer *trainer_on(bq_model *m, const bq_qconfig *q, int ctx, int lora, int device)
{
    bq_train_opts o;
    bq_train_opts_default(&o);
    o.ctx = ctx;
    o.lora = lora;
    o.train = lora ? "linears,norms" : NULL;
    o.threads = 2;
    o.steps = 10;
    o.warmup = 2;
    o.lr = 1e-3;
    o.device = device;
    bq_trainer *t = NULL;
    if (bq_trainer_new(m, q, &o, &t)) CHECK(0, "trainer (device %d): %s", device, bq_last_error());
    return t;
}

/* One window of random ids through a CPU trainer c and a CUDA trainer g: the loss within
 * ltol (relative) and every gradient within gtol (relative L2). */
static void window_pair(bq_trainer *c, bq_trainer *g, const char *what, double ltol, double gtol)
{
    int32_t ids[33];
    random_ids(ids, 33, bq_model_vocab(c->m));
    double lc, lg;
    train_zero_grads(c); train_zero_grads(g);
    OK(train_prepare(c)); OK(train_prepare(g));
    OK(train_window(c, ids, 33, 1.0, &lc));
    OK(train_window(g, ids, 33, 1.0, &lg));
    CHECK(fabs(lc - lg) <= ltol * fabs(lc), "%s: loss CPU %.8f, CUDA %.8f", what, lc, lg);
    int compared = 0;
    for (int i = 0; i < c->np; i++) {
        float *h = malloc(c->p[i].n * sizeof *h);
        OK(train_param_get(g, i, 1, h));
        double e = rel_l2(h, c->p[i].g, c->p[i].n);
        CHECK(e <= gtol, "%s %s: CUDA gradient differs from the CPU's by %.3g (relative L2)", what, c->p[i].name, e);
        compared++;
        free(h);
    }
    CHECK(compared == g->np && compared > 0, "%s: %d tensors compared", what, compared);
}

static void cuda_window(const char *arch, const char *fmt, int lora, const char *attn)
{
    bq_model *mc = load(arch), *mg = load(arch);
    bq_qconfig *q = NULL;
    if (fmt) {
        bq_qconfig_new(&q);
        OK(bq_qconfig_set(q, "wq", fmt));
        OK(bq_qconfig_set(q, "aq", fmt));
        if (attn) OK(bq_qconfig_set(q, "attn", attn));
    }
    bq_trainer *c = mc ? trainer_on(mc, q, 32, lora, 0) : NULL, *g = mg ? trainer_on(mg, q, 32, lora, 1) : NULL;
    if (c && g) {
        char what[96];
        snprintf(what, sizeof what, "%s %s%s%s%s", arch, fmt ? fmt : "float", lora ? " LoRA" : "", attn ? " attn " : "", attn ? attn : "");
        if (lora)  /* non-zero B on both, so every adapter gradient is non-trivial */
            for (int i = 0; i < c->nlin; i++)
                if (c->lin[i].lora) {
                    size_t nb = (size_t)c->lin[i].l->out * c->lin[i].lora;
                    for (size_t k = 0; k < nb; k++) c->lin[i].B[k] = 0.05f * t_normal();
                    OK(g->op->put(g->be, g->lin[i].B, c->lin[i].B, nb));
                }
        window_pair(c, g, what, fmt ? 1e-3 : 1e-5, fmt ? 3e-2 : 1e-4);
        if (fmt && !lora) {  /* (with adapters, W + s B A is itself a float32 product of either side) */
            size_t bad = 0, all = 0;
            for (int i = 0; i < c->nlin; i++) {
                size_t n = (size_t)c->lin[i].l->out * c->lin[i].l->in;
                float *h = malloc(n * sizeof *h);
                OK(g->op->get(g->be, h, g->lin[i].wq, n));
                for (size_t k = 0; k < n; k++, all++) bad += memcmp(&h[k], &c->lin[i].wq[k], 4) != 0;
                free(h);
            }
            CHECK(all && !bad, "%s: %zu of %zu quantised weights differ between the CPU and CUDA", what, bad, all);
        }
    }
    bq_trainer_free(c); bq_trainer_free(g);
    bq_qconfig_free(q);
    bq_model_free(mc); bq_model_free(mg);
}

static void cuda_steps(void)
{
    bq_model *m[3] = {load("llama"), load("llama"), load("llama")};
    bq_trainer *t[3];
    int32_t ids[2 * 25];
    random_ids(ids, 50, m[0] ? bq_model_vocab(m[0]) : 2);
    double loss[3][3];
    for (int k = 0; k < 3; k++) {
        t[k] = m[k] ? trainer_on(m[k], NULL, 24, 0, k ? 1 : 0) : NULL;
        for (int s = 0; s < 3 && t[k]; s++) OK(bq_trainer_step(t[k], ids + 25 * (s % 2), &loss[k][s]));
    }
    if (t[0] && t[1] && t[2]) {
        for (int s = 0; s < 3; s++)
            CHECK(fabs(loss[0][s] - loss[1][s]) <= 1e-4 * fabs(loss[0][s]), "step %d: loss CPU %.8f, CUDA %.8f", s + 1, loss[0][s],
                  loss[1][s]);
        CHECK(loss[1][2] < loss[1][0], "CUDA training does not lower the loss (%.6f -> %.6f)", loss[1][0], loss[1][2]);
        /* the model's weights follow the device's after each step; two CUDA runs agree bit for bit */
        const linear *l0 = model_linear(m[0], 0, R_Q);
        size_t bad = 0, all = (size_t)l0->out * l0->in;
        const float *w0 = l0->w, *w1 = model_linear(m[1], 0, R_Q)->w, *w2 = model_linear(m[2], 0, R_Q)->w;
        for (size_t k = 0; w1 && w2 && k < all; k++) bad += memcmp(&w1[k], &w2[k], 4) != 0;
        CHECK(w1 && w2 && all && !bad && !memcmp(loss[1], loss[2], sizeof loss[1]),
              "two CUDA runs differ (%zu of %zu weights; losses %.9g %.9g)", bad, all, loss[1][2], loss[2][2]);
        double e = w0 && w1 ? rel_l2(w1, w0, all) : NAN;
        CHECK(e <= 1e-4, "weights after 3 steps: CUDA against CPU %.3g (relative L2)", e);
    }
    for (int k = 0; k < 3; k++) { bq_trainer_free(t[k]); bq_model_free(m[k]); }
}

/* CUDA checkpoints and merging: a run saved and resumed on the device continues bit for
 * bit; adapters merged there (and downloaded into the model) give the CPU's inference
 * engine the loss the device trainer computed (to 1e-3: another product order, MXFP4
 * activations). */
static void cuda_checkpoint_and_merge(void)
{
    bq_model *a = load("llama"), *b = load("llama");
    bq_qconfig *q;
    bq_qconfig_new(&q);
    OK(bq_qconfig_set(q, "wq", "mxfp4"));
    OK(bq_qconfig_set(q, "aq", "mxfp4"));
    bq_trainer *ta = a ? trainer_on(a, q, 16, 4, 1) : NULL, *tb = b ? trainer_on(b, q, 16, 4, 1) : NULL;
    if (ta && tb) {
        int32_t ids[17];
        random_ids(ids, 17, bq_model_vocab(a));
        const char *path = "build/test_train_cuda.ckpt";
        double la, lb, lt;
        OK(bq_trainer_step(ta, ids, &la));
        OK(bq_trainer_save_state(ta, path));
        OK(bq_trainer_load_state(tb, path));
        OK(bq_trainer_step(ta, ids, &la));
        OK(bq_trainer_step(tb, ids, &lb));
        CHECK(la == lb && bq_trainer_steps_done(tb) == 2, "CUDA resumed: loss %.9g vs %.9g", lb, la);
        remove(path);
        OK(bq_trainer_loss(ta, ids, 17, &lt));
        OK(bq_trainer_merge(ta));
        bq_trainer_free(ta);
        ta = NULL;
        OK(bq_model_quantize(a, q, 0));
        double le = engine_loss(a, ids, 17);
        CHECK(fabs(le - lt) <= 1e-3 * lt, "merged on CUDA: the CPU engine's loss %.7f, the CUDA trainer's %.7f", le, lt);
    }
    bq_trainer_free(ta); bq_trainer_free(tb);
    bq_qconfig_free(q);
    bq_model_free(a); bq_model_free(b);
}

/* Attention operands' quantisers (attn): the training loss is the inference engine's with
 * the same format (the placement: q and k along head_dim, v along the tokens, P along its
 * rows); with fp32 as the format (the identity) the gradients are the float trainer's to
 * 1e-5 relative L2 (the quantised path's own products and transposes); with BFP4/BFP8 they are
 * not (the format acts); blocks longer than head_dim are refused, as by the engine. */
static void test_attn(void)
{
    static const char *fmts[] = {"bfp4_b16", "bfp8_b16", "fp32"};  /* head_dim 16 */
    int32_t ids[33];
    bq_model *f = load("mistral");  /* grouped-query attention and a sliding window */
    if (!f) return;
    random_ids(ids, 33, bq_model_vocab(f));
    bq_trainer *tf = trainer(f, NULL, 32, 0, NULL, 2);
    double l;
    if (tf) { train_zero_grads(tf); OK(train_prepare(tf)); OK(train_window(tf, ids, 33, 1.0, &l)); }
    for (int k = 0; k < 3 && tf; k++) {
        bq_model *m = load("mistral"), *mq = load("mistral");
        bq_qconfig *q;
        bq_qconfig_new(&q);
        OK(bq_qconfig_set(q, "attn", fmts[k]));
        bq_trainer *t = m ? trainer(m, q, 32, 0, NULL, 2) : NULL;
        if (t && mq) {
            double lt, le;
            OK(bq_trainer_loss(t, ids, 33, &lt));
            OK(bq_model_quantize(mq, q, 0));
            le = engine_loss(mq, ids, 33);
            CHECK(fabs(lt - le) <= 2e-3 * fabs(le), "attn %s: training loss %.7f, engine %.7f", fmts[k], lt, le);
            train_zero_grads(t);
            OK(train_prepare(t));
            OK(train_window(t, ids, 33, 1.0, &lt));
            double worst = 0;
            for (int i = 0; i < t->np; i++) {
                double e = rel_l2(t->p[i].g, tf->p[i].g, t->p[i].n);
                worst = e > worst || e != e ? e : worst;
            }
            if (k == 2) CHECK(worst <= 1e-5, "attn fp32: gradients differ from float by %.3g (relative L2)", worst);
            else CHECK(worst > 1e-4, "attn %s: gradients equal float's (%.3g): the format does not act", fmts[k], worst);
        }
        bq_trainer_free(t);
        bq_qconfig_free(q);
        bq_model_free(m); bq_model_free(mq);
    }
    bq_trainer_free(tf);
    bq_qconfig *q;
    bq_qconfig_new(&q);
    OK(bq_qconfig_set(q, "attn", "mxfp4"));
    bq_train_opts o;
    bq_train_opts_default(&o);
    CHECK(bq_trainer_new(f, q, &o, &tf) == BQ_ERR_SHAPE && strstr(bq_last_error(), "exceed head_dim 16"), "attn mxfp4: %s",
          bq_last_error());
    bq_qconfig_free(q);
    bq_model_free(f);
}

/* TF32 products (tf32): the loss within 1e-3 of the CPU's float32
 * and every gradient within 2e-2 relative L2 (10-bit mantissas in the products). */
static void cuda_tf32(void)
{
    bq_model *mc = load("llama"), *mg = load("llama");
    bq_train_opts o;
    bq_train_opts_default(&o);
    o.ctx = 32; o.threads = 2;
    bq_trainer *c = NULL, *g = NULL;
    if (mc) OK(bq_trainer_new(mc, NULL, &o, &c));
    o.tf32 = 1; o.device = 1;
    if (mg) OK(bq_trainer_new(mg, NULL, &o, &g));
    if (c && g) window_pair(c, g, "tf32", 1e-3, 2e-2);
    bq_trainer_free(c); bq_trainer_free(g);
    bq_model_free(mc); bq_model_free(mg);
}

static void test_cuda(void)
{
    char why[256];
    if (!bq_device_count(why, sizeof why)) {
        SKIP("CUDA training against the CPU: %s", why);
        return;
    }
    cuda_window("llama", NULL, 0, NULL);
    cuda_window("qwen2", NULL, 0, NULL);
    cuda_window("mistral", NULL, 0, NULL);
    cuda_window("qwen3", NULL, 0, NULL);
    cuda_window("gpt2", NULL, 0, NULL);
    cuda_window("opt", "mxfp4", 0, NULL);
    cuda_window("llama", NULL, 4, NULL);
    cuda_window("llama", "mxfp4", 0, NULL);
    cuda_window("llama", "mxfp4", 4, NULL);
    cuda_window("mistral", "mxfp4", 0, "bfp4_b16");  /* attention operands too (and GQA) */
    cuda_steps();
    cuda_checkpoint_and_merge();
    cuda_tf32();
}

int main(void)
{
    const char *sh = shared_dir();
    if (!sh) { SKIP("no ../shared: fine-tuning tests need the tiny checkpoints"); return 0; }
    snprintf(g_dir, sizeof g_dir, "%s", sh);
    test_forward_matches_engine("llama");
    test_forward_matches_engine("qwen2");
    test_forward_matches_engine("qwen3");
    test_forward_matches_engine("gpt2");
    test_forward_matches_engine("opt");
    test_gradients("llama");
    test_gradients("qwen2");
    test_gradients("qwen3");
    test_gradients("gpt2");  /* OPT's ReLU kinks defeat central differences: PyTorch checks it (below) */
    test_ste();
    test_threads_and_descent();
    test_checkpoint();
    test_merge_and_save();
    test_hf_roundtrip();
    test_lora_beside();
    test_refusals();
    test_torch_reference("llama");
    test_torch_reference("opt");  /* LayerNorm, learned positions, ReLU, biases */
    test_attn();
    test_cuda();
    return test_summary("test_train");
}
