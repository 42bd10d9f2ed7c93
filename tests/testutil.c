#include "testutil.h"

#include <check.h>
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

const char *fixture(const char *fmt, ...)
{
    /* per thread: client threads build paths at once, and a shared ring let
     * one thread's path be overwritten before it was opened (a "mixed up"
     * image in test_service, the test's own race, 1 run in 100) */
    static _Thread_local char slots[8][4096];
    static _Thread_local int next;
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

void die_with_parent(pid_t parent)
{
    /* the parent may have ended before the request: then end now */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
        _exit(126);
}

void remove_temp_dir(char *dir)
{
    if (!getenv("LATENTD_TEST_KEEP")) { /* to look at what a failed test left */
        char cmd[4300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        ck_assert_int_eq(system(cmd), 0);
    }
    free(dir);
}

pid_t spawn_shell(const char *cmd, int gate)
{
    const pid_t test = getpid();
    const pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        die_with_parent(test);
        if (gate >= 0) {
            char c;
            while (read(gate, &c, 1) < 0 && errno == EINTR)
                ;
            close(gate);
        }
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* SIGCHLD writes a byte here, so a wait can poll with a timeout.  Not
 * pidfd_open: valgrind does not know that syscall, and CI runs every test
 * under it.  A handler (not a signalfd) because any thread may take the
 * signal. */
static int chld_pipe[2] = {-1, -1};

static void on_chld(int sig)
{
    (void)sig;
    const int saved = errno;
    ssize_t put = write(chld_pipe[1], "c", 1); /* full: a byte is already there */
    (void)put;
    errno = saved;
}

static void watch_children(void)
{
    if (chld_pipe[0] >= 0)
        return;
    ck_assert_int_eq(pipe2(chld_pipe, O_CLOEXEC | O_NONBLOCK), 0);
    struct sigaction sa = {0};
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    ck_assert_int_eq(sigaction(SIGCHLD, &sa, NULL), 0);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

int wait_within(pid_t pid, double seconds)
{
    watch_children(); /* a child that ended before this is seen by WNOHANG */
    const double deadline = now_ms() + seconds * 1000 * test_time_scale();
    int status;
    for (;;) {
        const pid_t got = waitpid(pid, &status, WNOHANG);
        ck_assert_int_ge(got, 0);
        if (got == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        const double left = deadline - now_ms();
        struct pollfd pfd = {chld_pipe[0], POLLIN, 0};
        const int ready = left > 0 ? poll(&pfd, 1, (int)left + 1) : 0;
        if (ready == 0)
            break;
        char drain[64];
        while (read(chld_pipe[0], drain, sizeof drain) > 0)
            ;
    }
    kill(pid, SIGKILL);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    return -1;
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

/* One tensor of the wide model: its name and shape (unused dims 0). */
typedef struct {
    char name[64];
    int64_t shape[4];
} wide_tensor;

static size_t wide_resnet(wide_tensor *t, const char *prefix, int64_t c)
{
    static const char *const norms[] = {"norm1", "norm2"}, *const convs[] = {"conv1", "conv2"};
    size_t n = 0;
    for (int i = 0; i < 2; i++) {
        t[n] = (wide_tensor){"", {c}};
        snprintf(t[n++].name, sizeof t->name, "%s%s.weight", prefix, norms[i]);
        t[n] = (wide_tensor){"", {c}};
        snprintf(t[n++].name, sizeof t->name, "%s%s.bias", prefix, norms[i]);
        t[n] = (wide_tensor){"", {c, c, 3, 3}};
        snprintf(t[n++].name, sizeof t->name, "%s%s.weight", prefix, convs[i]);
        t[n] = (wide_tensor){"", {c}};
        snprintf(t[n++].name, sizeof t->name, "%s%s.bias", prefix, convs[i]);
    }
    return n;
}

/* The encoder's tensors for one block of c channels without attention. */
static size_t wide_tensors(wide_tensor *t, int64_t c)
{
    size_t n = 0;
    t[n++] = (wide_tensor){"encoder.conv_in.weight", {c, 3, 3, 3}};
    t[n++] = (wide_tensor){"encoder.conv_in.bias", {c}};
    n += wide_resnet(t + n, "encoder.down_blocks.0.resnets.0.", c);
    n += wide_resnet(t + n, "encoder.mid_block.resnets.0.", c);
    n += wide_resnet(t + n, "encoder.mid_block.resnets.1.", c);
    t[n++] = (wide_tensor){"encoder.conv_norm_out.weight", {c}};
    t[n++] = (wide_tensor){"encoder.conv_norm_out.bias", {c}};
    t[n++] = (wide_tensor){"encoder.conv_out.weight", {8, c, 3, 3}};
    t[n++] = (wide_tensor){"encoder.conv_out.bias", {8}};
    t[n++] = (wide_tensor){"quant_conv.weight", {8, 8, 1, 1}};
    t[n++] = (wide_tensor){"quant_conv.bias", {8}};
    return n;
}

void write_wide_model(const char *dir, int channels)
{
    wide_tensor t[40];
    const size_t count = wide_tensors(t, channels);
    char header[8192] = "{";
    size_t used = 1, offset = 0;
    for (size_t i = 0; i < count; i++) {
        size_t bytes = 4;
        char shape[96] = "";
        for (int d = 0; d < 4 && t[i].shape[d]; d++) {
            bytes *= (size_t)t[i].shape[d];
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld",
                     d ? "," : "", (long long)t[i].shape[d]);
        }
        used += (size_t)snprintf(header + used, sizeof header - used,
                                 "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%s],"
                                 "\"data_offsets\":[%zu,%zu]}",
                                 i ? "," : "", t[i].name, shape, offset, offset + bytes);
        ck_assert_uint_lt(used, sizeof header - 16);
        offset += bytes;
    }
    header[used++] = '}';
    while (used % 8) /* the data starts 8-aligned */
        header[used++] = ' ';
    char path[4200];
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp != NULL, "cannot create %s", path);
    const uint64_t header_len = used; /* little-endian on every target we build */
    ck_assert_int_eq(fwrite(&header_len, 8, 1, fp), 1);
    ck_assert_int_eq(fwrite(header, 1, used, fp), used);
    ck_assert_int_eq(fflush(fp), 0);
    /* zeros without writing them: the weights' values do not change the time */
    ck_assert_int_eq(ftruncate(fileno(fp), (off_t)(8 + used + offset)), 0);
    ck_assert_int_eq(fclose(fp), 0);
    char config[1024];
    const int len = snprintf(config, sizeof config,
                             "{\"_class_name\": \"AutoencoderKL\", \"act_fn\": \"silu\", "
                             "\"block_out_channels\": [%d], "
                             "\"down_block_types\": [\"DownEncoderBlock2D\"], "
                             "\"in_channels\": 3, \"latent_channels\": 4, "
                             "\"layers_per_block\": 1, \"mid_block_add_attention\": false, "
                             "\"norm_num_groups\": 32, \"scaling_factor\": 0.18215, "
                             "\"use_quant_conv\": true}\n",
                             channels);
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_all(path, config, (size_t)len);
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

