/* The .bq packed model file (docs/bq-file.md):
 *
 *   "BQMODEL\0"  u32 version (1)  u32 flags (0)  u64 header_bytes
 *   header: UTF-8 JSON, then zero padding to a multiple of 64
 *   data:   blobs and tensors, each at a 64-byte aligned offset from the data start
 *
 * The header names config.json and tokenizer.json (kept verbatim as blobs), the
 * quantisation that is not in the weights (activation, attention, KV formats,
 * rounding), and per tensor: uniform name, format, shape, offset, size, CRC-32.
 * Tensors are bq_pack output; float tensors are stored as bf16 when that is
 * lossless (a bf16 checkpoint), else fp32. */
#include "pmat.h"
#include "qkern.h"
#include "slots.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static const char MAGIC[8] = "BQMODEL";
/* Version 2 adds LoRC factors (a tensor's "lorc"), version 3 the online rotation
 * of down_proj's input ("rot_down"); a file is written with the lowest version
 * that holds it, so that older readers still take what they can read, and
 * refuse the rest (a rotation left out would silently change the model). */
enum { BQ_FILE_VERSION = 3, ALIGN = 64, PRELUDE = 24 };

/* CRC-32 (zlib's, the IEEE polynomial): pieces over all cores, combined in order (a
 * 7B model's .bq is 4 GB, which one core's CRC would take seconds over). */
enum { CRC_PIECE = 16 << 20 };
typedef struct { const uint8_t *p; size_t n; uLong *crc; } crc_job;

static void crc_range(void *arg, size_t b, size_t e)
{
    const crc_job *j = arg;
    for (size_t k = b; k < e; k++) {
        size_t at = k * CRC_PIECE, len = j->n - at < CRC_PIECE ? j->n - at : CRC_PIECE;
        j->crc[k] = crc32_z(0L, j->p + at, len);
    }
}

uint32_t bq_crc32(const void *data, size_t n)
{
    size_t pieces = (n + CRC_PIECE - 1) / CRC_PIECE;
    uLong *crc = pieces > 1 ? malloc(pieces * sizeof *crc) : NULL;
    if (!crc) return (uint32_t)crc32_z(0L, data, n);
    crc_job j = {data, n, crc};
    bq_parallel_for(pieces, 0, crc_range, &j);
    uLong c = crc[0];
    for (size_t k = 1; k < pieces; k++)
        c = crc32_combine(c, crc[k], (z_off_t)(n - k * CRC_PIECE < CRC_PIECE ? n - k * CRC_PIECE : CRC_PIECE));
    free(crc);
    return (uint32_t)c;
}

static size_t align_up(size_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

/* ---- writing ---- */

typedef struct { uint8_t *data; size_t size; int owned; } chunk;
typedef struct { chunk *v; int n, cap; size_t end; } chunks;

static int push(chunks *c, uint8_t *data, size_t size, int owned, size_t *offset)
{
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 64;
        chunk *n = realloc(c->v, (size_t)cap * sizeof *n);
        if (!n) return 0;
        c->v = n;
        c->cap = cap;
    }
    *offset = align_up(c->end);
    c->v[c->n++] = (chunk){data, size, owned};
    c->end = *offset + size;
    return 1;
}

static void add_ref(cJSON *o, size_t offset, size_t size, uint32_t crc)
{
    cJSON_AddNumberToObject(o, "offset", (double)offset);
    cJSON_AddNumberToObject(o, "size", (double)size);
    cJSON_AddNumberToObject(o, "crc32", (double)crc);
}

/* A float tensor as bf16 when that loses nothing, else fp32. */
static bq_status pack_float(const float *x, size_t n, const char **fmt, uint8_t **out, size_t *size)
{
    int lossless = 1;
    for (size_t i = 0; i < n && lossless; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        lossless = (u & 0xffff) == 0 && (x[i] == x[i]);
    }
    *fmt = lossless ? "bf16" : "fp32";
    bq_format *f;
    bq_status st = bq_format_parse(*fmt, &f);
    if (st) return st;
    *size = bq_packed_size(f, 1, n);
    *out = malloc(*size ? *size : 1);
    if (!*out) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    else if (lossless) f32_top_halves(x, n, *out);  /* bit for bit: bf16 as a format would round -0 to +0 */
    else st = bq_pack(f, x, 1, n, NULL, *out, *size);
    bq_format_free(f);
    return st;
}

/* ---- the quantisation applied at run time ----
 * Attention operands, KV cache, rounding and seed are not in the weights: .bq
 * headers and GGUF's blockq.runtime key carry them as these JSON members, and
 * both readers refuse a value they cannot honour. */

void runtime_to_json(const bq_model *m, cJSON *o)
{
    if (m->attn_q) cJSON_AddStringToObject(o, "attn", m->attn_q->name);
    if (m->kv_q) cJSON_AddStringToObject(o, "kv", m->kv_q->name);
    cJSON_AddStringToObject(o, "round", BQ_ROUND_NAMES[(unsigned)m->qopts.round < 4 ? m->qopts.round : 0]);
    if (m->qopts.seed <= (1ull << 53)) cJSON_AddNumberToObject(o, "seed", (double)m->qopts.seed);
    else {  /* a double cannot hold it exactly: decimal text */
        char buf[24];
        snprintf(buf, sizeof buf, "%llu", (unsigned long long)m->qopts.seed);
        cJSON_AddStringToObject(o, "seed", buf);
    }
}

bq_status runtime_from_json(const cJSON *o, bq_model *m, const char *path)
{
    static const char *const keys[2] = {"attn", "kv"};
    bq_format **dst[2] = {&m->attn_q, &m->kv_q};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, keys[i]);
        if (!v || cJSON_IsNull(v)) continue;
        if (!cJSON_IsString(v)) return bq_fail(BQ_ERR_PARSE, "%s: '%s' must be a format name", path, keys[i]);
        bq_status st = bq_format_parse(v->valuestring, dst[i]);
        if (st) return bq_fail(st, "%s: %s: %s", path, keys[i], bq_last_error());
    }
    const cJSON *rd = cJSON_GetObjectItemCaseSensitive(o, "round");
    if (rd) {
        int k = -1;
        for (int i = 0; i < 4 && cJSON_IsString(rd); i++)
            if (!strcmp(rd->valuestring, BQ_ROUND_NAMES[i])) k = i;
        if (k < 0) return bq_fail(BQ_ERR_PARSE, "%s: unknown rounding mode (rne, away, zero, stochastic)", path);
        m->qopts.round = (bq_round)k;
    }
    const cJSON *sd = cJSON_GetObjectItemCaseSensitive(o, "seed");
    if (cJSON_IsNumber(sd) && sd->valuedouble >= 0 && sd->valuedouble <= 9007199254740992.0 &&
        sd->valuedouble == (double)(uint64_t)sd->valuedouble)
        m->qopts.seed = (uint64_t)sd->valuedouble;
    else if (cJSON_IsString(sd) && *sd->valuestring >= '0' && *sd->valuestring <= '9' && strlen(sd->valuestring) <= 20) {
        char *end;
        errno = 0;
        m->qopts.seed = strtoull(sd->valuestring, &end, 10);
        if (*end || errno) return bq_fail(BQ_ERR_PARSE, "%s: seed '%s' is not a 64-bit unsigned integer", path, sd->valuestring);
    } else if (sd)
        return bq_fail(BQ_ERR_PARSE, "%s: seed must be an integer in [0, 2^64)", path);
    return BQ_OK;
}

bq_status bq_model_save(const bq_model *cm, const char *path)
{
    bq_model *m = (bq_model *)cm;  /* slots hand out pointers; nothing is changed */
    if (!m->config_json) return bq_fail(BQ_ERR_ARG, "model has no config.json to store");
    const uint32_t version = m->rot_down || m->rot_qk ? 3 : model_lorc_linear(m) ? 2 : 1;
    if (m->tokenizer_json) {  /* stored verbatim, but only one that loads */
        bq_tokenizer *t;
        bq_status ts = tokenizer_parse(m->tokenizer_json, m->tokenizer_len, m->dir, &t);
        if (ts) return ts;
        bq_tokenizer_free(t);
    }
    slot_list sl;
    bq_status st = model_slots(m, &sl);
    if (st) return st;
    chunks ch = {0};
    cJSON *root = cJSON_CreateObject(), *tens = cJSON_CreateArray();
    cJSON_AddStringToObject(root, "format", "blockq");
    cJSON_AddNumberToObject(root, "version", version);
    size_t off;
    const char *blob_name[2] = {"config", "tokenizer"};
    char *blob[2] = {m->config_json, m->tokenizer_json};
    size_t blob_len[2] = {m->config_len, m->tokenizer_len};
    for (int i = 0; i < 2; i++) {
        if (!blob[i]) continue;
        cJSON *b = cJSON_AddObjectToObject(root, blob_name[i]);
        if (!push(&ch, (uint8_t *)blob[i], blob_len[i], 0, &off)) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        add_ref(b, off, blob_len[i], bq_crc32(blob[i], blob_len[i]));
    }
    int tied = model_head_tied(m);
    if (tied && m->head.lr_rank) return bq_fail(BQ_ERR_UNSUPPORTED, "the LM head shares the embedding and has LoRC factors: a .bq file cannot hold that");
    cJSON_AddBoolToObject(root, "tied_head", tied);
    runtime_to_json(m, root);
    const bq_rot *rots[2] = {m->rot_down, m->rot_qk};
    for (int k = 0; k < 2 && !st; k++) {  /* blocks and signs as float32, as the weights were folded with them */
        const bq_rot *r = rots[k];
        if (!r) continue;
        cJSON *ro = cJSON_AddObjectToObject(root, k ? "rot_qk" : "rot_down");
        cJSON_AddNumberToObject(ro, "p", r->p);
        cJSON_AddNumberToObject(ro, "m", r->m);
        const float *part[2] = {r->sign, r->B};
        size_t pn[2] = {(size_t)r->n, r->B ? (size_t)r->m * r->m : 0};
        for (int j = 0; j < 2 && !st && pn[j]; j++) {
            if (!push(&ch, (uint8_t *)part[j], pn[j] * sizeof(float), 0, &off)) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
            add_ref(cJSON_AddObjectToObject(ro, j ? "B" : "sign"), off, pn[j] * sizeof(float), bq_crc32(part[j], pn[j] * sizeof(float)));
        }
    }
    cJSON_AddItemToObject(root, "tensors", tens);
    for (int i = 0; i < sl.n && !st; i++) {
        slot *s = &sl.v[i];
        if (tied && !strcmp(s->name, "lm_head.weight")) continue;
        int packed = s->p && *s->p;
        if (!packed && !*s->f) continue;
        size_t n = (size_t)s->rows * (s->cols ? (size_t)s->cols : 1), size;
        const char *fmt;
        uint8_t *data = NULL;
        if (packed) {
            fmt = (*s->p)->f->name;
            size = bq_packed_size((*s->p)->f, (size_t)s->rows, (size_t)s->cols);
            if (!(data = malloc(size))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
            else st = pmat_to_packed(*s->p, data, size);
        } else {
            st = pack_float(*s->f, n, &fmt, &data, &size);
        }
        if (!st && !push(&ch, data, size, 1, &off)) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        if (st) { free(data); break; }
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "name", s->name);
        cJSON_AddStringToObject(t, "format", fmt);
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        cJSON_AddItemToArray(shape, cJSON_CreateNumber(s->rows));
        if (s->cols) cJSON_AddItemToArray(shape, cJSON_CreateNumber(s->cols));
        add_ref(t, off, size, bq_crc32(data, size));
        if (s->l && s->l->aq) cJSON_AddStringToObject(t, "act", s->l->aq->name);
        cJSON_AddItemToArray(tens, t);
        if (s->l && s->l->lr_rank && s->p && !strcmp(s->name + strlen(s->name) - 7, ".weight")) {
            /* y += (q(x) B^T) A^T: A [out][rank], B [rank][in], float32 as computed */
            const linear *l = s->l;
            cJSON *lo = cJSON_AddObjectToObject(t, "lorc");
            cJSON_AddNumberToObject(lo, "rank", l->lr_rank);
            const float *fac[2] = {l->lr_a, l->lr_b};
            size_t fn[2] = {(size_t)l->out * l->lr_rank, (size_t)l->lr_rank * l->in};
            for (int k = 0; k < 2 && !st; k++) {
                if (!push(&ch, (uint8_t *)fac[k], fn[k] * sizeof(float), 0, &off)) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
                add_ref(cJSON_AddObjectToObject(lo, k ? "b" : "a"), off, fn[k] * sizeof(float), bq_crc32(fac[k], fn[k] * sizeof(float)));
            }
        }
    }
    char *hdr = st ? NULL : cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    free(sl.v);
    if (!st && !hdr) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    uint8_t *file = NULL;
    size_t hlen = hdr ? strlen(hdr) : 0, data0 = align_up(PRELUDE + hlen), total = data0 + ch.end;
    if (!st && !(file = calloc(1, total))) st = bq_fail(BQ_ERR_NOMEM, "out of memory for a %zu-byte file", total);
    if (!st) {
        uint32_t v = version, flags = 0;
        uint64_t h = hlen;
        memcpy(file, MAGIC, 8);
        memcpy(file + 8, &v, 4);
        memcpy(file + 12, &flags, 4);
        memcpy(file + 16, &h, 8);
        memcpy(file + PRELUDE, hdr, hlen);
        size_t pos = 0;
        for (int i = 0; i < ch.n; i++) {
            pos = align_up(pos);
            memcpy(file + data0 + pos, ch.v[i].data, ch.v[i].size);
            pos += ch.v[i].size;
        }
        st = bq_write_file_atomic(path, file, total);
    }
    for (int i = 0; i < ch.n; i++)
        if (ch.v[i].owned) free(ch.v[i].data);
    free(ch.v);
    free(file);
    cJSON_free(hdr);
    return st;
}

/* ---- reading ---- */

typedef struct { const char *path; const uint8_t *data; size_t size; } region;

/* A {offset, size, crc32} reference inside the data region, checked. */
static bq_status get_ref(const region *r, const cJSON *o, const char *what, const uint8_t **p, size_t *size)
{
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(o, "offset"), *js = cJSON_GetObjectItemCaseSensitive(o, "size"),
                *jc = cJSON_GetObjectItemCaseSensitive(o, "crc32");
    if (!cJSON_IsNumber(jo) || !cJSON_IsNumber(js) || !cJSON_IsNumber(jc))
        return bq_fail(BQ_ERR_PARSE, "%s: %s: needs numeric offset, size and crc32", r->path, what);
    double o_ = jo->valuedouble, s_ = js->valuedouble;
    if (!(o_ >= 0 && s_ >= 0 && o_ <= (double)r->size && s_ <= (double)r->size && o_ == (double)(size_t)o_ &&
          s_ == (double)(size_t)s_) ||
        (size_t)o_ + (size_t)s_ > r->size)
        return bq_fail(BQ_ERR_PARSE, "%s: %s: bytes [%.0f, +%.0f) lie outside the %zu-byte data section", r->path, what,
                       o_, s_, r->size);
    if ((size_t)o_ % ALIGN) return bq_fail(BQ_ERR_PARSE, "%s: %s: offset %.0f is not %d-byte aligned", r->path, what, o_, ALIGN);
    *p = r->data + (size_t)o_;
    *size = (size_t)s_;
    uint32_t crc = bq_crc32(*p, *size);
    if ((double)crc != jc->valuedouble)
        return bq_fail(BQ_ERR_PARSE, "%s: %s: checksum mismatch (stored %.0f, computed %u): the file is corrupt", r->path,
                       what, jc->valuedouble, crc);
    return BQ_OK;
}

static const char *str_item(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}


/* A linear's LoRC factors (version 2): rank in [1, min(in, out)], A [out][rank]
 * and B [rank][in] float32, each checked against its size and checksum. */
static bq_status load_lorc(const region *r, const cJSON *lo, slot *s, const char *name)
{
    linear *l = s->l;
    const cJSON *jr = cJSON_GetObjectItemCaseSensitive(lo, "rank");
    if (!l || !s->p) return bq_fail(BQ_ERR_PARSE, "%s: tensor '%s' is not a linear's weight: it cannot have LoRC factors", r->path, name);
    int most = l->in < l->out ? l->in : l->out;
    if (!cJSON_IsNumber(jr) || !(jr->valuedouble >= 1 && jr->valuedouble <= most) || jr->valuedouble != (double)(int)jr->valuedouble)
        return bq_fail(BQ_ERR_PARSE, "%s: tensor '%s': LoRC rank must be an integer in [1, %d]", r->path, name, most);
    int rank = (int)jr->valuedouble;
    size_t fn[2] = {(size_t)l->out * rank, (size_t)rank * l->in};
    float *fac[2] = {NULL, NULL};
    bq_status st = BQ_OK;
    for (int k = 0; k < 2 && !st; k++) {
        const cJSON *ref = cJSON_GetObjectItemCaseSensitive(lo, k ? "b" : "a");
        const uint8_t *p;
        size_t size;
        char what[160];
        snprintf(what, sizeof what, "%.100s LoRC %s", name, k ? "B" : "A");
        if (!cJSON_IsObject(ref)) st = bq_fail(BQ_ERR_PARSE, "%s: %s is missing", r->path, what);
        else if (!(st = get_ref(r, ref, what, &p, &size)) && size != fn[k] * sizeof(float))
            st = bq_fail(BQ_ERR_PARSE, "%s: %s holds %zu bytes; rank %d at [%d, %d] takes %zu", r->path, what, size, rank,
                         l->out, l->in, fn[k] * sizeof(float));
        else if (!st && !(fac[k] = malloc(size))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        else if (!st) memcpy(fac[k], p, size);
    }
    if (st) { free(fac[0]); free(fac[1]); return st; }
    l->lr_a = fac[0];
    l->lr_b = fac[1];
    l->lr_rank = rank;
    return BQ_OK;
}

/* "rot_down" / "rot_qk": p and m with p * m = n (the MLP's inner size / head_dim),
 * p a power of two; the signs (each +1 or -1) and, for m > 1, the m x m block, finite. */
static bq_status load_rot(const region *r, const cJSON *ro, const char *key, int n, bq_rot **out)
{
    const cJSON *jp = cJSON_GetObjectItemCaseSensitive(ro, "p"), *jm = cJSON_GetObjectItemCaseSensitive(ro, "m");
    /* (ranges before the casts: a double past int's range has no int) */
    if (!cJSON_IsObject(ro) || !cJSON_IsNumber(jp) || !cJSON_IsNumber(jm) || !(jp->valuedouble >= 1 && jp->valuedouble <= n) ||
        !(jm->valuedouble >= 1 && jm->valuedouble <= n) || jp->valuedouble != (double)(int)jp->valuedouble ||
        jm->valuedouble != (double)(int)jm->valuedouble || jp->valuedouble * jm->valuedouble != (double)n ||
        ((int)jp->valuedouble & ((int)jp->valuedouble - 1)))
        return bq_fail(BQ_ERR_PARSE, "%s: %s needs whole p (a power of two) and m with p x m = %d", r->path, key, n);
    bq_rot *rot = calloc(1, sizeof *rot);
    if (!rot) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    rot->n = n; rot->p = (int)jp->valuedouble; rot->m = (int)jm->valuedouble;
    bq_status st = BQ_OK;
    for (int k = 0; k < 2 && !st; k++) {
        size_t want = k ? (rot->m > 1 ? (size_t)rot->m * rot->m : 0) : (size_t)n;
        const cJSON *ref = cJSON_GetObjectItemCaseSensitive(ro, k ? "B" : "sign");
        const uint8_t *p;
        size_t size;
        float **dst = k ? &rot->B : &rot->sign;
        char what[32];
        snprintf(what, sizeof what, "%s's %s", key, k ? "B" : "sign");
        if (!want) { if (ref) st = bq_fail(BQ_ERR_PARSE, "%s: %s with m = 1 has no block B", r->path, key); continue; }
        if (!cJSON_IsObject(ref)) st = bq_fail(BQ_ERR_PARSE, "%s: %s is missing", r->path, what);
        else if (!(st = get_ref(r, ref, what, &p, &size)) && size != want * sizeof(float))
            st = bq_fail(BQ_ERR_PARSE, "%s: %s holds %zu bytes, not %zu", r->path, what, size, want * sizeof(float));
        else if (!st && !(*dst = malloc(size))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        else if (!st) memcpy(*dst, p, size);
        for (size_t i = 0; i < want && !st; i++)
            if (k ? !isfinite((*dst)[i]) : (*dst)[i] != 1.0f && (*dst)[i] != -1.0f)
                st = bq_fail(BQ_ERR_PARSE, "%s: %s[%zu] is %g (%s)", r->path, what, i, (*dst)[i], k ? "not finite" : "not +1 or -1");
    }
    if (st) { model_rot_free(rot); return st; }
    *out = rot;
    return BQ_OK;
}

static bq_status load_tensor(const region *r, slot_list *sl, const cJSON *t, bq_model *m)
{
    const char *name = str_item(t, "name"), *fmt = str_item(t, "format"), *act = str_item(t, "act");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(t, "shape");
    if (!name || !fmt || !cJSON_IsArray(shape))
        return bq_fail(BQ_ERR_PARSE, "%s: a tensor entry needs name, format and shape", r->path);
    slot *s = slot_find(sl, name);
    if (!s) return bq_fail(BQ_ERR_PARSE, "%s: unknown tensor '%.100s' for this architecture", r->path, name);
    if ((s->p && *s->p) || *s->f) return bq_fail(BQ_ERR_PARSE, "%s: tensor '%s' appears twice", r->path, name);
    int nd = cJSON_GetArraySize(shape), want = s->cols ? 2 : 1;
    double d0 = nd > 0 ? cJSON_GetArrayItem(shape, 0)->valuedouble : -1, d1 = nd > 1 ? cJSON_GetArrayItem(shape, 1)->valuedouble : 0;
    if (nd != want || d0 != s->rows || d1 != s->cols)
        return bq_fail(BQ_ERR_SHAPE, "%s: tensor '%s' has a shape of %d dims [%.0f, %.0f]; the config implies [%d, %d]",
                       r->path, name, nd, d0, d1, s->rows, s->cols);
    bq_format *f;
    bq_status st = bq_format_parse(fmt, &f);
    if (st) return bq_fail(st, "%s: tensor '%s': %s", r->path, name, bq_last_error());
    size_t rows = (size_t)s->rows, cols = s->cols ? (size_t)s->cols : 1, size;
    if (!s->cols) { cols = rows; rows = 1; }
    const uint8_t *p;
    if (!(st = get_ref(r, t, name, &p, &size)) && size != bq_packed_size(f, rows, cols))
        st = bq_fail(BQ_ERR_PARSE, "%s: tensor '%s' holds %zu bytes; %s at its shape takes %zu", r->path, name, size, fmt,
                     bq_packed_size(f, rows, cols));
    if (!st) {
        if (s->p && !format_is_wide_float(f)) {
            st = pmat_new(f, (int)rows, (int)cols, p, size, s->p);
        } else if (!(*s->f = malloc(rows * cols * sizeof(float)))) {
            st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        } else {
            st = bq_unpack(f, p, size, rows, cols, *s->f);
        }
    }
    bq_format_free(f);
    if (!st && act) {
        if (!s->l) return bq_fail(BQ_ERR_PARSE, "%s: tensor '%s' has no input activation", r->path, name);
        if ((st = bq_format_parse(act, &s->l->aq))) return bq_fail(st, "%s: '%s': %s", r->path, name, bq_last_error());
    }
    const cJSON *lorc = cJSON_GetObjectItemCaseSensitive(t, "lorc");
    if (!st && lorc) st = load_lorc(r, lorc, s, name);
    return st;
}

static bq_status parse_header(const region *r, const cJSON *root, bq_model *m)
{
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "version");
    const char *fmt = str_item(root, "format");
    if (!fmt || strcmp(fmt, "blockq") || !cJSON_IsNumber(ver))
        return bq_fail(BQ_ERR_PARSE, "%s: header is not a blockq model header", r->path);
    if (!(ver->valuedouble >= 1 && ver->valuedouble <= BQ_FILE_VERSION && ver->valuedouble == (int)ver->valuedouble))
        return bq_fail(BQ_ERR_UNSUPPORTED, "%s: header version %g; this blockq reads versions 1 to %d", r->path, ver->valuedouble,
                       BQ_FILE_VERSION);
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(root, "config"), *tok = cJSON_GetObjectItemCaseSensitive(root, "tokenizer");
    if (!cJSON_IsObject(cfg)) return bq_fail(BQ_ERR_PARSE, "%s: no config in the header", r->path);
    const uint8_t *p;
    size_t n;
    bq_status st = get_ref(r, cfg, "config", &p, &n);
    if (st) return st;
    if (!(m->config_json = malloc(n + 1))) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    memcpy(m->config_json, p, n);
    m->config_json[n] = 0;
    m->config_len = n;
    if ((st = config_parse(m->config_json, n, r->path, &m->c))) return st;
    if (cJSON_IsObject(tok)) {
        if ((st = get_ref(r, tok, "tokenizer", &p, &n))) return st;
        if (!(m->tokenizer_json = malloc(n + 1))) return bq_fail(BQ_ERR_NOMEM, "out of memory");
        memcpy(m->tokenizer_json, p, n);
        m->tokenizer_json[n] = 0;
        m->tokenizer_len = n;
    }
    if (!(m->L = calloc((size_t)m->c.layers, sizeof *m->L))) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    model_skeleton(m);
    slot_list sl;
    if ((st = model_slots(m, &sl))) return st;
    const cJSON *tens = cJSON_GetObjectItemCaseSensitive(root, "tensors"), *t;
    if (!cJSON_IsArray(tens)) st = bq_fail(BQ_ERR_PARSE, "%s: no tensor list in the header", r->path);
    else cJSON_ArrayForEach(t, tens) if (!st) st = load_tensor(r, &sl, t, m);
    free(sl.v);
    if (st) return st;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "tied_head"))) {
        if (LINEAR_PRESENT(&m->head)) return bq_fail(BQ_ERR_PARSE, "%s: tied head but lm_head.weight is stored too", r->path);
        m->head.w = m->tok_emb;
        m->head.pw = m->emb_p;
    }
    if ((st = runtime_from_json(root, m, r->path))) return st;
    static const char *const keys[2] = {"rot_down", "rot_qk"};
    for (int k = 0; k < 2; k++) {
        const cJSON *ro = cJSON_GetObjectItemCaseSensitive(root, keys[k]);
        if (ro && ver->valuedouble < 3) return bq_fail(BQ_ERR_PARSE, "%s: %s in a version %g header (needs 3)", r->path, keys[k], ver->valuedouble);
        if (ro && (st = load_rot(r, ro, keys[k], k ? m->c.head_dim : m->c.inter, k ? &m->rot_qk : &m->rot_down))) return st;
    }
    return model_check_complete(m, r->path);
}

bq_status bqfile_parse(const char *path, const uint8_t *buf, size_t size, bq_model **out)
{
    *out = NULL;
    if (size < PRELUDE || memcmp(buf, MAGIC, 8))
        return bq_fail(BQ_ERR_PARSE, "%s: not a .bq model (bad magic)", path);
    uint32_t ver;
    uint64_t hlen;
    memcpy(&ver, buf + 8, 4);
    memcpy(&hlen, buf + 16, 8);
    if (ver < 1 || ver > BQ_FILE_VERSION)
        return bq_fail(BQ_ERR_UNSUPPORTED, "%s: .bq version %u; this blockq reads versions 1 to %d", path, ver, BQ_FILE_VERSION);
    if (hlen > size - PRELUDE || align_up(PRELUDE + (size_t)hlen) > size)
        return bq_fail(BQ_ERR_PARSE, "%s: header of %llu bytes runs past the end of the %zu-byte file (truncated?)", path,
                       (unsigned long long)hlen, size);
    cJSON *root = cJSON_ParseWithLength((const char *)buf + PRELUDE, (size_t)hlen);
    if (!root) return bq_fail(BQ_ERR_PARSE, "%s: header is not valid JSON", path);
    bq_status ust = json_unique_keys(root, path);
    if (ust) { cJSON_Delete(root); return ust; }
    bq_model *m = calloc(1, sizeof *m);
    if (!m) { cJSON_Delete(root); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    snprintf(m->dir, sizeof m->dir, "%s", path);
    size_t d0 = align_up(PRELUDE + (size_t)hlen);
    region r = {path, buf + d0, size - d0};
    bq_status st = parse_header(&r, root, m);
    cJSON_Delete(root);
    if (st) { bq_model_free(m); return st; }
    model_scan(m);
    *out = m;
    return BQ_OK;
}
