/* The integer tensor-core GEMV's data layout (gemv.cu: gemv_i8), shared by its
 * upload, its kernels and a CPU model in the tests (tests/test_i8layout.c), so
 * that the layout, the 4-bit decode and the activations' integer pieces are
 * checked on machines without a GPU.
 *
 * Why integers: the fp16 tensor-core GEMV (gemv_tc) is bound by its instructions,
 * 2-4 a pair of 4-bit codes to make fp16 (bench/RESULTS.md, eighteenth session).
 * Here 8-bit codes go to the int8 MMA as they are stored, and four 4-bit codes
 * become four int8 values in one byte permute (two: the positive and the negative
 * ones, each through its own 8-entry table; the MMA subtracts them).
 *
 * mma.m16n8k32 with 8-bit integers (PTX ISA, "Matrix Fragments for mma.m16n8k32"),
 * lane = 4 g + t:
 *   A 16x32: a0 row g, k 4t..4t+3 (byte j: k 4t+j); a1 row g+8, same k;
 *            a2 row g, k 16+4t..16+4t+3;            a3 row g+8, same k
 *   B 32x8:  b0 column g, k 4t..4t+3; b1 column g, k 16+4t..16+4t+3
 *   D 16x8:  d0, d1 row g, columns 2t, 2t+1; d2, d3 row g+8
 * mma.m16n8k16 takes {a0, a1} and {b0} with the same elements (16-element blocks).
 * A 64-column tile is two k-steps s.
 *
 * Weights, per 16-row group G and tile T, 32 lanes, tile after tile ([G][T][lane]):
 *   8-bit: 32 bytes a lane: k-step s's registers a0..a3 at bytes 16 s + 4 r + j,
 *          each the element's integer value (the format's table applied).
 *   4-bit: 16 bytes a lane: word 2 s + h holds a_{2h} in nibbles 0-3 and a_{2h+1}
 *          in nibbles 4-7 (nibble j: element j); nibble = the code's slot (mode 4,
 *          below); mode 5 (values in [-8, 7]) interleaves them, nibble = value + 8.
 * Scales as gemv_tc's: [G][T][16 rows][scale bytes of the tile].
 *
 * Activations: per token and 64-column tile, x = 2^e (p0 + p1 2^-7 + p2 2^-14 +
 * p3 2^-21) + r with int8 pieces |p| <= 64, e from the tile's largest |x| and
 * |r| <= 2^(e-22): 28 bits against the tile's largest value. Column c = 4 tau + p
 * of n8 block c / 8 holds piece p of token tau; a lane's uint4 holds b0, b1 of
 * k-step 0, then of k-step 1, and a second uint4 the same pieces negated (the
 * 4-bit codes' negative parts multiply them): [n8 block][T][lane][2].
 */
#ifndef BQ_I8_LAYOUT_H
#define BQ_I8_LAYOUT_H
#include <math.h>
#include <stdint.h>
#include "qkern.h"  /* BQ_HD */

#define I8_HD static inline BQ_HD

enum { I8_PIECES = 4 };

/* The byte of a lane's 32 (8-bit weights) holding row rr (0-15) of a 16-row group
 * at column kk (0-63) of a tile. */
I8_HD void i8_a_byte(int rr, int kk, int *lane, int *byte)
{
    int s = kk / 32, k = kk % 32, r = (rr >= 8) + 2 * (k >= 16);
    *lane = 4 * (rr % 8) + (k % 16) / 4;
    *byte = 16 * s + 4 * r + k % 4;
}

/* The nibble of a lane's 32 (4-bit weights; nibble i in byte i / 2, low first);
 * off: the offset layout (mode 5, below), a_{2h} and a_{2h+1} interleaved. */
I8_HD void i8_a_nibble(int rr, int kk, int off, int *lane, int *nib)
{
    int s = kk / 32, k = kk % 32, h = k >= 16;
    *lane = 4 * (rr % 8) + (k % 16) / 4;
    *nib = 8 * (2 * s + h) + (off ? 2 * (k % 4) + (rr >= 8) : 4 * (rr >= 8) + k % 4);
}

/* The byte of a lane's uint4 (activations) holding column c (0-7) of an n8 block at
 * column kk (0-63) of a tile. */
I8_HD void i8_b_byte(int c, int kk, int *lane, int *byte)
{
    int s = kk / 32, k = kk % 32;
    *lane = 4 * c + (k % 16) / 4;
    *byte = 8 * s + 4 * (k >= 16) + k % 4;
}

/* The tile's exponent e + 6 (|x| < 2^(e+6)) from the bits of its largest |x|, m;
 * kept >= -121 so that 2^-(e) stays a float. */
I8_HD int i8_tile_exp(uint32_t m)
{
    int E = m >> 23 ? (int)(m >> 23) - 126 : -126;
    return E < -121 ? -121 : E;
}

/* x's four pieces at pre = 2^(6 - E) (|x| < 2^E); pre 0 (a tile holding Inf or
 * NaN, whose factor is NaN) gives zeros. Exact steps: x * pre and the scalings
 * by 128 are powers of two, u - rint(u) is exact. */
I8_HD void i8_pieces(float x, float pre, int8_t p[I8_PIECES])
{
    float u = x * pre;
    for (int i = 0; i < I8_PIECES; i++) {
        float q = pre != 0.0f ? rintf(u) : 0.0f;
        p[i] = (int8_t)q;
        u = (u - q) * 128.0f;
    }
}

/* prmt.b32 d, a, b, sel (PTX, default mode): byte i of d is byte (sel_i & 7) of
 * {b, a}, or with bit 3 of sel_i set that byte's sign bit copied into all 8 bits;
 * sel_i is nibble i of sel. */
I8_HD uint32_t i8_prmt(uint32_t a, uint32_t b, uint32_t sel)
{
#ifdef __CUDA_ARCH__
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
#else
    uint64_t src = (uint64_t)b << 32 | a;
    uint32_t d = 0;
    for (int i = 0; i < 4; i++) {
        unsigned s = (sel >> (4 * i)) & 15u;
        uint32_t v = (uint32_t)(src >> (8 * (s & 7u))) & 0xFFu;
        if (s & 8u) v = v & 0x80u ? 0xFFu : 0u;
        d |= v << (8 * i);
    }
    return d;
#endif
}

/* Four-bit slots: values >= 0 in slots 0-7, negative ones in 8-15. tab[0..1]:
 * slot s < 8 -> value (bytes), tab[2..3]: slot 8 + s -> -value. Word w's eight
 * slots become two A registers of positive parts (P: nibbles 0-3, 4-7) and two of
 * negative parts (N): a slot >= 8 selects with bit 3 set, which copies the sign
 * of a table byte (0) into P; flipping bit 3 does the same for N. */
I8_HD void i8_decode4(uint32_t w, const uint32_t tab[4], uint32_t P[2], uint32_t N[2])
{
    uint32_t f = w ^ 0x88888888u;
    P[0] = i8_prmt(tab[0], tab[1], w);
    P[1] = i8_prmt(tab[0], tab[1], w >> 16);
    N[0] = i8_prmt(tab[2], tab[3], f);
    N[1] = i8_prmt(tab[2], tab[3], f >> 16);
}

/* Mode 5, 4-bit codes whose values lie in [-8, 7] (int4 groups and blocks, BFP4):
 * the nibble is value + 8, and byte j of word 2 s + h holds element j of a_{2h} in
 * its low nibble and of a_{2h+1} in its high one, so that two masks make the A
 * registers (values + 8, never negative) and the negative parts are 8 everywhere:
 * the MMA of 8 with the negated pieces takes the offset back out, once for all the
 * row groups of a tile (gemv_i8), where mode 4 decodes with four byte permutes a
 * word and multiplies both parts in every row group. */
I8_HD void i8_decode4_off(uint32_t w, uint32_t P[2], uint32_t N[2])
{
    P[0] = w & 0x0F0F0F0Fu;
    P[1] = (w >> 4) & 0x0F0F0F0Fu;
    N[0] = N[1] = 0x08080808u;
}

/* Mode 5's nibbles for lut[16] (host): 0 where a value is outside [-8, 7]. */
static inline int i8_off4(const int8_t lut[16], uint8_t slot[16])
{
    for (int c = 0; c < 16; c++)
        if (lut[c] < -8 || lut[c] > 7) return 0;
    for (int c = 0; c < 16; c++) slot[c] = (uint8_t)(lut[c] + 8);
    return 1;
}

/* Slots and tables for a 4-bit grid lut[16] (host): slot[c] for code c; zeros
 * (+0 and -0) take the half with room. 0 where the grid does not fit (more than
 * 8 values > 0 or < 0, or a value of -128). */
static inline int i8_slots4(const int8_t lut[16], uint8_t slot[16], uint32_t tab[4])
{
    int np = 0, nn = 0, npos = 0, zp = 0;
    uint8_t bytes[16] = {0};
    for (int c = 0; c < 16; c++) npos += lut[c] > 0;
    for (int c = 0; c < 16; c++) {
        int neg = lut[c] < 0 || (lut[c] == 0 && zp++ >= 8 - npos);  /* zeros in P while the positive values leave room */
        if (!neg) {
            if (np == 8) return 0;
            bytes[np] = (uint8_t)lut[c];
            slot[c] = (uint8_t)np++;
        } else {
            if (nn == 8 || lut[c] == -128) return 0;
            bytes[8 + nn] = (uint8_t)-lut[c];
            slot[c] = (uint8_t)(8 + nn++);
        }
    }
    for (int i = 0; i < 4; i++)
        tab[i] = (uint32_t)bytes[4 * i] | (uint32_t)bytes[4 * i + 1] << 8 | (uint32_t)bytes[4 * i + 2] << 16 | (uint32_t)bytes[4 * i + 3] << 24;
    return 1;
}

/* Row r's element values (mode 8: the integers; 4: the slots; 5: the offset
 * nibbles) into the tiles (host; rows of one 16-row group share bytes: one caller a
 * group). */
static inline void i8_place_row(uint8_t *tiles, int mode, int NT, int r, int cols, const uint8_t *v)
{
    int G = r / 16, rr = r % 16, lane, at;
    for (int k = 0; k < cols; k++) {
        size_t tile = ((size_t)G * NT + k / 64) * 32;
        if (mode == 8) {
            i8_a_byte(rr, k % 64, &lane, &at);
            tiles[(tile + lane) * 32 + at] = v[k];
        } else {
            i8_a_nibble(rr, k % 64, mode == 5, &lane, &at);
            uint8_t *b = tiles + (tile + lane) * 16 + at / 2;
            int sh = 4 * (at % 2);
            *b = (uint8_t)((*b & ~(0xF << sh)) | (v[k] & 15) << sh);
        }
    }
}

#endif
