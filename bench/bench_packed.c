/* Matmuls on packed weights against the machine, all measured in one run:
 *   GEMV (one token): GB/s of packed weight bytes read, next to the read
 *     bandwidth of this machine measured on a 256 MB buffer (past every cache);
 *   GEMM (a prefill of --tokens tokens): GFLOP/s next to OpenBLAS SGEMM of the
 *     same shape; activations quantised on the fly (included in the time).
 *
 *   build/bench/bench_packed [--threads N] [--reps R] [--tokens T] [--small] [--json FILE]
 *
 * Prints Markdown tables; --json writes one JSON object per measurement. */
#include "blockq.h"
#include "core.h"
#include "pmat.h"
#include <cblas.h>
#include <immintrin.h>
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

/* ---- read bandwidth: sum a buffer with wide loads ---- */
typedef struct { const uint8_t *p; size_t n; uint64_t out[64]; } rd_job;

/* Eight streams per thread (one sequential stream is latency-bound on some
 * machines and would understate the bandwidth). */
__attribute__((target("avx2"))) static void read_range(void *arg, size_t b, size_t e)
{
    rd_job *j = arg;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    size_t len = (e - b) / 8;
    for (size_t i = 0; i < len; i++)
        for (int s = 0; s < 8; s++) {
            const __m256i *q = (const __m256i *)(j->p + (b + s * len + i) * 128);
            a0 = _mm256_add_epi64(a0, _mm256_load_si256(q));
            a1 = _mm256_add_epi64(a1, _mm256_load_si256(q + 1));
            a2 = _mm256_add_epi64(a2, _mm256_load_si256(q + 2));
            a3 = _mm256_add_epi64(a3, _mm256_load_si256(q + 3));
        }
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t v[4];
    _mm256_storeu_si256((__m256i *)v, s);
    j->out[(b * 64 / (j->n / 128 + 1)) % 64] += v[0] + v[1] + v[2] + v[3];
}

static double read_bw(size_t bytes, int threads, int reps)
{
    uint8_t *p = aligned_alloc(64, bytes);
    memset(p, 1, bytes);
    rd_job j = {p, bytes, {0}};
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = now();
        bq_parallel_for(bytes / 128, threads, read_range, &j);
        t = now() - t;
        best = t < best ? t : best;
    }
    free(p);
    return bytes / best / 1e9;
}

/* ---- the kernels over row slices, as the engine runs them ---- */
typedef struct { const pmat *m; const float *x; const pm_act *a; float *y; int n; } mm_job;
enum { SLICE = 64 };

static void mv_range(void *arg, size_t b, size_t e)
{
    mm_job *j = arg;
    int r0 = (int)b * SLICE, r1 = (int)e * SLICE < j->m->rows ? (int)e * SLICE : j->m->rows;
    pmat_mv_f32(j->m, j->x, j->n, j->y, j->m->rows, r0, r1);
}

static void mm_range(void *arg, size_t b, size_t e)
{
    mm_job *j = arg;
    int r0 = (int)b * SLICE, r1 = (int)e * SLICE < j->m->rows ? (int)e * SLICE : j->m->rows;
    pmat_mm_int(j->m, j->a, j->y, j->m->rows, r0, r1);
}

typedef struct { const float *w, *x; float *y; int n, rows, cols; } sg_job;
static void sg_range(void *arg, size_t b, size_t e)
{
    sg_job *j = arg;
    int r0 = (int)b * SLICE, r1 = (int)e * SLICE < j->rows ? (int)e * SLICE : j->rows;
    if (j->n == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, r1 - r0, j->cols, 1.0f, j->w + (size_t)r0 * j->cols, j->cols, j->x, 1, 0.0f,
                    j->y + r0, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->n, r1 - r0, j->cols, 1.0f, j->x, j->cols,
                    j->w + (size_t)r0 * j->cols, j->cols, 0.0f, j->y + r0, j->rows);
}

static FILE *g_json;
static void emit(const char *kind, const char *fmt, int rows, int cols, int n, double secs, double rate, double ref)
{
    if (g_json)
        fprintf(g_json, "{\"kind\":\"%s\",\"format\":\"%s\",\"rows\":%d,\"cols\":%d,\"tokens\":%d,\"seconds\":%.6g,"
                        "\"rate\":%.4g,\"reference\":%.4g,\"ratio\":%.4f}\n",
                kind, fmt, rows, cols, n, secs, rate, ref, rate / ref);
}

int main(int argc, char **argv)
{
    int threads = 1, reps = 5, T = 256, small = 0, only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) g_json = fopen(argv[++i], "w");
        else if (!strcmp(argv[i], "--small")) small = 1;
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc) only = atoi(argv[++i]);  /* 1-based index */
        else { fprintf(stderr, "usage: bench_packed [--threads N] [--reps R] [--tokens T] [--small] [--json FILE]\n"); return 2; }
    }
    bq_set_threads(threads);
    const int shapes[][2] = {{4096, 4096}, {11008, 4096}, {32000, 4096}};
    int nshape = small ? 1 : 3;
    /* memory bandwidth: a buffer well past the caches (256 MB), not the matrix */
    double bw = read_bw((size_t)256 << 20, threads, reps);
    const char *wf[] = {"mxfp4", "nvfp4", "int4_b32_sfp16", "bfp4_b32", "mxint8", "bfp8_b16", "int8_b32_sfp16", "mxfp6_e2m3", "mxfp8_e4m3"};
    const char *af[] = {"mxint8", "mxint8", "int8_b32_sfp16", "mxint8", "mxint8", "bfp8_b16", "int8_b32_sfp16", NULL, NULL};
    int nf = sizeof wf / sizeof *wf;
    printf("ISA %s, %d thread(s), best of %d\n\n", bq_isa(), threads, reps);
    for (int s = 0; s < nshape; s++) {
        if (only && s != only - 1) continue;
        int R = small ? 1024 : shapes[s][0], C = small ? 1024 : shapes[s][1];
        size_t n = (size_t)R * C;
        float *w = malloc(n * 4), *x = malloc((size_t)T * C * 4), *y = malloc((size_t)T * R * 4);
        for (size_t i = 0; i < n; i++) w[i] = (float)((int)(i * 2654435761u % 2001) - 1000) * 1e-5f;
        for (size_t i = 0; i < (size_t)T * C; i++) x[i] = (float)((int)(i * 40503u % 2001) - 1000) * 1e-3f;
        /* float32 references: SGEMV (GB/s of fp32 weights) and SGEMM */
        size_t slices = (size_t)(R + SLICE - 1) / SLICE;
        sg_job sj = {w, x, y, 1, R, C};
        double best = 1e30;
        for (int r = 0; r < reps; r++) { double t = now(); bq_parallel_for(slices, threads, sg_range, &sj); best = fmin(best, now() - t); }
        double sgemv_gbs = n * 4.0 / best / 1e9;
        sj.n = T;
        best = 1e30;
        for (int r = 0; r < reps; r++) { double t = now(); bq_parallel_for(slices, threads, sg_range, &sj); best = fmin(best, now() - t); }
        double sgemm = 2.0 * T * n / best / 1e9;
        printf("## %d x %d: read bandwidth %.1f GB/s; fp32 SGEMV %.1f GB/s (%.0f%%); SGEMM (%d tokens) %.1f GFLOP/s\n\n", R, C, bw,
               sgemv_gbs, 100 * sgemv_gbs / bw, T, sgemm);
        emit("read_bw", "-", R, C, 1, 0, bw, bw);
        emit("gemv", "fp32", R, C, 1, n * 4.0 / sgemv_gbs / 1e9, sgemv_gbs, bw);
        emit("gemm", "fp32", R, C, T, 2.0 * T * n / sgemm / 1e9, sgemm, sgemm);
        printf("| weights | bits/w | GEMV GB/s | of bandwidth | GEMV vs fp32 | acts | GEMM GFLOP/s | vs SGEMM | int GEMV GB/s |\n");
        printf("|---|---|---|---|---|---|---|---|---|\n");
        for (int f = 0; f < nf; f++) {
            bq_format *fm;
            bq_format_parse(wf[f], &fm);
            pmat *m;
            if (pmat_pack(fm, w, R, C, NULL, &m)) { fprintf(stderr, "%s: %s\n", wf[f], bq_last_error()); return 1; }
            double bytes = (double)pmat_bytes(m), gemv = NAN, gemm = NAN, igemv = NAN;
            if (m->kind == PM_PANEL) {
                mm_job j = {m, x, NULL, y, 1};
                best = 1e30;
                for (int r = 0; r < reps; r++) { double t = now(); bq_parallel_for(slices, threads, mv_range, &j); best = fmin(best, now() - t); }
                gemv = bytes / best / 1e9;
                emit("gemv", wf[f], R, C, 1, best, gemv, bw);
            }
            if (af[f] && m->kind == PM_PANEL) {
                bq_format *a;
                bq_format_parse(af[f], &a);
                for (int pass = 0; pass < 2; pass++) {
                    int tn = pass ? T : 1;
                    best = 1e30;
                    for (int r = 0; r < reps; r++) {
                        double t = now();
                        pm_act act;
                        pm_act_make(a, x, tn, C, NULL, &act);
                        mm_job j = {m, x, &act, y, tn};
                        bq_parallel_for(slices, threads, mm_range, &j);
                        pm_act_free(&act);
                        best = fmin(best, now() - t);
                    }
                    if (pass) { gemm = 2.0 * T * n / best / 1e9; emit("gemm_int", wf[f], R, C, T, best, gemm, sgemm); }
                    else { igemv = bytes / best / 1e9; emit("gemv_int", wf[f], R, C, 1, best, igemv, bw); }
                }
                bq_format_free(a);
            }
            printf("| %s | %.2f | %.1f | %.0f%% | %.2fx | %s | %.1f | %.2fx | %.1f |\n", wf[f], bytes * 8 / n, gemv, 100 * gemv / bw,
                   (n * 4.0 / sgemv_gbs) / (bytes / gemv),
                   af[f] ? af[f] : "-", gemm, gemm / sgemm, igemv);
            pmat_free(m);
            bq_format_free(fm);
        }
        printf("\n");
        free(w);
        free(x);
        free(y);
    }
    if (g_json) fclose(g_json);
    return 0;
}
