/* The schemes' traits: what code asks of a format's scheme, one row each, so that
 * sites ask a question (does it store a code per block? is that code a power of
 * two? is a value its code times the block's factor? which code means NaN?)
 * instead of listing scheme names. The
 * arithmetic of each scheme (its scale rule, its code's meaning) lives in qkern.h's
 * block_scale and pack.c's scale_from_code; which row kernel runs follows from
 * format_scale_place (format.h). */
#include "format.h"

const scheme_traits bq_scheme_traits[SCH_COUNT] = {
    /*              family     block_code pow2_code linear tensor_factor elem_modifiers nan_code */
    [SCH_ELEM]   = {"element", 0, 0, 1, 0, 1, NAN_CODE_NONE},
    [SCH_INT]    = {"int",     0, 0, 1, 0, 0, NAN_CODE_NONE},  /* fp32 scales per tensor, row or group */
    [SCH_MX]     = {"mx",      1, 1, 1, 0, 1, NAN_CODE_FF},
    [SCH_SCALED] = {"scaled",  1, 0, 1, 0, 1, NAN_CODE_MINIFLOAT},
    [SCH_NVFP4]  = {"nvfp4",   1, 0, 1, 1, 0, NAN_CODE_MINIFLOAT},
    [SCH_BFP]    = {"bfp",     1, 1, 1, 0, 0, NAN_CODE_NONE},
    [SCH_BM]     = {"bm",      1, 1, 1, 0, 1, NAN_CODE_NONE},
    [SCH_BL]     = {"bl",      1, 1, 0, 0, 0, NAN_CODE_NONE},  /* log codes carry the block's shift */
};

int elem_sig_bits(const elem_t *e)
{
    if (e->kind == EK_MF) return e->mbits + 1;
    if (e->kind == EK_LOG) return 1;
    if (e->kind != EK_INT) return 0;
    int m = e->hi > -e->lo ? e->hi : -e->lo, b = 0;
    while (m >> b) b++;
    return b;
}

/* Elements of at most 8 significant bits times a power of two, or times a small
 * minifloat scale whose product with them still fits; float32 scales (int formats,
 * NVFP4's tensor scale) make values that are not. The exception: values under
 * 2^-126, where bf16 has fewer bits than float32; no real activation or weight is
 * that small. */
int format_values_bf16(const bq_format *f)
{
    const scheme_traits *t = scheme_of(f);
    int e = elem_sig_bits(&f->el);
    if (e <= 0 || t->tensor_factor || format_float_scale(f)) return 0;
    if (scheme_minifloat_scale(f)) return f->scale.kind == EK_MF && e + f->scale.mbits + 1 <= 8;
    return e <= 8;
}
