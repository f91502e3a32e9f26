/* attention.h: internal arguments shared by the attention entry, CPU and CUDA files. */
#ifndef FAB_ATTENTION_H
#define FAB_ATTENTION_H

#include "../../src/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One [seq, heads, d] operand: element (batch b, row r, head h, column c) is at
 * data[b*sb + (row0[b] + r)*ss + h*sh + c], row0 = cu_seqlens for varlen (then
 * sb = 0), else 0. */
typedef struct fab__attn_view {
    void *data;
    int64_t sb, ss, sh;
} fab__attn_view;

/* Validated arguments. Mask bounds are folded: key j is allowed for query i of a
 * sequence with offset = sk - sq when i + offset - left <= j <= i + offset + right,
 * left/right = -1 meaning unbounded (causal makes right <= 0). */
typedef struct fab__attn_args {
    fab_dtype dtype;        /* of q, k, v, out, dout, dq, dk, dv */
    int64_t batch, hq, hkv, d;
    int64_t sq, sk;         /* dense: the lengths; varlen: the longest */
    const int32_t *cu_q;    /* host copies of cu_seqlens; NULL for a dense batch (or trusted on CUDA) */
    const int32_t *cu_k;
    const int32_t *cu_q_dev; /* the caller's cu_seqlens (device memory on CUDA); NULL for a dense batch */
    const int32_t *cu_k_dev;
    int64_t rows_q, rows_k;  /* varlen: the packed tensors' row counts (cu_seqlens' last entries); dense: 0 */
    fab__attn_view q, k, v, out;
    fab__attn_view dout, dq, dk, dv; /* backward only */
    float *lse;             /* may be NULL in the forward */
    int64_t lse_sb, lse_sh; /* lse of (b, h, row r) at lse[b*lse_sb + h*lse_sh + row0[b] + r] */
    float scale;            /* resolved: never 0 */
    float softcap;          /* 0: none */
    int64_t left, right;    /* folded window; -1 unbounded */
    int deterministic;
} fab__attn_args;

/* Rows [*lo, *hi) of keys that query rows [i0, i1) of a sequence (sq, sk) may see. */
static inline void fab__attn_key_range(const fab__attn_args *a, int64_t sq, int64_t sk, int64_t i0, int64_t i1,
                                       int64_t *lo, int64_t *hi)
{
    int64_t off = sk - sq;
    int64_t l = 0, h = sk;
    if (a->left >= 0 && i0 + off - a->left > l)
        l = i0 + off - a->left;
    if (a->right >= 0 && i1 - 1 + off + a->right + 1 < h)
        h = i1 - 1 + off + a->right + 1;
    if (h < l)
        h = l;
    *lo = l;
    *hi = h;
}

fab_status fab__attention_forward_cpu(fab_context *ctx, const fab__attn_args *a);
fab_status fab__attention_backward_cpu(fab_context *ctx, const fab__attn_args *a);
/* CUDA, sm_80+: bf16/f16, head_dim 32, 64, 96, 128, 256, rows
 * 16-byte aligned. The backward uses dq atomics unless a->deterministic. */
fab_status fab__attention_forward_sm80(fab_context *ctx, const fab__attn_args *a);
fab_status fab__attention_backward_sm80(fab_context *ctx, const fab__attn_args *a);
/* attention_fwd_sm90.cu: the Hopper forward (TMA, wgmma), preferred on sm_90 where it applies. */
bool fab__attention_forward_sm90_supports(const fab_context *ctx, const fab__attn_args *a);
fab_status fab__attention_forward_sm90(fab_context *ctx, const fab__attn_args *a);
/* attention_bwd_sm90.cu: the Hopper dK/dV kernel (with dQ atomics into dqacc, or
 * without where dqacc is NULL), which the sm80 backward runs in place of its own
 * dkdv kernel where it applies. Returns a cudaError_t; *taken false (and nothing
 * launched) when TMA rejects the operands. */
bool fab__attention_bwd_sm90_supports(const fab_context *ctx, const fab__attn_args *a);
int fab__attention_bwd_dkdv_sm90(fab_context *ctx, const fab__attn_args *a, const float *Dbuf, float *dqacc,
                                 bool *taken);
/* ... and deterministic mode's Hopper dq kernel, in place of the sm80 one. */
int fab__attention_bwd_dq_sm90(fab_context *ctx, const fab__attn_args *a, const float *Dbuf, bool *taken);

#ifdef __cplusplus
}
#endif

#endif
