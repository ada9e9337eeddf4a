/* The model as a Hugging Face folder (config.json, tokenizer.json, model.safetensors in
 * float32): the model's tensor list (slots.c) under the LLaMA family's names. */
#include "model.h"
#include "slots.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A slot's uniform name as the LLaMA family's checkpoints spell it. */
static void hf_name(const char *u, char *out, size_t n)
{
    static const char *const part[][2] = {
        {".ln1.", ".input_layernorm."}, {".ln2.", ".post_attention_layernorm."},
        {".q_norm.", ".self_attn.q_norm."}, {".k_norm.", ".self_attn.k_norm."}};
    if (!strncmp(u, "lm_head.", 8)) { snprintf(out, n, "%s", u); return; }
    if (!strncmp(u, "final_norm.", 11)) { snprintf(out, n, "model.norm.%s", u + 11); return; }
    for (size_t i = 0; i < sizeof part / sizeof *part; i++) {
        const char *p = strstr(u, part[i][0]);
        if (p) { snprintf(out, n, "model.%.*s%s%s", (int)(p - u), u, part[i][1], p + strlen(part[i][0])); return; }
    }
    snprintf(out, n, "model.%s", u);
}

bq_status bq_model_hf_writable(const bq_model *m)
{
    if (model_lorc_linear(m)) return bq_fail(BQ_ERR_UNSUPPORTED, "%s has LoRC factors (ptq lorc), which a Hugging Face folder cannot hold", model_lorc_linear(m)->name);
    if (m->rot_down || m->rot_qk)
        return bq_fail(BQ_ERR_UNSUPPORTED, "%s (ptq hadamard%s), which a Hugging Face folder cannot hold: save as .bq",
                       m->rot_down ? "down_proj's input is rotated online" : "each head's Q and K are rotated online", m->rot_down ? "" : "_kv");
    const bq_config *c = &m->c;
    if (c->arch != ARCH_LLAMA && c->arch != ARCH_QWEN2 && c->arch != ARCH_QWEN3)
        return bq_fail(BQ_ERR_UNSUPPORTED, "a Hugging Face folder is written for the LLaMA family only ('%s')", c->model_type);
    if (!m->config_json) return bq_fail(BQ_ERR_UNSUPPORTED, "the model has no config.json to write");
    return BQ_OK;
}

bq_status bq_model_save_hf(const bq_model *cm, const char *dir)
{
    bq_model *m = (bq_model *)cm;  /* model_slots hands out pointers; nothing is written */
    bq_status st = bq_model_hf_writable(m);
    if (st) return st;
    struct stat sb;
    if (!stat(dir, &sb)) return bq_fail(BQ_ERR_IO, "%s exists: remove it or choose another name", dir);
    slot_list sl;
    st = model_slots(m, &sl);
    st_out *ts = st ? NULL : calloc((size_t)sl.n, sizeof *ts);
    char (*names)[160] = st ? NULL : calloc((size_t)sl.n, sizeof *names);
    if (!st && (!ts || !names)) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    size_t n = 0;
    int tied = model_head_tied(m);
    for (int i = 0; i < sl.n && !st; i++) {
        const slot *e = &sl.v[i];
        if (e->p && *e->p) { st = bq_fail(BQ_ERR_UNSUPPORTED, "%s is packed: a Hugging Face folder holds float weights", e->name); break; }
        if (!*e->f || (tied && e->l == &m->head)) continue;  /* absent, or the embedding again */
        hf_name(e->name, names[n], sizeof names[0]);
        ts[n] = (st_out){names[n], *e->f, e->cols ? 2 : 1, {e->rows, e->cols}};
        n++;
    }
    char tmp[4200], path[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", dir, (long)getpid());
    if (!st && mkdir(tmp, 0755)) st = bq_fail(BQ_ERR_IO, "%s: %s", tmp, strerror(errno));
    int made = !st;
    if (!st) { snprintf(path, sizeof path, "%s/model.safetensors", tmp); st = st_write_f32(path, ts, n, NULL); }
    if (!st) { snprintf(path, sizeof path, "%s/config.json", tmp); st = bq_write_file_atomic(path, m->config_json, m->config_len); }
    if (!st && m->tokenizer_json) {
        snprintf(path, sizeof path, "%s/tokenizer.json", tmp);
        st = bq_write_file_atomic(path, m->tokenizer_json, m->tokenizer_len);
    }
    if (!st && rename(tmp, dir)) st = bq_fail(BQ_ERR_IO, "%s: %s", dir, strerror(errno));
    if (st && made) {  /* leave nothing half-written behind */
        static const char *files[] = {"model.safetensors", "config.json", "tokenizer.json"};
        for (int i = 0; i < 3; i++) { snprintf(path, sizeof path, "%s/%s", tmp, files[i]); remove(path); }
        rmdir(tmp);
    }
    free(sl.v);
    free(ts);
    free(names);
    return st;
}
