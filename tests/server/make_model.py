#!/usr/bin/python3
"""make_model.py OUT_DIR [--slow | --latent]: writes a small random-weight
DiT-MoE model directory for the server tests (16x16 gray images, 2 MoE
layers of 4 experts, top-2, 10 named classes, rectified-flow velocity
prediction, Euler by default). --slow makes a larger one (32x32, 4 layers
of 8 experts) whose steps take long enough that jobs can be caught queued
or running. --latent makes a latent model (8x8x4 latents) with a small
random SD-VAE in OUT_DIR/vae (config.json "vae": "vae", "latent_scale"),
whose decoder turns them into 16x16 RGB pictures, as tests/vae does.
Uses the project's PyTorch reference writers (tools/ref/ditmoe_ref.py,
tools/ref/vae_ref.py)."""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "ref"))
import ditmoe_ref  # noqa: E402

CLASSES = ["T-shirt/top, tshirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot, boot"]
CFG = dict(input_size=16, patch_size=4, in_channels=1, hidden_size=32, depth=2, num_heads=2,
           mlp_ratio=2.0, num_classes=10, num_experts=4, num_experts_per_tok=2,
           n_shared_experts=1, learn_sigma=False, class_dropout_prob=0.1, prediction="velocity",
           class_names=CLASSES, sampling={"sampler": "euler", "steps": 8, "cfg_scale": 1.5})
SLOW = dict(CFG, input_size=32, hidden_size=128, depth=4, num_heads=4, mlp_ratio=4.0,
            num_experts=8)
LATENT = dict(CFG, input_size=8, patch_size=2, in_channels=4)
VAE = dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8,
           latent_channels=4, out_channels=3)


def main():
    out = sys.argv[1]
    if os.path.exists(os.path.join(out, "config.json")):
        return
    torch.manual_seed(0)
    kind = sys.argv[2] if len(sys.argv) > 2 else ""
    cfg = SLOW if kind == "--slow" else LATENT if kind == "--latent" else CFG
    model = ditmoe_ref.randomize_(ditmoe_ref.DiTMoE(cfg), 3).eval()
    if kind == "--latent":
        import vae_ref
        vae = vae_ref.VAEDecoder(VAE)
        vae_ref.randomize_(vae, 6)
        vae_ref.write_vae_dir(vae, os.path.join(out, "vae"))
        cfg = dict(cfg, vae="vae", latent_scale=0.5)
    ditmoe_ref.write_model_dir(model, cfg, out)


if __name__ == "__main__":
    main()
