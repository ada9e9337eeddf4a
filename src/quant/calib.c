/* Calibration (`--calib FILE`): the float model runs over windows of the
 * calibration text, and an observer on the forward pass (engine.h) adds up,
 * per linear and input channel, the squares of the inputs it sees (with gptq or
 * awq also X^T X); the activations are not kept, except, for smoothquant's alpha
 * search, a sample of CALIB_SAMPLE_ROWS evenly spaced tokens per input. What the
 * post-training algorithms weigh errors by. On a GPU the sums stay on the device
 * (the backend's stats ops) and come to the host once, at the end. */
#include "quant.h"
#include "engine.h"
#include "backend.h"
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void calib_free(calib_stats *s)
{
    if (!s) return;
    for (int i = 0; i < s->n; i++) {
        free(s->msq[i]);
        if (s->amax) free(s->amax[i]);
        if (s->gram) free(s->gram[i]);
        if (s->xs) free(s->xs[i]);
    }
    free(s->msq);
    free(s->amax);
    free(s->gram);
    free(s->xs);
    free(s->xrows);
    free(s->in);
    free(s);
}

calib_stats *calib_copy(const calib_stats *s)
{
    calib_stats *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    *c = (calib_stats){s->n, calloc((size_t)s->n, sizeof *c->in), calloc((size_t)s->n, sizeof *c->msq),
                       calloc((size_t)s->n, sizeof *c->amax), calloc((size_t)s->n, sizeof *c->gram), s->tokens, NULL, NULL};
    int ok = c->in && c->msq && c->amax && c->gram;
    for (int k = 0; k < s->n && ok; k++) {
        c->in[k] = s->in[k];
        if (!s->msq[k]) continue;
        size_t b = (size_t)s->in[k] * sizeof(double);
        ok = (c->msq[k] = malloc(b)) && (c->amax[k] = malloc(b));
        if (ok) { memcpy(c->msq[k], s->msq[k], b); memcpy(c->amax[k], s->amax[k], b); }
        if (ok && s->gram && s->gram[k] && (ok = (c->gram[k] = malloc(b * s->in[k])) != NULL))
            memcpy(c->gram[k], s->gram[k], b * s->in[k]);
    }
    if (ok && s->xs) {
        ok = (c->xs = calloc((size_t)s->n, sizeof *c->xs)) && (c->xrows = calloc((size_t)s->n, sizeof *c->xrows));
        for (int k = 0; k < s->n && ok; k++) {
            size_t b = (size_t)s->xrows[k] * s->in[k] * sizeof(float);
            c->xrows[k] = s->xrows[k];
            if (s->xs[k] && (ok = (c->xs[k] = malloc(b ? b : 1)) != NULL)) memcpy(c->xs[k], s->xs[k], b);
        }
    }
    if (!ok) { calib_free(c); return NULL; }
    return c;
}

/* k and v read q's input, up reads gate's (when there is a gate): one Gram matrix. */
int calib_gram_slot(const calib_stats *s, int k)
{
    if (k >= s->n - 1) return k;  /* the LM head */
    int role = k % 7, base = k - role;
    if ((role == R_K || role == R_V) && s->in[base + R_Q] == s->in[k]) return base + R_Q;
    if (role == R_UP && s->in[base + R_GATE] == s->in[k]) return base + R_GATE;
    return k;
}

/* stride: one sample row every `stride` tokens a slot sees; seen: tokens seen per slot;
 * at: the backend that holds a slot's sums (NULL: the host's arrays); st: the first error */
typedef struct { calib_stats *s; int layers; double *xd; size_t xcap; int oom; size_t stride, *seen; be **at; bq_status st; } obs;

/* Sample rows (smoothquant's search): evenly spaced tokens, at most CALIB_SAMPLE_ROWS,
 * copied from the backend's memory. */
static void keep_rows(obs *o, be *b, int k, const float *x, int n, int in)
{
    float *X = o->s->xs[k];
    for (int t = 0; t < n && !o->st; t++, o->seen[k]++)
        if (o->seen[k] % o->stride == 0 && o->s->xrows[k] < CALIB_SAMPLE_ROWS)
            o->st = b->ops->get(b, X + (size_t)o->s->xrows[k]++ * in, x + (size_t)t * in, (size_t)in * sizeof *X);
}

static void observe(void *arg, be *b, int layer, int role, const float *x, int n, int in)
{
    obs *o = arg;
    if (layer < 0 && role != R_HEAD) return;  /* OPT's projections: not calibrated */
    int k = calib_index(o->layers, layer, role);
    if (!o->s->msq[k] || o->s->in[k] != in || o->st) return;
    if (calib_gram_slot(o->s, k) != k) return;  /* k/v (up): q's (gate's) input, whose sums are copied at the end */
    if (o->s->xs && o->s->xs[k]) keep_rows(o, b, k, x, n, in);
    if (!b->ops->host) {  /* the sums stay where x is */
        if (!o->st) o->st = b->ops->stats_add(b, k, x, n, in, o->s->gram && o->s->gram[k]);
        o->at[k] = b;
        return;
    }
    double *acc = o->s->msq[k], *mx = o->s->amax[k];
    for (int t = 0; t < n; t++)
        for (int i = 0; i < in; i++) {
            double v = x[(size_t)t * in + i];
            acc[i] += v * v;
            mx[i] = fabs(v) > mx[i] ? fabs(v) : mx[i];
        }
    double *G = o->s->gram ? o->s->gram[k] : NULL;
    if (!G) return;
    /* X^T X in double: the batch widened, then one symmetric rank-n update (upper
     * triangle; mirrored once at the end) */
    size_t need = (size_t)n * in;
    if (need > o->xcap) {
        free(o->xd);
        o->xcap = 0;
        if (!(o->xd = malloc(need * sizeof *o->xd))) { o->oom = 1; return; }
        o->xcap = need;
    }
    for (size_t i = 0; i < need; i++) o->xd[i] = x[i];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, in, n, 1.0, o->xd, in, 1.0, G, in);
}

/* With gptq or awq the Gram matrices of every layer at once (float64): refused where
 * they would take over half the host's memory (layer-by-layer calibration is not built;
 * LLaMA-2-7B's take 44 GB). */
static bq_status alloc_grams(calib_stats *s)
{
    double bytes = 0, ram = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    for (int k = 0; k < s->n; k++)
        if (s->msq[k] && calib_gram_slot(s, k) == k) bytes += (double)s->in[k] * s->in[k] * 8;
    if (ram > 0 && bytes > ram / 2)
        return bq_fail(BQ_ERR_UNSUPPORTED, "gptq/awq: the calibration's Gram matrices would take %.1f GB, over half of this machine's %.1f GB (all layers at once; layer-by-layer calibration is not built)", bytes / 1e9, ram / 1e9);
    if (s->n <= 0) return BQ_OK;
    if (!(s->gram = calloc((unsigned)s->n, sizeof *s->gram))) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int k = 0; k < s->n; k++)
        if (s->msq[k] && s->in[k] > 0 && calib_gram_slot(s, k) == k &&
            !(s->gram[k] = calloc((size_t)s->in[k] * (size_t)s->in[k], sizeof(double))))
            return bq_fail(BQ_ERR_NOMEM, "out of memory for the Gram matrices");
    return BQ_OK;
}

/* Room for the sample rows, at the Gram matrices' slots of the inputs whose alpha
 * smoothquant searches: q/k/v's and gate/up's (smooth.c). */
static bq_status alloc_samples(calib_stats *s)
{
    if (!(s->xs = calloc((unsigned)s->n, sizeof *s->xs)) || !(s->xrows = calloc((unsigned)s->n, sizeof *s->xrows)))
        return bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int k = 0; k < s->n - 1; k++)
        if (s->msq[k] && s->in[k] > 0 && calib_gram_slot(s, k) == k && k % 7 != R_O && k % 7 != R_DOWN &&
            !(s->xs[k] = malloc((size_t)CALIB_SAMPLE_ROWS * (size_t)s->in[k] * sizeof(float))))
            return bq_fail(BQ_ERR_NOMEM, "out of memory for the calibration's sample rows");
    return BQ_OK;
}

/* The sums a backend kept (stats_add) into the host's arrays, once, at the end. */
static bq_status read_back(calib_stats *s, be *const *at)
{
    bq_status st = BQ_OK;
    for (int k = 0; k < s->n && !st; k++)
        if (at[k]) st = at[k]->ops->stats_read(at[k], k, s->msq[k], s->amax[k], s->gram ? s->gram[k] : NULL);
    return st;
}

/* Run the float model m over `windows` windows of ctx tokens and collect the statistics;
 * device as bq_ctx_opts.device. */
bq_status calib_run(const bq_model *m, const int32_t *ids, size_t windows, int ctx, int want, int device, calib_stats **out)
{
    *out = NULL;
    int L = m->c.layers, nl = (int)be_stats_slots(&m->c);
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
    if (!st && (want & CALIB_GRAM)) st = alloc_grams(s);
    if (!st && (want & CALIB_SAMPLE)) st = alloc_samples(s);
    size_t total = windows * (size_t)ctx, *seen = st ? NULL : calloc((size_t)nl, sizeof *seen);
    be **at = st ? NULL : calloc((size_t)nl, sizeof *at);
    if (!st && (!seen || !at)) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    bq_ctx *c = NULL;
    float *lg = st ? NULL : malloc((size_t)m->c.vocab * sizeof *lg);
    if (!st && !lg) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    obs o = {s, L, NULL, 0, 0, total > CALIB_SAMPLE_ROWS ? total / CALIB_SAMPLE_ROWS : 1, seen, at, BQ_OK};
    bq_ctx_opts co = {sizeof co, device, 0, 0, 1};
    if (!st && !(st = bq_ctx_new_ex(m, ctx, &co, &c))) st = bq_ctx_set_observer(c, observe, &o);
    for (size_t w = 0; w < windows && !st; w++) {
        bq_ctx_reset(c);
        st = bq_forward(c, ids + w * (size_t)ctx, ctx, lg, 0);
        if (!st) st = o.st;
        s->tokens += (size_t)ctx;
    }
    if (!st && at) st = read_back(s, at);
    bq_ctx_free(c);
    free(lg);
    free(o.xd);
    free(seen);
    if (!st && o.oom) st = bq_fail(BQ_ERR_NOMEM, "out of memory for the Gram matrices");
    for (int k = 0; k < nl && !st && s->gram; k++)  /* the upper triangle mirrored (a backend's came whole) */
        for (int i = 0; s->gram[k] && !at[k] && i < s->in[k]; i++)
            for (int j = 0; j < i; j++) s->gram[k][(size_t)i * s->in[k] + j] = s->gram[k][(size_t)j * s->in[k] + i];
    free(at);
    for (int k = 0; k < nl && !st; k++) {  /* the slots that read another's input share its sums */
        int b = calib_gram_slot(s, k);
        if (b == k || !s->msq[k]) continue;
        memcpy(s->msq[k], s->msq[b], (size_t)s->in[k] * sizeof *s->msq[k]);
        memcpy(s->amax[k], s->amax[b], (size_t)s->in[k] * sizeof *s->amax[k]);
    }
    for (int k = 0; k < nl && !st; k++)  /* sums to means */
        for (int i = 0; s->msq[k] && i < s->in[k]; i++) s->msq[k][i] /= (double)s->tokens;
    if (st) { calib_free(s); return st; }
    *out = s;
    return BQ_OK;
}

/* With rotate, the statistics must be those of the rotated model: the windows are
 * kept, and quantising runs them after rotating (qconfig.c). */
int bq_qconfig_needs_calibration(const bq_qconfig *q)
{
    return q && (q->ptq_clip || q->ptq_gptq || q->ptq_awq || q->ptq_smooth);
}

bq_status bq_qconfig_calibrate(bq_qconfig *q, const bq_model *m, const int32_t *ids, size_t n, int ctx, int chunks)
{
    if (ctx < 2 || chunks < 1) return bq_fail(BQ_ERR_ARG, "calibration needs windows of at least 2 tokens");
    size_t windows = n / (size_t)ctx;
    if (windows == 0) return bq_fail(BQ_ERR_ARG, "the calibration text has %zu tokens, fewer than one window of %d", n, ctx);
    if (windows < (size_t)chunks)
        return bq_fail(BQ_ERR_ARG, "the calibration text has %zu tokens: %zu windows of %d, fewer than the %d asked",
                       n, windows, ctx, chunks);
    windows = (size_t)chunks;
    free(q->cal_ids);
    q->cal_ids = NULL;
    calib_free(q->calib);
    q->calib = NULL;
    if (qconfig_rotates(q)) {
        if (!(q->cal_ids = malloc(windows * (size_t)ctx * sizeof *q->cal_ids))) return bq_fail(BQ_ERR_NOMEM, "out of memory");
        memcpy(q->cal_ids, ids, windows * (size_t)ctx * sizeof *q->cal_ids);
        q->cal_windows = windows;
        q->cal_ctx = ctx;
        return BQ_OK;
    }
    return calib_run(m, ids, windows, ctx, calib_wants(q), q->calib_device, &q->calib);
}

void bq_qconfig_set_device(bq_qconfig *q, int device) { q->calib_device = device; }

int calib_wants(const bq_qconfig *q)
{
    return (q->ptq_gptq || q->ptq_awq ? CALIB_GRAM : 0) | (q->ptq_smooth && q->smooth_alpha < 0 ? CALIB_SAMPLE : 0);
}
