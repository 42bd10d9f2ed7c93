/* What every image decoder promises, checked the same way for each format. */
#ifndef LATENTD_FUZZ_IMAGE_CHECK_H
#define LATENTD_FUZZ_IMAGE_CHECK_H

#include "fuzz.h"

#include "latentd/image.h"

/* Small limits: the fuzzer should spend its time on parsing, not on huge
 * allocations (the limit itself is checked from the header). */
static const ld_image_limits fuzz_image_limits = {.max_pixels = 1u << 20};

/* A decoded image is within the limits and every sample is in [0, 1] (reading
 * them all also lets valgrind and MSan see samples the decoder never wrote);
 * a refused one holds no memory and says why. */
static inline void fuzz_check_image(int rc, const ld_image *img, const char *err)
{
    if (rc != LD_OK) {
        FUZZ_CHECK(rc == LD_EFORMAT || rc == LD_ETOOLARGE || rc == LD_ENOMEM ||
                   rc == LD_EUNSUPPORTED);
        FUZZ_CHECK(img->rgb == NULL && err[0]);
        return;
    }
    FUZZ_CHECK(img->rgb != NULL && img->width > 0 && img->height > 0);
    FUZZ_CHECK((uint64_t)img->width * (uint64_t)img->height <= fuzz_image_limits.max_pixels);
    const size_t n = (size_t)3 * img->width * img->height;
    size_t outside = 0;
    for (size_t i = 0; i < n; i++)
        outside += !(img->rgb[i] >= 0.0f && img->rgb[i] <= 1.0f);
    FUZZ_CHECK(outside == 0);
}

#endif
