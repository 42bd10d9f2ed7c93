/* Format sniffing, limits and the image buffer, shared by the decoders. */
#include "latentd/image.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "image_internal.h"
#include "latentd/safefile.h"

ld_image_format ld_image_sniff(const uint8_t *data, size_t len)
{
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (len >= 8 && memcmp(data, png_sig, 8) == 0)
        return LD_IMG_PNG;
    if (len >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff)
        return LD_IMG_JPEG;
    if (len >= 12 && memcmp(data, "RIFF", 4) == 0 && memcmp(data + 8, "WEBP", 4) == 0)
        return LD_IMG_WEBP;
    return LD_IMG_UNKNOWN;
}

int ld_image_probe(const uint8_t *data, size_t len, ld_image_format *format, uint32_t *width,
                   uint32_t *height, char *err)
{
    const ld_image_format f = ld_image_sniff(data, len);
    if (format)
        *format = f;
    *width = *height = 0;
    switch (f) {
    case LD_IMG_PNG:
        return ld_png_probe(data, len, width, height, err);
    case LD_IMG_JPEG:
        return ld_jpeg_probe(data, len, width, height, err);
    case LD_IMG_WEBP:
        return ld_webp_probe(data, len, width, height, err);
    default:
        return ld_fail(err, LD_EFORMAT, "not a PNG, JPEG or WebP image");
    }
}

static int64_t monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

int64_t ld_image_deadline(const ld_image_limits *limits)
{
    if (!limits || limits->max_decode_ms <= 0)
        return 0;
    return monotonic_ns() + (int64_t)limits->max_decode_ms * 1000000;
}

bool ld_image_past(int64_t deadline)
{
    return deadline != 0 && monotonic_ns() >= deadline;
}

int ld_image_max_scans(const ld_image_limits *limits)
{
    if (!limits || limits->max_scans == 0)
        return LD_IMAGE_DEFAULT_MAX_SCANS;
    return limits->max_scans < 0 ? 0 : limits->max_scans;
}

int ld_image_alloc(ld_image *img, uint32_t width, uint32_t height, const ld_image_limits *limits,
                   char *err)
{
    if (width == 0 || height == 0 || width > (1u << 24) || height > (1u << 24))
        return ld_fail(err, LD_EFORMAT, "bad image size %ux%u", width, height);
    const uint64_t pixels = (uint64_t)width * height;
    if (limits && ((limits->max_width && width > limits->max_width) ||
                   (limits->max_height && height > limits->max_height) ||
                   (limits->max_pixels && pixels > limits->max_pixels)))
        return ld_fail(err, LD_ETOOLARGE, "image %ux%u is larger than allowed", width, height);
    img->width = (int)width;
    img->height = (int)height;
    img->rgb = ld_alloc_aligned((size_t)pixels * 3, sizeof(float));
    if (!img->rgb)
        return ld_fail(err, LD_ENOMEM, "out of memory for a %ux%u image", width, height);
    return LD_OK;
}

void ld_image_free(ld_image *img)
{
    if (!img)
        return;
    ld_free_aligned(img->rgb);
    img->rgb = NULL;
}

int ld_image_decode(const uint8_t *data, size_t len, const ld_image_limits *limits,
                    ld_image *out, char *err)
{
    memset(out, 0, sizeof *out);
    switch (ld_image_sniff(data, len)) {
    case LD_IMG_PNG:
        return ld_png_decode(data, len, limits, out, err);
    case LD_IMG_JPEG:
        return ld_jpeg_decode(data, len, limits, out, err);
    case LD_IMG_WEBP:
        return ld_webp_decode(data, len, limits, out, err);
    default:
        return ld_fail(err, LD_EFORMAT, "not a PNG, JPEG or WebP image");
    }
}

int ld_read_file(const char *path, uint8_t **data, size_t *len, char *err)
{
    return ld_read_regular(path, 0, data, len, err);
}

int ld_image_load_file(const char *path, const ld_image_limits *limits, ld_image *out,
                       char *err)
{
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = ld_read_regular(path, limits ? limits->max_file_bytes : 0, &data, &len, err);
    if (rc != LD_OK)
        return rc;
    char inner[LD_ERR_LEN];
    rc = ld_image_decode(data, len, limits, out, inner);
    free(data);
    if (rc != LD_OK)
        return ld_fail(err, rc, "%s: %s", path, inner);
    return LD_OK;
}
