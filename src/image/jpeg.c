/* JPEG → planar RGB floats with libjpeg(-turbo), when configure found it.
 * libjpeg reports errors through a callback that must not return; it longjmps
 * back here, and so do the warning and progress callbacks when they refuse
 * the file. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "latentd/image.h"

#include <string.h>

#include "image_internal.h"

#ifdef HAVE_LIBJPEG
#include <setjmp.h>
#include <stdio.h> /* jpeglib.h needs FILE */
#include <stdlib.h>

#include <jerror.h>
#include <jpeglib.h>

/* Everything the callbacks need; reached through cinfo->client_data. */
typedef struct {
    struct jpeg_error_mgr err;
    struct jpeg_progress_mgr progress;
    jmp_buf jump;
    int status; /* what a longjmp back means: LD_EFORMAT or LD_ETOOLARGE */
    char message[LD_ERR_LEN];
    int max_scans;    /* 0: none */
    int max_ms;       /* for the message */
    int64_t deadline; /* see ld_image_deadline */
} jpeg_guard;

static _Noreturn void bail(j_common_ptr cinfo, int status)
{
    jpeg_guard *g = cinfo->client_data;
    g->status = status;
    longjmp(g->jump, 1);
}

static void on_error(j_common_ptr cinfo)
{
    jpeg_guard *g = cinfo->client_data;
    char text[JMSG_LENGTH_MAX];
    cinfo->err->format_message(cinfo, text);
    snprintf(g->message, sizeof g->message, "bad JPEG: %s", text);
    bail(cinfo, LD_EFORMAT);
}

/* Warnings that leave every pixel as the file meant it: metadata libjpeg does
 * not understand, or stray bytes between segments after a scan was decoded
 * in full (common in camera files; PIL accepts them too).  Every other
 * warning means libjpeg is about to guess pixels (grey after a premature end,
 * blocks after a bad code), so it fails the decode; new warnings of a later
 * libjpeg fail by default. */
static int harmless_warning(int code)
{
    switch (code) {
    case JWRN_JFIF_MAJOR:
    case JWRN_EXTRANEOUS_DATA:
        return 1;
    default:
        return 0;
    }
}

/* level -1 is a warning; levels >= 0 are trace output, which stays quiet. */
static void on_message(j_common_ptr cinfo, int level)
{
    if (level >= 0 || harmless_warning(cinfo->err->msg_code))
        return;
    jpeg_guard *g = cinfo->client_data;
    if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
        snprintf(g->message, sizeof g->message, "truncated JPEG");
    } else {
        char text[JMSG_LENGTH_MAX];
        cinfo->err->format_message(cinfo, text);
        snprintf(g->message, sizeof g->message, "bad JPEG: %s", text);
    }
    bail(cinfo, LD_EFORMAT);
}

/* libjpeg calls this between units of work (an iMCU row of a scan, a
 * scanline), including while jpeg_start_decompress reads every scan of a
 * progressive file; libjpeg-turbo's djpeg enforces -maxscans the same way. */
static void on_progress(j_common_ptr cinfo)
{
    jpeg_guard *g = cinfo->client_data;
    const int scan = ((j_decompress_ptr)cinfo)->input_scan_number;
    if (g->max_scans && scan > g->max_scans) {
        snprintf(g->message, sizeof g->message, "JPEG has more than %d scans", g->max_scans);
        bail(cinfo, LD_ETOOLARGE);
    }
    if (ld_image_past(g->deadline)) {
        snprintf(g->message, sizeof g->message,
                 "decoding the JPEG took longer than the %d ms allowed", g->max_ms);
        bail(cinfo, LD_ETOOLARGE);
    }
}

/* Point cinfo at the guard; the caller still has to setjmp(g->jump). */
static void guard_init(jpeg_guard *g, struct jpeg_decompress_struct *cinfo,
                       const ld_image_limits *limits)
{
    memset(g, 0, sizeof *g);
    memset(cinfo, 0, sizeof *cinfo);
    cinfo->err = jpeg_std_error(&g->err);
    cinfo->client_data = g; /* jpeg_create_decompress keeps it; its own errors need it */
    g->err.error_exit = on_error;
    g->err.emit_message = on_message;
    g->progress.progress_monitor = on_progress;
    g->max_scans = ld_image_max_scans(limits);
    g->max_ms = limits ? limits->max_decode_ms : 0;
    g->deadline = ld_image_deadline(limits);
}

/* After guard_init: the decompressor reading from memory, watched by g. */
static void start(jpeg_guard *g, struct jpeg_decompress_struct *cinfo, const uint8_t *data,
                  size_t len)
{
    jpeg_create_decompress(cinfo);
    cinfo->progress = &g->progress;
    jpeg_mem_src(cinfo, data, (unsigned long)len);
}

int ld_jpeg_supported(void) { return 1; }

int ld_jpeg_probe(const uint8_t *data, size_t len, uint32_t *width, uint32_t *height, char *err)
{
    struct jpeg_decompress_struct cinfo;
    jpeg_guard g;
    guard_init(&g, &cinfo, NULL);
    int rc = LD_OK;
    if (setjmp(g.jump)) {
        rc = ld_fail(err, g.status, "%s", g.message);
    } else {
        start(&g, &cinfo, data, len);
        jpeg_read_header(&cinfo, TRUE); /* stops at the first SOS */
        *width = cinfo.image_width;
        *height = cinfo.image_height;
    }
    jpeg_destroy_decompress(&cinfo);
    return rc;
}

/* One scanline of interleaved RGB bytes into row y of the planar image. */
static void row_to_planar(const JSAMPLE *row, int y, ld_image *out)
{
    const size_t plane = (size_t)out->width * out->height;
    float *dst = out->rgb + (size_t)y * out->width;
    for (int x = 0; x < out->width; x++)
        for (int c = 0; c < 3; c++)
            dst[c * plane + x] = row[x * 3 + c] / 255.0f;
}

int ld_jpeg_decode(const uint8_t *data, size_t len, const ld_image_limits *limits,
                   ld_image *out, char *err)
{
    memset(out, 0, sizeof *out);
    struct jpeg_decompress_struct cinfo;
    jpeg_guard g;
    JSAMPLE *volatile row = NULL;
    volatile int rc = LD_OK;
    guard_init(&g, &cinfo, limits);
    if (setjmp(g.jump)) {
        rc = ld_fail(err, g.status, "%s", g.message);
        goto done;
    }
    start(&g, &cinfo, data, len);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.out_color_space = JCS_RGB; /* gray and YCbCr alike come out as RGB */
    if ((rc = ld_image_alloc(out, cinfo.image_width, cinfo.image_height, limits, err)) != LD_OK)
        goto done;
    jpeg_start_decompress(&cinfo); /* a progressive file is read in full here */
    row = malloc((size_t)cinfo.output_width * cinfo.output_components);
    if (!row) {
        rc = ld_fail(err, LD_ENOMEM, "out of memory decoding a JPEG");
        goto done;
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        const int y = (int)cinfo.output_scanline;
        JSAMPROW rows[1] = {row};
        jpeg_read_scanlines(&cinfo, rows, 1);
        row_to_planar(row, y, out);
    }
    jpeg_finish_decompress(&cinfo); /* reads to EOI: a cut after the last scan is caught here */
done:
    free(row);
    jpeg_destroy_decompress(&cinfo);
    if (rc != LD_OK)
        ld_image_free(out);
    return rc;
}

#else

int ld_jpeg_supported(void) { return 0; }

int ld_jpeg_probe(const uint8_t *data, size_t len, uint32_t *width, uint32_t *height, char *err)
{
    (void)data;
    (void)len;
    *width = *height = 0;
    return ld_fail(err, LD_EUNSUPPORTED, "JPEG input is not supported by this build "
                   "(configure did not find libjpeg)");
}

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
