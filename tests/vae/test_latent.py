#!/usr/bin/python3
"""test_latent.py: a latent DiT-MoE with its SD-VAE, end to end.

Usage: test_latent.py DITMOE WORKDIR

A small random latent model (4 channels, 8x8 latents) names a small random
VAE in its config.json ("vae": "vae", "latent_scale": 0.5). `ditmoe
generate` must sample, divide by the latent scale, decode with the VAE and
write a PNG of the VAE's output size whose pixels equal the PyTorch
reference decoder's on the same final latents (within 1 level of 255).
A broken VAE directory must make the model load fail naming the VAE file.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "ref"))
import ditmoe_ref  # noqa: E402
import vae_ref  # noqa: E402

DIT = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2,
           mlp_ratio=2, num_classes=5, num_experts=4, num_experts_per_tok=2,
           n_shared_experts=2, learn_sigma=True, class_dropout_prob=0.1,
           prediction="epsilon")
VAE = dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8,
           latent_channels=4, out_channels=3)
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def make(work):
    shutil.rmtree(work, ignore_errors=True)
    model = ditmoe_ref.DiTMoE(DIT)
    ditmoe_ref.randomize_(model, 5)
    cfg = dict(DIT, vae="vae", latent_scale=0.5)
    ditmoe_ref.write_model_dir(model, cfg, work)
    vae = vae_ref.VAEDecoder(VAE)
    vae_ref.randomize_(vae, 6)
    vae_ref.write_vae_dir(vae, os.path.join(work, "vae"))
    return vae.eval()


def main():
    ditmoe, work = sys.argv[1], sys.argv[2]
    vae = make(work)
    png, npy = os.path.join(work, "out.png"), os.path.join(work, "z.npy")
    r = subprocess.run([ditmoe, "generate", "--model", work, "--class", "3", "--seed", "9",
                        "--steps", "4", "--sampler", "ddpm", "--cfg-scale", "2",
                        "--out", png, "--out-npy", npy], capture_output=True, text=True)
    check(r.returncode == 0, "generate on a latent model with a VAE: " + r.stderr.strip())
    if r.returncode != 0:
        return
    z = torch.from_numpy(np.load(npy))
    with torch.no_grad():
        rgb = vae(z / 0.5)[0]
    ref = ((rgb + 1) / 2).clamp(0, 1).mul(255).add(0.5).floor().byte().permute(1, 2, 0).numpy()
    img = np.asarray(Image.open(png).convert("RGB"))
    check(img.shape == (16, 16, 3), f"PNG is the VAE's 16x16 RGB output, got {img.shape}")
    if img.shape == ref.shape:
        diff = np.abs(img.astype(int) - ref.astype(int)).max()
        check(diff <= 1, f"pixels equal the PyTorch decoder's within 1 level (max {diff})")
        check(ref.std() > 1, "the reference picture is not flat (the check can fail)")

    os.remove(os.path.join(work, "vae", "diffusion_pytorch_model.safetensors"))
    r = subprocess.run([ditmoe, "inspect", "--model", work], capture_output=True, text=True)
    check(r.returncode != 0 and r.returncode < 128 and "vae" in r.stderr,
          "a missing VAE weight file fails the load, naming it: " + r.stderr.strip())


if __name__ == "__main__":
    main()
    print("FAILED" if failures else "all latent-model checks passed")
    sys.exit(1 if failures else 0)
