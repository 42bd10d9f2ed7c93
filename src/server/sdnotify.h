/* The daemon's side of systemd's protocols: readiness and status
 * (sd_notify), the listening socket a .socket unit passes (sd_listen_fds),
 * and the watchdog's interval (sd_watchdog_enabled).
 *
 * Through libsystemd when configure found it.  Without it, the same three
 * small protocols are spoken by hand (a datagram to $NOTIFY_SOCKET;
 * $LISTEN_PID/$LISTEN_FDS; $WATCHDOG_USEC/$WATCHDOG_PID), so that a build
 * without libsystemd still reports READY=1, takes a passed socket and feeds
 * a watchdog.  Outside systemd (no such variables) every call does nothing. */
#ifndef LATENTD_SERVER_SDNOTIFY_H
#define LATENTD_SERVER_SDNOTIFY_H

#include <stdint.h>

/* Send one notify message ("READY=1\nSTATUS=..."), printf-style; nothing when
 * $NOTIFY_SOCKET is unset.  Failures are ignored: systemd not listening must
 * never stop the service. */
void srv_sd_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

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
