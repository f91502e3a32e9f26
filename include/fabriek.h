/*
 * fabriek.h: the whole public C API of fabriek.
 *
 * fabriek is a library of training kernels (matmul, attention, norms, activations,
 * losses, optimizers) with a CUDA backend and a CPU backend behind one C API.
 * This header needs no CUDA header; it compiles as C99 and as C++.
 *
 * Conventions that hold for every call below:
 *  - Every call that can fail returns fab_status; FAB_OK is 0. On failure,
 *    fab_last_error() gives this thread's message naming the argument at fault.
 *  - The library never prints to stdout, never exits, never frees caller memory,
 *    and writes no output tensor when it rejects a call.
 *  - Ops take a params struct by pointer; a zeroed field means its default.
 *    Params structs only ever grow at the end.
 *  - Ops are asynchronous on the context's stream (CUDA) or synchronous (CPU).
 *    fab_synchronize(ctx) waits for everything issued on a context.
 *  - Tensor memory lives where the context computes: device memory (cudaMalloc,
 *    fab_alloc, or managed memory) for a CUDA context, host memory for a CPU one.
 */
#ifndef FABRIEK_H
#define FABRIEK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FAB_API
#else
#define FAB_API __attribute__((visibility("default")))
#endif

/* ---------------------------------------------------------------- version */

#define FAB_VERSION_MAJOR 0
#define FAB_VERSION_MINOR 1
#define FAB_VERSION_PATCH 0

/* "MAJOR.MINOR.PATCH" of the library actually linked (may differ from the macros
 * of the header a program was compiled with). Static string; never fails. */
FAB_API const char *fab_version(void);

/* ----------------------------------------------------------------- status */

typedef enum fab_status {
    FAB_OK = 0,
    FAB_ERR_INVALID_ARGUMENT = 1, /* an argument is wrong; the message names it */
    FAB_ERR_UNSUPPORTED = 2,      /* valid, but not for this backend/dtype/arch */
    FAB_ERR_OUT_OF_MEMORY = 3,    /* host or device allocation failed */
    FAB_ERR_NO_DEVICE = 4,        /* CUDA asked for but no usable GPU/driver */
    FAB_ERR_BACKEND = 5,          /* CUDA, cuBLAS, NCCL or MPI returned an error */
    FAB_ERR_TIMEOUT = 6,          /* a collective did not complete in time */
    FAB_ERR_PEER = 7,             /* another rank failed */
    FAB_ERR_INTERNAL = 8          /* a bug in fabriek: please report it */
} fab_status;

/* "FAB_OK", "FAB_ERR_INVALID_ARGUMENT", ...; "FAB_ERR_UNKNOWN" for other values. */
FAB_API const char *fab_status_name(fab_status status);

/* The calling thread's message for its last failed call, e.g.
 * "fab_gelu_forward: y.shape[1]=96 must equal x.shape[1]=128".
 * "" when no call on this thread has failed yet. The pointer stays valid until the
 * next fabriek call on the same thread. A successful call does not clear it. */
FAB_API const char *fab_last_error(void);

/* ----------------------------------------------------------------- dtypes */

typedef enum fab_dtype {
    FAB_DTYPE_F32 = 0,
    FAB_DTYPE_F16 = 1,     /* IEEE binary16 */
    FAB_DTYPE_BF16 = 2,    /* bfloat16: the top 16 bits of an f32 */
    FAB_DTYPE_F8_E4M3 = 3, /* OCP FP8 E4M3 (FN): no infinities, max 448, NaN = S.1111.111 */
    FAB_DTYPE_F8_E5M2 = 4, /* OCP FP8 E5M2: IEEE-like, max 57344, has inf and NaN */
    FAB_DTYPE_I32 = 5,
    FAB_DTYPE_I64 = 6,
    FAB_DTYPE_F64 = 7,
    FAB_DTYPE_COUNT
} fab_dtype;

/* Bytes per element; 0 for an unknown dtype. */
FAB_API size_t fab_dtype_size(fab_dtype dtype);
/* "f32", "f16", "bf16", "f8_e4m3", "f8_e5m2", "i32", "i64", "f64"; "unknown" otherwise. */
FAB_API const char *fab_dtype_name(fab_dtype dtype);

/* Exact conversions. float -> narrow rounds to nearest, ties to even.
 * NaN stays NaN (quiet, sign kept). Overflow:
 *   f16, bf16, e5m2: to infinity, as IEEE round-to-nearest does;
 *   e4m3 has no infinity: +-inf and finite values past the largest code saturate
 *   to +-448 when `saturate` is non-zero, else become NaN (values that round to at
 *   most 448 are never NaN). e5m2 with `saturate` clamps finite overflow and
 *   infinities to +-57344, as the OCP spec's saturating mode.
 * narrow -> float is exact for every code. */
FAB_API uint16_t fab_f32_to_f16(float x);
FAB_API float fab_f16_to_f32(uint16_t h);
FAB_API uint16_t fab_f32_to_bf16(float x);
FAB_API float fab_bf16_to_f32(uint16_t b);
FAB_API uint8_t fab_f32_to_f8_e4m3(float x, int saturate);
FAB_API float fab_f8_e4m3_to_f32(uint8_t v);
FAB_API uint8_t fab_f32_to_f8_e5m2(float x, int saturate);
FAB_API float fab_f8_e5m2_to_f32(uint8_t v);

/* ---------------------------------------------------------------- tensors */

#define FAB_MAX_DIMS 8

/* A view of memory the caller owns; fabriek never allocates or frees through it.
 * shape[i] >= 0; stride[i] in elements (not bytes), >= 0. ndim 0 is a scalar.
 * A tensor with data == NULL and ndim == 0 means "absent" for optional arguments.
 * Each op says which strides it accepts. */
typedef struct fab_tensor {
    void *data;
    fab_dtype dtype;
    int ndim;
    int64_t shape[FAB_MAX_DIMS];
    int64_t stride[FAB_MAX_DIMS];
} fab_tensor;

/* Fills *out with a contiguous row-major view: stride[ndim-1] = 1,
 * stride[i] = stride[i+1]*shape[i+1]. Checks dtype, 0 <= ndim <= FAB_MAX_DIMS,
 * shape[i] >= 0 and that the element count times the element size fits in int64.
 * data may be NULL only when the tensor has no elements. */
FAB_API fab_status fab_tensor_make(void *data, fab_dtype dtype, int ndim,
                                   const int64_t *shape, fab_tensor *out);

/* Number of elements (product of shape); 0 for a NULL tensor. */
FAB_API int64_t fab_tensor_numel(const fab_tensor *t);

/* ---------------------------------------------------------------- context */

typedef enum fab_backend {
    FAB_BACKEND_AUTO = 0, /* CUDA when a GPU is usable, else CPU */
    FAB_BACKEND_CPU = 1,  /* OpenMP on the host */
    FAB_BACKEND_CUDA = 2  /* one GPU, on one stream */
} fab_backend;

typedef struct fab_context_config {
    fab_backend backend;    /* default AUTO */
    int device;             /* CUDA device ordinal; default 0 */
    void *stream;           /* cudaStream_t to run on; NULL: the context creates its own */
    size_t workspace_bytes; /* scratch the context may keep; 0: library default */
    int deterministic;      /* non-zero: bitwise-identical results run to run */
    int num_threads;        /* CPU threads; 0: OpenMP's default */
} fab_context_config;

typedef struct fab_context fab_context;

/* Creates a context. cfg may be NULL (all defaults). On failure *out is set to NULL.
 * FAB_ERR_NO_DEVICE when CUDA is asked for and no driver or GPU is usable, or the
 * library was built without CUDA. A context is used by one thread at a time. */
FAB_API fab_status fab_context_create(const fab_context_config *cfg, fab_context **out);
/* Waits for outstanding work and releases the context. NULL is a no-op. */
FAB_API void fab_context_destroy(fab_context *ctx);
/* The backend the context really runs (never AUTO); FAB_BACKEND_AUTO for NULL. */
FAB_API fab_backend fab_context_backend(const fab_context *ctx);
/* A human-readable name of the device: "NVIDIA H100 80GB HBM3 (sm_90)" or
 * "CPU: 2 threads (avx2)". "" for NULL. */
FAB_API const char *fab_context_device_name(const fab_context *ctx);
/* Blocks until all work issued on the context has finished. */
FAB_API fab_status fab_synchronize(fab_context *ctx);

/* ----------------------------------------------------------------- memory */

/* Allocates `bytes` (> 0) on the context's device (host memory for CPU), aligned to
 * at least 256 bytes. *ptr is NULL on failure. Free with fab_free on the same context. */
FAB_API fab_status fab_alloc(fab_context *ctx, size_t bytes, void **ptr);
/* Frees memory from fab_alloc. NULL is a no-op. Synchronous with respect to the
 * context's stream (waits for work using it). */
FAB_API fab_status fab_free(fab_context *ctx, void *ptr);
/* Copies `bytes` between any two of host and device memory (direction inferred,
 * as cudaMemcpyDefault), ordered on the context's stream. The ranges must not overlap.
 * Host memory that is not page-locked makes the copy synchronous. */
FAB_API fab_status fab_copy(fab_context *ctx, void *dst, const void *src, size_t bytes);

/* ------------------------------------------------------------ activations */

/* GELU as torch.nn.functional.gelu:
 *   FAB_GELU_ERF  (approximate='none'): y = x/2 * (1 + erf(x/sqrt(2)))
 *   FAB_GELU_TANH (approximate='tanh'): y = x/2 * (1 + tanh(sqrt(2/pi)*(x + 0.044715 x^3)))
 * Numerics: computed in f32 whatever the storage dtype, then rounded (RNE).
 * Backends: CPU and CUDA, dtypes f32, f16, bf16. */
typedef enum fab_gelu_approx {
    FAB_GELU_ERF = 0, /* the exact form; torch's default */
    FAB_GELU_TANH = 1
} fab_gelu_approx;

/* y = gelu(x). x and y: same dtype, same shape (any ndim, any sizes), both
 * contiguous. y may be x itself (in place) but must not partially overlap it.
 * Deterministic. */
typedef struct fab_gelu_params {
    fab_tensor x;
    fab_tensor y;
    fab_gelu_approx approximate;
} fab_gelu_params;
FAB_API fab_status fab_gelu_forward(fab_context *ctx, const fab_gelu_params *p);

/* dx = dy * gelu'(x). x (the forward input), dy and dx: same dtype, same shape,
 * contiguous. dx may be dy or x itself (in place), but must not partially overlap either. */
typedef struct fab_gelu_backward_params {
    fab_tensor x;
    fab_tensor dy;
    fab_tensor dx;
    fab_gelu_approx approximate;
} fab_gelu_backward_params;
FAB_API fab_status fab_gelu_backward(fab_context *ctx, const fab_gelu_backward_params *p);

/* ----------------------------------------------------------------- matmul */
/* (section: kernels/matmul) */

/* The training GEMM, as cublasLtMatmul with epilogues and torch.matmul / F.linear:
 *
 *   forward:   C = act(alpha·op(A)·op(B) + beta·C + bias)        (pre_act: the argument of act)
 *   backward:  C = (alpha·op(A)·op(B) + beta·C) ⊙ act'(pre_act)  (activation_backward != 0)
 *   and, optionally, dbias = column sums of the result C, or the sums of op(A) over k.
 *
 * op(X) is X or Xᵀ (trans_a, trans_b). Shapes, after op: op(A) [..., m, k],
 * op(B) [..., k, n], C [..., m, n]. So A is stored [..., m, k] (FAB_OP_N) or
 * [..., k, m] (FAB_OP_T), B [..., k, n] or [..., n, k]. A linear layer
 * y = x·Wᵀ + b (W stored [out, in]) is A = x, B = W, trans_b = FAB_OP_T; its
 * backward is dx = dy·W (A = dy, B = W) and dW = dyᵀ·x (A = dy, trans_a = FAB_OP_T,
 * B = x, dbias_from = FAB_MATMUL_DBIAS_FROM_A for db in the same call).
 *
 * Strides: each matrix's innermost stride must be 1; its row stride (stride[ndim-2])
 * must be >= its row length (any value when it has one row), so a column slice of a
 * wider matrix is accepted. Batch dims (all but the last two) broadcast as NumPy's:
 * A and B may have fewer dims than C, a batch dim of size 1 or of stride 0
 * broadcasts; C's batch shape is the batch shape of the product and C's batch
 * strides must not make two of its elements overlap (C.ndim >= 2).
 *
 * Dtypes (A and B always the same):
 *   A, B f32          -> C f32. Exact f32 FMA by default; precision = FAB_MATMUL_TF32
 *                        lets CUDA use TF32 tensor cores (10-bit mantissa inputs).
 *   A, B f16 or bf16  -> C of the same dtype, or f32. Products and sums in f32, C
 *                        rounded once (RNE) at the end.
 *   bias: [n], stride 1, C's dtype or f32. pre_act: C's shape and dtype, with C's
 *   stride rules. dbias: [m] or [n] (see dbias_from), stride 1, f32 or C's dtype.
 *
 * alpha: 0 means 1. A zeroed struct computes the plain product C = op(A)·op(B); a
 * product scaled by exactly 0 is never needed in training, and a caller who wants
 * only beta·C + bias does not need a GEMM. Use e.g. 1e-30f if you really must.
 * beta: 0 means 0: C is then not read (NaN or garbage in C does not propagate),
 * as in BLAS. beta = 1 accumulates (gradient accumulation).
 *
 * Aliasing: C must not overlap A, B, bias or pre_act; dbias must not overlap anything.
 * A and B may overlap each other (e.g. A·Aᵀ).
 *
 * Backends:
 *   CPU  : a packed, cache-blocked GEMM (AVX-512 or AVX2+FMA micro-kernel picked at
 *          run time, portable C otherwise), OpenMP over the context's threads;
 *          FAB_MATMUL_ALGO_REFERENCE runs a plain triple loop (tests' oracle).
 *          Always deterministic: the k-sum order depends only on the shape.
 *   CUDA : cuBLASLt (GPU builds) or fabriek's own kernel; AUTO picks per shape (see
 *          docs/API.md); an emulated build (no cuBLASLt) always runs fabriek's kernel.
 *          In a deterministic context the choice is fixed per shape and no split-k
 *          with atomics is used, so repeats are bitwise equal.
 * Empty products: m or n = 0 does nothing; k = 0 gives C = act(beta·C + bias).
 * Asynchronous on the context's stream for CUDA. */
typedef enum fab_matmul_op {
    FAB_OP_N = 0, /* as stored */
    FAB_OP_T = 1  /* transposed */
} fab_matmul_op;

typedef enum fab_matmul_activation {
    FAB_MATMUL_ACT_NONE = 0,
    FAB_MATMUL_ACT_RELU = 1,      /* max(x, 0); its derivative at 0 is 0, as PyTorch */
    FAB_MATMUL_ACT_GELU_TANH = 2, /* as fab_gelu_forward with FAB_GELU_TANH (cuBLASLt's GELU) */
    FAB_MATMUL_ACT_GELU_ERF = 3   /* as fab_gelu_forward with FAB_GELU_ERF (not in cuBLASLt) */
} fab_matmul_activation;

typedef enum fab_matmul_algo {
    FAB_MATMUL_ALGO_AUTO = 0,      /* per shape, see above */
    FAB_MATMUL_ALGO_NATIVE = 1,    /* fabriek's own kernel (CPU or CUDA) */
    FAB_MATMUL_ALGO_CUBLASLT = 2,  /* cublasLtMatmul; FAB_ERR_UNSUPPORTED without it */
    FAB_MATMUL_ALGO_REFERENCE = 3  /* plain loops: slow, the tests' oracle */
} fab_matmul_algo;

typedef enum fab_matmul_precision {
    FAB_MATMUL_EXACT = 0, /* f32 inputs multiplied in full f32 */
    FAB_MATMUL_TF32 = 1   /* f32 inputs may be rounded to TF32 (CUDA tensor cores) */
} fab_matmul_precision;

typedef enum fab_matmul_dbias_from {
    FAB_MATMUL_DBIAS_FROM_C = 0, /* dbias[n] = sum over m (and batch) of the result C */
    FAB_MATMUL_DBIAS_FROM_A = 1  /* dbias[m] = sum over k (and batch) of op(A) */
} fab_matmul_dbias_from;

typedef struct fab_matmul_params {
    fab_tensor a, b; /* inputs, see above */
    fab_tensor c;    /* output (and input when beta != 0) */
    fab_matmul_op trans_a, trans_b;
    float alpha;     /* 0 means 1 */
    float beta;      /* 0: C is written, not read */
    fab_tensor bias; /* optional [n]; absent: data NULL, ndim 0 */
    fab_matmul_activation activation;
    /* Forward: optional output, the argument of the activation (for the backward
     * pass); only with an activation. Backward: the required input. */
    fab_tensor pre_act;
    /* Non-zero: the activation's backward (DGELU / DRELU of cuBLASLt): C is
     * multiplied by act'(pre_act); bias must then be absent. */
    int activation_backward;
    /* Optional output, f32 or C's dtype, overwritten (not accumulated). */
    fab_tensor dbias;
    fab_matmul_dbias_from dbias_from;
    fab_matmul_precision precision;
    fab_matmul_algo algo;
} fab_matmul_params;
FAB_API fab_status fab_matmul(fab_context *ctx, const fab_matmul_params *p);

/* dbias[n] = sum of dy over every dim but the last (the bias gradient of a linear
 * layer, torch's dy.sum(0..-2)). dy [..., n]: inner stride 1, the row stride >= n,
 * other strides any; f32, f16 or bf16. dbias [n]: stride 1, f32 or dy's dtype,
 * overwritten; must not overlap dy. Sums in f32 (CPU: in f64 per column, then rounded),
 * deterministic on both backends. */
typedef struct fab_matmul_bias_grad_params {
    fab_tensor dy;
    fab_tensor dbias;
} fab_matmul_bias_grad_params;
FAB_API fab_status fab_matmul_bias_grad(fab_context *ctx, const fab_matmul_bias_grad_params *p);

/* -------------------------------------------------------------- attention */
/* (section: kernels/attention) */

/* ------------------------------------------------------------------- comm */
/* (section: src/comm) */

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FABRIEK_H */
