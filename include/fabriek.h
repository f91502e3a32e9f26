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

/* How this library was built, for reports: version, CUDA backend (gpu with the
 * toolkit version and targets, emulated, or none), MPI, NCCL, compiler. Static
 * string; never fails. */
FAB_API const char *fab_build_info(void);

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

/* Number of elements (product of shape); 0 for a NULL tensor or when a dim is 0,
 * -1 when a shape is negative or the product passes INT64_MAX. */
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
    size_t workspace_bytes; /* scratch the context may keep (cuBLASLt's workspace; the CPU
                             * matmul's packing buffers and the CPU attention's tiles,
                             * when they fit); 0: library default, 32 MiB */
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
/* A human-readable name of the device: "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs,
 * driver 13.0, runtime 13.0)" or "CPU: 2 threads (avx2+fma)" (the CPU's SIMD:
 * avx512f, avx2+fma or sse2 on x86, neon on arm64, else scalar; ", amx-bf16" after
 * it where the bf16 GEMM can use AMX). "" for NULL. */
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
 * Aliasing: C must not share an element with A, B, bias or pre_act; dbias with
 * anything (views interleaved in one buffer with distinct elements are fine).
 * A and B may overlap each other (e.g. A·Aᵀ).
 *
 * Backends:
 *   CPU  : a packed, cache-blocked GEMM (AVX-512 or AVX2+FMA micro-kernel picked at
 *          run time, portable C otherwise), OpenMP over the context's threads;
 *          bf16 inputs on Intel AMX where the CPU and OS have it (the device name
 *          says "amx-bf16"; f32 sums, bf16 subnormal inputs read as zero;
 *          FAB_MATMUL_CPU_AMX=0 turns it off; docs/API.md);
 *          FAB_MATMUL_ALGO_REFERENCE runs a plain triple loop (tests' oracle).
 *          Always deterministic: the k-sum order depends only on the shape.
 *   CUDA : cuBLASLt (GPU builds) or fabriek's own kernel; AUTO times both on the
 *          first call of a shape and keeps the faster (see docs/API.md); an emulated
 *          build (no cuBLASLt) always runs fabriek's kernel. In a deterministic
 *          context the choice is a fixed rule per shape and no split-k with atomics
 *          is used, so repeats are bitwise equal.
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

/* Exact (not approximate) scaled dot-product attention, as
 * torch.nn.functional.scaled_dot_product_attention and FlashAttention >= 2.1
 * (flash_attn_func / flash_attn_varlen_func) define it, for training:
 *
 *   s[i,j] = scale * q[i].k[j]                   (scale 0: 1/sqrt(d))
 *   s[i,j] = softcap * tanh(s[i,j] / softcap)    (only when softcap > 0)
 *   s[i,j] = -inf where the mask forbids key j for query i
 *   out[i] = sum_j softmax_j(s[i,:]) v[j],   lse[i] = log(sum_j exp(s[i,j]))  (natural log)
 *
 * Layout (FlashAttention's): q [batch, seqlen_q, heads_q, d], k and v
 * [batch, seqlen_k, heads_kv, d], out like q. The last dim of q, k, v, out (and
 * dout, dq, dk, dv) must have stride 1; the other strides are free (e.g. slices of
 * one packed qkv buffer). lse is f32 [batch, heads_q, seqlen_q], contiguous.
 *
 * GQA / MQA: heads_q must be a multiple of heads_kv; query head h reads kv head
 * h / (heads_q / heads_kv), as FlashAttention does.
 *
 * Mask. With offset = seqlen_k - seqlen_q (per sequence for varlen), query row i
 * "sits at" key position i + offset: the causal mask and the window are aligned
 * to the bottom-right corner, as FlashAttention >= 2.1 and torch's
 * causal_lower_right. Key j is allowed for query i when
 *   causal:                  j <= i + offset
 *   window, window_right>=0: j <= i + offset + window_right
 *   window, window_left>=0:  j >= i + offset - window_left
 * (all that apply). window_left/right = -1 means unbounded on that side, as
 * flash_attn's window_size=(-1, -1). Every query row must keep at least one
 * allowed key: a call where some row would have none (for example causal with
 * seqlen_q > seqlen_k, or seqlen_k = 0) is rejected with FAB_ERR_INVALID_ARGUMENT,
 * where FlashAttention would silently return zeros for that row.
 *
 * Variable-length batches (flash_attn_varlen_func): set cu_seqlens_q and
 * cu_seqlens_k, both i32 [batch + 1], contiguous, in the context's memory:
 * cumulative offsets that start at 0, never decrease and end at the number of
 * packed rows. q, out (and dout, dq) are then [total_q, heads_q, d], k, v (dk, dv)
 * [total_k, heads_kv, d], and lse is f32 [heads_q, total_q] (as flash_attn's varlen
 * lse). Sequence b is rows cu_seqlens[b] .. cu_seqlens[b+1]-1. max_seqlen_q/k:
 * 0 means "work it out"; otherwise each must be >= every sequence's length.
 * The offsets are validated on the host: free on the CPU; on a CUDA context it
 * costs one small device-to-host copy that waits for the stream, which
 * trust_cu_seqlens = 1 skips (then bad offsets are undefined behaviour, and
 * max_seqlen_q/k must be given).
 *
 * Dtypes: q, k, v, out (dout, dq, dk, dv) all bf16 or all f16; f32 too on the CPU.
 * Scores, softmax and accumulation are f32 whatever the storage type; outputs are
 * rounded to nearest even once. (The CUDA kernels, like FlashAttention, round the
 * probabilities P and dS to bf16/f16 for the products that consume them.)
 * Head dim d = q.shape[-1] = k.shape[-1] = v.shape[-1]: the CPU takes 1..256,
 * CUDA 32, 64, 96, 128 and 256; others give FAB_ERR_UNSUPPORTED.
 *
 * Backends. CPU: tiled online-softmax forward and a recompute backward (OpenMP
 * over batch x heads x tiles; the backward in one pass, FlashAttention-2's 5
 * products, when batch x heads_kv is enough tasks for the threads and the
 * per-thread scratch, 12 bytes per head_dim per query row of a head group (24 on
 * AMX), stays under 32 MiB; bf16 with head_dim padded to a multiple of 32: the tile
 * products on Intel AMX where the CPU has it, FAB_ATTN_CPU_AMX=0 turns it off,
 * docs/API.md).
 * CUDA (sm_80 and later): FlashAttention-2-style
 * mma.sync/ldmatrix/cp.async kernels. On sm_90, bf16/f16, the forward at head dims
 * 64, 96, 128 and 256 runs a Hopper wgmma/TMA kernel instead, and the backward at
 * 64, 96 and 128 a Hopper dK/dV kernel (and, in a deterministic context, a Hopper
 * dq kernel), where the strides suit TMA (docs/API.md; FAB_ATTN_SM90=0 turns them
 * off). All of them need every data pointer 16-byte aligned and every stride but
 * the last a multiple of 8 elements (else FAB_ERR_UNSUPPORTED), and the backward
 * takes a stream-ordered scratch (cudaMallocAsync) of 4 bytes per query row and
 * head, plus 4*d bytes in a non-deterministic context. Neither backend forms the seqlen_q x seqlen_k
 * matrix. Determinism: the forward and the CPU backward are bitwise identical run
 * to run (the CPU also for any thread count). The CUDA backward adds dq with f32
 * atomics (FlashAttention-2's 5 products) unless the context is deterministic,
 * where a separate dq kernel sums each element in a fixed order (7 products).
 *
 * Aliasing: no output may share an element with any input or another output, nor
 * hold one element twice. Views interleaved in one buffer with distinct elements
 * (llm.c's packed qkv and dqkv) are accepted. */
typedef struct fab_attention_params {
    fab_tensor q;   /* [b, sq, hq, d], or [total_q, hq, d] with cu_seqlens */
    fab_tensor k;   /* [b, sk, hkv, d], or [total_k, hkv, d] */
    fab_tensor v;   /* like k */
    fab_tensor out; /* written; like q */
    fab_tensor lse; /* written; f32 [b, hq, sq] or [hq, total_q]; absent (zeroed): not stored */
    float scale;    /* 0: 1/sqrt(d); otherwise finite, non-zero */
    float softcap;  /* 0: none; > 0: s = softcap*tanh(s/softcap) (Gemma-2 / Grok style) */
    int causal;     /* 0 or 1: bottom-right aligned causal mask */
    int window;     /* 0 or 1: apply the sliding window below */
    int64_t window_left;  /* with window: keys allowed left of the diagonal; -1 unbounded */
    int64_t window_right; /* with window: keys allowed right of the diagonal; -1 unbounded */
    fab_tensor cu_seqlens_q; /* i32 [b + 1]; both absent: dense batch */
    fab_tensor cu_seqlens_k; /* i32 [b + 1] */
    int64_t max_seqlen_q;    /* varlen only (0 for dense): 0 or >= the longest query sequence */
    int64_t max_seqlen_k;    /* varlen only (0 for dense): 0 or >= the longest key sequence */
    int trust_cu_seqlens;    /* 1: skip the host-side check of the offsets (see above) */
} fab_attention_params;
FAB_API fab_status fab_attention_forward(fab_context *ctx, const fab_attention_params *p);

/* Gradients of the forward above: given q, k, v, the forward's out and lse, and
 * dout (the gradient of the loss with respect to out), writes dq (like q) and
 * dk, dv (like k). For GQA/MQA dk and dv hold the sum over the heads_q/heads_kv
 * query heads that share each kv head. Every mask, scale, softcap and varlen field
 * means what it means in fab_attention_params and must be the same as in the
 * forward call that produced out and lse; lse is required here.
 * dout has q's shape and dtype (strides free but the last, as q). The gradients
 * are computed from D = rowsum(dout * out) and a recomputation of the
 * probabilities from lse, in f32; each is rounded once.
 * Determinism: the CPU backward is always bitwise repeatable. On CUDA, a
 * non-deterministic context (the default) adds dq with f32 atomics as
 * FlashAttention-2 does, so dq's last bits may vary run to run; a deterministic
 * context reduces dk/dv per key tile and dq per query tile in a fixed order, with
 * no atomics, recomputing P and dS once more. */
typedef struct fab_attention_backward_params {
    fab_tensor q, k, v;
    fab_tensor out;  /* the forward's output */
    fab_tensor dout; /* like q */
    fab_tensor lse;  /* the forward's lse; required */
    fab_tensor dq;   /* written; like q */
    fab_tensor dk;   /* written; like k */
    fab_tensor dv;   /* written; like k */
    float scale;
    float softcap;
    int causal;
    int window;
    int64_t window_left;
    int64_t window_right;
    fab_tensor cu_seqlens_q;
    fab_tensor cu_seqlens_k;
    int64_t max_seqlen_q;
    int64_t max_seqlen_k;
    int trust_cu_seqlens;
} fab_attention_backward_params;
FAB_API fab_status fab_attention_backward(fab_context *ctx, const fab_attention_backward_params *p);

/* ------------------------------------------------------------------- comm */
/* (section: src/comm) */

/* Communicators: a group of ranks (one process per GPU, or per CPU socket) that
 * run collectives together. A CUDA context's communicator runs on NCCL, a CPU
 * context's on MPI (include/fabriek_mpi.h); a single-rank communicator on a CPU
 * context, or in a build without NCCL, needs neither (a CUDA context in a build
 * with NCCL makes a one-rank NCCL communicator). A communicator belongs to the
 * context it was created with: its collectives run on that context's stream, and
 * like the context it is used by one thread at a time.
 *
 * Faults: every wait inside fabriek has a deadline (cfg.timeout_seconds, default
 * 600 s). A collective that has not completed in time returns FAB_ERR_TIMEOUT and
 * aborts the communicator: every later call on it returns FAB_ERR_TIMEOUT (or the
 * status of the first fault) with a message saying so; destroy it and create a new
 * one. FAB_ERR_PEER when the transport reports that another rank failed.
 * MPI cannot cancel a posted collective: after a timeout on an MPI communicator the
 * tensors of the collective that timed out stay with MPI (it may still write them
 * if the late rank turns up; do not free or reuse them), and so do the library's
 * own buffers of that collective, which are leaked on purpose rather than freed
 * under MPI.
 *
 * Debug mode (cfg.debug, or the environment variable FAB_COMM_DEBUG=1): each
 * collective is logged to stderr with its sequence number, op, dtype and size, and
 * the ranks first compare (sequence number, op, dtype, count, root) with a small
 * all-gather, so a mismatch (rank 0 in an all-reduce while rank 1 is in an
 * all-gather) becomes FAB_ERR_INVALID_ARGUMENT on every rank instead of a hang;
 * the mismatched collective is not run and the communicator stays usable. */
typedef struct fab_comm fab_comm;

/* An opaque token from which all ranks join one communicator (ncclUniqueId for NCCL).
 * Rank 0 makes it; the caller sends it to the other ranks (MPI_Bcast, a file, ...). */
typedef struct fab_comm_unique_id {
    unsigned char bytes[128];
} fab_comm_unique_id;

typedef struct fab_comm_config {
    double timeout_seconds; /* deadline of every collective and of creation; 0: 600 s */
    int debug;              /* non-zero: debug mode (as FAB_COMM_DEBUG=1) */
} fab_comm_config;

/* Makes a unique id for a communicator of `ctx`'s backend (ncclGetUniqueId for a CUDA
 * context). Call on one rank only and share it. */
FAB_API fab_status fab_comm_get_unique_id(fab_context *ctx, fab_comm_unique_id *id);

/* Joins rank `rank` of `nranks` (0 <= rank < nranks) to the communicator named by
 * `id`; every rank calls it with the same id and nranks. cfg may be NULL.
 *  - CUDA context in a build with NCCL: NCCL (ncclCommInitRankConfig, non-blocking,
 *    bounded by the timeout), for one rank too (id NULL: it makes its own).
 *  - nranks == 1 otherwise: a single-rank communicator (collectives are copies);
 *    id may be NULL.
 *  - CPU context, nranks > 1: MPI; when the library has MPI and MPI is initialized,
 *    (nranks, rank) must be MPI_COMM_WORLD's size and rank and the communicator spans
 *    it (fab_comm_create_mpi takes any MPI_Comm); else FAB_ERR_UNSUPPORTED.
 * On failure *out is NULL. */
FAB_API fab_status fab_comm_create(fab_context *ctx, int nranks, int rank, const fab_comm_unique_id *id,
                                   const fab_comm_config *cfg, fab_comm **out);
/* Splits `comm` as MPI_Comm_split / ncclCommSplit: ranks giving the same color >= 0
 * form one new communicator, ordered by key then by rank in `comm`. Every rank of
 * `comm` calls it; color FAB_COMM_NO_COLOR gives *out = NULL. cfg NULL: comm's. */
#define FAB_COMM_NO_COLOR (-1)
FAB_API fab_status fab_comm_split(fab_comm *comm, int color, int key, const fab_comm_config *cfg, fab_comm **out);
/* Waits (bounded by the timeout) for the communicator's outstanding work and frees
 * it. An aborted communicator is freed without waiting. NULL is a no-op. */
FAB_API fab_status fab_comm_destroy(fab_comm *comm);
/* Aborts outstanding collectives (ncclCommAbort for NCCL; MPI cannot cancel a
 * collective, so an MPI communicator is only marked unusable) and marks the
 * communicator unusable. Safe to call on a stuck or failed communicator. */
FAB_API fab_status fab_comm_abort(fab_comm *comm);
FAB_API fab_status fab_comm_rank(const fab_comm *comm, int *rank);
FAB_API fab_status fab_comm_size(const fab_comm *comm, int *nranks);
/* FAB_OK while usable; else the status of the fault that aborted it (TIMEOUT, PEER,
 * BACKEND), with a message. Polls NCCL's asynchronous error. */
FAB_API fab_status fab_comm_status(fab_comm *comm);
/* Waits, bounded by the timeout, until every collective issued on `comm` so far has
 * completed (on CUDA: on the device). The call to make before reading results when a
 * peer may have failed, because fab_synchronize(ctx) has no deadline. */
FAB_API fab_status fab_comm_synchronize(fab_comm *comm);

/* The transport under `comm`: *transport = "self", "mpi" or "nccl"; *handle = NULL,
 * a pointer to its MPI_Comm, or its ncclComm_t (NULL once aborted: NCCL freed it).
 * For interop and baselines: work issued directly on the handle bypasses fabriek's
 * deadlines. Either may be NULL. NCCL forbids concurrent calls on a communicator:
 * once the ncclComm_t has been asked for, fabriek's watchdog thread stops polling
 * its asynchronous errors (fabriek's own calls still do, on the calling thread);
 * call NCCL on it from the thread that calls fabriek on `comm`. A timeout aborts
 * the communicator from fabriek's watchdog thread at any time, and that frees the
 * handle: after an error from fabriek on `comm` (fab_comm_status), stop using it.
 * The ncclComm_t is non-blocking (ncclConfig_t.blocking = 0): any NCCL call on it
 * may return ncclInProgress, and then, as NCCL requires, poll
 * ncclCommGetAsyncError until it leaves ncclInProgress before the next call,
 * fabriek's included; and close every ncclGroupStart before calling fabriek. */
FAB_API fab_status fab_comm_native(const fab_comm *comm, const char **transport, void **handle);

typedef enum fab_reduce_op {
    FAB_REDUCE_SUM = 0,
    FAB_REDUCE_AVG = 1, /* sum / nranks; float dtypes only */
    FAB_REDUCE_MAX = 2,
    FAB_REDUCE_MIN = 3
} fab_reduce_op;

/* Collectives. Tensors are contiguous (others are rejected with a message), of
 * dtype f32, f16, bf16, f64, i32 or i64, in the context's memory; `send` and `recv`
 * have the same dtype. Asynchronous on the context's stream for CUDA (NCCL),
 * synchronous for CPU (MPI). Shapes: only element counts matter.
 * f16/bf16 on MPI: reduced pairwise by a user MPI_Op that widens to f32, combines and
 * rounds back (RNE), as NCCL reduces in the storage type; AVG divides in f32.
 * AVG on NCCL: ncclAvg (premultiplies by 1/nranks in the dtype), except bf16 with a
 * rank count that is not a power of two: summed, then divided in f32, since 1/nranks
 * in bf16 would scale every element by up to 0.4% too much or too little.
 * In place: allreduce and broadcast with recv == send; reduce_scatter with recv the
 * rank's slice of send (send.data + rank*count); allgather with send the rank's
 * slice of recv (recv.data + rank*count). Other overlaps are rejected. In-place
 * reduce_scatter writes only the rank's slice: the other slices of send keep their
 * values (NCCL and MPI alike). */

/* recv = op over ranks of send; same count. */
FAB_API fab_status fab_allreduce(fab_comm *comm, const fab_tensor *send, const fab_tensor *recv, fab_reduce_op op);
/* send holds nranks*count elements; rank r's recv (count) = op over ranks of send's slice r. */
FAB_API fab_status fab_reduce_scatter(fab_comm *comm, const fab_tensor *send, const fab_tensor *recv,
                                      fab_reduce_op op);
/* recv (nranks*count) = the ranks' send (count each), in rank order. */
FAB_API fab_status fab_allgather(fab_comm *comm, const fab_tensor *send, const fab_tensor *recv);
/* recv = root's send on every rank. send is read on the root only (may be NULL elsewhere). */
FAB_API fab_status fab_broadcast(fab_comm *comm, const fab_tensor *send, const fab_tensor *recv, int root);
/* Returns when every rank has reached it (CUDA: after the context stream's earlier work). */
FAB_API fab_status fab_barrier(fab_comm *comm);
/* Collectives between group_start and group_end are issued together at group_end
 * (ncclGroupStart/End; MPI: all posted, then waited for together). Their tensors must
 * stay valid until group_end returns (CUDA: until the stream has run them). */
FAB_API fab_status fab_comm_group_start(fab_comm *comm);
FAB_API fab_status fab_comm_group_end(fab_comm *comm);

/* Gradient exchange, as PyTorch DistributedDataParallel does it:
 *   fab_grad_sync_create(comm, &cfg, &gs);
 *   for each gradient, in the order backward produces them: fab_grad_sync_register(gs, &g, &idx);
 *   each step:  fab_grad_sync_begin(gs, communicate);      0 for an accumulation micro-step
 *               ... backward: after the kernel writing gradient idx is issued,
 *               fab_grad_sync_ready(gs, idx);
 *               fab_grad_sync_wait(gs);                      before the optimizer step
 * Gradients are packed in registration order into buckets of one dtype (the first up
 * to first_bucket_bytes, then up to bucket_cap_bytes; a larger gradient gets a bucket
 * of its own). When the last gradient of a bucket is ready, the bucket's all-reduce
 * starts (CUDA: on the communicator's own stream, after the context stream's work so
 * far, overlapping the rest of backward; MPI: a non-blocking all-reduce, moved on
 * by a progress thread when MPI was initialised with MPI_THREAD_MULTIPLE, else only
 * inside fab_grad_sync_* calls). wait() finishes every bucket, unpacks them into the
 * gradients (divided by nranks unless cfg.sum) and orders the context stream after
 * them: MPI waits on the host, bounded by the timeout; CUDA only orders the streams
 * (no host wait), and a bucket stuck past the timeout is caught by the
 * communicator's watchdog and reported by the next fab_grad_sync_* call or call on
 * `comm` (fab_comm_synchronize(comm) after wait() is the place to look for it). Gradients are f32, f16 or bf16, contiguous, in the
 * context's memory. From ready() until wait() returns a gradient belongs to the
 * exchange: neither write nor read it (it may hold a partial sum). When wait()
 * fails, the gradients' contents are unspecified (buckets already reduced may have
 * been written back, others not).
 * Packing and unpacking copy every gradient twice. A bucket whose gradients lie
 * back to back in memory in registration order (and travel in their own dtype)
 * skips both and is all-reduced where it lies (so is a gradient alone in its
 * bucket): allocate the gradients as slices of one buffer, in the order they are
 * registered (backward order), as PyTorch's gradient_as_bucket_view does. Results
 * after a successful wait() are the same either way, and ranks may differ in
 * layout. Such gradients, like a collective's tensors, may still be written by MPI
 * after a timeout.
 * fab_grad_sync_create is collective over `comm` (every rank calls it, outside a
 * group): the buckets' all-reduces run on a duplicate of `comm` made there
 * (MPI_Comm_idup; ncclCommSplit, one more NCCL communicator's memory), so
 * collectives issued on `comm` itself during backward never pair with a bucket. On
 * MPI they may even come between ready() calls at different points on different
 * ranks. On NCCL they must not: issue them at the same point of the bucket sequence
 * on every rank (NCCL connects a communicator's peers inside its first collectives
 * and does not promise that two communicators' kernels issued in different orders
 * on different ranks both make progress).
 * A fault on `comm` (timeout, fab_comm_abort) reaches the gradient exchange at its
 * next call, and a fault of the gradient exchange (a bucket's timeout) reaches
 * `comm` at its next call; fab_grad_sync_destroy frees the duplicate (destroy the gradient
 * exchange before or after `comm`, but use it only while `comm` exists). */
typedef struct fab_grad_sync fab_grad_sync;
typedef struct fab_grad_sync_config {
    size_t bucket_cap_bytes;   /* 0: 25 MiB */
    size_t first_bucket_bytes; /* 0: 1 MiB */
    int sum;                   /* non-zero: sum the gradients; default: average */
    int reduce_bf16;           /* non-zero: f32 gradients travel and are summed as bf16 (averaged in f32) */
} fab_grad_sync_config;
FAB_API fab_status fab_grad_sync_create(fab_comm *comm, const fab_grad_sync_config *cfg, fab_grad_sync **out);
/* Registers one gradient; *index (may be NULL) receives its index (0, 1, ...). Not
 * after the first begin(). */
FAB_API fab_status fab_grad_sync_register(fab_grad_sync *gs, const fab_tensor *grad, int *index);
/* Starts a backward pass. communicate == 0: an accumulation step, ready() and wait()
 * do no communication. */
FAB_API fab_status fab_grad_sync_begin(fab_grad_sync *gs, int communicate);
FAB_API fab_status fab_grad_sync_ready(fab_grad_sync *gs, int index);
/* Every registered gradient must have been marked ready. */
FAB_API fab_status fab_grad_sync_wait(fab_grad_sync *gs);
/* Number of buckets and the bucket of gradient `index` (for tests and tuning). */
FAB_API fab_status fab_grad_sync_bucket_of(const fab_grad_sync *gs, int index, int *bucket, int *nbuckets);
FAB_API void fab_grad_sync_destroy(fab_grad_sync *gs);

/* ZeRO stage 1 (optimizer state sharded): flat gradients of nranks*shard elements
 * (pad the tail) are reduce-scattered so rank r holds the averaged (or summed) slice r;
 * after the optimizer updates its parameter slice, the slices are all-gathered into
 * the full flat parameters. shard may be the rank's slice of the flat tensor (in
 * place). fab_zero_shard_size gives ceil(numel / nranks). */
FAB_API int64_t fab_zero_shard_size(int64_t numel, int nranks);
FAB_API fab_status fab_zero_reduce_scatter(fab_comm *comm, const fab_tensor *flat_grads,
                                           const fab_tensor *grad_shard, int sum);
FAB_API fab_status fab_zero_allgather(fab_comm *comm, const fab_tensor *param_shard,
                                      const fab_tensor *flat_params);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FABRIEK_H */
