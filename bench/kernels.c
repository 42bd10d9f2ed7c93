/* bench-encode --kernels.
 *
 * The machine's peak: each thread of a pool runs a chain of independent
 * fused multiply-adds as wide as the CPU has (zmm with AVX-512, ymm with
 * AVX2), long enough to swamp the loop; flops/s summed over the threads.
 *
 * The stages: the products and layers of the SD encoder at 512x512, each
 * run `reps` times after a warm-up, best time counting, under every matrix
 * kernel available.  GFLOP/s counts the arithmetic each stage really does
 * (a Winograd convolution's products and transforms, not the direct
 * convolution's 2·Co·Ci·9·H·W); "direct-equivalent" shows the latter, the
 * figure to compare with a direct convolution's peak. */
#include "kernels.h"

#include "latentd/common.h"
#include "latentd/nn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

/* With one thread the clock is the thread's CPU time, which other
 * processes on the machine cannot stretch; with more, wall time. */
static clockid_t bench_clock = CLOCK_MONOTONIC;

static double now(void)
{
    struct timespec ts;
    clock_gettime(bench_clock, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---------------- peak ---------------- */

#define PEAK_SECONDS 0.05 /* per thread and try: long beside a pool's wake-up */
#define PEAK_TRIES 7         /* the best counts: a busy machine only slows a try */

typedef struct {
    int width;      /* floats per vector: 16 (zmm), 8 (ymm) */
    long steps;     /* of the chain, per thread */
    double *sink;    /* per thread: keeps the result alive */
    double *seconds; /* per thread: how long its chain took */
} peak_job;

#if defined(__x86_64__) && defined(__GNUC__)
/* 12 independent accumulators: more than FMA latency × ports on current cores */
__attribute__((target("avx512f"))) static float fma_chain_zmm(long steps)
{
    __m512 a[12];
    const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++)
        a[i] = _mm512_set1_ps((float)i);
    for (long s = 0; s < steps; s++)
        for (int i = 0; i < 12; i++)
            a[i] = _mm512_fmadd_ps(a[i], x, y);
    float sum = 0;
    for (int i = 0; i < 12; i++)
        sum += _mm512_reduce_add_ps(a[i]);
    return sum;
}

__attribute__((target("avx2,fma"))) static float fma_chain_ymm(long steps)
{
    __m256 a[12];
    const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++)
        a[i] = _mm256_set1_ps((float)i);
    for (long s = 0; s < steps; s++)
        for (int i = 0; i < 12; i++)
            a[i] = _mm256_fmadd_ps(a[i], x, y);
    float out[8], sum = 0;
    for (int i = 0; i < 12; i++) {
        _mm256_storeu_ps(out, a[i]);
        for (int k = 0; k < 8; k++)
            sum += out[k];
    }
    return sum;
}
#endif

/* Each thread times its own chain (wall time): a thread that the pool
 * wakes late does not count its wait as arithmetic. */
static void peak_thread(void *ctx, int begin, int end, int thread)
{
    const peak_job *j = ctx;
    (void)begin;
    (void)end;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    float r = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    if (j->width == 16)
        r = fma_chain_zmm(j->steps);
    else if (j->width == 8)
        r = fma_chain_ymm(j->steps);
#endif
    clock_gettime(CLOCK_MONOTONIC, &t1);
    j->sink[thread] = r;
    j->seconds[thread] = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
}

/* GFLOP/s of `width`-float FMAs on every thread of the pool at once: the
 * threads' own rates summed, the best of a few tries, each try long enough
 * (PEAK_SECONDS) that the threads' starts hardly differ. */
static double measure_peak(ld_pool *pool, int width)
{
    enum { MAX_THREADS = 1024 };
    double sink[MAX_THREADS] = {0}, seconds[MAX_THREADS] = {0};
    const int threads =
        ld_pool_threads(pool) < MAX_THREADS ? ld_pool_threads(pool) : MAX_THREADS;
    peak_job job = {width, 100000, sink, seconds};
    double best = 0;
    for (int t = 0; t < PEAK_TRIES;) {
        ld_pool_for(pool, threads, peak_thread, &job);
        double rate = 0, shortest = INFINITY;
        for (int i = 0; i < threads; i++) {
            rate += 2.0 * width * 12 * (double)job.steps / seconds[i];
            shortest = seconds[i] < shortest ? seconds[i] : shortest;
        }
        if (shortest < PEAK_SECONDS) { /* too short to trust: longer, and again */
            const double took = shortest > 1e-6 ? shortest : 1e-6;
            job.steps = (long)((double)job.steps * PEAK_SECONDS / took * 1.2);
            continue;
        }
        best = rate > best ? rate : best;
        t++;
    }
    return best * 1e-9;
}

/* ---------------- stages ---------------- */

typedef struct {
    const char *name;
    enum { STAGE_GEMM, STAGE_CONV, STAGE_ATTENTION } kind;
    int m, n, k;          /* STAGE_GEMM */
    ld_conv_geom g;       /* STAGE_CONV */
    int silu_map;         /* STAGE_CONV: GroupNorm+SiLU applied as the input is read */
    int channels, tokens; /* STAGE_ATTENTION */
} stage;

#define CONV(ci, co, hw, k_, s, p, o)                                                        \
    {.in_ch = ci, .in_h = hw, .in_w = hw, .out_ch = co, .out_h = o, .out_w = o, .kernel = k_, \
     .stride = s, .pad_top = p, .pad_left = p}

static const stage stages[] = {
    {"product 128x384x128 (Winograd, level 0)", STAGE_GEMM, 128, 384, 128, {0}, 0, 0, 0},
    {"product 512x256x512 (Winograd, level 3)", STAGE_GEMM, 512, 256, 512, {0}, 0, 0, 0},
    {"conv 3x3 128->128 @512 (Winograd)", STAGE_CONV, 0, 0, 0, CONV(128, 128, 512, 3, 1, 1, 512),
     0, 0, 0},
    {"conv 3x3 128->128 @512 + GN/SiLU map", STAGE_CONV, 0, 0, 0,
     CONV(128, 128, 512, 3, 1, 1, 512), 1, 0, 0},
    {"conv 3x3 512->512 @64 (Winograd)", STAGE_CONV, 0, 0, 0, CONV(512, 512, 64, 3, 1, 1, 64), 0,
     0, 0},
    {"downsample 3x3/2 128 @512 (im2col)", STAGE_CONV, 0, 0, 0, CONV(128, 128, 512, 3, 2, 0, 256),
     0, 0, 0},
    {"downsample 3x3/2 512 @128 (im2col)", STAGE_CONV, 0, 0, 0, CONV(512, 512, 128, 3, 2, 0, 64),
     0, 0, 0},
    {"conv 3x3 128->256 @256 (Winograd)", STAGE_CONV, 0, 0, 0, CONV(128, 256, 256, 3, 1, 1, 256),
     0, 0, 0},
    {"conv 1x1 256->512 @128 (shortcut)", STAGE_CONV, 0, 0, 0, CONV(256, 512, 128, 1, 1, 0, 128),
     0, 0, 0},
    {"attention 512ch x 4096 tokens", STAGE_ATTENTION, 0, 0, 0, {0}, 0, 512, 4096},
    {"attention 512ch x 16384 tokens (1024x1024)", STAGE_ATTENTION, 0, 0, 0, {0}, 0, 512, 16384},
};

/* Multiplies and adds a stage really performs (2 per multiply-add). */
static double stage_flops(const stage *s, double *direct)
{
    switch (s->kind) {
    case STAGE_GEMM:
        return *direct = 2.0 * s->m * s->n * s->k;
    case STAGE_CONV: {
        const ld_conv_geom *g = &s->g;
        *direct = 2.0 * g->out_ch * g->in_ch * g->kernel * g->kernel * g->out_h * g->out_w;
        if (!ld_winograd_applies(g))
            return *direct;
        /* 36 products per 4x4 tile, the transforms counted too: Bᵀ d B is
         * ~12 adds per element each way, Aᵀ M A ~10 */
        const double tiles = ceil(g->out_h / 4.0) * ceil(g->out_w / 4.0);
        return 2.0 * 36 * g->out_ch * g->in_ch * tiles + tiles * 36 * 24.0 * g->in_ch +
               tiles * 36 * 10.0 * g->out_ch;
    }
    default: {
        const double c = s->channels, t = s->tokens;
        return *direct = 4 * 2.0 * c * c * t + 2 * 2.0 * c * t * t;
    }
    }
}

typedef struct {
    float *a, *b, *c, *scratch, *scale, *shift;
    size_t scratch_floats;
} buffers;

static float *random_floats(size_t n, unsigned seed)
{
    float *p = ld_alloc_aligned(n, sizeof(float));
    if (!p)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)(seed >> 8) / (float)(1u << 24) - 0.5f;
    }
    return p;
}

static size_t stage_sizes(const stage *s, int threads, size_t *a, size_t *b, size_t *c)
{
    switch (s->kind) {
    case STAGE_GEMM:
        *a = (size_t)s->m * s->k, *b = (size_t)s->k * s->n, *c = (size_t)s->m * s->n;
        return 0;
    case STAGE_CONV:
        *a = (size_t)s->g.out_ch * s->g.in_ch * s->g.kernel * s->g.kernel;
        *b = (size_t)s->g.in_ch * s->g.in_h * s->g.in_w;
        *c = (size_t)s->g.out_ch * s->g.out_h * s->g.out_w;
        return ld_conv2d_scratch_floats(&s->g, (size_t)4 << 20, threads); /* as the encoder */
    default:
        *a = (size_t)8 * s->channels * s->channels + 8 * (size_t)s->channels;
        *b = *c = (size_t)s->channels * s->tokens;
        return ld_attention_scratch_floats(s->channels, (size_t)s->tokens, threads);
    }
}

static void run_stage(ld_pool *pool, const stage *s, const buffers *bf)
{
    switch (s->kind) {
    case STAGE_GEMM:
        ld_gemm(pool, s->m, s->n, s->k, bf->a, s->k, bf->b, s->n, bf->c, s->n, 0);
        break;
    case STAGE_CONV: {
        const ld_input_map map = {bf->scale, bf->shift, 1};
        ld_conv2d_ex(pool, &s->g, bf->b, s->silu_map ? &map : NULL, bf->a, NULL, bf->c, 0,
                     bf->scratch, bf->scratch_floats);
        break;
    }
    default: {
        const size_t cc = (size_t)s->channels * s->channels;
        const float *w = bf->a, *bias = bf->a + 4 * cc;
        const ld_attn_weights aw = {w, bias, w + cc, bias, w + 2 * cc, bias, w + 3 * cc, bias};
        ld_attention(pool, bf->b, s->channels, (size_t)s->tokens, &aw, bf->c, bf->scratch,
                     NULL, NULL);
    }
    }
}

static int time_stage(ld_pool *pool, const stage *s, int reps, double *best)
{
    size_t na, nb, nc;
    buffers bf = {0};
    bf.scratch_floats = stage_sizes(s, ld_pool_threads(pool), &na, &nb, &nc);
    bf.a = random_floats(na, 1);
    bf.b = random_floats(nb, 2);
    bf.c = random_floats(nc, 3);
    bf.scratch = bf.scratch_floats ? ld_alloc_aligned(bf.scratch_floats, sizeof(float)) : NULL;
    bf.scale = random_floats(1024, 4);
    bf.shift = random_floats(1024, 5);
    int ok = bf.a && bf.b && bf.c && bf.scale && bf.shift && (bf.scratch || !bf.scratch_floats);
    *best = INFINITY;
    for (int r = 0; ok && r <= reps; r++) { /* pass 0 warms up */
        double t0 = now();
        run_stage(pool, s, &bf);
        double t = now() - t0;
        if (r > 0 && t < *best)
            *best = t;
    }
    ld_free_aligned(bf.a);
    ld_free_aligned(bf.b);
    ld_free_aligned(bf.c);
    ld_free_aligned(bf.scratch);
    ld_free_aligned(bf.scale);
    ld_free_aligned(bf.shift);
    return ok ? 0 : -1;
}

int bench_kernels(int threads, int reps, ld_kernel only)
{
    char err[LD_ERR_LEN];
    ld_pool *pool;
    if (ld_pool_new(threads, &pool, err) != LD_OK) {
        fprintf(stderr, "bench-encode: %s\n", err);
        return 1;
    }
    const int widest = ld_kernel_available(LD_KERNEL_AVX512) ? 16
                       : ld_kernel_available(LD_KERNEL_AVX2) ? 8 : 0;
    double peak = 0;
    if (ld_pool_threads(pool) == 1)
        bench_clock = CLOCK_THREAD_CPUTIME_ID;
    printf("threads      %d (%s time)\n", ld_pool_threads(pool),
           ld_pool_threads(pool) == 1 ? "the thread's CPU" : "wall");
    if (ld_kernel_available(LD_KERNEL_AVX2))
        printf("FMA peak     %.1f GFLOP/s (AVX2, ymm)\n", measure_peak(pool, 8));
    if (widest) {
        peak = measure_peak(pool, widest);
        printf("FMA peak     %.1f GFLOP/s (%s): the machine's, for \"of peak\"\n", peak,
               widest == 16 ? "AVX-512, zmm" : "AVX2, ymm");
    }
    printf("%-8s %-42s %9s %8s %12s\n", "kernel", "stage", "ms", "GFLOP/s", "of peak");
    int rc = 0;
    for (int k = LD_KERNEL_AVX512; k < LD_KERNEL_COUNT && rc == 0; k++) {
        if ((only != LD_KERNEL_AUTO && k != (int)only) || !ld_kernel_available((ld_kernel)k) ||
            ld_pool_set_kernel(pool, (ld_kernel)k, err))
            continue;
        for (size_t i = 0; i < sizeof stages / sizeof *stages; i++) {
            double best, direct;
            const double flops = stage_flops(&stages[i], &direct);
            if (time_stage(pool, &stages[i], reps, &best) != 0) {
                fprintf(stderr, "bench-encode: out of memory for %s\n", stages[i].name);
                rc = 1;
                break;
            }
            char share[32] = "-";
            if (peak > 0)
                snprintf(share, sizeof share, "%.0f%%", 100.0 * flops / best * 1e-9 / peak);
            printf("%-8s %-42s %9.2f %8.1f %12s", ld_kernel_name((ld_kernel)k), stages[i].name,
                   best * 1e3, flops / best * 1e-9, share);
            if (direct != flops)
                printf("   direct-equivalent %.1f GFLOP/s", direct / best * 1e-9);
            printf("\n");
        }
    }
    ld_pool_free(pool);
    return rc;
}
