"""Vision Mamba (Vim) in plain PyTorch for the mambaquant tools: data, model, safetensors I/O.

The structure is the Vim reference's (hustvl/Vim `vim/models_mamba.py` with the bidirectional
mixer `bimamba_type="v2"` of its `mamba_simple.py`), with the tensor names of its state dict:

  patch_embed.proj.weight [D, C, p, p], .bias [D]   Conv2d(kernel = stride = p): a linear projection
                                                     of each flattened patch (order c, row, col)
  cls_token [1, 1, D]       inserted at token position M // 2 (M patches; "use_middle_cls_token")
  pos_embed [1, M + 1, D]   added after the class token is inserted
  layers.{i}.norm.weight [D]                                   RMSNorm (eps 1e-5), pre-norm
  layers.{i}.mixer.in_proj.weight [2E, D]                      shared by both directions
  layers.{i}.mixer.{conv1d, x_proj, dt_proj, A_log, D}         forward direction
  layers.{i}.mixer.{conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b}  backward direction
  layers.{i}.mixer.out_proj.weight [D, E]                      shared
  norm_f.weight [D]; head.weight [classes, D], head.bias [classes]

Mixer (bimamba v2): [x, z] = hn·W_inᵀ;  y_f = branch_f(x, z);  y_b = flip(branch_b(flip(x), flip(z)))
where a branch is the Mamba-1 inner path (causal conv1d + SiLU, x_proj, softplus(dt_proj), the
selective scan with D skip, gated by SiLU(z)); out = out_proj((y_f + y_b) / 2).  The division by 2
is the reference's `if_devide_out=True`, which all its released Vim-T/S/B models use ("..._div2").
The reference's fused add+norm (residual = residual + mixer_out; hn = RMSNorm(residual)) is the
plain pre-norm residual h ← h + mixer(RMSNorm(h)); the class-token feature is norm_f(h)[cls].
Differences from the reference, all deliberate for an 8×8 data set: 1 input channel, 2×2 patches
(16 patches, 17 tokens), 4 layers, no drop path, RMSNorm everywhere (as the reference's rms_norm=True).

Data: scikit-learn's handwritten digits (Debian package python3-sklearn, `load_digits`: 1,797
8×8 images, pixel values 0..16, 10 classes).  Model input = pixel / 16.  Split: sklearn
`train_test_split(test_size=0.2, random_state=0, stratify=target)` → 1,437 train / 360 test.
Calibration images (for the quantized models) = the first 128 images of the training split.
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mamba_common as mc  # noqa: E402

PIXEL_SCALE = 1.0 / 16.0
SPLIT_SEED = 0
TEST_FRACTION = 0.2
N_CALIB = 128


def load_split():
    """Returns dict with train_x/test_x (uint8 [n, 8, 8], 0..16), train_y/test_y (int64) and the
    training-split indices of the original data set (for the record)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    imgs = d.images.astype(np.uint8)
    assert np.array_equal(imgs.astype(np.float64), d.images)
    idx = np.arange(len(imgs))
    tr, te = train_test_split(idx, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=d.target)
    return {"train_x": imgs[tr], "train_y": d.target[tr].astype(np.int64), "test_x": imgs[te],
            "test_y": d.target[te].astype(np.int64), "train_idx": tr, "test_idx": te}


def to_input(u8):
    """uint8 images [n, H, W] -> float32 model input [n, 1, H, W] = pixel / 16."""
    return torch.from_numpy(u8.astype(np.float32) * PIXEL_SCALE)[:, None]


def default_config(d_model=192, n_layer=4):
    return {
        "model_type": "vim", "architecture": "VisionMamba (bimamba v2, middle class token)",
        "d_model": d_model, "n_layer": n_layer, "d_state": 16, "d_conv": 4, "expand": 2,
        "d_inner": 2 * d_model, "dt_rank": math.ceil(d_model / 16), "image_size": [8, 8], "channels": 1,
        "patch_size": 2, "num_patches": 16, "cls_token_position": 8, "num_classes": 10,
        "norm_eps": 1e-5, "conv_bias": True, "bimamba_type": "v2", "if_divide_out": True,
        "pixel_scale": PIXEL_SCALE,
    }


def branch(x, z, conv, x_proj, dt_proj, A_log, Dskip, R, N, K, scan):
    """One direction of the mixer, Mamba-1's inner path without out_proj:
    x = SiLU(causal_conv1d(x) + b); [dt, B, C] = x·W_xᵀ; Δ = softplus(dt·W_dtᵀ + b_dt);
    y = (scan(x, Δ, A = −exp(A_log), B, C) + D ⊙ x) ⊙ SiLU(z).   x, z: [B, L, E]."""
    L, E = x.shape[1], x.shape[2]
    x = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=K - 1, groups=E)[..., :L].transpose(1, 2)
    x = F.silu(x)
    dbc = mc.linear(x, x_proj.weight)
    dt, Bm, Cm = dbc.split([R, N, N], dim=-1)
    delta = F.softplus(mc.linear(dt.contiguous(), dt_proj.weight) + dt_proj.bias)
    A = -torch.exp(A_log)
    if scan == "fused":
        y = mc.scan_fused(x, delta, A, Bm, Cm)
    else:
        y = mc.scan_reference(x, delta, A, Bm, Cm)
    return (y + x * Dskip) * F.silu(z)


class BiMixer(mc.Mixer):
    """The language model's Mixer (in_proj, forward-direction conv1d/x_proj/dt_proj/A_log/D,
    out_proj; same initialisation) plus the backward direction's own conv1d_b, x_proj_b,
    dt_proj_b, A_b_log, D_b, initialised the same way (from a second Mixer's draw)."""

    def __init__(self, D, E, N, R, K, n_layer, gen):
        super().__init__(D, E, N, R, K, n_layer, gen)
        other = mc.Mixer(D, E, N, R, K, n_layer, gen)
        self.conv1d_b, self.x_proj_b, self.dt_proj_b = other.conv1d, other.x_proj, other.dt_proj
        self.A_b_log, self.D_b = other.A_log, other.D

    def forward(self, hn, scan="fused", taps=None):
        xz = mc.linear(hn, self.in_proj.weight)
        x, z = xz[..., :self.E], xz[..., self.E:]
        a = (self.R, self.N, self.K, scan)
        yf = branch(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, *a)
        yb = branch(x.flip([1]), z.flip([1]), self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log,
                    self.D_b, *a).flip([1])
        y = (yf + yb) / 2
        if taps is not None:
            taps["out_proj_in"] = y
        return mc.linear(y, self.out_proj.weight)


class Layer(nn.Module):
    def __init__(self, *a):
        super().__init__()
        self.norm = mc.RMSNorm(a[0])
        self.mixer = BiMixer(*a)


class VisionMamba(nn.Module):
    def __init__(self, cfg, seed=0):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed)
        D, C, p = cfg["d_model"], cfg["channels"], cfg["patch_size"]
        E, N, R, K, nl = cfg["d_inner"], cfg["d_state"], cfg["dt_rank"], cfg["d_conv"], cfg["n_layer"]
        M = cfg["num_patches"]
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(C, D, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, M + 1, D))
        self.layers = nn.ModuleList([Layer(D, E, N, R, K, nl, gen) for _ in range(nl)])
        self.norm_f = mc.RMSNorm(D, cfg["norm_eps"])
        self.head = nn.Linear(D, cfg["num_classes"])
        with torch.no_grad():   # reference init: lecun-normal patch conv, trunc-normal(0.02) rest
            fan_in = C * p * p
            self.patch_embed.proj.weight.copy_(torch.randn(D, C, p, p, generator=gen) * math.sqrt(1.0 / fan_in))
            self.patch_embed.proj.bias.zero_()
            self.cls_token.copy_((torch.randn(1, 1, D, generator=gen) * 0.02).clamp(-0.04, 0.04))
            self.pos_embed.copy_((torch.randn(1, M + 1, D, generator=gen) * 0.02).clamp(-0.04, 0.04))
            self.head.weight.copy_((torch.randn(cfg["num_classes"], D, generator=gen) * 0.02).clamp(-0.04, 0.04))
            self.head.bias.zero_()

    def tokens(self, img):
        """img [B, C, H, W] -> h0 [B, M + 1, D]: patches (row-major over the grid), class token at
        position cls_token_position, plus the position embedding."""
        x = self.patch_embed.proj(img).flatten(2).transpose(1, 2)       # [B, M, D]
        c = self.cfg["cls_token_position"]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((x[:, :c], cls, x[:, c:]), dim=1)
        return x + self.pos_embed

    def forward(self, img, scan="fused", collect=None):
        h = self.tokens(img)
        if collect is not None:
            collect.append({"hidden": h})
        for layer in self.layers:
            taps = {} if collect is not None else None
            h = h + layer.mixer(layer.norm(h), scan=scan, taps=taps)
            if taps is not None:
                taps["hidden"] = h
                collect.append(taps)
        feat = self.norm_f(h[:, self.cfg["cls_token_position"]])
        return self.head(feat)


def save_model_dir(model, outdir, metadata=None):
    os.makedirs(outdir, exist_ok=True)
    tmp = os.path.join(outdir, "config.json.tmp")
    with open(tmp, "w") as f:
        json.dump(model.cfg, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(outdir, "config.json"))
    tensors = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
    mc.save_safetensors(os.path.join(outdir, "model.safetensors"), tensors,
                        dict({"format": "pt"}, **(metadata or {})))


def load_model_dir(mdir):
    with open(os.path.join(mdir, "config.json")) as f:
        cfg = json.load(f)
    model = VisionMamba(cfg)
    t, _ = mc.load_safetensors(os.path.join(mdir, "model.safetensors"))
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in t.items()}, strict=True)
    return model


@torch.no_grad()
def top1(model, x_u8, y, scan="fused", batch=128):
    model.eval()
    correct = 0
    for i in range(0, len(x_u8), batch):
        logits = model(to_input(x_u8[i:i + batch]), scan=scan)
        correct += (logits.argmax(-1).numpy() == y[i:i + batch]).sum()
    return correct / len(x_u8)
