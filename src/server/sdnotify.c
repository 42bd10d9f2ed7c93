#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "sdnotify.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "latentd/common.h"

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

enum { FIRST_PASSED_FD = 3 }; /* SD_LISTEN_FDS_START */

#ifndef HAVE_LIBSYSTEMD
/* A decimal environment variable, or false when unset or malformed. */
static bool env_number(const char *name, unsigned long long *out)
{
    const char *value = getenv(name);
    if (!value || !*value)
        return false;
    char *end;
    errno = 0;
    const unsigned long long v = strtoull(value, &end, 10);
    if (errno || *end || value[0] == '-')
        return false;
    *out = v;
    return true;
}
#endif

/* One datagram to the path (or, after '@', the abstract name) in
 * $NOTIFY_SOCKET — what sd_notify() sends, but never blocking for long.
 * sd_notify() blocks while the receiver's queue is full (net.unix.max_dgram_qlen
 * datagrams, 10 by default): a manager that reads slowly, or a test that reads
 * only the messages it waits for, would then stop the main loop that takes
 * SIGTERM and feeds the watchdog.  Here a state change waits for room at most
 * a second; a status or a ping is dropped (the next one replaces it). */
static void send_notify(const char *message, bool may_wait)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || (path[0] != '/' && path[0] != '@'))
        return;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    const size_t len = strlen(path);
    if (len >= sizeof addr.sun_path)
        return;
    memcpy(addr.sun_path, path, len);
    if (path[0] == '@')
        addr.sun_path[0] = '\0';
    const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    /* connected, so that POLLOUT says whether the receiver's queue has room */
    const socklen_t size = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    if (connect(fd, (struct sockaddr *)&addr, size) == 0 &&
        send(fd, message, strlen(message), MSG_NOSIGNAL | MSG_DONTWAIT) < 0 &&
        (errno == EAGAIN || errno == EWOULDBLOCK) && may_wait) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, 1000) > 0) {
            ssize_t n = send(fd, message, strlen(message), MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)n;
        }
    }
    close(fd);
}

void srv_sd_notify(const char *fmt, ...)
{
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    send_notify(message, true);
}

void srv_sd_notify_nowait(const char *fmt, ...)
{
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    send_notify(message, false);
}

/* How many sockets systemd passed to this process (and forget it was told). */
static int passed_sockets(void)
{
#ifdef HAVE_LIBSYSTEMD
    const int n = sd_listen_fds(1);
    return n < 0 ? 0 : n;
#else
    unsigned long long pid, n;
    const bool ours = env_number("LISTEN_PID", &pid) && pid == (unsigned long long)getpid() &&
                      env_number("LISTEN_FDS", &n);
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (!ours)
        return 0;
    for (unsigned long long fd = FIRST_PASSED_FD; fd < FIRST_PASSED_FD + n && fd < 1024; fd++)
        fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    return n > 1024 ? 1024 : (int)n;
#endif
}

static bool is_listening_stream(int fd)
{
#ifdef HAVE_LIBSYSTEMD
    return sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) > 0;
#else
    int type = 0, listening = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM)
        return false;
    len = sizeof listening;
    return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening;
#endif
}

int srv_sd_listen_socket(int *fd, char *err)
{
    *fd = -1;
    const int n = passed_sockets();
    if (n == 0)
        return LD_OK;
    if (n > 1)
        return ld_fail(err, LD_EINVAL, "systemd passed %d sockets; latentd listens on one "
                       "(one ListenStream= in latentd.socket)", n);
    if (!is_listening_stream(FIRST_PASSED_FD))
        return ld_fail(err, LD_EINVAL, "the socket systemd passed is not a listening stream "
                       "socket (ListenStream=, Accept=no in latentd.socket)");
    *fd = FIRST_PASSED_FD;
    return LD_OK;
}

uint64_t srv_sd_watchdog_usec(void)
{
#ifdef HAVE_LIBSYSTEMD
    uint64_t usec = 0;
    return sd_watchdog_enabled(0, &usec) > 0 ? usec : 0;
#else
    unsigned long long usec, pid;
    if (!env_number("WATCHDOG_USEC", &usec) || usec == 0)
        return 0;
    if (env_number("WATCHDOG_PID", &pid) && pid != (unsigned long long)getpid())
        return 0; /* meant for another process (our parent's) */
    return usec;
#endif
}
