/*
 * attention_bwd_sm80.cuh: attention backward for sm_80 and later, two paths.
 *
 * Deterministic (ctx->deterministic != 0): no atomics; like the CPU backward,
 * every gradient element is summed by one warp in a fixed order, so the result is
 * bitwise repeatable, at the price of computing P and dS twice (7 tile products):
 *   dot kernel, dq kernel, dkdv kernel (below).
 * Fast (ctx->deterministic == 0, the default): FlashAttention-2's 5 tile
 * products: the dkdv kernel also forms dQ partials dS K for each query tile it
 * visits and adds them with f32 atomics into a zeroed f32 accumulator in scratch;
 * a convert kernel rounds that to dq's dtype. The order of the atomic adds varies
 * from run to run, so dq's low bits may too (dk, dv never: they are the same
 * on both paths; on sm_90 at head dims 64, 96 and 128 the dkdv and dq kernels are the
 * Hopper ones, attention_bwd_sm90.cu, with the same kernels around them).
 *   dot kernel, dkdv kernel with dQ atomics, convert kernel.
 *
 *  1. dot kernel:  D[row] = rowsum(dO * O) in f32, four threads per (row, head)
 *                  with 16-byte loads, into stream-ordered scratch (cudaMallocAsync).
 *  2. dq kernel:   one block of 4 warps per (64-query tile, query head, sequence),
 *                  shaped like the forward: each warp owns 16 query rows; per
 *                  64-key tile S = Q K^T and dP = dO V^T by mma.m16n8k16 (K, V
 *                  fragments by ldmatrix), P = exp2(s - lse), dS = P (dP - D)
 *                  ds/dx in registers, dQ += dS K (K by ldmatrix.trans), K/V tiles
 *                  double-buffered with cp.async. A warp skips the key tiles its
 *                  rows cannot see.
 *  3. dkdv kernel: one block of NW warps per (16 NW-key tile, kv head,
 *                  sequence), NW = 4 or 8 (dkdv_keys: 128-key blocks read each
 *                  query tile once for twice the keys and halve the dQ atomics);
 *                  each warp owns 16 keys and holds their dK, dV rows in f32
 *                  registers; it walks the query tiles of every query head of its
 *                  group (Q, dO, lse, D double-buffered with cp.async) computing
 *                  S^T = K Q^T and dP^T = V dO^T (keys as rows, so P^T and dS^T are
 *                  already A fragments), dV += P^T dO and dK += dS^T Q (dO, Q by
 *                  ldmatrix.trans). Fast path: dS^T also goes to shared memory,
 *                  and after a barrier each warp forms dQ for 16 query rows of the
 *                  tile, dS K over the block's keys (dS by ldmatrix.trans, K
 *                  from the resident K tile), in column chunks added to the
 *                  accumulator with atomics (16-byte red.global.add.v4.f32 on
 *                  sm_90 and later, after a lane-pair shuffle; 4-byte before).
 *                  A warp skips the 32 query rows that see none of its keys.
 *  4. convert kernel (fast path): dq = accumulator rounded to the input type.
 * Head dim 256 (bwd_cfg): the same kernels with other tile shapes, since a
 * warp's 16 keys of dK and dV over 256 columns would take 256 f32 registers per
 * thread. The dkdv grid gets a column dimension: blocks (key tile, half) with
 * half = 0, 1 each accumulate dK, dV (and on the fast path dQ partials) for
 * their 128 columns of D only (128 registers, as at 128), but form S^T and dP^T
 * over all 256 columns, so both halves compute them: per (query, key) pair the
 * dkdv kernel does 6 D-length products instead of 4 (S^T and dP^T twice, dV and
 * dK once), 7 instead of 5 with the fast path's dQ. End to end the fast path
 * does 7 products instead of 5 (+40 %), the deterministic one 9 instead of 7
 * (+29 %), and Q, dO stream past each key tile twice (from L2). Its query steps
 * are 32 rows (two stages of 32 x 256 Q and dO plus 64 x 256 K and V: 132.5 KiB,
 * 137.5 KiB with the fast path's dS^T, within an A100's 163 KiB). The dq kernel
 * takes 32-key tiles and reads its Q fragments from shared memory per tile, like
 * the forward at 256 (its dQ accumulators alone take 128 registers): 132 KiB.
 * ptxas (CUDA 13, sm_80 and sm_90a): no spills at any head dim; at 256 the dq
 * kernel takes 246 registers, the dkdv kernel 242-245.
 * GQA: a query head's dq only gets contributions from its own kv head's keys on
 * both paths (the dkdv block of kv head g walks exactly the query heads of g).
 * Numerics: f32 scores and accumulators; P and dS (scale and softcap derivative
 * included) are rounded to the input type for the products that consume them (as
 * FlashAttention); gradients rounded once. On the fast path dq is a sum of f32
 * per-key-tile partials (in a varying order) instead of one f32 chain.
 *
 * Files: this header has the kernels and their launches; attention_bwd_sm80.cu the
 * scratch and the dispatch by dtype; attention_bwd_sm80_{bf16,f16}.cu one dtype's
 * instances each (launch_all), so that a parallel build compiles them side by side.
 */
#ifndef FAB_ATTENTION_BWD_SM80_CUH
#define FAB_ATTENTION_BWD_SM80_CUH

#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include "../common/cuda_dtype.cuh"
#include "../common/ptx.cuh"
#include "attention.h"
#include "attention_sm80_common.cuh"

namespace {

const int BM = 64;  /* query rows per tile */
const int THREADS = 128;
const int DQ_CHUNK = 32; /* fast path: dQ columns per atomic pass (bounds the live registers) */

/* Tile shape per head dim (see the file comment). Up to 128: the dkdv block owns
 * all D columns of its 64 keys' dK and dV and takes 64-query steps; the dq kernel
 * takes 64-key tiles with Q fragments held in registers. 256: dK and dV of 16 keys
 * would be 256 f32 registers per thread, so the dkdv grid splits D into NDC = 2
 * column halves of DC = 128 (each block recomputes S^T and dP^T over all 256
 * columns) and steps over 32 queries at a time (two stages of Q and dO stay within
 * an A100's 163 KB of shared memory); the dq kernel takes 32-key tiles and reads Q
 * fragments from shared memory per tile, like the forward. */
template <int D> struct bwd_cfg {
    static const int DC = D > 128 ? 128 : D;    /* dK, dV columns per dkdv block */
    static const int NDC = D / DC;              /* column blocks per key tile */
    static const int QT = D > 128 ? 32 : 64;    /* queries per dkdv step */
    static const int BN_DQ = D > 128 ? 32 : 64; /* keys per dq-kernel tile */
    static const bool Q_REGS = D <= 128;        /* dq kernel: Q fragments in registers */
};

/* N floats [row0, row0 + n) of a row vector into smem (4-byte cp.async; zeros past
 * n), by a block of NT threads */
template <int N, int NT>
static __device__ __forceinline__ void load_vec(float *smem, const float *base, int row0, int n)
{
    for (int i = threadIdx.x; i < N; i += NT) {
        if (i < n)
            fab__cp_async_4(smem + i, base + row0 + i);
        else
            fab__cp_async_4_zfill(smem + i, base, 0);
    }
}

/* The dq kernel's dS = P (dP - D) ds/dx of one warp's 16 rows x BN keys, in place
 * of the scores sc. MASK: P = 0 where the mask forbids the key, past khi, or on
 * padding rows; without it (all allowed) the index arithmetic is skipped. */
template <int BN, bool MASK>
static __device__ __forceinline__ void dq_ds(const fab__attn_args &a, float (&sc)[BN / 8][4],
                                             const float (&dp)[BN / 8][4], int64_t kt, int64_t khi, int r_lo,
                                             int64_t sq, int64_t off, int t, const float (&lse2)[2],
                                             const float (&Dr)[2])
{
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float dsx, l2 = attn_logit2(a, sc[j][e], &dsx);
            float p = fab__ex2_approx(l2 - lse2[e >> 1]);
            if (MASK) {
                int64_t key = kt + j * 8 + 2 * t + (e & 1), row = r_lo + 8 * (e >> 1);
                p = key < khi && row < sq && attn_allowed(a, row, key, off) ? p : 0.0f;
            }
            sc[j][e] = p * (dp[j][e] - Dr[e >> 1]) * dsx;
        }
    }
}

/* The dk/dv kernel's P^T (into st) and dS^T (into dpt) of one warp's 16 keys x 32
 * queries (rows i0 + qh ..); cL, cD: lse and D of the step's rows. P = 0 where
 * the mask forbids the key or on padding rows and keys, tested only when `inside`
 * (warp-uniform) is false. (One copy with a uniform branch: two, as dq_ds, make
 * ptxas spill at head_dim 32.) */
static __device__ __forceinline__ void dkdv_p_ds(const fab__attn_args &a, bool inside, float (&st)[4][4],
                                                 float (&dpt)[4][4], int i0, int qh, int k_lo, int64_t sq,
                                                 int64_t sk, int64_t off, int t, const float *cL, const float *cD)
{
#pragma unroll
    for (int j = 0; j < 4; j++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int qi = qh + j * 8 + 2 * t + (e & 1);
            float dsx, l2 = attn_logit2(a, st[j][e], &dsx);
            float p = fab__ex2_approx(l2 - fab__ld_shared(cL + qi) * ATTN_L2E);
            if (!inside) {
                int64_t row = i0 + qi, key = k_lo + 8 * (e >> 1);
                p = row < sq && key < sk && attn_allowed(a, row, key, off) ? p : 0.0f;
            }
            st[j][e] = p;
            dpt[j][e] = p * (dpt[j][e] - fab__ld_shared(cD + qi)) * dsx;
        }
    }
}

/* ------------------------------------------------------------------ 1. D */

/* D[row] = rowsum(dO O) in f32. Thread mapping: DOT_TPR = 4 threads per (row, head),
 * each taking every 4th 16-byte chunk of 8 columns (together 64 contiguous bytes of
 * both rows per step), summed with two shuffles. The order is fixed, so D has the
 * same bits on every run and on both paths. */
const int DOT_TPR = 4, DOT_ROWS = THREADS / DOT_TPR;

template <typename T>
__global__ void __launch_bounds__(THREADS) attention_bwd_dot_kernel(const fab__attn_args a, float *Dbuf)
{
    const int b = blockIdx.z, h = blockIdx.y, part = threadIdx.x % DOT_TPR;
    const int row = blockIdx.x * DOT_ROWS + threadIdx.x / DOT_TPR;
    attn_seq s = attn_seq_of(a, b);
    float acc = 0;
    if (row < s.sq) {
        const T *o = (const T *)a.out.data + b * a.out.sb + (s.q0 + row) * a.out.ss + h * a.out.sh;
        const T *d = (const T *)a.dout.data + b * a.dout.sb + (s.q0 + row) * a.dout.ss + h * a.dout.sh;
        for (int c = 8 * part; c < (int)a.d; c += 8 * DOT_TPR) {
            const uint4 xo = *reinterpret_cast<const uint4 *>(o + c), xd = *reinterpret_cast<const uint4 *>(d + c);
            T vo[8], vd[8]; /* memcpy, not a cast: T may not alias uint4's words (the emulator's host */
            memcpy(vo, &xo, 16); /* compiler drops such reads); nvcc makes it register moves */
            memcpy(vd, &xd, 16);
#pragma unroll
            for (int e = 0; e < 8; e++)
                acc += fab__to_f32(vo[e]) * fab__to_f32(vd[e]);
        }
    }
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    acc += __shfl_xor_sync(0xffffffffu, acc, 2);
    if (row < s.sq && part == 0)
        Dbuf[b * a.lse_sb + h * a.lse_sh + s.q0 + row] = acc;
}

/* ----------------------------------------------------------------- 2. dq */

/* Idea: the query tile stays resident, BN_DQ-key tiles of K and V stream past
 * (see the file comment); deterministic path only. Thread mapping: warp w owns
 * query rows 16w..16w+15 of the tile; lane (g, t) holds rows g, g+8 and columns
 * 2t, 2t+1 of each 8-wide n-tile of S, dP and dQ. Q fragments stay in registers up
 * to D = 128; at 256 they are read from shared memory per key tile. Numerics: f32
 * S, dP, dQ; dS rounded to T for dS K; dQ summed over key tiles in order. */
template <typename T, int D>
__global__ void __launch_bounds__(THREADS) attention_bwd_dq_kernel(const fab__attn_args a, const float *Dbuf)
{
    typedef mma_of<T> M;
    const int BN = bwd_cfg<D>::BN_DQ;
    const bool QREG = bwd_cfg<D>::Q_REGS;
    FAB_DYNAMIC_SMEM(T, smem);
    T *sQ = smem, *sdO = sQ + BM * (D + 8), *sK = sdO + BM * (D + 8), *sV = sK + 2 * BN * (D + 8);
    const int b = blockIdx.z, h = blockIdx.y, m0 = attn_q_tile(a) * BM;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    attn_seq s = attn_seq_of(a, b);
    if (m0 >= s.sq)
        return;
    const int nq = s.sq - m0 < BM ? s.sq - m0 : BM;
    const int64_t off = s.sk - s.sq;
    const int kvh = h / (int)(a.hq / a.hkv);
    int64_t klo = 0, khi = s.sk;
    if (a.left >= 0 && m0 + off - a.left > klo)
        klo = m0 + off - a.left;
    if (a.right >= 0 && m0 + nq - 1 + off + a.right + 1 < khi)
        khi = m0 + nq - 1 + off + a.right + 1;
    const int ntiles = khi > klo ? (int)((khi - klo + BN - 1) / BN) : 0;

    const T *Q = (const T *)a.q.data + b * a.q.sb + s.q0 * a.q.ss + h * a.q.sh;
    const T *dO = (const T *)a.dout.data + b * a.dout.sb + s.q0 * a.dout.ss + h * a.dout.sh;
    const T *K = (const T *)a.k.data + b * a.k.sb + s.k0 * a.k.ss + kvh * a.k.sh;
    const T *V = (const T *)a.v.data + b * a.v.sb + s.k0 * a.v.ss + kvh * a.v.sh;
    attn_load_rows<T, D, THREADS>(sQ, Q, a.q.ss, m0, nq, BM);
    attn_load_rows<T, D, THREADS>(sdO, dO, a.dout.ss, m0, nq, BM);
    if (ntiles > 0)
        attn_kv_tile<T, D, BN, THREADS>(sK, sV, K, a.k.ss, V, a.v.ss, klo, khi);
    fab__cp_async_commit();

    const int r_lo = m0 + warp * 16 + g;
    float lse2[2], Dr[2];
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        int row = r_lo + 8 * hr;
        int64_t idx = b * a.lse_sb + h * a.lse_sh + s.q0 + row;
        lse2[hr] = row < s.sq ? a.lse[idx] * ATTN_L2E : 0.0f;
        Dr[hr] = row < s.sq ? Dbuf[idx] : 0.0f;
    }
    uint32_t qf[QREG ? D / 16 : 1][4];
    float dq[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; i++)
        dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0;

    for (int it = 0; it < ntiles; it++) {
        const int buf = it & 1;
        const int64_t kt = klo + (int64_t)it * BN;
        attn_kv_next<T, D, BN, THREADS>(sK, sV, K, a.k.ss, V, a.v.ss, buf, kt, khi, it + 1 < ntiles);
        __syncthreads();
        if constexpr (QREG) {
            if (it == 0)
                attn_load_q_frags<D>(qf, sQ, warp, lane);
        }
        const T *cK = sK + buf * BN * (D + 8), *cV = sV + buf * BN * (D + 8);
        /* a warp whose 16 rows see none of the tile's keys (causal diagonal, window
         * edges) has P = dS = 0 there: it skips the tile (no barrier inside) */
        const int64_t w_first = m0 + warp * 16, w_last = w_first + 15;
        if (attn_any_allowed(a, w_first, w_last, kt, kt + BN - 1, off)) {
            float sc[BN / 8][4], dp[BN / 8][4];
#pragma unroll
            for (int j = 0; j < BN / 8; j++)
                sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t dof[4], qs[4];
                fab__ldmatrix_x4(dof, attn_frag_a_ptr<D>(sdO, warp * 16, kk * 16, lane));
                if (!QREG)
                    fab__ldmatrix_x4(qs, attn_frag_a_ptr<D>(sQ, warp * 16, kk * 16, lane));
                const uint32_t(&qa)[4] = QREG ? qf[QREG ? kk : 0] : qs; /* Q: registers (<= 128) or smem */
#pragma unroll
                for (int j = 0; j < BN / 8; j += 2) {
                    uint32_t r[4];
                    fab__ldmatrix_x4(r, attn_frag_b_ptr<D>(cK, j * 8, kk * 16, lane));
                    uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                    M::run(sc[j], qa, b0);
                    M::run(sc[j + 1], qa, b1);
                    fab__ldmatrix_x4(r, attn_frag_b_ptr<D>(cV, j * 8, kk * 16, lane));
                    uint32_t c0[2] = {r[0], r[1]}, c1[2] = {r[2], r[3]};
                    M::run(dp[j], dof, c0);
                    M::run(dp[j + 1], dof, c1);
                }
            }
            /* dS = P (dP - D) ds/dx, in sc; the mask only where the warp's 16 rows and
             * this tile are not all real and allowed (warp-uniform) */
            if (w_last < s.sq && kt + BN <= khi && attn_all_allowed(a, w_first, w_last, kt, kt + BN - 1, off))
                dq_ds<BN, false>(a, sc, dp, kt, khi, r_lo, s.sq, off, t, lse2, Dr);
            else
                dq_ds<BN, true>(a, sc, dp, kt, khi, r_lo, s.sq, off, t, lse2, Dr);
            /* dQ += dS K */
            attn_mma_px<T, D, BN>(dq, sc, cK, lane);
        }
        __syncthreads();
    }

    T *dQ = (T *)a.dq.data + b * a.dq.sb + s.q0 * a.dq.ss + h * a.dq.sh;
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        int row = r_lo + 8 * hr;
        if (row >= s.sq)
            continue;
        T *dst = dQ + (int64_t)row * a.dq.ss;
#pragma unroll
        for (int i = 0; i < D / 8; i++)
            *reinterpret_cast<uint32_t *>(dst + i * 8 + 2 * t) = M::pack(dq[i][2 * hr], dq[i][2 * hr + 1]);
    }
}

/* --------------------------------------------------------------- 3. dk, dv */

/* Idea: keys stay resident, query tiles stream past (see the file comment).
 * Block of NW warps (key tile, column block dh, kv head, sequence): K and V of its
 * BN = 16 NW keys in all D columns (the products S^T = K Q^T and dP^T = V dO^T
 * reduce over all of D), dK and dV accumulated for columns [dh DC, dh DC + DC)
 * only; QT queries per step, in halves of 32 (fewer live registers). At D <= 128,
 * DC = D and one block per key tile; at D = 256 (NW = 4 only) two blocks per key
 * tile each recompute S^T and dP^T. Warp w owns keys 16w..16w+15; lane (g, t)
 * holds keys g, g+8 x columns 2t, 2t+1 of each 8-column n-tile of dK, dV.
 * DQ_ATOMIC (fast path): per query step, also dQ[QT x DC] += dS K over this block's
 * BN keys and DC columns, added to dqacc (f32, [lse row index][D]) with atomics.
 * Thread mapping of that part: QT/16 row groups of 16 query rows; the NW warps
 * split into those row groups and then into NW/(QT/16) column slices of DC; a
 * warp goes through its slice DQ_CHUNK (or 16) columns at a time; lane (g, t)
 * holds rows g, g+8 x columns 2t, 2t+1 of each n-tile and, with red.v4, swaps
 * half with lane t^1 so that each lane adds 4 adjacent columns of one row.
 * Numerics: the same dS (rounded to T) as the dK product, f32 partials. */
template <typename T, int D, bool DQ_ATOMIC, int NW>
__global__ void __launch_bounds__(32 * NW) attention_bwd_dkdv_kernel(const fab__attn_args a, const float *Dbuf,
                                                                     float *dqacc)
{
    typedef mma_of<T> M;
    const int QT = bwd_cfg<D>::QT, DC = bwd_cfg<D>::DC, NDC = bwd_cfg<D>::NDC;
    const int BN = 16 * NW, NT = 32 * NW; /* keys per block (16 per warp), threads */
    FAB_DYNAMIC_SMEM(T, smem);
    T *sK = smem, *sV = sK + BN * (D + 8), *sQ = sV + BN * (D + 8), *sdO = sQ + 2 * QT * (D + 8);
    float *sL = reinterpret_cast<float *>(sdO + 2 * QT * (D + 8)), *sD = sL + 2 * QT;
    T *sdS = reinterpret_cast<T *>(sD + 2 * QT); /* fast path: dS^T [BN keys x (QT+8)] */
    const int b = blockIdx.z, kvh = blockIdx.y, j0 = (blockIdx.x / NDC) * BN, dc0 = (blockIdx.x % NDC) * DC;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    attn_seq s = attn_seq_of(a, b);
    if (j0 >= s.sk)
        return;
    const int nk = s.sk - j0 < BN ? s.sk - j0 : BN;
    const int64_t off = s.sk - s.sq;
    int64_t ilo; /* query rows that can see keys j0 .. j0+nk-1, in whole steps */
    const int nqt = attn_bwd_query_tiles(a, s.sq, off, j0, nk, QT, &ilo);
    const int group = (int)(a.hq / a.hkv);
    const int nit = nqt * group; /* (query head, query step) pairs, head-major */

    const T *K = (const T *)a.k.data + b * a.k.sb + s.k0 * a.k.ss + kvh * a.k.sh;
    const T *V = (const T *)a.v.data + b * a.v.sb + s.k0 * a.v.ss + kvh * a.v.sh;
    attn_load_rows<T, D, NT>(sK, K, a.k.ss, j0, nk, BN);
    attn_load_rows<T, D, NT>(sV, V, a.v.ss, j0, nk, BN);

    /* issues the loads of pair `it` into buffer `buf` (at D = 32 in plain order:
     * see attn_load_rows) */
    constexpr bool PAIR = D != 32;
#define FAB__LOAD_PAIR(it, buf)                                                                                     \
    do {                                                                                                            \
        int h_ = kvh * group + (it) / nqt;                                                                          \
        int i0_ = (int)(ilo + (int64_t)((it) % nqt) * QT), n_ = s.sq - i0_ < QT ? s.sq - i0_ : QT;                  \
        attn_load_rows<T, D, NT, PAIR>(sQ + (buf) * QT * (D + 8),                                                   \
                                      (const T *)a.q.data + b * a.q.sb + s.q0 * a.q.ss + h_ * a.q.sh, a.q.ss, i0_,  \
                                      n_, QT);                                                                      \
        attn_load_rows<T, D, NT, PAIR>(sdO + (buf) * QT * (D + 8),                                                  \
                                      (const T *)a.dout.data + b * a.dout.sb + s.q0 * a.dout.ss + h_ * a.dout.sh,   \
                                      a.dout.ss, i0_, n_, QT);                                                      \
        const int64_t lb_ = b * a.lse_sb + h_ * a.lse_sh + s.q0;                                                    \
        load_vec<QT, NT>(sL + (buf) * QT, a.lse + lb_, i0_, n_);                                                    \
        load_vec<QT, NT>(sD + (buf) * QT, Dbuf + lb_, i0_, n_);                                                     \
    } while (0)

    if (nit > 0)
        FAB__LOAD_PAIR(0, 0);
    fab__cp_async_commit();

    float dk[DC / 8][4], dv[DC / 8][4];
#pragma unroll
    for (int i = 0; i < DC / 8; i++)
        dk[i][0] = dk[i][1] = dk[i][2] = dk[i][3] = dv[i][0] = dv[i][1] = dv[i][2] = dv[i][3] = 0;
    const int k_lo = j0 + warp * 16 + g; /* keys of this lane: k_lo, k_lo + 8 */

    for (int it = 0; it < nit; it++) {
        const int buf = it & 1;
        const int i0 = (int)(ilo + (int64_t)(it % nqt) * QT);
        if (it + 1 < nit) {
            FAB__LOAD_PAIR(it + 1, buf ^ 1);
            fab__cp_async_commit();
            fab__cp_async_wait<1>();
        } else {
            fab__cp_async_wait<0>();
        }
        __syncthreads();
        const T *cQ = sQ + buf * QT * (D + 8), *cdO = sdO + buf * QT * (D + 8);
        const float *cL = sL + buf * QT, *cD = sD + buf * QT;

        /* halves of 32 queries: S^T = K Q^T and dP^T = V dO^T over all D columns
         * (16 keys x 32 queries per warp), then P^T, dS^T, and dV += P^T dO,
         * dK += dS^T Q over this block's DC columns (dO, Q by ldmatrix.trans) */
#pragma unroll 1
        for (int half = 0; half < QT / 32; half++) {
            const int qh = half * 32;
            const int64_t w_k0 = j0 + warp * 16, r0 = i0 + qh;
            if (!attn_any_allowed(a, r0, r0 + 31, w_k0, w_k0 + 15, off)) {
                /* none of the 32 rows sees the warp's 16 keys (causal diagonal, window
                 * edges): P = dS = 0 adds nothing to dK, dV; dQ's dS^T block is 0 */
                if (DQ_ATOMIC) { /* half-warps on rows r and r + 4: (QT + 8)-rows of 36 or 20 words
                                  * put those 4 x 36 or 4 x 20 = 16 banks apart, so 32 banks per store */
                    for (int i = 0; i < 8; i++)
                        fab__st_shared(reinterpret_cast<uint32_t *>(sdS + (warp * 16 + (i & 3) + 8 * (i >> 2) +
                                                                           4 * (lane >> 4)) * (QT + 8) +
                                                                    qh + 2 * (lane & 15)),
                                       0u);
                }
                continue;
            }
            float st[4][4], dpt[4][4];
#pragma unroll
            for (int j = 0; j < 4; j++)
                st[j][0] = st[j][1] = st[j][2] = st[j][3] = dpt[j][0] = dpt[j][1] = dpt[j][2] = dpt[j][3] = 0;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t kf[4], vf[4];
                int m = lane / 8;
                fab__ldmatrix_x4(kf, sK + (warp * 16 + lane % 8 + 8 * (m & 1)) * (D + 8) + kk * 16 + 8 * (m >> 1));
                fab__ldmatrix_x4(vf, sV + (warp * 16 + lane % 8 + 8 * (m & 1)) * (D + 8) + kk * 16 + 8 * (m >> 1));
#pragma unroll
                for (int j = 0; j < 4; j += 2) {
                    uint32_t r[4];
                    fab__ldmatrix_x4(r, cQ + (qh + j * 8 + 8 * (m >> 1) + lane % 8) * (D + 8) + kk * 16 + 8 * (m & 1));
                    uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                    M::run(st[j], kf, b0);
                    M::run(st[j + 1], kf, b1);
                    fab__ldmatrix_x4(r, cdO + (qh + j * 8 + 8 * (m >> 1) + lane % 8) * (D + 8) + kk * 16 + 8 * (m & 1));
                    uint32_t c0[2] = {r[0], r[1]}, c1[2] = {r[2], r[3]};
                    M::run(dpt[j], vf, c0);
                    M::run(dpt[j + 1], vf, c1);
                }
            }
            /* P^T into st, dS^T into dpt; the mask only where this warp's 16 keys and
             * the 32 rows are not all real and allowed (warp-uniform) */
            /* (not at head_dim 32: there ptxas holds the fast path at 128 registers and
             * the extra branch makes it spill) */
            const bool inside = D > 32 && r0 + 31 < s.sq && w_k0 + 15 < s.sk &&
                                attn_all_allowed(a, r0, r0 + 31, w_k0, w_k0 + 15, off);
            dkdv_p_ds(a, inside, st, dpt, i0, qh, k_lo, s.sq, s.sk, off, t, cL, cD);
#pragma unroll
            for (int kk = 0; kk < 2; kk++) {
                uint32_t pa[4], sa[4];
                attn_pack_a<T>(pa, st[2 * kk], st[2 * kk + 1]);
                attn_pack_a<T>(sa, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
                for (int dn = 0; dn < DC / 8; dn += 2) {
                    uint32_t r[4];
                    int m = lane / 8;
                    const int qrow = qh + kk * 16 + lane % 8 + 8 * (m & 1);
                    fab__ldmatrix_x4_trans(r, cdO + qrow * (D + 8) + dc0 + dn * 8 + 8 * (m >> 1));
                    uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                    M::run(dv[dn], pa, b0);
                    M::run(dv[dn + 1], pa, b1);
                    fab__ldmatrix_x4_trans(r, cQ + qrow * (D + 8) + dc0 + dn * 8 + 8 * (m >> 1));
                    uint32_t c0[2] = {r[0], r[1]}, c1[2] = {r[2], r[3]};
                    M::run(dk[dn], sa, c0);
                    M::run(dk[dn + 1], sa, c1);
                }
                if (DQ_ATOMIC) { /* dS^T rows k_lo, k_lo + 8, queries 2t, 2t+1 of each n-tile */
#pragma unroll
                    for (int r = 0; r < 4; r++)
                        fab__st_shared(reinterpret_cast<uint32_t *>(sdS + (warp * 16 + g + 8 * (r & 1)) * (QT + 8) +
                                                                    qh + kk * 16 + 8 * (r >> 1) + 2 * t),
                                       sa[r]);
                }
            }
        }
        if (DQ_ATOMIC) {
            __syncthreads(); /* every warp's dS^T in sdS */
            /* row groups of 16 query rows; warps per row group; columns per warp and per pass */
            const int RG = QT / 16, WR = NW / RG, CW = DC / WR, CH = CW % DQ_CHUNK == 0 ? DQ_CHUNK : 16;
            const int h = kvh * group + it / nqt;
            float *acc_base = dqacc + (b * a.lse_sb + h * a.lse_sh + s.q0 + i0) * (int64_t)D;
            const int q16 = (warp % RG) * 16, qrow = q16 + g; /* step rows qrow, qrow + 8 */
            const int cw0 = dc0 + (warp / RG) * CW;
            /* rows that see none of the block's keys get dQ partials of 0: no adds */
            const bool sees = attn_any_allowed(a, i0 + q16, i0 + q16 + 15, j0, j0 + BN - 1, off);
#pragma unroll 1
            for (int c0 = cw0; sees && c0 < cw0 + CW; c0 += CH) {
                float acc[CH / 8][4];
#pragma unroll
                for (int i = 0; i < CH / 8; i++)
                    acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0;
#pragma unroll
                for (int kk = 0; kk < BN / 16; kk++) {
                    uint32_t da[4];
                    fab__ldmatrix_x4_trans(da, attn_frag_b_ptr<QT>(sdS, kk * 16, q16, lane));
#pragma unroll
                    for (int dn = 0; dn < CH / 8; dn += 2) {
                        uint32_t r[4];
                        fab__ldmatrix_x4_trans(r, attn_frag_a_ptr<D>(sK, kk * 16, c0 + dn * 8, lane));
                        uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                        M::run(acc[dn], da, b0);
                        M::run(acc[dn + 1], da, b1);
                    }
                }
#if FAB_HAVE_RED_V4
                /* lanes t, t^1 swap halves: even t then holds row qrow, columns
                 * 2t..2t+3 of each n-tile, odd t row qrow + 8, columns 2t-2..2t+1:
                 * one 16-byte red per n-tile instead of four 4-byte atomics */
                const int odd = t & 1, row = qrow + 8 * odd;
                float *dst = acc_base + (int64_t)row * D + c0 + 2 * (t - odd);
#pragma unroll
                for (int i = 0; i < CH / 8; i++) {
                    float x0 = __shfl_xor_sync(0xffffffffu, odd ? acc[i][0] : acc[i][2], 1);
                    float x1 = __shfl_xor_sync(0xffffffffu, odd ? acc[i][1] : acc[i][3], 1);
                    if (i0 + row < s.sq) {
                        if (odd)
                            fab__red_add_v4_f32(dst + i * 8, x0, x1, acc[i][2], acc[i][3]);
                        else
                            fab__red_add_v4_f32(dst + i * 8, acc[i][0], acc[i][1], x0, x1);
                    }
                }
#else
#pragma unroll
                for (int hr = 0; hr < 2; hr++) {
                    if (i0 + qrow + 8 * hr >= s.sq)
                        continue;
                    float *dst = acc_base + (int64_t)(qrow + 8 * hr) * D + c0 + 2 * t;
#pragma unroll
                    for (int i = 0; i < CH / 8; i++) {
                        atomicAdd(dst + i * 8, acc[i][2 * hr]);
                        atomicAdd(dst + i * 8 + 1, acc[i][2 * hr + 1]);
                    }
                }
#endif
            }
        }
        __syncthreads();
    }
#undef FAB__LOAD_PAIR
    if (nit == 0)
        fab__cp_async_wait<0>();

    T *dK = (T *)a.dk.data + b * a.dk.sb + s.k0 * a.dk.ss + kvh * a.dk.sh + dc0;
    T *dV = (T *)a.dv.data + b * a.dv.sb + s.k0 * a.dv.ss + kvh * a.dv.sh + dc0;
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        int key = k_lo + 8 * hr;
        if (key >= s.sk)
            continue;
        T *dkr = dK + (int64_t)key * a.dk.ss, *dvr = dV + (int64_t)key * a.dv.ss;
#pragma unroll
        for (int i = 0; i < DC / 8; i++) {
            *reinterpret_cast<uint32_t *>(dkr + i * 8 + 2 * t) = M::pack(dk[i][2 * hr], dk[i][2 * hr + 1]);
            *reinterpret_cast<uint32_t *>(dvr + i * 8 + 2 * t) = M::pack(dv[i][2 * hr], dv[i][2 * hr + 1]);
        }
    }
}

/* ------------------------------------------------------- 4. dq convert */

/* Fast path: dq = dqacc rounded once to T (dS already carries the scale and the
 * softcap derivative). One thread per 8 columns of a (row, head): two 16-byte
 * loads, one 16-byte store; consecutive threads take consecutive chunks of a row. */
template <typename T, int D>
__global__ void __launch_bounds__(THREADS) attention_bwd_dq_convert_kernel(const fab__attn_args a, const float *dqacc)
{
    typedef mma_of<T> M;
    const int b = blockIdx.z, h = blockIdx.y;
    const int c = blockIdx.x * THREADS + threadIdx.x, row = c / (D / 8), col = (c % (D / 8)) * 8;
    attn_seq s = attn_seq_of(a, b);
    if (row >= s.sq)
        return;
    const float4 *src =
        reinterpret_cast<const float4 *>(dqacc + (b * a.lse_sb + h * a.lse_sh + s.q0 + row) * (int64_t)D + col);
    float4 x = src[0], y = src[1];
    uint4 o;
    o.x = M::pack(x.x, x.y), o.y = M::pack(x.z, x.w), o.z = M::pack(y.x, y.y), o.w = M::pack(y.z, y.w);
    T *dst = (T *)a.dq.data + b * a.dq.sb + (s.q0 + row) * a.dq.ss + h * a.dq.sh + col;
    *reinterpret_cast<uint4 *>(dst) = o;
}

/* Shared memory of the dkdv kernel with NW warps (16 NW keys) */
template <typename T, int D>
static size_t dkdv_smem(int nw, bool dq_atomic)
{
    typedef bwd_cfg<D> C;
    const size_t bn = 16 * (size_t)nw;
    return (2 * bn + 4 * C::QT) * (D + 8) * sizeof(T) + 4 * C::QT * sizeof(float) +
           (dq_atomic ? bn * (C::QT + 8) * sizeof(T) : 0);
}

/* Keys per dkdv block, 64 (4 warps) or 128 (8 warps). 128 reads each query
 * tile's Q, dO, lse and D once for twice the keys, and on the fast path adds each
 * dQ element of a query step with half the atomics; at ~240 registers per thread
 * either way one 8-warp block or two 4-warp blocks fill an SM. So 128 wherever it
 * fits shared memory (head_dim <= 128; 155 KiB at 128) and the grid still has a
 * block per SM; 64 for smaller grids and at 256. FAB_ATTN_BWD_KEYS=64 or 128
 * forces one where it fits (the benchmark's A/B). */
template <typename T, int D>
static int dkdv_keys(const fab_context *ctx, const fab__attn_args *a)
{
    if (D > 128 || dkdv_smem<T, D>(8, !a->deterministic) > (size_t)ctx->smem_optin)
        return 64;
    const char *env = getenv("FAB_ATTN_BWD_KEYS");
    if (env && (!strcmp(env, "64") || !strcmp(env, "128")))
        return atoi(env);
    int64_t blocks = a->batch * a->hkv * ((a->sk + 127) / 128);
    return blocks >= (int64_t)ctx->sm_count ? 128 : 64;
}

/* The dkdv kernel, fast path (dqacc set) or deterministic, with NW warps */
template <typename T, int D, int NW>
static cudaError_t launch_dkdv(fab_context *ctx, const fab__attn_args *a, const float *Dbuf, float *dqacc)
{
    const int bn = 16 * NW;
    const dim3 grid((unsigned)((a->sk + bn - 1) / bn * bwd_cfg<D>::NDC), (unsigned)a->hkv, (unsigned)a->batch);
    if (dqacc)
        return attn_launch(ctx, attention_bwd_dkdv_kernel<T, D, true, NW>, grid, 32 * NW,
                          dkdv_smem<T, D>(NW, true), *a, Dbuf, dqacc);
    return attn_launch(ctx, attention_bwd_dkdv_kernel<T, D, false, NW>, grid, 32 * NW, dkdv_smem<T, D>(NW, false),
                      *a, Dbuf, dqacc);
}

/* Deterministic: dq kernel, then dkdv. Fast (dqacc set, zeroed): dkdv with dQ
 * atomics, then the convert kernel. */
template <typename T, int D>
static cudaError_t launch_grads(fab_context *ctx, const fab__attn_args *a, const float *Dbuf, float *dqacc)
{
    typedef bwd_cfg<D> C;
    const size_t dq_smem = (size_t)(2 * BM + 4 * C::BN_DQ) * (D + 8) * sizeof(T);
    cudaError_t err = cudaSuccess;
    /* on sm_90 at head dims 64, 96 and 128, the Hopper dq and dK/dV kernels (attention_bwd_sm90.cu) */
    const bool sm90 = fab__attention_bwd_sm90_supports(ctx, a);
    bool hopper_dq = false, hopper_dkdv = false;
    if (!dqacc && a->sq > 0 && sm90)
        err = (cudaError_t)fab__attention_bwd_dq_sm90(ctx, a, Dbuf, &hopper_dq);
    if (err == cudaSuccess && !dqacc && a->sq > 0 && !hopper_dq) /* a grid of 0 blocks is an invalid launch */
        err = attn_launch(ctx, attention_bwd_dq_kernel<T, D>,
                         dim3((unsigned)((a->sq + BM - 1) / BM), (unsigned)a->hq, (unsigned)a->batch), THREADS,
                         dq_smem, *a, Dbuf);
    if (err == cudaSuccess && sm90)
        err = (cudaError_t)fab__attention_bwd_dkdv_sm90(ctx, a, Dbuf, dqacc, &hopper_dkdv);
    if (err == cudaSuccess && !hopper_dkdv) {
        if constexpr (D <= 128)
            err = dkdv_keys<T, D>(ctx, a) == 128 ? launch_dkdv<T, D, 8>(ctx, a, Dbuf, dqacc)
                                                 : launch_dkdv<T, D, 4>(ctx, a, Dbuf, dqacc);
        else
            err = launch_dkdv<T, D, 4>(ctx, a, Dbuf, dqacc);
    }
    if (err == cudaSuccess && dqacc && a->sq > 0)
        err = attn_launch(ctx, attention_bwd_dq_convert_kernel<T, D>,
                         dim3((unsigned)((a->sq * (D / 8) + THREADS - 1) / THREADS), (unsigned)a->hq,
                              (unsigned)a->batch),
                         THREADS, 0, *a, (const float *)dqacc);
    return err;
}

template <typename T>
static cudaError_t launch_all(fab_context *ctx, const fab__attn_args *a, float *Dbuf, float *dqacc)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)((a->sq + DOT_ROWS - 1) / DOT_ROWS), (unsigned)a->hq, (unsigned)a->batch);
    cfg.blockDim = dim3(THREADS);
    cfg.stream = (cudaStream_t)ctx->stream;
    cudaError_t err = a->sq > 0 ? cudaLaunchKernelEx(&cfg, attention_bwd_dot_kernel<T>, *a, Dbuf) : cudaSuccess;
    if (err != cudaSuccess)
        return err;
    switch (a->d) {
    case 32: return launch_grads<T, 32>(ctx, a, Dbuf, dqacc);
    case 64: return launch_grads<T, 64>(ctx, a, Dbuf, dqacc);
    case 96: return launch_grads<T, 96>(ctx, a, Dbuf, dqacc);
    case 128: return launch_grads<T, 128>(ctx, a, Dbuf, dqacc);
    default: return launch_grads<T, 256>(ctx, a, Dbuf, dqacc);
    }
}

} // namespace

/* One input dtype's kernels, after D and the zeroed dq accumulator (dqacc, NULL
 * when deterministic) are in scratch (attention_bwd_sm80_<dtype>.cu). */
cudaError_t fab__attention_bwd_sm80_bf16(fab_context *ctx, const fab__attn_args *a, float *Dbuf, float *dqacc);
cudaError_t fab__attention_bwd_sm80_f16(fab_context *ctx, const fab__attn_args *a, float *Dbuf, float *dqacc);

#endif
