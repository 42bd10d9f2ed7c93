/* Per-image results → the bytes of an answer or a file: the one place both
 * programs turn ld_results into JSON, safetensors, .npy, ComfyUI's .latent, a
 * PNG preview, or the bare tensor diffusers' remote client reads.
 *
 *   ld_out_opts o = {.format = LD_OUT_SAFETENSORS, .kinds = LD_KINDS_DEFAULT};
 *   ld_out_blob blob;
 *   ld_render(model, results, n, &o, &blob, err);   // blob.data is malloc'd
 *
 * Images of one size stack into [N, ...] tensors.  Mixed sizes: JSON holds a
 * "results" list and safetensors one set of tensors per image (names
 * suffixed .K); the single-array forms (npy, comfyui, png, raw) refuse them
 * with LD_EUNSUPPORTED. */
#ifndef LATENTD_OUTPUT_H
#define LATENTD_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "latentd/encoder.h"
#include "latentd/result.h"
#include "latentd/safetensors.h"

typedef enum {
    LD_OUT_JSON,        /* the daemon's JSON: tensors as base64 float32 or nested lists */
    LD_OUT_SAFETENSORS, /* every kind asked for */
    LD_OUT_NPY,         /* the first kind asked for (in ld_kind order); see ld_render */
    LD_OUT_COMFYUI,     /* ComfyUI's .latent: "latent_tensor", unscaled, + format marker */
    LD_OUT_PNG,         /* a preview of the latents, one picture per image side by side */
    LD_OUT_RAW          /* one bare float32 tensor [N, C, h, w] of the latents */
} ld_out_format;

/* Bits of ld_kind: 1u << LD_KIND_LATENTS ... */
#define LD_KINDS_DEFAULT ((1u << LD_KIND_LATENTS) | (1u << LD_KIND_MEAN) | (1u << LD_KIND_LOGVAR))

typedef struct {
    ld_out_format format;
    unsigned kinds;          /* which tensors (JSON, safetensors, npy) */
    bool list_encoding;      /* JSON: nested lists instead of base64 */
    bool deterministic;      /* how the latents were made: the mode, or a sample */
    bool center;             /* center_input_sample, for the record */
    uint64_t seed;           /* a sample's: image K used seed + K */
    /* LD_OUT_RAW: latents as (mean - shift_factor) * scaling_factor instead of
     * the model's own scaling (diffusers' remote client passes its own) */
    bool rescale;
    double scaling_factor, shift_factor;
    const ld_st_meta *meta;  /* safetensors: more __metadata__ (borrowed; may be NULL) */
    size_t n_meta;
} ld_out_opts;

typedef struct {
    uint8_t *data;          /* malloc'd */
    size_t len;
    const char *media_type; /* "application/json", "image/png", ... */
    int ndim;               /* LD_OUT_RAW and LD_OUT_NPY: the array's shape */
    int64_t shape[4];
} ld_out_blob;

/* "json", "safetensors", "npy", "comfyui", "png" (raw is the remote route's). */
int ld_out_format_parse(const char *name, ld_out_format *out, char *err);
const char *ld_out_format_name(ld_out_format format);

/* Render n results (n >= 1).  npy of one image's moments is InvSR's layout,
 * [2C, h, w] without a batch axis; every other npy array is [N, ...]. */
int ld_render(const ld_model *model, const ld_result *results, int n, const ld_out_opts *o,
              ld_out_blob *out, char *err);

/* The RGB preview of one image's latents [C, h, w] (as the model scales
 * them), bytes [h, w, 3]: ComfyUI's linear latent-to-RGB factors for the
 * latent spaces it knows (SD1/SD2, SDXL, SD3, FLUX, told apart by channel
 * count and scaling), else the first three channels stretched to [0, 255]. */
void ld_preview_rgb(const ld_model *model, const float *latents, int lh, int lw, uint8_t *rgb);
/* Which factors ld_preview_rgb uses for this model: "sd1", "sdxl", "sd3",
 * "flux" or "channels". */
const char *ld_preview_space(const ld_model *model);

#endif
