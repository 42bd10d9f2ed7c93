#!/bin/sh
# Installs what latentd needs to build, test and run on Debian (bookworm or later).
# Run as root (or through sudo).  clang and libclang-rt-dev (libFuzzer)
# are for scripts/fuzz.sh; python3 with numpy, Pillow and requests plays
# diffusers' remote client in tests/remote-encode.sh; systemd (systemd-analyze,
# systemd-socket-activate) and nginx-light are for the operations tests
# (tests/test_systemd, tests/systemd-units.sh, tests/nginx-scale.sh), which
# skip without them.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    build-essential autoconf automake libtool pkg-config \
    libmicrohttpd-dev libjansson-dev libpng-dev libopenblas-dev \
    libjpeg62-turbo-dev libwebp-dev libsystemd-dev \
    check valgrind curl ca-certificates libcurl4-openssl-dev \
    clang libclang-rt-dev \
    python3 python3-numpy python3-pil python3-requests \
    systemd nginx-light >/dev/null
echo "install-deps: done"
