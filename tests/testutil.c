#include "testutil.h"

#include <check.h>
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>

const char *fixture(const char *fmt, ...)
{
    static char slots[8][4096];
    static int next;
    char *buf = slots[next++ % 8];
    const char *root = getenv("LATENTD_FIXTURES");
    int used = snprintf(buf, 4096, "%s/", root ? root : "tests/fixtures");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, 4096 - (size_t)used, fmt, ap);
    va_end(ap);
    return buf;
}

float *read_tensor(const char *path, const char *name, size_t *numel, int64_t shape[4])
{
    char err[LD_ERR_LEN];
    ld_st_file *f;
    ck_assert_msg(ld_st_open(path, &f, err) == LD_OK, "%s", err);
    const ld_st_tensor *t = ld_st_find(f, name);
    ck_assert_msg(t != NULL, "%s: no tensor %s", path, name);
    float *data = malloc(t->numel * sizeof(float));
    ck_assert_ptr_nonnull(data);
    ck_assert_int_eq(ld_st_to_f32(f, t, data, err), LD_OK);
    if (numel)
        *numel = t->numel;
    if (shape)
        for (int d = 0; d < 4; d++)
            shape[d] = d < t->ndim ? t->shape[d] : 0;
    ld_st_close(f);
    return data;
}

double rel_error(const float *a, const float *b, size_t n)
{
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)b[i]) / (1.0 + fabs((double)b[i]));
        if (!(e <= worst)) /* NaN counts as the worst */
            worst = isnan(e) ? INFINITY : e;
    }
    return worst;
}

char *make_temp_dir(void)
{
    char *dir = strdup("/tmp/latentd-test-XXXXXX");
    ck_assert_ptr_nonnull(dir);
    ck_assert_ptr_nonnull(mkdtemp(dir));
    return dir;
}

uint8_t *read_all(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)size + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(fread(buf, 1, (size_t)size, fp), (size_t)size);
    fclose(fp);
    *len = (size_t)size;
    return buf;
}

void write_all(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp != NULL, "cannot create %s", path);
    ck_assert_int_eq(fwrite(data, 1, len, fp), len);
    ck_assert_int_eq(fclose(fp), 0);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

char **dir_entries(const char *path, int *count)
{
    DIR *d = opendir(path);
    ck_assert_msg(d != NULL, "cannot open %s", path);
    char **names = NULL;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        names = realloc(names, (size_t)(n + 1) * sizeof *names);
        ck_assert_ptr_nonnull(names);
        names[n] = strdup(e->d_name);
        ck_assert_ptr_nonnull(names[n++]);
    }
    closedir(d);
    if (n > 1)
        qsort(names, (size_t)n, sizeof *names, by_name);
    *count = n;
    return names;
}

void dir_entries_free(char **names, int count)
{
    for (int i = 0; i < count; i++)
        free(names[i]);
    free(names);
}

void fill_random(float *x, size_t n, uint32_t seed)
{
    uint32_t s = seed * 2654435761u + 1u;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        x[i] = (float)((double)s / 2147483648.0 - 1.0);
    }
}

int run_suite(Suite *suite)
{
    SRunner *sr = srunner_create(suite);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

int test_quick(void)
{
    const char *q = getenv("LATENTD_TEST_QUICK");
    return q && *q && strcmp(q, "0") != 0;
}

double test_time_scale(void)
{
    const char *s = getenv("LATENTD_TEST_TIME_SCALE");
    const double v = s ? atof(s) : 1.0;
    return v >= 1.0 ? v : 1.0;
}

double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
