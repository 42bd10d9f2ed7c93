#include "head.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

srv_target_problem_kind srv_target_problem(const char *raw, size_t max)
{
    size_t len = 0;
    for (const char *p = raw; *p; p++, len++) {
        const unsigned char c = (unsigned char)*p;
        if (c <= ' ' || c == 0x7f)
            return TARGET_BAD_CHAR;
        /* "%00" decodes to NUL, wherever it stands ("%%00" too: a '%'
         * that starts no escape is kept as it is) */
        if (c == '%' && p[1] == '0' && p[2] == '0')
            return TARGET_NUL;
    }
    return len > max ? TARGET_TOO_LONG : TARGET_OK;
}

const char *srv_origin_path(const char *url)
{
    size_t scheme;
    if (!strncasecmp(url, "http://", 7))
        scheme = 7;
    else if (!strncasecmp(url, "https://", 8))
        scheme = 8;
    else
        return url;
    const char *path = strchr(url + scheme, '/');
    return path ? path : "/";
}

/* RFC 9110 5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" /
 * "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA */
static bool is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

bool srv_field_name_ok(const char *name)
{
    if (!*name)
        return false;
    for (const char *p = name; *p; p++)
        if (!is_tchar((unsigned char)*p))
            return false;
    return true;
}

bool srv_field_value_ok(const char *value)
{
    for (const char *p = value; *p; p++) {
        const unsigned char c = (unsigned char)*p;
        if ((c < ' ' && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

bool srv_field_folded(const char *name, const char *value, size_t max_gap)
{
    const size_t len = strlen(name);
    const uintptr_t after_colon = (uintptr_t)name + len + 1;
    const uintptr_t at = (uintptr_t)value;
    if (at < after_colon || at - after_colon > max_gap)
        return true;
    const char *gap = name + len + 1; /* the whitespace the value follows */
    for (size_t i = 0; i < at - after_colon; i++)
        if (gap[i] != ' ' && gap[i] != '\t')
            return true;
    return false;
}
