#!/bin/sh
# The systemd units in systemd/: `systemd-analyze verify` finds nothing to say
# about them, and `systemd-analyze security --offline=true` rates latentd.service
# (and the template) at an exposure of 2.0 or lower.  No systemd PID 1 needed.
# Skips (77) where systemd-analyze is absent.
#   LATENTD_BUILDDIR   where the built latentd is (make check sets it)
#   LATENTD_MAX_EXPOSURE   the highest exposure accepted (default 2.0)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
units=$here/../systemd
build=${LATENTD_BUILDDIR:-.}
max=${LATENTD_MAX_EXPOSURE:-2.0}
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-units: no systemd-analyze (Debian: apt-get install systemd); skipped"
    exit 77
fi
daemon=$(cd "$build" && pwd)/latentd
[ -x "$daemon" ] || { echo "systemd-units: no latentd at $daemon" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# verify wants ExecStart='s binary to exist: point the units at the built one
for unit in latentd.service latentd@.service latentd.socket; do
    sed "s|/usr/local/bin/latentd|$daemon|g" "$units/$unit" >"$tmp/$unit"
done
cd "$tmp"
status=0

# verify exits 0 on unknown keys and bad values, with a warning: any line
# about our units fails the test
for set in "latentd.service latentd.socket" "latentd@.service"; do
    # shellcheck disable=SC2086 # two files in one set
    if ! systemd-analyze verify $set >verify.out 2>&1 || grep -q latentd verify.out; then
        echo "FAIL: systemd-analyze verify $set:"
        cat verify.out
        status=1
    else
        echo "ok: systemd-analyze verify $set"
    fi
done

for unit in latentd.service latentd@.service; do
    systemd-analyze security --offline=true --no-pager "./$unit" >security.out 2>&1 || true
    score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' security.out)
    if [ -z "$score" ]; then
        echo "FAIL: systemd-analyze security $unit gave no score:"
        cat security.out
        status=1
    elif awk -v s="$score" -v m="$max" 'BEGIN { exit !(s + 0 <= m + 0) }'; then
        echo "ok: $unit exposure $score (at most $max)"
    else
        echo "FAIL: $unit exposure $score, above $max; what it rates exposed:"
        grep '✗' security.out || true
        status=1
    fi
done

# the units say what the daemon does: notify, watchdog, reload by SIGHUP
for key in Type=notify WatchdogSec= 'ExecReload=/bin/kill -HUP $MAINPID'; do
    for unit in latentd.service latentd@.service; do
        grep -qF "$key" "$unit" || { echo "FAIL: $unit lacks $key"; status=1; }
    done
done
grep -q 'latentd -c /etc/latentd/%i.conf' latentd@.service ||
    { echo "FAIL: latentd@.service does not read /etc/latentd/%i.conf"; status=1; }
exit $status
