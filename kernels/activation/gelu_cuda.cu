/*
 * gelu_cuda.cu: GELU forward/backward on the GPU.
 *
 * Idea: a memory-bound elementwise map. Each thread moves one 16-byte pack
 * (4 f32 or 8 f16/bf16) per step of a grid-stride loop, so every load and store
 * is a full 128-bit transaction; the grid is sized to a few waves of the SMs.
 * Elements past the last whole pack (or all of them, when a pointer is not
 * 16-byte aligned) go through the same code with packs of one element.
 * Numerics: load, compute in f32 (gelu_math.h, the same forms as the CPU's),
 * store rounded to nearest even. out may be x or dy itself (each element is read
 * before it is written, by the same thread), so no pointer is __restrict__.
 */
#include <cuda_runtime.h>

#define FAB__HD __host__ __device__
#include "../common/cuda_dtype.cuh"
#include "gelu.h"
#include "gelu_math.h"

template <typename T, int VEC> struct alignas(sizeof(T) * VEC) gelu_pack {
    T v[VEC];
};

template <typename T, int VEC>
__global__ void __launch_bounds__(256)
gelu_kernel(const T *x, const T *dy, T *out, int64_t npacks, int approximate)
{
    typedef gelu_pack<T, VEC> pack;
    const pack *xp = reinterpret_cast<const pack *>(x);
    const pack *dyp = reinterpret_cast<const pack *>(dy);
    pack *outp = reinterpret_cast<pack *>(out);
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < npacks; i += stride) {
        pack xv = xp[i], r;
        if (dy) {
            pack gv = dyp[i];
#pragma unroll
            for (int j = 0; j < VEC; j++)
                r.v[j] = fab__from_f32<T>(fab__to_f32(gv.v[j]) * fab__gelu_grad(fab__to_f32(xv.v[j]), approximate));
        } else {
#pragma unroll
            for (int j = 0; j < VEC; j++)
                r.v[j] = fab__from_f32<T>(fab__gelu(fab__to_f32(xv.v[j]), approximate));
        }
        outp[i] = r;
    }
}

template <typename T, int VEC>
static cudaError_t launch(fab_context *ctx, const T *x, const T *dy, T *out, int64_t npacks, int approximate)
{
    const int threads = 256;
    int64_t blocks = (npacks + threads - 1) / threads;
    int64_t max_blocks = (int64_t)ctx->sm_count * 8; /* a few waves; the loop covers the rest */
    if (blocks > max_blocks)
        blocks = max_blocks;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)blocks);
    cfg.blockDim = dim3(threads);
    cfg.stream = (cudaStream_t)ctx->stream;
    return cudaLaunchKernelEx(&cfg, gelu_kernel<T, VEC>, x, dy, out, npacks, approximate);
}

template <typename T>
static fab_status gelu_typed(fab_context *ctx, const fab__gelu_args *a)
{
    const int VEC = 16 / sizeof(T);
    const T *x = (const T *)a->x;
    const T *dy = (const T *)a->dy;
    T *out = (T *)a->out;
    uintptr_t addr_bits = (uintptr_t)x | (uintptr_t)out | (uintptr_t)dy;
    int64_t head = (addr_bits % 16 == 0) ? a->n / VEC * VEC : 0; /* elements done as packs */
    int approx = a->approximate == FAB_GELU_TANH;
    cudaError_t err = cudaSuccess;
    if (head > 0)
        err = launch<T, VEC>(ctx, x, dy, out, head / VEC, approx);
    if (err == cudaSuccess && head < a->n)
        err = launch<T, 1>(ctx, x + head, dy ? dy + head : NULL, out + head, a->n - head, approx);
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "gelu: kernel launch failed: %s", cudaGetErrorString(err));
    return fab__cuda_check_launch("gelu");
}

extern "C" fab_status fab__gelu_cuda(fab_context *ctx, const fab__gelu_args *a)
{
    cudaError_t err = cudaSetDevice(ctx->device);
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "gelu: cudaSetDevice failed: %s", cudaGetErrorString(err));
    switch (a->dtype) {
    case FAB_DTYPE_F32: return gelu_typed<float>(ctx, a);
    case FAB_DTYPE_F16: return gelu_typed<__half>(ctx, a);
    case FAB_DTYPE_BF16: return gelu_typed<__nv_bfloat16>(ctx, a);
    default: return fab__fail(FAB_ERR_INTERNAL, "gelu: dtype %s reached the CUDA kernel", fab_dtype_name(a->dtype));
    }
}
