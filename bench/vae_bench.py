#!/usr/bin/python3
"""vae_bench.py: the SD-VAE decoder in C (bench/vae_bench.c) beside PyTorch.

    bench/vae_bench.py [--build build] [--threads 2] [--rounds 3] [--size 32]
                       [--batch 4] [--dir /tmp/ditmoe-sd-vae-random]

Makes (once) a VAE directory at the real sd-vae-ft-mse shape with random
weights (tools/ref/vae_ref.py), then alternates, round by round, the C
benchmark (sgemm at the decoder's GEMM shapes, one latent, a batch) in its
two threading modes (BLAS's own threads; the engine's worker pool with
single-threaded BLAS, as the server runs it) and the PyTorch reference
decoder on the same latent sizes and thread count, so all see the same
machine load. Reports the best of the rounds: seconds, decode
GFLOP/s against the same run's sgemm GFLOP/s, and PyTorch time / C time,
each on two clocks: wall time, and process CPU time (all threads), which
other jobs time-slicing a shared machine do not inflate.
"""
import argparse
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools", "ref"))
import vae_ref  # noqa: E402


def run_c(exe, a, pool):
    out = subprocess.run([exe, a.dir, "--size", str(a.size), "--threads", str(a.threads),
                          "--rounds", "1", "--batch", str(a.batch), "--pool", str(pool)],
                         check=True, capture_output=True, text=True).stdout
    return {k: float(v) for k, v in (line.split() for line in out.splitlines())}


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
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dir", default="/tmp/ditmoe-sd-vae-random")
    a = p.parse_args()
    exe = os.path.join(a.build, "bench", "vae_bench")
    if not os.path.exists(os.path.join(a.dir, vae_ref.WEIGHTS_FILE)):
        vae_ref.write_vae_dir(vae_ref.randomize_(vae_ref.VAEDecoder(vae_ref.SD_VAE), 0), a.dir)
    torch.set_num_threads(a.threads)
    model = vae_ref.load_vae_dir(a.dir)
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(1, 4, a.size, a.size, generator=g)
    zb = torch.randn(a.batch, 4, a.size, a.size, generator=g)
    run_torch(model, z1)  # oneDNN builds its kernels on the first call
    best = {}

    def keep(key, v, better=min):
        best[key] = better(best.get(key, v), v)

    modes = (("C", 0), ("C pool", 1)) if a.threads > 1 else (("C", 0),)
    for r in range(a.rounds):
        cs = {name: run_c(exe, a, pool) for name, pool in modes}
        t1, tb = run_torch(model, z1), run_torch(model, zb)
        line = [f"round {r + 1}:"]
        for name, c in cs.items():
            line.append(f"{name} {c['decode1_seconds']:.2f} s / {c['decodeB_seconds']:.2f} s"
                        f" (cpu {c['decode1_cpu_seconds']:.2f} / {c['decodeB_cpu_seconds']:.2f},"
                        f" sgemm {c['sgemm_gflops']:.0f} GFLOP/s),")
        line.append(f"PyTorch {t1[0]:.2f} s / {tb[0]:.2f} s (cpu {t1[1]:.2f} / {tb[1]:.2f})")
        print(" ".join(line), flush=True)
        for clock, i, sfx in (("wall", 0, ""), ("cpu", 1, "_cpu")):
            keep((clock, "t1"), t1[i])
            keep((clock, "tb"), tb[i])
            for name, c in cs.items():
                keep((clock, name, "c1"), c[f"decode1{sfx}_seconds"])
                keep((clock, name, "cb"), c[f"decodeB{sfx}_seconds"])
                keep((clock, name, "sgemm"), c[f"sgemm{sfx}_gflops"], max)
                keep((clock, name, "r1"), c[f"decode1{sfx}_of_sgemm"], max)
                keep((clock, name, "rb"), c[f"decodeB{sfx}_of_sgemm"], max)
    px, gf = a.size * 8, c["gflop_per_image"]
    print(f"\nsummary: sd-vae-ft-mse decoder, random weights, {a.size}x{a.size}x4 latents "
          f"-> {px}x{px}, {gf:.0f} GFLOP per image, {a.threads} threads, "
          f"best of {a.rounds} rounds")
    for clock in ("wall", "cpu"):
        print(f"  {clock} clock:")
        for name, _ in modes:
            b = {k[2]: v for k, v in best.items() if k[0] == clock and k[1] == name}
            for n, ck, tk, rk in ((1, "c1", "t1", "r1"), (a.batch, "cb", "tb", "rb")):
                t = best[(clock, tk)]
                print(f"    {name:6s} {n} image(s): {b[ck]:.2f} s = {n * gf / b[ck]:.0f} GFLOP/s"
                      f" ({b[rk]:.2f} of the same run's sgemm, {b['sgemm']:.0f} GFLOP/s),"
                      f" PyTorch {t:.2f} s -> PyTorch/C = {t / b[ck]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
