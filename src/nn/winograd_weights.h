/* Winograd's weight transform U = G g Gᵀ for one output channel and a run of
 * input channels, written so that compilers vectorise it along the input
 * channels: the body is inlined into each kernel's own copy (gemm.c's
 * portable one, gemm_x86.c's AVX-512 and AVX2 ones), each compiled for its
 * instruction set.  Shared by the files of src/nn only. */
#ifndef LATENTD_NN_WINOGRAD_WEIGHTS_H
#define LATENTD_NN_WINOGRAD_WEIGHTS_H

#include <stddef.h>

#define LD_WINO_WEIGHTS_RUN 64 /* input channels per call, at most */

/* u[pos][n] = (G g_n Gᵀ)[pos] for n < count, g_n the 3x3 kernel at
 * w + 9n; u[pos] points at position pos's run (36 of them). */
static inline __attribute__((always_inline)) void
ld_wino_weights_body(const float *w, int count, float *const u[36])
{
    /* G for F(4x4, 3x3) at the points 0, ±1, ±2, ∞ */
    static const float G[6][3] = {
        {1.0f / 4, 0, 0},
        {-1.0f / 6, -1.0f / 6, -1.0f / 6},
        {-1.0f / 6, 1.0f / 6, -1.0f / 6},
        {1.0f / 24, 1.0f / 12, 1.0f / 6},
        {1.0f / 24, -1.0f / 12, 1.0f / 6},
        {0, 0, 1},
    };
    float k[9][LD_WINO_WEIGHTS_RUN];     /* the kernels, one run per tap */
    float gg[6][3][LD_WINO_WEIGHTS_RUN]; /* G g */
    for (int n = 0; n < count; n++)
        for (int t = 0; t < 9; t++)
            k[t][n] = w[(size_t)n * 9 + t];
    for (int i = 0; i < 6; i++)
        for (int c = 0; c < 3; c++)
            for (int n = 0; n < count; n++)
                gg[i][c][n] = G[i][0] * k[c][n] + G[i][1] * k[3 + c][n] + G[i][2] * k[6 + c][n];
    for (int i = 0; i < 6; i++) /* (G g) Gᵀ */
        for (int j = 0; j < 6; j++) {
            float *dst = u[i * 6 + j];
            for (int n = 0; n < count; n++)
                dst[n] = gg[i][0][n] * G[j][0] + gg[i][1][n] * G[j][1] + gg[i][2][n] * G[j][2];
        }
}

#endif
