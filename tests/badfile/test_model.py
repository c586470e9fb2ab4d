#!/usr/bin/python3
"""test_model.py DITMOE WORKDIR: broken model directories fail cleanly.

Writes a tiny valid model directory (config.json + model.safetensors, with
the upstream tensor names of docs/model-format.md, random weights) with a
safetensors writer of its own (numpy + struct, no torch), checks that
`ditmoe inspect --model DIR` accepts it, then breaks it one way at a time:
a missing, extra, misshapen or mistyped tensor, a config that disagrees with
the weights, a damaged safetensors container, a bad config.json, and 8-bit
(Q8) expert matrices with their scale tensor missing, misshapen, mistyped,
holding infinity, or present beside a float weight. Each must
make inspect exit non-zero (not by a signal, no sanitizer report) with a
message naming the file and the tensor or field.
"""
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np

CONFIG = {
    "input_size": 8, "patch_size": 2, "in_channels": 1, "hidden_size": 8,
    "depth": 2, "num_heads": 2, "mlp_ratio": 2.0, "num_classes": 3,
    "num_experts": 3, "num_experts_per_tok": 2, "n_shared_experts": 1,
    "learn_sigma": True, "class_dropout_prob": 0.1, "prediction": "velocity",
}


def linear(out, inp, bias=True):
    return {"weight": (out, inp), "bias": (out,)} if bias else {"weight": (out, inp)}


def tensor_shapes(c):
    """Upstream state_dict names -> shapes for config c (docs/model-format.md)."""
    d, p, ch = c["hidden_size"], c["patch_size"], c["in_channels"]
    t = (c["input_size"] // p) ** 2
    cout = ch * (2 if c["learn_sigma"] else 1)
    he, hs = int(c["mlp_ratio"] * d), c["n_shared_experts"] * d
    parts = {
        "x_embedder.proj": {"weight": (d, ch, p, p), "bias": (d,)},
        "t_embedder.mlp.0": linear(d, 256),
        "t_embedder.mlp.2": linear(d, d),
        "y_embedder.embedding_table": {"weight": (c["num_classes"] + 1, d)},
        "final_layer.adaLN_modulation.1": linear(2 * d, d),
        "final_layer.linear": linear(p * p * cout, d),
    }
    for l in range(c["depth"]):
        b = f"blocks.{l}."
        parts[b + "adaLN_modulation.1"] = linear(6 * d, d)
        parts[b + "attn.qkv"] = linear(3 * d, d)
        parts[b + "attn.proj"] = linear(d, d)
        parts[b + "moe.gate"] = {"weight": (c["num_experts"], d)}
        experts = [f"{b}moe.experts.{e}" for e in range(c["num_experts"])]
        for prefix, width in [(x, he) for x in experts] + [(b + "moe.shared_experts", hs)]:
            parts[prefix + ".gate_proj"] = {"weight": (width, d)}
            parts[prefix + ".up_proj"] = {"weight": (width, d)}
            parts[prefix + ".down_proj"] = {"weight": (d, width)}
    shapes = {"pos_embed": (1, t, d)}
    for prefix, ws in parts.items():
        for suffix, shape in ws.items():
            shapes[f"{prefix}.{suffix}"] = shape
    return shapes


def encode_st(tensors, header_edit=None):
    """tensors: {name: (dtype, shape, bytes)} -> .safetensors bytes, spans in
    order; header_edit(header dict) may damage the header first."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (dt, shape, raw) in tensors.items():
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if header_edit:
        header_edit(header)
    h = json.dumps(header).encode()
    h += b" " * (-(8 + len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def f32(shape, rng):
    return ("F32", shape, (rng.standard_normal(shape) * 0.02).astype("<f4").tobytes())


def q8(shape, rng):
    """An I8 matrix and its F16 scales (NAME, NAME_scale), quantised as
    docs/quantization.md says."""
    w = (rng.standard_normal(shape) * 0.02).astype(np.float32).reshape(shape[0], -1, 32)
    d = (np.abs(w).max(axis=2, keepdims=True) / 127).astype(np.float16)
    q = np.clip(np.rint(w / d.astype(np.float32)), -127, 127).astype(np.int8)
    return (("I8", shape, q.tobytes()),
            ("F16", (shape[0], shape[1] // 32), d.astype("<f2").tobytes()))


class ModelDir:
    def __init__(self, root, name, quantised=False):
        self.path = os.path.join(root, name)
        shutil.rmtree(self.path, ignore_errors=True)
        os.makedirs(self.path)
        self.config = dict(CONFIG)
        rng = np.random.default_rng(0)
        if quantised:  # Q8 blocks need 32 input columns
            self.config.update(hidden_size=32)
        self.tensors = {}
        for n, s in tensor_shapes(self.config).items():
            if quantised and "_proj." in n:
                self.tensors[n], self.tensors[n + "_scale"] = q8(s, rng)
            else:
                self.tensors[n] = f32(s, rng)
        self.header_edit = None
        self.raw_weights = None  # bytes to write instead of encoding
        self.raw_config = None

    def write(self):
        with open(os.path.join(self.path, "config.json"), "w") as f:
            f.write(self.raw_config if self.raw_config is not None
                    else json.dumps(self.config, indent=2))
        blob = self.raw_weights
        if blob is None:
            blob = encode_st(self.tensors, self.header_edit)
        if blob is not False:
            with open(os.path.join(self.path, "model.safetensors"), "wb") as f:
                f.write(blob)
        return self.path


def run_inspect(ditmoe, path):
    env = dict(os.environ, UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    r = subprocess.run([ditmoe, "inspect", "--model", path], capture_output=True,
                       text=True, errors="replace", timeout=120, env=env)
    return r.returncode, r.stdout + r.stderr


def case_list():
    """(name, how to break a ModelDir, strings the message must hold)."""
    def drop(name):
        return lambda m: m.tensors.pop(name)

    def reshape(name, shape):
        def f(m):
            dt, _, _ = m.tensors[name]
            m.tensors[name] = f32(shape, np.random.default_rng(1))
        return f

    def set_cfg(**kw):
        return lambda m: m.config.update(kw)

    def retype(name, dt, size):
        def f(m):
            _, shape, _ = m.tensors[name]
            m.tensors[name] = (dt, shape, bytes(size * int(np.prod(shape))))
        return f

    def edit_header(fn):
        def f(m):
            m.header_edit = fn
        return f

    def truncate(m):
        m.raw_weights = encode_st(m.tensors)[:-10]

    def overlap(h):
        h["blocks.1.attn.qkv.weight"]["data_offsets"] = [
            o - 4 for o in h["blocks.1.attn.qkv.weight"]["data_offsets"]]

    def bad_span(h):
        h["pos_embed"]["shape"] = [1, 16, 9]

    st = "model.safetensors"
    return [
        ("missing tensor", drop("blocks.1.attn.proj.weight"),
         [st, "blocks.1.attn.proj.weight", "missing"]),
        ("missing expert", drop("blocks.0.moe.experts.2.down_proj.weight"),
         [st, "blocks.0.moe.experts.2.down_proj.weight"]),
        ("wrong shape", reshape("blocks.0.attn.qkv.weight", (24, 7)),
         [st, "blocks.0.attn.qkv.weight", "shape"]),
        ("wrong pos_embed", reshape("pos_embed", (1, 15, 8)), [st, "pos_embed"]),
        ("extra tensor", lambda m: m.tensors.update(
            {"blocks.0.extra.weight": f32((2, 2), np.random.default_rng(2))}),
         [st, "blocks.0.extra.weight"]),
        ("integer weights", retype("t_embedder.mlp.2.weight", "I64", 8),
         [st, "t_embedder.mlp.2.weight", "I64"]),
        ("config depth 1, weights 2", set_cfg(depth=1), [st, "blocks.1."]),
        ("config depth 3, weights 2", set_cfg(depth=3), [st, "blocks.2."]),
        ("config 4 experts, weights 3", set_cfg(num_experts=4),
         [st, "blocks.0.moe.gate.weight", "[3, 8]", "[4, 8]"]),
        ("config hidden 16, weights 8", set_cfg(hidden_size=16), [st, "tensor '"]),
        ("config 4 classes, weights 3", set_cfg(num_classes=4),
         [st, "y_embedder.embedding_table.weight"]),
        ("truncated file", truncate,
         [st, "blocks.1.moe.shared_experts.down_proj.weight", "run past the end"]),
        ("overlapping spans", edit_header(overlap),
         [st, "blocks.1.attn.qkv.weight", "overlap"]),
        ("span vs shape", edit_header(bad_span), [st, "pos_embed", "span"]),
        ("F64 dtype", edit_header(lambda h: h["pos_embed"].update(dtype="F64")),
         [st, "pos_embed", "F64 is not supported"]),
        ("header not JSON", lambda m: setattr(m, "raw_weights", struct.pack("<Q", 5) + b"hello"),
         [st, "not valid JSON"]),
        ("empty weights", lambda m: setattr(m, "raw_weights", b""), [st, "too short"]),
        ("no weights", lambda m: setattr(m, "raw_weights", False), ["no_weights"]),
        ("config not JSON", lambda m: setattr(m, "raw_config", '{"depth": 2,'),
         ["config.json", "byte"]),
        ("config unknown key", set_cfg(depht=2), ["config.json", "depht"]),
        ("config depth string", set_cfg(depth="2"), ["config.json", "depth"]),
    ]


def q8_case_list():
    """Broken 8-bit models: (name, how to break a quantised ModelDir, strings)."""
    ex = "blocks.1.moe.experts.2.up_proj.weight"
    sh = "blocks.0.moe.shared_experts.down_proj.weight"

    def scale(name, dt, shape, raw=None):
        def f(m):
            size = {"F16": 2, "F32": 4, "I8": 1}[dt] * int(np.prod(shape))
            m.tensors[name + "_scale"] = (dt, shape, raw if raw is not None else bytes(size))
        return f

    def inf_scale(m):
        dt, shape, raw = m.tensors[ex + "_scale"]
        m.tensors[ex + "_scale"] = (dt, shape, raw[:6] + b"\x00\x7c" + raw[8:])

    st = "model.safetensors"
    return [
        ("q8 scale missing", lambda m: m.tensors.pop(ex + "_scale"),
         [st, ex, ex + "_scale", "missing"]),
        ("q8 scale F32", scale(ex, "F32", (64, 1)), [st, ex + "_scale", "F32", "must be F16"]),
        ("q8 scale wrong shape", scale(ex, "F16", (64, 2)),
         [st, ex + "_scale", "[64, 2]", "[64, 1]"]),
        ("q8 scale 1-D", scale(sh, "F16", (32,)), [st, sh + "_scale", "shape [32]"]),
        ("q8 scale infinite", inf_scale, [st, ex + "_scale", "block 3", "not finite"]),
        ("q8 scale beside F32", lambda m: m.tensors.update(
            {"blocks.0.attn.qkv.weight_scale": ("F16", (96, 1), bytes(192))}),
         [st, "blocks.0.attn.qkv.weight_scale", "F32, not I8"]),
        ("q8 bias", lambda m: m.tensors.update(
            {"blocks.0.attn.qkv.bias": ("I8", (96,), bytes(96))}),
         [st, "blocks.0.attn.qkv.bias", "I8 only for 2-D"]),
        ("q8 conv kernel", lambda m: m.tensors.update(
            {"x_embedder.proj.weight": ("I8", (32, 1, 2, 2), bytes(128))}),
         [st, "x_embedder.proj.weight", "I8 only for 2-D"]),
    ]


def main():
    ditmoe, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    failures = []
    good = ModelDir(work, "good").write()
    rc, out = run_inspect(ditmoe, good)
    if rc != 0 or "depth 2" not in out:
        failures.append(f"valid model refused (rc {rc}):\n{out}")
    good_q8 = ModelDir(work, "good_q8", quantised=True).write()
    rc, out = run_inspect(ditmoe, good_q8)
    if rc != 0 or "Q8" not in out:
        failures.append(f"valid 8-bit model refused (rc {rc}):\n{out}")
    cases = [(c, False) for c in case_list()] + [(c, True) for c in q8_case_list()]
    for (name, breaker, want), quantised in cases:
        m = ModelDir(work, name.replace(" ", "_").replace(",", ""), quantised)
        breaker(m)
        path = m.write()
        rc, out = run_inspect(ditmoe, path)
        problems = []
        if rc < 0:
            problems.append(f"killed by signal {-rc}")
        elif rc == 0:
            problems.append("accepted")
        if "Sanitizer" in out or "runtime error" in out:
            problems.append("sanitizer report")
        problems += [f"message lacks '{w}'" for w in want if w not in out]
        if problems:
            failures.append(f"{name}: {', '.join(problems)} (rc {rc}):\n{out.strip()}")
        else:
            print(f"ok  {name}: {out.strip().splitlines()[-1]}")
    if failures:
        print("\n\n".join(failures), file=sys.stderr)
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
