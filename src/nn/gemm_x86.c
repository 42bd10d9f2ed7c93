/* The x86-64 micro-kernels, compiled for their instruction sets function by
 * function (target attributes), so the rest of the build stays portable and
 * the CPU's features (cpuid, with the OS's consent to save the registers)
 * decide at run time which one runs.
 *
 * Both keep a whole tile of C in registers and, for each step along k, load
 * one row of the packed B panel and broadcast one element of each row of A:
 *   AVX-512: 8 rows × 48 columns = 24 zmm accumulators, 3 loads + 8
 *            broadcasts per 24 FMAs;
 *   AVX2:    4 rows × 24 columns = 12 ymm accumulators, 3 loads + 4
 *            broadcasts per 12 FMAs (16 ymm registers in all). */
#include "gemm.h"

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

/* ---------------- AVX-512: 8 × 48 ---------------- */

#define Z_MR 8
#define Z_NR 48

/* c = acc, or c += acc: 48 floats of one row */
TARGET_AVX512 static inline void z_store_row(float *c, __m512 x0, __m512 x1, __m512 x2,
                                             int accumulate)
{
    if (accumulate) {
        x0 = _mm512_add_ps(x0, _mm512_loadu_ps(c));
        x1 = _mm512_add_ps(x1, _mm512_loadu_ps(c + 16));
        x2 = _mm512_add_ps(x2, _mm512_loadu_ps(c + 32));
    }
    _mm512_storeu_ps(c, x0);
    _mm512_storeu_ps(c + 16, x1);
    _mm512_storeu_ps(c + 32, x2);
}

TARGET_AVX512 static void tile_avx512(int k, const float *const *a, const float *b, float *c,
                                      size_t ldc, int accumulate)
{
    const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5],
                *a6 = a[6], *a7 = a[7];
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00,
           c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00, c40 = c00,
           c41 = c00, c42 = c00, c50 = c00, c51 = c00, c52 = c00, c60 = c00, c61 = c00,
           c62 = c00, c70 = c00, c71 = c00, c72 = c00;
    for (int p = 0; p < k; p++, b += Z_NR) {
        const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16),
                     b2 = _mm512_loadu_ps(b + 32);
        __m512 x;
#define Z_ROW(i)                                                                             \
    x = _mm512_set1_ps(a##i[p]);                                                             \
    c##i##0 = _mm512_fmadd_ps(x, b0, c##i##0);                                               \
    c##i##1 = _mm512_fmadd_ps(x, b1, c##i##1);                                               \
    c##i##2 = _mm512_fmadd_ps(x, b2, c##i##2)
        Z_ROW(0);
        Z_ROW(1);
        Z_ROW(2);
        Z_ROW(3);
        Z_ROW(4);
        Z_ROW(5);
        Z_ROW(6);
        Z_ROW(7);
#undef Z_ROW
    }
    z_store_row(c, c00, c01, c02, accumulate);
    z_store_row(c + ldc, c10, c11, c12, accumulate);
    z_store_row(c + 2 * ldc, c20, c21, c22, accumulate);
    z_store_row(c + 3 * ldc, c30, c31, c32, accumulate);
    z_store_row(c + 4 * ldc, c40, c41, c42, accumulate);
    z_store_row(c + 5 * ldc, c50, c51, c52, accumulate);
    z_store_row(c + 6 * ldc, c60, c61, c62, accumulate);
    z_store_row(c + 7 * ldc, c70, c71, c72, accumulate);
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

/* Winograd's Bᵀ on 16 tiles at a time: the tiles' 6 columns are gathered
 * (stride 4: tiles overlap by 2), the formulas as in winograd.c. */
TARGET_AVX512 static void wino_cols_avx512(const float *row, int tiles, float *const o[6])
{
    const __m512i stride4 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48,
                                              52, 56, 60);
    const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f),
                 five = _mm512_set1_ps(5.0f);
    int tx = 0;
    for (; tx + 16 <= tiles; tx += 16) {
        const float *c = row + 4 * tx;
        const __m512 d0 = _mm512_i32gather_ps(stride4, c, 4),
                     d1 = _mm512_i32gather_ps(stride4, c + 1, 4),
                     d2 = _mm512_i32gather_ps(stride4, c + 2, 4),
                     d3 = _mm512_i32gather_ps(stride4, c + 3, 4),
                     d4 = _mm512_i32gather_ps(stride4, c + 4, 4),
                     d5 = _mm512_i32gather_ps(stride4, c + 5, 4);
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

static const ld_gemm_kernel avx512_kernel = {LD_KERNEL_AVX512, Z_MR, Z_NR, tile_avx512,
                                             map_row_avx512, wino_cols_avx512};

const ld_gemm_kernel *ld_gemm_kernel_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma") ? &avx512_kernel
                                                                                : NULL;
}

/* ---------------- AVX2: 4 × 24 ---------------- */

#define Y_MR 4
#define Y_NR 24

TARGET_AVX2 static inline void y_store_row(float *c, __m256 x0, __m256 x1, __m256 x2,
                                           int accumulate)
{
    if (accumulate) {
        x0 = _mm256_add_ps(x0, _mm256_loadu_ps(c));
        x1 = _mm256_add_ps(x1, _mm256_loadu_ps(c + 8));
        x2 = _mm256_add_ps(x2, _mm256_loadu_ps(c + 16));
    }
    _mm256_storeu_ps(c, x0);
    _mm256_storeu_ps(c + 8, x1);
    _mm256_storeu_ps(c + 16, x2);
}

TARGET_AVX2 static void tile_avx2(int k, const float *const *a, const float *b, float *c,
                                  size_t ldc, int accumulate)
{
    const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00,
           c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
    for (int p = 0; p < k; p++, b += Y_NR) {
        const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8),
                     b2 = _mm256_loadu_ps(b + 16);
        __m256 x;
#define Y_ROW(i)                                                                             \
    x = _mm256_broadcast_ss(a##i + p);                                                       \
    c##i##0 = _mm256_fmadd_ps(x, b0, c##i##0);                                               \
    c##i##1 = _mm256_fmadd_ps(x, b1, c##i##1);                                               \
    c##i##2 = _mm256_fmadd_ps(x, b2, c##i##2)
        Y_ROW(0);
        Y_ROW(1);
        Y_ROW(2);
        Y_ROW(3);
#undef Y_ROW
    }
    y_store_row(c, c00, c01, c02, accumulate);
    y_store_row(c + ldc, c10, c11, c12, accumulate);
    y_store_row(c + 2 * ldc, c20, c21, c22, accumulate);
    y_store_row(c + 3 * ldc, c30, c31, c32, accumulate);
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

static const ld_gemm_kernel avx2_kernel = {LD_KERNEL_AVX2, Y_MR, Y_NR, tile_avx2, map_row_avx2,
                                           wino_cols_avx2};

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
