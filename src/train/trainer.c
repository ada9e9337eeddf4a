/* The trainer: which tensors train (full fine-tuning or LoRA adapters), AdamW with
 * a warm-up + cosine schedule, gradient accumulation and clipping, checkpoints,
 * and the Hugging Face folder the result is written to. The forward and backward
 * passes are grad.c's. */
#include "train.h"
#include "backend.h"
#include "quant.h"
#include "format.h"
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

static bq_status add_param(bq_trainer *t, const char *name, float *w, float *g, int rows, int cols, int decay, float *host)
{
    tparam *np = realloc(t->p, (size_t)(t->np + 1) * sizeof *np);
    if (!np) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    t->p = np;
    tparam *p = &t->p[t->np];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->w = w;
    p->g = g;
    p->host = host == w ? NULL : host;
    p->rows = rows;
    p->cols = cols;
    p->n = (size_t)rows * cols;
    p->decay = decay;
    p->m = t->op->alloc(t->be, p->n);
    p->v = t->op->alloc(t->be, p->n);
    t->np++;
    return p->m && p->v ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory for the optimiser's state of %s", name);
}

/* n zeroed floats of the backend's memory */
static float *zalloc(bq_trainer *t, size_t n) { return t->op->alloc(t->be, n ? n : 1); }

/* The backend's copy of a model array (on the CPU, the array itself). */
static float *mirror(bq_trainer *t, float *host, size_t n, bq_status *st)
{
    if (*st || !host || t->op->host) return host;
    float *d = t->op->alloc(t->be, n);
    if (!d) *st = bq_fail(BQ_ERR_NOMEM, "out of %s memory for the model's weights", t->op->name);
    else *st = t->op->put(t->be, d, host, n);
    return d;
}
static void unmirror(bq_trainer *t, float *d)
{
    if (!t->op->host && d) t->op->release(t->be, d);
}

/* Norm i of the model: the layers' two (2 l, 2 l + 1), then the final one (2 layers). */
static const normp *norm_of(const bq_model *m, int i)
{
    return i == 2 * m->c.layers ? &m->final_ln : i % 2 ? &m->L[i / 2].ln2 : &m->L[i / 2].ln1;
}

static size_t pos_rows(const bq_config *c) { return (size_t)(c->max_pos + c->pos_offset); }

/* A norm's weight (and bias) as parameters named NAME.weight (.bias). */
static bq_status train_norm(bq_trainer *t, tnorm *n, const normp *np, const char *name, int d)
{
    char pn[200];
    if (!(n->gw = zalloc(t, (size_t)d))) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    snprintf(pn, sizeof pn, "%s.weight", name);
    bq_status st = add_param(t, pn, n->w, n->gw, 1, d, 0, np->w);
    if (st || !np->b) return st;
    if (!(n->gb = zalloc(t, (size_t)d))) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    snprintf(pn, sizeof pn, "%s.bias", name);
    return add_param(t, pn, n->b, n->gb, 1, d, 0, np->b);
}

static void release_norm(bq_trainer *t, tnorm *n)
{
    t->op->release(t->be, n->gw);
    t->op->release(t->be, n->gb);
    unmirror(t, n->w);
    unmirror(t, n->b);
}

static bq_status check_arch(const bq_model *m)
{
    const bq_config *c = &m->c;
    const char *why = !c->pre_norm || !c->final_norm ? "post-norm layers"
                      : c->embed_dim != c->hidden || LINEAR_PRESENT(&m->proj_in) ? "embedding projections" : NULL;
    if (why)
        return bq_fail(BQ_ERR_UNSUPPORTED, "fine-tuning covers pre-norm decoders (llama, mistral, qwen2, qwen3, gpt2, opt); '%s' has %s",
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
    for (int i = 0; i < q->nrules; i++)
        if (q->rules[i].mul[0] && strcmp(q->rules[i].mul, "exact"))
            return bq_fail(BQ_ERR_UNSUPPORTED, "multiplication %s (mul) is not trained (exact products only)", q->rules[i].mul);
    const char *w, *a;
    t->qo = q->opts;
    bq_status st = BQ_OK;
    qconfig_resolve(q, "embed_tokens", 0, &w, &a);
    if (*a) return bq_fail(BQ_ERR_ARG, "embed_tokens has no input activation to quantise (a = \"%s\")", a);
    if (*w) st = bq_format_parse(w, &t->embf);  /* the lookup's table; a tied head has its own rule */
    for (int i = 0; i < t->nlin && !st; i++) {
        tlin *L = &t->lin[i];
        if (!LINEAR_PRESENT(L->l)) continue;  /* a non-gated MLP's gate */
        qconfig_resolve(q, i < t->nlin - 1 ? L->l->name : "lm_head", i < t->nlin - 1, &w, &a);
        if (*w) st = bq_format_parse(w, &L->wf);
        if (!st && *a) st = bq_format_parse(a, &L->af);
    }
    if (!st && q->kv[0]) st = qconfig_head_format(t->m->c.head_dim, "kv", q->kv, &t->kvf);
    if (!st && q->attn[0]) st = qconfig_head_format(t->m->c.head_dim, "attn", q->attn, &t->attf);
    /* linears reading one input keep one quantised copy of it for their weight gradients:
     * k and v read q's input, up reads gate's */
    for (int i = 0; i + 1 < t->nlin && !st; i++) {
        int r = i % 7, first = r == R_K || r == R_V ? i - r : r == R_UP ? i - 1 : i;
        const bq_format *a0 = t->lin[first].af, *a1 = t->lin[i].af;
        if (first != i && LINEAR_PRESENT(t->lin[first].l) && (!a0 != !a1 || (a0 && strcmp(a0->name, a1->name))))
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
    if (o->tf32 && o->device <= 0) return bq_fail(BQ_ERR_ARG, "TF32 products (tf32) need a CUDA device");
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
        for (int r = 0; r < 7 && !st; r++)
            if (LINEAR_PRESENT(model_linear(m, l, (lin_role)r))) st = ptq_float_weights((linear *)model_linear(m, l, (lin_role)r));
    if (!st && m->head.w != m->tok_emb) st = ptq_float_weights(&m->head);
    if (st) return st;

    bq_trainer *t = calloc(1, sizeof *t);
    if (!t) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    t->m = m;
    t->o = *o;
    t->o.train = NULL;  /* the caller's string need not outlive the call */
    t->qo = m->qopts;
    t->nlin = c->layers * 7 + 1;
    t->T = o->ctx + 1;
    t->threads = o->threads > 0 ? o->threads : bq_ncores();
    t->lin = calloc((size_t)t->nlin, sizeof *t->lin);
    t->norm = calloc((size_t)c->layers * 2 + 1, sizeof *t->norm);
    if (c->qk_norm) t->qkn = calloc((size_t)c->layers * 2, sizeof *t->qkn);
    if (!t->lin || !t->norm || (c->qk_norm && !t->qkn)) { bq_trainer_free(t); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    for (int l = 0; l < c->layers; l++)
        for (int r = 0; r < 7; r++) t->lin[l * 7 + r].l = (linear *)model_linear(m, l, (lin_role)r);
    t->lin[t->nlin - 1].l = &m->head;
    if ((st = set_formats(t, q))) { bq_trainer_free(t); return st; }
    t->qo.threads = t->threads;  /* the quantisers' bits do not depend on it either */

    /* the backend, with the rotary tables of the window's positions */
    int half = c->head_dim / 2;
    float *rc = malloc(((size_t)t->T * half + 1) * sizeof *rc), *rs = malloc(((size_t)t->T * half + 1) * sizeof *rs);
    if (!rc || !rs) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int p = 0; !st && p < t->T; p++)
        for (int i = 0; i < half; i++) {
            float ang = rope_angle(c, i, p);
            rc[(size_t)p * half + i] = cosf(ang);
            rs[(size_t)p * half + i] = sinf(ang);
        }
    if (!st) st = o->device > 0 ? tr_cuda_new(o->device - 1, t->T, half, rc, rs, o->tf32, &t->be)
                                : tr_cpu_new(t->threads, t->T, half, rc, rs, &t->be);
    free(rc);
    free(rs);
    if (st) { bq_trainer_free(t); return st; }
    t->op = t->be->ops;

    /* the model's tensors where the backend reads them */
    int tied = m->head.w == m->tok_emb, H = c->hidden;
    t->emb = mirror(t, m->tok_emb, (size_t)c->vocab * H, &st);
    t->pos = mirror(t, m->pos_emb, pos_rows(c) * H, &st);
    for (int i = 0; i <= 2 * c->layers; i++) {
        const normp *np = norm_of(m, i);
        t->norm[i].w = mirror(t, np->w, (size_t)H, &st);
        t->norm[i].b = mirror(t, np->b, (size_t)H, &st);
    }
    for (int i = 0; c->qk_norm && i < 2 * c->layers; i++)
        t->qkn[i].w = mirror(t, model_norm(m, i / 2, i % 2 ? N_K : N_Q)->w, (size_t)c->head_dim, &st);
    for (int i = 0; i < t->nlin; i++) {
        tlin *L = &t->lin[i];
        size_t n = (size_t)L->l->out * L->l->in;
        L->w = i == t->nlin - 1 && tied ? t->emb : mirror(t, L->l->w, n, &st);
        L->b = mirror(t, L->l->b, (size_t)L->l->out, &st);
    }
    if (st) { bq_trainer_free(t); return st; }

    /* parameters */
    uint64_t rng = o->seed ^ 0x10a2u;
    char name[160];
    if (roles & (TR_EMB | (tied ? TR_HEAD : 0))) {
        if (!(t->g_emb = zalloc(t, (size_t)c->vocab * H))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        if (!st) st = add_param(t, "model.embed_tokens.weight", t->emb, t->g_emb, c->vocab, H, 1, m->tok_emb);
    }
    if (!st && (roles & TR_EMB) && t->pos) {
        if (!(t->g_pos = zalloc(t, pos_rows(c) * H))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        if (!st) st = add_param(t, "model.embed_positions.weight", t->pos, t->g_pos, (int)pos_rows(c), H, 1, m->pos_emb);
    }
    if (!st && (roles & TR_NORMS)) {
        /* the layers' norms in order, then Qwen3's per-head ones, then the final norm */
        for (int i = 0; i < 2 * c->layers && !st; i++) {
            snprintf(name, sizeof name, "model.layers.%d.%s", i / 2, i % 2 ? "post_attention_layernorm" : "input_layernorm");
            st = train_norm(t, &t->norm[i], norm_of(m, i), name, H);
        }
        for (int i = 0; c->qk_norm && i < 2 * c->layers && !st; i++) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.%s", i / 2, i % 2 ? "k_norm" : "q_norm");
            st = train_norm(t, &t->qkn[i], model_norm(m, i / 2, i % 2 ? N_K : N_Q), name, c->head_dim);
        }
        if (!st) st = train_norm(t, &t->norm[2 * c->layers], norm_of(m, 2 * c->layers), "model.norm", H);
    }
    int maxr = 0;
    for (int i = 0; i < t->nlin && !st; i++) {
        tlin *L = &t->lin[i];
        linear *l = L->l;
        if (!LINEAR_PRESENT(l)) continue;
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
        else if (full && !(L->gw = zalloc(t, n))) { st = bq_fail(BQ_ERR_NOMEM, "out of memory"); break; }
        char pn[200];
        if (full && !(head && tied)) {
            snprintf(pn, sizeof pn, "%s.weight", name);
            st = add_param(t, pn, L->w, L->gw, l->out, l->in, 1, l->w);
            if (!st && l->b) {
                if (!(L->gb = zalloc(t, (size_t)l->out))) { st = bq_fail(BQ_ERR_NOMEM, "out of memory"); break; }
                snprintf(pn, sizeof pn, "%s.bias", name);
                st = add_param(t, pn, L->b, L->gb, 1, l->out, 0, l->b);
            }
        }
        if (!st && L->lora) {
            int r = L->lora;
            maxr = r > maxr ? r : maxr;
            L->A = zalloc(t, (size_t)r * l->in);
            L->B = zalloc(t, (size_t)l->out * r);
            L->gA = zalloc(t, (size_t)r * l->in);
            L->gB = zalloc(t, (size_t)l->out * r);
            float *a0 = malloc((size_t)r * l->in * sizeof *a0);
            if (!L->A || !L->B || !L->gA || !L->gB || !a0) { free(a0); st = bq_fail(BQ_ERR_NOMEM, "out of memory"); break; }
            /* as the LoRA paper's reference code: A uniform in +-1/sqrt(in), B zero (training
             * starts at the base weights) */
            float bound = 1.0f / sqrtf((float)l->in);
            for (size_t k = 0; k < (size_t)r * l->in; k++)
                a0[k] = bound * (float)((double)(bq_splitmix(&rng) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
            st = t->op->put(t->be, L->A, a0, (size_t)r * l->in);
            free(a0);
            snprintf(pn, sizeof pn, "%s.lora_A", name);
            if (!st) st = add_param(t, pn, L->A, L->gA, r, l->in, 1, NULL);
            snprintf(pn, sizeof pn, "%s.lora_B", name);
            if (!st) st = add_param(t, pn, L->B, L->gB, l->out, r, 1, NULL);
        }
        /* what the forward multiplies by: its own buffer when quantised or adapted */
        if (!st && (L->wf || L->lora)) {
            if (!(L->wq = zalloc(t, n))) st = bq_fail(BQ_ERR_NOMEM, "out of memory for %s's quantised copy", name);
        } else L->wq = L->w;
    }
    if (!st && t->embf && !(t->embq = zalloc(t, (size_t)c->vocab * H)))
        st = bq_fail(BQ_ERR_NOMEM, "out of memory for the quantised embedding");
    if (!st && !t->np) st = bq_fail(BQ_ERR_ARG, "nothing to train");

    /* activations and scratch */
    if (!st) {
        size_t na = train_act_floats(c, t->T), ns = train_scratch_floats(c, t->T);
        t->acts = zalloc(t, na);
        t->scratch = zalloc(t, ns);
        t->lr_tmp = zalloc(t, 2 * (size_t)t->T * (maxr ? maxr : 1));
        if (!t->acts || !t->scratch || !t->lr_tmp)
            st = bq_fail(BQ_ERR_NOMEM, "out of %s memory for the activations of %d-token windows (%.1f GB)", t->op->name, t->T,
                         (double)(na + ns) * 4e-9);
    }
    if (st) { bq_trainer_free(t); return st; }
    *out = t;
    return BQ_OK;
}

void bq_trainer_free(bq_trainer *t)
{
    if (!t) return;
    if (t->be) {
        const tr_ops *op = t->op;
        tr_be *b = t->be;
        int tied = t->m->head.w == t->m->tok_emb;
        for (int i = 0; i < t->nlin; i++) {
            tlin *L = &t->lin[i];
            if (L->wq != L->w) op->release(b, L->wq);
            if (L->gw != t->g_emb) op->release(b, L->gw);
            op->release(b, L->gb);
            op->release(b, L->A); op->release(b, L->B); op->release(b, L->gA); op->release(b, L->gB);
            if (!(i == t->nlin - 1 && tied)) unmirror(t, L->w);
            unmirror(t, L->b);
        }
        for (int i = 0; i < t->np; i++) { op->release(b, t->p[i].m); op->release(b, t->p[i].v); }
        for (int i = 0; t->norm && i <= t->m->c.layers * 2; i++) release_norm(t, &t->norm[i]);
        for (int i = 0; t->qkn && i < t->m->c.layers * 2; i++) release_norm(t, &t->qkn[i]);
        op->release(b, t->g_emb);
        op->release(b, t->g_pos);
        op->release(b, t->embq);
        unmirror(t, t->emb);
        unmirror(t, t->pos);
        op->release(b, t->acts);
        op->release(b, t->scratch);
        op->release(b, t->lr_tmp);
        op->destroy(b);
    }
    for (int i = 0; i < t->nlin && t->lin; i++) {
        bq_format_free(t->lin[i].wf);
        bq_format_free(t->lin[i].af);
    }
    free(t->norm);
    free(t->qkn);
    free(t->p);
    free(t->lin);
    bq_format_free(t->kvf);
    bq_format_free(t->attf);
    bq_format_free(t->embf);
    free(t);
}

float train_lora_scale(const bq_trainer *t) { return (float)((t->o.lora_alpha > 0 ? t->o.lora_alpha : t->o.lora) / t->o.lora); }

bq_status train_param_get(const bq_trainer *t, int i, int which, float *host)
{
    const tparam *p = &t->p[i];
    const float *src[4] = {p->w, p->g, p->m, p->v};
    return t->op->get(t->be, host, src[which], p->n);
}

/* dst (a linear's out x in weights on the backend) += s B A, its adapters' product */
static void lora_add(const bq_trainer *t, const tlin *L, float *dst)
{
    const linear *l = L->l;
    t->op->gemm(t->be, 0, 0, l->out, l->in, L->lora, train_lora_scale(t), L->B, L->lora, L->A, l->in, 1.0f, dst, l->in);
}

bq_status train_prepare(bq_trainer *t)
{
    const tr_ops *op = t->op;
    if (t->embf) {  /* the lookup reads q(E); its gradient reaches E straight through */
        bq_status st = op->qdq(t->be, t->embf, t->emb, t->embq, (size_t)t->m->c.vocab, (size_t)t->m->c.hidden, &t->qo);
        if (st) return st;
    }
    for (int i = 0; i < t->nlin; i++) {
        tlin *L = &t->lin[i];
        linear *l = L->l;
        if (L->wq == L->w) continue;
        const float *src = L->w;
        size_t n = (size_t)l->out * l->in;
        int inside = L->lora && !t->o.lora_beside, beside = L->lora && t->o.lora_beside;
        if (inside) {  /* W + s B A, then quantised */
            op->copy(t->be, L->wq, L->w, n);
            lora_add(t, L, L->wq);
            src = L->wq;
        }
        if (L->wf) {
            bq_status st = op->qdq(t->be, L->wf, src, L->wq, (size_t)l->out, (size_t)l->in, &t->qo);
            if (st) return st;
        } else if (beside) op->copy(t->be, L->wq, L->w, n);
        if (beside)  /* q(W) + s B A: the gradient of the sum is the adapters' as it is W_eff's */
            lora_add(t, L, L->wq);
    }
    return op->status(t->be);
}

void train_zero_grads(bq_trainer *t)
{
    for (int i = 0; i < t->np; i++) t->op->zero(t->be, t->p[i].g, t->p[i].n);
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

/* The model's arrays follow the parameters the backend updated (nothing to do on the CPU). */
static bq_status sync_host(const bq_trainer *t)
{
    bq_status st = BQ_OK;
    for (int i = 0; i < t->np && !st; i++)
        if (t->p[i].host) st = t->op->get(t->be, t->p[i].host, t->p[i].w, t->p[i].n);
    return st;
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
    double nrm = 0, part;
    for (int i = 0; i < t->np; i++) {
        if ((st = t->op->sumsq(t->be, t->p[i].g, t->p[i].n, &part))) return st;
        nrm += part;
    }
    nrm = sqrt(nrm);
    if (!isfinite(nrm))
        return bq_fail(BQ_ERR_NONFINITE, "step %ld: the gradient is not finite; the weights are those of step %ld",
                       t->step + 1, t->step);
    /* AdamW (decoupled weight decay on matrices) */
    long k = t->step + 1;
    tr_adam ad = {(float)bq_trainer_lr(t, t->step), (float)t->o.beta1, (float)t->o.beta2, (float)t->o.eps,
                  (float)(1.0 - pow(t->o.beta1, (double)k)), (float)(1.0 - pow(t->o.beta2, (double)k)),
                  (float)t->o.weight_decay, t->o.clip_norm > 0 && nrm > t->o.clip_norm ? (float)(t->o.clip_norm / nrm) : 1.0f};
    for (int i = 0; i < t->np; i++) {
        tparam *p = &t->p[i];
        t->op->adamw(t->be, p->w, p->g, p->m, p->v, p->n, &ad, p->decay);
    }
    if ((st = sync_host(t)) || (st = t->op->status(t->be))) return st;
    t->step++;
    return BQ_OK;
}

bq_status bq_trainer_merge(bq_trainer *t)
{
    const tr_ops *op = t->op;
    bq_status st = BQ_OK;
    for (int i = 0; i < t->nlin && !st; i++) {
        tlin *L = &t->lin[i];
        if (!L->lora) continue;
        linear *l = L->l;
        size_t na = (size_t)l->out * L->lora, nb = (size_t)L->lora * l->in;
        if (t->o.lora_beside) {  /* y += (q(x) A^T)(s B)^T: the LoRC term (lr_b = A, lr_a = s B) */
            float *fa = malloc(na * sizeof *fa), *fb = malloc(nb * sizeof *fb);
            if (!fa || !fb) { free(fa); free(fb); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
            st = op->get(t->be, fa, L->B, na);
            if (!st) st = op->get(t->be, fb, L->A, nb);
            if (st) { free(fa); free(fb); return st; }
            float s = train_lora_scale(t);
            for (size_t k = 0; k < na; k++) fa[k] *= s;
            free(l->lr_a); free(l->lr_b);
            l->lr_a = fa;
            l->lr_b = fb;
            l->lr_rank = L->lora;
            continue;  /* the adapters train on from where they are */
        }
        lora_add(t, L, L->w);
        if (L->w != l->w) st = op->get(t->be, l->w, L->w, (size_t)l->out * l->in);
        /* the adapters start again from zero, so W + s B A is unchanged */
        op->zero(t->be, L->B, na);
        for (int k = 0; k < t->np; k++)
            if (t->p[k].w == L->B) {
                op->zero(t->be, t->p[k].m, t->p[k].n);
                op->zero(t->be, t->p[k].v, t->p[k].n);
            }
    }
    return st ? st : op->status(t->be);
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
    if (t->attf) snprintf(s + strlen(s), n - strlen(s), " attn=%s", t->attf->name);
}

/* A checkpoint holds each trainable tensor, then AdamW's two moments of it. */
static const char *const STATE_SUFFIX[3] = {"", ".adam_m", ".adam_v"};
static void state_name(const tparam *p, int k, char *out, size_t n) { snprintf(out, n, "%s%s", p->name, STATE_SUFFIX[k]); }

bq_status bq_trainer_save_state(const bq_trainer *t, const char *path)
{
    size_t nt = (size_t)t->np * 3;
    st_out *ts = calloc(nt, sizeof *ts);
    char (*names)[176] = calloc(nt, sizeof *names);
    float **copies = calloc(nt, sizeof *copies);  /* host copies of a device's tensors */
    bq_status st = ts && names && copies ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int i = 0; i < t->np && !st; i++) {
        const tparam *p = &t->p[i];
        const float *src[3] = {p->w, p->m, p->v};
        for (int k = 0; k < 3 && !st; k++) {
            if (!t->op->host) {
                if (!(copies[3 * i + k] = malloc(p->n * sizeof(float)))) { st = bq_fail(BQ_ERR_NOMEM, "out of memory"); break; }
                st = t->op->get(t->be, copies[3 * i + k], src[k], p->n);
                src[k] = copies[3 * i + k];
            }
            state_name(p, k, names[3 * i + k], sizeof names[0]);
            ts[3 * i + k] = (st_out){names[3 * i + k], src[k], 2, {p->rows, p->cols}};
        }
    }
    char sig[1024], step[32];
    signature(t, sig, sizeof sig);
    snprintf(step, sizeof step, "%ld", t->step);
    const char *meta[] = {"format", "blockq-trainer-1", "step", step, "options", sig, NULL};
    if (!st) st = st_write_f32(path, ts, nt, meta);
    for (size_t k = 0; copies && k < nt; k++) free(copies[k]);
    free(copies);
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
            float *h = t->op->host ? dst[k] : malloc(p->n * sizeof *h);
            if (!x || x->dt != DT_F32 || x->numel != p->n)
                st = bq_fail(BQ_ERR_SHAPE, "%s: tensor '%s' is missing or not %zu float32 values", path, name, p->n);
            else if (!h) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
            else {
                st_to_f32(x, h);
                st = t->op->put(t->be, dst[k], h, p->n);
            }
            if (h != dst[k]) free(h);
        }
    }
    if (!st) st = sync_host(t);
    if (!st) t->step = step;
    st_close(&s);
    free(buf);
    return st;
}
