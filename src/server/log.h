/* The daemon's log: one line per event, to stderr (journald) or a file that
 * SIGHUP reopens. */
#ifndef LATENTD_SERVER_LOG_H
#define LATENTD_SERVER_LOG_H

#include "settings.h"

int srv_log_open(const char *path, srv_log_level level, char *err);
int srv_log_reopen(char *err);
void srv_log_close(void);
void srv_log(srv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
