/* The operations the training pass (grad.c) and the trainer (trainer.c) are written
 * in, and the two backends that implement them: the CPU (tops_cpu.c: OpenBLAS in
 * fixed slices, so the bits do not depend on the thread count) and CUDA
 * (src/cuda/train.cu: cuBLAS and a kernel per element-wise step).
 *
 * Buffers are the backend's memory (host or device), float32, row-major, from
 * alloc (zeroed). Token ids are host arrays. Ops are queued in order; a CUDA
 * error is kept and returned by status (and by the ops that return one). */
#ifndef BQ_TOPS_H
#define BQ_TOPS_H
#include "model.h"
#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { MM_FWD, MM_DX, MM_DW } mm_kind;

/* The training pass's MLP activation of one element (act_kind): m = u silu(g), relu(u) or
 * gelu_tanh(u); and its gradients du (and dg) from dm. Both backends' loops and kernels. */
BQ_ELEM float train_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
BQ_ELEM float train_act(int kind, float g, float u)
{
    return kind == ACT_SILU_GATED ? u * g * train_sigmoid(g) : kind == ACT_RELU ? (u > 0 ? u : 0.0f) : gelu_tanh(u);
}
BQ_ELEM void train_act_bwd(int kind, float g, float u, float dm, float *dg, float *du)
{
    if (kind == ACT_SILU_GATED) {
        float sg = train_sigmoid(g);
        *du = dm * g * sg;
        *dg = dm * u * sg * (1.0f + g * (1.0f - sg));
    } else *du = kind == ACT_RELU ? (u > 0 ? dm : 0.0f) : dm * gelu_tanh_grad(u);
}

typedef struct {
    float lr, b1, b2, eps, c1, c2, wd, clip;  /* c1, c2: the bias corrections 1 - beta^k */
} tr_adam;

/* One layer's attention: its shape, mask, format and scratch (backend memory). */
typedef struct {
    int n, heads, kvh, d, window;
    const bq_format *af;  /* attention operands' format (NULL: float) */
    const bq_qopts *qo;
    float *dP;            /* kvh x n x n */
    float *qs;            /* with af: n x (heads + 2 kvh) x d, the quantised q, k and v^T */
} tr_att;

typedef struct tr_be tr_be;
typedef struct {
    const char *name;
    int host;  /* buffers are host memory */
    void (*destroy)(tr_be *b);
    float *(*alloc)(tr_be *b, size_t n);  /* n zeroed floats; NULL: out of memory */
    void (*release)(tr_be *b, float *p);
    bq_status (*put)(tr_be *b, float *dst, const float *host, size_t n);
    bq_status (*get)(tr_be *b, float *host, const float *src, size_t n);  /* waits for the queued work */
    void (*zero)(tr_be *b, float *x, size_t n);
    void (*copy)(tr_be *b, float *dst, const float *src, size_t n);
    /* the products of a linear (W [out, in]):  FWD y[n, out] = a W^T;  DX y[n, in] = a W (+ beta y);
     * DW y[out, in] += a^T w, with a = dy [n, out] and w = x [n, in] */
    void (*mm)(tr_be *b, mm_kind k, int n, int in, int out, const float *a, const float *w, float *y, float beta);
    /* C[M, N] = alpha op(A) op(B) + beta C, row-major (ta, tb: transposed) */
    void (*gemm)(tr_be *b, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc);
    bq_status (*qdq)(tr_be *b, const bq_format *f, const float *x, float *y, size_t rows, size_t cols, const bq_qopts *o);
    /* x[t] = E[ids[t]];  gE[ids[t]] += dx[t] (tokens in order) */
    void (*embed)(tr_be *b, const int32_t *ids, int n, const float *E, int d, float *x);
    void (*embed_bwd)(tr_be *b, const int32_t *ids, int n, const float *dx, int d, float *gE);
    /* RMSNorm (rstd keeps each row's 1/rms);  dx += its gradient, gw (may be NULL) += sum dy xhat */
    void (*rms)(tr_be *b, const float *x, const float *w, float *y, float *rstd, int n, int d, float eps);
    void (*rms_bwd)(tr_be *b, const float *x, const float *w, const float *rstd, const float *dy, float *dx, float *gw, int n,
                    int d);
    /* rotary embedding of n rows of heads x d (dir -1: the inverse, for the backward pass) */
    void (*rope)(tr_be *b, float *x, int n, int heads, int d, int dir);
    /* a = softmax(q k^T / sqrt(d) + causal mask) v per head (P [heads, n, n] kept); window: the
     * sliding window (0: none). With an attention format af (else NULL), as the inference engine:
     * q and k quantised along head_dim, v along the tokens, P along its rows, each product on the
     * quantised operands (the backward pass: straight through, the copies made again). */
    bq_status (*att)(tr_be *b, const tr_att *a, const float *q, const float *k, const float *v, float *P, float *out);
    /* dq, dk, dv (overwritten) from da */
    bq_status (*att_bwd)(tr_be *b, const tr_att *a, const float *q, const float *k, const float *v, const float *P, const float *da,
                         float *dq, float *dk, float *dv);
    /* the MLP's activation (train_act above); du (and, gated, dg) from dm */
    void (*act)(tr_be *b, int kind, const float *g, const float *u, float *m, size_t n);
    void (*act_bwd)(tr_be *b, int kind, const float *g, const float *u, const float *dm, float *dg, float *du, size_t n);
    /* LayerNorm (bias may be NULL; mu, rstd kept);  dx += its gradient, gw, gb (may be NULL) += theirs */
    void (*ln)(tr_be *b, const float *x, const float *w, const float *bias, float *y, float *mu, float *rstd, int n, int d,
               float eps);
    void (*ln_bwd)(tr_be *b, const float *x, const float *w, const float *mu, const float *rstd, const float *dy, float *dx,
                   float *gw, float *gb, int n, int d);
    void (*add)(tr_be *b, float *x, const float *y, size_t n);  /* x += y (residuals, positions) */
    /* y[r, :] += bias;  gb += sum over rows of dy */
    void (*bias)(tr_be *b, float *y, const float *bias, int n, int out);
    void (*bias_bwd)(tr_be *b, const float *dy, float *gb, int n, int out);
    /* rows of logits [rows, V] become (softmax - onehot(ids[r + 1])) * gs; *nll = the sum over rows of
     * -log softmax[ids[r + 1]] (rows added in order, float64) */
    bq_status (*xent)(tr_be *b, float *lg, const int32_t *ids, int rows, int V, float gs, double *nll);
    /* sum of squares (float64, a fixed order) */
    bq_status (*sumsq)(tr_be *b, const float *g, size_t n, double *out);
    /* AdamW on n values (wd applies where decay) */
    void (*adamw)(tr_be *b, float *w, const float *g, float *m, float *v, size_t n, const tr_adam *a, int decay);
    bq_status (*status)(tr_be *b);  /* the first error of queued work (waits for it) */
} tr_ops;

struct tr_be {
    const tr_ops *ops;
};

/* rope_cos/rope_sin: [T][half] tables, copied. */
bq_status tr_cpu_new(int threads, int T, int half, const float *rope_cos, const float *rope_sin, tr_be **out);
/* CUDA device ordinal `device` (nocuda.c without nvcc: "no CUDA device"); tf32: the products
 * on the tensor cores with TF32 inputs (10-bit mantissas) instead of float32. */
bq_status tr_cuda_new(int device, int T, int half, const float *rope_cos, const float *rope_sin, int tf32, tr_be **out);

#ifdef __cplusplus
}
#endif
#endif
