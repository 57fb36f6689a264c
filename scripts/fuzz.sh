#!/usr/bin/env bash
# Runs each fuzzing target (fuzz/fuzz_targets/) for SECONDS (default 300) with libFuzzer through
# cargo fuzz, on the stable toolchain (RUSTC_BOOTSTRAP=1 lets it use the sanitizer flags), from
# the seed corpus in fuzz/seeds/ plus what earlier runs found (fuzz/corpus/, not versioned).
# Prints one line per target and writes the figures to OUT (default docs/results/fuzz.json).
# A crash leaves its input in fuzz/artifacts/TARGET/; make it a regression test (docs/fuzzing.md).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf tokenizer request wire)
out=${OUT:-docs/results/fuzz.json}
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz missing: installing it"
    cargo install cargo-fuzz --locked
fi
python3 fuzz/seeds/make.py
# Release code with debug assertions (overflow checks on), under AddressSanitizer.
cargo fuzz build
logs=$(mktemp -d)
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    start=$(date +%s)
    set +e
    cargo fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=4096 -malloc_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 >"$logs/$t.log" 2>&1
    rc=$?
    set -e
    echo "$t: rc $rc, $(( $(date +%s) - start )) s; $(grep -E '^stat::number_of_executed_units' "$logs/$t.log" | awk '{print $2}') executions; log $logs/$t.log"
done
python3 - "$logs" "$secs" "$out" "${targets[@]}" <<'PY'
import json, os, re, subprocess, sys
logs, secs, out, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
rows = []
for t in targets:
    text = open(os.path.join(logs, t + ".log"), errors="replace").read()
    stat = dict(re.findall(r"^stat::(\w+):\s+(\d+)", text, re.M))
    cov = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", text)
    crash = re.findall(r"(?:SUMMARY|==\d+== ERROR): .*|panicked at .*", text)
    arts = sorted(os.listdir(os.path.join("fuzz/artifacts", t)))
    rows.append({
        "target": t, "seconds": secs,
        "executions": int(stat.get("number_of_executed_units", 0)),
        "execs_per_sec": int(stat.get("average_exec_per_sec", 0)),
        "peak_rss_mb": int(stat.get("peak_rss_mb", 0)),
        "coverage": int(cov[-1][0]) if cov else None,
        "features": int(cov[-1][1]) if cov else None,
        "corpus": int(cov[-1][2]) if cov else None,
        "crashes": len(arts), "crash_lines": crash[:3], "artifacts": arts,
    })
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
json.dump({"commit": commit, "cpu": cpu, "command": "scripts/fuzz.sh " + str(secs), "targets": rows},
          open(out, "w"), indent=1)
print(f"| target | s | executions | exec/s | coverage | corpus | crashes |")
print(f"|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['target']} | {r['seconds']} | {r['executions']} | {r['execs_per_sec']} | {r['coverage']} | {r['corpus']} | {r['crashes']} |")
print("written to", out)
PY
