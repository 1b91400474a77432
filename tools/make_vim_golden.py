#!/usr/bin/python3
"""Golden data for the C++ Vim forward (issue 15).

For models/vim-digits-192/ writes tests/golden/vim-digits-192.safetensors with
  images     F32 [n, 1, 8, 8]   the model input (pixel / 16) of the whole test split (n = 360)
  labels     U8  [n]
  logits     F32 [n, 10]        reference logits: the float64 forward (model.double(), plain
                                sequential scan, x @ W^T) rounded to float32 once at the end
  hidden.i   F32 [4·17, 192]    residual stream of the first 4 images (stacked) after the
                                embedding (i = 0) and after layer i (i = 1..4), same float64 forward
Metadata (strings): the float32 error of PyTorch's own float32 forward against that reference,
  f32_err_logits = max |logits_f32 − logits_f64| over all n images, and f32_err_hidden.i likewise;
  the C++ test holds the C++ float32 forward to a multiple of these (tests/nn/test_vim_model.cpp).
  f32_top1 / f64_top1: test top-1 of the two PyTorch forwards.

Usage: /usr/bin/python3 tools/make_vim_golden.py models/vim-digits-192 [--out ...]
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mamba_common as mc  # noqa: E402
import vim_common as vc  # noqa: E402

N_HIDDEN = 4


@torch.no_grad()
def main():
    torch.set_num_threads(2)
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    name = os.path.basename(os.path.normpath(a.model))
    out = a.out or os.path.join(mc.REPO, "tests", "golden", name + ".safetensors")
    data = vc.load_split()
    x32 = vc.to_input(data["test_x"])
    model = vc.load_model_dir(a.model).eval()
    mc.USE_FAST_LINEAR = False                       # plain x @ W^T
    col32, col64 = [], []
    l32 = model(x32, scan="reference", collect=col32)
    m64 = vc.load_model_dir(a.model).double().eval()
    l64 = m64(x32.double(), scan="reference", collect=col64)
    tensors = {"images": x32.numpy(), "labels": data["test_y"].astype(np.uint8), "logits": l64.float().numpy()}
    meta = {"model": name, "images": "test split (tools/vim_common.py), model input = pixel / 16",
            "reference": "float64 forward of models/%s/model.safetensors, plain sequential scan" % name,
            "f32_err_logits": "%.6e" % (l32.double() - l64).abs().max().item(),
            "logits_absmax": "%.6e" % l64.abs().max().item()}
    for i, (c32, c64) in enumerate(zip(col32, col64)):
        h64 = c64["hidden"][:N_HIDDEN].reshape(-1, c64["hidden"].shape[-1])
        h32 = c32["hidden"][:N_HIDDEN].reshape(-1, c32["hidden"].shape[-1])
        tensors[f"hidden.{i}"] = h64.float().numpy()
        meta[f"f32_err_hidden.{i}"] = "%.6e" % (h32.double() - h64).abs().max().item()
        meta[f"hidden_absmax.{i}"] = "%.6e" % h64.abs().max().item()
    y = data["test_y"]
    meta["f32_top1"] = "%.6f" % (l32.argmax(-1).numpy() == y).mean()
    meta["f64_top1"] = "%.6f" % (l64.argmax(-1).numpy() == y).mean()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    mc.save_safetensors(out, tensors, meta)
    for k, v in meta.items():
        print(f"{k:24s} {v}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
