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

typedef struct {
    pthread_mutex_t lock;
    uint64_t requests_by_status[600];
    uint64_t images_encoded;
    uint64_t batches;
    srv_histogram batch_size;
    srv_histogram queue_wait; /* seconds */
    srv_histogram encode_time; /* seconds, per batch */
} srv_metrics;

void srv_metrics_init(srv_metrics *m);
void srv_metrics_destroy(srv_metrics *m);
void srv_metrics_request(srv_metrics *m, int status);
void srv_metrics_batch(srv_metrics *m, int images, double encode_seconds);
void srv_metrics_queue_wait(srv_metrics *m, double seconds);
/* The exposition text, malloc'd. */
char *srv_metrics_render(srv_metrics *m, int queue_depth, int queue_capacity, int in_flight);

#endif
