/* matmul.h: internal arguments shared by the matmul entry, CPU, cuBLASLt and CUDA files. */
#ifndef FAB_MATMUL_H
#define FAB_MATMUL_H

#include "../../src/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FAB__MM_MAX_BATCH (FAB_MAX_DIMS - 2)

/* A validated call, in row-major terms. Matrix X (A, B, C, pre_act) of batch index
 * (i_0, ..., i_{nb-1}) starts at X.data + sum_j i_j * X_bstride[j] elements; its
 * element (r, c) of the matrix AS STORED is at r * ld + c. op(A) is [m, k], op(B)
 * [k, n]; A is stored [m, k] (trans_a 0) or [k, m] (trans_a 1), B [k, n] or [n, k].
 * Broadcast batch dims have stride 0. m, n, batch > 0 (the entry returns early
 * otherwise); k may be 0. */
typedef struct fab__mm_args {
    int64_t m, n, k;
    int nb;                              /* number of batch dims (0..6) */
    int64_t batch_shape[FAB__MM_MAX_BATCH];
    int64_t batch;                       /* product of batch_shape */
    const void *a, *b;
    void *c;
    const void *bias;                    /* NULL: none */
    void *pre_act;                       /* NULL: none */
    void *dbias;                         /* NULL: none */
    int64_t lda, ldb, ldc, ldp;          /* row strides, elements */
    int64_t a_bstride[FAB__MM_MAX_BATCH], b_bstride[FAB__MM_MAX_BATCH];
    int64_t c_bstride[FAB__MM_MAX_BATCH], p_bstride[FAB__MM_MAX_BATCH];
    fab_dtype ab_dtype, c_dtype, bias_dtype, dbias_dtype;
    int trans_a, trans_b;
    float alpha, beta;
    fab_matmul_activation act;
    int act_backward;
    fab_matmul_dbias_from dbias_from;
    int tf32;
    fab_matmul_algo algo;
} fab__mm_args;

/* Element offset of batch `idx` (row-major over batch_shape) for the given strides. */
static inline int64_t fab__mm_batch_offset(const fab__mm_args *a, const int64_t *bstride, int64_t idx)
{
    int64_t off = 0;
    for (int j = a->nb - 1; j >= 0; j--) {
        off += (idx % a->batch_shape[j]) * bstride[j];
        idx /= a->batch_shape[j];
    }
    return off;
}

/* CPU: algo NATIVE/AUTO runs the packed GEMM, REFERENCE the plain loops. */
fab_status fab__matmul_cpu(fab_context *ctx, const fab__mm_args *a);

/* dbias[n] = sum over every row of dy. dy's rows: `nr` row dims (shape/stride,
 * the row index (i_0, ..., i_{nr-1}) starts at dy + sum i_j * stride[j]); n > 0. */
typedef struct fab__bgrad_args {
    const void *dy;
    fab_dtype dtype;
    int64_t n;
    int nr;
    int64_t shape[FAB_MAX_DIMS], stride[FAB_MAX_DIMS];
    void *dbias;
    fab_dtype dbias_dtype;
} fab__bgrad_args;
fab_status fab__bias_grad_cpu(fab_context *ctx, const fab__bgrad_args *a);
fab_status fab__bias_grad_cuda(fab_context *ctx, const fab__bgrad_args *a);

/* CUDA: fabriek's kernels (matmul_cuda.cu dispatches; matmul_sm80.cuh is the
 * tensor-core kernel) and cuBLASLt (matmul_cublas.c). */
bool fab__matmul_sm80_supports(const fab_context *ctx, const fab__mm_args *a);
fab_status fab__matmul_sm80(fab_context *ctx, const fab__mm_args *a);
/* its instances for one input dtype each (matmul_sm80_<dtype>.cu); fab__matmul_sm80 picks */
fab_status fab__matmul_sm80_bf16(fab_context *ctx, const fab__mm_args *a);
fab_status fab__matmul_sm80_f16(fab_context *ctx, const fab__mm_args *a);
fab_status fab__matmul_sm80_tf32(fab_context *ctx, const fab__mm_args *a);
/* matmul_sm90.cu(h): the Hopper kernel (wgmma, TMA), preferred on sm_90 where it applies. */
bool fab__matmul_sm90_supports(const fab_context *ctx, const fab__mm_args *a);
fab_status fab__matmul_sm90(fab_context *ctx, const fab__mm_args *a);
/* The Hopper kernel's ping-pong schedule, whatever FAB_MATMUL_SM90_SCHEDULE says
 * (AUTO's candidate); the same requirements. */
fab_status fab__matmul_sm90_pingpong(fab_context *ctx, const fab__mm_args *a);
/* its instances for one input dtype each (matmul_sm90_<dtype>.cu): 128 x bn tiles
 * (128 or 256) on the cooperative schedule, or 128 x 128 ping-pong */
fab_status fab__matmul_sm90_bf16(fab_context *ctx, const fab__mm_args *a, int bn, bool pingpong);
fab_status fab__matmul_sm90_f16(fab_context *ctx, const fab__mm_args *a, int bn, bool pingpong);
fab_status fab__matmul_cuda(fab_context *ctx, const fab__mm_args *a);
fab_status fab__matmul_cublaslt(fab_context *ctx, const fab__mm_args *a);
/* Whether cuBLASLt can run this call (dtypes, epilogue, strides); FAB_OK or a
 * FAB_ERR_UNSUPPORTED message saying why not. */
fab_status fab__matmul_cublaslt_supports(const fab_context *ctx, const fab__mm_args *a);
/* cublasLtGetVersion(), or 0 in a build without cuBLASLt (AUTO's file signature). */
size_t fab__matmul_cublaslt_version(void);

/* What fab_matmul keeps in a CUDA context (ctx->matmul): created on the first
 * call that needs it (fab__matmul_state), released with the context by
 * fab__matmul_context_release (matmul.c). */
typedef struct fab__mm_tuner fab__mm_tuner;
typedef struct fab__mm_state {
    void *lt;              /* matmul_cublas.c: handle, workspace, algorithm cache */
    fab__mm_tuner *tuner;  /* matmul_cuda.cu: AUTO's measured choices (host memory only) */
} fab__mm_state;
/* The context's state, created on first use; NULL (message recorded) when out of
 * host memory. */
fab__mm_state *fab__matmul_state(fab_context *ctx);
/* Releases st->lt (builds with cuBLASLt). */
void fab__matmul_cublaslt_release(fab_context *ctx, fab__mm_state *st);
/* The dbias of a call (from C or from A) by fabriek's deterministic CUDA
 * reduction, on the context's stream after the GEMM. */
fab_status fab__matmul_dbias_cuda(fab_context *ctx, const fab__mm_args *a);

#ifdef __cplusplus
}
#endif

#endif
