/* GroupNorm (+ optional SiLU) over one image in [C, H*W] layout.  Statistics are
 * accumulated in double: a group of a full-size VAE holds millions of values and
 * float sums would drift past the fixtures' tolerance. */
#include "latentd/nn.h"

#include <math.h>

static void group_stats(const float *x, size_t count, double *mean_out, double *var_out)
{
    double sum = 0.0, sum_sq = 0.0;
    for (size_t i = 0; i < count; i++) {
        double v = x[i];
        sum += v;
        sum_sq += v * v;
    }
    double mean = sum / (double)count;
    double var = sum_sq / (double)count - mean * mean;
    *mean_out = mean;
    *var_out = var > 0.0 ? var : 0.0;
}

/* Group g's mean and 1/sqrt(var + eps). */
static float group_inv_std(const float *in, int g, int per_group, size_t plane, float eps,
                           double *mean)
{
    double var;
    group_stats(in + (size_t)g * per_group * plane, (size_t)per_group * plane, mean, &var);
    return (float)(1.0 / sqrt(var + (double)eps));
}

typedef struct {
    const float *in;
    float *out; /* ld_group_norm: the normalised values; NULL: coefficients only */
    int per_group;
    size_t plane;
    const float *gamma, *beta;
    float eps;
    int apply_silu;
    float *scale, *shift; /* ld_group_norm_coeffs: per channel */
} norm_job;

/* Groups [first, last): their channels' scale and shift, normalisation and
 * affine folded into one multiply-add per element. */
static void norm_groups(void *ctx, int first, int last, int thread)
{
    (void)thread;
    const norm_job *j = ctx;
    for (int g = first; g < last; g++) {
        double mean;
        const float inv_std = group_inv_std(j->in, g, j->per_group, j->plane, j->eps, &mean);
        for (int c = g * j->per_group; c < (g + 1) * j->per_group; c++) {
            const float scale = j->gamma[c] * inv_std;
            const float shift = j->beta[c] - (float)mean * scale;
            if (!j->out) {
                j->scale[c] = scale;
                j->shift[c] = shift;
                continue;
            }
            const size_t plane = j->plane;
            const float *src = j->in + (size_t)c * plane;
            float *dst = j->out + (size_t)c * plane;
            if (j->apply_silu)
                for (size_t i = 0; i < plane; i++)
                    dst[i] = ld_silu(src[i] * scale + shift);
            else
                for (size_t i = 0; i < plane; i++)
                    dst[i] = src[i] * scale + shift;
        }
    }
}

void ld_group_norm_coeffs(ld_pool *pool, const float *in, int channels, size_t plane, int groups,
                          const float *gamma, const float *beta, float eps, float *scale,
                          float *shift)
{
    const norm_job job = {in, NULL, channels / groups, plane, gamma, beta, eps, 0, scale, shift};
    ld_pool_for(pool, groups, norm_groups, (void *)&job);
}

void ld_group_norm(ld_pool *pool, const float *in, float *out, int channels, size_t plane,
                   int groups, const float *gamma, const float *beta, float eps, int apply_silu)
{
    const norm_job job = {in, out, channels / groups, plane, gamma, beta, eps, apply_silu, NULL,
                          NULL};
    ld_pool_for(pool, groups, norm_groups, (void *)&job);
}

void ld_add_inplace(float *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] += src[i];
}
