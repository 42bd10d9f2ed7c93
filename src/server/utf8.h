/* UTF-8 checking for text that came from a client and goes into JSON or the log. */
#ifndef LATENTD_SERVER_UTF8_H
#define LATENTD_SERVER_UTF8_H

#include <stddef.h>

/* The length (1-4) of the well-formed UTF-8 character at s, of at most n
 * bytes, or 0 when there is none: a stray continuation byte, a cut or
 * overlong sequence, a surrogate, or a code point past U+10FFFF (what
 * jansson refuses too).  n must be at least 1. */
int srv_utf8_char_len(const unsigned char *s, size_t n);

#endif
