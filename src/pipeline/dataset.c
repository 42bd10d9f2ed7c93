/* A dataset run: a reader thread and the encoding thread; see dataset.h.
 *
 * The reader walks the inputs in order.  For each one it decides whether a
 * whole output exists (skipped), decodes it (or notes why it cannot) and
 * puts an entry in a bounded queue.  The caller's thread takes entries,
 * holds decoded images in groups of one size until a group has vae_split of
 * them (or too many images are held, when the oldest group goes as it is),
 * encodes the group and writes each image's file.  So at most max_held
 * decoded images exist at once, whatever the dataset's size, and the reader
 * decodes while the encoder computes. */
#include "latentd/dataset.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "latentd/safefile.h"

typedef enum { ENTRY_IMAGE, ENTRY_SKIPPED, ENTRY_FAILED } entry_kind;

typedef struct {
    size_t index; /* into the inputs */
    entry_kind kind;
    ld_image img; /* ENTRY_IMAGE: owned */
    char message[LD_ERR_LEN];
} entry;

/* The queue between the reader and the encoder: a ring of entries.  `held`
 * counts decoded images anywhere (queue and groups), so the reader waits
 * when the encoder side holds max_held of them. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t changed; /* an entry was put or taken, or the run is ending */
    entry **ring;
    int cap, head, count;
    int held, max_held;
    bool reader_done; /* nothing more will be put */
    bool quit;        /* the encoder side has stopped: the reader ends */
} queue;

typedef struct {
    const ld_model *model;
    const ld_input_list *inputs;
    const ld_dataset_opts *opts;
    queue q;
} run_state;

/* Images of one size waiting for batch-mates. */
typedef struct {
    int h, w;
    entry **items;
    int n;
    uint64_t first_seen; /* the order groups were opened in: the oldest goes first */
} group;

void ld_dataset_opts_init(ld_dataset_opts *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->output.format = LD_FILE_NPY;
    opts->output.n_kinds = 1;
    opts->output.kinds[0] = LD_KIND_MOMENTS;
    ld_encode_opts_init(&opts->encode);
    opts->encode.vae_split = 1;
}

static void entry_free(entry *e)
{
    if (e)
        ld_image_free(&e->img);
    free(e);
}

static bool stop_requested(const ld_dataset_opts *o)
{
    return o->stop && atomic_load(o->stop);
}

/* ---- reader ---- */

/* An input's output below out_dir: its folder, opened without following a
 * link below out_dir (ld_tree_dir), and its name; path in full for messages. */
typedef struct {
    int dir;
    const char *name; /* in path */
    char path[4200];
} out_file;

static int out_open(const ld_dataset_opts *o, const ld_input *in, bool create, out_file *f,
                    char *err)
{
    f->dir = -1;
    const int rc = ld_output_path(o->out_dir, ld_input_rel(in), o->output.format, f->path,
                                  sizeof f->path, err);
    if (rc != LD_OK)
        return rc;
    return ld_tree_dir(o->out_dir, f->path + strlen(o->out_dir) + 1, create, &f->dir, &f->name,
                       err);
}

static void out_close(out_file *f)
{
    if (f->dir >= 0)
        close(f->dir);
    f->dir = -1;
}

/* Whether a whole output of this input exists (the reader's, so the
 * encoder side never waits on it). */
static bool output_whole(const run_state *st, const ld_input *in)
{
    const ld_dataset_opts *o = st->opts;
    out_file f;
    char inner[LD_ERR_LEN];
    bool whole = false;
    if (out_open(o, in, false, &f, inner) == LD_OK)
        whole = ld_output_check_at(f.dir, f.name, f.path, &o->output,
                                   ld_model_config(st->model)->latent_channels, inner) == LD_OK;
    out_close(&f);
    return whole;
}

static entry *read_one(run_state *st, size_t i)
{
    const ld_dataset_opts *o = st->opts;
    const ld_input *in = &st->inputs->items[i];
    entry *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->index = i;
    e->kind = ENTRY_FAILED;
    char inner[LD_ERR_LEN];
    if (!o->overwrite && output_whole(st, in)) {
        e->kind = ENTRY_SKIPPED;
        return e;
    }
    /* ld_image_load_file's messages start with the path; the event carries it apart */
    if (ld_image_load_file(in->path, &o->limits, &e->img, inner) != LD_OK) {
        const size_t n = strlen(in->path);
        snprintf(e->message, sizeof e->message, "%s",
                 strncmp(inner, in->path, n) == 0 && inner[n] == ':' ? inner + n + 2 : inner);
        return e;
    }
    int lh, lw;
    if (ld_model_latent_size(st->model, e->img.height, e->img.width, &lh, &lw, e->message) !=
        LD_OK) {
        ld_image_free(&e->img);
        return e;
    }
    e->kind = ENTRY_IMAGE;
    return e;
}

static void *reader_main(void *arg)
{
    run_state *st = arg;
    queue *q = &st->q;
    for (size_t i = 0; i < st->inputs->count; i++) {
        pthread_mutex_lock(&q->lock);
        /* room in the ring and, for an image, within max_held; checked before
         * decoding so the images held never exceed the bound */
        while (!q->quit && (q->count == q->cap || q->held >= q->max_held))
            pthread_cond_wait(&q->changed, &q->lock);
        const bool quit = q->quit;
        q->held++; /* reserve: this entry may hold an image */
        pthread_mutex_unlock(&q->lock);
        if (quit || stop_requested(st->opts))
            break;
        entry *e = read_one(st, i);
        pthread_mutex_lock(&q->lock);
        if (!e || e->kind != ENTRY_IMAGE)
            q->held--;
        if (e) {
            q->ring[(q->head + q->count) % q->cap] = e;
            q->count++;
        }
        pthread_cond_broadcast(&q->changed);
        pthread_mutex_unlock(&q->lock);
        if (!e)
            break; /* out of memory for an entry: the encoder side sees the reader end early */
    }
    pthread_mutex_lock(&q->lock);
    q->reader_done = true;
    pthread_cond_broadcast(&q->changed);
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

/* The next entry; NULL when the reader is done and the queue empty, or when
 * a stop was asked for (checked every 100 ms while waiting). */
static entry *take(run_state *st)
{
    queue *q = &st->q;
    pthread_mutex_lock(&q->lock);
    while (q->count == 0 && !q->reader_done && !stop_requested(st->opts)) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 100000000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&q->changed, &q->lock, &until);
    }
    entry *e = NULL;
    if (q->count > 0 && !stop_requested(st->opts)) {
        e = q->ring[q->head];
        q->head = (q->head + 1) % q->cap;
        q->count--;
        pthread_cond_broadcast(&q->changed);
    }
    pthread_mutex_unlock(&q->lock);
    return e;
}

static void release_images(queue *q, int n)
{
    pthread_mutex_lock(&q->lock);
    q->held -= n;
    pthread_cond_broadcast(&q->changed);
    pthread_mutex_unlock(&q->lock);
}

/* ---- encoder side ---- */

static void emit(run_state *st, ld_event_kind kind, size_t index, const char *message,
                 ld_dataset_counts *counts)
{
    if (kind == LD_EV_ENCODED)
        counts->encoded++;
    else if (kind == LD_EV_SKIPPED)
        counts->skipped++;
    else
        counts->failed++;
    if (st->opts->on_event) {
        const ld_dataset_event ev = {kind, &st->inputs->items[index], message, counts};
        st->opts->on_event(st->opts->event_ctx, &ev);
    }
}

/* One image's output file.  Whatever is wrong with its name alone (a folder
 * below out_dir that is a link, a folder, socket or reader-less FIFO at the
 * output name: LD_EINVAL) fails the image; a file system that refuses to
 * write (full, read-only, failing: LD_EIO) ends the run. */
static int write_one(run_state *st, size_t index, const ld_result *res,
                     ld_dataset_counts *counts, char *err)
{
    const ld_dataset_opts *o = st->opts;
    out_file f;
    char inner[LD_ERR_LEN];
    int rc = out_open(o, &st->inputs->items[index], true, &f, inner);
    if (rc == LD_OK) {
        rc = ld_result_write_at(res, &o->output, f.dir, f.name, f.path, inner);
        out_close(&f);
    }
    if (rc == LD_EINVAL) {
        emit(st, LD_EV_FAILED, index, inner, counts);
        return LD_OK;
    }
    if (rc != LD_OK)
        return ld_fail(err, rc, "%s", inner);
    emit(st, LD_EV_ENCODED, index, NULL, counts);
    return LD_OK;
}

/* Encode a group and write its outputs; the group is empty afterwards.  Only
 * a file that cannot be written is an error: a batch the encoder refuses
 * (memory, say) fails its images. */
static int flush(run_state *st, group *g, ld_dataset_counts *counts, char *err)
{
    const ld_dataset_opts *o = st->opts;
    const int n = g->n;
    const ld_image **images = calloc((size_t)n, sizeof *images);
    uint64_t *seeds = calloc((size_t)n, sizeof *seeds);
    ld_result *results = calloc((size_t)n, sizeof *results);
    char inner[LD_ERR_LEN];
    int rc = images && seeds && results ? LD_OK : ld_fail(inner, LD_ENOMEM, "out of memory");
    for (int i = 0; rc == LD_OK && i < n; i++) {
        const char *rel = ld_input_rel(&st->inputs->items[g->items[i]->index]);
        images[i] = &g->items[i]->img;
        seeds[i] = o->seed + ld_fnv1a64(rel, strlen(rel));
    }
    if (rc == LD_OK) {
        ld_encode_opts eo = o->encode;
        eo.vae_split = n;
        eo.seeds = eo.deterministic ? NULL : seeds;
        eo.cancel = o->stop; /* a stop ends the batch after its layer, not after the batch */
        rc = ld_encode_results(st->model, images, n, &eo, results, inner);
    }
    int status = LD_OK;
    for (int i = 0; i < n; i++) {
        const size_t index = g->items[i]->index;
        if (rc == LD_ECANCELLED) /* stopped: the next run encodes them */
            continue;
        if (rc != LD_OK) {
            emit(st, LD_EV_FAILED, index, inner, counts);
            continue;
        }
        if (status == LD_OK)
            status = write_one(st, index, &results[i], counts, err);
        ld_result_free(&results[i]);
    }
    for (int i = 0; i < n; i++)
        entry_free(g->items[i]);
    g->n = 0;
    release_images(&st->q, n);
    free(images);
    free(seeds);
    free(results);
    return status;
}

static group *oldest(group *groups, int n_groups)
{
    group *best = NULL;
    for (int i = 0; i < n_groups; i++)
        if (groups[i].n > 0 && (!best || groups[i].first_seen < best->first_seen))
            best = &groups[i];
    return best;
}

static int encode_side(run_state *st, ld_dataset_counts *counts, char *err)
{
    const ld_dataset_opts *o = st->opts;
    const int split = o->encode.vae_split > 0 ? o->encode.vae_split : 1;
    /* a group never holds more than split images; at most max_held are held */
    const int max_groups = st->q.max_held;
    group *groups = calloc((size_t)max_groups, sizeof *groups);
    entry **slots = calloc((size_t)max_groups * (size_t)split, sizeof *slots);
    if (!groups || !slots) {
        free(groups);
        free(slots);
        return ld_fail(err, LD_ENOMEM, "out of memory");
    }
    for (int i = 0; i < max_groups; i++)
        groups[i].items = slots + (size_t)i * split;
    int n_groups = 0, rc = LD_OK, held = 0;
    uint64_t seen = 0;
    entry *e;
    while (rc == LD_OK && (e = take(st))) {
        if (e->kind != ENTRY_IMAGE) {
            emit(st, e->kind == ENTRY_SKIPPED ? LD_EV_SKIPPED : LD_EV_FAILED, e->index,
                 e->message, counts);
            entry_free(e);
            continue;
        }
        group *g = NULL;
        for (int i = 0; i < n_groups && !g; i++)
            if (groups[i].h == e->img.height && groups[i].w == e->img.width)
                g = &groups[i];
        if (!g) {
            for (int i = 0; i < n_groups && !g; i++) /* an emptied group's place */
                if (groups[i].n == 0)
                    g = &groups[i];
            if (!g) {
                assert(n_groups < max_groups);
                g = &groups[n_groups++];
            }
            g->h = e->img.height;
            g->w = e->img.width;
        }
        if (g->n == 0)
            g->first_seen = seen++;
        g->items[g->n++] = e;
        held++;
        if (g->n == split) {
            held -= g->n;
            rc = flush(st, g, counts, err);
        } else if (held >= st->q.max_held) { /* the reader waits: make room */
            group *old = oldest(groups, n_groups);
            held -= old->n;
            rc = flush(st, old, counts, err);
        }
    }
    /* the rest, unless stopped: a stop leaves them for the next run */
    group *g;
    while (rc == LD_OK && !stop_requested(o) && (g = oldest(groups, n_groups))) {
        held -= g->n;
        rc = flush(st, g, counts, err);
    }
    for (int i = 0; i < n_groups; i++) {
        for (int k = 0; k < groups[i].n; k++)
            entry_free(groups[i].items[k]);
        groups[i].n = 0;
    }
    free(groups);
    free(slots);
    return rc;
}

int ld_dataset_run(const ld_model *model, const ld_input_list *inputs,
                   const ld_dataset_opts *opts, ld_dataset_counts *counts, char *err)
{
    assert(opts->out_dir && opts->output.n_kinds >= 1);
    memset(counts, 0, sizeof *counts);
    counts->total = inputs->count;
    const int split = opts->encode.vae_split > 0 ? opts->encode.vae_split : 1;
    run_state st = {.model = model, .inputs = inputs, .opts = opts};
    queue *q = &st.q;
    q->max_held = opts->max_held > 0 ? opts->max_held : 4 * split;
    if (q->max_held < split)
        q->max_held = split;
    q->cap = q->max_held + 64; /* skipped and failed entries hold no image */
    q->ring = calloc((size_t)q->cap, sizeof *q->ring);
    if (!q->ring)
        return ld_fail(err, LD_ENOMEM, "out of memory");
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->changed, NULL);
    /* the reader takes no signals: they belong to the caller's thread, and a
     * signal there must not turn a read into EINTR */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t reader;
    int rc = pthread_create(&reader, NULL, reader_main, &st);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        rc = ld_fail(err, LD_ENOMEM, "cannot start the reader thread: %s", strerror(rc));
    } else {
        rc = encode_side(&st, counts, err);
        pthread_mutex_lock(&q->lock);
        q->quit = true;
        pthread_cond_broadcast(&q->changed);
        pthread_mutex_unlock(&q->lock);
        pthread_join(reader, NULL);
    }
    while (q->count > 0) { /* what the reader put after a stop */
        entry_free(q->ring[q->head]);
        q->head = (q->head + 1) % q->cap;
        q->count--;
    }
    free(q->ring);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->changed);
    if (rc == LD_OK && stop_requested(opts) &&
        counts->encoded + counts->skipped + counts->failed < counts->total)
        rc = ld_fail(err, LD_ECANCELLED, "stopped after %zu of %zu images",
                     counts->encoded + counts->skipped + counts->failed, counts->total);
    return rc;
}
