/*
 * tensor.c: fab_tensor construction and the argument checks every op builds on.
 * Each check names the op and the argument in its message, so a user reading
 * fab_last_error() knows which field of which call to fix.
 */
#include "runtime.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define INVALID FAB_ERR_INVALID_ARGUMENT

fab_status fab_tensor_make(void *data, fab_dtype dtype, int ndim, const int64_t *shape,
                           fab_tensor *out)
{
    const char *op = "fab_tensor_make";
    if (!out)
        return fab__fail(INVALID, "%s: out is NULL", op);
    if (fab_dtype_size(dtype) == 0)
        return fab__fail(INVALID, "%s: dtype=%d is not a known fab_dtype", op, (int)dtype);
    if (ndim < 0 || ndim > FAB_MAX_DIMS)
        return fab__fail(INVALID, "%s: ndim=%d must be in [0, %d]", op, ndim, FAB_MAX_DIMS);
    if (ndim > 0 && !shape)
        return fab__fail(INVALID, "%s: shape is NULL with ndim=%d", op, ndim);
    fab_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.ndim = ndim;
    int empty = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return fab__fail(INVALID, "%s: shape[%d]=%" PRId64 " must be >= 0", op, i, shape[i]);
        empty |= shape[i] == 0;
    }
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t.shape[i] = shape[i];
        t.stride[i] = stride;
        if (shape[i] > 0 && stride > INT64_MAX / shape[i]) {
            if (!empty)
                return fab__fail(INVALID, "%s: shape overflows int64 at dim %d", op, i);
            stride = INT64_MAX; /* no elements: the strides say nothing, saturate */
        } else {
            stride *= shape[i] > 0 ? shape[i] : 1;
        }
    }
    fab_status s = fab__check_tensor(op, "tensor", &t);
    if (s != FAB_OK)
        return s;
    *out = t;
    return FAB_OK;
}

int64_t fab_tensor_numel(const fab_tensor *t)
{
    if (!t || t->ndim < 0 || t->ndim > FAB_MAX_DIMS)
        return 0;
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] < 0)
            return -1;
    for (int i = 0; i < t->ndim; i++) /* a zero anywhere, before a product can overflow */
        if (t->shape[i] == 0)
            return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (n > INT64_MAX / t->shape[i])
            return -1;
        n *= t->shape[i];
    }
    return n;
}

fab_status fab__check_call(const char *op, const fab_context *ctx, const void *p)
{
    if (!ctx)
        return fab__fail(INVALID, "%s: ctx is NULL", op);
    if (!p)
        return fab__fail(INVALID, "%s: params pointer is NULL", op);
    return FAB_OK;
}

fab_status fab__check_tensor(const char *op, const char *name, const fab_tensor *t)
{
    size_t esize = fab_dtype_size(t->dtype);
    if (esize == 0)
        return fab__fail(INVALID, "%s: %s.dtype=%d is not a known fab_dtype", op, name, (int)t->dtype);
    if (t->ndim < 0 || t->ndim > FAB_MAX_DIMS)
        return fab__fail(INVALID, "%s: %s.ndim=%d must be in [0, %d]", op, name, t->ndim, FAB_MAX_DIMS);
    /* the elements, and the span up to the end of the last one, must fit in int64
     * bytes */
    int empty = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0)
            return fab__fail(INVALID, "%s: %s.shape[%d]=%" PRId64 " must be >= 0", op, name, i,
                             t->shape[i]);
        if (t->stride[i] < 0)
            return fab__fail(INVALID, "%s: %s.stride[%d]=%" PRId64 " must be >= 0", op, name, i,
                             t->stride[i]);
        empty |= t->shape[i] == 0;
    }
    if (empty) /* no elements: the other dims may be anything, their product is not formed */
        return FAB_OK;
    int64_t numel = 1, max_offset = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (numel > INT64_MAX / (int64_t)esize / t->shape[i])
            return fab__fail(INVALID, "%s: %s has more than 2^63 bytes of elements", op, name);
        numel *= t->shape[i];
    }
    for (int i = 0; i < t->ndim; i++) {
        int64_t extent = t->shape[i] - 1;
        if (t->stride[i] > 0 && extent > (INT64_MAX / (int64_t)esize - 1 - max_offset) / t->stride[i])
            return fab__fail(INVALID, "%s: %s spans more than 2^63 bytes (shape[%d]*stride[%d])", op,
                             name, i, i);
        max_offset += extent * t->stride[i];
    }
    if (!t->data)
        return fab__fail(INVALID, "%s: %s.data is NULL", op, name);
    if ((uintptr_t)t->data % esize != 0)
        return fab__fail(INVALID, "%s: %s.data=%p is not aligned to its %zu-byte %s elements", op,
                         name, t->data, esize, fab_dtype_name(t->dtype));
    return FAB_OK;
}

fab_status fab__check_contiguous(const char *op, const char *name, const fab_tensor *t)
{
    fab_status s = fab__check_tensor(op, name, t);
    if (s != FAB_OK)
        return s;
    /* no elements: contiguous whatever the strides, as torch's is_contiguous()
     * says (fab_tensor_make gives [3, 0] the strides [1, 1]); its other dims may
     * be anything, so their product is not even formed */
    if (fab_tensor_numel(t) == 0)
        return FAB_OK;
    int64_t expect = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != expect)
            return fab__fail(INVALID,
                             "%s: %s.stride[%d]=%" PRId64 " must be %" PRId64
                             " (this op takes contiguous row-major tensors)",
                             op, name, i, t->stride[i], expect);
        expect *= t->shape[i];
    }
    return FAB_OK;
}

fab_status fab__check_same_shape(const char *op, const char *name, const fab_tensor *t,
                                 const char *ref_name, const fab_tensor *ref)
{
    if (t->ndim != ref->ndim)
        return fab__fail(INVALID, "%s: %s.ndim=%d must equal %s.ndim=%d", op, name, t->ndim,
                         ref_name, ref->ndim);
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] != ref->shape[i])
            return fab__fail(INVALID, "%s: %s.shape[%d]=%" PRId64 " must equal %s.shape[%d]=%" PRId64,
                             op, name, i, t->shape[i], ref_name, i, ref->shape[i]);
    return FAB_OK;
}

fab_status fab__check_same_dtype(const char *op, const char *name, const fab_tensor *t,
                                 const char *ref_name, const fab_tensor *ref)
{
    if (t->dtype != ref->dtype)
        return fab__fail(INVALID, "%s: %s.dtype=%s must equal %s.dtype=%s", op, name,
                         fab_dtype_name(t->dtype), ref_name, fab_dtype_name(ref->dtype));
    return FAB_OK;
}

fab_status fab__check_dtype_in(const char *op, const char *name, const fab_tensor *t,
                               const fab_dtype *allowed, int n)
{
    char list[128] = "";
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        if (t->dtype == allowed[i])
            return FAB_OK;
        len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "",
                                fab_dtype_name(allowed[i]));
        if (len >= sizeof list)
            len = sizeof list - 1;
    }
    return fab__fail(FAB_ERR_UNSUPPORTED, "%s: %s.dtype=%s is not supported (supported: %s)", op, name,
                     fab_dtype_name(t->dtype), list);
}

void fab__tensor_span(const fab_tensor *t, uintptr_t *lo, uintptr_t *hi)
{
    uintptr_t base = (uintptr_t)t->data;
    if (fab_tensor_numel(t) == 0) {
        *lo = *hi = base;
        return;
    }
    uint64_t last = 0;
    for (int i = 0; i < t->ndim; i++)
        last += (uint64_t)(t->shape[i] - 1) * (uint64_t)t->stride[i];
    *lo = base;
    *hi = base + (uintptr_t)((last + 1) * fab_dtype_size(t->dtype));
}

static bool same_view(const fab_tensor *a, const fab_tensor *b)
{
    if (a->data != b->data || a->dtype != b->dtype || a->ndim != b->ndim)
        return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i] || (a->shape[i] > 1 && a->stride[i] != b->stride[i]))
            return false;
    return true;
}

fab_status fab__check_no_partial_overlap(const char *op, const char *a_name, const fab_tensor *a,
                                         const char *b_name, const fab_tensor *b, bool may_be_same)
{
    uintptr_t alo, ahi, blo, bhi;
    fab__tensor_span(a, &alo, &ahi);
    fab__tensor_span(b, &blo, &bhi);
    if (alo == ahi || blo == bhi || ahi <= blo || bhi <= alo)
        return FAB_OK;
    if (may_be_same && same_view(a, b))
        return FAB_OK;
    if (may_be_same)
        return fab__fail(INVALID, "%s: %s overlaps %s; it may only be the very same tensor (in place)",
                         op, a_name, b_name);
    return fab__fail(INVALID, "%s: %s overlaps %s; they must be separate memory", op, a_name, b_name);
}

fab_status fab__check_memory(fab_context *ctx, const char *op, const char *name, const fab_tensor *t)
{
    if (ctx->backend != FAB_BACKEND_CUDA || fab_tensor_numel(t) == 0)
        return FAB_OK;
    return fab__cuda_check_device_pointer(ctx, op, name, t->data);
}
