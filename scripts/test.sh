#!/bin/sh
# Builds latentd out of tree and runs its test suite: plainly, then under
# AddressSanitizer + UndefinedBehaviorSanitizer, then under valgrind; then
# fuzzes every parser of outside bytes for a bounded time (scripts/fuzz.sh,
# $LATENTD_FUZZ_SECONDS per target, default 30); then loads and attacks the
# real daemon past its capacity (tests/load, $LATENTD_LOAD_SECONDS, default 60);
# then builds the Debian package, installs it and runs the installed daemon
# (scripts/deb-check.sh; skipped when not root or without dpkg-buildpackage);
# then `make distcheck` (the tarball builds, passes its quick tests, installs
# and uninstalls cleanly).  Skips are never silent: each mode's summary and the
# closing lines list every test that skipped (exit 77; the deb check too) and
# every check a passing test skipped ("...: skipped" in its log), with the
# reason the test gives.
#   scripts/test.sh            all seven
#   scripts/test.sh plain|sanitize|valgrind|fuzz|load|deb|dist   one of them (or a quoted list)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
[ -x configure ] || autoreconf -fi >/dev/null 2>&1
jobs=$(nproc 2>/dev/null || echo 2)
modes=${1:-"plain sanitize valgrind fuzz load deb dist"}
status=0
skipped="" # "mode: test: why" lines, one per skip, listed again at the end
nl='
'

note_skip() { # mode, test, why
    printf 'SKIPPED: %s: %s\n' "$2" "$3"
    skipped="$skipped$1: $2: $3$nl"
}

# why a test skipped: the last line of its log that says so (the tests print
# "...; skipped" or "SKIP: ..."), not the harness's own "SKIP name (exit status: 77)"
skip_reason() {
    why=$(grep -iE 'skip' "$1" | grep -vE '^SKIP .*\(exit status: 77\)$' | tail -n 1)
    [ -n "$why" ] || why="(its log $1 gives no reason)"
    printf '%s' "$why"
}

summary() { # mode, build dir: the Check runners' closing lines, one per test program
    for log in "$2"/tests/*.log; do
        printf '%s: %s\n' "$(basename "$log" .log)" "$(grep -E '^[0-9]+%: Checks' "$log" | tail -n 1)"
    done
    # which check failed and where: CI shows only what this script prints
    grep -hE ':[FE]:' "$2"/tests/*.log 2>/dev/null || true
    grep -hE '^replay ' "$2"/tests/fuzz/replay_*.log 2>/dev/null || true # fuzz corpora replayed
    # what was not checked: tests that exited 77, and parts of passing tests
    # that skipped a check for want of a tool ("...: skipped" in their log)
    for trs in "$2"/tests/*.trs "$2"/tests/fuzz/*.trs; do
        [ -f "$trs" ] || continue
        log=${trs%.trs}.log
        name=tests/${trs#"$2"/tests/}
        name=${name%.trs}
        if grep -q '^:test-result: SKIP' "$trs"; then
            note_skip "$1" "$name" "$(skip_reason "$log")"
        elif [ -f "$log" ]; then
            parts=$(grep -E '[:;] skipped$' "$log" | sort -u)
            [ -z "$parts" ] || while IFS= read -r line; do
                note_skip "$1" "$name (in part)" "$line"
            done <<EOF
$parts
EOF
        fi
    done
}

run_mode() { # mode, configure flags..., then make variables after --
    mode=$1; shift
    dir=build/test-$mode
    mkdir -p "$dir"
    echo "== $mode =="
    flags=""
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do flags="$flags $1"; shift; done
    [ $# -gt 0 ] && shift
    (cd "$dir" && eval "\"$top/configure\" -q $flags" && make -s -j"$jobs" all \
        && make -s -j"$jobs" check "$@") || status=1
    summary "$mode" "$dir"
}

for mode in $modes; do
    case $mode in
    plain) run_mode plain ;;
    sanitize)
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        run_mode sanitize \
            "CFLAGS='-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all'" \
            "LDFLAGS='-fsanitize=address,undefined'" ;;
    valgrind)
        # CK_FORK=no keeps each test in the process valgrind watches, and
        # --trace-children follows it into the daemon and latent-encode the tests
        # start (not into the shell helpers). One BLAS thread and the quick sets
        # keep it to minutes (valgrind runs the vector code ~200x slower; the
        # sanitizer run covers the full sets); time limits in the tests and
        # the daemon's own stretch by LATENTD_TEST_TIME_SCALE.
        CK_FORK=no OPENBLAS_NUM_THREADS=1 LATENTD_TEST_QUICK=1 LATENTD_TEST_TIME_SCALE=30 \
        run_mode valgrind "CFLAGS='-O1 -g'" -- \
            LOG_COMPILER=valgrind \
            AM_LOG_FLAGS="--quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect --track-origins=no --trace-children=yes --trace-children-skip=*/sh,*/bash,*/rm,*/prlimit,*/timeout --child-silent-after-fork=yes" ;;
    load)
        # the load and abuse test (tests/load/README.md): builds
        # the daemon and the client, then tests/load/run-load.sh within LATENTD_LOAD_SECONDS
        # (default 60); its table ends with "N passed, N failed"
        dir=build/test-load
        mkdir -p "$dir"
        echo "== load =="
        (cd "$dir" && "$top/configure" -q && make -s -j"$jobs" latentd latent-encode tests/load/latentd-load \
            && "$top/tests/load/run-load.sh" "$top/$dir/latentd") || status=1 ;;
    fuzz)
        echo "== fuzz =="
        scripts/fuzz.sh "${LATENTD_FUZZ_SECONDS:-30}" || status=1 ;;
    deb)
        # a copy of the tree in a temp folder, built with dpkg-buildpackage,
        # installed with apt-get and purged again; 77 is a skip
        echo "== deb =="
        mkdir -p build
        { rc=0; scripts/deb-check.sh 2>&1 || rc=$?; echo $rc >build/deb-check.rc; } | tee build/deb-check.log
        rc=$(cat build/deb-check.rc)
        [ "$rc" -ne 77 ] || note_skip deb scripts/deb-check.sh "$(skip_reason build/deb-check.log)"
        [ "$rc" -eq 0 ] || [ "$rc" -eq 77 ] || status=1 ;;
    dist)
        echo "== dist =="
        dir=build/test-dist
        mkdir -p "$dir"
        (cd "$dir" && "$top/configure" -q && make -s -j"$jobs" distcheck >distcheck.log 2>&1 \
            && tail -n 4 distcheck.log) || { tail -n 40 "$dir/distcheck.log"; status=1; } ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
done
if [ -n "$skipped" ]; then
    echo "== skipped: not checked on this machine (sh scripts/install-deps.sh installs what they need) =="
    printf '%s' "$skipped" | sed 's/^/SKIPPED: /'
else
    echo "nothing skipped"
fi
[ $status -eq 0 ] && echo "all test runs passed" || echo "SOME TEST RUNS FAILED"
exit $status
