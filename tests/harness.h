/* A tiny test harness: CHECK counts, TEST_MAIN prints "N passed, N failed". */
#ifndef BQ_HARNESS_H
#define BQ_HARNESS_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

static int t_pass, t_fail;
#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (cond) t_pass++;                                                     \
        else {                                                                  \
            t_fail++;                                                           \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);     \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
        }                                                                       \
    } while (0)

#define SKIP(...) do { printf("SKIP: "); printf(__VA_ARGS__); printf("\n"); } while (0)

/* A call that must succeed, checked rather than trusted to have filled its buffer. */
#define OK(call) CHECK((call) == 0, "%s", bq_last_error())

/* The larger of two errors, NaN winning: a NaN must fail a comparison, never
 * vanish in a max (fmax drops it). */
static __attribute__((unused)) double t_max(double a, double b) { return a != a || b != b ? NAN : a > b ? a : b; }

/* Cross-ISA comparisons: an ISA this CPU lacks is counted and reported as SKIP
 * at the end, never compared against a copy of another result. */
static int t_isa_skips;
static const char *t_isa_skipped = "";
static __attribute__((unused)) int isa_absent(int set_status, const char *isa)
{
    if (!set_status) return 0;
    t_isa_skips++;
    t_isa_skipped = isa;
    return 1;
}

/* A scratch file's path for this process (/tmp/bq_<pid>_<name>): the optimised and
 * sanitizer tiers run the same programs at once. The same name gives the same
 * pointer; test_summary removes the files. */
#include <unistd.h>
static char *t_tmps[64];
static __attribute__((unused)) const char *t_tmp(const char *name)
{
    char buf[512];
    snprintf(buf, sizeof buf, "/tmp/bq_%ld_%s", (long)getpid(), name);
    int i = 0;
    for (; i < 64 && t_tmps[i]; i++)
        if (!strcmp(t_tmps[i], buf)) return t_tmps[i];
    if (i == 64) { fprintf(stderr, "harness: more than 64 scratch files\n"); abort(); }
    return t_tmps[i] = strdup(buf);
}

static int test_summary(const char *name)
{
    for (int i = 0; i < 64 && t_tmps[i]; i++) { unlink(t_tmps[i]); free(t_tmps[i]); t_tmps[i] = NULL; }
    if (t_isa_skips) printf("SKIP: %d comparisons on %s not made: this CPU lacks it\n", t_isa_skips, t_isa_skipped);
    if (t_pass + t_fail == 0) { printf("FAIL %s: compared nothing\n", name); t_fail = 1; }
    printf("%s: %d passed, %d failed\n", name, t_pass, t_fail);
    return t_fail ? 1 : 0;
}

/* Where the shared fixtures live (../shared beside the checkout), or NULL. */
static __attribute__((unused)) const char *shared_dir(void)
{
    const char *e = getenv("BQ_SHARED");
    if (e) return e;
    FILE *f = fopen("../shared/README.md", "r");
    if (f) { fclose(f); return "../shared"; }
    return NULL;
}

/* ref[t][r] = sum over k of w[r][k] x[t][k] in double (w: R x C, x: n x C). */
static __attribute__((unused)) void t_ref_gemv(const float *w, const float *x, int R, int C, int n, double *ref)
{
    for (int t = 0; t < n; t++)
        for (int r = 0; r < R; r++) {
            double s = 0;
            for (int k = 0; k < C; k++) s += (double)w[(size_t)r * C + k] * x[(size_t)t * C + k];
            ref[(size_t)t * R + r] = s;
        }
}

/* 32-bit xorshift for reproducible test data. */
static unsigned t_rng = 12345u;
static unsigned t_rand(void) { t_rng ^= t_rng << 13; t_rng ^= t_rng >> 17; t_rng ^= t_rng << 5; return t_rng; }
static float t_unif(void) { return (float)(t_rand() >> 8) * 0x1p-24f; }
static __attribute__((unused)) float t_normal(void)
{
    float s = 0;
    for (int i = 0; i < 12; i++) s += t_unif();
    return s - 6.0f;
}
#endif
