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

/* A tiny checkpoint of ../shared (models/tiny/NAME), loaded, its folder in dir and 130
 * random token ids; NULL, with a SKIP naming what was not run, where it is absent. */
static bq_model *tiny_model(const char *name, const char *what, char dir[4200], int32_t ids[130])
{
    const char *sh = shared_dir();
    snprintf(dir, 4200, "%s/models/tiny/%s", sh ? sh : ".", name);
    bq_model *m;
    if (!sh || bq_model_load(dir, &m)) { SKIP("tiny %s absent: %s not run", name, what); return NULL; }
    int V = bq_model_vocab(m);
    for (int i = 0; i < 130; i++) ids[i] = (int32_t)(t_rand() % (unsigned)V);
    return m;
}

static void test_trials(void)
{
    char dir[4200];
    int32_t ids[130];
    bq_model *m = tiny_model("llama", "the library's trials", dir, ids);
    if (!m) return;
    int nl = bq_model_n_linears(m);
    bq_model_free(m);
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

/* A trial quantises copies of the chosen linears on one loaded model and swaps them
 * back after scoring: the same nll, bit for bit, as quantising a fresh load with
 * bq_model_quantize (a float32 and a bf16 checkpoint: the latter's trials are views
 * of the mapped file), and the model comes back as loaded (its float score after
 * a sensitivity run equals a fresh load's). */
static void test_trial_swap(void)
{
    const char *names[2] = {"llama", "mistral"};
    for (int v = 0; v < 2; v++) {
        char dir[4200];
        int32_t ids[130];
        bq_model *m = tiny_model(names[v], "trial swaps", dir, ids);
        if (!m) continue;
        int nl = bq_model_n_linears(m);
        const char *fmts[3] = {"mxfp4", "int4_g32", "bfp6_b16"};
        int *choose = malloc((size_t)nl * sizeof *choose);
        bq_qconfig *q;
        OK(bq_qconfig_new(&q));
        for (int i = 0; i < nl; i++) {
            choose[i] = (i % 4) - 1;  /* -1 (as loaded), 0, 1, 2 */
            if (choose[i] >= 0) OK(bq_qconfig_add_rule(q, bq_model_linear_name(m, i), fmts[choose[i]], fmts[choose[i]]));
        }
        bq_ppl_opts po = {.ctx = 64, .chunks = 2, .threads = 1};
        bq_ppl_result r;
        OK(bq_model_quantize(m, q, 1));
        OK(bq_perplexity(m, ids, 130, &po, &r));
        bq_trial_opts o = {.size = sizeof o, .ctx = 64, .chunks = 2, .threads = 1};
        double nll = NAN;
        OK(bq_assignment_nll(dir, ids, 130, nl, choose, fmts, &o, &nll, NULL));
        CHECK(nll == r.nll && isfinite(nll), "%s: a trial's nll %.12g, bq_model_quantize's %.12g", names[v], nll, r.nll);
        double base = NAN, fresh = NAN, *sens = calloc((size_t)nl * 3, sizeof *sens);
        OK(bq_sensitivity(dir, ids, 130, fmts, 3, &o, &base, sens));
        OK(bq_assignment_nll(dir, ids, 130, nl, NULL, fmts, &o, &fresh, NULL));
        int k = nl - 1;
        for (int i = 0; i < nl; i++) choose[i] = i == k ? 2 : -1;
        OK(bq_assignment_nll(dir, ids, 130, nl, choose, fmts, &o, &nll, NULL));
        CHECK(base == fresh && sens[(size_t)k * 3 + 2] == nll - fresh, "%s: after %d trials on one load: float %.12g vs %.12g, "
              "last trial %.12g vs %.12g", names[v], nl * 3, base, fresh, sens[(size_t)k * 3 + 2], nll - fresh);
        free(sens);
        free(choose);
        bq_qconfig_free(q);
        bq_model_free(m);
    }
}

/* bq_search: the points it scores are the trials bq_assignment_nll scores, its
 * sensitivities bq_sensitivity's; random trials recalled from a record give the same
 * result without scoring; bad options and formats that do not fit are refused. */
typedef struct { int k[16], n; double nll[16]; int calls; } trial_log;
static void rec_trial(void *arg, int k, int nl, const int *choose, double nll)
{
    (void)nl; (void)choose;
    trial_log *t = arg;
    if (t->n < 16) { t->k[t->n] = k; t->nll[t->n++] = nll; }
}
static int recall_trial(void *arg, int k, int nl, const int *choose, double *nll)
{
    (void)nl; (void)choose;
    trial_log *t = arg;
    t->calls++;
    for (int i = 0; i < t->n; i++)
        if (t->k[i] == k) { *nll = t->nll[i]; return 1; }
    return 0;
}

static void test_search_lib(void)
{
    char dir[4200];
    int32_t ids[130];
    bq_model *m = tiny_model("llama", "bq_search", dir, ids);
    if (!m) return;
    int nl = bq_model_n_linears(m);
    bq_model_free(m);
    const char *fmts[2] = {"bfp4_b16", "bfp8_b16"};
    double bits[2], area[2], fp32_area;
    bq_format *f;
    bq_cost c;
    for (int i = 0; i < 3; i++) {
        OK(bq_format_parse(i < 2 ? fmts[i] : "fp32", &f));
        bq_format_info in;
        bq_format_get_info(f, &in);
        bq_cost_pair(f, f, &c);
        if (i < 2) { bits[i] = in.bits_per_element; area[i] = c.mac_area; } else fp32_area = c.mac_area;
        bq_format_free(f);
    }
    trial_log log = {0};
    bq_search_opts o = {.size = sizeof o, .trial = {.size = sizeof o.trial, .ctx = 64, .chunks = 2, .threads = 1}, .budget = 6.0,
                        .trials = 3, .seed = 5, .bits = bits, .area = area, .fp32_area = fp32_area, .record = rec_trial,
                        .recall = recall_trial, .arg = &log};
    bq_search_result *r = NULL, *r2 = NULL;
    OK(bq_search(dir, ids, 130, fmts, 2, &o, &r));
    if (!r) return;
    CHECK(r->n_points == 6 && r->n_linears == nl && r->n_formats == 2 && !strcmp(r->kind[0], "knapsack") &&
          !strcmp(r->kind[2], "uniform bfp8_b16") && !strcmp(r->kind[5], "trial 2"), "points: %d, kinds %s, %s", r->n_points,
          r->kind[0], r->kind[5]);
    CHECK(log.n == 3 && log.calls == 3 && r->recalled == 0, "%d trials recorded, %d recall calls", log.n, log.calls);
    double one = NAN, base = NAN, *sens = calloc((size_t)nl * 2, sizeof *sens);
    int same = 1, inbudget = 1, front = 0;
    for (int j = 0; j < r->n_points; j++) {
        OK(bq_assignment_nll(dir, ids, 130, nl, r->choose + (size_t)j * nl, fmts, &o.trial, &one, NULL));
        same &= one == r->nll[j] && isfinite(one);
        if (j == 0 || j >= 3) inbudget &= r->bits[j] <= o.budget + 1e-9;
        front += r->pareto[j];
    }
    CHECK(same, "a search point's nll differs from its own trial's");
    CHECK(inbudget && front > 0 && r->density[1] > r->density[2], "budget, front (%d points), density", front);
    OK(bq_sensitivity(dir, ids, 130, fmts, 2, &o.trial, &base, sens));
    int sames = base == r->base_nll;
    for (int i = 0; i < nl * 2; i++) sames &= sens[i] == r->sens[i];
    CHECK(sames, "search's sensitivities differ from bq_sensitivity's");
    /* resumed: every random trial recalled, the same points */
    log.calls = 0;
    OK(bq_search(dir, ids, 130, fmts, 2, &o, &r2));
    if (r2) {
        int eq = r2->recalled == 3 && log.calls == 3;
        for (int j = 0; j < r->n_points; j++) eq &= r2->nll[j] == r->nll[j] && r2->pareto[j] == r->pareto[j];
        CHECK(eq, "a resumed search differs (recalled %d)", r2->recalled);
    }
    bq_search_result_free(r2);
    r2 = NULL;
    o.budget = 4.0;  /* under bfp4_b16's 4.5 bits */
    CHECK(bq_search(dir, ids, 130, fmts, 2, &o, &r2) == BQ_ERR_ARG && !r2, "an impossible budget accepted");
    o.budget = 6.0;
    const char *wide[2] = {"bfp4_b16", "bfp8_b4096"};
    CHECK(bq_search(dir, ids, 130, wide, 2, &o, &r2) == BQ_ERR_SHAPE && !r2 && strstr(bq_last_error(), "blocks of 4096"),
          "a block wider than the linears accepted: %s", bq_last_error());
    o.size = 0;
    CHECK(bq_search(dir, ids, 130, fmts, 2, &o, &r2) == BQ_ERR_ARG && !r2, "options without their size accepted");
    free(sens);
    bq_search_result_free(r);
}

int main(void)
{
    test_cost();
    test_knapsack();
    test_pareto();
    test_trial_swap();
    test_search_lib();
    test_trials();
    return test_summary("test_search");
}
