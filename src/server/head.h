/* What a request's head must be before any phase reads it (RFC 9112):
 * the request target as the client sent it, and the header fields as
 * libmicrohttpd split them.  Pure functions over strings, so the fuzz
 * target and the unit tests reach them without a socket.
 *
 *   srv_target_problem(raw, max)  the raw target: NUL, whitespace, length
 *   srv_origin_path(url)          an absolute-form target's path
 *   srv_field_name_ok(name)       a field name is an RFC 9110 token
 *   srv_field_value_ok(value)     a field value holds no control character
 *   srv_field_folded(...)         a field libmicrohttpd unfolded (obs-fold) */
#ifndef LATENTD_SERVER_HEAD_H
#define LATENTD_SERVER_HEAD_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    TARGET_OK,
    TARGET_NUL,       /* %00: the decoded path or a value would end there */
    TARGET_BAD_CHAR,  /* a space or a control character */
    TARGET_TOO_LONG,
} srv_target_problem_kind;

/* The request target as sent (before percent-decoding), against max bytes. */
srv_target_problem_kind srv_target_problem(const char *raw, size_t max);

/* RFC 9112 3.2.2: "http://host/p" is served as "/p" (and "http://host" as
 * "/"); any other target is returned as it is. */
const char *srv_origin_path(const char *url);

/* RFC 9110 5.1: a field name is a token (tchar+).  A space or tab before the
 * colon stays in the name libmicrohttpd reports, so it fails here. */
bool srv_field_name_ok(const char *name);

/* RFC 9112 5.5: a field value holds no control character but tab (a bare
 * CR, which a proxy may take for a line's end, among them). */
bool srv_field_value_ok(const char *value);

/* libmicrohttpd 0.9.x parses the head in place: a field's name is followed
 * in its buffer by the NUL that replaced the colon, optional whitespace and
 * then the value.  An obs-fold continuation line is appended to the *name*,
 * in a new block of its pool, so a folded field's name no longer stands
 * right before its value.  True when name and value are not laid out as one
 * unfolded line (reads at most max_gap bytes between them). */
bool srv_field_folded(const char *name, const char *value, size_t max_gap);

#endif
