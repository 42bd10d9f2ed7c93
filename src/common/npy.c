/* NumPy .npy writing and checking; see npy.h. */
#include "latentd/npy.h"

#include <assert.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char magic[8] = "\x93NUMPY\x01\x00";

size_t ld_npy_header(int ndim, const int64_t *shape, uint8_t out[LD_NPY_HEADER_MAX])
{
    assert(ndim >= 1 && ndim <= LD_NPY_MAX_DIMS);
    char dict[LD_NPY_HEADER_MAX];
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (int d = 0; d < ndim; d++) /* a 1-tuple needs its comma: (5,) */
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%" PRId64 "%s", shape[d],
                      ndim == 1 || d + 1 < ndim ? ", " : "");
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    const size_t total = ((size_t)10 + (size_t)n + 1 + 63) / 64 * 64;
    assert(total <= LD_NPY_HEADER_MAX);
    const size_t dict_len = total - 10;
    memcpy(out, magic, 8);
    out[8] = (uint8_t)(dict_len & 0xff);
    out[9] = (uint8_t)(dict_len >> 8);
    memset(out + 10, ' ', dict_len);
    memcpy(out + 10, dict, (size_t)n);
    out[total - 1] = '\n';
    return total;
}

int ld_npy_serialize(const float *data, int ndim, const int64_t *shape, uint8_t **buf,
                     size_t *len, char *err)
{
    size_t numel = 1;
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0 || ld_mul_size(numel, (size_t)shape[d], &numel) != 0)
            return ld_fail(err, LD_EINVAL, "npy: bad shape");
    uint8_t header[LD_NPY_HEADER_MAX];
    const size_t hl = ld_npy_header(ndim, shape, header);
    size_t bytes;
    if (ld_mul_size(numel, sizeof(float), &bytes) != 0 || !(*buf = malloc(hl + bytes)))
        return ld_fail(err, LD_ENOMEM, "out of memory for a %zu-float npy array", numel);
    memcpy(*buf, header, hl);
    memcpy(*buf + hl, data, bytes);
    *len = hl + bytes;
    return LD_OK;
}

/* ---- reading a header's dict literal ---- */

static bool blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static char *skip_blanks(char *p)
{
    while (blank(*p))
        p++;
    return p;
}

/* Past the quoted string at p (quote included), or NULL when it never ends. */
static char *skip_string(char *p)
{
    const char quote = *p++;
    for (; *p != quote; p++) {
        if (*p == '\0')
            return NULL;
        if (*p == '\\' && p[1] != '\0')
            p++;
    }
    return p + 1;
}

/* Past a value: to the ',' or '}' that ends it, strings and brackets
 * (a structured descr is a list of tuples) skipped whole, so a key-like text
 * inside a value is never taken for a key.  NULL when malformed. */
static char *skip_value(char *p)
{
    int depth = 0;
    for (;;) {
        switch (*p) {
        case '\0':
            return NULL;
        case '\'':
        case '"':
            if (!(p = skip_string(p)))
                return NULL;
            continue;
        case '(': case '[': case '{':
            depth++;
            break;
        case ')': case ']':
            if (depth-- == 0)
                return NULL;
            break;
        case '}':
            if (depth-- == 0)
                return p;
            break;
        case ',':
            if (depth == 0)
                return p;
            break;
        default:
            break;
        }
        p++;
    }
}

/* Which field of the dict a quoted key names; NULL for any other key. */
static char **dict_slot(ld_npy_dict *d, const char *key, size_t len)
{
    if (len == 5 && !memcmp(key, "descr", 5))
        return &d->descr;
    if (len == 13 && !memcmp(key, "fortran_order", 13))
        return &d->fortran_order;
    if (len == 5 && !memcmp(key, "shape", 5))
        return &d->shape;
    return NULL;
}

int ld_npy_dict_parse(char *text, ld_npy_dict *out, char *err)
{
    memset(out, 0, sizeof *out);
    char *p = skip_blanks(text);
    if (*p++ != '{')
        return ld_fail(err, LD_EFORMAT, "npy: the header is not a dict");
    for (;;) {
        p = skip_blanks(p);
        if (*p == '}') { /* after a trailing comma, or {} */
            p++;
            break;
        }
        if (*p != '\'' && *p != '"')
            return ld_fail(err, LD_EFORMAT, "npy: a header key is not a quoted string");
        char *key = p + 1, *after = skip_string(p);
        if (!after)
            return ld_fail(err, LD_EFORMAT, "npy: a header key never ends");
        const size_t key_len = (size_t)(after - 1 - key);
        char **slot = dict_slot(out, key, key_len);
        if (!slot)
            return ld_fail(err, LD_EFORMAT, "npy: header key '%.*s' (numpy reads only 'descr', "
                           "'fortran_order' and 'shape')", (int)(key_len < 40 ? key_len : 40), key);
        if (*slot)
            return ld_fail(err, LD_EFORMAT, "npy: the header gives '%.*s' twice", (int)key_len, key);
        p = skip_blanks(after);
        if (*p++ != ':')
            return ld_fail(err, LD_EFORMAT, "npy: no ':' after a header key");
        char *value = skip_blanks(p), *end = skip_value(value);
        if (!end)
            return ld_fail(err, LD_EFORMAT, "npy: a header value never ends");
        const char delim = *end;
        char *cut = end;
        while (cut > value && blank(cut[-1]))
            cut--;
        if (cut == value)
            return ld_fail(err, LD_EFORMAT, "npy: header key '%.*s' has no value", (int)key_len,
                           key);
        *cut = '\0'; /* may be the delimiter itself: it was kept above */
        *slot = value;
        p = end + 1;
        if (delim == '}')
            break;
    }
    if (*skip_blanks(p) != '\0')
        return ld_fail(err, LD_EFORMAT, "npy: text after the header's dict");
    return LD_OK;
}

int ld_npy_check(const uint8_t *head, size_t head_len, uint64_t file_size, int *ndim,
                 int64_t shape[LD_NPY_MAX_DIMS], size_t *data_offset, char *err)
{
    if (head_len < 10 || memcmp(head, magic, 6) != 0)
        return ld_fail(err, LD_EFORMAT, "not an npy file");
    if (head[6] != 1 || head[7] != 0)
        return ld_fail(err, LD_EFORMAT, "npy version %d.%d (want 1.0)", head[6], head[7]);
    const size_t total = 10 + (size_t)(head[8] | head[9] << 8);
    if (total > head_len || total > file_size)
        return ld_fail(err, LD_EFORMAT, "npy header truncated");
    char dict[LD_NPY_HEADER_MAX * 4];
    if (total - 10 >= sizeof dict)
        return ld_fail(err, LD_EFORMAT, "npy header too long");
    memcpy(dict, head + 10, total - 10);
    dict[total - 10] = '\0';
    ld_npy_dict d;
    int rc = ld_npy_dict_parse(dict, &d, err);
    if (rc != LD_OK)
        return rc;
    if (!d.descr || strcmp(d.descr, "'<f4'") != 0)
        return ld_fail(err, LD_EFORMAT, "npy: not little-endian float32");
    if (!d.fortran_order || strcmp(d.fortran_order, "False") != 0)
        return ld_fail(err, LD_EFORMAT, "npy: not C order");
    if (!d.shape || *d.shape != '(')
        return ld_fail(err, LD_EFORMAT, "npy: no shape");
    const char *p = d.shape + 1;
    uint64_t numel = 1;
    *ndim = 0;
    for (;;) {
        p += strspn(p, " ");
        if (*p == ')')
            break;
        char *end;
        const long long v = strtoll(p, &end, 10);
        if (end == p || v < 0 || *ndim == LD_NPY_MAX_DIMS ||
            (v > 0 && numel > UINT64_MAX / 4 / (uint64_t)v))
            return ld_fail(err, LD_EFORMAT, "npy: bad shape");
        shape[(*ndim)++] = v;
        numel *= (uint64_t)v;
        p = end + strspn(end, " ");
        if (*p == ',')
            p++;
        else if (*p != ')')
            return ld_fail(err, LD_EFORMAT, "npy: bad shape");
    }
    if (file_size - total != numel * sizeof(float))
        return ld_fail(err, LD_EFORMAT, "npy: %" PRIu64 " data bytes for %" PRIu64 " floats",
                       file_size - total, numel);
    if (data_offset)
        *data_offset = total;
    return LD_OK;
}
