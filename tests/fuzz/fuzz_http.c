/* Whole HTTP requests, as a client's bytes on a socket, through
 * libmicrohttpd into the daemon's own request handling (src/server/http.c):
 * framing, routing, authorisation, JSON, multipart and raw bodies, query
 * options, admission with ld_image_probe, the queue, the encoder and the
 * answer.
 *
 * Unlike the other targets this one keeps state between inputs: the daemon.
 * The first input starts it in-process as latentd's serve() does (the tiny
 * fixture model, small limits, an API key, 127.0.0.1 on a free port); each
 * input is then one connection: its bytes are sent, the write half is closed
 * once the daemon has gone quiet with no request at the encoder (a client
 * that half-closes is answered, but closing only then keeps each run's
 * timing alike), and the answers are read until the daemon closes.  Checked:
 *   - every answer starts "HTTP/1.1 " and a 3-digit status; a JSON answer of
 *     4xx/5xx is {"error":{"code":"...","message":"..."}};
 *   - the daemon closes every connection within bounded time;
 *   - after each input, the daemon is back at rest: no connection open, no
 *     request in flight, and its memory budget back to what the workers keep
 *     (so a request that leaks a reservation is found);
 *   - every 32 inputs, GET /healthz answers 200.
 * LATENTD_FUZZ_HTTP_LOG=FILE (or "-" for stderr) keeps the daemon's log;
 * LATENTD_TEST_TIME_SCALE stretches the waits (valgrind). */
#include "fuzz.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../../src/server/http.h"
#include "../../src/server/log.h"

LD_FUZZ_TARGET("http");

#define API_KEY "fuzz-key-0123456789" /* the seeds send it as X-API-Key */
#define MAX_ANSWER (4u << 20)          /* answer bytes kept for checking */

static struct {
    srv_config cfg;
    srv_state st;
    ld_model *model;
    double scale;      /* LATENTD_TEST_TIME_SCALE */
    unsigned long inputs;
    bool started;
} fz;

static void fixture_model(char *path, size_t size)
{
    const char *fixtures = getenv("LATENTD_FIXTURES");
    const char *data = getenv("LATENTD_FUZZ_DATA");
    if (fixtures)
        snprintf(path, size, "%s/models/tiny-sd", fixtures);
    else if (data)
        snprintf(path, size, "%s/../fixtures/models/tiny-sd", data);
    else
        snprintf(path, size, "tests/fixtures/models/tiny-sd"); /* scripts/fuzz.sh's cwd */
}

/* What latentd.c's reserve_fixed_memory() keeps for the workers and decoders. */
static size_t fixed_memory(size_t *worker_memory)
{
    const srv_config *cfg = &fz.cfg;
    const int side = ((int)ceil(sqrt((double)cfg->max_image_pixels)) + 7) / 8 * 8;
    int lh, lw;
    char err[LD_ERR_LEN];
    FUZZ_CHECK(ld_model_latent_size(fz.model, side, side, &lh, &lw, err) == LD_OK);
    const size_t channels = (size_t)ld_model_config(fz.model)->latent_channels;
    const size_t pixels = (size_t)cfg->max_image_pixels;
    *worker_memory = ld_encode_workspace_bytes(fz.model, 1, side, side, cfg->threads);
    const size_t batch = (size_t)cfg->vae_split *
                         (3 * pixels + 5 * channels * (size_t)lh * (size_t)lw) * sizeof(float);
    return (size_t)cfg->workers * (*worker_memory + batch) + (size_t)cfg->decode_threads * 8 * pixels;
}

static void stop_daemon(void)
{
    if (!fz.started)
        return;
    fz.started = false;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += 5;
    atomic_store(&fz.st.draining, true);
    srv_queue_drain(fz.st.queue);
    srv_http_stop(&fz.st);
    if (!srv_queue_stop(fz.st.queue, &deadline))
        return; /* a worker may still use the model: leave it to the exit */
    srv_queue_free(fz.st.queue);
    ld_model_free(fz.model);
    srv_models_free(fz.st.models);
    srv_metrics_destroy(&fz.st.metrics);
    srv_log_close();
}

/* serve() in latentd.c, minus the signals and the watchdog. */
static void start_daemon(void)
{
    char err[LD_ERR_LEN];
    const char *scale = getenv("LATENTD_TEST_TIME_SCALE");
    fz.scale = scale && atof(scale) >= 1 ? atof(scale) : 1;
    signal(SIGPIPE, SIG_IGN);
    const char *log = getenv("LATENTD_FUZZ_HTTP_LOG");
    /* at debug level, so that every line the daemon logs is formatted and escaped */
    FUZZ_CHECK(srv_log_open(!log ? "/dev/null" : strcmp(log, "-") ? log : NULL, LOG_DEBUG,
                            err) == LD_OK);
    ld_encoder_init();

    srv_config *cfg = &fz.cfg;
    srv_config_defaults(cfg);
    snprintf(cfg->listen_host, sizeof cfg->listen_host, "127.0.0.1");
    cfg->port = 0;
    char model_path[4096];
    fixture_model(model_path, sizeof model_path);
    snprintf(cfg->api_key, sizeof cfg->api_key, API_KEY);
    cfg->vae_split = 2;
    cfg->workers = 1;
    cfg->threads = 1;
    cfg->http_threads = 1;
    cfg->decode_threads = 1;
    cfg->max_batch_delay_ms = 1;
    cfg->max_queue = 8;
    cfg->max_images_per_request = 4;
    cfg->max_body_bytes = 1u << 20;
    cfg->max_image_pixels = 64 * 64; /* the fixtures fit; an encode stays short under ASan */
    cfg->max_jpeg_scans = 20;
    const int ms = (int)(1000 * fz.scale);
    cfg->request_timeout_ms = 2 * ms;
    cfg->decode_timeout_ms = ms;
    cfg->header_timeout_ms = ms;
    cfg->body_timeout_ms = ms;
    cfg->idle_timeout_ms = ms;
    cfg->shutdown_timeout_ms = 2 * ms;
    cfg->max_connections = 16;
    cfg->max_connections_per_client = 8;
    cfg->max_requests_per_connection = 4;

    int rc = ld_model_load(model_path, NULL, &fz.model, err);
    if (rc != LD_OK) {
        fprintf(stderr, "fuzz_http: %s (set LATENTD_FIXTURES)\n", err);
        abort();
    }
    size_t worker_memory;
    const size_t fixed = fixed_memory(&worker_memory);
    cfg->memory_budget_bytes = fixed + 3 * cfg->max_body_bytes + (16u << 20);
    fz.st.cfg = cfg;
    /* the daemon's registry holds its own copy of the weights: fz.model is for sizing */
    srv_model_set set = {.n = 1};
    FUZZ_CHECK(srv_model_load("tiny-sd", model_path, &set.models[0], err) == LD_OK);
    FUZZ_CHECK(srv_models_new(&set, &fz.st.models, err) == LD_OK);
    srv_metrics_init(&fz.st.metrics);
    srv_budget_init(&fz.st.budget, cfg->memory_budget_bytes);
    FUZZ_CHECK(srv_budget_take(&fz.st.budget, fixed));
    fz.st.budget_fixed = fixed;
    const srv_queue_params qp = {cfg->vae_split,          cfg->workers,   cfg->threads,
                                 cfg->max_batch_delay_ms, cfg->max_queue, cfg->decode_threads,
                                 worker_memory,           cfg->decode_timeout_ms, cfg->kernel};
    rc = srv_queue_new(&qp, &fz.st.metrics, &fz.st.queue, err);
    if (rc == LD_OK)
        rc = srv_http_start(&fz.st, err);
    if (rc != LD_OK) {
        fprintf(stderr, "fuzz_http: %s\n", err);
        abort();
    }
    fz.started = true;
    atexit(stop_daemon);
}

/* ---------------- one connection ---------------- */

typedef struct {
    char *data;
    size_t len, cap;
} buffer;

static void keep(buffer *b, const char *data, size_t n)
{
    if (b->len + n > MAX_ANSWER)
        n = MAX_ANSWER - b->len;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->data = realloc(b->data, cap);
        FUZZ_CHECK(b->data != NULL);
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
}

/* Sends the request, half-closes once the daemon is quiet, and reads what it
 * answers until it closes the connection. */
static void exchange(const uint8_t *data, size_t size, buffer *answer)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fz.st.port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0)
        FUZZ_CHECK(errno == EINPROGRESS);
    const double quiet = 0.001 * fz.scale; /* nothing moved this long: half-close */
    const double limit = 3.0 * fz.cfg.request_timeout_ms / 1000.0; /* the daemon must close */
    const double start = ld_now_seconds();
    double last = start; /* the last time anything moved */
    size_t sent = 0;
    bool half_closed = false;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN | (sent < size ? POLLOUT : 0)};
        const struct timespec tick = {0, 200000};
        const int n = ppoll(&p, 1, &tick, NULL);
        const double t = ld_now_seconds();
        if (t - start > limit) {
            fprintf(stderr, "fuzz_http: the daemon did not close the connection within %.1f s "
                    "(%zu of %zu bytes sent%s)\n", limit, sent, size,
                    half_closed ? ", write half closed" : "");
            FUZZ_CHECK(!"the daemon closes every connection in bounded time");
        }
        if (n > 0 && (p.revents & POLLOUT) && sent < size) {
            const ssize_t w = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
            if (w > 0) {
                sent += (size_t)w;
                last = t;
            } else if (errno != EAGAIN && errno != EINTR) {
                sent = size; /* the daemon closed (an early answer): read what it said */
            }
        }
        if (n > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
            char buf[65536];
            const ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r > 0) {
                keep(answer, buf, (size_t)r);
                last = t;
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                break; /* closed (or reset, after an answer before the body was in) */
            }
        }
        if (!half_closed && sent == size && t - last > quiet &&
            atomic_load(&fz.st.in_flight) == 0) {
            shutdown(fd, SHUT_WR);
            half_closed = true;
        }
    }
    close(fd);
}

/* ---------------- what the answers must be ---------------- */

static const char *find_header(const char *head, size_t len, const char *name, size_t *vlen)
{
    const size_t nlen = strlen(name);
    for (const char *line = memchr(head, '\n', len); line && line < head + len;
         line = memchr(line, '\n', (size_t)(head + len - line))) {
        line++;
        if ((size_t)(head + len - line) > nlen + 1 && !strncasecmp(line, name, nlen) &&
            line[nlen] == ':') {
            const char *v = line + nlen + 1;
            while (*v == ' ')
                v++;
            *vlen = strcspn(v, "\r\n");
            return v;
        }
    }
    return NULL;
}

static void check_error_body(const char *body, size_t len)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (!root)
        fprintf(stderr, "fuzz_http: error answer is not JSON: %.*s\n", (int)len, body);
    FUZZ_CHECK(root != NULL);
    json_t *error = json_object_get(root, "error");
    FUZZ_CHECK(json_is_object(error));
    FUZZ_CHECK(json_is_string(json_object_get(error, "code")) &&
               json_string_length(json_object_get(error, "code")) > 0);
    FUZZ_CHECK(json_is_string(json_object_get(error, "message")));
    json_decref(root);
}

/* Each answer in turn.  Bodies are checked only when no request may have been
 * a HEAD (whose answer announces a length and sends no body). */
static void check_answers(const buffer *a, bool bodies)
{
    if (getenv("LATENTD_FUZZ_HTTP_DUMP")) /* for looking at one input */
        fprintf(stderr, "fuzz_http: answer (%zu bytes):\n%.*s\n", a->len,
                (int)(a->len < 2000 ? a->len : 2000), a->data ? a->data : "");
    size_t at = 0;
    while (at < a->len) {
        const char *s = a->data + at;
        const size_t left = a->len - at;
        if (left < 13) /* "HTTP/1.1 200 " */
            FUZZ_CHECK(a->len == MAX_ANSWER || !"an answer cut short");
        if (left < 13)
            return;
        if (memcmp(s, "HTTP/1.1 ", 9) != 0 || !isdigit((unsigned char)s[9]) ||
            !isdigit((unsigned char)s[10]) || !isdigit((unsigned char)s[11]) || s[12] != ' ')
            fprintf(stderr, "fuzz_http: not an HTTP/1.1 status line: %.40s\n", s);
        FUZZ_CHECK(memcmp(s, "HTTP/1.1 ", 9) == 0);
        FUZZ_CHECK(isdigit((unsigned char)s[9]) && isdigit((unsigned char)s[10]) &&
                   isdigit((unsigned char)s[11]) && s[12] == ' ');
        const int status = atoi(s + 9);
        FUZZ_CHECK(status >= 100 && status <= 599);
        const char *end = memmem(s, left, "\r\n\r\n", 4);
        if (!end) {
            FUZZ_CHECK(a->len == MAX_ANSWER || !"an answer's headers cut short");
            return;
        }
        const size_t head = (size_t)(end - s) + 4;
        at += head;
        if (status < 200)
            continue; /* 100 Continue */
        if (!bodies)
            return;
        size_t vlen;
        const char *length = find_header(s, head, "Content-Length", &vlen);
        FUZZ_CHECK(length != NULL); /* every answer here is a whole buffer */
        const size_t body_len = strtoull(length, NULL, 10);
        if (body_len > a->len - at) {
            FUZZ_CHECK(a->len == MAX_ANSWER || !"an answer's body cut short");
            return;
        }
        /* libmicrohttpd's own answers (a malformed request, headers too long)
         * are HTML without a Content-Type, and not ours to check: 0.9.75 even
         * sends the head of its 400 for a missing Host twice (see
         * regressions/http/mhd-*), so nothing after one can be parsed */
        if (!find_header(s, head, "Content-Type", &vlen))
            return;
        if (status >= 400)
            check_error_body(a->data + at, body_len);
        at += body_len;
    }
}

/* The daemon at rest: no connection, no request, the budget back to the
 * workers' share.  Connections close and jobs let go of their memory a
 * moment after the client saw the close, hence the wait. */
static void check_at_rest(void)
{
    const double until = ld_now_seconds() + 5.0 * fz.scale;
    for (;;) {
        const int conns = srv_conns_count(fz.st.conns), in_flight = atomic_load(&fz.st.in_flight);
        const size_t used = srv_budget_used(&fz.st.budget);
        if (conns == 0 && in_flight == 0 && used == fz.st.budget_fixed &&
            srv_queue_depth(fz.st.queue) == 0)
            return;
        if (ld_now_seconds() > until) {
            fprintf(stderr, "fuzz_http: not at rest: %d connections, %d in flight, %d queued, "
                    "budget %zu used (the workers keep %zu)\n", conns, in_flight,
                    srv_queue_depth(fz.st.queue), used, fz.st.budget_fixed);
            FUZZ_CHECK(!"the daemon returns to rest after each connection");
        }
        usleep(100);
    }
}

static void check_health(void)
{
    static const char get[] = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    buffer answer = {0};
    exchange((const uint8_t *)get, sizeof get - 1, &answer);
    FUZZ_CHECK(answer.len > 13 && !memcmp(answer.data, "HTTP/1.1 200 ", 13));
    FUZZ_CHECK(strstr(answer.data, "{\"status\":\"ok\"}") != NULL);
    free(answer.data);
    check_at_rest();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!fz.started)
        start_daemon();
    if (fz.inputs++ % 32 == 0)
        check_health();
    buffer answer = {0};
    exchange(data, size, &answer);
    check_answers(&answer, !memmem(data, size, "HEAD", 4));
    free(answer.data);
    check_at_rest();
    return 0;
}
