#!/usr/bin/python3
"""Per-layer channel-outlier profile of a model (issue 7).

For each layer and each of the three linear-layer inputs -- in_proj (after RMSNorm, gamma included),
x_proj (after conv1d + SiLU) and out_proj (the gated scan output y * SiLU(z)) -- take the per-channel
absolute maximum over all calibration tokens and report  ratio = max over channels / median over
channels.  Also reported: `in_proj_in_gamma_folded`, the same ratio for h / rms(h) without the
RMSNorm weight (what in_proj sees after the norm weight is folded into it).  Calibration: --n-seqs sequences of --seq-len bytes from the TRAINING split only, at
offsets drawn from numpy default_rng(--seed) (defaults 16 x 512 = 8192 tokens, seed 0).

Usage: /usr/bin/python3 tools/measure_outliers.py models/kjv-mamba-192 [--json]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mamba_common as mc  # noqa: E402

SITES = ("in_proj_in", "x_proj_in", "out_proj_in")


def calibration_batch(train, n_seqs=16, seq_len=512, seed=0):
    g = np.random.default_rng(seed)
    starts = g.integers(0, len(train) - seq_len, size=n_seqs)
    return torch.from_numpy(np.stack([train[s:s + seq_len] for s in starts]).astype(np.int64))


@torch.no_grad()
def measure(model, train, n_seqs=16, seq_len=512, seed=0):
    model.eval()
    tok = calibration_batch(train, n_seqs, seq_len, seed)
    collect = []
    model(tok, scan="fused", collect=collect)
    out = {"calibration": f"{n_seqs} x {seq_len} bytes of the training split, offsets from "
                          f"numpy default_rng({seed})", "ratios": {}, "top_channels": {},
           "residual_absmax_top": []}
    for s in SITES:
        out["ratios"][s] = []
        out["top_channels"][s] = []
    for taps in collect:
        for s in SITES:
            amax = taps[s].abs().reshape(-1, taps[s].shape[-1]).max(0).values
            out["ratios"][s].append(round((amax.max() / amax.median()).item(), 3))
            top = torch.argsort(amax, descending=True)[:3]
            out["top_channels"][s].append([[int(c), round(amax[c].item(), 3)] for c in top])
        amax = taps["raw_norm"].abs().reshape(-1, taps["raw_norm"].shape[-1]).max(0).values
        out["ratios"].setdefault("in_proj_in_gamma_folded", []).append(
            round((amax.max() / amax.median()).item(), 3))
        r = taps["residual_in"].abs().reshape(-1, taps["residual_in"].shape[-1]).max(0).values
        top = torch.argsort(r, descending=True)[:3]
        out["residual_absmax_top"].append({"median": round(r.median().item(), 4),
                                           "top": [[int(c), round(r[c].item(), 4)] for c in top]})
    return out


def ablation(model, heldout, chans, n_bytes=65536, seed=0):
    """Does the network use channels `chans`?  bpb on the first n_bytes held-out bytes (2048-byte
    chunks) with (a) nothing changed, (b) the channels zeroed at every in_proj input (after RMSNorm),
    (c) the channels zeroed in the residual stream entering every layer; and (b), (c) for the same
    number of random other channels (numpy default_rng(seed)) as a control."""
    held = heldout[:n_bytes]
    g = np.random.default_rng(seed)
    others = [int(c) for c in g.choice([c for c in range(model.cfg["hidden_size"]) if c not in chans],
                                       size=len(chans), replace=False)]

    def zero_hn(cs):
        def f(i, hn):
            hn = hn.clone()
            hn[..., cs] = 0
            return hn
        return f

    def zero_h(cs):
        def f(i, h):
            h = h.clone()
            h[..., cs] = 0
            return h
        return f

    res = {"held_out_bytes": n_bytes, "channels": list(chans), "control_channels": others}
    res["bpb_intact"] = round(mc.heldout_bpb(model, held, scan="fused")[0], 4)
    for tag, cs in (("outlier", list(chans)), ("control", others)):
        res[f"bpb_zero_{tag}_at_in_proj_input"] = round(mc.heldout_bpb(model, held, scan="fused", hn_hook=zero_hn(cs))[0], 4)
        res[f"bpb_zero_{tag}_in_residual"] = round(mc.heldout_bpb(model, held, scan="fused", hook=zero_h(cs))[0], 4)
    return res


def main():
    torch.set_num_threads(2)
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--n-seqs", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--ablate", default="", help="comma-separated residual channels: usage check")
    a = ap.parse_args()
    train, _, _ = mc.split_corpus()
    model = mc.load_model_dir(a.model)
    prof = measure(model, train, a.n_seqs, a.seq_len, a.seed)
    if a.ablate:
        _, held, _ = mc.split_corpus()
        prof["ablation"] = ablation(model, held, [int(c) for c in a.ablate.split(",")])
    if a.json:
        print(json.dumps(prof, indent=1))
        return
    print(f"{a.model}  ({prof['calibration']})")
    print("layer  " + "  ".join(f"{s:>12s}" for s in SITES))
    for l in range(len(prof["ratios"][SITES[0]])):
        print(f"{l:5d}  " + "  ".join(f"{prof['ratios'][s][l]:12.2f}" for s in SITES))
    if "ablation" in prof:
        print(json.dumps(prof["ablation"], indent=1))


if __name__ == "__main__":
    main()
