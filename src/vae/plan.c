/* The encoder's steps and the working memory of a pass: one arena, sized as
 * the largest of what the steps need at once (see encoder_plan.h). */
#include "encoder_plan.h"

#include <string.h>

/* A banded step's band buffers aim at 1/32 of the largest activation of one
 * image: small beside the activation they replace, large enough that the
 * halo rows recomputed at the bands' edges cost little (about 4 rows in 30
 * at 2048x2048). */
#define BAND_FRACTION 32

/* ---------------- the steps ---------------- */

enum { STAGE_CONV_IN, STAGE_DOWN, STAGE_MID1, STAGE_MID_ATTN, STAGE_MID2, STAGE_CONV_OUT,
       STAGE_QUANT, STAGE_DONE };

void steps_begin(step_iter *it, const ld_model *m, int h, int w)
{
    memset(it, 0, sizeof *it);
    it->m = m;
    it->stage = STAGE_CONV_IN;
    it->ch = m->cfg.in_channels;
    it->h = h;
    it->w = w;
}

/* The down blocks' next step: a resnet, or the level's downsample. */
static bool down_step(step_iter *it, step *s)
{
    const ld_model *m = it->m;
    while (it->level < m->cfg.n_levels) {
        const ld_down_block *blk = &m->down[it->level];
        if (it->layer < m->cfg.layers_per_block) {
            s->kind = STEP_RESNET;
            s->resnet = &blk->resnets[it->layer++];
            return true;
        }
        it->layer = 0;
        it->level++;
        if (blk->has_downsample) {
            s->kind = STEP_DOWNSAMPLE;
            s->conv = &blk->downsample;
            s->out_h = s->h / 2;
            s->out_w = s->w / 2;
            return true;
        }
    }
    return false;
}

/* The step at the iterator's stage, its output shape left to the caller;
 * false when the stage has none (then the stage has moved on). */
static bool stage_step(step_iter *it, step *s)
{
    const ld_model *m = it->m;
    switch (it->stage) {
    case STAGE_CONV_IN:
        it->stage = STAGE_DOWN;
        s->kind = STEP_CONV_IN;
        s->conv = &m->conv_in;
        return true;
    case STAGE_DOWN:
        if (down_step(it, s))
            return true;
        it->stage = STAGE_MID1;
        return false;
    case STAGE_MID1:
    case STAGE_MID2:
        s->kind = STEP_RESNET;
        s->resnet = it->stage == STAGE_MID1 ? &m->mid_resnet1 : &m->mid_resnet2;
        it->stage = it->stage == STAGE_MID1 ? STAGE_MID_ATTN : STAGE_CONV_OUT;
        return true;
    case STAGE_MID_ATTN:
        it->stage = STAGE_MID2;
        s->kind = STEP_ATTENTION;
        s->attn = &m->mid_attn;
        return m->cfg.mid_attention;
    case STAGE_CONV_OUT:
        it->stage = STAGE_QUANT;
        s->kind = STEP_CONV_OUT;
        s->conv = &m->conv_out;
        s->norm = &m->norm_out;
        return true;
    case STAGE_QUANT:
        it->stage = STAGE_DONE;
        s->kind = STEP_QUANT_CONV;
        s->conv = &m->quant_conv;
        return m->cfg.use_quant_conv;
    default:
        return false;
    }
}

bool steps_next(step_iter *it, step *s)
{
    while (it->stage != STAGE_DONE) {
        memset(s, 0, sizeof *s);
        s->in_ch = it->ch;
        s->h = s->out_h = it->h;
        s->w = s->out_w = it->w;
        if (!stage_step(it, s))
            continue;
        if (s->kind == STEP_RESNET)
            s->out_ch = s->resnet->conv2.out_ch;
        else if (s->kind == STEP_ATTENTION)
            s->out_ch = s->in_ch;
        else
            s->out_ch = s->conv->out_ch;
        it->ch = s->out_ch;
        it->h = s->out_h;
        it->w = s->out_w;
        return true;
    }
    return false;
}

/* ---------------- the layout of one step ---------------- */

typedef struct {
    float *base; /* NULL: count only */
    size_t used;
} carver;

/* floats from the carver, rounded up to 64 bytes so every buffer is aligned */
static float *carve(carver *c, size_t floats)
{
    float *p = c->base ? c->base + c->used : NULL;
    c->used += (floats + 15) & ~(size_t)15;
    return p;
}

ld_conv_geom conv_geom(const ld_conv *conv, int h, int w, int stride)
{
    ld_conv_geom g = {.in_ch = conv->in_ch, .in_h = h, .in_w = w, .out_ch = conv->out_ch,
                      .kernel = conv->kernel, .stride = stride};
    if (stride == 1) {
        g.pad_top = g.pad_left = conv->kernel / 2;
        g.out_h = h;
        g.out_w = w;
    } else {
        g.out_h = h / 2;
        g.out_w = w / 2;
    }
    return g;
}

static size_t max_size(size_t a, size_t b)
{
    return a > b ? a : b;
}

static size_t conv_scratch(const plan *p, const ld_conv *conv, int h, int w, int stride)
{
    const ld_conv_geom g = conv_geom(conv, h, w, stride);
    return ld_conv2d_scratch_floats(&g, CONV_SCRATCH_BUDGET, p->threads);
}

/* The scratch of a resnet's convolutions over `rows` rows of width w */
static size_t resnet_scratch(const plan *p, const ld_resnet *r, int rows, int w)
{
    size_t floats = max_size(conv_scratch(p, &r->conv1, rows, w, 1),
                             conv_scratch(p, &r->conv2, rows, w, 1));
    if (r->has_shortcut)
        floats = max_size(floats, conv_scratch(p, &r->shortcut, rows, w, 1));
    return floats;
}

static int clamp_rows(size_t rows, int lo, int hi)
{
    if (rows < (size_t)lo)
        rows = (size_t)lo;
    return rows > (size_t)hi ? hi : (int)rows;
}

/* Output rows per band of a banded resnet: its buffers hold 4 halo rows more */
static int resnet_band_rows(const plan *p, const step *s)
{
    const size_t per_row = (size_t)(s->in_ch + s->out_ch * (s->resnet->has_shortcut ? 2 : 1)) *
                           (size_t)s->w;
    const size_t rows = p->band_floats / per_row;
    return clamp_rows(rows > 4 ? rows - 4 : 0, 4, s->h);
}

/* Output rows per band of a banded downsample (2 input rows each) */
static int downsample_band_rows(const plan *p, const step *s)
{
    const size_t per_row = (size_t)s->in_ch * 2 * s->w + (size_t)s->out_ch * s->out_w;
    return clamp_rows(p->band_floats / per_row, 1, s->out_h);
}

static void layout_resnet(const plan *p, const step *s, bool banded, carver *c, step_bufs *b)
{
    const ld_resnet *r = s->resnet;
    if (r->has_shortcut)
        b->out = carve(c, step_out_floats(s));
    if (!banded) {
        b->hidden = carve(c, step_out_floats(s));
        b->scratch_floats = resnet_scratch(p, r, s->h, s->w);
    } else {
        b->band_rows = resnet_band_rows(p, s);
        const int rows = b->band_rows + 4 < s->h ? b->band_rows + 4 : s->h;
        const size_t band_plane = (size_t)rows * s->w;
        b->band_in = carve(c, s->in_ch * band_plane);
        b->band_hidden = carve(c, s->out_ch * band_plane);
        if (r->has_shortcut)
            b->band_out = carve(c, s->out_ch * band_plane);
        else
            b->halo = carve(c, (size_t)s->in_ch * 2 * s->w);
        b->group_sums = (double *)carve(c, 4 * (size_t)p->m->cfg.norm_num_groups);
        b->scratch_floats = resnet_scratch(p, r, rows, s->w);
    }
    b->scale1 = carve(c, s->in_ch);
    b->shift1 = carve(c, s->in_ch);
    b->scale2 = carve(c, s->out_ch);
    b->shift2 = carve(c, s->out_ch);
}

static void layout_downsample(const plan *p, const step *s, bool banded, carver *c,
                              step_bufs *b)
{
    if (!banded) {
        b->out = carve(c, step_out_floats(s));
        b->scratch_floats = conv_scratch(p, s->conv, s->h, s->w, 2);
        return;
    }
    b->band_rows = downsample_band_rows(p, s);
    const int in_rows = 2 * b->band_rows + 1 < s->h ? 2 * b->band_rows + 1 : s->h;
    b->band_in = carve(c, (size_t)s->in_ch * in_rows * s->w);
    b->band_out = carve(c, (size_t)s->out_ch * b->band_rows * s->out_w);
    ld_conv_geom g = conv_geom(s->conv, in_rows, s->w, 2);
    g.out_h = b->band_rows;
    b->scratch_floats = ld_conv2d_scratch_floats(&g, CONV_SCRATCH_BUDGET, p->threads);
}

size_t step_layout(const plan *p, const step *s, bool banded, float *base, step_bufs *b)
{
    memset(b, 0, sizeof *b);
    carver c = {base, 0};
    b->x = carve(&c, (size_t)p->chunk * max_size(step_in_floats(s), step_out_floats(s)));
    switch (s->kind) {
    case STEP_RESNET:
        layout_resnet(p, s, banded, &c, b);
        break;
    case STEP_DOWNSAMPLE:
        layout_downsample(p, s, banded, &c, b);
        break;
    case STEP_ATTENTION:
        b->attn_in = carve(&c, step_in_floats(s));
        b->out = carve(&c, step_out_floats(s));
        b->scratch_floats = ld_attention_scratch_floats(s->in_ch, (size_t)s->h * s->w, p->threads);
        break;
    case STEP_CONV_IN: /* the input is the caller's: the output goes straight to x */
    case STEP_CONV_OUT:
    case STEP_QUANT_CONV:
        if (s->kind != STEP_CONV_IN)
            b->out = carve(&c, step_out_floats(s));
        b->scale1 = carve(&c, s->in_ch);
        b->shift1 = carve(&c, s->in_ch);
        b->scratch_floats = conv_scratch(p, s->conv, s->h, s->w, 1);
        break;
    }
    b->scratch = carve(&c, b->scratch_floats);
    return c.used;
}

/* ---------------- the arena ---------------- */

/* A banded resnet adds conv2 to its input in place unless a shortcut maps it;
 * a banded downsample puts output channel c over input channel c. */
static bool can_band(const step *s)
{
    if (s->kind == STEP_RESNET)
        return s->resnet->has_shortcut || s->in_ch == s->out_ch;
    return s->kind == STEP_DOWNSAMPLE && s->out_ch <= s->in_ch;
}

static size_t step_need(const plan *p, const step *s, bool banded)
{
    step_bufs b;
    return step_layout(p, s, banded, NULL, &b);
}

bool plan_bands_step(const plan *p, const step *s)
{
    switch (p->mode) {
    case PLAN_BAND_ALL:
        return can_band(s);
    case PLAN_BAND_AS_NEEDED:
        return can_band(s) && step_need(p, s, false) > p->floats;
    default:
        return false;
    }
}

/* the floats step s takes in mode p->mode, before the arena is known */
static size_t step_least(const plan *p, const step *s)
{
    const size_t whole = step_need(p, s, false);
    if (p->mode == PLAN_WHOLE || !can_band(s))
        return whole;
    const size_t banded = step_need(p, s, true);
    return p->mode == PLAN_BAND_ALL || banded < whole ? banded : whole;
}

static size_t largest_activation(const ld_model *m, int h, int w)
{
    step_iter it;
    step s;
    size_t largest = 0;
    steps_begin(&it, m, h, w);
    while (steps_next(&it, &s))
        largest = max_size(largest, max_size(step_in_floats(&s), step_out_floats(&s)));
    return largest;
}

void plan_make(plan *p, const ld_model *m, int h, int w, int chunk, int threads,
               plan_mode mode)
{
    memset(p, 0, sizeof *p);
    p->m = m;
    p->h = h;
    p->w = w;
    p->chunk = chunk;
    p->threads = threads;
    p->mode = mode;
    p->band_floats = largest_activation(m, h, w) / BAND_FRACTION;
    step_iter it;
    step s;
    steps_begin(&it, m, h, w);
    while (steps_next(&it, &s))
        p->floats = max_size(p->floats, step_least(p, &s));
}

plan_mode plan_auto_mode(const ld_model *m, int h, int w, int threads)
{
    plan one;
    plan_make(&one, m, h, w, 1, threads, PLAN_WHOLE);
    return one.floats > LD_BANDING_AUTO_BYTES / sizeof(float) ? PLAN_BAND_AS_NEEDED : PLAN_WHOLE;
}

size_t ld_encode_workspace_bytes(const ld_model *m, int chunk, int h, int w, int threads)
{
    if (threads <= 0)
        threads = ld_cores();
    plan p;
    plan_make(&p, m, h, w, chunk, threads, plan_auto_mode(m, h, w, threads));
    return p.floats * sizeof(float);
}
