#!/usr/bin/python3
"""samplers_ref.py: the project's own PyTorch version of upstream's sampling math.

It restates, in plain code of our own, what upstream feizc/DiT-MoE runs in
sample.py: the respaced Gaussian diffusion of create_diffusion(str(N))
(1000 linear betas, space_timesteps, learned-range or fixed-large variance,
clip_denoised=False, the model fed the original timestep), DDIM with eta 0
on that schedule, and RectifiedFlow.sample's Euler loop; and the engine's
own fast solvers (DPM-Solver++(2M), Heun), its guidance interval and its
step cache, restated from their documentation. Guidance is done
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
      euler|ddpm|ddim|dpm++2m|heun [--spacing uniform|logsnr] --cfg-scale G
      [--cfg-mode upstream|all]
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
        z = noise.step(k, x.shape[0], x.shape[1:])
        x = gaussian_step(s, i, x, out, z, kind, c, learn_sigma)
    return x[:n]


def gaussian_step(s, i, x, out, z, kind, c, learn_sigma):
    """One DDPM / DDIM update of x from the model output at respaced step i."""
    eps = out[:, :c]
    x0 = _at(s["recip"], i, x) * x - _at(s["recipm1"], i, x) * eps
    if kind == "ddpm":
        mean = _at(s["coef1"], i, x) * x0 + _at(s["coef2"], i, x) * x
        if learn_sigma:
            frac = (out[:, c:2 * c] + 1) / 2
            logvar = frac * _at(s["log_max"], i, x) + (1 - frac) * _at(s["log_min"], i, x)
        else:
            logvar = _at(s["log_fixed"], i, x)
        mask = 0.0 if i == 0 else 1.0
        return mean + mask * torch.exp(0.5 * logvar) * z
    e2 = (_at(s["recip"], i, x) * x - x0) / _at(s["recipm1"], i, x)
    abp = _at(s["alphas_cumprod_prev"], i, x)
    return x0 * torch.sqrt(abp) + torch.sqrt(1 - abp) * e2


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


# ---- fast solvers (dpm++2m, heun) ------------------------------------------------
#
# The engine's engine/sampling/solvers.c restated: a grid of steps + 1 points
# (model time, alpha, sigma, lambda) and the updates on it. Epsilon models
# use the discrete DDPM process made continuous as LuChengTHU/dpm-solver's
# NoiseScheduleVP('discrete') does (log alpha linear between timesteps).

def _f32(v):
    return torch.tensor(np.float32(v))


def grid(prediction, n, spacing="uniform"):
    """(time, alpha, sigma, lambda) float64 arrays of n + 1 points."""
    i = np.arange(n + 1, dtype=np.float64)
    if prediction == "velocity":
        t = (n - i) / n
        if spacing == "logsnr" and n > 2:
            lam_b = np.log(n - 1.0)
            lam = -lam_b + 2 * lam_b * (i[1:n] - 1) / (n - 2)
            t[1:n] = 1.0 / (1.0 + np.exp(lam))
        with np.errstate(divide="ignore"):
            lam = np.log(1.0 - t) - np.log(t)
        return t, 1.0 - t, t.copy(), lam
    betas = np.linspace(1e-4, 0.02, BASE_STEPS, dtype=np.float64)
    la = 0.5 * np.log(np.cumprod(1.0 - betas))
    k = np.arange(BASE_STEPS, dtype=np.float64)
    lam_of = lambda l: l - 0.5 * np.log(-np.expm1(2.0 * l))  # noqa: E731
    tau = 999.0 * (n - i) / n
    if spacing == "logsnr" and n > 1:
        hi, lo = lam_of(la[-1]), lam_of(la[0])
        target = -0.5 * np.log1p(np.exp(-2.0 * (hi + (lo - hi) * i[1:n] / n)))
        tau[1:n] = np.interp(target, la[::-1], k[::-1])
    l = np.interp(tau, k, la)
    return tau, np.exp(l), np.sqrt(-np.expm1(2.0 * l)), lam_of(l)


class Guided:
    """The model as the engine's samplers see it: guided prediction
    channels [:C] of the n images, the null rows run only when the noise
    level lies in cfg_interval; counts the rows it ran."""
    def __init__(self, model, labels, cfg_scale, cfg_mode, interval=(0.0, 1.0), cache=None):
        self.model, self.labels, self.g = model, labels, cfg_scale
        self.c = model.cfg["in_channels"]
        vel = model.cfg.get("prediction") == "velocity"
        cout = model.out_channels
        self.gch_full = self.c if vel or cfg_mode == "all" else min(3, cout)
        self.gch = min(self.c, self.gch_full)
        self.interval, self.cache, self.rows = interval, cache, 0

    def __call__(self, x, t, level, full=False):
        """The guided prediction (n, C, H, W); full: every output channel
        (n, Cout, H, W), guided ones as forward_with_cfg guides them."""
        n = x.shape[0]
        guided = self.g != 1.0 and self.interval[0] <= level <= self.interval[1]
        self.last_rows = 2 * n if guided else n
        y = self.labels
        if guided:
            x = torch.cat([x, x])
            y = torch.cat([y, torch.full_like(y, self.model.cfg["num_classes"])])
        tt = torch.full((x.shape[0],), float(np.float32(t)))
        out = self.cache(x, tt, y) if self.cache else self.model(x, tt, y)
        self.rows += x.shape[0]
        gch = self.gch_full if full else self.gch
        pred = out[:n].clone() if full else out[:n, :self.c].clone()
        if guided:
            u = out[n:, :gch]
            pred[:, :gch] = u + self.g * (out[:n, :gch] - u)
        return pred


@torch.no_grad()
def sample_gaussian_fn(fn, x, steps, kind, noise, c, learn_sigma):
    """sample_gaussian through a Guided model (guidance interval, cache):
    the same arithmetic, the noise drawn for the rows each step ran."""
    s = schedule(steps)
    count = len(s["betas"])
    for k, i in enumerate(range(count - 1, -1, -1)):
        out = fn(x, float(s["timestep_map"][i]), float(np.sqrt(1.0 - s["alphas_cumprod"][i])),
                 full=True)
        z = noise.step(k, fn.last_rows, x.shape[1:])[:x.shape[0]]
        x = gaussian_step(s, i, x, out, z, kind, c, learn_sigma)
    return x


@torch.no_grad()
def sample_euler_fn(fn, z, steps):
    """sample_euler through a Guided model."""
    dt = torch.tensor(1.0 / steps, dtype=torch.float32)
    for i in range(steps, 0, -1):
        z = z - dt * fn(z, i / steps, i / steps)
    return z


def dpm_coefs(g, i, steps):
    """x <- a x + b x0_i + c x0_{i-1} from grid point i to i + 1."""
    _, al, sg, lam = g
    if sg[i + 1] == 0.0:
        return 0.0, al[i + 1], 0.0
    h = lam[i + 1] - lam[i]
    phi = np.expm1(-h)
    a, b, c = sg[i + 1] / sg[i], -al[i + 1] * phi, 0.0
    if i >= 1 and np.isfinite(lam[i - 1]) and not (steps < 10 and i == steps - 1):
        r0 = (lam[i] - lam[i - 1]) / h
        b, c = -al[i + 1] * phi * (1.0 + 0.5 / r0), al[i + 1] * phi * 0.5 / r0
    return a, b, c


@torch.no_grad()
def sample_dpmpp_2m(fn, x, steps, prediction, spacing):
    """DPM-Solver++(2M), data prediction, as solvers.c documents."""
    g = grid(prediction, steps, spacing)
    prev = None
    for i in range(steps):
        p = fn(x, g[0][i], g[2][i])
        if prediction == "velocity":
            x0 = x - _f32(g[0][i]) * p
        else:
            x0 = _f32(1.0 / g[1][i]) * x - _f32(g[2][i] / g[1][i]) * p
        a, b, c = dpm_coefs(g, i, steps)
        x = _f32(a) * x + _f32(b) * x0 + (_f32(c) * prev if c != 0.0 else 0.0)
        prev = x0
    return x


@torch.no_grad()
def sample_heun(fn, x, steps, spacing):
    """Heun on the rectified-flow ODE; Euler into t = 0."""
    t = grid("velocity", steps, spacing)[0]
    for i in range(steps):
        dt = _f32(t[i + 1] - t[i])
        d1 = fn(x, t[i], t[i])
        if i == steps - 1:
            x = x + dt * d1
            continue
        xe = x + dt * d1
        d2 = fn(xe, t[i + 1], t[i + 1])
        x = x + _f32(0.5 * (t[i + 1] - t[i])) * (d1 + d2)
    return x


class StepCache:
    """The engine's step cache (dit_forward_cached) over the reference
    model: per row slot (conditional rows, then null rows) the blocks'
    summed residual of the last evaluation that ran them; "fixed" runs the
    blocks on every interval-th evaluation, "adaptive" when the summed
    relative L1 change of block 0's modulated input reaches threshold."""
    def __init__(self, model, mode, interval=2, threshold=0.1):
        self.m, self.mode, self.interval, self.thr = model, mode, interval, threshold
        self.resid, self.ref, self.acc, self.evals = {}, {}, {}, 0
        self.run_blocks = self.reused_blocks = 0

    def _decide(self, r, xm):
        if self.mode == "fixed":
            return self.evals % self.interval == 0 or r not in self.resid
        if r in self.ref:
            rel = (xm - self.ref[r]).abs().sum(dtype=torch.float64) / \
                self.ref[r].abs().sum(dtype=torch.float64)
            self.acc[r] = self.acc.get(r, 0.0) + float(rel)
        self.ref[r] = xm.clone()
        if r in self.resid and self.acc.get(r, 0.0) < self.thr:
            return False
        self.acc[r] = 0.0
        return True

    def __call__(self, x, t, y):
        m = self.m
        h = m.x_embedder(x) + m.pos_embed
        c = m.t_embedder(t) + m.y_embedder(y)
        sh, sc = m.blocks[0].adaLN_modulation(c).chunk(6, dim=1)[:2]
        xm = ditmoe_ref.modulate(ditmoe_ref.layer_norm(h), sh, sc)
        run = [self._decide(r, xm[r]) for r in range(x.shape[0])]
        idx = [r for r in range(x.shape[0]) if run[r]]
        if idx:
            hr, cr = h[idx], c[idx]
            h0 = hr.clone()
            for blk in m.blocks:
                hr, _ = blk(hr, cr)
            for k, r in enumerate(idx):
                self.resid[r] = hr[k] - h0[k]
        h = torch.stack([h[r] + self.resid[r] for r in range(x.shape[0])])
        depth = len(m.blocks)
        self.run_blocks += depth * len(idx)
        self.reused_blocks += depth * (x.shape[0] - len(idx))
        self.evals += 1
        return m.unpatchify(m.final_layer(h, c))


def run(model_dir, steps, sampler, cfg_scale, label, cfg_mode="upstream", rng="default",
        seed=0, noise=None, num_images=1, spacing="uniform", cfg_interval=(0.0, 1.0),
        cache=None):
    """The whole loop as the engine's generate runs it; returns (n, C, H, W).
    cache: None or ("fixed", N) / ("adaptive", T)."""
    model, cfg = ditmoe_ref.load_model_dir(model_dir)
    c, hw = cfg["in_channels"], cfg["input_size"]
    shape = (num_images if noise is None else noise.shape[0], c, hw, hw)
    gen = DefaultNoise(seed, shape[0], c * hw * hw) if rng == "default" else TorchNoise(seed)
    prediction = cfg.get("prediction", "epsilon")
    if rng == "torch" and prediction == "velocity":
        gen.initial(shape)  # sample.py's z, unused by its rf path
    x0 = gen.initial(shape)
    if noise is not None:
        x0 = torch.from_numpy(np.asarray(noise, dtype=np.float32))
    labels = torch.full((shape[0],), label, dtype=torch.long)
    plain = cache is None and tuple(cfg_interval) == (0.0, 1.0)
    if sampler == "euler" and plain:
        return sample_euler(model, x0, labels, steps, cfg_scale)
    if sampler in ("ddpm", "ddim") and plain:
        return sample_gaussian(model, x0, labels, steps, cfg_scale, cfg_mode, sampler, gen)
    sc = None
    if cache:
        sc = StepCache(model, cache[0], interval=int(cache[1])) if cache[0] == "fixed" \
            else StepCache(model, "adaptive", threshold=float(cache[1]))
    fn = Guided(model, labels, cfg_scale, cfg_mode, cfg_interval, sc)
    if sampler == "euler":
        return sample_euler_fn(fn, x0, steps)
    if sampler in ("ddpm", "ddim"):
        return sample_gaussian_fn(fn, x0, steps, sampler, gen, c, cfg["learn_sigma"])
    if sampler == "dpm++2m":
        return sample_dpmpp_2m(fn, x0, steps, prediction, spacing)
    return sample_heun(fn, x0, steps, spacing)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--noise")
    ap.add_argument("--num-images", type=int, default=1)
    ap.add_argument("--class", dest="label", type=int, default=0)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--sampler", choices=["euler", "ddpm", "ddim", "dpm++2m", "heun"],
                    required=True)
    ap.add_argument("--spacing", choices=["uniform", "logsnr"], default="uniform")
    ap.add_argument("--cfg-scale", type=float, default=1.0)
    ap.add_argument("--cfg-mode", choices=["upstream", "all"], default="upstream")
    ap.add_argument("--rng", choices=["default", "torch"], default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    noise = np.load(a.noise) if a.noise else None
    x = run(a.model, a.steps, a.sampler, a.cfg_scale, a.label, a.cfg_mode, a.rng,
            a.seed, noise, a.num_images, a.spacing)
    np.save(a.out, x.numpy().astype(np.float32))


if __name__ == "__main__":
    main()
