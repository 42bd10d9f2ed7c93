/* The kernels against direct loops in double precision. */
#include "latentd/nn.h"
#include "gemm.h" /* the kernels' elementwise maps, tested directly */
#include "testutil.h"

#include <check.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* The kernels run on a pool of three threads (an odd count, so ranges split
 * unevenly), made afresh for each test. */
static ld_pool *pool;

static void pool_setup(void)
{
    char err[LD_ERR_LEN];
    ck_assert_msg(ld_pool_new(3, &pool, err) == LD_OK, "%s", err);
}

static void pool_teardown(void)
{
    ld_pool_free(pool);
    pool = NULL;
}

/* The kernel tests loop over every matrix kernel (_i, an ld_kernel): each
 * one this CPU runs is tested, the others are said and passed over. */
static bool use_kernel(int kind)
{
    char err[LD_ERR_LEN];
    if (!ld_kernel_available((ld_kernel)kind)) { /* refused, with a reason */
        ck_assert_int_eq(ld_pool_set_kernel(pool, (ld_kernel)kind, err), LD_EUNSUPPORTED);
        ck_assert_ptr_nonnull(strstr(err, ld_kernel_name((ld_kernel)kind)));
        fprintf(stderr, "test_nn: no %s kernel on this CPU: not tested here\n",
                ld_kernel_name((ld_kernel)kind));
        return false;
    }
    ck_assert_msg(ld_pool_set_kernel(pool, (ld_kernel)kind, err) == LD_OK, "%s", err);
    ck_assert_int_eq(ld_pool_kernel(pool), kind);
    return true;
}

/* C = A·B (+ C) against double sums, shapes that leave partial tiles in
 * every direction for every kernel's mr × nr, k past the packing slice
 * (256), and leading dimensions wider than the matrices. */
START_TEST(gemm_matches_definition)
{
    if (!use_kernel(_i))
        return;
    static const int shapes[][3] = {{1, 1, 1},   {3, 5, 7},    {8, 48, 64},  {9, 49, 300},
                                    {4, 24, 33}, {17, 100, 257}, {64, 97, 513}, {130, 7, 20}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        const int lda = k + 3, ldb = n + 5, ldc = n + 2;
        float *a = malloc(sizeof(float) * m * lda), *b = malloc(sizeof(float) * k * ldb),
              *c = malloc(sizeof(float) * m * ldc), *c0 = malloc(sizeof(float) * m * ldc);
        ck_assert(a && b && c && c0);
        fill_random(a, (size_t)m * lda, 11);
        fill_random(b, (size_t)k * ldb, 12);
        fill_random(c0, (size_t)m * ldc, 13);
        for (int accumulate = 0; accumulate <= 1; accumulate++) {
            memcpy(c, c0, sizeof(float) * m * ldc);
            ld_gemm(pool, m, n, k, a, lda, b, ldb, c, ldc, accumulate);
            for (int i = 0; i < m; i++)
                for (int j = 0; j < ldc; j++) {
                    const float got = c[(size_t)i * ldc + j];
                    if (j >= n) { /* past the matrix: untouched */
                        ck_assert_float_eq(got, c0[(size_t)i * ldc + j]);
                        continue;
                    }
                    double want = accumulate ? c0[(size_t)i * ldc + j] : 0.0;
                    for (int p = 0; p < k; p++)
                        want += (double)a[(size_t)i * lda + p] * b[(size_t)p * ldb + j];
                    ck_assert_msg(fabs(got - want) <= 1e-5 * sqrt(k) * (1 + fabs(want)),
                                  "%s %dx%dx%d acc %d: c[%d][%d] = %g, want %g",
                                  ld_kernel_name((ld_kernel)_i), m, n, k, accumulate, i, j, got,
                                  want);
                }
        }
        free(a);
        free(b);
        free(c);
        free(c0);
    }
}
END_TEST

/* B [k × n] into the kernel's panels ([n / nr rounded up][k][nr], zeros
 * past n), as the Winograd input transform writes them. */
static float *pack_panels(const ld_gemm_kernel *kern, const float *b, int k, int n)
{
    const int panels = (n + kern->nr - 1) / kern->nr;
    float *packed = calloc((size_t)panels * k * kern->nr, sizeof(float));
    ck_assert_ptr_nonnull(packed);
    for (int p = 0; p < k; p++)
        for (int j = 0; j < n; j++)
            packed[((size_t)(j / kern->nr) * k + p) * kern->nr + j % kern->nr] =
                b[(size_t)p * n + j];
    return packed;
}

/* A product whose A is far (a Winograd U of 512 channels or so): the
 * prefetching tile gives the plain tile's sums bit for bit (same order of
 * operations), and ld_gemm_packed, which takes it for A this large, matches
 * the definition over partial tiles of rows and columns. */
START_TEST(gemm_far_a_matches_definition)
{
    if (!use_kernel(_i))
        return;
    const ld_gemm_kernel *kern = ld_pool_gemm(pool);
    if (!kern->tile)
        return; /* CBLAS: products go to cblas_sgemm */
    enum { M = 259, N = 100, K = 512 };
    _Static_assert((size_t)M * K >= LD_GEMM_FAR_A_FLOATS, "A must be far");
    float *a = malloc(sizeof(float) * M * K), *b = malloc(sizeof(float) * K * N),
          *c = malloc(sizeof(float) * M * N);
    ck_assert(a && b && c);
    fill_random(a, (size_t)M * K, 21);
    fill_random(b, (size_t)K * N, 22);
    float *panels = pack_panels(kern, b, K, N);
    for (size_t i = 0; i < (size_t)M * N; i++) /* a tile left unwritten stays NaN */
        c[i] = NAN;
    if (kern->tile_far_a) {
        float near[LD_GEMM_MAX_MR * LD_GEMM_MAX_NR], far[LD_GEMM_MAX_MR * LD_GEMM_MAX_NR];
        const float *rows[LD_GEMM_MAX_MR];
        for (int i = 0; i < kern->mr; i++)
            rows[i] = a + (size_t)(i + 3) * K; /* an A row that is no multiple of the tile */
        kern->tile(K, rows, panels, near, (size_t)kern->nr, 0);
        kern->tile_far_a(K, rows, panels, far, (size_t)kern->nr, 0);
        ck_assert_mem_eq(near, far, sizeof(float) * kern->mr * kern->nr);
    }
    ld_gemm_packed(kern, M, N, K, a, K, panels, c, N);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double want = 0.0;
            for (int p = 0; p < K; p++)
                want += (double)a[(size_t)i * K + p] * b[(size_t)p * N + j];
            const float got = c[(size_t)i * N + j];
            ck_assert_msg(fabs(got - want) <= 1e-5 * sqrt(K) * (1 + fabs(want)),
                          "%s: c[%d][%d] = %g, want %g", ld_kernel_name((ld_kernel)_i), i, j,
                          got, want);
        }
    free(a);
    free(b);
    free(c);
    free(panels);
}
END_TEST

/* The kernels' GroupNorm+SiLU map (their own exp) against SiLU in double,
 * from tiny to huge inputs of either sign, at every row length up to two
 * vectors and then some (the masked and scalar tails). */
START_TEST(input_map_matches_silu)
{
    if (!use_kernel(_i))
        return;
    const ld_gemm_kernel *k = ld_gemm_kernel_get((ld_kernel)_i);
    ck_assert_ptr_nonnull(k);
    enum { N = 4001 };
    float *src = malloc(N * sizeof(float)), *dst = malloc((N + 1) * sizeof(float));
    ck_assert(src && dst);
    for (int i = 0; i < N; i++) /* -100 .. 100, denser near 0, and exact zero */
        src[i] = (float)(100.0 * pow((i - N / 2) / (double)(N / 2), 3));
    const float scale = 1.25f, shift = -0.5f;
    for (int n = 0; n <= 40; n++) {
        dst[n] = 12345.0f; /* past the row: untouched */
        k->map_row(src + N / 2 - n / 2, dst, n, scale, shift, 1);
        ck_assert_float_eq(dst[n], 12345.0f);
    }
    k->map_row(src, dst, N, scale, shift, 1);
    for (int i = 0; i < N; i++) {
        /* the map's float v may be a rounding or two off (FMA or not):
         * allow for silu's slope over that, plus 2 ulp of the result;
         * below -87 the kernels' exp saturates (about -1e-36 for -0) */
        const double v = (double)src[i] * scale + shift;
        const double sig = 1.0 / (1.0 + exp(-v));
        const double want = v * sig;
        const double slope = fabs(sig * (1.0 + v * (1.0 - sig)));
        const double v_error = (fabs((double)src[i] * scale) + fabs(v)) * 0x1p-24;
        const double tol = 2.4e-7 * fabs(want) + slope * v_error + 1e-30;
        ck_assert_msg(fabs(dst[i] - want) <= tol,
                      "%s: silu(%g) = %.9g, want %.9g", ld_kernel_name((ld_kernel)_i), v,
                      dst[i], want);
    }
    k->map_row(src, dst, N, scale, shift, 0); /* the affine part alone */
    for (int i = 0; i < N; i++)
        ck_assert_float_eq_tol(dst[i], src[i] * scale + shift, 1e-5f * (1 + fabsf(dst[i])));
    free(src);
    free(dst);
}
END_TEST

static double conv_ref(const ld_conv_geom *g, const float *in, const float *w, const float *b,
                       int co, int y, int x)
{
    double acc = b ? b[co] : 0.0;
    for (int ci = 0; ci < g->in_ch; ci++)
        for (int ky = 0; ky < g->kernel; ky++)
            for (int kx = 0; kx < g->kernel; kx++) {
                int iy = y * g->stride + ky - g->pad_top, ix = x * g->stride + kx - g->pad_left;
                if (iy < 0 || iy >= g->in_h || ix < 0 || ix >= g->in_w)
                    continue;
                acc += (double)w[((co * g->in_ch + ci) * g->kernel + ky) * g->kernel + kx] *
                       in[(ci * g->in_h + iy) * g->in_w + ix];
            }
    return acc;
}

typedef enum { ALGO_DEFAULT, ALGO_IM2COL, ALGO_WINOGRAD } conv_algo;

static void check_conv_with(ld_conv_geom g, size_t budget, conv_algo algo)
{
    const size_t nin = (size_t)g.in_ch * g.in_h * g.in_w;
    const size_t nout = (size_t)g.out_ch * g.out_h * g.out_w;
    const size_t nw = (size_t)g.out_ch * g.in_ch * g.kernel * g.kernel;
    float *in = malloc(nin * 4), *w = malloc(nw * 4), *b = malloc(g.out_ch * 4),
          *out = malloc(nout * 4);
    fill_random(in, nin, 1);
    fill_random(w, nw, 2);
    fill_random(b, (size_t)g.out_ch, 3);
    const int threads = ld_pool_threads(pool);
    size_t scratch_n = algo == ALGO_IM2COL ? ld_conv2d_im2col_scratch_floats(&g, budget, threads)
                       : algo == ALGO_WINOGRAD ? ld_winograd_scratch_floats(&g, budget, threads)
                                               : ld_conv2d_scratch_floats(&g, budget, threads);
    float *scratch = malloc(scratch_n * 4 + 4);
    if (algo == ALGO_IM2COL)
        ld_conv2d_im2col(pool, &g, in, NULL, w, b, out, 0, scratch, scratch_n);
    else if (algo == ALGO_WINOGRAD)
        ld_conv2d_winograd(pool, &g, in, NULL, w, b, out, 0, scratch, scratch_n);
    else
        ld_conv2d(pool, &g, in, w, b, out, scratch, scratch_n);
    for (int co = 0; co < g.out_ch; co++)
        for (int y = 0; y < g.out_h; y++)
            for (int x = 0; x < g.out_w; x++) {
                double want = conv_ref(&g, in, w, b, co, y, x);
                double got = out[(co * g.out_h + y) * g.out_w + x];
                ck_assert_msg(fabs(got - want) <= 1e-4 * (1 + fabs(want)),
                              "co %d y %d x %d: %g vs %g", co, y, x, got, want);
            }
    free(in);
    free(w);
    free(b);
    free(out);
    free(scratch);
}

static void check_conv(ld_conv_geom g, size_t budget)
{
    check_conv_with(g, budget, ALGO_DEFAULT);
}

START_TEST(conv_3x3_same_padding_in_bands)
{
    if (!use_kernel(_i))
        return;
    /* odd sizes leave partial Winograd tiles on the right and bottom */
    /* and rows of 18 and 33 tiles: the vector transforms' 16 tiles and tails */
    const ld_conv_geom shapes[] = {
        {5, 11, 9, 7, 11, 9, 3, 1, 1, 1}, {4, 8, 6, 3, 8, 6, 3, 1, 1, 1},
        {2, 1, 1, 3, 1, 1, 3, 1, 1, 1},   {3, 9, 70, 2, 9, 70, 3, 1, 1, 1},
        {2, 5, 131, 3, 5, 131, 3, 1, 1, 1}};
    for (int s = 0; s < 5; s++) {
        ck_assert(ld_winograd_applies(&shapes[s]));
        check_conv(shapes[s], 1 << 20); /* the default: few channels' own path for 2 and 3 */
        for (conv_algo a = ALGO_IM2COL; a <= ALGO_WINOGRAD; a++) {
            check_conv_with(shapes[s], 1 << 20, a); /* one band */
            check_conv_with(shapes[s], 1, a);       /* one row of output or tiles per band */
        }
    }
    check_conv_with(shapes[0], 5 * 9 * 9 * 2, ALGO_IM2COL); /* two rows per band */
    check_conv_with(shapes[0],
                    36 * 12 * 3 * 2 + 36 * 7 * 5 + (size_t)ld_pool_threads(pool) * 12 * 14,
                    ALGO_WINOGRAD); /* two tile rows */
    /* 16 rows of 16 tiles, room for 7 a band: fewer rows where that makes
     * whole panels (6, 6, 4 with the AVX-512 kernel's 48 columns) */
    const ld_conv_geom square = {2, 64, 64, 3, 64, 64, 3, 1, 1, 1};
    check_conv_with(square, 7 * 36 * (2 + 3) * 16, ALGO_WINOGRAD);
}
END_TEST

/* Panels of panel_cols tiles that bands of `rows` tile rows compute. */
static long band_panels(int tiles_h, int tiles_w, int rows, int panel_cols)
{
    long panels = 0;
    for (int y = 0; y < tiles_h; y += rows)
        panels += ((long)(tiles_h - y < rows ? tiles_h - y : rows) * tiles_w + panel_cols - 1) /
                  panel_cols;
    return panels;
}

/* Band rows: the fewest computed panel columns, then the fewest bands. */
START_TEST(winograd_bands_are_whole_panels)
{
    /* 64x64 at 512 channels: 7 rows of 16 tiles (336 columns) lose to 6 (288) */
    ck_assert_int_eq(ld_winograd_band_rows(16, 16, 7, 48), 6);
    /* 128x128 at 256: 6 rows of 32 tiles are 4 whole panels */
    ck_assert_int_eq(ld_winograd_band_rows(32, 32, 7, 48), 6);
    /* 3 rows of 128 tiles are 8 whole panels already */
    ck_assert_int_eq(ld_winograd_band_rows(128, 128, 3, 48), 3);
    /* the whole image when it fits: no split saves a column */
    ck_assert_int_eq(ld_winograd_band_rows(16, 16, 100, 48), 16);
    /* no panels (CBLAS): as many rows as fit */
    ck_assert_int_eq(ld_winograd_band_rows(16, 16, 7, 0), 7);
    /* at least one row, however little room */
    ck_assert_int_eq(ld_winograd_band_rows(5, 5, 0, 48), 1);
    /* against every row count that fits: the fewest panels, then the most rows */
    for (int th = 1; th <= 40; th++)
        for (int tw = 1; tw <= 40; tw += 3)
            for (int max = 1; max <= th; max++) {
                const int rows = ld_winograd_band_rows(th, tw, max, 16);
                ck_assert(rows >= 1 && rows <= max);
                const long chosen = band_panels(th, tw, rows, 16);
                for (int r = 1; r <= max; r++) {
                    const long other = band_panels(th, tw, r, 16);
                    ck_assert_msg(chosen < other || (chosen == other && rows >= r),
                                  "%dx%d tiles, at most %d rows: %d rows (%ld panels) chosen, "
                                  "%d rows make %ld", th, tw, max, rows, chosen, r, other);
                }
            }
}
END_TEST

START_TEST(conv_downsample_pads_right_and_bottom)
{
    if (!use_kernel(_i))
        return;
    /* diffusers: pad (0,1,0,1) then 3x3 stride 2, no padding: n -> floor(n/2) */
    ld_conv_geom odd = {4, 15, 11, 6, 7, 5, 3, 2, 0, 0};
    check_conv(odd, 1 << 20);
    check_conv(odd, 1);
    ld_conv_geom even = {3, 8, 8, 2, 4, 4, 3, 2, 0, 0};
    check_conv(even, 1 << 20);
    /* rows wide enough for the vector kernels' stride-2 gather, odd and even */
    ld_conv_geom wide = {3, 6, 71, 4, 3, 35, 3, 2, 0, 0};
    check_conv(wide, 1 << 20);
    ld_conv_geom wide_even = {2, 4, 96, 3, 2, 48, 3, 2, 0, 0};
    check_conv(wide_even, 1 << 20);
}
END_TEST

START_TEST(conv_pointwise)
{
    if (!use_kernel(_i))
        return;
    ld_conv_geom g = {6, 5, 7, 9, 5, 7, 1, 1, 0, 0};
    check_conv(g, 1 << 20);
}
END_TEST

/* GroupNorm+SiLU fused into the input, residual accumulated into the output:
 * equal to normalising a copy, convolving it and adding. */
static void check_map_and_accumulate(ld_conv_geom g, conv_algo algo)
{
    const int ci = g.in_ch, co = g.out_ch;
    const size_t plane = (size_t)g.in_h * g.in_w, nin = (size_t)ci * plane;
    const size_t nout = (size_t)co * g.out_h * g.out_w, nw = (size_t)co * ci * 9;
    float *in = malloc(nin * 4), *w = malloc(nw * 4), *b = malloc((size_t)co * 4),
          *normed = malloc(nin * 4), *out = malloc(nout * 4), *residual = malloc(nout * 4);
    float gamma[8], beta[8], scale[8], shift[8];
    ck_assert_int_le(ci, 8);
    fill_random(in, nin, 41);
    fill_random(w, nw, 42);
    fill_random(b, (size_t)co, 43);
    fill_random(gamma, 8, 44);
    fill_random(beta, 8, 45);
    const int groups = ci % 4 == 0 ? 4 : 1;
    ld_group_norm(pool, in, normed, ci, plane, groups, gamma, beta, 1e-6f, 1);
    ld_group_norm_coeffs(pool, in, ci, plane, groups, gamma, beta, 1e-6f, scale, shift);
    const ld_input_map map = {scale, shift, 1};
    fill_random(residual, nout, 46);
    memcpy(out, residual, nout * 4);
    const int threads = ld_pool_threads(pool);
    const size_t n = algo == ALGO_WINOGRAD ? ld_winograd_scratch_floats(&g, 1 << 20, threads)
                     : algo == ALGO_IM2COL ? ld_conv2d_im2col_scratch_floats(&g, 1 << 20, threads)
                                           : ld_conv2d_scratch_floats(&g, 1 << 20, threads);
    float *scratch = malloc(n * 4);
    if (algo == ALGO_WINOGRAD)
        ld_conv2d_winograd(pool, &g, in, &map, w, b, out, 1, scratch, n);
    else if (algo == ALGO_IM2COL)
        ld_conv2d_im2col(pool, &g, in, &map, w, b, out, 1, scratch, n);
    else
        ld_conv2d_ex(pool, &g, in, &map, w, b, out, 1, scratch, n);
    for (int c = 0; c < co; c++)
        for (int y = 0; y < g.out_h; y++)
            for (int x = 0; x < g.out_w; x++) {
                const size_t at = ((size_t)c * g.out_h + y) * g.out_w + x;
                double want = residual[at] + conv_ref(&g, normed, w, b, c, y, x);
                ck_assert_msg(fabs(out[at] - want) <= 1e-4 * (1 + fabs(want)),
                              "algo %d co %d y %d x %d: %g vs %g", algo, c, y, x, out[at], want);
            }
    free(in);
    free(w);
    free(b);
    free(normed);
    free(out);
    free(residual);
    free(scratch);
}

START_TEST(conv_with_input_map_and_accumulate)
{
    if (!use_kernel(_i))
        return;
    const ld_conv_geom g = {8, 9, 7, 5, 9, 7, 3, 1, 1, 1};
    check_map_and_accumulate(g, ALGO_IM2COL);
    check_map_and_accumulate(g, ALGO_WINOGRAD);
    /* few input channels (the first layer's RGB) take their own path where
     * the kernel has one: rows of 1, 37 and 70 columns (blocks of 32 and a
     * tail) */
    const ld_conv_geom few[] = {{3, 5, 37, 6, 5, 37, 3, 1, 1, 1},
                                {2, 4, 70, 9, 4, 70, 3, 1, 1, 1},
                                {4, 3, 1, 3, 3, 1, 3, 1, 1, 1}};
    for (int s = 0; s < 3; s++)
        check_map_and_accumulate(few[s], ALGO_DEFAULT);
}
END_TEST

START_TEST(group_norm_matches_definition)
{
    if (!use_kernel(_i))
        return;
    const int C = 12, G = 4, HW = 37;
    float x[12 * 37], y[12 * 37], gamma[12], beta[12];
    fill_random(x, sizeof x / 4, 5);
    for (int i = 0; i < C * HW; i++)
        x[i] = x[i] * 3 + 10; /* a large mean, to catch cancellation */
    fill_random(gamma, C, 6);
    fill_random(beta, C, 7);
    for (int silu = 0; silu <= 1; silu++) {
        ld_group_norm(pool, x, y, C, HW, G, gamma, beta, 1e-6f, silu);
        for (int g = 0; g < G; g++) {
            double mean = 0, var = 0;
            const int n = C / G * HW;
            for (int i = 0; i < n; i++)
                mean += x[g * n + i];
            mean /= n;
            for (int i = 0; i < n; i++)
                var += (x[g * n + i] - mean) * (x[g * n + i] - mean);
            var /= n; /* biased */
            for (int i = 0; i < n; i++) {
                int c = (g * n + i) / HW;
                double v = (x[g * n + i] - mean) / sqrt(var + 1e-6) * gamma[c] + beta[c];
                if (silu)
                    v = v / (1 + exp(-v));
                ck_assert_double_eq_tol(y[g * n + i], v, 1e-5);
            }
        }
    }
    /* in place gives the same */
    float z[12 * 37];
    memcpy(z, x, sizeof x);
    ld_group_norm(pool, z, z, C, HW, G, gamma, beta, 1e-6f, 1);
    ck_assert_mem_eq(z, y, sizeof y);
}
END_TEST

START_TEST(attention_matches_definition)
{
    if (!use_kernel(_i))
        return;
    const int C = 8;
    /* three blocks of queries and of keys (144 and 480), the last ones partial */
    const size_t T = 1000;
    float *x = malloc(C * T * 4), *out = malloc(C * T * 4), *w[4], *b[4];
    fill_random(x, C * T, 11);
    for (int k = 0; k < 4; k++) {
        w[k] = malloc(C * C * 4);
        b[k] = malloc(C * 4);
        fill_random(w[k], C * C, 20 + k);
        fill_random(b[k], C, 30 + k);
    }
    ld_attn_weights aw = {w[0], b[0], w[1], b[1], w[2], b[2], w[3], b[3]};
    float *scratch = malloc(ld_attention_scratch_floats(C, T, ld_pool_threads(pool)) * 4);
    /* cancelled before it starts: no block runs and out is left alone */
    _Atomic bool cancel = true;
    _Atomic uint64_t blocks = 0;
    for (size_t i = 0; i < C * T; i++)
        out[i] = 42.0f;
    ck_assert_int_eq(ld_attention(pool, x, C, T, &aw, out, scratch, &blocks, &cancel),
                     LD_ECANCELLED);
    ck_assert_uint_eq(atomic_load(&blocks), 0);
    for (size_t i = 0; i < C * T; i++)
        ck_assert_float_eq(out[i], 42.0f);
    atomic_store(&cancel, false);
    ck_assert_int_eq(ld_attention(pool, x, C, T, &aw, out, scratch, &blocks, &cancel), LD_OK);
    ck_assert_uint_eq(atomic_load(&blocks), (T + 143) / 144); /* one per block of queries */
    double *q = malloc(C * T * 8), *k = malloc(C * T * 8), *v = malloc(C * T * 8);
    double *proj[3] = {q, k, v};
    for (int p = 0; p < 3; p++)
        for (int c = 0; c < C; c++)
            for (size_t t = 0; t < T; t++) {
                double acc = b[p][c];
                for (int j = 0; j < C; j++)
                    acc += (double)w[p][c * C + j] * x[j * T + t];
                proj[p][c * T + t] = acc;
            }
    double *s = malloc(T * 8), o[8];
    for (size_t t = 0; t < T; t++) {
        double max = -INFINITY, sum = 0;
        for (size_t u = 0; u < T; u++) {
            double d = 0;
            for (int c = 0; c < C; c++)
                d += q[c * T + t] * k[c * T + u];
            s[u] = d / sqrt(C);
            max = fmax(max, s[u]);
        }
        for (size_t u = 0; u < T; u++)
            sum += s[u] = exp(s[u] - max);
        for (int c = 0; c < C; c++) {
            o[c] = 0;
            for (size_t u = 0; u < T; u++)
                o[c] += s[u] / sum * v[c * T + u];
        }
        for (int c = 0; c < C; c++) {
            double want = b[3][c];
            for (int j = 0; j < C; j++)
                want += (double)w[3][c * C + j] * o[j];
            ck_assert_double_eq_tol(out[c * T + t], want, 1e-4 * (1 + fabs(want)));
        }
    }
    free(s);
    free(q);
    free(k);
    free(v);
    free(scratch);
    for (int p = 0; p < 4; p++) {
        free(w[p]);
        free(b[p]);
    }
    free(x);
    free(out);
}
END_TEST

/* ---- the thread pool ---- */

typedef struct {
    int n;
    atomic_int *visits;       /* per index */
    atomic_int calls[8];      /* per thread */
    atomic_int bad_thread;    /* calls with a thread index outside the pool */
    int threads;
} visit_log;

static void visit(void *ctx, int begin, int end, int thread)
{
    visit_log *log = ctx;
    if (thread < 0 || thread >= log->threads || begin < 0 || end > log->n || begin >= end) {
        atomic_fetch_add(&log->bad_thread, 1);
        return;
    }
    atomic_fetch_add(&log->calls[thread], 1);
    for (int i = begin; i < end; i++)
        atomic_fetch_add(&log->visits[i], 1);
}

/* every index of [0, n) exactly once; grain 0 is the static schedule */
static void check_visits(ld_pool *p, int n, int grain)
{
    visit_log log = {.n = n, .threads = ld_pool_threads(p)};
    log.visits = calloc((size_t)n + 1, sizeof *log.visits);
    ck_assert_ptr_nonnull(log.visits);
    if (grain == 0)
        ld_pool_for(p, n, visit, &log);
    else
        ld_pool_for_dynamic(p, n, grain, visit, &log);
    ck_assert_int_eq(atomic_load(&log.bad_thread), 0);
    for (int i = 0; i < n; i++)
        ck_assert_msg(atomic_load(&log.visits[i]) == 1, "n %d grain %d threads %d: index %d "
                      "visited %d times", n, grain, log.threads, i, atomic_load(&log.visits[i]));
    if (grain == 0) /* static: one contiguous range per thread at most */
        for (int t = 0; t < log.threads; t++)
            ck_assert_int_le(atomic_load(&log.calls[t]), 1);
    free(log.visits);
}

START_TEST(pool_visits_every_index_once)
{
    static const int sizes[] = {0, 1, 2, 3, 5, 7, 8, 64, 1001};
    static const int grains[] = {0, 1, 3, 16};
    for (int threads = 1; threads <= 8; threads++) {
        char err[LD_ERR_LEN];
        ld_pool *p;
        ck_assert_msg(ld_pool_new(threads, &p, err) == LD_OK, "%s", err);
        ck_assert_int_eq(ld_pool_threads(p), threads);
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
            for (size_t g = 0; g < sizeof grains / sizeof grains[0]; g++)
                check_visits(p, sizes[s], grains[g]);
        ld_pool_free(p);
    }
    /* NULL is a pool of one: the caller does everything */
    ck_assert_int_eq(ld_pool_threads(NULL), 1);
    check_visits(NULL, 10, 0);
    check_visits(NULL, 10, 4);
}
END_TEST

/* Back-to-back loops: each starts only after the last has finished everywhere. */
static void add_round(void *ctx, int begin, int end, int thread)
{
    (void)thread;
    int *cells = ctx;
    for (int i = begin; i < end; i++)
        cells[i] += 1; /* plain ints: a loop overlapping the next would be a data race */
}

/* With waiting threads that sleep at once and ones that poll first (the
 * hand-over then goes through the atomics alone), on 2 and on 4 threads. */
START_TEST(pool_runs_loops_one_after_another)
{
    static const int spins[] = {0, LD_POOL_SPIN_US};
    for (int threads = 2; threads <= 4; threads += 2)
        for (size_t s = 0; s < sizeof spins / sizeof spins[0]; s++) {
            char err[LD_ERR_LEN];
            ld_pool *p;
            ck_assert_msg(ld_pool_new(threads, &p, err) == LD_OK, "%s", err);
            ld_pool_set_spin(p, spins[s]);
            int cells[37] = {0};
            for (int round = 0; round < 2000; round++) {
                if (round % 2)
                    ld_pool_for(p, 37, add_round, cells);
                else
                    ld_pool_for_dynamic(p, 37, 2, add_round, cells);
            }
            for (int i = 0; i < 37; i++)
                ck_assert_msg(cells[i] == 2000, "threads %d spin %d: cell %d ran %d times",
                              threads, spins[s], i, cells[i]);
            ld_pool_free(p);
        }
}
END_TEST

/* Each thread's kernel id, recorded from inside a loop. */
static void record_tid(void *ctx, int begin, int end, int thread)
{
    (void)begin;
    (void)end;
    pid_t *tids = ctx;
    tids[thread] = (pid_t)syscall(SYS_gettid);
}

/* A thread's scheduler state from /proc: 'R' running or ready, 'S' asleep */
static char thread_state(pid_t tid)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
    fclose(f);
    const char *close = strrchr(line, ')'); /* the name may hold spaces and parentheses */
    ck_assert_ptr_nonnull(close);
    return close[2];
}

/* The polling is bounded: after a loop the worker goes to sleep (an idle
 * pool takes no CPU), here waited for by watching its state, and it wakes
 * for the next loop. */
START_TEST(pool_workers_sleep_once_the_spin_ends)
{
    char err[LD_ERR_LEN];
    ld_pool *p;
    ck_assert_msg(ld_pool_new(2, &p, err) == LD_OK, "%s", err);
    ld_pool_set_spin(p, 100 * 1000); /* 100 ms: long enough to see, short enough to wait out */
    pid_t tids[2] = {0, 0};
    ld_pool_for(p, 2, record_tid, tids);
    ck_assert_int_ne(tids[1], 0);
    ck_assert_int_ne(tids[1], tids[0]);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    double waited = 0;
    while (thread_state(tids[1]) != 'S' && waited < 30.0) {
        sched_yield();
        clock_gettime(CLOCK_MONOTONIC, &now);
        waited = (double)(now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) * 1e-9;
    }
    ck_assert_msg(thread_state(tids[1]) == 'S', "the worker still %c after %.1f s",
                  thread_state(tids[1]), waited);
    tids[1] = 0;
    ld_pool_for(p, 2, record_tid, tids);
    ck_assert_int_ne(tids[1], 0);
    ld_pool_free(p);
}
END_TEST

typedef struct {
    ld_pool *pool;
    visit_log *inner;  /* indices outer·inner_n + j */
    int inner_n;
    atomic_int thread_mismatch;
} nested_ctx;

typedef struct {
    nested_ctx *outer;
    int base, thread;
} inner_ctx;

static void inner_visit(void *ctx, int begin, int end, int thread)
{
    inner_ctx *in = ctx;
    if (thread != in->thread) /* a nested loop runs as the thread that started it */
        atomic_fetch_add(&in->outer->thread_mismatch, 1);
    visit(in->outer->inner, in->base + begin, in->base + end, thread);
}

static void outer_visit(void *ctx, int begin, int end, int thread)
{
    nested_ctx *nc = ctx;
    for (int i = begin; i < end; i++) {
        inner_ctx in = {nc, i * nc->inner_n, thread};
        ld_pool_for(nc->pool, nc->inner_n, inner_visit, &in);
    }
}

START_TEST(pool_nested_loops_run_serially)
{
    char err[LD_ERR_LEN];
    ld_pool *p;
    ck_assert_msg(ld_pool_new(3, &p, err) == LD_OK, "%s", err);
    const int outer = 7, inner = 5;
    visit_log log = {.n = outer * inner, .threads = 3};
    log.visits = calloc((size_t)outer * inner, sizeof *log.visits);
    nested_ctx nc = {p, &log, inner, 0};
    ld_pool_for(p, outer, outer_visit, &nc);
    ck_assert_int_eq(atomic_load(&nc.thread_mismatch), 0);
    ck_assert_int_eq(atomic_load(&log.bad_thread), 0);
    for (int i = 0; i < outer * inner; i++)
        ck_assert_int_eq(atomic_load(&log.visits[i]), 1);
    free(log.visits);
    ld_pool_free(p);
}
END_TEST

/* Two threads share one pool: their loops take turns, each complete. */
typedef struct {
    ld_pool *pool;
    int cells[50];
} caller_arg;

static void *caller_main(void *arg)
{
    caller_arg *c = arg;
    for (int round = 0; round < 300; round++)
        ld_pool_for(c->pool, 50, add_round, c->cells);
    return NULL;
}

START_TEST(pool_callers_on_other_threads_take_turns)
{
    char err[LD_ERR_LEN];
    ld_pool *p;
    ck_assert_msg(ld_pool_new(2, &p, err) == LD_OK, "%s", err);
    caller_arg a = {p, {0}}, b = {p, {0}};
    pthread_t ta, tb;
    ck_assert_int_eq(pthread_create(&ta, NULL, caller_main, &a), 0);
    ck_assert_int_eq(pthread_create(&tb, NULL, caller_main, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    for (int i = 0; i < 50; i++) {
        ck_assert_int_eq(a.cells[i], 300);
        ck_assert_int_eq(b.cells[i], 300);
    }
    ld_pool_free(p);
}
END_TEST

/* The pool's arena, the work area every pass sweeps, sits on 2 MiB
 * boundaries so that transparent huge pages can back it, and is all
 * writable; a size whose bytes overflow is refused. */
START_TEST(pool_arena_is_huge_page_aligned)
{
    char err[LD_ERR_LEN];
    ld_pool *p;
    ck_assert_int_eq(ld_pool_new(1, &p, err), LD_OK);
    const size_t floats = ((size_t)3 << 20) + 5; /* 12 MiB and a bit: no whole huge pages */
    float *arena = ld_pool_arena(p, floats);
    ck_assert_ptr_nonnull(arena);
    ck_assert_uint_eq((uintptr_t)arena % ((uintptr_t)2 << 20), 0);
    ck_assert_uint_ge(ld_pool_arena_floats(p), floats);
    memset(arena, 0x5a, floats * sizeof(float));
    ck_assert_ptr_eq(ld_pool_arena(p, floats / 2), arena); /* a smaller need keeps it */
    ld_pool_free(p);
    ck_assert_ptr_null(ld_alloc_huge(SIZE_MAX / 2, sizeof(float)));
    ck_assert_ptr_null(ld_alloc_huge(SIZE_MAX / 4, sizeof(float))); /* no room to round up */
    void *empty = ld_alloc_huge(0, sizeof(float));
    ck_assert_ptr_nonnull(empty);
    ld_free_aligned(empty);
}
END_TEST

START_TEST(pool_sizes)
{
    char err[LD_ERR_LEN];
    ld_pool *p;
    ck_assert_int_eq(ld_pool_new(0, &p, err), LD_OK); /* one per core */
    ck_assert_int_eq(ld_pool_threads(p), ld_cores());
    ck_assert_int_ge(ld_cores(), 1);
    ld_pool_free(p);
    ck_assert_int_eq(ld_pool_new(100000, &p, err), LD_EINVAL);
    ck_assert_ptr_null(p);
    ck_assert_ptr_nonnull(strstr(err, "threads"));
    ld_pool_free(NULL);
}
END_TEST

static Suite *nn_suite(void)
{
    Suite *s = suite_create("nn");
    TCase *tc = tcase_create("kernels");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, pool_setup, pool_teardown);
    tcase_add_loop_test(tc, gemm_matches_definition, LD_KERNEL_AVX512, LD_KERNEL_COUNT);
    tcase_add_loop_test(tc, gemm_far_a_matches_definition, LD_KERNEL_AVX512, LD_KERNEL_COUNT);
    tcase_add_loop_test(tc, input_map_matches_silu, LD_KERNEL_AVX512, LD_KERNEL_COUNT);
    tcase_add_loop_test(tc, conv_3x3_same_padding_in_bands, LD_KERNEL_AVX512, LD_KERNEL_COUNT);
    tcase_add_test(tc, winograd_bands_are_whole_panels);
    tcase_add_loop_test(tc, conv_downsample_pads_right_and_bottom, LD_KERNEL_AVX512,
                        LD_KERNEL_COUNT);
    tcase_add_loop_test(tc, conv_pointwise, LD_KERNEL_AVX512, LD_KERNEL_COUNT);
    tcase_add_loop_test(tc, conv_with_input_map_and_accumulate, LD_KERNEL_AVX512, LD_KERNEL_COUNT);
    tcase_add_loop_test(tc, group_norm_matches_definition, LD_KERNEL_AVX512, LD_KERNEL_COUNT);
    tcase_add_loop_test(tc, attention_matches_definition, LD_KERNEL_AVX512, LD_KERNEL_COUNT);
    suite_add_tcase(s, tc);
    TCase *tp = tcase_create("pool");
    tcase_set_timeout(tp, 600);
    tcase_add_test(tp, pool_visits_every_index_once);
    tcase_add_test(tp, pool_runs_loops_one_after_another);
    tcase_add_test(tp, pool_workers_sleep_once_the_spin_ends);
    tcase_add_test(tp, pool_nested_loops_run_serially);
    tcase_add_test(tp, pool_callers_on_other_threads_take_turns);
    tcase_add_test(tp, pool_sizes);
    tcase_add_test(tp, pool_arena_is_huge_page_aligned);
    suite_add_tcase(s, tp);
    return s;
}

int main(void)
{
    return run_suite(nn_suite());
}
