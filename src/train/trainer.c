/* The trainer: which tensors train (full fine-tuning or LoRA adapters), AdamW with
 * a warm-up + cosine schedule, gradient accumulation and clipping, checkpoints,
 * and the Hugging Face folder the result is written to. The forward and backward
 * passes are grad.c's. */
#include "train.h"
#include "backend.h"
#include "quant.h"
#include "format.h"
#include <cblas.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

size_t train_act_floats(const bq_config *c, int n);
size_t train_scratch_floats(const bq_config *c, int n);

void bq_train_opts_default(bq_train_opts *o)
{
    memset(o, 0, sizeof *o);
    o->size = sizeof *o;
    o->ctx = 256;
    o->accum = 1;
    o->steps = 100;
    o->warmup = 10;
    o->lr = 1e-4;
    o->min_lr_frac = 0.1;
    o->weight_decay = 0.0;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    o->clip_norm = 1.0;
    o->seed = 1;
}

/* ---- what trains ----------------------------------------------------------------- */

enum { TR_LINEARS = 1, TR_NORMS = 2, TR_EMB = 4, TR_HEAD = 8, TR_ALL = 15 };

static bq_status parse_roles(const char *s, int lora, int *out)
{
    if (!s) { *out = lora ? TR_LINEARS : TR_ALL; return BQ_OK; }
    static const char *names[] = {"linears", "norms", "emb", "head", "all"};
    static const int bits[] = {TR_LINEARS, TR_NORMS, TR_EMB, TR_HEAD, TR_ALL};
    *out = 0;
    while (*s) {
        size_t n = strcspn(s, ",");
        int k = 0;
        while (k < 5 && (strlen(names[k]) != n || strncmp(s, names[k], n))) k++;
        if (k == 5) return bq_fail(BQ_ERR_ARG, "trained parts: unknown part '%.*s' (linears, norms, emb, head, all)", (int)n, s);
        *out |= bits[k];
        s += n + (s[n] == ',');
    }
    if (!*out) return bq_fail(BQ_ERR_ARG, "trained parts: nothing to train");
    return BQ_OK;
}

static bq_status add_param(bq_trainer *t, const char *name, float *w, float *g, int rows, int cols, int decay)
{
    tparam *np = realloc(t->p, (size_t)(t->np + 1) * sizeof *np);
    if (!np) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    t->p = np;
    tparam *p = &t->p[t->np];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->w = w;
    p->g = g;
    p->rows = rows;
    p->cols = cols;
    p->n = (size_t)rows * cols;
    p->decay = decay;
    p->m = calloc(p->n, sizeof *p->m);
    p->v = calloc(p->n, sizeof *p->v);
    t->np++;
    return p->m && p->v ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory for the optimiser's state of %s", name);
}

static float *zalloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

static bq_status check_arch(const bq_model *m)
{
    const bq_config *c = &m->c;
    const char *why = c->arch != ARCH_LLAMA && c->arch != ARCH_QWEN2 ? "its architecture"
                      : c->qk_norm ? "per-head q/k norms" : !c->rope ? "learned positions"
                      : c->norm != NORM_RMS ? "LayerNorm" : c->act != ACT_SILU_GATED ? "its MLP activation"
                      : !c->pre_norm || !c->final_norm ? "post-norm layers"
                      : c->embed_dim != c->hidden || LINEAR_PRESENT(&m->proj_in) ? "embedding projections" : NULL;
    if (why)
        return bq_fail(BQ_ERR_UNSUPPORTED, "fine-tuning covers the LLaMA family (llama, mistral, qwen2); '%s' differs in %s",
                       c->model_type, why);
    if (m->attn_q || m->kv_q) return bq_fail(BQ_ERR_ARG, "the model already carries quantisers: give the formats to the trainer");
    for (int l = 0; l < c->layers; l++)
        for (int r = 0; r < 7; r++)
            if (model_linear(m, l, (lin_role)r)->aq)
                return bq_fail(BQ_ERR_ARG, "the model already carries quantisers: give the formats to the trainer");
    return BQ_OK;
}

/* The quantisers the config gives each place; what the trainer cannot apply yet, refused by name. */
static bq_status set_formats(bq_trainer *t, const bq_qconfig *q)
{
    if (!q) return BQ_OK;
    if (q->ptq_clip || q->ptq_gptq || q->ptq_awq || q->ptq_smooth || qconfig_rotates(q))
        return bq_fail(BQ_ERR_UNSUPPORTED, "post-training quantisation (ptq) with fine-tuning: run it on the fine-tuned model instead");
    if (q->attn[0]) return bq_fail(BQ_ERR_UNSUPPORTED, "quantised attention operands (attn) are not trained yet: quantise the KV cache (kv) instead");
    for (int i = 0; i < q->nrules; i++)
        if (q->rules[i].mul[0] && strcmp(q->rules[i].mul, "exact"))
            return bq_fail(BQ_ERR_UNSUPPORTED, "multiplication %s (mul) is not trained (exact products only)", q->rules[i].mul);
    const char *w, *a;
    qconfig_resolve(q, "embed_tokens", 0, &w, &a);
    if (*w) return bq_fail(BQ_ERR_UNSUPPORTED, "a quantised embedding (embed_tokens in %s) is not trained yet", w);
    t->qo = q->opts;
    bq_status st = BQ_OK;
    for (int i = 0; i < t->nlin && !st; i++) {
        tlin *L = &t->lin[i];
        qconfig_resolve(q, i < t->nlin - 1 ? L->l->name : "lm_head", i < t->nlin - 1, &w, &a);
        if (*w) st = bq_format_parse(w, &L->wf);
        if (!st && *a) st = bq_format_parse(a, &L->af);
    }
    if (!st && q->kv[0]) st = bq_format_parse(q->kv, &t->kvf);
    /* linears reading one input keep one quantised copy of it for their weight gradients:
     * k and v read q's input, up reads gate's */
    for (int i = 0; i + 1 < t->nlin && !st; i++) {
        int r = i % 7, first = r == R_K || r == R_V ? i - r : r == R_UP ? i - 1 : i;
        const bq_format *a0 = t->lin[first].af, *a1 = t->lin[i].af;
        if (first != i && (!a0 != !a1 || (a0 && strcmp(a0->name, a1->name))))
            st = bq_fail(BQ_ERR_UNSUPPORTED, "%s and %s read one input with different activation formats (%s, %s): not trained yet",
                         t->lin[first].l->name, t->lin[i].l->name, a0 ? a0->name : "float", a1 ? a1->name : "float");
    }
    return st;
}

bq_status bq_trainer_new(bq_model *m, const bq_qconfig *q, const bq_train_opts *o, bq_trainer **out)
{
    *out = NULL;
    if (!o || o->size < sizeof *o) return bq_fail(BQ_ERR_ARG, "training options without their size (bq_train_opts_default)");
    if (model_lorc_linear(m)) return bq_fail(BQ_ERR_UNSUPPORTED, "%s has LoRC factors (ptq lorc), which fine-tuning does not train yet", model_lorc_linear(m)->name);
    if (m->rot_down || m->rot_qk)
        return bq_fail(BQ_ERR_UNSUPPORTED, "the model rotates activations online (ptq hadamard%s), which fine-tuning does not apply yet", m->rot_down ? "" : "_kv");
    if (o->ctx < 1 || o->accum < 1 || o->steps < 1 || o->warmup < 0 || !(o->lr > 0) || o->lora < 0 || (unsigned)o->lora_beside > 1 ||
        !(o->min_lr_frac >= 0 && o->min_lr_frac <= 1) || !(o->beta1 >= 0 && o->beta1 < 1) ||
        !(o->beta2 >= 0 && o->beta2 < 1) || !(o->eps > 0) || !(o->weight_decay >= 0) || !(o->clip_norm >= 0))
        return bq_fail(BQ_ERR_ARG, "training options out of range (ctx, accum, steps >= 1; lr, eps > 0; betas in [0, 1))");
    bq_status st = check_arch(m);
    if (st) return st;
    const bq_config *c = &m->c;
    if (o->ctx + 1 > c->max_pos && !c->rope)
        return bq_fail(BQ_ERR_ARG, "windows of %d tokens exceed the model's %d positions", o->ctx + 1, c->max_pos);
    int roles;
    if ((st = parse_roles(o->train, o->lora, &roles))) return st;
    /* master weights in float32 (held 16-bit matrices widened; packed ones refused) */
    if ((st = ptq_float_embedding(m))) return st;
    for (int l = 0; l < c->layers && !st; l++)
        for (int r = 0; r < 7 && !st; r++) st = ptq_float_weights((linear *)model_linear(m, l, (lin_role)r));
    if (!st && m->head.w != m->tok_emb) st = ptq_float_weights(&m->head);
    if (st) return st;

    bq_trainer *t = calloc(1, sizeof *t);
    if (!t) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    t->m = m;
    t->o = *o;
    t->o.train = NULL;  /* the caller's string need not outlive the call */
    t->qo = m->qopts;
    t->nlin = c->layers * 7 + 1;
    t->lin = calloc((size_t)t->nlin, sizeof *t->lin);
    t->g_ln = calloc((size_t)c->layers * 2 + 1, sizeof *t->g_ln);
    if (!t->lin || !t->g_ln) { bq_trainer_free(t); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    for (int l = 0; l < c->layers; l++)
        for (int r = 0; r < 7; r++) t->lin[l * 7 + r].l = (linear *)model_linear(m, l, (lin_role)r);
    t->lin[t->nlin - 1].l = &m->head;
    if ((st = set_formats(t, q))) { bq_trainer_free(t); return st; }

    /* parameters */
    int tied = m->head.w == m->tok_emb, H = c->hidden;
    uint64_t rng = o->seed ^ 0x10a2u;
    char name[160];
    if (roles & (TR_EMB | (tied ? TR_HEAD : 0))) {
        if (!(t->g_emb = zalloc((size_t)c->vocab * H))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        if (!st) st = add_param(t, "model.embed_tokens.weight", m->tok_emb, t->g_emb, c->vocab, H, 1);
    }
    if (!st && (roles & TR_NORMS)) {
        for (int l = 0; l < c->layers && !st; l++)
            for (int k = 0; k < 2 && !st; k++) {
                if (!(t->g_ln[2 * l + k] = zalloc((size_t)H))) { st = bq_fail(BQ_ERR_NOMEM, "out of memory"); break; }
                snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, k ? "post_attention_layernorm" : "input_layernorm");
                st = add_param(t, name, k ? m->L[l].ln2.w : m->L[l].ln1.w, t->g_ln[2 * l + k], 1, H, 0);
            }
        if (!st && !(t->g_final = zalloc((size_t)H))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        if (!st) st = add_param(t, "model.norm.weight", m->final_ln.w, t->g_final, 1, H, 0);
    }
    for (int i = 0; i < t->nlin && !st; i++) {
        tlin *L = &t->lin[i];
        linear *l = L->l;
        size_t n = (size_t)l->out * l->in;
        int head = i == t->nlin - 1;
        if (head) snprintf(name, sizeof name, "lm_head");
        else snprintf(name, sizeof name, "model.%s", l->name);
        int full = head ? (tied ? !!t->g_emb : !!(roles & TR_HEAD)) : (roles & TR_LINEARS) && !o->lora;
        L->lora = !head && (roles & TR_LINEARS) && o->lora ? o->lora : 0;
        if (L->lora && L->lora > (l->in < l->out ? l->in : l->out)) {
            st = bq_fail(BQ_ERR_ARG, "LoRA rank %d exceeds %s's smaller side (%d x %d)", L->lora, l->name, l->out, l->in);
            break;
        }
        if (head && tied) L->gw = t->g_emb;
        else if (full || L->lora) {
            if (!(L->gw = zalloc(n))) { st = bq_fail(BQ_ERR_NOMEM, "out of memory"); break; }
        }
        char pn[200];
        if (full && !(head && tied)) {
            snprintf(pn, sizeof pn, "%s.weight", name);
            st = add_param(t, pn, l->w, L->gw, l->out, l->in, 1);
            if (!st && l->b) {
                if (!(L->gb = zalloc((size_t)l->out))) { st = bq_fail(BQ_ERR_NOMEM, "out of memory"); break; }
                snprintf(pn, sizeof pn, "%s.bias", name);
                st = add_param(t, pn, l->b, L->gb, 1, l->out, 0);
            }
        }
        if (!st && L->lora) {
            int r = L->lora;
            L->A = zalloc((size_t)r * l->in);
            L->B = zalloc((size_t)l->out * r);
            L->gA = zalloc((size_t)r * l->in);
            L->gB = zalloc((size_t)l->out * r);
            if (!L->A || !L->B || !L->gA || !L->gB) { st = bq_fail(BQ_ERR_NOMEM, "out of memory"); break; }
            /* as the LoRA paper's reference code: A uniform in +-1/sqrt(in), B zero (training
             * starts at the base weights) */
            float bound = 1.0f / sqrtf((float)l->in);
            for (size_t k = 0; k < (size_t)r * l->in; k++)
                L->A[k] = bound * (float)((double)(bq_splitmix(&rng) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
            snprintf(pn, sizeof pn, "%s.lora_A", name);
            st = add_param(t, pn, L->A, L->gA, r, l->in, 1);
            snprintf(pn, sizeof pn, "%s.lora_B", name);
            if (!st) st = add_param(t, pn, L->B, L->gB, l->out, r, 1);
        }
        /* what the forward multiplies by: its own buffer when quantised or adapted */
        if (!st && (L->wf || L->lora)) {
            if (!(L->wq = zalloc(n))) st = bq_fail(BQ_ERR_NOMEM, "out of memory for %s's quantised copy", name);
        } else L->wq = l->w;
    }
    if (!st && !t->np) st = bq_fail(BQ_ERR_ARG, "nothing to train");

    /* activations, scratch, rotary tables, threads */
    t->T = o->ctx + 1;
    if (!st) {
        t->acts = malloc(train_act_floats(c, t->T) * sizeof(float));
        t->scratch = malloc(train_scratch_floats(c, t->T) * sizeof(float));
        int half = c->head_dim / 2;
        t->rope_cos = malloc((size_t)t->T * half * sizeof(float));
        t->rope_sin = malloc((size_t)t->T * half * sizeof(float));
        if (!t->acts || !t->scratch || !t->rope_cos || !t->rope_sin)
            st = bq_fail(BQ_ERR_NOMEM, "out of memory for the activations of %d-token windows (%.1f GB)", t->T,
                         (double)(train_act_floats(c, t->T) + train_scratch_floats(c, t->T)) * 4e-9);
        for (int p = 0; !st && p < t->T; p++)
            for (int i = 0; i < half; i++) {
                float ang = rope_angle(c, i, p);
                t->rope_cos[(size_t)p * half + i] = cosf(ang);
                t->rope_sin[(size_t)p * half + i] = sinf(ang);
            }
    }
    if (st) { bq_trainer_free(t); return st; }
    be_blas_single_thread();
    t->threads = o->threads > 0 ? o->threads : bq_ncores();
    t->pool = bq_pool_new(t->threads);
    t->qo.threads = t->threads;  /* the quantisers' bits do not depend on it either */
    *out = t;
    return BQ_OK;
}

void bq_trainer_free(bq_trainer *t)
{
    if (!t) return;
    for (int i = 0; i < t->nlin && t->lin; i++) {
        tlin *L = &t->lin[i];
        bq_format_free(L->wf);
        bq_format_free(L->af);
        if (L->wq != L->l->w) free(L->wq);
        if (L->gw != t->g_emb) free(L->gw);
        free(L->gb);
        free(L->A); free(L->B); free(L->gA); free(L->gB);
    }
    for (int i = 0; i < t->np; i++) { free(t->p[i].m); free(t->p[i].v); }
    for (int l = 0; t->g_ln && l < t->m->c.layers * 2; l++) free(t->g_ln[l]);
    free(t->g_ln);
    free(t->g_emb);
    free(t->g_final);
    free(t->p);
    free(t->lin);
    bq_format_free(t->kvf);
    free(t->acts);
    free(t->scratch);
    free(t->rope_cos);
    free(t->rope_sin);
    bq_pool_free(t->pool);
    free(t);
}

static float lora_scale(const bq_trainer *t) { return (float)((t->o.lora_alpha > 0 ? t->o.lora_alpha : t->o.lora) / t->o.lora); }

bq_status train_prepare(bq_trainer *t)
{
    for (int i = 0; i < t->nlin; i++) {
        tlin *L = &t->lin[i];
        linear *l = L->l;
        if (L->wq == l->w) continue;
        const float *src = l->w;
        int inside = L->lora && !t->o.lora_beside, beside = L->lora && t->o.lora_beside;
        if (inside) {  /* W + s B A, then quantised */
            memcpy(L->wq, l->w, (size_t)l->out * l->in * sizeof *L->wq);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, l->out, l->in, L->lora, lora_scale(t), L->B, L->lora,
                        L->A, l->in, 1.0f, L->wq, l->in);
            src = L->wq;
        }
        if (L->wf) {
            bq_status st = bq_qdq(L->wf, src, L->wq, (size_t)l->out, (size_t)l->in, &t->qo);
            if (st) return st;
        } else if (beside) memcpy(L->wq, l->w, (size_t)l->out * l->in * sizeof *L->wq);
        if (beside)  /* q(W) + s B A: the gradient of the sum is the adapters' as it is W_eff's */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, l->out, l->in, L->lora, lora_scale(t), L->B, L->lora,
                        L->A, l->in, 1.0f, L->wq, l->in);
    }
    return BQ_OK;
}

void train_zero_grads(bq_trainer *t)
{
    for (int i = 0; i < t->np; i++) memset(t->p[i].g, 0, t->p[i].n * sizeof(float));
    for (int i = 0; i < t->nlin; i++) {
        tlin *L = &t->lin[i];
        if (L->lora) memset(L->gw, 0, (size_t)L->l->out * L->l->in * sizeof(float));
    }
}

double bq_trainer_lr(const bq_trainer *t, long step)
{
    const bq_train_opts *o = &t->o;
    if (step < o->warmup) return o->lr * (double)(step + 1) / o->warmup;
    double span = o->steps - o->warmup > 1 ? o->steps - o->warmup - 1 : 1, p = (double)(step - o->warmup) / span;
    p = p > 1 ? 1 : p;
    double lo = o->lr * o->min_lr_frac;
    return lo + (o->lr - lo) * 0.5 * (1.0 + cos(M_PI * p));
}

long bq_trainer_steps_done(const bq_trainer *t) { return t->step; }

size_t bq_trainer_params(const bq_trainer *t)
{
    size_t n = 0;
    for (int i = 0; i < t->np; i++) n += t->p[i].n;
    return n;
}

bq_status bq_trainer_loss(bq_trainer *t, const int32_t *ids, size_t n, double *loss)
{
    size_t ctx = (size_t)t->o.ctx, windows = n > ctx ? (n - 1) / ctx : 0;
    if (!windows) return bq_fail(BQ_ERR_ARG, "%zu tokens, fewer than one window of %d", n, t->T);
    bq_status st = train_prepare(t);
    double sum = 0, l;
    for (size_t w = 0; w < windows && !st; w++) {
        st = train_window(t, ids + w * ctx, t->T, 0.0, &l);
        sum += l;
    }
    *loss = sum / (double)windows;
    return st;
}

/* Adapters: dA = s B^T dW, dB = s dW A^T (dW: the gradient of the weight the forward
 * used, summed over the step's windows). */
void train_lora_grads(bq_trainer *t)
{
    for (int i = 0; i < t->nlin; i++) {
        tlin *L = &t->lin[i];
        if (!L->lora) continue;
        linear *l = L->l;
        float s = lora_scale(t);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L->lora, l->in, l->out, s, L->B, L->lora, L->gw, l->in, 0.0f,
                    L->gA, l->in);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, l->out, L->lora, l->in, s, L->gw, l->in, L->A, l->in, 0.0f,
                    L->gB, L->lora);
    }
}

bq_status bq_trainer_step(bq_trainer *t, const int32_t *ids, double *loss)
{
    bq_status st = train_prepare(t);
    if (st) return st;
    train_zero_grads(t);
    double sum = 0, lw;
    for (int a = 0; a < t->o.accum; a++) {
        if ((st = train_window(t, ids + (size_t)a * t->T, t->T, 1.0 / t->o.accum, &lw))) {
            if (st == BQ_ERR_NONFINITE)
                return bq_fail(st, "step %ld: the loss of window %d is not finite; the weights are those of step %ld",
                               t->step + 1, a, t->step);
            return st;
        }
        sum += lw;
    }
    *loss = sum / t->o.accum;
    train_lora_grads(t);
    double nrm = 0;
    for (int i = 0; i < t->np; i++)
        for (size_t k = 0; k < t->p[i].n; k++) nrm += (double)t->p[i].g[k] * t->p[i].g[k];
    nrm = sqrt(nrm);
    if (!isfinite(nrm))
        return bq_fail(BQ_ERR_NONFINITE, "step %ld: the gradient is not finite; the weights are those of step %ld",
                       t->step + 1, t->step);
    float clip = t->o.clip_norm > 0 && nrm > t->o.clip_norm ? (float)(t->o.clip_norm / nrm) : 1.0f;
    /* AdamW (decoupled weight decay on matrices) */
    long k = t->step + 1;
    float lr = (float)bq_trainer_lr(t, t->step), b1 = (float)t->o.beta1, b2 = (float)t->o.beta2, eps = (float)t->o.eps;
    float c1 = (float)(1.0 - pow(t->o.beta1, (double)k)), c2 = (float)(1.0 - pow(t->o.beta2, (double)k));
    float wd = (float)t->o.weight_decay;
    for (int i = 0; i < t->np; i++) {
        tparam *p = &t->p[i];
        for (size_t j = 0; j < p->n; j++) {
            float g = p->g[j] * clip;
            p->m[j] = b1 * p->m[j] + (1.0f - b1) * g;
            p->v[j] = b2 * p->v[j] + (1.0f - b2) * g * g;
            float mh = p->m[j] / c1, vh = p->v[j] / c2;
            p->w[j] -= lr * (mh / (sqrtf(vh) + eps) + (p->decay ? wd * p->w[j] : 0.0f));
        }
    }
    t->step++;
    return BQ_OK;
}

bq_status bq_trainer_merge(bq_trainer *t)
{
    for (int i = 0; i < t->nlin; i++) {
        tlin *L = &t->lin[i];
        if (!L->lora) continue;
        linear *l = L->l;
        if (t->o.lora_beside) {  /* y += (q(x) A^T)(s B)^T: the LoRC term (lr_b = A, lr_a = s B) */
            size_t na = (size_t)l->out * L->lora, nb = (size_t)L->lora * l->in;
            float *fa = malloc(na * sizeof *fa), *fb = malloc(nb * sizeof *fb);
            if (!fa || !fb) { free(fa); free(fb); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
            float s = lora_scale(t);
            for (size_t k = 0; k < na; k++) fa[k] = s * L->B[k];
            memcpy(fb, L->A, nb * sizeof *fb);
            free(l->lr_a); free(l->lr_b);
            l->lr_a = fa;
            l->lr_b = fb;
            l->lr_rank = L->lora;
            continue;  /* the adapters train on from where they are */
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, l->out, l->in, L->lora, lora_scale(t), L->B, L->lora, L->A,
                    l->in, 1.0f, l->w, l->in);
        /* the adapters start again from zero, so W + s B A is unchanged */
        memset(L->B, 0, (size_t)l->out * L->lora * sizeof *L->B);
        for (int k = 0; k < t->np; k++)
            if (t->p[k].w == L->B) {
                memset(t->p[k].m, 0, t->p[k].n * sizeof(float));
                memset(t->p[k].v, 0, t->p[k].n * sizeof(float));
            }
    }
    return BQ_OK;
}

/* ---- checkpoints --------------------------------------------------------------------- */

/* What must match for a checkpoint to continue this run. */
static void signature(const bq_trainer *t, char *s, size_t n)
{
    const bq_train_opts *o = &t->o;
    const tlin *L = &t->lin[0], *hd = &t->lin[t->nlin - 1];
    snprintf(s, n, "ctx=%d accum=%d steps=%d warmup=%d lr=%.9g min=%.9g wd=%.9g b1=%.9g b2=%.9g eps=%.9g clip=%.9g "
                   "lora=%d alpha=%.9g seed=%llu params=%d w=%s a=%s kv=%s head=%s/%s",
             o->ctx, o->accum, o->steps, o->warmup, o->lr, o->min_lr_frac, o->weight_decay, o->beta1, o->beta2, o->eps,
             o->clip_norm, o->lora, o->lora_alpha, (unsigned long long)o->seed, t->np,
             L->wf ? L->wf->name : "-", L->af ? L->af->name : "-", t->kvf ? t->kvf->name : "-",
             hd->wf ? hd->wf->name : "-", hd->af ? hd->af->name : "-");
    if (o->lora && o->lora_beside) snprintf(s + strlen(s), n - strlen(s), " beside");  /* earlier files stay valid */
}

/* A checkpoint holds each trainable tensor, then AdamW's two moments of it. */
static const char *const STATE_SUFFIX[3] = {"", ".adam_m", ".adam_v"};
static void state_name(const tparam *p, int k, char *out, size_t n) { snprintf(out, n, "%s%s", p->name, STATE_SUFFIX[k]); }

bq_status bq_trainer_save_state(const bq_trainer *t, const char *path)
{
    st_out *ts = calloc((size_t)t->np * 3, sizeof *ts);
    char (*names)[176] = calloc((size_t)t->np * 3, sizeof *names);
    if (!ts || !names) { free(ts); free(names); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    for (int i = 0; i < t->np; i++) {
        const tparam *p = &t->p[i];
        const float *src[3] = {p->w, p->m, p->v};
        for (int k = 0; k < 3; k++) {
            state_name(p, k, names[3 * i + k], sizeof names[0]);
            ts[3 * i + k] = (st_out){names[3 * i + k], src[k], 2, {p->rows, p->cols}};
        }
    }
    char sig[1024], step[32];
    signature(t, sig, sizeof sig);
    snprintf(step, sizeof step, "%ld", t->step);
    const char *meta[] = {"format", "blockq-trainer-1", "step", step, "options", sig, NULL};
    bq_status st = st_write_f32(path, ts, (size_t)t->np * 3, meta);
    free(ts);
    free(names);
    return st;
}

bq_status bq_trainer_load_state(bq_trainer *t, const char *path)
{
    void *buf;
    size_t size;
    bq_status st = bq_read_file(path, &buf, &size);
    if (st) return st;
    /* the metadata first: the same run, and its step */
    uint64_t hl = 0;
    for (int i = 0; i < 8 && size >= 8; i++) hl |= (uint64_t)((uint8_t *)buf)[i] << (8 * i);
    cJSON *root = size >= 8 && hl <= size - 8 ? cJSON_ParseWithLength((char *)buf + 8, (size_t)hl) : NULL;
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(root, "__metadata__");
    const char *fmt = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(md, "format"));
    const char *sv = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(md, "step"));
    const char *opt = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(md, "options"));
    char sig[1024], *end = NULL;
    signature(t, sig, sizeof sig);
    long step = sv ? strtol(sv, &end, 10) : -1;
    if (!fmt || strcmp(fmt, "blockq-trainer-1") || !sv || !end || *end || step < 0 || !opt)
        st = bq_fail(BQ_ERR_PARSE, "%s: not a blockq training checkpoint", path);
    else if (strcmp(opt, sig))
        st = bq_fail(BQ_ERR_ARG, "%s: a checkpoint of another run (%s); this run: %s", path, opt, sig);
    cJSON_Delete(root);
    st_set s = {0};
    if (!st) st = st_parse_buffer(&s, path, buf, size);
    for (int i = 0; i < t->np && !st; i++) {
        tparam *p = &t->p[i];
        float *dst[3] = {p->w, p->m, p->v};
        for (int k = 0; k < 3 && !st; k++) {
            char name[176];
            state_name(p, k, name, sizeof name);
            const st_tensor *x = st_find(&s, name);
            if (!x || x->dt != DT_F32 || x->numel != p->n)
                st = bq_fail(BQ_ERR_SHAPE, "%s: tensor '%s' is missing or not %zu float32 values", path, name, p->n);
            else st_to_f32(x, dst[k]);
        }
    }
    if (!st) t->step = step;
    st_close(&s);
    free(buf);
    return st;
}
