/* See progjpeg.h.  Layout: SOI, DQT (all ones), SOF2 (8-bit, one component),
 * DHT DC (one code: category 0), DHT AC (EOB runs only: EOB0..EOB14, 4-bit
 * codes), then scans, then EOI.  The AC data is nothing but end-of-band runs,
 * so a scan over a whole image costs a few bytes. */
#include "progjpeg.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    uint8_t *p;
    size_t len, cap;
    uint32_t bits; /* pending entropy-coded bits, most significant first */
    int nbits;
} out;

static void put(out *o, uint8_t byte)
{
    if (o->len == o->cap) {
        o->cap = o->cap ? o->cap * 2 : 4096;
        o->p = realloc(o->p, o->cap);
        if (!o->p)
            abort();
    }
    o->p[o->len++] = byte;
}

static void put16(out *o, unsigned v)
{
    put(o, (uint8_t)(v >> 8));
    put(o, (uint8_t)v);
}

static void segment(out *o, uint8_t marker, const uint8_t *payload, size_t n)
{
    put(o, 0xff);
    put(o, marker);
    put16(o, (unsigned)n + 2);
    for (size_t i = 0; i < n; i++)
        put(o, payload[i]);
}

/* Entropy-coded bits, with the 0xFF byte stuffing the format requires. */
static void bits(out *o, uint32_t value, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        o->bits = (o->bits << 1) | ((value >> i) & 1);
        if (++o->nbits == 8) {
            put(o, (uint8_t)o->bits);
            if ((uint8_t)o->bits == 0xff)
                put(o, 0);
            o->bits = 0;
            o->nbits = 0;
        }
    }
}

/* Pad the last byte with ones, as encoders do before a marker. */
static void flush_bits(out *o)
{
    if (o->nbits)
        bits(o, 0xff, 8 - o->nbits);
}

static void header(out *o, int width, int height)
{
    put(o, 0xff);
    put(o, 0xd8);
    uint8_t dqt[65] = {0};
    memset(dqt + 1, 1, 64);
    segment(o, 0xdb, dqt, sizeof dqt);
    const uint8_t sof[] = {8, (uint8_t)(height >> 8), (uint8_t)height, (uint8_t)(width >> 8),
                           (uint8_t)width, 1, 1, 0x11, 0};
    segment(o, 0xc2, sof, sizeof sof);
    uint8_t dc[1 + 16 + 1] = {0x00, 1}; /* one code of length 1: category 0 */
    segment(o, 0xc4, dc, sizeof dc);
    uint8_t ac[1 + 16 + 15] = {0x10};
    ac[1 + 3] = 15; /* fifteen 4-bit codes: EOBr is code r */
    for (int r = 0; r < 15; r++)
        ac[17 + r] = (uint8_t)(r << 4);
    segment(o, 0xc4, ac, sizeof ac);
}

static void sos(out *o, int ss, int se, int ah, int al)
{
    const uint8_t p[] = {1, 1, 0x00, (uint8_t)ss, (uint8_t)se, (uint8_t)(ah << 4 | al)};
    segment(o, 0xda, p, sizeof p);
}

static void dc_scan(out *o, int blocks)
{
    sos(o, 0, 0, 0, 0);
    for (int i = 0; i < blocks; i++)
        bits(o, 0, 1); /* DC difference of category 0 */
    flush_bits(o);
}

/* End-of-band runs over every block: EOBr covers 2^r plus r extra bits. */
static void eob_runs(out *o, int blocks)
{
    while (blocks > 0) {
        int r = 0;
        while (r < 14 && (2 << r) <= blocks)
            r++;
        const int run = blocks < (2 << r) - 1 ? blocks : (2 << r) - 1;
        bits(o, (uint32_t)r, 4);
        if (r)
            bits(o, (uint32_t)(run - (1 << r)), r);
        blocks -= run;
    }
    flush_bits(o);
}

static int block_count(int width, int height)
{
    return ((width + 7) / 8) * ((height + 7) / 8);
}

static uint8_t *finish(out *o, size_t *len)
{
    put(o, 0xff);
    put(o, 0xd9);
    *len = o->len;
    return o->p;
}

uint8_t *progjpeg_valid(int width, int height, size_t *len)
{
    out o = {0};
    const int blocks = block_count(width, height);
    header(&o, width, height);
    dc_scan(&o, blocks);
    for (int k = 1; k < 64; k++) {
        sos(&o, k, k, 0, 13);
        eob_runs(&o, blocks);
        for (int ah = 13; ah >= 1; ah--) {
            sos(&o, k, k, ah, ah - 1);
            eob_runs(&o, blocks);
        }
    }
    return finish(&o, len);
}

uint8_t *progjpeg_repeated(int width, int height, int n_scans, size_t *len)
{
    out o = {0};
    const int blocks = block_count(width, height);
    header(&o, width, height);
    dc_scan(&o, blocks);
    for (int s = 1; s < n_scans; s++) {
        sos(&o, 1, 63, 0, 0);
        eob_runs(&o, blocks);
    }
    return finish(&o, len);
}
