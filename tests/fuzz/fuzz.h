/* Shared by the fuzz targets, tests/fuzz/fuzz_<name>.c.
 *
 * Each target is one file defining LLVMFuzzerTestOneInput, the libFuzzer entry
 * point, and naming itself with LD_FUZZ_TARGET("<name>").  It is linked twice:
 * with libFuzzer (scripts/fuzz.sh, clang -fsanitize=fuzzer,address,undefined),
 * and with replay.c into tests/fuzz/replay_<name>, which `make check` runs over
 * tests/fuzz/corpus/<name>/ and tests/fuzz/regressions/<name>/.
 *
 * A target must not leak, must not keep state between inputs (fuzz_http.c,
 * which keeps one daemon running and checks it is at rest after each input,
 * is the exception), and checks the properties its parser promises with
 * FUZZ_CHECK, which (unlike assert) no NDEBUG removes and which aborts, so
 * libFuzzer and the replay alike see a crash. */
#ifndef LATENTD_FUZZ_H
#define LATENTD_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define LD_FUZZ_TARGET(name) const char ld_fuzz_target[] = name

extern const char ld_fuzz_target[];
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: fuzz property failed: %s\n", __FILE__, __LINE__, #cond);   \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

#endif
