#!/usr/bin/python3
"""samplers_ref.py: the project's own PyTorch version of upstream's sampling math.

It restates, in plain code of our own, what upstream feizc/DiT-MoE runs in
sample.py: the respaced Gaussian diffusion of create_diffusion(str(N))
(1000 linear betas, space_timesteps, learned-range or fixed-large variance,
clip_denoised=False, the model fed the original timestep), DDIM with eta 0
on that schedule, and RectifiedFlow.sample's Euler loop. Guidance is done
as upstream does it: DDPM/DDIM through a forward_with_cfg-style wrapper
over the whole 2n batch ([x, x] with [labels, null]; eps[:, :3] guided in
"upstream" mode, eps[:, :C] in "all" mode), Euler by mixing the velocity
channels of the conditional and null rows.

Coefficients are float64 numpy arrays, rounded to float32 when indexed, as
upstream's _extract_into_tensor does; the update arithmetic is float32.

Noise: `--rng default` re-implements the engine's counter-based generator
(engine/rng_default.c documents the construction) so a DDPM run can be
compared with the C engine step for step; `--rng torch` draws with
torch.manual_seed(seed) in upstream sample.py's order.

Usage (writes the final samples (n, C, H, W) as float32 .npy):
  samplers_ref.py --model DIR --noise Z.npy --class N --steps K --sampler
      euler|ddpm|ddim --cfg-scale G [--cfg-mode upstream|all]
      [--rng default|torch --seed S] --out X.npy
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ditmoe_ref  # noqa: E402

BASE_STEPS = 1000


# ---- schedules -------------------------------------------------------------------

def respace(n, base=BASE_STEPS):
    """space_timesteps(base, [n]): n evenly strided original steps, rounded
    half-to-even as Python's round(); sorted list."""
    if not 1 <= n <= base:
        raise ValueError(f"steps must be in 1..{base}, not {n}")
    stride = 1.0 if n <= 1 else (base - 1) / (n - 1)
    kept, cur = set(), 0.0
    for _ in range(n):
        kept.add(round(cur))
        cur += stride
    return sorted(kept)


def schedule(n):
    """The respaced schedule's float64 arrays, indexed by respaced step."""
    betas = np.linspace(1e-4, 0.02, BASE_STEPS, dtype=np.float64)
    ac_base = np.cumprod(1.0 - betas)
    tmap = respace(n)
    new_betas, prev = [], 1.0
    for i in tmap:
        new_betas.append(1.0 - ac_base[i] / prev)
        prev = ac_base[i]
    b = np.array(new_betas, dtype=np.float64)
    ac = np.cumprod(1.0 - b)
    ac_prev = np.append(1.0, ac[:-1])
    pv = b * (1.0 - ac_prev) / (1.0 - ac)
    s = {
        "timestep_map": np.array(tmap),
        "betas": b,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "recip": np.sqrt(1.0 / ac),
        "recipm1": np.sqrt(1.0 / ac - 1.0),
        "coef1": b * np.sqrt(ac_prev) / (1.0 - ac),
        "coef2": (1.0 - ac_prev) * np.sqrt(1.0 - b) / (1.0 - ac),
        "log_max": np.log(b),
    }
    if len(b) > 1:
        s["log_min"] = np.log(np.append(pv[1], pv[1:]))
        s["log_fixed"] = np.log(np.append(pv[1], b[1:]))
    else:  # upstream cannot index pv[1]; the single step adds no noise anyway
        s["log_min"] = s["log_fixed"] = np.zeros(1)
    return s


def _at(arr, i, like):
    """arr[i] as a float32 tensor broadcast like `like`."""
    return torch.full_like(like, float(np.float32(arr[i])))


# ---- the engine's default generator ----------------------------------------------

_M64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


def _mix(z):
    """splitmix64 finaliser of z + gamma on uint64 numpy arrays (wrapping)."""
    z = (z + np.uint64(_GAMMA)) & np.uint64(_M64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def rng_default_randn(seed, stream, start, count):
    """Values start..start+count of stream `stream` of `seed`, float32."""
    with np.errstate(over="ignore"):
        key = _mix(np.array([seed], dtype=np.uint64) ^ _mix(np.array([stream], dtype=np.uint64)))
        first, last = start // 2, (start + count + 1) // 2
        p = np.arange(first, last, dtype=np.uint64)
        b1 = _mix(key + (np.uint64(2) * p) * np.uint64(_GAMMA))
        b2 = _mix(key + (np.uint64(2) * p + np.uint64(1)) * np.uint64(_GAMMA))
    u1 = ((b1 >> np.uint64(11)) + np.uint64(1)).astype(np.float64) * 2.0 ** -53
    u2 = (b2 >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    r = np.sqrt(-2.0 * np.log(u1))
    a = 2.0 * np.pi * u2
    pairs = np.stack([r * np.cos(a), r * np.sin(a)], axis=1).reshape(-1)
    off = start - 2 * first
    return pairs[off:off + count].astype(np.float32)


class DefaultNoise:
    """The engine's DEFAULT draws: image i is stream i; its initial noise is
    values 0..CHW, the noise of DDPM step k (k = 0 first) the next CHW."""
    def __init__(self, seed, n, chw):
        self.seed, self.n, self.chw = seed, n, chw

    def initial(self, shape):
        return torch.from_numpy(np.stack([rng_default_randn(self.seed, i, 0, self.chw)
                                          for i in range(self.n)])).reshape(shape)

    def step(self, k, rows, shape_one):
        img = [rng_default_randn(self.seed, i, (k + 1) * self.chw, self.chw)
               for i in range(self.n)]
        z = np.zeros((rows, self.chw), dtype=np.float32)  # null rows: unused
        z[:self.n] = np.stack(img)
        return torch.from_numpy(z).reshape(rows, *shape_one)


class TorchNoise:
    """torch.manual_seed(seed), then upstream sample.py's draws."""
    def __init__(self, seed):
        torch.manual_seed(seed)

    def initial(self, shape):
        return torch.randn(*shape)

    def step(self, k, rows, shape_one):
        return torch.randn(rows, *shape_one)


# ---- samplers ----------------------------------------------------------------------

def cfg_model(model, c, scale, mode):
    """A forward_with_cfg-style wrapper over the 2n batch: the first half of
    x is fed twice; channels [:3] (upstream) or [:C] (all) are guided and
    copied to both halves, the rest come from each half's own rows."""
    def fn(x, t, y):
        half = x[: len(x) // 2]
        out = model(torch.cat([half, half]), t, y)
        g = 3 if mode == "upstream" else c
        eps, rest = out[:, :g], out[:, g:]
        ce, ue = torch.split(eps, len(eps) // 2, dim=0)
        he = ue + scale * (ce - ue)
        return torch.cat([torch.cat([he, he]), rest], dim=1)
    return fn


@torch.no_grad()
def sample_gaussian(model, x, labels, steps, cfg_scale, cfg_mode, kind, noise):
    """DDPM (kind "ddpm") or DDIM eta 0 (kind "ddim"); x (n, C, H, W) is the
    initial noise. Returns the final samples (n, C, H, W)."""
    cfgd = model.cfg
    c, learn_sigma = cfgd["in_channels"], cfgd["learn_sigma"]
    s = schedule(steps)
    n = x.shape[0]
    guided = cfg_scale != 1.0
    if guided:
        null = torch.full_like(labels, cfgd["num_classes"])
        x, y, fn = torch.cat([x, x]), torch.cat([labels, null]), \
            cfg_model(model, c, cfg_scale, cfg_mode)
    else:
        y, fn = labels, model
    count = len(s["betas"])
    for k, i in enumerate(range(count - 1, -1, -1)):
        t = torch.full((x.shape[0],), float(s["timestep_map"][i]))
        out = fn(x, t, y)
        eps = out[:, :c]
        x0 = _at(s["recip"], i, x) * x - _at(s["recipm1"], i, x) * eps
        z = noise.step(k, x.shape[0], x.shape[1:])
        if kind == "ddpm":
            mean = _at(s["coef1"], i, x) * x0 + _at(s["coef2"], i, x) * x
            if learn_sigma:
                frac = (out[:, c:2 * c] + 1) / 2
                logvar = frac * _at(s["log_max"], i, x) + (1 - frac) * _at(s["log_min"], i, x)
            else:
                logvar = _at(s["log_fixed"], i, x)
            mask = 0.0 if i == 0 else 1.0
            x = mean + mask * torch.exp(0.5 * logvar) * z
        else:
            e2 = (_at(s["recip"], i, x) * x - x0) / _at(s["recipm1"], i, x)
            abp = _at(s["alphas_cumprod_prev"], i, x)
            x = x0 * torch.sqrt(abp) + torch.sqrt(1 - abp) * e2
    return x[:n]


@torch.no_grad()
def sample_euler(model, z, labels, steps, cfg_scale):
    """RectifiedFlow.sample: t = i/N for i = N..1, z <- z - v/N, with the
    conditional and null models run as one batch when guided."""
    c = model.cfg["in_channels"]
    n = z.shape[0]
    null = torch.full_like(labels, model.cfg["num_classes"])
    dt = torch.tensor(1.0 / steps, dtype=torch.float32)
    for i in range(steps, 0, -1):
        t = torch.full((n,), i / steps, dtype=torch.float32)
        if cfg_scale != 1.0:
            out = model(torch.cat([z, z]), torch.cat([t, t]), torch.cat([labels, null]))
            vc, vu = out[:n, :c], out[n:, :c]
            v = vu + cfg_scale * (vc - vu)
        else:
            v = model(z, t, labels)[:, :c]
        z = z - dt * v
    return z


def run(model_dir, steps, sampler, cfg_scale, label, cfg_mode="upstream", rng="default",
        seed=0, noise=None, num_images=1):
    """The whole loop as the engine's generate runs it; returns (n, C, H, W)."""
    model, cfg = ditmoe_ref.load_model_dir(model_dir)
    c, hw = cfg["in_channels"], cfg["input_size"]
    shape = (num_images if noise is None else noise.shape[0], c, hw, hw)
    gen = DefaultNoise(seed, shape[0], c * hw * hw) if rng == "default" else TorchNoise(seed)
    if rng == "torch" and sampler == "euler":
        gen.initial(shape)  # sample.py's z, unused by its rf path
    x0 = gen.initial(shape)
    if noise is not None:
        x0 = torch.from_numpy(np.asarray(noise, dtype=np.float32))
    labels = torch.full((shape[0],), label, dtype=torch.long)
    if sampler == "euler":
        return sample_euler(model, x0, labels, steps, cfg_scale)
    return sample_gaussian(model, x0, labels, steps, cfg_scale, cfg_mode, sampler, gen)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--noise")
    ap.add_argument("--num-images", type=int, default=1)
    ap.add_argument("--class", dest="label", type=int, default=0)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--sampler", choices=["euler", "ddpm", "ddim"], required=True)
    ap.add_argument("--cfg-scale", type=float, default=1.0)
    ap.add_argument("--cfg-mode", choices=["upstream", "all"], default="upstream")
    ap.add_argument("--rng", choices=["default", "torch"], default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    noise = np.load(a.noise) if a.noise else None
    x = run(a.model, a.steps, a.sampler, a.cfg_scale, a.label, a.cfg_mode, a.rng,
            a.seed, noise, a.num_images)
    np.save(a.out, x.numpy().astype(np.float32))


if __name__ == "__main__":
    main()
