/* Fake quantisation driver: tensor-wide statistics, ISA choice, threads. */
#include "qkern.h"
#include "bq_cuda.h"
#include <stdlib.h>

#define ISA_FNS(isa)                                                                             \
    void bq_qdq_rows_##isa(const bq_format *, const qctx *, const float *, float *, size_t, size_t); \
    uint32_t bq_amax_bits_##isa(const float *, size_t);                                           \
    int bq_pack_codes_##isa(const bq_format *, const qctx *, const float *, size_t, size_t, uint32_t *, uint8_t *, float *);
ISA_FNS(scalar)
#ifdef BQ_HAVE_X86
ISA_FNS(avx2)
ISA_FNS(avx512)
#endif

typedef struct {
    const char *name;
    qdq_rows_fn fn;
    uint32_t (*amax_bits)(const float *, size_t);
    pack_codes_fn pack_codes;
    int (*supported)(void);
} isa_entry;

static int always(void) { return 1; }
#ifdef BQ_HAVE_X86
static int has_avx2(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
static int has_avx512(void)
{
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#endif

/* Best first. */
static const isa_entry isas[] = {
#ifdef BQ_HAVE_X86
    {"avx512", bq_qdq_rows_avx512, bq_amax_bits_avx512, bq_pack_codes_avx512, has_avx512},
    {"avx2", bq_qdq_rows_avx2, bq_amax_bits_avx2, bq_pack_codes_avx2, has_avx2},
#endif
    {"scalar", bq_qdq_rows_scalar, bq_amax_bits_scalar, bq_pack_codes_scalar, always},
};

static const isa_entry *g_isa;

static const isa_entry *current_isa(void)
{
    if (!g_isa) {
        const char *env = getenv("BQ_ISA");
        for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++)
            if (isas[i].supported() && (!env || !strcmp(env, isas[i].name))) { g_isa = &isas[i]; break; }
        if (!g_isa) g_isa = &isas[sizeof isas / sizeof isas[0] - 1];
    }
    return g_isa;
}

const char *bq_isa(void) { return current_isa()->name; }

bq_status bq_set_isa(const char *name)
{
    for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++)
        if (!strcmp(name, isas[i].name)) {
            if (!isas[i].supported()) return bq_fail(BQ_ERR_UNSUPPORTED, "this CPU lacks %s", name);
            g_isa = &isas[i];
            return BQ_OK;
        }
    return bq_fail(BQ_ERR_ARG, "unknown ISA '%s' (avx512, avx2, scalar)", name);
}

qdq_rows_fn bq_kernel_for(const bq_format *f)
{
    (void)f;
    return current_isa()->fn;
}

pack_codes_fn bq_pack_codes_for(const bq_format *f)
{
    (void)f;
    return current_isa()->pack_codes;
}

/* Tensor-wide facts: the per-tensor int scale, NVFP4's s_t. */
bq_status bq_tensor_ctx(const bq_format *f, const float *x, size_t rows, size_t cols,
                        const bq_qopts *o, qctx *c)
{
    memset(c, 0, sizeof *c);
    c->round = o ? o->round : BQ_ROUND_RNE;
    c->seed = o ? o->seed : 0;
    c->cols = cols;
    if ((unsigned)c->round > BQ_ROUND_STOCHASTIC) return bq_fail(BQ_ERR_ARG, "unknown rounding mode %d", (int)c->round);
    if (format_scale_place(f) == SCALE_TENSOR) {
        if (f->asym) int_group_scale(f, x, rows * cols, &c->tensor_scale, &c->tensor_zero, &c->tensor_nonfinite);
        else {  /* the symmetric reduction in this CPU's ISA */
            uint32_t mb = current_isa()->amax_bits(x, rows * cols);
            c->tensor_nonfinite = mb > 0x7f7fffffu;
            c->tensor_scale = c->tensor_nonfinite ? NAN : u2f(mb) / (float)f->el.hi;
            c->tensor_zero = 0.0f;
        }
    } else if (scheme_of(f)->tensor_factor) {
        /* NVFP4's s_t from the finite values; blocks holding NaN/Inf decode to NaN */
        float amax = u2f(current_isa()->amax_bits(x, rows * cols));
        if (!(amax <= FLT_MAX)) { /* slow path: ignore the non-finite values */
            amax = 0.0f;
            for (size_t i = 0; i < rows * cols; i++) {
                float a = fabsf(x[i]);
                if (a <= FLT_MAX && a > amax) amax = a;
            }
        }
        c->tensor_scale = amax / (448.0f * 6.0f);
    }
    return BQ_OK;
}

static bq_status check_args(const bq_format *f, const void *in, const void *out, size_t rows, size_t cols)
{
    if (!f || !in || !out) return bq_fail(BQ_ERR_ARG, "null argument");
    if (rows && cols > SIZE_MAX / sizeof(float) / rows) return bq_fail(BQ_ERR_SHAPE, "shape %zux%zu overflows", rows, cols);
    return BQ_OK;
}

typedef struct { const bq_format *f; const qctx *c; const float *x; float *y; qdq_rows_fn fn; } qjob;

static void qdq_range(void *arg, size_t b, size_t e)
{
    qjob *j = arg;
    j->fn(j->f, j->c, j->x, j->y, b, e);
}

bq_status bq_qdq(const bq_format *f, const float *in, float *out, size_t rows, size_t cols, const bq_qopts *o)
{
    bq_status st = check_args(f, in, out, rows, cols);
    if (st) return st;
    qctx c;
    if ((st = bq_tensor_ctx(f, in, rows, cols, o, &c))) return st;
    qjob j = {f, &c, in, out, bq_kernel_for(f)};
    /* small tensors: threads cost more than they save */
    int threads = rows * cols < (1u << 16) ? 1 : (o ? o->threads : 0);
    bq_parallel_for(rows, threads, qdq_range, &j);
    return BQ_OK;
}

/* ---- facts -------------------------------------------------------------- */


/* How far the scale can move the unscaled grid (mx: its largest magnitude): a power-of-two
 * code's factors over all its codes (pack_scale_parts: what the codes mean), a minifloat
 * scale's own grid, any float32 (int formats); none for elements alone. */
static void scale_range(const bq_format *f, double mx, double *lo, double *hi)
{
    const scheme_traits *t = scheme_of(f);
    *lo = *hi = 1.0;
    if (t->pow2_code) {
        *lo = INFINITY;
        *hi = 0.0;
        for (uint32_t c = 0; c < (1u << f->scale_bits); c++) {
            float s1, s2;
            if (!pack_scale_parts(f, 1.0f, c, &s1, &s2)) continue;  /* a NaN code */
            *lo = fmin(*lo, (double)s1 * s2);
            *hi = fmax(*hi, (double)s1 * s2);
        }
    } else if (t->block_code) {
        double mnorm;
        elem_grid_range(&f->scale, hi, &mnorm, lo);
    } else if (format_float_scale(f)) {
        *lo = FLT_TRUE_MIN;
        *hi = FLT_MAX / (mx > 0 ? mx : 1);
    }
}

bq_status bq_format_get_info(const bq_format *f, bq_format_info *in)
{
    if (!f || !in) return bq_fail(BQ_ERR_ARG, "null argument");
    memset(in, 0, sizeof *in);
    in->name = f->name;
    scale_place sp = format_scale_place(f);
    in->family = f->el.kind == EK_FP32 ? "fp32" : sp != SCALE_NONE ? scheme_of(f)->family
                 : f->el.kind == EK_MF ? "minifloat" : f->el.kind == EK_LOG ? "log" : "fixed";
    in->elem_bits = f->el.bits;
    in->scale_bits = f->scale_bits;
    in->block = sp == SCALE_ROW ? -1 : sp == SCALE_TENSOR ? -2 : f->block;
    in->bits_per_element = f->el.bits + (in->block > 0 ? (double)f->scale_bits / in->block : 0.0);
    double mx, mn, ms;
    elem_grid_range(&f->el, &mx, &mn, &ms);
    in->block_binades = log2(mx / ms);
    /* scale range: how far the shared scale can move the grid */
    double lo, hi;
    scale_range(f, mx, &lo, &hi);
    in->max_normal = fmin(mx * hi + (f->asym && f->ggml ? hi : 0.0), FLT_MAX);  /* q4_1/q5_1: plus the minimum */
    in->min_normal = fmax(mn * lo, FLT_TRUE_MIN);
    in->min_subnormal = fmax(ms * lo, FLT_TRUE_MIN);
    in->range_binades = log2(in->max_normal / in->min_subnormal);
    if (scheme_of(f)->tensor_factor) {
        /* the fp32 tensor scale can put the grid anywhere; report the range
         * within one tensor (relative to s_t) and no absolute bound */
        in->max_normal = FLT_MAX;
        in->min_normal = in->min_subnormal = FLT_TRUE_MIN;
    }
    return BQ_OK;
}

/* ---- error statistics ---------------------------------------------------- */

void bq_error_measure(const float *ref, const float *q, size_t n, bq_error_stats *st)
{
    double sig = 0, err = 0, mx = 0;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(ref[i]) || !isfinite(q[i])) { bad++; continue; }
        double d = (double)q[i] - ref[i];
        sig += (double)ref[i] * ref[i];
        err += d * d;
        if (fabs(d) > mx) mx = fabs(d);
    }
    st->n_nonfinite = bad;
    st->max_abs_err = mx;
    st->rmse = n > bad ? sqrt(err / (double)(n - bad)) : 0.0;
    st->sqnr_db = err > 0 ? 10.0 * log10(sig / err) : INFINITY;
}

/* ---- device memory (the CUDA backend; BQ_ERR_UNSUPPORTED without it) ---- */

int bq_device_count(char *why, size_t why_len) { return bq_cuda_devices(why, why_len); }

bq_status bq_qdq_device(const bq_format *fmt, const float *d_in, float *d_out, size_t rows, size_t cols, const bq_qopts *opts)
{
    bq_status st = bq_cuda_qdq(fmt, d_in, d_out, rows, cols, opts);
    return st ? st : bq_cuda_sync();
}
