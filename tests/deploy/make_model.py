#!/usr/bin/python3
"""make_model.py OUT_DIR: a random-weight model for the deploy tests, used
when the bundled models/fashion-mnist is not in the tree. Bigger than the
server tests' model on purpose: a step of 16 images should take some
milliseconds, so that a job's event stream visibly spans time."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "ref"))
import ditmoe_ref  # noqa: E402


def main():
    out = sys.argv[1]
    cfg = {
        "input_size": 32, "patch_size": 2, "in_channels": 1, "hidden_size": 128, "depth": 4,
        "num_heads": 4, "mlp_ratio": 2.0, "num_classes": 4, "num_experts": 4,
        "num_experts_per_tok": 2, "n_shared_experts": 1, "learn_sigma": False,
        "class_dropout_prob": 0.1, "prediction": "velocity",
        "class_names": ["circle", "square", "line", "dot"],
        "sampling": {"sampler": "euler", "steps": 8, "cfg_scale": 1.0},
    }
    torch.manual_seed(1)
    ditmoe_ref.write_model_dir(ditmoe_ref.randomize_(ditmoe_ref.DiTMoE(cfg), 2).eval(), cfg, out)


if __name__ == "__main__":
    main()
