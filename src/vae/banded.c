/* Resnets and downsamples over bands of rows, for images whose activations
 * cannot be held twice (README.md, "Memory").
 *
 * A banded resnet keeps its input x whole but never its hidden activation
 * h = conv1(silu(norm1(x))): a first sweep computes h band by band only to
 * sum its GroupNorm statistics; a second computes it again, band by band, and
 * feeds conv2, whose output (plus the residual) is written back over x.
 *
 * The kernels take whole images, so a band is a small image of its own: the
 * input rows it needs, clipped to the image, copied out [C, rows, W].  Its
 * output rows next to a cut edge see zeros where the neighbouring rows should
 * be, and are thrown away; at the image's true edges the kernel's zero
 * padding after the input map is exactly torch's.  No row of zeros is ever
 * put in front of an input map (it would read silu(shift), not zero).
 *
 * Output row y of a 3x3 convolution reads input rows y-1..y+1, so the rows
 * [y0, y1) of the resnet's output need h over [y0-1, y1+1) and x over
 * [y0-2, y1+2): 2 halo rows of x on each side. */
#include "encoder_plan.h"
#include "../nn/groupnorm_bands.h"

#include <assert.h>
#include <string.h>

/* A band: output rows [y0, y1), computed from input rows [a, b). */
typedef struct {
    int y0, y1;
    int a, b;
} band;

static band band_at(int y0, int rows, int h, int halo)
{
    band bd = {y0, y0 + rows < h ? y0 + rows : h, 0, 0};
    bd.a = y0 - halo > 0 ? y0 - halo : 0;
    bd.b = bd.y1 + halo < h ? bd.y1 + halo : h;
    return bd;
}

/* ---------------- copying rows of every channel ---------------- */

/* count floats of every channel c from src + c·src_plane to dst + c·dst_plane */
typedef struct {
    const float *src;
    size_t src_plane;
    float *dst;
    size_t dst_plane;
    size_t count;
} plane_copy;

static void copy_planes_range(void *ctx, int first, int last, int thread)
{
    (void)thread;
    const plane_copy *j = ctx;
    for (int c = first; c < last; c++)
        memcpy(j->dst + (size_t)c * j->dst_plane, j->src + (size_t)c * j->src_plane,
               j->count * sizeof(float));
}

static void copy_planes(const pass *ps, int channels, plane_copy job)
{
    const double t0 = ld_now_seconds();
    if (job.count)
        ld_pool_for(ps->pool, channels, copy_planes_range, &job);
    pass_time(ps, STAT_OTHER, t0);
}

/* rows [r0, r0 + rows) of src [ch, src_h, w] to rows [d0, d0 + rows) of
 * dst [ch, dst_h, w] */
static void copy_rows(const pass *ps, int ch, int w, const float *src, int src_h, int r0,
                      float *dst, int dst_h, int d0, int rows)
{
    const plane_copy job = {src + (size_t)r0 * w, (size_t)src_h * w, dst + (size_t)d0 * w,
                            (size_t)dst_h * w, (size_t)rows * w};
    copy_planes(ps, ch, job);
}

/* ---------------- the resnet ---------------- */

typedef struct {
    const pass *ps;
    const step *s;
    const step_bufs *b;
    ld_input_map map1, map2; /* norm1 of x, norm2 of h */
} band_ctx;

/* band_hidden ← conv1(map1(band_in)) over the band's input rows */
static void hidden_rows(const band_ctx *bc, const band *bd)
{
    const ld_resnet *r = bc->s->resnet;
    const ld_conv_geom g = conv_geom(&r->conv1, bd->b - bd->a, bc->s->w, 1);
    pass_conv(bc->ps, &g, &r->conv1, bc->b->band_in, &bc->map1, bc->b->band_hidden, 0, bc->b);
}

/* First sweep: norm2's coefficients from the sums of h over every band. */
static void hidden_statistics(const band_ctx *bc, const float *x)
{
    const step *s = bc->s;
    const step_bufs *b = bc->b;
    const int groups = bc->ps->m->cfg.norm_num_groups;
    memset(b->group_sums, 0, 2 * (size_t)groups * sizeof(double));
    for (int y0 = 0; y0 < s->h; y0 += b->band_rows) {
        const band bd = band_at(y0, b->band_rows, s->h, 1);
        copy_rows(bc->ps, s->in_ch, s->w, x, s->h, bd.a, b->band_in, bd.b - bd.a, 0,
                  bd.b - bd.a);
        hidden_rows(bc, &bd);
        const double t0 = ld_now_seconds();
        ld_group_sums_add(bc->ps->pool, b->band_hidden, s->out_ch, bd.b - bd.a, s->w,
                          bd.y0 - bd.a, bd.y1 - bd.y0, groups, b->group_sums);
        pass_time(bc->ps, STAT_NORM, t0);
    }
    const ld_norm *norm2 = &s->resnet->norm2;
    ld_group_coeffs_from_sums(b->group_sums, (size_t)s->h * s->w, norm2->channels, groups,
                              norm2->gamma, norm2->beta, LD_GN_EPS, b->scale2, b->shift2);
}

/* Second sweep without a shortcut: x ← x + conv2(map2(h)) in place.  Band
 * k+1 reads the last 2 rows of band k as they were: they are kept in
 * b->halo before band k is written. */
static void residual_in_place(const band_ctx *bc, float *x)
{
    const step *s = bc->s;
    const step_bufs *b = bc->b;
    const ld_resnet *r = s->resnet;
    for (int y0 = 0; y0 < s->h; y0 += b->band_rows) {
        const band bd = band_at(y0, b->band_rows, s->h, 2);
        const int rows = bd.b - bd.a, kept = bd.y0 - bd.a; /* kept: rows from the halo */
        copy_rows(bc->ps, s->in_ch, s->w, b->halo, 2, 0, b->band_in, rows, 0, kept);
        copy_rows(bc->ps, s->in_ch, s->w, x, s->h, bd.y0, b->band_in, rows, kept, rows - kept);
        hidden_rows(bc, &bd);
        if (bd.y1 < s->h)
            copy_rows(bc->ps, s->in_ch, s->w, b->band_in, rows, bd.y1 - 2 - bd.a, b->halo, 2, 0,
                      2);
        const ld_conv_geom g = conv_geom(&r->conv2, rows, s->w, 1);
        pass_conv(bc->ps, &g, &r->conv2, b->band_hidden, &bc->map2, b->band_in, 1, b);
        copy_rows(bc->ps, s->out_ch, s->w, b->band_in, rows, kept, x, s->h, bd.y0,
                  bd.y1 - bd.y0);
    }
}

/* Second sweep with a shortcut: b->out ← shortcut(x) + conv2(map2(h)). */
static void residual_shortcut(const band_ctx *bc, const float *x)
{
    const step *s = bc->s;
    const step_bufs *b = bc->b;
    const ld_resnet *r = s->resnet;
    for (int y0 = 0; y0 < s->h; y0 += b->band_rows) {
        const band bd = band_at(y0, b->band_rows, s->h, 2);
        const int rows = bd.b - bd.a;
        copy_rows(bc->ps, s->in_ch, s->w, x, s->h, bd.a, b->band_in, rows, 0, rows);
        hidden_rows(bc, &bd);
        ld_conv_geom g = conv_geom(&r->shortcut, rows, s->w, 1);
        pass_conv(bc->ps, &g, &r->shortcut, b->band_in, NULL, b->band_out, 0, b);
        g = conv_geom(&r->conv2, rows, s->w, 1);
        pass_conv(bc->ps, &g, &r->conv2, b->band_hidden, &bc->map2, b->band_out, 1, b);
        copy_rows(bc->ps, s->out_ch, s->w, b->band_out, rows, bd.y0 - bd.a, b->out, s->h, bd.y0,
                  bd.y1 - bd.y0);
    }
}

/* One image; beats as the whole resnet does: conv1, the shortcut, conv2. */
static int banded_resnet_image(const pass *ps, const step *s, const step_bufs *b, int i)
{
    const ld_resnet *r = s->resnet;
    float *x = b->x + (size_t)i * step_in_floats(s);
    band_ctx bc = {ps, s, b, {0}, {0}};
    bc.map1 = pass_norm_map(ps, &r->norm1, x, (size_t)s->h * s->w, b->scale1, b->shift1);
    bc.map2 = (ld_input_map){b->scale2, b->shift2, 1};
    hidden_statistics(&bc, x);
    int rc = pass_layer_done(ps);
    if (rc != LD_OK)
        return rc;
    if (!r->has_shortcut) {
        residual_in_place(&bc, x);
        return pass_layer_done(ps);
    }
    residual_shortcut(&bc, x);
    const double t0 = ld_now_seconds();
    memmove(b->x + (size_t)i * step_out_floats(s), b->out, step_out_floats(s) * sizeof(float));
    pass_time(ps, STAT_OTHER, t0);
    rc = pass_layer_done(ps);
    return rc == LD_OK ? pass_layer_done(ps) : rc;
}

int banded_resnet(const pass *ps, const step *s, const step_bufs *b)
{
    assert(s->resnet->has_shortcut || s->in_ch == s->out_ch);
    int rc = LD_OK;
    for (int k = 0; k < ps->n && rc == LD_OK; k++)
        rc = banded_resnet_image(ps, s, b, pass_image(ps, s, k));
    return rc;
}

/* ---------------- the downsample ---------------- */

/* The stride-2 convolution of image i in place: output rows [oy0, oy1) read
 * input rows [2·oy0, 2·oy1 + 1), so once a band is computed, every input
 * row above 2·oy1 is dead; output channel c goes to the start of input
 * channel c's plane (rows < oy1/2 + 1 of it), then the planes close up. */
static int banded_downsample_image(const pass *ps, const step *s, const step_bufs *b, int i)
{
    float *x = b->x + (size_t)i * step_in_floats(s);
    const size_t out_plane = (size_t)s->out_h * s->out_w;
    for (int oy0 = 0; oy0 < s->out_h; oy0 += b->band_rows) {
        const int oy1 = oy0 + b->band_rows < s->out_h ? oy0 + b->band_rows : s->out_h;
        const int a = 2 * oy0, end = 2 * oy1 + 1 < s->h ? 2 * oy1 + 1 : s->h;
        copy_rows(ps, s->in_ch, s->w, x, s->h, a, b->band_in, end - a, 0, end - a);
        ld_conv_geom g = conv_geom(s->conv, end - a, s->w, 2);
        g.out_h = oy1 - oy0; /* the bottom padding row only below the image's last row */
        pass_conv(ps, &g, s->conv, b->band_in, NULL, b->band_out, 0, b);
        const size_t band_plane = (size_t)(oy1 - oy0) * s->out_w;
        const plane_copy out = {b->band_out, band_plane, x + (size_t)oy0 * s->out_w,
                                (size_t)s->h * s->w, band_plane};
        copy_planes(ps, s->out_ch, out);
    }
    const double t0 = ld_now_seconds();
    for (int c = 1; c < s->out_ch; c++) /* in increasing c: never over a plane not yet moved */
        memmove(x + c * out_plane, x + (size_t)c * s->h * s->w, out_plane * sizeof(float));
    memmove(b->x + (size_t)i * step_out_floats(s), x, step_out_floats(s) * sizeof(float));
    pass_time(ps, STAT_OTHER, t0);
    return pass_layer_done(ps);
}

int banded_downsample(const pass *ps, const step *s, const step_bufs *b)
{
    assert(s->out_ch <= s->in_ch);
    int rc = LD_OK;
    for (int k = 0; k < ps->n && rc == LD_OK; k++)
        rc = banded_downsample_image(ps, s, b, pass_image(ps, s, k));
    return rc;
}
