#!/bin/bash
# Builds the llama.cpp reference peer (CPU only, AVX-512 without AMX) from the tree vendored in the PyPI
# sdist llama-cpp-python==0.3.36, into DIR/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin (~10 min on
# 2 cores), and writes DIR/env.sh: the environment that points the sdist's own `llama_cpp` Python package
# at that build (`. DIR/env.sh; python3 -c 'import llama_cpp'`).
#
# Why not a native build: on the Xeons with AMX a -DGGML_NATIVE=ON build crashes (illegal instruction /
# segfault, DESIGN §10), so the instruction sets are named explicitly.
#
# Usage: scripts/llamacpp/build.sh DIR
# On the shared 2-core machines run it under the build lock: flock /tmp/specd-build.lock scripts/llamacpp/build.sh DIR
set -eu
[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
VERSION=0.3.36
mkdir -p "$1"
D=$(cd "$1" && pwd)
cd "$D"
python3 -m pip install -q cmake ninja numpy diskcache jinja2 typing_extensions gguf==0.19.0
[[ -f llama_cpp_python-$VERSION.tar.gz ]] ||
  python3 -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d .
[[ -d llama_cpp_python-$VERSION ]] || tar xzf "llama_cpp_python-$VERSION.tar.gz"
cd "llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
  -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" --target llama-bench llama-speculative-simple llama-simple llama-quantize llama-server
BIN=$PWD/build/bin
ENV="export LD_LIBRARY_PATH=$BIN LLAMA_CPP_LIB_PATH=$BIN PYTHONPATH=$D/llama_cpp_python-$VERSION"
echo "$ENV" > "$D/env.sh"
echo "$ENV"
