/*
 * gemm_kernels.cuh -- a tiled bf16 GEMM on tensor cores, the emulator's end-to-end test.
 *
 *   C[M,N] (f32) = A[M,K] (bf16, row-major) * B[K,N] (bf16, row-major)
 *
 * Idea: a 128-thread block computes a 64x64 tile of C; its 4 warps (2x2) own 32x32 each,
 * i.e. 2x4 mma.m16n8k16 tiles.  K advances in steps of 32 through a 3-stage cp.async
 * pipeline in shared memory: while the warps multiply stage s, the copies of the tiles two
 * steps ahead are in flight.  Fragments come from shared memory with ldmatrix: A with
 * .x4 (one 16x16 A fragment), B with .x4.trans (two 16x8 B fragments; the smem tile is
 * [k][n], the mma wants B fragments by column, hence the transpose).  Rows of A past M
 * and columns of B past N are zero-filled by cp.async's src-size form; stores are guarded.
 * Requires K % 32 == 0 and N % 8 == 0.  Smem rows are padded by 8 elements (16 bytes)
 * to spread ldmatrix rows over banks while keeping them 16-byte aligned.
 *
 * PlantedRace = true drops the __syncthreads at the top of the k loop (a planted bug:
 * stage reuse and cp.async visibility are no longer ordered); the race check must see it.
 */
#pragma once
#include "../../../kernels/common/ptx.cuh"

namespace gemm {
constexpr int BM = 64, BN = 64, BK = 32, STAGES = 3;
constexpr int AS = BK + 8; /* A smem row stride (elements) */
constexpr int BS = BN + 8; /* B smem row stride */
constexpr int SMEM_BYTES = STAGES * (BM * AS + BK * BS) * 2;
} // namespace gemm

/* Issue the cp.async copies of k-tile kt into pipeline stage `stage` (2 x 16 B of A and of B per thread). */
static __device__ __forceinline__ void gemm_load_tile(const __nv_bfloat16 *A, const __nv_bfloat16 *B,
                                                      __nv_bfloat16 *As, __nv_bfloat16 *Bs, int M, int N, int K,
                                                      int m0, int n0, int kt, int stage, int tid)
{
    using namespace gemm;
#pragma unroll
    for (int i = tid; i < BM * BK / 8; i += 128) { /* A: 64 rows x 4 chunks of 8 */
        int row = i / 4, ch = i % 4;
        int gm = m0 + row, gk = kt * BK + ch * 8;
        bool ok = gm < M;
        fab__cp_async_16_zfill(&As[(stage * BM + row) * AS + ch * 8], ok ? A + (size_t)gm * K + gk : A, ok ? 16 : 0);
    }
#pragma unroll
    for (int i = tid; i < BK * BN / 8; i += 128) { /* B: 32 rows x 8 chunks of 8 */
        int row = i / 8, ch = i % 8;
        int gk = kt * BK + row, gn = n0 + ch * 8;
        bool ok = gn < N;
        fab__cp_async_16_zfill(&Bs[(stage * BK + row) * BS + ch * 8], ok ? B + (size_t)gk * N + gn : B, ok ? 16 : 0);
    }
}

template <bool PlantedRace>
__global__ void __launch_bounds__(128, 1) k_gemm_bf16(const __nv_bfloat16 *A, const __nv_bfloat16 *B, float *C, int M,
                                                   int N, int K)
{
    using namespace gemm;
    FAB_DYNAMIC_SMEM(__nv_bfloat16, smem);
    __nv_bfloat16 *As = smem;                     /* [STAGES][BM][AS] */
    __nv_bfloat16 *Bs = smem + STAGES * BM * AS;  /* [STAGES][BK][BS] */
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
    const int KT = K / BK;
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    /* prologue: two tiles in flight */
    gemm_load_tile(A, B, As, Bs, M, N, K, m0, n0, 0, 0, tid);
    fab__cp_async_commit();
    if (KT > 1) gemm_load_tile(A, B, As, Bs, M, N, K, m0, n0, 1, 1, tid);
    fab__cp_async_commit();

    for (int kt = 0; kt < KT; ++kt) {
        /* tile kt landed (this thread's copies) ... */
        fab__cp_async_wait<1>();
        /* ... and everyone's copies landed, and everyone finished reading stage (kt+2)%3 */
        if (!PlantedRace) __syncthreads();
        if (kt + 2 < KT) gemm_load_tile(A, B, As, Bs, M, N, K, m0, n0, kt + 2, (kt + 2) % STAGES, tid);
        fab__cp_async_commit(); /* possibly empty: keeps one group per iteration */
        const int s = kt % STAGES;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            uint32_t af[2][4], bf[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                /* matrices: (rows 0-7 | 8-15) x (k 0-7 | 8-15), lane 8m+r gives row r of matrix m */
                int row = wm + mi * 16 + (lane % 8) + 8 * ((lane / 8) & 1);
                int col = kk + 8 * (lane / 16);
                fab__ldmatrix_x4(af[mi], &As[(s * BM + row) * AS + col]);
            }
#pragma unroll
            for (int nj2 = 0; nj2 < 2; ++nj2) {
                /* matrices: (k 0-7 | 8-15) x (n 0-7 | 8-15); .trans gives B fragments b0,b1 per n8 tile */
                int k = kk + (lane % 8) + 8 * ((lane / 8) & 1);
                int n = wn + nj2 * 16 + 8 * (lane / 16);
                uint32_t r[4];
                fab__ldmatrix_x4_trans(r, &Bs[(s * BK + k) * BS + n]);
                bf[2 * nj2][0] = r[0];
                bf[2 * nj2][1] = r[1];
                bf[2 * nj2 + 1][0] = r[2];
                bf[2 * nj2 + 1][1] = r[3];
            }
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int nj = 0; nj < 4; ++nj) fab__mma_m16n8k16_bf16(acc[mi][nj], af[mi], bf[nj], acc[mi][nj]);
        }
    }
    fab__cp_async_wait<0>();

    /* epilogue: c[r] is row lane/4 + 8*(r/2), column 2*(lane%4) + r%2 of the 16x8 tile */
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int nj = 0; nj < 4; ++nj)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                int row = m0 + wm + mi * 16 + lane / 4 + 8 * (r / 2);
                int col = n0 + wn + nj * 8 + 2 * (lane % 4) + r % 2;
                if (row < M && col < N) C[(size_t)row * N + col] = acc[mi][nj][r];
            }
}

/* mma throughput probe: each warp runs `iters` dependent mma.sync on registers. */
__global__ void k_mma_loop(float *out, int iters)
{
    uint32_t a[4] = {0x3f803f80u, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u}; /* bf16 1.0 pairs */
    uint32_t b[2] = {0x3c003c00u, 0x3c003c00u};                         /* bf16 ~0.0078 pairs */
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    for (int i = 0; i < iters; ++i) fab__mma_m16n8k16_bf16(c, a, b, c);
    out[blockIdx.x * blockDim.x + threadIdx.x] = c[0] + c[1] + c[2] + c[3];
}
