/*
 * runtime.h: what every op's entry file needs from the runtime: the error
 * helpers, the context struct, tensor checks, and the CUDA glue.
 * Internal; never installed.
 */
#ifndef FAB_RUNTIME_H
#define FAB_RUNTIME_H

#include "fabriek.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define FAB__PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define FAB__PRINTF(f, a)
#endif

/* ------------------------------------------------------------------ errors */

/* Records "fmt..." as this thread's last error and returns `status`, so a check
 * reads: if (bad) return fab__fail(FAB_ERR_INVALID_ARGUMENT, "%s: ...", op, ...); */
fab_status fab__fail(fab_status status, const char *fmt, ...) FAB__PRINTF(2, 3);

/* Returns from the calling function when `call` does not give FAB_OK. */
#define FAB__TRY(call)                      \
    do {                                    \
        fab_status fab__try_status = (call); \
        if (fab__try_status != FAB_OK)      \
            return fab__try_status;         \
    } while (0)

/* ----------------------------------------------------------------- context */

struct fab_context {
    fab_backend backend; /* CPU or CUDA, never AUTO */
    int device;
    int deterministic;
    int num_threads; /* CPU: threads for OpenMP regions (>= 1) */
    size_t workspace_bytes;
    char device_name[320];

    /* CUDA only */
    void *stream;     /* cudaStream_t */
    bool owns_stream; /* created by us, destroyed with the context */
    int sm_version;   /* 80, 90, 100, ... */
    int sm_count;
    int smem_optin;   /* bytes of shared memory a block may opt in to (cudaDevAttrMaxSharedMemoryPerBlockOptin) */

    /* Per-op state an op creates lazily and releases with the context. */
    void *matmul; /* kernels/matmul (fab__mm_state): cuBLASLt state and AUTO's tuning cache */

    /* CPU: host scratch kept from call to call (fab__host_scratch_get) */
    void *host_scratch;
    size_t host_scratch_bytes;
    bool host_scratch_busy;
};

/* A 64-byte aligned host buffer of `bytes` for the duration of one op. Up to
 * ctx->workspace_bytes it is the context's own scratch, kept and grown across
 * calls, so large ops do not fault fresh pages in every time; beyond that, or
 * while the scratch is lent out, it is a fresh allocation. Give it back with
 * fab__host_scratch_put. NULL when there is no memory. */
void *fab__host_scratch_get(fab_context *ctx, size_t bytes);
void fab__host_scratch_put(fab_context *ctx, void *buf);

/* Releases ctx->matmul (kernels/matmul/matmul.c); safe in every build. */
void fab__matmul_context_release(fab_context *ctx);

/* ----------------------------------------------------------- tensor checks */

/* Every op's validation is built from these. Each records a message that starts
 * with `op`, names the argument as `name`, and returns FAB_ERR_INVALID_ARGUMENT
 * (or FAB_OK). */

/* data != NULL unless empty, dtype known, 0 <= ndim <= FAB_MAX_DIMS,
 * shape >= 0, strides >= 0, byte extent fits in int64, data aligned to its element. */
fab_status fab__check_tensor(const char *op, const char *name, const fab_tensor *t);
/* fab__check_tensor + dense row-major strides (size-1 dims may have any stride). */
fab_status fab__check_contiguous(const char *op, const char *name, const fab_tensor *t);
/* Same ndim and shape as `ref` (named ref_name). */
fab_status fab__check_same_shape(const char *op, const char *name, const fab_tensor *t,
                                 const char *ref_name, const fab_tensor *ref);
/* Same dtype as `ref`. */
fab_status fab__check_same_dtype(const char *op, const char *name, const fab_tensor *t,
                                 const char *ref_name, const fab_tensor *ref);
/* dtype one of `n` listed. */
fab_status fab__check_dtype_in(const char *op, const char *name, const fab_tensor *t,
                               const fab_dtype *allowed, int n);
/* An output must not write one element twice: ordered by stride, each dim of more
 * than one element steps past the span of those before it. (Sufficient, not
 * necessary: dims interleaved without a collision are refused too.) t has passed
 * fab__check_tensor. */
fab_status fab__check_no_self_overlap(const char *op, const char *name, const fab_tensor *t);
/* a and b share no element, or are identical (same data, dtype, shape and strides)
 * when `may_be_same` is true. Spans that overlap pass when the elements provably
 * do not (views interleaved in one buffer); else they are refused. */
fab_status fab__check_no_partial_overlap(const char *op, const char *a_name, const fab_tensor *a,
                                         const char *b_name, const fab_tensor *b, bool may_be_same);
/* The memory of t is reachable by the context's backend (device memory for CUDA). */
fab_status fab__check_memory(fab_context *ctx, const char *op, const char *name, const fab_tensor *t);
/* ctx and p not NULL. */
fab_status fab__check_call(const char *op, const fab_context *ctx, const void *p);

/* Byte span [lo, hi) covered by a tensor's elements; lo == hi when empty. */
void fab__tensor_span(const fab_tensor *t, uintptr_t *lo, uintptr_t *hi);

/* ------------------------------------------------------- CUDA runtime glue */

/* Implemented in src/cuda/cuda_runtime_glue.c when the library has a CUDA backend
 * (real or emulated); stubs returning FAB_ERR_NO_DEVICE otherwise. */
bool fab__cuda_compiled(void);
fab_status fab__cuda_usable(int device);           /* FAB_OK when a GPU can be used */
fab_status fab__cuda_context_init(fab_context *ctx, void *user_stream);
void fab__cuda_context_release(fab_context *ctx);
fab_status fab__cuda_synchronize(fab_context *ctx);
fab_status fab__cuda_alloc(fab_context *ctx, size_t bytes, void **ptr);
fab_status fab__cuda_free(fab_context *ctx, void *ptr);
fab_status fab__cuda_copy(fab_context *ctx, void *dst, const void *src, size_t bytes);
/* FAB_OK when ptr is device or managed memory of the context's device. */
fab_status fab__cuda_check_device_pointer(fab_context *ctx, const char *op, const char *name,
                                          const void *ptr);
/* Converts the last CUDA error of a launch into a status with a message. */
fab_status fab__cuda_check_launch(const char *op);

#ifdef __cplusplus
}
#endif

#endif /* FAB_RUNTIME_H */
