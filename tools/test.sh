#!/usr/bin/env bash
# Builds fabriek and runs all its tests:
#   1. the default build (CUDA backend when nvcc is found; on a machine without a
#      GPU the gpu-label tests report themselves skipped) : labels cpu, gpu, mpi
#   2. the emulated build (the CUDA kernels run on the CPU under emu/) : label emu
# Exits non-zero when any build or test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"
jobs=${FAB_JOBS:-$(nproc)}

echo "== default build"
cmake --preset default >/dev/null
cmake --build --preset default -j "$jobs"
ctest --preset default -j "$jobs"

echo "== emulated CUDA build"
cmake --preset emu >/dev/null
cmake --build --preset emu -j "$jobs"
ctest --preset emu -j "$jobs"
