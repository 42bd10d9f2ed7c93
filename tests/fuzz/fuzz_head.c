/* The request-head rules (src/server/head.c) on arbitrary bytes: the first
 * line is a request target as sent, every further line a field name.  Checked:
 *   - a target taken as fine holds no byte <= ' ', no DEL and no "%00", and
 *     is within the length limit; srv_origin_path returns the target itself,
 *     "/" or a '/' inside it after "://";
 *   - a name taken as a token is not empty and holds only tchar, and a line
 *     taken as a value holds no control character but tab;
 *   - laid out as libmicrohttpd leaves an unfolded line ("name\0 value"), a
 *     name is never taken for a fold, and with a byte other than space or tab
 *     between it and its value it always is. */
#include "fuzz.h"

#include <stdbool.h>
#include <string.h>

#include "../../src/server/head.h"

LD_FUZZ_TARGET("head");

enum { MAX_TARGET = 64 };

static void check_target(const char *t)
{
    const srv_target_problem_kind k = srv_target_problem(t, MAX_TARGET);
    if (k == TARGET_OK) {
        FUZZ_CHECK(strlen(t) <= MAX_TARGET);
        FUZZ_CHECK(strstr(t, "%00") == NULL);
        for (const char *p = t; *p; p++)
            FUZZ_CHECK((unsigned char)*p > ' ' && (unsigned char)*p != 0x7f);
    }
    const char *path = srv_origin_path(t);
    if (path != t && strcmp(path, "/") != 0) {
        FUZZ_CHECK(path > t && path < t + strlen(t) && *path == '/');
        FUZZ_CHECK(strstr(t, "://") != NULL && strstr(t, "://") < path);
    }
}

static void check_name(const char *name)
{
    if (srv_field_value_ok(name))
        for (const char *p = name; *p; p++)
            FUZZ_CHECK((unsigned char)*p >= ' ' || *p == '\t');
    if (srv_field_name_ok(name)) {
        FUZZ_CHECK(*name != '\0');
        for (const char *p = name; *p; p++)
            FUZZ_CHECK((unsigned char)*p > ' ' && (unsigned char)*p < 0x7f &&
                       !strchr("\"(),/:;<=>?@[\\]{}", *p));
    }
    /* "name\0" + gap + "v": a gap of blanks is no fold, one other byte is */
    const size_t len = strlen(name);
    char *line = malloc(len + 8);
    FUZZ_CHECK(line != NULL);
    memcpy(line, name, len + 1);
    memcpy(line + len + 1, " \tv", 4);
    FUZZ_CHECK(!srv_field_folded(line, line + len + 3, 256));
    line[len + 1] = 'x';
    FUZZ_CHECK(srv_field_folded(line, line + len + 3, 256));
    free(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    FUZZ_CHECK(text != NULL);
    memcpy(text, data, size);
    text[size] = '\0';
    char *save = NULL;
    bool first = true;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (first)
            check_target(line);
        else
            check_name(line);
        first = false;
    }
    free(text);
    return 0;
}
