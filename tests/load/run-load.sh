#!/bin/sh
# The load and abuse test (tests/load/README.md): starts a latentd on 127.0.0.1 with the
# tiny fixture model and runs tests/load/latentd-load against it, all within a time budget.
#   tests/load/run-load.sh [LATENTD_BIN] [latentd-load options...] [-- latentd flags...]
# Environment:
#   LATENTD_BIN           the daemon (or give it as the first argument)
#   LATENTD_LOAD_BIN      the client (default: tests/load/latentd-load beside the daemon)
#   LATENTD_LOAD_SECONDS  the budget for the whole run (default 60); the phases get shares
#   LATENTD_LOAD_RSS_MB   peak RSS limit: memory budget + model + allowance (default 1024)
# Options after the daemon override the computed ones (the client takes the last of each),
# e.g. `--mode slowloris`, `--clients 200`, `--set max_queue=16`; `--help` lists them.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    LATENTD_BIN=$1
    shift
fi
: "${LATENTD_BIN:?set LATENTD_BIN or give the daemon as the first argument}"
bindir=$(cd "$(dirname "$LATENTD_BIN")" && pwd)
daemon=$bindir/$(basename "$LATENTD_BIN")
client=${LATENTD_LOAD_BIN:-$bindir/tests/load/latentd-load}
if [ ! -x "$client" ]; then
    echo "run-load.sh: no client at $client (make tests/load/latentd-load, or set LATENTD_LOAD_BIN)" >&2
    exit 2
fi
# references for the images that have no expected values come from the CLI when it is there
cli=""
[ -x "$bindir/latent-encode" ] && cli=$bindir/latent-encode

# Shares of the budget: unloaded 13%, overload 33%, slowloris hold 25% (at least 16 s: two
# bytes at the issue's 8 s pace), drain 1/6; answers are waited for 10 s at most. A daemon
# that behaves finishes within the budget; one that queues work it cannot do runs over by
# up to the drain and settle bounds.
budget=${LATENTD_LOAD_SECONDS:-60}
eval "$(awk -v b="$budget" 'function at_least(x, m) { return x < m ? m : x }
    BEGIN { printf "calib=%d over=%d hold=%d drain=%d\n", at_least(b * 0.13, 4),
            at_least(b / 3, 8), at_least(b / 4, 16), at_least(b / 6, 5) }')"

# The daemon as an operator would size it for this load: a queue its ~5 images/s drain
# within the clients' 10 s patience, and a memory budget the peak RSS must stay under
# (plus the tiny model and some 64 MiB of code, stacks and allocator slack).
budget_mb=${LATENTD_LOAD_BUDGET_MB:-768}
exec "$client" --latentd "$daemon" --latent-encode "$cli" --fixtures "$top/tests/fixtures" \
    --calib-seconds "$calib" --duration "$over" --grace 10 --patience 10 \
    --slow-hold "$hold" --drain-wait "$drain" --settle 5 \
    --set max_queue=16 --set "memory_budget_bytes=${budget_mb}M" \
    --rss-limit-mb "${LATENTD_LOAD_RSS_MB:-$((budget_mb + 64))}" "$@"
