#!/usr/bin/env python3
"""Writes reference.bin, the expected values kquants.rs's tests compare against bit for bit.

References (none of them written in this repository):
  * gguf-py (`pip install gguf numpy`, tested with gguf 0.19.0): numpy dequantization of every
    type but Q8_K, and numpy quantizers for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
  * ggml itself, when a built libggml-base.so is found (env LIBGGML_BASE, or the llama.cpp build
    under /work/llamacpp): its dequantize_row_* and quantize_row_*_ref through ctypes. Run
    without it, the file has the gguf-py records only.

Format (little endian): b"SPQR", u32 version (1), then records until the end:
  u8 kind (0 dequantize, 1 quantize, 2 quantizer input), u8 source (0 gguf-py, 1 ggml),
  u32 ggml type id, u32 n_bytes, bytes, u32 n_floats, f32 floats.
  kind 0: bytes = blocks, floats = their dequantization.
  kind 1: bytes = the quantization of the last kind-2 record's floats (n_floats = 0).
  kind 2: type id 0, no bytes, floats = quantizer input.
Run: python3 make_reference.py  (writes reference.bin next to this script; deterministic).
"""
import ctypes
import glob
import os
import struct
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

HERE = os.path.dirname(os.path.abspath(__file__))
QK_K = 256

# type: (id, block elements, block bytes, offsets of f16 scales in the block (None: Q8_K f32 d))
TYPES = {
    "Q4_0": (2, 32, 18, [0]),
    "Q4_1": (3, 32, 20, [0, 2]),
    "Q5_0": (6, 32, 22, [0]),
    "Q5_1": (7, 32, 24, [0, 2]),
    "Q8_0": (8, 32, 34, [0]),
    "Q2_K": (10, 256, 84, [80, 82]),
    "Q3_K": (11, 256, 110, [108]),
    "Q4_K": (12, 256, 144, [0, 2]),
    "Q5_K": (13, 256, 176, [0, 2]),
    "Q6_K": (14, 256, 210, [208]),
    "Q8_K": (15, 256, 292, None),
}
N_BLOCKS = {32: 4, 256: 2}


def random_f16(rng, n):
    """Finite f16 values of both signs across the normal and subnormal ranges, and some zeros."""
    v = rng.uniform(-1, 1, n) * np.exp2(rng.integers(-22, 4, n).astype(np.float64))
    v[rng.random(n) < 0.1] = 0.0
    return v.astype(np.float16)


def random_blocks(rng, name):
    tid, n, nbytes, f16_at = TYPES[name]
    nb = N_BLOCKS[n]
    blocks = rng.integers(0, 256, (nb, nbytes), dtype=np.uint8)
    for b in range(nb):
        if f16_at is None:  # Q8_K: f32 d; bsums are not read by dequantization
            blocks[b, :4] = np.frombuffer(np.float32(rng.normal() * 1e-2).tobytes(), np.uint8)
        else:
            for off in f16_at:
                blocks[b, off:off + 2] = np.frombuffer(random_f16(rng, 1).tobytes(), np.uint8)
    return blocks


def quantizer_input(rng):
    """Two K-blocks (16 blocks of 32) of data shaped to reach the quantizers' corner cases."""
    a = (rng.normal(0, 0.05, QK_K)).astype(np.float32)
    a[rng.integers(0, QK_K, 6)] *= 40  # outliers
    b = np.empty(QK_K, np.float32)
    b[0:16] = 0.0  # an all-zero sub-block
    b[16:32] = rng.uniform(0.1, 1.0, 16)  # all positive
    b[32:64] = -rng.uniform(0.1, 1.0, 32)  # all negative
    b[64:96] = 0.25  # constant
    b[96:128] = rng.normal(0, 1e-8, 32)  # tiny
    b[128:192] = rng.laplace(0, 0.02, 64)  # heavy tails
    b[192:256] = np.round(rng.normal(0, 4, 64)) / 8  # many exact ties
    return np.concatenate([a, b]).astype(np.float32)


def find_ggml():
    paths = [os.environ.get("LIBGGML_BASE", "")]
    paths += glob.glob("/work/llamacpp/*/vendor/llama.cpp/build/bin/libggml-base.so")
    for p in paths:
        if p and os.path.exists(p):
            return ctypes.CDLL(p), p
    return None, None


def main():
    rng = np.random.default_rng(20240611)
    ggml, ggml_path = find_ggml()
    out = bytearray(b"SPQR" + struct.pack("<I", 1))
    counts = {}

    def record(kind, source, tid, data, floats):
        data = bytes(data)
        floats = np.asarray(floats, dtype="<f4")
        out.extend(struct.pack("<BBII", kind, source, tid, len(data)))
        out.extend(data)
        out.extend(struct.pack("<I", floats.size))
        out.extend(floats.tobytes())
        counts[(kind, source)] = counts.get((kind, source), 0) + 1

    def ggml_dequant(name, blocks):
        tid, n, _, _ = TYPES[name]
        f = getattr(ggml, "dequantize_row_" + name.lower().replace("_k", "_K"))
        y = np.zeros(blocks.shape[0] * n, np.float32)
        f(blocks.ctypes.data_as(ctypes.c_void_p), y.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(y.size))
        return y

    def ggml_quant(name, x):
        tid, n, nbytes, _ = TYPES[name]
        f = getattr(ggml, "quantize_row_" + name.lower().replace("_k", "_K") + "_ref")
        y = np.zeros(x.size // n * nbytes, np.uint8)
        f(x.ctypes.data_as(ctypes.c_void_p), y.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(x.size))
        return y

    mismatches = []
    for name, (tid, n, nbytes, _) in TYPES.items():
        blocks = random_blocks(rng, name)
        if name != "Q8_K":  # gguf-py has no Q8_K
            y = dequantize(blocks, T[name]).reshape(-1).astype(np.float32)
            record(0, 0, tid, blocks.tobytes(), y)
            if ggml is not None:
                g = ggml_dequant(name, blocks)
                if g.view(np.uint32).tolist() != y.view(np.uint32).tolist():
                    mismatches.append("dequantize " + name)
        elif ggml is not None:
            record(0, 1, tid, blocks.tobytes(), ggml_dequant(name, blocks))

    x = quantizer_input(rng)
    record(2, 0, 0, b"", x)
    for name, (tid, n, nbytes, _) in TYPES.items():
        q = None
        if name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
            q = quantize(x.reshape(-1, n), T[name]).reshape(-1)
            record(1, 0, tid, q.tobytes(), [])
        if ggml is not None and name not in ("Q4_0", "Q4_1", "Q8_0"):
            g = ggml_quant(name, x)
            if q is not None and g.tobytes() != q.tobytes():
                mismatches.append("quantize " + name)
            record(1, 1, tid, g.tobytes(), [])

    with open(os.path.join(HERE, "reference.bin"), "wb") as f:
        f.write(out)
    from importlib.metadata import version

    print(f"gguf {version('gguf')}, numpy {np.__version__}, ggml: {ggml_path}")
    print("records (kind, source):", counts, "bytes:", len(out))
    print("gguf-py vs ggml mismatches:", mismatches or "none")


if __name__ == "__main__":
    sys.exit(main())
