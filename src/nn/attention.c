/* Single-head self-attention, as in the VAE's mid block.  Scores are computed
 * for a block of queries at a time (block × tokens), so memory grows with
 * tokens·C rather than tokens². */
#include "latentd/nn.h"
#include "gemm.h"

#include <math.h>

#define QUERY_BLOCK 144 /* three 48-column panels of the AVX-512 kernel */

size_t ld_attention_scratch_floats(int channels, size_t tokens, int threads)
{
    /* q, k, v as [C, tokens] plus, per thread, one block of scores and one
     * block of queries transposed */
    return 3 * (size_t)channels * tokens +
           (size_t)threads * QUERY_BLOCK * (tokens + (size_t)channels);
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

/* exp through the pool's kernel (its vector exp) */
static void softmax_rows(ld_pool *pool, float *s, int rows, size_t cols)
{
    for (int r = 0; r < rows; r++) {
        float *row = s + (size_t)r * cols;
        float max = row[0];
        for (size_t j = 1; j < cols; j++)
            max = row[j] > max ? row[j] : max;
        const double sum = ld_pool_gemm(pool)->exp_sum(row, (int)cols, max);
        const float inv = (float)(1.0 / sum);
        for (size_t j = 0; j < cols; j++)
            row[j] *= inv;
    }
}

typedef struct {
    ld_pool *pool;        /* its kernel; the products run on the calling thread */
    float *q;             /* [C, T]; a block's columns take its result */
    const float *k, *v;   /* [C, T] */
    float *scores;        /* QUERY_BLOCK x T per thread */
    float *queries;       /* QUERY_BLOCK x C per thread */
    int c, tokens;
    float scale;
} attn_job;

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

/* Query blocks [first, last): each is independent, with the calling thread's
 * own rows of scores. */
static void attend_blocks(void *ctx, int first, int last, int thread)
{
    const attn_job *j = ctx;
    const int T = j->tokens;
    float *scores = j->scores + (size_t)thread * QUERY_BLOCK * (size_t)T;
    float *queries = j->queries + (size_t)thread * QUERY_BLOCK * (size_t)j->c;
    for (int blk = first; blk < last; blk++) {
        const int t0 = blk * QUERY_BLOCK;
        const int nq = T - t0 < QUERY_BLOCK ? T - t0 : QUERY_BLOCK;
        /* scores[nq, T] = scale · q[:, t0:t0+nq]ᵀ · k (inside the pool's
         * loop, so on this thread alone) */
        transpose_block(j->q, j->c, T, t0, nq, j->scale, queries);
        ld_gemm(j->pool, nq, T, j->c, queries, j->c, j->k, T, scores, T, 0);
        softmax_rows(j->pool, scores, nq, (size_t)T);
        /* this block's queries are consumed: its columns of q take the result
         * v · scoresᵀ, [C, nq] */
        ld_gemm_ex(j->pool, j->c, nq, T, j->v, T, scores, T, 1, j->q + t0, T, 0);
    }
}

/* scratch: ld_attention_scratch_floats(c, tokens, ld_pool_threads(pool)) floats */
void ld_attention(ld_pool *pool, const float *xn, int c, size_t tokens,
                  const ld_attn_weights *w, float *out, float *scratch)
{
    const int T = (int)tokens;
    float *q = scratch;
    float *k = q + (size_t)c * tokens;
    float *v = k + (size_t)c * tokens;
    project(pool, w->wq, w->bq, xn, c, tokens, q);
    project(pool, w->wk, w->bk, xn, c, tokens, k);
    project(pool, w->wv, w->bv, xn, c, tokens, v);
    float *scores = v + (size_t)c * tokens;
    float *queries = scores + (size_t)ld_pool_threads(pool) * QUERY_BLOCK * tokens;
    const attn_job job = {pool, q, k, v, scores, queries, c, T, 1.0f / sqrtf((float)c)};
    ld_pool_for_dynamic(pool, (T + QUERY_BLOCK - 1) / QUERY_BLOCK, 1, attend_blocks,
                        (void *)&job);
    project(pool, w->wo, w->bo, q, c, tokens, out);
}
