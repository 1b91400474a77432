"""Shared pieces for the mambaquant Python tools: corpus, model, scans, safetensors I/O.

Plain-PyTorch Mamba-1 with exactly the reference math of the Mamba-1 block (README, "The method in brief"; nn/mamba_block.hpp) and the
Hugging Face parameter names. Byte-level vocabulary (256). Run with Debian's /usr/bin/python3
(torch 1.13, numpy 1.24).

Corpus: the King James Bible from Debian's `bible-kjv` package, obtained as the exact stdout bytes
of the command `bible "Gen1:1-Rev22:21"` (run with LC_ALL=C, no stdin, no terminal). It is cached
in `.cache/kjv.txt` (gitignored) under the repository root. Split: the first
floor(0.9 * n_bytes) bytes are the training part, the remaining bytes are held out.
Calibration data (measure_outliers.py) comes from the training part only.
"""
import hashlib
import json
import math
import os
import struct
import subprocess

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, ".cache")
BIBLE_CMD = ["bible", "Gen1:1-Rev22:21"]


# ----------------------------------------------------------------------------------------------
# corpus
# ----------------------------------------------------------------------------------------------
def get_corpus():
    """Returns (bytes, info dict). Generates .cache/kjv.txt on first use."""
    path = os.path.join(CACHE, "kjv.txt")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        env = dict(os.environ, LC_ALL="C")
        data = subprocess.run(BIBLE_CMD, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              check=True, env=env).stdout
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
    with open(path, "rb") as f:
        data = f.read()
    n = len(data)
    split = (9 * n) // 10
    info = {"command": " ".join(['bible', '"Gen1:1-Rev22:21"']), "n_bytes": n,
            "sha256": hashlib.sha256(data).hexdigest(), "train_bytes": [0, split],
            "heldout_bytes": [split, n]}
    return data, info


def split_corpus():
    data, info = get_corpus()
    arr = np.frombuffer(data, dtype=np.uint8)
    s = info["train_bytes"][1]
    return arr[:s], arr[s:], info


# ----------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------
def default_config(d_model=192, n_layer=4):
    return {
        "architectures": ["MambaForCausalLM"], "model_type": "mamba",
        "hidden_size": d_model, "intermediate_size": 2 * d_model, "state_size": 16,
        "num_hidden_layers": n_layer, "conv_kernel": 4, "time_step_rank": math.ceil(d_model / 16),
        "vocab_size": 256, "layer_norm_epsilon": 1e-5, "use_bias": False, "use_conv_bias": True,
        "tie_word_embeddings": True, "pad_vocab_size_multiple": 1, "expand": 2,
        "hidden_act": "silu", "residual_in_fp32": True, "bos_token_id": 0, "eos_token_id": 0,
        "pad_token_id": 0, "torch_dtype": "float32",
    }


# ----------------------------------------------------------------------------------------------
# scans.  u = delta*x [B,L,E], delta [B,L,E], A [E,N], Bm/Cm [B,L,N]  ->  y [B,L,E] (without D skip)
# ----------------------------------------------------------------------------------------------
def scan_reference(x, delta, A, Bm, Cm):
    """Plain sequential scan, one time step at a time (the reference)."""
    Bsz, L, E = x.shape
    N = A.shape[1]
    state = x.new_zeros(Bsz, E, N)
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, t, :, None] * A)                          # [B,E,N]
        dBx = delta[:, t, :, None] * Bm[:, t, None, :] * x[:, t, :, None]
        state = dA * state + dBx
        ys.append((state * Cm[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1)


def scan_chunked_masked(x, delta, A, Bm, Cm, chunk=4):
    """Exact chunked scan, masked (T x T) segment-sum form.

    Within a chunk of T steps, with a_t = delta_t*A (<= 0) and cum_t = sum_{s<=t} a_s (cumsum),
      state_t = sum_{s<=t} exp(cum_t - cum_s) * u_s  +  exp(cum_t) * state_in,
    u_s = delta_s*B_s*x_s.  exp(cum_t - cum_s) for s <= t is computed from the masked (T x T)
    segment sum (masked entries set to -inf before exp), so every exponent is <= 0: no overflow, no
    division.  The state entering the next chunk is the row t = T-1; chunks are chained sequentially.
    Memory/time ~ T x the state size; used as the always-safe fallback of scan_chunked.
    """
    Bsz, L, E = x.shape
    N = A.shape[1]
    T = min(chunk, L)
    x, delta, Bm, Cm, nc, Lp = _pad_chunks(x, delta, Bm, Cm, T)
    a = (delta.unsqueeze(-1) * A).view(Bsz, nc, T, E, N)                  # [B,c,T,E,N]
    cum = torch.cumsum(a, dim=2)
    u = (delta * x).view(Bsz, nc, T, E, 1) * Bm.view(Bsz, nc, T, 1, N)   # [B,c,T,E,N]
    seg = cum.unsqueeze(3) - cum.unsqueeze(2)                             # [B,c,T(t),T(s),E,N]
    mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    seg = seg.masked_fill(~mask.view(1, 1, T, T, 1, 1), float("-inf"))
    local = (torch.exp(seg) * u.unsqueeze(2)).sum(3)                      # zero-init states
    return _chain(local, torch.exp(cum), Cm, Bsz, nc, T, E, N, L, Lp)


def _pad_chunks(x, delta, Bm, Cm, T):
    L = x.shape[1]
    pad = (-L) % T
    if pad:
        # padded steps have delta = 0 (no decay, no input) and are dropped from the output
        x = F.pad(x, (0, 0, 0, pad))
        delta = F.pad(delta, (0, 0, 0, pad))
        Bm = F.pad(Bm, (0, 0, 0, pad))
        Cm = F.pad(Cm, (0, 0, 0, pad))
    Lp = L + pad
    return x, delta, Bm, Cm, Lp // T, Lp


def _chain(local, dec, Cm, Bsz, nc, T, E, N, L, Lp):
    """local: zero-init in-chunk states, dec = exp(cum_t). Chains the chunks sequentially."""
    carries = []
    s = local.new_zeros(Bsz, E, N)
    loc_last = local[:, :, T - 1].unbind(1)
    dec_last = dec[:, :, T - 1].unbind(1)
    for c in range(nc):
        carries.append(s)
        s = dec_last[c] * s + loc_last[c]
    carry = torch.stack(carries, dim=1)                                   # state entering each chunk
    states = local + dec * carry.unsqueeze(2)
    y = (states * Cm.view(Bsz, nc, T, 1, N)).sum(-1).reshape(Bsz, Lp, E)
    return y[:, :L]


LOGSPACE_MAX_RANGE = 80.0


def scan_chunked(x, delta, A, Bm, Cm, chunk=4):
    """Exact chunked scan (fast form).  Within a chunk of T steps,
      state_t = exp(cum_t) * ( state_in + cumsum_{s<=t}( exp(-cum_s) * u_s ) ),
    cum_t = cumsum of delta*A inside the chunk (<= 0, rebased at every chunk).  This is the same
    identity as the masked form (exp(cum_t - cum_s) = exp(cum_t) * exp(-cum_s)) evaluated with
    two cumsums instead of a T x T matrix.  It is exact as long as exp(-cum) stays finite: when any
    chunk's total log-decay exceeds LOGSPACE_MAX_RANGE (exp(80) ~ 5.5e34 < fp32 max), the call
    falls back to the masked form, which never overflows.  Agreement with the sequential
    reference is checked by `train_mamba.py selfcheck`.
    """
    Bsz, L, E = x.shape
    N = A.shape[1]
    T = min(chunk, L)
    x, delta, Bm, Cm, nc, Lp = _pad_chunks(x, delta, Bm, Cm, T)
    a = (delta.unsqueeze(-1) * A).view(Bsz, nc, T, E, N)
    cum = torch.cumsum(a, dim=2)
    if -(cum[:, :, T - 1].detach().min().item()) > LOGSPACE_MAX_RANGE:
        return scan_chunked_masked(x[:, :L], delta[:, :L], A, Bm[:, :L], Cm[:, :L], chunk=T)
    u = (delta * x).view(Bsz, nc, T, E, 1) * Bm.view(Bsz, nc, T, 1, N)
    local = torch.cumsum(torch.exp(-cum) * u, dim=2)
    dec = torch.exp(cum)
    local = local * dec
    return _chain(local, dec, Cm, Bsz, nc, T, E, N, L, Lp)


# ----------------------------------------------------------------------------------------------
# fused C kernel (tools/scan_kernel.c): the sequential recurrence itself, forward + backward,
# compiled on first use into .cache/ with gcc; used for training speed on these 2 CPU cores.
# ----------------------------------------------------------------------------------------------
_LIB = None


def _kernel():
    global _LIB
    if _LIB is None:
        import ctypes
        src = os.path.join(REPO, "tools", "scan_kernel.c")
        os.makedirs(CACHE, exist_ok=True)
        so = os.path.join(CACHE, "scan_kernel_%s.so" % hashlib.sha256(open(src, "rb").read()).hexdigest()[:12])
        if not os.path.exists(so):
            subprocess.run(["gcc", "-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC", src,
                            "-o", so + ".tmp", "-lm"], check=True)
            os.replace(so + ".tmp", so)
        _LIB = ctypes.CDLL(so)
    return _LIB


def _p(t):
    import ctypes
    return ctypes.c_void_p(t.data_ptr())


class _ScanFused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, A, Bm, Cm):
        x, delta, A, Bm, Cm = [t.contiguous().float() for t in (x, delta, A, Bm, Cm)]
        Bsz, L, E = x.shape
        y = torch.empty_like(x)
        _kernel().scan_fwd(_p(x), _p(delta), _p(A), _p(Bm), _p(Cm), _p(y), Bsz, L, E)
        ctx.save_for_backward(x, delta, A, Bm, Cm)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, delta, A, Bm, Cm = ctx.saved_tensors
        dy = dy.contiguous().float()
        Bsz, L, E = x.shape
        dx, dd = torch.empty_like(x), torch.empty_like(x)
        dA = torch.empty(Bsz, E, A.shape[1])
        dB, dC = torch.empty_like(Bm), torch.empty_like(Cm)
        _kernel().scan_bwd(_p(x), _p(delta), _p(A), _p(Bm), _p(Cm), _p(dy), _p(dx), _p(dd), _p(dA),
                           _p(dB), _p(dC), Bsz, L, E)
        return dx, dd, dA.sum(0), dB, dC


def scan_fused(x, delta, A, Bm, Cm):
    assert A.shape[1] == 16
    return _ScanFused.apply(x, delta, A, Bm, Cm)


# ----------------------------------------------------------------------------------------------
# fast linear: Debian's torch uses a generic (reference) BLAS (~5 GFLOPS); oneDNN (mkldnn) linear
# is ~15x faster on these CPUs.  Same math (x W^T), fp32.
# ----------------------------------------------------------------------------------------------
def _mk(a):
    return a.contiguous().to_mkldnn()


class _FastLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        shp = x.shape
        y = torch._C._nn.mkldnn_linear(_mk(x.reshape(-1, shp[-1])), _mk(w), None).to_dense()
        return y.view(*shp[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        x2 = x.reshape(-1, x.shape[-1])
        g2 = g.reshape(-1, g.shape[-1])
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch._C._nn.mkldnn_linear(_mk(g2), _mk(w.t()), None).to_dense().view(x.shape)
        if ctx.needs_input_grad[1]:
            gw = torch._C._nn.mkldnn_linear(_mk(g2.t()), _mk(x2.t()), None).to_dense()
        return gx, gw


USE_FAST_LINEAR = True


def linear(x, w):
    if USE_FAST_LINEAR and x.dtype == torch.float32 and x.device.type == "cpu":
        return _FastLinear.apply(x, w)
    return x @ w.t()


# ----------------------------------------------------------------------------------------------
# model (HF names)
# ----------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, h):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Mixer(nn.Module):
    def __init__(self, D, E, N, R, K, n_layer, gen):
        super().__init__()
        self.E, self.N, self.R, self.K = E, N, R, K
        self.in_proj = nn.Linear(D, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, K, groups=E, padding=K - 1, bias=True)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, D, bias=False)
        # mamba_simple.py initialisation (dt_scale=1, dt_init="random", dt_min=1e-3, dt_max=0.1,
        # dt_init_floor=1e-4), then mixer_seq_simple._init_weights (out_proj / sqrt(n_layer)).
        with torch.no_grad():
            std = R ** -0.5
            self.dt_proj.weight.copy_((torch.rand(E, R, generator=gen) * 2 - 1) * std)
            dt = torch.exp(torch.rand(E, generator=gen) * (math.log(0.1) - math.log(1e-3))
                           + math.log(1e-3)).clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            for lin in (self.in_proj, self.x_proj, self.out_proj):
                bound = 1.0 / math.sqrt(lin.in_features)     # kaiming_uniform_(a=sqrt(5))
                lin.weight.copy_((torch.rand(lin.weight.shape, generator=gen) * 2 - 1) * bound)
            self.out_proj.weight.div_(math.sqrt(n_layer))
            bound = 1.0 / math.sqrt(K)                       # conv1d default init (fan_in = K)
            self.conv1d.weight.copy_((torch.rand(E, 1, K, generator=gen) * 2 - 1) * bound)
            self.conv1d.bias.copy_((torch.rand(E, generator=gen) * 2 - 1) * bound)

    def forward(self, hn, scan="chunked", taps=None):
        L = hn.shape[1]
        xz = linear(hn, self.in_proj.weight)
        x, z = xz[..., :self.E], xz[..., self.E:]
        x = F.conv1d(x.transpose(1, 2), self.conv1d.weight, self.conv1d.bias,
                     padding=self.K - 1, groups=self.E)[..., :L].transpose(1, 2)
        x = F.silu(x)
        if taps is not None:
            taps["x_proj_in"] = x
        dbc = linear(x, self.x_proj.weight)
        dt, Bm, Cm = dbc.split([self.R, self.N, self.N], dim=-1)
        delta = F.softplus(linear(dt.contiguous(), self.dt_proj.weight) + self.dt_proj.bias)
        A = -torch.exp(self.A_log)
        if scan == "fused":
            y = scan_fused(x, delta, A, Bm, Cm)
        elif scan == "chunked":
            y = scan_chunked(x, delta, A, Bm, Cm)
        else:
            y = scan_reference(x, delta, A, Bm, Cm)
        y = y + x * self.D
        y = y * F.silu(z)
        if taps is not None:
            taps["out_proj_in"] = y
        return linear(y, self.out_proj.weight)


class Layer(nn.Module):
    def __init__(self, *a):
        super().__init__()
        self.norm = RMSNorm(a[0])
        self.mixer = Mixer(*a)


class Backbone(nn.Module):
    def __init__(self, cfg, gen):
        super().__init__()
        D, L = cfg["hidden_size"], cfg["num_hidden_layers"]
        E, N, R, K = cfg["intermediate_size"], cfg["state_size"], cfg["time_step_rank"], cfg["conv_kernel"]
        self.embeddings = nn.Embedding(cfg["vocab_size"], D)
        with torch.no_grad():
            self.embeddings.weight.copy_(torch.randn(cfg["vocab_size"], D, generator=gen) * 0.02)
        self.layers = nn.ModuleList([Layer(D, E, N, R, K, L, gen) for _ in range(L)])
        self.norm_f = RMSNorm(D)


class MambaLM(nn.Module):
    def __init__(self, cfg, seed=0):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed)
        self.backbone = Backbone(cfg, gen)

    def forward(self, tokens, scan="chunked", collect=None, hook=None, hn_hook=None):
        """tokens [B,L] long. collect: list to receive per-layer dicts of taps (in_proj_in,
        x_proj_in, out_proj_in, hidden = residual after the layer). hook(i, h) may modify the
        residual stream entering layer i (used for ablations/aux losses); returns new h."""
        h = self.backbone.embeddings(tokens).float()
        for i, layer in enumerate(self.backbone.layers):
            if hook is not None:
                h = hook(i, h)
            hn = layer.norm(h)
            if hn_hook is not None:
                hn = hn_hook(i, hn)
            taps = {} if collect is not None else None
            if taps is not None:
                taps["residual_in"] = h
                taps["raw_norm"] = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + layer.norm.eps)
                taps["in_proj_in"] = hn
            h = h + layer.mixer(hn, scan=scan, taps=taps)
            if taps is not None:
                taps["hidden"] = h
                collect.append(taps)
        hf = self.backbone.norm_f(h)
        return linear(hf, self.backbone.embeddings.weight)


# ----------------------------------------------------------------------------------------------
# safetensors (written by hand; no python package available)
# ----------------------------------------------------------------------------------------------
_DT = {"F32": (np.float32, 4), "U8": (np.uint8, 1), "F64": (np.float64, 8), "I64": (np.int64, 8)}


def save_safetensors(path, tensors, metadata=None):
    """tensors: ordered dict name -> (numpy array). Writes F32/U8 little-endian, row-major."""
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype == np.float32:
            dt = "F32"
        elif arr.dtype == np.uint8:
            dt = "U8"
        else:
            raise ValueError(f"unsupported dtype {arr.dtype} for {name}")
        b = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((-len(hb)) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, h in header.items():
        dt, size = _DT[h["dtype"]]
        b, e = h["data_offsets"]
        arr = np.frombuffer(raw[base + b:base + e], dtype=np.dtype(dt).newbyteorder("<"))
        out[name] = arr.reshape(h["shape"]).astype(dt)
    return out, meta


def save_model_dir(model, outdir, metadata=None):
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(model.cfg, f, indent=2)
        f.write("\n")
    sd = model.state_dict()
    tensors = {}
    for k, v in sd.items():
        tensors[k] = v.detach().cpu().float().numpy()
    save_safetensors(os.path.join(outdir, "model.safetensors"), tensors,
                     dict({"format": "pt"}, **(metadata or {})))


def load_model_dir(mdir):
    with open(os.path.join(mdir, "config.json")) as f:
        cfg = json.load(f)
    model = MambaLM(cfg)
    t, _ = load_safetensors(os.path.join(mdir, "model.safetensors"))
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in t.items()}, strict=True)
    return model


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def heldout_bpb(model, heldout, ctx=2048, batch=4, scan="chunked", hook=None, hn_hook=None):
    """Mean next-byte cross-entropy in bits over the whole held-out split.

    The held-out bytes are cut into consecutive chunks of `ctx` bytes (the last one shorter); each
    chunk is evaluated independently (state starts at zero, nothing carried across chunks); every
    byte except the first of each chunk is predicted from its in-chunk prefix.  Reported: sum of
    -log2 p over all predicted bytes / number of predicted bytes."""
    model.eval()
    arr = torch.from_numpy(np.asarray(heldout, dtype=np.int64))
    chunks = [arr[i:i + ctx] for i in range(0, len(arr), ctx)]
    total, count = 0.0, 0
    for i in range(0, len(chunks), batch):
        grp = chunks[i:i + batch]
        same = [c for c in grp if len(c) == ctx]
        rest = [c for c in grp if len(c) != ctx]
        for g in ([torch.stack(same)] if same else []) + [c[None] for c in rest]:
            if g.shape[1] < 2:
                continue
            logits = model(g[:, :-1], scan=scan, hook=hook, hn_hook=hn_hook)
            nll = F.cross_entropy(logits.reshape(-1, 256), g[:, 1:].reshape(-1), reduction="sum")
            total += nll.item()
            count += g[:, 1:].numel()
    return total / count / math.log(2), count
