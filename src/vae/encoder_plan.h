/* The encoder graph as a sequence of steps, the working memory each step
 * takes, and the pass that runs them: shared by plan.c (what to allocate),
 * encoder.c (the steps over whole images) and banded.c (the same over bands
 * of rows).  See README.md, "Memory".
 *
 * One arena holds a pass.  The chunk's running activations sit at its start,
 * packed (image i at i·per-image floats); what a step needs besides them
 * (hidden activations, band buffers, norm coefficients, conv or attention
 * scratch) is laid out after them for that step only, so the scratch of the
 * deep 512-channel layers lives in room that the large shallow activations
 * needed.  The arena is the largest of the steps' needs. */
#ifndef LATENTD_ENCODER_PLAN_H
#define LATENTD_ENCODER_PLAN_H

#include "vae_internal.h"
#include "latentd/nn.h"

#include <stdatomic.h>

typedef enum {
    STEP_CONV_IN,    /* the caller's images → the first activation */
    STEP_RESNET,
    STEP_DOWNSAMPLE, /* 3x3 stride 2 */
    STEP_ATTENTION,  /* x + attention(group_norm(x)) */
    STEP_CONV_OUT,   /* conv_out(silu(norm_out(x))) */
    STEP_QUANT_CONV,
} step_kind;

typedef struct {
    step_kind kind;
    const ld_conv *conv;     /* all but STEP_RESNET and STEP_ATTENTION */
    const ld_norm *norm;     /* STEP_CONV_OUT */
    const ld_resnet *resnet; /* STEP_RESNET */
    const ld_attn *attn;     /* STEP_ATTENTION */
    int in_ch, h, w;         /* the input, per image */
    int out_ch, out_h, out_w;
} step;

/* Walks the graph of a model for an h×w image. */
typedef struct {
    const ld_model *m;
    int stage;        /* conv_in, the down blocks, mid, conv_out, quant_conv, done */
    int level, layer; /* within the down blocks */
    int ch, h, w;     /* the running activation */
} step_iter;

void steps_begin(step_iter *it, const ld_model *m, int h, int w);
/* The next step into *s; false after the last. */
bool steps_next(step_iter *it, step *s);

static inline size_t step_in_floats(const step *s)
{
    return (size_t)s->in_ch * s->h * s->w;
}

static inline size_t step_out_floats(const step *s)
{
    return (size_t)s->out_ch * s->out_h * s->out_w;
}

typedef enum {
    PLAN_WHOLE,        /* no step banded */
    PLAN_BAND_AS_NEEDED, /* the arena is the least any banding allows; a step
                            is banded when it does not fit whole */
    PLAN_BAND_ALL,     /* every step that can be banded is */
} plan_mode;

typedef struct {
    const ld_model *m;
    int h, w;            /* the image */
    int chunk;           /* images per pass */
    int threads;         /* of the pool (conv and attention scratch) */
    plan_mode mode;
    size_t band_floats;  /* the buffers of one band aim at this many floats */
    size_t floats;       /* the arena */
} plan;

/* Sizes the arena of a pass in that mode. */
void plan_make(plan *p, const ld_model *m, int h, int w, int chunk, int threads,
               plan_mode mode);
/* PLAN_BAND_AS_NEEDED when one image's whole pass would need more than
 * LD_BANDING_AUTO_BYTES, else PLAN_WHOLE: what LD_BANDING_AUTO starts with. */
plan_mode plan_auto_mode(const ld_model *m, int h, int w, int threads);
/* Whether step s runs in bands of rows under plan p. */
bool plan_bands_step(const plan *p, const step *s);

/* A step's buffers, carved from the arena after the chunk's activations.
 * The planner carves with a NULL base to count, the pass with the arena:
 * one description of the layout for both. */
typedef struct {
    float *x;            /* the chunk's activations: image i's input at
                            i·step_in_floats, its output at i·step_out_floats */
    float *hidden;       /* whole resnet: conv1's output [out_ch, h, w], one image */
    float *out;          /* a step's output [out_ch, out_h, out_w] for one image,
                            before it moves into x */
    float *attn_in;      /* attention: the normalised input [ch, h·w], one image */
    float *band_in;      /* banded: input rows [in_ch, band rows + halo, w] */
    float *band_hidden;  /* banded resnet: conv1 of those rows [out_ch, rows, w] */
    float *band_out;     /* banded: shortcut + conv2 of those rows, or the
                            downsample's output rows */
    float *halo;         /* banded resnet without shortcut: the input rows the
                            next band reads once this one is written [in_ch, 2, w] */
    float *scale1, *shift1; /* GroupNorm of the input as an input map [in_ch] */
    float *scale2, *shift2; /* of the hidden activation [out_ch] */
    double *group_sums;  /* banded resnet: [groups][2], Σx and Σx² */
    float *scratch;      /* conv or attention scratch */
    size_t scratch_floats;
    int band_rows;       /* banded: output rows per band */
} step_bufs;

/* Lays out step s's buffers from base (NULL: only count); returns the floats
 * taken, the activations included. */
size_t step_layout(const plan *p, const step *s, bool banded, float *base, step_bufs *b);

/* One pass over a chunk of images. */
typedef struct {
    const ld_model *m;
    ld_pool *pool;
    int n;               /* images in this pass (<= plan.chunk) */
    const plan *plan;
    float *arena;        /* plan->floats */
    ld_encode_stats *stats;
    const _Atomic bool *cancel;  /* may be NULL */
    _Atomic uint64_t *heartbeat; /* may be NULL */
} pass;

/* Column and Winograd buffers of one convolution (floats): 16 MiB; the
 * kernels size their bands of output rows to fit. */
#define CONV_SCRATCH_BUDGET ((size_t)4 << 20)

typedef enum { STAT_CONV, STAT_NORM, STAT_ATTENTION, STAT_OTHER } stat_kind;

/* adds the time since t0 to that stage's total, when stats are kept */
void pass_time(const pass *ps, stat_kind kind, double t0);
/* out = conv(in), or out += conv(in) when accumulating, over geometry g; with
 * map, the input passes through it as it is read.  b->scratch is the scratch. */
void pass_conv(const pass *ps, const ld_conv_geom *g, const ld_conv *conv, const float *in,
               const ld_input_map *map, float *out, int accumulate, const step_bufs *b);
/* GroupNorm of x [norm->channels, plane] as an input map (with SiLU) */
ld_input_map pass_norm_map(const pass *ps, const ld_norm *norm, const float *x, size_t plane,
                           float *scale, float *shift);
/* One layer of one image done: a heartbeat, and LD_ECANCELLED once the
 * caller has asked to stop. */
int pass_layer_done(const pass *ps);
/* The geometry of conv over an h×w input at stride 1 ("same") or 2
 * (diffusers' downsample: pad (0,1,0,1), then none). */
ld_conv_geom conv_geom(const ld_conv *conv, int h, int w, int stride);
/* in image order i = 0..n-1, or n-1..0 when a step's output is larger than
 * its input, so writing image i's output never overwrites an input not yet read */
int pass_image(const pass *ps, const step *s, int k);

/* banded.c */
int banded_resnet(const pass *ps, const step *s, const step_bufs *b);
int banded_downsample(const pass *ps, const step *s, const step_bufs *b);

#endif
