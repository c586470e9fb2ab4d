#!/usr/bin/python3
"""ditmoe_ref.py: the project's own PyTorch DiT-MoE, the yardstick for the C engine.

It computes what upstream feizc/DiT-MoE models.py computes in eval mode and
uses exactly upstream's state_dict names and shapes, so an upstream checkpoint
loads into it and its weights load into the engine. It is written for clarity,
not speed, except the MoE layer, which gathers each expert's tokens (the same
sum upstream's moe_infer forms) so that training on a CPU is practical.

Model-directory helpers live here too, because the training script, the
parity tests and the benchmarks all write and read the same format:
config.json (upstream constructor arguments plus "prediction" and optional
"class_names", "sampling", "vae", "latent_scale") and model.safetensors,
written by a small writer of our own (F32, F16 or BF16 weights; pos_embed is
always F32 since it is a fixed table, not a learned weight).

Run as a script it self-checks: build random model, write, read back, compare.
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# config.json keys that are DiT constructor arguments, with upstream defaults.
CONFIG_DEFAULTS = {
    "input_size": 32, "patch_size": 2, "in_channels": 4, "hidden_size": 1152,
    "depth": 28, "num_heads": 16, "mlp_ratio": 4.0, "num_classes": 1000,
    "num_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 2,
    "learn_sigma": True, "class_dropout_prob": 0.1,
}
FREQ_DIM = 256  # sinusoidal timestep features, as upstream


# ---- fixed embeddings --------------------------------------------------------

def sincos_1d(dim, pos):
    """(M,) positions -> (M, dim): sines of all frequencies, then cosines."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    ang = np.outer(pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(ang), np.cos(ang)], axis=1)


def sincos_2d(dim, grid):
    """(grid*grid, dim) MAE-style table. Tokens run row-major; the first half
    of the channels encodes the column index, the second half the row."""
    assert dim % 4 == 0, "hidden_size must be a multiple of 4 for sin-cos"
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    return np.concatenate([sincos_1d(dim // 2, cols.astype(np.float32)),
                           sincos_1d(dim // 2, rows.astype(np.float32))], axis=1)


def timestep_features(t, dim=FREQ_DIM, max_period=10000):
    """(N,) timesteps (may be fractional) -> (N, dim): cosines, then sines."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) *
                      torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


# ---- modules (attribute names are upstream's state_dict names) ---------------

class PatchEmbed(nn.Module):
    def __init__(self, c, p, d):
        super().__init__()
        self.proj = nn.Conv2d(c, d, kernel_size=p, stride=p, bias=True)

    def forward(self, x):                        # (N, C, H, W)
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D)


class TimestepEmbedder(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQ_DIM, d), nn.SiLU(), nn.Linear(d, d))

    def forward(self, t):                        # (N,) -> (N, D)
        return self.mlp(timestep_features(t))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes, d, dropout_prob):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), d)

    def forward(self, y):                        # (N,) -> (N, D)
        return self.embedding_table(y)


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        assert d % heads == 0, "hidden_size must be divisible by num_heads"
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):                        # (N, T, D)
        n, t, d = x.shape
        hd = d // self.heads
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]         # (N, heads, T, hd)
        att = (q @ k.transpose(-2, -1)) * hd ** -0.5
        out = att.softmax(dim=-1) @ v            # (N, heads, T, hd)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases: an expert or the shared expert."""
    def __init__(self, d, width):
        super().__init__()
        self.gate_proj = nn.Linear(d, width, bias=False)
        self.up_proj = nn.Linear(d, width, bias=False)
        self.down_proj = nn.Linear(width, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    def __init__(self, d, n_experts):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, d))


class SparseMoE(nn.Module):
    """Softmax router, top-k experts weighted by their (unrenormalised)
    probabilities, plus a shared expert every token goes through."""
    def __init__(self, d, expert_width, n_experts, top_k, shared_width):
        super().__init__()
        self.top_k = top_k
        self.gate = Router(d, n_experts)
        self.experts = nn.ModuleList([SwiGLU(d, expert_width) for _ in range(n_experts)])
        self.shared_experts = SwiGLU(d, shared_width)

    def forward(self, x, aux_alpha=0.0):         # (N, T, D)
        shape = x.shape
        flat = x.reshape(-1, shape[-1])          # (M, D)
        scores = F.linear(flat, self.gate.weight).softmax(dim=-1)  # (M, E)
        topw, topi = torch.topk(scores, self.top_k, dim=-1)        # (M, k)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.nonzero(topi == e, as_tuple=True)
            if rows.numel() == 0:
                continue
            contrib = expert(flat[rows]) * topw[rows, slot].unsqueeze(1)
            out = out.index_add(0, rows, contrib)
        out = out + self.shared_experts(flat)
        aux = None
        if aux_alpha > 0:
            # upstream's (non-sequence) load-balancing loss: E * sum_e f_e P_e
            n_exp = scores.shape[1]
            frac = F.one_hot(topi.reshape(-1), n_exp).float().mean(0)
            aux = (scores.mean(0) * frac * n_exp).sum() * aux_alpha
        return out.reshape(shape), aux


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def layer_norm(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["hidden_size"]
        self.attn = Attention(d, cfg["num_heads"])
        self.moe = SparseMoE(d, int(cfg["mlp_ratio"] * d), cfg["num_experts"],
                             cfg["num_experts_per_tok"], cfg["n_shared_experts"] * d)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x, c, aux_alpha=0.0):
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(modulate(layer_norm(x), sh1, sc1))
        m, aux = self.moe(modulate(layer_norm(x), sh2, sc2), aux_alpha)
        return x + g2.unsqueeze(1) * m, aux


class FinalLayer(nn.Module):
    def __init__(self, d, p, c_out):
        super().__init__()
        self.linear = nn.Linear(d, p * p * c_out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(layer_norm(x), shift, scale))


def full_config(cfg):
    """cfg with every constructor key filled in and checked."""
    out = dict(CONFIG_DEFAULTS)
    out.update(cfg)
    out.setdefault("prediction", "velocity")
    if out["input_size"] % out["patch_size"]:
        raise ValueError("input_size must be a multiple of patch_size")
    if not 1 <= out["num_experts_per_tok"] <= out["num_experts"]:
        raise ValueError("num_experts_per_tok must be in 1..num_experts")
    return out


class DiTMoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        cfg = full_config(cfg)
        self.cfg = cfg
        d, p, c = cfg["hidden_size"], cfg["patch_size"], cfg["in_channels"]
        self.out_channels = c * 2 if cfg["learn_sigma"] else c
        grid = cfg["input_size"] // p
        self.x_embedder = PatchEmbed(c, p, d)
        self.register_buffer("pos_embed", torch.from_numpy(
            sincos_2d(d, grid)).float().unsqueeze(0))            # (1, T, D)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(cfg["num_classes"], d, cfg["class_dropout_prob"])
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg["depth"])])
        self.final_layer = FinalLayer(d, p, self.out_channels)
        self.init_upstream_()

    def init_upstream_(self):
        """Upstream's training init: xavier linears, zeroed adaLN and output."""
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.xavier_uniform_(mod.weight)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
        for blk in self.blocks:
            nn.init.kaiming_uniform_(blk.moe.gate.weight, a=math.sqrt(5))
            nn.init.zeros_(blk.adaLN_modulation[1].weight)
            nn.init.zeros_(blk.adaLN_modulation[1].bias)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        fl = self.final_layer
        for t in (fl.adaLN_modulation[1].weight, fl.adaLN_modulation[1].bias,
                  fl.linear.weight, fl.linear.bias):
            nn.init.zeros_(t)

    def unpatchify(self, x):                     # (N, T, P*P*Cout)
        c, p = self.out_channels, self.cfg["patch_size"]
        g = int(round(x.shape[1] ** 0.5))
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def forward(self, x, t, y, aux_alpha=0.0, return_aux=False):
        """x (N, C, H, W), t (N,), y (N,) long -> (N, Cout, H, W)."""
        h = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (N, D)
        aux_total = x.new_zeros(())
        for blk in self.blocks:
            h, aux = blk(h, c, aux_alpha)
            if aux is not None:
                aux_total = aux_total + aux
        out = self.unpatchify(self.final_layer(h, c))
        return (out, aux_total) if return_aux else out


# ---- random weights for tests --------------------------------------------------

def randomize_(model, seed):
    """Makes every learned weight random (upstream's init zeroes adaLN and the
    output layer, which would hide bugs) with scales that keep activations
    O(1): weights ~ U(+-sqrt(3/fan_in)), biases N(0, 0.1^2), the router
    sharper so that top-k choices are decisive rather than near-ties, adaLN
    small enough that (1 + scale) and the gates stay O(1). pos_embed keeps
    its fixed sin-cos table. Returns the model."""
    g = torch.Generator().manual_seed(seed)

    def uni(t, a):
        t.copy_((torch.rand(t.shape, generator=g) * 2 - 1) * a)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                a = math.sqrt(3.0 / fan_in)
                if name.endswith("moe.gate.weight"):
                    a *= 4.0
                elif "adaLN_modulation" in name:
                    a *= 0.5
                elif name.startswith("y_embedder"):
                    a = 1.0
                uni(p, a)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


# ---- safetensors ---------------------------------------------------------------

_NP_DTYPES = {"F32": np.float32, "F16": np.float16}


def _to_bf16_bits(a):
    """float32 array -> uint16 bfloat16 bits, round to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    out = ((u + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    out[nan] = 0x7FC0
    return out


def _from_bf16_bits(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: (dtype_name, np.ndarray already in that dtype's
    storage type)}. Header padded with spaces so data starts 8-byte aligned;
    tensors follow each other without gaps, as the format requires (readers
    refuse holes in the data region). Written atomically."""
    header, offset, blobs = {}, 0, []
    for name, (dt, arr) in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((-(8 + len(hjson))) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_safetensors(path):
    """-> ({name: float32 np.ndarray}, {name: dtype_name}, metadata). An 8-bit
    matrix (NAME as I8 plus NAME_scale as F16, one scale per 32 columns;
    docs/quantization.md) comes back dequantised as NAME with dtype "Q8",
    d * q in float32 exactly as the engine computes it."""
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    meta = header.pop("__metadata__", {})
    base = 8 + hlen
    arrays, dtypes = {}, {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        raw = data[base + a: base + b]
        dt = info["dtype"]
        if dt == "BF16":
            arr = _from_bf16_bits(np.frombuffer(raw, dtype="<u2"))
        elif dt == "I8":
            arr = np.frombuffer(raw, dtype=np.int8)
        elif dt in _NP_DTYPES:
            arr = np.frombuffer(raw, dtype=np.dtype(_NP_DTYPES[dt]).newbyteorder("<"))
        else:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dt}")
        arrays[name] = arr.astype(np.float32).reshape(info["shape"])
        dtypes[name] = dt
    for name in [n for n, dt in dtypes.items() if dt == "I8"]:
        q, d = arrays[name], arrays.pop(name + "_scale")
        dtypes.pop(name + "_scale")
        arrays[name] = (q.reshape(q.shape[0], -1, 32) * d[:, :, None]).reshape(q.shape)
        dtypes[name] = "Q8"
    return arrays, dtypes, meta


def _encode(arr, dtype):
    if dtype == "F32":
        return arr.astype("<f4")
    if dtype == "F16":
        return arr.astype("<f2")
    if dtype == "BF16":
        return _to_bf16_bits(arr).astype("<u2")
    raise ValueError(f"dtype must be F32, F16 or BF16, not {dtype}")


def write_model_dir(model, cfg, path, dtype="F32", extra=None):
    """Writes path/config.json (cfg: constructor keys plus "prediction" and
    any of "class_names", "sampling", "vae", "latent_scale") and
    path/model.safetensors with weights stored as dtype (pos_embed stays
    F32). `extra` is optional safetensors __metadata__."""
    os.makedirs(path, exist_ok=True)
    cfg = full_config(cfg)
    tensors = {}
    for name, t in model.state_dict().items():
        arr = t.detach().cpu().float().numpy()
        dt = "F32" if name == "pos_embed" else dtype
        tensors[name] = (dt, _encode(arr, dt))
    write_safetensors(os.path.join(path, "model.safetensors"), tensors,
                      dict(extra or {}, format="pt"))
    tmp = os.path.join(path, "config.json.tmp")
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(path, "config.json"))


def load_model_dir(path):
    """-> (model in eval mode with the stored weights in float32, cfg)."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    model = DiTMoE(cfg)
    arrays, _, _ = read_safetensors(os.path.join(path, "model.safetensors"))
    state = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    model.load_state_dict(state, strict=True)
    return model.eval(), full_config(cfg)


def _self_check():
    import tempfile
    torch.manual_seed(0)
    cfg = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=24, depth=2,
               num_heads=3, mlp_ratio=2.0, num_classes=5, num_experts=4,
               num_experts_per_tok=2, n_shared_experts=2, learn_sigma=True,
               class_dropout_prob=0.1)
    m = randomize_(DiTMoE(cfg), 1).eval()
    x = torch.randn(3, 3, 8, 8)
    t = torch.tensor([0.1, 0.5, 0.9])
    y = torch.tensor([0, 4, 5])
    ref = m(x, t, y)
    assert ref.shape == (3, 6, 8, 8)
    with tempfile.TemporaryDirectory() as d:
        for dt, tol in (("F32", 0.0), ("F16", 1e-2), ("BF16", 5e-2)):
            write_model_dir(m, cfg, d, dt)
            m2, _ = load_model_dir(d)
            err = (m2(x, t, y) - ref).abs().max().item() / ref.abs().max().item()
            print(f"{dt}: round-trip rel err {err:.2e}")
            assert err <= tol, dt
    print("ok")


if __name__ == "__main__":
    sys.exit(_self_check())
