/* Reading the encoder's weights out of a checkpoint into float32, checking
 * every shape against the architecture; and reading the architecture off the
 * tensors when a checkpoint comes without a config. */
#include "vae_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void shape_text(const int64_t *shape, int ndim, char *buf, size_t size)
{
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < ndim && used < size; d++)
        used += (size_t)snprintf(buf + used, size - used, d ? ",%lld" : "%lld",
                                 (long long)shape[d]);
    if (used < size)
        snprintf(buf + used, size - used, "]");
}

/* Trailing 1s are ignored so a Linear [C,C] also matches a 1x1 conv [C,C,1,1]
 * and a Conv1d [C,C,1]: checkpoints store the attention projections all three
 * ways. */
static bool shape_matches(const ld_st_tensor *t, const int64_t *want, int want_ndim,
                          bool allow_trailing_ones)
{
    if (!allow_trailing_ones && t->ndim != want_ndim)
        return false;
    int common = t->ndim < want_ndim ? t->ndim : want_ndim;
    for (int d = 0; d < common; d++)
        if (t->shape[d] != want[d])
            return false;
    for (int d = common; d < t->ndim; d++)
        if (t->shape[d] != 1)
            return false;
    for (int d = common; d < want_ndim; d++)
        if (want[d] != 1)
            return false;
    return true;
}

static int load_tensor(const ld_keymap *map, const char *key, const int64_t *shape, int ndim,
                       bool allow_trailing_ones, float **dst, char *err)
{
    const char *path = ld_st_path(map->file);
    const ld_st_tensor *t = ld_keymap_find(map, key);
    if (!t) {
        char name[320];
        ld_keymap_name(map, key, name, sizeof name);
        return ld_fail(err, LD_EFORMAT, "%s: missing tensor '%s'", path, name);
    }
    if (!shape_matches(t, shape, ndim, allow_trailing_ones)) {
        char have[96], want[96];
        shape_text(t->shape, t->ndim, have, sizeof have);
        shape_text(shape, ndim, want, sizeof want);
        return ld_fail(err, LD_EFORMAT, "%s: tensor '%s' has shape %s, the config needs %s",
                       path, t->name, have, want);
    }
    /* before allocating: only the bytes of a dtype latentd knows are checked
     * against the shape, so only then does the file's size bound numel */
    if (t->dtype != LD_DT_F32 && t->dtype != LD_DT_F16 && t->dtype != LD_DT_BF16)
        return ld_fail(err, LD_EUNSUPPORTED,
                       "%s: tensor '%s': dtype %s is not supported (need F32, F16 or BF16)",
                       path, t->name, t->dtype_name);
    *dst = ld_alloc_aligned(t->numel, sizeof(float));
    if (!*dst)
        return ld_fail(err, LD_ENOMEM, "%s: out of memory for tensor '%s'", path, t->name);
    return ld_st_to_f32(map->file, t, *dst, err);
}

static int load_conv(const ld_keymap *map, const char *key, int in_ch, int out_ch, int kernel,
                     ld_conv *conv, char *err)
{
    char name[256];
    conv->in_ch = in_ch;
    conv->out_ch = out_ch;
    conv->kernel = kernel;
    int64_t wshape[4] = {out_ch, in_ch, kernel, kernel}, bshape[1] = {out_ch};
    snprintf(name, sizeof name, "%s.weight", key);
    int rc = load_tensor(map, name, wshape, 4, kernel == 1, &conv->weight, err);
    if (rc != LD_OK)
        return rc;
    snprintf(name, sizeof name, "%s.bias", key);
    return load_tensor(map, name, bshape, 1, false, &conv->bias, err);
}

static int load_norm(const ld_keymap *map, const char *key, int channels, ld_norm *norm,
                     char *err)
{
    char name[256];
    int64_t shape[1] = {channels};
    norm->channels = channels;
    snprintf(name, sizeof name, "%s.weight", key);
    int rc = load_tensor(map, name, shape, 1, false, &norm->gamma, err);
    if (rc != LD_OK)
        return rc;
    snprintf(name, sizeof name, "%s.bias", key);
    return load_tensor(map, name, shape, 1, false, &norm->beta, err);
}

static int load_resnet(const ld_keymap *map, const char *key, int in_ch, int out_ch,
                       ld_resnet *r, char *err)
{
    char name[256];
    int rc;
    snprintf(name, sizeof name, "%s.norm1", key);
    if ((rc = load_norm(map, name, in_ch, &r->norm1, err)) != LD_OK)
        return rc;
    snprintf(name, sizeof name, "%s.conv1", key);
    if ((rc = load_conv(map, name, in_ch, out_ch, 3, &r->conv1, err)) != LD_OK)
        return rc;
    snprintf(name, sizeof name, "%s.norm2", key);
    if ((rc = load_norm(map, name, out_ch, &r->norm2, err)) != LD_OK)
        return rc;
    snprintf(name, sizeof name, "%s.conv2", key);
    if ((rc = load_conv(map, name, out_ch, out_ch, 3, &r->conv2, err)) != LD_OK)
        return rc;
    r->has_shortcut = in_ch != out_ch;
    if (!r->has_shortcut)
        return LD_OK;
    snprintf(name, sizeof name, "%s.conv_shortcut", key);
    return load_conv(map, name, in_ch, out_ch, 1, &r->shortcut, err);
}

static int load_attention(const ld_keymap *map, const char *key, int c, ld_attn *a, char *err)
{
    static const char *const parts[] = {"to_q", "to_k", "to_v", "to_out.0"};
    ld_conv *convs[] = {&a->q, &a->k, &a->v, &a->out};
    char name[256];
    snprintf(name, sizeof name, "%s.group_norm", key);
    int rc = load_norm(map, name, c, &a->norm, err);
    for (int i = 0; i < 4 && rc == LD_OK; i++) {
        snprintf(name, sizeof name, "%s.%s", key, parts[i]);
        rc = load_conv(map, name, c, c, 1, convs[i], err);
    }
    return rc;
}

static int load_down_blocks(ld_model *m, const ld_keymap *map, char *err)
{
    const ld_vae_config *cfg = &m->cfg;
    char name[256];
    int in_ch = cfg->block_out_channels[0];
    for (int i = 0; i < cfg->n_levels; i++) {
        const int out_ch = cfg->block_out_channels[i];
        ld_down_block *blk = &m->down[i];
        blk->resnets = calloc((size_t)cfg->layers_per_block, sizeof *blk->resnets);
        if (!blk->resnets)
            return ld_fail(err, LD_ENOMEM, "out of memory");
        for (int j = 0; j < cfg->layers_per_block; j++) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.resnets.%d", i, j);
            int rc = load_resnet(map, name, j == 0 ? in_ch : out_ch, out_ch, &blk->resnets[j],
                                 err);
            if (rc != LD_OK)
                return rc;
        }
        blk->has_downsample = i + 1 < cfg->n_levels;
        if (blk->has_downsample) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            int rc = load_conv(map, name, out_ch, out_ch, 3, &blk->downsample, err);
            if (rc != LD_OK)
                return rc;
        }
        in_ch = out_ch;
    }
    return LD_OK;
}

static int load_mid_and_out(ld_model *m, const ld_keymap *map, char *err)
{
    const ld_vae_config *cfg = &m->cfg;
    const int c = cfg->block_out_channels[cfg->n_levels - 1];
    const int moments = 2 * cfg->latent_channels;
    int rc = load_resnet(map, "encoder.mid_block.resnets.0", c, c, &m->mid_resnet1, err);
    if (rc == LD_OK && cfg->mid_attention)
        rc = load_attention(map, "encoder.mid_block.attentions.0", c, &m->mid_attn, err);
    if (rc == LD_OK)
        rc = load_resnet(map, "encoder.mid_block.resnets.1", c, c, &m->mid_resnet2, err);
    if (rc == LD_OK)
        rc = load_norm(map, "encoder.conv_norm_out", c, &m->norm_out, err);
    if (rc == LD_OK)
        rc = load_conv(map, "encoder.conv_out", c, moments, 3, &m->conv_out, err);
    if (rc == LD_OK && cfg->use_quant_conv)
        rc = load_conv(map, "quant_conv", moments, moments, 1, &m->quant_conv, err);
    return rc;
}

int ld_weights_load(ld_model *m, const ld_keymap *map, char *err)
{
    int rc = load_conv(map, "encoder.conv_in", m->cfg.in_channels, m->cfg.block_out_channels[0],
                       3, &m->conv_in, err);
    if (rc == LD_OK)
        rc = load_down_blocks(m, map, err);
    if (rc == LD_OK)
        rc = load_mid_and_out(m, map, err);
    return rc;
}

static void free_conv(ld_conv *c)
{
    ld_free_aligned(c->weight);
    ld_free_aligned(c->bias);
}

static void free_norm(ld_norm *n)
{
    ld_free_aligned(n->gamma);
    ld_free_aligned(n->beta);
}

static void free_resnet(ld_resnet *r)
{
    free_norm(&r->norm1);
    free_norm(&r->norm2);
    free_conv(&r->conv1);
    free_conv(&r->conv2);
    free_conv(&r->shortcut);
}

void ld_weights_free(ld_model *m)
{
    free_conv(&m->conv_in);
    for (int i = 0; i < LD_MAX_LEVELS; i++) {
        if (m->down[i].resnets)
            for (int j = 0; j < m->cfg.layers_per_block; j++)
                free_resnet(&m->down[i].resnets[j]);
        free(m->down[i].resnets);
        free_conv(&m->down[i].downsample);
    }
    free_resnet(&m->mid_resnet1);
    free_resnet(&m->mid_resnet2);
    free_norm(&m->mid_attn.norm);
    free_conv(&m->mid_attn.q);
    free_conv(&m->mid_attn.k);
    free_conv(&m->mid_attn.v);
    free_conv(&m->mid_attn.out);
    free_norm(&m->norm_out);
    free_conv(&m->conv_out);
    free_conv(&m->quant_conv);
}

/* ---- architecture from tensor names and shapes (single-file checkpoints) ---- */

static const ld_st_tensor *find_fmt(const ld_keymap *map, const char *fmt, int a, int b)
{
    char name[256];
    snprintf(name, sizeof name, fmt, a, b);
    return ld_keymap_find(map, name);
}

int ld_config_infer(const ld_keymap *map, ld_vae_config *cfg, char *err)
{
    const char *path = ld_st_path(map->file);
    const char *conv1 = "encoder.down_blocks.%d.resnets.%d.conv1.weight";
    memset(cfg, 0, sizeof *cfg);
    const ld_st_tensor *t;
    while (cfg->n_levels < LD_MAX_LEVELS && (t = find_fmt(map, conv1, cfg->n_levels, 0))) {
        if (t->ndim != 4)
            return ld_fail(err, LD_EFORMAT, "%s: tensor '%s' is not 4-D", path, t->name);
        cfg->block_out_channels[cfg->n_levels++] = (int)t->shape[0];
    }
    while (find_fmt(map, conv1, 0, cfg->layers_per_block))
        cfg->layers_per_block++;
    const ld_st_tensor *in = ld_keymap_find(map, "encoder.conv_in.weight");
    const ld_st_tensor *out = ld_keymap_find(map, "encoder.conv_out.weight");
    if (cfg->n_levels == 0 || !in || !out || in->ndim != 4 || out->ndim != 4 ||
        out->shape[0] % 2 != 0)
        return ld_fail(err, LD_EFORMAT, "%s: cannot read the encoder's architecture off its "
                       "tensors (conv_in, down blocks, conv_out)", path);
    cfg->in_channels = (int)in->shape[1];
    cfg->latent_channels = (int)out->shape[0] / 2;
    if (cfg->latent_channels > LD_MAX_LATENT_CHANNELS)
        return ld_fail(err, LD_EUNSUPPORTED, "%s: %d latent channels is above %d", path,
                       cfg->latent_channels, LD_MAX_LATENT_CHANNELS);
    cfg->norm_num_groups = 32; /* fixed in the original LDM code */
    cfg->use_quant_conv = ld_keymap_find(map, "quant_conv.weight") != NULL;
    cfg->mid_attention = ld_keymap_find(map, "encoder.mid_block.attentions.0.to_q.weight") != NULL;
    cfg->scaling_factor = 0.18215f;
    return ld_config_check(cfg, path, err);
}
