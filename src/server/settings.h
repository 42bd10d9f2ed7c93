/* The daemon's settings: conf/latentd.conf, then command-line flags. */
#ifndef LATENTD_SERVER_SETTINGS_H
#define LATENTD_SERVER_SETTINGS_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "latentd/common.h"
#include "latentd/nn.h" /* ld_kernel */

typedef enum { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG } srv_log_level;

/* The models one daemon serves, each by name.  `model.NAME = PATH` (file,
 * `--set`) and `--model NAME=PATH` name one; a bare `model = PATH` /
 * `--model PATH` is the single unnamed one, named after its folder or file by
 * srv_config_finish.  Names are 1-63 of [A-Za-z0-9._-]. */
#define SRV_MAX_MODELS 16
#define SRV_MODEL_NAME_LEN 64
typedef struct {
    char name[SRV_MODEL_NAME_LEN];
    char path[4096];
} srv_model_spec;

typedef struct {
    char listen_host[256];
    int port;
    srv_model_spec models[SRV_MAX_MODELS]; /* in the order they were given, file then flags */
    int n_models;
    int bare_model;         /* the index of the bare `model = PATH`, or -1 */
    char default_model[SRV_MODEL_NAME_LEN]; /* empty: the first */
    int vae_split;          /* images per forward pass */
    int workers;            /* encoder threads */
    int threads;            /* compute threads per worker */
    ld_kernel kernel;       /* the workers' matrix kernel (LD_KERNEL_AUTO: the CPU's best) */
    int max_batch_delay_ms; /* how long a batch waits to fill */
    int max_queue;          /* images waiting, at most */
    size_t max_body_bytes;
    size_t max_uri_bytes;    /* the request target as sent; past it: 414 */
    size_t max_header_bytes; /* the header fields, names and values; past it: 431 */
    uint64_t max_image_pixels;
    int max_images_per_request;
    int request_timeout_ms; /* decode + queue wait + encode; past it: 504 */
    size_t memory_budget_bytes; /* bodies held + decoded images + encoder workspace */
    int http_threads;       /* libmicrohttpd's event-loop threads */
    int decode_threads;     /* image decoders */
    int max_jpeg_scans;     /* progressive JPEG scans, at most */
    int decode_timeout_ms;  /* one image's decode, at most */
    int max_connections;
    int max_connections_per_client; /* per client address; 0: no limit */
    int header_timeout_ms;  /* from connection (or previous answer) to complete headers */
    int body_timeout_ms;    /* from complete headers to complete body */
    int idle_timeout_ms;    /* a keep-alive connection with nothing to do */
    int max_requests_per_connection; /* then the connection is closed */
    int stall_timeout_ms;   /* a worker with no progress this long is reported stalled */
    char api_key_file[4096];
    char api_key[256];      /* read from api_key_file; empty: no auth */
    char log_file[4096];    /* empty: stderr */
    srv_log_level log_level;
    int shutdown_timeout_ms; /* SIGTERM to exit, at most: drain, then cancel the rest */
} srv_config;

void srv_config_defaults(srv_config *cfg);
/* key = value lines; '#' starts a comment. */
int srv_config_load_file(srv_config *cfg, const char *path, char *err);
/* Apply -c FILE first, then the other flags over it. Returns 1 for --help. */
int srv_config_from_args(srv_config *cfg, int argc, char **argv, char *err);
/* Name the bare model, check default_model, read the API key file. */
int srv_config_finish(srv_config *cfg, char *err);
void srv_config_usage(FILE *fp);
/* The settings whose values differ between a and b, as "key, key" in out (the
 * API key itself is reported as api_key_file); returns how many. */
int srv_config_changes(const srv_config *a, const srv_config *b, char *out, size_t size);
/* The model spec named name, or NULL; the default model's spec. */
const srv_model_spec *srv_config_model(const srv_config *cfg, const char *name);
const srv_model_spec *srv_config_default_model(const srv_config *cfg);

#endif
