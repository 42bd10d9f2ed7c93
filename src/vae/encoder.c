/* The encoder graph: conv_in → down blocks → mid block → norm/SiLU → conv_out
 * → quant_conv, over one chunk of images at a time, step by step in one
 * arena planned up front (plan.c); the steps that do not fit beside their
 * hidden activations run in bands of rows (banded.c). */
#include "encoder_plan.h"

#include <assert.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---------------- the pass ---------------- */

void pass_time(const pass *ps, stat_kind kind, double t0)
{
    if (!ps->stats)
        return;
    const double spent = ld_now_seconds() - t0;
    switch (kind) {
    case STAT_CONV:
        ps->stats->conv += spent;
        break;
    case STAT_NORM:
        ps->stats->norm += spent;
        break;
    case STAT_ATTENTION:
        ps->stats->attention += spent;
        break;
    case STAT_OTHER:
        ps->stats->other += spent;
        break;
    }
}

/* LD_ECANCELLED once the caller has asked to stop */
static int pass_cancelled(const pass *ps)
{
    if (ps->cancel && atomic_load_explicit(ps->cancel, memory_order_relaxed))
        return LD_ECANCELLED;
    return LD_OK;
}

int pass_layer_done(const pass *ps)
{
    if (ps->heartbeat)
        atomic_fetch_add_explicit(ps->heartbeat, 1, memory_order_relaxed);
    return pass_cancelled(ps);
}

int pass_image(const pass *ps, const step *s, int k)
{
    return step_out_floats(s) > step_in_floats(s) ? ps->n - 1 - k : k;
}

void pass_conv(const pass *ps, const ld_conv_geom *g, const ld_conv *conv, const float *in,
               const ld_input_map *map, float *out, int accumulate, const step_bufs *b)
{
    const double t0 = ld_now_seconds();
    /* the plan sized the scratch for the step's largest geometry */
    assert(ld_conv2d_scratch_floats(g, CONV_SCRATCH_BUDGET, ld_pool_threads(ps->pool)) <=
           b->scratch_floats);
    ld_conv2d_ex(ps->pool, g, in, map, conv->weight, conv->bias, out, accumulate, b->scratch,
                 b->scratch_floats);
    pass_time(ps, STAT_CONV, t0);
}

/* the same over a whole h×w image */
static void conv_whole(const pass *ps, const ld_conv *conv, int h, int w, int stride,
                       const float *in, const ld_input_map *map, float *out, int accumulate,
                       const step_bufs *b)
{
    const ld_conv_geom g = conv_geom(conv, h, w, stride);
    pass_conv(ps, &g, conv, in, map, out, accumulate, b);
}

ld_input_map pass_norm_map(const pass *ps, const ld_norm *norm, const float *x, size_t plane,
                           float *scale, float *shift)
{
    const double t0 = ld_now_seconds();
    ld_group_norm_coeffs(ps->pool, x, norm->channels, plane, ps->m->cfg.norm_num_groups,
                         norm->gamma, norm->beta, LD_GN_EPS, scale, shift);
    pass_time(ps, STAT_NORM, t0);
    return (ld_input_map){scale, shift, 1};
}

static void move_output(const pass *ps, float *dst, const float *src, size_t floats)
{
    const double t0 = ld_now_seconds();
    memmove(dst, src, floats * sizeof(float));
    pass_time(ps, STAT_OTHER, t0);
}

/* ---------------- the steps over whole images ---------------- */

/* conv_in reads the caller's images; centring (x·2 - 1) is its input map,
 * which keeps the zero padding zero as torch pads the centred tensor */
static int run_conv_in(const pass *ps, const step *s, const step_bufs *b, const float *images,
                       bool center)
{
    for (int c = 0; c < s->in_ch; c++) {
        b->scale1[c] = 2.0f;
        b->shift1[c] = -1.0f;
    }
    const ld_input_map centring = {b->scale1, b->shift1, 0};
    for (int i = 0; i < ps->n; i++) {
        conv_whole(ps, s->conv, s->h, s->w, 1, images + (size_t)i * step_in_floats(s),
                   center ? &centring : NULL, b->x + (size_t)i * step_out_floats(s), 0, b);
        int rc = pass_layer_done(ps);
        if (rc != LD_OK)
            return rc;
    }
    return LD_OK;
}

/* x ← shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))) for image i,
 * the norms fused into the convolutions as input maps */
static int resnet_image(const pass *ps, const step *s, const step_bufs *b, int i)
{
    const ld_resnet *r = s->resnet;
    const size_t plane = (size_t)s->h * s->w;
    float *x = b->x + (size_t)i * step_in_floats(s);
    const ld_input_map map1 = pass_norm_map(ps, &r->norm1, x, plane, b->scale1, b->shift1);
    conv_whole(ps, &r->conv1, s->h, s->w, 1, x, &map1, b->hidden, 0, b);
    int rc = pass_layer_done(ps);
    float *sum = x; /* the residual, conv2 is added to it in place */
    if (rc == LD_OK && r->has_shortcut) {
        sum = b->out;
        conv_whole(ps, &r->shortcut, s->h, s->w, 1, x, NULL, sum, 0, b);
        rc = pass_layer_done(ps);
    }
    if (rc != LD_OK)
        return rc;
    const ld_input_map map2 =
        pass_norm_map(ps, &r->norm2, b->hidden, plane, b->scale2, b->shift2);
    conv_whole(ps, &r->conv2, s->h, s->w, 1, b->hidden, &map2, sum, 1, b);
    if (sum != x)
        move_output(ps, b->x + (size_t)i * step_out_floats(s), sum, step_out_floats(s));
    return pass_layer_done(ps);
}

/* x ← x + attention(group_norm(x)) for image i */
static int attention_image(const pass *ps, const step *s, const step_bufs *b, int i)
{
    const ld_attn *at = s->attn;
    const size_t tokens = (size_t)s->h * s->w;
    const ld_attn_weights w = {at->q.weight, at->q.bias, at->k.weight, at->k.bias,
                               at->v.weight, at->v.bias, at->out.weight, at->out.bias};
    float *x = b->x + (size_t)i * step_in_floats(s);
    double t0 = ld_now_seconds();
    ld_group_norm(ps->pool, x, b->attn_in, at->norm.channels, tokens, ps->m->cfg.norm_num_groups,
                  at->norm.gamma, at->norm.beta, LD_GN_EPS, 0);
    pass_time(ps, STAT_NORM, t0);
    t0 = ld_now_seconds();
    /* the heartbeat moves once per block of queries (once for a small image,
     * as for any layer), so a watchdog sees minutes of attention advance; a
     * cancel stops it between blocks */
    const int rc = ld_attention(ps->pool, b->attn_in, s->in_ch, tokens, &w, b->out, b->scratch,
                                ps->heartbeat, ps->cancel);
    if (rc == LD_OK)
        ld_add_inplace(x, b->out, (size_t)s->in_ch * tokens);
    pass_time(ps, STAT_ATTENTION, t0);
    return rc != LD_OK ? rc : pass_cancelled(ps);
}

/* A convolution that changes the activation's shape (downsample, conv_out,
 * quant_conv) for image i: into b->out, then into place */
static int conv_image(const pass *ps, const step *s, const step_bufs *b, int i)
{
    const float *x = b->x + (size_t)i * step_in_floats(s);
    ld_input_map map;
    if (s->norm)
        map = pass_norm_map(ps, s->norm, x, (size_t)s->h * s->w, b->scale1, b->shift1);
    conv_whole(ps, s->conv, s->h, s->w, s->kind == STEP_DOWNSAMPLE ? 2 : 1, x,
               s->norm ? &map : NULL, b->out, 0, b);
    move_output(ps, b->x + (size_t)i * step_out_floats(s), b->out, step_out_floats(s));
    return pass_layer_done(ps);
}

/* One step over the chunk's images, whole or in bands as the plan says. */
static int run_step(const pass *ps, const step *s, const float *images, bool center)
{
    const bool banded = plan_bands_step(ps->plan, s);
    step_bufs b;
    const size_t used = step_layout(ps->plan, s, banded, ps->arena, &b);
    assert(used <= ps->plan->floats);
    (void)used;
    if (s->kind == STEP_CONV_IN)
        return run_conv_in(ps, s, &b, images, center);
    if (banded && ps->stats)
        ps->stats->banded_layers += ps->n;
    if (banded && s->kind == STEP_RESNET)
        return banded_resnet(ps, s, &b);
    if (banded)
        return banded_downsample(ps, s, &b);
    int rc = LD_OK;
    for (int k = 0; k < ps->n && rc == LD_OK; k++) {
        const int i = pass_image(ps, s, k);
        if (s->kind == STEP_RESNET)
            rc = resnet_image(ps, s, &b, i);
        else if (s->kind == STEP_ATTENTION)
            rc = attention_image(ps, s, &b, i);
        else
            rc = conv_image(ps, s, &b, i);
    }
    return rc;
}

/* Runs the graph; the moments end up packed at the start of the arena,
 * [n, 2·latent, lh, lw].  Stops at the first step that fails (only a
 * cancellation can). */
static int encoder_forward(const pass *ps, const float *images, bool center)
{
    step_iter it;
    step s;
    steps_begin(&it, ps->m, ps->plan->h, ps->plan->w);
    int rc = LD_OK;
    while (rc == LD_OK && steps_next(&it, &s))
        rc = run_step(ps, &s, images, center);
    return rc;
}

/* ---------------- chunking ---------------- */

typedef struct {
    float *arena; /* the pool's (ld_pool_arena): kept there for the next call */
    plan plan;
} workspace;

static bool workspace_alloc(workspace *ws, ld_pool *pool, size_t max_memory)
{
    if (max_memory && ws->plan.floats > max_memory / sizeof(float))
        return false;
    ws->arena = ld_pool_arena(pool, ws->plan.floats);
    return ws->arena != NULL;
}

/* The plan modes to try, in order, for the caller's banding option; the
 * last one is the least (see least_plan). */
static int modes_to_try(const ld_model *m, int h, int w, int threads, ld_banding banding,
                        plan_mode modes[2])
{
    switch (banding) {
    case LD_BANDING_ON:
        modes[0] = PLAN_BAND_ALL;
        return 1;
    case LD_BANDING_OFF:
        modes[0] = PLAN_WHOLE;
        return 1;
    default:
        modes[0] = plan_auto_mode(m, h, w, threads);
        modes[1] = PLAN_BAND_AS_NEEDED; /* when memory requires it */
        return modes[0] == PLAN_WHOLE ? 2 : 1;
    }
}

/* The least plan ld_encode can settle on for an h×w image: one image in the
 * last mode it tries.  workspace_acquire refuses by it and
 * ld_encode_least_workspace_bytes reports it, so the two cannot disagree. */
static void least_plan(plan *p, const ld_model *m, int h, int w, int threads,
                       ld_banding banding)
{
    plan_mode modes[2];
    const int n_modes = modes_to_try(m, h, w, threads, banding, modes);
    plan_make(p, m, h, w, 1, threads, modes[n_modes - 1]);
}

/* The first plan that can be had: the largest chunk <= want, halving on
 * failure, in each mode in turn.  An image whose least plan is over
 * max_memory is LD_ETOOLARGE at once: no retry could fit it.  Past that, a
 * plan fails only for want of memory now (LD_ENOMEM), as the last plan
 * tried is the least. */
static int workspace_acquire(workspace *ws, const ld_model *m, int h, int w, ld_pool *pool,
                             int want, const ld_encode_opts *opts, char *err)
{
    const int threads = ld_pool_threads(pool);
    plan least;
    least_plan(&least, m, h, w, threads, opts->banding);
    const size_t need = least.floats * sizeof(float);
    if (opts->max_memory && need > opts->max_memory)
        return ld_fail(err, LD_ETOOLARGE, "encoding one %dx%d image needs %zu MiB of working "
                       "memory, over the %zu MiB limit", w, h, need >> 20,
                       opts->max_memory >> 20);
    plan_mode modes[2];
    const int n_modes = modes_to_try(m, h, w, threads, opts->banding, modes);
    /* a block the pool kept that is over the limit now is given back */
    if (opts->max_memory && ld_pool_arena_floats(pool) > opts->max_memory / sizeof(float))
        ld_pool_arena_release(pool);
    for (int k = 0; k < n_modes; k++) {
        for (int chunk = want; chunk >= 1; chunk /= 2) {
            plan_make(&ws->plan, m, h, w, chunk, threads, modes[k]);
            if (workspace_alloc(ws, pool, opts->max_memory))
                return LD_OK;
        }
    }
    return ld_fail(err, LD_ENOMEM, "out of memory: encoding one image needs %zu MiB",
                   need >> 20);
}

size_t ld_encode_least_workspace_bytes(const ld_model *m, int h, int w, int threads,
                                       ld_banding banding)
{
    if (threads <= 0)
        threads = ld_cores();
    plan p;
    least_plan(&p, m, h, w, threads, banding);
    return p.floats * sizeof(float);
}

void ld_encoder_init(void)
{
    ld_nn_init();
}

void ld_encode_opts_init(ld_encode_opts *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->center_input = true;
    opts->deterministic = true;
}

static int check_args(const ld_model *m, int n, int h, int w, const ld_encode_opts *opts,
                      int *lh, int *lw, char *err)
{
    if (n <= 0)
        return ld_fail(err, LD_EINVAL, "no images to encode");
    if (!opts->deterministic && !opts->seeds)
        return ld_fail(err, LD_EINVAL, "sampling needs one seed per image");
    int rc = ld_model_latent_size(m, h, w, lh, lw, err);
    if (rc != LD_OK)
        return rc;
    if ((size_t)h * (size_t)w > ((size_t)1 << 28))
        return ld_fail(err, LD_ETOOLARGE, "a %dx%d image is too large", w, h);
    return LD_OK;
}

static bool cancelled(const ld_encode_opts *opts)
{
    return opts->cancel && atomic_load_explicit(opts->cancel, memory_order_relaxed);
}

/* The chunks, one after another, into out. */
static int encode_chunks(const ld_model *m, const float *images, int n, int h, int w, int lh,
                         int lw, ld_pool *pool, const workspace *ws, const ld_encode_opts *opts,
                         ld_encode_out *out, char *err)
{
    const ld_posterior_ctx post = {&m->cfg, lh, lw, opts->deterministic};
    const size_t image_floats = (size_t)3 * h * w;
    const int chunk = ws->plan.chunk;
    for (int done = 0; done < n; done += chunk) {
        const pass ps = {m,          pool,          n - done < chunk ? n - done : chunk,
                         &ws->plan,  ws->arena,     opts->stats,
                         opts->cancel, opts->heartbeat};
        if (encoder_forward(&ps, images + (size_t)done * image_floats, opts->center_input) !=
            LD_OK)
            return ld_fail(err, LD_ECANCELLED, "encoding cancelled after %d of %d images",
                           done, n);
        ld_posterior(&post, ws->arena, ps.n, opts->seeds ? opts->seeds + done : NULL, out,
                     (size_t)done);
        if (opts->progress && opts->progress(opts->progress_ctx, done + ps.n, n) != 0)
            return ld_fail(err, LD_ECANCELLED, "encoding cancelled after %d of %d images",
                           done + ps.n, n);
    }
    return LD_OK;
}

int ld_encode(const ld_model *m, const float *images, int n, int h, int w,
              const ld_encode_opts *opts, ld_encode_out *out, char *err)
{
    ld_encode_opts defaults;
    if (!opts) {
        ld_encode_opts_init(&defaults);
        opts = &defaults;
    }
    int lh, lw;
    int rc = check_args(m, n, h, w, opts, &lh, &lw, err);
    if (rc != LD_OK)
        return rc;
    if (cancelled(opts))
        return ld_fail(err, LD_ECANCELLED, "encoding cancelled before it started");
    /* the pool first: its threads and BLAS buffers come before the workspace,
     * which then takes what is left */
    ld_pool *own_pool = NULL;
    if (!opts->pool && (rc = ld_pool_new(opts->threads, &own_pool, err)) != LD_OK)
        return rc;
    if (own_pool && (rc = ld_pool_set_kernel(own_pool, opts->kernel, err)) != LD_OK) {
        ld_pool_free(own_pool);
        return rc;
    }
    ld_pool *pool = opts->pool ? opts->pool : own_pool;
    workspace ws = {0};
    const int want = opts->vae_split > 0 && opts->vae_split < n ? opts->vae_split : n;
    rc = workspace_acquire(&ws, m, h, w, pool, want, opts, err);
    if (rc == LD_OK) {
        out->chunk_used = ws.plan.chunk;
        rc = encode_chunks(m, images, n, h, w, lh, lw, pool, &ws, opts, out, err);
    }
    ld_pool_free(own_pool); /* and its arena; a caller's pool keeps it */
    return rc;
}
