/* The model's insides, shared by the files of src/vae only. */
#ifndef LATENTD_VAE_INTERNAL_H
#define LATENTD_VAE_INTERNAL_H

#include "latentd/encoder.h"
#include "latentd/safetensors.h"

typedef struct {
    float *weight; /* [out, in, k, k] */
    float *bias;   /* [out] */
    int in_ch, out_ch, kernel;
} ld_conv;

typedef struct {
    float *gamma, *beta;
    int channels;
} ld_norm;

typedef struct {
    ld_norm norm1, norm2;
    ld_conv conv1, conv2;
    bool has_shortcut; /* 1x1 conv_shortcut when channels change */
    ld_conv shortcut;
} ld_resnet;

typedef struct {
    ld_norm norm;
    ld_conv q, k, v, out; /* 1x1, i.e. Linear over channels */
} ld_attn;

typedef struct {
    ld_resnet *resnets; /* layers_per_block of them */
    bool has_downsample;
    ld_conv downsample; /* 3x3 stride 2, padding (0,1,0,1) */
} ld_down_block;

struct ld_model {
    ld_vae_config cfg;
    char *path, *name;
    const char *layout;
    const char *config_source;
    char scaling_text[160];
    ld_conv conv_in;
    ld_down_block down[LD_MAX_LEVELS];
    ld_resnet mid_resnet1, mid_resnet2;
    ld_attn mid_attn;
    ld_norm norm_out;
    ld_conv conv_out;
    ld_conv quant_conv;
};

#define LD_GN_EPS 1e-6f

/* config.c: read a diffusers config.json into cfg; ld_config_parse takes the
 * JSON text from memory (origin names it in messages). */
int ld_config_read(const char *path, ld_vae_config *cfg, char *err);
int ld_config_parse(const char *text, size_t len, const char *origin, ld_vae_config *cfg,
                    char *err);
int ld_config_check(const ld_vae_config *cfg, const char *origin, char *err);

/* keymap.c: where the encoder's tensors live in a checkpoint. */
typedef struct {
    const ld_st_file *file;
    const char *prefix; /* "", "first_stage_model.", "vae." */
    bool ldm;           /* original LDM/CompVis names */
} ld_keymap;

int ld_keymap_detect(const ld_st_file *file, ld_keymap *map, char *err);
/* The name a diffusers-style encoder key has in this checkpoint. */
void ld_keymap_name(const ld_keymap *map, const char *key, char *buf, size_t size);
/* The tensor for a diffusers-style encoder key, or NULL. */
const ld_st_tensor *ld_keymap_find(const ld_keymap *map, const char *key);

/* weights.c */
int ld_config_infer(const ld_keymap *map, ld_vae_config *cfg, char *err);
int ld_weights_load(ld_model *model, const ld_keymap *map, char *err);
void ld_weights_free(ld_model *model);

/* posterior.c: moments of one chunk → the caller's outputs. */
typedef struct {
    const ld_vae_config *cfg;
    int lh, lw;
    bool deterministic;
} ld_posterior_ctx;

void ld_posterior(const ld_posterior_ctx *ctx, const float *moments, int n,
                  const uint64_t *seeds, ld_encode_out *out, size_t out_offset_images);

/* rng.c: torch's CPU generator, torch.Generator("cpu") (see rng.c).
 * ld_rng_seed is manual_seed(seed); ld_rng_randn then fills out[n] as
 * torch.randn(n, generator=g, dtype=torch.float32) does, and a second call
 * continues the stream as a second torch.randn on the same generator would. */
typedef struct {
    uint32_t state[624]; /* mt19937 */
    int next;            /* the next word of state to hand out; 624: twist first */
    bool has_spare;      /* torch's next_double_normal_sample, kept for n < 16 */
    double spare;
} ld_rng;

void ld_rng_seed(ld_rng *rng, uint64_t seed);
void ld_rng_randn(ld_rng *rng, float *out, size_t n);

#endif
