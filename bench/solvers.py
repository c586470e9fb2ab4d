#!/usr/bin/python3
"""solvers.py: what the fast solvers, the guidance interval and step caching
cost and give, measured on a model (docs/sampling.md, "Solvers").

Two modes:

  quality (default): for each setting, --per-class images of every class
  from `ditmoe generate --stats` (seeds fixed per class, so settings see the
  same noise), then the Frechet distance of all of them against the
  Fashion-MNIST test split with the real-vs-real floor at the same n and
  the judge's agreement (bench/judge/fd.py), beside the model evaluations
  per image, the forward rows per image (guidance doubles them; the
  interval drops some) and the block computations run and reused (caching).

    /usr/bin/python3 bench/solvers.py --model models/fashion-mnist --per-class 50 \
        --settings "euler:50;euler:20;dpm++2m:10;heun:5;euler:20:--cfg-interval=0.2,0.65"

  Settings are separated by ';'. A setting is SAMPLER:STEPS[:EXTRA] where EXTRA is more generate options,
  joined by spaces, '=' between option and value (e.g.
  "dpm++2m:10:--spacing=logsnr --cache=fixed:2"); what EXTRA leaves out is
  the solver's own spacing, guidance on every evaluation and no cache, not
  the model's config.json defaults. --cfg sets the guidance scale of all
  (default: the model's).

  s2 (--s2): the wall time on the published S/2 shape (random weights, a
  random sd-vae-ft-mse-shaped decoder, --rng torch, guidance 4, one image)
  of the denoising loop and of the whole image (loop + decode + PNG) for
  each setting, e.g. ddpm:250 against dpm++2m:25.

    /usr/bin/python3 bench/solvers.py --s2 --settings "ddpm:250;dpm++2m:25"
"""
import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse_setting(text):
    parts = text.split(":", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise SystemExit(f"solvers.py: setting {text!r} is not SAMPLER:STEPS[:EXTRA]")
    extra = []
    for opt in shlex.split(parts[2]) if len(parts) > 2 else []:
        extra += opt.split("=", 1)
    return {"name": text, "sampler": parts[0], "steps": int(parts[1]), "extra": extra}


# A setting says all it runs: the solver's own spacing, guidance on every
# evaluation and no cache unless its EXTRA says otherwise (later options
# win), whatever the model's config.json defaults are.
NEUTRAL = ["--spacing", "default", "--cfg-interval", "0,1", "--cache", "off"]


def generate(a, model, st, label, n, seed, out, more=()):
    """One `ditmoe generate --stats` run -> its stats line as a dict."""
    cmd = [a.ditmoe, "generate", "--model", model, "--class", str(label), "--num-images",
           str(n), "--seed", str(seed), "--sampler", st["sampler"], "--steps", str(st["steps"]),
           "--threads", str(a.threads), "--stats"] + NEUTRAL + list(more) + st["extra"]
    if a.cfg is not None:
        cmd += ["--cfg-scale", str(a.cfg)]
    r = subprocess.run(cmd + out, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"solvers.py: {' '.join(cmd)}: {r.stderr.strip()}")
    line = [l for l in r.stderr.splitlines() if l.startswith("stats: ")][-1].split()[1:]
    return {k: float(v) for k, v in zip(line[::2], line[1::2])}


def bootstrap_sd(fd, yard, images, draws, seed=0):
    """sd of FD over `draws` resamplings (with replacement) of the images:
    the spread a rerun with other seeds would show, approximately."""
    if draws < 2:
        return 0.0
    feats = fd.judge.features(yard.net, images).numpy()
    rng = np.random.default_rng(seed)
    vals = [fd.frechet(*fd.gaussian_stats(feats[rng.integers(0, len(feats), len(feats))]),
                       *yard.ref) for _ in range(draws)]
    return float(np.std(vals, ddof=1))


def quality(a, settings):
    sys.path.insert(0, a.judge_dir)
    import fd  # noqa: E402  (bench/judge/fd.py)
    yard = fd.Yardstick()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for st in settings:
            imgs, labels, tot = [], [], {}
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
            for label in range(10):
                path = os.path.join(tmp, "x.npy")
                s = generate(a, a.model, st, label, a.per_class, a.seed + label,
                             ["--out-npy", path])
                imgs.append(np.load(path))
                labels += [label] * a.per_class
                for k, v in s.items():
                    tot[k] = tot.get(k, 0) + v
            cpu = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - cpu0
            n = 10 * a.per_class
            x = np.concatenate(imgs)
            rep = yard.report(x, np.array(labels), a.floor_draws)
            rep["fd_sd"] = bootstrap_sd(fd, yard, x, a.boot)
            if a.save:
                np.save(os.path.join(a.save, st["name"].replace("/", "_") + ".npy"), x)
            blocks = tot["blocks_run"] + tot["blocks_reused"]
            r = {"setting": st["name"], "evals": tot["evals"] / 10, "rows": tot["rows"] / n,
                 "blocks_saved": tot["blocks_reused"] / blocks if blocks else 0.0,
                 "block_factor": blocks / tot["blocks_run"], "cpu_s": cpu, **rep}
            rows.append(r)
            print(f"| {r['setting']} | {r['evals']:.0f} | {r['rows']:.1f} | "
                  f"{r['block_factor']:.2f}x | {r['fd']:.2f} ± {r['fd_sd']:.2f} | "
                  f"{r['floor']:.2f} ± {r['floor_sd']:.2f} | "
                  f"{r['ratio']:.2f} | {r['agreement']:.3f} | {cpu:.0f} |", flush=True)
    return rows


def make_s2(tmp):
    """An S/2-shaped model directory with random weights and a random
    sd-vae-ft-mse-shaped decoder beside it."""
    sys.path.insert(0, os.path.join(ROOT, "tools", "ref"))
    import torch
    import ditmoe_ref
    import vae_ref
    vae = os.path.join(tmp, "vae")
    vae_ref.write_vae_dir(vae_ref.randomize_(vae_ref.VAEDecoder(vae_ref.SD_VAE), 0), vae)
    cfg = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=12,
               num_heads=6, mlp_ratio=4.0, num_classes=1000, num_experts=8,
               num_experts_per_tok=2, n_shared_experts=2, learn_sigma=True,
               class_dropout_prob=0.1, prediction="epsilon")
    torch.manual_seed(0)
    model = ditmoe_ref.randomize_(ditmoe_ref.DiTMoE(cfg), 1).eval()
    path = os.path.join(tmp, "s2")
    ditmoe_ref.write_model_dir(model, dict(cfg, vae=vae), path)
    return path


def s2(a, settings):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = make_s2(tmp)
        for st in settings:
            s = generate(a, model, st, 207, 1, 0, ["--out", os.path.join(tmp, "x.png")],
                         ["--rng", "torch", "--cfg-scale", "4"])
            r = {"setting": st["name"], "rows": s["rows"], "loop_s": s["loop_s"],
                 "image_s": s["loop_s"] + s["png_s"]}
            rows.append(r)
            print(f"| {r['setting']} | {r['rows']:.0f} | {r['loop_s']:.2f} | "
                  f"{r['image_s']:.2f} |", flush=True)
    base = rows[0]
    for r in rows[1:]:
        print(f"{r['setting']} vs {base['setting']}: loop {r['loop_s'] / base['loop_s']:.3f}, "
              f"whole image {r['image_s'] / base['image_s']:.3f}")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ditmoe", default=os.path.join(ROOT, "build", "tools", "cli", "ditmoe"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "fashion-mnist"))
    ap.add_argument("--settings", required=True, help="SAMPLER:STEPS[:EXTRA];...")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--seed", type=int, default=5000)
    ap.add_argument("--cfg", type=float)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--floor-draws", type=int, default=5)
    ap.add_argument("--boot", type=int, default=20, help="bootstrap draws for FD's sd")
    ap.add_argument("--save", metavar="DIR", help="keep each setting's images here")
    ap.add_argument("--judge-dir", default=os.path.join(HERE, "judge"),
                    help="where fd.py (the FD yardstick) is")
    ap.add_argument("--s2", action="store_true", help="S/2 wall times instead of quality")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    settings = [parse_setting(t) for t in a.settings.split(";") if t]
    if a.s2:
        print("| setting | rows | loop s | whole image s |\n|---|---|---|---|")
        rows = s2(a, settings)
    else:
        print("| setting | evals/image | rows/image | fewer blocks | FD | floor | ratio | "
              "judge agreement | CPU s |\n|---|---|---|---|---|---|---|---|---|")
        rows = quality(a, settings)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
