#!/usr/bin/python3
"""Times the project's PyTorch reference DiT-MoE forward (tools/ref, the same
math as upstream models.py) at a published shape with random weights.

    bench/torch_forward.py --preset s2 --batch 2 --threads 2 [--iters 3]

Prints one line: preset, batch, threads, seconds per forward.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "ref"))
import ditmoe_ref as R  # noqa: E402

PRESETS = {  # upstream DiT_S_2 .. DiT_G_2 with their published expert counts
    "s2": dict(depth=12, hidden_size=384, num_heads=6, num_experts=8),
    "b2": dict(depth=12, hidden_size=768, num_heads=12, num_experts=8),
    "xl2": dict(depth=28, hidden_size=1152, num_heads=16, num_experts=8),
    "g2": dict(depth=40, hidden_size=1408, num_heads=16, num_experts=16),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="s2", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = dict(input_size=32, patch_size=2, in_channels=4, mlp_ratio=4, num_classes=1000,
               num_experts_per_tok=2, n_shared_experts=2, learn_sigma=True,
               class_dropout_prob=0.1, prediction="epsilon", **PRESETS[a.preset])
    model = R.DiTMoE(cfg)
    R.randomize_(model, 0)
    model.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 4, 32, 32, generator=g)
    t = torch.randint(0, 1000, (a.batch,), generator=g).float()
    y = torch.randint(0, 1001, (a.batch,), generator=g)
    with torch.no_grad():
        model(x, t, y)  # warm-up
        t0 = time.perf_counter()
        for _ in range(a.iters):
            model(x, t, y)
        dt = (time.perf_counter() - t0) / a.iters
    print(f"torch preset={a.preset} batch={a.batch} threads={a.threads} seconds_per_forward={dt:.4f}")


if __name__ == "__main__":
    main()
