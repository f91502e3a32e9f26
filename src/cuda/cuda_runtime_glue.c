/*
 * cuda_runtime_glue.c: the CUDA side of contexts and memory, through the CUDA
 * runtime API only. The library links the static cudart, which loads the driver
 * (libcuda.so.1) at run time: on a machine without a driver every call below
 * fails cleanly with cudaErrorInsufficientDriver or cudaErrorNoDevice, and we
 * turn that into FAB_ERR_NO_DEVICE. Under FAB_EMULATE_CUDA the same code runs
 * against the emulator's runtime (emu/).
 *
 * Every call that touches the device first makes the context's device current
 * on the calling thread (cudaSetDevice), as cuBLAS handles do.
 */
#include "../runtime.h"

#include <cuda_runtime_api.h>
#include <stdio.h>

static fab_status cuda_fail(fab_status status, const char *op, const char *call, cudaError_t err)
{
    return fab__fail(status, "%s: %s failed: %s (%s)", op, call, cudaGetErrorName(err),
                     cudaGetErrorString(err));
}

bool fab__cuda_compiled(void)
{
    return true;
}

fab_status fab__cuda_usable(int device)
{
    const char *op = "fab_context_create";
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky "no driver" error */
        return fab__fail(FAB_ERR_NO_DEVICE, "%s: no usable CUDA device: cudaGetDeviceCount: %s (%s)",
                         op, cudaGetErrorName(err), cudaGetErrorString(err));
    }
    if (count == 0)
        return fab__fail(FAB_ERR_NO_DEVICE, "%s: no CUDA device found", op);
    if (device >= count)
        return fab__fail(FAB_ERR_NO_DEVICE, "%s: cfg.device=%d but only %d CUDA device%s", op, device,
                         count, count == 1 ? "" : "s");
    int major = 0;
    err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (err != cudaSuccess)
        return cuda_fail(FAB_ERR_NO_DEVICE, op, "cudaDeviceGetAttribute", err);
    if (major < 8)
        return fab__fail(FAB_ERR_NO_DEVICE, "%s: CUDA device %d has compute capability %d.x; fabriek needs 8.0 or newer",
                         op, device, major);
    return FAB_OK;
}

static fab_status enter(fab_context *ctx, const char *op)
{
    cudaError_t err = cudaSetDevice(ctx->device);
    return err == cudaSuccess ? FAB_OK : cuda_fail(FAB_ERR_BACKEND, op, "cudaSetDevice", err);
}

fab_status fab__cuda_context_init(fab_context *ctx, void *user_stream)
{
    const char *op = "fab_context_create";
    fab_status s = enter(ctx, op);
    if (s != FAB_OK)
        return s;
    struct cudaDeviceProp prop;
    cudaError_t err = cudaGetDeviceProperties(&prop, ctx->device);
    if (err != cudaSuccess)
        return cuda_fail(FAB_ERR_BACKEND, op, "cudaGetDeviceProperties", err);
    ctx->sm_version = prop.major * 10 + prop.minor;
    ctx->sm_count = prop.multiProcessorCount;
    ctx->smem_optin = (int)prop.sharedMemPerBlockOptin;
    int driver = 0, runtime = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    snprintf(ctx->device_name, sizeof ctx->device_name, "%s (sm_%d, %d SMs, driver %d.%d, runtime %d.%d)",
             prop.name, ctx->sm_version, ctx->sm_count, driver / 1000, driver % 1000 / 10, runtime / 1000,
             runtime % 1000 / 10);
    if (user_stream) {
        ctx->stream = user_stream;
        ctx->owns_stream = false;
    } else {
        cudaStream_t stream;
        err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
        if (err != cudaSuccess)
            return cuda_fail(FAB_ERR_BACKEND, op, "cudaStreamCreateWithFlags", err);
        ctx->stream = stream;
        ctx->owns_stream = true;
    }
    return FAB_OK;
}

void fab__cuda_context_release(fab_context *ctx)
{
    if (enter(ctx, "fab_context_destroy") != FAB_OK)
        return;
    cudaStreamSynchronize((cudaStream_t)ctx->stream);
    if (ctx->owns_stream)
        cudaStreamDestroy((cudaStream_t)ctx->stream);
}

fab_status fab__cuda_synchronize(fab_context *ctx)
{
    fab_status s = enter(ctx, "fab_synchronize");
    if (s != FAB_OK)
        return s;
    cudaError_t err = cudaStreamSynchronize((cudaStream_t)ctx->stream);
    return err == cudaSuccess ? FAB_OK : cuda_fail(FAB_ERR_BACKEND, "fab_synchronize", "cudaStreamSynchronize", err);
}

fab_status fab__cuda_alloc(fab_context *ctx, size_t bytes, void **ptr)
{
    fab_status s = enter(ctx, "fab_alloc");
    if (s != FAB_OK)
        return s;
    cudaError_t err = cudaMalloc(ptr, bytes);
    if (err == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        *ptr = NULL;
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "fab_alloc: %zu bytes of device memory not available", bytes);
    }
    if (err != cudaSuccess) {
        *ptr = NULL;
        return cuda_fail(FAB_ERR_BACKEND, "fab_alloc", "cudaMalloc", err);
    }
    return FAB_OK;
}

fab_status fab__cuda_free(fab_context *ctx, void *ptr)
{
    fab_status s = enter(ctx, "fab_free");
    if (s != FAB_OK)
        return s;
    cudaError_t err = cudaStreamSynchronize((cudaStream_t)ctx->stream);
    if (err != cudaSuccess)
        return cuda_fail(FAB_ERR_BACKEND, "fab_free", "cudaStreamSynchronize", err);
    err = cudaFree(ptr);
    return err == cudaSuccess ? FAB_OK : cuda_fail(FAB_ERR_BACKEND, "fab_free", "cudaFree", err);
}

fab_status fab__cuda_copy(fab_context *ctx, void *dst, const void *src, size_t bytes)
{
    fab_status s = enter(ctx, "fab_copy");
    if (s != FAB_OK)
        return s;
    cudaError_t err = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, (cudaStream_t)ctx->stream);
    return err == cudaSuccess ? FAB_OK : cuda_fail(FAB_ERR_BACKEND, "fab_copy", "cudaMemcpyAsync", err);
}

fab_status fab__cuda_check_device_pointer(fab_context *ctx, const char *op, const char *name,
                                          const void *ptr)
{
    struct cudaPointerAttributes attr;
    cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return fab__fail(FAB_ERR_INVALID_ARGUMENT, "%s: %s.data=%p: cudaPointerGetAttributes failed: %s", op, name,
                         ptr, cudaGetErrorName(err));
    }
    switch (attr.type) {
    case cudaMemoryTypeDevice:
        if (attr.device != ctx->device)
            return fab__fail(FAB_ERR_INVALID_ARGUMENT, "%s: %s.data is memory of CUDA device %d, the context uses device %d",
                             op, name, attr.device, ctx->device);
        return FAB_OK;
    case cudaMemoryTypeManaged:
    case cudaMemoryTypeHost: /* page-locked and mapped: reachable, if slow */
        return FAB_OK;
    default:
        return fab__fail(FAB_ERR_INVALID_ARGUMENT,
                         "%s: %s.data=%p is pageable host memory; a CUDA context needs device memory (fab_alloc)",
                         op, name, ptr);
    }
}

fab_status fab__cuda_check_launch(const char *op)
{
    cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? FAB_OK : cuda_fail(FAB_ERR_BACKEND, op, "kernel launch", err);
}
