/* 3x3 stride-1 "same" convolution by Winograd F(2x2, 3x3) (Lavin & Gray,
 * "Fast Algorithms for Convolutional Neural Networks", 2015): each 2x2 output
 * tile costs 16 multiplications per channel pair instead of 36.
 *
 *   U = G g Gᵀ        (weights, 4x4 per output/input channel pair)
 *   V = Bᵀ d B        (4x4 input tiles overlapping by 2)
 *   M_p = U_p · V_p   (16 sgemms, one per tile position p: [Co,Ci]·[Ci,tiles])
 *   Y = Aᵀ M A        (2x2 output tiles)
 *
 * The input and product matrices are built one band of tile rows at a time so
 * the scratch stays bounded whatever the image size. */
#include "latentd/nn.h"

#include <cblas.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static int thread_index(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

typedef struct {
    int tiles_w, tiles_h;
    size_t weights;     /* floats of U: 16·Co·Ci */
    size_t per_tile_row; /* floats of V and M for one row of tiles */
    size_t row_buffers;  /* floats of padded rows, 8 per thread */
} wino_plan;

static wino_plan plan(const ld_conv_geom *g)
{
    wino_plan p;
    p.tiles_w = (g->out_w + 1) / 2;
    p.tiles_h = (g->out_h + 1) / 2;
    p.weights = (size_t)16 * g->out_ch * g->in_ch;
    p.per_tile_row = (size_t)16 * (size_t)(g->in_ch + g->out_ch) * (size_t)p.tiles_w;
    p.row_buffers = (size_t)ld_nn_threads() * 8 * (size_t)(2 * p.tiles_w + 2);
    return p;
}

int ld_winograd_applies(const ld_conv_geom *g)
{
    return g->kernel == 3 && g->stride == 1 && g->pad_top == 1 && g->pad_left == 1 &&
           g->out_h == g->in_h && g->out_w == g->in_w;
}

size_t ld_winograd_scratch_floats(const ld_conv_geom *g, size_t budget)
{
    const wino_plan p = plan(g);
    size_t rows = budget / p.per_tile_row;
    if (rows < 1)
        rows = 1;
    if (rows > (size_t)p.tiles_h)
        rows = (size_t)p.tiles_h;
    return p.weights + p.row_buffers + rows * p.per_tile_row;
}

/* U[p][co][ci] = (G g Gᵀ)[p] */
static void transform_weights(const ld_conv_geom *g, const float *w, float *u)
{
    const size_t pair_stride = (size_t)g->out_ch * g->in_ch;
#pragma omp parallel for schedule(static)
    for (int co = 0; co < g->out_ch; co++) {
        for (int ci = 0; ci < g->in_ch; ci++) {
            const float *k = w + ((size_t)co * g->in_ch + ci) * 9;
            float gg[4][3]; /* G g */
            for (int c = 0; c < 3; c++) {
                gg[0][c] = k[c];
                gg[1][c] = 0.5f * (k[c] + k[3 + c] + k[6 + c]);
                gg[2][c] = 0.5f * (k[c] - k[3 + c] + k[6 + c]);
                gg[3][c] = k[6 + c];
            }
            float *dst = u + (size_t)co * g->in_ch + ci;
            for (int r = 0; r < 4; r++) { /* (G g) Gᵀ */
                const float a = gg[r][0], b = gg[r][1], c = gg[r][2];
                dst[(r * 4 + 0) * pair_stride] = a;
                dst[(r * 4 + 1) * pair_stride] = 0.5f * (a + b + c);
                dst[(r * 4 + 2) * pair_stride] = 0.5f * (a - b + c);
                dst[(r * 4 + 3) * pair_stride] = c;
            }
        }
    }
}

/* One input row, zero-padded: padded[x + 1] = row[x], zeros around, so a
 * tile's columns start at padded[2·tx]. */
static void pad_row(const float *plane, int h, int w, int y, int padded_w, float *padded)
{
    if (y < 0 || y >= h) {
        memset(padded, 0, (size_t)padded_w * sizeof(float));
        return;
    }
    padded[0] = 0.0f;
    memcpy(padded + 1, plane + (size_t)y * w, (size_t)w * sizeof(float));
    memset(padded + 1 + w, 0, (size_t)(padded_w - 1 - w) * sizeof(float));
}

/* V[p][ci][t] = (Bᵀ d B)[p] for the tiles of rows [ty0, ty0+rows).  Worked a
 * whole row of tiles at a time: Bᵀ combines four padded image rows, then B
 * combines columns, and each of the 16 positions is written as one contiguous
 * run over the row's tiles. */
static void transform_input(const ld_conv_geom *g, const wino_plan *p, const float *in, int ty0,
                            int rows, float *v, float *row_buffers)
{
    const size_t tiles = (size_t)rows * p->tiles_w;
    const size_t pos_stride = (size_t)g->in_ch * tiles;
    const size_t plane = (size_t)g->in_h * g->in_w;
    const int padded_w = 2 * p->tiles_w + 2;
#pragma omp parallel
    {
        float *buf = row_buffers + (size_t)thread_index() * 8 * padded_w;
#pragma omp for schedule(static)
        for (int ci = 0; ci < g->in_ch; ci++) {
            const float *src = in + ci * plane;
            float *d[4] = {buf, buf + padded_w, buf + 2 * padded_w, buf + 3 * padded_w};
            float *t[4] = {buf + 4 * padded_w, buf + 5 * padded_w, buf + 6 * padded_w,
                           buf + 7 * padded_w};
            for (int r = 0; r < rows; r++) {
                const int y = 2 * (ty0 + r) - 1;
                for (int k = 0; k < 4; k++)
                    pad_row(src, g->in_h, g->in_w, y + k, padded_w, d[k]);
                for (int x = 0; x < padded_w; x++) { /* Bᵀ d, on whole rows */
                    t[0][x] = d[0][x] - d[2][x];
                    t[1][x] = d[1][x] + d[2][x];
                    t[2][x] = d[2][x] - d[1][x];
                    t[3][x] = d[1][x] - d[3][x];
                }
                float *dst = v + (size_t)ci * tiles + (size_t)r * p->tiles_w;
                for (int k = 0; k < 4; k++) { /* (Bᵀ d) B, on every tile of the row */
                    const float *tk = t[k];
                    float *o0 = dst + (size_t)(4 * k + 0) * pos_stride;
                    float *o1 = dst + (size_t)(4 * k + 1) * pos_stride;
                    float *o2 = dst + (size_t)(4 * k + 2) * pos_stride;
                    float *o3 = dst + (size_t)(4 * k + 3) * pos_stride;
                    for (int tx = 0; tx < p->tiles_w; tx++) {
                        const float *c = tk + 2 * tx;
                        o0[tx] = c[0] - c[2];
                        o1[tx] = c[1] + c[2];
                        o2[tx] = c[2] - c[1];
                        o3[tx] = c[1] - c[3];
                    }
                }
            }
        }
    }
}

/* out tiles of rows [ty0, ty0+rows) = Aᵀ M A + bias, a row of tiles at a time */
static void transform_output(const ld_conv_geom *g, const wino_plan *p, const float *m,
                             const float *bias, int ty0, int rows, float *out)
{
    const size_t tiles = (size_t)rows * p->tiles_w;
    const size_t pos_stride = (size_t)g->out_ch * tiles;
    const size_t plane = (size_t)g->out_h * g->out_w;
    const int even_w = g->out_w / 2; /* tiles whose two columns are both inside */
#pragma omp parallel for schedule(static)
    for (int co = 0; co < g->out_ch; co++) {
        const float b = bias ? bias[co] : 0.0f;
        for (int r = 0; r < rows; r++) {
            const int y = 2 * (ty0 + r);
            const float *src = m + (size_t)co * tiles + (size_t)r * p->tiles_w;
            const float *mp[16];
            for (int q = 0; q < 16; q++)
                mp[q] = src + (size_t)q * pos_stride;
            for (int k = 0; k < 2 && y + k < g->out_h; k++) {
                float *row = out + co * plane + (size_t)(y + k) * g->out_w;
                for (int tx = 0; tx < p->tiles_w; tx++) {
                    float s[4]; /* row k of Aᵀ M */
                    for (int c = 0; c < 4; c++)
                        s[c] = k == 0 ? mp[c][tx] + mp[4 + c][tx] + mp[8 + c][tx]
                                      : mp[4 + c][tx] - mp[8 + c][tx] - mp[12 + c][tx];
                    row[2 * tx] = s[0] + s[1] + s[2] + b;
                    if (tx < even_w)
                        row[2 * tx + 1] = s[1] - s[2] - s[3] + b;
                }
            }
        }
    }
}

void ld_conv2d_winograd(const ld_conv_geom *g, const float *in, const float *weight,
                        const float *bias, float *out, float *scratch, size_t scratch_floats)
{
    const wino_plan p = plan(g);
    float *u = scratch;
    float *row_buffers = scratch + p.weights;
    float *band = row_buffers + p.row_buffers;
    int rows_per_band = (int)((scratch_floats - p.weights - p.row_buffers) / p.per_tile_row);
    if (rows_per_band < 1)
        rows_per_band = 1; /* the caller sized scratch with ld_winograd_scratch_floats */
    transform_weights(g, weight, u);
    for (int ty0 = 0; ty0 < p.tiles_h; ty0 += rows_per_band) {
        const int rows = p.tiles_h - ty0 < rows_per_band ? p.tiles_h - ty0 : rows_per_band;
        const int tiles = rows * p.tiles_w;
        float *v = band;
        float *m = band + (size_t)16 * g->in_ch * tiles;
        transform_input(g, &p, in, ty0, rows, v, row_buffers);
        /* the 16 products are independent: one thread each, in turn */
#pragma omp parallel for schedule(dynamic)
        for (int pos = 0; pos < 16; pos++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->out_ch, tiles, g->in_ch,
                        1.0f, u + (size_t)pos * g->out_ch * g->in_ch, g->in_ch,
                        v + (size_t)pos * g->in_ch * tiles, tiles, 0.0f,
                        m + (size_t)pos * g->out_ch * tiles, tiles);
        transform_output(g, &p, m, bias, ty0, rows, out);
    }
}
