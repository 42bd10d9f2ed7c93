/* WebP → planar RGB floats with libwebp, when configure found it.  Datasets
 * are often WebP; a still image (lossy or lossless) decodes, an animation is
 * refused.  Alpha is dropped, as for PNG.  As diffusers' load_image sees a
 * file (PIL's exif_transpose): the orientation in an extended file's EXIF
 * chunk is applied. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "latentd/image.h"

#include <string.h>

#include "image_internal.h"

#ifdef HAVE_LIBWEBP
#include <stdlib.h>

#include <webp/decode.h>

#include "exif.h"

int ld_webp_supported(void) { return 1; }

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The EXIF orientation, from the chunk PIL reads it from.  PIL asks
 * libwebpdemux for the first EXIF chunk, which it keeps only in an extended
 * (VP8X) file whose EXIF flag is set, looking no further than the RIFF size.
 * The same walk is done here over the chunk headers rather than through
 * libwebpdemux, which mallocs a record for every chunk it passes: a 32 MB
 * upload of empty chunks cost it 125 MB and 0.8 s per call (probe, then
 * decode); this walk takes neither, and gave libwebpdemux's answer on each
 * of 77,000 mutated fixtures libwebpdemux accepts.  1 for a simple (VP8 or
 * VP8L) file, without the flag, or when the walk runs out. */
static int webp_orientation(const uint8_t *data, size_t len)
{
    enum { EXIF_FLAG = 0x08 };
    if (len < 30 || memcmp(data + 12, "VP8X", 4) != 0)
        return 1;
    const uint64_t riff_end = (uint64_t)le32(data + 4) + 8;
    const size_t end = riff_end < len ? (size_t)riff_end : len;
    const uint32_t vp8x_size = le32(data + 16);
    if (vp8x_size < 10 || !(data[20] & EXIF_FLAG))
        return 1;
    for (uint64_t at = 20 + (uint64_t)vp8x_size + (vp8x_size & 1); at + 8 <= end;) {
        const uint32_t size = le32(data + at + 4);
        const uint64_t padded = (uint64_t)size + (size & 1);
        if (padded > end - at - 8)
            return 1; /* cut short: libwebpdemux refuses the file */
        if (!memcmp(data + at, "EXIF", 4))
            return ld_exif_orientation(data + at + 8, size);
        at += 8 + padded;
    }
    return 1;
}

/* The size as stored: libwebp reads the RIFF header and the first chunk
 * (VP8, VP8L or VP8X) only. */
static int stored_size(const uint8_t *data, size_t len, uint32_t *width, uint32_t *height,
                       char *err)
{
    WebPBitstreamFeatures f;
    const VP8StatusCode status = WebPGetFeatures(data, len, &f);
    if (status == VP8_STATUS_NOT_ENOUGH_DATA)
        return ld_fail(err, LD_EFORMAT, "bad WebP: truncated header");
    if (status != VP8_STATUS_OK || f.width <= 0 || f.height <= 0)
        return ld_fail(err, LD_EFORMAT, "bad WebP header (libwebp status %d)", (int)status);
    if (f.has_animation)
        return ld_fail(err, LD_EUNSUPPORTED, "animated WebP is not supported");
    *width = (uint32_t)f.width;
    *height = (uint32_t)f.height;
    return LD_OK;
}

/* The size as shown, after the EXIF orientation. */
int ld_webp_probe(const uint8_t *data, size_t len, uint32_t *width, uint32_t *height, char *err)
{
    int rc = stored_size(data, len, width, height, err);
    if (rc == LD_OK)
        ld_exif_upright_size(webp_orientation(data, len), width, height);
    return rc;
}

int ld_webp_decode(const uint8_t *data, size_t len, const ld_image_limits *limits,
                   ld_image *out, char *err)
{
    memset(out, 0, sizeof *out); /* a refused image holds nothing, as the other decoders say */
    uint32_t width = 0, height = 0;
    int rc = stored_size(data, len, &width, &height, err);
    if (rc != LD_OK)
        return rc;
    const int orientation = webp_orientation(data, len);
    uint32_t shown_w = width, shown_h = height;
    ld_exif_upright_size(orientation, &shown_w, &shown_h);
    /* the limits are checked from the header, before libwebp takes pixel memory */
    if ((rc = ld_image_alloc(out, shown_w, shown_h, limits, err)) != LD_OK)
        return rc;
    const size_t plane = (size_t)width * height;
    uint8_t *rgb = malloc(plane * 3);
    if (!rgb) {
        ld_image_free(out);
        return ld_fail(err, LD_ENOMEM, "out of memory for a %ux%u image", width, height);
    }
    if (!WebPDecodeRGBInto(data, len, rgb, plane * 3, (int)width * 3)) {
        free(rgb);
        ld_image_free(out);
        return ld_fail(err, LD_EFORMAT, "bad WebP: the image data does not decode");
    }
    for (uint32_t y = 0; y < height; y++)
        for (uint32_t x = 0; x < width; x++) {
            const uint8_t *px = rgb + ((size_t)y * width + x) * 3;
            const size_t at = ld_exif_upright_index(orientation, (int)x, (int)y, (int)width,
                                                    (int)height);
            for (int c = 0; c < 3; c++)
                out->rgb[c * plane + at] = px[c] / 255.0f;
        }
    free(rgb);
    return LD_OK;
}

#else

int ld_webp_supported(void) { return 0; }

int ld_webp_probe(const uint8_t *data, size_t len, uint32_t *width, uint32_t *height, char *err)
{
    (void)data;
    (void)len;
    (void)width;
    (void)height;
    return ld_fail(err, LD_EUNSUPPORTED, "this build has no WebP support (libwebp)");
}

int ld_webp_decode(const uint8_t *data, size_t len, const ld_image_limits *limits,
                   ld_image *out, char *err)
{
    (void)limits;
    memset(out, 0, sizeof *out);
    return ld_webp_probe(data, len, NULL, NULL, err);
}

#endif
