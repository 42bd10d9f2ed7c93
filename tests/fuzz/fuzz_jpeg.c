/* ld_jpeg_decode (and ld_image_decode's dispatch to it) on any bytes.  libjpeg
 * takes more than ld_image_sniff does (FF D8 then anything), so both paths run
 * here. */
#include "fuzz.h"
#include "image_check.h"

LD_FUZZ_TARGET("jpeg");

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ld_image img;
    char err[LD_ERR_LEN] = "";
    int rc = ld_image_sniff(data, size) == LD_IMG_JPEG
                 ? ld_image_decode(data, size, &fuzz_image_limits, &img, err)
                 : ld_jpeg_decode(data, size, &fuzz_image_limits, &img, err);
    fuzz_check_image(rc, &img, err);
    ld_image_free(&img);
    return 0;
}
