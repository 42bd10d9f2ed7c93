/* Runs a fuzz target over saved inputs, without libFuzzer, so that `make check`
 * (plain, under ASan+UBSan and under valgrind) replays the seed corpus and every
 * crash the fuzzer ever found.
 *
 *   replay_<name> [file-or-folder ...]
 *
 * With no argument it replays $LATENTD_FUZZ_DATA/corpus/<name>/ (which must hold
 * inputs) and $LATENTD_FUZZ_DATA/regressions/<name>/ (which may be absent);
 * LATENTD_FUZZ_DATA defaults to tests/fuzz.  Each input is read into a buffer of
 * exactly its size, as libFuzzer does, so a read past its end is caught.  A
 * target reports a failure by crashing; this driver only counts what ran. */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

/* libFuzzer calls this once before the first input when a target defines it. */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int read_input(const char *path, uint8_t **data, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return -1;
    struct stat st;
    if (fstat(fileno(fp), &st) != 0) {
        fclose(fp);
        return -1;
    }
    *len = (size_t)st.st_size;
    *data = malloc(*len ? *len : 1);
    int ok = *data && fread(*data, 1, *len, fp) == *len;
    fclose(fp);
    if (!ok) {
        free(*data);
        return -1;
    }
    return 0;
}

static int run_file(const char *path, size_t *count)
{
    uint8_t *data;
    size_t len;
    if (read_input(path, &data, &len) != 0) {
        fprintf(stderr, "replay %s: cannot read %s: %s\n", ld_fuzz_target, path,
                strerror(errno));
        return -1;
    }
    printf("  %s (%zu bytes)\n", path, len);
    fflush(stdout); /* so the log names the input when a crash follows */
    LLVMFuzzerTestOneInput(data, len);
    free(data);
    ++*count;
    return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

static int skip_entry(const struct dirent *e)
{
    return e->d_name[0] != '.' && strcmp(e->d_name, "README.md") != 0;
}

/* A file, or every file in a folder (not recursing), in name order. */
static int run_path(const char *path, size_t *count)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "replay %s: %s: %s\n", ld_fuzz_target, path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode))
        return run_file(path, count);
    struct dirent **names;
    int n = scandir(path, &names, skip_entry, by_name);
    if (n < 0) {
        fprintf(stderr, "replay %s: cannot list %s: %s\n", ld_fuzz_target, path,
                strerror(errno));
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < n; i++) {
        char file[4096];
        snprintf(file, sizeof file, "%s/%s", path, names[i]->d_name);
        if (stat(file, &st) == 0 && S_ISREG(st.st_mode) && run_file(file, count) != 0)
            rc = -1;
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    size_t count = 0;
    int rc = 0;
    if (argc > 1) {
        for (int i = 1; i < argc; i++)
            if (run_path(argv[i], &count) != 0)
                rc = 1;
    } else {
        const char *top = getenv("LATENTD_FUZZ_DATA");
        char corpus[4096], regressions[4096];
        snprintf(corpus, sizeof corpus, "%s/corpus/%s", top ? top : "tests/fuzz",
                 ld_fuzz_target);
        snprintf(regressions, sizeof regressions, "%s/regressions/%s",
                 top ? top : "tests/fuzz", ld_fuzz_target);
        size_t seeds = 0;
        if (run_path(corpus, &seeds) != 0 || seeds == 0) {
            fprintf(stderr, "replay %s: no seed inputs in %s\n", ld_fuzz_target, corpus);
            rc = 1;
        }
        count = seeds;
        struct stat st;
        if (stat(regressions, &st) == 0 && run_path(regressions, &count) != 0)
            rc = 1;
    }
    printf("replay %s: %zu inputs, %s\n", ld_fuzz_target, count, rc ? "FAILED" : "no crash");
    return rc;
}
