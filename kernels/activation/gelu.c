/*
 * gelu.c: public entries fab_gelu_forward / fab_gelu_backward. Validates every
 * argument, then hands the flat element range to the context's backend.
 */
#include "gelu.h"

static const fab_dtype gelu_dtypes[] = {FAB_DTYPE_F32, FAB_DTYPE_F16, FAB_DTYPE_BF16};

static fab_status check_approx(const char *op, fab_gelu_approx approximate)
{
    if (approximate != FAB_GELU_ERF && approximate != FAB_GELU_TANH)
        return fab__fail(FAB_ERR_INVALID_ARGUMENT,
                         "%s: p.approximate=%d must be FAB_GELU_ERF (0) or FAB_GELU_TANH (1)", op,
                         (int)approximate);
    return FAB_OK;
}

static fab_status run(fab_context *ctx, const fab__gelu_args *a)
{
    if (a->n == 0)
        return FAB_OK;
    if (ctx->backend == FAB_BACKEND_CUDA) {
#ifdef FAB_HAVE_CUDA
        return fab__gelu_cuda(ctx, a);
#else
        return fab__fail(FAB_ERR_INTERNAL, "gelu: CUDA context in a build without CUDA");
#endif
    }
    return fab__gelu_cpu(ctx, a);
}

fab_status fab_gelu_forward(fab_context *ctx, const fab_gelu_params *p)
{
    const char *op = "fab_gelu_forward";
    FAB__TRY(fab__check_call(op, ctx, p));
    FAB__TRY(check_approx(op, p->approximate));
    FAB__TRY(fab__check_contiguous(op, "x", &p->x));
    FAB__TRY(fab__check_contiguous(op, "y", &p->y));
    FAB__TRY(fab__check_dtype_in(op, "x", &p->x, gelu_dtypes, 3));
    FAB__TRY(fab__check_same_dtype(op, "y", &p->y, "x", &p->x));
    FAB__TRY(fab__check_same_shape(op, "y", &p->y, "x", &p->x));
    FAB__TRY(fab__check_no_partial_overlap(op, "y", &p->y, "x", &p->x, true));
    FAB__TRY(fab__check_memory(ctx, op, "x", &p->x));
    FAB__TRY(fab__check_memory(ctx, op, "y", &p->y));
    fab__gelu_args a = {p->x.data, NULL, p->y.data, fab_tensor_numel(&p->x), p->x.dtype, p->approximate};
    return run(ctx, &a);
}

fab_status fab_gelu_backward(fab_context *ctx, const fab_gelu_backward_params *p)
{
    const char *op = "fab_gelu_backward";
    FAB__TRY(fab__check_call(op, ctx, p));
    FAB__TRY(check_approx(op, p->approximate));
    FAB__TRY(fab__check_contiguous(op, "x", &p->x));
    FAB__TRY(fab__check_contiguous(op, "dy", &p->dy));
    FAB__TRY(fab__check_contiguous(op, "dx", &p->dx));
    FAB__TRY(fab__check_dtype_in(op, "x", &p->x, gelu_dtypes, 3));
    FAB__TRY(fab__check_same_dtype(op, "dy", &p->dy, "x", &p->x));
    FAB__TRY(fab__check_same_dtype(op, "dx", &p->dx, "x", &p->x));
    FAB__TRY(fab__check_same_shape(op, "dy", &p->dy, "x", &p->x));
    FAB__TRY(fab__check_same_shape(op, "dx", &p->dx, "x", &p->x));
    FAB__TRY(fab__check_no_partial_overlap(op, "dx", &p->dx, "dy", &p->dy, true));
    FAB__TRY(fab__check_no_partial_overlap(op, "dx", &p->dx, "x", &p->x, true));
    FAB__TRY(fab__check_memory(ctx, op, "x", &p->x));
    FAB__TRY(fab__check_memory(ctx, op, "dy", &p->dy));
    FAB__TRY(fab__check_memory(ctx, op, "dx", &p->dx));
    fab__gelu_args a = {p->x.data, p->dy.data, p->dx.data, fab_tensor_numel(&p->x), p->x.dtype,
                        p->approximate};
    return run(ctx, &a);
}
