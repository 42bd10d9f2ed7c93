/* The pipeline behind the HTTP front: a small pool of decoders, the bounded
 * image queue, and the workers that batch it.
 *
 * A request is admitted first (srv_queue_admit reserves a slot per image, all
 * or none), then submitted: a decoder turns its images into pixels and queues
 * them; a worker takes the oldest waiting image and coalesces others of the
 * same model, size and options (from any job; each job names its model) into a batch of at most vae_split,
 * waiting up to max_batch_delay_ms for it to fill, and past that for images of
 * its kind that are being decoded (up to decode_wait_ms more): requests that
 * arrive together reach the queue one decode apart, and without this the first
 * batch of a burst would leave with one image.  Images of finished
 * (cancelled, failed) jobs are dropped wherever they are, and a batch that
 * holds only such images is stopped mid-encode.
 *
 * Each worker owns its compute threads and a heartbeat the encoder bumps after
 * every layer; srv_queue_stalled counts workers whose heartbeat stood still
 * while they had work. */
#ifndef LATENTD_SERVER_QUEUE_H
#define LATENTD_SERVER_QUEUE_H

#include <stdbool.h>
#include <stddef.h>

#include "job.h"
#include "latentd/encoder.h"
#include "metrics.h"

typedef struct srv_queue srv_queue;

typedef struct {
    int vae_split, workers, threads, max_batch_delay_ms, max_queue, decode_threads;
    size_t worker_memory; /* an encode's working memory, at most (0: no limit) */
    /* Past max_batch_delay_ms a short batch still waits this much longer for
     * images of its kind that the decoders hold (0: not at all); a decode is
     * bounded by decode_timeout_ms, so they come. */
    int decode_wait_ms;
    ld_kernel kernel;     /* the workers' pools' matrix kernel */
} srv_queue_params;

int srv_queue_new(const srv_queue_params *params, srv_metrics *metrics, srv_queue **out,
                  char *err);
/* A reload loaded a model that needs more working memory: later encodes may
 * use up to bytes (the caller took them from the budget first). */
void srv_queue_set_worker_memory(srv_queue *q, size_t bytes);
/* Whether a worker can ever encode one h×w image of model: the least working
 * memory the encoder needs for it (*need) within what a worker may use
 * (*limit, 0: no limit).  The limit is sized for a square image of
 * max_image_pixels and banding cuts rows only, so a wide image of fewer
 * pixels may not fit; the encoder would refuse it (LD_ETOOLARGE) on every
 * try, so the front end refuses it first. */
bool srv_queue_image_fits(srv_queue *q, const ld_model *model, int h, int w, size_t *need,
                          size_t *limit);
/* Reserve n image slots (n <= max_queue): LD_ETOOLARGE when the queue is full
 * now.  A request is admitted while fewer than max_queue images wait, whatever
 * its size, so the queue holds at most max_queue + n - 1: were a request of
 * many images to wait for that many free slots at once, a stream of one-image
 * requests would take every slot as it freed and starve it. */
int srv_queue_admit(srv_queue *q, int n, char *err);
/* Give back slots admitted for a request that will not be submitted. */
void srv_queue_unadmit(srv_queue *q, int n);
/* Decode and queue an admitted job's images (takes its own reference). */
void srv_queue_submit(srv_queue *q, srv_job *job);
/* Draining: batches no longer wait to fill. */
void srv_queue_drain(srv_queue *q);
/* A job was finished early: drop its waiting images, stop batches of only such. */
void srv_queue_job_stopped(srv_queue *q);
int srv_queue_depth(srv_queue *q);
int srv_queue_capacity(const srv_queue *q);
/* Workers busy with one batch whose encoder made no progress for stall_ms. */
int srv_queue_stalled(srv_queue *q, int stall_ms);
/* Stop the decoders and workers: what is still waiting was cancelled by the
 * caller; running encodes are told to stop.  Waits until the monotonic
 * deadline; false when a thread did not stop by then (the caller then exits
 * without freeing: a thread stuck in a library cannot be taken back). */
bool srv_queue_stop(srv_queue *q, const struct timespec *deadline);
void srv_queue_free(srv_queue *q);

#endif
