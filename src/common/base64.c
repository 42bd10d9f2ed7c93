#include "latentd/base64.h"

#include <stdlib.h>

static const char alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int sextet(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

static int is_space(unsigned char c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

int ld_base64_decode(const char *src, size_t len, uint8_t **out, size_t *out_len, char *err)
{
    *out = NULL;
    *out_len = 0;
    uint8_t *buf = malloc(len / 4 * 3 + 3);
    if (!buf)
        return ld_fail(err, LD_ENOMEM, "out of memory decoding base64");
    size_t n = 0, padding = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];
        if (is_space(c))
            continue;
        if (c == '=') {
            padding++;
            continue;
        }
        int v = sextet(c);
        if (v < 0 || padding) {
            free(buf);
            return ld_fail(err, LD_EFORMAT, "invalid base64 at offset %zu", i);
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[n++] = (uint8_t)(acc >> bits);
        }
    }
    /* a lone sextet cannot encode a byte; more than two '=' is never valid */
    if (bits >= 6 || padding > 2) {
        free(buf);
        return ld_fail(err, LD_EFORMAT, "invalid base64: truncated or over-padded");
    }
    *out = buf;
    *out_len = n;
    return LD_OK;
}

char *ld_base64_encode(const uint8_t *src, size_t len, size_t *out_len)
{
    size_t n = (len + 2) / 3 * 4;
    char *dst = malloc(n + 1);
    if (!dst)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)src[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)src[i + 1] << 8;
        if (i + 2 < len)
            v |= src[i + 2];
        dst[o++] = alphabet[v >> 18 & 63];
        dst[o++] = alphabet[v >> 12 & 63];
        dst[o++] = i + 1 < len ? alphabet[v >> 6 & 63] : '=';
        dst[o++] = i + 2 < len ? alphabet[v & 63] : '=';
    }
    dst[o] = '\0';
    if (out_len)
        *out_len = o;
    return dst;
}
