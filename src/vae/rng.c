/* torch's CPU generator, bit for bit:
 *   g = torch.Generator("cpu").manual_seed(seed)
 *   torch.randn(n, generator=g, dtype=torch.float32)
 * so that a seed given to latentd draws the noise diffusers draws for
 * latent_dist.sample(generator=g).  Read from PyTorch's ATen sources
 * (CPUGeneratorImpl, MT19937RNGEngine.h, DistributionsHelper.h,
 * TransformationHelper.h, native/cpu/DistributionTemplates.h, avx_mathfun.h).
 *
 * The generator is an mt19937 seeded with the seed's low 32 bits: torch keeps
 * the whole 64-bit seed as its "initial seed", but seeds that differ only
 * above bit 31 draw the same numbers.
 *
 * randn has two paths:
 * - n >= 16 (normal_fill): n uniform floats, 24 random bits each; then
 *   Box–Muller on each block of 16 in place (elements 0-7 give the radii,
 *   8-15 the angles).  When n is not a multiple of 16, the last 16 elements
 *   are drawn anew and transformed again, overwriting what the blocks left.
 * - n < 16: at::normal_distribution<double>, two 53-bit uniforms per pair in
 *   double with libm; the pair's second value waits in the generator for the
 *   next draw (next_double_normal_sample).
 *
 * The blocks of 16 follow torch's AVX2 kernel (Cephes' logf and sincosf in
 * float, from avx_mathfun.h), which is what torch runs on an x86 CPU with
 * AVX2.  Torch's builds compile that kernel with FMA and GCC's default
 * contraction, so some of its multiply-adds round once: those are the fmaf()
 * calls below, and every other product and sum is a separate, rounded step.
 * (Torch's scalar kernel -- ATEN_CPU_CAPABILITY=default, AVX-512 builds, ARM
 * -- uses libm's logf/cosf/sinf instead and differs in the last bits.) */
#include "vae_internal.h"

#include <assert.h>
#include <math.h>
#include <string.h>

/* The exact roundings above are the point of this file: a compiler must not
 * fuse a*b+c on its own.  GCC already does not in ISO C mode (-std=c17). */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define MT_N 624
#define MT_M 397

/* ---- mt19937 (Matsumoto & Nishimura), as at::mt19937 ---- */

void ld_rng_seed(ld_rng *rng, uint64_t seed)
{
    uint32_t *s = rng->state;
    s[0] = (uint32_t)seed; /* torch: seed & 0xffffffff */
    for (uint32_t i = 1; i < MT_N; i++)
        s[i] = 1812433253u * (s[i - 1] ^ (s[i - 1] >> 30)) + i;
    rng->next = MT_N; /* the first draw twists */
    rng->has_spare = false;
}

static void mt_twist(ld_rng *rng)
{
    uint32_t *s = rng->state;
    for (int i = 0; i < MT_N; i++) {
        const uint32_t y = (s[i] & 0x80000000u) | (s[(i + 1) % MT_N] & 0x7fffffffu);
        s[i] = s[(i + MT_M) % MT_N] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    rng->next = 0;
}

static uint32_t mt_next(ld_rng *rng)
{
    if (rng->next >= MT_N)
        mt_twist(rng);
    uint32_t y = rng->state[rng->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* ---- uniforms: at::uniform_real_distribution(0, 1) ---- */

/* float: the low 24 bits of one draw, / 2^24; in [0, 1) */
static float uniform_float(ld_rng *rng)
{
    return (float)(mt_next(rng) & 0xffffffu) * 0x1.0p-24f;
}

/* double: the low 53 bits of two draws (the first the high word), / 2^53 */
static double uniform_double(ld_rng *rng)
{
    const uint64_t hi = mt_next(rng);
    const uint64_t bits = (hi << 32) | mt_next(rng);
    return (double)(bits & ((UINT64_C(1) << 53) - 1)) * 0x1.0p-53;
}

/* ---- Cephes in float, as torch's avx_mathfun.h computes it lane by lane ---- */

/* The constants are written as there: double literals rounded to float. */
#define LOG_SQRTHF ((float)0.707106781186547524)
#define LOG_Q1 ((float)-2.12194440e-4)
#define LOG_Q2 ((float)0.693359375)

/* ln(x) for a normal x > 0 (here x is in [2^-24, 1]) */
static float cephes_logf(float x)
{
    static const float p[9] = {
        (float)7.0376836292E-2,  (float)-1.1514610310E-1, (float)1.1676998740E-1,
        (float)-1.2420140846E-1, (float)1.4249322787E-1,  (float)-1.6668057665E-1,
        (float)2.0000714765E-1,  (float)-2.4999993993E-1, (float)3.3333331174E-1,
    };
    assert(x >= 0x1.0p-126f);
    /* x = m * 2^e with m in [0.5, 1): the exponent bits and the mantissa bits */
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    float e = (float)((int)(bits >> 23) - 0x7f) + 1.0f;
    bits = (bits & ~0x7f800000u) | 0x3f000000u;
    float m;
    memcpy(&m, &bits, sizeof m);
    /* m in [sqrt(1/2), sqrt(2)) around 1, minus 1 */
    if (m < LOG_SQRTHF) {
        e = e - 1.0f;
        m = (m - 1.0f) + m;
    } else {
        m = m - 1.0f;
    }
    const float z = m * m;
    float y = p[0];
    for (int i = 1; i < 9; i++)
        y = fmaf(y, m, p[i]);
    y = y * m;
    y = fmaf(y, z, e * LOG_Q1);
    y = fmaf(-z, 0.5f, y);
    return fmaf(e, LOG_Q2, m + y);
}

#define TRIG_FOPI ((float)1.27323954473516) /* 4/pi */
#define TRIG_DP1 ((float)-0.78515625)       /* -pi/4 in three parts */
#define TRIG_DP2 ((float)-2.4187564849853515625e-4)
#define TRIG_DP3 ((float)-3.77489497744594108e-8)

/* sin and cos of x >= 0 (an angle in [0, 2pi) here) */
static void cephes_sincosf(float x, float *sin_out, float *cos_out)
{
    static const float sin_p[3] = {(float)-1.9515295891E-4, (float)8.3321608736E-3,
                                   (float)-1.6666654611E-1};
    static const float cos_p[3] = {(float)2.443315711809948E-005,
                                   (float)-1.388731625493765E-003,
                                   (float)4.166664568298827E-002};
    assert(x >= 0.0f && x < 8192.0f);
    /* j: the octant, rounded up to even; reduce x to [-pi/4, pi/4] */
    int j = (int)(x * TRIG_FOPI);
    j = (j + 1) & ~1;
    const float y = (float)j;
    x = fmaf(y, TRIG_DP1, x);
    x = fmaf(y, TRIG_DP2, x);
    x = fmaf(y, TRIG_DP3, x);
    const float z = x * x;
    /* the cosine and the sine polynomials on the reduced x */
    float c = fmaf(cos_p[0], z, cos_p[1]);
    c = fmaf(c, z, cos_p[2]);
    c = c * z;
    c = fmaf(c, z, -(z * 0.5f));
    c = c + 1.0f;
    float s = fmaf(sin_p[0], z, sin_p[1]);
    s = fmaf(s, z, sin_p[2]);
    s = s * z;
    s = fmaf(s, x, x);
    /* octants 2, 3 (mod 4) swap the two; the sign bits come from j */
    const bool swap = (j & 2) != 0;
    const bool sin_negative = (j & 4) != 0;
    const bool cos_negative = ((j - 2) & 4) == 0;
    const float sv = swap ? c : s, cv = swap ? s : c;
    *sin_out = sin_negative ? -sv : sv;
    *cos_out = cos_negative ? -cv : cv;
}

/* ---- the two paths of randn ---- */

/* Box–Muller on 16 uniforms in place: normal_fill_16_AVX2 with mean 0, std 1 */
static void box_muller_16(float *block)
{
    const float two_pi = (float)(2.0 * M_PI);
    for (int j = 0; j < 8; j++) {
        const float u1 = 1.0f - block[j]; /* (0, 1]: log stays finite */
        const float radius = sqrtf(-2.0f * cephes_logf(u1));
        float s, c;
        cephes_sincosf(two_pi * block[j + 8], &s, &c);
        /* + 0.0f: torch's last step is fma(n, std=1, mean=0), so -0 comes out +0 */
        block[j] = radius * c + 0.0f;
        block[j + 8] = radius * s + 0.0f;
    }
}

/* normal_fill: n >= 16 */
static void randn_blocks(ld_rng *rng, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = uniform_float(rng);
    for (size_t i = 0; i + 16 <= n; i += 16)
        box_muller_16(out + i);
    if (n % 16 != 0) {
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++)
            tail[i] = uniform_float(rng);
        box_muller_16(tail);
    }
}

/* at::normal_distribution<double>(0, 1), one value */
static double normal_double(ld_rng *rng)
{
    if (rng->has_spare) {
        rng->has_spare = false;
        return rng->spare + 0.0; /* transformation::normal: v * std(1) + mean(0) */
    }
    const double u1 = uniform_double(rng);
    const double u2 = uniform_double(rng);
    /* older torch wrote log(1 - u2): 1 - u2 is exact, so both agree */
    const double radius = sqrt(-2.0 * log1p(-u2));
    const double theta = 2.0 * M_PI * u1;
    rng->spare = radius * sin(theta);
    rng->has_spare = true;
    return radius * cos(theta) + 0.0;
}

void ld_rng_randn(ld_rng *rng, float *out, size_t n)
{
    if (n >= 16) {
        randn_blocks(rng, out, n);
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = (float)normal_double(rng);
}
