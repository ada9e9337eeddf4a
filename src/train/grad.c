/* A pre-norm decoder's forward pass over one window with every activation the
 * backward pass needs kept, then the backward pass (as llm.c's train_gpt2.c). The
 * LLaMA family (RMSNorm, RoPE, grouped-query attention, the SiLU-gated MLP):
 *
 *   x = q_e(E)[ids]
 *   per layer:  h = q_a(rms(x) * g1);  q,k,v = h q_w(W)^T (+ b);  [q,k = rms_head(q,k) * gq,gk (Qwen3)]
 *               q,k = rope(q,k);  k,v = q_kv(k,v)
 *               a = q_t(softmax(q_t(q) q_t(k)^T / sqrt(d) + causal mask)) q_t(v);   x = x + q_a(a) q_w(Wo)^T
 *               h = q_a(rms(x) * g2);  m = silu(h Wg^T) * (h Wu^T);  x = x + q_a(m) q_w(Wd)^T
 *   logits = q_a(rms(x) * gf) q_w(Wh)^T;   loss = mean over t of -log softmax(logits_t)[ids[t+1]]
 *
 * GPT-2 and OPT: LayerNorm (with bias) for rms, x = E[ids] + P[pos] and no rope,
 * m = act(h Wu^T + b) (GELU-tanh, ReLU), biases on every linear.
 *
 * q_* are the fake quantisers (identity without a format; q_t the attention
 * operands'); the backward pass treats each as the identity (straight-through).
 * Every step is an operation of the trainer's backend (tops.h: the CPU's or
 * CUDA's), on its memory. */
#include "train.h"
#include "tops.h"
#include <math.h>
#include <string.h>

/* xq = q_a(x), the input as the linear (and those beside it: q, k, v; gate, up) sees
 * it, kept for dW. */
static bq_status lin_input(bq_trainer *t, const tlin *L, const float *x, float *xq, int n)
{
    if (L->af) return t->op->qdq(t->be, L->af, x, xq, (size_t)n, (size_t)L->l->in, &t->qo);
    t->op->copy(t->be, xq, x, (size_t)n * L->l->in);
    return BQ_OK;
}

/* y = xq W^T + b (xq from lin_input). */
static void lin_fwd(bq_trainer *t, const tlin *L, const float *xq, float *y, int n)
{
    const linear *l = L->l;
    t->op->mm(t->be, MM_FWD, n, l->in, l->out, xq, L->wq, y, 0.0f);
    if (L->b) t->op->bias(t->be, y, L->b, n, l->out);
}

/* dx (+)= dy q_w(W) (straight through q_a); dW += dy^T q_a(x); db += sum dy. Adapters
 * (W_eff = W + s B A) take their part of dW without forming it: dA += s (dy B)^T x,
 * dB += s dy^T (x A^T). */
static void lin_bwd(bq_trainer *t, const tlin *L, const float *xq, const float *dy, float *dx, int n, int add)
{
    const linear *l = L->l;
    tr_be *b = t->be;
    if (L->gw) t->op->mm(b, MM_DW, n, l->in, l->out, dy, xq, L->gw, 1.0f);
    if (L->gA) {
        int r = L->lora;
        float s = train_lora_scale(t), *t1 = t->lr_tmp, *t2 = t->lr_tmp + (size_t)n * r;
        t->op->gemm(b, 0, 0, n, r, l->out, 1.0f, dy, l->out, L->B, r, 0.0f, t1, r);
        t->op->gemm(b, 1, 0, r, l->in, n, s, t1, r, xq, l->in, 1.0f, L->gA, l->in);
        t->op->gemm(b, 0, 1, n, r, l->in, 1.0f, xq, l->in, L->A, l->in, 0.0f, t2, r);
        t->op->gemm(b, 1, 0, l->out, r, n, s, dy, l->out, t2, r, 1.0f, L->gB, r);
    }
    if (L->gb) t->op->bias_bwd(b, dy, L->gb, n, l->out);
    if (dx) t->op->mm(b, MM_DX, n, l->in, l->out, dy, L->wq, dx, add ? 1.0f : 0.0f);
}

/* ---- the window ------------------------------------------------------------------ */

/* Per-layer activations kept for the backward pass. */
typedef struct {
    float *xin, *rs1, *h1q, *q, *k, *v, *P, *aq, *xmid, *rs2, *h2q, *g, *u, *mq;
    float *qpre, *kpre, *rsq, *rsk;  /* per-head q/k norms (Qwen3): their inputs and 1/rms */
} lacts;

/* The per-head norms' part of a layer's activations (none without them). */
static size_t qk_norm_floats(const bq_config *c, size_t N)
{
    return c->qk_norm ? N * ((size_t)(c->heads + c->kv_heads) * (c->head_dim + 1)) : 0;
}

static size_t layer_floats(const bq_config *c, int n)
{
    size_t N = (size_t)n, H = (size_t)c->hidden, qd = (size_t)c->heads * c->head_dim,
           kd = (size_t)c->kv_heads * c->head_dim, FF = (size_t)c->inter;
    return N * (4 * H + 4 + 2 * qd + 2 * kd + 3 * FF) + (size_t)c->heads * N * N + qk_norm_floats(c, N);
}

static lacts layer_acts(const bq_trainer *t, int layer, int n)
{
    const bq_config *c = &t->m->c;
    size_t N = (size_t)n, H = (size_t)c->hidden, qd = (size_t)c->heads * c->head_dim,
           kd = (size_t)c->kv_heads * c->head_dim, FF = (size_t)c->inter;
    float *p = t->acts + (size_t)layer * layer_floats(c, n);
    lacts a;
    a.xin = p; p += N * H;
    a.rs1 = p; p += 2 * N;  /* 1/rms or 1/sd, then (LayerNorm) the mean */
    a.h1q = p; p += N * H;
    a.q = p; p += N * qd;
    a.k = p; p += N * kd;
    a.v = p; p += N * kd;
    a.P = p; p += (size_t)c->heads * N * N;
    a.aq = p; p += N * qd;
    a.xmid = p; p += N * H;
    a.rs2 = p; p += 2 * N;
    a.h2q = p; p += N * H;
    a.g = p; p += N * FF;
    a.u = p; p += N * FF;
    a.mq = p; p += N * FF;
    a.qpre = a.kpre = a.rsq = a.rsk = NULL;
    if (c->qk_norm) {
        a.qpre = p; p += N * qd;
        a.kpre = p; p += N * kd;
        a.rsq = p; p += N * c->heads;
        a.rsk = p;
    }
    return a;
}

size_t train_act_floats(const bq_config *c, int n);
size_t train_act_floats(const bq_config *c, int n)
{
    size_t N = (size_t)n, H = (size_t)c->hidden;
    return (size_t)c->layers * layer_floats(c, n) + N * (2 * H + 2) + N * c->vocab;
}

size_t train_scratch_floats(const bq_config *c, int n);
size_t train_scratch_floats(const bq_config *c, int n)
{
    size_t N = (size_t)n, H = (size_t)c->hidden, qd = (size_t)c->heads * c->head_dim,
           kd = (size_t)c->kv_heads * c->head_dim, FF = (size_t)c->inter;
    return N * (2 * H + (H > qd ? H : qd) + 2 * qd + 2 * kd + 3 * FF) + (size_t)c->kv_heads * N * N + N * (qd + 2 * kd);
}

/* A layer's (or the final) norm of rows of hidden: RMSNorm, or LayerNorm with its bias; rs
 * keeps 1/rms (1/sd), then the rows' means (rs + rows). */
static void norm_fwd(bq_trainer *t, const tnorm *nm, const float *x, float *y, float *rs, int rows)
{
    const bq_config *c = &t->m->c;
    if (c->norm == NORM_RMS) t->op->rms(t->be, x, nm->w, y, rs, rows, c->hidden, c->norm_eps);
    else t->op->ln(t->be, x, nm->w, nm->b, y, rs + rows, rs, rows, c->hidden, c->norm_eps);
}

static void norm_bwd(bq_trainer *t, const tnorm *nm, const float *x, const float *rs, const float *dy, float *dx, int rows)
{
    const bq_config *c = &t->m->c;
    if (c->norm == NORM_RMS) t->op->rms_bwd(t->be, x, nm->w, rs, dy, dx, nm->gw, rows, c->hidden);
    else t->op->ln_bwd(t->be, x, nm->w, rs + rows, rs, dy, dx, nm->gw, nm->gb, rows, c->hidden);
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
    const tr_ops *op = t->op;
    tr_be *b = t->be;
    int H = c->hidden, d = c->head_dim, nh = c->heads, nkv = c->kv_heads, V = c->vocab;
    size_t N = (size_t)n, qd = (size_t)nh * d, kd = (size_t)nkv * d, nH = N * H, nI = N * c->inter;
    float eps = c->norm_eps;
    int gated = c->act == ACT_SILU_GATED;
    bq_status st = BQ_OK;
#define Q(call) do { if (!st) st = (call); } while (0)

    /* final activations after the layers' */
    float *xf = t->acts + (size_t)c->layers * layer_floats(c, n), *rsf = xf + nH, *hfq = rsf + 2 * N, *lg = hfq + nH;
    /* scratch */
    float *s = t->scratch, *dx = s, *dh = dx + nH, *tmp = dh + nH, *dq = tmp + N * (qd > (size_t)H ? qd : (size_t)H), *dk = dq + N * qd, *dv = dk + N * kd,
          *da = dv + N * kd, *dm = da + N * qd, *dg = dm + nI, *du = dg + nI, *dP = du + nI, *qs = dP + (size_t)nkv * N * N;
    tr_att at = {n, nh, nkv, d, c->sliding_window, t->attf, &t->qo, dP, qs};

    /* forward */
    float *x = c->layers ? layer_acts(t, 0, n).xin : xf;
    op->embed(b, ids, n, t->embf ? t->embq : t->emb, H, x);
    if (t->pos) op->add(b, x, t->pos + (size_t)c->pos_offset * H, nH);  /* positions 0 .. n-1 */
    for (int l = 0; l < c->layers; l++) {
        lacts A = layer_acts(t, l, n);
        norm_fwd(t, &t->norm[2 * l], A.xin, tmp, A.rs1, n);
        Q(lin_input(t, lin_of(t, l, 0), tmp, A.h1q, n));  /* one format for q, k, v (trainer.c) */
        lin_fwd(t, lin_of(t, l, 0), A.h1q, A.qpre ? A.qpre : A.q, n);
        lin_fwd(t, lin_of(t, l, 1), A.h1q, A.kpre ? A.kpre : A.k, n);
        lin_fwd(t, lin_of(t, l, 2), A.h1q, A.v, n);
        if (c->qk_norm) {  /* RMS over each head's d values */
            op->rms(b, A.qpre, t->qkn[2 * l].w, A.q, A.rsq, n * nh, d, eps);
            op->rms(b, A.kpre, t->qkn[2 * l + 1].w, A.k, A.rsk, n * nkv, d, eps);
        }
        if (c->rope) {
            op->rope(b, A.q, n, nh, d, 1);
            op->rope(b, A.k, n, nkv, d, 1);
        }
        if (t->kvf) {
            Q(op->qdq(b, t->kvf, A.k, A.k, N * nkv, (size_t)d, &t->qo));
            Q(op->qdq(b, t->kvf, A.v, A.v, N * nkv, (size_t)d, &t->qo));
        }
        Q(op->att(b, &at, A.q, A.k, A.v, A.P, tmp));
        Q(lin_input(t, lin_of(t, l, 3), tmp, A.aq, n));
        lin_fwd(t, lin_of(t, l, 3), A.aq, A.xmid, n);
        op->add(b, A.xmid, A.xin, nH);
        norm_fwd(t, &t->norm[2 * l + 1], A.xmid, tmp, A.rs2, n);
        Q(lin_input(t, lin_of(t, l, 5), tmp, A.h2q, n));  /* one format for gate and up */
        if (gated) lin_fwd(t, lin_of(t, l, 4), A.h2q, A.g, n);
        lin_fwd(t, lin_of(t, l, 5), A.h2q, A.u, n);
        op->act(b, c->act, A.g, A.u, dm, nI);
        float *xout = l + 1 < c->layers ? layer_acts(t, l + 1, n).xin : xf;
        Q(lin_input(t, lin_of(t, l, 6), dm, A.mq, n));
        lin_fwd(t, lin_of(t, l, 6), A.mq, xout, n);
        op->add(b, xout, A.xmid, nH);
    }
    int rows = n - 1;  /* the last token predicts nothing here */
    norm_fwd(t, &t->norm[2 * c->layers], xf, tmp, rsf, rows);
    tlin *hd = lin_of(t, -1, 0);
    Q(lin_input(t, hd, tmp, hfq, rows));
    lin_fwd(t, hd, hfq, lg, rows);

    /* loss and dlogits = (softmax - onehot) * gscale / rows */
    double nll = 0;
    Q(op->xent(b, lg, ids, rows, V, (float)(gscale / rows), &nll));
    if (st) return st;
    *loss = nll / rows;
    if (!isfinite(*loss)) return bq_fail(BQ_ERR_NONFINITE, "the loss is %s", isnan(*loss) ? "NaN" : "Inf");
    if (gscale == 0.0) return BQ_OK;  /* evaluation: no gradients */

    /* backward: head and final norm */
    lin_bwd(t, hd, hfq, lg, dh, rows, 0);
    op->zero(b, dx, nH);
    norm_bwd(t, &t->norm[2 * c->layers], xf, rsf, dh, dx, rows);
    for (int l = c->layers - 1; l >= 0; l--) {
        lacts A = layer_acts(t, l, n);
        /* MLP: x_out = x_mid + q_a(m) Wd^T */
        lin_bwd(t, lin_of(t, l, 6), A.mq, dx, dm, n, 0);
        op->act_bwd(b, c->act, A.g, A.u, dm, dg, du, nI);
        lin_bwd(t, lin_of(t, l, 5), A.h2q, du, dh, n, 0);
        if (gated) lin_bwd(t, lin_of(t, l, 4), A.h2q, dg, dh, n, 1);
        norm_bwd(t, &t->norm[2 * l + 1], A.xmid, A.rs2, dh, dx, n);
        /* attention: x_mid = x_in + q_a(a) Wo^T */
        lin_bwd(t, lin_of(t, l, 3), A.aq, dx, da, n, 0);
        Q(op->att_bwd(b, &at, A.q, A.k, A.v, A.P, da, dq, dk, dv));
        if (c->rope) {
            op->rope(b, dq, n, nh, d, -1);
            op->rope(b, dk, n, nkv, d, -1);
        }
        if (c->qk_norm) {  /* through the per-head norms, into tmp, one at a time */
            op->zero(b, tmp, N * qd);
            op->rms_bwd(b, A.qpre, t->qkn[2 * l].w, A.rsq, dq, tmp, t->qkn[2 * l].gw, n * nh, d);
            lin_bwd(t, lin_of(t, l, 0), A.h1q, tmp, dh, n, 0);
            op->zero(b, tmp, N * kd);
            op->rms_bwd(b, A.kpre, t->qkn[2 * l + 1].w, A.rsk, dk, tmp, t->qkn[2 * l + 1].gw, n * nkv, d);
            lin_bwd(t, lin_of(t, l, 1), A.h1q, tmp, dh, n, 1);
        } else {
            lin_bwd(t, lin_of(t, l, 0), A.h1q, dq, dh, n, 0);
            lin_bwd(t, lin_of(t, l, 1), A.h1q, dk, dh, n, 1);
        }
        lin_bwd(t, lin_of(t, l, 2), A.h1q, dv, dh, n, 1);
        norm_bwd(t, &t->norm[2 * l], A.xin, A.rs1, dh, dx, n);
    }
    if (t->g_emb) op->embed_bwd(b, ids, n, dx, H, t->g_emb);
    if (t->g_pos) op->add(b, t->g_pos + (size_t)c->pos_offset * H, dx, nH);
#undef Q
    return op->status(b);
}
