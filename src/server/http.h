/* The HTTP front: libmicrohttpd in its event-driven mode (poll, a small fixed
 * pool of threads).  An idle or slow connection costs a table entry and no
 * thread; a request waiting for the encoder is suspended and resumed when its
 * job finishes.  Every request is admitted before work is done for it: its
 * body's size, its image count and sizes, the queue's room and the memory
 * budget are checked first. */
#ifndef LATENTD_SERVER_HTTP_H
#define LATENTD_SERVER_HTTP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "auth.h"
#include "budget.h"
#include "conns.h"
#include "latentd/encoder.h"
#include "metrics.h"
#include "models.h"
#include "queue.h"
#include "settings.h"

/* The daemon's top-level state, owned by main(). */
typedef struct {
    const srv_config *cfg;
    srv_models *models;        /* by name; swapped whole by a reload */
    srv_queue *queue;
    srv_conns *conns;
    srv_auth auth;             /* the API key (a reload replaces it) */
    srv_budget budget;
    _Atomic size_t budget_fixed; /* taken for the workers and decoders (at start; a reload
                                  * that loads a larger model takes more) */
    srv_metrics metrics;
    struct MHD_Daemon *mhd;
    int passed_fd;             /* a listening socket from systemd (socket activation), taken
                                * instead of binding the config's listen; 0: none (a passed
                                * socket is never 0-2) */
    int port;                  /* the bound port (the config's, or the kernel's pick for 0) */
    pthread_mutex_t idle_lock; /* with idle: in_flight or suspended reached 0 */
    pthread_cond_t idle;
    atomic_int in_flight;      /* encode requests accepted at their headers, not yet answered */
    atomic_int suspended;      /* connections waiting for their job (with idle: reached 0) */
    atomic_int discarding;     /* bodies refused for their size, read and dropped (http.c) */
    atomic_bool draining;      /* SIGTERM: refuse new work, finish the rest */
    atomic_bool closing;       /* past the drain: admit nothing more */
    atomic_int workers_stalled; /* the watchdog's last count */
    size_t worker_memory;      /* per worker, for the largest model loaded since start: */
    size_t batch_memory;       /* what budget_fixed holds (the main thread's alone) */
} srv_state;

int srv_http_start(srv_state *st, char *err);
/* Wait until no admitted request is left, or the monotonic deadline; true when none is. */
bool srv_http_wait_idle(srv_state *st, const struct timespec *deadline);
void srv_http_stop(srv_state *st);

#endif
