#!/usr/bin/python3
"""test_pt.py: PyTorch checkpoints (pt_open, `ditmoe convert`) and rng_torch
against torch itself.

Usage: test_pt.py CASE BUILD_DIR

BUILD_DIR holds tests/pt/pt_dump, tests/pt/rng_dump, tests/pt/rng_dump_libm
and tools/cli/ditmoe. Cases:
  rng       rng_torch == torch.manual_seed(s); torch.randn(...) bit for bit
  load      torch.save checkpoints (plain, ema/model, train.py style with
            optimizer and argparse args, F16, BF16, protocols 2/4/5,
            strided views) read exactly as torch.load reads them
  forward   `ditmoe forward` on .pt model directories == the safetensors
            path (bit for bit) and the PyTorch model (rel err 1e-4)
  s2        an S/2-8E2A-shaped random checkpoint without config.json:
            preset detection and forward against PyTorch
  convert   `ditmoe convert` output reads back equal and runs the same
  generate  `ditmoe generate --rng torch` on a .pt model (DDPM and
            rectified flow) against the same loop in PyTorch
  bad       hand-made hostile files (no torch needed): each refused with
            a clear message, never a crash (run under AddressSanitizer)
"""
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "ref"))

failures = []


def check(ok, what):
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)
    return ok


def run(cmd, env=None):
    return subprocess.run([str(c) for c in cmd], capture_output=True, env=env)


# ---- hand-made pickles and zips (never unpickled here) ---------------------------

def pk_str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def pk_int(i):
    if 0 <= i < 256:
        return b"K" + bytes([i])
    if -2**31 <= i < 2**31:
        return b"J" + struct.pack("<i", i)
    return b"\x8a\x08" + struct.pack("<q", i)


def pk_tuple(*items):
    return b"(" + b"".join(items) + b"t"


def pk_global(mod, name):
    return b"c" + mod.encode() + b"\n" + name.encode() + b"\n"


def pk_tensor(key, stype, numel, offset, size, stride, loc="cpu"):
    pid = pk_tuple(pk_str("storage"), pk_global("torch", stype), pk_str(key), pk_str(loc),
                   pk_int(numel))
    args = pk_tuple(pid + b"Q", pk_int(offset), pk_tuple(*map(pk_int, size)),
                    pk_tuple(*map(pk_int, stride)), b"\x89",
                    pk_global("collections", "OrderedDict") + b")R")
    return pk_global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def pk_dict(pairs):
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


def pk(body):
    return b"\x80\x02" + body + b"."


def zip_bytes(entries, zip64=False, flags=0, method=0, align=64):
    """A zip of stored entries [(name, bytes)], data aligned like torch.save
    (or not, align=0), optionally with every ZIP64 field in use."""
    out, central = bytearray(), bytearray()
    for name, data in entries:
        nb, crc, off = name.encode(), zlib.crc32(data), len(out)
        pad = (-(off + 30 + len(nb))) % align if align else 0
        if 0 < pad < 4:
            pad += align
        extra = struct.pack("<HH", 0xCAFE, pad - 4) + b"\0" * (pad - 4) if pad else b""
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0, crc,
                           len(data), len(data), len(nb), len(extra)) + nb + extra + data
        sizes = (len(data), len(data), off)
        cextra = b""
        if zip64:
            cextra = struct.pack("<HHQQQ", 1, 24, *sizes)
            sizes = (0xFFFFFFFF,) * 3
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, flags, method, 0, 0,
                               crc, sizes[1], sizes[0], len(nb), len(cextra), 0, 0, 0, 0,
                               sizes[2]) + nb + cextra
    cd_off, n = len(out), len(entries)
    out += central
    if zip64:
        z64 = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), cd_off)
        out += struct.pack("<IIQI", 0x07064B50, 0, z64, 1)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                           0xFFFFFFFF, 0)
    else:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), cd_off, 0)
    return bytes(out)


def checkpoint(pkl, records, top="archive", **kw):
    entries = [(f"{top}/data.pkl", pkl)]
    entries += [(f"{top}/data/{k}", v) for k, v in records.items()]
    entries.append((f"{top}/version", b"3\n"))
    return zip_bytes(entries, **kw)


def f32(*vals):
    return struct.pack(f"<{len(vals)}f", *vals)


def good_pickle():
    """{'a': (2, 3) float32 from storage 0, 'b': the transpose of a 3x2
    storage 1 (strided, saved on a GPU), 'c': 2 elements at offset 3 of
    storage 0}"""
    return pk(pk_dict([(pk_str("a"), pk_tensor("0", "FloatStorage", 6, 0, (2, 3), (3, 1))),
                       (pk_str("b"), pk_tensor("1", "FloatStorage", 6, 0, (2, 3), (1, 2),
                                               "cuda:0")),
                       (pk_str("c"), pk_tensor("0", "FloatStorage", 6, 3, (2,), (1,)))]))


GOOD_RECORDS = {"0": f32(0, 1, 2, 3, 4, 5), "1": f32(10, 11, 12, 13, 14, 15)}


# ---- tools -------------------------------------------------------------------

class Tools:
    def __init__(self, build):
        self.pt_dump = os.path.join(build, "tests", "pt", "pt_dump")
        self.rng_dump = os.path.join(build, "tests", "pt", "rng_dump")
        self.rng_dump_libm = os.path.join(build, "tests", "pt", "rng_dump_libm")
        self.ditmoe = os.path.join(build, "tools", "cli", "ditmoe")

    def dump(self, path):
        r = run([self.pt_dump, path])
        if r.returncode != 0:
            return None, r.stderr.decode(errors="replace").strip()
        return r.stdout.decode().splitlines(), ""

    def expect_fail(self, what, path, needle):
        r = run([self.pt_dump, "--fail", needle, path])
        msg = (r.stdout + r.stderr).decode(errors="replace").strip()
        crashed = r.returncode < 0 or b"Sanitizer" in r.stderr or b"runtime error" in r.stderr
        return check(r.returncode == 0 and not crashed, f"refuses {what}: {msg[:300]}")


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


# ---- case bad ------------------------------------------------------------------

def bad_pickles():
    """(what, pickle bytes, records, expected message part)"""
    t = pk_tensor("0", "FloatStorage", 6, 0, (2, 3), (3, 1))
    sd = lambda v: pk(pk_dict([(pk_str("w"), v)]))  # noqa: E731
    rec = {"0": f32(0, 1, 2, 3, 4, 5)}
    return [
        ("os.system (GLOBAL + REDUCE)", b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.",
         {}, "'os.system', which is not allowed"),
        ("builtins.eval (protocol 4 STACK_GLOBAL)",
         b"\x80\x04\x95\x20\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x04eval\x94"
         b"\x93\x94\x8c\x041+1\x94\x85\x94R\x94.", {}, "'builtins.eval'"),
        ("posix.system hidden under an ignored key",
         pk(pk_dict([(pk_str("model"), pk_dict([(pk_str("w"), t)])),
                     (pk_str("args"), pk_global("posix", "system") + pk_tuple(pk_str("id")) + b"R")])),
         rec, "'posix.system'"),
        ("a non-identifier global", pk(pk_global("o\x01s", "x")), {}, "not an identifier"),
        ("REDUCE of a storage type", pk(pk_global("torch", "FloatStorage") + b")R"), {},
         "REDUCE of torch.FloatStorage is not allowed"),
        ("NEWOBJ of _rebuild_tensor_v2",
         pk(pk_global("torch._utils", "_rebuild_tensor_v2") + b")\x81"), {}, "NEWOBJ of"),
        ("BUILD on a tensor", sd(t + b"}b"), rec, "BUILD on a tensor"),
        ("a persistent id that is not a storage", sd(pk_tuple(pk_str("module")) + b"Q"), {},
         "persistent id"),
        ("a text-protocol opcode", b"\x80\x02I1\n.", {}, "text-protocol"),
        ("INST", b"\x80\x02(ios\nsystem\n.", {}, "not allowed"),
        ("a pickle without STOP", b"\x80\x02}", {}, "without STOP"),
        ("a MARK tuple on an empty stack (fuzz find)", b"\x80\x02(t(", {}, "without STOP"),
        ("APPENDS of nothing", b"\x80\x02](e.", {}, "not a dict"),
        ("protocol 6", b"\x80\x06}.", {}, "protocol 6"),
        ("a string longer than the pickle", b"\x80\x02X\xf0\xff\xff\xff.", {}, "runs past the end"),
        ("a 9-byte integer", b"\x80\x02\x8a\x09" + b"\x01" * 9 + b".", {}, "does not fit"),
        ("a huge memo index", b"\x80\x02}r\xff\xff\xff\xff.", {}, "memo index"),
        ("a memo entry never stored", b"\x80\x02h\x05.", {}, "never stored"),
        ("popping an empty stack", b"\x80\x02\x85.", {}, "needs 1 items"),
        ("a million MARKs", b"\x80\x02" + b"(" * 1000000 + b".", {}, "empty stack"),
        ("a list as the checkpoint", pk(b"]"), {}, "not a dict"),
        ("an empty state_dict", pk(b"}"), {}, "empty"),
        ("ema that is not a dict", pk(pk_dict([(pk_str("ema"), pk_int(3))])), {},
         "checkpoint[\"ema\"] is an int"),
        ("a non-tensor value", sd(pk_int(7)), {}, "is an int, not a tensor"),
        ("a non-string key", pk(pk_dict([(pk_int(1), t)])), rec, "not a string"),
        ("a duplicate key", pk(pk_dict([(pk_str("w"), t), (pk_str("w"), t)])), rec,
         "appears twice"),
        ("a record shorter than its storage", sd(t), {"0": f32(0, 1, 2, 3, 4)},
         "record has 20 bytes"),
        ("a record longer than its storage", sd(t), {"0": f32(*range(7))}, "record has 28 bytes"),
        ("a missing record", sd(t), {}, "has no record"),
        ("an offset outside the storage",
         sd(pk_tensor("0", "FloatStorage", 6, 5, (2,), (1,))), rec, "outside its storage"),
        ("an offset past the storage, empty view",
         sd(pk_tensor("0", "FloatStorage", 6, 7, (0,), (1,))), rec, "outside its storage"),
        ("strides reaching past the storage",
         sd(pk_tensor("0", "FloatStorage", 6, 0, (2, 3), (4, 1))), rec, "outside its storage"),
        ("strides that overflow",
         sd(pk_tensor("0", "FloatStorage", 6, 0, (2, 3), (2**62, 1))), rec, "overflow"),
        ("sizes that overflow",
         sd(pk_tensor("0", "FloatStorage", 6, 0, (2**40, 2**40), (0, 0))), rec, "overflow"),
        ("a negative size", sd(pk_tensor("0", "FloatStorage", 6, 0, (-1,), (1,))), rec,
         "non-negative"),
        ("9 dimensions", sd(pk_tensor("0", "FloatStorage", 6, 0, (1,) * 9, (1,) * 9)), rec,
         "more than 8"),
        ("sizes and strides of different lengths",
         sd(pk_tensor("0", "FloatStorage", 6, 0, (2, 3), (1,))), rec, "2 sizes but 1 strides"),
        ("float64 weights", sd(pk_tensor("0", "DoubleStorage", 3, 0, (3,), (1,))),
         {"0": b"\0" * 24}, "torch.DoubleStorage"),
        ("a storage of 2^61 elements",
         sd(pk_tensor("0", "FloatStorage", 2**61, 0, (1,), (1,))), rec, "record has 24 bytes"),
    ]


def bad_archives(tmp):
    """(what, bytes, expected message part) for archive-level problems."""
    good = checkpoint(good_pickle(), GOOD_RECORDS)
    pkl = good_pickle()
    eocd = good.rfind(b"PK\x05\x06")
    huge_count = good[:eocd + 8] + struct.pack("<HH", 0xFFFE, 0xFFFE) + good[eocd + 12:]
    huge_cd = good[:eocd + 12] + struct.pack("<I", 0x7FFFFFFF) + good[eocd + 16:]
    z64 = checkpoint(pkl, GOOD_RECORDS, zip64=True)
    e64 = z64.rfind(b"PK\x06\x06")
    z64_count = z64[:e64 + 24] + struct.pack("<QQ", 2**62, 2**62) + z64[e64 + 40:]
    bad_crc = bytearray(good)
    bad_crc[good.find(b"\x80\x02") + 3] ^= 0xFF
    with_comment = good[:-2] + struct.pack("<H", 5) + b"hello"
    big_entry = bytearray(good)
    c = good.find(b"PK\x01\x02")
    big_entry[c + 20:c + 28] = struct.pack("<II", 0x7FFFFFF0, 0x7FFFFFF0)
    return [
        ("an empty file", b"", "empty file"),
        ("random bytes", bytes(range(256)) * 4, "not a zip archive"),
        ("a legacy bare pickle", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.", "legacy"),
        ("a truncated zip (first half)", good[:len(good) // 2], "truncated"),
        ("a zip without its last byte", good[:-1], "zip"),
        ("an entry count larger than the directory", huge_count, "claims 65534 entries"),
        ("a central directory larger than the file", huge_cd, "does not fit"),
        ("a ZIP64 entry count of 2^62", z64_count, "claims 4611686018427387904 entries"),
        ("an entry larger than the file", bytes(big_entry), "run past the end"),
        ("a data.pkl with a bad CRC", bytes(bad_crc), "CRC"),
        ("an encrypted entry", checkpoint(pkl, GOOD_RECORDS, flags=1), "encrypted"),
        ("a deflated entry", checkpoint(pkl, GOOD_RECORDS, method=8), "compressed"),
        ("an archive without data.pkl",
         zip_bytes([("archive/data/0", GOOD_RECORDS["0"])]), "no archive/data.pkl"),
        ("an entry outside any folder", zip_bytes([("data.pkl", pkl)]), "top folder"),
        ("a duplicate entry",
         zip_bytes([("archive/data.pkl", pkl), ("archive/data.pkl", pkl)]), "appears twice"),
        ("a big-endian checkpoint",
         zip_bytes([("archive/data.pkl", pkl), ("archive/byteorder", b"big")]), "byteorder"),
        ("an empty zip", zip_bytes([]), "empty zip"),
        ("a zip comment claiming past the end", good[:-2] + struct.pack("<H", 40), "zip"),
    ], with_comment


def case_bad(tools, tmp):
    for i, (what, pkl, records, needle) in enumerate(bad_pickles()):
        tools.expect_fail(what, write(os.path.join(tmp, f"p{i}.pt"), checkpoint(pkl, records)),
                          needle)
    archives, with_comment = bad_archives(tmp)
    for i, (what, data, needle) in enumerate(archives):
        tools.expect_fail(what, write(os.path.join(tmp, f"z{i}.pt"), data), needle)
    # every truncation of a good file fails cleanly
    good = checkpoint(good_pickle(), GOOD_RECORDS)
    clean = True
    for cut in range(0, len(good), 7):
        r = run([tools.pt_dump, "--fail", "", write(os.path.join(tmp, "cut.pt"), good[:cut])])
        clean &= r.returncode == 0
    check(clean, f"refuses all {len(range(0, len(good), 7))} truncations of a good checkpoint")
    # and the good ones load, aligned or not, with ZIP64, with a comment
    want = ["a F32 [2,3] %08x" % zlib.crc32(f32(0, 1, 2, 3, 4, 5)),
            "b F32 [2,3] %08x" % zlib.crc32(f32(10, 12, 14, 11, 13, 15)),
            "c F32 [2] %08x" % zlib.crc32(f32(3, 4))]
    variants = {"aligned": good, "unaligned": checkpoint(good_pickle(), GOOD_RECORDS, align=0),
                "zip64": checkpoint(good_pickle(), GOOD_RECORDS, zip64=True),
                "comment": with_comment,
                "top folder 'x'": checkpoint(good_pickle(), GOOD_RECORDS, top="x")}
    for what, data in variants.items():
        got, err = tools.dump(write(os.path.join(tmp, "good.pt"), data))
        check(got == want, f"reads a hand-made checkpoint ({what}) {err}")


# ---- cases needing torch ------------------------------------------------------------

SMALL = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2,
             mlp_ratio=2.0, num_classes=5, num_experts=4, num_experts_per_tok=2,
             n_shared_experts=1, class_dropout_prob=0.1, learn_sigma=True,
             prediction="epsilon")
S2 = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=12, num_heads=6,
          mlp_ratio=4.0, num_classes=1000, num_experts=8, num_experts_per_tok=2,
          n_shared_experts=2, class_dropout_prob=0.1, learn_sigma=True)


def dtype_name(t):
    import torch
    return {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
            torch.int64: "I64", torch.int32: "I32", torch.int8: "I8"}[t.dtype]


def expected_dump(sd):
    """pt_dump's lines for a state_dict, computed from torch tensors."""
    import torch
    lines = []
    for k, v in sd.items():
        v = v.contiguous()
        raw = (v.view(torch.int16) if v.dtype == torch.bfloat16 else v).numpy().tobytes()
        shape = ",".join(str(s) for s in v.shape)
        lines.append(f"{k} {dtype_name(v)} [{shape}] {zlib.crc32(raw):08x}")
    return lines


def small_model(seed=1, cfg=SMALL):
    import torch
    import ditmoe_ref
    torch.manual_seed(0)
    return ditmoe_ref.randomize_(ditmoe_ref.DiTMoE(cfg), seed).eval()


def train_checkpoint(model, ema):
    """What upstream train.py saves: model, ema, optimizer state, args."""
    import argparse
    import torch
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(2, 4, 8, 8)
    model(x, torch.tensor([1.0, 2.0]), torch.tensor([0, 1])).square().mean().backward()
    opt.step()
    args = argparse.Namespace(model="DiT-S/2", image_size=64, num_experts=4, lr=1e-4,
                              global_seed=0, results_dir="results", ckpt=None)
    return {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
            "args": args}


def case_load(tools, tmp):
    import torch
    m, e = small_model(1), small_model(2)
    sd = m.state_dict()
    strided = dict(sd)
    strided["extra.t"] = torch.randn(3, 5).t()        # a transpose: copied
    strided["extra.view"] = torch.randn(4, 6)[1:3, 2]  # offset + stride
    strided["extra.shared"] = strided["pos_embed"][0, 3]
    strided["extra.scalar"] = torch.tensor(2.5)
    strided["extra.steps"] = torch.tensor([1, 2, 3], dtype=torch.int64)
    strided["extra.i32"] = torch.tensor([4, 5], dtype=torch.int32)
    cases = [
        ("a plain state_dict", sd, sd, {}),
        ("{'ema', 'model', 'opt', 'args'} as train.py", train_checkpoint(m, e), e.state_dict(), {}),
        ("{'model': ...} with steps", {"model": sd, "steps": 100}, sd, {}),
        ("F16", {k: v.half() for k, v in sd.items()}, None, {}),
        ("BF16", {k: v.bfloat16() for k, v in sd.items()}, None, {}),
        ("pickle protocol 4", sd, sd, {"pickle_protocol": 4}),
        ("pickle protocol 5", sd, sd, {"pickle_protocol": 5}),
        ("strided views, scalars, ints", strided, None, {}),
        ("nn.Parameters", dict(m.named_parameters()), None, {}),
        ("DataParallel's 'module.' prefixes", {"model": {"module." + k: v for k, v in sd.items()}},
         sd, {}),
    ]
    for i, (what, obj, want_sd, kw) in enumerate(cases):
        path = os.path.join(tmp, f"ckpt{i}.pt")
        torch.save(obj, path, **kw)
        want = expected_dump({k: v.detach() for k, v in (want_sd or obj).items()})
        got, err = tools.dump(path)
        check(got == want, f"reads {what} as torch.load does ({len(want)} tensors) {err}")
    path = os.path.join(tmp, "legacy.pt")
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    tools.expect_fail("a legacy torch.save file (_use_new_zipfile_serialization=False)", path,
                      "_use_new_zipfile_serialization=False")


def forward_inputs(cfg, n=3):
    import numpy as np
    rng = np.random.default_rng(0)
    c, hw = cfg["in_channels"], cfg["input_size"]
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    t = np.array([0, 500, 999, 250][:n], dtype=np.float32)
    y = np.array([0, cfg["num_classes"], 3, 1][:n], dtype=np.int64)
    return x, t, y


def engine_forward(tools, tmp, model_dir, x, t, y):
    import numpy as np
    paths = [os.path.join(tmp, f"{k}.npy") for k in ("fx", "ft", "fy", "fout")]
    for p, a in zip(paths, (x, t, y)):
        np.save(p, a)
    if os.path.exists(paths[3]):
        os.remove(paths[3])
    r = run([tools.ditmoe, "forward", "--model", model_dir, "--x", paths[0], "--t", paths[1],
             "--y", paths[2], "--out", paths[3]])
    if r.returncode != 0:
        return None, r.stderr.decode(errors="replace").strip()
    return np.load(paths[3]), ""


def torch_forward(model, x, t, y):
    import torch
    with torch.no_grad():
        return model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()


def rel_err(got, want):
    import numpy as np
    return float(np.abs(got - want).max()) / max(1e-30, float(np.abs(want).max()))


def pt_model_dir(tmp, name, obj, cfg):
    """A model directory holding config.json (if cfg) and a .pt checkpoint."""
    import json
    import torch
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    if cfg is not None:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f)
    torch.save(obj, os.path.join(d, "checkpoint.pt"))
    return d


def case_forward(tools, tmp):
    import numpy as np
    import ditmoe_ref
    m, e = small_model(1), small_model(2)
    st_dir = os.path.join(tmp, "st")
    ditmoe_ref.write_model_dir(m, SMALL, st_dir)
    x, t, y = forward_inputs(SMALL)
    base, err = engine_forward(tools, tmp, st_dir, x, t, y)
    if not check(base is not None, f"forward on the safetensors model {err}"):
        return
    half = {k: v.half() for k, v in m.state_dict().items()}
    m_half = ditmoe_ref.DiTMoE(SMALL).eval()
    m_half.load_state_dict({k: v.float() for k, v in half.items()})
    variants = [
        ("plain state_dict", m.state_dict(), m, True),
        ("{'ema': ...}", train_checkpoint(small_model(1), e), e, False),
        ("{'model': ...}", {"model": m.state_dict(), "args": None}, m, True),
        ("F16", half, m_half, False),
    ]
    for i, (name, obj, ref, same_as_st) in enumerate(variants):
        d = pt_model_dir(tmp, f"pt{i}", obj, SMALL)
        got, err = engine_forward(tools, tmp, d, x, t, y)
        if not check(got is not None, f"forward on .pt ({name}) {err}"):
            continue
        want = torch_forward(ref, x, t, y)
        e_rel = rel_err(got, want)
        check(e_rel <= 1e-4, f"forward on .pt ({name}) vs PyTorch: rel err {e_rel:.2e}")
        if same_as_st:
            check(np.array_equal(got, base), f"forward on .pt ({name}) == safetensors path, "
                  "bit for bit")
        shutil.rmtree(d)


def case_s2(tools, tmp):
    import argparse
    import torch
    import ditmoe_ref
    torch.manual_seed(0)
    m = ditmoe_ref.randomize_(ditmoe_ref.DiTMoE(S2), 3).eval()
    args = argparse.Namespace(model="DiT-S/2", num_experts=8, image_size=256)
    d = pt_model_dir(tmp, "s2", {"ema": m.state_dict(), "args": args}, None)
    r = run([tools.ditmoe, "inspect", "--model", d])
    out = (r.stdout + r.stderr).decode(errors="replace")
    check(r.returncode == 0 and "s2-8e2a" in out,
          f"inspect finds preset s2-8e2a for a .pt without config.json: {out.strip()[:80]}")
    check("1000 (1000 named)" in out, "the preset model has the ImageNet class names")
    x, t, y = forward_inputs(dict(S2), n=2)
    y[1] = 1000  # the null class
    got, err = engine_forward(tools, tmp, d, x, t, y)
    if check(got is not None, f"forward on the S/2 .pt {err}"):
        e_rel = rel_err(got, torch_forward(m, x, t, y))
        check(e_rel <= 1e-4, f"S/2 .pt forward vs PyTorch: rel err {e_rel:.2e}")
    import vae_ref  # a small VAE beside the checkpoint, found as the engine finds one
    vae_ref.write_vae_dir(vae_ref.randomize_(vae_ref.VAEDecoder(dict(
        block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8)), 1).eval(),
        os.path.join(d, "vae"))
    out = os.path.join(tmp, "s2_converted")
    r = run([tools.ditmoe, "convert", "--in", os.path.join(d, "checkpoint.pt"), "--out", out])
    if check(r.returncode == 0, f"convert the S/2 .pt {r.stderr.decode()[:300]}"):
        import json
        with open(os.path.join(out, "config.json")) as f:
            cfg = json.load(f)
        bad = [k for k in S2 if cfg.get(k) != S2[k]]
        check(not bad and cfg.get("prediction") == "epsilon",
              f"the preset's config.json (wrong: {bad})")
        check(len(cfg.get("class_names", [])) == 1000 and cfg["class_names"][207] ==
              "golden retriever", "convert embeds the ImageNet class names")
        check(cfg.get("vae") == os.path.realpath(os.path.join(d, "vae")),
              f"convert names the VAE found beside the checkpoint: {cfg.get('vae')}")
        got2, err = engine_forward(tools, tmp, out, x, t, y)
        check(got2 is not None and got is not None and (got2 == got).all(),
              f"converted S/2 runs the same forward {err}")


def case_convert(tools, tmp):
    import json
    import numpy as np
    m, e = small_model(1), small_model(2)
    ck = train_checkpoint(m, e)
    src = pt_model_dir(tmp, "src", ck, SMALL)
    x, t, y = forward_inputs(SMALL)
    want, err = engine_forward(tools, tmp, src, x, t, y)
    check(want is not None, f"forward on the source .pt {err}")
    # a checkpoint in a model directory: its config.json's choices carry over
    # (options still override them)
    out = os.path.join(tmp, "out_dir")
    r = run([tools.ditmoe, "convert", "--in", os.path.join(src, "checkpoint.pt"), "--out", out,
             "--top-k", 1])
    msg = (r.stdout + r.stderr).decode(errors="replace").strip()
    if check(r.returncode == 0 and "config.json" in msg, f"convert inside a model dir: {msg[:300]}"):
        with open(os.path.join(out, "config.json")) as f:
            cfg = json.load(f)
        bad = [k for k in SMALL if k != "num_experts_per_tok" and cfg.get(k) != SMALL[k]]
        check(not bad and cfg["num_experts_per_tok"] == 1,
              f"config.json beside the input carries over, --top-k overrides (wrong: {bad})")
    pt = os.path.join(pt_model_dir(tmp, "bare", ck, None), "checkpoint.pt")
    out = os.path.join(tmp, "out")
    r = run([tools.ditmoe, "convert", "--in", pt, "--out", out])
    check(r.returncode != 0 and b"--num-heads" in r.stderr,
          f"convert asks for --num-heads when no preset matches: {r.stderr.decode().strip()}")
    r = run([tools.ditmoe, "convert", "--in", pt, "--out", out, "--num-heads", 2,
             "--prediction", "epsilon"])
    msg = (r.stdout + r.stderr).decode(errors="replace").strip()
    if not check(r.returncode == 0, f"convert --num-heads 2: {msg[:300]}"):
        return
    got_dump, err = tools.dump(os.path.join(out, "model.safetensors"))
    check(got_dump == tools.dump(pt)[0], f"converted tensors equal the checkpoint's {err}")
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    bad = [k for k in SMALL if cfg.get(k) != SMALL[k]]
    check(not bad, f"inferred config.json equals the model's (wrong: {bad})")
    got, err = engine_forward(tools, tmp, out, x, t, y)
    check(got is not None and want is not None and np.array_equal(got, want),
          f"converted model runs the same forward, bit for bit {err}")
    if got is not None:
        e_rel = rel_err(got, torch_forward(e, x, t, y))
        check(e_rel <= 1e-4, f"converted model vs PyTorch (the ema weights): {e_rel:.2e}")
    r = run([tools.ditmoe, "convert", "--in", pt, "--out", out, "--num-heads", 2])
    check(r.returncode != 0 and b"exists" in r.stderr,
          f"convert refuses to overwrite: {r.stderr.decode().strip()}")
    convert_dtypes(tools, tmp, pt, e, x, t, y)
    convert_q8(tools, tmp, pt, e, x, t, y)
    r = run([tools.ditmoe, "convert", "--in", os.path.join(tmp, "nope.pt"), "--out",
             os.path.join(tmp, "o")])
    check(r.returncode != 0 and b"nope.pt" in r.stderr, "convert names a missing input")


def convert_dtypes(tools, tmp, pt, ema, x, t, y):
    """`convert --dtype`: bytes as torch rounds them, the same forward as
    PyTorch on the rounded weights, F16 overflow refused by name."""
    import copy
    import torch
    for name, dt in (("f16", torch.float16), ("bf16", torch.bfloat16)):
        out = os.path.join(tmp, "out_" + name)
        r = run([tools.ditmoe, "convert", "--in", pt, "--out", out, "--num-heads", 2,
                 "--prediction", "epsilon", "--dtype", name])
        msg = (r.stdout + r.stderr).decode(errors="replace").strip()
        if not check(r.returncode == 0, f"convert --dtype {name}: {msg[:300]}"):
            continue
        sd = {k: v.to(dt) if v.is_floating_point() else v for k, v in ema.state_dict().items()}
        got, err = tools.dump(os.path.join(out, "model.safetensors"))
        check(got == expected_dump(sd), f"--dtype {name}: every tensor as torch's .to({dt}) {err}")
        rounded = copy.deepcopy(ema)
        with torch.no_grad():
            for v in rounded.state_dict().values():
                if v.is_floating_point():
                    v.copy_(v.to(dt).float())
        ours, err = engine_forward(tools, tmp, out, x, t, y)
        e_rel = rel_err(ours, torch_forward(rounded, x, t, y)) if ours is not None else None
        check(e_rel is not None and e_rel <= 1e-4,
              f"--dtype {name} model vs PyTorch on the same rounded weights: {e_rel} {err}")
    big = small_model(3)
    with torch.no_grad():
        big.final_layer.linear.bias[1] = 1e6
    path = os.path.join(tmp, "big.pt")
    torch.save(big.state_dict(), path)
    out = os.path.join(tmp, "out_big")
    r = run([tools.ditmoe, "convert", "--in", path, "--out", out, "--num-heads", 2,
             "--dtype", "f16"])
    msg = r.stderr.decode(errors="replace")
    check(r.returncode != 0 and "final_layer.linear.bias" in msg and "65504" in msg
          and not os.path.exists(os.path.join(out, "model.safetensors")),
          f"--dtype f16 refuses a value beyond F16's range, naming the tensor: {msg.strip()}")
    r = run([tools.ditmoe, "convert", "--in", path, "--out", out, "--num-heads", 2,
             "--dtype", "bf16"])
    check(r.returncode == 0, f"--dtype bf16 keeps F32's range: {r.stderr.decode()[:200]}")
    r = run([tools.ditmoe, "convert", "--in", path, "--out", out + "2", "--dtype", "f8"])
    check(r.returncode == 2 and b"f8" in r.stderr, f"--dtype f8 refused: {r.stderr.decode()}")


def q8_reference(w):
    """A float32 torch matrix -> (I8 values, F16 scales, dequantised F32) as
    docs/quantization.md defines Q8 (tests/engine/test_q8.py checks the
    engine against this bit for bit)."""
    import numpy as np
    import torch
    b = w.float().numpy().reshape(w.shape[0], -1, 32)
    d = (np.abs(b).max(axis=2, keepdims=True) / np.float32(127)).astype(np.float16)
    df = d.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(df > 0, np.rint(b / np.where(df > 0, df, 1)), 0)
    q = np.clip(q, -127, 127).astype(np.int8)
    return (torch.from_numpy(q.reshape(w.shape)), torch.from_numpy(d[:, :, 0]),
            torch.from_numpy((df * q.astype(np.float32)).reshape(w.shape)))


def convert_q8(tools, tmp, pt, ema, x, t, y):
    """`convert --dtype q8` from an F32 and a BF16 .pt: the experts' matrices
    as I8 + F16 NAME_scale exactly as the reference quantises them, every
    other tensor untouched, and a forward equal to PyTorch's on the
    dequantised weights."""
    import copy
    import torch
    bf = os.path.join(tmp, "bf16.pt")
    bf_sd = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
             for k, v in ema.state_dict().items()}
    torch.save(bf_sd, bf)
    for what, src, src_sd in (("F32", pt, ema.state_dict()), ("BF16", bf, bf_sd)):
        out = os.path.join(tmp, "out_q8_" + what)
        r = run([tools.ditmoe, "convert", "--in", src, "--out", out, "--num-heads", 2,
                 "--prediction", "epsilon", "--dtype", "q8"])
        msg = (r.stdout + r.stderr).decode(errors="replace").strip()
        if not check(r.returncode == 0 and "expert matrices 8-bit" in msg,
                     f"convert --dtype q8 from {what}: {msg[:300]}"):
            continue
        sd, deq = {}, copy.deepcopy(ema)
        for k, v in src_sd.items():
            if "_proj.weight" in k and ".moe." in k:
                q, d, w = q8_reference(v)
                sd[k], sd[k + "_scale"] = q, d
                deq.state_dict()[k].copy_(w)
            else:
                sd[k] = v
                deq.state_dict()[k].copy_(v.float())
        got, err = tools.dump(os.path.join(out, "model.safetensors"))
        check(got is not None and sorted(got) == sorted(expected_dump(sd)),
              f"--dtype q8 from {what}: experts I8 + F16 scales as the reference, the rest "
              f"as stored {err}")
        ours, err = engine_forward(tools, tmp, out, x, t, y)
        e_rel = rel_err(ours, torch_forward(deq, x, t, y)) if ours is not None else None
        check(e_rel is not None and e_rel <= 1e-4,
              f"--dtype q8 from {what} vs PyTorch on the dequantised weights: {e_rel} {err}")


def case_generate(tools, tmp):
    import numpy as np
    import ditmoe_ref
    import samplers_ref
    runs = [("ddpm", "epsilon", 6, 4.0, 2, 2024), ("euler", "velocity", 6, 4.0, 2, 7),
            ("ddpm", "epsilon", 5, 1.0, 1, 3)]
    for sampler, pred, steps, cfg_scale, n, seed in runs:
        cfg = dict(SMALL, prediction=pred)
        m = small_model(4, cfg)
        st_dir = os.path.join(tmp, f"st_{pred}")
        ditmoe_ref.write_model_dir(m, cfg, st_dir)
        d = pt_model_dir(tmp, f"pt_{pred}", {"ema": m.state_dict()}, cfg)
        out = os.path.join(tmp, "gen.npy")
        r = run([tools.ditmoe, "generate", "--model", d, "--out-npy", out, "--sampler", sampler,
                 "--steps", steps, "--cfg-scale", cfg_scale, "--class", 1, "--seed", seed,
                 "--rng", "torch", "--num-images", n])
        what = f"generate --rng torch {sampler} steps={steps} cfg={cfg_scale} n={n} seed={seed}"
        if not check(r.returncode == 0, f"{what} on a .pt model {r.stderr.decode()[:300]}"):
            continue
        got = np.load(out)
        want = samplers_ref.run(st_dir, steps, sampler, cfg_scale, 1, "upstream", "torch",
                                seed, None, n).numpy()
        e_rel = rel_err(got, want)
        check(got.shape == want.shape and e_rel <= 2e-4,
              f"{what} vs the PyTorch loop: rel err {e_rel:.2e}")


SEEDS = [0, 1, 42, 2024, 2**32 + 5, 2**63 + 11]
SIZES = [1, 3, 15, 16, 17, 100, 4 * 32 * 32, 2 * 4 * 32 * 32]


def rng_compare(tools, exe, env, what):
    import numpy as np
    code = ("import sys, torch\nfor s in map(int, sys.argv[1:]):\n"
            "    torch.manual_seed(s)\n"
            f"    for n in {SIZES!r}: sys.stdout.buffer.write(torch.randn(n).numpy().tobytes())\n"
            "    torch.manual_seed(s)\n"
            "    for shape in [(3,), (3,), (2, 4, 5, 5), (1,), (5,), (7, 3), (1, 1)]:\n"
            "        sys.stdout.buffer.write(torch.randn(*shape).numpy().tobytes())\n")
    r = run([sys.executable, "-c", code] + SEEDS, env=env)
    want = np.frombuffer(r.stdout, dtype=np.float32)
    got = []
    for s in SEEDS:
        a = run([exe, s] + SIZES)
        b = run([exe, s, 3, 3, 200, 1, 5, 21, 1])
        got.append(a.stdout + b.stdout)
    got = np.frombuffer(b"".join(got), dtype=np.float32)
    same = got.shape == want.shape and np.array_equal(got.view(np.uint32), want.view(np.uint32))
    bad = int((got.view(np.uint32) != want.view(np.uint32)).sum()) if got.shape == want.shape else -1
    check(same and len(want) > 0,
          f"{what}: {len(want)} draws over seeds {SEEDS}, sizes {SIZES} and consecutive "
          f"shaped draws equal torch bit for bit (mismatches: {bad})")


def case_rng(tools, tmp):
    env = dict(os.environ)
    cap = run([sys.executable, "-c", "import torch; print(torch.__config__.show())"]).stdout
    print("torch:", [ln.strip() for ln in cap.decode().splitlines() if "CPU capability" in ln])
    if b"AVX2" in cap or b"AVX512" in cap:
        rng_compare(tools, tools.rng_dump, env, "rng_torch (AVX2 fill)")
    else:
        print("skip: torch does not use AVX2 here, so rng_torch's default fill is not its")
    env["ATEN_CPU_CAPABILITY"] = "default"
    rng_compare(tools, tools.rng_dump_libm, env, "rng_torch -DRNG_TORCH_LIBM_FILL vs "
                "torch with ATEN_CPU_CAPABILITY=default")


CASES = {"rng": case_rng, "load": case_load, "forward": case_forward, "s2": case_s2,
         "convert": case_convert, "generate": case_generate, "bad": case_bad}


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in CASES:
        print(f"usage: {sys.argv[0]} {'|'.join(CASES)} BUILD_DIR", file=sys.stderr)
        return 2
    if sys.argv[1] != "bad":
        import torch
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        CASES[sys.argv[1]](Tools(sys.argv[2]), tmp)
    if failures:
        print(f"{len(failures)} failure(s): {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
