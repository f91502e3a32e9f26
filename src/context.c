/*
 * context.c: contexts and memory helpers. A context is a backend (CPU or CUDA),
 * a device, a stream and a few settings; it holds no hidden global state, so two
 * contexts never interfere.
 */
#include "runtime.h"
#include "matmul/matmul_amx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define INVALID FAB_ERR_INVALID_ARGUMENT

static const char *cpu_simd_name(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return "avx512f";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "avx2+fma";
    return "sse2";
#elif defined(__aarch64__)
    return "neon";
#else
    return "scalar";
#endif
}

static fab_status cpu_context_init(fab_context *ctx, const fab_context_config *cfg)
{
    if (cfg->stream)
        return fab__fail(INVALID, "fab_context_create: cfg.stream must be NULL for the CPU backend");
#ifdef _OPENMP
    ctx->num_threads = cfg->num_threads > 0 ? cfg->num_threads : omp_get_max_threads();
#else
    ctx->num_threads = 1;
#endif
    snprintf(ctx->device_name, sizeof ctx->device_name, "CPU: %d thread%s (%s%s)", ctx->num_threads,
             ctx->num_threads == 1 ? "" : "s", cpu_simd_name(), fab__amx_available() ? ", amx-bf16" : "");
    return FAB_OK;
}

fab_status fab_context_create(const fab_context_config *cfg, fab_context **out)
{
    const char *op = "fab_context_create";
    if (!out)
        return fab__fail(INVALID, "%s: out is NULL", op);
    *out = NULL;
    fab_context_config defaults;
    memset(&defaults, 0, sizeof defaults);
    if (!cfg)
        cfg = &defaults;
    if (cfg->backend != FAB_BACKEND_AUTO && cfg->backend != FAB_BACKEND_CPU &&
        cfg->backend != FAB_BACKEND_CUDA)
        return fab__fail(INVALID, "%s: cfg.backend=%d is not a fab_backend", op, (int)cfg->backend);
    if (cfg->device < 0)
        return fab__fail(INVALID, "%s: cfg.device=%d must be >= 0", op, cfg->device);
    if (cfg->num_threads < 0)
        return fab__fail(INVALID, "%s: cfg.num_threads=%d must be >= 0", op, cfg->num_threads);

    fab_backend backend = cfg->backend;
    if (backend == FAB_BACKEND_AUTO)
        backend = fab__cuda_usable(cfg->device) == FAB_OK ? FAB_BACKEND_CUDA : FAB_BACKEND_CPU;
    if (backend == FAB_BACKEND_CUDA) {
        fab_status s = fab__cuda_usable(cfg->device);
        if (s != FAB_OK)
            return s; /* the message says why */
    }

    fab_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
    ctx->backend = backend;
    ctx->device = cfg->device;
    ctx->deterministic = cfg->deterministic != 0;
    ctx->workspace_bytes = cfg->workspace_bytes ? cfg->workspace_bytes : (size_t)32 << 20;
    ctx->num_threads = 1;
    fab_status s = backend == FAB_BACKEND_CUDA ? fab__cuda_context_init(ctx, cfg->stream)
                                               : cpu_context_init(ctx, cfg);
    if (s != FAB_OK) {
        free(ctx);
        return s;
    }
    *out = ctx;
    return FAB_OK;
}

void fab_context_destroy(fab_context *ctx)
{
    if (!ctx)
        return;
    if (ctx->backend == FAB_BACKEND_CUDA)
        fab__cuda_context_release(ctx);
    fab__matmul_context_release(ctx);
    free(ctx->host_scratch);
    free(ctx);
}

static void *aligned_host_alloc(size_t bytes)
{
    size_t rounded = (bytes + 63) / 64 * 64;
    return rounded >= bytes ? aligned_alloc(64, rounded ? rounded : 64) : NULL;
}

void *fab__host_scratch_get(fab_context *ctx, size_t bytes)
{
    if (ctx->host_scratch_busy || bytes > ctx->workspace_bytes)
        return aligned_host_alloc(bytes);
    if (bytes > ctx->host_scratch_bytes) {
        free(ctx->host_scratch);
        ctx->host_scratch_bytes = 0;
        ctx->host_scratch = aligned_host_alloc(bytes);
        if (!ctx->host_scratch)
            return NULL;
        ctx->host_scratch_bytes = bytes;
    }
    ctx->host_scratch_busy = true;
    return ctx->host_scratch;
}

void fab__host_scratch_put(fab_context *ctx, void *buf)
{
    if (buf && buf == ctx->host_scratch)
        ctx->host_scratch_busy = false;
    else
        free(buf);
}

fab_backend fab_context_backend(const fab_context *ctx)
{
    return ctx ? ctx->backend : FAB_BACKEND_AUTO;
}

const char *fab_context_device_name(const fab_context *ctx)
{
    return ctx ? ctx->device_name : "";
}

fab_status fab_synchronize(fab_context *ctx)
{
    if (!ctx)
        return fab__fail(INVALID, "fab_synchronize: ctx is NULL");
    return ctx->backend == FAB_BACKEND_CUDA ? fab__cuda_synchronize(ctx) : FAB_OK;
}

fab_status fab_alloc(fab_context *ctx, size_t bytes, void **ptr)
{
    const char *op = "fab_alloc";
    if (!ptr)
        return fab__fail(INVALID, "%s: ptr is NULL", op);
    *ptr = NULL;
    if (!ctx)
        return fab__fail(INVALID, "%s: ctx is NULL", op);
    if (bytes == 0)
        return fab__fail(INVALID, "%s: bytes must be > 0", op);
    if (bytes > SIZE_MAX - 255)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: %zu bytes cannot be allocated", op, bytes);
    if (ctx->backend == FAB_BACKEND_CUDA)
        return fab__cuda_alloc(ctx, bytes, ptr);
    void *p = aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!p)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: %zu bytes of host memory not available", op, bytes);
    *ptr = p;
    return FAB_OK;
}

fab_status fab_free(fab_context *ctx, void *ptr)
{
    if (!ctx)
        return fab__fail(INVALID, "fab_free: ctx is NULL");
    if (!ptr)
        return FAB_OK;
    if (ctx->backend == FAB_BACKEND_CUDA)
        return fab__cuda_free(ctx, ptr);
    free(ptr);
    return FAB_OK;
}

fab_status fab_copy(fab_context *ctx, void *dst, const void *src, size_t bytes)
{
    const char *op = "fab_copy";
    if (!ctx)
        return fab__fail(INVALID, "%s: ctx is NULL", op);
    if (bytes == 0)
        return FAB_OK;
    if (!dst)
        return fab__fail(INVALID, "%s: dst is NULL", op);
    if (!src)
        return fab__fail(INVALID, "%s: src is NULL", op);
    uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
    if (d < s + bytes && s < d + bytes)
        return fab__fail(INVALID, "%s: dst and src overlap", op);
    if (ctx->backend == FAB_BACKEND_CUDA)
        return fab__cuda_copy(ctx, dst, src, bytes);
    memcpy(dst, src, bytes);
    return FAB_OK;
}
