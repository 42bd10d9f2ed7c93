/* latentd as systemd sees it, without a systemd PID 1: the test plays the
 * NOTIFY_SOCKET (a datagram socket it reads) and sets WATCHDOG_USEC as the
 * service manager would, and systemd-socket-activate (Debian's systemd
 * package) passes a listening socket as latentd.socket would.
 *
 * - READY=1 only once the model is loaded and the socket listens (a request
 *   made on READY is answered at once); never when start-up fails;
 * - STATUS= lines name the model and follow the queue;
 * - SIGHUP: RELOADING=1, then READY=1; log changes apply, others are named;
 * - WATCHDOG=1 every half WATCHDOG_USEC, idle or working, none while a
 *   worker is stalled; none when WATCHDOG_PID names another process;
 * - STOPPING=1 on SIGTERM;
 * - a notify socket nobody reads never stops the daemon (SIGTERM still works);
 * - socket activation: the passed socket is served; two are refused;
 * - MemoryDenyWriteExecute=: the daemon runs under prctl(PR_SET_MDWE). */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <png.h>

#include "daemon.h"

#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#endif
#ifndef PR_MDWE_REFUSE_EXEC_GAIN
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif

/* ---------------- the service manager's side ---------------- */

typedef struct {
    const char *const *flags;   /* latentd flags after the test's own, NULL-terminated */
    const char *watchdog_usec;  /* WATCHDOG_USEC, or NULL */
    const char *watchdog_pid;   /* WATCHDOG_PID, or NULL */
    bool mdwe;                  /* prctl(PR_SET_MDWE) before exec */
    const char *const *wrapper; /* a program that execs latentd (systemd-socket-activate ...) */
    int stderr_fd;              /* the child's stderr, or -1 to leave it */
} spawn_opts;

static int bind_notify_socket(const char *dir, char *path, size_t size)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(path, size, "%s/notify", dir);
    ck_assert_uint_lt(strlen(path), sizeof addr.sun_path);
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    return fd;
}

/* Start latentd (perhaps through a wrapper) and return at once: the caller
 * reads the notify socket.  The daemon_t serves daemon.c's helpers once its
 * port is known. */
static daemon_t spawn(const char *model, const spawn_opts *o)
{
    daemon_t d = {0};
    char *dir = make_temp_dir();
    snprintf(d.dir, sizeof d.dir, "%s", dir);
    free(dir);
    snprintf(d.log, sizeof d.log, "%s/latentd.log", d.dir);
    char notify_path[4300], notify_env[4400];
    d.notify_fd = bind_notify_socket(d.dir, notify_path, sizeof notify_path);
    snprintf(notify_env, sizeof notify_env, "NOTIFY_SOCKET=%s", notify_path);
    const char *build = getenv("LATENTD_BUILDDIR");
    char bin[4200];
    snprintf(bin, sizeof bin, "%s/latentd", build ? build : ".");
    const char *argv[64];
    int argc = 0;
    for (int i = 0; o->wrapper && o->wrapper[i]; i++)
        argv[argc++] = o->wrapper[i];
    if (o->wrapper) { /* systemd-socket-activate passes only the variables it is told */
        argv[argc++] = "-E";
        argv[argc++] = notify_env;
    }
    const char *const own[] = {bin, "--listen", "127.0.0.1:0", "--log-file", d.log,
                               "--threads", "1", NULL};
    for (int i = 0; own[i]; i++)
        argv[argc++] = own[i];
    if (model) {
        argv[argc++] = "--model";
        argv[argc++] = model[0] == '/' ? model : fixture("%s", model);
    }
    for (int i = 0; o->flags && o->flags[i] && argc < 62; i++)
        argv[argc++] = o->flags[i];
    argv[argc] = NULL;
    const pid_t test = getpid();
    d.pid = fork();
    ck_assert_int_ge(d.pid, 0);
    if (d.pid == 0) {
        die_with_parent(test);
        setenv("NOTIFY_SOCKET", notify_path, 1);
        unsetenv("WATCHDOG_USEC");
        unsetenv("WATCHDOG_PID");
        if (o->watchdog_usec)
            setenv("WATCHDOG_USEC", o->watchdog_usec, 1);
        if (o->watchdog_pid)
            setenv("WATCHDOG_PID", o->watchdog_pid, 1);
        if (o->stderr_fd >= 0)
            dup2(o->stderr_fd, 2);
        if (o->mdwe && prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0)
            _exit(126);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    return d;
}

/* The next notify message within `seconds`, into msg; false on timeout. */
static bool next_message(daemon_t *d, double seconds, char *msg, size_t size)
{
    struct pollfd p = {.fd = d->notify_fd, .events = POLLIN};
    if (poll(&p, 1, (int)(seconds * 1000 * test_time_scale())) <= 0)
        return false;
    const ssize_t n = recv(d->notify_fd, msg, size - 1, 0);
    if (n < 0)
        return false;
    msg[n] = '\0';
    return true;
}

/* Messages until one holds `state`, within `seconds`; false when none did.
 * The messages on the way are appended to seen (if given). */
static bool wait_message(daemon_t *d, const char *state, double seconds, char *seen,
                         size_t seen_size)
{
    const double end = ld_now_seconds() + seconds * test_time_scale();
    char msg[4096];
    while (ld_now_seconds() < end) {
        if (!next_message(d, end - ld_now_seconds(), msg, sizeof msg))
            return false;
        if (seen)
            snprintf(seen + strlen(seen), seen_size - strlen(seen), "%s|", msg);
        if (strstr(msg, state))
            return true;
    }
    return false;
}

/* Whatever is waiting on the notify socket, dropped. */
static void drain_messages(daemon_t *d)
{
    char msg[4096];
    while (recv(d->notify_fd, msg, sizeof msg, MSG_DONTWAIT) > 0)
        continue;
}

/* Up to READY=1 (the messages before it in seen), then the port. */
static void await_ready(daemon_t *d, char *seen, size_t size)
{
    ck_assert_msg(wait_message(d, "READY=1", 60, seen, size), "no READY=1 (see %s)", d->log);
    d->port = daemon_log_port(d->log);
    ck_assert_msg(d->port > 0, "no port in %s", d->log);
}

/* SIGTERM: STOPPING=1 must come, then the exit; returns the exit status. */
static int terminate(daemon_t *d)
{
    ck_assert_int_eq(kill(d->pid, SIGTERM), 0);
    ck_assert_msg(wait_message(d, "STOPPING=1", 30, NULL, 0), "no STOPPING=1 (see %s)", d->log);
    int status;
    ck_assert_int_eq(waitpid(d->pid, &status, 0), d->pid);
    ck_assert_msg(WIFEXITED(status), "latentd died of signal %d", WTERMSIG(status));
    return WEXITSTATUS(status);
}

static void check_encode(const daemon_t *d)
{
    const char *names[] = {"astronaut_64"};
    reply r = post_json(d, "/v1/encode", names, 1, NULL);
    ck_assert_msg(r.status == 200, "encode: %ld %.300s", r.status, r.body);
    json_t *root = parse(&r);
    size_t n;
    float *v = tensor_from_json(json_object_get(root, "latents"), &n);
    assert_slice(v, n, 1, 0, "tiny-sd", "astronaut_64", "latents");
    free(v);
    json_decref(root);
    free(r.body);
}

/* ---------------- READY, STATUS, STOPPING ---------------- */

START_TEST(ready_comes_once_loaded_and_listening)
{
    const spawn_opts o = {.stderr_fd = -1};
    daemon_t d = spawn("models/tiny-sd", &o);
    char seen[8192] = "";
    await_ready(&d, seen, sizeof seen);
    /* it said it was loading before it was ready */
    ck_assert_msg(strstr(seen, "STATUS=loading the model"), "messages: %s", seen);
    /* by READY the model is loaded and the socket accepts: the first request,
     * made without a retry, is answered */
    ck_assert(log_contains(&d, "loaded in"));
    reply r = http(&d, "/healthz", NULL, NULL, 0, NULL, NULL);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    check_encode(&d);
    ck_assert_int_eq(terminate(&d), 0);
    daemon_cleanup(&d);
}
END_TEST

START_TEST(a_failed_start_never_says_ready)
{
    const spawn_opts o = {.stderr_fd = -1};
    daemon_t d = spawn("models/no-such-model", &o);
    int status;
    ck_assert_int_eq(waitpid(d.pid, &status, 0), d.pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) != 0);
    char msg[4096], all[8192] = "";
    for (;;) { /* every message it sent, now that it is gone */
        const ssize_t n = recv(d.notify_fd, msg, sizeof msg - 1, MSG_DONTWAIT);
        if (n <= 0)
            break;
        msg[n] = '\0';
        snprintf(all + strlen(all), sizeof all - strlen(all), "%s|", msg);
    }
    ck_assert_msg(!strstr(all, "READY=1"), "READY after a failed start: %s", all);
    ck_assert_msg(strstr(all, "STATUS=failed: "), "no failed status: %s", all);
    daemon_cleanup(&d);
}
END_TEST

/* A request of two images that wait in the queue for a batch of four. */
static int post_two_images(const daemon_t *d)
{
    const char *names[] = {"astronaut_64", "chelsea_64"};
    char *body = json_request(names, 2, NULL);
    char head[256];
    const int hl = snprintf(head, sizeof head, "POST /v1/encode HTTP/1.1\r\nHost: x\r\n"
                            "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                            strlen(body));
    int fd = raw_connect(d);
    raw_send(fd, head, (size_t)hl);
    raw_send(fd, body, strlen(body));
    free(body);
    return fd;
}

START_TEST(status_names_the_model_and_follows_the_queue)
{
    static const char *const flags[] = {"--max-batch-delay-ms", "60000", "--vae-split", "4",
                                        "--max-queue", "8", NULL};
    const spawn_opts o = {.flags = flags, .stderr_fd = -1};
    daemon_t d = spawn("models/tiny-sd", &o);
    char seen[8192] = "";
    await_ready(&d, NULL, 0);
    ck_assert_msg(wait_message(&d, "STATUS=model tiny-sd; queue 0/8; 0 requests in flight",
                               10, seen, sizeof seen), "messages: %s", seen);
    int fd = post_two_images(&d);
    seen[0] = '\0';
    ck_assert_msg(wait_message(&d, "queue 2/8; 1 requests in flight", 10, seen, sizeof seen),
                  "the status did not follow the queue: %s", seen);
    /* the drain stops batches from waiting: the request is answered */
    ck_assert_int_eq(terminate(&d), 0);
    char *answer = raw_read_all(fd, NULL);
    ck_assert_msg(raw_status(answer) == 200, "%.200s", answer);
    free(answer);
    close(fd);
    daemon_cleanup(&d);
}
END_TEST

/* ---------------- SIGHUP ---------------- */

static void write_config(const daemon_t *d, const char *path, const char *extra)
{
    FILE *fp = fopen(path, "w");
    ck_assert_ptr_nonnull(fp);
    fprintf(fp, "model = %s\nmax_queue = 16\nlog_level = info\n%s", fixture("models/tiny-sd"),
            extra);
    fclose(fp);
    (void)d;
}

START_TEST(sighup_says_reloading_then_ready)
{
    char conf[4300];
    char *dir = make_temp_dir();
    snprintf(conf, sizeof conf, "%s/latentd.conf", dir);
    const char *const flags[] = {"-c", conf, NULL};
    const spawn_opts o = {.flags = flags, .stderr_fd = -1};
    write_config(NULL, conf, "");
    daemon_t d = spawn(NULL, &o);
    await_ready(&d, NULL, 0);

    /* a changed level applies now; a changed queue waits for a restart */
    write_config(&d, conf, "log_level = debug\nmax_queue = 32\n");
    drain_messages(&d);
    ck_assert_int_eq(kill(d.pid, SIGHUP), 0);
    char msg[4096];
    do
        ck_assert_msg(next_message(&d, 10, msg, sizeof msg), "no RELOADING=1");
    while (strstr(msg, "WATCHDOG=1") || !strncmp(msg, "STATUS=model", 12));
    ck_assert_msg(strstr(msg, "RELOADING=1") && strstr(msg, "MONOTONIC_USEC="), "got %s", msg);
    ck_assert_msg(next_message(&d, 10, msg, sizeof msg), "no READY=1 after RELOADING=1");
    ck_assert_msg(strstr(msg, "READY=1"), "after RELOADING=1: %s", msg);
    ck_assert(log_contains(&d, "reload: changed settings that take a restart: max_queue"));
    ck_assert(log_contains(&d, "reloaded the config: log_file/log_level applied"));
    reply r = http(&d, "/healthz", NULL, NULL, 0, NULL, NULL);
    ck_assert_int_eq(r.status, 200);
    free(r.body);

    /* a config that does not parse changes nothing, and the daemon stays ready */
    write_config(&d, conf, "this is not a setting\n");
    ck_assert_int_eq(kill(d.pid, SIGHUP), 0);
    ck_assert(wait_message(&d, "RELOADING=1", 10, NULL, 0));
    ck_assert(wait_message(&d, "READY=1", 10, NULL, 0));
    ck_assert(log_contains(&d, "reload: the config was not applied"));
    check_encode(&d);
    ck_assert_int_eq(terminate(&d), 0);
    daemon_cleanup(&d);
    remove_temp_dir(dir);
}
END_TEST

/* ---------------- the watchdog ---------------- */

typedef struct {
    const daemon_t *d;
    int requests;
    int ok;
} load_args;

static void *encode_some(void *arg)
{
    load_args *a = arg;
    const char *names[] = {"astronaut_256"};
    for (int i = 0; i < a->requests; i++) {
        reply r = post_json(a->d, "/v1/encode", names, 1, NULL);
        a->ok += r.status == 200;
        free(r.body);
    }
    return NULL;
}

/* `count` WATCHDOG=1 in a row, each within `gap` seconds of the last. */
static void expect_pings(daemon_t *d, int count, double gap)
{
    char msg[4096];
    double last = ld_now_seconds();
    for (int got = 0; got < count;) {
        ck_assert_msg(next_message(d, gap, msg, sizeof msg), "no WATCHDOG=1 within %.2f s "
                      "(ping %d)", gap, got);
        if (!strstr(msg, "WATCHDOG=1"))
            continue;
        const double t = ld_now_seconds();
        ck_assert_msg(t - last <= gap * test_time_scale(), "pings %.3f s apart", t - last);
        last = t;
        got++;
    }
}

START_TEST(watchdog_pings_at_half_the_interval_idle_and_working)
{
    /* 400 ms: systemd would want a ping every 400 ms and latentd sends one
     * every 200 ms */
    const spawn_opts o = {.watchdog_usec = "400000", .stderr_fd = -1};
    daemon_t d = spawn("models/tiny-sd", &o);
    await_ready(&d, NULL, 0);
    ck_assert(log_contains(&d, "systemd watchdog: 0.400 s"));
    expect_pings(&d, 5, 0.4);
    load_args a = {&d, test_quick() ? 2 : 8, 0};
    pthread_t t;
    pthread_create(&t, NULL, encode_some, &a);
    expect_pings(&d, 5, 0.4);
    pthread_join(t, NULL);
    ck_assert_int_eq(a.ok, a.requests);
    ck_assert_int_eq(terminate(&d), 0);
    daemon_cleanup(&d);
}
END_TEST

START_TEST(watchdog_meant_for_another_process_is_left_alone)
{
    /* WATCHDOG_PID names our parent's watchdog (pid 1 here): not ours to feed */
    const spawn_opts o = {.watchdog_usec = "200000", .watchdog_pid = "1", .stderr_fd = -1};
    daemon_t d = spawn("models/tiny-sd", &o);
    char seen[8192] = "";
    await_ready(&d, seen, sizeof seen);
    /* ask for something that answers through the main loop's tick: a SIGHUP's
     * READY comes after at least one tick's chance to ping */
    ck_assert_int_eq(kill(d.pid, SIGHUP), 0);
    ck_assert(wait_message(&d, "RELOADING=1", 10, seen, sizeof seen));
    ck_assert(wait_message(&d, "READY=1", 10, seen, sizeof seen));
    ck_assert_msg(!strstr(seen, "WATCHDOG=1"), "pinged: %s", seen);
    ck_assert(!log_contains(&d, "systemd watchdog"));
    ck_assert_int_eq(terminate(&d), 0);
    daemon_cleanup(&d);
}
END_TEST

/* The exit status of pid within `seconds`, or -1 when it is still running. */
static int wait_exit(pid_t pid, double seconds)
{
    const double end = ld_now_seconds() + seconds * test_time_scale();
    int status;
    while (ld_now_seconds() < end) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        const struct timespec pause = {0, 10 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    return -1;
}

START_TEST(a_notify_socket_nobody_reads_never_blocks_the_daemon)
{
    /* a ping every 10 ms fills the socket's queue (net.unix.max_dgram_qlen,
     * 10 by default) in a tenth of a second; nobody reads it.  latentd used
     * to block in the send, and so never took the SIGTERM. */
    const spawn_opts o = {.watchdog_usec = "20000", .stderr_fd = -1};
    daemon_t d = spawn("models/tiny-sd", &o);
    await_ready(&d, NULL, 0);
    const struct timespec fill = {0, 500 * 1000 * 1000}; /* 50 pings' time: the queue is full */
    nanosleep(&fill, NULL);
    check_encode(&d); /* the HTTP side never depended on it */
    ck_assert_int_eq(kill(d.pid, SIGHUP), 0);
    ck_assert_int_eq(kill(d.pid, SIGTERM), 0);
    /* RELOADING, READY and STOPPING each wait a second at most for room */
    const int status = wait_exit(d.pid, 10);
    ck_assert_msg(status == 0, "latentd %s", status < 0 ? "did not stop" : "failed");
    ck_assert(log_contains(&d, "stopped"));
    daemon_cleanup(&d);
}
END_TEST

/* A w×h RGB PNG of one colour. */
static void *flat_png(int w, int h, size_t *len)
{
    png_image img = {.version = PNG_IMAGE_VERSION, .width = (png_uint_32)w,
                     .height = (png_uint_32)h, .format = PNG_FORMAT_RGB};
    uint8_t *pixels = calloc((size_t)w * h, 3);
    png_alloc_size_t size = 0;
    ck_assert(png_image_write_to_memory(&img, NULL, &size, 0, pixels, 0, NULL));
    void *buf = malloc(size);
    ck_assert(png_image_write_to_memory(&img, buf, &size, 0, pixels, 0, NULL));
    free(pixels);
    *len = size;
    return buf;
}

START_TEST(a_stalled_worker_stops_the_watchdog_pings)
{
    if (test_quick())
        return; /* one long layer is the point: too slow under valgrind */
    /* as test_hardening's stuck worker: each 3x3 convolution of a 1024-channel
     * model on a 320x320 image is one layer of seconds on one thread, past
     * stall_timeout_ms */
    static const char *const flags[] = {"--set", "stall_timeout_ms=1000", "--set",
                                        "shutdown_timeout_ms=2000", "--set",
                                        "memory_budget_bytes=8G", NULL};
    const spawn_opts o = {.flags = flags, .watchdog_usec = "400000", .stderr_fd = -1};
    char *model = make_temp_dir();
    write_wide_model(model, 1024);
    daemon_t d = spawn(model, &o);
    await_ready(&d, NULL, 0);
    expect_pings(&d, 2, 0.4);
    size_t len;
    void *png = flat_png(320, 320, &len);
    char head[256];
    const int hl = snprintf(head, sizeof head, "POST /v1/encode HTTP/1.1\r\nHost: x\r\n"
                            "Content-Type: image/png\r\nContent-Length: %zu\r\n\r\n", len);
    int fd = raw_connect(&d);
    raw_send(fd, head, (size_t)hl);
    raw_send(fd, png, len);
    /* the STATUS line says when the stall detector counts the worker; from
     * then on no ping, until it counts none again.  A layer may end just as
     * the stall is counted: wait for a stall that lasts. */
    const double end = ld_now_seconds() + 120 * test_time_scale();
    double silent = 0; /* the longest stall seen, in seconds */
    char seen[16384] = "";
    while (silent < 1.2 && ld_now_seconds() < end) {
        seen[0] = '\0';
        ck_assert_msg(wait_message(&d, ", 1 stalled", end - ld_now_seconds(), seen, sizeof seen),
                      "no stall reported: %.2000s", seen);
        const double t0 = ld_now_seconds();
        char msg[4096];
        while (ld_now_seconds() - t0 < 1.2 && next_message(&d, 1.2, msg, sizeof msg)) {
            if (strstr(msg, ", 0 stalled"))
                break; /* the layer ended: pings may come again */
            ck_assert_msg(!strstr(msg, "WATCHDOG=1"), "pinged %.3f s into a stall",
                          ld_now_seconds() - t0);
        }
        silent = ld_now_seconds() - t0;
    }
    /* three times systemd's interval without a ping: it would have restarted us */
    ck_assert_msg(silent >= 1.2, "no stall lasted 1.2 s (%.2f s)", silent);
    kill(d.pid, SIGTERM);
    int status;
    ck_assert_int_eq(waitpid(d.pid, &status, 0), d.pid);
    ck_assert(WIFEXITED(status));
    close(fd);
    free(png);
    remove_temp_dir(model);
    daemon_cleanup(&d);
}
END_TEST

/* ---------------- socket activation ---------------- */

static const char *socket_activate_path(void)
{
    static const char *const paths[] = {"/usr/bin/systemd-socket-activate",
                                        "/bin/systemd-socket-activate",
                                        "/usr/local/bin/systemd-socket-activate"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        if (access(paths[i], X_OK) == 0)
            return paths[i];
    return NULL;
}

/* A port nobody listens on now (the kernel's pick, released). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
    close(fd);
    return ntohs(addr.sin_port);
}

/* systemd-socket-activate listening on the given addresses, then latentd;
 * returns once it listens (its "Listening on" lines, read from its stderr,
 * which stays open in *err until the caller closes it: the tool writes more
 * before it execs latentd). */
static daemon_t activate(const char *const *listen, int n, FILE **err)
{
    const char *tool = socket_activate_path();
    const char *wrapper[8] = {tool};
    int w = 1;
    for (int i = 0; i < n; i++) {
        wrapper[w++] = "-l";
        wrapper[w++] = listen[i];
    }
    wrapper[w] = NULL;
    int pipefd[2];
    ck_assert_int_eq(pipe2(pipefd, O_CLOEXEC), 0);
    const spawn_opts o = {.wrapper = wrapper, .stderr_fd = pipefd[1]};
    daemon_t d = spawn("models/tiny-sd", &o);
    close(pipefd[1]);
    *err = fdopen(pipefd[0], "r");
    char line[1024];
    int listening = 0;
    while (listening < n && fgets(line, sizeof line, *err))
        listening += strstr(line, "Listening on") != NULL;
    ck_assert_int_eq(listening, n);
    return d;
}

START_TEST(socket_activation_serves_the_passed_socket)
{
    if (!socket_activate_path()) {
        fprintf(stderr, "no systemd-socket-activate (Debian: systemd): skipped\n");
        return;
    }
    const int port = free_port();
    char where[64];
    snprintf(where, sizeof where, "127.0.0.1:%d", port);
    const char *const listen[] = {where};
    FILE *err;
    daemon_t d = activate(listen, 1, &err);
    /* the first connection starts latentd (the tool execs it, same pid); the
     * request waits in the backlog while the model loads */
    d.port = port;
    reply r = http(&d, "/v1/model", NULL, NULL, 0, NULL, NULL);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    ck_assert(wait_message(&d, "READY=1", 30, NULL, 0));
    char said[128];
    snprintf(said, sizeof said, "listening on %s, a socket passed by systemd", where);
    ck_assert_msg(log_contains(&d, said), "see %s", d.log);
    check_encode(&d);
    ck_assert_int_eq(terminate(&d), 0);
    fclose(err);
    daemon_cleanup(&d);
}
END_TEST

START_TEST(socket_activation_with_two_sockets_is_refused)
{
    if (!socket_activate_path())
        return;
    char a[64], b[64];
    snprintf(a, sizeof a, "127.0.0.1:%d", free_port());
    snprintf(b, sizeof b, "127.0.0.1:%d", free_port());
    const char *const listen[] = {a, b};
    FILE *err;
    daemon_t d = activate(listen, 2, &err);
    d.port = atoi(strchr(a, ':') + 1);
    reply r = http_try(&d, "/healthz", NULL, NULL, 0, NULL, NULL); /* starts it; no answer */
    ck_assert_int_eq(r.status, 0);
    free(r.body);
    int status;
    ck_assert_int_eq(waitpid(d.pid, &status, 0), d.pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1);
    ck_assert(log_contains(&d, "systemd passed 2 sockets; latentd listens on one"));
    fclose(err);
    daemon_cleanup(&d);
}
END_TEST

/* ---------------- MemoryDenyWriteExecute= ---------------- */

static bool mdwe_supported(void)
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0 ? 0 : 1);
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

START_TEST(runs_with_memory_deny_write_execute)
{
    /* under valgrind (the quick mode) the forked child, still valgrind's
     * until it execs, would need W+X memory for its translations */
    if (test_quick())
        return;
    if (!mdwe_supported()) { /* Linux before 6.3 */
        fprintf(stderr, "no PR_SET_MDWE in this kernel: skipped\n");
        return;
    }
    /* what MemoryDenyWriteExecute=yes enforces (systemd uses seccomp for it;
     * the kernel's own switch refuses the same: no W+X mapping, no mprotect
     * that adds PROT_EXEC) — OpenBLAS and the rest must not need it */
    const spawn_opts o = {.mdwe = true, .stderr_fd = -1};
    daemon_t d = spawn("models/tiny-sd", &o);
    await_ready(&d, NULL, 0);
    check_encode(&d);
    const char *names[] = {"astronaut_256", "rocket_128", "astronaut_64"};
    reply r = post_json(&d, "/v1/encode", names, 3, NULL);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    ck_assert_int_eq(terminate(&d), 0);
    daemon_cleanup(&d);
}
END_TEST

static Suite *systemd_suite(void)
{
    Suite *s = suite_create("systemd");
    TCase *tc = tcase_create("notify");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, ready_comes_once_loaded_and_listening);
    tcase_add_test(tc, a_failed_start_never_says_ready);
    tcase_add_test(tc, status_names_the_model_and_follows_the_queue);
    tcase_add_test(tc, sighup_says_reloading_then_ready);
    tcase_add_test(tc, watchdog_pings_at_half_the_interval_idle_and_working);
    tcase_add_test(tc, watchdog_meant_for_another_process_is_left_alone);
    tcase_add_test(tc, a_stalled_worker_stops_the_watchdog_pings);
    tcase_add_test(tc, a_notify_socket_nobody_reads_never_blocks_the_daemon);
    tcase_add_test(tc, socket_activation_serves_the_passed_socket);
    tcase_add_test(tc, socket_activation_with_two_sockets_is_refused);
    tcase_add_test(tc, runs_with_memory_deny_write_execute);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int status = run_suite(systemd_suite());
    curl_global_cleanup();
    return status;
}
