#!/bin/sh
# Installs what latentd needs to build, test and run on Debian (bookworm or later).
# Run as root (or through sudo).  clang and libclang-rt-dev (libFuzzer)
# are for scripts/fuzz.sh; python3 with numpy, Pillow and requests plays
# diffusers' remote client in tests/remote-encode.sh, and python3-yaml reads
# openapi.yaml in tests/openapi-coverage.sh; node and npm run the OpenAPI
# linter (tests/openapi-lint.sh, @redocly/cli 1.34: node 18.17 or later, so
# Debian's own).  systemd (systemd-analyze, systemd-socket-activate) and
# nginx-light are for the operations tests (tests/test_systemd,
# tests/systemd-units.sh, tests/nginx-scale.sh), which skip without them; procps is /bin/kill, the
# units' ExecReload (systemd-analyze verify fails on a unit whose command is
# missing, and a minbase bookworm has no procps).  man-db and groff-base
# render the man pages (tests/man-pages.sh); debhelper and dpkg-dev build the
# Debian package (scripts/deb-check.sh, scripts/test.sh deb).
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    build-essential autoconf automake libtool pkg-config \
    libmicrohttpd-dev libjansson-dev libpng-dev libopenblas-dev \
    libjpeg62-turbo-dev libwebp-dev libsystemd-dev \
    check valgrind curl ca-certificates libcurl4-openssl-dev \
    clang libclang-rt-dev \
    python3 python3-numpy python3-pil python3-requests python3-yaml \
    systemd procps nginx-light \
    man-db groff-base debhelper dpkg-dev >/dev/null
# Debian's nodejs and npm only where no node is installed: NodeSource's
# nodejs (which bundles npm) conflicts with Debian's npm package
if ! command -v npx >/dev/null 2>&1; then
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
echo "install-deps: done"
