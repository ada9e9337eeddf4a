/* safetensors header and data block: every accepted tensor must be readable in full. */
#include "model.h"
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    st_set s = {0};
    if (st_parse_buffer(&s, "fuzz", d, n) == BQ_OK) {
        for (size_t i = 0; i < s.n; i++) {
            if (s.t[i].numel > (1u << 20)) continue;
            float *out = malloc((s.t[i].numel ? s.t[i].numel : 1) * 4);
            st_to_f32(&s.t[i], out);
            free(out);
        }
        st_find(&s, "model.embed_tokens.weight");
    }
    st_close(&s);
    return 0;
}
