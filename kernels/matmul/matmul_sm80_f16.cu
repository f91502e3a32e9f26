/*
 * matmul_sm80_f16.cu: the sm80 tensor-core GEMM (matmul_sm80.cuh) for f16 A and B:
 * every tile and transpose, in a translation unit of its own.
 */
#include "matmul_sm80.cuh"

extern "C" fab_status fab__matmul_sm80_f16(fab_context *ctx, const fab__mm_args *a)
{
    return sm80_run<__half>(ctx, a);
}
