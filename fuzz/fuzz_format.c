/* Format-name grammar, then the named format on fuzz-chosen floats:
 * unpack(pack(x)) must equal qdq(x) (the property the tests check, here on any input). */
#include "blockq.h"
#include "format.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bit for bit, NaN as NaN. One exception: two's-complement and asymmetric integer
 * codes have no negative zero, so where fake quantisation keeps a negative input's
 * sign on a zero result (as the references do), the unpacked zero is +0. */
static int same_bits(const bq_format *f, float a, float b)
{
    if (isnan(a)) return isnan(b);
    if (a == 0.0f && b == 0.0f && f->el.kind == EK_INT && !f->el.signmag) return 1;
    return !memcmp(&a, &b, 4);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    if (n < 2) return 0;
    size_t ln = d[0] % 48;
    if (n < 2 + ln) return 0;
    char name[64];
    if (ln == 0) {  /* a named format, so every family is reached without guessing its grammar */
        size_t count = 0;
        while (bq_format_list(count)) count++;
        snprintf(name, sizeof name, "%s", bq_format_list(d[1] % count));
    } else {
        memcpy(name, d + 2, ln);
        name[ln] = 0;
    }
    bq_format *f;
    if (bq_format_parse(name, &f)) return 0;
    size_t nf = (n - 2 - ln) / 4, rows = nf > 1 && (d[0] & 64) ? 2 : 1, cols = nf / rows;
    if (cols == 0) { bq_format_free(f); return 0; }
    float *x = malloc(rows * cols * 4), *q = malloc(rows * cols * 4), *u = malloc(rows * cols * 4);
    memcpy(x, d + 2 + ln, rows * cols * 4);
    bq_qopts o = {(bq_round)(d[0] >> 6 & 3), 1, 1};
    if (bq_qdq(f, x, q, rows, cols, &o) != BQ_OK) abort();
    size_t sz = bq_packed_size(f, rows, cols);
    uint8_t *p = malloc(sz ? sz : 1);
    bq_status st = bq_pack(f, x, rows, cols, &o, p, sz);
    if (st == BQ_OK) {
        if (bq_unpack(f, p, sz, rows, cols, u) != BQ_OK) abort();
        for (size_t i = 0; i < rows * cols; i++)
            if (!same_bits(f, u[i], q[i])) abort();
    } else {  /* refusing is allowed only for a value the codes cannot hold */
        int nonfinite = 0;
        for (size_t i = 0; i < rows * cols; i++) nonfinite |= !isfinite(x[i]);
        if (st != BQ_ERR_NONFINITE || !nonfinite) abort();
    }
    free(p); free(x); free(q); free(u);
    bq_format_free(f);
    return 0;
}
