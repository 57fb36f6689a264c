#!/usr/bin/env python3
"""Target-only tokens/s of two specd binaries, run alternately on the same prompts.

Usage: scripts/ab-target-only.py BASELINE_BIN CANDIDATE_BIN [ROUNDS]

Each round runs the six chat prompts of `specd bench generate` (128 tokens, T = 0) through both
binaries, the order flipping from prompt to prompt, so drift on a shared machine hits both alike.
Prints the median tokens/s of each, the median and minimum of the per-run ratios
candidate/baseline, and whether the token ids were identical.
"""
import json
import statistics
import subprocess
import sys

PROMPTS = [
    "Explain why the sky is blue in a short paragraph.",
    "Write a Python function that checks whether a number is prime.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "List five tips for staying productive while working from home.",
    "What is the capital of France? Tell me a little about its history.",
    "Summarize the plot of Romeo and Juliet.",
]


def run(binary, prompt):
    out = subprocess.run(
        [binary, "generate", "--prompt", prompt, "--chat", "--max-tokens", "128",
         "--mode", "target-only", "--json"],
        capture_output=True, text=True, check=True,
    ).stdout
    j = json.loads(out.strip().splitlines()[-1])
    return j["tokens_per_s"], j["token_ids"]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    bins = {"baseline": sys.argv[1], "candidate": sys.argv[2]}
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    tps = {k: [] for k in bins}
    ratios, identical = [], True
    for r in range(rounds):
        for i, p in enumerate(PROMPTS):
            order = list(bins) if (r + i) % 2 == 0 else list(bins)[::-1]
            got = {k: run(bins[k], p) for k in order}
            for k in bins:
                tps[k].append(got[k][0])
            ratios.append(got["candidate"][0] / got["baseline"][0])
            identical &= got["candidate"][1] == got["baseline"][1]
    for k in bins:
        print(f"{k:9s} {bins[k]}: median {statistics.median(tps[k]):.1f} tok/s")
    print(f"candidate/baseline: median {statistics.median(ratios):.3f}, "
          f"min {min(ratios):.3f} over {len(ratios)} alternating pairs")
    print(f"identical token ids: {identical}")


if __name__ == "__main__":
    main()
