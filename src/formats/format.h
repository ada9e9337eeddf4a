/* Internal representation of a number format.
 *
 * A format = an element grid (elem_t) + a scheme saying how values are scaled
 * onto that grid (no scale, one fp32 scale per tensor/row/group, or a shared
 * per-block scale of some kind). What each scheme is (a code per block, a power
 * of two or not, ...) is one row of the traits table in scheme.c; its arithmetic
 * is qkern.h's block_scale and pack.c's scale codes; named formats are aliases in
 * names.c.
 */
#ifndef BQ_FORMAT_H
#define BQ_FORMAT_H
#include "core.h"
#include <stdint.h>

typedef enum { EK_FP32, EK_MF, EK_INT, EK_LOG } elem_kind;
typedef enum { FL_IEEE, FL_FN, FL_FINITE } mf_flavour;

typedef struct {
    elem_kind kind;
    int bits;        /* width of one code */
    /* minifloat */
    int ebits, mbits, bias, flavour, overflow_inf, subnorm;
    int emin, emax;  /* smallest / largest normal exponent (unbiased) */
    float maxval;    /* largest finite magnitude on the unscaled grid */
    int fast;        /* float32 scaling path is exact for this grid */
    /* integer grid: q in [lo, hi]; frac = implicit fraction bits (fixed point) */
    int lo, hi, frac, signmag;
    /* log: exponent range on the unscaled grid; code 0 is zero */
    int lemin, lemax;
} elem_t;

typedef enum {
    SCH_ELEM,   /* element format alone (minifloat, fixed point, log, fp32) */
    SCH_INT,    /* intB with an fp32 scale per tensor / row / group */
    SCH_MX,     /* OCP MX: E8M0 power-of-two scale from floor(log2 amax) */
    SCH_SCALED, /* generic ELEM_bK_sSCALE with a non-E8M0 scale: s = SCALE(amax/max) */
    SCH_NVFP4,  /* SCALED(e2m1, b16, e4m3) plus an fp32 tensor scale */
    SCH_BFP,    /* block floating point: 8-bit exponent from ceil(log2 amax) */
    SCH_BM,     /* block minifloat: shared 8-bit exponent bias */
    SCH_BL,     /* block logarithm: shared 8-bit exponent bias */
    SCH_COUNT
} scheme_id;

typedef enum { SCOPE_NONE, SCOPE_TENSOR, SCOPE_ROW, SCOPE_GROUP } int_scope;

/* Where a block's scale code can mean NaN. */
typedef enum { NAN_CODE_NONE, NAN_CODE_FF, NAN_CODE_MINIFLOAT } nan_code_kind;

/* A scheme's traits (scheme.c). */
typedef struct {
    const char *family;  /* bq_format_info.family (SCH_ELEM's formats name their element kind) */
    int block_code;      /* a scale code stored for every block of f->block elements */
    int pow2_code;       /* that code is an 8-bit shared exponent: the block scale a power of two */
    int linear;          /* a value is its code's grid value times the block's factor (not block log) */
    int tensor_factor;   /* an fp32 factor per tensor in the packed header (NVFP4's s_t) */
    int elem_modifiers;  /* a minifloat element's `:` modifiers are accepted */
    nan_code_kind nan_code;  /* the block code that means NaN: 0xff (E8M0), the scale minifloat's NaN, none */
} scheme_traits;

/* Where a format's scales live: none (the elements alone), one fp32 scale for the
 * tensor, for each row or for each group of f->block (int formats), or a code per
 * block (the block schemes). */
typedef enum { SCALE_NONE, SCALE_TENSOR, SCALE_ROW, SCALE_GROUP, SCALE_BLOCK } scale_place;

struct bq_format {
    char name[64];
    scheme_id sch;
    elem_t el;
    int block;       /* K for block schemes and int groups; 0 otherwise */
    int_scope scope; /* SCH_INT only */
    int asym;        /* SCH_INT: a zero point; SCH_SCALED with ggml: a per-block fp16 minimum (q4_1, q5_1) */
    elem_t scale;    /* SCH_SCALED / SCH_NVFP4: the scale's own minifloat format */
    int scale_bits;  /* bits of one stored scale */
    int ggml;        /* SCH_SCALED: llama.cpp's rule for the block scale and codes (q4_0, q4_1, q5_0, q5_1, q8_0; qkern.h) */
    /* The element grid as small integers up to a power of two (format_int_grid, when
     * parsed): value(code) = ilut[code] * iemult, ilo the least used; igrid 0 if not */
    int igrid, ilo;
    int8_t ilut[256];
    float iemult;
};

/* Per-tensor facts a kernel may need (computed once before the rows run). */
typedef struct {
    float tensor_scale;  /* NVFP4 s_t, or the per-tensor int scale */
    float tensor_zero;   /* per-tensor asymmetric zero point */
    int tensor_nonfinite;
    bq_round round;
    uint64_t seed;
    size_t cols;
} qctx;

/* The traits of f's scheme: a row of scheme.c's table (inline: kernels ask per block). */
extern const scheme_traits bq_scheme_traits[SCH_COUNT];
static inline const scheme_traits *scheme_of(const struct bq_format *f) { return &bq_scheme_traits[f->sch]; }
/* A block scale that is a minifloat code, not a power of two (SCALED, NVFP4). */
static inline int scheme_minifloat_scale(const struct bq_format *f) { return scheme_of(f)->block_code && !scheme_of(f)->pow2_code; }
static inline scale_place format_scale_place(const struct bq_format *f)
{
    if (scheme_of(f)->block_code) return SCALE_BLOCK;
    if (f->sch != SCH_INT) return SCALE_NONE;
    return f->scope == SCOPE_TENSOR ? SCALE_TENSOR : f->scope == SCOPE_ROW ? SCALE_ROW : SCALE_GROUP;
}
/* A float32 scale: the int formats' (per tensor, row or group). */
static inline int format_float_scale(const struct bq_format *f)
{
    scale_place p = format_scale_place(f);
    return p == SCALE_TENSOR || p == SCALE_ROW || p == SCALE_GROUP;
}
/* A float32 scale stored with each row or group (int formats per row or group). */
static inline int format_float_group_scale(const struct bq_format *f)
{
    scale_place p = format_scale_place(f);
    return p == SCALE_ROW || p == SCALE_GROUP;
}
/* No scale stored in the rows: elements alone, or one scale in the header. */
static inline int format_rows_unscaled(const struct bq_format *f)
{
    scale_place p = format_scale_place(f);
    return p == SCALE_NONE || p == SCALE_TENSOR;
}
/* Unscaled floats: fp32 itself, a 16-bit minifloat (fp16, bf16), a minifloat of >= 16 bits. */
static inline int format_is_fp32(const struct bq_format *f) { return f->sch == SCH_ELEM && f->el.kind == EK_FP32; }
static inline int format_is_float16(const struct bq_format *f)
{
    return f->sch == SCH_ELEM && f->el.kind == EK_MF && f->el.bits == 16;
}
static inline int format_is_wide_float(const struct bq_format *f)
{
    return format_is_fp32(f) || (f->sch == SCH_ELEM && f->el.kind == EK_MF && f->el.bits >= 16);
}
/* Significant bits of the grid's largest element (0: not a small grid). */
int elem_sig_bits(const elem_t *e);
/* Whether every value f produces is a bf16 number (scheme.c). */
int format_values_bf16(const struct bq_format *f);

/* Largest magnitude, smallest normal and smallest non-zero magnitude of the unscaled grid (elem.c). */
void elem_grid_range(const elem_t *e, double *mx, double *mnorm, double *msub);
/* Element construction (elem.c). */
int elem_minifloat(elem_t *e, int ebits, int mbits, int bias, mf_flavour fl, int overflow_inf, int subnorm);
void elem_int(elem_t *e, int bits, int lo, int hi, int frac, int signmag);
void elem_log(elem_t *e, int bits);

/* Tensor-wide facts before the rows run (quant.c). */
bq_status bq_tensor_ctx(const bq_format *f, const float *x, size_t rows, size_t cols,
                        const bq_qopts *o, qctx *c);

/* Per-ISA kernel entry (kernels.c, compiled once per ISA). */
typedef void (*qdq_rows_fn)(const bq_format *f, const qctx *c, const float *x, float *y,
                            size_t r0, size_t r1);
qdq_rows_fn bq_kernel_for(const bq_format *f);
/* Per-ISA codes of one row for packing (kernels.c's bq_pack_codes): 0 where the row
 * needs pack.c's scalar path. */
typedef int (*pack_codes_fn)(const bq_format *f, const qctx *c, const float *x, size_t cols, size_t idx0,
                             uint32_t *scodes, uint8_t *ecodes, float *tmp);
pack_codes_fn bq_pack_codes_for(const bq_format *f);

/* Reading and writing the packed layout piecewise (pack.c), for the kernels
 * that compute on packed weights. A "group" is a block, an int group or a row. */
size_t pack_header_bytes(const bq_format *f);
size_t pack_group_len(const bq_format *f, size_t cols);  /* elements sharing one scale along a row */
size_t pack_row_bytes(const bq_format *f, size_t cols);
float pack_tensor_scale(const bq_format *f, const uint8_t *packed);  /* 1 if none */
/* bq_pack; fast 0 packs every row through the scalar reference path (for tests). */
bq_status pack_tensor(const bq_format *f, const float *in, size_t rows, size_t cols, const bq_qopts *o,
                      uint8_t *out, size_t out_size, int fast);
bq_status pack_decode_rows(const bq_format *f, const uint8_t *packed, size_t cols, size_t r0, size_t r1, float *out);
float pack_elem_value(const bq_format *f, uint32_t code);
/* Work out f's integer grid (the igrid fields); bq_format_parse calls it. */
void format_int_grid(bq_format *f);
/* A group's scale as two factors (value = (q * s1) * s2, as fake quantisation
 * computes it); 0 when the code means NaN. */
int pack_scale_parts(const bq_format *f, float tensor_scale, uint32_t code, float *s1, float *s2);
void pack_row_codes(const bq_format *f, const uint8_t *row, size_t cols, uint32_t *scodes, uint8_t *ecodes);
void pack_row_put(const bq_format *f, uint8_t *row, size_t cols, const uint32_t *scodes, const uint8_t *ecodes);

#endif
