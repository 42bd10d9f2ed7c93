/* NumPy .npy writing and checking; see npy.h. */
#include "latentd/npy.h"

#include <assert.h>
#include <inttypes.h>
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

/* The value after 'key': in the dict text, or NULL. */
static const char *dict_value(const char *dict, const char *key)
{
    const char *at = strstr(dict, key);
    if (!at)
        return NULL;
    at += strlen(key);
    while (*at == ' ')
        at++;
    return *at == ':' ? at + 1 + strspn(at + 1, " ") : NULL;
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
    const char *descr = dict_value(dict, "'descr'");
    const char *order = dict_value(dict, "'fortran_order'");
    const char *dims = dict_value(dict, "'shape'");
    if (!descr || strncmp(descr, "'<f4'", 5) != 0)
        return ld_fail(err, LD_EFORMAT, "npy: not little-endian float32");
    if (!order || strncmp(order, "False", 5) != 0)
        return ld_fail(err, LD_EFORMAT, "npy: not C order");
    if (!dims || *dims != '(')
        return ld_fail(err, LD_EFORMAT, "npy: no shape");
    const char *p = dims + 1;
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
