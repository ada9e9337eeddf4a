/* The integer tensor-core GEMV (src/cuda/gemv.cu: gemv_i8) modelled on the CPU:
 * its weight layout, 4-bit decode and activation pieces (src/cuda/i8_layout.h,
 * the code the device runs) put through the MMA as the PTX ISA defines its
 * fragments (tests/cusim/ptx_mma.h, written from the ISA's tables independently
 * of the layout's index functions), then scaled and summed with the kernel's operations (fused
 * multiply-adds where it has them).
 * Runs without a GPU; test_cuda runs the kernel itself against the same kind of
 * reference (max |err| / max |y| < 1e-5 against a double product of the decoded
 * weights). */
#include "harness.h"
#include "blockq.h"
#include "pmat.h"
#include "i8_layout.h"
#include "cusim/ptx_mma.h"

/* The warp's MMA (cusim/ptx_mma.h): every lane's part. */
static void mma_model(int32_t d[32][4], const uint32_t a[32][4], const uint32_t b[32][2], int k16)
{
    for (int lane = 0; lane < 32; lane++) ptx_mma_s8_lane(lane, d[lane], a, b, k16 ? 16 : 32);
}

/* prmt against the ISA's own examples and the sign-replicating selectors. */
static void prmt_cases(void)
{
    uint32_t a = 0x83828180u, b = 0x07060504u;
    CHECK(i8_prmt(a, b, 0x3210) == a, "identity");
    CHECK(i8_prmt(a, b, 0x7654) == b, "b");
    CHECK(i8_prmt(a, b, 0x0123) == 0x80818283u, "reverse");
    CHECK(i8_prmt(a, b, 0x8C40) == 0xFF000480u, "sign of byte 0 (0x80) and byte 4 (0x04): %08x", i8_prmt(a, b, 0x8C40));
    CHECK(i8_prmt(a, b, 0xFFFF3210u) == a, "bits above the 16th ignored");
}

/* Every code in every nibble position of a word decodes to its table value
 * (P - N, bytewise), for each 4-bit grid the int8 path takes, through the slots'
 * tables (mode 4) or as offset nibbles (mode 5: values in [-8, 7]; the element
 * nibble i8_place_row puts at position pos lands in register pos % 2, byte pos / 2). */
static void decode4_cases(const char *name, const pmat *m, int mode)
{
    uint8_t slot[16];
    uint32_t tab[4];
    if (mode == 4 ? !i8_slots4(m->lut, slot, tab) : !i8_off4(m->lut, slot)) { CHECK(0, "%s: 4-bit grid refused (mode %d)", name, mode); return; }
    int bad = 0;
    for (int c = 0; c < 16; c++)
        for (int pos = 0; pos < 8; pos++) {
            uint32_t w = 0x0u, P[2], N[2];
            for (int q = 0; q < 8; q++) w |= (uint32_t)slot[(c + 5 * q) % 16] << (4 * q);  /* other codes beside it */
            w = (w & ~(0xFu << (4 * pos))) | (uint32_t)slot[c] << (4 * pos);
            int reg = pos / 4, byte = pos % 4;
            if (mode == 4) i8_decode4(w, tab, P, N);
            else i8_decode4_off(w, P, N), reg = pos % 2, byte = pos / 2;
            int v = (int8_t)(P[reg] >> (8 * byte)) - (int8_t)(N[reg] >> (8 * byte));
            bad += v != m->lut[c];
        }
    CHECK(bad == 0, "%s (mode %d): %d of 128 nibbles decode to another value", name, mode, bad);
}

/* Pieces: bounded, and their sum is x within 2^(E - 28) (|x| < 2^E), over
 * adversarial values. */
static void pieces_cases(void)
{
    static const float sp[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 63.5f, 1e-40f, -3e-39f, 3.0e38f, -3.4e38f, 1.17549435e-38f, 7.0f};
    int bad = 0, big = 0;
    for (int it = 0; it < 20000; it++) {
        float tile[64];
        uint32_t m = 0;
        for (int i = 0; i < 64; i++) {
            float v = it % 3 ? t_normal() * ldexpf(1.0f, (int)(t_rand() % 60) - 30) : sp[t_rand() % 12] * (t_rand() % 2 ? 1.0f : t_unif());
            tile[i] = v;
            uint32_t u;
            memcpy(&u, &v, 4);
            m = (u & 0x7fffffffu) > m ? u & 0x7fffffffu : m;
        }
        int E = i8_tile_exp(m);
        float pre = ldexpf(1.0f, 6 - E);
        for (int i = 0; i < 64; i++) {
            int8_t p[I8_PIECES];
            i8_pieces(tile[i], pre, p);
            double s = 0;
            for (int k = 0; k < I8_PIECES; k++) {
                big += p[k] > 64 || p[k] < -64;
                s += ldexp((double)p[k], E - 6 - 7 * k);
            }
            bad += !(fabs(s - tile[i]) <= ldexp(1.0, E - 28));
        }
    }
    CHECK(big == 0, "%d pieces outside [-64, 64]", big);
    CHECK(bad == 0, "%d values not within 2^(E-28) of their pieces' sum", bad);
}

static float scale_of(const pmat *m, uint32_t code)
{
    if (m->sbytes == 1) return m->sc[code & 0xffu];
    if (m->sbytes == 2) return half_to_f32(code & 0xffffu) * m->emult;
    float f;
    memcpy(&f, &code, 4);
    return f * m->emult;
}

/* y = W x for n tokens the way gemv_i8 computes it (4-bit codes: mode 4 or 5);
 * returns max|err| / max|y|. */
static double model_gemv(const pmat *m, int mode, const float *x, int n, const double *ref)
{
    int R = m->rows, C = m->cols, NT = (C + 63) / 64, NG = (R + 15) / 16, eb = m->eb;
    int KT = m->K >= 64 ? 64 : m->K, lb = eb == 8 ? 32 : 16;
    uint8_t slot[16];
    uint32_t tab[4] = {0};
    if (eb == 8) mode = 8;
    if (eb == 4 && (mode == 4 ? !i8_slots4(m->lut, slot, tab) : !i8_off4(m->lut, slot))) return INFINITY;
    uint8_t *tiles = calloc((size_t)NG * NT * 32 * lb, 1), *v = malloc((size_t)C);
    uint32_t *sc = malloc((size_t)m->nb * 4), *scales = malloc((size_t)R * m->nb * 4);
    for (int r = 0; r < R; r++) {
        pmat_row_codes(m, r, scales + (size_t)r * m->nb, v);
        for (int k = 0; k < C; k++) v[k] = eb == 8 ? (uint8_t)m->lut[v[k]] : slot[v[k]];
        i8_place_row(tiles, mode, NT, r, C, v);
    }
    /* activations: per tile and token the pieces, as B fragments, and the columns' factors */
    int NB = (I8_PIECES * n + 7) / 8;
    uint8_t *xq = calloc((size_t)NB * NT * 32 * 16, 1);
    float *xs = calloc((size_t)NB * NT * 8, sizeof(float));
    for (int T = 0; T < NT; T++)
        for (int tau = 0; tau < n; tau++) {
            uint32_t mx = 0;
            for (int kk = 0; kk < 64 && 64 * T + kk < C; kk++) {
                uint32_t u;
                memcpy(&u, &x[(size_t)tau * C + 64 * T + kk], 4);
                mx = (u & 0x7fffffffu) > mx ? u & 0x7fffffffu : mx;
            }
            int E = i8_tile_exp(mx);
            float pre = mx > 0x7f7fffffu ? 0.0f : ldexpf(1.0f, 6 - E), post = mx > 0x7f7fffffu ? NAN : ldexpf(1.0f, E - 6);
            for (int p = 0; p < I8_PIECES; p++) {
                int c = I8_PIECES * tau + p;
                xs[((size_t)(c / 8) * NT + T) * 8 + c % 8] = post * ldexpf(1.0f, -7 * p);
            }
            for (int kk = 0; kk < 64 && 64 * T + kk < C; kk++) {
                int8_t pc[I8_PIECES];
                i8_pieces(x[(size_t)tau * C + 64 * T + kk], pre, pc);
                for (int p = 0; p < I8_PIECES; p++) {
                    int c = I8_PIECES * tau + p, lane, byte;
                    i8_b_byte(c % 8, kk, &lane, &byte);
                    xq[(((size_t)(c / 8) * NT + T) * 32 + lane) * 16 + byte] = (uint8_t)pc[p];
                }
            }
        }
    double d = 0, mref = 0;
    for (int G = 0; G < NG; G++) {
        float acc[32][2][4] = {{{0}}};  /* [lane][n8 block][element] */
        for (int T = 0; T < NT; T++) {
            float tacc[32][2][4] = {{{0}}};
            int32_t dsum[32][2][4] = {{{0}}};
            for (int s = 0; s < 2; s++) {
                uint32_t aP[32][4], aN[32][4], b[2][32][2];
                for (int lane = 0; lane < 32; lane++) {
                    const uint8_t *L = tiles + (((size_t)G * NT + T) * 32 + lane) * lb;
                    for (int r = 0; r < 4; r++) {
                        if (eb == 8) { memcpy(&aP[lane][r], L + 16 * s + 4 * r, 4); aN[lane][r] = 0; continue; }
                        uint32_t w, P[2], N[2];
                        memcpy(&w, L + 4 * (2 * s + r / 2), 4);
                        if (mode == 5) i8_decode4_off(w, P, N);
                        else i8_decode4(w, tab, P, N);
                        aP[lane][r] = P[r % 2];
                        aN[lane][r] = N[r % 2];
                    }
                    for (int nb = 0; nb < NB; nb++) memcpy(b[nb][lane], xq + (((size_t)nb * NT + T) * 32 + lane) * 16 + 8 * s, 8);
                }
                /* per block of KT columns: the integer sums, then the rows' scale factors */
                for (int half = 0; half < (KT == 16 ? 2 : 1); half++)
                    for (int nb = 0; nb < NB; nb++) {
                        int32_t dp[32][4] = {{0}}, dn[32][4] = {{0}};
                        uint32_t ap[32][4], an[32][4], bb[32][2];
                        for (int lane = 0; lane < 32; lane++)
                            for (int r = 0; r < 4; r++) {
                                int rs = KT == 16 ? (r < 2 ? r + 2 * half : 0) : r;
                                ap[lane][r] = aP[lane][rs];
                                an[lane][r] = aN[lane][rs];
                                bb[lane][r % 2] = b[nb][lane][KT == 16 ? half : r % 2];
                            }
                        mma_model(dp, ap, bb, KT == 16);
                        mma_model(dn, an, bb, KT == 16);
                        for (int lane = 0; lane < 32; lane++)
                            for (int i = 0; i < 4; i++) dsum[lane][nb][i] += dp[lane][i] - dn[lane][i];
                        if (KT == 64 && s == 0) continue;  /* one block over both k-steps */
                        int blk = (64 * T + 32 * s + 16 * half) / m->K;
                        for (int lane = 0; lane < 32; lane++)
                            for (int i = 0; i < 4; i++) {
                                int row = 16 * G + lane / 4 + 8 * (i >> 1);
                                /* past the last block: the zero code of the device's padding */
                                float f = row < R ? scale_of(m, blk < m->nb ? scales[(size_t)row * m->nb + blk] : 0u) : 0.0f;
                                tacc[lane][nb][i] = fmaf((float)dsum[lane][nb][i], f, tacc[lane][nb][i]);
                                dsum[lane][nb][i] = 0;
                            }
                    }
            }
            for (int lane = 0; lane < 32; lane++)
                for (int nb = 0; nb < NB; nb++)
                    for (int i = 0; i < 4; i++)
                        acc[lane][nb][i] = fmaf(tacc[lane][nb][i], xs[((size_t)nb * NT + T) * 8 + 2 * (lane % 4) + (i & 1)], acc[lane][nb][i]);
        }
        for (int rr = 0; rr < 16 && 16 * G + rr < R; rr++)
            for (int tau = 0; tau < n; tau++) {
                float y = 0.0f;
                for (int p = 0; p < I8_PIECES; p++) {
                    int c = I8_PIECES * tau + p, cc = c % 8;
                    y += acc[(rr % 8) * 4 + cc / 2][c / 8][(rr >= 8) * 2 + (cc & 1)];
                }
                double rv = ref[(size_t)tau * R + 16 * G + rr];
                d = t_max(d, fabs(y - rv));
                mref = t_max(mref, fabs(rv));
            }
    }
    free(tiles); free(v); free(sc); free(scales); free(xq); free(xs);
    return mref > 0 ? d / mref : d;
}

/* The shapes of test_cuda's GEMV tests: partial row groups and tiles, 1-4 tokens. */
static void gemv_cases(void)
{
    static const char *fmts[] = {"mxint8", "int8_b32_sfp16", "mxfp4", "nvfp4", "int4_b32_sfp16", "bfp4_b32", "bfp4_b16",
                                 "int4_g128", "int4_g64", "int4_g256"};
    static const int shapes[][3] = {{300, 1024, 3}, {37, 1056, 1}, {64, 2048, 4}, {129, 256, 2}, {48, 4096, 1}};
    int runs = 0;
    for (size_t fi = 0; fi < sizeof fmts / sizeof *fmts; fi++) {
        bq_format *f;
        OK(bq_format_parse(fmts[fi], &f));
        for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
            int R = shapes[si][0], C = shapes[si][1], n = shapes[si][2];
            if (f->block >= 64 && C % f->block) continue;
            float *w = malloc((size_t)R * C * 4), *wq = malloc((size_t)R * C * 4), *x = malloc((size_t)n * C * 4);
            double *ref = malloc((size_t)n * R * sizeof *ref);
            for (size_t i = 0; i < (size_t)R * C; i++) w[i] = t_normal() * 0.05f;
            for (size_t i = 0; i < (size_t)n * C; i++) x[i] = t_normal() * (t_rand() % 64 ? 1.0f : 40.0f);
            pmat *m;
            OK(pmat_pack(f, w, R, C, NULL, &m));
            CHECK(m->kind == PM_PANEL && (m->eb == 4 || m->eb == 8), "%s is not held as panels", f->name);
            /* 4-bit grids: both modes where the offset applies (values in [-8, 7]) */
            uint8_t sl[16];
            int modes = m->kind == PM_PANEL && m->eb == 4 && i8_off4(m->lut, sl) ? 2 : 1;
            for (int mi = 0; mi < modes && m->kind == PM_PANEL; mi++) {
                int mode = m->eb == 8 ? 8 : mi ? 5 : 4;
                if (si == 0 && m->eb == 4) decode4_cases(f->name, m, mode);
                pmat_decode(m, 0, R, wq);
                t_ref_gemv(wq, x, R, C, n, ref);
                double e = model_gemv(m, mode, x, n, ref);
                CHECK(e < 1e-5, "int8 model %s (mode %d) %dx%d n=%d: %.2e from the reference", f->name, mode, R, C, n, e);
                printf("  int8 model %-15s mode %d %4dx%-4d n=%d max|err|/max|y| = %.2e\n", f->name, mode, R, C, n, e);
                /* a NaN activation makes its token's outputs NaN, never a number */
                float keep = x[(size_t)(n - 1) * C + C / 2];
                x[(size_t)(n - 1) * C + C / 2] = NAN;
                double en = model_gemv(m, mode, x, n, ref);
                CHECK(en != en, "int8 model %s (mode %d): a NaN activation vanished (%.2e)", f->name, mode, en);
                x[(size_t)(n - 1) * C + C / 2] = keep;
                runs++;
            }
            pmat_free(m);
            free(w); free(wq); free(x); free(ref);
        }
        bq_format_free(f);
    }
    printf("  int8 tensor-core GEMV modelled: %d format x shape cases\n", runs);
}

int main(void)
{
    prmt_cases();
    pieces_cases();
    gemv_cases();
    return test_summary("test_i8layout");
}
