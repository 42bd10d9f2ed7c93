/* PNG (and JPEG) decoding: every PNG variant of the fixtures converts to RGB
 * the way the fixtures' README says; broken files are refused, never a crash. */
#include "latentd/image.h"
#include "testutil.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifdef HAVE_LIBJPEG
#include <stdio.h>
#include <jpeglib.h>
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
    for (unsigned long cut = 3; cut < len; cut += 301) { /* truncated: refused or padded, no crash */
        if (ld_image_decode(jpg, cut, NULL, &img, err) == LD_OK)
            ld_image_free(&img);
    }
    free(jpg);
    ld_image_free(&rgb);
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
    tcase_add_test(tc, corrupt_pngs_never_crash);
    tcase_add_test(tc, garbage_and_limits);
#ifdef HAVE_LIBJPEG
    tcase_add_test(tc, jpeg_decodes);
#endif
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(image_suite());
}
