/* latentd: load the model, start the workers and the HTTP front, then wait
 * for signals — SIGHUP re-reads the config (what can change while running)
 * and reopens the log, SIGTERM/SIGINT drain and exit within
 * shutdown_timeout_ms — and watch that the workers make progress.
 *
 * Under systemd (Type=notify) it says READY=1 once the model is loaded and
 * the socket listens, keeps a STATUS= line current, says RELOADING=1 ...
 * READY=1 around SIGHUP and STOPPING=1 when it drains, and feeds the
 * watchdog (WatchdogSec=) only while every worker makes progress or is idle.
 * A socket passed by latentd.socket is served instead of binding `listen`. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "log.h"
#include "sdnotify.h"

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

static double now_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
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
    srv_sd_notify("STOPPING=1\nSTATUS=draining %d requests", atomic_load(&st->in_flight));
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

/* The stall detector: a worker whose encoder makes no progress is reported. */
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

/* systemd's STATUS= line (systemctl status shows it), sent when it changes. */
static void report_status(srv_state *st, char *last, size_t size)
{
    char status[256];
    snprintf(status, sizeof status, "model %s; queue %d/%d; %d requests in flight; "
             "%d workers, %d stalled", ld_model_name(st->model), srv_queue_depth(st->queue),
             srv_queue_capacity(st->queue), atomic_load(&st->in_flight), st->cfg->workers,
             atomic_load(&st->workers_stalled));
    if (strcmp(status, last) != 0) {
        srv_sd_notify_nowait("STATUS=%s", status);
        snprintf(last, size, "%s", status);
    }
}

/* What the process was started with: SIGHUP reads the config from it again. */
typedef struct {
    int argc;
    char **argv;
} srv_args;

/* SIGHUP: read the config again, from the same -c file and flags as at start.
 * What a running daemon can change safely changes now: the log's file and
 * level (the log is reopened either way, which also serves logrotate).
 * Everything else is read by many threads without a lock or sized things at
 * start (the model, the queue, the pools, the socket), so a change to it is
 * named in the log and waits for a restart.  A config that does not parse
 * changes nothing. */
static void reload(srv_config *live, const srv_args *args)
{
    char err[LD_ERR_LEN], changed[512];
    srv_config fresh;
    srv_config_defaults(&fresh);
    int rc = srv_config_from_args(&fresh, args->argc, args->argv, err);
    if (rc == LD_OK)
        rc = srv_config_finish(&fresh, err);
    if (rc != LD_OK) {
        srv_log(LOG_ERROR, "reload: the config was not applied: %s", err);
        if (srv_log_reopen(err) != LD_OK)
            srv_log(LOG_ERROR, "cannot reopen the log: %s", err);
        return;
    }
    if (srv_log_change(fresh.log_file, fresh.log_level, err) != LD_OK) {
        srv_log(LOG_ERROR, "reload: cannot open the new log file, kept the old: %s", err);
        snprintf(fresh.log_file, sizeof fresh.log_file, "%s", live->log_file);
    }
    const bool log_changed = live->log_level != fresh.log_level ||
                             strcmp(live->log_file, fresh.log_file) != 0;
    /* applied: only the settings that wait for a restart differ now */
    live->log_level = fresh.log_level;
    memcpy(live->log_file, fresh.log_file, sizeof live->log_file);
    if (srv_config_changes(live, &fresh, changed, sizeof changed) > 0)
        srv_log(LOG_WARN, "reload: changed settings that take a restart: %s", changed);
    srv_log(LOG_INFO, "reloaded the config: %s", log_changed ? "log_file/log_level applied"
                                                           : "the log reopened");
}

/* Until SIGTERM/SIGINT: SIGHUP reloads; once a second the stall detector and
 * the STATUS= line; every half WatchdogSec= a WATCHDOG=1, but only while no
 * worker is stalled — systemd then restarts a daemon whose encoder is stuck
 * (after stall_timeout_ms plus WatchdogSec), as it does one whose main loop
 * is stuck. */
static void wait_for_signals(srv_state *st, srv_config *cfg, const srv_args *args,
                             uint64_t watchdog_usec)
{
    const double ping_every = watchdog_usec / 2e6; /* seconds; 0: no watchdog */
    char status[256] = "";
    report_status(st, status, sizeof status);
    double next_tick = now_seconds() + 1.0, next_ping = now_seconds();
    for (;;) {
        double now = now_seconds();
        if (watchdog_usec && now >= next_ping) {
            if (atomic_load(&st->workers_stalled) == 0)
                srv_sd_notify_nowait("WATCHDOG=1");
            next_ping = now + ping_every;
        }
        if (now >= next_tick) {
            watch_workers(st);
            report_status(st, status, sizeof status);
            next_tick = now + 1.0;
        }
        const double until = watchdog_usec && next_ping < next_tick ? next_ping : next_tick;
        const int sig = next_signal((int)ceil((until - now) * 1000.0));
        if (sig == 0)
            continue;
        if (sig == SIGHUP) {
            struct timespec mono;
            clock_gettime(CLOCK_MONOTONIC, &mono);
            srv_sd_notify("RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading the config",
                          (unsigned long long)mono.tv_sec * 1000000ull +
                              (unsigned long long)mono.tv_nsec / 1000);
            reload(cfg, args);
            status[0] = '\0'; /* say it again after READY */
            srv_sd_notify("READY=1");
            report_status(st, status, sizeof status);
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

/* "HOST:PORT" of a socket systemd passed, as the log's "listening on" says it. */
static void socket_name(int fd, char *out, size_t size)
{
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (getsockname(fd, (struct sockaddr *)&addr, &len) == 0) {
        if (addr.ss_family == AF_INET) {
            const struct sockaddr_in *in = (const struct sockaddr_in *)&addr;
            inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
            port = ntohs(in->sin_port);
        } else if (addr.ss_family == AF_INET6) {
            const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&addr;
            inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
            port = ntohs(in6->sin6_port);
        }
    }
    snprintf(out, size, "%s:%d", host, port);
}

static int serve(srv_config *cfg, const srv_args *args)
{
    char err[LD_ERR_LEN];
    srv_state st = {.cfg = cfg};
    int passed_fd = -1;
    if (srv_sd_listen_socket(&passed_fd, err) != LD_OK) {
        srv_log(LOG_ERROR, "%s", err);
        srv_sd_notify("STATUS=failed: %s", err);
        return 1;
    }
    st.passed_fd = passed_fd > 0 ? passed_fd : 0;
    srv_sd_notify("STATUS=loading the model %s", cfg->model);
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
        char where[sizeof cfg->listen_host + 16];
        if (st.passed_fd)
            socket_name(st.passed_fd, where, sizeof where);
        else
            snprintf(where, sizeof where, "%s:%d", cfg->listen_host, st.port);
        srv_log(LOG_INFO, "listening on %s%s (vae_split %d, %d workers x %d threads, "
                "queue %d, batch delay %d ms)", where,
                st.passed_fd ? ", a socket passed by systemd" : "", cfg->vae_split,
                cfg->workers, cfg->threads, cfg->max_queue, cfg->max_batch_delay_ms);
        const uint64_t watchdog_usec = srv_sd_watchdog_usec();
        if (watchdog_usec)
            srv_log(LOG_INFO, "systemd watchdog: %.3f s, pinged every %.3f s while workers "
                    "progress", watchdog_usec / 1e6, watchdog_usec / 2e6);
        /* only now: the model is loaded, the workers run and the socket accepts */
        srv_sd_notify("READY=1");
        wait_for_signals(&st, cfg, args, watchdog_usec);
        clean = shut_down(&st);
    } else {
        srv_log(LOG_ERROR, "%s", err);
        srv_sd_notify("STATUS=failed: %s", err);
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
    const srv_args args = {argc, argv};
    rc = serve(&cfg, &args);
    srv_log_close();
    return rc;
}
