/* Search for Williamson matrices of odd order w (w < 64): four symmetric circulant
 * +-1 matrices A, B, C, D with A^2 + B^2 + C^2 + D^2 = 4w I, which Williamson's
 * array turns into a Hadamard matrix of order 4w. blockq's rotations take the
 * result (src/quant/rotate.c's table) for the orders QuaRot uses that Paley's
 * constructions miss: 156 = 4 x 39 and 172 = 4 x 43.
 *
 * The search is Djokovic's restriction: sequences constant on the orbits of a
 * multiplier group {+-1, g, g^2, ...} acting on Z_w, so a sequence is a few bits
 * (one a orbit); groups with the fewest orbits first. The four sequences' periodic
 * autocorrelations must cancel at every shift: meet in the middle, pairs (A, B)
 * sorted by a hash of PAF_A + PAF_B, pairs (C, D) looked up with the negation.
 * Each sequence's power spectrum must stay under 4w (a necessary condition) first.
 *
 *   cc -O2 -o williamson tools/williamson.c -lm && ./williamson 43
 * prints each sequence's first row as a bit mask (bit j set: entry j is -1) and
 * checks the Hadamard matrix it makes. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAXW = 63, MAXORB = 21 };
typedef struct { uint64_t key; uint32_t i, j; } pair_t;

static int w, h;
static int nseq;
static uint64_t *mask;   /* [nseq] */
static int *paf;         /* [nseq][h]: periodic autocorrelation at shifts 1..h */
static float *psd;       /* [nseq][h]: power spectrum at frequencies 1..h */
static int *rsum;        /* [nseq]: row sum */

static int cmp_pair(const void *a, const void *b)
{
    uint64_t x = ((const pair_t *)a)->key, y = ((const pair_t *)b)->key;
    return x < y ? -1 : x > y;
}

static uint64_t hash_vec(const int *a, const int *b, int sign)
{
    uint64_t k = 1469598103934665603ull;
    for (int t = 0; t < h; t++) k = (k ^ (uint64_t)(uint32_t)(sign * (a[t] + b[t]))) * 1099511628211ull;
    return k;
}

static int entry(uint64_t m, int j) { return (m >> (((j % w) + w) % w)) & 1 ? -1 : 1; }

/* The 4w x 4w matrix of Williamson's array, H H^T == 4w I? */
static int check(const uint64_t s[4])
{
    static const int blk[4][4] = {{0, 1, 2, 3}, {1, 0, 3, 2}, {2, 3, 0, 1}, {3, 2, 1, 0}};
    static const int sgn[4][4] = {{1, 1, 1, 1}, {-1, 1, -1, 1}, {-1, 1, 1, -1}, {-1, -1, 1, 1}};
    int n = 4 * w;
    int *H = malloc((size_t)n * n * sizeof *H), ok = 1;
    for (int r = 0; r < n; r++)
        for (int c = 0; c < n; c++)
            H[r * n + c] = sgn[r / w][c / w] * entry(s[blk[r / w][c / w]], c % w - r % w);
    for (int r = 0; r < n && ok; r++)
        for (int c = 0; c < n && ok; c++) {
            long d = 0;
            for (int k = 0; k < n; k++) d += H[r * n + k] * H[c * n + k];
            ok = d == (r == c ? n : 0);
        }
    free(H);
    return ok;
}

/* Pairs (i, j) of sequences with row sums (sa, sb) whose spectra add up to at most 4w. */
static pair_t *pairs(int sa, int sb, int sign, size_t *np)
{
    size_t cap = 1024, q = 0;
    pair_t *pr = malloc(cap * sizeof *pr);
    for (int i = 0; i < nseq; i++) {
        if (rsum[i] != sa) continue;
        for (int j = sa == sb ? i : 0; j < nseq; j++) {
            if (rsum[j] != sb) continue;
            int ok = 1;
            for (int k = 0; k < h && ok; k++) ok = psd[(size_t)i * h + k] + psd[(size_t)j * h + k] <= 4.0f * w + 1e-3f;
            if (!ok) continue;
            if (q == cap) pr = realloc(pr, (cap *= 2) * sizeof *pr);
            pr[q++] = (pair_t){hash_vec(paf + (size_t)i * h, paf + (size_t)j * h, sign), (uint32_t)i, (uint32_t)j};
        }
    }
    *np = q;
    return pr;
}

/* Sequences constant on the orbits of {+-1} x <g>; returns 1 and fills s when found. */
static int search(int g, uint64_t s[4])
{
    int orb_of[MAXW], norb = 0;
    memset(orb_of, -1, sizeof orb_of);
    for (int a = 1; a < w; a++) {
        if (orb_of[a] >= 0) continue;
        for (int x = a, k = 0; k < w; k++, x = x * g % w) orb_of[x] = orb_of[w - x] = norb;
        norb++;
    }
    if (norb > MAXORB) return 0;
    mask = malloc(sizeof *mask << norb);
    paf = malloc(sizeof *paf * (size_t)h << norb);
    psd = malloc(sizeof *psd * (size_t)h << norb);
    rsum = malloc(sizeof *rsum << norb);
    nseq = 0;
    for (uint32_t bits = 0; bits < 1u << norb; bits++) {
        uint64_t m = 0;
        for (int j = 1; j < w; j++) if (bits >> orb_of[j] & 1) m |= 1ull << j;
        int ok = 1;
        float *f = psd + (size_t)nseq * h;
        for (int k = 1; k <= h && ok; k++) {  /* power spectrum (real: symmetric) */
            double x = 0;
            for (int j = 0; j < w; j++) x += entry(m, j) * cos(2 * M_PI * j * k / w);
            f[k - 1] = (float)(x * x);
            ok = x * x <= 4.0 * w + 1e-9;
        }
        if (!ok) continue;
        int *p = paf + (size_t)nseq * h, r = 0;
        for (int j = 0; j < w; j++) r += entry(m, j);
        for (int t = 1; t <= h; t++) {
            p[t - 1] = 0;
            for (int j = 0; j < w; j++) p[t - 1] += entry(m, j) * entry(m, j + t);
        }
        rsum[nseq] = r;
        mask[nseq++] = m;
    }
    /* row sums: r = w - 4 x (entries of -1 among a_1..a_h), so r = w mod 4 fixes each sign;
     * the four squares add up to 4w */
    int found = 0;
    for (int a = 1; a * a <= 4 * w && !found; a += 2)
        for (int b = a; a * a + b * b <= 4 * w && !found; b += 2)
            for (int c = b; a * a + b * b + c * c <= 4 * w && !found; c += 2) {
                int d2 = 4 * w - a * a - b * b - c * c, d = (int)lround(sqrt(d2));
                if (d < c || d * d != d2) continue;
                int sg[4], v[4] = {a, b, c, d};
                for (int k = 0; k < 4; k++) sg[k] = ((v[k] - w) % 4 + 4) % 4 == 0 ? v[k] : -v[k];
                size_t n1, n2;
                pair_t *p1 = pairs(sg[0], sg[1], 1, &n1), *p2 = pairs(sg[2], sg[3], -1, &n2);
                qsort(p1, n1, sizeof *p1, cmp_pair);
                for (size_t z = 0; z < n2 && !found; z++) {
                    size_t lo = 0, hi = n1;
                    while (lo < hi) { size_t mid = (lo + hi) / 2; if (p1[mid].key < p2[z].key) lo = mid + 1; else hi = mid; }
                    for (; lo < n1 && p1[lo].key == p2[z].key && !found; lo++) {
                        s[0] = mask[p1[lo].i]; s[1] = mask[p1[lo].j]; s[2] = mask[p2[z].i]; s[3] = mask[p2[z].j];
                        found = check(s);
                    }
                }
                printf("  row sums %d %d %d %d: %zu and %zu pairs\n", sg[0], sg[1], sg[2], sg[3], n1, n2);
                free(p1); free(p2);
            }
    printf("w %d, multiplier %d: %d orbits, %d sequences under the spectrum bound, %s\n", w, g, norb, nseq, found ? "found" : "none");
    free(mask); free(paf); free(psd); free(rsum);
    return found;
}

static int gcd(int a, int b) { return b ? gcd(b, a % b) : a; }

int main(int argc, char **argv)
{
    w = argc > 1 ? atoi(argv[1]) : 0;
    if (w < 3 || w > MAXW || w % 2 == 0) { fprintf(stderr, "usage: williamson W (odd, 3..63)\n"); return 2; }
    h = (w - 1) / 2;
    /* multipliers by the number of orbits they leave, fewest first */
    for (int want = 1; want <= MAXORB; want++)
        for (int g = 1; g < w; g++) {
            if (gcd(g, w) != 1) continue;
            int seen[MAXW] = {0}, norb = 0;
            for (int a = 1; a < w; a++) {
                if (seen[a]) continue;
                for (int x = a, k = 0; k < w; k++, x = x * g % w) seen[x] = seen[w - x] = 1;
                norb++;
            }
            uint64_t s[4];
            if (norb == want && search(g, s)) {
                printf("{%d, {0x%llxull, 0x%llxull, 0x%llxull, 0x%llxull}}\n", w, (unsigned long long)s[0],
                       (unsigned long long)s[1], (unsigned long long)s[2], (unsigned long long)s[3]);
                return 0;
            }
        }
    printf("none found with at most %d orbits\n", MAXORB);
    return 1;
}
