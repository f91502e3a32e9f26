/*
 * matmul_cublas.c: fab_matmul through cublasLtMatmul: the baseline fabriek's own
 * kernels are measured against, and AUTO's choice on a real GPU where it
 * supports the call. Builds only for a real GPU (the emulator has no cuBLASLt;
 * matmul.c's stand-ins answer there).
 *
 * Row-major to cuBLAS's column-major: a row-major [r, c] matrix with row stride ld
 * is a column-major [c, r] one with leading dimension ld. So C = op(A)·op(B)
 * row-major is Cᵀ = op(B)ᵀ·op(A)ᵀ column-major: cuBLAS's "A" is our B (its op
 * our trans_b), its "B" our A, D is [n, m] with ld = ldc. In those terms the
 * epilogues line up: BIAS adds a vector along D's rows (length n, our columns),
 * DGELU_BGRAD reduces D's columns (length n: our column sums, DBIAS_FROM_C), and
 * BGRADB reduces cuBLAS's B over k (length m: our DBIAS_FROM_A).
 *
 * Epilogues: NONE/BIAS, RELU(_BIAS), GELU(_BIAS), GELU_AUX(_BIAS) for the tanh
 * GELU with pre_act, DGELU(_BGRAD) for its backward, BGRADB. Not expressible in
 * cuBLASLt (so FAB_ERR_UNSUPPORTED when forced, fabriek's kernel under AUTO):
 * GELU-erf, ReLU with pre_act values or its backward (cuBLASLt keeps a bit mask),
 * an f32 bias with a 16-bit C, batch layouts that are not one stride per operand.
 * A dbias cuBLASLt cannot fuse (other dtype, batched) is reduced after the GEMM by
 * fabriek's deterministic kernel.
 *
 * Handle, workspace (ctx->workspace_bytes) and an algorithm cache per context,
 * created on first use, in ctx->matmul's `lt` (see fab__mm_lt_state).
 * Deterministic contexts restrict cuBLASLt to algorithms without split-k
 * reductions (CUBLASLT_REDUCTION_SCHEME_NONE), so repeats are bitwise equal.
 */
#include "matmul.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>

#define UNSUPPORTED FAB_ERR_UNSUPPORTED

static const char *lt_op = "fab_matmul (cuBLASLt)";

/* The batch dims of one operand as a single stride: offset of batch z is z*S. */
static bool flat_stride(const fab__mm_args *a, const int64_t *bstride, int64_t *out)
{
    int64_t s = -1, span = 1;
    for (int j = a->nb - 1; j >= 0; j--) {
        if (a->batch_shape[j] == 1)
            continue;
        if (s < 0) {
            s = bstride[j];
            span = a->batch_shape[j];
        } else {
            if (bstride[j] != s * span)
                return false;
            span *= a->batch_shape[j];
        }
    }
    *out = s < 0 ? 0 : s;
    return true;
}

/* Per-context cuBLASLt state: the handle, the workspace, and the algorithm the
 * heuristic chose for each recent call shape. It lives in ctx->matmul (its `lt`),
 * created on first use and released with the context (fab__matmul_context_release). */
#define LT_CACHE 32
typedef struct lt_key {
    int64_t v[24];
} lt_key;
typedef struct fab__mm_lt_state {
    cublasLtHandle_t handle;
    void *workspace;
    size_t workspace_bytes;
    int next;                    /* round-robin replacement */
    int used[LT_CACHE];
    lt_key key[LT_CACHE];
    cublasLtMatmulAlgo_t algo[LT_CACHE];
    size_t algo_ws[LT_CACHE];
} fab__mm_lt_state;

typedef struct lt_plan {
    cublasLtEpilogue_t epi;
    bool fuse_dbias; /* the epilogue writes dbias */
    cudaDataType_t ab, c;
    cublasComputeType_t compute;
    int64_t sa, sb, sc, sp; /* flat batch strides */
} lt_plan;

static cudaDataType_t cuda_type(fab_dtype dt)
{
    return dt == FAB_DTYPE_F16 ? CUDA_R_16F : dt == FAB_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

static fab_status plan(const fab__mm_args *a, lt_plan *p)
{
    memset(p, 0, sizeof *p);
    if (a->m == 0 || a->n == 0 || a->batch == 0)
        return fab__fail(UNSUPPORTED, "%s: empty product", lt_op);
    if (a->k == 0)
        return fab__fail(UNSUPPORTED, "%s: k = 0", lt_op);
    if (a->m > INT32_MAX || a->n > INT32_MAX || a->k > INT32_MAX || a->batch > INT32_MAX)
        return fab__fail(UNSUPPORTED, "%s: m, n, k or the batch count past 2^31", lt_op);
    /* cuBLASLt's alignment preferences describe A, B, C and D only: a kernel the
     * heuristic picks may assume a 16-byte aligned bias vector (PyTorch and llm.c
     * refuse or describe it likewise); a bias view at another offset goes to our
     * kernel instead */
    if ((a->bias && (uintptr_t)a->bias % 16) || (a->dbias && (uintptr_t)a->dbias % 16))
        return fab__fail(UNSUPPORTED, "%s: bias and dbias must be 16-byte aligned", lt_op);
    if (!flat_stride(a, a->a_bstride, &p->sa) || !flat_stride(a, a->b_bstride, &p->sb) ||
        !flat_stride(a, a->c_bstride, &p->sc) || (a->pre_act && !flat_stride(a, a->p_bstride, &p->sp)))
        return fab__fail(UNSUPPORTED, "%s: the batch dims of a, b, c or pre_act are not one stride apart", lt_op);
    if (a->bias && a->bias_dtype != a->c_dtype)
        return fab__fail(UNSUPPORTED, "%s: bias.dtype=%s must equal c.dtype=%s", lt_op, fab_dtype_name(a->bias_dtype),
                         fab_dtype_name(a->c_dtype));
    p->ab = cuda_type(a->ab_dtype);
    p->c = cuda_type(a->c_dtype);
    p->compute = a->ab_dtype == FAB_DTYPE_F32 && a->tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    bool dbias_ok = a->dbias && a->dbias_dtype == a->c_dtype && a->batch == 1;
    bool bias = a->bias != NULL;
    switch (a->act) {
    case FAB_MATMUL_ACT_NONE:
        if (bias) {
            p->epi = CUBLASLT_EPILOGUE_BIAS;
        } else if (dbias_ok && a->dbias_from == FAB_MATMUL_DBIAS_FROM_A) {
            p->epi = CUBLASLT_EPILOGUE_BGRADB;
            p->fuse_dbias = true;
        } else {
            p->epi = CUBLASLT_EPILOGUE_DEFAULT;
        }
        break;
    case FAB_MATMUL_ACT_RELU:
        if (a->pre_act)
            return fab__fail(UNSUPPORTED, "%s: ReLU with pre_act values (cuBLASLt keeps a bit mask)", lt_op);
        p->epi = bias ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
        break;
    case FAB_MATMUL_ACT_GELU_TANH:
        if (a->pre_act && (a->ldp % 8 != 0 || p->sp % 8 != 0 || (uintptr_t)a->pre_act % 16 != 0))
            return fab__fail(UNSUPPORTED, "%s: pre_act needs a row stride and batch stride divisible by 8 and 16-byte alignment",
                             lt_op);
        if (a->act_backward) {
            if (dbias_ok && a->dbias_from == FAB_MATMUL_DBIAS_FROM_C) {
                p->epi = CUBLASLT_EPILOGUE_DGELU_BGRAD;
                p->fuse_dbias = true;
            } else {
                p->epi = CUBLASLT_EPILOGUE_DGELU;
            }
        } else if (a->pre_act) {
            p->epi = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
        } else {
            p->epi = bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
        }
        break;
    default:
        return fab__fail(UNSUPPORTED, "%s: activation %d (GELU-erf is not a cuBLASLt epilogue)", lt_op, (int)a->act);
    }
    if (a->act == FAB_MATMUL_ACT_RELU && a->act_backward)
        return fab__fail(UNSUPPORTED, "%s: the ReLU backward needs cuBLASLt's bit mask, not pre_act", lt_op);
    return FAB_OK;
}

fab_status fab__matmul_cublaslt_supports(const fab_context *ctx, const fab__mm_args *a)
{
    (void)ctx;
    lt_plan p;
    return plan(a, &p);
}

/* Largest power of two (<= 256) dividing the address: the alignment we promise. */
static uint32_t align_of(const void *ptr)
{
    uint32_t al = 256;
    while (al > 1 && (uintptr_t)ptr % al != 0)
        al /= 2;
    return al;
}

#define LT_TRY(call, what)                                                                                      \
    do {                                                                                                        \
        cublasStatus_t st_ = (call);                                                                            \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                                                     \
            status = fab__fail(st_ == CUBLAS_STATUS_NOT_SUPPORTED ? UNSUPPORTED : FAB_ERR_BACKEND, "%s: %s failed: %s", \
                               lt_op, what, cublasLtGetStatusString(st_));                                      \
            goto done;                                                                                          \
        }                                                                                                       \
    } while (0)

static cublasStatus_t set_layout_batch(cublasLtMatrixLayout_t l, int32_t count, int64_t stride)
{
    cublasStatus_t s = cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride);
    return s;
}

static lt_key make_key(const fab_context *ctx, const fab__mm_args *a, const lt_plan *pl)
{
    lt_key k;
    memset(&k, 0, sizeof k);
    int64_t *v = k.v;
    v[0] = a->m, v[1] = a->n, v[2] = a->k, v[3] = a->lda, v[4] = a->ldb, v[5] = a->ldc, v[6] = a->ldp;
    v[7] = a->batch, v[8] = pl->sa, v[9] = pl->sb, v[10] = pl->sc, v[11] = pl->sp;
    v[12] = a->ab_dtype, v[13] = a->c_dtype, v[14] = a->trans_a, v[15] = a->trans_b, v[16] = pl->epi;
    v[17] = pl->compute, v[18] = align_of(a->a), v[19] = align_of(a->b), v[20] = align_of(a->c);
    v[21] = ctx->deterministic, v[22] = a->beta != 0.0f, v[23] = pl->fuse_dbias;
    return k;
}

static void release_state(fab__mm_lt_state *st)
{
    if (!st)
        return;
    if (st->workspace)
        cudaFree(st->workspace);
    if (st->handle)
        cublasLtDestroy(st->handle);
    free(st);
}

/* The context's cuBLASLt state, created on first use. */
static fab_status get_state(fab_context *ctx, fab__mm_lt_state **out)
{
    fab__mm_state *ms = fab__matmul_state(ctx);
    if (!ms)
        return FAB_ERR_OUT_OF_MEMORY;
    fab__mm_lt_state *st = (fab__mm_lt_state *)ms->lt;
    if (!st) {
        st = calloc(1, sizeof *st);
        if (!st)
            return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: out of host memory", lt_op);
        cublasStatus_t cs = cublasLtCreate(&st->handle);
        if (cs != CUBLAS_STATUS_SUCCESS) {
            free(st);
            return fab__fail(FAB_ERR_BACKEND, "%s: cublasLtCreate failed: %s", lt_op, cublasLtGetStatusString(cs));
        }
        if (ctx->workspace_bytes > 0) {
            cudaError_t err = cudaMalloc(&st->workspace, ctx->workspace_bytes);
            if (err != cudaSuccess) {
                (void)cudaGetLastError();
                st->workspace = NULL; /* run without a workspace */
            } else {
                st->workspace_bytes = ctx->workspace_bytes;
            }
        }
        ms->lt = st;
    }
    *out = st;
    return FAB_OK;
}

void fab__matmul_cublaslt_release(fab_context *ctx, fab__mm_state *ms)
{
    if (ctx->backend == FAB_BACKEND_CUDA && ms->lt) {
        cudaSetDevice(ctx->device);
        release_state((fab__mm_lt_state *)ms->lt);
    }
    ms->lt = NULL;
}

fab_status fab__matmul_cublaslt(fab_context *ctx, const fab__mm_args *a)
{
    lt_plan pl;
    FAB__TRY(plan(a, &pl));
    fab__mm_lt_state *st = NULL;
    FAB__TRY(get_state(ctx, &st));
    fab_status status = FAB_OK;
    cudaStream_t stream = (cudaStream_t)ctx->stream;
    cublasLtHandle_t h = st->handle;
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;

    LT_TRY(cublasLtMatmulDescCreate(&desc, pl.compute, CUDA_R_32F), "cublasLtMatmulDescCreate");
    /* cuBLAS's A is our B, its B our A */
    cublasOperation_t opa = a->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, opb = a->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa), "TRANSA");
    LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb), "TRANSB");
    LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &pl.epi, sizeof pl.epi), "EPILOGUE");
    if (a->bias || pl.fuse_dbias) {
        const void *bp = a->bias ? a->bias : a->dbias;
        LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp), "BIAS_POINTER");
    }
    if (a->pre_act) {
        int64_t ld = a->ldp;
        LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &a->pre_act,
                                              sizeof a->pre_act),
               "EPILOGUE_AUX_POINTER");
        LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld), "EPILOGUE_AUX_LD");
        if (a->batch > 1)
            LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE, &pl.sp, sizeof pl.sp),
                   "EPILOGUE_AUX_BATCH_STRIDE");
    }
    /* layouts, column-major: our B as [n, k] (op N) or [k, n] (op T), ld ldb */
    LT_TRY(cublasLtMatrixLayoutCreate(&la, pl.ab, (uint64_t)(a->trans_b ? a->k : a->n), (uint64_t)(a->trans_b ? a->n : a->k),
                                      a->ldb),
           "layout of b");
    LT_TRY(cublasLtMatrixLayoutCreate(&lb, pl.ab, (uint64_t)(a->trans_a ? a->m : a->k), (uint64_t)(a->trans_a ? a->k : a->m),
                                      a->lda),
           "layout of a");
    LT_TRY(cublasLtMatrixLayoutCreate(&lc, pl.c, (uint64_t)a->n, (uint64_t)a->m, a->ldc), "layout of c");
    if (a->batch > 1) {
        LT_TRY(set_layout_batch(la, (int32_t)a->batch, pl.sb), "batch of b");
        LT_TRY(set_layout_batch(lb, (int32_t)a->batch, pl.sa), "batch of a");
        LT_TRY(set_layout_batch(lc, (int32_t)a->batch, pl.sc), "batch of c");
    }

    /* the algorithm: from the cache, else the heuristic's first choice */
    lt_key key = make_key(ctx, a, &pl);
    int slot = -1;
    for (int i = 0; i < LT_CACHE; i++)
        if (st->used[i] && memcmp(&st->key[i], &key, sizeof key) == 0) {
            slot = i;
            break;
        }
    if (slot < 0) {
        LT_TRY(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
        uint64_t wsb = st->workspace_bytes;
        LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb),
               "MAX_WORKSPACE_BYTES");
        uint32_t al_a = align_of(a->b), al_b = align_of(a->a), al_c = align_of(a->c);
        LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a), "ALIGN_A");
        LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b), "ALIGN_B");
        LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c), "ALIGN_C");
        LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c), "ALIGN_D");
        /* deterministic: no split-k at all; 16-bit C: split-k partial sums only in
         * f32 (the INPLACE and OUTPUT_TYPE schemes sum in C's type, which would
         * round more than once, against fab_matmul's contract) */
        if (ctx->deterministic || a->c_dtype != FAB_DTYPE_F32) {
            uint32_t mask = ctx->deterministic ? CUBLASLT_REDUCTION_SCHEME_NONE : CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
            LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &mask, sizeof mask),
                   "REDUCTION_SCHEME_MASK");
        }
        cublasLtMatmulHeuristicResult_t res;
        int found = 0;
        memset(&res, 0, sizeof res);
        LT_TRY(cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, lc, lc, pref, 1, &res, &found),
               "cublasLtMatmulAlgoGetHeuristic");
        if (found == 0 || res.state != CUBLAS_STATUS_SUCCESS) {
            status = fab__fail(UNSUPPORTED, "%s: no cuBLASLt algorithm for this call (epilogue %d)", lt_op, (int)pl.epi);
            goto done;
        }
        slot = st->next;
        st->next = (st->next + 1) % LT_CACHE;
        st->used[slot] = 1;
        st->key[slot] = key;
        st->algo[slot] = res.algo;
        st->algo_ws[slot] = res.workspaceSize;
    }
    {
        /* beta = 0 must not read C (it may hold NaN): cuBLAS does not read C then */
        float alpha = a->alpha, beta = a->beta;
        LT_TRY(cublasLtMatmul(h, desc, &alpha, a->b, la, a->a, lb, &beta, a->c, lc, a->c, lc, &st->algo[slot],
                              st->workspace, st->algo_ws[slot], stream),
               "cublasLtMatmul");
    }
    if (a->dbias && !pl.fuse_dbias) /* fabriek's deterministic reduction, after the GEMM on the same stream */
        status = fab__matmul_dbias_cuda(ctx, a);
done:
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    if (la)
        cublasLtMatrixLayoutDestroy(la);
    if (lb)
        cublasLtMatrixLayoutDestroy(lb);
    if (lc)
        cublasLtMatrixLayoutDestroy(lc);
    if (desc)
        cublasLtMatmulDescDestroy(desc);
    return status;
}

size_t fab__matmul_cublaslt_version(void)
{
    return cublasLtGetVersion();
}
