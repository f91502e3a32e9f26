/*
 * matmul_sm80.cuh: fabriek's tensor-core GEMM for sm_80 and later: bf16/f16 in
 * (mma.sync m16n8k16), or f32 in with precision = FAB_MATMUL_TF32 (mma.sync
 * m16n8k8 .tf32); f32 accumulation; C bf16/f16/f32 (f32 for f32 inputs); every
 * epilogue of fab_matmul.
 *
 * Idea: a block computes a BM x BN tile of C with a k loop over slices of 64
 * bytes of k (BK = 32 16-bit values or 16 f32). Each slice of op(A) and op(B) is
 * copied global -> shared with 16-byte cp.async (8 or 4 values; zero-filled past
 * every edge, so any m, n, k works), STAGES = 3 slices in flight; a warp computes
 * a WTM x WTN sub-tile as (WTM/16) x (WTN/8) mma tiles. Shared tiles are stored
 * as the operand is in memory (k-contiguous rows of BK values, or m/n-contiguous
 * rows of BM/BN values), with the 16-byte chunks of each row XOR-swizzled by the
 * row index, so cp.async writes stay whole chunks and the fragment reads below
 * are free of bank conflicts.
 *   16-bit inputs: fragments by ldmatrix, .trans where the operand is stored m-
 *   or n-contiguous (A transposed, or B not); the swizzle puts the 8 rows one
 *   ldmatrix phase reads in 8 different bank groups.
 *   TF32: a k-contiguous operand is read by ldmatrix (.b16, not .trans): on 32-bit
 *   data, lane l receives the value at row l/4, 32-bit column l%4 of each 8x4
 *   matrix, which is exactly the tf32 fragment (A: a[r] = A[g + 8(r&1)][t + 4(r>>1)],
 *   B: b[r] = B[t + 4r][g], g = l/4, t = l%4). ldmatrix.trans cannot transpose
 *   32-bit values, so an m/n-contiguous operand is read with plain 32-bit shared
 *   loads: one register of the warp is rows k0 + t (4 rows) x columns c0 + g
 *   (8 values, 2 chunks), and XOR-ing chunk indices with 2(row%4) puts those 8
 *   chunks in 8 different bank groups (32 banks, no conflict). Every value is
 *   rounded to tf32 with cvt.rna after the load.
 * The epilogue (alpha, beta·C, bias, pre_act, activation or its derivative,
 * rounding) goes through shared memory, 16 rows of a warp's tile at a time, so
 * that its global loads and stores run along rows (see the kernel).
 *
 * Thread mapping: warp w owns rows wm*WTM.. and columns wn*WTN.. of the block
 * tile (wm = w / WARPS_N, wn = w % WARPS_N); in an mma tile lane l holds rows
 * l/4 and l/4 + 8, columns 2(l%4) + {0, 1} (PTX ISA fragment layout).
 *
 * Numerics: 16-bit inputs: products exact, sums in f32 (the tensor cores'
 * order). TF32: each input rounded to tf32 (10 mantissa bits, nearest, ties away:
 * relative error <= 2^-11), products exact, sums in f32. Epilogue in f32, one
 * rounding to C's dtype. Deterministic: no split-k, fixed order.
 *
 * Requirements (fab__matmul_sm80_supports): bf16 or f16 A and B, or f32 with
 * precision TF32; the row strides (where the operand has more than one stored
 * row) and batch strides of A and B multiples of 16 bytes (8 16-bit values or 4
 * f32) and 16-byte aligned bases (whole cp.async chunks); otherwise the SIMT
 * kernel runs (for f32: exact f32 FMA, no rounding to tf32).
 *
 * Files: this header has the kernel and its launch; matmul_sm80.cu the checks
 * and the dispatch by dtype; matmul_sm80_{bf16,f16,tf32}.cu one dtype's instances
 * each (sm80_run), so that a parallel build compiles them side by side (one
 * file of all 36 kernels took 90 s per target, most of a build's critical path).
 */
#ifndef FAB_MATMUL_SM80_CUH
#define FAB_MATMUL_SM80_CUH

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAB__HD __host__ __device__
#include "../activation/gelu_math.h"
#include "../common/cuda_dtype.cuh"
#include "../common/ptx.cuh"
#include "matmul.h"
#include "matmul_cuda_common.cuh"

#define SM80_STAGES 3

/* Sizes in elements of T: a shared row of k is 64 bytes (BK values), a cp.async
 * chunk 16 bytes (VEC values), one mma step 32 bytes of k (KSTEP: 16 for
 * m16n8k16, 8 for m16n8k8.tf32). */
template <typename T>
struct sm80_dims {
    static constexpr int VEC = 16 / (int)sizeof(T);
    static constexpr int BK = 4 * VEC;
    static constexpr int KSTEP = 2 * VEC;
};

/* Index (in elements of T) of chunk `ch` (16 bytes) of row `row` in a shared tile
 * with R chunks per row, swizzled. R = 4 (k-contiguous, 64-byte rows: rows pair
 * up in a 128-byte line, so XOR with (row/2)%4). R >= 8 (m/n-contiguous): 16-bit
 * values XOR with row%8 (ldmatrix.trans reads one chunk of 8 consecutive rows),
 * f32 with 2(row%4) (a tf32 fragment load reads 2 adjacent chunks of 4
 * consecutive rows, see the head comment). */
template <typename T, int R>
static __device__ __forceinline__ int swz(int row, int ch)
{
    int x = R == 4 ? ((row >> 1) & 3) : sizeof(T) == 4 ? ((row & 3) << 1) : (row & 7);
    return row * R * sm80_dims<T>::VEC + (ch ^ x) * sm80_dims<T>::VEC;
}

/* Copies one BK slice of an operand into shared memory. KMAJOR: the operand is
 * stored with k contiguous (rows = ROWS of m or n, 4 chunks of k each); else rows
 * are k and each holds ROWS/VEC chunks of m or n. `rows_lim` = m or n, `k` = K. */
template <typename T, bool KMAJOR, int ROWS, int THREADS>
static __device__ __forceinline__ void load_slice(T *dst, const T *src, int64_t ld, int64_t r0, int64_t k0,
                                                  int64_t rows_lim, int64_t klim)
{
    constexpr int VEC = sm80_dims<T>::VEC, BK = sm80_dims<T>::BK;
    constexpr int R = KMAJOR ? BK / VEC : ROWS / VEC;
    constexpr int NROWS = KMAJOR ? ROWS : BK;
    constexpr int CHUNKS = NROWS * R;
#pragma unroll
    for (int c = threadIdx.x; c < CHUNKS; c += THREADS) {
        int row = c / R, ch = c % R;
        int64_t g_row, g_col, col_lim, row_lim;
        if (KMAJOR) {
            g_row = r0 + row;
            g_col = k0 + ch * VEC;
            row_lim = rows_lim;
            col_lim = klim;
        } else {
            g_row = k0 + row;
            g_col = r0 + ch * VEC;
            row_lim = klim;
            col_lim = rows_lim;
        }
        int64_t left = col_lim - g_col;
        unsigned bytes =
            (g_row < row_lim && left > 0) ? (unsigned)(left >= VEC ? 16 : left * (int64_t)sizeof(T)) : 0u;
        const T *s = bytes ? src + g_row * ld + g_col : src;
        fab__cp_async_16_zfill(dst + swz<T, R>(row, ch), s, bytes);
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

/* Value (row, col) of an m/n-contiguous f32 shared tile with R chunks per row,
 * rounded to tf32 (a plain 32-bit shared load). */
template <int R>
static __device__ __forceinline__ uint32_t ld_tf32(const float *tile, int row, int col)
{
    return fab__cvt_rna_tf32(fab__ld_shared(tile + swz<float, R>(row, col / 4) + col % 4));
}

/* The four (A) or two (B) registers of a fragment loaded by ldmatrix, rounded to tf32. */
template <int N>
static __device__ __forceinline__ void round_tf32(uint32_t (&r)[N])
{
#pragma unroll
    for (int i = 0; i < N; i++)
        r[i] = fab__cvt_rna_tf32(__uint_as_float(r[i]));
}

template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, bool TA, bool TB>
__global__ void __launch_bounds__(WARPS_M *WARPS_N * 32, 1)
sm80_gemm(const T *A, const T *B, void *C, const void *bias, void *pre, mm_geom g, mm_batch bt)
{
    constexpr bool TF32 = sizeof(T) == 4;
    constexpr int VEC = sm80_dims<T>::VEC, BK = sm80_dims<T>::BK, KSTEP = sm80_dims<T>::KSTEP;
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;
    constexpr int MT = WTM / 16, NT = WTN / 8;
    constexpr int A_ELEMS = BM * BK, B_ELEMS = BN * BK;
    /* A: k-contiguous unless transposed; B: k-contiguous when transposed */
    constexpr bool A_K = !TA, B_K = TB;
    constexpr int RA = A_K ? BK / VEC : BM / VEC, RB = B_K ? BK / VEC : BN / VEC;
    static_assert(NT % 2 == 0, "B fragments are loaded for pairs of n tiles");

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

    int64_t tm, tn;
    mm_block_order(&tm, &tn); /* groups of 8 m-tiles, for L2 reuse */
    const int64_t m0 = tm * BM, n0 = tn * BN;
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

    const int ktiles = (int)((g.k + BK - 1) / BK);
#pragma unroll
    for (int s = 0; s < SM80_STAGES - 1; s++) {
        if (s < ktiles) {
            load_slice<T, A_K, BM, THREADS>(As + s * A_ELEMS, A, g.lda, m0, (int64_t)s * BK, g.m, g.k);
            load_slice<T, B_K, BN, THREADS>(Bs + s * B_ELEMS, B, g.ldb, n0, (int64_t)s * BK, g.n, g.k);
        }
        fab__cp_async_commit();
    }

    for (int kt = 0; kt < ktiles; kt++) {
        fab__cp_async_wait<SM80_STAGES - 2>();
        __syncthreads(); /* slice kt is in shared memory; slice kt-1 is no longer read */
        int nk = kt + SM80_STAGES - 1;
        if (nk < ktiles) {
            int s = nk % SM80_STAGES;
            load_slice<T, A_K, BM, THREADS>(As + s * A_ELEMS, A, g.lda, m0, (int64_t)nk * BK, g.m, g.k);
            load_slice<T, B_K, BN, THREADS>(Bs + s * B_ELEMS, B, g.ldb, n0, (int64_t)nk * BK, g.n, g.k);
        }
        fab__cp_async_commit();
        const T *as = As + (kt % SM80_STAGES) * A_ELEMS;
        const T *bs = Bs + (kt % SM80_STAGES) * B_ELEMS;
#pragma unroll
        for (int kk = 0; kk < BK; kk += KSTEP) {
            uint32_t af[MT][4], bf[NT][2];
            const int mi = lane / 8, r8 = lane % 8, gq = lane / 4, tq = lane % 4;
#pragma unroll
            for (int i = 0; i < MT; i++) {
                int mrow = wm * WTM + i * 16;
                if (A_K) { /* rows m, chunks of k: matrices (m0-7,k0-) (m8-15,k0-) (m0-7,k1-) (m8-15,k1-),
                            * k0- / k1- the first / second 16-byte chunk of the step */
                    int row = mrow + (lane % 16), ch = kk / VEC + lane / 16;
                    fab__ldmatrix_x4(af[i], as + swz<T, RA>(row, ch));
                    if constexpr (TF32)
                        round_tf32(af[i]);
                } else if constexpr (TF32) { /* rows k, m contiguous: a[r] = A[g + 8(r&1)][t + 4(r>>1)] */
#pragma unroll
                    for (int r = 0; r < 4; r++)
                        af[i][r] = ld_tf32<RA>(as, kk + tq + 4 * (r >> 1), mrow + gq + 8 * (r & 1));
                } else { /* rows k, chunks of m, transposed */
                    int row = kk + r8 + 8 * (mi >> 1), ch = (mrow + 8 * (mi & 1)) / 8;
                    fab__ldmatrix_x4_trans(af[i], as + swz<T, RA>(row, ch));
                }
            }
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                int ncol = wn * WTN + j * 8;
                uint32_t r[4];
                if (B_K) { /* rows n, chunks of k: (n0-7,k0-) (n0-7,k1-) (n8-15,k0-) (n8-15,k1-) */
                    int row = ncol + r8 + 8 * (mi >> 1), ch = kk / VEC + (mi & 1);
                    fab__ldmatrix_x4(r, bs + swz<T, RB>(row, ch));
                    if constexpr (TF32)
                        round_tf32(r);
                } else if constexpr (TF32) { /* rows k, n contiguous: b[q] = B[t + 4q][g] */
#pragma unroll
                    for (int q = 0; q < 4; q++)
                        r[q] = ld_tf32<RB>(bs, kk + tq + 4 * (q & 1), ncol + gq + 8 * (q >> 1));
                } else { /* rows k, chunks of n, transposed */
                    int row = kk + r8 + 8 * (mi & 1), ch = (ncol + 8 * (mi >> 1)) / 8;
                    fab__ldmatrix_x4_trans(r, bs + swz<T, RB>(row, ch));
                }
                bf[j][0] = r[0];
                bf[j][1] = r[1];
                bf[j + 1][0] = r[2];
                bf[j + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < NT; j++) {
                    if constexpr (TF32)
                        fab__mma_m16n8k8_tf32(acc[i][j], af[i], bf[j], acc[i][j]);
                    else
                        mma16816<T>(acc[i][j], af[i], bf[j]);
                }
        }
    }
    fab__cp_async_wait_all();
    __syncthreads(); /* every warp is done with the stages: they hold the epilogue's staging now */

    /* Epilogue, one 16-row m-tile of the warp tile at a time: the warp stores its
     * accumulators to its own part of shared memory (f32, rows of WTN + 8 floats,
     * so a half-warp's float2 stores, rows g..g+3 x columns 2t, 2t+1, cover 32
     * banks), then its lanes take consecutive elements of those 16 rows: alpha,
     * beta C, bias, pre_act, activation or its derivative, one rounding, and stores
     * that are coalesced along the row, 8 columns a lane where the layout allows
     * (mm_epilogue_staged). One copy of the epilogue in the code instead of one per
     * accumulator register. */
    constexpr int SROW = WTN + 8;
    static_assert(WARPS_M * WARPS_N * 16 * SROW * 4 <= SM80_STAGES * (A_ELEMS + B_ELEMS) * (int)sizeof(T),
                  "the epilogue's staging fits in the stages");
    float *stage = reinterpret_cast<float *>(smem) + warp * 16 * SROW;
    const int gq = lane / 4, tq = lane % 4;
#pragma unroll
    for (int i = 0; i < MT; i++) {
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                fab__st_shared(reinterpret_cast<float2 *>(stage + (gq + 8 * h) * SROW + j * 8 + 2 * tq),
                               make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]));
        __syncwarp();
        const int64_t row0 = m0 + wm * WTM + i * 16, col0 = n0 + wn * WTN;
        mm_epilogue_staged<T, WTN, SROW>(g, stage, lane, row0, col0, C, bias, pre);
        __syncwarp(); /* read before the next m-tile overwrites */
    }
}

template <typename T, int BM, int BN, int WM, int WN, bool TA, bool TB>
static cudaError_t launch_cfg(fab_context *ctx, const fab__mm_args *a, const mm_geom &g, const mm_batch &bt)
{
    /* 3 stages of (BM + BN) rows of 64 bytes: 24 KiB (64x64) to 72 KiB (128x256),
     * past 48 KiB only with the opt-in */
    const int smem = SM80_STAGES * (BM + BN) * sm80_dims<T>::BK * (int)sizeof(T);
    auto kernel = sm80_gemm<T, BM, BN, WM, WN, TA, TB>;
    if (smem > 48 * 1024) {
        cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        if (err != cudaSuccess)
            return err;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)((a->n + BN - 1) / BN), (unsigned)((a->m + BM - 1) / BM), (unsigned)a->batch);
    cfg.blockDim = dim3(WM * WN * 32);
    cfg.dynamicSmemBytes = (size_t)smem;
    cfg.stream = (cudaStream_t)ctx->stream;
    return cudaLaunchKernelEx(&cfg, kernel, (const T *)a->a, (const T *)a->b, a->c, a->bias, a->pre_act, g, bt);
}

/* Tile configurations (block tile, warps, warp tile):
 *   TILE_128x256: 128x256, 8 warps of 64x64 (72 KiB of shared memory)
 *   TILE_128x128: 128x128, 4 warps of 64x64
 *   TILE_128x128_W8: 128x128, 8 warps of 64x32
 *   TILE_64x64: 64x64, 4 warps of 32x32
 * The rule: the largest of 128x256, 128x128 (4 warps) and 64x64 whose grid still
 * gives every SM a block. Why 64x64 warp tiles: per k step of 16 a warp reads
 * WTM/16 + WTN/16 ldmatrix.x4 (512 bytes each) for (WTM/16)(WTN/8) mma, and at
 * 128 bytes per clock of shared-memory bandwidth a 64x32 warp tile needs 1.5
 * clocks of reads per mma (plus 0.5 for the cp.async writes of a 128x128 block),
 * a 64x64 one 1.0 (plus 0.375 at 128x256): at the mma.sync rate of an H100 SM,
 * which we estimate at one m16n8k16 every 1.6 clocks (not yet measured), only the
 * 64x64 warp tiles leave shared memory out of the way. The 8-warp 128x128 tile stays for the A/B comparison.
 * FAB_MATMUL_SM80_TILE=128x256|128x128|128x128w8|64x64 forces one (tests,
 * benchmark); AUTO's cached choice between this kernel and cuBLASLt does not
 * know the variable, so set it for the whole process. */
enum sm80_tile { TILE_64x64, TILE_128x128, TILE_128x128_W8, TILE_128x256 };

static sm80_tile pick_tile(const fab_context *ctx, const fab__mm_args *a)
{
    const char *env = getenv("FAB_MATMUL_SM80_TILE");
    if (env) {
        if (!strcmp(env, "128x256"))
            return TILE_128x256;
        if (!strcmp(env, "128x128"))
            return TILE_128x128;
        if (!strcmp(env, "128x128w8"))
            return TILE_128x128_W8;
        if (!strcmp(env, "64x64"))
            return TILE_64x64;
        static bool warned; /* once per process; a race here costs at most a second line */
        if (!warned) {
            warned = true;
            fprintf(stderr, "fabriek: FAB_MATMUL_SM80_TILE=%s is not 128x256, 128x128, 128x128w8 or 64x64: ignored\n",
                    env);
        }
    }
    const int64_t mb = (a->m + 127) / 128;
    if (mb * ((a->n + 255) / 256) * a->batch >= (int64_t)ctx->sm_count)
        return TILE_128x256;
    if (mb * ((a->n + 127) / 128) * a->batch >= (int64_t)ctx->sm_count)
        return TILE_128x128;
    return TILE_64x64;
}

template <typename T, bool TA, bool TB>
static cudaError_t launch_tiles(fab_context *ctx, const fab__mm_args *a, const mm_geom &g, const mm_batch &bt)
{
    switch (pick_tile(ctx, a)) {
    case TILE_128x256: return launch_cfg<T, 128, 256, 2, 4, TA, TB>(ctx, a, g, bt);
    case TILE_128x128: return launch_cfg<T, 128, 128, 2, 2, TA, TB>(ctx, a, g, bt);
    case TILE_128x128_W8: return launch_cfg<T, 128, 128, 2, 4, TA, TB>(ctx, a, g, bt);
    default: return launch_cfg<T, 64, 64, 2, 2, TA, TB>(ctx, a, g, bt);
    }
}

template <typename T>
static cudaError_t launch_trans(fab_context *ctx, const fab__mm_args *a, const mm_geom &g, const mm_batch &bt)
{
    if (a->trans_a)
        return a->trans_b ? launch_tiles<T, true, true>(ctx, a, g, bt) : launch_tiles<T, true, false>(ctx, a, g, bt);
    return a->trans_b ? launch_tiles<T, false, true>(ctx, a, g, bt) : launch_tiles<T, false, false>(ctx, a, g, bt);
}

/* One input dtype's instances (T: __nv_bfloat16, __half, or float for tf32): the
 * body of fab__matmul_sm80_<dtype> (matmul_sm80_<dtype>.cu). */
template <typename T>
static fab_status sm80_run(fab_context *ctx, const fab__mm_args *a)
{
    mm_geom g;
    mm_batch bt;
    mm_fill(a, &g, &bt);
    cudaError_t err = launch_trans<T>(ctx, a, g, bt);
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "fab_matmul: sm80_gemm launch failed: %s", cudaGetErrorString(err));
    return fab__cuda_check_launch("fab_matmul");
}

#endif
