/* Mixed-precision assignment: an exact multiple-choice knapsack over measured
 * per-layer sensitivities (HAWQ-style), and a seeded random sampler; the Pareto
 * front of (calibration loss, bits) over everything evaluated. */
#include "core.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* choose[i] in [0, nf): minimise sum sens[i*nf + choose[i]] subject to
 * sum params[i] * bits[choose[i]] <= budget * sum params. Exact on costs
 * rounded up to `grid` buckets of the budget (so the result never exceeds it). */
bq_status bq_knapsack(int n, int nf, const double *sens, const size_t *params, const double *bits, double budget,
                      int grid, int *choose, double *total_sens)
{
    double total = 0, cheapest = INFINITY;
    for (int i = 0; i < n; i++) total += (double)params[i];
    for (int f = 0; f < nf; f++) cheapest = fmin(cheapest, bits[f]);
    if (budget < cheapest)
        return bq_fail(BQ_ERR_ARG, "budget %.3f bits is below the cheapest format (%.3f bits)", budget, cheapest);
    if (grid < 16 || grid > (1 << 20)) return bq_fail(BQ_ERR_ARG, "bad knapsack grid %d", grid);
    double unit = budget * total / grid;
    size_t W = (size_t)grid + 1;
    double *dp = malloc(W * sizeof *dp), *nd = malloc(W * sizeof *nd);
    int *pick = malloc((size_t)n * W * sizeof *pick);
    if (!dp || !nd || !pick) { free(dp); free(nd); free(pick); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    for (size_t w = 0; w < W; w++) dp[w] = w == 0 ? 0 : INFINITY;
    for (int i = 0; i < n; i++) {
        for (size_t w = 0; w < W; w++) nd[w] = INFINITY;
        for (int f = 0; f < nf; f++) {
            size_t c = (size_t)ceil((double)params[i] * bits[f] / unit - 1e-9);
            for (size_t w = c; w < W; w++)
                if (dp[w - c] + sens[(size_t)i * nf + f] < nd[w]) {
                    nd[w] = dp[w - c] + sens[(size_t)i * nf + f];
                    pick[(size_t)i * W + w] = f;
                }
        }
        memcpy(dp, nd, W * sizeof *dp);
    }
    size_t best = 0;
    for (size_t w = 0; w < W; w++)
        if (dp[w] < dp[best]) best = w;
    bq_status st = BQ_OK;
    if (!isfinite(dp[best])) st = bq_fail(BQ_ERR_ARG, "no assignment fits a budget of %.3f bits", budget);
    else {
        if (total_sens) *total_sens = dp[best];
        for (int i = n - 1; i >= 0; i--) {  /* walk back */
            int f = pick[(size_t)i * W + best];
            choose[i] = f;
            best -= (size_t)ceil((double)params[i] * bits[f] / unit - 1e-9);
        }
    }
    free(dp);
    free(nd);
    free(pick);
    return st;
}

/* Indices of the points not dominated in (loss, bits, -density): lower loss,
 * fewer bits, higher density are better. */
int bq_pareto(int n, const double *loss, const double *bits, const double *density, int *front)
{
    int k = 0;
    for (int i = 0; i < n; i++) {
        int dominated = 0;
        for (int j = 0; j < n && !dominated; j++) {
            if (j == i) continue;
            int no_worse = loss[j] <= loss[i] && bits[j] <= bits[i] && density[j] >= density[i];
            int better = loss[j] < loss[i] || bits[j] < bits[i] || density[j] > density[i];
            dominated = no_worse && better;
        }
        if (!dominated) front[k++] = i;
    }
    return k;
}
