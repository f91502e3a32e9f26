#!/usr/bin/env bash
# Builds fabriek and runs all its tests:
#   1. the default build (CUDA backend when nvcc is found, for this machine's GPU;
#      without a GPU it is compiled for sm_90a and the gpu-label tests report
#      themselves skipped) : labels cpu, gpu, mpi
#   2. the emulated build (the CUDA kernels run on the CPU under emu/) : label emu
# Exits non-zero when any build or test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"
jobs=${FAB_JOBS:-$(nproc)}

echo "== default build"
source tools/cuda-archs.sh # FAB_CUDA_ARCHS: this card's target, or sm_90a without a GPU
echo "CUDA targets: $FAB_CUDA_ARCHS"
cmake --preset default -DCMAKE_CUDA_ARCHITECTURES="$FAB_CUDA_ARCHS" >/dev/null
cmake --build --preset default -j "$jobs"
ctest --preset default -j "$jobs"

echo "== emulated CUDA build"
cmake --preset emu >/dev/null
cmake --build --preset emu -j "$jobs"
ctest --preset emu -j "$jobs"
