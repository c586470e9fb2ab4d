#!/usr/bin/python3
"""imagenet_classes.py: the 1000 ImageNet class names, one per line.

Reads torchvision's list (_IMAGENET_CATEGORIES in torchvision/models/_meta.py,
Debian's python3-torchvision) as text with ast, without importing torchvision,
and writes config/imagenet_classes.txt, which the engine loads for 1000-class
models (label i is line i + 1) and `ditmoe convert` embeds in config.json.

Usage: imagenet_classes.py [--meta PATH] [--out PATH] [--check]
  --check   compare with the existing file instead of writing it (exit 1 if
            they differ)
"""
import argparse
import ast
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_META = "/usr/lib/python3/dist-packages/torchvision/models/_meta.py"
DEFAULT_OUT = os.path.join(HERE, "..", "config", "imagenet_classes.txt")


def read_categories(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_IMAGENET_CATEGORIES" for t in node.targets):
            names = ast.literal_eval(node.value)
            break
    else:
        raise SystemExit(f"{path}: no _IMAGENET_CATEGORIES assignment")
    if len(names) != 1000 or not all(isinstance(n, str) and n and "\n" not in n for n in names):
        raise SystemExit(f"{path}: _IMAGENET_CATEGORIES is not 1000 one-line names")
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meta", default=DEFAULT_META)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    text = "".join(n + "\n" for n in read_categories(a.meta))
    if a.check:
        with open(a.out, encoding="utf-8") as f:
            same = f.read() == text
        print(f"{a.out}: {'matches' if same else 'differs from'} {a.meta}")
        return 0 if same else 1
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, a.out)
    print(f"wrote {a.out}: 1000 names")
    return 0


if __name__ == "__main__":
    sys.exit(main())
