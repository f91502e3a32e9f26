/*
 * matmul_sm90.cuh: fabriek's Hopper GEMM (sm_90a): bf16/f16 in, f32 accumulation,
 * C bf16/f16/f32, every epilogue of fab_matmul. Where it applies it replaces the
 * sm80 kernel as "fabriek's tensor-core kernel" on an H100 (matmul_cuda.cu).
 *
 * Idea: C in 128 x BN tiles (BN 128 or 256, pick_bn), each with a k loop over
 * slices of 64 (128 bytes of k). The grid is persistent: one block per SM (at
 * most one per tile), block b taking tiles b, b + gridDim.x, ... (batches
 * included) in mm_tile_order's grouped order. Warp specialisation: warpgroup 0
 * is the producer (setmaxnreg: it keeps 40 registers, the consumers take 232) --
 * one thread issues TMA loads of each slice of op(A) and op(B) into a ring of
 * STAGES shared-memory stages, 128-byte swizzled, running on into the block's
 * next tile while the consumers finish this one, so that tile's first slices are
 * there when they start it; warpgroups 1 and 2 are consumers, each multiplying
 * its 64 rows of the A slice by the whole B slice with four wgmma.m64nBNk16 (A and
 * B read from shared memory through descriptors, no registers, no ldmatrix). Two
 * mbarriers per stage: `full` (the TMA bytes have landed; the producer's
 * arrive.expect_tx plus the transaction count) and `empty` (the 8 consumer warps
 * have retired the wgmma that read it); both sides count slices across tiles, so
 * the ring's stages and phases carry on from tile to tile. A consumer keeps one
 * slice's wgmma in flight while it waits for the next slice; the first k-step of a
 * tile overwrites the accumulators (scale-d 0) instead of adding to zeros.
 *
 * Ping-pong (FAB_MATMUL_SM90_SCHEDULE=pingpong, the benchmark's A/B; BN = 128):
 * each consumer warpgroup takes every other tile of the block whole (two
 * wgmma.m64n128k16 per k step, 128 accumulators a thread), and the two take turns
 * for their main loops through named barriers, so that one's epilogue runs while
 * the other's products keep the tensor cores busy (CUTLASS's ping-pong kernel).
 * The turn also keeps each warpgroup's waits within one phase of the `full`
 * barriers: its slices follow the other's in the ring, and a parity names a phase
 * only that near. A stage then has 4 readers, not 8.
 *
 * Operand layouts: an operand stored k-contiguous (A as given, B transposed) is
 * loaded as one box of 64 k x 128 (or BN) rows, each row 128 bytes: wgmma's K-major
 * 128-byte-swizzle layout (8-row groups 1024 bytes apart, SBO = 1024; a k step of
 * 16 advances the start by 32 bytes). One stored m/n-contiguous (A transposed, B
 * as given) is loaded as boxes of 64 m/n x 64 k, rows of k: the MN-major layout
 * (8 k-rows per 1024 bytes, SBO = 1024; the 64-wide boxes LBO = 8192 apart; a k
 * step advances 16 rows, 2048 bytes). TMA fills what lies past the edges of A and
 * B with zeros, so any m, n, k works; a 64-wide box wholly past m or n is not
 * loaded at all (its rows or columns of C are not stored).
 *
 * Thread mapping: consumer warpgroup c (0, 1) owns rows 64c.. of the block tile
 * (ping-pong: rows 64h.. of its own tiles in accumulator set h = 0, 1); its warp w
 * (0..3) rows 16w.. (of each), and lane l the accumulators
 * acc[4j + 2i + b] = C[16w + l/4 + 8i][8j + 2(l%4) + b] (PTX ISA, wgmma D layout).
 * The epilogue goes through shared memory as in the sm80 kernel, in a staging
 * area of its own (the stages are meanwhile filling with the next tile): each
 * warp stores 16 x 64 of its accumulators at a time, then its lanes take 8
 * consecutive columns each of those rows (mm_epilogue_staged: 16-byte global loads
 * and stores along the rows); no other warp waits for it.
 *
 * Numerics: products exact, sums in f32 in the tensor cores' order; epilogue in
 * f32, one rounding to C's dtype. Deterministic: no split-k, fixed order.
 *
 * Batches: a tile's batch is its index / (tiles per matrix); the tensor maps get
 * the batch dimensions (rank 5), so TMA itself walks to the batch's A and B.
 *
 * Requirements (fab__matmul_sm90_supports): an sm_90 device and a binary with
 * sm_90a code; bf16 or f16 A and B; at most 3 batch dimensions, none broadcast
 * (stride 0), each shorter than 2^31, and their strides multiples of 8 elements;
 * 16-byte-aligned A and B with row strides multiples of 8 elements (TMA); the
 * driver's cuTensorMapEncodeTiled. FAB_MATMUL_SM90=0 turns it off (the sm80
 * kernel runs instead). Otherwise the sm80 kernel runs. FAB_MATMUL_SM90_GRID=tiles
 * launches a block per tile rather than per SM (A/B of the persistent grid).
 *
 * Registers (ptxas, sm_90a, CUDA 13): 168 per thread at launch, the cap for 384
 * threads, which setmaxnreg then splits 40 / 232 / 232 between the warpgroups; 0
 * spills at both tile widths (BN = 256 keeps 128 accumulators per thread). A build
 * whose kernel got fewer would hang at setmaxnreg.inc: launch asks the runtime
 * first (fab__setmaxnreg_pool_ok) and runs the sm80 kernel then.
 *
 * Files: this header has the kernel and its launch; matmul_sm90.cu the checks and
 * the choice of tile and schedule; matmul_sm90_{bf16,f16}.cu one dtype's
 * instances each (sm90_run), so that a parallel build compiles them side by side.
 */
#ifndef FAB_MATMUL_SM90_CUH
#define FAB_MATMUL_SM90_CUH

#include <cuda.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAB__HD __host__ __device__
#include "../activation/gelu_math.h"
#include "../common/cuda_dtype.cuh"
#include "../common/ptx.cuh"
#include "../common/tma_host.cuh"
#include "matmul.h"
#include "matmul_cuda_common.cuh"

#if !FAB__SM90A_BODY /* the kernels' bodies are left out of this pass (tma_host.cuh), so the
                     * helpers and constants only they use go unreferenced */
#pragma nv_diag_suppress 177
#endif

enum {
    SM90_BM = 128,
    SM90_BK = 64, /* 128 bytes of 16-bit k: one 128-byte swizzle row */
    SM90_THREADS = 384, /* producer warpgroup + 2 consumer warpgroups */
    SM90_CONSUMER_WARPS = 8,
    SM90_A_BYTES = SM90_BM * SM90_BK * 2, /* A's part of a stage: 16 KiB */
    /* setmaxnreg: the block holds 384 x 168 registers from its launch (ptxas's count
     * at 384 threads), and 128 x (40 + 2 x 232) is all of them */
    SM90_PRODUCER_REGS = 40, SM90_CONSUMER_REGS = 232,
    SM90_SROW = 64 + 8, /* a staging row: 64 floats and 8 of padding (banks) */
    SM90_STAGING_BYTES = SM90_CONSUMER_WARPS * 16 * SM90_SROW * 4, /* 16 rows per consumer warp: 36 KiB */
    /* ping-pong: named barriers SM90_TURN_BAR + c, where consumer warpgroup c waits
     * for its turn to run a main loop (0 is __syncthreads') */
    SM90_TURN_BAR = 1,
};

/* Per block tile width BN (128 or 256): B's part of a stage, the stages (4 of 32
 * KiB, or 3 of 48 KiB) and the shared memory asked for: the stages, the epilogue's
 * staging, the barriers (165 KiB at BN = 128, 181 KiB at 256). */
template <int BN>
struct sm90_cfg {
    static constexpr int B_BYTES = BN * SM90_BK * 2;
    static constexpr int STAGE_BYTES = SM90_A_BYTES + B_BYTES;
    static constexpr int STAGES = BN == 128 ? 4 : 3;
    static constexpr int SMEM =
        1024 /* alignment slack */ + STAGES * STAGE_BYTES + SM90_STAGING_BYTES + 2 * STAGES * 8;
    static_assert(SMEM <= 227 * 1024, "fits an H100's opt-in shared memory");
};
static_assert(128 * (SM90_PRODUCER_REGS + 2 * SM90_CONSUMER_REGS) <= SM90_THREADS * (65536 / SM90_THREADS / 8 * 8),
              "setmaxnreg asks for no more registers than the block holds");

/* K-major (k-contiguous) operand tile: 128 rows of 128 bytes, 128-byte swizzle. */
static __device__ __forceinline__ uint64_t desc_k_major(const unsigned char *tile, int row0, int kstep)
{
    return fab__wgmma_desc(tile + row0 * 128 + kstep * 32, 16, 1024, FAB_WGMMA_SWIZZLE_128B);
}

/* MN-major operand tile: boxes of 64 rows of k x 128 bytes (64 m/n values), 8 KiB
 * apart along m/n; `box0` the first box used. */
static __device__ __forceinline__ uint64_t desc_mn_major(const unsigned char *tile, int box0, int kstep)
{
    return fab__wgmma_desc(tile + box0 * 8192 + kstep * 16 * 128, 8192, 1024, FAB_WGMMA_SWIZZLE_128B);
}

/* One wgmma.m64nBNk16 of the warpgroup, accumulating unless acc_in = 0 (then it
 * overwrites acc); MN_A / MN_B: the operand is MN-major in shared memory. */
template <typename T, int BN, bool MN_A, bool MN_B>
struct sm90_mma {
    static __device__ __forceinline__ void run(float (&acc)[BN / 2], uint64_t da, uint64_t db, int acc_in)
    {
        fab__wgmma_bf16_ss<BN, MN_A, MN_B>(acc, da, db, acc_in);
    }
};
template <int BN, bool MN_A, bool MN_B>
struct sm90_mma<__half, BN, MN_A, MN_B> {
    static __device__ __forceinline__ void run(float (&acc)[BN / 2], uint64_t da, uint64_t db, int acc_in)
    {
        fab__wgmma_f16_ss<BN, MN_A, MN_B>(acc, da, db, acc_in);
    }
};

/* Tile `tile` of the launch: its first row and column of C and, batched, its
 * batch z (tiles of one matrix are consecutive) with z's index along each batch
 * dimension of the maps (bc) and C's and pre's element offsets. */
struct sm90_tile {
    int m0, n0;
    int bc[3];
    int64_t oc, op;
};
template <int BN, bool BATCHED>
static __device__ __forceinline__ sm90_tile sm90_tile_of(int64_t tile, const mm_geom &g, const mm_batch &bt)
{
    const int64_t ntm = (g.m + SM90_BM - 1) / SM90_BM, ntn = (g.n + BN - 1) / BN, per_matrix = ntm * ntn;
    int64_t tm, tn;
    mm_tile_order(tile % per_matrix, ntm, ntn, &tm, &tn);
    sm90_tile t;
    t.m0 = (int)(tm * SM90_BM);
    t.n0 = (int)(tn * BN);
    t.bc[0] = t.bc[1] = t.bc[2] = 0;
    t.oc = t.op = 0;
    if (BATCHED) {
        const int64_t z0 = tile / per_matrix;
        int64_t z = z0, oa, ob;
#pragma unroll
        for (int j = 2; j >= 0; j--) /* constant indices: bc stays in registers */
            if (j < bt.nb) {
                t.bc[j] = (int)(z % bt.shape[j]);
                z /= bt.shape[j];
            }
        mm_batch_offsets(bt, z0, &oa, &ob, &t.oc, &t.op);
    }
    return t;
}

/* One TMA box at element (c0, c1) of the matrix, in batch bc of a batched map
 * (rank 5: the 2 matrix dimensions, then up to 3 batch dimensions). */
template <bool BATCHED>
static __device__ __forceinline__ void sm90_box(void *dst, const CUtensorMap *map, int c0, int c1, const int (&bc)[3],
                                                uint64_t *bar)
{
    if (BATCHED)
        fab__tma_load_5d(dst, map, c0, c1, bc[0], bc[1], bc[2], bar);
    else
        fab__tma_load_2d(dst, map, c0, c1, bar);
}

/* TA: A stored transposed (k x m, m-contiguous); TB: B stored transposed (n x k);
 * BATCHED: the maps have batch dimensions; PP: the ping-pong schedule (BN = 128).
 * ntiles: tiles of C in all batches. */
template <typename T, int BN, bool TA, bool TB, bool BATCHED, bool PP>
__global__ void __launch_bounds__(SM90_THREADS, 1)
    sm90_gemm(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b, void *C,
              const void *bias, void *pre, mm_geom g, mm_batch bt, int64_t ntiles)
{
#if FAB__SM90A_BODY
    static_assert(!PP || BN == 128, "ping-pong keeps a 128 x BN tile's accumulators in one warpgroup: 128 x 128");
    FAB_DYNAMIC_SMEM(unsigned char, raw);
    typedef sm90_cfg<BN> cfg;
    constexpr int STAGES = cfg::STAGES;
    unsigned char *stages = raw + ((1024 - ((uintptr_t)raw & 1023)) & 1023);
    float *staging = reinterpret_cast<float *>(stages + STAGES * cfg::STAGE_BYTES);
    uint64_t *full = reinterpret_cast<uint64_t *>(stages + STAGES * cfg::STAGE_BYTES + SM90_STAGING_BYTES);
    uint64_t *empty = full + STAGES;
    const int ktiles = (int)((g.k + SM90_BK - 1) / SM90_BK);

    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            fab__mbarrier_init(&full[s], 1);
            fab__mbarrier_init(&empty[s], PP ? SM90_CONSUMER_WARPS / 2 : SM90_CONSUMER_WARPS); /* its readers */
        }
        fab__fence_mbarrier_init();
    }
    __syncthreads();

    if (threadIdx.x < 128) { /* the producer warpgroup: one thread issues, the rest have nothing to do */
        fab__setmaxnreg_dec<SM90_PRODUCER_REGS>();
        if (threadIdx.x != 0)
            return;
        int it = 0; /* slices issued, over all of the block's tiles */
        for (int64_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
            const sm90_tile t = sm90_tile_of<BN, BATCHED>(tile, g, bt);
            /* MN-major operands come in 64-wide boxes; one wholly past m or n is not
             * loaded (its rows or columns of C are not stored), so a slice's bytes are
             * those of the boxes issued */
            const int a_boxes = TA ? (g.m - t.m0 > 64 ? 2 : 1) : 0;
            const int b_boxes = TB ? 0 : (int)((g.n - t.n0 + 63) / 64 < BN / 64 ? (g.n - t.n0 + 63) / 64 : BN / 64);
            const unsigned slice_bytes = (TA ? a_boxes * 8192 : SM90_A_BYTES) + (TB ? cfg::B_BYTES : b_boxes * 8192);
            for (int kt = 0; kt < ktiles; kt++, it++) {
                const int s = it % STAGES, k0 = kt * SM90_BK;
                if (it >= STAGES)
                    fab__mbarrier_wait(&empty[s], (unsigned)((it / STAGES - 1) & 1));
                unsigned char *a_tile = stages + s * cfg::STAGE_BYTES, *b_tile = a_tile + SM90_A_BYTES;
                fab__mbarrier_arrive_expect_tx(&full[s], slice_bytes);
                if (!TA) {
                    sm90_box<BATCHED>(a_tile, &map_a, k0, t.m0, t.bc, &full[s]);
                } else {
                    for (int h = 0; h < a_boxes; h++)
                        sm90_box<BATCHED>(a_tile + h * 8192, &map_a, t.m0 + 64 * h, k0, t.bc, &full[s]);
                }
                if (TB) {
                    sm90_box<BATCHED>(b_tile, &map_b, k0, t.n0, t.bc, &full[s]);
                } else {
                    for (int h = 0; h < b_boxes; h++)
                        sm90_box<BATCHED>(b_tile + h * 8192, &map_b, t.n0 + 64 * h, k0, t.bc, &full[s]);
                }
            }
        }
        return;
    }

    /* consumers. Cooperative: warpgroup cg computes rows 64cg.. of every tile of the
     * block (H = 1 row block of 64). Ping-pong: it computes every row of the block's
     * tiles cg, cg + 2, ... (H = 2), and the two take turns for their main loops. */
    fab__setmaxnreg_inc<SM90_CONSUMER_REGS>();
    constexpr int H = PP ? 2 : 1;
    const int cg = threadIdx.x / 128 - 1, warp = threadIdx.x / 32 - 4, lane = threadIdx.x % 32;
    const int gq = lane / 4, tq = lane % 4;
    float *st = staging + warp * 16 * SM90_SROW; /* this warp's staging: 16 rows of 64 floats */
    const size_t c_size = g.c_f32 ? sizeof(float) : sizeof(T);
    for (int64_t L = PP ? cg : 0;; L += PP ? 2 : 1) { /* the block's tiles, numbered from 0 */
        const int64_t tile = blockIdx.x + L * gridDim.x;
        if (tile >= ntiles)
            break;
        const sm90_tile t = sm90_tile_of<BN, BATCHED>(tile, g, bt);
        int64_t it = L * ktiles; /* the block's slice count: this tile's first slice */
        float acc[H][BN / 2];
        if (ktiles == 0) { /* C = beta C + bias alone (the dispatch sends k = 0 elsewhere) */
#pragma unroll
            for (int h = 0; h < H; h++)
#pragma unroll
                for (int i = 0; i < BN / 2; i++)
                    acc[h][i] = 0.0f;
        }
        /* Ping-pong: wait for the other warpgroup to have passed every full barrier of
         * its tile L - 1. A barrier's parity names a phase only within one phase of
         * the barrier's own, so this warpgroup must not wait for its slices while the
         * other's, which come first in the ring, are still to land. */
        if (PP && L > 0) { /* constant ids: ptxas then reserves 3 barriers, not all 16 */
            if (cg == 0)
                fab__bar_sync(SM90_TURN_BAR, 256);
            else
                fab__bar_sync(SM90_TURN_BAR + 1, 256);
        }
        for (int kt = 0; kt < ktiles; kt++, it++) {
            const int s = (int)(it % STAGES);
            fab__mbarrier_wait(&full[s], (unsigned)((it / STAGES) & 1));
            const unsigned char *a_tile = stages + s * cfg::STAGE_BYTES, *b_tile = a_tile + SM90_A_BYTES;
#pragma unroll
            for (int h = 0; h < H; h++)
                fab__wgmma_fence_regs(acc[h]);
            fab__wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < SM90_BK / 16; ks++) {
                const uint64_t db = TB ? desc_k_major(b_tile, 0, ks) : desc_mn_major(b_tile, 0, ks);
#pragma unroll
                for (int h = 0; h < H; h++) {
                    const int rb = PP ? h : cg; /* the tile's 64-row block */
                    const uint64_t da = TA ? desc_mn_major(a_tile, rb, ks) : desc_k_major(a_tile, 64 * rb, ks);
                    sm90_mma<T, BN, TA, !TB>::run(acc[h], da, db, kt > 0 || ks > 0); /* the first step overwrites */
                }
            }
            fab__wgmma_commit();
            fab__wgmma_wait<1>(); /* slice it-1's wgmma are done: its stage may be refilled */
            if (kt > 0 && lane == 0)
                fab__mbarrier_arrive(&empty[(it - 1) % STAGES]);
        }
        /* Ping-pong: the other warpgroup's turn, if it has a tile after this one; its
         * products run while this one's last drain and its epilogue runs */
        if (PP && blockIdx.x + (L + 1) * gridDim.x < ntiles) {
            if (cg == 0)
                fab__bar_arrive(SM90_TURN_BAR + 1, 256);
            else
                fab__bar_arrive(SM90_TURN_BAR, 256);
        }
        fab__wgmma_wait<0>();
#pragma unroll
        for (int h = 0; h < H; h++)
            fab__wgmma_fence_regs(acc[h]);
        if (ktiles > 0 && lane == 0) /* the tile's last slice: its stage goes to the next tile */
            fab__mbarrier_arrive(&empty[(it - 1) % STAGES]);

        /* epilogue: the warp's 16 rows of each row block, 64 columns at a time, through
         * its staging */
        void *Ct = (char *)C + t.oc * (int64_t)c_size;
        void *pt = pre ? (char *)pre + t.op * (int64_t)c_size : NULL;
#pragma unroll
        for (int h = 0; h < H; h++) {
            const int64_t row0 = (int64_t)t.m0 + 64 * (PP ? h : cg) + 16 * (warp % 4);
#pragma unroll
            for (int cc = 0; cc < BN / 64; cc++) {
#pragma unroll
                for (int j = 0; j < 8; j++)
#pragma unroll
                    for (int hh = 0; hh < 2; hh++)
                        fab__st_shared(reinterpret_cast<float2 *>(st + (gq + 8 * hh) * SM90_SROW + 8 * j + 2 * tq),
                                       make_float2(acc[h][4 * (8 * cc + j) + 2 * hh],
                                                   acc[h][4 * (8 * cc + j) + 2 * hh + 1]));
                __syncwarp();
                const int64_t col0 = (int64_t)t.n0 + 64 * cc;
                if (col0 >= g.n || row0 >= g.m)
                    break; /* chunks past n (and warps past m) store nothing */
                mm_epilogue_staged<T, 64, SM90_SROW>(g, st, lane, row0, col0, Ct, bias, pt);
                __syncwarp(); /* the staging is read before the next chunk overwrites it */
            }
        }
    }
#else
    __trap();
#endif
}

/* ---- host side ---- */

/* The map of a row-major matrix of `rows` x `cols` 16-bit values, row stride `ld`
 * elements, boxes of 64 columns x box_rows rows; with batch dimensions (nb > 0:
 * their shapes and element strides) a rank-5 map whose dimensions 2.. are the
 * batch's, padded with 1s. */
static inline bool encode_map(CUtensorMap *map, const void *base, bool bf16, int64_t rows, int64_t cols, int64_t ld,
                       int box_rows, int nb, const int64_t *shape, const int64_t *bstride)
{
    int64_t dims[5] = {cols, rows, 1, 1, 1}, strides[4] = {ld, 0, 0, 0};
    for (int j = 0; j < nb; j++) {
        dims[2 + j] = shape[j];
        strides[1 + j] = bstride[j];
    }
    return fab__tma_encode_16bit(map, base, bf16, nb ? 5 : 2, dims, strides, box_rows);
}

template <typename T, int BN, bool TA, bool TB, bool PP>
static fab_status launch(fab_context *ctx, const fab__mm_args *a)
{
    mm_geom g;
    mm_batch bt;
    mm_fill(a, &g, &bt);
    const bool bf16 = a->ab_dtype == FAB_DTYPE_BF16;
    CUtensorMap map_a, map_b;
    /* A: m x k (or k x m transposed), B: k x n (or n x k transposed), as stored */
    bool ok = TA ? encode_map(&map_a, a->a, bf16, a->k, a->m, a->lda, 64, a->nb, a->batch_shape, a->a_bstride)
                 : encode_map(&map_a, a->a, bf16, a->m, a->k, a->lda, SM90_BM, a->nb, a->batch_shape, a->a_bstride);
    ok = ok && (TB ? encode_map(&map_b, a->b, bf16, a->n, a->k, a->ldb, BN, a->nb, a->batch_shape, a->b_bstride)
                   : encode_map(&map_b, a->b, bf16, a->k, a->n, a->ldb, 64, a->nb, a->batch_shape, a->b_bstride));
    if (!ok) { /* the driver disagrees with fab__matmul_sm90_supports: say so once, run the sm80 kernel */
        static bool warned;
        if (!warned) {
            warned = true;
            fprintf(stderr, "fabriek: cuTensorMapEncodeTiled rejected a GEMM's operands; the sm80 kernel runs it\n");
        }
        return fab__matmul_sm80(ctx, a);
    }
    auto kernel = a->nb ? sm90_gemm<T, BN, TA, TB, true, PP> : sm90_gemm<T, BN, TA, TB, false, PP>;
    static signed char pool_ok[2] = {-1, -1}; /* unbatched, batched kernel */
    if (!fab__setmaxnreg_pool_ok((const void *)kernel, "sm90_gemm", SM90_THREADS,
                                 128 * (SM90_PRODUCER_REGS + 2 * SM90_CONSUMER_REGS), &pool_ok[a->nb != 0]))
        return fab__matmul_sm80(ctx, a);
    const int smem = sm90_cfg<BN>::SMEM;
    /* persistent: one block per SM (the shared memory allows no second), at most one
     * per tile; FAB_MATMUL_SM90_GRID=tiles launches one block per tile instead (the
     * same kernel then takes one tile a block: the benchmark's A/B of persistence) */
    const int64_t ntiles = ((a->m + SM90_BM - 1) / SM90_BM) * ((a->n + BN - 1) / BN) * a->batch;
    const char *grid_env = getenv("FAB_MATMUL_SM90_GRID");
    const bool per_tile = grid_env && !strcmp(grid_env, "tiles") && ntiles < ((int64_t)1 << 31);
    const int64_t sms = ctx->sm_count > 0 ? ctx->sm_count : 1;
    const int64_t blocks = per_tile || ntiles < sms ? ntiles : sms;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err == cudaSuccess && blocks > 0) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3((unsigned)blocks);
        cfg.blockDim = dim3(SM90_THREADS);
        cfg.dynamicSmemBytes = (size_t)smem;
        cfg.stream = (cudaStream_t)ctx->stream;
        err = cudaLaunchKernelEx(&cfg, kernel, map_a, map_b, a->c, a->bias, a->pre_act, g, bt, ntiles);
    }
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "fab_matmul: sm90_gemm launch failed: %s", cudaGetErrorString(err));
    return fab__cuda_check_launch("fab_matmul");
}

template <typename T, int BN, bool PP>
static fab_status launch_trans(fab_context *ctx, const fab__mm_args *a)
{
    if (a->trans_a)
        return a->trans_b ? launch<T, BN, true, true, PP>(ctx, a) : launch<T, BN, true, false, PP>(ctx, a);
    return a->trans_b ? launch<T, BN, false, true, PP>(ctx, a) : launch<T, BN, false, false, PP>(ctx, a);
}

/* One input dtype's instances (T: __nv_bfloat16 or __half), the body of
 * fab__matmul_sm90_<dtype> (matmul_sm90_<dtype>.cu): 128 x bn tiles (bn 128 or
 * 256) on the cooperative schedule, or 128 x 128 on the ping-pong one. */
template <typename T>
static fab_status sm90_run(fab_context *ctx, const fab__mm_args *a, int bn, bool pingpong)
{
    if (pingpong)
        return launch_trans<T, 128, true>(ctx, a);
    return bn == 256 ? launch_trans<T, 256, false>(ctx, a) : launch_trans<T, 128, false>(ctx, a);
}

#endif
