/* What the decoders share and the public header does not promise. */
#ifndef LATENTD_IMAGE_INTERNAL_H
#define LATENTD_IMAGE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "latentd/image.h"

/* The header readers behind ld_image_probe. */
int ld_png_probe(const uint8_t *data, size_t len, uint32_t *width, uint32_t *height, char *err);
int ld_jpeg_probe(const uint8_t *data, size_t len, uint32_t *width, uint32_t *height, char *err);

#endif
