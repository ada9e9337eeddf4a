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
    for (int pass = 0; pass < 2; pass++) {
        /* a fixed text, then the input itself: it holds every added token and long words */
        const char *s0 = pass ? (const char *)d : text;
        size_t n0 = pass ? n : strlen(text);
        if (bq_tokenize(t, s0, n0, &ids, &k) == BQ_OK) {
            char *s;
            size_t l;
            if (bq_detokenize(t, ids, k, &s, &l) == BQ_OK) free(s);
            free(ids);
        }
    }
    bq_tokenizer_free(t);
    return 0;
}
