/*
 * matmul_cuda.cu: fab_matmul on the GPU (real or emulated): the algorithm choice,
 * fabriek's portable SIMT GEMM, and the bias-gradient reductions.
 *
 * Dispatch (documented in docs/API.md):
 *   ALGO_CUBLASLT  -> matmul_cublas.c (the entry has checked it supports the call)
 *   ALGO_NATIVE    -> the tensor-core kernel (matmul_sm80.cu) for bf16/f16, and
 *                     for f32 with precision TF32, with 16-byte-aligned bases and
 *                     strides (8 or 4 elements; fab__matmul_sm80_supports), else
 *                     simt_gemm below (exact f32 FMA for f32, TF32 or not)
 *   ALGO_REFERENCE -> ref_gemm below (one thread per element, plain k loop)
 *   ALGO_AUTO      -> cuBLASLt whenever it supports the call (a real GPU build),
 *                     else as NATIVE. Until the tensor-core kernel has been
 *                     measured on a GPU against cuBLASLt, no shape is known where
 *                     it wins, so the heuristic is "cuBLASLt if it can". The
 *                     choice depends only on the call's arguments and the build,
 *                     so it is fixed per shape, also in deterministic mode.
 */
#include <cuda_runtime.h>
#include <string.h>

#define FAB__HD __host__ __device__
#include "../activation/gelu_math.h"
#include "../common/cuda_dtype.cuh"
#include "matmul.h"
#include "matmul_cuda_common.cuh"

/* The epilogue of one element: acc = op(A)·op(B) in f32; C and pre_act are TC
 * (f32 exactly when TC is float), bias f32 or TC. */
template <typename TC>
static __device__ __forceinline__ void finish(const mm_geom &g, float acc, int64_t i, int64_t j, TC *c,
                                              const void *bias, TC *pre)
{
    mm_epilogue<TC>(g, acc, i, j, c, bias, pre, sizeof(TC) == sizeof(float));
}

/* simt_gemm: fabriek's portable CUDA GEMM (every dtype, transpose, stride and
 * epilogue; the fallback where the tensor-core kernel does not apply).
 * Idea: a 64x64 tile of C per block of 256 threads, each thread a 4x4 sub-tile
 * (rows ty + 16r, columns tx + 16c, so neighbouring threads touch neighbouring
 * columns); per 16-deep slice of k the block stages op(A) [64x16] and op(B)
 * [16x64] in shared memory, converted to f32, with zeros past every edge
 * (predicated loads), then each thread does 16 rank-1 updates from registers.
 * Numerics: f32 FMA in k order; the epilogue in f32, one rounding to C's dtype. */
#define SIMT_BM 64
#define SIMT_BN 64
#define SIMT_BK 16

template <typename TI, typename TC>
__global__ void __launch_bounds__(256)
simt_gemm(const TI *A, const TI *B, TC *C, const void *bias, TC *pre, mm_geom g, mm_batch bt)
{
    __shared__ float As[SIMT_BK][SIMT_BM + 1];
    __shared__ float Bs[SIMT_BK][SIMT_BN + 1];
    int64_t oa, ob, oc, op;
    mm_batch_offsets(bt, blockIdx.z, &oa, &ob, &oc, &op);
    A += oa;
    B += ob;
    C += oc;
    if (pre)
        pre += op;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int64_t i0 = (int64_t)blockIdx.y * SIMT_BM, j0 = (int64_t)blockIdx.x * SIMT_BN;
    float acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++)
            acc[r][c] = 0.0f;
    for (int64_t p0 = 0; p0 < g.k; p0 += SIMT_BK) {
        /* 1024 values of each tile, 4 per thread */
        for (int e = threadIdx.x; e < SIMT_BM * SIMT_BK; e += 256) {
            int r, p;
            if (g.ta) { /* A stored [k, m]: consecutive threads read consecutive m */
                r = e % SIMT_BM;
                p = e / SIMT_BM;
            } else {
                p = e % SIMT_BK;
                r = e / SIMT_BK;
            }
            int64_t gi = i0 + r, gp = p0 + p;
            float v = 0.0f;
            if (gi < g.m && gp < g.k)
                v = fab__to_f32(g.ta ? A[gp * g.lda + gi] : A[gi * g.lda + gp]);
            As[p][r] = v;
        }
        for (int e = threadIdx.x; e < SIMT_BN * SIMT_BK; e += 256) {
            int cidx, p;
            if (g.tb) { /* B stored [n, k] */
                p = e % SIMT_BK;
                cidx = e / SIMT_BK;
            } else {
                cidx = e % SIMT_BN;
                p = e / SIMT_BN;
            }
            int64_t gj = j0 + cidx, gp = p0 + p;
            float v = 0.0f;
            if (gj < g.n && gp < g.k)
                v = fab__to_f32(g.tb ? B[gj * g.ldb + gp] : B[gp * g.ldb + gj]);
            Bs[p][cidx] = v;
        }
        __syncthreads();
#pragma unroll
        for (int p = 0; p < SIMT_BK; p++) {
            float av[4], bv[4];
#pragma unroll
            for (int r = 0; r < 4; r++)
                av[r] = As[p][ty + 16 * r];
#pragma unroll
            for (int c = 0; c < 4; c++)
                bv[c] = Bs[p][tx + 16 * c];
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int c = 0; c < 4; c++)
                    acc[r][c] = fmaf(av[r], bv[c], acc[r][c]);
        }
        __syncthreads();
    }
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) {
            int64_t i = i0 + ty + 16 * r, j = j0 + tx + 16 * c;
            if (i < g.m && j < g.n)
                finish<TC>(g, acc[r][c], i, j, C, bias, pre);
        }
}

/* ref_gemm: the plain loop, one thread per element of C, f32 FMA in k order. */
template <typename TI, typename TC>
__global__ void __launch_bounds__(256)
ref_gemm(const TI *A, const TI *B, TC *C, const void *bias, TC *pre, mm_geom g, mm_batch bt)
{
    int64_t oa, ob, oc, op;
    mm_batch_offsets(bt, blockIdx.z, &oa, &ob, &oc, &op);
    int64_t j = (int64_t)blockIdx.x * 16 + threadIdx.x % 16, i = (int64_t)blockIdx.y * 16 + threadIdx.x / 16;
    if (i >= g.m || j >= g.n)
        return;
    float acc = 0.0f;
    for (int64_t p = 0; p < g.k; p++)
        acc = fmaf(fab__to_f32(A[oa + (g.ta ? p * g.lda + i : i * g.lda + p)]),
                   fab__to_f32(B[ob + (g.tb ? j * g.ldb + p : p * g.ldb + j)]), acc);
    finish<TC>(g, acc, i, j, C + oc, bias, pre ? pre + op : NULL);
}

/* ---------------------------------------------------------- bias gradient */

/* Row geometry of a bias-gradient input: row r starts at the sum of its index
 * digits times the strides. */
struct bg_rows {
    int nr;
    int64_t shape[FAB_MAX_DIMS], stride[FAB_MAX_DIMS];
    int64_t rows;
};

static __device__ __forceinline__ int64_t row_offset(const bg_rows &g, int64_t r)
{
    int64_t off = 0;
    for (int j = g.nr - 1; j >= 0; j--) {
        off += (r % g.shape[j]) * g.stride[j];
        r /= g.shape[j];
    }
    return off;
}

/* colsum: dbias[j] = sum over rows of x[row, j]. Idea: a block of 32x8 threads
 * owns 32 columns; thread row ty sums rows ty, ty+8, ... in order (coalesced
 * across tx), then the 8 partial sums are added in a fixed order in shared
 * memory: deterministic, no atomics. f32 sums. */
template <typename T, typename TO>
__global__ void __launch_bounds__(256) colsum(const T *x, int64_t n, bg_rows g, TO *out)
{
    __shared__ float part[8][33];
    int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
    int64_t j = (int64_t)blockIdx.x * 32 + tx;
    float s = 0.0f;
    if (j < n)
        for (int64_t r = ty; r < g.rows; r += 8)
            s += fab__to_f32(x[row_offset(g, r) + j]);
    part[ty][tx] = s;
    __syncthreads();
    if (ty == 0 && j < n) {
        float t = 0.0f;
        for (int q = 0; q < 8; q++)
            t += part[q][tx];
        out[j] = fab__from_f32<TO>(t);
    }
}

/* rowsum: out[i] = sum over batch and k of x[batch, i, p] (A stored [m, k]).
 * Idea: a block of 256 threads per row i, strided partial sums, then a fixed
 * shared-memory tree: deterministic. */
template <typename T, typename TO>
__global__ void __launch_bounds__(256) rowsum(const T *x, int64_t k, int64_t ld, bg_rows batches, TO *out)
{
    __shared__ float part[256];
    int64_t i = blockIdx.x;
    float s = 0.0f;
    for (int64_t b = 0; b < batches.rows; b++) {
        const T *row = x + row_offset(batches, b) + i * ld;
        for (int64_t p = threadIdx.x; p < k; p += 256)
            s += fab__to_f32(row[p]);
    }
    part[threadIdx.x] = s;
    __syncthreads();
    for (int w = 128; w > 0; w /= 2) {
        if ((int)threadIdx.x < w)
            part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        out[i] = fab__from_f32<TO>(part[0]);
}

/* ------------------------------------------------------------------ launch */

static fab_status launched(const char *what, cudaError_t err)
{
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "fab_matmul: %s launch failed: %s", what, cudaGetErrorString(err));
    return fab__cuda_check_launch("fab_matmul");
}

template <typename TI, typename TC>
static fab_status gemm_typed(fab_context *ctx, const fab__mm_args *a, bool reference)
{
    mm_geom g;
    mm_batch bt;
    mm_fill(a, &g, &bt);
    if (a->batch > 65535)
        return fab__fail(FAB_ERR_UNSUPPORTED, "fab_matmul: a batch of %lld matrices is more than the CUDA kernels' 65535",
                         (long long)a->batch);
    int tile = reference ? 16 : SIMT_BM;
    int64_t gx = (a->n + tile - 1) / tile, gy = (a->m + tile - 1) / tile;
    if (gy > 65535)
        return fab__fail(FAB_ERR_UNSUPPORTED, "fab_matmul: m=%lld is too large for fabriek's CUDA kernel", (long long)a->m);
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)gx, (unsigned)gy, (unsigned)a->batch);
    cfg.blockDim = dim3(256);
    cfg.stream = (cudaStream_t)ctx->stream;
    const TI *A = (const TI *)a->a;
    const TI *B = (const TI *)a->b;
    TC *C = (TC *)a->c;
    TC *P = (TC *)a->pre_act;
    cudaError_t err = reference ? cudaLaunchKernelEx(&cfg, ref_gemm<TI, TC>, A, B, C, a->bias, P, g, bt)
                                : cudaLaunchKernelEx(&cfg, simt_gemm<TI, TC>, A, B, C, a->bias, P, g, bt);
    return launched(reference ? "ref_gemm" : "simt_gemm", err);
}

template <typename T, typename TO>
static fab_status colsum_typed(fab_context *ctx, const void *x, int64_t n, const bg_rows &g, void *out)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)((n + 31) / 32));
    cfg.blockDim = dim3(256);
    cfg.stream = (cudaStream_t)ctx->stream;
    return launched("colsum", cudaLaunchKernelEx(&cfg, colsum<T, TO>, (const T *)x, n, g, (TO *)out));
}

template <typename T, typename TO>
static fab_status rowsum_typed(fab_context *ctx, const void *x, int64_t m, int64_t k, int64_t ld, const bg_rows &g,
                               void *out)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)m);
    cfg.blockDim = dim3(256);
    cfg.stream = (cudaStream_t)ctx->stream;
    return launched("rowsum", cudaLaunchKernelEx(&cfg, rowsum<T, TO>, (const T *)x, k, ld, g, (TO *)out));
}

static fab_status colsum_any(fab_context *ctx, const void *x, fab_dtype dt, int64_t n, const bg_rows &g, void *out,
                             fab_dtype odt)
{
    bool of = odt == FAB_DTYPE_F32;
    switch (dt) {
    case FAB_DTYPE_F32: return colsum_typed<float, float>(ctx, x, n, g, out);
    case FAB_DTYPE_F16: return of ? colsum_typed<__half, float>(ctx, x, n, g, out) : colsum_typed<__half, __half>(ctx, x, n, g, out);
    case FAB_DTYPE_BF16:
        return of ? colsum_typed<__nv_bfloat16, float>(ctx, x, n, g, out)
                  : colsum_typed<__nv_bfloat16, __nv_bfloat16>(ctx, x, n, g, out);
    default: return fab__fail(FAB_ERR_INTERNAL, "fab_matmul: dtype %s reached colsum", fab_dtype_name(dt));
    }
}

static fab_status rowsum_any(fab_context *ctx, const void *x, fab_dtype dt, int64_t m, int64_t k, int64_t ld,
                             const bg_rows &g, void *out, fab_dtype odt)
{
    bool of = odt == FAB_DTYPE_F32;
    switch (dt) {
    case FAB_DTYPE_F32: return rowsum_typed<float, float>(ctx, x, m, k, ld, g, out);
    case FAB_DTYPE_F16:
        return of ? rowsum_typed<__half, float>(ctx, x, m, k, ld, g, out) : rowsum_typed<__half, __half>(ctx, x, m, k, ld, g, out);
    case FAB_DTYPE_BF16:
        return of ? rowsum_typed<__nv_bfloat16, float>(ctx, x, m, k, ld, g, out)
                  : rowsum_typed<__nv_bfloat16, __nv_bfloat16>(ctx, x, m, k, ld, g, out);
    default: return fab__fail(FAB_ERR_INTERNAL, "fab_matmul: dtype %s reached rowsum", fab_dtype_name(dt));
    }
}

static fab_status gemm_any(fab_context *ctx, const fab__mm_args *a, bool reference)
{
    bool cf = a->c_dtype == FAB_DTYPE_F32;
    switch (a->ab_dtype) {
    case FAB_DTYPE_F32: return gemm_typed<float, float>(ctx, a, reference);
    case FAB_DTYPE_F16: return cf ? gemm_typed<__half, float>(ctx, a, reference) : gemm_typed<__half, __half>(ctx, a, reference);
    case FAB_DTYPE_BF16:
        return cf ? gemm_typed<__nv_bfloat16, float>(ctx, a, reference)
                  : gemm_typed<__nv_bfloat16, __nv_bfloat16>(ctx, a, reference);
    default: return fab__fail(FAB_ERR_INTERNAL, "fab_matmul: dtype %s reached the CUDA GEMM", fab_dtype_name(a->ab_dtype));
    }
}

/* dbias after a GEMM: from C (column sums of the result) or from A. */
extern "C" fab_status fab__matmul_dbias_cuda(fab_context *ctx, const fab__mm_args *a)
{
    bg_rows g;
    memset(&g, 0, sizeof g);
    if (a->dbias_from == FAB_MATMUL_DBIAS_FROM_C) {
        g.nr = a->nb + 1;
        for (int j = 0; j < a->nb; j++) {
            g.shape[j] = a->batch_shape[j];
            g.stride[j] = a->c_bstride[j];
        }
        g.shape[a->nb] = a->m;
        g.stride[a->nb] = a->ldc;
        g.rows = a->batch * a->m;
        return colsum_any(ctx, a->c, a->c_dtype, a->n, g, a->dbias, a->dbias_dtype);
    }
    if (a->trans_a) { /* A stored [k, m]: column sums over batch and k */
        g.nr = a->nb + 1;
        for (int j = 0; j < a->nb; j++) {
            g.shape[j] = a->batch_shape[j];
            g.stride[j] = a->a_bstride[j];
        }
        g.shape[a->nb] = a->k;
        g.stride[a->nb] = a->lda;
        g.rows = a->batch * a->k;
        return colsum_any(ctx, a->a, a->ab_dtype, a->m, g, a->dbias, a->dbias_dtype);
    }
    g.nr = a->nb;
    for (int j = 0; j < a->nb; j++) {
        g.shape[j] = a->batch_shape[j];
        g.stride[j] = a->a_bstride[j];
    }
    g.rows = a->batch;
    if (a->m == 0)
        return FAB_OK;
    return rowsum_any(ctx, a->a, a->ab_dtype, a->m, a->k, a->lda, g, a->dbias, a->dbias_dtype);
}

extern "C" fab_status fab__matmul_cuda(fab_context *ctx, const fab__mm_args *a)
{
    cudaError_t err = cudaSetDevice(ctx->device);
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "fab_matmul: cudaSetDevice failed: %s", cudaGetErrorString(err));
    if (a->algo == FAB_MATMUL_ALGO_CUBLASLT)
        return fab__matmul_cublaslt(ctx, a);
    if (a->algo == FAB_MATMUL_ALGO_AUTO && fab__matmul_cublaslt_supports(ctx, a) == FAB_OK) {
        /* cuBLASLt may still find no algorithm (alignment, epilogue): then ours */
        fab_status s = fab__matmul_cublaslt(ctx, a);
        if (s != FAB_ERR_UNSUPPORTED)
            return s;
    }
    if (a->m > 0 && a->n > 0 && a->batch > 0) {
        if (a->algo != FAB_MATMUL_ALGO_REFERENCE && a->k > 0 && fab__matmul_sm80_supports(ctx, a))
            FAB__TRY(fab__matmul_sm80(ctx, a));
        else
            FAB__TRY(gemm_any(ctx, a, a->algo == FAB_MATMUL_ALGO_REFERENCE));
    }
    if (a->dbias)
        return fab__matmul_dbias_cuda(ctx, a);
    return FAB_OK;
}

extern "C" fab_status fab__bias_grad_cuda(fab_context *ctx, const fab__bgrad_args *a)
{
    cudaError_t err = cudaSetDevice(ctx->device);
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "fab_matmul_bias_grad: cudaSetDevice failed: %s", cudaGetErrorString(err));
    bg_rows g;
    memset(&g, 0, sizeof g);
    g.nr = a->nr;
    g.rows = 1;
    for (int j = 0; j < a->nr; j++) {
        g.shape[j] = a->shape[j];
        g.stride[j] = a->stride[j];
        g.rows *= a->shape[j];
    }
    return colsum_any(ctx, a->dy, a->dtype, a->n, g, a->dbias, a->dbias_dtype);
}
