#!/usr/bin/env bash
# Makes sure the Debian packages fabriek builds and tests with are installed.
# As root it installs what is missing (apt-get); otherwise it prints the exact
# apt-get line to run and fails. Sourced or run by tools/test.sh, tools/bench.sh
# and .ci/run.
set -euo pipefail
packages=(build-essential cmake pkg-config git libcmocka-dev libopenblas-dev libopenmpi-dev openmpi-bin libsimde-dev)
# Optional: fab-bench's oneDNN baseline for the CPU bf16 GEMM. Installed as root;
# otherwise its absence is only reported.
optional=(libdnnl-dev)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done
for p in "${optional[@]}"; do
    if ! installed "$p"; then
        if [ "$(id -u)" = 0 ]; then
            missing+=("$p")
        else
            echo "deps: optional $p is not installed (fab-bench then has no oneDNN baseline)"
        fi
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "deps: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "deps: missing packages; run:" >&2
        echo "  sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi
# The CUDA toolkit is optional: without nvcc the CUDA backend is not built.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    echo "deps: using /usr/local/cuda/bin/nvcc"
fi
