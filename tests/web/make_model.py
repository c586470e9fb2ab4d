#!/usr/bin/python3
"""make_model.py OUT_DIR: a small random DiT-MoE shaped like the default
Fashion-MNIST model (28x28 grey, 10 named classes, 8 experts, top-2), for the
browser test when models/fashion-mnist is not in the tree. Its pictures are
noise, but every route, size and routing count is real."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools", "ref"))
import ditmoe_ref as ref  # noqa: E402

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def main(out):
    cfg = dict(input_size=28, patch_size=4, in_channels=1, hidden_size=64, depth=4,
               num_heads=4, mlp_ratio=2.0, num_classes=len(NAMES), num_experts=8,
               num_experts_per_tok=2, n_shared_experts=2, learn_sigma=False,
               class_dropout_prob=0.1, prediction="velocity")
    model = ref.randomize_(ref.DiTMoE(cfg), 7).eval()
    ref.write_model_dir(model, dict(cfg, class_names=NAMES,
                                    sampling=dict(sampler="euler", steps=20, cfg_scale=4.0)), out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_model.py OUT_DIR")
    main(sys.argv[1])
