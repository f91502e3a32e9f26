/*
 * matmul_sm80_tf32.cu: the sm80 tensor-core GEMM (matmul_sm80.cuh) for f32 A and B
 * with precision TF32: every tile and transpose, in a translation unit of its own.
 */
#include "matmul_sm80.cuh"

extern "C" fab_status fab__matmul_sm80_tf32(fab_context *ctx, const fab__mm_args *a)
{
    return sm80_run<float>(ctx, a);
}
