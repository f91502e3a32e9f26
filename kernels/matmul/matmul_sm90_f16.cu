/*
 * matmul_sm90_f16.cu: the Hopper GEMM (matmul_sm90.cuh) for f16 A and B: both
 * tile widths and schedules, every transpose, in a translation unit of its own.
 */
#include "matmul_sm90.cuh"

extern "C" fab_status fab__matmul_sm90_f16(fab_context *ctx, const fab__mm_args *a, int bn, bool pingpong)
{
    return sm90_run<__half>(ctx, a, bn, pingpong);
}
