#!/usr/bin/python3
"""fd.py: the Frechet distance yardstick (FID's recipe with the in-domain judge).

Images are mapped to the judge's 64-wide penultimate features
(judge.features); each set is summarised by its feature mean mu and
covariance S (unbiased, as FID's np.cov); the distance between two sets is

    FD = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

tr((S1 S2)^(1/2)) is computed without scipy's sqrtm: with A = S1^(1/2) and
B = S2^(1/2) (symmetric eigendecompositions, eigenvalues clipped at 0), S1 S2
is similar to A S2 A = (AB)(AB)^T, so the trace is the sum of the singular
values of AB. Taking singular values of AB rather than square roots of the
eigenvalues of (AB)(AB)^T keeps the small ones accurate: the judge's
features have near-zero-variance directions, and squaring them lost ~1e-6
of FD(A, A) = 0 to round-off. All in float64.

The reference is the whole Fashion-MNIST test split (10,000 images, 1,000
per class). FD is biased upwards by a small sample count, so a generated
set of n images is only ever compared with the real-vs-real floor at the
same n: FD of n class-balanced training images (which the generator never
beats on average: it learnt from them) against the same reference, mean and
spread over --floor-draws random draws.

--paired is the other common recipe: the reference is itself only n
class-balanced test images, and the floor is FD between two disjoint such
test subsets. Both sides then carry sampling noise, so FD and floor are both
larger and their ratio smaller than the default recipe's; each is the mean
over --floor-draws draws of the subsets.

  fd.py IMAGES.npy [--labels LABELS.npy] [--paired]   # (n, 1, 28, 28) in [-1, 1]
prints FD, the floor at that n, their ratio, and with labels the judge's
agreement (share of images classified as the class asked for).
"""
import argparse
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools", "train"))
import judge  # noqa: E402
from train import load_fashion_mnist  # noqa: E402


def gaussian_stats(f):
    """(n, d) features -> (mu (d,), S (d, d)) float64, S unbiased (n - 1)."""
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need an (n >= 2, d) feature array, not shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def psd_sqrt(s):
    """The symmetric square root of a symmetric PSD matrix."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(s1, s2):
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2."""
    return float(np.linalg.svd(psd_sqrt(s1) @ psd_sqrt(s2), compute_uv=False).sum())


def frechet(mu1, s1, mu2, s2):
    """The Frechet distance between N(mu1, S1) and N(mu2, S2)."""
    d = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))


def balanced_pick(labels, n, rng, sets=1):
    """`sets` disjoint index arrays of n class-balanced picks from labels
    (class c gets n // 10, plus one for c < n % 10)."""
    out = [[] for _ in range(sets)]
    for c in range(10):
        k = n // 10 + (c < n % 10)
        idx = rng.choice(np.flatnonzero(labels == c), k * sets, replace=False)
        for i in range(sets):
            out[i].append(idx[i * k:(i + 1) * k])
    return [np.concatenate(o) for o in out]


class Yardstick:
    """The judge, the test split's feature statistics (the reference) and
    the training split (for floors), loaded once."""

    def __init__(self, net=None):
        self.net = net or judge.load()
        xs, self.test_labels = load_fashion_mnist("t10k")
        self.test_feats = judge.features(self.net, xs).numpy()
        self.ref = gaussian_stats(self.test_feats)
        self.train, self.train_labels = load_fashion_mnist("train")
        self._floors = {}

    def fd(self, images):
        """FD of (n, 1, 28, 28) images in [-1, 1] against the test split."""
        return frechet(*gaussian_stats(judge.features(self.net, images).numpy()), *self.ref)

    def paired(self, images, draws=5, seed=0):
        """-> (fd, fd_sd, floor, floor_sd): the --paired recipe, means and
        sds over draws of disjoint class-balanced test subsets of n."""
        gen = gaussian_stats(judge.features(self.net, images).numpy())
        rng = np.random.default_rng(seed)
        fds, floors = [], []
        for _ in range(draws):
            a, b = balanced_pick(self.test_labels, len(images), rng, 2)
            ref = gaussian_stats(self.test_feats[a])
            fds.append(frechet(*gen, *ref))
            floors.append(frechet(*gaussian_stats(self.test_feats[b]), *ref))
        sd = (lambda v: float(np.std(v, ddof=1)) if draws > 1 else 0.0)
        return float(np.mean(fds)), sd(fds), float(np.mean(floors)), sd(floors)

    def floor(self, n, draws=5, seed=0):
        """(mean, sd) of the FD of n class-balanced training images against
        the test split, over `draws` draws."""
        key = (n, draws, seed)
        if key not in self._floors:
            rng = np.random.default_rng(seed)
            vals = [self.fd(self.train[balanced_pick(self.train_labels, n, rng)[0]])
                    for _ in range(draws)]
            self._floors[key] = (float(np.mean(vals)), float(np.std(vals, ddof=1))
                                 if draws > 1 else 0.0)
        return self._floors[key]

    def report(self, images, labels=None, draws=5):
        """-> dict: n, fd, floor, floor_sd, ratio and (with labels) agreement."""
        images = np.asarray(images, dtype=np.float32)
        fd = self.fd(images)
        fl, sd = self.floor(len(images), draws)
        out = {"n": len(images), "fd": fd, "floor": fl, "floor_sd": sd,
               "ratio": fd / fl if fl > 0 else math.inf}
        if labels is not None:
            pred = judge.predict(self.net, images).numpy()
            out["agreement"] = float((pred == np.asarray(labels)).mean())
        return out


def format_report(r):
    s = (f"n {r['n']}: FD {r['fd']:.3f}  floor {r['floor']:.3f} ± {r['floor_sd']:.3f} "
         f"(train vs test at n)  ratio {r['ratio']:.2f}")
    if "agreement" in r:
        s += f"  judge agreement {r['agreement']:.3f}"
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", help=".npy of (n, 1, 28, 28) images in [-1, 1]")
    ap.add_argument("--labels", help=".npy of the (n,) classes asked for")
    ap.add_argument("--floor-draws", type=int, default=5)
    ap.add_argument("--paired", action="store_true",
                    help="also the recipe with an n-image test subset as the reference")
    a = ap.parse_args()
    x = np.load(a.images)
    if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
        print(f"fd.py: {a.images}: shape {x.shape} is not (n, 1, 28, 28)", file=sys.stderr)
        return 2
    labels = np.load(a.labels) if a.labels else None
    if labels is not None and labels.shape != (len(x),):
        print(f"fd.py: {a.labels}: shape {labels.shape} is not ({len(x)},)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    yard = Yardstick()
    print(format_report(yard.report(x, labels, a.floor_draws)))
    if a.paired:
        f, fsd, fl, flsd = yard.paired(x, a.floor_draws)
        print(f"paired (vs {len(x)} test images): FD {f:.3f} ± {fsd:.3f}  floor {fl:.3f} ± "
              f"{flsd:.3f} (test vs disjoint test)  ratio {f / fl:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
