#!/usr/bin/python3
"""test_parity.py: `ditmoe forward` against the PyTorch reference, shape by shape.

Usage: test_parity.py DITMOE [CASE ...]   (no CASE: all of them)

Each case builds a random-weight model with ditmoe_ref.randomize_ (every
weight random, so zero-initialised adaLN or output layers cannot hide a
bug), writes it as a model directory (F32, F16 or BF16 weights) with .npy
inputs into a temporary directory, runs the engine's forward pass once per
GEMM kernel entry this CPU runs (`ditmoe inspect --kernels`: avx512, avx2,
neon, c; chosen with DITMOE_ISA, packed weights split over 3 threads) and
once with the weights as stored through BLAS (--no-pack), and compares
each with ditmoe_ref.DiTMoE on the weights as stored (read back, so the
F16/BF16 rounding is the same on both sides). A case passes when
max|engine - ref| / max|ref| <= 1e-4; every case prints its error.

Q8 cases write the model in F32 and convert it with `ditmoe convert --dtype
q8` (8-bit experts): the engine must match the reference on the weights as
converted (dequantised, read back) within the same 1e-4, and the converted
model's output must stay within Q8_TOL of the F32 model's (the quantisation
error docs/quantization.md documents; printed).

The cases cover learn_sigma on and off, top-k 1..4, 8 and 16 experts, odd
head counts, 1, 3 and 4 input channels, patch 2 and 4, the default model's
shape, one and two shared-expert widths, a fractional mlp_ratio, batches
with the null class, DDPM-index timesteps (0..999) and flow times (0..1).
The reference's smallest top-k routing margin is printed too: should a
near-tie flip between engine and reference, the output moves by about that
margin, so margins far below the tolerance cannot make a case fail.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "ref"))
import ditmoe_ref as R  # noqa: E402

TOL = 1e-4
# a converted random-weight model against its F32 self: max|q8 - f32| /
# max|f32| (a token whose top-k choice is a near-tie may switch experts,
# so the max is loose) and mean|q8 - f32| / mean|f32|
Q8_TOL = 1e-1
Q8_MEAN_TOL = 1e-2

BASE = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=48, depth=2,
            num_heads=3, mlp_ratio=2.0, num_classes=7, num_experts=8,
            num_experts_per_tok=2, n_shared_experts=2, learn_sigma=True,
            class_dropout_prob=0.1, prediction="epsilon")

# name: (config overrides, stored dtype, batch, timestep kind)
CASES = {
    "sigma_k2_h3": ({}, "F32", 3, "ddpm"),
    "nosigma_k1_e16_h5_gray": (dict(learn_sigma=False, num_experts=16, num_experts_per_tok=1,
                                    num_heads=5, hidden_size=40, in_channels=1,
                                    prediction="velocity"), "F32", 4, "flow"),
    "k3_e16_rgb": (dict(num_experts=16, num_experts_per_tok=3, in_channels=3, num_heads=4,
                        hidden_size=64), "F32", 2, "ddpm"),
    "k4_e16_h5_f16": (dict(num_experts=16, num_experts_per_tok=4, num_heads=5,
                           hidden_size=40, depth=3), "F16", 3, "ddpm"),
    "k2_gray_bf16": (dict(in_channels=1, learn_sigma=False, prediction="velocity"),
                     "BF16", 5, "flow"),
    "patch4_shared1_ratio2.5": (dict(input_size=16, patch_size=4, n_shared_experts=1,
                                     mlp_ratio=2.5), "F32", 3, "ddpm"),
    "default_shape": (dict(input_size=28, patch_size=4, in_channels=1, hidden_size=128,
                           depth=6, num_heads=4, num_classes=10, learn_sigma=False,
                           prediction="velocity"), "F32", 4, "flow"),
    "no_null_class": (dict(class_dropout_prob=0.0, num_experts_per_tok=1), "F32", 3, "ddpm"),
    "batch8_all_null_bf16": (dict(num_heads=1, hidden_size=32, depth=1), "BF16", 8, "null"),
    "k3_e16_rgb_q8": (dict(num_experts=16, num_experts_per_tok=3, in_channels=3, num_heads=4,
                           hidden_size=64), "Q8", 2, "ddpm"),
    "default_shape_q8": (dict(input_size=28, patch_size=4, in_channels=1, hidden_size=128,
                              depth=6, num_heads=4, num_classes=10, learn_sigma=False,
                              prediction="velocity"), "Q8", 4, "flow"),
    "patch4_shared1_ratio2.5_q8": (dict(input_size=16, patch_size=4, n_shared_experts=1,
                                        mlp_ratio=2.5, hidden_size=64, num_heads=4),
                                   "Q8", 3, "ddpm"),
}


def inputs(cfg, n, kind, seed):
    g = torch.Generator().manual_seed(seed)
    c, s = cfg["in_channels"], cfg["input_size"]
    x = torch.randn(n, c, s, s, generator=g)
    if kind == "ddpm":
        t = torch.randint(0, 1000, (n,), generator=g).float()
        t[0] = 999.0
    else:
        t = torch.rand(n, generator=g)
        t[0] = 1.0
    null = cfg["num_classes"]
    has_null = cfg["class_dropout_prob"] > 0
    y = torch.randint(0, null, (n,), generator=g)
    if kind == "null":
        y[:] = null
    elif has_null:
        y[-1] = null  # the null class next to real labels in one batch
    return x, t, y


def routing_margin(model, x, t, y):
    """Smallest gap between the k-th and (k+1)-th router probability."""
    gaps = []

    def hook(mod, args, out):
        flat = args[0].reshape(-1, args[0].shape[-1])
        p = torch.softmax(flat @ mod.gate.weight.T, dim=-1).sort(dim=-1, descending=True)[0]
        k = mod.top_k
        if k < p.shape[1]:
            gaps.append((p[:, k - 1] - p[:, k]).min().item())

    hs = [b.moe.register_forward_hook(hook) for b in model.blocks]
    with torch.no_grad():
        model(x, t, y)
    for h in hs:
        h.remove()
    return min(gaps) if gaps else float("inf")


def kernels(ditmoe):
    """The kernel entries this CPU runs, best first; the C one is always there."""
    out = subprocess.run([ditmoe, "inspect", "--kernels"], check=True, capture_output=True,
                         text=True).stdout.split()
    if "c" not in out:
        raise SystemExit(f"FAIL: `ditmoe inspect --kernels` lacks the C entry: {out}")
    return out


def run_case(ditmoe, name, tmp, isas):
    over, dtype, n, kind = CASES[name]
    cfg = dict(BASE, **over)
    seed = sum(map(ord, name))
    path = os.path.join(tmp, name)
    torch.manual_seed(0)
    f32 = R.randomize_(R.DiTMoE(cfg), seed).eval()
    if dtype == "Q8":  # F32 written, 8-bit experts by the engine's converter
        R.write_model_dir(f32, cfg, path + "_f32", "F32")
        subprocess.run([ditmoe, "convert", "--in", os.path.join(path + "_f32", "model.safetensors"),
                        "--out", path, "--dtype", "q8"], check=True)
    else:
        R.write_model_dir(f32, cfg, path, dtype)
    model, _ = R.load_model_dir(path)
    x, t, y = inputs(cfg, n, kind, seed + 1)
    files = {k: os.path.join(path, k + ".npy") for k in ("x", "t", "y", "out")}
    np.save(files["x"], x.numpy())
    np.save(files["t"], t.numpy())
    np.save(files["y"], y.numpy().astype(np.int64))
    with torch.no_grad():
        ref = model(x, t, y).numpy()
    margin = routing_margin(model, x, t, y)
    ok = True
    if dtype == "Q8":
        with torch.no_grad():
            full = f32(x, t, y).numpy()
        qmax = float(np.abs(ref - full).max() / np.abs(full).max())
        qmean = float(np.abs(ref - full).mean() / np.abs(full).mean())
        ok = qmax <= Q8_TOL and qmean <= Q8_MEAN_TOL
        print(f"{'ok  ' if ok else 'FAIL'} {name:<26} Q8 vs F32 rel err max {qmax:.2e} "
              f"(bound {Q8_TOL:g}) mean {qmean:.2e} (bound {Q8_MEAN_TOL:g})", flush=True)
    # every kernel entry, packed and split over an odd pool, and the BLAS path
    runs = [(isa, isa, ["--threads", "3"]) for isa in isas] + [("blas", "auto", ["--no-pack"])]
    for how, isa, extra in runs:
        subprocess.run([ditmoe, "forward", "--model", path, "--x", files["x"], "--t", files["t"],
                        "--y", files["y"], "--out", files["out"]] + extra, check=True,
                       env=dict(os.environ, DITMOE_ISA=isa))
        ours = np.load(files["out"])
        if ours.shape != ref.shape:
            print(f"FAIL {name} ({how}): shape {ours.shape}, reference {ref.shape}")
            ok = False
            continue
        err = float(np.abs(ours - ref).max() / np.abs(ref).max())
        ok = ok and err <= TOL
        print(f"{'ok  ' if err <= TOL else 'FAIL'} {name:<26} {how:<6} {dtype:<4} N={n} "
              f"rel err {err:.2e} (max|ref| {np.abs(ref).max():.3g}, "
              f"min routing margin {margin:.1e})", flush=True)
    return ok


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    ditmoe, names = sys.argv[1], sys.argv[2:] or list(CASES)
    torch.set_num_threads(1)
    failed = []
    isas = kernels(ditmoe)
    print("kernel entries run:", ", ".join(isas), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if not run_case(ditmoe, name, tmp, isas):
                failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
