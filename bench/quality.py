#!/usr/bin/python3
"""quality.py: how good are the default model's images, as the C engine makes them.

For every Fashion-MNIST class it has `ditmoe generate` make --per-class
images (in chunks of at most 50, seeds --seed, --seed+1, ...; --out-npy
gives the final samples in [-1, 1]) and reports
  accuracy   the share the judge (bench/judge) classifies as the class asked
             for; target >= 0.90 overall (the judge itself scores ~0.91 on
             real test images);
  diversity  the mean pairwise pixel (L2) distance between the class's
             generated images divided by the same for the class's real test
             images; target >= 0.6 (1.0 = as varied as the real data; a
             collapsed model scores near 0).
--fd adds the Frechet distance of all the classes' images together against
the test split (bench/judge/fd.py) with the real-vs-real floor at the same
n printed beside it; use it to compare settings (always at equal n).
--sweep STEPS:CFG[:SAMPLER],... repeats this for several sampler settings (to
choose the model's sampling defaults); --gen-args passes further options to
every `ditmoe generate`; --json writes the numbers; --save DIR keeps each
setting's images and labels as .npy (for bench/judge/fd.py).

  /usr/bin/python3 bench/quality.py --ditmoe build/tools/cli/ditmoe
  /usr/bin/python3 bench/quality.py --model fashion-mnist-ddpm --per-class 50 --fd \
      --sweep 250:3:ddpm,50:3:ddpm
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "judge"))
sys.path.insert(0, os.path.join(ROOT, "tools", "train"))
import fd  # noqa: E402
import judge  # noqa: E402
from train import CLASS_NAMES, load_fashion_mnist  # noqa: E402


def mean_pairwise_distance(x):
    """Mean L2 distance over all distinct pairs of the (N, ...) images."""
    f = torch.as_tensor(x, dtype=torch.float64).flatten(1)
    d = torch.cdist(f, f)
    n = len(f)
    return float(d.sum() / (n * (n - 1)))


def generate(args, label, n, seed, setting, tmp):
    """n images of class label from the engine -> (n, C, H, W) float32;
    setting is (steps, cfg, sampler), None for the model's default."""
    steps, cfg, sampler = setting
    out, done, s = [], 0, seed
    while done < n:
        k = min(50, n - done)
        path = os.path.join(tmp, f"g{label}_{s}.npy")
        cmd = [args.ditmoe, "generate", "--model", args.model, "--class", str(label),
               "--num-images", str(k), "--seed", str(s), "--out-npy", path,
               "--threads", str(args.threads)] + shlex.split(args.gen_args)
        if steps:
            cmd += ["--steps", str(steps)]
        if cfg is not None:
            cmd += ["--cfg-scale", str(cfg)]
        if sampler:
            cmd += ["--sampler", sampler]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        out.append(np.load(path))
        done += k
        s += 1
    return np.concatenate(out)


def evaluate(args, net, real, setting, yard):
    """-> dict with per-class and overall accuracy and diversity, and the
    FD report when yard (an fd.Yardstick) is given."""
    rows, images, t0 = [], [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for c in range(10):
            x = generate(args, c, args.per_class, args.seed, setting, tmp)
            acc = float((judge.predict(net, x).numpy() == c).mean())
            div = mean_pairwise_distance(np.clip(x, -1, 1)) / real[c]
            rows.append({"class": c, "name": CLASS_NAMES[c], "accuracy": acc,
                         "diversity": div})
            images.append(x)
    out = {"steps": setting[0], "cfg_scale": setting[1], "sampler": setting[2],
           "per_class": rows,
           "accuracy": float(np.mean([r["accuracy"] for r in rows])),
           "diversity": float(np.mean([r["diversity"] for r in rows])),
           "min_diversity": float(min(r["diversity"] for r in rows)),
           "seconds": time.time() - t0}
    images, labels = np.concatenate(images), np.repeat(np.arange(10), args.per_class)
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        name = "_".join(str(v) for v in setting if v is not None) or "default"
        np.save(os.path.join(args.save, f"{name}_images.npy"), images)
        np.save(os.path.join(args.save, f"{name}_labels.npy"), labels)
    if yard:
        out["fd"] = yard.report(images, labels)
    return out


def real_diversity(n):
    """Per-class mean pairwise distance of n real test images (the first n)."""
    xs, ys = load_fashion_mnist("t10k")
    return [mean_pairwise_distance(xs[ys == c][:n]) for c in range(10)]


def print_result(r):
    print(f"{r['sampler'] or 'default sampler'} steps {r['steps'] or 'default'} "
          f"cfg {r['cfg_scale'] if r['cfg_scale'] is not None else 'default'}"
          f" ({r['seconds']:.0f} s)")
    print(f"  {'class':<12} accuracy diversity")
    for row in r["per_class"]:
        print(f"  {row['name']:<12} {row['accuracy']:8.3f} {row['diversity']:9.3f}")
    ok = r["accuracy"] >= 0.9 and r["min_diversity"] >= 0.6
    print(f"  {'overall':<12} {r['accuracy']:8.3f} {r['diversity']:9.3f}"
          f"  (targets: accuracy >= 0.90, diversity >= 0.6: {'met' if ok else 'NOT met'})",
          flush=True)
    if "fd" in r:
        print("  " + fd.format_report(r["fd"]), flush=True)


def parse_setting(text):
    """"STEPS:CFG[:SAMPLER]" -> (steps, cfg, sampler or None)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise SystemExit(f"quality.py: --sweep item {text!r} is not STEPS:CFG[:SAMPLER]")
    return int(parts[0]), float(parts[1]), parts[2] if len(parts) == 3 else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ditmoe", default=os.path.join(ROOT, "build", "tools", "cli", "ditmoe"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "fashion-mnist"),
                    help="model directory or bundled model name")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sweep", default="",
                    help="STEPS:CFG[:SAMPLER],... (default: the model's defaults)")
    ap.add_argument("--gen-args", default="", help="more `ditmoe generate` options")
    ap.add_argument("--fd", action="store_true", help="also report the Frechet distance")
    ap.add_argument("--save", metavar="DIR", help="keep the images of each setting here")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    net = judge.load()
    real = real_diversity(args.per_class)
    settings = [(None, None, None)]
    if args.sweep:
        settings = [parse_setting(p) for p in args.sweep.split(",")]
    yard = fd.Yardstick(net) if args.fd else None
    results = []
    for setting in settings:
        results.append(evaluate(args, net, real, setting, yard))
        print_result(results[-1])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    best = results[0]
    return 0 if best["accuracy"] >= 0.9 and best["min_diversity"] >= 0.6 else 1


if __name__ == "__main__":
    sys.exit(main())
