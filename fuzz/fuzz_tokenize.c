/* Encoding arbitrary bytes with the real tokenizer: valid UTF-8 must round-trip
 * exactly (byte-level BPE is lossless); invalid UTF-8 must be refused. */
#include "blockq.h"
#include <stdlib.h>
#include <string.h>

static bq_tokenizer *tok;

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    if (!tok) {
        const char *p = getenv("BQ_FUZZ_TOKENIZER");
        if (bq_tokenizer_load(p ? p : "models/llama-19m-en/tokenizer.json", &tok)) abort();
    }
    int32_t *ids;
    size_t k;
    if (bq_tokenize(tok, (const char *)d, n, &ids, &k) != BQ_OK) return 0;
    char *s;
    size_t l;
    if (bq_detokenize(tok, ids, k, &s, &l) != BQ_OK) abort();
    if (l != n || memcmp(s, d, n)) abort();
    free(s);
    free(ids);
    return 0;
}
