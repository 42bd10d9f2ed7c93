/* bench-service: images/s through the real daemon against the bare encoder.
 *
 *   bench-service [--model DIR] [--latentd PATH] [--bench-encode PATH] [--size N]
 *                 [--images N] [--clients N] [--config WxT/S]... [--batch-delay-ms N]
 *                 [--reps N] [--body raw|json] [--budget BYTES] [--pass-timeout S]
 *
 * Without --model it runs `bench-encode --save-model DIR` (a full-size SD VAE
 * encoder with random weights: speed does not depend on the weights' values)
 * into a temporary folder, so both programs bench the same model.
 *
 * For each configuration (W workers x T threads, vae_split S) and each of
 * --reps rounds it runs two passes over the same --images PNG images of
 * --size², in alternating order (daemon first in odd rounds, bare first in
 * even ones) so that a machine whose load changes slows both alike:
 *
 *   daemon  latentd started on 127.0.0.1 (a listening socket handed over as
 *           systemd's socket activation does, readiness from NOTIFY_SOCKET),
 *           warmed up with one batch per worker, then --clients keep-alive
 *           connections POST the images one per request and check that each
 *           answer is 200 with an npy of the latent's shape; timed from the
 *           first request to the last answer.  Its peak RSS (VmHWM), CPU time
 *           and batch sizes (/metrics) are read before it is stopped.
 *   bare    ld_encode in this process: W threads, each with its own pool of T
 *           threads and batches of at most S images, the working memory capped
 *           as the daemon caps a worker's (one image of max_image_pixels), the
 *           images decoded beforehand; timed from the first batch to the last.
 *
 * It prints each pass, then per configuration the best of each and the ratio
 * daemon/bare.  Traffic goes to 127.0.0.1 only; every wait is bounded by
 * --pass-timeout, and the daemon is stopped (SIGTERM, then SIGKILL) whatever
 * happens. */
#include "latentd/base64.h"
#include "latentd/encoder.h"
#include "latentd/image.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <png.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { MAX_CONFIGS = 8, MAX_CLIENTS = 256 };

/* One daemon setting to compare: workers x threads, vae_split. */
typedef struct {
    int workers, threads, vae_split;
} bench_config;

typedef struct {
    const char *model_dir, *latentd, *bench_encode, *budget;
    const char *body;        /* "raw" (image/png) or "json" (base64 in JSON) */
    int size, images, clients, reps, batch_delay_ms;
    long max_image_pixels;   /* the daemon's default, for the bare encoder's memory cap */
    double pass_timeout;     /* seconds any one pass may take, start and stop included */
    bench_config configs[MAX_CONFIGS];
    int n_configs;
} bench_opts;

/* What one pass measured. */
typedef struct {
    double seconds;         /* first request (or batch) to last answer */
    long peak_rss_kb;       /* daemon: VmHWM */
    double cpu_seconds;     /* user + system time of the daemon (of this process, bare)
                               during the timed part: less noisy than wall time on a
                               shared machine */
    double mean_batch;      /* images per forward pass */
    double encode_seconds;  /* daemon: sum of its batches' encode times */
} pass_result;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ================================================================ the image */

/* A size² PNG of smooth gradients with noise (like bench-encode's), so it
 * compresses and decodes like a photo rather than like pure noise. */
static int make_png(int size, uint8_t **png, size_t *len, char *err)
{
    uint8_t *pixels = malloc((size_t)size * size * 3);
    if (!pixels)
        return ld_fail(err, LD_ENOMEM, "out of memory for a %dx%d image", size, size);
    uint32_t s = 7;
    for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++)
            for (int c = 0; c < 3; c++) {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                pixels[((size_t)y * size + x) * 3 + c] =
                    (uint8_t)((x * (c + 1) + y * (3 - c)) / 4 % 200 + (int)(s % 48));
            }
    png_image img = {.version = PNG_IMAGE_VERSION, .width = (png_uint_32)size,
                     .height = (png_uint_32)size, .format = PNG_FORMAT_RGB};
    png_alloc_size_t need = 0;
    int rc = LD_OK;
    if (!png_image_write_to_memory(&img, NULL, &need, 0, pixels, 0, NULL))
        rc = ld_fail(err, LD_EIO, "libpng: %s", img.message);
    else if (!(*png = malloc(need)))
        rc = ld_fail(err, LD_ENOMEM, "out of memory for a PNG of %zu bytes", (size_t)need);
    else if (!png_image_write_to_memory(&img, *png, &need, 0, pixels, 0, NULL))
        rc = ld_fail(err, LD_EIO, "libpng: %s", img.message);
    *len = need;
    free(pixels);
    return rc;
}

/* The whole HTTP request for one image: raw PNG or JSON, npy answer. */
static int make_request(const bench_opts *o, const uint8_t *png, size_t png_len, char **out,
                        size_t *out_len, char *err)
{
    const bool json = strcmp(o->body, "json") == 0;
    char *b64 = NULL, *body_text = NULL;
    const void *body = png;
    size_t body_len = png_len;
    if (json) {
        size_t b64_len;
        if (!(b64 = ld_base64_encode(png, png_len, &b64_len)) ||
            !(body_text = malloc(b64_len + 64))) {
            free(b64);
            return ld_fail(err, LD_ENOMEM, "out of memory for a JSON body");
        }
        body_len = (size_t)sprintf(body_text, "{\"images\": [\"%s\"], \"format\": \"npy\"}", b64);
        body = body_text;
        free(b64);
    }
    char head[256];
    const int head_len = snprintf(head, sizeof head,
                                  "POST /v1/encode%s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  "Content-Type: %s\r\nContent-Length: %zu\r\n\r\n",
                                  json ? "" : "?format=npy",
                                  json ? "application/json" : "image/png", body_len);
    *out_len = (size_t)head_len + body_len;
    *out = malloc(*out_len);
    if (!*out) {
        free(body_text);
        return ld_fail(err, LD_ENOMEM, "out of memory for a request");
    }
    memcpy(*out, head, (size_t)head_len);
    memcpy(*out + head_len, body, body_len);
    free(body_text);
    return LD_OK;
}

/* ================================================================ HTTP client */

/* Wait for events on fd until the monotonic deadline; false on timeout. */
static bool wait_fd(int fd, short events, double deadline)
{
    for (;;) {
        const double left = deadline - now();
        if (left <= 0)
            return false;
        struct pollfd p = {.fd = fd, .events = events};
        const int rc = poll(&p, 1, (int)ceil(left * 1000));
        if (rc > 0)
            return true;
        if (rc < 0 && errno != EINTR)
            return false;
    }
}

static int tcp_connect(int port, double deadline, int *fd, char *err)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    *fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (*fd < 0)
        return ld_fail(err, LD_EIO, "socket: %s", strerror(errno));
    const int one = 1;
    setsockopt(*fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(*fd, (struct sockaddr *)&addr, sizeof addr) != 0 && errno != EINPROGRESS)
        return ld_fail(err, LD_EIO, "connect: %s", strerror(errno));
    int so_error = 0;
    socklen_t len = sizeof so_error;
    if (!wait_fd(*fd, POLLOUT, deadline))
        return ld_fail(err, LD_EIO, "connect: timed out");
    if (getsockopt(*fd, SOL_SOCKET, SO_ERROR, &so_error, &len) != 0 || so_error)
        return ld_fail(err, LD_EIO, "connect: %s", strerror(so_error));
    return LD_OK;
}

static int send_all(int fd, const char *data, size_t len, double deadline, char *err)
{
    while (len > 0) {
        const ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
            return ld_fail(err, LD_EIO, "send: %s", strerror(errno));
        } else if (!wait_fd(fd, POLLOUT, deadline)) {
            return ld_fail(err, LD_EIO, "send: timed out");
        }
    }
    return LD_OK;
}

/* One connection's receive buffer: what was read and not yet consumed. */
typedef struct {
    char *data;
    size_t len, cap;
} recv_buf;

/* Read more into the buffer, at least one byte; an error when the peer closed. */
static int recv_more(int fd, recv_buf *b, double deadline, char *err)
{
    if (b->cap - b->len < 65536) {
        const size_t cap = b->cap * 2 + 65536;
        char *grown = realloc(b->data, cap + 1);
        if (!grown)
            return ld_fail(err, LD_ENOMEM, "out of memory reading an answer");
        b->data = grown;
        b->cap = cap;
    }
    for (;;) {
        const ssize_t n = recv(fd, b->data + b->len, b->cap - b->len, 0);
        if (n > 0) {
            b->len += (size_t)n;
            b->data[b->len] = '\0';
            return LD_OK;
        }
        if (n == 0)
            return ld_fail(err, LD_EIO, "the daemon closed the connection");
        if (errno != EAGAIN && errno != EINTR)
            return ld_fail(err, LD_EIO, "recv: %s", strerror(errno));
        if (!wait_fd(fd, POLLIN, deadline))
            return ld_fail(err, LD_EIO, "no answer before the pass's deadline");
    }
}

/* One answer with a Content-Length body (the daemon sends no other kind to
 * these requests): its status and body, which stays in b until *consumed
 * bytes are dropped by the caller. */
static int read_answer(int fd, recv_buf *b, double deadline, int *status, const char **body,
                       size_t *body_len, size_t *consumed, char *err)
{
    char *end;
    while (!(end = b->data ? strstr(b->data, "\r\n\r\n") : NULL)) {
        const int rc = recv_more(fd, b, deadline, err);
        if (rc != LD_OK)
            return rc;
    }
    const size_t head_len = (size_t)(end - b->data) + 4;
    if (sscanf(b->data, "HTTP/1.1 %d", status) != 1)
        return ld_fail(err, LD_EFORMAT, "not an HTTP/1.1 status line: %.40s", b->data);
    const char *cl = strcasestr(b->data, "\r\ncontent-length:");
    if (!cl || cl > end)
        return ld_fail(err, LD_EFORMAT, "an answer without Content-Length (status %d)", *status);
    const size_t len = strtoull(cl + strlen("\r\ncontent-length:"), NULL, 10);
    while (b->len < head_len + len) {
        const int rc = recv_more(fd, b, deadline, err);
        if (rc != LD_OK)
            return rc;
    }
    *body = b->data + head_len;
    *body_len = len;
    *consumed = head_len + len;
    return LD_OK;
}

static void recv_consume(recv_buf *b, size_t n)
{
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

/* An npy answer holds float32 latents [1, 4, size/8, size/8]. */
static int check_npy(const char *body, size_t len, int size, char *err)
{
    char shape[64];
    snprintf(shape, sizeof shape, "'shape': (1, 4, %d, %d)", size / 8, size / 8);
    if (len < 10 || memcmp(body, "\x93NUMPY", 6) != 0)
        return ld_fail(err, LD_EFORMAT, "the answer is not an npy file");
    const size_t header = 10 + (size_t)(uint8_t)body[8] + 256 * (size_t)(uint8_t)body[9];
    const size_t values = (size_t)4 * (size / 8) * (size / 8);
    if (header > len || !memmem(body, header, shape, strlen(shape)) ||
        !memmem(body, header, "'<f4'", 5) || len - header != values * sizeof(float))
        return ld_fail(err, LD_EFORMAT, "an npy answer of %zu bytes is not %s of float32",
                       len, shape);
    return LD_OK;
}

/* One request on a kept-alive connection, its answer checked. */
static int post_image(int fd, recv_buf *b, const char *request, size_t request_len, int size,
                      double deadline, char *err)
{
    int rc = send_all(fd, request, request_len, deadline, err);
    int status = 0;
    const char *body = NULL;
    size_t body_len = 0, consumed = 0;
    if (rc == LD_OK)
        rc = read_answer(fd, b, deadline, &status, &body, &body_len, &consumed, err);
    if (rc == LD_OK && status != 200)
        rc = ld_fail(err, LD_EIO, "status %d: %.*s", status, (int)(body_len < 200 ? body_len
                                                                               : 200), body);
    if (rc == LD_OK)
        rc = check_npy(body, body_len, size, err);
    if (consumed)
        recv_consume(b, consumed);
    return rc;
}

/* A GET's body (malloc'd, NUL-terminated), on a connection of its own. */
static int http_get(int port, const char *path, double deadline, char **body, char *err)
{
    int fd = -1;
    recv_buf b = {0};
    char request[256];
    const int len = snprintf(request, sizeof request,
                             "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                             path);
    int status = 0;
    const char *text = NULL;
    size_t text_len = 0, consumed = 0;
    int rc = tcp_connect(port, deadline, &fd, err);
    if (rc == LD_OK)
        rc = send_all(fd, request, (size_t)len, deadline, err);
    if (rc == LD_OK)
        rc = read_answer(fd, &b, deadline, &status, &text, &text_len, &consumed, err);
    if (rc == LD_OK && status != 200)
        rc = ld_fail(err, LD_EIO, "GET %s: status %d", path, status);
    if (rc == LD_OK && !(*body = strndup(text, text_len)))
        rc = ld_fail(err, LD_ENOMEM, "out of memory");
    if (fd >= 0)
        close(fd);
    free(b.data);
    return rc;
}

/* ================================================================ the daemon */

typedef struct {
    pid_t pid;
    int pidfd;      /* readable once the daemon exited */
    int notify_fd;  /* the NOTIFY_SOCKET we play */
    int listen_fd;  /* handed to the daemon as fd 3 */
    int port;
    char dir[64];   /* notify socket and log */
} daemon_proc;

/* A listening socket on 127.0.0.1, any free port: the daemon gets it as
 * systemd would pass it, so no port is guessed and none is raced for. */
static int listen_loopback(int *fd, int *port, char *err)
{
    struct sockaddr_in addr = {.sin_family = AF_INET};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    *fd = socket(AF_INET, SOCK_STREAM, 0);
    if (*fd < 0 || bind(*fd, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        listen(*fd, 256) != 0 || getsockname(*fd, (struct sockaddr *)&addr, &len) != 0)
        return ld_fail(err, LD_EIO, "cannot listen on 127.0.0.1: %s", strerror(errno));
    *port = ntohs(addr.sin_port);
    return LD_OK;
}

static int notify_socket(const char *dir, int *fd, char *path, size_t path_size, char *err)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(path, path_size, "%s/notify", dir);
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    *fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (*fd < 0 || bind(*fd, (struct sockaddr *)&addr, sizeof addr) != 0)
        return ld_fail(err, LD_EIO, "cannot make the notify socket %s: %s", path,
                       strerror(errno));
    return LD_OK;
}

/* The child's side: fd 3 is the listening socket, LISTEN_PID is its own. */
static void exec_daemon(const daemon_proc *d, const char *notify_path, char *const *argv)
{
    if (d->listen_fd != 3 && dup2(d->listen_fd, 3) != 3)
        _exit(127);
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("LISTEN_PID", pid, 1);
    setenv("LISTEN_FDS", "1", 1);
    setenv("NOTIFY_SOCKET", notify_path, 1);
    execv(argv[0], argv);
    fprintf(stderr, "bench-service: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

/* Until the daemon says READY=1; an error when it exits or the deadline passes. */
static int wait_ready(const daemon_proc *d, double deadline, char *err)
{
    char message[4096];
    for (;;) {
        struct pollfd p[2] = {{d->notify_fd, POLLIN, 0}, {d->pidfd, POLLIN, 0}};
        const double left = deadline - now();
        if (left <= 0)
            return ld_fail(err, LD_EIO, "latentd did not report READY=1 in time (log: %s/log)",
                           d->dir);
        const int rc = poll(p, 2, (int)ceil(left * 1000));
        if (rc < 0 && errno != EINTR)
            return ld_fail(err, LD_EIO, "poll: %s", strerror(errno));
        if (p[1].revents & POLLIN)
            return ld_fail(err, LD_EIO, "latentd exited while starting (log: %s/log)", d->dir);
        if (!(p[0].revents & POLLIN))
            continue;
        const ssize_t n = recv(d->notify_fd, message, sizeof message - 1, 0);
        if (n > 0) {
            message[n] = '\0';
            if (strstr(message, "READY=1"))
                return LD_OK;
        }
    }
}

/* The daemon's flags for one configuration. */
static void daemon_argv(const bench_opts *o, const bench_config *c, const char *log,
                        char args[][96], char **argv)
{
    int n = 0;
    argv[n++] = (char *)o->latentd;
    argv[n++] = "--model";
    argv[n++] = (char *)o->model_dir;
    argv[n++] = "--log-file";
    argv[n++] = (char *)log;
    snprintf(args[0], 96, "--workers=%d", c->workers);
    snprintf(args[1], 96, "--threads=%d", c->threads);
    snprintf(args[2], 96, "--vae-split=%d", c->vae_split);
    snprintf(args[3], 96, "--max-batch-delay-ms=%d", o->batch_delay_ms);
    snprintf(args[4], 96, "memory_budget_bytes=%s", o->budget);
    /* a request may wait for every other client's images: no 504 in a long pass */
    snprintf(args[5], 96, "request_timeout_ms=%.0f", o->pass_timeout * 1000);
    snprintf(args[6], 96, "max_queue=%d", o->clients > 64 ? o->clients : 64);
    for (int i = 0; i < 4; i++)
        argv[n++] = args[i];
    for (int i = 4; i < 7; i++) {
        argv[n++] = "--set";
        argv[n++] = args[i];
    }
    argv[n] = NULL;
}

static int daemon_start(const bench_opts *o, const bench_config *c, double deadline,
                        daemon_proc *d, char *err)
{
    *d = (daemon_proc){.pid = -1, .pidfd = -1, .notify_fd = -1, .listen_fd = -1};
    snprintf(d->dir, sizeof d->dir, "/tmp/latentd-bench-service-XXXXXX");
    if (!mkdtemp(d->dir))
        return ld_fail(err, LD_EIO, "cannot make a temporary folder: %s", strerror(errno));
    char notify_path[128], log[128], args[8][96], *argv[24];
    snprintf(log, sizeof log, "%s/log", d->dir);
    int rc = notify_socket(d->dir, &d->notify_fd, notify_path, sizeof notify_path, err);
    if (rc == LD_OK)
        rc = listen_loopback(&d->listen_fd, &d->port, err);
    if (rc != LD_OK)
        return rc;
    daemon_argv(o, c, log, args, argv);
    d->pid = fork();
    if (d->pid < 0)
        return ld_fail(err, LD_EIO, "fork: %s", strerror(errno));
    if (d->pid == 0)
        exec_daemon(d, notify_path, argv);
    d->pidfd = (int)syscall(SYS_pidfd_open, d->pid, 0);
    if (d->pidfd < 0)
        return ld_fail(err, LD_EIO, "pidfd_open: %s", strerror(errno));
    close(d->listen_fd); /* the daemon holds it now */
    d->listen_fd = -1;
    return wait_ready(d, deadline, err);
}

/* SIGTERM, then SIGKILL when it has not exited within `grace` seconds;
 * removes its folder (log included) unless keep_log. */
static void daemon_stop(daemon_proc *d, double grace, bool keep_log)
{
    if (d->pid > 0) {
        kill(d->pid, SIGTERM);
        struct pollfd p = {d->pidfd, POLLIN, 0};
        if (d->pidfd < 0 || poll(&p, 1, (int)(grace * 1000)) <= 0) {
            fprintf(stderr, "bench-service: latentd %d did not stop in %.0f s: SIGKILL\n",
                    (int)d->pid, grace);
            kill(d->pid, SIGKILL);
        }
        waitpid(d->pid, NULL, 0);
    }
    if (d->pidfd >= 0)
        close(d->pidfd);
    if (d->notify_fd >= 0)
        close(d->notify_fd);
    if (d->listen_fd >= 0)
        close(d->listen_fd);
    char path[128];
    snprintf(path, sizeof path, "%s/notify", d->dir);
    unlink(path);
    if (keep_log) {
        fprintf(stderr, "bench-service: the daemon's log is in %s/log\n", d->dir);
        return;
    }
    snprintf(path, sizeof path, "%s/log", d->dir);
    unlink(path);
    rmdir(d->dir);
}

/* A field of /proc/PID/status in kB ("VmHWM"), or -1. */
static long proc_status_kb(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *fp = fopen(path, "r");
    long value = -1;
    const size_t len = strlen(field);
    while (fp && fgets(line, sizeof line, fp))
        if (strncmp(line, field, len) == 0 && line[len] == ':')
            value = atol(line + len + 1);
    if (fp)
        fclose(fp);
    return value;
}

/* User + system CPU seconds the process has used, or -1. */
static double proc_cpu_seconds(pid_t pid)
{
    char path[64], text[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *fp = fopen(path, "r");
    if (!fp)
        return -1;
    const size_t n = fread(text, 1, sizeof text - 1, fp);
    fclose(fp);
    text[n] = '\0';
    const char *after = strrchr(text, ')'); /* the command may hold spaces */
    unsigned long long utime, stime;
    if (!after || sscanf(after + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                         &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* The value of one unlabelled series in a /metrics text, or 0. */
static double metric(const char *text, const char *series)
{
    const size_t len = strlen(series);
    for (const char *line = text; line && *line; line = strchr(line, '\n'), line += !!line)
        if (strncmp(line, series, len) == 0 && line[len] == ' ')
            return strtod(line + len + 1, NULL);
    return 0;
}

/* Batches, images in them and encode seconds so far, from /metrics. */
typedef struct {
    double batches, images, encode_seconds;
} daemon_counts;

static int scrape(int port, double deadline, daemon_counts *c, char *err)
{
    char *text = NULL;
    const int rc = http_get(port, "/metrics", deadline, &text, err);
    if (rc != LD_OK)
        return rc;
    c->batches = metric(text, "latentd_batch_size_count");
    c->images = metric(text, "latentd_batch_size_sum");
    c->encode_seconds = metric(text, "latentd_encode_seconds_sum");
    free(text);
    return LD_OK;
}

/* ================================================================ clients */

typedef struct {
    const bench_opts *o;
    int port;
    const char *request;
    size_t request_len;
    int total;                  /* images to post */
    _Atomic int next;           /* the next image to post */
    double deadline;
    pthread_barrier_t start;    /* every client connected, and the main thread */
    _Atomic bool failed;
    pthread_mutex_t lock;
    char err[LD_ERR_LEN];       /* the first failure */
} client_run;

static void client_fail(client_run *run, const char *err)
{
    pthread_mutex_lock(&run->lock);
    if (!atomic_exchange(&run->failed, true))
        snprintf(run->err, sizeof run->err, "%s", err);
    pthread_mutex_unlock(&run->lock);
}

/* One client: a kept-alive connection posting images until none are left. */
static void *client_main(void *arg)
{
    client_run *run = arg;
    char err[LD_ERR_LEN];
    recv_buf b = {0};
    int fd = -1;
    int rc = tcp_connect(run->port, run->deadline, &fd, err);
    pthread_barrier_wait(&run->start);
    while (rc == LD_OK && !atomic_load(&run->failed) && atomic_fetch_add(&run->next, 1) < run->total)
        rc = post_image(fd, &b, run->request, run->request_len, run->o->size, run->deadline, err);
    if (rc != LD_OK)
        client_fail(run, err);
    if (fd >= 0)
        close(fd);
    free(b.data);
    return NULL;
}

/* `total` images from `clients` concurrent clients; seconds from the start
 * of the first request to the last answer. */
static int post_images(const bench_opts *o, int port, const char *request, size_t request_len,
                       int clients, int total, double deadline, double *seconds, char *err)
{
    client_run run = {.o = o, .port = port, .request = request, .request_len = request_len,
                      .total = total, .deadline = deadline};
    pthread_t threads[MAX_CLIENTS];
    pthread_mutex_init(&run.lock, NULL);
    pthread_barrier_init(&run.start, NULL, (unsigned)clients + 1);
    int started = 0;
    while (started < clients &&
           pthread_create(&threads[started], NULL, client_main, &run) == 0)
        started++;
    if (started < clients) { /* the barrier waits for clients + 1: say so and stop */
        fprintf(stderr, "bench-service: could not start client threads\n");
        abort();
    }
    pthread_barrier_wait(&run.start);
    const double t0 = now();
    for (int i = 0; i < clients; i++)
        pthread_join(threads[i], NULL);
    *seconds = now() - t0;
    pthread_barrier_destroy(&run.start);
    pthread_mutex_destroy(&run.lock);
    if (atomic_load(&run.failed))
        return ld_fail(err, LD_EIO, "a client: %s", run.err);
    return LD_OK;
}

/* ================================================================ the passes */

/* Start the daemon, warm it up (one full batch per worker, untimed: the
 * first encode of each worker touches its memory), time the images, read
 * its peak RSS, CPU time and batching, stop it. */
static int daemon_pass(const bench_opts *o, const bench_config *c, const char *request,
                       size_t request_len, pass_result *r, char *err)
{
    const double deadline = now() + o->pass_timeout;
    daemon_proc d;
    int rc = daemon_start(o, c, deadline, &d, err);
    const int warm = c->workers * c->vae_split;
    double warm_seconds, cpu0 = 0;
    daemon_counts before = {0}, after = {0};
    if (rc == LD_OK)
        rc = post_images(o, d.port, request, request_len, warm < o->clients ? warm : o->clients,
                         warm, deadline, &warm_seconds, err);
    if (rc == LD_OK)
        rc = scrape(d.port, deadline, &before, err);
    if (rc == LD_OK) {
        cpu0 = proc_cpu_seconds(d.pid);
        rc = post_images(o, d.port, request, request_len, o->clients, o->images, deadline,
                         &r->seconds, err);
    }
    if (rc == LD_OK) {
        r->cpu_seconds = proc_cpu_seconds(d.pid) - cpu0;
        r->peak_rss_kb = proc_status_kb(d.pid, "VmHWM");
        rc = scrape(d.port, deadline, &after, err);
    }
    if (rc == LD_OK) {
        const double batches = after.batches - before.batches;
        r->mean_batch = batches > 0 ? (after.images - before.images) / batches : 0;
        r->encode_seconds = after.encode_seconds - before.encode_seconds;
    }
    daemon_stop(&d, 30, rc != LD_OK);
    return rc;
}

/* The bare encoder's shared state: the images and which batch is next. */
typedef struct {
    const ld_model *model;
    const float *images;   /* vae_split copies of the decoded image */
    int size, vae_split, threads, total;
    size_t max_memory;
    _Atomic int next;      /* first image of the next batch */
    _Atomic int batches;   /* ld_encode calls in the timed part */
    _Atomic bool failed;
    char err[LD_ERR_LEN];
    pthread_mutex_t lock;
} bare_run;

typedef struct {
    bare_run *run;
    ld_pool *pool;
    float *latents;        /* [vae_split, 4, size/8, size/8] */
    pthread_barrier_t *start;
} bare_worker;

static int bare_encode(bare_worker *w, int n, char *err)
{
    bare_run *run = w->run;
    ld_encode_opts eo;
    ld_encode_opts_init(&eo);
    eo.vae_split = run->vae_split;
    eo.pool = w->pool;
    eo.max_memory = run->max_memory;
    ld_encode_out out = {w->latents, NULL, NULL, NULL, 0};
    const int rc = ld_encode(run->model, run->images, n, run->size, run->size, &eo, &out, err);
    if (rc == LD_OK && out.chunk_used < n) /* the memory cap split it, as it would the daemon's */
        atomic_fetch_add(&run->batches, (n + out.chunk_used - 1) / out.chunk_used - 1);
    return rc;
}

/* One worker: batches of at most vae_split until none are left. */
static void *bare_main(void *arg)
{
    bare_worker *w = arg;
    bare_run *run = w->run;
    char err[LD_ERR_LEN];
    pthread_barrier_wait(w->start);
    int rc = LD_OK, first;
    while (rc == LD_OK && !atomic_load(&run->failed) &&
           (first = atomic_fetch_add(&run->next, run->vae_split)) < run->total) {
        const int left = run->total - first;
        atomic_fetch_add(&run->batches, 1);
        rc = bare_encode(w, left < run->vae_split ? left : run->vae_split, err);
    }
    if (rc != LD_OK) {
        pthread_mutex_lock(&run->lock);
        if (!atomic_exchange(&run->failed, true))
            snprintf(run->err, sizeof run->err, "%s", err);
        pthread_mutex_unlock(&run->lock);
    }
    return NULL;
}

/* vae_split copies of the PNG's pixels, [vae_split, 3, size, size]. */
static float *decoded_images(const uint8_t *png, size_t png_len, int copies, char *err)
{
    ld_image img;
    if (ld_image_decode(png, png_len, NULL, &img, err) != LD_OK)
        return NULL;
    const size_t one = (size_t)3 * img.width * img.height;
    float *images = ld_alloc_aligned((size_t)copies * one, sizeof(float));
    for (int i = 0; images && i < copies; i++)
        memcpy(images + (size_t)i * one, img.rgb, one * sizeof(float));
    if (!images)
        ld_fail(err, LD_ENOMEM, "out of memory for %d decoded images", copies);
    ld_image_free(&img);
    return images;
}

static void bare_workers_free(bare_worker *workers, int n)
{
    for (int i = 0; workers && i < n; i++) {
        ld_pool_free(workers[i].pool);
        free(workers[i].latents);
    }
    free(workers);
}

/* Workers as the daemon makes them: a pool each and a first batch, untimed. */
static int bare_workers_new(bare_run *run, int n, bare_worker **out, char *err)
{
    const size_t latents = (size_t)run->vae_split * 4 * (run->size / 8) * (run->size / 8);
    bare_worker *workers = calloc((size_t)n, sizeof *workers);
    int rc = workers ? LD_OK : ld_fail(err, LD_ENOMEM, "out of memory");
    for (int i = 0; rc == LD_OK && i < n; i++) {
        workers[i].run = run;
        rc = ld_pool_new(run->threads, &workers[i].pool, err);
        if (rc == LD_OK && !(workers[i].latents = malloc(latents * sizeof(float))))
            rc = ld_fail(err, LD_ENOMEM, "out of memory for latents");
        if (rc == LD_OK)
            rc = bare_encode(&workers[i], run->vae_split, err);
    }
    if (rc != LD_OK) {
        bare_workers_free(workers, n);
        return rc;
    }
    atomic_store(&run->batches, 0); /* the warm-up's do not count */
    *out = workers;
    return LD_OK;
}

/* The bare encoder on the same images in the daemon's shape: W workers. */
static int bare_pass(const bench_opts *o, const bench_config *c, const ld_model *model,
                     const float *images, pass_result *r, char *err)
{
    const int side = ((int)ceil(sqrt((double)o->max_image_pixels)) + 7) / 8 * 8;
    bare_run run = {.model = model, .images = images, .size = o->size,
                    .vae_split = c->vae_split, .threads = c->threads, .total = o->images,
                    /* what the daemon gives each worker (latentd.c, fixed_memory) */
                    .max_memory = ld_encode_workspace_bytes(model, 1, side, side, c->threads)};
    pthread_mutex_init(&run.lock, NULL);
    bare_worker *workers = NULL;
    int rc = bare_workers_new(&run, c->workers, &workers, err);
    if (rc != LD_OK) {
        pthread_mutex_destroy(&run.lock);
        return rc;
    }
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)c->workers + 1);
    pthread_t threads[MAX_CLIENTS];
    int started = 0;
    for (; started < c->workers; started++) {
        workers[started].start = &start;
        if (pthread_create(&threads[started], NULL, bare_main, &workers[started]) != 0) {
            fprintf(stderr, "bench-service: could not start a worker thread\n");
            abort(); /* the barrier waits for every worker */
        }
    }
    pthread_barrier_wait(&start);
    const double t0 = now(), cpu0 = cpu_now();
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    r->seconds = now() - t0;
    r->cpu_seconds = cpu_now() - cpu0;
    r->mean_batch = (double)o->images / atomic_load(&run.batches);
    pthread_barrier_destroy(&start);
    bare_workers_free(workers, c->workers);
    if (atomic_load(&run.failed))
        rc = ld_fail(err, LD_EIO, "the bare encoder: %s", run.err);
    pthread_mutex_destroy(&run.lock);
    return rc;
}

/* ================================================================ the whole */

static void print_daemon_pass(int round, const bench_config *c, const bench_opts *o,
                              const pass_result *r)
{
    /* idle: the part of the workers' time not spent in an encode */
    printf("round %d  %dx%d/%d  daemon %7.2f s  %.4f images/s  batch %.2f  idle %4.1f %%  "
           "cpu %.1f s  peak RSS %.0f MiB\n", round, c->workers, c->threads, c->vae_split,
           r->seconds, o->images / r->seconds, r->mean_batch,
           100.0 * (1 - r->encode_seconds / (c->workers * r->seconds)), r->cpu_seconds,
           r->peak_rss_kb / 1024.0);
    fflush(stdout);
}

static void print_bare_pass(int round, const bench_config *c, const bench_opts *o,
                            const pass_result *r)
{
    printf("round %d  %dx%d/%d  bare   %7.2f s  %.4f images/s  batch %.2f              "
           "cpu %.1f s\n", round, c->workers, c->threads, c->vae_split, r->seconds,
           o->images / r->seconds, r->mean_batch, r->cpu_seconds);
    fflush(stdout);
}

/* Rounds of daemon and bare passes, alternating, then the summary. */
static int run_bench(const bench_opts *o, const ld_model *model, const char *request,
                     size_t request_len, const float *images, char *err)
{
    pass_result best_daemon[MAX_CONFIGS], best_bare[MAX_CONFIGS];
    double pair_ratio_log[MAX_CONFIGS] = {0};
    double cpu_daemon[MAX_CONFIGS] = {0}, cpu_bare[MAX_CONFIGS] = {0}; /* over every round */
    long peak_kb[MAX_CONFIGS] = {0};
    for (int k = 0; k < o->n_configs; k++)
        best_daemon[k] = best_bare[k] = (pass_result){.seconds = INFINITY};
    for (int round = 1; round <= o->reps; round++) {
        for (int k = 0; k < o->n_configs; k++) {
            const bench_config *c = &o->configs[k];
            pass_result d = {0}, b = {0};
            int rc = LD_OK;
            for (int step = 0; rc == LD_OK && step < 2; step++) {
                if ((step == 0) == (round % 2 == 1)) { /* daemon first in odd rounds */
                    if ((rc = daemon_pass(o, c, request, request_len, &d, err)) == LD_OK)
                        print_daemon_pass(round, c, o, &d);
                } else if ((rc = bare_pass(o, c, model, images, &b, err)) == LD_OK) {
                    print_bare_pass(round, c, o, &b);
                }
            }
            if (rc != LD_OK)
                return rc;
            if (d.seconds < best_daemon[k].seconds)
                best_daemon[k] = d;
            if (b.seconds < best_bare[k].seconds)
                best_bare[k] = b;
            peak_kb[k] = d.peak_rss_kb > peak_kb[k] ? d.peak_rss_kb : peak_kb[k];
            cpu_daemon[k] += d.cpu_seconds;
            cpu_bare[k] += b.cpu_seconds;
            pair_ratio_log[k] += log(b.seconds / d.seconds);
        }
    }
    printf("\n%d images of %dx%d (%s bodies), %d clients, max_batch_delay_ms %d, "
           "best of %d rounds\n", o->images, o->size, o->size, o->body, o->clients,
           o->batch_delay_ms, o->reps);
    /* ratio: best daemon pass over best bare pass; paired: the geometric mean of
     * each round's ratio; CPU seconds per image over every round, which a
     * machine shared with other work disturbs far less than wall time */
    printf("| workers x threads | vae_split | daemon images/s | bare images/s | ratio | "
           "paired ratio | CPU s/image daemon | CPU s/image bare | daemon peak RSS |\n"
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (int k = 0; k < o->n_configs; k++) {
        const bench_config *c = &o->configs[k];
        const double daemon = o->images / best_daemon[k].seconds;
        const double bare = o->images / best_bare[k].seconds;
        const double posted = (double)o->images * o->reps;
        printf("| %d x %d | %d | %.4f | %.4f | %.3f | %.3f | %.3f | %.3f | %.0f MiB |\n",
               c->workers, c->threads, c->vae_split, daemon, bare, daemon / bare,
               exp(pair_ratio_log[k] / o->reps), cpu_daemon[k] / posted, cpu_bare[k] / posted,
               peak_kb[k] / 1024.0);
    }
    return LD_OK;
}

/* "WxT/S", e.g. "1x2/4". */
static bool parse_config(const char *text, bench_config *c)
{
    char tail;
    return sscanf(text, "%dx%d/%d%c", &c->workers, &c->threads, &c->vae_split, &tail) == 3 &&
           c->workers >= 1 && c->workers <= 64 && c->threads >= 1 && c->threads <= 256 &&
           c->vae_split >= 1 && c->vae_split <= 64;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench-service [--model DIR] [--latentd PATH] [--bench-encode PATH]\n"
            "         [--size N] [--images N] [--clients N] [--config WxT/S]...\n"
            "         [--batch-delay-ms N] [--reps N] [--body raw|json] [--budget BYTES]\n"
            "         [--pass-timeout SECONDS]\n"
            "  --config WxT/S  W workers x T threads, vae_split S (default 1x2/4; repeat to\n"
            "                  compare several in the same rounds)\n");
}

static int parse_options(int argc, char **argv, bench_opts *o)
{
    static const struct option long_opts[] = {
        {"model", required_argument, 0, 'm'},        {"latentd", required_argument, 0, 'L'},
        {"bench-encode", required_argument, 0, 'B'}, {"size", required_argument, 0, 's'},
        {"images", required_argument, 0, 'n'},       {"clients", required_argument, 0, 'c'},
        {"config", required_argument, 0, 'C'},       {"batch-delay-ms", required_argument, 0, 'd'},
        {"reps", required_argument, 0, 'r'},         {"body", required_argument, 0, 'b'},
        {"budget", required_argument, 0, 'M'},       {"pass-timeout", required_argument, 0, 'T'},
        {"help", no_argument, 0, 'h'},               {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "m:s:n:c:C:r:", long_opts, NULL)) != -1) {
        switch (ch) {
        case 'm': o->model_dir = optarg; break;
        case 'L': o->latentd = optarg; break;
        case 'B': o->bench_encode = optarg; break;
        case 's': o->size = atoi(optarg); break;
        case 'n': o->images = atoi(optarg); break;
        case 'c': o->clients = atoi(optarg); break;
        case 'd': o->batch_delay_ms = atoi(optarg); break;
        case 'r': o->reps = atoi(optarg); break;
        case 'b': o->body = optarg; break;
        case 'M': o->budget = optarg; break;
        case 'T': o->pass_timeout = atof(optarg); break;
        case 'C':
            if (o->n_configs == MAX_CONFIGS || !parse_config(optarg, &o->configs[o->n_configs])) {
                fprintf(stderr, "bench-service: --config %s: want WxT/S, at most %d of them\n",
                        optarg, MAX_CONFIGS);
                return 2;
            }
            o->n_configs++;
            break;
        default: usage(); return 2;
        }
    }
    if (optind < argc || o->size < 64 || o->size % 8 || o->images < 1 || o->clients < 1 ||
        o->clients > MAX_CLIENTS || o->reps < 1 || o->batch_delay_ms < 0 ||
        o->pass_timeout <= 0 || (strcmp(o->body, "raw") != 0 && strcmp(o->body, "json") != 0)) {
        usage();
        return 2;
    }
    if (o->n_configs == 0)
        o->configs[o->n_configs++] = (bench_config){1, 2, 4};
    return 0;
}

/* A program beside this one (the build tree's layout: bench/ and the top). */
static void sibling(const char *argv0, const char *relative, char *out, size_t size)
{
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", argv0);
    snprintf(out, size, "%s/%s", dirname(copy), relative);
}

/* bench-encode --save-model DIR: the random full-size SD model, written once. */
static int save_random_model(const char *bench_encode, const char *dir, char *err)
{
    const pid_t pid = fork();
    if (pid < 0)
        return ld_fail(err, LD_EIO, "fork: %s", strerror(errno));
    if (pid == 0) {
        execl(bench_encode, bench_encode, "--save-model", dir, (char *)NULL);
        fprintf(stderr, "bench-service: cannot run %s: %s\n", bench_encode, strerror(errno));
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return ld_fail(err, LD_EIO, "%s --save-model %s failed", bench_encode, dir);
    return LD_OK;
}

static void remove_model(const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    char latentd[4200], bench_encode[4200], model_dir[] = "/tmp/latentd-bench-model-XXXXXX";
    sibling(argv[0], "../latentd", latentd, sizeof latentd);
    sibling(argv[0], "bench-encode", bench_encode, sizeof bench_encode);
    bench_opts o = {.latentd = latentd, .bench_encode = bench_encode, .budget = "8G",
                    .body = "raw", .size = 512, .images = 32, .clients = 16, .reps = 2,
                    .batch_delay_ms = 10, .max_image_pixels = 1024 * 1024,
                    .pass_timeout = 1800};
    const int bad = parse_options(argc, argv, &o);
    if (bad)
        return bad;
    signal(SIGPIPE, SIG_IGN);
    ld_encoder_init();
    char err[LD_ERR_LEN];
    bool own_model = false;
    int rc = LD_OK;
    if (!o.model_dir) {
        own_model = mkdtemp(model_dir) != NULL;
        rc = own_model ? save_random_model(o.bench_encode, model_dir, err)
                       : ld_fail(err, LD_EIO, "cannot make a temporary folder");
        o.model_dir = model_dir;
    }
    ld_model *model = NULL;
    uint8_t *png = NULL;
    size_t png_len = 0, request_len = 0;
    char *request = NULL;
    float *images = NULL;
    int most_split = 1;
    for (int k = 0; k < o.n_configs; k++)
        most_split = o.configs[k].vae_split > most_split ? o.configs[k].vae_split : most_split;
    if (rc == LD_OK)
        rc = ld_model_load(o.model_dir, NULL, &model, err);
    if (rc == LD_OK)
        rc = make_png(o.size, &png, &png_len, err);
    if (rc == LD_OK)
        rc = make_request(&o, png, png_len, &request, &request_len, err);
    if (rc == LD_OK && !(images = decoded_images(png, png_len, most_split, err)))
        rc = LD_ENOMEM;
    if (rc == LD_OK) {
        printf("model %s (%s), latentd %s, PNG of %zu bytes\n", ld_model_name(model),
               o.model_dir, o.latentd, png_len);
        rc = run_bench(&o, model, request, request_len, images, err);
    }
    ld_free_aligned(images);
    free(request);
    free(png);
    ld_model_free(model);
    if (own_model)
        remove_model(model_dir);
    if (rc != LD_OK) {
        fprintf(stderr, "bench-service: %s\n", err);
        return 1;
    }
    return 0;
}
