/* config.json for LLaMA/Mistral, Qwen2, Qwen3, OPT and GPT-2, in both the
 * older (rope_theta, torch_dtype) and newer (rope_parameters, dtype) spellings. */
#include "model.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct { cJSON *root; const char *path; bq_status st; } cfg;

/* Integer field: required unless def >= 0; must lie in [lo, hi]. */
static int geti(cfg *c, const char *key, int def, int lo, int hi)
{
    if (c->st) return 0;
    cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, key);
    if (!v || cJSON_IsNull(v)) {
        if (def >= 0) return def;
        c->st = bq_fail(BQ_ERR_PARSE, "%s: missing '%s'", c->path, key);
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi) {
        c->st = bq_fail(BQ_ERR_PARSE, "%s: '%s' must be an integer in [%d, %d]", c->path, key, lo, hi);
        return 0;
    }
    return (int)v->valuedouble;
}

static double getf(cfg *c, cJSON *obj, const char *key, double def)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return def;
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0) || !isfinite(v->valuedouble)) {
        if (!c->st) c->st = bq_fail(BQ_ERR_PARSE, "%s: '%s' must be a positive number", c->path, key);
        return def;
    }
    return v->valuedouble;
}

static int getb(cfg *c, const char *key, int def)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, key);
    if (!v || cJSON_IsNull(v)) return def;
    if (!cJSON_IsBool(v)) {
        if (!c->st) c->st = bq_fail(BQ_ERR_PARSE, "%s: '%s' must be true or false", c->path, key);
        return def;
    }
    return cJSON_IsTrue(v);
}

/* String field: NULL if absent or null; a value of another type is an error. */
static const char *gets(cfg *c, const char *key)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, key);
    if (cJSON_IsString(v)) return v->valuestring;
    if (v && !cJSON_IsNull(v) && !c->st) c->st = bq_fail(BQ_ERR_PARSE, "%s: '%s' must be a string", c->path, key);
    return NULL;
}

/* A setting that changes the model and that blockq does not implement must be
 * absent, null, or the neutral value; anything else is refused by name. */
static void refuse_unless_neutral(cfg *c, cJSON *obj, const char *key, double neutral)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (c->st || !v || cJSON_IsNull(v) || (cJSON_IsNumber(v) && v->valuedouble == neutral)) return;
    c->st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: '%s' is not supported", c->path, key);
}

/* Rotary settings of the LLaMA family: the default rotation only. */
static void rope_settings(cfg *c, bq_config *m)
{
    cJSON *rp = cJSON_GetObjectItemCaseSensitive(c->root, "rope_parameters");
    cJSON *rs = cJSON_GetObjectItemCaseSensitive(c->root, "rope_scaling");
    m->rope_theta = (float)getf(c, c->root, "rope_theta", 10000.0);
    if (rp && !cJSON_IsNull(rp) && !cJSON_IsObject(rp) && !c->st)
        c->st = bq_fail(BQ_ERR_PARSE, "%s: rope_parameters must be an object", c->path);
    if (cJSON_IsObject(rp)) {
        m->rope_theta = (float)getf(c, rp, "rope_theta", m->rope_theta);
        cJSON *t = cJSON_GetObjectItemCaseSensitive(rp, "rope_type");
        if (t && !(cJSON_IsString(t) && !strcmp(t->valuestring, "default")) && !c->st)
            c->st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: rope_type '%s' is not supported (only default)", c->path,
                            cJSON_IsString(t) ? t->valuestring : "?");
        refuse_unless_neutral(c, rp, "partial_rotary_factor", 1.0);
    }
    if (rs && !cJSON_IsNull(rs) && !c->st)
        c->st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: rope_scaling is not supported (only the default rotation)", c->path);
    refuse_unless_neutral(c, c->root, "partial_rotary_factor", 1.0);
}

/* Sliding-window attention: Mistral's window is implemented; Qwen2/3's per-layer
 * windows are refused. LLaMA ignores the key, as transformers does. */
static void window_settings(cfg *c, bq_config *m, const char *mt)
{
    if (!strcmp(mt, "mistral")) {
        m->sliding_window = geti(c, "sliding_window", 0, 1, 1 << 30);
        return;
    }
    if (strcmp(mt, "qwen2") && strcmp(mt, "qwen3")) return;
    if (getb(c, "use_sliding_window", 0) && !c->st)
        c->st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: use_sliding_window=true is not supported for %s", c->path, mt);
    cJSON *lt = cJSON_GetObjectItemCaseSensitive(c->root, "layer_types"), *e;
    if (lt && !cJSON_IsNull(lt) && !cJSON_IsArray(lt) && !c->st)
        c->st = bq_fail(BQ_ERR_PARSE, "%s: layer_types must be a list", c->path);
    if (!cJSON_IsArray(lt)) return;
    cJSON_ArrayForEach(e, lt)
        if (!(cJSON_IsString(e) && !strcmp(e->valuestring, "full_attention")) && !c->st)
            c->st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: layer_types other than full_attention are not supported", c->path);
}

enum { BIG = 1 << 20 };

bq_status config_parse(const char *json, size_t len, const char *path, bq_config *out)
{
    memset(out, 0, sizeof *out);
    cfg c = {cJSON_ParseWithLength(json, len), path, BQ_OK};
    if (!cJSON_IsObject(c.root)) {
        cJSON_Delete(c.root);
        return bq_fail(BQ_ERR_PARSE, "%s: not a JSON object", path);
    }
    if ((c.st = json_unique_keys(c.root, path))) { cJSON_Delete(c.root); return c.st; }
    const char *mt = gets(&c, "model_type");
    if (!mt) { cJSON_Delete(c.root); return c.st ? c.st : bq_fail(BQ_ERR_PARSE, "%s: missing 'model_type'", path); }
    snprintf(out->model_type, sizeof out->model_type, "%s", mt);
    bq_config *m = out;
    if (!strcmp(mt, "llama") || !strcmp(mt, "mistral") || !strcmp(mt, "qwen2") || !strcmp(mt, "qwen3")) {
        m->arch = !strcmp(mt, "qwen2") ? ARCH_QWEN2 : !strcmp(mt, "qwen3") ? ARCH_QWEN3 : ARCH_LLAMA;
        m->hidden = geti(&c, "hidden_size", -1, 1, BIG);
        m->inter = geti(&c, "intermediate_size", -1, 1, BIG);
        m->layers = geti(&c, "num_hidden_layers", -1, 1, 1024);
        m->heads = geti(&c, "num_attention_heads", -1, 1, 4096);
        m->kv_heads = geti(&c, "num_key_value_heads", m->heads, 1, 4096);
        m->head_dim = geti(&c, "head_dim", m->heads ? m->hidden / m->heads : 0, 1, 4096);
        m->vocab = geti(&c, "vocab_size", -1, 1, 1 << 22);
        m->max_pos = geti(&c, "max_position_embeddings", 2048, 1, 1 << 24);
        m->norm_eps = (float)getf(&c, c.root, "rms_norm_eps", 1e-6);
        rope_settings(&c, m);
        window_settings(&c, m, mt);
        int ab = getb(&c, "attention_bias", m->arch == ARCH_QWEN2);
        m->qkv_bias = ab;
        m->o_bias = m->arch == ARCH_QWEN2 ? 0 : ab;
        m->mlp_bias = getb(&c, "mlp_bias", 0);
        m->qk_norm = m->arch == ARCH_QWEN3;
        m->tied = getb(&c, "tie_word_embeddings", 0);
        m->norm = NORM_RMS;
        m->act = ACT_SILU_GATED;
        m->rope = 1;
        m->pre_norm = 1;
        m->final_norm = 1;
        const char *act = gets(&c, "hidden_act");
        if (act && strcmp(act, "silu") && !c.st)
            c.st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: hidden_act '%s' is not supported (silu)", path, act);
        m->embed_dim = m->hidden;
    } else if (!strcmp(mt, "opt")) {
        m->arch = ARCH_OPT;
        m->hidden = geti(&c, "hidden_size", -1, 1, BIG);
        m->inter = geti(&c, "ffn_dim", -1, 1, BIG);
        m->layers = geti(&c, "num_hidden_layers", -1, 1, 1024);
        m->heads = geti(&c, "num_attention_heads", -1, 1, 4096);
        m->kv_heads = m->heads;
        m->head_dim = m->heads ? m->hidden / m->heads : 0;
        m->vocab = geti(&c, "vocab_size", -1, 1, 1 << 22);
        m->max_pos = geti(&c, "max_position_embeddings", -1, 1, 1 << 24);
        m->embed_dim = geti(&c, "word_embed_proj_dim", m->hidden, 1, BIG);
        m->norm_eps = 1e-5f;
        m->pre_norm = getb(&c, "do_layer_norm_before", 1);
        m->final_norm = m->pre_norm && !getb(&c, "_remove_final_layer_norm", 0);
        int bias = getb(&c, "enable_bias", 1);
        m->qkv_bias = m->o_bias = m->mlp_bias = bias;
        m->tied = getb(&c, "tie_word_embeddings", 1);
        m->norm = NORM_LAYER;
        m->pos_offset = 2;
        const char *act = gets(&c, "activation_function");
        if (act && strcmp(act, "relu") && !c.st)
            c.st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: activation_function '%s' is not supported for OPT (relu)", path, act);
        if (!getb(&c, "layer_norm_elementwise_affine", 1) && !c.st)
            c.st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: layer_norm_elementwise_affine=false is not supported", path);
        m->act = ACT_RELU;
    } else if (!strcmp(mt, "gpt2")) {
        m->arch = ARCH_GPT2;
        m->hidden = geti(&c, "n_embd", -1, 1, BIG);
        m->layers = geti(&c, "n_layer", -1, 1, 1024);
        m->heads = geti(&c, "n_head", -1, 1, 4096);
        m->inter = geti(&c, "n_inner", m->hidden > 0 ? 4 * m->hidden : 0, 1, BIG);
        m->kv_heads = m->heads;
        m->head_dim = m->heads ? m->hidden / m->heads : 0;
        m->vocab = geti(&c, "vocab_size", -1, 1, 1 << 22);
        m->max_pos = geti(&c, "n_positions", -1, 1, 1 << 24);
        m->embed_dim = m->hidden;
        m->norm_eps = (float)getf(&c, c.root, "layer_norm_epsilon", 1e-5);
        m->qkv_bias = m->o_bias = m->mlp_bias = 1;
        m->tied = 1;
        m->norm = NORM_LAYER;
        m->act = ACT_GELU_TANH;
        m->pre_norm = 1;
        m->final_norm = 1;
        const char *act = gets(&c, "activation_function");
        if (act && strcmp(act, "gelu_new") && strcmp(act, "gelu_pytorch_tanh") && !c.st)
            c.st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: activation_function '%s' is not supported for GPT-2", path, act);
        if (getb(&c, "scale_attn_by_inverse_layer_idx", 0) && !c.st)
            c.st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: scale_attn_by_inverse_layer_idx is not supported", path);
    } else {
        cJSON_Delete(c.root);  /* mt pointed into it: report the copy */
        return bq_fail(BQ_ERR_UNSUPPORTED, "%s: model_type '%s' is not supported (llama, mistral, qwen2, qwen3, opt, gpt2)",
                       path, out->model_type);
    }
    cJSON_Delete(c.root);
    if (c.st) return c.st;
    /* every derived dimension must be a real one */
    if (m->head_dim < 1)
        return bq_fail(BQ_ERR_PARSE, "%s: hidden size %d and %d heads give a head dimension of %d", path, m->hidden, m->heads,
                       m->head_dim);
    if (m->heads % m->kv_heads)
        return bq_fail(BQ_ERR_PARSE, "%s: %d attention heads are not a multiple of %d key/value heads", path, m->heads,
                       m->kv_heads);
    if (!m->rope && m->hidden % m->heads)
        return bq_fail(BQ_ERR_PARSE, "%s: hidden size %d is not a multiple of %d heads", path, m->hidden, m->heads);
    if (m->rope && m->head_dim % 2) return bq_fail(BQ_ERR_PARSE, "%s: head_dim %d must be even for rotary", path, m->head_dim);
    return BQ_OK;
}
