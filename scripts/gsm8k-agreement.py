#!/usr/bin/env python3
"""gsm8k-agreement.py RUN_A[:CONFIG] RUN_B[:CONFIG] — how often two sets of `specd eval gsm8k`
outputs (a run's config, default target-only) give the same final answer and the same text on the
same problems and seeds, with Wilson 95 % intervals: eval's fidelity, between any two.

The noise floor of answer fidelity: run the target alone twice under a change that should not
matter (a reworded system message with `--system`, another seed at T > 0) and compare:

    specd eval gsm8k --data D --limit 200 --configs exact --out runs/floor-a
    specd eval gsm8k --data D --limit 200 --configs exact --system "..." --out runs/floor-b
    python3 scripts/gsm8k-agreement.py runs/floor-a runs/floor-b

The core promise at T > 0, P(output ≠ the same-seed exact run) ≤ min(1, B), from one run:

    specd eval gsm8k --data D --limit 20 --seeds 0,1,2,3,4 --temperature 1 --max-tokens 64 \
        --configs "exact;topk:3@budget=0.5" --out runs/promise
    python3 scripts/gsm8k-agreement.py runs/promise:exact runs/promise:topk:3@budget=0.5

Two outputs with no final answer agree (as eval's fidelity counts them).
"""
import sys

from gsm8k_results import rows, wilson


def load(run, config):
    return {(r["problem"], r["seed"]): r for r in rows(run) if r["config"] == config}


def side(arg):
    """RUN or RUN:CONFIG (a config may itself hold colons: the run is the part before the first)."""
    run, _, config = arg.partition(":")
    return load(run, config or "target-only"), arg


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    (a, na), (b, nb) = side(sys.argv[1]), side(sys.argv[2])
    keys = sorted(set(a) & set(b))
    if not keys:
        sys.exit(f"no (problem, seed) is in both {na} and {nb}")
    n = len(keys)
    print(f"{na} vs {nb}: {n} (problem, seed) pairs")
    for what, field in (("final answer", "answer"), ("text", "text")):
        k = sum(a[x][field] == b[x][field] for x in keys)
        lo, hi = wilson(k, n)
        print(f"same {what}: {k}/{n} = {k / n:.3f} (Wilson 95 % {lo:.3f}-{hi:.3f})")


if __name__ == "__main__":
    main()
