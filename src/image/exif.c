/* EXIF orientation for every decoder; see exif.h. */
#include "exif.h"

#include <string.h>

static unsigned tiff_u16(const uint8_t *p, bool big_endian)
{
    return big_endian ? (unsigned)(p[0] << 8 | p[1]) : (unsigned)(p[1] << 8 | p[0]);
}

static uint32_t tiff_u32(const uint8_t *p, bool big_endian)
{
    return big_endian ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]
                      : (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

/* 1 when absent or malformed, as PIL ignores what it cannot read.  PIL takes
 * the value whatever its type; writers use SHORT, a few LONG. */
int ld_exif_tiff_orientation(const uint8_t *tiff, size_t len)
{
    if (len < 8 || (memcmp(tiff, "II", 2) != 0 && memcmp(tiff, "MM", 2) != 0))
        return 1;
    const bool be = tiff[0] == 'M';
    const uint32_t ifd = tiff_u32(tiff + 4, be);
    if (tiff_u16(tiff + 2, be) != 42 || ifd > len - 2 || ifd < 8)
        return 1;
    const unsigned entries = tiff_u16(tiff + ifd, be);
    for (unsigned i = 0; i < entries; i++) {
        const size_t at = ifd + 2 + (size_t)i * 12;
        if (at + 12 > len)
            return 1;
        if (tiff_u16(tiff + at, be) != 0x0112)
            continue;
        const unsigned type = tiff_u16(tiff + at + 2, be);
        const uint32_t value = type == 3 ? tiff_u16(tiff + at + 8, be)
                             : type == 4 ? tiff_u32(tiff + at + 8, be) : 0; /* SHORT, LONG */
        return value >= 1 && value <= 8 ? (int)value : 1;
    }
    return 1;
}

int ld_exif_orientation(const uint8_t *block, size_t len)
{
    if (len >= 6 && memcmp(block, "Exif\0\0", 6) == 0) {
        block += 6;
        len -= 6;
    }
    return ld_exif_tiff_orientation(block, len);
}

bool ld_exif_turns_quarter(int orientation) { return orientation >= 5; }

void ld_exif_upright_size(int orientation, uint32_t *width, uint32_t *height)
{
    if (ld_exif_turns_quarter(orientation)) {
        const uint32_t w = *width;
        *width = *height;
        *height = w;
    }
}

size_t ld_exif_upright_index(int orientation, int x, int y, int w, int h)
{
    int ux = x, uy = y, uw = w;
    switch (orientation) {
    case 2: ux = w - 1 - x; break;                           /* mirrored */
    case 3: ux = w - 1 - x; uy = h - 1 - y; break;           /* turned 180 */
    case 4: uy = h - 1 - y; break;                           /* flipped */
    case 5: ux = y; uy = x; uw = h; break;                   /* transposed */
    case 6: ux = h - 1 - y; uy = x; uw = h; break;           /* turned 90 clockwise */
    case 7: ux = h - 1 - y; uy = w - 1 - x; uw = h; break;   /* transversed */
    case 8: ux = y; uy = w - 1 - x; uw = h; break;           /* turned 90 counter-clockwise */
    default: break;
    }
    return (size_t)uy * uw + ux;
}
