/*
 * cuda_dtype.cuh: f32 <-> storage-dtype conversions in device code, so a kernel
 * templated on T (float, __half, __nv_bfloat16) loads, computes in f32, and
 * stores rounded to nearest even.
 */
#ifndef FAB_CUDA_DTYPE_CUH
#define FAB_CUDA_DTYPE_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

static __device__ __forceinline__ float fab__to_f32(float v) { return v; }
static __device__ __forceinline__ float fab__to_f32(__half v) { return __half2float(v); }
static __device__ __forceinline__ float fab__to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T fab__from_f32(float v);
template <> __device__ __forceinline__ float fab__from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half fab__from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 fab__from_f32<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}

#endif
