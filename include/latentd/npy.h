/* NumPy .npy (version 1.0), float32 only: the file format InvSR and most
 * training code read latents from.  Bytes only; knows no model.
 *
 * Layout: "\x93NUMPY" 1 0, a little-endian u16 header length, a Python dict
 * literal {'descr': '<f4', 'fortran_order': False, 'shape': (...), } padded
 * with spaces and a newline so the data starts at a multiple of 64, then the
 * raw little-endian float32 values in C order. */
#ifndef LATENTD_NPY_H
#define LATENTD_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "latentd/common.h"

#define LD_NPY_MAX_DIMS 8
/* Room for any header ld_npy_header writes (8 dims of 19 digits fit). */
#define LD_NPY_HEADER_MAX 384

/* Write the header for a float32 array of `shape` into out; returns its
 * length (a multiple of 64), after which the data follows.  1 <= ndim <=
 * LD_NPY_MAX_DIMS. */
size_t ld_npy_header(int ndim, const int64_t *shape, uint8_t out[LD_NPY_HEADER_MAX]);

/* Header + data in one malloc'd buffer (*buf, *len). */
int ld_npy_serialize(const float *data, int ndim, const int64_t *shape, uint8_t **buf,
                     size_t *len, char *err);

/* Read the header from the first head_len bytes of a file of file_size bytes
 * and check that the file is whole: a float32 C-order array whose data is
 * exactly file_size - header bytes.  Fills ndim, shape and, when not NULL,
 * *data_offset.  LD_EFORMAT when anything is off. */
int ld_npy_check(const uint8_t *head, size_t head_len, uint64_t file_size, int *ndim,
                 int64_t shape[LD_NPY_MAX_DIMS], size_t *data_offset, char *err);

/* The three entries of a header's dict literal, each value's text cut out
 * whole (NUL-terminated, blanks trimmed): "'<f4'", "False", "(2, 3)". */
typedef struct {
    char *descr;
    char *fortran_order;
    char *shape;
} ld_npy_dict;

/* Split the dict literal in `text` (NUL-terminated, changed in place: each
 * value is cut off where it ends); a key that is absent is NULL, for the
 * caller to say what it misses.  Every reader of npy headers goes through
 * here, so they all see the dict as numpy does.  LD_EFORMAT for a dict numpy
 * would not load: not a {'key': value, ...} literal, a key other than
 * 'descr', 'fortran_order' and 'shape', or one of them given twice (numpy's
 * literal_eval keeps the last, a reader that took the first would see
 * another array). */
int ld_npy_dict_parse(char *text, ld_npy_dict *out, char *err);

#endif
