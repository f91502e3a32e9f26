/*
 * matmul_cuda_common.cuh: what fabriek's CUDA GEMMs share (matmul_cuda.cu: SIMT and
 * reference kernels; matmul_sm80.cuh, matmul_sm90.cuh: tensor-core kernels): the
 * geometry and batch structs passed by value, their one host-side fill from
 * fab__mm_args, the batch offsets of a block, the tile order, the activation and its
 * derivative, and the epilogue: per element, or 8 columns at a time from a warp's
 * staged rows. Include after gelu_math.h, cuda_dtype.cuh, ptx.cuh and matmul.h.
 */
#ifndef FAB_MATMUL_CUDA_COMMON_CUH
#define FAB_MATMUL_CUDA_COMMON_CUH

#include <stdlib.h>
#include <string.h>

/* Batch geometry passed by value: shape of the batch dimensions and the element
 * strides of A, B, C and pre_act along each. */
struct mm_batch {
    int nb;
    int64_t shape[FAB__MM_MAX_BATCH];
    int64_t sa[FAB__MM_MAX_BATCH], sb[FAB__MM_MAX_BATCH], sc[FAB__MM_MAX_BATCH], sp[FAB__MM_MAX_BATCH];
};

/* Matrix geometry and epilogue of one call, passed by value. */
struct mm_geom {
    int64_t m, n, k, lda, ldb, ldc, ldp;
    int ta, tb; /* op(A), op(B) transposed (the SIMT kernels; sm80 has them as template flags) */
    float alpha, beta;
    int act, act_backward;
    int bias_f32; /* bias dtype: f32 (1) or C's (0) */
    int c_f32;    /* C and pre_act are f32, else the input type (the sm80 kernel: a runtime
                   * choice, it only touches the epilogue and halves the kernels compiled) */
    int vec8;     /* the tensor-core kernels' epilogue may move 8 consecutive columns with
                   * 16-byte loads and stores (mm_vec8_ok) */
};

/* Whether 8 consecutive columns of C, pre_act and bias starting at a column that
 * is a multiple of 8 are whole 16-byte units (two for f32) of every row and batch:
 * bases 16-byte aligned, the row strides and the strides of batch dimensions
 * longer than 1 multiples of 8 elements. FAB_MATMUL_EPILOGUE=scalar says no (the
 * benchmark's A/B of the vector epilogue). */
static inline bool mm_vec8_ok(const fab__mm_args *a)
{
    const char *env = getenv("FAB_MATMUL_EPILOGUE");
    if (env && !strcmp(env, "scalar"))
        return false;
    if ((uintptr_t)a->c % 16 != 0 || (a->m > 1 && a->ldc % 8 != 0))
        return false;
    if (a->pre_act && ((uintptr_t)a->pre_act % 16 != 0 || (a->m > 1 && a->ldp % 8 != 0)))
        return false;
    if (a->bias && (uintptr_t)a->bias % 16 != 0)
        return false;
    for (int j = 0; j < a->nb; j++)
        if (a->batch_shape[j] > 1 && (a->c_bstride[j] % 8 != 0 || (a->pre_act && a->p_bstride[j] % 8 != 0)))
            return false;
    return true;
}

/* The one host-side fill of mm_geom and mm_batch from the call's arguments. */
static inline void mm_fill(const fab__mm_args *a, mm_geom *g, mm_batch *bt)
{
    g->m = a->m;
    g->n = a->n;
    g->k = a->k;
    g->lda = a->lda;
    g->ldb = a->ldb;
    g->ldc = a->ldc;
    g->ldp = a->ldp;
    g->ta = a->trans_a;
    g->tb = a->trans_b;
    g->alpha = a->alpha;
    g->beta = a->beta;
    g->act = (int)a->act;
    g->act_backward = a->act_backward;
    g->bias_f32 = a->bias_dtype == FAB_DTYPE_F32;
    g->c_f32 = a->c_dtype == FAB_DTYPE_F32;
    g->vec8 = mm_vec8_ok(a);
    memset(bt, 0, sizeof *bt);
    bt->nb = a->nb;
    for (int j = 0; j < a->nb; j++) {
        bt->shape[j] = a->batch_shape[j];
        bt->sa[j] = a->a_bstride[j];
        bt->sb[j] = a->b_bstride[j];
        bt->sc[j] = a->c_bstride[j];
        bt->sp[j] = a->p_bstride[j];
    }
}

/* Element offsets of batch z (the sm80 kernel's blockIdx.z, the sm90 kernel's tile
 * index / tiles per matrix) in A, B, C and pre_act: z's digits in
 * the batch shape (last dimension fastest) times the strides. Every thread of a
 * block computes the same values; integer only. */
static __device__ __forceinline__ void mm_batch_offsets(const mm_batch &b, int64_t z, int64_t *oa, int64_t *ob,
                                                        int64_t *oc, int64_t *op)
{
    int64_t a = 0, bb = 0, c = 0, p = 0;
    for (int j = b.nb - 1; j >= 0; j--) {
        int64_t i = z % b.shape[j];
        z /= b.shape[j];
        a += i * b.sa[j];
        bb += i * b.sb[j];
        c += i * b.sc[j];
        p += i * b.sp[j];
    }
    *oa = a;
    *ob = bb;
    *oc = c;
    *op = p;
}

/* Tile pid of an ntm x ntn grid of C tiles, (tm, tn), in the order blocks take
 * them (tensor-core kernels). The GPU starts blocks in blockIdx order (x fastest),
 * and a persistent kernel's blocks take consecutive pids at once, so take that order
 * through groups of 8 m-tiles, n-tiles within a group: a wave of tiles then covers
 * 8 m-tiles by (tiles in the wave) / 8 n-tiles of C, not one or two rows of tiles
 * across all of n, and the A rows and B columns it reads are fewer and stay in L2.
 * The last group may have fewer m-tiles. */
static __device__ __forceinline__ void mm_tile_order(int64_t pid, int64_t ntm, int64_t ntn, int64_t *tm, int64_t *tn)
{
    const int GROUP_M = 8;
    const int64_t per_group = (int64_t)GROUP_M * ntn;
    const int64_t first_m = pid / per_group * GROUP_M, in_group = pid % per_group;
    const int64_t rows = ntm - first_m < GROUP_M ? ntm - first_m : GROUP_M;
    *tm = first_m + in_group % rows;
    *tn = in_group / rows;
}

/* The block's tile of a grid of gridDim.y x gridDim.x tiles (mm_tile_order). */
static __device__ __forceinline__ void mm_block_order(int64_t *tm, int64_t *tn)
{
    mm_tile_order((int64_t)blockIdx.y * gridDim.x + blockIdx.x, gridDim.y, gridDim.x, tm, tn);
}

/* The epilogue activation of one f32 value (fab__gelu: tanh or erf form). */
static __device__ __forceinline__ float mm_act(int act, float v)
{
    switch (act) {
    case FAB_MATMUL_ACT_RELU: return v > 0.0f ? v : 0.0f;
    case FAB_MATMUL_ACT_GELU_TANH: return fab__gelu(v, 1);
    case FAB_MATMUL_ACT_GELU_ERF: return fab__gelu(v, 0);
    default: return v;
    }
}

/* Its derivative at the pre-activation x (act_backward epilogues), in f32. */
static __device__ __forceinline__ float mm_act_grad(int act, float x)
{
    switch (act) {
    case FAB_MATMUL_ACT_RELU: return x > 0.0f ? 1.0f : 0.0f;
    case FAB_MATMUL_ACT_GELU_TANH: return fab__gelu_grad(x, 1);
    case FAB_MATMUL_ACT_GELU_ERF: return fab__gelu_grad(x, 0);
    default: return 1.0f;
    }
}

/* The global accesses of the vector epilogue need 16-byte alignment, which
 * mm_vec8_ok promised: the emulator checks it (a GPU would fault). */
static __device__ __forceinline__ void mm_check16(const void *p)
{
#ifdef FAB_EMULATE_CUDA
    if ((uintptr_t)p % 16 != 0)
        __trap();
#else
    (void)p;
#endif
}

/* N (1 or 8) consecutive elements of C, pre_act or bias from element i, as f32:
 * f32 when is_f32 (or T is float), else T. N = 8: one 16-byte load for 16-bit
 * values, two for f32. */
template <typename T, int N>
static __device__ __forceinline__ void mm_load_n(const void *p, int64_t i, int is_f32, float (&v)[N])
{
    if constexpr (N == 1) {
        v[0] = is_f32 ? ((const float *)p)[i] : fab__to_f32(((const T *)p)[i]);
    } else {
        static_assert(N == 8, "1 or 8 elements");
        if (sizeof(T) == 4 || is_f32) {
            const float4 *q = reinterpret_cast<const float4 *>((const float *)p + i);
            mm_check16(q);
            const float4 x = q[0], y = q[1];
            v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
            v[4] = y.x, v[5] = y.y, v[6] = y.z, v[7] = y.w;
        } else if constexpr (sizeof(T) == 2) {
            const uint4 *q = reinterpret_cast<const uint4 *>((const T *)p + i);
            mm_check16(q);
            const uint4 x = *q;
            T h[8];
            memcpy(h, &x, sizeof x);
#pragma unroll
            for (int e = 0; e < 8; e++)
                v[e] = fab__to_f32(h[e]);
        }
    }
}

/* Stores N (1 or 8) values to elements i.. of C or pre_act, rounded once to T
 * unless is_f32 (or T is float); N = 8 as mm_load_n. */
template <typename T, int N>
static __device__ __forceinline__ void mm_store_n(void *p, int64_t i, int is_f32, const float (&v)[N])
{
    if constexpr (N == 1) {
        if (is_f32)
            ((float *)p)[i] = v[0];
        else
            ((T *)p)[i] = fab__from_f32<T>(v[0]);
    } else {
        if (sizeof(T) == 4 || is_f32) {
            float4 *q = reinterpret_cast<float4 *>((float *)p + i);
            mm_check16(q);
            q[0] = make_float4(v[0], v[1], v[2], v[3]);
            q[1] = make_float4(v[4], v[5], v[6], v[7]);
        } else if constexpr (sizeof(T) == 2) {
            uint4 *q = reinterpret_cast<uint4 *>((T *)p + i);
            mm_check16(q);
            T h[8];
#pragma unroll
            for (int e = 0; e < 8; e++)
                h[e] = fab__from_f32<T>(v[e]);
            uint4 x;
            memcpy(&x, h, sizeof x);
            *q = x;
        }
    }
}

/* The epilogue of N (1 or 8) consecutive elements (row, col..) of C from their
 * accumulators acc = op(A)·op(B) (f32): alpha·acc + beta·C (one fused multiply-add),
 * then either times the activation's derivative at pre_act (act_backward), or +
 * bias, pre_act stored, activation. All in f32, one rounding to C's dtype. The
 * operations are spelled out (__fmul_rn, __fmaf_rn, __fadd_rn) so that no compiler
 * contracts them its own way: N = 8 gives the bits N = 1 does, and the emulator
 * the GPU's. C and pre_act are f32 when c_f32, else T; bias is f32 when bias_f32
 * or c_f32, else T. */
template <typename T, int N>
static __device__ __forceinline__ void mm_epilogue_n(const mm_geom &g, const float (&acc)[N], int64_t row, int64_t col,
                                                     void *C, const void *bias, void *pre, int c_f32)
{
    float v[N], t[N];
    const int64_t ci = row * g.ldc + col;
#pragma unroll
    for (int e = 0; e < N; e++)
        v[e] = __fmul_rn(g.alpha, acc[e]);
    if (g.beta != 0.0f) {
        mm_load_n<T, N>(C, ci, c_f32, t);
#pragma unroll
        for (int e = 0; e < N; e++)
            v[e] = __fmaf_rn(g.beta, t[e], v[e]);
    }
    if (g.act_backward) {
        mm_load_n<T, N>(pre, row * g.ldp + col, c_f32, t);
#pragma unroll
        for (int e = 0; e < N; e++)
            v[e] = __fmul_rn(v[e], mm_act_grad(g.act, t[e]));
    } else {
        if (bias) {
            mm_load_n<T, N>(bias, col, g.bias_f32 || c_f32, t);
#pragma unroll
            for (int e = 0; e < N; e++)
                v[e] = __fadd_rn(v[e], t[e]);
        }
        if (pre)
            mm_store_n<T, N>(pre, row * g.ldp + col, c_f32, v);
#pragma unroll
        for (int e = 0; e < N; e++)
            v[e] = mm_act(g.act, v[e]);
    }
    mm_store_n<T, N>(C, ci, c_f32, v);
}

/* The epilogue of element (row, col) of C, run by the thread that holds its
 * accumulator (the SIMT kernels; mm_epilogue_n). */
template <typename T>
static __device__ __forceinline__ void mm_epilogue(const mm_geom &g, float acc, int64_t row, int64_t col, void *C,
                                                   const void *bias, void *pre, int c_f32)
{
    const float a[1] = {acc};
    mm_epilogue_n<T, 1>(g, a, row, col, C, bias, pre, c_f32);
}

/* The epilogue of 16 rows x W columns of a warp's accumulators, staged in shared
 * memory (row r at stage + r * SROW; C element (row0 + r, col0 + c)), by the tensor-
 * core kernels. With g.vec8 a lane takes 8 consecutive columns (16-byte loads and
 * stores; the 8 values of a row's last columns past n one by one), W / 8 lanes a
 * row, 32 / (W / 8) rows a pass: 8x fewer global store instructions than a value
 * per lane (4x for f32 C: two 16-byte stores). Its two 16-byte shared loads go in
 * the order that keeps each 8-lane phase on 32 different banks (lanes 4..7 of 8
 * take their upper half first; SROW = W + 8, W = 32 or 64, which the emulator's
 * bank model checks). Without vec8, a lane per element, consecutive lanes along
 * the row. */
template <typename T, int W, int SROW>
static __device__ __forceinline__ void mm_epilogue_staged(const mm_geom &g, const float *stage, int lane, int64_t row0,
                                                          int64_t col0, void *C, const void *bias, void *pre)
{
    static_assert(W % 8 == 0 && SROW % 4 == 0, "whole 16-byte units in the staging rows");
    if (g.vec8) {
        constexpr int CH = W / 8; /* 8-column chunks per row */
#pragma unroll 1
        for (int e = lane; e < 16 * CH; e += 32) {
            const int r = e / CH, c = 8 * (e % CH);
            if (row0 + r >= g.m || col0 + c >= g.n)
                continue;
            const float *sp = stage + r * SROW + c;
            const bool swap = (lane & 4) != 0;
            const float4 x = fab__ld_shared(reinterpret_cast<const float4 *>(sp + (swap ? 4 : 0)));
            const float4 y = fab__ld_shared(reinterpret_cast<const float4 *>(sp + (swap ? 0 : 4)));
            const float4 lo = swap ? y : x, hi = swap ? x : y;
            const float v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
            if (col0 + c + 8 <= g.n) {
                mm_epilogue_n<T, 8>(g, v, row0 + r, col0 + c, C, bias, pre, g.c_f32);
            } else {
#pragma unroll 1
                for (int q = 0; col0 + c + q < g.n; q++) {
                    float a[1] = {v[0]}; /* v[q] by selects: v stays in registers */
#pragma unroll
                    for (int k = 1; k < 8; k++)
                        a[0] = q == k ? v[k] : a[0];
                    mm_epilogue_n<T, 1>(g, a, row0 + r, col0 + c + q, C, bias, pre, g.c_f32);
                }
            }
        }
        return;
    }
#pragma unroll 1
    for (int e = lane; e < 16 * W; e += 32) {
        const int r = e / W, c = e % W;
        const float v = fab__ld_shared(stage + r * SROW + c); /* every lane: one warp-wide load */
        if (row0 + r < g.m && col0 + c < g.n)
            mm_epilogue<T>(g, v, row0 + r, col0 + c, C, bias, pre, g.c_f32);
    }
}

#endif
