/* Fake-quantisation and pack throughput per format, next to memcpy of the
 * same buffer measured in the same run. GB/s counts float32 input bytes.
 *
 *   build/bench/bench_formats [--mb 64] [--reps 5] [--json FILE]
 *
 * Prints a Markdown table; --json writes one JSON object per measurement. */
#include "blockq.h"
#include "core.h"
#include "format.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct { float *dst; const float *src; } cpy;
static void copy_range(void *a, size_t b, size_t e)
{
    cpy *c = a;
    memcpy(c->dst + b, c->src + b, (e - b) * sizeof(float));
}

static size_t g_rows, g_cols;
static float *g_x, *g_y;
static uint8_t *g_p;

/* best-of-reps seconds */
static double best_memcpy(int threads, int reps)
{
    double best = 1e30;
    cpy c = {g_y, g_x};
    for (int r = 0; r < reps; r++) {
        double t = now();
        bq_parallel_for(g_rows * g_cols, threads, copy_range, &c);
        t = now() - t;
        if (t < best) best = t;
    }
    return best;
}

/* best-of-reps seconds of one quantise (pack = 0), pack (pack = 1) or pack through
 * the scalar reference path alone (pack = 2: what bq_pack was before the per-ISA
 * code kernels) of the buffer */
static double best_op(const bq_format *f, int threads, int reps, int pack)
{
    double best = 1e30;
    bq_qopts o = {BQ_ROUND_RNE, 0, threads};
    size_t sz = bq_packed_size(f, g_rows, g_cols);
    for (int r = 0; r < reps; r++) {
        double t = now();
        bq_status st = pack ? pack_tensor(f, g_x, g_rows, g_cols, &o, g_p, sz, pack == 1)
                            : bq_qdq(f, g_x, g_y, g_rows, g_cols, &o);
        if (st) { fprintf(stderr, "%s\n", bq_last_error()); exit(1); }
        t = now() - t;
        if (t < best) best = t;
    }
    return best;
}

int main(int argc, char **argv)
{
    size_t mb = 64;
    int reps = 5;
    const char *json = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mb") && i + 1 < argc) mb = (size_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else { fprintf(stderr, "usage: bench_formats [--mb N] [--reps N] [--json FILE]\n"); return 2; }
    }
    g_cols = 4096;
    g_rows = mb * 1024 * 1024 / 4 / g_cols;
    size_t n = g_rows * g_cols, bytes = n * 4;
    g_x = malloc(bytes);
    g_y = malloc(bytes);
    g_p = malloc(bytes + 64);
    unsigned s = 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        g_x[i] = ((float)(s >> 8) * 0x1p-24f - 0.5f) * ((i % 97) ? 1.0f : 50.0f);
    }
    memset(g_y, 1, bytes);
    memset(g_p, 1, bytes);
    FILE *jf = json ? fopen(json, "w") : NULL;
    int nc = bq_ncores();
    const char *fmts[] = {"mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4",
                          "bfp8_b16", "bfp6_b16", "bfp5_b16", "bfp4_b16", "bfp3_b16", "bme4m3_b16", "bme2m3_b16", "bl8_b16",
                          "e2m1_b16_se4m3", "int8_b32_sfp16", "int8_row", "int4_g128", "fp8_e4m3", "fp4_e2m1"};
    const char *isas[] = {"avx512", "avx2", "scalar"};
    double mc1 = bytes / best_memcpy(1, reps) / 1e9, mcn = bytes / best_memcpy(nc, reps) / 1e9;
    printf("buffer %zu MB (%zux%zu float32), best of %d; cores %d; GB/s of float32 input\n\n", bytes >> 20, g_rows,
           g_cols, reps, nc);
    printf("memcpy: %.2f GB/s (1 thread), %.2f GB/s (%d threads)\n\n", mc1, mcn, nc);
    printf("| format | bits/el | isa | qdq 1T GB/s | qdq/memcpy 1T | qdq %dT GB/s | qdq/memcpy %dT | pack 1T GB/s | pack %dT GB/s | pack ref 1T GB/s |\n", nc, nc, nc);
    printf("|---|---|---|---|---|---|---|---|---|---|\n");
    if (jf) fprintf(jf, "{\"kind\":\"memcpy\",\"threads\":1,\"gbps\":%.3f}\n{\"kind\":\"memcpy\",\"threads\":%d,\"gbps\":%.3f}\n", mc1, nc, mcn);
    for (size_t fi = 0; fi < sizeof fmts / sizeof fmts[0]; fi++) {
        bq_format *f;
        if (bq_format_parse(fmts[fi], &f)) { fprintf(stderr, "%s\n", bq_last_error()); return 1; }
        bq_format_info in;
        bq_format_get_info(f, &in);
        for (size_t k = 0; k < 3; k++) {
            if (bq_set_isa(isas[k])) continue;
            double q1 = bytes / best_op(f, 1, reps, 0) / 1e9, qn = bytes / best_op(f, nc, reps, 0) / 1e9;
            double p1 = 0, pn = 0, pr = 0;
            if (k == 0 || !strcmp(isas[k], "scalar")) {
                p1 = bytes / best_op(f, 1, reps, 1) / 1e9;
                pn = bytes / best_op(f, nc, reps, 1) / 1e9;
                pr = bytes / best_op(f, 1, reps, 2) / 1e9;
            }
            printf("| %s | %.3f | %s | %.2f | %.2f | %.2f | %.2f | ", fmts[fi], in.bits_per_element, isas[k], q1,
                   q1 / mc1, qn, qn / mcn);
            if (p1 > 0) printf("%.2f | %.2f | %.2f |\n", p1, pn, pr);
            else printf("- | - | - |\n");
            if (jf)
                fprintf(jf,
                        "{\"kind\":\"qdq\",\"format\":\"%s\",\"isa\":\"%s\",\"qdq_gbps_1t\":%.3f,\"qdq_gbps_nt\":%.3f,"
                        "\"memcpy_gbps_1t\":%.3f,\"memcpy_gbps_nt\":%.3f,\"threads\":%d,\"pack_gbps_1t\":%.3f,\"pack_gbps_nt\":%.3f,\"pack_ref_gbps_1t\":%.3f}\n",
                        fmts[fi], isas[k], q1, qn, mc1, mcn, nc, p1, pn, pr);
            fflush(stdout);
        }
        bq_format_free(f);
    }
    if (jf) fclose(jf);
    free(g_x);
    free(g_y);
    free(g_p);
    return 0;
}
