#!/usr/bin/python3
"""Converts an original Mamba checkpoint (pytorch_model.bin, a torch pickle) to safetensors.

Run with Debian's torch:  /usr/bin/python3 tools/convert_pytorch_to_safetensors.py IN_DIR OUT_DIR
IN_DIR holds pytorch_model.bin and config.json; OUT_DIR receives model.safetensors and a copy of
config.json. The C++ library never parses pickle; this is the one place that does, and it loads
with weights_only where the torch version supports it. Tied tensors (lm_head sharing the
embedding's storage) are written once per name, as plain copies, which the loader accepts.
"""
import argparse
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_io import write_safetensors  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("in_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", choices=["keep", "float32", "float16"], default="keep",
                    help="convert floating tensors (bfloat16 is always kept as BF16 bits unless converted)")
    args = ap.parse_args()
    src = os.path.join(args.in_dir, "pytorch_model.bin")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except TypeError:  # torch < 1.13 has no weights_only
        state = torch.load(src, map_location="cpu")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    tensors, names = {}, {}
    for name, t in state.items():
        if not torch.is_tensor(t):
            continue
        t = t.detach().contiguous()
        if args.dtype == "float32" and t.is_floating_point():
            t = t.float()
        elif args.dtype == "float16" and t.is_floating_point():
            t = t.half()
        if t.dtype == torch.bfloat16:
            tensors[name] = t.view(torch.int16).numpy().view("uint16")
            names[name] = "BF16"
        else:
            tensors[name] = t.numpy()
    os.makedirs(args.out_dir, exist_ok=True)
    write_safetensors(os.path.join(args.out_dir, "model.safetensors"), tensors,
                      metadata={"format": "pt", "converted_from": "pytorch_model.bin"}, dtype_names=names)
    cfg = os.path.join(args.in_dir, "config.json")
    if os.path.exists(cfg):
        shutil.copy(cfg, os.path.join(args.out_dir, "config.json"))
    print(f"wrote {len(tensors)} tensors to {args.out_dir}/model.safetensors")


if __name__ == "__main__":
    main()
