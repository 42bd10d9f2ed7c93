/* latentd — conventions shared by every layer.
 *
 * Every fallible function returns LD_OK (0) or a negative ld_status and, when
 * the caller passes a buffer, writes one human-readable line into it
 * (char err[LD_ERR_LEN]).  The code says what kind of failure it was (so the
 * service can pick an HTTP status); the message says what and where. */
#ifndef LATENTD_COMMON_H
#define LATENTD_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define LD_ERR_LEN 256

typedef enum {
    LD_OK = 0,
    LD_EINVAL = -1,       /* the caller's arguments or input data are wrong */
    LD_ENOMEM = -2,       /* memory could not be had now (a retry may succeed) */
    LD_EIO = -3,          /* a file could not be opened, read or written */
    LD_EFORMAT = -4,      /* a file or image is corrupt or not what it claims */
    LD_EUNSUPPORTED = -5, /* well-formed, but something latentd does not handle */
    LD_ETOOLARGE = -6,    /* over a configured size or memory limit (no retry fits) */
    LD_ECANCELLED = -7    /* the caller asked to stop */
} ld_status;

/* A short name for a status ("invalid-argument", ...). */
const char *ld_status_name(int status);

/* Write a formatted message into err (which may be NULL) and return status.
 * Lets error paths read as one line: return ld_fail(err, LD_EIO, "...", ...). */
int ld_fail(char *err, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* 64-byte aligned allocation for float buffers; ld_free_aligned accepts NULL.
 * Returns NULL on failure or on a size whose byte count overflows. */
void *ld_alloc_aligned(size_t count, size_t elem_size);
void ld_free_aligned(void *p);

/* The same for a large work area that every pass sweeps: aligned to 2 MiB
 * and, where the system has transparent huge pages, advised to use them
 * (madvise), so the TLB covers the area.  Freed by ld_free_aligned. */
void *ld_alloc_huge(size_t count, size_t elem_size);

/* Seconds on the monotonic clock, for deadlines and durations. */
double ld_now_seconds(void);

/* A sampling seed: decimal digits only, 0 to 2^64-1 (no sign, no spaces, no
 * hex or octal, no clamping), as the daemon and the CLI both take it. */
int ld_parse_seed(const char *text, uint64_t *out, char *err);

/* a*b with overflow detection: returns 0 and sets *out, or -1 on overflow. */
int ld_mul_size(size_t a, size_t b, size_t *out);

#endif
