/* .bq model files: any bytes either load into a model that runs, or are refused. */
#include "slots.h"
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    bq_model *m = NULL;
    if (bqfile_parse("fuzz", d, n, &m) == BQ_OK) {
        int32_t ids[2] = {1, 2};
        float *lg = malloc(2 * (size_t)bq_model_vocab(m) * sizeof *lg);
        if (lg && bq_model_vocab(m) > 2 && bq_model_vocab(m) < 4096) bq_model_logits(m, ids, 2, lg);
        free(lg);
        bq_tokenizer *t = NULL;
        if (bq_tokenizer_from_model(m, &t) == BQ_OK) bq_tokenizer_free(t);
    }
    bq_model_free(m);
    return 0;
}
