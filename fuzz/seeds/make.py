"""Writes the fuzzing targets' seed corpus (fuzz/seeds/<target>/): a few valid inputs of each
kind, small enough to keep in the repository. Run from anywhere: python3 fuzz/seeds/make.py
(scripts/fuzz.sh runs it). Encoders here are minimal: GGUF v3 metadata and protobuf fields."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# --- GGUF (v3): metadata values and an optional tensor table ---
def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gval(v):
    if isinstance(v, bool):
        return struct.pack("<I?", 7, v)
    if isinstance(v, int):
        return struct.pack("<II", 4, v)
    if isinstance(v, float):
        return struct.pack("<If", 6, v)
    if isinstance(v, str):
        return struct.pack("<I", 8) + gstr(v)
    kinds = {bool: 7, int: 5, float: 6, str: 8}
    k = kinds[type(v[0])] if v else 8
    body = b"".join(
        gstr(x) if k == 8 else struct.pack({7: "<?", 5: "<i", 6: "<f"}[k], x) for x in v
    )
    return struct.pack("<IIQ", 9, k, len(v)) + body


def gguf(meta, tensors=()):
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    for k, v in meta.items():
        out += gstr(k) + gval(v)[0:4] + gval(v)[4:]
    offset = 0
    for name, dims in tensors:
        out += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", 0, offset)  # F32
        n = 4
        for d in dims:
            n *= d
        offset += (n + 31) // 32 * 32
    out += b"\0" * ((-len(out)) % 32)
    return out + b"\0" * offset


def byte_tokens():
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    nxt, toks = 256, []
    for b in range(256):
        if b in printable:
            toks.append(chr(b))
        else:
            toks.append(chr(nxt))
            nxt += 1
    return toks


bpe = {
    "general.architecture": "llama",
    "tokenizer.ggml.model": "gpt2",
    "tokenizer.ggml.tokens": byte_tokens() + ["Ġt", "he", "<|end|>"],
    "tokenizer.ggml.token_type": [1] * 258 + [3],
    "tokenizer.ggml.merges": ["Ġ t", "h e"],
    "tokenizer.ggml.eos_token_id": 258,
    "tokenizer.chat_template": "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
}
spm = {
    "general.architecture": "llama",
    "tokenizer.ggml.model": "llama",
    "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + ["▁the", "▁a", "e"],
    "tokenizer.ggml.scores": [0.0] * 259 + [-1.0, -2.0, -3.0],
    "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1, 1, 1],
    "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 2,
    "tokenizer.ggml.add_bos_token": True,
}
model = dict(bpe)
model.update({
    "llama.block_count": 1,
    "llama.context_length": 64,
    "llama.embedding_length": 32,
    "llama.feed_forward_length": 64,
    "llama.attention.head_count": 2,
    "llama.attention.head_count_kv": 1,
    "llama.attention.layer_norm_rms_epsilon": 1e-5,
    "llama.rope.freq_base": 10000.0,
})
write("gguf", "bpe-tokenizer.gguf", gguf(bpe))
write("gguf", "spm-tokenizer.gguf", gguf(spm))
write("gguf", "tiny-model.gguf", gguf(model, [("token_embd.weight", (32, 259)), ("output_norm.weight", (32,))]))

# --- The tokenizer target takes `arbitrary` bytes: any bytes are an input; a few printable ones.
write("tokenizer", "text", "Hello, world! 12 × 7 = 84 <|end|>")
write("tokenizer", "merges", "\x01\x01" + "Ġt\0he\0" * 4 + "h e\0Ġ t\0")

# --- HTTP request bodies ---
bodies = {
    "chat.json": {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16},
    "chat-spec.json": {
        "model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        "temperature": 0.7, "top_p": 0.9, "seed": 3, "stream": True, "stop": ["\n"],
        "logprobs": True, "top_logprobs": 3,
        "speculative": {"mode": "speculative", "rule": "topk:3", "budget": 2.0, "gamma": "auto", "drafter": "suffix:2-8@0.2"},
    },
    "completion.json": {"model": "m", "prompt": "Once upon", "max_tokens": 8, "logprobs": 2, "echo": False},
}
for name, body in bodies.items():
    write("request", name, json.dumps(body))


# --- protobuf ---
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, value):
    if isinstance(value, bool) or isinstance(value, int):
        return varint(num << 3) + varint(int(value))
    if isinstance(value, float):
        return varint(num << 3 | 1) + struct.pack("<d", value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


def packed(num, ints):
    return field(num, b"".join(varint(i) for i in ints))


block = field(1, 1) + field(2, 5) + packed(3, [10, 20, 30]) + field(6, True)
write("wire", "draft-frame", field(1, "node-1") + field(2, block) + field(3, "0123456789abcdef0123456789abcdef"))
policy = field(1, "topk:3") + field(2, 2.0) + field(3, "default") + field(4, "even")
sampling = field(3, 40) + field(4, 7)
write("wire", "open-session", field(1, "Hello") + field(2, True) + field(4, 16) + field(5, sampling) + field(6, policy) + field(8, "\n") + field(9, 3))
write("wire", "generate", field(1, "Hello") + field(5, 4) + field(6, policy) + field(11, "auto") + field(12, 8) + field(13, "suffix:2-8@0.2"))
