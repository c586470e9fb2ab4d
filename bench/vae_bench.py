#!/usr/bin/python3
"""vae_bench.py: the SD-VAE decoder in C (bench/vae_bench.c) beside PyTorch.

    bench/vae_bench.py [--build build] [--threads 2] [--rounds 3] [--size 32]
                       [--dir /tmp/ditmoe-sd-vae-random]

Makes (once) a VAE directory at the real sd-vae-ft-mse shape with random
weights (tools/ref/vae_ref.py), then alternates, round by round, the C
decoder (the engine's kernel entry on a worker pool of --threads, no
environment variable set) and the PyTorch reference decoder on the same
latent and thread count, so both see the same machine load. PyTorch runs
with OPENBLAS_CORETYPE=Haswell set (Debian's PyTorch links OpenBLAS, which
may not know the CPU) unless the variable is already set. Reports every
round and the best: seconds, GFLOP/s, the fraction of the FP32 FMA peak
(measured in the C process on the same threads), and PyTorch time / C
time, each on two clocks: wall time, and process CPU time (all threads),
which other jobs time-slicing a shared machine do not inflate.
"""
import argparse
import os
import subprocess
import sys
import time

C_ENV = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "DITMOE_ISA")}
os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")  # before torch loads OpenBLAS
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools", "ref"))
import vae_ref  # noqa: E402


def run_c(exe, a):
    out = subprocess.run([exe, a.dir, "--size", str(a.size), "--threads", str(a.threads),
                          "--rounds", "1"], check=True, capture_output=True, text=True,
                         env=C_ENV).stdout
    kv = dict(line.split() for line in out.splitlines())
    return {k: (v if k == "kernel" else float(v)) for k, v in kv.items()}


def run_torch(model, z):
    """(wall, CPU) seconds of one decode"""
    with torch.no_grad():
        w, c = time.perf_counter(), time.process_time()
        model(z)
        return time.perf_counter() - w, time.process_time() - c


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", default="build")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--dir", default="/tmp/ditmoe-sd-vae-random")
    a = p.parse_args()
    exe = os.path.join(a.build, "bench", "vae_bench")
    if not os.path.exists(os.path.join(a.dir, vae_ref.WEIGHTS_FILE)):
        vae_ref.write_vae_dir(vae_ref.randomize_(vae_ref.VAEDecoder(vae_ref.SD_VAE), 0), a.dir)
    torch.set_num_threads(a.threads)
    model = vae_ref.load_vae_dir(a.dir)
    z = torch.randn(1, 4, a.size, a.size, generator=torch.Generator().manual_seed(0))
    run_torch(model, z)  # oneDNN builds its kernels on the first call
    rows = []
    for r in range(a.rounds):
        c, t = run_c(exe, a), run_torch(model, z)
        rows.append((c, t))
        gf, per = c["gflop_per_image"], c["peak_gflops"] / a.threads
        print(f"| {r + 1} | {c['decode_seconds']:.2f} | {c['of_peak']:.3f} | {t[0]:.2f} | "
              f"{gf / t[0] / c['peak_gflops']:.3f} | {t[0] / c['decode_seconds']:.2f}x | "
              f"{c['cpu_of_peak']:.3f} | {gf / t[1] / per:.3f} | "
              f"{t[1] / c['decode_cpu_seconds']:.2f}x |", flush=True)
    c = rows[0][0]
    print(f"\nsd-vae-ft-mse decoder, random weights, {a.size}x{a.size}x4 latent -> "
          f"{a.size * 8}x{a.size * 8}, {c['gflop_per_image']:.0f} GFLOP, kernel {c['kernel']}, "
          f"{a.threads} threads, FMA peak {c['peak_gflops']:.0f} GFLOP/s; PyTorch with "
          f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']}")
    print("columns: round | C s | C of peak | PyTorch s | PyTorch of peak | PyTorch/C "
          "| C of peak (cpu clock) | PyTorch of peak (cpu clock) | PyTorch/C (cpu clock)")
    best_c = min(rows, key=lambda x: x[0]["decode_seconds"])[0]
    best_t = min(x[1][0] for x in rows)
    print(f"best: C {best_c['decode_seconds']:.2f} s ({best_c['of_peak']:.3f} of peak), "
          f"PyTorch {best_t:.2f} s, PyTorch/C {best_t / best_c['decode_seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
