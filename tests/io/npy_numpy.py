#!/usr/bin/python3
"""npy_numpy.py BINARY: .npy files pass between NumPy and ditmoe_io unchanged.

NumPy writes arange(n) in several dtypes, shapes and format versions; the C
test (BINARY compat DIR) reads and checks them and writes its own copies,
which NumPy must load with the same dtype, shape and values.
"""
import subprocess
import sys
import tempfile

import numpy as np
from numpy.lib import format as npf

CASES = [  # name, dtype, shape, format version (None: np.save's choice)
    ("f32", "<f4", (2, 3, 4), None),
    ("i32", "<i4", (5,), None),
    ("i64", "<i8", (3, 2), None),
    ("v2", "<f4", (2, 2), (2, 0)),
    ("v3", "<i4", (3,), (3, 0)),
    ("scalar", "<f4", (), None),
    ("empty", "<f4", (0, 3), None),
]


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as d:
        for name, dtype, shape, version in CASES:
            a = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
            with open(f"{d}/{name}.npy", "wb") as f:
                npf.write_array(f, a, version=version)
        subprocess.run([binary, "compat", d], check=True)
        for name, dtype, shape, _ in CASES:
            b = np.load(f"{d}/c_{name}.npy")
            want = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
            assert b.dtype == want.dtype, (name, b.dtype)
            assert b.shape == want.shape, (name, b.shape)
            assert np.array_equal(b, want), name
    print("ok: %d arrays both ways" % len(CASES))


if __name__ == "__main__":
    main()
