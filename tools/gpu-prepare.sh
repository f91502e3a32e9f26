#!/usr/bin/env bash
# Run HERE (the development machine) before tools/gpu-check.sh goes to a lent GPU
# machine: that machine has nvcc, CMake and ninja but no CMocka and no internet.
# Copies Debian's CMocka (header + shared library) into .gpu-deps/, which git
# ignores through .git/info/exclude; name ".gpu-deps" in the device call's carry.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
dest=.gpu-deps/cmocka
rm -rf "$dest"
mkdir -p "$dest/include" "$dest/lib"
cp /usr/include/cmocka.h "$dest/include/"
cp -P /usr/lib/x86_64-linux-gnu/libcmocka.so* "$dest/lib/"
# the device gets a copy of the tree without .git: it reads the commit from here
# (so run this script again after committing, just before the device call)
git rev-parse --short=12 HEAD > .gpu-deps/commit
git diff --quiet HEAD -- || sed -i 's/$/-dirty/' .gpu-deps/commit
grep -qx '/.gpu-deps/' .git/info/exclude 2>/dev/null || echo '/.gpu-deps/' >> .git/info/exclude
echo "prepared $dest; run on the device: bash tools/gpu-check.sh (carry: .gpu-deps)"
