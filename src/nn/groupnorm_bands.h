/* GroupNorm statistics streamed over bands of rows, for a tensor that is
 * never whole in memory (the encoder's banded resnets recompute conv1 in
 * bands).  Kept out of nn.h: only the encoder's banded path needs them. */
#ifndef LATENTD_GROUPNORM_BANDS_H
#define LATENTD_GROUPNORM_BANDS_H

#include "latentd/nn.h"

/* Adds each group's Σx and Σx² (double, as ld_group_norm_coeffs sums) over
 * rows [row0, row0 + rows) of every channel of band [channels, band_h, w]
 * to sums [groups][2].  Start from zeros; the order of bands does not
 * matter beyond double rounding. */
void ld_group_sums_add(ld_pool *pool, const float *band, int channels, int band_h, int w,
                       int row0, int rows, int groups, double *sums);

/* The per-channel scale and shift (see ld_input_map) of GroupNorm over a
 * [channels, plane] tensor whose group sums are `sums`, computed as
 * ld_group_norm_coeffs computes them from the whole tensor. */
void ld_group_coeffs_from_sums(const double *sums, size_t plane, int channels, int groups,
                               const float *gamma, const float *beta, float eps, float *scale,
                               float *shift);

#endif
