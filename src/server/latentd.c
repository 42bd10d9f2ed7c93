/* latentd: load the models, start the workers and the HTTP front, then wait
 * for signals — SIGHUP re-reads the config (what can change while running:
 * the models, loaded beside the old ones and swapped in once loaded, and the
 * log) and reopens the log, SIGTERM/SIGINT drain and exit within
 * shutdown_timeout_ms — and watch that the workers make progress.
 *
 * Under systemd (Type=notify) it says READY=1 once every model is loaded and
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
#include "models.h"
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
    char status[256], names[128] = "";
    srv_model_set set;
    srv_models_snapshot(st->models, &set);
    for (int i = 0; i < set.n; i++) {
        const size_t used = strlen(names);
        snprintf(names + used, sizeof names - used, "%s%s", i ? "," : "",
                 srv_model_name(set.models[i]));
    }
    srv_model_set_release(&set);
    snprintf(status, sizeof status, "model%s %s; queue %d/%d; %d requests in flight; "
             "%d workers, %d stalled", strchr(names, ',') ? "s" : "", names,
             srv_queue_depth(st->queue),
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

static bool reload_models(srv_state *st, const srv_config *fresh, bool ping_watchdog);

/* SIGHUP: read the config again, from the same -c file and flags as at start.
 * What a running daemon can change safely changes now: the models (see
 * reload_models), the API key (its file is read again) and the log's file and level (the log is reopened either
 * way, which also serves logrotate).  Everything else is read by many threads
 * without a lock or sized things at start (the queue, the pools, the socket),
 * so a change to it is named in the log and waits for a restart.  A config
 * that does not parse changes nothing. */
static void reload(srv_state *st, srv_config *live, const srv_args *args, bool ping_watchdog)
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
    /* applied: only the settings that wait for a restart differ now (the
     * models are read by this thread alone, and by the workers through the
     * registry) */
    const bool models_changed = reload_models(st, &fresh, ping_watchdog);
    /* the key file is read again: a rotated key applies now, the old one stops */
    if (strcmp(live->api_key, fresh.api_key) != 0)
        srv_log(fresh.api_key[0] ? LOG_INFO : LOG_WARN, "reload: %s",
                fresh.api_key[0] ? "the API key changed; the old one no longer works"
                                 : "no api_key_file now: requests need no key");
    srv_auth_set(&st->auth, fresh.api_key);
    memcpy(live->api_key_file, fresh.api_key_file, sizeof live->api_key_file);
    memcpy(live->api_key, fresh.api_key, sizeof live->api_key);
    live->log_level = fresh.log_level;
    memcpy(live->log_file, fresh.log_file, sizeof live->log_file);
    if (models_changed) { /* else the running set (and its config) stays */
        memcpy(live->models, fresh.models, sizeof live->models);
        live->n_models = fresh.n_models;
        live->bare_model = fresh.bare_model;
        memcpy(live->default_model, fresh.default_model, sizeof live->default_model);
    }
    if (srv_config_changes(live, &fresh, changed, sizeof changed) > 0)
        srv_log(LOG_WARN, "reload: changed settings that take a restart: %s", changed);
    srv_log(models_changed ? LOG_INFO : LOG_WARN, "reloaded the config: %s%s",
            log_changed ? "log_file/log_level applied" : "the log reopened",
            models_changed ? "" : "; the models are the running ones (see above)");
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
    double next_tick = ld_now_seconds() + 1.0, next_ping = ld_now_seconds();
    for (;;) {
        double now = ld_now_seconds();
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
            reload(st, cfg, args, watchdog_usec != 0);
            status[0] = '\0'; /* say it again after READY */
            srv_sd_notify("READY=1");
            report_status(st, status, sizeof status);
            continue;
        }
        srv_log(LOG_INFO, "signal %d: shutting down", sig);
        return;
    }
}

/* Memory every worker and decoder may need at once, taken from the budget:
 * an encode of one image of max_image_pixels (larger batches of smaller
 * images fit in the same room; the encoder halves a chunk that would not)
 * and the worker's batch buffers, each for the largest model loaded since
 * start (a job of a model a reload dropped may still run), and the decoders'
 * scratch.  The weights themselves are outside the budget. */
static int fixed_memory(srv_state *st, const srv_model_set *set, size_t *worker_memory,
                        size_t *batch_memory, size_t *fixed, char *err)
{
    const srv_config *cfg = st->cfg;
    const int side = ((int)ceil(sqrt((double)cfg->max_image_pixels)) + 7) / 8 * 8;
    const size_t pixels = (size_t)cfg->max_image_pixels;
    size_t worker = st->worker_memory, batch = st->batch_memory;
    for (int i = 0; i < set->n; i++) {
        const ld_model *m = srv_model_weights(set->models[i]);
        int lh, lw;
        if (ld_model_latent_size(m, side, side, &lh, &lw, err) != LD_OK)
            return ld_fail(err, LD_EINVAL, "max_image_pixels is too small for the model %s",
                           srv_model_name(set->models[i]));
        const size_t channels = (size_t)ld_model_config(m)->latent_channels;
        const size_t one = ld_encode_workspace_bytes(m, 1, side, side, cfg->threads);
        const size_t buffers = (size_t)cfg->vae_split *
                               (3 * pixels + 5 * channels * (size_t)lh * (size_t)lw) *
                               sizeof(float);
        worker = one > worker ? one : worker;
        batch = buffers > batch ? buffers : batch;
    }
    const size_t decoders = (size_t)cfg->decode_threads * 8 * pixels;
    *worker_memory = worker;
    *batch_memory = batch;
    *fixed = (size_t)cfg->workers * (worker + batch) + decoders;
    return LD_OK;
}

/* Take the fixed memory that set needs beyond what is held already (all of
 * it at start); refused when the budget would not leave room for one request
 * of max_body_bytes.  The reservation never shrinks while the daemon runs. */
static int reserve_fixed_memory(srv_state *st, const srv_model_set *set, char *err)
{
    const srv_config *cfg = st->cfg;
    size_t worker = 0, batch = 0, fixed = 0;
    int rc = fixed_memory(st, set, &worker, &batch, &fixed, err);
    if (rc != LD_OK)
        return rc;
    const size_t held = atomic_load(&st->budget_fixed);
    const size_t one_body = 3 * cfg->max_body_bytes;
    const bool fits = fixed + one_body <= cfg->memory_budget_bytes;
    if (fixed > held && fits && !srv_budget_take(&st->budget, fixed - held))
        return ld_fail(err, LD_ENOMEM, "the workers need %zu MiB more of the memory budget, "
                       "which requests hold right now; reload again when they are done",
                       (fixed - held) >> 20);
    if (fixed > held && !fits)
        return ld_fail(err, LD_EINVAL, "memory_budget_bytes (%zu MiB) is too small: %d workers "
                       "need %zu MiB for images of max_image_pixels at vae_split %d with the "
                       "largest model, and one request of max_body_bytes %zu MiB more; raise it "
                       "or lower those", cfg->memory_budget_bytes >> 20, cfg->workers,
                       fixed >> 20, cfg->vae_split, one_body >> 20);
    if (fixed <= held)
        return LD_OK;
    atomic_store(&st->budget_fixed, fixed);
    st->worker_memory = worker;
    st->batch_memory = batch;
    if (st->queue)
        srv_queue_set_worker_memory(st->queue, worker);
    srv_log(LOG_INFO, "memory budget %zu MiB: %zu MiB kept for %d workers and %d decoders, "
            "the rest for requests", cfg->memory_budget_bytes >> 20, fixed >> 20, cfg->workers,
            cfg->decode_threads);
    return LD_OK;
}

/* The models cfg names, in its order: one whose name and path are those of a
 * model in `running` is shared with it, the others are loaded now (at a
 * reload, beside the running ones: requests go on meanwhile).  All or
 * nothing: when one fails to load, out is left empty. */
static int load_models(const srv_config *cfg, const srv_model_set *running, srv_model_set *out,
                       int *loaded, const srv_state *ping_for, char *err)
{
    memset(out, 0, sizeof *out);
    *loaded = 0;
    const srv_model_spec *def = srv_config_default_model(cfg);
    for (int i = 0; i < cfg->n_models; i++) {
        const srv_model_spec *spec = &cfg->models[i];
        if (spec == def)
            out->default_index = out->n;
        srv_model *same = running ? srv_model_set_find(running, spec->name) : NULL;
        if (same && strcmp(srv_model_path(same), spec->path) == 0) {
            srv_model_ref(same);
            out->models[out->n++] = same;
            continue;
        }
        char inner[LD_ERR_LEN];
        srv_model *m;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        const int rc = srv_model_load(spec->name, spec->path, &m, inner);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (rc != LD_OK) {
            srv_model_set_release(out);
            return ld_fail(err, rc, "model %s (%s): %s", spec->name, spec->path, inner);
        }
        const ld_model *w = srv_model_weights(m);
        srv_log(LOG_INFO, "model %s: %s (%s layout, config %s, latents %s) loaded in %.2f s",
                spec->name, spec->path, ld_model_layout(w), ld_model_config_source(w),
                ld_model_scaling(w),
                (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9);
        out->models[out->n++] = m;
        (*loaded)++;
        /* a reload loads in the thread that feeds systemd's watchdog: a few
         * large models must not outlast WatchdogSec unfed */
        if (ping_for && atomic_load(&ping_for->workers_stalled) == 0)
            srv_sd_notify_nowait("WATCHDOG=1");
    }
    return LD_OK;
}

/* SIGHUP's part for the models: the new set is loaded beside the running
 * one and swapped in whole once it is; what the new set no longer holds is
 * freed when its last job is done.  A model that does not load, or a set
 * whose encoders would not fit the memory budget, keeps the running set. */
static bool reload_models(srv_state *st, const srv_config *fresh, bool ping_watchdog)
{
    char err[LD_ERR_LEN];
    srv_model_set running, next;
    int loaded;
    srv_models_snapshot(st->models, &running);
    int rc = load_models(fresh, &running, &next, &loaded, ping_watchdog ? st : NULL, err);
    if (rc == LD_OK && (rc = reserve_fixed_memory(st, &next, err)) != LD_OK)
        srv_model_set_release(&next);
    if (rc != LD_OK) {
        srv_log(LOG_ERROR, "reload: kept the running models: %s", err);
        srv_model_set_release(&running);
        return false;
    }
    int dropped = 0;
    for (int i = 0; i < running.n; i++) {
        bool kept = false;
        for (int k = 0; k < next.n; k++)
            kept = kept || next.models[k] == running.models[i];
        dropped += !kept;
    }
    char names[512] = "";
    for (int i = 0; i < next.n; i++) {
        const size_t used = strlen(names);
        snprintf(names + used, sizeof names - used, "%s%s", i ? ", " : "",
                 srv_model_name(next.models[i]));
    }
    const char *def = srv_model_name(next.models[next.default_index]);
    srv_log(LOG_INFO, "reload: serving %s (default %s): %d loaded, %d kept, %d let go once "
            "their jobs finish", names, def, loaded, next.n - loaded, dropped);
    srv_models_swap(st->models, &next);
    srv_model_set_release(&running);
    return true;
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
    char names[512] = "";
    for (int i = 0; i < cfg->n_models; i++) {
        const size_t used = strlen(names);
        snprintf(names + used, sizeof names - used, "%s%s", i ? ", " : "", cfg->models[i].name);
    }
    srv_sd_notify("STATUS=loading the model%s %s", cfg->n_models > 1 ? "s" : "", names);
    srv_metrics_init(&st.metrics);
    srv_budget_init(&st.budget, cfg->memory_budget_bytes);
    srv_model_set set;
    int loaded;
    int rc = load_models(cfg, NULL, &set, &loaded, NULL, err);
    if (rc == LD_OK) {
        check_threads(cfg);
        rc = reserve_fixed_memory(&st, &set, err);
    }
    if (rc == LD_OK)
        rc = srv_models_new(&set, &st.models, err);
    srv_model_set_release(&set); /* empty unless something above failed */
    if (rc == LD_OK) {
        const srv_queue_params qp = {cfg->vae_split,          cfg->workers,   cfg->threads,
                                     cfg->max_batch_delay_ms, cfg->max_queue, cfg->decode_threads,
                                     st.worker_memory,
                                     /* images being decoded come within this */
                                     cfg->decode_timeout_ms,  cfg->kernel};
        rc = srv_queue_new(&qp, &st.metrics, &st.queue, err);
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
                "%s kernel, queue %d, batch delay %d ms)", where,
                st.passed_fd ? ", a socket passed by systemd" : "", cfg->vae_split,
                cfg->workers, cfg->threads,
                ld_kernel_name(cfg->kernel == LD_KERNEL_AUTO ? ld_kernel_best() : cfg->kernel),
                cfg->max_queue, cfg->max_batch_delay_ms);
        const uint64_t watchdog_usec = srv_sd_watchdog_usec();
        if (watchdog_usec)
            srv_log(LOG_INFO, "systemd watchdog: %.3f s, pinged every %.3f s while workers "
                    "progress", watchdog_usec / 1e6, watchdog_usec / 2e6);
        /* only now: the models are loaded, the workers run and the socket accepts */
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
    srv_models_free(st.models); /* the jobs, and their references, are gone */
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
