/* The schemes' traits: what code asks of a format's scheme, one row each, so that
 * sites ask a question (does it store a code per block? is that code a power of
 * two? is a value its code times the block's factor?) instead of listing scheme
 * names. The arithmetic of each scheme (its scale rule, its code's meaning) lives
 * in qkern.h's block_scale and pack.c's scale_from_code. */
#include "format.h"

static const scheme_traits traits[SCH_COUNT] = {
    /*              family     block_code pow2_code linear tensor_factor elem_modifiers */
    [SCH_ELEM]   = {"element", 0, 0, 1, 0, 1},
    [SCH_INT]    = {"int",     0, 0, 1, 0, 0},  /* fp32 scales per tensor, row or group: not codes */
    [SCH_MX]     = {"mx",      1, 1, 1, 0, 1},
    [SCH_SCALED] = {"scaled",  1, 0, 1, 0, 1},
    [SCH_NVFP4]  = {"nvfp4",   1, 0, 1, 1, 0},
    [SCH_BFP]    = {"bfp",     1, 1, 1, 0, 0},
    [SCH_BM]     = {"bm",      1, 1, 1, 0, 1},
    [SCH_BL]     = {"bl",      1, 1, 0, 0, 0},  /* log codes carry the block's shift */
};

const scheme_traits *scheme_of(const bq_format *f) { return &traits[f->sch]; }
