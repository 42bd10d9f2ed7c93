/* 2-D convolution as im2col + sgemm, one band of output rows at a time so the
 * column buffer stays bounded whatever the image size. */
#include "latentd/nn.h"
#include "gemm.h"

#include <assert.h>
#include <math.h>
#include <string.h>

static size_t col_rows(const ld_conv_geom *g)
{
    return (size_t)g->in_ch * (size_t)g->kernel * (size_t)g->kernel;
}

static float apply_map(const ld_input_map *map, int c, float x)
{
    const float v = x * map->scale[c] + map->shift[c];
    return map->silu ? ld_silu(v) : v;
}

static int is_pointwise(const ld_conv_geom *g)
{
    return g->kernel == 1 && g->stride == 1 && g->pad_top == 0 && g->pad_left == 0 &&
           g->out_h == g->in_h && g->out_w == g->in_w;
}

size_t ld_conv2d_im2col_scratch_floats(const ld_conv_geom *g, size_t budget, int threads)
{
    (void)threads; /* the column buffer is shared: each thread fills its channels' rows */
    /* a pointwise conv needs no columns, unless an input map must be applied:
     * then the columns hold the mapped input (callers size for the worst) */
    size_t row = col_rows(g) * (size_t)g->out_w;
    size_t rows = budget / row;
    if (rows < 1)
        rows = 1;
    if (rows > (size_t)g->out_h)
        rows = (size_t)g->out_h;
    return rows * row;
}

/* One input row, shifted by kx and strided, into one row of the column matrix. */
static void gather_row(const float *in_row, int in_w, int out_w, int stride, int x_off,
                       ld_even_fn even, float *dst)
{
    if (!in_row) {
        memset(dst, 0, sizeof(float) * (size_t)out_w);
        return;
    }
    if (stride == 1) {
        int x_lo = x_off < 0 ? -x_off : 0;                  /* first x reading column >= 0 */
        int x_hi = in_w - x_off < out_w ? in_w - x_off : out_w; /* one past last in range */
        if (x_hi < x_lo)
            x_hi = x_lo;
        memset(dst, 0, sizeof(float) * (size_t)x_lo);
        memcpy(dst + x_lo, in_row + x_lo + x_off, sizeof(float) * (size_t)(x_hi - x_lo));
        memset(dst + x_hi, 0, sizeof(float) * (size_t)(out_w - x_hi));
        return;
    }
    int x = 0;
    if (stride == 2 && x_off >= 0) { /* the outputs whose two-float pairs are inside */
        const int inside = (in_w - x_off) / 2 < out_w ? (in_w - x_off) / 2 : out_w;
        even(in_row + x_off, dst, inside);
        x = inside;
    }
    for (; x < out_w; x++) {
        int ix = x * stride + x_off;
        dst[x] = (ix >= 0 && ix < in_w) ? in_row[ix] : 0.0f;
    }
}

/* the mapped values of a gathered row; the padding columns stay zero */
static void map_row(const ld_conv_geom *g, const ld_input_map *map, int c, int x_off,
                    float *dst)
{
    for (int x = 0; x < g->out_w; x++) {
        const int ix = x * g->stride + x_off;
        if (ix >= 0 && ix < g->in_w)
            dst[x] = apply_map(map, c, dst[x]);
    }
}

typedef struct {
    const ld_conv_geom *g;
    const float *in;
    const ld_input_map *map;
    ld_even_fn even;
    int y0, rows;
    float *col;
} im2col_job;

/* The column rows of input channels [first, last) for one band of output rows. */
static void im2col_channels(void *ctx, int first, int last, int thread)
{
    (void)thread;
    const im2col_job *j = ctx;
    const ld_conv_geom *g = j->g;
    const int k = g->kernel;
    const size_t band = (size_t)j->rows * (size_t)g->out_w;
    const size_t plane = (size_t)g->in_h * (size_t)g->in_w;
    for (int ci = first; ci < last; ci++) {
        for (int ky = 0; ky < k; ky++) {
            for (int kx = 0; kx < k; kx++) {
                float *dst = j->col + ((size_t)(ci * k + ky) * k + kx) * band;
                for (int r = 0; r < j->rows; r++) {
                    int iy = (j->y0 + r) * g->stride + ky - g->pad_top;
                    const float *src = (iy >= 0 && iy < g->in_h)
                                           ? j->in + ci * plane + (size_t)iy * g->in_w
                                           : NULL;
                    gather_row(src, g->in_w, g->out_w, g->stride, kx - g->pad_left, j->even,
                               dst + (size_t)r * g->out_w);
                    if (j->map && src)
                        map_row(g, j->map, ci, kx - g->pad_left, dst + (size_t)r * g->out_w);
                }
            }
        }
    }
}

static void im2col_band(ld_pool *pool, const ld_conv_geom *g, const float *in,
                        const ld_input_map *map, int y0, int rows, float *col)
{
    const im2col_job job = {g, in, map, ld_pool_gemm(pool)->even, y0, rows, col};
    ld_pool_for(pool, g->in_ch, im2col_channels, (void *)&job);
}

/* out = bias, or out += bias when accumulating (the product is added after) */
static void start_output(float *out, const float *bias, int channels, size_t stride,
                         size_t count, int accumulate)
{
    for (int c = 0; c < channels; c++) {
        float b = bias ? bias[c] : 0.0f;
        float *row = out + (size_t)c * stride;
        if (accumulate)
            for (size_t i = 0; i < count; i++)
                row[i] += b;
        else
            for (size_t i = 0; i < count; i++)
                row[i] = b;
    }
}

void ld_conv2d_im2col(ld_pool *pool, const ld_conv_geom *g, const float *in,
                      const ld_input_map *map, const float *weight, const float *bias, float *out,
                      int accumulate, float *scratch, size_t scratch_floats)
{
    const size_t out_plane = (size_t)g->out_h * (size_t)g->out_w;
    const int K = (int)col_rows(g);
    if (is_pointwise(g) && !map) {
        start_output(out, bias, g->out_ch, out_plane, out_plane, accumulate);
        ld_gemm(pool, g->out_ch, (int)out_plane, K, weight, K, in, (int)out_plane, out,
                (int)out_plane, 1);
        return;
    }
    int rows_per_band = (int)(scratch_floats / ((size_t)K * (size_t)g->out_w));
    if (rows_per_band < 1)
        rows_per_band = 1; /* caller sized scratch with ld_conv2d_scratch_floats */
    for (int y0 = 0; y0 < g->out_h; y0 += rows_per_band) {
        int rows = g->out_h - y0 < rows_per_band ? g->out_h - y0 : rows_per_band;
        int band = rows * g->out_w;
        float *dst = out + (size_t)y0 * g->out_w;
        im2col_band(pool, g, in, map, y0, rows, scratch);
        start_output(dst, bias, g->out_ch, out_plane, (size_t)band, accumulate);
        ld_gemm(pool, g->out_ch, band, K, weight, K, scratch, band, dst, (int)out_plane, 1);
    }
}

/* ---------------- few input channels ----------------
 * A 3x3 stride-1 "same" convolution of at most FEW_CHANNELS input channels
 * (the first layer: RGB), with a kernel that has conv_row: a row of output
 * at a time on each thread, from the 3·Ci input rows it reads, padded and
 * mapped. */
#define FEW_CHANNELS 4

static int few_channels_applies(const ld_conv_geom *g)
{
    return g->in_ch <= FEW_CHANNELS && g->kernel == 3 && g->stride == 1 && g->pad_top == 1 &&
           g->pad_left == 1 && g->out_h == g->in_h && g->out_w == g->in_w;
}

/* one padded input row: x from -1, whole blocks of columns and two more */
static size_t few_row_floats(const ld_conv_geom *g)
{
    const size_t blocks = ((size_t)g->out_w + LD_CONV_ROW_BLOCK - 1) / LD_CONV_ROW_BLOCK;
    return blocks * LD_CONV_ROW_BLOCK + 2;
}

static size_t few_scratch_floats(const ld_conv_geom *g, int threads)
{
    return (size_t)threads * 3 * (size_t)g->in_ch * few_row_floats(g);
}

typedef struct {
    const ld_conv_geom *g;
    const float *in;
    const ld_input_map *map;
    const float *weight, *bias;
    float *out;
    int accumulate;
    const ld_gemm_kernel *kernel;
    float *rows; /* 3·Ci padded rows per thread */
} few_job;

/* Output rows [first, last) */
static void few_channel_rows(void *ctx, int first, int last, int thread)
{
    const few_job *j = ctx;
    const ld_conv_geom *g = j->g;
    const size_t row_floats = few_row_floats(g);
    const size_t plane = (size_t)g->in_h * g->in_w, out_plane = (size_t)g->out_h * g->out_w;
    float *rows = j->rows + (size_t)thread * 3 * g->in_ch * row_floats;
    const float *tap[FEW_CHANNELS * 9];
    for (int y = first; y < last; y++) {
        for (int ci = 0; ci < g->in_ch; ci++)
            for (int ky = 0; ky < 3; ky++) {
                float *row = rows + (size_t)(ci * 3 + ky) * row_floats;
                ld_conv_pad_row(j->in + ci * plane, g->in_h, g->in_w, y + ky - 1,
                                (int)row_floats, j->map, j->kernel->map_row, ci, row);
                for (int kx = 0; kx < 3; kx++) /* weight (ci, ky, kx) reads x + kx - 1 */
                    tap[(ci * 3 + ky) * 3 + kx] = row + kx;
            }
        j->kernel->conv_row(tap, 9 * g->in_ch, j->weight, j->bias, g->out_ch, g->out_w,
                            j->out + (size_t)y * g->out_w, out_plane, j->accumulate);
    }
}

static void conv2d_few_channels(ld_pool *pool, const ld_conv_geom *g, const float *in,
                                const ld_input_map *map, const float *weight, const float *bias,
                                float *out, int accumulate, float *scratch,
                                size_t scratch_floats)
{
    assert(scratch_floats >= few_scratch_floats(g, ld_pool_threads(pool)));
    (void)scratch_floats;
    const few_job job = {g, in, map, weight, bias, out, accumulate, ld_pool_gemm(pool), scratch};
    ld_pool_for(pool, g->out_h, few_channel_rows, (void *)&job);
}

/* Building with -DLD_NO_WINOGRAD gives the im2col-only baseline that the
 * benchmark compares against. */
#ifdef LD_NO_WINOGRAD
#define ld_winograd_applies(g) 0
#endif

size_t ld_conv2d_scratch_floats(const ld_conv_geom *g, size_t budget, int threads)
{
    const size_t general = ld_winograd_applies(g)
                               ? ld_winograd_scratch_floats(g, budget, threads)
                               : ld_conv2d_im2col_scratch_floats(g, budget, threads);
    /* the pool's kernel decides between the two: room for either */
    const size_t few = few_channels_applies(g) ? few_scratch_floats(g, threads) : 0;
    return few > general ? few : general;
}

void ld_conv2d_ex(ld_pool *pool, const ld_conv_geom *g, const float *in, const ld_input_map *map,
                  const float *weight, const float *bias, float *out, int accumulate,
                  float *scratch, size_t scratch_floats)
{
    if (few_channels_applies(g) && ld_pool_gemm(pool)->conv_row)
        conv2d_few_channels(pool, g, in, map, weight, bias, out, accumulate, scratch,
                            scratch_floats);
    else if (ld_winograd_applies(g))
        ld_conv2d_winograd(pool, g, in, map, weight, bias, out, accumulate, scratch,
                           scratch_floats);
    else
        ld_conv2d_im2col(pool, g, in, map, weight, bias, out, accumulate, scratch,
                         scratch_floats);
}

void ld_conv2d(ld_pool *pool, const ld_conv_geom *g, const float *in, const float *weight,
               const float *bias, float *out, float *scratch, size_t scratch_floats)
{
    ld_conv2d_ex(pool, g, in, NULL, weight, bias, out, 0, scratch, scratch_floats);
}
