#!/bin/sh
# make check: every route and status code openapi.yaml documents, provoked
# from the real daemon (tests/openapi-coverage.py).  Needs a Python 3 with
# PyYAML (Debian: python3-yaml); skipped (77) without, unless
# LATENTD_REQUIRE_API_CHECKS=1 (.ci/run sets it) makes that a failure.
top=$(cd "$(dirname "$0")/.." && pwd)
for python in "${PYTHON:-python3}" /usr/bin/python3; do
    if "$python" -c 'import yaml' 2>/dev/null; then
        exec "$python" "$top/tests/openapi-coverage.py" "${LATENTD_BUILDDIR:-.}/latentd" \
            "${LATENTD_FIXTURES:-$top/tests/fixtures}" "$top/openapi.yaml"
    fi
done
echo "SKIP: no python3 with yaml (Debian: python3-yaml)"
if [ "${LATENTD_REQUIRE_API_CHECKS:-0}" = 1 ]; then
    echo "FAIL: LATENTD_REQUIRE_API_CHECKS=1 forbids skipping"
    exit 1
fi
exit 77
