#!/bin/sh
# The Debian package, built and used as an operator would: builds latentd's
# .deb (dpkg-buildpackage -b, debian/) in a copy of the tree in a temp folder
# (never in the source folder's build dirs), installs it with
# `apt-get install ./latentd_*.deb`, checks where its files went and that
# /etc/latentd/latentd.conf is a conffile, starts the installed /usr/bin/latentd
# on the fixture model and encodes one image through it; then purges the
# package again (also on failure), so the machine is as it was.
# Skips (77) when not root or without dpkg-buildpackage/debhelper, except
# under LATENTD_REQUIRE_DEB=1 (.ci/run), where that fails.
#   scripts/deb-check.sh            (scripts/test.sh deb runs it)
#   DEB_BUILD_OPTIONS   default nocheck (make check runs elsewhere)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
skip() {
    if [ "${LATENTD_REQUIRE_DEB:-0}" = 1 ]; then
        echo "deb-check: FAIL: $* (LATENTD_REQUIRE_DEB=1 forbids skipping)"
        exit 1
    fi
    echo "deb-check: $*; skipped"
    exit 77
}
[ "$(id -u)" = 0 ] || skip "not root (apt-get install needs it)"
command -v dpkg-buildpackage >/dev/null 2>&1 || skip "no dpkg-buildpackage (Debian: dpkg-dev)"
command -v dh >/dev/null 2>&1 || skip "no dh (Debian: debhelper)"
command -v curl >/dev/null 2>&1 || skip "no curl"
if dpkg-query -W -f='${Status}' latentd 2>/dev/null | grep -q 'ok installed'; then
    echo "deb-check: FAIL: a latentd package is installed already; this check would remove it"
    exit 1
fi

tmp=$(mktemp -d)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    if dpkg-query -W latentd >/dev/null 2>&1; then
        echo "== apt-get purge -y latentd"
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq latentd >/dev/null 2>&1 ||
            echo "deb-check: could not purge latentd"
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
status=0
fail() { echo "FAIL: $*"; status=1; }

# the sources only: git's files (tracked and new, not ignored) where there is
# git, else the tree without build dirs and autotools' output
src=$tmp/latentd
mkdir -p "$src"
echo "== copying the tree to $src"
if git -C "$top" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$top" && git ls-files -z --cached --others --exclude-standard |
        xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\n" "$f"; done' sh |
        tar -cf - -T -) | tar -C "$src" -xf -
else
    tar -C "$top" --exclude=./build --exclude=./autom4te.cache --exclude=./config.status \
        --exclude=./Makefile --exclude=./configure -cf - . | tar -C "$src" -xf -
fi

echo "== dpkg-buildpackage -b -us -uc"
start=$(date +%s)
if ! (cd "$src" && DEB_BUILD_OPTIONS=${DEB_BUILD_OPTIONS:-nocheck} \
        dpkg-buildpackage -b -us -uc -j"$(nproc 2>/dev/null || echo 2)" >"$tmp/build.log" 2>&1); then
    tail -n 40 "$tmp/build.log"
    echo "FAIL: dpkg-buildpackage (log above)"
    exit 1
fi
deb=$(cd "$tmp" && ls latentd_*.deb)
echo "built $deb in $(($(date +%s) - start)) s: $(du -k "$tmp/$deb" | cut -f1) KB"

echo "== apt-get install -y ./$deb"
(cd "$tmp" && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "./$deb" >"$tmp/apt.log" 2>&1) ||
    { cat "$tmp/apt.log"; echo "FAIL: apt-get install"; exit 1; }

echo "== dpkg -L latentd"
dpkg -L latentd | while read -r f; do [ -d "$f" ] || echo "$f"; done | sort | tee "$tmp/files"
for f in /usr/bin/latentd /usr/bin/latent-encode /etc/latentd/latentd.conf \
    /usr/share/latentd/openapi.yaml /usr/share/doc/latentd/README.md \
    /usr/share/doc/latentd/examples/nginx-latentd.conf /usr/share/doc/latentd/copyright \
    /usr/share/man/man8/latentd.8.gz /usr/share/man/man1/latent-encode.1.gz \
    /usr/share/man/man5/latentd.conf.5.gz; do
    grep -qx "$f" "$tmp/files" && [ -e "$f" ] || fail "the package does not install $f"
done
# the units, wherever this Debian's systemd looks (/lib or /usr/lib)
for unit in latentd.service latentd@.service latentd.socket; do
    path=$(grep -E "^(/usr)?/lib/systemd/system/$unit\$" "$tmp/files" || true)
    if [ -z "$path" ]; then
        fail "the package does not install $unit"
        continue
    fi
    grep -q '^ExecStart=/usr/bin/latentd -c /etc/latentd/' "$path" 2>/dev/null ||
        [ "$unit" = latentd.socket ] || fail "$path does not start /usr/bin/latentd with /etc/latentd's config"
done
conffiles=$(dpkg-query -W -f='${Conffiles}' latentd)
echo "conffiles:$conffiles"
echo "$conffiles" | grep -q '^ */etc/latentd/latentd.conf ' || fail "/etc/latentd/latentd.conf is no conffile"
man -w latentd.conf >/dev/null 2>&1 || fail "man finds no latentd.conf(5)"
/usr/bin/latentd --help >/dev/null || fail "latentd --help"

echo "== the installed daemon: /usr/bin/latentd on tests/fixtures/models/tiny-sd"
log=$tmp/latentd.log
/usr/bin/latentd -c /etc/latentd/latentd.conf --model "$top/tests/fixtures/models/tiny-sd" \
    --listen 127.0.0.1:0 --threads 1 --log-file "$log" &
pid=$!
port=""
i=0
while [ $i -lt 300 ] && [ -z "$port" ] && kill -0 "$pid" 2>/dev/null; do
    port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$log" 2>/dev/null | tail -n 1)
    [ -n "$port" ] || { sleep 0.1; i=$((i + 1)); }
done
if [ -z "$port" ]; then
    cat "$log" 2>/dev/null
    echo "FAIL: the installed latentd did not listen"
    exit 1
fi
grep 'listening on' "$log"
code=$(curl -s -o "$tmp/answer.json" -w '%{http_code}' \
    -F image=@"$top/tests/fixtures/images/astronaut_64.png" -F outputs=latents \
    "http://127.0.0.1:$port/v1/encode")
echo "POST /v1/encode: HTTP $code, $(head -c 160 "$tmp/answer.json")..."
[ "$code" = 200 ] && grep -q '"latents"' "$tmp/answer.json" || fail "no latents from the installed daemon"
kill -TERM "$pid"
wait "$pid" || fail "latentd exited $? on SIGTERM"
pid=""
[ $status -eq 0 ] && echo "deb-check: passed" || echo "deb-check: FAILED"
exit $status
