#!/usr/bin/env bash
# Builds fabriek and runs fab-bench: on the GPU when there is one, else
# on the CPU. Arguments go to fab-bench (e.g. --quick, --suite matmul).
# The JSON report lands in build/fab-bench.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"
source tools/cuda-archs.sh # FAB_CUDA_ARCHS: this card's target, or sm_90a without a GPU
cmake --preset default -DCMAKE_CUDA_ARCHITECTURES="$FAB_CUDA_ARCHS" >/dev/null
cmake --build --preset default -j "${FAB_JOBS:-$(nproc)}" --target fab-bench
./build/default/bench/fab-bench --json build/fab-bench.json "$@"
