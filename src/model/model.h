/* Checkpoints: safetensors tensors, config.json, the in-memory model. */
#ifndef BQ_MODEL_H
#define BQ_MODEL_H
#include "core.h"
#include "strmap.h"
#include <stdint.h>

/* ---- safetensors ---- */
typedef enum { DT_F32, DT_F16, DT_BF16 } st_dtype;
typedef struct {
    char *name;
    st_dtype dt;
    int ndim;
    int64_t shape[4];
    size_t numel, nbytes;
    const uint8_t *data;
} st_tensor;
typedef struct {
    st_tensor *t;
    size_t n, cap;
    strmap index;  /* name -> position in t: lookups in O(1), a repeated name refused */
    void *maps[64];
    size_t map_sizes[64], nmaps;
} st_set;

bq_status st_open_dir(st_set *s, const char *dir);
bq_status st_open_file(st_set *s, const char *path);
bq_status st_parse_buffer(st_set *s, const char *path, const void *buf, size_t size);
bq_status st_parse_header(st_set *s, const char *path, const char *hdr, size_t hlen, const uint8_t *data,
                          size_t data_size);
const st_tensor *st_find(const st_set *s, const char *name);
void st_to_f32(const st_tensor *t, float *out);
void st_close(st_set *s);
/* Write float32 tensors (1-D or 2-D) as one safetensors file, atomically; meta: NULL
 * or key, value, ..., NULL strings for "__metadata__". */
typedef struct { const char *name; const float *data; int ndim; int64_t shape[2]; } st_out;
bq_status st_write_f32(const char *path, const st_out *t, size_t n, const char *const *meta);

/* ---- architecture ---- */
typedef enum { ARCH_LLAMA, ARCH_QWEN2, ARCH_QWEN3, ARCH_OPT, ARCH_GPT2 } arch_id;
typedef enum { NORM_RMS, NORM_LAYER } norm_kind;
typedef enum { ACT_SILU_GATED, ACT_RELU, ACT_GELU_TANH } act_kind;

typedef struct {
    arch_id arch;
    char model_type[32];
    int hidden, inter, layers, heads, kv_heads, head_dim, vocab, max_pos;
    int embed_dim;       /* OPT word_embed_proj_dim (== hidden unless project_in/out) */
    float norm_eps, rope_theta;
    norm_kind norm;
    act_kind act;
    int rope;            /* rotary (LLaMA family) vs learned positions */
    int pos_offset;      /* OPT: 2 */
    int pre_norm;        /* 0: OPT post-LayerNorm */
    int qkv_bias, o_bias, mlp_bias, qk_norm, tied, final_norm;
    int sliding_window;  /* Mistral: each query sees its last this many keys (0: all) */
} bq_config;

bq_status config_parse(const char *json, size_t len, const char *path, bq_config *c);

/* tokenizer.json already in memory (tokenizer.c): validated as Hugging Face's
 * loader would, so writers take the tokenizer from here, never from raw JSON. */
bq_status tokenizer_parse(const char *json, size_t len, const char *path, bq_tokenizer **out);
int tokenizer_size(const bq_tokenizer *t);  /* 1 + the largest id */
/* The token of an id (byte-level form, or an added token's content); *kind: 0
 * no such id (NULL), 1 vocabulary, 2 added, 3 added and special. */
const char *tokenizer_token(const bq_tokenizer *t, int id, int *kind);
int tokenizer_nmerges(const bq_tokenizer *t);
void tokenizer_merge(const bq_tokenizer *t, int rank, const char **a, const char **b);
const char *tokenizer_regex(const bq_tokenizer *t);  /* NULL: GPT-2's (ByteLevel) */
const char *tokenizer_vocab_string(const bq_tokenizer *t, int id);  /* NULL if the vocabulary lacks the id */

/* Refuse a JSON document in which an object repeats a key (json.c). */
typedef struct cJSON cJSON;
bq_status json_unique_keys(const cJSON *root, const char *path);

/* A linear layer y = x W^T + b; W is [out, in] row-major. */
/* A linear layer y = q(x) W^T + b; W is [out, in] row-major (already fake-quantised
 * when a weight format applies); aq quantises the input activation (NULL: float). */
typedef struct pmat pmat;
typedef struct linear {
    float *w, *b;
    pmat *pw;          /* packed weight (src/kernels/pmat.h); then w is NULL */
    int in, out;
    char name[96];
    bq_format *aq;
    int lmul;          /* 0: exact products; else L-Mul with offset 2^-lmul (src/kernels/lmul.h) */
    float *lr_a, *lr_b;  /* LoRC (src/quant/lorc.c): y += (q(x) lr_b^T) lr_a^T, [out][r] and [r][in] */
    int lr_rank;         /* 0: none */
} linear;
/* A linear of m with LoRC factors (NULL if none): what .bq files hold (version 2)
 * and GGUF and Hugging Face folders cannot. */
const linear *model_lorc_linear(const struct bq_model *m);
/* The model's i-th layer linear in bq_model_linear_name's order (NULL past the last). */
linear *model_nth_linear(const struct bq_model *m, int i);
#define LINEAR_PRESENT(l) ((l)->w || (l)->pw)
typedef struct { float *w, *b; } normp;

typedef struct {
    normp ln1, ln2, q_norm, k_norm;
    linear q, k, v, o, gate, up, down;
} layer_w;

/* An online rotation of a linear's input, whose inverse is folded into the rows of
 * that linear's weight (--ptq hadamard, src/quant/rotate.c: QuaRot's online Hadamard
 * before down_proj): x -> (x .* sign) M, M = (B kron H_p) / sqrt(p) orthogonal,
 * n = p * m with element i = c * m + j: B (m x m, orthogonal) mixes the j of each
 * chunk c, then the Walsh-Hadamard transform H_p mixes the chunks. */
typedef struct bq_rot {
    int n, p, m;
    float *B;     /* [m][m] row-major (NULL when m == 1) */
    float *sign;  /* [n], each +1 or -1 */
} bq_rot;
/* rows rows of n floats in place; tmp holds m floats. */
void model_rot_rows(const bq_rot *r, float *x, size_t rows, float *tmp);
/* Rows [r0, r1) of x through r, for bq_parallel_for / bq_pool_for (oom set if its
 * scratch cannot be had). */
typedef struct { const bq_rot *r; float *x; int oom; } rot_job;
void model_rot_range(void *job, size_t r0, size_t r1);
void model_rot_free(bq_rot *r);

struct bq_model {
    bq_config c;
    float *tok_emb;   /* [vocab, embed_dim] */
    pmat *emb_p;      /* the embedding packed (then tok_emb is NULL; a tied head shares it) */
    float *pos_emb;   /* [max_pos + offset, hidden] or NULL */
    normp final_ln;
    linear head, proj_in, proj_out;
    layer_w *L;
    char dir[4096];
    bq_format *attn_q;  /* operands of Q.K^T and P.V (NULL: float) */
    bq_format *kv_q;    /* the stored K/V cache */
    bq_rot *rot_down;   /* down_proj's input rotated online (NULL: none) */
    bq_rot *rot_qk;     /* each head's Q and K rotated online after RoPE (--ptq hadamard_kv; NULL: none) */
    bq_qopts qopts;     /* rounding for activations */
    char nonfinite[256]; /* first weight holding NaN/Inf ("" if none) */
    char *config_json;   /* the checkpoint's config.json and tokenizer.json, kept for */
    char *tokenizer_json; /* saving (.bq, GGUF) and bq_model_tokenizer; NULL if absent */
    size_t config_len, tokenizer_len;
    /* the checkpoint's mapped shards, where held 16-bit matrices are views into them
     * (pmat_view16): unmapped with the model */
    void *maps[64];
    size_t map_sizes[64], nmaps;
};

/* Record the first weight holding NaN/Inf (model.c). */
void model_scan(bq_model *m);

#endif
