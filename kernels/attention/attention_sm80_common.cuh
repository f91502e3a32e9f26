/*
 * attention_sm80_common.cuh: helpers shared by the CUDA attention kernels (the sm_80
 * ones, attention_{fwd,bwd}_sm80.cu, and for the mask, logits, spans and launch the
 * Hopper ones too). Shared tiles are row-major
 * [rows x (D+8)] of the input type: rows padded by 16 bytes, so the 8 row reads
 * of one ldmatrix phase hit 8 distinct bank groups. Fragments follow the PTX ISA
 * layout of mma.m16n8k16 (lane = 4g + t). Include after cuda_dtype.cuh and ptx.cuh.
 */
#ifndef FAB_ATTENTION_SM80_COMMON_CUH
#define FAB_ATTENTION_SM80_COMMON_CUH

namespace {

/* log2(e): the kernels take exp2 of logits in log2 units */
static constexpr float ATTN_L2E = 1.4426950408889634f;

/* Launches kernel on the context's stream with `smem` bytes of dynamic shared memory
 * (raising the kernel's limit past the default 48 KiB where needed). */
template <typename K, typename... Args>
static cudaError_t attn_launch(fab_context *ctx, K kernel, dim3 grid, int threads, size_t smem, const Args &...args)
{
    cudaError_t err = cudaSuccess;
    if (smem > 48 * 1024)
        err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess)
        return err;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(threads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = (cudaStream_t)ctx->stream;
    return cudaLaunchKernelEx(&cfg, kernel, args...);
}

/* mma.m16n8k16 (d += a b, f32 accumulate) and the packing of two f32 into one
 * 32-bit register of the input type (one rounding each), per input type. */
template <typename T> struct mma_of;
template <> struct mma_of<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2])
    {
        fab__mma_m16n8k16_bf16(d, a, b, d);
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) { return fab__pack_bf16x2(lo, hi); }
};
template <> struct mma_of<__half> {
    static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2])
    {
        fab__mma_m16n8k16_f16(d, a, b, d);
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) { return fab__pack_f16x2(lo, hi); }
};

/* Whether the mask allows every (row, key) of rows [r0, r1] x keys [k0, k1]: the
 * allowed band is convex, so its corners decide. Kernels skip the per-element
 * mask on such tiles (most of them, away from the diagonal and the edges). */
static __device__ __forceinline__ bool attn_all_allowed(const fab__attn_args &a, int64_t r0, int64_t r1, int64_t k0,
                                                        int64_t k1, int64_t off)
{
    return (a.right < 0 || k1 <= r0 + off + a.right) && (a.left < 0 || k0 >= r1 + off - a.left);
}

/* Whether the mask allows any (row, key) of rows [r0, r1] x keys [k0, k1]: the
 * keys rows r0..r1 may see together are [r0 + off - left, r1 + off + right] (each
 * row's band is non-empty and shifts by one per row). Kernels skip a warp's work
 * on tiles it sees none of (near the causal diagonal, past a window's edge). */
static __device__ __forceinline__ bool attn_any_allowed(const fab__attn_args &a, int64_t r0, int64_t r1, int64_t k0,
                                                        int64_t k1, int64_t off)
{
    return (a.right < 0 || k0 <= r1 + off + a.right) && (a.left < 0 || k1 >= r0 + off - a.left);
}

/* The query tile (of gridDim.x) a forward or dq block takes. Where the keys a row
 * sees are bounded on the right (causal), later tiles see more of them and take
 * longer: the blocks start them first (blockIdx.x reversed), so that the last
 * blocks to start are the short ones and the grid's tail is shorter (the longest
 * first, as FlashAttention-3's scheduler orders causal tiles). */
static __device__ __forceinline__ int attn_q_tile(const fab__attn_args &a)
{
    return a.right >= 0 ? (int)(gridDim.x - 1 - blockIdx.x) : (int)blockIdx.x;
}

/* Sequence b of the batch (varlen: through cu_seqlens): first rows and lengths. */
struct attn_seq {
    int64_t q0, k0;
    int sq, sk;
};
static __device__ __forceinline__ attn_seq attn_seq_of(const fab__attn_args &a, int b)
{
    attn_seq s;
    s.q0 = 0, s.k0 = 0, s.sq = (int)a.sq, s.sk = (int)a.sk;
    if (a.cu_q_dev) {
        s.q0 = a.cu_q_dev[b], s.k0 = a.cu_k_dev[b];
        s.sq = a.cu_q_dev[b + 1] - (int)s.q0, s.sk = a.cu_k_dev[b + 1] - (int)s.k0;
    }
    return s;
}

/* A dk/dv block's query rows: those of a sequence (sq rows, off = sk - sq) that can
 * see keys [j0, j0 + nk), in tiles of qt rows from *ilo (a multiple of qt); returns
 * the tile count. */
static __device__ __forceinline__ int attn_bwd_query_tiles(const fab__attn_args &a, int64_t sq, int64_t off, int j0,
                                                           int nk, int qt, int64_t *ilo)
{
    int64_t lo = 0, hi = sq;
    if (a.right >= 0 && j0 - off - a.right > lo)
        lo = j0 - off - a.right;
    if (a.left >= 0 && j0 + nk - 1 - off + a.left + 1 < hi)
        hi = j0 + nk - 1 - off + a.left + 1;
    lo = lo / qt * qt;
    *ilo = lo;
    return hi > lo ? (int)((hi - lo + qt - 1) / qt) : 0;
}

/* A forward block's share of its sequence b (varlen: through cu_seqlens), for the
 * BM query rows from m0 of head h: the sequence's offsets and lengths, its rows
 * (nq), the kv head, and the keys [klo, khi) any of its rows may see, in tiles of
 * BN. False when the block has no rows. */
struct attn_fwd_span {
    int64_t q0, k0, off, klo, khi;
    int sq, sk, nq, kvh, ntiles;
};
static __device__ __forceinline__ bool attn_fwd_span_of(const fab__attn_args &a, int b, int h, int m0, int BM,
                                                        int BN, attn_fwd_span *s)
{
    s->q0 = 0, s->k0 = 0;
    s->sq = (int)a.sq, s->sk = (int)a.sk;
    if (a.cu_q_dev) {
        s->q0 = a.cu_q_dev[b], s->k0 = a.cu_k_dev[b];
        s->sq = a.cu_q_dev[b + 1] - (int)s->q0, s->sk = a.cu_k_dev[b + 1] - (int)s->k0;
    }
    if (m0 >= s->sq)
        return false;
    s->nq = s->sq - m0 < BM ? s->sq - m0 : BM;
    s->off = s->sk - s->sq;
    s->kvh = h / (int)(a.hq / a.hkv);
    s->klo = 0, s->khi = s->sk;
    if (a.left >= 0 && m0 + s->off - a.left > s->klo)
        s->klo = m0 + s->off - a.left;
    if (a.right >= 0 && m0 + s->nq - 1 + s->off + a.right + 1 < s->khi)
        s->khi = m0 + s->nq - 1 + s->off + a.right + 1;
    s->ntiles = s->khi > s->klo ? (int)((s->khi - s->klo + BN - 1) / BN) : 0;
    return true;
}

/* One raw product x of query position pos (its row + off) and key `key` as a
 * log2-unit logit: x scale log2(e) (k_scale), or softcap tanh(x scale / softcap)
 * log2(e); with MASK, -inf for a key past khi or outside the row's band. */
template <bool MASK>
static __device__ __forceinline__ float attn_logit(const fab__attn_args &a, float x, float k_scale, int64_t key,
                                                   int64_t pos, int64_t khi)
{
    x = a.softcap > 0 ? a.softcap * tanhf(x * a.scale / a.softcap) * ATTN_L2E : x * k_scale;
    if (MASK) {
        bool ok = key < khi && (a.right < 0 || key <= pos + a.right) && (a.left < 0 || key >= pos - a.left);
        x = ok ? x : -INFINITY;
    }
    return x;
}

/* The backward's logit in log2 units of raw product x (scale, softcap), and
 * ds/dx (scale included), the factor dS = P (dP - D) carries. */
static __device__ __forceinline__ float attn_logit2(const fab__attn_args &a, float x, float *dsx)
{
    if (a.softcap > 0) {
        float th = tanhf(x * a.scale / a.softcap);
        *dsx = (1.0f - th * th) * a.scale;
        return a.softcap * th * ATTN_L2E;
    }
    *dsx = a.scale;
    return x * a.scale * ATTN_L2E;
}

/* Whether key `key` is allowed for query row `row` (sequence-relative, off = sk - sq). */
static __device__ __forceinline__ bool attn_allowed(const fab__attn_args &a, int64_t row, int64_t key, int64_t off)
{
    int64_t pos = row + off;
    return (a.right < 0 || key <= pos + a.right) && (a.left < 0 || key >= pos - a.left);
}

/* Copies rows [row0, row0 + n) (n <= rows, rows a multiple of 8) of one head (row
 * stride ss) into smem [rows x (D+8)] with 16-byte cp.async, rows past n
 * zero-filled. The caller commits and waits.
 * Thread mapping: the block's THREADS threads take the D/8 chunks of the rows in
 * turn, so 8 lanes (one 128-byte phase of the shared write) read 128 contiguous
 * bytes of a row. A padded row is D/8 + 1 chunks (odd), so 8 chunks of one row
 * fall in 8 bank groups. At D = 32 and 96 the last 4 chunks of a row cannot fill a
 * phase: those of rows r and r + 4 of each group of 8 rows share one instead, 4
 * (D+8)-rows apart = 4 bank groups apart. PAIR = false keeps the plain order there
 * (a phase then takes rows r, r + 1 and one bank group twice: 2 wavefronts where 1
 * would do): the dkdv kernel at D = 32, where ptxas holds the kernel at 128
 * registers and the pairing's index math makes it spill (sm_100a). */
template <typename T, int D, int THREADS, bool PAIR = true>
static __device__ __forceinline__ void attn_load_rows(T *smem, const T *base, int64_t ss, int row0, int n, int rows)
{
    constexpr int chunks = D / 8, whole = chunks / 8 * 8; /* per row; the first `whole` in phases of 8 */
    static_assert(chunks - whole == 0 || chunks - whole == 4, "rows of 8k or 8k + 4 chunks");
    for (int c = threadIdx.x; c < rows * chunks; c += THREADS) {
        int r, ch;
        if constexpr (whole == chunks || !PAIR) {
            r = c / chunks, ch = c % chunks;
        } else if constexpr (whole == 0) { /* D = 32: phase c / 8 takes rows q and q + 4 of its group
                                            * of 8 rows, q = (c / 8) % 4 */
            r = (c >> 5 << 3) + ((c >> 3) & 3) + (c & 4), ch = c & 3;
        } else { /* per group of 8 rows: 8 x `whole` chunks in row order, then 8 x 4 in pairs of rows */
            const int g = c / (8 * chunks), i = c % (8 * chunks), j = i - 8 * whole;
            if (j < 0)
                r = 8 * g + i / whole, ch = i % whole;
            else /* phase j / 8: rows j / 8 and j / 8 + 4 */
                r = 8 * g + (j >> 3) + (j & 4), ch = whole + (j & 3);
        }
        const int col = ch * 8;
        T *dst = smem + r * (D + 8) + col;
        if (r < n)
            fab__cp_async_16(dst, base + (int64_t)(row0 + r) * ss + col);
        else
            fab__cp_async_16_zfill(dst, base, 0);
    }
}

/* Starts the copy of the K and V tile of keys [kt, min(kt + BN, khi)) into sK, sV
 * (attn_load_rows; the caller commits). */
template <typename T, int D, int BN, int THREADS>
static __device__ __forceinline__ void attn_kv_tile(T *sK, T *sV, const T *K, int64_t kss, const T *V, int64_t vss,
                                                    int64_t kt, int64_t khi)
{
    int n = (int)(khi - kt < BN ? khi - kt : BN);
    attn_load_rows<T, D, THREADS>(sK, K, kss, (int)kt, n, BN);
    attn_load_rows<T, D, THREADS>(sV, V, vss, (int)kt, n, BN);
}

/* The two-stage K/V pipeline of a loop over BN-key tiles: when a next tile exists
 * (more), starts its copy (keys from kt + BN) into the other buffer `buf ^ 1` and
 * waits for the current one only; else waits for all. The caller then
 * __syncthreads(). */
template <typename T, int D, int BN, int THREADS>
static __device__ __forceinline__ void attn_kv_next(T *sK, T *sV, const T *K, int64_t kss, const T *V, int64_t vss,
                                                    int buf, int64_t kt, int64_t khi, bool more)
{
    if (more) {
        attn_kv_tile<T, D, BN, THREADS>(sK + (buf ^ 1) * BN * (D + 8), sV + (buf ^ 1) * BN * (D + 8), K, kss, V, vss,
                                        kt + BN, khi);
        fab__cp_async_commit();
        fab__cp_async_wait<1>();
    } else {
        fab__cp_async_wait<0>();
    }
}

/* Lane's ldmatrix.x4 row address for the 16x16 block at (row0, col0) of a padded
 * tile, matrices in the order (r0-7,c0-7) (r8-15,c0-7) (r0-7,c8-15) (r8-15,c8-15):
 * an mma A fragment (rows m, columns k), or with .trans two B fragments (rows k,
 * columns n0-7 and n8-15). */
template <int D, typename T>
static __device__ __forceinline__ const T *attn_frag_a_ptr(const T *s, int row0, int col0, int lane)
{
    int m = lane / 8;
    return s + (row0 + lane % 8 + 8 * (m & 1)) * (D + 8) + col0 + 8 * (m >> 1);
}

/* The same for the order (r0-7,c0-7) (r0-7,c8-15) (r8-15,c0-7) (r8-15,c8-15): two
 * B fragments (rows n0-7 and n8-15 of a k-contiguous tile, columns k). */
template <int D, typename T>
static __device__ __forceinline__ const T *attn_frag_b_ptr(const T *s, int row0, int col0, int lane)
{
    int m = lane / 8;
    return s + (row0 + 8 * (m >> 1) + lane % 8) * (D + 8) + col0 + 8 * (m & 1);
}

/* The A fragments of a warp's 16 query rows (warp*16..) over all D columns of sQ,
 * kept in registers for the whole key loop. */
template <int D, typename T>
static __device__ __forceinline__ void attn_load_q_frags(uint32_t (&qf)[D / 16][4], const T *sQ, int warp, int lane)
{
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        fab__ldmatrix_x4(qf[kk], attn_frag_a_ptr<D>(sQ, warp * 16, kk * 16, lane));
}

/* An A fragment from f32 accumulators of two adjacent n-tiles (lo: columns 0-7,
 * hi: 8-15 of the k slice), each value rounded once to T: the P (or dS) registers
 * of one 16x16 block reused as the A operand without shared memory. */
template <typename T>
static __device__ __forceinline__ void attn_pack_a(uint32_t (&pa)[4], const float (&lo)[4], const float (&hi)[4])
{
    pa[0] = mma_of<T>::pack(lo[0], lo[1]);
    pa[1] = mma_of<T>::pack(lo[2], lo[3]);
    pa[2] = mma_of<T>::pack(hi[0], hi[1]);
    pa[3] = mma_of<T>::pack(hi[2], hi[3]);
}

/* acc[16MT x D] += P[16MT x BN] X[BN x D] for one warp and its MT m-tiles of 16
 * rows: P is the warp's f32 accumulators of a 16MT x BN product (p[MT][BN/8][4],
 * mma C layout), turned into A fragments by attn_pack_a (one rounding to T each);
 * X is a padded [BN x (D+8)] shared tile, read as B fragments by ldmatrix.trans,
 * each fragment used by all MT m-tiles. f32 accumulation, k in order of 16-key
 * slices. */
template <typename T, int D, int BN, int MT>
static __device__ __forceinline__ void attn_mma_px(float (&acc)[MT][D / 8][4], float (&p)[MT][BN / 8][4],
                                                   const T *sx, int lane)
{
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
        uint32_t pa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
            attn_pack_a<T>(pa[mt], p[mt][2 * kk], p[mt][2 * kk + 1]);
#pragma unroll
        for (int dn = 0; dn < D / 8; dn += 2) {
            uint32_t r[4];
            fab__ldmatrix_x4_trans(r, attn_frag_a_ptr<D>(sx, kk * 16, dn * 8, lane));
            uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                mma_of<T>::run(acc[mt][dn], pa[mt], b0);
                mma_of<T>::run(acc[mt][dn + 1], pa[mt], b1);
            }
        }
    }
}

/* The same for one m-tile (16 rows). */
template <typename T, int D, int BN>
static __device__ __forceinline__ void attn_mma_px(float (&acc)[D / 8][4], float (&p)[BN / 8][4], const T *sx,
                                                   int lane)
{
    attn_mma_px<T, D, BN, 1>(reinterpret_cast<float(&)[1][D / 8][4]>(acc),
                             reinterpret_cast<float(&)[1][BN / 8][4]>(p), sx, lane);
}

} // namespace

#endif
