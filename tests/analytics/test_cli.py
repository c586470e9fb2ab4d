#!/usr/bin/python3
"""test_cli.py DITMOE MODEL: `ditmoe routing` on a real model.

With --images 2 every class is sampled twice with the model's defaults, so
the counts are known in sum: a layer's counts add up to images x classes x
steps x tokens x top-k (the unconditional rows the same again when the
default guidance is on), every class is listed with its share, each
step's rows sit in the noise bucket of its level, and the measures equal
the NumPy reference (test_measures.py) on the printed counts. The text
report says the same numbers; bad options are refused by name.
"""
import json
import re
import subprocess
import sys

import numpy as np

from test_measures import bucket, check, close, cover, info, FAILURES


def run(*args):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=1200)


def expected_noise(steps, sampler):
    """Rows of one image per noise bucket, for Euler's levels (steps - i) / steps."""
    b = np.zeros(10, dtype=np.int64)
    if check(sampler == "euler", f"the test model samples with euler, not {sampler}"):
        for i in range(steps):
            b[bucket((steps - i) / steps)] += 1
    return b


def check_json(d, cfg, images):
    rep, smp = d["routing"], d["sampling"]
    K, T, k = cfg["num_classes"], (cfg["input_size"] // cfg["patch_size"]) ** 2, \
        cfg["num_experts_per_tok"]
    per_class = images * smp["steps"] * T * k
    guided = smp["cfg_scale"] != 1
    check(rep["tokens"] == K * per_class, f"a layer counts {rep['tokens']} = {images} images x "
          f"{K} classes x {smp['steps']} steps x {T} tokens x top-{k}")
    check(rep["tokens_unconditional"] == (K * per_class if guided else 0),
          f"unconditional rows apart: {rep['tokens_unconditional']}")
    check([c["class"] for c in rep["classes"]] == list(range(K)), "every class is listed")
    check(all(c["tokens"] == per_class for c in rep["classes"]), "each class: its own tokens")
    noise = expected_noise(smp["steps"], smp["sampler"]) * images * K * T * k
    for l, lay in enumerate(rep["layers"]):
        cc = np.array(lay["class_counts"], dtype=np.int64)
        nc = np.array(lay["noise_counts"], dtype=np.int64)
        check(int(cc.sum()) == rep["tokens"] and (cc.sum(1) == per_class).all(),
              f"layer {l}: class rows sum to tokens x top-k")
        check((nc.sum(1) == noise).all(), f"layer {l}: noise buckets {nc.sum(1)} = {noise}")
        check((cc.sum(0) == nc.sum(0)).all(), f"layer {l}: both tables count the same experts")
        ci, ni = info(cc), info(nc)
        close(lay["entropy_bits"], ci["h_expert"], f"layer {l} H(E)")
        close(lay["mi_class_bits"], ci["mi"], f"layer {l} I(E; class)")
        close(lay["mi_noise_bits"], ni["mi"], f"layer {l} I(E; noise)")
        for c, row in zip(rep["classes"], cc):
            check(c["cover90"][l] == cover(row), f"class {c['class']} layer {l} 90% set")
    check(d["cost"]["forwards"] > 0 and 0 <= d["cost"]["counting_s"] < d["cost"]["forward_s"],
          f"cost {d['cost']}")


def check_text(text, d):
    rows = re.findall(r"^(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)\s+([\d.]+)%",
                      text, re.M)
    layers = d["routing"]["layers"]
    check(len(rows) == len(layers), f"one text line per layer: {rows}")
    for row, lay in zip(rows, layers):
        check(abs(float(row[2]) - lay["mi_class_bits"]) < 6e-4 and
              abs(float(row[4]) - lay["mi_noise_bits"]) < 6e-4,
              f"text layer {row[0]} says the JSON's informations: {row}")
    check(re.search(r"knowing the class tells [\d.]+ of the expert choice's [\d.]+ bits", text),
          "the text ends in a sentence")


def main():
    exe, model = sys.argv[1], sys.argv[2]
    with open(f"{model}/config.json") as f:
        cfg = json.load(f)
    r = run(exe, "routing", "--model", model, "--images", "2", "--json")
    if not check(r.returncode == 0, f"ditmoe routing --json: {r.stderr}"):
        sys.exit(1)
    d = json.loads(r.stdout)
    check_json(d, cfg, 2)
    t = run(exe, "routing", "--model", model, "--images", "2")
    check(t.returncode == 0, f"ditmoe routing: {t.stderr}")
    check_text(t.stdout, d)
    for args, code, words in [(["--images", "0"], 2, "--images"),
                              (["--images", "x"], 2, "--images"),
                              ([], 2, "--images N"),
                              (["--images", "1", "--batch", "1"], 2, "--batch"),
                              (["--images", "1", "--model", "/nonexistent/m"], 1, "/nonexistent/m")]:
        b = run(exe, "routing", *args)
        check(b.returncode == code and words in b.stderr, f"{args}: exit {b.returncode} {b.stderr!r}")
    if FAILURES:
        print(f"{len(FAILURES)} failures")
        sys.exit(1)
    print("ok: ditmoe routing")


if __name__ == "__main__":
    main()
