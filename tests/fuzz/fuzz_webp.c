/* ld_webp_decode (and ld_image_decode's dispatch to it) on any bytes; in a
 * build without libwebp every input is refused as unsupported. */
#include "fuzz.h"
#include "image_check.h"

LD_FUZZ_TARGET("webp");

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ld_image img;
    char err[LD_ERR_LEN] = "";
    int rc = ld_image_sniff(data, size) == LD_IMG_WEBP
                 ? ld_image_decode(data, size, &fuzz_image_limits, &img, err)
                 : ld_webp_decode(data, size, &fuzz_image_limits, &img, err);
    fuzz_check_image(rc, &img, err);
    ld_image_free(&img);
    return 0;
}
