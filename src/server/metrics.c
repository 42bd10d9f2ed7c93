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

/* Under the lock: the model's counters, made on first use. */
static srv_model_counts *model_counts(srv_metrics *m, const char *model)
{
    for (int i = 0; i < m->n_models; i++)
        if (!strcmp(m->models[i].name, model))
            return &m->models[i];
    if (m->n_models == METRIC_MODELS) /* a bounded table: the rest share the last series */
        return &m->models[METRIC_MODELS - 1];
    srv_model_counts *c = &m->models[m->n_models++];
    /* "(other)" is no valid model name, so the shared series cannot pass for one */
    snprintf(c->name, sizeof c->name, "%s", m->n_models == METRIC_MODELS ? "(other)" : model);
    return c;
}

void srv_metrics_batch(srv_metrics *m, const char *model, int images, double encode_seconds)
{
    pthread_mutex_lock(&m->lock);
    srv_model_counts *c = model_counts(m, model);
    c->images_encoded += (uint64_t)images;
    c->batches++;
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

void srv_metrics_event(srv_metrics *m, srv_event event)
{
    pthread_mutex_lock(&m->lock);
    m->events[event]++;
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

/* A label's value as the text format wants it: \\, \" and \\n escaped. */
static void put_label_value(text *t, const char *value)
{
    for (const char *p = value; *p; p++) {
        if (*p == '\\' || *p == '"')
            put(t, "\\%c", *p);
        else if (*p == '\n')
            put(t, "\\n");
        else
            put(t, "%c", *p);
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

static void put_events(text *t, const srv_metrics *m)
{
    static const struct {
        const char *family, *label;
    } names[EV_COUNT] = {
        [EV_REFUSED_LIMIT] = {"latentd_connections_refused_total", "reason=\"max_connections\""},
        [EV_REFUSED_PER_CLIENT] = {"latentd_connections_refused_total",
                                   "reason=\"max_connections_per_client\""},
        [EV_TIMEOUT_HEADERS] = {"latentd_connections_timed_out_total", "phase=\"headers\""},
        [EV_TIMEOUT_IDLE] = {"latentd_connections_timed_out_total", "phase=\"idle\""},
        [EV_TIMEOUT_BODY] = {"latentd_connections_timed_out_total", "phase=\"body\""},
        [EV_TIMEOUT_SEND] = {"latentd_connections_timed_out_total", "phase=\"send\""},
        [EV_CANCEL_CLIENT_GONE] = {"latentd_requests_cancelled_total", "reason=\"client_gone\""},
        [EV_CANCEL_TIMEOUT] = {"latentd_requests_cancelled_total", "reason=\"timeout\""},
        [EV_CANCEL_SHUTDOWN] = {"latentd_requests_cancelled_total", "reason=\"shutdown\""},
        [EV_REFUSED_MEMORY] = {"latentd_requests_refused_memory_total", NULL},
    };
    static const char *const help[] = {
        "latentd_connections_refused_total", "Connections refused at accept, by limit.",
        "latentd_connections_timed_out_total", "Connections closed past a phase's deadline.",
        "latentd_requests_cancelled_total", "Accepted requests stopped before their answer.",
        "latentd_requests_refused_memory_total", "Requests refused: the memory budget was spent.",
    };
    for (size_t h = 0; h < sizeof help / sizeof help[0]; h += 2) {
        put(t, "# HELP %s %s\n# TYPE %s counter\n", help[h], help[h + 1], help[h]);
        for (int e = 0; e < EV_COUNT; e++)
            if (!strcmp(names[e].family, help[h]))
                put(t, names[e].label ? "%s{%s} %llu\n" : "%s%s %llu\n", names[e].family,
                    names[e].label ? names[e].label : "", (unsigned long long)m->events[e]);
    }
}

static void put_gauge(text *t, const char *name, const char *help, double value)
{
    put(t, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", name, help, name, name, value);
}

char *srv_metrics_render(srv_metrics *m, const srv_gauges *g)
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
    /* model names are [A-Za-z0-9._-] (settings.c) or a folder's name: escaped anyway */
    put(&t, "# HELP latentd_images_encoded_total Images encoded, by model.\n"
            "# TYPE latentd_images_encoded_total counter\n");
    for (int i = 0; i < m->n_models; i++) {
        put(&t, "latentd_images_encoded_total{model=\"");
        put_label_value(&t, m->models[i].name);
        put(&t, "\"} %llu\n", (unsigned long long)m->models[i].images_encoded);
    }
    put(&t, "# HELP latentd_batches_total Forward passes run, by model.\n"
            "# TYPE latentd_batches_total counter\n");
    for (int i = 0; i < m->n_models; i++) {
        put(&t, "latentd_batches_total{model=\"");
        put_label_value(&t, m->models[i].name);
        put(&t, "\"} %llu\n", (unsigned long long)m->models[i].batches);
    }
    put_histogram(&t, "latentd_batch_size", "Images per forward pass.", &m->batch_size);
    put_histogram(&t, "latentd_queue_wait_seconds", "Time an image waited in the queue.",
                  &m->queue_wait);
    put_histogram(&t, "latentd_encode_seconds", "Time one batch took to encode.",
                  &m->encode_time);
    put_events(&t, m);
    pthread_mutex_unlock(&m->lock);
    put_gauge(&t, "latentd_queue_depth", "Images admitted and not yet encoding (decoding or "
              "waiting).", g->queue_depth);
    put_gauge(&t, "latentd_queue_capacity", "Images the queue holds at most.", g->queue_capacity);
    put_gauge(&t, "latentd_requests_in_flight", "Encode requests accepted and not yet answered.",
              g->in_flight);
    put_gauge(&t, "latentd_connections_open", "Client connections open.", g->connections);
    put_gauge(&t, "latentd_memory_budget_used_bytes", "Bytes of the memory budget taken.",
              (double)g->memory_used);
    put_gauge(&t, "latentd_memory_budget_peak_bytes", "The most bytes of the budget ever taken.",
              (double)g->memory_peak);
    put_gauge(&t, "latentd_memory_budget_bytes", "The memory budget (memory_budget_bytes).",
              (double)g->memory_limit);
    put_gauge(&t, "latentd_workers_stalled", "Workers whose encoder made no progress for "
              "stall_timeout_ms.", g->workers_stalled);
    if (t.failed) {
        free(t.buf);
        return NULL;
    }
    return t.buf;
}
