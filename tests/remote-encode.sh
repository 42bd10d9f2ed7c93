#!/bin/sh
# make check: diffusers' remote_encode client (tests/remote_encode_client.py)
# against the real daemon.  Needs a Python 3 with numpy, Pillow and requests
# (Debian: python3-numpy python3-pil python3-requests); skipped (77) without.
top=$(cd "$(dirname "$0")/.." && pwd)
for python in "${PYTHON:-python3}" /usr/bin/python3; do
    if "$python" -c 'import numpy, PIL, requests' 2>/dev/null; then
        exec "$python" "$top/tests/remote_encode_client.py" "${LATENTD_BUILDDIR:-.}/latentd" \
            "${LATENTD_FIXTURES:-$top/tests/fixtures}"
    fi
done
echo "SKIP: no python3 with numpy, PIL and requests"
exit 77
