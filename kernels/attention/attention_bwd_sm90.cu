/*
 * attention_bwd_sm90.cu: the backward's kernels for Hopper (sm_90a), head dims 64,
 * 96 and 128 (96 as 128 with zeros, as the forward: attn_sm90_kernel_d), bf16/f16,
 * with the sm80 kernels' algorithms and features (causal, windows, softcap, GQA,
 * varlen) on TMA loads and wgmma: the dK/dV kernel, with dQ atomics (DQ, the fast
 * path) or without (deterministic mode), and deterministic mode's dq kernel (below
 * the dK/dV kernel). The sm80 file's dot kernel (D =
 * rowsum(dO O)) and, on the fast path, dq accumulator and convert kernel run around
 * them (attention_bwd_sm80.cuh, launch_grads). dK and dV are the same arithmetic on
 * both paths, so bitwise equal between them.
 *
 * Idea: one block of 3 warpgroups per (128-key tile, kv head, sequence); the keys'
 * K and V stay resident and the (query head of the group, 64-query tile) pairs whose
 * rows can see them stream past in a 2-stage ring. Warpgroup 0 is the producer
 * (setmaxnreg 24): thread 0 TMA-loads K and V once, then Q and dO of each pair; warp
 * 1 writes the pair's lse (log2 units, +inf past the sequence) and D (0 there) into
 * the stage. Warpgroups 1 and 2 (setmaxnreg 240) each own 64 keys and per pair:
 *   S^T = K Q^T and dP^T = V dO^T        wgmma.m64n64k16, ss, both K-major
 *   P^T = exp2(logit - lse), masked       registers (keys are rows: P^T, dS^T are
 *   dV += P^T dO                          already A fragments), rs, dO MN-major
 *   dS^T = P^T (dP^T - D) ds/dx           registers, and into shared memory (sdS)
 *   dK += dS^T Q                          rs, Q MN-major
 *   dQ[64 x D/2] = dS K over all 128 keys ss, dS^T read MN-major (a transposed A),
 *                                         K MN-major; each warpgroup its D/2 columns
 * then dQ goes to the f32 accumulator with 16-byte red.global.add (without DQ: no
 * sdS, no dQ product, no barrier). P^T's math runs
 * while dP^T is in flight, dS^T's while dV's product is.
 * Both warpgroups walk every pair of the block (masked elements give P = 0): the
 * control flow around wgmma stays uniform, which ptxas needs to keep it asynchronous.
 *
 * Shared memory, 1024-byte aligned, each operand a set of TMA boxes of 64 head-dim
 * values (128 bytes, 128-byte swizzle) x rows: K, V [D/64][128 keys]; per stage Q,
 * dO [D/64][64 rows], lse and D [64]; sdS two buffers of [128 keys][64 queries]
 * (a key's 64 queries are one 128-byte row, stored with the same swizzle: 16-byte
 * unit u of row r at unit u ^ (r % 8)), double-buffered so that one named barrier
 * per pair suffices. 163 KiB at D = 128, 99 KiB at 64 (with the 1 KiB for alignment).
 * At D = 64, K alone is two boxes of 32 dims (64 bytes, 64-byte swizzle) x 128 keys:
 * each warpgroup's dQ B is then one whole box, a canonical MN-major layout (one
 * swizzle atom wide), where with K in one 128-byte box the second warpgroup's
 * descriptor would start 64 bytes into a swizzle row, which no canonical layout
 * does. S^T = K Q^T reads K's two boxes as K-major with the 64-byte swizzle.
 *
 * Thread mapping: consumer warpgroup c, warp w, lane 4g + t holds keys 64c + 16w + g
 * and + 8 of the tile; s[4j + 2i + b] of S^T / dP^T is (key g + 8i, query 8j + 2t + b),
 * dk[4j + 2i + b], dv[..] (key g + 8i, dim 8j + 2t + b); dQ (query 16w + g + 8i,
 * dim D/2 c + 8j + 2t + b). The red.add pairs lanes t, t^1 as in the sm80 kernel.
 *
 * Numerics: as the sm80 kernel: f32 S, dP and accumulators; P and dS (scale and
 * softcap derivative included) rounded to the input type for the products; dK, dV
 * rounded once; dQ a sum of f32 partials per key tile, in a varying order.
 *
 * Requirements (fab__attention_bwd_sm90_supports): head dim 64, 96 or 128, and the
 * Hopper forward's others for q, k, v, and dout too. FAB_ATTN_SM90=0 turns it off.
 */
#include <cuda.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/cuda_dtype.cuh"
#include "../common/ptx.cuh"
#include "../common/tma_host.cuh"
#include "attention.h"
#include "attention_sm80_common.cuh"
#include "attention_sm90_common.cuh"

#if !FAB__SM90A_BODY /* the kernels' bodies are left out of this pass (tma_host.cuh), so the
                     * helpers and constants only they use go unreferenced */
#pragma nv_diag_suppress 177
#endif

namespace {

const int KB = 128, QT = 64, STAGES = 2, THREADS = 384, CONSUMER_WARPS = 8;
const int PRODUCER_REGS = 24, CONSUMER_REGS = 240;
/* the registers a block holds after setmaxnreg (the whole 384 x 168 pool) */
const int SETMAXNREG_SPLIT = 128 * (PRODUCER_REGS + 2 * CONSUMER_REGS);

template <int D>
struct sm90_bwd {
    static constexpr int KV_BYTES = KB * D * 2, Q_BYTES = QT * D * 2, DS_BYTES = KB * QT * 2;
    /* K's swizzle in bytes (its box is K_SW / 2 dims x KB keys): 64 at D = 64 (above) */
    static constexpr int K_SW = D == 64 ? 64 : 128, K_BOX = KB * K_SW;
    /* K, V, stages of (Q, dO), sdS x 2, lse and D per stage, barriers */
    static constexpr int SMEM =
        1024 + 2 * KV_BYTES + STAGES * 2 * Q_BYTES + 2 * DS_BYTES + STAGES * 2 * QT * 4 + (1 + 2 * STAGES) * 8;
};

template <typename T, int D, bool DQ>
__global__ void __launch_bounds__(THREADS, 1)
    attention_bwd_dkdv_sm90(const __grid_constant__ CUtensorMap map_q, const __grid_constant__ CUtensorMap map_k,
                            const __grid_constant__ CUtensorMap map_v, const __grid_constant__ CUtensorMap map_do,
                            const fab__attn_args a, const float *Dbuf, float *dqacc)
{
#if FAB__SM90A_BODY
    typedef sm90_bwd<D> C;
    typedef mma_of<T> M;
    FAB_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char *sK = attn_align_1024(raw);
    unsigned char *sV = sK + C::KV_BYTES;
    unsigned char *sStage = sV + C::KV_BYTES; /* stage s: Q at sStage + 2 s Q_BYTES, dO after it */
    unsigned char *sdS = sStage + STAGES * 2 * C::Q_BYTES;
    float *sL = reinterpret_cast<float *>(sdS + 2 * C::DS_BYTES), *sD = sL + STAGES * QT;
    uint64_t *kvfull = reinterpret_cast<uint64_t *>(sD + STAGES * QT);
    uint64_t *full = kvfull + 1, *empty = full + STAGES;
    const int b = blockIdx.z, kvh = blockIdx.y, j0 = blockIdx.x * KB;

    const attn_seq sq_ = attn_seq_of(a, b);
    const int64_t q0 = sq_.q0, k0 = sq_.k0, off = sq_.sk - sq_.sq;
    const int sq = sq_.sq, sk = sq_.sk;
    if (j0 >= sk)
        return;
    const int nk = sk - j0 < KB ? sk - j0 : KB;
    int64_t ilo; /* query rows that can see keys j0 .. j0 + nk - 1, in whole tiles */
    const int nqt = attn_bwd_query_tiles(a, sq, off, j0, nk, QT, &ilo);
    const int group = (int)(a.hq / a.hkv), nit = nqt * group;
    const int tb = a.cu_q_dev ? 0 : b; /* the maps' batch coordinate */

    if (threadIdx.x == 0) {
        fab__mbarrier_init(kvfull, 1);
        for (int s = 0; s < STAGES; s++) {
            fab__mbarrier_init(&full[s], 1 + 32); /* the TMA thread and warp 1's lanes */
            fab__mbarrier_init(&empty[s], CONSUMER_WARPS);
        }
        fab__fence_mbarrier_init();
    }
    __syncthreads();

    if (threadIdx.x < 128) { /* producer */
        fab__setmaxnreg_dec<PRODUCER_REGS>();
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        if (threadIdx.x != 0 && warp != 1)
            return;
        if (threadIdx.x == 0 && nit > 0) {
            fab__mbarrier_arrive_expect_tx(kvfull, 2 * C::KV_BYTES);
            for (int c = 0; c < D / 64; c++)
                attn_box(sV + c * KB * 128, &map_v, 64 * c, (int)(k0 + j0), kvh, tb, kvfull);
            for (int c = 0; c < D * 2 / C::K_SW; c++)
                attn_box(sK + c * C::K_BOX, &map_k, C::K_SW / 2 * c, (int)(k0 + j0), kvh, tb, kvfull);
        }
        /* per pair: thread 0 loads Q and dO, warp 1 writes lse and D */
        for (int it = 0; it < nit; it++) {
            const int s = it % STAGES, h = kvh * group + it / nqt, i0 = (int)(ilo + (int64_t)(it % nqt) * QT);
            if (it >= STAGES)
                fab__mbarrier_wait(&empty[s], (unsigned)((it / STAGES - 1) & 1));
            if (threadIdx.x == 0) {
                unsigned char *sQ = sStage + s * 2 * C::Q_BYTES, *sdO = sQ + C::Q_BYTES;
                fab__mbarrier_arrive_expect_tx(&full[s], 2 * C::Q_BYTES);
                for (int c = 0; c < D / 64; c++) {
                    attn_box(sQ + c * QT * 128, &map_q, 64 * c, (int)(q0 + i0), h, tb, &full[s]);
                    attn_box(sdO + c * QT * 128, &map_do, 64 * c, (int)(q0 + i0), h, tb, &full[s]);
                }
            } else {
                const int64_t base = b * a.lse_sb + h * a.lse_sh + q0;
                for (int r = lane; r < QT; r += 32) {
                    const int row = i0 + r;
                    fab__st_shared(sL + s * QT + r, row < sq ? a.lse[base + row] * ATTN_L2E : INFINITY);
                    fab__st_shared(sD + s * QT + r, row < sq ? Dbuf[base + row] : 0.0f);
                }
                fab__mbarrier_arrive(&full[s]);
            }
        }
        return;
    }

    /* consumers */
    fab__setmaxnreg_inc<CONSUMER_REGS>();
    const int cg = threadIdx.x / 128 - 1, warp4 = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int w_k0 = j0 + 64 * cg + 16 * warp4, k_lo = w_k0 + g; /* this lane's keys: k_lo, k_lo + 8 */
    float dk[D / 2], dv[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++)
        dk[i] = dv[i] = 0.0f;
    if (nit > 0)
        fab__mbarrier_wait(kvfull, 0);
    /* this warpgroup's 64 keys */
    const unsigned char *sKc = sK + cg * 64 * C::K_SW, *sVc = sV + cg * 64 * 128;
    const unsigned char *sKdq = sK + cg * C::K_BOX; /* dQ's B: K's head dims D/2 c .. + D/2, box c */

    for (int it = 0; it < nit; it++) {
        const int s = it % STAGES;
        const int h = kvh * group + it / nqt, i0 = (int)(ilo + (int64_t)(it % nqt) * QT); /* the pair */
        const unsigned char *sQ = sStage + s * 2 * C::Q_BYTES, *sdO = sQ + C::Q_BYTES;
        const float *cL = sL + s * QT, *cD = sD + s * QT;
        unsigned char *cdS = sdS + (it & 1) * C::DS_BYTES;
        fab__mbarrier_wait(&full[s], (unsigned)((it / STAGES) & 1));

        float st[QT / 2], dpt[QT / 2];
        attn_issue_abt<T, QT, D, C::K_SW>(st, sKc, C::K_BOX, sQ, QT * 128); /* S^T = K Q^T */
        attn_issue_abt<T, QT, D>(dpt, sVc, KB * 128, sdO, QT * 128); /* dP^T = V dO^T */
        fab__wgmma_wait<1>(); /* S^T landed */
        fab__wgmma_fence_regs(st);

        /* P^T (rounded, as A fragments pa) and P^T ds/dx (f32, in st); the mask only
         * where this warp's 16 keys and the 64 rows are not all real and allowed */
        const bool inside =
            i0 + QT <= sq && w_k0 + 16 <= sk && attn_all_allowed(a, i0, i0 + QT - 1, w_k0, w_k0 + 15, off);
        uint32_t pa[QT / 16][4], sa[QT / 16][4];
#pragma unroll
        for (int j = 0; j < QT / 8; j++)
#pragma unroll
            for (int i = 0; i < 2; i++) {
                float p[2];
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int q = 8 * j + 2 * t + e, x = 4 * j + 2 * i + e;
                    float dsx, l2 = attn_logit2(a, st[x], &dsx);
                    p[e] = fab__ex2_approx(l2 - fab__ld_shared(cL + q));
                    if (!inside)
                        p[e] = i0 + q < sq && k_lo + 8 * i < sk && attn_allowed(a, i0 + q, k_lo + 8 * i, off) ? p[e]
                                                                                                              : 0.0f;
                    st[x] = p[e] * dsx;
                }
                pa[j / 2][2 * (j % 2) + i] = M::pack(p[0], p[1]);
            }
        fab__wgmma_fence_regs(pa);
        fab__wgmma_fence();
        attn_issue_xb<T, D, QT / 16>(dv, pa, sdO, QT * 128); /* dV += P^T dO */
        fab__wgmma_wait<1>();          /* dP^T landed; dV may still run */
        fab__wgmma_fence_regs(dpt);

        /* dS^T = P^T ds/dx (dP^T - D): A fragments sa, and into sdS (key row k, the 16-byte
         * unit of queries 8j.. at unit j ^ (k % 8), k % 8 = g: 32 banks per store) */
#pragma unroll
        for (int j = 0; j < QT / 8; j++)
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int x = 4 * j + 2 * i, q = 8 * j + 2 * t;
                const uint32_t v = M::pack(st[x] * (dpt[x] - fab__ld_shared(cD + q)),
                                           st[x + 1] * (dpt[x + 1] - fab__ld_shared(cD + q + 1)));
                sa[j / 2][2 * (j % 2) + i] = v;
                if constexpr (DQ) {
                    const int key = 64 * cg + 16 * warp4 + g + 8 * i;
                    fab__st_shared(reinterpret_cast<uint32_t *>(cdS + key * 128 + ((j ^ g) << 4) + 4 * t), v);
                }
            }
        fab__wgmma_fence_regs(sa);
        fab__wgmma_fence();
        attn_issue_xb<T, D, QT / 16>(dk, sa, sQ, QT * 128); /* dK += dS^T Q */
        float dq[DQ ? D / 4 : 1];
        if constexpr (DQ) {
            fab__fence_proxy_async(); /* dS^T visible to wgmma, */
            fab__bar_sync(1, 256);    /* of both consumer warpgroups */
            /* dQ [64 queries x D/2] = dS K over the block's 128 keys */
            fab__wgmma_fence_regs(dq);
            fab__wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < KB / 16; kk++) {
                const uint64_t da = fab__wgmma_desc(cdS + kk * 16 * 128, 64 * 128, 1024, FAB_WGMMA_SWIZZLE_128B);
                const uint64_t db = fab__wgmma_desc(sKdq + kk * 16 * C::K_SW, C::K_BOX, 8 * C::K_SW,
                                                    C::K_SW == 128 ? FAB_WGMMA_SWIZZLE_128B : FAB_WGMMA_SWIZZLE_64B);
                wgmma_of<T>::template ss<D / 2, 1, 1>(dq, da, db, kk > 0);
            }
            fab__wgmma_commit();
        }
        fab__wgmma_wait<0>(); /* dV, dK (and dQ) landed: the stage is free */
        if constexpr (DQ)
            fab__wgmma_fence_regs(dq);
        fab__wgmma_fence_regs(dk);
        fab__wgmma_fence_regs(dv);
        fab__wgmma_fence_regs(pa);
        fab__wgmma_fence_regs(sa);
        __syncwarp();
        if (lane == 0)
            fab__mbarrier_arrive(&empty[s]);

        if constexpr (!DQ)
            continue;
        /* dQ partials into the accumulator: lanes t, t^1 swap halves so that each adds
         * 4 adjacent columns of one row (even t row g, odd t row g + 8); none from a warp
         * whose 16 rows see none of the block's keys (their partials are 0) */
        const int q16 = i0 + 16 * warp4;
        if (!attn_any_allowed(a, q16, q16 + 15, j0, j0 + KB - 1, off))
            continue;
        const int odd = t & 1, row = q16 + g + 8 * odd;
        float *dst = dqacc + (b * a.lse_sb + h * a.lse_sh + q0 + row) * a.d + cg * (D / 2) + 2 * (t - odd);
#pragma unroll
        for (int j = 0; j < D / 16; j++) {
            const float x0 = __shfl_xor_sync(0xffffffffu, odd ? dq[4 * j + 0] : dq[4 * j + 2], 1);
            const float x1 = __shfl_xor_sync(0xffffffffu, odd ? dq[4 * j + 1] : dq[4 * j + 3], 1);
            if (row < sq && (D == a.d || cg * (D / 2) + 8 * j < a.d)) { /* not the zero padding */
                if (odd)
                    fab__red_add_v4_f32(dst + 8 * j, x0, x1, dq[4 * j + 2], dq[4 * j + 3]);
                else
                    fab__red_add_v4_f32(dst + 8 * j, dq[4 * j + 0], dq[4 * j + 1], x0, x1);
            }
        }
    }

    T *dK = (T *)a.dk.data + b * a.dk.sb + k0 * a.dk.ss + kvh * a.dk.sh;
    T *dV = (T *)a.dv.data + b * a.dv.sb + k0 * a.dv.ss + kvh * a.dv.sh;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int key = k_lo + 8 * i;
        if (key >= sk)
            continue;
        T *dkr = dK + (int64_t)key * a.dk.ss, *dvr = dV + (int64_t)key * a.dv.ss;
#pragma unroll
        for (int j = 0; j < D / 8; j++) {
            if (D != a.d && 8 * j >= a.d)
                continue; /* the zero padding of a head dim below D */
            *reinterpret_cast<uint32_t *>(dkr + 8 * j + 2 * t) = M::pack(dk[4 * j + 2 * i], dk[4 * j + 2 * i + 1]);
            *reinterpret_cast<uint32_t *>(dvr + 8 * j + 2 * t) = M::pack(dv[4 * j + 2 * i], dv[4 * j + 2 * i + 1]);
        }
    }
#else
    __trap();
#endif
}

/* ---------------------------------------------------------- dq, deterministic */

/* Idea: deterministic mode's dq kernel, the forward's shape: one block of 3
 * warpgroups per (128-query tile, query head, sequence); the producer (setmaxnreg
 * 24) TMA-loads Q and dO once and the 64-key tiles of K and V the rows may see into
 * a 2-stage ring; consumer warpgroup c (setmaxnreg 240) owns rows 64c.. and per tile
 * computes S = Q K^T and dP = dO V^T (wgmma.m64n64k16, ss, K-major), P and dS = P
 * (dP - D) ds/dx in registers (P's math while dP is in flight), and dQ += dS K (rs:
 * the S accumulator layout of 16 keys is the A layout; K MN-major over keys). Each dq
 * element is one thread's f32 chain over the key tiles in order: the same bits every
 * run. Both warpgroups compute every tile of the block's key span (masked elements
 * give P = 0), so the control flow around wgmma is uniform.
 * Thread mapping: as the forward: warp w of warpgroup c, lane 4g + t holds rows
 * 64c + 16w + g and + 8; s[4j + 2i + b] (row g + 8i, key 8j + 2t + b); dq[4j + 2i + b]
 * (row g + 8i, dim 8j + 2t + b).
 * Numerics: the dkdv kernel's P and dS (dS rounded to the input type for dS K), f32
 * accumulation, dq rounded once. As in the forward, the last tile's K and V rows
 * past khi are loaded whole (the sm80 kernel zero-fills them): their P is 0, but a
 * NaN or Inf there (the next sequence's, in varlen) would reach dq as 0 x NaN. */
const int DQ_BM = 128, DQ_BN = 64;

template <int D>
struct sm90_dq {
    static constexpr int Q_BYTES = DQ_BM * D * 2, KV_BYTES = DQ_BN * D * 2;
    static constexpr int SMEM = 1024 + 2 * Q_BYTES + STAGES * 2 * KV_BYTES + (1 + 2 * STAGES) * 8;
};

template <typename T, int D>
__global__ void __launch_bounds__(THREADS, 1)
    attention_bwd_dq_sm90(const __grid_constant__ CUtensorMap map_q, const __grid_constant__ CUtensorMap map_k,
                          const __grid_constant__ CUtensorMap map_v, const __grid_constant__ CUtensorMap map_do,
                          const fab__attn_args a, const float *Dbuf)
{
#if FAB__SM90A_BODY
    typedef sm90_dq<D> C;
    typedef mma_of<T> M;
    FAB_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char *sQ = attn_align_1024(raw);
    unsigned char *sdO = sQ + C::Q_BYTES;
    unsigned char *sKV = sdO + C::Q_BYTES; /* stage s: K at sKV + 2 s KV_BYTES, V after it */
    uint64_t *qfull = reinterpret_cast<uint64_t *>(sKV + STAGES * 2 * C::KV_BYTES);
    uint64_t *full = qfull + 1, *empty = full + STAGES;
    const int b = blockIdx.z, h = blockIdx.y, m0 = attn_q_tile(a) * DQ_BM;

    attn_fwd_span sp;
    if (!attn_fwd_span_of(a, b, h, m0, DQ_BM, DQ_BN, &sp))
        return;
    const int64_t q0 = sp.q0, k0 = sp.k0, off = sp.off, klo = sp.klo, khi = sp.khi;
    const int sq = sp.sq, kvh = sp.kvh, ntiles = sp.ntiles;
    const int tb = a.cu_q_dev ? 0 : b;

    if (threadIdx.x == 0) {
        fab__mbarrier_init(qfull, 1);
        for (int s = 0; s < STAGES; s++) {
            fab__mbarrier_init(&full[s], 1);
            fab__mbarrier_init(&empty[s], CONSUMER_WARPS);
        }
        fab__fence_mbarrier_init();
    }
    __syncthreads();

    if (threadIdx.x < 128) { /* producer */
        fab__setmaxnreg_dec<PRODUCER_REGS>();
        if (threadIdx.x != 0)
            return;
        fab__mbarrier_arrive_expect_tx(qfull, 2 * C::Q_BYTES);
        for (int c = 0; c < D / 64; c++) {
            attn_box(sQ + c * DQ_BM * 128, &map_q, 64 * c, (int)(q0 + m0), h, tb, qfull);
            attn_box(sdO + c * DQ_BM * 128, &map_do, 64 * c, (int)(q0 + m0), h, tb, qfull);
        }
        for (int it = 0; it < ntiles; it++) {
            const int s = it % STAGES, kt = (int)(k0 + klo) + it * DQ_BN;
            unsigned char *sK = sKV + s * 2 * C::KV_BYTES, *sV = sK + C::KV_BYTES;
            if (it >= STAGES)
                fab__mbarrier_wait(&empty[s], (unsigned)((it / STAGES - 1) & 1));
            fab__mbarrier_arrive_expect_tx(&full[s], 2 * C::KV_BYTES);
            for (int c = 0; c < D / 64; c++) {
                attn_box(sK + c * DQ_BN * 128, &map_k, 64 * c, kt, kvh, tb, &full[s]);
                attn_box(sV + c * DQ_BN * 128, &map_v, 64 * c, kt, kvh, tb, &full[s]);
            }
        }
        return;
    }

    /* consumers */
    fab__setmaxnreg_inc<CONSUMER_REGS>();
    const int cg = threadIdx.x / 128 - 1, warp4 = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int r_lo = m0 + 64 * cg + 16 * warp4 + g; /* this lane's rows: r_lo, r_lo + 8 */
    const int64_t w_first = m0 + 64 * cg + 16 * warp4, w_last = w_first + 15;
    float lse2[2], Dr[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int row = r_lo + 8 * i;
        const int64_t idx = b * a.lse_sb + h * a.lse_sh + q0 + row;
        lse2[i] = row < sq ? a.lse[idx] * ATTN_L2E : INFINITY; /* P = 0 on padding rows */
        Dr[i] = row < sq ? Dbuf[idx] : 0.0f;
    }
    float dq[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++)
        dq[i] = 0.0f;
    const unsigned char *sQc = sQ + cg * 64 * 128, *sdOc = sdO + cg * 64 * 128; /* this warpgroup's rows */
    fab__mbarrier_wait(qfull, 0); /* always: no thread may exit with the copy in flight */
    for (int it = 0; it < ntiles; it++) {
        const int s = it % STAGES;
        const int64_t kt = klo + (int64_t)it * DQ_BN;
        const unsigned char *sK = sKV + s * 2 * C::KV_BYTES, *sV = sK + C::KV_BYTES;
        fab__mbarrier_wait(&full[s], (unsigned)((it / STAGES) & 1));
        float sc[DQ_BN / 2], dp[DQ_BN / 2];
        attn_issue_abt<T, DQ_BN, D>(sc, sQc, DQ_BM * 128, sK, DQ_BN * 128);  /* S = Q K^T */
        attn_issue_abt<T, DQ_BN, D>(dp, sdOc, DQ_BM * 128, sV, DQ_BN * 128); /* dP = dO V^T */
        fab__wgmma_wait<1>();
        fab__wgmma_fence_regs(sc);
        /* P ds/dx into sc; the mask only where this warp's rows and the tile's keys are
         * not all real and allowed */
        const bool inside = w_last < sq && kt + DQ_BN <= khi &&
                            attn_all_allowed(a, w_first, w_last, kt, kt + DQ_BN - 1, off);
#pragma unroll
        for (int j = 0; j < DQ_BN / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int64_t key = kt + 8 * j + 2 * t + (e & 1), row = r_lo + 8 * (e >> 1);
                float dsx, l2 = attn_logit2(a, sc[4 * j + e], &dsx);
                float p = fab__ex2_approx(l2 - lse2[e >> 1]);
                if (!inside)
                    p = key < khi && attn_allowed(a, row, key, off) ? p : 0.0f;
                sc[4 * j + e] = p * dsx;
            }
        fab__wgmma_wait<0>();
        fab__wgmma_fence_regs(dp);
        /* dS, rounded, as A fragments of the 16-key steps of dQ += dS K */
        uint32_t da[DQ_BN / 16][4];
#pragma unroll
        for (int kk = 0; kk < DQ_BN / 16; kk++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const int x = 8 * kk + 2 * r, i = r & 1;
                da[kk][r] = M::pack(sc[x] * (dp[x] - Dr[i]), sc[x + 1] * (dp[x + 1] - Dr[i]));
            }
        fab__wgmma_fence_regs(da);
        fab__wgmma_fence();
        attn_issue_xb<T, D, DQ_BN / 16>(dq, da, sK, DQ_BN * 128); /* dQ += dS K */
        fab__wgmma_wait<0>();
        fab__wgmma_fence_regs(dq);
        fab__wgmma_fence_regs(da);
        __syncwarp();
        if (lane == 0)
            fab__mbarrier_arrive(&empty[s]);
    }

    T *dQ = (T *)a.dq.data + b * a.dq.sb + q0 * a.dq.ss + h * a.dq.sh;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int row = r_lo + 8 * i;
        if (row >= sq)
            continue;
        T *dst = dQ + (int64_t)row * a.dq.ss;
#pragma unroll
        for (int j = 0; j < D / 8; j++)
            if (D == a.d || 8 * j < a.d) /* not the zero padding */
                *reinterpret_cast<uint32_t *>(dst + 8 * j + 2 * t) =
                    M::pack(dq[4 * j + 2 * i], dq[4 * j + 2 * i + 1]);
    }
#else
    __trap();
#endif
}

/* The maps of q, k, v and dout (in that order), boxes of q_box query rows and k_box
 * keys, k's with a swizzle of k_sw bytes (the others 128); false, with a warning the
 * first time, where the driver rejects one. */
static bool encode_maps(const fab__attn_args *a, int q_box, int k_box, int k_sw, CUtensorMap (&maps)[4])
{
    const bool bf16 = a->dtype == FAB_DTYPE_BF16;
    int64_t qrows, krows, nb;
    attn_extents(a, true, &qrows, &nb);
    attn_extents(a, false, &krows, &nb);
    if (attn_encode_view(&maps[0], a->q, bf16, a->d, qrows, a->hq, nb, q_box) &&
        attn_encode_view(&maps[1], a->k, bf16, a->d, krows, a->hkv, nb, k_box, k_sw) &&
        attn_encode_view(&maps[2], a->v, bf16, a->d, krows, a->hkv, nb, k_box) &&
        attn_encode_view(&maps[3], a->dout, bf16, a->d, qrows, a->hq, nb, q_box))
        return true;
    static bool warned;
    if (!warned) {
        warned = true;
        fprintf(stderr, "fabriek: cuTensorMapEncodeTiled rejected attention's q/k/v/dout; the sm80 backward runs it\n");
    }
    return false;
}

/* The dkdv kernel with dQ (dqacc set: the fast path) or without (deterministic mode) */
template <typename T, int D>
static cudaError_t launch_dkdv(fab_context *ctx, const fab__attn_args *a, const float *Dbuf, float *dqacc,
                               bool *taken)
{
    CUtensorMap m[4];
    static signed char pool_ok[2] = {-1, -1}; /* without, with dQ */
    const void *kernel = dqacc ? (const void *)attention_bwd_dkdv_sm90<T, D, true>
                               : (const void *)attention_bwd_dkdv_sm90<T, D, false>;
    if (!(*taken = fab__setmaxnreg_pool_ok(kernel, "attention_bwd_dkdv_sm90", THREADS, SETMAXNREG_SPLIT,
                                           &pool_ok[dqacc != NULL]) &&
                   encode_maps(a, QT, KB, sm90_bwd<D>::K_SW, m)))
        return cudaSuccess;
    const dim3 grid((unsigned)((a->sk + KB - 1) / KB), (unsigned)a->hkv, (unsigned)a->batch);
    if (dqacc)
        return attn_launch(ctx, attention_bwd_dkdv_sm90<T, D, true>, grid, THREADS, sm90_bwd<D>::SMEM, m[0], m[1],
                           m[2], m[3], *a, Dbuf, dqacc);
    return attn_launch(ctx, attention_bwd_dkdv_sm90<T, D, false>, grid, THREADS, sm90_bwd<D>::SMEM, m[0], m[1], m[2],
                       m[3], *a, Dbuf, dqacc);
}

template <typename T, int D>
static cudaError_t launch_dq(fab_context *ctx, const fab__attn_args *a, const float *Dbuf, bool *taken)
{
    CUtensorMap m[4];
    static signed char pool_ok = -1;
    if (!(*taken = fab__setmaxnreg_pool_ok((const void *)attention_bwd_dq_sm90<T, D>, "attention_bwd_dq_sm90",
                                           THREADS, SETMAXNREG_SPLIT, &pool_ok) &&
                   encode_maps(a, DQ_BM, DQ_BN, 128, m)))
        return cudaSuccess;
    const dim3 grid((unsigned)((a->sq + DQ_BM - 1) / DQ_BM), (unsigned)a->hq, (unsigned)a->batch);
    return attn_launch(ctx, attention_bwd_dq_sm90<T, D>, grid, THREADS, sm90_dq<D>::SMEM, m[0], m[1], m[2], m[3], *a,
                       Dbuf);
}

} // namespace

FAB__SM90A_PROBE(fab__attention_bwd_sm90a_code, have_sm90a_code)

extern "C" bool fab__attention_bwd_sm90_supports(const fab_context *ctx, const fab__attn_args *a)
{
    const int D = attn_sm90_kernel_d(a->d);
    if ((D != 64 && D != 128) || !attn_sm90_shape_ok(ctx, a, DQ_BM > QT ? DQ_BM : QT, KB))
        return false;
    int64_t qrows, nb;
    attn_extents(a, true, &qrows, &nb);
    return attn_view_ok(a->dout, a->d, qrows, a->hq, nb) && have_sm90a_code() && fab__tma_encoder() != NULL;
}

extern "C" int fab__attention_bwd_dkdv_sm90(fab_context *ctx, const fab__attn_args *a, const float *Dbuf,
                                            float *dqacc, bool *taken)
{
    const bool d64 = attn_sm90_kernel_d(a->d) == 64;
    if (a->dtype == FAB_DTYPE_BF16)
        return d64 ? launch_dkdv<__nv_bfloat16, 64>(ctx, a, Dbuf, dqacc, taken)
                   : launch_dkdv<__nv_bfloat16, 128>(ctx, a, Dbuf, dqacc, taken);
    return d64 ? launch_dkdv<__half, 64>(ctx, a, Dbuf, dqacc, taken)
               : launch_dkdv<__half, 128>(ctx, a, Dbuf, dqacc, taken);
}

extern "C" int fab__attention_bwd_dq_sm90(fab_context *ctx, const fab__attn_args *a, const float *Dbuf, bool *taken)
{
    const bool d64 = attn_sm90_kernel_d(a->d) == 64;
    if (a->dtype == FAB_DTYPE_BF16)
        return d64 ? launch_dq<__nv_bfloat16, 64>(ctx, a, Dbuf, taken)
                   : launch_dq<__nv_bfloat16, 128>(ctx, a, Dbuf, taken);
    return d64 ? launch_dq<__half, 64>(ctx, a, Dbuf, taken) : launch_dq<__half, 128>(ctx, a, Dbuf, taken);
}
