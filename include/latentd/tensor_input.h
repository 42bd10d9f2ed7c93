/* Images that arrive as float tensors rather than as picture files: the
 * batches a Python pipeline already holds (InvSR upsamples bicubically and
 * never clamps, so values outside [0, 1] are part of the reference).
 *
 * Three containers carry them: NumPy's .npy, a safetensors file (the tensor
 * "images", or its only tensor), and raw little-endian bytes whose shape and
 * dtype come separately (diffusers' remote client sends those).  Each holds
 * float32, float16, bfloat16 or float64 in layout [N, 3, H, W] or [3, H, W].
 * A value beyond +-1e4 (NaN and Inf included) is refused: no picture holds
 * one, and the encoder's float32 arithmetic would overflow on it.
 *
 * Parsing only checks and describes: the batch points into the caller's
 * bytes.  ld_tensor_to_image then converts one image's elements to the
 * encoder's planar floats, as they are (never clamped), refusing NaN and Inf
 * with the element's position. */
#ifndef LATENTD_TENSOR_INPUT_H
#define LATENTD_TENSOR_INPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "latentd/common.h"
#include "latentd/image.h"
#include "latentd/safetensors.h"

typedef struct {
    int n, height, width;     /* n images of [3, height, width] */
    ld_dtype dtype;           /* LD_DT_F32, LD_DT_F16 or LD_DT_BF16 */
    const uint8_t *data;      /* n·3·height·width elements, C order; borrowed */
} ld_tensor_batch;

/* Whether the bytes start like a .npy file / a safetensors file. */
bool ld_tensor_is_npy(const uint8_t *data, size_t len);
bool ld_tensor_is_safetensors(const uint8_t *data, size_t len);

/* "float32", "float16" or "bfloat16" (torch's and numpy's names; safetensors'
 * "F32", "F16", "BF16" too).  LD_EINVAL for anything else. */
int ld_dtype_from_name(const char *name, ld_dtype *out, char *err);
/* Bytes per element of a dtype ld_dtype_from_name accepts (0 otherwise). */
size_t ld_dtype_bytes(ld_dtype dtype);
/* The name ld_dtype_from_name gives back ("float32", ...). */
const char *ld_dtype_name(ld_dtype dtype);

/* A .npy file (versions 1 to 3, little-endian, C order). */
int ld_tensor_from_npy(const uint8_t *data, size_t len, ld_tensor_batch *out, char *err);
/* A safetensors file: its tensor "images", or the only tensor it holds. */
int ld_tensor_from_safetensors(const uint8_t *data, size_t len, ld_tensor_batch *out, char *err);
/* Raw elements with the given shape (ndim 3 or 4) and dtype; len must match. */
int ld_tensor_from_raw(const uint8_t *data, size_t len, const int64_t *shape, int ndim,
                       ld_dtype dtype, ld_tensor_batch *out, char *err);

/* Bytes of one image of the batch. */
size_t ld_tensor_image_bytes(const ld_tensor_batch *batch);

/* One image's elements (ld_tensor_image_bytes of them, from a batch) as the
 * encoder's input.  `index` names the image in messages; the size limits
 * apply as to a decoded picture.  NaN or Inf is LD_EINVAL naming the
 * element [index, c, y, x], as is a value beyond +-1e4. */
int ld_tensor_to_image(const uint8_t *elements, ld_dtype dtype, int height, int width, int index,
                       const ld_image_limits *limits, ld_image *out, char *err);

/* A file as the programs take it: a picture is one image; a .npy or
 * safetensors tensor (told by its bytes) is as many as it holds.  *images is
 * a malloc'd array of *count images, each freed with ld_image_free. */
int ld_inputs_load_file(const char *path, const ld_image_limits *limits, ld_image **images,
                        int *count, char *err);

#endif
