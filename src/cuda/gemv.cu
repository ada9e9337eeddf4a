// Matrix-vector products on packed weights (generation: up to 16 tokens, 4 a pass
// on the tensor cores).
//
// 8-bit codes (and 4-bit codes of other grids): one warp per 4 rows, each lane
// streaming 16 bytes of codes at a time and decoding them in registers
// (gemv_kernel). Device layout, per row: the element codes (4-bit: two per byte,
// element 2j in the low nibble; 8-bit: one per byte), then separately the scale
// codes [rows][blocks] (1 byte, or 2 for fp16).
//
// 4-bit codes of the e2m1 grid (MXFP4, NVFP4) or of small integers (int4, BFP4),
// and 6-bit MXFP6 codes: the tensor cores (gemv_tc, below). A float FMA per weight keeps a warp busier
// than the memory system at 4 bits a weight, so the codes become fp16 with two
// or three integer instructions per pair and an fp16 MMA multiplies them. The
// activations are split into three fp16 pieces (hi + mid + lo, after a
// power-of-two scale per 64 elements), so the products keep float32's precision.
//
// value = lut[code] * factor(scale), factor = (s1 * s2) * emult as on the CPU (pmat.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>
extern "C" {
#include "bq_cuda.h"
#include "backend.h"  /* mlp_act */
}
#include "launch.cuh"
#include "norm.cuh"
#include "i8_layout.h"
#include "knobs.h"

struct bq_cuda_w {
    int rows, cols, eb, K, nb, sbytes;
    float emult;
    uint8_t *codes, *scales;   // device
    float *d_factor;           // device: 256 factors for 1-byte scales
    signed char lut[16];       // 4-bit code -> integer
    size_t bytes;
    // tensor-core layout (tc != 0): 1 = e2m1 nibbles, 2 = integer nibbles (v + 8),
    // 3 = 6-bit codes (low nibbles as the others, top bits in `hi`) through a table,
    // 6 and 7 = 6-bit minifloat codes (e2m3, e3m2) put into fp16 by their bits (mf6_view)
    int tc, NT, R16, SBT;      // 64-column tiles, rows padded to 16, scale bytes per row and tile
    int KT;                    // columns a stored scale covers inside a tile: K, or 64 for blocks of 64 and more
                               // (int groups with float32 scales: each tile holds its group's scale)
    float cmode;               // weight = fp16(nibble) * cmode * factor
    uint2 *hi;                 // 6-bit codes (tc 3, 6, 7): their top two bits, per lane and tile
    unsigned short *lut6;      //   and code -> fp16 value (64 entries)
    unsigned short lut6_host[64];  //   (the same, for same_layout)
    int i8;                    // int8 tensor-core layout (i8_layout.h): mode 8, 4 or 5 (4-bit offset nibbles); tc is 0 then
    uint32_t tab4[4];          //   4-bit codes: the slots' byte tables (i8_slots4)
    int ks;                    // column splits of the tensor-core GEMV (gemv_splits)
    int i8pf;                  // gemv_i8's PF: 0, 1, 2 only unsplit (experiment: BQ_CUDA_I8_PF at upload, knobs.h)
    int pdl;                   // launched programmatically (launch.cuh): on unless bq_cuda_w_set_pdl turned it off
    uint32_t *xf;              // device scratch (unsplit): activation pieces in B-fragment order
    float *xs;                 //   and their power-of-two factor per tile and column
    float *part;               // device scratch (split): the splits' partial sums [ks][n][rows]
    unsigned *count;           //   and per row block the splits done (zero between calls)
};

extern "C" size_t bq_cuda_w_bytes(const bq_cuda_w *w) { return w->bytes; }
extern "C" void bq_cuda_w_set_pdl(bq_cuda_w *w, int on) { w->pdl = on != 0; }

// Column splits for the tensor-core GEMV: a CTA takes 32 rows, so a matrix of a
// few thousand rows fills only one CTA per SM, too few loads in flight to reach
// the memory's bandwidth (4096x4096: 14% of copy). Matrices under two CTAs an SM
// split their tiles over up to 8 CTAs until about four an SM run, each keeping at
// least 16 tiles (two a warp); the partial sums are added in a fixed order (the
// end of gemv_tc), so the result depends on the shape only. (11008 rows, 2.6 CTAs
// an SM, measured slower split in two.) gemv_i8 on offset nibbles (64 registers: four CTAs
// an SM do fit) takes as many splits as fit one wave of four an SM: 4096x11008 in 4 instead of
// 5, +25% on the H200 (bench/RESULTS.md, twenty-fourth session); the other int8 kernels hold
// 70-80 registers, three CTAs an SM, where neither count is one wave and one fewer split
// measured 0 to -4%.
static int gemv_splits(const bq_cuda_w *w)
{
    int sms = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess || sms < 1) sms = 132;
    int ctas = (w->R16 / 16 + 1) / 2, want = 4 * sms;
    if (ctas >= 2 * sms) return 1;
    int ks = w->i8 == 5 ? want / ctas : (want + ctas - 1) / ctas;
    ks = ks < 8 ? ks : 8;
    while (ks > 1 && w->NT / ks < 16) ks--;
    return ks;
}

extern "C" void bq_cuda_w_free(bq_cuda_w *w)
{
    if (!w) return;
    bq_cuda_free(w->codes);
    bq_cuda_free(w->scales);
    bq_cuda_free(w->d_factor);
    bq_cuda_free(w->count);
    bq_cuda_free(w->xf);
    bq_cuda_free(w->xs);
    bq_cuda_free(w->part);
    bq_cuda_free(w->hi);
    bq_cuda_free(w->lut6);
    free(w);
}

// Which fp16 view the 4-bit grid allows: 1 when lut = m2 * 2 * e2m1 (nibble =
// the e2m1 code), 2 when lut = m * v with v in [-8, 7] (nibble = v + 8); 0 if
// neither. nib[c] is the stored nibble of code c, *cmode the factor from the
// fp16 value back to lut units (powers of two only).
static int tc_mode(const int8_t *lut, uint8_t nib[16], float *cmode)
{
    static const int e2x[8] = {0, 1, 2, 3, 4, 6, 8, 12};  // 2 * e2m1 magnitude
    for (int m = 1; m <= 4; m *= 2) {
        int ok = 1;
        for (int c = 0; c < 16 && ok; c++) {
            int v = lut[c] / m;
            ok = lut[c] % m == 0 && v >= -8 && v <= 7;
            nib[c] = (uint8_t)(v + 8);
        }
        if (ok) { *cmode = (float)m; return 2; }
    }
    for (int m = 1; m <= 4; m *= 2) {
        int ok = 1;
        for (int c = 0; c < 16 && ok; c++) {
            int a = lut[c] < 0 ? -lut[c] : lut[c], e = -1;
            for (int i = 0; i < 8; i++) if (a == m * e2x[i]) e = i;
            ok = e >= 0;
            nib[c] = (uint8_t)(e | (lut[c] < 0 ? 8 : 0));
        }
        // fp16 bits of code e (sign at 15, e1 e0 m at 11..9) = e2m1 * 2^-14
        if (ok) { *cmode = (float)m * 2.0f * 16384.0f; return 1; }
    }
    return 0;
}

// Row r's block scales sc into the tiles' scale slots (both tensor-core layouts):
// [G][T][16 rows][SBT bytes], block b's scale in each slot of KT columns it covers.
static void tile_scales(uint8_t *tsc, const bq_cuda_w *w, int r, const uint32_t *sc)
{
    int G = r / 16, rr = r % 16;
    for (int b = 0; b < w->nb; b++)
        for (int k0 = b * w->K; k0 < (b + 1) * w->K && k0 < w->NT * 64; k0 += w->KT) {
            int T = k0 / 64, bt = (k0 % 64) / w->KT;
            memcpy(tsc + (((size_t)G * w->NT + T) * 16 + rr) * w->SBT + bt * w->sbytes, &sc[b], (size_t)w->sbytes);
        }
}

// A 6-bit code's bit 4 at bit 0 and its sign (bit 5) at bit 4 (tc 6, 7).
static uint32_t mf6_top(uint8_t c) { return (uint32_t)((c >> 4 & 1) | (c >> 5 & 1) << 4); }

// Tensor-core layout: 16-row groups G, 64-column tiles T, 512 bytes each; lane
// (g, t) of a warp reads 16 bytes: word s holds its A fragment of k-step s of the
// m16n8k16 MMA, half2 j (j = row g / g+8 + 2 * (k+8)) in nibbles j (low half) and
// j + 4 (high half). Scales: [G][T][16 rows][SBT bytes]. Row r's codes go in as
// their low four bits; with `hi` (6-bit codes), the top two bits go to that plane,
// 8 bytes per lane and tile. Through the table (tc 3): word s in bits 16s..16s+15,
// half2 j's low and high element at bits 4j and 4j + 2. By their bits (tc 6, 7):
// words s and s + 1 (s even) in the 32 bits at byte 2s, the low element's code bit 4
// at bit q = j + 8 (s % 2) and its sign at q + 4, the high element's at q + 16 and
// q + 20 (half2_mf6: one shift places both elements' bits). cols % 16 == 0 (every
// caller's formats need cols % 32).
static void tc_place(uint8_t *tiles, uint8_t *hi, uint8_t *tsc, const bq_cuda_w *w, int r, const uint8_t *code, const uint32_t *sc)
{
    int G = r / 16, rr = r % 16;
    // 16 codes at a time: lane t of the row's eight-lane group takes codes 2t, 2t + 8, 2t + 1,
    // 2t + 9 of each 16 (half2 j = jr, jr + 2, jr, jr + 2 with jr = rows 8-15; the odd codes
    // the high halves) into its word's bytes 0-3, in the low nibbles for rows 0-7 of the group
    // and the high ones for rows 8-15; 6-bit codes' top bits into their plane likewise
    int sh = rr >= 8 ? 4 : 0, jr = rr >= 8;
    uint8_t keep = (uint8_t)~(0xF << sh);
    for (int k0 = 0; k0 < w->cols; k0 += 16) {
        const uint8_t *c = code + k0;
        int s = (k0 % 64) / 16;
        size_t at0 = ((size_t)G * w->NT + k0 / 64) * 32 + (size_t)(rr % 8) * 4;
        for (int t = 0; t < 4; t++) {
            uint8_t *word = tiles + (at0 + t) * 16 + s * 4;
            const uint8_t c0 = c[2 * t], c1 = c[2 * t + 1], c8 = c[2 * t + 8], c9 = c[2 * t + 9];
            word[0] = (uint8_t)((word[0] & keep) | (c0 & 15) << sh);
            word[1] = (uint8_t)((word[1] & keep) | (c8 & 15) << sh);
            word[2] = (uint8_t)((word[2] & keep) | (c1 & 15) << sh);
            word[3] = (uint8_t)((word[3] & keep) | (c9 & 15) << sh);
            if (!hi) continue;
            if (w->tc == 3) {  // at bit 4j (+ 2 for odd codes) of word s's 16 bits
                uint16_t v, m = (uint16_t)(0x0F0F << 4 * jr);
                uint8_t *p = hi + (at0 + t) * 8 + s * 2;
                memcpy(&v, p, 2);
                v = (uint16_t)((v & ~m) | ((c0 >> 4) | (c1 >> 4) << 2 | (c8 >> 4) << 8 | (c9 >> 4) << 10) << 4 * jr);
                memcpy(p, &v, 2);
            } else {  // code bit 4 at q = jr + 8 (s % 2) (+ 2 for codes 8-15, + 16 for odd codes), its sign at q + 4
                uint32_t v, m = 0x00550055u << (jr + 8 * (s % 2));
                uint8_t *p = hi + (at0 + t) * 8 + (s / 2) * 4;
                uint32_t b = mf6_top(c0) | mf6_top(c8) << 2 | mf6_top(c1) << 16 | mf6_top(c9) << 18;
                memcpy(&v, p, 4);
                v = (v & ~m) | b << (jr + 8 * (s % 2));
                memcpy(p, &v, 4);
            }
        }
    }
    tile_scales(tsc, w, r, sc);
}

// The tensor-core layout's shape, from rows, cols, K and sbytes.
static void tc_shape(bq_cuda_w *w)
{
    w->NT = (w->cols + 63) / 64;
    w->R16 = (w->rows + 15) / 16 * 16;
    w->SBT = (64 / w->KT) * w->sbytes;
}

// The host layout to the device: codes, scales, the 256 scale factors, for 6-bit
// codes their top bits and table, and the GEMV's scratch (tensor-core layouts).
static bq_status w_to_device(bq_cuda_w *w, const uint8_t *codes, size_t ncode, const uint8_t *scales, size_t nscale,
                             const float *fac, const uint8_t *hi, size_t nhi, const unsigned short *lut6)
{
    bq_status st = bq_cuda_malloc((void **)&w->codes, ncode);
    if (!st) st = bq_cuda_malloc((void **)&w->scales, nscale);
    if (!st) st = bq_cuda_malloc((void **)&w->d_factor, 256 * sizeof(float));
    if (!st) st = bq_cuda_upload(w->codes, codes, ncode);
    if (!st) st = bq_cuda_upload(w->scales, scales, nscale);
    if (!st) st = bq_cuda_upload(w->d_factor, fac, 256 * sizeof(float));
    if (!st && hi) st = bq_cuda_malloc((void **)&w->hi, nhi);
    if (!st && hi) st = bq_cuda_malloc((void **)&w->lut6, 64 * sizeof *lut6);
    if (!st && hi) st = bq_cuda_upload(w->hi, hi, nhi);
    if (!st && hi) st = bq_cuda_upload(w->lut6, lut6, 64 * sizeof *lut6);
    if (!st && hi) memcpy(w->lut6_host, lut6, sizeof w->lut6_host);
    int tcs = w->tc || w->i8;  // either tensor-core layout: activation scratch (int8: 16 of these 32 bytes)
    if (!st && tcs) st = bq_cuda_malloc((void **)&w->xf, (size_t)2 * w->NT * 32 * 32);  // up to 2 n8 blocks
    if (!st && tcs) st = bq_cuda_malloc((void **)&w->xs, (size_t)2 * w->NT * 8 * sizeof(float));
    if (!st && tcs && (w->ks = gemv_splits(w)) > 1) {
        size_t ctas = (size_t)(w->R16 / 16 + 1) / 2;
        st = bq_cuda_malloc((void **)&w->part, (size_t)w->ks * 4 * w->rows * sizeof(float));
        if (!st) st = bq_cuda_malloc((void **)&w->count, ctas * sizeof(unsigned));
        if (!st && cudaMemset(w->count, 0, ctas * sizeof(unsigned)) != cudaSuccess)
            st = bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV: clearing counters: %s", cudaGetErrorString(cudaGetLastError()));
    }
    w->bytes = ncode + nscale + nhi;
    return st;
}

static bq_status upload6(const pmat *m, bq_cuda_w **out);

// Rows of 16-row groups [g0, g1) from the CPU's panels (or, for 6-bit codes, its
// bit stream: rows of prb bytes at stream) into the device layout.
struct place_job {
    const pmat *m; const bq_cuda_w *w; size_t rb, sb; const uint8_t *nib;
    uint8_t *codes, *scales, *hi; const uint8_t *stream; size_t prb; int oom;
};

static void place_rows(void *arg, size_t g0, size_t g1)
{
    place_job *j = (place_job *)arg;
    const pmat *m = j->m;
    uint8_t *ec = (uint8_t *)malloc((size_t)m->cols);
    uint32_t *sc = (uint32_t *)malloc((size_t)j->w->nb * 4);
    if (!ec || !sc) { free(ec); free(sc); j->oom = 1; return; }
    for (int r = (int)g0 * 16; r < (int)g1 * 16 && r < m->rows; r++) {
        if (j->hi) {  // 6-bit codes (upload6)
            pack_row_codes(m->f, j->stream + (size_t)r * j->prb, (size_t)m->cols, sc, ec);
            tc_place(j->codes, j->hi, j->scales, j->w, r, ec, sc);
            continue;
        }
        pmat_row_codes(m, r, sc, ec);
        if (j->w->i8) {  // 8-bit: the integers; 4-bit: the slots
            for (int k = 0; k < m->cols; k++) ec[k] = j->w->i8 == 8 ? (uint8_t)m->lut[ec[k]] : j->nib[ec[k]];
            i8_place_row(j->codes, j->w->i8, j->w->NT, r, m->cols, ec);
            tile_scales(j->scales, j->w, r, sc);
            continue;
        }
        if (j->w->tc) {
            for (int k = 0; k < m->cols; k++) ec[k] = j->nib[ec[k]];
            tc_place(j->codes, NULL, j->scales, j->w, r, ec, sc);
            continue;
        }
        uint8_t *cr = j->codes + (size_t)r * j->rb;
        if (m->eb == 8) memcpy(cr, ec, (size_t)m->cols);
        else for (int k = 0; k < m->cols; k += 2) cr[k / 2] = (uint8_t)(ec[k] | ec[k + 1] << 4);
        for (int g = 0; g < m->nb; g++) memcpy(j->scales + (size_t)r * j->sb + (size_t)g * m->sbytes, &sc[g], (size_t)m->sbytes);
    }
    free(ec);
    free(sc);
}

// The tensor-core layouts hold e2m1 and 6-bit minifloat codes as fp16 values 2^-14 or
// so times the grid's (cmode brings them back). Where cmode comes back at the end of the
// sums, the sums run 2^-14 below the output, and outputs under about 2^-112 lose bits
// as float subnormals; where it comes into the blocks' factors, the sums run as the
// grid values' would, but a factor over about 2^113 times cmode is Inf. So the factors
// take cmode (the device table for 1-byte scales, emult for the others) where the
// matrix's largest block factor is at most 2^100, as any real checkpoint's is, and
// cmode stays at the end for the rest: weights near float's top (test_cuda's gemv_extreme
// checks both ends). fac: the 256 factors of 1-byte scale codes, tsc the tile scales.
static void fold_cmode(bq_cuda_w *w, const uint8_t *tsc, size_t nscale, float *fac)
{
    if (!w->tc || w->cmode == 1.0f) return;
    const int sb = w->sbytes;
    float top = 0.0f;
    for (size_t i = 0; i + sb <= nscale; i += sb) {
        uint32_t code = 0;
        memcpy(&code, tsc + i, (size_t)sb);
        float f = sb == 1 ? fac[code] : sb == 2 ? __half2float(__ushort_as_half((unsigned short)code)) * w->emult : 0.0f;
        if (sb == 4) { memcpy(&f, &code, 4); f *= w->emult; }
        if (fabsf(f) > top) top = fabsf(f);  // (NaN scales give NaN either way)
    }
    if (top > 0x1p100f) return;
    if (sb == 1) for (int c = 0; c < 256; c++) fac[c] *= w->cmode;  // (codes this matrix does not use may go to Inf: never read)
    else w->emult *= w->cmode;
    w->cmode = 1.0f;
}

// w's codes and scales laid out by place_rows (16-row groups over all cores, a
// tile's rows sharing bytes, straight from the panels; codes first filled with the
// byte pad) and taken to the device: *out = w, or w freed on failure.
static bq_status place_upload(const pmat *m, bq_cuda_w *w, size_t rb, size_t sb, const uint8_t *nib, size_t ncode, size_t nscale, int pad,
                              bq_cuda_w **out)
{
    uint8_t *codes = (uint8_t *)calloc(ncode, 1), *scales = (uint8_t *)calloc(nscale, 1);
    bq_status st = codes && scales ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory");
    if (!st && pad) memset(codes, pad, ncode);
    if (!st) {
        place_job pj = {m, w, rb, sb, nib, codes, scales, NULL, NULL, 0, 0};
        bq_parallel_for(((size_t)m->rows + 15) / 16, (size_t)m->rows * m->cols < (1u << 22) ? 1 : 0, place_rows, &pj);
        if (pj.oom) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    }
    float fac[256];
    memcpy(fac, m->sc, sizeof fac);
    if (!st) fold_cmode(w, scales, nscale, fac);
    if (!st) st = w_to_device(w, codes, ncode, scales, nscale, fac, NULL, 0, NULL);
    free(codes); free(scales);
    if (st) { bq_cuda_w_free(w); return st; }
    *out = w;
    return BQ_OK;
}

// 6-bit minifloat codes by their bits (tc 6, 7): code c's fp16 bits are the sign at bit
// 15 and the five magnitude bits at P..P + 4 (P = 7: e2m3, exponent bits 11..10; P = 8:
// e3m2, 12..10), which is c's value times 2^-14 (e2m3) or 2^-12 (e3m2), subnormals
// included, as both formats share fp16's subnormal rule. *cmode: that factor's
// inverse, where every one of the 64 values is exactly fp16 * cmode; 0 if no P gives it.
static unsigned short mf6_bits(int c, int P) { return (unsigned short)((c & 32 ? 0x8000 : 0) | (c & 31) << P); }
static int mf6_view(const float *vlut, float *cmode)
{
    for (int P = 7; P <= 8; P++) {
        float cm = vlut[1] / __half2float(__ushort_as_half(mf6_bits(1, P)));
        int ok = cm > 0.0f && cm == ldexpf(1.0f, ilogbf(cm));  // (a power of two)
        for (int c = 0; c < 64 && ok; c++) ok = __half2float(__ushort_as_half(mf6_bits(c, P))) * cm == vlut[c];
        if (ok) { *cmode = cm; return P == 7 ? 6 : 7; }
    }
    return 0;
}

// The fp16 tensor-core layout (4-bit codes), the 6-bit one, or rows (8-bit codes).
static bq_status upload_fp16(const pmat *m, bq_cuda_w **out)
{
    *out = NULL;
    if (m->kind == PM_STREAM && m->fast_stream && m->f->el.bits == 6) return upload6(m, out);
    // 4-bit int groups of 64, 128, ... with float32 scales (int4_g128): the tensor-core layout, a scale per tile
    int wide = m->kind == PM_PANEL && m->eb == 4 && m->K % 64 == 0 && m->sbytes == 4 && format_float_scale(m->f);
    if (m->kind != PM_PANEL || m->cols % 32 || (!wide && ((m->K != 16 && m->K != 32) || (m->sbytes != 1 && !(m->sbytes == 2 && m->f->scale.ebits == 5)))))
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV: format %s at %dx%d is not supported (4/8-bit codes, blocks of 16 or 32, 8-bit or fp16 scales, "
                       "or 4-bit int groups of a multiple of 64 with float32 scales; cols %% 32 == 0)", m->f->name, m->rows, m->cols);
    if (m->eb == 8 && m->f->el.signmag)
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV: 8-bit sign-magnitude codes (%s) are not supported", m->f->name);
    bq_cuda_w *w = (bq_cuda_w *)calloc(1, sizeof *w);
    if (!w) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    w->rows = m->rows; w->cols = m->cols; w->eb = m->eb; w->K = m->K; w->nb = m->nb; w->sbytes = m->sbytes; w->pdl = 1;
    w->KT = m->K >= 64 ? 64 : m->K;
    w->emult = m->emult;
    memcpy(w->lut, m->lut, 16);
    uint8_t nib[16];
    if (m->eb == 4 && (64 / w->KT) * m->sbytes <= 4) w->tc = tc_mode(m->lut, nib, &w->cmode);
    if (wide && !w->tc) {
        free(w);
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV: %s's codes are not a small integer grid", m->f->name);
    }
    tc_shape(w);
    // row layout: codes [rows][rb], scales [rows][sb]; tensor-core layout: tiles and tile scales
    size_t rb = (size_t)m->cols * m->eb / 8, sb = (size_t)m->nb * m->sbytes;
    size_t ncode = w->tc ? (size_t)w->R16 * w->NT * 32 : (size_t)m->rows * rb;
    size_t nscale = w->tc ? (size_t)w->R16 * w->NT * w->SBT : (size_t)m->rows * sb;
    return place_upload(m, w, rb, sb, nib, ncode, nscale, w->tc == 2 ? 0x88 : 0, out);  // padding: integer nibble 8 is 0
}

// Whether the int8 tensor-core layout takes m: 8-bit codes, or 4-bit ones whose
// values fit the two byte tables (as every grid of values in [-8, 7] does, so that
// BQ_CUDA_I8_OFF picks a layout, never the path); blocks of 16 or 32 with 1-byte or fp16 scales,
// or int groups of a multiple of 64 with float32 scales (a scale per tile); a
// tile's scales in one 32-bit load.
static bool i8_takes(const pmat *m)
{
    if (m->kind != PM_PANEL || m->cols % 32 || (m->eb != 4 && m->eb != 8)) return false;
    bool blocks = (m->K == 16 || m->K == 32) && (m->sbytes == 1 || (m->sbytes == 2 && m->f->scale.ebits == 5));
    bool groups = m->K % 64 == 0 && m->sbytes == 4 && format_float_scale(m->f);
    int KT = m->K >= 64 ? 64 : m->K;
    uint8_t slot[16];
    uint32_t tab[4];
    return (blocks || groups) && (64 / KT) * m->sbytes <= 4 && (m->eb == 8 || i8_slots4(m->lut, slot, tab));
}

// off: 4-bit values in [-8, 7] as offset nibbles (mode 5), else through the slots' tables
static bq_status upload_i8(const pmat *m, int off, bq_cuda_w **out)
{
    *out = NULL;
    bq_cuda_w *w = (bq_cuda_w *)calloc(1, sizeof *w);
    if (!w) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    w->rows = m->rows; w->cols = m->cols; w->eb = m->eb; w->K = m->K; w->nb = m->nb; w->sbytes = m->sbytes; w->pdl = 1;
    w->KT = m->K >= 64 ? 64 : m->K;
    w->emult = m->emult;
    w->cmode = 1.0f;
    w->i8 = m->eb;
    uint8_t slot[16] = {0};
    if (m->eb == 4 && off && i8_off4(m->lut, slot)) w->i8 = 5;
    else if (m->eb == 4) i8_slots4(m->lut, slot, w->tab4);
    tc_shape(w);
    size_t ncode = (size_t)w->R16 / 16 * w->NT * 32 * (m->eb == 8 ? 32 : 16), nscale = (size_t)w->R16 * w->NT * w->SBT;
    return place_upload(m, w, 0, 0, slot, ncode, nscale, 0, out);  // padding: slot or value 0 (its products meet zero activations)
}

extern "C" bq_status bq_cuda_w_upload_path(const pmat *m, bq_gemv_path path, bq_cuda_w **out)
{
    *out = NULL;
    int int8, pf, off;
    bq_status st = env_gemv_int8(&int8);
    if (!st) st = env_i8_pf(&pf);
    if (!st) st = env_i8_off(&off);
    if (st) return st;
    if (path == BQ_GEMV_DEFAULT) path = int8 && i8_takes(m) ? BQ_GEMV_INT8 : BQ_GEMV_FP16;
    if (path == BQ_GEMV_FP16) return upload_fp16(m, out);
    if (!i8_takes(m))
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV: the int8 tensor-core path does not take %s at %dx%d (4- or 8-bit codes; blocks of 16 "
                       "or 32 with 1-byte or fp16 scales, or int groups of a multiple of 64 with float32 scales; cols %% 32 == 0)",
                       m->f->name, m->rows, m->cols);
    st = upload_i8(m, off, out);
    if (!st) (*out)->i8pf = pf;
    return st;
}

extern "C" bq_status bq_cuda_w_upload(const pmat *m, bq_cuda_w **out) { return bq_cuda_w_upload_path(m, BQ_GEMV_DEFAULT, out); }
extern "C" bq_gemv_path bq_cuda_w_path(const bq_cuda_w *w) { return w->i8 ? BQ_GEMV_INT8 : BQ_GEMV_FP16; }
extern "C" const char *bq_cuda_w_layout(const bq_cuda_w *w)
{
    if (w->i8) return w->i8 == 8 ? "int8 8-bit codes" : w->i8 == 5 ? "int8 offset nibbles" : "int8 4-bit tables";
    static const char *const tc[8] = {"fp16 rows", "fp16 e2m1 nibbles", "fp16 integer nibbles", "fp16 6-bit table", "?", "?",
                                      "fp16 e2m3 by bits", "fp16 e3m2 by bits"};
    return w->tc >= 0 && w->tc < 8 ? tc[w->tc] : "?";
}

// 6-bit block formats (MXFP6 e2m3/e3m2, BFP6), held as a bit stream on the CPU:
// value = vlut[code] * s1 * s2 with 8-bit scale codes. On the device the tensor-core
// layout with the top two bits of each code in a second plane (tc_place); minifloat
// codes become fp16 by their bits (mf6_view), any other grid through a 64-entry fp16
// table (as all did with BQ_CUDA_F6=table). Only where every value is an fp16 number
// and value * (s1 * s2) is what the CPU computes, (value * s1) * s2.
static bq_status upload6(const pmat *m, bq_cuda_w **out)
{
    const bq_format *f = m->f;
    int K = f->block;
    if (m->cols % 32 || (K != 16 && K != 32))
        return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV: %s at %dx%d is not supported (6-bit codes need blocks of 16 or 32, cols %% 32 == 0)",
                       f->name, m->rows, m->cols);
    unsigned short lut6[64];
    float fac[256];
    for (int c = 0; c < 64; c++) {
        __half h = __float2half_rn(m->vlut[c]);
        if (__half2float(h) != m->vlut[c] && m->vlut[c] == m->vlut[c])
            return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV: %s has element values that are not fp16 numbers", f->name);
        lut6[c] = __half_as_ushort(h);
    }
    for (int s = 0; s < 256; s++) {
        fac[s] = m->s1[s] * m->s2[s];
        for (int c = 0; c < 64; c++) {
            float a = (m->vlut[c] * m->s1[s]) * m->s2[s], b = m->vlut[c] * fac[s];
            if (a != b && a == a)
                return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV: %s's scale factors do not combine exactly", f->name);
        }
    }
    if (m->vlut[0] != 0.0f) return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV: %s's code 0 is not zero", f->name);  // the padding
    bq_cuda_w *w = (bq_cuda_w *)calloc(1, sizeof *w);
    if (!w) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    w->rows = m->rows; w->cols = m->cols; w->eb = 6; w->K = w->KT = K; w->nb = m->cols / K; w->sbytes = 1; w->emult = 1.0f;
    w->tc = 3; w->cmode = 1.0f; w->pdl = 1;
    int bits;  // BQ_CUDA_F6: 1 (default) minifloat codes by their bits where they allow it, 0 all through the table
    bq_status st = env_f6_bits(&bits);
    if (st) { free(w); return st; }
    int v = bits ? mf6_view(m->vlut, &w->cmode) : 0;
    if (v) w->tc = v;
    tc_shape(w);
    size_t ncode = (size_t)w->R16 * w->NT * 32, nscale = (size_t)w->R16 * w->NT * w->SBT, nhi = (size_t)w->R16 / 16 * w->NT * 32 * 8;
    uint8_t *codes = (uint8_t *)calloc(ncode, 1), *scales = (uint8_t *)calloc(nscale, 1), *hi = (uint8_t *)calloc(nhi, 1);
    st = codes && scales && hi ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory");
    if (!st) {  // straight from the CPU's bit stream (PM_STREAM holds the packed matrix), 16-row groups over all cores
        place_job pj = {m, w, 0, 0, NULL, codes, scales, hi, (const uint8_t *)m->data + pack_header_bytes(f), pack_row_bytes(f, (size_t)m->cols), 0};
        bq_parallel_for(((size_t)m->rows + 15) / 16, (size_t)m->rows * m->cols < (1u << 22) ? 1 : 0, place_rows, &pj);
        if (pj.oom) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    }
    if (!st) fold_cmode(w, scales, nscale, fac);
    if (!st) st = w_to_device(w, codes, ncode, scales, nscale, fac, hi, nhi, lut6);
    free(codes); free(scales); free(hi);
    if (st) { bq_cuda_w_free(w); return st; }
    *out = w;
    return BQ_OK;
}

// A row's scale bytes of a tile (SBT: 1, 2 or 4) as one word, from sp.
template <int SBT>
static __device__ __forceinline__ uint32_t tile_scale_word(const uint8_t *sp)
{
    return SBT == 4 ? __ldg((const uint32_t *)sp) : SBT == 2 ? __ldg((const uint16_t *)sp) : __ldg(sp);
}

// A block's factor from its scale code: the table for 1-byte codes, fp16 * emult for 2,
// float32 * emult for 4.
static __device__ __forceinline__ float scale_factor(uint32_t code, int sb, const float *fac, float emult)
{
    return sb == 1 ? fac[code & 0xffu] : sb == 2 ? __half2float(__ushort_as_half((unsigned short)code)) * emult : __uint_as_float(code) * emult;
}

// The factor of the scale code of sb bytes at sp.
static __device__ __forceinline__ float scale_factor_at(const uint8_t *sp, int sb, const float *fac, float emult)
{
    uint32_t code = sb == 1 ? *sp : sb == 2 ? *(const unsigned short *)sp : *(const uint32_t *)sp;
    return scale_factor(code, sb, fac, emult);
}

// The unpack kernels' factors of a 16-row, 64-column tile (wid; SBT scale bytes a row, SB a
// block of K columns), for rows g and g + 8 (h) by 16-column quarter q (in block 16 q / K):
// constant indices where they are used, so registers.
static __device__ __forceinline__ void quarter_factors(const uint8_t *scales, size_t wid, int g, int SBT, int SB, int K,
                                                       const float *fac, float emult, float (&fq)[2][4])
{
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int q = 0; q < 4; q++) fq[h][q] = scale_factor_at(scales + (wid * 16 + g + 8 * h) * SBT + (16 * q / K) * SB, SB, fac, emult);
}

// ROWS rows per warp share each lane's 32 activations (held in registers), so
// x is read once per ROWS rows; 4-bit codes decode in registers (nib_lut).
// Four 4-bit codes (one per byte) through a 16-entry int8 table held in four
// registers: byte permutes pick from entries 0-7 and 8-15, bit 3 chooses.
static __device__ __forceinline__ uint32_t nib_lut(uint32_t u, uint32_t L0, uint32_t L1, uint32_t L2, uint32_t L3)
{
    uint32_t sel = (u & 7u) | ((u >> 4) & 0x70u) | ((u >> 8) & 0x700u) | ((u >> 12) & 0x7000u);
    uint32_t lo = __byte_perm(L0, L1, sel), hi = __byte_perm(L2, L3, sel);
    uint32_t m = ((u >> 3) & 0x01010101u) * 0xFFu;
    return (lo & ~m) | (hi & m);
}

template <int EB, int K, int SB>
__global__ void __launch_bounds__(256) gemv_kernel(const uint8_t *__restrict__ codes, const uint8_t *__restrict__ scales,
                                                   const float *__restrict__ factor, float emult, const float *__restrict__ x,
                                                   float *__restrict__ y, int rows, int cols, int n, int4 lut_lo)
{
    constexpr int ROWS = 4;  // with the next chunk prefetched
    __shared__ float fac[256];
    if (SB == 1) for (int i = threadIdx.x; i < 256; i += blockDim.x) fac[i] = factor[i];
    const uint32_t L0 = (uint32_t)lut_lo.x, L1 = (uint32_t)lut_lo.y, L2 = (uint32_t)lut_lo.z, L3 = (uint32_t)lut_lo.w;
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31, r0 = warp * ROWS;
    const size_t rb = (size_t)cols * EB / 8, sbr = (size_t)(cols / K) * SB;
    // software pipeline: the next chunk's weights are in flight while this one computes
    uint4 raw[ROWS][EB / 4], nxt[ROWS][EB / 4];
    auto fetch = [&](uint4 (&dst)[ROWS][EB / 4], int cc) {
#pragma unroll
        for (int rr = 0; rr < ROWS; rr++) {
            const uint8_t *cr = codes + (size_t)min(r0 + rr, rows - 1) * rb;
            dst[rr][0] = __ldg((const uint4 *)(cr + (size_t)cc * EB / 8));
            if (EB == 8) dst[rr][EB / 4 - 1] = __ldg((const uint4 *)(cr + cc + 16));
        }
    };
    // the first chunk needs no earlier kernel: in flight while the one that wrote x finishes
    if (r0 < rows && lane * 32 < cols) fetch(raw, lane * 32);
    pdl_wait();
    pdl_go();
    __syncthreads();
    if (r0 >= rows) return;
    for (int t = 0; t < n; t++) {
        float acc[ROWS] = {};
        if (t > 0 && lane * 32 < cols) fetch(raw, lane * 32);
        for (int c0 = lane * 32; c0 < cols; c0 += 32 * 32) {
            if (c0 + 32 * 32 < cols) fetch(nxt, c0 + 32 * 32);
            float xs[32];
            const float4 *xv = (const float4 *)(x + (size_t)t * cols + c0);
#pragma unroll
            for (int q = 0; q < 8; q++) {
                float4 v = __ldg(xv + q);
                xs[4 * q] = v.x; xs[4 * q + 1] = v.y; xs[4 * q + 2] = v.z; xs[4 * q + 3] = v.w;
            }
#pragma unroll
            for (int rr = 0; rr < ROWS; rr++) {
                int r = min(r0 + rr, rows - 1);
                const uint8_t *sr = scales + (size_t)r * sbr;
                const uint8_t *b = (const uint8_t *)raw[rr];
                float part[32 / K] = {};
                // codes become unsigned bytes u = value + 128; float(u) comes from the bit
                // pattern 2^23 + u (a byte permute) minus 2^23 + 128: exact, and full-rate
                // instructions instead of int-to-float conversions
#pragma unroll
                for (int q = 0; q < 4 * EB / 4; q++) {
                    uint32_t wd = ((const uint32_t *)b)[q], lo, hi;
                    if (EB == 4) {  // 8 codes: even ones in the low nibbles
                        lo = nib_lut(wd & 0x0F0F0F0Fu, L0, L1, L2, L3);
                        hi = nib_lut((wd >> 4) & 0x0F0F0F0Fu, L0, L1, L2, L3);
                    } else {
                        lo = wd ^ 0x80808080u;
                        hi = 0;
                    }
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        float a = __int_as_float((int)__byte_perm(lo, 0x4B000000u, 0x7650u + i)) - 8388736.0f;
                        if (EB == 4) {
                            float c = __int_as_float((int)__byte_perm(hi, 0x4B000000u, 0x7650u + i)) - 8388736.0f;
                            int k = 8 * q + 2 * i;
                            part[k / K] += a * xs[k] + c * xs[k + 1];
                        } else {
                            int k = 4 * q + i;
                            part[k / K] += a * xs[k];
                        }
                    }
                }
                float f = 0.0f;
#pragma unroll
                for (int h = 0; h < 32 / K; h++) {
                    int g = c0 / K + h;
                    float sc = scale_factor(SB == 1 ? sr[g] : *(const unsigned short *)(sr + 2 * g), SB, fac, emult);
                    f += part[h] * sc;
                }
                acc[rr] += f;
            }
#pragma unroll
            for (int rr = 0; rr < ROWS; rr++)
#pragma unroll
                for (int e = 0; e < EB / 4; e++) raw[rr][e] = nxt[rr][e];
        }
#pragma unroll
        for (int rr = 0; rr < ROWS; rr++) {
            float v = acc[rr];
            for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0 && r0 + rr < rows) y[(size_t)t * rows + r0 + rr] = v;
        }
    }
}

// ---- tensor-core path for 4-bit codes ----

static __device__ __forceinline__ float pow2i(int k) { return __int_as_float((k + 127) << 23); }  // k in [-126, 127]

// The activations of tile T (64 columns) for n tokens as three fp16 pieces each
// (x * 2^-e = hi + mid + lo, e from the tile's largest |x| so that no piece
// overflows; a non-finite tile gets scale NaN): pc[tau][p][k] holds piece p of
// token tau at column k, post[tau] the factor 2^e that undoes the scaling. One
// warp; pc is the warp's own, __syncwarp()ed before it is read.
// tile_x loads a lane's two activations of each token (v), tile_pieces makes the
// pieces from them (a warp's shuffles).
static __device__ __forceinline__ void tile_x(const float *__restrict__ x, int cols, int n, int T, int lane, float (&v)[4][2])
{
#pragma unroll
    for (int tau = 0; tau < 4; tau++)
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int k = 64 * T + lane + 32 * i;
            v[tau][i] = tau < n && k < cols ? x[(size_t)tau * cols + k] : 0.0f;
        }
}

// The bits of the tile's largest |x| of one token: the warp's lanes' two values each
// (above 0x7f7fffff: the tile holds Inf or NaN).
static __device__ __forceinline__ uint32_t tile_absmax(const float (&v)[2])
{
    uint32_t m = max((uint32_t)__float_as_int(v[0]) & 0x7fffffffu, (uint32_t)__float_as_int(v[1]) & 0x7fffffffu);
    for (int o = 16; o; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
    return m;
}

static __device__ __forceinline__ void tile_pieces(const float (&xv)[4][2], int n, int lane, __half (*pc)[3][64], float (&post)[4])
{
#pragma unroll
    for (int tau = 0; tau < 4; tau++) {
        post[tau] = 0.0f;
        if (tau >= n) continue;
        const float *v = xv[tau];
        uint32_t m = tile_absmax(xv[tau]);
        // |x| < 2^E; pieces of x * 2^-e with e = E - 15 stay below fp16's largest value
        int E = m >> 23 ? (int)(m >> 23) - 126 : -126, e = max(E - 15, -126);
        float pre = m > 0x7f7fffffu ? 0.0f : pow2i(-e);
        post[tau] = m > 0x7f7fffffu ? __int_as_float(0x7fc00000) : pow2i(e);
#pragma unroll
        for (int i = 0; i < 2; i++) {
            float xp = v[i] * pre;
            __half hi = __float2half_rn(xp);
            float r = xp - __half2float(hi);
            __half mid = __float2half_rn(r);
            pc[tau][0][lane + 32 * i] = hi;
            pc[tau][1][lane + 32 * i] = mid;
            pc[tau][2][lane + 32 * i] = __float2half_rn(r - __half2float(mid));
        }
    }
}

static __device__ __forceinline__ float pick4(const float (&p)[4], int i)
{
    return i == 0 ? p[0] : i == 1 ? p[1] : i == 2 ? p[2] : i == 3 ? p[3] : 0.0f;
}

// The unsplit GEMV's activations, once per call instead of once per row block:
// each tile's pieces (tile_pieces) in B-fragment order (xf: [n8 block][T][lane]
// [k-step] of uint2, column 3 * tau + p holding piece p of token tau) and each
// column's factor (xs: [n8 block][T][8]). One warp a tile.
__global__ void __launch_bounds__(256) tc_split(const float *__restrict__ x, int cols, int n, int NT, uint2 *__restrict__ xf,
                                                float *__restrict__ xs)
{
    __shared__ __half pc[8][4][3][64];
    pdl_wait();
    pdl_go();
    const int wl = threadIdx.x >> 5, lane = threadIdx.x & 31, T = blockIdx.x * 8 + wl;
    if (T >= NT) return;
    float post[4], xv[4][2];
    tile_x(x, cols, n, T, lane, xv);
    tile_pieces(xv, n, lane, pc[wl], post);
    __syncwarp();
    for (int it = lane; it < 16 * 3 * n; it += 32) {
        int c = it / 16, s = (it / 4) % 4, t = it % 4, k0 = 16 * s + 2 * t;
        const __half *h = pc[wl][c / 3][c % 3];
        uint2 b;
        b.x = (uint32_t)__half_as_ushort(h[k0]) | (uint32_t)__half_as_ushort(h[k0 + 1]) << 16;
        b.y = (uint32_t)__half_as_ushort(h[k0 + 8]) | (uint32_t)__half_as_ushort(h[k0 + 9]) << 16;
        xf[(((size_t)(c / 8) * NT + T) * 32 + (c % 8) * 4 + t) * 4 + s] = b;
    }
    if (lane < 3 * n) xs[((size_t)(lane / 8) * NT + T) * 8 + lane % 8] = post[lane / 3 < 4 ? lane / 3 : 0];
}

// Half2 J of an A-fragment word. e2m1: sign to bit 15, e1 e0 m to bits 11..9 of
// each half: fp16 = e2m1 * 2^-14, subnormals included. Integers: 1024 + (v + 8)
// from the exponent trick, minus 1032.
template <int MODE, int J>
static __device__ __forceinline__ uint32_t half2_of(uint32_t w)
{
    if (MODE == 1) {
        uint32_t em = 9 - 4 * J >= 0 ? w << (9 - 4 * J) : w >> (4 * J - 9);
        return (em & 0x0E000E00u) | ((w << (12 - 4 * J)) & 0x80008000u);
    }
    uint32_t h = ((w >> (4 * J)) & 0x000F000Fu) | 0x64006400u, o;
#ifdef BQ_CUSIM  // tests/cusim: the kernels on the CPU
    o = cusim_hsub2(h, 0x64086408u);
#else
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(o) : "r"(h), "r"(0x64086408u));
#endif
    return o;
}

// 6-bit: half2 J of word wd (low nibbles) with the top bits h16 of the same word,
// through the fp16 table.
template <int J>
static __device__ __forceinline__ uint32_t half2_6(uint32_t wd, uint32_t h16, const unsigned short *l6)
{
    uint32_t lo = ((wd >> (4 * J)) & 15u) | ((h16 >> (4 * J)) & 3u) << 4;
    uint32_t hi = ((wd >> (16 + 4 * J)) & 15u) | ((h16 >> (4 * J + 2)) & 3u) << 4;
    return (uint32_t)l6[lo] | (uint32_t)l6[hi] << 16;
}

// 6-bit minifloat codes by their bits (tc 6: P = 7, e2m3; 7: P = 8, e3m2; mf6_view):
// half2 J of word wd, its magnitudes' low four bits from nibbles J and J + 4 to bits
// P.. of each half, code bit 4 and the sign from X (the top bits of words s, s + 1 at
// q = J + o, o = 8 (s % 2); tc_place) to bits P + 4 and 15.
template <int P, int J>
static __device__ __forceinline__ uint32_t half2_mf6(uint32_t wd, uint32_t X, int o)
{
    const int q = J + o;
    uint32_t lo = (P >= 4 * J ? wd << (P - 4 * J) : wd >> (4 * J - P)) & (0x000F000Fu << P);
    if (P == 7) return lo | ((X << (11 - q)) & 0x88008800u);  // bit 4 to 11, the sign to 15: one shift
    return lo | ((X << (P + 4 - q)) & (0x00100010u << P)) | ((X << (11 - q)) & 0x80008000u);
}
template <int MODE> constexpr bool tc_has_hi = MODE == 3 || MODE == 6 || MODE == 7;  // (a second plane of top bits)

// The four half2 of A-fragment word s (codes wd; for 6-bit codes, hp holds the
// top bits of all four words).
template <int MODE>
static __device__ __forceinline__ void word_halves(uint32_t wd, uint2 hp, int s, const unsigned short *l6, uint32_t (&a)[4])
{
    if (MODE == 6 || MODE == 7) {
        constexpr int P = MODE == 6 ? 7 : 8;
        const uint32_t X = s < 2 ? hp.x : hp.y;
        const int o = 8 * (s & 1);
        a[0] = half2_mf6<P, 0>(wd, X, o); a[1] = half2_mf6<P, 1>(wd, X, o);
        a[2] = half2_mf6<P, 2>(wd, X, o); a[3] = half2_mf6<P, 3>(wd, X, o);
    } else if (MODE == 3) {
        uint32_t h16 = (s < 2 ? hp.x : hp.y) >> (16 * (s & 1));
        a[0] = half2_6<0>(wd, h16, l6); a[1] = half2_6<1>(wd, h16, l6);
        a[2] = half2_6<2>(wd, h16, l6); a[3] = half2_6<3>(wd, h16, l6);
    } else {
        a[0] = half2_of<MODE, 0>(wd); a[1] = half2_of<MODE, 1>(wd);
        a[2] = half2_of<MODE, 2>(wd); a[3] = half2_of<MODE, 3>(wd);
    }
}

static __device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool fresh)
{
    float c0 = fresh ? 0.0f : d[0], c1 = fresh ? 0.0f : d[1], c2 = fresh ? 0.0f : d[2], c3 = fresh ? 0.0f : d[3];
#ifdef BQ_CUSIM
    const float c[4] = {c0, c1, c2, c3};
    cusim_mma_f16(d, a, b0, b1, c);
    return;
#endif
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(c0), "f"(c1), "f"(c2), "f"(c3));
}

// The matrices of one launch: one, or up to three of one layout that share x (q, k,
// v; gate, up), their row blocks side by side in the grid's x (first[i]: matrix i's
// first CTA), so a decoding step launches once where it would three times.
struct tc_mats {
    const uint4 *codes[3];
    const uint8_t *scales[3];
    const uint2 *hip[3];
    const float *factor[3];
    float emult[3], cmode[3];
    float *y[3];
    int rows[3], first[3], count;
};

// A CTA: RG groups of 16 rows; its 8 warps split the 64-column tiles and sum in
// shared memory in a fixed order. Per tile a lane loads 16 bytes of codes per row
// group, its activation fragments (32 bytes per n8 block) and two rows' scales.
// One tile a warp at a time: 2 and 4 tiles in flight (a ring of slots, each refilled
// with the tile 2 or 4 ahead once multiplied) measured slower on the H200 at every 7B shape
// (bench/gpu/round18/call1_gemv_depth.txt): the kernel is bound by its instructions,
// not by the loads in flight. A slot: tile T's codes, its rows' scales, and its
// activations (unsplit: the B fragments and column factors tc_split made; split:
// the lane's raw x values).
template <int RG, int NT8>
struct tc_slot {
    uint4 c[RG];
    uint2 hp[RG];
    uint32_t sg[RG], sg8[RG];
    uint4 b[NT8][2];
    float2 xc[NT8];
    float xv[4][2];
};

// Which of the launch's matrices this CTA's rows belong to.
static __device__ __forceinline__ int tc_matrix(const tc_mats &M)
{
    int mi = 0;
    while (mi + 1 < M.count && (int)blockIdx.x >= M.first[mi + 1]) mi++;
    return mi;
}

// The end of both tensor-core GEMVs: each warp's sums (acc: its row groups, n8
// blocks and accumulator elements) through shared memory (red), one output (row,
// token) a thread adding the 8 warps' parts and then its token's NP pieces (column
// NP tau + p); split: the partial sums of the gridDim.y CTAs of a row block added
// in a fixed order by the last to finish.
template <int RG, int NT8, bool SPLIT>
static __device__ __forceinline__ void tc_finish(float (&red)[8][RG][NT8][32][4], const float (&acc)[RG][NT8][4], int wp, int lane, int n,
                                                 int NP, int G0, int rows, float *__restrict__ y, float cmode, float *__restrict__ part,
                                                 unsigned *__restrict__ count, int bx, int &last)
{
#pragma unroll
    for (int rg = 0; rg < RG; rg++)
#pragma unroll
        for (int nb = 0; nb < NT8; nb++)
#pragma unroll
            for (int i = 0; i < 4; i++) red[wp][rg][nb][lane][i] = acc[rg][nb][i];
    __syncthreads();
    // one output (row, token) per thread: the 8 warps' parts, then the pieces
    int o = threadIdx.x, rg = o / (16 * n), rr = (o / n) % 16, tau = o % n, row = (G0 + rg) * 16 + rr;
    bool mine = rg < RG && row < rows;
    float v = 0.0f;
    for (int p = 0; mine && p < NP; p++) {
        int col = NP * tau + p, nb = col / 8, cc = col % 8, ln = (rr % 8) * 4 + cc / 2, i = (rr >= 8) * 2 + (cc & 1);
        float u = 0.0f;
        for (int k = 0; k < 8; k++) u += red[k][rg][nb][ln][i];
        v += u;
    }
    if (!SPLIT) {
        if (mine) y[(size_t)tau * rows + row] = v * cmode;
        return;
    }
    // split: the last CTA of this row block to finish adds the splits' sums in
    // their order (so the result does not depend on which one that is) and
    // leaves the counter at zero for the next call
    size_t len = (size_t)n * rows, at = (size_t)tau * rows + row;
    if (mine) part[blockIdx.y * len + at] = v;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&count[bx], 1u) == gridDim.y - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (mine) {
        float s = 0.0f;
        for (unsigned k = 0; k < gridDim.y; k++) s += __ldcg(part + k * len + at);
        y[at] = s * cmode;
    }
    if (threadIdx.x == 0) count[bx] = 0;
}

// The fewest CTAs a multiprocessor for a gemv_tc instance (0: ptxas's choice). The
// one-token unsplit kernel of 6-bit codes in 32-blocks is held to 3 (99 and 94 -> 80
// registers, 8 bytes spilled): on the H100 (twenty-seventh session) MXFP6's 7B decode rose
// 280.5 -> 292.6 tokens/s, its GEMV +22% at 11008x4096 and -16% at 16384x16384. Built with
// NVEXTRA=-DBQ_TC_MINB=1 (an experiment), e2m1 and int nibbles are held to 4 too (79 and
// 78 -> 64, 44 and 28 bytes spilled): MXFP4's decode fell 320 -> 293 tokens/s that way.
template <int MODE, int K, int SB, int NT8, bool SPLIT>
constexpr int tc_min_blocks()
{
    constexpr bool one_token32 = NT8 == 1 && !SPLIT && K == 32 && SB == 1;
    if (one_token32 && MODE >= 6) return 3;
#if defined(BQ_TC_MINB) && BQ_TC_MINB
    if (one_token32 && MODE <= 2) return 4;
#endif
    return 0;
}

template <int MODE, int K, int SB, int NT8, bool SPLIT>
__global__ void __launch_bounds__(256, (tc_min_blocks<MODE, K, SB, NT8, SPLIT>())) gemv_tc(const tc_mats M, const float *__restrict__ x, int cols, const uint4 *__restrict__ xf,
                                               const float *__restrict__ xs, int NT, int n, const unsigned short *__restrict__ lut6,
                                               float *__restrict__ part, unsigned *__restrict__ count)
{
    constexpr int RG = 2, SBT = (64 / K) * SB;  // 4 row groups measured 48-69% of copy (2: 74-76%)
    __shared__ float fac[256];
    __shared__ unsigned short l6[64];
    __shared__ float red[8][RG][NT8][32][4];
    __shared__ __half pcs[SPLIT ? 8 : 1][4][3][64];  // split: each warp's activation pieces (tile_pieces)
    __shared__ int last;
    const int mi = tc_matrix(M), rows = M.rows[mi], bx = (int)blockIdx.x - M.first[mi];
    const uint4 *__restrict__ codes = M.codes[mi];
    const uint8_t *__restrict__ scales = M.scales[mi];
    const uint2 *__restrict__ hip = M.hip[mi];
    const float emult = M.emult[mi];
    if (SB == 1) for (int i = threadIdx.x; i < 256; i += blockDim.x) fac[i] = M.factor[mi][i];
    if (MODE == 3 && threadIdx.x < 64) l6[threadIdx.x] = lut6[threadIdx.x];
    const int wp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    // SPLIT (one matrix): CTA (x, y) takes the y-th of gridDim.y slices of the tiles; its
    // sums go to part[y], which the row block's last CTA adds in a fixed order (below)
    const int A = SPLIT ? (int)blockIdx.y * NT / (int)gridDim.y : 0, B = SPLIT ? ((int)blockIdx.y + 1) * NT / (int)gridDim.y : NT;
    const int G0 = bx * RG, ngroups = (rows + 15) / 16, T0 = A + wp * (B - A) / 8, T1 = A + (wp + 1) * (B - A) / 8;
    float acc[RG][NT8][4] = {};
    tc_slot<RG, NT8> S;
    auto fetch_w = [&](tc_slot<RG, NT8> &q, int T) {  // tile T's codes and its rows' scales
#pragma unroll
        for (int rg = 0; rg < RG; rg++) {
            int G = min(G0 + rg, ngroups - 1);
            q.c[rg] = __ldg(codes + ((size_t)G * NT + T) * 32 + lane);
            q.hp[rg] = tc_has_hi<MODE> ? __ldg(hip + ((size_t)G * NT + T) * 32 + lane) : make_uint2(0, 0);
            const uint8_t *sp = scales + (((size_t)G * NT + T) * 16 + g) * SBT;
            q.sg[rg] = tile_scale_word<SBT>(sp);
            q.sg8[rg] = tile_scale_word<SBT>(sp + 8 * SBT);
        }
    };
    // B fragments: column c = 3 * tau + p holds piece p of token tau; a lane takes
    // column g's rows 2t, 2t + 1, 2t + 8, 2t + 9 of each 16-deep step. Unsplit: from
    // tc_split; split (small matrices, where one kernel less counts): made from x.
    auto fetch_x = [&](tc_slot<RG, NT8> &q, int T) {
        if (SPLIT) {
            tile_x(x, cols, n, T, lane, q.xv);
        } else {
#pragma unroll
            for (int nb = 0; nb < NT8; nb++) {
                const uint4 *p = xf + (((size_t)nb * NT + T) * 32 + lane) * 2;
                bool live = 8 * nb + g < 3 * n;  // columns past the last token's pieces are zero
                q.b[nb][0] = live ? __ldg(p) : make_uint4(0, 0, 0, 0);
                q.b[nb][1] = live ? __ldg(p + 1) : make_uint4(0, 0, 0, 0);
                int c0 = 8 * nb + 2 * t;
                q.xc[nb] = make_float2(c0 < 3 * n ? __ldg(xs + ((size_t)nb * NT + T) * 8 + 2 * t) : 0.0f,
                                       c0 + 1 < 3 * n ? __ldg(xs + ((size_t)nb * NT + T) * 8 + 2 * t + 1) : 0.0f);
            }
        }
    };
    auto multiply = [&](tc_slot<RG, NT8> &q) {
        if (SPLIT) {  // the pieces of the lane's x values, through the warp's shared rows
            float post[4];
            tile_pieces(q.xv, n, lane, pcs[SPLIT ? wp : 0], post);
            __syncwarp();
#pragma unroll
            for (int nb = 0; nb < NT8; nb++) {
                int col = 8 * nb + g, tau = col / 3;
                uint32_t w[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                if (tau < n) {  // columns past the last token's pieces are zero
                    const __half *h = pcs[SPLIT ? wp : 0][tau][col % 3];
#pragma unroll
                    for (int st = 0; st < 4; st++) {
                        int k0 = 16 * st + 2 * t;
                        w[2 * st] = (uint32_t)__half_as_ushort(h[k0]) | (uint32_t)__half_as_ushort(h[k0 + 1]) << 16;
                        w[2 * st + 1] = (uint32_t)__half_as_ushort(h[k0 + 8]) | (uint32_t)__half_as_ushort(h[k0 + 9]) << 16;
                    }
                }
                q.b[nb][0] = make_uint4(w[0], w[1], w[2], w[3]);
                q.b[nb][1] = make_uint4(w[4], w[5], w[6], w[7]);
                q.xc[nb] = make_float2(pick4(post, (8 * nb + 2 * t) / 3), pick4(post, (8 * nb + 2 * t + 1) / 3));
            }
            __syncwarp();  // pcs is rewritten for the next tile
        }
        float d[RG][NT8][4], tacc[RG][NT8][4] = {};  // this tile's sum: the columns' tile scale applies once
#pragma unroll
        for (int s = 0; s < 4; s++) {
#pragma unroll
            for (int rg = 0; rg < RG; rg++) {
                uint32_t wd = s == 0 ? q.c[rg].x : s == 1 ? q.c[rg].y : s == 2 ? q.c[rg].z : q.c[rg].w;
                uint32_t a[4];
                word_halves<MODE>(wd, q.hp[rg], s, l6, a);
#pragma unroll
                for (int nb = 0; nb < NT8; nb++) {
                    const uint4 &bb = q.b[nb][s / 2];
                    mma16816(d[rg][nb], a, s % 2 ? bb.z : bb.x, s % 2 ? bb.w : bb.y, s % (K / 16) == 0);
                }
            }
            if (s % (K / 16) == K / 16 - 1) {  // a scale block ends: scale by its factor and the columns' tile scale
                const int bt = s / (K / 16);
#pragma unroll
                for (int rg = 0; rg < RG; rg++) {
                    float f0 = scale_factor(q.sg[rg] >> (8 * SB * bt), SB, fac, emult);
                    float f8 = scale_factor(q.sg8[rg] >> (8 * SB * bt), SB, fac, emult);
#pragma unroll
                    for (int nb = 0; nb < NT8; nb++) {
                        tacc[rg][nb][0] = __fmaf_rn(d[rg][nb][0], f0, tacc[rg][nb][0]);
                        tacc[rg][nb][1] = __fmaf_rn(d[rg][nb][1], f0, tacc[rg][nb][1]);
                        tacc[rg][nb][2] = __fmaf_rn(d[rg][nb][2], f8, tacc[rg][nb][2]);
                        tacc[rg][nb][3] = __fmaf_rn(d[rg][nb][3], f8, tacc[rg][nb][3]);
                    }
                }
            }
        }
#pragma unroll
        for (int rg = 0; rg < RG; rg++)
#pragma unroll
            for (int nb = 0; nb < NT8; nb++)
#pragma unroll
                for (int i = 0; i < 4; i++) acc[rg][nb][i] = __fmaf_rn(tacc[rg][nb][i], i & 1 ? q.xc[nb].y : q.xc[nb].x, acc[rg][nb][i]);
    };
    // the weights need no earlier kernel: the first tile's are in flight while the
    // kernel that wrote x finishes (launch.cuh)
    if (T0 < T1) fetch_w(S, T0);
    pdl_wait();
    pdl_go();
    __syncthreads();
    for (int T = T0; T < T1; T++) {
        if (T != T0) fetch_w(S, T);
        fetch_x(S, T);
        multiply(S);
    }
    tc_finish<RG, NT8, SPLIT>(red, acc, wp, lane, n, 3, G0, rows, M.y[mi], M.cmode[mi], part, count, bx, last);
}

// ---- int8 tensor cores (i8_layout.h): 8-bit codes as stored, 4-bit codes through byte tables ----

// d += a b on the int8 tensor cores: k32 (a0-a3, b0-b1) and k16 (a0-a1, b0).
static __device__ __forceinline__ void mma_s8_k32(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
#ifdef BQ_CUSIM
    const uint32_t b[2] = {b0, b1};
    cusim_mma_s8(d, a, b, 32);
    return;
#endif
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ void mma_s8_k16(int (&d)[4], uint32_t a0, uint32_t a1, uint32_t b0)
{
#ifdef BQ_CUSIM
    const uint32_t a[2] = {a0, a1}, b[1] = {b0};
    cusim_mma_s8(d, a, b, 16);
    return;
#endif
    asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a0), "r"(a1), "r"(b0));
}

// A tile's scaling for its pieces from the bits m of its largest |x| (NaN post for a tile
// holding Inf or NaN): pieces of x * pre, undone by post.
static __device__ __forceinline__ void i8_tile_scaling(uint32_t m, float &pre, float &post)
{
    const int E = i8_tile_exp(m);
    pre = m > 0x7f7fffffu ? 0.0f : ldexpf(1.0f, 6 - E);
    post = m > 0x7f7fffffu ? __int_as_float(0x7fc00000) : ldexpf(1.0f, E - 6);
}

// Bytewise negation of four pieces: they are within [-64, 64], no byte carries into the next.
static __device__ __forceinline__ uint32_t i8_neg_word(uint32_t wd) { return ((0xC0C0C0C0u - (wd ^ 0x80808080u)) + 0x40404040u) ^ 0x80808080u; }

// The int8 path's activations: per 64-column tile and token the four pieces
// (i8_pieces) in B-fragment order, and their negatives (xq: [n8 block][T][lane][2]:
// the 4-bit codes' negative parts multiply those, so that one accumulator takes both
// products), and each column's factor (xs: [n8 block][T][8]; 0 past the last token's
// pieces, NaN for a tile holding Inf or NaN). An n8 block holds two tokens (columns
// 4 tau + p), so token tau's words are lanes 16 (tau % 2) .. + 15 of block tau / 2.
//
// i8_split_token: token tau's pieces of tile T (a warp; v: this lane's values at
// columns lane and lane + 32), and zeros in its partner's half of the block where tau
// is the last token and even. pc: the warp's scratch. A kernel makes each token's
// (i8_split, or the kernel before the GEMV: norm_i8, act_i8).
static __device__ __forceinline__ void i8_split_token(const float (&v)[2], int tau, int n, int T, int NT, int lane,
                                                      int8_t (*pc)[64], uint4 *__restrict__ xq, float *__restrict__ xs)
{
    static_assert(I8_PIECES == 4, "two tokens an n8 block");
    float pre, post;
    i8_tile_scaling(tile_absmax(v), pre, post);
#pragma unroll
    for (int i = 0; i < 2; i++) {
        int8_t p[I8_PIECES];
        i8_pieces(v[i], pre, p);
#pragma unroll
        for (int q = 0; q < I8_PIECES; q++) pc[q][lane + 32 * i] = p[q];
    }
    __syncwarp();
    const int g = lane >> 2, t = lane & 3, nb = tau / 2, half = tau % 2, q = g - 4 * half;  // q: this lane's piece
    const bool mine = q >= 0 && q < 4, partner_absent = half == 0 && tau + 1 >= n;
    if (mine || partner_absent) {
        uint32_t wd[4] = {0, 0, 0, 0};  // B's column g, rows 4t.. of each 16: k-step r / 2, register r % 2
        if (mine)
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int j = 0; j < 4; j++) wd[r] |= (uint32_t)(uint8_t)pc[q][32 * (r / 2) + 16 * (r % 2) + 4 * t + j] << (8 * j);
        xq[(((size_t)nb * NT + T) * 32 + lane) * 2] = make_uint4(wd[0], wd[1], wd[2], wd[3]);
        xq[(((size_t)nb * NT + T) * 32 + lane) * 2 + 1] = make_uint4(i8_neg_word(wd[0]), i8_neg_word(wd[1]), i8_neg_word(wd[2]), i8_neg_word(wd[3]));
    }
    const int qc = lane - 4 * half;  // lanes 0-7: the block's column lane
    if (lane < 8 && qc >= 0 && qc < 4) xs[((size_t)nb * NT + T) * 8 + lane] = post * ldexpf(1.0f, -7 * qc);
    else if (lane < 8 && partner_absent) xs[((size_t)nb * NT + T) * 8 + lane] = 0.0f;
    __syncwarp();  // pc is free for the next token
}

// Up to four tokens' pieces, once per call (the GEMV's own split). One warp a tile.
__global__ void __launch_bounds__(256) i8_split(const float *__restrict__ x, int cols, int n, int NT, uint4 *__restrict__ xq,
                                                float *__restrict__ xs)
{
    __shared__ int8_t pc[8][I8_PIECES][64];
    pdl_wait();
    pdl_go();
    const int wl = threadIdx.x >> 5, lane = threadIdx.x & 31, T = blockIdx.x * 8 + wl;
    if (T >= NT) return;
    float xv[4][2];
    tile_x(x, cols, n, T, lane, xv);
#pragma unroll
    for (int tau = 0; tau < 4; tau++)  // (unrolled: xv stays in registers)
        if (tau < n) i8_split_token(xv[tau], tau, n, T, NT, lane, pc[wl], xq, xs);
}

// The kernels before an int8 GEMV making its pieces as they write its input, so that
// the GEMV launches alone (bq_cuda_gemv_multi_ready): on a decoding step each linear's
// split is a launch of its own, a dependent step as long as the arithmetic of many.
// i8_split_quad: token tau's pieces of one float4 of a tile (columns 4i .. 4i + 3 of the
// row: tile i / 16), each thread its own, where the 16 threads of a half-warp hold a tile
// (norm_i8's layout): the tile's largest |x| by four shuffles within the half-warp (every
// lane calls it), then each piece's four bytes are one word of the B fragment (lane 4g + t,
// register r; i8_split_token's packing) stored directly, with its negation; the half-warp's
// first thread stores the tile's factors. The same pieces and words as i8_split_token.
static __device__ __forceinline__ void i8_split_quad(float4 v, int i, int tau, int n, int NT, uint4 *__restrict__ xq, float *__restrict__ xs)
{
    const float x4[4] = {v.x, v.y, v.z, v.w};
    uint32_t m = 0;
#pragma unroll
    for (int c = 0; c < 4; c++) m = max(m, (uint32_t)__float_as_int(x4[c]) & 0x7fffffffu);
    for (int o = 8; o; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
    const int T = i / 16;
    if (T >= NT) return;
    float pre, post;
    i8_tile_scaling(m, pre, post);
    int8_t p[4][I8_PIECES];
#pragma unroll
    for (int c = 0; c < 4; c++) i8_pieces(x4[c], pre, p[c]);
    const int k0 = 4 * (i % 16), t = (k0 % 16) / 4, r = 2 * (k0 / 32) + (k0 % 32) / 16, nb = tau / 2, half = tau % 2;
    const bool partner_absent = half == 0 && tau + 1 >= n;
    uint32_t *blk = (uint32_t *)(xq + ((size_t)nb * NT + T) * 64);  // [lane][2][4] words
#pragma unroll
    for (int q = 0; q < I8_PIECES; q++) {
        uint32_t wd = 0;
#pragma unroll
        for (int j = 0; j < 4; j++) wd |= (uint32_t)(uint8_t)p[j][q] << (8 * j);
        const int lane = 4 * (4 * half + q) + t;
        blk[lane * 8 + r] = wd;
        blk[lane * 8 + 4 + r] = i8_neg_word(wd);
        if (partner_absent) blk[(lane + 16) * 8 + r] = 0, blk[(lane + 16) * 8 + 4 + r] = 0;
    }
    if (k0 == 0)
#pragma unroll
        for (int q = 0; q < I8_PIECES; q++) {
            xs[((size_t)nb * NT + T) * 8 + 4 * half + q] = post * ldexpf(1.0f, -7 * q);
            if (partner_absent) xs[((size_t)nb * NT + T) * 8 + 4 + q] = 0.0f;
        }
}

// norm_i8: the engine's norm (norm.cuh; same bits as k_norm_v, the residual connection
// before it where res is not NULL), a block a token, each thread splitting its own float4
// of the output (i8_split_quad: all at once, no pass over the tiles after the norm).
template <int V>
__global__ void __launch_bounds__(1024) norm_i8(float *x, const float *res, unsigned long long *bad, const float *w, const float *b, float *y,
                                                int d, float eps, int layernorm, int n, int NT, uint4 *__restrict__ xq, float *__restrict__ xs)
{
    __shared__ double buf[32];
    const int tau = blockIdx.x;
    const size_t at = (size_t)tau * d;
    float4 yv[V];
    norm_row_v<V>(x + at, res ? res + at : nullptr, bad, at, w, b, y + at, d, eps, layernorm, buf, yv);
#pragma unroll
    for (int j = 0; j < V; j++) i8_split_quad(yv[j], threadIdx.x + j * blockDim.x, tau, n, NT, xq, xs);
}

// act_i8: the MLP's activation in place (engine.cu's k_act: u = act(u, gate)), a warp a
// tile as i8_split.
__global__ void __launch_bounds__(256) act_i8(float *u, const float *g, int cols, int n, int act, int NT, uint4 *__restrict__ xq,
                                              float *__restrict__ xs)
{
    __shared__ int8_t pc[8][I8_PIECES][64];
    pdl_wait();
    pdl_go();
    const int wl = threadIdx.x >> 5, lane = threadIdx.x & 31, T = blockIdx.x * 8 + wl;
    if (T >= NT) return;
    for (int tau = 0; tau < n; tau++) {
        float v[2] = {0.0f, 0.0f};
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int k = 64 * T + lane + 32 * i;
            size_t at = (size_t)tau * cols + k;
            if (k < cols) u[at] = v[i] = mlp_act(act, u[at], act == ACT_SILU_GATED ? g[at] : 0.0f);
        }
        i8_split_token(v, tau, n, T, NT, lane, pc[wl], xq, xs);
    }
}

// gemv_i8's floor, as tc_min_blocks: the one-token kernels of 4-bit slots in 16-blocks
// (NVFP4; 71 registers, 3 CTAs) are held to 4 CTAs a multiprocessor (64 registers): on
// the H100 (twenty-seventh session) NVFP4's GEMV +21-26% at 4096x4096 and 16384x16384,
// the same at 11008x4096. With BQ_TC_MINB=1 the other 4-bit ones too (split or not), but
// for int groups' (mode 5, KT 64), which have 64 already: MXFP4's (80 -> 64) gained 24% at
// 4096x4096 and lost 18% at 11008x4096, its 7B decode 336 -> 297 tokens/s.
template <int MODE, int KT, int NT8, bool PF>
constexpr int i8_min_blocks()
{
    if (NT8 == 1 && !PF && MODE == 4 && KT == 16) return 4;
#if defined(BQ_TC_MINB) && BQ_TC_MINB
    if (NT8 == 1 && !PF && MODE != 8 && !(MODE == 5 && KT == 64)) return 4;
#endif
    return PF ? 3 : 0;
}

// A CTA: RG groups of 16 rows, its 8 warps splitting the tiles as gemv_tc's. Per
// tile a lane loads 32 (8-bit) or 16 (4-bit) bytes of codes per row group, one
// uint4 of activation pieces per n8 block, two rows' scales; per block of KT
// columns the integer sums (4-bit: the positive parts times the pieces plus the
// negative parts times the negated pieces; mode 5: the codes + 8 times the pieces,
// started from 8 times the negated pieces) become float once and take the rows'
// scale factors.
// PF (one token a pass; experiment, BQ_CUDA_I8_PF=1 or unsplit): a warp's next tile of weights in
// flight while it multiplies this one, held to three CTAs a multiprocessor (80 registers)
template <int MODE, int KT, int SB, int NT8, bool SPLIT, bool PF>
__global__ void __launch_bounds__(256, (i8_min_blocks<MODE, KT, NT8, PF>())) gemv_i8(const tc_mats M, const uint4 *__restrict__ xq, const float *__restrict__ xs, int NT, int n,
                                               uint4 tab, float *__restrict__ part, unsigned *__restrict__ count)
{
    constexpr int RG = 2, SBT = (64 / KT) * SB, LB = MODE == 8 ? 2 : 1;  // LB: uint4 of codes a lane a tile
    __shared__ float fac[256];
    __shared__ float red[8][RG][NT8][32][4];
    __shared__ int last;
    const int mi = tc_matrix(M), rows = M.rows[mi], bx = (int)blockIdx.x - M.first[mi];
    const uint4 *__restrict__ codes = M.codes[mi];
    const uint8_t *__restrict__ scales = M.scales[mi];
    const float emult = M.emult[mi];
    const uint32_t tb[4] = {tab.x, tab.y, tab.z, tab.w};
    if (SB == 1) for (int i = threadIdx.x; i < 256; i += blockDim.x) fac[i] = M.factor[mi][i];
    const int wp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int A = SPLIT ? (int)blockIdx.y * NT / (int)gridDim.y : 0, B = SPLIT ? ((int)blockIdx.y + 1) * NT / (int)gridDim.y : NT;
    const int G0 = bx * RG, ngroups = (rows + 15) / 16, T0 = A + wp * (B - A) / 8, T1 = A + (wp + 1) * (B - A) / 8;
    float acc[RG][NT8][4] = {};
    struct wtile { uint4 c[RG][LB]; uint32_t sg[RG], sg8[RG]; } cur = {}, nxt = {};  // a tile's codes and its rows' scales
    uint4 b[NT8], bn[NT8];  // bn: the pieces negated (4-bit codes' negative parts)
    float2 xc[NT8];
    auto fetch_w = [&](int T, wtile &w) {
#pragma unroll
        for (int rg = 0; rg < RG; rg++) {
            int G = min(G0 + rg, ngroups - 1);
#pragma unroll
            for (int l = 0; l < LB; l++) w.c[rg][l] = __ldg(codes + (((size_t)G * NT + T) * 32 + lane) * LB + l);
            const uint8_t *sp = scales + (((size_t)G * NT + T) * 16 + g) * SBT;
            w.sg[rg] = tile_scale_word<SBT>(sp);
            w.sg8[rg] = tile_scale_word<SBT>(sp + 8 * SBT);
        }
    };
    auto fetch_x = [&](int T) {
#pragma unroll
        for (int nb = 0; nb < NT8; nb++) {
            b[nb] = __ldg(xq + (((size_t)nb * NT + T) * 32 + lane) * 2);
            if (MODE != 8) bn[nb] = __ldg(xq + (((size_t)nb * NT + T) * 32 + lane) * 2 + 1);
            xc[nb] = make_float2(__ldg(xs + ((size_t)nb * NT + T) * 8 + 2 * t), __ldg(xs + ((size_t)nb * NT + T) * 8 + 2 * t + 1));
        }
    };
    // rows g and g + 8 of block bt: the integer sums d (n8 block nb) scaled into tacc
    auto scale_in = [&](float (&ta)[4], const int (&d)[4], int rg, int bt) {
        float f0 = scale_factor(cur.sg[rg] >> (8 * SB * bt), SB, fac, emult), f8 = scale_factor(cur.sg8[rg] >> (8 * SB * bt), SB, fac, emult);
        ta[0] = __fmaf_rn((float)d[0], f0, ta[0]);
        ta[1] = __fmaf_rn((float)d[1], f0, ta[1]);
        ta[2] = __fmaf_rn((float)d[2], f8, ta[2]);
        ta[3] = __fmaf_rn((float)d[3], f8, ta[3]);
    };
    auto multiply = [&]() {
        float tacc[RG][NT8][4] = {};
        int dk[RG][NT8][4] = {};  // KT 64: the block's sums over both k-steps
#pragma unroll
        for (int s = 0; s < 2; s++) {
            // MODE 5: the offset's products (8 times the negated pieces), the same for every
            // row: once a k-step, the start of each row group's sums
            int off[NT8][2][4] = {};
            if (MODE == 5) {
                const uint32_t e8[4] = {0x08080808u, 0x08080808u, 0x08080808u, 0x08080808u};
#pragma unroll
                for (int nb = 0; nb < NT8; nb++) {
                    const uint32_t n0 = s ? bn[nb].z : bn[nb].x, n1 = s ? bn[nb].w : bn[nb].y;
                    if (KT == 16) {
                        mma_s8_k16(off[nb][0], e8[0], e8[1], n0);
                        mma_s8_k16(off[nb][1], e8[0], e8[1], n1);
                    } else {
                        mma_s8_k32(off[nb][0], e8, n0, n1);
                    }
                }
            }
#pragma unroll
            for (int rg = 0; rg < RG; rg++) {
                uint32_t P[4], N[4] = {0, 0, 0, 0};
                if (MODE == 8) {
                    const uint4 &q = cur.c[rg][s % LB];
                    P[0] = q.x; P[1] = q.y; P[2] = q.z; P[3] = q.w;
                } else if (MODE == 5) {
                    const uint4 &q = cur.c[rg][0];
                    i8_decode4_off(s ? q.z : q.x, P, N);
                    i8_decode4_off(s ? q.w : q.y, P + 2, N + 2);
                } else {
                    const uint4 &q = cur.c[rg][0];
                    i8_decode4(s ? q.z : q.x, tb, P, N);
                    i8_decode4(s ? q.w : q.y, tb, P + 2, N + 2);
                }
#pragma unroll
                for (int nb = 0; nb < NT8; nb++) {
                    const uint32_t b0 = s ? b[nb].z : b[nb].x, b1 = s ? b[nb].w : b[nb].y;
                    const uint32_t n0 = s ? bn[nb].z : bn[nb].x, n1 = s ? bn[nb].w : bn[nb].y;
                    if (KT == 16) {  // two blocks a k-step: one k16 product each
#pragma unroll
                        for (int h = 0; h < 2; h++) {
                            int d[4] = {off[nb][h][0], off[nb][h][1], off[nb][h][2], off[nb][h][3]};
                            mma_s8_k16(d, P[2 * h], P[2 * h + 1], h ? b1 : b0);
                            if (MODE == 4) mma_s8_k16(d, N[2 * h], N[2 * h + 1], h ? n1 : n0);
                            scale_in(tacc[rg][nb], d, rg, 2 * s + h);
                        }
                    } else {
                        int d[4] = {off[nb][0][0], off[nb][0][1], off[nb][0][2], off[nb][0][3]};
                        mma_s8_k32(d, P, b0, b1);
                        if (MODE == 4) mma_s8_k32(d, N, n0, n1);
                        if (KT == 32) {
                            scale_in(tacc[rg][nb], d, rg, s);
                        } else {
                            for (int i = 0; i < 4; i++) dk[rg][nb][i] += d[i];
                            if (s == 1) scale_in(tacc[rg][nb], dk[rg][nb], rg, 0);
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int rg = 0; rg < RG; rg++)
#pragma unroll
            for (int nb = 0; nb < NT8; nb++)
#pragma unroll
                for (int i = 0; i < 4; i++) acc[rg][nb][i] = __fmaf_rn(tacc[rg][nb][i], i & 1 ? xc[nb].y : xc[nb].x, acc[rg][nb][i]);
    };
    // the weights need no earlier kernel: the first tile's are in flight while
    // i8_split finishes (launch.cuh)
    if (T0 < T1) fetch_w(T0, PF ? nxt : cur);
    pdl_wait();
    pdl_go();
    __syncthreads();
    for (int T = T0; T < T1; T++) {
        if (PF) {
            cur = nxt;
            if (T + 1 < T1) fetch_w(T + 1, nxt);
        } else if (T != T0) {
            fetch_w(T, cur);
        }
        fetch_x(T);
        multiply();
    }
    tc_finish<RG, NT8, SPLIT>(red, acc, wp, lane, n, I8_PIECES, G0, rows, M.y[mi], M.cmode[mi], part, count, bx, last);
}

static bq_status launched(const char *what)
{
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? BQ_OK : bq_fail(BQ_ERR_UNSUPPORTED, "CUDA %s launch: %s", what, cudaGetErrorString(e));
}

// The launch's matrices, their row blocks side by side; returns the grid's CTAs.
static int tc_fill(tc_mats &M, const bq_cuda_w *const *ws, int count, float *const *d_ys)
{
    M = tc_mats{};
    int ctas = 0;
    for (int i = 0; i < count; i++) {
        const bq_cuda_w *v = ws[i];
        M.codes[i] = (const uint4 *)v->codes;
        M.scales[i] = v->scales;
        M.hip[i] = v->hi;
        M.factor[i] = v->d_factor;
        M.emult[i] = v->emult;
        M.cmode[i] = v->cmode;
        M.y[i] = d_ys[i];
        M.rows[i] = v->rows;
        M.first[i] = ctas;
        ctas += (v->R16 / 16 + 1) / 2;
    }
    M.count = count;
    return ctas;
}

// count matrices of one tensor-core layout (ws[0]'s) sharing x: ks column splits (one
// matrix), else unsplit with the matrices' row blocks side by side in one grid.
static bq_status gemv_tensor_cores(const bq_cuda_w *const *ws, int count, const float *d_x, int n, float *const *d_ys, int ks)
{
    const bq_cuda_w *w = ws[0];
    if (ks == 1) {
        launch_k(w->pdl, tc_split, (w->NT + 7) / 8, 256, d_x, w->cols, n, w->NT, (uint2 *)w->xf, w->xs);
        bq_status st = launched("GEMV activation split");
        if (st) return st;
    }
    tc_mats M;
    dim3 grid((unsigned)tc_fill(M, ws, count, d_ys), (unsigned)ks);
#define L1(MODE, K, SB, NT8, SPLIT) launch_k(w->pdl, gemv_tc<MODE, K, SB, NT8, SPLIT>, grid, 256, M, d_x, w->cols, \
        (const uint4 *)w->xf, w->xs, w->NT, n, w->lut6, w->part, w->count)
#define L(MODE, K, SB, NT8) if (ks > 1) { L1(MODE, K, SB, NT8, true); } else { L1(MODE, K, SB, NT8, false); }
#define L2(MODE, K, SB) if (n > 2) { L(MODE, K, SB, 2); } else { L(MODE, K, SB, 1); }
    if (w->tc == 1 && w->KT == 32 && w->sbytes == 1) { L2(1, 32, 1); }
    else if (w->tc == 1 && w->KT == 16 && w->sbytes == 1) { L2(1, 16, 1); }
    else if (w->tc == 1 && w->KT == 32 && w->sbytes == 2) { L2(1, 32, 2); }
    else if (w->tc == 2 && w->KT == 32 && w->sbytes == 1) { L2(2, 32, 1); }
    else if (w->tc == 2 && w->KT == 16 && w->sbytes == 1) { L2(2, 16, 1); }
    else if (w->tc == 2 && w->KT == 32 && w->sbytes == 2) { L2(2, 32, 2); }
    else if (w->tc == 2 && w->KT == 64 && w->sbytes == 4) { L2(2, 64, 4); }
    else if (w->tc == 3 && w->KT == 32) { L2(3, 32, 1); }
    else if (w->tc == 3 && w->KT == 16) { L2(3, 16, 1); }
    else if (w->tc == 6 && w->KT == 32) { L2(6, 32, 1); }
    else if (w->tc == 6 && w->KT == 16) { L2(6, 16, 1); }
    else if (w->tc == 7 && w->KT == 32) { L2(7, 32, 1); }
    else if (w->tc == 7 && w->KT == 16) { L2(7, 16, 1); }
    else return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV: no tensor-core kernel for blocks of %d, %d-byte scales", w->K, w->sbytes);
#undef L2
#undef L
#undef L1
    return launched("GEMV");
}

// The same on the int8 tensor cores (gemv_i8): the activations' pieces, then one
// launch; splits as gemv_tensor_cores'.
static bq_status gemv_int8(const bq_cuda_w *const *ws, int count, const float *d_x, int n, float *const *d_ys, int ks, bool ready)
{
    const bq_cuda_w *w = ws[0];
    if (!ready) {
        launch_k(w->pdl, i8_split, (w->NT + 7) / 8, 256, d_x, w->cols, n, w->NT, (uint4 *)w->xf, w->xs);
        bq_status st = launched("GEMV int8 activation pieces");
        if (st) return st;
    }
    tc_mats M;
    dim3 grid((unsigned)tc_fill(M, ws, count, d_ys), (unsigned)ks);
    uint4 tab = make_uint4(w->tab4[0], w->tab4[1], w->tab4[2], w->tab4[3]);
#define L1(MODE, KT, SB, NT8, SPLIT, PF) launch_k(w->pdl, gemv_i8<MODE, KT, SB, NT8, SPLIT, PF>, grid, 256, M, (const uint4 *)w->xf, w->xs, \
                                                  w->NT, n, tab, w->part, w->count)
#define L(MODE, KT, SB, NT8, PF) if (ks > 1) { L1(MODE, KT, SB, NT8, true, PF); } else { L1(MODE, KT, SB, NT8, false, PF); }
    const bool pf = w->i8pf == 1 || (w->i8pf == 2 && ks == 1);
#define L2(MODE, KT, SB) if (n > 2) { L(MODE, KT, SB, 2, false); } else if (pf) { L(MODE, KT, SB, 1, true); } else { L(MODE, KT, SB, 1, false); }
#define L3(MODE) if (w->KT == 32 && w->sbytes == 1) { L2(MODE, 32, 1); } else if (w->KT == 16 && w->sbytes == 1) { L2(MODE, 16, 1); } \
                 else if (w->KT == 32 && w->sbytes == 2) { L2(MODE, 32, 2); } else if (w->KT == 64 && w->sbytes == 4) { L2(MODE, 64, 4); } \
                 else return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV: no int8 kernel for blocks of %d, %d-byte scales", w->K, w->sbytes);
    if (w->i8 == 8) { L3(8); } else if (w->i8 == 5) { L3(5); } else { L3(4); }
#undef L3
#undef L2
#undef L
#undef L1
    return launched("GEMV int8");
}

// Whether b takes a's launch: the same tensor-core layout (codes, blocks, scale bytes,
// columns; a 6-bit one's table, a 4-bit int8 one's byte tables too).
static bool same_layout(const bq_cuda_w *a, const bq_cuda_w *b)
{
    return (a->tc || a->i8) && b->tc == a->tc && b->i8 == a->i8 && b->K == a->K && b->KT == a->KT && b->sbytes == a->sbytes &&
           b->cols == a->cols && b->NT == a->NT && (a->tc != 3 || !memcmp(a->lut6_host, b->lut6_host, sizeof a->lut6_host)) &&
           !memcmp(a->tab4, b->tab4, sizeof a->tab4);
}

extern "C" int bq_cuda_w_fusable(const bq_cuda_w *a, const bq_cuda_w *b) { return same_layout(a, b); }

// The tensor-core GEMVs take up to 4 tokens a pass (their activation pieces fill
// two n8 blocks); more (5-16: a short prompt, a batch of drafts) go 4 at a time,
// each pass reading the weights once: a quarter of the passes of one token at a
// time, and a fraction of the bytes of unpacking to bf16 for a GEMM.
enum { TC_TOKENS = 4, GEMV_TOKENS = 16, ROW_TOKENS = 4 };  // ROW_TOKENS: the row kernel reads the weights once a token
// ready: x's pieces are in ws[0]'s buffers already (int8 layout, one pass).
static bq_status gemv_passes(const bq_cuda_w *const *ws, int count, const float *d_x, int n, float *const *d_ys, int ks, bool ready = false)
{
    for (int t0 = 0; t0 < n; t0 += TC_TOKENS) {
        int m = n - t0 < TC_TOKENS ? n - t0 : TC_TOKENS;
        float *ys[3];
        for (int i = 0; i < count; i++) ys[i] = d_ys[i] + (size_t)t0 * ws[i]->rows;
        const float *x = d_x + (size_t)t0 * ws[0]->cols;
        bq_status st = ws[0]->i8 ? gemv_int8(ws, count, x, m, ys, ks, ready) : gemv_tensor_cores(ws, count, x, m, ys, ks);
        if (st) return st;
    }
    return BQ_OK;
}

extern "C" int bq_cuda_w_gemv_max(const bq_cuda_w *w) { return w->tc || w->i8 ? GEMV_TOKENS : ROW_TOKENS; }

// Whether count matrices cannot share one GEMV launch (a status saying why; BQ_OK: they can)
static bq_status one_launch_refused(const bq_cuda_w *const *ws, int count)
{
    if (count < 1 || count > 3) return bq_fail(BQ_ERR_ARG, "CUDA GEMV: %d matrices in one launch (1 to 3)", count);
    for (int i = 1; i < count; i++)
        if (!same_layout(ws[0], ws[i])) return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV: matrices of different layouts in one launch");
    return BQ_OK;
}

extern "C" bq_status bq_cuda_gemv_multi(const bq_cuda_w *const *ws, int count, const float *d_x, int n, float *const *d_ys)
{
    if (n < 1 || n > GEMV_TOKENS) return bq_fail(BQ_ERR_ARG, "CUDA GEMV takes 1 to %d tokens, not %d", GEMV_TOKENS, n);
    bq_status st = one_launch_refused(ws, count);
    if (st) return st;
    if (count == 1) return bq_cuda_gemv(ws[0], d_x, n, d_ys[0]);
    return gemv_passes(ws, count, d_x, n, d_ys, 1);
}

extern "C" bq_status bq_cuda_gemv_split(const bq_cuda_w *w, const float *d_x, int n, float *d_y, int ks)
{
    if (n < 1 || n > GEMV_TOKENS) return bq_fail(BQ_ERR_ARG, "CUDA GEMV takes 1 to %d tokens, not %d", GEMV_TOKENS, n);
    int tcs = w->tc || w->i8;
    if (ks < 0 || ks > (tcs ? w->ks : 1)) return bq_fail(BQ_ERR_ARG, "CUDA GEMV: %d column splits (this matrix allows %d)", ks, tcs ? w->ks : 1);
    if (tcs) return gemv_passes(&w, 1, d_x, n, &d_y, ks ? ks : w->ks);
    uint8_t biased[16];  /* the table as value + 128 */
    for (int i = 0; i < 16; i++) biased[i] = (uint8_t)(w->lut[i] + 128);
    int4 lo;
    memcpy(&lo, biased, 16);
    unsigned blocks = (unsigned)((w->rows + 31) / 32);  /* 8 warps x 4 rows */
#define L(EB, K, SB) launch_k(w->pdl, gemv_kernel<EB, K, SB>, blocks, 256, w->codes, w->scales, w->d_factor, w->emult, d_x, d_y, \
                              w->rows, w->cols, n, lo)
    if (w->eb == 4 && w->K == 32 && w->sbytes == 1) L(4, 32, 1);
    else if (w->eb == 4 && w->K == 16 && w->sbytes == 1) L(4, 16, 1);
    else if (w->eb == 4 && w->K == 32 && w->sbytes == 2) L(4, 32, 2);
    else if (w->eb == 8 && w->K == 32 && w->sbytes == 1) L(8, 32, 1);
    else if (w->eb == 8 && w->K == 16 && w->sbytes == 1) L(8, 16, 1);
    else if (w->eb == 8 && w->K == 32 && w->sbytes == 2) L(8, 32, 2);
    else return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA GEMV: no kernel for %d-bit codes, blocks of %d", w->eb, w->K);
#undef L
    return launched("GEMV");
}

extern "C" bq_status bq_cuda_gemv(const bq_cuda_w *w, const float *d_x, int n, float *d_y)
{
    return bq_cuda_gemv_split(w, d_x, n, d_y, 0);
}

// ---- the pieces made by the kernel before the GEMV (norm_i8, act_i8) ----

extern "C" int bq_cuda_w_takes_pieces(const bq_cuda_w *w, int n) { return w->i8 && n >= 1 && n <= TC_TOKENS; }

static bq_status pieces_refused(const bq_cuda_w *w, int n, const char *what)
{
    return bq_fail(BQ_ERR_ARG, "CUDA %s with the GEMV's pieces: %s", what,
                   w->i8 ? "takes 1 to 4 tokens" : "the weight is not on the int8 layout");
}

extern "C" bq_status bq_cuda_norm_pieces(const bq_cuda_w *w, float *d_x, const float *d_res, unsigned long long *d_bad, const float *d_nw,
                                         const float *d_nb, float *d_y, int rows, float eps, int layernorm)
{
    if (!bq_cuda_w_takes_pieces(w, rows)) return pieces_refused(w, rows, "norm");
    int threads, v = norm_v_shape(w->cols, d_x, d_y, d_nw, d_nb, &threads);
    if ((uintptr_t)d_res & 15) v = 0;
#define L(V) launch_k(w->pdl, norm_i8<V>, rows, threads, d_x, d_res, d_bad, d_nw, d_nb, d_y, w->cols, eps, layernorm, rows, w->NT, \
                      (uint4 *)w->xf, w->xs)
    if (v == 1) L(1);
    else if (v == 2) L(2);
    else return bq_fail(BQ_ERR_UNSUPPORTED, "CUDA norm with the GEMV's pieces: rows of %d floats (at most 8192, 16-byte aligned)", w->cols);
#undef L
    return launched("norm with the GEMV's pieces");
}

extern "C" bq_status bq_cuda_act_pieces(const bq_cuda_w *w, float *d_u, const float *d_g, int rows, int act)
{
    if (!bq_cuda_w_takes_pieces(w, rows)) return pieces_refused(w, rows, "activation");
    launch_k(w->pdl, act_i8, (w->NT + 7) / 8, 256, d_u, d_g, w->cols, rows, act, w->NT, (uint4 *)w->xf, w->xs);
    return launched("activation with the GEMV's pieces");
}

extern "C" bq_status bq_cuda_gemv_multi_ready(const bq_cuda_w *const *ws, int count, const float *d_x, int n, float *const *d_ys)
{
    if (!bq_cuda_w_takes_pieces(ws[0], n)) return pieces_refused(ws[0], n, "GEMV");
    bq_status st = one_launch_refused(ws, count);
    return st ? st : gemv_passes(ws, count, d_x, n, d_ys, count == 1 ? ws[0]->ks : 1, true);
}

// ---- the whole matrix as bf16 (the packed path of the forward pass) ----

// Tensor-core layouts: a warp per 16-row, 64-column tile. Each lane decodes its
// codes (rows g, g + 8) into a shared tile, then the warp writes the tile's rows
// (tile_store). OT: __nv_bfloat16 (formats whose values are bf16 numbers) or float
// (the others).
__device__ __forceinline__ void put2(__nv_bfloat16 *p, float a, float b) { *(__nv_bfloat162 *)p = __floats2bfloat162_rn(a, b); }
__device__ __forceinline__ void put2(float *p, float a, float b) { *(float2 *)p = make_float2(a, b); }

// A warp's decoded 16 x 64 tile to rows of out with 16-byte stores (four rows of
// 128 bytes per instruction): the fragment order scatters a lane's codes over
// eight rows, which stored directly wastes most of each memory transaction.
template <typename OT>
static __device__ __forceinline__ void tile_store(const OT (*tile)[64 + 16 / sizeof(OT)], int lane, int G, int T, int rows, int cols,
                                                  OT *__restrict__ out)
{
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int rl = lane / 8 + 4 * i, row = G * 16 + rl, k = 64 * T + (lane % 8) * 8;
#pragma unroll
        for (int h = 0; h < (int)sizeof(OT) / 2; h++)  // 8 values: one 16-byte store (bf16) or two (float)
            if (row < rows && k < cols)
                ((uint4 *)(out + (size_t)row * cols + k))[h] = ((const uint4 *)&tile[rl][(lane % 8) * 8])[h];
    }
}

template <int MODE, typename OT>
__global__ void __launch_bounds__(256) unpack_tc(const uint4 *__restrict__ codes, const uint8_t *__restrict__ scales,
                                                 const float *__restrict__ factor, float emult, float cmode, int rows, int cols,
                                                 int NT, int K, int SB, OT *__restrict__ out,
                                                 const uint2 *__restrict__ hip, const unsigned short *__restrict__ lut6)
{
    enum { PAD = 16 / sizeof(OT) };  // rows padded by 16 bytes (16-byte aligned)
    __shared__ __align__(16) OT tile[8][16][64 + PAD];
    const int wl = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane / 4, t = lane % 4;
    size_t wid = (size_t)blockIdx.x * 8 + wl;
    if (wid >= (size_t)(rows + 15) / 16 * NT) return;  // no block-wide barrier below
    const int T = (int)(wid % NT), G = (int)(wid / NT), SBT = (64 / K) * SB;
    uint4 c = codes[wid * 32 + lane];
    uint32_t wd[4] = {c.x, c.y, c.z, c.w};
    uint2 hp = tc_has_hi<MODE> ? hip[wid * 32 + lane] : make_uint2(0, 0);
    float f[2][4];  // rows g, g + 8; the tile's 16-column quarters (kk's: s; 2t < 8 never crosses one)
    quarter_factors(scales, wid, g, SBT, SB, K, factor, emult, f);
#pragma unroll
    for (int s = 0; s < 4; s++) {
        uint32_t h[4];
        word_halves<MODE>(wd[s], hp, s, lut6, h);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int kk = 16 * s + 2 * t + 8 * (j >> 1);
            float fj = f[j & 1][s];
            float2 v = __half22float2(*(const __half2 *)&h[j]);  // value * 2^-k: cmode first, exactly (factor * cmode can overflow)
            put2(&tile[wl][g + 8 * (j & 1)][kk], (v.x * cmode) * fj, (v.y * cmode) * fj);
        }
    }
    __syncwarp();
    tile_store<OT>(tile[wl], lane, G, T, rows, cols, out);
}

// int8 layout (MODE 8, 4 or 5): a warp per 16-row, 64-column tile, as unpack_tc.
template <int MODE, typename OT>
__global__ void __launch_bounds__(256) unpack_i8(const uint4 *__restrict__ codes, const uint8_t *__restrict__ scales,
                                                 const float *__restrict__ factor, float emult, int rows, int cols, int NT, int K,
                                                 int SB, uint4 tab, OT *__restrict__ out)
{
    enum { PAD = 16 / sizeof(OT), LB = MODE == 8 ? 2 : 1 };
    __shared__ __align__(16) OT tile[8][16][64 + PAD];
    const int wl = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane / 4, t = lane % 4;
    size_t wid = (size_t)blockIdx.x * 8 + wl;
    if (wid >= (size_t)(rows + 15) / 16 * NT) return;  // no block-wide barrier below
    const int T = (int)(wid % NT), G = (int)(wid / NT), SBT = (64 / K) * SB;
    const uint32_t tb[4] = {tab.x, tab.y, tab.z, tab.w};
    uint32_t a[2][4];  // k-step s's registers a0..a3 (4-bit: positive minus negative parts, bytewise below)
    uint32_t ng[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
    for (int l = 0; l < 2; l++) {
        uint4 q = codes[wid * 32 * LB + (size_t)lane * LB + (MODE == 8 ? l : 0)];
        if (MODE == 8) { a[l][0] = q.x; a[l][1] = q.y; a[l][2] = q.z; a[l][3] = q.w; continue; }
        if (MODE == 5) {
            i8_decode4_off(l ? q.z : q.x, a[l], ng[l]);
            i8_decode4_off(l ? q.w : q.y, a[l] + 2, ng[l] + 2);
        } else {
            i8_decode4(l ? q.z : q.x, tb, a[l], ng[l]);
            i8_decode4(l ? q.w : q.y, tb, a[l] + 2, ng[l] + 2);
        }
    }
    float fq[2][4];  // rows g, g + 8; the tile's 16-column quarters (k-step s, register r: quarter 2 s + r / 2)
    quarter_factors(scales, wid, g, SBT, SB, K, factor, emult, fq);
#pragma unroll
    for (int s = 0; s < 2; s++)
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int rl = g + 8 * (r & 1), kk = 32 * s + 16 * (r >> 1) + 4 * t + j;
                int v = (int)(int8_t)(a[s][r] >> (8 * j)) - (int)(int8_t)(ng[s][r] >> (8 * j));
                float f = (float)v * fq[r & 1][2 * s + (r >> 1)];
                if (sizeof(OT) == 2) *(__nv_bfloat16 *)&tile[wl][rl][kk] = __float2bfloat16_rn(f);
                else *(float *)&tile[wl][rl][kk] = f;
            }
    __syncwarp();
    tile_store<OT>(tile[wl], lane, G, T, rows, cols, out);
}

// Row layout (8-bit codes, or 4-bit codes through the table): a thread per 4 codes.
template <typename OT>
__global__ void unpack_rows(const uint8_t *__restrict__ codes, const uint8_t *__restrict__ scales, const float *__restrict__ factor,
                            float emult, int4 lut4, int rows, int cols, int eb, int K, int SB, OT *__restrict__ out)
{
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i >= (size_t)rows * cols) return;
    int r = (int)(i / cols), k = (int)(i % cols);
    const signed char *lut = (const signed char *)&lut4;
    const uint8_t *cr = codes + (size_t)r * cols * eb / 8;
    const uint8_t *sp = scales + ((size_t)r * (cols / K) + k / K) * SB;
    float f = scale_factor_at(sp, SB, factor, emult);
    float v[4];
#pragma unroll
    for (int e = 0; e < 4; e++) {
        int q = eb == 8 ? (int)(signed char)cr[k + e] : lut[(cr[(k + e) / 2] >> (4 * ((k + e) & 1))) & 15];
        v[e] = (float)q * f;
    }
    put2(out + i, v[0], v[1]);
    put2(out + i + 2, v[2], v[3]);
}

template <typename OT>
static bq_status unpack(const bq_cuda_w *w, OT *d_out)
{
    if (w->i8) {
        size_t n = (size_t)w->R16 / 16 * w->NT;  // tiles, a warp each
        unsigned nb = (unsigned)((n + 7) / 8);
        uint4 tab = make_uint4(w->tab4[0], w->tab4[1], w->tab4[2], w->tab4[3]);
        launch_k(false, w->i8 == 8 ? unpack_i8<8, OT> : w->i8 == 5 ? unpack_i8<5, OT> : unpack_i8<4, OT>, nb, 256, (const uint4 *)w->codes, w->scales, w->d_factor,
                 w->emult, w->rows, w->cols, w->NT, w->KT, w->sbytes, tab, d_out);
    } else if (w->tc) {
        size_t n = (size_t)w->R16 / 16 * w->NT;  // tiles, a warp each
        unsigned nb = (unsigned)((n + 7) / 8);
#define U(MODE) launch_k(false, unpack_tc<MODE, OT>, nb, 256, (const uint4 *)w->codes, w->scales, w->d_factor, w->emult, w->cmode, \
                         w->rows, w->cols, w->NT, w->KT, w->sbytes, d_out, w->hi, w->lut6)
        if (w->tc == 1) U(1);
        else if (w->tc == 2) U(2);
        else if (w->tc == 6) U(6);
        else if (w->tc == 7) U(7);
        else U(3);
#undef U
    } else {
        int4 lut4;
        memcpy(&lut4, w->lut, 16);
        size_t n = (size_t)w->rows * w->cols / 4;
        launch_k(false, unpack_rows<OT>, (unsigned)((n + 255) / 256), 256, w->codes, w->scales, w->d_factor, w->emult, lut4, w->rows,
                 w->cols, w->eb, w->K, w->sbytes, d_out);
    }
    return launched(sizeof(OT) == 2 ? "unpack to bf16" : "unpack to float32");
}

extern "C" bq_status bq_cuda_w_to_bf16(const bq_cuda_w *w, void *d_out) { return unpack(w, (__nv_bfloat16 *)d_out); }
extern "C" bq_status bq_cuda_w_to_f32(const bq_cuda_w *w, float *d_out) { return unpack(w, d_out); }
