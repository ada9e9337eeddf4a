/* The LLaMA family's forward pass over one window with every activation the
 * backward pass needs kept, then the backward pass (as llm.c's train_gpt2.c,
 * with RMSNorm, RoPE, grouped-query attention and the SiLU-gated MLP):
 *
 *   x = E[ids]
 *   per layer:  h = q_a(rms(x) * g1);  q,k,v = h q_w(W)^T (+ b);  q,k = rope(q,k); k,v = q_kv(k,v)
 *               a = softmax(q k^T / sqrt(d) + causal mask) v;   x = x + q_a(a) q_w(Wo)^T
 *               h = q_a(rms(x) * g2);  m = silu(h Wg^T) * (h Wu^T);  x = x + q_a(m) q_w(Wd)^T
 *   logits = q_a(rms(x) * gf) q_w(Wh)^T;   loss = mean over t of -log softmax(logits_t)[ids[t+1]]
 *
 * q_* are the fake quantisers (identity without a format); the backward pass
 * treats each as the identity (straight-through). Products run as single-threaded
 * SGEMMs on fixed slices spread over the pool, as in the inference engine, so the
 * bits do not depend on the thread count. */
#include "train.h"
#include "backend.h"
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { SLICE = 64 };

/* ---- products in fixed slices ------------------------------------------------ */

typedef enum { MM_FWD, MM_DX, MM_DW } mm_kind;
typedef struct {
    mm_kind kind;
    int n, in, out;
    const float *a, *w;  /* FWD: x, W;  DX: dy, W;  DW: dy, x */
    float *y;            /* FWD: y [n, out];  DX: dx [n, in];  DW: dW [out, in] */
    float beta;          /* DX: 0 overwrites dx, 1 adds */
} mm_job;

static void mm_range(void *arg, size_t b, size_t e)
{
    const mm_job *j = arg;
    for (size_t s = b; s < e; s++) {
        int lim = j->kind == MM_DX ? j->in : j->out, c0 = (int)s * SLICE, c1 = c0 + SLICE < lim ? c0 + SLICE : lim;
        switch (j->kind) {
        case MM_FWD:  /* y[:, c0:c1] = x W[c0:c1]^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->n, c1 - c0, j->in, 1.0f, j->a, j->in,
                        j->w + (size_t)c0 * j->in, j->in, 0.0f, j->y + c0, j->out);
            break;
        case MM_DX:   /* dx[:, c0:c1] (+)= dy W[:, c0:c1] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, j->n, c1 - c0, j->out, 1.0f, j->a, j->out,
                        j->w + c0, j->in, j->beta, j->y + c0, j->in);
            break;
        case MM_DW:   /* dW[c0:c1] += dy[:, c0:c1]^T x */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c1 - c0, j->in, j->n, 1.0f, j->a + c0, j->out,
                        j->w, j->in, 1.0f, j->y + (size_t)c0 * j->in, j->in);
            break;
        }
    }
}

static void mm(bq_trainer *t, mm_kind k, int n, int in, int out, const float *a, const float *w, float *y, float beta)
{
    mm_job j = {k, n, in, out, a, w, y, beta};
    int lim = k == MM_DX ? in : out;
    size_t slices = (size_t)(lim + SLICE - 1) / SLICE;
    double work = (double)n * in * out;
    int th = work < 1e6 ? 1 : t->threads;
    bq_pool_for(t->pool, slices, th, mm_range, &j);
}

/* xq = q_a(x), the input as the linear (and those beside it: q, k, v; gate, up) sees
 * it, kept for dW. */
static void lin_input(bq_trainer *t, const tlin *L, const float *x, float *xq, int n)
{
    if (L->af) bq_qdq(L->af, x, xq, (size_t)n, (size_t)L->l->in, &t->qo);
    else memcpy(xq, x, (size_t)n * L->l->in * sizeof *xq);
}

/* y = xq W^T + b (xq from lin_input). */
static void lin_fwd(bq_trainer *t, const tlin *L, const float *xq, float *y, int n)
{
    const linear *l = L->l;
    mm(t, MM_FWD, n, l->in, l->out, xq, L->wq, y, 0.0f);
    if (l->b)
        for (int r = 0; r < n; r++)
            for (int o = 0; o < l->out; o++) y[(size_t)r * l->out + o] += l->b[o];
}

/* dx (+)= dy q_w(W) (straight through q_a); dW += dy^T q_a(x); db += sum dy. */
static void lin_bwd(bq_trainer *t, const tlin *L, const float *xq, const float *dy, float *dx, int n, int add)
{
    const linear *l = L->l;
    if (L->gw) mm(t, MM_DW, n, l->in, l->out, dy, xq, L->gw, 1.0f);
    if (L->gb)
        for (int r = 0; r < n; r++)
            for (int o = 0; o < l->out; o++) L->gb[o] += dy[(size_t)r * l->out + o];
    if (dx) mm(t, MM_DX, n, l->in, l->out, dy, L->wq, dx, add ? 1.0f : 0.0f);
}

/* ---- element-wise steps -------------------------------------------------------- */

/* dx += rstd (dy w - xhat mean(dy w xhat)), xhat = x rstd;  gw += sum dy xhat */
static void rms_bwd(const float *x, const float *w, const float *rstd, const float *dy, float *dx, float *gw, int n, int d)
{
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * d, *dr = dy + (size_t)r * d;
        float s = rstd[r];
        double dot = 0;
        for (int i = 0; i < d; i++) dot += (double)dr[i] * w[i] * (xr[i] * s);
        float mean = (float)(dot / d);
        for (int i = 0; i < d; i++) {
            float xh = xr[i] * s;
            dx[(size_t)r * d + i] += s * (dr[i] * w[i] - xh * mean);
            if (gw) gw[i] += dr[i] * xh;
        }
    }
}

/* Rotary embedding (Hugging Face: element i pairs with i + d/2); dir -1 rotates back
 * (the backward pass: the transpose of a rotation is its inverse). */
static void rope(const bq_trainer *t, float *x, int n, int heads, int d, int dir)
{
    int half = d / 2;
    for (int r = 0; r < n; r++)
        for (int h = 0; h < heads; h++) {
            float *v = x + ((size_t)r * heads + h) * d;
            for (int i = 0; i < half; i++) {
                float cs = t->rope_cos[(size_t)r * half + i], sn = dir * t->rope_sin[(size_t)r * half + i];
                float a = v[i], b = v[i + half];
                v[i] = a * cs - b * sn;
                v[i + half] = b * cs + a * sn;
            }
        }
}

static float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/* ---- attention, per group of heads sharing one K/V head ------------------------ */

typedef struct {
    const bq_trainer *t;
    int n, heads, kvh, d;
    float *q, *k, *v, *P, *a;       /* forward: a = softmax(q k^T s) v, P kept */
    const float *da;                /* backward: dq, dk, dv from da */
    float *dq, *dk, *dv, *dP;
} att_job;

static void att_fwd_range(void *arg, size_t g0, size_t g1)
{
    const att_job *j = arg;
    int n = j->n, d = j->d, qd = j->heads * d, kd = j->kvh * d, per = j->heads / j->kvh;
    float scale = 1.0f / sqrtf((float)d);
    for (size_t g = g0; g < g1; g++)
        for (int h = (int)g * per; h < ((int)g + 1) * per; h++) {
            float *P = j->P + (size_t)h * n * n;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, scale, j->q + (size_t)h * d, qd,
                        j->k + g * d, kd, 0.0f, P, n);
            for (int r = 0; r < n; r++) {
                float *row = P + (size_t)r * n, mx = -INFINITY;
                int f = attn_first_key(&j->t->m->c, r);
                for (int c = f; c <= r; c++) mx = row[c] > mx ? row[c] : mx;
                double sum = 0;
                for (int c = f; c <= r; c++) sum += (row[c] = expf(row[c] - mx));
                float inv = (float)(1.0 / sum);
                for (int c = 0; c < n; c++) row[c] = c >= f && c <= r ? row[c] * inv : 0.0f;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, n, 1.0f, P, n, j->v + g * d, kd, 0.0f,
                        j->a + (size_t)h * d, qd);
        }
}

static void att_bwd_range(void *arg, size_t g0, size_t g1)
{
    const att_job *j = arg;
    int n = j->n, d = j->d, qd = j->heads * d, kd = j->kvh * d, per = j->heads / j->kvh;
    float scale = 1.0f / sqrtf((float)d);
    for (size_t g = g0; g < g1; g++) {
        float *dP = j->dP + g * (size_t)n * n;
        for (int h = (int)g * per; h < ((int)g + 1) * per; h++) {
            const float *P = j->P + (size_t)h * n * n;
            /* dV += P^T dA;  dP = dA V^T */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, n, 1.0f, P, n, j->da + (size_t)h * d, qd, 1.0f,
                        j->dv + g * d, kd);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, 1.0f, j->da + (size_t)h * d, qd,
                        j->v + g * d, kd, 0.0f, dP, n);
            /* softmax: dS = P (dP - sum_c P dP), times the score scale */
            for (int r = 0; r < n; r++) {
                float *dr = dP + (size_t)r * n;
                const float *pr = P + (size_t)r * n;
                double dot = 0;
                for (int c = 0; c <= r; c++) dot += (double)pr[c] * dr[c];
                for (int c = 0; c < n; c++) dr[c] = c <= r ? pr[c] * (dr[c] - (float)dot) * scale : 0.0f;
            }
            /* dQ = dS K;  dK += dS^T Q */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, n, 1.0f, dP, n, j->k + g * d, kd, 0.0f,
                        j->dq + (size_t)h * d, qd);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, n, 1.0f, dP, n, j->q + (size_t)h * d, qd, 1.0f,
                        j->dk + g * d, kd);
        }
    }
}

/* ---- the window ------------------------------------------------------------------ */

/* Per-layer activations kept for the backward pass. */
typedef struct { float *xin, *rs1, *h1q, *q, *k, *v, *P, *aq, *xmid, *rs2, *h2q, *g, *u, *mq; } lacts;

static size_t layer_floats(const bq_config *c, int n)
{
    size_t N = (size_t)n, H = (size_t)c->hidden, qd = (size_t)c->heads * c->head_dim,
           kd = (size_t)c->kv_heads * c->head_dim, FF = (size_t)c->inter;
    return N * (4 * H + 2 + 2 * qd + 2 * kd + 3 * FF) + (size_t)c->heads * N * N;
}

static lacts layer_acts(const bq_trainer *t, int layer, int n)
{
    const bq_config *c = &t->m->c;
    size_t N = (size_t)n, H = (size_t)c->hidden, qd = (size_t)c->heads * c->head_dim,
           kd = (size_t)c->kv_heads * c->head_dim, FF = (size_t)c->inter;
    float *p = t->acts + (size_t)layer * layer_floats(c, n);
    lacts a;
    a.xin = p; p += N * H;
    a.rs1 = p; p += N;
    a.h1q = p; p += N * H;
    a.q = p; p += N * qd;
    a.k = p; p += N * kd;
    a.v = p; p += N * kd;
    a.P = p; p += (size_t)c->heads * N * N;
    a.aq = p; p += N * qd;
    a.xmid = p; p += N * H;
    a.rs2 = p; p += N;
    a.h2q = p; p += N * H;
    a.g = p; p += N * FF;
    a.u = p; p += N * FF;
    a.mq = p;
    return a;
}

size_t train_act_floats(const bq_config *c, int n);
size_t train_act_floats(const bq_config *c, int n)
{
    size_t N = (size_t)n, H = (size_t)c->hidden;
    return (size_t)c->layers * layer_floats(c, n) + N * (2 * H + 1) + N * c->vocab;
}

size_t train_scratch_floats(const bq_config *c, int n);
size_t train_scratch_floats(const bq_config *c, int n)
{
    size_t N = (size_t)n, H = (size_t)c->hidden, qd = (size_t)c->heads * c->head_dim,
           kd = (size_t)c->kv_heads * c->head_dim, FF = (size_t)c->inter;
    return N * (2 * H + (H > qd ? H : qd) + 2 * qd + 2 * kd + 3 * FF) + (size_t)c->kv_heads * N * N;
}

static tlin *lin_of(bq_trainer *t, int layer, int r) { return &t->lin[layer < 0 ? t->m->c.layers * 7 : layer * 7 + r]; }

bq_status train_window(bq_trainer *t, const int32_t *ids, int n, double gscale, double *loss)
{
    const bq_model *M = t->m;
    const bq_config *c = &M->c;
    if (n < 2 || n > t->T) return bq_fail(BQ_ERR_ARG, "a training window takes 2 to %d tokens, not %d", t->T, n);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab)
            return bq_fail(BQ_ERR_ARG, "token id %d at position %d is outside the vocabulary [0, %d)", ids[i], i, c->vocab);
    int H = c->hidden, d = c->head_dim, nh = c->heads, nkv = c->kv_heads, FF = c->inter, V = c->vocab;
    size_t N = (size_t)n, qd = (size_t)nh * d, kd = (size_t)nkv * d, nH = N * H, nI = N * FF;
    float eps = c->norm_eps;

    /* final activations after the layers' */
    float *xf = t->acts + (size_t)c->layers * layer_floats(c, n), *rsf = xf + nH, *hfq = rsf + N, *lg = hfq + nH;
    /* scratch */
    float *s = t->scratch, *dx = s, *dh = dx + nH, *tmp = dh + nH, *dq = tmp + N * (qd > (size_t)H ? qd : (size_t)H), *dk = dq + N * qd, *dv = dk + N * kd,
          *da = dv + N * kd, *dm = da + N * qd, *dg = dm + nI, *du = dg + nI, *dP = du + nI;

    /* forward */
    float *x = c->layers ? layer_acts(t, 0, n).xin : xf;
    for (int i = 0; i < n; i++) memcpy(x + (size_t)i * H, M->tok_emb + (size_t)ids[i] * H, (size_t)H * sizeof *x);
    for (int l = 0; l < c->layers; l++) {
        lacts A = layer_acts(t, l, n);
        const layer_w *W = &M->L[l];
        rms_rows(A.xin, W->ln1.w, tmp, A.rs1, n, H, eps);
        lin_input(t, lin_of(t, l, 0), tmp, A.h1q, n);  /* one format for q, k, v (trainer.c) */
        lin_fwd(t, lin_of(t, l, 0), A.h1q, A.q, n);
        lin_fwd(t, lin_of(t, l, 1), A.h1q, A.k, n);
        lin_fwd(t, lin_of(t, l, 2), A.h1q, A.v, n);
        rope(t, A.q, n, nh, d, 1);
        rope(t, A.k, n, nkv, d, 1);
        if (t->kvf) {
            bq_qdq(t->kvf, A.k, A.k, N * nkv, (size_t)d, &t->qo);
            bq_qdq(t->kvf, A.v, A.v, N * nkv, (size_t)d, &t->qo);
        }
        att_job aj = {t, n, nh, nkv, d, A.q, A.k, A.v, A.P, tmp, NULL, NULL, NULL, NULL, NULL};
        bq_pool_for(t->pool, (size_t)nkv, t->threads, att_fwd_range, &aj);
        lin_input(t, lin_of(t, l, 3), tmp, A.aq, n);
        lin_fwd(t, lin_of(t, l, 3), A.aq, A.xmid, n);
        for (size_t i = 0; i < nH; i++) A.xmid[i] += A.xin[i];
        rms_rows(A.xmid, W->ln2.w, tmp, A.rs2, n, H, eps);
        lin_input(t, lin_of(t, l, 4), tmp, A.h2q, n);  /* one format for gate and up */
        lin_fwd(t, lin_of(t, l, 4), A.h2q, A.g, n);
        lin_fwd(t, lin_of(t, l, 5), A.h2q, A.u, n);
        for (size_t i = 0; i < nI; i++) dm[i] = A.u[i] * A.g[i] * sigmoidf(A.g[i]);
        float *xout = l + 1 < c->layers ? layer_acts(t, l + 1, n).xin : xf;
        lin_input(t, lin_of(t, l, 6), dm, A.mq, n);
        lin_fwd(t, lin_of(t, l, 6), A.mq, xout, n);
        for (size_t i = 0; i < nH; i++) xout[i] += A.xmid[i];
    }
    int rows = n - 1;  /* the last token predicts nothing here */
    rms_rows(xf, M->final_ln.w, tmp, rsf, rows, H, eps);
    tlin *hd = lin_of(t, -1, 0);
    lin_input(t, hd, tmp, hfq, rows);
    lin_fwd(t, hd, hfq, lg, rows);

    /* loss and dlogits = (softmax - onehot) * gscale / rows */
    double nll = 0;
    float gs = (float)(gscale / rows);
    for (int r = 0; r < rows; r++) {
        float *row = lg + (size_t)r * V, mx = -INFINITY;
        for (int v = 0; v < V; v++) mx = row[v] > mx ? row[v] : mx;
        int tgt = ids[r + 1];
        double sum = 0, z = row[tgt] - mx;
        for (int v = 0; v < V; v++) sum += (row[v] = expf(row[v] - mx));
        nll += log(sum) - z;
        float inv = (float)(1.0 / sum) * gs;
        for (int v = 0; v < V; v++) row[v] *= inv;
        row[tgt] -= gs;
    }
    *loss = nll / rows;
    if (!isfinite(*loss)) return bq_fail(BQ_ERR_NONFINITE, "the loss is %s", isnan(*loss) ? "NaN" : "Inf");
    if (gscale == 0.0) return BQ_OK;  /* evaluation: no gradients */

    /* backward: head and final norm */
    lin_bwd(t, hd, hfq, lg, dh, rows, 0);
    memset(dx, 0, nH * sizeof *dx);
    rms_bwd(xf, M->final_ln.w, rsf, dh, dx, t->g_final, rows, H);
    for (int l = c->layers - 1; l >= 0; l--) {
        lacts A = layer_acts(t, l, n);
        const layer_w *W = &M->L[l];
        /* MLP: x_out = x_mid + q_a(m) Wd^T */
        lin_bwd(t, lin_of(t, l, 6), A.mq, dx, dm, n, 0);
        for (size_t i = 0; i < nI; i++) {
            float sg = sigmoidf(A.g[i]), gv = A.g[i];
            du[i] = dm[i] * gv * sg;
            dg[i] = dm[i] * A.u[i] * sg * (1.0f + gv * (1.0f - sg));
        }
        lin_bwd(t, lin_of(t, l, 5), A.h2q, du, dh, n, 0);
        lin_bwd(t, lin_of(t, l, 4), A.h2q, dg, dh, n, 1);
        rms_bwd(A.xmid, W->ln2.w, A.rs2, dh, dx, t->g_ln ? t->g_ln[2 * l + 1] : NULL, n, H);
        /* attention: x_mid = x_in + q_a(a) Wo^T */
        lin_bwd(t, lin_of(t, l, 3), A.aq, dx, da, n, 0);
        memset(dk, 0, N * kd * sizeof *dk);
        memset(dv, 0, N * kd * sizeof *dv);
        att_job bj = {t, n, nh, nkv, d, A.q, A.k, A.v, A.P, NULL, da, dq, dk, dv, dP};
        bq_pool_for(t->pool, (size_t)nkv, t->threads, att_bwd_range, &bj);
        rope(t, dq, n, nh, d, -1);
        rope(t, dk, n, nkv, d, -1);
        lin_bwd(t, lin_of(t, l, 0), A.h1q, dq, dh, n, 0);
        lin_bwd(t, lin_of(t, l, 1), A.h1q, dk, dh, n, 1);
        lin_bwd(t, lin_of(t, l, 2), A.h1q, dv, dh, n, 1);
        rms_bwd(A.xin, W->ln1.w, A.rs1, dh, dx, t->g_ln ? t->g_ln[2 * l] : NULL, n, H);
    }
    if (t->g_emb)
        for (int i = 0; i < n; i++) {
            float *ge = t->g_emb + (size_t)ids[i] * H;
            for (int k = 0; k < H; k++) ge[k] += dx[(size_t)i * H + k];
        }
    return BQ_OK;
}
