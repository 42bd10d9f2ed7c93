/* A tensor body (.npy, safetensors, or raw elements with a shape) through
 * latentd/tensor_input.h: whatever it accepts describes bytes that lie inside
 * the input, and its images convert without reading past them.  The first
 * byte picks the container, so one corpus covers all three. */
#include "fuzz.h"

#include <string.h>

#include "latentd/tensor_input.h"

LD_FUZZ_TARGET("tensor");

/* Larger images are only described, not converted: time goes to parsing. */
#define MAX_CONVERT_BYTES 65536

static void check_batch(const ld_tensor_batch *b, const uint8_t *data, size_t size)
{
    FUZZ_CHECK(b->n >= 1 && b->height >= 1 && b->width >= 1);
    const size_t per = ld_tensor_image_bytes(b);
    FUZZ_CHECK(per > 0 && b->data >= data && (size_t)(b->data - data) <= size);
    FUZZ_CHECK(per * (size_t)b->n <= size - (size_t)(b->data - data));
    if (per > MAX_CONVERT_BYTES)
        return;
    char err[LD_ERR_LEN];
    ld_image img;
    for (int i = 0; i < b->n && i < 4; i++) {
        int rc = ld_tensor_to_image(b->data + (size_t)i * per, b->dtype, b->height, b->width, i,
                                    NULL, &img, err);
        FUZZ_CHECK(rc == LD_OK || rc == LD_EINVAL);
        if (rc == LD_OK) {
            FUZZ_CHECK(img.width == b->width && img.height == b->height);
            ld_image_free(&img);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t mode = data[0] % 3;
    data++, size--;
    char err[LD_ERR_LEN];
    ld_tensor_batch batch;
    int rc;
    if (mode == 0) {
        rc = ld_tensor_from_npy(data, size, &batch, err);
    } else if (mode == 1) {
        rc = ld_tensor_from_safetensors(data, size, &batch, err);
    } else { /* 4 dims of one byte each, a dtype byte, then the elements */
        if (size < 5)
            return 0;
        const int64_t shape[4] = {data[0], data[1], data[2], data[3]};
        static const ld_dtype dtypes[] = {LD_DT_F32, LD_DT_F16, LD_DT_BF16, LD_DT_I8};
        rc = ld_tensor_from_raw(data + 5, size - 5, shape + (data[4] & 4 ? 1 : 0),
                                data[4] & 4 ? 3 : 4, dtypes[data[4] & 3], &batch, err);
        data += 5, size -= 5;
    }
    if (rc == LD_OK)
        check_batch(&batch, data, size);
    else
        FUZZ_CHECK(strlen(err) > 0);
    return 0;
}
