/* GroupNorm (+ optional SiLU) over one image in [C, H*W] layout.  Statistics are
 * accumulated in double: a group of a full-size VAE holds millions of values and
 * float sums would drift past the fixtures' tolerance.  The same statistics
 * can be streamed over bands of rows (groupnorm_bands.h) for a tensor that is
 * never whole in memory; both paths fold them into coefficients alike. */
#include "latentd/nn.h"
#include "gemm.h"
#include "groupnorm_bands.h"

#include <math.h>

/* sums[0] += Σx, sums[1] += Σx² over count values, with the pool's kernel
 * (vectors of doubles) */
static void add_sums(const ld_gemm_kernel *kernel, const float *x, size_t count,
                     double sums[2])
{
    double sum, sum_sq;
    kernel->sums(x, count, &sum, &sum_sq);
    sums[0] += sum;
    sums[1] += sum_sq;
}

/* A group's mean and 1/sqrt(var + eps) from its sums over count values. */
static double group_moments(const double sums[2], double count, float eps, float *inv_std)
{
    const double mean = sums[0] / count;
    double var = sums[1] / count - mean * mean;
    if (var < 0.0)
        var = 0.0;
    *inv_std = (float)(1.0 / sqrt(var + (double)eps));
    return mean;
}

/* GroupNorm and affine folded into one multiply-add per element of channel c */
static void channel_coeffs(double mean, float inv_std, float gamma, float beta, float *scale,
                           float *shift)
{
    *scale = gamma * inv_std;
    *shift = beta - (float)mean * *scale;
}

typedef struct {
    const ld_gemm_kernel *kernel; /* its sums */
    const float *in;
    float *out; /* ld_group_norm: the normalised values; NULL: coefficients only */
    int per_group;
    size_t plane;
    const float *gamma, *beta;
    float eps;
    int apply_silu;
    float *scale, *shift; /* ld_group_norm_coeffs: per channel */
} norm_job;

static void normalise_channel(const norm_job *j, int c, float scale, float shift)
{
    const float *src = j->in + (size_t)c * j->plane;
    float *dst = j->out + (size_t)c * j->plane;
    if (j->apply_silu)
        for (size_t i = 0; i < j->plane; i++)
            dst[i] = ld_silu(src[i] * scale + shift);
    else
        for (size_t i = 0; i < j->plane; i++)
            dst[i] = src[i] * scale + shift;
}

/* Groups [first, last): their channels' coefficients, or with out, the
 * normalised channels. */
static void norm_groups(void *ctx, int first, int last, int thread)
{
    (void)thread;
    const norm_job *j = ctx;
    for (int g = first; g < last; g++) {
        const size_t count = (size_t)j->per_group * j->plane;
        double sums[2] = {0.0, 0.0};
        add_sums(j->kernel, j->in + (size_t)g * count, count, sums);
        float inv_std;
        const double mean = group_moments(sums, (double)count, j->eps, &inv_std);
        for (int c = g * j->per_group; c < (g + 1) * j->per_group; c++) {
            float scale, shift;
            channel_coeffs(mean, inv_std, j->gamma[c], j->beta[c], &scale, &shift);
            if (j->out) {
                normalise_channel(j, c, scale, shift);
            } else {
                j->scale[c] = scale;
                j->shift[c] = shift;
            }
        }
    }
}

void ld_group_norm_coeffs(ld_pool *pool, const float *in, int channels, size_t plane, int groups,
                          const float *gamma, const float *beta, float eps, float *scale,
                          float *shift)
{
    const norm_job job = {ld_pool_gemm(pool), in, NULL, channels / groups, plane,
                          gamma, beta, eps, 0, scale, shift};
    ld_pool_for(pool, groups, norm_groups, (void *)&job);
}

void ld_group_norm(ld_pool *pool, const float *in, float *out, int channels, size_t plane,
                   int groups, const float *gamma, const float *beta, float eps, int apply_silu)
{
    const norm_job job = {ld_pool_gemm(pool), in, out, channels / groups, plane,
                          gamma, beta, eps, apply_silu, NULL, NULL};
    ld_pool_for(pool, groups, norm_groups, (void *)&job);
}

/* ---------------- streamed over bands of rows ---------------- */

typedef struct {
    const ld_gemm_kernel *kernel; /* its sums */
    const float *band;
    int per_group;
    size_t band_plane; /* floats of one channel of the band */
    size_t row_offset; /* floats before the first counted row */
    size_t count;      /* floats counted per channel */
    double *sums;
} band_sums_job;

static void band_sums_groups(void *ctx, int first, int last, int thread)
{
    (void)thread;
    const band_sums_job *j = ctx;
    for (int g = first; g < last; g++)
        for (int c = g * j->per_group; c < (g + 1) * j->per_group; c++)
            add_sums(j->kernel, j->band + (size_t)c * j->band_plane + j->row_offset, j->count,
                     j->sums + 2 * (size_t)g);
}

void ld_group_sums_add(ld_pool *pool, const float *band, int channels, int band_h, int w,
                       int row0, int rows, int groups, double *sums)
{
    const band_sums_job job = {ld_pool_gemm(pool),
                               band,
                               channels / groups,
                               (size_t)band_h * (size_t)w,
                               (size_t)row0 * (size_t)w,
                               (size_t)rows * (size_t)w,
                               sums};
    ld_pool_for(pool, groups, band_sums_groups, (void *)&job);
}

void ld_group_coeffs_from_sums(const double *sums, size_t plane, int channels, int groups,
                               const float *gamma, const float *beta, float eps, float *scale,
                               float *shift)
{
    const int per_group = channels / groups;
    const double count = (double)per_group * (double)plane;
    for (int g = 0; g < groups; g++) {
        float inv_std;
        const double mean = group_moments(sums + 2 * (size_t)g, count, eps, &inv_std);
        for (int c = g * per_group; c < (g + 1) * per_group; c++)
            channel_coeffs(mean, inv_std, gamma[c], beta[c], &scale[c], &shift[c]);
    }
}

void ld_add_inplace(float *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] += src[i];
}
