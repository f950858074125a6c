#!/usr/bin/env bash
# Builds prefloop with candle's CUDA backend (`--features cuda`) on a machine without a GPU, with nvcc and the
# CUDA headers from NVIDIA's PyPI wheels, and leaves a stripped binary to carry to a GPU machine.
#
#   scripts/build-cuda.sh [check|build]     (default: build)
#
#   check   `cargo check --features cuda`: the GPU code still compiles (CI runs this).
#   build   a release build; the stripped binary lands in target/cuda/prefloop-cuda, and gzipped (to carry)
#           in target/cuda/prefloop-cuda.gz.
#
# Environment: CUDA_COMPUTE_CAP (default 90, Hopper: the lent H200), CUDA_VENV (where the wheels go, default
# ~/.cache/prefloop-cuda). The binary needs libcuda.so.1 from the GPU machine's driver and CUDA 13's
# libcudart, libcublas and libcurand there (PyTorch's cu130 wheels bring them; see below).
#
# Why CUDA 13.0's wheels: `nvidia-cuda-nvcc-cu12` (every 12.x version) ships only ptxas, not nvcc; the CUDA 13
# wheels (`nvidia-cuda-nvcc`) ship the whole compiler driver. candle's kernels are PTX that the GPU's driver
# compiles when they load, and a driver refuses PTX newer than itself, so the oldest 13.x is the safest;
# cudarc 0.19 knows 13.0 to 13.4 (13.5 fails its build script). nvvm and crt are pinned too: left to pip,
# they come at the newest version, and nvcc 13.0 then writes PTX its own ptxas refuses.
set -euo pipefail

MODE="${1:-build}"
case "$MODE" in
    check | build) ;;
    *)
        echo "usage: $0 [check|build]" >&2
        exit 2
        ;;
esac
cd "$(dirname "$0")/.."

CUDA_VERSION=13.0.88
CCCL_VERSION=13.0.85
VENV="${CUDA_VENV:-$HOME/.cache/prefloop-cuda}"
if [[ ! -x "$VENV/bin/python" ]] && ! python3 -m venv "$VENV"; then
    echo "python3 -m venv failed: cannot install the CUDA wheels" >&2
    exit 3
fi
# Exit 3 when the wheels cannot be had (no network, no index): CI then skips the check instead of failing.
if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "nvidia-cuda-nvcc==$CUDA_VERSION" "nvidia-cuda-runtime==$CUDA_VERSION" \
    "nvidia-nvvm==$CUDA_VERSION" "nvidia-cuda-crt==$CUDA_VERSION" "nvidia-cuda-cccl==$CCCL_VERSION"; then
    echo "could not install NVIDIA's CUDA $CUDA_VERSION wheels" >&2
    exit 3
fi
CUDA_ROOT="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
if [[ ! -x "$CUDA_ROOT/bin/nvcc" ]]; then
    echo "nvcc not found under $CUDA_ROOT" >&2
    exit 1
fi
export PATH="$CUDA_ROOT/bin:$PATH" CUDA_ROOT CUDA_PATH="$CUDA_ROOT" CUDA_HOME="$CUDA_ROOT"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
echo "nvcc: $(nvcc --version | tail -1), compute capability $CUDA_COMPUTE_CAP"

# A target directory of its own: the CUDA build does not invalidate the CPU build's artifacts.
TARGET=target/cuda
if [[ "$MODE" == check ]]; then
    cargo check --features cuda --target-dir "$TARGET"
    echo "cargo check --features cuda: ok"
else
    # candle links cudarc with `dynamic-linking`: the binary names libcuda, libcublas, libcublasLt, libcurand,
    # libnvrtc and libcudart as libraries it needs, and the linker wants each of them here. The wheels above
    # bring only libcudart; the rest would be about a gigabyte of wheels whose code the build never uses (and
    # libcuda comes with a GPU's driver, in no wheel). So the build links against stubs: one shared library per
    # name, with the real library's soname, defining every function prefloop's code refers to. At run time the
    # GPU machine's own libraries load in their place: the driver's libcuda.so.1 and the CUDA 13 libraries of
    # PyTorch's wheels (scripts/gpu-check.sh puts those on LD_LIBRARY_PATH).
    cargo build --release --features cuda --target-dir "$TARGET" --lib
    STUBS="$CUDA_ROOT/lib"
    SYMBOLS="$(for f in "$TARGET"/release/deps/*.rlib "$TARGET"/release/build/candle-kernels-*/out/*.a; do
        nm -u --format=just-symbols "$f" 2>/dev/null
    done | sort -u)"
    stub() { # library soname pattern [pattern to leave out]
        local c="$TARGET/stub-$1.c"
        grep -E "$3" <<<"$SYMBOLS" | grep -Ev "${4:-^$}" | sed 's/.*/void &(void) {}/' >"$c"
        gcc -shared -fPIC -Wl,-soname,"$2" -o "$STUBS/lib$1.so" "$c"
        echo "stub lib$1.so ($2): $(wc -l <"$c") functions"
    }
    stub cuda libcuda.so.1 '^cu[A-Z]'
    stub cublas libcublas.so.13 '^cublas' '^cublasLt'
    stub cublasLt libcublasLt.so.13 '^cublasLt'
    stub curand libcurand.so.10 '^curand'
    stub nvrtc libnvrtc.so.13 '^nvrtc'
    ln -sf libcudart.so.13 "$STUBS/libcudart.so"
    cargo build --release --features cuda --target-dir "$TARGET"
    strip -o "$TARGET/prefloop-cuda" "$TARGET/release/prefloop"
    # Stripped it is still about 78 MiB, a third of it the fatbin of candle's MoE kernels and a quarter its
    # kernels' PTX, which compress well: the .gz is what fits the 64 MiB a GPU machine is lent with
    # (scripts/gpu-check.sh unpacks it).
    gzip -9 -c "$TARGET/prefloop-cuda" >"$TARGET/prefloop-cuda.gz"
    echo "$TARGET/prefloop-cuda: $(du -h "$TARGET/prefloop-cuda" | cut -f1), gzipped $(du -h "$TARGET/prefloop-cuda.gz" | cut -f1)"
fi
