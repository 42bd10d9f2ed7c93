#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double batch_bounds[] = {1, 2, 4, 8, 16, 32, 64};
static const double seconds_bounds[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.25,
                                        0.5,   1,     2.5,  5,    10,  30};

static void histogram_init(srv_histogram *h, const double *bounds, int n)
{
    memset(h, 0, sizeof *h);
    h->bounds = bounds;
    h->n_bounds = n;
}

static void histogram_add(srv_histogram *h, double v)
{
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i])
        i++;
    h->counts[i]++;
    h->sum += v;
    h->total++;
}

void srv_metrics_init(srv_metrics *m)
{
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->lock, NULL);
    histogram_init(&m->batch_size, batch_bounds, 7);
    histogram_init(&m->queue_wait, seconds_bounds, 12);
    histogram_init(&m->encode_time, seconds_bounds, 12);
}

void srv_metrics_destroy(srv_metrics *m)
{
    pthread_mutex_destroy(&m->lock);
}

void srv_metrics_request(srv_metrics *m, int status)
{
    pthread_mutex_lock(&m->lock);
    if (status >= 100 && status < 600)
        m->requests_by_status[status]++;
    pthread_mutex_unlock(&m->lock);
}

void srv_metrics_batch(srv_metrics *m, int images, double encode_seconds)
{
    pthread_mutex_lock(&m->lock);
    m->images_encoded += (uint64_t)images;
    m->batches++;
    histogram_add(&m->batch_size, images);
    histogram_add(&m->encode_time, encode_seconds);
    pthread_mutex_unlock(&m->lock);
}

void srv_metrics_queue_wait(srv_metrics *m, double seconds)
{
    pthread_mutex_lock(&m->lock);
    histogram_add(&m->queue_wait, seconds);
    pthread_mutex_unlock(&m->lock);
}

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...)
{
    for (;;) {
        if (t->failed)
            return;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n;
        char *grown = realloc(t->buf, cap);
        if (!grown) {
            t->failed = 1;
            return;
        }
        t->buf = grown;
        t->cap = cap;
    }
}

static void put_histogram(text *t, const char *name, const char *help, const srv_histogram *h)
{
    put(t, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cumulative = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        cumulative += h->counts[i];
        put(t, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i], (unsigned long long)cumulative);
    }
    put(t, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)h->total);
    put(t, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name, (unsigned long long)h->total);
}

char *srv_metrics_render(srv_metrics *m, int queue_depth, int queue_capacity, int in_flight)
{
    text t = {malloc(4096), 0, 4096, 0};
    if (!t.buf)
        return NULL;
    t.buf[0] = '\0';
    pthread_mutex_lock(&m->lock);
    put(&t, "# HELP latentd_requests_total HTTP requests answered, by status.\n"
            "# TYPE latentd_requests_total counter\n");
    for (int s = 100; s < 600; s++)
        if (m->requests_by_status[s])
            put(&t, "latentd_requests_total{status=\"%d\"} %llu\n", s,
                (unsigned long long)m->requests_by_status[s]);
    put(&t, "# HELP latentd_images_encoded_total Images encoded.\n"
            "# TYPE latentd_images_encoded_total counter\nlatentd_images_encoded_total %llu\n",
        (unsigned long long)m->images_encoded);
    put(&t, "# HELP latentd_batches_total Forward passes run.\n"
            "# TYPE latentd_batches_total counter\nlatentd_batches_total %llu\n",
        (unsigned long long)m->batches);
    put_histogram(&t, "latentd_batch_size", "Images per forward pass.", &m->batch_size);
    put_histogram(&t, "latentd_queue_wait_seconds", "Time an image waited in the queue.",
                  &m->queue_wait);
    put_histogram(&t, "latentd_encode_seconds", "Time one batch took to encode.",
                  &m->encode_time);
    pthread_mutex_unlock(&m->lock);
    put(&t, "# HELP latentd_queue_depth Images waiting to be encoded.\n"
            "# TYPE latentd_queue_depth gauge\nlatentd_queue_depth %d\n", queue_depth);
    put(&t, "# HELP latentd_queue_capacity Images the queue holds at most.\n"
            "# TYPE latentd_queue_capacity gauge\nlatentd_queue_capacity %d\n", queue_capacity);
    put(&t, "# HELP latentd_requests_in_flight Encode requests accepted and not yet answered.\n"
            "# TYPE latentd_requests_in_flight gauge\nlatentd_requests_in_flight %d\n", in_flight);
    if (t.failed) {
        free(t.buf);
        return NULL;
    }
    return t.buf;
}
