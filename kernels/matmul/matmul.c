/*
 * matmul.c: public entries fab_matmul and fab_matmul_bias_grad. Validates every
 * argument (naming it in the message, writing nothing on rejection), reduces the
 * call to fab__mm_args (row strides, per-batch strides with broadcasts as 0), and
 * dispatches to the context's backend and the algorithm asked for.
 */
#include "matmul.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define INVALID FAB_ERR_INVALID_ARGUMENT
#define UNSUPPORTED FAB_ERR_UNSUPPORTED

static bool absent(const fab_tensor *t)
{
    return t->data == NULL && t->ndim == 0;
}

/* The last two dims of a matrix operand: inner stride 1, row stride >= row length. */
static fab_status check_matrix(const char *op, const char *name, const fab_tensor *t)
{
    FAB__TRY(fab__check_tensor(op, name, t));
    if (t->ndim < 2)
        return fab__fail(INVALID, "%s: %s.ndim=%d must be >= 2 (a matrix, optionally batched)", op, name, t->ndim);
    int r = t->ndim - 2, c = t->ndim - 1;
    if (t->shape[c] > 1 && t->stride[c] != 1)
        return fab__fail(INVALID, "%s: %s.stride[%d]=%" PRId64 " must be 1 (rows must be contiguous)", op, name, c,
                         t->stride[c]);
    if (t->shape[r] > 1 && t->stride[r] < t->shape[c])
        return fab__fail(INVALID, "%s: %s.stride[%d]=%" PRId64 " must be >= %s.shape[%d]=%" PRId64
                                  " (the row stride may not be smaller than a row)",
                         op, name, r, t->stride[r], name, c, t->shape[c]);
    return FAB_OK;
}

/* Batch strides of operand t (ndim-2 batch dims, right-aligned against C's nb). */
static fab_status batch_strides(const char *op, const char *name, const fab_tensor *t, const fab_tensor *c,
                                int64_t *out)
{
    int nb = c->ndim - 2, tb = t->ndim - 2;
    if (tb > nb)
        return fab__fail(INVALID, "%s: %s.ndim=%d must be <= c.ndim=%d (C's batch dims are the product's)", op, name,
                         t->ndim, c->ndim);
    for (int j = 0; j < nb; j++) {
        int tj = j - (nb - tb);
        if (tj < 0 || t->shape[tj] == 1) {
            out[j] = 0;
            continue;
        }
        if (t->shape[tj] != c->shape[j])
            return fab__fail(INVALID, "%s: %s.shape[%d]=%" PRId64 " must equal c.shape[%d]=%" PRId64 " or be 1 (batch dims broadcast)",
                             op, name, tj, t->shape[tj], j, c->shape[j]);
        out[j] = t->stride[tj];
    }
    return FAB_OK;
}

static fab_status check_no_overlap(const char *op, const char *an, const fab_tensor *a, const char *bn,
                                   const fab_tensor *b)
{
    if (absent(a) || absent(b))
        return FAB_OK;
    return fab__check_no_partial_overlap(op, an, a, bn, b, false);
}

static fab_status check_vector(const char *op, const char *name, const fab_tensor *t, int64_t len,
                               const char *len_what, fab_dtype alt_dtype)
{
    FAB__TRY(fab__check_tensor(op, name, t));
    if (t->ndim != 1)
        return fab__fail(INVALID, "%s: %s.ndim=%d must be 1", op, name, t->ndim);
    if (t->shape[0] != len)
        return fab__fail(INVALID, "%s: %s.shape[0]=%" PRId64 " must equal %s=%" PRId64, op, name, t->shape[0],
                         len_what, len);
    if (t->shape[0] > 1 && t->stride[0] != 1)
        return fab__fail(INVALID, "%s: %s.stride[0]=%" PRId64 " must be 1", op, name, t->stride[0]);
    if (t->dtype != FAB_DTYPE_F32 && t->dtype != alt_dtype)
        return fab__fail(UNSUPPORTED, "%s: %s.dtype=%s is not supported (f32 or %s)", op, name,
                         fab_dtype_name(t->dtype), fab_dtype_name(alt_dtype));
    return FAB_OK;
}

static fab_status check_enums(const char *op, const fab_matmul_params *p)
{
    if (p->trans_a != FAB_OP_N && p->trans_a != FAB_OP_T)
        return fab__fail(INVALID, "%s: p.trans_a=%d must be FAB_OP_N (0) or FAB_OP_T (1)", op, (int)p->trans_a);
    if (p->trans_b != FAB_OP_N && p->trans_b != FAB_OP_T)
        return fab__fail(INVALID, "%s: p.trans_b=%d must be FAB_OP_N (0) or FAB_OP_T (1)", op, (int)p->trans_b);
    if ((unsigned)p->activation > FAB_MATMUL_ACT_GELU_ERF)
        return fab__fail(INVALID, "%s: p.activation=%d is not a fab_matmul_activation", op, (int)p->activation);
    if ((unsigned)p->algo > FAB_MATMUL_ALGO_REFERENCE)
        return fab__fail(INVALID, "%s: p.algo=%d is not a fab_matmul_algo", op, (int)p->algo);
    if ((unsigned)p->precision > FAB_MATMUL_TF32)
        return fab__fail(INVALID, "%s: p.precision=%d is not a fab_matmul_precision", op, (int)p->precision);
    if ((unsigned)p->dbias_from > FAB_MATMUL_DBIAS_FROM_A)
        return fab__fail(INVALID, "%s: p.dbias_from=%d is not a fab_matmul_dbias_from", op, (int)p->dbias_from);
    if (p->activation_backward && p->activation == FAB_MATMUL_ACT_NONE)
        return fab__fail(INVALID, "%s: p.activation_backward needs p.activation (relu or gelu)", op);
    if (!(p->alpha == p->alpha) || !(p->beta == p->beta))
        return fab__fail(INVALID, "%s: p.alpha and p.beta must not be NaN", op);
    return FAB_OK;
}

fab__mm_state *fab__matmul_state(fab_context *ctx)
{
    if (!ctx->matmul) {
        ctx->matmul = calloc(1, sizeof(fab__mm_state));
        if (!ctx->matmul)
            fab__fail(FAB_ERR_OUT_OF_MEMORY, "fab_matmul: out of host memory for the context's matmul state");
    }
    return (fab__mm_state *)ctx->matmul;
}

/* Called by fab_context_destroy: releases the per-context matmul state. */
void fab__matmul_context_release(fab_context *ctx)
{
    if (!ctx || !ctx->matmul)
        return;
    fab__mm_state *st = (fab__mm_state *)ctx->matmul;
#ifdef FAB_HAVE_CUBLASLT
    fab__matmul_cublaslt_release(ctx, st);
#endif
    free(st->tuner); /* plain host memory */
    free(st);
    ctx->matmul = NULL;
}

#if defined(FAB_HAVE_CUDA) && !defined(FAB_HAVE_CUBLASLT)
/* cuBLASLt lives in matmul_cublas.c, which builds only for a real GPU
 * (FAB_HAVE_CUBLASLT). An emulated build has none, and says so. */
fab_status fab__matmul_cublaslt_supports(const fab_context *ctx, const fab__mm_args *a)
{
    (void)ctx;
    (void)a;
    return fab__fail(UNSUPPORTED, "fab_matmul: cuBLASLt is not part of this build (emulated CUDA)");
}

fab_status fab__matmul_cublaslt(fab_context *ctx, const fab__mm_args *a)
{
    return fab__matmul_cublaslt_supports(ctx, a);
}

size_t fab__matmul_cublaslt_version(void)
{
    return 0;
}
#endif

static const fab_dtype in_dtypes[] = {FAB_DTYPE_F32, FAB_DTYPE_F16, FAB_DTYPE_BF16};

fab_status fab_matmul(fab_context *ctx, const fab_matmul_params *p)
{
    const char *op = "fab_matmul";
    FAB__TRY(fab__check_call(op, ctx, p));
    FAB__TRY(check_enums(op, p));
    FAB__TRY(check_matrix(op, "a", &p->a));
    FAB__TRY(check_matrix(op, "b", &p->b));
    FAB__TRY(check_matrix(op, "c", &p->c));

    /* dtypes */
    FAB__TRY(fab__check_dtype_in(op, "a", &p->a, in_dtypes, 3));
    if (p->b.dtype != p->a.dtype)
        return fab__fail(UNSUPPORTED, "%s: b.dtype=%s with a.dtype=%s is not supported (A and B must have the same dtype)",
                         op, fab_dtype_name(p->b.dtype), fab_dtype_name(p->a.dtype));
    if (p->c.dtype != p->a.dtype && p->c.dtype != FAB_DTYPE_F32)
        return fab__fail(UNSUPPORTED, "%s: c.dtype=%s with a.dtype=%s is not supported (C is A's dtype or f32)", op,
                         fab_dtype_name(p->c.dtype), fab_dtype_name(p->a.dtype));

    /* shapes */
    int an = p->a.ndim, bn = p->b.ndim, cn = p->c.ndim;
    int a_m = p->trans_a ? an - 1 : an - 2, a_k = p->trans_a ? an - 2 : an - 1;
    int b_k = p->trans_b ? bn - 1 : bn - 2, b_n = p->trans_b ? bn - 2 : bn - 1;
    int64_t m = p->a.shape[a_m], k = p->a.shape[a_k], n = p->b.shape[b_n];
    if (p->b.shape[b_k] != k)
        return fab__fail(INVALID, "%s: b.shape[%d]=%" PRId64 " must equal a.shape[%d]=%" PRId64 " (k, with trans_a=%d trans_b=%d)",
                         op, b_k, p->b.shape[b_k], a_k, k, (int)p->trans_a, (int)p->trans_b);
    if (p->c.shape[cn - 2] != m)
        return fab__fail(INVALID, "%s: c.shape[%d]=%" PRId64 " must equal a.shape[%d]=%" PRId64 " (m)", op, cn - 2,
                         p->c.shape[cn - 2], a_m, m);
    if (p->c.shape[cn - 1] != n)
        return fab__fail(INVALID, "%s: c.shape[%d]=%" PRId64 " must equal b.shape[%d]=%" PRId64 " (n)", op, cn - 1,
                         p->c.shape[cn - 1], b_n, n);

    fab__mm_args a;
    memset(&a, 0, sizeof a);
    a.nb = cn - 2;
    a.batch = 1;
    for (int j = 0; j < a.nb; j++) {
        a.batch_shape[j] = p->c.shape[j];
        a.batch *= p->c.shape[j];
        a.c_bstride[j] = p->c.stride[j];
    }
    FAB__TRY(batch_strides(op, "a", &p->a, &p->c, a.a_bstride));
    FAB__TRY(batch_strides(op, "b", &p->b, &p->c, a.b_bstride));
    FAB__TRY(fab__check_no_self_overlap(op, "c", &p->c));

    /* bias */
    bool has_bias = !absent(&p->bias);
    if (has_bias) {
        if (p->activation_backward)
            return fab__fail(INVALID, "%s: p.bias must be absent with p.activation_backward (it is a forward term)", op);
        FAB__TRY(check_vector(op, "bias", &p->bias, n, "n", p->c.dtype));
    }

    /* pre_act */
    bool has_pre = !absent(&p->pre_act);
    if (p->activation_backward && !has_pre)
        return fab__fail(INVALID, "%s: p.pre_act is required with p.activation_backward (the forward's pre-activation)", op);
    if (has_pre) {
        if (p->activation == FAB_MATMUL_ACT_NONE)
            return fab__fail(INVALID, "%s: p.pre_act is given but p.activation is FAB_MATMUL_ACT_NONE", op);
        FAB__TRY(check_matrix(op, "pre_act", &p->pre_act));
        FAB__TRY(fab__check_same_shape(op, "pre_act", &p->pre_act, "c", &p->c));
        FAB__TRY(fab__check_same_dtype(op, "pre_act", &p->pre_act, "c", &p->c));
        if (!p->activation_backward)
            FAB__TRY(fab__check_no_self_overlap(op, "pre_act", &p->pre_act));
        for (int j = 0; j < a.nb; j++)
            a.p_bstride[j] = p->pre_act.stride[j];
    }

    /* dbias */
    bool has_dbias = !absent(&p->dbias);
    if (has_dbias) {
        if (p->dbias_from == FAB_MATMUL_DBIAS_FROM_C)
            FAB__TRY(check_vector(op, "dbias", &p->dbias, n, "n (dbias_from C)", p->c.dtype));
        else
            FAB__TRY(check_vector(op, "dbias", &p->dbias, m, "m (dbias_from A)", p->c.dtype));
    }

    /* aliasing: C and pre_act (forward) are outputs, dbias too */
    FAB__TRY(check_no_overlap(op, "c", &p->c, "a", &p->a));
    FAB__TRY(check_no_overlap(op, "c", &p->c, "b", &p->b));
    FAB__TRY(check_no_overlap(op, "c", &p->c, "bias", &p->bias));
    FAB__TRY(check_no_overlap(op, "c", &p->c, "pre_act", &p->pre_act));
    if (has_pre && !p->activation_backward) {
        FAB__TRY(check_no_overlap(op, "pre_act", &p->pre_act, "a", &p->a));
        FAB__TRY(check_no_overlap(op, "pre_act", &p->pre_act, "b", &p->b));
        FAB__TRY(check_no_overlap(op, "pre_act", &p->pre_act, "bias", &p->bias));
    }
    if (has_dbias) {
        FAB__TRY(check_no_overlap(op, "dbias", &p->dbias, "a", &p->a));
        FAB__TRY(check_no_overlap(op, "dbias", &p->dbias, "b", &p->b));
        FAB__TRY(check_no_overlap(op, "dbias", &p->dbias, "c", &p->c));
        FAB__TRY(check_no_overlap(op, "dbias", &p->dbias, "bias", &p->bias));
        FAB__TRY(check_no_overlap(op, "dbias", &p->dbias, "pre_act", &p->pre_act));
    }

    /* memory reachable by the backend */
    FAB__TRY(fab__check_memory(ctx, op, "a", &p->a));
    FAB__TRY(fab__check_memory(ctx, op, "b", &p->b));
    FAB__TRY(fab__check_memory(ctx, op, "c", &p->c));
    if (has_bias)
        FAB__TRY(fab__check_memory(ctx, op, "bias", &p->bias));
    if (has_pre)
        FAB__TRY(fab__check_memory(ctx, op, "pre_act", &p->pre_act));
    if (has_dbias)
        FAB__TRY(fab__check_memory(ctx, op, "dbias", &p->dbias));

    a.m = m;
    a.n = n;
    a.k = k;
    a.a = p->a.data;
    a.b = p->b.data;
    a.c = p->c.data;
    a.bias = has_bias ? p->bias.data : NULL;
    a.pre_act = has_pre ? p->pre_act.data : NULL;
    a.dbias = has_dbias ? p->dbias.data : NULL;
    a.lda = p->a.stride[an - 2];
    a.ldb = p->b.stride[bn - 2];
    a.ldc = p->c.stride[cn - 2];
    a.ldp = has_pre ? p->pre_act.stride[cn - 2] : 0;
    a.ab_dtype = p->a.dtype;
    a.c_dtype = p->c.dtype;
    a.bias_dtype = has_bias ? p->bias.dtype : FAB_DTYPE_F32;
    a.dbias_dtype = has_dbias ? p->dbias.dtype : FAB_DTYPE_F32;
    a.trans_a = p->trans_a == FAB_OP_T;
    a.trans_b = p->trans_b == FAB_OP_T;
    a.alpha = p->alpha == 0.0f ? 1.0f : p->alpha;
    a.beta = p->beta;
    a.act = p->activation;
    a.act_backward = p->activation_backward != 0;
    a.dbias_from = p->dbias_from;
    a.tf32 = p->precision == FAB_MATMUL_TF32;
    a.algo = p->algo;
    /* a row stride only matters with more than one row: make it well defined */
    if ((a.trans_a ? k : m) <= 1)
        a.lda = a.trans_a ? m : k;
    if ((a.trans_b ? n : k) <= 1)
        a.ldb = a.trans_b ? k : n;
    if (m <= 1)
        a.ldc = n;
    if (m <= 1 && has_pre)
        a.ldp = n;

    if (ctx->backend == FAB_BACKEND_CUDA) {
#ifdef FAB_HAVE_CUDA
        if ((m == 0 || n == 0 || a.batch == 0) && !has_dbias)
            return FAB_OK;
        if (a.algo == FAB_MATMUL_ALGO_CUBLASLT)
            FAB__TRY(fab__matmul_cublaslt_supports(ctx, &a));
        return fab__matmul_cuda(ctx, &a);
#else
        return fab__fail(FAB_ERR_INTERNAL, "%s: CUDA context in a build without CUDA", op);
#endif
    }
    if (a.algo == FAB_MATMUL_ALGO_CUBLASLT)
        return fab__fail(UNSUPPORTED, "%s: p.algo=FAB_MATMUL_ALGO_CUBLASLT needs a CUDA context", op);
    if ((m == 0 || n == 0 || a.batch == 0) && !has_dbias)
        return FAB_OK;
    return fab__matmul_cpu(ctx, &a);
}

fab_status fab_matmul_bias_grad(fab_context *ctx, const fab_matmul_bias_grad_params *p)
{
    const char *op = "fab_matmul_bias_grad";
    FAB__TRY(fab__check_call(op, ctx, p));
    FAB__TRY(fab__check_tensor(op, "dy", &p->dy));
    if (p->dy.ndim < 1)
        return fab__fail(INVALID, "%s: dy.ndim=%d must be >= 1", op, p->dy.ndim);
    FAB__TRY(fab__check_dtype_in(op, "dy", &p->dy, in_dtypes, 3));
    int last = p->dy.ndim - 1;
    int64_t n = p->dy.shape[last];
    if (n > 1 && p->dy.stride[last] != 1)
        return fab__fail(INVALID, "%s: dy.stride[%d]=%" PRId64 " must be 1 (rows must be contiguous)", op, last,
                         p->dy.stride[last]);
    if (last >= 1 && p->dy.shape[last - 1] > 1 && p->dy.stride[last - 1] < n)
        return fab__fail(INVALID, "%s: dy.stride[%d]=%" PRId64 " must be >= dy.shape[%d]=%" PRId64, op, last - 1,
                         p->dy.stride[last - 1], last, n);
    FAB__TRY(check_vector(op, "dbias", &p->dbias, n, "dy's last dim", p->dy.dtype));
    FAB__TRY(check_no_overlap(op, "dbias", &p->dbias, "dy", &p->dy));
    FAB__TRY(fab__check_memory(ctx, op, "dy", &p->dy));
    FAB__TRY(fab__check_memory(ctx, op, "dbias", &p->dbias));
    if (n == 0)
        return FAB_OK;

    fab__bgrad_args a;
    memset(&a, 0, sizeof a);
    a.dy = p->dy.data;
    a.dtype = p->dy.dtype;
    a.n = n;
    a.nr = last;
    for (int j = 0; j < last; j++) {
        a.shape[j] = p->dy.shape[j];
        a.stride[j] = p->dy.stride[j];
    }
    a.dbias = p->dbias.data;
    a.dbias_dtype = p->dbias.dtype;
    if (ctx->backend == FAB_BACKEND_CUDA) {
#ifdef FAB_HAVE_CUDA
        return fab__bias_grad_cuda(ctx, &a);
#else
        return fab__fail(FAB_ERR_INTERNAL, "%s: CUDA context in a build without CUDA", op);
#endif
    }
    return fab__bias_grad_cpu(ctx, &a);
}
