/* The CPU backend: the driver's operations (backend.h) on host memory, with
 * OpenBLAS's single-threaded SGEMM and the packed kernels (src/kernels) in fixed
 * slices spread over the context's threads, so the bits never depend on the
 * thread count. */
#include "backend.h"
#include "pmat.h"
#include "lmul.h"
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* OpenBLAS runs single-threaded inside our workers: threads come from the fixed
 * slices below, so the sums' order (and the bits) never depend on OpenBLAS's own
 * pool. Done once per process, before any product, for every embedder. */
static void blas_single_thread(void)
{
    extern void openblas_set_num_threads(int);
    openblas_set_num_threads(1);
}
static pthread_once_t g_blas_once = PTHREAD_ONCE_INIT;
void be_blas_single_thread(void) { pthread_once(&g_blas_once, blas_single_thread); }

typedef struct {
    be base;
    float *kc, *vc;  /* [hi - lo][max_tokens][kv_dim]: its layers' cache */
    float *kq, *vt;  /* attention quantisation: K copy [T, kv_dim], V^T [kv_dim, T] */
    int cap;         /* tokens the scratch below holds */
    float *att;      /* one score matrix [n, T] per head */
    float *xq;       /* a quantised copy of a linear's input */
    bq_pool *pool;   /* the context's threads, kept between products (NULL: one thread) */
} cpu_be;

/* Threads for a product of `work` multiply-adds: each gets at least 3e4 of them (a
 * job handed to the pool's spinning workers costs about a microsecond; 16 threads on
 * a 384x384 GEMV spent more time meeting than computing). Without a pool, threads
 * start per call: only from 1e6 on. The slices do not change, so neither do the bits. */
static int threads_for(const cpu_be *c, double work)
{
    if (!c->pool) return work < 1e6 ? 1 : c->base.threads;
    double t = work / 3e4, all = bq_pool_threads(c->pool);
    return t < 1 ? 1 : t < all ? (int)t : (int)all;
}

static const bq_config *cfg(const be *b) { return &b->m->c; }

static bq_status ensure(cpu_be *c, int n)
{
    if (n <= c->cap) return BQ_OK;
    const bq_config *m = cfg(&c->base);
    size_t H = (size_t)m->hidden, qd = (size_t)m->heads * m->head_dim, ffn = (size_t)m->inter, E = (size_t)m->embed_dim;
    size_t maxin = H > ffn ? H : ffn;
    maxin = maxin > qd ? maxin : qd;
    maxin = maxin > E ? maxin : E;
    free(c->att);
    free(c->xq);
    c->att = malloc((size_t)m->heads * n * c->base.max_tokens * 4);
    c->xq = malloc((size_t)n * maxin * 4);
    c->cap = c->att && c->xq ? n : 0;
    return c->cap ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory for %d tokens of scratch", n);
}

static void *cpu_alloc(be *b, size_t n) { (void)b; return malloc(n ? n : 1); }
static void cpu_release(be *b, void *p) { (void)b; free(p); }

static void cpu_destroy(be *b)
{
    cpu_be *c = (cpu_be *)b;
    free(c->kc); free(c->vc); free(c->kq); free(c->vt); free(c->att); free(c->xq);
    bq_pool_free(c->pool);
    free(c);
}

static bq_status cpu_embed(be *b, const int32_t *ids, int n, float *e)
{
    const bq_model *M = b->m;
    int E = M->c.embed_dim;
    for (int t = 0; t < n; t++) {
        if (M->emb_p) pmat_decode(M->emb_p, ids[t], ids[t] + 1, e + (size_t)t * E);
        else memcpy(e + (size_t)t * E, M->tok_emb + (size_t)ids[t] * E, E * 4);
    }
    return BQ_OK;
}

static bq_status cpu_add(be *b, float *x, const float *y, size_t n)
{
    (void)b;
    for (size_t i = 0; i < n; i++) x[i] += y[i];
    return BQ_OK;
}

static bq_status cpu_add_pos(be *b, float *x, int n, int pos0)
{
    const bq_model *M = b->m;
    int H = M->c.hidden;
    for (int t = 0; t < n; t++) cpu_add(b, x + (size_t)t * H, M->pos_emb + (size_t)(pos0 + t + M->c.pos_offset) * H, H);
    return BQ_OK;
}

/* ---- linear layers -------------------------------------------------------- */

/* Fixed slices of SLICE output features, one single-threaded SGEMM each: the
 * calls and their shapes never depend on the thread count, so neither do the
 * bits (OpenBLAS's own threading and its results for other shapes do). */
enum { SLICE = 64, MV_MAX = 8 };
typedef struct { const linear *l; const float *x; float *y; int n; const pm_act *act; int oom; } mm_job;

/* One slice of a packed weight: integer kernels when the activation is quantised
 * to an integer grid, float kernels for a few tokens, else the slice decoded
 * into `buf` for the same SGEMM the float path runs (so the bits match fake
 * quantisation exactly). */
static const float *slice_weights(mm_job *j, int o0, int o1, float **buf)
{
    const linear *l = j->l;
    if (!l->pw && j->n <= MV_MAX && !l->lmul) { mv_rows_f32(l->w, l->in, j->x, j->n, j->y, l->out, o0, o1); return NULL; }
    if (!l->pw) return l->w + (size_t)o0 * l->in;
    if (j->act) { pmat_mm_int(l->pw, j->act, j->y, l->out, o0, o1); return NULL; }
    if (l->pw->kind == PM_PANEL && j->n <= MV_MAX && !l->lmul) { pmat_mv_f32(l->pw, j->x, j->n, j->y, l->out, o0, o1); return NULL; }
    if (j->n <= MV_MAX && !l->lmul && pmat_mv_float16(l->pw, j->x, j->n, j->y, l->out, o0, o1)) return NULL;
    if (!*buf && !(*buf = malloc((size_t)SLICE * l->in * sizeof **buf))) { j->oom = 1; return NULL; }
    pmat_decode(l->pw, o0, o1, *buf);
    return *buf;
}

/* Slice s of a product: its weights (or a kernel that wrote y itself), then the SGEMM. */
static void mm_slice(mm_job *j, size_t s, float **buf)
{
    int o0 = (int)s * SLICE, o1 = o0 + SLICE < j->l->out ? o0 + SLICE : j->l->out;
    const float *w = slice_weights(j, o0, o1, buf);
    if (w && j->l->lmul) lmul_matmul(j->x, j->n, w, j->l->in, j->y, j->l->out, o0, o1, j->l->lmul);
    else if (w)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->n, o1 - o0, j->l->in, 1.0f, j->x, j->l->in, w,
                    j->l->in, 0.0f, j->y + o0, j->l->out);
}

/* Several products on one input in one parallel region: slices numbered across
 * them (first[i]: product i's first), each computed as alone. */
enum { MM_MAX = 3 };
typedef struct { mm_job *j; int count; size_t first[MM_MAX + 1]; } mm_multi;

static void mm_range(void *arg, size_t b, size_t e)
{
    mm_multi *mj = arg;
    float *buf[MM_MAX] = {NULL};
    int i = 0;
    for (size_t s = b; s < e; s++) {
        while (s >= mj->first[i + 1]) i++;
        mm_slice(&mj->j[i], s - mj->first[i], &buf[i]);
    }
    for (int k = 0; k < mj->count; k++) free(buf[k]);
}

/* LoRC's low-rank correction, y += (q(x) B^T) A^T, on the same quantised input as
 * the main product (xq; NULL: quantise x, the integer path made no float copy). Two
 * single-threaded SGEMMs: the bits do not depend on the thread count. */
static bq_status lorc_add(cpu_be *c, const linear *l, const float *xq, const float *x, float *y, int n)
{
    if (!xq) {
        bq_qdq(l->aq, x, c->xq, (size_t)n, (size_t)l->in, &c->base.m->qopts);
        xq = c->xq;
    }
    float *t = malloc((size_t)n * l->lr_rank * sizeof *t);
    if (!t) return bq_fail(BQ_ERR_NOMEM, "out of memory for %s's LoRC term", l->name);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, l->lr_rank, l->in, 1.0f, xq, l->in, l->lr_b, l->in, 0.0f, t,
                l->lr_rank);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, l->out, l->lr_rank, 1.0f, t, l->lr_rank, l->lr_a, l->lr_rank,
                1.0f, y, l->out);
    free(t);
    return BQ_OK;
}

static int same_format(const bq_format *a, const bq_format *b)
{
    return a == b || (a && b && !strcmp(bq_format_canonical(a), bq_format_canonical(b)));
}

/* The linears rs[0..count) of one layer on one input x (q, k and v; up and gate):
 * the input quantised once (their activation format is the same, or they go one
 * by one), then one parallel product over all their slices: fewer meetings of the
 * threads a token. Each slice computes what it computes alone: the same bits.
 * The activation is quantised along `in`, the matmul's reduction dimension. */
static bq_status cpu_linears(be *b, int layer, const lin_role *rs, int count, const float *x, float *const *ys, int n)
{
    cpu_be *c = (cpu_be *)b;
    if (count > MM_MAX) return bq_fail(BQ_ERR_ARG, "%d linears on one input: at most %d", count, MM_MAX);
    const linear *ls[MM_MAX];
    for (int i = 0; i < count; i++) ls[i] = model_linear(b->m, layer, rs[i]);
    for (int i = 1; i < count; i++)
        if (!same_format(ls[i]->aq, ls[0]->aq) || ls[i]->in != ls[0]->in) {  /* one by one */
            bq_status st = BQ_OK;
            for (int k = 0; k < count && !st; k++) st = cpu_linears(b, layer, &rs[k], 1, x, &ys[k], n);
            return st;
        }
    bq_status st = ensure(c, n);
    if (st) return st;
    const bq_format *aq = ls[0]->aq;
    pm_act act;
    int have_act = 0, have_xq = 0;
    mm_job jobs[MM_MAX];
    mm_multi mj = {jobs, count, {0}};
    double work = 0;
    for (int i = 0; i < count && !st; i++) {
        const linear *l = ls[i];
        /* an integer activation grid against panel weights: integer dot products
         * (VNNI), for one token as for many (the same bits as fake quantisation
         * followed by the float product, up to the order of the float sums) */
        int int_path = aq && l->pw && !l->lmul && pmat_int_ok(l->pw, aq);
        if (int_path && !have_act) {
            if (pm_act_make(aq, x, n, l->in, &b->m->qopts, &act)) st = bq_fail(BQ_ERR_NOMEM, "out of memory quantising the input of %s", l->name);
            else have_act = 1;
        } else if (aq && !int_path && !have_xq) {
            bq_qdq(aq, x, c->xq, (size_t)n, (size_t)l->in, &b->m->qopts);
            have_xq = 1;
        }
        jobs[i] = (mm_job){l, aq && !int_path ? c->xq : x, ys[i], n, int_path ? &act : NULL, 0};
        mj.first[i + 1] = mj.first[i] + (size_t)(l->out + SLICE - 1) / SLICE;
        work += (double)n * l->out * l->in;
    }
    if (!st) bq_pool_for(c->pool, mj.first[count], threads_for(c, work), mm_range, &mj);
    if (have_act) pm_act_free(&act);
    for (int i = 0; i < count && !st; i++) {
        const linear *l = ls[i];
        if (jobs[i].oom) return bq_fail(BQ_ERR_NOMEM, "out of memory in a packed matmul (%s)", l->name);
        if (l->lr_rank && (st = lorc_add(c, l, jobs[i].act ? NULL : jobs[i].x, x, ys[i], n))) return st;
        if (l->b)
            for (int t = 0; t < n; t++)
                for (int o = 0; o < l->out; o++) ys[i][(size_t)t * l->out + o] += l->b[o];
    }
    return st;
}

static bq_status cpu_linear(be *b, int layer, lin_role r, const float *x, float *y, int n)
{
    return cpu_linears(b, layer, &r, 1, x, &y, n);
}

/* ---- element-wise steps ----------------------------------------------------- */

void rms_rows(const float *x, const float *w, float *y, float *rstd, int n, int d, float eps)
{
    for (int t = 0; t < n; t++) {
        const float *xr = x + (size_t)t * d;
        float *yr = y + (size_t)t * d;
        double ss = 0;
        for (int i = 0; i < d; i++) ss += (double)xr[i] * xr[i];
        float s = (float)(1.0 / sqrt(ss / d + eps));
        if (rstd) rstd[t] = s;
        for (int i = 0; i < d; i++) yr[i] = w[i] * (xr[i] * s);
    }
}

static bq_status cpu_norm(be *b, int layer, norm_role r, const float *x, float *y, int n, int d)
{
    const bq_config *c = cfg(b);
    const normp *p = model_norm(b->m, layer, r);
    if (c->norm == NORM_RMS || r == N_Q || r == N_K) {
        rms_rows(x, p->w, y, NULL, n, d, c->norm_eps);
        return BQ_OK;
    }
    ln_rows(x, p->w, p->b, y, NULL, NULL, n, d, c->norm_eps);
    return BQ_OK;
}

void ln_rows(const float *x, const float *w, const float *b, float *y, float *mu, float *rstd, int n, int d, float eps)
{
    for (int t = 0; t < n; t++) {
        const float *xr = x + (size_t)t * d;
        float *yr = y + (size_t)t * d;
        double mean = 0, var = 0;
        for (int i = 0; i < d; i++) mean += xr[i];
        mean /= d;
        for (int i = 0; i < d; i++) var += (xr[i] - mean) * (xr[i] - mean);
        float s = (float)(1.0 / sqrt(var / d + eps));
        if (mu) mu[t] = (float)mean;
        if (rstd) rstd[t] = s;
        for (int i = 0; i < d; i++) yr[i] = (float)(xr[i] - mean) * s * w[i] + (b ? b[i] : 0.0f);
    }
}

float rope_angle(const bq_config *c, int i, int pos)
{
    float inv = (float)(1.0 / pow((double)c->rope_theta, (double)(2 * i) / c->head_dim));
    return (float)pos * inv;
}

/* Rotary embedding, Hugging Face convention: element i pairs with i + d/2. */
static bq_status cpu_rope(be *b, float *x, int n, int nheads, int pos0)
{
    const bq_config *c = cfg(b);
    int d = c->head_dim, half = d / 2;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < half; i++) {
            float ang = rope_angle(c, i, pos0 + t);
            float cs = cosf(ang), sn = sinf(ang);
            for (int h = 0; h < nheads; h++) {
                float *v = x + ((size_t)t * nheads + h) * d;
                float a = v[i], bb = v[i + half];
                v[i] = a * cs - bb * sn;
                v[i + half] = bb * cs + a * sn;
            }
        }
    return BQ_OK;
}


static bq_status cpu_act(be *b, float *u, const float *g, size_t n)
{
    int act = cfg(b)->act;
    for (size_t i = 0; i < n; i++) u[i] = mlp_act(act, u[i], act == ACT_SILU_GATED ? g[i] : 0.0f);
    return BQ_OK;
}

static bq_status cpu_qdq(be *b, const bq_format *f, const float *x, float *y, size_t rows, size_t cols)
{
    bq_qdq(f, x, y, rows, cols, &b->m->qopts);
    return BQ_OK;
}

static bq_status cpu_check(be *b, const float *x, int n, int d, int layer, check_site s, int pos)
{
    (void)b;
    for (size_t i = 0; i < (size_t)n * d; i++)
        if (!isfinite(x[i])) return be_nonfinite(isnan(x[i]), layer, s, pos + (int)(i / (size_t)d));
    return BQ_OK;
}

/* ---- attention ---------------------------------------------------------------- */

static size_t kvd(const be *b) { return (size_t)cfg(b)->kv_heads * cfg(b)->head_dim; }

static bq_status cpu_kv_store(be *b, int layer, const float *k, const float *v, int n, int pos)
{
    cpu_be *c = (cpu_be *)b;
    size_t off = ((size_t)(layer - b->lo) * b->max_tokens + pos) * kvd(b);
    memcpy(c->kc + off, k, (size_t)n * kvd(b) * 4);
    memcpy(c->vc + off, v, (size_t)n * kvd(b) * 4);
    return BQ_OK;
}

/* Causal attention of n new queries against the cache of one layer. */
typedef struct { cpu_be *c; const float *Q, *K, *V; float *A; int n, T, pos; } att_job;

static void attend_heads(void *arg, size_t h0, size_t h1)
{
    const att_job *j = arg;
    cpu_be *c = j->c;
    const bq_config *m = cfg(&c->base);
    int d = m->head_dim, group = m->heads / m->kv_heads, n = j->n, T = j->T;
    size_t kv = (size_t)m->kv_heads * d, qd = (size_t)m->heads * d;
    const bq_format *aq = c->base.m->attn_q;
    float scale = 1.0f / sqrtf((float)d);
    /* a few queries (decoding): dot products over the cache instead of SGEMMs,
     * which would copy their operands first */
    int few = n <= MV_MAX && !aq;
    for (size_t h = h0; h < h1; h++) {
        int kh = (int)h / group;
        float *att = c->att + h * (size_t)n * T;
        /* scores [n, T] = Q_h K_h^T */
        if (few) {
            mv_rows_f32_ld(j->K + (size_t)kh * d, kv, d, j->Q + h * d, qd, n, att, T, 0, T);
            for (size_t i = 0; i < (size_t)n * T; i++) att[i] *= scale;
        } else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, T, d, scale, j->Q + h * d, (int)qd,
                        j->K + (size_t)kh * d, (int)kv, 0.0f, att, T);
        for (int t = 0; t < n; t++) {
            float *s = att + (size_t)t * T;
            /* causal: keys first..last (a sliding window keeps the last `window` of them) */
            int last = j->pos + t, first = attn_first_key(m, last);
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
            bq_qopts o = c->base.m->qopts;
            o.threads = 1;
            bq_qdq(aq, att, att, (size_t)n, (size_t)T, &o);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d, T, 1.0f, att, T, c->vt + (size_t)kh * d * T, T,
                        0.0f, j->A + h * d, (int)qd);
        } else if (few) {
            for (int t = 0; t < n; t++) {
                int last = j->pos + t, first = attn_first_key(m, last);
                mv_axpy_rows_f32(att + (size_t)t * T, first, last, j->V + (size_t)kh * d, kv, d, j->A + (size_t)t * qd + h * d);
            }
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, T, 1.0f, att, T, j->V + (size_t)kh * d,
                        (int)kv, 0.0f, j->A + h * d, (int)qd);
        }
    }
}

static bq_status cpu_attention(be *b, int layer, float *q, float *a, int n, int pos)
{
    cpu_be *c = (cpu_be *)b;
    const bq_config *m = cfg(b);
    int d = m->head_dim, T = pos + n;
    size_t kv = kvd(b);
    bq_status st = ensure(c, n);
    if (st) return st;
    size_t at = (size_t)(layer - b->lo) * b->max_tokens * kv;
    const float *K = c->kc + at, *V = c->vc + at;
    const bq_format *aq = b->m->attn_q;
    const bq_qopts *qo = &b->m->qopts;
    if (aq) {
        /* Q and K along head_dim; V along the token axis, so quantise V^T rows */
        bq_qdq(aq, q, q, (size_t)n * m->heads, (size_t)d, qo);
        bq_qdq(aq, K, c->kq, (size_t)T * m->kv_heads, (size_t)d, qo);
        K = c->kq;
        for (size_t j = 0; j < kv; j++)
            for (int t = 0; t < T; t++) c->vt[j * T + t] = V[(size_t)t * kv + j];
        bq_qdq(aq, c->vt, c->vt, kv, (size_t)T, qo);
    }
    att_job j = {c, q, K, V, a, n, T, pos};
    double work = (double)n * T * d * m->heads;
    bq_pool_for(c->pool, (size_t)m->heads, threads_for(c, work), attend_heads, &j);
    return BQ_OK;
}

/* ---- results -------------------------------------------------------------------- */

static bq_status cpu_logits(be *b, const float *lg, int rows, float *out)
{
    if (out != lg) memcpy(out, lg, (size_t)rows * cfg(b)->vocab * 4);
    return BQ_OK;
}

typedef struct { const float *lg; const int32_t *ids; double *lp; int V; } lp_job;

static void logprob_rows(void *arg, size_t t0, size_t t1)
{
    const lp_job *j = arg;
    for (size_t t = t0; t < t1; t++) j->lp[t] = log_softmax_at(j->lg + t * (size_t)j->V, j->V, j->ids[t + 1], NULL);
}

static bq_status cpu_logprobs(be *b, const float *lg, const int32_t *ids, int n, double *lp)
{
    lp_job j = {lg, ids, lp, cfg(b)->vocab};
    bq_pool_for(((cpu_be *)b)->pool, (size_t)n - 1, b->threads, logprob_rows, &j);
    return BQ_OK;
}

static bq_status cpu_finish(be *b) { (void)b; return BQ_OK; }

static bq_status cpu_copy(be *b, void *dst, const void *src, size_t bytes)
{
    (void)b;
    if (dst != src) memcpy(dst, src, bytes);
    return BQ_OK;
}

static bq_status cpu_rotate(be *b, const bq_rot *r, float *x, int rows)
{
    cpu_be *c = (cpu_be *)b;
    rot_job j = {r, x, 0};
    double work = (double)rows * r->n * (r->m + 20);
    bq_pool_for(c->pool, (size_t)rows, threads_for(c, work), model_rot_range, &j);
    return j.oom ? bq_fail(BQ_ERR_NOMEM, "out of memory") : BQ_OK;
}

static const be_ops cpu_ops = {
    "cpu", 1, cpu_destroy, cpu_alloc, cpu_release, cpu_embed, cpu_add_pos, cpu_linear, cpu_norm, cpu_rope, cpu_qdq,
    cpu_kv_store, cpu_attention, cpu_act, cpu_add, cpu_check, cpu_logits, cpu_logprobs, cpu_finish,
    NULL, NULL,  /* no recorded steps: nothing to save on the CPU */
    cpu_copy, cpu_copy, NULL, cpu_linears, cpu_rotate,
    NULL, NULL,  /* calibration reads host buffers itself */
    NULL, NULL, NULL, NULL,  /* no fusions: the CPU saves nothing by them */
};

bq_status be_cpu_new(const bq_model *m, int max_tokens, int threads, int lo, int hi, be **out)
{
    *out = NULL;
    be_blas_single_thread();
    cpu_be *c = calloc(1, sizeof *c);
    if (!c) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    c->base = (be){&cpu_ops, m, max_tokens, threads, lo, hi};
    c->pool = bq_pool_new(threads);  /* NULL (one thread, or no threads to start) runs serially */
    size_t sz = (size_t)(hi - lo) * max_tokens * kvd(&c->base);
    c->kc = malloc(sz * 4);
    c->vc = malloc(sz * 4);
    if (m->attn_q) {
        c->kq = malloc((size_t)max_tokens * kvd(&c->base) * 4);
        c->vt = malloc((size_t)max_tokens * kvd(&c->base) * 4);
    }
    if (!c->kc || !c->vc || (m->attn_q && (!c->kq || !c->vt))) {
        cpu_destroy(&c->base);
        return bq_fail(BQ_ERR_NOMEM, "out of memory for a %d-token KV cache", max_tokens);
    }
    *out = &c->base;
    return BQ_OK;
}
