/* PNG → planar RGB floats with libpng's classic API, reading from memory.
 * libpng reports errors by longjmp; everything allocated after setjmp is
 * reached through `volatile` locals so the error path can free it.  As
 * diffusers' load_image sees a file (PIL's exif_transpose): the orientation
 * of an eXIf chunk is applied. */
#include "latentd/image.h"

#include <png.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exif.h"
#include "image_internal.h"

typedef struct {
    const uint8_t *data;
    size_t len, pos;
    int64_t deadline; /* see ld_image_deadline */
    bool timed_out;
    char message[LD_ERR_LEN];
} png_source;

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* CRC-32 as PNG defines it, a byte at a time through a table made here:
 * an eXIf chunk may be megabytes, and 256 entries cost less than that. */
static uint32_t crc32_of(const uint8_t *p, size_t n)
{
    uint32_t table[256];
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
        table[i] = c;
    }
    uint32_t crc = 0xffffffffu;
    for (size_t i = 0; i < n; i++)
        crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static bool is_chunk(const uint8_t *type, const char *name) { return !memcmp(type, name, 4); }

/* libpng refuses a chunk type that is not four ASCII letters; PIL stops there. */
static bool letters(const uint8_t *type)
{
    for (int i = 0; i < 4; i++)
        if (!((type[i] >= 'A' && type[i] <= 'Z') || (type[i] >= 'a' && type[i] <= 'z')))
            return false;
    return true;
}

/* The EXIF orientation of a PNG, from its eXIf chunk as PIL finds it: PIL
 * reads the chunks before the first IDAT when it opens a file, keeping the
 * last eXIf; only when there was none does exif_transpose make it read the
 * chunks after the image data, and then the last eXIf there counts.  Before
 * IDAT a chunk whose CRC is wrong is not taken (PIL refuses the whole file,
 * libpng decodes it: the chunk is ancillary); after it PIL checks no CRC, so
 * nor does this.  Only chunk headers are read, nothing is decompressed, so
 * the probe can afford it. */
static int png_orientation(const uint8_t *data, size_t len)
{
    const uint8_t *before = NULL, *after = NULL; /* the chunks' type fields */
    bool past_idat = false;
    for (size_t at = 8; len - at >= 12;) {
        const uint32_t n = be32(data + at);
        const uint8_t *type = data + at + 4;
        if (n > len - at - 12 || !letters(type) || is_chunk(type, "IEND"))
            break; /* libpng refuses what is cut or misnamed; what was found still counts */
        if (is_chunk(type, "IDAT"))
            past_idat = true;
        else if (is_chunk(type, "eXIf"))
            *(past_idat ? &after : &before) = type;
        at += 12 + (size_t)n;
    }
    if (before) {
        const uint32_t n = be32(before - 4);
        return crc32_of(before, 4 + (size_t)n) == be32(before + 4 + n)
                   ? ld_exif_tiff_orientation(before + 4, n) : 1;
    }
    return after ? ld_exif_tiff_orientation(after + 4, be32(after - 4)) : 1;
}

/* The bit depths the PNG spec allows for each colour type. */
static bool valid_depth(int color, int depth)
{
    switch (color) {
    case 0: return depth == 1 || depth == 2 || depth == 4 || depth == 8 || depth == 16;
    case 3: return depth == 1 || depth == 2 || depth == 4 || depth == 8;
    case 2: case 4: case 6: return depth == 8 || depth == 16;
    default: return false;
    }
}

/* The spec puts IHDR first, so the size is at a fixed place: no need to let
 * libpng walk (and decompress) whatever chunks follow it.  The size given is
 * the picture's as shown, after its EXIF orientation (chunk headers only). */
int ld_png_probe(const uint8_t *data, size_t len, uint32_t *width, uint32_t *height, char *err)
{
    if (len < 8 || png_sig_cmp(data, 0, 8) != 0)
        return ld_fail(err, LD_EFORMAT, "not a PNG image");
    if (len < 33)
        return ld_fail(err, LD_EFORMAT, "bad PNG: truncated before the end of IHDR");
    const uint8_t *ihdr = data + 8;
    if (be32(ihdr) != 13 || memcmp(ihdr + 4, "IHDR", 4) != 0)
        return ld_fail(err, LD_EFORMAT, "bad PNG: IHDR is not the first chunk");
    if (crc32_of(ihdr + 4, 17) != be32(ihdr + 21))
        return ld_fail(err, LD_EFORMAT, "bad PNG: IHDR CRC error");
    const uint32_t w = be32(ihdr + 8), h = be32(ihdr + 12);
    if (w == 0 || h == 0 || w > 0x7fffffffu || h > 0x7fffffffu)
        return ld_fail(err, LD_EFORMAT, "bad PNG: image size %ux%u", w, h);
    if (!valid_depth(ihdr[17], ihdr[16]) || ihdr[18] != 0 || ihdr[19] != 0 || ihdr[20] > 1)
        return ld_fail(err, LD_EFORMAT, "bad PNG: invalid IHDR fields");
    *width = w;
    *height = h;
    ld_exif_upright_size(png_orientation(data, len), width, height);
    return LD_OK;
}

/* Reads come every few KiB of input (rows and chunks alike), so checking the
 * clock here also bounds time spent in chunks between rows. */
static void read_from_memory(png_structp png, png_bytep dst, png_size_t count)
{
    png_source *src = png_get_io_ptr(png);
    if (ld_image_past(src->deadline)) {
        src->timed_out = true;
        png_error(png, "decode time limit");
    }
    if (count > src->len - src->pos)
        png_error(png, "truncated PNG data");
    memcpy(dst, src->data + src->pos, count);
    src->pos += count;
}

static void on_error(png_structp png, png_const_charp msg)
{
    png_source *src = png_get_error_ptr(png);
    snprintf(src->message, sizeof src->message, "%s", msg);
    png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg; /* warnings (e.g. a bad gamma chunk) do not stop decoding */
}

/* Ask libpng for 8- or 16-bit RGB or RGBA, whatever the stored format.
 * Returns the number of passes to read (7 for Adam7, else 1). */
static int set_transforms(png_structp png, png_infop info)
{
    const int color = png_get_color_type(png, info);
    const int depth = png_get_bit_depth(png, info);
    if (color == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8)
        png_set_expand_gray_1_2_4_to_8(png);
    if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA)
        png_set_gray_to_rgb(png);
    /* tRNS is not expanded: transparency is dropped, as PIL's convert("RGB") */
    const int passes = png_set_interlace_handling(png);
    png_read_update_info(png, info);
    return passes;
}

/* The stored w x h rows into the upright planar image. */
static void rows_to_planar(png_bytep *rows, int w, int h, int channels, int depth,
                           int orientation, ld_image *img)
{
    const size_t plane = (size_t)w * h;
    for (int y = 0; y < h; y++) {
        const png_byte *row = rows[y];
        for (int x = 0; x < w; x++) {
            const size_t at = ld_exif_upright_index(orientation, x, y, w, h);
            for (int c = 0; c < 3; c++) {
                float v;
                if (depth == 16) {
                    const png_byte *s = row + 2 * ((size_t)x * channels + c);
                    v = (float)((s[0] << 8) | s[1]) / 65535.0f;
                } else {
                    v = (float)row[(size_t)x * channels + c] / 255.0f;
                }
                img->rgb[c * plane + at] = v;
            }
        }
    }
}

static int too_slow(const ld_image_limits *limits, char *err)
{
    return ld_fail(err, LD_ETOOLARGE, "decoding the PNG took longer than the %d ms allowed",
                   limits->max_decode_ms);
}

static int decode(png_structp png, png_infop info, png_source *src,
                  const ld_image_limits *limits, ld_image *out, char *err)
{
    png_bytep *volatile rows = NULL;
    png_bytep volatile pixels = NULL;
    int rc = LD_OK;
    if (setjmp(png_jmpbuf(png))) {
        rc = src->timed_out ? too_slow(limits, err)
                            : ld_fail(err, LD_EFORMAT, "bad PNG: %s", src->message);
        goto done;
    }
    png_set_read_fn(png, src, read_from_memory);
    png_read_info(png, info);
    const png_uint_32 width = png_get_image_width(png, info);
    const png_uint_32 height = png_get_image_height(png, info);
    const int orientation = png_orientation(src->data, src->len);
    uint32_t shown_w = width, shown_h = height;
    ld_exif_upright_size(orientation, &shown_w, &shown_h);
    if ((rc = ld_image_alloc(out, shown_w, shown_h, limits, err)) != LD_OK)
        goto done;
    const int passes = set_transforms(png, info);
    const size_t rowbytes = png_get_rowbytes(png, info);
    const int channels = png_get_channels(png, info);
    const int depth = png_get_bit_depth(png, info);
    pixels = malloc(rowbytes * height);
    rows = malloc(sizeof(png_bytep) * height);
    if (!pixels || !rows) {
        rc = ld_fail(err, LD_ENOMEM, "out of memory decoding a %ux%u PNG", width, height);
        goto done;
    }
    for (png_uint_32 y = 0; y < height; y++)
        rows[y] = pixels + (size_t)y * rowbytes;
    /* png_read_image's loop, with the clock checked between rows */
    for (int pass = 0; pass < passes; pass++)
        for (png_uint_32 y = 0; y < height; y++) {
            png_read_row(png, rows[y], NULL);
            if (ld_image_past(src->deadline)) {
                rc = too_slow(limits, err);
                goto done;
            }
        }
    png_read_end(png, NULL);
    rows_to_planar(rows, (int)width, (int)height, channels, depth, orientation, out);
done:
    free(rows);
    free(pixels);
    if (rc != LD_OK)
        ld_image_free(out);
    return rc;
}

int ld_png_decode(const uint8_t *data, size_t len, const ld_image_limits *limits,
                  ld_image *out, char *err)
{
    memset(out, 0, sizeof *out);
    if (len < 8 || png_sig_cmp(data, 0, 8) != 0)
        return ld_fail(err, LD_EFORMAT, "not a PNG image");
    png_source src = {.data = data, .len = len, .deadline = ld_image_deadline(limits)};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, on_error, on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return ld_fail(err, LD_ENOMEM, "out of memory starting the PNG decoder");
    }
    /* latentd reads no ancillary chunk (text, sPLT, pCAL, ICC...; tRNS is
     * dropped, as PIL's convert("RGB") drops it): skipping them all keeps
     * libpng from allocating (and zeroing) whatever length a chunk declares,
     * up to 2 GB for a 45-byte upload, before it finds the data is not there */
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, NULL, -1);
    png_set_chunk_malloc_max(png, 8u << 20);
    int rc = decode(png, info, &src, limits, out, err);
    png_destroy_read_struct(&png, &info, NULL);
    return rc;
}
