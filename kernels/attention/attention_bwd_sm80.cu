/*
 * attention_bwd_sm80.cu: the sm80 attention backward's entry (attention_bwd_sm80.cuh
 * has the kernels): D and the dq accumulator in stream-ordered scratch, then the
 * kernels of the input dtype (attention_bwd_sm80_<dtype>.cu).
 */
#include "attention_bwd_sm80.cuh"

extern "C" fab_status fab__attention_backward_sm80(fab_context *ctx, const fab__attn_args *a)
{
    const char *op = "fab_attention_backward";
    cudaError_t err = cudaSetDevice(ctx->device);
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "%s: cudaSetDevice failed: %s", op, cudaGetErrorString(err));
    if (a->d != 32 && a->d != 64 && a->d != 96 && a->d != 128 && a->d != 256)
        return fab__fail(FAB_ERR_INTERNAL, "%s: head_dim %lld reached the sm80 kernel", op, (long long)a->d);
    /* one scratch block: D (nrows floats), then on the fast path the dq
     * accumulator (nrows x d floats, 16-byte aligned, zeroed) */
    const int64_t nrows = a->lse_sb ? a->batch * a->lse_sb : a->hq * a->lse_sh;
    const int64_t nd = (nrows + 3) / 4 * 4, nacc = a->deterministic ? 0 : nrows * a->d;
    const size_t bytes = sizeof(float) * (size_t)(nd + nacc > 0 ? nd + nacc : 1);
    float *Dbuf = NULL;
    err = cudaMallocAsync((void **)&Dbuf, bytes, (cudaStream_t)ctx->stream);
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: no device memory for %zu bytes of scratch: %s", op, bytes,
                         cudaGetErrorString(err));
    float *dqacc = a->deterministic ? NULL : Dbuf + nd;
    if (dqacc && nacc > 0)
        err = cudaMemsetAsync(dqacc, 0, sizeof(float) * (size_t)nacc, (cudaStream_t)ctx->stream);
    if (err == cudaSuccess) {
        if (a->dtype == FAB_DTYPE_BF16)
            err = fab__attention_bwd_sm80_bf16(ctx, a, Dbuf, dqacc);
        else
            err = fab__attention_bwd_sm80_f16(ctx, a, Dbuf, dqacc);
    }
    cudaError_t ferr = cudaFreeAsync(Dbuf, (cudaStream_t)ctx->stream);
    if (err == cudaSuccess)
        err = ferr;
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "%s: kernel launch failed: %s", op, cudaGetErrorString(err));
    return fab__cuda_check_launch(op);
}
