/* Encode jobs, the bounded image queue and the worker pool that batches it.
 *
 * A job is one HTTP request's images.  Its images enter the queue one by one;
 * a worker takes the oldest waiting image and coalesces others of the same
 * size and options (from any job) into a batch of at most vae_split, waiting
 * up to max_batch_delay_ms for it to fill.  Each image's results land in its
 * own job's slots; the job is done when all its images are.  Jobs are
 * reference-counted: the connection holds one reference and each queued image
 * another, so a job abandoned at its deadline stays valid until the last
 * worker lets go of it. */
#ifndef LATENTD_SERVER_QUEUE_H
#define LATENTD_SERVER_QUEUE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "latentd/encoder.h"
#include "latentd/image.h"
#include "metrics.h"

typedef struct {
    ld_image image;
    int lh, lw;
    float *latents, *mean, *logvar, *moments; /* C·lh·lw each (moments 2C) */
} srv_item;

typedef struct srv_job {
    pthread_mutex_t lock;
    pthread_cond_t done;
    int refs;
    int pending;            /* images not yet finished */
    atomic_bool abandoned;  /* the client is gone or past its deadline */
    int status;             /* LD_OK, or the first failure */
    char err[LD_ERR_LEN];
    bool deterministic, center;
    uint64_t seed;          /* image k samples with seed + k */
    int n_items;
    srv_item *items;
    double queue_wait_max, encode_seconds; /* the longest of its images', for the log */
} srv_job;

/* A job for n images (each later filled in by the caller); one reference. */
srv_job *srv_job_new(int n_images);
/* Allocate every item's result slots, once its image is known. */
int srv_job_alloc_results(srv_job *job, const ld_model *model, char *err);
void srv_job_unref(srv_job *job);
/* Wait until done or until the monotonic deadline; true when done. */
bool srv_job_wait(srv_job *job, const struct timespec *deadline);

typedef struct srv_queue srv_queue;

typedef struct {
    int vae_split, workers, threads, max_batch_delay_ms, max_queue;
} srv_queue_params;

int srv_queue_new(const ld_model *model, const srv_queue_params *params, srv_metrics *metrics,
                  srv_queue **out, char *err);
/* All of a job's images, or none: LD_ETOOLARGE when they would not fit. */
int srv_queue_submit(srv_queue *q, srv_job *job, char *err);
int srv_queue_depth(srv_queue *q);
int srv_queue_capacity(srv_queue *q);
/* Finish what is queued, then stop the workers and free everything. */
void srv_queue_free(srv_queue *q);

#endif
