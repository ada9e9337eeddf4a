/* Every tensor of the in-memory model by uniform name, with the shape the
 * config implies: one list that the .bq and GGUF readers and writers share. */
#include "slots.h"
#include "pmat.h"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static void add(slot_list *s, const char *name, float **f, pmat **p, linear *l, int rows, int cols)
{
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 64;
        slot *n = realloc(s->v, (size_t)cap * sizeof *n);
        if (!n) { s->oom = 1; return; }
        s->v = n;
        s->cap = cap;
    }
    slot *e = &s->v[s->n++];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->f = f;
    e->p = p;
    e->l = l;
    e->rows = rows;
    e->cols = cols;
}

static void add_linear(slot_list *s, linear *l)
{
    char nm[128];
    snprintf(nm, sizeof nm, "%s.weight", l->name);
    add(s, nm, &l->w, &l->pw, l, l->out, l->in);
    snprintf(nm, sizeof nm, "%s.bias", l->name);
    add(s, nm, &l->b, NULL, NULL, l->out, 0);
}

static void add_norm(slot_list *s, const char *pre, normp *n, int d)
{
    char nm[128];
    snprintf(nm, sizeof nm, "%s.weight", pre);
    add(s, nm, &n->w, NULL, NULL, d, 0);
    snprintf(nm, sizeof nm, "%s.bias", pre);
    add(s, nm, &n->b, NULL, NULL, d, 0);
}

static void set_linear(linear *l, const char *name, int out, int in)
{
    snprintf(l->name, sizeof l->name, "%s", name);
    l->out = out;
    l->in = in;
}

void model_skeleton(bq_model *m)
{
    const bq_config *c = &m->c;
    int H = c->hidden, qd = c->heads * c->head_dim, kvd = c->kv_heads * c->head_dim;
    char nm[96];
    for (int i = 0; i < c->layers; i++) {
        layer_w *L = &m->L[i];
        const char *attn[] = {"q", "k", "v", "o"};
        linear *al[] = {&L->q, &L->k, &L->v, &L->o};
        int out[] = {qd, kvd, kvd, H}, in[] = {H, H, H, qd};
        for (int j = 0; j < 4; j++) {
            snprintf(nm, sizeof nm, "layers.%d.self_attn.%s_proj", i, attn[j]);
            set_linear(al[j], nm, out[j], in[j]);
        }
        const char *mlp[] = {"gate", "up", "down"};
        linear *ml[] = {&L->gate, &L->up, &L->down};
        for (int j = 0; j < 3; j++) {
            snprintf(nm, sizeof nm, "layers.%d.mlp.%s_proj", i, mlp[j]);
            set_linear(ml[j], nm, j == 2 ? H : c->inter, j == 2 ? c->inter : H);
        }
    }
    set_linear(&m->head, "lm_head", c->vocab, c->embed_dim);
    set_linear(&m->proj_in, "proj_in", H, c->embed_dim);
    set_linear(&m->proj_out, "proj_out", c->embed_dim, H);
}

bq_status model_slots(bq_model *m, slot_list *s)
{
    memset(s, 0, sizeof *s);
    const bq_config *c = &m->c;
    add(s, "embed_tokens.weight", &m->tok_emb, &m->emb_p, NULL, c->vocab, c->embed_dim);
    add(s, "pos_emb.weight", &m->pos_emb, NULL, NULL, c->max_pos + c->pos_offset, c->hidden);
    add_linear(s, &m->proj_in);
    char pre[64];
    for (int i = 0; i < c->layers; i++) {
        layer_w *L = &m->L[i];
        snprintf(pre, sizeof pre, "layers.%d.ln1", i);
        add_norm(s, pre, &L->ln1, c->hidden);
        snprintf(pre, sizeof pre, "layers.%d.ln2", i);
        add_norm(s, pre, &L->ln2, c->hidden);
        snprintf(pre, sizeof pre, "layers.%d.q_norm", i);
        add_norm(s, pre, &L->q_norm, c->head_dim);
        snprintf(pre, sizeof pre, "layers.%d.k_norm", i);
        add_norm(s, pre, &L->k_norm, c->head_dim);
        linear *ls[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int j = 0; j < 7; j++) add_linear(s, ls[j]);
    }
    add_norm(s, "final_norm", &m->final_ln, c->hidden);
    add_linear(s, &m->proj_out);
    add_linear(s, &m->head);
    return s->oom ? bq_fail(BQ_ERR_NOMEM, "out of memory") : BQ_OK;
}

bq_status model_file_load(const char *path, model_parser parse, bq_model **out)
{
    *out = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return bq_fail(BQ_ERR_IO, "cannot open '%s'", path);
    struct stat sb;
    if (fstat(fd, &sb) || sb.st_size <= 0) { close(fd); return bq_fail(BQ_ERR_PARSE, "%s: empty or unreadable file", path); }
    size_t size = (size_t)sb.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return bq_fail(BQ_ERR_IO, "cannot map '%s'", path);
    bq_status st = parse(path, map, size, out);
    munmap(map, size);
    return st;
}

slot *slot_find(slot_list *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->v[i].name, name)) return &s->v[i];
    return NULL;
}

int model_head_tied(const bq_model *m)
{
    return (m->tok_emb && m->head.w == m->tok_emb) || (m->emb_p && m->head.pw == m->emb_p);
}

bq_status model_check_complete(const bq_model *m, const char *path)
{
    const bq_config *c = &m->c;
    const char *miss = NULL;
    char nm[128];
    if (!m->tok_emb && !m->emb_p) miss = "embed_tokens.weight";
    else if (!c->rope && !m->pos_emb) miss = "pos_emb.weight";
    else if (!LINEAR_PRESENT(&m->head)) miss = "lm_head.weight";
    else if (c->final_norm && !m->final_ln.w) miss = "final_norm.weight";
    else if (c->embed_dim != c->hidden && (!LINEAR_PRESENT(&m->proj_in) || !LINEAR_PRESENT(&m->proj_out))) miss = "proj_in/proj_out";
    for (int i = 0; i < c->layers && !miss; i++) {
        const layer_w *L = &m->L[i];
        const linear *ls[] = {&L->q, &L->k, &L->v, &L->o, &L->up, &L->down, &L->gate};
        int n = c->act == ACT_SILU_GATED ? 7 : 6;
        for (int j = 0; j < n && !miss; j++)
            if (!LINEAR_PRESENT(ls[j])) { snprintf(nm, sizeof nm, "%s.weight", ls[j]->name); miss = nm; }
        if (!miss && (!L->ln1.w || !L->ln2.w)) { snprintf(nm, sizeof nm, "layers.%d.ln1/ln2.weight", i); miss = nm; }
        if (!miss && c->qk_norm && (!L->q_norm.w || !L->k_norm.w)) { snprintf(nm, sizeof nm, "layers.%d.q_norm/k_norm", i); miss = nm; }
    }
    return miss ? bq_fail(BQ_ERR_PARSE, "%s: missing tensor '%s'", path, miss) : BQ_OK;
}

bq_status bq_model_memory(const bq_model *cm, bq_model_mem *o)
{
    memset(o, 0, sizeof *o);
    slot_list sl;
    bq_status st = model_slots((bq_model *)cm, &sl);
    if (st) return st;
    int tied = model_head_tied(cm);
    for (int i = 0; i < sl.n; i++) {
        slot *s = &sl.v[i];
        size_t n = (size_t)s->rows * (s->cols ? (size_t)s->cols : 1);
        if (tied && !strcmp(s->name, "lm_head.weight")) continue;
        if (s->p && *s->p) {
            bq_format_info in;
            bq_format_get_info((*s->p)->f, &in);
            o->packed_params += n;
            o->packed_bytes += pmat_bytes(*s->p);
            o->packed_bits_ideal += (double)n * in.bits_per_element;
            o->packed_tensors++;
        } else if (*s->f) {
            o->float_params += n;
            o->float_bytes += n * sizeof(float);
            o->float_tensors++;
        }
    }
    free(sl.v);
    return BQ_OK;
}
