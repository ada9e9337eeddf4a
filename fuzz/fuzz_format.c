/* Format-name grammar, then the named format on fuzz-chosen floats:
 * unpack(pack(x)) must equal qdq(x) (the property the tests check, here on any input). */
#include "blockq.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    if (n < 1) return 0;
    size_t ln = d[0] % 48;
    if (n < 1 + ln) return 0;
    char name[64];
    memcpy(name, d + 1, ln);
    name[ln] = 0;
    bq_format *f;
    if (bq_format_parse(name, &f)) return 0;
    size_t nf = (n - 1 - ln) / 4, rows = nf > 1 && (d[0] & 64) ? 2 : 1, cols = nf / rows;
    if (cols == 0) { bq_format_free(f); return 0; }
    float *x = malloc(rows * cols * 4), *q = malloc(rows * cols * 4), *u = malloc(rows * cols * 4);
    memcpy(x, d + 1 + ln, rows * cols * 4);
    bq_qopts o = {(bq_round)(d[0] >> 6 & 3), 1, 1};
    bq_qdq(f, x, q, rows, cols, &o);
    size_t sz = bq_packed_size(f, rows, cols);
    uint8_t *p = malloc(sz ? sz : 1);
    if (bq_pack(f, x, rows, cols, &o, p, sz) == BQ_OK) {
        if (bq_unpack(f, p, sz, rows, cols, u) != BQ_OK) abort();
        for (size_t i = 0; i < rows * cols; i++)
            if (!(u[i] == q[i] || (isnan(u[i]) && isnan(q[i])))) abort();
    }
    free(p); free(x); free(q); free(u);
    bq_format_free(f);
    return 0;
}
