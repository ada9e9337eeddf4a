/* The quantisation TOML subset and its rules. */
#include "quant.h"
#include <stdio.h>
#include <stdlib.h>

static volatile int sink;

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    bq_qconfig *q;
    if (bq_qconfig_new(&q)) return 0;
    if (qconfig_parse(q, (const char *)d, n, "fuzz") == BQ_OK) {
        /* every rule's glob against the names of a 32-layer model, as quantisation would */
        static const char *const roles[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
        char name[96];
        int hits = 0;
        for (int r = 0; r < q->nrules; r++)
            for (int l = 0; l < 32; l++)
                for (int k = 0; k < 7; k++) {
                    snprintf(name, sizeof name, "layers.%d.%s", l, roles[k]);
                    hits += glob_match(q->rules[r].pattern, name);
                }
        sink = hits;  /* keep the matching from being optimised away */
    }
    bq_qconfig_free(q);
    return 0;
}
