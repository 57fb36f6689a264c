#!/usr/bin/env python3
"""Tiny random-weight GGUF models of each decoder family specd supports, with llama.cpp's teacher-forced
logits over a fixed token sequence, as test fixtures (engine/tests/model_arch.rs).

    . /work/llamacpp/env.sh    # scripts/llamacpp/build.sh DIR writes DIR/env.sh
    python3 scripts/llamacpp/make_arch_fixtures.py [--out engine/tests/fixtures/arch]

Writes, per model NAME: NAME.gguf (F32 weights, gpt2-style byte-level BPE tokenizer in the metadata),
NAME.logits.bin (llama.cpp's logits, float32 little-endian, rows x vocab, row i = after ids[0..=i]) and
NAME.json (ids, vocab size, the hyper-parameters and facts a test needs). Everything is deterministic
(fixed seeds, fixed key/tensor order); llama.cpp runs with 2 threads and an F32 KV cache.

The metadata keys and tensor names/shapes are the ones llama.cpp's loaders read (src/models/<arch>.cpp)
and its converter writes (conversion/*.py in the llama-cpp-python 0.3.36 sdist):
  llama        plain llama (MHA, tied output), rope NORM (adjacent pairs)
  llama3-rope  llama with rope_freqs.weight (Llama 3.1/3.2 "llama3" RoPE scaling). Like convert_hf_to_gguf,
               no rope.scaling.* key is written: the converter bakes the scaling into the per-pair divisor
               tensor rope_freqs.weight (n_rot/2 floats) and writes nothing else for rope_type "llama3".
               Also writes llama3-rope.norope.logits.bin: llama.cpp on the same weights WITHOUT that tensor,
               so a test can check that an implementation really applies it.
  qwen2        GQA, q/k/v biases, rope NEOX (halves), untied output
  qwen3        GQA, attn_q_norm/attn_k_norm (per-head RMS norm before RoPE), key_length 128 != hidden/heads
  mistral      llama arch, GQA, untied output
  gemma3       6 layers: with no sliding_window_pattern key llama.cpp uses pattern 6 (layers 0-4 local,
               layer 5 global); sliding_window 8 < 32 positions; local layers use rope base 10000 (llama.cpp's
               default rope_freq_base_train_swa; the converter writes no freq_base_swa key for Gemma 3),
               global layers rope.freq_base 1e6; embeddings scaled by sqrt(hidden); q/k RMS norms; four norms
               per layer (attn_norm, post_attention_norm, ffn_norm, post_ffw_norm, stored as 1+w like the
               converter does); attention scale 1/sqrt(key_length); GELU(tanh) gated FFN; rope NEOX.

The script also runs an independent numpy forward of each model (float64, exact tanh-GELU) and prints its
max |d log-softmax| against llama.cpp: that is how far a correct implementation can be from the fixture
(llama.cpp's own approximations, e.g. its fp16-table GELU), i.e. the headroom under the test's 1e-3.
"""

import argparse
import json
import math
import os
import sys
import tempfile

import numpy as np
import gguf

VOCAB_MERGES = ["Ġ t", "h e", "i n", "Ġ a", "e r", "o n", "Ġt he", "r e", "a t", "Ġ s", "e n", "Ġ o", "Ġ w"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def vocabulary():
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    for m in VOCAB_MERGES:
        a, b = m.split(" ")
        assert a in tokens and b in tokens, m
        tokens.append(a + b)
    types = [1] * len(tokens)
    for s in SPECIALS:
        tokens.append(s)
        types.append(3)  # control
    return tokens, types


TOKENS, TOKEN_TYPES = vocabulary()
VOCAB = len(TOKENS)  # 272
BOS = TOKENS.index("<|endoftext|>")
EOS = TOKENS.index("<|im_end|>")

# name -> hyper-parameters. gain_qk scales the Q/K projections (sharper attention, so that RoPE details
# and the sliding window matter for the logits).
MODELS = {
    "llama": dict(arch="llama", d=32, heads=2, kv=2, hd=16, ff=64, layers=2, tied=True, eps=1e-5,
                  base=10000.0, rope="norm", n=32, seed=1, gain_qk=1.5),
    "llama3-rope": dict(arch="llama", d=64, heads=1, kv=1, hd=64, ff=32, layers=2, tied=True, eps=1e-5,
                        base=500000.0, rope="norm", n=64, seed=2, gain_qk=3.0, head_dim_key=True,
                        llama3=dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=8192)),
    "qwen2": dict(arch="qwen2", d=32, heads=4, kv=2, hd=8, ff=64, layers=2, tied=False, eps=1e-6,
                  base=1000000.0, rope="neox", n=32, seed=3, gain_qk=1.5, qkv_bias=True),
    # YaRN (Qwen 2.5 long-context configurations): factor 4 over an original context of 64, so the
    # ramp between the correction dimensions falls inside the 8 rotation pairs of a 16-wide head.
    "qwen2-yarn": dict(arch="qwen2", d=32, heads=2, kv=1, hd=16, ff=64, layers=2, tied=True, eps=1e-6,
                       base=10000.0, rope="neox", n=48, seed=7, gain_qk=3.0, qkv_bias=True,
                       yarn=dict(factor=4.0, original_context=64)),
    "qwen3": dict(arch="qwen3", d=32, heads=2, kv=1, hd=128, ff=64, layers=2, tied=True, eps=1e-6,
                  base=1000000.0, rope="neox", n=32, seed=4, gain_qk=1.0, qk_norm=True),
    "mistral": dict(arch="llama", d=32, heads=4, kv=2, hd=8, ff=64, layers=2, tied=False, eps=1e-5,
                    base=1000000.0, rope="norm", n=32, seed=5, gain_qk=1.5),
    # llama.cpp computes GELU through an fp16 table (ggml-cpu/vec.h GGML_GELU_FP16): ~5e-4 relative error
    # per activation, which an exact GELU sees as noise; post_ffw_gain 0.3 keeps that noise at ~5e-4 in
    # log-softmax (under the test's 1e-3) while the FFN still moves the logits by far more (see the mutations).
    "gemma3": dict(arch="gemma3", d=32, heads=2, kv=1, hd=32, ff=32, layers=6, tied=True, eps=1e-6,
                   base=1000000.0, base_swa=10000.0, swa=8, swa_pattern=6, rope="neox", n=32, seed=6,
                   gain_qk=1.0, qk_norm=True, post_ffw_gain=0.3, numpy_tol=6e-4),
}
CONTEXT = 256


def llama3_rope_factors(c):
    """conversion/llama.py LlamaModel.generate_extra_tensors, verbatim in numpy."""
    p = c["llama3"]
    base, dim = c["base"], c["hd"]
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, lo, hi, old = p["factor"], p["low_freq_factor"], p["high_freq_factor"], p["original_max_position_embeddings"]
    lo_wl, hi_wl = old / lo, old / hi
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < hi_wl:
            out.append(1.0)
        elif wl > lo_wl:
            out.append(factor)
        else:
            s = (old / wl - lo) / (hi - lo)
            out.append(1.0 / ((1 - s) / factor + s))
    return np.array(out, dtype=np.float32)


def make_weights(c):
    rng = np.random.default_rng(c["seed"])
    d, hd, ff = c["d"], c["hd"], c["ff"]
    qd, kvd = c["heads"] * hd, c["kv"] * hd
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    lin = lambda out, inp, gain=1.0: f32(rng.standard_normal((out, inp)) * gain / math.sqrt(inp))
    norm = lambda n: f32(1.0 + 0.2 * rng.standard_normal(n))
    w = {"token_embd.weight": f32(rng.standard_normal((VOCAB, d)) * 0.5)}
    gemma = c["arch"] == "gemma3"
    if gemma:
        w["token_embd.weight"] = f32(w["token_embd.weight"] / math.sqrt(d) * 2)  # scaled by sqrt(d) at input
    for i in range(c["layers"]):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = norm(d)
        w[p + "attn_q.weight"] = lin(qd, d, c["gain_qk"])
        w[p + "attn_k.weight"] = lin(kvd, d, c["gain_qk"])
        w[p + "attn_v.weight"] = lin(kvd, d)
        if c.get("qkv_bias"):
            w[p + "attn_q.bias"] = f32(rng.standard_normal(qd) * 0.5)
            w[p + "attn_k.bias"] = f32(rng.standard_normal(kvd) * 0.5)
            w[p + "attn_v.bias"] = f32(rng.standard_normal(kvd) * 0.5)
        if c.get("qk_norm"):
            w[p + "attn_q_norm.weight"] = norm(hd)
            w[p + "attn_k_norm.weight"] = norm(hd)
        w[p + "attn_output.weight"] = lin(d, qd)
        if gemma:
            w[p + "post_attention_norm.weight"] = norm(d)
        w[p + "ffn_norm.weight"] = norm(d)
        w[p + "ffn_gate.weight"] = lin(ff, d)
        w[p + "ffn_up.weight"] = lin(ff, d)
        w[p + "ffn_down.weight"] = lin(d, ff)
        if gemma:
            w[p + "post_ffw_norm.weight"] = f32(norm(d) * c.get("post_ffw_gain", 1.0))
    w["output_norm.weight"] = norm(d)
    if not c["tied"]:
        w["output.weight"] = lin(VOCAB, d, 1.5)
    if "llama3" in c:
        w["rope_freqs.weight"] = llama3_rope_factors(c)
    return w


def write_gguf(path, name, c, w):
    arch = c["arch"]
    g = gguf.GGUFWriter(path, arch)
    g.add_name(f"specd-fixture-{name}")
    g.add_block_count(c["layers"])
    g.add_context_length(CONTEXT)
    g.add_embedding_length(c["d"])
    g.add_feed_forward_length(c["ff"])
    g.add_head_count(c["heads"])
    g.add_head_count_kv(c["kv"])
    g.add_rope_freq_base(c["base"])
    g.add_layer_norm_rms_eps(c["eps"])
    if arch == "llama":
        g.add_vocab_size(VOCAB)
        g.add_rope_dimension_count(c["hd"])
    if arch in ("qwen3", "gemma3") or c.get("head_dim_key") or c["hd"] * c["heads"] != c["d"]:
        g.add_key_length(c["hd"])
        g.add_value_length(c["hd"])
    if arch == "gemma3":
        g.add_sliding_window(c["swa"])
    if "yarn" in c and not c.get("no_yarn_keys"):
        g.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        g.add_rope_scaling_factor(c["yarn"]["factor"])
        g.add_rope_scaling_orig_ctx_len(c["yarn"]["original_context"])
    g.add_file_type(gguf.LlamaFileType.ALL_F32)
    g.add_tokenizer_model("gpt2")
    g.add_tokenizer_pre("gpt-2")
    g.add_token_list(TOKENS)
    g.add_token_types(TOKEN_TYPES)
    g.add_token_merges(VOCAB_MERGES)
    g.add_bos_token_id(BOS)
    g.add_eos_token_id(EOS)
    g.add_add_bos_token(False)
    for k, v in w.items():
        g.add_tensor(k, v)
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()


def llamacpp_logits(path, ids):
    import llama_cpp

    m = llama_cpp.Llama(model_path=path, logits_all=True, type_k=0, type_v=0, n_ctx=CONTEXT, n_batch=CONTEXT,
                        n_ubatch=CONTEXT, n_threads=2, n_threads_batch=2, verbose=False)
    assert m.n_vocab() == VOCAB, m.n_vocab()
    m.eval(ids)
    out = np.array(m.scores[: len(ids)], dtype=np.float32)
    del m
    return out


# ---- independent numpy reference (float64) ----

def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, pos, base, hd, style, factors=None, yarn=None):
    """x: [n, heads, hd]; ggml_rope_ext with freq_factors: theta_i = pos * base^(-2i/hd) / factors[i];
    with yarn (ggml's rope_yarn, beta_fast 32, beta_slow 1, ext_factor 1): theta_i blends theta_i / factor
    and theta_i by a ramp over i between the correction dims, cos/sin scaled by 1 + 0.1 ln(factor)."""
    half = hd // 2
    inv = base ** (-np.arange(half) * 2.0 / hd)
    if factors is not None:
        inv = inv / factors.astype(np.float64)
    mscale = 1.0
    if yarn is not None:
        corr = lambda rot: hd * math.log(yarn["original_context"] / (rot * 2 * math.pi)) / (2 * math.log(base))
        low, high = max(0.0, math.floor(corr(32.0))), min(hd - 1.0, math.ceil(corr(1.0)))
        ramp = 1 - np.clip((np.arange(half) - low) / max(0.001, high - low), 0, 1)
        inv = inv / yarn["factor"] * (1 - ramp) + inv * ramp
        mscale = 1 + 0.1 * math.log(yarn["factor"])
    ang = pos[:, None] * inv[None, :]
    cos, sin = mscale * np.cos(ang)[:, None, :], mscale * np.sin(ang)[:, None, :]
    if style == "norm":
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
    else:
        a, b = x[..., :half], x[..., half:]
        out = np.concatenate([a * cos - b * sin, a * sin + b * cos], -1)
    return out


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


# Plausible implementation mistakes; the fixture must tell each from the real thing by far more than 1e-3.
MUTATIONS = {
    "llama": ["rope_neox"],
    "llama3-rope": ["no_rope_freqs", "rope_neox"],
    "qwen2": ["no_bias", "rope_norm"],
    "qwen2-yarn": ["no_yarn", "no_bias"],
    "qwen3": ["no_qk_norm", "rope_norm"],
    "mistral": ["gqa_interleaved"],
    "gemma3": ["no_swa", "swa_all", "swa_off_by_one", "same_rope_base", "no_embed_scale", "silu", "no_post_norms",
               "rope_norm"],
}


def numpy_forward(c, w, ids, use_rope_freqs=True, mut=None):
    c = dict(c)
    if mut == "rope_neox":
        c["rope"] = "neox"
    if mut == "rope_norm":
        c["rope"] = "norm"
    if mut == "no_rope_freqs":
        use_rope_freqs = False
    if mut == "no_bias":
        c["qkv_bias"] = False
    if mut == "no_qk_norm":
        c["qk_norm"] = False
    if mut == "no_swa":
        c["swa"] = 10 ** 9
    if mut == "swa_all":
        c["swa_pattern"] = 10 ** 9
    if mut == "swa_off_by_one":
        c["swa"] = c["swa"] + 1
    if mut == "same_rope_base":
        c["base_swa"] = c["base"]
    W = {k: v.astype(np.float64) for k, v in w.items()}
    n, d, hd, H, KV = len(ids), c["d"], c["hd"], c["heads"], c["kv"]
    gemma = c["arch"] == "gemma3"
    pos = np.arange(n, dtype=np.float64)
    x = W["token_embd.weight"][ids]
    if gemma and mut != "no_embed_scale":
        x = x * np.float64(np.float32(math.sqrt(d)))
    factors = w.get("rope_freqs.weight") if use_rope_freqs else None
    for i in range(c["layers"]):
        p = lambda s: W[f"blk.{i}.{s}"]
        h = rms(x, p("attn_norm.weight"), c["eps"])
        q, k, v = h @ p("attn_q.weight").T, h @ p("attn_k.weight").T, h @ p("attn_v.weight").T
        if c.get("qkv_bias"):
            q, k, v = q + p("attn_q.bias"), k + p("attn_k.bias"), v + p("attn_v.bias")
        q, k, v = q.reshape(n, H, hd), k.reshape(n, KV, hd), v.reshape(n, KV, hd)
        if c.get("qk_norm"):
            q, k = rms(q, p("attn_q_norm.weight"), c["eps"]), rms(k, p("attn_k_norm.weight"), c["eps"])
        local = gemma and (i % c["swa_pattern"] < c["swa_pattern"] - 1)
        base = c["base_swa"] if local else c["base"]
        yarn = c.get("yarn") if mut != "no_yarn" else None
        q, k = rope(q, pos, base, hd, c["rope"], factors, yarn), rope(k, pos, base, hd, c["rope"], factors, yarn)
        mask = np.tril(np.ones((n, n), bool))
        if local:
            mask &= (np.arange(n)[:, None] - np.arange(n)[None, :]) < c["swa"]
        att = np.empty((n, H, hd))
        for hh in range(H):
            kh = hh % KV if mut == "gqa_interleaved" else hh // (H // KV)
            s = q[:, hh] @ k[:, kh].T / math.sqrt(hd)
            s = np.where(mask, s, -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            att[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, kh]
        o = att.reshape(n, H * hd) @ p("attn_output.weight").T
        if gemma and mut != "no_post_norms":
            o = rms(o, p("post_attention_norm.weight"), c["eps"])
        x = x + o
        h = rms(x, p("ffn_norm.weight"), c["eps"])
        g, u = h @ p("ffn_gate.weight").T, h @ p("ffn_up.weight").T
        act = gelu_tanh(g) if gemma and mut != "silu" else g / (1 + np.exp(-g))
        f = (act * u) @ p("ffn_down.weight").T
        if gemma and mut != "no_post_norms":
            f = rms(f, p("post_ffw_norm.weight"), c["eps"])
        x = x + f
    x = rms(x, W["output_norm.weight"], c["eps"])
    out = W["output.weight"] if "output.weight" in W else W["token_embd.weight"]
    return x @ out.T


def log_softmax(z):
    z = z.astype(np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def max_dls(a, b):
    return float(np.abs(log_softmax(a) - log_softmax(b)).max())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "../../engine/tests/fixtures/arch"))
    ap.add_argument("--only", nargs="*", help="model names (default: all)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    ok = True
    for name, c in MODELS.items():
        if a.only and name not in a.only:
            continue
        w = make_weights(c)
        path = os.path.join(a.out, f"{name}.gguf")
        write_gguf(path, name, c, w)
        rng = np.random.default_rng(1000 + c["seed"])
        ids = [BOS] + [int(t) for t in rng.integers(0, VOCAB - len(SPECIALS), c["n"] - 1)]
        lg = llamacpp_logits(path, ids)
        lg.astype("<f4").tofile(os.path.join(a.out, f"{name}.logits.bin"))
        ls = log_softmax(lg)
        finite = bool(np.isfinite(lg).all())
        spread = float((lg.max(-1) - lg.min(-1)).min())
        maxprob = float(np.exp(ls.max(-1)).mean())
        ref = numpy_forward(c, w, ids)
        d_np = max_dls(ref, lg)
        top1_np = float((ref.argmax(-1) == lg.argmax(-1)).mean())
        facts = {
            "name": name,
            "architecture": c["arch"],
            "gguf": f"{name}.gguf",
            "logits": f"{name}.logits.bin",
            "vocab_size": VOCAB,
            "rows": len(ids),
            "ids": ids,
            "bos_id": BOS,
            "eos_id": EOS,
            "hparams": {k: v for k, v in c.items() if k not in ("seed", "gain_qk", "n", "head_dim_key", "numpy_tol",
                                                                 "post_ffw_gain")},
            "context_length": CONTEXT,
            "tensors": {k: list(v.shape[::-1]) for k, v in w.items()},  # ggml order (ne0 first)
            "llamacpp": "llama-cpp-python 0.3.36 sdist build, F32 KV cache, 2 threads, one batch",
            "numpy_reference_max_abs_dlogsoftmax": d_np,
            "numpy_reference_top1": top1_np,
        }
        line = (f"{name:12s} {os.path.getsize(path):8d} B  rows {len(ids):3d}  finite {finite}  "
                f"min row range {spread:6.2f}  mean max-prob {maxprob:.3f}  "
                f"numpy-vs-llama.cpp max|dls| {d_np:.2e} top1 {top1_np:.3f}")
        if not finite or spread < 1.0 or maxprob > 0.9 or maxprob < 2.0 / VOCAB:
            ok = False
            line += "  <-- degenerate"
        muts = {m: max_dls(numpy_forward(c, w, ids, mut=m), lg) for m in MUTATIONS.get(name, [])}
        facts["numpy_mutations_max_abs_dlogsoftmax"] = muts
        line += "\n" + " " * 13 + "mutations (numpy vs llama.cpp): " + ", ".join(f"{m} {v:.3f}" for m, v in muts.items())
        if any(v < 0.01 for v in muts.values()):
            ok = False
            line += "  <-- a mutation is not detected"
        if d_np > c.get("numpy_tol", 2e-4) or top1_np < 1.0:
            ok = False
            line += "  <-- numpy reference disagrees"
        if "llama3" in c:
            w2 = {k: v for k, v in w.items() if k != "rope_freqs.weight"}
            with tempfile.TemporaryDirectory() as td:
                p2 = os.path.join(td, "norope.gguf")
                write_gguf(p2, name + "-norope", c, w2)
                lg2 = llamacpp_logits(p2, ids)
            lg2.astype("<f4").tofile(os.path.join(a.out, f"{name}.norope.logits.bin"))
            diff = max_dls(lg, lg2)
            top1_diff = float((lg.argmax(-1) != lg2.argmax(-1)).mean())
            np_diff = max_dls(numpy_forward(c, w, ids, use_rope_freqs=False), lg2)
            facts["rope_freqs"] = list(map(float, w["rope_freqs.weight"]))
            facts["llama3_rope_scaling"] = c["llama3"]
            facts["norope_logits"] = f"{name}.norope.logits.bin"
            facts["with_vs_without_rope_freqs_max_abs_dlogsoftmax"] = diff
            facts["with_vs_without_rope_freqs_top1_changed"] = top1_diff
            line += (f"\n{'':12s} llama.cpp with vs without rope_freqs: max|dls| {diff:.3f}, top-1 changed at "
                     f"{top1_diff:.1%} of rows (numpy-vs-llama.cpp without: {np_diff:.2e})")
            if diff < 0.05:
                ok = False
                line += "  <-- not sensitive"
        with open(os.path.join(a.out, f"{name}.json"), "w") as f:
            json.dump(facts, f, indent=1)
            f.write("\n")
        print(line, flush=True)
    total = sum(os.path.getsize(os.path.join(a.out, f)) for f in os.listdir(a.out))
    print(f"total {total} bytes in {a.out}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
