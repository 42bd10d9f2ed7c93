/* The connection table: every open client connection, its deadline for the
 * phase it is in, and — while its request waits for the encoder — its socket,
 * watched for the client hanging up.
 *
 * libmicrohttpd's own timeout restarts on every byte, so a client that sends
 * a byte every few seconds would hold a connection for ever; here each phase
 * has a deadline that does not move: the headers (from the connection's start
 * or its previous answer), the body, sending the answer.  One thread enforces
 * them: a connection past its deadline has its socket shut down, which
 * libmicrohttpd then sees and closes.  A waiting request whose client reset
 * the connection, or whose own deadline passed, has its job cancelled (a
 * client that only shut down its sending half is still reading: it is
 * answered).
 *
 * It also answers the accept policy: a new connection past max_connections,
 * or past max_connections_per_client for its address, is refused, counted and
 * logged. */
#ifndef LATENTD_SERVER_CONNS_H
#define LATENTD_SERVER_CONNS_H

#include <stdbool.h>
#include <sys/socket.h>

#include "job.h"
#include "metrics.h"

typedef struct srv_conns srv_conns;
typedef struct srv_conn srv_conn;

typedef struct {
    int max_connections;
    int max_per_client;    /* 0: no limit */
    int header_timeout_ms;
    int body_timeout_ms;   /* also the limit for sending an answer */
    int idle_timeout_ms;   /* a kept-alive connection waiting for its next request */
} srv_conns_params;

typedef enum {
    CONN_HEADERS, /* a new connection, before its first request's headers */
    CONN_IDLE,    /* kept alive after an answer, until the next headers */
    CONN_BODY,    /* receiving a body */
    CONN_WORK,    /* the request is with the encoder: its own deadline applies */
    CONN_SEND     /* sending the answer */
} srv_conn_phase;

int srv_conns_new(const srv_conns_params *params, srv_metrics *metrics, srv_conns **out,
                  char *err);
/* Stops the thread; every connection must be closed first. */
void srv_conns_free(srv_conns *t);

/* Whether a connection from addr may come in now. */
bool srv_conns_admit(srv_conns *t, const struct sockaddr *addr);
srv_conn *srv_conns_open(srv_conns *t, int fd, const struct sockaddr *addr);
void srv_conns_close(srv_conns *t, srv_conn *c);
int srv_conns_count(srv_conns *t);

/* The connection enters a phase; its deadline starts now. */
void srv_conn_enter(srv_conns *t, srv_conn *c, srv_conn_phase phase);
/* Requests this connection has started, counting the current one. */
int srv_conn_requests(const srv_conn *c);

/* The connection's request waits for job until the monotonic deadline (in
 * seconds): on a reset or at the deadline the job is cancelled. */
void srv_conn_wait(srv_conns *t, srv_conn *c, srv_job *job, double deadline);
/* The wait is over (the job finished and the answer is being made). */
void srv_conn_unwait(srv_conns *t, srv_conn *c);
/* Cancel every waiting request's job (shutdown). */
void srv_conns_cancel_all(srv_conns *t, srv_job_state why);

#endif
