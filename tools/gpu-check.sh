#!/usr/bin/env bash
# The one script to run on a lent GPU machine (H100/H200, or any sm_80+ card):
#   1. describe the card, driver and toolkit
#   2. build for that card only (sm_90a on Hopper) with the gpu tests
#   3. run the gpu-label tests: first the hardware probes of the emulator's model
#      (gpu_test_wgmma, _tma, _setmaxnreg), then the library's; each test stops at 2
#      minutes (FAB_GPU_TEST_TIMEOUT), so a kernel that hangs on the hardware does
#      not take the machine's time, and both runs stop within the budget
#   4. run the quick benchmark (fab-bench --quick) with its JSON report, bounded too
#      (left out, and said so, when less than 2.5 minutes of the budget remain)
#   5. compute-sanitizer (memcheck, racecheck) over the test binaries, each bounded
#   6. the cpu-label tests if time is left (CI runs them anyway)
#   7. write a summary, report.md, next to the logs
# Everything lands in $OUT (the device tool's folder) or build/gpu-check; copy it to
# bench/results/<date>-<card>/ on the development machine and commit it.
# Needs: tools/gpu-prepare.sh run first on the development machine, and
# ".gpu-deps" carried along. Keeps going after a failing step; exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
# The device tool stops a command at its time limit (600 s at most): the report is
# written after the benchmark and again at the end, and the sanitizer runs stop
# early enough to finish inside FAB_GPU_CHECK_BUDGET seconds (default 540).
start=$SECONDS
budget=${FAB_GPU_CHECK_BUDGET:-540}
left() { echo $(( budget - (SECONDS - start) )); }
# the commit under test: git's, or the one tools/gpu-prepare.sh wrote (the device's
# copy of the tree has no .git); fab-bench's report takes it from the environment
if [ -z "${FAB_GIT_COMMIT:-}" ]; then
    if FAB_GIT_COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null); then
        git diff --quiet HEAD -- 2>/dev/null || FAB_GIT_COMMIT="$FAB_GIT_COMMIT-dirty"
    else
        FAB_GIT_COMMIT=$(cat .gpu-deps/commit 2>/dev/null || echo unknown)
    fi
fi
export FAB_GIT_COMMIT
out=${OUT:-$PWD/build/gpu-check}
mkdir -p "$out"
exec > >(tee "$out/gpu-check.log") 2>&1
failed=()
skipped=() # sanitizer runs left out for lack of time: not passes
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
run() { "$@" || failed+=("$*"); }

write_report() {
    {
        echo "# gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo
        echo "- commit: $FAB_GIT_COMMIT"
        echo "- card: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1), built for sm_$arch"
        echo "- failed steps: ${failed[*]:-none}"
        echo "- steps and sanitizer runs skipped for lack of time (not passes): ${skipped[*]:-none}"
        echo "- $(grep -m1 'fabriek: comm:' "$out/configure.log" 2>/dev/null | sed 's/^-- //')"
        echo "- elapsed: $(( SECONDS - start )) s of a $budget s budget"
        echo
        echo "cuDNN baseline (attention suite: plan, engine, and its outputs against fabriek's):"
        echo
        echo '```'
        grep -E 'cuDNN|MISMATCH' "$out/gpu-check.log" | head -60
        echo '```'
        echo
        echo '```'
        grep -E 'tests passed|tests failed|SKIPPED|FAILED|^--- (memcheck|racecheck)|ERROR SUMMARY|skipped: ' \
            "$out/gpu-check.log" | head -60
        echo '```'
        echo
        echo '```'
        sed -n '/^suite /,$p' "$out/gpu-check.log" | head -200
        echo '```'
    } > "$out/report.md"
}

step "machine"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.csv"
nvcc --version | tail -2
source tools/cuda-archs.sh
arch=$FAB_CUDA_ARCHS
echo "building for sm_$arch"

step "build"
export LD_LIBRARY_PATH="$PWD/.gpu-deps/cmocka/lib:${LD_LIBRARY_PATH:-}"
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B build/gpu "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch" \
      -DFAB_CMOCKA_ROOT="$PWD/.gpu-deps/cmocka" -DFAB_ENABLE_MPI=OFF -DFAB_GPU_TEST_TIMEOUT=120 \
      > "$out/configure.log" 2>&1 \
    || { cat "$out/configure.log"; failed+=(configure); }
run cmake --build build/gpu -j "$(nproc)"
# register and spill report of every kernel, for the record
find build/gpu -name '*.cu.o' -exec cuobjdump --dump-resource-usage {} \; > "$out/resource-usage.txt" 2>&1 || true

step "gpu tests"
export FAB_TEST_REQUIRE_GPU=1 # a test that cannot reach the GPU fails here instead of skipping
within() { local t=$(( $(left) - ${1} )); echo $(( t > 10 ? t : 10 )); } # the budget less $1 seconds
run timeout "$(within 300)" ctest --test-dir build/gpu -L gpu -R '^gpu_test_' --no-tests=error --output-on-failure
run timeout "$(within 150)" ctest --test-dir build/gpu -L gpu -E '^gpu_test_' --no-tests=error --output-on-failure

# The benchmark before the sanitizers: on a lent machine with minutes to spend,
# the figures matter most, and the sanitizers are slow.
step "benchmark"
bench_limit=$(( $(left) - 90 )) # leave time for the report and a sanitizer run or two
if [ "$bench_limit" -ge 60 ]; then
    run timeout -k 10 "$bench_limit" build/gpu/bench/fab-bench --quick --json "$out/fab-bench.json" \
        --svg "$out/fab-bench.svg"
else
    echo "skipped: the benchmark (out of time; not a pass)"
    skipped+=("benchmark")
fi
write_report # in case the time runs out during the sanitizers

step "compute-sanitizer"
if command -v compute-sanitizer >/dev/null; then
    for t in build/gpu/tests/test_*; do
        [ -x "$t" ] || continue
        for tool in memcheck racecheck; do
            limit=${FAB_SANITIZER_TIMEOUT:-120}
            rest=$(( $(left) - 20 ))
            if [ "$rest" -lt 30 ]; then
                echo "skipped: $tool $(basename "$t") (out of time; not a pass)"
                skipped+=("$tool $(basename "$t")")
                continue
            fi
            [ "$rest" -lt "$limit" ] && limit=$rest
            echo "--- $tool $(basename "$t")"
            # bounded, so a slow one cannot eat the machine's time (124: timed out, a failure);
            # test_fuzz with few iterations: each of its calls copies its arenas both ways
            run env FAB_TEST_FUZZ_ITERS=50 timeout "$limit" compute-sanitizer --tool "$tool" --error-exitcode 9 "$t" \
                --backend cuda
        done
    done
else
    echo "compute-sanitizer not found: skipped (not a pass)"
fi

step "cpu tests"
if [ "$(left)" -gt 150 ]; then
    run timeout "$(( $(left) - 30 ))" ctest --test-dir build/gpu -L cpu -j "$(nproc)" --output-on-failure
else
    echo "skipped: the cpu-label tests (out of time; not a pass; CI runs them)"
    skipped+=("cpu tests")
fi

write_report
cat "$out/report.md"
[ ${#failed[@]} -eq 0 ]
