/* Numerical kernels on float32 feature maps laid out channel-major ([C, H, W]
 * for one image).  They know nothing of models or files: the encoder graph
 * strings them together.  Matrix work goes through CBLAS. */
#ifndef LATENTD_NN_H
#define LATENTD_NN_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "latentd/common.h"

/* SiLU (x·sigmoid(x)), the VAE's activation: one definition for every kernel
 * that applies it. */
static inline float ld_silu(float v)
{
    return v / (1.0f + expf(-v));
}

/* Call once per process, before any pool: BLAS then runs one thread per call,
 * and the pools' threads are the only ones that share the cores. */
void ld_nn_init(void);

/* A team of compute threads that runs parallel loops.  The thread that calls
 * ld_pool_for is thread 0 and does its share; between loops the others poll
 * for the next one for up to the pool's spin time (ld_pool_set_spin),
 * yielding their core at every poll, then sleep on a condition variable, so
 * an idle pool takes no CPU from the program's other threads (a daemon's
 * I/O, say).
 *
 *   ld_pool *pool;
 *   if (ld_pool_new(4, &pool, err) != LD_OK) ...   // 4 threads, the caller included
 *   ld_pool_for(pool, n, fn, ctx);                  // fn(ctx, begin, end, thread) over [0, n)
 *   ld_pool_free(pool);
 *
 * Every kernel below takes its pool explicitly and sizes any per-thread
 * scratch from ld_pool_threads(); NULL is a pool of one (the caller runs
 * everything).  A pool runs one loop at a time: callers on other threads
 * wait their turn, and a loop started from inside one of its own loops runs
 * serially on the thread that started it. */
typedef struct ld_pool ld_pool;

/* fn handles indices [begin, end) as thread `thread` (0 <= thread < threads). */
typedef void (*ld_pool_fn)(void *ctx, int begin, int end, int thread);

/* threads <= 0: one per core this process may run on.  Creating the pool also
 * maps OpenBLAS's work buffers for every thread that may call BLAS at once
 * (see src/nn/blas.c), so no matrix product has to map memory later:
 * LD_ENOMEM when they cannot be had. */
int ld_pool_new(int threads, ld_pool **out, char *err);
void ld_pool_free(ld_pool *pool); /* accepts NULL; the pool must be idle */
int ld_pool_threads(const ld_pool *pool); /* 1 for NULL */
/* The cores this process may run on: the default number of threads. */
int ld_cores(void);
/* A block of at least `floats` floats (2 MiB aligned, on transparent huge
 * pages where the system has them: see ld_alloc_huge) that the pool keeps
 * until a larger one is asked for, ld_pool_arena_release or ld_pool_free:
 * a caller that computes on the pool again and again (a daemon's worker,
 * a dataset run) reuses its working memory instead of mapping it afresh,
 * and taking it from the kernel page by page, at every call.  A smaller
 * block is given back before a larger one is mapped.  NULL when it cannot
 * be had.  Only the thread that owns the pool calls these. */
float *ld_pool_arena(ld_pool *pool, size_t floats);
void ld_pool_arena_release(ld_pool *pool);
size_t ld_pool_arena_floats(const ld_pool *pool); /* 0 for NULL or none held */
/* How long, in microseconds, a waiting thread of the pool (a worker between
 * loops, the caller for the workers' shares) polls, yielding its core, before
 * it sleeps; 0: it sleeps at once.  A pass's loops follow each other within
 * microseconds, and a sleeping thread takes tens of them to wake.  A new
 * pool polls LD_POOL_SPIN_US when it has at most ld_cores() threads, else
 * not at all.  It takes effect from the next wait. */
#define LD_POOL_SPIN_US 1000
void ld_pool_set_spin(ld_pool *pool, int microseconds);
/* Static schedule: thread t gets the t-th of `threads` contiguous, near-equal
 * ranges (one call at most; none when its range is empty).  Returns when
 * every index has been handled. */
void ld_pool_for(ld_pool *pool, int n, ld_pool_fn fn, void *ctx);
/* Dynamic schedule: threads take ranges of `grain` indices in turn until none
 * are left, for work whose cost varies. */
void ld_pool_for_dynamic(ld_pool *pool, int n, int grain, ld_pool_fn fn, void *ctx);

/* The matrix kernels a pool computes with.  latentd has its own
 * register-tiled micro-kernels for the products that dominate the encoder
 * (Winograd's, the 1x1 and im2col convolutions, attention's projections),
 * one per instruction set; the CPU's features pick the fastest at run time,
 * whatever BLAS the build links and however its environment is set.
 * LD_KERNEL_BLAS sends those products to CBLAS instead, for comparison. */
typedef enum {
    LD_KERNEL_AUTO,    /* the best this CPU runs (ld_kernel_best) */
    LD_KERNEL_AVX512,  /* x86-64 with AVX-512F and FMA */
    LD_KERNEL_AVX2,    /* x86-64 with AVX2 and FMA */
    LD_KERNEL_GENERIC, /* portable C, vectorised by the compiler */
    LD_KERNEL_BLAS,    /* cblas_sgemm */
    LD_KERNEL_COUNT
} ld_kernel;

/* "auto", "avx512", "avx2", "generic", "blas" */
const char *ld_kernel_name(ld_kernel kind);
int ld_kernel_parse(const char *name, ld_kernel *out, char *err);
/* Whether this build and CPU can run it (AUTO always can). */
bool ld_kernel_available(ld_kernel kind);
ld_kernel ld_kernel_best(void);
/* A new pool computes with ld_kernel_best(); LD_EUNSUPPORTED when the CPU lacks
 * `kind`.  Set it before the pool's first loop, not during one. */
int ld_pool_set_kernel(ld_pool *pool, ld_kernel kind, char *err);
ld_kernel ld_pool_kernel(const ld_pool *pool); /* never AUTO; the best one for NULL */

/* C[m×n] = A[m×k]·B[k×n], or C += A·B when accumulate is set; row-major, no
 * transposes, the columns of C split between the pool's threads. */
void ld_gemm(ld_pool *pool, int m, int n, int k, const float *a, int lda, const float *b,
             int ldb, float *c, int ldc, int accumulate);
/* The same, B given transposed when b_transposed is set: b is Bᵀ [n×k]
 * with rows ldb apart. */
void ld_gemm_ex(ld_pool *pool, int m, int n, int k, const float *a, int lda, const float *b,
                int ldb, int b_transposed, float *c, int ldc, int accumulate);

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
void ld_group_norm_coeffs(ld_pool *pool, const float *in, int channels, size_t plane,
                          int groups, const float *gamma, const float *beta, float eps,
                          float *scale, float *shift);

/* Floats of scratch ld_conv2d needs, on a pool of `threads`, to process at
 * least one output row at a time, and at most `budget` floats (bands of rows
 * are sized to fit). */
size_t ld_conv2d_scratch_floats(const ld_conv_geom *g, size_t budget, int threads);

/* out[co, y, x] = bias[co] + sum weight[co, ci, ky, kx] * in[ci, y*s+ky-pt, x*s+kx-pl].
 * weight is [out_ch, in_ch, k, k]; bias may be NULL.  scratch holds
 * scratch_floats floats (from ld_conv2d_scratch_floats). */
void ld_conv2d(ld_pool *pool, const ld_conv_geom *g, const float *in, const float *weight,
               const float *bias, float *out, float *scratch, size_t scratch_floats);
/* The same with an optional input map (NULL: none) and, when accumulate is
 * set, out += conv instead of out = conv (a residual added in place). */
void ld_conv2d_ex(ld_pool *pool, const ld_conv_geom *g, const float *in,
                  const ld_input_map *map, const float *weight, const float *bias, float *out,
                  int accumulate, float *scratch, size_t scratch_floats);

/* The two algorithms behind ld_conv2d, for tests and benchmarks.  Winograd
 * F(4x4,3x3) serves 3x3 stride-1 "same" convolutions (4x fewer
 * multiplications); im2col + sgemm serves everything. */
int ld_winograd_applies(const ld_conv_geom *g);
size_t ld_winograd_scratch_floats(const ld_conv_geom *g, size_t budget, int threads);
void ld_conv2d_winograd(ld_pool *pool, const ld_conv_geom *g, const float *in,
                        const ld_input_map *map, const float *weight, const float *bias,
                        float *out, int accumulate, float *scratch, size_t scratch_floats);
size_t ld_conv2d_im2col_scratch_floats(const ld_conv_geom *g, size_t budget, int threads);
void ld_conv2d_im2col(ld_pool *pool, const ld_conv_geom *g, const float *in,
                      const ld_input_map *map, const float *weight, const float *bias, float *out,
                      int accumulate, float *scratch, size_t scratch_floats);

/* GroupNorm over one image (biased variance), then optional SiLU.
 * in and out may be the same buffer. */
void ld_group_norm(ld_pool *pool, const float *in, float *out, int channels, size_t plane,
                   int groups, const float *gamma, const float *beta, float eps, int apply_silu);

/* dst[i] += src[i] */
void ld_add_inplace(float *dst, const float *src, size_t n);

/* Single-head self-attention over the `tokens` positions of x [C, tokens]:
 * out = Wo · (softmax(qᵀk/√C) applied to v) + bo, with q = Wq·xn + bq etc.,
 * where xn is x already normalised by the caller.  Weights are [C, C].
 * Queries are processed in blocks, so memory is O(tokens·C), never tokens². */
typedef struct {
    const float *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo;
} ld_attn_weights;

size_t ld_attention_scratch_floats(int channels, size_t tokens, int threads);
/* progress, when not NULL, is incremented after each block of queries (from
 * the pool's threads), so a watchdog sees a long attention (minutes over the
 * 65536 tokens of a 2048x2048 image) advance.  Once *cancel (may be NULL) is
 * set, the blocks not yet started are skipped and LD_ECANCELLED returned
 * (out is then unwritten); LD_OK otherwise. */
int ld_attention(ld_pool *pool, const float *xn, int channels, size_t tokens,
                 const ld_attn_weights *w, float *out, float *scratch,
                 _Atomic uint64_t *progress, const _Atomic bool *cancel);

#endif
