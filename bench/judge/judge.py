#!/usr/bin/python3
"""judge.py: the Fashion-MNIST classifier that grades generated images.

A small CNN (two 3x3 conv + pool stages, two linear layers, ~0.2 M
parameters) trained on the Fashion-MNIST training split, on pixels in
[-1, 1] exactly as the generator produces them. It is a yardstick, not a
state-of-the-art classifier: ~91% test accuracy is what bench/quality.py's
">= 90% of generated images recognised" target is measured against.

Weights are stored in bench/judge/judge.safetensors (F32, ~0.8 MB) using the
reference module's safetensors writer. Run as a script to (re)train them and
print the test accuracy; import it and use load() + predict() to grade.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools", "ref"))
sys.path.insert(0, os.path.join(ROOT, "tools", "train"))
import ditmoe_ref as R  # noqa: E402
from train import load_fashion_mnist  # noqa: E402

WEIGHTS = os.path.join(HERE, "judge.safetensors")


class Judge(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.f1 = nn.Linear(64 * 7 * 7, 64)
        self.f2 = nn.Linear(64, 10)

    def forward(self, x):                        # (N, 1, 28, 28) in [-1, 1]
        x = F.max_pool2d(F.relu(self.c1(x)), 2)  # (N, 32, 14, 14)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)  # (N, 64, 7, 7)
        x = F.dropout(F.relu(self.f1(x.flatten(1))), 0.3, self.training)
        return self.f2(x)                        # (N, 10) logits


def load(path=WEIGHTS):
    """-> Judge in eval mode with the stored weights (raises if missing)."""
    arrays, _, _ = R.read_safetensors(path)
    net = Judge()
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
    return net.eval()


@torch.no_grad()
def features(net, x):
    """(N, 1, 28, 28) images in [-1, 1] (clamped) -> (N, 64) float64: the
    penultimate layer (ReLU of f1, dropout off), what bench/judge/fd.py's
    Frechet distance is measured on."""
    x = torch.as_tensor(x, dtype=torch.float32).clamp(-1, 1)
    out = []
    for i in range(0, len(x), 500):
        h = F.max_pool2d(F.relu(net.c1(x[i:i + 500])), 2)
        h = F.max_pool2d(F.relu(net.c2(h)), 2)
        out.append(F.relu(net.f1(h.flatten(1))))
    return torch.cat(out).double()


@torch.no_grad()
def predict(net, x):
    """(N, 1, 28, 28) images in [-1, 1] (clamped) -> (N,) predicted labels."""
    x = torch.as_tensor(x, dtype=torch.float32).clamp(-1, 1)
    return torch.cat([net(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])


def train(epochs, seed):
    torch.manual_seed(seed)
    xs, ys = (torch.from_numpy(a) for a in load_fashion_mnist("train"))
    net = Judge()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps = epochs * (len(xs) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    t0 = time.time()
    for ep in range(epochs):
        perm = torch.randperm(len(xs))
        net.train()
        for i in range(0, len(xs) - 127, 128):
            idx = perm[i:i + 128]
            loss = F.cross_entropy(net(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {ep + 1}: loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    return net.eval()


def test_accuracy(net):
    xs, ys = load_fashion_mnist("t10k")
    pred = predict(net, xs).numpy()
    per = [float((pred[ys == c] == c).mean()) for c in range(10)]
    return float((pred == ys).mean()), per


def main():
    ap = argparse.ArgumentParser(description="train the judge, or report its accuracy")
    ap.add_argument("--train", action="store_true", help="retrain and overwrite the weights")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.train or not os.path.exists(WEIGHTS):
        net = train(args.epochs, args.seed)
        R.write_safetensors(WEIGHTS, {k: ("F32", v.numpy().astype("<f4"))
                                      for k, v in net.state_dict().items()})
    net = load()
    acc, per = test_accuracy(net)
    print(f"judge test accuracy {acc:.4f}; per class " +
          " ".join(f"{a:.3f}" for a in per))
    return 0


if __name__ == "__main__":
    sys.exit(main())
