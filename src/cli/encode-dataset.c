/* latent-encode --out-dir: a whole dataset, one output file per image.
 * Lists and shards the inputs, runs ld_dataset_run and reports: a bar on a
 * terminal, else JSON lines a log collector can read; failures as they
 * happen and in --failures; SIGINT/SIGTERM end the run within seconds. */
#include "cli.h"
#include "latentd/dataset.h"
#include "latentd/safefile.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic bool stop_flag;
static volatile sig_atomic_t stop_signal;

/* After a stop, the seconds the run has to end by itself before the signal
 * ends the process.  The encoder stops after the layer it is in and the
 * reader never waits on a file, so this is for a write that cannot finish:
 * an output, --failures or stderr that is a FIFO or pipe nobody reads. */
#define STOP_GRACE_S 5

static void on_signal(int sig)
{
    stop_signal = sig;
    atomic_store(&stop_flag, true);
    alarm(STOP_GRACE_S);
}

/* The grace is over: the stop signal again, now with its default action, so
 * the exit status still says which signal it was. */
static void on_grace_over(int sig)
{
    (void)sig;
    const int stop = (int)stop_signal;
    signal(stop, SIG_DFL);
    raise(stop);
    _exit(128 + stop); /* only if the signal was blocked here */
}

/* SA_RESTART: reads in progress go on; SA_RESETHAND: a second ^C kills at once. */
static void catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_grace_over;
    sa.sa_flags = 0;
    sigaction(SIGALRM, &sa, NULL);
}

typedef struct {
    const cli_args *a;
    progress_mode mode;
    ld_shard shard;
    bool sharded;
    FILE *failures;
    int failures_errno; /* the first failed write to --failures (0: none) */
    double start, last; /* monotonic seconds: the run's start, the last report */
    bool bar_drawn;     /* a bar line is on the terminal without its newline */
} reporter;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* text as the inside of a JSON string: quotes, backslashes and control
 * characters escaped (a file name may hold any byte but '/' and NUL) */
static void json_text(FILE *fp, const char *text)
{
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(fp, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(fp, "\\u%04x", *p);
        else
            fputc(*p, fp);
    }
}

/* text as one field of a --failures line: backslash, tab, newline and
 * carriage return as \\ \t \n \r, other control bytes as \xNN, so a name
 * holding any of them stays on its line and in its column */
static void tsv_text(FILE *fp, const char *text)
{
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p == '\\')
            fputs("\\\\", fp);
        else if (*p == '\t')
            fputs("\\t", fp);
        else if (*p == '\n')
            fputs("\\n", fp);
        else if (*p == '\r')
            fputs("\\r", fp);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(fp, "\\x%02x", *p);
        else
            fputc(*p, fp);
    }
}

static void clear_bar(reporter *r)
{
    if (r->bar_drawn)
        fputs("\r\033[K", stderr);
    r->bar_drawn = false;
}

/* "1:02:03" or "2:03" */
static void clock_text(char *buf, size_t size, double seconds)
{
    if (!(seconds >= 0) || seconds > 1e8) {
        snprintf(buf, size, "?");
        return;
    }
    const long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, size, "%ld:%02ld", s / 60, s % 60);
}

static void report(reporter *r, const ld_dataset_counts *c, const char *event, const char *status)
{
    const double elapsed = now() - r->start;
    const size_t done = c->encoded + c->skipped + c->failed;
    const double rate = elapsed > 0 ? c->encoded / elapsed : 0;
    const double eta = rate > 0 ? (double)(c->total - done) / rate : -1;
    if (r->mode == PROGRESS_JSON) {
        fprintf(stderr, "{\"event\": \"%s\"", event);
        if (status)
            fprintf(stderr, ", \"status\": \"%s\"", status);
        if (r->sharded)
            fprintf(stderr, ", \"shard\": \"%d/%d\"", r->shard.index, r->shard.count);
        fprintf(stderr,
                ", \"total\": %zu, \"done\": %zu, \"encoded\": %zu, \"skipped\": %zu, "
                "\"failed\": %zu, \"images_per_s\": %.3f, \"elapsed_s\": %.1f",
                c->total, done, c->encoded, c->skipped, c->failed, rate, elapsed);
        if (eta >= 0)
            fprintf(stderr, ", \"eta_s\": %.0f", eta);
        fputs("}\n", stderr);
        return;
    }
    if (r->mode != PROGRESS_BAR)
        return;
    char eta_text[32];
    clock_text(eta_text, sizeof eta_text, eta);
    const int width = 30, filled = c->total ? (int)((double)width * done / c->total) : width;
    clear_bar(r);
    fprintf(stderr, "[%.*s%*s] %zu/%zu  %.2f img/s  ETA %s", filled,
            "==============================", width - filled, "", done, c->total, rate,
            eta_text);
    if (c->skipped || c->failed)
        fprintf(stderr, "  (%zu skipped, %zu failed)", c->skipped, c->failed);
    r->bar_drawn = true;
    if (status) { /* the end: the bar stays */
        fputc('\n', stderr);
        r->bar_drawn = false;
    }
}

/* One line of --failures.  A list that cannot be written (a full disk) is
 * said once, at once, and makes the run's status non-zero: the run goes on,
 * its outputs are still worth having. */
static void list_failure(reporter *r, const ld_dataset_event *ev)
{
    tsv_text(r->failures, ev->input->path);
    fputc('\t', r->failures);
    tsv_text(r->failures, ev->message);
    fputc('\n', r->failures);
    if ((fflush(r->failures) != 0 || ferror(r->failures)) && !r->failures_errno) {
        r->failures_errno = errno ? errno : EIO;
        clear_bar(r);
        fprintf(stderr, "latent-encode: %s: cannot write the list of failures: %s\n",
                r->a->failures, strerror(r->failures_errno));
    }
}

/* Close --failures; whether every line of it was written. */
static bool close_failures(reporter *r)
{
    if (!r->failures)
        return true;
    const bool failed_before = r->failures_errno != 0;
    const bool closed = fclose(r->failures) == 0;
    r->failures = NULL;
    if (!closed && !failed_before)
        fprintf(stderr, "latent-encode: %s: cannot write the list of failures: %s\n",
                r->a->failures, strerror(errno));
    return closed && !failed_before;
}

static void on_event(void *ctx, const ld_dataset_event *ev)
{
    reporter *r = ctx;
    if (ev->kind == LD_EV_FAILED) {
        if (r->failures)
            list_failure(r, ev);
        if (r->mode == PROGRESS_JSON) {
            fputs("{\"event\": \"failed\", \"path\": \"", stderr);
            json_text(stderr, ev->input->path);
            fputs("\", \"error\": \"", stderr);
            json_text(stderr, ev->message);
            fputs("\"}\n", stderr);
        } else {
            clear_bar(r);
            fprintf(stderr, "latent-encode: %s: %s\n", ev->input->path, ev->message);
        }
    }
    const double t = now();
    const double every = r->mode == PROGRESS_BAR ? 0.25 : r->a->progress_interval;
    if (t - r->last >= every) {
        r->last = t;
        report(r, ev->counts, "progress", NULL);
    }
}

static int list_inputs(const cli_args *a, ld_input_list *in, char *err)
{
    const ld_input_filter filter = {a->include, a->n_include, a->exclude, a->n_exclude};
    for (int i = 0; i < a->n_images; i++) {
        const int rc = ld_inputs_add(in, a->images[i], &filter, err);
        if (rc != LD_OK)
            return rc;
    }
    return ld_inputs_finish(in, err);
}

/* --failures: made anew (or a FIFO or device opened as it is), see ld_create_file */
static int open_failures(const char *path, FILE **out, char *err)
{
    int fd;
    const int rc = ld_create_file(path, &fd, err);
    if (rc != LD_OK)
        return rc;
    if (!(*out = fdopen(fd, "w"))) {
        const int e = errno;
        close(fd);
        return ld_fail(err, LD_ENOMEM, "%s: %s", path, strerror(e));
    }
    return LD_OK;
}

int cli_run_dataset(const cli_args *a, const ld_model *model)
{
    char err[LD_ERR_LEN];
    reporter r = {.a = a, .mode = a->progress};
    if (r.mode == PROGRESS_AUTO)
        r.mode = a->quiet ? PROGRESS_NONE : isatty(STDERR_FILENO) ? PROGRESS_BAR : PROGRESS_JSON;
    if (a->shard) {
        if (ld_shard_parse(a->shard, &r.shard, err) != LD_OK) {
            fprintf(stderr, "latent-encode: %s\n", err);
            return 2;
        }
        r.sharded = true;
    }
    ld_input_list inputs = {0};
    int rc = list_inputs(a, &inputs, err);
    if (rc != LD_OK) {
        fprintf(stderr, "latent-encode: %s\n", err);
        ld_inputs_free(&inputs);
        return 1;
    }
    if (r.sharded)
        ld_inputs_keep_shard(&inputs, &r.shard);
    if (a->failures && open_failures(a->failures, &r.failures, err) != LD_OK) {
        fprintf(stderr, "latent-encode: %s\n", err);
        ld_inputs_free(&inputs);
        return 1;
    }
    /* only now: until here nothing is written, and the default action ends
     * a listing or an open that waits (a FIFO) at once */
    catch_signals();
    ld_pool *pool = NULL;
    rc = ld_pool_new(a->threads, &pool, err);
    if (rc == LD_OK)
        rc = ld_pool_set_kernel(pool, a->kernel, err);
    ld_dataset_counts counts = {.total = inputs.count};
    if (rc == LD_OK) {
        ld_dataset_opts opts;
        ld_dataset_opts_init(&opts);
        char seed_text[32], split_text[16];
        ld_st_meta meta[8];
        opts.out_dir = a->out_dir;
        opts.output = a->spec;
        opts.output.meta = meta;
        opts.output.n_meta = cli_metadata(model, a, meta, seed_text, split_text);
        opts.overwrite = a->overwrite;
        opts.encode.vae_split = a->vae_split > 0 ? a->vae_split : 1;
        opts.encode.pool = pool;
        opts.encode.center_input = a->center;
        opts.encode.deterministic = !a->sample;
        opts.encode.max_memory = a->max_memory;
        opts.seed = a->seed;
        opts.limits.max_file_bytes = a->max_file_bytes;
        opts.stop = &stop_flag;
        opts.on_event = on_event;
        opts.event_ctx = &r;
        r.start = r.last = now();
        rc = ld_dataset_run(model, &inputs, &opts, &counts, err);
    }
    ld_pool_free(pool);
    ld_inputs_free(&inputs);
    const bool listed = close_failures(&r);
    const char *status = rc == LD_OK ? "complete" : rc == LD_ECANCELLED ? "stopped" : "error";
    report(&r, &counts, "done", status);
    if (rc == LD_ECANCELLED) {
        fprintf(stderr, "latent-encode: %s by signal %d; run again to finish\n", err,
                (int)stop_signal);
        return 128 + (int)stop_signal;
    }
    if (rc != LD_OK) {
        fprintf(stderr, "latent-encode: %s\n", err);
        return 1;
    }
    if (counts.failed)
        fprintf(stderr, "latent-encode: %zu of %zu images failed%s%s\n", counts.failed,
                counts.total, a->failures && listed ? ", listed in " : "",
                a->failures && listed ? a->failures : "");
    return counts.failed || !listed ? 1 : 0;
}
