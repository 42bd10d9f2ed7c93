/* ld_png_decode (and ld_image_decode's dispatch to it) on any bytes. */
#include "fuzz.h"
#include "image_check.h"

LD_FUZZ_TARGET("png");

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ld_image img;
    char err[LD_ERR_LEN] = "";
    int rc = ld_image_sniff(data, size) == LD_IMG_PNG
                 ? ld_image_decode(data, size, &fuzz_image_limits, &img, err)
                 : ld_png_decode(data, size, &fuzz_image_limits, &img, err);
    fuzz_check_image(rc, &img, err);
    ld_image_free(&img);
    return 0;
}
