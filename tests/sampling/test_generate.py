#!/usr/bin/python3
"""test_generate.py: `ditmoe generate` against the PyTorch reference loops.

Usage: test_generate.py DITMOE CASE [TEST_BATCH]

Small random-weight models (tools/ref/ditmoe_ref.py) are written to a
scratch directory; the engine's final samples (--out-npy) are compared
with tools/ref/samplers_ref.py, which was checked to equal upstream's
diffusion code bit for bit on the same model function.

Noise: the initial noise is fixed (--noise) in most runs. DDPM also draws
noise every step; the reference reproduces the engine's DEFAULT generator
from its documented construction (samplers_ref.rng_default_randn), so both
loops add the same per-step noise and the whole stochastic trajectory is
compared, not just the deterministic mean. Runs without --noise check the
initial draws too. The `torch` case compares --rng torch with
torch.manual_seed + torch.randn in upstream sample.py's order.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "ref"))
torch = ditmoe_ref = samplers_ref = None  # imported by main() for the cases that compare

BASE = dict(input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2, mlp_ratio=2.0,
            num_classes=5, num_experts=4, num_experts_per_tok=2, n_shared_experts=1,
            class_dropout_prob=0.1)
MODELS = {
    "flow": dict(in_channels=4, learn_sigma=True, prediction="velocity"),
    "eps_sigma": dict(in_channels=4, learn_sigma=True, prediction="epsilon"),
    "eps_fixed": dict(in_channels=3, learn_sigma=False, prediction="epsilon"),
    "eps_gray": dict(in_channels=1, learn_sigma=True, prediction="epsilon"),
    "no_null": dict(in_channels=4, learn_sigma=True, prediction="velocity",
                    class_dropout_prob=0.0),
}
TOL = 2e-4  # relative to the sample's largest magnitude (float32 engine vs torch)
TOL_SOLVER = 1e-4  # the fast solvers, interval and cache cases (issue 14)

failures = []


def make_model(tmp, name, seed=1):
    """The model NAME of MODELS: by the PyTorch reference writer when the
    case compares with it, else by `ditmoe synth` (no PyTorch needed)."""
    path = os.path.join(tmp, name)
    if not os.path.isdir(path):
        cfg = dict(BASE, **MODELS[name])
        if torch is None:
            os.makedirs(path)
            with open(os.path.join(path, "wanted.json"), "w") as f:
                json.dump(cfg, f)
            subprocess.run([sys.argv[1], "synth", "--config", os.path.join(path, "wanted.json"),
                            "--out", path, "--seed", str(seed)], check=True,
                           stdout=subprocess.DEVNULL)
        else:
            torch.manual_seed(0)
            model = ditmoe_ref.randomize_(ditmoe_ref.DiTMoE(cfg), seed).eval()
            ditmoe_ref.write_model_dir(model, cfg, path)
    return path


def noise_file(tmp, c, n, seed):
    path = os.path.join(tmp, f"noise_{c}_{n}_{seed}.npy")
    np.save(path, np.random.default_rng(seed).standard_normal((n, c, 8, 8)).astype(np.float32))
    return path


def engine(ditmoe, tmp, model, args):
    out = os.path.join(tmp, "out.npy")
    if os.path.exists(out):
        os.remove(out)
    cmd = [ditmoe, "generate", "--model", model, "--out-npy", out] + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr}")
    return np.load(out)


def compare(what, got, want, tol=TOL):
    want = np.asarray(want, dtype=np.float32)
    err = float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max()))
    ok = got.shape == want.shape and np.isfinite(got).all() and err <= tol
    print(f"{'ok  ' if ok else 'FAIL'} {what}: rel err {err:.2e}, |x| max {np.abs(want).max():.3g}")
    if not ok:
        failures.append(what)


def check_run(ditmoe, tmp, name, sampler, steps, cfg, mode="upstream", label=1, n=1,
              noise_seed=5, rng="default", seed=0, spacing=None, interval=None, cache=None,
              tol=TOL):
    """One engine run against the reference from the same noise. interval:
    (lo, hi); cache: ("fixed", N) or ("adaptive", T)."""
    model = make_model(tmp, name)
    c = MODELS[name]["in_channels"]
    args = ["--sampler", sampler, "--steps", steps, "--cfg-scale", cfg, "--cfg-mode", mode,
            "--class", label, "--seed", seed, "--rng", rng, "--num-images", n]
    if spacing:
        args += ["--spacing", spacing]
    if interval:
        args += ["--cfg-interval", f"{interval[0]},{interval[1]}"]
    if cache:
        args += ["--cache", f"{cache[0]}:{cache[1]}"]
    noise = None
    if noise_seed is not None:
        path = noise_file(tmp, c, n, noise_seed)
        args += ["--noise", path]
        noise = np.load(path)
    got = engine(ditmoe, tmp, model, args)
    want = samplers_ref.run(model, steps, sampler, cfg, label, mode, rng, seed, noise, n,
                            spacing or "uniform", interval or (0.0, 1.0), cache)
    extra = "".join(f" {k}={v}" for k, v in (("spacing", spacing), ("interval", interval),
                                             ("cache", cache)) if v)
    compare(f"{name} {sampler} steps={steps} cfg={cfg} {mode} n={n} rng={rng} "
            f"noise={'given' if noise is not None else 'drawn'}{extra}", got, want.numpy(), tol)
    return got


def case_euler(ditmoe, tmp):
    check_run(ditmoe, tmp, "flow", "euler", 8, 1.0)
    a = check_run(ditmoe, tmp, "flow", "euler", 8, 4.0, "upstream")
    b = check_run(ditmoe, tmp, "flow", "euler", 8, 4.0, "all")
    if not np.array_equal(a, b):  # rectified flow guides every velocity channel
        failures.append("euler: cfg-mode changed the result")
    check_run(ditmoe, tmp, "flow", "euler", 5, 2.5, n=3)
    check_run(ditmoe, tmp, "flow", "euler", 4, 4.0, label=5)  # the null class itself
    check_run(ditmoe, tmp, "flow", "euler", 6, 4.0, noise_seed=None, seed=42)
    check_run(ditmoe, tmp, "flow", "euler", 1, 0.0)


def case_ddpm_sigma(ditmoe, tmp):
    check_run(ditmoe, tmp, "eps_sigma", "ddpm", 6, 1.0)
    a = check_run(ditmoe, tmp, "eps_sigma", "ddpm", 6, 4.0, "upstream")
    b = check_run(ditmoe, tmp, "eps_sigma", "ddpm", 6, 4.0, "all")
    if np.allclose(a, b):  # channel 3 is guided only in "all" mode
        failures.append("ddpm: cfg-mode upstream and all agree on 4 channels")
    check_run(ditmoe, tmp, "eps_sigma", "ddpm", 10, 4.0, n=2, noise_seed=None, seed=7)
    check_run(ditmoe, tmp, "eps_sigma", "ddpm", 1, 4.0)  # one step: no noise at all


def case_ddpm_fixed(ditmoe, tmp):
    check_run(ditmoe, tmp, "eps_fixed", "ddpm", 6, 1.0)
    check_run(ditmoe, tmp, "eps_fixed", "ddpm", 6, 4.0, "upstream")
    check_run(ditmoe, tmp, "eps_fixed", "ddpm", 6, 4.0, "all", noise_seed=None, seed=3)
    # with 1 channel + learned sigma, upstream's eps[:, :3] guides the variance too
    a = check_run(ditmoe, tmp, "eps_gray", "ddpm", 6, 4.0, "upstream")
    b = check_run(ditmoe, tmp, "eps_gray", "ddpm", 6, 4.0, "all")
    if np.allclose(a, b):
        failures.append("ddpm 1 channel: cfg-mode upstream and all agree")


def case_ddim(ditmoe, tmp):
    check_run(ditmoe, tmp, "eps_sigma", "ddim", 6, 1.0)
    check_run(ditmoe, tmp, "eps_sigma", "ddim", 6, 4.0, "upstream")
    check_run(ditmoe, tmp, "eps_sigma", "ddim", 6, 4.0, "all", n=2)
    check_run(ditmoe, tmp, "eps_fixed", "ddim", 12, 3.0, noise_seed=None, seed=11)


def case_dpmpp(ditmoe, tmp):
    """dpm++2m on epsilon (learned sigma and fixed) and velocity models, both
    spacings, short runs (first-order last step) and longer ones."""
    t = TOL_SOLVER
    for sp in ("uniform", "logsnr"):
        check_run(ditmoe, tmp, "eps_sigma", "dpm++2m", 6, 1.0, spacing=sp, tol=t)
        check_run(ditmoe, tmp, "eps_sigma", "dpm++2m", 12, 4.0, spacing=sp, n=2, tol=t)
        check_run(ditmoe, tmp, "flow", "dpm++2m", 6, 4.0, spacing=sp, tol=t)
        check_run(ditmoe, tmp, "flow", "dpm++2m", 11, 1.0, spacing=sp, n=2, tol=t)
    check_run(ditmoe, tmp, "eps_fixed", "dpm++2m", 8, 3.0, "all", tol=t)
    check_run(ditmoe, tmp, "eps_gray", "dpm++2m", 5, 3.0, tol=t)
    check_run(ditmoe, tmp, "eps_sigma", "dpm++2m", 1, 4.0, tol=t)
    check_run(ditmoe, tmp, "flow", "dpm++2m", 2, 4.0, noise_seed=None, seed=3, tol=t)
    check_run(ditmoe, tmp, "flow", "dpm++2m", 5, 2.0, noise_seed=None, rng="torch", seed=4,
              tol=t)
    # on the flow model, one step of dpm++2m's first order is upstream's Euler
    a = check_run(ditmoe, tmp, "flow", "dpm++2m", 1, 4.0, tol=t)
    b = check_run(ditmoe, tmp, "flow", "euler", 1, 4.0, tol=t)
    if float(np.abs(a - b).max()) > 1e-5:
        failures.append("dpm++2m 1 step != euler 1 step on the flow model")


def case_heun(ditmoe, tmp):
    t = TOL_SOLVER
    check_run(ditmoe, tmp, "flow", "heun", 5, 1.0, tol=t)
    check_run(ditmoe, tmp, "flow", "heun", 4, 4.0, n=2, tol=t)
    check_run(ditmoe, tmp, "flow", "heun", 6, 3.0, spacing="logsnr", tol=t)
    check_run(ditmoe, tmp, "flow", "heun", 1, 3.0, tol=t)
    check_run(ditmoe, tmp, "flow", "heun", 3, 3.0, noise_seed=None, rng="torch", seed=8, tol=t)


def case_interval(ditmoe, tmp):
    """Guidance only inside [lo, hi]: every solver, and an interval that
    excludes everything equals the unguided run."""
    t = TOL_SOLVER
    check_run(ditmoe, tmp, "flow", "euler", 8, 4.0, interval=(0.2, 0.7), tol=t)
    check_run(ditmoe, tmp, "flow", "heun", 5, 4.0, interval=(0.3, 0.9), n=2, tol=t)
    check_run(ditmoe, tmp, "flow", "dpm++2m", 8, 4.0, interval=(0.0, 0.5), tol=t)
    check_run(ditmoe, tmp, "eps_sigma", "dpm++2m", 10, 4.0, interval=(0.1, 0.8), tol=t)
    check_run(ditmoe, tmp, "eps_sigma", "ddpm", 6, 4.0, interval=(0.0, 0.7), tol=t)
    check_run(ditmoe, tmp, "eps_sigma", "ddpm", 6, 4.0, interval=(0.3, 1.0), rng="torch",
              noise_seed=None, seed=12, tol=t)
    check_run(ditmoe, tmp, "eps_sigma", "ddim", 6, 4.0, interval=(0.0, 0.6), tol=t)
    a = check_run(ditmoe, tmp, "flow", "euler", 6, 4.0, interval=(0.0, 0.1), tol=t)
    b = check_run(ditmoe, tmp, "flow", "euler", 6, 1.0, tol=t)
    if not np.array_equal(a, b):  # no level of 6 euler steps is <= 0.1
        failures.append("an interval outside every step is not the unguided run")


def cache_stats(ditmoe, tmp, name, args):
    """(blocks run, blocks reused) of an engine run, from --stats."""
    cmd = [ditmoe, "generate", "--model", make_model(tmp, name), "--out-npy",
           os.path.join(tmp, "s.npy"), "--stats"] + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    for line in r.stderr.splitlines():
        if line.startswith("stats: "):
            f = line.split()
            return int(f[6]), int(f[8])
    raise AssertionError(f"{' '.join(cmd)}: no stats line: {r.stderr}")


def case_cache(ditmoe, tmp):
    """Step caching against the reference's cached forward: fixed and
    adaptive, with guidance (null rows have their own caches) and without."""
    t = TOL_SOLVER
    a = check_run(ditmoe, tmp, "flow", "euler", 8, 1.0, cache=("fixed", 2), tol=t)
    b = check_run(ditmoe, tmp, "flow", "euler", 8, 1.0, tol=t)
    if np.allclose(a, b, atol=1e-6):
        failures.append("fixed:2 caching changed nothing")
    check_run(ditmoe, tmp, "flow", "dpm++2m", 9, 4.0, cache=("fixed", 3), n=2, tol=t)
    check_run(ditmoe, tmp, "flow", "heun", 5, 4.0, cache=("adaptive", 0.3), tol=t)
    check_run(ditmoe, tmp, "eps_sigma", "ddpm", 8, 4.0, cache=("adaptive", 0.2), tol=t)
    check_run(ditmoe, tmp, "flow", "euler", 10, 4.0, cache=("fixed", 2),
              interval=(0.2, 0.8), tol=t)
    # the cases above reuse blocks (depth 2): counted as the cache documents
    want = {("flow", "euler", 8, 1.0, "fixed:2"): (8, 8),         # 4 of 8 evaluations run
            ("flow", "dpm++2m", 9, 4.0, "fixed:3"): (24, 48),     # 3 of 9, 4 rows each
            ("flow", "euler", 8, 1.0, "off"): (16, 0)}
    for (name, smp, steps, cfg, cache), (run, reused) in want.items():
        n = 2 if smp == "dpm++2m" else 1
        got = cache_stats(ditmoe, tmp, name, ["--sampler", smp, "--steps", steps, "--cfg-scale",
                                              cfg, "--cache", cache, "--num-images", n])
        ok = got == (run, reused)
        print(f"{'ok  ' if ok else 'FAIL'} {smp} {cache}: blocks run/reused {got}, "
              f"want {(run, reused)}")
        if not ok:
            failures.append(f"cache stats {smp} {cache}")
    run, reused = cache_stats(ditmoe, tmp, "flow", ["--sampler", "heun", "--steps", 5,
                                                    "--cfg-scale", 4, "--cache", "adaptive:0.3"])
    print(f"{'ok  ' if reused > 0 and run > 0 else 'FAIL'} heun adaptive:0.3 reuses "
          f"{reused} of {run + reused} block computations")
    if not (reused > 0 and run > 0 and (run + reused) == 2 * 2 * 9):
        failures.append("adaptive cache reused nothing (or miscounted)")


def case_torch(ditmoe, tmp):
    """--rng torch: initial and per-step draws as upstream sample.py."""
    check_run(ditmoe, tmp, "eps_sigma", "ddpm", 6, 4.0, noise_seed=None, rng="torch", seed=2024)
    check_run(ditmoe, tmp, "eps_sigma", "ddpm", 6, 1.0, n=2, noise_seed=None, rng="torch",
              seed=1)
    check_run(ditmoe, tmp, "eps_sigma", "ddim", 6, 4.0, noise_seed=None, rng="torch", seed=3)
    check_run(ditmoe, tmp, "flow", "euler", 6, 4.0, n=2, noise_seed=None, rng="torch", seed=4)
    # --noise replaces the initial draw but the generator still skips past it
    check_run(ditmoe, tmp, "eps_sigma", "ddpm", 6, 4.0, rng="torch", seed=2024)


def expect_error(ditmoe, tmp, what, model, args, needle):
    cmd = [ditmoe, "generate", "--model", model, "--out-npy", os.path.join(tmp, "x.npy")]
    r = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True)
    ok = (r.returncode != 0 and r.stderr.startswith("ditmoe: ") and needle in r.stderr
          and "Assertion" not in r.stderr)
    print(f"{'ok  ' if ok else 'FAIL'} refuses {what}: {r.stderr.strip()}")
    if not ok:
        failures.append(f"refuses {what}")


def case_refusals(ditmoe, tmp):
    flow, eps = make_model(tmp, "flow"), make_model(tmp, "eps_sigma")
    no_null = make_model(tmp, "no_null")
    expect_error(ditmoe, tmp, "ddpm on a velocity model", flow, ["--sampler", "ddpm"], "euler")
    expect_error(ditmoe, tmp, "ddim on a velocity model", flow, ["--sampler", "ddim"], "euler")
    expect_error(ditmoe, tmp, "euler on an epsilon model", eps, ["--sampler", "euler"], "ddpm")
    expect_error(ditmoe, tmp, "cfg without a null class", no_null, ["--cfg-scale", "4"],
                 "null")
    expect_error(ditmoe, tmp, "the null class without one", no_null,
                 ["--cfg-scale", "1", "--class", "5"], "class_label")
    expect_error(ditmoe, tmp, "steps 0", flow, ["--steps", "0"], "steps")
    expect_error(ditmoe, tmp, "steps 1001", eps, ["--steps", "1001"], "1..1000")
    expect_error(ditmoe, tmp, "class 6", flow, ["--class", "6"], "class")
    expect_error(ditmoe, tmp, "an unknown class name", flow, ["--class", "zebra"], "zebra")
    expect_error(ditmoe, tmp, "cfg-scale nan", flow, ["--cfg-scale", "nan"], "cfg-scale")
    expect_error(ditmoe, tmp, "cfg-scale 51", flow, ["--cfg-scale", "51"], "0..50")
    expect_error(ditmoe, tmp, "num-images 65", flow, ["--num-images", "65"], "num-images")
    expect_error(ditmoe, tmp, "an unknown sampler", flow, ["--sampler", "dpm++9m"], "dpm++9m")
    expect_error(ditmoe, tmp, "heun on an epsilon model", eps, ["--sampler", "heun"],
                 "prediction")
    expect_error(ditmoe, tmp, "a spacing for ddpm", eps, ["--sampler", "ddpm", "--spacing",
                                                         "logsnr"], "spacing")
    expect_error(ditmoe, tmp, "an unknown spacing", flow, ["--spacing", "cosine"], "spacing")
    expect_error(ditmoe, tmp, "cfg-interval reversed", flow, ["--cfg-interval", "0.8,0.2"],
                 "cfg-interval")
    expect_error(ditmoe, tmp, "cfg-interval above 1", flow, ["--cfg-interval", "0,1.5"],
                 "cfg-interval")
    expect_error(ditmoe, tmp, "cache fixed:1", flow, ["--cache", "fixed:1"], "cache")
    expect_error(ditmoe, tmp, "an unknown cache", flow, ["--cache", "sometimes"], "cache")
    expect_error(ditmoe, tmp, "an unknown cfg-mode", flow, ["--cfg-mode", "some"], "cfg-mode")
    expect_error(ditmoe, tmp, "noise of the wrong shape", flow,
                 ["--noise", noise_file(tmp, 3, 1, 0)], "noise")
    expect_error(ditmoe, tmp, "noise for the wrong image count", flow,
                 ["--noise", noise_file(tmp, 4, 2, 0), "--num-images", "3"], "3")
    expect_error(ditmoe, tmp, "a missing model", os.path.join(tmp, "nope"), [], "nope")


def with_sampling(tmp, src, name, sampling):
    """A copy of model directory src whose config.json says `sampling`."""
    import shutil
    path = os.path.join(tmp, name)
    shutil.copytree(src, path)
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg["sampling"] = sampling
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return path


def same_run(ditmoe, tmp, what, a_model, a_args, b_model, b_args):
    """Two runs from the same noise give the same samples, bit for bit."""
    noise = ["--noise", noise_file(tmp, 4, 1, 3)]
    a = engine(ditmoe, tmp, a_model, noise + a_args)
    b = engine(ditmoe, tmp, b_model, noise + b_args)
    good = np.array_equal(a, b)
    print(f"{'ok  ' if good else 'FAIL'} {what}")
    if not good:
        failures.append(what)
    return a


def case_config(ditmoe, tmp):
    """config.json "sampling" may name any sampler of the table that fits
    the model, and every option a request sets (spacing, cfg_interval,
    cache): generate without options runs them; a sampler other than the
    model's gets its own spacing (uniform), the interval and cache stay.
    A wrong sampler, spacing, interval or cache refuses to load, naming the
    field."""
    eps = make_model(tmp, "eps_sigma")
    path = with_sampling(tmp, eps, "dflt_dpm", {"sampler": "dpm++2m", "steps": 7,
                                               "cfg_scale": 2.0})
    same_run(ditmoe, tmp, "config default dpm++2m runs it", path, [], eps,
             ["--sampler", "dpm++2m", "--steps", 7, "--cfg-scale", 2.0])
    full = {"sampler": "dpm++2m", "steps": 7, "cfg_scale": 2.0, "spacing": "logsnr",
            "cfg_interval": [0.2, 0.65], "cache": {"mode": "fixed", "interval": 3}}
    explicit = ["--steps", 7, "--cfg-scale", 2.0, "--cfg-interval", "0.2,0.65", "--cache",
                "fixed:3"]
    path = with_sampling(tmp, eps, "dflt_full", full)
    a = same_run(ditmoe, tmp, "config spacing, interval and cache: left out = set", path, [],
                 eps, explicit + ["--sampler", "dpm++2m", "--spacing", "logsnr"])
    same_run(ditmoe, tmp, "config: the model's sampler named keeps its spacing", path,
             ["--sampler", "dpm++"], path, [])
    b = same_run(ditmoe, tmp, "config: another sampler gets its own spacing", path,
                 ["--sampler", "ddim"], eps, explicit + ["--sampler", "ddim"])
    c = same_run(ditmoe, tmp, "config: a spacing given overrides the model's", path,
                 ["--spacing", "uniform"], eps, explicit + ["--sampler", "dpm++2m"])
    if np.array_equal(a, c) or np.array_equal(a, b):
        failures.append("config: spacing and sampler change the samples")
    for name, sampling, needle in (
            ("dflt_heun", {"sampler": "heun"}, "sampling.sampler"),
            ("dflt_bad", {"sampler": "dpm++9m"}, "sampling.sampler"),
            ("dflt_ddim_logsnr", {"sampler": "ddim", "spacing": "logsnr"}, "sampling.spacing"),
            ("dflt_iv", {"cfg_interval": [0.7, 0.2]}, "sampling.cfg_interval"),
            ("dflt_cache", {"cache": {"mode": "fixed", "interval": 1}},
             "sampling.cache.interval"),
            ("dflt_key", {"cfg_intervall": [0, 1]}, "sampling.cfg_intervall")):
        expect_error(ditmoe, tmp, f"config {sampling}", with_sampling(tmp, eps, name, sampling),
                     [], needle)


def run_forward(ditmoe, tmp, model, x, t, y):
    paths = [os.path.join(tmp, f"{k}.npy") for k in ("fx", "ft", "fy", "fout")]
    for path, arr in zip(paths, (x, t, y)):
        np.save(path, arr)
    if os.path.exists(paths[3]):
        os.remove(paths[3])
    cmd = [ditmoe, "forward", "--model", model, "--x", paths[0], "--t", paths[1],
           "--y", paths[2], "--out", paths[3]]
    return subprocess.run(cmd, capture_output=True, text=True), paths[3]


def case_forward(ditmoe, tmp):
    """`ditmoe forward` on .npy inputs against the reference model, and its
    shape checks."""
    model = make_model(tmp, "eps_sigma")
    ref, _ = ditmoe_ref.load_model_dir(model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    t = np.array([0, 500, 999], dtype=np.float32)
    for ydt in (np.int64, np.int32):
        y = np.array([0, 4, 5], dtype=ydt)
        r, out = run_forward(ditmoe, tmp, model, x, t, y)
        if r.returncode != 0:
            failures.append(f"forward y {ydt.__name__}: {r.stderr}")
            continue
        with torch.no_grad():
            want = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y).long())
        compare(f"forward y {ydt.__name__}", np.load(out), want.numpy())
    bad = [("x of 3 channels", x[:, :3], t, np.zeros(3, np.int64), "x must be"),
           ("t of the wrong length", x, t[:2], np.zeros(3, np.int64), "t must be"),
           ("float labels", x, t, np.zeros(3, np.float32), ""),
           ("label 6", x, t, np.array([0, 6, 1]), "y[1] = 6")]
    for what, bx, bt, by, needle in bad:
        r, _ = run_forward(ditmoe, tmp, model, bx, bt, by)
        ok = r.returncode != 0 and r.stderr.startswith("ditmoe: ") and needle in r.stderr
        print(f"{'ok  ' if ok else 'FAIL'} forward refuses {what}: {r.stderr.strip()}")
        if not ok:
            failures.append(f"forward refuses {what}")


def case_batch(ditmoe, tmp):
    """Runs the C test of dit_generate batching (test_batch.c) on a model."""
    r = subprocess.run([sys.argv[3], make_model(tmp, "flow")], capture_output=True, text=True)
    print(r.stdout + r.stderr, end="")
    if r.returncode != 0:
        failures.append("test_batch")


# cases that need no PyTorch (their models come from `ditmoe synth`)
NO_TORCH = {"batch", "refusals", "config"}
CASES = {"forward": case_forward, "batch": case_batch, "euler": case_euler, "ddpm_sigma": case_ddpm_sigma, "ddpm_fixed": case_ddpm_fixed,
         "ddim": case_ddim, "torch": case_torch, "refusals": case_refusals,
         "dpmpp": case_dpmpp, "heun": case_heun, "interval": case_interval,
         "cache": case_cache, "config": case_config}


def main():
    if len(sys.argv) not in (3, 4) or sys.argv[2] not in CASES:
        print(f"usage: {sys.argv[0]} DITMOE {'|'.join(CASES)} [TEST_BATCH]", file=sys.stderr)
        return 2
    if sys.argv[2] not in NO_TORCH:
        global torch, ditmoe_ref, samplers_ref
        import torch
        import ditmoe_ref
        import samplers_ref
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        CASES[sys.argv[2]](sys.argv[1], tmp)
    if failures:
        print(f"{len(failures)} failure(s): {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
