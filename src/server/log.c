/* The log is the daemon's one piece of process-wide state besides main()'s:
 * every thread writes to it, and a signal handler's thread reopens it. */
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static struct {
    pthread_mutex_t lock;
    FILE *fp;
    char path[4096];
    srv_log_level level;
} logger = {PTHREAD_MUTEX_INITIALIZER, NULL, "", LOG_INFO};

int srv_log_open(const char *path, srv_log_level level, char *err)
{
    logger.level = level;
    snprintf(logger.path, sizeof logger.path, "%s", path ? path : "");
    return srv_log_reopen(err);
}

int srv_log_reopen(char *err)
{
    int rc = LD_OK;
    pthread_mutex_lock(&logger.lock);
    if (logger.path[0]) {
        FILE *fp = fopen(logger.path, "a");
        if (!fp) {
            rc = ld_fail(err, LD_EIO, "%s: %s", logger.path, strerror(errno));
        } else {
            setvbuf(fp, NULL, _IOLBF, 0);
            if (logger.fp && logger.fp != stderr)
                fclose(logger.fp);
            logger.fp = fp;
        }
    } else {
        logger.fp = stderr;
    }
    pthread_mutex_unlock(&logger.lock);
    return rc;
}

void srv_log_close(void)
{
    pthread_mutex_lock(&logger.lock);
    if (logger.fp && logger.fp != stderr)
        fclose(logger.fp);
    logger.fp = NULL;
    pthread_mutex_unlock(&logger.lock);
}

void srv_log(srv_log_level level, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    if (level > logger.level)
        return;
    char stamp[32];
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    pthread_mutex_lock(&logger.lock);
    FILE *fp = logger.fp ? logger.fp : stderr;
    fprintf(fp, "%s.%03ldZ %s ", stamp, now.tv_nsec / 1000000, names[level]);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(fp, fmt, ap);
    va_end(ap);
    fputc('\n', fp);
    fflush(fp);
    pthread_mutex_unlock(&logger.lock);
}
