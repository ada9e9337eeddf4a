/* Perplexity throughput of the CUDA engine on a randomly initialised 7B-shaped
 * LLaMA stack (hidden 4096, MLP 11008, 32 heads, vocab 32000), generated here:
 * no checkpoint of that size exists offline. Float32, bf16 (weights and
 * activations bf16: cuBLAS's bf16 GEMM) and fake-quantised weights + activations
 * (+ KV cache), tokens/s over windows of --ctx tokens.
 *
 *   build/gpu/gpu_ppl_bench [--layers 32] [--ctx 2048] [--windows 4] [--json FILE]
 */
#include "blockq.h"
#include "bq_cuda.h"
#include "core.h"
#include "model.h"
#include "engine.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct { float *p; float scale; uint64_t seed; } fill_job;
static void fill_range(void *arg, size_t b, size_t e)
{
    fill_job *j = arg;
    for (size_t i = b; i < e; i++) {
        uint64_t z = (i + 1) * 0x9e3779b97f4a7c15ull ^ j->seed;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        j->p[i] = ((float)(z >> 40) * 0x1p-24f - 0.5f) * j->scale;
    }
}

static float *rnd(size_t n, float scale, uint64_t seed)
{
    float *p = malloc(n * sizeof *p);
    if (!p) { fprintf(stderr, "out of memory (%zu floats)\n", n); exit(1); }
    fill_job j = {p, scale, seed};
    bq_parallel_for(n, 0, fill_range, &j);
    return p;
}

static float *ones(size_t n)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = 1.0f;
    return p;
}

int main(int argc, char **argv)
{
    int layers = 32, ctx = 2048, windows = 4;
    FILE *js = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--layers") && i + 1 < argc) layers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ctx") && i + 1 < argc) ctx = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--windows") && i + 1 < argc) windows = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) js = fopen(argv[++i], "w");
    }
    char why[256];
    if (!bq_cuda_devices(why, sizeof why)) { printf("SKIP: %s\n", why); return 0; }
    bq_model *m = calloc(1, sizeof *m);
    bq_config *c = &m->c;
    *c = (bq_config){.arch = ARCH_LLAMA, .hidden = 4096, .inter = 11008, .layers = layers, .heads = 32, .kv_heads = 32,
                     .head_dim = 128, .vocab = 32000, .max_pos = 4096, .embed_dim = 4096, .norm_eps = 1e-5f,
                     .rope_theta = 10000.0f, .norm = NORM_RMS, .act = ACT_SILU_GATED, .rope = 1, .pre_norm = 1,
                     .final_norm = 1};
    snprintf(c->model_type, sizeof c->model_type, "llama");
    size_t H = 4096, I = 11008, V = 32000;
    double t0 = now();
    m->tok_emb = rnd(V * H, 2.0f, 1);
    m->final_ln.w = ones(H);
    m->head = (linear){.w = rnd(V * H, 0.05f, 2), .in = (int)H, .out = (int)V};
    m->L = calloc((size_t)layers, sizeof *m->L);
    for (int l = 0; l < layers; l++) {
        layer_w *L = &m->L[l];
        L->ln1.w = ones(H);
        L->ln2.w = ones(H);
        linear *ls[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int j = 0; j < 7; j++) {
            int out = j < 4 ? (int)H : (j < 6 ? (int)I : (int)H), in = j < 4 ? (int)H : (j < 6 ? (int)H : (int)I);
            *ls[j] = (linear){.w = rnd((size_t)out * in, 0.06f, 100 + 7 * l + j), .in = in, .out = out};
            snprintf(ls[j]->name, sizeof ls[j]->name, "layers.%d.%d", l, j);
        }
    }
    snprintf(m->head.name, sizeof m->head.name, "lm_head");
    printf("# CUDA engine on %s: random 7B-shaped LLaMA, %d layers, ctx %d, %d windows\n\n", bq_cuda_device_name(), layers,
           ctx, windows);
    printf("weights generated in %.1f s\n\n| setting | tokens/s | vs float32 | vs bf16 | GPU memory GB |\n|---|---|---|---|---|\n", now() - t0);
    int32_t *ids = malloc((size_t)ctx * 4);
    double *lp = malloc((size_t)ctx * 8);
    for (int i = 0; i < ctx; i++) ids[i] = (int32_t)((i * 2654435761u) % V);
    const char *settings[][4] = {{"float32", NULL, NULL, NULL}, {"bf16 (W bf16 A bf16)", "bf16", "bf16", NULL},
                                 {"W mxint8 A mxint8", "mxint8", "mxint8", NULL},
                                 {"W bfp6 A bfp6 KV bfp8", "bfp6_b16", "bfp6_b16", "bfp8_b16"},
                                 {"W mxfp4 A mxfp4", "mxfp4", "mxfp4", NULL},
                                 {"W mxfp4 A mxint8, packed (4.25-bit weights on the GPU)", "mxfp4", "mxint8", NULL}};
    double base = 0, b16 = 0;
    for (int s = 0; s < 6; s++) {
        if (settings[s][1]) {  /* weights are quantised in place on the CPU: later settings start from earlier ones */
            bq_qconfig *q;
            bq_qconfig_new(&q);
            bq_qconfig_set(q, "wq", settings[s][1]);
            bq_qconfig_set(q, "aq", settings[s][2]);
            if (settings[s][3]) bq_qconfig_set(q, "kv", settings[s][3]);
            bq_status st = s == 5 ? bq_model_pack(m, q, 0) : bq_model_quantize(m, q, 0);  /* the last keeps codes */
            if (st) { printf("quantize: %s\n", bq_last_error()); return 1; }
            bq_qconfig_free(q);
        }
        bq_ctx *g;
        bq_ctx_opts co = {.size = sizeof co, .device = 1};
        if (bq_ctx_new_ex(m, ctx, &co, &g)) { printf("%s\n", bq_last_error()); return 1; }
        if (bq_forward_logprobs(g, ids, ctx, lp)) { printf("%s\n", bq_last_error()); return 1; }  /* warm-up */
        double t = now();
        for (int w = 0; w < windows; w++) {
            bq_ctx_reset(g);
            if (bq_forward_logprobs(g, ids, ctx, lp)) { printf("%s\n", bq_last_error()); return 1; }
        }
        t = now() - t;
        double tps = (double)ctx * windows / t;
        if (s == 0) base = tps;
        if (s == 1) b16 = tps;
        double nll = 0;
        for (int i = 0; i < ctx - 1; i++) nll -= lp[i];
        char vs16[16] = "-";  /* the bf16 row comes second */
        if (b16 > 0) snprintf(vs16, sizeof vs16, "%.2fx", tps / b16);
        printf("| %s | %.0f | %.2fx | %s | %.1f |\n", settings[s][0], tps, tps / base, vs16, bq_ctx_device_bytes(g) / 1e9);
        if (js) fprintf(js, "{\"setting\":\"%s\",\"layers\":%d,\"ctx\":%d,\"tokens_per_second\":%.1f,\"mean_nll\":%.4f}\n",
                        settings[s][0], layers, ctx, tps, nll / (ctx - 1));
        bq_ctx_free(g);
    }
    if (js) fclose(js);
    return 0;
}
