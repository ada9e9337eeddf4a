/* Fine-tuning throughput on the CUDA backend (issue 20), measured in one run:
 *   cuBLAS SGEMM through the trainer's own backend on the shapes a window runs
 *   (ctx+1 tokens through each linear): TFLOP/s, the reference;
 *   training steps per run (float32 or W4A4 fake quantisation, full or LoRA):
 *   tokens/s and the rate of the matmul FLOPs a step performs (2 x linear
 *   parameters a token forward, 2x for the input gradients, 2x more for the weight
 *   gradients when the weights train; attention's score and value products forward
 *   and backward, full squares), as a share of that SGEMM rate and of the H200's
 *   float32 peak (67 TFLOP/s, the datasheet's non-tensor FP32); a run named F+tf32 takes
 *   its products on the tensor cores in TF32 (its share of peak against TF32's 495 TFLOP/s; the
 *   SGEMM reference is taken through the first run's backend, so in TF32 if that run is);
 *   with --cpu, the same runs on the CPU (all its cores) for the speed-up.
 *
 *   build/gpu/gpu_train_bench --model M [--ctx S] [--accum A] [--steps N] [--lora R]
 *       [--runs "float mxfp4"] [--cpu] [--json FILE]
 */
#include "blockq.h"
#include "core.h"
#include "train.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double FP32_PEAK = 67e12, TF32_PEAK = 495e12;  /* H200 datasheet, dense */

/* cuBLAS SGEMM (through the trainer's backend) on the forward shapes y[T, out] = x W^T. */
static double sgemm_rate(bq_trainer *t, const bq_config *c, int T)
{
    int qd = c->heads * c->head_dim, kd = c->kv_heads * c->head_dim, H = c->hidden, F = c->inter;
    int shapes[][3] = {{qd, H, 1}, {kd, H, 2}, {H, qd, 1}, {F, H, 2}, {H, F, 1}, {c->vocab, H, 0}};
    size_t big = (size_t)c->vocab * H > (size_t)F * H ? (size_t)c->vocab * H : (size_t)F * H;
    int wide = c->vocab > F ? c->vocab : F;
    float *x = t->op->alloc(t->be, (size_t)T * F), *w = t->op->alloc(t->be, big), *y = t->op->alloc(t->be, (size_t)T * wide);
    if (!x || !w || !y) return NAN;
    double flop = 0, secs = 0;
    for (int s = 0; s < 6; s++) {
        int per = shapes[s][2] ? shapes[s][2] * c->layers : 1;
        double best = 1e30;
        for (int r = 0; r < 4; r++) {
            t->op->status(t->be);
            double t0 = bq_now();
            t->op->mm(t->be, MM_FWD, T, shapes[s][1], shapes[s][0], x, w, y, 0.0f);
            t->op->status(t->be);
            double el = bq_now() - t0;
            best = r && el < best ? el : best;  /* the first call warms up */
        }
        flop += 2.0 * T * shapes[s][0] * shapes[s][1] * per;
        secs += best * per;
    }
    t->op->release(t->be, x); t->op->release(t->be, w); t->op->release(t->be, y);
    return flop / secs;
}

int main(int argc, char **argv)
{
    const char *model = "models/llama-19m-en", *json = NULL, *runs = "float mxfp4";
    int ctx = 256, accum = 1, steps = 3, lora = 0, cpu = 0;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(argv[i], "--model")) model = v, i++;
        else if (!strcmp(argv[i], "--ctx")) ctx = atoi(v), i++;
        else if (!strcmp(argv[i], "--accum")) accum = atoi(v), i++;
        else if (!strcmp(argv[i], "--steps")) steps = atoi(v), i++;
        else if (!strcmp(argv[i], "--lora")) lora = atoi(v), i++;
        else if (!strcmp(argv[i], "--runs")) runs = v, i++;
        else if (!strcmp(argv[i], "--json")) json = v, i++;
        else if (!strcmp(argv[i], "--cpu")) cpu = 1;
        else { fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
    }
    FILE *jf = json ? fopen(json, "a") : NULL;
    printf("model %s, windows of %d tokens x %d a step, %s\n\n", model, ctx + 1, accum, lora ? "LoRA" : "full fine-tuning");
    printf("| run | device | tokens/s | matmul TFLOP/s | share of SGEMM (shapes) | share of peak (FP32 or TF32) | step s | load s |\n"
           "|---|---|---|---|---|---|---|---|\n");
    char list[256];
    snprintf(list, sizeof list, "%s", runs);
    double ref = NAN;
    for (char *run = strtok(list, " "); run; run = strtok(NULL, " "))
        for (int dev = 1; dev >= (cpu ? 0 : 1); dev--) {
            /* a run: "float" or a format (W and A), "+tf32" for TF32 products */
            char fmt[64];
            snprintf(fmt, sizeof fmt, "%s", run);
            char *plus = strstr(fmt, "+tf32");
            if (plus) *plus = 0;
            if (plus && !dev) continue;  /* the CPU has no TF32 */
            double t0 = bq_now();
            bq_model *m;
            if (bq_model_load(model, &m)) { fprintf(stderr, "%s\n", bq_last_error()); return 1; }
            const bq_config *c = &m->c;
            int T = ctx + 1, H = c->hidden, F = c->inter, qd = c->heads * c->head_dim, kd = c->kv_heads * c->head_dim;
            bq_qconfig *q = NULL;
            if (strcmp(fmt, "float")) {
                bq_qconfig_new(&q);
                if (bq_qconfig_set(q, "wq", fmt) || bq_qconfig_set(q, "aq", fmt)) { fprintf(stderr, "%s\n", bq_last_error()); return 1; }
            }
            bq_train_opts o;
            bq_train_opts_default(&o);
            o.ctx = ctx; o.accum = accum; o.steps = steps + 1; o.warmup = 1; o.lora = lora; o.device = dev; o.tf32 = plus != NULL;
            bq_trainer *t;
            if (bq_trainer_new(m, q, &o, &t)) { fprintf(stderr, "%s\n", bq_last_error()); return 1; }
            double load = bq_now() - t0;
            if (dev && ref != ref) ref = sgemm_rate(t, c, T);
            int32_t *ids = malloc((size_t)T * accum * sizeof *ids);
            for (int i = 0; i < T * accum; i++) ids[i] = (int32_t)((i * 7919u + 13u) % (unsigned)c->vocab);
            double loss, best = 1e30;
            for (int s = 0; s <= steps; s++) {  /* the first step warms up */
                double s0 = bq_now();
                if (bq_trainer_step(t, ids, &loss)) { fprintf(stderr, "%s\n", bq_last_error()); return 1; }
                s0 = bq_now() - s0;
                if (s) best = s0 < best ? s0 : best;
            }
            size_t lin = (size_t)c->layers * ((size_t)2 * qd * H + (size_t)2 * kd * H + (size_t)3 * F * H) + (size_t)c->vocab * H;
            double att = 12.0 * c->layers * (double)T * qd;
            double flop_tok = (lora ? 4.0 : 6.0) * lin + att;
            double tps = (double)T * accum / best, rate = tps * flop_tok;
            char share[16] = "-";  /* the SGEMM reference is the device's */
            if (dev) snprintf(share, sizeof share, "%.0f%%", 100 * rate / ref);
            printf("| %s%s | %s | %.0f | %.2f | %s | %.1f%% | %.3f | %.1f |\n", run, lora ? " LoRA" : "", dev ? "cuda" : "cpu", tps,
                   rate * 1e-12, share, 100 * rate / (plus ? TF32_PEAK : FP32_PEAK), best, load);
            if (jf)
                fprintf(jf, "{\"model\": \"%s\", \"run\": \"%s\", \"device\": \"%s\", \"lora\": %d, \"ctx\": %d, \"accum\": %d, "
                            "\"tokens_per_second\": %.1f, \"matmul_tflops\": %.3f, \"sgemm_shapes_tflops\": %.3f, "
                            "\"step_seconds\": %.4f, \"load_seconds\": %.2f, \"loss\": %.6f}\n",
                        model, run, dev ? "cuda" : "cpu", lora, ctx, accum, tps, rate * 1e-12, ref * 1e-12, best, load, loss);
            fflush(stdout);
            free(ids);
            bq_trainer_free(t);
            bq_qconfig_free(q);
            bq_model_free(m);
        }
    printf("\ncuBLAS SGEMM on the linear shapes (M = %d): %.2f TFLOP/s\n", ctx + 1, ref * 1e-12);
    if (jf) fclose(jf);
    return 0;
}
