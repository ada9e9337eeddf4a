// The forward pass on a CUDA device, for perplexity (`blockq ppl --device cuda`).
// LLaMA family (LLaMA/Mistral, Qwen2 with qkv bias, Qwen3 with q/k norms): the
// same steps as src/engine/forward.c over a whole window. Each linear goes up in
// one of three forms (packed, bf16 or float32, below; up_linear chooses);
// activations and the KV cache are quantised on the device by bq_cuda_qdq (the
// CPU's bits). cuBLAS is opened at run time, so blockq needs no CUDA libraries
// where there is no GPU.
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
typedef cublasStatus_t (*gemmex_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                                    const void *, cudaDataType, int, const void *, cudaDataType, int, const void *, void *,
                                    cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
static void *g_cublas;
static sgemm_fn g_sgemm;
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
    if (!create || !g_sgemm || !g_gemmex) return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cuBLAS lacks cublasSgemm_v2 or cublasGemmEx");
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
__global__ void k_embed(const float *emb, const int *ids, float *x, int H)
{
    int t = blockIdx.x;
    for (int i = threadIdx.x; i < H; i += blockDim.x) x[(size_t)t * H + i] = emb[(size_t)ids[t] * H + i];
}

__global__ void k_rmsnorm(const float *x, const float *w, float *y, int d, float eps)
{
    __shared__ double part[256];
    const float *xr = x + (size_t)blockIdx.x * d;
    float *yr = y + (size_t)blockIdx.x * d;
    double s = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += (double)xr[i] * xr[i];
    float r = (float)(1.0 / sqrt(block_reduce(s, part, sum_op()) / d + eps));
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = w[i] * (xr[i] * r);
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

// One block per (query t, head h): causal softmax over the keys, then P V.
__global__ void k_attention(const float *q, const float *k, const float *v, float *out, int T, int heads, int kv_heads, int d)
{
    extern __shared__ float sc[];
    __shared__ float red[256];
    int t = blockIdx.x, h = blockIdx.y, kh = h / (heads / kv_heads);
    size_t qd = (size_t)heads * d, kvd = (size_t)kv_heads * d;
    const float *qr = q + t * qd + (size_t)h * d;
    float scale = 1.0f / sqrtf((float)d);
    for (int j = threadIdx.x; j <= t; j += blockDim.x) {
        const float *kr = k + j * kvd + (size_t)kh * d;
        float s = 0.0f;
        for (int i = 0; i < d; i++) s += qr[i] * kr[i];
        sc[j] = s * scale;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int j = threadIdx.x; j <= t; j += blockDim.x) mx = fmaxf(mx, sc[j]);
    mx = block_reduce(mx, red, max_op());
    float sum = 0.0f;
    for (int j = threadIdx.x; j <= t; j += blockDim.x) { sc[j] = expf(sc[j] - mx); sum += sc[j]; }
    float inv = 1.0f / block_reduce(sum, red, sum_op());
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float a = 0.0f;
        for (int j = 0; j <= t; j++) a += sc[j] * v[j * kvd + (size_t)kh * d + i];
        out[t * qd + (size_t)h * d + i] = a * inv;
    }
}

__global__ void k_silu_mul(float *u, const float *g, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) u[i] *= g[i] / (1.0f + expf(-g[i]));
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
struct glayer { float *ln1, *ln2, *qn, *kn; glin q, k, v, o, gate, up, down; };
struct bq_cuda_model {
    const bq_model *m;
    float *emb, *fnorm;
    glin head;
    glayer *L;
    int T;
    float *x, *h, *q, *k, *v, *a, *g, *u, *lg, *xq;
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

// Bits of w that are not bf16 (0: every value is a bf16 number).
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

extern "C" void bq_cuda_model_free(bq_cuda_model *g)
{
    if (!g) return;
    const bq_config *c = &g->m->c;
    for (int i = 0; g->L && i < c->layers; i++) {
        glayer *l = &g->L[i];
        float *p[] = {l->ln1, l->ln2, l->qn, l->kn};
        for (float *x : p) bq_cuda_free(x);
        glin *ls[] = {&l->q, &l->k, &l->v, &l->o, &l->gate, &l->up, &l->down};
        for (glin *x : ls) { bq_cuda_free(x->w); bq_cuda_free(x->b); bq_cuda_free(x->w16); bq_cuda_w_free(x->pw); }
    }
    free(g->L);
    float *p[] = {g->emb, g->fnorm, g->head.w, g->head.b, g->x, g->h, g->q, g->k, g->v, g->a, g->g, g->u, g->lg, g->xq};
    for (float *x : p) bq_cuda_free(x);
    bq_cuda_free(g->head.w16);
    bq_cuda_w_free(g->head.pw);
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
    if (c->arch == ARCH_OPT || c->arch == ARCH_GPT2 || !c->rope || c->norm != NORM_RMS || c->act != ACT_SILU_GATED ||
        c->embed_dim != c->hidden)
        return bq_fail(BQ_ERR_UNSUPPORTED, "the CUDA engine runs the LLaMA family (llama, mistral, qwen2, qwen3), not %s",
                       c->model_type);
    if (m->attn_q) return bq_fail(BQ_ERR_UNSUPPORTED, "--attn quantisation runs on the CPU only (not with --device cuda)");
    bq_status st = cublas_open();
    if (st) return st;
    bq_cuda_model *g = (bq_cuda_model *)calloc(1, sizeof *g);
    if (!g) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    g->m = m;
    g->T = T;
    g->L = (glayer *)calloc((size_t)c->layers, sizeof *g->L);
    if (!g->L) { free(g); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    size_t H = (size_t)c->hidden, V = (size_t)c->vocab, *b = &g->bytes;
    if (m->tok_emb) st = up_floats(&g->emb, m->tok_emb, V * H, b);
    else {
        float *tmp = (float *)malloc(V * H * 4);
        if (!tmp) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        else { pmat_decode(m->emb_p, 0, (int)V, tmp); st = up_floats(&g->emb, tmp, V * H, b); free(tmp); }
    }
    if (!st) st = up_floats(&g->fnorm, m->final_ln.w, H, b);
    int any16 = 0;  // what the bf16 buffers must hold, noted as the linears go up
    size_t maxw = 0;
    auto track = [&](const glin *x) {
        any16 |= x->w16 || x->pw;
        if (x->pw && (size_t)x->in * x->out > maxw) maxw = (size_t)x->in * x->out;
    };
    if (!st) st = up_linear(&g->head, &m->head, b);
    if (!st) track(&g->head);
    for (int i = 0; i < c->layers && !st; i++) {
        const layer_w *L = &m->L[i];
        glayer *l = &g->L[i];
        st = up_floats(&l->ln1, L->ln1.w, H, b);
        if (!st) st = up_floats(&l->ln2, L->ln2.w, H, b);
        if (!st && c->qk_norm) st = up_floats(&l->qn, L->q_norm.w, (size_t)c->head_dim, b);
        if (!st && c->qk_norm) st = up_floats(&l->kn, L->k_norm.w, (size_t)c->head_dim, b);
        const linear *src[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        glin *dst[] = {&l->q, &l->k, &l->v, &l->o, &l->gate, &l->up, &l->down};
        for (int j = 0; j < 7 && !st; j++)
            if (!(st = up_linear(dst[j], src[j], b))) track(dst[j]);
    }
    size_t qd = (size_t)c->heads * c->head_dim, kvd = (size_t)c->kv_heads * c->head_dim, I = (size_t)c->inter, Tn = (size_t)T;
    size_t maxin = H > I ? H : I;
    maxin = maxin > qd ? maxin : qd;
    float **bufs[] = {&g->x, &g->h, &g->q, &g->k, &g->v, &g->a, &g->g, &g->u, &g->lg, &g->xq};
    size_t sizes[] = {Tn * H, Tn * H, Tn * qd, Tn * kvd, Tn * kvd, Tn * qd, Tn * I, Tn * I, Tn * V, Tn * maxin};
    for (int i = 0; i < 10 && !st; i++) { st = bq_cuda_malloc((void **)bufs[i], sizes[i] * 4); *b += sizes[i] * 4; }
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

// y[n, out] = q(x[n, in]) W^T + b
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
    } else if (g_sgemm(g_cublas, 1 /*T*/ /* column-major: Y (out x n) = W^T (out x in) . X (in x n) */, 0 /*N*/, l->out, n, l->in, &one, l->w, l->in, x, l->in, &zero, y, l->out) != 0)
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: cublasSgemm failed");
    if (l->b) k_bias<<<(unsigned)(((size_t)n * l->out + 255) / 256), 256>>>(y, l->b, (size_t)n * l->out, l->out);
    return BQ_OK;
}

extern "C" bq_status bq_cuda_window_logprobs(bq_cuda_model *g, const int32_t *ids, int n, double *lp)
{
    const bq_model *M = g->m;
    const bq_config *c = &M->c;
    if (n > g->T || n < 2) return bq_fail(BQ_ERR_ARG, "CUDA engine: window of %d tokens (1 < n <= %d)", n, g->T);
    int H = c->hidden, d = c->head_dim;
    size_t nH = (size_t)n * H, nI = (size_t)n * c->inter;
    bq_status st = bq_cuda_upload(g->ids, ids, (size_t)n * 4);
    if (st) return st;
    k_embed<<<n, 256>>>(g->emb, g->ids, g->x, H);
    for (int l = 0; l < c->layers && !st; l++) {
        glayer *L = &g->L[l];
        k_rmsnorm<<<n, 256>>>(g->x, L->ln1, g->h, H, c->norm_eps);
        if ((st = matmul(g, &L->q, g->h, g->q, n)) || (st = matmul(g, &L->k, g->h, g->k, n)) || (st = matmul(g, &L->v, g->h, g->v, n)))
            break;
        if (c->qk_norm) {
            k_rmsnorm<<<n * c->heads, 256>>>(g->q, L->qn, g->q, d, c->norm_eps);
            k_rmsnorm<<<n * c->kv_heads, 256>>>(g->k, L->kn, g->k, d, c->norm_eps);
        }
        k_rope<<<nblk((size_t)n * c->heads * (d / 2)), 256>>>(g->q, n, c->heads, d, c->rope_theta);
        k_rope<<<nblk((size_t)n * c->kv_heads * (d / 2)), 256>>>(g->k, n, c->kv_heads, d, c->rope_theta);
        if (M->kv_q) {
            if ((st = bq_cuda_qdq(M->kv_q, g->k, g->k, (size_t)n * c->kv_heads, (size_t)d, &M->qopts)) ||
                (st = bq_cuda_qdq(M->kv_q, g->v, g->v, (size_t)n * c->kv_heads, (size_t)d, &M->qopts)))
                break;
        }
        k_attention<<<dim3((unsigned)n, (unsigned)c->heads), 256, (size_t)n * 4>>>(g->q, g->k, g->v, g->a, n, c->heads, c->kv_heads, d);
        if ((st = matmul(g, &L->o, g->a, g->h, n))) break;
        k_add<<<nblk(nH), 256>>>(g->x, g->h, nH);
        k_rmsnorm<<<n, 256>>>(g->x, L->ln2, g->h, H, c->norm_eps);
        if ((st = matmul(g, &L->up, g->h, g->u, n)) || (st = matmul(g, &L->gate, g->h, g->g, n))) break;
        k_silu_mul<<<nblk(nI), 256>>>(g->u, g->g, nI);
        if ((st = matmul(g, &L->down, g->u, g->h, n))) break;
        k_add<<<nblk(nH), 256>>>(g->x, g->h, nH);


    }
    if (st) return st;
    k_rmsnorm<<<n, 256>>>(g->x, g->fnorm, g->h, H, c->norm_eps);
    if ((st = matmul(g, &g->head, g->h, g->lg, n))) return st;
    k_logprob<<<n - 1, 256>>>(g->lg, g->ids, g->lp, c->vocab);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA engine: %s", cudaGetErrorString(e));
    return bq_cuda_download(lp, g->lp, (size_t)(n - 1) * 8);
}
