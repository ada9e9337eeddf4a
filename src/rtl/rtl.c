/* Verilog for a block dot product, derived from the library's decoding.
 *
 * Each element code decodes (a table made from the library's own element values)
 * to a sign, a magnitude m < 2^M and an exponent e >= 0: value = (-1)^s m 2^(e + L0).
 * A lane multiplies the magnitudes, adds the exponents and shifts the product into
 * a fixed-point lane (integer grids have e = 0: no shifter); a balanced adder tree
 * sums the lanes; the block scales add to the exponent (powers of two: MX, BFP, block
 * minifloat, block log) or multiply the sum by their significands (minifloat scales:
 * NVFP4's e4m3, fp16/bf16). Nothing is rounded, so the result is the exact dot
 * product of the two dequantised blocks: what the library's float32 dequantisation
 * gives wherever float32 can hold it (checked for every vector written). */
#include "rtl.h"
#include "rtl_impl.h"
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { XW = 12 };  /* bits of the exponent output */

typedef struct { uint8_t nan, sign; uint32_t m; int e; } dec;

typedef struct {
    bq_format *f;
    char tag;            /* 'w' or 'a' in port and wire names */
    int eb, sb;          /* element and scale code bits (sb 0: no scale) */
    int M, EMAX, EW, L0; /* m < 2^M, e in [0, EMAX] (EW bits), value = m 2^(e + L0) */
    dec el[256];
    int stype;           /* 0 none, 1 power of two 2^E(code), 2 a minifloat */
    int ea, ec, esigned; /* power of two: E = ea * code + ec, code read as signed if esigned */
    uint32_t nanc[8];
    int nnan;
    const elem_t *sf;    /* minifloat scale */
    int SM, SL0, ssign, snan;  /* snan: 0 none, 1 exponent all ones, 2 all ones but the sign */
} side;

struct rtl_design {
    side s[2];
    int K, pipe, LW, W;
    int fma;  /* a float FMA chain (fma.c) instead of a block dot product */
    char name[160];
};

static int clog2(uint64_t v) { int b = 0; while ((1ull << b) < v) b++; return b; }
static int bits_for(uint64_t v) { return v ? 64 - __builtin_clzll(v) : 1; }

/* ---- analysis --------------------------------------------------------------------- */

static bq_status analyse_elements(side *s)
{
    const bq_format *f = s->f;
    const elem_t *e = &f->el;
    if (e->kind == EK_FP32 || e->bits > 8)
        return bq_fail(BQ_ERR_UNSUPPORTED, "rtl: %s has %d-bit elements; the generator decodes elements of up to 8 bits "
                       "(and IEEE fp32/bf16/fp16 as FMA chains)", f->name, e->bits);
    s->eb = e->bits;
    if (e->kind == EK_MF) { s->M = e->mbits + 1; s->L0 = e->emin - e->mbits; }
    else if (e->kind == EK_INT) { s->M = bits_for((uint64_t)(e->hi > -e->lo ? e->hi : -e->lo)); s->L0 = -e->frac; }
    else { s->M = 1; s->L0 = e->lemin; }
    s->EMAX = 0;
    for (uint32_t c = 0; c < (1u << e->bits); c++) {
        float v = pack_elem_value(f, c);
        dec *d = &s->el[c];
        memset(d, 0, sizeof *d);
        if (!isfinite(v)) { d->nan = 1; continue; }  /* Inf, where a grid has it, is flagged as NaN too */
        d->sign = signbit(v) != 0;
        if (v == 0) continue;
        double a = fabs((double)v);
        int p = ilogb(a), ee = p - (s->M - 1) - s->L0;
        ee = ee < 0 ? 0 : ee;
        double m = ldexp(a, -(s->L0 + ee));
        if (m != floor(m) || m >= ldexp(1.0, s->M))
            return bq_fail(BQ_ERR_UNSUPPORTED, "rtl: %s code %u (%g) is not m 2^(e + %d) with m < 2^%d", f->name, c, v, s->L0, s->M);
        d->m = (uint32_t)m;
        d->e = ee;
        s->EMAX = ee > s->EMAX ? ee : s->EMAX;
    }
    s->EW = bits_for((uint64_t)s->EMAX);
    return BQ_OK;
}

/* The scale of a code: NaN, exponent, significand and sign (1, 0, + for none). */
static int scale_of(const side *s, uint32_t c, int *E, uint32_t *m, int *neg)
{
    *E = 0; *m = 1; *neg = 0;
    if (s->stype == 1) {
        for (int i = 0; i < s->nnan; i++) if (c == s->nanc[i]) return 0;
        int x = s->esigned && c >= (1u << (s->sb - 1)) ? (int)c - (1 << s->sb) : (int)c;
        *E = s->ea * x + s->ec;
    } else if (s->stype == 2) {
        const elem_t *se = s->sf;
        uint32_t eall = (1u << se->ebits) - 1, ef = (c >> se->mbits) & eall, mf = c & ((1u << se->mbits) - 1);
        if ((s->snan == 1 && ef == eall) || (s->snan == 2 && ef == eall && mf == (1u << se->mbits) - 1)) return 0;
        *m = ef ? mf | (1u << se->mbits) : mf;
        *E = (ef ? (int)ef - 1 : 0) + s->SL0;
        *neg = s->ssign && (c >> (se->bits - 1));
    }
    return 1;
}

static bq_status analyse_scale(side *s)
{
    const bq_format *f = s->f;
    if (f->asym)
        return bq_fail(BQ_ERR_UNSUPPORTED, "rtl: %s has %s; the generator takes symmetric grids", f->name,
                       format_float_scale(f) ? "zero points" : "a per-block minimum");
    if (!scheme_of(f)->block_code) {  /* none, or a float32 scale that multiplies once per tensor, row or group, outside the integer lanes */
        s->stype = 0;
        s->sb = 0;
        return BQ_OK;
    }
    if (scheme_of(f)->pow2_code) {  /* a shared exponent */
        s->stype = 1;
        s->sb = f->scale_bits;
        int E[256], ok[256];
        s->nnan = 0;
        for (uint32_t c = 0; c < (1u << s->sb); c++) {
            float s1, s2;
            ok[c] = pack_scale_parts(f, 1.0f, c, &s1, &s2);
            if (!ok[c]) {
                if (s->nnan == 8) return bq_fail(BQ_ERR_UNSUPPORTED, "rtl: %s has more than 8 NaN scale codes", f->name);
                s->nanc[s->nnan++] = c;
                continue;
            }
            int m1, m2;
            if (frexpf(s1, &m1) != 0.5f || frexpf(s2, &m2) != 0.5f)
                return bq_fail(BQ_ERR_UNSUPPORTED, "rtl: %s scale code %u is not a power of two", f->name, c);
            E[c] = m1 + m2 - 2;
        }
        /* E affine in the code, read unsigned or as two's complement */
        for (int sg = 0; sg < 2; sg++) {
            int have = 0, c0 = 0, fit = 1, a = 0;
            for (int c = 0; c < (1 << s->sb) && fit; c++) {
                if (!ok[c]) continue;
                int x = sg && c >= (1 << (s->sb - 1)) ? c - (1 << s->sb) : c;
                if (!have) { have = 1; c0 = x; s->ec = E[c]; continue; }
                if (have == 1) { a = (E[c] - s->ec) / (x - c0); have = 2; s->ec -= a * c0; }
                fit = E[c] == a * x + s->ec;
            }
            if (fit && have == 2) { s->ea = a; s->esigned = sg; return BQ_OK; }
        }
        return bq_fail(BQ_ERR_UNSUPPORTED, "rtl: %s's scale exponent is not affine in its code", f->name);
    }
    /* a minifloat scale (SCALED, NVFP4: its fp32 tensor scale multiplies outside the block) */
    const elem_t *se = &f->scale;
    if (se->kind != EK_MF || f->scale_bits > 16 || (se->bits != 1 + se->ebits + se->mbits && se->bits != se->ebits + se->mbits))
        return bq_fail(BQ_ERR_UNSUPPORTED, "rtl: %s's scale is not a minifloat of up to 16 bits", f->name);
    s->stype = 2;
    s->sf = se;
    s->sb = f->scale_bits;
    s->ssign = se->bits == 1 + se->ebits + se->mbits;
    s->SM = se->mbits + 1;
    s->SL0 = se->emin - se->mbits;
    /* which codes are NaN: exponent all ones (IEEE), all ones but the sign (FN), none */
    int pat_ok[3] = {1, 1, 1};
    uint32_t eall = (1u << se->ebits) - 1, mall = (1u << se->mbits) - 1;
    for (uint32_t c = 0; c < (1u << s->sb); c++) {
        uint32_t ef = (c >> se->mbits) & eall, mf = c & mall;
        int isnan_ = !isfinite(mf_decode(se, c)), pats[3] = {0, ef == eall, ef == eall && mf == mall};
        for (int p = 0; p < 3; p++) pat_ok[p] &= pats[p] == isnan_;
    }
    s->snan = pat_ok[0] ? 0 : pat_ok[1] ? 1 : pat_ok[2] ? 2 : -1;
    if (s->snan < 0) return bq_fail(BQ_ERR_UNSUPPORTED, "rtl: %s's scale has NaN codes of no known pattern", f->name);
    /* the structural decode (scale_of, and the Verilog that mirrors it) against the library's */
    for (uint32_t c = 0; c < (1u << s->sb); c++) {
        int E, neg;
        uint32_t m;
        if (!scale_of(s, c, &E, &m, &neg)) continue;
        double want = ldexp((double)m, E) * (neg ? -1 : 1), v = mf_decode(se, c);
        if (want != v) return bq_fail(BQ_ERR_UNSUPPORTED, "rtl: %s scale code %u decodes to %g, not %g", f->name, c, v, want);
    }
    return BQ_OK;
}

bq_status rtl_new(const char *w, const char *a, int lanes, int pipeline, rtl_design **out)
{
    *out = NULL;
    rtl_design *d = calloc(1, sizeof *d);
    if (!d) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    const char *names[2] = {w, a ? a : w};
    bq_status st = BQ_OK;
    for (int i = 0; i < 2 && !st; i++) {
        d->s[i].tag = i ? 'a' : 'w';
        st = bq_format_parse(names[i], &d->s[i].f);
    }
    /* 16- and 32-bit floats: the FMA baselines */
    for (int i = 0; i < 2 && !st && !d->fma; i++) d->fma = d->s[i].f->el.kind == EK_FP32 || d->s[i].f->el.bits > 8;
    if (!st && d->fma) {
        int E, M;
        if (!(st = rtl_float_side(d->s[0].f, &E, &M)) && !(st = rtl_float_side(d->s[1].f, &E, &M)) && pipeline)
            st = bq_fail(BQ_ERR_UNSUPPORTED, "rtl: the float FMA chain is generated combinational only (no pipeline stages)");
        d->K = lanes ? lanes : 1;  /* one FMA a cycle into the fed-back accumulator; --lanes chains more */
        snprintf(d->name, sizeof d->name, "bq_fma_%s_%s", d->s[0].f->name, d->s[1].f->name);
    }
    for (int i = 0; i < 2 && !st && !d->fma; i++)
        if (!(st = analyse_elements(&d->s[i]))) st = analyse_scale(&d->s[i]);
    if (st) { rtl_free(d); return st; }
    if (d->fma) { *out = d; return BQ_OK; }
    int kw = d->s[0].stype ? d->s[0].f->block : 0, ka = d->s[1].stype ? d->s[1].f->block : 0;
    if (kw && ka && kw != ka) st = bq_fail(BQ_ERR_ARG, "rtl: blocks of %d (%s) and %d (%s) do not pair", kw, names[0], ka, names[1]);
    d->K = kw ? kw : ka ? ka : lanes ? lanes : 32;
    if (!st && lanes && lanes != d->K)
        st = bq_fail(BQ_ERR_UNSUPPORTED, "rtl: %d lanes: the module takes one whole block of %d a cycle", lanes, d->K);
    if (!st && (d->K < 1 || d->K > 256)) st = bq_fail(BQ_ERR_ARG, "rtl: %d lanes (1 to 256)", d->K);
    d->pipe = pipeline;
    const side *sw = &d->s[0], *sa = &d->s[1];
    d->LW = sw->M + sa->M + sw->EMAX + sa->EMAX;
    d->W = d->LW + 1 + clog2((uint64_t)d->K) + (sw->stype == 2 ? sw->SM : 0) + (sa->stype == 2 ? sa->SM : 0) + 1;
    if (!st && d->W > 120) st = bq_fail(BQ_ERR_UNSUPPORTED, "rtl: a %d-bit accumulator (the generator stops at 120)", d->W);
    if (st) { rtl_free(d); return st; }
    snprintf(d->name, sizeof d->name, "bq_dot_%s_%s%s", d->s[0].f->name, d->s[1].f->name, pipeline ? "_pipe" : "");
    for (char *c = d->name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_')) *c = '_';
    *out = d;
    return BQ_OK;
}

void rtl_free(rtl_design *d)
{
    if (!d) return;
    bq_format_free(d->s[0].f);
    bq_format_free(d->s[1].f);
    free(d);
}

const char *rtl_module_name(const rtl_design *d) { return d->name; }
int rtl_block(const rtl_design *d) { return !d->fma && (d->s[0].stype || d->s[1].stype) ? d->K : 0; }

void rtl_widths(const rtl_design *d, int *acc_bits, int *ex_bits, int *lanes)
{
    *acc_bits = d->fma ? 32 : d->W;
    *ex_bits = d->fma ? 0 : XW;
    *lanes = d->K;
}

/* ---- the module ---------------------------------------------------------------------- */

static void emit_decoder(FILE *o, const side *s)
{
    int dw = 2 + s->EW + s->M;
    fprintf(o, "    // %s elements: {nan, sign, e[%d], m[%d]}, value = (-1)^sign m 2^(e %+d)\n", s->f->name, s->EW, s->M, s->L0);
    fprintf(o, "    function [%d:0] dec_%c;\n        input [%d:0] c;\n        case (c)\n", dw - 1, s->tag, s->eb - 1);
    for (uint32_t c = 0; c < (1u << s->eb); c++) {
        const dec *x = &s->el[c];
        fprintf(o, "            %d'd%u: dec_%c = {1'b%d, 1'b%d, %d'd%d, %d'd%u};\n", s->eb, c, s->tag, x->nan, x->sign, s->EW, x->e,
                s->M, x->m);
    }
    fprintf(o, "            default: dec_%c = %d'd0;\n        endcase\n    endfunction\n\n", s->tag, dw);
}

/* The block scale of one side: its exponent (and significand, sign) and NaN. */
static void emit_scale(FILE *o, const side *s)
{
    char t = s->tag;
    if (s->stype == 0) {
        fprintf(o, "    wire signed [%d:0] se_%c = 0;\n    wire sn_%c = 1'b0;\n", XW - 1, t, t);
        return;
    }
    if (s->stype == 1) {
        if (s->esigned) fprintf(o, "    wire signed [%d:0] sc_%c = {{%d{s%c[%d]}}, s%c};\n", XW - 1, t, XW - s->sb, t, s->sb - 1, t);
        else fprintf(o, "    wire signed [%d:0] sc_%c = {%d'd0, s%c};\n", XW - 1, t, XW - s->sb, t);
        fprintf(o, "    wire signed [%d:0] se_%c = sc_%c * %d + %d;  // E = %d code %+d\n", XW - 1, t, t, s->ea, s->ec, s->ea, s->ec);
        fprintf(o, "    wire sn_%c = 1'b0", t);
        for (int i = 0; i < s->nnan; i++) fprintf(o, " | (s%c == %d'd%u)", t, s->sb, s->nanc[i]);
        fprintf(o, ";\n");
        return;
    }
    const elem_t *se = s->sf;
    fprintf(o, "    // %s scale: (-1)^sign {e != 0, mantissa} 2^(max(e, 1) - 1 %+d)\n", s->f->name, s->SL0);
    fprintf(o, "    wire [%d:0] sef_%c = s%c[%d:%d];\n", se->ebits - 1, t, t, se->mbits + se->ebits - 1, se->mbits);
    fprintf(o, "    wire [%d:0] sm_%c = {sef_%c != 0, s%c[%d:0]};\n", s->SM - 1, t, t, t, se->mbits - 1);
    fprintf(o, "    wire ss_%c = %s;\n", t, s->ssign ? (t == 'w' ? "sw[SBW-1]" : "sa[SBA-1]") : "1'b0");
    fprintf(o, "    wire signed [%d:0] se_%c = (sef_%c != 0 ? $signed({%d'd0, sef_%c}) - 1 : 0) + %d;\n", XW - 1, t, t,
            XW - se->ebits, t, s->SL0);
    if (s->snan == 0) fprintf(o, "    wire sn_%c = 1'b0;\n", t);
    else if (s->snan == 1) fprintf(o, "    wire sn_%c = &sef_%c;\n", t, t);
    else fprintf(o, "    wire sn_%c = &s%c[%d:0];\n", t, t, se->ebits + se->mbits - 1);
}

static void emit_module(FILE *o, const rtl_design *d)
{
    const side *w = &d->s[0], *a = &d->s[1];
    int K = d->K, PM = w->M + a->M, SH = w->EMAX + a->EMAX, LW = d->LW;
    fprintf(o, "// Generated by blockq rtl: the exact dot product of a block of %d %s weights and %d %s activations.\n"
               "// result = acc * 2^ex (acc a signed integer, nothing rounded); nan: a NaN code or NaN scale.\n",
            K, w->f->name, K, a->f->name);
    if (d->pipe) fprintf(o, "// Pipelined: registers after the lane products and on the outputs (latency 2 cycles).\n");
    fprintf(o, "module %s #(parameter K = %d, EBW = %d, EBA = %d, SBW = %d, SBA = %d, W = %d) (\n", d->name, K, w->eb, a->eb,
            w->sb ? w->sb : 1, a->sb ? a->sb : 1, d->W);
    if (d->pipe) fprintf(o, "    input clk,\n");
    fprintf(o, "    input [K*EBW-1:0] qw,\n    input [K*EBA-1:0] qa,\n    input [SBW-1:0] sw,\n    input [SBA-1:0] sa,\n"
               "    output nan,\n    output signed [W-1:0] acc,\n    output signed [%d:0] ex\n);\n", XW - 1);
    emit_decoder(o, w);
    emit_decoder(o, a);
    emit_scale(o, w);
    emit_scale(o, a);
    /* lanes */
    fprintf(o, "\n    wire [K-1:0] lnan;\n    wire signed [%d:0] lane [0:K-1];\n    genvar i;\n", LW);
    fprintf(o, "    generate for (i = 0; i < K; i = i + 1) begin : lanes\n");
    fprintf(o, "        wire [%d:0] dw = dec_w(qw[i*EBW +: EBW]);\n", 2 + w->EW + w->M - 1);
    fprintf(o, "        wire [%d:0] da = dec_a(qa[i*EBA +: EBA]);\n", 2 + a->EW + a->M - 1);
    fprintf(o, "        wire [%d:0] p = dw[%d:0] * da[%d:0];\n", PM - 1, w->M - 1, a->M - 1);
    if (SH) {
        fprintf(o, "        wire [%d:0] sh = dw[%d:%d] + da[%d:%d];\n", bits_for((uint64_t)SH) - 1, w->M + w->EW - 1, w->M,
                a->M + a->EW - 1, a->M);
        fprintf(o, "        wire [%d:0] mag = {%d'd0, p} << sh;\n", LW - 1, LW - PM);
    } else fprintf(o, "        wire [%d:0] mag = p;\n", LW - 1);
    fprintf(o, "        assign lane[i] = (dw[%d] ^ da[%d]) ? -$signed({1'b0, mag}) : $signed({1'b0, mag});\n", w->M + w->EW,
            a->M + a->EW);
    fprintf(o, "        assign lnan[i] = dw[%d] | da[%d];\n    end endgenerate\n", w->M + w->EW + 1, a->M + a->EW + 1);
    /* the optional pipeline stage: lanes, NaN and scales registered */
    const char *lv = "lane";
    if (d->pipe) {
        fprintf(o, "\n    reg signed [%d:0] lr [0:K-1];\n    reg [K-1:0] lnr;\n    reg snr;\n", LW);
        fprintf(o, "    reg signed [%d:0] ser;\n", XW - 1);
        if (w->stype == 2) fprintf(o, "    reg [%d:0] smr_w;\n    reg ssr_w;\n", w->SM - 1);
        if (a->stype == 2) fprintf(o, "    reg [%d:0] smr_a;\n    reg ssr_a;\n", a->SM - 1);
        fprintf(o, "    integer j;\n    always @(posedge clk) begin\n        for (j = 0; j < K; j = j + 1) lr[j] <= lane[j];\n");
        fprintf(o, "        lnr <= lnan;\n        snr <= sn_w | sn_a;\n        ser <= se_w + se_a;\n");
        if (w->stype == 2) fprintf(o, "        smr_w <= sm_w;\n        ssr_w <= ss_w;\n");
        if (a->stype == 2) fprintf(o, "        smr_a <= sm_a;\n        ssr_a <= ss_a;\n");
        fprintf(o, "    end\n");
        lv = "lr";
    }
    /* balanced adder tree, one more bit a level */
    int n = K, level = 0, width = LW + 1;
    fprintf(o, "\n    // adder tree\n");
    for (int j = 0; j < n; j++) fprintf(o, "    wire signed [%d:0] t0_%d = %s[%d];\n", width - 1, j, lv, j);
    while (n > 1) {
        int m = (n + 1) / 2;
        level++;
        width++;
        for (int j = 0; j < m; j++) {
            if (2 * j + 1 < n) fprintf(o, "    wire signed [%d:0] t%d_%d = t%d_%d + t%d_%d;\n", width - 1, level, j, level - 1, 2 * j, level - 1, 2 * j + 1);
            else fprintf(o, "    wire signed [%d:0] t%d_%d = t%d_%d;\n", width - 1, level, j, level - 1, 2 * j);
        }
        n = m;
    }
    fprintf(o, "    wire signed [W-1:0] sum = t%d_0;\n", level);
    /* scales */
    const char *smw = d->pipe ? "smr_w" : "sm_w", *sma = d->pipe ? "smr_a" : "sm_a";
    const char *ssw = d->pipe ? "ssr_w" : "ss_w", *ssa = d->pipe ? "ssr_a" : "ss_a";
    if (w->stype == 2 || a->stype == 2) {
        /* minifloat scales: the scales' significands multiplied (unsigned, their own
         * widths), then the sum's magnitude times that, then the sign */
        int W0 = d->LW + 1 + clog2((uint64_t)K) + 1, sm = (w->stype == 2 ? w->SM : 0) + (a->stype == 2 ? a->SM : 0);
        fprintf(o, "    wire sneg = sum[W-1];\n    wire [%d:0] smag = sneg ? -sum[%d:0] : sum[%d:0];\n", W0 - 1, W0 - 1, W0 - 1);
        if (w->stype == 2 && a->stype == 2) fprintf(o, "    wire [%d:0] ssm = %s * %s;\n", sm - 1, smw, sma);
        else fprintf(o, "    wire [%d:0] ssm = %s;\n", sm - 1, w->stype == 2 ? smw : sma);
        fprintf(o, "    wire [W-2:0] sp = smag * ssm;\n");
        fprintf(o, "    wire neg = sneg%s%s%s%s;\n", w->stype == 2 ? " ^ " : "", w->stype == 2 ? ssw : "", a->stype == 2 ? " ^ " : "",
                a->stype == 2 ? ssa : "");
        fprintf(o, "    wire signed [W-1:0] acc_c = neg ? -$signed({1'b0, sp}) : $signed({1'b0, sp});\n");
    } else fprintf(o, "    wire signed [W-1:0] acc_c = sum;\n");
    int L = w->L0 + a->L0;
    if (d->pipe) {
        fprintf(o, "    reg nan_r;\n    reg signed [W-1:0] acc_r;\n    reg signed [%d:0] ex_r;\n", XW - 1);
        fprintf(o, "    always @(posedge clk) begin\n        nan_r <= (|lnr) | snr;\n        acc_r <= acc_c;\n"
                   "        ex_r <= ser + %d;\n    end\n", L);
        fprintf(o, "    assign nan = nan_r;\n    assign acc = acc_r;\n    assign ex = ex_r;\n");
    } else {
        fprintf(o, "    assign nan = (|lnan) | sn_w | sn_a;\n    assign acc = acc_c;\n    assign ex = se_w + se_a + %d;\n", L);
    }
    fprintf(o, "endmodule\n");
}

/* The end of a testbench (both kinds): the verdict line the CLI reads, and the file closed. */
bq_status rtl_tb_end(FILE *o, const char *path, int nvec)
{
    fprintf(o, "        if (bad == 0) $display(\"PASS %d vectors\");\n        else $display(\"FAIL %%0d of %d vectors\", bad);\n"
               "        $finish;\n    end\nendmodule\n", nvec, nvec);
    if (fclose(o)) return bq_fail(BQ_ERR_IO, "%s: write failed", path);
    return BQ_OK;
}

/* ---- reference vectors ------------------------------------------------------------------ */

typedef struct { uint8_t *bits; size_t n; } bitbuf;
static void put_bits(bitbuf *b, unsigned __int128 v, int w)  /* most significant first */
{
    for (int i = w - 1; i >= 0; i--) b->bits[b->n++] = (uint8_t)((v >> i) & 1);
}

/* The library's dequantised block: the exact values must equal it wherever float32
 * holds them (normal range, no saturation). Returns the number of disagreements (-1:
 * out of memory). */
static int check_library(const side *s, int K, uint32_t sc, const uint8_t *codes, int *compared)
{
    const bq_format *f = s->f;
    if (format_float_scale(f)) return 0;  /* its elements are pack_elem_value's; the float32 scale is outside the module */
    size_t hb = pack_header_bytes(f), rb = pack_row_bytes(f, (size_t)K);
    uint8_t *buf = calloc(hb + rb + 8, 1);
    float *v = malloc((size_t)K * sizeof *v), one = 1.0f;
    if (!buf || !v) { free(buf); free(v); return -1; }
    if (hb >= 4) memcpy(buf, &one, 4);  /* NVFP4: a tensor scale of 1 */
    pack_row_put(f, buf + hb, (size_t)K, &sc, codes);
    int bad = 0;
    if (pack_decode_rows(f, buf, (size_t)K, 0, 1, v) == BQ_OK) {
        int E;
        uint32_t sm;
        int sneg, ok = scale_of(s, sc, &E, &sm, &sneg);
        for (int i = 0; i < K; i++) {
            const dec *x = &s->el[codes[i]];
            if (!ok || x->nan) { bad += isfinite(v[i]) != 0; (*compared)++; continue; }  /* NaN, or Inf flagged as NaN */
            double want = ldexp((double)x->m * sm, x->e + s->L0 + E) * ((x->sign ^ sneg) ? -1 : 1);
            double a = fabs(want);
            if (a != 0 && (a < 0x1p-126 || a > FLT_MAX)) continue;  /* float32 cannot hold it: the library saturates or rounds */
            (*compared)++;
            bad += !((double)v[i] == want);
        }
    } else bad++;
    free(buf);
    free(v);
    return bad;
}

bq_status rtl_write(const rtl_design *d, const char *dir, int nvec, uint64_t seed, int *changed)
{
    char path[4200];
    const side *w = &d->s[0], *a = &d->s[1];
    int K = d->K, sbw = w->sb ? w->sb : 1, sba = a->sb ? a->sb : 1;
    int total = sbw + sba + K * w->eb + K * a->eb + 1 + d->W + XW, digits = (total + 3) / 4;
    /* the module: rewritten only when its text changes (synthesis results are cached beside it) */
    char *text = NULL;
    size_t tlen = 0;
    FILE *o = open_memstream(&text, &tlen);
    if (!o) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    if (d->fma) rtl_fma_emit(o, d->name, d->s[0].f, d->s[1].f, d->K);
    else emit_module(o, d);
    fclose(o);
    snprintf(path, sizeof path, "%s/%s.v", dir, d->name);
    void *old = NULL;
    size_t olen = 0;
    *changed = bq_read_file(path, &old, &olen) != BQ_OK || olen != tlen || memcmp(old, text, tlen);
    free(old);
    bq_status st = *changed ? bq_write_file_atomic(path, text, tlen) : BQ_OK;
    free(text);
    if (st) return st;
    if (d->fma) return rtl_fma_write_tests(dir, d->name, d->s[0].f, d->s[1].f, d->K, nvec, seed);
    /* the vectors: random codes (NaN codes included), then adversarial blocks */
    snprintf(path, sizeof path, "%s/%s_vectors.hex", dir, d->name);
    if (!(o = fopen(path, "w"))) return bq_fail(BQ_ERR_IO, "%s: %s", path, strerror(errno));
    bitbuf bb = {malloc((size_t)digits * 4 + 8), 0};
    uint8_t cw[256], ca[256];
    uint64_t rng = seed;
    int bad = 0, compared = 0, oom = !bb.bits;
    /* the largest magnitude code of each side, for the widest sums */
    uint8_t big[2] = {0, 0};
    for (int k = 0; k < 2; k++)
        for (uint32_t c = 0; c < (1u << d->s[k].eb); c++) {
            const dec *x = &d->s[k].el[c], *y = &d->s[k].el[big[k]];
            if (!x->nan && !x->sign && ldexp(x->m, x->e) > ldexp(y->m, y->e)) big[k] = (uint8_t)c;
        }
    for (int v = 0; v < nvec && !oom; v++) {
        int kind = v < 8 ? v : 8;
        uint32_t sw = (uint32_t)(bq_splitmix(&rng) & ((1u << sbw) - 1)), sa = (uint32_t)(bq_splitmix(&rng) & ((1u << sba) - 1));
        for (int i = 0; i < K; i++) {
            cw[i] = (uint8_t)(bq_splitmix(&rng) & ((1u << w->eb) - 1));
            ca[i] = (uint8_t)(bq_splitmix(&rng) & ((1u << a->eb) - 1));
            if (kind == 0) cw[i] = ca[i] = 0;                                  /* zeros */
            if (kind == 1 || kind == 2) { cw[i] = big[0]; ca[i] = big[1]; }    /* the widest sum */
            if (kind == 3 && (i & 1)) cw[i] = 0;                               /* half zero */
            if (kind == 4) { cw[i] = (uint8_t)(1 + i % 2); ca[i] = 1; }        /* the smallest codes (subnormals) */
        }
        if (kind == 2) {  /* the widest sum, negative: one side's sign flipped where a code for it exists */
            for (uint32_t c = 0; c < (1u << w->eb); c++)
                if (!w->el[c].nan && w->el[c].sign && w->el[c].m == w->el[big[0]].m && w->el[c].e == w->el[big[0]].e)
                    for (int i = 0; i < K; i++) cw[i] = (uint8_t)c;
        }
        if (kind == 5) { sw = 0; sa = 0; }                                     /* scale codes at their extremes */
        if (kind == 6) { sw = (1u << sbw) - 1; sa = (1u << sba) - 1; }
        int bw = check_library(w, K, sw, cw, &compared), ba = check_library(a, K, sa, ca, &compared);
        if (bw < 0 || ba < 0) { oom = 1; break; }
        bad += bw + ba;
        /* the exact result */
        int Ew, Ea, nw, na;
        uint32_t mw, ma;
        int nan = !scale_of(w, sw, &Ew, &mw, &nw) | !scale_of(a, sa, &Ea, &ma, &na);
        __int128 acc = 0;
        for (int i = 0; i < K; i++) {
            const dec *x = &w->el[cw[i]], *y = &a->el[ca[i]];
            nan |= x->nan | y->nan;
            __int128 p = (__int128)((unsigned __int128)((uint64_t)x->m * y->m) << (x->e + y->e));
            acc += (x->sign ^ y->sign) ? -p : p;
        }
        acc *= (__int128)mw * ma;
        if (nw ^ na) acc = -acc;
        int ex = Ew + Ea + w->L0 + a->L0;
        if (nan) { acc = 0; ex = 0; }
        bb.n = 0;
        for (int k = (digits * 4 - total); k > 0; k--) bb.bits[bb.n++] = 0;
        put_bits(&bb, sw, sbw);
        put_bits(&bb, sa, sba);
        for (int i = K - 1; i >= 0; i--) put_bits(&bb, cw[i], w->eb);
        for (int i = K - 1; i >= 0; i--) put_bits(&bb, ca[i], a->eb);
        put_bits(&bb, (unsigned)nan, 1);
        put_bits(&bb, (unsigned __int128)acc, d->W);
        put_bits(&bb, (unsigned __int128)(unsigned)(ex & ((1 << XW) - 1)), XW);
        for (int k = 0; k < digits; k++)
            fputc("0123456789abcdef"[bb.bits[4 * k] << 3 | bb.bits[4 * k + 1] << 2 | bb.bits[4 * k + 2] << 1 | bb.bits[4 * k + 3]], o);
        fputc('\n', o);
    }
    free(bb.bits);
    if (fclose(o)) return bq_fail(BQ_ERR_IO, "%s: write failed", path);
    if (oom) return bq_fail(BQ_ERR_NOMEM, "out of memory writing the vectors");
    if (bad) return bq_fail(BQ_ERR_UNSUPPORTED, "rtl: %d of %d decoded values disagree with the library's dequantisation", bad, compared);
    /* the testbench */
    snprintf(path, sizeof path, "%s/%s_tb.v", dir, d->name);
    if (!(o = fopen(path, "w"))) return bq_fail(BQ_ERR_IO, "%s: %s", path, strerror(errno));
    fprintf(o, "// Testbench for %s: vectors from the C library (acc, ex, nan per block pair).\n`timescale 1ns/1ps\n", d->name);
    fprintf(o, "module %s_tb;\n    reg clk = 0;\n    reg [%d:0] qw; reg [%d:0] qa; reg [%d:0] sw; reg [%d:0] sa;\n", d->name,
            K * w->eb - 1, K * a->eb - 1, sbw - 1, sba - 1);
    fprintf(o, "    reg xn; reg signed [%d:0] xacc; reg signed [%d:0] xex;\n", d->W - 1, XW - 1);
    fprintf(o, "    wire nan; wire signed [%d:0] acc; wire signed [%d:0] ex;\n", d->W - 1, XW - 1);
    fprintf(o, "    %s dut(%s.qw(qw), .qa(qa), .sw(sw), .sa(sa), .nan(nan), .acc(acc), .ex(ex));\n", d->name,
            d->pipe ? ".clk(clk), " : "");
    fprintf(o, "    reg [%d:0] mem [0:%d];\n    integer i, bad;\n", digits * 4 - 1, nvec - 1);
    fprintf(o, "    initial begin\n        $readmemh(\"%s_vectors.hex\", mem);\n        bad = 0;\n", d->name);
    fprintf(o, "        for (i = 0; i < %d; i = i + 1) begin\n", nvec);
    fprintf(o, "            {sw, sa, qw, qa, xn, xacc, xex} = mem[i][%d:0];\n", total - 1);
    if (d->pipe) fprintf(o, "            #1 clk = 1; #1 clk = 0; #1 clk = 1; #1 clk = 0;\n");
    else fprintf(o, "            #1;\n");
    fprintf(o, "            if (nan !== xn || (!xn && (acc !== xacc || ex !== xex))) begin\n                bad = bad + 1;\n"
               "                if (bad <= 5) $display(\"FAIL vector %%0d: nan %%b acc %%0d ex %%0d, expected nan %%b acc %%0d ex %%0d\", i, nan, acc, ex, xn, xacc, xex);\n"
               "            end\n        end\n");
    return rtl_tb_end(o, path, nvec);
}
