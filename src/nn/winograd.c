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

typedef struct {
    int tiles_w, tiles_h;
    size_t weights;     /* floats of U: 16·Co·Ci */
    size_t per_tile_row; /* floats of V and M for one row of tiles */
} wino_plan;

static wino_plan plan(const ld_conv_geom *g)
{
    wino_plan p;
    p.tiles_w = (g->out_w + 1) / 2;
    p.tiles_h = (g->out_h + 1) / 2;
    p.weights = (size_t)16 * g->out_ch * g->in_ch;
    p.per_tile_row = (size_t)16 * (size_t)(g->in_ch + g->out_ch) * (size_t)p.tiles_w;
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
    return p.weights + rows * p.per_tile_row;
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

/* The 4x4 patch whose top-left input pixel is (y0, x0), zero outside. */
static void load_patch(const float *plane, int h, int w, int y0, int x0, float d[16])
{
    const int inside = y0 >= 0 && x0 >= 0 && y0 + 4 <= h && x0 + 4 <= w;
    for (int r = 0; r < 4; r++) {
        const int y = y0 + r;
        if (inside) {
            memcpy(d + 4 * r, plane + (size_t)y * w + x0, 4 * sizeof(float));
            continue;
        }
        for (int c = 0; c < 4; c++) {
            const int x = x0 + c;
            d[4 * r + c] = (y >= 0 && y < h && x >= 0 && x < w) ? plane[(size_t)y * w + x] : 0.0f;
        }
    }
}

/* V[p][ci][t] = (Bᵀ d B)[p] for the tiles of rows [ty0, ty0+rows) */
static void transform_input(const ld_conv_geom *g, const wino_plan *p, const float *in, int ty0,
                            int rows, float *v)
{
    const size_t tiles = (size_t)rows * p->tiles_w;
    const size_t pos_stride = (size_t)g->in_ch * tiles;
    const size_t plane = (size_t)g->in_h * g->in_w;
#pragma omp parallel for schedule(static)
    for (int ci = 0; ci < g->in_ch; ci++) {
        const float *src = in + ci * plane;
        float *dst = v + (size_t)ci * tiles;
        for (int r = 0; r < rows; r++) {
            for (int tx = 0; tx < p->tiles_w; tx++) {
                float d[16], t[16];
                load_patch(src, g->in_h, g->in_w, 2 * (ty0 + r) - 1, 2 * tx - 1, d);
                for (int c = 0; c < 4; c++) { /* Bᵀ d */
                    t[0 + c] = d[0 + c] - d[8 + c];
                    t[4 + c] = d[4 + c] + d[8 + c];
                    t[8 + c] = d[8 + c] - d[4 + c];
                    t[12 + c] = d[4 + c] - d[12 + c];
                }
                const size_t at = (size_t)r * p->tiles_w + tx;
                for (int k = 0; k < 4; k++) { /* (Bᵀ d) B */
                    const float *row = t + 4 * k;
                    dst[(k * 4 + 0) * pos_stride + at] = row[0] - row[2];
                    dst[(k * 4 + 1) * pos_stride + at] = row[1] + row[2];
                    dst[(k * 4 + 2) * pos_stride + at] = row[2] - row[1];
                    dst[(k * 4 + 3) * pos_stride + at] = row[1] - row[3];
                }
            }
        }
    }
}

/* out tiles of rows [ty0, ty0+rows) = Aᵀ M A + bias */
static void transform_output(const ld_conv_geom *g, const wino_plan *p, const float *m,
                             const float *bias, int ty0, int rows, float *out)
{
    const size_t tiles = (size_t)rows * p->tiles_w;
    const size_t pos_stride = (size_t)g->out_ch * tiles;
    const size_t plane = (size_t)g->out_h * g->out_w;
#pragma omp parallel for schedule(static)
    for (int co = 0; co < g->out_ch; co++) {
        const float b = bias ? bias[co] : 0.0f;
        const float *src = m + (size_t)co * tiles;
        float *dst = out + co * plane;
        for (int r = 0; r < rows; r++) {
            const int y = 2 * (ty0 + r);
            for (int tx = 0; tx < p->tiles_w; tx++) {
                const size_t at = (size_t)r * p->tiles_w + tx;
                float s[2][4];
                for (int c = 0; c < 4; c++) { /* Aᵀ M */
                    const float m0 = src[(0 + c) * pos_stride + at], m1 = src[(4 + c) * pos_stride + at];
                    const float m2 = src[(8 + c) * pos_stride + at], m3 = src[(12 + c) * pos_stride + at];
                    s[0][c] = m0 + m1 + m2;
                    s[1][c] = m1 - m2 - m3;
                }
                const int x = 2 * tx;
                for (int k = 0; k < 2 && y + k < g->out_h; k++) { /* (Aᵀ M) A */
                    float *row = dst + (size_t)(y + k) * g->out_w + x;
                    row[0] = s[k][0] + s[k][1] + s[k][2] + b;
                    if (x + 1 < g->out_w)
                        row[1] = s[k][1] - s[k][2] - s[k][3] + b;
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
    float *band = scratch + p.weights;
    int rows_per_band = (int)((scratch_floats - p.weights) / p.per_tile_row);
    if (rows_per_band < 1)
        rows_per_band = 1; /* the caller sized scratch with ld_winograd_scratch_floats */
    transform_weights(g, weight, u);
    for (int ty0 = 0; ty0 < p.tiles_h; ty0 += rows_per_band) {
        const int rows = p.tiles_h - ty0 < rows_per_band ? p.tiles_h - ty0 : rows_per_band;
        const int tiles = rows * p.tiles_w;
        float *v = band;
        float *m = band + (size_t)16 * g->in_ch * tiles;
        transform_input(g, &p, in, ty0, rows, v);
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
