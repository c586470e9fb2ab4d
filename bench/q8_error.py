#!/usr/bin/python3
"""q8_error.py: how much 8-bit weights lose, per scale granularity and dtype.

Usage: q8_error.py [MODEL.safetensors ...]

For every expert matrix (gate_proj, up_proj, down_proj) of each model, and
of random S/2-shaped experts (randn / sqrt(fan_in), as a fan_in-initialised
layer), quantises symmetric int8 (q = round(w / d), |q| <= 127) four ways:

  block32-f32   a scale per block of 32 along the input dimension, F32
  block32-f16   the same, the scale rounded to F16 (the quantisation uses
                the rounded scale, so only the rounding of d itself adds)
  block32-bf16  the same, scale in BF16 (8 mantissa bits)
  channel-f32   one F32 scale per output channel (row)

and prints, over all matrices of a model, the relative Frobenius error
|W - Wq| / |W| (the relative error of x W^T for random x) as the mean and
the worst matrix, and the largest element error relative to the matrix's
largest weight. Pure NumPy; the numbers go to docs/quantization.md.
"""
import json
import struct
import sys

import numpy as np

DT = {"F32": np.float32, "F16": np.float16}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__" or v["dtype"] not in DT:
            continue
        b, e = v["data_offsets"]
        out[k] = np.frombuffer(data[b:e], DT[v["dtype"]]).reshape(v["shape"]).astype(np.float32)
    return out


def bf16(x):
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def quant(w, scheme):
    """w (R, K) -> dequantised copy."""
    R, K = w.shape
    if scheme == "channel-f32":
        blocks = w.reshape(R, 1, K)
    else:
        blocks = w.reshape(R, K // 32, 32)
    d = np.abs(blocks).max(axis=2, keepdims=True) / 127.0
    if scheme == "block32-f16":
        d = d.astype(np.float16).astype(np.float32)
    elif scheme == "block32-bf16":
        d = bf16(d)
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0)
    q = np.clip(np.rint(blocks * inv), -127, 127)
    return (q * d).reshape(R, K)


SCHEMES = ["block32-f32", "block32-f16", "block32-bf16", "channel-f32"]


def report(name, mats):
    print(f"{name}: {len(mats)} expert matrices, {sum(m.size for m in mats) / 1e6:.2f} M weights")
    for s in SCHEMES:
        fro, mx = [], []
        for w in mats:
            e = quant(w, s) - w
            fro.append(np.linalg.norm(e) / np.linalg.norm(w))
            mx.append(np.abs(e).max() / np.abs(w).max())
        print(f"  {s:<13} |dW|/|W| mean {np.mean(fro):.3e} worst {np.max(fro):.3e}   "
              f"max|dW|/max|W| {np.max(mx):.3e}")


def experts(tensors):
    return [w for k, w in sorted(tensors.items())
            if k.endswith(("gate_proj.weight", "up_proj.weight", "down_proj.weight"))]


def main():
    for path in sys.argv[1:]:
        report(path, experts(read_safetensors(path)))
    rng = np.random.default_rng(0)
    D, H = 384, 1536  # S/2: hidden 384, expert width 4 x 384
    mats = []
    for _ in range(8):
        mats.append(rng.standard_normal((H, D), np.float32) / np.sqrt(D))
        mats.append(rng.standard_normal((H, D), np.float32) / np.sqrt(D))
        mats.append(rng.standard_normal((D, H), np.float32) / np.sqrt(H))
    report("random S/2 experts (randn / sqrt(fan_in), 8 experts)", mats)


if __name__ == "__main__":
    main()
