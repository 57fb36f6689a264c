#!/usr/bin/env bash
# cuda_image_check.sh IMAGE — a Dockerfile.cuda image on a machine without a GPU (CI): with the
# toolchain's driver stub mounted as libcuda.so.1 (what the NVIDIA container toolkit mounts from the
# host driver on a GPU machine), the image's binary finds every CUDA library it needs inside the
# image, runs a model on the CPU, and `--device cuda` is a clear error naming the driver.
# Needs the env of scripts/cuda-toolchain.sh (SPECD_CUDA_LIB; the stub beside it in nodriver/).
set -euo pipefail
IMAGE=$1
fail() { echo "cuda_image_check: FAIL: $*" >&2; exit 1; }
stub_dir=$(cd "$SPECD_CUDA_LIB/../../.." && pwd)/nodriver
[ -e "$stub_dir/libcuda.so.1" ] || fail "no driver stub at $stub_dir"
run() {
    docker run --rm -v "$stub_dir:/opt/nodriver:ro" -e LD_LIBRARY_PATH=/opt/nodriver \
        --entrypoint /bin/sh "$IMAGE" -c "$1"
}
run 'specd --version' >/dev/null || fail "the binary does not start in the image"
out=$(run 'specd models synth --shape tiny --dtype q8_0 --out /tmp/tiny.gguf >/dev/null &&
           specd generate --target /tmp/tiny.gguf --prompt "the cat" --gamma 0 --max-tokens 4 --json 2>/dev/null') ||
    fail "the image cannot generate on the CPU: $out"
grep -q '"target_device":"cpu"' <<<"$out" || fail "generate --json lacks target_device: $out"
set +e
err=$(run 'specd models synth --shape tiny --dtype q8_0 --out /tmp/tiny.gguf >/dev/null &&
           specd generate --target /tmp/tiny.gguf --target-device cuda --prompt "the cat" --gamma 0 --max-tokens 4' 2>&1)
rc=$?
set -e
[ $rc -eq 1 ] || fail "--device cuda without a driver exited $rc (expected 1): $err"
grep -q "panicked" <<<"$err" && fail "--device cuda without a driver panicked: $err"
grep -q "cannot open CUDA device 0" <<<"$err" || fail "unclear error: $err"
echo "cuda_image_check: ok ($IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
