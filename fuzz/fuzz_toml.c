/* The quantisation TOML subset and its rules. */
#include "quant.h"
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    bq_qconfig *q;
    if (bq_qconfig_new(&q)) return 0;
    qconfig_parse(q, (const char *)d, n, "fuzz");
    bq_qconfig_free(q);
    return 0;
}
