/*
 * matmul_sm80_bf16.cu: the sm80 tensor-core GEMM (matmul_sm80.cuh) for bf16 A and B:
 * every tile and transpose, in a translation unit of its own.
 */
#include "matmul_sm80.cuh"

extern "C" fab_status fab__matmul_sm80_bf16(fab_context *ctx, const fab__mm_args *a)
{
    return sm80_run<__nv_bfloat16>(ctx, a);
}
