#!/bin/sh
# latentd's encoder and PyTorch's on the same work, one after the other on this
# machine, and their ratio.  Needs a build (scripts/build.sh) and, for the
# baseline, Debian's python3-torch.
#   bench/compare.sh [SIZE] [BATCH] [REPS] [THREADS]
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
size=${1:-512} batch=${2:-1} reps=${3:-3} threads=${4:-2}
make -s -C "$top/build/release" bench/bench-encode
ours=$("$top/build/release/bench/bench-encode" --random-sd --size "$size" --batch "$batch" \
       --reps "$reps" --threads "$threads")
echo "$ours"
python=${PYTHON:-/usr/bin/python3}
if "$python" -c 'import torch' 2>/dev/null; then
    theirs=$("$python" "$top/bench/torch_encoder.py" --size "$size" --batch "$batch" --reps "$reps" \
             --threads "$threads")
    echo "$theirs"
    a=$(echo "$ours" | awk '/^images\/s/ {print $2}')
    b=$(echo "$theirs" | awk '/^images\/s/ {print $2}')
    echo "ratio        latentd / torch = $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", a / b}') x images/s"
    # per CPU-second: what a busy machine disturbs least (with one thread, torch's
    # OpenMP threads spin, which counts against it with more)
    a=$(echo "$ours" | awk '/^cpu time/ {gsub(/\)/, "", $NF); print $NF}')
    b=$(echo "$theirs" | awk '/^cpu time/ {gsub(/\)/, "", $NF); print $NF}')
    echo "ratio        latentd / torch = $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", a / b}') x images per CPU-second"
else
    echo "python3-torch is not installed: no baseline"
fi
