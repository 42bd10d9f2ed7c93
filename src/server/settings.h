/* The daemon's settings: conf/latentd.conf, then command-line flags. */
#ifndef LATENTD_SERVER_SETTINGS_H
#define LATENTD_SERVER_SETTINGS_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "latentd/common.h"

typedef enum { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG } srv_log_level;

typedef struct {
    char listen_host[256];
    int port;
    char model[4096];
    int vae_split;          /* images per forward pass */
    int workers;            /* encoder threads */
    int threads;            /* compute threads per worker */
    int max_batch_delay_ms; /* how long a batch waits to fill */
    int max_queue;          /* images waiting, at most */
    size_t max_body_bytes;
    uint64_t max_image_pixels;
    int max_images_per_request;
    int request_timeout_ms; /* queue wait + encode; past it: 504 */
    int max_connections;
    char api_key_file[4096];
    char api_key[256];      /* read from api_key_file; empty: no auth */
    char log_file[4096];    /* empty: stderr */
    srv_log_level log_level;
    int drain_timeout_ms;   /* on SIGTERM, how long to wait for accepted requests */
} srv_config;

void srv_config_defaults(srv_config *cfg);
/* key = value lines; '#' starts a comment. */
int srv_config_load_file(srv_config *cfg, const char *path, char *err);
/* Apply -c FILE first, then the other flags over it. Returns 1 for --help. */
int srv_config_from_args(srv_config *cfg, int argc, char **argv, char *err);
/* Read the API key file, check ranges. */
int srv_config_finish(srv_config *cfg, char *err);
void srv_config_usage(FILE *fp);

#endif
