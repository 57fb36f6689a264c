#!/usr/bin/env bash
# cuda-base-image.sh [TAG] [BASE] — a runtime base for Dockerfile.cuda without a registry: BASE
# (default specd-base:bookworm, from base-image.sh) plus the CUDA 13.0 runtime libraries a
# `--features cuda` binary needs (libcudart.so.13, libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10), taken from NVIDIA's PyPI wheels that scripts/cuda-toolchain.sh installs, in
# /usr/local/cuda/lib64 on the loader's path. libcuda.so.1 is the host driver's, as with any CUDA image.
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${1:-specd-cuda-base:bookworm}
BASE=${2:-specd-base:bookworm}
if [ "${REBUILD:-0}" != 1 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "cuda-base-image: $TAG exists"
    exit 0
fi
eval "$(scripts/cuda-toolchain.sh)"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir "$ctx/lib"
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
    cp -L "$SPECD_CUDA_LIB/$lib" "$ctx/lib/"
done
cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE
COPY lib/ /usr/local/cuda/lib64/
RUN echo /usr/local/cuda/lib64 > /etc/ld.so.conf.d/cuda.conf && ldconfig
DOCKERFILE
start=$(date +%s)
docker build -q -t "$TAG" "$ctx" >/dev/null
echo "cuda-base-image: $TAG built in $(($(date +%s) - start)) s ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
