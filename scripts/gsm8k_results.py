"""What the gsm8k-*.py scripts share: reading a `specd eval gsm8k` run and Wilson intervals."""
import json
import math
import os


def rows(run):
    """The run's finished records (results.jsonl; a torn last line is skipped)."""
    out = []
    for line in open(os.path.join(run, "results.jsonl")):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("ok"):
            out.append(r)
    return out


def wilson(k, n, z=1.96):
    """Wilson 95 % interval of k successes in n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))
