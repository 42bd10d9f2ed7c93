/* The x86-64 micro-kernels, compiled for their instruction sets function by
 * function (target attributes), so the rest of the build stays portable and
 * the CPU's features (cpuid, with the OS's consent to save the registers)
 * decide at run time which one runs.
 *
 * Both keep a whole tile of C in registers and, for each step along k, load
 * one row of the packed B panel and broadcast one element of each row of A
 * (full width below; narrower tiles for a panel's last columns):
 *   AVX-512: 8 rows × 48 columns = 24 zmm accumulators, 3 loads + 8
 *            broadcasts per 24 FMAs;
 *   AVX2:    4 rows × 24 columns = 12 ymm accumulators, 3 loads + 4
 *            broadcasts per 12 FMAs (16 ymm registers in all). */
#include "gemm.h"
#include "winograd_weights.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
#define TARGET_AVX2 __attribute__((target("avx2,fma")))

/* ---------------- SiLU ----------------
 * exp as Cephes' expf does it: n = round(x·log2 e), r = x - n·ln 2 (in two
 * parts), e^r by its degree-6 polynomial, times 2^n; within 2 ulp of expf
 * over the range below.  Inputs are clamped to where e^x is a finite
 * float: for silu(v) = v / (1 + e^-v) with v < -87.3 that gives about
 * -1e-36 where expf overflows to give -0. */
#define EXP_HI 88.3762626647949f
#define EXP_LO -87.3365447504f
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f
#define LN2_LO -2.12194440e-4f
#define P0 1.9875691500e-4f
#define P1 1.3981999507e-3f
#define P2 8.3334519073e-3f
#define P3 4.1665795894e-2f
#define P4 1.6666665459e-1f
#define P5 5.0000001201e-1f

/* The tiles that read an A too large to stay in L2 (tile_far_a) prefetch
 * each of its rows A_PREFETCH floats ahead, once per cache line: with one
 * stream per row the hardware's prefetchers fall behind (8-10 % slower
 * Winograd products at 512 channels, measured); for an A in L2 the extra
 * loads cost 3-5 %, so the plain tile serves those.  The AVX2 tile, with
 * twice the prefetches per multiply-add, measured 12 % slower with them:
 * it has none. */
#define A_LINE 16
#define A_PREFETCH 64

/* ---------------- AVX-512: 8 × 48 ---------------- */

#define Z_MR 8
#define Z_NR 48

/* The tile's body for `vecs` vectors of 16 columns (1 to 3), B's rows Z_NR
 * apart whatever the width: the narrow ones serve a panel's last columns,
 * so a product whose width is not a multiple of 48 wastes no arithmetic on
 * padding.  Inlined with a constant `vecs`, the loops unroll and the
 * accumulators live in registers. */
TARGET_AVX512 static inline __attribute__((always_inline)) void
z_tile(int k, const float *const *a, const float *b, float *c, size_t ldc, int accumulate,
       const int vecs, const int prefetch_a)
{
    __m512 acc[Z_MR][3];
    for (int i = 0; i < Z_MR; i++)
        for (int v = 0; v < vecs; v++)
            acc[i][v] = _mm512_setzero_ps();
    for (int p = 0; p < k; p++, b += Z_NR) {
        if (prefetch_a && p % A_LINE == 0)
            for (int i = 0; i < Z_MR; i++)
                _mm_prefetch((const char *)(a[i] + p + A_PREFETCH), _MM_HINT_T0);
        __m512 bv[3];
        for (int v = 0; v < vecs; v++)
            bv[v] = _mm512_loadu_ps(b + 16 * v);
        for (int i = 0; i < Z_MR; i++) {
            const __m512 x = _mm512_set1_ps(a[i][p]);
            for (int v = 0; v < vecs; v++)
                acc[i][v] = _mm512_fmadd_ps(x, bv[v], acc[i][v]);
        }
    }
    for (int i = 0; i < Z_MR; i++)
        for (int v = 0; v < vecs; v++) {
            float *dst = c + i * ldc + 16 * v;
            const __m512 sum = accumulate ? _mm512_add_ps(acc[i][v], _mm512_loadu_ps(dst))
                                          : acc[i][v];
            _mm512_storeu_ps(dst, sum);
        }
}

TARGET_AVX512 static void tile_avx512(int k, const float *const *a, const float *b, float *c,
                                      size_t ldc, int accumulate)
{
    z_tile(k, a, b, c, ldc, accumulate, 3, 0);
}

TARGET_AVX512 static void tile_avx512_far_a(int k, const float *const *a, const float *b,
                                            float *c, size_t ldc, int accumulate)
{
    z_tile(k, a, b, c, ldc, accumulate, 3, 1);
}

TARGET_AVX512 static void tile_avx512_32(int k, const float *const *a, const float *b, float *c,
                                         size_t ldc, int accumulate)
{
    z_tile(k, a, b, c, ldc, accumulate, 2, 0);
}

TARGET_AVX512 static void tile_avx512_16(int k, const float *const *a, const float *b, float *c,
                                         size_t ldc, int accumulate)
{
    z_tile(k, a, b, c, ldc, accumulate, 1, 0);
}

TARGET_AVX512 static inline __m512 z_exp(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_LO)), _mm512_set1_ps(EXP_HI));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    __m512 p = _mm512_set1_ps(P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P5));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

TARGET_AVX512 static inline __m512 z_map(__m512 v, __m512 scale, __m512 shift, int silu)
{
    v = _mm512_fmadd_ps(v, scale, shift);
    if (!silu)
        return v;
    const __m512 e = z_exp(_mm512_sub_ps(_mm512_setzero_ps(), v));
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

TARGET_AVX512 static void map_row_avx512(const float *src, float *dst, int n, float scale,
                                         float shift, int silu)
{
    const __m512 vs = _mm512_set1_ps(scale), vb = _mm512_set1_ps(shift);
    int x = 0;
    for (; x + 16 <= n; x += 16)
        _mm512_storeu_ps(dst + x, z_map(_mm512_loadu_ps(src + x), vs, vb, silu));
    if (x < n) { /* the tail under a mask: no read or write past n */
        const __mmask16 m = (__mmask16)((1u << (n - x)) - 1);
        _mm512_mask_storeu_ps(dst + x, m, z_map(_mm512_maskz_loadu_ps(m, src + x), vs, vb, silu));
    }
}

/* Winograd's Bᵀ down six rows, 16 columns at a time (formulas as in
 * winograd.c); the tail under a mask */
TARGET_AVX512 static inline void z_bt_rows(const float *const d[6], float *const t[6], int x,
                                           __mmask16 m)
{
    const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f),
                 five = _mm512_set1_ps(5.0f);
    const __m512 d0 = _mm512_maskz_loadu_ps(m, d[0] + x), d1 = _mm512_maskz_loadu_ps(m, d[1] + x),
                 d2 = _mm512_maskz_loadu_ps(m, d[2] + x), d3 = _mm512_maskz_loadu_ps(m, d[3] + x),
                 d4 = _mm512_maskz_loadu_ps(m, d[4] + x), d5 = _mm512_maskz_loadu_ps(m, d[5] + x);
    const __m512 d4_d2 = _mm512_sub_ps(d4, d2);
    _mm512_mask_storeu_ps(t[0] + x, m, _mm512_fmadd_ps(four, d0, _mm512_fnmadd_ps(five, d2, d4)));
    _mm512_mask_storeu_ps(t[1] + x, m,
                          _mm512_fnmadd_ps(four, _mm512_add_ps(d1, d2), _mm512_add_ps(d3, d4)));
    _mm512_mask_storeu_ps(t[2] + x, m,
                          _mm512_fmadd_ps(four, _mm512_sub_ps(d1, d2), _mm512_sub_ps(d4, d3)));
    _mm512_mask_storeu_ps(t[3] + x, m, _mm512_fmadd_ps(two, _mm512_sub_ps(d3, d1), d4_d2));
    _mm512_mask_storeu_ps(t[4] + x, m, _mm512_fmadd_ps(two, _mm512_sub_ps(d1, d3), d4_d2));
    _mm512_mask_storeu_ps(t[5] + x, m, _mm512_fmadd_ps(four, d1, _mm512_fnmadd_ps(five, d3, d5)));
}

TARGET_AVX512 static void wino_rows_avx512(const float *const d[6], float *const t[6], int n)
{
    int x = 0;
    for (; x + 16 <= n; x += 16)
        z_bt_rows(d, t, x, (__mmask16)0xFFFF);
    if (x < n)
        z_bt_rows(d, t, x, (__mmask16)((1u << (n - x)) - 1));
}

/* Winograd's Bᵀ on 16 tiles at a time.  Tile l's six columns start at
 * c[4l], so columns 0..3 of the 16 tiles are the 64 floats c[0..63]
 * de-interleaved by four (two-source permutes, then halves joined), and
 * columns 4 and 5 are columns 0 and 1 moved one tile along, the last tile
 * taking c[64] and c[65]. */
TARGET_AVX512 static inline __m512 z_every_fourth(__m512 a, __m512 b, __m512 c, __m512 d,
                                                  __m512i pick)
{
    const __m512 ab = _mm512_permutex2var_ps(a, pick, b), cd = _mm512_permutex2var_ps(c, pick, d);
    return _mm512_shuffle_f32x4(ab, cd, 0x44); /* low halves: tiles 0-7, then 8-15 */
}

TARGET_AVX512 static inline __m512 z_next_tile(__m512 col, const float *after)
{
    const __m512i last = _mm512_castps_si512(_mm512_maskz_loadu_ps(1, after));
    return _mm512_castsi512_ps(_mm512_alignr_epi32(last, _mm512_castps_si512(col), 1));
}

TARGET_AVX512 static void wino_cols_avx512(const float *row, int tiles, float *const o[6])
{
    const __m512i pick0 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i one = _mm512_set1_epi32(1);
    const __m512i pick1 = _mm512_add_epi32(pick0, one), pick2 = _mm512_add_epi32(pick1, one),
                  pick3 = _mm512_add_epi32(pick2, one);
    const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f),
                 five = _mm512_set1_ps(5.0f);
    int tx = 0;
    for (; tx + 16 <= tiles; tx += 16) {
        const float *c = row + 4 * tx;
        const __m512 a = _mm512_loadu_ps(c), b = _mm512_loadu_ps(c + 16),
                     cc = _mm512_loadu_ps(c + 32), dd = _mm512_loadu_ps(c + 48);
        const __m512 d0 = z_every_fourth(a, b, cc, dd, pick0),
                     d1 = z_every_fourth(a, b, cc, dd, pick1),
                     d2 = z_every_fourth(a, b, cc, dd, pick2),
                     d3 = z_every_fourth(a, b, cc, dd, pick3);
        const __m512 d4 = z_next_tile(d0, c + 64), d5 = z_next_tile(d1, c + 65);
        const __m512 d4_d2 = _mm512_sub_ps(d4, d2);
        _mm512_storeu_ps(o[0] + tx, _mm512_fmadd_ps(four, d0, _mm512_fnmadd_ps(five, d2, d4)));
        _mm512_storeu_ps(o[1] + tx, _mm512_fnmadd_ps(four, _mm512_add_ps(d1, d2),
                                                     _mm512_add_ps(d3, d4)));
        _mm512_storeu_ps(o[2] + tx, _mm512_fmadd_ps(four, _mm512_sub_ps(d1, d2),
                                                    _mm512_sub_ps(d4, d3)));
        _mm512_storeu_ps(o[3] + tx, _mm512_fmadd_ps(two, _mm512_sub_ps(d3, d1), d4_d2));
        _mm512_storeu_ps(o[4] + tx, _mm512_fmadd_ps(two, _mm512_sub_ps(d1, d3), d4_d2));
        _mm512_storeu_ps(o[5] + tx, _mm512_fmadd_ps(four, d1, _mm512_fnmadd_ps(five, d3, d5)));
    }
    if (tx < tiles) {
        float *rest[6];
        for (int k = 0; k < 6; k++)
            rest[k] = o[k] + tx;
        ld_wino_cols_generic(row + 4 * tx, tiles - tx, rest);
    }
}

/* The 4 outputs of each of 16 tiles, y_k[tile] for k = 0..3, in memory
 * order row[4·tile + k]: a 4x4 transpose within each 128-bit lane, then of
 * the lanes themselves. */
TARGET_AVX512 static inline void z_store_interleaved(float *row, __m512 y0, __m512 y1,
                                                     __m512 y2, __m512 y3, int accumulate)
{
    const __m512 t0 = _mm512_unpacklo_ps(y0, y1), t1 = _mm512_unpackhi_ps(y0, y1),
                 t2 = _mm512_unpacklo_ps(y2, y3), t3 = _mm512_unpackhi_ps(y2, y3);
    /* u_j, lane l: tile 4l + j's four outputs */
    const __m512 u0 = _mm512_shuffle_ps(t0, t2, 0x44), u1 = _mm512_shuffle_ps(t0, t2, 0xEE),
                 u2 = _mm512_shuffle_ps(t1, t3, 0x44), u3 = _mm512_shuffle_ps(t1, t3, 0xEE);
    const __m512 v0 = _mm512_shuffle_f32x4(u0, u1, 0x44), v1 = _mm512_shuffle_f32x4(u2, u3, 0x44),
                 v2 = _mm512_shuffle_f32x4(u0, u1, 0xEE), v3 = _mm512_shuffle_f32x4(u2, u3, 0xEE);
    __m512 out[4] = {_mm512_shuffle_f32x4(v0, v1, 0x88), _mm512_shuffle_f32x4(v0, v1, 0xDD),
                     _mm512_shuffle_f32x4(v2, v3, 0x88), _mm512_shuffle_f32x4(v2, v3, 0xDD)};
    for (int q = 0; q < 4; q++) {
        if (accumulate)
            out[q] = _mm512_add_ps(out[q], _mm512_loadu_ps(row + 16 * q));
        _mm512_storeu_ps(row + 16 * q, out[q]);
    }
}

/* Winograd's (Aᵀ M) A + bias on 16 tiles at a time; formulas as in
 * ld_wino_out_row_generic */
TARGET_AVX512 static void wino_out_row_avx512(const float *const s[6], int tiles, float bias,
                                              float *row, int accumulate)
{
    const __m512 b = _mm512_set1_ps(bias), two = _mm512_set1_ps(2.0f),
                 four = _mm512_set1_ps(4.0f), eight = _mm512_set1_ps(8.0f);
    int tx = 0;
    for (; tx + 16 <= tiles; tx += 16) {
        const __m512 s0 = _mm512_loadu_ps(s[0] + tx), s1 = _mm512_loadu_ps(s[1] + tx),
                     s2 = _mm512_loadu_ps(s[2] + tx), s3 = _mm512_loadu_ps(s[3] + tx),
                     s4 = _mm512_loadu_ps(s[4] + tx), s5 = _mm512_loadu_ps(s[5] + tx);
        const __m512 p12 = _mm512_add_ps(s1, s2), d12 = _mm512_sub_ps(s1, s2);
        const __m512 p34 = _mm512_add_ps(s3, s4), d34 = _mm512_sub_ps(s3, s4);
        const __m512 y0 = _mm512_add_ps(_mm512_add_ps(s0, p12), _mm512_add_ps(p34, b));
        const __m512 y1 = _mm512_fmadd_ps(two, d34, _mm512_add_ps(d12, b));
        const __m512 y2 = _mm512_fmadd_ps(four, p34, _mm512_add_ps(p12, b));
        const __m512 y3 = _mm512_fmadd_ps(eight, d34, _mm512_add_ps(_mm512_add_ps(d12, s5), b));
        z_store_interleaved(row + 4 * tx, y0, y1, y2, y3, accumulate);
    }
    if (tx < tiles) {
        const float *rest[6];
        for (int k = 0; k < 6; k++)
            rest[k] = s[k] + tx;
        ld_wino_out_row_generic(rest, tiles - tx, bias, row + 4 * tx, accumulate);
    }
}

TARGET_AVX512 static double exp_sum_avx512(float *row, int n, float shift)
{
    const __m512 s = _mm512_set1_ps(shift);
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    int x = 0;
    for (; x + 16 <= n; x += 16) {
        const __m512 e = z_exp(_mm512_sub_ps(_mm512_loadu_ps(row + x), s));
        _mm512_storeu_ps(row + x, e);
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(
                                   _mm512_castps_pd(e), 1))));
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi)) + ld_exp_sum_generic(row + x, n - x, shift);
}

TARGET_AVX512 static void even_avx512(const float *src, float *dst, int n)
{
    const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                            28, 30);
    int x = 0;
    for (; x + 16 <= n; x += 16)
        _mm512_storeu_ps(dst + x, _mm512_permutex2var_ps(_mm512_loadu_ps(src + 2 * x), evens,
                                                         _mm512_loadu_ps(src + 2 * x + 16)));
    ld_even_generic(src + 2 * x, dst + x, n - x);
}

/* 16 floats at a time as two vectors of 8 doubles, two accumulators each */
TARGET_AVX512 static void sums_avx512(const float *x, size_t n, double *sum, double *sum_sq)
{
    __m512d s0 = _mm512_setzero_pd(), s1 = s0, q0 = s0, q1 = s0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        const __m512d hi =
            _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        s0 = _mm512_add_pd(s0, lo);
        s1 = _mm512_add_pd(s1, hi);
        q0 = _mm512_fmadd_pd(lo, lo, q0);
        q1 = _mm512_fmadd_pd(hi, hi, q1);
    }
    double tail_sum, tail_sq;
    ld_sums_generic(x + i, n - i, &tail_sum, &tail_sq);
    *sum = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1)) + tail_sum;
    *sum_sq = _mm512_reduce_add_pd(_mm512_add_pd(q0, q1)) + tail_sq;
}

TARGET_AVX512 static void wino_weights_avx512(const float *w, int count, float *const u[36])
{
    ld_wino_weights_body(w, count, u);
}

/* ld_conv_row_fn: 4 output channels × 32 columns (LD_CONV_ROW_BLOCK) in 8
 * accumulators; each tap's two vectors are loaded once for the 4 channels. */
_Static_assert(LD_CONV_ROW_BLOCK == 32, "conv_row_avx512 computes blocks of two zmm");
TARGET_AVX512 static void conv_row_avx512(const float *const *tap, int taps, const float *w,
                                          const float *b, int out_ch, int width, float *out,
                                          size_t out_stride, int accumulate)
{
    for (int x0 = 0; x0 < width; x0 += LD_CONV_ROW_BLOCK) {
        const int n = width - x0 < LD_CONV_ROW_BLOCK ? width - x0 : LD_CONV_ROW_BLOCK;
        const __mmask16 m0 = n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
        const __mmask16 m1 = n >= 32 ? 0xFFFF : n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0;
        for (int co0 = 0; co0 < out_ch; co0 += 4) {
            const int rows = out_ch - co0 < 4 ? out_ch - co0 : 4;
            const float *wr[4]; /* rows past out_ch repeat the first; dropped */
            __m512 acc[4][2];
            for (int i = 0; i < 4; i++) {
                const int co = co0 + (i < rows ? i : 0);
                wr[i] = w + (size_t)co * taps;
                acc[i][0] = acc[i][1] = _mm512_set1_ps(b ? b[co] : 0.0f);
            }
            for (int t = 0; t < taps; t++) {
                const __m512 p0 = _mm512_loadu_ps(tap[t] + x0),
                             p1 = _mm512_loadu_ps(tap[t] + x0 + 16);
                for (int i = 0; i < 4; i++) {
                    const __m512 wt = _mm512_set1_ps(wr[i][t]);
                    acc[i][0] = _mm512_fmadd_ps(wt, p0, acc[i][0]);
                    acc[i][1] = _mm512_fmadd_ps(wt, p1, acc[i][1]);
                }
            }
            for (int i = 0; i < rows; i++) {
                float *o = out + (size_t)(co0 + i) * out_stride + x0;
                if (accumulate) {
                    acc[i][0] = _mm512_add_ps(acc[i][0], _mm512_maskz_loadu_ps(m0, o));
                    acc[i][1] = _mm512_add_ps(acc[i][1], _mm512_maskz_loadu_ps(m1, o + 16));
                }
                _mm512_mask_storeu_ps(o, m0, acc[i][0]);
                _mm512_mask_storeu_ps(o + 16, m1, acc[i][1]);
            }
        }
    }
}

static const ld_gemm_kernel avx512_kernel = {
    .kind = LD_KERNEL_AVX512,
    .mr = Z_MR,
    .nr = Z_NR,
    .tile = tile_avx512,
    .tile_far_a = tile_avx512_far_a,
    .narrow_tile = {tile_avx512_16, tile_avx512_32},
    .vector = 16,
    .map_row = map_row_avx512,
    .wino_weights = wino_weights_avx512,
    .conv_row = conv_row_avx512,
    .wino_rows = wino_rows_avx512,
    .wino_cols = wino_cols_avx512,
    .wino_out_row = wino_out_row_avx512,
    .exp_sum = exp_sum_avx512,
    .even = even_avx512,
    .sums = sums_avx512,
};

const ld_gemm_kernel *ld_gemm_kernel_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma") ? &avx512_kernel
                                                                                : NULL;
}

/* ---------------- AVX2: 4 × 24 ---------------- */

#define Y_MR 4
#define Y_NR 24

/* As z_tile: `vecs` vectors of 8 columns (1 to 3), B's rows Y_NR apart. */
TARGET_AVX2 static inline __attribute__((always_inline)) void
y_tile(int k, const float *const *a, const float *b, float *c, size_t ldc, int accumulate,
       const int vecs)
{
    __m256 acc[Y_MR][3];
    for (int i = 0; i < Y_MR; i++)
        for (int v = 0; v < vecs; v++)
            acc[i][v] = _mm256_setzero_ps();
    for (int p = 0; p < k; p++, b += Y_NR) {
        __m256 bv[3];
        for (int v = 0; v < vecs; v++)
            bv[v] = _mm256_loadu_ps(b + 8 * v);
        for (int i = 0; i < Y_MR; i++) {
            const __m256 x = _mm256_broadcast_ss(a[i] + p);
            for (int v = 0; v < vecs; v++)
                acc[i][v] = _mm256_fmadd_ps(x, bv[v], acc[i][v]);
        }
    }
    for (int i = 0; i < Y_MR; i++)
        for (int v = 0; v < vecs; v++) {
            float *dst = c + i * ldc + 8 * v;
            const __m256 sum = accumulate ? _mm256_add_ps(acc[i][v], _mm256_loadu_ps(dst))
                                          : acc[i][v];
            _mm256_storeu_ps(dst, sum);
        }
}

TARGET_AVX2 static void tile_avx2(int k, const float *const *a, const float *b, float *c,
                                  size_t ldc, int accumulate)
{
    y_tile(k, a, b, c, ldc, accumulate, 3);
}

TARGET_AVX2 static void tile_avx2_16(int k, const float *const *a, const float *b, float *c,
                                     size_t ldc, int accumulate)
{
    y_tile(k, a, b, c, ldc, accumulate, 2);
}

TARGET_AVX2 static void tile_avx2_8(int k, const float *const *a, const float *b, float *c,
                                    size_t ldc, int accumulate)
{
    y_tile(k, a, b, c, ldc, accumulate, 1);
}

TARGET_AVX2 static inline __m256 y_exp(__m256 x)
{
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_LO)), _mm256_set1_ps(EXP_HI));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    __m256 p = _mm256_set1_ps(P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P5));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* 2^n into the exponent bits: n is within [-126, 127] after the clamp */
    const __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

TARGET_AVX2 static inline __m256 y_map(__m256 v, __m256 scale, __m256 shift, int silu)
{
    v = _mm256_fmadd_ps(v, scale, shift);
    if (!silu)
        return v;
    const __m256 e = y_exp(_mm256_sub_ps(_mm256_setzero_ps(), v));
    return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

TARGET_AVX2 static void map_row_avx2(const float *src, float *dst, int n, float scale,
                                     float shift, int silu)
{
    const __m256 vs = _mm256_set1_ps(scale), vb = _mm256_set1_ps(shift);
    int x = 0;
    for (; x + 8 <= n; x += 8)
        _mm256_storeu_ps(dst + x, y_map(_mm256_loadu_ps(src + x), vs, vb, silu));
    if (x < n) /* the last few through the portable map */
        ld_map_row_generic(src + x, dst + x, n - x, scale, shift, silu);
}

/* Winograd's Bᵀ on 8 tiles at a time, as wino_cols_avx512 */
TARGET_AVX2 static void wino_cols_avx2(const float *row, int tiles, float *const o[6])
{
    const __m256i stride4 = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    const __m256 two = _mm256_set1_ps(2.0f), four = _mm256_set1_ps(4.0f),
                 five = _mm256_set1_ps(5.0f);
    int tx = 0;
    for (; tx + 8 <= tiles; tx += 8) {
        const float *c = row + 4 * tx;
        const __m256 d0 = _mm256_i32gather_ps(c, stride4, 4),
                     d1 = _mm256_i32gather_ps(c + 1, stride4, 4),
                     d2 = _mm256_i32gather_ps(c + 2, stride4, 4),
                     d3 = _mm256_i32gather_ps(c + 3, stride4, 4),
                     d4 = _mm256_i32gather_ps(c + 4, stride4, 4),
                     d5 = _mm256_i32gather_ps(c + 5, stride4, 4);
        const __m256 d4_d2 = _mm256_sub_ps(d4, d2);
        _mm256_storeu_ps(o[0] + tx, _mm256_fmadd_ps(four, d0, _mm256_fnmadd_ps(five, d2, d4)));
        _mm256_storeu_ps(o[1] + tx, _mm256_fnmadd_ps(four, _mm256_add_ps(d1, d2),
                                                     _mm256_add_ps(d3, d4)));
        _mm256_storeu_ps(o[2] + tx, _mm256_fmadd_ps(four, _mm256_sub_ps(d1, d2),
                                                    _mm256_sub_ps(d4, d3)));
        _mm256_storeu_ps(o[3] + tx, _mm256_fmadd_ps(two, _mm256_sub_ps(d3, d1), d4_d2));
        _mm256_storeu_ps(o[4] + tx, _mm256_fmadd_ps(two, _mm256_sub_ps(d1, d3), d4_d2));
        _mm256_storeu_ps(o[5] + tx, _mm256_fmadd_ps(four, d1, _mm256_fnmadd_ps(five, d3, d5)));
    }
    if (tx < tiles) {
        float *rest[6];
        for (int k = 0; k < 6; k++)
            rest[k] = o[k] + tx;
        ld_wino_cols_generic(row + 4 * tx, tiles - tx, rest);
    }
}

TARGET_AVX2 static double exp_sum_avx2(float *row, int n, float shift)
{
    const __m256 s = _mm256_set1_ps(shift);
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
    int x = 0;
    for (; x + 8 <= n; x += 8) {
        const __m256 e = y_exp(_mm256_sub_ps(_mm256_loadu_ps(row + x), s));
        _mm256_storeu_ps(row + x, e);
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double part[4];
    _mm256_storeu_pd(part, _mm256_add_pd(lo, hi));
    return part[0] + part[1] + part[2] + part[3] + ld_exp_sum_generic(row + x, n - x, shift);
}

TARGET_AVX2 static void sums_avx2(const float *x, size_t n, double *sum, double *sum_sq)
{
    __m256d s0 = _mm256_setzero_pd(), s1 = s0, q0 = s0, q1 = s0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        s0 = _mm256_add_pd(s0, lo);
        s1 = _mm256_add_pd(s1, hi);
        q0 = _mm256_fmadd_pd(lo, lo, q0);
        q1 = _mm256_fmadd_pd(hi, hi, q1);
    }
    double part_s[4], part_q[4], tail_sum, tail_sq;
    _mm256_storeu_pd(part_s, _mm256_add_pd(s0, s1));
    _mm256_storeu_pd(part_q, _mm256_add_pd(q0, q1));
    ld_sums_generic(x + i, n - i, &tail_sum, &tail_sq);
    *sum = part_s[0] + part_s[1] + part_s[2] + part_s[3] + tail_sum;
    *sum_sq = part_q[0] + part_q[1] + part_q[2] + part_q[3] + tail_sq;
}

/* As wino_out_row_avx512, 8 tiles at a time: a 4x4 transpose within each
 * 128-bit half, then the halves put in order */
TARGET_AVX2 static void wino_out_row_avx2(const float *const s[6], int tiles, float bias,
                                          float *row, int accumulate)
{
    const __m256 b = _mm256_set1_ps(bias), two = _mm256_set1_ps(2.0f),
                 four = _mm256_set1_ps(4.0f), eight = _mm256_set1_ps(8.0f);
    int tx = 0;
    for (; tx + 8 <= tiles; tx += 8) {
        const __m256 s0 = _mm256_loadu_ps(s[0] + tx), s1 = _mm256_loadu_ps(s[1] + tx),
                     s2 = _mm256_loadu_ps(s[2] + tx), s3 = _mm256_loadu_ps(s[3] + tx),
                     s4 = _mm256_loadu_ps(s[4] + tx), s5 = _mm256_loadu_ps(s[5] + tx);
        const __m256 p12 = _mm256_add_ps(s1, s2), d12 = _mm256_sub_ps(s1, s2);
        const __m256 p34 = _mm256_add_ps(s3, s4), d34 = _mm256_sub_ps(s3, s4);
        const __m256 y0 = _mm256_add_ps(_mm256_add_ps(s0, p12), _mm256_add_ps(p34, b));
        const __m256 y1 = _mm256_fmadd_ps(two, d34, _mm256_add_ps(d12, b));
        const __m256 y2 = _mm256_fmadd_ps(four, p34, _mm256_add_ps(p12, b));
        const __m256 y3 = _mm256_fmadd_ps(eight, d34, _mm256_add_ps(_mm256_add_ps(d12, s5), b));
        const __m256 t0 = _mm256_unpacklo_ps(y0, y1), t1 = _mm256_unpackhi_ps(y0, y1),
                     t2 = _mm256_unpacklo_ps(y2, y3), t3 = _mm256_unpackhi_ps(y2, y3);
        /* u_j, half l: tile 4l + j's four outputs */
        const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
                     u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        __m256 out[4] = {
            _mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u2, u3, 0x20),
            _mm256_permute2f128_ps(u0, u1, 0x31), _mm256_permute2f128_ps(u2, u3, 0x31)};
        float *o = row + 4 * tx;
        for (int q = 0; q < 4; q++) {
            if (accumulate)
                out[q] = _mm256_add_ps(out[q], _mm256_loadu_ps(o + 8 * q));
            _mm256_storeu_ps(o + 8 * q, out[q]);
        }
    }
    if (tx < tiles) {
        const float *rest[6];
        for (int k = 0; k < 6; k++)
            rest[k] = s[k] + tx;
        ld_wino_out_row_generic(rest, tiles - tx, bias, row + 4 * tx, accumulate);
    }
}

TARGET_AVX2 static void wino_weights_avx2(const float *w, int count, float *const u[36])
{
    ld_wino_weights_body(w, count, u);
}

static const ld_gemm_kernel avx2_kernel = {
    .kind = LD_KERNEL_AVX2,
    .mr = Y_MR,
    .nr = Y_NR,
    .tile = tile_avx2,
    .narrow_tile = {tile_avx2_8, tile_avx2_16},
    .vector = 8,
    .map_row = map_row_avx2,
    .wino_weights = wino_weights_avx2,
    .wino_rows = ld_wino_rows_generic,
    .wino_cols = wino_cols_avx2,
    .wino_out_row = wino_out_row_avx2,
    .exp_sum = exp_sum_avx2,
    .even = ld_even_generic,
    .sums = sums_avx2,
};

const ld_gemm_kernel *ld_gemm_kernel_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? &avx2_kernel
                                                                             : NULL;
}

#else /* not x86-64: the portable kernel only */

const ld_gemm_kernel *ld_gemm_kernel_avx512(void)
{
    return NULL;
}

const ld_gemm_kernel *ld_gemm_kernel_avx2(void)
{
    return NULL;
}

#endif
