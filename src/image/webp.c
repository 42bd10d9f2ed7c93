/* WebP → planar RGB floats with libwebp, when configure found it.  Datasets
 * are often WebP; a still image (lossy or lossless) decodes, an animation is
 * refused.  Alpha is dropped, as for PNG. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "latentd/image.h"

#include <string.h>

#include "image_internal.h"

#ifdef HAVE_LIBWEBP
#include <stdlib.h>

#include <webp/decode.h>

int ld_webp_supported(void) { return 1; }

/* libwebp reads the RIFF header and the first chunk (VP8, VP8L or VP8X) only. */
int ld_webp_probe(const uint8_t *data, size_t len, uint32_t *width, uint32_t *height, char *err)
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

int ld_webp_decode(const uint8_t *data, size_t len, const ld_image_limits *limits,
                   ld_image *out, char *err)
{
    memset(out, 0, sizeof *out); /* a refused image holds nothing, as the other decoders say */
    uint32_t width = 0, height = 0;
    int rc = ld_webp_probe(data, len, &width, &height, err);
    if (rc != LD_OK)
        return rc;
    /* the limits are checked from the header, before libwebp takes pixel memory */
    if ((rc = ld_image_alloc(out, width, height, limits, err)) != LD_OK)
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
    for (size_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++)
            out->rgb[c * plane + i] = rgb[i * 3 + (size_t)c] / 255.0f;
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
