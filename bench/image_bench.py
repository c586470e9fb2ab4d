#!/usr/bin/python3
"""image_bench.py: one latent image through `ditmoe generate` and through
ditmoe-server, side by side.

    bench/image_bench.py [--build build] [--threads 2] [--rounds 2]
                         [--steps N] [--dir /tmp/ditmoe-s2-vae]

Makes (once) a random-weight DiT-MoE-S/2 (`ditmoe synth --preset s2`:
upstream's sampling defaults, DDPM 250 steps, guidance 4) whose config.json
names a random VAE at the sd-vae-ft-mse shape (tools/ref/vae_ref.py, the
one bench/vae_bench.py makes), then starts ditmoe-server on it (--threads
T) and alternates, round by round, the same image (class 207, one seed per
round) made by `ditmoe generate --threads T --stats` and by POST /generate
to the server, so both see the same machine load. --steps N asks both for
N DDPM steps instead of the model's 250 (guidance stays on; a step's time
is what the two paths could differ in, the VAE decode is in both).

Reported per round, in seconds: the CLI's process (load included), its
image (denoising loop + decode + PNG, from --stats), the server's request
(POST to the PNG received), and server / CLI image; then the CPU seconds
of the CLI's process and of the server during the request (all threads),
which other jobs on a shared machine do not inflate. No environment
variable is set for either; the server runs at its default compute_nice.
"""
import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "server"))
sys.path.insert(0, os.path.join(ROOT, "tools", "ref"))
from srvtest import Server  # noqa: E402

ENV = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "DITMOE_ISA")}


def make_model(cli, d, vae_dir):
    """The S/2 directory with "vae" set, and the VAE directory, made once."""
    if not os.path.exists(os.path.join(vae_dir, "config.json")):
        import vae_ref
        vae_ref.write_vae_dir(vae_ref.randomize_(vae_ref.VAEDecoder(vae_ref.SD_VAE), 0), vae_dir)
    cfg_path = os.path.join(d, "config.json")
    if not os.path.exists(cfg_path):
        subprocess.run([cli, "synth", "--preset", "s2", "--out", d], check=True,
                       stdout=subprocess.DEVNULL)
        with open(cfg_path) as f:
            cfg = json.load(f)
        cfg["vae"] = os.path.abspath(vae_dir)
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2)
    return d


def run_cli(cli, a, seed, out):
    """(process seconds, image seconds, process CPU seconds) of one `ditmoe generate`"""
    cmd = [cli, "generate", "--model", a.dir, "--class", "207", "--seed", str(seed),
           "--threads", str(a.threads), "--stats", "--out", out]
    if a.steps:
        cmd += ["--steps", str(a.steps)]
    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    wall, c1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
    m = re.search(r"loop_s ([0-9.]+) png_s ([0-9.]+)", p.stderr)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"ditmoe generate failed ({p.returncode}): {p.stderr[-500:]}")
    return wall, float(m.group(1)) + float(m.group(2)), cpu


def cpu_seconds(pid):
    """user + system CPU seconds of a process, all its threads"""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_server(s, a, seed):
    body = {"class_label": 207, "seed": seed}
    if a.steps:
        body["steps"] = a.steps
    t0, c0 = time.perf_counter(), cpu_seconds(s.proc.pid)
    r = s.post("/generate", body, timeout=3600)
    dt, cpu = time.perf_counter() - t0, cpu_seconds(s.proc.pid) - c0
    if r.status != 200 or not r.body.startswith(b"\x89PNG"):
        raise RuntimeError(f"/generate answered {r.status}: {r.body[:300]!r}")
    return dt, cpu


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", default="build")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=0, help="DDPM steps (default: the model's 250)")
    p.add_argument("--dir", default="/tmp/ditmoe-s2-vae")
    p.add_argument("--vae-dir", default="/tmp/ditmoe-sd-vae-random")
    a = p.parse_args()
    cli = os.path.join(a.build, "tools", "cli", "ditmoe")
    make_model(cli, a.dir, a.vae_dir)
    out = os.path.join(a.dir, "bench.png")
    s = Server(os.path.join(a.build, "server", "ditmoe-server"), a.dir, "--request-timeout-s",
               "3600", env=ENV, threads=a.threads, blas=1)
    rows = []
    try:
        print("| round | CLI process s | CLI image s | server request s | server / CLI | "
              "CLI process cpu s | server request cpu s |")
        print("|---|---|---|---|---|---|---|")
        for r in range(a.rounds):
            wall, img, ccpu = run_cli(cli, a, r, out)
            srv, scpu = run_server(s, a, r)
            rows.append((wall, img, srv))
            print(f"| {r + 1} | {wall:.2f} | {img:.2f} | {srv:.2f} | {srv / img:.3f} | "
                  f"{ccpu:.1f} | {scpu:.1f} |", flush=True)
    finally:
        s.stop()
    steps = a.steps or 250
    img, srv = min(x[1] for x in rows), min(x[2] for x in rows)
    print(f"\nS/2 (random weights) + sd-vae-ft-mse decoder, one 256x256 image, DDPM {steps} "
          f"steps, guidance 4 (2 rows a step), {a.threads} threads; best: CLI {img:.2f} s, "
          f"server {srv:.2f} s, server / CLI {srv / img:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
