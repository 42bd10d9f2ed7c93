/* BLAS from the pools' threads: shared by the files of src/nn only. */
#ifndef LATENTD_NN_BLAS_H
#define LATENTD_NN_BLAS_H

#include "latentd/nn.h"

/* Make sure no BLAS call from `pool`'s threads will need memory it has to
 * map later (see blas.c), then run one small product on each thread.  Called
 * once by ld_pool_new with every worker running; LD_ENOMEM when the memory
 * cannot be had.  ld_blas_unreserve undoes the pool's part. */
int ld_blas_reserve(ld_pool *pool, char *err);
void ld_blas_unreserve(const ld_pool *pool);

#endif
