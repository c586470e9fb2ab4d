#!/usr/bin/env python3
"""test_threads.py: `ditmoe generate` and `ditmoe bench` default to one engine
thread per core, and say so; an explicit --threads wins.

Usage: test_threads.py DITMOE

Runs on the embedded default model (no PyTorch needed): generate prints
"(... N threads, kernel K)" on stderr, bench prints "batch ... N threads".
With OPENBLAS_CORETYPE=Prescott (OpenBLAS's generic core) on a CPU with
AVX2, generate warns and names the OPENBLAS_CORETYPE fix.
`ditmoe decode`'s default is checked by tests/vae (it needs a VAE).
"""
import os
import re
import subprocess
import sys
import tempfile

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def run(*args):
    p = subprocess.run(list(args), capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def main():
    ditmoe = sys.argv[1]
    cores = os.cpu_count()  # the cores online, as ditmoe counts them
    with tempfile.TemporaryDirectory() as tmp:
        npy = os.path.join(tmp, "x.npy")
        rc, out = run(ditmoe, "generate", "--steps", "2", "--out-npy", npy)
        m = re.search(r"(\d+) threads, kernel (\w+)", out)
        check(rc == 0 and m is not None, f"generate reports its threads and kernel: {out.strip()}")
        check(m is not None and int(m.group(1)) == cores,
              f"generate defaults to {cores} threads (one per core)")
        rc, out = run(ditmoe, "generate", "--steps", "2", "--out-npy", npy, "--threads", "1")
        check(rc == 0 and "1 threads" in out, f"generate --threads 1 wins: {out.strip()}")
        # OpenBLAS on a generic core: a warning naming the fix, on CPUs with AVX2
        p = subprocess.run([ditmoe, "generate", "--steps", "1", "--out-npy", npy],
                           capture_output=True, text=True,
                           env=dict(os.environ, OPENBLAS_CORETYPE="Prescott"))
        avx2 = " avx2" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
        warned = "OPENBLAS_CORETYPE=" in p.stderr
        check(p.returncode == 0 and warned == avx2,
              f"generic OpenBLAS core warned about exactly on AVX2 CPUs ({avx2}): {p.stderr.strip()}")
    rc, out = run(ditmoe, "bench", "--batch", "1", "--iters", "1", "--gemm", "64")
    m = re.search(r"batch\s+1 rows, (\d+) threads", out)
    check(rc == 0 and m is not None and int(m.group(1)) == cores,
          f"bench defaults to {cores} threads: {out.strip()[:300]}")
    m = re.search(r"ratio\s+([\d.]+) of the FMA peak", out)
    check(m is not None and float(m.group(1)) > 0, "bench reports a fraction of the FMA peak")
    print(f"{len(failures)} failures" if failures else "all thread defaults hold")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
