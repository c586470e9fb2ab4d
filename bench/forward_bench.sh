#!/bin/sh
# Forward-pass benchmark on the S/2 shape (DiT-MoE-S/2-8E2A, random weights):
# ditmoe vs the PyTorch reference (tools/ref, same math as upstream models.py)
# at the same batch and thread count, run alternately in one go so both see
# the same machine load. Prints each run and the ratios the engine issue asks
# for: PyTorch time / ditmoe time at batch 2, and achieved / sgemm GFLOP/s
# at batch 8 (the sgemm yardstick is measured inside the same ditmoe run).
#
#   bench/forward_bench.sh [BUILD_DIR] [THREADS] [ROUNDS]
set -eu
build=${1:-build}
threads=${2:-2}
rounds=${3:-2}
here=$(dirname "$0")
ditmoe="$build/tools/cli/ditmoe"
out=$(mktemp)
for r in $(seq "$rounds"); do
  for b in 2 8; do
    echo "round $r batch $b"
    "$ditmoe" bench --synthetic s2 --batch "$b" --threads "$threads" --iters 3 | tee -a "$out.d$b"
    /usr/bin/python3 "$here/torch_forward.py" --preset s2 --batch "$b" --threads "$threads" --iters 2 | tee -a "$out.t$b"
  done
done
best() { sort -n | head -1; }
d2=$(grep '^forward' "$out.d2" | awk '{print $5}' | best)
t2=$(grep -o 'seconds_per_forward=[0-9.]*' "$out.t2" | cut -d= -f2 | awk '{print $1*1000}' | best)
d8=$(grep '^forward' "$out.d8" | awk '{print $5}' | best)
t8=$(grep -o 'seconds_per_forward=[0-9.]*' "$out.t8" | cut -d= -f2 | awk '{print $1*1000}' | best)
r8=$(grep '^ratio' "$out.d8" | awk '{print $2}' | sort -rn | head -1)
echo
echo "summary (best of $rounds rounds, $threads threads):"
echo "  batch 2: ditmoe ${d2} ms, PyTorch ${t2} ms -> PyTorch/ditmoe = $(awk "BEGIN{printf \"%.2f\", $t2/$d2}")x"
echo "  batch 8: ditmoe ${d8} ms, PyTorch ${t8} ms -> PyTorch/ditmoe = $(awk "BEGIN{printf \"%.2f\", $t8/$d8}")x"
echo "  batch 8: achieved / sgemm GFLOP/s (same run) = $r8"
rm -f "$out" "$out".*
