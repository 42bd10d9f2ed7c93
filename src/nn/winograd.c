/* 3x3 stride-1 "same" convolution by Winograd F(4x4, 3x3) (Lavin & Gray,
 * "Fast Algorithms for Convolutional Neural Networks", 2015): each 4x4 output
 * tile costs 36 multiplications per channel pair instead of 144.
 *
 *   U = G g Gᵀ        (weights, 6x6 per output/input channel pair)
 *   V = Bᵀ d B        (6x6 input tiles overlapping by 2)
 *   M_p = U_p · V_p   (36 sgemms, one per tile position p: [Co,Ci]·[Ci,tiles])
 *   Y = Aᵀ M A        (4x4 output tiles)
 *
 * Interpolation points 0, ±1, ±2, ∞:
 *   Bᵀ = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
 *         0 4 0 -5 0 1]
 *   G  = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
 *   Aᵀ = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
 * The transforms work on a whole row of tiles at a time, so each of the 36
 * positions is read and written as one contiguous run; the input and product
 * matrices are built one band of tile rows at a time so the scratch stays
 * bounded whatever the image size.
 *
 * V is written straight in the pool's matrix kernel's panel layout (see
 * gemm.h): per position, [tile panels][Ci][nr], the last panel padded with
 * zeros, so the 36 products read it without a packing pass.  For CBLAS the
 * panel is the whole band (nr = tiles), i.e. plain row-major [Ci][tiles]. */
#include "latentd/nn.h"
#include "gemm.h"
#include "winograd_weights.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define OUT_TILE 4
#define IN_TILE 6
#define POSITIONS (IN_TILE * IN_TILE)
#define CACHE_LINE 64


typedef struct {
    int tiles_w, tiles_h;
    int padded_w;        /* one padded input row: 4·tiles_w + 2 */
    size_t weights;      /* floats of U: 36·Co·Ci */
    size_t per_tile_row; /* floats of V and M for one row of tiles */
    size_t row_buffers;  /* floats of padded rows, 12 per thread */
    size_t panel_slack;  /* floats of V's zero padding: under one panel per position */
} wino_plan;

static wino_plan plan(const ld_conv_geom *g, int threads)
{
    wino_plan p;
    p.tiles_w = (g->out_w + OUT_TILE - 1) / OUT_TILE;
    p.tiles_h = (g->out_h + OUT_TILE - 1) / OUT_TILE;
    p.padded_w = OUT_TILE * p.tiles_w + 2;
    p.weights = (size_t)POSITIONS * g->out_ch * g->in_ch;
    p.per_tile_row = (size_t)POSITIONS * (size_t)(g->in_ch + g->out_ch) * (size_t)p.tiles_w;
    p.row_buffers = (size_t)threads * 2 * IN_TILE * (size_t)p.padded_w;
    p.panel_slack = (size_t)POSITIONS * g->in_ch * LD_GEMM_MAX_NR;
    return p;
}

int ld_winograd_applies(const ld_conv_geom *g)
{
    return g->kernel == 3 && g->stride == 1 && g->pad_top == 1 && g->pad_left == 1 &&
           g->out_h == g->in_h && g->out_w == g->in_w;
}

size_t ld_winograd_scratch_floats(const ld_conv_geom *g, size_t budget, int threads)
{
    const wino_plan p = plan(g, threads);
    size_t rows = budget / p.per_tile_row;
    if (rows < 1)
        rows = 1;
    if (rows > (size_t)p.tiles_h)
        rows = (size_t)p.tiles_h;
    return p.weights + p.row_buffers + p.panel_slack + rows * p.per_tile_row;
}

/* The cache lines of floats [first, first + n) on their way into the cache,
 * to be read or written.  The transforms read and write dozens of runs at
 * once, one stream per Winograd position or channel row, more than the
 * hardware's prefetchers follow, so without this each access waits on its
 * line's fill. */
static void prefetch_floats(const float *first, size_t n, int for_write)
{
    const char *at = (const char *)((uintptr_t)first & ~(uintptr_t)(CACHE_LINE - 1));
    const char *end = (const char *)(first + n);
    if (for_write)
        for (; at < end; at += CACHE_LINE)
            __builtin_prefetch(at, 1, 2);
    else
        for (; at < end; at += CACHE_LINE)
            __builtin_prefetch(at, 0, 2);
}

typedef struct {
    const ld_conv_geom *g;
    const float *w;
    float *u;
    ld_wino_weights_fn transform; /* the kernel's */
} weights_job;

/* U[p][co][ci] = (G g Gᵀ)[p] for output channels [first, last), a run of
 * input channels at a time (contiguous in U, so the kernel's transform
 * vectorises along them).  The next run's 36 destinations are asked for as
 * this one's are written (16 % faster at 512 channels, measured). */
static void transform_weights(void *ctx, int first, int last, int thread)
{
    (void)thread;
    const weights_job *j = ctx;
    const ld_conv_geom *g = j->g;
    const size_t pair_stride = (size_t)g->out_ch * g->in_ch;
    for (int co = first; co < last; co++) {
        for (int ci0 = 0; ci0 < g->in_ch; ci0 += LD_WINO_WEIGHTS_RUN) {
            const int count = g->in_ch - ci0 < LD_WINO_WEIGHTS_RUN ? g->in_ch - ci0
                                                                    : LD_WINO_WEIGHTS_RUN;
            float *u[POSITIONS];
            for (int pos = 0; pos < POSITIONS; pos++)
                u[pos] = j->u + pos * pair_stride + (size_t)co * g->in_ch + ci0;
            j->transform(j->w + ((size_t)co * g->in_ch + ci0) * 9, count, u);
            /* what follows in U is this thread's next run (this output
             * channel's, or the next one's first): a run's worth of it */
            const size_t left = (size_t)(last - co) * g->in_ch - (size_t)(ci0 + count);
            const int next = left < LD_WINO_WEIGHTS_RUN ? (int)left : LD_WINO_WEIGHTS_RUN;
            for (int pos = 0; pos < POSITIONS && next > 0; pos++)
                prefetch_floats(u[pos] + count, (size_t)next, 1);
        }
    }
}

/* One input row of channel c, zero-padded: padded[x + 1] = row[x] (through
 * the input map, if any), zeros around, so tile tx's columns start at
 * padded[4·tx]. */
void ld_conv_pad_row(const float *plane, int h, int w, int y, int padded_w,
                     const ld_input_map *map, ld_map_fn map_row, int c, float *padded)
{
    if (y < 0 || y >= h) {
        memset(padded, 0, (size_t)padded_w * sizeof(float));
        return;
    }
    padded[0] = 0.0f;
    const float *row = plane + (size_t)y * w;
    if (!map)
        memcpy(padded + 1, row, (size_t)w * sizeof(float));
    else
        map_row(row, padded + 1, w, map->scale[c], map->shift[c], map->silu);
    memset(padded + 1 + w, 0, (size_t)(padded_w - 1 - w) * sizeof(float));
}

/* Rows [y0, y1) of a channel's plane (clipped to its h rows) on their way
 * into the cache, a line at a time: the transforms ask for the next
 * channel's rows while they work on this one's.  Each channel's band is a
 * short run of rows a plane apart, too short for the hardware's prefetchers
 * to get ahead of: the input transform waited on its reads and the output
 * transform on its writes' line fills, 10 % of each (measured at 512²). */
static void prefetch_rows(const float *plane, int h, int w, int y0, int y1, int for_write)
{
    if (y0 < 0)
        y0 = 0;
    if (y1 > h)
        y1 = h;
    if (y1 > y0)
        prefetch_floats(plane + (size_t)y0 * w, (size_t)(y1 - y0) * w, for_write);
}

/* t[i] = (Bᵀ d)[i] over whole rows; the rows never overlap (restrict lets
 * the compiler vectorise) */
static void bt_rows_run(const float *restrict d0, const float *restrict d1,
                        const float *restrict d2, const float *restrict d3,
                        const float *restrict d4, const float *restrict d5, float *restrict t0,
                        float *restrict t1, float *restrict t2, float *restrict t3,
                        float *restrict t4, float *restrict t5, int n)
{
    for (int x = 0; x < n; x++) {
        t0[x] = 4 * d0[x] - 5 * d2[x] + d4[x];
        t1[x] = -4 * (d1[x] + d2[x]) + d3[x] + d4[x];
        t2[x] = 4 * (d1[x] - d2[x]) - d3[x] + d4[x];
        t3[x] = 2 * (d3[x] - d1[x]) - d2[x] + d4[x];
        t4[x] = 2 * (d1[x] - d3[x]) - d2[x] + d4[x];
        t5[x] = 4 * d1[x] - 5 * d3[x] + d5[x];
    }
}

void ld_wino_rows_generic(const float *const d[IN_TILE], float *const t[IN_TILE], int n)
{
    bt_rows_run(d[0], d[1], d[2], d[3], d[4], d[5], t[0], t[1], t[2], t[3], t[4], t[5], n);
}

/* o[j][tx] = (row · B)[j] for every tile of one transformed row (the
 * kernels' ld_wino_cols_fn; the vector ones are in gemm_x86.c) */
void ld_wino_cols_generic(const float *row, int tiles, float *const o[IN_TILE])
{
    for (int tx = 0; tx < tiles; tx++) {
        const float *c = row + OUT_TILE * tx;
        const float d0 = c[0], d1 = c[1], d2 = c[2], d3 = c[3], d4 = c[4], d5 = c[5];
        o[0][tx] = 4 * d0 - 5 * d2 + d4;
        o[1][tx] = -4 * (d1 + d2) + d3 + d4;
        o[2][tx] = 4 * (d1 - d2) - d3 + d4;
        o[3][tx] = 2 * (d3 - d1) - d2 + d4;
        o[4][tx] = 2 * (d1 - d3) - d2 + d4;
        o[5][tx] = 4 * d1 - 5 * d3 + d5;
    }
}

/* One band of tile rows [ty0, ty0+rows), shared by the input and output
 * transforms. */
typedef struct {
    const ld_conv_geom *g;
    const wino_plan *p;
    const float *in;        /* transform_input */
    const ld_input_map *map;
    ld_map_fn map_row;      /* the kernel's, for map */
    ld_wino_rows_fn wino_rows;
    ld_wino_cols_fn wino_cols;
    ld_wino_out_fn wino_out_row;
    float *v;
    const float *m;         /* transform_output */
    const float *bias;
    float *out;
    int accumulate;
    int ty0, rows;
    int panel_cols;         /* V's panel width: the kernel's nr, or every tile for CBLAS */
    size_t padded_tiles;    /* the band's tiles rounded up to whole panels */
    float *row_buffers;     /* 2·IN_TILE padded rows per thread */
} band_job;

/* One transformed row of tiles (tiles [t0, t0 + count) of the band) into V's
 * panels: dst[jj] is position (i, jj)'s start for this input channel, and
 * each run of tiles that stays inside one panel is one contiguous write.
 * With prefetch_next, the next channel's runs (nr floats on) are asked for
 * as each is written: a thread writes ~300 runs per channel (36 positions ×
 * the band's panels); the input transform ran 8 % faster at 128 channels
 * and 25 % at 512 with this (measured at 512² and 64²). */
static void bt_cols_to_panels(const band_job *j, const float *row, size_t t0, int count,
                              float *const dst[IN_TILE], int prefetch_next)
{
    const size_t nr = (size_t)j->panel_cols;
    const size_t panel_stride = (size_t)j->g->in_ch * nr;
    for (int tx = 0; tx < count;) {
        const size_t t = t0 + (size_t)tx;
        const size_t col = t % nr;
        const int run = (int)(nr - col) < count - tx ? (int)(nr - col) : count - tx;
        float *o[IN_TILE];
        for (int jj = 0; jj < IN_TILE; jj++)
            o[jj] = dst[jj] + (t / nr) * panel_stride + col;
        j->wino_cols(row + OUT_TILE * tx, run, o);
        for (int jj = 0; prefetch_next && jj < IN_TILE; jj++)
            prefetch_floats(o[jj] + nr, (size_t)run, 1);
        tx += run;
    }
}

/* Zeros in the last panel's columns past the band's tiles, for channel ci:
 * the products then run on whole panels. */
static void zero_panel_tail(const band_job *j, size_t tiles, size_t pos_stride, int ci)
{
    const size_t nr = (size_t)j->panel_cols;
    const size_t used = tiles % nr;
    if (used == 0)
        return;
    const size_t last_panel = (j->padded_tiles / nr - 1) * (size_t)j->g->in_ch * nr;
    for (int pos = 0; pos < POSITIONS; pos++)
        memset(j->v + pos * pos_stride + last_panel + (size_t)ci * nr + used, 0,
               (nr - used) * sizeof(float));
}

/* V[p][ci][t] = (Bᵀ d B)[p] for input channels [first, last) */
static void transform_input(void *ctx, int first, int last, int thread)
{
    const band_job *j = ctx;
    const ld_conv_geom *g = j->g;
    const wino_plan *p = j->p;
    const size_t tiles = (size_t)j->rows * p->tiles_w;
    const size_t pos_stride = (size_t)g->in_ch * j->padded_tiles;
    const size_t plane = (size_t)g->in_h * g->in_w;
    const int pw = p->padded_w;
    float *buf = j->row_buffers + (size_t)thread * 2 * IN_TILE * pw;
    float *d[IN_TILE], *t[IN_TILE];
    for (int k = 0; k < IN_TILE; k++) {
        d[k] = buf + (size_t)k * pw;
        t[k] = buf + (size_t)(IN_TILE + k) * pw;
    }
    for (int ci = first; ci < last; ci++) {
        const float *src = j->in + ci * plane;
        for (int r = 0; r < j->rows; r++) {
            const int y = OUT_TILE * (j->ty0 + r) - 1;
            /* tile rows overlap by two input rows: the last two of the
             * previous tile row are this one's first two, already mapped */
            const int reused = r > 0 ? IN_TILE - OUT_TILE : 0;
            if (reused) {
                float *const last0 = d[OUT_TILE], *const last1 = d[OUT_TILE + 1];
                for (int k = IN_TILE - 1; k >= reused; k--)
                    d[k] = d[k - reused];
                d[0] = last0;
                d[1] = last1;
            }
            for (int k = reused; k < IN_TILE; k++)
                ld_conv_pad_row(src, g->in_h, g->in_w, y + k, pw, j->map, j->map_row, ci, d[k]);
            if (ci + 1 < last) /* the same rows of the next channel */
                prefetch_rows(src + plane, g->in_h, g->in_w, y + reused, y + IN_TILE, 0);
            j->wino_rows((const float *const *)d, t, pw);
            float *dst = j->v + (size_t)ci * j->panel_cols;
            for (int i = 0; i < IN_TILE; i++) {
                float *o[IN_TILE];
                for (int jj = 0; jj < IN_TILE; jj++)
                    o[jj] = dst + (size_t)(i * IN_TILE + jj) * pos_stride;
                bt_cols_to_panels(j, t[i], (size_t)r * p->tiles_w, p->tiles_w, o,
                                  ci + 1 < last);
            }
        }
        zero_panel_tail(j, tiles, pos_stride, ci);
    }
}

/* One output row from the six runs s[0..5] of (Aᵀ M) for `tiles` whole
 * tiles: row[4·tx + x] (+)= ((Aᵀ M) A)[x] + bias (the kernels'
 * ld_wino_out_fn; the vector ones are in gemm_x86.c).  When accumulating
 * (a residual added in place) the row is read; otherwise it never is. */
void ld_wino_out_row_generic(const float *const s[IN_TILE], int tiles, float bias, float *row,
                             int accumulate)
{
    const float *s0 = s[0], *s1 = s[1], *s2 = s[2], *s3 = s[3], *s4 = s[4], *s5 = s[5];
    if (accumulate)
        for (int tx = 0; tx < tiles; tx++) {
            float *o = row + OUT_TILE * tx;
            o[0] += s0[tx] + s1[tx] + s2[tx] + s3[tx] + s4[tx] + bias;
            o[1] += s1[tx] - s2[tx] + 2 * (s3[tx] - s4[tx]) + bias;
            o[2] += s1[tx] + s2[tx] + 4 * (s3[tx] + s4[tx]) + bias;
            o[3] += s1[tx] - s2[tx] + 8 * (s3[tx] - s4[tx]) + s5[tx] + bias;
        }
    else
        for (int tx = 0; tx < tiles; tx++) {
            float *o = row + OUT_TILE * tx;
            o[0] = s0[tx] + s1[tx] + s2[tx] + s3[tx] + s4[tx] + bias;
            o[1] = s1[tx] - s2[tx] + 2 * (s3[tx] - s4[tx]) + bias;
            o[2] = s1[tx] + s2[tx] + 4 * (s3[tx] + s4[tx]) + bias;
            o[3] = s1[tx] - s2[tx] + 8 * (s3[tx] - s4[tx]) + s5[tx] + bias;
        }
}

/* s_k[tx] = (row k of Aᵀ) · (m0[tx], ..., m5[tx]) for the four rows k of Aᵀ
 * and a whole row of tiles: each position's run is read once.  The runs
 * never overlap (restrict lets the compiler vectorise). */
static void at_rows_run(const float *restrict m0, const float *restrict m1,
                        const float *restrict m2, const float *restrict m3,
                        const float *restrict m4, const float *restrict m5, float *restrict s0,
                        float *restrict s1, float *restrict s2, float *restrict s3, int tiles)
{
    for (int tx = 0; tx < tiles; tx++) {
        const float p12 = m1[tx] + m2[tx], d12 = m1[tx] - m2[tx];
        const float p34 = m3[tx] + m4[tx], d34 = m3[tx] - m4[tx];
        s0[tx] = m0[tx] + p12 + p34;
        s1[tx] = d12 + 2 * d34;
        s2[tx] = p12 + 4 * p34;
        s3[tx] = d12 + 8 * d34 + m5[tx];
    }
}

/* Output channels [first, last) of the band's tile rows: Aᵀ M A + bias, a row
 * of tiles at a time.  Aᵀ combines the position runs into six runs per
 * output row, and A combines those into the row's pixels. */
static void transform_output(void *ctx, int first, int last, int thread)
{
    const band_job *j = ctx;
    const ld_conv_geom *g = j->g;
    const wino_plan *p = j->p;
    const size_t tiles = (size_t)j->rows * p->tiles_w;
    const size_t pos_stride = (size_t)g->out_ch * tiles;
    const size_t plane = (size_t)g->out_h * g->out_w;
    const int tw = p->tiles_w;
    const int full_tiles = g->out_w / OUT_TILE; /* tiles whose 4 columns are all inside */
    const int accumulate = j->accumulate;
    /* sv[k][c]: row k of Aᵀ M, column c, for a row of tiles (24 runs of tw
     * floats fit in the thread's 12 padded rows of 4·tw + 2) */
    float *sv[OUT_TILE][IN_TILE];
    float *buf = j->row_buffers + (size_t)thread * 2 * IN_TILE * p->padded_w;
    for (int k = 0; k < OUT_TILE; k++)
        for (int c = 0; c < IN_TILE; c++)
            sv[k][c] = buf + (size_t)(k * IN_TILE + c) * tw;
    for (int co = first; co < last; co++) {
        const float b = j->bias ? j->bias[co] : 0.0f;
        for (int r = 0; r < j->rows; r++) {
            const int y = OUT_TILE * (j->ty0 + r);
            const float *src = j->m + (size_t)co * tiles + (size_t)r * tw;
            if (co + 1 < last) /* the same rows of the next channel */
                prefetch_rows(j->out + (co + 1) * plane, g->out_h, g->out_w, y, y + OUT_TILE, 1);
            for (int c = 0; c < IN_TILE; c++) {
                const float *col[IN_TILE]; /* column c of M, by row */
                for (int i = 0; i < IN_TILE; i++)
                    col[i] = src + (size_t)(i * IN_TILE + c) * pos_stride;
                at_rows_run(col[0], col[1], col[2], col[3], col[4], col[5], sv[0][c], sv[1][c],
                            sv[2][c], sv[3][c], tw);
            }
            for (int k = 0; k < OUT_TILE && y + k < g->out_h; k++) {
                float *row = j->out + co * plane + (size_t)(y + k) * g->out_w;
                const float *s0 = sv[k][0], *s1 = sv[k][1], *s2 = sv[k][2], *s3 = sv[k][3],
                            *s4 = sv[k][4], *s5 = sv[k][5];
                j->wino_out_row((const float *const *)sv[k], full_tiles, b, row, accumulate);
                for (int tx = full_tiles; tx < tw; tx++) { /* a partial last tile */
                    const float yv[OUT_TILE] = {
                        s0[tx] + s1[tx] + s2[tx] + s3[tx] + s4[tx] + b,
                        s1[tx] - s2[tx] + 2 * (s3[tx] - s4[tx]) + b,
                        s1[tx] + s2[tx] + 4 * (s3[tx] + s4[tx]) + b,
                        s1[tx] - s2[tx] + 8 * (s3[tx] - s4[tx]) + s5[tx] + b,
                    };
                    for (int x = 0; OUT_TILE * tx + x < g->out_w; x++)
                        row[OUT_TILE * tx + x] = accumulate ? row[OUT_TILE * tx + x] + yv[x]
                                                            : yv[x];
                }
            }
        }
    }
}

typedef struct {
    const ld_conv_geom *g;
    const ld_gemm_kernel *kernel;
    const float *u, *v;
    float *m;
    int tiles;
    size_t padded_tiles;
} product_job;

/* M_p = U_p · V_p for positions [first, last) */
static void multiply_positions(void *ctx, int first, int last, int thread)
{
    (void)thread;
    const product_job *j = ctx;
    const ld_conv_geom *g = j->g;
    for (int pos = first; pos < last; pos++) {
        const float *u = j->u + (size_t)pos * g->out_ch * g->in_ch;
        const float *v = j->v + (size_t)pos * g->in_ch * j->padded_tiles;
        float *m = j->m + (size_t)pos * g->out_ch * j->tiles;
        if (j->kernel->tile)
            ld_gemm_packed(j->kernel, g->out_ch, j->tiles, g->in_ch, u, (size_t)g->in_ch, v, m,
                           (size_t)j->tiles);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->out_ch, j->tiles,
                        g->in_ch, 1.0f, u, g->in_ch, v, j->tiles, 0.0f, m, j->tiles);
    }
}

/* Panels of panel_cols tiles that bands of `rows` tile rows compute. */
static long band_panels(int tiles_h, int tiles_w, int rows, int panel_cols)
{
    long panels = 0;
    for (int ty0 = 0; ty0 < tiles_h; ty0 += rows) {
        const long tiles = (long)(tiles_h - ty0 < rows ? tiles_h - ty0 : rows) * tiles_w;
        panels += (tiles + panel_cols - 1) / panel_cols;
    }
    return panels;
}

int ld_winograd_band_rows(int tiles_h, int tiles_w, int max_rows, int panel_cols)
{
    if (max_rows > tiles_h)
        max_rows = tiles_h;
    if (max_rows < 1)
        return 1;
    if (panel_cols <= 1) /* no padding: the fewest bands */
        return max_rows;
    int best = max_rows;
    long best_panels = band_panels(tiles_h, tiles_w, max_rows, panel_cols);
    for (int rows = max_rows - 1; rows >= 1; rows--) { /* ties keep the fewer bands */
        const long panels = band_panels(tiles_h, tiles_w, rows, panel_cols);
        if (panels < best_panels) {
            best = rows;
            best_panels = panels;
        }
    }
    return best;
}

/* scratch: ld_winograd_scratch_floats(g, budget, ld_pool_threads(pool)) floats */
void ld_conv2d_winograd(ld_pool *pool, const ld_conv_geom *g, const float *in,
                        const ld_input_map *map, const float *weight, const float *bias,
                        float *out, int accumulate, float *scratch, size_t scratch_floats)
{
    const wino_plan p = plan(g, ld_pool_threads(pool));
    const ld_gemm_kernel *kernel = ld_pool_gemm(pool);
    const size_t fixed = p.weights + p.row_buffers + p.panel_slack;
    assert(scratch_floats >= fixed + p.per_tile_row);
    float *u = scratch;
    float *row_buffers = scratch + p.weights;
    float *band = row_buffers + p.row_buffers;
    const int max_rows = (int)((scratch_floats - fixed) / p.per_tile_row);
    const int rows_per_band = ld_winograd_band_rows(p.tiles_h, p.tiles_w, max_rows,
                                                    kernel->tile ? kernel->nr : 0);
    const weights_job wj = {g, weight, u, kernel->wino_weights};
    ld_pool_for(pool, g->out_ch, transform_weights, (void *)&wj);
    for (int ty0 = 0; ty0 < p.tiles_h; ty0 += rows_per_band) {
        const int rows = p.tiles_h - ty0 < rows_per_band ? p.tiles_h - ty0 : rows_per_band;
        const int tiles = rows * p.tiles_w;
        const int panel_cols = kernel->tile ? kernel->nr : tiles;
        const size_t padded_tiles = (size_t)(tiles + panel_cols - 1) / panel_cols * panel_cols;
        float *v = band;
        float *m = band + (size_t)POSITIONS * g->in_ch * padded_tiles;
        const band_job bj = {g, &p, in, map, kernel->map_row, kernel->wino_rows, kernel->wino_cols,
                             kernel->wino_out_row, v, m, bias, out, accumulate, ty0, rows,
                             panel_cols, padded_tiles, row_buffers};
        ld_pool_for(pool, g->in_ch, transform_input, (void *)&bj);
        /* the 36 products are independent: one thread each, in turn */
        const product_job pj = {g, kernel, u, v, m, tiles, padded_tiles};
        ld_pool_for_dynamic(pool, POSITIONS, 1, multiply_positions, (void *)&pj);
        ld_pool_for(pool, g->out_ch, transform_output, (void *)&bj);
    }
}
