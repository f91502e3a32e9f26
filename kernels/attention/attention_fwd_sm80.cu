/*
 * attention_fwd_sm80.cu: FlashAttention-2-style forward for sm_80 and later.
 *
 * Idea: one block of 4 warps per (64-query tile, query head, sequence); each warp
 * owns 16 query rows, kept in registers as mma A fragments (at head_dim 256 read
 * from shared memory per key tile instead: see fwd_bn). The block streams the
 * 64-key (head_dim 256: 32-key) tiles its rows may see through shared memory with
 * cp.async, two stages deep (the next K/V tile loads while this one is used).
 * Per tile a warp computes S = Q K^T with mma.m16n8k16 (K fragments by
 * ldmatrix), applies scale, softcap and (on the tiles that straddle the edge of
 * the allowed band, per warp) the mask in registers, updates the online
 * softmax (running max m and sum l per row, exp2 of log2-unit scores), turns P
 * into A fragments without touching shared memory, and accumulates O += P V (V
 * fragments by ldmatrix.trans).
 * Thread mapping: lane = 4g + t holds rows g and g+8 of its warp's 16, columns
 * 2t, 2t+1 of every 8-wide n-tile; row max and sum are reduced over the 4 lanes
 * of a quad with shuffles.
 * Numerics: f32 scores and accumulators; P is rounded to the input type for the
 * P V product (as FlashAttention); out rounded once; lse = (m + log2 l) ln 2.
 * Shared rows are padded by 16 bytes, so ldmatrix's 8 row reads hit 8 distinct
 * bank groups.
 */
#include <cuda_runtime.h>

#include "../common/cuda_dtype.cuh"
#include "../common/ptx.cuh"
#include "attention.h"
#include "attention_sm80_common.cuh"

namespace {

const int BM = 64;      /* query rows per block (16 per warp) */
const int THREADS = 128;

/* Tile shape per head dim. Up to 128: 64-key tiles, Q fragments held in registers
 * for the whole key loop. 256: the O accumulators alone take 128 registers per
 * thread, so Q fragments are read from shared memory for each tile (ldmatrix), and
 * keys come in 32-key tiles (two stages of 64-key K and V tiles would not fit in
 * an A100's 163 KB of shared memory; 32 also halves the score registers). */
template <int D> struct fwd_bn {
    static const int value = D > 128 ? 32 : 64;
    static const bool q_in_regs = D <= 128;
};

/* The raw products s of one warp's 16 rows x BN keys into log2-unit logits
 * (scale or softcap), and the row maxima into mx. MASK: keys the mask forbids (or
 * past khi) become -inf; without it (a tile inside the allowed band) the per-
 * element index arithmetic is skipped. */
template <int BN, bool MASK>
static __device__ __forceinline__ void fwd_logits(const fab__attn_args &a, float (&s)[BN / 8][4], float (&mx)[2],
                                                  int64_t kt, int64_t khi, int r_lo, int64_t off, int t)
{
    const float L2E = 1.4426950408889634f;
    const float k_scale = a.scale * L2E;
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float x = s[j][e];
            x = a.softcap > 0 ? a.softcap * tanhf(x * a.scale / a.softcap) * L2E : x * k_scale;
            if (MASK) {
                int64_t key = kt + j * 8 + 2 * t + (e & 1);
                int64_t pos = r_lo + 8 * (e >> 1) + off;
                bool ok = key < khi && (a.right < 0 || key <= pos + a.right) && (a.left < 0 || key >= pos - a.left);
                x = ok ? x : -INFINITY;
            }
            s[j][e] = x;
            mx[e >> 1] = fmaxf(mx[e >> 1], x);
        }
    }
}

template <typename T, int D>
__global__ void __launch_bounds__(THREADS)
attention_fwd_kernel(const fab__attn_args a)
{
    typedef mma_of<T> M;
    const int BN = fwd_bn<D>::value;
    FAB_DYNAMIC_SMEM(T, smem);
    T *sQ = smem, *sK = sQ + BM * (D + 8), *sV = sK + 2 * BN * (D + 8);
    const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * BM;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

    /* this sequence */
    int64_t q0 = 0, k0 = 0;
    int sq = (int)a.sq, sk = (int)a.sk;
    if (a.cu_q_dev) {
        q0 = a.cu_q_dev[b], k0 = a.cu_k_dev[b];
        sq = a.cu_q_dev[b + 1] - (int)q0, sk = a.cu_k_dev[b + 1] - (int)k0;
    }
    if (m0 >= sq)
        return;
    const int nq = sq - m0 < BM ? sq - m0 : BM;
    const int64_t off = sk - sq;
    const int kvh = h / (int)(a.hq / a.hkv);
    int64_t klo = 0, khi = sk; /* keys any row of the block may see */
    if (a.left >= 0 && m0 + off - a.left > klo)
        klo = m0 + off - a.left;
    if (a.right >= 0 && m0 + nq - 1 + off + a.right + 1 < khi)
        khi = m0 + nq - 1 + off + a.right + 1;
    const int ntiles = khi > klo ? (int)((khi - klo + BN - 1) / BN) : 0;

    const T *Q = (const T *)a.q.data + b * a.q.sb + q0 * a.q.ss + h * a.q.sh;
    const T *K = (const T *)a.k.data + b * a.k.sb + k0 * a.k.ss + kvh * a.k.sh;
    const T *V = (const T *)a.v.data + b * a.v.sb + k0 * a.v.ss + kvh * a.v.sh;

    attn_load_rows<T, D, THREADS>(sQ, Q, a.q.ss, m0, nq, BM);
    if (ntiles > 0)
        attn_kv_tile<T, D, BN, THREADS>(sK, sV, K, a.k.ss, V, a.v.ss, klo, khi);
    fab__cp_async_commit();

    const bool QREG = fwd_bn<D>::q_in_regs;
    uint32_t qf[QREG ? D / 16 : 1][4];
    float o[D / 8][4];
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0, 0};
#pragma unroll
    for (int i = 0; i < D / 8; i++)
        o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0;
    const int r_lo = m0 + warp * 16 + g; /* rows of this lane: r_lo, r_lo + 8 */

    for (int it = 0; it < ntiles; it++) {
        const int buf = it & 1;
        const int64_t kt = klo + (int64_t)it * BN;
        attn_kv_next<T, D, BN, THREADS>(sK, sV, K, a.k.ss, V, a.v.ss, buf, kt, khi, it + 1 < ntiles);
        __syncthreads();
        if (QREG && it == 0) {
#pragma unroll
            for (int kk = 0; kk < (QREG ? D / 16 : 1); kk++)
                fab__ldmatrix_x4(qf[kk], attn_frag_a_ptr<D>(sQ, warp * 16, kk * 16, lane));
        }
        const T *cK = sK + buf * BN * (D + 8), *cV = sV + buf * BN * (D + 8);

        /* S = Q K^T: 16 x 64 per warp */
        float s[BN / 8][4];
#pragma unroll
        for (int j = 0; j < BN / 8; j++)
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t qs[4];
            if (!QREG)
                fab__ldmatrix_x4(qs, attn_frag_a_ptr<D>(sQ, warp * 16, kk * 16, lane));
            const uint32_t(&qa)[4] = QREG ? qf[QREG ? kk : 0] : qs;
#pragma unroll
            for (int j = 0; j < BN / 8; j += 2) {
                uint32_t r[4];
                fab__ldmatrix_x4(r, attn_frag_b_ptr<D>(cK, j * 8, kk * 16, lane));
                uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                M::run(s[j], qa, b0);
                M::run(s[j + 1], qa, b1);
            }
        }

        /* logits in log2 units, masked unless every (row, key) of this warp's 16
         * rows and the tile is allowed (warp-uniform); row max */
        float mx[2] = {mrow[0], mrow[1]};
        const int64_t w_first = m0 + warp * 16, w_last = w_first + 15 < m0 + nq - 1 ? w_first + 15 : m0 + nq - 1;
        const bool inside = kt + BN <= khi && attn_all_allowed(a, w_first, w_last, kt, kt + BN - 1, off);
        if (inside)
            fwd_logits<BN, false>(a, s, mx, kt, khi, r_lo, off, t);
        else
            fwd_logits<BN, true>(a, s, mx, kt, khi, r_lo, off, t);
        float alpha[2], muse[2];
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(0xffffffffu, mx[hr], 1));
            mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(0xffffffffu, mx[hr], 2));
            muse[hr] = mx[hr] == -INFINITY ? 0.0f : mx[hr];
            alpha[hr] = fab__ex2_approx(mrow[hr] - muse[hr]); /* 0 while mrow is -inf */
            mrow[hr] = mx[hr];
            lrow[hr] *= alpha[hr];
        }
#pragma unroll
        for (int j = 0; j < BN / 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float p = fab__ex2_approx(s[j][e] - muse[e >> 1]);
                s[j][e] = p;
                lrow[e >> 1] += p;
            }
        }
#pragma unroll
        for (int i = 0; i < D / 8; i++) {
            o[i][0] *= alpha[0], o[i][1] *= alpha[0];
            o[i][2] *= alpha[1], o[i][3] *= alpha[1];
        }

        /* O += P V: P from the S registers, V by ldmatrix.trans */
        attn_mma_px<T, D, BN>(o, s, cV, lane);
        __syncthreads(); /* this buffer is refilled two tiles on */
    }

    /* out = O / l, lse */
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        lrow[hr] += __shfl_xor_sync(0xffffffffu, lrow[hr], 1);
        lrow[hr] += __shfl_xor_sync(0xffffffffu, lrow[hr], 2);
    }
    T *O = (T *)a.out.data + b * a.out.sb + q0 * a.out.ss + h * a.out.sh;
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        int row = r_lo + 8 * hr;
        if (row >= sq)
            continue;
        float inv = lrow[hr] > 0 ? 1.0f / lrow[hr] : 0.0f;
        T *orow = O + (int64_t)row * a.out.ss;
#pragma unroll
        for (int i = 0; i < D / 8; i++) {
            uint32_t v = M::pack(o[i][2 * hr] * inv, o[i][2 * hr + 1] * inv);
            *reinterpret_cast<uint32_t *>(orow + i * 8 + 2 * t) = v;
        }
        if (a.lse && t == 0)
            a.lse[b * a.lse_sb + h * a.lse_sh + q0 + row] = (mrow[hr] + log2f(lrow[hr])) * 0.69314718055994531f;
    }
}

template <typename T, int D>
static fab_status launch(fab_context *ctx, const fab__attn_args *a)
{
    const size_t smem = (size_t)(BM + 4 * fwd_bn<D>::value) * (D + 8) * sizeof(T);
    cudaError_t err = cudaSuccess;
    if (smem > 48 * 1024)
        err = cudaFuncSetAttribute(attention_fwd_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err == cudaSuccess) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3((unsigned)((a->sq + BM - 1) / BM), (unsigned)a->hq, (unsigned)a->batch);
        cfg.blockDim = dim3(THREADS);
        cfg.dynamicSmemBytes = smem;
        cfg.stream = (cudaStream_t)ctx->stream;
        err = cudaLaunchKernelEx(&cfg, attention_fwd_kernel<T, D>, *a);
    }
    if (err != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "fab_attention_forward: kernel launch failed: %s", cudaGetErrorString(err));
    return fab__cuda_check_launch("fab_attention_forward");
}

template <typename T>
static fab_status dispatch_d(fab_context *ctx, const fab__attn_args *a)
{
    switch (a->d) {
    case 32: return launch<T, 32>(ctx, a);
    case 64: return launch<T, 64>(ctx, a);
    case 96: return launch<T, 96>(ctx, a);
    case 128: return launch<T, 128>(ctx, a);
    case 256: return launch<T, 256>(ctx, a);
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
