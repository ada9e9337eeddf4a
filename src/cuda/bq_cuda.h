/* The CUDA backend (the .cu files here; nocuda.c when built without nvcc).
 * Every call reports "no CUDA device" cleanly where there is none. Pointers
 * named d_* are device memory. */
#ifndef BQ_CUDA_H
#define BQ_CUDA_H
#include "pmat.h"
#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable devices (0 without a GPU, a driver, or CUDA support built in);
 * `why` (may be NULL) gets a one-line reason when 0. */
int bq_cuda_devices(char *why, size_t why_len);
const char *bq_cuda_device_name(void);

bq_status bq_cuda_malloc(void **d, size_t bytes);
void bq_cuda_free(void *d);
bq_status bq_cuda_upload(void *d, const void *h, size_t bytes);
bq_status bq_cuda_download(void *h, const void *d, size_t bytes);
bq_status bq_cuda_sync(void);

/* Fake quantisation on the device: the same bits as bq_qdq on the CPU. */
bq_status bq_cuda_qdq(const bq_format *f, const float *d_x, float *d_y, size_t rows, size_t cols, const bq_qopts *o);

/* Whether bq_cuda_qdq of f reads a tensor-wide statistic back to the host
 * (per-tensor int, NVFP4): such a call synchronises and cannot be recorded. */
int bq_cuda_qdq_reads_back(const bq_format *f);

/* A packed weight on the device (4- or 8-bit block codes, one scale byte or an
 * fp16 scale per block), from a panel-layout pmat. */
typedef struct bq_cuda_w bq_cuda_w;
bq_status bq_cuda_w_upload(const pmat *m, bq_cuda_w **out);
/* Which GEMV a weight is laid out for. FP16: 4-bit (and 6-bit) codes through the
 * fp16 tensor cores, 8-bit codes by rows (the default). INT8: 8-bit and 4-bit codes
 * through the int8 tensor cores (gemv_i8, src/cuda/i8_layout.h; blocks of 16 or 32
 * with 1-byte or fp16 scales, or int groups of 64 and more with float32 scales).
 * DEFAULT: INT8 where it applies (faster at batch-1 decode on an H200,
 * bench/RESULTS.md), else FP16; BQ_CUDA_GEMV=fp16 in the environment keeps FP16 (A/B
 * runs). Asking for INT8 where it does not apply is refused. */
typedef enum { BQ_GEMV_DEFAULT, BQ_GEMV_FP16, BQ_GEMV_INT8 } bq_gemv_path;
bq_status bq_cuda_w_upload_path(const pmat *m, bq_gemv_path path, bq_cuda_w **out);
/* The path w was laid out for (BQ_GEMV_FP16 or BQ_GEMV_INT8). */
bq_gemv_path bq_cuda_w_path(const bq_cuda_w *w);
/* Its layout in words, for tests and benchmarks: "fp16 e2m3 by bits", "int8 offset nibbles", ... */
const char *bq_cuda_w_layout(const bq_cuda_w *w);
void bq_cuda_w_free(bq_cuda_w *w);
size_t bq_cuda_w_bytes(const bq_cuda_w *w);
/* Whether its GEMVs are launched programmatically (src/cuda/launch.cuh; on by default). */
void bq_cuda_w_set_pdl(bq_cuda_w *w, int on);
/* y[n][rows] = x[n][cols] W^T for a few tokens (1 to 16; float activations). */
/* Tokens up to which the GEMV beats unpacking for a GEMM: 16 on the tensor-core
 * layouts (4 a pass), 4 for rows (a pass a token). */
int bq_cuda_w_gemv_max(const bq_cuda_w *w);
bq_status bq_cuda_gemv(const bq_cuda_w *w, const float *d_x, int n, float *d_y);
/* The same with ks column splits (0: as bq_cuda_gemv chooses by shape; 1 .. the
 * shape's choice: for tests comparing the paths). */
bq_status bq_cuda_gemv_split(const bq_cuda_w *w, const float *d_x, int n, float *d_y, int ks);
/* count (1 to 3) matrices of one layout sharing x (q, k, v; gate, up) in one launch:
 * d_ys[i] = x ws[i]^T, each row summed as by the unsplit path (bq_cuda_gemv_split with
 * ks 1), so the bits are those of separate unsplit calls. bq_cuda_w_fusable(a, b):
 * whether b can join a's launch. */
bq_status bq_cuda_gemv_multi(const bq_cuda_w *const *ws, int count, const float *d_x, int n, float *const *d_ys);
int bq_cuda_w_fusable(const bq_cuda_w *a, const bq_cuda_w *b);
/* The kernel before an int8-layout GEMV may make the GEMV's activation pieces as it
 * writes its input, so that the GEMV launches alone (decoding: one dependent launch
 * fewer a linear). bq_cuda_w_takes_pieces: whether w takes them for n tokens (int8
 * layout, 1 to 4 tokens). bq_cuda_norm_pieces (cols up to 8192): y[rows][cols] = RMSNorm (LayerNorm
 * with layernorm; d_nb may be NULL) of x with weights d_nw, the CUDA engine's bits;
 * where d_res is not NULL, a residual connection first: x += res, res checked for
 * NaN/Inf into *d_bad (may be NULL; the smallest 2 index + isnan, as the engine's checks).
 * bq_cuda_act_pieces: u[rows][cols] = the MLP's activation of u (d_g: the gate of
 * ACT_SILU_GATED), in place, the engine's bits. Either leaves its output's pieces in
 * w's buffers, for bq_cuda_gemv_multi_ready(ws, count, that output, rows, d_ys) with
 * ws[0] == w, next: the bits of bq_cuda_gemv_multi (of bq_cuda_gemv for one matrix). */
int bq_cuda_w_takes_pieces(const bq_cuda_w *w, int n);
bq_status bq_cuda_norm_pieces(const bq_cuda_w *w, float *d_x, const float *d_res, unsigned long long *d_bad, const float *d_nw,
                              const float *d_nb, float *d_y, int rows, float eps, int layernorm);
bq_status bq_cuda_act_pieces(const bq_cuda_w *w, float *d_u, const float *d_g, int rows, int act);
bq_status bq_cuda_gemv_multi_ready(const bq_cuda_w *const *ws, int count, const float *d_x, int n, float *const *d_ys);
/* Attention of n (1 to 8) new tokens over a KV cache (decoding; src/cuda/attn.cu):
 * a[t][h d .. h d + d) = sum_j softmax_j(scale q_t,h . K_j,kh) V_j,kh over the keys j of
 * token t (positions pos0 + t back to the start, or to its sliding window of `window`;
 * 0: none), kh = h / group; q, a [n][heads d], K, V [positions][kvd], s: scratch of
 * n heads rows of T floats (T >= pos0 + n). dpos (device, may be NULL): pos0 read there
 * when the kernel runs (a recorded step). kernel: BQ_ATTN_FEW the reference kernel
 * (k_attn_few, d <= 256); BQ_ATTN_VEC its 16-byte-load form (k_attn_vec: where
 * bq_cuda_attend_vec_takes), the same operations, its sums in another order, 4 keys a
 * lane in flight; BQ_ATTN_DEEP the same kernel with 16 in flight (the same bits as
 * BQ_ATTN_VEC). pdl: launched programmatically. */
enum { BQ_ATTN_FEW, BQ_ATTN_VEC, BQ_ATTN_DEEP };
int bq_cuda_attend_vec_takes(int d, const void *q, const void *K, const void *V, const void *a);
bq_status bq_cuda_attend_few(int kernel, int pdl, const float *q, const float *K, const float *V, float *a, float *s, int T, int n,
                             int heads, int group, int d, int kvd, float scale, int pos0, const int *dpos, int window);
/* The matrix as bf16 [rows][cols] (round to nearest: exact where the values are
 * bf16 numbers, as for MX/BFP formats); for prefill through a bf16 GEMM. */
bq_status bq_cuda_w_to_bf16(const bq_cuda_w *w, void *d_out);
/* The same in float32: formats whose values are not bf16 numbers (NVFP4's tensor
 * scale, fp16 block scales) unpack exactly. */
bq_status bq_cuda_w_to_f32(const bq_cuda_w *w, float *d_out);

/* W8A8 with per-block scales on the tensor cores: A [M][K] and B [N][K] hold
 * 8-bit codes (int8 for MXINT8, e4m3 for MXFP8), sa [M][K/32] and sb [N][K/32]
 * E8M0 scale bytes; C [M][N] float32 = sum over blocks of (A_b . B_b) * 2^(ea-127) * 2^(eb-127) * emult.
 * kind 0: int8 codes (emult 2^-12 for MXINT8's 1.6 fixed point); kind 1: e4m3. */
bq_status bq_cuda_gemm_mx8(int kind, const void *d_a, const uint8_t *d_sa, const void *d_b, const uint8_t *d_sb,
                           float *d_c, int M, int N, int K);

/* GPTQ for formats whose scale covers a whole row or the tensor (int8, int6_row,
 * int8_asym_row) or that add a tensor scale to their blocks' (nvfp4): that scale
 * stays where the original weights put it. Each group is quantised with P pin
 * columns after every row's B, holding the row's bounds (lo, hi; zeros after), so
 * the format derives the original scale whatever the group holds; the group's
 * values are clamped to [lo, hi], and the element that set a bound keeps it. The
 * output's extremes are then the original's: its final rounding derives the same
 * scale and gives the codes GPTQ chose. Arrays per row (a per-tensor scale: the
 * same bounds in every row, the bound's column in one row only, -1 elsewhere). */
typedef struct {
    int P;           /* pin columns (0: none, the other arrays unused) */
    float *lo, *hi;  /* the bounds of row r's output */
    int *clo, *chi;  /* the column whose element holds lo (hi) and keeps it; -1: none */
} bq_gptq_pins;
#ifdef __CUDACC__
#define BQ_PIN_FN static inline __host__ __device__
#else
#define BQ_PIN_FN static inline
#endif
/* What GPTQ quantises at row r, column c, where the updated weight is v. */
BQ_PIN_FN float bq_pin_take(double v, int c, float lo, float hi, int clo, int chi)
{
    float x = (float)v;
    return c == clo ? lo : c == chi ? hi : x < lo ? lo : x > hi ? hi : x;
}

/* The pin columns of a group's rows (B + p->P floats each, zeroed first): the row's
 * bounds after its B values, [lo, hi, 0, ...]. */
static inline void bq_pin_rows(const bq_gptq_pins *p, float *g, size_t rows, int B)
{
    for (size_t r = 0; r < rows; r++) g[r * (size_t)(B + p->P) + B] = p->lo[r], g[r * (size_t)(B + p->P) + B + 1] = p->hi[r];
}

/* GPTQ's loop (src/quant/gptq.c, which checks the format and chooses B and lazy)
 * on device `ordinal`: the inverse factor of H = gram (host, cols x cols, float64)
 * by cuSOLVER, each group of B columns clipped on the host by `clip` (NULL: not;
 * weighted by imp, H's diagonal) and quantised by bq_cuda_qdq (with pins->P pin
 * columns, if any), the updates by cuBLAS in float64, lazy columns at a time. w (host, rows x cols) becomes the updated weights, as ptq_gptq's (and *damp
 * the damping used); the steps are the CPU's, the float64 sums in another order. */
typedef bq_status (*bq_group_fn)(const bq_format *f, float *g, int rows, int cols, const double *imp, const bq_qopts *o);
bq_status bq_cuda_gptq(int ordinal, const bq_format *f, float *w, int rows, int cols, const double *gram, int B, int lazy,
                       bq_group_fn clip, const double *imp, const bq_gptq_pins *pins,
                       const bq_qopts *o, double *damp);

#ifdef __cplusplus
}
#endif
#endif
