"""llama.cpp's speculative modes on the GSM8K prompts of `specd eval gsm8k`: the anchor of
docs/results/drafters.md.

    flock /tmp/specd-build.lock scripts/llamacpp/build.sh /work/llamacpp   # builds llama-server too
    python3 scripts/llamacpp/spec_bench.py --bin /work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin \
        --data ../shared/data/gsm8k/test_dev.jsonl --limit 50 --out docs/results/llamacpp-spec.json

For each configuration (target-only, ngram-simple at its defaults and at n=3 m=8, ngram-mod, a draft
model with at most 4 drafted tokens) it starts one `llama-server` (2 threads, greedy, the target's
own chat template) and sends every problem as the same single user message specd's eval sends
(question, newline, the eval's instruction) to `/v1/chat/completions` with up to 256 tokens; the server's `timings` give decode tokens and
seconds (prompt processing excluded, as in specd's decode tok/s) and the draft counts. Prints a
Markdown table and writes every figure as JSON.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import time
import urllib.request

INSTRUCTION = ("Solve the problem step by step. End your answer with a final line of the form "
               "'#### N', where N is the final number.")
MODELS = os.path.expanduser("~/.cache/specd/models")

ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True, help="llama.cpp build/bin with llama-server")
ap.add_argument("--data", required=True)
ap.add_argument("--limit", type=int, default=50)
ap.add_argument("--max-tokens", type=int, default=256)
ap.add_argument("--target", default=f"{MODELS}/smollm2-135m-q8_0.gguf")
ap.add_argument("--draft", default=f"{MODELS}/smollm2-135m-q4_1.gguf")
ap.add_argument("--out", required=True)
args = ap.parse_args()

CONFIGS = {
    "target-only": [],
    "ngram-simple": ["--spec-type", "ngram-simple"],
    "ngram-simple n=3 m=8": ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3",
                             "--spec-ngram-simple-size-m", "8"],
    "ngram-mod": ["--spec-type", "ngram-mod"],
    "draft model (Q4_1)": ["--spec-type", "draft-simple", "-md", args.draft,
                           "--spec-draft-n-max", "4"],
}

questions = []
with open(args.data) as f:
    for line in f:
        questions.append(json.loads(line)["question"])
        if len(questions) == args.limit:
            break


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


results = {}
for name, extra in CONFIGS.items():
    port = free_port()
    cmd = [f"{args.bin}/llama-server", "-m", args.target, "-t", "2", "-c", "2048", "-np", "1",
           "--port", str(port), "--host", "127.0.0.1", "--jinja"] + extra
    log = open(f"/tmp/llama-server-{port}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "LD_LIBRARY_PATH": args.bin})
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                if proc.poll() is not None:
                    raise SystemExit(f"{name}: llama-server exited; see {log.name}")
                time.sleep(0.5)
        runs = []
        for q in questions:
            r = post(f"http://127.0.0.1:{port}/v1/chat/completions", {
                "messages": [{"role": "user", "content": f"{q}\n{INSTRUCTION}"}],
                "max_tokens": args.max_tokens, "temperature": 0.0, "cache_prompt": False,
            })
            t = r["timings"]
            runs.append({"n": t["predicted_n"], "ms": t["predicted_ms"],
                         "draft_n": t.get("draft_n", 0),
                         "draft_accepted": t.get("draft_n_accepted", 0),
                         "text": r["choices"][0]["message"]["content"]})
        results[name] = runs
        print(f"{name}: {sum(x['n'] for x in runs) / sum(x['ms'] for x in runs) * 1e3:.1f} tok/s",
              flush=True)
    finally:
        proc.terminate()
        proc.wait()

base = results["target-only"]
rows = []
for name, runs in results.items():
    tps = sum(x["n"] for x in runs) / sum(x["ms"] for x in runs) * 1e3
    base_tps = sum(x["n"] for x in base) / sum(x["ms"] for x in base) * 1e3
    per = [(x["n"] / x["ms"]) / (b["n"] / b["ms"]) for x, b in zip(runs, base)]
    drafted = sum(x["draft_n"] for x in runs)
    acc = sum(x["draft_accepted"] for x in runs)
    same = sum(x["text"] == b["text"] for x, b in zip(runs, base))
    rows.append({"config": name, "tok_s": tps, "speedup": tps / base_tps,
                 "per_problem_median": statistics.median(per), "min": min(per), "max": max(per),
                 "drafted": drafted, "accepted": acc, "same_text": same, "n": len(runs)})
print("| llama.cpp config | tok/s | speedup (pooled) | per-problem median (min–max) | drafted | accepted | text = target-only |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['config']} | {r['tok_s']:.1f} | {r['speedup']:.2f}× | {r['per_problem_median']:.2f} "
          f"({r['min']:.2f}–{r['max']:.2f}) | {r['drafted']} | {r['accepted']} | {r['same_text']}/{r['n']} |")
with open(args.out, "w") as f:
    json.dump({"command": " ".join(os.sys.argv), "rows": rows}, f, indent=1)
