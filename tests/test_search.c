/* Cost model numbers checked by hand, the knapsack against brute force, the
 * Pareto filter, and the impossible-budget error. */
#include "blockq.h"
#include "harness.h"
#include <math.h>

static bq_cost cost_of(const char *w, const char *a)
{
    bq_format *fw, *fa;
    bq_cost c = {0};
    if (bq_format_parse(w, &fw) || bq_format_parse(a, &fa)) { CHECK(0, "parse %s/%s", w, a); return c; }
    bq_cost_pair(fw, fa, &c);
    bq_format_free(fw);
    bq_format_free(fa);
    return c;
}

static void test_cost(void)
{
    /* float32: 24x24 multiplier 576 + exponent adder 9 + two 48-bit shifters
     * 2*48*6*0.25 = 144 + 48-bit adder 48 = 777 full adders (docs/cost-model.md) */
    bq_cost f = cost_of("fp32", "fp32");
    CHECK(fabs(f.mac_area - 777.0) < 1e-9, "fp32 MAC area %g, by hand 777", f.mac_area);
    /* bfp6_b16: 5x5 magnitudes 25 + accumulator 5+5+4 = 14; per block of 16:
     * exponent adder 9 + shifter 14*4*0.25 = 14 + float32 add 24 + normalise 24*5*0.25 = 30 -> 77/16 */
    bq_cost b = cost_of("bfp6_b16", "bfp6_b16");
    CHECK(fabs(b.mac_area - (39.0 + 77.0 / 16)) < 1e-9, "bfp6_b16 MAC area %g, by hand %g", b.mac_area, 39.0 + 77.0 / 16);
    CHECK(fabs(b.mem_density - 32.0 / 6.5) < 1e-12, "bfp6_b16 memory density %g", b.mem_density);
    /* 8-bit fixed point: 8x8 = 64 + accumulator 8+8+4 = 20 */
    bq_cost i8 = cost_of("fixed8.4", "fixed8.4");
    CHECK(fabs(i8.mac_area - 84.0) < 1e-9, "fixed8.4 MAC area %g, by hand 84", i8.mac_area);
    /* orderings the model must keep */
    CHECK(cost_of("bfp4_b16", "bfp4_b16").mac_area < b.mac_area, "bfp4 should be cheaper than bfp6");
    CHECK(b.mac_area < cost_of("bfp8_b16", "bfp8_b16").mac_area, "bfp6 should be cheaper than bfp8");
    CHECK(cost_of("mxfp4", "mxfp8_e4m3").mac_area < cost_of("mxfp8_e4m3", "mxfp8_e4m3").mac_area, "W4A8 vs W8A8");
    printf("  cost model: bfp6_b16 arithmetic density %.2fx vs fp32, %.2fx vs 8-bit fixed point; memory %.2fx / %.2fx\n",
           b.arith_density, i8.mac_area / b.mac_area, b.mem_density, 8.0 / 6.5);
}

/* Brute force over every assignment of a small problem with integer costs. */
static void test_knapsack(void)
{
    enum { N = 6, F = 3 };
    size_t params[N] = {5, 10, 15, 10, 5, 15};  /* 60 in all */
    double bits[F] = {2, 4, 8};
    for (int trial = 0; trial < 20; trial++) {
        double sens[N * F];
        for (int i = 0; i < N; i++) {
            double hi = 0.1 + t_unif();
            sens[i * F + 0] = hi;                    /* fewer bits hurt more */
            sens[i * F + 1] = hi * t_unif() * 0.5;
            sens[i * F + 2] = sens[i * F + 1] * t_unif() * 0.5;
        }
        double budget = 3.0 + (trial % 5);          /* budget * 60 is an integer: grid = unit 1 */
        int choose[N];
        double got;
        bq_status st = bq_knapsack(N, F, sens, params, bits, budget, (int)(budget * 60), choose, &got);
        CHECK(st == BQ_OK, "knapsack: %s", bq_last_error());
        double best = INFINITY, cost = 0;
        for (int i = 0; i < N; i++) cost += (double)params[i] * bits[choose[i]];
        CHECK(cost <= budget * 60 + 1e-9, "knapsack exceeds the budget: %g > %g", cost, budget * 60);
        int pick[N];
        for (int code = 0; code < 729; code++) {  /* 3^6 */
            double c = 0, s = 0;
            for (int i = 0, k = code; i < N; i++, k /= 3) {
                pick[i] = k % 3;
                c += (double)params[i] * bits[pick[i]];
                s += sens[i * F + pick[i]];
            }
            if (c <= budget * 60 && s < best) best = s;
        }
        CHECK(fabs(got - best) < 1e-12, "budget %g: knapsack %.6f, brute force optimum %.6f", budget, got, best);
    }
    int choose[N];
    double sens[N * F] = {0};
    CHECK(bq_knapsack(N, F, sens, params, bits, 1.5, 1024, choose, NULL) == BQ_ERR_ARG &&
          strstr(bq_last_error(), "below the cheapest"), "impossible budget: %s", bq_last_error());
}

static void test_pareto(void)
{
    double loss[5] = {1.0, 2.0, 0.5, 1.0, 3.0}, bits[5] = {4, 3, 8, 5, 3}, dens[5] = {10, 12, 5, 9, 12};
    int front[5];
    int n = bq_pareto(5, loss, bits, dens, front);
    /* 3 is dominated by 0 (same loss, more bits, less density); 4 by 1 */
    CHECK(n == 3 && front[0] == 0 && front[1] == 1 && front[2] == 2, "Pareto front of %d points", n);
}

/* The library's trials on the tiny LLaMA: a sensitivity entry is exactly the nll of
 * that one linear quantised minus the float nll; the trials split over parts add up
 * to the whole bit for bit; progress is reported per linear; bad options refused. */
static int progress_calls, progress_last;
static void on_progress(void *arg, int done, int total)
{
    (void)arg;
    progress_calls++;
    progress_last = done == total ? done : -1;
}

static void test_trials(void)
{
    const char *sh = shared_dir();
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/models/tiny/llama", sh ? sh : ".");
    bq_model *m;
    if (!sh || bq_model_load(dir, &m)) { SKIP("tiny llama absent: the library's trials not run"); return; }
    int nl = bq_model_n_linears(m), V = bq_model_vocab(m);
    bq_model_free(m);
    int32_t ids[130];
    for (int i = 0; i < 130; i++) ids[i] = (int32_t)(t_rand() % (unsigned)V);
    const char *fmts[2] = {"mxfp4", "int4_g32"};
    bq_trial_opts o = {.size = sizeof o, .ctx = 64, .chunks = 2, .threads = 1, .progress = on_progress};
    double base = NAN, *sens = calloc((size_t)nl * 2, sizeof *sens), *a = calloc((size_t)nl * 2, sizeof *a),
           *b = calloc((size_t)nl * 2, sizeof *b);
    OK(bq_sensitivity(dir, ids, 130, fmts, 2, &o, &base, sens));
    CHECK(progress_calls == nl && progress_last == nl, "progress: %d calls for %d linears", progress_calls, nl);
    int k = nl - 1, *choose = malloc((size_t)nl * sizeof *choose);
    for (int j = 0; j < nl; j++) choose[j] = j == k ? 1 : -1;
    double one = NAN, b2 = NAN;
    OK(bq_assignment_nll(dir, ids, 130, nl, choose, fmts, &o, &one, NULL));
    OK(bq_assignment_nll(dir, ids, 130, nl, NULL, fmts, &o, &b2, NULL));
    CHECK(base == b2 && sens[(size_t)k * 2 + 1] == one - base && one != base,
          "sensitivity %.9g against the trial's %.9g - %.9g", sens[(size_t)k * 2 + 1], one, base);
    int nonzero = 0;
    for (int i = 0; i < nl * 2; i++) nonzero += sens[i] != 0.0 && isfinite(sens[i]);
    CHECK(nonzero == nl * 2, "%d of %d sensitivities non-zero and finite", nonzero, nl * 2);
    o.progress = NULL;
    o.parts = 2;
    o.part = 0;
    OK(bq_sensitivity(dir, ids, 130, fmts, 2, &o, &b2, a));
    o.part = 1;
    OK(bq_sensitivity(dir, ids, 130, fmts, 2, &o, &b2, b));
    int same = 1;
    for (int i = 0; i < nl * 2; i++) same &= (a[i] == 0.0 || b[i] == 0.0) && a[i] + b[i] == sens[i];
    CHECK(same, "sensitivity in two parts differs from the whole");
    o.part = 2;
    CHECK(bq_sensitivity(dir, ids, 130, fmts, 2, &o, &b2, a) == BQ_ERR_ARG, "part 2 of 2 accepted");
    o.size = 0;
    o.part = 0;
    CHECK(bq_assignment_nll(dir, ids, 130, nl, NULL, fmts, &o, &b2, NULL) == BQ_ERR_ARG, "options without their size accepted");
    o.size = sizeof o;
    CHECK(bq_assignment_nll(dir, ids, 130, nl - 1, choose, fmts, &o, &b2, NULL) == BQ_ERR_ARG, "an assignment of the wrong length accepted");
    free(sens); free(a); free(b); free(choose);
}

int main(void)
{
    test_cost();
    test_knapsack();
    test_pareto();
    test_trials();
    return test_summary("test_search");
}
