/* Single-head self-attention, as in the VAE's mid block.  A block of queries
 * meets the keys a block at a time with the softmax kept online (Milakov &
 * Gimelshein, 2018; FlashAttention): each row carries its running maximum and
 * sum, and its weighted values are rescaled when the maximum grows.  So a
 * thread's scores are QUERY_BLOCK × KEY_BLOCK, held in L2 whatever the
 * image's size, where a block × tokens matrix (38 MB per thread at 65536
 * tokens) went through memory twice. */
#include "latentd/nn.h"
#include "gemm.h"

#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>

#define QUERY_BLOCK 144 /* three 48-column panels of the AVX-512 kernel */
#define KEY_BLOCK 480   /* ten */

/* Per thread: the block's queries transposed, their weighted values and the
 * scores (each row's running maximum and sum live on its stack) */
static size_t per_thread_floats(int channels)
{
    return (size_t)QUERY_BLOCK * (2 * (size_t)channels + KEY_BLOCK);
}

_Static_assert(KEY_BLOCK % LD_GEMM_MAX_NR == 0, "a block of keys is whole panels");

/* Tokens rounded up to whole panels of the widest kernel: the packed keys'
 * columns (every kernel's nr divides LD_GEMM_MAX_NR). */
static size_t padded_tokens(size_t tokens)
{
    return (tokens + LD_GEMM_MAX_NR - 1) / LD_GEMM_MAX_NR * LD_GEMM_MAX_NR;
}

size_t ld_attention_scratch_floats(int channels, size_t tokens, int threads)
{
    /* q and v as [C, tokens], the keys packed, plus each thread's blocks */
    return 2 * (size_t)channels * tokens + (size_t)channels * padded_tokens(tokens) +
           (size_t)threads * per_thread_floats(channels);
}

/* dst[C, T] = W[C, C] · src[C, T] + b */
static void project(ld_pool *pool, const float *w, const float *b, const float *src, int c,
                    size_t tokens, float *dst)
{
    for (int i = 0; i < c; i++)
        for (size_t t = 0; t < tokens; t++)
            dst[(size_t)i * tokens + t] = b[i];
    ld_gemm(pool, c, (int)tokens, c, w, c, src, (int)tokens, dst, (int)tokens, 1);
}

/* Keys [C, T] in the kernel's panels ([T/nr rounded up][C][nr], zeros past
 * T), as every block of queries reads them: packed once here, where each
 * block's product packed them again (28 times over at 64²). */
typedef struct {
    const float *keys; /* [C, T] */
    float *packed;
    int c, tokens, nr;
} pack_job;

static void pack_key_panels(void *ctx, int first, int last, int thread)
{
    (void)thread;
    const pack_job *j = ctx;
    for (int panel = first; panel < last; panel++) {
        const int t0 = panel * j->nr;
        const int cols = j->tokens - t0 < j->nr ? j->tokens - t0 : j->nr;
        ld_gemm_pack_panel(j->keys, (size_t)j->tokens, 0, 0, j->c, t0, cols, j->nr,
                           j->packed + (size_t)panel * j->c * j->nr);
    }
}

typedef struct {
    ld_pool *pool;        /* its kernel; the products run on the calling thread */
    float *q;             /* [C, T]; a block's columns take its result */
    const float *k;       /* packed in the kernel's panels; [C, T] for CBLAS */
    const float *v;       /* [C, T] */
    float *per_thread;    /* per_thread_floats(c) each */
    int c, tokens;
    float scale;
    _Atomic uint64_t *progress; /* may be NULL */
    const _Atomic bool *cancel; /* may be NULL */
} attn_job;

/* One thread's blocks, carved from its share of the scratch. */
typedef struct {
    float *queries;  /* [QUERY_BLOCK, C]: scale · q block, transposed */
    float *weighted; /* [C, QUERY_BLOCK]: Σ exp(s - max) · v, a column per query */
    float *scores;   /* [QUERY_BLOCK, KEY_BLOCK] */
    float max[QUERY_BLOCK];  /* running maximum of each row's scores */
    double sum[QUERY_BLOCK]; /* running Σ exp(s - max) */
} thread_blocks;

static thread_blocks carve(const attn_job *j, int thread)
{
    float *base = j->per_thread + (size_t)thread * per_thread_floats(j->c);
    thread_blocks b;
    b.queries = base;
    b.weighted = b.queries + (size_t)QUERY_BLOCK * j->c;
    b.scores = b.weighted + (size_t)QUERY_BLOCK * j->c;
    return b;
}

/* dst[i][c] = scale · q[c][t0 + i]: a block of queries as rows, so the
 * product reads each along the channels it sums over */
static void transpose_block(const float *q, int c, int tokens, int t0, int nq, float scale,
                            float *dst)
{
    for (int ch = 0; ch < c; ch++) {
        const float *src = q + (size_t)ch * tokens + t0;
        for (int i = 0; i < nq; i++)
            dst[(size_t)i * c + ch] = scale * src[i];
    }
}

/* max(init, row[0..n)): sixteen independent maxima, so the compiler keeps
 * them in vectors (one running maximum was a chain of dependent compares:
 * 7 % of the attention) */
static float row_max(const float *row, int n, float init)
{
    enum { LANES = 16 };
    float lane[LANES];
    for (int l = 0; l < LANES; l++)
        lane[l] = init;
    int x = 0;
    for (; x + LANES <= n; x += LANES)
        for (int l = 0; l < LANES; l++)
            lane[l] = row[x + l] > lane[l] ? row[x + l] : lane[l];
    float max = init;
    for (int l = 0; l < LANES; l++)
        max = lane[l] > max ? lane[l] : max;
    for (; x < n; x++)
        max = row[x] > max ? row[x] : max;
    return max;
}

/* Each row i of a block of nq scores against nk keys joins the row's running
 * softmax: the maximum grows to cover it, what was summed and weighted so far
 * is rescaled by exp(old max - new max), and the row becomes exp(s - max). */
static void online_softmax(const ld_gemm_kernel *kernel, thread_blocks *b, int nq, int nk,
                           int c, bool first)
{
    float rescale[QUERY_BLOCK];
    bool grew = false;
    for (int i = 0; i < nq; i++) {
        float *row = b->scores + (size_t)i * KEY_BLOCK;
        const float max = row_max(row, nk, b->max[i]);
        rescale[i] = 1.0f;
        if (max > b->max[i]) {
            /* nothing summed yet while the maximum is -inf: the factor is 0 */
            rescale[i] = isinf(b->max[i]) ? 0.0f : expf(b->max[i] - max);
            b->sum[i] *= rescale[i];
            b->max[i] = max;
            grew = true;
        }
        b->sum[i] += kernel->exp_sum(row, nk, max);
    }
    if (!grew || first) /* the first block's weighted values are yet to be written */
        return;
    for (int ch = 0; ch < c; ch++) { /* weighted's columns, a row of them at a time */
        float *w = b->weighted + (size_t)ch * QUERY_BLOCK;
        for (int i = 0; i < nq; i++)
            w[i] *= rescale[i];
    }
}

/* Query block [t0, t0 + nq): against every block of keys, then its columns of
 * q (consumed: only this block read them) take the weighted values / sums. */
static void attend_block(const attn_job *j, thread_blocks *b, int t0, int nq)
{
    const int T = j->tokens, c = j->c;
    const ld_gemm_kernel *kernel = ld_pool_gemm(j->pool);
    transpose_block(j->q, c, T, t0, nq, j->scale, b->queries);
    for (int i = 0; i < nq; i++) {
        b->max[i] = -INFINITY;
        b->sum[i] = 0.0;
    }
    for (int k0 = 0; k0 < T; k0 += KEY_BLOCK) {
        const int nk = T - k0 < KEY_BLOCK ? T - k0 : KEY_BLOCK;
        /* scores[nq, nk] = queries · k[:, k0:k0+nk] (inside the pool's loop,
         * so on this thread alone) */
        if (kernel->tile)
            ld_gemm_packed(kernel, nq, nk, c, b->queries, (size_t)c,
                           j->k + (size_t)(k0 / kernel->nr) * c * kernel->nr, b->scores,
                           KEY_BLOCK);
        else
            ld_gemm(j->pool, nq, nk, c, b->queries, c, j->k + k0, T, b->scores, KEY_BLOCK, 0);
        online_softmax(kernel, b, nq, nk, c, k0 == 0);
        /* weighted[C, nq] (+)= v[:, k0:k0+nk] · scoresᵀ (the scores packed
         * from their transpose: a third of the keys' size) */
        ld_gemm_ex(j->pool, c, nq, nk, j->v + k0, T, b->scores, KEY_BLOCK, 1, b->weighted,
                   QUERY_BLOCK, k0 > 0);
    }
    for (int ch = 0; ch < c; ch++) {
        const float *w = b->weighted + (size_t)ch * QUERY_BLOCK;
        float *dst = j->q + (size_t)ch * T + t0;
        for (int i = 0; i < nq; i++)
            dst[i] = (float)(w[i] / b->sum[i]);
    }
}

/* Query blocks [first, last), each on the calling thread's own blocks. */
static void attend_blocks(void *ctx, int first, int last, int thread)
{
    const attn_job *j = ctx;
    thread_blocks b = carve(j, thread);
    for (int blk = first; blk < last; blk++) {
        if (j->cancel && atomic_load_explicit(j->cancel, memory_order_relaxed))
            return; /* the caller stopped waiting: what is left is wasted work */
        const int t0 = blk * QUERY_BLOCK;
        attend_block(j, &b, t0, j->tokens - t0 < QUERY_BLOCK ? j->tokens - t0 : QUERY_BLOCK);
        if (j->progress)
            atomic_fetch_add_explicit(j->progress, 1, memory_order_relaxed);
    }
}

/* scratch: ld_attention_scratch_floats(c, tokens, ld_pool_threads(pool)) floats */
int ld_attention(ld_pool *pool, const float *xn, int c, size_t tokens,
                 const ld_attn_weights *w, float *out, float *scratch,
                 _Atomic uint64_t *progress, const _Atomic bool *cancel)
{
    const int T = (int)tokens;
    const ld_gemm_kernel *kernel = ld_pool_gemm(pool);
    float *q = scratch;
    float *k = q + (size_t)c * tokens;
    float *v = k + (size_t)c * padded_tokens(tokens);
    project(pool, w->wq, w->bq, xn, c, tokens, q);
    if (kernel->tile) { /* the keys through v's place into their panels */
        project(pool, w->wk, w->bk, xn, c, tokens, v);
        const pack_job pj = {v, k, c, T, kernel->nr};
        ld_pool_for(pool, (T + kernel->nr - 1) / kernel->nr, pack_key_panels, (void *)&pj);
    } else {
        project(pool, w->wk, w->bk, xn, c, tokens, k);
    }
    project(pool, w->wv, w->bv, xn, c, tokens, v);
    const attn_job job = {pool, q, k, v, v + (size_t)c * tokens, c, T, 1.0f / sqrtf((float)c),
                          progress, cancel};
    ld_pool_for_dynamic(pool, (T + QUERY_BLOCK - 1) / QUERY_BLOCK, 1, attend_blocks,
                        (void *)&job);
    if (cancel && atomic_load(cancel))
        return LD_ECANCELLED;
    project(pool, w->wo, w->bo, q, c, tokens, out);
    return LD_OK;
}
