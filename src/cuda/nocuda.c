/* The CUDA entry points when blockq is built without nvcc: each one says so. */
#include "bq_cuda.h"
#include "backend.h"
#include "tops.h"
#include <stdio.h>

static bq_status none(void) { return bq_fail(BQ_ERR_UNSUPPORTED, "this blockq was built without CUDA (no nvcc found at build time)"); }

int bq_cuda_devices(char *why, size_t why_len)
{
    if (why) snprintf(why, why_len, "built without CUDA (no nvcc at build time)");
    return 0;
}
const char *bq_cuda_device_name(void) { return ""; }
bq_status bq_cuda_malloc(void **d, size_t bytes) { (void)bytes; *d = NULL; return none(); }
void bq_cuda_free(void *d) { (void)d; }
bq_status bq_cuda_upload(void *d, const void *h, size_t n) { (void)d; (void)h; (void)n; return none(); }
bq_status bq_cuda_download(void *h, const void *d, size_t n) { (void)d; (void)h; (void)n; return none(); }
bq_status bq_cuda_sync(void) { return none(); }
bq_status bq_cuda_qdq(const bq_format *f, const float *x, float *y, size_t r, size_t c, const bq_qopts *o)
{
    (void)f; (void)x; (void)y; (void)r; (void)c; (void)o;
    return none();
}
int bq_cuda_qdq_reads_back(const bq_format *f) { (void)f; return 0; }
bq_status bq_cuda_w_upload(const pmat *m, bq_cuda_w **out) { (void)m; *out = NULL; return none(); }
bq_status bq_cuda_w_upload_path(const pmat *m, bq_gemv_path path, bq_cuda_w **out) { (void)m; (void)path; *out = NULL; return none(); }
bq_gemv_path bq_cuda_w_path(const bq_cuda_w *w) { (void)w; return BQ_GEMV_FP16; }
const char *bq_cuda_w_layout(const bq_cuda_w *w) { (void)w; return "none (built without CUDA)"; }
int bq_cuda_w_gemv_max(const bq_cuda_w *w) { (void)w; return 0; }
void bq_cuda_w_free(bq_cuda_w *w) { (void)w; }
size_t bq_cuda_w_bytes(const bq_cuda_w *w) { (void)w; return 0; }
void bq_cuda_w_set_pdl(bq_cuda_w *w, int on) { (void)w; (void)on; }
bq_status bq_cuda_gemv(const bq_cuda_w *w, const float *x, int n, float *y) { (void)w; (void)x; (void)n; (void)y; return none(); }
bq_status bq_cuda_gemv_split(const bq_cuda_w *w, const float *x, int n, float *y, int ks)
{
    (void)w; (void)x; (void)n; (void)y; (void)ks;
    return none();
}
bq_status bq_cuda_gemv_multi(const bq_cuda_w *const *ws, int count, const float *x, int n, float *const *ys)
{
    (void)ws; (void)count; (void)x; (void)n; (void)ys;
    return none();
}
int bq_cuda_w_fusable(const bq_cuda_w *a, const bq_cuda_w *b) { (void)a; (void)b; return 0; }
int bq_cuda_w_takes_pieces(const bq_cuda_w *w, int n) { (void)w; (void)n; return 0; }
int bq_cuda_attend_vec_takes(int d, const void *q, const void *K, const void *V, const void *a)
{
    (void)d; (void)q; (void)K; (void)V; (void)a;
    return 0;
}
bq_status bq_cuda_attend_few(int kernel, int pdl, const float *q, const float *K, const float *V, float *a, float *s, int T, int n,
                             int heads, int group, int d, int kvd, float scale, int pos0, const int *dpos, int window)
{
    (void)kernel; (void)pdl; (void)q; (void)K; (void)V; (void)a; (void)s; (void)T; (void)n; (void)heads; (void)group; (void)d; (void)kvd;
    (void)scale; (void)pos0; (void)dpos; (void)window;
    return none();
}
bq_status bq_cuda_norm_pieces(const bq_cuda_w *w, float *x, const float *res, unsigned long long *bad, const float *nw, const float *nb,
                              float *y, int rows, float eps, int layernorm)
{
    (void)w; (void)x; (void)res; (void)bad; (void)nw; (void)nb; (void)y; (void)rows; (void)eps; (void)layernorm;
    return none();
}
bq_status bq_cuda_act_pieces(const bq_cuda_w *w, float *u, const float *g, int rows, int act)
{
    (void)w; (void)u; (void)g; (void)rows; (void)act;
    return none();
}
bq_status bq_cuda_gemv_multi_ready(const bq_cuda_w *const *ws, int count, const float *x, int n, float *const *ys)
{
    (void)ws; (void)count; (void)x; (void)n; (void)ys;
    return none();
}
bq_status bq_cuda_w_to_bf16(const bq_cuda_w *w, void *d_out) { (void)w; (void)d_out; return none(); }
bq_status bq_cuda_w_to_f32(const bq_cuda_w *w, float *d_out) { (void)w; (void)d_out; return none(); }
bq_status bq_cuda_gemm_mx8(int kind, const void *a, const uint8_t *sa, const void *b, const uint8_t *sb, float *c, int M,
                           int N, int K)
{
    (void)kind; (void)a; (void)sa; (void)b; (void)sb; (void)c; (void)M; (void)N; (void)K;
    return none();
}
bq_status bq_cuda_gptq(int ordinal, const bq_format *f, float *w, int rows, int cols, const double *gram, int B, int lazy,
                       bq_group_fn clip, const double *imp, const bq_gptq_pins *pins,
                       const bq_qopts *o, double *damp)
{
    (void)ordinal; (void)f; (void)w; (void)rows; (void)cols; (void)gram; (void)B; (void)lazy; (void)clip; (void)imp; (void)pins; (void)o;
    (void)damp;
    return none();
}
bq_status be_cuda_new(const bq_model *m, int T, int dev, int lo, int hi, be **out)
{
    (void)m; (void)T; (void)dev; (void)lo; (void)hi;
    *out = NULL;
    return none();
}
size_t be_cuda_bytes(const be *b) { (void)b; return 0; }
int be_cuda_ordinal(const be *b) { (void)b; return -1; }
bq_status tr_cuda_new(int device, int T, int half, const float *rc, const float *rs, int tf32, tr_be **out)
{
    (void)device; (void)T; (void)half; (void)rc; (void)rs; (void)tf32;
    *out = NULL;
    return none();
}
