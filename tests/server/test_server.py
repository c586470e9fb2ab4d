#!/usr/bin/python3
"""test_server.py GROUP --server EXE --cache DIR: ditmoe-server end to end.

Each group starts its own server(s) on an ephemeral loopback port with a
small random-weight model (make_model.py) and checks one area:

  api        every endpoint's happy path and document shapes
  openai     POST /v1/images/generations: OpenAI's image API over the same jobs
  batching   8 concurrent requests share steps and equal their solo runs
  solvers    jobs of different solvers, guidance intervals and step caches
             share steps (rows changing per step) and equal their solo runs;
             /v1/model lists the sampler table
  defaults   a model whose config.json "sampling" sets spacing, guidance
             interval and cache: /v1/model reports them, a request leaving
             them out runs them, another sampler gets its own spacing
  queue      queue-full 429, cancel frees a place, client disconnect cancels
  errors     bad input: each a 4xx JSON error naming the field, no 5xx
  static     the web root: content types, path traversal refused
  auth       API key, trusted proxy header, job retention
  shutdown   SIGTERM drains (finishes or cancels within the bound), exit 0
  limits     idle/slow connection timeout, per-IP connection limit
  config     settings file, environment and command-line errors, DITMOE_LISTEN
  soak       a bounded mixed load (valid, cancelled, malformed, abandoned)
  decode     decode and PNG-encode timings (JSON, headers, /metrics), on a
             pixel model
  decode_latent  the same on a latent model with a small VAE (its writer
             needs PyTorch)
  instance   instance ids: the job id prefix and X-Ditmoe-Instance
  keepalive  ': keep-alive' comments on a quiet event stream
  healthcheck  ditmoe-server --healthcheck [URL]
  install    meson install: web/, the model and the class names land in
             PREFIX/share/ditmoe, and the installed binary finds them
  hostile    malformed framing, FIFOs, forged log lines, odd bodies
  halfclose  clients that shut down their sending side and wait
"""
import argparse
import base64
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from srvtest import (Server, check, finish, make_model, max_pixel_diff, png_decode,
                     wait_for)

ARGS = None
HERE = os.path.dirname(os.path.abspath(__file__))


def start(*args, slow=False, **kw):
    return Server(ARGS.server, ARGS.slow_model if slow else ARGS.model, *args, **kw)


def is_error(r, status, field=None):
    """r is a JSON error of this status whose message names field (a valid
    UTF-8 body)."""
    try:
        e = json.loads(r.body.decode("utf-8"))["error"]
    except (ValueError, KeyError, TypeError):
        return check(False, f"expected a JSON error {status}, got {r.status} {r.body[:200]!r}")
    ok = (r.status == status and e.get("code") == status and isinstance(e.get("type"), str)
          and isinstance(e.get("message"), str) and (field is None or field in e["message"]))
    return check(ok, f"expected error {status} naming {field!r}, got {r.status} {e}")


OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
                405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
                503: "server_error"}


def is_openai_error(r, status, param=None, word=None):
    """r is an error in OpenAI's shape: {"error": {"message", "type",
    "param", "code"}}, type OpenAI's for the status, param the field."""
    try:
        e = json.loads(r.body.decode("utf-8"))["error"]
    except (ValueError, KeyError, TypeError):
        return check(False, f"expected an OpenAI error {status}, got {r.status} {r.body[:200]!r}")
    ok = (r.status == status and set(e) == {"message", "type", "param", "code"} and
          e["type"] == OPENAI_TYPES[status] and e["param"] == param and
          isinstance(e["code"], str) and (word is None or word in e["message"]))
    return check(ok, f"expected OpenAI error {status} param {param!r}, got {r.status} {e}")


# ---- api --------------------------------------------------------------------

def test_api():
    s = start()
    try:
        check(s.get("/health").json() == {"status": "ok"}, "/health")
        check(s.get("/ready").json() == {"status": "ready"}, "/ready")
        check(s.request("HEAD", "/health").body == b"", "HEAD /health has no body")
        m = s.get("/v1/model").json()
        cfg = m["config"]
        check(cfg["depth"] == 2 and cfg["num_experts"] == 4 and cfg["num_classes"] == 10,
              f"/v1/model config {cfg}")
        check(m["classes"][1] == "Trouser" and len(m["classes"]) == 10, "class names")
        check(m["parameters"]["total"] > m["parameters"]["active_per_token"] > 0, "param counts")
        p = m["parameters"]
        check(p["weight_bytes_by_dtype"] and sum(p["weight_bytes_by_dtype"].values())
              == p["weight_bytes"] and p["resident_bytes"] >= p["weight_bytes"] > 0,
              f"weight bytes by dtype sum to weight_bytes, resident set counted: {p}")
        d = m["sampling_defaults"]
        check(d == {"sampler": "euler", "steps": 8, "cfg_scale": 1.5, "num_images": 1,
                    "cfg_mode": "upstream", "rng": "default", "spacing": "default",
                    "cfg_interval": [0, 1], "cache": {"mode": "off"}},
              f"sampling defaults of a config.json with sampler, steps, cfg_scale only: {d}")
        check(m["limits"]["max_images"] == 16 and "queue_capacity" in m["limits"], "limits")
        # the model by its folder's name, never the server's filesystem path
        body = s.get("/v1/model").body.decode()
        check(m["model"] == os.path.basename(ARGS.model), f"model name {m['model']!r}")
        check(os.path.dirname(ARGS.model) not in body, "/v1/model leaks the model's path")

        # PNG answer with its headers; the same seed gives the same image
        r = s.post("/generate", {"class_label": "Trouser", "seed": 7, "steps": 6})
        check(r.status == 200 and r.header("content-type") == "image/png", f"png {r.status}")
        check(r.header("x-seed") == "7" and r.header("x-job-id"), f"headers {r.headers}")
        check(float(r.header("x-queue-ms")) >= 0 and float(r.header("x-compute-ms")) > 0,
              "timing headers")
        w, h, ch, _ = png_decode(r.body)
        check((w, h, ch) == (16, 16, 1), f"image size {w}x{h}x{ch}")
        r2 = s.post("/generate", {"class_label": 1, "seed": 7, "steps": 6})
        check(r2.body == r.body, "same request, same PNG")
        r3 = s.post("/generate", {"class_label": 1, "seed": 8, "steps": 6})
        check(r3.body != r.body, "another seed, another PNG")
        # a seed is chosen when absent, and returned
        r = s.post("/generate", {"class_label": 0, "steps": 2})
        check(r.status == 200 and r.header("x-seed", ).isdigit(), "seed chosen")

        # several images: one PNG grid (2 x 2 with a 2-pixel gap)
        r = s.post("/generate", {"class_label": 2, "seed": 3, "steps": 4, "num_images": 4})
        w, h, ch, _ = png_decode(r.body)
        check((w, h) == (34, 34), f"grid size {w}x{h}")

        # JSON answer: one PNG per image, seed, timings, this request's routing counts
        req = {"class_label": 5, "seed": 11, "steps": 5, "num_images": 3, "cfg_scale": 2.0}
        r = s.post("/generate", req, headers={"Accept": "application/json"})
        d = r.json()
        check(r.status == 200 and len(d["data"]) == 3, f"json data {r.status}")
        for item in d["data"]:
            check(png_decode(base64.b64decode(item["b64_json"]))[:3] == (16, 16, 1), "b64 png")
        check(d["seed"] == 11 and d["timings"]["compute_ms"] > 0, "json seed/timings")
        rows, tokens, k = 3 * 2, cfg["num_tokens"], cfg["num_experts_per_tok"]
        ex = d["experts"]
        check(len(ex) == 2 and all(len(l) == 4 for l in ex), "experts shape (L, E)")
        check(all(sum(l) == 5 * rows * tokens * k for l in ex),
              f"experts count every routed token: {[sum(l) for l in ex]} vs {5 * rows * tokens * k}")
        # JSON and PNG answers hold the same images
        r = s.post("/generate", dict(req, num_images=1), headers={"Accept": "application/json"})
        png = s.post("/generate", dict(req, num_images=1)).body
        check(base64.b64decode(r.json()["data"][0]["b64_json"]) == png, "json png == png")

        api_jobs(s)
        api_stats(s, cfg)
    finally:
        s.close()


def sse_events(s, path):
    """The events of a server-sent-events stream, to its end."""
    c = s.conn()
    c.request("GET", path)
    r = c.getresponse()
    check(r.status == 200 and r.getheader("content-type") == "text/event-stream", "sse headers")
    events, ev = [], {}
    for line in r.read().decode().splitlines():
        if line.startswith("event: "):
            ev["event"] = line[7:]
        elif line.startswith("data: "):
            ev["data"] = json.loads(line[6:])
        elif not line and ev:
            events.append(ev)
            ev = {}
    c.close()
    return events


def api_jobs(s):
    r = s.post("/jobs", {"class_label": "Bag", "seed": 5, "steps": 30})
    d = r.json()
    check(r.status == 202 and d["status"] in ("queued", "running", "done"), f"202 {d}")
    check(r.header("location") == "/jobs/" + d["id"], "Location header")
    jid = d["id"]
    ev = sse_events(s, f"/jobs/{jid}/events")
    steps = [e["data"]["step"] for e in ev if e["event"] == "step"]
    check(steps == list(range(1, 31)), f"one event per step: {steps}")
    check(all(e["data"]["elapsed_ms"] >= 0 and e["data"]["steps"] == 30
              for e in ev if e["event"] == "step"), "step events carry elapsed and steps")
    check(ev and ev[-1]["event"] == "done" and ev[-1]["data"]["image"] == f"/jobs/{jid}/image",
          f"last event done: {ev[-1] if ev else None}")
    st = s.get(f"/jobs/{jid}").json()
    check(st["status"] == "done" and st["step"] == 30 and st["steps"] == 30, f"status {st}")
    check(len(st["experts"]) == 2 and sum(st["experts"][0]) > 0, "status has routing counts")
    check(ev[-1]["data"].get("experts") == st["experts"], "done event has routing counts")
    img = s.get(f"/jobs/{jid}/image")
    check(img.status == 200 and img.header("content-type") == "image/png", "job image")
    same = s.post("/generate", {"class_label": 8, "seed": 5, "steps": 30}).body
    check(same == img.body, "async and sync give the same image")
    # an SSE stream opened on a queued job sees its queue position first
    long = s.post("/jobs", {"class_label": 1, "steps": 1000, "num_images": 16}).json()["id"]
    fill = [s.post("/jobs", {"class_label": 1, "steps": 1000, "num_images": 16}).json()["id"]
            for _ in range(2)]
    q = fill[-1]
    got = {}

    def watch():
        got["ev"] = sse_events(s, f"/jobs/{q}/events")
    t = threading.Thread(target=watch)
    t.start()
    wait_for(lambda: s.get(f"/jobs/{q}").json()["status"] == "queued", 10, "queued job")
    time.sleep(0.3)
    for j in [long] + fill:
        s.request("DELETE", f"/jobs/{j}")
    t.join(60)
    kinds = [e["event"] for e in got.get("ev", [])]
    check(kinds[:1] == ["queued"] and kinds[-1:] == ["cancelled"],
          f"queued job's events: {kinds}")
    check(got["ev"][0]["data"]["queue_position"] >= 1, "queue_position in the queued event")
    # 404 for unknown jobs, 409 for the image of an unfinished one
    is_error(s.get("/jobs/0123456789abcdef"), 404, "0123456789abcdef")
    is_error(s.get(f"/jobs/{q}/image"), 409)
    is_error(s.request("DELETE", f"/jobs/{jid}"), 409)


def api_stats(s, cfg):
    st = s.stats()
    check(st["steps"] > 0 and st["rows"] >= st["steps"], "stats steps/rows")
    check(len(st["layers"]) == 2, "stats layers")
    for layer in st["layers"]:
        ex = layer["experts"]
        check(len(ex) == 4 and abs(sum(e["share"] for e in ex) - 1) < 1e-6, "shares sum to 1")
        check(all(e["tokens_window"] <= e["tokens"] for e in ex), "window <= total")
        b = layer["balance"]
        check(b["max_over_mean"] >= 1 and b["cv"] >= 0 and b["unused_count"] == len(b["unused"]),
              f"balance {b}")
    check(len(st["by_noise_level"]) == 10, "noise-level buckets")
    classes = {c["class"] for c in st["by_class"]}
    check({1, 2, 5, 8}.issubset(classes) and 10 in classes, f"classes seen {classes}")
    check("depth" in st["queue"] and "capacity" in st["queue"], "queue depth")
    h = st["batch_size_histogram"]
    check(sum(h["rows"]) == st["steps"] and sum(h["jobs"]) == st["steps"], "histograms")
    text = s.get("/metrics")
    check(text.header("content-type").startswith("text/plain"), "metrics type")
    body = text.body.decode()
    for name in ['ditmoe_http_requests_total{code="200"}', "ditmoe_queue_depth ",
                 'ditmoe_batch_rows_bucket{le="1"}', "ditmoe_step_duration_seconds_count",
                 "ditmoe_request_duration_seconds_count", 'ditmoe_jobs_total{outcome="done"}',
                 'ditmoe_expert_tokens_total{layer="1",expert="3"}',
                 "ditmoe_http_request_duration_seconds_bucket"]:
        check(name in body, f"/metrics has {name}")
    total = sum(e["tokens"] for e in st["layers"][0]["experts"])
    per = sum(float(l.split()[-1]) for l in body.splitlines()
              if l.startswith('ditmoe_expert_tokens_total{layer="0"'))
    check(per >= total, "metrics tokens agree with /stats")
    check(" 200 " in s.log() and "access 127.0.0.1 GET /health 200" in s.log(), "access log")


# ---- batching ----------------------------------------------------------------

REQS = [
    {"class_label": 0, "seed": 100, "steps": 150},
    {"class_label": 1, "seed": 101, "steps": 200, "cfg_scale": 3.0},
    {"class_label": 2, "seed": 102, "steps": 120, "num_images": 2},
    {"class_label": 3, "seed": 103, "steps": 180, "cfg_scale": 1.0, "num_images": 3},
    {"class_label": 4, "seed": 104, "steps": 160, "rng": "torch"},
    {"class_label": 5, "seed": 105, "steps": 140, "cfg_scale": 4.0, "cfg_mode": "all"},
    {"class_label": 6, "seed": 106, "steps": 220, "num_images": 2, "cfg_scale": 2.0},
    {"class_label": 7, "seed": 107, "steps": 130},
]


def test_batching():
    s = start()
    try:
        # a long job keeps the batch busy, so the 8 requests surely share steps
        anchor = s.post("/jobs", {"class_label": 9, "steps": 1000, "num_images": 16,
                                  "cfg_scale": 1}).json()["id"]
        wait_for(lambda: s.get(f"/jobs/{anchor}").json()["status"] == "running", 30, "anchor")
        batched = [None] * len(REQS)

        def run(i):
            batched[i] = s.post("/generate", REQS[i])
        ts = [threading.Thread(target=run, args=(i,)) for i in range(len(REQS))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(300)
        s.request("DELETE", f"/jobs/{anchor}")
        wait_for(lambda: s.get(f"/jobs/{anchor}").json()["status"] == "cancelled", 30,
                 "anchor cancelled")
        jobs_hist = s.stats()["batch_size_histogram"]["jobs"]
        most = max(i for i, n in enumerate(jobs_hist) if n)
        check(sum(jobs_hist[2:]) > 0, f"steps with more than one job: {jobs_hist}")
        print(f"batching: up to {most} jobs shared a step", flush=True)
        for i, req in enumerate(REQS):
            solo = s.post("/generate", req)
            b = batched[i]
            check(b is not None and b.status == 200 and solo.status == 200, f"request {i} ok")
            if b is None or b.status != 200:
                continue
            d = max_pixel_diff(b.body, solo.body)
            check(d is not None and d <= 1, f"request {i}: batched vs solo differ by {d} levels")
        # with batching off, one job runs at a time; weights unpacked (BLAS)
        # give the same images
        s2 = start("--batching", "false", "--pack-weights", "false")
        try:
            flags = open("/proc/cpuinfo").read()
            best = "avx512" if " avx512f" in flags else "avx2" if " avx2" in flags else None
            params = s.get("/v1/model").json()["parameters"]
            check(params["weights_packed"] is True, "weights packed on every CPU")
            check(best is None or params["kernel"] == best,
                  f"/v1/model names the CPU's best kernel {best}: {params['kernel']}")
            check(s2.get("/v1/model").json()["parameters"]["weights_packed"] is False,
                  "pack_weights false: weights as stored")
            for req in REQS[:2]:
                d = max_pixel_diff(s2.post("/generate", req).body, s.post("/generate", req).body)
                check(d is not None and d <= 1, f"unpacked vs packed differ by {d} levels")
            ts = [threading.Thread(target=lambda i=i: s2.post("/generate", REQS[i]))
                  for i in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(300)
            h = s2.stats()["batch_size_histogram"]["jobs"]
            check(sum(h[2:]) == 0 and h[1] > 0, f"batching off: one job per step {h}")
        finally:
            s2.close()
    finally:
        s.close()


SOLVER_REQS = [
    {"class_label": 0, "seed": 200, "steps": 40, "sampler": "dpm++2m", "cfg_scale": 3.0},
    {"class_label": 1, "seed": 201, "steps": 30, "sampler": "heun", "cfg_scale": 2.0,
     "cfg_interval": [0.2, 0.8]},
    {"class_label": 2, "seed": 202, "steps": 60, "cfg_scale": 3.0, "cfg_interval": [0.3, 1.0],
     "cache": {"mode": "fixed", "interval": 3}, "num_images": 2},
    {"class_label": 3, "seed": 203, "steps": 50, "sampler": "dpm++2m", "spacing": "logsnr",
     "cache": {"mode": "adaptive", "threshold": 0.2}, "cfg_scale": 4.0},
    {"class_label": 4, "seed": 204, "steps": 45, "sampler": "heun", "cache": "fixed",
     "cfg_scale": 1.0, "num_images": 3},
    {"class_label": 5, "seed": 205, "steps": 70},
]


def test_solvers():
    s = start()
    try:
        m = s.get("/v1/model").json()
        table = {x["name"]: x for x in m["samplers"]}
        check({"euler", "ddpm", "ddim", "dpm++2m", "heun"} <= set(table), f"samplers {table}")
        check(table["heun"]["predictions"] == ["velocity"] and table["heun"]["supported"]
              and table["heun"]["evals_per_step"] == 2, f"heun row {table['heun']}")
        check(table["dpm++2m"]["predictions"] == ["epsilon", "velocity"], "dpm++2m row")
        check(table["ddpm"]["supported"] is False and table["euler"]["aliases"] == ["rf"],
              "ddpm unsupported on a flow model, euler's alias")
        # a long job keeps the batch busy, so the requests surely share steps
        anchor = s.post("/jobs", {"class_label": 9, "steps": 1000, "num_images": 4,
                                  "cfg_scale": 1}).json()["id"]
        wait_for(lambda: s.get(f"/jobs/{anchor}").json()["status"] == "running", 30, "anchor")
        ids = [s.post("/jobs", r).json()["id"] for r in SOLVER_REQS]
        for i in ids:
            wait_for(lambda i=i: s.get(f"/jobs/{i}").json()["status"] in ("done", "failed"), 300,
                     f"job {i}")
        s.request("DELETE", f"/jobs/{anchor}")
        jobs_hist = s.stats()["batch_size_histogram"]["jobs"]
        check(sum(jobs_hist[3:]) > 0, f"steps shared by 3 or more jobs: {jobs_hist}")
        for i, req in zip(ids, SOLVER_REQS):
            info = s.get(f"/jobs/{i}").json()
            check(info["status"] == "done", f"job {req} done: {info.get('error')}")
            p = info.get("params", {})
            check(p.get("sampler") == req.get("sampler", "euler"), f"params echo {p}")
            batched = s.get(f"/jobs/{i}/image")
            solo = s.post("/generate", req)
            check(batched.status == 200 and solo.status == 200, f"{req}: images")
            d = max_pixel_diff(batched.body, solo.body)
            check(d is not None and d <= 1, f"{req}: batched vs solo differ by {d} levels")
        # heun's job counts its forwards: 2 a step, the last step 1
        heun = s.get(f"/jobs/{ids[1]}").json()
        check(heun.get("steps") == 2 * 30 - 1, f"heun progress counts evaluations: {heun}")
    finally:
        s.close()


# ---- a model's sampling defaults -------------------------------------------------

DEFAULTS = {"sampler": "dpm++2m", "steps": 6, "cfg_scale": 3.0, "num_images": 1,
            "cfg_mode": "upstream", "rng": "default", "spacing": "logsnr",
            "cfg_interval": [0.2, 0.65], "cache": {"mode": "fixed", "interval": 3}}


def defaults_params(s, body):
    """A job's echoed params, and its image, for body (a /jobs request)."""
    st = s.post("/jobs", body).json()
    wait_for(lambda: s.get(f"/jobs/{st['id']}").json()["status"] in ("done", "failed"), 60,
             f"job {body}")
    return s.get(f"/jobs/{st['id']}").json().get("params", {}), s.get(f"/jobs/{st['id']}/image")


def test_defaults():
    s = Server(ARGS.server, make_model(ARGS.cache, kind="defaults"))
    try:
        d = s.get("/v1/model").json()["sampling_defaults"]
        check(d == DEFAULTS, f"/v1/model reports config.json's sampling: {d}")
        base = {"class_label": 3, "seed": 5}
        omitted = s.post("/generate", base)
        explicit = s.post("/generate", dict(base, **DEFAULTS))
        check(omitted.status == 200 and omitted.body == explicit.body,
              "a request that omits the defaults equals one that sets them")
        for name, other in [("spacing", "uniform"), ("cfg_interval", [0, 1]),
                            ("cache", "off"), ("steps", 7)]:
            r = s.post("/generate", dict(base, **{name: other}))
            check(r.status == 200 and r.body != omitted.body,
                  f"{name} {other} changes the image (so the default {name} is in use)")
        p, img = defaults_params(s, base)
        check({k: p.get(k) for k in DEFAULTS} == DEFAULTS and img.body == omitted.body,
              f"a job's params echo the defaults it ran: {p}")
        # another sampler: the model's spacing was chosen for dpm++2m, so heun
        # gets its own ("default"); interval and cache stay the model's
        p, img = defaults_params(s, dict(base, sampler="heun"))
        check(p.get("spacing") == "default" and p.get("cfg_interval") == [0.2, 0.65] and
              p.get("cache") == DEFAULTS["cache"], f"heun: its own spacing: {p}")
        r = s.post("/generate", dict(base, sampler="heun", spacing="default"))
        check(img.body == r.body, "heun without a spacing equals heun with \"default\"")
        r = s.post("/generate", dict(base, sampler="euler"))
        check(r.status == 200, f"euler (which takes no spacing) runs: {r.status} {r.body[:200]}")
        p, img = defaults_params(s, dict(base, sampler="dpm++"))
        check(p.get("spacing") == "logsnr" and img.body == omitted.body,
              f"the default sampler named (by an alias) keeps the model's spacing: {p}")
        r = s.post(OPENAI, {"prompt": "Dress", "seed": 5})
        check(r.status == 200 and base64.b64decode(r.json()["data"][0]["b64_json"]) ==
              omitted.body, "the OpenAI route runs the same defaults")
    finally:
        s.close()


# ---- OpenAI image API ----------------------------------------------------------

OPENAI = "/v1/images/generations"


def test_openai():
    s = start()
    try:
        req = {"prompt": "Trouser", "n": 2, "size": "16x16", "response_format": "b64_json",
               "model": "any", "user": "u1", "quality": "standard", "seed": 11, "steps": 6}
        t0 = time.time()
        r = s.post(OPENAI, req)
        check(r.status == 200 and r.header("content-type").startswith("application/json"),
              f"openai: 200 JSON, got {r.status} {r.header('content-type')}")
        d = r.json() if r.status == 200 else {}
        check(isinstance(d.get("created"), int) and t0 - 2 <= d["created"] <= time.time() + 2,
              f"openai: created is the request's Unix time: {d.get('created')}")
        data = d.get("data", [])
        check(len(data) == 2 and all(x.get("revised_prompt") == "Trouser" for x in data),
              f"openai: n images, each naming its class: {[x.get('revised_prompt') for x in data]}")
        for x in data:
            w, h, ch, _ = png_decode(base64.b64decode(x["b64_json"]))
            check((w, h, ch) == (16, 16, 1), f"openai: each image a 16x16 PNG, got {w}x{h}x{ch}")
        same = s.post("/generate", {"class_label": 1, "num_images": 2, "seed": 11, "steps": 6},
                      headers={"Accept": "application/json"}).json()
        check([x["b64_json"] for x in same["data"]] == [x["b64_json"] for x in data],
              "openai: the same request through /generate gives the same images")
        r = s.post(OPENAI, {"prompt": "1"}, headers={"Accept": "image/png"})
        check(r.status == 200 and len(r.json()["data"]) == 1 and r.json()["seed"] >= 0,
              "openai: defaults (n 1, any size, seed chosen), JSON whatever Accept says")
        for body, status, param, word in [
                ({"prompt": "cat"}, 400, "prompt", "cat"),
                ({"n": 1}, 400, "prompt", "required"),
                ({"prompt": "Trouser", "size": "1024x1024"}, 400, "size", "16x16"),
                ({"prompt": "Trouser", "response_format": "url"}, 400, "response_format", "url"),
                ({"prompt": "Trouser", "n": 99}, 400, "n", "99"),
                ({"class_label": 1}, 400, "class_label", "unknown field"),
                ({"prompt": "Trouser", "model": 3}, 400, "model", None),
                ("{\"prompt\": ", 400, None, "JSON")]:
            is_openai_error(s.post(OPENAI, body), status, param, word)
        r = s.get(OPENAI)
        is_openai_error(r, 405)
        # the native routes keep their own shape
        is_error(s.post("/generate", {"class_label": "cat"}), 400, "class_label")
        # GET /v1/models: OpenAI's list of the one model, and its object
        m = s.get("/v1/models").json()
        name = os.path.basename(ARGS.model)
        check(m.get("object") == "list" and [d.get("id") for d in m.get("data", [])] == [name] and
              m["data"][0].get("object") == "model" and isinstance(m["data"][0].get("created"), int)
              and m["data"][0].get("owned_by") == "ditmoe", f"GET /v1/models: {m}")
        check(s.get("/v1/models/" + name).json() == m["data"][0], "GET /v1/models/{id}")
        is_openai_error(s.get("/v1/models/gpt-image-1"), 404, "model", "gpt-image-1")
    finally:
        s.close()
    k = start("--api-key", "sk-test")
    try:
        is_openai_error(k.post(OPENAI, {"prompt": "Trouser"}), 401)
        is_openai_error(k.get("/v1/models"), 401)
        r = k.post(OPENAI, {"prompt": "Trouser", "steps": 2},
                   headers={"Authorization": "Bearer sk-test"})
        check(r.status == 200, f"openai: the API key as an OpenAI client sends it: {r.status}")
    finally:
        k.close()


# ---- queue -------------------------------------------------------------------

# on the slow model: 32 rows x 1000 steps, minutes; the tests cancel it
LONG = {"class_label": 1, "steps": 1000, "num_images": 16}


def status(s, jid):
    return s.get(f"/jobs/{jid}").json()["status"]


def test_queue():
    s = start("--batching", "false", "--queue-capacity", 2, slow=True)
    try:
        a = s.post("/jobs", LONG).json()["id"]
        wait_for(lambda: status(s, a) == "running", 30, "A running")
        b = s.post("/jobs", LONG).json()
        c = s.post("/jobs", LONG).json()
        check(b["status"] == "queued" and b["queue_position"] == 1, f"B queued first {b}")
        check(c["queue_position"] == 2, f"C second {c}")
        full = s.post("/jobs", LONG)
        is_error(full, 429)
        check(full.header("retry-after", ).isdigit(), "Retry-After on 429")
        check(s.post("/generate", LONG).status == 429, "sync generate also 429 when full")
        # cancelling a queued job frees its place at once
        r = s.request("DELETE", f"/jobs/{b['id']}")
        check(r.status == 200 and r.json()["status"] == "cancelled", f"cancel queued {r.json()}")
        check(s.get(f"/jobs/{c['id']}").json()["queue_position"] == 1, "C moved up")
        d = s.post("/jobs", LONG)
        check(d.status == 202, f"the freed place takes a new job: {d.status}")
        check(s.stats()["queue"]["depth"] == 2, "queue depth 2")
        # cancelling the running job: it stops at the next step, C starts
        r = s.request("DELETE", f"/jobs/{a}")
        check(r.status == 200 and r.json().get("cancel_requested"), "cancel running")
        wait_for(lambda: status(s, a) == "cancelled", 30, "A cancelled")
        wait_for(lambda: status(s, c["id"]) == "running", 30, "C running after A")
        is_error(s.get(f"/jobs/{a}/image"), 409)
        for j in (c["id"], d.json()["id"]):
            s.request("DELETE", f"/jobs/{j}")
        wait_for(lambda: s.stats()["queue"]["running"] == 0, 30, "idle")

        # a client that leaves while its /generate is queued: its job goes
        cancelled0 = s.metric('ditmoe_jobs_total{outcome="cancelled"}')
        a = s.post("/jobs", LONG).json()["id"]
        wait_for(lambda: status(s, a) == "running", 30, "A running")
        body = json.dumps(LONG).encode()
        sock = s.raw(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: s.stats()["queue"]["depth"] == 1, 30, "queued /generate")
        sock.close()
        wait_for(lambda: s.stats()["queue"]["depth"] == 0, 30, "disconnect frees the queue place")
        check(s.metric('ditmoe_jobs_total{outcome="cancelled"}') == cancelled0 + 1,
              "the left client's job is counted cancelled")
        # ... and while it runs
        s.request("DELETE", f"/jobs/{a}")
        wait_for(lambda: s.stats()["queue"]["running"] == 0, 30, "A gone")
        sock = s.raw(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        wait_for(lambda: s.stats()["queue"]["running"] == 1, 30, "running /generate")
        sock.close()
        wait_for(lambda: s.stats()["queue"]["running"] == 0, 30, "disconnect stops the job")
        check(s.metric('ditmoe_jobs_total{outcome="cancelled"}') == cancelled0 + 3,
              "cancelled count")
        wait_for(lambda: " 499 " in s.log(), 10, "499 in the access log")

        # a client leaving an event stream does not cancel the job
        a = s.post("/jobs", LONG).json()["id"]
        wait_for(lambda: status(s, a) == "running", 30, "A running")
        sock = s.raw(b"GET /jobs/%s/events HTTP/1.1\r\nHost: x\r\n\r\n" % a.encode())
        check(sock.recv(4096).startswith(b"HTTP/1.1 200"), "events stream opened")
        sock.close()
        time.sleep(0.5)
        check(status(s, a) == "running", "the job outlives its event stream")
        s.request("DELETE", f"/jobs/{a}")
        wait_for(lambda: status(s, a) == "cancelled", 30, "A cancelled")
    finally:
        s.close()

    # a job past request_timeout_s fails: 504 to its waiting client
    s = start("--request-timeout-s", 1, slow=True)
    try:
        r = s.post("/generate", LONG)
        is_error(r, 504, "request_timeout_s")
        jid = r.header("x-job-id")
        check(jid and s.get(f"/jobs/{jid}").json()["status"] == "failed", "timed-out job failed")
    finally:
        s.close()


# ---- errors ------------------------------------------------------------------

BAD = [
    ("{", 400, "JSON"),
    ("", 400, "JSON"),
    ("[1]", 400, "object"),
    ('{"class_label": 1} x', 400, "byte"),
    ("{}", 400, "class_label"),
    ('{"class_label": 10}', 400, "class_label"),
    ('{"class_label": -1}', 400, "class_label"),
    ('{"class_label": 1.5}', 400, "class_label"),
    ('{"class_label": "Hat"}', 400, "class_label"),
    ('{"class_label": true}', 400, "class_label"),
    ('{"class_label": null}', 400, "class_label"),
    ('{"class_label": 1, "seed": -1}', 400, "seed"),
    ('{"class_label": 1, "seed": 1e300}', 400, "seed"),
    ('{"class_label": 1, "seed": "7"}', 400, "seed"),
    ('{"class_label": 1, "steps": 0}', 400, "steps"),
    ('{"class_label": 1, "steps": 1001}', 400, "steps"),
    ('{"class_label": 1, "steps": "10"}', 400, "steps"),
    ('{"class_label": 1, "cfg_scale": 0.5}', 400, "cfg_scale"),
    ('{"class_label": 1, "cfg_scale": 21}', 400, "cfg_scale"),
    ('{"class_label": 1, "cfg_scale": [1]}', 400, "cfg_scale"),
    ('{"class_label": 1, "sampler": "dpm++9m"}', 400, "sampler"),
    ('{"class_label": 1, "spacing": "cosine"}', 400, "spacing"),
    ('{"class_label": 1, "spacing": "logsnr"}', 400, "spacing"),
    ('{"class_label": 1, "cfg_interval": [0.8, 0.2]}', 400, "cfg_interval"),
    ('{"class_label": 1, "cfg_interval": [0, 1.5]}', 400, "cfg_interval"),
    ('{"class_label": 1, "cfg_interval": 0.5}', 400, "cfg_interval"),
    ('{"class_label": 1, "cfg_interval": [0.1, "x"]}', 400, "cfg_interval"),
    ('{"class_label": 1, "cache": "sometimes"}', 400, "cache"),
    ('{"class_label": 1, "cache": {"mode": "fixed", "interval": 1}}', 400, "cache.interval"),
    ('{"class_label": 1, "cache": {"mode": "adaptive", "threshold": 0}}', 400,
     "cache.threshold"),
    ('{"class_label": 1, "cache": {"mode": "fixed", "every": 2}}', 400, "cache"),
    ('{"class_label": 1, "cache": {"interval": 2}}', 400, "cache"),
    ('{"class_label": 1, "sampler": 1}', 400, "sampler"),
    ('{"class_label": 1, "sampler": "ddpm"}', 400, "ddpm"),
    ('{"class_label": 1, "num_images": 0}', 400, "num_images"),
    ('{"class_label": 1, "num_images": 17}', 400, "num_images"),
    ('{"class_label": 1, "num_images": 16, "cfg_scale": 2}', 400, "num_images"),
    ('{"class_label": 1, "cfg_mode": "half"}', 400, "cfg_mode"),
    ('{"class_label": 1, "rng": "mt"}', 400, "rng"),
    ('{"class_label": 1, "step": 5}', 400, "step"),
    ('{"class_label": 1, "class_label": 2}', 400, "class_label"),
    ('{"class_label": 1, "nested": {"a": [1, 2, {"b": null}]}}', 400, "nested"),
    ('"class_label"', 400, "object"),
    ('{"class_label": 1}\x00', 400, None),
    ("\xff\xfe{", 400, None),
    ("[" * 5000, 400, None),
]


def five_hundreds(s):
    """5xx answers so far (from /metrics; /ready is 503 while loading)."""
    return sum(float(l.split()[-1]) for l in s.get("/metrics").body.decode().splitlines()
               if l.startswith('ditmoe_http_requests_total{code="5'))


def test_errors():
    s = start("--max-rows", 24)
    try:
        fives = five_hundreds(s)
        for body, st, field in BAD:
            for path in ("/generate", "/jobs"):
                r = s.post(path, body.encode("latin-1"))
                is_error(r, st, field)
        # body over the cap: by Content-Length, and chunked without one
        is_error(s.post("/generate", '{"class_label": 1, "x": "' + "a" * 10000 + '"}'), 413)
        c = s.conn()
        c.request("POST", "/generate", body=iter([b'{"class_label": 1, "x": "', b"a" * 9000,
                                                   b'"}']), encode_chunked=True)
        r = c.getresponse()
        check(r.status == 413, f"chunked over the cap: {r.status}")
        c.close()
        # an endless chunked body is cut off rather than read forever
        sock = s.raw(b"POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = 0
        try:
            while sent < 4 * 10 ** 7:
                sock.sendall(b"1000\r\n" + b"a" * 4096 + b"\r\n")
                sent += 4096
        except OSError:
            pass
        check(sent < 4 * 10 ** 7, f"endless body cut off (sent {sent} bytes)")
        sock.close()
        # unknown paths and wrong methods
        is_error(s.get("/nope"), 404, "/nope")
        is_error(s.post("/nope", "{}"), 404)
        is_error(s.get("/jobs/"), 404)
        is_error(s.get("/jobs/x/y/z"), 404)
        for method, path, allow in [("GET", "/generate", "POST"), ("PUT", "/health", "GET, HEAD"),
                                    ("POST", "/stats", "GET, HEAD"),
                                    ("DELETE", "/generate", "POST"),
                                    ("POST", "/jobs/abc", "GET, HEAD, DELETE"),
                                    ("DELETE", "/jobs/abc/image", "GET, HEAD")]:
            r = s.request(method, path, body="{}" if method in ("POST", "PUT") else None)
            is_error(r, 405)
            check(r.header("allow") == allow, f"{method} {path}: Allow {r.header('allow')}")
        # nothing above was a 5xx, and the server still works
        check(five_hundreds(s) == fives, "no 5xx answered to bad input")
        check(s.post("/generate", {"class_label": 1, "steps": 2}).status == 200, "still serving")
    finally:
        s.close()


# ---- static ------------------------------------------------------------------

SECRET = "top-secret-content-42"


def test_static():
    root = tempfile.mkdtemp(prefix="ditmoe-web-")
    web = os.path.join(root, "web")
    os.makedirs(os.path.join(web, "sub"))
    files = {"index.html": "<!doctype html><title>x</title>", "app.js": "let a = 1;",
             "style.css": "body{}", "sub/pic.png": "\x89PNG", ".hidden": "no"}
    for name, text in files.items():
        with open(os.path.join(web, name), "w") as f:
            f.write(text)
    with open(os.path.join(root, "secret.txt"), "w") as f:
        f.write(SECRET)
    os.symlink(os.path.join(root, "secret.txt"), os.path.join(web, "link.txt"))
    s = start("--web-root", web)
    try:
        for path, ctype, text in [("/", "text/html", files["index.html"]),
                                  ("/index.html", "text/html", files["index.html"]),
                                  ("/app.js", "text/javascript", files["app.js"]),
                                  ("/style.css", "text/css", files["style.css"]),
                                  ("/sub/pic.png", "image/png", None)]:
            r = s.get(path)
            check(r.status == 200 and r.header("content-type").startswith(ctype),
                  f"GET {path}: {r.status} {r.header('content-type')}")
            check(text is None or r.body.decode() == text, f"GET {path} body")
        for path in ["/../secret.txt", "/%2e%2e/secret.txt", "/sub/../../secret.txt",
                     "/sub/%2E%2E/%2E%2E/secret.txt", "/link.txt", "/.hidden", "/sub/",
                     "/sub", "//etc/passwd", "/..%2fsecret.txt", "/sub\\..\\..\\secret.txt"]:
            r = s.get(path)
            is_error(r, 404)
            check(SECRET.encode() not in r.body, f"{path} leaked the file")
        # raw request lines, which a client library would normalise
        for line in [b"GET /../secret.txt HTTP/1.1", b"GET ../secret.txt HTTP/1.1",
                     b"GET /sub/../../secret.txt HTTP/1.0"]:
            sock = s.raw(line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            sock.close()
            check(SECRET.encode() not in data and not data.startswith(b"HTTP/1.1 200"),
                  f"raw {line!r}: {data[:60]!r}")
        r = s.post("/index.html", "x")
        is_error(r, 405)
        check(r.header("allow") == "GET, HEAD", "static Allow")
    finally:
        s.close()


# ---- auth --------------------------------------------------------------------

def test_auth():
    web = tempfile.mkdtemp(prefix="ditmoe-web-")
    with open(os.path.join(web, "index.html"), "w") as f:
        f.write("page")
    key = "s3cret-key"
    s = start("--web-root", web, "--client-ip-header", "X-Forwarded-For",
              "--trusted-proxies", "10.0.0.0/8, 127.0.0.1/32", "--job-retention-count", 1,
              env={"DITMOE_API_KEY": key})
    try:
        for path in ["/health", "/ready", "/"]:
            check(s.get(path).status == 200, f"{path} open without a key")
        for method, path in [("GET", "/v1/model"), ("GET", "/stats"), ("GET", "/metrics"),
                             ("POST", "/generate"), ("POST", "/jobs"), ("GET", "/jobs/abc"),
                             ("DELETE", "/jobs/abc")]:
            r = s.request(method, path, body="{}" if method == "POST" else None)
            is_error(r, 401)
            check(r.header("www-authenticate") == "Bearer", "WWW-Authenticate")
            for hdr in [{"Authorization": "Bearer wrong"}, {"X-Api-Key": key + "x"},
                        {"X-Api-Key": key[:-1]}, {"Authorization": key}]:
                is_error(s.request(method, path, headers=hdr,
                                   body="{}" if method == "POST" else None), 401)
        check(s.get("/v1/model", headers={"Authorization": "Bearer " + key}).status == 200,
              "Bearer key")
        check(s.get("/v1/model", headers={"X-Api-Key": key}).status == 200, "X-Api-Key")
        ok = {"X-Api-Key": key}
        # retention: only the newest finished job is kept
        a = s.post("/generate", {"class_label": 1, "steps": 2}, headers=ok).header("x-job-id")
        b = s.post("/generate", {"class_label": 1, "steps": 2}, headers=ok).header("x-job-id")
        check(s.get(f"/jobs/{b}", headers=ok).status == 200, "newest job kept")
        is_error(s.get(f"/jobs/{a}", headers=ok), 404, a)
        # the forwarded client address is believed from a trusted proxy (we are one)
        peer = "access 127.0.0.1 GET /health 200"
        before = s.log().count(peer)
        s.get("/health", headers={"X-Forwarded-For": "203.0.113.9, 10.1.2.3"})
        s.get("/health", headers={"X-Forwarded-For": "bogus"})
        # (an access line is written when its request completes, which may
        # be just after the client has its answer)
        check(wait_for(lambda: "access 203.0.113.9 GET /health 200" in s.log(), 5,
                       "the forwarded client's access line"), "client from X-Forwarded-For")
        check(wait_for(lambda: s.log().count(peer) > before, 5, "the bogus header's line"),
              "bad header: the peer address")
    finally:
        s.close()
    # without trust, the header is ignored
    s = start()
    try:
        s.get("/health", headers={"X-Forwarded-For": "203.0.113.9"})
        check("203.0.113.9" not in s.log(), "untrusted X-Forwarded-For ignored")
    finally:
        s.close()


# ---- shutdown ----------------------------------------------------------------

def test_shutdown():
    # a running job finishes within the drain time: its client gets the image
    s = start("--drain-timeout-s", 60, slow=True)
    got = {}

    def gen(key, req):
        try:
            got[key] = s.post("/generate", req)
        except OSError as e:
            got[key] = e
    t = threading.Thread(target=gen, args=("a", {"class_label": 1, "steps": 30}))
    t.start()
    wait_for(lambda: s.stats()["queue"]["running"] == 1, 30, "running")
    rc = s.stop(signal.SIGTERM)
    t.join(60)
    check(rc == 0, f"exit status after SIGTERM: {rc}")
    r = got.get("a")
    check(getattr(r, "status", None) == 200 and r.body[:4] == b"\x89PNG",
          f"drained job answered: {getattr(r, 'status', r)}")
    check("stopped" in s.log(), "stopped logged")
    s.close()

    # a job that cannot finish in time is cancelled: 503, still exit 0
    s = start("--drain-timeout-s", 0, slow=True)
    got.clear()
    t = threading.Thread(target=gen, args=("b", LONG))
    t.start()
    wait_for(lambda: s.stats()["queue"]["running"] == 1, 30, "running")
    t0 = time.monotonic()
    rc = s.stop(signal.SIGINT)
    t.join(60)
    check(rc == 0, f"exit status after SIGINT: {rc}")
    check(time.monotonic() - t0 < 30, "shutdown within the bound")
    r = got.get("b")
    check(getattr(r, "status", None) == 503, f"cancelled by shutdown: {getattr(r, 'status', r)}")
    if getattr(r, "status", None) == 503:
        is_error(r, 503)
    s.close()

    # a second signal during a long drain: the remaining jobs are cancelled
    # at once, their clients answered 503, exit 0 (not killed by the
    # signal, even with OpenBLAS's threads, made before main(), running)
    for sigs in [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM)]:
        s = start("--drain-timeout-s", 600, slow=True, env={"OPENBLAS_NUM_THREADS": "2"})
        got.clear()
        t = threading.Thread(target=gen, args=("c", LONG))
        t.start()
        wait_for(lambda: s.stats()["queue"]["running"] == 1, 30, "running")
        t0 = time.monotonic()
        s.proc.send_signal(sigs[0])
        time.sleep(1)
        check(s.proc.poll() is None, f"{sigs}: still draining after the first signal")
        rc = s.stop(sigs[1], timeout=60)
        t.join(60)
        check(rc == 0, f"{sigs}: exit status after a second signal: {rc}")
        check(time.monotonic() - t0 < 30, f"{sigs}: the second signal ended the drain")
        r = got.get("c")
        check(getattr(r, "status", None) == 503, f"{sigs}: the running job's client got "
              f"{getattr(r, 'status', r)}")
        check("cancelling the remaining jobs now" in s.log(), "the second signal is logged")
        s.close()


# ---- limits ------------------------------------------------------------------

def recv_all(sock):
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def test_limits():
    s = start("--conn-timeout-s", 1, "--header-timeout-s", 2)
    try:
        # a slow client (head never finished) gets 408 after header_timeout_s
        sock = s.raw(b"GET /health HTTP/1.1\r\nHost: x\r\n", timeout=30)
        t0 = time.monotonic()
        data = recv_all(sock)
        took = time.monotonic() - t0
        sock.close()
        check(data.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in data and 1 < took < 10,
              f"slow client: 408 after {took:.1f} s: {data[:80]!r}")
        # ... also when it keeps sending, a byte a second
        sock = s.raw(b"G", timeout=30)
        t0 = time.monotonic()
        try:
            for ch in b"ET /health HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa":
                time.sleep(0.5)
                sock.sendall(bytes([ch]))
        except OSError:
            pass
        took = time.monotonic() - t0
        data = recv_all(sock)
        sock.close()
        check(data.startswith(b"HTTP/1.1 408 ") and took < 10,
              f"dribbling client cut off at header_timeout_s: {took:.1f} s {data[:60]!r}")
        # a body dribbled after its head is cut off at body_timeout_s (the
        # gate waits for small bodies within header_timeout_s: 408 too)
        sock = s.raw(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{", timeout=30)
        data = recv_all(sock)
        sock.close()
        check(data.startswith(b"HTTP/1.1 408 "), f"dribbled body: {data[:60]!r}")
        check(s.get("/health").status == 200, "serving after the slow clients")
    finally:
        s.close()
    s = start("--max-per-ip", 3, "--header-timeout-s", 30)
    try:
        # at most 3 connections from one address wait for their heads: of 6
        # opened (heads unfinished), the 3 oldest are dropped; the rest,
        # finished, are answered
        socks = [s.raw(b"GET /health HTTP/1.1\r\n", timeout=20) for _ in range(6)]
        time.sleep(0.5)
        for sock in socks:
            try:
                sock.sendall(b"Host: x\r\n\r\n")
            except OSError:
                pass
        answered = sum(recv_all(sock).startswith(b"HTTP/1.1 200") for sock in socks)
        check(answered == 3, f"per-IP limit 3: {answered} of 6 connections answered")
        for sock in socks:
            sock.close()
        # and at most 3 open streams per address in the server itself.
        # libmicrohttpd counts closed connections until it reaps them, which
        # takes a moment on a loaded (or sanitised) machine: open streams
        # until 3 are held (refused ones are closed at once), then the next
        # two must be refused while those 3 stay open.
        jid = s.post("/jobs", {"class_label": 1, "steps": 1000, "num_images": 16}).json()["id"]
        head = b"GET /jobs/%s/events HTTP/1.1\r\nHost: x\r\n\r\n" % jid.encode()

        def stream_opens():
            sock = s.raw(head, timeout=20)
            try:
                ok = sock.recv(100).startswith(b"HTTP/1.1 200")
            except OSError:
                ok = False
            if not ok:
                sock.close()
                return None
            return sock

        held, deadline = [], time.time() + 20
        while len(held) < 3 and time.time() < deadline:
            sock = stream_opens()
            if sock:
                held.append(sock)
            else:
                time.sleep(0.25)
        check(len(held) == 3, f"per-IP limit 3: only {len(held)} event streams opened in 20 s")
        extra = [stream_opens() for _ in range(2)]
        check(extra == [None, None],
              f"per-IP limit 3: {sum(x is not None for x in extra)} of 2 streams past the limit opened")
        for sock in held + [x for x in extra if x]:
            sock.close()
        wait_for(lambda: s.try_get("/health") == 200, 10, "serving again")
        s.request("DELETE", f"/jobs/{jid}")
    finally:
        s.close()


# ---- hostile ---------------------------------------------------------------------

def exchange(s, data, shut=False, timeout=10):
    """Sends raw bytes (shutting down the sending side if shut), returns
    all the server sends until it closes."""
    sock = s.raw(data, timeout=timeout)
    if shut:
        sock.shutdown(socket.SHUT_WR)
    out = recv_all(sock)
    sock.close()
    return out


def split_response(data):
    """(status, headers dict, body) of one raw HTTP response."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    st = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/1.") else 0
    hdr = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        hdr[k.strip().lower()] = v.strip()
    return st, hdr, body


def test_hostile():
    """What a hostile or unusual client tried: framing (RFC 9112), a FIFO
    in the web root, forged log lines, error bodies cut mid-character, a
    NUL in a key, an 8 MiB body sent at once (half-closed requests: the
    halfclose group)."""
    web = tempfile.mkdtemp(prefix="ditmoe-web-")
    with open(os.path.join(web, "index.html"), "w") as f:
        f.write("page")
    os.mkfifo(os.path.join(web, "pipe.html"))
    s = start("--web-root", web, "--header-timeout-s", 5)
    try:
        fives = five_hundreds(s)  # /ready while loading
        body = b'{"class_label": 1, "steps": 2}'
        # framing: one answer, our JSON 400, for each of these
        for name, req in [
                ("Content-Length -1", b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
                ("Content-Length abc", b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"),
                ("two Content-Lengths", b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                 b"Content-Length: 3\r\n\r\n%s" % (len(body), body)),
                ("Content-Length and chunked", b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d"
                 b"\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), len(body), body)),
                ("HTTP/1.1 without Host", b"GET /health HTTP/1.1\r\n\r\n"),
                ("two Hosts", b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")]:
            data = exchange(s, req)
            st, hdr, rest = split_response(data)
            check(st == 400 and data.count(b"HTTP/1.1 400") == 1 and hdr.get("content-type") ==
                  "application/json" and json.loads(rest)["error"]["code"] == 400,
                  f"{name}: one JSON 400, got {data[:300]!r}")
        check(exchange(s, b"GET /health HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200"),
              "HTTP/1.0 needs no Host")
        # HEAD on an event stream: its headers, no body
        jid = s.post("/jobs", {"class_label": 1, "steps": 2}).json()["id"]
        data = exchange(s, b"HEAD /jobs/%s/events HTTP/1.1\r\nHost: x\r\n\r\n" % jid.encode())
        st, hdr, rest = split_response(data)
        check(st == 200 and hdr.get("content-type") == "text/event-stream" and rest == b"",
              f"HEAD events: no body: {data!r}")

        # a FIFO in the web root: 404, nothing hangs
        for _ in range(3):
            r = s.get("/pipe.html", timeout=10)
            is_error(r, 404)
        check(s.get("/health", timeout=5).status == 200, "serving after GET of a FIFO")

        # forged access-log lines: control characters are escaped
        s.get("/x%0aaccess%20203.0.113.7%20GET%20/forged%20200%201.0ms")
        s.get("/y%0d%1b[31m")
        time.sleep(0.2)
        log = s.log()
        check(not any(l.startswith("access 203.0.113.7") for l in log.splitlines()),
              "a %0a in the URL forged an access-log line")
        check("/x\\x0aaccess\\x20203.0.113.7" in log and "\\x1b" in log and "\x1b" not in log,
              f"escaped path in the log: {[l for l in log.splitlines() if '/x' in l or '/y' in l]}")

        # error bodies are valid UTF-8, whatever the quoted value
        for value in ["a" * 63 + "é", "é" * 40, "\udcff"]:
            raw_body = ('{"class_label": "%s"}' % value).encode("utf-8", "surrogateescape")
            for path in ("/generate", OPENAI):
                r = s.post(path, raw_body if path == "/generate" else
                           raw_body.replace(b"class_label", b"prompt"))
                try:
                    e = json.loads(r.body.decode("utf-8"))["error"]
                    ok = r.status == 400 and isinstance(e["message"], str)
                except (UnicodeDecodeError, ValueError, KeyError) as ex:
                    ok, e = False, repr(ex)
                check(ok, f"{path} {value[-3:]!r}: valid UTF-8 JSON 400: {r.body[:120]!r} {e}")
        r = s.get("/%ff%fe")
        is_error(r, 404)

        # a NUL in a key or a value: 400, not another field
        for raw_body in [b'{"class_label\\u0000junk": 7}', b'{"class_label": "Trouser\\u0000x"}',
                         b'{"class_label": 1, "steps\\u0000": 3}', b'{"class_label": 1}\x00']:
            is_error(s.post("/jobs", raw_body), 400, "NUL")
        r = s.post("/jobs", b'{"class_label": 1, "steps": 2, "x": "\\\\u0000"}')
        is_error(r, 400, "x: unknown field")  # an escaped backslash, then text: no NUL

        # an 8 MiB body sent without waiting for 100-continue: the 413 arrives
        import http.client
        c = http.client.HTTPConnection(s.host, s.port, timeout=60)
        try:
            c.request("POST", "/generate", body=b"x" * (8 << 20),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            got = (r.status, r.read())
        except OSError as e:
            got = (None, repr(e))
        c.close()
        check(got[0] == 413 and b"payload_too_large" in got[1], f"8 MiB body: {got[0]} {got[1][:100]}")
        # with Expect: 100-continue the 413 comes at once, the body unsent
        data = exchange(s, b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\n"
                        b"Expect: 100-continue\r\n\r\n")
        check(data.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in data,
              f"Expect: 100-continue: {data[:80]!r}")
        check(five_hundreds(s) == fives, "no 5xx: " + " | ".join(
            l for l in s.log().splitlines() if re.search(r" 5\d\d [0-9.]+ms", l)))
    finally:
        s.close()
        shutil.rmtree(web, ignore_errors=True)


# ---- half-close ----------------------------------------------------------------------

def raw_request(method, path, body=None, headers=b""):
    """The bytes of one HTTP/1.1 request (a JSON body if body)."""
    if body is None:
        return b"%s %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (method, path, headers)
    data = json.dumps(body).encode()
    return (b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s"
            b"Content-Length: %d\r\n\r\n%s" % (method, path, headers, len(data), data))


def final_response(data):
    """(interim 1xx status lines, status, headers, body) of raw bytes."""
    interim = []
    while re.match(rb"HTTP/1\.[01] 1\d\d ", data):
        head, _, data = data.partition(b"\r\n\r\n")
        interim.append(head.decode("latin-1"))
    return (interim,) + split_response(data)


def recv_until(sock, marker):
    """What sock receives until marker (or the end)."""
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def png_answer(what, got, size):
    """got (final_response) is a whole 200 PNG of size (w, h, channels)."""
    _, st, hdr, body = got
    ok = st == 200 and hdr.get("content-type") == "image/png" and \
        len(body) == int(hdr.get("content-length", -1))
    try:
        ok = ok and png_decode(body)[:3] == size
    except Exception as e:  # a cut or absent PNG
        ok = False
        body = repr(e).encode()
    return check(ok, f"{what}: a whole 200 PNG, got {st} {hdr} {body[:80]!r}")


def test_halfclose():
    """A client may shut down its sending side after a complete request
    (shutdown(SHUT_WR)) and wait: it gets its whole answer, both those given
    at once (POST /jobs, GETs, static files) and those given after a wait
    (/generate, OpenAI's route: relay.c), also when the wait is long enough
    for the interim 100 Continue that tells it from a client that left (a
    client that closes entirely still cancels its job: the queue group); an
    event stream likewise, its probe a keep-alive comment."""
    s = start("--batching", "false", slow=True)
    size = (32, 32, 1)  # the slow model's images
    try:
        fives = five_hundreds(s)  # /ready while loading
        gen = {"class_label": 1, "steps": 2}
        png_answer("half-closed /generate", final_response(
            exchange(s, raw_request(b"POST", b"/generate", gen), shut=True, timeout=120)), size)
        _, st, hdr, body = final_response(exchange(
            s, raw_request(b"POST", b"/generate", gen, b"Accept: application/json\r\n"),
            shut=True, timeout=120))
        try:
            ok = st == 200 and png_decode(base64.b64decode(
                json.loads(body)["data"][0]["b64_json"]))[:3] == size
        except (ValueError, KeyError, IndexError, TypeError):
            ok = False
        check(ok, f"half-closed /generate, JSON: {st} {body[:120]!r}")
        _, st, hdr, body = final_response(exchange(
            s, raw_request(b"POST", OPENAI.encode(), {"prompt": "Trouser", "steps": 2}),
            shut=True, timeout=120))
        check(st == 200 and b'"b64_json"' in body, f"half-closed {OPENAI}: {st} {body[:120]!r}")

        # answered at once
        _, st, hdr, body = final_response(exchange(
            s, raw_request(b"POST", b"/jobs", gen), shut=True, timeout=120))
        check(st == 202, f"half-closed POST /jobs: {st} {body[:120]!r}")
        jid = json.loads(body)["id"] if st == 202 else ""
        wait_for(lambda: status(s, jid) == "done", 60, "the half-closed client's job done")
        _, st, hdr, body = final_response(exchange(
            s, raw_request(b"GET", b"/jobs/" + jid.encode()), shut=True))
        check(st == 200 and json.loads(body or b"{}").get("id") == jid,
              f"half-closed GET /jobs/ID: {st} {body[:120]!r}")
        png_answer("half-closed GET /jobs/ID/image", final_response(
            exchange(s, raw_request(b"GET", b"/jobs/%s/image" % jid.encode()), shut=True)), size)
        for path, ctype in [(b"/health", "application/json"), (b"/", "text/html")]:
            _, st, hdr, body = final_response(exchange(s, raw_request(b"GET", path), shut=True))
            check(st == 200 and hdr.get("content-type", "").startswith(ctype) and
                  len(body) == int(hdr.get("content-length", -1)),
                  f"half-closed GET {path.decode()}: {st} {hdr}")

        # a long wait: the half-closed client reads the interim 100
        # Continue (a client that left would have answered it with a reset),
        # then its answer
        blocker = s.post("/jobs", LONG).json()["id"]
        wait_for(lambda: status(s, blocker) == "running", 30, "the blocking job running")
        sock = s.raw(raw_request(b"POST", b"/generate", gen), timeout=120)
        sock.shutdown(socket.SHUT_WR)
        head = recv_until(sock, b"\r\n\r\n")
        check(head.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"),
              f"the waiting half-closed client is sent 100 Continue: {head[:80]!r}")
        check(status(s, blocker) == "running", "the blocking job still running")
        s.request("DELETE", f"/jobs/{blocker}")
        got = final_response(head + recv_all(sock))
        sock.close()
        png_answer("half-closed /generate after a wait", got, size)
        check(got[0] == ["HTTP/1.1 100 Continue"], f"one interim answer: {got[0]}")

        # an event stream: at end-of-input (quiet, its job queued) it gets a
        # ': keep-alive' comment at once, the same probe, then its events to
        # the end
        wait_for(lambda: status(s, blocker) == "cancelled", 30, "the blocking job cancelled")
        blocker = s.post("/jobs", LONG).json()["id"]
        wait_for(lambda: status(s, blocker) == "running", 30, "the blocking job running")
        jid = s.post("/jobs", gen).json()["id"]
        sock = s.raw(raw_request(b"GET", b"/jobs/%s/events" % jid.encode()), timeout=120)
        sock.shutdown(socket.SHUT_WR)
        data = recv_until(sock, b": keep-alive")
        check(b": keep-alive" in data and status(s, jid) == "queued",
              f"the half-closed event stream is pinged while its job waits: {data[-120:]!r}")
        s.request("DELETE", f"/jobs/{blocker}")
        _, st, hdr, body = final_response(data + recv_all(sock))
        sock.close()
        check(st == 200 and b"event: queued" in body and b"event: done" in body,
              f"the half-closed event stream runs to the end: {st} {body[-200:]!r}")

        check(five_hundreds(s) == fives, "no 5xx")
    finally:
        s.close()


# ---- attack ------------------------------------------------------------------------

def test_attack():
    """A slow-header attack (bounded, loopback): 4 addresses each hold as
    many connections as max_per_ip allows, sending a header byte every 0.5 s
    and reconnecting when dropped, so they alone could fill max_connections.
    A normal client must still get its answers."""
    s = start("--max-connections", 32, "--max-per-ip", 8, "--header-timeout-s", 4)
    stop = threading.Event()
    held = [0]

    def attacker(addr):
        socks = []
        while not stop.is_set():
            while len(socks) < 8 and not stop.is_set():
                try:
                    k = socket.socket()
                    k.bind((addr, 0))
                    k.settimeout(2)
                    k.connect((s.host, s.port))
                    k.sendall(b"GET /health HTTP/1.1\r\n")
                    socks.append(k)
                except OSError:
                    break
            for k in list(socks):
                try:
                    k.sendall(b"X")
                except OSError:
                    socks.remove(k)
                    k.close()
            held[0] = max(held[0], len(socks))
            time.sleep(0.5)
        for k in socks:
            k.close()
    ts = [threading.Thread(target=attacker, args=(f"127.0.0.{i}",)) for i in range(2, 6)]
    try:
        for t in ts:
            t.start()
        time.sleep(3)
        ok = 0
        for _ in range(8):
            try:
                ok += s.get("/health", timeout=5).status == 200
            except OSError:
                pass
            time.sleep(0.3)
        r = s.post("/generate", {"class_label": 1, "steps": 2}, timeout=30)
        check(ok == 8 and r.status == 200,
              f"under attack ({held[0]} slow connections an address): {ok} of 8 /health "
              f"answered, /generate {r.status}")
        check(held[0] >= 4, f"the attack held connections: {held[0]}")
    finally:
        stop.set()
        for t in ts:
            t.join(30)
        s.close()


# ---- clientlimit ----------------------------------------------------------------------

def test_clientlimit():
    """max_jobs_per_client: one client address cannot take the whole
    queue; Retry-After is estimated from the queued work."""
    s = start("--batching", "false", "--max-jobs-per-client", 3, "--queue-capacity", 10,
              slow=True)
    try:
        ids = [s.post("/jobs", LONG) for _ in range(3)]
        check(all(r.status == 202 for r in ids), f"3 jobs accepted: {[r.status for r in ids]}")
        wait_for(lambda: s.get(f"/jobs/{ids[0].json()['id']}").json()["step"] >= 3, 60,
                 "a few steps (the step time is measured)")
        r = s.post("/jobs", LONG)
        is_error(r, 429, "max_jobs_per_client")
        check(r.json()["error"]["type"] == "client_limit", f"type {r.json()['error']}")
        ra = int(r.header("retry-after") or 0)
        # its first job has ~1000 steps left: far more than a second
        check(ra >= 5, f"Retry-After from the work left: {ra}")
        check(s.post("/generate", LONG).status == 429, "/generate limited too")
        # another address is served
        other = s.request("POST", "/jobs", body=json.dumps(LONG))  # same address: refused
        check(other.status == 429, "still refused")
        import http.client
        c = http.client.HTTPConnection(s.host, s.port, timeout=30, source_address=("127.0.0.2", 0))
        c.request("POST", "/jobs", body=json.dumps(LONG))
        r2 = c.getresponse()
        r2.read()
        c.close()
        check(r2.status == 202, f"another client is not limited: {r2.status}")
        # cancelling one frees a place for the client
        s.request("DELETE", f"/jobs/{ids[2].json()['id']}")
        check(s.post("/jobs", {"class_label": 1, "steps": 2}).status == 202, "a freed place")
        # queue full: Retry-After from the running job's remaining steps
        for j in s.stats()["queue"], :
            pass
        for jid in [x.json()["id"] for x in ids]:
            s.request("DELETE", f"/jobs/{jid}")
    finally:
        s.close()
    s = start("--batching", "false", "--queue-capacity", 1, "--max-jobs-per-client", 0, slow=True)
    try:
        a = s.post("/jobs", LONG).json()["id"]
        wait_for(lambda: s.get(f"/jobs/{a}").json()["step"] >= 3, 60, "A running a few steps")
        b = s.post("/jobs", LONG)
        check(b.status == 202, "queued")
        full = s.post("/jobs", LONG)
        is_error(full, 429, "queue is full")
        ra = int(full.header("retry-after") or 0)
        check(ra >= 5, f"queue full: Retry-After from the running job's work: {ra}")
        s.request("DELETE", f"/jobs/{a}")
        s.request("DELETE", f"/jobs/{b.json()['id']}")
    finally:
        s.close()


# ---- soak ---------------------------------------------------------------------

GARBAGE = [b"\x00\x01\x02garbage\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
           b"FOO /health HTTP/1.1\r\nHost: x\r\n\r\n",
           b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
           b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
           b"POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
           b"GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n",
           b"GET /jobs/" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
           b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{\"class"]


def test_soak():
    """A bounded mixed load on loopback (three rounds of 40 clients x 50
    operations): health checks, generations, jobs cancelled at random,
    malformed requests and abandoned connections. Nothing may get a 5xx or
    an error, the server must stay healthy and exit cleanly, and its RSS
    after the warm-up round must not grow."""
    s = start("--max-connections", 64, "--max-per-ip", 0, "--conn-timeout-s", 3,
              "--max-jobs-per-client", 0, threads=2)
    bad = []

    def client(k):
        rnd = random.Random(k)
        for _ in range(50):
            c = rnd.random()
            try:
                if c < 0.4:
                    r = s.get("/health")
                elif c < 0.55:
                    r = s.post("/generate", {"class_label": rnd.randrange(10),
                                             "steps": rnd.randrange(1, 20),
                                             "num_images": rnd.randrange(1, 4)})
                elif c < 0.7:
                    r = s.post("/jobs", {"class_label": rnd.randrange(10), "steps": 30})
                    if r.status == 202 and rnd.random() < 0.5:
                        r = s.request("DELETE", "/jobs/" + r.json()["id"])
                else:
                    sock = s.raw(b"")
                    try:
                        sock.sendall(rnd.choice(GARBAGE))
                        if rnd.random() < 0.5:
                            sock.recv(100)
                    except OSError:
                        pass
                    sock.close()
                    continue
                if r.status >= 500:
                    bad.append((r.status, r.body[:100]))
            except OSError as e:
                bad.append(repr(e))
    def rss_kb():
        with open(f"/proc/{s.proc.pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    try:
        before = five_hundreds(s)
        rss = []
        for rnd in range(3):  # a warm-up round, then two measured ones
            ts = [threading.Thread(target=client, args=(k + 100 * rnd,)) for k in range(40)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(600)
            wait_for(lambda: s.stats()["queue"]["running"] + s.stats()["queue"]["depth"] == 0,
                     120, "idle after the round")
            rss.append(rss_kb())
        print(f"soak: RSS after each round {rss} kB", flush=True)
        check(not bad, f"errors under load: {bad[:5]}")
        check(five_hundreds(s) == before, "no 5xx under load")
        check(s.get("/health").status == 200, "healthy after the load")
        # the same traffic again must not need more memory (4 MiB of slack
        # for the allocator's arenas). Under AddressSanitizer freed memory
        # sits in its quarantine (up to 256 MiB), so RSS says nothing there;
        # LeakSanitizer checks that build for leaks at exit instead.
        if os.environ.get("DITMOE_SANITIZED") != "address":
            check(rss[2] <= rss[0] + 4096 and rss[1] <= rss[0] + 4096,
                  f"RSS grew after the warm-up: {rss} kB")
    finally:
        s.close()


# ---- config ------------------------------------------------------------------

def run(args, env=None):
    import subprocess
    e = dict(os.environ, **(env or {}))
    return subprocess.run([ARGS.server] + args, capture_output=True, text=True, env=e, timeout=60)


def test_config():
    r = run(["--help"])
    check(r.returncode == 0 and "--max-rows" in r.stdout and "DITMOE_PORT" in r.stdout and
          "DITMOE_LISTEN" in r.stdout and "--healthcheck" in r.stdout, "--help lists the settings")
    d = tempfile.mkdtemp(prefix="ditmoe-cfg-")
    bad = os.path.join(d, "bad.json")
    for text, word in [('{"max_rowz": 3}', "max_rowz"), ('{"port": "x"}', "port"),
                       ('{"max_rows": 0}', "max_rows"), ("{", "JSON"),
                       ('{"batching": 1}', "batching")]:
        with open(bad, "w") as f:
            f.write(text)
        r = run(["--config", bad])
        check(r.returncode == 2 and word in r.stderr, f"config {text}: {r.returncode} {r.stderr}")
        r = run([], env={"DITMOE_CONFIG": bad})
        check(r.returncode == 2 and word in r.stderr, f"DITMOE_CONFIG {text}")
    for args, word in [(["--bogus", "1"], "bogus"), (["--port", "70000"], "port"),
                       (["--threads"], "threads"), (["--client-ip-header", "X-Forwarded-For"],
                                                    "trusted_proxies")]:
        r = run(args)
        check(r.returncode == 2 and word in r.stderr, f"{args}: {r.returncode} {r.stderr}")
    r = run([], env={"DITMOE_PORT": "abc"})
    check(r.returncode == 2 and "DITMOE_PORT" in r.stderr, f"DITMOE_PORT: {r.stderr}")
    # an unknown setting's error names the closest known one
    for args, near in [(["--max-rowz", "3"], "'--max-rows'"), (["--queue_capcity", "3"],
                                                               "'--queue-capacity'"),
                       (["--api_kye", "k"], "'--api-key'"), (["--threds", "2"], "'--threads'")]:
        r = run(args)
        check(r.returncode == 2 and "did you mean " + near in r.stderr, f"{args}: {r.stderr}")
    r = run(["--zzzzzzzzzzzz", "1"])
    check(r.returncode == 2 and "did you mean" not in r.stderr, f"no far guess: {r.stderr}")
    with open(bad, "w") as f:
        f.write('{"max_image": 3}')
    r = run(["--config", bad])
    check(r.returncode == 2 and "did you mean 'max_images'" in r.stderr, f"file typo: {r.stderr}")
    r = run(["--host", "1.2.3"])
    check(r.returncode == 2 and "listen" in r.stderr, f"--host is --listen: {r.stderr}")
    r = run(["--model", "/nonexistent/model", "--port", "0"])
    check(r.returncode == 1 and "/nonexistent/model" in r.stderr, f"missing model: {r.stderr}")
    for args, env, word in [([], {"DITMOE_LISTEN": "localhost"}, "listen"),
                            (["--listen", "1.2.3"], {}, "listen"),
                            (["--instance-id", "a/b"], {}, "instance_id"),
                            ([], {"DITMOE_INSTANCE_ID": "x" * 33}, "instance_id"),
                            (["--sse-keepalive-s", "-1"], {}, "sse_keepalive_s")]:
        r = run(args + ["--port", "0"], env=env)
        check(r.returncode == 2 and word in r.stderr, f"{args} {env}: {r.returncode} {r.stderr}")
    # DITMOE_LISTEN: the address to bind, below the command line
    s = Server(ARGS.server, ARGS.model, listen=None, env={"DITMOE_LISTEN": "127.0.0.2"})
    try:
        check(s.host == "127.0.0.2" and s.get("/health").status == 200, f"DITMOE_LISTEN: {s.host}")
        try:
            socket.create_connection(("127.0.0.1", s.port), timeout=5).close()
            check(False, "DITMOE_LISTEN=127.0.0.2, yet 127.0.0.1 is answered")
        except OSError:
            pass
    finally:
        s.close()
    s = Server(ARGS.server, ARGS.model, env={"DITMOE_LISTEN": "127.0.0.2"})  # --listen 127.0.0.1
    try:
        check(s.host == "127.0.0.1" and s.get("/health").status == 200, "--listen beats DITMOE_LISTEN")
    finally:
        s.close()
    s = Server(ARGS.server, ARGS.model, "--host", "127.0.0.3", listen=None)
    try:
        check(s.host == "127.0.0.3" and s.get("/health").status == 200, f"--host: {s.host}")
        # a busy port is a start-up error naming it, not a silent share
        r = run(["--model", ARGS.model, "--listen", "127.0.0.3", "--port", str(s.port)])
        check(r.returncode == 1 and f"port {s.port}" in r.stderr and "in use" in r.stderr,
              f"busy port: {r.returncode} {r.stderr}")
        check(s.get("/health").status == 200, "the first server still serves")
    finally:
        s.close()
    # reuse_port asks for sharing on purpose
    a = Server(ARGS.server, ARGS.model, "--reuse-port")
    try:
        b = Server(ARGS.server, ARGS.model, "--reuse-port", "--port", a.port)
        check(b.port == a.port, "reuse_port: two servers on one port")
        b.close()
    finally:
        a.close()
    # the example file is valid and holds the defaults
    s = Server(ARGS.server, ARGS.model, "--config", os.path.join(HERE, "..", "..", "config",
                                                                  "server.json"))
    try:
        lim = s.get("/v1/model").json()["limits"]
        check(lim["max_images"] == 16 and lim["max_rows_per_step"] == 32 and
              lim["queue_capacity"] == 64, f"config/server.json: {lim}")
        # web_root "": a build-tree binary serves the source tree's web/
        r = s.get("/")
        with open(os.path.join(HERE, "..", "..", "web", "index.html"), "rb") as f:
            check(r.status == 200 and r.body == f.read(), f"default web root: GET / {r.status}")
    finally:
        s.close()
    # a good file, overridden by the environment, overridden by the command line
    good = os.path.join(d, "good.json")
    with open(good, "w") as f:
        json.dump({"_comment": "test", "max_images": 3, "max_steps": 50, "queue_capacity": 5,
                   "trusted_proxies": ["127.0.0.1", "::1"]}, f)
    s = Server(ARGS.server, None, "--max-steps", 40,
               env={"DITMOE_CONFIG": good, "DITMOE_MODEL": ARGS.model})
    try:
        lim = s.get("/v1/model").json()["limits"]
        check(lim["max_images"] == 3 and lim["max_steps"] == 40 and lim["queue_capacity"] == 5,
              f"file + command line: {lim}")
    finally:
        s.close()


# ---- decode ---------------------------------------------------------------------

def metric_sum(s, prefix):
    return sum(float(l.split()[-1]) for l in s.get("/metrics").body.decode().splitlines()
               if l.startswith(prefix))


def check_timings(t, what):
    """Every part present; the parts add up to at most the total (same clock:
    queue, denoising, decode and encode follow each other within the job)."""
    keys = ["queue_ms", "compute_ms", "decode_ms", "encode_ms", "total_ms"]
    if not check(all(isinstance(t.get(k), (int, float)) and t[k] >= 0 for k in keys),
                 f"{what}: timings {t}"):
        return
    parts = t["queue_ms"] + t["compute_ms"] + t["decode_ms"] + t["encode_ms"]
    check(parts <= t["total_ms"] + 0.005, f"{what}: the parts {parts} exceed total "
          f"{t['total_ms']}: decode/encode counted inside compute_ms? {t}")
    check(t["encode_ms"] > 0 and t["compute_ms"] > 0, f"{what}: compute and encode measured {t}")


def decode_checks(s, req, size, what):
    """One JSON and one PNG generation, a job: timings, headers, metrics."""
    n0 = s.metric("ditmoe_decode_seconds_count")
    e0 = s.metric("ditmoe_encode_seconds_count")
    r = s.post("/generate", req, headers={"Accept": "application/json"})
    d = r.json()
    check(r.status == 200, f"{what}: {r.status}")
    check_timings(d["timings"], what + " JSON")
    w, h, ch, px = png_decode(base64.b64decode(d["data"][0]["b64_json"]))
    check((w, h, ch) == size, f"{what}: image {w}x{h}x{ch}, expected {size}")
    r = s.post("/generate", req)
    hdr = {k: r.header(k) for k in ("x-queue-ms", "x-compute-ms", "x-decode-ms", "x-encode-ms",
                                    "x-total-ms")}
    check(all(v is not None for v in hdr.values()), f"{what}: timing headers {hdr}")
    if all(v is not None for v in hdr.values()):
        check(float(hdr["x-encode-ms"]) > 0 and float(hdr["x-decode-ms"]) >= 0 and
              float(hdr["x-total-ms"]) >= float(hdr["x-compute-ms"]), f"{what}: headers {hdr}")
    jid = s.post("/jobs", req).json()["id"]
    wait_for(lambda: s.get(f"/jobs/{jid}").json()["status"] == "done", 60, "job done")
    st = s.get(f"/jobs/{jid}").json()
    check_timings(st["timings"], what + " job status")
    # one decode and one encode observed per finished job
    check(s.metric("ditmoe_decode_seconds_count") == n0 + 3, f"{what}: ditmoe_decode_seconds_count")
    check(s.metric("ditmoe_encode_seconds_count") == e0 + 3, f"{what}: ditmoe_encode_seconds_count")
    check(s.metric('ditmoe_decode_seconds_bucket{le="+Inf"}') == n0 + 3, f"{what}: +Inf bucket")
    return d, px


def test_decode():
    s = start()
    try:
        # a job still queued or running has no decode yet
        jid = s.post("/jobs", {"class_label": 1, "steps": 1000, "num_images": 16}).json()["id"]
        t = s.get(f"/jobs/{jid}").json()["timings"]
        check(t["decode_ms"] == 0 and t["encode_ms"] == 0, f"unfinished job timings {t}")
        s.request("DELETE", f"/jobs/{jid}")
        wait_for(lambda: s.get(f"/jobs/{jid}").json()["status"] == "cancelled", 30, "cancelled")
        t = s.get(f"/jobs/{jid}").json()["timings"]
        check(t["decode_ms"] == 0 and t["encode_ms"] == 0, f"cancelled job timings {t}")
        decode_checks(s, {"class_label": 2, "steps": 3, "num_images": 3}, (16, 16, 1), "pixel")
        body = s.get("/metrics").body.decode()
        check("# TYPE ditmoe_decode_seconds histogram" in body and
              "# TYPE ditmoe_encode_seconds histogram" in body, "decode/encode histograms typed")
    finally:
        s.close()


def test_decode_latent():
    """decode on a latent model: the VAE's picture and its timings."""
    latent = make_model(ARGS.cache, kind="latent")
    s = Server(ARGS.server, latent)
    try:
        m = s.get("/v1/model").json()
        check(m["image"] == {"width": 16, "height": 16, "channels": 3} and
              m["config"].get("vae") == "vae", f"latent model: {m['image']} {m['config'].get('vae')}")
        d, px = decode_checks(s, {"class_label": 4, "seed": 3, "steps": 2, "num_images": 2},
                              (16, 16, 3), "latent")
        check(len(set(px)) > 8, "the VAE's picture is not flat")
        # the VAE costs more than mapping pixels: its decode shows in decode_ms
        check(d["timings"]["decode_ms"] > 0.01, f"VAE decode measured: {d['timings']}")
        check(metric_sum(s, "ditmoe_decode_seconds_sum") > 0, "ditmoe_decode_seconds_sum > 0")
    finally:
        s.close()
    # the latent model without its VAE: refused at start with the CLI's
    # words, rather than ready and failing every request after its steps
    d = tempfile.mkdtemp(prefix="ditmoe-novae-")
    try:
        for f in os.listdir(latent):
            if f != "vae":
                shutil.copy(os.path.join(latent, f), d)
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        cfg.pop("vae", None)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f)
        r = run(["--model", d, "--port", "0"])
        check(r.returncode == 1 and "a latent model (4-channel samples) whose VAE decoder is not "
              "available" in r.stderr and "listening" in r.stdout,
              f"latent model without a VAE: {r.returncode} {r.stderr[-300:]}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---- instance ---------------------------------------------------------------------

def test_instance():
    s = start("--instance-id", "r1", "--web-root", os.path.join(HERE, "..", "..", "web"))
    try:
        ids = [s.post("/jobs", {"class_label": 1, "steps": 2}).json()["id"] for _ in range(3)]
        ids.append(s.post("/generate", {"class_label": 1, "steps": 2}).header("x-job-id"))
        check(all(re.fullmatch(r"r1-[0-9a-f]{16}", i or "") for i in ids), f"job ids {ids}")
        check(len(set(ids)) == 4, "job ids are unique")
        check(s.get("/v1/model").json()["server"]["instance_id"] == "r1", "/v1/model instance_id")
        # every answer says which instance gave it, errors and streams included
        for method, path, body in [("GET", "/health", None), ("GET", "/ready", None),
                                   ("GET", "/", None), ("GET", "/nope", None),
                                   ("GET", f"/jobs/{ids[0]}", None),
                                   ("GET", f"/jobs/{ids[0]}/image", None),
                                   ("GET", f"/jobs/{ids[0]}/events", None),
                                   ("GET", "/jobs/r2-0123456789abcdef", None),
                                   ("POST", "/generate", "{"), ("PUT", "/stats", "x"),
                                   ("POST", "/jobs", "x" * 9000), ("GET", "/metrics", None)]:
            r = s.request(method, path, body=body)
            check(r.header("x-ditmoe-instance") == "r1",
                  f"{method} {path} ({r.status}): X-Ditmoe-Instance {r.header('x-ditmoe-instance')}")
        st = s.get(f"/jobs/{ids[0]}").json()
        check(st["id"] == ids[0] and st["image"] == f"/jobs/{ids[0]}/image", f"status {st}")
    finally:
        s.close()
    s = start(env={"DITMOE_INSTANCE_ID": "replica_2-b"})
    try:
        r = s.post("/generate", {"class_label": 1, "steps": 2})
        check(r.header("x-ditmoe-instance") == "replica_2-b" and
              re.fullmatch(r"replica_2-b-[0-9a-f]{16}", r.header("x-job-id") or ""),
              f"DITMOE_INSTANCE_ID: {r.header('x-ditmoe-instance')} {r.header('x-job-id')}")
    finally:
        s.close()
    # by default a random id per start: two servers differ
    a, b = start(), start()
    try:
        ia, ib = a.get("/health").header("x-ditmoe-instance"), b.get("/health").header("x-ditmoe-instance")
        check(re.fullmatch(r"[0-9a-f]{8}", ia or "") and re.fullmatch(r"[0-9a-f]{8}", ib or "")
              and ia != ib, f"random instance ids {ia} {ib}")
        jid = a.post("/generate", {"class_label": 1, "steps": 2}).header("x-job-id")
        check(jid.startswith(ia + "-"), f"job id {jid} has the instance prefix {ia}")
        is_error(b.get(f"/jobs/{jid}"), 404, jid)  # the other replica does not know it
    finally:
        a.close()
        b.close()


# ---- keepalive --------------------------------------------------------------------

def test_keepalive():
    """A job waiting in the queue has a quiet event stream: with
    sse_keepalive_s 1 a ': keep-alive' comment comes about every second (a
    proxy's read timeout would otherwise cut it); EventSource-style parsing
    still sees the events, the stream still ends with the job."""
    s = start("--batching", "false", "--sse-keepalive-s", 1, slow=True)
    try:
        a = s.post("/jobs", LONG).json()["id"]
        wait_for(lambda: status(s, a) == "running", 30, "A running")
        b = s.post("/jobs", LONG).json()["id"]
        c = s.conn(timeout=30)
        c.request("GET", f"/jobs/{b}/events")
        r = c.getresponse()
        lines, comments = [], 0
        t0 = time.monotonic()
        try:
            while comments < 3 and time.monotonic() - t0 < 30:
                line = r.readline().decode()
                lines.append(line)
                comments += line == ": keep-alive\n"
        except OSError as e:  # the 30 s socket timeout: a silent stream
            lines.append(repr(e))
        check(comments == 3, f"3 keep-alive comments within 30 s: {lines[-6:]}")
        check(lines[0] == "event: queued\n", f"the stream opens with the queued event: {lines[:2]}")
        check(status(s, b) == "queued", "the job was queued all along")
        for j in (a, b):
            s.request("DELETE", f"/jobs/{j}")
        rest = r.read().decode()
        c.close()
        check("event: cancelled" in rest, f"the stream ends with the job: {rest[-200:]!r}")
    finally:
        s.close()
    # off (0): a quiet stream stays quiet
    s = start("--batching", "false", "--sse-keepalive-s", 0, slow=True)
    try:
        a = s.post("/jobs", LONG).json()["id"]
        wait_for(lambda: status(s, a) == "running", 30, "A running")
        b = s.post("/jobs", LONG).json()["id"]
        sock = s.raw(b"GET /jobs/%s/events HTTP/1.1\r\nHost: x\r\n\r\n" % b.encode(), timeout=2.5)
        data = b""
        try:
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        sock.close()
        check(b"event: queued" in data and b"keep-alive" not in data,
              f"sse_keepalive_s 0: no comments: {data[-200:]!r}")
        for j in (a, b):
            s.request("DELETE", f"/jobs/{j}")
    finally:
        s.close()


# ---- healthcheck -------------------------------------------------------------------

def healthcheck(args, env=None):
    t0 = time.monotonic()
    r = run(["--healthcheck"] + [str(a) for a in args], env=env)
    return r.returncode, r.stderr, time.monotonic() - t0


def test_healthcheck():
    s = start(env={"DITMOE_API_KEY": "k"})  # /health needs no key
    d = tempfile.mkdtemp(prefix="ditmoe-hc-")
    try:
        url = f"http://127.0.0.1:{s.port}"
        cfg = os.path.join(d, "server.json")
        with open(cfg, "w") as f:
            json.dump({"port": s.port, "listen": "0.0.0.0"}, f)
        for args, env in [([url], None), ([url + "/health"], None), ([url + "/ready"], None),
                          (["--port", s.port], None), (["--port", s.port, "--listen", "0.0.0.0"], None),
                          ([], {"DITMOE_PORT": str(s.port)}), ([], {"DITMOE_CONFIG": cfg}),
                          (["--config", cfg], None)]:
            rc, err, _ = healthcheck(args, env)
            check(rc == 0, f"--healthcheck {args} {env}: {rc} {err}")
        r = run([f"--healthcheck={url}"])
        check(r.returncode == 0, f"--healthcheck=URL: {r.returncode} {r.stderr}")
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            free = closed.getsockname()[1]
        # a server that accepts and never answers: unhealthy, after the 2 s deadline
        mute = socket.socket()
        mute.bind(("127.0.0.1", 0))
        mute.listen(4)
        for args, env, word in [([url + "/nope"], None, "404"),
                                ([f"http://127.0.0.1:{free}"], None, "refused"),
                                ([f"http://127.0.0.1:{mute.getsockname()[1]}"], None, "no answer"),
                                (["ftp://x"], None, "URL"), (["http://:80"], None, "URL"),
                                (["--port", 0], None, "port"), (["--port", 70000], None, "port"),
                                ([], {"DITMOE_PORT": str(free)}, "refused")]:
            rc, err, secs = healthcheck(args, env)
            check(rc == 1 and word in err, f"--healthcheck {args} {env}: {rc} {err!r}")
            check(secs < 10, f"--healthcheck {args}: took {secs:.1f} s (deadline 2 s)")
        mute.close()
    finally:
        s.close()
        shutil.rmtree(d, ignore_errors=True)


# ---- install ---------------------------------------------------------------------

def test_install():
    """meson install into a staging dir: the data lands in PREFIX/share/ditmoe
    and the installed binary, run from there, finds its web root and the
    default model in it (not in the source tree), and the bundled
    fashion-mnist-ddpm when named by --model."""
    meson = shutil.which("meson")
    if not check(meson and ARGS.build_root, "meson and --build-root are needed"):
        return
    dest = tempfile.mkdtemp(prefix="ditmoe-install-")
    try:
        r = subprocess.run([meson, "install", "-C", ARGS.build_root, "--no-rebuild",
                            "--destdir", dest], capture_output=True, text=True, timeout=600)
        if not check(r.returncode == 0, f"meson install: {r.stdout[-2000:]} {r.stderr[-2000:]}"):
            return
        info = json.loads(subprocess.run([meson, "introspect", "--buildoptions", ARGS.build_root],
                                         capture_output=True, text=True, check=True).stdout)
        opt = {o["name"]: o["value"] for o in info}
        prefix = dest + opt["prefix"]
        data = os.path.join(prefix, opt["datadir"], "ditmoe")
        src = os.path.join(HERE, "..", "..")
        bundled = [n for n in ("fashion-mnist", "fashion-mnist-ddpm")
                   if os.path.exists(os.path.join(src, "models", n, "config.json"))]
        for rel in ["web/index.html", "web/app.js", "imagenet_classes.txt"] + \
                [f"models/{n}/config.json" for n in bundled]:
            check(os.path.isfile(os.path.join(data, rel)), f"installed {rel} under {data}")
        exe = os.path.join(prefix, opt["bindir"], "ditmoe-server")
        if "fashion-mnist-ddpm" in bundled:  # a bundled model named, not a path
            s = Server(exe, None, "--model", "fashion-mnist-ddpm")
            try:
                log = s.log()
                check(f"model {os.path.join(data, 'models', 'fashion-mnist-ddpm')}:" in log,
                      f"installed fashion-mnist-ddpm by name: {log}")
                check(s.get("/v1/model").json()["model"] == "fashion-mnist-ddpm",
                      "/v1/model names fashion-mnist-ddpm")
            finally:
                s.close()
        args = [] if os.path.exists(os.path.join(data, "models/fashion-mnist/config.json")) else \
            ["--model", ARGS.model]
        s = Server(exe, None, *args)
        try:
            log = s.log()
            check(f"web root {os.path.join(data, 'web')}\n" in log, f"installed web root: {log}")
            if not args:
                check(f"model {os.path.join(data, 'models', 'fashion-mnist')}:" in log,
                      f"installed default model: {log}")
                m = s.get("/v1/model")
                check(m.json()["model"] == "fashion-mnist" and dest not in m.body.decode(),
                      f"/v1/model names the model only: {m.json()['model']}")
            r = s.get("/")
            with open(os.path.join(data, "web", "index.html"), "rb") as f:
                check(r.status == 200 and r.body == f.read(), f"installed GET / {r.status}")
        finally:
            s.close()
    finally:
        shutil.rmtree(dest, ignore_errors=True)


GROUPS = {"api": test_api, "openai": test_openai, "batching": test_batching,
          "solvers": test_solvers, "defaults": test_defaults, "queue": test_queue,
          "errors": test_errors, "static": test_static, "auth": test_auth,
          "shutdown": test_shutdown, "limits": test_limits, "config": test_config,
          "soak": test_soak, "decode": test_decode, "decode_latent": test_decode_latent,
          "instance": test_instance, "keepalive": test_keepalive, "healthcheck": test_healthcheck,
          "install": test_install, "hostile": test_hostile, "halfclose": test_halfclose,
          "attack": test_attack,
          "clientlimit": test_clientlimit}


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("group", choices=sorted(GROUPS))
    p.add_argument("--server", required=True)
    p.add_argument("--cache", required=True, help="where the test model is made once")
    p.add_argument("--build-root", help="the build dir (the install group installs from it)")
    ARGS = p.parse_args()
    ARGS.model = make_model(ARGS.cache)
    ARGS.slow_model = make_model(ARGS.cache, slow=True)
    GROUPS[ARGS.group]()
    finish("server " + ARGS.group)


if __name__ == "__main__":
    main()
