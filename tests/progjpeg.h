/* Progressive JPEGs written marker by marker, for the decoder's scan and time
 * limits.  Every DCT coefficient is zero, so each file is uniform grey: every
 * pixel decodes to 128 (libjpeg's level shift), which PIL confirms. */
#ifndef LATENTD_TESTS_PROGJPEG_H
#define LATENTD_TESTS_PROGJPEG_H

#include <stddef.h>
#include <stdint.h>

/* One gray component; a DC scan, then for each AC coefficient a first scan
 * at bit 13 and 13 refinements down to bit 0: 1 + 63*14 = 883 scans, a
 * progression libjpeg accepts without a warning.  malloc'd. */
#define PROGJPEG_VALID_SCANS 883
uint8_t *progjpeg_valid(int width, int height, size_t *len);

/* A DC scan, then n_scans - 1 identical full-band AC first scans (Ss=1,
 * Se=63, Ah=Al=0).  libjpeg accepts the repeats silently and decodes every
 * one over the whole image: the "many scans" attack.  malloc'd. */
uint8_t *progjpeg_repeated(int width, int height, int n_scans, size_t *len);

#endif
