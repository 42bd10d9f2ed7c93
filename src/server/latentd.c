/* latentd: load the model, start the workers and the HTTP front, then wait
 * for signals — SIGHUP reopens the log, SIGTERM/SIGINT drain and exit within
 * shutdown_timeout_ms — and watch that the workers make progress. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "http.h"
#include "log.h"

static void notify(const char *state)
{
#ifdef HAVE_LIBSYSTEMD
    sd_notify(0, state);
#else
    (void)state;
#endif
}

/* Workers × threads should not exceed the cores: say so when they do. */
static void check_threads(const srv_config *cfg)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores > 0 && (long)cfg->workers * cfg->threads > cores)
        srv_log(LOG_WARN, "%d workers x %d threads oversubscribe %ld cores", cfg->workers,
                cfg->threads, cores);
}

/* Signals arrive through a pipe: a library may start threads before main()
 * (OpenBLAS does, in a constructor), so no signal mask can be relied on to
 * steer SIGTERM to one thread; a handler runs in whichever thread gets it and
 * only writes the number down.  The pipe's write end is the one thing the
 * handler can reach, hence this one static. */
static int signal_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    const int saved = errno;
    const unsigned char byte = (unsigned char)sig;
    ssize_t n = write(signal_pipe[1], &byte, 1);
    (void)n; /* a full pipe already holds a signal to act on */
    errno = saved;
}

static int catch_signals(char *err)
{
    if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
        return ld_fail(err, LD_EIO, "cannot make the signal pipe: %s", strerror(errno));
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    const int signals[] = {SIGTERM, SIGINT, SIGHUP};
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++)
        if (sigaction(signals[i], &sa, NULL) != 0)
            return ld_fail(err, LD_EIO, "cannot catch signal %d", signals[i]);
    signal(SIGPIPE, SIG_IGN);
    return LD_OK;
}

/* The next signal, or 0 after timeout_ms without one. */
static int next_signal(int timeout_ms)
{
    struct pollfd p = {.fd = signal_pipe[0], .events = POLLIN};
    unsigned char byte;
    if (poll(&p, 1, timeout_ms) > 0 && read(signal_pipe[0], &byte, 1) == 1)
        return byte;
    return 0;
}

static void deadline_in(double seconds, struct timespec *ts)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    const double at = (double)ts->tv_sec + ts->tv_nsec * 1e-9 + seconds;
    ts->tv_sec = (time_t)at;
    ts->tv_nsec = (long)((at - (double)ts->tv_sec) * 1e9);
}

/* SIGTERM: refuse new work (503, the listener stays open so /readyz says so),
 * let admitted requests finish, then cancel what is left (503) so that the
 * whole stop takes at most shutdown_timeout_ms.  False when a worker did not
 * stop in time: the caller must then exit without freeing what it may use. */
static bool shut_down(srv_state *st)
{
    const double total = st->cfg->shutdown_timeout_ms / 1000.0;
    const double grace = total / 4 < 5.0 ? total / 4 : 5.0; /* to cancel and answer the rest */
    atomic_store(&st->draining, true);
    srv_queue_drain(st->queue);
    notify("STOPPING=1");
    srv_log(LOG_INFO, "draining %d requests (at most %.1f s)", atomic_load(&st->in_flight),
            total);
    struct timespec drained, answered, stopped;
    deadline_in(total - grace, &drained);
    deadline_in(total - grace / 2, &answered);
    deadline_in(total, &stopped);
    if (!srv_http_wait_idle(st, &drained)) {
        srv_log(LOG_WARN, "cancelling %d requests still running", atomic_load(&st->in_flight));
        srv_conns_cancel_all(st->conns, JOB_SHUTDOWN);
        srv_http_wait_idle(st, &answered);
    }
    srv_http_stop(st);
    if (!srv_queue_stop(st->queue, &stopped)) {
        srv_log(LOG_ERROR, "a worker did not stop within shutdown_timeout_ms; exiting anyway");
        return false;
    }
    return true;
}

/* The watchdog: a worker whose encoder makes no progress is reported. */
static void watch_workers(srv_state *st)
{
    const int stalled = srv_queue_stalled(st->queue, st->cfg->stall_timeout_ms);
    const int before = atomic_exchange(&st->workers_stalled, stalled);
    if (stalled > before)
        srv_log(LOG_ERROR, "%d worker(s) made no progress for %d ms: not ready", stalled,
                st->cfg->stall_timeout_ms);
    else if (stalled < before)
        srv_log(LOG_INFO, "workers progress again (%d stalled)", stalled);
}

/* Until SIGTERM/SIGINT: SIGHUP reopens the log; once a second the watchdog. */
static void wait_for_signals(srv_state *st)
{
    for (;;) {
        const int sig = next_signal(1000);
        if (sig == 0) {
            watch_workers(st);
            continue;
        }
        if (sig == SIGHUP) {
            char err[LD_ERR_LEN];
            if (srv_log_reopen(err) != LD_OK)
                srv_log(LOG_ERROR, "cannot reopen the log: %s", err);
            else
                srv_log(LOG_INFO, "log reopened");
            continue;
        }
        srv_log(LOG_INFO, "signal %d: shutting down", sig);
        return;
    }
}

/* Memory every worker and decoder may need at once, taken from the budget at
 * start: an encode of one image of max_image_pixels (larger batches of smaller
 * images fit in the same room; the encoder halves a chunk that would not),
 * the worker's batch buffers, and the decoders' scratch. */
static int reserve_fixed_memory(srv_state *st, size_t *worker_memory, char *err)
{
    const srv_config *cfg = st->cfg;
    const int side = ((int)ceil(sqrt((double)cfg->max_image_pixels)) + 7) / 8 * 8;
    int lh, lw;
    if (ld_model_latent_size(st->model, side, side, &lh, &lw, err) != LD_OK)
        return ld_fail(err, LD_EINVAL, "max_image_pixels is too small for this model");
    const size_t channels = (size_t)ld_model_config(st->model)->latent_channels;
    const size_t pixels = (size_t)cfg->max_image_pixels;
    *worker_memory = ld_encode_workspace_bytes(st->model, 1, side, side, cfg->threads);
    const size_t batch = (size_t)cfg->vae_split *
                         (3 * pixels + 5 * channels * (size_t)lh * (size_t)lw) * sizeof(float);
    const size_t decoders = (size_t)cfg->decode_threads * 8 * pixels;
    const size_t fixed = (size_t)cfg->workers * (*worker_memory + batch) + decoders;
    const size_t one_body = 3 * cfg->max_body_bytes;
    if (fixed + one_body > cfg->memory_budget_bytes || !srv_budget_take(&st->budget, fixed))
        return ld_fail(err, LD_EINVAL, "memory_budget_bytes (%zu MiB) is too small: %d workers "
                       "need %zu MiB for images of max_image_pixels at vae_split %d, and one "
                       "request of max_body_bytes %zu MiB more; raise it or lower those",
                       cfg->memory_budget_bytes >> 20, cfg->workers, fixed >> 20, cfg->vae_split,
                       one_body >> 20);
    st->budget_fixed = fixed;
    srv_log(LOG_INFO, "memory budget %zu MiB: %zu MiB kept for %d workers and %d decoders, "
            "the rest for requests", cfg->memory_budget_bytes >> 20, fixed >> 20, cfg->workers,
            cfg->decode_threads);
    return LD_OK;
}

static int serve(srv_config *cfg)
{
    char err[LD_ERR_LEN];
    srv_state st = {.cfg = cfg};
    srv_metrics_init(&st.metrics);
    srv_budget_init(&st.budget, cfg->memory_budget_bytes);
    ld_model *model = NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = ld_model_load(cfg->model, NULL, &model, err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    size_t worker_memory = 0;
    if (rc == LD_OK) {
        st.model = model;
        srv_log(LOG_INFO, "model %s (%s layout, config %s, latents %s) loaded in %.2f s",
                ld_model_name(model), ld_model_layout(model), ld_model_config_source(model),
                ld_model_scaling(model),
                (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9);
        check_threads(cfg);
        rc = reserve_fixed_memory(&st, &worker_memory, err);
    }
    if (rc == LD_OK) {
        const srv_queue_params qp = {cfg->vae_split,          cfg->workers,   cfg->threads,
                                     cfg->max_batch_delay_ms, cfg->max_queue, cfg->decode_threads,
                                     worker_memory};
        rc = srv_queue_new(model, &qp, &st.metrics, &st.queue, err);
    }
    if (rc == LD_OK)
        rc = srv_http_start(&st, err);
    bool clean = true;
    if (rc == LD_OK) {
        srv_log(LOG_INFO, "listening on %s:%d (vae_split %d, %d workers x %d threads, "
                "queue %d, batch delay %d ms)", cfg->listen_host, st.port, cfg->vae_split,
                cfg->workers, cfg->threads, cfg->max_queue, cfg->max_batch_delay_ms);
        notify("READY=1");
        wait_for_signals(&st);
        clean = shut_down(&st);
    } else {
        srv_log(LOG_ERROR, "%s", err);
        srv_http_stop(&st);
        struct timespec soon;
        deadline_in(5.0, &soon);
        clean = !st.queue || srv_queue_stop(st.queue, &soon);
    }
    if (!clean) {
        /* A worker may still be inside the encoder.  exit() would run the
         * libraries' destructors under it (OpenBLAS frees its buffers), which
         * turns a bounded shutdown into a crash: leave without them. */
        srv_log_close();
        _exit(1);
    }
    srv_queue_free(st.queue);
    ld_model_free(model);
    srv_metrics_destroy(&st.metrics);
    srv_log(LOG_INFO, "stopped");
    return rc == LD_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    srv_config cfg;
    char err[LD_ERR_LEN];
    int rc = catch_signals(err);
    if (rc != LD_OK) {
        fprintf(stderr, "latentd: %s\n", err);
        return 2;
    }
    srv_config_defaults(&cfg);
    rc = srv_config_from_args(&cfg, argc, argv, err);
    if (rc == 1) {
        srv_config_usage(stdout);
        return 0;
    }
    if (rc == LD_OK)
        rc = srv_config_finish(&cfg, err);
    if (rc == LD_OK)
        rc = srv_log_open(cfg.log_file[0] ? cfg.log_file : NULL, cfg.log_level, err);
    if (rc != LD_OK) {
        fprintf(stderr, "latentd: %s\n", err);
        return 2;
    }
    ld_encoder_init();
    rc = serve(&cfg);
    srv_log_close();
    return rc;
}
