/* blockq — block-based sub-8-bit quantisation of LLMs.
 *
 * One public header. Conventions:
 *  - every fallible call returns a bq_status; BQ_OK is 0. The message of the
 *    last failure on this thread is bq_last_error().
 *  - handles are opaque; a function named *_new / *_parse / *_open hands you
 *    ownership, release it with the matching *_free.
 *  - tensors are row-major float32 [rows, cols]; blocks run along each row.
 */
#ifndef BLOCKQ_H
#define BLOCKQ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Only what this header declares is exported from libblockq.so: the library is
 * built with hidden visibility and every declaration here carries BQ_API. */
#if defined(__GNUC__)
#define BQ_API __attribute__((visibility("default")))
#else
#define BQ_API
#endif

#define BQ_VERSION_MAJOR 0
#define BQ_VERSION_MINOR 2
#define BQ_VERSION_PATCH 0
/* The library's version, "MAJOR.MINOR.PATCH"; compare with the BQ_VERSION_* this
 * header was compiled against to detect a mismatched libblockq.so. */
BQ_API const char *bq_version(void);
BQ_API int bq_version_number(void);  /* MAJOR * 10000 + MINOR * 100 + PATCH */

typedef enum {
    BQ_OK = 0,
    BQ_ERR_ARG,        /* a caller passed an invalid argument */
    BQ_ERR_FORMAT,     /* unknown or malformed format name */
    BQ_ERR_SHAPE,      /* shape disagrees with data or format */
    BQ_ERR_IO,         /* reading or writing a file failed */
    BQ_ERR_PARSE,      /* a file's contents are malformed */
    BQ_ERR_NOMEM,      /* allocation failed */
    BQ_ERR_NONFINITE,  /* a NaN/Inf where the operation cannot represent it */
    BQ_ERR_UNSUPPORTED /* valid request this build cannot do */
} bq_status;

/* Message of the last error on this thread ("" if none). */
BQ_API const char *bq_last_error(void);
BQ_API const char *bq_status_name(bq_status s);

/* ---- files -------------------------------------------------------------- */

/* Read a whole file; the caller frees *data with free(). */
BQ_API bq_status bq_read_file(const char *path, void **data, size_t *size);
/* Write to PATH.tmp.PID in the same folder, fsync, rename into place. */
BQ_API bq_status bq_write_file_atomic(const char *path, const void *data, size_t size);

/* ---- number formats ---------------------------------------------------- */

typedef struct bq_format bq_format;

typedef enum { BQ_ROUND_RNE = 0, BQ_ROUND_AWAY, BQ_ROUND_ZERO, BQ_ROUND_STOCHASTIC } bq_round;

typedef struct {
    bq_round round;
    uint64_t seed;    /* stochastic rounding: same seed, same bits */
    int threads;      /* 0 = one per core; results never depend on it */
} bq_qopts;

/* Facts about a format, derived from its definition. */
typedef struct {
    const char *name;         /* canonical name */
    const char *family;       /* "minifloat", "int", "fixed", "log", "mx", "nvfp4", "bfp", "bm", "bl", "scaled", "fp32" */
    double bits_per_element;  /* including amortised scales (per-row/tensor scales count as 0) */
    int elem_bits;            /* bits of one element code */
    int scale_bits;           /* bits of one shared scale (0 if none) */
    int block;                /* elements sharing a scale (0: none, -1: per row, -2: per tensor) */
    double max_normal;        /* largest finite magnitude the format can produce */
    double min_normal;        /* smallest normal magnitude (incl. scale range) */
    double min_subnormal;     /* smallest non-zero magnitude (incl. scale range) */
    double range_binades;     /* log2(max_normal / min_subnormal) over all scales */
    double block_binades;     /* log2(max / smallest non-zero) inside one block/scale */
} bq_format_info;

/* Parse a format name such as "mxfp4", "bfp6_b16", "fp8_e4m3:sat", "int4_g128",
 * "e2m1_b16_se4m3". The grammar is in docs/formats.md. */
BQ_API bq_status bq_format_parse(const char *name, bq_format **out);
BQ_API void bq_format_free(bq_format *fmt);
BQ_API bq_status bq_format_get_info(const bq_format *fmt, bq_format_info *info);
BQ_API const char *bq_format_canonical(const bq_format *fmt);

/* Named formats, for listing: returns NULL past the end. */
BQ_API const char *bq_format_list(size_t i);
/* One line describing the accepted format-name forms (for error messages). */
BQ_API const char *bq_format_grammar(void);

/* Fake quantisation: in -> format -> float32. in and out may alias. */
BQ_API bq_status bq_qdq(const bq_format *fmt, const float *in, float *out,
                 size_t rows, size_t cols, const bq_qopts *opts);

/* Exact packed size in bytes for a [rows, cols] tensor (each row starts on a
 * byte boundary; a per-tensor scale, if any, comes first). */
BQ_API size_t bq_packed_size(const bq_format *fmt, size_t rows, size_t cols);
BQ_API bq_status bq_pack(const bq_format *fmt, const float *in, size_t rows, size_t cols,
                  const bq_qopts *opts, uint8_t *out, size_t out_size);
BQ_API bq_status bq_unpack(const bq_format *fmt, const uint8_t *in, size_t in_size,
                    size_t rows, size_t cols, float *out);

/* Fake quantisation of CUDA device memory (d_in, d_out on the current device; they
 * may alias): the same bits as bq_qdq, returning once the result is written.
 * BQ_ERR_UNSUPPORTED where the build has no CUDA or there is no device. */
BQ_API bq_status bq_qdq_device(const bq_format *fmt, const float *d_in, float *d_out, size_t rows, size_t cols,
                               const bq_qopts *opts);
/* Usable CUDA devices (0 without CUDA built in, a driver or a GPU; `why`, may be
 * NULL, then gets the reason). */
BQ_API int bq_device_count(char *why, size_t why_len);

/* Quantisation error of approx against ref. */
typedef struct { double sqnr_db, max_abs_err, rmse; size_t n_nonfinite; } bq_error_stats;
BQ_API void bq_error_measure(const float *ref, const float *approx, size_t n, bq_error_stats *st);

/* ---- models and the engine --------------------------------------------- */

typedef struct bq_model bq_model;   /* weights + config, read-only once loaded */
typedef struct bq_ctx bq_ctx;       /* a KV cache and scratch for one sequence */

/* Load a Hugging Face model folder (config.json + safetensors, sharded or not),
 * a packed .bq file (docs/bq-file.md) or a GGUF v3 file. */
BQ_API bq_status bq_model_load(const char *path, bq_model **out);
/* How a checkpoint's bf16/fp16 matrices are held on the CPU: widened to float32
 * (fastest products), or kept in their 16 bits as packed weights (resident memory
 * about the file's size; products widen a panel at a time). Held matrices of a
 * folder's safetensors are views of the mapped file, not copies (the model keeps the
 * mapping; the file must not change while the model lives); their NaN/Inf are found
 * at load as float32 ones are. AUTO keeps them when float32 would take more than half
 * of physical memory. Quantising held weights decodes them first (exactly). */
typedef enum { BQ_HOLD_AUTO = 0, BQ_HOLD_F32, BQ_HOLD_NATIVE } bq_hold;
typedef struct {
    size_t size;   /* sizeof(bq_load_opts): fields may be added at the end */
    bq_hold hold;
} bq_load_opts;
BQ_API bq_status bq_model_load_ex(const char *path, const bq_load_opts *o, bq_model **out);
/* Write the model as .bq (weights packed where bq_model_pack packed them),
 * atomically: a temporary name, then rename. */
BQ_API bq_status bq_model_save(const bq_model *m, const char *path);
/* Write GGUF v3: packed weights whose format has an exact GGUF type (MXFP4,
 * Q8_0 = int8_b32_sfp16, Q4_0 = int4_b32_sfp16), float tensors as F32/BF16. */
BQ_API bq_status bq_model_save_gguf(const bq_model *m, const char *path);
BQ_API void bq_model_free(bq_model *m);
BQ_API int bq_model_vocab(const bq_model *m);
/* BQ_ERR_NONFINITE naming the first weight that holds NaN/Inf (checked at load). */
BQ_API bq_status bq_model_check_finite(const bq_model *m);
/* Logits [n, vocab] for ids[0..n) from an empty cache. */
BQ_API bq_status bq_model_logits(const bq_model *m, const int32_t *ids, int n, float *logits);

BQ_API bq_status bq_ctx_new(const bq_model *m, int max_tokens, bq_ctx **out);
/* Where a context runs and on how many threads. On a CUDA device the context
 * holds the model's weights on the device (uploaded once, at creation), the KV
 * cache and the activations; the same forward pass runs there (src/engine). */
typedef struct {
    size_t size;   /* sizeof(bq_ctx_opts) */
    int device;    /* 0: CPU; 1: the first CUDA device (BQ_ERR_UNSUPPORTED if there is none) */
    int threads;   /* CPU worker threads (0: bq_set_threads's default, else all cores); results do not depend on it */
    int eager;     /* CUDA: 1 launches every kernel of each one-token step instead of replaying
                      the first step's recording (a CUDA graph); the same bits either way */
    int stages;    /* pipeline stages (0 or 1: one): the layers split over this many backends by
                      their weights' memory, the first also holding the embedding, the last the
                      head. CUDA: consecutive stages share a device, spread over all visible
                      ones (a model larger than one GPU); CPU: the threads shared out. The same
                      bits as one stage; bq_score_windows keeps every stage busy */
} bq_ctx_opts;
BQ_API bq_status bq_ctx_new_ex(const bq_model *m, int max_tokens, const bq_ctx_opts *o, bq_ctx **out);
#define BQ_MAX_STAGES 64
typedef struct {
    int first_layer, end_layer;  /* the layers [first_layer, end_layer) */
    int device;                  /* CUDA ordinal (-1: the CPU) */
    size_t device_bytes;         /* device memory it holds (0 on the CPU) */
} bq_stage_info;
/* The split a context with `stages` stages makes: stage s holds the layers
 * [first_layer[s], first_layer[s + 1]) (first_layer has stages + 1 entries). */
BQ_API bq_status bq_model_stage_plan(const bq_model *m, int stages, int *first_layer);
BQ_API int bq_ctx_stages(const bq_ctx *c);
BQ_API bq_status bq_ctx_stage(const bq_ctx *c, int stage, bq_stage_info *out);
/* "cpu" or "cuda" */
BQ_API const char *bq_ctx_device(const bq_ctx *c);
BQ_API void bq_ctx_free(bq_ctx *c);
BQ_API void bq_ctx_reset(bq_ctx *c);
/* Forget the tokens from position pos on (a shared prefix stays cached). */
BQ_API void bq_ctx_truncate(bq_ctx *c, int pos);
BQ_API int bq_ctx_pos(const bq_ctx *c);
/* Append n tokens; logits gets [n, vocab] rows if all, else the last row only. */
BQ_API bq_status bq_forward(bq_ctx *c, const int32_t *ids, int n, float *logits, int all);
/* Check activations for NaN/Inf after every layer (default on): bq_forward then
 * fails with BQ_ERR_NONFINITE naming the layer and the tensor. */
BQ_API void bq_ctx_set_check(bq_ctx *c, int on);
/* Append n >= 2 tokens; lp[t] = log p(ids[t + 1] | ids[..t]) for t < n - 1 (the
 * logits stay where they were computed: perplexity on a GPU moves no logits). */
BQ_API bq_status bq_forward_logprobs(bq_ctx *c, const int32_t *ids, int n, double *lp);
/* Score count windows of n tokens, each from an empty cache: on_window(arg, i, lp)
 * gets window i's log-probabilities as bq_forward_logprobs computes them, in window
 * order; a non-zero status from it stops the run and is returned. With pipeline
 * stages, the windows stream through them (stage s on window i while stage s + 1
 * is on window i - 1), on_window then called from the last stage's thread. */
typedef bq_status (*bq_window_fn)(void *arg, size_t i, const double *lp);
BQ_API bq_status bq_score_windows(bq_ctx *c, const int32_t *const *wins, size_t count, int n, bq_window_fn on_window,
                                  void *arg);
/* The default thread count of contexts made without one (0 = all cores). */
BQ_API void bq_set_threads(int n);

/* ---- quantised inference ---------------------------------------------- */

/* Which format each role of each layer takes: rules by glob pattern over the
 * uniform layer names (docs/quantisation.md); later rules win. */
typedef struct bq_qconfig bq_qconfig;
BQ_API bq_status bq_qconfig_new(bq_qconfig **out);
BQ_API void bq_qconfig_free(bq_qconfig *q);
/* role: "wq" (block linear weights), "aq" (their inputs), "attn" (Q.K^T and P.V
 * operands), "kv" (stored K/V), "head" (LM head weight and input), "emb" (embedding). */
BQ_API bq_status bq_qconfig_set(bq_qconfig *q, const char *role, const char *format);
BQ_API void bq_qconfig_set_round(bq_qconfig *q, bq_round r, uint64_t seed);
/* One rule: tensors matching the glob get weight format w and/or input format a (NULL or "": unchanged). */
BQ_API bq_status bq_qconfig_add_rule(bq_qconfig *q, const char *pattern, const char *w, const char *a);
/* Add the rules of a TOML file (after those already set). */
BQ_API bq_status bq_qconfig_load(bq_qconfig *q, const char *toml_path);
/* Fake-quantise the model's weights in place and arm activation quantisers.
 * strict: a pattern that matches no tensor is an error, not a warning. */
BQ_API bq_status bq_model_quantize(bq_model *m, const bq_qconfig *q, int strict);
/* Calibration: run the (float) model m over the first `chunks` windows of ctx
 * tokens of ids (BQ_ERR_ARG if ids holds fewer) and keep, per linear, the mean square of each input channel;
 * quantising a model of the same shape with this config then weighs each
 * weight's error by its input's energy (--ptq clip). Never the test text. */
BQ_API bq_status bq_qconfig_calibrate(bq_qconfig *q, const bq_model *m, const int32_t *ids, size_t n, int ctx, int chunks);
/* Where calibration runs the float model (as bq_ctx_opts.device: 0 the CPU, the
 * default; 1 the first CUDA device, where the sums and Gram matrices are also
 * taken). Either gives the same statistics up to the two backends' float32
 * rounding of the activations. */
BQ_API void bq_qconfig_set_device(bq_qconfig *q, int device);
/* 1 when the config's post-training algorithms use calibration statistics (clip,
 * gptq, awq, smoothquant; however they were set: --ptq or a TOML's ptq key), 0 when
 * none does (rotate, lorc, none). */
BQ_API int bq_qconfig_needs_calibration(const bq_qconfig *q);
/* Where a config's warnings and notes go (a pattern that matches no tensor, without strict;
 * the alphas smoothquant chose):
 * fn(arg, message); the default (fn NULL) prints them on standard error. */
BQ_API void bq_qconfig_set_warn(bq_qconfig *q, void (*fn)(void *arg, const char *msg), void *arg);
/* The same, with weights stored packed (true size in memory; matmuls compute on the
 * packed codes). Activation, attention and KV formats act as in bq_model_quantize. */
BQ_API bq_status bq_model_pack(bq_model *m, const bq_qconfig *q, int strict);

/* ---- hardware cost model (docs/cost-model.md) ---------------------------- */

typedef struct {
    double w_bits, a_bits;      /* bits per element, shared scales included */
    double mac_area;            /* one W x A multiply-accumulate, full-adder equivalents */
    double fp32_mac_area;       /* the same for float32 x float32 */
    double arith_density;       /* fp32_mac_area / mac_area */
    double mem_density;         /* 32 / w_bits */
    double lmul_mac_area;       /* the MAC with L-Mul's adder for the significand product (0: undefined) */
    double lmul_arith_density;  /* fp32_mac_area (exact) / lmul_mac_area */
} bq_cost;
BQ_API bq_status bq_cost_pair(const bq_format *w, const bq_format *a, bq_cost *out);

/* The model's quantisable units: the linear layers inside the blocks, in order. */
BQ_API int bq_model_n_linears(const bq_model *m);
BQ_API const char *bq_model_linear_name(const bq_model *m, int i);
BQ_API size_t bq_model_linear_params(const bq_model *m, int i);
/* Parameters outside the block linears (embedding, LM head if untied, norms),
 * and K/V cache elements per token of context. */
BQ_API size_t bq_model_other_params(const bq_model *m);
BQ_API size_t bq_model_kv_per_token(const bq_model *m);

/* What the weights take: packed tensors at their stored size, float tensors as
 * float32 in memory. weight_bits_ideal = sum of params x the formats' bits per
 * element (the scales amortised, bq_format_info.bits_per_element). */
typedef struct {
    size_t packed_params, packed_bytes, float_params, float_bytes;
    double packed_bits_ideal;
    int packed_tensors, float_tensors;
} bq_model_mem;
BQ_API bq_status bq_model_memory(const bq_model *m, bq_model_mem *out);
/* The same without loading the weights: for a Hugging Face folder, from config.json
 * and the safetensors headers alone (what bq_model_load_ex with o would hold). */
BQ_API bq_status bq_model_inspect(const char *path, const bq_load_opts *o, bq_model_mem *out);

/* Multiple-choice knapsack: for n units and nf formats pick choose[i] minimising
 * sum sens[i*nf + choose[i]] with sum params[i]*bits[choose[i]] <= budget * sum params.
 * Exact on costs rounded up to `grid` buckets (the result never exceeds the budget). */
BQ_API bq_status bq_knapsack(int n, int nf, const double *sens, const size_t *params, const double *bits, double budget,
                      int grid, int *choose, double *total_sens);
/* Indices of the non-dominated points (lower loss, fewer bits, higher density); returns the count. */
BQ_API int bq_pareto(int n, const double *loss, const double *bits, const double *density, int *front);

/* Trials of a mixed-precision study: the model at `model` (a folder, .bq or GGUF
 * path, loaded once per call; each trial quantises copies of its linears and puts
 * the loaded ones back, so every trial starts from the file's weights) with linear
 * i's weight and input in formats[choose[i]] (choose[i] < 0 or "fp32": left float),
 * scored by perplexity over ids. */
typedef struct {
    size_t size;       /* sizeof(bq_trial_opts) */
    int ctx, chunks;   /* as bq_ppl_opts */
    int threads, device;
    int part, parts;   /* bq_sensitivity: only the (linear, format) trials k with k % parts == part
                          (the others' entries 0), for callers that spread them over processes;
                          parts 0 means 1 */
    void (*progress)(void *arg, int done, int total);  /* linears measured so far (bq_sensitivity) */
    void *progress_arg;
} bq_trial_opts;
/* Mean nll (nats per token) and perplexity (ppl may be NULL) of one assignment of the
 * model's nl linears; choose NULL: all float. */
BQ_API bq_status bq_assignment_nll(const char *model, const int32_t *ids, size_t n, int nl, const int *choose,
                                   const char *const *formats, const bq_trial_opts *o, double *nll, double *ppl);
/* Per-linear sensitivity (HAWQ-style, measured): the float model's nll in *base_nll
 * and, for linear i and format f, sens[i * nf + f] = the nll with only that linear
 * quantised to f (weight and input) minus *base_nll. sens holds n_linears * nf. */
BQ_API bq_status bq_sensitivity(const char *model, const int32_t *ids, size_t n, const char *const *formats, int nf,
                                const bq_trial_opts *o, double *base_nll, double *sens);

/* Mixed-precision search (bq_search): the knapsack on the measured sensitivities, the
 * uniform assignments and `trials` seeded random ones within the budget, each scored,
 * and their Pareto front in (nll, bits, -density). */
typedef struct {
    size_t size;          /* sizeof(bq_search_opts) */
    bq_trial_opts trial;  /* windows, threads, device; part/parts: this process scores the sensitivity trials
                             and the points j with j % parts == part (the sums come from `reduce`) */
    double budget;        /* average bits per element, parameter-weighted (W = A) */
    int trials;           /* random assignments beside the knapsack's and the uniform ones */
    uint64_t seed;
    const double *bits;   /* per format: bits per element (bq_format_info.bits_per_element) */
    const double *area;   /* per format: MAC area (bq_cost_pair, or synthesised); density = fp32_area / mean area */
    double fp32_area;
    /* Sums v[0..n) over the caller's processes in place (MPI; NULL: one process) and
     * returns non-zero when `failed` is non-zero on any of them. */
    int (*reduce)(void *arg, double *v, size_t n, int failed);
    /* Resuming: an earlier run's nll of random trial k with this assignment (return 1, *nll
     * set), and each random trial as it is scored (for the caller's log). Either may be NULL. */
    int (*recall)(void *arg, int k, int nl, const int *choose, double *nll);
    void (*record)(void *arg, int k, int nl, const int *choose, double nll);
    void (*progress)(void *arg, int done, int total);  /* random trials scored so far */
    void *arg;            /* for reduce, recall, record and progress */
} bq_search_opts;

typedef struct {
    int n_points, n_linears, n_formats;
    int *choose;          /* [n_points][n_linears]: format index per linear */
    double *nll, *bits, *density;  /* per point: calibration nll, average bits, arithmetic density vs fp32 */
    int *pareto;          /* per point: on the front */
    char (*kind)[80];     /* per point: "knapsack", "uniform FORMAT", "trial K" */
    double base_nll;      /* the float model's */
    double *sens;         /* [n_linears][n_formats], as bq_sensitivity */
    int recalled;         /* random trials taken from recall (summed over the processes) */
} bq_search_result;

BQ_API bq_status bq_search(const char *model, const int32_t *ids, size_t n, const char *const *formats, int nf,
                           const bq_search_opts *o, bq_search_result **out);
BQ_API void bq_search_result_free(bq_search_result *r);

/* ---- tokenizer ------------------------------------------------------------ */

typedef struct bq_tokenizer bq_tokenizer;
BQ_API bq_status bq_tokenizer_load(const char *tokenizer_json_path, bq_tokenizer **out);
/* The tokenizer that came with the model (folder, .bq or GGUF). */
BQ_API bq_status bq_tokenizer_from_model(const bq_model *m, bq_tokenizer **out);
BQ_API void bq_tokenizer_free(bq_tokenizer *t);
/* Encode UTF-8 text; *ids is malloc'd. Fails with BQ_ERR_PARSE on invalid UTF-8. */
BQ_API bq_status bq_tokenize(const bq_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n);
/* Decode ids to UTF-8 bytes; *text is malloc'd and NUL-terminated. */
BQ_API bq_status bq_detokenize(const bq_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len);

/* ---- evaluation ----------------------------------------------------------- */

typedef struct {
    int ctx;              /* window length S */
    int chunks;           /* evaluate only the first N windows (0 = all) */
    int second_half;      /* 1: score only the last S/2 tokens of each window; 2: the last S/2 - 1 (llama-perplexity's) */
    int allow_nonfinite;  /* go on past NaN/Inf logits */
    int threads;          /* for the log-softmax (0 = all cores); results do not depend on it */
    void (*progress)(void *arg, size_t done, size_t total, size_t tokens, double seconds);
    void *progress_arg;
    int device;           /* 0: CPU; 1: the first CUDA device (BQ_ERR_UNSUPPORTED if there is none) */
    int stages;           /* as bq_ctx_opts.stages: windows streamed through them (added in 0.2:
                             this struct has no size field, so callers built against an
                             older header must be rebuilt; zero-initialise it) */
} bq_ppl_opts;

/* ppl/nll/tokens_scored follow the requested protocol; ppl_all and
 * ppl_second_half come from the same passes (second-half needs an even ctx). */
typedef struct { double ppl, nll, seconds, ppl_all, ppl_second_half; size_t windows, tokens_scored; } bq_ppl_result;

BQ_API bq_status bq_perplexity(const bq_model *m, const int32_t *ids, size_t n, const bq_ppl_opts *o, bq_ppl_result *r);
/* bq_perplexity in pieces, for callers that spread the windows over processes
 * (the CLI under mpirun): the number of windows; the per-window negative
 * log-likelihood sums (all scored tokens, and the second half's) of the windows
 * w with w % parts == part, the others set to 0; and the result from the
 * arrays added over the parts (each entry has one non-zero contribution, so
 * the sum is exact): the same bits as bq_perplexity for any split. seconds is
 * left to the caller. */
BQ_API bq_status bq_ppl_windows(size_t n, const bq_ppl_opts *o, size_t *windows);
BQ_API bq_status bq_perplexity_part(const bq_model *m, const int32_t *ids, size_t n, const bq_ppl_opts *o, int part,
                                    int parts, double *nll, double *nll_half);
BQ_API void bq_ppl_finish(const double *nll, const double *nll_half, size_t windows, const bq_ppl_opts *o, bq_ppl_result *r);

/* How far a quantised model's next-token distributions are from a reference
 * (float) model's over the same windows (llama.cpp's --kl-divergence measures the
 * same): KL(P_ref || P_m) per scored token, its mean and 99th percentile, and how
 * often both put the same token first. Windows, protocol and threads as bq_perplexity. */
typedef struct { double kld_mean, kld_p99, kld_max, top1; size_t tokens; double seconds; } bq_kld_result;
BQ_API bq_status bq_kld(const bq_model *ref, const bq_model *m, const int32_t *ids, size_t n, const bq_ppl_opts *o,
                        bq_kld_result *r);
/* bq_kld in pieces, as bq_perplexity_part (for spreading windows over processes):
 * the number of scored tokens; each one's KL divergence and whether the argmaxes
 * agree (1 or 0) for the windows w with w % parts == part, 0 for the others; and
 * the result from the arrays added over the parts (kl is sorted in place). The
 * same bits as bq_kld for any split; seconds is left to the caller. */
BQ_API bq_status bq_kld_rows(size_t n, const bq_ppl_opts *o, size_t *count);
BQ_API bq_status bq_kld_part(const bq_model *ref, const bq_model *m, const int32_t *ids, size_t n, const bq_ppl_opts *o,
                             int part, int parts, double *kl, double *same);
BQ_API void bq_kld_finish(double *kl, const double *same, size_t count, bq_kld_result *r);

/* ---- downstream tasks (docs/tasks.md) --------------------------------------- */

typedef struct {
    size_t size;     /* sizeof(bq_eval_opts) */
    int limit;       /* score the first N items (0: all) */
    int max_ctx;     /* tokens of context + continuation at most; longer contexts lose tokens on the left */
    int allow_nonfinite;
    /* each scored item (may be NULL): its index in the file's items, and the summed
     * log-likelihood of each choice (cloze: of the target, n = 1) */
    void (*on_item)(void *arg, size_t index, const double *ll, int n);
    void *arg;
    int device;      /* as bq_ctx_opts.device */
    /* score only the items whose index i has i % parts == part (parts 0 or 1: all);
     * the other items are still read and checked. For spreading a file over processes:
     * collect each scored item with on_score and combine with bq_eval_summarise. */
    int part, parts;
    /* each scored item (may be NULL): acc (0 or 1), then acc_norm (multiple choice)
     * or the target's log-likelihood (cloze); arg as on_item's */
    void (*on_score)(void *arg, size_t index, double acc, double second);
    int stages;      /* as bq_ctx_opts.stages */
} bq_eval_opts;

/* Multiple choice ({"context", "choices", "gold"}): acc and acc_norm (the choice's
 * log-likelihood over its byte length), with standard errors. Cloze ({"context",
 * "target"}): acc is greedy exact match, ppl = exp(-mean log-likelihood of the target). */
typedef struct {
    char kind[16];                 /* "multiple_choice" or "cloze" */
    size_t items, skipped;         /* scored; left out for a context longer than max_ctx would allow */
    double acc, acc_stderr, acc_norm, acc_norm_stderr, ppl;
    size_t tokens_computed, tokens_reused;  /* forward-pass tokens; context tokens not recomputed per choice */
    double seconds;
} bq_eval_result;

/* Score a JSONL task file (one kind per file). A malformed line is an error naming
 * the file and line. */
BQ_API bq_status bq_eval_file(const bq_model *m, const bq_tokenizer *t, const char *path, const bq_eval_opts *o,
                              bq_eval_result *r);
/* The result's accuracies, standard errors and ppl from per-item scores in item
 * order (acc[i], second[i] as on_score gives them); kind, items and the timing
 * fields are left as they are. */
BQ_API void bq_eval_summarise(int multiple_choice, const double *acc, const double *second, size_t n, bq_eval_result *r);

/* ---- generation ----------------------------------------------------------- */

typedef struct {
    size_t size;          /* sizeof(bq_gen_opts): fields may be added at the end */
    int n_new;            /* tokens to generate */
    double temperature;   /* 0: greedy */
    double top_p;         /* (0, 1]: the smallest set of tokens holding this mass */
    uint64_t seed;        /* sampling: the same seed, the same tokens */
    int allow_nonfinite;  /* go on past NaN/Inf activations */
    void (*on_token)(void *arg, int32_t id);  /* called as each token is chosen (may be NULL) */
    void *arg;
    int device;           /* as bq_ctx_opts.device */
    int eager;            /* as bq_ctx_opts.eager */
    int stages;           /* as bq_ctx_opts.stages */
} bq_gen_opts;
typedef struct { double prompt_seconds, gen_seconds; size_t prompt_tokens, gen_tokens; } bq_gen_result;

/* Continue prompt[0..n) by o->n_new tokens into out[0..n_new). r (may be NULL) gets
 * the time of the prompt's forward pass and of the new tokens. */
BQ_API bq_status bq_generate(const bq_model *m, const int32_t *prompt, size_t n, const bq_gen_opts *o, int32_t *out,
                             bq_gen_result *r);
/* The sampler bq_generate uses: greedy at temperature <= 0, else top-p; *rng
 * advances (start it with bq_sampler_seed). */
BQ_API int32_t bq_sample(const float *logits, int vocab, double temperature, double top_p, uint64_t *rng);
BQ_API uint64_t bq_sampler_seed(uint64_t seed);

/* ---- quantisation-aware fine-tuning (docs/finetune.md) ---------------------- */

/* A trainer updates the model's float32 weights in place (they are the master
 * copies); the forward pass applies the config's quantisers (weights, linear
 * inputs, K/V cache, attention operands, LM head) with straight-through gradients.
 * Pre-norm decoders (LLaMA, Mistral, Qwen2, Qwen3, GPT-2, OPT), on the CPU or a CUDA device
 * (device): others are refused by name. */
typedef struct bq_trainer bq_trainer;
typedef struct {
    size_t size;          /* sizeof(bq_train_opts) */
    int ctx;              /* tokens per window */
    int accum;            /* windows per optimiser step (gradient accumulation) */
    int steps;            /* optimiser steps of the whole run (the schedule's length) */
    int warmup;           /* steps of linear warm-up; then cosine decay to lr * min_lr_frac */
    double lr, min_lr_frac, weight_decay, beta1, beta2, eps;
    double clip_norm;     /* the gradient's global norm is clipped to this (0: off) */
    int lora;             /* rank of adapters on the block linears (0: full fine-tuning) */
    double lora_alpha;    /* adapters scaled by lora_alpha / lora (0: = lora) */
    const char *train;    /* what is trained, a list of linears,norms,emb,head or "all"
                           * (NULL: all without LoRA; linears, through the adapters, with it) */
    uint64_t seed;        /* adapter initialisation and the order of the windows */
    int threads;          /* 0: all cores; results do not depend on it */
    int lora_beside;      /* 0: adapters inside the weight quantiser, q(W + s B A), merged into W;
                           * 1: beside it (QLoRA's form), q(W) + s B A, kept on merge as float32
                           * factors beside the weight (the LoRC term: a .bq file holds them) */
    int device;           /* 0: the CPU; 1: the first CUDA device (as bq_ctx_opts.device) */
    int tf32;             /* CUDA: products on the tensor cores with TF32 inputs (10-bit mantissas;
                           * 0: float32, what the CPU computes) */
} bq_train_opts;
BQ_API void bq_train_opts_default(bq_train_opts *o);
/* q may be NULL (float32 fine-tuning); it must outlive nothing (formats are copied). */
BQ_API bq_status bq_trainer_new(bq_model *m, const bq_qconfig *q, const bq_train_opts *o, bq_trainer **out);
BQ_API void bq_trainer_free(bq_trainer *t);
/* One optimiser step over o->accum windows of o->ctx + 1 tokens each (ids holds them
 * one after another): *loss gets their mean loss. A non-finite loss or gradient fails
 * with BQ_ERR_NONFINITE and leaves the weights as they were. */
BQ_API bq_status bq_trainer_step(bq_trainer *t, const int32_t *ids, double *loss);
/* Mean loss, without training, of the windows of o->ctx + 1 tokens at stride o->ctx in
 * ids[0..n) (a text cut as finetune cuts it; at least one window), by the forward pass
 * the trainer uses: quantisers included. */
BQ_API bq_status bq_trainer_loss(bq_trainer *t, const int32_t *ids, size_t n, double *loss);
BQ_API long bq_trainer_steps_done(const bq_trainer *t);
BQ_API double bq_trainer_lr(const bq_trainer *t, long step);  /* the schedule */
BQ_API size_t bq_trainer_params(const bq_trainer *t);         /* trainable values */
/* Adapters merged into the model's weights (the trainer keeps training them); with
 * lora_beside, written as the linears' low-rank factors instead (replacing earlier ones). */
BQ_API bq_status bq_trainer_merge(bq_trainer *t);
/* Checkpoint: trainable tensors, optimiser state and step, atomically (safetensors);
 * load refuses a file of another shape or option set. */
BQ_API bq_status bq_trainer_save_state(const bq_trainer *t, const char *path);
BQ_API bq_status bq_trainer_load_state(bq_trainer *t, const char *path);
/* The model as a Hugging Face folder (config.json, tokenizer.json, model.safetensors
 * in float32, under its family's tensor names: LLaMA, Qwen, Mistral, OPT, GPT-2), written
 * under a temporary name and renamed into place. */
BQ_API bq_status bq_model_save_hf(const bq_model *m, const char *dir);
/* Whether bq_model_save_hf can write m (its errors, before any work; packed weights
 * are found while writing). */
BQ_API bq_status bq_model_hf_writable(const bq_model *m);

/* Which SIMD path the format kernels use: "avx512", "avx2" or "scalar".
 * bq_set_isa forces one (for tests); returns BQ_ERR_UNSUPPORTED if the CPU lacks it. */
BQ_API const char *bq_isa(void);
BQ_API bq_status bq_set_isa(const char *isa);

#ifdef __cplusplus
}
#endif
#endif
