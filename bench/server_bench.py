#!/usr/bin/python3
"""server_bench.py: ditmoe-server throughput, latency and memory, one run.

Starts ditmoe-server twice on loopback (step-level batching on and off, both
up at once) and drives each with closed-loop clients at concurrency 1, 4 and
16, the six settings interleaved in rounds so that load from elsewhere on the
machine falls on all of them alike: every
client sends POST /generate (num_images 1, the model's default sampler,
steps and guidance, a distinct seed) again as soon as its last one is
answered. Reported per setting: images per second over the run, request
latency p50/p99, rows per step (from /stats). While the concurrency-16 runs
go, another client times GET /health every 20 ms (p50/p99). Memory: peak RSS
(VmHWM) after loading, after the runs, and after filling the whole queue with
the largest jobs, against the weights and the engine context's arenas.

  bench/server_bench.py [--server build/server/ditmoe-server] [--model DIR]
                        [--seconds 20] [--rounds 4] [--threads N --blas-threads M]

Without --model the bundled models/fashion-mnist is used; --random-model
DIR writes (once) a random-weight model of the same shape there instead,
for when the trained one is not at hand. Results go to stdout as a
Markdown table (docs/benchmarks.md, section ditmoe-server).
"""
import argparse
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "server"))
from srvtest import Server  # noqa: E402

# models/fashion-mnist's shape (tools/train/train.py defaults)
FASHION = dict(input_size=28, patch_size=4, in_channels=1, hidden_size=128, depth=6,
               num_heads=4, mlp_ratio=2.0, num_classes=10, num_experts=8,
               num_experts_per_tok=2, n_shared_experts=2, learn_sigma=False,
               class_dropout_prob=0.1, prediction="velocity",
               sampling={"sampler": "euler", "steps": 20, "cfg_scale": 2.0})


def random_model(path):
    if not os.path.exists(os.path.join(path, "config.json")):
        sys.path.insert(0, os.path.join(ROOT, "tools", "ref"))
        import torch
        import ditmoe_ref
        torch.manual_seed(0)
        model = ditmoe_ref.randomize_(ditmoe_ref.DiTMoE(FASHION), 1).eval()
        ditmoe_ref.write_model_dir(model, FASHION, path)
    return path


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def rss_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def closed_loop(s, conc, seconds, seed0):
    """conc clients for `seconds`; returns (images, wall seconds, latencies)."""
    lat, lock, stop = [], threading.Lock(), time.monotonic() + seconds
    count = [0]

    def client(k):
        i = 0
        while time.monotonic() < stop:
            t0 = time.monotonic()
            r = s.post("/generate", {"class_label": (k + i) % 10, "seed": seed0 + 1000 * k + i})
            dt = time.monotonic() - t0
            if r.status != 200:
                raise RuntimeError(f"/generate answered {r.status}: {r.body[:200]!r}")
            with lock:
                lat.append(dt)
                count[0] += 1
            i += 1
    t0 = time.monotonic()
    ts = [threading.Thread(target=client, args=(k,)) for k in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return count[0], time.monotonic() - t0, lat


def health_probe(s, stop, out):
    c = s.conn(timeout=10)
    while not stop.is_set():
        t0 = time.perf_counter()
        c.request("GET", "/health")
        r = c.getresponse()
        r.read()
        out.append(time.perf_counter() - t0)
        time.sleep(0.02)
    c.close()


def fill_queue(s):
    """Queues queue_capacity jobs of the most images (peak memory check)."""
    lim = s.get("/v1/model").json()["limits"]
    n_img = min(lim["max_images"], lim["max_rows_per_step"] // 2)
    ids = []
    for i in range(lim["queue_capacity"] + lim["max_rows_per_step"]):
        r = s.post("/jobs", {"class_label": i % 10, "num_images": n_img, "seed": i})
        if r.status == 202:
            ids.append(r.json()["id"])
    time.sleep(2)
    depth = s.stats()["queue"]["depth"]
    for j in ids:
        s.request("DELETE", f"/jobs/{j}")
    return len(ids), depth


def memory(s):
    """Peak RSS after the runs and after filling the queue, vs weights + arenas."""
    info = s.get("/v1/model").json()
    runs = rss_kb(s.proc.pid, "VmHWM")
    queued, depth = fill_queue(s)
    return dict(runs=runs, full=rss_kb(s.proc.pid, "VmHWM"), queued=queued, depth=depth,
                weights=info["parameters"]["weight_bytes"] / 1024,
                ctx=info["server"]["ctx_bytes"] / 1024, threads=info["server"]["threads"],
                blas=info["server"]["blas_threads"], max_rows=info["limits"]["max_rows_per_step"])


def measure(args):
    """Both servers up at once; rounds interleave every (batching, concurrency)
    setting so that load from elsewhere on the machine hits all of them alike."""
    servers = {b: Server(args.server, args.model, "--batching", "true" if b else "false",
                         "--access-log", "false", "--queue-capacity", 64, threads=args.threads,
                         blas=args.blas_threads) for b in (True, False)}
    acc = {(b, c): dict(n=0, wall=0.0, lat=[], rows=0, steps=0, probe=[])
           for b in (True, False) for c in (1, 4, 16)}
    try:
        load_kb = {b: rss_kb(s.proc.pid, "VmHWM") for b, s in servers.items()}
        for s in servers.values():
            closed_loop(s, 2, 2, 999999)  # warm-up
        for rnd in range(args.rounds):
            for (b, conc), a in acc.items():
                s = servers[b]
                st0, stop = s.stats(), threading.Event()
                th = threading.Thread(target=health_probe, args=(s, stop, a["probe"]))
                if conc == 16:
                    th.start()
                n, wall, lat = closed_loop(s, conc, args.seconds / args.rounds,
                                           100000 * rnd + 10 * conc)
                stop.set()
                if conc == 16:
                    th.join()
                st1 = s.stats()
                a["n"] += n
                a["wall"] += wall
                a["lat"] += lat
                a["rows"] += st1["rows"] - st0["rows"]
                a["steps"] += st1["steps"] - st0["steps"]
            print(f"round {rnd + 1}/{args.rounds}: " + ", ".join(
                f"{'on' if b else 'off'} c{c} {a['n'] / a['wall']:.2f}"
                for (b, c), a in acc.items()), flush=True)
        mem = {b: dict(memory(s), load=load_kb[b]) for b, s in servers.items()}
    finally:
        for s in servers.values():
            s.close()
    return acc, mem


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default=os.path.join(ROOT, "build", "server", "ditmoe-server"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "fashion-mnist"))
    ap.add_argument("--random-model", metavar="DIR")
    ap.add_argument("--seconds", type=float, default=20, help="per setting, over all rounds")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--blas-threads", type=int, default=0)
    args = ap.parse_args()
    if args.random_model:
        args.model = random_model(args.random_model)
    acc, mem = measure(args)
    print("\n| batching | concurrency | images/s | p50 ms | p99 ms | rows/step |")
    print("|---|---|---|---|---|---|")
    for (b, c), a in acc.items():
        print(f"| {'on' if b else 'off'} | {c} | {a['n'] / a['wall']:.2f} | "
              f"{pct(a['lat'], 50) * 1e3:.0f} | {pct(a['lat'], 99) * 1e3:.0f} | "
              f"{a['rows'] / max(a['steps'], 1):.1f} |")
    ips = {k: a["n"] / a["wall"] for k, a in acc.items()}
    print(f"\nbatching on: concurrency 16 / concurrency 1 = {ips[True, 16] / ips[True, 1]:.2f}x; "
          f"batching on / off at concurrency 16 = {ips[True, 16] / ips[False, 16]:.2f}x")
    for b in (True, False):
        p = acc[b, 16]["probe"]
        print(f"GET /health during generation (batching {'on' if b else 'off'}, c=16): "
              f"p50 {pct(p, 50) * 1e3:.2f} ms, p99 {pct(p, 99) * 1e3:.2f} ms over {len(p)} probes")
    for b in (True, False):
        m = mem[b]
        print(f"peak RSS (batching {'on' if b else 'off'}): after load {m['load'] / 1024:.0f} MB, "
              f"after the runs {m['runs'] / 1024:.0f} MB, after queueing {m['queued']} jobs "
              f"(queue depth {m['depth']}) {m['full'] / 1024:.0f} MB; weights "
              f"{m['weights'] / 1024:.1f} MB, engine context {m['ctx'] / 1024:.1f} MB "
              f"({m['max_rows']} rows); threads {m['threads']} x BLAS {m['blas']}")


if __name__ == "__main__":
    main()
