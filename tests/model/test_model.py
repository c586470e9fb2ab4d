#!/usr/bin/python3
"""test_model.py: the shipped models (models/fashion-mnist, -ddpm) through the engine.

Usage: test_model.py DITMOE CASE     CASE: sampling | determinism | trouser | ddpm

  sampling     `ditmoe generate` from fixed noise (--noise) for a few Euler
               steps with guidance equals samplers_ref.sample_euler on the same
               weights: max|engine - ref| / max|ref| <= 1e-4 (measured ~2e-6).
               Noise draws where the reference itself jumps (a routing tie,
               see well_conditioned) are skipped for the next draw.
  determinism  `ditmoe generate` without --model (so the default-model
               lookup is exercised) with a fixed seed writes the same PNG
               twice, and a different seed writes a different one.
  trouser      a picture check that can fail: 8 Trouser samples must look
               like trousers by cheap statistics, each within the range of
               real Fashion-MNIST test trousers (1st..99th percentile,
               widened by 10%): mean and std of the pixels, mean absolute
               neighbour difference (noise scores ~0.8, trousers 0.10..0.20),
               height and width of the inked box (trousers are tall and
               narrow). At least 7 of 8 must pass. Blank images fail on std,
               noise on edges and width, a sandal on height.
  ddpm         the DDPM-trained models/fashion-mnist-ddpm, loaded by its name
               (`--model fashion-mnist-ddpm`, run from an empty folder so the
               bundled-model lookup is what finds it): a few DDPM steps with
               the learned variance and guidance from fixed noise equal
               samplers_ref's loop with the engine's noise generator
               (max rel err <= 1e-4; well-conditioned draws as above); an
               unknown name fails with a message
               naming it and the folder looked for.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODEL = os.path.join(ROOT, "models", "fashion-mnist")
DDPM_NAME = "fashion-mnist-ddpm"
TROUSER = 1

# Real test-split trousers (1,000 images, pixels in [-1, 1]): 1st and 99th
# percentiles, from `test_model.py DITMOE derive`.
TROUSER_RANGES = {
    "mean": (-0.773, -0.204), "std": (0.394, 0.860), "edge": (0.099, 0.204),
    "rows": (26.0, 28.0), "cols": (8.0, 21.0),
}


def picture_stats(img):
    """img (28, 28) in [-1, 1] -> dict of the statistics above."""
    a = np.clip(img, -1, 1)
    ink = a > -0.5
    edge = (np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()) / 2
    return {"mean": float(a.mean()), "std": float(a.std()), "edge": float(edge),
            "rows": float(ink.any(1).sum()), "cols": float(ink.any(0).sum())}


def in_ranges(stats, widen=0.1):
    bad = []
    for k, (lo, hi) in TROUSER_RANGES.items():
        pad = widen * (hi - lo)
        if not lo - pad <= stats[k] <= hi + pad:
            bad.append(f"{k} {stats[k]:.3f} not in [{lo - pad:.3f}, {hi + pad:.3f}]")
    return bad


# the reference loops guide every step and cache nothing, whatever the
# model's config.json defaults say
FULL_GUIDANCE = ["--cfg-interval", "0,1", "--cache", "off"]


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def well_conditioned(label, ref_fn):
    """(noise, ref) for class `label`: the first of a few noise draws where
    the reference itself is continuous. Top-k routing is a discontinuity: a
    token whose 2nd and 3rd router scores tie within rounding can take the
    other expert in any implementation (a -1e-7 relative change of one
    draw's noise moved the DDPM case's result by 6e-2), so a draw counts
    only if the reference moves smoothly when the noise is scaled by
    1 +- 1e-5: by at most 2e-4 relative (a smooth response is 2-4e-5, a
    routing flip 1e-2 or more). The choice is made on the reference alone."""
    for k in range(6):
        noise = np.random.default_rng(label + 1000 * k).standard_normal(
            (2, 1, 28, 28)).astype(np.float32)
        ref = ref_fn(noise)
        jumps = [float(np.abs(ref_fn((noise * (1 + e)).astype(np.float32)) - ref).max() /
                       np.abs(ref).max()) for e in (1e-5, -1e-5)]
        if max(jumps) <= 2e-4:
            return noise, ref
        print(f"class {label}: noise draw {k} sits on a routing tie of the reference "
              f"(moves {max(jumps):.1e} for a 1e-5 change): next draw")
    raise SystemExit(f"FAIL: class {label}: no well-conditioned noise draw in 6")


def case_sampling(ditmoe, tmp):
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tools", "ref"))
    import ditmoe_ref as R
    import samplers_ref
    torch.set_num_threads(1)
    model, cfg = R.load_model_dir(MODEL)
    cfg_scale = float(cfg.get("sampling", {}).get("cfg_scale", 2.0))
    steps, worst = 4, 0.0
    for label in (TROUSER, 7, 9):
        noise, ref = well_conditioned(label, lambda z: samplers_ref.sample_euler(
            model, torch.from_numpy(z), torch.tensor([label, label]), steps, cfg_scale).numpy())
        zpath, out = os.path.join(tmp, "z.npy"), os.path.join(tmp, "x.npy")
        np.save(zpath, noise)
        run([ditmoe, "generate", "--model", MODEL, "--class", str(label), "--num-images", "2",
             "--noise", zpath, "--steps", str(steps), "--sampler", "euler",
             "--cfg-scale", str(cfg_scale), "--out-npy", out] + FULL_GUIDANCE)
        ours = np.load(out)
        err = float(np.abs(ours - ref).max() / np.abs(ref).max())
        print(f"class {label}: {steps} Euler steps, cfg {cfg_scale}: rel err {err:.2e}")
        worst = max(worst, err)
    return worst <= 1e-4


def case_ddpm(ditmoe, tmp):
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tools", "ref"))
    import samplers_ref
    torch.set_num_threads(1)
    steps, cfg_scale, worst = 5, 3.0, 0.0
    ddpm_dir = os.path.join(ROOT, "models", DDPM_NAME)
    for label in (TROUSER, 8):
        noise, ref = well_conditioned(label, lambda z: samplers_ref.run(
            ddpm_dir, steps, "ddpm", cfg_scale, label, seed=5, noise=z).numpy())
        zpath, out = os.path.join(tmp, "z.npy"), os.path.join(tmp, "x.npy")
        np.save(zpath, noise)
        subprocess.run([os.path.abspath(ditmoe), "generate", "--model", DDPM_NAME, "--class",
                        str(label), "--num-images", "2", "--noise", zpath, "--seed", "5",
                        "--steps", str(steps), "--sampler", "ddpm", "--cfg-scale",
                        str(cfg_scale), "--out-npy", out] + FULL_GUIDANCE,
                       check=True, stdout=subprocess.DEVNULL, cwd=tmp)
        ours = np.load(out)
        err = float(np.abs(ours - ref).max() / np.abs(ref).max())
        print(f"class {label}: {steps} DDPM steps, cfg {cfg_scale}: rel err {err:.2e}")
        worst = max(worst, err)
    bad = subprocess.run([os.path.abspath(ditmoe), "inspect", "--model", "no-such-model"],
                         capture_output=True, text=True, cwd=tmp)
    named = bad.returncode != 0 and "models/no-such-model" in bad.stderr
    print(f"--model no-such-model: exit {bad.returncode}, {bad.stderr.strip()}")
    return worst <= 1e-4 and named


def case_determinism(ditmoe, tmp):
    paths = [os.path.join(tmp, f"{i}.png") for i in range(3)]
    for p, seed in zip(paths, (7, 7, 8)):
        run([ditmoe, "generate", "--class", "Trouser", "--seed", str(seed), "--out", p])
    data = [open(p, "rb").read() for p in paths]
    same, differ = data[0] == data[1], data[0] != data[2]
    png = data[0][:8] == b"\x89PNG\r\n\x1a\n"
    print(f"seed 7 twice identical: {same}; seed 8 differs: {differ}; "
          f"{len(data[0])} bytes, PNG signature {png}")
    return same and differ and png


def case_trouser(ditmoe, tmp):
    out = os.path.join(tmp, "t.npy")
    run([ditmoe, "generate", "--model", MODEL, "--class", str(TROUSER), "--num-images", "8",
         "--seed", "3", "--out-npy", out])
    imgs = np.load(out)
    passed = 0
    for i, img in enumerate(imgs[:, 0]):
        s = picture_stats(img)
        bad = in_ranges(s)
        passed += not bad
        print(f"image {i}: " + " ".join(f"{k} {v:.3f}" for k, v in s.items()) +
              (f"  OUT: {'; '.join(bad)}" if bad else "  ok"))
    print(f"{passed}/8 look like trousers (need 7)")
    return passed >= 7


def derive():
    """Prints TROUSER_RANGES from the real test split."""
    sys.path.insert(0, os.path.join(ROOT, "tools", "train"))
    from train import load_fashion_mnist
    xs, ys = load_fashion_mnist("t10k")
    stats = [picture_stats(a[0]) for a in xs[ys == TROUSER]]
    for k in stats[0]:
        v = [s[k] for s in stats]
        print(k, np.percentile(v, [1, 99]).round(3))
    return 0


def main():
    if len(sys.argv) == 3 and sys.argv[2] == "derive":
        return derive()
    if len(sys.argv) != 3 or sys.argv[2] not in ("sampling", "determinism", "trouser", "ddpm"):
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        ok = globals()["case_" + sys.argv[2]](sys.argv[1], tmp)
    print("ok" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
