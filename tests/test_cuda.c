/* The CUDA backend against the CPU: fake quantisation bit for bit (reference
 * vectors, and every listed format on random and adversarial inputs in every
 * rounding mode), packed GEMV and the W8A8 block-scaled GEMM against a double
 * reference on the same quantised operands. Skips, saying so, without a GPU.
 * Uses only the formats/kernels/core parts of the library (runs where OpenBLAS
 * is not installed). */
#include "blockq.h"
#include "backend.h"  /* mlp_act: the engine's activation */
#include "bq_cuda.h"
#include "harness.h"
#include "grid_points.h"
#include <float.h>
#include <math.h>

static int same_bits(float a, float b) { return (a != a && b != b) || !memcmp(&a, &b, 4); }

static float *read_f32(const char *p, size_t n)
{
    FILE *f = fopen(p, "rb");
    if (!f) return NULL;
    float *d = malloc(n * 4);
    size_t got = fread(d, 4, n, f);
    fclose(f);
    if (got != n) { free(d); return NULL; }
    return d;
}

/* GPU qdq of host data; off > 0 places the data off 16-byte alignment (the
 * one-element-per-thread kernel instead of the four-per-thread one). */
static bq_status gpu_qdq_at(const bq_format *f, const float *x, float *y, size_t rows, size_t cols, const bq_qopts *o, int off)
{
    size_t n = rows * cols;
    float *dx, *dy;
    bq_status st = bq_cuda_malloc((void **)&dx, (n + 4) * 4);
    if (st) return st;
    if ((st = bq_cuda_malloc((void **)&dy, (n + 4) * 4))) { bq_cuda_free(dx); return st; }
    if (!(st = bq_cuda_upload(dx + off, x, n * 4)) && !(st = bq_cuda_qdq(f, dx + off, dy + off, rows, cols, o)) &&
        !(st = bq_cuda_sync()))
        st = bq_cuda_download(y, dy + off, n * 4);
    bq_cuda_free(dx);
    bq_cuda_free(dy);
    return st;
}

static bq_status gpu_qdq(const bq_format *f, const float *x, float *y, size_t rows, size_t cols, const bq_qopts *o)
{
    return gpu_qdq_at(f, x, y, rows, cols, o, 0);
}

static void vectors(void)
{
    FILE *idx = fopen("tests/vectors/index.tsv", "r");
    CHECK(idx != NULL, "tests/vectors/index.tsv missing");
    if (!idx) return;
    char line[512], name[128], fmt[64], rnd[16], p[300];
    int cases = 0;
    if (!fgets(line, sizeof line, idx)) { fclose(idx); return; }
    while (fgets(line, sizeof line, idx)) {
        size_t rows, cols;
        if (sscanf(line, "%127s %63s %zu %zu %15s", name, fmt, &rows, &cols, rnd) != 5) continue;
        snprintf(p, sizeof p, "tests/vectors/%s.in.f32", name);
        float *in = read_f32(p, rows * cols);
        snprintf(p, sizeof p, "tests/vectors/%s.out.f32", name);
        float *want = read_f32(p, rows * cols), *got = malloc(rows * cols * 4);
        bq_format *f = NULL;
        OK(bq_format_parse(fmt, &f));
        bq_qopts o = {0};
        o.round = !strcmp(rnd, "away") ? BQ_ROUND_AWAY : BQ_ROUND_RNE;
        if (f && in && want && gpu_qdq(f, in, got, rows, cols, &o) == BQ_OK) {
            size_t bad = 0, first = 0;
            for (size_t i = 0; i < rows * cols; i++)
                if (!same_bits(got[i], want[i]) && !bad++) first = i;
            CHECK(bad == 0, "GPU %s: %zu mismatches, first at %zu: in %a got %a want %a", name, bad, first,
                  (double)in[first], (double)got[first], (double)want[first]);
            cases++;
        } else CHECK(0, "%s: %s", name, bq_last_error());
        free(in); free(want); free(got);
        bq_format_free(f);
    }
    fclose(idx);
    CHECK(cases >= 100, "only %d vector cases", cases);
    printf("  GPU fake quantisation: %d reference vectors bit-exact\n", cases);
}

static const char *FORMATS[] = {"mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4",
                                "bfp8_b16", "bfp6_b16", "bfp4_b16", "bfp8_b32", "bme4m3_b16", "bme2m1_b16", "bl8_b16",
                                "bl4_b16", "int8", "int8_row", "int4_g128", "int4_g32", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1",
                                "fp6_e3m2", "fixed8.4", "log8", "log4", "e2m1_b16_se4m3", "int8_b32_sfp16",
                                "int4_b32_sfp16", "e4m3_b16_sbf16", "bf16", "fp16", "int8_asym_row", "int4_asym_g128",
                                "q4_0", "q4_1", "q5_0", "q5_1", "q8_0"};

/* (kept: 0 every format; 1 only those whose kernels BQ_CUDA_QDQ=0 changes, the int
 * groups and the blocks with float or minifloat scales) */
static void against_cpu(const char *label, int kept)
{
    /* 16384 values (the first and third shapes) take the levels' table for NVFP4 and
     * the scaled 4-bit blocks, 512 (the fourth) their per-element kernel. Per-row int
     * scales: 64, 100 and 256 values a row take a team of 16, 8 and 16 lanes, 400 and
     * 1000 a warp (4 and 8 float4s a lane), 4096 a CTA's registers, 17000 the CTA with
     * shared memory; the last three shapes run for row-scaled formats only */
    const size_t shapes[][2] = {{64, 256}, {7, 100}, {4, 4096}, {8, 64}, {3, 400}, {3, 1000}, {2, 17000}};
    size_t maxn = 2 * 17000;
    float *x = malloc(maxn * 4), *a = malloc(maxn * 4), *b = malloc(maxn * 4);
    int formats = 0;
    for (size_t fi = 0; fi < sizeof FORMATS / sizeof *FORMATS; fi++) {
        bq_format *f;
        if (bq_format_parse(FORMATS[fi], &f)) { CHECK(0, "%s", bq_last_error()); continue; }
        if (kept && !format_float_group_scale(f) && f->sch != SCH_SCALED && f->sch != SCH_NVFP4) {
            bq_format_free(f);
            continue;
        }
        size_t nshapes = format_scale_place(f) == SCALE_ROW ? 7 : 4;
        float bnd[512], gmax = 0.0f;  /* the element grid's rounding boundaries (kind 3) */
        int nbnd = grid_boundaries(f, bnd, &gmax);
        for (int kind = 0; kind < 4; kind++)
            for (size_t s = 0; s < nshapes; s++) {
                size_t R = shapes[s][0], C = shapes[s][1], n = R * C;
                /* kind 3, the rounding boundaries of scaled blocks: each block's first
                 * value is the grid's largest x d with d an fp16 number, so that the
                 * block's scale is d where the scale format holds d, and the others the
                 * grid's values and midpoints x d, or one ulp beside them */
                static const float ds[4] = {3.0f, 0.0999755859375f, 5.0f, 0.7001953125f};
                const size_t K = f->block > 0 && f->block <= 64 ? (size_t)f->block : 32;
                for (size_t i = 0; i < n; i++) {
                    if (kind == 3) {
                        size_t j = i % C % K;
                        float d = ds[i % C / K % 4], v = j ? bnd[(j + i / C * 7) % nbnd] * d : gmax * d;
                        if (j % 3 == 2) v = nextafterf(v, j % 2 ? INFINITY : 0.0f);
                        if (f->el.kind == EK_LOG) v *= 0x1p-80f;  /* log blocks whose grid reaches under 2^-126 */
                        x[i] = t_rand() % 2 ? -v : v;
                        continue;
                    }
                    float v = t_normal() * (kind == 1 ? 1e-3f : 1.0f);
                    if (kind == 1 && t_rand() % 17 == 0) v *= 1e4f;
                    if (kind == 2) {  /* adversarial: zeros, -0, ties, subnormals, huge */
                        static const float sp[] = {0.0f, -0.0f, 0.5f, 1.5f, -2.5f, 1e-40f, -3e-39f, 3.0e38f, 6.0f, 0.25f};
                        v = t_rand() % 3 ? sp[t_rand() % 10] : v;
                    }
                    x[i] = v;
                }
                for (int r = 0; r < 4; r++) {
                    bq_qopts o = {0};
                    o.round = (bq_round)r;
                    o.seed = 77;
                    bq_status s1 = bq_qdq(f, x, a, R, C, &o), s2 = gpu_qdq_at(f, x, b, R, C, &o, r == 3 ? 1 : 0);
                    if (s2 == BQ_ERR_UNSUPPORTED && strstr(bq_last_error(), "not implemented")) continue;
                    CHECK(s1 == BQ_OK && s2 == BQ_OK, "%s: %s", f->name, bq_last_error());
                    size_t bad = 0, first = 0;
                    for (size_t i = 0; i < n; i++)
                        if (!same_bits(a[i], b[i]) && !bad++) first = i;
                    CHECK(bad == 0, "GPU %s round %d inputs %d %zux%zu: %zu differ, first x=%a cpu %a gpu %a", f->name, r, kind,
                          R, C, bad, (double)x[first], (double)a[first], (double)b[first]);
                }
            }
        formats++;
        bq_format_free(f);
    }
    printf("  GPU fake quantisation%s: %d formats x 4 input kinds x 4 shapes (7 for per-row scales) x 4 roundings compared with the CPU\n",
           label, formats);
    free(x); free(a); free(b);
}

static double rel_err(const float *y, const double *ref, size_t n)
{
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(y[i])) return INFINITY;  /* unwritten (poisoned) or broken */
        d = t_max(d, fabs(y[i] - ref[i]));
        m = t_max(m, fabs(ref[i]));
    }
    return m > 0 ? d / m : d;
}

/* Shapes cover partial row groups (16) and column tiles (64) of the tensor-core
 * paths and every token count they take; outputs are poisoned before each run. */
static void gemv_set(const char *const *wf, size_t nf, const int (*shapes)[3], size_t nshapes, bq_gemv_path path)
{
    const char *pf = getenv("BQ_CUDA_I8_PF");
    const char *off = getenv("BQ_CUDA_I8_OFF");
    const char *pn = path == BQ_GEMV_FP16 ? "fp16" : pf && !strcmp(pf, "1") ? "int8+pf" : pf && !strcmp(pf, "unsplit") ? "int8+pf unsplit"
                     : off && !strcmp(off, "0") ? "int8 tables" : "int8";
    for (size_t si = 0; si < nshapes; si++) {
        int R = shapes[si][0], C = shapes[si][1], n = shapes[si][2];
        float *w = malloc((size_t)R * C * 4), *wq = malloc((size_t)R * C * 4), *x = malloc((size_t)n * C * 4),
              *y = malloc((size_t)n * R * 4);
        double *ref = malloc((size_t)n * R * sizeof *ref);
        for (size_t i = 0; i < (size_t)R * C; i++) w[i] = t_normal() * 0.05f;
        for (size_t i = 0; i < (size_t)n * C; i++) x[i] = t_normal() * (t_rand() % 64 ? 1.0f : 40.0f);
        for (size_t fi = 0; fi < nf; fi++) {
            bq_format *f;
            OK(bq_format_parse(wf[fi], &f));
            pmat *m;
            if (pmat_pack(f, w, R, C, NULL, &m)) { CHECK(0, "pack %s: %s", f->name, bq_last_error()); bq_format_free(f); continue; }
            pmat_decode(m, 0, R, wq);
            t_ref_gemv(wq, x, R, C, n, ref);
            bq_cuda_w *gw;
            float *dx, *dy;
            bq_status st = bq_cuda_w_upload_path(m, path, &gw);
            CHECK(st == BQ_OK, "upload %s (%s): %s", f->name, pn, bq_last_error());
            if (!st) {
                bq_cuda_malloc((void **)&dx, (size_t)n * C * 4);
                bq_cuda_malloc((void **)&dy, (size_t)n * R * 4);
                bq_cuda_upload(dx, x, (size_t)n * C * 4);
                /* ks 1: one CTA a row block; 0: the column splits the shape gets */
                for (int ks = 1; ks >= 0; ks--) {
                    for (size_t i = 0; i < (size_t)n * R; i++) y[i] = NAN;
                    bq_cuda_upload(dy, y, (size_t)n * R * 4);
                    st = bq_cuda_gemv_split(gw, dx, n, dy, ks);
                    if (!st) st = bq_cuda_sync();
                    if (!st) st = bq_cuda_download(y, dy, (size_t)n * R * 4);
                    CHECK(st == BQ_OK, "gemv %s (%s): %s", f->name, pn, bq_last_error());
                    double e = rel_err(y, ref, (size_t)n * R);
                    CHECK(e < 1e-5, "GPU GEMV %s %s %dx%d n=%d (%s): %.2e from the reference", pn, f->name, R, C, n, ks ? "unsplit" : "split", e);
                    printf("  GPU GEMV %s %-15s %4dx%-4d n=%d %s max|err|/max|y| = %.2e\n", pn, f->name, R, C, n, ks ? "unsplit" : "split  ", e);
                }
                /* the same codes unpacked to bf16: the decoded values rounded to nearest even */
                uint16_t *hb = malloc((size_t)R * C * 2);
                void *db;
                size_t bad = 0;
                st = bq_cuda_malloc(&db, (size_t)R * C * 2);
                if (!st) st = bq_cuda_w_to_bf16(gw, db);
                if (!st) st = bq_cuda_download(hb, db, (size_t)R * C * 2);
                for (size_t i = 0; !st && i < (size_t)R * C; i++) {
                    uint32_t u;
                    memcpy(&u, &wq[i], 4);
                    bad += hb[i] != (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
                }
                CHECK(!st && bad == 0, "GPU unpack to bf16 %s %s %dx%d: %zu values differ (%s)", pn, f->name, R, C, bad, st ? bq_last_error() : "");
                bq_cuda_free(db);
                free(hb);
                bq_cuda_free(dx); bq_cuda_free(dy);
                bq_cuda_w_free(gw);
            }
            pmat_free(m);
            bq_format_free(f);
        }
        free(w); free(wq); free(x); free(y); free(ref);
    }
}

static void gemv(void)
{
    const char *wf[] = {"mxfp4", "nvfp4", "mxint8", "int8_b32_sfp16", "int4_b32_sfp16", "bfp4_b32", "bfp4_b16",
                        "mxfp6_e2m3", "mxfp6_e3m2"};
    /* 5-16 tokens: 4 a pass on the tensor cores, a pass a token by rows */
    const int shapes[][3] = {{300, 1024, 3}, {37, 1056, 1}, {64, 2048, 4}, {129, 96, 2}, {96, 4096, 1}, {80, 512, 11}, {33, 256, 16}};
    gemv_set(wf, sizeof wf / sizeof *wf, shapes, sizeof shapes / sizeof *shapes, BQ_GEMV_FP16);
    /* the int8 tensor cores: every format above but the 6-bit ones */
    gemv_set(wf, sizeof wf / sizeof *wf - 2, shapes, sizeof shapes / sizeof *shapes, BQ_GEMV_INT8);
    /* int groups of 64 and more with float32 scales (a scale per 64-column tile): rows of whole groups */
    const char *wide[] = {"int4_g128", "int4_g64", "int4_g256"};
    const int wshapes[][3] = {{300, 1024, 3}, {37, 2048, 1}, {64, 512, 4}, {129, 256, 2}, {40, 512, 13}};
    gemv_set(wide, sizeof wide / sizeof *wide, wshapes, sizeof wshapes / sizeof *wshapes, BQ_GEMV_FP16);
    gemv_set(wide, sizeof wide / sizeof *wide, wshapes, sizeof wshapes / sizeof *wshapes, BQ_GEMV_INT8);
    /* 4-bit values in [-8, 7] (int4, BFP4) go up as offset nibbles (i8_layout.h's mode 5);
     * BQ_CUDA_I8_OFF=0 keeps them on the slots' tables (mode 4), as MXFP4 and NVFP4 */
    setenv("BQ_CUDA_I8_OFF", "0", 1);
    gemv_set(wf + 4, 3, shapes, sizeof shapes / sizeof *shapes, BQ_GEMV_INT8);
    gemv_set(wide, sizeof wide / sizeof *wide, wshapes, sizeof wshapes / sizeof *wshapes, BQ_GEMV_INT8);
    unsetenv("BQ_CUDA_I8_OFF");
    /* the int8 GEMV's next-tile prefetch (an experiment, read at upload): the one-token-a-pass shapes */
    const int one[][3] = {{37, 1056, 1}, {129, 96, 2}, {96, 4096, 1}}, wone[][3] = {{37, 2048, 1}, {129, 256, 2}};
    setenv("BQ_CUDA_I8_PF", "1", 1);
    gemv_set(wf, sizeof wf / sizeof *wf - 2, one, sizeof one / sizeof *one, BQ_GEMV_INT8);
    gemv_set(wide, sizeof wide / sizeof *wide, wone, sizeof wone / sizeof *wone, BQ_GEMV_INT8);
    setenv("BQ_CUDA_I8_PF", "unsplit", 1);  /* (the prefetch where the launch is not split) */
    gemv_set(wf, 2, one, sizeof one / sizeof *one, BQ_GEMV_INT8);
    unsetenv("BQ_CUDA_I8_PF");
}

/* MXFP6 codes put into fp16 by their bits (the default) and through the 64-entry table
 * (BQ_CUDA_F6=table): the first layout is the one asked for, and both give the same bits,
 * GEMV (split and not) and unpacked to bf16, since the bits are the table's value times a
 * power of two that comes back out after the sums. */
static void gemv_f6(void)
{
    const char *wf[2] = {"mxfp6_e2m3", "mxfp6_e3m2"}, *want[2] = {"fp16 e2m3 by bits", "fp16 e3m2 by bits"};
    const int shapes[][3] = {{96, 4096, 1}, {300, 1024, 3}, {37, 1056, 1}, {80, 512, 11}};
    for (int fi = 0; fi < 2; fi++) {
        bq_format *f;
        OK(bq_format_parse(wf[fi], &f));
        for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
            int R = shapes[si][0], C = shapes[si][1], n = shapes[si][2];
            float *w = malloc((size_t)R * C * 4), *x = malloc((size_t)n * C * 4), *y[2][2], *poison = malloc((size_t)n * R * 4);
            uint16_t *ub[2] = {malloc((size_t)R * C * 2), malloc((size_t)R * C * 2)};
            for (size_t i = 0; i < (size_t)R * C; i++) w[i] = t_normal() * (t_rand() % 32 ? 0.05f : 3.0f);
            for (size_t i = 0; i < (size_t)n * C; i++) x[i] = t_normal();
            for (size_t i = 0; i < (size_t)n * R; i++) poison[i] = NAN;
            pmat *m = NULL;
            bq_status st = pmat_pack(f, w, R, C, NULL, &m);
            float *dx = NULL, *dy = NULL;
            void *db = NULL;
            if (!st) st = bq_cuda_malloc((void **)&dx, (size_t)n * C * 4);
            if (!st) st = bq_cuda_upload(dx, x, (size_t)n * C * 4);
            if (!st) st = bq_cuda_malloc((void **)&dy, (size_t)n * R * 4);
            if (!st) st = bq_cuda_malloc(&db, (size_t)R * C * 2);
            for (int tab = 0; tab < 2; tab++) {
                bq_cuda_w *gw = NULL;
                if (tab) setenv("BQ_CUDA_F6", "table", 1);
                if (!st) st = bq_cuda_w_upload_path(m, BQ_GEMV_FP16, &gw);
                unsetenv("BQ_CUDA_F6");
                const char *lay = gw ? bq_cuda_w_layout(gw) : "";
                CHECK(st || !strcmp(lay, tab ? "fp16 6-bit table" : want[fi]), "%s with BQ_CUDA_F6=%s: laid out as %s", f->name,
                      tab ? "table" : "(unset)", lay);
                for (int ks = 1; ks >= 0; ks--) {
                    y[tab][ks] = malloc((size_t)n * R * 4);
                    if (!st) st = bq_cuda_upload(dy, poison, (size_t)n * R * 4);
                    if (!st) st = bq_cuda_gemv_split(gw, dx, n, dy, ks);
                    if (!st) st = bq_cuda_sync();
                    if (!st) st = bq_cuda_download(y[tab][ks], dy, (size_t)n * R * 4);
                }
                if (!st) st = bq_cuda_w_to_bf16(gw, db);
                if (!st) st = bq_cuda_download(ub[tab], db, (size_t)R * C * 2);
                bq_cuda_w_free(gw);
            }
            size_t differ = 0, cnt = (size_t)n * R, ud = 0;
            for (int ks = 0; !st && ks < 2; ks++)
                for (size_t i = 0; i < cnt; i++) differ += memcmp(&y[0][ks][i], &y[1][ks][i], 4) != 0 || !isfinite(y[0][ks][i]);
            for (size_t i = 0; !st && i < (size_t)R * C; i++) ud += ub[0][i] != ub[1][i];
            CHECK(!st && differ == 0 && ud == 0, "GPU GEMV %s %dx%d n=%d by bits against the table: %zu of %zu outputs and %zu of %zu "
                  "unpacked weights differ (%s)", f->name, R, C, n, differ, 2 * cnt, ud, (size_t)R * C, st ? bq_last_error() : "");
            printf("  GPU GEMV %s %4dx%-4d n=%d by bits and by table: %zu outputs, %zu unpacked weights the same bits\n", f->name, R, C, n,
                   2 * cnt - differ, (size_t)R * C - ud);
            for (int t = 0; t < 2; t++) { free(y[t][0]); free(y[t][1]); free(ub[t]); }
            bq_cuda_free(dx); bq_cuda_free(dy); bq_cuda_free(db);
            pmat_free(m);
            free(w); free(x); free(poison);
        }
        bq_format_free(f);
    }
}

/* Weights near either end of float's range (scale 2^116: block scales up to 2^114;
 * 2^-118 with outputs near 2^-123): the tensor-core layouts hold e2m1 and 6-bit codes as
 * fp16 values times 2^-14 or so, and that factor must come back without overflowing for
 * the first and without pushing the sums under float's normal range for the second
 * (gemv.cu's fold_cmode): unpacked to float32 they are the CPU's decoded values (bit for
 * bit where the scales are powers of two), and the GEMV is within 1e-5 of the reference. */
static void gemv_extreme(float scale)
{
    const char *wf[] = {"mxfp4", "nvfp4", "mxfp6_e2m3", "mxfp6_e3m2", "int4_b32_sfp16"};
    const int R = 37, C = 1056, n = 1;
    for (size_t fi = 0; fi < sizeof wf / sizeof *wf; fi++) {
        bq_format *f;
        OK(bq_format_parse(wf[fi], &f));
        float *w = malloc((size_t)R * C * 4), *wq = malloc((size_t)R * C * 4), *wg = malloc((size_t)R * C * 4), *x = malloc((size_t)n * C * 4),
              *y = malloc((size_t)n * R * 4);
        double *ref = malloc((size_t)n * R * sizeof *ref);
        for (size_t i = 0; i < (size_t)R * C; i++) w[i] = t_normal() * scale;
        for (size_t i = 0; i < (size_t)n * C; i++) x[i] = t_normal() * 0x1p-10f;
        pmat *m = NULL;
        bq_status st = pmat_pack(f, w, R, C, NULL, &m);
        if (!st) { pmat_decode(m, 0, R, wq); t_ref_gemv(wq, x, R, C, n, ref); }
        bq_cuda_w *gw = NULL;
        float *dx = NULL, *dy = NULL, *dw = NULL;
        if (!st) st = bq_cuda_w_upload_path(m, BQ_GEMV_FP16, &gw);
        if (!st) st = bq_cuda_malloc((void **)&dw, (size_t)R * C * 4);
        if (!st) st = bq_cuda_w_to_f32(gw, dw);
        if (!st) st = bq_cuda_download(wg, dw, (size_t)R * C * 4);
        if (!st) st = bq_cuda_malloc((void **)&dx, (size_t)n * C * 4);
        if (!st) st = bq_cuda_upload(dx, x, (size_t)n * C * 4);
        if (!st) st = bq_cuda_malloc((void **)&dy, (size_t)n * R * 4);
        if (!st) st = bq_cuda_gemv(gw, dx, n, dy);
        if (!st) st = bq_cuda_sync();
        if (!st) st = bq_cuda_download(y, dy, (size_t)n * R * 4);
        size_t bad = 0;
        float top = 0.0f;
        /* NVFP4: the GPU takes each block's factor (s1 s2) emult at once, as the CPU's packed
         * GEMV does, where the CPU's decode multiplies in three steps: 2^-21 apart at most */
        const double tol = strcmp(wf[fi], "nvfp4") ? 0.0 : 0x1p-21;
        for (size_t i = 0; !st && i < (size_t)R * C; i++) {
            bad += !isfinite(wg[i]) || fabs((double)wg[i] - wq[i]) > tol * fabs((double)wq[i]);
            top = fmaxf(top, fabsf(wq[i]));
        }
        double e = st ? INFINITY : rel_err(y, ref, (size_t)n * R);
        CHECK(!st && bad == 0 && e < 1e-5, "GPU %s (%s) with weights up to %.3g: %zu of %d unpacked values differ from the CPU's, GEMV %.2e "
              "from the reference (%s)", f->name, gw ? bq_cuda_w_layout(gw) : "-", top, bad, R * C, e, st ? bq_last_error() : "");
        bq_cuda_free(dx); bq_cuda_free(dy); bq_cuda_free(dw);
        bq_cuda_w_free(gw);
        pmat_free(m);
        bq_format_free(f);
        free(w); free(wq); free(wg); free(x); free(y); free(ref);
    }
}

/* A format the GPU cannot hold packed is refused, not approximated: BFP6's two scale
 * factors do not always multiply to one float exactly. */
static void gemv_refusal(void)
{
    float w[64 * 64];
    for (int i = 0; i < 64 * 64; i++) w[i] = t_normal();
    bq_format *f;
    pmat *m;
    bq_cuda_w *gw = NULL;
    OK(bq_format_parse("bfp6_b16", &f));
    if (pmat_pack(f, w, 64, 64, NULL, &m) == BQ_OK) {
        CHECK(bq_cuda_w_upload(m, &gw) == BQ_ERR_UNSUPPORTED && !gw, "bfp6_b16 on the GPU must be refused");
        printf("  GPU GEMV bfp6_b16 refused: %s\n", bq_last_error());
        pmat_free(m);
    } else CHECK(0, "pack: %s", bq_last_error());
    bq_format_free(f);
    /* 6-bit codes are not for the int8 tensor cores: refused when asked for */
    OK(bq_format_parse("mxfp6_e2m3", &f));
    if (pmat_pack(f, w, 64, 64, NULL, &m) == BQ_OK) {
        CHECK(bq_cuda_w_upload_path(m, BQ_GEMV_INT8, &gw) == BQ_ERR_UNSUPPORTED && !gw, "mxfp6_e2m3 on the int8 path must be refused");
        printf("  GPU GEMV int8 path, mxfp6_e2m3 refused: %s\n", bq_last_error());
        pmat_free(m);
    } else CHECK(0, "pack: %s", bq_last_error());
    bq_format_free(f);
}

/* Codes and E8M0 scales of an MX 8-bit packed matrix (row layout: scale, 32 codes). */
static void split_mx8(const uint8_t *pk, int rows, int cols, uint8_t *codes, uint8_t *scales)
{
    int nb = cols / 32;
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < nb; b++) {
            const uint8_t *blk = pk + ((size_t)r * nb + b) * 33;
            scales[(size_t)r * nb + b] = blk[0];
            memcpy(codes + (size_t)r * cols + b * 32, blk + 1, 32);
        }
}

/* Both kernels where the device has both (wgmma on Hopper, mma.sync anywhere:
 * BQ_GEMM_MMA=1 forces the latter); C is poisoned before each run. */
static void gemm(void)
{
    const char *fm[] = {"mxint8", "mxfp8_e4m3"};
    const int shapes[][3] = {{256, 128, 512}, {384, 256, 1024}};
    for (int path = 0; path < 2; path++)
        for (int si = 0; si < 2; si++)
            for (int kind = 0; kind < 2; kind++) {
                int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
                if (path) setenv("BQ_GEMM_MMA", "1", 1);
                else unsetenv("BQ_GEMM_MMA");
                bq_format *f;
                OK(bq_format_parse(fm[kind], &f));
                float *a = malloc((size_t)M * K * 4), *b = malloc((size_t)N * K * 4), *aq = malloc((size_t)M * K * 4),
                      *bq = malloc((size_t)N * K * 4), *c = malloc((size_t)M * N * 4);
                for (size_t i = 0; i < (size_t)M * K; i++) a[i] = t_normal() * (t_rand() % 50 ? 1.0f : 20.0f);
                for (size_t i = 0; i < (size_t)N * K; i++) b[i] = t_normal() * 0.02f;
                OK(bq_qdq(f, a, aq, (size_t)M, (size_t)K, NULL));
                OK(bq_qdq(f, b, bq, (size_t)N, (size_t)K, NULL));
                size_t pa = bq_packed_size(f, (size_t)M, (size_t)K), pb = bq_packed_size(f, (size_t)N, (size_t)K);
                uint8_t *ka = malloc(pa), *kb = malloc(pb), *ca = malloc((size_t)M * K), *cb = malloc((size_t)N * K),
                        *sa = malloc((size_t)M * K / 32), *sb = malloc((size_t)N * K / 32);
                OK(bq_pack(f, a, (size_t)M, (size_t)K, NULL, ka, pa));
                OK(bq_pack(f, b, (size_t)N, (size_t)K, NULL, kb, pb));
                split_mx8(ka, M, K, ca, sa);
                split_mx8(kb, N, K, cb, sb);
                for (size_t i = 0; i < (size_t)M * N; i++) c[i] = NAN;
                void *d[5];
                size_t sz[5] = {(size_t)M * K, (size_t)M * K / 32, (size_t)N * K, (size_t)N * K / 32, (size_t)M * N * 4};
                const void *h[5] = {ca, sa, cb, sb, c};
                bq_status st = BQ_OK;
                for (int i = 0; i < 5 && !st; i++) st = bq_cuda_malloc(&d[i], sz[i]);
                for (int i = 0; i < 5 && !st; i++) st = bq_cuda_upload(d[i], h[i], sz[i]);
                if (!st) st = bq_cuda_gemm_mx8(kind, d[0], d[1], d[2], d[3], d[4], M, N, K);
                if (!st) st = bq_cuda_sync();
                if (!st) st = bq_cuda_download(c, d[4], sz[4]);
                CHECK(st == BQ_OK, "gemm %s: %s", f->name, bq_last_error());
                double *ref = malloc((size_t)M * N * sizeof *ref);
                for (int i = 0; i < M; i++)
                    for (int j = 0; j < N; j++) {
                        double s = 0;
                        for (int k = 0; k < K; k++) s += (double)aq[(size_t)i * K + k] * bq[(size_t)j * K + k];
                        ref[(size_t)i * N + j] = s;
                    }
                double e = rel_err(c, ref, (size_t)M * N);
                const char *pn = path ? "mma.sync" : "default";
                /* Hopper's FP8 wgmma sums each 32-term partial with fewer bits than float32
                 * (about 14, as the DeepSeek-V3 report measured); the block scales are
                 * applied to every 32-term partial in float32, so the error stays there */
                double tol = kind == 1 && !path ? 1e-3 : 1e-5;
                CHECK(!st && e < tol, "GPU W8A8 GEMM %s (%s) %dx%dx%d: %.2e from the reference", f->name, pn, M, N, K, e);
                printf("  GPU W8A8 GEMM %-10s %-8s %dx%dx%d max|err|/max|c| = %.2e\n", f->name, pn, M, N, K, e);
                CHECK(bq_cuda_gemm_mx8(kind, d[0], d[1], d[2], d[3], d[4], 100, N, K) == BQ_ERR_SHAPE, "bad shape accepted");
                for (int i = 0; i < 5; i++) bq_cuda_free(d[i]);
                free(a); free(b); free(aq); free(bq); free(c); free(ka); free(kb); free(ca); free(cb); free(sa); free(sb); free(ref);
                bq_format_free(f);
            }
    unsetenv("BQ_GEMM_MMA");
}

/* Matrices of one layout sharing x in one launch (q, k, v; gate, up) give each matrix
 * the bits of its own unsplit GEMV; layouts that differ are refused. */
static void gemv_multi(void)
{
    const char *wf[] = {"mxfp4", "nvfp4", "int4_b32_sfp16", "bfp4_b16", "mxint8", "mxfp6_e2m3"};
    const int rows[3] = {300, 37, 64}, C = 1056;
    for (int pi = 0; pi < 2; pi++)
    for (size_t fi = 0; fi < sizeof wf / sizeof *wf; fi++) {
        bq_gemv_path path = pi ? BQ_GEMV_INT8 : BQ_GEMV_FP16;
        /* 8-bit codes take the fp16 path by rows (one matrix a launch); 6-bit ones no int8 path */
        if (path == BQ_GEMV_FP16 ? !strcmp(wf[fi], "mxint8") : strstr(wf[fi], "fp6") != NULL) continue;
        for (int n = 1; n <= 11; n += n < 3 ? 2 : 8) {  /* 1, 3 and 11 (three passes) */
            bq_format *f;
            OK(bq_format_parse(wf[fi], &f));
            bq_cuda_w *gw[3] = {NULL, NULL, NULL};
            float *dx = NULL, *dy[3] = {NULL, NULL, NULL}, *ds[3] = {NULL, NULL, NULL};
            float *x = malloc((size_t)n * C * 4);
            for (size_t i = 0; i < (size_t)n * C; i++) x[i] = t_normal();
            bq_status st = bq_cuda_malloc((void **)&dx, (size_t)n * C * 4);
            if (!st) st = bq_cuda_upload(dx, x, (size_t)n * C * 4);
            for (int k = 0; k < 3 && !st; k++) {
                float *w = malloc((size_t)rows[k] * C * 4);
                for (size_t i = 0; i < (size_t)rows[k] * C; i++) w[i] = t_normal() * 0.05f;
                pmat *m;
                st = pmat_pack(f, w, rows[k], C, NULL, &m);
                if (!st) { st = bq_cuda_w_upload_path(m, path, &gw[k]); pmat_free(m); }
                if (!st) st = bq_cuda_malloc((void **)&dy[k], (size_t)n * rows[k] * 4);
                if (!st) st = bq_cuda_malloc((void **)&ds[k], (size_t)n * rows[k] * 4);
                if (!st) st = bq_cuda_gemv_split(gw[k], dx, n, ds[k], 1);
                free(w);
            }
            if (!st) st = bq_cuda_gemv_multi((const bq_cuda_w *const *)gw, 3, dx, n, dy);
            if (!st) st = bq_cuda_sync();
            size_t differ = 0, compared = 0;
            for (int k = 0; k < 3 && !st; k++) {
                size_t cnt = (size_t)n * rows[k];
                float *a = malloc(cnt * 4), *b = malloc(cnt * 4);
                if (!(st = bq_cuda_download(a, dy[k], cnt * 4)) && !(st = bq_cuda_download(b, ds[k], cnt * 4)))
                    for (size_t i = 0; i < cnt; i++) { differ += memcmp(&a[i], &b[i], 4) != 0 || !isfinite(a[i]); compared++; }
                free(a); free(b);
            }
            CHECK(!st && compared > 0 && differ == 0, "GPU GEMV of 3 %s matrices in one launch (%s), n=%d: %zu of %zu outputs differ from "
                  "separate calls (%s)", f->name, pi ? "int8" : "fp16", n, differ, compared, st ? bq_last_error() : "");
            printf("  GPU GEMV %s %-15s 3 matrices in one launch n=%d: %zu outputs, bits as separate calls\n", pi ? "int8" : "fp16", f->name,
                   n, compared);
            for (int k = 0; k < 3; k++) { bq_cuda_w_free(gw[k]); bq_cuda_free(dy[k]); bq_cuda_free(ds[k]); }
            bq_cuda_free(dx);
            free(x);
            bq_format_free(f);
        }
    }
    /* mxfp4 beside int4_b32_sfp16: two layouts, refused */
    const char *two[2] = {"mxfp4", "int4_b32_sfp16"};
    bq_cuda_w *gw[2] = {NULL, NULL};
    float *w = malloc((size_t)64 * 256 * 4), *dx = NULL, *dy[2] = {NULL, NULL};
    for (size_t i = 0; i < (size_t)64 * 256; i++) w[i] = t_normal();
    for (int k = 0; k < 2; k++) {
        bq_format *f;
        pmat *m;
        OK(bq_format_parse(two[k], &f));
        OK(pmat_pack(f, w, 64, 256, NULL, &m));
        OK(bq_cuda_w_upload(m, &gw[k]));
        OK(bq_cuda_malloc((void **)&dy[k], 64 * 4));
        pmat_free(m);
        bq_format_free(f);
    }
    OK(bq_cuda_malloc((void **)&dx, 256 * 4));
    CHECK(gw[0] && gw[1] && !bq_cuda_w_fusable(gw[0], gw[1]) &&
          bq_cuda_gemv_multi((const bq_cuda_w *const *)gw, 2, dx, 1, dy) == BQ_ERR_UNSUPPORTED, "two layouts in one GEMV launch accepted");
    for (int k = 0; k < 2; k++) { bq_cuda_w_free(gw[k]); bq_cuda_free(dy[k]); }
    bq_cuda_free(dx);
    free(w);
}

/* The norm and the MLP's activation making the int8 GEMV's pieces as they write its
 * input (bq_cuda_norm_pieces, bq_cuda_act_pieces): their outputs against the host's
 * arithmetic, and the GEMV on those pieces (bq_cuda_gemv_multi_ready) bit for bit
 * against the GEMV splitting the same output itself. Before each call the pieces'
 * buffers hold four other tokens' pieces, so a column left unwritten shows. */
static void host_norm(const float *x, const float *w, const float *b, double *y, int n, int d, float eps)
{
    for (int t = 0; t < n; t++) {
        const float *xr = x + (size_t)t * d;
        double s = 0, q = 0;
        if (!b) {
            for (int i = 0; i < d; i++) s += (double)xr[i] * xr[i];
            float r = (float)(1.0 / sqrt(s / d + eps));
            for (int i = 0; i < d; i++) y[(size_t)t * d + i] = w[i] * (xr[i] * r);
            continue;
        }
        for (int i = 0; i < d; i++) s += xr[i];
        double mean = s / d;
        for (int i = 0; i < d; i++) q += (xr[i] - mean) * (xr[i] - mean);
        float r = (float)(1.0 / sqrt(q / d + eps));
        for (int i = 0; i < d; i++) y[(size_t)t * d + i] = (float)(xr[i] - mean) * r * w[i] + b[i];
    }
}

static void gemv_pieces(void)
{
    const char *wf[] = {"mxfp4", "nvfp4", "mxint8", "int4_g128", "int4_b32_sfp16"};
    /* partial tiles (1056), one to four tokens, a 1024-thread norm (4096) and two float4 a thread (8192) */
    const int shapes[][3] = {{40, 1056, 1}, {70, 4096, 3}, {33, 256, 4}, {24, 8192, 2}, {17, 1152, 1}};
    static const char *const kinds[5] = {"RMSNorm", "LayerNorm", "SiLU-gated act", "GELU act", "residual+RMSNorm"};
    for (size_t fi = 0; fi < sizeof wf / sizeof *wf; fi++)
        for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
            int R = shapes[si][0], C = shapes[si][1], n = shapes[si][2], rows[2] = {R, R + 5};
            if (strstr(wf[fi], "_g128") && C % 128) continue;  /* whole groups a row */
            bq_format *f;
            OK(bq_format_parse(wf[fi], &f));
            size_t nx = (size_t)n * C;
            float *x = malloc(nx * 4), *gt = malloc(nx * 4), *nw = malloc((size_t)C * 4), *nb = malloc((size_t)C * 4), *h = malloc(nx * 4);
            double *ref = malloc(nx * sizeof *ref);
            for (size_t i = 0; i < nx; i++) { x[i] = t_normal() * (t_rand() % 64 ? 1.0f : 40.0f); gt[i] = t_normal() * 2.0f; }
            for (int i = 0; i < C; i++) { nw[i] = 1.0f + 0.3f * t_normal(); nb[i] = 0.1f * t_normal(); }
            bq_cuda_w *gw[2] = {NULL, NULL};
            float *dx = NULL, *dp = NULL, *dg = NULL, *dnw = NULL, *dnb = NULL, *dh = NULL, *dr = NULL, *dy[2] = {NULL, NULL}, *dz[2] = {NULL, NULL};
            unsigned long long *dbad = NULL, bad = 0;
            bq_status st = BQ_OK;
            for (int k = 0; k < 2 && !st; k++) {
                float *w = malloc((size_t)rows[k] * C * 4);
                for (size_t i = 0; i < (size_t)rows[k] * C; i++) w[i] = t_normal() * 0.05f;
                pmat *m;
                st = pmat_pack(f, w, rows[k], C, NULL, &m);
                if (!st) { st = bq_cuda_w_upload_path(m, BQ_GEMV_INT8, &gw[k]); pmat_free(m); }
                if (!st) st = bq_cuda_malloc((void **)&dy[k], (size_t)4 * rows[k] * 4);
                if (!st) st = bq_cuda_malloc((void **)&dz[k], (size_t)4 * rows[k] * 4);
                free(w);
            }
            float **bufs[7] = {&dx, &dp, &dg, &dh, &dnw, &dnb, &dr};
            size_t sizes[7] = {nx, (size_t)4 * C, nx, nx, (size_t)C, (size_t)C, nx};
            for (int k = 0; k < 7 && !st; k++) st = bq_cuda_malloc((void **)bufs[k], sizes[k] * 4);
            if (!st) st = bq_cuda_malloc((void **)&dbad, sizeof bad);
            if (!st) st = bq_cuda_upload(dr, gt, nx * 4);  /* the residual: the gate's values */
            if (!st) st = bq_cuda_upload(dx, x, nx * 4);
            if (!st) st = bq_cuda_upload(dg, gt, nx * 4);
            float *other = malloc((size_t)4 * C * 4);  /* four other tokens */
            for (size_t i = 0; i < (size_t)4 * C; i++) other[i] = t_normal();
            if (!st) st = bq_cuda_upload(dp, other, (size_t)4 * C * 4);
            free(other);
            if (!st) st = bq_cuda_upload(dnw, nw, (size_t)C * 4);
            if (!st) st = bq_cuda_upload(dnb, nb, (size_t)C * 4);
            CHECK(!st, "pieces %s %dx%d: setup: %s", f->name, R, C, bq_last_error());
            for (int kind = 0; kind < 5 && !st; kind++) {
                int count = kind < 2 ? 2 : 1, act = kind == 2 ? ACT_SILU_GATED : ACT_GELU_TANH;
                st = bq_cuda_gemv_multi((const bq_cuda_w *const *)gw, count, dp, 4, dz);  /* four tokens' pieces in the buffers */
                if (kind < 2) {
                    host_norm(x, nw, kind ? nb : NULL, ref, n, C, 1e-5f);
                    if (!st) st = bq_cuda_norm_pieces(gw[0], dx, NULL, NULL, dnw, kind ? dnb : NULL, dh, n, 1e-5f, kind);
                } else if (kind == 4) {  /* x += r (r checked), then the norm: x is left as x + r */
                    float *xr = malloc(nx * 4);
                    for (size_t i = 0; i < nx; i++) xr[i] = x[i] + gt[i];
                    host_norm(xr, nw, NULL, ref, n, C, 1e-5f);
                    bad = ~0ull;
                    if (!st) st = bq_cuda_upload(dbad, &bad, sizeof bad);
                    if (!st) st = bq_cuda_norm_pieces(gw[0], dx, dr, dbad, dnw, NULL, dh, n, 1e-5f, 0);
                    if (!st) st = bq_cuda_sync();
                    if (!st) st = bq_cuda_download(h, dx, nx * 4);
                    if (!st) st = bq_cuda_download(&bad, dbad, sizeof bad);
                    size_t differ = 0;
                    for (size_t i = 0; !st && i < nx; i++) differ += memcmp(&h[i], &xr[i], 4) != 0;
                    CHECK(!st && differ == 0 && bad == ~0ull, "GPU residual before the norm %s %dx%d n=%d: %zu of %zu sums differ from x + r, "
                          "check flag %llx", f->name, R, C, n, differ, nx, bad);
                    free(xr);
                    if (!st) st = bq_cuda_upload(dx, x, nx * 4);
                    if (!st) st = bq_cuda_norm_pieces(gw[0], dx, dr, NULL, dnw, NULL, dh, n, 1e-5f, 0);  /* no check: bad may be NULL */
                } else {
                    for (size_t i = 0; i < nx; i++) ref[i] = mlp_act(act, x[i], gt[i]);
                    if (!st) st = bq_cuda_upload(dh, x, nx * 4);
                    if (!st) st = bq_cuda_act_pieces(gw[0], dh, dg, n, act);
                }
                if (!st) st = bq_cuda_gemv_multi_ready((const bq_cuda_w *const *)gw, count, dh, n, dy);
                if (!st) st = bq_cuda_gemv_multi((const bq_cuda_w *const *)gw, count, dh, n, dz);  /* the GEMV's own split of h */
                if (!st) st = bq_cuda_sync();
                if (!st) st = bq_cuda_download(h, dh, nx * 4);
                size_t differ = 0, compared = 0;
                for (int k = 0; k < count && !st; k++) {
                    size_t cnt = (size_t)n * rows[k];
                    float *a = malloc(cnt * 4), *b = malloc(cnt * 4);
                    if (!(st = bq_cuda_download(a, dy[k], cnt * 4)) && !(st = bq_cuda_download(b, dz[k], cnt * 4)))
                        for (size_t i = 0; i < cnt; i++) { differ += memcmp(&a[i], &b[i], 4) != 0 || !isfinite(a[i]); compared++; }
                    free(a); free(b);
                }
                double e = st ? INFINITY : rel_err(h, ref, nx);
                CHECK(!st && e < 1e-5, "GPU %s with the GEMV's pieces %s %dx%d n=%d: output %.2e from the host's (%s)", kinds[kind], f->name,
                      R, C, n, e, st ? bq_last_error() : "");
                CHECK(!st && compared > 0 && differ == 0, "GPU GEMV on %s's pieces %s %dx%d n=%d: %zu of %zu outputs differ from the GEMV's "
                      "own split", kinds[kind], f->name, R, C, n, differ, compared);
                printf("  GPU %-14s + int8 GEMV %-15s %4dx%-4d n=%d: output %.1e from the host's, %zu GEMV outputs as its own split\n",
                       kinds[kind], f->name, R, C, n, e, compared);
            }
            /* what the pieces' kernels refuse: five tokens, a weight not on the int8 layout */
            if (si == 0) {
                CHECK(bq_cuda_norm_pieces(gw[0], dx, NULL, NULL, dnw, NULL, dh, 5, 1e-5f, 0) == BQ_ERR_ARG &&
                      bq_cuda_act_pieces(gw[0], dh, dg, 5, ACT_SILU_GATED) == BQ_ERR_ARG &&
                      bq_cuda_gemv_multi_ready((const bq_cuda_w *const *)gw, 1, dh, 5, dy) == BQ_ERR_ARG,
                      "%s: pieces for five tokens accepted", f->name);
                float *w = malloc((size_t)R * C * 4);
                for (size_t i = 0; i < (size_t)R * C; i++) w[i] = t_normal();
                pmat *m;
                bq_cuda_w *fw = NULL;
                if (!strcmp(wf[fi], "mxfp4") && !pmat_pack(f, w, R, C, NULL, &m)) {
                    if (!bq_cuda_w_upload_path(m, BQ_GEMV_FP16, &fw))
                        CHECK(!bq_cuda_w_takes_pieces(fw, 1) && bq_cuda_norm_pieces(fw, dx, NULL, NULL, dnw, NULL, dh, 1, 1e-5f, 0) == BQ_ERR_ARG,
                              "an fp16-layout weight took the int8 GEMV's pieces");
                    bq_cuda_w_free(fw);
                    pmat_free(m);
                }
                free(w);
            }
            /* a NaN in the residual at token n - 1, column 5: the check notes it, as k_add_check */
            float nan = NAN;
            bad = ~0ull;
            if (!st) st = bq_cuda_upload(dbad, &bad, sizeof bad);
            if (!st) st = bq_cuda_upload(dr + (size_t)(n - 1) * C + 5, &nan, 4);
            if (!st) st = bq_cuda_norm_pieces(gw[0], dx, dr, dbad, dnw, NULL, dh, n, 1e-5f, 0);
            if (!st) st = bq_cuda_sync();
            if (!st) st = bq_cuda_download(&bad, dbad, sizeof bad);
            CHECK(!st && bad == 2ull * ((size_t)(n - 1) * C + 5) + 1, "GPU residual before the norm %s: a NaN at %zu noted as %llx (%s)",
                  f->name, (size_t)(n - 1) * C + 5, bad, st ? bq_last_error() : "");
            for (int k = 0; k < 2; k++) { bq_cuda_w_free(gw[k]); bq_cuda_free(dy[k]); bq_cuda_free(dz[k]); }
            for (int k = 0; k < 7; k++) bq_cuda_free(*bufs[k]);
            bq_cuda_free(dbad);
            free(x); free(gt); free(nw); free(nb); free(h); free(ref);
            bq_format_free(f);
        }
}

/* Attention of a few queries over a cache (bq_cuda_attend_few: the reference kernel
 * and its 16-byte-load form at two depths) against a double reference: head sizes,
 * grouped heads, positions, a sliding window, the position read from device memory (a
 * recorded step), and a NaN in one key reaching that head's output; the deep form
 * gives the 4-deep one's bits. */
static void attend_ref(const float *q, const float *K, const float *V, double *o, int n, int heads, int group, int d, int kvd, float scale,
                       int pos0, int window)
{
    for (int t = 0; t < n; t++)
        for (int h = 0; h < heads; h++) {
            int last = pos0 + t, first = window && last >= window ? last - window + 1 : 0, kh = h / group;
            double *sc = malloc((size_t)(last + 1) * sizeof *sc), mx = -INFINITY, sum = 0;
            const float *qh = q + (size_t)t * heads * d + (size_t)h * d;
            for (int j = first; j <= last; j++) {
                double p = 0;
                for (int i = 0; i < d; i++) p += (double)qh[i] * K[(size_t)j * kvd + (size_t)kh * d + i];
                sc[j] = p * scale;
                mx = sc[j] > mx ? sc[j] : mx;
            }
            for (int j = first; j <= last; j++) sum += sc[j] = exp(sc[j] - mx);
            for (int i = 0; i < d; i++) {
                double a = 0;
                for (int j = first; j <= last; j++) a += sc[j] / sum * V[(size_t)j * kvd + (size_t)kh * d + i];
                o[(size_t)t * heads * d + (size_t)h * d + i] = a;
            }
            free(sc);
        }
}

static void attention(void)
{
    /* d, heads, group, n, pos0, window */
    const int cases[][6] = {{128, 4, 1, 1, 70, 0}, {128, 8, 4, 3, 200, 0}, {64, 6, 3, 1, 37, 0}, {64, 4, 2, 8, 90, 50},
                            {16, 4, 2, 2, 5, 0}, {16, 4, 1, 1, 0, 0}, {96, 2, 1, 1, 40, 0}, {256, 2, 2, 2, 30, 0}};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const int d = cases[ci][0], heads = cases[ci][1], group = cases[ci][2], n = cases[ci][3], pos0 = cases[ci][4], window = cases[ci][5];
        const int kvd = heads / group * d, T = pos0 + n + 3, qd = heads * d;
        const float scale = 1.0f / sqrtf((float)d);
        size_t nq = (size_t)n * qd, nk = (size_t)T * kvd;
        float *q = malloc(nq * 4), *K = malloc(nk * 4), *V = malloc(nk * 4), *a = malloc(nq * 4);
        double *ref = malloc(nq * sizeof *ref);
        for (size_t i = 0; i < nq; i++) q[i] = t_normal() * 2.0f;
        for (size_t i = 0; i < nk; i++) { K[i] = t_normal(); V[i] = t_normal(); }
        attend_ref(q, K, V, ref, n, heads, group, d, kvd, scale, pos0, window);
        float *dq = NULL, *dK = NULL, *dV = NULL, *da = NULL, *ds = NULL;
        int *dp = NULL;
        bq_status st = bq_cuda_malloc((void **)&dq, nq * 4);
        if (!st) st = bq_cuda_malloc((void **)&dK, nk * 4);
        if (!st) st = bq_cuda_malloc((void **)&dV, nk * 4);
        if (!st) st = bq_cuda_malloc((void **)&da, nq * 4);
        if (!st) st = bq_cuda_malloc((void **)&ds, (size_t)n * heads * T * 4);
        if (!st) st = bq_cuda_malloc((void **)&dp, 4);
        if (!st) st = bq_cuda_upload(dq, q, nq * 4);
        if (!st) st = bq_cuda_upload(dK, K, nk * 4);
        if (!st) st = bq_cuda_upload(dV, V, nk * 4);
        if (!st) st = bq_cuda_upload(dp, &pos0, 4);
        CHECK(!st, "attention setup: %s", bq_last_error());
        float *avec = malloc(nq * 4);
        for (int kern = BQ_ATTN_FEW; kern <= BQ_ATTN_DEEP && !st; kern++) {
            const char *kn = kern == BQ_ATTN_DEEP ? "deep" : kern == BQ_ATTN_VEC ? "vec" : "few";
            if (kern != BQ_ATTN_FEW && !bq_cuda_attend_vec_takes(d, dq, dK, dV, da)) {
                CHECK(bq_cuda_attend_few(kern, 0, dq, dK, dV, da, ds, T, n, heads, group, d, kvd, scale, pos0, NULL, window) == BQ_ERR_ARG,
                      "attention %s took head_dim %d", kn, d);
                continue;
            }
            for (int viad = 0; viad < 2; viad++) {  /* the position as an argument, then from device memory */
                for (size_t i = 0; i < nq; i++) a[i] = NAN;
                bq_status s2 = bq_cuda_upload(da, a, nq * 4);
                if (!s2) s2 = bq_cuda_attend_few(kern, 0, dq, dK, dV, da, ds, T, n, heads, group, d, kvd, scale, viad ? -1 : pos0, viad ? dp : NULL,
                                                 window);
                if (!s2) s2 = bq_cuda_sync();
                if (!s2) s2 = bq_cuda_download(a, da, nq * 4);
                double e = s2 ? INFINITY : rel_err(a, ref, nq);
                CHECK(e < 1e-5, "GPU attention (%s) d=%d heads=%d/%d n=%d pos %d window %d%s: %.2e from the reference (%s)", kn, d, heads,
                      group, n, pos0, window, viad ? " (position on the device)" : "", e, s2 ? bq_last_error() : "");
                if (!viad)
                    printf("  GPU attention %s d=%-3d heads %d (groups of %d) n=%d pos %-3d window %-2d: max|err|/max|a| = %.2e\n", kn, d, heads,
                           group, n, pos0, window, e);
                if (!s2 && kern == BQ_ATTN_VEC && !viad) memcpy(avec, a, nq * 4);
                if (!s2 && kern == BQ_ATTN_DEEP) {
                    size_t differ = 0;
                    for (size_t i = 0; i < nq; i++) differ += memcmp(&a[i], &avec[i], 4) != 0;
                    CHECK(differ == 0, "GPU attention deep d=%d pos %d%s: %zu of %zu outputs not vec's bits", d, pos0,
                          viad ? " (position on the device)" : "", differ, nq);
                }
            }
            /* a NaN in the first key of kv head 0: every output of the heads reading it is NaN */
            float nan = NAN;
            bq_status s2 = bq_cuda_upload(dK + (size_t)(window && pos0 >= window ? pos0 : 0) * kvd, &nan, 4);
            if (!s2) s2 = bq_cuda_attend_few(kern, 0, dq, dK, dV, da, ds, T, n, heads, group, d, kvd, scale, pos0, NULL, window);
            if (!s2) s2 = bq_cuda_sync();
            if (!s2) s2 = bq_cuda_download(a, da, nq * 4);
            size_t finite = 0;
            for (int h = 0; h < group && !s2; h++) finite += isfinite(a[(size_t)(n - 1) * qd + (size_t)h * d]) != 0;
            CHECK(!s2 && finite == 0, "GPU attention (%s) d=%d: a NaN key left %zu of %d heads' outputs finite", kn, d, finite, group);
            if (!s2) s2 = bq_cuda_upload(dK, K, nk * 4);
            st = s2;
        }
        bq_cuda_free(dq); bq_cuda_free(dK); bq_cuda_free(dV); bq_cuda_free(da); bq_cuda_free(ds); bq_cuda_free(dp);
        free(q); free(K); free(V); free(a); free(ref); free(avec);
    }
}

#ifdef BQ_CUDA_SIM  /* test_cusim: the GEMV and fake quantisation tests on the CPU simulator (tests/cusim_kernels.cc) */
#define T_NAME "test_cusim"
#else
#define T_NAME "test_cuda"
#endif

/* A mistyped A/B switch (src/cuda/knobs.h) is refused at upload, before any device
 * work, naming the variable (a CUDA=0 build refuses every upload). */
static void knobs(void)
{
    const char *var[4] = {"BQ_CUDA_GEMV", "BQ_CUDA_I8_PF", "BQ_CUDA_I8_OFF", "BQ_CUDA_F6"}, *bad[4] = {"int4", "yes", "2", "1"};
    float w[64 * 64];
    for (int i = 0; i < 64 * 64; i++) w[i] = t_normal();
    bq_format *f;
    pmat *m;
    OK(bq_format_parse("mxfp4", &f));
    OK(pmat_pack(f, w, 64, 64, NULL, &m));
    bq_format *f6;
    pmat *m6;
    OK(bq_format_parse("mxfp6_e2m3", &f6));
    OK(pmat_pack(f6, w, 64, 64, NULL, &m6));
    for (int k = 0; k < 4; k++) {
        bq_cuda_w *gw = NULL;
        setenv(var[k], bad[k], 1);
        bq_status st = bq_cuda_w_upload(k == 3 ? m6 : m, &gw);  /* (BQ_CUDA_F6 is read by 6-bit uploads) */
        int built = !strstr(bq_last_error(), "built without CUDA");
        CHECK(!gw && (built ? st == BQ_ERR_ARG && strstr(bq_last_error(), var[k]) : st != BQ_OK), "%s=%s must be refused at upload: %s",
              var[k], bad[k], bq_last_error());
        unsetenv(var[k]);
        bq_cuda_w_free(gw);
    }
    pmat_free(m);
    pmat_free(m6);
    bq_format_free(f6);
    /* and by fake quantisation, before it looks for a device */
    setenv("BQ_CUDA_QDQ", "2", 1);
    bq_status st = bq_cuda_qdq(f, w, w, 1, 64, NULL);
    int built = !strstr(bq_last_error(), "built without CUDA");
    CHECK(built ? st == BQ_ERR_ARG && strstr(bq_last_error(), "BQ_CUDA_QDQ") : st != BQ_OK, "BQ_CUDA_QDQ=2 must be refused: %s",
          bq_last_error());
    unsetenv("BQ_CUDA_QDQ");
    bq_format_free(f);
}

int main(void)
{
    char why[256];
    knobs();
    if (!bq_cuda_devices(why, sizeof why)) {
        SKIP("%s: the CUDA tests need a GPU (they run on one with `make test` there, or bench/gpu.sh)", why);
        /* what must hold without a device: a clean refusal */
        float x[32] = {0}, *dx = NULL;
        bq_format *f;
        OK(bq_format_parse("mxfp4", &f));
        CHECK(bq_cuda_qdq(f, x, x, 1, 32, NULL) == BQ_ERR_UNSUPPORTED, "qdq without a device must refuse");
        CHECK(bq_cuda_malloc((void **)&dx, 64) != BQ_OK, "malloc without a device must fail");
        bq_format_free(f);
        /* which weights the int8 GEMV path takes is decided before any device call:
         * 6-bit codes are refused by name, 4-bit ones fail only for want of a device */
        float w[64 * 64];
        for (int i = 0; i < 64 * 64; i++) w[i] = t_normal();
        const char *fm[2] = {"mxfp6_e2m3", "mxfp4"};
        for (int k = 0; k < 2; k++) {
            pmat *m;
            bq_cuda_w *gw = NULL;
            OK(bq_format_parse(fm[k], &f));
            OK(pmat_pack(f, w, 64, 64, NULL, &m));
            bq_status st = bq_cuda_w_upload_path(m, BQ_GEMV_INT8, &gw);
            int named = strstr(bq_last_error(), "int8 tensor-core path does not take") != NULL;
            int built = !strstr(bq_last_error(), "built without CUDA");
            CHECK(st != BQ_OK && !gw && (!built || named == (k == 0)), "%s on the int8 path without a device: %s", fm[k], bq_last_error());
            pmat_free(m);
            bq_format_free(f);
        }
        return test_summary(T_NAME);
    }
    printf("  device: %s\n", bq_cuda_device_name());
    const char *only = getenv("BQ_CUDA_ONLY");  /* e.g. "gemv,gemm" under compute-sanitizer */
#ifdef BQ_CUDA_SIM
    if (!only) only = "gemv,vectors,cpu,attention";  /* what the simulator runs (the GEMM is not simulated) */
#endif
    if (!only || strstr(only, "vectors")) vectors();
    if (!only || strstr(only, "cpu")) {
        against_cpu("", 0);
        setenv("BQ_CUDA_QDQ", "0", 1);  /* the kernels kept for A/B runs */
        against_cpu(" (BQ_CUDA_QDQ=0)", 1);
        unsetenv("BQ_CUDA_QDQ");
    }
    if (!only || strstr(only, "gemv")) {
        gemv(); gemv_multi(); gemv_pieces(); gemv_refusal(); gemv_f6(); gemv_extreme(0x1p116f); gemv_extreme(0x1p-118f);
    }
    if (!only || strstr(only, "gemm")) gemm();
    if (!only || strstr(only, "attention")) attention();
    return test_summary(T_NAME);
}
