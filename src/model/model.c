/* Loading a Hugging Face checkpoint into the uniform in-memory model.
 * Every architecture maps its tensor names onto the same layer layout;
 * linear layers get uniform names (layers.N.self_attn.q_proj, ...). */
#include "model.h"
#include "pmat.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "slots.h"

/* hold: keep bf16/fp16 matrices in their own 16 bits (a packed format whose decode
 * is exact) rather than widening them to float32 at load. */
typedef struct { st_set st; bq_model *m; bq_status err; char names[4][160]; int next; int hold, views; } loader;

/* The file's pages of a tensor already converted leave the resident set (they
 * are read again from the file if ever touched), so loading never holds the
 * mapped checkpoint and its converted copy at once. */
static void release(const st_tensor *t)
{
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t b = ((uintptr_t)t->data + (uintptr_t)pg - 1) & ~(uintptr_t)(pg - 1), e = ((uintptr_t)t->data + t->nbytes) & ~(uintptr_t)(pg - 1);
    if (e > b) madvise((void *)b, e - b, MADV_DONTNEED);
}

/* A formatted tensor name from a ring of 4 buffers (so a call can use several). */
static const char *tname(loader *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *tname(loader *L, const char *fmt, ...)
{
    char *b = L->names[L->next++ % 4];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof L->names[0], fmt, ap);
    va_end(ap);
    return b;
}

/* Fetch tensor `name` as float32 with exactly the given shape (d1 = 0 for 1-D). */
static float *fetch(loader *L, const char *name, int64_t d0, int64_t d1)
{
    if (L->err) return NULL;
    const st_tensor *t = st_find(&L->st, name);
    if (!t) { L->err = bq_fail(BQ_ERR_PARSE, "%s: missing tensor '%s'", L->m->dir, name); return NULL; }
    int ok = d1 ? (t->ndim == 2 && t->shape[0] == d0 && t->shape[1] == d1) : (t->ndim == 1 && t->shape[0] == d0);
    if (!ok) {
        L->err = bq_fail(BQ_ERR_SHAPE, "%s: tensor '%s' has shape [%lld%s%lld], config says [%lld%s%lld]", L->m->dir, name,
                         (long long)t->shape[0], t->ndim > 1 ? ", " : "", t->ndim > 1 ? (long long)t->shape[1] : 0LL,
                         (long long)d0, d1 ? ", " : "", (long long)d1);
        return NULL;
    }
    float *p = malloc(t->numel * sizeof *p);
    if (!p) { L->err = bq_fail(BQ_ERR_NOMEM, "out of memory loading '%s'", name); return NULL; }
    st_to_f32(t, p);
    release(t);
    return p;
}

/* The first NaN/Inf of a held 16-bit tensor, as scan() records it for float32 ones:
 * an exponent field of all ones (bf16 0x7f80, fp16 0x7c00), pieces over all cores. */
enum { SCAN_PIECE = 1 << 20 };
typedef struct { const uint8_t *v; size_t n; unsigned mask; size_t *first; } scan16_job;  /* v: little-endian pairs */

static void scan16_range(void *arg, size_t b, size_t e)
{
    const scan16_job *j = arg;
    for (size_t p = b; p < e; p++) {
        size_t lo = p * SCAN_PIECE, hi = lo + SCAN_PIECE < j->n ? lo + SCAN_PIECE : j->n;
        const uint64_t M = j->mask * 0x0001000100010001ull, ones = 0x0001000100010001ull, tops = 0x8000800080008000ull;
        size_t i = lo;
        for (; i + 4 <= hi; i += 4) {  /* four values a word: a lane of (w & M) ^ M is 0 where all ones */
            uint64_t w, t;
            memcpy(&w, j->v + 2 * i, 8);
            t = (w & M) ^ M;
            if ((t - ones) & ~t & tops) break;  /* some lane is zero: find it below */
        }
        j->first[p] = j->n;
        for (; i < hi; i++)
            if ((((unsigned)j->v[2 * i + 1] << 8 | j->v[2 * i]) & j->mask) == j->mask) { j->first[p] = i; break; }
    }
}

static void scan16(loader *L, const st_tensor *t, const char *name)
{
    if (L->m->nonfinite[0]) return;
    size_t pieces = (t->numel + SCAN_PIECE - 1) / SCAN_PIECE;
    size_t *first = malloc((pieces ? pieces : 1) * sizeof *first);
    if (!first) { L->err = bq_fail(BQ_ERR_NOMEM, "out of memory"); return; }
    unsigned mask = t->dt == DT_BF16 ? 0x7f80 : 0x7c00;
    scan16_job j = {t->data, t->numel, mask, first};
    bq_parallel_for(pieces, pieces > 1 ? 0 : 1, scan16_range, &j);
    for (size_t p = 0; p < pieces; p++)
        if (first[p] < t->numel) {
            unsigned v = (unsigned)j.v[2 * first[p] + 1] << 8 | j.v[2 * first[p]];
            snprintf(L->m->nonfinite, sizeof L->m->nonfinite, "weight '%s' holds %s at index %zu", name,
                     (v & 0x7fffu & ~mask) ? "NaN" : "Inf", first[p]);
            break;
        }
    free(first);
}

/* A matrix [d0, d1]: held in its 16 bits when the loader holds and the file has
 * bf16/fp16, else as float32. */
static void fetch_matrix(loader *L, const char *name, int64_t d0, int64_t d1, float **w, pmat **pw)
{
    const st_tensor *t = L->err ? NULL : st_find(&L->st, name);
    if (!L->hold || !t || t->dt == DT_F32 || t->ndim != 2 || t->shape[0] != d0 || t->shape[1] != d1) {
        *w = fetch(L, name, d0, d1);  /* also every error */
        return;
    }
    scan16(L, t, name);
    bq_format *f;
    if (L->err || (L->err = bq_format_parse(t->dt == DT_BF16 ? "bf16" : "fp16", &f))) return;
    /* a view of the mapped file: nothing copied (the model keeps the mapping) */
    L->err = pmat_view16(f, (int)d0, (int)d1, t->data, t->nbytes, pw);
    bq_format_free(f);
    if (!L->err && (*pw)->borrowed) L->views = 1;
    else release(t);
}

static void fetch_linear(loader *L, linear *l, const char *uname, const char *w, const char *b, int out, int in)
{
    if (!L->err && (out < 1 || in < 1))  /* a 1-D "matrix" would be read as a vector */
        L->err = bq_fail(BQ_ERR_PARSE, "%s: the config gives '%s' the shape [%d, %d]", L->m->dir, w, out, in);
    l->in = in;
    l->out = out;
    snprintf(l->name, sizeof l->name, "%s", uname);
    fetch_matrix(L, w, out, in, &l->w, &l->pw);
    l->b = b ? fetch(L, b, out, 0) : NULL;
}

/* GPT-2 Conv1D stores W as [in, out]: transpose to [out, in]. `col0` selects a column slice. */
static void fetch_conv1d(loader *L, linear *l, const char *uname, const char *w, const char *b, int in, int out_total,
                         int col0, int out)
{
    l->in = in;
    l->out = out;
    snprintf(l->name, sizeof l->name, "%s", uname);
    float *full = fetch(L, w, in, out_total), *bias = fetch(L, b, out_total, 0);
    if (L->err) { free(full); free(bias); return; }
    l->w = malloc((size_t)out * in * sizeof(float));
    l->b = malloc((size_t)out * sizeof(float));
    if (!l->w || !l->b) { L->err = bq_fail(BQ_ERR_NOMEM, "out of memory"); free(full); free(bias); return; }
    for (int o = 0; o < out; o++) {
        for (int i = 0; i < in; i++) l->w[(size_t)o * in + i] = full[(size_t)i * out_total + col0 + o];
        l->b[o] = bias[col0 + o];
    }
    free(full);
    free(bias);
}

static void fetch_norm(loader *L, normp *n, const char *w, const char *b, int d)
{
    n->w = fetch(L, w, d, 0);
    n->b = b ? fetch(L, b, d, 0) : NULL;
}

static void load_llama(loader *L)
{
    bq_model *m = L->m;
    const bq_config *c = &m->c;
    char un[96];
    int qd = c->heads * c->head_dim, kvd = c->kv_heads * c->head_dim;
    fetch_matrix(L, "model.embed_tokens.weight", c->vocab, c->hidden, &m->tok_emb, &m->emb_p);
    for (int i = 0; i < c->layers && !L->err; i++) {
        layer_w *l = &m->L[i];
        char pre[64];
        snprintf(pre, sizeof pre, "model.layers.%d", i);
        fetch_norm(L, &l->ln1, tname(L, "%s.input_layernorm.weight", pre), NULL, c->hidden);
        fetch_norm(L, &l->ln2, tname(L, "%s.post_attention_layernorm.weight", pre), NULL, c->hidden);
        static const char *proj[] = {"q", "k", "v"};
        linear *ql[] = {&l->q, &l->k, &l->v};
        for (int j = 0; j < 3; j++) {
            snprintf(un, sizeof un, "layers.%d.self_attn.%s_proj", i, proj[j]);
            fetch_linear(L, ql[j], un, tname(L, "%s.self_attn.%s_proj.weight", pre, proj[j]),
                         c->qkv_bias ? tname(L, "%s.self_attn.%s_proj.bias", pre, proj[j]) : NULL, j ? kvd : qd, c->hidden);
        }
        snprintf(un, sizeof un, "layers.%d.self_attn.o_proj", i);
        fetch_linear(L, &l->o, un, tname(L, "%s.self_attn.o_proj.weight", pre),
                     c->o_bias ? tname(L, "%s.self_attn.o_proj.bias", pre) : NULL, c->hidden, qd);
        if (c->qk_norm) {
            fetch_norm(L, &l->q_norm, tname(L, "%s.self_attn.q_norm.weight", pre), NULL, c->head_dim);
            fetch_norm(L, &l->k_norm, tname(L, "%s.self_attn.k_norm.weight", pre), NULL, c->head_dim);
        }
        static const char *mlp[] = {"gate", "up", "down"};
        linear *ml[] = {&l->gate, &l->up, &l->down};
        for (int j = 0; j < 3; j++) {
            snprintf(un, sizeof un, "layers.%d.mlp.%s_proj", i, mlp[j]);
            fetch_linear(L, ml[j], un, tname(L, "%s.mlp.%s_proj.weight", pre, mlp[j]),
                         c->mlp_bias ? tname(L, "%s.mlp.%s_proj.bias", pre, mlp[j]) : NULL, j == 2 ? c->hidden : c->inter,
                         j == 2 ? c->inter : c->hidden);
        }
    }
    fetch_norm(L, &m->final_ln, "model.norm.weight", NULL, c->hidden);
}

static void load_opt(loader *L)
{
    bq_model *m = L->m;
    const bq_config *c = &m->c;
    char un[96];
    int H = c->hidden;
    m->tok_emb = fetch(L, "model.decoder.embed_tokens.weight", c->vocab, c->embed_dim);
    m->pos_emb = fetch(L, "model.decoder.embed_positions.weight", c->max_pos + c->pos_offset, H);
    if (c->embed_dim != H) {
        fetch_linear(L, &m->proj_in, "project_in", "model.decoder.project_in.weight", NULL, H, c->embed_dim);
        fetch_linear(L, &m->proj_out, "project_out", "model.decoder.project_out.weight", NULL, c->embed_dim, H);
    }
    for (int i = 0; i < c->layers && !L->err; i++) {
        layer_w *l = &m->L[i];
        char pre[64];
        snprintf(pre, sizeof pre, "model.decoder.layers.%d", i);
        fetch_norm(L, &l->ln1, tname(L, "%s.self_attn_layer_norm.weight", pre), tname(L, "%s.self_attn_layer_norm.bias", pre), H);
        fetch_norm(L, &l->ln2, tname(L, "%s.final_layer_norm.weight", pre), tname(L, "%s.final_layer_norm.bias", pre), H);
        static const char *hf[] = {"q_proj", "k_proj", "v_proj", "out_proj"}, *un4[] = {"q", "k", "v", "o"};
        linear *al[] = {&l->q, &l->k, &l->v, &l->o};
        for (int j = 0; j < 4; j++) {
            snprintf(un, sizeof un, "layers.%d.self_attn.%s_proj", i, un4[j]);
            fetch_linear(L, al[j], un, tname(L, "%s.self_attn.%s.weight", pre, hf[j]),
                         c->qkv_bias ? tname(L, "%s.self_attn.%s.bias", pre, hf[j]) : NULL, H, H);
        }
        snprintf(un, sizeof un, "layers.%d.mlp.up_proj", i);
        fetch_linear(L, &l->up, un, tname(L, "%s.fc1.weight", pre), c->mlp_bias ? tname(L, "%s.fc1.bias", pre) : NULL, c->inter, H);
        snprintf(un, sizeof un, "layers.%d.mlp.down_proj", i);
        fetch_linear(L, &l->down, un, tname(L, "%s.fc2.weight", pre), c->mlp_bias ? tname(L, "%s.fc2.bias", pre) : NULL, H, c->inter);
    }
    if (c->final_norm)
        fetch_norm(L, &m->final_ln, "model.decoder.final_layer_norm.weight", "model.decoder.final_layer_norm.bias", H);
}

static void load_gpt2(loader *L)
{
    bq_model *m = L->m;
    const bq_config *c = &m->c;
    char un[96];
    int H = c->hidden;
    m->tok_emb = fetch(L, "transformer.wte.weight", c->vocab, H);
    m->pos_emb = fetch(L, "transformer.wpe.weight", c->max_pos, H);
    for (int i = 0; i < c->layers && !L->err; i++) {
        layer_w *l = &m->L[i];
        char pre[64];
        snprintf(pre, sizeof pre, "transformer.h.%d", i);
        fetch_norm(L, &l->ln1, tname(L, "%s.ln_1.weight", pre), tname(L, "%s.ln_1.bias", pre), H);
        fetch_norm(L, &l->ln2, tname(L, "%s.ln_2.weight", pre), tname(L, "%s.ln_2.bias", pre), H);
        static const char *qkv[] = {"q", "k", "v"};
        linear *ql[] = {&l->q, &l->k, &l->v};
        for (int j = 0; j < 3; j++) {
            snprintf(un, sizeof un, "layers.%d.self_attn.%s_proj", i, qkv[j]);
            fetch_conv1d(L, ql[j], un, tname(L, "%s.attn.c_attn.weight", pre), tname(L, "%s.attn.c_attn.bias", pre), H, 3 * H,
                         j * H, H);
        }
        snprintf(un, sizeof un, "layers.%d.self_attn.o_proj", i);
        fetch_conv1d(L, &l->o, un, tname(L, "%s.attn.c_proj.weight", pre), tname(L, "%s.attn.c_proj.bias", pre), H, H, 0, H);
        snprintf(un, sizeof un, "layers.%d.mlp.up_proj", i);
        fetch_conv1d(L, &l->up, un, tname(L, "%s.mlp.c_fc.weight", pre), tname(L, "%s.mlp.c_fc.bias", pre), H, c->inter, 0, c->inter);
        snprintf(un, sizeof un, "layers.%d.mlp.down_proj", i);
        fetch_conv1d(L, &l->down, un, tname(L, "%s.mlp.c_proj.weight", pre), tname(L, "%s.mlp.c_proj.bias", pre), c->inter, H, 0, H);
    }
    fetch_norm(L, &m->final_ln, "transformer.ln_f.weight", "transformer.ln_f.bias", H);
}

const linear *model_lorc_linear(const bq_model *m)
{
    if (m->head.lr_rank) return &m->head;
    for (int i = 0; i < m->c.layers; i++) {
        const layer_w *L = &m->L[i];
        const linear *ls[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int j = 0; j < 7; j++)
            if (ls[j]->lr_rank) return ls[j];
    }
    return NULL;
}

static void free_linear(linear *l)
{
    free(l->w); pmat_free(l->pw); free(l->b); bq_format_free(l->aq);
    free(l->lr_a); free(l->lr_b);
}
static void free_norm(normp *n) { free(n->w); free(n->b); }

void bq_model_free(bq_model *m)
{
    if (!m) return;
    for (int i = 0; m->L && i < m->c.layers; i++) {
        layer_w *l = &m->L[i];
        free_norm(&l->ln1); free_norm(&l->ln2); free_norm(&l->q_norm); free_norm(&l->k_norm);
        linear *ls[] = {&l->q, &l->k, &l->v, &l->o, &l->gate, &l->up, &l->down};
        for (int j = 0; j < 7; j++) free_linear(ls[j]);
    }
    free(m->L);
    if (m->head.w != m->tok_emb) free(m->head.w);
    if (m->head.pw != m->emb_p) pmat_free(m->head.pw);
    pmat_free(m->emb_p);
    free(m->config_json);
    free(m->tokenizer_json);
    free(m->head.b);
    bq_format_free(m->head.aq);
    bq_format_free(m->attn_q);
    bq_format_free(m->kv_q);
    model_rot_free(m->rot_down);
    model_rot_free(m->rot_qk);
    free(m->tok_emb);
    free(m->pos_emb);
    free_norm(&m->final_ln);
    free_linear(&m->proj_in);
    free_linear(&m->proj_out);
    for (size_t i = 0; i < m->nmaps; i++) munmap(m->maps[i], m->map_sizes[i]);  /* after the views */
    free(m);
}

void model_rot_free(bq_rot *r)
{
    if (!r) return;
    free(r->B);
    free(r->sign);
    free(r);
}

/* The CUDA backend's k_rot does the same float operations in the same order. */
void model_rot_rows(const bq_rot *r, float *x, size_t rows, float *tmp)
{
    const int p = r->p, m = r->m, n = r->n;
    const float s = (float)(1.0 / sqrt((double)p));
    for (size_t t = 0; t < rows; t++) {
        float *v = x + t * (size_t)n;
        for (int i = 0; i < n; i++) v[i] *= r->sign[i];
        for (int c = 0; m > 1 && c < p; c++) {  /* each chunk times B */
            float *u = v + (size_t)c * m;
            for (int j = 0; j < m; j++) {
                float a = 0.0f;
                for (int i = 0; i < m; i++) a += u[i] * r->B[(size_t)i * m + j];
                tmp[j] = a;
            }
            memcpy(u, tmp, (size_t)m * sizeof *u);
        }
        for (int h = 1; h < p; h *= 2)  /* the chunks through the fast Walsh-Hadamard transform */
            for (int c0 = 0; c0 < p; c0 += 2 * h)
                for (int c = c0; c < c0 + h; c++)
                    for (int j = 0; j < m; j++) {
                        float a = v[(size_t)c * m + j], b = v[(size_t)(c + h) * m + j];
                        v[(size_t)c * m + j] = a + b;
                        v[(size_t)(c + h) * m + j] = a - b;
                    }
        for (int i = 0; i < n; i++) v[i] *= s;
    }
}

void model_rot_range(void *job, size_t r0, size_t r1)
{
    rot_job *j = job;
    float *tmp = malloc((size_t)j->r->m * sizeof *tmp);
    if (!tmp) { j->oom = 1; return; }
    model_rot_rows(j->r, j->x + r0 * (size_t)j->r->n, r1 - r0, tmp);
    free(tmp);
}

/* Record the first weight holding NaN/Inf, by name. */
static void scan(bq_model *m, const float *w, size_t n, const char *name)
{
    if (!w || m->nonfinite[0]) return;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(w[i])) {
            snprintf(m->nonfinite, sizeof m->nonfinite, "weight '%s' holds %s at index %zu", name,
                     isnan(w[i]) ? "NaN" : "Inf", i);
            return;
        }
}

void model_scan(bq_model *m)
{
    const bq_config *c = &m->c;
    scan(m, m->tok_emb, (size_t)c->vocab * c->embed_dim, "embed_tokens");
    for (int i = 0; i < c->layers; i++) {
        layer_w *L = &m->L[i];
        linear *ls[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int j = 0; j < 7; j++) {
            scan(m, ls[j]->w, (size_t)ls[j]->in * ls[j]->out, ls[j]->name);
            scan(m, ls[j]->b, (size_t)ls[j]->out, ls[j]->name);
        }
        char nm[64];
        snprintf(nm, sizeof nm, "layers.%d norms", i);
        normp *ns[] = {&L->ln1, &L->ln2};
        for (int j = 0; j < 2; j++) { scan(m, ns[j]->w, (size_t)c->hidden, nm); scan(m, ns[j]->b, (size_t)c->hidden, nm); }
    }
    scan(m, m->head.w, (size_t)m->head.in * m->head.out, "lm_head");
    scan(m, m->final_ln.w, (size_t)c->hidden, "final norm");
}

bq_status bq_model_check_finite(const bq_model *m)
{
    return m->nonfinite[0] ? bq_fail(BQ_ERR_NONFINITE, "%s", m->nonfinite) : BQ_OK;
}

/* BQ_HOLD_AUTO: hold 16-bit matrices when widening them would take more than half
 * of physical memory (a 7B checkpoint on a 24 GB machine), else float32 (fastest). */
static int hold_policy(const st_set *s, bq_hold h)
{
    if (h != BQ_HOLD_AUTO) return h == BQ_HOLD_NATIVE;
    double wide = 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->t[i].dt != DT_F32 && s->t[i].ndim == 2) wide += 4.0 * (double)s->t[i].numel;
    double phys = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    return phys > 0 && wide > 0.5 * phys;
}

static bq_status hf_load(const char *dir, bq_hold hold, bq_model **out)
{
    *out = NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    void *js;
    size_t n;
    bq_status st = bq_read_file(path, &js, &n);
    if (st) return st;
    bq_model *m = calloc(1, sizeof *m);
    if (!m) { free(js); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    st = config_parse(js, n, path, &m->c);
    m->config_json = js;
    m->config_len = n;
    if (st) { bq_model_free(m); return st; }
    /* the tokenizer travels with the model into .bq and GGUF files; optional */
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (access(path, R_OK) == 0) {
        if ((st = bq_read_file(path, &js, &n))) { bq_model_free(m); return st; }
        m->tokenizer_json = js;
        m->tokenizer_len = n;
    }
    loader L = {.m = m};
    if ((st = st_open_dir(&L.st, dir))) { bq_model_free(m); return st; }
    L.hold = hold_policy(&L.st, hold);
    m->L = calloc((size_t)m->c.layers, sizeof *m->L);
    if (!m->L) L.err = bq_fail(BQ_ERR_NOMEM, "out of memory");
    else if (m->c.arch == ARCH_OPT) load_opt(&L);
    else if (m->c.arch == ARCH_GPT2) load_gpt2(&L);
    else load_llama(&L);
    /* LM head: tied to the embedding, or its own matrix */
    if (!L.err) {
        m->head.in = m->c.embed_dim;
        m->head.out = m->c.vocab;
        snprintf(m->head.name, sizeof m->head.name, "lm_head");
        if (m->c.tied && !st_find(&L.st, "lm_head.weight")) { m->head.w = m->tok_emb; m->head.pw = m->emb_p; }
        else fetch_matrix(&L, "lm_head.weight", m->c.vocab, m->c.embed_dim, &m->head.w, &m->head.pw);
    }
    if (L.views) {  /* the held matrices are views: the shards stay mapped with the model */
        memcpy(m->maps, L.st.maps, sizeof m->maps);
        memcpy(m->map_sizes, L.st.map_sizes, sizeof m->map_sizes);
        m->nmaps = L.st.nmaps;
        L.st.nmaps = 0;
    }
    st_close(&L.st);
    if (L.err) { bq_model_free(m); return L.err; }
    model_scan(m);
    *out = m;
    return BQ_OK;
}

/* A model folder, a .bq file or a GGUF file, told apart by what is there. */
bq_status bq_model_load(const char *path, bq_model **out)
{
    bq_load_opts o = {sizeof o, BQ_HOLD_AUTO};
    return bq_model_load_ex(path, &o, out);
}

bq_status bq_model_load_ex(const char *path, const bq_load_opts *o, bq_model **out)
{
    *out = NULL;
    if (!o || o->size < sizeof *o || (unsigned)o->hold > BQ_HOLD_NATIVE)
        return bq_fail(BQ_ERR_ARG, "model load: options without their size, or an unknown hold mode");
    struct stat sb;
    if (stat(path, &sb)) return bq_fail(BQ_ERR_IO, "cannot open '%s': no such model folder or file", path);
    if (S_ISDIR(sb.st_mode)) return hf_load(path, o->hold, out);
    char magic[8] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return bq_fail(BQ_ERR_IO, "cannot open '%s'", path);
    size_t n = fread(magic, 1, 8, f);
    fclose(f);
    if (n == 8 && !memcmp(magic, "BQMODEL", 8)) return model_file_load(path, bqfile_parse, out);
    if (n >= 4 && !memcmp(magic, "GGUF", 4)) return model_file_load(path, gguf_parse, out);
    return bq_fail(BQ_ERR_PARSE, "'%s' is not a model folder, a .bq file or a GGUF file (unknown magic)", path);
}

bq_status bq_model_inspect(const char *path, const bq_load_opts *o, bq_model_mem *out)
{
    memset(out, 0, sizeof *out);
    struct stat sb;
    if (!o || o->size < sizeof *o) return bq_fail(BQ_ERR_ARG, "model inspect: options without their size");
    if (stat(path, &sb)) return bq_fail(BQ_ERR_IO, "cannot open '%s': no such model folder or file", path);
    if (!S_ISDIR(sb.st_mode)) {  /* .bq and GGUF: their own headers hold no sizes apart from the data */
        bq_model *m;
        bq_status st = bq_model_load_ex(path, o, &m);
        if (!st) st = bq_model_memory(m, out);
        bq_model_free(m);
        return st;
    }
    char cp[4200];
    snprintf(cp, sizeof cp, "%s/config.json", path);
    void *js;
    size_t n;
    bq_config c;
    bq_status st = bq_read_file(cp, &js, &n);
    if (!st) st = config_parse(js, n, cp, &c);
    free(js);
    st_set s = {0};
    if (!st) st = st_open_dir(&s, path);  /* maps the shards; reads their headers only */
    if (st) return st;
    int hold = hold_policy(&s, o->hold);
    for (size_t i = 0; i < s.n; i++) {
        const st_tensor *t = &s.t[i];
        if (hold && t->dt != DT_F32 && t->ndim == 2) {
            out->packed_tensors++;
            out->packed_params += t->numel;
            out->packed_bytes += t->nbytes;
            out->packed_bits_ideal += 16.0 * (double)t->numel;
        } else {
            out->float_tensors++;
            out->float_params += t->numel;
            out->float_bytes += t->numel * sizeof(float);
        }
    }
    st_close(&s);
    return BQ_OK;
}

bq_status bq_tokenizer_from_model(const bq_model *m, bq_tokenizer **out)
{
    *out = NULL;
    if (!m->tokenizer_json) return bq_fail(BQ_ERR_IO, "%s: the model has no tokenizer.json", m->dir);
    return tokenizer_parse(m->tokenizer_json, m->tokenizer_len, m->dir, out);
}

/* ---- sizes for the cost model ---- */

linear *model_nth_linear(const bq_model *m, int i)
{
    int k = 0;
    for (int l = 0; l < m->c.layers; l++) {
        layer_w *L = &m->L[l];
        linear *ls[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int j = 0; j < 7; j++)
            if (LINEAR_PRESENT(ls[j]) && k++ == i) return ls[j];
    }
    return NULL;
}

int bq_model_n_linears(const bq_model *m)
{
    int k = 0;
    while (model_nth_linear(m, k)) k++;
    return k;
}

const char *bq_model_linear_name(const bq_model *m, int i)
{
    linear *l = model_nth_linear(m, i);
    return l ? l->name : NULL;
}

size_t bq_model_linear_params(const bq_model *m, int i)
{
    linear *l = model_nth_linear(m, i);
    return l ? (size_t)l->in * l->out : 0;
}

size_t bq_model_other_params(const bq_model *m)
{
    const bq_config *c = &m->c;
    size_t n = (size_t)c->vocab * c->embed_dim;
    if (m->head.w != m->tok_emb || m->head.pw != m->emb_p) n += (size_t)m->head.in * m->head.out;
    if (m->pos_emb) n += (size_t)(c->max_pos + c->pos_offset) * c->hidden;
    n += (size_t)c->layers * 4 * c->hidden + 2 * (size_t)c->hidden;  /* norms and biases, roughly */
    return n;
}

size_t bq_model_kv_per_token(const bq_model *m) { return 2 * (size_t)m->c.layers * m->c.kv_heads * m->c.head_dim; }
