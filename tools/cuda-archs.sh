# Sourced by tools/test.sh, tools/bench.sh and tools/gpu-check.sh: sets
# FAB_CUDA_ARCHS, the CUDA targets to build, unless the caller set it.
#   - a machine with a GPU: that card's target (sm_90a on Hopper, sm_100a on
#     Blackwell: the "a" targets carry wgmma/TMA), so a build takes minutes, not tens;
#   - no GPU (a development or CI machine, where the CUDA build is compile-and-link
#     only): sm_90a.
# `cmake --preset default` by itself builds sm_80, sm_90a and sm_100a.
fab_card_arch() {
    local cap
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .') || return 1
    case "$cap" in
        "") return 1 ;;
        90) echo 90a ;;
        100) echo 100a ;;
        *) echo "$cap" ;;
    esac
}
if [ -z "${FAB_CUDA_ARCHS:-}" ]; then
    FAB_CUDA_ARCHS=$(fab_card_arch) || FAB_CUDA_ARCHS=90a
fi
export FAB_CUDA_ARCHS
