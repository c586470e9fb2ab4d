#!/bin/bash
# issue13.sh [LOG_DIR]: issue 13's measurements on an AVX-512 machine, in
# the order docs/benchmarks.md reports them, each log in LOG_DIR (default
# /tmp/b13). Stop other jobs first (a training run: pkill -STOP -f train.py).
# The gemm_bench avx2 run (DITMOE_ISA=avx2 OPENBLAS_CORETYPE=Haswell) is
# the last line: the kernel-alone comparison of the AVX2 entry.
set -u
cd "$(dirname "$0")/.."
L=${1:-/tmp/b13}
mkdir -p "$L"
date > "$L/start"
lscpu | grep -E 'Model name|CPU family|Model:' > "$L/cpu"
OPENBLAS_CORETYPE=SkylakeX build/bench/gemm_bench --rounds 3 > "$L/gemm_skx.log" 2>&1
BLAS_CORE=SkylakeX bench/forward_bench.sh build 2 3 "8 2" > "$L/fwd_avx512.log" 2>&1
DITMOE_ISA=avx2 BLAS_CORE=Haswell bench/forward_bench.sh build 2 3 "8" > "$L/fwd_avx2.log" 2>&1
OPENBLAS_CORETYPE=SkylakeX /usr/bin/python3 bench/vae_bench.py --threads 2 --rounds 3 > "$L/vae.log" 2>&1
/usr/bin/python3 bench/image_bench.py --threads 2 --rounds 2 > "$L/image.log" 2>&1
DITMOE_ISA=avx2 OPENBLAS_CORETYPE=Haswell build/bench/gemm_bench --rounds 3 > "$L/gemm_avx2_haswell.log" 2>&1
date > "$L/end"
