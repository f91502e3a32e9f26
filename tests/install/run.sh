#!/usr/bin/env bash
# Installs the build tree into a scratch prefix, then builds the same consumer
# program against it twice: with CMake's find_package(fabriek), and with
# pkg-config. Both binaries must run. Usage: run.sh <build dir> <scratch dir>
set -euo pipefail
build=$1
scratch=$2
here=$(cd "$(dirname "$0")" && pwd)
cmake=${CMAKE:-cmake}
rm -rf "$scratch"
mkdir -p "$scratch"
"$cmake" --install "$build" --prefix "$scratch/prefix" >/dev/null

"$cmake" -S "$here/consumer" -B "$scratch/consumer-build" -DCMAKE_PREFIX_PATH="$scratch/prefix" >/dev/null
"$cmake" --build "$scratch/consumer-build" >/dev/null
LD_LIBRARY_PATH="$scratch/prefix/lib:$scratch/prefix/lib64:${LD_LIBRARY_PATH:-}" "$scratch/consumer-build/consumer"

pc_dir=$(dirname "$(find "$scratch/prefix" -name fabriek.pc | head -1)")
export PKG_CONFIG_PATH="$pc_dir"
cc -std=c11 -Wall -Werror "$here/consumer/consumer.c" -o "$scratch/consumer-pc" $(pkg-config --cflags --libs fabriek) -lm
LD_LIBRARY_PATH="$scratch/prefix/lib:$scratch/prefix/lib64:${LD_LIBRARY_PATH:-}" "$scratch/consumer-pc"
echo "install test: find_package and pkg-config consumers built and ran"
