/* L-Mul (Luo & Sun 2024, "Addition is All You Need for Energy-efficient Language
 * Models", eq. 3): a product of two floating-point numbers x = (1 + xm) 2^xe and
 * y = (1 + ym) 2^ye replaced by
 *
 *     L-Mul(x, y) = (1 + xm + ym + 2^-l(m)) * 2^(xe + ye),  sign = sign(x) xor sign(y),
 *
 * one integer addition of the mantissa fields instead of a multiplication, with
 * l(m) = m for m <= 3, 3 for m = 4 and 4 for m > 4, m the mantissa bits.
 * docs/formats.md ("L-Mul") defines the float32 arithmetic bit for bit. */
#ifndef BQ_LMUL_H
#define BQ_LMUL_H
#include <stddef.h>

/* The paper's offset exponent for m mantissa bits. */
int lmul_offset(int mbits);
/* One product, the reference: zero times anything is zero (sign xor); Inf/NaN
 * follow IEEE multiplication. l: the offset exponent (l(m)). */
float lmul_ref(float x, float y, int l);
/* y[t][o] = sum_k L-Mul(x[t][k], w[o - o0][k]) for t < n, o in [o0, o1) (w holds
 * rows o0..o1-1). Sums in float32 in a fixed order: 16 running sums, sum j over
 * k = j mod 16 in increasing k, then added pairwise (j + 8 into j, then + 4, + 2,
 * + 1). Each product is lmul_ref's, bit for bit. */
void lmul_matmul(const float *x, int n, const float *w, int in, float *y, int ldy, int o0, int o1, int l);

#endif
