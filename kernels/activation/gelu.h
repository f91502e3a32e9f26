/* gelu.h: internal arguments shared by the GELU entry, CPU and CUDA files. */
#ifndef FAB_GELU_H
#define FAB_GELU_H

#include "../../src/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Validated, contiguous, same dtype, n > 0. Forward: out = gelu(x).
 * Backward: out = dy * gelu'(x). */
typedef struct fab__gelu_args {
    const void *x;
    const void *dy; /* NULL for the forward pass */
    void *out;
    int64_t n;
    fab_dtype dtype; /* f32, f16 or bf16 */
    fab_gelu_approx approximate;
} fab__gelu_args;

fab_status fab__gelu_cpu(fab_context *ctx, const fab__gelu_args *a);
fab_status fab__gelu_cuda(fab_context *ctx, const fab__gelu_args *a);

#ifdef __cplusplus
}
#endif

#endif
