#!/usr/bin/python3
"""Builds a small random Mamba-1 in the exact reference math and writes golden data.

Run with Debian's torch:  /usr/bin/python3 tools/make_model_golden.py [OUT_DIR]
(default tests/golden/tiny-mamba). Writes:
  mamba_ssm/config.json + model.safetensors      mamba_ssm layout: backbone.embedding.weight,
                                                 lm_head.weight stored (a copy, tied), vocab 100
                                                 padded to 104 by pad_vocab_size_multiple 8
  hf/config.json + 2 shards + index               transformers layout: backbone.embeddings.weight,
                                                 tied head (no lm_head.weight), vocab_size 104
  golden.safetensors                              tokens U8 [L], logits F32 [L, 104],
                                                 hidden.{i} F32 [L, D] = residual stream after layer i
The forward runs in float64 on the float32 weights, so the golden values are the exact math
that the C++ float model approximates; the scan is selective_scan_ref (mamba_ssm) step by step.
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_io import write_safetensors  # noqa: E402

D, N_LAYER, VOCAB, PAD = 64, 2, 100, 8
N, K, EXPAND = 16, 4, 2
E = EXPAND * D
R = math.ceil(D / 16)
VP = (VOCAB + PAD - 1) // PAD * PAD
EPS = 1e-5
SEQ = 32


def make_weights(seed=1234):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    def uniform(*shape, lo=0.0, hi=1.0):
        return torch.rand(*shape, generator=g) * (hi - lo) + lo

    w = {"backbone.embeddings.weight": randn(VP, D, std=0.5)}
    for i in range(N_LAYER):
        p = f"backbone.layers.{i}."
        w[p + "norm.weight"] = 1.0 + randn(D, std=0.1)
        w[p + "mixer.in_proj.weight"] = randn(2 * E, D, std=D ** -0.5)
        w[p + "mixer.conv1d.weight"] = randn(E, 1, K, std=0.4)
        w[p + "mixer.conv1d.bias"] = randn(E, std=0.1)
        w[p + "mixer.x_proj.weight"] = randn(R + 2 * N, E, std=E ** -0.5)
        w[p + "mixer.dt_proj.weight"] = uniform(E, R, lo=-(R ** -0.5), hi=R ** -0.5)
        # mamba_simple.py's dt init: dt log-uniform in [1e-3, 1e-1], bias = softplus^-1(dt);
        # widened to [1e-2, 0.5] so that the state's memory is visible within 32 tokens.
        dt = torch.exp(uniform(E, lo=math.log(1e-2), hi=math.log(0.5))).clamp(min=1e-4)
        w[p + "mixer.dt_proj.bias"] = dt + torch.log(-torch.expm1(-dt))
        # S4D-real init A = -(1..N) per channel, perturbed so channels differ.
        w[p + "mixer.A_log"] = torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1) + randn(E, N, std=0.3)
        w[p + "mixer.D"] = 1.0 + randn(E, std=0.2)
        w[p + "mixer.out_proj.weight"] = randn(D, E, std=E ** -0.5)
    w["backbone.norm_f.weight"] = 1.0 + randn(D, std=0.1)
    return {k: v.float().contiguous() for k, v in w.items()}


def rms_norm(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def selective_scan_ref(u, delta, A, B, C, Dv, z, delta_bias):
    """mamba_ssm selective_scan_ref for one sequence: u, delta, z [E, L]; A [E, N]; B, C [N, L]."""
    delta = F.softplus(delta + delta_bias[:, None])
    x = torch.zeros(E, N, dtype=u.dtype)
    ys = []
    for t in range(u.shape[1]):
        dA = torch.exp(delta[:, t, None] * A)
        dBu = delta[:, t, None] * B[None, :, t] * u[:, t, None]
        x = dA * x + dBu
        ys.append(x @ C[:, t])
    y = torch.stack(ys, dim=1)
    out = y + u * Dv[:, None]
    return out * F.silu(z)


def forward(w, tokens):
    w = {k: v.double() for k, v in w.items()}
    L = len(tokens)
    h = w["backbone.embeddings.weight"][torch.tensor(tokens)]
    hidden = []
    for i in range(N_LAYER):
        p = f"backbone.layers.{i}.mixer."
        hn = rms_norm(h, w[f"backbone.layers.{i}.norm.weight"])
        xz = hn @ w[p + "in_proj.weight"].T                       # [L, 2E]
        x, z = xz[:, :E].T, xz[:, E:].T                            # [E, L]
        x = F.conv1d(x[None], w[p + "conv1d.weight"], w[p + "conv1d.bias"], padding=K - 1, groups=E)[0, :, :L]
        x = F.silu(x)
        dbc = x.T @ w[p + "x_proj.weight"].T                       # [L, R+2N]
        dt, B, C = dbc[:, :R], dbc[:, R:R + N], dbc[:, R + N:]
        delta = (dt @ w[p + "dt_proj.weight"].T).T                 # [E, L], bias added in the scan
        A = -torch.exp(w[p + "A_log"])
        y = selective_scan_ref(x, delta, A, B.T, C.T, w[p + "D"], z, w[p + "dt_proj.bias"])
        h = h + y.T @ w[p + "out_proj.weight"].T
        hidden.append(h.clone())
    logits = rms_norm(h, w["backbone.norm_f.weight"]) @ w["backbone.embeddings.weight"].T
    return logits, hidden


def np32(t):
    return t.detach().float().numpy()


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "golden", "tiny-mamba")
    w = make_weights()
    tokens = [(7 * i * i + 3 * i + 1) % VOCAB for i in range(SEQ)]
    logits, hidden = forward(w, tokens)

    ssm_dir, hf_dir = os.path.join(out, "mamba_ssm"), os.path.join(out, "hf")
    os.makedirs(ssm_dir, exist_ok=True)
    os.makedirs(hf_dir, exist_ok=True)
    # mamba_ssm layout: older embedding spelling, lm_head stored as a tied copy.
    ssm = {}
    for k, v in w.items():
        ssm[k.replace("backbone.embeddings.", "backbone.embedding.")] = np32(v)
    ssm["lm_head.weight"] = np32(w["backbone.embeddings.weight"])
    write_safetensors(os.path.join(ssm_dir, "model.safetensors"), ssm, metadata={"format": "pt"})
    with open(os.path.join(ssm_dir, "config.json"), "w") as f:
        json.dump({"d_model": D, "n_layer": N_LAYER, "vocab_size": VOCAB, "ssm_cfg": {}, "rms_norm": True,
                   "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": PAD,
                   "tie_embeddings": True}, f, indent=2)
    # transformers layout, sharded: embedding + layer 0 | layer 1 + final norm.
    shards = [{}, {}]
    for k, v in w.items():
        shards[1 if (".layers.1." in k or "norm_f" in k) else 0][k] = np32(v)
    weight_map = {}
    for s, tensors in enumerate(shards):
        name = f"model-{s + 1:05d}-of-00002.safetensors"
        write_safetensors(os.path.join(hf_dir, name), tensors, metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
    total = sum(v.nbytes for t in shards for v in t.values())
    with open(os.path.join(hf_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump({"model_type": "mamba", "architectures": ["MambaForCausalLM"], "hidden_size": D,
                   "num_hidden_layers": N_LAYER, "vocab_size": VP, "state_size": N, "expand": EXPAND,
                   "intermediate_size": E, "conv_kernel": K, "time_step_rank": R, "layer_norm_epsilon": EPS,
                   "tie_word_embeddings": True, "use_bias": False, "use_conv_bias": True, "hidden_act": "silu",
                   "residual_in_fp32": True}, f, indent=2)
    golden = {"tokens": np.array(tokens, dtype=np.uint8), "logits": np32(logits)}
    for i, hi in enumerate(hidden):
        golden[f"hidden.{i}"] = np32(hi)
    write_safetensors(os.path.join(out, "golden.safetensors"), golden,
                      metadata={"generator": "tools/make_model_golden.py", "torch": torch.__version__})
    print(f"wrote {out}: D={D} layers={N_LAYER} vocab={VOCAB}->{VP} tokens={SEQ}; "
          f"logit range [{logits.min():.3f}, {logits.max():.3f}], hidden std {hidden[-1].std():.3f}")


if __name__ == "__main__":
    main()
