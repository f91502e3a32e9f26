/*
 * attention_sm90_common.cuh: what the Hopper attention kernels (attention_fwd_sm90.cu,
 * attention_bwd_sm90.cu) share: wgmma per input type and the two issue loops
 * (attn_issue_abt, attn_issue_xb), shared-memory alignment, the TMA box load, and the
 * host side of their tensor maps and shape checks (attn_sm90_shape_ok). q, k, v,
 * dout are mapped as (head dim, rows, heads, batch, 1) with the caller's strides,
 * boxes of 64 head-dim values (128 bytes, the 128-byte swizzle's row) x rows (the
 * d64 backward's K: 32 values, the 64-byte swizzle). Include after cuda_dtype.cuh,
 * ptx.cuh and tma_host.cuh.
 */
#ifndef FAB_ATTENTION_SM90_COMMON_CUH
#define FAB_ATTENTION_SM90_COMMON_CUH

namespace {

/* wgmma.m64nNk16 per input type: ss (A and B in shared memory, TA/TB 0 K-major, 1
 * MN-major) and rs (A from registers); accumulating unless acc_in = 0 (then the
 * product overwrites acc, whose registers need no zeros first). */
template <typename T> struct wgmma_of;
template <> struct wgmma_of<__nv_bfloat16> {
    template <int N, int TA, int TB>
    static __device__ __forceinline__ void ss(float (&acc)[N / 2], uint64_t da, uint64_t db, int acc_in = 1)
    {
        fab__wgmma_bf16_ss<N, TA, TB>(acc, da, db, acc_in);
    }
    template <int N, int TB>
    static __device__ __forceinline__ void rs(float (&acc)[N / 2], const uint32_t (&a)[4], uint64_t db)
    {
        fab__wgmma_bf16_rs<N, TB>(acc, a, db, 1);
    }
};
template <> struct wgmma_of<__half> {
    template <int N, int TA, int TB>
    static __device__ __forceinline__ void ss(float (&acc)[N / 2], uint64_t da, uint64_t db, int acc_in = 1)
    {
        fab__wgmma_f16_ss<N, TA, TB>(acc, da, db, acc_in);
    }
    template <int N, int TB>
    static __device__ __forceinline__ void rs(float (&acc)[N / 2], const uint32_t (&a)[4], uint64_t db)
    {
        fab__wgmma_f16_rs<N, TB>(acc, a, db, 1);
    }
};

/* acc[64 x N] = A B^T over D head dims: A's 64 rows at sA and B's N rows at sB, both
 * K-major in TMA boxes of one swizzle row (a_box, b_box bytes apart). B has the
 * 128-byte swizzle (boxes of 64 dims); A has A_SW's, 128 or 64 bytes (32 dims a
 * box). The first k-step overwrites acc (scale-d 0: no zeros, whose writes would
 * make ptxas wait for the wgmma in flight). Fences, issues, commits one group. */
template <typename T, int N, int D, int A_SW = 128>
static __device__ __forceinline__ void attn_issue_abt(float (&acc)[N / 2], const unsigned char *sA, int a_box,
                                                      const unsigned char *sB, int b_box)
{
    static_assert(A_SW == 128 || A_SW == 64, "A's swizzle: 128 or 64 bytes");
    constexpr int A_STEPS = A_SW / 32; /* 16-dim k-steps in one of A's boxes */
    fab__wgmma_fence_regs(acc);
    fab__wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) {
        const uint64_t da = fab__wgmma_desc(sA + (ks / A_STEPS) * a_box + (ks % A_STEPS) * 32, 16, 8 * A_SW,
                                            A_SW == 128 ? FAB_WGMMA_SWIZZLE_128B : FAB_WGMMA_SWIZZLE_64B);
        const uint64_t db = fab__wgmma_desc(sB + (ks / 4) * b_box + (ks % 4) * 32, 16, 1024, FAB_WGMMA_SWIZZLE_128B);
        wgmma_of<T>::template ss<N, 0, 0>(acc, da, db, ks > 0);
    }
    fab__wgmma_commit();
}

/* acc[64 x N] += X B over K = 16 KSTEPS rows: X from registers (A fragments of each
 * 16-row step), B MN-major (a row of N values per k, in TMA boxes of 64 values b_box
 * bytes apart), 128-byte swizzle. Issues and commits one group; the caller fences. */
template <typename T, int N, int KSTEPS>
static __device__ __forceinline__ void attn_issue_xb(float (&acc)[N / 2], const uint32_t (&xa)[KSTEPS][4],
                                                     const unsigned char *sB, int b_box)
{
    fab__wgmma_fence_regs(acc);
#pragma unroll
    for (int kk = 0; kk < KSTEPS; kk++) {
        const uint64_t db = fab__wgmma_desc(sB + kk * 16 * 128, b_box, 1024, FAB_WGMMA_SWIZZLE_128B);
        wgmma_of<T>::template rs<N, 1>(acc, xa[kk], db);
    }
    fab__wgmma_commit();
}

/* The first 1024-byte boundary at or after p: where a 128-byte-swizzled TMA box or
 * wgmma operand must start (the kernels' SMEM sizes include the 1024 bytes). */
static __device__ __forceinline__ unsigned char *attn_align_1024(unsigned char *p)
{
    return p + ((1024 - ((uintptr_t)p & 1023)) & 1023);
}

/* One box of head-dim values (the map's box width) x rows at (dim d0, row, head, batch). */
static __device__ __forceinline__ void attn_box(void *dst, const CUtensorMap *map, int d0, int row, int head,
                                                int batch, uint64_t *bar)
{
    fab__tma_load_5d(dst, map, d0, row, head, batch, 0, bar);
}

/* The map of one operand (head dim, rows, heads, batch, and a 5th dimension of 1:
 * the 5-D load), boxes of 64 dims x box_rows with the 128-byte swizzle, or of 32
 * dims with swizzle_bytes 64. */
static bool attn_encode_view(CUtensorMap *map, const fab__attn_view &v, bool bf16, int64_t d, int64_t rows,
                             int64_t heads, int64_t batch, int box_rows, int swizzle_bytes = 128)
{
    const int64_t dims[5] = {d, rows, heads, batch, 1}, strides[4] = {v.ss, v.sh, v.sb, 0};
    return fab__tma_encode_16bit(map, v.data, bf16, 5, dims, strides, box_rows, swizzle_bytes);
}

/* The maps' row and batch extents: a varlen batch is one sequence of all the packed
 * rows (the entry checked that cu_seqlens ends at the tensor's row count), so a
 * block's rows start at its sequence's offset and rows past the sequence belong to
 * the next one (kernels mask them). */
static void attn_extents(const fab__attn_args *a, bool q, int64_t *rows, int64_t *batch)
{
    if (a->cu_q_dev) {
        *rows = q ? a->rows_q : a->rows_k;
        *batch = 1;
    } else {
        *rows = q ? a->sq : a->sk;
        *batch = a->batch;
    }
}

/* A view's strides are usable by TMA: positive multiples of 8 elements (16 bytes)
 * where the dimension has more than one index, base 16-byte aligned; and rows of
 * d values that do not overlap (a sequence stride of at least d), which the
 * emulator's cuTensorMapEncodeTiled asks for and the driver's documentation does
 * not promise either way: overlapping rows take the sm80 kernels everywhere. */
static bool attn_view_ok(const fab__attn_view &v, int64_t d, int64_t rows, int64_t heads, int64_t batch)
{
    return (uintptr_t)v.data % 16 == 0 && (rows <= 1 || (v.ss >= d && v.ss % 8 == 0)) &&
           (heads <= 1 || (v.sh > 0 && v.sh % 8 == 0)) && (batch <= 1 || (v.sb > 0 && v.sb % 8 == 0));
}

/* The head dim a Hopper kernel is compiled for that runs head dim d: d itself, and
 * 128 for 96 (the maps' head dim stays 96: TMA fills dims 96..127 of each box with
 * zeros, which add nothing to S = Q K^T or to the O, dK, dV and dQ columns that are
 * stored, and the kernels store no column past d). 0 for a head dim none runs. */
static inline int attn_sm90_kernel_d(int64_t d)
{
    return d == 64 || d == 128 || d == 256 ? (int)d : d == 96 ? 128 : 0;
}

/* The checks the Hopper kernels make beside the head dim: an sm_90 context,
 * bf16/f16, FAB_ATTN_SM90 not 0, extents TMA coordinates hold (rows + a box within
 * int), q and k/v views TMA can map. */
static bool attn_sm90_shape_ok(const fab_context *ctx, const fab__attn_args *a, int q_box, int k_box)
{
    if (ctx->sm_version != 90 || (a->dtype != FAB_DTYPE_BF16 && a->dtype != FAB_DTYPE_F16) ||
        a->sq == 0)
        return false;
    const char *env = getenv("FAB_ATTN_SM90");
    if (env && !strcmp(env, "0"))
        return false;
    int64_t qrows, krows, nb;
    attn_extents(a, true, &qrows, &nb);
    attn_extents(a, false, &krows, &nb);
    if (qrows >= ((int64_t)1 << 31) - q_box || krows >= ((int64_t)1 << 31) - k_box || a->batch > 65535 ||
        a->hq > 65535)
        return false;
    return attn_view_ok(a->q, a->d, qrows, a->hq, nb) && attn_view_ok(a->k, a->d, krows, a->hkv, nb) &&
           attn_view_ok(a->v, a->d, krows, a->hkv, nb);
}

} // namespace

#endif
