/* bench-encode --kernels: how close each of the encoder's stages runs to the
 * machine's measured FMA peak, under every matrix kernel this CPU has. */
#ifndef LATENTD_BENCH_KERNELS_H
#define LATENTD_BENCH_KERNELS_H

#include "latentd/nn.h"

/* Prints the peak and one line per (kernel, stage), for every kernel this
 * CPU runs or, unless `only` is LD_KERNEL_AUTO, that one; threads <= 0: one
 * per core.  Returns 0, or 1 after printing why it could not run. */
int bench_kernels(int threads, int reps, ld_kernel only);

#endif
