#include "latentd/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "latentd/safefile.h"

/* The reference implementation refuses headers above 100 MB; so do we. */
#define ST_MAX_HEADER LD_ST_MAX_HEADER

struct ld_st_file {
    char *path;
    const uint8_t *map; /* the whole file: mapped, or the caller's bytes */
    size_t map_size;
    uint64_t file_size; /* map_size, or more when map holds only the header */
    bool mapped;        /* map is ours to munmap */
    const uint8_t *data; /* first byte after the header */
    size_t data_size;
    ld_st_tensor *tensors;
    size_t n_tensors;
    json_t *metadata; /* object of strings, or NULL */
};

static const struct {
    const char *name;
    ld_dtype dtype;
    size_t size;
} dtype_table[] = {
    {"F32", LD_DT_F32, 4}, {"F16", LD_DT_F16, 2}, {"BF16", LD_DT_BF16, 2},
    {"F64", LD_DT_F64, 8}, {"I64", LD_DT_I64, 8}, {"I32", LD_DT_I32, 4},
    {"I16", LD_DT_I16, 2}, {"I8", LD_DT_I8, 1},   {"U8", LD_DT_U8, 1},
    {"BOOL", LD_DT_BOOL, 1},
};

static ld_dtype dtype_lookup(const char *name, size_t *size)
{
    for (size_t i = 0; i < sizeof dtype_table / sizeof dtype_table[0]; i++) {
        if (strcmp(dtype_table[i].name, name) == 0) {
            *size = dtype_table[i].size;
            return dtype_table[i].dtype;
        }
    }
    *size = 0;
    return LD_DT_OTHER;
}

static int read_u64_le(const uint8_t *p, uint64_t *out)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    *out = v;
    return 0;
}

static int too_short(const ld_st_file *f, char *err)
{
    return ld_fail(err, LD_EFORMAT, "%s: too short for a safetensors file (%zu bytes)", f->path,
                   f->map_size);
}

static int map_file(ld_st_file *f, char *err)
{
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ld_fail(err, LD_EIO, "%s: cannot open: %s", f->path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return ld_fail(err, LD_EIO, "%s: cannot stat: %s", f->path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ld_fail(err, LD_EIO, "%s: not a regular file", f->path);
    }
    f->map_size = (size_t)st.st_size;
    if (f->map_size < 8) { /* mmap refuses an empty file; say what is wrong instead */
        close(fd);
        return too_short(f, err);
    }
    void *m = mmap(NULL, f->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED)
        return ld_fail(err, LD_EIO, "%s: cannot map: %s", f->path, strerror(e));
    f->map = m;
    f->mapped = true;
    f->file_size = f->map_size;
    return LD_OK;
}

static int parse_shape(ld_st_file *f, const char *name, json_t *shape, ld_st_tensor *t,
                       char *err)
{
    if (!json_is_array(shape) || json_array_size(shape) > LD_ST_MAX_DIMS)
        return ld_fail(err, LD_EFORMAT, "%s: tensor '%s': bad shape", f->path, name);
    t->ndim = (int)json_array_size(shape);
    t->numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        json_t *dim = json_array_get(shape, (size_t)d);
        if (!json_is_integer(dim) || json_integer_value(dim) < 0)
            return ld_fail(err, LD_EFORMAT, "%s: tensor '%s': bad dimension %d", f->path,
                           name, d);
        t->shape[d] = json_integer_value(dim);
        if (ld_mul_size(t->numel, (size_t)t->shape[d], &t->numel) != 0)
            return ld_fail(err, LD_EFORMAT, "%s: tensor '%s': shape overflows", f->path, name);
    }
    return LD_OK;
}

static int parse_offsets(ld_st_file *f, const char *name, json_t *offsets, size_t elem_size,
                         ld_st_tensor *t, char *err)
{
    json_t *jb = json_array_get(offsets, 0), *je = json_array_get(offsets, 1);
    if (!json_is_array(offsets) || json_array_size(offsets) != 2 || !json_is_integer(jb) ||
        !json_is_integer(je))
        return ld_fail(err, LD_EFORMAT, "%s: tensor '%s': bad data_offsets", f->path, name);
    json_int_t begin = json_integer_value(jb), end = json_integer_value(je);
    if (begin < 0 || end < begin || (uint64_t)end > f->data_size)
        return ld_fail(err, LD_EFORMAT,
                       "%s: tensor '%s': data_offsets [%lld, %lld] outside the %zu data bytes "
                       "(truncated file?)",
                       f->path, name, (long long)begin, (long long)end, f->data_size);
    t->nbytes = (size_t)(end - begin);
    size_t expect;
    if (elem_size && (ld_mul_size(t->numel, elem_size, &expect) != 0 || expect != t->nbytes))
        return ld_fail(err, LD_EFORMAT,
                       "%s: tensor '%s': %zu bytes do not hold %zu %s elements", f->path, name,
                       t->nbytes, t->numel, t->dtype_name);
    /* a header read alone has no data to point at */
    t->data = f->file_size == f->map_size ? f->data + begin : NULL;
    return LD_OK;
}

static int parse_entry(ld_st_file *f, const char *name, json_t *desc, ld_st_tensor *t,
                       char *err)
{
    if (!json_is_object(desc))
        return ld_fail(err, LD_EFORMAT, "%s: tensor '%s': entry is not an object", f->path,
                       name);
    json_t *dtype = json_object_get(desc, "dtype");
    if (!json_is_string(dtype) || json_string_length(dtype) >= sizeof t->dtype_name)
        return ld_fail(err, LD_EFORMAT, "%s: tensor '%s': bad dtype", f->path, name);
    snprintf(t->dtype_name, sizeof t->dtype_name, "%s", json_string_value(dtype));
    size_t elem_size;
    t->dtype = dtype_lookup(t->dtype_name, &elem_size);
    int rc = parse_shape(f, name, json_object_get(desc, "shape"), t, err);
    if (rc != LD_OK)
        return rc;
    rc = parse_offsets(f, name, json_object_get(desc, "data_offsets"), elem_size, t, err);
    if (rc != LD_OK)
        return rc;
    t->name = strdup(name);
    if (!t->name)
        return ld_fail(err, LD_ENOMEM, "%s: out of memory", f->path);
    return LD_OK;
}

static int parse_metadata(ld_st_file *f, json_t *meta, char *err)
{
    if (!json_is_object(meta))
        return ld_fail(err, LD_EFORMAT, "%s: __metadata__ is not an object", f->path);
    const char *key;
    json_t *value;
    json_object_foreach(meta, key, value) {
        if (!json_is_string(value))
            return ld_fail(err, LD_EFORMAT, "%s: __metadata__ value '%s' is not a string",
                           f->path, key);
    }
    f->metadata = json_incref(meta);
    return LD_OK;
}

static int parse_header(ld_st_file *f, char *err)
{
    if (f->map_size < 8)
        return too_short(f, err);
    uint64_t header_len;
    read_u64_le(f->map, &header_len);
    if (header_len > ST_MAX_HEADER || header_len > f->file_size - 8)
        return ld_fail(err, LD_EFORMAT,
                       "%s: header length %llu does not fit the %llu-byte file "
                       "(truncated or not safetensors)",
                       f->path, (unsigned long long)header_len,
                       (unsigned long long)f->file_size);
    if (header_len > f->map_size - 8)
        return ld_fail(err, LD_EFORMAT, "%s: only %zu bytes of a %llu-byte header given",
                       f->path, f->map_size - 8, (unsigned long long)header_len);
    f->data = f->map + 8 + header_len;
    f->data_size = (size_t)(f->file_size - 8 - header_len);

    json_error_t jerr;
    json_t *root = json_loadb((const char *)f->map + 8, (size_t)header_len, 0, &jerr);
    if (!root)
        return ld_fail(err, LD_EFORMAT, "%s: header is not valid JSON: %s", f->path, jerr.text);
    int rc = LD_OK;
    if (!json_is_object(root)) {
        rc = ld_fail(err, LD_EFORMAT, "%s: header is not a JSON object", f->path);
        goto done;
    }
    f->tensors = calloc(json_object_size(root) + 1, sizeof *f->tensors);
    if (!f->tensors) {
        rc = ld_fail(err, LD_ENOMEM, "%s: out of memory", f->path);
        goto done;
    }
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (strcmp(key, "__metadata__") == 0)
            rc = parse_metadata(f, value, err);
        else if ((rc = parse_entry(f, key, value, &f->tensors[f->n_tensors], err)) == LD_OK)
            f->n_tensors++;
        if (rc != LD_OK)
            break;
    }
done:
    json_decref(root);
    return rc;
}

/* A file with only its name set, or NULL. */
static ld_st_file *new_file(const char *name)
{
    ld_st_file *f = calloc(1, sizeof *f);
    if (f && !(f->path = strdup(name))) {
        free(f);
        return NULL;
    }
    return f;
}

/* Parse the header of f->map; on failure f is closed. */
static int finish_open(ld_st_file *f, ld_st_file **out, char *err)
{
    int rc = parse_header(f, err);
    if (rc != LD_OK) {
        ld_st_close(f);
        return rc;
    }
    *out = f;
    return LD_OK;
}

int ld_st_open(const char *path, ld_st_file **out, char *err)
{
    *out = NULL;
    ld_st_file *f = new_file(path);
    if (!f)
        return ld_fail(err, LD_ENOMEM, "%s: out of memory", path);
    int rc = map_file(f, err);
    if (rc != LD_OK) {
        ld_st_close(f);
        return rc;
    }
    return finish_open(f, out, err);
}

int ld_st_open_memory(const void *data, size_t len, const char *name, ld_st_file **out,
                      char *err)
{
    *out = NULL;
    ld_st_file *f = new_file(name);
    if (!f)
        return ld_fail(err, LD_ENOMEM, "%s: out of memory", name);
    f->map = data;
    f->map_size = len;
    f->file_size = len;
    return finish_open(f, out, err);
}

int ld_st_open_header(const void *head, size_t len, uint64_t file_size, const char *name,
                      ld_st_file **out, char *err)
{
    *out = NULL;
    if (len > file_size)
        return ld_fail(err, LD_EINVAL, "%s: %zu header bytes of a %llu-byte file", name, len,
                       (unsigned long long)file_size);
    ld_st_file *f = new_file(name);
    if (!f)
        return ld_fail(err, LD_ENOMEM, "%s: out of memory", name);
    f->map = head;
    f->map_size = len;
    f->file_size = file_size;
    return finish_open(f, out, err);
}

void ld_st_close(ld_st_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n_tensors; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    json_decref(f->metadata);
    if (f->mapped)
        munmap((void *)f->map, f->map_size);
    free(f->path);
    free(f);
}

const char *ld_st_path(const ld_st_file *f) { return f->path; }
size_t ld_st_count(const ld_st_file *f) { return f->n_tensors; }

const ld_st_tensor *ld_st_at(const ld_st_file *f, size_t index)
{
    return index < f->n_tensors ? &f->tensors[index] : NULL;
}

const ld_st_tensor *ld_st_find(const ld_st_file *f, const char *name)
{
    for (size_t i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

const char *ld_st_metadata(const ld_st_file *f, const char *key)
{
    if (!f->metadata)
        return NULL;
    return json_string_value(json_object_get(f->metadata, key));
}

float ld_bf16_to_f32(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

float ld_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) { /* inf or nan */
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) { /* normal */
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) { /* zero */
        bits = sign;
    } else { /* subnormal: renormalise */
        int e = -1;
        do {
            e++;
            mant <<= 1;
        } while (!(mant & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ff) << 13);
    }
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

int ld_st_to_f32(const ld_st_file *f, const ld_st_tensor *t, float *dst, char *err)
{
    const uint8_t *p = t->data;
    if (!p) /* opened by ld_st_open_header */
        return ld_fail(err, LD_EINVAL, "%s: tensor '%s': only its header was read", f->path,
                       t->name);
    switch (t->dtype) {
    case LD_DT_F32:
        for (size_t i = 0; i < t->numel; i++) {
            uint32_t bits = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                            (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
            memcpy(&dst[i], &bits, sizeof bits);
        }
        return LD_OK;
    case LD_DT_F16:
        for (size_t i = 0; i < t->numel; i++)
            dst[i] = ld_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        return LD_OK;
    case LD_DT_BF16:
        for (size_t i = 0; i < t->numel; i++)
            dst[i] = ld_bf16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        return LD_OK;
    default:
        return ld_fail(err, LD_EUNSUPPORTED,
                       "%s: tensor '%s': dtype %s is not supported (need F32, F16 or BF16)",
                       f->path, t->name, t->dtype_name);
    }
}

/* ---------------- writing ---------------- */

static json_t *shape_json(const ld_st_out *t)
{
    json_t *shape = json_array();
    for (int d = 0; shape && d < t->ndim; d++)
        if (json_array_append_new(shape, json_integer(t->shape[d])) != 0) {
            json_decref(shape);
            return NULL;
        }
    return shape;
}

static size_t out_numel(const ld_st_out *t)
{
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= (size_t)t->shape[d];
    return n;
}

static json_t *build_header(const ld_st_out *tensors, size_t n, const ld_st_meta *meta,
                            size_t n_meta, size_t *data_bytes)
{
    json_t *root = json_object();
    if (!root)
        return NULL;
    if (n_meta) {
        json_t *m = json_object();
        if (json_object_set_new(root, "__metadata__", m) != 0)
            goto fail;
        for (size_t i = 0; i < n_meta; i++)
            if (json_object_set_new(m, meta[i].key, json_string(meta[i].value)) != 0)
                goto fail;
    }
    size_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        size_t bytes = out_numel(&tensors[i]) * sizeof(float);
        json_t *desc = json_pack("{s:s, s:o, s:[I,I]}", "dtype", "F32", "shape",
                                 shape_json(&tensors[i]), "data_offsets", (json_int_t)offset,
                                 (json_int_t)(offset + bytes));
        if (!desc || json_object_set_new(root, tensors[i].name, desc) != 0)
            goto fail;
        offset += bytes;
    }
    *data_bytes = offset;
    return root;
fail:
    json_decref(root);
    return NULL;
}

static void put_f32_le(uint8_t *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &src[i], sizeof bits);
        dst[4 * i] = (uint8_t)bits;
        dst[4 * i + 1] = (uint8_t)(bits >> 8);
        dst[4 * i + 2] = (uint8_t)(bits >> 16);
        dst[4 * i + 3] = (uint8_t)(bits >> 24);
    }
}

int ld_st_serialize(const ld_st_out *tensors, size_t n, const ld_st_meta *meta, size_t n_meta,
                    uint8_t **buf_out, size_t *len_out, char *err)
{
    *buf_out = NULL;
    *len_out = 0;
    size_t data_bytes = 0;
    json_t *header = build_header(tensors, n, meta, n_meta, &data_bytes);
    char *text = header ? json_dumps(header, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(header);
    if (!text)
        return ld_fail(err, LD_ENOMEM, "cannot build safetensors header");
    size_t text_len = strlen(text);
    size_t padded = (text_len + 7) & ~(size_t)7; /* pad with spaces to a multiple of 8 */
    size_t total = 8 + padded + data_bytes;
    uint8_t *buf = malloc(total);
    if (!buf) {
        free(text);
        return ld_fail(err, LD_ENOMEM, "out of memory for a %zu-byte safetensors file", total);
    }
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, text, text_len);
    memset(buf + 8 + text_len, ' ', padded - text_len);
    free(text);
    uint8_t *dst = buf + 8 + padded;
    for (size_t i = 0; i < n; i++) {
        size_t count = out_numel(&tensors[i]);
        put_f32_le(dst, tensors[i].data, count);
        dst += count * sizeof(float);
    }
    *buf_out = buf;
    *len_out = total;
    return LD_OK;
}

int ld_st_write(const char *path, const ld_st_out *tensors, size_t n, const ld_st_meta *meta,
                size_t n_meta, char *err)
{
    uint8_t *buf;
    size_t len;
    int rc = ld_st_serialize(tensors, n, meta, n_meta, &buf, &len, err);
    if (rc != LD_OK)
        return rc;
    rc = ld_write_file(path, buf, len, err); /* "-": standard output */
    free(buf);
    return rc;
}
