// The training operations on a CUDA device (src/train/tops.h): products through
// cuBLAS (float32), a kernel per element-wise step. Every reduction has a fixed
// shape (a block's tree, columns summed over rows in order, the host adding
// per-block partial sums in order), so a run gives the same bits every time.
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
extern "C" {
#include "bq_cuda.h"
#include "tops.h"
}
#include "cuda_libs.h"

namespace {

const int TPB = 256;     // threads of the row kernels
const int PARTS = 512;   // blocks of a sum of squares

struct cu_be {
    tr_be base;
    int dev;
    void *blas, *blas_ws;
    float *cos, *sin;    // [T][half]
    int32_t *ids;        // the window's token ids
    double *part;        // per-row or per-block float64 results
    double *hpart;       // their host copy
    int T;
    bq_status err;       // the first failure
};

cu_be *G(tr_be *b) { return (cu_be *)b; }

void keep(cu_be *g, cudaError_t e, const char *what)
{
    if (e != cudaSuccess && !g->err) g->err = bq_fail(BQ_ERR_UNSUPPORTED, "CUDA training (%s): %s", what, cudaGetErrorString(e));
}
void launched(cu_be *g, const char *what) { keep(g, cudaGetLastError(), what); }
unsigned blocks(size_t n, int per = TPB) { return (unsigned)((n + per - 1) / per); }

// The sum over a block (all threads get it), float64, the same tree every time.
__device__ double block_sum(double v)
{
    __shared__ double sh[TPB];
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

__device__ float block_max(float v)
{
    __shared__ float sh[TPB];
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + s]);
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

// ---- kernels ----------------------------------------------------------------------

__global__ void k_embed(const int32_t *ids, const float *E, int d, float *x)
{
    const float *e = E + (size_t)ids[blockIdx.x] * d;
    for (int k = threadIdx.x; k < d; k += blockDim.x) x[(size_t)blockIdx.x * d + k] = e[k];
}

// one thread per column, the tokens in order
__global__ void k_embed_bwd(const int32_t *ids, int n, const float *dx, int d, float *gE)
{
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= d) return;
    for (int t = 0; t < n; t++) gE[(size_t)ids[t] * d + k] += dx[(size_t)t * d + k];
}

__global__ void k_rms(const float *x, const float *w, float *y, float *rstd, int d, float eps)
{
    const float *xr = x + (size_t)blockIdx.x * d;
    double ss = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) ss += (double)xr[i] * xr[i];
    ss = block_sum(ss);
    float s = (float)(1.0 / sqrt(ss / d + eps));
    if (threadIdx.x == 0 && rstd) rstd[blockIdx.x] = s;
    for (int i = threadIdx.x; i < d; i += blockDim.x) y[(size_t)blockIdx.x * d + i] = w[i] * (xr[i] * s);
}

__global__ void k_rms_bwd(const float *x, const float *w, const float *rstd, const float *dy, float *dx, int d)
{
    size_t o = (size_t)blockIdx.x * d;
    float s = rstd[blockIdx.x];
    double dot = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dot += (double)dy[o + i] * w[i] * (x[o + i] * s);
    float mean = (float)(block_sum(dot) / d);
    for (int i = threadIdx.x; i < d; i += blockDim.x) dx[o + i] += s * (dy[o + i] * w[i] - x[o + i] * s * mean);
}

// a norm's weight (and bias) gradients, a thread per column, the rows in order:
// gw += dy (x - mu) rstd (mu NULL: RMSNorm's 0), gb += dy
__global__ void k_norm_params(const float *x, const float *mu, const float *rstd, const float *dy, float *gw, float *gb, int n,
                              int d)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= d) return;
    float aw = gw ? gw[i] : 0.0f, ab = gb ? gb[i] : 0.0f;
    for (int r = 0; r < n; r++) {
        float g = dy[(size_t)r * d + i];
        aw += g * ((x[(size_t)r * d + i] - (mu ? mu[r] : 0.0f)) * rstd[r]);
        ab += g;
    }
    if (gw) gw[i] = aw;
    if (gb) gb[i] = ab;
}

__global__ void k_rope(float *x, int n, int heads, int half, const float *cs, const float *sn, float dir)
{
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)n * heads * half) return;
    int i = (int)(idx % half);
    size_t rh = idx / half;
    int r = (int)(rh / heads);
    float *v = x + rh * 2 * half;
    float c = cs[(size_t)r * half + i], s = dir * sn[(size_t)r * half + i];
    float a = v[i], b = v[i + half];
    v[i] = a * c - b * s;
    v[i + half] = b * c + a * s;
}

// rows of P (one block each): the causal (sliding-window) softmax in place
__global__ void k_softmax(float *P, int n, int window)
{
    int r = blockIdx.x;
    float *row = P + ((size_t)blockIdx.y * n + r) * n;
    int f = window && r >= window ? r - window + 1 : 0;
    float mx = -INFINITY;
    for (int c = f + threadIdx.x; c <= r; c += blockDim.x) mx = fmaxf(mx, row[c]);
    mx = block_max(mx);
    double sum = 0;
    for (int c = f + threadIdx.x; c <= r; c += blockDim.x) sum += (row[c] = expf(row[c] - mx));
    float inv = (float)(1.0 / block_sum(sum));
    for (int c = threadIdx.x; c < n; c += blockDim.x) row[c] = c >= f && c <= r ? row[c] * inv : 0.0f;
}

// dS = P (dP - sum_c P dP) scale, rows of one head
__global__ void k_softmax_bwd(const float *P, float *dP, int n, float scale)
{
    int r = blockIdx.x;
    const float *pr = P + (size_t)r * n;
    float *dr = dP + (size_t)r * n;
    double dot = 0;
    for (int c = threadIdx.x; c <= r; c += blockDim.x) dot += (double)pr[c] * dr[c];
    float dt = (float)block_sum(dot);
    for (int c = threadIdx.x; c < n; c += blockDim.x) dr[c] = c <= r ? pr[c] * (dr[c] - dt) * scale : 0.0f;
}

__global__ void k_act(int kind, const float *g, const float *u, float *m, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) m[i] = train_act(kind, kind == ACT_SILU_GATED ? g[i] : 0.0f, u[i]);
}

__global__ void k_act_bwd(int kind, const float *g, const float *u, const float *dm, float *dg, float *du, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) train_act_bwd(kind, kind == ACT_SILU_GATED ? g[i] : 0.0f, u[i], dm[i], &dg[i], &du[i]);
}

// LayerNorm of a row (one block): the mean and variance in float64, as the CPU's
__global__ void k_ln(const float *x, const float *w, const float *bias, float *y, float *mu, float *rstd, int d, float eps)
{
    const float *xr = x + (size_t)blockIdx.x * d;
    double s = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += xr[i];
    double mean = block_sum(s) / d, v = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) v += (xr[i] - mean) * (xr[i] - mean);
    float r = (float)(1.0 / sqrt(block_sum(v) / d + eps));
    if (threadIdx.x == 0) { mu[blockIdx.x] = (float)mean; rstd[blockIdx.x] = r; }
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        y[(size_t)blockIdx.x * d + i] = (float)(xr[i] - mean) * r * w[i] + (bias ? bias[i] : 0.0f);
}

__global__ void k_ln_bwd(const float *x, const float *w, const float *mu, const float *rstd, const float *dy, float *dx, int d)
{
    size_t o = (size_t)blockIdx.x * d;
    float s = rstd[blockIdx.x], m = mu[blockIdx.x];
    double sg = 0, sgx = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float gi = dy[o + i] * w[i];
        sg += gi;
        sgx += (double)gi * ((x[o + i] - m) * s);
    }
    float mg = (float)(block_sum(sg) / d), mgx = (float)(block_sum(sgx) / d);
    for (int i = threadIdx.x; i < d; i += blockDim.x) dx[o + i] += s * (dy[o + i] * w[i] - mg - (x[o + i] - m) * s * mgx);
}

__global__ void k_add(float *x, const float *y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

__global__ void k_bias(float *y, const float *b, size_t n, int out)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += b[i % out];
}

__global__ void k_bias_bwd(const float *dy, float *gb, int n, int out)
{
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= out) return;
    float acc = gb[o];
    for (int r = 0; r < n; r++) acc += dy[(size_t)r * out + o];
    gb[o] = acc;
}

// a row of logits becomes (softmax - onehot) gs; nll[r] its negative log-likelihood
__global__ void k_xent(float *lg, const int32_t *ids, int V, float gs, double *nll)
{
    int r = blockIdx.x;
    float *row = lg + (size_t)r * V;
    float mx = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, row[v]);
    mx = block_max(mx);
    int tgt = ids[r + 1];
    float z = row[tgt] - mx;
    __syncthreads();  // z read before the row is overwritten
    double sum = 0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) sum += (row[v] = expf(row[v] - mx));
    sum = block_sum(sum);
    float inv = (float)(1.0 / sum) * gs;
    for (int v = threadIdx.x; v < V; v += blockDim.x) row[v] *= inv;
    __syncthreads();
    if (threadIdx.x == 0) {
        row[tgt] -= gs;
        nll[r] = log(sum) - (double)z;
    }
}

__global__ void k_sumsq(const float *g, size_t n, double *part)
{
    double s = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += (double)g[i] * g[i];
    s = block_sum(s);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ void k_adamw(float *w, const float *g, float *m, float *v, size_t n, tr_adam a, int decay)
{
    size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float gj = g[j] * a.clip;
    m[j] = a.b1 * m[j] + (1.0f - a.b1) * gj;
    v[j] = a.b2 * v[j] + (1.0f - a.b2) * gj * gj;
    float mh = m[j] / a.c1, vh = v[j] / a.c2;
    w[j] -= a.lr * (mh / (sqrtf(vh) + a.eps) + (decay ? a.wd * w[j] : 0.0f));
}

// ---- the ops ----------------------------------------------------------------------

void t_destroy(tr_be *b)
{
    cu_be *g = G(b);
    if (g->blas) g_blas.destroy(g->blas);
    bq_cuda_free(g->blas_ws);
    cudaFree(g->cos);
    cudaFree(g->sin);
    cudaFree(g->ids);
    cudaFree(g->part);
    free(g->hpart);
    free(g);
}

float *t_alloc(tr_be *b, size_t n)
{
    void *p = NULL;
    if (cudaMalloc(&p, (n ? n : 1) * sizeof(float)) != cudaSuccess) { cudaGetLastError(); return NULL; }
    keep(G(b), cudaMemsetAsync(p, 0, (n ? n : 1) * sizeof(float), cudaStreamPerThread), "alloc");
    return (float *)p;
}

void t_release(tr_be *b, float *p)
{
    if (!p) return;
    cudaStreamSynchronize(cudaStreamPerThread);
    cudaFree(p);
}

bq_status t_status(tr_be *b)
{
    cu_be *g = G(b);
    keep(g, cudaStreamSynchronize(cudaStreamPerThread), "a queued step");
    return g->err;
}

bq_status t_put(tr_be *b, float *dst, const float *h, size_t n)
{
    keep(G(b), cudaMemcpyAsync(dst, h, n * sizeof *dst, cudaMemcpyHostToDevice, cudaStreamPerThread), "upload");
    return t_status(b);  // h may be freed by the caller when this returns
}

bq_status t_get(tr_be *b, float *h, const float *src, size_t n)
{
    keep(G(b), cudaMemcpyAsync(h, src, n * sizeof *h, cudaMemcpyDeviceToHost, cudaStreamPerThread), "download");
    return t_status(b);
}

void t_zero(tr_be *b, float *x, size_t n) { keep(G(b), cudaMemsetAsync(x, 0, n * sizeof *x, cudaStreamPerThread), "zero"); }

void t_copy(tr_be *b, float *dst, const float *src, size_t n)
{
    keep(G(b), cudaMemcpyAsync(dst, src, n * sizeof *dst, cudaMemcpyDeviceToDevice, cudaStreamPerThread), "copy");
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the operands swap.
void t_gemm(tr_be *b, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
            float beta, float *Cm, int ldc)
{
    cu_be *g = G(b);
    if (g->err) return;
    int rc = g_blas.sgemm(g->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, ldb, A,
                          lda, &beta, Cm, ldc);
    if (rc && !g->err) g->err = bq_fail(BQ_ERR_UNSUPPORTED, "CUDA training: cublasSgemm failed (%d)", rc);
}

void t_mm(tr_be *b, mm_kind k, int n, int in, int out, const float *a, const float *w, float *y, float beta)
{
    switch (k) {
    case MM_FWD: t_gemm(b, 0, 1, n, out, in, 1.0f, a, in, w, in, 0.0f, y, out); break;
    case MM_DX: t_gemm(b, 0, 0, n, in, out, 1.0f, a, out, w, in, beta, y, in); break;
    case MM_DW: t_gemm(b, 1, 0, out, in, n, 1.0f, a, out, w, in, 1.0f, y, in); break;
    }
}

bq_status t_qdq(tr_be *b, const bq_format *f, const float *x, float *y, size_t rows, size_t cols, const bq_qopts *o)
{
    cu_be *g = G(b);
    if (g->err) return g->err;
    bq_status st = bq_cuda_qdq(f, x, y, rows, cols, o);
    if (st && !g->err) g->err = st;
    return st;
}

void put_ids(cu_be *g, const int32_t *ids, int n)
{
    keep(g, cudaMemcpyAsync(g->ids, ids, (size_t)n * sizeof *ids, cudaMemcpyHostToDevice, cudaStreamPerThread), "ids");
    keep(g, cudaStreamSynchronize(cudaStreamPerThread), "ids");  // ids is the caller's
}

void t_embed(tr_be *b, const int32_t *ids, int n, const float *E, int d, float *x)
{
    cu_be *g = G(b);
    put_ids(g, ids, n);
    k_embed<<<n, TPB>>>(g->ids, E, d, x);
    launched(g, "embedding");
}

void t_embed_bwd(tr_be *b, const int32_t *ids, int n, const float *dx, int d, float *gE)
{
    cu_be *g = G(b);
    put_ids(g, ids, n);
    k_embed_bwd<<<blocks((size_t)d), TPB>>>(g->ids, n, dx, d, gE);
    launched(g, "embedding gradient");
}

void t_rms(tr_be *b, const float *x, const float *w, float *y, float *rstd, int n, int d, float eps)
{
    k_rms<<<n, TPB>>>(x, w, y, rstd, d, eps);
    launched(G(b), "RMSNorm");
}

void t_rms_bwd(tr_be *b, const float *x, const float *w, const float *rstd, const float *dy, float *dx, float *gw, int n, int d)
{
    if (gw) k_norm_params<<<blocks((size_t)d), TPB>>>(x, NULL, rstd, dy, gw, NULL, n, d);
    k_rms_bwd<<<n, TPB>>>(x, w, rstd, dy, dx, d);
    launched(G(b), "RMSNorm gradient");
}

void t_rope(tr_be *b, float *x, int n, int heads, int d, int dir)
{
    cu_be *g = G(b);
    size_t cnt = (size_t)n * heads * (d / 2);
    k_rope<<<blocks(cnt), TPB>>>(x, n, heads, d / 2, g->cos, g->sin, (float)dir);
    launched(g, "rotary embedding");
}

// v [n][kvh * d] -> vt [kvh * d][n]
__global__ void k_transpose(const float *v, int n, int kd, float *vt)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * kd) return;
    size_t c = i / n, t = i % n;
    vt[i] = v[t * kd + c];
}

// With an attention format: its copies of q, k and v^T (the inference engine's
// placement), in a->qs; *vt NULL without one.
bq_status att_operands(tr_be *b, const tr_att *a, const float **q, const float **k, const float **vt, const float *v)
{
    *vt = NULL;
    if (!a->af) return BQ_OK;
    size_t n = (size_t)a->n, qd = (size_t)a->heads * a->d, kd = (size_t)a->kvh * a->d;
    float *qq = a->qs, *kq = qq + n * qd, *vq = kq + n * kd;
    bq_status st = t_qdq(b, a->af, *q, qq, n * a->heads, (size_t)a->d, a->qo);
    if (!st) st = t_qdq(b, a->af, *k, kq, n * a->kvh, (size_t)a->d, a->qo);
    if (!st) {
        k_transpose<<<blocks(n * kd), TPB>>>(v, a->n, (int)kd, vq);
        launched(G(b), "attention operands");
        st = t_qdq(b, a->af, vq, vq, kd, n, a->qo);
    }
    *q = qq;
    *k = kq;
    *vt = vq;
    return st;
}

bq_status t_att(tr_be *b, const tr_att *a, const float *q, const float *k, const float *v, float *P, float *out)
{
    int n = a->n, d = a->d, qd = a->heads * d, kd = a->kvh * d, per = a->heads / a->kvh;
    float scale = 1.0f / sqrtf((float)d);
    const float *vt;
    bq_status st = att_operands(b, a, &q, &k, &vt, v);
    if (st) return st;
    for (int h = 0; h < a->heads; h++)
        t_gemm(b, 0, 1, n, n, d, scale, q + (size_t)h * d, qd, k + (size_t)(h / per) * d, kd, 0.0f, P + (size_t)h * n * n, n);
    k_softmax<<<dim3(n, a->heads), TPB>>>(P, n, a->window);
    launched(G(b), "attention softmax");
    for (int h = 0; h < a->heads && !st; h++) {
        int g = h / per;
        const float *Ph = P + (size_t)h * n * n;
        if (vt) {  // q(P) q(v^T)^T, a head's probabilities quantised as the engine does (one tensor a head)
            float *Pq = a->dP + (size_t)g * n * n;
            st = t_qdq(b, a->af, Ph, Pq, (size_t)n, (size_t)n, a->qo);
            t_gemm(b, 0, 1, n, d, n, 1.0f, Pq, n, vt + (size_t)g * d * n, n, 0.0f, out + (size_t)h * d, qd);
        } else
            t_gemm(b, 0, 0, n, d, n, 1.0f, Ph, n, v + (size_t)g * d, kd, 0.0f, out + (size_t)h * d, qd);
    }
    return st;
}

bq_status t_att_bwd(tr_be *b, const tr_att *a, const float *q, const float *k, const float *v, const float *P, const float *da,
                    float *dq, float *dk, float *dv)
{
    int n = a->n, d = a->d, qd = a->heads * d, kd = a->kvh * d, per = a->heads / a->kvh;
    float scale = 1.0f / sqrtf((float)d);
    const float *vt;
    bq_status st = att_operands(b, a, &q, &k, &vt, v);
    for (int h = 0; h < a->heads && !st; h++) {
        int g = h / per;
        float beta = h % per ? 1.0f : 0.0f;  // the group's first head overwrites dK, dV
        const float *Ph = P + (size_t)h * n * n, *dah = da + (size_t)h * d;
        float *dPg = a->dP + (size_t)g * n * n;
        if (vt) {  // dV += q(P)^T dA; dP = dA q(v^T) (q(P) made again in dP's place, used first)
            st = t_qdq(b, a->af, Ph, dPg, (size_t)n, (size_t)n, a->qo);
            t_gemm(b, 1, 0, n, d, n, 1.0f, dPg, n, dah, qd, beta, dv + (size_t)g * d, kd);
            t_gemm(b, 0, 0, n, n, d, 1.0f, dah, qd, vt + (size_t)g * d * n, n, 0.0f, dPg, n);
        } else {
            t_gemm(b, 1, 0, n, d, n, 1.0f, Ph, n, dah, qd, beta, dv + (size_t)g * d, kd);
            t_gemm(b, 0, 1, n, n, d, 1.0f, dah, qd, v + (size_t)g * d, kd, 0.0f, dPg, n);
        }
        k_softmax_bwd<<<n, TPB>>>(Ph, dPg, n, scale);
        launched(G(b), "attention softmax gradient");
        t_gemm(b, 0, 0, n, d, n, 1.0f, dPg, n, k + (size_t)g * d, kd, 0.0f, dq + (size_t)h * d, qd);
        t_gemm(b, 1, 0, n, d, n, 1.0f, dPg, n, q + (size_t)h * d, qd, beta, dk + (size_t)g * d, kd);
    }
    return st ? st : G(b)->err;
}

void t_act(tr_be *b, int kind, const float *g, const float *u, float *m, size_t n)
{
    k_act<<<blocks(n), TPB>>>(kind, g, u, m, n);
    launched(G(b), "MLP activation");
}

void t_act_bwd(tr_be *b, int kind, const float *g, const float *u, const float *dm, float *dg, float *du, size_t n)
{
    k_act_bwd<<<blocks(n), TPB>>>(kind, g, u, dm, dg, du, n);
    launched(G(b), "MLP activation gradient");
}

void t_ln(tr_be *b, const float *x, const float *w, const float *bias, float *y, float *mu, float *rstd, int n, int d, float eps)
{
    k_ln<<<n, TPB>>>(x, w, bias, y, mu, rstd, d, eps);
    launched(G(b), "LayerNorm");
}

void t_ln_bwd(tr_be *b, const float *x, const float *w, const float *mu, const float *rstd, const float *dy, float *dx, float *gw,
              float *gb, int n, int d)
{
    if (gw || gb) k_norm_params<<<blocks((size_t)d), TPB>>>(x, mu, rstd, dy, gw, gb, n, d);
    k_ln_bwd<<<n, TPB>>>(x, w, mu, rstd, dy, dx, d);
    launched(G(b), "LayerNorm gradient");
}

void t_add(tr_be *b, float *x, const float *y, size_t n)
{
    k_add<<<blocks(n), TPB>>>(x, y, n);
    launched(G(b), "residual");
}

void t_bias(tr_be *b, float *y, const float *bias, int n, int out)
{
    k_bias<<<blocks((size_t)n * out), TPB>>>(y, bias, (size_t)n * out, out);
    launched(G(b), "bias");
}

void t_bias_bwd(tr_be *b, const float *dy, float *gb, int n, int out)
{
    k_bias_bwd<<<blocks((size_t)out), TPB>>>(dy, gb, n, out);
    launched(G(b), "bias gradient");
}

bq_status t_xent(tr_be *b, float *lg, const int32_t *ids, int rows, int V, float gs, double *nll)
{
    cu_be *g = G(b);
    put_ids(g, ids, rows + 1);
    k_xent<<<rows, TPB>>>(lg, g->ids, V, gs, g->part);
    launched(g, "cross-entropy");
    keep(g, cudaMemcpyAsync(g->hpart, g->part, (size_t)rows * sizeof(double), cudaMemcpyDeviceToHost, cudaStreamPerThread),
         "loss");
    bq_status st = t_status(b);
    double s = 0;
    for (int r = 0; r < rows; r++) s += g->hpart[r];
    *nll = s;
    return st;
}

bq_status t_sumsq(tr_be *b, const float *x, size_t n, double *out)
{
    cu_be *g = G(b);
    k_sumsq<<<PARTS, TPB>>>(x, n, g->part);
    launched(g, "gradient norm");
    keep(g, cudaMemcpyAsync(g->hpart, g->part, PARTS * sizeof(double), cudaMemcpyDeviceToHost, cudaStreamPerThread), "norm");
    bq_status st = t_status(b);
    double s = 0;
    for (int i = 0; i < PARTS; i++) s += g->hpart[i];
    *out = s;
    return st;
}

void t_adamw(tr_be *b, float *w, const float *g, float *m, float *v, size_t n, const tr_adam *a, int decay)
{
    k_adamw<<<blocks(n), TPB>>>(w, g, m, v, n, *a, decay);
    launched(G(b), "AdamW");
}

const tr_ops CUDA_OPS = {
    "CUDA", 0, t_destroy, t_alloc, t_release, t_put, t_get, t_zero, t_copy, t_mm, t_gemm, t_qdq, t_embed, t_embed_bwd, t_rms,
    t_rms_bwd, t_rope, t_att, t_att_bwd, t_act, t_act_bwd, t_ln, t_ln_bwd, t_add, t_bias, t_bias_bwd, t_xent,
    t_sumsq, t_adamw, t_status,
};

}  // namespace

extern "C" bq_status tr_cuda_new(int device, int T, int half, const float *rope_cos, const float *rope_sin, int tf32, tr_be **out)
{
    *out = NULL;
    char why[256];
    int ndev = bq_cuda_devices(why, sizeof why);
    if (!ndev) return bq_fail(BQ_ERR_UNSUPPORTED, "%s", why);
    if (device < 0 || device >= ndev) return bq_fail(BQ_ERR_ARG, "CUDA device %d: only %d visible", device, ndev);
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA device %d: %s", device, cudaGetErrorString(e));
    cu_be *g = (cu_be *)calloc(1, sizeof *g);
    if (!g) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    g->base.ops = &CUDA_OPS;
    g->dev = device;
    g->T = T;
    size_t rows = (size_t)(T > PARTS ? T : PARTS), tab = (size_t)T * half;
    g->hpart = (double *)malloc(rows * sizeof(double));
    bq_status st = g->hpart ? cublas_handle(&g->blas, &g->blas_ws) : bq_fail(BQ_ERR_NOMEM, "out of memory");
    if (!st && tf32 && g_blas.set_math_mode(g->blas, CUBLAS_TF32_TENSOR_OP_MATH) != 0)
        st = bq_fail(BQ_ERR_UNSUPPORTED, "CUDA training: cublasSetMathMode (TF32) failed");
    if (!st && (cudaMalloc(&g->cos, (tab + 1) * sizeof(float)) || cudaMalloc(&g->sin, (tab + 1) * sizeof(float)) ||
                cudaMalloc(&g->ids, (size_t)T * sizeof(int32_t)) || cudaMalloc(&g->part, rows * sizeof(double))))
        st = bq_fail(BQ_ERR_NOMEM, "out of CUDA memory");
    if (!st) {
        keep(g, cudaMemcpy(g->cos, rope_cos, tab * sizeof(float), cudaMemcpyHostToDevice), "rotary table");
        keep(g, cudaMemcpy(g->sin, rope_sin, tab * sizeof(float), cudaMemcpyHostToDevice), "rotary table");
        st = g->err;
    }
    if (st) { t_destroy(&g->base); return st; }
    *out = &g->base;
    return BQ_OK;
}
