/*
 * attention_fwd_sm80.cu: FlashAttention-2-style forward for sm_80 and later.
 *
 * Idea: one block of 4 warps per (query tile, query head, sequence); each warp
 * owns MT m-tiles of 16 query rows: MT = 2 (32 rows per warp, 128 per block, the
 * tile FlashAttention-2 uses on A100/H100) by default, MT = 1 at head_dim 256 and
 * for grids too small to fill the GPU (fwd_rows_per_warp). The block streams the
 * 64- or 32-key tiles (fwd_tile) its rows may see through shared memory with
 * cp.async, two stages deep (the next K/V tile loads while this one is used).
 * A warp skips the tiles none of its rows may see (on the causal diagonal, the
 * upper warps of a 128-row block would otherwise compute up to half a block of
 * masked scores). Per tile a warp computes S = Q K^T with mma.m16n8k16, each K fragment
 * (ldmatrix) feeding all MT m-tiles; applies scale, softcap and (on the tiles that
 * straddle the edge of the allowed band, per warp) the mask in registers; updates
 * the online softmax (running max m and sum l per row, exp2 of log2-unit scores);
 * turns P into A fragments without touching shared memory; and accumulates
 * O += P V, each V fragment (ldmatrix.trans) again feeding all MT m-tiles. With
 * two m-tiles a warp reads half as many shared-memory bytes per mma. Q fragments
 * stay in registers where they fit (fwd_tile), else come from shared memory per
 * key tile, each feeding a whole row of n-tiles.
 * Thread mapping: lane = 4g + t holds rows g and g+8 of each of its m-tiles,
 * columns 2t, 2t+1 of every 8-wide n-tile; row max and sum are reduced over the
 * 4 lanes of a quad with shuffles.
 * Numerics: f32 scores and accumulators; P is rounded to the input type for the
 * P V product (as FlashAttention); out rounded once; lse = (m + log2 l) ln 2.
 * Shared rows are padded by 16 bytes, so ldmatrix's 8 row reads hit 8 distinct
 * bank groups.
 */
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include "../common/cuda_dtype.cuh"
#include "../common/ptx.cuh"
#include "attention.h"
#include "attention_sm80_common.cuh"

namespace {

const int THREADS = 128; /* 4 warps */

/* Tile shape per head dim and m-tiles per warp. BM query rows per block. Keys per
 * tile BN: 64 while D x MT <= 128; 32 beyond. Past that the S and O accumulators
 * of one thread, (BN/8 + D/8) x 4 x MT floats, leave too few of the 255 registers
 * for the K fragments and softmax state (64 keys at (128, 2) spill 80 bytes), and
 * at D = 256 two stages of 64-key K and V tiles would not fit in an A100's 163 KB
 * of shared memory either. Q fragments (D/16 x MT x 4 registers) are held for the
 * whole key loop only where they fit beside those: D <= 128 with one m-tile, 32
 * with two; elsewhere each k-step reloads them from shared memory, once for all
 * the key n-tiles it feeds. Shared memory per block: (BM + 4 BN) (D + 8) x 2 B. */
template <int D, int MT> struct fwd_tile {
    static const int BM = 64 * MT;
    static const int BN = D * MT > 128 ? 32 : 64;
    static const bool q_in_regs = MT == 1 ? D <= 128 : D <= 32;
};

/* The raw products s of one m-tile (16 rows from r_lo - g) x BN keys into log2-unit
 * logits (scale or softcap), and the row maxima into mx. MASK: keys the mask
 * forbids (or past khi) become -inf; without it (a tile inside the allowed band)
 * the per-element index arithmetic is skipped. */
template <int BN, bool MASK>
static __device__ __forceinline__ void fwd_logits(const fab__attn_args &a, float (&s)[BN / 8][4], float (&mx)[2],
                                                  int64_t kt, int64_t khi, int r_lo, int64_t off, int t)
{
    const float k_scale = a.scale * ATTN_L2E;
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float x = attn_logit<MASK>(a, s[j][e], k_scale, kt + j * 8 + 2 * t + (e & 1), r_lo + 8 * (e >> 1) + off, khi);
            s[j][e] = x;
            mx[e >> 1] = fmaxf(mx[e >> 1], x);
        }
    }
}

template <typename T, int D, int MT>
__global__ void __launch_bounds__(THREADS)
attention_fwd_kernel(const fab__attn_args a)
{
    typedef mma_of<T> M;
    typedef fwd_tile<D, MT> TILE;
    const int BM = TILE::BM, BN = TILE::BN, WR = 16 * MT; /* WR: rows per warp */
    const bool QREG = TILE::q_in_regs;
    FAB_DYNAMIC_SMEM(T, smem);
    T *sQ = smem, *sK = sQ + BM * (D + 8), *sV = sK + 2 * BN * (D + 8);
    const int b = blockIdx.z, h = blockIdx.y, m0 = attn_q_tile(a) * BM;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

    attn_fwd_span sp;
    if (!attn_fwd_span_of(a, b, h, m0, BM, BN, &sp))
        return;
    const int64_t q0 = sp.q0, k0 = sp.k0, off = sp.off, klo = sp.klo, khi = sp.khi;
    const int sq = sp.sq, nq = sp.nq, kvh = sp.kvh, ntiles = sp.ntiles;

    const T *Q = (const T *)a.q.data + b * a.q.sb + q0 * a.q.ss + h * a.q.sh;
    const T *K = (const T *)a.k.data + b * a.k.sb + k0 * a.k.ss + kvh * a.k.sh;
    const T *V = (const T *)a.v.data + b * a.v.sb + k0 * a.v.ss + kvh * a.v.sh;

    attn_load_rows<T, D, THREADS>(sQ, Q, a.q.ss, m0, nq, BM);
    if (ntiles > 0)
        attn_kv_tile<T, D, BN, THREADS>(sK, sV, K, a.k.ss, V, a.v.ss, klo, khi);
    fab__cp_async_commit();

    uint32_t qf[QREG ? MT : 1][QREG ? D / 16 : 1][4];
    float o[MT][D / 8][4];
    float mrow[MT][2], lrow[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        mrow[mt][0] = mrow[mt][1] = -INFINITY;
        lrow[mt][0] = lrow[mt][1] = 0;
#pragma unroll
        for (int i = 0; i < D / 8; i++)
            o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0;
    }
    const int w0 = warp * WR;    /* the warp's first row in the block */
    const int r_lo = m0 + w0 + g; /* rows of this lane: r_lo + 16 mt, + 8 */
    const int64_t w_first = m0 + w0, w_last = w_first + WR - 1 < m0 + nq - 1 ? w_first + WR - 1 : m0 + nq - 1;

    for (int it = 0; it < ntiles; it++) {
        const int buf = it & 1;
        const int64_t kt = klo + (int64_t)it * BN;
        attn_kv_next<T, D, BN, THREADS>(sK, sV, K, a.k.ss, V, a.v.ss, buf, kt, khi, it + 1 < ntiles);
        __syncthreads();
        if (QREG && it == 0) {
#pragma unroll
            for (int mt = 0; mt < (QREG ? MT : 1); mt++)
#pragma unroll
                for (int kk = 0; kk < (QREG ? D / 16 : 1); kk++)
                    fab__ldmatrix_x4(qf[mt][kk], attn_frag_a_ptr<D>(sQ, w0 + 16 * mt, kk * 16, lane));
        }
        /* A warp with no row that sees a key of this tile (above the causal
         * diagonal, past a window's edge, or with no rows at all) skips it: its
         * m, l and O would not change. Every warp still meets the one barrier
         * below (bar.sync must be the same instruction for the whole block). */
        if (w_first <= w_last && attn_any_allowed(a, w_first, w_last, kt, kt + BN - 1, off)) {
            const T *cK = sK + buf * BN * (D + 8), *cV = sV + buf * BN * (D + 8);

            /* S = Q K^T: WR x BN per warp */
            float s[MT][BN / 8][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int j = 0; j < BN / 8; j++)
                    s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t qs[QREG ? 1 : MT][4];
                if (!QREG) {
#pragma unroll
                    for (int mt = 0; mt < (QREG ? 1 : MT); mt++)
                        fab__ldmatrix_x4(qs[mt], attn_frag_a_ptr<D>(sQ, w0 + 16 * mt, kk * 16, lane));
                }
#pragma unroll
                for (int j = 0; j < BN / 8; j += 2) {
                    uint32_t r[4];
                    fab__ldmatrix_x4(r, attn_frag_b_ptr<D>(cK, j * 8, kk * 16, lane));
                    uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        const uint32_t(&qa)[4] = QREG ? qf[QREG ? mt : 0][QREG ? kk : 0] : qs[QREG ? 0 : mt];
                        M::run(s[mt][j], qa, b0);
                        M::run(s[mt][j + 1], qa, b1);
                    }
                }
            }

            /* logits in log2 units, masked unless every (row, key) of this warp's rows
             * and the tile is allowed (warp-uniform); row max; rescale of l and O.
             * Where SKIP_RESCALE, a row whose max did not move has alpha = 1 exactly,
             * and an m-tile's O is rescaled only when one of its rows in the warp
             * moved (warp-uniform): past the first tiles most maxima stay, and the
             * D/2 multiplies per thread and m-tile are a large share of a tile's
             * non-mma instructions. Not in the 16-row variants below head dim 128,
             * which run only on grids too small to fill the GPU, and where ptxas
             * answers the branch with a few bytes of spill (96 on sm_80, 32 on
             * sm_90a). */
            const bool inside = kt + BN <= khi && attn_all_allowed(a, w_first, w_last, kt, kt + BN - 1, off);
            const bool SKIP_RESCALE = MT == 2 || D >= 128;
            float muse[MT][2];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                float mx[2] = {mrow[mt][0], mrow[mt][1]};
                if (inside)
                    fwd_logits<BN, false>(a, s[mt], mx, kt, khi, r_lo + 16 * mt, off, t);
                else
                    fwd_logits<BN, true>(a, s[mt], mx, kt, khi, r_lo + 16 * mt, off, t);
                float alpha[2];
                bool moved = false;
#pragma unroll
                for (int hr = 0; hr < 2; hr++) {
                    mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(0xffffffffu, mx[hr], 1));
                    mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(0xffffffffu, mx[hr], 2));
                    muse[mt][hr] = mx[hr] == -INFINITY ? 0.0f : mx[hr];
                    const bool same = SKIP_RESCALE && mx[hr] == mrow[mt][hr];
                    moved |= !same;
                    /* 0 while mrow is -inf (and mx is not) */
                    alpha[hr] = same ? 1.0f : fab__ex2_approx(mrow[mt][hr] - muse[mt][hr]);
                    mrow[mt][hr] = mx[hr];
                    lrow[mt][hr] *= alpha[hr];
                }
                if (!SKIP_RESCALE || __any_sync(0xffffffffu, moved)) {
#pragma unroll
                    for (int i = 0; i < D / 8; i++) {
                        o[mt][i][0] *= alpha[0], o[mt][i][1] *= alpha[0];
                        o[mt][i][2] *= alpha[1], o[mt][i][3] *= alpha[1];
                    }
                }
            }
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int j = 0; j < BN / 8; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float p = fab__ex2_approx(s[mt][j][e] - muse[mt][e >> 1]);
                        s[mt][j][e] = p;
                        lrow[mt][e >> 1] += p;
                    }

            /* O += P V: P from the S registers, V by ldmatrix.trans */
            attn_mma_px<T, D, BN, MT>(o, s, cV, lane);
        }
        __syncthreads(); /* this buffer is refilled two tiles on */
    }

    /* out = O / l, lse */
    T *O = (T *)a.out.data + b * a.out.sb + q0 * a.out.ss + h * a.out.sh;
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            float l = lrow[mt][hr];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            int row = r_lo + 16 * mt + 8 * hr;
            if (row >= sq)
                continue;
            float inv = l > 0 ? 1.0f / l : 0.0f;
            T *orow = O + (int64_t)row * a.out.ss;
#pragma unroll
            for (int i = 0; i < D / 8; i++) {
                uint32_t v = M::pack(o[mt][i][2 * hr] * inv, o[mt][i][2 * hr + 1] * inv);
                *reinterpret_cast<uint32_t *>(orow + i * 8 + 2 * t) = v;
            }
            if (a.lse && t == 0)
                a.lse[b * a.lse_sb + h * a.lse_sh + q0 + row] = (mrow[mt][hr] + log2f(l)) * 0.69314718055994531f;
        }
    }
}

template <typename T, int D, int MT>
static fab_status launch(fab_context *ctx, const fab__attn_args *a)
{
    typedef fwd_tile<D, MT> TILE;
    const size_t smem = (size_t)(TILE::BM + 4 * TILE::BN) * (D + 8) * sizeof(T);
    cudaError_t err = cudaSuccess;
    if (smem > 48 * 1024)
        err = cudaFuncSetAttribute(attention_fwd_kernel<T, D, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)smem);
    if (err == cudaSuccess) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3((unsigned)((a->sq + TILE::BM - 1) / TILE::BM), (unsigned)a->hq, (unsigned)a->batch);
        cfg.blockDim = dim3(THREADS);
        cfg.dynamicSmemBytes = smem;
        cfg.stream = (cudaStream_t)ctx->stream;
        err = cudaLaunchKernelEx(&cfg, attention_fwd_kernel<T, D, MT>, *a);
    }
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "fab_attention_forward: kernel launch failed: %s", cudaGetErrorString(err));
    return fab__cuda_check_launch("fab_attention_forward");
}

/* Query rows per warp, 16 or 32. 32 (two m-tiles, 128-row blocks) reads half the
 * shared memory per mma, so it is the choice wherever its grid still gives every
 * SM two blocks (8 warps: what ~250 registers per thread allow, and the least that
 * hides mma.sync's latency); 16 at head_dim 256 (registers) and for smaller
 * grids, where twice the blocks keep more SMs, and more warps per SM, busy.
 * FAB_ATTN_FWD_WARP_ROWS=16 or 32 forces one (the benchmark's A/B; head_dim 256
 * stays at 16). */
static int fwd_rows_per_warp(const fab_context *ctx, const fab__attn_args *a)
{
    if (a->d > 128)
        return 16;
    const char *env = getenv("FAB_ATTN_FWD_WARP_ROWS");
    if (env && (!strcmp(env, "16") || !strcmp(env, "32")))
        return atoi(env);
    int64_t blocks = a->batch * a->hq * ((a->sq + 127) / 128);
    return blocks >= 2 * (int64_t)ctx->sm_count ? 32 : 16;
}

template <typename T, int D>
static fab_status launch_rows(fab_context *ctx, const fab__attn_args *a)
{
    return fwd_rows_per_warp(ctx, a) == 32 ? launch<T, D, 2>(ctx, a) : launch<T, D, 1>(ctx, a);
}

template <typename T>
static fab_status dispatch_d(fab_context *ctx, const fab__attn_args *a)
{
    switch (a->d) {
    case 32: return launch_rows<T, 32>(ctx, a);
    case 64: return launch_rows<T, 64>(ctx, a);
    case 96: return launch_rows<T, 96>(ctx, a);
    case 128: return launch_rows<T, 128>(ctx, a);
    case 256: return launch<T, 256, 1>(ctx, a);
    default: return fab__fail(FAB_ERR_INTERNAL, "fab_attention_forward: head_dim %lld reached the sm80 kernel", (long long)a->d);
    }
}

} // namespace

extern "C" fab_status fab__attention_forward_sm80(fab_context *ctx, const fab__attn_args *a)
{
    cudaError_t err = cudaSetDevice(ctx->device);
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "fab_attention_forward: cudaSetDevice failed: %s", cudaGetErrorString(err));
    if (a->sq == 0)
        return FAB_OK;
    if (a->dtype == FAB_DTYPE_BF16)
        return dispatch_d<__nv_bfloat16>(ctx, a);
    if (a->dtype == FAB_DTYPE_F16)
        return dispatch_d<__half>(ctx, a);
    return fab__fail(FAB_ERR_INTERNAL, "fab_attention_forward: dtype %s reached the sm80 kernel", fab_dtype_name(a->dtype));
}
