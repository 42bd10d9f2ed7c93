/* What the decoders share and the public header does not promise. */
#ifndef LATENTD_IMAGE_INTERNAL_H
#define LATENTD_IMAGE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "latentd/image.h"

/* A monotonic-clock deadline (ns) max_decode_ms from now; 0 when there is none. */
int64_t ld_image_deadline(const ld_image_limits *limits);
/* Whether a deadline from ld_image_deadline has passed (never, for 0). */
bool ld_image_past(int64_t deadline);
/* The scan limit in force: max_scans, its default, or 0 for none. */
int ld_image_max_scans(const ld_image_limits *limits);

/* The header readers behind ld_image_probe. */
int ld_png_probe(const uint8_t *data, size_t len, uint32_t *width, uint32_t *height, char *err);
int ld_jpeg_probe(const uint8_t *data, size_t len, uint32_t *width, uint32_t *height, char *err);
int ld_webp_probe(const uint8_t *data, size_t len, uint32_t *width, uint32_t *height, char *err);

#endif
