#!/usr/bin/env python3
"""gsm8k-promise.py RUN — the budget's promise at T > 0, from one `specd eval gsm8k` run that has an
`exact` config and relaxed configs with `budget=B`, over several seeds: for each relaxed config, the
share of outputs whose text differs from the same-seed exact run (Wilson 95 % interval) beside the
bound min(1, B), and the mean charge spent and lossy accepts per output.

    specd eval gsm8k --data D --limit 20 --seeds 0,1,2,3,4 --temperature 1 --max-tokens 64 \\
        --configs "exact;topk:3@budget=0.1;topk:3@budget=0.5" --out runs/promise
    python3 scripts/gsm8k-promise.py runs/promise
"""
import re
import sys

from gsm8k_results import rows, wilson

if len(sys.argv) != 2:
    sys.exit(__doc__)
run = sys.argv[1]
by = {}
for r in rows(run):
    by.setdefault(r["config"], {})[(r["problem"], r["seed"])] = r
exact = by["exact"]
print("| config | B | outputs | differ from the same-seed exact run | Wilson 95 % | bound min(1, B) | mean Σc spent | mean lossy accepts |")
print("|---|---|---|---|---|---|---|---|")
for c, d in by.items():
    if c in ("exact", "target-only"): continue
    keys = sorted(set(d) & set(exact))
    n = len(keys)
    k = sum(d[x]["text"] != exact[x]["text"] for x in keys)
    lo, hi = wilson(k, n)
    b = float(re.search(r"budget=([0-9.]+)", c).group(1))
    spent = sum(d[x]["budget_spent"] for x in keys)/n
    lossy = sum(d[x]["lossy_accepted"] for x in keys)/n
    print(f"| `{c}` | {b} | {n} | {k/n:.3f} | {lo:.3f}–{hi:.3f} | {min(1,b)} | {spent:.3f} | {lossy:.3f} |")
