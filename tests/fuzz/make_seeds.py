#!/usr/bin/python3
"""make_seeds.py DIR: writes a small seed corpus of .safetensors files for fuzz_st."""
import json
import os
import struct
import sys


def st_file(tensors, pad=0, meta=None):
    header, data, off = {}, b"", 0
    if meta is not None:
        header["__metadata__"] = meta
    for name, (dtype, shape, size) in tensors.items():
        n = size
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        data += bytes(range(256)) * (n // 256) + bytes(range(n % 256))
        off += n
    h = json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", len(h)) + h + data


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    seeds = {
        "empty": st_file({}),
        "one": st_file({"w": ("F32", [2, 3], 4)}, pad=3),
        "mixed": st_file({"a.weight": ("F16", [3, 1], 2), "b": ("I64", [2], 8),
                          "c": ("BF16", [], 2), "z": ("I32", [0, 5], 4)},
                         meta={"format": "pt"}),
        # an 8-bit matrix: I8 values and their F16 scales (one per 32 columns)
        "q8": st_file({"blocks.0.moe.experts.0.up_proj.weight": ("I8", [2, 64], 1),
                       "blocks.0.moe.experts.0.up_proj.weight_scale": ("F16", [2, 2], 2)}),
        "json": b'{"a": [1, 2.5e3, -0, "x\\u00e9\\ud83d\\ude00"], "b": {"c": null}}',
    }
    for name, blob in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(blob)


if __name__ == "__main__":
    main()
