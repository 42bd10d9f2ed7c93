/* The real latentd as its clients meet it: started on a loopback port with a
 * fixture model, driven over HTTP with libcurl or raw sockets. */
#include "daemon.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "latentd/base64.h"

/* A datagram socket the daemon's sd_notify() writes to, as systemd's would. */
static int notify_socket(const char *dir, char *path, size_t size)
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

/* True when the daemon has exited; it is left for the caller to reap. */
static bool daemon_exited(const daemon_t *d)
{
    siginfo_t info = {0};
    return waitid(P_PID, (id_t)d->pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
           info.si_pid == d->pid;
}

/* Waits for a notify message containing state; -1 when the daemon exits or
 * 60 s (scaled) pass without it, so a daemon that dies at start fails the
 * test at once instead of after the whole limit. */
int daemon_wait_notify(daemon_t *d, const char *state)
{
    char msg[4096];
    const double deadline = ld_now_seconds() + 60.0 * test_time_scale();
    while (ld_now_seconds() < deadline) {
        struct pollfd pfd = {.fd = d->notify_fd, .events = POLLIN};
        const int ready = poll(&pfd, 1, 500);
        if (ready < 0 && errno != EINTR)
            return -1;
        if (ready <= 0) {
            if (daemon_exited(d))
                return -1;
            continue;
        }
        ssize_t n = recv(d->notify_fd, msg, sizeof msg - 1, MSG_DONTWAIT);
        if (n < 0)
            continue;
        msg[n] = '\0';
        if (strstr(msg, state))
            return 0;
    }
    return -1;
}

int daemon_log_port(const char *log)
{
    FILE *fp = fopen(log, "r");
    char line[1024];
    int port = 0;
    while (fp && fgets(line, sizeof line, fp)) {
        const char *at = strstr(line, "listening on 127.0.0.1:");
        if (at)
            port = atoi(at + strlen("listening on 127.0.0.1:"));
    }
    if (fp)
        fclose(fp);
    return port;
}

/* The daemon's own time limits, stretched like the tests' when the daemon
 * runs slower than usual (under valgrind): as "--set" "name=ms" pairs placed
 * before a test's own flags, which override them.  Returns the count of argv
 * entries written. */
enum { N_SCALED_LIMITS = 7 };
static int scaled_time_limits(const char **argv, char text[N_SCALED_LIMITS][64])
{
    static const struct { const char *name; double ms; } limits[N_SCALED_LIMITS] = {
        {"request_timeout_ms", 120000}, {"decode_timeout_ms", 5000},
        {"header_timeout_ms", 10000},   {"body_timeout_ms", 60000},
        {"idle_timeout_ms", 30000},     {"stall_timeout_ms", 120000},
        {"shutdown_timeout_ms", 30000},
    }; /* the defaults of src/server/settings.c */
    const double scale = test_time_scale();
    if (scale <= 1.0)
        return 0;
    for (int i = 0; i < N_SCALED_LIMITS; i++) {
        snprintf(text[i], sizeof text[i], "%s=%.0f", limits[i].name, limits[i].ms * scale);
        argv[2 * i] = "--set";
        argv[2 * i + 1] = text[i];
    }
    return 2 * N_SCALED_LIMITS;
}

daemon_t start_daemon(const char *model, const char *const *extra)
{
    daemon_t d = {0};
    char *dir = make_temp_dir();
    snprintf(d.dir, sizeof d.dir, "%s", dir);
    free(dir);
    snprintf(d.log, sizeof d.log, "%s/latentd.log", d.dir);
    char notify_path[4300];
    d.notify_fd = notify_socket(d.dir, notify_path, sizeof notify_path);
    const char *build = getenv("LATENTD_BUILDDIR");
    char bin[4200];
    snprintf(bin, sizeof bin, "%s/latentd", build ? build : ".");
    const char *model_path = model[0] == '/' ? model : fixture("%s", model);
    const char *argv[64] = {bin, "--model", model_path, "--listen", "127.0.0.1:0",
                            "--log-file", d.log, "--threads", "1"};
    int argc = 9;
    char scaled[N_SCALED_LIMITS][64];
    argc += scaled_time_limits(argv + argc, scaled);
    for (int i = 0; extra && extra[i] && argc < 62; i++)
        argv[argc++] = extra[i];
    const pid_t test = getpid();
    d.pid = fork();
    ck_assert_int_ge(d.pid, 0);
    if (d.pid == 0) {
        die_with_parent(test);
        setenv("NOTIFY_SOCKET", notify_path, 1);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    /* READY=1 comes once the model is loaded and the port is open */
    ck_assert_msg(daemon_wait_notify(&d, "READY=1") == 0, "latentd did not start (see %s)", d.log);
    d.port = daemon_log_port(d.log);
    ck_assert_msg(d.port > 0, "latentd did not say its port (see %s)", d.log);
    return d;
}

bool log_contains(const daemon_t *d, const char *text)
{
    FILE *fp = fopen(d->log, "r");
    char line[2048];
    bool found = false;
    while (fp && !found && fgets(line, sizeof line, fp))
        found = strstr(line, text) != NULL;
    if (fp)
        fclose(fp);
    return found;
}

/* SIGTERM and wait; returns the exit status. */
int stop_daemon(daemon_t *d)
{
    kill(d->pid, SIGTERM);
    int status;
    ck_assert_int_eq(waitpid(d->pid, &status, 0), d->pid);
    ck_assert_msg(!WIFSIGNALED(status), "latentd died of signal %d (see %s)", WTERMSIG(status),
                  d->log);
    daemon_cleanup(d);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void daemon_cleanup(daemon_t *d)
{
    close(d->notify_fd);
    if (getenv("LATENTD_TEST_KEEP")) /* to read the daemon's log after a failure */
        return;
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* ---------------- HTTP ---------------- */


static size_t on_data(char *p, size_t size, size_t n, void *ud)
{
    reply *r = ud;
    char *grown = realloc(r->body, r->len + size * n + 1);
    ck_assert_ptr_nonnull(grown);
    r->body = grown;
    memcpy(r->body + r->len, p, size * n);
    r->len += size * n;
    r->body[r->len] = '\0';
    return size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    reply *r = ud;
    strncat(r->headers, p, sizeof r->headers - strlen(r->headers) - 1 < size * n
                               ? sizeof r->headers - strlen(r->headers) - 1
                               : size * n);
    return size * n;
}

/* body NULL: GET; form non-NULL: multipart. */
reply http_try(const daemon_t *d, const char *path, const char *type, const void *body,
                  size_t len, curl_mime *form, const char *header)
{
    reply r = {0};
    CURL *c = curl_easy_init();
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", d->port, path);
    struct curl_slist *hs = NULL;
    char ct[256];
    if (type) {
        snprintf(ct, sizeof ct, "Content-Type: %s", type);
        hs = curl_slist_append(hs, ct);
    }
    if (header)
        hs = curl_slist_append(hs, header);
    hs = curl_slist_append(hs, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hs);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)(120 * test_time_scale()));
    if (form) {
        curl_easy_setopt(c, CURLOPT_MIMEPOST, form);
    } else if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    else
        snprintf(r.headers, sizeof r.headers, "%s", curl_easy_strerror(rc));
    curl_slist_free_all(hs);
    curl_easy_cleanup(c);
    return r;
}

reply http(const daemon_t *d, const char *path, const char *type, const void *body, size_t len,
           curl_mime *form, const char *header)
{
    reply r = http_try(d, path, type, body, len, form, header);
    ck_assert_msg(r.status != 0, "%s: %s", path, r.headers);
    return r;
}

char *image_b64(const char *name)
{
    size_t len;
    uint8_t *png = read_all(fixture("images/%s.png", name), &len);
    char *b64 = ld_base64_encode(png, len, NULL);
    free(png);
    return b64;
}

/* {"images": [b64...], <extra>} */
char *json_request(const char *const *names, int n, const char *extra)
{
    size_t cap = 1 << 20, used = 0;
    char *buf = malloc(cap);
    used += (size_t)snprintf(buf, cap, "{\"images\": [");
    for (int i = 0; i < n; i++) {
        char *b64 = image_b64(names[i]);
        while (used + strlen(b64) + 64 > cap)
            buf = realloc(buf, cap *= 2);
        used += (size_t)snprintf(buf + used, cap - used, "%s\"%s\"", i ? "," : "", b64);
        free(b64);
    }
    snprintf(buf + used, cap - used, "]%s%s}", extra ? ", " : "", extra ? extra : "");
    return buf;
}

reply post_json(const daemon_t *d, const char *path, const char *const *names, int n,
                       const char *extra)
{
    char *body = json_request(names, n, extra);
    reply r = http(d, path, "application/json", body, strlen(body), NULL, NULL);
    free(body);
    return r;
}

/* ---------------- checking answers ---------------- */

float *tensor_from_json(json_t *t, size_t *count)
{
    ck_assert_str_eq(json_string_value(json_object_get(t, "dtype")), "float32");
    const char *data = json_string_value(json_object_get(t, "data"));
    ck_assert_ptr_nonnull(data);
    uint8_t *bytes;
    size_t n;
    char err[LD_ERR_LEN];
    ck_assert_int_eq(ld_base64_decode(data, strlen(data), &bytes, &n, err), LD_OK);
    *count = n / sizeof(float);
    return (float *)bytes;
}

/* values[index·per .. ] against the expected file's tensor */
void assert_slice(const float *values, size_t total, int batch, int index,
                         const char *model, const char *image, const char *name)
{
    size_t n;
    float *want = read_tensor(fixture("expected/%s/%s.safetensors", model, image), name, &n, NULL);
    ck_assert_uint_eq(total, n * (size_t)batch);
    double e = rel_error(values + n * (size_t)index, want, n);
    ck_assert_msg(e <= 1e-4, "%s %s[%d] off by %g", image, name, index, e);
    free(want);
}

json_t *parse(const reply *r)
{
    json_error_t jerr;
    json_t *root = json_loadb(r->body, r->len, 0, &jerr);
    ck_assert_msg(root != NULL, "not JSON: %.200s", r->body);
    return root;
}

void assert_error(const reply *r, long status, const char *code)
{
    ck_assert_msg(r->status == status, "want %ld got %ld: %.300s", status, r->status, r->body);
    json_t *root = parse(r);
    json_t *e = json_object_get(root, "error");
    ck_assert_ptr_nonnull(e);
    ck_assert_str_eq(json_string_value(json_object_get(e, "code")), code);
    ck_assert(json_string_length(json_object_get(e, "message")) > 0);
    json_decref(root);
}


/* ---------------- raw sockets ---------------- */

int raw_connect(const daemon_t *d)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)d->port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    const struct timeval limit = {(time_t)(30 * test_time_scale()), 0}; /* no test waits for ever */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

void raw_send(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        ck_assert_msg(n > 0, "send failed");
        p += n;
        len -= (size_t)n;
    }
}

char *raw_read_all(int fd, size_t *len)
{
    size_t cap = 4096, used = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (used + 1024 > cap)
            buf = realloc(buf, cap *= 2);
        ssize_t n = recv(fd, buf + used, cap - used - 1, 0);
        if (n <= 0)
            break;
        used += (size_t)n;
    }
    buf[used] = '\0';
    if (len)
        *len = used;
    return buf;
}

long raw_status(const char *response)
{
    return strncmp(response, "HTTP/1.", 7) == 0 ? strtol(response + 9, NULL, 10) : -1;
}

char *raw_exchange(const daemon_t *d, const void *request, size_t len)
{
    int fd = raw_connect(d);
    raw_send(fd, request, len);
    shutdown(fd, SHUT_WR);
    char *response = raw_read_all(fd, NULL);
    close(fd);
    return response;
}

/* ---------------- the daemon's own numbers ---------------- */

double metric_value(const daemon_t *d, const char *series)
{
    reply r = http_try(d, "/metrics", NULL, NULL, 0, NULL, NULL);
    double value = -1;
    if (r.status != 200) { /* refused, say at a connection limit: not known now */
        free(r.body);
        return value;
    }
    size_t len = strlen(series);
    for (const char *line = r.body; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (!strncmp(line, series, len) && line[len] == ' ')
            value = strtod(line + len + 1, NULL);
    free(r.body);
    return value;
}

bool wait_for_metric(const daemon_t *d, const char *series, double at_least, double seconds)
{
    return wait_for_metric_range(d, series, at_least, 1e300, seconds);
}

bool wait_for_metric_range(const daemon_t *d, const char *series, double low, double high,
                           double seconds)
{
    const double deadline = ld_now_seconds() + seconds * test_time_scale();
    do {
        const double v = metric_value(d, series);
        if (v >= low && v <= high)
            return true;
        /* each /metrics request is itself a round trip through the daemon; a
         * short pause keeps this loop from hogging a core it shares */
        const struct timespec pause = {0, 5 * 1000 * 1000};
        nanosleep(&pause, NULL);
    } while (ld_now_seconds() < deadline);
    return false;
}

long process_status_kb(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *fp = fopen(path, "r");
    long value = -1;
    while (fp && fgets(line, sizeof line, fp))
        if (!strncmp(line, field, strlen(field)) && line[strlen(field)] == ':')
            value = strtol(line + strlen(field) + 1, NULL, 10);
    if (fp)
        fclose(fp);
    return value;
}
