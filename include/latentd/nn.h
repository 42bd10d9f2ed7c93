/* Numerical kernels on float32 feature maps laid out channel-major ([C, H, W]
 * for one image).  They know nothing of models or files: the encoder graph
 * strings them together.  Matrix work goes through CBLAS. */
#ifndef LATENTD_NN_H
#define LATENTD_NN_H

#include <math.h>
#include <stddef.h>

/* SiLU (x·sigmoid(x)), the VAE's activation: one definition for every kernel
 * that applies it. */
static inline float ld_silu(float v)
{
    return v / (1.0f + expf(-v));
}

/* Threads: call ld_nn_init() once per process (BLAS then runs one thread per
 * call), and ld_nn_set_threads(n) in each thread that runs the encoder: the
 * kernels then split their work n ways. */
void ld_nn_init(void);
void ld_nn_set_threads(int threads);
int ld_nn_threads(void);
/* Which of the team's threads the caller is (0 outside parallel regions). */
int ld_nn_thread_index(void);
/* C = alpha·A·B + beta·C (row-major, no transposes), rows of A split between
 * the threads. */
void ld_sgemm_split_rows(int m, int n, int k, float alpha, const float *a, int lda,
                         const float *b, int ldb, float beta, float *c, int ldc);

/* Geometry of a 2-D convolution over one image.  Padding on the bottom and
 * right is implied by the output size: taps that fall outside the input read
 * zero, which expresses both symmetric padding and diffusers' (0,1,0,1)
 * downsample padding. */
typedef struct {
    int in_ch, in_h, in_w;
    int out_ch, out_h, out_w;
    int kernel, stride, pad_top, pad_left;
} ld_conv_geom;

/* A per-channel map applied to a convolution's input as it is read:
 * x → scale[c]·x + shift[c], then SiLU when silu is set.  This is GroupNorm
 * (+ SiLU) fused into the next convolution, so the normalised activation
 * never needs a buffer of its own.  The zero padding stays zero, as when the
 * normalised tensor is padded. */
typedef struct {
    const float *scale, *shift;
    int silu;
} ld_input_map;

/* GroupNorm as per-channel scale and shift (biased variance, eps) for one image. */
void ld_group_norm_coeffs(const float *in, int channels, size_t plane, int groups,
                          const float *gamma, const float *beta, float eps, float *scale,
                          float *shift);

/* Floats of scratch ld_conv2d needs to process at least one output row at a
 * time, and at most `budget` floats (bands of rows are sized to fit). */
size_t ld_conv2d_scratch_floats(const ld_conv_geom *g, size_t budget);

/* out[co, y, x] = bias[co] + sum weight[co, ci, ky, kx] * in[ci, y*s+ky-pt, x*s+kx-pl].
 * weight is [out_ch, in_ch, k, k]; bias may be NULL.  scratch holds
 * scratch_floats floats (from ld_conv2d_scratch_floats). */
void ld_conv2d(const ld_conv_geom *g, const float *in, const float *weight, const float *bias,
               float *out, float *scratch, size_t scratch_floats);
/* The same with an optional input map (NULL: none) and, when accumulate is
 * set, out += conv instead of out = conv (a residual added in place). */
void ld_conv2d_ex(const ld_conv_geom *g, const float *in, const ld_input_map *map,
                  const float *weight, const float *bias, float *out, int accumulate,
                  float *scratch, size_t scratch_floats);

/* The two algorithms behind ld_conv2d, for tests and benchmarks.  Winograd
 * F(4x4,3x3) serves 3x3 stride-1 "same" convolutions (4x fewer
 * multiplications); im2col + sgemm serves everything. */
int ld_winograd_applies(const ld_conv_geom *g);
size_t ld_winograd_scratch_floats(const ld_conv_geom *g, size_t budget);
void ld_conv2d_winograd(const ld_conv_geom *g, const float *in, const ld_input_map *map,
                        const float *weight, const float *bias, float *out, int accumulate,
                        float *scratch, size_t scratch_floats);
size_t ld_conv2d_im2col_scratch_floats(const ld_conv_geom *g, size_t budget);
void ld_conv2d_im2col(const ld_conv_geom *g, const float *in, const ld_input_map *map,
                      const float *weight, const float *bias, float *out, int accumulate,
                      float *scratch, size_t scratch_floats);

/* GroupNorm over one image (biased variance), then optional SiLU.
 * in and out may be the same buffer. */
void ld_group_norm(const float *in, float *out, int channels, size_t plane, int groups,
                   const float *gamma, const float *beta, float eps, int apply_silu);

/* dst[i] += src[i] */
void ld_add_inplace(float *dst, const float *src, size_t n);

/* Single-head self-attention over the `tokens` positions of x [C, tokens]:
 * out = Wo · (softmax(qᵀk/√C) applied to v) + bo, with q = Wq·xn + bq etc.,
 * where xn is x already normalised by the caller.  Weights are [C, C].
 * Queries are processed in blocks, so memory is O(tokens·C), never tokens². */
typedef struct {
    const float *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo;
} ld_attn_weights;

size_t ld_attention_scratch_floats(int channels, size_t tokens);
void ld_attention(const float *xn, int channels, size_t tokens, const ld_attn_weights *w,
                  float *out, float *scratch);

#endif
