/* Standard base64 (RFC 4648), strict on input: only the alphabet, optional
 * '=' padding at the end, and ASCII whitespace, which is skipped. */
#ifndef LATENTD_BASE64_H
#define LATENTD_BASE64_H

#include <stddef.h>
#include <stdint.h>

#include "latentd/common.h"

int ld_base64_decode(const char *src, size_t len, uint8_t **out, size_t *out_len, char *err);
/* NUL-terminated, malloc'd; NULL on allocation failure. */
char *ld_base64_encode(const uint8_t *src, size_t len, size_t *out_len);

#endif
