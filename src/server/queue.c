#include "queue.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

typedef struct entry {
    struct entry *next;
    srv_job *job; /* one reference */
    int index;
    double enqueued;
} entry;

typedef struct decode_item {
    struct decode_item *next;
    srv_job *job; /* one reference */
} decode_item;

typedef struct {
    srv_queue *q;
    pthread_t thread;
    srv_job *job; /* under q->lock: the job it decodes now (its images are coming), or NULL */
} decoder;

typedef struct {
    srv_queue *q;
    pthread_t thread;
    bool started;
    ld_pool *pool;               /* its compute threads (OpenBLAS buffers mapped at start) */
    _Atomic bool cancel;         /* stop the running encode */
    _Atomic uint64_t heartbeat;  /* bumped by the encoder after every layer */
    /* under q->lock */
    entry **batch;               /* vae_split slots */
    int batch_n;                 /* 0: idle */
    uint64_t seen_beat;
    double beat_at;
} worker;

struct srv_queue {
    pthread_mutex_t lock;
    pthread_cond_t changed;   /* images queued or dropped, or stopping: workers */
    pthread_cond_t to_decode; /* a job to decode, or stopping: decoders */
    entry *head, *tail;       /* decoded images waiting for a batch, oldest first */
    decode_item *dhead, *dtail;
    int admitted;             /* slots held: images being decoded or waiting */
    bool stopping;
    bool draining;            /* batches go as they are */
    srv_queue_params params;
    _Atomic size_t worker_memory; /* params.worker_memory, raised by a reload */
    srv_metrics *metrics;
    worker *workers;
    decoder *decoders;
    int n_decoders;
};

/* ---------------- admission ---------------- */

int srv_queue_admit(srv_queue *q, int n, char *err)
{
    pthread_mutex_lock(&q->lock);
    int rc = LD_OK;
    if (q->stopping)
        rc = ld_fail(err, LD_ECANCELLED, "shutting down");
    else if (q->admitted >= q->params.max_queue) /* see srv_queue_admit's comment */
        rc = ld_fail(err, LD_ETOOLARGE, "the queue is full (%d of %d images waiting)",
                     q->admitted, q->params.max_queue);
    else
        q->admitted += n;
    pthread_mutex_unlock(&q->lock);
    return rc;
}

static void release_slots_locked(srv_queue *q, int n)
{
    q->admitted -= n;
}

void srv_queue_unadmit(srv_queue *q, int n)
{
    pthread_mutex_lock(&q->lock);
    release_slots_locked(q, n);
    pthread_mutex_unlock(&q->lock);
}

void srv_queue_submit(srv_queue *q, srv_job *job)
{
    decode_item *d = malloc(sizeof *d);
    if (!d) {
        srv_job_fail(job, LD_ENOMEM, "out of memory queueing the request");
        srv_queue_unadmit(q, srv_job_images(job));
        return;
    }
    srv_job_ref(job);
    *d = (decode_item){NULL, job};
    pthread_mutex_lock(&q->lock);
    if (q->dtail)
        q->dtail->next = d;
    else
        q->dhead = d;
    q->dtail = d;
    pthread_cond_signal(&q->to_decode);
    pthread_mutex_unlock(&q->lock);
}

/* ---------------- decoders ---------------- */

static decode_item *next_to_decode(decoder *dec)
{
    srv_queue *q = dec->q;
    pthread_mutex_lock(&q->lock);
    while (!q->dhead && !q->stopping)
        pthread_cond_wait(&q->to_decode, &q->lock);
    decode_item *d = q->stopping ? NULL : q->dhead;
    if (d) {
        q->dhead = d->next;
        if (!q->dhead)
            q->dtail = NULL;
        dec->job = d->job; /* still coming, for a worker that waits for it */
    }
    pthread_mutex_unlock(&q->lock);
    return d;
}

/* The decoder's job has joined the queue or failed: a worker waiting for its
 * images looks again. */
static void decode_finished(decoder *dec)
{
    srv_queue *q = dec->q;
    pthread_mutex_lock(&q->lock);
    dec->job = NULL;
    pthread_cond_broadcast(&q->changed);
    pthread_mutex_unlock(&q->lock);
}

/* Decode every image; false (and the job failed) when one cannot be. */
static bool decode_job(srv_job *job)
{
    char err[LD_ERR_LEN], message[LD_ERR_LEN];
    for (int i = 0; i < srv_job_images(job) && !srv_job_finished(job); i++) {
        int rc = srv_job_decode(job, i, err);
        if (rc != LD_OK) {
            snprintf(message, sizeof message, "image %d: %s", i, err);
            srv_job_fail(job, rc, message);
            return false;
        }
    }
    return !srv_job_finished(job);
}

/* The job's decoded images join the queue (their slots are already held). */
static void enqueue_images(srv_queue *q, srv_job *job)
{
    const int n = srv_job_images(job);
    entry **fresh = calloc((size_t)n, sizeof *fresh);
    int made = 0;
    while (fresh && made < n && (fresh[made] = malloc(sizeof **fresh)))
        made++;
    const double now = ld_now_seconds();
    pthread_mutex_lock(&q->lock);
    if (made < n || srv_job_finished(job) || q->stopping) {
        release_slots_locked(q, n);
    } else {
        for (int i = 0; i < n; i++) {
            srv_job_ref(job);
            *fresh[i] = (entry){NULL, job, i, now};
            if (q->tail)
                q->tail->next = fresh[i];
            else
                q->head = fresh[i];
            q->tail = fresh[i];
        }
        made = 0; /* the queue owns them now */
        pthread_cond_broadcast(&q->changed);
    }
    pthread_mutex_unlock(&q->lock);
    if (made > 0 || !fresh)
        srv_job_fail(job, LD_ENOMEM, "out of memory queueing the images");
    for (int i = 0; fresh && i < made; i++)
        free(fresh[i]);
    free(fresh);
}

static void *decoder_main(void *arg)
{
    decoder *dec = arg;
    srv_queue *q = dec->q;
    decode_item *d;
    while ((d = next_to_decode(dec))) {
        if (decode_job(d->job))
            enqueue_images(q, d->job);
        else
            srv_queue_unadmit(q, srv_job_images(d->job));
        decode_finished(dec);
        srv_job_unref(d->job);
        free(d);
    }
    return NULL;
}

/* ---------------- batching ---------------- */

static bool same_batch(const entry *a, const entry *b)
{
    return srv_job_same_batch(a->job, a->index, b->job, b->index);
}

/* Unlink images of finished jobs: nobody will read their results. */
static void drop_finished_locked(srv_queue *q, entry **dropped)
{
    entry **link = &q->head, *prev = NULL;
    while (*link) {
        entry *e = *link;
        if (srv_job_finished(e->job) || q->stopping) {
            *link = e->next;
            release_slots_locked(q, 1);
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
        n += same_batch(e, q->head);
    return n;
}

/* Up to limit images of job that may join head's batch. */
static int job_matching(const srv_job *job, const entry *head, int limit)
{
    int n = 0;
    for (int i = 0; i < srv_job_images(job) && n < limit && !srv_job_finished(job); i++)
        n += srv_job_same_batch(job, i, head->job, head->index);
    return n;
}

/* Up to limit images that may join the head's batch and that the decoders
 * hold, decoding or waiting to be: they join the queue within a decode. */
static int count_coming_locked(const srv_queue *q, int limit)
{
    int n = 0;
    for (const decode_item *d = q->dhead; d && n < limit; d = d->next)
        n += job_matching(d->job, q->head, limit - n);
    for (int i = 0; i < q->params.decode_threads && n < limit; i++)
        if (q->decoders[i].job)
            n += job_matching(q->decoders[i].job, q->head, limit - n);
    return n;
}

/* Whether the head's batch goes now; else *wake is when to look again (the
 * queue changing, or a decoder finishing, wakes the worker sooner).  A batch
 * goes when it is full, when draining, or once the head has waited
 * max_batch_delay_ms and no image that could join it is being decoded, or
 * decode_wait_ms on top of that at most. */
static bool batch_ready_locked(const srv_queue *q, int limit, double *wake)
{
    const int ready = count_matching(q, limit);
    const double delay_ends = q->head->enqueued + q->params.max_batch_delay_ms / 1000.0;
    const double decode_ends = delay_ends + q->params.decode_wait_ms / 1000.0;
    const double now = ld_now_seconds();
    if (ready >= limit || q->draining || now >= decode_ends)
        return true;
    if (now < delay_ends) {
        *wake = delay_ends;
        return false;
    }
    *wake = decode_ends;
    return count_coming_locked(q, limit - ready) == 0;
}

/* Unlink up to limit images matching the head, oldest first. */
static int take_batch_locked(srv_queue *q, entry **batch, int limit)
{
    entry *head = q->head, **link = &q->head;
    int n = 0;
    while (*link && n < limit) {
        entry *e = *link;
        if (e == head || same_batch(e, head)) {
            *link = e->next;
            batch[n++] = e;
        } else {
            link = &e->next;
        }
    }
    release_slots_locked(q, n);
    q->tail = NULL;
    for (entry *e = q->head; e; e = e->next)
        q->tail = e;
    return n;
}

static void timespec_at(double seconds, struct timespec *ts)
{
    ts->tv_sec = (time_t)seconds;
    ts->tv_nsec = (long)((seconds - (double)ts->tv_sec) * 1e9);
}

/* Blocks until a batch is ready; 0 when stopping (or with images to drop). */
static int next_batch(worker *w, entry **dropped)
{
    srv_queue *q = w->q;
    const int limit = q->params.vae_split;
    pthread_mutex_lock(&q->lock);
    w->batch_n = 0;
    for (;;) {
        drop_finished_locked(q, dropped);
        if (*dropped || q->stopping)
            break; /* release them outside the lock first */
        if (!q->head) {
            pthread_cond_wait(&q->changed, &q->lock);
            continue;
        }
        double wake = 0;
        if (batch_ready_locked(q, limit, &wake)) {
            w->batch_n = take_batch_locked(q, w->batch, limit);
            atomic_store(&w->cancel, false);
            w->seen_beat = atomic_load(&w->heartbeat);
            w->beat_at = ld_now_seconds();
            break;
        }
        struct timespec ts;
        timespec_at(wake, &ts);
        pthread_cond_timedwait(&q->changed, &q->lock, &ts);
    }
    const int n = w->batch_n;
    pthread_mutex_unlock(&q->lock);
    return n;
}

/* ---------------- encoding ---------------- */

/* One batch's encoder inputs and per-image results. */
typedef struct {
    const ld_image **images;
    uint64_t *seeds;
    ld_result *results; /* handed to the jobs, which then own their data */
} batch_buffers;

static int batch_alloc(batch_buffers *b, int n)
{
    if (n < 1) /* never: a batch holds an image (and the compiler learns n's range) */
        return LD_EINVAL;
    b->images = calloc((size_t)n, sizeof *b->images);
    b->seeds = calloc((size_t)n, sizeof *b->seeds);
    b->results = calloc((size_t)n, sizeof *b->results);
    return b->images && b->seeds && b->results ? LD_OK : LD_ENOMEM;
}

static void batch_free(batch_buffers *b, int n)
{
    for (int i = 0; b->results && i < n; i++)
        ld_result_free(&b->results[i]);
    free(b->images);
    free(b->seeds);
    free(b->results);
}

/* The library's one way from images to per-image results, on this
 * worker's threads, cancellable between layers. */
static int encode_batch(worker *w, entry **batch, int n, batch_buffers *b, char *err)
{
    srv_queue *q = w->q;
    const srv_job *first = batch[0]->job;
    const int rc_alloc = batch_alloc(b, n);
    if (rc_alloc != LD_OK)
        return rc_alloc == LD_EINVAL ? ld_fail(err, LD_EINVAL, "an empty batch")
                                     : ld_fail(err, LD_ENOMEM,
                                               "out of memory for a batch of %d images", n);
    for (int i = 0; i < n; i++) {
        b->images[i] = srv_job_image(batch[i]->job, batch[i]->index);
        b->seeds[i] = srv_job_seed(batch[i]->job, batch[i]->index);
    }
    ld_encode_opts opts;
    ld_encode_opts_init(&opts);
    opts.vae_split = q->params.vae_split;
    opts.pool = w->pool;
    opts.max_memory = atomic_load(&q->worker_memory);
    opts.center_input = srv_job_center(first);
    opts.deterministic = srv_job_deterministic(first);
    opts.seeds = b->seeds;
    opts.cancel = &w->cancel;
    opts.heartbeat = &w->heartbeat;
    const ld_model *model = srv_model_weights(srv_job_model(first)); /* one per batch */
    const int rc = ld_encode_results(model, b->images, n, &opts, b->results, err);
    for (int i = 0; i < n; i++) /* the pixels are not needed any more */
        srv_job_drop_pixels(batch[i]->job, batch[i]->index);
    return rc;
}

static void run_batch(worker *w, entry **batch, int n)
{
    srv_queue *q = w->q;
    const srv_job *first = batch[0]->job;
    const int h = srv_job_image_height(first, batch[0]->index);
    const int wd = srv_job_image_width(first, batch[0]->index);
    char err[LD_ERR_LEN] = "";
    const double started = ld_now_seconds();
    for (int i = 0; i < n; i++)
        srv_metrics_queue_wait(q->metrics, started - batch[i]->enqueued);
    batch_buffers b = {0};
    const int rc = encode_batch(w, batch, n, &b, err);
    const double encode_seconds = ld_now_seconds() - started;
    /* idle before the entries go: srv_queue_job_stopped reads them under the
     * lock while batch_n says they are there */
    pthread_mutex_lock(&q->lock);
    w->batch_n = 0;
    pthread_mutex_unlock(&q->lock);
    if (rc == LD_OK)
        srv_metrics_batch(q->metrics, srv_model_name(srv_job_model(first)), n, encode_seconds);
    else if (rc == LD_ECANCELLED)
        srv_log(LOG_INFO, "batch of %d %dx%d images stopped: its requests are gone", n, wd, h);
    else
        srv_log(LOG_ERROR, "batch of %d %dx%d images failed: %s", n, wd, h, err);
    for (int i = 0; i < n; i++) {
        srv_job *job = batch[i]->job;
        if (rc == LD_OK)
            srv_job_store(job, batch[i]->index, &b.results[i]);
        srv_job_image_done(job, batch[i]->index, rc, err, started - batch[i]->enqueued,
                           encode_seconds);
        srv_job_unref(job);
        free(batch[i]);
    }
    batch_free(&b, n);
}

static void release_entries(entry *list)
{
    while (list) {
        entry *next = list->next;
        srv_job_unref(list->job);
        free(list);
        list = next;
    }
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    for (;;) {
        entry *dropped = NULL;
        const int n = next_batch(w, &dropped);
        const bool had_dropped = dropped != NULL;
        release_entries(dropped);
        if (n > 0) {
            run_batch(w, w->batch, n);
        } else if (!had_dropped) {
            break; /* stopping */
        }
    }
    return NULL;
}

/* ---------------- the whole ---------------- */

void srv_queue_drain(srv_queue *q)
{
    pthread_mutex_lock(&q->lock);
    q->draining = true;
    pthread_cond_broadcast(&q->changed);
    pthread_mutex_unlock(&q->lock);
}

void srv_queue_job_stopped(srv_queue *q)
{
    pthread_mutex_lock(&q->lock);
    pthread_cond_broadcast(&q->changed); /* workers drop its waiting images */
    for (int k = 0; k < q->params.workers; k++) {
        worker *w = &q->workers[k];
        bool all_finished = w->batch_n > 0;
        for (int i = 0; i < w->batch_n && all_finished; i++)
            all_finished = srv_job_finished(w->batch[i]->job);
        if (all_finished)
            atomic_store(&w->cancel, true);
    }
    pthread_mutex_unlock(&q->lock);
}

int srv_queue_depth(srv_queue *q)
{
    pthread_mutex_lock(&q->lock);
    const int depth = q->admitted;
    pthread_mutex_unlock(&q->lock);
    return depth;
}

int srv_queue_capacity(const srv_queue *q) { return q->params.max_queue; }

int srv_queue_stalled(srv_queue *q, int stall_ms)
{
    const double now = ld_now_seconds();
    int stalled = 0;
    pthread_mutex_lock(&q->lock);
    for (int k = 0; k < q->params.workers; k++) {
        worker *w = &q->workers[k];
        const uint64_t beat = atomic_load(&w->heartbeat);
        if (w->batch_n == 0 || beat != w->seen_beat) {
            w->seen_beat = beat;
            w->beat_at = now;
        } else if ((now - w->beat_at) * 1000.0 > stall_ms) {
            stalled++;
        }
    }
    pthread_mutex_unlock(&q->lock);
    return stalled;
}

static int start_threads(srv_queue *q, char *err)
{
    const long compute_threads = (long)q->params.workers * q->params.threads;
    for (int i = 0; i < q->params.workers; i++) {
        worker *w = &q->workers[i];
        w->q = q;
        w->batch = calloc((size_t)q->params.vae_split, sizeof *w->batch);
        if (!w->batch)
            return ld_fail(err, LD_ENOMEM, "out of memory");
        char inner[LD_ERR_LEN];
        if (ld_pool_new(q->params.threads, &w->pool, inner) != LD_OK)
            return ld_fail(err, LD_ENOMEM, "worker %d: %s", i, inner);
        if (ld_pool_set_kernel(w->pool, q->params.kernel, inner) != LD_OK)
            return ld_fail(err, LD_EUNSUPPORTED, "worker %d: %s", i, inner);
        if (compute_threads > ld_cores()) /* the workers' pools share the cores */
            ld_pool_set_spin(w->pool, 0);
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
            return ld_fail(err, LD_ENOMEM, "cannot start worker thread %d", i);
        w->started = true;
    }
    for (int i = 0; i < q->params.decode_threads; i++) {
        q->decoders[i].q = q;
        if (pthread_create(&q->decoders[i].thread, NULL, decoder_main, &q->decoders[i]) != 0)
            return ld_fail(err, LD_ENOMEM, "cannot start decoder thread %d", i);
        q->n_decoders++;
    }
    return LD_OK;
}

int srv_queue_new(const srv_queue_params *params, srv_metrics *metrics, srv_queue **out,
                  char *err)
{
    *out = NULL;
    srv_queue *q = calloc(1, sizeof *q);
    if (!q)
        return ld_fail(err, LD_ENOMEM, "out of memory");
    q->params = *params;
    atomic_init(&q->worker_memory, params->worker_memory);
    q->metrics = metrics;
    pthread_mutex_init(&q->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&q->changed, &attr);
    pthread_cond_init(&q->to_decode, &attr);
    pthread_condattr_destroy(&attr);
    q->workers = calloc((size_t)params->workers, sizeof *q->workers);
    q->decoders = calloc((size_t)params->decode_threads, sizeof *q->decoders);
    int rc = q->workers && q->decoders ? start_threads(q, err)
                                       : ld_fail(err, LD_ENOMEM, "out of memory");
    if (rc != LD_OK) {
        struct timespec forever = {.tv_sec = (time_t)1 << 40};
        srv_queue_stop(q, &forever);
        srv_queue_free(q);
        return rc;
    }
    *out = q;
    return LD_OK;
}

void srv_queue_set_worker_memory(srv_queue *q, size_t bytes)
{
    atomic_store(&q->worker_memory, bytes);
}

bool srv_queue_image_fits(srv_queue *q, const ld_model *model, int h, int w, size_t *need,
                          size_t *limit)
{
    *limit = atomic_load(&q->worker_memory);
    /* as encode_batch asks: the workers' threads, the default banding */
    *need = ld_encode_least_workspace_bytes(model, h, w, q->params.threads, LD_BANDING_AUTO);
    return *limit == 0 || *need <= *limit;
}

/* pthread_timedjoin_np counts in CLOCK_REALTIME; the deadline is monotonic. */
static bool join_by(pthread_t thread, const struct timespec *deadline)
{
    struct timespec mono, real;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    clock_gettime(CLOCK_REALTIME, &real);
    double left = (double)(deadline->tv_sec - mono.tv_sec) +
                  (deadline->tv_nsec - mono.tv_nsec) * 1e-9;
    if (left < 0)
        left = 0;
    if (left > 1e9)
        return pthread_join(thread, NULL) == 0;
    timespec_at((double)real.tv_sec + real.tv_nsec * 1e-9 + left, &real);
    return pthread_timedjoin_np(thread, NULL, &real) == 0;
}

bool srv_queue_stop(srv_queue *q, const struct timespec *deadline)
{
    pthread_mutex_lock(&q->lock);
    q->stopping = true;
    for (int k = 0; k < q->params.workers; k++)
        atomic_store(&q->workers[k].cancel, true);
    pthread_cond_broadcast(&q->changed);
    pthread_cond_broadcast(&q->to_decode);
    pthread_mutex_unlock(&q->lock);
    bool all = true;
    for (int k = 0; q->workers && k < q->params.workers; k++)
        if (q->workers[k].started)
            all = join_by(q->workers[k].thread, deadline) && all;
    for (int i = 0; i < q->n_decoders; i++)
        all = join_by(q->decoders[i].thread, deadline) && all;
    return all;
}

void srv_queue_free(srv_queue *q)
{
    if (!q)
        return;
    release_entries(q->head); /* the threads are gone: nobody else touches these */
    for (decode_item *d = q->dhead, *next; d; d = next) {
        next = d->next;
        srv_job_unref(d->job);
        free(d);
    }
    for (int k = 0; q->workers && k < q->params.workers; k++) {
        free(q->workers[k].batch);
        ld_pool_free(q->workers[k].pool);
    }
    free(q->workers);
    free(q->decoders);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->changed);
    pthread_cond_destroy(&q->to_decode);
    free(q);
}
