/* Fine-tuning throughput against the machine, measured in one run:
 *   OpenBLAS SGEMM (its own threads) on the model's training shapes (a window of
 *   ctx+1 tokens through each linear) and on a 1024^3 product: GFLOP/s;
 *   training steps of the bundled model (float, full fine-tuning; MXFP4 W4A4 full;
 *   MXFP4 W4A4 LoRA-16): tokens/s and the rate of the matmul FLOPs a step performs
 *   (6 x linear parameters a token, attention's score and value products forward and
 *   backward), as a share of SGEMM's rate on the same shapes.
 *
 *   build/bench/bench_train [--model M] [--ctx S] [--accum A] [--steps N] [--threads T] [--json FILE]
 */
#include "blockq.h"
#include "core.h"
#include "model.h"
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern void openblas_set_num_threads(int);

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Best of reps: GFLOP/s of C[m,n] = A[m,k] B[k,n]. */
static double sgemm_rate(int m, int n, int k, int reps)
{
    float *a = malloc((size_t)m * k * 4), *b = malloc((size_t)k * n * 4), *c = malloc((size_t)m * n * 4);
    for (size_t i = 0; i < (size_t)m * k; i++) a[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)k * n; i++) b[i] = (float)(i % 5) * 0.1f;
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n);
        t = now() - t;
        best = t < best ? t : best;
    }
    free(a); free(b); free(c);
    return 2.0 * m * n * k / best * 1e-9;
}

int main(int argc, char **argv)
{
    const char *model = "models/llama-19m-en", *json = NULL;
    int ctx = 256, accum = 4, steps = 4, threads = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model")) model = argv[i + 1];
        else if (!strcmp(argv[i], "--ctx")) ctx = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--accum")) accum = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--json")) json = argv[i + 1];
        else { fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
    }
    if (threads <= 0) threads = bq_ncores();
    bq_model *m;
    if (bq_model_load(model, &m)) { fprintf(stderr, "%s\n", bq_last_error()); return 1; }
    const bq_config *c = &m->c;
    int T = ctx + 1, H = c->hidden, F = c->inter, qd = c->heads * c->head_dim, kd = c->kv_heads * c->head_dim;

    /* the reference: OpenBLAS with its own threads, on the shapes a training window runs */
    openblas_set_num_threads(threads);
    int shapes[][2] = {{qd, H}, {kd, H}, {H, qd}, {F, H}, {H, F}, {c->vocab, H}};
    double lin_flop = 0, lin_time = 0;
    for (int s = 0; s < 6; s++) {
        int per = s == 1 ? 2 : s == 3 ? 2 : 1;  /* k and v; gate and up */
        double f = 2.0 * T * shapes[s][0] * shapes[s][1] * per * (s < 5 ? c->layers : 1);
        lin_flop += f;
        lin_time += f / (sgemm_rate(T, shapes[s][0], shapes[s][1], 5) * 1e9);
    }
    double ref_rate = lin_flop / lin_time * 1e-9, peak = sgemm_rate(1024, 1024, 1024, 3);

    /* training: FLOPs of the products a step performs, per token */
    size_t lin_params = (size_t)c->layers * ((size_t)2 * qd * H + (size_t)2 * kd * H + (size_t)3 * F * H) + (size_t)c->vocab * H;
    double att = 12.0 * c->layers * (double)T * qd;  /* S = QK^T and PV forward, twice that backward, full squares */
    double flop_tok = 6.0 * lin_params + att;

    FILE *jf = json ? fopen(json, "w") : NULL;
    printf("model %s, %d threads, windows of %d tokens x %d a step\n\n", model, threads, T, accum);
    printf("OpenBLAS SGEMM: %.1f GFLOP/s on the model's linear shapes (M = %d), %.1f GFLOP/s at 1024^3\n\n", ref_rate, T, peak);
    printf("| run | tokens/s | matmul GFLOP/s | share of SGEMM (shapes) | share of SGEMM (1024^3) |\n|---|---|---|---|---|\n");
    const char *runs[][3] = {{"float32 full", "", ""}, {"mxfp4 W4A4 full", "mxfp4", ""}, {"mxfp4 W4A4 LoRA-16", "mxfp4", "16"}};
    int32_t *ids = malloc((size_t)T * accum * sizeof *ids);
    for (int i = 0; i < T * accum; i++) ids[i] = (int32_t)((i * 7919u + 13u) % (unsigned)c->vocab);
    for (int r = 0; r < 3; r++) {
        bq_model *mm;
        if (bq_model_load(model, &mm)) { fprintf(stderr, "%s\n", bq_last_error()); return 1; }
        bq_qconfig *q = NULL;
        if (runs[r][1][0]) {
            bq_qconfig_new(&q);
            bq_qconfig_set(q, "wq", runs[r][1]);
            bq_qconfig_set(q, "aq", runs[r][1]);
        }
        bq_train_opts o;
        bq_train_opts_default(&o);
        o.ctx = ctx; o.accum = accum; o.steps = steps + 1; o.warmup = 1; o.threads = threads;
        o.lora = runs[r][2][0] ? atoi(runs[r][2]) : 0;
        bq_trainer *t;
        if (bq_trainer_new(mm, q, &o, &t)) { fprintf(stderr, "%s\n", bq_last_error()); return 1; }
        double loss, best = 1e30;
        for (int s = 0; s <= steps; s++) {  /* the first step warms the caches up */
            double t0 = now();
            if (bq_trainer_step(t, ids, &loss)) { fprintf(stderr, "%s\n", bq_last_error()); return 1; }
            t0 = now() - t0;
            if (s) best = t0 < best ? t0 : best;
        }
        /* LoRA: frozen weights need no weight gradient (a third of the products fewer) */
        double ft = o.lora ? flop_tok - 2.0 * (lin_params - (size_t)c->vocab * H) : flop_tok;
        double tps = (double)T * accum / best, rate = tps * ft * 1e-9;
        printf("| %s | %.0f | %.1f | %.0f%% | %.0f%% |\n", runs[r][0], tps, rate, 100 * rate / ref_rate, 100 * rate / peak);
        if (jf)
            fprintf(jf, "{\"run\": \"%s\", \"threads\": %d, \"ctx\": %d, \"accum\": %d, \"tokens_per_second\": %.1f, "
                        "\"matmul_gflops\": %.2f, \"sgemm_shapes_gflops\": %.2f, \"sgemm_1024_gflops\": %.2f, \"share_shapes\": %.4f}\n",
                    runs[r][0], threads, ctx, accum, tps, rate, ref_rate, peak, rate / ref_rate);
        bq_trainer_free(t);
        bq_qconfig_free(q);
        bq_model_free(mm);
    }
    free(ids);
    if (jf) fclose(jf);
    bq_model_free(m);
    return 0;
}
