/* mma.sync m16n8k32 / m16n8k16 with 8-bit integers, s8 x s8 -> s32, as the PTX ISA
 * defines its fragments ("Matrix Fragments for mma.m16n8k32" and "for mma.m16n8k16
 * with integer type"): lane 4g+t's A register r, byte j is row g + 8 (r & 1),
 * column 4t + j + 16 (r >> 1); B register r, byte j is row 4t + j + 16 r of column g;
 * D element i is row g + 8 (i >> 1), column 2t + (i & 1). K 16 takes A registers
 * 0-1 and B register 0. C and C++: the int8 layout's CPU model (test_i8layout.c)
 * and the CUDA simulator (cusim.h) both multiply through it. */
#ifndef BQ_PTX_MMA_H
#define BQ_PTX_MMA_H
#include <stdint.h>

/* d[0..4) += lane's part of a b, from the warp's registers a[32][4], b[32][2]. */
static inline void ptx_mma_s8_lane(int lane, int32_t d[4], const uint32_t (*a)[4], const uint32_t (*b)[2], int K)
{
    int8_t A[16][32] = {{0}}, B[32][8] = {{0}};
    for (int l = 0; l < 32; l++) {
        int g = l / 4, t = l % 4;
        for (int r = 0; r < K / 8; r++)
            for (int j = 0; j < 4; j++) A[g + 8 * (r & 1)][4 * t + j + 16 * (r >> 1)] = (int8_t)(a[l][r] >> (8 * j));
        for (int r = 0; r < K / 16; r++)
            for (int j = 0; j < 4; j++) B[4 * t + j + 16 * r][g] = (int8_t)(b[l][r] >> (8 * j));
    }
    for (int i = 0; i < 4; i++) {
        int row = lane / 4 + 8 * (i >> 1), col = 2 * (lane % 4) + (i & 1);
        int32_t s = 0;
        for (int k = 0; k < K; k++) s += A[row][k] * B[k][col];
        d[i] += s;
    }
}

#endif
