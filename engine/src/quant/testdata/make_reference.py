"""Reference dequantization of random ggml blocks by gguf-py (PyPI `gguf`), an implementation
nobody here wrote (it has no Q8_K dequantization; Q8_K is checked by its definition in
the Rust tests). Writes dequant_reference.json beside this script:
    python3 engine/src/quant/testdata/make_reference.py
Each entry: type name, block bytes (hex), expected f32 values (as u32 bit patterns)."""
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

# (type, block bytes, offsets of f16 scales to set to sane values, offset of an f32 scale)
TYPES = [
    (Q.Q4_0, 18, [0], None),
    (Q.Q4_1, 20, [0, 2], None),
    (Q.Q5_0, 22, [0], None),
    (Q.Q5_1, 24, [0, 2], None),
    (Q.Q8_0, 34, [0], None),
    (Q.Q2_K, 84, [80, 82], None),
    (Q.Q3_K, 110, [108], None),
    (Q.Q4_K, 144, [0, 2], None),
    (Q.Q5_K, 176, [0, 2], None),
    (Q.Q6_K, 210, [208], None),
]

rng = np.random.default_rng(20261202)
out = []
for ty, nbytes, f16s, f32 in TYPES:
    for _ in range(3):
        b = bytearray(rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes())
        for o in f16s:
            b[o:o + 2] = np.float16(rng.uniform(-0.05, 0.05)).tobytes()
        if f32 is not None:
            b[f32:f32 + 4] = np.float32(rng.uniform(-0.05, 0.05)).tobytes()
        vals = dequantize(np.frombuffer(bytes(b), dtype=np.uint8), ty).astype(np.float32)
        out.append({"type": ty.name, "bytes": bytes(b).hex(),
                    "values": [int(v) for v in vals.view(np.uint32)]})

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dequant_reference.json")
with open(path, "w") as f:
    json.dump(out, f)
print(f"wrote {len(out)} blocks to {path}")
