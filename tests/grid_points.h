/* An element grid's rounding boundaries, for the tests that aim inputs at them
 * (test_formats: grid_by_recip; test_cuda: fake quantisation's fourth input kind). */
#ifndef BQ_TEST_GRID_POINTS_H
#define BQ_TEST_GRID_POINTS_H
#include <float.h>
#include <math.h>
#include "format.h"

/* The grid's non-negative values and the midpoints between neighbours (at most 512),
 * in code order, and its largest value; for grids of more than 8 bits the halves
 * k + 1/2 up to 127. */
static int grid_boundaries(const bq_format *f, float *b, float *gmax)
{
    float g[256];
    int ng = 0, nb = 0;
    for (uint32_t code = 0; f->el.bits <= 8 && code < (1u << f->el.bits); code++) {
        float v = pack_elem_value(f, code);
        if (v >= 0.0f && v <= FLT_MAX) g[ng++] = v;
    }
    *gmax = ng ? 0.0f : 127.0f;
    for (int i = 0; i < ng; i++) {
        float nx = INFINITY;
        for (int k = 0; k < ng; k++) nx = g[k] > g[i] && g[k] < nx ? g[k] : nx;
        b[nb++] = g[i];
        if (nx < INFINITY) b[nb++] = (g[i] + nx) / 2.0f;
        *gmax = g[i] > *gmax ? g[i] : *gmax;
    }
    for (int k = 0; !ng && k < 127; k++) b[nb++] = (float)k + 0.5f;
    return nb;
}
#endif
