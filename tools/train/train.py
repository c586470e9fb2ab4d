#!/usr/bin/python3
"""train.py: trains the Fashion-MNIST DiT-MoEs (pixel space) that ship in models/.

Two objectives, chosen by --objective (a resumed run keeps its checkpoint's):

`flow` (the default model, models/fashion-mnist, state in .train/):
rectified flow as upstream (diffusion/rectified_flow.py): t = sigmoid(randn)
(logit-normal), zt = (1 - t) x + t z1 with z1 ~ N(0, I), the model predicts
the velocity z1 - x from (zt, t in [0, 1], label) under an MSE loss. Labels
are dropped to the null class (num_classes) 10% of the time so that
classifier-free guidance works. AdamW with a linear warm-up, gradient
clipping, upstream's MoE load-balancing loss, and an EMA whose decay warms up
as min(0.999, (1 + s) / (10 + s)) so it is useful early.

`ddpm` (models/fashion-mnist-ddpm, state in .train-ddpm/): upstream's
Gaussian diffusion objective for its S/2 and B/2 checkpoints, in ddpm.py:
epsilon prediction with a learned variance (learn_sigma, 2 output channels),
1000 linear betas, t uniform, MSE on epsilon plus the variational-bound term
on the variance with the mean frozen. Same shape, optimiser, label dropout,
balance loss and EMA as `flow`.

The run is meant to live in the background for hours on a shared CPU, so it
is restartable at any moment: every --ckpt-minutes it writes
STATE/ckpt.pt (model, EMA, optimizer, step, RNG; atomic rename) and on start
it resumes from it if present (the shape then comes from the checkpoint).
Every --export-minutes it samples a few images per class from both the raw
and the EMA weights (Euler for flow; DDPM with --score-steps respaced steps
for ddpm), scores them (the bench judge if bench/judge has one,
else a nearest-class-mean proxy), and if the better of the two beats the best
export so far writes OUT/{config.json, model.safetensors}. Losses go to
STATE/loss.csv, scores to STATE/exports.csv.

  nohup /usr/bin/python3 tools/train/train.py > .train/train.log 2>&1 &
  /usr/bin/python3 tools/train/train.py --export-now   # export from ckpt, exit
  (add --objective ddpm to both for the DDPM model)
"""
import argparse
import copy
import csv
import gzip
import math
import os
import sys
import time

# On a shared, oversubscribed CPU, OpenMP threads that spin at barriers waste
# the cores they wait for; passive waiting and one thread were measured ~3x
# faster per step than two spinning threads at load average 10.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "ref"))
import ditmoe_ref as R  # noqa: E402
import samplers_ref  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, "tools", "train"))
import ddpm  # noqa: E402

DATA_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
               "Shirt", "Sneaker", "Bag", "Ankle boot"]


def load_fashion_mnist(split, data_dir=DATA_DIR):
    """split 'train' or 't10k' -> (images (N, 1, 28, 28) float32 in [-1, 1],
    labels (N,) int64), read from the idx .gz files."""
    with gzip.open(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz")) as f:
        raw = f.read()
    n, h, w = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    imgs = np.frombuffer(raw, np.uint8, offset=16).reshape(n, 1, h, w)
    with gzip.open(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return imgs.astype(np.float32) / 127.5 - 1.0, labels


# ---- scoring -------------------------------------------------------------------

def make_scorer(kind="judge"):
    """-> (name, fn(images in [-1,1] (N,1,28,28) tensor, labels) -> score,
    higher is better). "judge": the bench judge's accuracy, falling back to
    nearest class mean in pixel space (weak in absolute terms, but it ranks
    checkpoints); "fd": minus the Frechet distance to the test split
    (bench/judge/fd.py), which also sees diversity, where accuracy saturates."""
    try:
        sys.path.insert(0, os.path.join(ROOT, "bench", "judge"))
        import judge  # noqa: E402
        if kind == "fd":
            import fd  # noqa: E402
            yard = fd.Yardstick()
            return "fd", lambda x, y: -yard.fd(x.numpy())
        net = judge.load()
        return "judge", lambda x, y: (judge.predict(net, x) == y).float().mean().item()
    except Exception as e:  # the judge may not exist yet
        if kind == "fd":
            raise
        print(f"scorer: no judge ({e}); using nearest class mean", flush=True)
    imgs, labels = load_fashion_mnist("train")
    means = torch.stack([torch.from_numpy(imgs[labels == c].mean(0)).flatten()
                         for c in range(10)])
    return "centroid", lambda x, y: (torch.cdist(x.flatten(1), means).argmin(1) == y) \
        .float().mean().item()


class _GenNoise:
    """Per-step DDPM noise for scoring, from a seeded generator."""
    def __init__(self, gen):
        self.gen = gen

    def step(self, k, rows, shape_one):
        return torch.randn(rows, *shape_one, generator=self.gen)


def sample_batch(model, noise, labels, steps, cfg_scale, gen):
    """Samples with the objective's sampler: Euler for velocity models, DDPM
    (upstream guidance mode, the engine's default) for epsilon models."""
    if model.cfg["prediction"] == "velocity":
        return samplers_ref.sample_euler(model, noise, labels, steps, cfg_scale)
    return samplers_ref.sample_gaussian(model, noise, labels, steps, cfg_scale, "upstream",
                                        "ddpm", _GenNoise(gen))


def score_model(model, scorer, per_class, steps, cfg_scale, seed):
    """The scorer's score of per_class samples of each class."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(per_class)
    noise = torch.randn(len(labels), 1, 28, 28, generator=g)
    x = torch.cat([sample_batch(model, noise[i:i + 50], labels[i:i + 50], steps, cfg_scale, g)
                   for i in range(0, len(labels), 50)])
    return scorer(x.clamp(-1, 1), labels)


# ---- training state --------------------------------------------------------------

def lr_at(step, args):
    """Linear warm-up, then constant, or with --lr-decay-to a cosine decay to
    lr * that fraction at --max-steps."""
    warm = min(1.0, (step + 1) / args.warmup)
    if args.lr_decay_to is None or step < args.warmup:
        return args.lr * warm
    done = min(1.0, (step - args.warmup) / max(1, args.max_steps - args.warmup))
    f = args.lr_decay_to + (1 - args.lr_decay_to) * 0.5 * (1 + math.cos(math.pi * done))
    return args.lr * f


def ema_decay(step):
    return min(0.999, (1 + step) / (10 + step))


def atomic_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export_config(cfg, sampling):
    out = dict(cfg)
    out.update(class_names=CLASS_NAMES, sampling=sampling)
    return out


def export(state, args, scorer):
    """Scores raw and EMA weights; writes the better one if it beats the best
    export so far. Returns the row logged to exports.csv."""
    scores = {}
    for which in ("raw", "ema"):
        scores[which] = score_model(state[which], scorer[1], args.eval_per_class,
                                    args.score_steps, args.cfg_scale, seed=1234)
    which = max(scores, key=scores.get)
    best = state["best_export"]
    wrote = scores[which] >= best
    if wrote:
        model = state[which]
        n_params = sum(p.numel() for p in model.parameters())
        dtype = "F32" if n_params * 4 < 38e6 else "F16"
        sampling = {"sampler": args.sampler, "steps": args.sample_steps,
                    "cfg_scale": args.cfg_scale}
        R.write_model_dir(model, export_config(model.cfg, sampling), args.out, dtype,
                          extra={"step": state["step"], "weights": which,
                                 "score": f"{scores[which]:.4f}", "scorer": scorer[0]})
        state["best_export"] = scores[which]
    row = [state["step"], f"{scores['raw']:.4f}", f"{scores['ema']:.4f}", scorer[0],
           which if wrote else "", f"{time.time() - state['t0'] + state['wall']:.0f}"]
    with open(os.path.join(args.state, "exports.csv"), "a") as f:
        f.write(",".join(map(str, row)) + "\n")
    print(f"export step {state['step']}: raw {scores['raw']:.3f} ema {scores['ema']:.3f} "
          f"({scorer[0]}) -> {'wrote ' + which if wrote else 'kept previous'}", flush=True)
    state["raw"].train()
    return row


def write_weights(state, args):
    """--export-now --write-weights raw|ema: the checkpoint's weights to
    --out without scoring them (score with the C engine instead, e.g.
    bench/solvers.py, which is much faster than sampling in PyTorch)."""
    model = state[args.write_weights]
    sampling = {"sampler": args.sampler, "steps": args.sample_steps, "cfg_scale": args.cfg_scale}
    R.write_model_dir(model, export_config(model.cfg, sampling), args.out, "F32",
                      extra={"step": state["step"], "weights": args.write_weights,
                             "score": "unscored", "scorer": "none"})
    print(f"wrote the {args.write_weights} weights of step {state['step']} to {args.out}",
          flush=True)


def new_state(args):
    cfg = R.full_config(dict(
        input_size=28, patch_size=args.patch, in_channels=1, hidden_size=args.hidden,
        depth=args.depth, num_heads=args.heads, mlp_ratio=args.mlp_ratio, num_classes=10,
        num_experts=args.experts, num_experts_per_tok=args.topk, n_shared_experts=2,
        learn_sigma=args.objective == "ddpm", class_dropout_prob=0.1,
        prediction="epsilon" if args.objective == "ddpm" else "velocity"))
    torch.manual_seed(args.seed)
    model = R.DiTMoE(cfg)
    return {"raw": model, "ema": copy.deepcopy(model).eval(), "step": 0, "wall": 0.0,
            "best_export": -math.inf, "gen": torch.Generator().manual_seed(args.seed)}


def seed_weights(state, path, args, scorer):
    """Starts a new run from an exported model directory: raw and EMA weights
    both begin at the export (the shape comes from its config.json), and the
    export's own score is the best so far, so only a better model replaces it."""
    model, cfg = R.load_model_dir(path)
    shape = {k: cfg[k] for k in R.CONFIG_DEFAULTS}
    shape["prediction"] = cfg["prediction"]
    state["raw"] = R.DiTMoE(shape)
    state["raw"].load_state_dict(model.state_dict())
    state["ema"] = copy.deepcopy(state["raw"]).eval()
    state["best_export"] = score_model(state["ema"], scorer[1], args.eval_per_class,
                                       args.score_steps, args.cfg_scale, seed=1234)
    state["raw"].train()
    print(f"seeded from {path}: {scorer[0]} score {state['best_export']:.4f}", flush=True)


def save_ckpt(state, opt, path):
    atomic_save({"cfg": state["raw"].cfg, "model": state["raw"].state_dict(),
                 "ema": state["ema"].state_dict(), "opt": opt.state_dict(),
                 "step": state["step"], "wall": time.time() - state["t0"] + state["wall"],
                 "best_export": state["best_export"], "gen": state["gen"].get_state(),
                 "torch_rng": torch.get_rng_state()}, path)


def load_ckpt(path):
    ck = torch.load(path, map_location="cpu")
    raw, ema = R.DiTMoE(ck["cfg"]), R.DiTMoE(ck["cfg"])
    raw.load_state_dict(ck["model"])
    ema.load_state_dict(ck["ema"])
    gen = torch.Generator()
    gen.set_state(ck["gen"])
    torch.set_rng_state(ck["torch_rng"])
    state = {"raw": raw, "ema": ema.eval(), "step": ck["step"], "wall": ck["wall"],
             "best_export": ck["best_export"], "gen": gen}
    return state, ck["opt"]


def flow_loss(model, x, y, g, aux_alpha):
    """Upstream's rectified-flow loss -> (loss, velocity mse, vb = 0, aux)."""
    t = torch.sigmoid(torch.randn(len(x), generator=g))
    z1 = torch.randn(x.shape, generator=g)
    te = t.view(-1, 1, 1, 1)
    zt = (1 - te) * x + te * z1
    v, aux = model(zt, t, y, aux_alpha=aux_alpha, return_aux=True)
    mse = F.mse_loss(v, z1 - x)
    return mse + aux, mse, torch.zeros(()), aux


def train_step(state, opt, data, args):
    model, g = state["raw"], state["gen"]
    imgs, labels = data
    idx = torch.randint(0, len(imgs), (args.batch,), generator=g)
    x, y = imgs[idx], labels[idx]
    if args.hflip:
        flip = torch.rand(args.batch, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    y = torch.where(torch.rand(args.batch, generator=g) < 0.1, torch.full_like(y, 10), y)
    for grp in opt.param_groups:
        grp["lr"] = lr_at(state["step"], args)
    if model.cfg["prediction"] == "epsilon":
        loss, mse, vb, aux = ddpm.loss(model, state["sched"], x, y, g, args.aux)
    else:
        loss, mse, vb, aux = flow_loss(model, x, y, g, args.aux)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
    opt.step()
    d = ema_decay(state["step"])
    with torch.no_grad():
        for pe, pm in zip(state["ema"].parameters(), model.parameters()):
            pe.mul_(d).add_(pm.detach(), alpha=1 - d)
    state["step"] += 1
    return mse.item(), vb.item(), aux.item(), gnorm.item()


# Per-objective defaults of the flags left at None.
OBJECTIVE_DEFAULTS = {
    "flow": {"out": os.path.join(ROOT, "models", "fashion-mnist"),
             "state": os.path.join(ROOT, ".train"),
             "sampler": "euler", "sample_steps": 20, "score_steps": 20},
    "ddpm": {"out": os.path.join(ROOT, "models", "fashion-mnist-ddpm"),
             "state": os.path.join(ROOT, ".train-ddpm"),
             "sampler": "ddpm", "sample_steps": 250, "score_steps": 50},
}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objective", choices=sorted(OBJECTIVE_DEFAULTS), default="flow",
                    help="flow (velocity) or ddpm (epsilon + learned variance)")
    ap.add_argument("--out", help="export directory (default models/fashion-mnist[-ddpm])")
    ap.add_argument("--state", help="checkpoint directory (default .train or .train-ddpm)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--mlp-ratio", type=float, default=2.0)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--topk", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--aux", type=float, default=0.01, help="MoE balance loss weight per layer")
    ap.add_argument("--hflip", type=int, default=0, help="random horizontal flips")
    ap.add_argument("--max-steps", type=int, default=200000)
    ap.add_argument("--ckpt-minutes", type=float, default=5)
    ap.add_argument("--export-minutes", type=float, default=20)
    ap.add_argument("--eval-per-class", type=int, default=20)
    ap.add_argument("--sample-steps", type=int,
                    help="steps written to config.json (default 20 flow, 250 ddpm)")
    ap.add_argument("--score-steps", type=int,
                    help="sampler steps when scoring exports (default 20 flow, 50 ddpm)")
    ap.add_argument("--sampler", help="sampler written to config.json (euler / ddpm)")
    ap.add_argument("--cfg-scale", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--score", choices=["judge", "fd"], default="judge",
                    help="export score: judge accuracy, or minus the Frechet distance")
    ap.add_argument("--lr-decay-to", type=float, metavar="FRAC",
                    help="cosine-decay the learning rate to lr*FRAC at --max-steps")
    ap.add_argument("--init-from", metavar="DIR",
                    help="with no checkpoint yet: start from this exported model's weights")
    ap.add_argument("--export-now", action="store_true",
                    help="load the checkpoint, export (if better) and exit")
    ap.add_argument("--write-weights", choices=["raw", "ema"],
                    help="with --export-now: write these weights to --out, unscored")
    ap.add_argument("--force-export", action="store_true",
                    help="with --export-now: write even if not better than the best so far")
    args = ap.parse_args()
    for k, v in OBJECTIVE_DEFAULTS[args.objective].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.state, exist_ok=True)
    ckpt = os.path.join(args.state, "ckpt.pt")
    scorer = make_scorer(args.score)
    opt_state = None
    if os.path.exists(ckpt):
        state, opt_state = load_ckpt(ckpt)
        print(f"resumed from {ckpt} at step {state['step']}", flush=True)
    else:
        state = new_state(args)
        if args.init_from:
            seed_weights(state, args.init_from, args, scorer)
    objective = "ddpm" if state["raw"].cfg["prediction"] == "epsilon" else "flow"
    if objective != args.objective:
        print(f"{ckpt} holds a {objective} model; pass --objective {objective}", file=sys.stderr)
        return 2
    state["sched"] = ddpm.schedule()
    state["t0"] = time.time()
    model = state["raw"].train()
    print("config:", model.cfg, f"params {sum(p.numel() for p in model.parameters())}",
          flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    if args.export_now and args.write_weights:
        write_weights(state, args)
        return 0
    if args.export_now:
        if args.force_export:
            state["best_export"] = -math.inf
        export(state, args, scorer)
        return 0

    imgs, labels = load_fashion_mnist("train")
    data = (torch.from_numpy(imgs), torch.from_numpy(labels))
    log_path = os.path.join(args.state, "loss.csv")
    new_log = not os.path.exists(log_path)
    log = open(log_path, "a", newline="")
    w = csv.writer(log)
    if new_log:
        w.writerow(["step", "mse", "aux", "grad_norm", "lr", "sec_per_step", "wall_sec", "vb"])
    last_ckpt = last_export = time.time()
    sps = None
    while state["step"] < args.max_steps:
        t = time.time()
        mse, vb, aux, gn = train_step(state, opt, data, args)
        dt = time.time() - t
        sps = dt if sps is None else 0.95 * sps + 0.05 * dt
        wall = time.time() - state["t0"] + state["wall"]
        if state["step"] % 10 == 0:
            w.writerow([state["step"], f"{mse:.5f}", f"{aux:.5f}", f"{gn:.3f}",
                        f"{lr_at(state['step'], args):.2e}", f"{dt:.3f}", f"{wall:.0f}",
                        f"{vb:.5f}"])
            log.flush()
        if state["step"] % 50 == 0:
            print(f"step {state['step']} mse {mse:.4f} vb {vb:.4f} aux {aux:.4f} {sps:.2f} s/step "
                  f"wall {wall / 60:.1f} min", flush=True)
        if time.time() - last_export > args.export_minutes * 60:
            export(state, args, scorer)
            last_export = time.time()
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            save_ckpt(state, opt, ckpt)
            last_ckpt = time.time()
    save_ckpt(state, opt, ckpt)
    export(state, args, scorer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
