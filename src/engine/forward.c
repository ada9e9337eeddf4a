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
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

static int g_default_threads;  /* bq_set_threads: the default of contexts made by bq_ctx_new */

struct bq_ctx {
    const bq_model *m;
    be *b;
    int max_tokens, pos, check;
    int replay;      /* one-token steps may be recorded and replayed (CUDA graphs) */
    unsigned bufs;   /* bumped whenever the buffers or options a recording holds change */
    int cap;  /* tokens the activations below hold (backend memory) */
    float *x, *h, *q, *k, *v, *a, *g, *u, *e;
    int lg_rows;  /* rows of lg, the backend's logits (when the caller's cannot be used) */
    float *lg;
    bq_observer observe;  /* calibration: each linear's input (host backends) */
    void *observe_arg;
};

bq_status bq_ctx_set_observer(bq_ctx *c, bq_observer fn, void *arg)
{
    if (fn && !c->b->ops->host) return bq_fail(BQ_ERR_UNSUPPORTED, "calibration observes the CPU backend only");
    c->observe = fn;
    c->observe_arg = arg;
    return BQ_OK;
}

/* Every linear goes through here: the observer first, then the backend. */
static bq_status run_linear(bq_ctx *c, int layer, lin_role r, const float *x, float *y, int n)
{
    if (c->observe) c->observe(c->observe_arg, layer, (int)r, x, n, model_linear(c->m, layer, r)->in);
    return c->b->ops->linear(c->b, layer, r, x, y, n);
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

static void release_acts(bq_ctx *c)
{
    float **p[] = {&c->x, &c->h, &c->q, &c->k, &c->v, &c->a, &c->g, &c->u, &c->e};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) { c->b->ops->release(c->b, *p[i]); *p[i] = NULL; }
    c->cap = 0;
}

static bq_status ensure_acts(bq_ctx *c, int n)
{
    if (n <= c->cap) return BQ_OK;
    release_acts(c);
    const bq_config *m = &c->m->c;
    size_t H = (size_t)m->hidden, qd = (size_t)m->heads * m->head_dim, kvd = (size_t)m->kv_heads * m->head_dim;
    size_t ffn = (size_t)m->inter, E = (size_t)m->embed_dim, N = (size_t)n;
    float **p[] = {&c->x, &c->h, &c->q, &c->k, &c->v, &c->a, &c->g, &c->u, &c->e};
    size_t sz[] = {N * H, N * (H > E ? H : E), N * qd, N * kvd, N * kvd, N * qd, N * ffn, N * ffn, N * E};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++)
        if (!(*p[i] = c->b->ops->alloc(c->b, sz[i] * 4))) {
            release_acts(c);
            return bq_fail(BQ_ERR_NOMEM, "out of %s memory for %d tokens of activations", c->b->ops->name, n);
        }
    c->cap = n;
    c->bufs++;
    return BQ_OK;
}

static bq_status ensure_logits(bq_ctx *c, int rows)
{
    if (rows <= c->lg_rows) return BQ_OK;
    c->b->ops->release(c->b, c->lg);
    c->lg = c->b->ops->alloc(c->b, (size_t)rows * c->m->c.vocab * 4);
    c->lg_rows = c->lg ? rows : 0;
    c->bufs++;
    return c->lg ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of %s memory for %d rows of logits", c->b->ops->name, rows);
}

bq_status bq_ctx_new_ex(const bq_model *m, int max_tokens, const bq_ctx_opts *o, bq_ctx **out)
{
    *out = NULL;
    if (o && o->size < offsetof(bq_ctx_opts, eager))  /* older callers end before .eager */
        return bq_fail(BQ_ERR_ARG, "context options without their size (set .size = sizeof(bq_ctx_opts))");
    if (max_tokens < 1) return bq_fail(BQ_ERR_ARG, "context must hold at least one token");
    int lim = m->c.rope ? (1 << 24) : m->c.max_pos;
    if (max_tokens > lim)
        return bq_fail(BQ_ERR_ARG, "context of %d tokens exceeds the model's %d positions", max_tokens, lim);
    bq_ctx *c = calloc(1, sizeof *c);
    if (!c) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    c->m = m;
    c->max_tokens = max_tokens;
    c->check = 1;
    c->replay = !(o && o->size >= offsetof(bq_ctx_opts, eager) + sizeof o->eager && o->eager);
    int device = o ? o->device : 0, threads = o && o->threads ? o->threads : g_default_threads;
    bq_status st = device ? be_cuda_new(m, max_tokens, &c->b) : be_cpu_new(m, max_tokens, threads, &c->b);
    if (st) { free(c); return st; }
    *out = c;
    return BQ_OK;
}

bq_status bq_ctx_new(const bq_model *m, int max_tokens, bq_ctx **out) { return bq_ctx_new_ex(m, max_tokens, NULL, out); }

void bq_ctx_free(bq_ctx *c)
{
    if (!c) return;
    release_acts(c);
    c->b->ops->release(c->b, c->lg);
    c->b->ops->destroy(c->b);
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
const char *bq_ctx_device(const bq_ctx *c) { return c->b->ops->name; }
size_t bq_ctx_device_bytes(const bq_ctx *c) { return be_cuda_bytes(c->b); }

static bq_status check_ids(const bq_model *m, const int32_t *ids, int n)
{
    for (int t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= m->c.vocab)
            return bq_fail(BQ_ERR_ARG, "token id %d at position %d is outside the vocabulary [0, %d)", ids[t], t, m->c.vocab);
    return BQ_OK;
}

/* Run the stack over n new tokens and the head over rows first..n-1 into lg. */
static bq_status run(bq_ctx *c, const int32_t *ids, int n, int first, float *lg)
{
    be *b = c->b;
    const be_ops *o = b->ops;
    const bq_model *M = c->m;
    const bq_config *m = &M->c;
    int H = m->hidden, d = m->head_dim, pos = c->pos;
    size_t nH = (size_t)n * H, nI = (size_t)n * m->inter;
    bq_status st;
#define DO(call) do { if ((st = (call))) return st; } while (0)
#define CHECK(x, rows, dd, layer, site) do { if (c->check) DO(o->check(b, x, rows, dd, layer, site, pos)); } while (0)

    /* embeddings */
    if (LINEAR_PRESENT(&M->proj_in)) {
        DO(o->embed(b, ids, n, c->e));
        DO(run_linear(c, -1, R_PROJ_IN, c->e, c->x, n));
    } else DO(o->embed(b, ids, n, c->x));
    if (M->pos_emb) DO(o->add_pos(b, c->x, n, pos));

    for (int l = 0; l < m->layers; l++) {
        /* attention */
        float *hin = c->x;
        if (m->pre_norm) { DO(o->norm(b, l, N_LN1, c->x, c->h, n, H)); hin = c->h; }
        DO(run_linear(c, l, R_Q, hin, c->q, n));
        DO(run_linear(c, l, R_K, hin, c->k, n));
        DO(run_linear(c, l, R_V, hin, c->v, n));
        if (m->qk_norm) {
            DO(o->norm(b, l, N_Q, c->q, c->q, n * m->heads, d));
            DO(o->norm(b, l, N_K, c->k, c->k, n * m->kv_heads, d));
        }
        if (m->rope) {
            DO(o->rope(b, c->q, n, m->heads, pos));
            DO(o->rope(b, c->k, n, m->kv_heads, pos));
        }
        if (M->kv_q) {  /* the cache stores K and V quantised along head_dim */
            DO(o->qdq(b, M->kv_q, c->k, c->k, (size_t)n * m->kv_heads, (size_t)d));
            DO(o->qdq(b, M->kv_q, c->v, c->v, (size_t)n * m->kv_heads, (size_t)d));
        }
        DO(o->kv_store(b, l, c->k, c->v, n, pos));
        DO(o->attention(b, l, c->q, c->a, n, pos));
        DO(run_linear(c, l, R_O, c->a, c->h, n));
        CHECK(c->h, n, H, l, CHK_ATTN);
        DO(o->add(b, c->x, c->h, nH));
        if (!m->pre_norm) DO(o->norm(b, l, N_LN1, c->x, c->x, n, H));

        /* MLP */
        hin = c->x;
        if (m->pre_norm) { DO(o->norm(b, l, N_LN2, c->x, c->h, n, H)); hin = c->h; }
        DO(run_linear(c, l, R_UP, hin, c->u, n));
        if (m->act == ACT_SILU_GATED) DO(run_linear(c, l, R_GATE, hin, c->g, n));
        DO(o->act(b, c->u, c->g, nI));
        DO(run_linear(c, l, R_DOWN, c->u, c->h, n));
        CHECK(c->h, n, H, l, CHK_MLP);
        DO(o->add(b, c->x, c->h, nH));
        if (!m->pre_norm) DO(o->norm(b, l, N_LN2, c->x, c->x, n, H));
    }

    /* head: only the rows the caller wants */
    int rows = n - first;
    float *xf = c->x + (size_t)first * H;
    if (m->final_norm) DO(o->norm(b, -1, N_FINAL, xf, xf, rows, H));
    if (LINEAR_PRESENT(&M->proj_out)) { DO(run_linear(c, -1, R_PROJ_OUT, xf, c->e, rows)); xf = c->e; }
    DO(run_linear(c, -1, R_HEAD, xf, lg, rows));
    if (c->check) DO(o->check(b, lg, rows, m->vocab, m->layers, CHK_LOGITS, pos + first));
    return o->finish(b);
#undef CHECK
#undef DO
}

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
    if (!c->b->ops->host && (st = ensure_logits(c, n - first))) return st;
    float *lg = c->b->ops->host ? logits : c->lg;
    const be_ops *o = c->b->ops;
    int replayed = 0;
    if (n == 1 && c->replay && o->replay && !c->observe) st = o->replay(c->b, ids[0], c->pos, c->bufs, &replayed);
    if (!st) st = replayed ? o->finish(c->b) : run(c, ids, n, first, lg);
    if (st && o->drop_recording) o->drop_recording(c->b);
    if (!st && !(st = o->logits(c->b, lg, n - first, logits))) c->pos += n;
    return st;
}

bq_status bq_forward_logprobs(bq_ctx *c, const int32_t *ids, int n, double *lp)
{
    if (n < 2) return bq_fail(BQ_ERR_ARG, "log-probabilities need at least 2 tokens");
    bq_status st = begin(c, ids, n);
    if (st || (st = ensure_logits(c, n))) return st;
    if (!(st = run(c, ids, n, 0, c->lg)) && !(st = c->b->ops->logprobs(c->b, c->lg, ids, n, lp))) c->pos += n;
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
