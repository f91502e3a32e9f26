/*
 * matmul_cuda_common.cuh: what fabriek's CUDA GEMMs share (matmul_cuda.cu: SIMT and
 * reference kernels; matmul_sm80.cu: tensor-core kernel): the geometry and batch
 * structs passed by value, their one host-side fill from fab__mm_args, the batch
 * offsets of a block, the activation and its derivative, and the per-element
 * epilogue. Include after gelu_math.h, cuda_dtype.cuh and matmul.h.
 */
#ifndef FAB_MATMUL_CUDA_COMMON_CUH
#define FAB_MATMUL_CUDA_COMMON_CUH

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
};

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

/* Element i of C, pre_act or bias (f32 when c_f32, else T), as f32. */
template <typename T>
static __device__ __forceinline__ float mm_load_c(const void *p, int64_t i, int c_f32)
{
    return c_f32 ? ((const float *)p)[i] : fab__to_f32(((const T *)p)[i]);
}

/* Stores v to element i of C or pre_act, rounded once to T unless c_f32. */
template <typename T>
static __device__ __forceinline__ void mm_store_c(void *p, int64_t i, int c_f32, float v)
{
    if (c_f32)
        ((float *)p)[i] = v;
    else
        ((T *)p)[i] = fab__from_f32<T>(v);
}

/* The epilogue of element (row, col) of C, run by the thread that holds its
 * accumulator acc = op(A)·op(B) (f32): alpha·acc + beta·C, then either times the
 * activation's derivative at pre_act (act_backward), or + bias, pre_act stored,
 * activation. All in f32, one rounding to C's dtype. C and pre_act are f32 when
 * c_f32, else T; bias is f32 when bias_f32 or c_f32, else T. */
template <typename T>
static __device__ __forceinline__ void mm_epilogue(const mm_geom &g, float acc, int64_t row, int64_t col, void *C,
                                                   const void *bias, void *pre, int c_f32)
{
    float v = g.alpha * acc;
    int64_t ci = row * g.ldc + col;
    if (g.beta != 0.0f)
        v += g.beta * mm_load_c<T>(C, ci, c_f32);
    if (g.act_backward) {
        v *= mm_act_grad(g.act, mm_load_c<T>(pre, row * g.ldp + col, c_f32));
    } else {
        if (bias)
            v += mm_load_c<T>(bias, col, g.bias_f32 || c_f32);
        if (pre)
            mm_store_c<T>(pre, row * g.ldp + col, c_f32, v);
        v = mm_act(g.act, v);
    }
    mm_store_c<T>(C, ci, c_f32, v);
}

#endif
