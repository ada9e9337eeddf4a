// The forward pass on a CUDA device, for perplexity (`blockq ppl --device cuda`).
// Every architecture the CPU runs (LLaMA/Mistral, Qwen2/3, OPT with or without
// project_in/out and post-LayerNorm, GPT-2): the same steps as
// src/engine/forward.c over a whole window. Each linear goes up in one of three
// forms (packed, bf16 or float32, below; up_linear chooses); activations, the KV
// cache and (--attn) the attention operands are quantised on the device by
// bq_cuda_qdq (the CPU's bits). Attention is two strided-batched float32 GEMMs
// per group of heads around a causal softmax, as the CPU computes it. cuBLAS is
// opened at run time, so blockq needs no CUDA libraries where there is no GPU.
//
// Packed: where the CPU holds a linear packed (--packed, a .bq or GGUF file) and
// it takes the bf16 path, its codes go up as they are (bq_cuda_w: 4, 6 or 8 bits
// a weight) and are unpacked to bf16 just before each product.
//
// The bf16 path: a linear whose weights are all bf16 values and whose activation
// format only produces bf16 values keeps its weights as bf16 on the device and
// multiplies with cuBLAS's bf16 GEMM (float32 accumulation). The products of two
// bf16 numbers are exact in float32, so this computes what the float32 path
// computes (up to the order of the sums), in half the memory. It covers --wq/--aq
// bf16 on a bf16 checkpoint and most block formats (MX, BFP, block minifloat and
// logarithm), whose values have at most 8 significant bits and power-of-two scales.
//
// Float32 otherwise: cuBLAS SGEMM (no TF32) on the weights as the CPU holds them
// (fake-quantised, or decoded from packed storage).
#include <cublas_v2.h>  // types only: the library is opened with dlopen
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
extern "C" {
#include "bq_cuda.h"
#include "model.h"
}

// ---- cuBLAS through dlopen ----
typedef int (*create_fn)(void **);
typedef int (*sgemm_fn)(void *, int, int, int, int, int, const float *, const float *, int, const float *, int,
                        const float *, float *, int);
typedef int (*sgemm_batched_fn)(void *, int, int, int, int, int, const float *, const float *, int, long long,
                                const float *, int, long long, const float *, float *, int, long long, int);
typedef cublasStatus_t (*gemmex_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                                    const void *, cudaDataType, int, const void *, cudaDataType, int, const void *, void *,
                                    cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
static void *g_cublas;
static sgemm_fn g_sgemm;
static sgemm_batched_fn g_sgemm_batched;
static gemmex_fn g_gemmex;

static bq_status cublas_open(void)
{
    if (g_cublas) return BQ_OK;
    static const char *names[] = {"libcublas.so.13", "libcublas.so", "/usr/local/cuda/lib64/libcublas.so.13",
                                  "/usr/local/cuda/lib64/libcublas.so", "libcublas.so.12"};
    void *lib = NULL;
    for (size_t i = 0; i < sizeof names / sizeof *names && !lib; i++) lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!lib) return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cannot load cuBLAS (libcublas.so): %s", dlerror());
    create_fn create = (create_fn)dlsym(lib, "cublasCreate_v2");
    g_sgemm = (sgemm_fn)dlsym(lib, "cublasSgemm_v2");
    g_gemmex = (gemmex_fn)dlsym(lib, "cublasGemmEx");
    g_sgemm_batched = (sgemm_batched_fn)dlsym(lib, "cublasSgemmStridedBatched");
    if (!create || !g_sgemm || !g_gemmex || !g_sgemm_batched)
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cuBLAS lacks cublasSgemm_v2, cublasSgemmStridedBatched or cublasGemmEx");
    if (create(&g_cublas) != 0) { g_cublas = NULL; return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cublasCreate failed"); }
    return BQ_OK;
}

// ---- kernels (launched with 256 threads a block where they reduce) ----

struct sum_op { template <typename T> __device__ T operator()(T a, T b) const { return a + b; } };
struct max_op { __device__ float operator()(float a, float b) const { return fmaxf(a, b); } };

// Tree reduction over the block; every thread gets the result, and buf is free
// for reuse on return.
template <typename T, typename Op>
static __device__ __forceinline__ T block_reduce(T v, T *buf, Op op)
{
    buf[threadIdx.x] = v;
    __syncthreads();
    for (int o = blockDim.x / 2; o; o >>= 1) {
        if ((int)threadIdx.x < o) buf[threadIdx.x] = op(buf[threadIdx.x], buf[threadIdx.x + o]);
        __syncthreads();
    }
    T r = buf[0];
    __syncthreads();
    return r;
}
__global__ void k_embed(const float *emb, const int *ids, float *x, int E)
{
    int t = blockIdx.x;
    for (int i = threadIdx.x; i < E; i += blockDim.x) x[(size_t)t * E + i] = emb[(size_t)ids[t] * E + i];
}

// Learned positions (OPT, GPT-2): row t gets pos[t + offset] (a window starts at 0).
__global__ void k_add_pos(float *x, const float *pos, size_t n, int H, int offset)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += pos[(i / H + offset) * H + i % H];
}

// RMSNorm, or LayerNorm (with its bias, where b is not NULL), as forward.c's norm():
// sums in double, the same float operations in the same order. In place is fine.
__global__ void k_norm(const float *x, const float *w, const float *b, float *y, int d, float eps, int layer)
{
    __shared__ double part[256];
    const float *xr = x + (size_t)blockIdx.x * d;
    float *yr = y + (size_t)blockIdx.x * d;
    double s = 0;
    if (!layer) {
        for (int i = threadIdx.x; i < d; i += blockDim.x) s += (double)xr[i] * xr[i];
        float r = (float)(1.0 / sqrt(block_reduce(s, part, sum_op()) / d + eps));
        for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = w[i] * (xr[i] * r);
        return;
    }
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += xr[i];
    double mean = block_reduce(s, part, sum_op()) / d, v = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) v += (xr[i] - mean) * (xr[i] - mean);
    float r = (float)(1.0 / sqrt(block_reduce(v, part, sum_op()) / d + eps));
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = (float)(xr[i] - mean) * r * w[i] + (b ? b[i] : 0.0f);
}

// float32 holding bf16 values -> bf16 (exact: the low halves are zero)
__global__ void k_top_half(const float *x, __nv_bfloat16 *y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __ushort_as_bfloat16((unsigned short)(__float_as_uint(x[i]) >> 16));
}

__global__ void k_bias(float *y, const float *b, size_t n, int out)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += b[i % out];
}

__global__ void k_rope(float *x, int T, int heads, int d, float theta)
{
    int half = d / 2;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * heads * half) return;
    int k = (int)(i % half), h = (int)(i / half % heads), t = (int)(i / half / heads);
    float inv = (float)(1.0 / pow((double)theta, (double)(2 * k) / d));
    float ang = (float)t * inv, cs = cosf(ang), sn = sinf(ang);
    float *v = x + ((size_t)t * heads + h) * d;
    float a = v[k], b = v[k + half];
    v[k] = a * cs - b * sn;
    v[k + half] = b * cs + a * sn;
}

// Causal softmax of one row of scores (row t of a head's [n][n] block), as
// forward.c's attend_heads: float exponentials, their sum in double, zeros
// outside keys [first, t] (first > 0 under a sliding window of `window` keys).
__global__ void k_softmax(float *s, int n, int window)
{
    __shared__ float fm[256];
    __shared__ double ds[256];
    int t = blockIdx.x % n, first = window && t >= window ? t - window + 1 : 0;
    float *r = s + (size_t)blockIdx.x * n;
    float mx = -INFINITY;
    for (int j = first + threadIdx.x; j <= t; j += blockDim.x) mx = fmaxf(mx, r[j]);
    mx = block_reduce(mx, fm, max_op());
    double sum = 0;
    for (int j = first + threadIdx.x; j <= t; j += blockDim.x) { r[j] = expf(r[j] - mx); sum += r[j]; }
    float inv = (float)(1.0 / block_reduce(sum, ds, sum_op()));
    for (int j = threadIdx.x; j < n; j += blockDim.x) r[j] = j >= first && j <= t ? r[j] * inv : 0.0f;
}

// V [n][kvd] -> V^T [kvd][n] (--attn quantises V along the token axis)
__global__ void k_transpose(const float *v, float *vt, int n, int kvd)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)n * kvd) vt[(i % kvd) * n + i / kvd] = v[i];
}

// The MLP's activation, as forward.c: SiLU(gate) * up, ReLU or GELU (tanh form) of up.
__global__ void k_act(float *u, const float *g, size_t n, int act)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = u[i];
    if (act == ACT_SILU_GATED) u[i] = x * (g[i] / (1.0f + expf(-g[i])));
    else if (act == ACT_RELU) u[i] = x > 0 ? x : 0.0f;
    else u[i] = 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

__global__ void k_add(float *x, const float *h, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += h[i];
}

// log p(ids[t+1]) from the logits of row t, as ppl.c computes it.
__global__ void k_logprob(const float *lg, const int *ids, double *lp, int V)
{
    __shared__ float fm[256];
    __shared__ double ds[256];
    int t = blockIdx.x;
    const float *row = lg + (size_t)t * V;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, row[i]);
    mx = block_reduce(mx, fm, max_op());
    double se = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) se += (double)expf(row[i] - mx);
    se = block_reduce(se, ds, sum_op());
    if (threadIdx.x == 0) lp[t] = (double)row[ids[t + 1]] - mx - log(se);
}

// ---- the model on the device ----
// A linear on the device: float32 weights (w), bf16 weights (w16), or packed codes
// (pw) unpacked into the shared bf16 buffer before each product.
struct glin { float *w, *b; __nv_bfloat16 *w16; bq_cuda_w *pw; int in, out; const bq_format *aq; };
struct glayer { float *ln1, *ln1b, *ln2, *ln2b, *qn, *kn; glin q, k, v, o, gate, up, down; };
struct bq_cuda_model {
    const bq_model *m;
    float *emb, *pos, *fnorm, *fnormb;  // pos: learned positions (NULL with rotary ones)
    glin head, proj_in, proj_out;       // proj_*: OPT's word_embed_proj_dim != hidden
    glayer *L;
    int T, hchunk;                      // hchunk: kv heads per attention call (scores buffer s)
    float *x, *h, *q, *k, *v, *a, *g, *u, *lg, *xq, *e, *s, *vt;
    __nv_bfloat16 *xb;  // bf16 activations for the bf16 path (allocated when a linear takes it)
    __nv_bfloat16 *wb;  // one packed linear unpacked (the largest)
    int *ids;
    double *lp;
    size_t bytes;
};

static bq_status up_floats(float **d, const float *h, size_t n, size_t *bytes)
{
    bq_status st = bq_cuda_malloc((void **)d, n * 4);
    if (!st) st = bq_cuda_upload(*d, h, n * 4);
    *bytes += n * 4;
    return st;
}

// Significant bits of the largest element of a grid (0: not a small grid).
static int sig_bits(const elem_t *e)
{
    if (e->kind == EK_MF) return e->mbits + 1;
    if (e->kind == EK_LOG) return 1;
    if (e->kind != EK_INT) return 0;
    int m = e->hi > -e->lo ? e->hi : -e->lo, b = 0;
    while (m >> b) b++;
    return b;
}

// Whether every value format f produces is a bf16 number: elements of at most 8
// significant bits times a power of two (or a small minifloat scale whose product
// with them still fits). The exception: values under 2^-126, where bf16 has fewer
// bits than float32; no real activation or weight is that small.
static int bf16_values(const bq_format *f)
{
    int e = sig_bits(&f->el);
    switch (f->sch) {
    case SCH_ELEM: case SCH_MX: case SCH_BFP: case SCH_BM: case SCH_BL: return e > 0 && e <= 8;
    case SCH_SCALED: return e > 0 && f->scale.kind == EK_MF && e + f->scale.mbits + 1 <= 8;
    default: return 0;  // float32 scales (int per tensor/row/group, NVFP4's tensor scale)
    }
}

// Whether every value of w is a bf16 number (the low 16 bits of each float are zero).
static int bf16_exact(const float *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &w[i], 4);
        if (u & 0xffffu) return 0;
    }
    return 1;
}

// Weights go up packed where the CPU holds them packed and the GPU can unpack the
// format (bf16 path only); as bf16 where they and the activations are bf16
// numbers; else as float32.
static bq_status up_linear(glin *g, const linear *l, size_t *bytes)
{
    g->in = l->in;
    g->out = l->out;
    g->aq = l->aq;
    size_t n = (size_t)l->in * l->out;
    const float *w = l->w;
    float *tmp = NULL;
    if (!w) {  // packed on the CPU: decode once (to check, or for upload)
        if (!(tmp = (float *)malloc(n * 4))) return bq_fail(BQ_ERR_NOMEM, "out of memory decoding %s", l->name);
        pmat_decode(l->pw, 0, l->out, tmp);
        w = tmp;
    }
    bq_status st = BQ_OK;
    int bf16 = l->aq && bf16_values(l->aq) && bf16_exact(w, n);
    if (bf16 && l->pw && bq_cuda_w_upload(l->pw, &g->pw) == BQ_OK) {
        *bytes += bq_cuda_w_bytes(g->pw);
    } else if (bf16) {  // the top halves of the float32 bits are the bf16 values
        uint16_t *h = (uint16_t *)malloc(n * 2);
        if (!h) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        for (size_t i = 0; h && i < n; i++) {
            uint32_t u;
            memcpy(&u, &w[i], 4);
            h[i] = (uint16_t)(u >> 16);
        }
        if (!st) st = bq_cuda_malloc((void **)&g->w16, n * 2);
        if (!st) st = bq_cuda_upload(g->w16, h, n * 2);
        *bytes += n * 2;
        free(h);
    } else st = up_floats(&g->w, w, n, bytes);
    free(tmp);
    if (!st && l->b) st = up_floats(&g->b, l->b, (size_t)l->out, bytes);
    return st;
}

static void glin_free(glin *l)
{
    bq_cuda_free(l->w);
    bq_cuda_free(l->b);
    bq_cuda_free(l->w16);
    bq_cuda_w_free(l->pw);
}

extern "C" void bq_cuda_model_free(bq_cuda_model *g)
{
    if (!g) return;
    const bq_config *c = &g->m->c;
    for (int i = 0; g->L && i < c->layers; i++) {
        glayer *l = &g->L[i];
        float *p[] = {l->ln1, l->ln1b, l->ln2, l->ln2b, l->qn, l->kn};
        for (float *x : p) bq_cuda_free(x);
        glin *ls[] = {&l->q, &l->k, &l->v, &l->o, &l->gate, &l->up, &l->down};
        for (glin *x : ls) glin_free(x);
    }
    free(g->L);
    float *p[] = {g->emb, g->pos, g->fnorm, g->fnormb, g->x, g->h, g->q, g->k, g->v, g->a, g->g, g->u, g->lg, g->xq, g->e, g->s, g->vt};
    for (float *x : p) bq_cuda_free(x);
    glin *ls[] = {&g->head, &g->proj_in, &g->proj_out};
    for (glin *x : ls) glin_free(x);
    bq_cuda_free(g->xb);
    bq_cuda_free(g->wb);
    bq_cuda_free(g->ids);
    bq_cuda_free(g->lp);
    free(g);
}

extern "C" bq_status bq_cuda_model_new(const bq_model *m, int T, bq_cuda_model **out)
{
    *out = NULL;
    char why[256];
    if (!bq_cuda_devices(why, sizeof why)) return bq_fail(BQ_ERR_UNSUPPORTED, "%s", why);
    const bq_config *c = &m->c;
    if (!c->rope && T > c->max_pos)
        return bq_fail(BQ_ERR_ARG, "context of %d tokens exceeds the model's %d positions", T, c->max_pos);
    for (int i = 0; i < c->layers; i++) {  // L-Mul products have no GPU kernel: never a silently exact run
        const linear *ls[] = {&m->L[i].q, &m->L[i].k, &m->L[i].v, &m->L[i].o, &m->L[i].gate, &m->L[i].up, &m->L[i].down};
        for (int j = 0; j < 7; j++)
            if (ls[j]->lmul) return bq_fail(BQ_ERR_UNSUPPORTED, "%s: L-Mul products run on the CPU only (--device cpu)", ls[j]->name);
    }
    bq_status st = cublas_open();
    if (st) return st;
    bq_cuda_model *g = (bq_cuda_model *)calloc(1, sizeof *g);
    if (!g) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    g->m = m;
    g->T = T;
    g->L = (glayer *)calloc((size_t)c->layers, sizeof *g->L);
    if (!g->L) { free(g); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    size_t H = (size_t)c->hidden, E = (size_t)c->embed_dim, V = (size_t)c->vocab, *b = &g->bytes;
    if (m->tok_emb) st = up_floats(&g->emb, m->tok_emb, V * E, b);
    else {
        float *tmp = (float *)malloc(V * E * 4);
        if (!tmp) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        else { pmat_decode(m->emb_p, 0, (int)V, tmp); st = up_floats(&g->emb, tmp, V * E, b); free(tmp); }
    }
    if (!st && m->pos_emb) st = up_floats(&g->pos, m->pos_emb, ((size_t)T + c->pos_offset) * H, b);
    if (!st && c->final_norm) st = up_floats(&g->fnorm, m->final_ln.w, H, b);
    if (!st && c->final_norm && m->final_ln.b) st = up_floats(&g->fnormb, m->final_ln.b, H, b);
    int any16 = 0;  // what the bf16 buffers must hold, noted as the linears go up
    size_t maxw = 0;
    auto track = [&](const glin *x) {
        any16 |= x->w16 || x->pw;
        if (x->pw && (size_t)x->in * x->out > maxw) maxw = (size_t)x->in * x->out;
    };
    if (!st) st = up_linear(&g->head, &m->head, b);
    if (!st) track(&g->head);
    if (!st && LINEAR_PRESENT(&m->proj_in) && !(st = up_linear(&g->proj_in, &m->proj_in, b))) track(&g->proj_in);
    if (!st && LINEAR_PRESENT(&m->proj_out) && !(st = up_linear(&g->proj_out, &m->proj_out, b))) track(&g->proj_out);
    for (int i = 0; i < c->layers && !st; i++) {
        const layer_w *L = &m->L[i];
        glayer *l = &g->L[i];
        st = up_floats(&l->ln1, L->ln1.w, H, b);
        if (!st) st = up_floats(&l->ln2, L->ln2.w, H, b);
        if (!st && L->ln1.b) st = up_floats(&l->ln1b, L->ln1.b, H, b);
        if (!st && L->ln2.b) st = up_floats(&l->ln2b, L->ln2.b, H, b);
        if (!st && c->qk_norm) st = up_floats(&l->qn, L->q_norm.w, (size_t)c->head_dim, b);
        if (!st && c->qk_norm) st = up_floats(&l->kn, L->k_norm.w, (size_t)c->head_dim, b);
        const linear *src[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        glin *dst[] = {&l->q, &l->k, &l->v, &l->o, &l->gate, &l->up, &l->down};
        for (int j = 0; j < 7 && !st; j++)
            if (LINEAR_PRESENT(src[j]) && !(st = up_linear(dst[j], src[j], b))) track(dst[j]);
    }
    size_t qd = (size_t)c->heads * c->head_dim, kvd = (size_t)c->kv_heads * c->head_dim, I = (size_t)c->inter, Tn = (size_t)T;
    size_t maxin = H > I ? H : I;
    maxin = maxin > qd ? maxin : qd;
    maxin = maxin > E ? maxin : E;
    // attention scores for as many kv heads at a time as fit in 512 MiB (at least one)
    size_t per = Tn * Tn * 4, hc = ((size_t)512 << 20) / per;
    g->hchunk = hc < 1 ? 1 : hc > (size_t)c->kv_heads ? c->kv_heads : (int)hc;
    int gated = c->act == ACT_SILU_GATED, proj = LINEAR_PRESENT(&m->proj_in) || LINEAR_PRESENT(&m->proj_out);
    float **bufs[] = {&g->x, &g->h, &g->q, &g->k, &g->v, &g->a, &g->g, &g->u, &g->lg, &g->xq, &g->e, &g->s, &g->vt};
    size_t sizes[] = {Tn * H, Tn * H, Tn * qd, Tn * kvd, Tn * kvd, Tn * qd, gated ? Tn * I : 0, Tn * I, Tn * V, Tn * maxin,
                      proj ? Tn * E : 0, (size_t)g->hchunk * per / 4, m->attn_q ? Tn * kvd : 0};
    for (int i = 0; i < 13 && !st; i++)
        if (sizes[i]) { st = bq_cuda_malloc((void **)bufs[i], sizes[i] * 4); *b += sizes[i] * 4; }
    if (!st && any16) { st = bq_cuda_malloc((void **)&g->xb, Tn * maxin * 2); *b += Tn * maxin * 2; }
    if (!st && maxw) { st = bq_cuda_malloc((void **)&g->wb, maxw * 2); *b += maxw * 2; }
    if (!st) st = bq_cuda_malloc((void **)&g->ids, Tn * 4);
    if (!st) st = bq_cuda_malloc((void **)&g->lp, Tn * 8);
    if (st) { bq_cuda_model_free(g); return st; }
    *out = g;
    return BQ_OK;
}

extern "C" size_t bq_cuda_model_bytes(const bq_cuda_model *g) { return g->bytes; }

static unsigned nblk(size_t n) { return (unsigned)((n + 255) / 256); }

// y[n, out] = q(x[n, in]) W^T + b; column-major for cuBLAS: Y (out x n) = W^T (out x in) . X (in x n)
static bq_status matmul(bq_cuda_model *g, const glin *l, const float *x, float *y, int n)
{
    if (l->aq) {
        bq_status st = bq_cuda_qdq(l->aq, x, g->xq, (size_t)n, (size_t)l->in, &g->m->qopts);
        if (st) return st;
        x = g->xq;
    }
    const float one = 1.0f, zero = 0.0f;
    if (l->w16 || l->pw) {  // x holds bf16 values (quantised above): their top halves, then bf16 x bf16 -> float32
        size_t nx = (size_t)n * l->in;
        k_top_half<<<nblk(nx), 256>>>(x, g->xb, nx);
        if (l->pw) {
            bq_status st = bq_cuda_w_to_bf16(l->pw, g->wb);
            if (st) return st;
        }
        if (g_gemmex((cublasHandle_t)g_cublas, CUBLAS_OP_T, CUBLAS_OP_N, l->out, n, l->in, &one, l->pw ? g->wb : l->w16, CUDA_R_16BF, l->in, g->xb, CUDA_R_16BF,
                     l->in, &zero, y, CUDA_R_32F, l->out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS)
            return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cublasGemmEx (bf16) failed");
    } else if (g_sgemm(g_cublas, CUBLAS_OP_T, CUBLAS_OP_N, l->out, n, l->in, &one, l->w, l->in, x, l->in, &zero, y, l->out) != 0)
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cublasSgemm failed");
    if (l->b) k_bias<<<nblk((size_t)n * l->out), 256>>>(y, l->b, (size_t)n * l->out, l->out);
    return BQ_OK;
}

static bq_status sgemm_batched(bool ta, bool tb, int m, int n, int k, float alpha, const float *A, int lda, long long sa,
                               const float *B, int ldb, long long sb, float *C, int ldc, long long sc, int count)
{
    const float zero = 0.0f;
    if (g_sgemm_batched(g_cublas, ta, tb, m, n, k, &alpha, A, lda, sa, B, ldb, sb, &zero, C, ldc, sc, count) != 0)
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cublasSgemmStridedBatched failed");
    return BQ_OK;
}

// Causal attention over the window, as forward.c's attention(): per head, scores
// = Q K^T / sqrt(d), softmax, P V; --attn quantises Q and K along head_dim, V
// along the tokens and P along the keys. Heads h = kh * group + j share kv head
// kh, so for each j the kv heads go in batches of hchunk (column-major views of
// the row-major [n][heads][d] buffers: C = S^T = K Q^T, then O^T = V^T P^T).
static bq_status attention(bq_cuda_model *g, int n)
{
    const bq_model *M = g->m;
    const bq_config *c = &M->c;
    const int d = c->head_dim, kvh = c->kv_heads, G = c->heads / kvh, qd = c->heads * d, kvd = kvh * d;
    const bq_format *aq = M->attn_q;
    bq_status st = BQ_OK;
    if (aq && ((st = bq_cuda_qdq(aq, g->q, g->q, (size_t)n * c->heads, (size_t)d, &M->qopts)) ||
               (st = bq_cuda_qdq(aq, g->k, g->k, (size_t)n * kvh, (size_t)d, &M->qopts))))
        return st;
    if (aq) {
        k_transpose<<<nblk((size_t)n * kvd), 256>>>(g->v, g->vt, n, kvd);
        if ((st = bq_cuda_qdq(aq, g->vt, g->vt, (size_t)kvd, (size_t)n, &M->qopts))) return st;
    }
    const long long nn = (long long)n * n;
    for (int j = 0; j < G && !st; j++)
        for (int k0 = 0; k0 < kvh && !st; k0 += g->hchunk) {
            int cnt = kvh - k0 < g->hchunk ? kvh - k0 : g->hchunk;
            size_t h0 = (size_t)k0 * G + j;
            st = sgemm_batched(true, false, n, n, d, 1.0f / sqrtf((float)d), g->k + (size_t)k0 * d, kvd, d, g->q + h0 * d, qd,
                               (long long)G * d, g->s, n, nn, cnt);
            if (st) break;
            k_softmax<<<(unsigned)(cnt * n), 256>>>(g->s, n, c->sliding_window);
            if (aq && (st = bq_cuda_qdq(aq, g->s, g->s, (size_t)cnt * n, (size_t)n, &M->qopts))) break;
            st = aq ? sgemm_batched(true, false, d, n, n, 1.0f, g->vt + (size_t)k0 * d * n, n, (long long)d * n, g->s, n, nn,
                                    g->a + h0 * d, qd, (long long)G * d, cnt)
                    : sgemm_batched(false, false, d, n, n, 1.0f, g->v + (size_t)k0 * d, kvd, d, g->s, n, nn, g->a + h0 * d, qd,
                                    (long long)G * d, cnt);
        }
    return st;
}

extern "C" bq_status bq_cuda_window_logprobs(bq_cuda_model *g, const int32_t *ids, int n, double *lp)
{
    const bq_model *M = g->m;
    const bq_config *c = &M->c;
    if (n > g->T || n < 2) return bq_fail(BQ_ERR_ARG, "CUDA engine: window of %d tokens (1 < n <= %d)", n, g->T);
    for (int t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= c->vocab)
            return bq_fail(BQ_ERR_ARG, "token id %d at position %d is outside the vocabulary [0, %d)", ids[t], t, c->vocab);
    int H = c->hidden, d = c->head_dim, layer = c->norm == NORM_LAYER;
    size_t nH = (size_t)n * H, nI = (size_t)n * c->inter;
    bq_status st = bq_cuda_upload(g->ids, ids, (size_t)n * 4);
    if (st) return st;
    if (LINEAR_PRESENT(&M->proj_in)) {
        k_embed<<<n, 256>>>(g->emb, g->ids, g->e, c->embed_dim);
        if ((st = matmul(g, &g->proj_in, g->e, g->x, n))) return st;
    } else k_embed<<<n, 256>>>(g->emb, g->ids, g->x, H);
    if (g->pos) k_add_pos<<<nblk(nH), 256>>>(g->x, g->pos, nH, H, c->pos_offset);
    for (int l = 0; l < c->layers && !st; l++) {
        glayer *L = &g->L[l];
        // attention
        float *hin = g->x;
        if (c->pre_norm) { k_norm<<<n, 256>>>(g->x, L->ln1, L->ln1b, g->h, H, c->norm_eps, layer); hin = g->h; }
        if ((st = matmul(g, &L->q, hin, g->q, n)) || (st = matmul(g, &L->k, hin, g->k, n)) || (st = matmul(g, &L->v, hin, g->v, n)))
            break;
        if (c->qk_norm) {
            k_norm<<<n * c->heads, 256>>>(g->q, L->qn, NULL, g->q, d, c->norm_eps, 0);
            k_norm<<<n * c->kv_heads, 256>>>(g->k, L->kn, NULL, g->k, d, c->norm_eps, 0);
        }
        if (c->rope) {
            k_rope<<<nblk((size_t)n * c->heads * (d / 2)), 256>>>(g->q, n, c->heads, d, c->rope_theta);
            k_rope<<<nblk((size_t)n * c->kv_heads * (d / 2)), 256>>>(g->k, n, c->kv_heads, d, c->rope_theta);
        }
        if (M->kv_q) {
            if ((st = bq_cuda_qdq(M->kv_q, g->k, g->k, (size_t)n * c->kv_heads, (size_t)d, &M->qopts)) ||
                (st = bq_cuda_qdq(M->kv_q, g->v, g->v, (size_t)n * c->kv_heads, (size_t)d, &M->qopts)))
                break;
        }
        if ((st = attention(g, n)) || (st = matmul(g, &L->o, g->a, g->h, n))) break;
        k_add<<<nblk(nH), 256>>>(g->x, g->h, nH);
        if (!c->pre_norm) k_norm<<<n, 256>>>(g->x, L->ln1, L->ln1b, g->x, H, c->norm_eps, layer);
        // MLP
        hin = g->x;
        if (c->pre_norm) { k_norm<<<n, 256>>>(g->x, L->ln2, L->ln2b, g->h, H, c->norm_eps, layer); hin = g->h; }
        if ((st = matmul(g, &L->up, hin, g->u, n))) break;
        if (c->act == ACT_SILU_GATED && (st = matmul(g, &L->gate, hin, g->g, n))) break;
        k_act<<<nblk(nI), 256>>>(g->u, g->g, nI, c->act);
        if ((st = matmul(g, &L->down, g->u, g->h, n))) break;
        k_add<<<nblk(nH), 256>>>(g->x, g->h, nH);
        if (!c->pre_norm) k_norm<<<n, 256>>>(g->x, L->ln2, L->ln2b, g->x, H, c->norm_eps, layer);
    }
    if (st) return st;
    float *xf = g->x;
    if (c->final_norm) { k_norm<<<n, 256>>>(g->x, g->fnorm, g->fnormb, g->h, H, c->norm_eps, layer); xf = g->h; }
    if (LINEAR_PRESENT(&M->proj_out)) {
        if ((st = matmul(g, &g->proj_out, xf, g->e, n))) return st;
        xf = g->e;
    }
    if ((st = matmul(g, &g->head, xf, g->lg, n))) return st;
    k_logprob<<<n - 1, 256>>>(g->lg, g->ids, g->lp, c->vocab);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: %s", cudaGetErrorString(e));
    return bq_cuda_download(lp, g->lp, (size_t)(n - 1) * 8);
}
