#!/bin/sh
# Scale-out behind nginx (tests/nginx-scale.py says what it checks).  Skips
# (77) without nginx (Debian: nginx-light) or python3.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v python3 >/dev/null 2>&1; then
    echo "nginx-scale: no python3; skipped"
    exit 77
fi
PATH=$PATH:/usr/sbin:/sbin exec python3 "$here/nginx-scale.py" "$@"
