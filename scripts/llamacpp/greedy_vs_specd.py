"""Greedy decoding of a GGUF model by llama.cpp beside `specd generate --mode target-only`:
where the two token streams part, and the logit gap of llama.cpp's top two there.

    source /work/llamacpp/env.sh   # from scripts/llamacpp/build.sh
    python3 scripts/llamacpp/greedy_vs_specd.py --model ~/.cache/specd/models/gemma3-270m-q4_k_m.gguf \
        --prompt "The capital of France is" --max-tokens 64 [--specd target/release/specd]

llama.cpp runs with an F32 KV cache and 2 threads. Prints one JSON line.
"""
import argparse
import json
import subprocess

import numpy as np
from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--prompt", action="append", required=True)
ap.add_argument("--max-tokens", type=int, default=64)
ap.add_argument("--specd", default="target/release/specd")
args = ap.parse_args()

m = Llama(model_path=args.model, logits_all=True, type_k=0, type_v=0, n_ctx=1024,
          n_threads=2, verbose=False)
for prompt in args.prompt:
    out = json.loads(subprocess.run(
        [args.specd, "generate", "--target", args.model, "--mode", "target-only", "--prompt",
         prompt, "--max-tokens", str(args.max_tokens), "--json"],
        check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    ours = out["token_ids"]
    ids = m.tokenize(prompt.encode(), add_bos=True, special=True)
    # Teacher-forced: llama.cpp's logits over specd's prompt + output.
    m.reset()
    m.eval(ids + ours)
    n = len(ids)
    theirs_tf = [int(np.argmax(m.scores[n - 1 + i])) for i in range(len(ours))]
    agree_tf = next((i for i, (a, b) in enumerate(zip(ours, theirs_tf)) if a != b), len(ours))
    gap = None
    if agree_tf < len(ours):
        row = np.array(m.scores[n - 1 + agree_tf])
        gap = float(row[theirs_tf[agree_tf]] - row[ours[agree_tf]])
    # Free-running greedy llama.cpp.
    m.reset()
    m.eval(ids)
    greedy = []
    for _ in range(len(ours)):
        t = int(np.argmax(m.scores[m.n_tokens - 1]))
        greedy.append(t)
        m.eval([t])
    agree = next((i for i, (a, b) in enumerate(zip(ours, greedy)) if a != b), len(ours))
    print(json.dumps({"prompt": prompt, "tokens": len(ours), "equal_greedy_prefix": agree,
                      "teacher_forced_agreement_until": agree_tf,
                      "llamacpp_logit_gap_at_parting": gap,
                      "identical": ours == greedy}))
