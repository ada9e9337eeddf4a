/* Hadamard matrices of the orders the online rotations need beside powers of two
 * (QuaRot's 12, 20, 28, 36, 40, 52, 60, 108, 140, 156, 172 x 2^k), by three
 * constructions, each checked in tests/test_quant.c (H H^T = m I):
 *   Paley I:      m = q + 1,     q = 3 mod 4 a prime power (12, 20, 28, 60, 108, 140)
 *   Paley II:     m = 2 (q + 1), q = 1 mod 4 a prime power (36, 52)
 *   Williamson:   m = 4 w from four symmetric circulant +-1 matrices of order w with
 *                 A^2 + B^2 + C^2 + D^2 = 4 w I (156, 172; tools/williamson.c found them)
 * Paley's constructions take the quadratic character of GF(q); q = r^k with k <= 3
 * here (an irreducible cubic or quadratic is one without roots). */
#include "quant.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* GF(r^k): an element is the base-r digit string of its polynomial in x, modulo a
 * monic irreducible f of degree k (f[0..k-1], f[k] = 1). */
typedef struct { int q, r, k, f[4]; } gfield;

static int is_prime(int q)
{
    if (q < 2) return 0;
    for (int d = 2; d * d <= q; d++)
        if (q % d == 0) return 0;
    return 1;
}

static int gf_sub(const gfield *F, int a, int b)
{
    int v = 0;
    for (int i = 0, pw = 1; i < F->k; i++, pw *= F->r, a /= F->r, b /= F->r) v += ((a % F->r - b % F->r + F->r) % F->r) * pw;
    return v;
}

static int gf_mul(const gfield *F, int a, int b)
{
    int r = F->r, k = F->k, x[4], y[4], z[7] = {0};
    for (int i = 0; i < k; i++, a /= r, b /= r) { x[i] = a % r; y[i] = b % r; }
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++) z[i + j] = (z[i + j] + x[i] * y[j]) % r;
    for (int d = 2 * k - 2; d >= k; d--)  /* x^k = -(f[0] + f[1] x + ...) */
        for (int i = 0; i < k; i++) z[d - k + i] = (z[d - k + i] + (r - z[d]) * F->f[i]) % r;
    int v = 0;
    for (int i = k - 1; i >= 0; i--) v = v * r + z[i];
    return v;
}

/* q = r^k (r prime, k <= 3) and an irreducible f; 0 when q is not such a power. */
static int gf_init(gfield *F, int q)
{
    int r = 2;
    while (r <= q && q % r) r++;
    if (r > q || !is_prime(r)) return 0;
    int k = 0;
    for (int t = q; t > 1; t /= r, k++)
        if (t % r) return 0;
    if (k < 1 || k > 3) return 0;
    *F = (gfield){q, r, k, {0}};
    if (k == 1) return 1;
    for (int c = 0; c < q; c++) {  /* f = x^k + c's digits; irreducible iff no root */
        for (int i = 0, t = c; i < k; i++, t /= r) F->f[i] = t % r;
        int root = 0;
        for (int x = 0; x < r && !root; x++) {
            int v = 1;
            for (int i = k - 1; i >= 0; i--) v = (v * x + F->f[i]) % r;
            root = v == 0;
        }
        if (!root) return 1;
    }
    return 0;
}

/* chi[a] for a in GF(q): 0, 1 (a nonzero square) or -1. */
static signed char *quadratic_character(const gfield *F)
{
    signed char *chi = malloc((size_t)F->q);
    if (!chi) return NULL;
    memset(chi, -1, (size_t)F->q);
    for (int a = 0; a < F->q; a++) chi[gf_mul(F, a, a)] = 1;
    chi[0] = 0;
    return chi;
}

/* The core of both Paley constructions: C[i][j] over i, j in 0..q (0 the border):
 * C[0][0] = 0, C[0][j] = 1, C[i][0] = eps, C[i][j] = chi(elem j - elem i) (Jacobsthal). */
static int paley_core(const gfield *F, const signed char *chi, int eps, int i, int j)
{
    if (i == 0) return j != 0;
    if (j == 0) return eps;
    return chi[gf_sub(F, j - 1, i - 1)];
}

/* Williamson quadruples found by tools/williamson.c: the first row of each symmetric
 * circulant (bit j set: entry j is -1); Williamson's array makes H of order 4w. */
static const struct { int w; unsigned long long s[4]; } williamson_table[] = {
    {39, {0x761ea5786eull, 0x3165ffa68cull, 0x4fcd42b3f2ull, 0x7749e792eeull}},
    {43, {0x385b3fcda1cull, 0x207ac935e04ull, 0x730a26450ceull, 0x14d42f42b28ull}},
};

static int williamson(int m, int *H)
{
    static const int blk[4][4] = {{0, 1, 2, 3}, {1, 0, 3, 2}, {2, 3, 0, 1}, {3, 2, 1, 0}};
    static const int sgn[4][4] = {{1, 1, 1, 1}, {-1, 1, -1, 1}, {-1, 1, 1, -1}, {-1, -1, 1, 1}};
    for (size_t t = 0; t < sizeof williamson_table / sizeof *williamson_table; t++) {
        int w = williamson_table[t].w;
        if (4 * w != m) continue;
        for (int r = 0; r < m; r++)
            for (int c = 0; c < m; c++) {
                int shift = ((c % w - r % w) + w) % w;
                int e = williamson_table[t].s[blk[r / w][c / w]] >> shift & 1 ? -1 : 1;
                H[(size_t)r * m + c] = sgn[r / w][c / w] * e;
            }
        return 1;
    }
    return 0;
}

int hadamard_block(int m, float *B, bq_status *st)
{
    *st = BQ_OK;
    if (m < 12 || m % 4) return 0;
    gfield F;
    int kind = gf_init(&F, m - 1) && F.q % 4 == 3 ? 1 : gf_init(&F, m / 2 - 1) && F.q % 4 == 1 ? 2 : 3;
    int *H = malloc((size_t)m * m * sizeof *H);
    signed char *chi = kind < 3 && H ? quadratic_character(&F) : NULL;
    if (!H || (kind < 3 && !chi)) { free(H); *st = bq_fail(BQ_ERR_NOMEM, "out of memory"); return 0; }
    int made = 1;
    if (kind == 1)  /* I + S, S skew: the core with eps = -1 */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < m; j++) H[(size_t)i * m + j] = i == j ? 1 : paley_core(&F, chi, -1, i, j);
    else if (kind == 2)  /* the symmetric core C (eps = 1): C x [1 1; 1 -1] + I x [1 -1; -1 -1] */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < m; j++) {
                int a = i / 2, b = j / 2, x = i % 2, y = j % 2;
                H[(size_t)i * m + j] = a == b ? (x || y ? -1 : 1) : paley_core(&F, chi, 1, a, b) * (x && y ? -1 : 1);
            }
    else made = williamson(m, H);
    const float u = (float)(1.0 / sqrt((double)m));
    for (size_t i = 0; made && i < (size_t)m * m; i++) B[i] = (float)H[i] * u;
    free(H);
    free(chi);
    return made;
}
