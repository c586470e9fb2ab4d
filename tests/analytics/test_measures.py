#!/usr/bin/python3
"""test_measures.py RT_CHECK GROUP: routing_info.h against a NumPy reference.

  measures  H(E), H(K), I(E; K), the share and the 90% cover sets of
            synthetic count tables: uniform routing (I = 0), independent
            class and expert (I = 0), routing a function of the class
            (I = H(E)), two experts per class (I = H(E) - 1), random tables
            with zero rows and counts near 2^40, one row, all zeros
  report    one forward's rows added with rt_counts_add: the raw tables
            (class rows, unconditional rows apart, noise buckets) and the
            JSON report's measures, class list and cover sets
  bad       malformed count files are refused naming the file, line, value
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

BUCKETS, COVER = 10, 0.9
FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what)
    return cond


def close(a, b, what, tol=1e-9):
    return check(abs(a - b) <= tol * max(1.0, abs(b)), f"{what}: {a!r} != {b!r}")


# ---- the reference -----------------------------------------------------------

def entropy(p):
    p = np.asarray(p, dtype=np.float64)
    s = p.sum()
    if s <= 0:
        return 0.0
    q = p[p > 0] / s
    return float(-(q * np.log2(q)).sum())


def info(t):
    """(rows, E) counts -> tokens, H(E), H(K), I(E; K), share."""
    t = np.asarray(t, dtype=np.float64)
    n = t.sum()
    if n <= 0:
        return dict(tokens=0.0, h_expert=0.0, h_cond=0.0, mi=0.0, share=0.0)
    pj = t / n
    pk, pe = pj.sum(1), pj.sum(0)
    nz = pj > 0
    mi = float((pj[nz] * np.log2(pj[nz] / np.outer(pk, pe)[nz])).sum())
    h = entropy(t.sum(0))
    mi = min(max(mi, 0.0), h, entropy(t.sum(1)))
    return dict(tokens=n, h_expert=h, h_cond=entropy(t.sum(1)), mi=mi,
                share=mi / h if h > 0 else 0.0)


def cover(row, frac=COVER):
    """Most used first, ties by lower index; the shortest prefix holding frac."""
    row = np.asarray(row, dtype=np.float64)
    if row.sum() <= 0:
        return []
    order = sorted(range(len(row)), key=lambda e: (-row[e], e))
    held = np.cumsum(row[order])
    m = int(np.argmax(held >= frac * row.sum())) + 1
    return order[:m]


def bucket(noise):
    """The C rule on the float32 level: floor(level * 10 + 1e-6), clamped."""
    x = float(np.float32(noise))
    if not x > 0:
        return 0
    return min(BUCKETS - 1, int(np.floor(min(x, 1.0) * BUCKETS + 1e-6)))


# ---- measures ----------------------------------------------------------------

def tables():
    rng = np.random.default_rng(17)
    t = {}
    t["uniform"] = np.full((10, 8), 1000, dtype=np.uint64)
    t["independent"] = np.outer(np.arange(1, 11), np.arange(3, 11)).astype(np.uint64)
    f = np.zeros((8, 8), dtype=np.uint64)
    f[np.arange(8), np.arange(8)] = 500            # class k -> expert k: I = H = 3
    t["bijection"] = f
    g = np.zeros((10, 8), dtype=np.uint64)
    g[np.arange(10), np.arange(10) % 8] = np.arange(1, 11) * 97   # a function, not 1:1
    t["function"] = g
    two = np.zeros((8, 8), dtype=np.uint64)
    two[np.arange(8), np.arange(8)] = 300
    two[np.arange(8), (np.arange(8) + 1) % 8] = 300               # I = 3 - 1 bits
    t["two_per_class"] = two
    for i in range(4):
        r = rng.integers(0, 1 << (10 + 10 * i), size=(rng.integers(2, 30), 16), dtype=np.uint64)
        r[rng.random(r.shape[0]) < 0.2] = 0                      # unseen classes
        t[f"random{i}"] = r
    skew = rng.integers(0, 5, size=(6, 8), dtype=np.uint64)
    skew[:, 2] += 10000                                          # one expert takes most
    t["skewed"] = skew
    t["one_row"] = rng.integers(0, 100, size=(1, 8), dtype=np.uint64)
    t["zeros"] = np.zeros((3, 4), dtype=np.uint64)
    return t


def run(exe, mode, text):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    try:
        return subprocess.run([exe, mode, f.name], capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(f.name)


def test_measures(exe):
    t = tables()
    text = "".join(f"{a.shape[0]} {a.shape[1]}\n" +
                   "\n".join(" ".join(str(int(v)) for v in row) for row in a) + "\n"
                   for a in t.values())
    r = run(exe, "measures", text)
    if not check(r.returncode == 0, f"rt_check measures: {r.stderr}"):
        return
    got = [json.loads(line) for line in r.stdout.splitlines()]
    check(len(got) == len(t), f"{len(got)} results for {len(t)} tables")
    for (name, a), g in zip(t.items(), got):
        want = info(a)
        for k in ("tokens", "h_expert", "h_cond", "mi", "share"):
            close(g[k], want[k], f"{name} {k}")
        for i, row in enumerate(a):
            close(g["row_entropy"][i], entropy(row), f"{name} row {i} entropy")
            check(g["cover"][i] == cover(row), f"{name} row {i} cover {g['cover'][i]} != {cover(row)}")
    by = dict(zip(t, got))
    close(by["uniform"]["mi"], 0.0, "uniform routing: I = 0", 1e-12)
    close(by["uniform"]["h_expert"], 3.0, "uniform routing: H = log2 8")
    close(by["independent"]["mi"], 0.0, "independent class and expert: I = 0", 1e-12)
    for name in ("bijection", "function"):
        close(by[name]["mi"], by[name]["h_expert"], f"{name}: I = H(E)", 1e-12)
        close(by[name]["share"], 1.0, f"{name}: the class explains all of H(E)", 1e-12)
    close(by["bijection"]["mi"], 3.0, "bijection: I = 3 bits")
    close(by["two_per_class"]["mi"], 2.0, "two experts per class: I = 3 - 1 bits")
    check(by["uniform"]["cover"][0] == list(range(8)), "uniform: a 90% set needs all 8 experts")
    check(by["bijection"]["cover"][3] == [3], "class 3 -> expert 3: its set is {3}")
    close(by["one_row"]["mi"], 0.0, "one condition: I = 0", 1e-12)
    check(by["zeros"]["tokens"] == 0 and by["zeros"]["mi"] == 0 and by["zeros"]["cover"][0] == [],
          "all zeros: no tokens, no information, empty sets")


# ---- report --------------------------------------------------------------------

def test_report(exe):
    rng = np.random.default_rng(5)
    n, L, E, K = 40, 3, 4, 5
    cls = rng.choice([0, 1, 3, K, K + 2], size=n)       # classes 2 and 4 never seen; K + 2: null
    noise = rng.choice([0.0, 0.05, 0.1, 0.3, 0.9, 0.95, 0.999, 1.0, 1.5], size=n)
    routing = rng.integers(0, 50, size=(n, L, E), dtype=np.uint64)
    lines = [f"{n} {L} {E} {K}"] + [
        f"{cls[i]} {noise[i]!r} " + " ".join(str(int(v)) for v in routing[i].ravel())
        for i in range(n)]
    r = run(exe, "report", "\n".join(lines) + "\n")
    if not check(r.returncode == 0, f"rt_check report: {r.stderr}"):
        return
    out = json.loads(r.stdout)
    by_class = np.zeros((K + 1, L, E), dtype=np.uint64)
    by_noise = np.zeros((2, BUCKETS, L, E), dtype=np.uint64)
    for i in range(n):
        k = cls[i] if cls[i] < K else K
        by_class[k] += routing[i]
        by_noise[int(k == K), bucket(noise[i])] += routing[i]
    data = np.array(out["data"], dtype=np.uint64)
    check(data.size == by_class.size + by_noise.size, "table size")
    check(np.array_equal(data[:by_class.size].reshape(by_class.shape), by_class),
          "class table: each row under its class, null and out-of-range labels as unconditional")
    check(np.array_equal(data[by_class.size:].reshape(by_noise.shape), by_noise),
          "noise table: conditional and unconditional rows apart, 10 buckets")
    rep = out["report"]
    seen = sorted({int(k) for k in cls if k < K})
    check([c["class"] for c in rep["classes"]] == seen, f"classes {rep['classes']} == {seen}")
    check(rep["tokens"] == int(by_class[:K, 0].sum()), "conditional tokens of a layer")
    check(rep["tokens_unconditional"] == int(by_class[K, 0].sum()), "unconditional tokens")
    close(rep["entropy_max_bits"], 2.0, "entropy_max_bits = log2 4")
    for l, lay in enumerate(rep["layers"]):
        ci, ni = info(by_class[:K, l]), info(by_noise[0, :, l])
        close(lay["entropy_bits"], ci["h_expert"], f"layer {l} H(E)")
        close(lay["mi_class_bits"], ci["mi"], f"layer {l} I(E; class)")
        close(lay["class_share"], ci["share"], f"layer {l} class share")
        close(lay["mi_noise_bits"], ni["mi"], f"layer {l} I(E; noise)")
        close(lay["noise_share"], ni["share"], f"layer {l} noise share")
        close(ci["h_expert"], ni["h_expert"], f"layer {l}: both tables have the same H(E)")
        check(lay["class_counts"] == by_class[seen, l].tolist(), f"layer {l} class rows")
        check(lay["noise_counts"] == by_noise[0, :, l].tolist(), f"layer {l} noise rows")
        u, ui = lay["unconditional"], info(by_noise[1, :, l])
        close(u["mi_noise_bits"], ui["mi"], f"layer {l} unconditional I(E; noise)")
        check(u["counts"] == by_class[K, l].tolist(), f"layer {l} unconditional counts")
    sizes = []
    for c in rep["classes"]:
        sets = [cover(by_class[c["class"], l]) for l in range(L)]
        check(c["cover90"] == sets, f"class {c['class']} cover sets {c['cover90']} != {sets}")
        sizes.append(sum(len(s) for s in sets))
    close(rep["cache"]["per_class_mean"], float(np.mean(sizes)), "cache: mean experts per class")
    check(rep["cache"]["per_class_max"] == max(sizes) and rep["cache"]["experts_total"] == L * E,
          "cache: max per class and all experts")
    check(rep["unconditional"]["cover90"] == [cover(by_class[K, l]) for l in range(L)],
          "unconditional rows' cover sets")


# ---- bad input -------------------------------------------------------------------

def test_bad(exe):
    cases = [("2 3\n1 2 3\n4 x 6\n", ["line 3", "'x'"]),
             ("2 3\n1 2 3\n", ["ends early"]),
             ("1 2\n5 -3\n", ["line 2", "'-3'"]),
             ("0 4\n", ["ROWS 0", "out of range"])]
    for text, words in cases:
        r = run(exe, "measures", text)
        check(r.returncode == 1 and all(w in r.stderr for w in words) and ".txt" in r.stderr,
              f"{text!r}: exit {r.returncode}, {r.stderr!r} names {words} and the file")
    r = run(exe, "report", "1 2 2 3\n0 zero 1 2 3 4\n")
    check(r.returncode == 1 and "'zero' is not a number" in r.stderr, f"bad noise: {r.stderr!r}")
    r = subprocess.run([exe, "measures", "/nonexistent/counts.txt"], capture_output=True, text=True)
    check(r.returncode == 1 and "/nonexistent/counts.txt" in r.stderr, "a missing file is named")


def main():
    exe, group = sys.argv[1], sys.argv[2]
    {"measures": test_measures, "report": test_report, "bad": test_bad}[group](exe)
    if FAILURES:
        print(f"{len(FAILURES)} failures")
        sys.exit(1)
    print(f"ok: routing {group}")


if __name__ == "__main__":
    main()
