#!/bin/sh
# make check: lints openapi.yaml with Redocly's CLI, pinned to one version so
# that a new release of the linter cannot turn a green tree red (bump it on
# purpose).  Errors fail the test; warnings are printed and pass.
#
# 1.34.20 is the last release that runs on node 18 (Debian bookworm's; 2.x
# needs 20.19), so every machine lints alike.  tests/openapi-lint.yaml sets
# its rules to what 2.x's `recommended` checks, with 2.x's rules that 1.34
# lacks in tests/openapi-lint-rules.js.
#
# Skipped (77) without node and npx (Debian: nodejs npm), with a node older
# than the CLI needs (18.17), or when the pinned CLI is neither in npx's cache
# nor fetchable (no npm registry); with LATENTD_REQUIRE_API_CHECKS=1 (.ci/run
# sets it) those are failures, so CI can never pass by skipping.  Once the
# CLI runs, a lint error always fails.
version=1.34.20
top=$(cd "$(dirname "$0")/.." && pwd)
spec="$top/openapi.yaml"
config="$top/tests/openapi-lint.yaml"
# no telemetry, no "a new version is out" notice: the run stays quiet and local
REDOCLY_TELEMETRY=off
REDOCLY_SUPPRESS_UPDATE_NOTICE=true
export REDOCLY_TELEMETRY REDOCLY_SUPPRESS_UPDATE_NOTICE

skip() {
    echo "SKIP: $*"
    if [ "${LATENTD_REQUIRE_API_CHECKS:-0}" = 1 ]; then
        echo "FAIL: LATENTD_REQUIRE_API_CHECKS=1 forbids skipping"
        exit 1
    fi
    exit 77
}

command -v node >/dev/null 2>&1 && command -v npx >/dev/null 2>&1 ||
    skip "no node/npx (Debian: nodejs npm)"
node -e 'const [a, b] = process.versions.node.split(".").map(Number);
         process.exit(a > 18 || (a === 18 && b >= 17) ? 0 : 1)' ||
    skip "node $(node --version) is older than the 18.17 that @redocly/cli@$version needs"
# fetching the CLI is the only step that may skip: a failure after it is the spec's
out=$(npx --yes "@redocly/cli@$version" --version 2>&1) ||
    skip "@redocly/cli@$version could not be fetched or run: $(printf '%s' "$out" | tail -n 3)"
echo "@redocly/cli $(printf '%s' "$out" | tail -n 1) on node $(node --version): lint $spec"
exec npx --yes "@redocly/cli@$version" lint --config "$config" --format=stylish "$spec"
