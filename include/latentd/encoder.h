/* The VAE encoder of a Stable Diffusion autoencoder (diffusers
 * AutoencoderKL.encode), on the CPU in float32.  This is the one header the
 * service and the CLI need: load a checkpoint, encode batches of images.
 *
 * A loaded model is read-only and may be shared by any number of threads, each
 * calling ld_encode with its own buffers (and its own thread pool).
 *
 *   ld_encoder_init();
 *   ld_model *model;  ld_pool *pool;
 *   ld_model_load(path, NULL, &model, err);
 *   ld_pool_new(threads, &pool, err);         // once per worker
 *   ld_encode_opts opts;
 *   ld_encode_opts_init(&opts);
 *   opts.pool = pool;
 *   ld_encode(model, images, n, h, w, &opts, &out, err);
 *   ld_pool_free(pool);
 *   ld_model_free(model); */
#ifndef LATENTD_ENCODER_H
#define LATENTD_ENCODER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "latentd/common.h"
#include "latentd/nn.h" /* ld_pool */

#define LD_MAX_LEVELS 8
#define LD_MAX_LATENT_CHANNELS 64

typedef struct {
    int in_channels;
    int n_levels;
    int block_out_channels[LD_MAX_LEVELS];
    int layers_per_block;
    int latent_channels;
    int norm_num_groups;
    bool use_quant_conv;
    bool mid_attention;
    float scaling_factor;
    bool has_shift_factor;
    float shift_factor;
    bool has_latents_stats; /* latents_mean and latents_std, one per latent channel */
    float latents_mean[LD_MAX_LATENT_CHANNELS];
    float latents_std[LD_MAX_LATENT_CHANNELS];
} ld_vae_config;

typedef struct ld_model ld_model;

/* Once per process, before encoding: the encoder splits its own work between
 * the threads of a pool and runs BLAS one thread per call, so the two never
 * oversubscribe the cores. */
void ld_encoder_init(void);

/* Options for loading.  The scaling overrides apply to a single-file
 * checkpoint that has no config.json beside it (a config always wins). */
typedef struct {
    bool set_scaling_factor;
    float scaling_factor;
    bool set_shift_factor;
    float shift_factor;
} ld_load_opts;

/* path: a diffusers folder (config.json + diffusion_pytorch_model.safetensors,
 * or a pipeline folder with vae/), or one .safetensors file in diffusers or
 * original LDM layout, bare or under "first_stage_model." / "vae.".
 * opts may be NULL. */
int ld_model_load(const char *path, const ld_load_opts *opts, ld_model **out, char *err);
void ld_model_free(ld_model *model);

const ld_vae_config *ld_model_config(const ld_model *model);
/* A short name (the folder or file name) and what was loaded. */
const char *ld_model_name(const ld_model *model);
const char *ld_model_path(const ld_model *model);
const char *ld_model_layout(const ld_model *model);      /* "diffusers" or "ldm" */
const char *ld_model_config_source(const ld_model *model); /* "config.json", "inferred" */
/* One line saying how latents are scaled, e.g. "(z - 0.1159) * 0.3611". */
const char *ld_model_scaling(const ld_model *model);

/* The latent's size for an h×w image: floor(h/2^(levels-1)) per side.  Fails
 * (LD_EINVAL) when the image is too small for the encoder's downsamples. */
int ld_model_latent_size(const ld_model *model, int h, int w, int *lh, int *lw, char *err);

/* Per-stage wall time in seconds, accumulated over a call (for benchmarks),
 * and how many layers of how many images ran in bands of rows (see
 * ld_banding). */
typedef struct {
    double conv, norm, attention, other;
    long banded_layers;
} ld_encode_stats;

/* Called after each chunk; a non-zero return cancels the call (LD_ECANCELLED). */
typedef int (*ld_progress_fn)(void *ctx, int images_done, int images_total);

/* How a pass trades time for memory on large images.  Banded, the resnets
 * whose input and hidden activation would not fit beside each other keep
 * only the input: conv1 runs over bands of rows twice, once for its
 * GroupNorm statistics and once to feed conv2, and a downsample overwrites
 * its own input.  The result is the same (to float rounding); the banded
 * layers take about 1.7 times as long. */
typedef enum {
    LD_BANDING_AUTO, /* band when one image's unbanded pass needs more than
                        LD_BANDING_AUTO_BYTES, or when max_memory requires it */
    LD_BANDING_OFF,  /* never: LD_ETOOLARGE when the unbanded pass is over max_memory */
    LD_BANDING_ON,   /* band every layer that can be banded (tests, benchmarks) */
} ld_banding;

#define LD_BANDING_AUTO_BYTES ((size_t)2 << 30)

typedef struct {
    int vae_split;          /* at most this many images per forward pass; <= 0: all */
    ld_pool *pool;          /* the threads to compute on (a daemon worker's own); NULL: a
                               pool of `threads` made for this call alone */
    int threads;            /* without a pool: threads this call uses; <= 0: one per core */
    ld_kernel kernel;       /* without a pool: its matrix kernel (default LD_KERNEL_AUTO,
                               the CPU's best); a caller's pool keeps its own */
    bool center_input;      /* x*2-1 before the encoder (center_input_sample); default on */
    bool deterministic;     /* latents from the mode (mean); else a sample */
    const uint64_t *seeds;  /* sampling: one seed per image (the noise depends on it alone) */
    size_t max_memory;      /* bytes of working memory a pass may take; 0: no limit */
    ld_banding banding;     /* default LD_BANDING_AUTO */
    ld_progress_fn progress;
    void *progress_ctx;
    ld_encode_stats *stats; /* optional; times are added to it */
    /* optional: once *cancel is true (from any thread) the call returns
     * LD_ECANCELLED after the layer it is in (its working memory stays
     * with the pool, as after any call) */
    const _Atomic bool *cancel;
    /* optional: incremented after every layer of every image (the mid-block
     * attention: after every block of 144 queries, once for a small image),
     * so a watchdog can tell a working call from a stuck one */
    _Atomic uint64_t *heartbeat;
} ld_encode_opts;

void ld_encode_opts_init(ld_encode_opts *opts);

/* Outputs, each [n, C, lh, lw] float32 (moments: [n, 2C, lh, lw]); any may be
 * NULL to skip it.  latents: the scaled mode or sample; mean; logvar (clamped
 * to [-30, 20]); moments: mean and logvar as the encoder produced them, before
 * the clamp (what DiagonalGaussianDistribution takes). */
typedef struct {
    float *latents;
    float *mean;
    float *logvar;
    float *moments;
    int chunk_used; /* set by ld_encode: images per pass it settled on */
} ld_encode_out;

/* Encode n images of h×w, given as RGB in [0, 1], [n, 3, h, w].
 * Works in chunks of at most vae_split images; when a chunk's working memory
 * cannot be had it halves the chunk and retries, down to one image, then
 * (banding auto) the same banded, before it reports LD_ENOMEM.  When even
 * the least of those is over max_memory it reports LD_ETOOLARGE at once
 * (see ld_encode_least_workspace_bytes): no retry could fit.  The result
 * does not depend on the chunking or the banding (beyond float rounding).
 * That working memory is the only memory the call takes (besides a pool it
 * makes itself, see ld_pool_new): nothing is mapped later, in the middle of
 * the work, so memory pressure gives LD_ENOMEM up front, never a stall.  It
 * is the pool's arena (ld_pool_arena): a caller's pool keeps it for the next
 * call, so repeated calls do not map it afresh (at most max_memory, when
 * that is set: a kept block over it is given back first). */
int ld_encode(const ld_model *model, const float *images, int n, int h, int w,
              const ld_encode_opts *opts, ld_encode_out *out, char *err);

/* Bytes of working memory one pass over `chunk` images of h×w takes on
 * `threads` compute threads (<= 0: one per core, ld_encode's default), with
 * the default options (LD_BANDING_AUTO, no max_memory): exactly what
 * ld_encode then allocates, and so enough as max_memory for such a pass. */
size_t ld_encode_workspace_bytes(const ld_model *model, int chunk, int h, int w, int threads);

/* The least working memory ld_encode can encode one h×w image in, on
 * `threads` compute threads (<= 0: one per core) with that banding: its last
 * resort, one image banded as far as the option allows.  ld_encode refuses
 * an image with LD_ETOOLARGE exactly when this is over max_memory, so a
 * caller can refuse it up front.  Banding cuts rows only: a wide image of
 * few rows needs about what it needs whole, a tall one far less. */
size_t ld_encode_least_workspace_bytes(const ld_model *model, int h, int w, int threads,
                                       ld_banding banding);

#endif
