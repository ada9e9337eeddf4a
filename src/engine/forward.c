/* The transformer forward pass in float32, batched over a window of tokens,
 * with a KV cache. Reads like the architectures it implements:
 *
 *   x = embed(ids) (+ learned positions)
 *   per layer:  h = norm(x); q,k,v = h W^T (+ RoPE); a = softmax(q k^T / sqrt(d)) v
 *               x = x + a Wo^T;  h = norm(x);  x = x + mlp(h)
 *   (OPT post-LN: x = norm(x + attn(x)), x = norm(x + mlp(x)))
 *   logits = norm(x) W_head^T
 */
#include "engine.h"
#include "pmat.h"
#include "lmul.h"
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static int g_threads;  /* worker threads for matmuls and attention (0 = all cores) */

/* OpenBLAS runs single-threaded inside our workers: threads come from mm_range's
 * split, so the sums' order (and the bits) never depend on OpenBLAS's own pool.
 * Done once per process, before any product, for every embedder of the library. */
static void blas_single_thread(void)
{
    extern void openblas_set_num_threads(int);
    openblas_set_num_threads(1);
}
static pthread_once_t g_blas_once = PTHREAD_ONCE_INIT;

struct bq_ctx {
    const bq_model *m;
    int max_tokens, pos, check;
    float *kc, *vc;          /* [layers][max_tokens][kv_dim] */
    /* scratch, sized for `cap` tokens */
    int cap;
    float *x, *h, *q, *k, *v, *a, *g, *u, *att, *e;
    float *xq;       /* a quantised copy of a linear's input */
    float *kq, *vt;  /* attention quantisation: K copy [T, kv_dim], V^T [kv_dim, T] */
    int oom;         /* a worker ran out of memory (reported after the layer) */
};

static void *xrealloc(void *p, size_t n, int *fail)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) *fail = 1;
    return q ? q : p;
}

static bq_status ensure_scratch(bq_ctx *c, int n)
{
    if (n <= c->cap) return BQ_OK;
    const bq_config *m = &c->m->c;
    size_t H = (size_t)m->hidden, qd = (size_t)m->heads * m->head_dim, kvd = (size_t)m->kv_heads * m->head_dim;
    size_t ffn = (size_t)m->inter, T = (size_t)c->max_tokens, E = (size_t)m->embed_dim;
    int fail = 0;
    c->x = xrealloc(c->x, n * H * 4, &fail);
    c->h = xrealloc(c->h, n * (H > E ? H : E) * 4, &fail);
    c->q = xrealloc(c->q, n * qd * 4, &fail);
    c->k = xrealloc(c->k, n * kvd * 4, &fail);
    c->v = xrealloc(c->v, n * kvd * 4, &fail);
    c->a = xrealloc(c->a, n * qd * 4, &fail);
    c->g = xrealloc(c->g, n * ffn * 4, &fail);
    c->u = xrealloc(c->u, n * ffn * 4, &fail);
    c->att = xrealloc(c->att, (size_t)m->heads * n * T * 4, &fail);  /* one score matrix per head */
    c->e = xrealloc(c->e, n * E * 4, &fail);
    size_t maxin = H > ffn ? H : ffn;
    maxin = maxin > qd ? maxin : qd;
    maxin = maxin > E ? maxin : E;
    c->xq = xrealloc(c->xq, n * maxin * 4, &fail);
    if (fail) return bq_fail(BQ_ERR_NOMEM, "out of memory for %d tokens of scratch", n);
    c->cap = n;
    return BQ_OK;
}

bq_status bq_ctx_new(const bq_model *m, int max_tokens, bq_ctx **out)
{
    *out = NULL;
    pthread_once(&g_blas_once, blas_single_thread);
    if (max_tokens < 1) return bq_fail(BQ_ERR_ARG, "context must hold at least one token");
    int lim = m->c.rope ? (1 << 24) : m->c.max_pos;
    if (max_tokens > lim)
        return bq_fail(BQ_ERR_ARG, "context of %d tokens exceeds the model's %d positions", max_tokens, lim);
    bq_ctx *c = calloc(1, sizeof *c);
    if (!c) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    c->m = m;
    c->max_tokens = max_tokens;
    c->check = 1;
    size_t kvd = (size_t)m->c.kv_heads * m->c.head_dim, sz = (size_t)m->c.layers * max_tokens * kvd;
    c->kc = malloc(sz * 4);
    c->vc = malloc(sz * 4);
    if (m->attn_q) {
        c->kq = malloc((size_t)max_tokens * kvd * 4);
        c->vt = malloc((size_t)max_tokens * kvd * 4);
    }
    if (!c->kc || !c->vc || (m->attn_q && (!c->kq || !c->vt))) {
        bq_ctx_free(c);
        return bq_fail(BQ_ERR_NOMEM, "out of memory for a %d-token KV cache", max_tokens);
    }
    *out = c;
    return BQ_OK;
}

void bq_ctx_free(bq_ctx *c)
{
    if (!c) return;
    free(c->kc); free(c->vc);
    free(c->x); free(c->h); free(c->q); free(c->k); free(c->v); free(c->a); free(c->g); free(c->u);
    free(c->att); free(c->e); free(c->xq); free(c->kq); free(c->vt);
    free(c);
}

void bq_ctx_reset(bq_ctx *c) { c->pos = 0; }
void bq_ctx_truncate(bq_ctx *c, int pos) { if (pos >= 0 && pos < c->pos) c->pos = pos; }
void bq_ctx_set_check(bq_ctx *c, int on) { c->check = on; }

/* NaN/Inf in an activation: name the layer and tensor, and the token. */
static bq_status check_finite(const bq_ctx *c, const float *x, int n, int d, int layer, const char *what)
{
    if (!c->check) return BQ_OK;
    for (size_t i = 0; i < (size_t)n * d; i++)
        if (!isfinite(x[i]))
            return bq_fail(BQ_ERR_NONFINITE, "non-finite activation (%s) in layer %d: %s at token %d (use --allow-nonfinite to go on)",
                           isnan(x[i]) ? "NaN" : "Inf", layer, what, c->pos + (int)(i / (size_t)d));
    return BQ_OK;
}
int bq_ctx_pos(const bq_ctx *c) { return c->pos; }

/* ---- building blocks ---------------------------------------------------- */

/* Fixed slices of SLICE output features, one single-threaded SGEMM each: the
 * calls and their shapes never depend on the thread count, so neither do the
 * bits (OpenBLAS's own threading and its results for other shapes do). */
enum { SLICE = 64, MV_MAX = 8 };
typedef struct { const linear *l; const float *x; float *y; int n; const pm_act *act; int *oom; } mm_job;

/* One slice of a packed weight: integer kernels when the activation is quantised
 * to an integer grid, float kernels for a few tokens, else the slice decoded
 * into `buf` for the same SGEMM the float path runs (so the bits match fake
 * quantisation exactly). */
static const float *slice_weights(const mm_job *j, int o0, int o1, float **buf)
{
    const linear *l = j->l;
    if (!l->pw) return l->w + (size_t)o0 * l->in;
    if (j->act) { pmat_mm_int(l->pw, j->act, j->y, l->out, o0, o1); return NULL; }
    if (l->pw->kind == PM_PANEL && j->n <= MV_MAX && !l->lmul) { pmat_mv_f32(l->pw, j->x, j->n, j->y, l->out, o0, o1); return NULL; }
    if (j->n <= MV_MAX && !l->lmul && pmat_mv_float16(l->pw, j->x, j->n, j->y, l->out, o0, o1)) return NULL;
    if (!*buf && !(*buf = malloc((size_t)SLICE * l->in * sizeof **buf))) { *j->oom = 1; return NULL; }
    pmat_decode(l->pw, o0, o1, *buf);
    return *buf;
}

static void mm_range(void *arg, size_t b, size_t e)
{
    const mm_job *j = arg;
    float *buf = NULL;
    for (size_t s = b; s < e; s++) {
        int o0 = (int)s * SLICE, o1 = o0 + SLICE < j->l->out ? o0 + SLICE : j->l->out;
        const float *w = slice_weights(j, o0, o1, &buf);
        if (w && j->l->lmul) lmul_matmul(j->x, j->n, w, j->l->in, j->y, j->l->out, o0, o1, j->l->lmul);
        else if (w)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->n, o1 - o0, j->l->in, 1.0f, j->x, j->l->in, w,
                        j->l->in, 0.0f, j->y + o0, j->l->out);
    }
    free(buf);
}

/* y[n, out] = q(x[n, in]) W^T + b: the one place every linear layer goes through.
 * The activation is quantised along `in`, the matmul's reduction dimension. */
static void matmul(bq_ctx *c, const linear *l, const float *x, float *y, int n)
{
    pm_act act, *ap = NULL;
    /* a few tokens (generation): the float GEMV on the quantised activations is
     * cheaper than quantising them to codes and recomputing the panels' sums */
    if (l->aq && l->pw && n > MV_MAX && !l->lmul && pmat_int_ok(l->pw, l->aq)) {
        if (pm_act_make(l->aq, x, n, l->in, &c->m->qopts, &act)) { c->oom = 1; return; }
        ap = &act;
    } else if (l->aq) {
        bq_qdq(l->aq, x, c->xq, (size_t)n, (size_t)l->in, &c->m->qopts);
        x = c->xq;
    }
    mm_job j = {l, x, y, n, ap, &c->oom};
    size_t slices = (size_t)(l->out + SLICE - 1) / SLICE;
    double work = (double)n * l->out * l->in;
    bq_parallel_for(slices, work < 1e6 ? 1 : g_threads, mm_range, &j);
    if (ap) pm_act_free(ap);
    if (l->b)
        for (int t = 0; t < n; t++)
            for (int o = 0; o < l->out; o++) y[(size_t)t * l->out + o] += l->b[o];
}

static void norm(const bq_config *c, const normp *p, const float *x, float *y, int n, int d)
{
    for (int t = 0; t < n; t++) {
        const float *xr = x + (size_t)t * d;
        float *yr = y + (size_t)t * d;
        if (c->norm == NORM_RMS) {
            double ss = 0;
            for (int i = 0; i < d; i++) ss += (double)xr[i] * xr[i];
            float r = (float)(1.0 / sqrt(ss / d + c->norm_eps));
            for (int i = 0; i < d; i++) yr[i] = p->w[i] * (xr[i] * r);
        } else {
            double mean = 0, var = 0;
            for (int i = 0; i < d; i++) mean += xr[i];
            mean /= d;
            for (int i = 0; i < d; i++) var += (xr[i] - mean) * (xr[i] - mean);
            float r = (float)(1.0 / sqrt(var / d + c->norm_eps));
            for (int i = 0; i < d; i++) yr[i] = (float)(xr[i] - mean) * r * p->w[i] + (p->b ? p->b[i] : 0.0f);
        }
    }
}

/* Rotary embedding, Hugging Face convention: element i pairs with i + d/2. */
static void rope(const bq_config *c, float *x, int n, int nheads, int pos0)
{
    int d = c->head_dim, half = d / 2;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < half; i++) {
            float inv = (float)(1.0 / pow((double)c->rope_theta, (double)(2 * i) / d));
            float ang = (float)(pos0 + t) * inv;
            float cs = cosf(ang), sn = sinf(ang);
            for (int h = 0; h < nheads; h++) {
                float *v = x + ((size_t)t * nheads + h) * d;
                float a = v[i], b = v[i + half];
                v[i] = a * cs - b * sn;
                v[i + half] = b * cs + a * sn;
            }
        }
}

static float gelu_tanh(float x)
{
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

/* Causal attention of n new queries against the cache of one layer. */
typedef struct { bq_ctx *c; const float *K, *V; int n, T; } att_job;

static void attend_heads(void *arg, size_t h0, size_t h1)
{
    const att_job *j = arg;
    bq_ctx *c = j->c;
    const bq_config *m = &c->m->c;
    int d = m->head_dim, group = m->heads / m->kv_heads, n = j->n, T = j->T;
    size_t kvd = (size_t)m->kv_heads * d, qd = (size_t)m->heads * d;
    const bq_format *aq = c->m->attn_q;
    float scale = 1.0f / sqrtf((float)d);
    for (size_t h = h0; h < h1; h++) {
        int kh = (int)h / group;
        float *att = c->att + h * (size_t)n * T;
        /* scores [n, T] = Q_h K_h^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, T, d, scale, c->q + h * d, (int)qd,
                    j->K + (size_t)kh * d, (int)kvd, 0.0f, att, T);
        for (int t = 0; t < n; t++) {
            float *s = att + (size_t)t * T;
            /* causal: keys first..last (a sliding window keeps the last `window` of them) */
            int last = c->pos + t, first = m->sliding_window && last >= m->sliding_window ? last - m->sliding_window + 1 : 0;
            float mx = -INFINITY;
            for (int i = first; i <= last; i++) mx = s[i] > mx ? s[i] : mx;
            double sum = 0;
            for (int i = first; i <= last; i++) { s[i] = expf(s[i] - mx); sum += s[i]; }
            float inv = (float)(1.0 / sum);
            for (int i = 0; i < first; i++) s[i] = 0.0f;
            for (int i = first; i <= last; i++) s[i] *= inv;
            for (int i = last + 1; i < T; i++) s[i] = 0.0f;
        }
        /* out [n, d] = P V_h (P quantised along the token axis, against V^T rows) */
        if (aq) {
            bq_qopts o = c->m->qopts;
            o.threads = 1;
            bq_qdq(aq, att, att, (size_t)n, (size_t)T, &o);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d, T, 1.0f, att, T, c->vt + (size_t)kh * d * T, T,
                        0.0f, c->a + h * d, (int)qd);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, T, 1.0f, att, T, j->V + (size_t)kh * d,
                        (int)kvd, 0.0f, c->a + h * d, (int)qd);
        }
    }
}

static void attention(bq_ctx *c, int layer, int n)
{
    const bq_config *m = &c->m->c;
    int d = m->head_dim, T = c->pos + n;
    size_t kvd = (size_t)m->kv_heads * d;
    const float *K = c->kc + (size_t)layer * c->max_tokens * kvd, *V = c->vc + (size_t)layer * c->max_tokens * kvd;
    const bq_format *aq = c->m->attn_q;
    const bq_qopts *qo = &c->m->qopts;
    if (aq) {
        /* Q and K along head_dim; V along the token axis, so quantise V^T rows */
        bq_qdq(aq, c->q, c->q, (size_t)n * m->heads, (size_t)d, qo);
        bq_qdq(aq, K, c->kq, (size_t)T * m->kv_heads, (size_t)d, qo);
        K = c->kq;
        for (size_t j = 0; j < kvd; j++)
            for (int t = 0; t < T; t++) c->vt[j * T + t] = V[(size_t)t * kvd + j];
        bq_qdq(aq, c->vt, c->vt, kvd, (size_t)T, qo);
    }
    att_job j = {c, K, V, n, T};
    double work = (double)n * T * d * m->heads;
    bq_parallel_for((size_t)m->heads, work < 1e6 ? 1 : g_threads, attend_heads, &j);
}

static void add(float *x, const float *y, size_t n) { for (size_t i = 0; i < n; i++) x[i] += y[i]; }

static bq_status check_ids(const bq_model *m, const int32_t *ids, int n)
{
    for (int t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= m->c.vocab)
            return bq_fail(BQ_ERR_ARG, "token id %d at position %d is outside the vocabulary [0, %d)", ids[t], t, m->c.vocab);
    return BQ_OK;
}

bq_status bq_forward(bq_ctx *c, const int32_t *ids, int n, float *logits, int all)
{
    const bq_model *M = c->m;
    const bq_config *m = &M->c;
    if (n < 1) return bq_fail(BQ_ERR_ARG, "no tokens");
    if (c->pos + n > c->max_tokens)
        return bq_fail(BQ_ERR_ARG, "%d tokens at position %d overflow the %d-token context", n, c->pos, c->max_tokens);
    bq_status st = check_ids(M, ids, n);
    if (st || (st = ensure_scratch(c, n))) return st;
    int H = m->hidden, E = m->embed_dim;
    size_t kvd = (size_t)m->kv_heads * m->head_dim, nH = (size_t)n * H;

    /* embeddings */
    for (int t = 0; t < n; t++) {
        if (M->emb_p) pmat_decode(M->emb_p, ids[t], ids[t] + 1, c->e + (size_t)t * E);
        else memcpy(c->e + (size_t)t * E, M->tok_emb + (size_t)ids[t] * E, E * 4);
    }
    if (LINEAR_PRESENT(&M->proj_in)) matmul(c, &M->proj_in, c->e, c->x, n);
    else memcpy(c->x, c->e, nH * 4);
    if (M->pos_emb)
        for (int t = 0; t < n; t++) add(c->x + (size_t)t * H, M->pos_emb + (size_t)(c->pos + t + m->pos_offset) * H, H);

    for (int l = 0; l < m->layers; l++) {
        const layer_w *L = &M->L[l];
        /* attention */
        const float *hin = c->x;
        if (m->pre_norm) { norm(m, &L->ln1, c->x, c->h, n, H); hin = c->h; }
        matmul(c, &L->q, hin, c->q, n);
        matmul(c, &L->k, hin, c->k, n);
        matmul(c, &L->v, hin, c->v, n);
        if (m->qk_norm) {
            const bq_config hc = {.norm = NORM_RMS, .norm_eps = m->norm_eps};
            norm(&hc, &L->q_norm, c->q, c->q, n * m->heads, m->head_dim);
            norm(&hc, &L->k_norm, c->k, c->k, n * m->kv_heads, m->head_dim);
        }
        if (m->rope) {
            rope(m, c->q, n, m->heads, c->pos);
            rope(m, c->k, n, m->kv_heads, c->pos);
        }
        if (M->kv_q) {  /* the cache stores K and V quantised along head_dim */
            bq_qdq(M->kv_q, c->k, c->k, (size_t)n * m->kv_heads, (size_t)m->head_dim, &M->qopts);
            bq_qdq(M->kv_q, c->v, c->v, (size_t)n * m->kv_heads, (size_t)m->head_dim, &M->qopts);
        }
        size_t off = ((size_t)l * c->max_tokens + c->pos) * kvd;
        memcpy(c->kc + off, c->k, (size_t)n * kvd * 4);
        memcpy(c->vc + off, c->v, (size_t)n * kvd * 4);
        attention(c, l, n);
        matmul(c, &L->o, c->a, c->h, n);
        if (c->oom) { c->oom = 0; return bq_fail(BQ_ERR_NOMEM, "out of memory in a packed matmul (layer %d)", l); }
        if ((st = check_finite(c, c->h, n, H, l, "attention output (o_proj)"))) return st;
        add(c->x, c->h, nH);
        if (!m->pre_norm) norm(m, &L->ln1, c->x, c->x, n, H);

        /* MLP */
        hin = c->x;
        if (m->pre_norm) { norm(m, &L->ln2, c->x, c->h, n, H); hin = c->h; }
        size_t nI = (size_t)n * m->inter;
        matmul(c, &L->up, hin, c->u, n);
        if (m->act == ACT_SILU_GATED) {
            matmul(c, &L->gate, hin, c->g, n);
            for (size_t i = 0; i < nI; i++) c->u[i] *= c->g[i] / (1.0f + expf(-c->g[i]));
        } else if (m->act == ACT_RELU) {
            for (size_t i = 0; i < nI; i++) c->u[i] = c->u[i] > 0 ? c->u[i] : 0.0f;
        } else {
            for (size_t i = 0; i < nI; i++) c->u[i] = gelu_tanh(c->u[i]);
        }
        matmul(c, &L->down, c->u, c->h, n);
        if (c->oom) { c->oom = 0; return bq_fail(BQ_ERR_NOMEM, "out of memory in a packed matmul (layer %d)", l); }
        if ((st = check_finite(c, c->h, n, H, l, "MLP output (down_proj)"))) return st;
        add(c->x, c->h, nH);
        if (!m->pre_norm) norm(m, &L->ln2, c->x, c->x, n, H);
    }

    /* head: only the rows the caller wants */
    int first = all ? 0 : n - 1, rows = n - first;
    float *xf = c->x + (size_t)first * H;
    if (m->final_norm) norm(m, &M->final_ln, xf, xf, rows, H);
    if (LINEAR_PRESENT(&M->proj_out)) { matmul(c, &M->proj_out, xf, c->e, rows); xf = c->e; }
    matmul(c, &M->head, xf, logits, rows);
    if (c->oom) { c->oom = 0; return bq_fail(BQ_ERR_NOMEM, "out of memory in a packed matmul (LM head)"); }
    if ((st = check_finite(c, logits, rows, m->vocab, m->layers, "logits"))) return st;
    c->pos += n;
    return BQ_OK;
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

void bq_set_threads(int n)
{
    pthread_once(&g_blas_once, blas_single_thread);
    g_threads = n;
}
