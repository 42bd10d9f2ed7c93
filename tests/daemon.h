/* The real latentd as its clients meet it: started on a loopback port with a
 * fixture model, driven over HTTP with libcurl or raw sockets.  Readiness is
 * what systemd would see: the test plays the NOTIFY_SOCKET and waits for
 * READY=1, so nothing polls or sleeps for the daemon to start. */
#ifndef LATENTD_TESTS_DAEMON_H
#define LATENTD_TESTS_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <check.h>
#include <curl/curl.h>
#include <jansson.h>

#include "testutil.h"

typedef struct {
    pid_t pid;
    int port;
    int notify_fd; /* the NOTIFY_SOCKET the daemon reports to */
    char log[4200];
    char dir[4200];
} daemon_t;

/* Start latentd on a model (a folder under the fixtures, or an absolute path)
 * with extra flags (NULL-terminated); returns once it is READY. */
daemon_t start_daemon(const char *model, const char *const *extra);
/* Block until the daemon sends a notify message containing state ("STOPPING=1"). */
int daemon_wait_notify(daemon_t *d, const char *state);
/* The port of the last "listening on 127.0.0.1:PORT" line of a log (0: none). */
int daemon_log_port(const char *log);
/* Whether a line of the daemon's log holds text. */
bool log_contains(const daemon_t *d, const char *text);
/* SIGTERM and wait; returns the exit status. */
int stop_daemon(daemon_t *d);
/* Remove its folder (after the process is gone). */
void daemon_cleanup(daemon_t *d);

typedef struct {
    long status;
    char *body;
    size_t len;
    char headers[4096];
} reply;

/* body NULL: GET; form non-NULL: multipart; header: one extra header line.
 * http_try answers status 0 (and the reason in headers) when the transfer
 * failed; http fails the test then. */
reply http_try(const daemon_t *d, const char *path, const char *type, const void *body,
               size_t len, curl_mime *form, const char *header);
reply http(const daemon_t *d, const char *path, const char *type, const void *body, size_t len,
           curl_mime *form, const char *header);
char *image_b64(const char *name);
/* {"images": [b64...], <extra>} */
char *json_request(const char *const *names, int n, const char *extra);
reply post_json(const daemon_t *d, const char *path, const char *const *names, int n,
                const char *extra);

float *tensor_from_json(json_t *t, size_t *count);
/* values[index·per ..] against the expected file's tensor */
void assert_slice(const float *values, size_t total, int batch, int index, const char *model,
                  const char *image, const char *name);
json_t *parse(const reply *r);
void assert_error(const reply *r, long status, const char *code);

/* Raw sockets, for what curl will not send.  Every read has a 30 s limit. */
int raw_connect(const daemon_t *d);
void raw_send(int fd, const void *data, size_t len);
/* Read until the peer closes (or the limit); NUL-terminated. */
char *raw_read_all(int fd, size_t *len);
/* Send a whole request, close our side, read the whole answer. */
char *raw_exchange(const daemon_t *d, const void *request, size_t len);
long raw_status(const char *response);

/* One series of /metrics ("latentd_queue_depth"), or -1 when absent. */
double metric_value(const daemon_t *d, const char *series);
/* Until the series reaches at_least (or lies in [low, high]), for at most `seconds`. */
bool wait_for_metric(const daemon_t *d, const char *series, double at_least, double seconds);
bool wait_for_metric_range(const daemon_t *d, const char *series, double low, double high,
                           double seconds);
/* A field of /proc/PID/status in kB or count ("VmHWM", "Threads"). */
long process_status_kb(pid_t pid, const char *field);

#endif
