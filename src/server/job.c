#include "job.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "latentd/tensor_input.h"

typedef struct {
    uint8_t *bytes; /* the upload, until decoded */
    size_t len;
    ld_image image; /* [3, h, w] once decoded */
} job_image;

struct srv_job {
    pthread_mutex_t lock;
    int refs;
    int pending;               /* images not yet finished */
    srv_job_state state;       /* JOB_RUNNING until it finishes, once */
    atomic_bool stopped;       /* state != JOB_RUNNING, readable without the lock */
    int status;                /* JOB_FAILED: the ld_status */
    char message[LD_ERR_LEN];
    double queue_wait_max, encode_max;

    srv_job_params params;
    srv_model *model;          /* one reference */
    srv_budget *budget;
    size_t reserved;

    int n;
    job_image *images;
    ld_result *items;          /* one per image; data set once it is encoded */
    srv_results results;
};

static void job_free(srv_job *job)
{
    for (int i = 0; i < job->n; i++) {
        free(job->images[i].bytes);
        ld_image_free(&job->images[i].image);
    }
    free(job->images);
    for (int i = 0; job->items && i < job->n; i++)
        ld_result_free(&job->items[i]);
    free(job->items);
    srv_model_unref(job->model);
    if (job->budget)
        srv_budget_give(job->budget, job->reserved);
    pthread_mutex_destroy(&job->lock);
    free(job);
}

/* Every image's size and its latent's, from its probed size; the results
 * themselves come from the encoder (their bytes were reserved at admission). */
static int size_results(srv_job *job, const ld_model *model, const uint32_t (*sizes)[2],
                        char *err)
{
    for (int i = 0; i < job->n; i++) {
        ld_result *it = &job->items[i];
        it->width = (int)sizes[i][0];
        it->height = (int)sizes[i][1];
        it->channels = ld_model_config(model)->latent_channels;
        char inner[LD_ERR_LEN];
        if (ld_model_latent_size(model, it->height, it->width, &it->lh, &it->lw, inner) != LD_OK)
            return ld_fail(err, LD_EINVAL, "image %d: %s", i, inner);
    }
    return LD_OK;
}

int srv_job_new(srv_model *model, srv_blobs *blobs, const uint32_t (*sizes)[2],
                const srv_job_params *params, srv_budget *budget, size_t reserved,
                srv_job **out, char *err)
{
    *out = NULL;
    srv_job *job = calloc(1, sizeof *job);
    if (!job)
        return ld_fail(err, LD_ENOMEM, "out of memory");
    pthread_mutex_init(&job->lock, NULL);
    job->refs = 1;
    job->params = *params;
    job->n = blobs->count;
    job->images = calloc((size_t)job->n, sizeof *job->images);
    job->items = calloc((size_t)job->n, sizeof *job->items);
    if (!job->images || !job->items) {
        job_free(job);
        return ld_fail(err, LD_ENOMEM, "out of memory");
    }
    int rc = size_results(job, srv_model_weights(model), sizes, err);
    if (rc != LD_OK) {
        job_free(job);
        return rc;
    }
    for (int i = 0; i < job->n; i++) { /* take the bytes over */
        job->images[i].bytes = blobs->data[i];
        job->images[i].len = blobs->len[i];
        blobs->data[i] = NULL;
    }
    srv_blobs_free(blobs);
    srv_model_ref(model);
    job->model = model;
    /* the budget comes with the job only once nothing can fail */
    job->budget = budget;
    job->reserved = reserved;
    job->pending = job->n;
    job->results = (srv_results){job->n, job->items, params->deterministic, params->center,
                                 params->seed};
    *out = job;
    return LD_OK;
}

void srv_job_ref(srv_job *job)
{
    pthread_mutex_lock(&job->lock);
    job->refs++;
    pthread_mutex_unlock(&job->lock);
}

void srv_job_unref(srv_job *job)
{
    if (!job)
        return;
    pthread_mutex_lock(&job->lock);
    const bool last = --job->refs == 0;
    pthread_mutex_unlock(&job->lock);
    if (last)
        job_free(job);
}

int srv_job_images(const srv_job *job) { return job->n; }

const srv_model *srv_job_model(const srv_job *job) { return job->model; }

bool srv_job_same_batch(const srv_job *a, int i, const srv_job *b, int k)
{
    return a->model == b->model && a->items[i].width == b->items[k].width && a->items[i].height == b->items[k].height &&
           a->params.center == b->params.center &&
           a->params.deterministic == b->params.deterministic;
}

int srv_job_image_width(const srv_job *job, int i) { return job->items[i].width; }
int srv_job_image_height(const srv_job *job, int i) { return job->items[i].height; }
bool srv_job_deterministic(const srv_job *job) { return job->params.deterministic; }
bool srv_job_center(const srv_job *job) { return job->params.center; }
uint64_t srv_job_seed(const srv_job *job, int i) { return job->params.seed + (uint64_t)i; }

int srv_job_decode(srv_job *job, int i, char *err)
{
    job_image *img = &job->images[i];
    const srv_tensor_input *tensor = &job->params.tensor;
    int rc = tensor->active
                 ? ld_tensor_to_image(img->bytes, tensor->dtype, tensor->height, tensor->width, i,
                                      &job->params.limits, &img->image, err)
                 : ld_image_decode(img->bytes, img->len, &job->params.limits, &img->image, err);
    free(img->bytes);
    img->bytes = NULL;
    if (rc == LD_OK && (img->image.width != job->items[i].width ||
                        img->image.height != job->items[i].height))
        rc = ld_fail(err, LD_EFORMAT, "the image's header and its data disagree on its size");
    return rc;
}

const ld_image *srv_job_image(const srv_job *job, int i) { return &job->images[i].image; }

void srv_job_drop_pixels(srv_job *job, int i) { ld_image_free(&job->images[i].image); }

void srv_job_store(srv_job *job, int i, ld_result *result)
{
    /* each image's slot belongs to it alone; the lock in image_done publishes it */
    ld_result *it = &job->items[i];
    ld_result_free(it);
    it->data = result->data;
    result->data = NULL;
}

/* Under the lock: the job ends now with this outcome (the first one counts).
 * Returns whether the caller must call on_done (outside the lock). */
static bool finish_locked(srv_job *job, srv_job_state state, int status, const char *message)
{
    if (job->state != JOB_RUNNING)
        return false;
    job->state = state;
    job->status = status;
    snprintf(job->message, sizeof job->message, "%s", message ? message : "");
    atomic_store(&job->stopped, true);
    return true;
}

static void notify_done(srv_job *job, bool finished)
{
    if (finished && job->params.on_done)
        job->params.on_done(job->params.on_done_ctx);
}

void srv_job_image_done(srv_job *job, int i, int status, const char *message, double queue_wait,
                        double encode_seconds)
{
    (void)i;
    pthread_mutex_lock(&job->lock);
    if (queue_wait > job->queue_wait_max)
        job->queue_wait_max = queue_wait;
    if (encode_seconds > job->encode_max)
        job->encode_max = encode_seconds;
    bool finished = false;
    if (status != LD_OK)
        finished = finish_locked(job, JOB_FAILED, status, message);
    else if (--job->pending == 0)
        finished = finish_locked(job, JOB_DONE, LD_OK, NULL);
    pthread_mutex_unlock(&job->lock);
    notify_done(job, finished);
}

void srv_job_cancel(srv_job *job, srv_job_state why)
{
    static const char *const reasons[] = {
        [JOB_TIMED_OUT] = "the request waited past its deadline",
        [JOB_CLIENT_GONE] = "the client went away",
        [JOB_SHUTDOWN] = "the daemon is shutting down",
    };
    pthread_mutex_lock(&job->lock);
    const bool finished = finish_locked(job, why, LD_ECANCELLED,
                                        why < JOB_TIMED_OUT ? "cancelled" : reasons[why]);
    pthread_mutex_unlock(&job->lock);
    notify_done(job, finished);
}

void srv_job_fail(srv_job *job, int status, const char *message)
{
    pthread_mutex_lock(&job->lock);
    const bool finished = finish_locked(job, JOB_FAILED, status, message);
    pthread_mutex_unlock(&job->lock);
    notify_done(job, finished);
}

bool srv_job_finished(const srv_job *job) { return atomic_load(&job->stopped); }

srv_job_state srv_job_outcome(const srv_job *job, int *status, char *message, size_t size)
{
    srv_job *j = (srv_job *)job; /* the lock is the only thing changed */
    pthread_mutex_lock(&j->lock);
    srv_job_state state = j->state;
    if (status)
        *status = j->status;
    if (message)
        snprintf(message, size, "%s", j->message);
    pthread_mutex_unlock(&j->lock);
    return state;
}

const srv_results *srv_job_results(const srv_job *job) { return &job->results; }

void srv_job_times(const srv_job *job, double *queue_wait, double *encode_seconds)
{
    srv_job *j = (srv_job *)job;
    pthread_mutex_lock(&j->lock);
    *queue_wait = j->queue_wait_max;
    *encode_seconds = j->encode_max;
    pthread_mutex_unlock(&j->lock);
}
