#!/usr/bin/python3
"""Re-measure the outlier profile (+ ablation usage check) of a trained model and store it in its
metrics.json; for the outlier variant also record the comparison with the plain model.
Usage: /usr/bin/python3 tools/finalize_metrics.py models/<name> --ablate 15,104 [--plain models/kjv-mamba-192]
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mamba_common as mc  # noqa: E402
from measure_outliers import ablation, measure  # noqa: E402


def main():
    torch.set_num_threads(2)
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--ablate", default="15,104")
    ap.add_argument("--plain", default="")
    ap.add_argument("--ablate-bytes", type=int, default=32768)
    a = ap.parse_args()
    train, held, _ = mc.split_corpus()
    model = mc.load_model_dir(a.model)
    path = os.path.join(a.model, "metrics.json")
    m = json.load(open(path))
    m["outlier_profile"] = measure(model, train)
    m["outlier_profile"]["ablation"] = ablation(model, held, [int(c) for c in a.ablate.split(",")], n_bytes=a.ablate_bytes)
    if a.plain:
        p = json.load(open(os.path.join(a.plain, "metrics.json")))
        pr, orr = p["outlier_profile"]["ratios"], m["outlier_profile"]["ratios"]
        ip = orr["in_proj_in"]
        m["targets"] = {
            "plain_heldout_bpb": p["heldout_bpb"],
            "bpb_relative_to_plain": round(m["heldout_bpb"] / p["heldout_bpb"] - 1, 5),
            "bpb_within_3pct": m["heldout_bpb"] <= 1.03 * p["heldout_bpb"],
            "in_proj_ratio_ge3_every_layer": all(r >= 3 for r in ip),
            "in_proj_ratio_ge10_some_layer": any(r >= 10 for r in ip),
            "out_proj_ratio_not_lower_than_plain_per_layer": all(
                o >= q for o, q in zip(orr["out_proj_in"], pr["out_proj_in"])),
            "out_proj_ratio_max_not_lower_than_plain": max(orr["out_proj_in"]) >= max(pr["out_proj_in"]),
        }
    with open(path, "w") as f:
        json.dump(m, f, indent=1)
        f.write("\n")
    print(json.dumps({k: m[k] for k in ("heldout_bpb",) + (("targets",) if a.plain else ())}, indent=1))
    print(json.dumps(m["outlier_profile"]["ratios"]))
    print(json.dumps(m["outlier_profile"]["ablation"]))


if __name__ == "__main__":
    main()
