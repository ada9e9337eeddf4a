/* Rotation of the residual stream (`--ptq rotate[:seed]`; QuaRot, SpinQuant's
 * starting point): for an RMSNorm pre-norm transformer, x -> x Q with Q orthogonal
 * changes nothing in the float model once each norm's weight is folded into the
 * linears that read its output (RMS(x Q) = RMS(x)), and it spreads the residual's
 * outlier channels over all channels, so per-token or per-block activation and
 * weight formats lose less. Q here is a random orthogonal matrix (QR of a Gaussian
 * one, seeded; QuaRot's randomised Hadamard matrices need sizes like 2^k or 12 * 2^k).
 *   linears reading the stream (q, k, v, gate, up, LM head):   W -> W Q
 *   linears writing it (o, down; their biases b -> b Q):        W -> Q^T W
 *   token embedding rows:                                       E -> E Q
 * Refused: LayerNorm models (the mean it subtracts is not rotation invariant),
 * learned position embeddings' models, projections in/out of the stream (OPT-350m).
 *
 * Online rotation of down_proj's input (`--ptq hadamard[:seed]`, QuaRot's online
 * Hadamard): the MLP's inner activation x goes through an orthogonal M in the
 * forward pass (model_rot_rows, a backend op) and down_proj's weight rows through
 * the same M (y = x W^T = (x M)(W M)^T), so the float model is unchanged and the
 * input down_proj's activation format sees has its outliers spread over all of
 * its channels. M = sign flips, then B kron H_p / sqrt(p) for n = p * m: the fast
 * Walsh-Hadamard transform over p = 2^k chunks and an m x m block B, a Hadamard
 * matrix (hadamard.c: Paley I and II, Williamson) of order 4 x the odd part x 2^j
 * where one is known (12, 20, 28, 36, 52, 60, 108, 140, 156, 172 x 2^k; LLaMA-2's
 * 11008 = 64 x 172), else a seeded random orthogonal matrix on the odd part: any n
 * whose odd part is at most 1024.
 *
 * `--ptq hadamard_kv[:seed]` (QuaRot's rotations of the KV cache): an orthogonal M
 * of head_dim (the same construction) applied online to every head's Q and K after
 * RoPE (Q K^T unchanged), and folded into V: v_proj's rows of each KV head W_h ->
 * M^T W_h (and its bias), o_proj's columns of each query head W_o,h -> W_o,h M, so
 * P V M M^T = P V. The K and V the cache quantises (--kv) and the attention
 * operands (--attn) are the rotated ones. */
#include "quant.h"
#include "backend.h"
#include "pmat.h"
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

extern void dgeqrf_(const int *m, const int *n, double *a, const int *lda, double *tau, double *work, const int *lwork, int *info);
extern void dorgqr_(const int *m, const int *n, const int *k, double *a, const int *lda, const double *tau, double *work,
                    const int *lwork, int *info);

/* A seeded n x n orthogonal matrix (float32, row-major). */
static bq_status random_orthogonal(int n, uint64_t seed, float *Q)
{
    size_t nn = (size_t)n * n;
    double *a = malloc(nn * sizeof *a), *tau = malloc((size_t)n * sizeof *tau), *work = NULL;
    bq_status st = a && tau ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory");
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < nn && !st; i += 2) {  /* Box-Muller on a xorshift64* stream */
        double u[2];
        for (int k = 0; k < 2; k++) {
            s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
            u[k] = ((double)((s * 0x2545F4914F6CDD1Dull) >> 11) + 0.5) * 0x1p-53;
        }
        double r = sqrt(-2 * log(u[0]));
        a[i] = r * cos(2 * M_PI * u[1]);
        if (i + 1 < nn) a[i + 1] = r * sin(2 * M_PI * u[1]);
    }
    int info = 0, lwork = 64 * n;
    if (!st && !(work = malloc((size_t)lwork * sizeof *work))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    if (!st) dgeqrf_(&n, &n, a, &n, tau, work, &lwork, &info);
    if (!st && !info) dorgqr_(&n, &n, &n, a, &n, tau, work, &lwork, &info);
    if (!st && info) st = bq_fail(BQ_ERR_ARG, "rotate: LAPACK failed to make an orthogonal matrix (info %d)", info);
    for (size_t i = 0; i < nn && !st; i++) Q[i] = (float)a[i];
    free(a); free(tau); free(work);
    return st;
}

/* w [rows][H] -> w Q (right), or [H][cols] -> Q^T w (left). */
static bq_status rotate_mat(float *w, int rows, int cols, const float *Q, int H, int left)
{
    float *t = malloc((size_t)rows * cols * sizeof *t);
    if (!t) return bq_fail(BQ_ERR_NOMEM, "out of memory rotating a %dx%d matrix", rows, cols);
    if (left) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, H, cols, H, 1.0f, Q, H, w, cols, 0.0f, t, cols);
    else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, H, H, 1.0f, w, H, Q, H, 0.0f, t, H);
    memcpy(w, t, (size_t)rows * cols * sizeof *t);
    free(t);
    return BQ_OK;
}

/* A norm's weight into the columns of the linears reading its output; the norm's becomes 1. */
static void fold_norm(normp *n, linear **ls, int nl, int H)
{
    for (int i = 0; i < nl; i++)
        for (int r = 0; r < ls[i]->out; r++)
            for (int j = 0; j < H; j++) ls[i]->w[(size_t)r * H + j] *= n->w[j];
    for (int j = 0; j < H; j++) n->w[j] = 1.0f;
}

bq_status ptq_rotate(bq_model *m, uint64_t seed)
{
    const bq_config *c = &m->c;
    int H = c->hidden, L = c->layers;
    if (c->norm != NORM_RMS || !c->pre_norm)
        return bq_fail(BQ_ERR_UNSUPPORTED, "rotate: needs a pre-norm model with RMSNorm (LayerNorm's mean is not rotation invariant)");
    if (m->pos_emb || c->embed_dim != H || LINEAR_PRESENT(&m->proj_in))
        return bq_fail(BQ_ERR_UNSUPPORTED, "rotate: learned positions or projections into the residual stream are not rotated yet");
    if (!m->tok_emb && !pmat_is_float16(m->emb_p)) return bq_fail(BQ_ERR_ARG, "rotate: the embedding is already packed; rotate the float model");
    bq_status st = ptq_float_embedding(m);
    /* tied: the head takes the final norm, the embedding does not */
    if (!st && m->head.w == m->tok_emb) st = ptq_untie_head(m);
    if (st) return st;
    float *Q = malloc((size_t)H * H * sizeof *Q);
    st = Q ? random_orthogonal(H, seed, Q) : bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int i = 0; i < L && !st; i++) {
        layer_w *Lw = &m->L[i];
        linear *all[] = {&Lw->q, &Lw->k, &Lw->v, &Lw->o, &Lw->gate, &Lw->up, &Lw->down};
        for (int k = 0; k < 7 && !st; k++)
            if (LINEAR_PRESENT(all[k])) st = ptq_float_weights(all[k]);
        if (st) break;
        linear *attn_in[3], *mlp_in[2];
        int na = 0, nm = 0;
        for (int k = 0; k < 3; k++) if (LINEAR_PRESENT(all[k])) attn_in[na++] = all[k];
        if (LINEAR_PRESENT(&Lw->gate)) mlp_in[nm++] = &Lw->gate;
        if (LINEAR_PRESENT(&Lw->up)) mlp_in[nm++] = &Lw->up;
        if (!Lw->ln1.w || !Lw->ln2.w || Lw->ln1.b || Lw->ln2.b) { st = bq_fail(BQ_ERR_UNSUPPORTED, "rotate: layer %d's norms have no weight or a bias", i); break; }
        fold_norm(&Lw->ln1, attn_in, na, H);
        fold_norm(&Lw->ln2, mlp_in, nm, H);
        for (int k = 0; k < na && !st; k++) st = rotate_mat(attn_in[k]->w, attn_in[k]->out, H, Q, H, 0);
        for (int k = 0; k < nm && !st; k++) st = rotate_mat(mlp_in[k]->w, mlp_in[k]->out, H, Q, H, 0);
        linear *outs[] = {&Lw->o, &Lw->down};
        for (int k = 0; k < 2 && !st; k++) {
            st = rotate_mat(outs[k]->w, H, outs[k]->in, Q, H, 1);
            if (!st && outs[k]->b) st = rotate_mat(outs[k]->b, 1, H, Q, H, 0);
        }
    }
    if (!st && !(st = ptq_float_weights(&m->head))) {
        linear *head = &m->head;
        if (c->final_norm && m->final_ln.w) fold_norm(&m->final_ln, &head, 1, H);
        st = rotate_mat(m->head.w, m->head.out, H, Q, H, 0);
    }
    if (!st) st = rotate_mat(m->tok_emb, c->vocab, H, Q, H, 0);
    free(Q);
    return st;
}

bq_status rot_make(int n, uint64_t seed, bq_rot **out)
{
    *out = NULL;
    if (n < 1) return bq_fail(BQ_ERR_ARG, "hadamard: no inputs to rotate");
    int p = 1, o = n;
    while (o % 2 == 0) { o /= 2; p *= 2; }
    if (o > 1024)
        return bq_fail(BQ_ERR_UNSUPPORTED, "hadamard: %d inputs = %d x %d; an odd part over 1024 would cost %d products an input online", n, p, o, o);
    bq_rot *r = calloc(1, sizeof *r);
    if (!r) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    r->n = n; r->p = p; r->m = o;
    r->sign = malloc((size_t)n * sizeof *r->sign);
    bq_status st = r->sign ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory");
    uint64_t s = seed * 0xD1B54A32D192ED03ull + 0x8BB84B93962EACC9ull;
    for (int i = 0; i < n && !st; i++) {  /* xorshift64*: its top bit */
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
        r->sign[i] = (s * 0x2545F4914F6CDD1Dull) >> 63 ? -1.0f : 1.0f;
    }
    /* a Hadamard block of order 4 o 2^j taken from the power of two where one is known,
     * else a random orthogonal block on the odd part */
    for (int m = 4 * o, made = 0; !st && o > 1 && !made && p % (m / o) == 0; m *= 2) {
        if (!(r->B = malloc((size_t)m * m * sizeof *r->B))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        else if ((made = hadamard_block(m, r->B, &st))) { r->m = m; r->p = p / (m / o); }
        else { free(r->B); r->B = NULL; }
    }
    if (!st && o > 1 && !r->B) {
        if (!(r->B = malloc((size_t)o * o * sizeof *r->B))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        else st = random_orthogonal(o, seed + 1, r->B);
    }
    if (st) { model_rot_free(r); return st; }
    *out = r;
    return BQ_OK;
}

bq_status ptq_hadamard(bq_model *m, uint64_t seed)
{
    if (m->rot_down) return bq_fail(BQ_ERR_ARG, "hadamard: down_proj's input is already rotated online");
    const int L = m->c.layers, n = m->c.inter;
    for (int i = 0; i < L; i++) {
        const linear *d = &m->L[i].down;
        if (!LINEAR_PRESENT(d) || d->in != n)
            return bq_fail(BQ_ERR_UNSUPPORTED, "hadamard: layer %d has no down projection of %d inputs", i, n);
        if (d->lr_rank) return bq_fail(BQ_ERR_ARG, "hadamard: %s has LoRC factors; rotate before lorc", d->name);
    }
    bq_rot *r;
    bq_status st = rot_make(n, seed, &r);
    for (int i = 0; i < L && !st; i++) {
        linear *d = &m->L[i].down;
        if ((st = ptq_float_weights(d))) break;
        rot_job j = {r, d->w, 0};  /* (d->in == r->n) */
        bq_parallel_for((size_t)d->out, 0, model_rot_range, &j);
        if (j.oom) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    }
    if (st) { model_rot_free(r); return st; }
    m->rot_down = r;
    return BQ_OK;
}

/* v [rows][cols]: each column's slice [r0, r0 + d) through r (as a row vector). */
static bq_status rot_columns(const bq_rot *r, float *w, int cols, int r0)
{
    int d = r->n;
    float *col = malloc((size_t)d * sizeof *col), *tmp = malloc((size_t)r->m * sizeof *tmp);
    if (!col || !tmp) { free(col); free(tmp); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    for (int c = 0; c < cols; c++) {
        for (int i = 0; i < d; i++) col[i] = w[(size_t)(r0 + i) * cols + c];
        model_rot_rows(r, col, 1, tmp);
        for (int i = 0; i < d; i++) w[(size_t)(r0 + i) * cols + c] = col[i];
    }
    free(col);
    free(tmp);
    return BQ_OK;
}

bq_status ptq_hadamard_kv(bq_model *m, uint64_t seed)
{
    if (m->rot_qk) return bq_fail(BQ_ERR_ARG, "hadamard_kv: the heads are already rotated online");
    const bq_config *c = &m->c;
    const int L = c->layers, d = c->head_dim;
    for (int i = 0; i < L; i++) {
        const linear *v = &m->L[i].v, *o = &m->L[i].o;
        if (!LINEAR_PRESENT(v) || !LINEAR_PRESENT(o) || v->out != c->kv_heads * d || o->in != c->heads * d)
            return bq_fail(BQ_ERR_UNSUPPORTED, "hadamard_kv: layer %d's v_proj and o_proj are not %d heads of %d", i, c->kv_heads, d);
        if (v->lr_rank || o->lr_rank) return bq_fail(BQ_ERR_ARG, "hadamard_kv: layer %d has LoRC factors; rotate before lorc", i);
    }
    bq_rot *r;
    bq_status st = rot_make(d, seed, &r);
    float *tmp = st ? NULL : malloc((size_t)r->m * sizeof *tmp);
    if (!st && !tmp) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int i = 0; i < L && !st; i++) {
        linear *v = &m->L[i].v, *o = &m->L[i].o;
        if ((st = ptq_float_weights(v)) || (st = ptq_float_weights(o))) break;
        for (int h = 0; h < c->kv_heads && !st; h++) {
            st = rot_columns(r, v->w, v->in, h * d);
            if (!st && v->b) model_rot_rows(r, v->b + (size_t)h * d, 1, tmp);
        }
        for (int row = 0; row < o->out && !st; row++)  /* each query head's slice of each row */
            model_rot_rows(r, o->w + (size_t)row * o->in, (size_t)c->heads, tmp);
    }
    free(tmp);
    if (st) { model_rot_free(r); return st; }
    m->rot_qk = r;
    return BQ_OK;
}
