/* What the encoder graph relies on in a model's architecture, whether it came
 * from config.json or was read off a checkpoint's tensors. */
#ifndef LATENTD_FUZZ_CONFIG_CHECK_H
#define LATENTD_FUZZ_CONFIG_CHECK_H

#include "fuzz.h"

#include "latentd/encoder.h"

static inline void fuzz_check_config(const ld_vae_config *cfg)
{
    FUZZ_CHECK(cfg->in_channels == 3);
    FUZZ_CHECK(cfg->n_levels >= 1 && cfg->n_levels <= LD_MAX_LEVELS);
    FUZZ_CHECK(cfg->layers_per_block >= 1);
    FUZZ_CHECK(cfg->norm_num_groups >= 1);
    FUZZ_CHECK(cfg->latent_channels >= 1 && cfg->latent_channels <= LD_MAX_LATENT_CHANNELS);
    for (int i = 0; i < cfg->n_levels; i++)
        FUZZ_CHECK(cfg->block_out_channels[i] >= cfg->norm_num_groups &&
                   cfg->block_out_channels[i] % cfg->norm_num_groups == 0);
    if (cfg->has_latents_stats)
        for (int c = 0; c < cfg->latent_channels; c++)
            FUZZ_CHECK(cfg->latents_std[c] != 0.0f);
}

#endif
