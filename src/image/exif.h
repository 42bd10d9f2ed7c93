/* EXIF orientation, read and applied as PIL's ImageOps.exif_transpose does
 * (diffusers' load_image calls it on every image): one parser and one pixel
 * mapping for the JPEG, PNG and WebP decoders, each of which only finds the
 * EXIF block in its own container.
 *
 *   int o = ld_exif_orientation(block, len);      // 1..8 (ld_exif_tiff_orientation)
 *   ld_exif_upright_size(o, &w, &h);               // stored size -> shown size
 *   out[ld_exif_upright_index(o, x, y, sw, sh)] = stored pixel (x, y)
 */
#ifndef LATENTD_IMAGE_EXIF_H
#define LATENTD_IMAGE_EXIF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Tag 0x0112 of IFD0 in a TIFF structure (JPEG's APP1 after its
 * "Exif\0\0", PNG's eXIf chunk): 1 to 8; 1 when absent or malformed. */
int ld_exif_tiff_orientation(const uint8_t *tiff, size_t len);

/* The same for a block that may or may not start with "Exif\0\0" (WebP's
 * EXIF chunk, written both ways): one such prefix is skipped, as PIL's
 * Exif.load skips it. */
int ld_exif_orientation(const uint8_t *block, size_t len);

/* Orientations 5 to 8 turn the picture a quarter: width and height swap. */
bool ld_exif_turns_quarter(int orientation);

/* The shown size of a picture stored as *width x *height, in place. */
void ld_exif_upright_size(int orientation, uint32_t *width, uint32_t *height);

/* Where the stored pixel (x, y) of a w x h picture lands once shown upright
 * (row-major, in the shown picture), as PIL's exif_transpose moves it. */
size_t ld_exif_upright_index(int orientation, int x, int y, int w, int h);

#endif
