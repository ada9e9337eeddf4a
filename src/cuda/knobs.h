// The CUDA backend's switches in the environment, for A/B runs (bench/gpu_round2.sh):
// unset gives the default; a value that is not one of the switch's is refused, so that a
// mistyped run fails instead of measuring the default under another name. Read where a
// handle is made (a weight's upload, a backend), never in a kernel's path.
#ifndef BQ_KNOBS_H
#define BQ_KNOBS_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
extern "C" {
#include "core.h"
}

// *out = the index of name's value in vals (nv of them), dflt where name is unset
static inline bq_status env_knob(const char *name, const char *const *vals, int nv, int dflt, int *out)
{
    const char *e = getenv(name);
    *out = dflt;
    if (!e) return BQ_OK;
    for (int i = 0; i < nv; i++)
        if (!strcmp(e, vals[i])) { *out = i; return BQ_OK; }
    char list[128] = "";
    for (int i = 0; i < nv; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? (i == nv - 1 ? " or " : ", ") : "", vals[i]);
    return bq_fail(BQ_ERR_ARG, "%s=%s in the environment: expected %s", name, e, list);
}

// 0 or 1
static inline bq_status env_switch(const char *name, int dflt, int *on)
{
    static const char *const v[2] = {"0", "1"};
    return env_knob(name, v, 2, dflt, on);
}

// the GEMV path of weights uploaded with BQ_GEMV_DEFAULT: 1 int8 (where it applies), 0 fp16
static inline bq_status env_gemv_int8(int *int8)
{
    static const char *const v[2] = {"fp16", "int8"};
    return env_knob("BQ_CUDA_GEMV", v, 2, 1, int8);
}

// 4-bit int codes on the int8 GEMV as offset nibbles (i8_layout.h's mode 5): 1 (default), or
// 0 through the slots' tables as the other 4-bit grids (BQ_CUDA_I8_OFF)
static inline bq_status env_i8_off(int *off) { return env_switch("BQ_CUDA_I8_OFF", 1, off); }

// gemv_i8's next tile in flight (BQ_CUDA_I8_PF), an experiment: 0 never (default), 1 always,
// 2 ("unsplit") only in launches whose CTAs take whole rows (q/k/v, gate/up, many rows), where
// one GEMV gained, not in the column-split launches of few rows, where it lost; 7B decode
// gained nothing either way (bench/RESULTS.md, twentieth and twenty-third sessions)
static inline bq_status env_i8_pf(int *pf)
{
    static const char *const v[3] = {"0", "1", "unsplit"};
    return env_knob("BQ_CUDA_I8_PF", v, 3, 0, pf);
}
// 6-bit minifloat codes (MXFP6) on the fp16 GEMV: 1 (default) put into fp16 by their bits,
// 0 through the 64-entry table in shared memory as before (BQ_CUDA_F6=table)
static inline bq_status env_f6_bits(int *bits)
{
    static const char *const v[2] = {"table", "bits"};
    return env_knob("BQ_CUDA_F6", v, 2, 1, bits);
}

#endif
