/* The daemon's side of systemd's protocols: readiness and status
 * (sd_notify), the listening socket a .socket unit passes (sd_listen_fds),
 * and the watchdog's interval (sd_watchdog_enabled).
 *
 * sd_listen_fds and sd_watchdog_enabled come from libsystemd when configure
 * found it, and are read from the environment by hand otherwise
 * ($LISTEN_PID/$LISTEN_FDS, $WATCHDOG_USEC/$WATCHDOG_PID).  Notifications are
 * always sent by hand (one datagram to $NOTIFY_SOCKET), because
 * libsystemd's sd_notify() can block the caller for as long as the receiver
 * does not read (see sdnotify.c).  Outside systemd (no such variables) every
 * call does nothing. */
#ifndef LATENTD_SERVER_SDNOTIFY_H
#define LATENTD_SERVER_SDNOTIFY_H

#include <stdint.h>

/* Send one notify message ("READY=1", "STOPPING=1"), printf-style; nothing
 * when $NOTIFY_SOCKET is unset.  Waits at most a second when the receiver's
 * queue is full, then drops it: systemd not listening must never stop the
 * service. */
void srv_sd_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same for what the next message replaces ("STATUS=", "WATCHDOG=1"):
 * dropped at once when the queue is full. */
void srv_sd_notify_nowait(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The listening socket systemd passed for this process, or -1 in *fd when
 * none was passed.  Consumes $LISTEN_FDS/$LISTEN_PID (a child would not
 * inherit them) and marks the socket close-on-exec.  LD_EINVAL when more than
 * one socket or one that is not a listening stream socket was passed:
 * latentd listens on exactly one. */
int srv_sd_listen_socket(int *fd, char *err);

/* The watchdog timeout systemd set for this process (WatchdogSec=) in
 * microseconds, or 0 when there is none. */
uint64_t srv_sd_watchdog_usec(void);

#endif
