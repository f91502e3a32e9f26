/*
 * matmul_sm90.cu: which calls the Hopper GEMM (matmul_sm90.cuh) takes, its tile
 * width and schedule, and the dispatch to its instances by input dtype
 * (matmul_sm90_<dtype>.cu).
 */
#include "matmul_sm90.cuh"

/* The schedule: cooperative (both consumer warpgroups on each tile, the default) or
 * ping-pong (FAB_MATMUL_SM90_SCHEDULE=pingpong: each warpgroup on a tile of its
 * own, 128 x 128, the two taking turns, so that one's epilogue runs while the
 * other's products do; it hides the epilogue, at a third more shared-memory
 * traffic per flop than 128 x 256 tiles: the benchmark times it against the
 * default, and AUTO measures it beside the default where it measures, see
 * matmul_cuda.cu). Its tiles are 128 x 128 whatever FAB_MATMUL_SM90_TILE says. */
static bool pick_pingpong(void)
{
    const char *env = getenv("FAB_MATMUL_SM90_SCHEDULE");
    if (!env || !strcmp(env, "cooperative"))
        return false;
    if (!strcmp(env, "pingpong"))
        return true;
    static bool warned; /* once per process; a race costs at most a second line */
    if (!warned) {
        warned = true;
        fprintf(stderr, "fabriek: FAB_MATMUL_SM90_SCHEDULE=%s is not cooperative or pingpong: ignored\n", env);
    }
    return false;
}

/* Block tile width: 256 where the 128 x 256 tiles of all the batch's matrices
 * (the persistent grid's work list) still give every SM one (per k slice,
 * 128 x 256 reads 48 KiB for 2 x 4 wgmma.m64n256k16, 128 x 128 32 KiB for 2 x 4
 * m64n128k16: a third less shared-memory and L2 traffic per flop), else 128.
 * FAB_MATMUL_SM90_TILE=128x128|128x256 forces one. */
static int pick_bn(const fab_context *ctx, const fab__mm_args *a)
{
    const char *env = getenv("FAB_MATMUL_SM90_TILE");
    if (env && !strcmp(env, "128x256"))
        return 256;
    if (env && !strcmp(env, "128x128"))
        return 128;
    if (env) {
        static bool warned; /* once per process; a race costs at most a second line */
        if (!warned) {
            warned = true;
            fprintf(stderr, "fabriek: FAB_MATMUL_SM90_TILE=%s is not 128x128 or 128x256: ignored\n", env);
        }
    }
    /* C's m n batch elements are in memory, so the product stays far below 2^63 */
    const int64_t tiles = ((a->m + SM90_BM - 1) / SM90_BM) * ((a->n + 255) / 256) * a->batch;
    return tiles >= (int64_t)ctx->sm_count ? 256 : 128;
}

FAB__SM90A_PROBE(fab__matmul_sm90a_code, have_sm90a_code)

extern "C" bool fab__matmul_sm90_supports(const fab_context *ctx, const fab__mm_args *a)
{
    if (ctx->sm_version != 90)
        return false;
    if (a->ab_dtype != FAB_DTYPE_BF16 && a->ab_dtype != FAB_DTYPE_F16)
        return false;
    const char *env = getenv("FAB_MATMUL_SM90");
    if (env && !strcmp(env, "0"))
        return false;
    /* batches: up to 3 batch dimensions (the maps' rank is 5), none broadcast (TMA
     * strides are not 0), strides of whole 16 bytes, and each shorter than 2^31 (a
     * TMA coordinate is 32-bit) */
    if (a->nb > 3)
        return false;
    for (int j = 0; j < a->nb; j++)
        if (a->batch_shape[j] >= ((int64_t)1 << 31) ||
            (a->batch_shape[j] > 1 && (a->a_bstride[j] <= 0 || a->b_bstride[j] <= 0 || a->a_bstride[j] % 8 != 0 ||
                                       a->b_bstride[j] % 8 != 0)))
            return false;
    if ((uintptr_t)a->a % 16 != 0 || (uintptr_t)a->b % 16 != 0)
        return false;
    int64_t a_rows = a->trans_a ? a->k : a->m, b_rows = a->trans_b ? a->n : a->k;
    if ((a_rows > 1 && a->lda % 8 != 0) || (b_rows > 1 && a->ldb % 8 != 0))
        return false;
    /* TMA coordinates are 32-bit (the grid is one-dimensional: any tile count) */
    if (a->m >= ((int64_t)1 << 31) || a->n >= ((int64_t)1 << 31) || a->k >= ((int64_t)1 << 31))
        return false;
    return have_sm90a_code() && fab__tma_encoder() != NULL;
}

static fab_status run_dtype(fab_context *ctx, const fab__mm_args *a, int bn, bool pingpong)
{
    return a->ab_dtype == FAB_DTYPE_BF16 ? fab__matmul_sm90_bf16(ctx, a, bn, pingpong)
                                         : fab__matmul_sm90_f16(ctx, a, bn, pingpong);
}

extern "C" fab_status fab__matmul_sm90_pingpong(fab_context *ctx, const fab__mm_args *a)
{
    return run_dtype(ctx, a, 128, true);
}

extern "C" fab_status fab__matmul_sm90(fab_context *ctx, const fab__mm_args *a)
{
    if (pick_pingpong())
        return fab__matmul_sm90_pingpong(ctx, a);
    return run_dtype(ctx, a, pick_bn(ctx, a), false);
}
