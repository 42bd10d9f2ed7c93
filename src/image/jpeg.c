/* JPEG → planar RGB floats with libjpeg(-turbo), when configure found it.
 * libjpeg reports errors through a callback that must not return; it longjmps
 * back here. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "latentd/image.h"

#include <string.h>

#ifdef HAVE_LIBJPEG
#include <setjmp.h>
#include <stdio.h> /* jpeglib.h needs FILE */
#include <stdlib.h>

#include <jpeglib.h>

typedef struct {
    struct jpeg_error_mgr base;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} jpeg_error;

static void on_error(j_common_ptr cinfo)
{
    jpeg_error *e = (jpeg_error *)cinfo->err;
    cinfo->err->format_message(cinfo, e->message);
    longjmp(e->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level)
{
    (void)cinfo;
    (void)level; /* corrupt-data warnings: libjpeg recovers; keep quiet */
}

int ld_jpeg_supported(void) { return 1; }

int ld_jpeg_decode(const uint8_t *data, size_t len, const ld_image_limits *limits,
                   ld_image *out, char *err)
{
    memset(out, 0, sizeof *out);
    struct jpeg_decompress_struct cinfo;
    jpeg_error jerr;
    JSAMPLE *volatile row = NULL;
    int rc = LD_OK;
    cinfo.err = jpeg_std_error(&jerr.base);
    jerr.base.error_exit = on_error;
    jerr.base.emit_message = on_message;
    if (setjmp(jerr.jump)) {
        rc = ld_fail(err, LD_EFORMAT, "bad JPEG: %s", jerr.message);
        goto done;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)len);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.out_color_space = JCS_RGB; /* gray and YCbCr alike come out as RGB */
    if ((rc = ld_image_alloc(out, cinfo.image_width, cinfo.image_height, limits, err)) != LD_OK)
        goto done;
    jpeg_start_decompress(&cinfo);
    row = malloc((size_t)cinfo.output_width * cinfo.output_components);
    if (!row) {
        rc = ld_fail(err, LD_ENOMEM, "out of memory decoding a JPEG");
        goto done;
    }
    const size_t plane = (size_t)out->width * out->height;
    while (cinfo.output_scanline < cinfo.output_height) {
        const JDIMENSION y = cinfo.output_scanline;
        JSAMPROW rows[1] = {row};
        jpeg_read_scanlines(&cinfo, rows, 1);
        for (int x = 0; x < out->width; x++)
            for (int c = 0; c < 3; c++)
                out->rgb[c * plane + (size_t)y * out->width + x] = row[x * 3 + c] / 255.0f;
    }
    jpeg_finish_decompress(&cinfo);
done:
    free(row);
    jpeg_destroy_decompress(&cinfo);
    if (rc != LD_OK)
        ld_image_free(out);
    return rc;
}

#else

int ld_jpeg_supported(void) { return 0; }

int ld_jpeg_decode(const uint8_t *data, size_t len, const ld_image_limits *limits,
                   ld_image *out, char *err)
{
    (void)data;
    (void)len;
    (void)limits;
    memset(out, 0, sizeof *out);
    return ld_fail(err, LD_EUNSUPPORTED, "JPEG input is not supported by this build "
                   "(configure did not find libjpeg)");
}

#endif
