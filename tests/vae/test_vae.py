#!/usr/bin/python3
"""test_vae.py: engine/vae.c against the PyTorch reference decoder.

Usage: test_vae.py VAE_CHECK WORKDIR parity|badfile|cli [DITMOE]

parity: random-weight decoders written as diffusers directories by
tools/ref/vae_ref.py, decoded by both; the C decoder must match within
max|ours - ref| / max|ref| <= 1e-4 on batches of 2 latents of 32x32x4 and
64x64x4, with both attention namings, F32 and F16 files, encoder tensors
present. The widths are reduced (the structure, four up blocks of three
ResNets, upsampling to x8, is sd-vae-ft-mse's) so the suite takes seconds;
one case runs the real sd-vae-ft-mse shape on a 32x32 latent, one on an
engine worker pool of 3 threads (work split into bands and channel blocks).

badfile: broken directories must be refused with an error naming the file
and the tensor or key, never a crash.

cli: `ditmoe decode` divides by the latent scale, decodes as the reference
does, writes a PNG (a grid for several latents) and refuses bad latents.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "ref"))
import vae_ref  # noqa: E402

TOL = 1e-4
SMALL = dict(block_out_channels=[32, 32, 64, 64], layers_per_block=2, norm_num_groups=8)
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def run(exe, *args):
    p = subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def parity(exe, work, name, cfg, size, n=2, dtype="F32", attn="new", seed=0, threads=1):
    """size: the latent's side, or (height, width); threads > 1: on a pool"""
    h, w = size if isinstance(size, tuple) else (size, size)
    d = os.path.join(work, name)
    model = vae_ref.randomize_(vae_ref.VAEDecoder(cfg), seed).eval()
    vae_ref.write_vae_dir(model, d, dtype, attn, with_encoder=True)
    model = vae_ref.load_vae_dir(d)  # the weights as stored (F16-rounded)
    lat = model.cfg["latent_channels"]
    z = torch.randn(n, lat, h, w, generator=torch.Generator().manual_seed(seed + 1))
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = model(z).numpy()
    t1 = time.perf_counter()
    zf, of = os.path.join(d, "z.f32"), os.path.join(d, "out.f32")
    z.numpy().astype("<f4").tofile(zf)
    rc, out = run(exe, "decode", d, n, h, w, zf, of, *([threads] if threads > 1 else []))
    t2 = time.perf_counter()
    if rc != 0:
        check(False, f"{name}: vae_check decode failed: {out.strip()}")
        return
    ours = np.fromfile(of, dtype="<f4")
    if ours.size != ref.size:
        check(False, f"{name}: {ours.size} values, expected {ref.size}")
        return
    ours = ours.reshape(ref.shape)
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    check(err <= TOL, f"{name}: {n}x{lat}x{h}x{w} -> {ref.shape[1:]}, rel err "
          f"{err:.2e} (torch {t1 - t0:.1f}s, C {t2 - t1:.1f}s)")
    shutil.rmtree(d)


def run_parity(exe, work):
    parity(exe, work, "small32-new-f32", SMALL, 32)
    parity(exe, work, "small32-old-f16", SMALL, 32, dtype="F16", attn="old", seed=3)
    parity(exe, work, "small64-old-f32", SMALL, 64, attn="old", seed=5)
    parity(exe, work, "small-pool3", SMALL, (20, 36), n=2, seed=6, threads=3)
    parity(exe, work, "odd-shape", dict(block_out_channels=[16, 24, 40], layers_per_block=1,
                                        norm_num_groups=8, latent_channels=3,
                                        out_channels=1), (5, 9), n=3, seed=7)
    parity(exe, work, "no-attn-no-pqc", dict(SMALL, mid_block_add_attention=False,
                                             use_post_quant_conv=False), 12, seed=9)
    parity(exe, work, "sd-vae-ft-mse", vae_ref.SD_VAE, 32, n=2, seed=11)


def expect_error(exe, work, name, d, *needles):
    rc, out = run(exe, "load", d)
    ok = rc == 1 and all(s in out for s in needles)
    check(ok, f"{name}: refused naming {', '.join(needles)}" + ("" if ok else f": rc {rc}: {out.strip()}"))


def edit_weights(d, fn):
    """Rewrites d's safetensors file through fn({name: (dtype, array)})."""
    path = os.path.join(d, vae_ref.WEIGHTS_FILE)
    arrays, dtypes, _ = vae_ref.read_safetensors(path)
    tensors = {k: (dtypes[k], arrays[k]) for k in arrays}
    fn(tensors)
    vae_ref.write_safetensors(path, tensors)


def edit_config(d, **kv):
    path = os.path.join(d, vae_ref.CONFIG_FILE)
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(kv)
    with open(path, "w") as f:
        json.dump(cfg, f)


def run_badfile(exe, work):
    base = os.path.join(work, "base")
    cfg = dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8)
    model = vae_ref.randomize_(vae_ref.VAEDecoder(cfg), 0)
    vae_ref.write_vae_dir(model, base, "F32")
    check(run(exe, "load", base)[0] == 0, "base directory loads")
    wf, cf = vae_ref.WEIGHTS_FILE, vae_ref.CONFIG_FILE

    def case(name):
        d = os.path.join(work, name)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(base, d)
        return d

    gone = "decoder.up_blocks.1.resnets.0.conv2.bias"
    d = case("missing-tensor")
    edit_weights(d, lambda t: t.pop(gone))
    expect_error(exe, work, "missing tensor", d, wf, gone, "missing")

    d = case("missing-attn")
    edit_weights(d, lambda t: t.pop("decoder.mid_block.attentions.0.to_q.weight"))
    expect_error(exe, work, "missing attention (both namings named)", d,
                 "to_q.weight", "query.weight")

    d = case("wrong-channels")  # config says 24 where the weights have 32
    edit_config(d, block_out_channels=[16, 24])
    expect_error(exe, work, "wrong channel count", d, wf, "has shape", "[32")

    d = case("wrong-latent")
    edit_config(d, latent_channels=8)
    expect_error(exe, work, "latent channels disagree", d, "post_quant_conv.weight", "has shape")

    d = case("extra-resnet")  # weights have 2 ResNets per block, config 1
    edit_config(d, layers_per_block=0)
    expect_error(exe, work, "config/weights disagree (extra tensor)", d, wf,
                 "resnets.1", "not part of the decoder")

    d = case("attn-off")
    edit_config(d, mid_block_add_attention=False)
    expect_error(exe, work, "attention present but switched off", d, "attentions.0",
                 "not part of the decoder")

    d = case("wrong-dtype")
    edit_weights(d, lambda t: t.update({"decoder.conv_out.bias": ("I64", np.zeros(3, "<i8"))}))
    expect_error(exe, work, "integer weights", d, "decoder.conv_out.bias", "I64")

    d = case("groups")
    edit_config(d, norm_num_groups=5)
    expect_error(exe, work, "channels not a multiple of groups", d, cf, "norm_num_groups")

    d = case("act")
    edit_config(d, act_fn="gelu")
    expect_error(exe, work, "unsupported activation", d, cf, "act_fn")

    d = case("block-type")
    edit_config(d, up_block_types=["UpDecoderBlock2D", "AttnUpDecoderBlock2D"])
    expect_error(exe, work, "unsupported up block", d, cf, "up_block_types[1]")

    d = case("bad-json")
    with open(os.path.join(d, cf), "w") as f:
        f.write('{"block_out_channels": [16, 32],}')
    expect_error(exe, work, "malformed config.json", d, cf, "JSON")

    d = case("no-config")
    os.remove(os.path.join(d, cf))
    expect_error(exe, work, "missing config.json", d, cf)

    d = case("truncated")
    with open(os.path.join(d, wf), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(d, wf)) // 2)
    expect_error(exe, work, "truncated weights", d, wf)

    d = case("no-weights")
    os.remove(os.path.join(d, wf))
    expect_error(exe, work, "missing weights file", d, wf)
    shutil.rmtree(os.path.join(work), ignore_errors=True)


def png_size(path):
    """(width, height, color type) from a PNG's IHDR."""
    with open(path, "rb") as f:
        head = f.read(26)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    w, h = struct.unpack(">II", head[16:24])
    return w, h, head[25]


def run_cli(ditmoe, work):
    d = os.path.join(work, "vae")
    model = vae_ref.randomize_(vae_ref.VAEDecoder(dict(block_out_channels=[16, 32, 32],
                                                       layers_per_block=1,
                                                       norm_num_groups=8)), 2).eval()
    vae_ref.write_vae_dir(model, d, "F16", "old")
    model = vae_ref.load_vae_dir(d)
    z = torch.randn(3, 4, 6, 7, generator=torch.Generator().manual_seed(4)) * 0.18215
    zf, png, npy = (os.path.join(work, f) for f in ("z.npy", "x.png", "rgb.npy"))
    np.save(zf, z.numpy())
    rc, out = run(ditmoe, "decode", "--vae", d, "--latents", zf, "--out", png, "--out-npy", npy)
    check(rc == 0, f"ditmoe decode runs: {out.strip()}")
    check(f"({os.cpu_count()} threads)" in out, f"ditmoe decode defaults to one thread per core")
    if rc == 0:
        with torch.no_grad():
            ref = model(z / 0.18215).numpy()
        ours = np.load(npy)
        err = np.abs(ours - ref).max() / np.abs(ref).max()
        check(ours.shape == ref.shape and err <= TOL,
              f"ditmoe decode --out-npy {ours.shape} matches z / 0.18215 decoded, rel err {err:.2e}")
        # 3 images of 28 x 24 in a 2 x 2 grid with 2-pixel gaps, RGB
        check(png_size(png) == (58, 50, 2), f"grid PNG size/type {png_size(png)}")
        rc, out = run(ditmoe, "decode", "--vae", d, "--latents", zf, "--out", png,
                      "--out-npy", npy, "--threads", "3")
        check(rc == 0 and np.abs(np.load(npy) - ours).max() <= TOL * np.abs(ref).max(),
              f"ditmoe decode --threads 3 agrees: {out.strip()}")
    np.save(zf, z[0, :3].numpy())
    rc, out = run(ditmoe, "decode", "--vae", d, "--latents", zf, "--out", png)
    check(rc == 1 and "(N, 4, h, w)" in out, f"3-channel latents refused: {out.strip()}")
    rc, out = run(ditmoe, "decode", "--vae", d, "--latents", zf)
    check(rc == 2, "missing --out is a usage error")
    shutil.rmtree(work, ignore_errors=True)


def main():
    exe, work, which = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    os.makedirs(work, exist_ok=True)
    if which == "cli":
        run_cli(sys.argv[4], work)
    else:
        {"parity": run_parity, "badfile": run_badfile}[which](exe, work)
    if failures:
        print(f"{len(failures)} failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
