/* PNG (and JPEG, WebP) decoding: every PNG variant of the fixtures converts to RGB
 * the way the fixtures' README says; broken files are refused, never a crash;
 * the header probe agrees with the decoder; the scan and time limits stop
 * files built to be slow. */
#include "latentd/image.h"
#include "progjpeg.h"
#include "testutil.h"

#include <check.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifdef HAVE_LIBJPEG
#include <stdio.h>
#include <jpeglib.h>
#endif
#ifdef HAVE_LIBWEBP
#include <webp/encode.h>
#endif

#define PLANE (64 * 64)

static ld_image load(const char *name)
{
    char err[LD_ERR_LEN];
    ld_image img;
    int rc = ld_image_load_file(fixture("images/%s.png", name), NULL, &img, err);
    ck_assert_msg(rc == LD_OK, "%s", err);
    ck_assert_int_eq(img.width, 64);
    ck_assert_int_eq(img.height, 64);
    return img;
}

static void assert_gray(const ld_image *img)
{
    for (int i = 0; i < PLANE; i++) {
        ck_assert_float_eq(img->rgb[i], img->rgb[PLANE + i]);
        ck_assert_float_eq(img->rgb[i], img->rgb[2 * PLANE + i]);
    }
}

START_TEST(variants_convert_as_the_fixtures_say)
{
    ld_image rgb = load("astronaut_64");
    /* same pixels exactly: 16-bit v·257/65535 = v/255, interlacing, alpha dropped */
    static const char *const same[] = {"astronaut_64_rgb16", "astronaut_64_interlaced",
                                       "astronaut_64_rgba"};
    for (int k = 0; k < 3; k++) {
        ld_image other = load(same[k]);
        ck_assert_msg(memcmp(other.rgb, rgb.rgb, 3 * PLANE * sizeof(float)) == 0, "%s differs",
                      same[k]);
        ld_image_free(&other);
    }
    ld_image gray = load("astronaut_64_gray");
    assert_gray(&gray);
    static const char *const same_gray[] = {"astronaut_64_gray16", "astronaut_64_gray_alpha"};
    for (int k = 0; k < 2; k++) {
        ld_image other = load(same_gray[k]);
        ck_assert_msg(memcmp(other.rgb, gray.rgb, 3 * PLANE * sizeof(float)) == 0,
                      "%s differs", same_gray[k]);
        ld_image_free(&other);
    }
    /* gray is ITU-R 601-2 luma of the colour image */
    double worst = 0;
    for (int i = 0; i < PLANE; i++) {
        double luma = 0.299 * rgb.rgb[i] + 0.587 * rgb.rgb[PLANE + i] + 0.114 * rgb.rgb[2 * PLANE + i];
        worst = fmax(worst, fabs(luma - gray.rgb[i]));
    }
    ck_assert_double_le(worst, 1.5 / 255);
    /* the palette image is a 200-colour quantisation: close, not equal */
    ld_image pal = load("astronaut_64_palette");
    double sum = 0;
    for (int i = 0; i < 3 * PLANE; i++)
        sum += fabs(pal.rgb[i] - rgb.rgb[i]);
    ck_assert_double_lt(sum / (3 * PLANE), 0.03);
    ck_assert_int_ne(memcmp(pal.rgb, rgb.rgb, 3 * PLANE * sizeof(float)), 0);
    ld_image_free(&pal);
    ld_image_free(&gray);
    ld_image_free(&rgb);
}
END_TEST

START_TEST(non_square_sizes)
{
    char err[LD_ERR_LEN];
    ld_image img;
    ck_assert_int_eq(ld_image_load_file(fixture("images/chelsea_60x44.png"), NULL, &img, err), LD_OK);
    ck_assert_int_eq(img.height, 60);
    ck_assert_int_eq(img.width, 44);
    ld_image_free(&img);
    ck_assert_int_eq(ld_image_load_file(fixture("images/coffee_96x128.png"), NULL, &img, err), LD_OK);
    ck_assert_int_eq(img.height, 96);
    ck_assert_int_eq(img.width, 128);
    ld_image_free(&img);
}
END_TEST

/* ---- PNGs written by libpng itself, for sizes no fixture has ---- */
typedef struct {
    uint8_t *p;
    size_t len, cap;
} membuf;

static void membuf_write(png_structp png, png_bytep data, png_size_t n)
{
    membuf *m = png_get_io_ptr(png);
    if (m->len + n > m->cap) {
        m->cap = (m->len + n) * 2;
        m->p = realloc(m->p, m->cap);
        ck_assert_ptr_nonnull(m->p);
    }
    memcpy(m->p + m->len, data, n);
    m->len += n;
}

static void membuf_flush(png_structp png) { (void)png; }

/* An 8-bit gray PNG with a gradient; with header_only, just signature + IHDR. */
static uint8_t *gray_png(uint32_t width, uint32_t height, int header_only, size_t *len)
{
    membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    ck_assert_ptr_nonnull(info);
    png_set_write_fn(png, &m, membuf_write, membuf_flush);
    png_set_compression_level(png, 1);
    png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    if (!header_only) {
        png_bytep row = malloc(width);
        for (uint32_t y = 0; y < height; y++) {
            for (uint32_t x = 0; x < width; x++)
                row[x] = (png_byte)(x * 7 + y * 3);
            png_write_row(png, row);
        }
        free(row);
        png_write_end(png, info);
    }
    png_destroy_write_struct(&png, &info);
    *len = m.len;
    return m.p;
}

/* Pillow 9.4 refuses every cut of astronaut_64.png except the last 22 bytes
 * (a missing IEND or IDAT CRC); latentd is stricter and refuses them all. */
START_TEST(truncated_pngs_are_refused_at_every_length)
{
    size_t len;
    uint8_t *png = read_all(fixture("images/astronaut_64.png"), &len);
    for (size_t cut = 0; cut < len; cut++) {
        char err[LD_ERR_LEN] = "";
        ld_image img;
        int rc = ld_image_decode(png, cut, NULL, &img, err);
        ck_assert_msg(rc == LD_EFORMAT, "cut at %zu: rc %d", cut, rc);
        ck_assert_ptr_null(img.rgb);
    }
    free(png);
}
END_TEST

START_TEST(truncated_pngs_are_refused)
{
    size_t len;
    uint8_t *png = read_all(fixture("images/astronaut_64_interlaced.png"), &len);
    for (size_t cut = 0; cut < len; cut += cut < 64 ? 1 : 97) {
        char err[LD_ERR_LEN] = "";
        ld_image img;
        int rc = ld_image_decode(png, cut, NULL, &img, err);
        ck_assert_msg(rc == LD_EFORMAT, "cut at %zu: rc %d", cut, rc);
        ck_assert_ptr_null(img.rgb);
        ck_assert(err[0] != '\0');
    }
    free(png);
}
END_TEST

START_TEST(corrupt_pngs_never_crash)
{
    size_t len;
    uint8_t *png = read_all(fixture("images/astronaut_64_rgb16.png"), &len);
    uint8_t *copy = malloc(len);
    uint32_t s = 7;
    int refused = 0;
    for (int round = 0; round < 400; round++) {
        memcpy(copy, png, len);
        for (int k = 0; k < 4; k++) {
            s = s * 1103515245u + 12345u;
            copy[8 + (s >> 8) % (len - 8)] ^= (uint8_t)(1u << (s % 8));
        }
        char err[LD_ERR_LEN];
        ld_image img;
        if (ld_image_decode(copy, len, NULL, &img, err) == LD_OK)
            ld_image_free(&img);
        else
            refused++;
    }
    ck_assert_int_gt(refused, 300); /* CRCs catch almost every flip */
    free(copy);
    free(png);
}
END_TEST

START_TEST(garbage_and_limits)
{
    char err[LD_ERR_LEN];
    ld_image img;
    const uint8_t junk[] = "GIF89a not an image we take";
    ck_assert_int_eq(ld_image_decode(junk, sizeof junk, NULL, &img, err), LD_EFORMAT);
    ck_assert_int_eq(ld_image_decode(junk, 0, NULL, &img, err), LD_EFORMAT);
    size_t len;
    uint8_t *png = read_all(fixture("images/coffee_96x128.png"), &len);
    ld_image_limits limits = {.max_pixels = 96 * 128 - 1};
    ck_assert_int_eq(ld_image_decode(png, len, &limits, &img, err), LD_ETOOLARGE);
    ck_assert_ptr_nonnull(strstr(err, "128x96"));
    limits = (ld_image_limits){.max_width = 100};
    ck_assert_int_eq(ld_image_decode(png, len, &limits, &img, err), LD_ETOOLARGE);
    limits = (ld_image_limits){.max_width = 128, .max_height = 96, .max_pixels = 96 * 128};
    ck_assert_int_eq(ld_image_decode(png, len, &limits, &img, err), LD_OK);
    ld_image_free(&img);
    free(png);
}
END_TEST

START_TEST(png_decode_time_limit)
{
    size_t len;
    uint8_t *png = gray_png(2000, 2000, 0, &len); /* tens of ms to decode */
    char err[LD_ERR_LEN];
    ld_image img;
    ld_image_limits limits = {.max_decode_ms = 1};
    ck_assert_int_eq(ld_image_decode(png, len, &limits, &img, err), LD_ETOOLARGE);
    ck_assert_msg(strstr(err, "longer than the 1 ms allowed") != NULL, "%s", err);
    ck_assert_ptr_null(img.rgb);
    limits.max_decode_ms = 600000;
    ck_assert_msg(ld_image_decode(png, len, &limits, &img, err) == LD_OK, "%s", err);
    ck_assert_int_eq(img.width, 2000);
    ck_assert_float_eq(img.rgb[2000 * 2000 + 2001], (float)(png_byte)(7 + 3) / 255.0f);
    ld_image_free(&img);
    free(png);
}
END_TEST

/* Sizes from manifest.json (what PIL reports); the probe must agree with it
 * and with what the decoder then produces. */
START_TEST(probe_gives_the_size_from_the_header)
{
    static const struct {
        const char *name;
        uint32_t width, height;
        ld_image_format format;
    } cases[] = {
        {"astronaut_64.png", 64, 64, LD_IMG_PNG},
        {"astronaut_64_interlaced.png", 64, 64, LD_IMG_PNG},
        {"astronaut_64_palette.png", 64, 64, LD_IMG_PNG},
        {"astronaut_64_gray16.png", 64, 64, LD_IMG_PNG},
        {"astronaut_256.png", 256, 256, LD_IMG_PNG},
        {"chelsea_60x44.png", 44, 60, LD_IMG_PNG},
        {"coffee_96x128.png", 128, 96, LD_IMG_PNG},
        {"astronaut_64.jpg", 64, 64, LD_IMG_JPEG},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len;
        uint8_t *data = read_all(fixture("images/%s", cases[i].name), &len);
        char err[LD_ERR_LEN] = "";
        ld_image_format format = LD_IMG_UNKNOWN;
        uint32_t w = 0, h = 0;
        int rc = ld_image_probe(data, len, &format, &w, &h, err);
        ck_assert_int_eq(format, cases[i].format);
        if (format == LD_IMG_JPEG && !ld_jpeg_supported()) {
            ck_assert_int_eq(rc, LD_EUNSUPPORTED);
            free(data);
            continue;
        }
        ck_assert_msg(rc == LD_OK, "%s: %s", cases[i].name, err);
        ck_assert_uint_eq(w, cases[i].width);
        ck_assert_uint_eq(h, cases[i].height);
        ld_image img;
        ck_assert_int_eq(ld_image_decode(data, len, NULL, &img, err), LD_OK);
        ck_assert_int_eq(img.width, (int)w);
        ck_assert_int_eq(img.height, (int)h);
        ld_image_free(&img);
        free(data);
    }
}
END_TEST

/* A 100000x100000 header (libpng's own writer) needs 33 bytes and is probed
 * without a pixel; the decoder, which reads on, finds no image data. */
START_TEST(probe_reads_only_the_header)
{
    size_t len;
    uint8_t *png = gray_png(100000, 100000, 1, &len);
    ck_assert_uint_eq(len, 33);
    char err[LD_ERR_LEN];
    uint32_t w, h;
    ck_assert_msg(ld_image_probe(png, len, NULL, &w, &h, err) == LD_OK, "%s", err);
    ck_assert_uint_eq(w, 100000);
    ck_assert_uint_eq(h, 100000);
    ld_image img;
    ck_assert_int_eq(ld_image_decode(png, len, NULL, &img, err), LD_EFORMAT);
    free(png);
}
END_TEST

START_TEST(probe_refuses_bad_headers)
{
    char err[LD_ERR_LEN];
    uint32_t w = 1, h = 1;
    ld_image_format format;
    const uint8_t junk[] = "GIF89a not an image we take";
    ck_assert_int_eq(ld_image_probe(junk, sizeof junk, &format, &w, &h, err), LD_EFORMAT);
    ck_assert_int_eq(format, LD_IMG_UNKNOWN);
    ck_assert_uint_eq(w, 0);
    size_t len;
    uint8_t *png = read_all(fixture("images/astronaut_64.png"), &len);
    for (size_t cut = 0; cut < 33; cut++) /* signature + IHDR is 33 bytes */
        ck_assert_int_eq(ld_image_probe(png, cut, NULL, &w, &h, err), LD_EFORMAT);
    for (size_t at = 8; at < 33; at++) { /* IHDR's CRC covers type and data */
        png[at] ^= 0x10;
        ck_assert_msg(ld_image_probe(png, len, NULL, &w, &h, err) == LD_EFORMAT, "byte %zu", at);
        png[at] ^= 0x10;
    }
    ck_assert_int_eq(ld_image_probe(png, len, NULL, &w, &h, err), LD_OK);
    free(png);
}
END_TEST

/* What diffusers' load_image hands a pipeline for a file of
 * tests/fixtures/images/orientation/<folder>/: <name>.want.png, which
 * make-png-webp.py there wrote with PIL's exif_transpose + convert("RGB").
 * Lossless, so every sample must be equal; the probe (which the daemon sizes
 * the job with) must give the upright size too. */
static void assert_shown_as_pil(const char *folder, const char *name, const char *ext)
{
    char err[LD_ERR_LEN];
    ld_image got, want;
    size_t len;
    uint8_t *data = read_all(fixture("images/orientation/%s/%s%s", folder, name, ext), &len);
    ck_assert_msg(ld_image_decode(data, len, NULL, &got, err) == LD_OK, "%s: %s", name, err);
    ck_assert_msg(ld_image_load_file(fixture("images/orientation/%s/%s.want.png", folder, name),
                                     NULL, &want, err) == LD_OK, "%s", err);
    ck_assert_msg(got.width == want.width && got.height == want.height, "%s/%s: %dx%d, PIL %dx%d",
                  folder, name, got.width, got.height, want.width, want.height);
    uint32_t w, h;
    ck_assert_msg(ld_image_probe(data, len, NULL, &w, &h, err) == LD_OK, "%s", err);
    ck_assert_msg(w == (uint32_t)want.width && h == (uint32_t)want.height,
                  "%s/%s: probed %ux%u, PIL shows %dx%d", folder, name, w, h, want.width,
                  want.height);
    size_t differ = 0;
    for (size_t k = 0; k < (size_t)3 * want.width * want.height; k++)
        differ += got.rgb[k] != want.rgb[k];
    ck_assert_msg(differ == 0, "%s/%s: %zu samples differ from PIL's", folder, name, differ);
    ld_image_free(&got);
    ld_image_free(&want);
    free(data);
}

/* PIL reads a PNG's eXIf chunk (before the image data, or after it when
 * there is none before; the last of several) and exif_transpose turns the
 * picture, as for a JPEG. */
START_TEST(png_as_pil_shows_it)
{
    static const char *const names[] = {
        "exif_1", "exif_2", "exif_3", "exif_4", "exif_5", "exif_6", "exif_7", "exif_8",
        "exif_6_after_idat", "exif_6_then_8", "exif_6_before_8_after"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        assert_shown_as_pil("png", names[i], ".png");
}
END_TEST

#ifdef HAVE_LIBJPEG
/* Compress astronaut_64 with libjpeg at quality 100; decoding gives it back closely. */
static uint8_t *to_jpeg(const ld_image *img, unsigned long *len)
{
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    uint8_t *out = NULL;
    jpeg_mem_dest(&c, &out, len);
    c.image_width = (JDIMENSION)img->width;
    c.image_height = (JDIMENSION)img->height;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 100, TRUE);
    jpeg_start_compress(&c, TRUE);
    JSAMPLE row[64 * 3];
    while (c.next_scanline < c.image_height) {
        for (int x = 0; x < img->width; x++)
            for (int ch = 0; ch < 3; ch++)
                row[x * 3 + ch] = (JSAMPLE)lroundf(img->rgb[ch * PLANE + c.next_scanline * 64 + x] * 255);
        JSAMPROW rows[1] = {row};
        jpeg_write_scanlines(&c, rows, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return out;
}

START_TEST(jpeg_decodes)
{
    ld_image rgb = load("astronaut_64");
    unsigned long len = 0;
    uint8_t *jpg = to_jpeg(&rgb, &len);
    ck_assert_int_eq(ld_image_sniff(jpg, len), LD_IMG_JPEG);
    char err[LD_ERR_LEN];
    ld_image img;
    ck_assert_msg(ld_image_decode(jpg, len, NULL, &img, err) == LD_OK, "%s", err);
    double sum = 0;
    for (int i = 0; i < 3 * PLANE; i++)
        sum += fabs(img.rgb[i] - rgb.rgb[i]);
    ck_assert_double_lt(sum / (3 * PLANE), 0.02);
    ld_image_free(&img);
    for (unsigned long cut = 3; cut < len; cut += 301) /* truncated: refused, not padded */
        ck_assert_int_eq(ld_image_decode(jpg, cut, NULL, &img, err), LD_EFORMAT);
    free(jpg);
    ld_image_free(&rgb);
}
END_TEST

/* What diffusers' load_image hands a pipeline: PIL's exif_transpose, then
 * convert("RGB").  tests/fixtures/images/orientation/make.py wrote each JPEG
 * and, beside it, PIL's picture of it as a PNG (Debian's python3-pil 9.4 on
 * the same libjpeg-turbo, so the pixels come out equal). */
START_TEST(jpeg_as_pil_shows_it)
{
    static const char *const names[] = {"exif_1", "exif_2", "exif_3", "exif_4", "exif_5",
                                        "exif_6", "exif_7", "exif_8", "cmyk"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char err[LD_ERR_LEN];
        ld_image got, want;
        size_t len;
        uint8_t *jpg = read_all(fixture("images/orientation/%s.jpg", names[i]), &len);
        ck_assert_msg(ld_image_decode(jpg, len, NULL, &got, err) == LD_OK, "%s: %s", names[i], err);
        ck_assert_msg(ld_image_load_file(fixture("images/orientation/%s.png", names[i]), NULL,
                                         &want, err) == LD_OK, "%s", err);
        ck_assert_msg(got.width == want.width && got.height == want.height, "%s: %dx%d, PIL %dx%d",
                      names[i], got.width, got.height, want.width, want.height);
        /* the header alone gives the upright size too (the daemon prices with it) */
        uint32_t w, h;
        ck_assert(ld_image_probe(jpg, len, NULL, &w, &h, err) == LD_OK);
        ck_assert(w == (uint32_t)want.width && h == (uint32_t)want.height);
        float worst = 0;
        for (size_t k = 0; k < (size_t)3 * want.width * want.height; k++)
            worst = fmaxf(worst, fabsf(got.rgb[k] - want.rgb[k]));
        /* equal here; one level of slack for another libjpeg-turbo's SIMD */
        ck_assert_msg(worst <= 1.0f / 255 + 1e-6f, "%s: off by %g of 1", names[i], worst);
        ld_image_free(&got);
        ld_image_free(&want);
        free(jpg);
    }
    /* the orientation as a LONG (type 4), which PIL takes as well: exif_6's
     * big-endian ("MM") entry 0112 0003 00000001 0006xxxx made 0112 0004
     * 00000001 00000006 */
    size_t len;
    uint8_t *jpg = read_all(fixture("images/orientation/exif_6.jpg"), &len);
    static const uint8_t tag[] = {0x01, 0x12, 0x00, 0x03};
    uint8_t *at = memmem(jpg, len, tag, sizeof tag);
    ck_assert_ptr_nonnull(at);
    static const uint8_t as_long[] = {0x01, 0x12, 0x00, 0x04, 0, 0, 0, 1, 0, 0, 0, 6};
    memcpy(at, as_long, sizeof as_long);
    uint32_t w, h;
    char err[LD_ERR_LEN];
    ck_assert(ld_image_probe(jpg, len, NULL, &w, &h, err) == LD_OK);
    ck_assert_msg(w == 32 && h == 48, "%ux%u", w, h);
    free(jpg);
}
END_TEST

/* Pillow 9.4 refuses astronaut_64.jpg cut at any length ("image file is
 * truncated"); libjpeg alone would warn and decode the rest as grey. */
START_TEST(truncated_jpegs_are_refused_at_every_length)
{
    size_t len;
    uint8_t *jpg = read_all(fixture("images/astronaut_64.jpg"), &len);
    for (size_t cut = 0; cut < len; cut++) {
        char err[LD_ERR_LEN] = "";
        ld_image img;
        int rc = ld_image_decode(jpg, cut, NULL, &img, err);
        ck_assert_msg(rc == LD_EFORMAT, "cut at %zu: rc %d", cut, rc);
        ck_assert_ptr_null(img.rgb);
        if (cut >= 3) /* shorter is not recognised as JPEG at all */
            ck_assert_msg(strcmp(err, "truncated JPEG") == 0, "cut at %zu: %s", cut, err);
        uint32_t w, h;
        rc = ld_image_probe(jpg, cut, NULL, &w, &h, err);
        ck_assert_msg(rc == LD_OK || rc == LD_EFORMAT, "probe, cut at %zu: rc %d", cut, rc);
    }
    free(jpg);
}
END_TEST

static void quiet(j_common_ptr cinfo) { (void)cinfo; }

/* How many warnings plain libjpeg (default handlers, as PIL uses it) emits
 * while decoding data it does not refuse. */
static long libjpeg_warnings(const uint8_t *data, size_t len, JSAMPLE *first_of_last_row)
{
    struct jpeg_decompress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    e.output_message = quiet;
    jpeg_create_decompress(&c);
    jpeg_mem_src(&c, data, (unsigned long)len);
    jpeg_read_header(&c, TRUE);
    c.out_color_space = JCS_RGB;
    jpeg_start_decompress(&c);
    JSAMPLE *row = malloc((size_t)c.output_width * 3);
    while (c.output_scanline < c.output_height)
        jpeg_read_scanlines(&c, &row, 1);
    *first_of_last_row = row[0];
    jpeg_finish_decompress(&c);
    jpeg_destroy_decompress(&c);
    free(row);
    return e.num_warnings;
}

/* The scan cut in the middle but the file closed with EOI: libjpeg warns
 * "premature end of data segment" and fills the rest with grey 128 (Pillow
 * 9.4 returns that grey image); latentd refuses it. */
START_TEST(corrupt_jpeg_data_is_refused)
{
    size_t len;
    uint8_t *jpg = read_all(fixture("images/astronaut_64.jpg"), &len);
    JSAMPLE corner;
    ck_assert_int_eq(libjpeg_warnings(jpg, len, &corner), 0);
    size_t sos = 2;
    while (sos + 4 < len && !(jpg[sos] == 0xff && jpg[sos + 1] == 0xda))
        sos++;
    const size_t data_start = sos + 2 + ((size_t)jpg[sos + 2] << 8 | jpg[sos + 3]);
    const size_t cut = data_start + (len - 2 - data_start) / 2;
    jpg[cut] = 0xff;
    jpg[cut + 1] = 0xd9;
    ck_assert_int_gt(libjpeg_warnings(jpg, cut + 2, &corner), 0);
    ck_assert_int_eq(corner, 128);
    char err[LD_ERR_LEN];
    ld_image img;
    ck_assert_int_eq(ld_image_decode(jpg, cut + 2, NULL, &img, err), LD_EFORMAT);
    ck_assert_msg(strstr(err, "premature end of data segment") != NULL, "%s", err);
    ck_assert_ptr_null(img.rgb);
    free(jpg);
}
END_TEST

/* Every pixel of a progjpeg file is 128 (Pillow 9.4 decodes them so). */
static void assert_uniform_128(const ld_image *img)
{
    const size_t n = (size_t)3 * img->width * img->height;
    for (size_t i = 0; i < n; i++)
        ck_assert_float_eq(img->rgb[i], 128 / 255.0f);
}

START_TEST(progressive_scan_limit)
{
    size_t len;
    uint8_t *jpg = progjpeg_valid(64, 48, &len);
    char err[LD_ERR_LEN];
    ld_image img;
    uint32_t w, h;
    ck_assert_int_eq(ld_image_probe(jpg, len, NULL, &w, &h, err), LD_OK);
    ck_assert_uint_eq(w, 64);
    ck_assert_uint_eq(h, 48);
    /* the default limit: 100 scans */
    ck_assert_int_eq(ld_image_decode(jpg, len, NULL, &img, err), LD_ETOOLARGE);
    ck_assert_msg(strcmp(err, "JPEG has more than 100 scans") == 0, "%s", err);
    ck_assert_ptr_null(img.rgb);
    ld_image_limits limits = {.max_scans = PROGJPEG_VALID_SCANS - 1};
    ck_assert_int_eq(ld_image_decode(jpg, len, &limits, &img, err), LD_ETOOLARGE);
    /* at or without the limit the same file decodes, without a warning */
    limits.max_scans = PROGJPEG_VALID_SCANS;
    ck_assert_msg(ld_image_decode(jpg, len, &limits, &img, err) == LD_OK, "%s", err);
    assert_uniform_128(&img);
    ld_image_free(&img);
    limits.max_scans = -1;
    ck_assert_msg(ld_image_decode(jpg, len, &limits, &img, err) == LD_OK, "%s", err);
    ld_image_free(&img);
    free(jpg);
    /* few scans pass the default */
    jpg = progjpeg_repeated(64, 48, 50, &len);
    ck_assert_msg(ld_image_decode(jpg, len, NULL, &img, err) == LD_OK, "%s", err);
    assert_uniform_128(&img);
    ld_image_free(&img);
    free(jpg);
}
END_TEST

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* 100,000 scans over a 1536x1536 image in 1.6 MB: unbounded, libjpeg (and
 * Pillow) spend ~38 s of CPU on it.  The default scan limit stops it after
 * 100 scans (~50 ms here); the time limit alone stops it too. */
START_TEST(many_scans_attack_fails_fast)
{
    size_t len;
    uint8_t *jpg = progjpeg_repeated(1536, 1536, 100000, &len);
    ck_assert_uint_lt(len, 2000000);
    char err[LD_ERR_LEN];
    ld_image img;
    uint32_t w, h;
    double t0 = now_ms();
    ck_assert_int_eq(ld_image_probe(jpg, len, NULL, &w, &h, err), LD_OK);
    ck_assert_uint_eq(w, 1536);
    ck_assert_double_lt(now_ms() - t0, 1000 * test_time_scale()); /* a header read: microseconds */
    t0 = now_ms();
    ck_assert_int_eq(ld_image_decode(jpg, len, NULL, &img, err), LD_ETOOLARGE);
    ck_assert_msg(strcmp(err, "JPEG has more than 100 scans") == 0, "%s", err);
    ck_assert_double_lt(now_ms() - t0, 5000 * test_time_scale());
    const ld_image_limits limits = {.max_scans = -1, .max_decode_ms = 100};
    t0 = now_ms();
    ck_assert_int_eq(ld_image_decode(jpg, len, &limits, &img, err), LD_ETOOLARGE);
    const double took = now_ms() - t0;
    ck_assert_msg(strstr(err, "longer than the 100 ms allowed") != NULL, "%s", err);
    ck_assert_double_ge(took, 100);
    ck_assert_double_lt(took, 2000 * test_time_scale());
    ck_assert_ptr_null(img.rgb);
    free(jpg);
}
END_TEST
#else
START_TEST(jpeg_probe_unsupported)
{
    size_t len;
    uint8_t *jpg = read_all(fixture("images/astronaut_64.jpg"), &len);
    char err[LD_ERR_LEN];
    ld_image_format format;
    uint32_t w, h;
    ck_assert_int_eq(ld_image_probe(jpg, len, &format, &w, &h, err), LD_EUNSUPPORTED);
    ck_assert_int_eq(format, LD_IMG_JPEG);
    free(jpg);
}
END_TEST
#endif

#ifdef HAVE_LIBWEBP
/* Lossless WebP gives back astronaut_64's bytes exactly; truncated or lying
 * files are refused. */
START_TEST(webp_lossless_round_trip)
{
    ld_image rgb = load("astronaut_64");
    uint8_t packed[PLANE * 3];
    for (int i = 0; i < PLANE; i++)
        for (int ch = 0; ch < 3; ch++)
            packed[i * 3 + ch] = (uint8_t)lroundf(rgb.rgb[ch * PLANE + i] * 255);
    uint8_t *webp = NULL;
    const size_t len = WebPEncodeLosslessRGB(packed, 64, 64, 64 * 3, &webp);
    ck_assert_uint_gt(len, 0);
    ck_assert_int_eq(ld_image_sniff(webp, len), LD_IMG_WEBP);
    char err[LD_ERR_LEN];
    uint32_t w, h;
    ck_assert_msg(ld_image_probe(webp, len, NULL, &w, &h, err) == LD_OK, "%s", err);
    ck_assert_uint_eq(w, 64);
    ck_assert_uint_eq(h, 64);
    ld_image img;
    ck_assert_msg(ld_image_decode(webp, len, NULL, &img, err) == LD_OK, "%s", err);
    ck_assert_mem_eq(img.rgb, rgb.rgb, sizeof(float) * 3 * PLANE);
    ld_image_free(&img);
    const ld_image_limits small = {.max_pixels = 100};
    ck_assert_int_eq(ld_image_decode(webp, len, &small, &img, err), LD_ETOOLARGE);
    for (size_t cut = 12; cut < len; cut += 97)
        ck_assert_int_eq(ld_image_decode(webp, cut, NULL, &img, err), LD_EFORMAT);
    WebPFree(webp);
    ld_image_free(&rgb);
}
END_TEST

/* PIL reads the EXIF chunk of an extended (VP8X) WebP through libwebpdemux:
 * only when VP8X's EXIF flag says it is there, with or without "Exif\0\0". */
START_TEST(webp_as_pil_shows_it)
{
    static const char *const names[] = {"exif_1", "exif_2", "exif_3", "exif_5", "exif_6",
                                        "exif_7", "exif_8", "exif_6_prefixed", "exif_6_no_flag"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        assert_shown_as_pil("webp", names[i], ".webp");
}
END_TEST
#endif

static Suite *image_suite(void)
{
    Suite *s = suite_create("image");
    TCase *tc = tcase_create("decode");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, variants_convert_as_the_fixtures_say);
    tcase_add_test(tc, non_square_sizes);
    tcase_add_test(tc, truncated_pngs_are_refused);
    tcase_add_test(tc, truncated_pngs_are_refused_at_every_length);
    tcase_add_test(tc, corrupt_pngs_never_crash);
    tcase_add_test(tc, garbage_and_limits);
    tcase_add_test(tc, png_decode_time_limit);
    tcase_add_test(tc, probe_gives_the_size_from_the_header);
    tcase_add_test(tc, probe_reads_only_the_header);
    tcase_add_test(tc, probe_refuses_bad_headers);
    tcase_add_test(tc, png_as_pil_shows_it);
#ifdef HAVE_LIBJPEG
    tcase_add_test(tc, jpeg_decodes);
    tcase_add_test(tc, jpeg_as_pil_shows_it);
    tcase_add_test(tc, truncated_jpegs_are_refused_at_every_length);
    tcase_add_test(tc, corrupt_jpeg_data_is_refused);
    tcase_add_test(tc, progressive_scan_limit);
    tcase_add_test(tc, many_scans_attack_fails_fast);
#else
    tcase_add_test(tc, jpeg_probe_unsupported);
#endif
#ifdef HAVE_LIBWEBP
    tcase_add_test(tc, webp_lossless_round_trip);
    tcase_add_test(tc, webp_as_pil_shows_it);
#endif
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(image_suite());
}
