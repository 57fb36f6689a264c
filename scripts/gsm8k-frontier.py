#!/usr/bin/env python3
"""gsm8k-frontier.py RUN [FLOOR_RUN] — the fidelity/speed frontier of one `specd eval gsm8k` run, on
the problems every config finished: per config, fidelity (same final answer as target-only) and
accuracy with Wilson 95 % intervals, E (tokens per target call) and its gain over the `exact`
config, pooled speedup over target-only, and lossy accepts per problem. With FLOOR_RUN (the target
alone under a change that should not matter, e.g. `--system "…"` reworded), the noise floor first:
how often the target's own answer survives that change, on the same problems.

    python3 scripts/gsm8k-frontier.py runs/gsm8k-frontier runs/gsm8k-floor-system
"""
import sys

from gsm8k_results import rows as load, wilson


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    rows = load(sys.argv[1])
    configs = []
    by = {}
    for r in rows:
        if r["config"] not in by:
            configs.append(r["config"])
        by.setdefault(r["config"], {})[(r["problem"], r["seed"])] = r
    keys = sorted(set.intersection(*(set(d) for d in by.values())))
    n = len(keys)
    if n == 0:
        sys.exit("no problem was finished by every config")
    base = by["target-only"]
    print(f"{n} problems finished by all {len(configs)} configs\n")
    if len(sys.argv) == 3:
        floor = {(r["problem"], r["seed"]): r for r in load(sys.argv[2]) if r["config"] == "target-only"}
        fk = [k for k in keys if k in floor]
        same = sum(floor[k]["answer"] == base[k]["answer"] for k in fk)
        lo, hi = wilson(same, len(fk))
        print(f"noise floor: the target's answer unchanged under {sys.argv[2]}'s change: "
              f"{same}/{len(fk)} = {same / len(fk):.3f} (Wilson 95 % {lo:.3f}–{hi:.3f})\n")

    def pooled(c):
        d = by[c]
        toks = sum(d[k]["completion_tokens"] for k in keys)
        calls = sum(d[k]["target_calls"] for k in keys)
        secs = sum(d[k]["decode_s"] for k in keys)
        return toks / calls, toks / secs

    e_exact = pooled("exact")[0] if "exact" in by else None
    tps_base = pooled("target-only")[1]
    print("| config | fidelity (Wilson 95 %) | accuracy (Wilson 95 %) | E | E gain over exact | speedup | lossy accepts per problem |")
    print("|---|---|---|---|---|---|---|")
    for c in configs:
        d = by[c]
        fid = sum(d[k]["answer"] == base[k]["answer"] for k in keys)
        acc = sum(bool(d[k]["correct"]) for k in keys)
        flo, fhi = wilson(fid, n)
        alo, ahi = wilson(acc, n)
        e, tps = pooled(c)
        gain = f"{(e / e_exact - 1) * 100:+.1f} %" if e_exact and c != "target-only" else "–"
        lossy = sum(d[k]["lossy_accepted"] for k in keys) / n
        print(f"| `{c}` | {fid / n:.3f} ({flo:.3f}–{fhi:.3f}) | {acc / n:.3f} ({alo:.3f}–{ahi:.3f}) | "
              f"{e:.2f} | {gain} | {tps / tps_base:.2f}× | {lossy:.2f} |")


if __name__ == "__main__":
    main()
