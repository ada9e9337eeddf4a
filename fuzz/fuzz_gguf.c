/* GGUF files: any bytes either load into a model that runs, or are refused. */
#include "model_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return fuzz_model_file(gguf_parse, d, n); }
