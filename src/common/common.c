#include "latentd/common.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

const char *ld_status_name(int status)
{
    switch (status) {
    case LD_OK: return "ok";
    case LD_EINVAL: return "invalid-argument";
    case LD_ENOMEM: return "out-of-memory";
    case LD_EIO: return "io-error";
    case LD_EFORMAT: return "bad-format";
    case LD_EUNSUPPORTED: return "unsupported";
    case LD_ETOOLARGE: return "too-large";
    case LD_ECANCELLED: return "cancelled";
    default: return "error";
    }
}

int ld_fail(char *err, int status, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, LD_ERR_LEN, fmt, ap);
        va_end(ap);
    }
    return status;
}

int ld_parse_seed(const char *text, uint64_t *out, char *err)
{
    /* digits only: strtoull alone would take "+5", " 5", "-1", "0x5", read
     * "010" as octal and clamp 2^64; more than 20 characters is too long */
    uint64_t v = 0;
    if (!*text || strlen(text) > 20)
        return ld_fail(err, LD_EINVAL, "seed: want an integer from 0 to 18446744073709551615");
    for (const char *p = text; *p; p++) {
        const unsigned digit = (unsigned)(*p - '0');
        if (digit > 9 || v > (UINT64_MAX - digit) / 10)
            return ld_fail(err, LD_EINVAL, "seed: want an integer from 0 to "
                           "18446744073709551615");
        v = v * 10 + digit;
    }
    *out = v;
    return LD_OK;
}

int ld_mul_size(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return -1;
    *out = a * b;
    return 0;
}

/* count·elem_size bytes at a multiple of align (a power of two), rounded up
 * to whole multiples as aligned_alloc wants (at least one), the rounded
 * size in *size; NULL when the byte count overflows. */
static void *alloc_rounded(size_t count, size_t elem_size, size_t align, size_t *size)
{
    size_t bytes;
    if (ld_mul_size(count, elem_size, &bytes) != 0 || bytes > SIZE_MAX - (align - 1))
        return NULL;
    *size = bytes ? (bytes + align - 1) & ~(align - 1) : align;
    return aligned_alloc(align, *size);
}

void *ld_alloc_aligned(size_t count, size_t elem_size)
{
    size_t size;
    return alloc_rounded(count, elem_size, 64, &size);
}

/* A transparent huge page on x86-64: the kernel backs only whole aligned
 * ones, so the block is aligned and sized to them. */
#define HUGE_PAGE ((size_t)2 << 20)

void *ld_alloc_huge(size_t count, size_t elem_size)
{
    size_t size;
    void *p = alloc_rounded(count, elem_size, HUGE_PAGE, &size);
#ifdef MADV_HUGEPAGE
    /* only advice: where huge pages are off or none is free, the kernel
     * uses small ones and the area works the same, only slower (the
     * Winograd passes sweep it: 4-5 % of a 512² encode, measured) */
    if (p)
        (void)madvise(p, size, MADV_HUGEPAGE);
#endif
    return p;
}

void ld_free_aligned(void *p)
{
    free(p);
}

double ld_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
