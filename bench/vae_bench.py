#!/usr/bin/python3
"""vae_bench.py: the SD-VAE decoder in C (bench/vae_bench.c) beside PyTorch.

    bench/vae_bench.py [--build build] [--threads 2] [--rounds 3] [--size 32]
                       [--batch 4] [--dir /tmp/ditmoe-sd-vae-random]

Makes (once) a VAE directory at the real sd-vae-ft-mse shape with random
weights (tools/ref/vae_ref.py), then alternates, round by round, the C
benchmark (sgemm at the decoder's GEMM shapes, one latent, a batch) and the
PyTorch reference decoder on the same latent sizes and thread count, so both
see the same machine load. Reports the best of the rounds: seconds, decode
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


def run_c(exe, a):
    out = subprocess.run([exe, a.dir, "--size", str(a.size), "--threads", str(a.threads),
                          "--rounds", "1", "--batch", str(a.batch)],
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

    for r in range(a.rounds):
        c = run_c(exe, a)
        t1, tb = run_torch(model, z1), run_torch(model, zb)
        print(f"round {r + 1}: wall C {c['decode1_seconds']:.2f} s / {c['decodeB_seconds']:.2f} s"
              f" (sgemm {c['sgemm_gflops']:.0f} GFLOP/s), PyTorch {t1[0]:.2f} s / {tb[0]:.2f} s;"
              f" cpu C {c['decode1_cpu_seconds']:.2f} s / {c['decodeB_cpu_seconds']:.2f} s,"
              f" PyTorch {t1[1]:.2f} s / {tb[1]:.2f} s", flush=True)
        for clock, i, sfx in (("wall", 0, ""), ("cpu", 1, "_cpu")):
            keep((clock, "c1"), c[f"decode1{sfx}_seconds"])
            keep((clock, "cb"), c[f"decodeB{sfx}_seconds"])
            keep((clock, "t1"), t1[i])
            keep((clock, "tb"), tb[i])
            keep((clock, "sgemm"), c[f"sgemm{sfx}_gflops"], max)
            keep((clock, "r1"), c[f"decode1{sfx}_of_sgemm"], max)
            keep((clock, "rb"), c[f"decodeB{sfx}_of_sgemm"], max)
    px, gf = a.size * 8, c["gflop_per_image"]
    print(f"\nsummary: sd-vae-ft-mse decoder, random weights, {a.size}x{a.size}x4 latents "
          f"-> {px}x{px}, {gf:.0f} GFLOP per image, {a.threads} threads, "
          f"best of {a.rounds} rounds")
    for clock in ("wall", "cpu"):
        b = {k[1]: v for k, v in best.items() if k[0] == clock}
        print(f"  {clock} clock: sgemm at the decoder's shapes {b['sgemm']:.0f} GFLOP/s")
        for n, ck, tk, rk in ((1, "c1", "t1", "r1"), (a.batch, "cb", "tb", "rb")):
            print(f"    {n} image(s): C {b[ck]:.2f} s = {n * gf / b[ck]:.0f} GFLOP/s "
                  f"({b[rk]:.2f} of the same run's sgemm), PyTorch {b[tk]:.2f} s "
                  f"-> PyTorch/C = {b[tk] / b[ck]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
