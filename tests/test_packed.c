/* Packed weights: the in-memory panels give back the file bytes exactly and
 * decode to exactly the fake-quantised weights; the packed matmuls agree with
 * a double-precision reference on the decoded operands, give identical bits on
 * every ISA, and a packed model's logits match the fake-quantised model's. */
#include "blockq.h"
#include "harness.h"
#include "model.h"
#include "pmat.h"
#include <math.h>

static const char *W_FORMATS[] = {"mxfp4", "nvfp4", "mxint8", "bfp8_b16", "bfp4_b32", "int8_b32_sfp16",
                                  "int4_b32_sfp16", "int4_g128", "int8_g128", "bme2m1_b16", "e2m1_b32_sfp16",
                                  "mxfp6_e2m3", "mxfp8_e4m3", "bl4_b16", "int4_asym_g128", "int8_row", "fp8_e4m3", "q4_1", "q5_1"};
static const char *A_FORMATS[] = {"mxint8", "bfp8_b16", "int8_b32_sfp16", "int8_row", "nvfp4", "int8", "q8_0"};
static const char *ISAS[] = {"scalar", "avx2", "avx512"};

static float *randm(int rows, int cols, int outliers)
{
    float *x = malloc((size_t)rows * cols * sizeof *x);
    for (size_t i = 0; i < (size_t)rows * cols; i++) {
        x[i] = t_normal() * 0.05f;
        if (outliers && t_rand() % 97 == 0) x[i] *= 40.0f;
        if (t_rand() % 211 == 0) x[i] = 0.0f;
    }
    return x;
}

static uint8_t *pack(const bq_format *f, const float *x, int rows, int cols, size_t *size)
{
    *size = bq_packed_size(f, (size_t)rows, (size_t)cols);
    uint8_t *p = malloc(*size);
    if (bq_pack(f, x, (size_t)rows, (size_t)cols, NULL, p, *size)) CHECK(0, "pack %s: %s", f->name, bq_last_error());
    return p;
}

static double max_rel(const float *a, const double *ref, size_t n)
{
    double mx = 0, d = 0;
    for (size_t i = 0; i < n; i++) {
        mx = t_max(mx, fabs(ref[i]));
        d = t_max(d, fabs((double)a[i] - ref[i]));
    }
    return mx > 0 ? d / mx : d;
}

static void layout_and_kernels(void)
{
    const int shapes[][2] = {{37, 128}, {64, 256}, {16, 96}, {5, 512}};
    for (size_t fi = 0; fi < sizeof W_FORMATS / sizeof *W_FORMATS; fi++) {
        bq_format *f;
        bq_format_parse(W_FORMATS[fi], &f);
        for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
            int R = shapes[s][0], C = shapes[s][1];
            float *w = randm(R, C, 1), *dq = malloc((size_t)R * C * 4), *dec = malloc((size_t)R * C * 4);
            size_t size;
            uint8_t *pk = pack(f, w, R, C, &size), *back = malloc(size);
            pmat *m;
            if (pmat_new(f, R, C, pk, size, &m)) { CHECK(0, "pmat_new %s: %s", f->name, bq_last_error()); continue; }
            CHECK(pmat_to_packed(m, back, size) == BQ_OK && !memcmp(back, pk, size), "%s %dx%d: panels -> file bytes",
                  f->name, R, C);
            bq_qdq(f, w, dq, (size_t)R, (size_t)C, NULL);
            pmat_decode(m, 0, R, dec);
            int same = 1;
            for (size_t i = 0; i < (size_t)R * C; i++) same &= dq[i] == dec[i];
            CHECK(same, "%s %dx%d (%s): decode == fake quantisation", f->name, R, C, m->kind == PM_PANEL ? "panel" : "stream");
            pmat_decode(m, 3, R > 20 ? 20 : R, dec);
            same = 1;
            for (size_t i = 0; i < (size_t)((R > 20 ? 20 : R) - 3) * C; i++) same &= dec[i] == dq[3 * (size_t)C + i];
            CHECK(same, "%s: decode of a row range", f->name);
            if (s == 0) CHECK(pmat_bytes(m) <= size + (size_t)16 * C, "%s: %zu bytes held for %zu packed", f->name, pmat_bytes(m), size);
            if (m->kind == PM_PANEL) {
                /* float activations, 13 tokens and 1 (decoding's kernels): vs double reference; same bits on every ISA */
                for (int n = 13; n >= 1; n -= 12) {
                float *x = randm(n, C, 0), *y[3];
                double *ref = malloc((size_t)n * R * sizeof *ref);
                for (int t = 0; t < n; t++)
                    for (int r = 0; r < R; r++) {
                        double acc = 0;
                        for (int k = 0; k < C; k++) acc += (double)dq[(size_t)r * C + k] * x[(size_t)t * C + k];
                        ref[(size_t)t * R + r] = acc;
                    }
                for (int i = 0; i < 3; i++) {
                    y[i] = calloc((size_t)n * R, 4);
                    if (!isa_absent(bq_set_isa(ISAS[i]), ISAS[i])) pmat_mv_f32(m, x, n, y[i], R, 0, R);
                }
                CHECK(max_rel(y[0], ref, (size_t)n * R) < 1e-5, "%s: mv_f32 vs reference %.2e", f->name, max_rel(y[0], ref, (size_t)n * R));
                for (int i = 1; i < 3; i++)
                    if (!bq_set_isa(ISAS[i]))
                        CHECK(!memcmp(y[0], y[i], (size_t)n * R * 4), "%s: mv_f32 on %s differs from scalar", f->name, ISAS[i]);
                /* integer path with each activation format it accepts */
                for (size_t ai = 0; ai < sizeof A_FORMATS / sizeof *A_FORMATS; ai++) {
                    bq_format *af;
                    bq_format_parse(A_FORMATS[ai], &af);
                    if (!pmat_int_ok(m, af)) { bq_format_free(af); continue; }
                    float *xq = malloc((size_t)n * C * 4);
                    bq_qdq(af, x, xq, (size_t)n, (size_t)C, NULL);
                    for (int t = 0; t < n; t++)
                        for (int r = 0; r < R; r++) {
                            double acc = 0;
                            for (int k = 0; k < C; k++) acc += (double)dq[(size_t)r * C + k] * xq[(size_t)t * C + k];
                            ref[(size_t)t * R + r] = acc;
                        }
                    pm_act a;
                    CHECK(pm_act_make(af, x, n, C, NULL, &a) == BQ_OK, "act %s", af->name);
                    for (int i = 0; i < 3; i++) {
                        memset(y[i], 0, (size_t)n * R * 4);
                        if (!isa_absent(bq_set_isa(ISAS[i]), ISAS[i])) pmat_mm_int(m, &a, y[i], R, 0, R);
                    }
                    double e = max_rel(y[0], ref, (size_t)n * R);
                    CHECK(e < 1e-5, "%s x %s: integer path vs reference %.2e", f->name, af->name, e);
                    for (int i = 1; i < 3; i++)
                        if (!bq_set_isa(ISAS[i]))
                            CHECK(!memcmp(y[0], y[i], (size_t)n * R * 4), "%s x %s: integer path on %s differs from scalar",
                                  f->name, af->name, ISAS[i]);
                    pm_act_free(&a);
                    free(xq);
                    bq_format_free(af);
                }
                if (bq_set_isa("avx512")) bq_set_isa("avx2");  /* back to the best this CPU has */
                for (int i = 0; i < 3; i++) free(y[i]);
                free(ref);
                free(x);
                }
            }
            pmat_free(m);
            free(w); free(dq); free(dec); free(pk); free(back);
        }
        bq_format_free(f);
    }
}

/* A few representations the kernels must take (so a silent fall-back to the
 * slow path would show). */
static void kinds(void)
{
    const char *panel[] = {"mxfp4", "nvfp4", "mxint8", "bfp8_b16", "int8_b32_sfp16", "int4_g128"};
    const char *stream[] = {"mxfp8_e4m3", "mxfp6_e3m2", "bl8_b16", "int4_asym_g128"};
    float *w = randm(16, 256, 0);
    for (int i = 0; i < 10; i++) {
        const char *name = i < 6 ? panel[i] : stream[i - 6];
        bq_format *f;
        bq_format_parse(name, &f);
        pmat *m;
        CHECK(pmat_pack(f, w, 16, 256, NULL, &m) == BQ_OK && (int)m->kind == (i < 6 ? PM_PANEL : PM_STREAM), "%s representation", name);
        pmat_free(m);
        bq_format_free(f);
    }
    free(w);
}

static bq_model *load_q(const char *dir, const char *wq, const char *aq, int pack)
{
    bq_model *m;
    if (bq_model_load(dir, &m)) { CHECK(0, "load: %s", bq_last_error()); return NULL; }
    bq_qconfig *q;
    bq_qconfig_new(&q);
    bq_qconfig_set(q, "wq", wq);
    if (aq) bq_qconfig_set(q, "aq", aq);
    bq_status st = pack ? bq_model_pack(m, q, 1) : bq_model_quantize(m, q, 1);
    bq_qconfig_free(q);
    if (st) { CHECK(0, "%s: %s", wq, bq_last_error()); bq_model_free(m); return NULL; }
    return m;
}

/* Logits of a prefill of n tokens then 3 single-token steps (the GEMV path). */
static float *run(const bq_model *m, const int32_t *ids, int n, int V)
{
    float *lg = malloc((size_t)(n + 3) * V * 4);
    bq_ctx *c;
    bq_ctx_new(m, n + 3, &c);
    if (bq_forward(c, ids, n, lg, 1)) CHECK(0, "forward: %s", bq_last_error());
    for (int i = 0; i < 3; i++)
        if (bq_forward(c, ids + i, 1, lg + (size_t)(n + i) * V, 1)) CHECK(0, "step: %s", bq_last_error());
    bq_ctx_free(c);
    return lg;
}

static double nll(const float *lg, const int32_t *ids, int n, int V)
{
    double s = 0;
    for (int t = 0; t + 1 < n; t++) {
        const float *l = lg + (size_t)t * V;
        double mx = l[0], z = 0;
        for (int i = 1; i < V; i++) mx = t_max(mx, l[i]);
        for (int i = 0; i < V; i++) z += exp(l[i] - mx);
        s += mx + log(z) - l[ids[t + 1]];
    }
    return s / (n - 1);
}

static void model_equivalence(void)
{
    const char *dir = "models/llama-19m-en";
    const char *wq[] = {"mxfp4", "nvfp4", "mxint8", "bfp8_b16", "int4_g128", "mxfp6_e2m3", "mxfp8_e4m3"};
    const char *aq[] = {NULL, "mxint8", "bfp8_b16"};
    int32_t ids[24];
    for (int i = 0; i < 24; i++) ids[i] = (int32_t)(t_rand() % 4000) + 10;
    for (size_t w = 0; w < sizeof wq / sizeof *wq; w++)
        for (size_t a = 0; a < 3; a++) {
            bq_model *fq = load_q(dir, wq[w], aq[a], 0), *pq = load_q(dir, wq[w], aq[a], 1);
            if (!fq || !pq) { bq_model_free(fq); bq_model_free(pq); continue; }
            int V = bq_model_vocab(fq), n = 24;
            float *l1 = run(fq, ids, n, V), *l2 = run(pq, ids, n, V);
            double mx = 0, d = 0;
            for (size_t i = 0; i < (size_t)(n + 3) * V; i++) {
                mx = t_max(mx, fabs(l1[i]));
                d = t_max(d, fabs(l1[i] - l2[i]));
            }
            if (!aq[a]) {
                CHECK(d / mx <= 1e-5, "W %s: packed vs fake-quantised logits %.2e", wq[w], d / mx);
                /* prefill through decode + SGEMM: exactly the fake-quantised bits */
                CHECK(!memcmp(l1, l2, (size_t)n * V * 4), "W %s: packed prefill bit-identical", wq[w]);
            } else {
                /* Quantised activations are a step function of the matmul outputs: a
                 * last-bit difference in accumulation order can move one code, which
                 * the next layers amplify. So compare what a user measures, the mean
                 * NLL of the next tokens (the matmuls themselves are held to 1e-5 above). */
                double n1 = nll(l1, ids, n, V), n2 = nll(l2, ids, n, V);
                CHECK(fabs(n1 - n2) <= 2e-3 * n1, "W %s A %s: NLL %.6f vs %.6f", wq[w], aq[a], n1, n2);
            }
            printf("  W %-12s A %-9s max|diff|/max|logit| = %.2e\n", wq[w], aq[a] ? aq[a] : "fp32", d / mx);
            free(l1);
            free(l2);
            bq_model_free(fq);
            bq_model_free(pq);
        }
}

/* A matrix large enough that loading and unloading its panels run over all cores:
 * the same bytes and the same decoded values as the one-row-at-a-time reference. */
static void large_panels(void)
{
    const char *fm[] = {"mxfp4", "q4_0", "mxint8"};
    int rows = 2064, cols = 2048;  /* 129 panels: the last range ends mid-way through the thread split */
    float *x = randm(rows, cols, 1), *ref = malloc((size_t)rows * cols * 4), *dec = malloc((size_t)rows * cols * 4);
    for (int i = 0; i < 3; i++) {
        bq_format *f;
        OK(bq_format_parse(fm[i], &f));
        size_t size;
        uint8_t *pk = pack(f, x, rows, cols, &size), *back = malloc(size);
        pmat *m;
        OK(pmat_new(f, rows, cols, pk, size, &m));
        CHECK(pmat_to_packed(m, back, size) == BQ_OK && !memcmp(back, pk, size), "%s %dx%d: panels -> file bytes", fm[i], rows, cols);
        OK(bq_unpack(f, pk, size, (size_t)rows, (size_t)cols, ref));
        pmat_decode(m, 0, rows, dec);
        size_t bad = 0, first = 0;
        for (size_t e = 0; e < (size_t)rows * cols; e++)
            if (!(ref[e] == dec[e] || (ref[e] != ref[e] && dec[e] != dec[e])) && !bad++) first = e;  /* -0 == 0; NaN only as NaN */
        CHECK(bad == 0, "%s %dx%d: %zu values decode otherwise, first at %zu: %g vs %g", fm[i], rows, cols, bad, first,
              bad ? ref[first] : 0, bad ? dec[first] : 0);
        pmat_free(m);
        free(pk); free(back);
        bq_format_free(f);
    }
    free(x); free(ref); free(dec);
}

/* The integer path's activation codes times their block factors are exactly what
 * fake quantisation gives, llama.cpp's rules (q8_0, q4_0, q5_0) included: an earlier
 * version quantised q8_0 activations with blockq's int8_b32_sfp16 rule there. */
static void act_codes(void)
{
    const char *af[] = {"q8_0", "q4_0", "q5_0", "int8_b32_sfp16", "mxint8", "bfp8_b16", "int8_row"};
    int n = 64, cols = 1024;
    float *x = randm(n, cols, 1), *y = malloc((size_t)n * cols * 4);
    for (size_t i = 0; i < 3 * sizeof af / sizeof *af; i++) {  /* each format on each ISA (q8_0 has SIMD codes) */
        bq_format *f;
        const char *isa = ISAS[i % 3];
        if (isa_absent(bq_set_isa(isa), isa)) continue;
        OK(bq_format_parse(af[i / 3], &f));
        OK(bq_qdq(f, x, y, (size_t)n, (size_t)cols, NULL));
        pm_act a;
        OK(pm_act_make(f, x, n, cols, NULL, &a));
        size_t bad = 0;
        for (int t = 0; t < n; t++)
            for (int k = 0; k < cols; k++) {
                float v = (float)((int)a.u[(size_t)t * cols + k] - 128) * a.s[(size_t)t * (cols / a.K) + k / a.K];
                bad += !(v == y[(size_t)t * cols + k]);
            }
        CHECK(bad == 0, "%s (%s): %zu of %d integer-path activations differ from fake quantisation", af[i / 3], isa, bad, n * cols);
        bad = 0;  /* the signed copy and its sums over 16 columns, which the AVX-512 kernel reads */
        for (int c = 0; c < n * cols / 16; c++) {
            int32_t sum = 0;
            for (int k = 0; k < 16; k++) {
                bad += a.q[16 * c + k] != (int)a.u[16 * c + k] - 128;
                sum += a.q[16 * c + k];
            }
            bad += sum != a.qsum[c];
        }
        CHECK(bad == 0, "%s: %zu signed codes or 16-column sums wrong", af[i / 3], bad);
        pm_act_free(&a);
        bq_format_free(f);
    }
    if (bq_set_isa("avx512")) bq_set_isa("avx2");  /* back to the best this CPU has */
    free(x);
    free(y);
}

/* q8_0's rounding is roundf's (half away from zero) at the values where adding 0.5
 * would round differently: a block whose largest value is 127 has d = 1. */
static void q8_0_rounding(void)
{
    float x[32] = {127.0f, 0.49999997f, -0.49999997f, 0.5f, -0.5f, 1.5f, -1.5f, 2.5f, -2.5f, 0.50000006f,
                   126.5f, -126.5f, 1.4999999f, -3.4999998f, 0.0f, -0.0f, 1e-30f, 2.4999998f};
    for (int i = 18; i < 32; i++) x[i] = (float)(i - 25) * 0.25f;
    float y[32];
    bq_format *f;
    OK(bq_format_parse("q8_0", &f));
    OK(bq_qdq(f, x, y, 1, 32, NULL));
    for (int i = 0; i < 32; i++) CHECK(y[i] == roundf(x[i]), "q8_0 of %.9g: %.9g, roundf gives %.9g", x[i], y[i], roundf(x[i]));
    for (int k = 0; k < 3; k++) {  /* the integer path's codes, on every ISA */
        if (isa_absent(bq_set_isa(ISAS[k]), ISAS[k])) continue;
        pm_act a;
        OK(pm_act_make(f, x, 1, 32, NULL, &a));
        for (int i = 0; a.u && i < 32; i++)
            CHECK((int)a.u[i] - 128 == (int)roundf(x[i]), "q8_0 code of %.9g on %s: %d", x[i], ISAS[k], (int)a.u[i] - 128);
        pm_act_free(&a);
    }
    if (bq_set_isa("avx512")) bq_set_isa("avx2");
    bq_format_free(f);
}

/* One query against many keys (decoding's attention scores): rows in blocks of 16
 * and the rest, bit for bit the documented order (16 lanes, k ascending, then the
 * tree 8, 4, 2, 1), whatever range of rows is asked. */
static void rows_one_query(void)
{
    const int R = 53, C = 64;
    float *w = randm(R, C + 3, 1), *x = randm(1, C, 0), y[64], ref[64];
    for (int r = 0; r < R; r++) {
        float acc[16] = {0};
        for (int k = 0; k < C; k++) acc[k % 16] += x[k] * w[(size_t)r * (C + 3) + k];
        for (int h = 8; h >= 1; h /= 2)
            for (int j = 0; j < h; j++) acc[j] += acc[j + h];
        ref[r] = acc[0];
    }
    for (int r0 = 0; r0 < 5; r0 += 3) {
        for (int r = 0; r < R; r++) y[r] = NAN;
        mv_rows_f32_ld(w, C + 3, C, x, C, 1, y, R, r0, R);
        size_t bad = 0;
        for (int r = r0; r < R; r++) bad += memcmp(&y[r], &ref[r], 4) != 0;
        CHECK(bad == 0, "mv_rows_f32 of one query, rows %d..%d: %zu rows differ from the documented sums", r0, R, bad);
    }
    free(w);
    free(x);
}

int main(void)
{
    q8_0_rounding();
    rows_one_query();
    act_codes();
    large_panels();
    kinds();
    layout_and_kernels();
    model_equivalence();
    return test_summary("test_packed");
}
