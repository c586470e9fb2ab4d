#!/usr/bin/python3
"""q8_forward_error.py: forward error of 8-bit weights, by which tensors are 8-bit.

Usage: q8_forward_error.py [MODEL_DIR ...]

For each model (a trained model directory, and random-weight S/2 models,
tools/ref/ditmoe_ref.randomize_), runs the PyTorch reference forward with
F32 weights and with Q8 weights (docs/quantization.md: 32 int8 per F16
scale, dequantised exactly as the engine does) for growing sets of
tensors:

  experts     routed and shared experts' gate, up and down (the default)
  +attention  and attn.qkv, attn.proj
  +adaLN      and every adaLN modulation (blocks and final layer)
  all         every 2-D matrix whose input width is a multiple of 32
              (also the router, the timestep MLP and the final linear)

and prints max|out_q - out| / max|out| and mean|out_q - out| / mean|out|
over a batch of random inputs at three noise levels. CPU, torch threads 2.
"""
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools", "ref"))
import ditmoe_ref as R  # noqa: E402

S2 = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=12,
          num_heads=6, mlp_ratio=4.0, num_classes=1000, num_experts=8,
          num_experts_per_tok=2, n_shared_experts=2, learn_sigma=True,
          class_dropout_prob=0.1, prediction="epsilon")

SETS = {
    "experts": ("_proj.weight",),
    "+attention": ("_proj.weight", "attn.qkv.weight", "attn.proj.weight"),
    "+adaLN": ("_proj.weight", "attn.qkv.weight", "attn.proj.weight", "adaLN_modulation.1.weight"),
    "all": None,
}


def q8(w):
    """Dequantised Q8 copy of a (R, K) float32 array."""
    b = w.reshape(w.shape[0], -1, 32)
    d = (np.abs(b).max(axis=2, keepdims=True) / np.float32(127)).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d > 0, np.rint(b / np.where(d > 0, d, 1)), 0)
    return (d * np.clip(q, -127, 127).astype(np.float32)).reshape(w.shape)


def quantised(model, which):
    state = {}
    for k, v in model.state_dict().items():
        a = v.numpy()
        hit = a.ndim == 2 and a.shape[1] % 32 == 0 and k.endswith(".weight") and \
            "embedding_table" not in k and (which is None or k.endswith(which))
        state[k] = torch.from_numpy(q8(a)) if hit else v
    m = R.DiTMoE(model.cfg)
    m.load_state_dict(state)
    return m.eval()


def inputs(cfg, n, seed):
    g = torch.Generator().manual_seed(seed)
    c, s = cfg["in_channels"], cfg["input_size"]
    x = torch.randn(n, c, s, s, generator=g)
    levels = [0.9, 0.5, 0.1]
    if cfg["prediction"] == "velocity":
        t = torch.tensor([levels[i % 3] for i in range(n)])
    else:
        t = torch.tensor([levels[i % 3] * 999 for i in range(n)])
    y = torch.randint(0, cfg["num_classes"], (n,), generator=g)
    return x, t, y


def report(name, model, n):
    x, t, y = inputs(model.cfg, n, 1)
    with torch.no_grad():
        ref = model(x, t, y)
        print(f"{name}: batch {n}")
        for label, which in SETS.items():
            out = quantised(model, which)(x, t, y)
            e = (out - ref).abs()
            print(f"  {label:<11} max {float(e.max() / ref.abs().max()):.3e}  "
                  f"mean {float(e.mean() / ref.abs().mean()):.3e}", flush=True)


def main():
    torch.set_num_threads(2)
    for path in sys.argv[1:]:
        model, _ = R.load_model_dir(path)
        report(path, model, 12)
    for seed in (1, 2):
        torch.manual_seed(0)
        report(f"random S/2 (seed {seed})", R.randomize_(R.DiTMoE(S2), seed).eval(), 6)


if __name__ == "__main__":
    main()
