/* Where a one-token decoding step spends its GPU time (issue 17): each backend
 * operation of one layer (and the model's own: final norm, LM head), queued
 * `reps` times back to back on the CUDA backend, timed with CUDA events; the sum
 * over the layers is the step's kernel time, to set against the tokens/s that
 * `generate` measures (launch gaps, host work and synchronisation are the rest).
 * Linears also get GB/s of weights read and their share of the device copy
 * bandwidth measured in the same run. Needs no nsys.
 *
 *   build/gpu/gpu_decode_ops MODEL [--wq FORMAT] [--pos 128] [--reps 200] [--json FILE]
 */
#include "blockq.h"
#include "backend.h"
#include "bq_cuda.h"
#include "model.h"
#include "pmat.h"
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    be *b;
    const bq_model *m;
    float *x, *y, *q, *k, *v, *a, *u, *g;
    int pos;
} step;

typedef enum {
    OP_NORM1, OP_QKV, OP_ROPE, OP_KV, OP_ATTN, OP_O, OP_ADD, OP_NORM2, OP_GATE_UP, OP_ACT, OP_DOWN, OP_NORMF, OP_HEAD, OP_N
} op_id;
static const char *const OP_NAMES[OP_N] = {"norm (attention)", "q, k, v", "rope (q, k)", "kv store", "attention", "o_proj",
                                           "residual add (x2)", "norm (MLP)", "gate, up", "SiLU x up", "down_proj",
                                           "final norm", "LM head"};

static bq_status run_op(step *s, op_id op)
{
    be *b = s->b;
    const bq_config *c = &s->m->c;
    int H = c->hidden, d = c->head_dim;
    bq_status st = BQ_OK;
    switch (op) {
    case OP_NORM1: return b->ops->norm(b, 0, N_LN1, s->x, s->y, 1, H);
    case OP_NORM2: return b->ops->norm(b, 0, N_LN2, s->x, s->y, 1, H);
    case OP_NORMF: return b->ops->norm(b, -1, N_FINAL, s->x, s->y, 1, H);
    case OP_QKV: {
        lin_role rs[3] = {R_Q, R_K, R_V};
        float *ys[3] = {s->q, s->k, s->v};
        if (b->ops->linears) return b->ops->linears(b, 0, rs, 3, s->y, ys, 1);
        for (int i = 0; i < 3 && !st; i++) st = b->ops->linear(b, 0, rs[i], s->y, ys[i], 1);
        return st;
    }
    case OP_ROPE:
        st = b->ops->rope(b, s->q, 1, c->heads, s->pos);
        return st ? st : b->ops->rope(b, s->k, 1, c->kv_heads, s->pos);
    case OP_KV: return b->ops->kv_store(b, 0, s->k, s->v, 1, s->pos);
    case OP_ATTN: return b->ops->attention(b, 0, s->q, s->a, 1, s->pos);
    case OP_O: return b->ops->linear(b, 0, R_O, s->a, s->y, 1);
    case OP_ADD:
        st = b->ops->add(b, s->x, s->y, (size_t)H);
        return st ? st : b->ops->add(b, s->x, s->y, (size_t)H);
    case OP_GATE_UP: {
        lin_role rs[2] = {R_GATE, R_UP};
        float *ys[2] = {s->g, s->u};
        if (b->ops->linears) return b->ops->linears(b, 0, rs, 2, s->y, ys, 1);
        for (int i = 0; i < 2 && !st; i++) st = b->ops->linear(b, 0, rs[i], s->y, ys[i], 1);
        return st;
    }
    case OP_ACT: return b->ops->act(b, s->u, s->g, (size_t)c->inter);
    case OP_DOWN: return b->ops->linear(b, 0, R_DOWN, s->u, s->y, 1);
    case OP_HEAD: return b->ops->linear(b, -1, R_HEAD, s->y, s->a, 1);
    default: (void)d; return BQ_OK;
    }
}

/* Weight bytes an op reads (linears), as held. */
static double weight_bytes(const bq_model *m, op_id op)
{
    lin_role rs[3];
    int n = 0, layer = 0;
    switch (op) {
    case OP_QKV: rs[0] = R_Q; rs[1] = R_K; rs[2] = R_V; n = 3; break;
    case OP_O: rs[0] = R_O; n = 1; break;
    case OP_GATE_UP: rs[0] = R_GATE; rs[1] = R_UP; n = 2; break;
    case OP_DOWN: rs[0] = R_DOWN; n = 1; break;
    case OP_HEAD: rs[0] = R_HEAD; n = 1; layer = -1; break;
    default: return 0;
    }
    double bytes = 0;
    for (int i = 0; i < n; i++) {
        const linear *l = model_linear(m, layer, rs[i]);
        if (!l) continue;
        bytes += l->pw ? (double)bq_packed_size(l->pw->f, (size_t)l->out, (size_t)l->in) : 2.0 * l->out * l->in;
    }
    return bytes;
}

static float *dev_random(size_t n, float scale)
{
    float *h = malloc(n * 4), *d = NULL;
    uint64_t z = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; h && i < n; i++) {
        z ^= z << 13; z ^= z >> 7; z ^= z << 17;
        h[i] = ((float)(z >> 40) * 0x1p-24f - 0.5f) * scale;
    }
    if (h && !bq_cuda_malloc((void **)&d, n * 4)) bq_cuda_upload(d, h, n * 4);
    free(h);
    return d;
}

int main(int argc, char **argv)
{
    const char *path = NULL, *wq = NULL, *json = NULL;
    int pos = 128, reps = 200;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--wq") && i + 1 < argc) wq = argv[++i];
        else if (!strcmp(argv[i], "--pos") && i + 1 < argc) pos = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else path = argv[i];
    }
    char why[256];
    if (!bq_cuda_devices(why, sizeof why)) { printf("SKIP: %s\n", why); return 0; }
    if (!path || pos < 1 || reps < 1) { fprintf(stderr, "usage: gpu_decode_ops MODEL [--wq F] [--pos P] [--reps N] [--json FILE]\n"); return 2; }
    bq_model *m;
    if (bq_model_load(path, &m)) { fprintf(stderr, "%s\n", bq_last_error()); return 1; }
    if (wq) {
        bq_qconfig *q;
        bq_qconfig_new(&q);
        if (bq_qconfig_set(q, "wq", wq) || bq_model_pack(m, q, 0)) { fprintf(stderr, "%s\n", bq_last_error()); return 1; }
        bq_qconfig_free(q);
    }
    const bq_config *c = &m->c;
    be *b;
    if (be_cuda_new(m, pos + 8, 0, 0, c->layers, &b)) { fprintf(stderr, "%s\n", bq_last_error()); return 1; }
    size_t H = (size_t)c->hidden, qd = (size_t)c->heads * c->head_dim, kvd = (size_t)c->kv_heads * c->head_dim;
    size_t I = (size_t)c->inter, V = (size_t)c->vocab, wide = I > V ? I : V;
    step s = {b, m, dev_random(H, 1), dev_random(wide, 1), dev_random(qd, 1), dev_random(kvd, 1), dev_random(kvd, 1),
              dev_random(wide, 1), dev_random(wide, 1), dev_random(wide, 1), pos};
    /* the cache of layer 0 holds pos tokens */
    float *kk = dev_random((size_t)pos * kvd, 1), *vv = dev_random((size_t)pos * kvd, 1);
    if (!s.x || !kk || b->ops->kv_store(b, 0, kk, vv, pos, 0) || b->ops->finish(b)) { fprintf(stderr, "setup: %s\n", bq_last_error()); return 1; }

    /* copy bandwidth: 1 GiB each way */
    void *ca, *cb;
    size_t cn = (size_t)1 << 30;
    double copy = 0;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    if (!bq_cuda_malloc(&ca, cn) && !bq_cuda_malloc(&cb, cn)) {
        float best = 1e30f, ms;
        for (int r = 0; r < 6; r++) {
            cudaEventRecord(e0, cudaStreamPerThread);
            cudaMemcpy(cb, ca, cn, cudaMemcpyDeviceToDevice);
            cudaEventRecord(e1, cudaStreamPerThread);
            cudaEventSynchronize(e1);
            cudaEventElapsedTime(&ms, e0, e1);
            best = ms < best ? ms : best;
        }
        copy = 2.0 * (double)cn / best / 1e6;
        bq_cuda_free(ca);
        bq_cuda_free(cb);
    }
    FILE *js = json ? fopen(json, "w") : NULL;
    printf("# one decoding step, op by op: %s%s%s, %d layers, position %d, %d calls back to back, CUDA events\n\n",
           path, wq ? " --wq " : "", wq ? wq : "", c->layers, pos, reps);
    printf("device copy %.0f GB/s (read + written)\n\n| op | us a call | x per token | us per token | weight MB | GB/s | of copy |\n|---|---|---|---|---|---|---|\n", copy);
    double total = 0;
    for (int op = 0; op < OP_N; op++) {
        if ((op == OP_NORMF || op == OP_HEAD) && !model_linear(m, -1, R_HEAD)) continue;
        bq_status st = run_op(&s, (op_id)op);  /* warm-up (and the check that it runs) */
        if (!st) st = b->ops->finish(b);
        if (st) { printf("| %s | failed: %s |\n", OP_NAMES[op], bq_last_error()); continue; }
        cudaEventRecord(e0, cudaStreamPerThread);
        for (int r = 0; r < reps && !st; r++) st = run_op(&s, (op_id)op);
        cudaEventRecord(e1, cudaStreamPerThread);
        cudaEventSynchronize(e1);
        if (!st) st = b->ops->finish(b);
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        double us = 1000.0 * ms / reps, times = op >= OP_NORMF ? 1 : c->layers, wb = weight_bytes(m, (op_id)op);
        total += us * times;
        if (wb > 0)
            printf("| %s | %.2f | %.0f | %.1f | %.1f | %.0f | %.0f%% |\n", OP_NAMES[op], us, times, us * times, wb / 1e6,
                   wb / us / 1e3, 100.0 * wb / us / 1e3 / copy);
        else printf("| %s | %.2f | %.0f | %.1f | | | |\n", OP_NAMES[op], us, times, us * times);
        if (js)
            fprintf(js, "{\"op\":\"%s\",\"us\":%.3f,\"per_token\":%.0f,\"weight_bytes\":%.0f,\"copy_gbs\":%.0f%s}\n", OP_NAMES[op], us,
                    times, wb, copy, st ? ",\"failed\":true" : "");
    }
    printf("\nsum of the ops: %.0f us a token (%.0f tokens/s if nothing else ran)\n", total, 1e6 / total);
    if (js) { fprintf(js, "{\"op\":\"sum\",\"us\":%.3f}\n", total); fclose(js); }
    b->ops->destroy(b);
    bq_model_free(m);
    return 0;
}
