/*
 * matmul_cuda.cu: fab_matmul on the GPU (real or emulated): the algorithm choice,
 * fabriek's portable SIMT GEMM, and the bias-gradient reductions.
 *
 * Dispatch (documented in docs/API.md):
 *   ALGO_CUBLASLT  -> matmul_cublas.c (the entry has checked it supports the call)
 *   ALGO_NATIVE    -> on sm_90 the Hopper kernel (matmul_sm90.cuh: TMA, wgmma) for
 *                     bf16/f16 with TMA-friendly strides, no broadcast batch
 *                     (fab__matmul_sm90_supports; FAB_MATMUL_SM90=0 turns it off),
 *                     else the tensor-core kernel (matmul_sm80.cuh) for bf16/f16, and
 *                     for f32 with precision TF32, with 16-byte-aligned bases and
 *                     strides (8 or 4 elements; fab__matmul_sm80_supports), else
 *                     simt_gemm below (exact f32 FMA for f32, TF32 or not)
 *   ALGO_REFERENCE -> ref_gemm below (one thread per element, plain k loop)
 *   ALGO_AUTO      -> a candidate from {cuBLASLt, tensor-core kernel, and where that is
 *                     the Hopper kernel, its ping-pong schedule} (auto_choice):
 *     - Only one can run the call (cuBLASLt cannot express it, or the emulated
 *       build, which has none, and no Hopper kernel with its two schedules; or the
 *       tensor-core kernel does not apply): that one, else simt_gemm.
 *     - Two or more can: measured on the first call of the call's key, then cached in the
 *       context (ctx->matmul's tuner). The key: m, n, k, batch count, dtypes of
 *       A/B, C, bias and dbias, transposes, TF32, beta != 0, the epilogue
 *       (activation, forward or backward, bias / pre_act / dbias present, dbias
 *       from C or A), each operand's alignment class (the largest power of two up
 *       to 16 bytes dividing its address and its row and batch strides), which of
 *       A and B broadcast over the batch, and which candidates can run it. A miss
 *       runs each candidate once to warm up and 3 times timed (cudaEvents on the
 *       context's stream, interleaved), in stream-ordered scratch
 *       (cudaMallocAsync) standing in for C, a forward's pre_act and dbias, so the
 *       caller's outputs are written once, by the real run; with beta != 0 the
 *       scratch C is a fresh copy of C before each run. The least median wins
 *       (ties: cuBLASLt). The miss waits for its timings (one stream sync); a hit
 *       costs a lookup. The 256 first keys are cached, never evicted; later new
 *       keys run the heuristic.
 *     - The fixed heuristic, "cuBLASLt if it can run the call" (falling back to
 *       fabriek's kernel if cuBLASLt then finds no algorithm), and nothing cached:
 *       in a deterministic context (a timing-based choice could differ from one
 *       run or process to the next and change the result's bits), on a miss while
 *       the stream is being captured (no synchronising in a capture; a hit still
 *       uses its winner), with FAB_MATMUL_AUTOTUNE=0, when the cache is full, and
 *       when the scratch cannot be allocated.
 *     The environment is read when a context first needs its tuner.
 *     FAB_MATMUL_AUTOTUNE_FILE=path keeps the measurements across processes: a
 *     context's tuner first loads the file's entries for its own device and
 *     software (signature: ctx->device_name, which holds the device's name, sm,
 *     SM count and driver and runtime versions, then the cuBLASLt and fabriek
 *     versions), and appends each new measurement as one line (one write() with
 *     O_APPEND, so ranks sharing a node-local file do not interleave lines). Lines
 *     of other signatures, or that do not parse, are skipped; a file that cannot
 *     be read or written only means measuring as without it. Entries from the
 *     file count against the 256 keys.
 *     FAB_MATMUL_AUTOTUNE_LOG=1 writes one line per AUTO call that had two
 *     candidates to stderr (the choice, why, and the measured times): a
 *     diagnostic, and how tests/test_matmul.c sees the cache work.
 *     FAB_MATMUL_AUTOTUNE_SIMT=1 (emulated builds only, for the tests) adds
 *     simt_gemm as a candidate, so the emulator, which has no cuBLASLt, has two,
 *     and the ping-pong schedule where the Hopper kernel applies (a GPU build
 *     always measures that one there).
 */
#include <cuda_runtime.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FAB__HD __host__ __device__
#include "../activation/gelu_math.h"
#include "../common/cuda_dtype.cuh"
#include "../common/ptx.cuh"
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
    /* One epilogue in a loop, not 16 unrolled copies (ptxas spills around those
     * for sm_80/90); each value is picked out of acc with constant indices, so acc
     * stays in registers (indexed by the loop variable it would go to the stack:
     * spills for sm_100a). */
#pragma unroll 1
    for (int e = 0; e < 16; e++) {
        float v = 0.0f;
#pragma unroll
        for (int q = 0; q < 16; q++)
            v = q == e ? acc[q / 4][q % 4] : v;
        int64_t i = i0 + ty + 16 * (e / 4), j = j0 + tx + 16 * (e % 4);
        if (i < g.m && j < g.n)
            finish<TC>(g, v, i, j, C, bias, pre);
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

/* ------------------------------------------------------------ AUTO's choice */

/* The candidates AUTO chooses between, in the fixed heuristic's order of
 * preference: the first one that can run the call wins when nothing is measured. */
enum { CAND_CUBLASLT, CAND_SM80, CAND_SIMT, CAND_SM90_PP, NCAND };
static const char *const cand_name[NCAND] = {"cuBLASLt", "tensor-core", "SIMT", "sm90-pingpong"};

#define TUNE_MAX 256 /* shapes measured per context; past that, the heuristic */
#define TUNE_REPS 3  /* timed runs per candidate, after one warm-up; the median counts */

/* What decides a call's timing and which candidates can run it (see make_key). */
struct tune_key {
    int64_t v[9];
};

static uint64_t key_hash(const tune_key &k)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a over the words */
    for (int i = 0; i < 9; i++) {
        h ^= (uint64_t)k.v[i];
        h *= 1099511628211ull;
    }
    return h;
}

struct fab__mm_tuner {
    int enabled; /* FAB_MATMUL_AUTOTUNE is not "0" */
    char file[512]; /* FAB_MATMUL_AUTOTUNE_FILE, or "" */
    char sig[400];  /* the device and software the file's lines must name */
    int log;     /* FAB_MATMUL_AUTOTUNE_LOG: one stderr line per AUTO choice */
    int simt;    /* emulated builds only, FAB_MATMUL_AUTOTUNE_SIMT: the SIMT kernel is a candidate */
    int n;       /* entries used; never evicted */
    uint64_t hash[TUNE_MAX];
    tune_key key[TUNE_MAX];
    unsigned char winner[TUNE_MAX];
    unsigned char from_file[TUNE_MAX];
};

/* ------------------------------------------------- the file behind the cache */

#define TUNE_FILE_TAG "fabriek-matmul-autotune-1"

/* Who measured: the signature a file line must carry to be used. No spaces.
 * ctx->device_name already names the device, sm, SM count, driver and runtime. */
static void tune_signature(fab_context *ctx, char *sig, size_t len)
{
    snprintf(sig, len, "%s|cublasLt%zu|fabriek%s", ctx->device_name, fab__matmul_cublaslt_version(), fab_version());
    for (char *c = sig; *c; c++)
        if (*c == ' ' || *c == '\t' || *c == '\n')
            *c = '_';
}

static int cand_of_name(const char *name)
{
    for (int c = 0; c < NCAND; c++)
        if (strcmp(name, cand_name[c]) == 0)
            return c;
    return -1;
}

static int tune_find(const fab__mm_tuner *t, uint64_t h, const tune_key &key)
{
    for (int i = 0; i < t->n; i++)
        if (t->hash[i] == h && memcmp(&t->key[i], &key, sizeof key) == 0)
            return i;
    return -1;
}

static void tune_insert(fab__mm_tuner *t, uint64_t h, const tune_key &key, int winner, bool from_file)
{
    t->hash[t->n] = h;
    t->key[t->n] = key;
    t->winner[t->n] = (unsigned char)winner;
    t->from_file[t->n] = from_file;
    t->n++;
}

/* Loads the file's lines of this signature (the first line of a key wins). */
static void tune_file_load(fab__mm_tuner *t)
{
    FILE *f = fopen(t->file, "r");
    if (!f) {
        if (errno != ENOENT && t->log) /* ENOENT: not there yet; the first measurement creates it */
            fprintf(stderr, "fabriek: fab_matmul AUTO: cannot read FAB_MATMUL_AUTOTUNE_FILE=%s: %s\n", t->file,
                    strerror(errno));
        return;
    }
    char line[1024];
    while (t->n < TUNE_MAX && fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        if (len == 0 || line[len - 1] != '\n') { /* longer than any line we write, or cut short */
            int ch;
            while (len == sizeof line - 1 && (ch = fgetc(f)) != EOF && ch != '\n')
                ;
            continue;
        }
        char tag[32], sig[sizeof t->sig], win[32];
        long long v[9];
        int used = 0;
        if (sscanf(line, "%31s %399s %lld %lld %lld %lld %lld %lld %lld %lld %lld %31s %n", tag, sig, &v[0], &v[1],
                   &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], win, &used) != 12 ||
            line[used] != 0 || strcmp(tag, TUNE_FILE_TAG) != 0 || strcmp(sig, t->sig) != 0)
            continue;
        int c = cand_of_name(win);
        if (c < 0 || !((unsigned long long)v[6] >> c & 1)) /* the winner must have been a candidate */
            continue;
        tune_key key;
        for (int i = 0; i < 9; i++)
            key.v[i] = v[i];
        uint64_t h = key_hash(key);
        if (tune_find(t, h, key) < 0)
            tune_insert(t, h, key, c, true);
    }
    fclose(f);
}

/* Appends one measured entry, as a single write. */
static void tune_file_append(const fab__mm_tuner *t, const tune_key &key, int winner)
{
    char line[1024];
    int len = snprintf(line, sizeof line, "%s %s", TUNE_FILE_TAG, t->sig);
    for (int i = 0; i < 9 && len > 0 && len < (int)sizeof line; i++)
        len += snprintf(line + len, sizeof line - (size_t)len, " %lld", (long long)key.v[i]);
    if (len > 0 && len < (int)sizeof line)
        len += snprintf(line + len, sizeof line - (size_t)len, " %s\n", cand_name[winner]);
    if (len <= 0 || len >= (int)sizeof line)
        return;
    int fd = open(t->file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        if (t->log)
            fprintf(stderr, "fabriek: fab_matmul AUTO: cannot open FAB_MATMUL_AUTOTUNE_FILE=%s: %s\n", t->file,
                    strerror(errno));
        return;
    }
    if (write(fd, line, (size_t)len) != len && t->log)
        fprintf(stderr, "fabriek: fab_matmul AUTO: writing FAB_MATMUL_AUTOTUNE_FILE=%s failed\n", t->file);
    close(fd);
}

static int env_flag(const char *name, int dflt)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return dflt;
    return strcmp(v, "0") != 0;
}

/* The context's tuner, created (and the environment read) on first use; NULL when
 * out of host memory (the heuristic then decides). */
static fab__mm_tuner *get_tuner(fab_context *ctx)
{
    fab__mm_state *st = fab__matmul_state(ctx);
    if (!st)
        return NULL;
    if (!st->tuner) {
        fab__mm_tuner *t = (fab__mm_tuner *)calloc(1, sizeof *t);
        if (!t)
            return NULL;
        t->enabled = env_flag("FAB_MATMUL_AUTOTUNE", 1);
        t->log = env_flag("FAB_MATMUL_AUTOTUNE_LOG", 0);
#ifdef FAB_EMULATE_CUDA
        t->simt = env_flag("FAB_MATMUL_AUTOTUNE_SIMT", 0);
#endif
        const char *file = getenv("FAB_MATMUL_AUTOTUNE_FILE");
        if (t->enabled && !ctx->deterministic && file && *file) {
            if (strlen(file) < sizeof t->file) {
                strcpy(t->file, file);
                tune_signature(ctx, t->sig, sizeof t->sig);
                tune_file_load(t);
            } else if (t->log) {
                fprintf(stderr, "fabriek: fab_matmul AUTO: FAB_MATMUL_AUTOTUNE_FILE is longer than %zu bytes: not used\n",
                        sizeof t->file - 1);
            }
        }
        st->tuner = t;
    }
    return st->tuner;
}

/* Which candidates can run the call (a bit per candidate). The SIMT kernel runs
 * everything, but on a GPU it is never faster than the other two where they
 * apply, so it is a candidate only for the emulated build's tests. Where the
 * tensor-core candidate is the Hopper kernel, its ping-pong schedule is one more
 * (the fixed heuristic never picks it: only a measurement does), unless
 * FAB_MATMUL_SM90_SCHEDULE fixes the schedule; in an emulated build only for the
 * tests, as SIMT. */
static unsigned candidates(fab_context *ctx, const fab__mm_args *a, const fab__mm_tuner *t)
{
    unsigned mask = 0;
    if (fab__matmul_cublaslt_supports(ctx, a) == FAB_OK)
        mask |= 1u << CAND_CUBLASLT;
    if (a->k > 0 && fab__matmul_sm80_supports(ctx, a)) {
        mask |= 1u << CAND_SM80;
#ifdef FAB_EMULATE_CUDA
        const bool pp_allowed = t && t->simt;
#else
        const bool pp_allowed = true;
#endif
        if (pp_allowed && !getenv("FAB_MATMUL_SM90_SCHEDULE") && fab__matmul_sm90_supports(ctx, a))
            mask |= 1u << CAND_SM90_PP;
    }
    if (t && t->simt)
        mask |= 1u << CAND_SIMT;
    return mask;
}

static int heuristic(unsigned mask)
{
    for (int c = 0; c < NCAND; c++)
        if (mask >> c & 1)
            return c;
    return CAND_SIMT;
}

/* log2 (at most 4) of the largest power of two dividing an operand's byte address
 * and its row and batch strides in bytes (of dims with more than one element):
 * what decides vectorised access, and so which kernels apply and how fast. */
static int64_t align_class(const fab__mm_args *a, const void *p, int64_t ld, int64_t rows, const int64_t *bstride,
                           fab_dtype dt)
{
    uint64_t es = fab_dtype_size(dt), x = (uint64_t)(uintptr_t)p | 16;
    if (rows > 1)
        x |= (uint64_t)ld * es;
    for (int j = 0; j < a->nb; j++)
        if (a->batch_shape[j] > 1)
            x |= (uint64_t)bstride[j] * es;
    int l = 0;
    while (!(x >> l & 1))
        l++;
    return l;
}

static bool broadcast(const fab__mm_args *a, const int64_t *bstride)
{
    for (int j = 0; j < a->nb; j++)
        if (a->batch_shape[j] > 1 && bstride[j] == 0)
            return true;
    return false;
}

/* The cache key: sizes, dtypes, transposes, the epilogue, TF32, alignment
 * classes, broadcast batch operands, and the candidates that can run the call. */
static tune_key make_key(const fab__mm_args *a, unsigned mask)
{
    tune_key k;
    memset(&k, 0, sizeof k);
    int64_t *v = k.v;
    v[0] = a->m, v[1] = a->n, v[2] = a->k, v[3] = a->batch;
    v[4] = (int64_t)a->ab_dtype | (int64_t)a->c_dtype << 8 | (int64_t)(a->bias ? a->bias_dtype + 1 : 0) << 16 |
           (int64_t)(a->dbias ? a->dbias_dtype + 1 : 0) << 24;
    v[5] = (int64_t)a->trans_a | (int64_t)a->trans_b << 1 | (int64_t)a->tf32 << 2 | (int64_t)(a->beta != 0.0f) << 3 |
           (int64_t)a->act_backward << 4 | (int64_t)(a->pre_act != NULL) << 5 | (int64_t)a->dbias_from << 6 |
           (int64_t)a->act << 8;
    v[6] = mask;
    v[7] = align_class(a, a->a, a->lda, a->trans_a ? a->k : a->m, a->a_bstride, a->ab_dtype) |
           align_class(a, a->b, a->ldb, a->trans_b ? a->n : a->k, a->b_bstride, a->ab_dtype) << 4 |
           align_class(a, a->c, a->ldc, a->m, a->c_bstride, a->c_dtype) << 8 |
           (a->pre_act ? align_class(a, a->pre_act, a->ldp, a->m, a->p_bstride, a->c_dtype) : 0) << 12;
    v[8] = (int64_t)broadcast(a, a->a_bstride) | (int64_t)broadcast(a, a->b_bstride) << 1;
    return k;
}

/* fabriek's tensor-core kernel: the Hopper one where it applies (sm_90,
 * TMA-friendly strides, no broadcast batch), else the sm80 one. */
static fab_status tensor_core(fab_context *ctx, const fab__mm_args *a)
{
    if (fab__matmul_sm90_supports(ctx, a))
        return fab__matmul_sm90(ctx, a);
    return fab__matmul_sm80(ctx, a);
}

/* One candidate on the call as given, dbias included. */
/* fabriek's kernel for candidate c (not cuBLASLt), dbias apart. */
static fab_status run_fabriek(fab_context *ctx, const fab__mm_args *a, int c)
{
    if (c == CAND_SM80)
        return tensor_core(ctx, a);
    if (c == CAND_SM90_PP)
        return fab__matmul_sm90_pingpong(ctx, a);
    return gemm_any(ctx, a, false);
}

static fab_status run_candidate(fab_context *ctx, const fab__mm_args *a, int c)
{
    if (c == CAND_CUBLASLT)
        return fab__matmul_cublaslt(ctx, a); /* reduces an unfused dbias itself */
    FAB__TRY(run_fabriek(ctx, a, c));
    return a->dbias ? fab__matmul_dbias_cuda(ctx, a) : FAB_OK;
}

/* Elements from an output's first to its last element. */
static int64_t out_span(const fab__mm_args *a, int64_t ld, const int64_t *bstride)
{
    int64_t s = (a->m - 1) * ld + a->n;
    for (int j = 0; j < a->nb; j++)
        s += (a->batch_shape[j] - 1) * bstride[j];
    return s;
}

static size_t round256(size_t x)
{
    return (x + 255) / 256 * 256;
}

#define TUNE_CUDA(call)                                                                                       \
    do {                                                                                                      \
        cudaError_t e_ = (call);                                                                              \
        if (e_ != cudaSuccess) {                                                                              \
            status = fab__fail(FAB_ERR_BACKEND, "fab_matmul (AUTO's measurement): %s failed: %s", #call,     \
                               cudaGetErrorString(e_));                                                       \
            goto done;                                                                                        \
        }                                                                                                     \
    } while (0)

/* Times each candidate in *mask on the call: one warm-up and TUNE_REPS timed runs
 * each (interleaved), with cudaEvents on the context's stream, then waits for
 * them. Every run writes into stream-ordered scratch copies of the outputs (C,
 * pre_act in a forward, dbias; each at the caller's address modulo 256, so the
 * same alignment), never into the caller's; with beta != 0 the scratch C is a
 * fresh copy of C before every run. The inputs (A, B, bias, pre_act in a
 * backward) are only read. A candidate that turns the call down (cuBLASLt
 * finding no algorithm) leaves *mask. *winner: the least median time, ties to
 * the heuristic's order. *no_memory: the scratch could not be allocated (then
 * FAB_OK and nothing measured). */
static fab_status measure(fab_context *ctx, const fab__mm_args *a, unsigned *mask, int *winner, float *med,
                          bool *no_memory)
{
    fab_status status = FAB_OK;
    cudaStream_t stream = (cudaStream_t)ctx->stream;
    cudaEvent_t ev[NCAND][TUNE_REPS][2];
    memset(ev, 0, sizeof ev);
    char *base = NULL;
    *no_memory = false;

    fab__mm_args t = *a;
    size_t cb = (size_t)out_span(a, a->ldc, a->c_bstride) * fab_dtype_size(a->c_dtype);
    bool pre_out = a->pre_act && !a->act_backward;
    size_t pb = pre_out ? (size_t)out_span(a, a->ldp, a->p_bstride) * fab_dtype_size(a->c_dtype) : 0;
    size_t db = a->dbias ? (size_t)(a->dbias_from == FAB_MATMUL_DBIAS_FROM_A ? a->m : a->n) * fab_dtype_size(a->dbias_dtype)
                         : 0;
    size_t off_c = (uintptr_t)a->c % 256;
    size_t off_p = round256(off_c + cb) + (pre_out ? (uintptr_t)a->pre_act % 256 : 0);
    size_t off_d = round256(off_p + pb) + (a->dbias ? (uintptr_t)a->dbias % 256 : 0);
    size_t total = round256(off_d + db);
    if (cudaMallocAsync((void **)&base, total, stream) != cudaSuccess) {
        (void)cudaGetLastError();
        *no_memory = true;
        return FAB_OK;
    }
    t.c = base + off_c;
    if (pre_out)
        t.pre_act = base + off_p;
    if (a->dbias)
        t.dbias = base + off_d;

    for (int c = 0; c < NCAND; c++)
        if (*mask >> c & 1)
            for (int r = 0; r < TUNE_REPS; r++)
                for (int e = 0; e < 2; e++)
                    TUNE_CUDA(cudaEventCreate(&ev[c][r][e]));
    for (int r = -1; r < TUNE_REPS; r++) /* r = -1: the warm-up */
        for (int c = 0; c < NCAND; c++) {
            if (!(*mask >> c & 1))
                continue;
            if (a->beta != 0.0f)
                TUNE_CUDA(cudaMemcpyAsync(t.c, a->c, cb, cudaMemcpyDeviceToDevice, stream));
            if (r >= 0)
                TUNE_CUDA(cudaEventRecord(ev[c][r][0], stream));
            fab_status s = run_candidate(ctx, &t, c);
            if (s == FAB_ERR_UNSUPPORTED && c == CAND_CUBLASLT && r < 0) {
                *mask &= ~(1u << c); /* no cuBLASLt algorithm for the call */
                continue;
            }
            if (s != FAB_OK) {
                status = s;
                goto done;
            }
            if (r >= 0)
                TUNE_CUDA(cudaEventRecord(ev[c][r][1], stream));
        }
    *winner = -1;
    for (int c = 0; c < NCAND; c++) {
        med[c] = -1.0f;
        if (!(*mask >> c & 1))
            continue;
        float ms[TUNE_REPS];
        for (int r = 0; r < TUNE_REPS; r++) {
            TUNE_CUDA(cudaEventSynchronize(ev[c][r][1]));
            TUNE_CUDA(cudaEventElapsedTime(&ms[r], ev[c][r][0], ev[c][r][1]));
        }
        for (int i = 1; i < TUNE_REPS; i++) /* insertion sort: the median */
            for (int j = i; j > 0 && ms[j] < ms[j - 1]; j--) {
                float x = ms[j];
                ms[j] = ms[j - 1];
                ms[j - 1] = x;
            }
        med[c] = ms[TUNE_REPS / 2];
        if (*winner < 0 || med[c] < med[*winner])
            *winner = c;
    }
    if (*winner < 0)
        status = fab__fail(FAB_ERR_INTERNAL, "fab_matmul (AUTO's measurement): no candidate ran");
done:
    if (base && cudaFreeAsync(base, stream) != cudaSuccess && status == FAB_OK)
        status = fab__fail(FAB_ERR_BACKEND, "fab_matmul (AUTO's measurement): cudaFreeAsync failed: %s",
                           cudaGetErrorString(cudaGetLastError()));
    for (int c = 0; c < NCAND; c++)
        for (int r = 0; r < TUNE_REPS; r++)
            for (int e = 0; e < 2; e++)
                if (ev[c][r][e])
                    cudaEventDestroy(ev[c][r][e]);
    return status;
}

static void log_choice(const fab__mm_tuner *t, const fab__mm_args *a, const char *how, int c, const float *med)
{
    if (!t || !t->log)
        return;
    char times[160] = "";
    if (med) {
        size_t len = 0;
        for (int i = 0; i < NCAND && len < sizeof times; i++)
            if (med[i] >= 0.0f)
                len += (size_t)snprintf(times + len, sizeof times - len, "%s%s %.4f ms", len ? ", " : " (", cand_name[i],
                                        (double)med[i]);
        if (len > 0 && len < sizeof times - 1)
            strcat(times, ")");
    }
    fprintf(stderr, "fabriek: fab_matmul AUTO m=%lld n=%lld k=%lld batch=%lld %s->%s act=%d%s: %s -> %s%s\n",
            (long long)a->m, (long long)a->n, (long long)a->k, (long long)a->batch, fab_dtype_name(a->ab_dtype),
            fab_dtype_name(a->c_dtype), (int)a->act, a->act_backward ? " backward" : "", how, cand_name[c], times);
}

/* AUTO's candidate for a call with work to do (m, n, batch > 0): measured on the
 * first call of its key and cached, or the heuristic (see the head comment). */
static fab_status auto_choice(fab_context *ctx, const fab__mm_args *a, int *choice)
{
    fab__mm_tuner *t = get_tuner(ctx);
    unsigned mask = candidates(ctx, a, t);
    *choice = heuristic(mask);
    if (!t || (mask & (mask - 1)) == 0) /* one candidate (or none: SIMT): nothing to choose */
        return FAB_OK;
    const char *why;
    if (ctx->deterministic) {
        why = "heuristic (deterministic context)";
    } else if (!t->enabled) {
        why = "heuristic (FAB_MATMUL_AUTOTUNE=0)";
    } else {
        tune_key key = make_key(a, mask);
        uint64_t h = key_hash(key);
        int hit = tune_find(t, h, key);
        if (hit >= 0) {
            *choice = t->winner[hit];
            log_choice(t, a, t->from_file[hit] ? "cached from file" : "cached", *choice, NULL);
            return FAB_OK;
        }
        cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
        cudaError_t err = cudaStreamIsCapturing((cudaStream_t)ctx->stream, &cs);
        if (err != cudaSuccess)
            (void)cudaGetLastError(); /* e.g. the legacy stream while another captures: treat as capturing */
        if (err != cudaSuccess || cs != cudaStreamCaptureStatusNone) {
            why = "heuristic (stream capture)";
        } else if (t->n >= TUNE_MAX) {
            why = "heuristic (cache full)";
        } else {
            unsigned live = mask;
            int win = -1;
            float med[NCAND];
            bool no_memory = false;
            FAB__TRY(measure(ctx, a, &live, &win, med, &no_memory));
            if (!no_memory) {
                tune_insert(t, h, key, win, false);
                if (t->file[0])
                    tune_file_append(t, key, win);
                *choice = win;
                log_choice(t, a, "tuned", win, med);
                return FAB_OK;
            }
            why = "heuristic (no memory to measure)";
        }
    }
    log_choice(t, a, why, *choice, NULL);
    return FAB_OK;
}

extern "C" fab_status fab__matmul_cuda(fab_context *ctx, const fab__mm_args *a)
{
    cudaError_t err = cudaSetDevice(ctx->device);
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "fab_matmul: cudaSetDevice failed: %s", cudaGetErrorString(err));
    if (a->algo == FAB_MATMUL_ALGO_CUBLASLT)
        return fab__matmul_cublaslt(ctx, a);
    bool work = a->m > 0 && a->n > 0 && a->batch > 0;
    int c = work && a->k > 0 && fab__matmul_sm80_supports(ctx, a) ? CAND_SM80 : CAND_SIMT;
    if (a->algo == FAB_MATMUL_ALGO_AUTO && work) {
        int pick;
        FAB__TRY(auto_choice(ctx, a, &pick));
        if (pick == CAND_CUBLASLT) {
            /* cuBLASLt may still find no algorithm (alignment, epilogue): then ours */
            fab_status s = fab__matmul_cublaslt(ctx, a);
            if (s != FAB_ERR_UNSUPPORTED)
                return s;
        } else {
            c = pick;
        }
    }
    if (work) {
        FAB__TRY(a->algo == FAB_MATMUL_ALGO_REFERENCE ? gemm_any(ctx, a, true) : run_fabriek(ctx, a, c));
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
