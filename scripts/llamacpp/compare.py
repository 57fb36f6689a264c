#!/usr/bin/env python3
"""specd vs llama.cpp on real GGUF models: teacher-forced numerics over GSM8K chat text, and tokens/s.

    . /work/llamacpp/env.sh    # scripts/llamacpp/build.sh DIR writes DIR/env.sh
    python3 scripts/llamacpp/compare.py smollm2-135m-f16 smollm2-135m-q8_0 ... [--out docs/results/llamacpp-compare.md]

A model is a GGUF path or a preset name (resolved in $SPECD_HOME/models, default ~/.cache/specd/models,
after `specd models fetch`). For each: GSM8K test_dev examples (question + answer) are chat-formatted with
the model's template (tokenizer.chat_template, rendered with jinja2; plain "Question:/Answer:" text when the
model has none) into one conversation, tokenized by llama.cpp, and the first --positions+1 ids are
teacher-forced through llama.cpp (logits_all, F32 KV cache, --threads threads) and through
`specd score --prompt-ids ID0 --continuation-ids ID1,... --json` (the same ids). Per position: NLL of the
next id and the argmax; the table gives top-1 (argmax) agreement, max and mean |d NLL|.

Speed: llama.cpp `llama-bench -m FILE -n 128 -t THREADS` (tg128, and pp512), specd
`specd bench generate --target FILE --gamma 2 --max-tokens 128 --json` (its target-only tokens/s; the γ=2 run it
also does is not used). Both are wall-clock figures on whatever else the machine is doing.
"""

import argparse
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import time

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))


def resolve(model):
    if os.path.isfile(model):
        return os.path.abspath(model)
    home = os.environ.get("SPECD_HOME", os.path.expanduser("~/.cache/specd"))
    p = os.path.join(home, "models", model + ".gguf")
    if os.path.isfile(p):
        return p
    sys.exit(f"{model}: neither a file nor a preset in {os.path.dirname(p)} (run `specd models fetch`)")


def gsm8k(path, n):
    out = []
    with open(path) as f:
        for line in f:
            if len(out) >= n:
                break
            out.append(json.loads(line))
    return out


def chat_text(llm, examples):
    tmpl = llm.metadata.get("tokenizer.chat_template")
    if tmpl:
        import jinja2

        env = jinja2.Environment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(Exception(msg))
        msgs = []
        for e in examples:
            msgs += [{"role": "user", "content": e["question"]}, {"role": "assistant", "content": e["answer"]}]
        tok = lambda k: llm._model.token_get_text(int(llm.metadata[k])) if k in llm.metadata else ""
        text = env.from_string(tmpl).render(messages=msgs, add_generation_prompt=False,
                                            bos_token=tok("tokenizer.ggml.bos_token_id"),
                                            eos_token=tok("tokenizer.ggml.eos_token_id"))
        return text, "chat template"
    return "".join(f"Question: {e['question']}\nAnswer: {e['answer']}\n\n" for e in examples), "plain"


def llamacpp_run(path, positions, threads, data):
    import llama_cpp

    n_ctx = positions + 64
    llm = llama_cpp.Llama(model_path=path, logits_all=True, type_k=0, type_v=0, n_ctx=n_ctx, n_batch=512,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    k = 8
    while True:
        text, how = chat_text(llm, gsm8k(data, k))
        ids = llm.tokenize(text.encode(), add_bos=llm._model.add_bos_token(), special=True)
        if len(ids) > positions or k > 1000:
            break
        k *= 2
    ids = ids[: positions + 1]
    t0 = time.time()
    llm.eval(ids)
    dt = time.time() - t0
    scores = np.array(llm.scores[: len(ids) - 1], dtype=np.float64)
    m = scores.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(scores - m).sum(-1, keepdims=True)))[:, 0]
    nxt = np.array(ids[1:])
    nll = lse - scores[np.arange(len(nxt)), nxt]
    argmax = scores.argmax(-1)
    del llm
    return ids, nll, argmax, how, dt


def specd_score(specd, path, ids):
    cmd = [specd, "score", "--model", path, "--prompt-ids", str(ids[0]),
           "--continuation-ids", ",".join(map(str, ids[1:])), "--json"]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.time() - t0
    if r.returncode != 0:
        return None, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}", dt
    j = json.loads(r.stdout.strip().splitlines()[-1])
    pt = j["per_token"]
    assert [t["id"] for t in pt] == list(ids[1:]), "specd scored other ids"
    return (np.array([t["nll"] for t in pt]), np.array([t["argmax"] for t in pt])), None, dt


def llama_bench(bindir, path, threads):
    cmd = [os.path.join(bindir, "llama-bench"), "-m", path, "-n", "128", "-t", str(threads), "-o", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return {}
    out = {}
    for row in json.loads(r.stdout):
        key = f"pp{row['n_prompt']}" if row["n_gen"] == 0 else f"tg{row['n_gen']}"
        out[key] = row["avg_ts"]
    return out


def specd_bench(specd, path):
    # The draft is the model itself (bench generate needs one; only its target-only figure is used).
    cmd = [specd, "bench", "generate", "--target", path, "--draft", path, "--gamma", "2", "--max-tokens", "128", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])["target_only_tokens_per_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="GGUF files or preset names")
    ap.add_argument("--positions", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="/work/shared/data/gsm8k/test_dev.jsonl")
    ap.add_argument("--specd", default=os.path.join(REPO, "target/release/specd"))
    ap.add_argument("--llamacpp-bin", default=os.environ.get("LLAMA_CPP_LIB_PATH", ""))
    ap.add_argument("--no-speed", action="store_true", help="skip llama-bench and specd bench generate")
    ap.add_argument("--vs-f32", action="store_true",
                    help="also score each quantized model's own F32 dequantization (specd models quantize "
                         "--type f32) with llama.cpp: how close each engine comes to exact arithmetic on "
                         "the same weights")
    ap.add_argument("--out", help="write the markdown report here too (e.g. docs/results/llamacpp-compare.md)")
    a = ap.parse_args()
    assert a.positions >= 1

    rows, notes = [], []
    for model in a.models:
        path = resolve(model)
        name = os.path.basename(path)
        ids, nll_l, am_l, how, dt_l = llamacpp_run(path, a.positions, a.threads, a.data)
        s, err, dt_s = specd_score(a.specd, path, ids)
        n = len(ids) - 1
        row = {"model": name, "positions": n, "text": how, "llamacpp_eval_s": dt_l, "specd_score_s": dt_s}
        if s is None:
            row["error"] = err
        else:
            nll_s, am_s = s
            d = np.abs(nll_s - nll_l)
            row.update(top1=float((am_s == am_l).mean()), mismatches=int((am_s != am_l).sum()),
                       max_dnll=float(d.max()), mean_dnll=float(d.mean()),
                       mean_nll_llamacpp=float(nll_l.mean()), mean_nll_specd=float(nll_s.mean()))
        if a.vs_f32 and s is not None:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                f32 = os.path.join(tmp, "f32.gguf")
                subprocess.run([a.specd, "models", "quantize", path, f32, "--type", "f32"],
                               check=True, capture_output=True)
                ids_x, nll_x, am_x, _, _ = llamacpp_run(f32, a.positions, a.threads, a.data)
            assert list(ids_x) == list(ids), "the F32 file tokenizes differently"
            row.update(specd_vs_f32_top1=float((am_s == am_x).mean()),
                       llamacpp_vs_f32_top1=float((am_l == am_x).mean()),
                       specd_vs_f32_mean_dnll=float(np.abs(nll_s - nll_x).mean()),
                       llamacpp_vs_f32_mean_dnll=float(np.abs(nll_l - nll_x).mean()))
        if not a.no_speed:
            lb = llama_bench(a.llamacpp_bin, path, a.threads)
            row["llamacpp_tg128"] = lb.get("tg128")
            row["llamacpp_pp512"] = lb.get("pp512")
            row["specd_target_only"] = specd_bench(a.specd, path) if s is not None else None
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    f = lambda v, fmt: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)
    lines = [
        "# specd vs llama.cpp: teacher-forced numerics and tokens/s",
        "",
        "```",
        "python3 scripts/llamacpp/compare.py " + " ".join(shlex.quote(x) for x in sys.argv[1:]),
        "```",
        "",
        f"{datetime.date.today().isoformat()}, llama.cpp from the llama-cpp-python 0.3.36 sdist "
        f"(scripts/llamacpp/build.sh: CPU, AVX-512 without AMX), {a.threads} threads, F32 KV cache on both sides. "
        "Text: GSM8K test_dev question + answer pairs as one chat (the model's template), tokenized by llama.cpp; "
        "both engines score the same ids (specd through `specd score --prompt-ids`). "
        "Top-1 = the two argmaxes agree; Δ NLL = |NLL_specd − NLL_llama.cpp| of the next id. "
        "Speed: llama.cpp `llama-bench -n 128` tg128 (and pp512), specd `bench generate` target-only tokens/s "
        "(128 tokens over its built-in chat prompts); wall-clock on a shared 2-core machine.",
        "",
        "| model | positions | top-1 agreement | max \\|Δ NLL\\| | mean \\|Δ NLL\\| | mean NLL (llama.cpp / specd) "
        "| llama.cpp tg128 tok/s | llama.cpp pp512 tok/s | specd target-only tok/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['positions']} | specd failed: {r['error']} | | | | "
                         f"{f(r.get('llamacpp_tg128'), '.1f')} | {f(r.get('llamacpp_pp512'), '.1f')} | — |")
            continue
        lines.append(
            f"| {r['model']} | {r['positions']} | {r['top1']:.2%} ({r['mismatches']} mismatches) "
            f"| {r['max_dnll']:.2e} | {r['mean_dnll']:.2e} "
            f"| {r['mean_nll_llamacpp']:.4f} / {r['mean_nll_specd']:.4f} "
            f"| {f(r.get('llamacpp_tg128'), '.1f')} | {f(r.get('llamacpp_pp512'), '.1f')} "
            f"| {f(r.get('specd_target_only'), '.1f')} |")
    if any("specd_vs_f32_top1" in r for r in rows):
        lines += ["", "Each engine against exact arithmetic on the same weights (the model's own F32 "
                  "dequantization run by llama.cpp; specd and llama.cpp agree on F32 files):", "",
                  "| model | specd top-1 vs F32 | llama.cpp top-1 vs F32 | specd mean \\|Δ NLL\\| vs F32 "
                  "| llama.cpp mean \\|Δ NLL\\| vs F32 |", "|---|---|---|---|---|"]
        for r in rows:
            if "specd_vs_f32_top1" in r:
                lines.append(f"| {r['model']} | {r['specd_vs_f32_top1']:.2%} | {r['llamacpp_vs_f32_top1']:.2%} "
                             f"| {r['specd_vs_f32_mean_dnll']:.2e} | {r['llamacpp_vs_f32_mean_dnll']:.2e} |")
    lines += ["", "Raw rows:", "", "```"] + [json.dumps(r) for r in rows] + ["```", ""] + notes
    md = "\n".join(lines)
    print(md)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as fh:
            fh.write(md)


if __name__ == "__main__":
    main()
