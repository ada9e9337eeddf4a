/* The CUDA backend against the GPU it runs on, measured in one run:
 *   device copy bandwidth (cudaMemcpy device to device, bytes read + written);
 *   fake quantisation GB/s (bytes read + written) per format;
 *   packed GEMV GB/s of weights read, one token: a single call (which pays the
 *   launch latency) and calls back to back as a model's layers run (cycling
 *   through copies of the matrix that together exceed twice the L2 cache);
 *   W8A8 block-scaled GEMM TFLOP/s next to cuBLASLt FP8 (per-tensor scales) and
 *   BF16 GEMM of the same shapes;
 *   one decoding step of the 7B shape as a chain of copies, one per weight launch
 *   (--chain): the most a decode of one kernel per matrix could reach.
 *
 *   build/gpu/gpu_bench [--json FILE] [--quick] [--gemv | --qdq | --gemm | --chain]   (make gpu; bench/gpu.sh)
 */
#include "blockq.h"
#include "bq_cuda.h"
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GEMV_CALLS 20
static FILE *g_json;
static void emit(const char *kind, const char *name, double size, double rate, double ref)
{
    if (g_json)
        fprintf(g_json, "{\"kind\":\"%s\",\"name\":\"%s\",\"size\":%.0f,\"rate\":%.4g,\"reference\":%.4g,\"ratio\":%.4f}\n", kind,
                name, size, rate, ref, rate / ref);
}

/* Best time in ms of `reps` runs of what run() enqueues. */
typedef void (*runner)(void *);
static float best_ms(runner run, void *arg, int reps)
{
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    run(arg);  /* warm-up */
    cudaDeviceSynchronize();
    float best = 1e30f;
    for (int r = 0; r < reps; r++) {
        cudaEventRecord(a, 0);
        run(arg);
        cudaEventRecord(b, 0);
        cudaEventSynchronize(b);
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        best = ms < best ? ms : best;
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return best;
}

typedef struct { void *dst; const void *src; size_t n; } copy_arg;
static void run_copy(void *p) { copy_arg *c = p; cudaMemcpy(c->dst, c->src, c->n, cudaMemcpyDeviceToDevice); }

/* The copy a GEMV of `bytes` of weights is judged against at its own size: calls
 * back to back, each copying bytes / 2 (so bytes of traffic, read + written),
 * at offsets that walk through the whole buffers so that no call finds L2 warm. */
typedef struct { char *dst; const char *src; size_t bytes, span; int calls; } copies_arg;
static void run_copies(void *p)
{
    copies_arg *c = p;
    size_t half = c->bytes / 2 < c->span ? c->bytes / 2 : c->span, slots = c->span / half;
    for (int i = 0; i < c->calls; i++) {
        size_t off = (size_t)(i % slots) * half;
        cudaMemcpyAsync(c->dst + off, c->src + off, half, cudaMemcpyDeviceToDevice, 0);
    }
}

/* One decoding step of LLaMA-2-7B's shape (bench/decode_table.py's bytes) as copies, each
 * moving the traffic of one of the engine's weight launches (q k v in one, o, gate and up
 * in one, down; the KV cache a layer reads; the bf16 head), captured in a CUDA graph as a
 * decode step is. Its rate against the bound (all bytes at the big copy's rate) is the
 * ceiling of any decode that reads each launch's weights with one kernel: the ramp and
 * tail of each copy are what a GEMV of that size pays too, even at copy speed. */
enum { CH_LAYERS = 32, CH_H = 4096, CH_I = 11008, CH_V = 32000, CH_POS = 69 };  /* pos: the mean over 128 tokens after 5 */
enum { CH_PARTS = 5 };  /* a layer's copies; the head's bytes follow them in out[CH_PARTS] */
static double chain_bytes(double bits, double out[CH_PARTS + 1])
{
    double H = CH_H, I = CH_I;
    out[0] = 3 * H * H * bits / 8; out[1] = H * H * bits / 8; out[2] = 2 * H * I * bits / 8; out[3] = H * I * bits / 8;
    out[4] = 2.0 * CH_POS * H * 4;  /* K and V, float32 */
    out[5] = (double)CH_V * H * 2;  /* the bf16 head */
    return CH_LAYERS * (out[0] + out[1] + out[2] + out[3] + out[4]) + out[5];
}
typedef struct { cudaGraphExec_t g; cudaStream_t s; } graph_arg;
static void run_graph(void *p) { graph_arg *a = p; cudaGraphLaunch(a->g, a->s); }
static void chain_bench(char *dst, const char *src, size_t span, double copy)
{
    static const struct { const char *name; double bits; } cf[] = {
        {"bf16", 16}, {"mxfp4", 4.25}, {"int4_g128", 4.25}, {"nvfp4", 4.5}, {"mxfp6_e2m3", 6.25}, {"mxint8", 8.25}};
    printf("\n| decode step as copies (7B shape) | MB a token | bound tokens/s | copy chain tokens/s | of bound |\n|---|---|---|---|---|\n");
    cudaStream_t s;
    cudaStreamCreate(&s);
    for (size_t f = 0; f < sizeof cf / sizeof *cf; f++) {
        double part[CH_PARTS + 1], total = chain_bytes(cf[f].bits, part);
        size_t off = 0;
        cudaGraph_t g;
        graph_arg a = {NULL, s};
        cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
        for (int l = 0; l <= CH_LAYERS; l++)  /* l == CH_LAYERS: the head */
            for (int k = l < CH_LAYERS ? 0 : CH_PARTS; k < (l < CH_LAYERS ? CH_PARTS : CH_PARTS + 1); k++) {
                size_t half = (size_t)(part[k] / 2);  /* read + written = the bytes */
                if (off + half > span) off = 0;
                cudaMemcpyAsync(dst + off, src + off, half, cudaMemcpyDeviceToDevice, s);
                off += half;
            }
        cudaStreamEndCapture(s, &g);
        if (cudaGraphInstantiate(&a.g, g, 0) != cudaSuccess) { printf("chain %s: graph not instantiated\n", cf[f].name); cudaGraphDestroy(g); continue; }
        double chain = 1e3 / best_ms(run_graph, &a, 5), bound = copy * 1e9 / total;
        printf("| %s | %.0f | %.0f | %.0f | %.0f%% |\n", cf[f].name, total / 1e6, bound, chain, 100 * chain / bound);
        emit("decode_copy_chain", cf[f].name, total, chain, bound);
        cudaGraphExecDestroy(a.g);
        cudaGraphDestroy(g);
    }
    cudaStreamDestroy(s);
}

typedef struct { const bq_format *f; const float *x; float *y; size_t rows, cols; } qdq_arg;
static void run_qdq(void *p) { qdq_arg *q = p; bq_cuda_qdq(q->f, q->x, q->y, q->rows, q->cols, NULL); }

typedef struct { bq_cuda_w **w; int nw, calls; const float *x; float *y; } gemv_arg;
static void run_gemv(void *p) { gemv_arg *g = p; bq_cuda_gemv(g->w[0], g->x, 1, g->y); }
static void run_gemvs(void *p)
{
    gemv_arg *g = p;
    for (int i = 0; i < g->calls; i++) bq_cuda_gemv(g->w[i % g->nw], g->x, 1, g->y);
}

/* Matrices sharing x (q, k, v; gate, up): sets of them, each set called separately
 * (one GEMV each, the engine before) or in one launch (bq_cuda_gemv_multi). */
typedef struct { bq_cuda_w *(*w)[3]; int nsets, count, calls, fused; const float *x; float *const *y; } multi_arg;
static void run_multi(void *p)
{
    multi_arg *g = p;
    for (int i = 0; i < g->calls; i++) {
        bq_cuda_w *const *set = g->w[i % g->nsets];
        if (g->fused) bq_cuda_gemv_multi((const bq_cuda_w *const *)set, g->count, g->x, 1, g->y);
        else for (int k = 0; k < g->count; k++) bq_cuda_gemv(set[k], g->x, 1, g->y[k]);
    }
}

typedef struct { int kind; void *a, *b, *sa, *sb; float *c; int n; } gemm_arg;
static void run_gemm(void *p)
{
    gemm_arg *g = p;
    bq_cuda_gemm_mx8(g->kind, g->a, g->sa, g->b, g->sb, g->c, g->n, g->n, g->n);
}

typedef struct {
    cublasLtHandle_t h;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
    void *a, *b, *c, *ws;
    size_t wsz;
} lt_arg;
static void run_lt(void *p)
{
    lt_arg *l = p;
    float one = 1.0f, zero = 0.0f;
    cublasLtMatmul(l->h, l->desc, &one, l->a, l->la, l->b, l->lb, &zero, l->c, l->lc, l->c, l->lc, &l->algo, l->ws, l->wsz, 0);
}

/* cuBLASLt C = A^T B with A, B of `type` (K-major), C bf16; 0 if no algorithm. */
static int lt_setup(lt_arg *l, cublasLtHandle_t h, cudaDataType_t type, int n, void *a, void *b, void *c, void *ws, size_t wsz)
{
    memset(l, 0, sizeof *l);
    l->h = h; l->a = a; l->b = b; l->c = c; l->ws = ws; l->wsz = wsz;
    cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
    cublasLtMatmulDescCreate(&l->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasLtMatmulDescSetAttribute(l->desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t);
    cublasLtMatmulDescSetAttribute(l->desc, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof nn);
    cublasLtMatrixLayoutCreate(&l->la, type, n, n, n);
    cublasLtMatrixLayoutCreate(&l->lb, type, n, n, n);
    cublasLtMatrixLayoutCreate(&l->lc, CUDA_R_16BF, n, n, n);
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof wsz);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasLtMatmulAlgoGetHeuristic(h, l->desc, l->la, l->lb, l->lc, l->lc, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (found) l->algo = res.algo;
    return found;
}

static void lt_free(lt_arg *l)
{
    cublasLtMatrixLayoutDestroy(l->la);
    cublasLtMatrixLayoutDestroy(l->lb);
    cublasLtMatrixLayoutDestroy(l->lc);
    cublasLtMatmulDescDestroy(l->desc);
}

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t)rng; }

int main(int argc, char **argv)
{
    int quick = 0, gemm_only = 0, gemv_only = 0, qdq_only = 0, chain_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc) g_json = fopen(argv[++i], "w");
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--gemm")) gemm_only = 1;  /* the GEMM table alone (profiling) */
        else if (!strcmp(argv[i], "--gemv")) gemv_only = 1;  /* copy and the GEMV table alone */
        else if (!strcmp(argv[i], "--qdq")) qdq_only = 1;    /* copy and the fake-quantisation table alone (BQ_CUDA_QDQ A/B) */
        else if (!strcmp(argv[i], "--chain")) chain_only = 1;  /* copy and the decode step as copies alone */
    }
    char why[256];
    if (!bq_cuda_devices(why, sizeof why)) { printf("SKIP: %s\n", why); return 0; }
    printf("# blockq CUDA benchmark on %s\n\n", bq_cuda_device_name());

    if (gemm_only) goto gemm;
    /* copy bandwidth and fake quantisation: 1 GiB of float32 in, 1 GiB out */
    size_t rows = quick ? 4096 : 16384, cols = 16384, n = rows * cols;
    float *dx, *dy;
    if (bq_cuda_malloc((void **)&dx, n * 4) || bq_cuda_malloc((void **)&dy, n * 4)) { printf("%s\n", bq_last_error()); return 1; }
    float *hx = malloc(n * 4);
    for (size_t i = 0; i < n; i++) hx[i] = ((float)(rnd() >> 8) * 0x1p-24f - 0.5f) * ((rnd() & 63) ? 1.0f : 30.0f);
    bq_cuda_upload(dx, hx, n * 4);
    copy_arg ca = {dy, dx, n * 4};
    double copy = 2.0 * n * 4 / best_ms(run_copy, &ca, 10) / 1e6;
    printf("device copy: %.0f GB/s (bytes read + written)\n\n", copy);
    emit("copy", "memcpy", (double)n * 4, copy, copy);
    if (chain_only || !(gemv_only || qdq_only)) chain_bench((char *)dy, (const char *)dx, n * 4, copy);
    if (chain_only) {
        bq_cuda_free(dx);
        bq_cuda_free(dy);
        free(hx);
        goto end;
    }
    printf("| fake quantisation | GB/s (read + write) | of copy |\n|---|---|---|\n");
    const char *qf[] = {"mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4", "bfp8_b16", "bfp4_b16",
                        "bme2m1_b16", "bl8_b16", "int8_b32_sfp16", "fp8_e4m3", "int8_row", "int4_g128",
                        /* since the twenty-second session: the other paths it changed */
                        "e2m1_b16_se4m3", "int4_b32_sfp16", "int4_g32", "int4_asym_g128", "int8_asym_row", "log8"};
    for (size_t i = 0; i < (gemv_only ? 0 : sizeof qf / sizeof *qf); i++) {
        bq_format *f;
        bq_format_parse(qf[i], &f);
        qdq_arg q = {f, dx, dy, rows, cols};
        float ms = best_ms(run_qdq, &q, 5);
        double gbs = 2.0 * n * 4 / ms / 1e6;
        if (bq_cuda_sync()) printf("%s: %s\n", qf[i], bq_last_error());
        printf("| %s | %.0f | %.0f%% |\n", qf[i], gbs, 100 * gbs / copy);
        emit("qdq", qf[i], (double)n * 4, gbs, copy);
        bq_format_free(f);
    }
    if (qdq_only) {
        bq_cuda_free(dx);
        bq_cuda_free(dy);
        free(hx);
        goto end;
    }
    /* GEMV, one token */
    int l2 = 0;
    cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0);
    /* "of copy" against the big copy above; "of same-size copy" against copies of the same
     * traffic as one GEMV, back to back (run_copies): the ramp and tail that any kernel of
     * that size pays, so the second share says what is left to gain in the kernel itself */
    printf("\n| GEMV (1 token) | shape | weight MB | GB/s, one call | GB/s, %d calls back to back | of copy | same-size copy GB/s | of it |\n"
           "|---|---|---|---|---|---|---|---|\n", GEMV_CALLS);
    const char *gf[] = {"mxfp4", "nvfp4", "int4_b32_sfp16", "int4_g128", "mxfp6_e2m3", "mxint8", "int8_b32_sfp16"};
    const int gs[][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {16384, 16384}};  /* a 7B layer's shapes, and a large one */
    /* each on the fp16 path (4-bit codes on its tensor cores, 8-bit by rows), then on the
     * int8 tensor cores where they take it: rows "(int8)", records gemv_int8 */
    for (int s = 0; s < (quick ? 1 : 4); s++) {
        int R = gs[s][0], C = gs[s][1];
        for (size_t i = 0; i < 2 * (sizeof gf / sizeof *gf); i++) {
            bq_gemv_path path = i % 2 ? BQ_GEMV_INT8 : BQ_GEMV_FP16;
            const char *sfx = i % 2 ? " (int8)" : "";
            bq_format *f;
            bq_format_parse(gf[i / 2], &f);
            pmat *m;
            bq_cuda_w *w[GEMV_CALLS] = {0};
            int nw = 0;
            if (pmat_pack(f, hx, R, C, NULL, &m)) { printf("%s: %s\n", gf[i / 2], bq_last_error()); bq_format_free(f); continue; }
            /* copies until they exceed twice the L2 cache, so calls back to back read memory */
            size_t total = 0;
            bq_status us = BQ_OK;
            while (nw < GEMV_CALLS && (nw == 0 || total <= 2 * (size_t)l2) && !(us = bq_cuda_w_upload_path(m, path, &w[nw])))
                total += bq_cuda_w_bytes(w[nw++]);
            if (!nw) {
                if (!(path == BQ_GEMV_INT8 && us == BQ_ERR_UNSUPPORTED)) printf("%s%s: %s\n", gf[i / 2], sfx, bq_last_error());
                pmat_free(m); bq_format_free(f); continue;
            }
            double mb = (double)bq_cuda_w_bytes(w[0]);
            gemv_arg g = {w, nw, GEMV_CALLS, dx, dy};
            double one = mb / best_ms(run_gemv, &g, 20) / 1e6, gbs = mb * GEMV_CALLS / best_ms(run_gemvs, &g, 5) / 1e6;
            copies_arg ca2 = {(char *)dy, (const char *)dx, (size_t)mb, n * 4, GEMV_CALLS};
            double same = mb * GEMV_CALLS / best_ms(run_copies, &ca2, 5) / 1e6;
            if (bq_cuda_sync()) printf("%s%s: %s\n", gf[i / 2], sfx, bq_last_error());
            printf("| %s%s | %dx%d | %.1f | %.0f | %.0f | %.0f%% | %.0f | %.0f%% |\n", gf[i / 2], sfx, R, C, mb / 1e6, one, gbs,
                   100 * gbs / copy, same, 100 * gbs / same);
            emit(i % 2 ? "gemv_one_call_int8" : "gemv_one_call", gf[i / 2], (double)R * C, one, copy);
            emit(i % 2 ? "gemv_int8" : "gemv", gf[i / 2], (double)R * C, gbs, copy);
            emit(i % 2 ? "gemv_same_copy_int8" : "gemv_same_copy", gf[i / 2], (double)R * C, gbs, same);
            for (int k = 0; k < nw; k++) bq_cuda_w_free(w[k]);
            pmat_free(m);
            bq_format_free(f);
        }
    }
    /* a 7B layer's q, k, v (3 x 4096x4096) and gate, up (2 x 11008x4096): separately or in one launch */
    printf("\n| GEMV, matrices sharing x (1 token) | matrices | weight MB | separate calls GB/s | one launch GB/s | one launch / separate |\n"
           "|---|---|---|---|---|---|\n");
    const char *mf[] = {"mxfp4", "nvfp4", "int4_b32_sfp16", "mxfp4", "nvfp4", "int4_b32_sfp16", "mxint8"};  /* the last 4: int8 */
    const int ms[][3] = {{3, 4096, 4096}, {2, 11008, 4096}};
    float *dys[3] = {NULL, NULL, NULL};
    for (int k = 0; k < 3; k++) bq_cuda_malloc((void **)&dys[k], 11008 * 4);
    for (int s = 0; s < (quick ? 1 : 2); s++) {
        int cnt = ms[s][0], R = ms[s][1], C = ms[s][2];
        for (size_t i = 0; i < sizeof mf / sizeof *mf; i++) {
            bq_format *f;
            bq_format_parse(mf[i], &f);
            bq_gemv_path path = i >= 3 ? BQ_GEMV_INT8 : BQ_GEMV_FP16;
            const char *sfx = i >= 3 ? " (int8)" : "";
            pmat *m;
            if (pmat_pack(f, hx, R, C, NULL, &m)) { printf("%s: %s\n", mf[i], bq_last_error()); bq_format_free(f); continue; }
            bq_cuda_w *sets[8][3] = {{0}};
            int nsets = 0, ok = 1;
            size_t total = 0;
            while (nsets < 8 && ok && (nsets == 0 || total <= 2 * (size_t)l2)) {  /* past the L2 cache */
                for (int k = 0; k < cnt && ok; k++) ok = !bq_cuda_w_upload_path(m, path, &sets[nsets][k]);
                if (ok) total += (size_t)cnt * bq_cuda_w_bytes(sets[nsets++][0]);
            }
            if (nsets) {
                double mb = (double)cnt * bq_cuda_w_bytes(sets[0][0]);
                multi_arg g = {sets, nsets, cnt, GEMV_CALLS, 0, dx, dys};
                double sep = mb * GEMV_CALLS / best_ms(run_multi, &g, 5) / 1e6;
                g.fused = 1;
                double one = mb * GEMV_CALLS / best_ms(run_multi, &g, 5) / 1e6;
                printf("| %s%s | %d x %dx%d | %.1f | %.0f (%.0f%% of copy) | %.0f (%.0f%% of copy) | %.2fx |\n", mf[i], sfx, cnt, R, C,
                       mb / 1e6, sep, 100 * sep / copy, one, 100 * one / copy, one / sep);
                emit(i >= 3 ? "gemv_separate_int8" : "gemv_separate", mf[i], (double)cnt * R * C, sep, copy);
                emit(i >= 3 ? "gemv_one_launch_int8" : "gemv_one_launch", mf[i], (double)cnt * R * C, one, copy);
            } else printf("%s%s: %s\n", mf[i], sfx, bq_last_error());
            for (int k = 0; k < nsets; k++)
                for (int j = 0; j < cnt; j++) bq_cuda_w_free(sets[k][j]);
            pmat_free(m);
            bq_format_free(f);
        }
    }
    for (int k = 0; k < 3; k++) bq_cuda_free(dys[k]);
    bq_cuda_free(dx);
    bq_cuda_free(dy);
    free(hx);
    if (gemv_only) goto end;
    /* W8A8 GEMM vs cuBLASLt */
gemm:;
    cublasLtHandle_t h;
    cublasLtCreate(&h);
    size_t wsz = 64 << 20;
    void *ws;
    bq_cuda_malloc(&ws, wsz);
    printf("\n| GEMM n x n x n | blockq MXINT8 TFLOP/s | blockq MXFP8 TFLOP/s | MXFP8 on mma.sync | cuBLASLt FP8 | cuBLASLt BF16 | MXFP8 / cuBLAS FP8 | MXINT8 / cuBLAS FP8 |\n|---|---|---|---|---|---|---|---|\n");
    const int gn[] = {4096, 8192, 16384};
    for (int s = 0; s < (quick ? 1 : 3); s++) {
        int N = gn[s];
        size_t nn = (size_t)N * N;
        uint8_t *ha = malloc(nn), *hs = malloc(nn / 32);
        for (size_t i = 0; i < nn; i++) { uint8_t v = (uint8_t)rnd(); ha[i] = (v & 0x7f) == 0x7f ? 0x3c : v; }
        for (size_t i = 0; i < nn / 32; i++) hs[i] = (uint8_t)(120 + rnd() % 10);
        void *a, *b, *sa, *sb, *c, *a16, *b16;
        if (bq_cuda_malloc(&a, nn) || bq_cuda_malloc(&b, nn) || bq_cuda_malloc(&sa, nn / 32) || bq_cuda_malloc(&sb, nn / 32) ||
            bq_cuda_malloc(&c, nn * 4) || bq_cuda_malloc(&a16, nn * 2) || bq_cuda_malloc(&b16, nn * 2)) {
            printf("%s\n", bq_last_error());
            break;
        }
        bq_cuda_upload(a, ha, nn); bq_cuda_upload(b, ha, nn); bq_cuda_upload(sa, hs, nn / 32); bq_cuda_upload(sb, hs, nn / 32);
        cudaMemset(a16, 0x3c, nn * 2);
        cudaMemset(b16, 0x3c, nn * 2);
        double flop = 2.0 * N * nn;
        double t[5];
        for (int kind = 0; kind < 3; kind++) {  /* 2: MXFP8 on the mma.sync kernel, for comparison */
            gemm_arg g = {kind % 2, a, b, sa, sb, c, N};
            if (kind == 2) setenv("BQ_GEMM_MMA", "1", 1);
            t[kind < 2 ? kind : 4] = flop / best_ms(run_gemm, &g, 5) / 1e9;
            unsetenv("BQ_GEMM_MMA");
            if (bq_cuda_sync()) printf("gemm: %s\n", bq_last_error());
        }
        lt_arg l;
        t[2] = lt_setup(&l, h, CUDA_R_8F_E4M3, N, a, b, c, ws, wsz) ? flop / best_ms(run_lt, &l, 5) / 1e9 : NAN;
        lt_free(&l);
        t[3] = lt_setup(&l, h, CUDA_R_16BF, N, a16, b16, c, ws, wsz) ? flop / best_ms(run_lt, &l, 5) / 1e9 : NAN;
        lt_free(&l);
        printf("| %d | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f%% | %.0f%% |\n", N, t[0], t[1], t[4], t[2], t[3], 100 * t[1] / t[2],
               100 * t[0] / t[2]);
        emit("gemm_mxfp8_mma_sync", "mxfp8_e4m3", N, t[4], t[2]);
        emit("gemm_mxint8", "mxint8", N, t[0], t[2]);
        emit("gemm_mxfp8", "mxfp8_e4m3", N, t[1], t[2]);
        emit("cublaslt_fp8", "e4m3", N, t[2], t[2]);
        emit("cublaslt_bf16", "bf16", N, t[3], t[2]);
        bq_cuda_free(a); bq_cuda_free(b); bq_cuda_free(sa); bq_cuda_free(sb); bq_cuda_free(c); bq_cuda_free(a16); bq_cuda_free(b16);
        free(ha); free(hs);
    }
    bq_cuda_free(ws);
    cublasLtDestroy(h);
end:
    if (g_json) fclose(g_json);
    return 0;
}
