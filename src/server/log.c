/* The log is the daemon's one piece of process-wide state besides main()'s:
 * every thread writes to it, and a signal handler's thread reopens it. */
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "latentd/safefile.h"

#include "utf8.h"

static struct {
    pthread_mutex_t lock;
    FILE *fp;
    char path[4096];
    atomic_int level; /* an srv_log_level; SIGHUP may change it while threads log */
} logger = {PTHREAD_MUTEX_INITIALIZER, NULL, "", LOG_INFO};

int srv_log_open(const char *path, srv_log_level level, char *err)
{
    atomic_store(&logger.level, (int)level);
    snprintf(logger.path, sizeof logger.path, "%s", path ? path : "");
    return srv_log_reopen(err);
}

int srv_log_change(const char *path, srv_log_level level, char *err)
{
    atomic_store(&logger.level, (int)level);
    char old[sizeof logger.path];
    pthread_mutex_lock(&logger.lock);
    memcpy(old, logger.path, sizeof old);
    snprintf(logger.path, sizeof logger.path, "%s", path ? path : "");
    pthread_mutex_unlock(&logger.lock);
    const int rc = srv_log_reopen(err);
    if (rc != LD_OK) { /* keep writing where we did */
        pthread_mutex_lock(&logger.lock);
        memcpy(logger.path, old, sizeof old);
        pthread_mutex_unlock(&logger.lock);
    }
    return rc;
}

/* The log at path, opened for appending (NULL on error).  Called without
 * logger.lock: an open may take time, and no thread's log line waits on it. */
static FILE *open_log(const char *path, char *err)
{
    int fd = -1;
    if (ld_open_append(path, &fd, err) != LD_OK)
        return NULL;
    FILE *fp = fdopen(fd, "a");
    if (!fp) {
        ld_fail(err, LD_EIO, "%s: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    setvbuf(fp, NULL, _IOLBF, 0);
    return fp;
}

int srv_log_reopen(char *err)
{
    char path[sizeof logger.path];
    pthread_mutex_lock(&logger.lock);
    memcpy(path, logger.path, sizeof path);
    pthread_mutex_unlock(&logger.lock);
    FILE *fp = stderr;
    if (path[0] && !(fp = open_log(path, err)))
        return LD_EIO; /* the old log stays; the caller says why */
    pthread_mutex_lock(&logger.lock);
    FILE *old = logger.fp;
    logger.fp = fp;
    pthread_mutex_unlock(&logger.lock);
    if (old && old != stderr && old != fp)
        fclose(old);
    return LD_OK;
}

void srv_log_close(void)
{
    pthread_mutex_lock(&logger.lock);
    if (logger.fp && logger.fp != stderr)
        fclose(logger.fp);
    logger.fp = NULL;
    pthread_mutex_unlock(&logger.lock);
}

/* Write text with control characters (a newline included), bytes outside
 * well-formed UTF-8 and the backslash itself as \xNN, so that what a client
 * sent (a percent-decoded path, say) can neither end the line nor forge
 * another, and the escapes stay unambiguous. */
static void write_escaped(FILE *fp, const char *text, size_t n)
{
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < n;) {
        const int len = srv_utf8_char_len(s + i, n - i);
        if (len == 0 || s[i] < 0x20 || s[i] == 0x7f || s[i] == '\\') {
            fprintf(fp, "\\x%02x", s[i]);
            i++;
        } else {
            fwrite(s + i, 1, (size_t)len, fp);
            i += (size_t)len;
        }
    }
}

void srv_log(srv_log_level level, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    if ((int)level > atomic_load(&logger.level))
        return;
    char stamp[32];
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    /* formatted first, outside the lock, so it can be escaped as a whole */
    char small[1024], *text = small;
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    int len = vsnprintf(small, sizeof small, fmt, ap);
    if (len < 0)
        len = 0;
    if ((size_t)len >= sizeof small) {
        text = malloc((size_t)len + 1);
        if (text)
            vsnprintf(text, (size_t)len + 1, fmt, again);
        else
            text = small, len = (int)sizeof small - 1; /* the cut line, rather than none */
    }
    va_end(again);
    va_end(ap);
    pthread_mutex_lock(&logger.lock);
    FILE *fp = logger.fp ? logger.fp : stderr;
    fprintf(fp, "%s.%03ldZ %s ", stamp, now.tv_nsec / 1000000, names[level]);
    write_escaped(fp, text, (size_t)len);
    fputc('\n', fp);
    fflush(fp);
    pthread_mutex_unlock(&logger.lock);
    if (text != small)
        free(text);
}
