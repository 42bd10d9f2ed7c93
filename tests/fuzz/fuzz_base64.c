/* ld_base64_decode on any bytes (the JSON body's image strings reach it
 * unfiltered), and encode → decode giving back any input. */
#include "fuzz.h"

#include <string.h>

#include "latentd/base64.h"

LD_FUZZ_TARGET("base64");

static void check_decode(const uint8_t *data, size_t size)
{
    uint8_t *out = (uint8_t *)1;
    size_t n = 1;
    char err[LD_ERR_LEN] = "";
    int rc = ld_base64_decode((const char *)data, size, &out, &n, err);
    if (rc != LD_OK) {
        FUZZ_CHECK(rc == LD_EFORMAT || rc == LD_ENOMEM);
        FUZZ_CHECK(out == NULL && n == 0 && err[0]);
        return;
    }
    FUZZ_CHECK(out != NULL && n <= size / 4 * 3 + 2);
    /* what decoded re-encodes to text that decodes to the same bytes */
    size_t text_len;
    char *text = ld_base64_encode(out, n, &text_len);
    FUZZ_CHECK(text != NULL);
    uint8_t *again;
    size_t again_len;
    FUZZ_CHECK(ld_base64_decode(text, text_len, &again, &again_len, err) == LD_OK);
    FUZZ_CHECK(again_len == n && memcmp(again, out, n) == 0);
    free(again);
    free(text);
    free(out);
}

static void check_round_trip(const uint8_t *data, size_t size)
{
    size_t text_len;
    char *text = ld_base64_encode(data, size, &text_len);
    FUZZ_CHECK(text != NULL);
    FUZZ_CHECK(text_len == (size + 2) / 3 * 4 && strlen(text) == text_len);
    uint8_t *out;
    size_t n;
    char err[LD_ERR_LEN];
    FUZZ_CHECK(ld_base64_decode(text, text_len, &out, &n, err) == LD_OK);
    FUZZ_CHECK(n == size && memcmp(out, data, size) == 0);
    free(out);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_decode(data, size);
    check_round_trip(data, size);
    return 0;
}
