#!/usr/bin/python3
"""pickle_seeds.py DIR: a seed corpus for fuzz_pickle.

Hand-made pickles whose storage keys are record sizes in decimal (as
fuzz_pickle's fake records want), the same wrapped in zips as torch.save
writes them, and, when torch is importable, real torch.save files and their
data.pkl (protocols 2 and 4, F16, a train.py-style checkpoint).
"""
import io
import os
import sys
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pt"))
import test_pt as T  # noqa: E402  (hand-made pickle and zip writers)


def hand_made():
    t = T.pk_tensor("24", "FloatStorage", 6, 0, (2, 3), (3, 1))
    s = T.pk_tensor("m12", "HalfStorage", 6, 1, (3, 2), (1, 3))
    plain = T.pk(T.pk_dict([(T.pk_str("a.weight"), t), (T.pk_str("b"), s)]))
    ema = T.pk(T.pk_dict([(T.pk_str("ema"), T.pk_dict([(T.pk_str("w"), t)])),
                          (T.pk_str("steps"), T.pk_int(7))]))
    rec = {"24": bytes(24), "m12": bytes(12)}
    return {"plain.pkl": plain, "ema.pkl": ema, "plain.pt": T.checkpoint(plain, rec),
            "zip64.pt": T.checkpoint(ema, rec, zip64=True)}


def from_torch():
    try:
        import argparse
        import torch
    except ImportError:
        return {}
    sd = {"w": torch.arange(6.0).reshape(2, 3), "h": torch.ones(4).half(),
          "t": torch.arange(6.0).reshape(3, 2).t()}
    out = {}
    for name, obj, kw in [("sd2", sd, {}), ("sd4", sd, {"pickle_protocol": 4}),
                          ("train", {"model": sd, "ema": sd, "steps": 3,
                                     "args": argparse.Namespace(lr=1e-4, name="x")}, {})]:
        buf = io.BytesIO()
        torch.save(obj, buf, **kw)
        out[name + ".pt"] = buf.getvalue()
        with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
            out[name + ".pkl"] = z.read(pkl)
    return out


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, blob in {**hand_made(), **from_torch()}.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(blob)


if __name__ == "__main__":
    main()
