/* safetensors: a checked, memory-mapped reader and a small writer.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
 * then the raw little-endian data; offsets count from the first data byte.
 * The reader validates every entry against the file's real size when it opens
 * the file, so no later access can go out of bounds whatever the header says. */
#ifndef LATENTD_SAFETENSORS_H
#define LATENTD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "latentd/common.h"

#define LD_ST_MAX_DIMS 8

typedef enum {
    LD_DT_F32,
    LD_DT_F16,
    LD_DT_BF16,
    LD_DT_F64,
    LD_DT_I64,
    LD_DT_I32,
    LD_DT_I16,
    LD_DT_I8,
    LD_DT_U8,
    LD_DT_BOOL,
    LD_DT_OTHER /* a dtype latentd does not know; its bytes are only bounds-checked */
} ld_dtype;

typedef struct {
    char *name;
    char dtype_name[16];
    ld_dtype dtype;
    int ndim;
    int64_t shape[LD_ST_MAX_DIMS];
    size_t numel;
    size_t nbytes;
    const uint8_t *data; /* inside the mapping; not necessarily aligned */
} ld_st_tensor;

typedef struct ld_st_file ld_st_file;

/* The longest JSON header a reader accepts. */
#define LD_ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

int ld_st_open(const char *path, ld_st_file **out, char *err);
/* The same checks over bytes already in memory (an upload, a fuzzer's input).
 * The bytes are borrowed: they must stay valid and unchanged until ld_st_close.
 * name stands for the path in messages and in ld_st_path. */
int ld_st_open_memory(const void *data, size_t len, const char *name, ld_st_file **out,
                      char *err);
/* Only the header: head holds a file's first len bytes (the 8-byte length
 * and at least the whole JSON header), file_size is the whole file's size.
 * Every tensor's offsets are checked against file_size as ld_st_open checks
 * them, so a cut file is found without reading its data; the tensors' data
 * is NULL.  head is borrowed as in ld_st_open_memory. */
int ld_st_open_header(const void *head, size_t len, uint64_t file_size, const char *name,
                      ld_st_file **out, char *err);
void ld_st_close(ld_st_file *file);

const char *ld_st_path(const ld_st_file *file);
size_t ld_st_count(const ld_st_file *file);
const ld_st_tensor *ld_st_at(const ld_st_file *file, size_t index);
const ld_st_tensor *ld_st_find(const ld_st_file *file, const char *name);
/* A string from "__metadata__", or NULL. */
const char *ld_st_metadata(const ld_st_file *file, const char *key);

/* Convert a F32, F16 or BF16 tensor to float32 into dst (numel floats). */
int ld_st_to_f32(const ld_st_file *file, const ld_st_tensor *tensor, float *dst, char *err);

float ld_f16_to_f32(uint16_t h);
float ld_bf16_to_f32(uint16_t b);

/* ---- writing (always F32) ---- */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[LD_ST_MAX_DIMS];
    const float *data;
} ld_st_out;

typedef struct {
    const char *key;
    const char *value;
} ld_st_meta;

/* Serialise tensors (and optional metadata) into a malloc'd buffer. */
int ld_st_serialize(const ld_st_out *tensors, size_t n_tensors, const ld_st_meta *meta,
                    size_t n_meta, uint8_t **buf_out, size_t *len_out, char *err);
/* Write to path, or to standard output when path is "-". */
int ld_st_write(const char *path, const ld_st_out *tensors, size_t n_tensors,
                const ld_st_meta *meta, size_t n_meta, char *err);

#endif
