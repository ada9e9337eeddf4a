/* Every operation of the CUDA backend against the CPU's, in the manner of ggml's
 * test-backend-ops: the same inputs through both (src/engine/backend.h), the
 * outputs compared. Float ops within a relative 1e-5 of the CPU (sums in
 * another order); fake quantisation bit for bit. Then whole decodes: a prompt
 * and token-by-token steps from the KV cache, the GPU's logits against the
 * CPU's. Skips, saying so, without a GPU or without ../shared's tiny models.
 *
 *   build/tests/test_backend            (BQ_SHARED=DIR for the tiny checkpoints;
 *                                        BQ_BACKEND_ONLY=gptq: the device GPTQ check alone)
 */
#include "blockq.h"
#include "backend.h"
#include "bq_cuda.h"
#include "harness.h"
#include "quant.h"
#include <pthread.h>
#include <unistd.h>

typedef struct { be *b[2]; } pair;  /* [0] CPU, [1] CUDA */

/* A buffer on backend b holding the host values h (n floats). */
static float *put(be *b, const float *h, size_t n)
{
    float *p = b->ops->alloc(b, n * 4);
    if (!p) return NULL;
    if (b->ops->host) memcpy(p, h, n * 4);
    else if (bq_cuda_upload(p, h, n * 4)) { b->ops->release(b, p); return NULL; }
    return p;
}

static void get(be *b, float *h, const float *p, size_t n)
{
    if (b->ops->host) memcpy(h, p, n * 4);
    else if (bq_cuda_download(h, p, n * 4)) memset(h, 0xff, n * 4);  /* NaN: a failed copy fails the comparison */
}

static float *rnd(size_t n, float scale)
{
    float *p = malloc(n * 4);
    for (size_t i = 0; p && i < n; i++) p[i] = t_normal() * scale;
    return p;
}

/* max |a - b| / max |b|; NaN anywhere gives NaN */
static double rel_err(const float *a, const float *b, size_t n)
{
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        e = t_max(e, fabs((double)a[i] - b[i]));
        m = t_max(m, fabs((double)b[i]));
    }
    return m > 0 ? e / m : e;
}

/* Outputs: host copies of out[k] (n floats) from both backends. */
typedef struct { const char *model, *op; double tol; } cmp_ctx;
static void compare(const cmp_ctx *c, float *const out[2], size_t n, pair *p)
{
    float *h[2] = {malloc(n * 4), malloc(n * 4)};
    for (int k = 0; k < 2; k++) get(p->b[k], h[k], out[k], n);
    if (c->tol == 0) {
        size_t diff = 0;
        for (size_t i = 0; i < n; i++) diff += memcmp(&h[0][i], &h[1][i], 4) != 0;
        CHECK(diff == 0, "%s %s: %zu of %zu values differ from the CPU's bits", c->model, c->op, diff, n);
    } else {
        double e = rel_err(h[1], h[0], n);
        CHECK(e <= c->tol, "%s %s: relative error %.3g against the CPU (tolerance %.0e)", c->model, c->op, e, c->tol);
    }
    free(h[0]);
    free(h[1]);
}

#define BOTH(call) do { for (int k_ = 0; k_ < 2; k_++) { be *b = p->b[k_]; int k = k_; (void)k; OK(call); } } while (0)

/* a[0..n) and b[0..n) of backend g hold the same bits (and are finite) */
static void same_bits(be *g, const float *a, const float *b, size_t n, const char *model, const char *what)
{
    float *h[2] = {malloc(n * 4), malloc(n * 4)};
    get(g, h[0], a, n);
    get(g, h[1], b, n);
    size_t diff = 0;
    for (size_t i = 0; i < n; i++) diff += memcmp(&h[0][i], &h[1][i], 4) != 0 || !isfinite(h[0][i]);
    CHECK(diff == 0, "%s %s: %zu of %zu values differ from the unfused ops' bits", model, what, diff, n);
    free(h[0]);
    free(h[1]);
}

/* norm_linears (layer 0's first norm and q, k, v, after a residual connection and
 * without one) and act_linear (its activation and down_proj) against the ops they stand
 * for, bit for bit: on the CUDA backend with BQ_CUDA_FUSE=2 the residual and the norm are
 * one kernel, which with packed int8-layout weights and up to 4 tokens also makes the
 * GEMV's pieces (the activation's kernel too); otherwise they call those ops. */
static void norm_act_fused(const char *name, const bq_model *m, be *g, const float *hx, int n, int pos)
{
    const bq_config *c = &m->c;
    static const lin_role qkv[3] = {R_Q, R_K, R_V};
    size_t nH = (size_t)n * c->hidden, nI = (size_t)n * c->inter;
    for (int withres = 0; withres < 2 && g->ops->norm_linears && c->pre_norm; withres++) {
        float *x[2] = {put(g, hx, nH), put(g, hx, nH)}, *r = put(g, hx + 3, nH), *h[2] = {put(g, hx, nH), put(g, hx, nH)}, *y[2][3] = {{NULL}};
        int ok = x[0] && x[1] && r && h[0] && h[1];
        for (int j = 0; j < 2; j++)
            for (int i = 0; i < 3; i++) ok = ok && (y[j][i] = put(g, hx, (size_t)n * model_linear(m, 0, qkv[i])->out)) != NULL;
        if (ok) {
            be_residual res = {r, 0, CHK_MLP, 1};
            if (withres) OK(g->ops->add_check(g, x[0], r, n, c->hidden, 0, CHK_MLP, pos));
            OK(g->ops->norm(g, 0, N_LN1, x[0], h[0], n, c->hidden));
            for (int i = 0; i < 3; i++) OK(g->ops->linear(g, 0, qkv[i], h[0], y[0][i], n));
            OK(g->ops->norm_linears(g, 0, N_LN1, x[1], withres ? &res : NULL, pos, h[1], c->hidden, qkv, 3, y[1], n));
            OK(g->ops->finish(g));
            const char *what[2] = {"norm_linears: the norm", "norm_linears after a residual: the norm"};
            if (withres) same_bits(g, x[0], x[1], nH, name, "norm_linears: x + the residual");
            same_bits(g, h[0], h[1], nH, name, what[withres]);
            for (int i = 0; i < 3; i++) same_bits(g, y[0][i], y[1][i], (size_t)n * model_linear(m, 0, qkv[i])->out, name, "norm_linears: q, k, v");
            if (withres && n > 1) {  /* a NaN at token 1 of the residual: the fused op names the place add_check does */
                float nan = NAN;
                char msg[2][256];
                bq_cuda_upload(r + c->hidden + 3, &nan, 4);
                for (int j = 0; j < 2; j++) {
                    bq_status st = j ? g->ops->norm_linears(g, 0, N_LN1, x[1], &res, pos, h[1], c->hidden, qkv, 3, y[1], n)
                                     : g->ops->add_check(g, x[0], r, n, c->hidden, 0, CHK_MLP, pos);
                    if (!st) st = g->ops->finish(g);
                    snprintf(msg[j], sizeof msg[j], "%s", st ? bq_last_error() : "");
                }
                CHECK(msg[0][0] && !strcmp(msg[0], msg[1]), "%s norm_linears: add_check '%s', norm_linears '%s'", name, msg[0], msg[1]);
            }
        } else CHECK(0, "%s: buffers: %s", name, bq_last_error());
        for (int j = 0; j < 2; j++) {
            g->ops->release(g, x[j]);
            g->ops->release(g, h[j]);
            for (int i = 0; i < 3; i++) g->ops->release(g, y[j][i]);
        }
        g->ops->release(g, r);
    }
    if (g->ops->act_linear && !m->rot_down) {
        float *u[2] = {put(g, hx, nI), put(g, hx, nI)}, *gt = put(g, hx, nI), *y[2] = {put(g, hx, nH), put(g, hx, nH)};
        if (u[0] && u[1] && gt && y[0] && y[1]) {
            OK(g->ops->act(g, u[0], gt, nI));
            OK(g->ops->linear(g, 0, R_DOWN, u[0], y[0], n));
            OK(g->ops->act_linear(g, 0, R_DOWN, u[1], gt, y[1], n));
            same_bits(g, u[0], u[1], nI, name, "act_linear: the activation");
            same_bits(g, y[0], y[1], nH, name, "act_linear: down_proj");
        } else CHECK(0, "%s: buffers: %s", name, bq_last_error());
        for (int j = 0; j < 2; j++) { g->ops->release(g, u[j]); g->ops->release(g, y[j]); }
        g->ops->release(g, gt);
    }
}

/* The backend's fused ops (be_ops.rope_store, add_check; the CUDA backend's fused
 * kernels, on unless BQ_CUDA_FUSE=0) against the ops they stand for on the same backend:
 * the same bits, and the same message for a planted NaN.
 * The cache of layer 0 holds pos earlier tokens (ops_once stored them). */
static void fused_ops(const char *name, const bq_model *m, be *g, const float *hx, int n, int pos)
{
    const bq_config *c = &m->c;
    size_t qd = (size_t)c->heads * c->head_dim, kvd = (size_t)c->kv_heads * c->head_dim, nH = (size_t)n * c->hidden;
    if (g->ops->rope_store && c->rope && !m->rot_qk && !m->kv_q) {
        float *q[2], *k[2], *v[2], *a[2];
        for (int j = 0; j < 2; j++) {
            q[j] = put(g, hx, (size_t)n * qd);
            k[j] = put(g, hx + 5, (size_t)n * kvd);
            v[j] = put(g, hx + 9, (size_t)n * kvd);
            a[j] = put(g, hx, (size_t)n * qd);
        }
        if (q[1] && k[1] && v[1] && a[1] && q[0] && k[0] && v[0] && a[0]) {
            OK(g->ops->rope(g, q[0], n, c->heads, pos));
            OK(g->ops->rope(g, k[0], n, c->kv_heads, pos));
            OK(g->ops->kv_store(g, 0, k[0], v[0], n, pos));
            OK(g->ops->attention(g, 0, q[0], a[0], n, pos));
            OK(g->ops->rope_store(g, 0, q[1], k[1], v[1], n, pos));
            OK(g->ops->attention(g, 0, q[1], a[1], n, pos));
            same_bits(g, q[0], q[1], (size_t)n * qd, name, "rope_store: q");
            same_bits(g, k[0], k[1], (size_t)n * kvd, name, "rope_store: k");
            same_bits(g, a[0], a[1], (size_t)n * qd, name, "rope_store: attention over the cache it wrote");
        } else CHECK(0, "%s: buffers: %s", name, bq_last_error());
        for (int j = 0; j < 2; j++) {
            g->ops->release(g, q[j]);
            g->ops->release(g, k[j]);
            g->ops->release(g, v[j]);
            g->ops->release(g, a[j]);
        }
    }
    norm_act_fused(name, m, g, hx, n, pos);
    if (!g->ops->add_check) return;
    float *x[2] = {put(g, hx, nH), put(g, hx, nH)}, *h = put(g, hx + 3, nH);
    if (x[0] && x[1] && h) {
        OK(g->ops->check(g, h, n, c->hidden, c->layers - 1, CHK_ATTN, pos));
        OK(g->ops->add(g, x[0], h, nH));
        OK(g->ops->add_check(g, x[1], h, n, c->hidden, c->layers - 1, CHK_ATTN, pos));
        OK(g->ops->finish(g));
        same_bits(g, x[0], x[1], nH, name, "add_check");
        if (n > 1) {  /* a NaN at token 1: the fused op names the place the check does */
            float nan = NAN;
            char msg[2][256];
            bq_cuda_upload(h + c->hidden + 3, &nan, 4);
            for (int j = 0; j < 2; j++) {
                bq_status st = j ? g->ops->add_check(g, x[1], h, n, c->hidden, c->layers - 1, CHK_ATTN, pos)
                                 : g->ops->check(g, h, n, c->hidden, c->layers - 1, CHK_ATTN, pos);
                if (!st) st = g->ops->finish(g);
                snprintf(msg[j], sizeof msg[j], "%s", st ? bq_last_error() : "");
            }
            CHECK(msg[0][0] && !strcmp(msg[0], msg[1]), "%s add_check: check '%s', add_check '%s'", name, msg[0], msg[1]);
        }
    } else CHECK(0, "%s: buffers: %s", name, bq_last_error());
    g->ops->release(g, x[0]);
    g->ops->release(g, x[1]);
    g->ops->release(g, h);
}

/* Each op once on n tokens at position pos (after `pos` cached tokens). */
static void ops_once(const char *name, const bq_model *m, pair *p, int n, int pos)
{
    const bq_config *c = &m->c;
    int H = c->hidden, d = c->head_dim, E = c->embed_dim, V = c->vocab;
    size_t qd = (size_t)c->heads * d, kvd = (size_t)c->kv_heads * d, I = (size_t)c->inter;
    char op[160];
    cmp_ctx cc = {name, op, 1e-5};
    size_t wide = I > qd ? I : qd;
    wide = wide > (size_t)V ? wide : (size_t)V;
    wide = wide > (size_t)H ? wide : (size_t)H;
    size_t big = (size_t)n * wide;
    float *hx = rnd(big, 1.0f), *x[2], *y[2], *z[2];
    int32_t *ids = malloc((size_t)(n + 1) * 4);
    for (int t = 0; t <= n; t++) ids[t] = (int32_t)(t_rand() % (unsigned)V);
    for (int k = 0; k < 2; k++) {
        x[k] = put(p->b[k], hx, big);
        y[k] = put(p->b[k], hx, big);
        z[k] = put(p->b[k], hx, big);
    }
    if (!x[0] || !x[1] || !y[0] || !y[1] || !z[0] || !z[1]) { CHECK(0, "%s: buffers: %s", name, bq_last_error()); goto done; }

    snprintf(op, sizeof op, "embed");
    BOTH(b->ops->embed(b, ids, n, y[k]));
    compare(&cc, y, (size_t)n * E, p);
    if (m->pos_emb) {
        snprintf(op, sizeof op, "add_pos(pos %d)", pos);
        BOTH(b->ops->add_pos(b, y[k], n, pos));
        compare(&cc, y, (size_t)n * E, p);
    }
    for (int r = R_Q; r < R_COUNT; r++) {
        int layer = r < R_HEAD ? c->layers - 1 : -1;
        const linear *l = model_linear(m, layer, (lin_role)r);
        if (!LINEAR_PRESENT(l)) continue;
        snprintf(op, sizeof op, "linear %s (n %d)", l->name, n);
        BOTH(b->ops->linear(b, layer, (lin_role)r, x[k], y[k], n));
        compare(&cc, y, (size_t)n * l->out, p);
    }
    for (int r = N_LN1; r <= N_FINAL; r++) {
        if ((r == N_Q || r == N_K) && !c->qk_norm) continue;
        if (r == N_FINAL && !c->final_norm) continue;
        int dd = r == N_Q || r == N_K ? d : H, rows = r == N_Q || r == N_K ? n * c->heads : n;
        snprintf(op, sizeof op, "norm %d", r);
        BOTH(b->ops->norm(b, r == N_FINAL ? -1 : 0, (norm_role)r, x[k], y[k], rows, dd));
        compare(&cc, y, (size_t)rows * dd, p);
    }
    if (c->rope) {
        snprintf(op, sizeof op, "rope (pos %d)", pos);
        BOTH(b->ops->rope(b, y[k], n, c->heads, pos));
        compare(&cc, y, (size_t)n * qd, p);
    }
    const char *fmts[] = {"mxfp4", "mxint8", "bfp6_b16", "nvfp4", "int4_g32"};
    for (int f = 0; f < 5; f++) {
        bq_format *fm;
        if (bq_format_parse(fmts[f], &fm)) { CHECK(0, "%s", bq_last_error()); continue; }
        snprintf(op, sizeof op, "qdq %s", fmts[f]);
        cmp_ctx exact = {name, op, 0};
        BOTH(b->ops->qdq(b, fm, x[k], z[k], (size_t)n, qd));
        compare(&exact, z, (size_t)n * qd, p);
        bq_format_free(fm);
    }
    /* the cache: pos earlier tokens, then n new ones; attention over all of them */
    float *hk = rnd((size_t)(pos + n) * kvd, 1.0f), *hv = rnd((size_t)(pos + n) * kvd, 1.0f);
    for (int k = 0; k < 2; k++) {
        float *dk = put(p->b[k], hk, (size_t)(pos + n) * kvd), *dv = put(p->b[k], hv, (size_t)(pos + n) * kvd);
        be *b = p->b[k];
        if (!dk || !dv) CHECK(0, "%s: %s", name, bq_last_error());
        else {
            if (pos) OK(b->ops->kv_store(b, 0, dk, dv, pos, 0));
            OK(b->ops->kv_store(b, 0, dk + (size_t)pos * kvd, dv + (size_t)pos * kvd, n, pos));
        }
        b->ops->release(b, dk);
        b->ops->release(b, dv);
    }
    snprintf(op, sizeof op, "attention (n %d, pos %d%s)", n, pos, m->attn_q ? ", quantised" : "");
    BOTH(b->ops->attention(b, 0, x[k], y[k], n, pos));
    compare(&cc, y, (size_t)n * qd, p);
    free(hk);
    free(hv);
    snprintf(op, sizeof op, "act");
    BOTH(b->ops->act(b, x[k], z[k], (size_t)n * I));
    compare(&cc, x, (size_t)n * I, p);
    snprintf(op, sizeof op, "add");
    BOTH(b->ops->add(b, x[k], z[k], (size_t)n * I));
    compare(&cc, x, (size_t)n * I, p);
    fused_ops(name, m, p->b[1], hx, n, pos);
    const bq_rot *rots[2] = {m->rot_down, m->rot_qk};
    for (int j = 0; j < 2; j++) {  /* the same float operations in the same order: the same bits (on the same input) */
        const bq_rot *r = rots[j];
        if (!r) continue;
        int rows = j ? n * c->heads : n;
        snprintf(op, sizeof op, "rotate %s (%d = %d x %d)", j ? "q/k" : "down", r->n, r->p, r->m);
        cmp_ctx exact = {name, op, 0};
        for (int k = 0; k < 2; k++) {
            p->b[k]->ops->release(p->b[k], z[k]);
            z[k] = put(p->b[k], hx, big);
        }
        if (z[0] && z[1]) {
            BOTH(b->ops->rotate(b, r, z[k], rows));
            compare(&exact, z, (size_t)rows * r->n, p);
        } else CHECK(0, "%s: buffers: %s", name, bq_last_error());
    }
    /* a NaN planted at token 1: both name the same place */
    if (n > 1) {
        float nan = NAN;
        char msg[2][256];
        for (int k = 0; k < 2; k++) {
            be *b = p->b[k];
            if (b->ops->host) y[k][H + 3] = nan;
            else bq_cuda_upload(y[k] + H + 3, &nan, 4);
            bq_status st = b->ops->check(b, y[k], n, H, c->layers - 1, CHK_MLP, pos);
            if (!st) st = b->ops->finish(b);
            snprintf(msg[k], sizeof msg[k], "%s", st ? bq_last_error() : "");
        }
        CHECK(msg[0][0] && !strcmp(msg[0], msg[1]), "%s check: CPU '%s', CUDA '%s'", name, msg[0], msg[1]);
    }
done:
    for (int k = 0; k < 2; k++) {
        p->b[k]->ops->release(p->b[k], x[k]);
        p->b[k]->ops->release(p->b[k], y[k]);
        p->b[k]->ops->release(p->b[k], z[k]);
    }
    free(hx);
    free(ids);
}

/* A prompt, then steps of one token from the cache: each step's logits on the
 * CPU, on CUDA (one-token steps replayed from a recorded graph where the model
 * allows) and on CUDA launching every kernel (eager): the last two bit for bit. */
static void decode(const char *name, const bq_model *m, int prompt, int steps)
{
    bq_ctx *c[3] = {NULL, NULL, NULL};
    bq_status st = BQ_OK;
    for (int k = 0; k < 3 && !st; k++) {
        bq_ctx_opts o = {.size = sizeof o, .device = k > 0, .eager = k == 2};
        st = bq_ctx_new_ex(m, prompt + steps, &o, &c[k]);
    }
    if (st) {
        CHECK(0, "%s decode: %s", name, bq_last_error());
        for (int k = 0; k < 3; k++) bq_ctx_free(c[k]);
        return;
    }
    int V = m->c.vocab;
    float *lg[3] = {malloc((size_t)V * 4), malloc((size_t)V * 4), malloc((size_t)V * 4)};
    int32_t *ids = malloc((size_t)(prompt + steps) * 4);
    for (int t = 0; t < prompt + steps; t++) ids[t] = (int32_t)(t_rand() % (unsigned)V);
    double worst = 0;
    int argmax_same = 1, same_bits = 1;
    for (int s = 0; s <= steps; s++) {
        int at = s ? prompt + s - 1 : 0, cnt = s ? 1 : prompt;
        for (int k = 0; k < 3; k++) OK(bq_forward(c[k], ids + at, cnt, lg[k], 0));
        worst = t_max(worst, rel_err(lg[1], lg[0], (size_t)V));
        same_bits &= !memcmp(lg[1], lg[2], (size_t)V * 4);
        int a0 = 0, a1 = 0;
        for (int v = 1; v < V; v++) { a0 = lg[0][v] > lg[0][a0] ? v : a0; a1 = lg[1][v] > lg[1][a1] ? v : a1; }
        argmax_same &= a0 == a1;
    }
    double tol = m->L[0].q.aq ? 2e-3 : 1e-4;  /* quantised activations: rare rounding flips */
    CHECK(worst <= tol, "%s decode: GPU logits differ from the CPU's by %.3g (relative, tolerance %.0e)", name, worst, tol);
    CHECK(same_bits, "%s decode: replayed steps differ from eager ones", name);
    printf("  decode %-22s prompt %d + %d steps: max relative logit error %.2e, argmax %s, replayed = eager: %s\n", name,
           prompt, steps, worst, argmax_same ? "equal" : "differs", same_bits ? "yes" : "NO");
    for (int k = 0; k < 3; k++) { bq_ctx_free(c[k]); free(lg[k]); }
    free(ids);
}

/* Calibration's sums (stats_add/stats_read) on the device against the host's
 * arithmetic on the same inputs: channel sums and maxima bit for bit (each channel's
 * tokens added in order), X^T X within 1e-12 of sqrt(G_ii G_jj) (dsyrk's order). */
static void stats_op(const char *dir)
{
    bq_model *m;
    be *b;
    if (bq_model_load(dir, &m)) { CHECK(0, "%s: %s", dir, bq_last_error()); return; }
    if (be_cuda_new(m, 16, 0, 0, m->c.layers, &b)) { CHECK(0, "%s: %s", dir, bq_last_error()); bq_model_free(m); return; }
    const char *name = dir;
    int in = m->c.hidden;
    const int n1 = 37, n2 = 5, n = n1 + n2;
    float *hx = rnd((size_t)n * in, 1.5f), *dx = put(b, hx, (size_t)n * in);
    double *msq = calloc((size_t)in, 8), *amax = calloc((size_t)in, 8), *G = calloc((size_t)in * in, 8);
    double *rm = calloc((size_t)in, 8), *ra = calloc((size_t)in, 8), *rg = calloc((size_t)in * in, 8);
    if (!hx || !dx || !msq || !amax || !G || !rm || !ra || !rg) { CHECK(0, "%s stats: buffers", name); goto done; }
    OK(b->ops->stats_add(b, 3, dx, n1, in, 1));
    OK(b->ops->stats_add(b, 3, dx + (size_t)n1 * in, n2, in, 1));
    OK(b->ops->stats_read(b, 3, msq, amax, G));
    for (int t = 0; t < n; t++)
        for (int i = 0; i < in; i++) {
            double v = hx[(size_t)t * in + i];
            rm[i] += v * v;
            ra[i] = fabs(v) > ra[i] ? fabs(v) : ra[i];
            for (int j = i; j < in; j++) rg[(size_t)i * in + j] += v * hx[(size_t)t * in + j];
        }
    int exact = !memcmp(msq, rm, (size_t)in * 8) && !memcmp(amax, ra, (size_t)in * 8);
    double worst = 0;
    for (int i = 0; i < in; i++)
        for (int j = i; j < in; j++) {
            double e = fabs(G[(size_t)i * in + j] - rg[(size_t)i * in + j]) / sqrt(rg[(size_t)i * in + i] * rg[(size_t)j * in + j]);
            worst = e == e ? t_max(worst, e) : INFINITY;
        }
    CHECK(exact, "%s stats: channel sums or maxima differ from the host's bits", name);
    CHECK(worst <= 1e-12, "%s stats: X^T X off by %.3g of sqrt(G_ii G_jj)", name, worst);
    CHECK(b->ops->stats_read(b, 3, msq, amax, NULL) == BQ_ERR_ARG, "%s stats: a slot read twice must be refused", name);
done:
    if (dx) b->ops->release(b, dx);
    free(hx); free(msq); free(amax); free(G); free(rm); free(ra); free(rg);
    b->ops->destroy(b);
    bq_model_free(m);
}

/* The same calibration on the GPU and on the CPU: the statistics agree up to the
 * backends' float32 rounding of the activations (relative 1e-4), and gptq quantises
 * the same weights from either. */
static void calibration_on_device(const char *dir)
{
    bq_model *m;
    if (bq_model_load(dir, &m)) { CHECK(0, "%s: %s", dir, bq_last_error()); return; }
    int32_t ids[256];
    for (int i = 0; i < 256; i++) ids[i] = (int32_t)(t_rand() % (unsigned)bq_model_vocab(m));
    bq_qconfig *q[2];
    for (int k = 0; k < 2; k++) {
        OK(bq_qconfig_new(&q[k]));
        OK(bq_qconfig_set(q[k], "wq", "q4_0"));
        OK(bq_qconfig_set(q[k], "ptq", "gptq,smoothquant"));
        bq_qconfig_set_device(q[k], k);
        OK(bq_qconfig_calibrate(q[k], m, ids, 256, 64, 4));
    }
    const calib_stats *c = q[0]->calib, *g = q[1]->calib;
    double worst = 0;
    int slots = 0, shape = c && g && c->n == g->n && c->gram && g->gram && c->xs && g->xs;
    for (int k = 0; shape && k < c->n; k++) {
        if (!c->msq[k]) { shape &= !g->msq[k]; continue; }
        int in = c->in[k];
        shape &= g->msq[k] && g->in[k] == in && !c->gram[k] == !g->gram[k] && c->xrows[k] == g->xrows[k];
        if (!shape) break;
        slots++;
        for (int i = 0; i < in; i++) {
            worst = t_max(worst, fabs(g->msq[k][i] - c->msq[k][i]) / (c->msq[k][i] + 1e-30));
            worst = t_max(worst, fabs(g->amax[k][i] - c->amax[k][i]) / (c->amax[k][i] + 1e-30));
            for (int j = 0; c->gram[k] && j < in; j++) {
                double s = sqrt(c->gram[k][(size_t)i * in + i] * c->gram[k][(size_t)j * in + j]);
                worst = t_max(worst, fabs(g->gram[k][(size_t)i * in + j] - c->gram[k][(size_t)i * in + j]) / (s + 1e-30));
            }
        }
        for (size_t i = 0; c->xs[k] && i < (size_t)c->xrows[k] * in; i++)
            worst = t_max(worst, fabs((double)g->xs[k][i] - c->xs[k][i]) / (sqrt(c->msq[k][i % in]) + 1e-30));
        if (worst != worst) worst = INFINITY;
    }
    CHECK(shape && slots > 0, "calibration on the GPU: statistics of another shape than the CPU's");
    CHECK(worst <= 1e-4, "calibration on the GPU: statistics off the CPU's by %.3g (relative)", worst);
    printf("  calibration on the GPU: %d slots, statistics within %.2e of the CPU's\n", slots, worst);
    for (int k = 0; k < 2; k++) bq_qconfig_free(q[k]);
    bq_model_free(m);
}

/* GPTQ on the device (src/cuda/gptq.cu) against the CPU's (src/quant/gptq.c) on the
 * same weights and Gram matrix: the same steps with float64 sums in another order,
 * so the final codes agree except where a value sits within rounding of a decision
 * point: at least 99.9% of them equal, and the layer's output error
 * tr((W - Q) H (W - Q)^T) within 1e-3 of the CPU's (relative). Two lazy batches of
 * 128 columns; block, group, element, row and tensor-scale formats; clip on two. */
static double gptq_out_err(const float *w, const float *q, const double *G, int R, int C)
{
    double e = 0;
    double *d = malloc((size_t)C * sizeof *d);
    for (int r = 0; d && r < R; r++) {
        for (int c = 0; c < C; c++) d[c] = (double)w[(size_t)r * C + c] - q[(size_t)r * C + c];
        for (int a = 0; a < C; a++)
            for (int b = 0; b < C; b++) e += d[a] * G[(size_t)a * C + b] * d[b];
    }
    free(d);
    return d ? e : NAN;
}

/* One device GPTQ in a thread of its own (the quantiser's workers run linears side by side). */
typedef struct { const bq_format *f; const float *w; const double *G; float *q; int R, C; bq_status st; } gptq_job;
static void *gptq_job_run(void *arg)
{
    gptq_job *j = arg;
    memcpy(j->q, j->w, sizeof(float) * j->R * j->C);
    j->st = ptq_gptq(j->f, j->q, j->R, j->C, j->G, 0, NULL, 1, NULL);
    if (!j->st) j->st = bq_qdq(j->f, j->q, j->q, (size_t)j->R, (size_t)j->C, NULL);
    return NULL;
}

/* Formats whose scale covers the tensor read a statistic back from the device in
 * every group's quantisation: four threads at once (two formats) must each get the
 * CPU's codes, as one thread does. */
static void gptq_threads_on_device(const float *w, const double *G, int R, int C)
{
    enum { T = 4 };
    const char *fmts[2] = {"nvfp4", "int8"};
    bq_format *fm[2] = {NULL, NULL};
    float *cpu[2] = {malloc(sizeof(float) * R * C), malloc(sizeof(float) * R * C)}, *q[T];
    gptq_job jobs[T];
    pthread_t th[T];
    for (int t = 0; t < T; t++) q[t] = malloc(sizeof(float) * R * C);
    for (int f = 0; f < 2; f++) {
        OK(bq_format_parse(fmts[f], &fm[f]));
        memcpy(cpu[f], w, sizeof(float) * R * C);
        OK(ptq_gptq(fm[f], cpu[f], R, C, G, 0, NULL, 0, NULL));
        OK(bq_qdq(fm[f], cpu[f], cpu[f], R, C, NULL));
    }
    for (int t = 0; t < T; t++) {
        jobs[t] = (gptq_job){fm[t % 2], w, G, q[t], R, C, BQ_OK};
        CHECK(pthread_create(&th[t], NULL, gptq_job_run, &jobs[t]) == 0, "gptq threads: pthread_create");
    }
    for (int t = 0; t < T; t++) {
        pthread_join(th[t], NULL);
        OK(jobs[t].st);
        size_t same = 0;
        for (size_t i = 0; i < (size_t)R * C; i++) same += q[t][i] == cpu[t % 2][i];
        printf("  gptq %-6s in thread %d of %d on the GPU: %zu of %d codes as the CPU's\n", fmts[t % 2], t, T, same, R * C);
        CHECK(same >= (size_t)(0.999 * R * C), "gptq %s in thread %d on the GPU: %zu of %d codes as the CPU's", fmts[t % 2], t, same, R * C);
    }
    for (int t = 0; t < T; t++) free(q[t]);
    for (int f = 0; f < 2; f++) { free(cpu[f]); bq_format_free(fm[f]); }
}

static void gptq_on_device(void)
{
    enum { R = 96, C = 384, N = 512 };
    float *w = rnd((size_t)R * C, 0.05f), *x = rnd((size_t)N * C, 1.0f);
    float *q[2] = {malloc(sizeof(float) * R * C), malloc(sizeof(float) * R * C)};
    double *G = calloc((size_t)C * C, sizeof *G);
    if (!w || !x || !q[0] || !q[1] || !G) { CHECK(0, "gptq on the device: buffers"); goto done; }
    for (int t = 0; t < N; t++)  /* neighbouring channels correlated, a few loud ones */
        for (int k = C - 1; k > 0; k--) x[(size_t)t * C + k] = (k % 29 ? 1.0f : 6.0f) * (x[(size_t)t * C + k] + 0.7f * x[(size_t)t * C + k - 1]);
    for (int t = 0; t < N; t++)
        for (int a = 0; a < C; a++)
            for (int b = 0; b < C; b++) G[(size_t)a * C + b] += (double)x[(size_t)t * C + a] * x[(size_t)t * C + b];
    const char *fmts[] = {"q4_0", "mxfp4", "bfp4_b16", "int4_asym_g128", "fp8_e4m3", "mxfp6_e2m3", "nvfp4", "int6_row", "int8",
                          "int8_asym_row"};
    for (int f = 0; f < 10; f++) {
        bq_format *fm;
        OK(bq_format_parse(fmts[f], &fm));
        int clip = f == 2 || f == 6;
        for (int k = 0; k < 2; k++) {
            memcpy(q[k], w, sizeof(float) * R * C);
            OK(ptq_gptq(fm, q[k], R, C, G, clip, NULL, k, NULL));
            OK(bq_qdq(fm, q[k], q[k], R, C, NULL));
        }
        size_t same = 0;
        for (size_t i = 0; i < (size_t)R * C; i++) same += q[0][i] == q[1][i];
        double e[2] = {gptq_out_err(w, q[0], G, R, C), gptq_out_err(w, q[1], G, R, C)};
        double rel = fabs(e[1] - e[0]) / e[0];
        printf("  gptq %-15s%s on the GPU: %zu of %d codes as the CPU's, output error %.6g vs %.6g\n", fmts[f],
               clip ? " (clip)" : "", same, R * C, e[1], e[0]);
        CHECK(same >= (size_t)(0.999 * R * C), "gptq %s on the GPU: %zu of %d codes as the CPU's", fmts[f], same, R * C);
        CHECK(rel <= 1e-3, "gptq %s on the GPU: output error %g against the CPU's %g", fmts[f], e[1], e[0]);
        bq_format_free(fm);
    }
    gptq_threads_on_device(w, G, R, C);
    /* an indefinite Hessian (2x2 blocks [[1, 3], [3, 1]]): the device raises the damping as the CPU does */
    memset(G, 0, sizeof(double) * C * C);
    for (int i = 0; i < C; i++) G[(size_t)i * C + i] = 1, G[(size_t)i * C + (i ^ 1)] = 3;
    double damp[2] = {0, 0};
    bq_format *fm;
    OK(bq_format_parse("q4_0", &fm));
    for (int k = 0; k < 2; k++) {
        memcpy(q[k], w, sizeof(float) * R * C);
        OK(ptq_gptq(fm, q[k], R, C, G, 0, NULL, k, &damp[k]));
    }
    CHECK(damp[1] == damp[0] && damp[0] > 9.99, "gptq on the GPU: damping %g for an indefinite Hessian, the CPU's %g", damp[1], damp[0]);
    bq_format_free(fm);
done:
    free(w); free(x); free(q[0]); free(q[1]); free(G);
}

static void quantise(bq_model *m, const char *w, const char *a, const char *attn, const char *ptq, int pack)
{
    bq_qconfig *q;
    OK(bq_qconfig_new(&q));
    if (w) OK(bq_qconfig_set(q, "wq", w));
    if (a) OK(bq_qconfig_set(q, "aq", a));
    if (attn) OK(bq_qconfig_set(q, "attn", attn));
    if (ptq) OK(bq_qconfig_set(q, "ptq", ptq));
    OK(pack ? bq_model_pack(m, q, 1) : bq_model_quantize(m, q, 1));
    bq_qconfig_free(q);
}

static void one_model(const char *name, const char *dir)
{
    /* packed with float activations: the packed GEMV, and three bf16 products at prefill;
     * NVFP4, Q4_0 and int4_g64 (float32 group scales, a scale per 64-column tile on the
     * device) packed: their values are not bf16 numbers, so the prefill unpacks them to float32; the last with down_proj's input rotated online (--ptq hadamard; float
     * activations: the rotation spreads any last-bit difference of its input over every
     * output, so quantised activations there flip roundings the 2e-3 bound does not allow) */
    static const struct { const char *w, *a, *attn, *ptq; int pack; } qs[] = {
        {NULL, NULL, NULL, NULL, 0}, {"mxfp4", "mxint8", NULL, NULL, 0}, {"bfp8_b16", "bfp8_b16", "bfp6_b16", NULL, 0},
        {"mxfp4", NULL, NULL, NULL, 1}, {"nvfp4", NULL, NULL, NULL, 1}, {"q4_0", NULL, NULL, NULL, 1},
        {"int4_g64", NULL, NULL, NULL, 1}, {"mxfp4", NULL, NULL, "hadamard:1,hadamard_kv:2", 0}};
    for (size_t i = 0; i < sizeof qs / sizeof *qs; i++) {
        bq_model *m;
        if (bq_model_load(dir, &m)) { CHECK(0, "%s: %s", dir, bq_last_error()); return; }
        if (qs[i].w || qs[i].ptq) quantise(m, qs[i].w, qs[i].a, qs[i].attn, qs[i].ptq, qs[i].pack);
        char label[64];
        snprintf(label, sizeof label, "%s %s%s%s", name, qs[i].w ? qs[i].w : "fp32", qs[i].pack ? " packed" : "", qs[i].ptq ? " hadamard" : "");
        pair p;
        int T = 48;
        bq_status s0 = be_cpu_new(m, T, 0, 0, m->c.layers, &p.b[0]), s1 = s0 ? s0 : be_cuda_new(m, T, 0, 0, m->c.layers, &p.b[1]);
        CHECK(!s0 && !s1, "%s: backends: %s", label, bq_last_error());
        if (!s0 && !s1) {
            ops_once(label, m, &p, 7, 0);
            ops_once(label, m, &p, 1, 20);
            ops_once(label, m, &p, 5, 31);
        }
        if (!s0) p.b[0]->ops->destroy(p.b[0]);
        if (!s0 && !s1) p.b[1]->ops->destroy(p.b[1]);
        decode(label, m, 9, 24);
        bq_model_free(m);
    }
}

int main(void)
{
    char why[256];
    if (!bq_cuda_devices(why, sizeof why)) {
        SKIP("%s: the CUDA backend's operations not compared with the CPU's", why);
        /* what must hold without a device: a clean refusal, before any work */
        bq_model *m;
        OK(bq_model_load("models/llama-19m-en", &m));
        bq_ctx *c = NULL;
        bq_ctx_opts o = {.size = sizeof o, .device = 1};
        CHECK(bq_ctx_new_ex(m, 16, &o, &c) == BQ_ERR_UNSUPPORTED && !c, "a CUDA context without a device must be refused");
        int32_t p[2] = {1, 2}, out[2];
        bq_gen_opts g = {.size = sizeof g, .n_new = 2, .top_p = 1, .device = 1};
        CHECK(bq_generate(m, p, 2, &g, out, NULL) == BQ_ERR_UNSUPPORTED, "generate on CUDA without a device must be refused");
        const char *var[5] = {"BQ_CUDA_FUSE", "BQ_CUDA_PDL", "BQ_CUDA_GEMV", "BQ_CUDA_ATTN", "BQ_CUDA_PIECES"};  /* mistyped switches: refused by name, first */
        for (int k = 0; k < 5; k++) {
            setenv(var[k], "on", 1);
            bq_status st = bq_ctx_new_ex(m, 16, &o, &c);
            int built = !strstr(bq_last_error(), "built without CUDA");
            CHECK(!c && (built ? st == BQ_ERR_ARG && strstr(bq_last_error(), var[k]) : st != BQ_OK), "%s=on: %s", var[k], bq_last_error());
            unsetenv(var[k]);
        }
        o.size = 4;
        CHECK(bq_ctx_new_ex(m, 16, &o, &c) == BQ_ERR_ARG, "options without their size must be refused");
        bq_format *f;
        OK(bq_format_parse("q4_0", &f));
        float w[64] = {1};
        double G[64 * 64] = {0};
        for (int i = 0; i < 64; i++) G[i * 65] = 1;
        CHECK(ptq_gptq(f, w, 1, 64, G, 0, NULL, 1, NULL) == BQ_ERR_UNSUPPORTED, "gptq on CUDA without a device must be refused");
        bq_format_free(f);
        bq_model_free(m);
        return test_summary("test_backend");
    }
    const char *fuse = getenv("BQ_CUDA_FUSE");
    if (fuse && !strcmp(fuse, "0"))  /* (rope_store and add_check then launch the separate kernels: still compared) */
        SKIP("the fused decode kernels (k_rope_store, k_add_check) are off (BQ_CUDA_FUSE=0): not compared, nor decoded with");
    if (fuse && strcmp(fuse, "2"))  /* (norm_linears and act_linear then call the separate ops: still compared) */
        SKIP("the residual+norm kernel and the int8 GEMV's pieces from the norm and activation kernels are off (BQ_CUDA_FUSE=2, the "
             "default, turns them on): not compared, nor decoded with");
    const char *pieces = getenv("BQ_CUDA_PIECES");
    if (!pieces || strcmp(pieces, "1"))
        SKIP("the int8 GEMV's pieces from the norm and activation kernels are off (BQ_CUDA_PIECES=1 turns them on): not decoded with");
    const char *only = getenv("BQ_BACKEND_ONLY");  /* "gptq": that check alone (bench/gpu_round2.sh) */
    if (only && !strcmp(only, "gptq")) {
        gptq_on_device();
        return test_summary("test_backend");
    }
    one_model("llama-19m", "models/llama-19m-en");
    const char *sh = shared_dir();
    const char *tiny[] = {"llama", "mistral", "qwen2", "qwen3", "opt", "opt-proj", "gpt2"};
    for (int i = 0; i < 7; i++) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/models/tiny/%s", sh ? sh : "../shared", tiny[i]);
        char cj[600];
        snprintf(cj, sizeof cj, "%s/config.json", dir);
        if (access(cj, R_OK)) { SKIP("%s absent: %s not compared on the GPU", cj, tiny[i]); continue; }
        one_model(tiny[i], dir);
    }
    /* last: the checks above keep the random inputs they were tuned on */
    stats_op("models/llama-19m-en");
    calibration_on_device("models/llama-19m-en");
    gptq_on_device();
    return test_summary("test_backend");
}
