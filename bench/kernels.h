/* bench-encode --kernels: how close each of the encoder's stages runs to the
 * machine's measured FMA peak, under every matrix kernel this CPU has. */
#ifndef LATENTD_BENCH_KERNELS_H
#define LATENTD_BENCH_KERNELS_H

/* Prints the peak and one line per (kernel, stage); threads <= 0: one per
 * core.  Returns 0, or 1 after printing why it could not run. */
int bench_kernels(int threads, int reps);

#endif
