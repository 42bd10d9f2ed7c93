/* BLAS from the compute threads: BLAS runs one thread per call
 * (ld_nn_init), so the pools' threads are the only ones that share the
 * cores; OpenBLAS's own threads, which spin between calls, stay asleep. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "latentd/nn.h"

#include <cblas.h>

#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
void openblas_set_num_threads(int);
#endif

void ld_nn_init(void)
{
#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
    openblas_set_num_threads(1);
#endif
}

typedef struct {
    int m, n, k;
    float alpha, beta;
    const float *a, *b;
    float *c;
    int lda, ldb, ldc;
} gemm_job;

static void gemm_rows(void *ctx, int first, int last, int thread)
{
    (void)thread;
    const gemm_job *j = ctx;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, last - first, j->n, j->k, j->alpha,
                j->a + (size_t)first * j->lda, j->lda, j->b, j->ldb, j->beta,
                j->c + (size_t)first * j->ldc, j->ldc);
}

void ld_sgemm_split_rows(ld_pool *pool, int m, int n, int k, float alpha, const float *a,
                         int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    const gemm_job job = {m, n, k, alpha, beta, a, b, c, lda, ldb, ldc};
    ld_pool_for(pool, m, gemm_rows, (void *)&job);
}
