/* Quantised inference: fp32 everywhere changes nothing, each role touches only
 * its tensors, TOML rules and their errors, and W4A4 MXFP4 (round away) agrees
 * with a naive reference forward pass written here from the definitions. */
#include "blockq.h"
#include "harness.h"
#include "model.h"
#include "quant.h"
#include "backend.h"
#include <math.h>
#include <unistd.h>

static const char *DEFAULT = "models/llama-19m-en";

static bq_model *load(const char *dir)
{
    bq_model *m = NULL;
    if (bq_model_load(dir, &m)) { CHECK(0, "load %s: %s", dir, bq_last_error()); return NULL; }
    return m;
}

static bq_status quantize(bq_model *m, const char *roles[][2], int n, const char *toml, int strict)
{
    bq_qconfig *q;
    bq_qconfig_new(&q);
    bq_status st = BQ_OK;
    for (int i = 0; i < n && !st; i++) st = bq_qconfig_set(q, roles[i][0], roles[i][1]);
    if (!st && toml) {
        FILE *f = fopen(t_tmp("bq_test_rules.toml"), "w");
        fputs(toml, f);
        fclose(f);
        st = bq_qconfig_load(q, t_tmp("bq_test_rules.toml"));
    }
    if (!st) st = bq_model_quantize(m, q, strict);
    bq_qconfig_free(q);
    return st;
}

static int same(const float *a, const float *b, size_t n) { return !memcmp(a, b, n * sizeof *a); }

static void qdq_copy(const char *fmt, const float *x, float *y, size_t r, size_t c, bq_round rd)
{
    bq_format *f;
    bq_format_parse(fmt, &f);
    bq_qopts o = {rd, 0, 1};
    bq_qdq(f, x, y, r, c, &o);
    bq_format_free(f);
}

static size_t lsize(const linear *l) { return (size_t)l->in * l->out; }

/* ---- 1. fp32 everywhere reproduces the float32 logits bit for bit ---- */
static void test_fp32_identity(void)
{
    bq_model *a = load(DEFAULT), *b = load(DEFAULT);
    if (!a || !b) return;
    const char *roles[][2] = {{"wq", "fp32"}, {"aq", "fp32"}, {"attn", "fp32"}, {"kv", "fp32"}, {"head", "fp32"}, {"emb", "fp32"}};
    CHECK(quantize(b, roles, 6, NULL, 1) == BQ_OK, "fp32 config: %s", bq_last_error());
    int32_t ids[40];
    for (int i = 0; i < 40; i++) ids[i] = (i * 577 + 3) % 8192;
    int V = bq_model_vocab(a);
    float *la = malloc((size_t)40 * V * 4), *lb = malloc((size_t)40 * V * 4);
    bq_model_logits(a, ids, 40, la);
    bq_model_logits(b, ids, 40, lb);
    CHECK(same(la, lb, (size_t)40 * V), "fp32 in every role changed the logits");
    free(la);
    free(lb);
    bq_model_free(a);
    bq_model_free(b);
}

/* ---- 2. each role applies only where it should ---- */
static void test_roles(void)
{
    bq_model *ref = load(DEFAULT), *m = load(DEFAULT);
    if (!ref || !m) return;
    const char *wq[][2] = {{"wq", "bfp4_b16"}};
    CHECK(quantize(m, wq, 1, NULL, 1) == BQ_OK, "wq: %s", bq_last_error());
    int ok_w = 1, ok_a = 1;
    for (int i = 0; i < m->c.layers; i++) {
        linear *ls[] = {&m->L[i].q, &m->L[i].k, &m->L[i].v, &m->L[i].o, &m->L[i].gate, &m->L[i].up, &m->L[i].down};
        linear *rs[] = {&ref->L[i].q, &ref->L[i].k, &ref->L[i].v, &ref->L[i].o, &ref->L[i].gate, &ref->L[i].up, &ref->L[i].down};
        for (int j = 0; j < 7; j++) {
            float *want = malloc(lsize(rs[j]) * 4);
            qdq_copy("bfp4_b16", rs[j]->w, want, (size_t)rs[j]->out, (size_t)rs[j]->in, BQ_ROUND_RNE);
            ok_w &= same(ls[j]->w, want, lsize(rs[j]));
            ok_a &= ls[j]->aq == NULL;
            free(want);
        }
    }
    CHECK(ok_w, "--wq: a block weight is not bfp4_b16 of the original");
    CHECK(ok_a, "--wq armed an activation quantiser");
    CHECK(same(m->head.w, ref->head.w, lsize(&ref->head)) && !m->head.aq, "--wq touched the LM head");
    CHECK(same(m->tok_emb, ref->tok_emb, (size_t)m->c.vocab * m->c.embed_dim), "--wq touched the embedding");
    CHECK(!m->attn_q && !m->kv_q, "--wq armed attention/KV quantisers");
    bq_model_free(m);

    m = load(DEFAULT);
    const char *aq[][2] = {{"aq", "mxfp8_e4m3"}};
    quantize(m, aq, 1, NULL, 1);
    int all = 1;
    for (int i = 0; i < m->c.layers; i++) all &= m->L[i].q.aq && m->L[i].down.aq && m->L[i].gate.aq;
    CHECK(all && !m->head.aq, "--aq: block linears armed %d, head armed %d", all, m->head.aq != NULL);
    CHECK(same(m->L[0].q.w, ref->L[0].q.w, lsize(&ref->L[0].q)), "--aq changed a weight");
    bq_model_free(m);

    m = load(DEFAULT);
    const char *hd[][2] = {{"head", "bfp8_b16"}, {"emb", "bfp4_b16"}};
    quantize(m, hd, 2, NULL, 1);
    float *want = malloc(lsize(&ref->head) * 4);
    qdq_copy("bfp8_b16", ref->head.w, want, (size_t)ref->head.out, (size_t)ref->head.in, BQ_ROUND_RNE);
    CHECK(same(m->head.w, want, lsize(&ref->head)) && m->head.aq, "--head: LM head weight/input not quantised");
    qdq_copy("bfp4_b16", ref->tok_emb, want, (size_t)m->c.vocab, (size_t)m->c.embed_dim, BQ_ROUND_RNE);
    CHECK(same(m->tok_emb, want, (size_t)m->c.vocab * m->c.embed_dim), "--emb: embedding not quantised");
    CHECK(same(m->L[3].up.w, ref->L[3].up.w, lsize(&ref->L[3].up)) && !m->L[3].up.aq, "--head/--emb touched a block");
    free(want);
    bq_model_free(m);

    /* TOML rules: later rules win; a rule sets only what it names */
    m = load(DEFAULT);
    const char *toml = "# per-layer rules\nround = \"rne\"\ndefault = { w = \"bfp6_b16\" }\n"
                       "\"layers.*.mlp.down_proj\" = { w = \"bfp8_b16\", a = \"bfp8_b16\" }\n"
                       "\"layers.7.mlp.down_proj\" = { w = \"fp32\" }  # later: wins for layer 7\n";
    CHECK(quantize(m, NULL, 0, toml, 1) == BQ_OK, "toml rules: %s", bq_last_error());
    float *w8 = malloc(lsize(&ref->L[2].down) * 4);
    qdq_copy("bfp8_b16", ref->L[2].down.w, w8, (size_t)ref->L[2].down.out, (size_t)ref->L[2].down.in, BQ_ROUND_RNE);
    CHECK(same(m->L[2].down.w, w8, lsize(&ref->L[2].down)) && m->L[2].down.aq, "layer 2 down_proj is not bfp8_b16 W/A");
    CHECK(same(m->L[7].down.w, ref->L[7].down.w, lsize(&ref->L[7].down)) && m->L[7].down.aq,
          "layer 7 down_proj: the later fp32 weight rule did not win, or its activation rule was lost");
    qdq_copy("bfp6_b16", ref->L[2].up.w, w8, (size_t)ref->L[2].up.out, (size_t)ref->L[2].up.in, BQ_ROUND_RNE);
    CHECK(same(m->L[2].up.w, w8, lsize(&ref->L[2].up)) && !m->L[2].up.aq, "default rule not applied to up_proj");
    free(w8);
    bq_model_free(m);
    bq_model_free(ref);
}

/* ---- 3. bad configs ---- */

static void warn_into(void *arg, const char *msg) { snprintf(arg, 512, "%s", msg); }
static void test_bad_configs(void)
{
    struct { const char *toml, *msg; bq_status st; } cases[] = {
        {"default = { w = \"bfp9_b0\" }\n", "bq_test_rules.toml:1", BQ_ERR_FORMAT},
        {"\n\n\"x\" = { w = \"bfp6_b16\"\n", "bq_test_rules.toml:3", BQ_ERR_PARSE},
        {"[rules]\n", "tables", BQ_ERR_PARSE},
        {"round = \"up\"\n", "round must be", BQ_ERR_PARSE},
        {"a = 1\na = 2\n", "duplicate key", BQ_ERR_PARSE},
        {"\"x\" = { w = 1.5 }\n", "floats", BQ_ERR_PARSE},
        {"\"x\" = { z = \"fp32\" }\n", "only w = ", BQ_ERR_PARSE},
        {"\"x\" = \"unterminated\n", "unterminated", BQ_ERR_PARSE},
        {"\"layers.*.nothing\" = { w = \"bfp8_b16\" }\n", "matches no tensor", BQ_ERR_ARG},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bq_model *m = load(DEFAULT);
        if (!m) return;
        bq_status st = quantize(m, NULL, 0, cases[i].toml, 1);
        CHECK(st == cases[i].st && strstr(bq_last_error(), cases[i].msg), "config %zu: status %s, message '%s' (want '%s')", i,
              bq_status_name(st), bq_last_error(), cases[i].msg);
        bq_model_free(m);
    }
    /* a 2 MiB string */
    {
        size_t n = 2u << 20;
        char *big = malloc(n + 32);
        memcpy(big, "x = \"", 5);
        memset(big + 5, 'a', n);
        memcpy(big + 5 + n, "\"\n", 3);
        tdoc d;
        CHECK(toml_parse(big, n + 7, "big.toml", &d) == BQ_ERR_PARSE && strstr(bq_last_error(), "too long"),
              "huge TOML string: %s", bq_last_error());
        free(big);
    }
    /* without strict, a pattern that matches nothing is only a warning, through the callback */
    bq_model *m = load(DEFAULT);
    CHECK(quantize(m, NULL, 0, "\"nope.*\" = { w = \"bfp8_b16\" }\n", 0) == BQ_OK, "non-strict unmatched pattern failed");
    bq_model_free(m);
    {
        char seen[512] = "";
        bq_qconfig *q;
        OK(bq_qconfig_new(&q));
        const char *rule = "\"nope.*\" = { w = \"bfp8_b16\" }\n";
        OK(qconfig_parse(q, rule, strlen(rule), "w.toml"));
        bq_qconfig_set_warn(q, warn_into, seen);
        m = load(DEFAULT);
        OK(bq_model_quantize(m, q, 0));
        CHECK(strstr(seen, "w.toml:1: pattern 'nope.*' matches no tensor") != NULL, "warning callback got '%s'", seen);
        bq_model_free(m);
        bq_qconfig_free(q);
    }
    /* a block wider than the reduction dimension is refused with a reason */
    m = load(DEFAULT);
    const char *wide[][2] = {{"attn", "bfp8_b128"}};
    bq_status st = quantize(m, wide, 1, NULL, 1);
    CHECK(st == BQ_ERR_SHAPE && strstr(bq_last_error(), "head_dim"), "attn block > head_dim: %s", bq_last_error());
    bq_model_free(m);
    bq_qconfig *q;
    bq_qconfig_new(&q);
    CHECK(bq_qconfig_set(q, "wq", "mxfp3") == BQ_ERR_FORMAT && strstr(bq_last_error(), "wq: "), "bad wq accepted: %s", bq_last_error());
    CHECK(bq_qconfig_set(q, "xq", "mxfp4") == BQ_ERR_ARG, "unknown role accepted");
    bq_qconfig_free(q);
}

/* ---- 4. a naive reference forward (LLaMA family) with quantised W and A ---- */
static void naive_linear(const linear *l, const float *x, float *y, int n, const char *fmt, bq_round rd)
{
    float *xq = malloc((size_t)n * l->in * 4), *wq = malloc(lsize(l) * 4);
    qdq_copy(fmt, x, xq, (size_t)n, (size_t)l->in, rd);
    qdq_copy(fmt, l->w, wq, (size_t)l->out, (size_t)l->in, rd);
    for (int t = 0; t < n; t++)
        for (int o = 0; o < l->out; o++) {
            double s = l->b ? l->b[o] : 0.0;
            for (int i = 0; i < l->in; i++) s += (double)xq[(size_t)t * l->in + i] * wq[(size_t)o * l->in + i];
            y[(size_t)t * l->out + o] = (float)s;
        }
    free(xq);
    free(wq);
}

static void naive_rms(const float *x, const float *w, float *y, int n, int d, float eps)
{
    for (int t = 0; t < n; t++) {
        double ss = 0;
        for (int i = 0; i < d; i++) ss += (double)x[t * d + i] * x[t * d + i];
        double r = 1.0 / sqrt(ss / d + eps);
        for (int i = 0; i < d; i++) y[t * d + i] = (float)(w[i] * (x[t * d + i] * r));
    }
}

static void naive_forward(const bq_model *m, const int32_t *ids, int n, const char *fmt, bq_round rd, float *logits)
{
    const bq_config *c = &m->c;
    int H = c->hidden, d = c->head_dim, qd = c->heads * d, kvd = c->kv_heads * d, I = c->inter;
    float *x = malloc((size_t)n * H * 4), *h = malloc((size_t)n * H * 4), *q = malloc((size_t)n * qd * 4);
    float *k = malloc((size_t)n * kvd * 4), *v = malloc((size_t)n * kvd * 4), *a = malloc((size_t)n * qd * 4);
    float *g = malloc((size_t)n * I * 4), *u = malloc((size_t)n * I * 4), *o = malloc((size_t)n * H * 4);
    for (int t = 0; t < n; t++) memcpy(x + (size_t)t * H, m->tok_emb + (size_t)ids[t] * H, (size_t)H * 4);
    for (int l = 0; l < c->layers; l++) {
        const layer_w *L = &m->L[l];
        naive_rms(x, L->ln1.w, h, n, H, c->norm_eps);
        naive_linear(&L->q, h, q, n, fmt, rd);
        naive_linear(&L->k, h, k, n, fmt, rd);
        naive_linear(&L->v, h, v, n, fmt, rd);
        for (int t = 0; t < n; t++)  /* rotary: pairs (i, i + d/2) */
            for (int i = 0; i < d / 2; i++) {
                double ang = t / pow(c->rope_theta, 2.0 * i / d);
                float cs = (float)cos(ang), sn = (float)sin(ang);
                for (int hh = 0; hh < c->heads + c->kv_heads; hh++) {
                    float *p = hh < c->heads ? q + (size_t)t * qd + hh * d : k + (size_t)t * kvd + (hh - c->heads) * d;
                    float x0 = p[i], x1 = p[i + d / 2];
                    p[i] = x0 * cs - x1 * sn;
                    p[i + d / 2] = x1 * cs + x0 * sn;
                }
            }
        for (int hh = 0; hh < c->heads; hh++) {
            int kh = hh / (c->heads / c->kv_heads);
            for (int t = 0; t < n; t++) {
                double s[256], mx = -1e300, sum = 0;
                for (int j = 0; j <= t; j++) {
                    double dot = 0;
                    for (int i = 0; i < d; i++) dot += (double)q[(size_t)t * qd + hh * d + i] * k[(size_t)j * kvd + kh * d + i];
                    s[j] = dot / sqrt((double)d);
                    mx = s[j] > mx ? s[j] : mx;
                }
                for (int j = 0; j <= t; j++) sum += (s[j] = exp(s[j] - mx));
                for (int i = 0; i < d; i++) {
                    double acc = 0;
                    for (int j = 0; j <= t; j++) acc += s[j] / sum * v[(size_t)j * kvd + kh * d + i];
                    a[(size_t)t * qd + hh * d + i] = (float)acc;
                }
            }
        }
        naive_linear(&L->o, a, o, n, fmt, rd);
        for (size_t i = 0; i < (size_t)n * H; i++) x[i] += o[i];
        naive_rms(x, L->ln2.w, h, n, H, c->norm_eps);
        naive_linear(&L->gate, h, g, n, fmt, rd);
        naive_linear(&L->up, h, u, n, fmt, rd);
        for (size_t i = 0; i < (size_t)n * I; i++) u[i] *= g[i] / (1.0f + expf(-g[i]));
        naive_linear(&L->down, u, o, n, fmt, rd);
        for (size_t i = 0; i < (size_t)n * H; i++) x[i] += o[i];
    }
    naive_rms(x, m->final_ln.w, h, n, H, c->norm_eps);
    naive_linear(&m->head, h, logits, n, "fp32", rd);
    free(x); free(h); free(q); free(k); free(v); free(a); free(g); free(u); free(o);
}

static void test_reference(void)
{
    const char *sh = shared_dir();
    const char *dirs[3] = {DEFAULT, NULL, NULL};
    char d1[512], d2[512];
    if (sh) {
        snprintf(d1, sizeof d1, "%s/models/tiny/llama", sh);
        snprintf(d2, sizeof d2, "%s/models/tiny/mistral", sh);
        dirs[1] = d1;
        dirs[2] = d2;
    } else SKIP("../shared not found: the reference check runs on the default model only");
    for (int k = 0; k < 3 && dirs[k]; k++) {
        bq_model *ref = load(dirs[k]), *m = load(dirs[k]);
        if (!ref || !m) return;
        const char *roles[][2] = {{"wq", "mxfp4"}, {"aq", "mxfp4"}};
        bq_qconfig *q;
        bq_qconfig_new(&q);
        for (int i = 0; i < 2; i++) bq_qconfig_set(q, roles[i][0], roles[i][1]);
        bq_qconfig_set_round(q, BQ_ROUND_AWAY, 0);
        CHECK(bq_model_quantize(m, q, 1) == BQ_OK, "%s: %s", dirs[k], bq_last_error());
        bq_qconfig_free(q);
        int n = 24, V = m->c.vocab;
        int32_t ids[24];
        for (int i = 0; i < n; i++) ids[i] = (i * 7919 + 11) % V;
        float *got = malloc((size_t)n * V * 4), *want = malloc((size_t)n * V * 4), *fl = malloc((size_t)n * V * 4);
        bq_model_logits(m, ids, n, got);
        naive_forward(ref, ids, n, "mxfp4", BQ_ROUND_AWAY, want);
        bq_model_logits(ref, ids, n, fl);
        double md = 0, mr = 0, mq = 0;
        for (size_t i = 0; i < (size_t)n * V; i++) {
            md = t_max(md, fabs((double)got[i] - want[i]));
            mr = t_max(mr, fabs((double)want[i]));
            mq = t_max(mq, fabs((double)fl[i] - want[i]));
        }
        printf("  %-40s W4A4 mxfp4/away vs naive reference: rel %.2e (float32 differs by %.2e)\n", dirs[k], md / mr, mq / mr);
        CHECK(md / mr < 1e-4, "%s: quantised engine vs naive reference differ by %.3g", dirs[k], md / mr);
        CHECK(mq / mr > 1e-3, "%s: quantisation had no visible effect (%.3g)", dirs[k], mq / mr);
        free(got); free(want); free(fl);
        bq_model_free(m);
        bq_model_free(ref);
    }
}

/* ---- 5. post-training: clipping, calibration, KL divergence ---- */

static double wsse(const float *a, const float *b, size_t rows, size_t cols, const double *imp)
{
    double e = 0;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) {
            double d = (double)a[r * cols + c] - b[r * cols + c];
            e += d * d * (imp ? imp[c] : 1.0);
        }
    return e;
}

static void test_ptq(void)
{
    /* clipping: never worse than round-to-nearest on the (weighted) squared error; the
     * clamped weights pack to exactly what they fake-quantise to */
    const char *fmts[] = {"q4_0", "int4_b32_sfp16", "nvfp4", "int4_g128", "mxfp4", "bfp4_b16", "int8_row", "int4_asym_g128"};
    const size_t rows = 24, cols = 256, n = rows * cols;
    float *w = malloc(n * 4), *rtn = malloc(n * 4), *cl = malloc(n * 4), *again = malloc(n * 4);
    double *imp = malloc(cols * sizeof *imp);
    for (size_t i = 0; i < n; i++) w[i] = t_normal() * (i % 97 == 0 ? 6.0f : 1.0f);  /* outliers, as in real weights */
    for (size_t c = 0; c < cols; c++) imp[c] = 0.1 + (double)t_unif() * (c % 16 == 0 ? 50.0 : 1.0);
    for (size_t k = 0; k < sizeof fmts / sizeof *fmts; k++)
        for (int weighted = 0; weighted < 2; weighted++) {
            bq_format *f;
            OK(bq_format_parse(fmts[k], &f));
            OK(bq_qdq(f, w, rtn, rows, cols, NULL));
            memcpy(cl, w, n * 4);
            OK(ptq_clip(f, cl, (int)rows, (int)cols, weighted ? imp : NULL, NULL));
            size_t ps = bq_packed_size(f, rows, cols);
            uint8_t *pk = malloc(ps);
            OK(bq_pack(f, cl, rows, cols, NULL, pk, ps));
            OK(bq_unpack(f, pk, ps, rows, cols, again));
            OK(bq_qdq(f, cl, cl, rows, cols, NULL));
            size_t diff = 0;  /* as numbers: fake quantisation keeps the sign of a zero, codes do not */
            for (size_t i = 0; i < n; i++) diff += !(again[i] == cl[i]);
            CHECK(diff == 0, "%s: the clamped weights pack to %zu other values than they fake-quantise to", fmts[k], diff);
            const double *iw = weighted ? imp : NULL;
            double er = wsse(rtn, w, rows, cols, iw), ec = wsse(cl, w, rows, cols, iw);
            CHECK(ec <= er, "%s clip (weighted %d): error %.6g above round-to-nearest's %.6g", fmts[k], weighted, ec, er);
            if (k == 0 && weighted) printf("  clip %-10s weighted squared error %.4g vs round-to-nearest %.4g\n", fmts[k], ec, er);
            free(pk);
            bq_format_free(f);
        }
    free(w); free(rtn); free(cl); free(again); free(imp);

    /* llama.cpp's rules where 1/d overflows (a block of subnormals, zeros among them):
     * saturated codes, finite values, no undefined conversion (the fuzzer found this) */
    {
        float b[64] = {1e-40f, -3e-41f, 0.0f, 2e-42f}, y[64];
        b[40] = -1e-39f;
        const char *gg[] = {"q4_0", "q5_0", "q8_0"};
        for (int k = 0; k < 3; k++) {
            bq_format *f;
            OK(bq_format_parse(gg[k], &f));
            OK(bq_qdq(f, b, y, 1, 64, NULL));
            int fin = 1;
            for (int i = 0; i < 64; i++) fin &= isfinite(y[i]) && fabsf(y[i]) <= 2e-39f;
            CHECK(fin, "%s: a subnormal block quantised to non-finite or larger values", gg[k]);
            bq_format_free(f);
        }
    }

    /* calibration: a mean square per input channel of every linear, from the float model */
    bq_model *m = load(DEFAULT), *qm = load(DEFAULT);
    if (!m || !qm) { bq_model_free(m); bq_model_free(qm); return; }
    int32_t ids[256];
    for (int i = 0; i < 256; i++) ids[i] = (int32_t)(t_rand() % (unsigned)bq_model_vocab(m));
    bq_qconfig *q;
    OK(bq_qconfig_new(&q));
    OK(bq_qconfig_set(q, "wq", "q4_0"));
    OK(bq_qconfig_set(q, "ptq", "clip"));
    CHECK(bq_qconfig_set(q, "ptq", "hqq") == BQ_ERR_ARG, "an unknown algorithm must be refused by name");
    CHECK(bq_qconfig_calibrate(q, m, ids, 256, 64, 5) == BQ_ERR_ARG && strstr(bq_last_error(), "fewer than the 5 asked"),
          "calibration text shorter than asked must be refused: %s", bq_last_error());
    OK(bq_qconfig_calibrate(q, m, ids, 256, 64, 3));
    const calib_stats *cs = q->calib;
    int good = cs && cs->tokens == 192;
    for (int k = 0; cs && k < cs->n; k++)
        for (int i = 0; cs->msq[k] && i < cs->in[k]; i++) good &= cs->msq[k][i] > 0 && isfinite(cs->msq[k][i]);
    CHECK(good, "calibration statistics: %zu tokens, or a channel without energy", cs ? cs->tokens : 0);
    OK(bq_model_quantize(qm, q, 1));
    bq_qconfig_free(q);

    /* KL divergence: zero against itself, positive after quantising, top-1 agreement in range */
    bq_ppl_opts o = {.ctx = 64, .chunks = 3};
    bq_kld_result self, quant;
    OK(bq_kld(m, m, ids, 256, &o, &self));
    OK(bq_kld(m, qm, ids, 256, &o, &quant));
    CHECK(self.kld_mean == 0 && self.kld_max == 0 && self.top1 == 1, "KL of a model with itself: mean %g, top-1 %g",
          self.kld_mean, self.top1);
    CHECK(quant.kld_mean > 0 && quant.kld_p99 >= quant.kld_mean && quant.top1 > 0.3 && quant.top1 < 1 && quant.tokens == 189,
          "KL after q4_0: mean %g, p99 %g, top-1 %g over %zu tokens", quant.kld_mean, quant.kld_p99, quant.top1, quant.tokens);
    /* in parts (as MPI ranks run it): each part's windows, the arrays added, the same bits */
    size_t count = 0;
    OK(bq_kld_rows(256, &o, &count));
    double *kl = calloc(count, sizeof *kl), *same = calloc(count, sizeof *same), *pk = malloc(count * sizeof *pk),
           *ps = malloc(count * sizeof *ps);
    for (int part = 0; kl && same && pk && ps && part < 2; part++) {
        OK(bq_kld_part(m, qm, ids, 256, &o, part, 2, pk, ps));
        for (size_t k = 0; k < count; k++) { kl[k] += pk[k]; same[k] += ps[k]; }
    }
    bq_kld_result parts = {0};
    if (kl && same) bq_kld_finish(kl, same, count, &parts);
    CHECK(count == quant.tokens && !memcmp(&parts, &quant, offsetof(bq_kld_result, seconds)),
          "KL in 2 parts: mean %.17g vs %.17g, p99 %.17g vs %.17g, top-1 %g vs %g", parts.kld_mean, quant.kld_mean,
          parts.kld_p99, quant.kld_p99, parts.top1, quant.top1);
    free(kl); free(same); free(pk); free(ps);
    bq_model_free(m);
    bq_model_free(qm);
}

/* SmoothQuant: the smoothed float model computes the same function (the factors
 * fold exactly, up to rounding) on every pre-norm family (RMSNorm + SiLU gate,
 * LayerNorm with bias + ReLU, LayerNorm + GELU), and it helps where it should:
 * per-tensor int6 weights and activations. */
/* Largest |logit difference| of two models over 64 tokens, relative to the largest
 * |logit| of the first; NaN stays NaN (and fails every bound). */
static double logit_rel_diff(const bq_model *x, const bq_model *y, const int32_t *ids)
{
    int V = bq_model_vocab(x);
    float *a = malloc((size_t)64 * V * 4), *b = malloc((size_t)64 * V * 4);
    OK(bq_model_logits(x, ids, 64, a));
    OK(bq_model_logits(y, ids, 64, b));
    double mx = 0, worst = 0;
    for (size_t i = 0; i < (size_t)64 * V; i++) {
        mx = fmax(mx, fabs(a[i]));
        double d = fabs((double)a[i] - b[i]);
        worst = d > worst || isnan(d) ? d : worst;
    }
    free(a); free(b);
    return worst / mx;
}

static double smooth_kld(const char *dir, const char *wq, const char *aq, const char *ptq, const int32_t *ids, size_t n,
                         const int32_t *cal, size_t ncal, int ctx, double *maxrel)
{
    bq_model *m = load(dir), *sm = load(dir);
    double kl = -1;
    if (!m || !sm) { bq_model_free(m); bq_model_free(sm); return kl; }
    bq_qconfig *q;
    OK(bq_qconfig_new(&q));
    if (wq) OK(bq_qconfig_set(q, "wq", wq));
    if (aq) OK(bq_qconfig_set(q, "aq", aq));
    OK(bq_qconfig_set(q, "ptq", ptq));
    size_t windows = ncal / (size_t)ctx;
    OK(bq_qconfig_calibrate(q, m, cal, ncal, ctx, windows < 8 ? (int)windows : 8));
    OK(bq_model_quantize(sm, q, 1));
    bq_qconfig_free(q);
    if (maxrel) *maxrel = logit_rel_diff(m, sm, ids);  /* the first window, smoothed vs not */
    bq_ppl_opts o = {.ctx = ctx, .chunks = 4};
    bq_kld_result r;
    if (!bq_kld(m, sm, ids, n, &o, &r)) kl = r.kld_mean;
    bq_model_free(m);
    bq_model_free(sm);
    return kl;
}

/* dir's model after --ptq ptq: how far its float logits moved, relative to their range
 * (*st: the quantisation's status; *online: the online rotations it left). */
static double ptq_rel(const char *dir, const char *ptq, const int32_t *ids, bq_status *st, int *online)
{
    bq_model *m = load(dir), *ref = load(dir);
    double rel = -1;
    *st = BQ_ERR_ARG;
    if (m && ref) {
        bq_qconfig *q;
        OK(bq_qconfig_new(&q));
        OK(bq_qconfig_set(q, "ptq", ptq));
        *st = bq_model_quantize(m, q, 1);
        bq_qconfig_free(q);
        *online = (m->rot_down != NULL) + (m->rot_qk != NULL);
        if (!*st) rel = logit_rel_diff(ref, m, ids);
    }
    bq_model_free(m);
    bq_model_free(ref);
    return rel;
}

/* KL from the float model with the KV cache in format kv, after ptq (4 windows of 256). */
static double kv_kld(const char *kv, const char *ptq, const int32_t *ids, size_t n)
{
    bq_model *m = load(DEFAULT), *qm = load(DEFAULT);
    double kl = -1;
    if (!m || !qm) { bq_model_free(m); bq_model_free(qm); return kl; }
    bq_qconfig *q;
    OK(bq_qconfig_new(&q));
    OK(bq_qconfig_set(q, "kv", kv));
    OK(bq_qconfig_set(q, "ptq", ptq));
    OK(bq_model_quantize(qm, q, 1));
    bq_qconfig_free(q);
    bq_ppl_opts o = {.ctx = 256, .chunks = 4};
    bq_kld_result r;
    if (!bq_kld(m, qm, ids, n, &o, &r)) kl = r.kld_mean;
    bq_model_free(m);
    bq_model_free(qm);
    return kl;
}

static void test_smoothquant(void)
{
    int32_t ids[256];
    for (int i = 0; i < 256; i++) ids[i] = (int32_t)(t_rand() % 8192u);
    char dir[512];
    const char *sh = shared_dir();
    const char *fams[] = {"llama", "opt", "gpt2"};
    for (int f = 0; f < 3; f++) {
        if (f == 0) snprintf(dir, sizeof dir, "%s", DEFAULT);
        else if (!sh) { printf("SKIP: no ../shared: smoothquant not checked on tiny %s\n", fams[f]); continue; }
        else snprintf(dir, sizeof dir, "%s/models/tiny/%s", sh, fams[f]);
        double rel = -1;
        smooth_kld(dir, NULL, NULL, "smoothquant:0.5", ids, 256, ids, 256, 64, &rel);
        CHECK(rel >= 0 && rel < 1e-4, "%s: smoothquant alone changed the logits by %.3g of their range", fams[f], rel);
        rel = -1;  /* searched (q/k/v, gate/up: no smoothing wins, nothing being quantised; down 0.5) */
        smooth_kld(dir, NULL, NULL, "smoothquant", ids, 256, ids, 256, 64, &rel);
        CHECK(rel >= 0 && rel < 1e-4, "%s: searched smoothquant without formats changed the logits by %.3g of their range", fams[f], rel);
        rel = -1;
        smooth_kld(dir, NULL, NULL, "awq", ids, 256, ids, 256, 64, &rel);  /* no weight format: nothing to protect */
        CHECK(rel == 0, "%s: awq without a weight format changed the logits by %.3g of their range", fams[f], rel);
    }
    /* calibrated on the validation text, scored on the test text: 4 windows of 256 */
    bq_model *tm = load(DEFAULT);
    bq_tokenizer *tok = NULL;
    int32_t *cal = NULL, *txt = NULL;
    size_t ncal = 0, ntxt = 0;
    const char *files[2] = {"data/wikitext-2-valid-tokenized.txt", "data/wikitext-2-test.txt"};
    if (tm) OK(bq_tokenizer_from_model(tm, &tok));
    for (int i = 0; i < 2 && tok; i++) {
        FILE *fp = fopen(files[i], "rb");
        char *buf = malloc(60000);
        size_t len = fp ? fread(buf, 1, 60000, fp) : 0;
        while (len && (buf[len - 1] & 0xC0) == 0x80) len--;  /* whole UTF-8 characters */
        if (len && (unsigned char)buf[len - 1] >= 0xC0) len--;
        if (fp) fclose(fp);
        OK(bq_tokenize(tok, buf, len, i ? &txt : &cal, i ? &ntxt : &ncal));
        free(buf);
    }
    bq_tokenizer_free(tok);
    bq_model_free(tm);
    CHECK(ncal >= 2048 && ntxt >= 1024, "text for smoothquant: %zu and %zu tokens", ncal, ntxt);
    if (ncal < 2048 || ntxt < 1024) { free(cal); free(txt); return; }
    /* rotation: the float model's function on every RMSNorm family, LayerNorm ones refused;
     * the online rotations on every family (nothing is folded into a norm) */
    const char *rot[] = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "opt"};
    for (int f = 0; f < 6; f++) {
        if (f == 0) snprintf(dir, sizeof dir, "%s", DEFAULT);
        else if (!sh) continue;
        else snprintf(dir, sizeof dir, "%s/models/tiny/%s", sh, rot[f]);
        bq_status rs;
        int online = 0;
        double rel = ptq_rel(dir, "rotate:7", ids, &rs, &online);
        if (f >= 4) CHECK(rs == BQ_ERR_UNSUPPORTED && strstr(bq_last_error(), "RMSNorm"), "rotate on LayerNorm %s: %s", rot[f], bq_last_error());
        else CHECK(!rs && rel < 1e-4, "%s: rotation changed the float logits by %.3g of their range (%s)", rot[f], rel, rs ? bq_last_error() : "");
        rel = ptq_rel(dir, f == 0 ? "rotate:7,hadamard:3,hadamard_kv:4" : "hadamard:3,hadamard_kv:4", ids, &rs, &online);
        CHECK(!rs && online == 2, "%s: hadamard, hadamard_kv left %d online rotations (%s)", rot[f], online, rs ? bq_last_error() : "");
        CHECK(!rs && rel < 1e-4, "%s: hadamard, hadamard_kv changed the float logits by %.3g of their range", rot[f], rel);
    }
    bq_qconfig *cq;
    OK(bq_qconfig_new(&cq));
    CHECK(bq_qconfig_set(cq, "ptq", "rotate:x") == BQ_ERR_ARG, "rotate with a bad seed must be refused");
    CHECK(bq_qconfig_set(cq, "ptq", "hadamard:-") == BQ_ERR_ARG, "hadamard with a bad seed must be refused");
    CHECK(bq_qconfig_set(cq, "ptq", "hadamard_kv:") == BQ_ERR_ARG, "hadamard_kv with an empty seed must be refused");
    bq_qconfig_free(cq);
    /* a 4-bit KV cache (a scale per head and token): K's outlier channels spread */
    double kv4 = kv_kld("int4_g64", "none", txt, ntxt), kv4h = kv_kld("int4_g64", "hadamard_kv", txt, ntxt);
    printf("  KV cache int4_g64: KL %.5f, with hadamard_kv %.5f\n", kv4, kv4h);
    CHECK(kv4 > 0 && kv4h > 0 && kv4h < 0.7 * kv4, "hadamard_kv did not lower the int4 KV cache's KL by 30%%: %g vs %g", kv4h, kv4);
    /* per-tensor int6 activations: down_proj's input has this model's outliers */
    double w8a6 = smooth_kld(DEFAULT, "int8_row", "int6", "none", txt, ntxt, cal, ncal, 256, NULL),
           w8a6h = smooth_kld(DEFAULT, "int8_row", "int6", "hadamard", txt, ntxt, cal, ncal, 256, NULL);
    printf("  int8_row / int6: KL %.5f, with hadamard %.5f\n", w8a6, w8a6h);
    CHECK(w8a6 > 0 && w8a6h > 0 && w8a6h < 0.5 * w8a6, "hadamard did not halve int8_row/int6's KL: %g vs %g", w8a6h, w8a6);

    double plain = smooth_kld(DEFAULT, "int6", "int6", "none", txt, ntxt, cal, ncal, 256, NULL),
           smoothed = smooth_kld(DEFAULT, "int6", "int6", "smoothquant:0.5", txt, ntxt, cal, ncal, 256, NULL),
           searched = smooth_kld(DEFAULT, "int6", "int6", "smoothquant", txt, ntxt, cal, ncal, 256, NULL);
    /* AWQ's search minimises the calibration text's layer errors: there, the model is closer */
    double rtn = smooth_kld(DEFAULT, "int4_g128", NULL, "none", cal, ncal, cal, ncal, 256, NULL),
           awq = smooth_kld(DEFAULT, "int4_g128", NULL, "awq", cal, ncal, cal, ncal, 256, NULL);
    printf("  int4_g128 on the calibration text: KL %.5f, with awq %.5f\n", rtn, awq);
    CHECK(rtn > 0 && awq > 0 && awq < rtn, "awq did not lower int4_g128's KL on its calibration text: %g vs %g", awq, rtn);
    free(cal);
    free(txt);
    printf("  W6A6 per-tensor int6: KL %.5f, with smoothquant:0.5 %.5f, alpha searched %.5f\n", plain, smoothed, searched);
    CHECK(plain > 0 && smoothed > 0 && smoothed < 0.97 * plain, "smoothquant did not lower int6's KL by 3%%: %g vs %g", smoothed, plain);
    CHECK(searched > 0 && searched < 0.97 * plain, "smoothquant with alpha searched did not lower int6's KL by 3%%: %g vs %g", searched, plain);

    /* refusals: alpha out of range, no calibration, a post-LayerNorm model */
    bq_qconfig *q;
    OK(bq_qconfig_new(&q));
    CHECK(bq_qconfig_set(q, "ptq", "smoothquant:1.5") == BQ_ERR_ARG && bq_qconfig_set(q, "ptq", "smoothquant:x") == BQ_ERR_ARG,
          "smoothquant's alpha outside [0, 1] must be refused");
    OK(bq_qconfig_set(q, "ptq", "clip,smoothquant:0.7"));
    bq_model *m = load(DEFAULT);
    CHECK(m && bq_model_quantize(m, q, 1) == BQ_ERR_ARG && strstr(bq_last_error(), "calibration"),
          "smoothquant without calibration: %s", bq_last_error());
    bq_model_free(m);
    if (sh) {
        snprintf(dir, sizeof dir, "%s/models/tiny/opt-proj", sh);
        if ((m = load(dir))) {
            OK(bq_qconfig_calibrate(q, m, ids, 256, 64, 1));
            CHECK(bq_model_quantize(m, q, 1) == BQ_ERR_UNSUPPORTED && strstr(bq_last_error(), "post-LayerNorm"),
                  "smoothquant on a post-LayerNorm model: %s", bq_last_error());
            bq_model_free(m);
        }
    }
    bq_qconfig_free(q);
}

/* GPTQ on one layer: with correlated inputs, the output error |(W - Q) X^T|^2 of
 * GPTQ's weights (quantised as usual afterwards) is well below round-to-nearest's,
 * for block, group, row, tensor and element-wise formats; stochastic rounding is
 * refused. Then the Gram matrices calibration takes. */
static double out_err(const float *w, const float *x, int rows, int cols, int n)
{
    double e = 0;
    for (int t = 0; t < n; t++)
        for (int r = 0; r < rows; r++) {
            double d = 0;
            for (int k = 0; k < cols; k++) d += (double)w[(size_t)r * cols + k] * x[(size_t)t * cols + k];
            e += d * d;
        }
    return e;
}

static void test_gptq(void)
{
    enum { R = 48, C = 256, N = 600 };
    float *w = malloc(sizeof(float) * R * C), *x = malloc(sizeof(float) * N * C), *z = malloc(sizeof(float) * N * C);
    double *G = calloc((size_t)C * C, sizeof *G);
    for (int i = 0; i < R * C; i++) w[i] = t_normal() * 0.05f;
    for (int i = 0; i < N * C; i++) z[i] = t_normal();
    for (int t = 0; t < N; t++)  /* neighbouring channels correlated, a few loud ones */
        for (int k = 0; k < C; k++) {
            float v = z[t * C + k] + 0.8f * (k ? z[t * C + k - 1] : 0) + 0.5f * (k > 1 ? z[t * C + k - 2] : 0);
            x[t * C + k] = k % 37 == 0 ? 8 * v : v;
        }
    for (int t = 0; t < N; t++)
        for (int a = 0; a < C; a++)
            for (int b = 0; b < C; b++) G[(size_t)a * C + b] += (double)x[t * C + a] * x[t * C + b];
    /* the last six hold a row or tensor scale where the original weights put it: the
     * updated weights keep each row's (or the tensor's) extremes, bit for bit */
    const char *fmts[] = {"mxfp4", "int4_g128", "q4_0", "bfp4_b16", "fp8_e4m3", "int4_asym_g128",
                          "nvfp4", "int4_row", "int8", "int6_row", "int8_asym_row", "int4_asym"};
    float *rtn = malloc(sizeof(float) * R * C), *gq = malloc(sizeof(float) * R * C), *d = malloc(sizeof(float) * R * C);
    for (int f = 0; f < 12; f++) {
        bq_format *fm;
        OK(bq_format_parse(fmts[f], &fm));
        OK(bq_qdq(fm, w, rtn, R, C, NULL));
        memcpy(gq, w, sizeof(float) * R * C);
        OK(ptq_gptq(fm, gq, R, C, G, 0, NULL, 0, NULL));
        if (f >= 6) {
            int per_row = strstr(fmts[f], "row") != NULL, rr = per_row ? R : 1, cc = per_row ? C : R * C, kept = 1;
            for (int r = 0; r < rr; r++) {
                float e[2][2] = {{INFINITY, -INFINITY}, {INFINITY, -INFINITY}};  /* [before, after][min, max] */
                for (int k = 0; k < cc; k++) {
                    float ba[2] = {w[(size_t)r * cc + k], gq[(size_t)r * cc + k]};
                    for (int i = 0; i < 2; i++) {
                        float v = strstr(fmts[f], "asym") ? ba[i] : fabsf(ba[i]);
                        e[i][0] = fminf(e[i][0], v), e[i][1] = fmaxf(e[i][1], v);
                    }
                }
                kept &= e[1][1] == e[0][1] && (!strstr(fmts[f], "asym") || e[1][0] == e[0][0]);
            }
            CHECK(kept, "gptq %s: the updated weights moved a %s's extremes (its scale)", fmts[f], per_row ? "row" : "tensor");
        }
        OK(bq_qdq(fm, gq, gq, R, C, NULL));
        for (int i = 0; i < R * C; i++) d[i] = w[i] - rtn[i];
        double e_rtn = out_err(d, x, R, C, N);
        for (int i = 0; i < R * C; i++) d[i] = w[i] - gq[i];
        double e_gptq = out_err(d, x, R, C, N);
        printf("  gptq %-15s output error %.4g vs round-to-nearest %.4g\n", fmts[f], e_gptq, e_rtn);
        CHECK(e_gptq < 0.93 * e_rtn, "%s: GPTQ's output error %g is not below 0.93x round-to-nearest's %g", fmts[f], e_gptq, e_rtn);
        /* act-order: the loud channels' blocks first */
        memcpy(gq, w, sizeof(float) * R * C);
        OK(ptq_gptq(fm, gq, R, C, G, PTQ_GPTQ_ACTORDER, NULL, 0, NULL));
        OK(bq_qdq(fm, gq, gq, R, C, NULL));
        for (int i = 0; i < R * C; i++) d[i] = w[i] - gq[i];
        double e_act = out_err(d, x, R, C, N);
        printf("  gptq:actorder %-6s output error %.4g\n", fmts[f], e_act);
        CHECK(e_act < 0.93 * e_rtn, "%s: gptq:actorder's output error %g is not below 0.93x round-to-nearest's %g", fmts[f], e_act, e_rtn);
        if (f >= 6 && f % 2 == 0) {  /* with clip: the row or tensor clipped as a whole first */
            memcpy(gq, w, sizeof(float) * R * C);
            OK(ptq_gptq(fm, gq, R, C, G, 1, NULL, 0, NULL));
            OK(bq_qdq(fm, gq, gq, R, C, NULL));
            for (int i = 0; i < R * C; i++) d[i] = w[i] - gq[i];
            double e_clip = out_err(d, x, R, C, N);
            printf("  gptq,clip %-10s output error %.4g\n", fmts[f], e_clip);
            CHECK(e_clip < 0.93 * e_rtn, "%s: gptq,clip's output error %g is not below 0.93x round-to-nearest's %g", fmts[f], e_clip, e_rtn);
        }
        bq_format_free(fm);
    }
    bq_format *fm;
    OK(bq_format_parse("mxfp4", &fm));
    {  /* every block of the same energy: act-order keeps the order, and GPTQ's bits */
        double *Ge = malloc(sizeof(double) * C * C);
        float *a0 = malloc(sizeof(float) * R * C);
        for (int i = 0; i < C; i++)
            for (int j = 0; j < C; j++) Ge[(size_t)i * C + j] = i == j ? 4.0 : 1.0 / (1 + abs(i - j));
        memcpy(gq, w, sizeof(float) * R * C);
        memcpy(a0, w, sizeof(float) * R * C);
        OK(ptq_gptq(fm, gq, R, C, Ge, 0, NULL, 0, NULL));
        OK(ptq_gptq(fm, a0, R, C, Ge, PTQ_GPTQ_ACTORDER, NULL, 0, NULL));
        CHECK(!memcmp(gq, a0, sizeof(float) * R * C), "gptq:actorder with equal energies changed GPTQ's result");
        free(Ge); free(a0);
    }
    bq_qopts so = {BQ_ROUND_STOCHASTIC, 1, 0};
    CHECK(ptq_gptq(fm, gq, R, C, G, 0, &so, 0, NULL) == BQ_ERR_UNSUPPORTED, "gptq with stochastic rounding must be refused");
    bq_format_free(fm);
    free(w); free(x); free(z); free(G); free(rtn); free(gq); free(d);

    /* a Hessian that is not positive definite with 1% damping (2x2 blocks [[1, 3], [3, 1]]:
     * eigenvalues 4 and -2): the damping rises to 1000% of the mean diagonal, said, and the
     * weights stay finite; one that no damping mends (off-diagonal 1e6) is refused */
    {
        enum { NH = 64 };
        double *H = calloc((size_t)NH * NH, sizeof *H), damp = 0;
        float *v = malloc(sizeof(float) * 4 * NH);
        for (int i = 0; i < NH; i++) {
            H[(size_t)i * NH + i] = 1;
            H[(size_t)i * NH + (i ^ 1)] = 3;
        }
        for (int i = 0; i < 4 * NH; i++) v[i] = t_normal();
        bq_format *fh;
        OK(bq_format_parse("q4_0", &fh));
        OK(ptq_gptq(fh, v, 4, NH, H, 0, NULL, 0, &damp));
        int finite = 1;
        for (int i = 0; i < 4 * NH; i++) finite &= isfinite(v[i]) != 0;
        CHECK(damp > 9.99 && damp < 10.01 && finite, "indefinite Hessian: damping %g (expected 10), weights finite %d", damp, finite);
        for (int i = 0; i < NH; i++) H[(size_t)i * NH + (i ^ 1)] = 1e6;
        CHECK(ptq_gptq(fh, v, 4, NH, H, 0, NULL, 0, &damp) == BQ_ERR_ARG && strstr(bq_last_error(), "not positive definite"),
              "a Hessian no damping mends must be refused: %s", bq_last_error());
        bq_format_free(fh);
        free(H); free(v);
    }

    /* calibration's Gram matrices: symmetric, shared by q/k/v and gate/up, diagonal = tokens x mean square */
    bq_model *m = load(DEFAULT);
    if (!m) return;
    int32_t ids[256];
    for (int i = 0; i < 256; i++) ids[i] = (int32_t)(t_rand() % (unsigned)bq_model_vocab(m));
    bq_qconfig *q;
    OK(bq_qconfig_new(&q));
    OK(bq_qconfig_set(q, "wq", "q4_0"));
    OK(bq_qconfig_set(q, "ptq", "gptq"));
    OK(bq_qconfig_calibrate(q, m, ids, 256, 64, 2));
    const calib_stats *cs = q->calib;
    int good = cs && cs->gram, grams = 0;
    for (int k = 0; good && k < cs->n; k++) {
        int g = calib_gram_slot(cs, k), in = cs->in[k];
        if (!cs->msq[k]) continue;
        const double *Gk = cs->gram[g];
        good &= Gk != NULL && (g == k) == (cs->gram[k] != NULL);
        grams += g == k;
        for (int i = 0; Gk && i < in; i++) {
            good &= fabs(Gk[(size_t)i * in + i] - cs->msq[k][i] * (double)cs->tokens) <= 1e-9 * Gk[(size_t)i * in + i];
            for (int j = 0; j < i; j++) good &= Gk[(size_t)i * in + j] == Gk[(size_t)j * in + i];
        }
    }
    CHECK(good && grams == 8 * 4 + 1, "calibration's Gram matrices: %d of them, or asymmetric, or a diagonal off", grams);
    /* the linears side by side: the same bits on 1 and 2 threads */
    bq_model *qm = load(DEFAULT), *q1 = load(DEFAULT);
    q->opts.threads = 2;
    OK(bq_model_quantize(qm, q, 1));
    q->opts.threads = 1;
    OK(bq_model_quantize(q1, q, 1));
    size_t differ = 0;
    for (int k = 0; q1 && k < qm->c.layers * 7; k++) {
        const linear *a = model_linear(qm, k / 7, (lin_role)(k % 7)), *b = model_linear(q1, k / 7, (lin_role)(k % 7));
        if (LINEAR_PRESENT(a)) differ += !a->w || !b->w || memcmp(a->w, b->w, (size_t)a->out * a->in * 4);
    }
    CHECK(q1 && differ == 0, "gptq: %zu linears differ between 1 and 2 threads", differ);
    bq_model_free(q1);
    bq_qconfig_free(q);
    bq_ppl_opts o = {.ctx = 64, .chunks = 4};
    bq_kld_result r;
    OK(bq_kld(m, qm, ids, 256, &o, &r));
    CHECK(r.kld_mean > 0 && r.kld_mean < 1 && r.top1 > 0.5, "q4_0 with gptq: KL %g, top-1 %g", r.kld_mean, r.top1);
    bq_model_free(qm);
    /* rotate first: calibration deferred to the rotated model, then gptq on its statistics */
    OK(bq_qconfig_new(&q));
    OK(bq_qconfig_set(q, "wq", "q4_0"));
    OK(bq_qconfig_set(q, "ptq", "gptq,rotate:3"));
    OK(bq_qconfig_calibrate(q, m, ids, 256, 64, 2));
    CHECK(q->calib == NULL && q->cal_ids && q->cal_windows == 2, "with rotate the calibration windows are kept for later");
    qm = load(DEFAULT);
    OK(bq_model_quantize(qm, q, 1));
    bq_qconfig_free(q);
    bq_kld_result rr;
    OK(bq_kld(m, qm, ids, 256, &o, &rr));
    CHECK(rr.kld_mean > 0 && rr.kld_mean < 1.5 * r.kld_mean, "q4_0 with rotate and gptq: KL %g (gptq alone %g)", rr.kld_mean, r.kld_mean);
    bq_model_free(qm);
    /* gptq asked for after calibration without it: refused, naming the need */
    OK(bq_qconfig_new(&q));
    OK(bq_qconfig_set(q, "wq", "q4_0"));
    OK(bq_qconfig_calibrate(q, m, ids, 256, 64, 1));
    OK(bq_qconfig_set(q, "ptq", "gptq"));
    qm = load(DEFAULT);
    CHECK(qm && bq_model_quantize(qm, q, 1) == BQ_ERR_ARG && strstr(bq_last_error(), "Gram"), "gptq without Gram matrices: %s", bq_last_error());
    bq_model_free(qm);
    bq_qconfig_free(q);
    bq_model_free(m);
}

/* LoRC: the factors remove the quantisation error's leading singular directions
 * (full rank: all of it), the model gets closer to float32 than round-to-nearest,
 * the same bits for any thread count, and what cannot hold the factors refuses. */
static void test_lorc(void)
{
    bq_model *m = load(DEFAULT);
    if (!m) return;
    linear *l = &m->L[0].q;  /* 384 x 384 */
    size_t n = (size_t)l->out * l->in;
    float *w0 = malloc(n * 4), *wq = malloc(n * 4);
    memcpy(w0, l->w, n * 4);
    bq_format *f;
    OK(bq_format_parse("int4_g128", &f));
    OK(bq_qdq(f, w0, wq, (size_t)l->out, (size_t)l->in, NULL));
    free(l->w);
    l->w = wq;
    double prev = -1;
    for (int ri = 0; ri < 3; ri++) {
        int r = ri == 0 ? 4 : ri == 1 ? 32 : l->in;  /* the last: every singular direction */
        OK(ptq_lorc(l, w0, r));
        double e0 = 0, e1 = 0, ww = 0;
        for (int o = 0; o < l->out; o++)
            for (int i = 0; i < l->in; i++) {
                double c = 0;
                for (int k = 0; k < l->lr_rank; k++) c += (double)l->lr_a[(size_t)o * l->lr_rank + k] * l->lr_b[(size_t)k * l->in + i];
                double e = (double)w0[(size_t)o * l->in + i] - wq[(size_t)o * l->in + i];
                e0 += e * e;
                e1 += (e - c) * (e - c);
                ww += (double)w0[(size_t)o * l->in + i] * w0[(size_t)o * l->in + i];
            }
        CHECK(l->lr_rank == r && e1 < e0 && (prev < 0 || e1 < prev), "lorc rank %d: error %.6g (quantisation %.6g, lower rank %.6g)",
              r, e1, e0, prev);
        if (r == l->in) CHECK(e1 <= 1e-10 * ww, "lorc at full rank leaves %.3g of the error (weights %.3g)", e1, ww);
        printf("  lorc rank %3d on %s: squared error %.4g of the quantisation's %.4g\n", r, l->name, e1, e0);
        prev = e1;
    }
    bq_format_free(f);
    free(w0);
    bq_model_free(m);

    /* the model: closer to float32 than round-to-nearest, the same bits for 1 and 2 threads */
    int32_t ids[256];
    for (int i = 0; i < 256; i++) ids[i] = (int32_t)(t_rand() % 8192u);
    bq_model *ref = load(DEFAULT), *rtn = load(DEFAULT), *lr = load(DEFAULT);
    if (!ref || !rtn || !lr) { bq_model_free(ref); bq_model_free(rtn); bq_model_free(lr); return; }
    bq_qconfig *q;
    OK(bq_qconfig_new(&q));
    OK(bq_qconfig_set(q, "wq", "int4_g128"));
    OK(bq_model_quantize(rtn, q, 1));
    CHECK(bq_qconfig_set(q, "ptq", "lorc:0") == BQ_ERR_ARG && bq_qconfig_set(q, "ptq", "lorc:x") == BQ_ERR_ARG,
          "a bad lorc rank must be refused");
    OK(bq_qconfig_set(q, "ptq", "lorc:16"));
    OK(bq_model_quantize(lr, q, 1));
    bq_qconfig_free(q);
    bq_ppl_opts o = {.ctx = 64, .chunks = 4};
    bq_kld_result a, b;
    OK(bq_kld(ref, rtn, ids, 256, &o, &a));
    OK(bq_kld(ref, lr, ids, 256, &o, &b));
    CHECK(b.kld_mean < a.kld_mean, "lorc:16 KL %g not below round-to-nearest's %g", b.kld_mean, a.kld_mean);
    printf("  lorc:16 int4_g128: KL from float32 %.5f vs round-to-nearest %.5f\n", b.kld_mean, a.kld_mean);
    float *lg[2];
    for (int t = 0; t < 2; t++) {
        bq_ctx *c;
        bq_ctx_opts co = {.size = sizeof co, .threads = t + 1};
        lg[t] = malloc((size_t)64 * 8192 * 4);
        OK(bq_ctx_new_ex(lr, 64, &co, &c));
        OK(bq_forward(c, ids, 64, lg[t], 1));
        bq_ctx_free(c);
    }
    CHECK(!memcmp(lg[0], lg[1], (size_t)64 * 8192 * 4), "lorc: logits differ between 1 and 2 threads");
    float *lg0 = lg[0];
    free(lg[1]);
    /* a .bq file keeps the factors (version 2): the same logits back; GGUF cannot express them */
    bq_model *back = NULL;
    float *lb = malloc((size_t)64 * 8192 * 4);
    CHECK(bq_model_save(lr, t_tmp("bq_lorc_kept.bq")) == BQ_OK && bq_model_load(t_tmp("bq_lorc_kept.bq"), &back) == BQ_OK,
          "a .bq file with LoRC factors: %s", bq_last_error());
    if (back && lb && !bq_model_logits(back, ids, 64, lb))
        CHECK(!memcmp(lg0, lb, (size_t)64 * 8192 * 4), "lorc: the .bq gives other logits than the model it was saved from");
    else CHECK(0, "lorc: logits of the .bq: %s", bq_last_error());
    free(lb);
    free(lg0);
    bq_model_free(back);
    remove(t_tmp("bq_lorc_kept.bq"));
    CHECK(bq_model_save_gguf(lr, t_tmp("bq_lorc_refused.gguf")) == BQ_ERR_UNSUPPORTED, "GGUF must refuse LoRC factors");
    bq_model_free(ref); bq_model_free(rtn); bq_model_free(lr);
}

/* The online rotation's shapes and algebra: p x m splits (2^k, Hadamard blocks by
 * Paley I and II and Williamson, a random odd block), orthogonal blocks, norms and
 * dot products kept, and an odd part too large refused. */
static void test_hadamard_shapes(void)
{
    static const struct { int n, p, m, hadamard; } sh[] = {
        {1024, 1024, 1, 0}, {768, 64, 12, 1}, {1280, 64, 20, 1}, {3840, 64, 60, 1}, {6912, 64, 108, 1},
        {8960, 64, 140, 1}, {11008, 64, 172, 1}, {96, 8, 12, 1}, {14, 2, 7, 0}, {7, 1, 7, 0},
        {28 * 4, 4, 28, 1}, {36 * 2, 2, 36, 1}, {52 * 8, 8, 52, 1}, {156 * 16, 16, 156, 1}, {172, 1, 172, 1},
        {244, 1, 244, 1} /* Paley II over GF(11^2) */, {92, 4, 23, 0} /* no construction here */, {4 * 17, 1, 68, 1}};
    for (size_t k = 0; k < sizeof sh / sizeof *sh; k++) {
        bq_rot *r = NULL;
        OK(rot_make(sh[k].n, 5, &r));
        if (!r) continue;
        CHECK(r->p == sh[k].p && r->m == sh[k].m, "n %d: split %d x %d, expected %d x %d", sh[k].n, r->p, r->m, sh[k].p, sh[k].m);
        int m = r->m, neg = 0;
        double worst = 0;  /* |B B^T - I| */
        for (int i = 0; r->B && i < m; i++)
            for (int j = 0; j < m; j++) {
                double d = 0;
                for (int t = 0; t < m; t++) d += (double)r->B[(size_t)i * m + t] * r->B[(size_t)j * m + t];
                d = fabs(d - (i == j));
                worst = d > worst || d != d ? d : worst;
            }
        CHECK(worst < 1e-5, "n %d: block %dx%d is not orthogonal (%.3g)", sh[k].n, m, m, worst);
        for (int i = 0; sh[k].hadamard && i < m * m; i++)  /* a Hadamard matrix: every entry +-1/sqrt(m) */
            if (fabsf(fabsf(r->B[i]) * sqrtf((float)m) - 1.0f) > 1e-5f) { CHECK(0, "n %d: Hadamard entry %d is %g", sh[k].n, i, r->B[i]); break; }
        for (int i = 0; i < r->n; i++) neg += r->sign[i] < 0;
        CHECK(r->n < 64 || (neg > r->n / 3 && neg < 2 * r->n / 3), "n %d: %d of the signs negative", sh[k].n, neg);
        /* <T x, T y> = <x, y> and |T x| = |x| */
        int n = r->n;
        float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4), *tmp = malloc((size_t)m * 4);
        double xy = 0, xx = 0, yy = 0, txy = 0, txx = 0;
        uint32_t g = 12345;  /* its own stream: the later tests' random data stay as they were */
        for (int i = 0; i < n; i++) {
            g = g * 1664525u + 1013904223u; x[i] = (float)(g >> 8) * 0x1p-24f - 0.5f;
            g = g * 1664525u + 1013904223u; y[i] = (float)(g >> 8) * 0x1p-24f - 0.5f;
            xy += (double)x[i] * y[i]; xx += (double)x[i] * x[i]; yy += (double)y[i] * y[i];
        }
        model_rot_rows(r, x, 1, tmp);
        model_rot_rows(r, y, 1, tmp);
        for (int i = 0; i < n; i++) { txy += (double)x[i] * y[i]; txx += (double)x[i] * x[i]; }
        double e1 = fabs(txx - xx) / xx, e2 = fabs(txy - xy) / sqrt(xx * yy);
        CHECK(e1 < 1e-5 && e2 < 1e-5, "n %d: the rotation changed |x|^2 by %.3g and <x, y> by %.3g", n, e1, e2);
        free(x); free(y); free(tmp);
        model_rot_free(r);
    }
    bq_rot *r = NULL;
    CHECK(rot_make(2 * 1031, 5, &r) == BQ_ERR_UNSUPPORTED && !r && strstr(bq_last_error(), "odd part"),
          "an odd part of 1031 must be refused by name: %s", bq_last_error());
}

int main(void)
{
    bq_set_threads(0);
    test_lorc();
    test_fp32_identity();
    test_roles();
    test_bad_configs();
    test_reference();
    test_ptq();
    test_hadamard_shapes();
    test_smoothquant();
    test_gptq();
    return test_summary("test_quant");
}
