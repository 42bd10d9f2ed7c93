/* The encoder graph: conv_in → down blocks → mid block → norm/SiLU → conv_out
 * → quant_conv, over one chunk of images at a time, in three ping-pong
 * activation buffers planned up front. */
#include "vae_internal.h"
#include "latentd/nn.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Column buffer budget for one convolution band (floats): 16 MiB. */
#define CONV_SCRATCH_BUDGET ((size_t)4 << 20)

typedef struct {
    size_t act;          /* floats of the largest activation of one image (buffers a, c) */
    size_t act_b;        /* floats of buffer b: shortcut outputs and the mid block */
    size_t max_channels; /* for the norm coefficients */
    size_t conv_scratch; /* floats */
    size_t attn_scratch; /* floats */
} ws_plan;

/* A chunk's activations: per-image slices of one buffer. */
typedef struct {
    float *p;
    size_t stride; /* floats per image */
} fbuf;

typedef struct {
    const ld_model *m;
    ld_pool *pool;
    int n;               /* images in this pass */
    fbuf a, b, c;        /* a holds the running activation */
    int ch, h, w;        /* a's shape per image */
    float *scale, *shift; /* GroupNorm folded into per-channel coefficients */
    float *conv_scratch;
    size_t conv_scratch_floats;
    float *attn_scratch;
    ld_encode_stats *stats;
    const _Atomic bool *cancel;  /* may be NULL */
    _Atomic uint64_t *heartbeat; /* may be NULL */
} fwd;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void stat_add(fwd *f, double *slot, double since)
{
    if (f->stats)
        *slot += now_seconds() - since;
}

static ld_conv_geom geom_for(const ld_conv *conv, int h, int w, int stride)
{
    /* stride 2 is diffusers' downsample: pad (0,1,0,1), then no padding */
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

/* ---------------- planning ---------------- */

static void grow(size_t *slot, size_t value)
{
    if (value > *slot)
        *slot = value;
}

static void plan_conv(ws_plan *p, const ld_conv *conv, int h, int w, int stride, int threads)
{
    ld_conv_geom g = geom_for(conv, h, w, stride);
    grow(&p->conv_scratch, ld_conv2d_scratch_floats(&g, CONV_SCRATCH_BUDGET, threads));
    grow(&p->act, (size_t)g.in_ch * h * w);
    grow(&p->act, (size_t)g.out_ch * g.out_h * g.out_w);
    grow(&p->max_channels, (size_t)g.in_ch);
}

static void plan_resnet(ws_plan *p, const ld_resnet *r, int h, int w, int threads)
{
    plan_conv(p, &r->conv1, h, w, 1, threads);
    plan_conv(p, &r->conv2, h, w, 1, threads);
    if (r->has_shortcut) {
        plan_conv(p, &r->shortcut, h, w, 1, threads);
        grow(&p->act_b, (size_t)r->shortcut.out_ch * h * w);
    }
}

/* Every buffer a pass takes, for an h×w image on `threads` threads. */
static void plan_workspace(const ld_model *m, int h, int w, int threads, ws_plan *p)
{
    const ld_vae_config *cfg = &m->cfg;
    memset(p, 0, sizeof *p);
    p->act = (size_t)cfg->in_channels * h * w;
    plan_conv(p, &m->conv_in, h, w, 1, threads);
    for (int i = 0; i < cfg->n_levels; i++) {
        for (int j = 0; j < cfg->layers_per_block; j++)
            plan_resnet(p, &m->down[i].resnets[j], h, w, threads);
        if (m->down[i].has_downsample) {
            plan_conv(p, &m->down[i].downsample, h, w, 2, threads);
            h /= 2;
            w /= 2;
        }
    }
    plan_resnet(p, &m->mid_resnet1, h, w, threads);
    plan_resnet(p, &m->mid_resnet2, h, w, threads);
    if (cfg->mid_attention) {
        const int c = m->mid_attn.q.in_ch;
        p->attn_scratch = ld_attention_scratch_floats(c, (size_t)h * w, threads);
        grow(&p->act_b, (size_t)c * h * w); /* the normalised input */
    }
    plan_conv(p, &m->conv_out, h, w, 1, threads);
    if (cfg->use_quant_conv)
        plan_conv(p, &m->quant_conv, h, w, 1, threads);
}

static size_t plan_floats(const ws_plan *p, int chunk)
{
    return (size_t)chunk * (2 * p->act + p->act_b) + 2 * p->max_channels + p->conv_scratch +
           p->attn_scratch;
}

size_t ld_encode_workspace_bytes(const ld_model *m, int chunk, int h, int w, int threads)
{
    ws_plan p;
    plan_workspace(m, h, w, threads > 0 ? threads : ld_cores(), &p);
    return plan_floats(&p, chunk) * sizeof(float);
}

/* ---------------- layers over the whole chunk ---------------- */

static void swap(fbuf *x, fbuf *y)
{
    fbuf t = *x;
    *x = *y;
    *y = t;
}

static float *slice(fbuf b, int i)
{
    return b.p + (size_t)i * b.stride;
}

/* One layer done for one image: a heartbeat, and LD_ECANCELLED once the
 * caller has asked to stop. */
static int layer_done(fwd *f)
{
    if (f->heartbeat)
        atomic_fetch_add_explicit(f->heartbeat, 1, memory_order_relaxed);
    if (f->cancel && atomic_load_explicit(f->cancel, memory_order_relaxed))
        return LD_ECANCELLED;
    return LD_OK;
}

/* dst = conv(src), or dst += conv(src) when accumulating; with `norm`, the
 * input passes through that GroupNorm and SiLU as it is read. */
static int conv_all(fwd *f, const ld_conv *conv, fbuf src, fbuf dst, int stride,
                    const ld_norm *norm, int accumulate)
{
    ld_conv_geom g = geom_for(conv, f->h, f->w, stride);
    const ld_input_map map = {f->scale, f->shift, 1};
    for (int i = 0; i < f->n; i++) {
        double t0 = now_seconds();
        if (norm)
            ld_group_norm_coeffs(f->pool, slice(src, i), norm->channels, (size_t)f->h * f->w,
                                 f->m->cfg.norm_num_groups, norm->gamma, norm->beta, LD_GN_EPS,
                                 f->scale, f->shift);
        double t1 = now_seconds();
        ld_conv2d_ex(f->pool, &g, slice(src, i), norm ? &map : NULL, conv->weight, conv->bias,
                     slice(dst, i), accumulate, f->conv_scratch, f->conv_scratch_floats);
        if (f->stats) {
            f->stats->norm += t1 - t0;
            f->stats->conv += now_seconds() - t1;
        }
        int rc = layer_done(f);
        if (rc != LD_OK)
            return rc;
    }
    return LD_OK;
}

static void copy_all(fwd *f, fbuf src, fbuf dst, size_t count)
{
    double t0 = now_seconds();
    for (int i = 0; i < f->n; i++)
        memcpy(slice(dst, i), slice(src, i), count * sizeof(float));
    stat_add(f, f->stats ? &f->stats->other : NULL, t0);
}

/* a ← shortcut(a) + conv2(silu(norm2(conv1(silu(norm1(a)))))), the norms
 * fused into the convolutions and the residual added in place */
static int resnet_forward(fwd *f, const ld_resnet *r)
{
    int rc = conv_all(f, &r->conv1, f->a, f->c, 1, &r->norm1, 0);
    if (rc == LD_OK && r->has_shortcut) {
        rc = conv_all(f, &r->shortcut, f->a, f->b, 1, NULL, 0);
        if (rc == LD_OK)
            rc = conv_all(f, &r->conv2, f->c, f->b, 1, &r->norm2, 1);
        if (rc == LD_OK)
            copy_all(f, f->b, f->a, (size_t)r->conv2.out_ch * f->h * f->w);
    } else if (rc == LD_OK) {
        rc = conv_all(f, &r->conv2, f->c, f->a, 1, &r->norm2, 1);
    }
    f->ch = r->conv2.out_ch;
    return rc;
}

/* a ← a + attention(group_norm(a)) */
static int attention_forward(fwd *f, const ld_attn *at)
{
    const size_t tokens = (size_t)f->h * f->w;
    const ld_attn_weights w = {at->q.weight, at->q.bias, at->k.weight, at->k.bias,
                               at->v.weight, at->v.bias, at->out.weight, at->out.bias};
    for (int i = 0; i < f->n; i++) {
        double t0 = now_seconds();
        ld_group_norm(f->pool, slice(f->a, i), slice(f->b, i), at->norm.channels, tokens,
                      f->m->cfg.norm_num_groups, at->norm.gamma, at->norm.beta, LD_GN_EPS, 0);
        stat_add(f, f->stats ? &f->stats->norm : NULL, t0);
        t0 = now_seconds();
        ld_attention(f->pool, slice(f->b, i), f->ch, tokens, &w, slice(f->c, i),
                     f->attn_scratch);
        ld_add_inplace(slice(f->a, i), slice(f->c, i), (size_t)f->ch * tokens);
        stat_add(f, f->stats ? &f->stats->attention : NULL, t0);
        int rc = layer_done(f);
        if (rc != LD_OK)
            return rc;
    }
    return LD_OK;
}

static int conv_step(fwd *f, const ld_conv *conv, int stride, const ld_norm *norm)
{
    int rc = conv_all(f, conv, f->a, f->c, stride, norm, 0);
    swap(&f->a, &f->c);
    f->ch = conv->out_ch;
    if (stride == 2) {
        f->h /= 2;
        f->w /= 2;
    }
    return rc;
}

static void center_input(fwd *f, const float *images, bool center)
{
    double t0 = now_seconds();
    size_t count = (size_t)3 * f->h * f->w;
    for (int i = 0; i < f->n; i++) {
        const float *src = images + i * count;
        float *dst = slice(f->a, i);
        for (size_t k = 0; k < count; k++)
            dst[k] = center ? src[k] * 2.0f - 1.0f : src[k];
    }
    f->ch = 3;
    stat_add(f, f->stats ? &f->stats->other : NULL, t0);
}

/* Runs the graph; the moments end up in f->a, [n, 2·latent, lh, lw] with
 * per-image stride f->a.stride.  Stops at the first layer that fails (only
 * a cancellation can). */
static int encoder_forward(fwd *f, const float *images, bool center)
{
    const ld_model *m = f->m;
    center_input(f, images, center);
    int rc = conv_step(f, &m->conv_in, 1, NULL);
    for (int i = 0; i < m->cfg.n_levels && rc == LD_OK; i++) {
        for (int j = 0; j < m->cfg.layers_per_block && rc == LD_OK; j++)
            rc = resnet_forward(f, &m->down[i].resnets[j]);
        if (rc == LD_OK && m->down[i].has_downsample)
            rc = conv_step(f, &m->down[i].downsample, 2, NULL);
    }
    if (rc == LD_OK)
        rc = resnet_forward(f, &m->mid_resnet1);
    if (rc == LD_OK && m->cfg.mid_attention)
        rc = attention_forward(f, &m->mid_attn);
    if (rc == LD_OK)
        rc = resnet_forward(f, &m->mid_resnet2);
    if (rc == LD_OK)
        rc = conv_step(f, &m->conv_out, 1, &m->norm_out);
    if (rc == LD_OK && m->cfg.use_quant_conv)
        rc = conv_step(f, &m->quant_conv, 1, NULL);
    return rc;
}

/* ---------------- chunking ---------------- */

typedef struct {
    float *block;
    ws_plan plan;
    int chunk;
} workspace;

static bool workspace_alloc(workspace *ws, int chunk, size_t max_memory)
{
    size_t floats = plan_floats(&ws->plan, chunk);
    if (max_memory && floats > max_memory / sizeof(float))
        return false;
    ws->block = ld_alloc_aligned(floats, sizeof(float));
    ws->chunk = chunk;
    return ws->block != NULL;
}

/* The largest chunk ≤ want whose workspace can be had, halving on failure. */
static int workspace_acquire(workspace *ws, int want, size_t max_memory, char *err)
{
    for (int chunk = want; chunk >= 1; chunk /= 2)
        if (workspace_alloc(ws, chunk, max_memory))
            return LD_OK;
    size_t need = plan_floats(&ws->plan, 1) * sizeof(float);
    if (max_memory && need > max_memory)
        return ld_fail(err, LD_ENOMEM, "encoding one image needs %zu MiB of working memory, "
                       "over the %zu MiB limit", need >> 20, max_memory >> 20);
    return ld_fail(err, LD_ENOMEM, "out of memory: encoding one image needs %zu MiB",
                   need >> 20);
}

static void fwd_init(fwd *f, const ld_model *m, const workspace *ws, int n, int h, int w,
                     ld_pool *pool, const ld_encode_opts *opts)
{
    const ws_plan *p = &ws->plan;
    const size_t chunk = (size_t)ws->chunk;
    memset(f, 0, sizeof *f);
    f->m = m;
    f->pool = pool;
    f->n = n;
    f->a = (fbuf){ws->block, p->act};
    f->c = (fbuf){f->a.p + chunk * p->act, p->act};
    f->b = (fbuf){f->c.p + chunk * p->act, p->act_b};
    f->scale = f->b.p + chunk * p->act_b;
    f->shift = f->scale + p->max_channels;
    f->conv_scratch = f->shift + p->max_channels;
    f->conv_scratch_floats = p->conv_scratch;
    f->attn_scratch = f->conv_scratch + p->conv_scratch;
    f->h = h;
    f->w = w;
    f->stats = opts->stats;
    f->cancel = opts->cancel;
    f->heartbeat = opts->heartbeat;
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
    const size_t mom = (size_t)2 * m->cfg.latent_channels * lh * lw;
    for (int done = 0; done < n; done += ws->chunk) {
        const int count = n - done < ws->chunk ? n - done : ws->chunk;
        fwd f;
        fwd_init(&f, m, ws, count, h, w, pool, opts);
        if (encoder_forward(&f, images + (size_t)done * image_floats, opts->center_input) !=
            LD_OK)
            return ld_fail(err, LD_ECANCELLED, "encoding cancelled after %d of %d images",
                           done, n);
        /* the moments are in f.a with per-image stride f.a.stride: compact them */
        for (int i = 1; i < count; i++)
            memmove(f.a.p + i * mom, slice(f.a, i), mom * sizeof(float));
        ld_posterior(&post, f.a.p, count, opts->seeds ? opts->seeds + done : NULL, out,
                     (size_t)done);
        if (opts->progress && opts->progress(opts->progress_ctx, done + count, n) != 0)
            return ld_fail(err, LD_ECANCELLED, "encoding cancelled after %d of %d images",
                           done + count, n);
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
    plan_workspace(m, h, w, ld_pool_threads(pool), &ws.plan);
    int want = opts->vae_split > 0 && opts->vae_split < n ? opts->vae_split : n;
    rc = workspace_acquire(&ws, want, opts->max_memory, err);
    if (rc == LD_OK) {
        out->chunk_used = ws.chunk;
        rc = encode_chunks(m, images, n, h, w, lh, lw, pool, &ws, opts, out, err);
    }
    ld_free_aligned(ws.block);
    ld_pool_free(own_pool);
    return rc;
}
