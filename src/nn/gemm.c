/* The matrix product's driver: kernel choice, the portable micro-kernel,
 * edge tiles, packing B, and the split between a pool's threads.  The
 * vector micro-kernels are in gemm_x86.c. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "gemm.h"
#include "winograd_weights.h"

#include <assert.h>
#include <cblas.h>
#include <string.h>

/* Columns of B packed at a time (per thread, on its stack): a panel of
 * KC×48 floats is 48 KiB, and A's rows for one slice stay in L2. */
#define KC 256

/* ---------------- the portable micro-kernel ---------------- */

#define GENERIC_MR 4
#define GENERIC_NR 16

/* Plain C that compilers vectorise for whatever the build targets. */
static void tile_generic(int k, const float *const *a, const float *b, float *c, size_t ldc,
                         int accumulate)
{
    float acc[GENERIC_MR][GENERIC_NR] = {{0}};
    for (int p = 0; p < k; p++) {
        const float *bp = b + (size_t)p * GENERIC_NR;
        for (int i = 0; i < GENERIC_MR; i++) {
            const float ai = a[i][p];
            for (int j = 0; j < GENERIC_NR; j++)
                acc[i][j] += ai * bp[j];
        }
    }
    for (int i = 0; i < GENERIC_MR; i++) {
        float *row = c + (size_t)i * ldc;
        for (int j = 0; j < GENERIC_NR; j++)
            row[j] = accumulate ? row[j] + acc[i][j] : acc[i][j];
    }
}

void ld_map_row_generic(const float *src, float *dst, int n, float scale, float shift, int silu)
{
    for (int x = 0; x < n; x++)
        dst[x] = src[x] * scale + shift;
    if (silu)
        for (int x = 0; x < n; x++)
            dst[x] = ld_silu(dst[x]);
}

double ld_exp_sum_generic(float *row, int n, float shift)
{
    double sum = 0.0;
    for (int x = 0; x < n; x++) {
        row[x] = expf(row[x] - shift);
        sum += row[x];
    }
    return sum;
}

void ld_even_generic(const float *src, float *dst, int n)
{
    for (int x = 0; x < n; x++)
        dst[x] = src[2 * x];
}

void ld_sums_generic(const float *x, size_t n, double *sum, double *sum_sq)
{
    double s = 0.0, sq = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double v = x[i];
        s += v;
        sq += v * v;
    }
    *sum = s;
    *sum_sq = sq;
}

void ld_wino_weights_generic(const float *w, int count, float *const u[36])
{
    ld_wino_weights_body(w, count, u);
}

static const ld_gemm_kernel generic_kernel = {
    .kind = LD_KERNEL_GENERIC,
    .mr = GENERIC_MR,
    .nr = GENERIC_NR,
    .tile = tile_generic,
    .vector = GENERIC_NR,
    .map_row = ld_map_row_generic,
    .wino_weights = ld_wino_weights_generic,
    .wino_rows = ld_wino_rows_generic,
    .wino_cols = ld_wino_cols_generic,
    .wino_out_row = ld_wino_out_row_generic,
    .exp_sum = ld_exp_sum_generic,
    .even = ld_even_generic,
    .sums = ld_sums_generic,
};

/* The kernel whose elementwise work the CBLAS kernel borrows: the best one
 * this CPU runs (ld_kernel_best's, without a pool). */
static const ld_gemm_kernel *vector_kernel(void)
{
    return ld_gemm_kernel_get(ld_kernel_best());
}

/* OpenBLAS (or whatever CBLAS the build links): for comparison, and the
 * path the benchmark measures its own kernels against.  Its elementwise
 * work is the best kernel's. */
static void blas_map_row(const float *src, float *dst, int n, float scale, float shift, int silu)
{
    vector_kernel()->map_row(src, dst, n, scale, shift, silu);
}

static void blas_wino_weights(const float *w, int count, float *const u[36])
{
    vector_kernel()->wino_weights(w, count, u);
}

static void blas_wino_rows(const float *const d[6], float *const t[6], int n)
{
    vector_kernel()->wino_rows(d, t, n);
}

static void blas_wino_cols(const float *row, int tiles, float *const out[6])
{
    vector_kernel()->wino_cols(row, tiles, out);
}

static void blas_wino_out_row(const float *const sv[6], int tiles, float bias, float *row,
                              int accumulate)
{
    vector_kernel()->wino_out_row(sv, tiles, bias, row, accumulate);
}

static double blas_exp_sum(float *row, int n, float shift)
{
    return vector_kernel()->exp_sum(row, n, shift);
}

static void blas_even(const float *src, float *dst, int n)
{
    vector_kernel()->even(src, dst, n);
}

static void blas_sums(const float *x, size_t n, double *sum, double *sum_sq)
{
    vector_kernel()->sums(x, n, sum, sum_sq);
}

static const ld_gemm_kernel blas_kernel = {
    .kind = LD_KERNEL_BLAS,
    .tile = NULL, /* products go to cblas_sgemm */
    .map_row = blas_map_row,
    .wino_weights = blas_wino_weights,
    .wino_rows = blas_wino_rows,
    .wino_cols = blas_wino_cols,
    .wino_out_row = blas_wino_out_row,
    .exp_sum = blas_exp_sum,
    .even = blas_even,
    .sums = blas_sums,
};

/* ---------------- choosing a kernel ---------------- */

static const char *const kernel_names[] = {
    [LD_KERNEL_AUTO] = "auto",     [LD_KERNEL_AVX512] = "avx512", [LD_KERNEL_AVX2] = "avx2",
    [LD_KERNEL_GENERIC] = "generic", [LD_KERNEL_BLAS] = "blas",
};

const char *ld_kernel_name(ld_kernel kind)
{
    return kind >= 0 && kind < LD_KERNEL_COUNT ? kernel_names[kind] : "?";
}

int ld_kernel_parse(const char *name, ld_kernel *out, char *err)
{
    for (int k = 0; k < LD_KERNEL_COUNT; k++)
        if (strcmp(name, kernel_names[k]) == 0) {
            *out = (ld_kernel)k;
            return LD_OK;
        }
    return ld_fail(err, LD_EINVAL, "unknown kernel '%s' (auto, avx512, avx2, generic, blas)",
                   name);
}

const ld_gemm_kernel *ld_gemm_kernel_get(ld_kernel kind)
{
    switch (kind) {
    case LD_KERNEL_AVX512:
        return ld_gemm_kernel_avx512();
    case LD_KERNEL_AVX2:
        return ld_gemm_kernel_avx2();
    case LD_KERNEL_GENERIC:
        return &generic_kernel;
    case LD_KERNEL_BLAS:
        return &blas_kernel;
    default:
        return NULL;
    }
}

bool ld_kernel_available(ld_kernel kind)
{
    return kind == LD_KERNEL_AUTO || ld_gemm_kernel_get(kind) != NULL;
}

/* The fastest this CPU runs: the widest vectors it has. */
ld_kernel ld_kernel_best(void)
{
    static const ld_kernel by_preference[] = {LD_KERNEL_AVX512, LD_KERNEL_AVX2};
    for (size_t i = 0; i < sizeof by_preference / sizeof *by_preference; i++)
        if (ld_gemm_kernel_get(by_preference[i]))
            return by_preference[i];
    return LD_KERNEL_GENERIC;
}

/* ---------------- tiles ---------------- */

void ld_gemm_tile(const ld_gemm_kernel *kernel, int k, const float *a, size_t lda, int mr,
                  const float *b, float *c, size_t ldc, int nr, int accumulate, bool far_a)
{
    assert(mr >= 1 && mr <= kernel->mr && nr >= 1 && nr <= kernel->nr);
    const float *rows[LD_GEMM_MAX_MR];
    for (int i = 0; i < kernel->mr; i++) /* rows past mr repeat row 0; their sums are dropped */
        rows[i] = a + (i < mr ? (size_t)i * lda : 0);
    /* the narrowest tile that covers nr columns */
    ld_tile_fn tile = far_a && kernel->tile_far_a ? kernel->tile_far_a : kernel->tile;
    int width = kernel->nr;
    for (int v = 0; v < 2 && kernel->narrow_tile[v]; v++)
        if (nr <= (v + 1) * kernel->vector) {
            tile = kernel->narrow_tile[v];
            width = (v + 1) * kernel->vector;
            break;
        }
    if (mr == kernel->mr && nr == width) {
        tile(k, rows, b, c, ldc, accumulate);
        return;
    }
    float edge[LD_GEMM_MAX_MR * LD_GEMM_MAX_NR];
    tile(k, rows, b, edge, (size_t)kernel->nr, 0);
    for (int i = 0; i < mr; i++) {
        float *row = c + (size_t)i * ldc;
        const float *sum = edge + (size_t)i * kernel->nr;
        for (int j = 0; j < nr; j++)
            row[j] = accumulate ? row[j] + sum[j] : sum[j];
    }
}

/* Tile (i0, j0) of ld_gemm_packed's product: rows [i0, i0 + mr) of A
 * against panel j0 / nr, both clipped to C's edges. */
static void packed_tile(const ld_gemm_kernel *kernel, int m, int n, int k, const float *a,
                        size_t lda, const float *b_panels, float *c, size_t ldc, int i0, int j0,
                        bool far_a)
{
    const int mr = kernel->mr, nr = kernel->nr;
    ld_gemm_tile(kernel, k, a + (size_t)i0 * lda, lda, m - i0 < mr ? m - i0 : mr,
                 b_panels + (size_t)(j0 / nr) * k * nr, c + (size_t)i0 * ldc + j0, ldc,
                 n - j0 < nr ? n - j0 : nr, 0, far_a);
}

void ld_gemm_packed(const ld_gemm_kernel *kernel, int m, int n, int k, const float *a,
                    size_t lda, const float *b_panels, float *c, size_t ldc)
{
    const int mr = kernel->mr, nr = kernel->nr;
    if ((size_t)m * (size_t)k >= LD_GEMM_FAR_A_FLOATS) {
        /* A far: each row tile of A (at most 8 × k floats) meets every panel
         * while it is in L1, read from afar once (prefetched by the first
         * tile, where the kernel has tile_far_a) instead of once per panel;
         * a Winograd band's panels of one position stay in L2.  5 % faster
         * Winograd products at 512 channels (measured at 64² and 128²). */
        for (int i0 = 0; i0 < m; i0 += mr)
            for (int j0 = 0; j0 < n; j0 += nr)
                packed_tile(kernel, m, n, k, a, lda, b_panels, c, ldc, i0, j0, j0 == 0);
        return;
    }
    for (int j0 = 0; j0 < n; j0 += nr)
        for (int i0 = 0; i0 < m; i0 += mr)
            packed_tile(kernel, m, n, k, a, lda, b_panels, c, ldc, i0, j0, false);
}

/* ---------------- the general product ---------------- */

void ld_gemm_pack_panel(const float *b, size_t ldb, int transposed, int k0, int kc, int j0,
                        int cols, int nr, float *panel)
{
    if (transposed) {
        for (int jj = 0; jj < cols; jj++) {
            const float *src = b + (size_t)(j0 + jj) * ldb + k0;
            for (int p = 0; p < kc; p++)
                panel[(size_t)p * nr + jj] = src[p];
        }
        for (int p = 0; p < kc && cols < nr; p++)
            memset(panel + (size_t)p * nr + cols, 0, (size_t)(nr - cols) * sizeof(float));
        return;
    }
    for (int p = 0; p < kc; p++) {
        const float *src = b + (size_t)(k0 + p) * ldb + j0;
        float *dst = panel + (size_t)p * nr;
        memcpy(dst, src, (size_t)cols * sizeof(float));
        if (cols < nr)
            memset(dst + cols, 0, (size_t)(nr - cols) * sizeof(float));
    }
}

typedef struct {
    const ld_gemm_kernel *kernel;
    int m, n, k;
    const float *a, *b;
    float *c;
    size_t lda, ldb, ldc;
    int b_transposed;
    int accumulate;
} gemm_job;

/* Column panels [first, last) of C, a slice of k at a time: the slice of A
 * (m × KC) stays in L2 while every panel of B is packed against it and
 * every row tile of A runs over the panel; C takes each slice's share. */
static void gemm_panels(void *ctx, int first, int last, int thread)
{
    (void)thread;
    const gemm_job *j = ctx;
    const ld_gemm_kernel *kern = j->kernel;
    const int mr = kern->mr, nr = kern->nr;
    _Alignas(64) float panel[KC * LD_GEMM_MAX_NR];
    for (int k0 = 0; k0 < j->k; k0 += KC) {
        const int kc = j->k - k0 < KC ? j->k - k0 : KC;
        const int accumulate = j->accumulate || k0 > 0;
        for (int pn = first; pn < last; pn++) {
            const int j0 = pn * nr;
            const int cols = j->n - j0 < nr ? j->n - j0 : nr;
            ld_gemm_pack_panel(j->b, j->ldb, j->b_transposed, k0, kc, j0, cols, nr, panel);
            for (int i0 = 0; i0 < j->m; i0 += mr)
                ld_gemm_tile(kern, kc, j->a + (size_t)i0 * j->lda + k0, j->lda,
                             j->m - i0 < mr ? j->m - i0 : mr, panel,
                             j->c + (size_t)i0 * j->ldc + j0, j->ldc, cols, accumulate,
                             false);
        }
    }
}

typedef struct {
    int m, n, k;
    const float *a, *b;
    float *c;
    int lda, ldb, ldc;
    int b_transposed;
    float beta;
} blas_job;

static void blas_rows(void *ctx, int first, int last, int thread)
{
    (void)thread;
    const blas_job *j = ctx;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, j->b_transposed ? CblasTrans : CblasNoTrans,
                last - first, j->n, j->k, 1.0f,
                j->a + (size_t)first * j->lda, j->lda, j->b, j->ldb, j->beta,
                j->c + (size_t)first * j->ldc, j->ldc);
}

void ld_gemm_ex(ld_pool *pool, int m, int n, int k, const float *a, int lda, const float *b,
                int ldb, int b_transposed, float *c, int ldc, int accumulate)
{
    assert(k > 0);
    if (m <= 0 || n <= 0)
        return;
    const ld_gemm_kernel *kern = ld_pool_gemm(pool);
    if (!kern->tile) {
        const blas_job job = {m, n, k, a, b, c, lda, ldb, ldc, b_transposed,
                              accumulate ? 1.0f : 0.0f};
        ld_pool_for(pool, m, blas_rows, (void *)&job);
        return;
    }
    const gemm_job job = {kern, m, n, k, a, b, c, (size_t)lda, (size_t)ldb, (size_t)ldc,
                          b_transposed, accumulate};
    ld_pool_for(pool, (n + kern->nr - 1) / kern->nr, gemm_panels, (void *)&job);
}

void ld_gemm(ld_pool *pool, int m, int n, int k, const float *a, int lda, const float *b,
             int ldb, float *c, int ldc, int accumulate)
{
    ld_gemm_ex(pool, m, n, k, a, lda, b, ldb, 0, c, ldc, accumulate);
}
