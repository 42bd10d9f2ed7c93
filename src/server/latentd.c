/* latentd: load the model, start the workers and the HTTP front, then wait
 * for signals — SIGHUP reopens the log, SIGTERM/SIGINT drain and exit. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

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

static sigset_t handled_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    return set;
}

/* Stop accepting, let accepted requests finish (up to drain_timeout_ms). */
static void drain(srv_state *st)
{
    atomic_store(&st->draining, true);
    notify("STOPPING=1");
    srv_http_quiesce(st);
    srv_log(LOG_INFO, "draining %d requests", atomic_load(&st->in_flight));
    const struct timespec tick = {0, 20 * 1000 * 1000};
    for (int waited = 0; atomic_load(&st->in_flight) > 0 && waited < st->cfg->drain_timeout_ms;
         waited += 20)
        nanosleep(&tick, NULL);
}

static void wait_for_signals(srv_state *st)
{
    sigset_t set = handled_signals();
    for (;;) {
        int sig;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            char err[LD_ERR_LEN];
            if (srv_log_reopen(err) != LD_OK)
                srv_log(LOG_ERROR, "cannot reopen the log: %s", err);
            else
                srv_log(LOG_INFO, "log reopened");
            continue;
        }
        srv_log(LOG_INFO, "signal %d: shutting down", sig);
        drain(st);
        return;
    }
}

static int serve(srv_config *cfg)
{
    char err[LD_ERR_LEN];
    srv_state st = {.cfg = cfg};
    srv_metrics_init(&st.metrics);
    ld_model *model = NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = ld_model_load(cfg->model, NULL, &model, err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rc == LD_OK) {
        st.model = model;
        srv_log(LOG_INFO, "model %s (%s layout, config %s, latents %s) loaded in %.2f s",
                ld_model_name(model), ld_model_layout(model), ld_model_config_source(model),
                ld_model_scaling(model),
                (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9);
        check_threads(cfg);
        const srv_queue_params qp = {cfg->vae_split, cfg->workers, cfg->threads,
                                     cfg->max_batch_delay_ms, cfg->max_queue};
        rc = srv_queue_new(model, &qp, &st.metrics, &st.queue, err);
    }
    if (rc == LD_OK)
        rc = srv_http_start(&st, err);
    if (rc == LD_OK) {
        srv_log(LOG_INFO, "listening on %s:%d (vae_split %d, %d workers x %d threads, "
                "queue %d, batch delay %d ms)", cfg->listen_host, st.port, cfg->vae_split,
                cfg->workers, cfg->threads, cfg->max_queue, cfg->max_batch_delay_ms);
        notify("READY=1");
        wait_for_signals(&st);
    } else {
        srv_log(LOG_ERROR, "%s", err);
    }
    srv_http_stop(&st);
    srv_queue_free(st.queue); /* finishes whatever is still queued */
    ld_model_free(model);
    srv_metrics_destroy(&st.metrics);
    srv_log(LOG_INFO, "stopped");
    return rc == LD_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    /* every thread inherits this mask: only sigwait() sees these signals */
    sigset_t set = handled_signals();
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    srv_config cfg;
    char err[LD_ERR_LEN];
    srv_config_defaults(&cfg);
    int rc = srv_config_from_args(&cfg, argc, argv, err);
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
