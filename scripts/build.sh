#!/bin/sh
# Configures and builds latentd out of tree in build/release.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
[ -x configure ] || autoreconf -fi >/dev/null 2>&1
mkdir -p build/release
cd build/release
# a build folder copied along with its tree belongs to the other source folder
if [ -f Makefile ] && ! grep -qx "abs_top_srcdir = $top" Makefile; then
    echo "build/release was configured for another source folder: configuring anew"
    rm -rf ./*
fi
[ -f Makefile ] || "$top/configure" -q "$@"
make -s -j"$(nproc 2>/dev/null || echo 2)"
echo "built: build/release/latentd, build/release/latent-encode"
