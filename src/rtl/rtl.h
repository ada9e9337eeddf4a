/* Hardware for a format's block dot product (issue #23): generated Verilog-2005,
 * its testbench with vectors from the C library, and the synthesis driver.
 *
 * The module takes one block of weights and one of activations as codes (the
 * shared scale code and K element codes each) and returns their dot product
 * exactly, as acc * 2^ex with a signed integer acc (a Kulisch accumulator over the
 * block: no rounding anywhere), and a NaN flag. Every element and scale decode is
 * derived from the library's own decoding and checked against it when the vectors
 * are made (docs/rtl.md). */
#ifndef BQ_RTL_H
#define BQ_RTL_H
#include "format.h"

typedef struct rtl_design rtl_design;

/* w, a: format names (a NULL: the same as w); lanes: elements per cycle, the block
 * length for block formats (0: the block, or 32 for element formats); pipeline:
 * registers after the products and on the outputs (latency 2). */
bq_status rtl_new(const char *w, const char *a, int lanes, int pipeline, rtl_design **out);
void rtl_free(rtl_design *d);
const char *rtl_module_name(const rtl_design *d);
/* DIR/NAME.v, DIR/NAME_tb.v and DIR/NAME_vectors.hex (nvec vectors, seeded);
 * the vectors' reference results are checked against the library's dequantisation.
 * *changed: NAME.v was (re)written (it is left alone when its text is the same). */
bq_status rtl_write(const rtl_design *d, const char *dir, int nvec, uint64_t seed, int *changed);
/* Accumulator and exponent widths, for reports. */
void rtl_widths(const rtl_design *d, int *acc_bits, int *ex_bits, int *lanes);
/* The block length when a shared scale closes each block (its result then goes into a
 * float accumulator once a block); 0 for element formats, per-row/group integer
 * lanes (their exact sum runs on) and the float FMA chains. */
int rtl_block(const rtl_design *d);

#endif
