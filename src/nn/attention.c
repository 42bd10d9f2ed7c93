/* Single-head self-attention, as in the VAE's mid block.  Scores are computed
 * for a block of queries at a time (block × tokens), so memory grows with
 * tokens·C rather than tokens². */
#include "latentd/nn.h"

#include <cblas.h>
#include <math.h>

#define QUERY_BLOCK 128

size_t ld_attention_scratch_floats(int channels, size_t tokens, int threads)
{
    /* q, k, v as [C, tokens] plus one block of scores per thread */
    return 3 * (size_t)channels * tokens + (size_t)threads * QUERY_BLOCK * tokens;
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

static void softmax_rows(float *s, int rows, size_t cols)
{
    for (int r = 0; r < rows; r++) {
        float *row = s + (size_t)r * cols;
        float max = row[0];
        for (size_t j = 1; j < cols; j++)
            if (row[j] > max)
                max = row[j];
        double sum = 0.0;
        for (size_t j = 0; j < cols; j++) {
            row[j] = expf(row[j] - max);
            sum += row[j];
        }
        const float inv = (float)(1.0 / sum);
        for (size_t j = 0; j < cols; j++)
            row[j] *= inv;
    }
}

typedef struct {
    float *q;             /* [C, T]; a block's columns take its result */
    const float *k, *v;   /* [C, T] */
    float *scores;        /* QUERY_BLOCK x T per thread */
    int c, tokens;
    float scale;
} attn_job;

/* Query blocks [first, last): each is independent, with the calling thread's
 * own rows of scores. */
static void attend_blocks(void *ctx, int first, int last, int thread)
{
    const attn_job *j = ctx;
    const int T = j->tokens;
    float *scores = j->scores + (size_t)thread * QUERY_BLOCK * (size_t)T;
    for (int blk = first; blk < last; blk++) {
        const int t0 = blk * QUERY_BLOCK;
        const int nq = T - t0 < QUERY_BLOCK ? T - t0 : QUERY_BLOCK;
        /* scores[nq, T] = scale · q[:, t0:t0+nq]ᵀ · k */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nq, T, j->c, j->scale, j->q + t0, T,
                    j->k, T, 0.0f, scores, T);
        softmax_rows(scores, nq, (size_t)T);
        /* this block's queries are consumed: its columns of q take the result
         * v · scoresᵀ, [C, nq] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->c, nq, T, 1.0f, j->v, T, scores,
                    T, 0.0f, j->q + t0, T);
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
    const attn_job job = {q, k, v, v + (size_t)c * tokens, c, T, 1.0f / sqrtf((float)c)};
    ld_pool_for_dynamic(pool, (T + QUERY_BLOCK - 1) / QUERY_BLOCK, 1, attend_blocks,
                        (void *)&job);
    project(pool, w->wo, w->bo, q, c, tokens, out);
}
