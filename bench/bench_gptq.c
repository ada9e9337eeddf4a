/* GPTQ's host time at a LLaMA layer's shapes (issue 16's speed target): each of the
 * seven linears of one layer quantised by ptq_gptq on one thread (as `--ptq gptq`
 * runs them: a linear per worker, single-threaded BLAS), from a Gram matrix of random
 * tokens; then the estimate for a whole model on T workers (the linears split evenly:
 * layers x the layer's seconds / T).
 *
 * With --device 1, each linear runs on the first CUDA device instead (src/cuda/gptq.cu;
 * the estimate is then layers x the layer's seconds, one linear after another).
 *
 *   build/bench/bench_gptq [--hidden 4096] [--inter 11008] [--layers 32] [--tokens 2048]
 *                          [--format q4_0] [--workers 16] [--device 0] [--json FILE]
 */
#include "blockq.h"
#include "core.h"
#include "format.h"
#include "quant.h"
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern void openblas_set_num_threads(int);

static uint64_t rng = 88172645463325252ull;
static double urand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0 - 0.5;
}

/* X^T X of `tokens` random rows of n, as calibration accumulates it (float64). */
static double *gram(int n, int tokens)
{
    double *x = malloc((size_t)tokens * n * 8), *G = calloc((size_t)n * n, 8);
    if (!x || !G) { free(x); free(G); return NULL; }
    for (size_t i = 0; i < (size_t)tokens * n; i++) x[i] = urand();
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, n, tokens, 1.0, x, n, 0.0, G, n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++) G[(size_t)i * n + j] = G[(size_t)j * n + i];
    free(x);
    return G;
}

int main(int argc, char **argv)
{
    int hid = 4096, inter = 11008, L = 32, tokens = 2048, workers = 16, device = 0;
    const char *fmt = "q4_0", *json = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--hidden")) hid = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--inter")) inter = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--layers")) L = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--tokens")) tokens = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--workers")) workers = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--format")) fmt = argv[i + 1];
        else if (!strcmp(argv[i], "--device")) device = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--json")) json = argv[i + 1];
        else { fprintf(stderr, "bench_gptq: unknown option %s\n", argv[i]); return 2; }
    }
    openblas_set_num_threads(1);
    bq_format *f;
    if (bq_format_parse(fmt, &f)) { fprintf(stderr, "bench_gptq: %s\n", bq_last_error()); return 2; }
    double *GH = gram(hid, tokens), *GI = gram(inter, tokens);
    if (!GH || !GI) { fprintf(stderr, "bench_gptq: out of memory\n"); return 1; }
    static const char *names[7] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    int outs[7] = {hid, hid, hid, hid, inter, inter, hid}, ins[7] = {hid, hid, hid, hid, hid, hid, inter};
    bq_qopts o = {.threads = 1};
    double layer = 0;
    FILE *js = json ? fopen(json, "a") : NULL;
    for (int k = 0; k < 7; k++) {
        size_t n = (size_t)outs[k] * ins[k];
        float *w = malloc(n * 4);
        if (!w) { fprintf(stderr, "bench_gptq: out of memory\n"); return 1; }
        for (size_t i = 0; i < n; i++) w[i] = (float)(0.02 * urand());
        double t0 = bq_now();
        bq_status st = ptq_gptq(f, w, outs[k], ins[k], ins[k] == hid ? GH : GI, 0, &o, device, NULL);
        double s = bq_now() - t0;
        free(w);
        if (st) { fprintf(stderr, "bench_gptq: %s\n", bq_last_error()); return 1; }
        layer += s;
        printf("%-10s %5d x %5d  %7.2f s\n", names[k], outs[k], ins[k], s);
        if (js) fprintf(js, "{\"bench\": \"gptq\", \"format\": \"%s\", \"device\": %d, \"linear\": \"%s\", \"out\": %d, \"in\": %d, \"seconds\": %.3f}\n",
                        fmt, device, names[k], outs[k], ins[k], s);
    }
    if (device) workers = 1;
    double est = layer * L / workers;
    printf("one layer on %s: %.1f s; %d layers on %d workers: %.0f s (%.1f min)\n", device ? "the GPU" : "one thread", layer, L,
           workers, est, est / 60);
    if (js) {
        fprintf(js, "{\"bench\": \"gptq\", \"format\": \"%s\", \"device\": %d, \"layer_seconds\": %.3f, \"layers\": %d, \"workers\": %d, \"estimate_seconds\": %.1f}\n",
                fmt, device, layer, L, workers, est);
        fclose(js);
    }
    free(GH);
    free(GI);
    bq_format_free(f);
    return 0;
}
