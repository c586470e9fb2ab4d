#!/bin/sh
# Forward-pass benchmark on the S/2 shape (DiT-MoE-S/2-8E2A, random weights):
# ditmoe (packed weights on its own GEMM kernel entry, the default, no
# environment variable set), ditmoe --no-pack (weights as stored, through
# OpenBLAS, with OPENBLAS_CORETYPE=Haswell: what an AVX2 machine gets when
# OpenBLAS knows it) and the PyTorch reference (tools/ref, same math as
# upstream models.py, same OPENBLAS_CORETYPE) at the same batch and thread
# count, run one after the other in each round so all three see the same
# machine load. Prints each run, then per round: times, the packed path's
# speed-up over --no-pack and over PyTorch, and its fraction of the FP32
# FMA peak (measured inside the same ditmoe process, dit_kernel_peak_gflops),
# on the wall clock and on the CPU clock (GFLOP per CPU-second of the
# process against one thread's share of the peak: other jobs on a shared
# machine do not inflate it).
#
#   bench/forward_bench.sh [BUILD_DIR] [THREADS] [ROUNDS] [BATCHES]
#   DITMOE_ISA=avx2 bench/forward_bench.sh ...   # another kernel entry
set -eu
build=${1:-build}
threads=${2:-2}
rounds=${3:-2}
batches=${4:-"8 2"}
here=$(dirname "$0")
ditmoe="$build/tools/cli/ditmoe"
out=$(mktemp -d)
field() { grep "^$1" "$2" | awk "{print \$$3}"; }
for r in $(seq "$rounds"); do
  for b in $batches; do
    echo "== round $r batch $b"
    "$ditmoe" bench --synthetic s2 --batch "$b" --threads "$threads" --iters 3 | tee "$out/p$r.$b"
    OPENBLAS_CORETYPE=Haswell "$ditmoe" bench --synthetic s2 --batch "$b" --threads "$threads" \
      --iters 3 --no-pack | tee "$out/b$r.$b"
    OPENBLAS_CORETYPE=Haswell /usr/bin/python3 "$here/torch_forward.py" --preset s2 --batch "$b" \
      --threads "$threads" --iters 2 | tee "$out/t$r.$b"
  done
done
echo
echo "summary ($threads threads, kernel $(field kernel "$out/p1.$(echo $batches | cut -d' ' -f1)" 2);" \
     "ms = mean of the timed forwards; cpu: GFLOP per CPU-second):"
echo "| round | batch | packed ms | --no-pack ms | PyTorch ms | packed / --no-pack (wall, cpu) | PyTorch / packed | packed of FMA peak (wall, cpu) |"
echo "|---|---|---|---|---|---|---|---|"
for r in $(seq "$rounds"); do
  for b in $batches; do
    p=$(field forward "$out/p$r.$b" 2)
    n=$(field forward "$out/b$r.$b" 2)
    pc=$(field "cpu clock" "$out/p$r.$b" 3)
    nc=$(field "cpu clock" "$out/b$r.$b" 3)
    t=$(grep -o 'seconds_per_forward=[0-9.]*' "$out/t$r.$b" | cut -d= -f2 | awk '{print $1*1000}')
    echo "| $r | $b | $p | $n | $t | $(awk "BEGIN{printf \"%.2fx, %.2fx\", $n/$p, $pc/$nc}") |" \
      "$(awk "BEGIN{printf \"%.2fx\", $t/$p}") |" \
      "$(field ratio "$out/p$r.$b" 2), $(grep '^cpu clock' "$out/p$r.$b" | awk '{print $7}') |"
  done
done
rm -rf "$out"
