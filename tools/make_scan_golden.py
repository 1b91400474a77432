#!/usr/bin/python3
"""Golden data for the selective scan and the causal conv1d, from PyTorch.

Run with Debian's torch:  /usr/bin/python3 tools/make_scan_golden.py  (writes tests/golden/).
The scan is mamba's `selective_scan_ref` (state-spaces/mamba, mamba_ssm/ops/selective_scan_interface.py)
restated line for line, in float32 as there, plus an optional initial state (the decode cache):
    deltaA = exp(delta·A), deltaB_u = delta·B·u, x = deltaA·x + deltaB_u, y = x·C, out = (y + D·u)·SiLU(z)
Tensors are stored row-major as the C++ API takes them: token-major [L, E] (torch's [b, d, l]
transposed), B and C [L, N], A [E, N], state [E, N]. Each file also holds `y_magnitude`: the
float64 sum of the absolute values of the terms behind each output (|x| recurrence), the scale
the C++ test measures its error against.
"""
import json
import os
import struct

import torch
import torch.nn.functional as F


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       initial_state=None):
    """mamba's selective_scan_ref for real inputs and variable B, C of shape [b, n, l]."""
    dtype_in = u.dtype
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    B = B.float()
    C = C.float()
    x = A.new_zeros((batch, dim, dstate)) if initial_state is None else initial_state.clone().float()
    ys = []
    deltaA = torch.exp(torch.einsum('bdl,dn->bdln', delta, A))
    deltaB_u = torch.einsum('bdl,bnl,bdl->bdln', delta, B, u)
    last_state = None
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        y = torch.einsum('bdn,bn->bd', x, C[:, :, i])
        if i == u.shape[2] - 1:
            last_state = x
        ys.append(y)
    y = torch.stack(ys, dim=2)  # (batch dim L)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    out = out.to(dtype=dtype_in)
    return out, last_state


def magnitude(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
    """float64 (Σ_n |x|_n·|C_n| + |D·u|)·|SiLU(z)| with |x|_t = exp(ΔA)·|x|_{t-1} + |Δ·B·u|."""
    u, A, B, C = u.double(), A.double(), B.double(), C.double()
    delta = delta.double()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].double()
    if delta_softplus:
        delta = F.softplus(delta)
    x = torch.zeros(u.shape[0], A.shape[0], A.shape[1], dtype=torch.float64)
    if initial_state is not None:
        x = initial_state.double().abs()
    mags = []
    for i in range(u.shape[2]):
        dA = torch.exp(delta[:, :, i, None] * A)
        x = dA * x + (delta[:, :, i, None] * B[:, None, :, i] * u[:, :, i, None]).abs()
        m = (x * C[:, None, :, i].abs()).sum(-1)
        if D is not None:
            m = m + (u[:, :, i] * D.double()).abs()
        mags.append(m)
    m = torch.stack(mags, dim=2)
    if z is not None:
        m = m * F.silu(z.double()).abs()
    return m


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        data = t.detach().contiguous().to(torch.float32).numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def scan_case(path, seed, L, E, N, softplus, with_D, with_z, with_state):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(1, E, L, generator=g)
    if softplus:
        delta = 0.5 * torch.randn(1, E, L, generator=g)            # raw dt·W_dtᵀ
        delta_bias = torch.empty(E).uniform_(-6.0, -3.0, generator=g)
    else:
        delta = F.softplus(torch.empty(1, E, L).uniform_(-6.9, -2.25, generator=g))
        delta_bias = None
    A = -(torch.arange(1, N + 1, dtype=torch.float32)[None, :] * torch.empty(E, N).uniform_(0.8, 1.25, generator=g))
    B = torch.randn(1, N, L, generator=g)
    C = torch.randn(1, N, L, generator=g)
    D = torch.empty(E).uniform_(0.5, 1.5, generator=g) if with_D else None
    z = torch.randn(1, E, L, generator=g) if with_z else None
    state0 = torch.randn(1, E, N, generator=g) if with_state else None
    out, last = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, softplus, state0)
    mag = magnitude(u, delta, A, B, C, D, z, delta_bias, softplus, state0)
    tensors = {
        "x": u[0].T, "delta": delta[0].T, "A": A, "B": B[0].T, "C": C[0].T,
        "initial_state": state0[0] if with_state else torch.zeros(E, N),
        "y": out[0].T, "final_state": last[0], "y_magnitude": mag[0].T,
    }
    if D is not None:
        tensors["D"] = D
    if z is not None:
        tensors["z"] = z[0].T
    if delta_bias is not None:
        tensors["delta_bias"] = delta_bias
    meta = {"generator": "tools/make_scan_golden.py", "torch": torch.__version__,
            "delta_softplus": str(softplus).lower(), "seed": str(seed)}
    write_safetensors(path, tensors, meta)


def conv_case(path, seed, L, E, K):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, E, L, generator=g)
    w = 0.5 * torch.randn(E, 1, K, generator=g)
    b = 0.1 * torch.randn(E, generator=g)
    # mamba_simple.py: self.act(self.conv1d(x)[..., :seqlen]) with padding = d_conv - 1
    y = F.silu(F.conv1d(x, w, b, padding=K - 1, groups=E)[..., :L])
    write_safetensors(path, {"x": x[0].T, "weight": w[:, 0, :], "bias": b, "y": y[0].T},
                      {"generator": "tools/make_scan_golden.py", "torch": torch.__version__, "seed": str(seed)})


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden")
    os.makedirs(root, exist_ok=True)
    scan_case(os.path.join(root, "scan_softplus_gated.safetensors"), 1, L=32, E=37, N=16,
              softplus=True, with_D=True, with_z=True, with_state=False)
    scan_case(os.path.join(root, "scan_carried_state.safetensors"), 2, L=20, E=24, N=16,
              softplus=False, with_D=False, with_z=False, with_state=True)
    conv_case(os.path.join(root, "conv1d_k4.safetensors"), 3, L=12, E=20, K=4)


if __name__ == "__main__":
    main()
