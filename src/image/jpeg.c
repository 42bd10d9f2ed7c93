/* JPEG → planar RGB floats with libjpeg(-turbo), when configure found it.
 * libjpeg reports errors through a callback that must not return; it longjmps
 * back here, and so do the warning and progress callbacks when they refuse
 * the file.
 *
 * As diffusers' load_image sees a file (PIL's ImageOps.exif_transpose, then
 * convert("RGB")): the EXIF orientation is applied, so a phone photo does not
 * arrive on its side, and CMYK/YCCK files are converted as PIL converts them. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "latentd/image.h"

#include <stdbool.h>
#include <string.h>

#include "exif.h"
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
    int orientation;  /* EXIF's, from the first Exif APP1 segment; 1 without one */
    bool saw_exif;
    uint8_t *exif;    /* that segment while it is read (a longjmp may leave it here) */
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
    g->orientation = 1;
}

static boolean read_app1(j_decompress_ptr cinfo);

/* After guard_init: the decompressor reading from memory, watched by g,
 * reading EXIF's orientation from the APP1 segments as they pass. */
static void start(jpeg_guard *g, struct jpeg_decompress_struct *cinfo, const uint8_t *data,
                  size_t len)
{
    jpeg_create_decompress(cinfo);
    cinfo->progress = &g->progress;
    jpeg_set_marker_processor(cinfo, JPEG_APP0 + 1, read_app1);
    jpeg_mem_src(cinfo, data, (unsigned long)len);
}

/* ---- EXIF orientation (read here, parsed and applied by exif.c) ---- */

static int next_byte(j_decompress_ptr cinfo)
{
    struct jpeg_source_mgr *src = cinfo->src;
    if (src->bytes_in_buffer == 0 && !src->fill_input_buffer(cinfo))
        ERREXIT(cinfo, JERR_CANT_SUSPEND);
    src->bytes_in_buffer--;
    return *src->next_input_byte++;
}

/* libjpeg's handler for APP1: the first Exif segment is read (64 KB at most,
 * freed at once) for its orientation; every other APP1 is skipped unread, so
 * a file padded with markers costs no memory (jpeg_save_markers would keep
 * each one in libjpeg's pool). */
static boolean read_app1(j_decompress_ptr cinfo)
{
    jpeg_guard *g = cinfo->client_data;
    const int hi = next_byte(cinfo), lo = next_byte(cinfo);
    const long length = (long)(hi << 8 | lo) - 2;
    if (length <= 0)
        return TRUE;
    uint8_t head[6];
    const long peek = length < 6 ? length : 6;
    for (long i = 0; i < peek; i++)
        head[i] = (uint8_t)next_byte(cinfo);
    const long rest = length - peek;
    if (g->saw_exif || peek < 6 || memcmp(head, "Exif\0\0", 6) != 0) {
        if (rest > 0)
            cinfo->src->skip_input_data(cinfo, rest);
        return TRUE;
    }
    g->saw_exif = true;
    g->exif = malloc(rest > 0 ? (size_t)rest : 1);
    if (!g->exif) { /* not worth failing the picture for: shown as stored */
        cinfo->src->skip_input_data(cinfo, rest);
        return TRUE;
    }
    for (long i = 0; i < rest; i++)
        g->exif[i] = (uint8_t)next_byte(cinfo);
    g->orientation = ld_exif_tiff_orientation(g->exif, (size_t)rest);
    free(g->exif);
    g->exif = NULL;
    return TRUE;
}

static int exif_orientation(const struct jpeg_decompress_struct *cinfo)
{
    const jpeg_guard *g = cinfo->client_data;
    return g->orientation;
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
        ld_exif_upright_size(exif_orientation(&cinfo), width, height);
    }
    jpeg_destroy_decompress(&cinfo);
    free(g.exif); /* left by a longjmp out of read_app1 */
    return rc;
}

/* PIL's CMYK → RGB (Pillow's cmyk2rgb), on the inverted samples PIL reads
 * from every CMYK JPEG ("CMYK;I": it assumes Adobe's convention). */
static void cmyk_to_rgb(const JSAMPLE *cmyk, uint8_t rgb[3])
{
    const int nk = cmyk[3]; /* 255 - k, where k = 255 - the stored byte */
    for (int c = 0; c < 3; c++) {
        const int ink = 255 - cmyk[c];
        const int t = ink * nk + 128;
        const int v = nk - (((t >> 8) + t) >> 8); /* nk - ink·nk/255, rounded */
        rgb[c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
}

/* Stored scanline y (RGB, or CMYK when components is 4) into the upright
 * planar image. */
static void row_to_planar(const JSAMPLE *row, int components, int y, int stored_w,
                          int stored_h, int orientation, ld_image *out)
{
    const size_t plane = (size_t)out->width * out->height;
    for (int x = 0; x < stored_w; x++) {
        uint8_t rgb[3];
        if (components == 4)
            cmyk_to_rgb(row + x * 4, rgb);
        else
            memcpy(rgb, row + x * 3, 3);
        const size_t at = ld_exif_upright_index(orientation, x, y, stored_w, stored_h);
        for (int c = 0; c < 3; c++)
            out->rgb[c * plane + at] = rgb[c] / 255.0f;
    }
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
    /* gray and YCbCr come out as RGB; CMYK and YCCK (libjpeg turns YCCK into
     * CMYK) are converted below */
    const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    const int orientation = exif_orientation(&cinfo);
    uint32_t width = cinfo.image_width, height = cinfo.image_height;
    ld_exif_upright_size(orientation, &width, &height);
    if ((rc = ld_image_alloc(out, width, height, limits, err)) != LD_OK)
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
        row_to_planar(row, cinfo.output_components, y, (int)cinfo.output_width,
                      (int)cinfo.output_height, orientation, out);
    }
    jpeg_finish_decompress(&cinfo); /* reads to EOI: a cut after the last scan is caught here */
done:
    free(row);
    jpeg_destroy_decompress(&cinfo);
    free(g.exif); /* left by a longjmp out of read_app1 */
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
