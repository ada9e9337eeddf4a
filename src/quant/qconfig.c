/* Quantisation configs: command-line roles and TOML files become one ordered
 * list of rules; bq_model_quantize applies them to a loaded model.
 *
 * Rule names are the engine's uniform linear names:
 *   layers.N.self_attn.{q,k,v,o}_proj   layers.N.mlp.{gate,up,down}_proj
 *   lm_head   embed_tokens
 * The "default" rule (and the wq/aq roles) covers the linears inside the blocks only;
 * the LM head and the embedding are float unless a rule names them. */
#include "model.h"
#include "quant.h"
#include "pmat.h"
#include "qkern.h"
#include "lmul.h"
#include "backend.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

/* '*' and '?' globbing in linear time: on a mismatch, only the latest '*' is
 * retried one character further (earlier stars can never do better). */
int glob_match(const char *p, const char *s)
{
    const char *star = NULL, *retry = NULL;
    while (*s) {
        if (*p == '*') { star = p++; retry = s; }
        else if (*p == '?' || *p == *s) { p++; s++; }
        else if (star) { p = star + 1; s = ++retry; }
        else return 0;
    }
    while (*p == '*') p++;
    return !*p;
}

bq_status bq_qconfig_new(bq_qconfig **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory");
}

void bq_qconfig_free(bq_qconfig *q)
{
    if (!q) return;
    calib_free(q->calib);
    free(q->cal_ids);
    free(q->rules);
    free(q);
}


bq_status qconfig_head_format(int head_dim, const char *role, const char *name, bq_format **out)
{
    bq_status st = bq_format_parse(name, out);
    if (st) return st;
    bq_format_info in;
    bq_format_get_info(*out, &in);
    if (in.block <= head_dim) return BQ_OK;
    bq_format_free(*out);
    *out = NULL;
    return bq_fail(BQ_ERR_SHAPE, "%s %s: blocks of %d exceed head_dim %d (K is blocked along head_dim)", role, name, in.block,
                   head_dim);
}

static bq_status check_format(const char *name, const char *where)
{
    bq_format *f;
    if (bq_format_parse(name, &f)) return bq_fail(BQ_ERR_FORMAT, "%s: %s", where, bq_last_error());
    bq_format_free(f);
    return BQ_OK;
}

static bq_status add_rule(bq_qconfig *q, const char *pat, const char *w, const char *a, int line)
{
    if (strlen(pat) >= sizeof q->rules[0].pattern) return bq_fail(BQ_ERR_ARG, "pattern '%.40s...' is too long", pat);
    if (!(q->nrules & (q->nrules - 1))) {  /* 0, 1, 2, 4, ...: double */
        qrule *r = realloc(q->rules, (size_t)(q->nrules ? 2 * q->nrules : 1) * sizeof *r);
        if (!r) return bq_fail(BQ_ERR_NOMEM, "out of memory");
        q->rules = r;
    }
    qrule *n = &q->rules[q->nrules++];
    memset(n, 0, sizeof *n);
    snprintf(n->pattern, sizeof n->pattern, "%s", pat);
    if (w) snprintf(n->w, sizeof n->w, "%s", w);
    if (a) snprintf(n->a, sizeof n->a, "%s", a);
    n->line = line;
    return BQ_OK;
}

bq_status bq_qconfig_add_rule(bq_qconfig *q, const char *pattern, const char *w, const char *a)
{
    bq_status st = BQ_OK;
    if (w && *w && !(st = check_format(w, pattern)) && strlen(w) >= 64) st = bq_fail(BQ_ERR_FORMAT, "format name too long");
    if (!st && a && *a && !(st = check_format(a, pattern)) && strlen(a) >= 64) st = bq_fail(BQ_ERR_FORMAT, "format name too long");
    return st ? st : add_rule(q, pattern, w, a, 0);
}

/* role: wq aq attn kv head emb */
/* "exact", "lmul" or "lmul:L" with L in [1, 23]; 0 if not. */
static int valid_mul(const char *s)
{
    if (!strcmp(s, "exact") || !strcmp(s, "lmul")) return 1;
    char *e;
    long l = strncmp(s, "lmul:", 5) ? 0 : strtol(s + 5, &e, 10);
    return l >= 1 && l <= 23 && !*e;
}

static bq_status add_mul_rule(bq_qconfig *q, const char *pattern, const char *mul, int line)
{
    if (!valid_mul(mul)) return bq_fail(BQ_ERR_ARG, "mul '%s': expected exact, lmul or lmul:L (L in 1..23)", mul);
    bq_status st = add_rule(q, pattern, NULL, NULL, line);
    if (!st) snprintf(q->rules[q->nrules - 1].mul, sizeof q->rules[0].mul, "%s", mul);
    return st;
}

/* Token t is name or name:SEED: 1 (*on set, *seed read), -1 (a bad seed, said), 0 (another name). */
static int seeded(const char *t, const char *name, int *on, uint64_t *seed, const char *where)
{
    size_t n = strlen(name);
    if (strncmp(t, name, n) || (t[n] && t[n] != ':')) return 0;
    *on = 1;
    char *end = NULL;
    if (t[n] && (*seed = strtoull(t + n + 1, &end, 10), !end || *end || end == t + n + 1)) {
        bq_fail(BQ_ERR_ARG, "%s: %s's seed must be a whole number, not '%s'", where, name, t + n + 1);
        return -1;
    }
    return 1;
}

/* ptq LIST: the post-training algorithms, comma-separated; whatever the order
 * given: rotate, smoothquant, awq (all three rescale or rotate channels), then gptq,
 * which clips each group as it goes when clip is also asked for, else clip */
static bq_status set_ptq(bq_qconfig *q, const char *list, const char *where)
{
    int clip = 0, smooth = 0, gptq = 0, awq = 0, rotate = 0, lorc = 0, had = 0, had_kv = 0;
    uint64_t seed = 0, had_seed = 0, kv_seed = 0;
    double alpha = -1;  /* searched */
    int k;
    char buf[128];
    if (strlen(list) >= sizeof buf) return bq_fail(BQ_ERR_ARG, "%s: list too long", where);
    strcpy(buf, list);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (!strcmp(t, "clip")) clip = 1;
        else if (!strcmp(t, "gptq")) gptq = 1;
        else if (!strcmp(t, "gptq:actorder")) gptq = 2;
        else if (!strcmp(t, "awq")) awq = 1;
        else if ((k = seeded(t, "rotate", &rotate, &seed, where)) || (k = seeded(t, "hadamard_kv", &had_kv, &kv_seed, where)) ||
                 (k = seeded(t, "hadamard", &had, &had_seed, where))) {
            if (k < 0) return BQ_ERR_ARG;
        }
        else if (!strcmp(t, "none")) continue;
        else if (!strncmp(t, "lorc", 4) && (!t[4] || t[4] == ':')) {
            char *end = NULL;
            long r = t[4] ? strtol(t + 5, &end, 10) : 8;
            if (t[4] && (!end || *end || end == t + 5)) r = 0;
            if (r < 1 || r > 4096) return bq_fail(BQ_ERR_ARG, "%s: lorc's rank must be a whole number in [1, 4096], not '%s'", where, t[4] ? t + 5 : "");
            lorc = (int)r;
        }
        else if (!strncmp(t, "smoothquant", 11) && (!t[11] || t[11] == ':')) {
            smooth = 1;
            char *end = NULL;
            if (t[11] && (alpha = strtod(t + 12, &end), !end || *end || end == t + 12 || !(alpha >= 0 && alpha <= 1)))
                return bq_fail(BQ_ERR_ARG, "%s: smoothquant's alpha must be a number in [0, 1], not '%s'", where, t + 12);
        } else
            return bq_fail(BQ_ERR_ARG, "%s: unknown post-training algorithm '%s' (this blockq has: rotate[:seed], hadamard[:seed], hadamard_kv[:seed], smoothquant[:alpha], awq, gptq[:actorder], clip, lorc[:rank], none)", where, t);
    }
    q->ptq_clip = clip;
    q->ptq_rotate = rotate;
    q->rotate_seed = seed;
    q->ptq_hadamard = had;
    q->hadamard_seed = had_seed;
    q->ptq_hadamard_kv = had_kv;
    q->hadamard_kv_seed = kv_seed;
    q->ptq_gptq = gptq;
    q->ptq_awq = awq;
    q->ptq_smooth = smooth;
    q->smooth_alpha = alpha;
    q->ptq_lorc = lorc;
    return BQ_OK;
}

bq_status bq_qconfig_set(bq_qconfig *q, const char *role, const char *format)
{
    if (!strcmp(role, "mul")) return add_mul_rule(q, "default", format, 0);
    if (!strcmp(role, "ptq")) return set_ptq(q, format, "ptq");
    char where[64];
    snprintf(where, sizeof where, "%s", role);
    bq_status st = check_format(format, where);
    if (st) return st;
    if (strlen(format) >= 64) return bq_fail(BQ_ERR_FORMAT, "%s: format name too long", where);
    if (!strcmp(role, "wq")) return add_rule(q, "default", format, NULL, 0);
    if (!strcmp(role, "aq")) return add_rule(q, "default", NULL, format, 0);
    if (!strcmp(role, "head")) return add_rule(q, "lm_head", format, format, 0);
    if (!strcmp(role, "emb")) return add_rule(q, "embed_tokens", format, NULL, 0);
    if (!strcmp(role, "attn")) { snprintf(q->attn, sizeof q->attn, "%s", format); return BQ_OK; }
    if (!strcmp(role, "kv")) { snprintf(q->kv, sizeof q->kv, "%s", format); return BQ_OK; }
    return bq_fail(BQ_ERR_ARG, "unknown role '%s' (wq, aq, attn, kv, head, emb, mul)", role);
}

void bq_qconfig_set_round(bq_qconfig *q, bq_round r, uint64_t seed)
{
    q->opts.round = r;
    q->opts.seed = seed;
}


bq_status bq_qconfig_load(bq_qconfig *q, const char *path)
{
    void *src;
    size_t n;
    bq_status st = bq_read_file(path, &src, &n);
    if (st) return st;
    st = qconfig_parse(q, src, n, path);
    free(src);
    return st;
}

bq_status qconfig_parse(bq_qconfig *q, const char *src, size_t n, const char *path)
{
    tdoc d;
    bq_status st = toml_parse(src, n, path, &d);
    if (st) return st;
    snprintf(q->source, sizeof q->source, "%s", path);
    char where[300];
    for (int i = 0; i < d.n && !st; i++) {
        tkv *e = &d.items[i];
        snprintf(where, sizeof where, "%s:%d", path, e->line);
        if (!strcmp(e->key, "round")) {
            int k = -1;
            for (int r = 0; r < 4; r++)
                if (e->kind == TV_STR && !strcmp(e->s, BQ_ROUND_NAMES[r])) k = r;
            if (k < 0) st = bq_fail(BQ_ERR_PARSE, "%s: round must be \"rne\", \"away\", \"zero\" or \"stochastic\"", where);
            else q->opts.round = (bq_round)k;
        } else if (!strcmp(e->key, "seed")) {
            if (e->kind != TV_INT || e->i < 0) st = bq_fail(BQ_ERR_PARSE, "%s: seed must be a non-negative integer", where);
            else q->opts.seed = (uint64_t)e->i;
        } else if (!strcmp(e->key, "mul")) {
            if (e->kind != TV_STR) st = bq_fail(BQ_ERR_PARSE, "%s: mul must be \"exact\", \"lmul\" or \"lmul:L\"", where);
            else if ((st = add_mul_rule(q, "default", e->s, e->line))) st = bq_fail(st, "%s: %s", where, bq_last_error());
        } else if (!strcmp(e->key, "ptq")) {
            if (e->kind != TV_STR) st = bq_fail(BQ_ERR_PARSE, "%s: ptq must be a string (\"clip\", \"gptq\", \"awq\", \"smoothquant\", \"rotate\")", where);
            else st = set_ptq(q, e->s, where);
        } else if (!strcmp(e->key, "attn") || !strcmp(e->key, "kv")) {
            if (e->kind != TV_STR) st = bq_fail(BQ_ERR_PARSE, "%s: %s must be a format name string", where, e->key);
            else if (!(st = check_format(e->s, where)))
                snprintf(!strcmp(e->key, "attn") ? q->attn : q->kv, 64, "%s", e->s);
        } else {
            /* "pattern" = { w = "...", a = "..." }  (or default = {...}) */
            if (e->kind != TV_TABLE) {
                st = bq_fail(BQ_ERR_PARSE, "%s: '%s' must be { w = \"FORMAT\", a = \"FORMAT\" }", where, e->key);
                break;
            }
            const char *w = NULL, *a = NULL, *mul = NULL;
            for (int j = 0; j < e->nitems && !st; j++) {
                tkv *f = &e->items[j];
                if (!strcmp(f->key, "mul") && f->kind == TV_STR && valid_mul(f->s)) mul = f->s;
                else if ((strcmp(f->key, "w") && strcmp(f->key, "a")) || f->kind != TV_STR)
                    st = bq_fail(BQ_ERR_PARSE, "%s: only w = \"FORMAT\", a = \"FORMAT\" and mul = \"exact|lmul|lmul:L\" are allowed in a rule", where);
                else if (!(st = check_format(f->s, where))) *(f->key[0] == 'w' ? &w : &a) = f->s;
            }
            if (!st && strlen(e->key) >= 128) st = bq_fail(BQ_ERR_PARSE, "%s: pattern too long", where);
            if (!st && ((w && strlen(w) >= 64) || (a && strlen(a) >= 64))) st = bq_fail(BQ_ERR_PARSE, "%s: format name too long", where);
            if (!st) st = add_rule(q, e->key, w, a, e->line);
            if (!st && mul) snprintf(q->rules[q->nrules - 1].mul, sizeof q->rules[0].mul, "%s", mul);
        }
    }
    toml_free(&d);
    return st;
}

/* ---- applying a config to a model ---- */

/* rows of float32 holding bf16 values -> little-endian bf16 bytes; ok[i] = 0 where a
 * row's values are not bf16 numbers */
typedef struct { const float *w; uint8_t *out; int cols; unsigned char *ok; } bf16_job;

static void to_bf16_range(void *arg, size_t r0, size_t r1)
{
    const bf16_job *j = arg;
    for (size_t r = r0; r < r1; r++) {
        size_t at = r * (size_t)j->cols;
        j->ok[r] = f32_top_halves(j->w + at, (size_t)j->cols, j->out + 2 * at) == 0;
    }
}

/* *w as a bf16 matrix in *pw (freeing *w) if every value is a bf16 number; else
 * unchanged. Rows over all cores: every weight of a held checkpoint passes here. */
static bq_status hold_bf16(float **w, pmat **pw, int rows, int cols)
{
    size_t n = (size_t)rows * cols;
    bq_format *f;
    bq_status st = bq_format_parse("bf16", &f);
    if (st) return st;
    size_t hb = pack_header_bytes(f);
    uint8_t *buf = calloc(hb + 2 * n, 1);
    unsigned char *ok = malloc((size_t)rows);
    if (!buf || !ok) { free(buf); free(ok); bq_format_free(f); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    bf16_job j = {*w, buf + hb, cols, ok};
    bq_parallel_for((size_t)rows, n < (1u << 20) ? 1 : 0, to_bf16_range, &j);
    int all = 1;
    for (int r = 0; r < rows; r++) all &= ok[r];
    free(ok);
    if (!all) { free(buf); bq_format_free(f); return BQ_OK; }  /* not bf16 numbers: stays float32 */
    st = pmat_new(f, rows, cols, buf, hb + 2 * n, pw);
    free(buf);
    bq_format_free(f);
    if (!st) { free(*w); *w = NULL; }
    return st;
}

/* The linear's weights as float32 (a held 16-bit matrix is widened, exactly). */
bq_status ptq_float_weights(linear *l)
{
    if (l->w) return BQ_OK;
    if (!pmat_is_float16(l->pw))
        return bq_fail(BQ_ERR_ARG, "%s is already packed as %s; transform the float model", l->name, l->pw->f->name);
    return pmat_widen(&l->pw, &l->w);
}

bq_status ptq_float_embedding(bq_model *m)
{
    if (!pmat_is_float16(m->emb_p)) return BQ_OK;
    int tied = m->head.pw == m->emb_p;
    bq_status st = pmat_widen(&m->emb_p, &m->tok_emb);
    if (!st && tied) { m->head.pw = NULL; m->head.w = m->tok_emb; }
    return st;
}

bq_status ptq_untie_head(bq_model *m)
{
    size_t n = (size_t)m->c.vocab * m->c.embed_dim;
    float *copy = malloc(n * sizeof *copy);
    if (!copy) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    memcpy(copy, m->tok_emb, n * sizeof *copy);
    m->head.w = copy;
    return BQ_OK;
}

/* What the post-training algorithms get for one weight: calibration's mean squares
 * and Gram matrix of its input (NULL: none), and where GPTQ runs (calibration's device). */
typedef struct { int clip, gptq; const double *imp, *gram; int lorc; linear *l; int device; double *damp; } ptq_in;

/* Quantise one weight matrix: in place (fake quantisation) or into a packed
 * matrix that replaces the float one. An already packed weight can only be
 * asked for the format it holds. */
static bq_status apply_w(float **w, pmat **pw, int rows, int cols, const char *fmt, const bq_qopts *o,
                         const char *name, int pack, ptq_in p)
{
    bq_format *f;
    bq_status st = bq_format_parse(fmt, &f);
    if (st) return st;
    bq_format_info in;
    bq_format_get_info(f, &in);
    int held = 0, held16 = *pw && strcmp((*pw)->f->name, f->name) && pmat_is_float16(*pw);
    /* plain rounding of a held 16-bit matrix: a few rows at a time, straight back to
     * bf16 or packed (the same values as the route below, without its float32 copy).
     * Not for formats with a tensor header (its factor needs the whole tensor: a
     * per-tensor int scale, NVFP4's s_t) nor stochastic rounding (noise indexed over it). */
    int rows_alone = !pack_header_bytes(f) && (!o || o->round != BQ_ROUND_STOCHASTIC);
    if (held16 && !p.gptq && !p.clip && !(p.lorc && p.l) && in.block <= cols && rows_alone) {
        pmat *q = NULL;
        if ((st = pack ? pmat_pack16(f, *pw, o, &q) : pmat_qdq16(f, *pw, o, &q)))
            st = bq_fail(st, "%s: %s", name, bq_last_error());
        if (st || q) {
            if (q) { pmat_free(*pw); *pw = q; }
            bq_format_free(f);
            return st;
        }
    }
    if (held16) {
        /* a checkpoint held in bf16/fp16: widened exactly, then quantised as from float32 */
        if ((st = pmat_widen(pw, w))) { bq_format_free(f); return st; }
        held = 1;
    }
    float *w0 = NULL;  /* lorc: the float weights, for the error the quantisation leaves */
    if (p.lorc && p.l && *w) {
        if (!(w0 = malloc((size_t)rows * cols * sizeof *w0))) { bq_format_free(f); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
        memcpy(w0, *w, (size_t)rows * cols * sizeof *w0);
    }
    if (*pw) {
        if (strcmp((*pw)->f->name, f->name))
            st = bq_fail(BQ_ERR_ARG, "%s: weights are stored packed as %s; cannot requantise them to %s", name,
                         (*pw)->f->name, fmt);
    } else if (in.block > cols) {
        st = bq_fail(BQ_ERR_SHAPE, "%s: format %s has blocks of %d but the reduction dimension is %d", name, fmt,
                     in.block, cols);
    } else if (p.gptq && !p.gram) {
        st = bq_fail(BQ_ERR_ARG, "%s: gptq needs the Gram matrix of its input (calibrate with gptq asked for)", name);
    } else if (p.gptq && (st = ptq_gptq(f, *w, rows, cols, p.gram, (p.clip ? PTQ_GPTQ_CLIP : 0) | (p.gptq == 2 ? PTQ_GPTQ_ACTORDER : 0),
                                        o, p.device, p.damp))) {  /* updated: the last rounding follows */
        st = bq_fail(st, "%s: %s", name, bq_last_error());
    } else if (!p.gptq && p.clip && (st = ptq_clip(f, *w, rows, cols, p.imp, o))) {  /* clamped: the scales follow */
        st = bq_fail(st, "%s: %s", name, bq_last_error());
    } else if (!pack) {
        st = bq_qdq(f, *w, *w, (size_t)rows, (size_t)cols, o);
        /* held weights stay held: values that are bf16 numbers (MX, BFP, minifloat
         * formats) go back to bf16, losslessly, instead of taking twice the memory */
        if (!st && held) st = hold_bf16(w, pw, rows, cols);
    } else {
        if ((st = pmat_pack(f, *w, rows, cols, o, pw))) st = bq_fail(st, "%s: %s", name, bq_last_error());
        else {
            free(*w);
            *w = NULL;
        }
    }
    if (!st && p.lorc && p.l && !w0)
        st = bq_fail(BQ_ERR_ARG, "%s: lorc needs the float weights, and these are stored packed as %s", name, f->name);
    if (!st && w0) st = ptq_lorc(p.l, w0, p.lorc);
    free(w0);
    bq_format_free(f);
    return st;
}

/* One layer linear's weight and input formats, quantised by a worker. */
typedef struct { linear *l; const char *w, *a; ptq_in p; bq_status st; char err[512]; double damp; } wjob;
typedef struct { wjob *j; bq_qopts o; int pack; atomic_int failed; } wjobs;

static void wjob_range(void *arg, size_t lo, size_t hi)
{
    wjobs *all = arg;
    for (size_t k = lo; k < hi && !atomic_load(&all->failed); k++) {  /* after an error the rest is not done */
        wjob *j = &all->j[k];
        if (!j->l || !*j->w) continue;
        linear *l = j->l;
        j->st = apply_w(&l->w, &l->pw, l->out, l->in, j->w, &all->o, l->name, all->pack, j->p);
        if (j->st) {
            snprintf(j->err, sizeof j->err, "%s", bq_last_error());  /* the message is the worker's */
            atomic_store(&all->failed, 1);
        }
    }
}

static bq_status set_act(linear *l, const char *fmt)
{
    bq_format_free(l->aq);
    l->aq = NULL;
    if (!*fmt) return BQ_OK;
    bq_status st = bq_format_parse(fmt, &l->aq);
    if (st) return st;
    bq_format_info in;
    bq_format_get_info(l->aq, &in);
    if (in.block > l->in)
        return bq_fail(BQ_ERR_SHAPE, "%s: activation format %s has blocks of %d but the layer's input has %d", l->name,
                       fmt, in.block, l->in);
    return BQ_OK;
}

bq_status ptq_trial_linear(const linear *l, const char *w, const char *a, const bq_qopts *o, linear *out)
{
    *out = *l;
    out->aq = NULL;
    bq_status st = BQ_OK;
    if (l->pw && pmat_is_float16(l->pw)) st = pmat_view_of(l->pw, &out->pw);
    else if (l->w) {
        size_t n = (size_t)l->out * l->in;
        if (!(out->w = malloc(n * sizeof *out->w))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        else memcpy(out->w, l->w, n * sizeof *out->w);
    }  /* else packed: shared, and apply_w refuses any other format */
    if (!st && w && *w) st = apply_w(&out->w, &out->pw, l->out, l->in, w, o, l->name, 0, (ptq_in){0});
    if (!st) st = set_act(out, a ? a : "");
    if (st) ptq_trial_free(l, out);
    return st;
}

void ptq_trial_free(const linear *l, linear *out)
{
    if (out->w != l->w) free(out->w);
    if (out->pw != l->pw) pmat_free(out->pw);
    if (out->aq != l->aq) bq_format_free(out->aq);
    *out = *l;
}

/* Formats a rule set assigns to one name; `is_block` says whether default applies. */
/* The multiplication a linear asks for ("" if no rule says). */
static const char *resolve_mul(const bq_qconfig *q, const char *name, int is_block)
{
    const char *mul = "";
    for (int i = 0; i < q->nrules; i++) {
        const qrule *r = &q->rules[i];
        if (r->mul[0] && (!strcmp(r->pattern, "default") ? is_block : glob_match(r->pattern, name))) mul = r->mul;
    }
    return mul;
}

/* Mantissa bits of an L-Mul operand format (NULL: float32, 23), or an error naming
 * why the format has no floating-point elements under power-of-two scales. */
static bq_status lmul_mbits(const bq_format *f, const char *name, const char *what, int *m)
{
    if (!f || f->el.kind == EK_FP32) { *m = 23; return BQ_OK; }
    const char *why = f->el.kind == EK_INT ? "integer elements" : f->el.kind == EK_LOG ? "logarithmic elements"
                    : scheme_minifloat_scale(f) ? "a block scale that is not a power of two"
                    : format_float_scale(f) ? "an integer scale" : NULL;
    if (why) return bq_fail(BQ_ERR_UNSUPPORTED, "%s: L-Mul is not defined for %s %s (%s)", name, what, f->name, why);
    *m = f->el.mbits;
    return BQ_OK;
}

/* Arm L-Mul on a linear whose weight and input formats are final: the offset is
 * l(m) for the wider operand's mantissa, or the L given. */
static bq_status set_mul(linear *l, const char *mul, const char *wfmt)
{
    if (!strcmp(mul, "exact")) { l->lmul = 0; return BQ_OK; }
    bq_format *wf = NULL;
    bq_status st = l->pw ? BQ_OK : *wfmt ? bq_format_parse(wfmt, &wf) : BQ_OK;
    int mw = 23, ma = 23;
    if (!st) st = lmul_mbits(l->pw ? l->pw->f : wf, l->name, "weights in", &mw);
    if (!st) st = lmul_mbits(l->aq, l->name, "inputs in", &ma);
    bq_format_free(wf);
    if (st) return st;
    l->lmul = mul[4] == ':' ? atoi(mul + 5) : lmul_offset(mw > ma ? mw : ma);
    return BQ_OK;
}

static void resolve(const bq_qconfig *q, const char *name, int is_block, const char **w, const char **a, int *hits)
{
    *w = *a = "";
    for (int i = 0; i < q->nrules; i++) {
        const qrule *r = &q->rules[i];
        int m = !strcmp(r->pattern, "default") ? is_block : glob_match(r->pattern, name);
        if (!m) continue;
        if (hits) hits[i]++;
        if (r->w[0]) *w = r->w;
        if (r->a[0]) *a = r->a;
    }
}

void qconfig_resolve(const bq_qconfig *q, const char *name, int is_block, const char **w, const char **a)
{
    resolve(q, name, is_block, w, a, NULL);
}

const char *qconfig_weight_format(const bq_qconfig *q, const char *name)
{
    const char *w, *a;
    resolve(q, name, 1, &w, &a, NULL);
    return w;
}

/* The algorithms' inputs for linear k (slot k of the calibration, if it was taken on a
 * model of this shape). */
static ptq_in ptq_for(const bq_qconfig *q, const calib_stats *s, int k, linear *l)
{
    int in = l->in;
    ptq_in p = {q->ptq_clip, q->ptq_gptq, NULL, NULL, q->ptq_lorc, l, q->calib_device, NULL};
    if (!s || k >= s->n || s->in[k] != in) return p;
    p.imp = s->msq[k];
    if (s->gram) p.gram = s->gram[calib_gram_slot(s, k)];
    return p;
}

static bq_status quantize(bq_model *m, const bq_qconfig *q, int strict, int pack)
{
    if (!q) return BQ_OK;
    int *hits = calloc((size_t)q->nrules + 1, sizeof *hits);
    if (!hits) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    bq_status st = BQ_OK;
    const bq_qopts *o = &q->opts;
    m->qopts = q->opts;
    /* statistics this call takes (after a rotation) or changes (smoothing, awq: the
     * inputs are rescaled), so the caller's stay as they were */
    calib_stats *own = NULL;
    const calib_stats *cs = q->calib;
    if (qconfig_rotates(q)) {
        if (q->ptq_rotate) st = ptq_rotate(m, q->rotate_seed);
        if (!st && q->ptq_hadamard) st = ptq_hadamard(m, q->hadamard_seed);
        if (!st && q->ptq_hadamard_kv) st = ptq_hadamard_kv(m, q->hadamard_kv_seed);
        if (!st && q->cal_ids) st = calib_run(m, q->cal_ids, q->cal_windows, q->cal_ctx, calib_wants(q), q->calib_device, &own);
        cs = own;
    }
    if (!st && (q->ptq_smooth || q->ptq_awq) && !cs)
        st = bq_fail(BQ_ERR_ARG, "%s needs calibration statistics (bq_qconfig_calibrate)", q->ptq_smooth ? "smoothquant" : "awq");
    if (!st && (q->ptq_smooth || q->ptq_awq) && !own) {
        if (!(own = calib_copy(cs))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        cs = own;
    }
    if (!st && q->ptq_smooth) st = ptq_smooth(m, own, q);
    if (!st && q->ptq_awq) st = ptq_awq(m, own, q);
    const char *w, *a;
    /* the layers' weights: with gptq, linears side by side (each one's work is serial;
     * every linear is computed alone, so the bits do not depend on the threads) */
    size_t nj = (size_t)m->c.layers * 7;
    wjob *jobs = st ? NULL : calloc(nj ? nj : 1, sizeof *jobs);
    if (!st && !jobs) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int i = 0; i < m->c.layers && !st; i++) {
        layer_w *L = &m->L[i];
        linear *ls[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int j = 0; j < 7; j++) {
            if (!LINEAR_PRESENT(ls[j])) continue;
            resolve(q, ls[j]->name, 1, &w, &a, hits);
            int k = calib_index(m->c.layers, i, j);
            jobs[k] = (wjob){ls[j], w, a, ptq_for(q, cs, k, ls[j]), BQ_OK, "", 0};
            jobs[k].p.damp = &jobs[k].damp;
        }
    }
    if (!st) {
        wjobs all = {jobs, *o, pack, 0};
        if (q->ptq_gptq) {
            be_blas_single_thread();
            all.o.threads = 1;
        }
        bq_parallel_for(nj, q->ptq_gptq ? o->threads : 1, wjob_range, &all);
    }
    for (size_t k = 0; k < nj && !st; k++) {
        linear *l = jobs[k].l;
        if (!l) continue;
        if (jobs[k].st) st = bq_fail(jobs[k].st, "%s", jobs[k].err);
        if (!st && jobs[k].damp > 0.0101)  /* after the workers: warnings in the layers' order */
            qconfig_note(q, "warning: %s: gptq: the Hessian of its input is not positive definite with 1%% damping; it took %g%% of its mean diagonal",
                 l->name, 100 * jobs[k].damp);
        if (!st) st = set_act(l, jobs[k].a);
        const char *mul = resolve_mul(q, l->name, 1);
        if (!st && *mul) st = set_mul(l, mul, jobs[k].w);
    }
    free(jobs);
    /* LM head and embedding: untie before quantising either differently */
    const char *hw, *ha, *ew, *ea;
    resolve(q, "lm_head", 0, &hw, &ha, hits);
    resolve(q, "embed_tokens", 0, &ew, &ea, hits);
    if (!st && (*hw || *ew)) st = ptq_float_embedding(m);
    int tied = m->tok_emb && m->head.w == m->tok_emb;
    if (!st && tied && (*hw || *ew) && strcmp(hw, ew) && !(st = ptq_untie_head(m))) tied = 0;
    if (!st && *ew) {
        st = apply_w(&m->tok_emb, &m->emb_p, m->c.vocab, m->c.embed_dim, ew, o, "embed_tokens", pack, (ptq_in){q->ptq_clip, 0, NULL, NULL, 0, NULL, 0, NULL});
        if (!st && tied && m->emb_p) { m->head.w = NULL; m->head.pw = m->emb_p; }
    }
    if (!st && *hw && !tied) st = apply_w(&m->head.w, &m->head.pw, m->head.out, m->head.in, hw, o, "lm_head", pack, ptq_for(q, cs, calib_index(m->c.layers, -1, 0), &m->head));
    if (!st) st = set_act(&m->head, ha);
    if (!st && *ea) st = bq_fail(BQ_ERR_ARG, "embed_tokens has no input activation to quantise (a = \"%s\")", ea);
    const char *roles[2] = {q->attn, q->kv};
    bq_format **dst[2] = {&m->attn_q, &m->kv_q};
    for (int r = 0; r < 2 && !st; r++) {
        bq_format_free(*dst[r]);
        *dst[r] = NULL;
        if (!roles[r][0]) continue;
        st = qconfig_head_format(m->c.head_dim, r ? "kv" : "attn", roles[r], dst[r]);
    }
    /* patterns that matched nothing: a warning, an error with strict */
    for (int i = 0; i < q->nrules && !st; i++) {
        if (hits[i] || !strcmp(q->rules[i].pattern, "default")) continue;
        if (strict)
            st = bq_fail(BQ_ERR_ARG, "%s%s%d: pattern '%s' matches no tensor", q->source, q->rules[i].line ? ":" : "",
                         q->rules[i].line, q->rules[i].pattern);
        else {
            char msg[512];
            snprintf(msg, sizeof msg, "%s:%d: pattern '%s' matches no tensor", q->source, q->rules[i].line, q->rules[i].pattern);
            if (q->warn) q->warn(q->warn_arg, msg);
            else fprintf(stderr, "blockq: warning: %s\n", msg);
        }
    }
    free(hits);
    calib_free(own);
    return st;
}

bq_status bq_model_quantize(bq_model *m, const bq_qconfig *q, int strict) { return quantize(m, q, strict, 0); }
bq_status bq_model_pack(bq_model *m, const bq_qconfig *q, int strict) { return quantize(m, q, strict, 1); }

void qconfig_note(const bq_qconfig *q, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    int n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (q->warn) q->warn(q->warn_arg, msg);
    else fprintf(stderr, "blockq: %s\n", msg);
    free(msg);
}

bq_status qdq_named(const char *fmt, float *x, int rows, int cols, const bq_qopts *o)
{
    bq_format *f;
    bq_status st = bq_format_parse(fmt, &f);
    if (!st) st = bq_qdq(f, x, x, (size_t)rows, (size_t)cols, o);
    bq_format_free(f);
    return st;
}

void bq_qconfig_set_warn(bq_qconfig *q, void (*fn)(void *arg, const char *msg), void *arg)
{
    q->warn = fn;
    q->warn_arg = arg;
}
