/* Decoding uploaded images into the encoder's input: planar RGB floats in
 * [0, 1], [3, height, width].  Alpha is dropped (not composited) and gray is
 * replicated, as PIL's convert("RGB") does; 16-bit samples are divided by
 * 65535. */
#ifndef LATENTD_IMAGE_H
#define LATENTD_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "latentd/common.h"

typedef struct {
    int width, height;
    float *rgb; /* [3, height, width] */
} ld_image;

/* A progressive JPEG costs one pass over the whole image per scan, so a small
 * file of many scans takes seconds; real encoders write about 10. */
#define LD_IMAGE_DEFAULT_MAX_SCANS 100

/* All zero (or a NULL pointer) is "no size limit, the default scan limit and
 * no time limit".  Each limit is reported as LD_ETOOLARGE. */
typedef struct {
    uint32_t max_width, max_height; /* 0: no limit */
    uint64_t max_pixels;            /* 0: no limit */
    int max_scans;     /* JPEG scans; 0: LD_IMAGE_DEFAULT_MAX_SCANS, < 0: no limit */
    int max_decode_ms; /* wall-clock time for one decode; 0: no limit */
    /* a file read from disk (ld_image_load_file, ld_inputs_load_file), in
     * bytes; 0: LD_MAX_FILE_BYTES_DEFAULT (latentd/safefile.h) */
    uint64_t max_file_bytes;
} ld_image_limits;

typedef enum { LD_IMG_UNKNOWN, LD_IMG_PNG, LD_IMG_JPEG, LD_IMG_WEBP } ld_image_format;

/* Which format the bytes are, from their signature. */
ld_image_format ld_image_sniff(const uint8_t *data, size_t len);

/* The format and size from the header alone, without decoding pixels, so a
 * caller can refuse or reserve memory first.  PNG: the IHDR chunk (its CRC
 * checked); JPEG: the markers up to the first scan.  Costs time linear in the
 * header's length at worst.  A file whose header is fine may still fail to
 * decode.  LD_EFORMAT for unknown or bad data, LD_EUNSUPPORTED for JPEG in a
 * build without libjpeg or WebP without libwebp (*format is still set), and
 * for an animated WebP.  format may be NULL. */
int ld_image_probe(const uint8_t *data, size_t len, ld_image_format *format, uint32_t *width,
                   uint32_t *height, char *err);

/* Decode PNG (or JPEG when built with libjpeg, WebP with libwebp) from memory.  Bad data is
 * LD_EFORMAT, and so is a truncated file or a JPEG that libjpeg would decode
 * only by guessing (its corrupt-data warnings).  An image over the size
 * limits is LD_ETOOLARGE (checked from the header, before any pixel memory is
 * taken), and so is one over the scan or time limit. */
int ld_image_decode(const uint8_t *data, size_t len, const ld_image_limits *limits,
                    ld_image *out, char *err);
int ld_png_decode(const uint8_t *data, size_t len, const ld_image_limits *limits,
                  ld_image *out, char *err);
int ld_jpeg_decode(const uint8_t *data, size_t len, const ld_image_limits *limits,
                   ld_image *out, char *err);
/* Whether this build decodes JPEG. */
int ld_jpeg_supported(void);
/* A still WebP image (lossy or lossless; an animation is LD_EUNSUPPORTED). */
int ld_webp_decode(const uint8_t *data, size_t len, const ld_image_limits *limits,
                   ld_image *out, char *err);
/* Whether this build decodes WebP. */
int ld_webp_supported(void);

/* A whole regular file into a malloc'd buffer (LD_EIO, LD_ENOMEM), at most
 * LD_MAX_FILE_BYTES_DEFAULT (LD_ETOOLARGE); a FIFO, device or socket is
 * refused unread (LD_EUNSUPPORTED): see ld_read_regular. */
int ld_read_file(const char *path, uint8_t **data, size_t *len, char *err);
/* Read a whole regular file (at most limits->max_file_bytes) into memory and
 * decode it. */
int ld_image_load_file(const char *path, const ld_image_limits *limits, ld_image *out,
                       char *err);

void ld_image_free(ld_image *img);

/* Shared by the decoders: check the size against the limits and allocate. */
int ld_image_alloc(ld_image *img, uint32_t width, uint32_t height, const ld_image_limits *limits,
                   char *err);

#endif
