/* Encoder tensor names: latentd asks for diffusers names; a checkpoint may use
 * diffusers names, older diffusers attention names, or the original LDM
 * (CompVis) names, bare or under a prefix as inside a full SD checkpoint. */
#include "vae_internal.h"

#include <stdio.h>
#include <string.h>

static const char *const prefixes[] = {"", "first_stage_model.", "vae."};

/* diffusers → LDM, applied in order, each at most once.  The mid block's
 * specific names come before the general "resnets." rule. */
static const char *const ldm_rules[][2] = {
    {"mid_block.resnets.0.", "mid.block_1."},
    {"mid_block.resnets.1.", "mid.block_2."},
    {"mid_block.attentions.0.group_norm.", "mid.attn_1.norm."},
    {"mid_block.attentions.0.to_q.", "mid.attn_1.q."},
    {"mid_block.attentions.0.to_k.", "mid.attn_1.k."},
    {"mid_block.attentions.0.to_v.", "mid.attn_1.v."},
    {"mid_block.attentions.0.to_out.0.", "mid.attn_1.proj_out."},
    {"down_blocks.", "down."},
    {".resnets.", ".block."},
    {".downsamplers.0.", ".downsample."},
    {"conv_shortcut", "nin_shortcut"},
    {"conv_norm_out", "norm_out"},
};

/* diffusers before 0.14 named the attention projections differently
 * (stabilityai/sd-vae-ft-mse still ships them). */
static const char *const legacy_rules[][2] = {
    {".to_q.", ".query."},
    {".to_k.", ".key."},
    {".to_v.", ".value."},
    {".to_out.0.", ".proj_attn."},
};

/* Replace the first occurrence of `from` in buf by `to`, in place. */
static bool replace_once(char *buf, size_t size, const char *from, const char *to)
{
    char *at = strstr(buf, from);
    if (!at)
        return false;
    char tail[256];
    snprintf(tail, sizeof tail, "%s", at + strlen(from));
    snprintf(at, size - (size_t)(at - buf), "%s%s", to, tail);
    return true;
}

static const ld_st_tensor *find_prefixed(const ld_keymap *map, const char *name)
{
    char full[320];
    snprintf(full, sizeof full, "%s%s", map->prefix, name);
    return ld_st_find(map->file, full);
}

void ld_keymap_name(const ld_keymap *map, const char *key, char *buf, size_t size)
{
    char name[256];
    snprintf(name, sizeof name, "%s", key);
    if (map->ldm)
        for (size_t i = 0; i < sizeof ldm_rules / sizeof ldm_rules[0]; i++)
            replace_once(name, sizeof name, ldm_rules[i][0], ldm_rules[i][1]);
    snprintf(buf, size, "%s%s", map->prefix, name);
}

const ld_st_tensor *ld_keymap_find(const ld_keymap *map, const char *key)
{
    char name[320];
    ld_keymap_name(map, key, name, sizeof name);
    const ld_st_tensor *t = ld_st_find(map->file, name);
    if (t || map->ldm)
        return t;
    for (size_t i = 0; i < sizeof legacy_rules / sizeof legacy_rules[0]; i++)
        if (replace_once(name, sizeof name, legacy_rules[i][0], legacy_rules[i][1]))
            return ld_st_find(map->file, name);
    return NULL;
}

int ld_keymap_detect(const ld_st_file *file, ld_keymap *map, char *err)
{
    map->file = file;
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        map->prefix = prefixes[i];
        map->ldm = false;
        if (!find_prefixed(map, "encoder.conv_in.weight"))
            continue;
        if (find_prefixed(map, "encoder.down_blocks.0.resnets.0.conv1.weight"))
            return LD_OK;
        map->ldm = true;
        if (find_prefixed(map, "encoder.down.0.block.0.conv1.weight"))
            return LD_OK;
    }
    return ld_fail(err, LD_EFORMAT,
                   "%s: no VAE encoder found (looked for encoder.conv_in.weight with diffusers "
                   "or LDM block names, bare or under first_stage_model./vae.)",
                   ld_st_path(file));
}
