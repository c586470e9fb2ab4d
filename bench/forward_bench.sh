#!/bin/sh
# Forward-pass benchmark on the S/2 shape (DiT-MoE-S/2-8E2A, random weights):
# ditmoe (packed weights on its own GEMM kernel, the default), ditmoe
# --no-pack (weights as stored, through OpenBLAS) and the PyTorch reference
# (tools/ref, same math as upstream models.py) at the same batch and thread
# count, run one after the other in each round so all three see the same
# machine load. Prints each run, then per round the ratios the engine issue
# asks for: PyTorch time / ditmoe time at batch 2, and achieved / sgemm
# GFLOP/s at batch 8 (the sgemm yardstick is measured inside the same
# ditmoe process, right before its forwards).
#
#   bench/forward_bench.sh [BUILD_DIR] [THREADS] [ROUNDS]
set -eu
build=${1:-build}
threads=${2:-2}
rounds=${3:-2}
here=$(dirname "$0")
ditmoe="$build/tools/cli/ditmoe"
out=$(mktemp -d)
field() { grep "^$1" "$2" | awk "{print \$$3}"; }
for r in $(seq "$rounds"); do
  for b in 2 8; do
    echo "== round $r batch $b"
    "$ditmoe" bench --synthetic s2 --batch "$b" --threads "$threads" --iters 3 | tee "$out/p$r.$b"
    "$ditmoe" bench --synthetic s2 --batch "$b" --threads "$threads" --iters 3 --no-pack | tee "$out/b$r.$b"
    /usr/bin/python3 "$here/torch_forward.py" --preset s2 --batch "$b" --threads "$threads" \
      --iters 2 | tee "$out/t$r.$b"
  done
done
echo
echo "summary ($threads threads; ms = mean of the timed forwards):"
echo "| round | batch | packed ms | --no-pack ms | PyTorch ms | PyTorch / packed | packed / sgemm | --no-pack / sgemm |"
echo "|---|---|---|---|---|---|---|---|"
for r in $(seq "$rounds"); do
  for b in 2 8; do
    p=$(field forward "$out/p$r.$b" 2)
    n=$(field forward "$out/b$r.$b" 2)
    t=$(grep -o 'seconds_per_forward=[0-9.]*' "$out/t$r.$b" | cut -d= -f2 | awk '{print $1*1000}')
    echo "| $r | $b | $p | $n | $t | $(awk "BEGIN{printf \"%.2fx\", $t/$p}") |" \
      "$(field ratio "$out/p$r.$b" 2) | $(field ratio "$out/b$r.$b" 2) |"
  done
done
rm -rf "$out"
