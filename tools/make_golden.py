#!/usr/bin/python3
"""Golden data for the C++ float forward (issue 7).

For a model dir models/<name>/, writes tests/golden/<name>.safetensors with
  tokens    U8  [256]        the first 256 bytes of the held-out split (corpus offset in metadata)
  logits    F32 [256, 256]   logits for every position (position t sees tokens[0..t])
  hidden.i  F32 [256, 192]   residual stream h after layer i (i = 0..3)
computed in float32 with the plain sequential reference scan from the exact saved weights
(model.safetensors as loaded from disk), state starting at zero.

Usage: /usr/bin/python3 tools/make_golden.py models/kjv-mamba-192 [--out tests/golden/...]
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mamba_common as mc  # noqa: E402


@torch.no_grad()
def main():
    torch.set_num_threads(2)
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--out", default="")
    ap.add_argument("--n", type=int, default=256)
    a = ap.parse_args()
    name = os.path.basename(os.path.normpath(a.model))
    out = a.out or os.path.join(mc.REPO, "tests", "golden", name + ".safetensors")
    _, held, info = mc.split_corpus()
    mc.USE_FAST_LINEAR = False            # plain x @ W^T in fp32
    model = mc.load_model_dir(a.model).eval()
    tok = np.ascontiguousarray(held[:a.n]).astype(np.uint8)
    collect = []
    logits = model(torch.from_numpy(tok.astype(np.int64))[None], scan="reference", collect=collect)
    tensors = {"tokens": tok, "logits": logits[0].float().numpy()}
    for i, taps in enumerate(collect):
        tensors[f"hidden.{i}"] = taps["hidden"][0].float().numpy()
    # cross-check against the fast paths used in training/eval
    mc.USE_FAST_LINEAR = True
    fused = model(torch.from_numpy(tok.astype(np.int64))[None], scan="fused")
    diff = (fused - logits).abs().max().item()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    mc.save_safetensors(out, tensors, {
        "model": name, "heldout_byte_offset": info["heldout_bytes"][0],
        "n_tokens": a.n, "corpus_sha256": info["sha256"],
        "computed": "float32, plain sequential reference scan, x @ W^T, from models/%s/model.safetensors" % name,
        "hidden_i": "residual stream after layer i (h = h + out_proj(...)), before norm_f",
    })
    print(f"wrote {out}: offset {info['heldout_bytes'][0]}, max |logits fused - reference| = {diff:.3e}")


if __name__ == "__main__":
    main()
