/* GGUF v3 interchange with llama.cpp, for the LLaMA/Mistral, Qwen2 and Qwen3
 * architectures.
 *
 * Reading: F32/F16/BF16 become float; Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and MXFP4 become
 * packed weights with the very same codes (formats int8_b32_sfp16, int4_b32_sfp16
 * with the -8 code, q4_1, q5_0, q5_1, mxfp4). The tokenizer
 * (tokenizer.ggml.*) is turned back into a tokenizer.json.
 * Writing: packed weights in mxfp4 / q8_0 / q5_0 / q5_1 / q4_0 / q4_1 / int8_b32_sfp16 /
 * int4_b32_sfp16 (the formats with an exact GGUF type), float tensors as F32 (vectors) or BF16
 * (matrices, when lossless), plus the tokenizer. llama.cpp keeps LLaMA's Q and K
 * rows interleaved per head (its rotary convention); both directions permute. */
#include "pmat.h"
#include "qkern.h"
#include "slots.h"
#include "strmap.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { GT_U8, GT_I8, GT_U16, GT_I16, GT_U32, GT_I32, GT_F32, GT_BOOL, GT_STR, GT_ARR, GT_U64, GT_I64, GT_F64 };
enum { GG_F32 = 0, GG_F16 = 1, GG_Q4_0 = 2, GG_Q4_1 = 3, GG_Q5_0 = 6, GG_Q5_1 = 7, GG_Q8_0 = 8, GG_BF16 = 30, GG_MXFP4 = 39 };

/* ---- names ---- */

static const char *const NAME_MAP[][2] = {
    {"attn_norm", "ln1"}, {"ffn_norm", "ln2"}, {"attn_q_norm", "q_norm"}, {"attn_k_norm", "k_norm"},
    {"attn_q", "self_attn.q_proj"}, {"attn_k", "self_attn.k_proj"}, {"attn_v", "self_attn.v_proj"},
    {"attn_output", "self_attn.o_proj"}, {"ffn_gate", "mlp.gate_proj"}, {"ffn_up", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj"},
};
static const char *const TOP_MAP[][2] = {
    {"token_embd", "embed_tokens"}, {"output_norm", "final_norm"}, {"output", "lm_head"},
};

/* GGUF name -> uniform name (dir 0) or back (dir 1); 0 if unknown. */
static int map_name(const char *in, char *out, size_t n, int dir)
{
    const char *dot = strrchr(in, '.');
    if (!dot) return 0;
    char stem[128];
    size_t sl = (size_t)(dot - in);
    if (sl >= sizeof stem) return 0;
    memcpy(stem, in, sl);
    stem[sl] = 0;
    int layer;
    char rest[128];
    const char *lp = dir ? "layers.%d.%127s" : "blk.%d.%127s";
    for (size_t i = 0; i < sizeof TOP_MAP / sizeof *TOP_MAP; i++)
        if (!strcmp(stem, TOP_MAP[i][dir])) { snprintf(out, n, "%s%s", TOP_MAP[i][!dir], dot); return 1; }
    if (sscanf(stem, lp, &layer, rest) != 2) return 0;
    for (size_t i = 0; i < sizeof NAME_MAP / sizeof *NAME_MAP; i++)
        if (!strcmp(rest, NAME_MAP[i][dir])) {
            snprintf(out, n, dir ? "blk.%d.%s%s" : "layers.%d.%s%s", layer, NAME_MAP[i][!dir], dot);
            return 1;
        }
    return 0;
}

/* LLaMA Q/K: GGUF row of a HF row (per head, halves interleaved). */
static int permuted_row(int r, int d)
{
    int h = r / d, i = r % d, half = d / 2;
    return h * d + (i < half ? 2 * i : 2 * (i - half) + 1);
}

static int needs_permute(const bq_model *m, const char *uname)
{
    return m->c.arch == ARCH_LLAMA && (strstr(uname, "self_attn.q_proj") || strstr(uname, "self_attn.k_proj"));
}

/* ---- reading ---- */

typedef struct { const uint8_t *p, *end; int bad; } cur;

static const void *take(cur *c, size_t n)
{
    if (c->bad || (size_t)(c->end - c->p) < n) { c->bad = 1; return NULL; }
    const void *r = c->p;
    c->p += n;
    return r;
}
static uint32_t u32(cur *c) { uint32_t v = 0; const void *p = take(c, 4); if (p) memcpy(&v, p, 4); return v; }
static uint64_t u64(cur *c) { uint64_t v = 0; const void *p = take(c, 8); if (p) memcpy(&v, p, 8); return v; }
static const char *str(cur *c, size_t *len)
{
    uint64_t n = u64(c);
    const char *s = n < (1u << 30) ? take(c, (size_t)n) : (c->bad = 1, NULL);
    *len = s ? (size_t)n : 0;
    return s;
}

static size_t scalar_size(uint32_t t)
{
    static const size_t sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t < sizeof sz / sizeof *sz ? sz[t] : 0;
}

typedef struct { const char *key; size_t klen; uint32_t type, atype; uint64_t n; const uint8_t *val, *end; } kv;

static void skip_value(cur *c, uint32_t t, int depth)
{
    size_t len;
    if (t == GT_STR) { str(c, &len); return; }
    if (t == GT_ARR) {
        uint32_t at = u32(c);
        uint64_t n = u64(c);
        if (depth > 2 || n > (uint64_t)(c->end - c->p)) { c->bad = 1; return; }
        for (uint64_t i = 0; i < n && !c->bad; i++) skip_value(c, at, depth + 1);
        return;
    }
    if (!scalar_size(t)) { c->bad = 1; return; }
    take(c, scalar_size(t));
}

static const kv *find_kv(const kv *kvs, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (kvs[i].klen == strlen(key) && !memcmp(kvs[i].key, key, kvs[i].klen)) return &kvs[i];
    return NULL;
}

/* A numeric value as double (any integer or float type). */
static int kv_num(const kv *v, double *out)
{
    if (!v || v->type == GT_STR || v->type == GT_ARR || v->type == GT_BOOL) return 0;
    const uint8_t *p = v->val;
    switch (v->type) {
    case GT_U8: *out = *p; break;
    case GT_I8: *out = (int8_t)*p; break;
    case GT_U16: { uint16_t x; memcpy(&x, p, 2); *out = x; break; }
    case GT_I16: { int16_t x; memcpy(&x, p, 2); *out = x; break; }
    case GT_U32: { uint32_t x; memcpy(&x, p, 4); *out = x; break; }
    case GT_I32: { int32_t x; memcpy(&x, p, 4); *out = x; break; }
    case GT_F32: { float x; memcpy(&x, p, 4); *out = x; break; }
    case GT_U64: { uint64_t x; memcpy(&x, p, 8); *out = (double)x; break; }
    case GT_I64: { int64_t x; memcpy(&x, p, 8); *out = (double)x; break; }
    case GT_F64: memcpy(out, p, 8); break;
    default: return 0;
    }
    return 1;
}

static char *kv_str(const kv *v)
{
    if (!v || v->type != GT_STR) return NULL;
    cur c = {v->val, v->end, 0};
    size_t len;
    const char *s = str(&c, &len);
    char *r = s ? malloc(len + 1) : NULL;
    if (r) { memcpy(r, s, len); r[len] = 0; }
    return r;
}

static size_t type_row_bytes(uint32_t t, size_t cols)
{
    switch (t) {
    case GG_F32: return cols * 4;
    case GG_F16: case GG_BF16: return cols * 2;
    case GG_Q4_0: return cols / 32 * 18;
    case GG_Q4_1: return cols / 32 * 20;
    case GG_Q5_0: return cols / 32 * 22;
    case GG_Q5_1: return cols / 32 * 24;
    case GG_Q8_0: return cols / 32 * 34;
    case GG_MXFP4: return cols / 32 * 17;
    default: return 0;
    }
}

static int is_block_type(uint32_t t) { return t != GG_F32 && t != GG_F16 && t != GG_BF16; }

/* One GGUF row to float. */
void gguf_row_to_float(uint32_t t, const uint8_t *p, size_t cols, float *y)
{
    static const float E2M1[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
    for (size_t i = 0; i < (is_block_type(t) ? cols / 32 : cols); i++) {
        uint16_t h, h2;
        switch (t) {
        case GG_F32: memcpy(&y[i], p + 4 * i, 4); break;
        case GG_F16: memcpy(&h, p + 2 * i, 2); y[i] = half_to_f32(h); break;
        case GG_BF16: memcpy(&h, p + 2 * i, 2); y[i] = bf16_to_f32(h); break;
        case GG_Q8_0: {
            const uint8_t *b = p + 34 * i;
            memcpy(&h, b, 2);
            for (int j = 0; j < 32; j++) y[32 * i + j] = (float)(int8_t)b[2 + j] * half_to_f32(h);
            break;
        }
        case GG_Q4_0: case GG_Q4_1: {
            const uint8_t *b = p + (t == GG_Q4_0 ? 18 : 20) * i, *qs = b + (t == GG_Q4_0 ? 2 : 4);
            memcpy(&h, b, 2);
            memcpy(&h2, b + 2, 2);
            for (int j = 0; j < 16; j++) {
                int lo = qs[j] & 15, hi = qs[j] >> 4;
                y[32 * i + j] = t == GG_Q4_0 ? (float)(lo - 8) * half_to_f32(h) : (float)lo * half_to_f32(h) + half_to_f32(h2);
                y[32 * i + j + 16] = t == GG_Q4_0 ? (float)(hi - 8) * half_to_f32(h) : (float)hi * half_to_f32(h) + half_to_f32(h2);
            }
            break;
        }
        case GG_Q5_0: case GG_Q5_1: {  /* Q5_1: fp16 d and min, codes unsigned */
            const int hs = t == GG_Q5_0 ? 2 : 4;
            const uint8_t *b = p + (t == GG_Q5_0 ? 22 : 24) * i;
            uint32_t qh;
            memcpy(&h, b, 2);
            memcpy(&h2, b + 2, 2);
            memcpy(&qh, b + hs, 4);
            for (int j = 0; j < 16; j++) {
                int x0 = (b[hs + 4 + j] & 15) | (int)(((qh >> j) << 4) & 0x10);
                int x1 = (b[hs + 4 + j] >> 4) | (int)((qh >> (j + 12)) & 0x10);
                y[32 * i + j] = t == GG_Q5_0 ? (float)(x0 - 16) * half_to_f32(h) : (float)x0 * half_to_f32(h) + half_to_f32(h2);
                y[32 * i + j + 16] = t == GG_Q5_0 ? (float)(x1 - 16) * half_to_f32(h) : (float)x1 * half_to_f32(h) + half_to_f32(h2);
            }
            break;
        }
        case GG_MXFP4: {
            const uint8_t *b = p + 17 * i;
            float s = b[0] == 0xff ? NAN : (b[0] ? ldexpf(1.0f, b[0] - 127) : 0x1p-127f);
            for (int j = 0; j < 16; j++) {
                y[32 * i + j] = E2M1[b[1 + j] & 15] * s;
                y[32 * i + j + 16] = E2M1[b[1 + j] >> 4] * s;
            }
            break;
        }
        }
    }
}

/* GGUF block types and the blockq formats holding their codes exactly: the one a
 * file's tensors are read as, and another written to the same type (llama.cpp's
 * rule for the same codes). */
static const struct { uint32_t type; const char *fmt, *alias; } EXACT[] = {
    {GG_Q8_0, "int8_b32_sfp16", "q8_0"}, {GG_Q4_0, "int4_b32_sfp16", "q4_0"}, {GG_Q4_1, "q4_1", NULL},
    {GG_Q5_0, "q5_0", NULL},             {GG_Q5_1, "q5_1", NULL},             {GG_MXFP4, "mxfp4", NULL},
};

/* The blockq format holding a GGUF block type's codes exactly, or NULL. */
static const char *exact_format(uint32_t t)
{
    for (size_t i = 0; i < sizeof EXACT / sizeof *EXACT; i++)
        if (EXACT[i].type == t) return EXACT[i].fmt;
    return NULL;
}

/* The GGUF block type of format name fn, or 0 (F32: none of these). */
static uint32_t exact_type(const char *fn)
{
    for (size_t i = 0; i < sizeof EXACT / sizeof *EXACT; i++)
        if (!strcmp(fn, EXACT[i].fmt) || (EXACT[i].alias && !strcmp(fn, EXACT[i].alias))) return EXACT[i].type;
    return 0;
}

/* GGUF block row <-> our packed row (scale code, then 32 codes LSB-first).
 * GGUF 4-bit blocks put elements 0-15 in low nibbles and 16-31 in high ones. */
/* Q5_0 and Q5_1: fp16 d (Q5_1: then fp16 min), the codes' fifth bits (element j at
 * bit j of a little-endian word), their low nibbles as Q4_0's; Q5_0 stores codes
 * as q + 16, Q5_1 as they are. Ours (q5_0, q5_1): the scale code (d, or d | min << 16),
 * then 32 five-bit codes, the same bytes a block, read and written by the packer's
 * own row coder a block at a time. */
static void transcode_q5(const bq_format *f, const uint8_t *g, uint8_t *b, size_t nb, int to_gguf, int with_min)
{
    const size_t hs = with_min ? 4 : 2, gs = hs + 20;
    const int bias = with_min ? 0 : 16;  /* two's complement <-> q + 16 */
    for (size_t i = 0; i < nb; i++) {
        uint8_t *gb = (uint8_t *)g + gs * i, *bb = b + gs * i, c[32];
        uint32_t sc = 0, qh = 0;
        if (to_gguf) {
            pack_row_codes(f, bb, 32, &sc, c);
            memcpy(gb, &sc, hs);  /* little-endian: d, then min */
            for (int j = 0; j < 32; j++) c[j] = (uint8_t)((c[j] + bias) & 31);
            for (int j = 0; j < 32; j++) qh |= (uint32_t)(c[j] >> 4) << j;
            memcpy(gb + hs, &qh, 4);
            for (int j = 0; j < 16; j++) gb[hs + 4 + j] = (uint8_t)((c[j] & 15) | (c[j + 16] & 15) << 4);
        } else {
            memcpy(&sc, gb, hs);
            memcpy(&qh, gb + hs, 4);
            for (int j = 0; j < 16; j++) {
                c[j] = (uint8_t)((gb[hs + 4 + j] & 15) | ((qh >> j) & 1) << 4);
                c[j + 16] = (uint8_t)((gb[hs + 4 + j] >> 4) | ((qh >> (j + 16)) & 1) << 4);
            }
            for (int j = 0; j < 32; j++) c[j] = (uint8_t)((c[j] + bias) & 31);
            pack_row_put(f, bb, 32, &sc, c);
        }
    }
}

static void transcode_row(uint32_t t, const bq_format *f, const uint8_t *g, uint8_t *b, size_t cols, int to_gguf)
{
    if (t == GG_Q5_0 || t == GG_Q5_1) { transcode_q5(f, g, b, cols / 32, to_gguf, t == GG_Q5_1); return; }
    /* Q8_0, and the 4-bit types: a header (fp16 d; Q4_1 fp16 d and min; MXFP4 one E8M0 byte), 16 bytes of nibbles */
    size_t nb = cols / 32, gs = type_row_bytes(t, 32), hs = t == GG_MXFP4 ? 1 : t == GG_Q4_1 ? 4 : 2;
    if (t == GG_Q8_0) { /* the same bytes: fp16 scale then 32 int8 codes */
        if (to_gguf) memcpy((uint8_t *)g, b, nb * gs);
        else memcpy(b, g, nb * gs);
        return;
    }
    for (size_t i = 0; i < nb; i++) {
        const uint8_t *src = to_gguf ? b + i * gs : g + i * gs;
        uint8_t *dst = to_gguf ? (uint8_t *)g + i * gs : b + i * gs;
        memcpy(dst, src, hs);
        uint8_t c[32];
        for (int j = 0; j < 16; j++) {
            if (to_gguf) { c[2 * j] = src[hs + j] & 15; c[2 * j + 1] = src[hs + j] >> 4; }
            else { c[j] = src[hs + j] & 15; c[j + 16] = src[hs + j] >> 4; }
        }
        for (int j = 0; j < 32; j++)  /* Q4_0 stores q + 8; ours is two's complement */
            if (t == GG_Q4_0) c[j] = (uint8_t)((c[j] + 8) & 15);
        for (int j = 0; j < 16; j++)
            dst[hs + j] = to_gguf ? (uint8_t)(c[j] | c[j + 16] << 4) : (uint8_t)(c[2 * j] | c[2 * j + 1] << 4);
    }
}

typedef struct { char name[128]; uint32_t nd, type; uint64_t ne[4], off; } tinfo;

static bq_status load_gguf_tensor(bq_model *m, slot_list *sl, const tinfo *ti, const uint8_t *data, size_t dsize,
                                  const char *path)
{
    char un[160];
    if (!map_name(ti->name, un, sizeof un, 0)) return bq_fail(BQ_ERR_UNSUPPORTED, "%s: unknown tensor '%s'", path, ti->name);
    slot *s = slot_find(sl, un);
    if (!s) return bq_fail(BQ_ERR_PARSE, "%s: tensor '%s' does not fit this architecture", path, ti->name);
    if ((s->p && *s->p) || *s->f) return bq_fail(BQ_ERR_PARSE, "%s: tensor '%s' appears twice", path, ti->name);
    size_t cols = (size_t)ti->ne[0], rows = ti->nd > 1 ? (size_t)ti->ne[1] : 1;
    if ((int)ti->nd != (s->cols ? 2 : 1) || (s->cols ? (cols != (size_t)s->cols || rows != (size_t)s->rows) : cols != (size_t)s->rows))
        return bq_fail(BQ_ERR_SHAPE, "%s: tensor '%s' has shape [%zu, %zu]; the config implies [%d, %d]", path, ti->name,
                       rows, cols, s->rows, s->cols);
    if (!type_row_bytes(ti->type, 32))
        return bq_fail(BQ_ERR_UNSUPPORTED, "%s: tensor '%s' has GGUF type %u (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, MXFP4)",
                       path, ti->name, ti->type);
    if (is_block_type(ti->type) && cols % 32)
        return bq_fail(BQ_ERR_SHAPE, "%s: tensor '%s': %zu columns are not whole blocks of 32", path, ti->name, cols);
    size_t rb = type_row_bytes(ti->type, cols);
    if (ti->off > dsize || rows > (dsize - ti->off) / (rb ? rb : 1))
        return bq_fail(BQ_ERR_PARSE, "%s: tensor '%s' runs past the end of the file (truncated?)", path, ti->name);
    const uint8_t *src = data + ti->off;
    int perm = s->cols && needs_permute(m, un);
    int hd = m->c.head_dim;
    if (perm && rows % (size_t)hd) return bq_fail(BQ_ERR_SHAPE, "%s: '%s' rows are not whole heads", path, ti->name);
    const char *ef = exact_format(ti->type);
    if (s->p && ef) {
        bq_format *f;
        bq_format_parse(ef, &f);
        size_t size = bq_packed_size(f, rows, cols), prb = size / rows;
        uint8_t *buf = malloc(size);
        bq_status st = buf ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory");
        for (size_t r = 0; r < rows && !st; r++)
            transcode_row(ti->type, f, src + (perm ? (size_t)permuted_row((int)r, hd) : r) * rb, buf + r * prb, cols, 0);
        if (!st) st = pmat_new(f, (int)rows, (int)cols, buf, size, s->p);
        free(buf);
        bq_format_free(f);
        return st;
    }
    float *y = malloc(rows * cols * sizeof *y);
    if (!y) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (size_t r = 0; r < rows; r++)
        gguf_row_to_float(ti->type, src + (perm ? (size_t)permuted_row((int)r, hd) : r) * rb, cols, y + r * cols);
    *s->f = y;
    return BQ_OK;
}

/* s[0..len) as a C string in buf; 0 if it does not fit or holds a NUL byte. */
static int cstr(char *buf, size_t cap, const char *s, size_t len)
{
    if (len >= cap || memchr(s, 0, len)) return 0;
    memcpy(buf, s, len);
    buf[len] = 0;
    return 1;
}

/* tokenizer.ggml.* -> tokenizer.json text (GPT-2's pre-tokenizer as ByteLevel,
 * whose regex tokenizer.c knows; any other as Split with its exact regex) */
static char *tokenizer_json(const kv *kvs, size_t nkv, const char *path, bq_status *st)
{
    const kv *tok = find_kv(kvs, nkv, "tokenizer.ggml.tokens"), *mer = find_kv(kvs, nkv, "tokenizer.ggml.merges");
    const kv *typ = find_kv(kvs, nkv, "tokenizer.ggml.token_type");
    char *model = kv_str(find_kv(kvs, nkv, "tokenizer.ggml.model")), *pre = kv_str(find_kv(kvs, nkv, "tokenizer.ggml.pre"));
    char *regex = kv_str(find_kv(kvs, nkv, "blockq.pre_tokenizer_regex"));
    char *out = NULL;
    if (!tok) { free(model); free(pre); free(regex); return NULL; }  /* no tokenizer: fine */
    if (!model || strcmp(model, "gpt2") || tok->type != GT_ARR || tok->atype != GT_STR || !mer || mer->type != GT_ARR ||
        mer->atype != GT_STR) {
        *st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: only byte-level BPE tokenizers (tokenizer.ggml.model = gpt2) are supported", path);
        goto done;
    }
    int gpt2 = !regex && (!pre || !strcmp(pre, "gpt-2") || !strcmp(pre, "default"));
    if (!regex && !gpt2) {
        *st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: pre-tokenizer '%s' is not known to blockq", path, pre);
        goto done;
    }
    cJSON *root = cJSON_CreateObject(), *mo = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(mo, "type", "BPE");
    cJSON *voc = cJSON_AddObjectToObject(mo, "vocab"), *mg = cJSON_AddArrayToObject(mo, "merges");
    cJSON *adds = cJSON_AddArrayToObject(root, "added_tokens");
    cJSON_AddNullToObject(root, "normalizer");
    cJSON *pt = cJSON_AddObjectToObject(root, "pre_tokenizer");
    if (gpt2) {
        cJSON_AddStringToObject(pt, "type", "ByteLevel");
        cJSON_AddBoolToObject(pt, "use_regex", 1);
    } else {
        cJSON_AddStringToObject(pt, "type", "Sequence");
        cJSON *ps = cJSON_AddArrayToObject(pt, "pretokenizers"), *sp = cJSON_CreateObject(), *bl = cJSON_CreateObject();
        cJSON_AddStringToObject(sp, "type", "Split");
        cJSON_AddStringToObject(cJSON_AddObjectToObject(sp, "pattern"), "Regex", regex);
        cJSON_AddStringToObject(sp, "behavior", "Isolated");
        cJSON_AddStringToObject(bl, "type", "ByteLevel");
        cJSON_AddBoolToObject(bl, "use_regex", 0);
        cJSON_AddItemToArray(ps, sp);
        cJSON_AddItemToArray(ps, bl);
    }
    if (typ && (typ->type != GT_ARR || typ->atype != GT_I32 || typ->n != tok->n)) {
        *st = bq_fail(BQ_ERR_PARSE, "%s: tokenizer.ggml.token_type must be an i32 array of %llu entries, one per token", path,
                      (unsigned long long)tok->n);
        cJSON_Delete(root);
        goto done;
    }
    cur c = {tok->val, tok->end, 0};
    cur ct = {typ ? typ->val : NULL, tok->end, 0};
    char buf[1024];
    strmap seen = {0};  /* a repeated token string keeps its first id, as llama.cpp's map does */
    for (uint64_t i = 0; i < tok->n && !*st; i++) {
        size_t len;
        const char *s = str(&c, &len);
        if (!s) break;
        if (!cstr(buf, sizeof buf, s, len)) {
            *st = bq_fail(BQ_ERR_PARSE, "%s: token %llu is longer than 1 KiB or holds a NUL byte", path, (unsigned long long)i);
            break;
        }
        int32_t ttype = 1;
        if (ct.p) { const void *tp = take(&ct, 4); if (tp) memcpy(&ttype, tp, 4); }
        if (ttype == 3 || ttype == 4) {
            cJSON *a = cJSON_CreateObject();
            cJSON_AddNumberToObject(a, "id", (double)i);
            cJSON_AddStringToObject(a, "content", buf);
            cJSON_AddBoolToObject(a, "special", ttype == 3);
            cJSON_AddItemToArray(adds, a);
        } else {
            int r = strmap_put(&seen, buf, len, (int64_t)i);
            if (r < 0) *st = bq_fail(BQ_ERR_NOMEM, "out of memory");
            else if (r) cJSON_AddNumberToObject(voc, buf, (double)i);
        }
    }
    strmap_free(&seen);
    c = (cur){mer->val, mer->end, 0};
    for (uint64_t i = 0; i < mer->n && !*st; i++) {
        size_t len;
        const char *s = str(&c, &len);
        if (!s) break;
        if (!cstr(buf, sizeof buf, s, len)) {
            *st = bq_fail(BQ_ERR_PARSE, "%s: merge %llu is longer than 1 KiB or holds a NUL byte", path, (unsigned long long)i);
            break;
        }
        cJSON_AddItemToArray(mg, cJSON_CreateString(buf));
    }
    out = *st ? NULL : cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!out && !*st) *st = bq_fail(BQ_ERR_NOMEM, "out of memory");
done:
    free(model);
    free(pre);
    free(regex);
    return out;
}

/* blockq.runtime (see write_runtime), if present. */
static bq_status read_runtime(const kv *kvs, size_t nkv, bq_model *m, slot_list *sl, const char *path)
{
    const kv *e = find_kv(kvs, nkv, "blockq.runtime");
    if (!e) return BQ_OK;
    char *js = kv_str(e);
    cJSON *o = js ? cJSON_Parse(js) : NULL;
    free(js);
    bq_status st = cJSON_IsObject(o) ? json_unique_keys(o, path) : bq_fail(BQ_ERR_PARSE, "%s: blockq.runtime is not a JSON object", path);
    if (!st) st = runtime_from_json(o, m, path);
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(o, "act"), *a;
    if (!st && act && !cJSON_IsObject(act)) st = bq_fail(BQ_ERR_PARSE, "%s: blockq.runtime act is not an object", path);
    for (a = act ? act->child : NULL; a && !st; a = a->next) {
        slot *s = slot_find(sl, a->string);
        if (!s || !s->l || !cJSON_IsString(a))
            st = bq_fail(BQ_ERR_PARSE, "%s: blockq.runtime names '%.100s', which is no linear weight with a format", path, a->string);
        else if ((st = bq_format_parse(a->valuestring, &s->l->aq)))
            st = bq_fail(st, "%s: '%s': %s", path, a->string, bq_last_error());
    }
    cJSON_Delete(o);
    return st;
}

bq_status gguf_parse(const char *path, const uint8_t *buf, size_t size, bq_model **out)
{
    *out = NULL;
    cur c = {buf, buf + size, 0};
    const void *mg = take(&c, 4);
    uint32_t ver = u32(&c);
    uint64_t nt = u64(&c), nkv = u64(&c);
    if (c.bad || memcmp(mg, "GGUF", 4)) return bq_fail(BQ_ERR_PARSE, "%s: not a GGUF file", path);
    if (ver != 3) return bq_fail(BQ_ERR_UNSUPPORTED, "%s: GGUF version %u; blockq reads version 3", path, ver);
    if (nt > size / 24 || nkv > size / 12) return bq_fail(BQ_ERR_PARSE, "%s: %llu tensors and %llu keys cannot fit in %zu bytes",
                                                          path, (unsigned long long)nt, (unsigned long long)nkv, size);
    kv *kvs = calloc((size_t)nkv + 1, sizeof *kvs);
    tinfo *ti = calloc((size_t)nt + 1, sizeof *ti);
    bq_model *m = calloc(1, sizeof *m);
    bq_status st = kvs && ti && m ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < nkv && !st && !c.bad; i++) {
        kvs[i].key = str(&c, &kvs[i].klen);
        kvs[i].type = u32(&c);
        kvs[i].end = buf + size;
        if (kvs[i].type == GT_ARR) {
            const uint8_t *p0 = c.p;
            kvs[i].atype = u32(&c);
            kvs[i].n = u64(&c);
            kvs[i].val = c.p;
            c.p = p0;
        } else {
            kvs[i].val = c.p;
        }
        skip_value(&c, kvs[i].type, 0);
    }
    for (uint64_t i = 0; i < nt && !st && !c.bad; i++) {
        size_t len;
        const char *nm = str(&c, &len);
        ti[i].nd = u32(&c);
        if (c.bad || len >= sizeof ti[i].name || ti[i].nd < 1 || ti[i].nd > 2) {
            st = bq_fail(BQ_ERR_PARSE, "%s: tensor %llu has a bad name or %u dimensions", path, (unsigned long long)i, ti[i].nd);
            break;
        }
        memcpy(ti[i].name, nm, len);
        for (uint32_t d = 0; d < ti[i].nd; d++) {
            ti[i].ne[d] = u64(&c);
            if (ti[i].ne[d] < 1 || ti[i].ne[d] > (1u << 24)) c.bad = 1;
        }
        ti[i].type = u32(&c);
        ti[i].off = u64(&c);
    }
    if (!st && c.bad) st = bq_fail(BQ_ERR_PARSE, "%s: header runs past the end of the file or holds a bad value (truncated?)", path);
    double align = 32;
    if (!st) {
        const kv *a = find_kv(kvs, (size_t)nkv, "general.alignment");
        if (a && (!kv_num(a, &align) || !(align >= 1 && align <= 65536) || align != (double)(size_t)align)) {
            st = bq_fail(BQ_ERR_PARSE, "%s: bad general.alignment", path);
            align = 32;
        }
    }
    size_t hdr = (size_t)(c.p - buf), A = (size_t)align, d0 = (hdr + A - 1) / A * A;
    if (!st && d0 > size) st = bq_fail(BQ_ERR_PARSE, "%s: no data section (truncated?)", path);
    /* config.json from the metadata */
    char *arch = st ? NULL : kv_str(find_kv(kvs, (size_t)nkv, "general.architecture"));
    if (!st && (!arch || (strcmp(arch, "llama") && strcmp(arch, "qwen2") && strcmp(arch, "qwen3"))))
        st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: GGUF architecture '%s' (blockq reads llama, qwen2, qwen3)", path, arch ? arch : "?");
    if (!st) {
        static const char *keys[][2] = {
            {"embedding_length", "hidden_size"}, {"feed_forward_length", "intermediate_size"},
            {"block_count", "num_hidden_layers"}, {"attention.head_count", "num_attention_heads"},
            {"attention.head_count_kv", "num_key_value_heads"}, {"context_length", "max_position_embeddings"},
            {"attention.layer_norm_rms_epsilon", "rms_norm_eps"}, {"rope.freq_base", "rope_theta"},
            {"attention.key_length", "head_dim"},
        };
        cJSON *cfg = cJSON_CreateObject();
        cJSON_AddStringToObject(cfg, "model_type", arch);
        char key[128];
        for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
            double v;
            snprintf(key, sizeof key, "%s.%s", arch, keys[k][0]);
            const kv *e = find_kv(kvs, (size_t)nkv, key);
            if (e && !kv_num(e, &v)) { st = bq_fail(BQ_ERR_PARSE, "%s: %s is not a number", path, key); break; }
            if (e && !isfinite(v)) { st = bq_fail(BQ_ERR_PARSE, "%s: %s is not finite", path, key); break; }
            if (e) cJSON_AddNumberToObject(cfg, keys[k][1], v);
        }
        const tinfo *emb = NULL;
        int has_out = 0;
        for (uint64_t i = 0; i < nt; i++) {
            if (!strcmp(ti[i].name, "token_embd.weight")) emb = &ti[i];
            has_out |= !strcmp(ti[i].name, "output.weight");
        }
        cJSON_AddNumberToObject(cfg, "vocab_size", emb && emb->nd == 2 ? (double)emb->ne[1] : 0);
        cJSON_AddBoolToObject(cfg, "tie_word_embeddings", !has_out);
        if (!strcmp(arch, "qwen2")) cJSON_AddStringToObject(cfg, "hidden_act", "silu");
        m->config_json = st ? NULL : cJSON_PrintUnformatted(cfg);
        cJSON_Delete(cfg);
        if (!st && !m->config_json) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        else if (!st) {
            m->config_len = strlen(m->config_json);
            st = config_parse(m->config_json, m->config_len, path, &m->c);
        }
        double rd;  /* rotation over part of each head only: not implemented */
        snprintf(key, sizeof key, "%s.rope.dimension_count", arch);
        const kv *rdk = find_kv(kvs, (size_t)nkv, key);
        if (!st && rdk && (!kv_num(rdk, &rd) || rd != m->c.head_dim))
            st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: %s differs from the head dimension %d: partial rotary embeddings are not supported",
                         path, key, m->c.head_dim);
    }
    free(arch);
    if (m) snprintf(m->dir, sizeof m->dir, "%s", path);
    if (!st) {
        m->tokenizer_json = tokenizer_json(kvs, (size_t)nkv, path, &st);
        m->tokenizer_len = m->tokenizer_json ? strlen(m->tokenizer_json) : 0;
    }
    if (!st && !(m->L = calloc((size_t)m->c.layers, sizeof *m->L))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    slot_list sl = {0};
    if (!st) { model_skeleton(m); st = model_slots(m, &sl); }
    for (uint64_t i = 0; i < nt && !st; i++) {
        if (ti[i].off % A) st = bq_fail(BQ_ERR_PARSE, "%s: tensor '%s' is not aligned", path, ti[i].name);
        else st = load_gguf_tensor(m, &sl, &ti[i], buf + d0, size - d0, path);
    }
    if (!st) st = read_runtime(kvs, (size_t)nkv, m, &sl, path);
    free(sl.v);
    if (!st && !LINEAR_PRESENT(&m->head) && m->c.tied) { m->head.w = m->tok_emb; m->head.pw = m->emb_p; }
    if (!st) st = model_check_complete(m, path);
    free(kvs);
    free(ti);
    if (st) { bq_model_free(m); return st; }
    model_scan(m);
    *out = m;
    return BQ_OK;
}

/* ---- writing ---- */

typedef struct { uint8_t *p; size_t n, cap; int oom; } wbuf;

static void put(wbuf *b, const void *d, size_t n)
{
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->n + n) cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q) { b->oom = 1; return; }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put32(wbuf *b, uint32_t v) { put(b, &v, 4); }
static void put64(wbuf *b, uint64_t v) { put(b, &v, 8); }
static void putstr(wbuf *b, const char *s) { put64(b, strlen(s)); put(b, s, strlen(s)); }
static void kv_str_w(wbuf *b, const char *k, const char *v) { putstr(b, k); put32(b, GT_STR); putstr(b, v); }
static void kv_u32_w(wbuf *b, const char *k, uint32_t v) { putstr(b, k); put32(b, GT_U32); put32(b, v); }
static void kv_f32_w(wbuf *b, const char *k, float v) { putstr(b, k); put32(b, GT_F32); put(b, &v, 4); }

/* Tokenizer metadata, from the tokenizer as tokenizer.c validated it; returns the
 * number of keys written. The token list covers every embedding row: ids the
 * tokenizer does not name are "[PAD<id>]" of type UNUSED, as llama.cpp's converter
 * writes them. A tokenizer id past the embedding is refused. */
static int write_tokenizer(wbuf *b, const bq_model *m, bq_status *st)
{
    if (!m->tokenizer_json) return 0;
    bq_tokenizer *t;
    if ((*st = tokenizer_parse(m->tokenizer_json, m->tokenizer_len, m->dir, &t))) return 0;
    int n = m->c.vocab, keys = 2;
    if (tokenizer_size(t) > n) {
        *st = bq_fail(BQ_ERR_PARSE, "%s: the tokenizer has id %d but the model has only %d embedding rows", m->dir,
                      tokenizer_size(t) - 1, n);
        bq_tokenizer_free(t);
        return 0;
    }
    for (int i = 0, kind; i < tokenizer_size(t); i++) {
        const char *tok = tokenizer_token(t, i, &kind), *vs = tokenizer_vocab_string(t, i);
        if (kind >= 2 && vs && strcmp(vs, tok)) {
            *st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: id %d is '%.40s' in the vocabulary and the added token '%.40s'; GGUF holds "
                          "one string per id", m->dir, i, vs, tok);
            bq_tokenizer_free(t);
            return 0;
        }
    }
    const char *regex = tokenizer_regex(t);
    kv_str_w(b, "tokenizer.ggml.model", "gpt2");
    kv_str_w(b, "tokenizer.ggml.pre", regex ? "default" : "gpt-2");
    if (regex) { kv_str_w(b, "blockq.pre_tokenizer_regex", regex); keys++; }  /* the exact Split regex, for blockq */
    char pad[32];
    putstr(b, "tokenizer.ggml.tokens");
    put32(b, GT_ARR); put32(b, GT_STR); put64(b, (uint64_t)n);
    for (int i = 0, kind; i < n; i++) {
        const char *tok = tokenizer_token(t, i, &kind);
        if (!tok) snprintf(pad, sizeof pad, "[PAD%d]", i);
        putstr(b, tok ? tok : pad);
    }
    putstr(b, "tokenizer.ggml.token_type");
    put32(b, GT_ARR); put32(b, GT_I32); put64(b, (uint64_t)n);
    for (int i = 0, kind; i < n; i++) {  /* NORMAL 1, CONTROL 3, USER_DEFINED 4, UNUSED 5 */
        tokenizer_token(t, i, &kind);
        put32(b, (uint32_t)(kind == 0 ? 5 : kind == 1 ? 1 : kind == 3 ? 3 : 4));
    }
    putstr(b, "tokenizer.ggml.merges");
    put32(b, GT_ARR); put32(b, GT_STR); put64(b, (uint64_t)tokenizer_nmerges(t));
    for (int r = 0; r < tokenizer_nmerges(t); r++) {
        const char *x, *y;
        tokenizer_merge(t, r, &x, &y);
        put64(b, strlen(x) + 1 + strlen(y));
        put(b, x, strlen(x));
        put(b, " ", 1);
        put(b, y, strlen(y));
    }
    keys += 3;
    bq_tokenizer_free(t);
    cJSON *cfg = cJSON_ParseWithLength(m->config_json, m->config_len);
    const char *ids[][2] = {{"bos_token_id", "tokenizer.ggml.bos_token_id"}, {"eos_token_id", "tokenizer.ggml.eos_token_id"}};
    for (int i = 0; i < 2; i++) {
        cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, ids[i][0]);
        if (cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < n && v->valuedouble == (int)v->valuedouble) {
            kv_u32_w(b, ids[i][1], (uint32_t)v->valuedouble);
            keys++;
        }
    }
    cJSON_Delete(cfg);
    return keys;
}

/* blockq.runtime: the quantisation that is not in the weights (activation formats
 * per linear, attention operands, KV cache, rounding), which llama.cpp ignores and
 * blockq reads back; absent when the model has none. Returns the keys written. */
static int write_runtime(wbuf *b, bq_model *m, const slot_list *sl, bq_status *st)
{
    cJSON *o = cJSON_CreateObject(), *act = cJSON_CreateObject();
    int any = m->attn_q || m->kv_q || m->qopts.round != BQ_ROUND_RNE || m->qopts.seed;
    for (int i = 0; i < sl->n; i++)
        if (sl->v[i].l && sl->v[i].l->aq && sl->v[i].cols) {
            cJSON_AddStringToObject(act, sl->v[i].name, sl->v[i].l->aq->name);
            any = 1;
        }
    runtime_to_json(m, o);
    cJSON_AddItemToObject(o, "act", act);
    char *js = any ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!any) return 0;
    if (!js) { *st = bq_fail(BQ_ERR_NOMEM, "out of memory"); return 0; }
    kv_str_w(b, "blockq.runtime", js);
    cJSON_free(js);
    return 1;
}

typedef struct { char name[160]; uint32_t type; size_t rows, cols; uint8_t *data; size_t size; slot *s; } wtensor;

/* One slot as a GGUF tensor: its type and size, and with `fill` its data (the
 * writer asks for one tensor's data at a time). */
static bq_status gguf_tensor(const bq_model *m, slot *s, wtensor *t, int fill)
{
    size_t rows = (size_t)s->rows, cols = s->cols ? (size_t)s->cols : rows;
    if (!s->cols) rows = 1;
    int perm = s->cols && needs_permute(m, s->name);
    int hd = m->c.head_dim;
    t->data = NULL;
    if (s->p && *s->p) {
        const pmat *pm = *s->p;
        const char *fn = pm->f->name;
        uint32_t ty = exact_type(fn);
        int f32 = format_is_fp32(pm->f), wide = f32 || pmat_is_float16(pm);
        if (wide) ty = f32 ? GG_F32 : pm->f->el.ebits == 8 ? GG_BF16 : GG_F16;  /* the same codes */
        else if (!ty || cols % 32)
            return bq_fail(BQ_ERR_UNSUPPORTED, "%s is %s, which has no exact GGUF type (use f32, f16, bf16, mxfp4, "
                           "q8_0, q5_0, q5_1, q4_0, q4_1 (llama.cpp's rules) or int8_b32_sfp16/int4_b32_sfp16 (blockq's) with rows of whole blocks)", s->name, pm->f->name);
        size_t rb = type_row_bytes(ty, cols);
        t->type = ty;
        t->size = rows * rb;
        if (!fill) return BQ_OK;
        size_t psize = bq_packed_size(pm->f, rows, cols), prb = psize / rows;
        uint8_t *packed = malloc(psize);
        t->data = malloc(rows * rb);
        if (!packed || !t->data) { free(packed); free(t->data); t->data = NULL; return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
        bq_status st = pmat_to_packed(pm, packed, psize);
        for (size_t r = 0; r < rows && !st; r++) {
            uint8_t *dst = t->data + (perm ? (size_t)permuted_row((int)r, hd) : r) * rb;
            if (wide) memcpy(dst, packed + r * prb, rb);
            else transcode_row(ty, pm->f, dst, packed + r * prb, cols, 1);
        }
        free(packed);
        return st;
    }
    const float *x = *s->f;
    int bf16 = s->cols > 0 && all_bf16(x, rows * cols);
    size_t es = bf16 ? 2 : 4;
    t->type = bf16 ? GG_BF16 : GG_F32;
    t->size = rows * cols * es;
    if (!fill) return BQ_OK;
    if (!(t->data = malloc(rows * cols * es))) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (size_t r = 0; r < rows; r++) {
        uint8_t *dst = t->data + (perm ? (size_t)permuted_row((int)r, hd) : r) * cols * es;
        for (size_t k = 0; k < cols; k++) {
            if (bf16) { uint16_t h = f32_top_bf16(x[r * cols + k]); memcpy(dst + 2 * k, &h, 2); }
            else memcpy(dst + 4 * k, &x[r * cols + k], 4);
        }
    }
    return BQ_OK;
}

bq_status bq_model_save_gguf(const bq_model *cm, const char *path)
{
    bq_model *m = (bq_model *)cm;  /* slots hand out pointers; nothing is changed */
    if (model_lorc_linear(m)) return bq_fail(BQ_ERR_UNSUPPORTED, "%s has LoRC factors (ptq lorc), which GGUF cannot express", model_lorc_linear(m)->name);
    if (m->rot_down || m->rot_qk)
        return bq_fail(BQ_ERR_UNSUPPORTED, "%s (ptq hadamard%s), which GGUF cannot express: save as .bq",
                       m->rot_down ? "down_proj's input is rotated online" : "each head's Q and K are rotated online", m->rot_down ? "" : "_kv");
    const char *arch = m->c.arch == ARCH_LLAMA ? "llama" : m->c.arch == ARCH_QWEN2 ? "qwen2" : m->c.arch == ARCH_QWEN3 ? "qwen3" : NULL;
    if (!arch) return bq_fail(BQ_ERR_UNSUPPORTED, "GGUF output supports llama, mistral, qwen2 and qwen3, not %s", m->c.model_type);
    slot_list sl;
    bq_status st = model_slots(m, &sl);
    if (st) return st;
    wtensor *ts = calloc((size_t)sl.n, sizeof *ts);
    int nt = 0, tied = model_head_tied(m);
    if (!ts) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int i = 0; i < sl.n && !st; i++) {
        slot *s = &sl.v[i];
        if ((tied && !strcmp(s->name, "lm_head.weight")) || !((s->p && *s->p) || *s->f)) continue;
        if (!map_name(s->name, ts[nt].name, sizeof ts[nt].name, 1)) {
            st = bq_fail(BQ_ERR_UNSUPPORTED, "tensor '%s' has no GGUF name", s->name);
            break;
        }
        ts[nt].rows = s->cols ? (size_t)s->rows : 1;
        ts[nt].cols = s->cols ? (size_t)s->cols : (size_t)s->rows;
        ts[nt].s = s;
        if (!(st = gguf_tensor(m, s, &ts[nt], 0))) nt++;
    }
    wbuf kvb = {0}, b = {0};
    int nkv = 0;
    if (!st) {
        const bq_config *c = &m->c;
        char key[128];
        kv_str_w(&kvb, "general.architecture", arch);
        kv_str_w(&kvb, "general.name", "blockq");
        kv_u32_w(&kvb, "general.alignment", 32);
        nkv = 3;
        const struct { const char *k; double v; int f; } hp[] = {
            {"context_length", c->max_pos, 0}, {"embedding_length", c->hidden, 0}, {"block_count", c->layers, 0},
            {"feed_forward_length", c->inter, 0}, {"attention.head_count", c->heads, 0},
            {"attention.head_count_kv", c->kv_heads, 0}, {"rope.dimension_count", c->head_dim, 0},
            {"attention.key_length", c->head_dim, 0}, {"attention.value_length", c->head_dim, 0},
            {"rope.freq_base", c->rope_theta, 1}, {"attention.layer_norm_rms_epsilon", c->norm_eps, 1},
        };
        for (size_t i = 0; i < sizeof hp / sizeof *hp; i++, nkv++) {
            snprintf(key, sizeof key, "%s.%s", arch, hp[i].k);
            if (hp[i].f) kv_f32_w(&kvb, key, (float)hp[i].v);
            else kv_u32_w(&kvb, key, (uint32_t)hp[i].v);
        }
        nkv += write_tokenizer(&kvb, m, &st);
        if (!st) nkv += write_runtime(&kvb, m, &sl, &st);
    }
    bq_afile *af = NULL;
    if (!st) {  /* the header in memory; then each tensor converted, written and freed in turn */
        put(&b, "GGUF", 4);
        put32(&b, 3);
        put64(&b, (uint64_t)nt);
        put64(&b, (uint64_t)nkv);
        put(&b, kvb.p, kvb.n);
        uint64_t off = 0;
        for (int i = 0; i < nt; i++) {
            putstr(&b, ts[i].name);
            put32(&b, ts[i].rows > 1 ? 2 : 1);
            put64(&b, ts[i].cols);
            if (ts[i].rows > 1) put64(&b, ts[i].rows);
            put32(&b, ts[i].type);
            put64(&b, off);
            off = (off + ts[i].size + 31) / 32 * 32;
        }
        static const uint8_t zero[32];
        put(&b, zero, (32 - b.n % 32) % 32);
        st = b.oom || kvb.oom ? bq_fail(BQ_ERR_NOMEM, "out of memory") : bq_afile_open(path, &af);
        if (!st) bq_afile_write(af, b.p, b.n);
        for (int i = 0; i < nt && !st; i++) {
            size_t want = ts[i].size;
            if (!(st = gguf_tensor(m, ts[i].s, &ts[i], 1)) && ts[i].size != want)
                st = bq_fail(BQ_ERR_IO, "%s: tensor size changed while writing", ts[i].name);
            if (!st) {
                bq_afile_write(af, ts[i].data, ts[i].size);
                bq_afile_write(af, zero, (32 - ts[i].size % 32) % 32);
            }
            free(ts[i].data);
            ts[i].data = NULL;
        }
        if (af) {
            if (st) bq_afile_abort(af);
            else st = bq_afile_commit(af);
        }
    }
    for (int i = 0; i < nt; i++) free(ts[i].data);
    free(ts);
    free(sl.v);
    free(kvb.p);
    free(b.p);
    return st;
}
