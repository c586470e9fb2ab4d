#!/usr/bin/python3
"""figures.py: the figures of docs/training.md, drawn with numpy and zlib only.

  figures.py loss    [--csv .train/loss.csv] [--out docs/loss.png]
      the training loss (MSE of the velocity, log scale) against the step:
      every logged point in grey, a moving average in black, grid lines at
      each power-of-ten step multiple with their values printed in a tiny
      built-in digit font.
  figures.py samples [--ditmoe build/tools/cli/ditmoe] [--out docs/samples.png]
      a 10 classes x 8 seeds grid made by the C engine with the model's
      default sampler settings (one row per class, seeds 0..7 left to right).

matplotlib is not a dependency of the project, hence the plain PNG writer
(8-bit grey or RGB, one IDAT) and the 3x5 digit font.
"""
import argparse
import csv
import os
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# 3x5 glyphs, rows top to bottom, 3 bits each (MSB = left column).
FONT = {
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7),
    "4": (5, 5, 7, 1, 1), "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1),
    "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7), ".": (0, 0, 0, 0, 2), "k": (4, 5, 6, 5, 5),
}


def write_png(path, img):
    """img: (H, W) or (H, W, 3) uint8 -> an 8-bit PNG file."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h, w = img.shape[:2]
    color = 2 if img.ndim == 3 else 0
    raw = b"".join(b"\0" + img[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def draw_text(img, x, y, text, scale=2, value=0):
    for ch in text:
        for r, bits in enumerate(FONT.get(ch, (0,) * 5)):
            for c in range(3):
                if bits >> (2 - c) & 1:
                    img[y + r * scale:y + (r + 1) * scale, x + c * scale:x + (c + 1) * scale] = value
        x += 4 * scale


def draw_line(img, x0, y0, x1, y1, value):
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.linspace(x0, x1, n).round().astype(int)
    ys = np.linspace(y0, y1, n).round().astype(int)
    ok = (xs >= 0) & (xs < img.shape[1]) & (ys >= 0) & (ys < img.shape[0])
    img[ys[ok], xs[ok]] = value


def plot_loss(csv_path, out, w=640, h=360):
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    step = np.array([float(r["step"]) for r in rows])
    mse = np.array([float(r["mse"]) for r in rows])
    k = max(1, len(mse) // 40)
    smooth = np.convolve(mse, np.ones(k) / k, mode="valid")
    img = np.full((h, w), 255, np.uint8)
    left, right, top, bottom = 50, w - 15, 15, h - 30
    lo, hi = np.log10(max(mse.min(), 1e-3)), np.log10(mse.max())
    xmax = step.max()

    def px(s):
        return left + (right - left) * s / xmax

    def py(v):
        return bottom - (bottom - top) * (np.log10(v) - lo) / (hi - lo)

    # vertical grid at round step values, horizontal grid at 0.1, 0.2, 0.5, 1 ...
    unit = 10 ** np.floor(np.log10(xmax / 2))
    for s in np.arange(0, xmax + 1, unit * (2 if xmax / unit > 8 else 1)):
        draw_line(img, px(s), top, px(s), bottom, 225)
        label = f"{int(s / 1000)}k" if s >= 1000 and s % 1000 == 0 else f"{int(s)}"
        draw_text(img, int(px(s)) - 4 * len(label), bottom + 8, label)
    for d in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** d
            if lo <= np.log10(v) <= hi:
                draw_line(img, left, py(v), right, py(v), 225)
                draw_text(img, 4, int(py(v)) - 5, f"{v:g}")
    for i in range(len(step) - 1):
        draw_line(img, px(step[i]), py(mse[i]), px(step[i + 1]), py(mse[i + 1]), 170)
    ss = step[k // 2:k // 2 + len(smooth)]  # centred moving average
    for i in range(len(smooth) - 1):
        draw_line(img, px(ss[i]), py(smooth[i]), px(ss[i + 1]), py(smooth[i + 1]), 0)
    draw_line(img, left, bottom, right, bottom, 0)
    draw_line(img, left, top, left, bottom, 0)
    write_png(out, img)
    print(f"{out}: {len(rows)} points up to step {int(xmax)}, last smoothed mse {smooth[-1]:.4f}")


def sample_grid(ditmoe, model, out, seeds=8, scale=2):
    tiles = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in range(10):
            row = []
            for s in range(seeds):
                p = os.path.join(tmp, f"{c}_{s}.npy")
                subprocess.run([ditmoe, "generate", "--model", model, "--class", str(c),
                                "--seed", str(s), "--out-npy", p], check=True,
                               stdout=subprocess.DEVNULL)
                row.append(np.load(p)[0, 0])
            tiles.append(row)
    pad = 2
    hh, ww = tiles[0][0].shape
    grid = np.full((10 * (hh + pad) + pad, seeds * (ww + pad) + pad), 255, np.uint8)
    for c, row in enumerate(tiles):
        for s, t in enumerate(row):
            y, x = pad + c * (hh + pad), pad + s * (ww + pad)
            grid[y:y + hh, x:x + ww] = np.clip((t + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    write_png(out, grid)
    print(f"{out}: 10 classes x {seeds} seeds")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["loss", "samples"])
    ap.add_argument("--csv", default=os.path.join(ROOT, ".train", "loss.csv"))
    ap.add_argument("--ditmoe", default=os.path.join(ROOT, "build", "tools", "cli", "ditmoe"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "fashion-mnist"))
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.what == "loss":
        plot_loss(args.csv, args.out or os.path.join(ROOT, "docs", "loss.png"))
    else:
        sample_grid(args.ditmoe, args.model, args.out or os.path.join(ROOT, "docs", "samples.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
