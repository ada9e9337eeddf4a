/* Calibration (`--calib FILE`): the float model runs over windows of the
 * calibration text, and an observer on the forward pass (engine.h) adds up,
 * per linear and input channel, the squares of the inputs it sees; nothing of
 * the activations is kept. What the post-training algorithms weigh errors by. */
#include "quant.h"
#include "engine.h"
#include "backend.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

void calib_free(calib_stats *s)
{
    if (!s) return;
    for (int i = 0; i < s->n; i++) { free(s->msq[i]); if (s->amax) free(s->amax[i]); }
    free(s->msq);
    free(s->amax);
    free(s->in);
    free(s);
}

calib_stats *calib_copy(const calib_stats *s)
{
    calib_stats *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    *c = (calib_stats){s->n, calloc((size_t)s->n, sizeof *c->in), calloc((size_t)s->n, sizeof *c->msq),
                       calloc((size_t)s->n, sizeof *c->amax), s->tokens};
    int ok = c->in && c->msq && c->amax;
    for (int k = 0; k < s->n && ok; k++) {
        c->in[k] = s->in[k];
        if (!s->msq[k]) continue;
        size_t b = (size_t)s->in[k] * sizeof(double);
        ok = (c->msq[k] = malloc(b)) && (c->amax[k] = malloc(b));
        if (ok) { memcpy(c->msq[k], s->msq[k], b); memcpy(c->amax[k], s->amax[k], b); }
    }
    if (!ok) { calib_free(c); return NULL; }
    return c;
}

typedef struct { calib_stats *s; int layers; } obs;

static void observe(void *arg, int layer, int role, const float *x, int n, int in)
{
    obs *o = arg;
    if (layer < 0 && role != R_HEAD) return;  /* OPT's projections: not calibrated */
    int k = calib_index(o->layers, layer, role);
    if (!o->s->msq[k] || o->s->in[k] != in) return;
    double *acc = o->s->msq[k], *mx = o->s->amax[k];
    for (int t = 0; t < n; t++)
        for (int i = 0; i < in; i++) {
            double v = x[(size_t)t * in + i];
            acc[i] += v * v;
            mx[i] = fabs(v) > mx[i] ? fabs(v) : mx[i];
        }
}

bq_status bq_qconfig_calibrate(bq_qconfig *q, const bq_model *m, const int32_t *ids, size_t n, int ctx, int chunks)
{
    if (ctx < 2 || chunks < 1) return bq_fail(BQ_ERR_ARG, "calibration needs windows of at least 2 tokens");
    size_t windows = n / (size_t)ctx;
    if (windows == 0) return bq_fail(BQ_ERR_ARG, "the calibration text has %zu tokens, fewer than one window of %d", n, ctx);
    if ((size_t)chunks < windows) windows = (size_t)chunks;
    int L = m->c.layers, nl = L * 7 + 1;
    calib_stats *s = calloc(1, sizeof *s);
    bq_status st = s ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory");
    if (s) {
        s->n = nl;
        s->in = calloc((size_t)nl, sizeof *s->in);
        s->msq = calloc((size_t)nl, sizeof *s->msq);
        s->amax = calloc((size_t)nl, sizeof *s->amax);
        if (!s->in || !s->msq || !s->amax) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    }
    for (int k = 0; k < nl && !st; k++) {
        const linear *l = k < L * 7 ? model_linear(m, k / 7, (lin_role)(k % 7)) : &m->head;  /* inverse of calib_index */
        if (!LINEAR_PRESENT(l)) continue;
        s->in[k] = l->in;
        if (!(s->msq[k] = calloc((size_t)l->in, sizeof **s->msq)) || !(s->amax[k] = calloc((size_t)l->in, sizeof **s->amax))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    }
    bq_ctx *c = NULL;
    float *lg = st ? NULL : malloc((size_t)m->c.vocab * sizeof *lg);
    if (!st && !lg) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    obs o = {s, L};
    if (!st && !(st = bq_ctx_new(m, ctx, &c))) st = bq_ctx_set_observer(c, observe, &o);
    for (size_t w = 0; w < windows && !st; w++) {
        bq_ctx_reset(c);
        st = bq_forward(c, ids + w * (size_t)ctx, ctx, lg, 0);
        s->tokens += (size_t)ctx;
    }
    bq_ctx_free(c);
    free(lg);
    for (int k = 0; k < nl && !st; k++)  /* sums to means */
        for (int i = 0; s->msq[k] && i < s->in[k]; i++) s->msq[k][i] /= (double)s->tokens;
    if (st) { calib_free(s); return st; }
    calib_free(q->calib);
    q->calib = s;
    return BQ_OK;
}
