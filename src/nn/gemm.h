/* latentd's own matrix product: register-tiled micro-kernels, one per
 * instruction set, chosen at run time.  Shared by the files of src/nn only.
 *
 * C[m×n] (+)= A[m×k] · B[k×n], row-major.  The product is cut into tiles of
 * mr rows × nr columns.  A is read in place, through one pointer per tile
 * row; B is read from a packed panel, [k][nr] contiguous, so the inner loop
 * streams one array.  The Winograd convolution writes its transformed input
 * straight into that panel layout (no packing pass); other callers go
 * through ld_gemm, which packs B a slice of k at a time. */
#ifndef LATENTD_NN_GEMM_H
#define LATENTD_NN_GEMM_H

#include "latentd/nn.h"

#include <stdbool.h>
#include <stddef.h>

#define LD_GEMM_MAX_MR 8
#define LD_GEMM_MAX_NR 48

/* c[i][j] (+)= sum_p a[i][p] · b[p][j] for a full mr×nr tile: a[i] points at
 * row i of A (k floats), b at a packed panel [k][nr]. */
typedef void (*ld_tile_fn)(int k, const float *const *a, const float *b, float *c, size_t ldc,
                           int accumulate);

/* dst[x] = scale·src[x] + shift, then SiLU when silu is set, for x < n: a
 * row of a convolution's input through its GroupNorm (ld_input_map).
 * src and dst may be the same. */
typedef void (*ld_map_fn)(const float *src, float *dst, int n, float scale, float shift,
                          int silu);

/* Winograd's input transform down six rows: t[i][x] = (Bᵀ d)[i][x] for
 * x < n (see winograd.c); the rows never overlap. */
typedef void (*ld_wino_rows_fn)(const float *const d[6], float *const t[6], int n);

/* Winograd's input transform across one row (see winograd.c): for each of
 * `tiles` tiles, the row's 6 values starting at row[4·tile], times B, into
 * out[0..5][tile]. */
typedef void (*ld_wino_cols_fn)(const float *row, int tiles, float *const out[6]);

/* Winograd's output transform for one output row of `tiles` whole tiles,
 * from the six runs of (Aᵀ M): see ld_wino_out_row_generic in winograd.c. */
typedef void (*ld_wino_out_fn)(const float *const s[6], int tiles, float bias, float *row,
                               int accumulate);

/* row[x] = exp(row[x] - shift) for x < n; returns their sum, added in
 * double (softmax's denominator) */
typedef double (*ld_exp_sum_fn)(float *row, int n, float shift);

/* dst[x] = src[2x] for x < n (src holds 2n floats): a stride-2
 * convolution's input columns, gathered for im2col */
typedef void (*ld_even_fn)(const float *src, float *dst, int n);

/* *sum = Σ x[i], *sum_sq = Σ x[i]² over n floats, added in double
 * (GroupNorm's statistics: a group holds millions of values) */
typedef void (*ld_sums_fn)(const float *x, size_t n, double *sum, double *sum_sq);

/* Winograd's weights: u[pos][n] = (G g_n Gᵀ)[pos] for n < count (at most
 * LD_WINO_WEIGHTS_RUN), g_n the 3x3 kernel at w + 9n (winograd_weights.h) */
typedef void (*ld_wino_weights_fn)(const float *w, int count, float *const u[36]);

/* One input row y of channel c (of a plane h × w) into padded_w floats:
 * padded[x + 1] = row[x], through the input map if any, zeros around and
 * for a y outside the plane.  The rows the Winograd transform and the
 * few-channel convolution read. */
void ld_conv_pad_row(const float *plane, int h, int w, int y, int padded_w,
                     const ld_input_map *map, ld_map_fn map_row, int c, float *padded);

/* Tile rows per band of a Winograd convolution (tiles_h × tiles_w tiles, at
 * most max_rows a band): the count that computes the fewest panel columns,
 * the fewest bands among equals.  A band's last panel is padded to
 * panel_cols tiles (the kernel's nr; 0 or 1 for none), and every padded
 * column costs the products as much as a real one: at 64x64, 7 rows of 16
 * tiles a band made 336 columns for 256 tiles, 6 rows make 288. */
int ld_winograd_band_rows(int tiles_h, int tiles_w, int max_rows, int panel_cols);

/* One panel of B for the micro-kernels: rows [k0, k0+kc) and columns
 * [j0, j0+cols) into [kc][nr], zeros past cols.  Transposed: B given as
 * Bᵀ [n × k] (row j of Bᵀ is column j of B). */
void ld_gemm_pack_panel(const float *b, size_t ldb, int transposed, int k0, int kc, int j0,
                        int cols, int nr, float *panel);

/* Columns of one row of a few-channel convolution's output computed at a
 * time; its input rows must be readable to a whole block past the width. */
#define LD_CONV_ROW_BLOCK 32

/* One output row of a 3x3 convolution of few input channels (the first
 * layer's RGB) for every output channel at once:
 *   out[co·out_stride + x] (+)= b[co] + Σ_t w[co·taps + t] · tap[t][x]
 * for x < width, each tap an input row (shifted, padded and mapped) that one
 * weight reads.  Winograd and im2col stage 36 or 27 floats per output pixel
 * for its 27 multiply-adds; this writes each output once.  NULL where the
 * kernel has none (the convolution then takes the general path). */
typedef void (*ld_conv_row_fn)(const float *const *tap, int taps, const float *w,
                               const float *b, int out_ch, int width, float *out,
                               size_t out_stride, int accumulate);

/* What one instruction set brings: the product's micro-kernel and the
 * elementwise map whose expf would otherwise cost a third of a convolution. */
typedef struct {
    ld_kernel kind;
    int mr, nr;
    ld_tile_fn tile;   /* NULL for LD_KERNEL_BLAS: products go to cblas_sgemm */
    /* the full tile for an A that does not stay in L2 (see
     * LD_GEMM_FAR_A_FLOATS): it prefetches A's rows; NULL to use tile */
    ld_tile_fn tile_far_a;
    /* tiles 1 and 2 vectors wide (B's rows still nr apart), for a panel's
     * last columns; NULL where the kernel has none */
    ld_tile_fn narrow_tile[2];
    int vector;        /* floats per vector: the narrow tiles' step */
    ld_map_fn map_row;
    ld_wino_weights_fn wino_weights;
    ld_conv_row_fn conv_row;
    ld_wino_rows_fn wino_rows;
    ld_wino_cols_fn wino_cols;
    ld_wino_out_fn wino_out_row;
    ld_exp_sum_fn exp_sum;
    ld_even_fn even;
    ld_sums_fn sums;
} ld_gemm_kernel;

/* The portable map (gemm.c) and column transform (winograd.c), for the
 * portable kernel and the tails of vector ones. */
void ld_map_row_generic(const float *src, float *dst, int n, float scale, float shift, int silu);
double ld_exp_sum_generic(float *row, int n, float shift);
void ld_even_generic(const float *src, float *dst, int n);
void ld_sums_generic(const float *x, size_t n, double *sum, double *sum_sq);
void ld_wino_weights_generic(const float *w, int count, float *const u[36]);
void ld_wino_rows_generic(const float *const d[6], float *const t[6], int n);
void ld_wino_cols_generic(const float *row, int tiles, float *const out[6]);
void ld_wino_out_row_generic(const float *const s[6], int tiles, float bias, float *row,
                             int accumulate);

/* The kernel of `kind` (not LD_KERNEL_AUTO); NULL when this build or CPU lacks it. */
const ld_gemm_kernel *ld_gemm_kernel_get(ld_kernel kind);
/* The micro-kernels of gemm_x86.c; NULL off x86-64 or when the CPU lacks
 * the instructions. */
const ld_gemm_kernel *ld_gemm_kernel_avx512(void);
const ld_gemm_kernel *ld_gemm_kernel_avx2(void);

/* The pool's kernel (the best one for a NULL pool). */
const ld_gemm_kernel *ld_pool_gemm(const ld_pool *pool);

/* One tile of C at rows [0, mr) and columns [0, nr) of the kernel's tile
 * (mr <= kernel->mr, nr <= kernel->nr): a points at row 0 of A, rows lda
 * apart; b at a packed panel whose columns past nr are zero or ignored.
 * far_a: A is far (LD_GEMM_FAR_A_FLOATS), so a full tile prefetches it. */
void ld_gemm_tile(const ld_gemm_kernel *kernel, int k, const float *a, size_t lda, int mr,
                  const float *b, float *c, size_t ldc, int nr, int accumulate, bool far_a);

/* An A of this many floats (512 KiB) or more is far: the products read it
 * from L3 more than from L2 (a Winograd U of 512 channels is 1 MiB per
 * position), so ld_gemm_packed takes it a row tile at a time, the first
 * tile of each prefetching it (tile_far_a).  At 256 channels (256 KiB) the
 * prefetching tile measured 3-5 % slower than the plain one. */
#define LD_GEMM_FAR_A_FLOATS ((size_t)128 * 1024)

/* One product on the calling thread, B already packed in panels of
 * kernel->nr columns ([n_panels][k][nr], panel stride k·nr): every tile of
 * C[m×n] = A·B, panel by panel, or row tile by row tile for a far A. */
void ld_gemm_packed(const ld_gemm_kernel *kernel, int m, int n, int k, const float *a,
                    size_t lda, const float *b_panels, float *c, size_t ldc);

#endif
