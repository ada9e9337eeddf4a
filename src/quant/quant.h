/* Quantisation configuration: which format each role of each layer takes. */
#ifndef BQ_QUANT_H
#define BQ_QUANT_H
#include "core.h"

/* ---- the TOML subset (toml.c) ---- */
typedef enum { TV_STR, TV_INT, TV_BOOL, TV_TABLE } tv_kind;
typedef struct tkv {
    char *key;
    tv_kind kind;
    char *s;
    long long i;
    struct tkv *items;
    int nitems;
    int line;
} tkv;
typedef struct { tkv *items; int n; } tdoc;

bq_status toml_parse(const char *src, size_t len, const char *path, tdoc *out);
void toml_free(tdoc *d);

/* ---- rules ---- */
typedef struct {
    char pattern[128];
    char w[64], a[64];  /* "" = leave as is */
    char mul[16];       /* "" = leave as is, "exact", "lmul" or "lmul:L" */
    int line;           /* 0 for command-line rules */
} qrule;

/* Calibration statistics (calib.c): per linear of the model (layer * 7 + role, then
 * the LM head at layers * 7), the mean square of each input channel over the
 * calibration tokens, collected by running the float model. */
typedef struct {
    int n, *in;
    double **msq, **amax;  /* per input channel: mean square, largest |x| */
    double **gram;         /* with gptq: X^T X [in][in], summed, at the slot of the first linear
                            * reading that input (q for k and v, gate for up; calib_gram_slot) */
    size_t tokens;
    float **xs;            /* with smoothquant's search: sample rows of the input [xrows][in], tokens
                            * evenly spaced over the calibration, at the Gram matrix's slot */
    int *xrows;
} calib_stats;
enum { CALIB_GRAM = 1, CALIB_SAMPLE = 2, CALIB_SAMPLE_ROWS = 256 };
int calib_gram_slot(const calib_stats *s, int k);
/* The statistics' slot of linear j of a layer (layer -1: the LM head). */
static inline int calib_index(int layers, int layer, int j) { return layer < 0 ? layers * 7 : layer * 7 + j; }
void calib_free(calib_stats *s);
calib_stats *calib_copy(const calib_stats *s);  /* NULL on failure */
/* The float model m over `windows` windows of ctx tokens; want: CALIB_GRAM (X^T X too),
 * CALIB_SAMPLE (up to CALIB_SAMPLE_ROWS input rows per slot too). */
bq_status calib_run(const bq_model *m, const int32_t *ids, size_t windows, int ctx, int want, int device, calib_stats **out);

struct bq_qconfig {
    qrule *rules;       /* in order; later rules win */
    int nrules;
    char attn[64], kv[64];
    bq_qopts opts;
    char source[256];   /* file name, for messages */
    int ptq_clip;       /* --ptq clip: MSE clipping of each weight group (clip.c) */
    int ptq_smooth;     /* --ptq smoothquant[:alpha] (smooth.c), after rotate */
    int ptq_gptq;       /* --ptq gptq[:actorder] (gptq.c): 1, or 2 with act-order; needs the Gram matrices */
    int ptq_awq;        /* --ptq awq (awq.c): likewise; after smoothquant, before gptq and clip */
    int ptq_rotate;     /* --ptq rotate[:seed] (rotate.c): first of all */
    int ptq_hadamard;   /* --ptq hadamard[:seed] (rotate.c): down_proj's input rotated online; after rotate */
    int ptq_hadamard_kv; /* --ptq hadamard_kv[:seed] (rotate.c): each head's Q, K (online) and V (folded) */
    int ptq_lorc;       /* --ptq lorc[:rank] (lorc.c): the rank (0: off); last, on what the others left */
    uint64_t rotate_seed, hadamard_seed, hadamard_kv_seed;
    int32_t *cal_ids;   /* with rotate or hadamard: the calibration windows, run after rotating */
    size_t cal_windows;
    int cal_ctx;
    double smooth_alpha;  /* < 0: searched per group of linears (smooth.c) */
    calib_stats *calib; /* bq_qconfig_calibrate's statistics (NULL: none) */
    int calib_device;   /* where calibration runs the model (bq_ctx_opts.device) */
    void (*warn)(void *arg, const char *msg);  /* NULL: standard error */
    void *warn_arg;
};

/* Rules from TOML text already in memory. */
bq_status qconfig_parse(bq_qconfig *q, const char *src, size_t n, const char *path);

/* Per-input-channel factors folded into m's float weights and norms (smooth.c): for
 * each group of linears that read one input, fn fills s (weights' columns times s,
 * the input divided by it); cs (a copy of the calibration) is rescaled with the inputs. */
struct linear;
typedef bq_status (*ptq_scale_fn)(void *arg, const calib_stats *cs, struct linear **ls, const int *k, int n, double *s);
bq_status ptq_fold_scales(bq_model *m, calib_stats *cs, ptq_scale_fn fn, void *arg, const char *who);
/* SmoothQuant's factors (smooth.c); AWQ's, searched per group on the calibration's
 * Gram matrices for the weight formats q gives (awq.c). */
bq_status ptq_smooth(bq_model *m, calib_stats *cs, const bq_qconfig *q);
/* A message for the user (q's warning callback, else standard error). */
void qconfig_note(const bq_qconfig *q, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* x [rows][cols] fake-quantised in place in the format named fmt. */
bq_status qdq_named(const char *fmt, float *x, int rows, int cols, const bq_qopts *o);
/* What calibration q's algorithms need (CALIB_* flags; 0: none beyond the channel statistics). */
int calib_wants(const bq_qconfig *q);
bq_status ptq_awq(bq_model *m, calib_stats *cs, const bq_qconfig *q);
/* A linear's weights as float32 (a held 16-bit matrix widened exactly; packed: refused);
 * the embedding likewise (a tied head follows it); a tied head given its own copy (qconfig.c). */
bq_status ptq_float_weights(struct linear *l);
/* A trial's linear (search): *out is l with its weights quantised to w and its input
 * format a ("" or NULL: none), plain rounding, from a copy (a second view of held
 * 16-bit weights, a float32 copy), so l stays as it is; name, shape, bias and LoRC
 * factors are l's. ptq_trial_free gives back what the copy owns. */
bq_status ptq_trial_linear(const struct linear *l, const char *w, const char *a, const bq_qopts *o, struct linear *out);
void ptq_trial_free(const struct linear *l, struct linear *out);
bq_status ptq_float_embedding(bq_model *m);
bq_status ptq_untie_head(bq_model *m);
/* The residual stream rotated by a seeded random orthogonal matrix, norms folded (rotate.c). */
bq_status ptq_rotate(bq_model *m, uint64_t seed);
/* rotate, hadamard or hadamard_kv asked for: calibration waits for the rotated model. */
/* The format of the attention operands or the K/V cache (role "attn", "kv"), refused where its
 * blocks exceed head_dim (K is blocked along it). */
bq_status qconfig_head_format(int head_dim, const char *role, const char *name, bq_format **out);
static inline int qconfig_rotates(const bq_qconfig *q) { return q->ptq_rotate || q->ptq_hadamard || q->ptq_hadamard_kv; }
/* --ptq hadamard[:seed]: down_proj's input rotated online, its weight rows folded (rotate.c). */
bq_status ptq_hadamard(bq_model *m, uint64_t seed);
/* --ptq hadamard_kv[:seed]: each head's Q and K rotated online, V's rotation folded
 * into v_proj and o_proj (rotate.c). */
bq_status ptq_hadamard_kv(bq_model *m, uint64_t seed);
/* The rotation hadamard and hadamard_kv use for n inputs: signs, then a Hadamard block
 * of order 4 x odd part x 2^j where hadamard_block makes one, else a seeded random
 * orthogonal block on the odd part, beside the fast Walsh-Hadamard transform (rotate.c). */
struct bq_rot;
bq_status rot_make(int n, uint64_t seed, struct bq_rot **out);
/* A Hadamard matrix of order m scaled to orthogonal (B [m][m]) by Paley's two
 * constructions or a Williamson quadruple; 0 when none of them has order m (or *st
 * is set: out of memory) (hadamard.c). */
int hadamard_block(int m, float *B, bq_status *st);
/* LoRC: l's quantisation error against its float weights w0 [out][in] as rank-r
 * factors l->lr_a, l->lr_b (lorc.c). */
bq_status ptq_lorc(struct linear *l, const float *w0, int rank);
/* The weight and input formats q gives the tensor `name` ("" if none); is_block: a
 * linear inside the blocks (the "default" rule covers those only). */
void qconfig_resolve(const bq_qconfig *q, const char *name, int is_block, const char **w, const char **a);
/* The weight format q gives the tensor `name` ("" if none). */
const char *qconfig_weight_format(const bq_qconfig *q, const char *name);
/* GPTQ's options (ptq_gptq's flags): each group clipped too; blocks (or columns) taken
 * in the order of their inputs' energy, the largest first (the paper's act-order). */
enum { PTQ_GPTQ_CLIP = 1, PTQ_GPTQ_ACTORDER = 2 };
/* GPTQ on w [rows][cols] with the Gram matrix of its input; flags: PTQ_GPTQ_*;
 * device as bq_ctx_opts.device (0: the CPU; k > 0: CUDA device k - 1, src/cuda/gptq.cu).
 * *damp (may be NULL) gets the damping that made H positive definite, as a fraction of
 * its mean diagonal: 0.01, or 0.1, 1 or 10 where H needed more. */
bq_status ptq_gptq(const bq_format *f, float *w, int rows, int cols, const double *gram, int flags, const bq_qopts *o,
                   int device, double *damp);
/* Clamp each scale group of w in place to the range whose quantisation has the least
 * squared error, each column's error weighted by imp[column] (NULL: equally); quantising
 * or packing the result then uses the clipped scales (clip.c). */
bq_status ptq_clip(const bq_format *f, float *w, int rows, int cols, const double *imp, const bq_qopts *o);


/* Glob match with * and ? (whole string). */
int glob_match(const char *pat, const char *s);

#endif
