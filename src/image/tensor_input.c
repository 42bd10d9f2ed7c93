/* Float tensors as the encoder's input; see latentd/tensor_input.h. */
#include "latentd/tensor_input.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "latentd/npy.h"
#include "latentd/safefile.h"

#define MAX_DIMS 4

bool ld_tensor_is_npy(const uint8_t *data, size_t len)
{
    return len >= 6 && !memcmp(data, "\x93NUMPY", 6);
}

/* 8 bytes of header length, then the header's JSON object. */
bool ld_tensor_is_safetensors(const uint8_t *data, size_t len)
{
    if (len < 10)
        return false;
    uint64_t header = 0;
    for (int i = 7; i >= 0; i--)
        header = header << 8 | data[i];
    return header >= 2 && header <= len - 8 && data[8] == '{';
}

int ld_dtype_from_name(const char *name, ld_dtype *out, char *err)
{
    static const struct {
        const char *name;
        ld_dtype dtype;
    } names[] = {{"float32", LD_DT_F32}, {"float16", LD_DT_F16}, {"bfloat16", LD_DT_BF16},
                 {"float64", LD_DT_F64}, {"F32", LD_DT_F32},     {"F16", LD_DT_F16},
                 {"BF16", LD_DT_BF16},   {"F64", LD_DT_F64}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(name, names[i].name)) {
            *out = names[i].dtype;
            return LD_OK;
        }
    return ld_fail(err, LD_EINVAL, "dtype '%.20s': want float32, float16, bfloat16 or float64",
                   name);
}

size_t ld_dtype_bytes(ld_dtype dtype)
{
    switch (dtype) {
    case LD_DT_F64: return 8;
    case LD_DT_F32: return 4;
    case LD_DT_F16:
    case LD_DT_BF16: return 2;
    default: return 0;
    }
}

const char *ld_dtype_name(ld_dtype dtype)
{
    return dtype == LD_DT_F32 ? "float32" : dtype == LD_DT_F16 ? "float16"
         : dtype == LD_DT_BF16 ? "bfloat16" : dtype == LD_DT_F64 ? "float64" : "unknown";
}

/* The batch a shape describes: [N, 3, H, W] or [3, H, W], every size checked
 * so that the byte count cannot overflow, and the bytes there exactly. */
static int describe(const uint8_t *data, size_t len, const int64_t *shape, int ndim,
                    ld_dtype dtype, ld_tensor_batch *out, char *err)
{
    if (ndim != 3 && ndim != 4)
        return ld_fail(err, LD_EINVAL, "a tensor of %d dimensions: want [N, 3, H, W] or "
                       "[3, H, W]", ndim);
    const int64_t n = ndim == 4 ? shape[0] : 1;
    const int64_t *chw = shape + (ndim - 3);
    if (chw[0] != 3)
        return ld_fail(err, LD_EINVAL, "the tensor has %lld channels: want 3 (RGB, channels "
                       "first)", (long long)chw[0]);
    if (n < 1 || chw[1] < 1 || chw[2] < 1 || n > (1 << 20) || chw[1] > (1 << 24) ||
        chw[2] > (1 << 24))
        return ld_fail(err, LD_EINVAL, "tensor shape [%lld, 3, %lld, %lld] is empty or "
                       "out of range", (long long)n, (long long)chw[1], (long long)chw[2]);
    const size_t elem = ld_dtype_bytes(dtype);
    if (!elem)
        return ld_fail(err, LD_EINVAL, "tensor dtype: want float32, float16, bfloat16 or float64");
    size_t bytes;
    if (ld_mul_size((size_t)n * 3, (size_t)chw[1], &bytes) != 0 ||
        ld_mul_size(bytes, (size_t)chw[2], &bytes) != 0 || ld_mul_size(bytes, elem, &bytes) != 0)
        return ld_fail(err, LD_EINVAL, "the tensor is too large");
    if (bytes != len)
        return ld_fail(err, LD_EINVAL, "the tensor's shape and dtype make %zu bytes; %zu came",
                       bytes, len);
    *out = (ld_tensor_batch){.n = (int)n, .height = (int)chw[1], .width = (int)chw[2],
                             .dtype = dtype, .data = data};
    return LD_OK;
}

int ld_tensor_from_raw(const uint8_t *data, size_t len, const int64_t *shape, int ndim,
                       ld_dtype dtype, ld_tensor_batch *out, char *err)
{
    return describe(data, len, shape, ndim, dtype, out, err);
}

/* ---- .npy: magic, version, header length, a Python dict literal, data ---- */

static int npy_dtype(const char *v, ld_dtype *dtype, char *err)
{
    if (!v || (*v != '\'' && *v != '"'))
        return ld_fail(err, LD_EFORMAT, "npy: no 'descr' in the header");
    const char quote = *v++;
    const char *end = strchr(v, quote);
    if (!end || end - v > 8)
        return ld_fail(err, LD_EFORMAT, "npy: bad 'descr'");
    char descr[9];
    memcpy(descr, v, (size_t)(end - v));
    descr[end - v] = '\0';
    /* '<' little-endian; '|' and '=' only on this little-endian host's own writes */
    if (!strcmp(descr, "<f4") || !strcmp(descr, "=f4"))
        *dtype = LD_DT_F32;
    else if (!strcmp(descr, "<f8") || !strcmp(descr, "=f8")) /* numpy's default */
        *dtype = LD_DT_F64;
    else if (!strcmp(descr, "<f2") || !strcmp(descr, "=f2"))
        *dtype = LD_DT_F16;
    /* numpy has no bfloat16: ml_dtypes' arrays save as a 2-byte void */
    else if (!strcmp(descr, "<V2") || !strcmp(descr, "|V2") || !strcmp(descr, "bfloat16"))
        *dtype = LD_DT_BF16;
    else
        return ld_fail(err, LD_EUNSUPPORTED, "npy dtype '%s': want little-endian float32 "
                       "('<f4'), float64 ('<f8'), float16 ('<f2') or bfloat16", descr);
    return LD_OK;
}

static int npy_shape(const char *v, int64_t *shape, int *ndim, char *err)
{
    if (!v || *v != '(')
        return ld_fail(err, LD_EFORMAT, "npy: no 'shape' in the header");
    v++;
    *ndim = 0;
    for (;;) {
        while (*v == ' ')
            v++;
        if (*v == ')')
            return LD_OK;
        if (*v < '0' || *v > '9' || *ndim == MAX_DIMS)
            return ld_fail(err, LD_EINVAL, "npy: shape is not [N, 3, H, W] or [3, H, W]");
        int64_t dim = 0;
        while (*v >= '0' && *v <= '9') {
            if (dim > (INT64_C(1) << 40))
                return ld_fail(err, LD_EINVAL, "npy: a dimension is too large");
            dim = dim * 10 + (*v++ - '0');
        }
        shape[(*ndim)++] = dim;
        while (*v == ' ')
            v++;
        if (*v == ',')
            v++;
        else if (*v != ')')
            return ld_fail(err, LD_EFORMAT, "npy: bad 'shape'");
    }
}

int ld_tensor_from_npy(const uint8_t *data, size_t len, ld_tensor_batch *out, char *err)
{
    if (!ld_tensor_is_npy(data, len) || len < 10)
        return ld_fail(err, LD_EFORMAT, "not a .npy file");
    const int major = data[6];
    size_t header_len, start;
    if (major == 1) {
        header_len = (size_t)data[8] | (size_t)data[9] << 8;
        start = 10;
    } else if (major == 2 || major == 3) {
        if (len < 12)
            return ld_fail(err, LD_EFORMAT, "npy: truncated header");
        header_len = (size_t)data[8] | (size_t)data[9] << 8 | (size_t)data[10] << 16 |
                     (size_t)data[11] << 24;
        start = 12;
    } else {
        return ld_fail(err, LD_EUNSUPPORTED, "npy version %d", major);
    }
    if (header_len > len - start || header_len > 65536)
        return ld_fail(err, LD_EFORMAT, "npy: truncated header");
    char *header = malloc(header_len + 1);
    if (!header)
        return ld_fail(err, LD_ENOMEM, "out of memory");
    memcpy(header, data + start, header_len);
    header[header_len] = '\0';
    ld_dtype dtype = LD_DT_OTHER;
    int64_t shape[MAX_DIMS];
    int ndim = 0;
    ld_npy_dict dict;
    int rc = ld_npy_dict_parse(header, &dict, err);
    if (rc == LD_OK)
        rc = npy_dtype(dict.descr, &dtype, err);
    if (rc == LD_OK && (!dict.fortran_order || strcmp(dict.fortran_order, "False") != 0))
        rc = ld_fail(err, LD_EUNSUPPORTED, "npy: only C order (fortran_order False)");
    if (rc == LD_OK)
        rc = npy_shape(dict.shape, shape, &ndim, err);
    free(header);
    if (rc != LD_OK)
        return rc;
    const size_t offset = start + header_len;
    return describe(data + offset, len - offset, shape, ndim, dtype, out, err);
}

/* ---- safetensors ---- */

/* A header that describes one image tensor is a few hundred bytes; a longer
 * one would cost many times its size as parsed JSON before being refused. */
#define MAX_TENSOR_HEADER (64 * 1024)

int ld_tensor_from_safetensors(const uint8_t *data, size_t len, ld_tensor_batch *out, char *err)
{
    uint64_t header = 0;
    for (int i = 7; len >= 8 && i >= 0; i--)
        header = header << 8 | data[i];
    if (header > MAX_TENSOR_HEADER)
        return ld_fail(err, LD_EINVAL, "safetensors: a header of %llu bytes; an image tensor's "
                       "is under %d", (unsigned long long)header, MAX_TENSOR_HEADER);
    ld_st_file *file;
    int rc = ld_st_open_memory(data, len, "the body", &file, err);
    if (rc != LD_OK)
        return rc;
    const ld_st_tensor *t = ld_st_find(file, "images");
    if (!t && ld_st_count(file) == 1)
        t = ld_st_at(file, 0);
    if (!t)
        rc = ld_fail(err, LD_EINVAL, "safetensors: want a tensor named 'images' or a single "
                     "tensor (%zu found)", ld_st_count(file));
    else if (!ld_dtype_bytes(t->dtype))
        rc = ld_fail(err, LD_EUNSUPPORTED, "safetensors dtype %s: want F32, F16, BF16 or F64",
                     t->dtype_name);
    else
        rc = describe(t->data, t->nbytes, t->shape, t->ndim, t->dtype, out, err);
    ld_st_close(file); /* the batch points into `data`, which outlives the file */
    return rc;
}

size_t ld_tensor_image_bytes(const ld_tensor_batch *batch)
{
    return (size_t)3 * batch->height * batch->width * ld_dtype_bytes(batch->dtype);
}

/* ---- conversion ---- */

/* Larger than any picture's value, however it was scaled: beyond it the
 * encoder's float32 arithmetic overflows to Inf and NaN. */
#define MAX_MAGNITUDE 1e4

static float element(const uint8_t *p, ld_dtype dtype)
{
    if (dtype == LD_DT_F64) {
        double v;
        memcpy(&v, p, sizeof v);
        return (float)v;
    }
    if (dtype == LD_DT_F32) {
        float v;
        memcpy(&v, p, sizeof v); /* little-endian host, as the rest of latentd assumes */
        return v;
    }
    const uint16_t bits = (uint16_t)(p[0] | p[1] << 8);
    return dtype == LD_DT_F16 ? ld_f16_to_f32(bits) : ld_bf16_to_f32(bits);
}

int ld_tensor_to_image(const uint8_t *elements, ld_dtype dtype, int height, int width, int index,
                       const ld_image_limits *limits, ld_image *out, char *err)
{
    const size_t elem = ld_dtype_bytes(dtype);
    if (!elem)
        return ld_fail(err, LD_EINVAL, "tensor dtype: want float32, float16, bfloat16 or float64");
    int rc = ld_image_alloc(out, (uint32_t)width, (uint32_t)height, limits, err);
    if (rc != LD_OK)
        return rc;
    const size_t count = (size_t)3 * height * width;
    for (size_t i = 0; i < count; i++) {
        const float v = element(elements + i * elem, dtype);
        if (!(fabsf(v) <= MAX_MAGNITUDE)) { /* NaN fails it too */
            const size_t plane = (size_t)height * width;
            ld_image_free(out);
            char what[32];
            snprintf(what, sizeof what, "%s", isnan(v) ? "NaN" : isinf(v) ? "Inf" : "");
            if (!what[0])
                snprintf(what, sizeof what, "%g (beyond +-%g)", v, MAX_MAGNITUDE);
            return ld_fail(err, LD_EINVAL, "%s at element [%d, %zu, %zu, %zu] of the input "
                           "tensor", what, index, i / plane, i % plane / (size_t)width,
                           i % (size_t)width);
        }
        out->rgb[i] = v;
    }
    return LD_OK;
}

/* ---- files ---- */

static int tensor_images(const ld_tensor_batch *batch, const ld_image_limits *limits,
                         ld_image **images, int *count, char *err)
{
    ld_image *list = calloc((size_t)batch->n, sizeof *list);
    if (!list)
        return ld_fail(err, LD_ENOMEM, "out of memory");
    const size_t per = ld_tensor_image_bytes(batch);
    for (int i = 0; i < batch->n; i++) {
        int rc = ld_tensor_to_image(batch->data + (size_t)i * per, batch->dtype, batch->height,
                                    batch->width, i, limits, &list[i], err);
        if (rc != LD_OK) {
            while (i-- > 0)
                ld_image_free(&list[i]);
            free(list);
            return rc;
        }
    }
    *images = list;
    *count = batch->n;
    return LD_OK;
}

int ld_inputs_load_file(const char *path, const ld_image_limits *limits, ld_image **images,
                        int *count, char *err)
{
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = ld_read_regular(path, limits ? limits->max_file_bytes : 0, &data, &len, err);
    if (rc != LD_OK)
        return rc;
    char inner[LD_ERR_LEN];
    ld_tensor_batch batch;
    const bool npy = ld_tensor_is_npy(data, len);
    if (npy || (ld_image_sniff(data, len) == LD_IMG_UNKNOWN &&
                ld_tensor_is_safetensors(data, len))) {
        rc = npy ? ld_tensor_from_npy(data, len, &batch, inner)
                 : ld_tensor_from_safetensors(data, len, &batch, inner);
        if (rc == LD_OK)
            rc = tensor_images(&batch, limits, images, count, inner);
    } else {
        *images = calloc(1, sizeof **images);
        rc = *images ? ld_image_decode(data, len, limits, *images, inner)
                     : ld_fail(inner, LD_ENOMEM, "out of memory");
        if (rc == LD_OK)
            *count = 1;
        else {
            free(*images);
            *images = NULL;
        }
    }
    free(data);
    return rc == LD_OK ? LD_OK : ld_fail(err, rc, "%s: %s", path, inner);
}
