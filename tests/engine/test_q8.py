#!/usr/bin/python3
"""test_q8.py: the Q8 dtype (kernels/dtype.c) against a NumPy reference.

Usage: test_q8.py Q8_ROUNDTRIP TMPDIR

The reference quantises as documented in docs/quantization.md: per block of
32 floats, d = F16(max|w| / 127), q = rint(w / d) (half to even) clamped to
[-127, 127], 0 when d is 0; dequantised w' = d * q in float32. The engine's
int8 values, F16 scales and dequantised floats must equal the reference's
bit for bit, on trained-like weights and on the edge blocks: all zeros,
scales that are F16 subnormals or underflow to 0, a scale near the F16
maximum, halfway values (w / d = k + 0.5), a scale rounded down (w / d just
above 127, clamped). Non-finite values and blocks whose scale overflows F16
must be refused with their index.
"""
import os
import subprocess
import sys

import numpy as np


def reference(x):
    b = x.reshape(-1, 32)
    d = (np.abs(b).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float16)
    df = d.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(df > 0, np.rint(b / np.where(df > 0, df, 1)), 0)
    q = np.clip(q, -127, 127).astype(np.int8)
    y = (df * q.astype(np.float32)).astype(np.float32)
    return q.reshape(-1), d.reshape(-1), y.reshape(-1)


def run(exe, tmp, x):
    src, dst = os.path.join(tmp, "in.f32"), os.path.join(tmp, "out.bin")
    x.astype(np.float32).tofile(src)
    r = subprocess.run([exe, src, dst], capture_output=True, text=True)
    return r, dst


def cases():
    rng = np.random.default_rng(15)
    blocks = [rng.standard_normal(32 * 64).astype(np.float32) * 0.02,  # trained-like
              np.zeros(32, np.float32),
              rng.standard_normal(32).astype(np.float32) * 1e-4,  # subnormal F16 scale
              rng.standard_normal(32).astype(np.float32) * 1e-7,  # scale underflows to 0
              (rng.standard_normal(32) * 1e6).astype(np.float32),  # scale near 8e3
              np.full(32, 60000.0 * 127, np.float32)]  # scale 60000 < 65504
    half = np.arange(32, dtype=np.float32) - 16.0
    half[0] = 127.0
    blocks.append(half + 0.5)  # w / d = k + 0.5 with d = 127.5 / 127 (rounded)
    down = np.linspace(-1, 1, 32, dtype=np.float32)
    down[5] = np.float32(1.0009765)  # F16(1.0009765 / 127) rounds down: q = 127.x
    blocks.append(down)
    return {"trained-like": blocks[0], "edges": np.concatenate(blocks[1:])}


def main():
    exe, tmp = sys.argv[1], sys.argv[2]
    os.makedirs(tmp, exist_ok=True)
    failed = 0
    for name, x in cases().items():
        r, dst = run(exe, tmp, x)
        if r.returncode:
            print(f"FAIL {name}: q8_roundtrip exit {r.returncode}: {r.stdout}{r.stderr}")
            failed += 1
            continue
        n = x.size
        raw = np.fromfile(dst, np.uint8)
        q = raw[:n].view(np.int8)
        d = raw[n:n + n // 16].view(np.float16)
        y = raw[n + n // 16:].view(np.float32)
        rq, rd, ry = reference(x)
        ok = (np.array_equal(q, rq) and np.array_equal(d.view(np.uint16), rd.view(np.uint16))
              and np.array_equal(y.view(np.uint32), ry.view(np.uint32)))
        # and the documented bound: |w - w'| <= d / 2, plus what the clamp
        # cuts off where d was rounded down (max|w| - 127 d: subnormal
        # scales), |w| itself where d underflowed to 0
        df = rd.astype(np.float32)
        amax = np.abs(x.reshape(-1, 32)).max(axis=1)
        bound = np.where(df > 0, df / 2 + np.maximum(amax - 127 * df, 0), amax)
        ok = ok and bool(np.all(np.abs(y - x) <= np.repeat(bound, 32) * (1 + 1e-6)))
        err = np.linalg.norm(y - x) / max(np.linalg.norm(x), 1e-30)
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {n} values, bit-exact against NumPy, "
              f"|w - w'| / |w| = {err:.3e}")
        failed += not ok
    for name, val, at in (("nan", np.nan, 37), ("inf", -np.inf, 70), ("scale overflow", 8.4e6, 3)):
        x = np.zeros(96, np.float32)
        x[at] = val
        r, _ = run(exe, tmp, x)
        ok = r.returncode == 1 and r.stdout.strip() == f"refused {at}"
        print(f"{'ok  ' if ok else 'FAIL'} {name} refused at its index: {r.stdout.strip()}")
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
