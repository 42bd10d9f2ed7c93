#!/bin/sh
# Fuzzes every parser of outside bytes (tests/fuzz/fuzz_<name>.c) with
# libFuzzer under AddressSanitizer + UndefinedBehaviorSanitizer.
#   scripts/fuzz.sh [SECONDS_PER_TARGET [NAME...]]     default: 60 s, every target
# Builds the targets with clang in build/fuzz, then runs each in turn from its
# seed corpus (tests/fuzz/corpus/<name>) and saved crashes
# (tests/fuzz/regressions/<name>); what the fuzzer learns is kept in
# build/fuzz/corpus/<name> for the next run.  Any crash, leak, timeout or
# out-of-memory input is copied into tests/fuzz/regressions/<name>/ (commit it:
# `make check` replays it from then on) and the script exits 1.
# Needs clang and libFuzzer (libclang-rt-dev): scripts/install-deps.sh.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
seconds=${1:-60}
[ $# -gt 0 ] && shift
names=${*:-$(cd tests/fuzz && ls fuzz_*.c | sed 's/^fuzz_//; s/\.c$//' | tr '\n' ' ')}
cc=${FUZZ_CC:-clang}
command -v "$cc" >/dev/null 2>&1 || { echo "fuzz: $cc not found (scripts/install-deps.sh)" >&2; exit 2; }
[ -x configure ] || autoreconf -fi >/dev/null 2>&1

build=build/fuzz
mkdir -p "$build"
if [ ! -f "$build/Makefile" ]; then
    (cd "$build" && "$top/configure" -q CC="$cc" \
        CFLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -Wno-unknown-warning-option" \
        LDFLAGS="-fsanitize=address,undefined")
fi
make -s -C "$build" -j"$(nproc 2>/dev/null || echo 2)" fuzz-targets FUZZ_NAMES="$names"

# one input may take 10 s, 2 GB and one 512 MB block at most; leaks count as crashes
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
for name in $names; do
    work=$build/corpus/$name artifacts=$build/artifacts/$name log=$build/fuzz-$name.log
    rm -rf "$artifacts"
    mkdir -p "$work" "$artifacts"
    set -- "$work" "tests/fuzz/corpus/$name"
    [ -d "tests/fuzz/regressions/$name" ] && set -- "$@" "tests/fuzz/regressions/$name"
    [ -f "tests/fuzz/dict/$name.dict" ] && set -- -dict="tests/fuzz/dict/$name.dict" "$@"
    rc=0
    "$build/tests/fuzz/fuzz_$name" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "$@" >"$log" 2>&1 || rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1)
    printf 'fuzz %-12s %ss: %s runs, %s exec/s, %s, corpus %s\n' "$name" "$seconds" \
        "${runs:-?}" "${speed:-?}" "${cov:-cov: ?}" "$(ls "$work" | wc -l)"
    found=$(ls "$artifacts")
    if [ "$rc" -ne 0 ] || [ -n "$found" ]; then
        status=1
        echo "fuzz $name FAILED (exit $rc); log: $log" >&2
        grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error|.*fuzz property failed)' "$log" | head -n 5 >&2 || true
        mkdir -p "tests/fuzz/regressions/$name"
        for f in $found; do
            cp "$artifacts/$f" "tests/fuzz/regressions/$name/$f"
            echo "  crash input: tests/fuzz/regressions/$name/$f" >&2
            echo "  reproduce:   $build/tests/fuzz/fuzz_$name tests/fuzz/regressions/$name/$f" >&2
        done
    fi
done
[ $status -eq 0 ] && echo "fuzz: no crash in $(echo $names | wc -w) targets" || echo "fuzz: CRASHES FOUND"
exit $status
