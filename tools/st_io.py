"""Minimal safetensors writer/reader for the tools (no dependency beyond numpy).

Layout: u64 little-endian header length n, n bytes of JSON header (padded with spaces to a
multiple of 8), then the tensors' bytes at the header's data_offsets.
"""
import json
import struct

import numpy as np

_DTYPES = {
    np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16",
    np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("int16"): "I16",
    np.dtype("int8"): "I8", np.dtype("uint8"): "U8", np.dtype("bool"): "BOOL",
}
_NP = {v: k for k, v in _DTYPES.items()}


def write_safetensors(path, tensors, metadata=None, dtype_names=None):
    """tensors: dict name -> numpy array (written in insertion order, 8-byte aligned).
    dtype_names: optional dict name -> dtype string overriding the numpy one (e.g. "BF16" for
    uint16 arrays that hold bfloat16 bits)."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, offset = [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        pad = (-offset) % 8
        blobs.append(b"\0" * pad)
        offset += pad
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        dtype = (dtype_names or {}).get(name) or _DTYPES[arr.dtype]
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((-len(text)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Returns (dict name -> numpy array, metadata). BF16 comes back as float32."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        raw = data[8 + n + b:8 + n + end]
        if e["dtype"] == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=_NP[e["dtype"]])
        out[name] = arr.reshape(e["shape"])
    return out, meta
