#!/usr/bin/python3
"""test_routing.py --server EXE --cache DIR: GET /stats/routing end to end.

A fresh server (the small random model of srvtest.make_model: 2 layers of 4
experts, top-2, 16 tokens) first reports no classes and null measures; then
runs three known jobs (classes 1, 4 and 6; one without guidance) and must
report exactly those classes, with counts that add up to what the jobs
routed: per class images x steps x tokens x top-k, the unconditional rows
apart, each Euler step's rows in the noise bucket of its level, and in sum
the counts each job reported itself. The measures must equal the NumPy
reference (tests/analytics/test_measures.py) on the reported counts, and
the /metrics gauges must equal the measures.
"""
import argparse
import math
import os
import sys

import numpy as np

from srvtest import Server, check, finish, make_model, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "analytics"))
from test_measures import bucket, cover, info  # noqa: E402  (the NumPy reference)

T, TOP_K, L, E, K = 16, 2, 2, 4, 10
JOBS = [  # class, images, steps, guidance
    (1, 2, 5, 1.0),
    (4, 1, 7, 3.0),
    (6, 3, 4, 2.0),
]


def close(a, b, what, tol=1e-9):
    return check(a is not None and abs(a - b) <= tol * max(1.0, abs(b)), f"{what}: {a} != {b}")


def expected():
    """Per class and unconditional: tokens of a layer, and per noise bucket."""
    per_class, noise = {}, np.zeros((2, 10), dtype=np.int64)
    for cls, n, steps, cfg in JOBS:
        per_class[cls] = per_class.get(cls, 0) + n * steps * T * TOP_K
        for i in range(steps):  # Euler: level (steps - i) / steps, stored as float
            b = bucket((steps - i) / steps)
            noise[0, b] += n * T * TOP_K
            if cfg > 1:
                noise[1, b] += n * T * TOP_K
    return per_class, noise


def check_empty(s):
    d = s.get("/stats/routing").json()
    for period in ("since_start", "window"):
        p = d[period]
        check(p["tokens"] == 0 and p["classes"] == [] and p["unconditional"] is None,
              f"{period} before any job: no tokens, no classes")
        check(all(l["mi_class_bits"] is None and l["mi_noise_bits"] is None and
                  l["entropy_bits"] is None for l in p["layers"]),
              f"{period} before any job: measures are null")
    metrics = s.get("/metrics").body.decode().splitlines()
    for gauge in ("class", "noise"):
        nan = [l for l in metrics if l.startswith(f"ditmoe_routing_{gauge}_information_bits{{")]
        check(len(nan) == 2 * L and all(l.endswith(" NaN") for l in nan),
              f"{gauge} gauges are NaN before any job: {nan}")


def run_jobs(s):
    """Runs JOBS one after the other; returns the sum of their own counts (L, E)."""
    total = np.zeros((L, E), dtype=np.int64)
    for cls, n, steps, cfg in JOBS:
        jid = s.post("/jobs", {"class_label": cls, "num_images": n, "steps": steps,
                               "cfg_scale": cfg, "seed": cls}).json()["id"]
        wait_for(lambda: s.get(f"/jobs/{jid}").json()["status"] == "done", 120, f"job {jid}")
        total += np.array(s.get(f"/jobs/{jid}").json()["experts"], dtype=np.int64)
    return total


def check_period(p, name, job_counts):
    per_class, noise = expected()
    seen = sorted(per_class)
    check([c["class"] for c in p["classes"]] == seen, f"{name}: classes {p['classes']} == {seen}")
    check([c["name"] for c in p["classes"]] == ["Trouser", "Coat", "Shirt"], f"{name}: class names")
    check(all(c["tokens"] == per_class[c["class"]] for c in p["classes"]),
          f"{name}: tokens per class = images x steps x {T} tokens x top-{TOP_K}")
    check(p["tokens"] == sum(per_class.values()) and
          p["tokens_unconditional"] == int(noise[1].sum()), f"{name}: conditional and "
          f"unconditional tokens {p['tokens']}, {p['tokens_unconditional']}")
    for l, lay in enumerate(p["layers"]):
        cc = np.array(lay["class_counts"], dtype=np.int64)
        nc = np.array(lay["noise_counts"], dtype=np.int64)
        uc = np.array(lay["unconditional"]["noise_counts"], dtype=np.int64)
        check(cc.sum(1).tolist() == [per_class[k] for k in seen], f"{name} layer {l}: class rows")
        check(nc.sum(1).tolist() == noise[0].tolist() and uc.sum(1).tolist() == noise[1].tolist(),
              f"{name} layer {l}: every step's rows in the bucket of its noise level")
        check((cc.sum(0) + np.array(lay["unconditional"]["counts"]) == job_counts[l]).all(),
              f"{name} layer {l}: the classes plus the unconditional rows = the jobs' own counts")
        ci, ni = info(cc), info(nc)
        close(lay["entropy_bits"], ci["h_expert"], f"{name} layer {l} H(E)")
        close(lay["mi_class_bits"], ci["mi"], f"{name} layer {l} I(E; class)")
        close(lay["mi_noise_bits"], ni["mi"], f"{name} layer {l} I(E; noise)")
        close(lay["unconditional"]["mi_noise_bits"], info(uc)["mi"], f"{name} layer {l} uncond")
        check(0 <= lay["mi_class_bits"] <= lay["entropy_bits"] <= 2 + 1e-12,
              f"{name} layer {l}: 0 <= I <= H <= log2 {E}")
        for c, row in zip(p["classes"], cc):
            check(c["cover90"][l] == cover(row), f"{name} class {c['class']} layer {l} 90% set")


def check_metrics(s, d):
    """Both gauges of every layer and period equal the report's measures."""
    body = s.get("/metrics").body.decode()
    for period in ("since_start", "window"):
        for l, lay in enumerate(d[period]["layers"]):
            for gauge, key in (("class", "mi_class_bits"), ("noise", "mi_noise_bits")):
                name = f'ditmoe_routing_{gauge}_information_bits{{layer="{l}",period="{period}"}}'
                v = [float(x.split()[-1]) for x in body.splitlines() if x.startswith(name + " ")]
                check(len(v) == 1 and math.isclose(v[0], lay[key], rel_tol=1e-5, abs_tol=1e-9),
                      f"/metrics {name} {v} = {lay[key]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--cache", required=True)
    a = ap.parse_args()
    s = Server(a.server, make_model(a.cache))
    try:
        check_empty(s)
        jobs = run_jobs(s)
        d = s.get("/stats/routing").json()
        check(d["window_s"] == 60, "window_s")
        for period in ("since_start", "window"):  # the jobs took seconds: all in the window
            check_period(d[period], period, jobs)
        check_metrics(s, d)
        st = s.stats()
        check(sorted(c["class"] for c in st["by_class"]) == [1, 4, 6, K],
              "/stats by_class: the three classes and the unconditional rows")
        check(s.request("HEAD", "/stats/routing").status == 200, "HEAD /stats/routing")
        r = s.post("/stats/routing", {})
        check(r.status == 405 and r.header("allow") == "GET, HEAD", "POST /stats/routing: 405")
    finally:
        s.close()
    finish("server routing")


if __name__ == "__main__":
    main()
