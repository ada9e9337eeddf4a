/* Inside the RTL generator: the float FMA baselines (fma.c) beside the block dot
 * products (rtl.c). */
#ifndef BQ_RTL_IMPL_H
#define BQ_RTL_IMPL_H
#include "format.h"
#include "qkern.h"
#include <stdio.h>

/* fp32, bf16, fp16 (IEEE, subnormals): their exponent and fraction bits, or a refusal. */
bq_status rtl_float_side(const bq_format *f, int *E, int *M);
/* The module NAME (and NAME_fma, one lane) for a K-step FMA chain. */
void rtl_fma_emit(FILE *o, const char *name, const bq_format *w, const bq_format *a, int K);
/* NAME_vectors.hex (C's fmaf, step for step) and NAME_tb.v. */
bq_status rtl_fma_write_tests(const char *dir, const char *name, const bq_format *w, const bq_format *a, int K, int nvec,
                              uint64_t seed);

/* Closes a testbench: the PASS/FAIL line over nvec vectors, then fclose(o). */
bq_status rtl_tb_end(FILE *o, const char *path, int nvec);

#endif
