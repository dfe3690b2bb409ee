#!/usr/bin/python3
"""st_pywrite.py -- writes a safetensors file by hand (struct + json) from torch tensors.

Used by tests/unit/test_safetensors.c (read back F32/F16/BF16 written by
independent code) and importable by the model oracle test. The safetensors
Python package is not installed here, so the format is written directly:
u64 little-endian header length, JSON header padded with spaces, data.

    st_pywrite.py OUT.safetensors OUT.expected.json
writes four tensors and a JSON file of their values as f32 (torch's own
conversion), which the C test compares bit for bit.
"""
import json
import struct
import sys

DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


def tensor_bytes(t):
    import torch
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def save(path, tensors, metadata=None):
    """tensors: dict name -> torch tensor (F32, F16, BF16, F64)."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, off = [], 0
    for name, t in tensors.items():
        b = tensor_bytes(t)
        header[name] = {"dtype": DTYPES[str(t.dtype).replace("torch.", "")],
                        "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load(path):
    """Reads an F32/F16/BF16 safetensors file into a dict of torch f32 tensors, plus metadata."""
    import torch
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        buf = bytearray(data[b:e])
        if info["dtype"] == "F32":
            t = torch.frombuffer(buf, dtype=torch.float32)
        elif info["dtype"] == "F16":
            t = torch.frombuffer(buf, dtype=torch.float16).float()
        elif info["dtype"] == "BF16":
            t = torch.frombuffer(buf, dtype=torch.int16).view(torch.bfloat16).float()
        else:
            raise ValueError(info["dtype"])
        out[name] = t.reshape(info["shape"]).clone()
    return out, meta


def main():
    import torch
    g = torch.Generator().manual_seed(1234)
    a = torch.randn(3, 5, generator=g)
    b = (torch.randn(2, 3, 4, generator=g) * 100).to(torch.float16)
    c = torch.randn(7, generator=g).to(torch.bfloat16)
    # values that exercise subnormals, infinities and signed zero in half precision
    d = torch.tensor([0.0, -0.0, 6e-8, -3e-5, 65504.0, float("inf"), -float("inf"), 1.0],
                     dtype=torch.float16)
    ts = {"a.weight": a, "b": b, "c.bf16": c, "d.f16": d}
    save(sys.argv[1], ts, {"format": "pt", "who": "st_pywrite"})
    # expected values as f32 bit patterns (JSON has no infinities)
    exp = {k: {"shape": list(v.shape),
               "bits": [struct.unpack("<I", struct.pack("<f", float(x)))[0]
                        for x in v.float().flatten()]}
           for k, v in ts.items()}
    with open(sys.argv[2], "w") as f:
        json.dump(exp, f)


if __name__ == "__main__":
    main()
