/* The model as a Hugging Face folder (config.json, tokenizer.json, model.safetensors in
 * float32): the model's tensor list (slots.c) under its family's names (LLaMA, OPT, GPT-2). */
#include "model.h"
#include "slots.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Uniform name parts as each family's checkpoints spell them: {uniform, Hugging Face}. The
 * first pair whose uniform part the name holds is replaced; a name without any gets the
 * family's prefix. */
typedef struct { const char *prefix; const char *const (*part)[2]; size_t nparts; } hf_family;
static const char *const LLAMA_PARTS[][2] = {
    {"lm_head.", "lm_head."}, {"final_norm.", "model.norm."}, {".ln1.", ".input_layernorm."},
    {".ln2.", ".post_attention_layernorm."}, {".q_norm.", ".self_attn.q_norm."}, {".k_norm.", ".self_attn.k_norm."}};
static const char *const OPT_PARTS[][2] = {
    {"final_norm.", "model.decoder.final_layer_norm."}, {"pos_emb.", "model.decoder.embed_positions."},
    {".ln1.", ".self_attn_layer_norm."}, {".ln2.", ".final_layer_norm."}, {".self_attn.o_proj.", ".self_attn.out_proj."},
    {".mlp.up_proj.", ".fc1."}, {".mlp.down_proj.", ".fc2."}};
static const char *const GPT2_PARTS[][2] = {
    {"embed_tokens.", "transformer.wte."}, {"pos_emb.", "transformer.wpe."}, {"final_norm.", "transformer.ln_f."},
    {"layers.", "transformer.h."}, {".ln1.", ".ln_1."}, {".ln2.", ".ln_2."}, {".self_attn.q_proj.", ".attn.c_attn."},
    {".self_attn.o_proj.", ".attn.c_proj."}, {".mlp.up_proj.", ".mlp.c_fc."}, {".mlp.down_proj.", ".mlp.c_proj."}};

static hf_family family_of(const bq_config *c)
{
    if (c->arch == ARCH_OPT) return (hf_family){"model.decoder.", OPT_PARTS, sizeof OPT_PARTS / sizeof *OPT_PARTS};
    if (c->arch == ARCH_GPT2) return (hf_family){"", GPT2_PARTS, sizeof GPT2_PARTS / sizeof *GPT2_PARTS};
    return (hf_family){"model.", LLAMA_PARTS, sizeof LLAMA_PARTS / sizeof *LLAMA_PARTS};
}

/* Every part of the family found in u replaced (each once, in the table's order); the prefix
 * unless a part that starts the name replaced it. */
static void hf_name(const hf_family *f, const char *u, char *out, size_t n)
{
    char a[192], b[192];
    snprintf(a, sizeof a, "%s", u);
    int rooted = 0;
    for (size_t i = 0; i < f->nparts; i++) {
        const char *p = strstr(a, f->part[i][0]);
        if (!p) continue;
        rooted |= p == a;
        if (snprintf(b, sizeof b, "%.*s%s%s", (int)(p - a), a, f->part[i][1], p + strlen(f->part[i][0])) < (int)sizeof b)
            memcpy(a, b, sizeof a);
    }
    if (snprintf(out, n, "%s%s", rooted ? "" : f->prefix, a) >= (int)n) out[n - 1] = 0;  /* names are short */
}

/* GPT-2 keeps its linears as Conv1D, W^T [in, out], with q, k and v side by side in c_attn:
 * the weight (or bias: in == 1) of the linears ls[0..k) laid out so, into a new buffer. */
static float *conv1d_of(linear *const *ls, int k, int bias)
{
    int in = ls[0]->in, out = ls[0]->out, cols = k * out;
    float *t = malloc((size_t)(bias ? 1 : in) * cols * sizeof *t);
    if (!t) return NULL;
    for (int j = 0; j < k; j++)
        for (int o = 0; o < out; o++) {
            if (bias) { t[j * out + o] = ls[j]->b[o]; continue; }
            for (int i = 0; i < in; i++) t[(size_t)i * cols + j * out + o] = ls[j]->w[(size_t)o * in + i];
        }
    return t;
}

/* The block linear whose weight or bias a slot holds (NULL: none). */
static const linear *block_linear(bq_model *m, const slot *e)
{
    if (strncmp(e->name, "layers.", 7)) return NULL;
    layer_w *L = &m->L[atoi(e->name + 7)];
    linear *ls[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
    for (int j = 0; j < 7; j++)
        if (e->f == &ls[j]->w || e->f == &ls[j]->b) return ls[j];
    return NULL;
}

bq_status bq_model_hf_writable(const bq_model *m)
{
    if (model_lorc_linear(m)) return bq_fail(BQ_ERR_UNSUPPORTED, "%s has LoRC factors (ptq lorc), which a Hugging Face folder cannot hold", model_lorc_linear(m)->name);
    if (m->rot_down || m->rot_qk)
        return bq_fail(BQ_ERR_UNSUPPORTED, "%s (ptq hadamard%s), which a Hugging Face folder cannot hold: save as .bq",
                       m->rot_down ? "down_proj's input is rotated online" : "each head's Q and K are rotated online", m->rot_down ? "" : "_kv");
    const bq_config *c = &m->c;
    if (c->arch == ARCH_OPT && (!c->pre_norm || LINEAR_PRESENT(&m->proj_in)))
        return bq_fail(BQ_ERR_UNSUPPORTED, "a Hugging Face folder is not written for post-norm OPT or its projections ('%s')", c->model_type);
    if (!m->config_json) return bq_fail(BQ_ERR_UNSUPPORTED, "the model has no config.json to write");
    return BQ_OK;
}

bq_status bq_model_save_hf(const bq_model *cm, const char *dir)
{
    bq_model *m = (bq_model *)cm;  /* model_slots hands out pointers; nothing is written */
    bq_status st = bq_model_hf_writable(m);
    if (st) return st;
    struct stat sb;
    if (!stat(dir, &sb)) return bq_fail(BQ_ERR_IO, "%s exists: remove it or choose another name", dir);
    slot_list sl;
    st = model_slots(m, &sl);
    st_out *ts = st ? NULL : calloc((size_t)sl.n, sizeof *ts);
    char (*names)[160] = st ? NULL : calloc((size_t)sl.n, sizeof *names);
    if (!st && (!ts || !names)) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    size_t n = 0;
    int tied = model_head_tied(m), gpt2 = m->c.arch == ARCH_GPT2;
    hf_family fam = family_of(&m->c);
    float **made_here = st ? NULL : calloc((size_t)sl.n, sizeof *made_here);  /* GPT-2's Conv1D layouts */
    if (!st && !made_here) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int i = 0; i < sl.n && !st; i++) {
        const slot *e = &sl.v[i];
        if (e->p && *e->p) { st = bq_fail(BQ_ERR_UNSUPPORTED, "%s is packed: a Hugging Face folder holds float weights", e->name); break; }
        if (!*e->f || (tied && e->l == &m->head)) continue;  /* absent, or the embedding again */
        const float *data = *e->f;
        int rows = e->rows, cols = e->cols;
        const linear *l = gpt2 ? block_linear(m, e) : NULL;
        if (l) {
            int bias = e->f == &l->b;
            layer_w *L = &m->L[atoi(e->name + 7)];  /* "layers.N." */
            if (l == &L->k || l == &L->v) continue;  /* in q's c_attn */
            linear *qkv[] = {&L->q, &L->k, &L->v}, *one[] = {(linear *)l};
            int k = l == &L->q ? 3 : 1;
            if (!(made_here[i] = conv1d_of(k == 3 ? qkv : one, k, bias))) { st = bq_fail(BQ_ERR_NOMEM, "out of memory"); break; }
            data = made_here[i];
            rows = bias ? k * l->out : l->in;
            cols = bias ? 0 : k * l->out;
        }
        hf_name(&fam, e->name, names[n], sizeof names[0]);
        ts[n] = (st_out){names[n], data, cols ? 2 : 1, {rows, cols}};
        n++;
    }
    char tmp[4200], path[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", dir, (long)getpid());
    if (!st && mkdir(tmp, 0755)) st = bq_fail(BQ_ERR_IO, "%s: %s", tmp, strerror(errno));
    int made = !st;
    if (!st) { snprintf(path, sizeof path, "%s/model.safetensors", tmp); st = st_write_f32(path, ts, n, NULL); }
    if (!st) { snprintf(path, sizeof path, "%s/config.json", tmp); st = bq_write_file_atomic(path, m->config_json, m->config_len); }
    if (!st && m->tokenizer_json) {
        snprintf(path, sizeof path, "%s/tokenizer.json", tmp);
        st = bq_write_file_atomic(path, m->tokenizer_json, m->tokenizer_len);
    }
    if (!st && rename(tmp, dir)) st = bq_fail(BQ_ERR_IO, "%s: %s", dir, strerror(errno));
    if (st && made) {  /* leave nothing half-written behind */
        static const char *files[] = {"model.safetensors", "config.json", "tokenizer.json"};
        for (int i = 0; i < 3; i++) { snprintf(path, sizeof path, "%s/%s", tmp, files[i]); remove(path); }
        rmdir(tmp);
    }
    for (int i = 0; made_here && i < sl.n; i++) free(made_here[i]);
    free(made_here);
    free(sl.v);
    free(ts);
    free(names);
    return st;
}
