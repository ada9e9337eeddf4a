/* The operations the transformer driver (forward.c) is written in, and the two
 * backends that implement them: the CPU (cpu.c: OpenBLAS + packed kernels) and
 * CUDA (src/cuda/engine.cu: cuBLAS + the packed GEMV). A backend instance lives
 * in one context: it holds the weights in the form it multiplies (the CPU uses
 * the model's own; CUDA uploads them once), the KV cache and its scratch.
 *
 * Buffers are the backend's memory (host or device), float32, row-major, and come
 * from be_alloc. Weights are named by their place: (layer, role), layer -1 for the
 * model's own (head, projections, final norm). Every op is queued in order; on
 * the GPU, nothing synchronises until be_logits/be_logprobs/be_finish. */
#ifndef BQ_BACKEND_H
#define BQ_BACKEND_H
#include "model.h"
#include <math.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Linears: the seven of a layer, then the model's own (layer -1). */
typedef enum { R_Q, R_K, R_V, R_O, R_GATE, R_UP, R_DOWN, R_HEAD, R_PROJ_IN, R_PROJ_OUT, R_COUNT } lin_role;
/* Norms: the two of a layer, Qwen3's per-head RMS norms of q and k, the final one. */
typedef enum { N_LN1, N_LN2, N_Q, N_K, N_FINAL } norm_role;
/* Where an activation is checked for NaN/Inf (named in the error). */
typedef enum { CHK_ATTN, CHK_MLP, CHK_LOGITS } check_site;

const linear *model_linear(const bq_model *m, int layer, lin_role r);
const normp *model_norm(const bq_model *m, int layer, norm_role r);
extern const char *const bq_check_names[3];

typedef struct be be;
/* A residual connection applied by the op after it (norm_linears): x += h, h checked
 * for NaN/Inf at (layer, site) first where check is set. */
typedef struct { const float *h; int layer; check_site site; int check; } be_residual;
typedef struct {
    const char *name;
    int host;  /* buffers are host memory (the driver may hand the caller's logits over) */
    void (*destroy)(be *b);
    void *(*alloc)(be *b, size_t bytes);  /* NULL: out of memory */
    void (*release)(be *b, void *p);
    /* e[t] = the token embedding of ids[t] (ids in host memory, already checked) */
    bq_status (*embed)(be *b, const int32_t *ids, int n, float *e);
    /* x[t] += learned position pos0 + t */
    bq_status (*add_pos)(be *b, float *x, int n, int pos0);
    /* y[n, out] = q(x[n, in]) W^T + bias: the activation format of the linear, then the product */
    bq_status (*linear)(be *b, int layer, lin_role r, const float *x, float *y, int n);
    /* rows of d: RMSNorm or LayerNorm (N_Q/N_K: RMS over head_dim); in place allowed */
    bq_status (*norm)(be *b, int layer, norm_role r, const float *x, float *y, int rows, int d);
    bq_status (*rope)(be *b, float *x, int n, int heads, int pos0);
    /* fake quantisation of rows x cols (in place allowed) */
    bq_status (*qdq)(be *b, const bq_format *f, const float *x, float *y, size_t rows, size_t cols);
    /* K and V of n tokens into the layer's cache at pos */
    bq_status (*kv_store)(be *b, int layer, const float *k, const float *v, int n, int pos);
    /* a[n, heads*d] = causal attention of q[n, heads*d] over the cache [0, pos + n)
     * (the model's attention format quantises q in place) */
    bq_status (*attention)(be *b, int layer, float *q, float *a, int n, int pos);
    /* u = act(u) (SiLU-gated: u * silu(g)) */
    bq_status (*act)(be *b, float *u, const float *g, size_t n);
    bq_status (*add)(be *b, float *x, const float *y, size_t n);
    /* NaN/Inf in x[rows, d] (token t at position pos + t): an error naming the place,
     * now (CPU) or from be_finish (CUDA: the first place in program order) */
    bq_status (*check)(be *b, const float *x, int rows, int d, int layer, check_site s, int pos);
    /* the host copy of logits [rows, vocab] */
    bq_status (*logits)(be *b, const float *lg, int rows, float *out);
    /* lp[t] = log p(ids[t + 1] | row t of lg) for t < n - 1 (ids on the host) */
    bq_status (*logprobs)(be *b, const float *lg, const int32_t *ids, int n, double *lp);
    /* the end of a forward pass: a deferred error, if any */
    bq_status (*finish)(be *b);
    /* Optional (NULL: none). A one-token step (token id at pos) replayed from a
     * recording made under the same key (*replayed = 1: only finish is left), or
     * else, where the backend can, recorded while the driver runs it (finish ends
     * the recording); drop_recording abandons one after an error. */
    bq_status (*replay)(be *b, int32_t id, int pos, unsigned key, int *replayed);
    void (*drop_recording)(be *b);
    /* Pipeline stages (forward.c): a stage's activations leave through the host.
     * get: host[0..bytes) = src (waits for the work queued before it); put: dst = host. */
    bq_status (*get)(be *b, void *host, const void *src, size_t bytes);
    bq_status (*put)(be *b, void *dst, const void *host, size_t bytes);
    /* Optional: make this backend's device current on the calling thread, before a
     * thread (or a turn of the driver) starts queueing its ops. */
    bq_status (*bind)(be *b);
    /* Optional (NULL: linear one by one): the linears rs[0..count) (at most 3) of
     * one layer on the same input x, ys[i] = what linear would give rs[i] */
    bq_status (*linears)(be *b, int layer, const lin_role *rs, int count, const float *x, float *const *ys, int n);
    /* rows of r->n floats through the model's online rotation r (model_rot_rows) */
    bq_status (*rotate)(be *b, const bq_rot *r, float *x, int rows);
    /* Optional (NULL: calibration reads host buffers itself, calib.c). Calibration's
     * sums over the inputs x[n, in] of linear slot (calib_index), kept in the
     * backend's memory: per channel the sum of x^2 and the largest |x|, and with gram
     * X^T X, all float64 (the host's arithmetic for the first two: each channel's
     * tokens added in order). stats_read copies a slot's sums out (gram, whole
     * and symmetric; may be NULL) and frees them. */
    bq_status (*stats_add)(be *b, int slot, const float *x, int n, int in, int gram);
    bq_status (*stats_read)(be *b, int slot, double *msq, double *amax, double *gram);
    /* Optional fusions (NULL: the driver calls the ops they stand for; same results).
     * rope_store: rope of q (heads) and k (kv_heads), then kv_store of k and v.
     * add_check: check of h [rows, d] at (layer, s), then x += h. On a GPU each
     * saves kernels on every layer of a decoding step, where they cost more than
     * their arithmetic. */
    bq_status (*rope_store)(be *b, int layer, float *q, float *k, const float *v, int n, int pos);
    bq_status (*add_check)(be *b, float *x, const float *h, int rows, int d, int layer, check_site s, int pos);
    /* norm_linears: the residual connection res first where it is not NULL (x += res->h,
     * checked as add_check / check would, tokens at pos), then norm (layer, nr) of x [n, d]
     * into h (res->h may be h), then the linears rs[0..count) of that layer on h into ys
     * (as linears). act_linear: act of u (gate g; n rows of the model's inter), then
     * linear (layer, r) of u into y. On a GPU the residual, the norm and the int8 GEMV's
     * activation pieces are one kernel, and the activation's makes the pieces of u: a
     * LLaMA layer's 15 kernels become 10. */
    bq_status (*norm_linears)(be *b, int layer, norm_role nr, float *x, const be_residual *res, int pos, float *h, int d,
                              const lin_role *rs, int count, float *const *ys, int n);
    bq_status (*act_linear)(be *b, int layer, lin_role r, float *u, const float *g, float *y, int n);
} be_ops;

struct be {
    const be_ops *ops;
    const bq_model *m;
    int max_tokens, threads;
    int lo, hi;  /* the layers [lo, hi) it holds (a pipeline stage; else all); the
                  * embedding with lo == 0, the final norm and head with hi == layers */
};

/* Calibration's slots (stats_add): the seven linears of every layer, then the head. */
static inline size_t be_stats_slots(const bq_config *c) { return (size_t)c->layers * 7 + 1; }

/* The layers [lo, hi) of m (a stage), for up to max_tokens positions; CUDA on the
 * device with that ordinal. */
bq_status be_cpu_new(const bq_model *m, int max_tokens, int threads, int lo, int hi, be **out);
bq_status be_cuda_new(const bq_model *m, int max_tokens, int device, int lo, int hi, be **out);  /* nocuda.c without nvcc */
size_t be_cuda_bytes(const be *b);  /* device memory a CUDA backend holds (0 for the CPU's) */
int be_cuda_ordinal(const be *b);   /* its device (-1 for the CPU's) */

/* OpenBLAS single-threaded inside our own fixed slices (once per process; cpu.c). */
void be_blas_single_thread(void);

/* Element-wise steps the CPU backend and the training pass (src/train) both compute,
 * so that their bits agree by construction (cpu.c). */
/* RMSNorm of n rows of d: y = w * (x / rms(x)) (in place allowed); rstd (may be NULL)
 * keeps each row's 1/rms. */
void rms_rows(const float *x, const float *w, float *y, float *rstd, int n, int d, float eps);
/* LayerNorm of n rows of d: y = w * (x - mean) / sd + b (b may be NULL; in place allowed);
 * mu and rstd (may be NULL) keep each row's mean (rounded to float) and 1/sd. */
void ln_rows(const float *x, const float *w, const float *b, float *y, float *mu, float *rstd, int n, int d, float eps);
/* The rotary angle of pair i (element i with i + d/2) at position pos. */
float rope_angle(const bq_config *c, int i, int pos);
/* The first key position `last` attends to: 0, or the start of its sliding window. */
static inline int attn_first_key(const bq_config *c, int last)
{
    return c->sliding_window && last >= c->sliding_window ? last - c->sliding_window + 1 : 0;
}

/* Element-wise arithmetic written once for the host and the device (nvcc runs with
 * --fmad=false, so both compute the same bits). */
#ifdef __CUDACC__
#define BQ_ELEM static inline __host__ __device__
#else
#define BQ_ELEM static inline
#endif

/* GPT-2's GELU (the tanh form), and its derivative:
 * 0.5 (1 + t) + 0.5 u (1 - t^2) k (1 + 3 c u^2), t = tanh(k (u + c u^3)) */
BQ_ELEM float gelu_tanh(float x)
{
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}
BQ_ELEM float gelu_tanh_grad(float u)
{
    const float k = 0.7978845608028654f, c = 0.044715f;
    float t = tanhf(k * (u + c * u * u * u));
    return 0.5f * (1.0f + t) + 0.5f * u * (1.0f - t * t) * k * (1.0f + 3.0f * c * u * u);
}

/* The inference engine's MLP activation of one element (act_kind): SiLU(g) * u, ReLU(u) or
 * GELU(u); both backends' kernels. */
BQ_ELEM float mlp_act(int kind, float u, float g)
{
    return kind == ACT_SILU_GATED ? u * (g / (1.0f + expf(-g))) : kind == ACT_RELU ? (u > 0 ? u : 0.0f) : gelu_tanh(u);
}

/* The error of a non-finite activation, on either backend. */
bq_status be_nonfinite(int isnan_, int layer, check_site s, int token);

#ifdef __cplusplus
}
#endif
#endif
