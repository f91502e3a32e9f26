/*
 * attention_fwd_sm90.cu: attention forward for Hopper (sm_90a), head dims 64, 96,
 * 128 and 256, bf16/f16: the sm80 kernel's algorithm and features (causal, windows,
 * softcap, GQA, varlen, lse) with TMA loads and wgmma. Where it applies it
 * replaces the sm80 forward on an H100 (attention.c). Head dim 96 runs the D = 128
 * kernel (attn_sm90_kernel_d): the maps' head dim is 96, so TMA fills dims 96..127
 * of every box with zeros, which add nothing to S and give O columns that are not
 * stored; a quarter of the tensor-core work is spent on zeros, which still leaves
 * more than the sm80 kernel's mma.sync can do (not yet measured). Head dim 32
 * stays on sm80: padded to 64 it would spend half.
 *
 * Idea: one block of 3 warpgroups per (128-row query tile, query head, sequence).
 * Warpgroup 0 is the producer: it gives most of its registers to the consumers
 * (setmaxnreg 24 / 240), and one thread TMA-loads the Q tile once, then the K and V
 * tiles of BN keys (128; 64 at head dim 256) the block's rows may see into a
 * 2-stage ring, K and V with
 * barriers of their own (`full_k`/`empty_k`, `full_v`/`empty_v`) so that a K stage
 * refills as soon as its S is computed. Warpgroups 1 and 2 each own 64 query rows:
 * per key tile, S = Q K^T with wgmma.m64nBNk16 from shared memory (Q and K
 * K-major, 128-byte swizzle); scale, softcap and mask (attn_logit) and the online
 * softmax in registers, exactly as the sm80 kernel; then P, packed to the input
 * type in registers as wgmma's A fragments (the S accumulator layout of one 16-key
 * step is the A layout), gives O += P V with wgmma.m64nDk16 (V MN-major: keys are
 * the k dimension, head dims contiguous). The two products overlap the softmax
 * (FlashAttention-3's intra-warpgroup pipelining): tile j's S is issued, then tile
 * j-1's P V behind it; the softmax of tile j runs while P V is in flight, and O is
 * rescaled by tile j's max once P V has landed. The two warpgroups take turns to
 * issue their products (FlashAttention-3's ping-pong: named barriers, warpgroup 1
 * first), so that one's softmax runs while the other's products keep the tensor
 * cores busy. Both warpgroups compute every tile
 * of the block's key span (masked logits give P = 0): the control flow around
 * wgmma stays uniform, which ptxas needs to keep the products asynchronous.
 *
 * Layouts in shared memory, each a set of TMA boxes of 64 head-dim values (128
 * bytes) x rows: Q [D/64][128 rows], K and V [D/64][BN keys]; 1024-byte aligned
 * (161 KiB at D = 128, 193 KiB at 256, with the 1 KiB for alignment).
 * The tensor maps are (head dim, sequence, head, batch) with the caller's
 * strides; a varlen batch is one sequence of all rows, so a block's rows start at
 * its sequence's offset, and rows past a sequence belong to the next: masked as
 * keys (past khi), not stored as queries. Unlike the sm80 kernel, which zero-fills
 * key rows past khi, the last tile's V rows past khi are loaded (a TMA box is
 * whole): their P is 0, but a NaN or Inf there (another sequence's, in varlen, or
 * past a window's edge) would make 0 x NaN in the sum, as FlashAttention-3's
 * varlen path does. The same holds for a warpgroup's tiles outside its own rows'
 * band, which the sm80 kernel skips.
 *
 * Thread mapping: consumer warpgroup c, warp w, lane 4g + t holds rows
 * 64c + 16w + g and + 8 of the tile, in wgmma's D layout: s[4j + 2i + b] is
 * (row g + 8i, key 8j + 2t + b), o[4j + 2i + b] (row g + 8i, dim 8j + 2t + b). Row
 * max and sum over the 4 lanes of a quad with shuffles.
 *
 * Numerics: as the sm80 kernel: f32 scores and accumulators, exp2 of log2-unit
 * logits, P rounded to the input type, out rounded once, lse = (m + log2 l) ln 2.
 *
 * Requirements (fab__attention_forward_sm90_supports): sm_90 and sm_90a code;
 * bf16/f16; head dim 64, 96, 128 or 256; 16-byte aligned q, k, v with sequence, head and
 * batch strides (where used) positive multiples of 8 elements, the sequence stride
 * at least the head dim; the driver's cuTensorMapEncodeTiled; and the registers
 * setmaxnreg splits (fab__setmaxnreg_pool_ok). FAB_ATTN_SM90=0 turns it off.
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

const int BM = 128, STAGES = 2, THREADS = 384, CONSUMER_WARPS = 8;
/* Keys per tile: 128; at head dim 256, 64 (O alone takes 128 registers per thread,
 * and two stages of 128-key K and V would not fit beside Q in shared memory). */
template <int D> struct fwd_keys {
    static constexpr int BN = D > 128 ? 64 : 128;
};
/* setmaxnreg: the producer keeps 24 registers, the consumers take 240 (128 x (24 + 2 x
 * 240) = 384 x 168, the block's whole budget), room for O, S and P of a key tile. */
const int PRODUCER_REGS = 24, CONSUMER_REGS = 240;
/* Named barriers SCHED_BAR + c: consumer warpgroup c waits at its own for its turn to
 * issue a tile's products, and gives the other its turn after issuing. */
const unsigned SCHED_BAR = 1;

template <typename T, int D>
struct sm90_fwd {
    static constexpr int BN = fwd_keys<D>::BN;
    static constexpr int Q_BYTES = BM * D * 2, KV_BYTES = BN * D * 2;
    static constexpr int SMEM = 1024 + Q_BYTES + STAGES * 2 * KV_BYTES + (1 + 4 * STAGES) * 8;
};

/* The online softmax of one key tile, in place: sc holds S on entry and P (f32, not
 * yet rounded) on return; mrow/lrow are updated and alpha is the factor by which O
 * must be rescaled once the previous tile's P V has landed in it. */
template <int BN>
static __device__ __forceinline__ void softmax_tile(const fab__attn_args &a, float (&sc)[BN / 2], float (&mrow)[2],
                                                    float (&lrow)[2], float (&alpha)[2], float k_scale, int64_t kt,
                                                    int64_t khi, int64_t off, int64_t r_lo, int64_t w_first,
                                                    int64_t w_last, int t)
{
    /* per warp: its 16 rows decide the mask path */
    const bool inside = kt + BN <= khi && attn_all_allowed(a, w_first, w_last, kt, kt + BN - 1, off);
    float mx[2] = {mrow[0], mrow[1]};
#pragma unroll
    for (int j = 0; j < BN / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int64_t key = kt + j * 8 + 2 * t + (e & 1), pos = r_lo + 8 * (e >> 1) + off;
            const float x = inside ? attn_logit<false>(a, sc[4 * j + e], k_scale, key, pos, khi)
                                   : attn_logit<true>(a, sc[4 * j + e], k_scale, key, pos, khi);
            sc[4 * j + e] = x;
            mx[e >> 1] = fmaxf(mx[e >> 1], x);
        }
    float muse[2];
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(0xffffffffu, mx[hr], 1));
        mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(0xffffffffu, mx[hr], 2));
        muse[hr] = mx[hr] == -INFINITY ? 0.0f : mx[hr];
        alpha[hr] = mx[hr] == mrow[hr] ? 1.0f : fab__ex2_approx(mrow[hr] - muse[hr]);
        mrow[hr] = mx[hr];
        lrow[hr] *= alpha[hr];
    }
    /* sc[4j + e] is row g + 8(e >> 1) */
#pragma unroll
    for (int i = 0; i < BN / 2; i++) {
        sc[i] = fab__ex2_approx(sc[i] - muse[(i >> 1) & 1]);
        lrow[(i >> 1) & 1] += sc[i];
    }
}

template <int D>
static __device__ __forceinline__ void rescale(float (&o)[D / 2], const float (&alpha)[2])
{
#pragma unroll
    for (int j = 0; j < D / 8; j++) {
        o[4 * j + 0] *= alpha[0], o[4 * j + 1] *= alpha[0];
        o[4 * j + 2] *= alpha[1], o[4 * j + 3] *= alpha[1];
    }
}

/* P, rounded to the input type, as the A fragments of the 16-key steps of O += P V:
 * step kk's registers are rows g / g+8 of keys 16kk + 2t (+8), i.e. sc[8kk + 0..7]
 * in pairs (the S accumulator layout of 16 keys is the A layout). */
template <typename T, int BN>
static __device__ __forceinline__ void pack_p(const float (&sc)[BN / 2], uint32_t (&pa)[BN / 16][4])
{
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++)
#pragma unroll
        for (int r = 0; r < 4; r++)
            pa[kk][r] = mma_of<T>::pack(sc[8 * kk + 2 * r], sc[8 * kk + 2 * r + 1]);
}

template <typename T, int D>
__global__ void __launch_bounds__(THREADS, 1)
    attention_fwd_sm90(const __grid_constant__ CUtensorMap map_q, const __grid_constant__ CUtensorMap map_k,
                       const __grid_constant__ CUtensorMap map_v, const fab__attn_args a)
{
#if FAB__SM90A_BODY
    typedef sm90_fwd<T, D> C;
    typedef mma_of<T> M;
    constexpr int BN = C::BN;
    FAB_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char *sQ = attn_align_1024(raw);
    unsigned char *sKV = sQ + C::Q_BYTES; /* stage s: K at sKV + 2 s KV_BYTES, V after it */
    uint64_t *qfull = reinterpret_cast<uint64_t *>(sKV + STAGES * 2 * C::KV_BYTES);
    uint64_t *full_k = qfull + 1, *full_v = full_k + STAGES, *empty_k = full_v + STAGES, *empty_v = empty_k + STAGES;
    /* the longest tiles first (attn_q_tile), but at head dim 256, whose consumers have
     * no register to spare (ptxas spilled 36 bytes with it), in launch order */
    const int b = blockIdx.z, h = blockIdx.y, m0 = (D > 128 ? (int)blockIdx.x : attn_q_tile(a)) * BM;

    attn_fwd_span sp;
    if (!attn_fwd_span_of(a, b, h, m0, BM, BN, &sp))
        return;
    const int64_t q0 = sp.q0, k0 = sp.k0, off = sp.off, klo = sp.klo, khi = sp.khi;
    const int sq = sp.sq, nq = sp.nq, kvh = sp.kvh, ntiles = sp.ntiles;
    const int tb = a.cu_q_dev ? 0 : b; /* the maps' batch coordinate */

    if (threadIdx.x == 0) {
        fab__mbarrier_init(qfull, 1);
        for (int s = 0; s < STAGES; s++) {
            fab__mbarrier_init(&full_k[s], 1);
            fab__mbarrier_init(&full_v[s], 1);
            fab__mbarrier_init(&empty_k[s], CONSUMER_WARPS);
            fab__mbarrier_init(&empty_v[s], CONSUMER_WARPS);
        }
        fab__fence_mbarrier_init();
    }
    __syncthreads();

    if (threadIdx.x < 128) { /* producer */
        fab__setmaxnreg_dec<PRODUCER_REGS>();
        if (threadIdx.x != 0)
            return;
        fab__mbarrier_arrive_expect_tx(qfull, C::Q_BYTES);
        for (int c = 0; c < D / 64; c++)
            attn_box(sQ + c * BM * 128, &map_q, 64 * c, (int)(q0 + m0), h, tb, qfull);
        for (int it = 0; it < ntiles; it++) {
            const int s = it % STAGES, kt = (int)(k0 + klo) + it * BN;
            const unsigned parity = (unsigned)((it / STAGES - 1) & 1);
            unsigned char *sK = sKV + s * 2 * C::KV_BYTES, *sV = sK + C::KV_BYTES;
            if (it >= STAGES)
                fab__mbarrier_wait(&empty_k[s], parity);
            fab__mbarrier_arrive_expect_tx(&full_k[s], C::KV_BYTES);
            for (int c = 0; c < D / 64; c++)
                attn_box(sK + c * BN * 128, &map_k, 64 * c, kt, kvh, tb, &full_k[s]);
            if (it >= STAGES)
                fab__mbarrier_wait(&empty_v[s], parity);
            fab__mbarrier_arrive_expect_tx(&full_v[s], C::KV_BYTES);
            for (int c = 0; c < D / 64; c++)
                attn_box(sV + c * BN * 128, &map_v, 64 * c, kt, kvh, tb, &full_v[s]);
        }
        return;
    }

    /* consumers */
    fab__setmaxnreg_inc<CONSUMER_REGS>();
    const int cg = threadIdx.x / 128 - 1, warp4 = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int r_lo = m0 + 64 * cg + 16 * warp4 + g; /* this lane's rows: r_lo, r_lo + 8 */
    const int64_t w_first = m0 + 64 * cg + 16 * warp4, w_last = w_first + 15 < m0 + nq - 1 ? w_first + 15 : m0 + nq - 1;
    float o[D / 2], mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < D / 2; i++)
        o[i] = 0.0f;
    const float k_scale = a.scale * ATTN_L2E;
    uint32_t pa[BN / 16][4]; /* P of the previous tile, for its O += P V */
    float sc[BN / 2], alpha[2];
    fab__mbarrier_wait(qfull, 0);

    if (ntiles > 0) { /* else no key: out 0, lse -inf */
        if (cg == 1)
            fab__bar_arrive(SCHED_BAR, 256); /* the second warpgroup lets the first (cg 0) go first */
        /* Tile 0: S and its softmax (O is still 0: no rescale). Every warpgroup computes
         * every tile of the block's span, masked rows and all, so that the control flow
         * around wgmma is uniform (ptxas serialises wgmma in divergent paths). */
        fab__mbarrier_wait(&full_k[0], 0);
        fab__bar_sync(SCHED_BAR + cg, 256);
        attn_issue_abt<T, BN, D>(sc, sQ + cg * 64 * 128, BM * 128, sKV, BN * 128);
        if (ntiles > 1 || cg == 0)
            fab__bar_arrive(SCHED_BAR + 1 - cg, 256);
        fab__wgmma_wait<0>();
        fab__wgmma_fence_regs(sc);
        softmax_tile<BN>(a, sc, mrow, lrow, alpha, k_scale, klo, khi, off, r_lo, w_first, w_last, t);
        if (lane == 0)
            fab__mbarrier_arrive(&empty_k[0]);
        pack_p<T, BN>(sc, pa);
        fab__wgmma_fence_regs(pa);

        /* Tiles 1..: S of this tile is issued, then the previous tile's O += P V behind
         * it; this tile's softmax runs while that P V is in flight, and O is rescaled
         * once it has landed (FlashAttention-3's intra-warpgroup overlap). */
        for (int it = 1; it < ntiles; it++) {
            const int s = it % STAGES, ps = (it - 1) % STAGES;
            const int64_t kt = klo + (int64_t)it * BN;
            fab__mbarrier_wait(&full_k[s], (unsigned)((it / STAGES) & 1));
            fab__mbarrier_wait(&full_v[ps], (unsigned)(((it - 1) / STAGES) & 1));
            fab__bar_sync(SCHED_BAR + cg, 256);
            attn_issue_abt<T, BN, D>(sc, sQ + cg * 64 * 128, BM * 128, sKV + s * 2 * C::KV_BYTES, BN * 128);
            attn_issue_xb<T, D, BN / 16>(o, pa, sKV + ps * 2 * C::KV_BYTES + C::KV_BYTES, BN * 128); /* O += P V */
            if (it + 1 < ntiles || cg == 0)
                fab__bar_arrive(SCHED_BAR + 1 - cg, 256); /* the other warpgroup's turn */
            fab__wgmma_wait<1>(); /* S landed; P V may still run */
            fab__wgmma_fence_regs(sc);
            softmax_tile<BN>(a, sc, mrow, lrow, alpha, k_scale, kt, khi, off, r_lo, w_first, w_last, t);
            if (lane == 0)
                fab__mbarrier_arrive(&empty_k[s]); /* this warp is done with the K stage */
            fab__wgmma_wait<0>();
            fab__wgmma_fence_regs(o);
            fab__wgmma_fence_regs(pa); /* the previous P V is done with them */
            if (lane == 0)
                fab__mbarrier_arrive(&empty_v[ps]);
            rescale<D>(o, alpha);
            fab__wgmma_fence_regs(o); /* the products stay before the next wgmma.fence */
            pack_p<T, BN>(sc, pa);
            fab__wgmma_fence_regs(pa);
        }

        /* the last tile's P V */
        const int ls = (ntiles - 1) % STAGES;
        fab__mbarrier_wait(&full_v[ls], (unsigned)(((ntiles - 1) / STAGES) & 1));
        fab__wgmma_fence();
        attn_issue_xb<T, D, BN / 16>(o, pa, sKV + ls * 2 * C::KV_BYTES + C::KV_BYTES, BN * 128);
        fab__wgmma_wait<0>();
        fab__wgmma_fence_regs(o);
        if (lane == 0)
            fab__mbarrier_arrive(&empty_v[ls]);
    }

    /* out = O / l, lse (as the sm80 kernel) */
    T *O = (T *)a.out.data + b * a.out.sb + q0 * a.out.ss + h * a.out.sh;
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        float l = lrow[hr];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const int row = r_lo + 8 * hr;
        if (row >= sq)
            continue;
        const float inv = l > 0 ? 1.0f / l : 0.0f;
        T *orow = O + (int64_t)row * a.out.ss;
#pragma unroll
        for (int j = 0; j < D / 8; j++)
            if (D == a.d || 8 * j < a.d) /* not the zero padding of a head dim below D */
                *reinterpret_cast<uint32_t *>(orow + j * 8 + 2 * t) = M::pack(o[4 * j + 2 * hr] * inv,
                                                                              o[4 * j + 2 * hr + 1] * inv);
        if (a.lse && t == 0)
            a.lse[b * a.lse_sb + h * a.lse_sh + q0 + row] = (mrow[hr] + log2f(l)) * 0.69314718055994531f;
    }
#else
    __trap();
#endif
}

template <typename T, int D>
static fab_status launch(fab_context *ctx, const fab__attn_args *a)
{
    const bool bf16 = a->dtype == FAB_DTYPE_BF16;
    int64_t qrows, krows, nb;
    attn_extents(a, true, &qrows, &nb);
    attn_extents(a, false, &krows, &nb);
    CUtensorMap mq, mk, mv;
    constexpr int BN = fwd_keys<D>::BN;
    if (!attn_encode_view(&mq, a->q, bf16, a->d, qrows, a->hq, nb, BM) ||
        !attn_encode_view(&mk, a->k, bf16, a->d, krows, a->hkv, nb, BN) ||
        !attn_encode_view(&mv, a->v, bf16, a->d, krows, a->hkv, nb, BN)) {
        static bool warned;
        if (!warned) {
            warned = true;
            fprintf(stderr, "fabriek: cuTensorMapEncodeTiled rejected attention's q/k/v; the sm80 kernel runs it\n");
        }
        return fab__attention_forward_sm80(ctx, a);
    }
    static signed char pool_ok = -1;
    if (!fab__setmaxnreg_pool_ok((const void *)attention_fwd_sm90<T, D>, "attention_fwd_sm90", THREADS,
                                 128 * (PRODUCER_REGS + 2 * CONSUMER_REGS), &pool_ok))
        return fab__attention_forward_sm80(ctx, a);
    const dim3 grid((unsigned)((a->sq + BM - 1) / BM), (unsigned)a->hq, (unsigned)a->batch);
    const cudaError_t err =
        attn_launch(ctx, attention_fwd_sm90<T, D>, grid, THREADS, sm90_fwd<T, D>::SMEM, mq, mk, mv, *a);
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "fab_attention_forward: sm90 kernel launch failed: %s",
                         cudaGetErrorString(err));
    return fab__cuda_check_launch("fab_attention_forward");
}

} // namespace

FAB__SM90A_PROBE(fab__attention_sm90a_code, have_sm90a_code)

extern "C" bool fab__attention_forward_sm90_supports(const fab_context *ctx, const fab__attn_args *a)
{
    const int D = attn_sm90_kernel_d(a->d);
    return (D == 64 || D == 128 || D == 256) && attn_sm90_shape_ok(ctx, a, BM, 128) && have_sm90a_code() &&
           fab__tma_encoder() != NULL;
}

extern "C" fab_status fab__attention_forward_sm90(fab_context *ctx, const fab__attn_args *a)
{
    cudaError_t err = cudaSetDevice(ctx->device);
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "fab_attention_forward: cudaSetDevice failed: %s", cudaGetErrorString(err));
    const int D = attn_sm90_kernel_d(a->d);
    if (a->dtype == FAB_DTYPE_BF16)
        return D == 64    ? launch<__nv_bfloat16, 64>(ctx, a)
               : D == 128 ? launch<__nv_bfloat16, 128>(ctx, a)
                          : launch<__nv_bfloat16, 256>(ctx, a);
    return D == 64    ? launch<__half, 64>(ctx, a)
           : D == 128 ? launch<__half, 128>(ctx, a)
                      : launch<__half, 256>(ctx, a);
}
