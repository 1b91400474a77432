#!/usr/bin/python3
"""Train / evaluate the small Vision Mamba (Vim) on scikit-learn's handwritten digits (issue 15).

Run with Debian's /usr/bin/python3 (torch 1.13, python3-sklearn).  Model, data and split: see
tools/vim_common.py (split: train_test_split(test_size=0.2, random_state=0, stratify) → 1,437 / 360).

Subcommands
  selfcheck   fused-kernel vs reference-scan logits of a random Vim; flip check of the backward branch
  train       train and write models/<name>/{config.json, model.safetensors, metrics.json,
              digits.safetensors (test split + calibration images, so C++ needs no sklearn)}
  eval        test top-1 of a saved model dir

Training: AdamW (β 0.9/0.999, weight decay on matrices only), linear warmup then cosine to 0,
cross-entropy, batch drawn by numpy.random.default_rng([seed, epoch]) permutations; light
augmentation: each training image shifted by a random (dy, dx) ∈ {−1, 0, 1}² with zero fill.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mamba_common as mc  # noqa: E402
import vim_common as vc  # noqa: E402

torch.set_num_threads(2)


def selfcheck(_args):
    cfg = vc.default_config()
    m = vc.VisionMamba(cfg, seed=0).eval()
    data = vc.load_split()
    x = vc.to_input(data["test_x"][:8])
    with torch.no_grad():
        ref = m(x, scan="reference")
        fused = m(x, scan="fused")
        # the backward branch is the forward branch over reversed rows: running the mixer on a
        # reversed sequence with the two directions' weights swapped must give the reversed output
        mix = m.layers[0].mixer
        hn = torch.randn(2, 17, cfg["d_model"], generator=torch.Generator().manual_seed(3))
        out = mix(hn, scan="reference")
        sw = vc.BiMixer(cfg["d_model"], cfg["d_inner"], 16, cfg["dt_rank"], 4, 4, torch.Generator())
        sw.load_state_dict(mix.state_dict())
        for a, b in (("conv1d", "conv1d_b"), ("x_proj", "x_proj_b"), ("dt_proj", "dt_proj_b")):
            ma, mb = getattr(sw, a), getattr(sw, b)
            setattr(sw, a, mb)
            setattr(sw, b, ma)
        sw.A_log, sw.A_b_log = mix.A_b_log, mix.A_log
        sw.D, sw.D_b = mix.D_b, mix.D
        out_sw = sw(hn.flip([1]), scan="reference").flip([1])
    print(f"logits fused vs reference maxabs  {(fused - ref).abs().max().item():.3e} (|logits| max {ref.abs().max().item():.3e})")
    print(f"swapped-direction mixer on reversed rows vs mixer maxabs {(out_sw - out).abs().max().item():.3e}")


def lr_at(step, total, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = (step - args.warmup) / max(1, total - args.warmup)
    return args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def shift_batch(imgs, rng):
    """Random translation by (dy, dx) ∈ {−1, 0, 1}² per image, zero fill (uint8 [n, 8, 8])."""
    out = np.zeros_like(imgs)
    n, H, W = imgs.shape
    sh = rng.integers(-1, 2, size=(n, 2))
    for i in range(n):
        dy, dx = sh[i]
        out[i, max(0, dy):H + min(0, dy), max(0, dx):W + min(0, dx)] = \
            imgs[i, max(0, -dy):H - max(0, dy), max(0, -dx):W - max(0, dx)]
    return out


def make_optimizer(model, args):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.dim() < 2 or "A_log" in n or "A_b_log" in n or n in ("cls_token", "pos_embed"):
            no_decay.append(p)
        else:
            decay.append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                              {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.999))


def train(args):
    torch.manual_seed(args.seed)
    data = vc.load_split()
    cfg = vc.default_config(args.d_model, args.n_layer)
    model = vc.VisionMamba(cfg, seed=args.seed)
    opt = make_optimizer(model, args)
    n = len(data["train_x"])
    per_epoch = math.ceil(n / args.batch)
    total = per_epoch * args.epochs
    step, t0, log = 0, time.time(), []
    for epoch in range(args.epochs):
        model.train()
        rng = np.random.default_rng([args.seed, epoch])
        perm = rng.permutation(n)
        tot_loss, tot_ok = 0.0, 0
        for i in range(0, n, args.batch):
            idx = perm[i:i + args.batch]
            xb = data["train_x"][idx]
            if args.augment:
                xb = shift_batch(xb, rng)
            yb = torch.from_numpy(data["train_y"][idx])
            lr = lr_at(step, total, args)
            for g in opt.param_groups:
                g["lr"] = lr
            logits = model(vc.to_input(xb), scan="fused")
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            step += 1
            tot_loss += loss.item() * len(idx)
            tot_ok += (logits.argmax(-1) == yb).sum().item()
        line = {"epoch": epoch + 1, "loss": round(tot_loss / n, 4), "train_top1": round(tot_ok / n, 4),
                "wall": round(time.time() - t0, 1)}
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            line["test_top1"] = round(float(vc.top1(model, data["test_x"], data["test_y"])), 4)
        log.append(line)
        print(json.dumps(line), flush=True)
    wall = time.time() - t0
    finish(model, args, data, step, wall, log)


def finish(model, args, data, step, wall, log):
    name = os.path.basename(os.path.normpath(args.out))
    vc.save_model_dir(model, args.out, {"name": name})
    model = vc.load_model_dir(args.out)          # evaluate exactly the saved weights
    test_top1 = float(vc.top1(model, data["test_x"], data["test_y"], scan="fused"))
    test_top1_ref = float(vc.top1(model, data["test_x"], data["test_y"], scan="reference"))
    train_top1 = float(vc.top1(model, data["train_x"], data["train_y"], scan="fused"))
    print(f"test top-1 {test_top1:.4f} (reference scan {test_top1_ref:.4f}), train top-1 {train_top1:.4f}")
    # the test split and the calibration images, so the C++ side needs no scikit-learn
    mc.save_safetensors(os.path.join(args.out, "digits.safetensors"), {
        "test.images": np.ascontiguousarray(data["test_x"]), "test.labels": data["test_y"].astype(np.uint8),
        "calib.images": np.ascontiguousarray(data["train_x"][:vc.N_CALIB]),
        "calib.labels": data["train_y"][:vc.N_CALIB].astype(np.uint8),
    }, {"source": "sklearn.datasets.load_digits (python3-sklearn 1.2.1)",
        "split": f"train_test_split(test_size={vc.TEST_FRACTION}, random_state={vc.SPLIT_SEED}, stratify=target)",
        "calib": f"first {vc.N_CALIB} images of the training split",
        "pixels": "uint8 0..16, [n, 8, 8]; model input = pixel * pixel_scale (1/16), shape [n, 1, 8, 8]"})
    metrics = {
        "model": name, "test_top1": round(test_top1, 6), "test_top1_reference_scan": round(test_top1_ref, 6),
        "test_images": len(data["test_y"]), "train_top1": round(train_top1, 6), "train_images": len(data["train_y"]),
        "split": f"sklearn train_test_split(test_size={vc.TEST_FRACTION}, random_state={vc.SPLIT_SEED}, "
                 "stratify=target) over load_digits()",
        "train_steps": step, "wall_seconds": round(wall, 1), "seed": args.seed,
        "command": "/usr/bin/python3 " + " ".join(sys.argv),
        "hyperparameters": {k: v for k, v in vars(args).items() if k not in ("cmd",)},
        "params": sum(p.numel() for p in model.parameters()), "log": log,
    }
    tmp = os.path.join(args.out, "metrics.json.tmp")
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=1)
        f.write("\n")
    os.replace(tmp, os.path.join(args.out, "metrics.json"))


def evaluate(args):
    data = vc.load_split()
    model = vc.load_model_dir(args.model)
    print(f"{args.model}: test top-1 {vc.top1(model, data['test_x'], data['test_y'], scan=args.scan):.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("selfcheck")
    t = sub.add_parser("train")
    t.add_argument("--out", default="models/vim-digits-192")
    t.add_argument("--seed", type=int, default=15)
    t.add_argument("--d-model", type=int, default=192)
    t.add_argument("--n-layer", type=int, default=4)
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--warmup", type=int, default=40)
    t.add_argument("--wd", type=float, default=0.05)
    t.add_argument("--clip", type=float, default=1.0)
    t.add_argument("--augment", type=int, default=1)
    t.add_argument("--eval-every", type=int, default=5)
    e = sub.add_parser("eval")
    e.add_argument("model")
    e.add_argument("--scan", default="fused", choices=["fused", "reference"])
    args = ap.parse_args()
    {"selfcheck": selfcheck, "train": train, "eval": evaluate}[args.cmd](args)


if __name__ == "__main__":
    main()
