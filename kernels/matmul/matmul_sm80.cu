/*
 * matmul_sm80.cu: which calls the sm80 tensor-core GEMM (matmul_sm80.cuh) takes,
 * and the dispatch to its instances by input dtype (matmul_sm80_<dtype>.cu).
 */
#include <stdint.h>

#include "matmul.h"

/* Whether the tensor-core kernel runs this call: bf16/f16 inputs, or f32 with
 * precision TF32 (f32 otherwise stays exact, on the SIMT kernel); whole 16-byte
 * cp.async chunks, i.e. 16-byte aligned A and B, and row strides (where an operand
 * has more than one stored row: one row's stride is never used) and batch strides
 * (of batch dims longer than 1) multiples of 16 bytes, 8 16-bit values or 4 f32;
 * grid dimensions within CUDA's limits. */
extern "C" bool fab__matmul_sm80_supports(const fab_context *ctx, const fab__mm_args *a)
{
    if (ctx->sm_version < 80)
        return false;
    int64_t vec;
    if (a->ab_dtype == FAB_DTYPE_BF16 || a->ab_dtype == FAB_DTYPE_F16)
        vec = 8;
    else if (a->ab_dtype == FAB_DTYPE_F32 && a->tf32)
        vec = 4;
    else
        return false;
    if ((uintptr_t)a->a % 16 != 0 || (uintptr_t)a->b % 16 != 0)
        return false;
    int64_t a_rows = a->trans_a ? a->k : a->m, b_rows = a->trans_b ? a->n : a->k;
    if ((a_rows > 1 && a->lda % vec != 0) || (b_rows > 1 && a->ldb % vec != 0))
        return false;
    for (int j = 0; j < a->nb; j++)
        if (a->batch_shape[j] > 1 && (a->a_bstride[j] % vec != 0 || a->b_bstride[j] % vec != 0))
            return false;
    if (a->batch > 65535 || (a->m + 63) / 64 > 65535)
        return false;
    return true;
}

extern "C" fab_status fab__matmul_sm80(fab_context *ctx, const fab__mm_args *a)
{
    if (a->ab_dtype == FAB_DTYPE_BF16)
        return fab__matmul_sm80_bf16(ctx, a);
    if (a->ab_dtype == FAB_DTYPE_F16)
        return fab__matmul_sm80_f16(ctx, a);
    return fab__matmul_sm80_tf32(ctx, a);
}
