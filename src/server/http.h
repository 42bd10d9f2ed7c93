/* The HTTP front: libmicrohttpd, one thread per connection; routes requests
 * to the queue and answers from the finished jobs. */
#ifndef LATENTD_SERVER_HTTP_H
#define LATENTD_SERVER_HTTP_H

#include <stdatomic.h>
#include <stdbool.h>

#include "settings.h"
#include "latentd/encoder.h"
#include "metrics.h"
#include "queue.h"

/* The daemon's top-level state, owned by main(). */
typedef struct {
    const srv_config *cfg;
    const ld_model *model;
    srv_queue *queue;
    srv_metrics metrics;
    struct MHD_Daemon *mhd;
    int port;                /* the bound port (the config's, or the kernel's pick for 0) */
    atomic_int in_flight;    /* encode requests accepted, not yet answered */
    atomic_bool draining;    /* SIGTERM: refuse new work, finish the rest */
} srv_state;

int srv_http_start(srv_state *st, char *err);
/* Stop accepting connections (the listening socket closes). */
void srv_http_quiesce(srv_state *st);
void srv_http_stop(srv_state *st);

#endif
