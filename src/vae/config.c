/* diffusers config.json → ld_vae_config, with checks that the architecture is
 * one latentd's encoder graph can express. */
#include "vae_internal.h"

#include <jansson.h>
#include <string.h>

static int read_int(json_t *root, const char *key, int fallback, int *out, const char *path,
                    char *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = fallback;
        return LD_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > 1 << 20)
        return ld_fail(err, LD_EFORMAT, "%s: '%s' must be a positive integer", path, key);
    *out = (int)json_integer_value(v);
    return LD_OK;
}

static int read_bool(json_t *root, const char *key, bool fallback, bool *out, const char *path,
                     char *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = fallback;
        return LD_OK;
    }
    if (!json_is_boolean(v))
        return ld_fail(err, LD_EFORMAT, "%s: '%s' must be true or false", path, key);
    *out = json_is_true(v);
    return LD_OK;
}

/* A number or null; *present says which. */
static int read_number(json_t *root, const char *key, bool *present, float *out,
                       const char *path, char *err)
{
    json_t *v = json_object_get(root, key);
    *present = v && !json_is_null(v);
    if (!*present)
        return LD_OK;
    if (!json_is_number(v))
        return ld_fail(err, LD_EFORMAT, "%s: '%s' must be a number", path, key);
    *out = (float)json_number_value(v);
    return LD_OK;
}

static int read_float_list(json_t *root, const char *key, float *dst, int max, int *count,
                           const char *path, char *err)
{
    json_t *v = json_object_get(root, key);
    *count = 0;
    if (!v || json_is_null(v))
        return LD_OK;
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > (size_t)max)
        return ld_fail(err, LD_EFORMAT, "%s: '%s' must be a list of 1 to %d numbers", path, key,
                       max);
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *x = json_array_get(v, i);
        if (!json_is_number(x))
            return ld_fail(err, LD_EFORMAT, "%s: '%s'[%zu] is not a number", path, key, i);
        dst[i] = (float)json_number_value(x);
    }
    *count = (int)json_array_size(v);
    return LD_OK;
}

static int read_blocks(json_t *root, ld_vae_config *cfg, const char *path, char *err)
{
    json_t *v = json_object_get(root, "block_out_channels");
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > LD_MAX_LEVELS)
        return ld_fail(err, LD_EFORMAT, "%s: 'block_out_channels' must list 1 to %d integers",
                       path, LD_MAX_LEVELS);
    cfg->n_levels = (int)json_array_size(v);
    for (int i = 0; i < cfg->n_levels; i++) {
        json_t *x = json_array_get(v, (size_t)i);
        if (!json_is_integer(x) || json_integer_value(x) <= 0 || json_integer_value(x) > 1 << 16)
            return ld_fail(err, LD_EFORMAT, "%s: 'block_out_channels'[%d] is not a positive "
                           "integer", path, i);
        cfg->block_out_channels[i] = (int)json_integer_value(x);
    }
    return LD_OK;
}

static int read_scaling(json_t *root, ld_vae_config *cfg, const char *path, char *err)
{
    bool has_scaling;
    cfg->scaling_factor = 0.18215f;
    int rc = read_number(root, "scaling_factor", &has_scaling, &cfg->scaling_factor, path, err);
    if (rc == LD_OK)
        rc = read_number(root, "shift_factor", &cfg->has_shift_factor, &cfg->shift_factor, path,
                         err);
    int n_mean = 0, n_std = 0;
    if (rc == LD_OK)
        rc = read_float_list(root, "latents_mean", cfg->latents_mean, LD_MAX_LATENT_CHANNELS,
                             &n_mean, path, err);
    if (rc == LD_OK)
        rc = read_float_list(root, "latents_std", cfg->latents_std, LD_MAX_LATENT_CHANNELS,
                             &n_std, path, err);
    if (rc != LD_OK)
        return rc;
    /* diffusers' pipelines use the statistics only when both are given */
    cfg->has_latents_stats = n_mean > 0 && n_std > 0;
    if (cfg->has_latents_stats &&
        (n_mean != cfg->latent_channels || n_std != cfg->latent_channels))
        return ld_fail(err, LD_EFORMAT,
                       "%s: latents_mean/latents_std have %d/%d entries for %d latent channels",
                       path, n_mean, n_std, cfg->latent_channels);
    return LD_OK;
}

static int read_config_object(json_t *root, ld_vae_config *cfg, const char *path, char *err)
{
    memset(cfg, 0, sizeof *cfg);
    json_t *cls = json_object_get(root, "_class_name");
    if (json_is_string(cls) && strcmp(json_string_value(cls), "AutoencoderKL") != 0)
        return ld_fail(err, LD_EUNSUPPORTED, "%s: _class_name is '%s', not AutoencoderKL", path,
                       json_string_value(cls));
    int rc = read_blocks(root, cfg, path, err);
    if (rc == LD_OK)
        rc = read_int(root, "in_channels", 3, &cfg->in_channels, path, err);
    if (rc == LD_OK)
        rc = read_int(root, "layers_per_block", 1, &cfg->layers_per_block, path, err);
    if (rc == LD_OK)
        rc = read_int(root, "latent_channels", 4, &cfg->latent_channels, path, err);
    if (rc == LD_OK)
        rc = read_int(root, "norm_num_groups", 32, &cfg->norm_num_groups, path, err);
    if (rc == LD_OK)
        rc = read_bool(root, "use_quant_conv", true, &cfg->use_quant_conv, path, err);
    if (rc == LD_OK)
        rc = read_bool(root, "mid_block_add_attention", true, &cfg->mid_attention, path, err);
    if (rc == LD_OK && cfg->latent_channels > LD_MAX_LATENT_CHANNELS)
        rc = ld_fail(err, LD_EUNSUPPORTED, "%s: latent_channels %d is above %d", path,
                     cfg->latent_channels, LD_MAX_LATENT_CHANNELS);
    if (rc == LD_OK)
        rc = read_scaling(root, cfg, path, err);
    return rc;
}

/* root (owned, released here) → cfg, checked. */
static int config_from_json(json_t *root, const char *origin, ld_vae_config *cfg, char *err)
{
    int rc = json_is_object(root)
                 ? read_config_object(root, cfg, origin, err)
                 : ld_fail(err, LD_EFORMAT, "%s: not a JSON object", origin);
    json_decref(root);
    if (rc == LD_OK)
        rc = ld_config_check(cfg, origin, err);
    return rc;
}

int ld_config_read(const char *path, ld_vae_config *cfg, char *err)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        return ld_fail(err, LD_EFORMAT, "%s: line %d: %s", path, jerr.line, jerr.text);
    return config_from_json(root, path, cfg, err);
}

int ld_config_parse(const char *text, size_t len, const char *origin, ld_vae_config *cfg,
                    char *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    if (!root)
        return ld_fail(err, LD_EFORMAT, "%s: line %d: %s", origin, jerr.line, jerr.text);
    return config_from_json(root, origin, cfg, err);
}

int ld_config_check(const ld_vae_config *cfg, const char *origin, char *err)
{
    /* an architecture read off a checkpoint's shapes may hold any count, 0
     * included (every tensor empty), and the encoder divides by them */
    if (cfg->n_levels < 1 || cfg->n_levels > LD_MAX_LEVELS || cfg->layers_per_block < 1 ||
        cfg->norm_num_groups < 1 || cfg->latent_channels < 1)
        return ld_fail(err, LD_EFORMAT,
                       "%s: %d levels, %d layers per block, %d groups, %d latent channels: "
                       "each must be at least 1",
                       origin, cfg->n_levels, cfg->layers_per_block, cfg->norm_num_groups,
                       cfg->latent_channels);
    if (cfg->latent_channels > LD_MAX_LATENT_CHANNELS)
        return ld_fail(err, LD_EUNSUPPORTED, "%s: latent_channels %d is above %d", origin,
                       cfg->latent_channels, LD_MAX_LATENT_CHANNELS);
    for (int i = 0; i < cfg->n_levels; i++)
        if (cfg->block_out_channels[i] < 1)
            return ld_fail(err, LD_EFORMAT, "%s: block_out_channels[%d] is %d", origin, i,
                           cfg->block_out_channels[i]);
    if (cfg->in_channels != 3)
        return ld_fail(err, LD_EUNSUPPORTED, "%s: in_channels is %d; latentd encodes RGB (3)",
                       origin, cfg->in_channels);
    for (int i = 0; i < cfg->n_levels; i++)
        if (cfg->block_out_channels[i] % cfg->norm_num_groups != 0)
            return ld_fail(err, LD_EFORMAT,
                           "%s: block_out_channels[%d]=%d is not a multiple of "
                           "norm_num_groups=%d",
                           origin, i, cfg->block_out_channels[i], cfg->norm_num_groups);
    if (cfg->has_latents_stats)
        for (int c = 0; c < cfg->latent_channels; c++)
            if (cfg->latents_std[c] == 0.0f)
                return ld_fail(err, LD_EFORMAT, "%s: latents_std[%d] is zero", origin, c);
    return LD_OK;
}
