/* The training operations on the CPU (tops.h). Products run as single-threaded
 * SGEMMs on fixed slices spread over the pool, attention per group of heads sharing
 * a K/V head, so the bits never depend on the thread count. */
#include "tops.h"
#include "backend.h"
#include "quant.h"
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { SLICE = 64 };

typedef struct {
    tr_be base;
    bq_pool *pool;
    int threads, half;
    float *cos, *sin;  /* [T][half] */
} cpu_be;

static cpu_be *C(tr_be *b) { return (cpu_be *)b; }

/* ---- memory ------------------------------------------------------------------------ */

static void c_destroy(tr_be *b)
{
    if (!b) return;
    bq_pool_free(C(b)->pool);
    free(C(b)->cos);
    free(C(b)->sin);
    free(b);
}
static float *c_alloc(tr_be *b, size_t n) { (void)b; return calloc(n ? n : 1, sizeof(float)); }
static void c_release(tr_be *b, float *p) { (void)b; free(p); }
static bq_status c_put(tr_be *b, float *dst, const float *h, size_t n) { (void)b; if (dst != h) memcpy(dst, h, n * sizeof *dst); return BQ_OK; }
static bq_status c_get(tr_be *b, float *h, const float *src, size_t n) { (void)b; if (h != src) memcpy(h, src, n * sizeof *h); return BQ_OK; }
static void c_zero(tr_be *b, float *x, size_t n) { (void)b; memset(x, 0, n * sizeof *x); }
static void c_copy(tr_be *b, float *dst, const float *src, size_t n) { (void)b; memcpy(dst, src, n * sizeof *dst); }
static bq_status c_status(tr_be *b) { (void)b; return BQ_OK; }

/* ---- products in fixed slices ------------------------------------------------------ */

typedef struct {
    mm_kind kind;
    int n, in, out;
    const float *a, *w;
    float *y;
    float beta;
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

static void c_mm(tr_be *b, mm_kind k, int n, int in, int out, const float *a, const float *w, float *y, float beta)
{
    mm_job j = {k, n, in, out, a, w, y, beta};
    int lim = k == MM_DX ? in : out;
    size_t slices = (size_t)(lim + SLICE - 1) / SLICE;
    double work = (double)n * in * out;
    bq_pool_for(C(b)->pool, slices, work < 1e6 ? 1 : C(b)->threads, mm_range, &j);
}

static void c_gemm(tr_be *b, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                   float beta, float *Cm, int ldc)
{
    (void)b;
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb,
                beta, Cm, ldc);
}

static bq_status c_qdq(tr_be *b, const bq_format *f, const float *x, float *y, size_t rows, size_t cols, const bq_qopts *o)
{
    (void)b;
    return bq_qdq(f, x, y, rows, cols, o);
}

/* ---- element-wise steps ------------------------------------------------------------- */

static void c_embed(tr_be *b, const int32_t *ids, int n, const float *E, int d, float *x)
{
    (void)b;
    for (int i = 0; i < n; i++) memcpy(x + (size_t)i * d, E + (size_t)ids[i] * d, (size_t)d * sizeof *x);
}

static void c_embed_bwd(tr_be *b, const int32_t *ids, int n, const float *dx, int d, float *gE)
{
    (void)b;
    for (int i = 0; i < n; i++) {
        float *ge = gE + (size_t)ids[i] * d;
        for (int k = 0; k < d; k++) ge[k] += dx[(size_t)i * d + k];
    }
}

static void c_rms(tr_be *b, const float *x, const float *w, float *y, float *rstd, int n, int d, float eps)
{
    (void)b;
    rms_rows(x, w, y, rstd, n, d, eps);  /* the inference engine's, so the losses agree */
}

/* dx += rstd (dy w - xhat mean(dy w xhat)), xhat = x rstd;  gw += sum dy xhat */
static void c_rms_bwd(tr_be *b, const float *x, const float *w, const float *rstd, const float *dy, float *dx, float *gw, int n,
                      int d)
{
    (void)b;
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

/* Hugging Face's pairing: element i with i + d/2; the inverse rotates back. */
static void c_rope(tr_be *b, float *x, int n, int heads, int d, int dir)
{
    const cpu_be *cb = C(b);
    int half = d / 2;
    for (int r = 0; r < n; r++)
        for (int h = 0; h < heads; h++) {
            float *v = x + ((size_t)r * heads + h) * d;
            for (int i = 0; i < half; i++) {
                float cs = cb->cos[(size_t)r * half + i], sn = dir * cb->sin[(size_t)r * half + i];
                float a = v[i], c = v[i + half];
                v[i] = a * cs - c * sn;
                v[i + half] = c * cs + a * sn;
            }
        }
}

static void c_act(tr_be *b, int kind, const float *g, const float *u, float *m, size_t n)
{
    (void)b;
    for (size_t i = 0; i < n; i++) m[i] = train_act(kind, kind == ACT_SILU_GATED ? g[i] : 0.0f, u[i]);
}

static void c_act_bwd(tr_be *b, int kind, const float *g, const float *u, const float *dm, float *dg, float *du, size_t n)
{
    (void)b;
    for (size_t i = 0; i < n; i++) train_act_bwd(kind, kind == ACT_SILU_GATED ? g[i] : 0.0f, u[i], dm[i], &dg[i], &du[i]);
}

static void c_ln(tr_be *b, const float *x, const float *w, const float *bias, float *y, float *mu, float *rstd, int n, int d,
                 float eps)
{
    (void)b;
    ln_rows(x, w, bias, y, mu, rstd, n, d, eps);  /* the inference engine's */
}

/* xhat = (x - mu) rstd, g = dy w:  dx += rstd (g - mean(g) - xhat mean(g xhat));  gw += dy xhat;  gb += dy */
static void c_ln_bwd(tr_be *b, const float *x, const float *w, const float *mu, const float *rstd, const float *dy, float *dx,
                     float *gw, float *gb, int n, int d)
{
    (void)b;
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * d, *dr = dy + (size_t)r * d;
        float s = rstd[r], m = mu[r];
        double sg = 0, sgx = 0;
        for (int i = 0; i < d; i++) {
            float xh = (xr[i] - m) * s, gi = dr[i] * w[i];
            sg += gi;
            sgx += (double)gi * xh;
        }
        float mg = (float)(sg / d), mgx = (float)(sgx / d);
        for (int i = 0; i < d; i++) {
            float xh = (xr[i] - m) * s;
            dx[(size_t)r * d + i] += s * (dr[i] * w[i] - mg - xh * mgx);
            if (gw) gw[i] += dr[i] * xh;
            if (gb) gb[i] += dr[i];
        }
    }
}

static void c_add(tr_be *b, float *x, const float *y, size_t n)
{
    (void)b;
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

static void c_bias(tr_be *b, float *y, const float *bias, int n, int out)
{
    (void)b;
    for (int r = 0; r < n; r++)
        for (int o = 0; o < out; o++) y[(size_t)r * out + o] += bias[o];
}

static void c_bias_bwd(tr_be *b, const float *dy, float *gb, int n, int out)
{
    (void)b;
    for (int r = 0; r < n; r++)
        for (int o = 0; o < out; o++) gb[o] += dy[(size_t)r * out + o];
}

static bq_status c_xent(tr_be *b, float *lg, const int32_t *ids, int rows, int V, float gs, double *nll)
{
    (void)b;
    double sum_nll = 0;
    for (int r = 0; r < rows; r++) {
        float *row = lg + (size_t)r * V, mx = -INFINITY;
        for (int v = 0; v < V; v++) mx = row[v] > mx ? row[v] : mx;
        int tgt = ids[r + 1];
        double sum = 0, z = row[tgt] - mx;
        for (int v = 0; v < V; v++) sum += (row[v] = expf(row[v] - mx));
        sum_nll += log(sum) - z;
        float inv = (float)(1.0 / sum) * gs;
        for (int v = 0; v < V; v++) row[v] *= inv;
        row[tgt] -= gs;
    }
    *nll = sum_nll;
    return BQ_OK;
}

static bq_status c_sumsq(tr_be *b, const float *g, size_t n, double *out)
{
    (void)b;
    double s = 0;
    for (size_t k = 0; k < n; k++) s += (double)g[k] * g[k];
    *out = s;
    return BQ_OK;
}

static void c_adamw(tr_be *b, float *w, const float *g, float *m, float *v, size_t n, const tr_adam *a, int decay)
{
    (void)b;
    for (size_t j = 0; j < n; j++) {
        float gj = g[j] * a->clip;
        m[j] = a->b1 * m[j] + (1.0f - a->b1) * gj;
        v[j] = a->b2 * v[j] + (1.0f - a->b2) * gj * gj;
        float mh = m[j] / a->c1, vh = v[j] / a->c2;
        w[j] -= a->lr * (mh / (sqrtf(vh) + a->eps) + (decay ? a->wd * w[j] : 0.0f));
    }
}

/* ---- attention, per group of heads sharing one K/V head ------------------------------ */

typedef struct {
    const tr_att *a;
    const float *q, *k, *vt;  /* vt: with a format, v^T quantised [kvh * d][n]; else NULL (v itself) */
    const float *v, *P, *da;
    float *Pw, *out, *dq, *dk, *dv;
} att_job;

/* The format's copy of one head's probabilities (rows of n), into the group's scratch. */
static void probs_q(const tr_att *a, const float *P, float *Pq)
{
    bq_qopts o = *a->qo;
    o.threads = 1;  /* inside a worker; the bits do not depend on it */
    bq_qdq(a->af, P, Pq, (size_t)a->n, (size_t)a->n, &o);
}

static void att_fwd_range(void *arg, size_t g0, size_t g1)
{
    const att_job *j = arg;
    const tr_att *a = j->a;
    int n = a->n, d = a->d, qd = a->heads * d, kd = a->kvh * d, per = a->heads / a->kvh;
    float scale = 1.0f / sqrtf((float)d);
    for (size_t g = g0; g < g1; g++)
        for (int h = (int)g * per; h < ((int)g + 1) * per; h++) {
            float *P = j->Pw + (size_t)h * n * n;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, scale, j->q + (size_t)h * d, qd, j->k + g * d, kd, 0.0f, P, n);
            for (int r = 0; r < n; r++) {
                float *row = P + (size_t)r * n, mx = -INFINITY;
                int f = a->window && r >= a->window ? r - a->window + 1 : 0;
                for (int c = f; c <= r; c++) mx = row[c] > mx ? row[c] : mx;
                double sum = 0;
                for (int c = f; c <= r; c++) sum += (row[c] = expf(row[c] - mx));
                float inv = (float)(1.0 / sum);
                for (int c = 0; c < n; c++) row[c] = c >= f && c <= r ? row[c] * inv : 0.0f;
            }
            if (j->vt) {  /* q(P) q(v^T)^T */
                float *Pq = a->dP + g * (size_t)n * n;
                probs_q(a, P, Pq);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d, n, 1.0f, Pq, n, j->vt + g * d * (size_t)n, n, 0.0f,
                            j->out + (size_t)h * d, qd);
            } else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, n, 1.0f, P, n, j->v + g * d, kd, 0.0f,
                            j->out + (size_t)h * d, qd);
        }
}

static void att_bwd_range(void *arg, size_t g0, size_t g1)
{
    const att_job *j = arg;
    const tr_att *a = j->a;
    int n = a->n, d = a->d, qd = a->heads * d, kd = a->kvh * d, per = a->heads / a->kvh;
    float scale = 1.0f / sqrtf((float)d);
    for (size_t g = g0; g < g1; g++) {
        float *dP = a->dP + g * (size_t)n * n;
        for (int h = (int)g * per; h < ((int)g + 1) * per; h++) {
            const float *P = j->P + (size_t)h * n * n, *dah = j->da + (size_t)h * d;
            float beta = h == (int)g * per ? 0.0f : 1.0f;  /* the group's first head overwrites dK, dV */
            if (j->vt) {  /* dV += q(P)^T dA;  dP = dA q(v^T) (q(P) made again in dP's place, used first) */
                probs_q(a, P, dP);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, n, 1.0f, dP, n, dah, qd, beta, j->dv + g * d, kd);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, d, 1.0f, dah, qd, j->vt + g * d * (size_t)n, n, 0.0f,
                            dP, n);
            } else {  /* dV += P^T dA;  dP = dA V^T */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, n, 1.0f, P, n, dah, qd, beta, j->dv + g * d, kd);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, 1.0f, dah, qd, j->v + g * d, kd, 0.0f, dP, n);
            }
            /* softmax: dS = P (dP - sum_c P dP), times the score scale */
            for (int r = 0; r < n; r++) {
                float *dr = dP + (size_t)r * n;
                const float *pr = P + (size_t)r * n;
                double dot = 0;
                for (int c = 0; c <= r; c++) dot += (double)pr[c] * dr[c];
                for (int c = 0; c < n; c++) dr[c] = c <= r ? pr[c] * (dr[c] - (float)dot) * scale : 0.0f;
            }
            /* dQ = dS K;  dK += dS^T Q (the quantised operands, straight through) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, n, 1.0f, dP, n, j->k + g * d, kd, 0.0f,
                        j->dq + (size_t)h * d, qd);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, n, 1.0f, dP, n, j->q + (size_t)h * d, qd, beta,
                        j->dk + g * d, kd);
        }
    }
}

/* The attention format's copies of q, k and v^T, into a->qs (none without a format). */
static bq_status att_operands(const tr_att *a, att_job *j)
{
    if (!a->af) return BQ_OK;
    size_t n = (size_t)a->n, qd = (size_t)a->heads * a->d, kd = (size_t)a->kvh * a->d;
    float *qq = a->qs, *kq = qq + n * qd, *vt = kq + n * kd;
    bq_status st = bq_qdq(a->af, j->q, qq, n * a->heads, (size_t)a->d, a->qo);
    if (!st) st = bq_qdq(a->af, j->k, kq, n * a->kvh, (size_t)a->d, a->qo);
    for (size_t c = 0; c < kd && !st; c++)
        for (size_t t = 0; t < n; t++) vt[c * n + t] = j->v[t * kd + c];
    if (!st) st = bq_qdq(a->af, vt, vt, kd, n, a->qo);
    j->q = qq;
    j->k = kq;
    j->vt = vt;
    return st;
}

static bq_status c_att(tr_be *b, const tr_att *a, const float *q, const float *k, const float *v, float *P, float *out)
{
    att_job j = {a, q, k, NULL, v, NULL, NULL, P, out, NULL, NULL, NULL};
    bq_status st = att_operands(a, &j);
    if (!st) bq_pool_for(C(b)->pool, (size_t)a->kvh, C(b)->threads, att_fwd_range, &j);
    return st;
}

static bq_status c_att_bwd(tr_be *b, const tr_att *a, const float *q, const float *k, const float *v, const float *P,
                           const float *da, float *dq, float *dk, float *dv)
{
    att_job j = {a, q, k, NULL, v, P, da, NULL, NULL, dq, dk, dv};
    bq_status st = att_operands(a, &j);
    if (!st) bq_pool_for(C(b)->pool, (size_t)a->kvh, C(b)->threads, att_bwd_range, &j);
    return st;
}

static const tr_ops CPU_OPS = {
    "cpu", 1, c_destroy, c_alloc, c_release, c_put, c_get, c_zero, c_copy, c_mm, c_gemm, c_qdq, c_embed, c_embed_bwd, c_rms,
    c_rms_bwd, c_rope, c_att, c_att_bwd, c_act, c_act_bwd, c_ln, c_ln_bwd, c_add, c_bias, c_bias_bwd, c_xent,
    c_sumsq, c_adamw, c_status,
};

bq_status tr_cpu_new(int threads, int T, int half, const float *rope_cos, const float *rope_sin, tr_be **out)
{
    *out = NULL;
    cpu_be *b = calloc(1, sizeof *b);
    size_t n = (size_t)T * half;
    if (!b) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    b->cos = malloc((n ? n : 1) * sizeof(float));
    b->sin = malloc((n ? n : 1) * sizeof(float));
    if (!b->cos || !b->sin) {
        c_destroy(&b->base);
        return bq_fail(BQ_ERR_NOMEM, "out of memory");
    }
    memcpy(b->cos, rope_cos, n * sizeof(float));
    memcpy(b->sin, rope_sin, n * sizeof(float));
    b->base.ops = &CPU_OPS;
    be_blas_single_thread();
    b->threads = threads;
    b->pool = bq_pool_new(threads);
    b->half = half;
    *out = &b->base;
    return BQ_OK;
}
