/* The transformer forward pass, written once over the backend operations
 * (backend.h: the CPU in cpu.c, CUDA in src/cuda/engine.cu), batched over a
 * window of tokens, with a KV cache. Reads like the architectures it implements:
 *
 *   x = embed(ids) (+ learned positions)
 *   per layer:  h = norm(x); q,k,v = h W^T (+ RoPE); a = softmax(q k^T / sqrt(d)) v
 *               x = x + a Wo^T;  h = norm(x);  x = x + mlp(h)
 *   (OPT post-LN: x = norm(x + attn(x)), x = norm(x + mlp(x)))
 *   logits = norm(x) W_head^T
 *
 * Quantisation points: each linear quantises its input (the backend's linear),
 * the KV cache is quantised as it is stored (here), attention operands inside
 * the backend's attention. */
#include "engine.h"
#include "backend.h"
#include "bq_cuda.h"
#include "pmat.h"
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_default_threads;  /* bq_set_threads: the default of contexts made by bq_ctx_new */

/* A pipeline stage: a backend holding the layers [b->lo, b->hi), and its activations. */
typedef struct {
    be *b;
    int cap;  /* tokens the activations below hold (backend memory) */
    float *x, *h, *q, *k, *v, *a, *g, *u, *e;
} stage;

struct bq_ctx {
    const bq_model *m;
    stage *st;
    int nst;         /* stages; the first embeds, the last holds the head */
    int max_tokens, pos, check;
    int replay;      /* one-token steps may be recorded and replayed (CUDA graphs) */
    unsigned bufs;   /* bumped whenever the buffers or options a recording holds change */
    int lg_rows;     /* rows of lg, the last stage's logits (when the caller's cannot be used) */
    float *lg;
    float *hx;       /* host: the hidden state passed from stage to stage, cap tokens */
    int hx_cap;
    bq_observer observe;  /* calibration: each linear's input */
    void *observe_arg;
};

static stage *last_stage(bq_ctx *c) { return &c->st[c->nst - 1]; }

bq_status bq_ctx_set_observer(bq_ctx *c, bq_observer fn, void *arg)
{
    for (int i = 0; fn && i < c->nst; i++)
        if (!c->st[i].b->ops->host && !c->st[i].b->ops->stats_add)
            return bq_fail(BQ_ERR_UNSUPPORTED, "calibration cannot observe the %s backend", c->st[i].b->ops->name);
    c->observe = fn;
    c->observe_arg = arg;
    return BQ_OK;
}

/* Every linear goes through here: the observer first, then the backend; the
 * linears of one layer on one input (q, k, v; up, gate) together where the
 * backend can (one meeting of its threads), else one by one. */
static bq_status run_linears(bq_ctx *c, be *b, int layer, const lin_role *rs, int count, const float *x, float *const *ys, int n)
{
    if (c->observe)
        for (int i = 0; i < count; i++) c->observe(c->observe_arg, b, layer, (int)rs[i], x, n, model_linear(c->m, layer, rs[i])->in);
    if (b->ops->linears) return b->ops->linears(b, layer, rs, count, x, ys, n);
    bq_status st = BQ_OK;
    for (int i = 0; i < count && !st; i++) st = b->ops->linear(b, layer, rs[i], x, ys[i], n);
    return st;
}

static bq_status run_linear(bq_ctx *c, be *b, int layer, lin_role r, const float *x, float *y, int n)
{
    return run_linears(c, b, layer, &r, 1, x, &y, n);
}

const char *const bq_check_names[3] = {"attention output (o_proj)", "MLP output (down_proj)", "logits"};

bq_status be_nonfinite(int isnan_, int layer, check_site s, int token)
{
    return bq_fail(BQ_ERR_NONFINITE, "non-finite activation (%s) in layer %d: %s at token %d",
                   isnan_ ? "NaN" : "Inf", layer, bq_check_names[s], token);
}

const linear *model_linear(const bq_model *m, int layer, lin_role r)
{
    if (layer < 0) return r == R_HEAD ? &m->head : r == R_PROJ_IN ? &m->proj_in : &m->proj_out;
    const layer_w *L = &m->L[layer];
    const linear *ls[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
    return ls[r];
}

const normp *model_norm(const bq_model *m, int layer, norm_role r)
{
    if (layer < 0) return &m->final_ln;
    const layer_w *L = &m->L[layer];
    const normp *ns[] = {&L->ln1, &L->ln2, &L->q_norm, &L->k_norm};
    return ns[r];
}

static void release_acts(stage *S)
{
    float **p[] = {&S->x, &S->h, &S->q, &S->k, &S->v, &S->a, &S->g, &S->u, &S->e};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) { S->b->ops->release(S->b, *p[i]); *p[i] = NULL; }
    S->cap = 0;
}

static bq_status ensure_stage(bq_ctx *c, stage *S, int n)
{
    if (n <= S->cap) return BQ_OK;
    release_acts(S);
    const bq_config *m = &c->m->c;
    size_t H = (size_t)m->hidden, qd = (size_t)m->heads * m->head_dim, kvd = (size_t)m->kv_heads * m->head_dim;
    size_t ffn = (size_t)m->inter, E = (size_t)m->embed_dim, N = (size_t)n;
    float **p[] = {&S->x, &S->h, &S->q, &S->k, &S->v, &S->a, &S->g, &S->u, &S->e};
    size_t sz[] = {N * H, N * (H > E ? H : E), N * qd, N * kvd, N * kvd, N * qd, N * ffn, N * ffn, N * E};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++)
        if (!(*p[i] = S->b->ops->alloc(S->b, sz[i] * 4))) {
            release_acts(S);
            return bq_fail(BQ_ERR_NOMEM, "out of %s memory for %d tokens of activations", S->b->ops->name, n);
        }
    S->cap = n;
    c->bufs++;
    return BQ_OK;
}

static bq_status ensure_acts(bq_ctx *c, int n)
{
    for (int s = 0; s < c->nst; s++) {
        bq_status st = ensure_stage(c, &c->st[s], n);
        if (st) return st;
    }
    if (c->nst > 1 && n > c->hx_cap) {
        free(c->hx);
        c->hx = malloc((size_t)n * c->m->c.hidden * sizeof *c->hx);
        c->hx_cap = c->hx ? n : 0;
        if (!c->hx) return bq_fail(BQ_ERR_NOMEM, "out of memory for %d tokens passed between stages", n);
    }
    return BQ_OK;
}

static bq_status ensure_logits(bq_ctx *c, int rows)
{
    if (rows <= c->lg_rows) return BQ_OK;
    be *b = last_stage(c)->b;
    b->ops->release(b, c->lg);
    c->lg = b->ops->alloc(b, (size_t)rows * c->m->c.vocab * 4);
    c->lg_rows = c->lg ? rows : 0;
    c->bufs++;
    return c->lg ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of %s memory for %d rows of logits", b->ops->name, rows);
}

/* ---- pipeline stages: the layers split by weight memory ---- */

static size_t linear_bytes(const linear *l)
{
    size_t w = l->pw ? pmat_bytes(l->pw) : l->w ? (size_t)l->in * l->out * 4 : 0;
    return w + (l->b ? (size_t)l->out * 4 : 0);
}

/* lo[s] = the first layer of stage s (lo[nst] = layers): each stage's weights, the
 * embedding counted to the first and the head to the last, as near as whole layers
 * allow to an equal share; every stage holds at least one layer. */
static void plan_stages(const bq_model *m, int nst, int *lo)
{
    int L = m->c.layers;
    size_t V = (size_t)m->c.vocab, E = (size_t)m->c.embed_dim;
    double emb = m->tok_emb ? (double)(V * E * 4) : m->emb_p ? (double)pmat_bytes(m->emb_p) : 0;
    double head = (double)(linear_bytes(&m->head) + linear_bytes(&m->proj_out));
    double *cum = malloc(((size_t)L + 1) * sizeof *cum);  /* cum[l]: the bytes before layer l */
    lo[0] = 0;
    lo[nst] = L;
    if (!cum) {  /* no memory to weigh them: equal layer counts */
        for (int s = 1; s < nst; s++) lo[s] = (int)((long long)L * s / nst);
        return;
    }
    cum[0] = emb + (double)linear_bytes(&m->proj_in);
    for (int l = 0; l < L; l++) {
        double w = 0;
        for (int r = R_Q; r < R_HEAD; r++) w += (double)linear_bytes(model_linear(m, l, (lin_role)r));
        cum[l + 1] = cum[l] + w;
    }
    double total = cum[L] + head;
    for (int s = 1; s < nst; s++) {
        double target = total * s / nst;
        int b = lo[s - 1] + 1, most = L - (nst - s);  /* room for the stages after it */
        while (b < most && cum[b] < target) b++;
        if (b > lo[s - 1] + 1 && target - cum[b - 1] < cum[b] - target) b--;
        lo[s] = b;
    }
    free(cum);
}

static bq_status check_stages(const bq_model *m, int nst)
{
    if (nst < 1 || nst > BQ_MAX_STAGES) return bq_fail(BQ_ERR_ARG, "%d pipeline stages: expected 1 to %d", nst, BQ_MAX_STAGES);
    if (nst > m->c.layers)
        return bq_fail(BQ_ERR_ARG, "%d pipeline stages for %d layers: a stage holds at least one layer", nst, m->c.layers);
    return BQ_OK;
}

bq_status bq_model_stage_plan(const bq_model *m, int stages, int *first_layer)
{
    bq_status st = check_stages(m, stages);
    if (!st) plan_stages(m, stages, first_layer);
    return st;
}

int bq_ctx_stages(const bq_ctx *c) { return c->nst; }

bq_status bq_ctx_stage(const bq_ctx *c, int s, bq_stage_info *out)
{
    if (s < 0 || s >= c->nst) return bq_fail(BQ_ERR_ARG, "stage %d of %d", s, c->nst);
    const be *b = c->st[s].b;
    out->first_layer = b->lo;
    out->end_layer = b->hi;
    out->device_bytes = be_cuda_bytes(b);
    out->device = be_cuda_ordinal(b);
    return BQ_OK;
}

static void free_stages(bq_ctx *c)
{
    for (int s = 0; s < c->nst; s++) {
        stage *S = &c->st[s];
        if (!S->b) continue;
        if (S->b->ops->bind) S->b->ops->bind(S->b);
        release_acts(S);
        if (s == c->nst - 1) S->b->ops->release(S->b, c->lg);
        S->b->ops->destroy(S->b);
    }
    free(c->st);
}

bq_status bq_ctx_new_ex(const bq_model *m, int max_tokens, const bq_ctx_opts *o, bq_ctx **out)
{
    *out = NULL;
    if (o && o->size < offsetof(bq_ctx_opts, eager))  /* older callers end before .eager */
        return bq_fail(BQ_ERR_ARG, "context options without their size (set .size = sizeof(bq_ctx_opts))");
#define HAS(f) (o && o->size >= offsetof(bq_ctx_opts, f) + sizeof o->f)
    if (max_tokens < 1) return bq_fail(BQ_ERR_ARG, "context must hold at least one token");
    int lim = m->c.rope ? (1 << 24) : m->c.max_pos;
    if (max_tokens > lim)
        return bq_fail(BQ_ERR_ARG, "context of %d tokens exceeds the model's %d positions", max_tokens, lim);
    int nst = HAS(stages) && o->stages ? o->stages : 1;
    bq_status s = check_stages(m, nst);
    if (s) return s;
    bq_ctx *c = calloc(1, sizeof *c);
    stage *st = calloc((size_t)nst, sizeof *st);
    if (!c || !st) { free(c); free(st); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    c->m = m;
    c->st = st;
    c->nst = nst;
    c->max_tokens = max_tokens;
    c->check = 1;
    c->replay = nst == 1 && !(HAS(eager) && o->eager);
    int device = o ? o->device : 0, threads = o && o->threads ? o->threads : g_default_threads;
    int lo[BQ_MAX_STAGES + 1], ndev = device ? bq_cuda_devices(NULL, 0) : 0;
    plan_stages(m, nst, lo);
    /* CPU: the threads shared out; CUDA: consecutive stages on one device, spread over all */
    int per = nst == 1 ? threads : (threads ? threads : bq_ncores()) / nst;
    for (int i = 0; i < nst && !s; i++)
        s = device ? be_cuda_new(m, max_tokens, ndev ? (int)((long long)i * ndev / nst) : 0, lo[i], lo[i + 1], &st[i].b)
                   : be_cpu_new(m, max_tokens, nst == 1 ? threads : per > 1 ? per : 1, lo[i], lo[i + 1], &st[i].b);
    if (s) {
        free_stages(c);
        free(c);
        return s;
    }
#undef HAS
    *out = c;
    return BQ_OK;
}

bq_status bq_ctx_new(const bq_model *m, int max_tokens, bq_ctx **out) { return bq_ctx_new_ex(m, max_tokens, NULL, out); }

void bq_ctx_free(bq_ctx *c)
{
    if (!c) return;
    free_stages(c);
    free(c->hx);
    free(c);
}

void bq_ctx_reset(bq_ctx *c) { c->pos = 0; }
void bq_ctx_truncate(bq_ctx *c, int pos) { if (pos >= 0 && pos < c->pos) c->pos = pos; }
void bq_ctx_set_check(bq_ctx *c, int on)
{
    if (c->check != on) c->bufs++;
    c->check = on;
}
int bq_ctx_pos(const bq_ctx *c) { return c->pos; }
const char *bq_ctx_device(const bq_ctx *c) { return c->st[0].b->ops->name; }
size_t bq_ctx_device_bytes(const bq_ctx *c)
{
    size_t n = 0;
    for (int s = 0; s < c->nst; s++) n += be_cuda_bytes(c->st[s].b);
    return n;
}

static bq_status check_ids(const bq_model *m, const int32_t *ids, int n)
{
    for (int t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= m->c.vocab)
            return bq_fail(BQ_ERR_ARG, "token id %d at position %d is outside the vocabulary [0, %d)", ids[t], t, m->c.vocab);
    return BQ_OK;
}

/* ---- the forward pass, stage by stage ---- */

#define DO(call) do { if ((st = (call))) return st; } while (0)
/* x += h, h checked first (one op where the backend fuses them) */
static bq_status residual(stage *S, const be_residual *r, int n, int pos)
{
    be *b = S->b;
    const be_ops *o = b->ops;
    int H = b->m->c.hidden;
    if (r->check && o->add_check) return o->add_check(b, S->x, r->h, n, H, r->layer, r->site, pos);
    bq_status st = r->check ? o->check(b, r->h, n, H, r->layer, r->site, pos) : BQ_OK;
    return st ? st : o->add(b, S->x, r->h, (size_t)n * H);
}
#define RESIDUAL(h, layer, site) DO(residual(S, &(be_residual){h, layer, site, c->check}, n, pos))

/* A stage's input: the first embeds the tokens, a later one takes the hidden state
 * the stage before it left in host memory (xin). */
static bq_status stage_in(bq_ctx *c, stage *S, const int32_t *ids, int n, int pos, const float *xin)
{
    be *b = S->b;
    const be_ops *o = b->ops;
    const bq_model *M = c->m;
    bq_status st;
    if (o->bind) DO(o->bind(b));
    if (b->lo > 0) return o->put(b, S->x, xin, (size_t)n * M->c.hidden * sizeof(float));
    if (LINEAR_PRESENT(&M->proj_in)) {
        DO(o->embed(b, ids, n, S->e));
        DO(run_linear(c, b, -1, R_PROJ_IN, S->e, S->x, n));
    } else DO(o->embed(b, ids, n, S->x));
    if (M->pos_emb) DO(o->add_pos(b, S->x, n, pos));
    return BQ_OK;
}

/* Whether a pre-norm model's residual connections and norms go to the backend's
 * norm_linears (not while calibrating: the observer sees each linear's input before it
 * runs): each residual is then left to the norm after it (res). */
static int fuse_norms(const bq_ctx *c, const be *b) { return c->m->c.pre_norm && b->ops->norm_linears && !c->observe; }

/* A layer's linears on its input: the norm's output (pre-norm) or x itself, after the
 * residual connection res (NULL: none left). */
static bq_status norm_then_linears(bq_ctx *c, stage *S, const be_residual *res, int l, norm_role nr, const lin_role *rs, int count,
                                   float *const *ys, int n, int pos)
{
    be *b = S->b;
    int H = c->m->c.hidden;
    bq_status st = BQ_OK;
    if (fuse_norms(c, b)) return b->ops->norm_linears(b, l, nr, S->x, res, pos, S->h, H, rs, count, ys, n);
    if (res && (st = residual(S, res, n, pos))) return st;
    if (!c->m->c.pre_norm) return run_linears(c, b, l, rs, count, S->x, ys, n);
    st = b->ops->norm(b, l, nr, S->x, S->h, n, H);
    return st ? st : run_linears(c, b, l, rs, count, S->h, ys, n);
}

/* The stage's layers over n new tokens at pos, and, on the last stage, the head
 * over rows first..n-1 into lg. Ends the stage's pass (a deferred error, if any). */
static bq_status stage_body(bq_ctx *c, stage *S, int n, int pos, int first, float *lg)
{
    be *b = S->b;
    const be_ops *o = b->ops;
    const bq_model *M = c->m;
    const bq_config *m = &M->c;
    int H = m->hidden, d = m->head_dim;
    size_t nI = (size_t)n * m->inter;
    bq_status st;

    /* a residual connection left to the norm after it (fuse_norms) */
    const int defer = fuse_norms(c, b);
    be_residual pend = {NULL, 0, CHK_ATTN, c->check};
    for (int l = b->lo; l < b->hi; l++) {
        /* attention */
        static const lin_role qkv[] = {R_Q, R_K, R_V}, up_gate[] = {R_UP, R_GATE};
        DO(norm_then_linears(c, S, pend.h ? &pend : NULL, l, N_LN1, qkv, 3, (float *const[]){S->q, S->k, S->v}, n, pos));
        pend.h = NULL;
        if (m->qk_norm) {
            DO(o->norm(b, l, N_Q, S->q, S->q, n * m->heads, d));
            DO(o->norm(b, l, N_K, S->k, S->k, n * m->kv_heads, d));
        }
        if (m->rope && !M->rot_qk && !M->kv_q && o->rope_store) DO(o->rope_store(b, l, S->q, S->k, S->v, n, pos));
        else {
            if (m->rope) {
                DO(o->rope(b, S->q, n, m->heads, pos));
                DO(o->rope(b, S->k, n, m->kv_heads, pos));
            }
            if (M->rot_qk) {  /* Q K^T unchanged; what the cache and attention formats see is rotated */
                DO(o->rotate(b, M->rot_qk, S->q, n * m->heads));
                DO(o->rotate(b, M->rot_qk, S->k, n * m->kv_heads));
            }
            if (M->kv_q) {  /* the cache stores K and V quantised along head_dim */
                DO(o->qdq(b, M->kv_q, S->k, S->k, (size_t)n * m->kv_heads, (size_t)d));
                DO(o->qdq(b, M->kv_q, S->v, S->v, (size_t)n * m->kv_heads, (size_t)d));
            }
            DO(o->kv_store(b, l, S->k, S->v, n, pos));
        }
        DO(o->attention(b, l, S->q, S->a, n, pos));
        DO(run_linear(c, b, l, R_O, S->a, S->h, n));
        if (defer) pend = (be_residual){S->h, l, CHK_ATTN, c->check};
        else RESIDUAL(S->h, l, CHK_ATTN);
        if (!m->pre_norm) DO(o->norm(b, l, N_LN1, S->x, S->x, n, H));

        /* MLP */
        DO(norm_then_linears(c, S, pend.h ? &pend : NULL, l, N_LN2, up_gate, m->act == ACT_SILU_GATED ? 2 : 1, (float *const[]){S->u, S->g},
                             n, pos));
        pend.h = NULL;
        if (o->act_linear && !M->rot_down && !c->observe) DO(o->act_linear(b, l, R_DOWN, S->u, S->g, S->h, n));
        else {
            DO(o->act(b, S->u, S->g, nI));
            if (M->rot_down) DO(o->rotate(b, M->rot_down, S->u, n));
            DO(run_linear(c, b, l, R_DOWN, S->u, S->h, n));
        }
        if (defer) pend = (be_residual){S->h, l, CHK_MLP, c->check};
        else RESIDUAL(S->h, l, CHK_MLP);
        if (!m->pre_norm) DO(o->norm(b, l, N_LN2, S->x, S->x, n, H));
    }
    if (pend.h) DO(residual(S, &pend, n, pos));  /* the stage's last */

    if (b->hi == m->layers) {  /* head: only the rows the caller wants */
        int rows = n - first;
        float *xf = S->x + (size_t)first * H;
        if (m->final_norm) DO(o->norm(b, -1, N_FINAL, xf, xf, rows, H));
        if (LINEAR_PRESENT(&M->proj_out)) { DO(run_linear(c, b, -1, R_PROJ_OUT, xf, S->e, rows)); xf = S->e; }
        DO(run_linear(c, b, -1, R_HEAD, xf, lg, rows));
        if (c->check) DO(o->check(b, lg, rows, m->vocab, m->layers, CHK_LOGITS, pos + first));
    }
    return o->finish(b);
}
#undef RESIDUAL
#undef CHECK

/* The whole pass, one stage after another, the hidden state through c->hx. */
static bq_status run(bq_ctx *c, const int32_t *ids, int n, int first, float *lg)
{
    bq_status st;
    for (int s = 0; s < c->nst; s++) {
        stage *S = &c->st[s];
        DO(stage_in(c, S, ids, n, c->pos, c->hx));
        DO(stage_body(c, S, n, c->pos, first, lg));
        if (s + 1 < c->nst) DO(S->b->ops->get(S->b, c->hx, S->x, (size_t)n * c->m->c.hidden * sizeof(float)));
    }
    return BQ_OK;
}
#undef DO

static bq_status begin(bq_ctx *c, const int32_t *ids, int n)
{
    if (n < 1) return bq_fail(BQ_ERR_ARG, "no tokens");
    if (c->pos + n > c->max_tokens)
        return bq_fail(BQ_ERR_ARG, "%d tokens at position %d overflow the %d-token context", n, c->pos, c->max_tokens);
    bq_status st = check_ids(c->m, ids, n);
    return st ? st : ensure_acts(c, n);
}

bq_status bq_forward(bq_ctx *c, const int32_t *ids, int n, float *logits, int all)
{
    bq_status st = begin(c, ids, n);
    if (st) return st;
    int first = all ? 0 : n - 1;
    /* a host backend writes the caller's rows directly */
    be *b = last_stage(c)->b;  /* the head's */
    const be_ops *o = b->ops;
    if (!o->host && (st = ensure_logits(c, n - first))) return st;
    float *lg = o->host ? logits : c->lg;
    int replayed = 0;
    if (n == 1 && c->replay && o->replay && !c->observe) st = o->replay(b, ids[0], c->pos, c->bufs, &replayed);
    if (!st) st = replayed ? o->finish(b) : run(c, ids, n, first, lg);
    if (st && o->drop_recording) o->drop_recording(b);
    if (!st && !(st = o->logits(b, lg, n - first, logits))) c->pos += n;
    return st;
}

bq_status bq_forward_logprobs(bq_ctx *c, const int32_t *ids, int n, double *lp)
{
    if (n < 2) return bq_fail(BQ_ERR_ARG, "log-probabilities need at least 2 tokens");
    bq_status st = begin(c, ids, n);
    if (st || (st = ensure_logits(c, n))) return st;
    be *b = last_stage(c)->b;
    if (!(st = run(c, ids, n, 0, c->lg)) && !(st = b->ops->logprobs(b, c->lg, ids, n, lp))) c->pos += n;
    return st;
}

bq_status bq_model_logits(const bq_model *m, const int32_t *ids, int n, float *logits)
{
    bq_ctx *c;
    bq_status st = bq_ctx_new(m, n, &c);
    if (st) return st;
    st = bq_forward(c, ids, n, logits, 1);
    bq_ctx_free(c);
    return st;
}

int bq_model_vocab(const bq_model *m) { return m->c.vocab; }

void bq_set_threads(int n) { g_default_threads = n; }

/* ---- scoring windows, streamed through the stages ----
 * With one stage (or an observer) the windows run one after another. With more,
 * each stage has a thread that takes window i from the stage before it (through a
 * one-window host slot), runs its layers and hands it on, so that stage s works
 * on window i while stage s + 1 works on window i - 1: all devices busy, once the
 * pipe is full. Every window runs exactly the ops it runs alone: the same bits. */
typedef struct {
    bq_ctx *c;
    const int32_t *const *wins;
    size_t count;
    int n;
    bq_window_fn on_window;
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    float **slot;            /* slot[s]: the hidden state from stage s to s + 1 */
    size_t *put, *taken;     /* windows put into and taken from each slot */
    int failed;
    bq_status st;
    char msg[1024];
} pipe_run;

static void pipe_fail(pipe_run *p, bq_status st)
{
    pthread_mutex_lock(&p->mu);
    if (!p->failed) {
        p->failed = 1;
        p->st = st;
        snprintf(p->msg, sizeof p->msg, "%s", bq_last_error());
    }
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* Wait until slot k holds a window (want_full) or is free; 0 if the run failed. */
static int pipe_wait(pipe_run *p, int k, int want_full)
{
    pthread_mutex_lock(&p->mu);
    while (!p->failed && (p->put[k] > p->taken[k]) != want_full) pthread_cond_wait(&p->cv, &p->mu);
    int ok = !p->failed;
    pthread_mutex_unlock(&p->mu);
    return ok;
}

static void pipe_step(pipe_run *p, size_t *counter)
{
    pthread_mutex_lock(&p->mu);
    (*counter)++;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

typedef struct { pipe_run *p; int s; } pipe_job;

static void *pipe_stage(void *arg)
{
    pipe_job *j = arg;
    pipe_run *p = j->p;
    bq_ctx *c = p->c;
    const int s = j->s, last = s == c->nst - 1, n = p->n;
    stage *S = &c->st[s];
    const size_t bytes = (size_t)n * c->m->c.hidden * sizeof(float);
    double *lp = last ? malloc((size_t)n * sizeof *lp) : NULL;
    bq_status st = last && !lp ? bq_fail(BQ_ERR_NOMEM, "out of memory for log-probabilities") : BQ_OK;
    for (size_t i = 0; i < p->count && !st; i++) {
        if (s > 0 && !pipe_wait(p, s - 1, 1)) break;
        if ((st = stage_in(c, S, p->wins[i], n, 0, s > 0 ? p->slot[s - 1] : NULL))) break;
        if (s > 0) pipe_step(p, &p->taken[s - 1]);  /* put has copied it: the slot is free */
        if ((st = stage_body(c, S, n, 0, 0, c->lg))) break;
        if (last) {
            if ((st = S->b->ops->logprobs(S->b, c->lg, p->wins[i], n, lp)) || (st = p->on_window(p->arg, i, lp))) break;
        } else {
            if (!pipe_wait(p, s, 0)) break;
            if ((st = S->b->ops->get(S->b, p->slot[s], S->x, bytes))) break;
            pipe_step(p, &p->put[s]);
        }
    }
    if (st) pipe_fail(p, st);
    free(lp);
    return NULL;
}

bq_status bq_score_windows(bq_ctx *c, const int32_t *const *wins, size_t count, int n, bq_window_fn on_window, void *arg)
{
    if (n < 2) return bq_fail(BQ_ERR_ARG, "log-probabilities need at least 2 tokens");
    if (n > c->max_tokens) return bq_fail(BQ_ERR_ARG, "windows of %d tokens overflow the %d-token context", n, c->max_tokens);
    bq_status st = BQ_OK;
    for (size_t i = 0; i < count && !st; i++) st = check_ids(c->m, wins[i], n);
    if (st || (st = ensure_acts(c, n)) || (st = ensure_logits(c, n))) return st;
    if (c->nst == 1 || c->observe) {
        double *lp = malloc((size_t)n * sizeof *lp);
        if (!lp) return bq_fail(BQ_ERR_NOMEM, "out of memory for log-probabilities");
        for (size_t i = 0; i < count && !st; i++) {
            bq_ctx_reset(c);
            if (!(st = bq_forward_logprobs(c, wins[i], n, lp))) st = on_window(arg, i, lp);
        }
        free(lp);
        bq_ctx_reset(c);
        return st;
    }
    pipe_run p = {.c = c, .wins = wins, .count = count, .n = n, .on_window = on_window, .arg = arg};
    int k = c->nst - 1;  /* slots */
    p.slot = calloc((size_t)k, sizeof *p.slot);
    p.put = calloc((size_t)k, sizeof *p.put);
    p.taken = calloc((size_t)k, sizeof *p.taken);
    pipe_job *jobs = calloc((size_t)c->nst, sizeof *jobs);
    pthread_t *tid = calloc((size_t)c->nst, sizeof *tid);
    int ok = p.slot && p.put && p.taken && jobs && tid;
    for (int s = 0; ok && s < k; s++) ok = (p.slot[s] = malloc((size_t)n * c->m->c.hidden * sizeof(float))) != NULL;
    if (!ok) st = bq_fail(BQ_ERR_NOMEM, "out of memory for the pipeline's %d slots", k);
    else {
        pthread_mutex_init(&p.mu, NULL);
        pthread_cond_init(&p.cv, NULL);
        int started = 0;
        for (int s = 1; s < c->nst; s++, started++) {  /* stage 0 runs on this thread */
            jobs[s] = (pipe_job){&p, s};
            if (pthread_create(&tid[s], NULL, pipe_stage, &jobs[s])) {
                pipe_fail(&p, bq_fail(BQ_ERR_NOMEM, "cannot start the thread of pipeline stage %d", s));
                break;
            }
        }
        jobs[0] = (pipe_job){&p, 0};
        if (!p.failed) pipe_stage(&jobs[0]);
        for (int s = 1; s <= started; s++) pthread_join(tid[s], NULL);
        pthread_cond_destroy(&p.cv);
        pthread_mutex_destroy(&p.mu);
        if (p.failed) st = bq_fail(p.st, "%s", p.msg);
    }
    for (int s = 0; p.slot && s < k; s++) free(p.slot[s]);
    free(p.slot); free(p.put); free(p.taken); free(jobs); free(tid);
    bq_ctx_reset(c);
    return st;
}
