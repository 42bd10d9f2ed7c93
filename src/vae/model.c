/* Loading a model: find the checkpoint and its config, read the architecture,
 * load the weights. */
#include "vae_internal.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define WEIGHTS_FILE "diffusion_pytorch_model.safetensors"

typedef struct {
    char weights[4096];
    char config[4096]; /* empty when there is none */
    char name[256];
} model_files;

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static void base_name(const char *path, char *dst, size_t size)
{
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", path);
    size_t len = strlen(copy);
    while (len > 1 && copy[len - 1] == '/')
        copy[--len] = '\0';
    snprintf(dst, size, "%s", basename(copy));
}

/* dir/name into dst; false when it does not fit. */
static bool join_path(char *dst, size_t size, const char *dir, const char *name)
{
    int len = snprintf(dst, size, "%s/%s", dir, name);
    return len >= 0 && (size_t)len < size;
}

/* A folder (a VAE folder, or a pipeline folder with vae/), or a file. */
static int locate_files(const char *path, model_files *files, char *err)
{
    char dir[4096], nested[4096];
    files->config[0] = '\0';
    if (strlen(path) >= sizeof dir - 64)
        return ld_fail(err, LD_EINVAL, "model path is too long");
    base_name(path, files->name, sizeof files->name);
    if (is_dir(path)) {
        join_path(nested, sizeof nested, path, "vae/config.json");
        snprintf(dir, sizeof dir, "%s", path);
        if (is_file(nested))
            join_path(dir, sizeof dir, path, "vae");
        join_path(files->weights, sizeof files->weights, dir, WEIGHTS_FILE);
        join_path(files->config, sizeof files->config, dir, "config.json");
        if (!is_file(files->config))
            return ld_fail(err, LD_EIO, "%s: no config.json in this model folder", dir);
        if (!is_file(files->weights))
            return ld_fail(err, LD_EIO, "%s: no " WEIGHTS_FILE " in this model folder", dir);
        return LD_OK;
    }
    if (!is_file(path))
        return ld_fail(err, LD_EIO, "%s: no such model file or folder", path);
    snprintf(files->weights, sizeof files->weights, "%s", path);
    snprintf(dir, sizeof dir, "%s", path);
    join_path(files->config, sizeof files->config, dirname(dir), "config.json");
    if (!is_file(files->config))
        files->config[0] = '\0';
    return LD_OK;
}

static void describe_scaling(ld_model *m)
{
    const ld_vae_config *c = &m->cfg;
    if (c->has_latents_stats)
        snprintf(m->scaling_text, sizeof m->scaling_text,
                 "(z - latents_mean) * %g / latents_std", (double)c->scaling_factor);
    else if (c->has_shift_factor)
        snprintf(m->scaling_text, sizeof m->scaling_text, "(z - %g) * %g",
                 (double)c->shift_factor, (double)c->scaling_factor);
    else
        snprintf(m->scaling_text, sizeof m->scaling_text, "z * %g", (double)c->scaling_factor);
}

static void apply_overrides(ld_vae_config *cfg, const ld_load_opts *opts)
{
    if (!opts)
        return;
    if (opts->set_scaling_factor)
        cfg->scaling_factor = opts->scaling_factor;
    if (opts->set_shift_factor) {
        cfg->has_shift_factor = true;
        cfg->shift_factor = opts->shift_factor;
    }
}

static int read_architecture(ld_model *m, const model_files *files, const ld_keymap *map,
                             const ld_load_opts *opts, char *err)
{
    if (files->config[0]) {
        m->config_source = "config.json";
        return ld_config_read(files->config, &m->cfg, err);
    }
    m->config_source = "inferred";
    int rc = ld_config_infer(map, &m->cfg, err);
    apply_overrides(&m->cfg, opts);
    return rc;
}

int ld_model_load(const char *path, const ld_load_opts *opts, ld_model **out, char *err)
{
    *out = NULL;
    model_files files;
    int rc = locate_files(path, &files, err);
    if (rc != LD_OK)
        return rc;
    ld_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path)) || !(m->name = strdup(files.name))) {
        ld_model_free(m);
        return ld_fail(err, LD_ENOMEM, "out of memory loading %s", path);
    }
    ld_st_file *st = NULL;
    ld_keymap map;
    rc = ld_st_open(files.weights, &st, err);
    if (rc == LD_OK)
        rc = ld_keymap_detect(st, &map, err);
    if (rc == LD_OK)
        rc = read_architecture(m, &files, &map, opts, err);
    if (rc == LD_OK) {
        m->layout = map.ldm ? "ldm" : "diffusers";
        rc = ld_weights_load(m, &map, err);
    }
    ld_st_close(st); /* the weights are copies: the mapping can go */
    if (rc != LD_OK) {
        ld_model_free(m);
        return rc;
    }
    describe_scaling(m);
    *out = m;
    return LD_OK;
}

void ld_model_free(ld_model *m)
{
    if (!m)
        return;
    ld_weights_free(m);
    free(m->path);
    free(m->name);
    free(m);
}

const ld_vae_config *ld_model_config(const ld_model *m) { return &m->cfg; }
const char *ld_model_name(const ld_model *m) { return m->name; }
const char *ld_model_path(const ld_model *m) { return m->path; }
const char *ld_model_layout(const ld_model *m) { return m->layout; }
const char *ld_model_config_source(const ld_model *m) { return m->config_source; }
const char *ld_model_scaling(const ld_model *m) { return m->scaling_text; }

int ld_model_latent_size(const ld_model *m, int h, int w, int *lh, int *lw, char *err)
{
    int down = m->cfg.n_levels - 1;
    if (h <= 0 || w <= 0 || (h >> down) < 1 || (w >> down) < 1)
        return ld_fail(err, LD_EINVAL, "a %dx%d image is too small: this model needs at least "
                       "%dx%d pixels", w, h, 1 << down, 1 << down);
    *lh = h >> down;
    *lw = w >> down;
    return LD_OK;
}
