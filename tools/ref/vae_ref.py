#!/usr/bin/python3
"""vae_ref.py: the project's own PyTorch SD-VAE decoder, the yardstick for engine/vae.c.

Upstream DiT-MoE sample.py decodes latents with diffusers' AutoencoderKL
(sd-vae-ft-mse): vae.decode(latents / 0.18215). diffusers is not packaged in
Debian, so this is that decoder written from its architecture, with the same
state_dict names (post_quant_conv.*, decoder.*), so that its weight files are
diffusers model directories (config.json + diffusion_pytorch_model.safetensors)
and the published sd-vae-ft-mse directory loads into it:

  post_quant_conv   1x1, latent -> latent
  decoder.conv_in   3x3, latent -> block_out_channels[-1]
  mid_block         ResNet, single-head self-attention over all positions
                    (GroupNorm, q/k/v/out projections, residual), ResNet
  up_blocks[i]      layers_per_block + 1 ResNets, channels from
                    reversed(block_out_channels); all but the last end with
                    nearest x2 upsampling and a 3x3 conv
  conv_norm_out     GroupNorm + SiLU, then conv_out 3x3 to out_channels
  ResNet            x + conv2(silu(gn2(conv1(silu(gn1(x)))))), a 1x1
                    conv_shortcut on x when the channel count changes

GroupNorms use norm_num_groups groups and eps 1e-6. The attention is written
with diffusers' current names (to_q, to_k, to_v, to_out.0); files with the
older names (query, key, value, proj_attn) are read and written too.

Use:
  vae_ref.py make DIR [--channels 128,256,512,512] [--layers 2] [--groups 32]
                      [--latent 4] [--seed 0] [--dtype F32|F16|BF16]
                      [--attn new|old] [--with-encoder]
  vae_ref.py decode DIR Z.npy OUT.npy       (Z already divided by the scale)
  vae_ref.py                                 self-check
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ditmoe_ref import _encode, read_safetensors, write_safetensors  # noqa: E402

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
EPS = 1e-6
# diffusers' AutoencoderKL defaults, for keys a config.json leaves out
DEFAULTS = dict(block_out_channels=[64], layers_per_block=1, latent_channels=4,
                norm_num_groups=32, out_channels=3)
# the published stabilityai/sd-vae-ft-mse decoder shape
SD_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2,
              latent_channels=4, norm_num_groups=32, out_channels=3)
OLD_ATTN = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Attention(nn.Module):
    """One head as wide as the channels, over all H*W positions."""

    def __init__(self, c, groups):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, c, eps=EPS)
        self.to_q = nn.Linear(c, c)
        self.to_k = nn.Linear(c, c)
        self.to_v = nn.Linear(c, c)
        self.to_out = nn.ModuleList([nn.Linear(c, c)])

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)  # (B, T, C)
        q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
        p = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)
        o = self.to_out[0](p @ v)
        return x + o.transpose(1, 2).reshape(b, c, h, w)


class MidBlock(nn.Module):
    def __init__(self, c, groups, attention=True):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(c, c, groups), ResnetBlock(c, c, groups)])
        self.attentions = nn.ModuleList([Attention(c, groups)] if attention else [])

    def forward(self, x):
        x = self.resnets[0](x)
        for a in self.attentions:
            x = a(x)
        return self.resnets[1](x)


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UpBlock(nn.Module):
    def __init__(self, cin, cout, n, groups, upsample):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(cin if j == 0 else cout, cout, groups) for j in range(n)])
        self.upsamplers = nn.ModuleList([Upsample(cout)] if upsample else [])

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        for u in self.upsamplers:
            x = u(x)
        return x


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, g = list(cfg["block_out_channels"]), cfg["norm_num_groups"]
        rev = ch[::-1]
        self.conv_in = nn.Conv2d(cfg["latent_channels"], rev[0], 3, padding=1)
        self.mid_block = MidBlock(rev[0], g, cfg.get("mid_block_add_attention", True))
        blocks, prev = [], rev[0]
        for i, c in enumerate(rev):
            blocks.append(UpBlock(prev, c, cfg["layers_per_block"] + 1, g, i < len(rev) - 1))
            prev = c
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = nn.GroupNorm(g, ch[0], eps=EPS)
        self.conv_out = nn.Conv2d(ch[0], cfg["out_channels"], 3, padding=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for b in self.up_blocks:
            x = b(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class VAEDecoder(nn.Module):
    """The decoding half of AutoencoderKL: decode(z) = decoder(post_quant_conv(z))."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = dict(DEFAULTS, **cfg)
        lat = self.cfg["latent_channels"]
        self.use_post_quant = self.cfg.get("use_post_quant_conv", True)
        self.post_quant_conv = nn.Conv2d(lat, lat, 1) if self.use_post_quant else None
        self.decoder = Decoder(self.cfg)

    def forward(self, z):
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


def randomize_(model, seed):
    """Random weights that keep activations O(1) through the whole decoder:
    convs and projections U(+-sqrt(3/fan_in)) (q and k twice that, so that
    attention is peaked rather than near-uniform), GroupNorm gains 1 + N(0,
    0.2^2), shifts and biases N(0, 0.1^2). Returns the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                a = math.sqrt(3.0 / p[0].numel())
                if name.endswith(("to_q.weight", "to_k.weight")):
                    a *= 2.0
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * a)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.2)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def diffusers_config(cfg):
    """config.json as diffusers writes it for an AutoencoderKL."""
    n = len(cfg["block_out_channels"])
    out = {"_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2",
           "act_fn": "silu", "down_block_types": ["DownEncoderBlock2D"] * n,
           "in_channels": 3, "sample_size": 256,
           "up_block_types": ["UpDecoderBlock2D"] * n}
    out.update({k: cfg[k] for k in ("block_out_channels", "latent_channels",
                                    "layers_per_block", "norm_num_groups",
                                    "out_channels")})
    for k in ("mid_block_add_attention", "use_post_quant_conv"):
        if k in cfg:
            out[k] = cfg[k]
    return out


def state_names(state, attn="new"):
    """state_dict names in the new (to_q ...) or old (query ...) scheme."""
    out = {}
    for name, t in state.items():
        if attn == "old" and ".attentions." in name:
            for new, old in OLD_ATTN.items():
                name = name.replace("." + new + ".", "." + old + ".")
        out[name] = t
    return out


def write_vae_dir(model, path, dtype="F32", attn="new", with_encoder=False,
                  config=None):
    """Writes path/config.json (or `config`, to write a disagreeing one) and
    path/diffusion_pytorch_model.safetensors in `dtype`. with_encoder adds a
    few encoder-side tensors, as the published files have, which decoders
    must skip."""
    os.makedirs(path, exist_ok=True)
    tensors = {}
    for name, t in state_names(model.state_dict(), attn).items():
        tensors[name] = (dtype, _encode(t.detach().float().numpy(), dtype))
    if with_encoder:
        lat = model.cfg["latent_channels"]
        rnd = np.random.default_rng(0)
        tensors["encoder.conv_in.weight"] = (dtype, _encode(rnd.standard_normal((8, 3, 3, 3)), dtype))
        tensors["quant_conv.weight"] = (dtype, _encode(rnd.standard_normal((2 * lat, 2 * lat, 1, 1)), dtype))
    write_safetensors(os.path.join(path, WEIGHTS_FILE), tensors, {"format": "pt"})
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(config if config is not None else diffusers_config(model.cfg), f, indent=2)
        f.write("\n")


def load_vae_dir(path):
    """-> VAEDecoder in eval mode with the directory's weights (either
    attention naming; encoder tensors ignored)."""
    with open(os.path.join(path, CONFIG_FILE)) as f:
        cfg = json.load(f)
    model = VAEDecoder({k: cfg[k] for k in list(DEFAULTS) + ["mid_block_add_attention",
                                                            "use_post_quant_conv"] if k in cfg})
    arrays, _, _ = read_safetensors(os.path.join(path, WEIGHTS_FILE))
    state = {}
    for name, a in arrays.items():
        if not name.startswith(("decoder.", "post_quant_conv.")):
            continue
        if ".attentions." in name:
            for new, old in OLD_ATTN.items():
                name = name.replace("." + old + ".", "." + new + ".")
        t = torch.from_numpy(a.copy())
        if t.dim() == 4 and ".attentions." in name:  # 1x1 conv form of a Linear
            t = t[:, :, 0, 0]
        state[name] = t
    model.load_state_dict(state, strict=True)
    return model.eval()


def _self_check():
    import tempfile
    cfg = dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8)
    m = randomize_(VAEDecoder(cfg), 1).eval()
    z = torch.randn(2, 4, 6, 5)
    with torch.no_grad():
        ref = m(z)
        assert ref.shape == (2, 3, 12, 10), ref.shape
        with tempfile.TemporaryDirectory() as d:
            for attn in ("new", "old"):
                write_vae_dir(m, d, "F32", attn, with_encoder=True)
                err = (load_vae_dir(d)(z) - ref).abs().max().item()
                print(f"{attn} names: round-trip max err {err:.2e}")
                assert err == 0.0
    print("ok")


def main(argv):
    if not argv:
        return _self_check()
    p = argparse.ArgumentParser(prog="vae_ref.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make")
    mk.add_argument("dir")
    mk.add_argument("--channels", default="128,256,512,512")
    mk.add_argument("--layers", type=int, default=2)
    mk.add_argument("--groups", type=int, default=32)
    mk.add_argument("--latent", type=int, default=4)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--dtype", default="F32")
    mk.add_argument("--attn", default="new", choices=("new", "old"))
    mk.add_argument("--with-encoder", action="store_true")
    dec = sub.add_parser("decode")
    dec.add_argument("dir")
    dec.add_argument("z")
    dec.add_argument("out")
    a = p.parse_args(argv)
    if a.cmd == "make":
        cfg = dict(block_out_channels=[int(c) for c in a.channels.split(",")],
                   layers_per_block=a.layers, norm_num_groups=a.groups,
                   latent_channels=a.latent)
        write_vae_dir(randomize_(VAEDecoder(cfg), a.seed), a.dir, a.dtype, a.attn,
                      a.with_encoder)
    else:
        with torch.no_grad():
            out = load_vae_dir(a.dir)(torch.from_numpy(np.load(a.z).astype(np.float32)))
        np.save(a.out, out.numpy())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
