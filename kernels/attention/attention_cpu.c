/*
 * attention_cpu.c: attention forward and backward on the host.
 *
 * Forward (FlashAttention's algorithm on the CPU): one task per (batch, query
 * head, tile of 128 query rows); it streams the key/value tiles its rows may see
 * (64 keys each), keeps a running max m and sum l per row, rescales its f32
 * output accumulator when m grows, and divides by l at the end; lse = m + log l.
 * Only tiles of 128x64 scores ever exist (128 rows halve the key/value loads
 * per flop against 64; the f32 tiles of one task stay in L2). Forward and
 * backward products take only the rows of a tile that see one of its keys
 * (rows_seeing_keys): on the causal diagonal a 64-key tile is seen by half of a
 * 128-row tile. A thread converts each key/value tile (bf16/f16 to f32, K
 * transposed) once for all its query tiles of a head group, into a cache of the
 * group's tiles (fab__kv_cache, where it fits in the context's workspace): at 64
 * keys per tile and head dim 64 the conversion costs about a tenth of the tile's
 * products. The scratch is the context's host scratch, kept from call to call
 * where it fits in the workspace (else allocated per call).
 *
 * Backward by recomputation: D = rowsum(dO * O) first, then P = exp(s - lse),
 * dS = P (dP - D) per (query tile, key tile) pair and dV += P^T dO, dK += dS^T Q,
 * dQ += dS K. Every gradient element is summed by one task in a fixed order, so
 * the result is bitwise the same for any thread count. Two schedules:
 *   one pass:   one task per (batch, kv head): key tiles in order, and for each
 *               the query tiles of every head of the group that see it; the task
 *               owns its group's dq rows (f32, in its scratch). 5 tile products.
 *   two passes: dk/dv pass, one task per (batch, kv head, 64-key tile), summing
 *               over the query heads of its group and the query tiles that see it;
 *               dq pass, one task per (batch, query head, 128-row tile). (P, dS)
 *               is computed twice: 7 tile products, but many more tasks.
 * Both visit the same pairs and add them in the same order, so they agree bit
 * for bit; single_pass() picks one.
 *
 * Numerics: inputs are widened to f32, all products and sums are f32, the
 * exponentials are exp2 of log2-unit scores (a polynomial good to ~1 ulp), each
 * output is rounded to its dtype once.
 *
 * AMX (use_amx: bf16, head dim padded to a multiple of 32, a CPU with AMX-BF16):
 * the AVX-512 copy runs the tile products on AMX tiles instead (matmul_amx.c's
 * kernel; the amx_* functions of the tile code): Q, dO, K, V packed as bf16, the
 * products exact and summed in f32; P and dS, f32, enter the products that
 * consume them as hi + lo, two bf16 (16 bits of the value), so the results stay
 * close to the f32 path's. The softmax, the masks and the schedules do not change,
 * and both backward schedules still give the same bits.
 *
 * ISA: the tile code (attention_cpu_tile.h) is compiled 4, 8 and 16 floats wide
 * (portable, AVX2+FMA, AVX-512) and the widest the CPU has runs. On a Zen 5 EPYC
 * (full-width AVX-512) the 16-wide copy is 1.6-1.9x the 8-wide one (fab-bench
 * attention suite, FAB_ATTN_CPU_ISA=avx2 against the default, same machine); on
 * Zen 4, which splits 512-bit operations in two, it was within 5%.
 */
#include "attention.h"

#include "../common/cpu_dtype.h"
#include "../matmul/matmul_amx.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define FAB__BQ 128 /* query rows per tile */
#define FAB__BK 64 /* keys per tile */

/* One sequence of the batch: its index, first rows in the packed tensors (0 for
 * a dense batch), lengths, and the padded head dim of the scratch tiles. */
typedef struct fab__attn_seq {
    int64_t b, q0, k0, sq, sk;
    int dp;
} fab__attn_seq;

/* A thread's f32 copies of the K^T and V tiles of one (sequence, kv head), made
 * by the first of its forward's query tiles that needs a tile and read by the
 * next ones: a key tile is converted (and K transposed) once per run of a
 * thread's tasks on the same head group (the tasks go in head order) instead of
 * once per query tile. kt [ktiles][dp x BK], v [ktiles][BK x dp]; have[t] says
 * tile t is there. */
typedef struct fab__kv_cache {
    int64_t b, g; /* whose tiles; b = -1: none yet */
    float *kt, *v;
    unsigned char *have;
} fab__kv_cache;

/* The backward's bf16 operands on AMX (the tile code's amx_*), NULL where the
 * products run on the vector units:
 *   q, dout  the query tile's Q and dO as A panels (s = Q K^T, dP = dO V^T);
 *   qb, doutb the same as B panels, k = the 128 rows, twice (dK, dV);
 *   k, v     the key tile's K and V as B panels, k = the head dim (s, dP);
 *   kb       its K as B panels, k = the 64 keys, twice (dQ);
 *   hl       A panels of P^T, dS^T or dS as hi + lo (amx_pack_t_hilo, amx_mul_keys). */
typedef struct fab__amx_tiles {
    uint16_t *q, *dout, *qb, *doutb, *k, *v, *kb, *hl;
} fab__amx_tiles;

/* The backward's AMX operands for `rows` query rows (a tile's BQ, or a group's)
 * carved from p, and their size in floats. */
static inline size_t amx_tiles_floats(int64_t rows, int dp)
{
    return (size_t)(6 * rows * dp + 4 * FAB__BK * dp + 2 * FAB__BQ * FAB__BK) / 2;
}

static inline fab__amx_tiles amx_tiles_at(float *p, int64_t rows, int dp)
{
    fab__amx_tiles x;
    x.q = (uint16_t *)p, x.dout = x.q + rows * dp, x.qb = x.dout + rows * dp, x.doutb = x.qb + 2 * rows * dp;
    x.k = x.doutb + 2 * rows * dp, x.v = x.k + FAB__BK * dp, x.kb = x.v + FAB__BK * dp, x.hl = x.kb + 2 * FAB__BK * dp;
    return x;
}

static inline int64_t elem(const fab__attn_view *v, int64_t b, int64_t row, int64_t h)
{
    return b * v->sb + row * v->ss + h * v->sh;
}

/* The query tiles [*lo, *hi) (lo a multiple of BQ) holding a row that may see
 * one of the keys j0 .. j0+nk-1: exactly the pairs the dq pass visits, since both
 * come from the same band of allowed keys. */
static void query_tiles_of_keys(const fab__attn_args *a, const fab__attn_seq *sq, int64_t j0, int nk, int64_t *lo,
                                int64_t *hi)
{
    const int64_t off = sq->sk - sq->sq;
    int64_t ilo = 0, ihi = sq->sq;
    if (a->right >= 0 && j0 - off - a->right > ilo)
        ilo = j0 - off - a->right;
    if (a->left >= 0 && j0 + nk - 1 - off + a->left + 1 < ihi)
        ihi = j0 + nk - 1 - off + a->left + 1;
    *lo = ilo / FAB__BQ * FAB__BQ;
    *hi = ihi;
}

/* The rows [*r0, *r1) of the query tile i0 .. i0+nq-1, widened to whole register
 * blocks of 4, that may see one of the keys j0 .. j0+nk-1: the tile products
 * skip the others (above the causal diagonal, past a window's edge), whose
 * scores are all masked. Skipping them leaves every result as it was: their P
 * and dS are exact zeros, and their m, l and O do not change. */
static void rows_seeing_keys(const fab__attn_args *a, int64_t off, int64_t i0, int nq, int64_t j0, int nk, int *r0,
                             int *r1)
{
    int64_t lo = 0, hi = nq;
    if (a->right >= 0 && j0 - (i0 + off) - a->right > lo) /* row i sees key j0 from i = j0 - i0 - off - right */
        lo = j0 - (i0 + off) - a->right < nq ? j0 - (i0 + off) - a->right : nq;
    if (a->left >= 0 && j0 + nk + a->left - (i0 + off) < hi) /* and the last key up to i < j0 + nk + left - .. */
        hi = j0 + nk + a->left - (i0 + off) > lo ? j0 + nk + a->left - (i0 + off) : lo;
    *r0 = (int)(lo & ~(int64_t)3);
    *r1 = (int)((hi + 3) & ~(int64_t)3);
}

/* The tile code three times: baseline ISA, AVX2+FMA and AVX-512 where the compiler
 * can target them; the best one the CPU has runs (isa()). */
#define FAB__T(name) name##_base
#define FAB__VL 4
#include "attention_cpu_tile.h"
#undef FAB__T
#undef FAB__VL

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FAB__ATTN_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#pragma GCC optimize("fp-contract=fast") /* a*b + c as one FMA (ISO C mode turns contraction off) */
#define FAB__T(name) name##_avx2
#define FAB__VL 8
#include "attention_cpu_tile.h"
#undef FAB__T
#undef FAB__VL
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")
#pragma GCC optimize("fp-contract=fast")
#define FAB__T(name) name##_avx512
#define FAB__VL 16
#include "attention_cpu_tile.h"
#undef FAB__T
#undef FAB__VL
#pragma GCC pop_options
#elif defined(__clang__) && defined(__x86_64__)
#define FAB__ATTN_AVX2 1
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#define FAB__T(name) name##_avx2
#define FAB__VL 8
#include "attention_cpu_tile.h"
#undef FAB__T
#undef FAB__VL
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c"))), \
                             apply_to = function)
#define FAB__T(name) name##_avx512
#define FAB__VL 16
#include "attention_cpu_tile.h"
#undef FAB__T
#undef FAB__VL
#pragma clang attribute pop
#endif

typedef void (*fwd_tile_fn)(const fab__attn_args *, const fab__attn_seq *, int64_t, int64_t, int, float *,
                            fab__kv_cache *, int);
typedef void (*kv_tile_fn)(const fab__attn_args *, const fab__attn_seq *, int64_t, int64_t, int, const float *,
                           float *, int);
typedef void (*rowdot_fn)(const fab__attn_args *, const fab__attn_seq *, int64_t, float *, float *, int);
typedef void (*q_tile_fn)(const fab__attn_args *, const fab__attn_seq *, int64_t, int64_t, int, const float *,
                          float *, int);
typedef void (*group_fn)(const fab__attn_args *, const fab__attn_seq *, int64_t, const float *, float *, int);

/* Which copy of the tile code runs: the widest the CPU has (2: AVX-512, 1: AVX2,
 * 0: the portable one), or a narrower one FAB_ATTN_CPU_ISA names (avx2, base: to
 * compare them, or to test the others on an AVX-512 machine). The result's bits
 * depend on the copy (the vector width sets the order of some sums). */
static int isa(void)
{
#if defined(FAB__ATTN_AVX2) && !defined(FAB_ATTN_FORCE_BASE) /* that: a test build of the portable code */
    __builtin_cpu_init();
    int best = !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 0
               : __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                       __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
                   ? 2
                   : 1;
    const char *want = getenv("FAB_ATTN_CPU_ISA");
    if (want && strcmp(want, "base") == 0)
        return 0;
    if (want && strcmp(want, "avx2") == 0 && best > 1)
        return 1;
    return best;
#else
    return 0;
#endif
}

/* Whether the tile products run on AMX (bf16 inputs, a head dim padded to a
 * multiple of 32, the AVX-512 copy of the tile code, a CPU with AMX-BF16;
 * FAB_ATTN_CPU_AMX=0 turns it off). */
static int use_amx(const fab__attn_args *a)
{
    return a->dtype == FAB_DTYPE_BF16 && ((a->d + 15) & ~(int64_t)15) % 32 == 0 && isa() == 2 &&
           fab__amx_enabled("FAB_ATTN_CPU_AMX");
}

static fab__attn_seq seq_of(const fab__attn_args *a, int64_t b)
{
    fab__attn_seq s;
    s.b = b;
    s.dp = (int)((a->d + 15) & ~(int64_t)15);
    if (a->cu_q) {
        s.q0 = a->cu_q[b], s.sq = a->cu_q[b + 1] - a->cu_q[b];
        s.k0 = a->cu_k[b], s.sk = a->cu_k[b + 1] - a->cu_k[b];
    } else {
        s.q0 = s.k0 = 0, s.sq = a->sq, s.sk = a->sk;
    }
    return s;
}

/* Per-thread scratch of floats_per_thread (rounded to 64 bytes) each, then
 * `shared` floats for all, taken before any output is touched: the context's
 * kept host scratch where it fits in cfg.workspace_bytes (fab__host_scratch_get),
 * so that calls after the first fault no fresh pages in. Give it back with
 * fab__host_scratch_put. */
static float *get_scratch(fab_context *ctx, int threads, size_t floats_per_thread, size_t shared, size_t *stride)
{
    *stride = (floats_per_thread + 15) & ~(size_t)15;
    return fab__host_scratch_get(ctx, sizeof(float) * (*stride * (size_t)threads + shared));
}

/* The forward's key/value cache per thread, in floats: every key tile of the
 * longest sequence, K^T and V, where the forward's scratch with it (`tiles`
 * floats a thread besides) fits in the context's workspace (cfg.workspace_bytes,
 * 32 MiB by default: with 2 threads, sequences up to 32192 keys at head dim 64),
 * so that it is kept from call to call; 0 (no cache: each query tile converts
 * its key tiles itself) where it does not, where no kv head has a second query
 * tile to run, or with FAB_ATTN_CPU_KV_CACHE=0 (to compare: the results are the
 * same bits either way). */
static size_t kv_cache_floats(const fab_context *ctx, const fab__attn_args *a, int dp, int64_t qtiles, int threads,
                              size_t tiles)
{
    /* a->sk: varlen, the longest sequence's */
    const size_t floats = (size_t)((a->sk + FAB__BK - 1) / FAB__BK) * (size_t)(2 * FAB__BK * dp);
    const size_t per_thread = ctx->workspace_bytes / sizeof(float) / (size_t)threads;
    const int reuse = qtiles > 1 || a->hq > a->hkv; /* another query tile of the same kv head */
    const char *env = getenv("FAB_ATTN_CPU_KV_CACHE");
    const int off = env && strcmp(env, "0") == 0;
    /* the flags, a byte a tile, and the rounding of the stride to 64 bytes */
    const size_t ktiles = floats / (size_t)(2 * FAB__BK * dp);
    return reuse && !off && tiles + floats + (ktiles + 3) / 4 + 16 <= per_thread ? floats : 0;
}

fab_status fab__attention_forward_cpu(fab_context *ctx, const fab__attn_args *a)
{
    const int dp = (int)((a->d + 15) & ~(int64_t)15);
    const int64_t qtiles = (a->sq + FAB__BQ - 1) / FAB__BQ;
    const int64_t ntasks = a->batch * a->hq * qtiles;
    int threads = ctx->num_threads;
    if (threads > ntasks)
        threads = (int)(ntasks > 0 ? ntasks : 1);
    /* Q, O, K^T, V, tmp, S, m, the lane-wise l (16 floats a row), fwd_softmax's
     * 3 floats a row, AMX's P as two bf16; then the key/value cache and its flags */
    const size_t tiles = (size_t)(2 * FAB__BQ * dp + 3 * FAB__BK * dp + 2 * FAB__BQ * FAB__BK + 20 * FAB__BQ);
    const size_t cache = kv_cache_floats(ctx, a, dp, qtiles, threads, tiles);
    const size_t ktiles = cache / (size_t)(2 * FAB__BK * dp);
    size_t stride;
    float *scratch = get_scratch(ctx, threads, tiles + cache + (ktiles + 3) / 4, 0, &stride);
    if (!scratch)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "fab_attention_forward: no memory for %d threads' tiles", threads);
    fwd_tile_fn tile = fwd_tile_base;
    const int amx = use_amx(a);
#ifdef FAB__ATTN_AVX2
    const int level = isa();
    if (level > 0)
        tile = level > 1 ? fwd_tile_avx512 : fwd_tile_avx2;
#endif
#pragma omp parallel num_threads(threads)
    {
        float *ws = scratch + stride * (size_t)omp_get_thread_num();
        fab__kv_cache kc = {-1, -1, ws + tiles, ws + tiles + cache / 2, (unsigned char *)(ws + tiles + cache)};
        if (amx)
            fab__amx_begin();
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntasks; t++) {
            int64_t b = t / (a->hq * qtiles), h = t / qtiles % a->hq, i0 = t % qtiles * FAB__BQ;
            fab__attn_seq s = seq_of(a, b);
            if (i0 >= s.sq)
                continue;
            tile(a, &s, h, i0, (int)(s.sq - i0 < FAB__BQ ? s.sq - i0 : FAB__BQ), ws, cache ? &kc : NULL, amx);
        }
        if (amx)
            fab__amx_end();
    }
    fab__host_scratch_put(ctx, scratch);
    return FAB_OK;
}

/* Single pass or two passes? The single pass (bwd_group: 5 tile products per
 * pair against 7) has only batch x kv-head tasks, each a whole head group. It is
 * taken when whole rounds of those tasks keep the threads about as busy as the
 * two passes would (ceil(units / threads) * 5 <= units / threads * 7) and a task's
 * f32 copy of its group's Q, dO and dQ stays under 32 MiB. Both give the same bits,
 * so the choice (which depends on the thread count) never shows in the results. */
static int single_pass(const fab__attn_args *a, int threads, size_t group_floats)
{
    const int64_t units = a->batch * a->hkv;
    if (units < threads || group_floats > ((size_t)32 << 20) / sizeof(float))
        return 0;
    const int64_t rounds = (units + threads - 1) / threads;
    return rounds * 5 * threads <= units * 7;
}

fab_status fab__attention_backward_cpu(fab_context *ctx, const fab__attn_args *a)
{
    const char *op = "fab_attention_backward";
    const int dp = (int)((a->d + 15) & ~(int64_t)15);
    const int64_t qtiles = (a->sq + FAB__BQ - 1) / FAB__BQ, ktiles = (a->sk + FAB__BK - 1) / FAB__BK;
    const int64_t nq_tasks = a->batch * a->hq * qtiles, nk_tasks = a->batch * a->hkv * ktiles;
    /* bwd_group's scratch: its tiles, then Q, dO, dQ, lse, D of every row of the
     * group; with AMX, Q and dO again as bf16, and a key tile's K and V */
    const int amx = use_amx(a);
    const size_t group_rows = (size_t)(a->hq / a->hkv) * (size_t)(qtiles * FAB__BQ);
    const size_t group_floats = (size_t)(5 * FAB__BK * dp + 3 * FAB__BQ * FAB__BK) + group_rows * (size_t)(3 * dp + 2) +
                                (amx ? amx_tiles_floats((int64_t)group_rows, dp) : 0);
    /* the two passes' scratch: the larger of their tile layouts (see bwd_kv_tile and
     * bwd_q_tile), then AMX's operands */
    const size_t amx_floats = amx ? amx_tiles_floats(FAB__BQ, dp) : 0;
    const size_t kv_floats =
        (size_t)(5 * FAB__BK * dp + 2 * FAB__BQ * dp + 3 * FAB__BQ * FAB__BK + 2 * FAB__BQ) + amx_floats;
    const size_t q_floats =
        (size_t)(3 * FAB__BQ * dp + 4 * FAB__BK * dp + 3 * FAB__BQ * FAB__BK + 2 * FAB__BQ) + amx_floats;
    const int64_t units = a->batch * a->hkv, most = nq_tasks > nk_tasks ? nq_tasks : nk_tasks;
    int single = single_pass(a, ctx->num_threads, group_floats), threads = 1;
    /* D = rowsum(dO * O), laid out as lse, after the threads' scratch */
    const int64_t nrows = a->lse_sb ? a->batch * a->lse_sb : a->hq * a->lse_sh;
    const size_t dfloats = (size_t)(nrows > 0 ? nrows : 1);
    size_t stride = 0;
    float *scratch = NULL;
    if (single) {
        threads = ctx->num_threads < units ? ctx->num_threads : (int)units;
        scratch = get_scratch(ctx, threads, group_floats, dfloats, &stride);
        single = scratch != NULL; /* no memory for it: the two passes need far less */
    }
    if (!scratch) {
        threads = ctx->num_threads < most ? ctx->num_threads : (int)(most > 0 ? most : 1);
        scratch = get_scratch(ctx, threads, kv_floats > q_floats ? kv_floats : q_floats, dfloats, &stride);
    }
    if (!scratch)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: no memory for the tiles and D (%lld rows)", op,
                         (long long)nrows);
    float *Dbuf = scratch + stride * (size_t)threads;
    kv_tile_fn kv_tile = bwd_kv_tile_base;
    q_tile_fn q_tile = bwd_q_tile_base;
    group_fn group = bwd_group_base;
    rowdot_fn rowdot = bwd_rowdot_base;
#ifdef FAB__ATTN_AVX2
    const int level = isa();
    if (level > 1)
        kv_tile = bwd_kv_tile_avx512, q_tile = bwd_q_tile_avx512, group = bwd_group_avx512,
        rowdot = bwd_rowdot_avx512;
    else if (level > 0)
        kv_tile = bwd_kv_tile_avx2, q_tile = bwd_q_tile_avx2, group = bwd_group_avx2, rowdot = bwd_rowdot_avx2;
#endif
#pragma omp parallel num_threads(threads)
    {
        float *ws = scratch + stride * (size_t)omp_get_thread_num();
        if (amx)
            fab__amx_begin();
        /* D, one (batch, head) per iteration */
#pragma omp for schedule(static)
        for (int64_t t = 0; t < a->batch * a->hq; t++) {
            fab__attn_seq s = seq_of(a, t / a->hq);
            rowdot(a, &s, t % a->hq, Dbuf, ws, amx);
        }
        /* implicit barrier: D is complete */
        if (single) {
#pragma omp for schedule(dynamic, 1)
            for (int64_t t = 0; t < a->batch * a->hkv; t++) {
                fab__attn_seq s = seq_of(a, t / a->hkv);
                group(a, &s, t % a->hkv, Dbuf, ws, amx);
            }
        } else {
#pragma omp for schedule(dynamic, 1)
            for (int64_t t = 0; t < nk_tasks; t++) {
                int64_t b = t / (a->hkv * ktiles), g = t / ktiles % a->hkv, j0 = t % ktiles * FAB__BK;
                fab__attn_seq s = seq_of(a, b);
                if (j0 >= s.sk)
                    continue;
                kv_tile(a, &s, g, j0, (int)(s.sk - j0 < FAB__BK ? s.sk - j0 : FAB__BK), Dbuf, ws, amx);
            }
#pragma omp for schedule(dynamic, 1)
            for (int64_t t = 0; t < nq_tasks; t++) {
                int64_t b = t / (a->hq * qtiles), h = t / qtiles % a->hq, i0 = t % qtiles * FAB__BQ;
                fab__attn_seq s = seq_of(a, b);
                if (i0 >= s.sq)
                    continue;
                q_tile(a, &s, h, i0, (int)(s.sq - i0 < FAB__BQ ? s.sq - i0 : FAB__BQ), Dbuf, ws, amx);
            }
        }
        if (amx)
            fab__amx_end();
    }
    fab__host_scratch_put(ctx, scratch);
    return FAB_OK;
}
