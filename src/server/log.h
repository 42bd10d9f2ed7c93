/* The daemon's log: one line per event, to stderr (journald) or a file that
 * SIGHUP reopens. */
#ifndef LATENTD_SERVER_LOG_H
#define LATENTD_SERVER_LOG_H

#include "settings.h"

int srv_log_open(const char *path, srv_log_level level, char *err);
int srv_log_reopen(char *err);
/* A new path (NULL or "": stderr) and level, for SIGHUP.  When the new file
 * cannot be opened the log stays where it was (and the level changes). */
int srv_log_change(const char *path, srv_log_level level, char *err);
void srv_log_close(void);
/* One line per call: control characters, invalid UTF-8 and backslashes in
 * the formatted message are written as \xNN. */
void srv_log(srv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
