/*
 * attention_bwd_sm80_f16.cu: the sm80 attention backward (attention_bwd_sm80.cuh)
 * for f16 q, k, v: every head dim and path, in a translation unit of its own.
 */
#include "attention_bwd_sm80.cuh"

cudaError_t fab__attention_bwd_sm80_f16(fab_context *ctx, const fab__attn_args *a, float *Dbuf, float *dqacc)
{
    return launch_all<__half>(ctx, a, Dbuf, dqacc);
}
