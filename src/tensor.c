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

fab_status fab__check_no_self_overlap(const char *op, const char *name, const fab_tensor *t)
{
    if (fab_tensor_numel(t) == 0) /* writes nothing */
        return FAB_OK;
    int dims[FAB_MAX_DIMS], n = 0;
    for (int i = 0; i < t->ndim; i++) /* the dims that step, by stride, smallest first */
        if (t->shape[i] > 1) {
            int j = n++;
            for (; j > 0 && t->stride[dims[j - 1]] > t->stride[i]; j--)
                dims[j] = dims[j - 1];
            dims[j] = i;
        }
    int64_t span = 1; /* elements covered by the dims of smaller stride */
    for (int k = 0; k < n; k++) {
        int i = dims[k];
        if (t->stride[i] < span)
            return fab__fail(INVALID,
                             "%s: %s.stride[%d]=%" PRId64 " makes elements of %s overlap (must be >= %" PRId64
                             ", the span of its dims of smaller stride)",
                             op, name, i, t->stride[i], name, span);
        span += t->stride[i] * (t->shape[i] - 1); /* fits: fab__check_tensor bounds the span */
    }
    return FAB_OK;
}

#ifdef __SIZEOF_INT128__
typedef __int128 wide;

/* floor(n / d) and ceil(n / d) for d > 0 */
static wide floor_div(wide n, wide d) { return n >= 0 ? n / d : -((-n + d - 1) / d); }
static wide ceil_div(wide n, wide d) { return -floor_div(-n, d); }

typedef struct stride_term {
    wide c, lo, hi; /* adds c*y, y in [lo, hi] */
} stride_term;

typedef struct overlap_search {
    stride_term t[2 * FAB_MAX_DIMS];
    wide reach_lo[2 * FAB_MAX_DIMS + 1], reach_hi[2 * FAB_MAX_DIMS + 1]; /* what terms i.. can add */
    int n;
    int budget; /* nodes left before giving up */
} overlap_search;

static void add_term(overlap_search *o, int64_t stride, wide lo, wide hi)
{
    if (stride == 0 || lo == hi)
        return; /* broadcast or single-index dims address nothing new */
    for (int i = 0; i < o->n; i++)
        if (o->t[i].c == stride) { /* same stride in a and b: the index ranges add */
            o->t[i].lo += lo;
            o->t[i].hi += hi;
            return;
        }
    o->t[o->n++] = (stride_term){stride, lo, hi};
}

/* 1 when terms i.. can add up to `target` (or the search ran out of budget) */
static int can_reach(overlap_search *o, int i, wide target)
{
    if (i == o->n)
        return target == 0;
    const stride_term *t = &o->t[i];
    /* only the y that leave what terms i+1.. can still add */
    wide y0 = ceil_div(target - o->reach_hi[i + 1], t->c), y1 = floor_div(target - o->reach_lo[i + 1], t->c);
    if (y0 < t->lo)
        y0 = t->lo;
    if (y1 > t->hi)
        y1 = t->hi;
    for (wide y = y0; y <= y1; y++) {
        if (--o->budget < 0 || can_reach(o, i + 1, target - t->c * y))
            return 1;
    }
    return 0;
}

/* true when no element of a is an element of b, proved; false when they share
 * one, or the proof is out of reach. Element i of a lies at a.data + e*sum(i_d *
 * a.stride_d): a and b share one when sum(i_d a.stride_d) - sum(j_d b.stride_d)
 * equals (b.data - a.data)/e for indices inside the shapes. The strides become
 * terms (equal ones merged), searched largest first, trying only the indices that
 * leave a remainder the smaller strides can still make up: one or two a level for
 * the usual layouts (heads or q/k/v interleaved in one buffer, llm.c's qkv), where
 * each stride is past the reach of the smaller ones. */
static bool disjoint_elements(const fab_tensor *a, const fab_tensor *b)
{
    size_t e = fab_dtype_size(a->dtype);
    if (e != fab_dtype_size(b->dtype))
        return false;
    wide delta = (wide)(intptr_t)((uintptr_t)b->data - (uintptr_t)a->data);
    if (delta % (wide)e != 0) /* elements out of step: bytes may still overlap */
        return false;
    overlap_search o;
    memset(&o, 0, sizeof o);
    o.budget = 4096;
    for (int i = 0; i < a->ndim; i++)
        add_term(&o, a->stride[i], 0, a->shape[i] - 1);
    for (int i = 0; i < b->ndim; i++)
        add_term(&o, b->stride[i], -(wide)(b->shape[i] - 1), 0);
    for (int i = 1; i < o.n; i++) /* largest stride first */
        for (int j = i; j > 0 && o.t[j].c > o.t[j - 1].c; j--) {
            stride_term x = o.t[j];
            o.t[j] = o.t[j - 1];
            o.t[j - 1] = x;
        }
    for (int i = o.n - 1; i >= 0; i--) {
        o.reach_lo[i] = o.reach_lo[i + 1] + o.t[i].c * o.t[i].lo;
        o.reach_hi[i] = o.reach_hi[i + 1] + o.t[i].c * o.t[i].hi;
    }
    return !can_reach(&o, 0, delta / (wide)e);
}
#else
static bool disjoint_elements(const fab_tensor *a, const fab_tensor *b)
{
    (void)a;
    (void)b;
    return false; /* no 128-bit integers for the proof: spans decide */
}
#endif

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
    if (disjoint_elements(a, b)) /* interleaved views of one buffer */
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
