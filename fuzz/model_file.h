/* Shared by the model-file fuzzers: whatever a parser accepts must run (a
 * forward pass of two tokens, the tokenizer) without a crash. */
#include "slots.h"
#include <stdlib.h>

static int fuzz_model_file(model_parser parse, const uint8_t *d, size_t n)
{
    bq_model *m = NULL;
    if (parse("fuzz", d, n, &m) == BQ_OK) {
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
