/* How the kernels share the cores: OpenMP threads run the kernels' own loops
 * and split each matrix product between them, while BLAS itself runs one
 * thread per call.  Two pools (OpenMP's and OpenBLAS's) each sized to the
 * cores would otherwise fight: one spins while the other works. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "latentd/nn.h"

#include <cblas.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
void openblas_set_num_threads(int);
#endif

void ld_nn_init(void)
{
#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
    openblas_set_num_threads(1);
#endif
}

void ld_nn_set_threads(int threads)
{
#ifdef _OPENMP
    if (threads > 0)
        omp_set_num_threads(threads);
#else
    (void)threads;
#endif
}

int ld_nn_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int ld_nn_thread_index(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

void ld_sgemm_split_rows(int m, int n, int k, float alpha, const float *a, int lda,
                         const float *b, int ldb, float beta, float *c, int ldc)
{
#pragma omp parallel
    {
        int team = 1, me = 0;
#ifdef _OPENMP
        team = omp_get_num_threads();
        me = omp_get_thread_num();
#endif
        const int first = (int)((long)m * me / team), last = (int)((long)m * (me + 1) / team);
        if (last > first)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, last - first, n, k, alpha,
                        a + (size_t)first * lda, lda, b, ldb, beta, c + (size_t)first * ldc, ldc);
    }
}
