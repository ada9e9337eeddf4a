/* config.json for every architecture. */
#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    bq_config c;
    config_parse((const char *)d, n, "fuzz", &c);
    return 0;
}
