/* Format names: the alias table and the grammar.
 *
 * Adding a named format is one line in `aliases` (a name and the generic
 * spelling it stands for) plus, if it should be listed, one in `listed`.
 */
#include "qkern.h"
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct { const char *name, *spec; } alias;

static const alias aliases[] = {
    /* OCP Microscaling v1.0: block 32, E8M0 scale */
    {"mxfp8_e4m3", "e4m3_b32_se8m0"},
    {"mxfp8_e5m2", "e5m2_b32_se8m0"},
    {"mxfp6_e3m2", "e3m2_b32_se8m0"},
    {"mxfp6_e2m3", "e2m3_b32_se8m0"},
    {"mxfp4", "e2m1_b32_se8m0"},
    {"mxfp4_e2m1", "e2m1_b32_se8m0"},
    {"mxint8", "int8_b32_se8m0"},
    /* element formats */
    {"fp8_e4m3", "e4m3"},
    {"fp8_e5m2", "e5m2"},
    {"fp6_e3m2", "e3m2"},
    {"fp6_e2m3", "e2m3"},
    {"fp4_e2m1", "e2m1"},
    {"fp16", "e5m10"},
    {"bf16", "e8m7"},
    {"f16", "e5m10"},   /* llama.cpp's spelling */
};

/* What `blockq formats` lists. */
static const char *const listed[] = {
    "fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1",
    "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4",
    "bfp8_b16", "bfp6_b16", "bfp5_b16", "bfp4_b16", "bfp3_b16", "bfp8_b32", "bfp6_b32", "bfp4_b32",
    "bme4m3_b16", "bme3m2_b16", "bme2m3_b16", "bme2m1_b16",
    "bl8_b16", "bl6_b16", "bl4_b16",
    "int8", "int8_row", "int8_g128", "int8_asym_row", "int6_row", "int4_g128", "int4_asym_g128", "int4_g32",
    "fixed8.4", "fixed6.3", "fixed4.2",
    "log8", "log6", "log4",
    "e2m1_b16_se4m3", "e2m1_b32_sfp16", "int8_b32_sfp16", "int4_b32_sfp16", "e4m3_b16_sbf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0",
};

const char *bq_format_list(size_t i) { return i < sizeof listed / sizeof listed[0] ? listed[i] : NULL; }

const char *bq_format_grammar(void)
{
    return "a named format (see 'blockq formats': mxfp4, nvfp4, fp8_e4m3, ...), eXmY, intB[_asym][_row|_gG], "
           "fixedW.F, logB, bfpM[_bK], bmeXmY[_bK], blB[_bK], or ELEM_bK_sSCALE with SCALE in "
           "{e8m0,e4m3,fp16,bf16,fp32}; element modifiers :sat :inf :nosub :ieee :fn :finite :bias=N";
}

/* Read a decimal in [lo, hi] at *p; advance on success. */
static int num(const char **p, int lo, int hi, int *out)
{
    const char *s = *p;
    long v = 0;
    if (!isdigit((unsigned char)*s)) return 0;
    if (s[0] == '0' && isdigit((unsigned char)s[1])) return 0;  /* no leading zeros */
    while (isdigit((unsigned char)*s)) {
        v = v * 10 + (*s++ - '0');
        if (v > hi) return 0;
    }
    if (v < lo) return 0;
    *out = (int)v;
    *p = s;
    return 1;
}

static int eat(const char **p, const char *lit)
{
    size_t n = strlen(lit);
    if (strncmp(*p, lit, n)) return 0;
    *p += n;
    return 1;
}

typedef struct { int flavour, overflow, subnorm, bias; } mods;  /* -1 = unset */

static mf_flavour default_flavour(int x, int y)
{
    if ((x == 4 && y == 3)) return FL_FN;
    if ((x == 5 && (y == 2 || y == 10)) || (x == 8 && y == 7)) return FL_IEEE;
    return FL_FINITE;
}

/* eXmY with modifiers; in_block forces saturation and takes no Inf/NaN. */
static int make_minifloat(elem_t *e, int x, int y, const mods *m, int in_block)
{
    mf_flavour fl = m->flavour >= 0 ? (mf_flavour)m->flavour : default_flavour(x, y);
    int bias = m->bias != INT32_MIN ? m->bias : (1 << (x - 1)) - 1;
    int inf = in_block ? 0 : (m->overflow >= 0 ? m->overflow : fl != FL_FINITE);
    return elem_minifloat(e, x, y, bias, fl, inf, m->subnorm >= 0 ? m->subnorm : 1);
}

/* Element part: returns 1 and advances *p past it. kind_out: 'f' minifloat, 'i' int. */
static int parse_elem_token(const char **p, int *x, int *y, int *bits, char *kind)
{
    const char *s = *p;
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++) {
        size_t n = strlen(aliases[i].name);
        /* element aliases only (those that expand to a bare eXmY) */
        if (!strncmp(s, aliases[i].name, n) && (s[n] == '_' || s[n] == ':' || !s[n]) &&
            !strchr(aliases[i].spec, '_')) {
            const char *q = aliases[i].spec;
            if (eat(&q, "e") && num(&q, 1, 8, x) && eat(&q, "m") && num(&q, 0, 23, y)) {
                *kind = 'f';
                *p = s + n;
                return 1;
            }
        }
    }
    if (eat(&s, "e") && num(&s, 1, 8, x) && eat(&s, "m") && num(&s, 0, 23, y)) { *kind = 'f'; *p = s; return 1; }
    s = *p;
    if (eat(&s, "int") && num(&s, 2, 8, bits)) { *kind = 'i'; *p = s; return 1; }
    return 0;
}

static int parse_mods(const char *s, mods *m)
{
    m->flavour = m->overflow = m->subnorm = -1;
    m->bias = INT32_MIN;
    while (*s) {
        if (!eat(&s, ":")) return 0;
        if (eat(&s, "sat")) m->overflow = 0;
        else if (eat(&s, "inf")) m->overflow = 1;
        else if (eat(&s, "nosub")) m->subnorm = 0;
        else if (eat(&s, "ieee")) m->flavour = FL_IEEE;
        else if (eat(&s, "fn")) m->flavour = FL_FN;
        else if (eat(&s, "finite")) m->flavour = FL_FINITE;
        else if (eat(&s, "bias=")) {
            int neg = eat(&s, "-"), b;
            if (!num(&s, 0, 200, &b)) return 0;
            m->bias = neg ? -b : b;
        } else return 0;
        if (*s && *s != ':') return 0;
    }
    return 1;
}

static int opt_block(const char **p, int def, int *k)
{
    if (!**p) { *k = def; return 1; }
    return eat(p, "_b") && num(p, 1, 4096, k);
}

static int parse_into(bq_format *f, const char *base, const mods *m)
{
    const char *s = base;
    int a, b, k;
    char kind;
    elem_t *e = &f->el;

    if (!strcmp(s, "fp32") || !strcmp(s, "f32")) { f->sch = SCH_ELEM; e->kind = EK_FP32; e->bits = 32; return 1; }
    /* llama.cpp's Q4_0, Q5_0 and Q8_0: fp16 scale per 32, its own scale and rounding rules (qkern.h) */
    if (!strcmp(s, "q4_0") || !strcmp(s, "q5_0") || !strcmp(s, "q8_0")) {
        int bits = s[1] - '0';
        f->sch = SCH_SCALED;
        f->block = 32;
        f->scale_bits = 16;
        f->ggml = bits;
        elem_int(e, bits, bits == 8 ? -127 : -(1 << (bits - 1)), (1 << (bits - 1)) - 1, 0, 0);
        return elem_minifloat(&f->scale, 5, 10, 15, FL_IEEE, 0, 1);
    }
    /* llama.cpp's Q4_1 and Q5_1: unsigned codes, fp16 scale and fp16 minimum per 32 */
    if (!strcmp(s, "q4_1") || !strcmp(s, "q5_1")) {
        int bits = s[1] - '0';
        f->sch = SCH_SCALED;
        f->block = 32;
        f->scale_bits = 32;  /* fp16 d, then fp16 min */
        f->ggml = bits;
        f->asym = 1;
        elem_int(e, bits, 0, (1 << bits) - 1, 0, 0);
        return elem_minifloat(&f->scale, 5, 10, 15, FL_IEEE, 0, 1);
    }
    if (!strcmp(s, "nvfp4")) {
        f->sch = SCH_NVFP4;
        f->block = 16;
        f->scale_bits = 8;
        return make_minifloat(e, 2, 1, m, 1) && elem_minifloat(&f->scale, 4, 3, 7, FL_FN, 0, 1);
    }
    /* bfpM[_bK]: sign + (M-1)-bit magnitude, 8-bit exponent */
    s = base;
    if (eat(&s, "bfp") && num(&s, 2, 16, &a) && opt_block(&s, 16, &k) && !*s) {
        f->sch = SCH_BFP;
        f->block = k;
        f->scale_bits = 8;
        elem_int(e, a, -((1 << (a - 1)) - 1), (1 << (a - 1)) - 1, a - 1, 1);
        return 1;
    }
    s = base;
    if (eat(&s, "bme") && num(&s, 1, 8, &a) && eat(&s, "m") && num(&s, 0, 15, &b) && opt_block(&s, 16, &k) && !*s) {
        mods mm = *m;
        mm.flavour = FL_FINITE;
        f->sch = SCH_BM;
        f->block = k;
        f->scale_bits = 8;
        return a + b + 1 <= 16 && make_minifloat(e, a, b, &mm, 1);
    }
    s = base;
    if (eat(&s, "bl") && num(&s, 2, 8, &a) && opt_block(&s, 16, &k) && !*s) {
        f->sch = SCH_BL;
        f->block = k;
        f->scale_bits = 8;
        elem_log(e, a);
        return 1;
    }
    s = base;
    if (eat(&s, "fixed") && num(&s, 2, 16, &a) && eat(&s, ".") && num(&s, 0, 100, &b) && !*s) {
        f->sch = SCH_ELEM;
        elem_int(e, a, -(1 << (a - 1)), (1 << (a - 1)) - 1, b, 0);
        return 1;
    }
    s = base;
    if (eat(&s, "log") && num(&s, 2, 8, &a) && !*s) {
        f->sch = SCH_ELEM;
        elem_log(e, a);
        return 1;
    }
    /* intB[_asym][_tensor|_row|_gG]  (but not intB_bK_sSCALE) */
    s = base;
    if (eat(&s, "int") && num(&s, 2, 8, &a) && !strstr(s, "_b")) {
        f->sch = SCH_INT;
        f->scope = SCOPE_TENSOR;
        f->asym = eat(&s, "_asym");
        if (eat(&s, "_row")) f->scope = SCOPE_ROW;
        else if (eat(&s, "_tensor")) f->scope = SCOPE_TENSOR;
        else if (eat(&s, "_g")) {
            if (!num(&s, 1, 1 << 20, &f->block)) return 0;
            f->scope = SCOPE_GROUP;
        }
        if (*s) return 0;
        f->scale_bits = 32 + (f->asym ? 8 : 0);
        elem_int(e, a, f->asym ? 0 : -((1 << (a - 1)) - 1), f->asym ? (1 << a) - 1 : (1 << (a - 1)) - 1, 0, 0);
        return 1;
    }
    /* ELEM[_bK_sSCALE] */
    s = base;
    if (!parse_elem_token(&s, &a, &b, &k, &kind)) return 0;
    if (!*s) {
        if (kind != 'f') return 0;  /* a bare intB is handled above */
        f->sch = SCH_ELEM;
        return make_minifloat(e, a, b, m, 0);
    }
    int bits = k, K;
    if (!(eat(&s, "_b") && num(&s, 1, 4096, &K) && eat(&s, "_s"))) return 0;
    f->block = K;
    int e8m0 = eat(&s, "e8m0");
    if (e8m0) {
        f->sch = SCH_MX;
        f->scale_bits = 8;
    } else {
        f->sch = SCH_SCALED;
        int ok = 0;
        if (eat(&s, "e4m3")) { ok = elem_minifloat(&f->scale, 4, 3, 7, FL_FN, 0, 1); f->scale_bits = 8; }
        else if (eat(&s, "fp16")) { ok = elem_minifloat(&f->scale, 5, 10, 15, FL_IEEE, 0, 1); f->scale_bits = 16; }
        else if (eat(&s, "bf16")) { ok = elem_minifloat(&f->scale, 8, 7, 127, FL_IEEE, 0, 1); f->scale_bits = 16; }
        else if (eat(&s, "fp32")) { ok = elem_minifloat(&f->scale, 8, 23, 127, FL_IEEE, 0, 1); f->scale_bits = 32; }
        if (!ok) return 0;
    }
    if (*s) return 0;
    if (kind == 'f') return a + b + 1 <= 16 && make_minifloat(e, a, b, m, 1);
    /* int elements: MX int has B-2 fraction bits (1.6 for int8); scaled int is plain */
    elem_int(e, bits, -((1 << (bits - 1)) - 1), (1 << (bits - 1)) - 1, e8m0 ? bits - 2 : 0, 0);
    return 1;
}

bq_status bq_format_parse(const char *name, bq_format **out)
{
    *out = NULL;
    if (!name || !*name) return bq_fail(BQ_ERR_FORMAT, "empty format name; expected %s", bq_format_grammar());
    size_t len = strlen(name);
    if (len >= sizeof((bq_format *)0)->name)
        return bq_fail(BQ_ERR_FORMAT, "format name too long (%zu characters)", len);
    char base[64];
    memcpy(base, name, len + 1);
    char *colon = strchr(base, ':');
    mods m;
    if (!parse_mods(colon ? strchr(name, ':') : "", &m))
        return bq_fail(BQ_ERR_FORMAT, "unknown format '%s': bad modifier; expected %s", name, bq_format_grammar());
    if (colon) *colon = 0;
    /* expand a whole-name alias (mxfp4 -> e2m1_b32_se8m0) */
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (!strcmp(base, aliases[i].name) && strchr(aliases[i].spec, '_')) {
            snprintf(base, sizeof base, "%s", aliases[i].spec);
            break;
        }
    bq_format *f = calloc(1, sizeof *f);
    if (!f) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    if (!parse_into(f, base, &m)) {
        free(f);
        return bq_fail(BQ_ERR_FORMAT, "unknown format '%s': expected %s", name, bq_format_grammar());
    }
    if (colon && (f->ggml || !scheme_of(f)->elem_modifiers)) {
        free(f);
        return bq_fail(BQ_ERR_FORMAT, "format '%s': modifiers apply only to minifloat elements", name);
    }
    memcpy(f->name, name, len + 1);
    format_int_grid(f);
    *out = f;
    return BQ_OK;
}

void bq_format_free(bq_format *f) { free(f); }
const char *bq_format_canonical(const bq_format *f) { return f->name; }
