/* MSE clipping (`--ptq clip`): for every group that shares a scale (a block, an
 * int group or a row), the range that minimises the group's squared error
 * instead of its largest magnitude; with calibration (imp: the mean square of
 * each input channel), the error of each weight counts as much as its input's
 * energy, so the choice minimises the layer's expected output error (the
 * diagonal of the Hessian, as GPTQ and llama.cpp's importance matrix use it).
 * Generic over formats: each candidate shrink
 * factor s clamps the group to [-s amax, s amax] and quantises the clamped
 * values with the format itself, so the scale the format derives from the
 * clamped maximum is the clipped scale; per group the best candidate wins.
 * The result is the clamped weights (each group at its best candidate): the
 * format quantises (or packs) them as usual, deriving the clipped scales. The
 * group holding the tensor's largest magnitude is never clamped, so a
 * per-tensor scale (NVFP4's) is the same in every candidate and in the end. */
#include "quant.h"
#include "format.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { NSHRINK = 21 };  /* 1.00, 0.975, ..., 0.50 */

bq_status ptq_clip(const bq_format *f, float *w, int rows, int cols, const double *imp, const bq_qopts *o)
{
    if (format_scale_place(f) == SCALE_NONE) return BQ_OK;  /* no scale to choose */
    size_t n = (size_t)rows * cols, g = pack_group_len(f, (size_t)cols);
    size_t ng = (size_t)rows * ((cols + g - 1) / g), per_row = (cols + g - 1) / g;
    float *tmp = malloc(n * sizeof *tmp), *q = malloc(n * sizeof *q), *best = malloc(n * sizeof *best);
    double *err = malloc(ng * sizeof *err);
    float *amax = malloc(ng * sizeof *amax);
    if (!tmp || !q || !best || !err || !amax) {
        free(tmp); free(q); free(best); free(err); free(amax);
        return bq_fail(BQ_ERR_NOMEM, "out of memory for clipping");
    }
    size_t keep = 0;  /* the group of the tensor's largest magnitude */
    float top = -1.0f;
    for (size_t k = 0; k < ng; k++) {
        size_t r = k / per_row, c0 = k % per_row * g, c1 = c0 + g < (size_t)cols ? c0 + g : (size_t)cols;
        float a = 0.0f;
        for (size_t c = c0; c < c1; c++) a = fmaxf(a, fabsf(w[r * cols + c]));
        amax[k] = a;
        if (a > top) { top = a; keep = k; }
        err[k] = INFINITY;
    }
    bq_status st = BQ_OK;
    for (int s = 0; s < NSHRINK && !st; s++) {
        float shrink = 1.0f - 0.025f * (float)s;
        for (size_t k = 0; k < ng; k++) {
            size_t r = k / per_row, c0 = k % per_row * g, c1 = c0 + g < (size_t)cols ? c0 + g : (size_t)cols;
            float lim = k == keep ? INFINITY : shrink * amax[k];
            for (size_t c = c0; c < c1; c++) {
                float x = w[r * cols + c];
                tmp[r * cols + c] = x > lim ? lim : x < -lim ? -lim : x;
            }
        }
        if ((st = bq_qdq(f, tmp, q, (size_t)rows, (size_t)cols, o))) break;
        for (size_t k = 0; k < ng; k++) {
            size_t r = k / per_row, c0 = k % per_row * g, c1 = c0 + g < (size_t)cols ? c0 + g : (size_t)cols;
            double e = 0;
            for (size_t c = c0; c < c1; c++) {
                double d = (double)q[r * cols + c] - w[r * cols + c];
                e += d * d * (imp ? imp[c] : 1.0);
            }
            if (s == 0 || e < err[k]) {  /* strictly better: ties keep the larger range (RTN's at s = 0) */
                err[k] = e;
                memcpy(best + r * cols + c0, tmp + r * cols + c0, (c1 - c0) * sizeof *best);
            }
        }
    }
    if (!st) memcpy(w, best, n * sizeof *w);
    free(tmp); free(q); free(best); free(err); free(amax);
    return st;
}
