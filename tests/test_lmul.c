/* L-Mul (issue 24): the reference product against hand-computed values, the
 * matmul kernel against the reference bit for bit, the engine's --mul exact
 * unchanged, per-layer rules, and formats without floating-point elements refused. */
#include "blockq.h"
#include "harness.h"
#include "lmul.h"
#include "model.h"
#include "quant.h"
#include <math.h>

static int same(float a, float b) { return isnan(a) ? isnan(b) : !memcmp(&a, &b, 4); }

static void test_reference(void)
{
    static const int lm[][2] = {{0, 0}, {1, 1}, {2, 2}, {3, 3}, {4, 3}, {5, 4}, {7, 4}, {23, 4}};
    for (size_t i = 0; i < sizeof lm / sizeof *lm; i++) CHECK(lmul_offset(lm[i][0]) == lm[i][1], "l(%d)", lm[i][0]);
    /* (1 + xm + ym + 2^-l) 2^(xe + ye), by hand */
    static const struct { float x, y; int l; float want; } c[] = {
        {1.5f, 1.5f, 3, 2.125f},        /* 1 + .5 + .5 + .125 (exact: 2.25) */
        {3.0f, 0.75f, 3, 2.125f},       /* (1.5 2^1)(1.5 2^-1) */
        {-1.0f, 1.25f, 2, -1.5f},       /* 1 + 0 + .25 + .25, sign xor */
        {-2.0f, -4.0f, 4, 8.5f},        /* (1 + 1/16) 2^3 */
        {1.75f, 1.75f, 1, 3.0f},        /* 1 + .75 + .75 + .5: the sum may pass 2 (exact: 3.0625) */
        {448.0f, 448.0f, 3, 172032.0f}, /* 448 = 1.75 2^8: (1 + .75 + .75 + .125) 2^16 (exact: 200704) */
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        float want = c[i].want;
        CHECK(same(lmul_ref(c[i].x, c[i].y, c[i].l), want), "L-Mul(%g, %g, l=%d) = %g, want %g", c[i].x, c[i].y, c[i].l,
              lmul_ref(c[i].x, c[i].y, c[i].l), want);
    }
    CHECK(same(lmul_ref(0.0f, 5.0f, 3), 0.0f) && same(lmul_ref(-0.0f, 5.0f, 3), -0.0f) && same(lmul_ref(3.0f, -0.0f, 3), -0.0f), "zeros");
    CHECK(same(lmul_ref(INFINITY, 2.0f, 3), INFINITY) && isnan(lmul_ref(0.0f, INFINITY, 3)) && isnan(lmul_ref(NAN, 1.0f, 3)), "IEEE specials");
    /* a subnormal operand is normalised: 2^-140 (1 + 2^-3) */
    CHECK(same(lmul_ref(0x1p-140f, 1.0f, 3), (float)ldexp(1.125, -140)), "subnormal: %a", (double)lmul_ref(0x1p-140f, 1.0f, 3));
    CHECK(same(lmul_ref(0x1p100f, 0x1p100f, 3), INFINITY), "overflow to Inf");
}

/* the reference, summed in the kernel's documented order */
static float ref_dot(const float *x, const float *w, int in, int l)
{
    float acc[16] = {0};
    for (int k = 0; k < in; k++) acc[k % 16] += lmul_ref(x[k], w[k], l);
    for (int s = 8; s >= 1; s /= 2)
        for (int j = 0; j < s; j++) acc[j] += acc[j + s];
    return acc[0];
}

static void test_kernel(void)
{
    static const int ins[] = {1, 15, 16, 17, 255, 256, 257, 700};
    for (size_t ii = 0; ii < sizeof ins / sizeof *ins; ii++)
        for (int kind = 0; kind < 3; kind++) {
            int in = ins[ii], n = 3, out = 5;
            float *x = malloc((size_t)n * in * 4), *w = malloc((size_t)out * in * 4), y[3 * 5];
            for (int i = 0; i < n * in; i++) x[i] = t_normal() * (kind == 2 ? ldexpf(1.0f, (int)(t_rand() % 300) - 150) : 1.0f);
            for (int i = 0; i < out * in; i++) w[i] = t_normal() * 0.05f;
            if (kind == 1)  /* zero weights against Inf/NaN inputs: NaN, as IEEE */
                for (int i = 0; i < out * in; i += 11) w[i] = 0.0f;
            if (kind >= 1)  /* zeros, subnormals, Inf and NaN scattered */
                for (int i = 0; i < n * in; i += 7) x[i] = (float[]){0.0f, -0.0f, 0x1p-140f, 1e38f, INFINITY, NAN}[t_rand() % 6];
            for (int l = 1; l <= 4; l++) {
                lmul_matmul(x, n, w, in, y, out, 0, out, l);
                int bad = 0;
                for (int t = 0; t < n; t++)
                    for (int o = 0; o < out; o++) bad += !same(y[t * out + o], ref_dot(x + (size_t)t * in, w + (size_t)o * in, in, l));
                CHECK(bad == 0, "kernel vs reference: in %d, inputs %d, l %d: %d outputs differ", in, kind, l, bad);
            }
            free(x);
            free(w);
        }
}

static bq_model *load(const char *w, const char *a, const char *mul, const char *toml)
{
    bq_model *m;
    if (bq_model_load("models/llama-19m-en", &m)) { CHECK(0, "load: %s", bq_last_error()); return NULL; }
    bq_qconfig *q;
    OK(bq_qconfig_new(&q));
    bq_status st = BQ_OK;
    if (w) st = bq_qconfig_set(q, "wq", w);
    if (!st && a) st = bq_qconfig_set(q, "aq", a);
    if (!st && mul) st = bq_qconfig_set(q, "mul", mul);
    if (!st && toml) st = qconfig_parse(q, toml, strlen(toml), "t.toml");
    if (!st) st = bq_model_quantize(m, q, 0);
    bq_qconfig_free(q);
    if (st) { bq_model_free(m); return NULL; }
    return m;
}

static void test_engine(void)
{
    int32_t ids[6] = {17, 250, 1033, 9, 77, 4000};
    int V = 8192, n = 6;
    float *a = malloc((size_t)n * V * 4), *b = malloc((size_t)n * V * 4);
    bq_model *m1 = load("fp8_e4m3", "fp8_e4m3", NULL, NULL), *m2 = load("fp8_e4m3", "fp8_e4m3", "exact", NULL);
    if (m1 && m2) {
        OK(bq_model_logits(m1, ids, n, a));
        OK(bq_model_logits(m2, ids, n, b));
        CHECK(!memcmp(a, b, (size_t)n * V * 4), "--mul exact changed the logits");
    }
    bq_model_free(m2);
    bq_model *m3 = load("fp8_e4m3", "fp8_e4m3", "lmul", NULL);
    bq_model *m4 = load("fp8_e4m3", "fp8_e4m3", NULL, "\"layers.0.*\" = { mul = \"lmul\" }\n");
    if (m1 && m3 && m4) {
        CHECK(m3->L[1].up.lmul == 3 && m4->L[0].q.lmul == 3 && m4->L[1].q.lmul == 0, "l(3) = 3 armed where the rules say");
        OK(bq_model_logits(m3, ids, n, b));
        double d = 0, r = 0;
        for (int i = 0; i < n * V; i++) { d = t_max(d, fabs((double)a[i] - b[i])); r = t_max(r, fabs((double)a[i])); }
        CHECK(d > 1e-3 * r && d < 0.5 * r, "L-Mul moved the logits by %.3g of %.3g (expected a visible, bounded change)", d, r);
    }
    bq_model_free(m1);
    bq_model_free(m3);
    bq_model_free(m4);
    free(a);
    free(b);
    /* formats without floating-point elements under power-of-two scales */
    static const char *const refused[][2] = {{"bfp8_b16", "integer elements"}, {"mxint8", "integer elements"},
                                             {"nvfp4", "not a power of two"}, {"log4", "logarithmic"}, {"int8_row", "integer"}};
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        bq_model *m = load(refused[i][0], NULL, "lmul", NULL);
        CHECK(!m && strstr(bq_last_error(), refused[i][1]) && strstr(bq_last_error(), refused[i][0]), "%s: %s", refused[i][0],
              m ? "accepted" : bq_last_error());
        bq_model_free(m);
    }
    bq_model *m = load(NULL, NULL, "lmul:9", NULL);
    CHECK(m && m->L[0].down.lmul == 9, "lmul:9 on float32 operands");
    bq_model_free(m);
    bq_qconfig *q;
    OK(bq_qconfig_new(&q));
    CHECK(bq_qconfig_set(q, "mul", "lmul:0") == BQ_ERR_ARG && bq_qconfig_set(q, "mul", "approx") == BQ_ERR_ARG, "bad mul accepted");
    CHECK(qconfig_parse(q, "mul = 3\n", 8, "t") != BQ_OK, "numeric mul accepted");
    bq_qconfig_free(q);
}

int main(void)
{
    test_reference();
    test_kernel();
    test_engine();
    return test_summary("test_lmul");
}
