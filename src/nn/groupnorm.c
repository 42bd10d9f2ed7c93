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

void ld_group_norm_coeffs(const float *in, int channels, size_t plane, int groups,
                          const float *gamma, const float *beta, float eps, float *scale,
                          float *shift)
{
    const int per_group = channels / groups;
#pragma omp parallel for schedule(static)
    for (int g = 0; g < groups; g++) {
        double mean;
        const float inv_std = group_inv_std(in, g, per_group, plane, eps, &mean);
        for (int c = g * per_group; c < (g + 1) * per_group; c++) {
            /* normalisation and affine folded into one multiply-add per element */
            scale[c] = gamma[c] * inv_std;
            shift[c] = beta[c] - (float)mean * scale[c];
        }
    }
}

void ld_group_norm(const float *in, float *out, int channels, size_t plane, int groups,
                   const float *gamma, const float *beta, float eps, int apply_silu)
{
    const int per_group = channels / groups;
#pragma omp parallel for schedule(static)
    for (int g = 0; g < groups; g++) {
        double mean;
        const float inv_std = group_inv_std(in, g, per_group, plane, eps, &mean);
        for (int c = g * per_group; c < (g + 1) * per_group; c++) {
            const float scale = gamma[c] * inv_std;
            const float shift = beta[c] - (float)mean * scale;
            const float *src = in + (size_t)c * plane;
            float *dst = out + (size_t)c * plane;
            if (apply_silu)
                for (size_t i = 0; i < plane; i++)
                    dst[i] = ld_silu(src[i] * scale + shift);
            else
                for (size_t i = 0; i < plane; i++)
                    dst[i] = src[i] * scale + shift;
        }
    }
}

void ld_add_inplace(float *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] += src[i];
}
