/*
 * attention_bwd_sm80_bf16.cu: the sm80 attention backward (attention_bwd_sm80.cuh)
 * for bf16 q, k, v: every head dim and path, in a translation unit of its own.
 */
#include "attention_bwd_sm80.cuh"

cudaError_t fab__attention_bwd_sm80_bf16(fab_context *ctx, const fab__attn_args *a, float *Dbuf, float *dqacc)
{
    return launch_all<__nv_bfloat16>(ctx, a, Dbuf, dqacc);
}
