#!/usr/bin/env python3
"""gsm8k-table.py RUN_DIR... — one markdown table over `specd eval gsm8k` runs: each config's decode
tokens/s and speedup over the target-only baseline of its own run (pooled: completion tokens over
decode seconds, on the same problems), the median (min–max) of per-problem speedups, α, E,
drafted tokens per verify call and fidelity (final answer equal to target-only's).

    python3 scripts/gsm8k-table.py runs/gsm8k-suffix/*
"""
import os
import statistics
import sys

from gsm8k_results import rows as load


def main():
    print("| run | config | tok/s | speedup (pooled) | per-problem speedup: median (min–max) | α | E | drafted per call | fidelity |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in sys.argv[1:]:
        rows = load(run)
        base = {(r["problem"], r["seed"]): r for r in rows if r["config"] == "target-only"}
        configs = []
        for r in rows:
            if r["config"] not in configs:
                configs.append(r["config"])
        for c in configs:
            rs = [r for r in rows if r["config"] == c and (r["problem"], r["seed"]) in base]
            tok = sum(r["completion_tokens"] for r in rs)
            sec = sum(r["decode_s"] for r in rs)
            btok = sum(base[(r["problem"], r["seed"])]["completion_tokens"] for r in rs)
            bsec = sum(base[(r["problem"], r["seed"])]["decode_s"] for r in rs)
            tps, btps = tok / sec, btok / bsec
            per = [r["tokens_per_s"] / base[(r["problem"], r["seed"])]["tokens_per_s"] for r in rs]
            drafted = sum(r["drafted_tokens"] for r in rs)
            accepted = sum(r["accepted_tokens"] for r in rs)
            calls = sum(r["target_calls"] for r in rs)
            judged = sum(r["accepted_tokens"] + r["rejections"] for r in rs)
            alpha = accepted / judged if judged else 0.0
            fid = sum(1 for r in rs if r["fidelity"]) / len(rs)
            name = os.path.basename(run.rstrip("/"))
            if c == "target-only":
                print(f"| {name} | target-only | {tps:.1f} | 1.00× | – | – | 1.00 | 0 | 1.000 |")
                continue
            print(
                f"| {name} | `{c}` | {tps:.1f} | {tps / btps:.2f}× | {statistics.median(per):.2f} "
                f"({min(per):.2f}–{max(per):.2f}) | {alpha:.3f} | {tok / calls:.2f} | {drafted / calls:.2f} | {fid:.3f} |"
            )


if __name__ == "__main__":
    main()
