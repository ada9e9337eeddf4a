/* tokenizer.json: load, then encode and decode a fixed text with whatever loaded. */
#include "model.h"
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    bq_tokenizer *t;
    if (tokenizer_parse((const char *)d, n, "fuzz", &t)) return 0;
    const char *text = "Hello, world! 12 <|endoftext|> caf\xc3\xa9";
    int32_t *ids;
    size_t k;
    if (bq_tokenize(t, text, strlen(text), &ids, &k) == BQ_OK) {
        char *s;
        size_t l;
        if (bq_detokenize(t, ids, k, &s, &l) == BQ_OK) free(s);
        free(ids);
    }
    bq_tokenizer_free(t);
    return 0;
}
