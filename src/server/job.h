/* An encode job: one HTTP request's images, from their bytes to their results.
 *
 * The HTTP layer makes a job from the request it parsed and then only asks it
 * questions; the decoders and the queue's workers fill it in through the
 * functions below.  A job finishes exactly once — all images encoded, one
 * failed, or cancelled (client gone, deadline passed, shutdown) — and then
 * calls its on_done callback, from whichever thread finished it.
 *
 * Jobs are reference-counted: the connection holds one reference and each
 * image on its way through the decoder and the queue another, so a job
 * cancelled while a worker still encodes one of its images stays valid until
 * that worker lets go.  Results written after the job finished are ignored. */
#ifndef LATENTD_SERVER_JOB_H
#define LATENTD_SERVER_JOB_H

#include <stdbool.h>
#include <stdint.h>

#include "budget.h"
#include "latentd/encoder.h"
#include "latentd/image.h"
#include "models.h"
#include "request.h"
#include "response.h"

typedef struct srv_job srv_job;

/* Why a job stopped short. */
typedef enum {
    JOB_RUNNING = 0,
    JOB_DONE,          /* every image encoded */
    JOB_FAILED,        /* an image could not be decoded or encoded (status, message) */
    JOB_TIMED_OUT,     /* past its deadline */
    JOB_CLIENT_GONE,   /* the client hung up */
    JOB_SHUTDOWN       /* the daemon is stopping */
} srv_job_state;

typedef struct {
    bool deterministic, center;
    uint64_t seed;               /* image k samples with seed + k */
    ld_image_limits limits;      /* for decoding */
    srv_tensor_input tensor;     /* the images are tensor elements, not picture files */
    void (*on_done)(void *ctx);  /* called once when the job finishes */
    void *on_done_ctx;
} srv_job_params;

/* A job for the images in blobs (taken over: blobs is left empty) whose sizes
 * were probed as sizes[i] = {width, height}, to be encoded by model (the job
 * takes its own reference, dropped when it is freed: a reload cannot free
 * the weights under it); `reserved` bytes of budget are handed to the job,
 * which gives them back when it is freed.  One reference. */
int srv_job_new(srv_model *model, srv_blobs *blobs, const uint32_t (*sizes)[2],
                const srv_job_params *params, srv_budget *budget, size_t reserved,
                srv_job **out, char *err);
void srv_job_ref(srv_job *job);
void srv_job_unref(srv_job *job);

int srv_job_images(const srv_job *job);
/* The model the job was accepted for. */
const srv_model *srv_job_model(const srv_job *job);
/* The batching key of image i: same model, size and options → may share a batch. */
bool srv_job_same_batch(const srv_job *a, int i, const srv_job *b, int k);
int srv_job_image_width(const srv_job *job, int i);
int srv_job_image_height(const srv_job *job, int i);
bool srv_job_deterministic(const srv_job *job);
bool srv_job_center(const srv_job *job);
uint64_t srv_job_seed(const srv_job *job, int i);

/* Decoder side: decode image i (its bytes are freed afterwards). */
int srv_job_decode(srv_job *job, int i, char *err);
/* Worker side: image i's pixels [3, h, w]. */
const ld_image *srv_job_image(const srv_job *job, int i);
/* The worker is done with image i's pixels: free them early. */
void srv_job_drop_pixels(srv_job *job, int i);
/* Image i's results: the job takes result->data over (result->data is NULL
 * afterwards). */
void srv_job_store(srv_job *job, int i, ld_result *result);
/* Image i is finished (encoded, or failed with status/message); times for the log. */
void srv_job_image_done(srv_job *job, int i, int status, const char *message, double queue_wait,
                        double encode_seconds);
/* Stop the job now (first reason wins); its queued images are then dropped. */
void srv_job_cancel(srv_job *job, srv_job_state why);
void srv_job_fail(srv_job *job, int status, const char *message);
/* Whether the job has finished (its remaining images need no more work). */
bool srv_job_finished(const srv_job *job);

/* HTTP side, after on_done: the outcome, and the results when JOB_DONE. */
srv_job_state srv_job_outcome(const srv_job *job, int *status, char *message, size_t size);
const srv_results *srv_job_results(const srv_job *job);
/* The longest queue wait and encode time of its images, in seconds. */
void srv_job_times(const srv_job *job, double *queue_wait, double *encode_seconds);

#endif
