#include "queue.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* ---------------- jobs ---------------- */

srv_job *srv_job_new(int n_images)
{
    srv_job *job = calloc(1, sizeof *job);
    if (!job)
        return NULL;
    job->items = calloc((size_t)n_images, sizeof *job->items);
    if (!job->items) {
        free(job);
        return NULL;
    }
    pthread_mutex_init(&job->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&job->done, &attr);
    pthread_condattr_destroy(&attr);
    job->refs = 1;
    job->n_items = n_images;
    job->deterministic = true;
    job->center = true;
    return job;
}

int srv_job_alloc_results(srv_job *job, const ld_model *model, char *err)
{
    const int channels = ld_model_config(model)->latent_channels;
    for (int i = 0; i < job->n_items; i++) {
        srv_item *it = &job->items[i];
        int rc = ld_model_latent_size(model, it->image.height, it->image.width, &it->lh, &it->lw,
                                      err);
        if (rc != LD_OK)
            return ld_fail(err, rc, "image %d: %.200s", i, err);
        const size_t n = (size_t)channels * it->lh * it->lw;
        it->latents = malloc(5 * n * sizeof(float));
        if (!it->latents)
            return ld_fail(err, LD_ENOMEM, "out of memory for image %d's results", i);
        it->mean = it->latents + n;
        it->logvar = it->mean + n;
        it->moments = it->logvar + n;
    }
    return LD_OK;
}

static void job_free(srv_job *job)
{
    for (int i = 0; i < job->n_items; i++) {
        ld_image_free(&job->items[i].image);
        free(job->items[i].latents);
    }
    free(job->items);
    pthread_mutex_destroy(&job->lock);
    pthread_cond_destroy(&job->done);
    free(job);
}

void srv_job_unref(srv_job *job)
{
    if (!job)
        return;
    pthread_mutex_lock(&job->lock);
    bool last = --job->refs == 0;
    pthread_mutex_unlock(&job->lock);
    if (last)
        job_free(job);
}

bool srv_job_wait(srv_job *job, const struct timespec *deadline)
{
    pthread_mutex_lock(&job->lock);
    int rc = 0;
    while (job->pending > 0 && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&job->done, &job->lock, deadline);
    bool done = job->pending == 0;
    pthread_mutex_unlock(&job->lock);
    return done;
}

/* One image of a job finished (or failed, or was dropped): drop its reference. */
static void job_finish_item(srv_job *job, int status, const char *err, double wait,
                            double encode_seconds)
{
    pthread_mutex_lock(&job->lock);
    if (status != LD_OK && job->status == LD_OK) {
        job->status = status;
        snprintf(job->err, sizeof job->err, "%s", err);
    }
    if (wait > job->queue_wait_max)
        job->queue_wait_max = wait;
    if (encode_seconds > job->encode_seconds) /* its batches' longest */
        job->encode_seconds = encode_seconds;
    if (--job->pending == 0)
        pthread_cond_broadcast(&job->done);
    bool last = --job->refs == 0;
    pthread_mutex_unlock(&job->lock);
    if (last)
        job_free(job);
}

/* ---------------- the queue ---------------- */

typedef struct entry {
    struct entry *next;
    srv_job *job;
    int index;
    double enqueued;
} entry;

struct srv_queue {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    entry *head, *tail;
    int depth;
    bool stopping;
    srv_queue_params params;
    const ld_model *model;
    srv_metrics *metrics;
    pthread_t *threads;
    int n_threads;
};

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static bool same_batch_key(const entry *a, const entry *b)
{
    const srv_item *x = &a->job->items[a->index], *y = &b->job->items[b->index];
    return x->image.width == y->image.width && x->image.height == y->image.height &&
           a->job->center == b->job->center && a->job->deterministic == b->job->deterministic;
}

/* Drop images whose job was abandoned: nobody will read their results. */
static void drop_abandoned(srv_queue *q, entry **dropped)
{
    entry **link = &q->head, *prev = NULL;
    while (*link) {
        entry *e = *link;
        if (atomic_load(&e->job->abandoned)) {
            *link = e->next;
            q->depth--;
            e->next = *dropped;
            *dropped = e;
        } else {
            prev = e;
            link = &e->next;
        }
    }
    q->tail = prev;
}

static int count_matching(const srv_queue *q, int limit)
{
    int n = 0;
    for (const entry *e = q->head; e && n < limit; e = e->next)
        n += same_batch_key(e, q->head);
    return n;
}

/* Unlink up to limit images matching the head, oldest first. */
static int take_batch(srv_queue *q, entry **batch, int limit)
{
    entry *head = q->head, **link = &q->head, *prev = NULL;
    int n = 0;
    while (*link && n < limit) {
        entry *e = *link;
        if (e == head || same_batch_key(e, head)) {
            *link = e->next;
            batch[n++] = e;
            q->depth--;
        } else {
            prev = e;
            link = &e->next;
        }
    }
    /* the tail is the last entry left */
    q->tail = prev;
    for (entry *e = q->head; e; e = e->next)
        q->tail = e;
    return n;
}

static void timespec_at(double seconds, struct timespec *ts)
{
    ts->tv_sec = (time_t)seconds;
    ts->tv_nsec = (long)((seconds - (double)ts->tv_sec) * 1e9);
}

/* Blocks until a batch is ready (or the queue stops empty: returns 0). */
static int next_batch(srv_queue *q, entry **batch, entry **dropped)
{
    const int limit = q->params.vae_split;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        drop_abandoned(q, dropped);
        if (*dropped)
            break; /* release them outside the lock first */
        if (!q->head) {
            if (q->stopping)
                break;
            pthread_cond_wait(&q->changed, &q->lock);
            continue;
        }
        const double deadline = q->head->enqueued + q->params.max_batch_delay_ms / 1000.0;
        if (count_matching(q, limit) >= limit || q->stopping || now_seconds() >= deadline) {
            int n = take_batch(q, batch, limit);
            pthread_mutex_unlock(&q->lock);
            return n;
        }
        struct timespec ts;
        timespec_at(deadline, &ts);
        pthread_cond_timedwait(&q->changed, &q->lock, &ts);
    }
    pthread_mutex_unlock(&q->lock);
    return 0;
}

typedef struct {
    float *images;
    uint64_t *seeds;
    float *results; /* latents | mean | logvar | moments, each for the whole batch */
} batch_buffers;

static int batch_alloc(batch_buffers *b, int n, size_t image_floats, size_t latent_floats)
{
    b->images = ld_alloc_aligned((size_t)n * image_floats, sizeof(float));
    b->seeds = calloc((size_t)n, sizeof *b->seeds);
    b->results = ld_alloc_aligned((size_t)n * latent_floats * 5, sizeof(float));
    return b->images && b->seeds && b->results ? LD_OK : LD_ENOMEM;
}

static void batch_free(batch_buffers *b)
{
    ld_free_aligned(b->images);
    free(b->seeds);
    ld_free_aligned(b->results);
}

static void run_batch(srv_queue *q, entry **batch, int n)
{
    const srv_job *first = batch[0]->job;
    const srv_item *shape = &first->items[batch[0]->index];
    const int h = shape->image.height, w = shape->image.width;
    const size_t image_floats = (size_t)3 * h * w;
    const size_t latent = (size_t)ld_model_config(q->model)->latent_channels * shape->lh * shape->lw;
    char err[LD_ERR_LEN] = "";
    const double started = now_seconds();
    batch_buffers b = {0};
    int rc = batch_alloc(&b, n, image_floats, latent);
    if (rc != LD_OK)
        ld_fail(err, rc, "out of memory for a batch of %d images", n);
    for (int i = 0; rc == LD_OK && i < n; i++) {
        const srv_job *job = batch[i]->job;
        memcpy(b.images + i * image_floats, job->items[batch[i]->index].image.rgb,
               image_floats * sizeof(float));
        b.seeds[i] = job->seed + (uint64_t)batch[i]->index;
        srv_metrics_queue_wait(q->metrics, started - batch[i]->enqueued);
    }
    if (rc == LD_OK) {
        ld_encode_opts opts;
        ld_encode_opts_init(&opts);
        opts.vae_split = q->params.vae_split;
        opts.threads = q->params.threads;
        opts.center_input = first->center;
        opts.deterministic = first->deterministic;
        opts.seeds = b.seeds;
        ld_encode_out out = {b.results, b.results + n * latent, b.results + 2 * n * latent,
                             b.results + 3 * n * latent, 0};
        rc = ld_encode(q->model, b.images, n, h, w, &opts, &out, err);
    }
    const double encode_seconds = now_seconds() - started;
    if (rc == LD_OK)
        srv_metrics_batch(q->metrics, n, encode_seconds);
    else
        srv_log(LOG_ERROR, "batch of %d %dx%d images failed: %s", n, w, h, err);
    for (int i = 0; i < n; i++) {
        srv_item *it = &batch[i]->job->items[batch[i]->index];
        if (rc == LD_OK) {
            /* each image's slots belong to its job alone: no lock needed */
            memcpy(it->latents, b.results + i * latent, latent * sizeof(float));
            memcpy(it->mean, b.results + (n + i) * latent, latent * sizeof(float));
            memcpy(it->logvar, b.results + (2 * n + i) * latent, latent * sizeof(float));
            memcpy(it->moments, b.results + 3 * n * latent + 2 * i * latent,
                   2 * latent * sizeof(float));
        }
        job_finish_item(batch[i]->job, rc, err, started - batch[i]->enqueued, encode_seconds);
        free(batch[i]);
    }
    batch_free(&b);
}

static void *worker_main(void *arg)
{
    srv_queue *q = arg;
    entry **batch = calloc((size_t)q->params.vae_split, sizeof *batch);
    if (!batch) {
        srv_log(LOG_ERROR, "worker: out of memory; exiting");
        return NULL;
    }
    for (;;) {
        entry *dropped = NULL;
        int n = next_batch(q, batch, &dropped);
        const bool had_dropped = dropped != NULL;
        while (dropped) {
            entry *next = dropped->next;
            job_finish_item(dropped->job, LD_ECANCELLED, "abandoned", 0, 0);
            free(dropped);
            dropped = next;
        }
        if (n > 0)
            run_batch(q, batch, n);
        else if (!had_dropped)
            break; /* stopping, and the queue is empty */
    }
    free(batch);
    return NULL;
}

int srv_queue_new(const ld_model *model, const srv_queue_params *params, srv_metrics *metrics,
                  srv_queue **out, char *err)
{
    *out = NULL;
    srv_queue *q = calloc(1, sizeof *q);
    if (!q)
        return ld_fail(err, LD_ENOMEM, "out of memory");
    q->params = *params;
    q->model = model;
    q->metrics = metrics;
    pthread_mutex_init(&q->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&q->changed, &attr);
    pthread_condattr_destroy(&attr);
    q->threads = calloc((size_t)params->workers, sizeof *q->threads);
    if (!q->threads) {
        srv_queue_free(q);
        return ld_fail(err, LD_ENOMEM, "out of memory");
    }
    for (int i = 0; i < params->workers; i++) {
        if (pthread_create(&q->threads[i], NULL, worker_main, q) != 0) {
            srv_queue_free(q);
            return ld_fail(err, LD_ENOMEM, "cannot start worker thread %d", i);
        }
        q->n_threads++;
    }
    *out = q;
    return LD_OK;
}

int srv_queue_submit(srv_queue *q, srv_job *job, char *err)
{
    const double now = now_seconds();
    entry **fresh = calloc((size_t)job->n_items, sizeof *fresh);
    for (int i = 0; fresh && i < job->n_items; i++)
        if (!(fresh[i] = calloc(1, sizeof **fresh))) {
            for (int k = 0; k < i; k++)
                free(fresh[k]);
            free(fresh);
            fresh = NULL;
        }
    if (!fresh)
        return ld_fail(err, LD_ENOMEM, "out of memory queueing %d images", job->n_items);
    pthread_mutex_lock(&q->lock);
    int rc = LD_OK;
    if (q->stopping) {
        rc = ld_fail(err, LD_ECANCELLED, "shutting down");
    } else if (q->depth + job->n_items > q->params.max_queue) {
        rc = ld_fail(err, LD_ETOOLARGE, "the queue is full (%d of %d images waiting)", q->depth,
                     q->params.max_queue);
    } else {
        pthread_mutex_lock(&job->lock);
        job->pending += job->n_items;
        job->refs += job->n_items;
        pthread_mutex_unlock(&job->lock);
        for (int i = 0; i < job->n_items; i++) {
            entry *e = fresh[i];
            *e = (entry){NULL, job, i, now};
            if (q->tail)
                q->tail->next = e;
            else
                q->head = e;
            q->tail = e;
            q->depth++;
        }
        pthread_cond_broadcast(&q->changed);
    }
    pthread_mutex_unlock(&q->lock);
    if (rc != LD_OK)
        for (int i = 0; i < job->n_items; i++)
            free(fresh[i]);
    free(fresh);
    return rc;
}

int srv_queue_depth(srv_queue *q)
{
    pthread_mutex_lock(&q->lock);
    int depth = q->depth;
    pthread_mutex_unlock(&q->lock);
    return depth;
}

int srv_queue_capacity(srv_queue *q) { return q->params.max_queue; }

void srv_queue_free(srv_queue *q)
{
    if (!q)
        return;
    pthread_mutex_lock(&q->lock);
    q->stopping = true; /* workers empty the queue without waiting to fill batches */
    pthread_cond_broadcast(&q->changed);
    pthread_mutex_unlock(&q->lock);
    for (int i = 0; i < q->n_threads; i++)
        pthread_join(q->threads[i], NULL);
    free(q->threads);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->changed);
    free(q);
}
