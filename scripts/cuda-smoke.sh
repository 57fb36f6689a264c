#!/usr/bin/env bash
# cuda-smoke.sh BINARY — checks a `--features cuda` build on a machine without a GPU (CI):
#   1. it needs only versioned CUDA libraries (NVIDIA's drivers and wheels ship no unversioned .so);
#   2. against the toolchain's driver stub it starts, runs a model on the CPU, and `--device cuda`
#      is a clear error naming the driver, not a panic.
# Needs the env of scripts/cuda-toolchain.sh (SPECD_CUDA_LIB; the stub in $SPECD_CUDA_LIB/../../../nodriver).
set -euo pipefail
BIN=$1
fail() { echo "cuda-smoke: FAIL: $*" >&2; exit 1; }

needed=$(readelf -d "$BIN" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
echo "NEEDED: $(echo $needed)"
for lib in libcuda.so.1 libcublas.so.13 libcudart.so.13 libcurand.so.10; do
    echo "$needed" | grep -qx "$lib" || fail "$lib is not among the NEEDED libraries"
done
for lib in $needed; do
    [[ $lib =~ \.so\.[0-9]+$ ]] || fail "$lib is not a versioned name"
done

stub_dir=$(cd "$SPECD_CUDA_LIB/../../.." && pwd)/nodriver
[ -e "$stub_dir/libcuda.so.1" ] || fail "no driver stub at $stub_dir"
export LD_LIBRARY_PATH=$stub_dir:$SPECD_CUDA_LIB
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$BIN" models synth --shape tiny --dtype q8_0 --out "$tmp/tiny.gguf" >/dev/null
out=$("$BIN" generate --target "$tmp/tiny.gguf" --prompt "the cat" --gamma 0 --max-tokens 4 --json) ||
    fail "the cuda build cannot generate on the CPU"
echo "$out" | grep -q '"target_device":"cpu"' || fail "generate --json lacks target_device: $out"
set +e
err=$("$BIN" generate --target "$tmp/tiny.gguf" --target-device cuda --prompt "the cat" --gamma 0 --max-tokens 4 2>&1)
rc=$?
set -e
[ $rc -eq 1 ] || fail "--device cuda without a driver exited $rc (expected 1): $err"
echo "$err" | grep -q "panicked" && fail "--device cuda without a driver panicked: $err"
echo "$err" | grep -q "cannot open CUDA device 0" || fail "unclear error: $err"
echo "cuda-smoke: ok ($(echo "$err" | tail -1 | cut -c1-160)...)"
