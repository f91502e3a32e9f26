/*
 * matmul_sm80.cu: fabriek's tensor-core GEMM for sm_80 and later (bf16/f16 in,
 * f32 accumulation, bf16/f16/f32 out, every epilogue of fab_matmul).
 *
 * Idea: a block computes a BM x BN tile of C with a k loop over BK = 32 slices.
 * Each slice of op(A) and op(B) is copied global -> shared with 16-byte
 * cp.async (zero-filled past every edge, so any m, n, k works), STAGES = 3 slices
 * in flight; a warp computes a WTM x WTN sub-tile as (WTM/16) x (WTN/8) mma.sync
 * m16n8k16 tiles whose fragments come from shared memory by ldmatrix (.trans
 * where the operand is stored m- or n-contiguous, i.e. A transposed or B not).
 * Shared tiles are stored as the operand is in memory (k-contiguous rows of
 * 32 values, or m/n-contiguous rows of BM/BN values), with the 16-byte chunks of
 * each row XOR-swizzled by the row index so the 8 rows one ldmatrix phase reads
 * fall in 8 different bank groups (no conflicts), and cp.async writes stay whole
 * chunks. The epilogue (alpha, beta·C, bias, pre_act, activation or its
 * derivative, rounding) runs on the accumulator registers and stores directly.
 *
 * Thread mapping: warp w owns rows wm*WTM.. and columns wn*WTN.. of the block
 * tile (wm = w / WARPS_N, wn = w % WARPS_N); in an mma tile lane l holds rows
 * l/4 and l/4 + 8, columns 2(l%4) + {0, 1} (PTX ISA fragment layout).
 *
 * Numerics: products exact, sums in f32 (the tensor cores' order), epilogue in
 * f32, one rounding to C's dtype. Deterministic: no split-k, fixed order.
 *
 * Requirements (fab__matmul_sm80_supports): bf16 or f16 A and B, row strides and
 * batch strides of A and B multiples of 8 elements and 16-byte aligned bases
 * (whole cp.async chunks); otherwise the SIMT kernel runs.
 */
#include <cuda_runtime.h>
#include <string.h>

#define FAB__HD __host__ __device__
#include "../activation/gelu_math.h"
#include "../common/cuda_dtype.cuh"
#include "../common/ptx.cuh"
#include "matmul.h"
#include "matmul_cuda_common.cuh"

#define SM80_BK 32
#define SM80_STAGES 3

/* Index (in 16-bit elements) of chunk `ch` (8 elements) of row `row` in a shared
 * tile with R chunks per row, swizzled. R = 4 (k-contiguous, 64-byte rows: rows
 * pair up in a 128-byte line, so XOR with (row/2)%4) or R >= 8 (XOR with row%8). */
template <int R>
static __device__ __forceinline__ int swz(int row, int ch)
{
    int x = R == 4 ? ((row >> 1) & 3) : (row & 7);
    return row * R * 8 + ((ch ^ x) * 8);
}

/* Copies one BK slice of an operand into shared memory. KMAJOR: the operand is
 * stored with k contiguous (rows = ROWS of m or n, 4 chunks of k each); else rows
 * are k and each holds ROWS/8 chunks of m or n. `rows_lim` = m or n, `k` = K. */
template <typename T, bool KMAJOR, int ROWS, int THREADS>
static __device__ __forceinline__ void load_slice(T *dst, const T *src, int64_t ld, int64_t r0, int64_t k0,
                                                  int64_t rows_lim, int64_t klim)
{
    constexpr int R = KMAJOR ? SM80_BK / 8 : ROWS / 8;
    constexpr int NROWS = KMAJOR ? ROWS : SM80_BK;
    constexpr int CHUNKS = NROWS * R;
#pragma unroll
    for (int c = threadIdx.x; c < CHUNKS; c += THREADS) {
        int row = c / R, ch = c % R;
        int64_t g_row, g_col, col_lim, row_lim;
        if (KMAJOR) {
            g_row = r0 + row;
            g_col = k0 + ch * 8;
            row_lim = rows_lim;
            col_lim = klim;
        } else {
            g_row = k0 + row;
            g_col = r0 + ch * 8;
            row_lim = klim;
            col_lim = rows_lim;
        }
        int64_t left = col_lim - g_col;
        unsigned bytes = (g_row < row_lim && left > 0) ? (unsigned)(left >= 8 ? 16 : left * 2) : 0u;
        const T *s = bytes ? src + g_row * ld + g_col : src;
        fab__cp_async_16_zfill(dst + swz<R>(row, ch), s, bytes);
    }
}

template <typename T>
static __device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2])
{
    fab__mma_m16n8k16_bf16(d, a, b, d);
}
template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2])
{
    fab__mma_m16n8k16_f16(d, a, b, d);
}

template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, bool TA, bool TB>
__global__ void __launch_bounds__(WARPS_M *WARPS_N * 32, 1)
sm80_gemm(const T *A, const T *B, void *C, const void *bias, void *pre, mm_geom g, mm_batch bt)
{
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;
    constexpr int MT = WTM / 16, NT = WTN / 8;
    constexpr int A_ELEMS = BM * SM80_BK, B_ELEMS = BN * SM80_BK;
    /* A: k-contiguous unless transposed; B: k-contiguous when transposed */
    constexpr bool A_K = !TA, B_K = TB;
    constexpr int RA = A_K ? SM80_BK / 8 : BM / 8, RB = B_K ? SM80_BK / 8 : BN / 8;

    FAB_DYNAMIC_SMEM(T, smem);
    T *As = smem;
    T *Bs = smem + SM80_STAGES * A_ELEMS;

    int64_t oa, ob, oc, op;
    mm_batch_offsets(bt, blockIdx.z, &oa, &ob, &oc, &op);
    A += oa;
    B += ob;
    const size_t c_size = g.c_f32 ? sizeof(float) : sizeof(T);
    C = (char *)C + oc * c_size;
    if (pre)
        pre = (char *)pre + op * c_size;

    const int64_t m0 = (int64_t)blockIdx.y * BM, n0 = (int64_t)blockIdx.x * BN;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int r = 0; r < 4; r++)
                acc[i][j][r] = 0.0f;

    const int ktiles = (int)((g.k + SM80_BK - 1) / SM80_BK);
#pragma unroll
    for (int s = 0; s < SM80_STAGES - 1; s++) {
        if (s < ktiles) {
            load_slice<T, A_K, BM, THREADS>(As + s * A_ELEMS, A, g.lda, m0, (int64_t)s * SM80_BK, g.m, g.k);
            load_slice<T, B_K, BN, THREADS>(Bs + s * B_ELEMS, B, g.ldb, n0, (int64_t)s * SM80_BK, g.n, g.k);
        }
        fab__cp_async_commit();
    }

    for (int kt = 0; kt < ktiles; kt++) {
        fab__cp_async_wait<SM80_STAGES - 2>();
        __syncthreads(); /* slice kt is in shared memory; slice kt-1 is no longer read */
        int nk = kt + SM80_STAGES - 1;
        if (nk < ktiles) {
            int s = nk % SM80_STAGES;
            load_slice<T, A_K, BM, THREADS>(As + s * A_ELEMS, A, g.lda, m0, (int64_t)nk * SM80_BK, g.m, g.k);
            load_slice<T, B_K, BN, THREADS>(Bs + s * B_ELEMS, B, g.ldb, n0, (int64_t)nk * SM80_BK, g.n, g.k);
        }
        fab__cp_async_commit();
        const T *as = As + (kt % SM80_STAGES) * A_ELEMS;
        const T *bs = Bs + (kt % SM80_STAGES) * B_ELEMS;
#pragma unroll
        for (int kk = 0; kk < SM80_BK; kk += 16) {
            uint32_t af[MT][4], bf[NT][2];
            const int mi = lane / 8, r8 = lane % 8;
#pragma unroll
            for (int i = 0; i < MT; i++) {
                int mrow = wm * WTM + i * 16;
                if (A_K) { /* rows m, chunks of k: matrices (m0-7,k0-7) (m8-15,k0-7) (m0-7,k8-15) (m8-15,k8-15) */
                    int row = mrow + (lane % 16), ch = kk / 8 + lane / 16;
                    fab__ldmatrix_x4(af[i], as + swz<RA>(row, ch));
                } else { /* rows k, chunks of m, transposed */
                    int row = kk + r8 + 8 * (mi >> 1), ch = (mrow + 8 * (mi & 1)) / 8;
                    fab__ldmatrix_x4_trans(af[i], as + swz<RA>(row, ch));
                }
            }
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                int ncol = wn * WTN + j * 8;
                uint32_t r[4];
                if (B_K) { /* rows n, chunks of k: (n0-7,k0-7) (n0-7,k8-15) (n8-15,k0-7) (n8-15,k8-15) */
                    int row = ncol + r8 + 8 * (mi >> 1), ch = kk / 8 + (mi & 1);
                    fab__ldmatrix_x4(r, bs + swz<RB>(row, ch));
                } else { /* rows k, chunks of n, transposed */
                    int row = kk + r8 + 8 * (mi & 1), ch = (ncol + 8 * (mi >> 1)) / 8;
                    fab__ldmatrix_x4_trans(r, bs + swz<RB>(row, ch));
                }
                bf[j][0] = r[0];
                bf[j][1] = r[1];
                bf[j + 1][0] = r[2];
                bf[j + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < NT; j++)
                    mma16816<T>(acc[i][j], af[i], bf[j]);
        }
    }
    fab__cp_async_wait_all();

    /* epilogue on the registers: c[r] is C[g + 8(r/2)][2t + r%2] of each mma tile */
    const int gq = lane / 4, tq = lane % 4;
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                int64_t row = m0 + wm * WTM + i * 16 + gq + 8 * (r >> 1);
                int64_t col = n0 + wn * WTN + j * 8 + 2 * tq + (r & 1);
                if (row >= g.m || col >= g.n)
                    continue;
                mm_epilogue<T>(g, acc[i][j][r], row, col, C, bias, pre, g.c_f32);
            }
}

template <typename T, int BM, int BN, int WM, int WN, bool TA, bool TB>
static cudaError_t launch_cfg(fab_context *ctx, const fab__mm_args *a, const mm_geom &g, const mm_batch &bt)
{
    const int smem = SM80_STAGES * (BM + BN) * SM80_BK * (int)sizeof(T);
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)((a->n + BN - 1) / BN), (unsigned)((a->m + BM - 1) / BM), (unsigned)a->batch);
    cfg.blockDim = dim3(WM * WN * 32);
    cfg.dynamicSmemBytes = (size_t)smem;
    cfg.stream = (cudaStream_t)ctx->stream;
    return cudaLaunchKernelEx(&cfg, sm80_gemm<T, BM, BN, WM, WN, TA, TB>, (const T *)a->a, (const T *)a->b,
                              a->c, a->bias, a->pre_act, g, bt);
}

/* Tile configurations: 128x128 (8 warps, 64x32 each) when the grid fills the
 * GPU, else 64x64 (4 warps, 32x32 each) for more blocks on small problems. */
template <typename T, bool TA, bool TB>
static cudaError_t launch_tiles(fab_context *ctx, const fab__mm_args *a, const mm_geom &g, const mm_batch &bt)
{
    int64_t big_blocks = ((a->m + 127) / 128) * ((a->n + 127) / 128) * a->batch;
    if (big_blocks >= (int64_t)ctx->sm_count)
        return launch_cfg<T, 128, 128, 2, 4, TA, TB>(ctx, a, g, bt);
    return launch_cfg<T, 64, 64, 2, 2, TA, TB>(ctx, a, g, bt);
}

template <typename T>
static cudaError_t launch_trans(fab_context *ctx, const fab__mm_args *a, const mm_geom &g, const mm_batch &bt)
{
    if (a->trans_a)
        return a->trans_b ? launch_tiles<T, true, true>(ctx, a, g, bt) : launch_tiles<T, true, false>(ctx, a, g, bt);
    return a->trans_b ? launch_tiles<T, false, true>(ctx, a, g, bt) : launch_tiles<T, false, false>(ctx, a, g, bt);
}

extern "C" bool fab__matmul_sm80_supports(const fab_context *ctx, const fab__mm_args *a)
{
    if (ctx->sm_version < 80)
        return false;
    if (a->ab_dtype != FAB_DTYPE_BF16 && a->ab_dtype != FAB_DTYPE_F16)
        return false;
    if (a->lda % 8 != 0 || a->ldb % 8 != 0 || (uintptr_t)a->a % 16 != 0 || (uintptr_t)a->b % 16 != 0)
        return false;
    for (int j = 0; j < a->nb; j++)
        if (a->a_bstride[j] % 8 != 0 || a->b_bstride[j] % 8 != 0)
            return false;
    if (a->batch > 65535 || (a->m + 63) / 64 > 65535)
        return false;
    return true;
}

extern "C" fab_status fab__matmul_sm80(fab_context *ctx, const fab__mm_args *a)
{
    mm_geom g;
    mm_batch bt;
    mm_fill(a, &g, &bt);
    cudaError_t err;
    if (a->ab_dtype == FAB_DTYPE_BF16)
        err = launch_trans<__nv_bfloat16>(ctx, a, g, bt);
    else
        err = launch_trans<__half>(ctx, a, g, bt);
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "fab_matmul: sm80_gemm launch failed: %s", cudaGetErrorString(err));
    return fab__cuda_check_launch("fab_matmul");
}
