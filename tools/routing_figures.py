#!/usr/bin/python3
"""routing_figures.py REPORT.json OUT.png: the heatmaps of docs/routing.md.

REPORT.json is what `ditmoe routing --json` prints (or one period of GET
/stats/routing). The picture has one column per MoE layer: on top the
class-by-expert heatmap (one row per class, labelled 0..9 by label), below
it the noise-level-by-expert one (one row per noise bucket, pure noise on
top, labelled by the bucket's lower edge), each cell coloured by the
expert's share of the row's routing assignments on the demo page's
viridis ramp (web/heatmap.js), 0 to the largest share in the picture; a
colour bar with that share, and the even split 1/E marked, underneath. A
row with no assignments (a noise bucket the sampler's grid never visits)
is drawn light grey, not as shares of 0.
Drawn with numpy and zlib only (tools/train/figures.py's PNG writer and
digit font), as the project has no plotting dependency.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "train"))
from figures import draw_text, write_png  # noqa: E402

RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                dtype=np.float64)
CELL, GAP, PANEL_GAP, MARGIN, LABEL = 12, 1, 18, 10, 26
INK = (40, 40, 40)
EMPTY = (225, 225, 225)  # a row without assignments: no shares to colour


def colour(v):
    """viridis-like, v in [0, 1] -> (3,) uint8, as web/heatmap.js colours."""
    x = min(1.0, max(0.0, v)) * (len(RAMP) - 1)
    i = min(len(RAMP) - 2, int(x))
    return np.round(RAMP[i] + (RAMP[i + 1] - RAMP[i]) * (x - i)).astype(np.uint8)


def shares(rows):
    """Each row's shares; NaN for a row without assignments."""
    a = np.asarray(rows, dtype=np.float64)
    s = a.sum(1, keepdims=True)
    return np.divide(a, s, out=np.full_like(a, np.nan), where=s > 0)


def panel(img, x, y, sh, vmax):
    for r, row in enumerate(sh):
        for e, v in enumerate(row):
            yy, xx = y + r * (CELL + GAP), x + e * (CELL + GAP)
            img[yy:yy + CELL, xx:xx + CELL] = EMPTY if np.isnan(v) else colour(v / vmax)


def legend(img, x, y, w, vmax, E):
    for i in range(w):
        img[y:y + 8, x + i] = colour(i / (w - 1))
    even = x + int(round((1 / E) / vmax * (w - 1)))
    if even < x + w:
        img[y - 3:y + 11, even] = INK
        draw_text(img, even - 8, y - 14, f"{1 / E:.3f}"[1:], scale=2, value=INK)
    draw_text(img, x, y + 13, "0", scale=2, value=INK)
    label = f"{vmax:.2f}"[1:] if vmax < 1 else "1"
    draw_text(img, x + w - 8 * len(label), y + 13, label, scale=2, value=INK)


def main():
    if len(sys.argv) != 3:
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        d = json.load(f)
    rep = d.get("routing", d)
    L, E, buckets = rep["num_layers"], rep["num_experts"], rep["noise_buckets"]
    labels = [c["class"] for c in rep["classes"]]
    cls = [shares(lay["class_counts"]) for lay in rep["layers"]]
    noise = [shares(lay["noise_counts"])[::-1] for lay in rep["layers"]]  # pure noise on top
    vmax = max(float(np.nanmax(m, initial=0.0)) for m in cls + noise) or 1.0
    pw, ph_c, ph_n = E * (CELL + GAP), len(labels) * (CELL + GAP), buckets * (CELL + GAP)
    w = MARGIN + LABEL + L * pw + (L - 1) * PANEL_GAP + MARGIN
    h = MARGIN + 14 + ph_c + PANEL_GAP + ph_n + 50
    img = np.full((h, w, 3), 255, np.uint8)
    y_c, y_n = MARGIN + 14, MARGIN + 14 + ph_c + PANEL_GAP
    for l in range(L):
        x = MARGIN + LABEL + l * (pw + PANEL_GAP)
        draw_text(img, x + pw // 2 - 4, MARGIN, str(l), scale=2, value=INK)
        panel(img, x, y_c, cls[l], vmax)
        panel(img, x, y_n, noise[l], vmax)
    for r, k in enumerate(labels):
        draw_text(img, MARGIN, y_c + r * (CELL + GAP) + 1, str(k), scale=2, value=INK)
    for r in range(buckets):
        edge = (buckets - 1 - r) / buckets
        draw_text(img, MARGIN - 4, y_n + r * (CELL + GAP) + 1, f"{edge:.1f}"[1:] if edge else "0",
                  scale=2, value=INK)
    legend(img, MARGIN + LABEL, h - 30, min(240, w - 2 * MARGIN - LABEL), vmax, E)
    write_png(sys.argv[2], img)
    print(f"{sys.argv[2]}: {L} layers, {len(labels)} classes x {E} experts, "
          f"{buckets} noise levels; largest share {vmax:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
