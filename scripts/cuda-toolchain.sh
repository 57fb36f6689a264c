#!/usr/bin/env bash
# cuda-toolchain.sh — a CUDA 13.0 build toolchain for `cargo build --release --features cuda`
# (candle-core / candle-nn 0.11.1 with `cuda`), assembled from PyPI wheels alone. It needs no GPU and
# no NVIDIA driver on the build machine: x86_64 Linux, python3 with pip, gcc (12 tested) and g++.
#
# Usage:
#   eval "$(scripts/cuda-toolchain.sh)"          # install if needed, then export the build env
#   scripts/cuda-toolchain.sh >/dev/null && . "${SPECD_CUDA_HOME:-$HOME/.cache/specd/cuda-13.0}/env.sh"
#   CUDA_COMPUTE_CAP=89 cargo build --release --features cuda    # after either of the above
# Progress goes to stderr; stdout is only the env (the same lines as $DIR/env.sh). A second run with
# everything in place does nothing but print the env (a stamp file; well under a second).
#
# Where: DIR = ${SPECD_CUDA_HOME:-$HOME/.cache/specd/cuda-13.0} (~1.9 GiB: 0.7 GiB of wheels kept in
# $DIR/wheels, 1.2 GiB unpacked). CUDA_HOME is $DIR/nvidia/cu13, the wheels' own layout: bin/nvcc,
# nvvm/, include/ (cuda.h, cccl/), lib/ (versioned .so only). This script adds to it:
#   lib/lib{cudart,cublas,cublasLt,curand,nvrtc}.so -> the versioned names (for `-l` at link time),
#   lib/stubs/libcuda.so  a link stub (soname libcuda.so.1, every cu* entry point of the 13.0 cuda.h,
#                         each returning CUDA_ERROR_STUB_LIBRARY = 34), built here with gcc;
#   $DIR/nodriver/libcuda.so.1  the same stub under its run-time name, ONLY for running a cuda build
#                         on a machine without a driver (CI smoke tests): never put it on
#                         LD_LIBRARY_PATH where a real driver is installed — it would shadow it.
#
# The env it exports (see write_env below): PATH (+$CUDA_HOME/bin), CUDA_HOME, CUDA_PATH, NVCC,
# CUDARC_CUDA_VERSION=13000, CUDA_COMPUTE_CAP (default 90; keeps a value already set), CUDAFORGE_THREADS
# (default nproc; keeps a value already set), LIBRARY_PATH (+lib, lib/stubs), SPECD_CUDA_LIB. No
# RUSTFLAGS: cudarc's build script already passes -L $CUDA_HOME/lib and $CUDA_HOME/lib/stubs when
# CUDA_HOME is set, and a RUSTFLAGS change would rebuild every crate of a shared target dir.
#
# CUDA_COMPUTE_CAP must match the GPU that will run the binary: 90 (H100/H200; cudaforge makes it
# sm_90a, whose cubins run on sm_90 only), 89 (L4, RTX 40xx), 80 (A100), 86 (A10/RTX 30xx). nvidia-smi
# is not consulted when it is set (and there is none on a GPU-less builder). candle-kernels embeds PTX
# for that arch (JIT-compiled by the driver) and links cubins for it (libmoe.a: mmq/mmvq/moe kernels).
#
# How candle 0.11.1 links CUDA (read from candle-core 0.11.1 / cudarc 0.19.10 / candle-kernels 0.11.1):
#   - candle-core enables cudarc features std cublas cublaslt curand driver nvrtc f16 f8
#     cuda-version-from-build-system **dynamic-linking** (not dynamic-loading; the two are mutually
#     exclusive and Cargo features only add, so a dependent cannot switch to dlopen). cudarc's build.rs
#     then emits -lcuda -lnvrtc -lcurand -lcublas -lcublasLt; candle-kernels adds -lcudart -lstdc++.
#     No cudnn, nccl or cutensor: those are candle's separate `cudnn` / `nccl` features.
#   - cuda-version-from-build-system parses `nvcc --version`; CUDARC_CUDA_VERSION=13000 pins it anyway.
#   - candle-kernels builds with cudaforge: nvcc from $NVCC, else PATH, else $CUDA_HOME/bin;
#     a clean `cargo build --release` of candle-core + candle-nn with `cuda` took 965 s wall on 2
#     cores (nice 19, sharing them with another build), nearly all of it nvcc: 11 PTX files, then 15
#     kernel files for libmoe.a (each mmq_instance_*.cu ~1 min). Changing CUDA_COMPUTE_CAP, NVCC or
#     NVCC_CCBIN reruns that build script.
#
# What a user needs to RUN a binary built with this. `readelf -d` of a candle 0.11.1 binary that
# does cuBLAS matmul, candle-nn softmax/rms_norm and a quantized matmul on the device lists NEEDED
# libcuda.so.1 libcurand.so.10 libcublas.so.13 libcudart.so.13 (+ libstdc++ libgcc_s libm libc): the
# linker's --as-needed drops -lnvrtc and -lcublasLt (candle 0.11.1 calls neither directly), and
# libcublas.so.13 itself needs libcublasLt.so.13. No rpath. So, at run time:
#   - an NVIDIA driver >= 580 (CUDA 13.0; the embedded PTX is ISA 9.0), which provides libcuda.so.1;
#   - libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10 found by the loader: a
#     CUDA 13.x toolkit's lib64, or the PyPI wheels nvidia-cuda-runtime / nvidia-cublas /
#     nvidia-curand 13.x-era (PyTorch cu130 installs them under site-packages/nvidia/cu13/lib), or
#     this $DIR: LD_LIBRARY_PATH=$SPECD_CUDA_LIB. libnvrtc.so.13 is not needed today (it is linked
#     against at build time, so its unversioned name must exist here).
#   - Without libcuda.so.1 the dynamic loader refuses to start the binary at all (exit 127, "error
#     while loading shared libraries: libcuda.so.1"), even for CPU-only use: that is what
#     dynamic-linking means. With the stub ($DIR/nodriver first on LD_LIBRARY_PATH) the binary starts
#     and candle_core::Device::new_cuda(0) returns Err(DriverError(CUDA_ERROR_STUB_LIBRARY, ...)).
#
# Pins: the newest 13.0.x of each wheel (nvidia-curand versions itself 10.x: 10.4.0.35 is the one of
# CUDA 13.0). Every wheel is installed with --no-deps: nvidia-cuda-nvcc 13.0.88 requires nvidia-nvvm,
# nvidia-cuda-crt and nvidia-cuda-runtime without a version, which would pull the newest 13.x (not
# 13.0) companions. Each wheel's sha256 is checked, cached or fresh.
set -euo pipefail

DIR="${SPECD_CUDA_HOME:-$HOME/.cache/specd/cuda-13.0}"
CUDA_HOME_DIR="$DIR/nvidia/cu13"
STUB_VERSION=1

# name version sha256 (x86_64 wheels)
PINS="
nvidia-cuda-nvcc    13.0.88   56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-nvvm         13.0.88   c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-crt     13.0.88   2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cuda-runtime 13.0.96   7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-cccl    13.0.85   e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
nvidia-cuda-nvrtc   13.0.88   ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
nvidia-cublas       13.0.2.14 0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c
nvidia-curand       10.4.0.35 1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc
"
# versioned libraries the link step needs under an unversioned name
LINK_LIBS="libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13"

STAMP="$(printf '%s\nstub=%s\n' "$PINS" "$STUB_VERSION" | sha256sum | cut -c1-16)"

log() { printf 'cuda-toolchain: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

write_env() {
    cat <<EOF
export CUDA_HOME='$CUDA_HOME_DIR'
export CUDA_PATH='$CUDA_HOME_DIR'
export NVCC='$CUDA_HOME_DIR/bin/nvcc'
case ":\$PATH:" in *':$CUDA_HOME_DIR/bin:'*) ;; *) export PATH='$CUDA_HOME_DIR/bin':"\$PATH" ;; esac
case ":\${LIBRARY_PATH:-}:" in *':$CUDA_HOME_DIR/lib:'*) ;; *) export LIBRARY_PATH='$CUDA_HOME_DIR/lib:$CUDA_HOME_DIR/lib/stubs'"\${LIBRARY_PATH:+:\$LIBRARY_PATH}" ;; esac
export CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
export CUDAFORGE_THREADS="\${CUDAFORGE_THREADS:-$(nproc 2>/dev/null || echo 2)}"
export SPECD_CUDA_LIB='$CUDA_HOME_DIR/lib'
EOF
}

installed() {
    [ -f "$DIR/.stamp" ] && [ "$(cat "$DIR/.stamp")" = "$STAMP" ] &&
        [ -x "$CUDA_HOME_DIR/bin/nvcc" ] && [ -f "$CUDA_HOME_DIR/lib/stubs/libcuda.so" ] &&
        [ -f "$DIR/env.sh" ] && grep -qF "CUDA_HOME='$CUDA_HOME_DIR'" "$DIR/env.sh"
}

if installed; then
    cat "$DIR/env.sh"
    exit 0
fi

[ "$(uname -s)/$(uname -m)" = "Linux/x86_64" ] || die "only x86_64 Linux is supported (the pinned wheels are x86_64)"
command -v python3 >/dev/null || die "python3 is needed (for pip)"
python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip is needed"
command -v gcc >/dev/null || die "gcc is needed (nvcc's host compiler, and to build the libcuda stub)"
command -v g++ >/dev/null || die "g++ is needed (nvcc's host compiler)"

mkdir -p "$DIR/wheels" "$DIR/.extracted"
if command -v flock >/dev/null; then
    exec 9>"$DIR/.lock"
    flock 9
    if installed; then cat "$DIR/env.sh"; exit 0; fi
fi

# 1. wheels: download what is missing, check every hash, unpack each once.
echo "$PINS" | while read -r name ver sha; do
    [ -n "$name" ] || continue
    stem="$(echo "$name" | tr - _)-$ver-"
    whl="$(ls "$DIR/wheels/$stem"*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "$whl" ]; then
        log "downloading $name==$ver"
        python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            -d "$DIR/wheels" "$name==$ver" >&2
        whl="$(ls "$DIR/wheels/$stem"*.whl 2>/dev/null | head -n1 || true)"
        [ -n "$whl" ] || die "pip download of $name==$ver left no wheel in $DIR/wheels"
    fi
    got="$(sha256sum "$whl" | cut -d' ' -f1)"
    if [ "$got" != "$sha" ]; then
        rm -f "$whl"
        die "sha256 mismatch for $(basename "$whl") (got $got, want $sha); removed it, run again"
    fi
    mark="$DIR/.extracted/$(basename "$whl")"
    if [ ! -f "$mark" ]; then
        log "unpacking $(basename "$whl")"
        python3 - "$whl" "$DIR" <<'PY'
import os, sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        path = z.extract(info, dest)
        mode = (info.external_attr >> 16) & 0o777
        if mode and not info.is_dir():
            os.chmod(path, mode | 0o644)
PY
        touch "$mark"
    fi
done

[ -x "$CUDA_HOME_DIR/bin/nvcc" ] || die "no $CUDA_HOME_DIR/bin/nvcc after unpacking"
# the wheels ship the tools as rwxr--r--: let every user of a shared cache run them
chmod a+rx "$CUDA_HOME_DIR"/bin/* "$CUDA_HOME_DIR"/nvvm/bin/* 2>/dev/null || true

# 2. unversioned names for the linker (the run-time NEEDED entries stay the versioned sonames).
for lib in $LINK_LIBS; do
    [ -f "$CUDA_HOME_DIR/lib/$lib" ] || die "missing $CUDA_HOME_DIR/lib/$lib"
    ln -sfn "$lib" "$CUDA_HOME_DIR/lib/${lib%%.so.*}.so"
done

# 3. libcuda stub: every cu* name of the 13.0 cuda.h (raw and after macro expansion, so both
#    cuMemAlloc and cuMemAlloc_v2), each returning CUDA_ERROR_STUB_LIBRARY; the two error-string
#    calls succeed so that errors print readably. Soname libcuda.so.1, as the driver's.
build="$DIR/build"
mkdir -p "$build" "$CUDA_HOME_DIR/lib/stubs" "$DIR/nodriver"
{
    grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$CUDA_HOME_DIR/include/cuda.h"
    echo '#include <cuda.h>' | gcc -E -P -I"$CUDA_HOME_DIR/include" -x c - | grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b'
} | sort -u | grep -vxE 'cuGetErrorString|cuGetErrorName' >"$build/libcuda-symbols.txt"
nsym=$(wc -l <"$build/libcuda-symbols.txt")
[ "$nsym" -gt 400 ] || die "only $nsym cu* names found in cuda.h"
{
    echo '/* generated by scripts/cuda-toolchain.sh: a libcuda.so.1 link stub, not a driver */'
    echo 'static const char stub_msg[] = "CUDA driver stub (no NVIDIA driver libcuda.so.1 loaded)";'
    echo 'int cuGetErrorString(int e, const char **s) { if (s) *s = e == 34 ? stub_msg : "unknown error (stub libcuda)"; return 0; }'
    echo 'int cuGetErrorName(int e, const char **s) { if (s) *s = e == 34 ? "CUDA_ERROR_STUB_LIBRARY" : "CUDA_ERROR_UNKNOWN"; return 0; }'
    sed 's/.*/int &(void) { return 34; }/' "$build/libcuda-symbols.txt"
} >"$build/libcuda-stub.c"
gcc -shared -fPIC -O1 -fno-builtin -Wl,-soname,libcuda.so.1 -o "$build/libcuda.so" "$build/libcuda-stub.c"
cp -f "$build/libcuda.so" "$CUDA_HOME_DIR/lib/stubs/libcuda.so"
cp -f "$build/libcuda.so" "$DIR/nodriver/libcuda.so.1"
log "libcuda stub: $((nsym + 2)) symbols, soname libcuda.so.1"

# 4. check: nvcc 13.0 compiles device code for sm_90a with this gcc, and a host program links
#    against the unversioned names and the stub, and runs against the stub.
ver="$("$CUDA_HOME_DIR/bin/nvcc" --version)" || die "nvcc --version failed"
echo "$ver" | grep -q 'release 13\.0' || die "unexpected nvcc: $ver"
cat >"$build/check.cu" <<'CU'
#include <cstdio>
#include <cuda.h>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cub/cub.cuh>
__global__ void axpy(float a, const __half *x, float *y) {
    y[threadIdx.x] += a * __half2float(x[threadIdx.x]);
}
int main() {
    CUresult r = cuInit(0);
    const char *s = "?";
    cuGetErrorString(r, &s);
    std::printf("cuInit: %d (%s)\n", (int)r, s);
    return r == CUDA_ERROR_STUB_LIBRARY ? 0 : 1;
}
CU
log "checking nvcc ($(echo "$ver" | grep -o 'V13[0-9.]*')) with $(gcc -dumpfullversion 2>/dev/null || gcc -dumpversion): sm_90a"
"$CUDA_HOME_DIR/bin/nvcc" -gencode=arch=compute_90a,code=sm_90a -std=c++17 -O2 -c "$build/check.cu" -o "$build/check.o" >&2 ||
    die "nvcc could not compile a trivial kernel for sm_90a"
g++ -o "$build/check" "$build/check.o" -L"$CUDA_HOME_DIR/lib" -L"$CUDA_HOME_DIR/lib/stubs" -lcudart -lcuda \
    -lcublas -lcublasLt -lcurand -lnvrtc >&2 || die "linking against the wheel libraries and the stub failed"
LD_LIBRARY_PATH="$DIR/nodriver:$CUDA_HOME_DIR/lib" "$build/check" >&2 || die "check program did not see the stub"

write_env >"$DIR/env.sh"
echo "$STAMP" >"$DIR/.stamp"
log "ready: CUDA_HOME=$CUDA_HOME_DIR (env in $DIR/env.sh)"
cat "$DIR/env.sh"
