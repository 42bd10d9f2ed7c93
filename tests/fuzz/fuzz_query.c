/* Query-string options through srv_options_set: the input is split on '&' into
 * key=value pairs (a pair without '=' has an empty value) and each is set in
 * turn, as the HTTP layer does with the pairs libmicrohttpd has decoded.  A NUL
 * in the input ends the string there, as it would in a decoded pair. */
#include "fuzz.h"
#include "options_check.h"

#include <string.h>

#include "../../src/server/request.h"

LD_FUZZ_TARGET("query");

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    FUZZ_CHECK(text != NULL);
    memcpy(text, data, size);
    text[size] = '\0';
    srv_options o;
    srv_options_defaults(&o);
    char err[LD_ERR_LEN];
    char *save = NULL;
    for (char *pair = strtok_r(text, "&", &save); pair; pair = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(pair, '=');
        const char *value = "";
        if (eq) {
            *eq = '\0';
            value = eq + 1;
        }
        err[0] = '\0';
        int rc = srv_options_set(&o, pair, value, err);
        FUZZ_CHECK(rc == LD_OK || (rc == LD_EINVAL && err[0]));
        if (rc == LD_OK)
            fuzz_check_options(&o);
    }
    free(text);
    return 0;
}
