/*
 * attention.c: public entries fab_attention_forward / fab_attention_backward.
 * Validates every argument (shapes, dtypes, strides, mask options, the varlen
 * offsets, overlaps, memory), resolves the defaults, folds the mask into one
 * window, and hands a fab__attn_args to the context's backend: attention_cpu.c,
 * or the sm80 kernels (attention_fwd_sm80.cu, attention_bwd_sm80.cu) on CUDA; on
 * sm_90 the Hopper forward (attention_fwd_sm90.cu) and, inside the sm80 backward,
 * the Hopper dK/dV and dq kernels (attention_bwd_sm90.cu) where they apply.
 * Nothing is written before every check has passed.
 */
#include "attention.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INVALID FAB_ERR_INVALID_ARGUMENT
#define FAB__ATTN_CPU_MAX_D 256

static const fab_dtype attn_dtypes[] = {FAB_DTYPE_BF16, FAB_DTYPE_F16, FAB_DTYPE_F32};

/* The fields the forward and backward params share, by pointer. */
typedef struct common {
    const char *op;
    int backward;
    const fab_tensor *q, *k, *v, *out, *lse;
    const fab_tensor *dout, *dq, *dk, *dv; /* backward only */
    float scale, softcap;
    int causal, window;
    int64_t window_left, window_right;
    const fab_tensor *cu_q, *cu_k;
    int64_t max_seqlen_q, max_seqlen_k;
    int trust;
} common;

static bool absent(const fab_tensor *t) { return t->data == NULL && t->ndim == 0; }

static fab_status check_options(const common *c)
{
    const char *op = c->op;
    if (c->causal != 0 && c->causal != 1)
        return fab__fail(INVALID, "%s: p.causal=%d must be 0 or 1", op, c->causal);
    if (c->window != 0 && c->window != 1)
        return fab__fail(INVALID, "%s: p.window=%d must be 0 or 1", op, c->window);
    if (c->window_left < -1)
        return fab__fail(INVALID, "%s: p.window_left=%" PRId64 " must be >= 0, or -1 (unbounded)", op,
                         c->window_left);
    if (c->window_right < -1)
        return fab__fail(INVALID, "%s: p.window_right=%" PRId64 " must be >= 0, or -1 (unbounded)", op,
                         c->window_right);
    if (!c->window && (c->window_left != 0 || c->window_right != 0))
        return fab__fail(INVALID,
                         "%s: p.window_left=%" PRId64 ", p.window_right=%" PRId64
                         " are set but p.window=0 (set p.window=1 to use a sliding window)",
                         op, c->window_left, c->window_right);
    if (!isfinite(c->scale))
        return fab__fail(INVALID, "%s: p.scale=%g must be finite (0 means 1/sqrt(d))", op, (double)c->scale);
    if (!(c->softcap >= 0) || !isfinite(c->softcap))
        return fab__fail(INVALID, "%s: p.softcap=%g must be finite and >= 0 (0: no soft-capping)", op,
                         (double)c->softcap);
    if (c->trust != 0 && c->trust != 1)
        return fab__fail(INVALID, "%s: p.trust_cu_seqlens=%d must be 0 or 1", op, c->trust);
    if (c->max_seqlen_q < 0)
        return fab__fail(INVALID, "%s: p.max_seqlen_q=%" PRId64 " must be >= 0", op, c->max_seqlen_q);
    if (c->max_seqlen_k < 0)
        return fab__fail(INVALID, "%s: p.max_seqlen_k=%" PRId64 " must be >= 0", op, c->max_seqlen_k);
    return FAB_OK;
}

/* A [.., heads, d] operand: valid tensor, `ndim` dims, unit stride on d. */
static fab_status check_operand(const char *op, const char *name, const fab_tensor *t, int ndim)
{
    FAB__TRY(fab__check_tensor(op, name, t));
    if (t->ndim != ndim)
        return fab__fail(INVALID, "%s: %s.ndim=%d must be %d (%s)", op, name, t->ndim, ndim,
                         ndim == 4 ? "[batch, seqlen, heads, head_dim]"
                                   : "[total, heads, head_dim], packed for cu_seqlens");
    if (t->shape[ndim - 1] > 1 && t->stride[ndim - 1] != 1)
        return fab__fail(INVALID, "%s: %s.stride[%d]=%" PRId64 " must be 1 (head_dim must be contiguous)", op,
                         name, ndim - 1, t->stride[ndim - 1]);
    return FAB_OK;
}

static fab_status check_lse(const common *c, int varlen, int64_t b, int64_t hq, int64_t sq)
{
    const char *op = c->op;
    const fab_tensor *t = c->lse;
    FAB__TRY(fab__check_tensor(op, "lse", t));
    if (t->dtype != FAB_DTYPE_F32)
        return fab__fail(INVALID, "%s: lse.dtype=%s must be f32", op, fab_dtype_name(t->dtype));
    int64_t want[3] = {b, hq, sq};
    int nd = 3;
    if (varlen) {
        want[0] = hq;
        want[1] = sq; /* total_q */
        nd = 2;
    }
    if (t->ndim != nd)
        return fab__fail(INVALID, "%s: lse.ndim=%d must be %d (%s)", op, t->ndim, nd,
                         varlen ? "[heads_q, total_q]" : "[batch, heads_q, seqlen_q]");
    for (int i = 0; i < nd; i++)
        if (t->shape[i] != want[i])
            return fab__fail(INVALID, "%s: lse.shape[%d]=%" PRId64 " must be %" PRId64 " (%s)", op, i, t->shape[i],
                             want[i], varlen ? "[heads_q, total_q]" : "[batch, heads_q, seqlen_q]");
    return fab__check_contiguous(op, "lse", t);
}

static fab_status check_cu_tensor(const char *op, const char *name, const fab_tensor *t)
{
    FAB__TRY(fab__check_contiguous(op, name, t));
    if (t->dtype != FAB_DTYPE_I32)
        return fab__fail(INVALID, "%s: %s.dtype=%s must be i32", op, name, fab_dtype_name(t->dtype));
    if (t->ndim != 1 || t->shape[0] < 1)
        return fab__fail(INVALID, "%s: %s must be 1-d with batch + 1 >= 1 elements (ndim=%d, shape[0]=%" PRId64 ")",
                         op, name, t->ndim, t->ndim >= 1 ? t->shape[0] : (int64_t)0);
    if (t->shape[0] - 1 > INT32_MAX)
        return fab__fail(INVALID, "%s: %s.shape[0]=%" PRId64 " is too large", op, name, t->shape[0]);
    return FAB_OK;
}

/* Checks one host copy of cumulative offsets; returns the longest sequence in *maxlen. */
static fab_status check_offsets(const char *op, const char *name, const int32_t *cu, int64_t n, int64_t total,
                                const char *total_name, int64_t *maxlen)
{
    if (cu[0] != 0)
        return fab__fail(INVALID, "%s: %s[0]=%d must be 0", op, name, (int)cu[0]);
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        if (cu[i + 1] < cu[i])
            return fab__fail(INVALID, "%s: %s is not monotone: %s[%" PRId64 "]=%d < %s[%" PRId64 "]=%d", op, name,
                             name, i + 1, (int)cu[i + 1], name, i, (int)cu[i]);
        if (cu[i + 1] > total)
            return fab__fail(INVALID, "%s: %s[%" PRId64 "]=%d is past the end of %s (%" PRId64 " rows)", op, name,
                             i + 1, (int)cu[i + 1], total_name, total);
        if (cu[i + 1] - cu[i] > m)
            m = cu[i + 1] - cu[i];
    }
    if (cu[n] != total)
        return fab__fail(INVALID, "%s: %s[%" PRId64 "]=%d must equal %s (%" PRId64 ") so that every row is covered",
                         op, name, n, (int)cu[n], total_name, total);
    *maxlen = m;
    return FAB_OK;
}

/* Every query row must keep at least one key: sk >= 1 and, with a bound on the
 * right, sk - sq + right >= 0 (row 0 is the worst). */
static fab_status check_rows_nonempty(const common *c, int64_t right, int64_t seq, int64_t sq, int64_t sk)
{
    if (sq == 0)
        return FAB_OK;
    char where[48] = "";
    if (seq >= 0)
        snprintf(where, sizeof where, " in sequence %" PRId64, seq);
    if (sk == 0)
        return fab__fail(INVALID, "%s: seqlen_k=0 with seqlen_q=%" PRId64 "%s leaves every query row without keys",
                         c->op, sq, where);
    if (right >= 0 && sk - sq + right < 0)
        return fab__fail(INVALID,
                         "%s: the %s with seqlen_q=%" PRId64 " > seqlen_k=%" PRId64 "%s leaves query row 0 without "
                         "keys (the mask is aligned bottom-right; every row needs one)",
                         c->op,
                         c->causal && c->window ? "causal mask and window" : c->causal ? "causal mask" : "window",
                         sq, sk, where);
    return FAB_OK;
}

/* What the CUDA kernels take (checked after every argument is known valid). */
static fab_status cuda_supports(fab_context *ctx, const common *c, int64_t d, int64_t batch, int64_t hq)
{
    const char *op = c->op;
    if (ctx->sm_version < 80)
        return fab__fail(FAB_ERR_UNSUPPORTED, "%s: the CUDA attention kernel needs sm_80 or later (this GPU: sm_%d)",
                         op, ctx->sm_version);
    if (c->q->dtype == FAB_DTYPE_F32)
        return fab__fail(FAB_ERR_UNSUPPORTED, "%s: q.dtype=f32 is not supported on CUDA (bf16, f16)", op);
    if (d != 32 && d != 64 && d != 96 && d != 128 && d != 256)
        return fab__fail(FAB_ERR_UNSUPPORTED,
                         "%s: head_dim=%" PRId64 " is not supported on CUDA (32, 64, 96, 128, 256)", op, d);
    if (batch > 65535 || hq > 65535) /* grid y and z */
        return fab__fail(FAB_ERR_UNSUPPORTED, "%s: batch=%" PRId64 " and heads_q=%" PRId64
                                              " must be <= 65535 on CUDA", op, batch, hq);
    const fab_tensor *ts[8] = {c->q, c->k, c->v, c->out, c->dout, c->dq, c->dk, c->dv};
    const char *names[8] = {"q", "k", "v", "out", "dout", "dq", "dk", "dv"};
    for (int i = 0; i < (c->backward ? 8 : 4); i++) {
        bool ok = (uintptr_t)ts[i]->data % 16 == 0;
        for (int j = 0; j + 1 < ts[i]->ndim; j++)
            ok = ok && ts[i]->stride[j] % 8 == 0;
        if (!ok)
            return fab__fail(FAB_ERR_UNSUPPORTED,
                             "%s: the CUDA kernel needs %s.data 16-byte aligned and every stride but the last a "
                             "multiple of 8 elements", op, names[i]);
    }
    return FAB_OK;
}

static fab__attn_view view_of(const fab_tensor *t, int varlen)
{
    fab__attn_view v;
    v.data = t->data;
    if (varlen) {
        v.sb = 0;
        v.ss = t->stride[0];
        v.sh = t->stride[1];
    } else {
        v.sb = t->stride[0];
        v.ss = t->stride[1];
        v.sh = t->stride[2];
    }
    return v;
}

/* All checks, then the backend. */
static fab_status attention(fab_context *ctx, const common *c)
{
    const char *op = c->op;
    FAB__TRY(check_options(c));

    /* varlen or dense */
    bool cq = !absent(c->cu_q), ck = !absent(c->cu_k);
    if (cq != ck)
        return fab__fail(INVALID, "%s: %s is set but %s is absent; give both for a variable-length batch, or neither",
                         op, cq ? "cu_seqlens_q" : "cu_seqlens_k", cq ? "cu_seqlens_k" : "cu_seqlens_q");
    const int varlen = cq;
    const int nd = varlen ? 3 : 4;
    if (!varlen && (c->max_seqlen_q != 0 || c->max_seqlen_k != 0))
        return fab__fail(INVALID, "%s: p.max_seqlen_q=%" PRId64 ", p.max_seqlen_k=%" PRId64
                                  " must be 0 without cu_seqlens (they are for variable-length batches)",
                         op, c->max_seqlen_q, c->max_seqlen_k);
    if (!varlen && c->trust)
        return fab__fail(INVALID, "%s: p.trust_cu_seqlens=1 without cu_seqlens", op);

    /* operands: ndim, unit stride on d, dtypes */
    FAB__TRY(check_operand(op, "q", c->q, nd));
    FAB__TRY(check_operand(op, "k", c->k, nd));
    FAB__TRY(check_operand(op, "v", c->v, nd));
    FAB__TRY(check_operand(op, "out", c->out, nd));
    if (c->backward) {
        FAB__TRY(check_operand(op, "dout", c->dout, nd));
        FAB__TRY(check_operand(op, "dq", c->dq, nd));
        FAB__TRY(check_operand(op, "dk", c->dk, nd));
        FAB__TRY(check_operand(op, "dv", c->dv, nd));
    }
    FAB__TRY(fab__check_dtype_in(op, "q", c->q, attn_dtypes, 3));
    FAB__TRY(fab__check_same_dtype(op, "k", c->k, "q", c->q));
    FAB__TRY(fab__check_same_dtype(op, "v", c->v, "q", c->q));
    FAB__TRY(fab__check_same_dtype(op, "out", c->out, "q", c->q));
    if (c->backward) {
        FAB__TRY(fab__check_same_dtype(op, "dout", c->dout, "q", c->q));
        FAB__TRY(fab__check_same_dtype(op, "dq", c->dq, "q", c->q));
        FAB__TRY(fab__check_same_dtype(op, "dk", c->dk, "q", c->q));
        FAB__TRY(fab__check_same_dtype(op, "dv", c->dv, "q", c->q));
    }

    /* shapes */
    const int hd = nd - 1, hh = nd - 2; /* dims of head_dim and heads */
    const int64_t d = c->q->shape[hd], hq = c->q->shape[hh], hkv = c->k->shape[hh];
    if (c->k->shape[hd] != d)
        return fab__fail(INVALID, "%s: k.shape[%d]=%" PRId64 " must equal q.shape[%d]=%" PRId64 " (head dims must match)",
                         op, hd, c->k->shape[hd], hd, d);
    if (c->v->shape[hd] != d)
        return fab__fail(INVALID, "%s: v.shape[%d]=%" PRId64 " must equal q.shape[%d]=%" PRId64 " (head dims must match)",
                         op, hd, c->v->shape[hd], hd, d);
    FAB__TRY(fab__check_same_shape(op, "v", c->v, "k", c->k));
    if (!varlen && c->k->shape[0] != c->q->shape[0])
        return fab__fail(INVALID, "%s: k.shape[0]=%" PRId64 " must equal q.shape[0]=%" PRId64 " (batch)", op,
                         c->k->shape[0], c->q->shape[0]);
    if (d < 1)
        return fab__fail(INVALID, "%s: q.shape[%d]=0: head_dim must be >= 1", op, hd);
    if (hq < 1)
        return fab__fail(INVALID, "%s: q.shape[%d]=0: heads_q must be >= 1", op, hh);
    if (hkv < 1)
        return fab__fail(INVALID, "%s: k.shape[%d]=0: heads_kv must be >= 1", op, hh);
    if (hq % hkv != 0)
        return fab__fail(INVALID, "%s: heads_q=q.shape[%d]=%" PRId64 " must be a multiple of heads_kv=k.shape[%d]=%" PRId64
                                  " (GQA/MQA)", op, hh, hq, hh, hkv);
    FAB__TRY(fab__check_same_shape(op, "out", c->out, "q", c->q));
    if (c->backward) {
        FAB__TRY(fab__check_same_shape(op, "dout", c->dout, "q", c->q));
        FAB__TRY(fab__check_same_shape(op, "dq", c->dq, "q", c->q));
        FAB__TRY(fab__check_same_shape(op, "dk", c->dk, "k", c->k));
        FAB__TRY(fab__check_same_shape(op, "dv", c->dv, "k", c->k));
    }
    /* cu_seqlens tensors (before their shapes count the batch) */
    if (varlen) {
        FAB__TRY(check_cu_tensor(op, "cu_seqlens_q", c->cu_q));
        FAB__TRY(check_cu_tensor(op, "cu_seqlens_k", c->cu_k));
        if (c->cu_k->shape[0] != c->cu_q->shape[0])
            return fab__fail(INVALID, "%s: cu_seqlens_k.shape[0]=%" PRId64 " must equal cu_seqlens_q.shape[0]=%" PRId64,
                             op, c->cu_k->shape[0], c->cu_q->shape[0]);
    }
    const int64_t batch = varlen ? c->cu_q->shape[0] - 1 : c->q->shape[0];
    const int64_t rows_q = varlen ? c->q->shape[0] : c->q->shape[1]; /* total_q or sq */
    const int64_t rows_k = varlen ? c->k->shape[0] : c->k->shape[1];
    if (rows_q > INT32_MAX || rows_k > INT32_MAX)
        return fab__fail(INVALID, "%s: sequence dims of q (%" PRId64 ") and k (%" PRId64 ") must be < 2^31", op,
                         rows_q, rows_k);

    /* lse */
    bool have_lse = !absent(c->lse);
    if (c->backward && !have_lse)
        return fab__fail(INVALID, "%s: lse is absent; the backward pass needs the forward's lse", op);
    if (have_lse)
        FAB__TRY(check_lse(c, varlen, batch, hq, rows_q));

    /* no output writes an element twice, or overlaps an input or another output */
    const fab_tensor *ins[8] = {c->q, c->k, c->v, c->out, c->dout, c->lse, c->cu_q, c->cu_k};
    const char *in_names[8] = {"q", "k", "v", "out", "dout", "lse", "cu_seqlens_q", "cu_seqlens_k"};
    const fab_tensor *outs[4] = {c->out, c->lse, NULL, NULL};
    const char *out_names[4] = {"out", "lse", NULL, NULL};
    int nin = 8, nout = 2;
    if (c->backward) {
        outs[0] = c->dq, outs[1] = c->dk, outs[2] = c->dv;
        out_names[0] = "dq", out_names[1] = "dk", out_names[2] = "dv";
        nout = 3;
    } else {
        ins[3] = ins[6], in_names[3] = in_names[6]; /* the forward's inputs: q k v, cu_seqlens */
        ins[4] = ins[7], in_names[4] = in_names[7];
        nin = 5;
    }
    for (int o = 0; o < nout; o++) {
        if (absent(outs[o]))
            continue;
        FAB__TRY(fab__check_no_self_overlap(op, out_names[o], outs[o]));
        for (int i = 0; i < nin; i++)
            if (!absent(ins[i]))
                FAB__TRY(fab__check_no_partial_overlap(op, out_names[o], outs[o], in_names[i], ins[i], false));
        for (int o2 = o + 1; o2 < nout; o2++)
            if (!absent(outs[o2]))
                FAB__TRY(fab__check_no_partial_overlap(op, out_names[o], outs[o], out_names[o2], outs[o2], false));
    }

    /* memory the backend can reach */
    const fab_tensor *all[12] = {c->q, c->k, c->v, c->out, c->lse, c->cu_q, c->cu_k, c->dout, c->dq, c->dk, c->dv};
    const char *all_names[12] = {"q", "k", "v", "out", "lse", "cu_seqlens_q", "cu_seqlens_k", "dout", "dq", "dk", "dv"};
    for (int i = 0; i < (c->backward ? 11 : 7); i++)
        if (!absent(all[i]))
            FAB__TRY(fab__check_memory(ctx, op, all_names[i], all[i]));

    /* mask, folded: causal bounds the right side at 0 */
    int64_t left = c->window ? c->window_left : -1;
    int64_t right = c->window ? c->window_right : -1;
    if (c->causal)
        right = 0; /* min(right, 0), where -1 (unbounded) counts as +inf */
    /* A side wider than all the rows is unbounded: as -1 it keeps every index sum
     * (row + offset + side) far from int64 overflow, here and in the kernels. */
    if (left > rows_q + rows_k)
        left = -1;
    if (right > rows_q + rows_k)
        right = -1;

    /* varlen offsets, on the host; every row must keep a key */
    int32_t *cu_host = NULL;
    int64_t sq = rows_q, sk = rows_k;
    if (varlen) {
        int64_t n = batch;
        if (ctx->backend == FAB_BACKEND_CUDA && c->trust) {
            if (c->max_seqlen_q == 0 || c->max_seqlen_k == 0)
                return fab__fail(INVALID, "%s: p.max_seqlen_q and p.max_seqlen_k must be given with p.trust_cu_seqlens=1", op);
            sq = c->max_seqlen_q;
            sk = c->max_seqlen_k;
        } else {
            cu_host = malloc(sizeof(int32_t) * 2 * (size_t)(n + 1));
            if (!cu_host)
                return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: no host memory for the cu_seqlens copies", op);
            size_t bytes = sizeof(int32_t) * (size_t)(n + 1);
            fab_status s = FAB_OK;
            if (ctx->backend == FAB_BACKEND_CUDA) {
                s = fab_copy(ctx, cu_host, c->cu_q->data, bytes);
                if (s == FAB_OK)
                    s = fab_copy(ctx, cu_host + n + 1, c->cu_k->data, bytes);
                if (s == FAB_OK)
                    s = fab_synchronize(ctx);
            } else {
                memcpy(cu_host, c->cu_q->data, bytes);
                memcpy(cu_host + n + 1, c->cu_k->data, bytes);
            }
            int64_t mq = 0, mk = 0;
            if (s == FAB_OK)
                s = check_offsets(op, "cu_seqlens_q", cu_host, n, rows_q, "q.shape[0]", &mq);
            if (s == FAB_OK)
                s = check_offsets(op, "cu_seqlens_k", cu_host + n + 1, n, rows_k, "k.shape[0]", &mk);
            if (s == FAB_OK && c->max_seqlen_q != 0 && c->max_seqlen_q < mq)
                s = fab__fail(INVALID, "%s: p.max_seqlen_q=%" PRId64 " is less than the longest query sequence (%" PRId64 ")",
                              op, c->max_seqlen_q, mq);
            if (s == FAB_OK && c->max_seqlen_k != 0 && c->max_seqlen_k < mk)
                s = fab__fail(INVALID, "%s: p.max_seqlen_k=%" PRId64 " is less than the longest key sequence (%" PRId64 ")",
                              op, c->max_seqlen_k, mk);
            for (int64_t i = 0; s == FAB_OK && i < n; i++)
                s = check_rows_nonempty(c, right, i, cu_host[i + 1] - cu_host[i],
                                        cu_host[n + 1 + i + 1] - cu_host[n + 1 + i]);
            if (s != FAB_OK) {
                free(cu_host);
                return s;
            }
            sq = mq;
            sk = mk;
        }
    } else {
        FAB__TRY(check_rows_nonempty(c, right, -1, batch > 0 ? sq : 0, sk));
    }

    /* what the backends support */
    fab_status s = FAB_OK;
    if (ctx->backend == FAB_BACKEND_CUDA) {
        s = cuda_supports(ctx, c, d, batch, hq);
    } else if (d > FAB__ATTN_CPU_MAX_D) {
        s = fab__fail(FAB_ERR_UNSUPPORTED, "%s: head_dim=%" PRId64 " is not supported on the CPU (1..%d)", op, d,
                      FAB__ATTN_CPU_MAX_D);
    }
    if (s != FAB_OK || batch == 0 || rows_q + rows_k == 0) {
        free(cu_host);
        return s;
    }

    fab__attn_args a;
    memset(&a, 0, sizeof a);
    a.dtype = c->q->dtype;
    a.batch = batch;
    a.hq = hq;
    a.hkv = hkv;
    a.d = d;
    a.sq = sq;
    a.sk = sk;
    a.cu_q = cu_host;
    a.cu_k = cu_host ? cu_host + batch + 1 : NULL;
    a.cu_q_dev = varlen ? (const int32_t *)c->cu_q->data : NULL;
    a.cu_k_dev = varlen ? (const int32_t *)c->cu_k->data : NULL;
    a.rows_q = varlen ? c->q->shape[0] : 0;
    a.rows_k = varlen ? c->k->shape[0] : 0;
    a.q = view_of(c->q, varlen);
    a.k = view_of(c->k, varlen);
    a.v = view_of(c->v, varlen);
    a.out = view_of(c->out, varlen);
    if (have_lse) {
        a.lse = (float *)c->lse->data;
        a.lse_sb = varlen ? 0 : hq * rows_q;
        a.lse_sh = rows_q;
    }
    a.scale = c->scale != 0 ? c->scale : (float)(1.0 / sqrt((double)d));
    a.softcap = c->softcap;
    a.left = left;
    a.right = right;
    a.deterministic = ctx->deterministic;
    if (c->backward) {
        a.dout = view_of(c->dout, varlen);
        a.dq = view_of(c->dq, varlen);
        a.dk = view_of(c->dk, varlen);
        a.dv = view_of(c->dv, varlen);
        if (ctx->backend == FAB_BACKEND_CUDA) {
#ifdef FAB_HAVE_CUDA
            s = fab__attention_backward_sm80(ctx, &a);
#else
            s = fab__fail(FAB_ERR_INTERNAL, "%s: CUDA context in a build without CUDA", op);
#endif
        } else {
            s = fab__attention_backward_cpu(ctx, &a);
        }
    } else if (ctx->backend == FAB_BACKEND_CUDA) {
#ifdef FAB_HAVE_CUDA
        s = fab__attention_forward_sm90_supports(ctx, &a) ? fab__attention_forward_sm90(ctx, &a)
                                                          : fab__attention_forward_sm80(ctx, &a);
#else
        s = fab__fail(FAB_ERR_INTERNAL, "%s: CUDA context in a build without CUDA", op);
#endif
    } else {
        s = fab__attention_forward_cpu(ctx, &a);
    }
    free(cu_host);
    return s;
}

fab_status fab_attention_forward(fab_context *ctx, const fab_attention_params *p)
{
    const char *op = "fab_attention_forward";
    FAB__TRY(fab__check_call(op, ctx, p));
    common c;
    memset(&c, 0, sizeof c);
    c.op = op;
    c.q = &p->q, c.k = &p->k, c.v = &p->v, c.out = &p->out, c.lse = &p->lse;
    c.scale = p->scale, c.softcap = p->softcap, c.causal = p->causal, c.window = p->window;
    c.window_left = p->window_left, c.window_right = p->window_right;
    c.cu_q = &p->cu_seqlens_q, c.cu_k = &p->cu_seqlens_k;
    c.max_seqlen_q = p->max_seqlen_q, c.max_seqlen_k = p->max_seqlen_k, c.trust = p->trust_cu_seqlens;
    return attention(ctx, &c);
}

fab_status fab_attention_backward(fab_context *ctx, const fab_attention_backward_params *p)
{
    const char *op = "fab_attention_backward";
    FAB__TRY(fab__check_call(op, ctx, p));
    common c;
    memset(&c, 0, sizeof c);
    c.op = op;
    c.backward = 1;
    c.q = &p->q, c.k = &p->k, c.v = &p->v, c.out = &p->out, c.lse = &p->lse;
    c.dout = &p->dout, c.dq = &p->dq, c.dk = &p->dk, c.dv = &p->dv;
    c.scale = p->scale, c.softcap = p->softcap, c.causal = p->causal, c.window = p->window;
    c.window_left = p->window_left, c.window_right = p->window_right;
    c.cu_q = &p->cu_seqlens_q, c.cu_k = &p->cu_seqlens_k;
    c.max_seqlen_q = p->max_seqlen_q, c.max_seqlen_k = p->max_seqlen_k, c.trust = p->trust_cu_seqlens;
    return attention(ctx, &c);
}
