/* The diagonal Gaussian posterior and the latents' scaling, as diffusers'
 * DiagonalGaussianDistribution and its pipelines compute them. */
#include "vae_internal.h"

#include <math.h>
#include <string.h>

#define LOGVAR_MIN -30.0f
#define LOGVAR_MAX 20.0f

static float scale_latent(const ld_vae_config *cfg, int channel, float z)
{
    if (cfg->has_latents_stats)
        return (z - cfg->latents_mean[channel]) * cfg->scaling_factor /
               cfg->latents_std[channel];
    if (cfg->has_shift_factor)
        return (z - cfg->shift_factor) * cfg->scaling_factor;
    return z * cfg->scaling_factor;
}

static float clamp_logvar(float v)
{
    return v < LOGVAR_MIN ? LOGVAR_MIN : v > LOGVAR_MAX ? LOGVAR_MAX : v;
}

/* One image.  noise: its standard normal draws, [C, lh, lw] like the mean,
 * or NULL for the mode.  It may be out->latents itself (see ld_posterior):
 * each element's noise is read before its latent is written. */
static void posterior_image(const ld_posterior_ctx *ctx, const float *moments,
                            const float *noise, size_t dst_offset, ld_encode_out *out)
{
    const int L = ctx->cfg->latent_channels;
    const size_t plane = (size_t)ctx->lh * ctx->lw;
    for (int c = 0; c < L; c++) {
        const float *mean = moments + (size_t)c * plane;
        const float *logvar = moments + (size_t)(L + c) * plane;
        const size_t base = dst_offset + (size_t)c * plane;
        for (size_t p = 0; p < plane; p++) {
            const float lv = clamp_logvar(logvar[p]);
            float z = mean[p];
            if (noise) /* diffusers: mean + std * sample, in the model's float32 */
                z = z + expf(0.5f * lv) * noise[(size_t)c * plane + p];
            if (out->mean)
                out->mean[base + p] = mean[p];
            if (out->logvar)
                out->logvar[base + p] = lv;
            if (out->latents)
                out->latents[base + p] = scale_latent(ctx->cfg, c, z);
        }
    }
}

/* Image i's noise is torch.randn((1, C, lh, lw)) from a CPU generator seeded
 * seeds[i] alone -- diffusers' sample(generator=[one per image]) -- so it does
 * not depend on the chunk, the batch or the threads.  It is drawn straight
 * into the image's latents, which need no other memory; without latents to
 * write, the noise would be unused and is not drawn. */
void ld_posterior(const ld_posterior_ctx *ctx, const float *moments, int n,
                  const uint64_t *seeds, ld_encode_out *out, size_t first_image)
{
    const size_t half = (size_t)ctx->cfg->latent_channels * ctx->lh * ctx->lw;
    for (int i = 0; i < n; i++) {
        const float *m = moments + (size_t)i * 2 * half;
        const size_t image = first_image + (size_t)i;
        const float *noise = NULL;
        if (!ctx->deterministic && out->latents) {
            ld_rng rng;
            ld_rng_seed(&rng, seeds[i]);
            ld_rng_randn(&rng, out->latents + image * half, half);
            noise = out->latents + image * half;
        }
        posterior_image(ctx, m, noise, image * half, out);
        if (out->moments)
            memcpy(out->moments + image * 2 * half, m, 2 * half * sizeof(float));
    }
}
