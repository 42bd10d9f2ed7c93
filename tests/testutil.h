/* Helpers shared by the tests: fixture paths, tensors read from fixture files,
 * and the fixtures' error metric. */
#ifndef LATENTD_TESTUTIL_H
#define LATENTD_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <check.h>

#include "latentd/safetensors.h"

/* $LATENTD_FIXTURES/rel (default tests/fixtures/rel), in one of the calling
 * thread's 8 buffers, each reused 8 calls later. */
const char *fixture(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A float32 copy of tensor `name` from a safetensors file; aborts the test if absent.
 * shape (may be NULL) receives up to 4 dims. */
float *read_tensor(const char *path, const char *name, size_t *numel, int64_t shape[4]);

/* max |a-b| / (1 + |b|): the fixtures README's metric, b the expected values. */
double rel_error(const float *a, const float *b, size_t n);

/* A fresh temporary directory; remove_temp_dir deletes it with all it holds
 * (unless LATENTD_TEST_KEEP is set) and frees the name. */
char *make_temp_dir(void);
void remove_temp_dir(char *dir);
/* In a child just forked from `parent`, before exec: the child is killed
 * when the test's process ends.  A failed assertion ends that process at
 * once, skipping the test's cleanup, and a daemon it started must not run
 * on (holding a port, memory and cores) through the tests after it. */
void die_with_parent(pid_t parent);
/* `sh -c cmd` in a child that dies with the test.  With gate >= 0 (the read
 * end of a pipe made with O_CLOEXEC) the child first waits for one byte from
 * it, so the test can prepare what depends on the child's pid before it
 * runs, or start several at once; the pid is the program's when cmd ends in
 * `exec PROGRAM ...`. */
pid_t spawn_shell(const char *cmd, int gate);
/* The child's exit status (128 + signal when a signal ended it), or -1 when
 * it did not end within `seconds` (scaled by test_time_scale): then it is
 * killed and reaped.  A deadline for a hang, not a way to wait for work. */
int wait_within(pid_t pid, double seconds);
/* A file's whole contents. */
uint8_t *read_all(const char *path, size_t *len);
void write_all(const char *path, const void *data, size_t len);

/* The names in a folder (no dot files), sorted; fails the test if it cannot be read. */
char **dir_entries(const char *path, int *count);
void dir_entries_free(char **names, int count);

/* A model of one block of `channels` channels, no attention, all weights
 * zero, written into `dir` (config.json and a sparse safetensors file).  Each
 * of its 3x3 convolutions is one layer whose time grows with channels²: the
 * tests' way to hold a worker in one layer longer than stall_timeout_ms. */
void write_wide_model(const char *dir, int channels);

/* Deterministic pseudo-random floats in [-1, 1). */
void fill_random(float *x, size_t n, uint32_t seed);

/* LATENTD_TEST_QUICK=1 (the valgrind run): skip what only repeats heavy
 * encodes; time limits stretch by LATENTD_TEST_TIME_SCALE (default 1). */
int test_quick(void);
double test_time_scale(void);
/* Run a suite and turn its result into an exit status. */
int run_suite(Suite *suite);

#endif
