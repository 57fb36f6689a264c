#!/usr/bin/env bash
# gpu-check.sh — specd's checks and timings on one GPU machine, in at most ~5 minutes, with no
# network, no Rust toolchain and no model files: the carried binary makes its own random-weight
# models (`specd models synth`, timing only) and the CUDA libraries come from the machine's PyTorch
# wheels (site-packages/nvidia/*/lib) through LD_LIBRARY_PATH.
#
# Usage:  scripts/gpu-check.sh [BINARY[.xz]] [OUTDIR]
#   BINARY  a specd built with `--features cuda` for the GPU's compute capability (default
#           target/cuda/release/specd.xz; xz-compressed or not)
#   OUTDIR  where gpu-check.jsonl goes (default $OUT, else ./gpu-check-out). One JSON object per
#           line, written as each step ends, so a run cut off still reports what it measured.
# Environment:
#   SPECD_CHECK_DEVICE  device under test (default cuda; candle-cpu dry-runs the script on a
#                       machine without a GPU, with a binary built with --features candle)
#   SPECD_CHECK_SMALL=1 small shapes only (tiny, smollm2-135m), for that dry run
#   SPECD_CHECK_WORK    scratch for the synthesized models (default /tmp/specd-gpu-check; ~25 GB)
#   SPECD_CHECK_BW_GBS  memory bandwidth of the floor (default 4800, an H200)
#
# Steps (each under its own timeout; the order puts the cheap correctness checks first):
#   env        GPU, driver, libraries found, binary version
#   errors     --device cuda:7 on a one-GPU machine: a clear error, not a panic
#   agree-*    CPU (specd's kernels) vs the device on one synthesized smollm2-135m-shape model
#              (q8_0, bf16): teacher-forced top-1 agreement and max |Δ logit| over 256 positions
#   spec       greedy speculative vs target-only on the device (target bf16, draft q8_0 of the same
#              weights): identical texts out of 8 prompts × 128 tokens, teacher-forced agreement of
#              the speculative output under target-only (one-token) decoding, α, E
#   fwd-*      t_v(k) for k in 1,2,4,8,16,32 at 512 tokens of context (llama-8b shape bf16, then
#              q4_k), the draft step of llama-1b shape, each beside the bandwidth floor
set -uo pipefail

BIN_IN=${1:-target/cuda/release/specd.xz}
OUTDIR=${2:-${OUT:-./gpu-check-out}}
DEV=${SPECD_CHECK_DEVICE:-cuda}
SMALL=${SPECD_CHECK_SMALL:-0}
WORK=${SPECD_CHECK_WORK:-/tmp/specd-gpu-check}
BW=${SPECD_CHECK_BW_GBS:-4800}
mkdir -p "$OUTDIR" "$WORK"
JSONL=$OUTDIR/gpu-check.jsonl
: >"$JSONL"
T0=$(date +%s)

log() { echo "gpu-check [$(($(date +%s) - T0)) s]: $*" >&2; }
# record STEP JSON-OBJECT: one line of the report (the step's name and elapsed seconds added).
record() {
    python3 - "$1" "$2" "$(($(date +%s) - T0))" >>"$JSONL" <<'EOF'
import json, sys
step, body, t = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    obj = json.loads(body) if body.strip() else {}
except json.JSONDecodeError as e:
    obj = {"error": f"unparsable output: {e}", "raw": body[-2000:]}
if not isinstance(obj, dict):
    obj = {"value": obj}
print(json.dumps({"step": step, "t_s": t, **obj}), flush=True)
EOF
    log "$1 done"
}

# The binary.
case "$BIN_IN" in
*.xz)
    BIN=$WORK/specd
    xz -dc "$BIN_IN" >"$BIN" || { record env '{"error": "cannot decompress the binary"}'; exit 1; }
    chmod +x "$BIN"
    ;;
*) BIN=$BIN_IN ;;
esac

# CUDA libraries from the machine's Python wheels (PyTorch cu13x: site-packages/nvidia/cu13/lib,
# or one folder per library). libcuda.so.1 is the driver's own.
LIBS=$(python3 - <<'EOF'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
dirs = []
for r in roots:
    for d in glob.glob(os.path.join(r, "nvidia", "*", "lib")) + glob.glob(os.path.join(r, "nvidia", "*", "lib64")):
        if os.path.isdir(d) and d not in dirs:
            dirs.append(d)
print(":".join(dirs))
EOF
)
export LD_LIBRARY_PATH=${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | head -1)
VERSION=$("$BIN" --version 2>&1)
MISSING=$(ldd "$BIN" 2>&1 | grep "not found" | tr '\n' ';')
record env "$(python3 -c 'import json,sys; print(json.dumps({"gpu": sys.argv[1], "binary": sys.argv[2], "libs_missing": sys.argv[3], "ld_library_path": sys.argv[4], "device": sys.argv[5], "cores": sys.argv[6]}))' \
    "$GPU" "$VERSION" "$MISSING" "$LIBS" "$DEV" "$(nproc)")"
if [ -n "$MISSING" ]; then
    log "the binary cannot start: $MISSING"
    exit 1
fi

synth() { # SHAPE DTYPE → path
    local f=$WORK/$1-$2.gguf
    if [ ! -s "$f" ]; then
        local s
        s=$(date +%s.%N)
        timeout 240 "$BIN" models synth --shape "$1" --dtype "$2" --seed 1 --out "$f" >/dev/null 2>"$WORK/synth.err" ||
            { log "synth $1 $2 failed: $(tail -3 "$WORK/synth.err")"; return 1; }
        log "synth $1 $2: $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$s" "$(date +%s.%N)") s"
    fi
    echo "$f"
}

# Bad input: a GPU that is not there.
if [ "$DEV" = cuda ]; then
    ERR=$("$BIN" score --model "$(synth tiny f32)" --device cuda:7 --prompt "a" --continuation "b" 2>&1)
    record errors "$(python3 -c 'import json,sys; print(json.dumps({"cmd": "score --device cuda:7", "exit_ok": sys.argv[2] == "0", "message": sys.argv[1][-600:], "panicked": "panicked" in sys.argv[1]}))' "$ERR" "$?")"
fi

# CPU vs the device, teacher-forced over 256 positions of one synthesized model.
SHAPE_S=smollm2-135m
[ "$SMALL" = 1 ] && SHAPE_S=tiny
IDS=$(python3 -c "print(','.join(str((i * 7919 + 13) % 500) for i in range(256)))")
for dt in q8_0 bf16; do
    M=$(synth $SHAPE_S $dt) || continue
    OUT_J=$(timeout 120 "$BIN" score --model "$M" --device cpu --compare-device "$DEV" \
        --prompt-ids "${IDS%%,*}" --continuation-ids "${IDS#*,}" --json 2>"$WORK/agree.err" |
        python3 -c 'import json,sys; j=json.loads(sys.stdin.read()); print(json.dumps({"model": j["model"], **j["compare"]}))')
    [ -n "$OUT_J" ] || OUT_J=$(python3 -c 'import json,sys; print(json.dumps({"error": sys.argv[1][-800:]}))' "$(cat "$WORK/agree.err")")
    record "agree-$dt" "$OUT_J"
done

# Greedy speculative vs target-only on the device: target bf16, draft q8_0 of the same weights.
TGT=$(synth $SHAPE_S bf16)
DRF=$(synth $SHAPE_S q8_0)
PROMPTS=("The quick brown fox" "In the beginning" "Once upon a time there was" "def fibonacci(n):"
    "The capital of France is" "1, 2, 3, 4," "Speculative decoding makes" "A list of prime numbers:")
: >"$WORK/spec.jsonl"
for p in "${PROMPTS[@]}"; do
    S=$(timeout 60 "$BIN" generate --target "$TGT" --draft "$DRF" --target-device "$DEV" --draft-device "$DEV" \
        --prompt "$p" --gamma 4 --max-tokens 128 --json 2>>"$WORK/spec.err" | tail -1)
    B=$(timeout 60 "$BIN" generate --target "$TGT" --target-device "$DEV" \
        --prompt "$p" --gamma 0 --max-tokens 128 --json 2>>"$WORK/spec.err" | tail -1)
    IDS_S=$(echo "$S" | python3 -c 'import json,sys; print(",".join(map(str, json.loads(sys.stdin.read())["token_ids"])))' 2>/dev/null)
    SC=""
    if [ -n "$IDS_S" ]; then
        SC=$(timeout 60 "$BIN" score --model "$TGT" --device "$DEV" --steps --prompt "$p" \
            --continuation-ids "$IDS_S" --json 2>>"$WORK/spec.err" | tail -1)
    fi
    python3 - "$S" "$B" "$SC" "$p" >>"$WORK/spec.jsonl" <<'EOF'
import json, sys
def load(s):
    try:
        return json.loads(s)
    except Exception:
        return None
s, b, sc = (load(x) for x in sys.argv[1:4])
row = {"prompt": sys.argv[4], "ok": bool(s and b and sc)}
if row["ok"]:
    row.update(identical=s["token_ids"] == b["token_ids"], tokens=len(s["token_ids"]),
               non_argmax=sc["non_argmax_tokens"], alpha=s["alpha"], E=s["tokens_per_call"],
               spec_tps=s["tokens_per_s"], target_only_tps=b["tokens_per_s"])
print(json.dumps(row))
EOF
done
record spec "$(python3 - "$WORK/spec.jsonl" "$WORK/spec.err" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ok = [r for r in rows if r["ok"]]
tok = sum(r["tokens"] for r in ok)
out = {"prompts": len(rows), "completed": len(ok),
       "identical_texts": sum(r["identical"] for r in ok),
       "teacher_forced_agreement": (1 - sum(r["non_argmax"] for r in ok) / tok) if tok else None,
       "tokens": tok,
       "alpha_mean": sum(r["alpha"] for r in ok) / len(ok) if ok else None,
       "E_mean": sum(r["E"] for r in ok) / len(ok) if ok else None,
       "speedup_median": sorted(r["spec_tps"] / r["target_only_tps"] for r in ok)[len(ok) // 2] if ok else None}
if len(ok) < len(rows):
    out["errors"] = open(sys.argv[2]).read()[-1500:]
print(json.dumps(out))
EOF
)"

# t_v(k) at 512 tokens of context, beside the bandwidth floor.
forward() { # STEP SHAPE DTYPE KS TIMEOUT
    local m
    m=$(synth "$2" "$3") || { record "$1" '{"error": "synth failed"}'; return; }
    local j
    j=$(timeout "$5" "$BIN" bench forward --model "$m" --device "$DEV" --context 512 --k "$4" \
        --reps 11 --bandwidth-gbs "$BW" --profile --json 2>"$WORK/fwd.err" | tail -1)
    [ -n "$j" ] || j=$(python3 -c 'import json,sys; print(json.dumps({"error": sys.argv[1][-800:]}))' "$(cat "$WORK/fwd.err")")
    record "$1" "$j"
    rm -f "$m" # the disk and page cache are for the next model
}
if [ "$SMALL" = 1 ]; then
    forward fwd-smollm2-bf16 smollm2-135m bf16 1,2,4,8,16,32 120
    forward fwd-smollm2-q8_0 smollm2-135m q8_0 1 60
else
    forward fwd-llama8b-bf16 llama-8b bf16 1,2,4,8,16,32 150
    forward fwd-llama1b-bf16 llama-1b bf16 1 60
    forward fwd-llama8b-q4_k llama-8b q4_k 1,2,4,8,16,32 150
fi
log "done in $(($(date +%s) - T0)) s: $JSONL"
