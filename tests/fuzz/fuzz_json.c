/* POST /v1/encode's JSON body through srv_parse_json: images as base64 (or
 * data: URLs) and options.  Whatever the body, the options stay valid and the
 * blobs are owned and freed whole. */
#include "fuzz.h"
#include "options_check.h"

#include "../../src/server/request.h"

LD_FUZZ_TARGET("json");

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    srv_blobs blobs = {0};
    srv_options o;
    srv_options_defaults(&o);
    char err[LD_ERR_LEN] = "";
    int rc = srv_parse_json((const char *)data, size, &blobs, &o, err);
    FUZZ_CHECK(rc == LD_OK || ((rc == LD_EINVAL || rc == LD_ENOMEM) && err[0]));
    FUZZ_CHECK(blobs.count >= 0 && blobs.count <= blobs.cap);
    unsigned sum = 0; /* touch every byte kept, for ASan and valgrind */
    for (int i = 0; i < blobs.count; i++)
        for (size_t j = 0; j < blobs.len[i]; j++)
            sum += blobs.data[i][j];
    (void)sum;
    if (rc == LD_OK)
        fuzz_check_options(&o);
    srv_blobs_free(&blobs);
    return 0;
}
