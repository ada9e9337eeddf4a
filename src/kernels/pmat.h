/* A weight matrix held packed, and the matmuls that compute on it.
 *
 * Two representations, chosen per tensor when it is loaded:
 *  - PM_PANEL, for block formats whose element codes are small integers up to a
 *    power-of-two factor (MXINT8, MXFP4, NVFP4, BFP8/4, int8/int4 blocks and
 *    groups, block minifloat e2m1, ...): the same codes, regrouped into panels of
 *    16 rows so that SIMD lanes hold rows (docs/bq-file.md, "In memory"). Same size
 *    as the file's layout; matmuls run on integer dot products (VNNI) or decode
 *    to float in registers.
 *  - PM_STREAM, every other format: the file's bit stream as is; rows are decoded
 *    64 at a time into a small buffer for SGEMM.
 * A float32 copy of the whole matrix never exists.
 */
#ifndef BQ_PMAT_H
#define BQ_PMAT_H
#include "format.h"

enum { PM_ROWS = 16 };  /* rows per panel: one AVX-512 register of fp32 lanes */

typedef enum { PM_STREAM, PM_PANEL } pm_kind;

typedef struct pmat {
    bq_format *f;         /* owned */
    int rows, cols;
    pm_kind kind;
    /* PM_STREAM: the bq_pack layout */
    uint8_t *data;
    size_t size;
    int borrowed;         /* data is a view of the caller's memory (pmat_view16): not freed; 1: a mapped
                             file's, whose pages are given back when freed; 2: left alone (pmat_view_of) */
    /* PM_PANEL */
    int eb;               /* element bits: 4 or 8 */
    int K;                /* elements per scale group along a row */
    int nb;               /* groups per row */
    int npanel;           /* ceil(rows / 16) */
    int sbytes;           /* bytes per stored scale code: 1, 2 or 4 */
    uint8_t *pw;          /* element codes, panel after panel (see pmat.c) */
    uint8_t *ps;          /* scale codes [panel][group][16] */
    int8_t lut[256];      /* element code -> integer; value = lut * emult */
    float emult;          /* a power of two */
    float tscale;         /* per-tensor factor (NVFP4's s_t), else 1 */
    float s1[256], s2[256]; /* 1-byte scale code -> the two factors */
    float sc[256];        /* 1-byte scale code -> (s1 * s2) * emult, the matmul factor */
    int pow2_scales, pow2_shift; /* sc[c] = 2^(c + shift - 127) where that is normal (c < 255) */
    float vlut[256];      /* PM_STREAM fast path: element code -> value */
    int fast_stream;
} pmat;

/* Take rows x cols of bq_pack output (copied; the caller keeps `packed`). */
bq_status pmat_new(const bq_format *f, int rows, int cols, const uint8_t *packed, size_t size, pmat **out);
/* A bf16/fp16 matrix held where it lies (a mapped checkpoint, which must outlive the
 * pmat): no copy. Other formats, or data not 2-byte aligned, are copied as pmat_new. */
bq_status pmat_view16(const bq_format *f, int rows, int cols, const uint8_t *data, size_t size, pmat **out);
/* A second view of a 16-bit matrix's bytes (a quantisation trial's source): freeing it
 * leaves them and their pages alone. */
bq_status pmat_view_of(const pmat *src, pmat **out);
/* Quantise rows x cols of float32 into f and hold the result packed (bq_pack, then pmat_new). */
bq_status pmat_pack(const bq_format *f, const float *x, int rows, int cols, const bq_qopts *o, pmat **out);
void pmat_free(pmat *m);
/* A 16-bit float matrix (bf16, fp16): a checkpoint held as stored, decoded exactly. */
int pmat_is_float16(const pmat *m);
/* Held 16-bit matrix src fake-quantised into f a few rows at a time (no float32 copy
 * of the whole) and held as bf16: *out. *out is NULL, with BQ_OK, where a value is not
 * a bf16 number (the caller then quantises a float32 copy). Formats whose context
 * needs the whole tensor (a per-tensor int scale, NVFP4's s_t) and stochastic
 * rounding (its noise is indexed over the whole tensor) are the caller's to avoid. */
bq_status pmat_qdq16(const bq_format *f, const pmat *src, const bq_qopts *o, pmat **out);
/* The same, packed into f (pmat_pack of each few rows): *out NULL, with BQ_OK, where
 * a row cannot be packed (NaN/Inf a format cannot hold: the caller's float32 route
 * then says where); formats with a tensor header are the caller's to avoid. */
bq_status pmat_pack16(const bq_format *f, const pmat *src, const bq_qopts *o, pmat **out);
/* *pm decoded into a new float32 matrix *w, then freed (*pm = NULL). */
bq_status pmat_widen(pmat **pm, float **w);
size_t pmat_bytes(const pmat *m);                 /* memory held, all included */
/* One row of a PM_PANEL matrix as pack_row_codes gives it from the bq_pack layout:
 * its scale codes (m->nb) and element codes (m->cols). */
void pmat_row_codes(const pmat *m, int row, uint32_t *sc, uint8_t *ec);
/* The bq_pack layout again (exactly the bytes pmat_new took). */
bq_status pmat_to_packed(const pmat *m, uint8_t *out, size_t size);
/* Rows [r0, r1) as float32, bit-identical to bq_unpack / fake quantisation. */
void pmat_decode(const pmat *m, int r0, int r1, float *out);

/* Activations quantised for the integer path: int8 codes (+128, so unsigned)
 * and one float factor per group of `K` elements. */
typedef struct {
    int n, cols, K;
    uint8_t *u;    /* [n][cols] */
    float *s;      /* [n][cols / K] */
    int8_t *q;     /* [n][cols]: the codes themselves (u - 128), for broadcasts from memory */
    int32_t *qsum; /* [n][cols / 16]: sums of q over 16 columns, made once for every slice */
} pm_act;

/* Whether x (n x cols) quantised to `af` can run the integer path against m. */
int pmat_int_ok(const pmat *m, const bq_format *af);
bq_status pm_act_make(const bq_format *af, const float *x, int n, int cols, const bq_qopts *o, pm_act *a);
void pm_act_free(pm_act *a);

/* y[t, r] for rows [r0, r1) (multiples of 16 except at the end), tokens [0, n).
 * y has row stride ldy. */
void pmat_mm_int(const pmat *m, const pm_act *a, float *y, int ldy, int r0, int r1);
void pmat_mv_f32(const pmat *m, const float *x, int n, float *y, int ldy, int r0, int r1);
/* The same for a held bf16/fp16 matrix (widened in registers); 0 if m is not one. */
int pmat_mv_float16(const pmat *m, const float *x, int n, float *y, int ldy, int r0, int r1);
/* The same for a float32 matrix w [rows][cols] (rows r0..r1), n <= 8 tokens. */
void mv_rows_f32(const float *w, int cols, const float *x, int n, float *y, int ldy, int r0, int r1);
/* The same with row strides: w's rows ldw apart, x's ldx apart (attention over a cache). */
void mv_rows_f32_ld(const float *w, size_t ldw, int cols, const float *x, size_t ldx, int n, float *y, int ldy, int r0, int r1);
/* out[0..d) = sum over i in [i0, i1] of p[i] * V[i][.], i ascending, V's rows ldv apart. */
void mv_axpy_rows_f32(const float *p, int i0, int i1, const float *V, size_t ldv, int d, float *out);

/* Per-ISA kernels (pk_isa.c, compiled once per ISA). */
typedef struct {
    void (*mm_int)(const pmat *m, const pm_act *a, float *y, int ldy, int p0, int p1);
    void (*mv_f32)(const pmat *m, const float *x, int n, float *y, int ldy, int p0, int p1);
    void (*decode)(const pmat *m, int p, int r0, int r1, float *out /* rows [r0, r1) of panel p: [r1 - r0][cols] */);
    /* q8_0's codes (+128) of x [n], n a multiple of 16, as ggml_block makes them with 1/d = id */
    void (*q8_0_codes)(const float *x, int n, float id, uint8_t *u);
} pk_isa;

#endif
