/*
 * comm_cast.cu: dst = (dst dtype)(src / divisor) on the GPU, for the NCCL transport.
 * Two uses: f32 <-> bf16 conversion for gradient exchange that travels in 16 bits
 * (fab_grad_sync_config.reduce_bf16), and the division of AVG on bf16, which NCCL
 * would do by premultiplying with 1/nranks rounded to bf16 (comm_nccl.c); the
 * MPI transport divides the same way (fab__host_divide).
 *
 * One thread per element, grid-stride; the value goes through f32: one division
 * in f32 (IEEE, correctly rounded; by 1 it is exact), one rounding to the
 * destination (round to nearest even). dst == src is
 * allowed (each element is read before it is written, by the same thread).
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "comm.h"

__device__ static float load_as_float(const void *p, int64_t i, int dtype)
{
    if (dtype == FAB_DTYPE_F32)
        return static_cast<const float *>(p)[i];
    if (dtype == FAB_DTYPE_BF16)
        return __bfloat162float(static_cast<const __nv_bfloat16 *>(p)[i]);
    return __half2float(static_cast<const __half *>(p)[i]);
}

__device__ static void store_float(void *p, int64_t i, int dtype, float v)
{
    if (dtype == FAB_DTYPE_F32)
        static_cast<float *>(p)[i] = v;
    else if (dtype == FAB_DTYPE_BF16)
        static_cast<__nv_bfloat16 *>(p)[i] = __float2bfloat16_rn(v);
    else
        static_cast<__half *>(p)[i] = __float2half_rn(v);
}

__global__ static void fab__comm_cast_kernel(void *dst, int dst_dtype, const void *src, int src_dtype, int64_t n,
                                             float divisor)
{
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        store_float(dst, i, dst_dtype, __fdiv_rn(load_as_float(src, i, src_dtype), divisor));
}

extern "C" fab_status fab__comm_cast_cuda(void *dst, fab_dtype dst_dtype, const void *src, fab_dtype src_dtype,
                                          int64_t n, float divisor, void *stream)
{
    if (n <= 0)
        return FAB_OK;
    int64_t blocks = (n + 255) / 256;
    if (blocks > 4096)
        blocks = 4096;
    /* cudaLaunchKernelEx rather than <<< >>>: the emulator's host compiler builds this too */
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)blocks);
    cfg.blockDim = dim3(256);
    cfg.stream = (cudaStream_t)stream;
    cudaError_t e = cudaLaunchKernelEx(&cfg, fab__comm_cast_kernel, dst, (int)dst_dtype, src, (int)src_dtype, n, divisor);
    if (e != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "fab_comm (dtype conversion): launch: %s", cudaGetErrorString(e));
    return fab__cuda_check_launch("fab_comm (dtype conversion)");
}
