/* Counters and histograms for GET /metrics (Prometheus text format). */
#ifndef LATENTD_SERVER_METRICS_H
#define LATENTD_SERVER_METRICS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define METRIC_BUCKETS 12

typedef struct {
    const double *bounds; /* upper bounds, ascending */
    int n_bounds;
    uint64_t counts[METRIC_BUCKETS + 1]; /* the last: +Inf */
    double sum;
    uint64_t total;
} srv_histogram;

/* Events counted with a reason label. */
typedef enum {
    EV_REFUSED_LIMIT,      /* connection refused: max_connections */
    EV_REFUSED_PER_CLIENT, /* connection refused: max_connections_per_client */
    EV_TIMEOUT_HEADERS,    /* connection closed: headers too slow */
    EV_TIMEOUT_IDLE,       /* connection closed: kept alive too long */
    EV_TIMEOUT_BODY,       /* connection closed: body too slow */
    EV_TIMEOUT_SEND,       /* connection closed: answer read too slowly */
    EV_CANCEL_CLIENT_GONE, /* request cancelled: the client hung up */
    EV_CANCEL_TIMEOUT,     /* request cancelled: past request_timeout_ms */
    EV_CANCEL_SHUTDOWN,    /* request cancelled: shutdown */
    EV_REFUSED_MEMORY,     /* request refused: the memory budget was spent */
    EV_COUNT
} srv_event;

/* Gauges read at render time. */
typedef struct {
    int queue_depth, queue_capacity, in_flight, connections, workers_stalled;
    size_t memory_used, memory_limit, memory_peak;
} srv_gauges;

/* Per-model counters, by the model's name (a name served once keeps its
 * series after a reload drops it, as Prometheus counters must). */
#define METRIC_MODELS 64
typedef struct {
    char name[64];
    uint64_t images_encoded;
    uint64_t batches;
} srv_model_counts;

typedef struct {
    pthread_mutex_t lock;
    uint64_t events[EV_COUNT];
    uint64_t requests_by_status[600];
    srv_model_counts models[METRIC_MODELS]; /* the last also takes any name past the table */
    int n_models;
    srv_histogram batch_size;
    srv_histogram queue_wait; /* seconds */
    srv_histogram encode_time; /* seconds, per batch */
} srv_metrics;

void srv_metrics_init(srv_metrics *m);
void srv_metrics_destroy(srv_metrics *m);
void srv_metrics_request(srv_metrics *m, int status);
/* A batch of `images` encoded by the model called model. */
void srv_metrics_batch(srv_metrics *m, const char *model, int images, double encode_seconds);
void srv_metrics_queue_wait(srv_metrics *m, double seconds);
void srv_metrics_event(srv_metrics *m, srv_event event);
/* The exposition text, malloc'd. */
char *srv_metrics_render(srv_metrics *m, const srv_gauges *g);

#endif
