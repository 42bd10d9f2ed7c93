#!/bin/sh
# The systemd units, as the build made them from systemd/*.in with the
# configured paths (what `make install` installs): `systemd-analyze verify`
# finds nothing to say about them, and `systemd-analyze security --offline=true`
# rates latentd.service (and the template) at an exposure of 2.0 or lower.  No
# systemd PID 1 needed.  Skips (77) where systemd-analyze is absent.
#   LATENTD_BUILDDIR   where the built latentd and systemd/ are (make check sets it)
#   LATENTD_MAX_EXPOSURE   the highest exposure accepted (default 2.0)
set -eu
build=${LATENTD_BUILDDIR:-.}
units=$build/systemd
max=${LATENTD_MAX_EXPOSURE:-2.0}
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-units: no systemd-analyze (Debian: apt-get install systemd); skipped"
    exit 77
fi
daemon=$(cd "$build" && pwd)/latentd
[ -x "$daemon" ] || { echo "systemd-units: no latentd at $daemon" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
# verify wants ExecStart='s binary to exist: point the units at the built one
# (the generated units name the installed one, BINDIR/latentd)
for unit in latentd.service latentd@.service latentd.socket; do
    [ -f "$units/$unit" ] || { echo "systemd-units: no $units/$unit (make builds it)" >&2; exit 1; }
    if grep -n '@[a-z]*dir@' "$units/$unit"; then
        echo "FAIL: $unit: a configure path left unsubstituted"
        status=1
    fi
    sed "s|^ExecStart=/[^ ]*/latentd |ExecStart=$daemon |" "$units/$unit" >"$tmp/$unit"
done
# verify looks up Documentation=man:latentd(8): the page from the source tree
man=$(cd "$(dirname "$0")/../man" && pwd)
mkdir -p "$tmp/man/man8"
ln -s "$man/latentd.8" "$tmp/man/man8/latentd.8"
MANPATH=$tmp/man
export MANPATH
cd "$tmp"

# verify exits 0 on unknown keys and bad values, with a warning: any line
# about our units fails the test
for set in "latentd.service latentd.socket" "latentd@.service"; do
    # shellcheck disable=SC2086 # two files in one set
    if ! systemd-analyze verify $set >verify.out 2>&1 || grep -q latentd verify.out; then
        echo "FAIL: systemd-analyze verify $set:"
        cat verify.out
        # ExecReload's /bin/kill is procps's, which minimal systems lack
        if grep -q 'Command /bin/kill is not executable' verify.out; then
            echo "(/bin/kill comes with procps: apt-get install procps, or sh scripts/install-deps.sh)"
        fi
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
# the instances' configs beside latentd.service's, in SYSCONFDIR/latentd
conf=$(sed -n 's|^ExecStart=[^ ]* -c \(/.*\)/latentd.conf$|\1|p' latentd.service)
[ -n "$conf" ] || { echo "FAIL: latentd.service reads no absolute .../latentd.conf"; status=1; }
grep -qF "latentd -c $conf/%i.conf" latentd@.service ||
    { echo "FAIL: latentd@.service does not read $conf/%i.conf"; status=1; }
exit $status
