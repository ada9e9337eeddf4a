/* Element grids: construction, codes, and the int-group scale rule. */
#include "qkern.h"

int elem_minifloat(elem_t *e, int ebits, int mbits, int bias, mf_flavour fl, int overflow_inf, int subnorm)
{
    memset(e, 0, sizeof *e);
    if (ebits < 1 || ebits > 8 || mbits < 0 || mbits > 23) return 0;
    if (fl == FL_FN && mbits == 0) return 0;   /* its whole top binade would be NaN */
    if (fl == FL_IEEE && ebits < 2) return 0;  /* no room for normals besides Inf/NaN */
    if (fl == FL_IEEE && mbits == 0) return 0; /* no mantissa bit to tell NaN from Inf */
    e->kind = EK_MF;
    e->bits = 1 + ebits + mbits;
    e->ebits = ebits;
    e->mbits = mbits;
    e->bias = bias;
    e->flavour = fl;
    e->overflow_inf = overflow_inf && fl != FL_FINITE;
    e->subnorm = subnorm;
    e->emin = 1 - bias;
    e->emax = (1 << ebits) - (fl == FL_IEEE ? 2 : 1) - bias;
    double top = fl == FL_FN ? 2.0 - ldexp(1.0, 1 - mbits) : 2.0 - ldexp(1.0, -mbits);
    double maxv = ldexp(top, e->emax);
    if (e->emax > 127 || e->emin < -126 || maxv > FLT_MAX) return 0;
    e->maxval = (float)maxv;
    /* float32 scale factors 2^(m-pe), 2^(pe-m) stay normal for pe in [emin, emax+1] */
    e->fast = mbits - e->emin <= 126 && e->emin - mbits >= -126 && e->emax + 1 <= 126 &&
              e->emax + 1 - mbits >= -126;
    return 1;
}

void elem_int(elem_t *e, int bits, int lo, int hi, int frac, int signmag)
{
    memset(e, 0, sizeof *e);
    e->kind = EK_INT;
    e->bits = bits;
    e->lo = lo;
    e->hi = hi;
    e->frac = frac;
    e->signmag = signmag;
}

/* Sign + (bits-1) exponent bits; exponent code 0 is reserved for zero, so the
 * codes 1..2^(bits-1)-1 hold 2^lemin..2^lemax with bias 2^(bits-2)-1. */
void elem_log(elem_t *e, int bits)
{
    memset(e, 0, sizeof *e);
    e->kind = EK_LOG;
    e->bits = bits;
    int bias = (1 << (bits - 2)) - 1;
    e->lemin = 1 - bias;
    e->lemax = (1 << (bits - 1)) - 1 - bias;
}

uint32_t mf_encode(const elem_t *e, float q)
{
    uint32_t sign = signbit(q) ? 1u << (e->bits - 1) : 0;
    uint32_t emask = (1u << e->ebits) - 1, mmask = (1u << e->mbits) - 1;
    float a = fabsf(q);
    if (a != a) {
        if (e->flavour == FL_IEEE) return sign | emask << e->mbits | 1u << (e->mbits - 1);
        if (e->flavour == FL_FN) return sign | emask << e->mbits | mmask;
        return UINT32_MAX;
    }
    if (a == INFINITY) return e->flavour == FL_IEEE ? sign | emask << e->mbits : UINT32_MAX;
    if (a == 0.0f) return sign;
    uint32_t u = f2u(a);
    int E = (int)(u >> 23) - 127;
    if (E >= e->emin && E > -127)  /* normal in both float32 and the target: copy the top mantissa bits */
        return sign | (uint32_t)(E + e->bias) << e->mbits | (u & 0x7fffffu) >> (23 - e->mbits);
    return sign | (uint32_t)ldexp(a, e->mbits - e->emin);  /* target subnormal */
}

float mf_decode(const elem_t *e, uint32_t code)
{
    uint32_t emask = (1u << e->ebits) - 1, mmask = (1u << e->mbits) - 1;
    uint32_t ef = (code >> e->mbits) & emask, m = code & mmask;
    int neg = (code >> (e->bits - 1)) & 1;
    float v;
    if (e->flavour == FL_IEEE && ef == emask) v = m ? NAN : INFINITY;
    else if (e->flavour == FL_FN && ef == emask && m == mmask) v = NAN;
    else if (ef == 0) v = (float)ldexp((double)m, e->emin - e->mbits);
    else v = (float)ldexp((double)(m | (1u << e->mbits)), (int)ef - e->bias - e->mbits);
    return neg ? -v : v;
}

void elem_grid_range(const elem_t *e, double *mx, double *mnorm, double *msub)
{
    switch (e->kind) {
    case EK_FP32: *mx = FLT_MAX; *mnorm = FLT_MIN; *msub = FLT_TRUE_MIN; break;
    case EK_MF:
        *mx = e->maxval;
        *mnorm = ldexp(1.0, e->emin);
        *msub = e->subnorm ? ldexp(1.0, e->emin - e->mbits) : *mnorm;
        break;
    case EK_LOG: *mx = ldexp(1.0, e->lemax); *mnorm = *msub = ldexp(1.0, e->lemin); break;
    default: *mx = ldexp((double)(e->hi > -e->lo ? e->hi : -e->lo), -e->frac); *mnorm = *msub = ldexp(1.0, -e->frac); break;
    }
}
