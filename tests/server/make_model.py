#!/usr/bin/python3
"""make_model.py OUT_DIR: writes the server tests' latent model (srvtest's
CONFIGS["latent"]: 8x8x4 latents) with a small random SD-VAE in OUT_DIR/vae
(config.json "vae": "vae", "latent_scale"), whose decoder turns them into
16x16 RGB pictures, as tests/vae does. Uses the project's PyTorch reference
writers (tools/ref/ditmoe_ref.py, tools/ref/vae_ref.py); the pixel models
are written by `ditmoe synth` (srvtest.make_model), without PyTorch."""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "ref"))
import ditmoe_ref  # noqa: E402

from srvtest import CONFIGS  # noqa: E402

VAE = dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8,
           latent_channels=4, out_channels=3)


def main():
    out = sys.argv[1]
    if os.path.exists(os.path.join(out, "config.json")):
        return
    torch.manual_seed(0)
    cfg = CONFIGS["latent"]
    model = ditmoe_ref.randomize_(ditmoe_ref.DiTMoE(cfg), 3).eval()
    import vae_ref
    vae = vae_ref.VAEDecoder(VAE)
    vae_ref.randomize_(vae, 6)
    vae_ref.write_vae_dir(vae, os.path.join(out, "vae"))
    cfg = dict(cfg, vae="vae", latent_scale=0.5)
    ditmoe_ref.write_model_dir(model, cfg, out)


if __name__ == "__main__":
    main()
