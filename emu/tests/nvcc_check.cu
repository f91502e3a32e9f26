/*
 * nvcc_check.cu -- the emulator's test kernels compiled by nvcc for the real GPU
 * (sm_80, sm_90a): proves kernels/common/ptx.cuh's GPU bodies and the test kernels are
 * valid CUDA.  Built by the emu_nvcc_compile test (`nvcc -c`, nothing runs).
 */
#include "kernels/bank_kernels.cuh"
#include "kernels/gemm_kernels.cuh"
#include "kernels/ptx_kernels.cuh"
#include "kernels/race_kernels.cuh"
#include "kernels/setmaxnreg_kernels.cuh"
#include "kernels/thread_kernels.cuh"
#include "kernels/tma_kernels.cuh"
#include "kernels/wgmma_kernels.cuh"

/* Take every kernel's address so that each template instance is compiled. */
void *fab_emu_nvcc_check_kernels[] = {
    (void *)k_gemm_bf16<false>, (void *)k_gemm_bf16<true>, (void *)k_mma_loop,
    (void *)k_mma_bf16_k16, (void *)k_mma_f16_k16, (void *)k_mma_f16_k8, (void *)k_mma_tf32_k8,
    (void *)k_ldmatrix, (void *)k_cp_async, (void *)k_cp_async_misaligned, (void *)k_ldmatrix_global,
    (void *)k_mma_half_warp,
    (void *)k_transpose_tile<true>, (void *)k_transpose_tile<false>, (void *)k_warp_exchange<true>,
    (void *)k_warp_exchange<false>, (void *)k_cp_async_stage<true>, (void *)k_cp_async_stage<false>,
    (void *)k_pipeline_ldmatrix<true>, (void *)k_pipeline_ldmatrix<false>, (void *)k_named_barrier_ldmatrix<true>,
    (void *)k_named_barrier_ldmatrix<false>,
    (void *)k_indices, (void *)k_block_sum, (void *)k_sync_reduce, (void *)k_early_exit, (void *)k_named_barrier,
    (void *)k_named_barrier_open,
    (void *)k_dynamic_smem, (void *)k_shuffles, (void *)k_warp_sum_double, (void *)k_votes, (void *)k_atomics,
    (void *)k_shfl_from_exited, (void *)k_bad_mask, (void *)k_deadlock, (void *)k_mixed_collectives,
    (void *)k_bank_ldmatrix, (void *)k_bank_cp_async, (void *)k_bank_cp_loop, (void *)k_bank_plain,
    (void *)k_warp_exchange_plain<true>, (void *)k_warp_exchange_plain<false>,
    (void *)k_read_all_then_write<true>, (void *)k_read_all_then_write<false>,
    (void *)k_setmaxnreg, (void *)k_wgmma<64, 0, 1, 0, 0>, (void *)k_wgmma<256, 1, 0, 1, 0>, (void *)k_wgmma<16, 0, 1, 0, 1>,
    (void *)k_wgmma<128, 0, 0, 1, 1>, (void *)k_tma_ring,
};
