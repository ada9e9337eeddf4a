/* Hardware cost model: memory density (bits per element, scales included) and
 * arithmetic density (area of one multiply-accumulate, relative to float32).
 * Every constant is explained in docs/cost-model.md. Areas are in full-adder
 * equivalents (FA); a 2:1 multiplexer counts C_MUX FA. */
#include "cost.h"
#include "format.h"
#include <math.h>
#include <string.h>

#define C_MUX 0.25      /* one 2:1 mux bit relative to one full adder */
#define GUARD 4         /* accumulator guard bits (16 products before a carry-out matters) */
#define FP32_ACC_SIG 24 /* block partial sums are added into a float32 accumulator */

typedef struct {
    int sig;       /* significand bits in the multiplier (incl. hidden bit; magnitude for sign-magnitude) */
    int ebits;     /* per-element exponent bits (0: integer-like) */
    int log;       /* logarithmic element: multiply = exponent add */
    int block;     /* elements per shared scale (0: none or amortised over a whole row) */
    int scale_sig; /* significand bits of the shared scale (0: power of two) */
    int scale_bits;
} operand;

static int clog2(double x) { return x <= 1 ? 0 : (int)ceil(log2(x)); }

static operand operand_of(const bq_format *f)
{
    operand o = {0};
    const elem_t *e = &f->el;
    switch (e->kind) {
    case EK_FP32: o.sig = 24; o.ebits = 8; break;
    case EK_MF: o.sig = e->mbits + 1; o.ebits = e->ebits; break;
    case EK_LOG: o.log = 1; o.ebits = e->bits - 1; o.sig = 1; break;
    default: o.sig = e->signmag ? e->bits - 1 : e->bits; break;  /* two's complement B x B, or magnitude */
    }
    if (scheme_of(f)->block_code) {
        o.block = f->block;
        o.scale_bits = f->scale_bits;
        if (scheme_minifloat_scale(f)) o.scale_sig = f->scale.mbits + 1;
    } else if (format_scale_place(f) == SCALE_GROUP) {
        o.block = f->block;
        o.scale_bits = 32;
        o.scale_sig = 24;
    }
    return o;
}

/* Area of one MAC of weight format w with activation format a. lmul: the
 * significand multiplier becomes L-Mul's adder of the two mantissa fields (one
 * bit wider than the wider field; the offset 2^-l(m) is a constant). */
static double mac_area(const operand *w, const operand *a, int lmul)
{
    double mult = lmul ? (double)(w->sig > a->sig ? w->sig : a->sig) : (double)w->sig * a->sig;
    int wide = w->ebits >= 8 || a->ebits >= 8 || (w->ebits >= 5 && w->sig > 8) || (a->ebits >= 5 && a->sig > 8);
    double area = 0;
    int P = w->sig + a->sig;  /* product width */
    if (w->log && a->log) {
        /* product = exponent sum; accumulate 2^k one-hot into a fixed-point accumulator */
        int span = (1 << w->ebits) + (1 << a->ebits);
        area += (w->ebits > a->ebits ? w->ebits : a->ebits) + 1;   /* exponent adder */
        area += (span + GUARD) * C_MUX * clog2(span);                /* decode 2^k into the accumulator */
        area += span + GUARD;                                        /* accumulator adder */
    } else if (wide) {
        /* a float MAC with a float32-style accumulator: multiply, align, add, normalise */
        area += mult;
        area += (w->ebits > a->ebits ? w->ebits : a->ebits) + 1;
        area += 2.0 * P * clog2(P) * C_MUX;                          /* alignment + normalisation shifters */
        area += P;
    } else {
        /* small elements: products aligned into a fixed-point (Kulisch-style) accumulator */
        int span = (w->ebits ? (1 << w->ebits) - 1 : 0) + (a->ebits ? (1 << a->ebits) - 1 : 0);
        int acc = P + span + GUARD;
        area += w->log || a->log ? 0 : mult;                        /* a log operand turns the multiply into a shift */
        if (w->log || a->log) area += (double)P * clog2(1 << (w->log ? w->ebits : a->ebits)) * C_MUX;
        if (span) area += (w->ebits > a->ebits ? w->ebits : a->ebits) + 1 + (double)P * clog2(span + 1) * C_MUX;
        area += acc;
    }
    /* shared scales: combine the two block scales and fold the block's partial sum
     * into a float32 accumulator, once per block (amortised over K) */
    int K = w->block > a->block ? (a->block ? a->block : w->block) : (w->block ? w->block : a->block);
    if (K > 0 && !wide) {
        int acc = P + GUARD;
        double per_block = (w->scale_bits > a->scale_bits ? w->scale_bits : a->scale_bits) + 1;  /* exponent adder */
        if (w->scale_sig || a->scale_sig)
            per_block += (double)(w->scale_sig ? w->scale_sig : 1) * (a->scale_sig ? a->scale_sig : 1);
        per_block += acc * clog2(acc) * C_MUX + FP32_ACC_SIG + FP32_ACC_SIG * clog2(FP32_ACC_SIG) * C_MUX;
        area += per_block / K;
    }
    return area;
}

bq_status bq_cost_pair(const bq_format *w, const bq_format *a, bq_cost *out)
{
    bq_format *f32;
    bq_status st = bq_format_parse("fp32", &f32);
    if (st) return st;
    operand o32 = operand_of(f32), ow = operand_of(w), oa = operand_of(a);
    bq_format_free(f32);
    bq_format_info iw, ia;
    bq_format_get_info(w, &iw);
    bq_format_get_info(a, &ia);
    memset(out, 0, sizeof *out);
    out->w_bits = iw.bits_per_element;
    out->a_bits = ia.bits_per_element;
    out->mac_area = mac_area(&ow, &oa, 0);
    out->fp32_mac_area = mac_area(&o32, &o32, 0);
    /* L-Mul is defined where both elements are floating point (docs/formats.md) */
    int lm = ow.ebits && oa.ebits && !ow.log && !oa.log && !scheme_minifloat_scale(w) && !scheme_minifloat_scale(a);
    out->lmul_mac_area = lm ? mac_area(&ow, &oa, 1) : 0;
    out->lmul_arith_density = lm ? out->fp32_mac_area / out->lmul_mac_area : 0;
    out->arith_density = out->fp32_mac_area / out->mac_area;
    out->mem_density = 32.0 / out->w_bits;
    return BQ_OK;
}
