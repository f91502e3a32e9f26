/*
 * test_fuzz.c: every public op fed thousands of random, mostly broken, argument
 * sets. The other tests check each kind of bad argument once, by hand; this one
 * checks the promise for their combinations: bad input never crashes, never
 * writes, and always says why. (The collectives and the gradient exchange too,
 * on a single-rank communicator.)
 *
 * Each iteration builds a plausible call (small random shapes, dtypes, flags,
 * usually contiguous), then breaks 0 to 3 things in it: a dtype, an ndim, a
 * shape or stride (negative, zero, past int64 when multiplied out), a data
 * pointer (NULL, misaligned, aliased with another argument), an enum or a float
 * field. Every tensor points into the middle of its own 256 KiB arena of random
 * bytes, and shapes and strides stay small unless they overflow, so even a call
 * the library accepts stays inside memory the test owns.
 *
 * Checked after each call (the arenas are compared byte by byte):
 *   - a failed call returns INVALID_ARGUMENT or UNSUPPORTED, its message names
 *     the op, and no arena changed;
 *   - a call with an argument that cannot be valid (a present tensor with an
 *     unknown dtype, an ndim out of range, a negative shape or stride, or a size
 *     past int64) fails;
 *   - any call leaves the input arenas alone, unless an output was aliased into
 *     one.
 * Under the ASan build (CI) out-of-bounds reads or writes inside the library
 * fail the run too. FAB_TEST_FUZZ_ITERS sets the iterations per op.
 */
#include "harness.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARENA (256 * 1024)
#define MAX_FIELDS 12

typedef struct field {
    const char *name;
    fab_tensor *t;
    int output;
} field;

typedef struct fuzz {
    fab_context *ctx;
    int nf;
    field f[MAX_FIELDS];
    void *arena[MAX_FIELDS];                  /* the context's memory */
    unsigned char *before[MAX_FIELDS], *after; /* host copies */
    int calls, accepted, unsupported;          /* what happened, for the summary */
} fuzz;

static int64_t rnd(int64_t lo, int64_t hi) /* inclusive */
{
    return lo + (int64_t)(fab_test_rand_u64() % (uint64_t)(hi - lo + 1));
}

static int chance(int percent) { return rnd(0, 99) < percent; }

static void *base_of(fuzz *z, int i) { return (char *)z->arena[i] + ARENA / 2; }

/* A contiguous tensor in field i's arena. */
static void make(fuzz *z, int i, fab_dtype dt, int ndim, const int64_t *shape)
{
    fab_tensor *t = z->f[i].t;
    memset(t, 0, sizeof *t);
    t->data = base_of(z, i);
    t->dtype = dt;
    t->ndim = ndim;
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        t->shape[d] = shape[d];
        t->stride[d] = s;
        s *= shape[d] > 0 ? shape[d] : 1;
    }
}

static void absent(fuzz *z, int i) { memset(z->f[i].t, 0, sizeof *z->f[i].t); }

static void add_field(fuzz *z, const char *name, fab_tensor *t, int output)
{
    z->f[z->nf].name = name;
    z->f[z->nf].t = t;
    z->f[z->nf].output = output;
    z->nf++;
}

static fab_dtype float_dtype(int with_f32)
{
    static const fab_dtype d[3] = {FAB_DTYPE_BF16, FAB_DTYPE_F16, FAB_DTYPE_F32};
    return d[rnd(0, with_f32 ? 2 : 1)];
}

/* ---------------------------------------------------------------- breaking */

static const int64_t big_values[] = {INT64_MAX, INT64_MIN, (int64_t)1 << 62, -((int64_t)1 << 62), -1, -7};

/* Breaks one thing in the call. Big shapes and strides go only where they make
 * the size overflow (so a call that got through could not touch memory); small
 * ones stay inside the arena. */
static void mutate(fuzz *z, int *ienum, float *fscalar, int nenum, int nfloat)
{
    int i = (int)rnd(0, z->nf - 1);
    fab_tensor *t = z->f[i].t;
    int dim = t->ndim > 0 ? (int)rnd(0, (t->ndim < FAB_MAX_DIMS ? t->ndim : FAB_MAX_DIMS) - 1) : 0;
    switch (rnd(0, 11)) {
    case 0: t->dtype = (fab_dtype)rnd(-2, FAB_DTYPE_COUNT + 2); break;
    case 1: t->dtype = (fab_dtype)rnd(0, FAB_DTYPE_COUNT - 1); break;
    case 2: t->ndim = (int)rnd(-2, FAB_MAX_DIMS + 2); break;
    case 3: /* one dim more or fewer, the new dim of size 1 */
        if (t->ndim >= 0 && t->ndim < FAB_MAX_DIMS && chance(50)) {
            t->shape[t->ndim] = 1, t->stride[t->ndim] = 1;
            t->ndim++;
        } else if (t->ndim > 0) {
            t->ndim--;
        }
        break;
    case 4: t->shape[dim] = big_values[rnd(0, 5)]; break;
    case 5: t->shape[dim] = rnd(0, 9); break;
    case 6: t->stride[dim] = big_values[rnd(0, 5)]; break;
    case 7: t->stride[dim] = rnd(0, 9); break;
    case 8: /* NULL, or misaligned (a NULL stays NULL: NULL + 3 is no memory of ours) */
        t->data = chance(50) || !t->data ? NULL : (char *)t->data + rnd(1, 15);
        break;
    case 9: /* aliased with another argument */
        t->data = z->f[rnd(0, z->nf - 1)].t->data;
        break;
    case 10:
        if (nenum)
            ienum[rnd(0, nenum - 1)] = (int)rnd(-3, 5);
        break;
    default:
        if (nfloat) {
            static const float fv[] = {NAN, INFINITY, -INFINITY, -1.0f, 0.0f, 1e-30f, FLT_MAX};
            fscalar[rnd(0, nfloat - 1)] = fv[rnd(0, 6)];
        }
        break;
    }
}

/* Can no call accept this tensor? Present (data or ndim set) with an unknown
 * dtype, an ndim out of range, a negative shape or stride, or elements whose
 * count or byte extent does not fit in int64. */
static const char *impossible(const fab_tensor *t)
{
    if (!t->data && t->ndim == 0)
        return NULL; /* absent */
    if ((int)t->dtype < 0 || (int)t->dtype >= FAB_DTYPE_COUNT)
        return "unknown dtype";
    if (t->ndim < 0 || t->ndim > FAB_MAX_DIMS)
        return "ndim out of range";
    long double count = 1, extent = 0;
    int empty = 0;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0)
            return "negative shape";
        if (t->stride[d] < 0)
            return "negative stride";
        empty |= t->shape[d] == 0;
        count *= (long double)t->shape[d];
        extent += (long double)(t->shape[d] > 0 ? t->shape[d] - 1 : 0) * (long double)t->stride[d];
    }
    long double es = (long double)fab_dtype_size(t->dtype);
    if (!empty && (count * es > (long double)INT64_MAX || (extent + 1) * es > (long double)INT64_MAX))
        return "size past int64";
    return NULL;
}

/* --------------------------------------------------------------- checking */

/* FAB_TEST_FUZZ_VERBOSE=1: each call's tensors before it runs (to replay one). */
static void describe(const fuzz *z, int iter)
{
    static int verbose = -1;
    if (verbose < 0)
        verbose = getenv("FAB_TEST_FUZZ_VERBOSE") && atoi(getenv("FAB_TEST_FUZZ_VERBOSE")) > 0;
    if (!verbose)
        return;
    printf("# iteration %d\n", iter);
    for (int i = 0; i < z->nf; i++) {
        const fab_tensor *t = z->f[i].t;
        printf("#   %-12s data %+lld dtype %d ndim %d shape", z->f[i].name,
               t->data ? (long long)((const char *)t->data - (const char *)z->arena[i] - ARENA / 2) : -1LL,
               (int)t->dtype, t->ndim);
        for (int d = 0; d < t->ndim && d < FAB_MAX_DIMS; d++)
            printf(" %lld", (long long)t->shape[d]);
        printf(" stride");
        for (int d = 0; d < t->ndim && d < FAB_MAX_DIMS; d++)
            printf(" %lld", (long long)t->stride[d]);
        printf("\n");
    }
    fflush(stdout);
}

static void snapshot(fuzz *z, int iter)
{
    describe(z, iter);
    for (int i = 0; i < z->nf; i++) {
        for (int j = 0; j < ARENA; j += 8) {
            uint64_t r = fab_test_rand_u64();
            memcpy(z->before[i] + j, &r, 8);
        }
        assert_int_equal(fab_copy(z->ctx, z->arena[i], z->before[i], ARENA), FAB_OK);
    }
    assert_int_equal(fab_synchronize(z->ctx), FAB_OK);
}

/* Does an output's data point into arena i? */
static int written_into(const fuzz *z, int i)
{
    for (int j = 0; j < z->nf; j++) {
        const char *p = z->f[j].t->data, *a = z->arena[i];
        if (z->f[j].output && p >= a && p < a + ARENA)
            return 1;
    }
    return 0;
}

static void check(fuzz *z, const char *op, fab_status s, int iter)
{
    const char *why = NULL;
    const char *which = NULL;
    for (int i = 0; i < z->nf && !why; i++)
        if ((why = impossible(z->f[i].t)) != NULL)
            which = z->f[i].name;
    fab_status sync = fab_synchronize(z->ctx);
    if (sync != FAB_OK)
        fail_msg("%s, iteration %d: the context failed after the call (%s): %s", op, iter, fab_status_name(sync),
                 fab_last_error());
    z->calls++;
    z->accepted += s == FAB_OK;
    z->unsupported += s == FAB_ERR_UNSUPPORTED;
    if (s == FAB_OK && why)
        fail_msg("%s, iteration %d: accepted %s with %s", op, iter, which, why);
    if (s != FAB_OK) {
        if (s != FAB_ERR_INVALID_ARGUMENT && s != FAB_ERR_UNSUPPORTED)
            fail_msg("%s, iteration %d: returned %s (%s)", op, iter, fab_status_name(s), fab_last_error());
        if (!strstr(fab_last_error(), op))
            fail_msg("%s, iteration %d: the message does not name the op: \"%s\"", op, iter, fab_last_error());
    }
    for (int i = 0; i < z->nf; i++) {
        if (s == FAB_OK && (z->f[i].output || written_into(z, i)))
            continue;
        fab_test_download_bytes(z->ctx, z->arena[i], ARENA, z->after);
        if (memcmp(z->before[i], z->after, ARENA) != 0)
            fail_msg("%s, iteration %d: %s's memory changed although %s (%s)", op, iter, z->f[i].name,
                     s == FAB_OK ? "it is an input" : "the call failed", s == FAB_OK ? "" : fab_last_error());
    }
}

/* A context for the test's backend (skips without one) and the arenas on it. */
static fab_context *setup(fuzz *z)
{
    fab_context *ctx = fab_test_context();
    memset(z, 0, sizeof *z);
    z->ctx = ctx;
    for (int i = 0; i < MAX_FIELDS; i++) {
        assert_int_equal(fab_alloc(ctx, ARENA, &z->arena[i]), FAB_OK);
        z->before[i] = malloc(ARENA);
        assert_non_null(z->before[i]);
    }
    z->after = malloc(ARENA);
    assert_non_null(z->after);
    return ctx;
}

/* Iteration `it` of an op: its own random stream (replayable alone), no fields yet. */
static void begin(fuzz *z, uint64_t salt, int it)
{
    fab_test_reseed(salt + (uint64_t)it);
    z->nf = 0;
}

/* Prints what happened and fails when the calls were nearly all accepted or all
 * rejected: then the generator, not the library, is what the test exercised
 * (judged from 200 calls on; a replay of a few iterations is not judged). */
static void teardown(fuzz *z, const char *op)
{
    printf("# %s: %d calls: %d accepted, %d rejected (%d of them unsupported)\n", op, z->calls, z->accepted,
           z->calls - z->accepted, z->unsupported);
    if (z->calls >= 200 && (z->accepted * 10 < z->calls || (z->calls - z->accepted) * 10 < z->calls))
        fail_msg("%s: the generator is off: %d of %d calls accepted", op, z->accepted, z->calls);
    for (int i = 0; i < MAX_FIELDS; i++) {
        fab_test_free(z->ctx, z->arena[i]);
        free(z->before[i]);
    }
    free(z->after);
    fab_context_destroy(z->ctx);
}

static int iterations(int dflt)
{
    const char *e = getenv("FAB_TEST_FUZZ_ITERS");
    int n = e ? atoi(e) : 0;
    return n > 0 ? n : dflt;
}

/* Each call is tiny, even through the emulator: seconds per op. */
static int iters_for(fab_context *ctx, int cpu_iters)
{
    (void)ctx;
    return iterations(cpu_iters);
}

/* ----------------------------------------------------------------- the ops */

static void fuzz_gelu(void **state)
{
    (void)state;
    fuzz z;
    fab_context *ctx = setup(&z);
    int n = iters_for(ctx, 2000);
    for (int it = 0; it < n; it++) {
        begin(&z, 0x6e1000, it);
        int backward = chance(50);
        fab_gelu_params f;
        fab_gelu_backward_params b;
        memset(&f, 0, sizeof f);
        memset(&b, 0, sizeof b);
        if (backward) {
            add_field(&z, "x", &b.x, 0);
            add_field(&z, "dy", &b.dy, 0);
            add_field(&z, "dx", &b.dx, 1);
        } else {
            add_field(&z, "x", &f.x, 0);
            add_field(&z, "y", &f.y, 1);
        }
        int ndim = (int)rnd(0, 3);
        int64_t shape[3] = {rnd(1, 5), rnd(1, 5), rnd(1, 9)};
        fab_dtype dt = float_dtype(1);
        for (int i = 0; i < z.nf; i++)
            make(&z, i, dt, ndim, shape);
        int approx = (int)rnd(0, 1);
        for (int m = (int)rnd(0, 3); m > 0; m--)
            mutate(&z, &approx, NULL, 1, 0);
        snapshot(&z, it);
        fab_status s;
        if (backward) {
            b.approximate = (fab_gelu_approx)approx;
            s = fab_gelu_backward(ctx, &b);
        } else {
            f.approximate = (fab_gelu_approx)approx;
            s = fab_gelu_forward(ctx, &f);
        }
        check(&z, backward ? "fab_gelu_backward" : "fab_gelu_forward", s, it);
    }
    teardown(&z, "fab_gelu_*");
}

static void fuzz_matmul(void **state)
{
    (void)state;
    fuzz z;
    fab_context *ctx = setup(&z);
    int n = iters_for(ctx, 2000);
    for (int it = 0; it < n; it++) {
        begin(&z, 0x3a7000, it);
        fab_matmul_params p;
        memset(&p, 0, sizeof p);
        add_field(&z, "a", &p.a, 0);
        add_field(&z, "b", &p.b, 0);
        add_field(&z, "c", &p.c, 1);
        add_field(&z, "bias", &p.bias, 0);
        add_field(&z, "pre_act", &p.pre_act, 0);
        add_field(&z, "dbias", &p.dbias, 1);
        int64_t m = rnd(1, 6), nn = rnd(1, 6), k = rnd(1, 6), batch = rnd(1, 3);
        int nb = (int)rnd(0, 1), ta = (int)rnd(0, 1), tb = (int)rnd(0, 1);
        fab_dtype ab = float_dtype(1), cd = chance(50) ? ab : FAB_DTYPE_F32;
        int64_t sa[3] = {batch, ta ? k : m, ta ? m : k}, sb[3] = {batch, tb ? nn : k, tb ? k : nn},
                sc[3] = {batch, m, nn};
        make(&z, 0, ab, 2 + nb, sa + 1 - nb);
        make(&z, 1, ab, 2 + nb, sb + 1 - nb);
        make(&z, 2, cd, 2 + nb, sc + 1 - nb);
        absent(&z, 3), absent(&z, 4), absent(&z, 5);
        int e[6] = {ta, tb, 0, 0, 0, 0}; /* trans_a, trans_b, activation, activation_backward, precision, algo */
        float fl[2] = {chance(50) ? 1.0f : 0.5f, chance(70) ? 0.0f : 1.0f};
        if (chance(30)) {
            e[2] = (int)rnd(1, 3);
            if (chance(20)) {
                e[3] = 1;
                make(&z, 4, cd, 2 + nb, sc + 1 - nb);
            } else if (chance(50)) {
                make(&z, 4, cd, 2 + nb, sc + 1 - nb);
            }
        }
        if (!e[3] && chance(30))
            make(&z, 3, chance(50) ? cd : FAB_DTYPE_F32, 1, &nn);
        if (chance(15))
            make(&z, 5, FAB_DTYPE_F32, 1, &nn);
        e[4] = ab == FAB_DTYPE_F32 && chance(30);
        e[5] = chance(20) ? 3 : 0;
        for (int mu = (int)rnd(0, 3); mu > 0; mu--)
            mutate(&z, e, fl, 6, 2);
        z.f[4].output = !e[3]; /* pre_act: the forward writes it, the activation's backward reads it */
        p.trans_a = (fab_matmul_op)e[0], p.trans_b = (fab_matmul_op)e[1];
        p.activation = (fab_matmul_activation)e[2], p.activation_backward = e[3];
        p.precision = (fab_matmul_precision)e[4], p.algo = (fab_matmul_algo)e[5];
        p.alpha = fl[0], p.beta = fl[1];
        snapshot(&z, it);
        check(&z, "fab_matmul", fab_matmul(ctx, &p), it);
    }
    teardown(&z, "fab_matmul");
}

static void fuzz_bias_grad(void **state)
{
    (void)state;
    fuzz z;
    fab_context *ctx = setup(&z);
    int n = iters_for(ctx, 1000);
    for (int it = 0; it < n; it++) {
        begin(&z, 0xb1a5000, it);
        fab_matmul_bias_grad_params p;
        memset(&p, 0, sizeof p);
        add_field(&z, "dy", &p.dy, 0);
        add_field(&z, "dbias", &p.dbias, 1);
        int64_t shape[3] = {rnd(1, 3), rnd(1, 7), rnd(1, 9)};
        int ndim = (int)rnd(1, 3);
        fab_dtype dt = float_dtype(1);
        make(&z, 0, dt, ndim, shape + 3 - ndim);
        make(&z, 1, chance(50) ? dt : FAB_DTYPE_F32, 1, &shape[2]);
        for (int m = (int)rnd(0, 3); m > 0; m--)
            mutate(&z, NULL, NULL, 0, 0);
        snapshot(&z, it);
        check(&z, "fab_matmul_bias_grad", fab_matmul_bias_grad(ctx, &p), it);
    }
    teardown(&z, "fab_matmul_bias_grad");
}

/* The attention tensors of one call, forward or backward, dense or varlen. */
typedef struct attn_call {
    fab_tensor q, k, v, out, lse, dout, dq, dk, dv, cu_q, cu_k;
} attn_call;

static void fuzz_attention(void **state)
{
    (void)state;
    fuzz z;
    fab_context *ctx = setup(&z);
    int n = iters_for(ctx, 1500);
    for (int it = 0; it < n; it++) {
        begin(&z, 0xa77000, it);
        int backward = chance(40), varlen = chance(30);
        attn_call c;
        memset(&c, 0, sizeof c);
        add_field(&z, "q", &c.q, 0);
        add_field(&z, "k", &c.k, 0);
        add_field(&z, "v", &c.v, 0);
        add_field(&z, "out", &c.out, !backward);
        add_field(&z, "lse", &c.lse, !backward);
        add_field(&z, "cu_seqlens_q", &c.cu_q, 0);
        add_field(&z, "cu_seqlens_k", &c.cu_k, 0);
        if (backward) {
            add_field(&z, "dout", &c.dout, 0);
            add_field(&z, "dq", &c.dq, 1);
            add_field(&z, "dk", &c.dk, 1);
            add_field(&z, "dv", &c.dv, 1);
        }
        int64_t b = rnd(1, 2), sq = rnd(1, 6), sk = rnd(1, 6), hkv = rnd(1, 2), hq = hkv * rnd(1, 2);
        /* CUDA runs bf16/f16 at head dims 32..256: mostly those there, so that
         * enough calls get past the checks into the kernels */
        int cuda = fab_context_backend(ctx) == FAB_BACKEND_CUDA;
        int64_t d = chance(cuda ? 85 : 50) ? 32 : rnd(1, 9);
        fab_dtype dt = float_dtype(!cuda || chance(10));
        int32_t offs_q[3] = {0, 0, 0}, offs_k[3] = {0, 0, 0};
        for (int i = 0; i < b; i++) {
            offs_q[i + 1] = offs_q[i] + (int32_t)rnd(1, 6);
            offs_k[i + 1] = offs_k[i] + (int32_t)rnd(1, 6);
        }
        if (varlen) {
            int64_t tq[3] = {offs_q[b], hq, d}, tk[3] = {offs_k[b], hkv, d}, lq[2] = {hq, offs_q[b]}, nc = b + 1;
            make(&z, 0, dt, 3, tq), make(&z, 1, dt, 3, tk), make(&z, 2, dt, 3, tk), make(&z, 3, dt, 3, tq);
            make(&z, 4, FAB_DTYPE_F32, 2, lq);
            make(&z, 5, FAB_DTYPE_I32, 1, &nc), make(&z, 6, FAB_DTYPE_I32, 1, &nc);
            if (backward)
                make(&z, 7, dt, 3, tq), make(&z, 8, dt, 3, tq), make(&z, 9, dt, 3, tk), make(&z, 10, dt, 3, tk);
        } else {
            int64_t shq[4] = {b, sq, hq, d}, shk[4] = {b, sk, hkv, d}, lq[3] = {b, hq, sq};
            make(&z, 0, dt, 4, shq), make(&z, 1, dt, 4, shk), make(&z, 2, dt, 4, shk), make(&z, 3, dt, 4, shq);
            make(&z, 4, FAB_DTYPE_F32, 3, lq);
            absent(&z, 5), absent(&z, 6);
            if (backward)
                make(&z, 7, dt, 4, shq), make(&z, 8, dt, 4, shq), make(&z, 9, dt, 4, shk), make(&z, 10, dt, 4, shk);
        }
        if (!backward && chance(30))
            absent(&z, 4); /* the forward's lse is optional */
        /* causal, window, trust_cu_seqlens stays 0 (the offsets are random below) */
        int e[2] = {chance(30), chance(20)};
        float fl[2] = {chance(50) ? 0.0f : 0.3f, chance(80) ? 0.0f : 5.0f}; /* scale, softcap */
        int64_t wl = e[1] ? rnd(-1, 4) : 0, wr = e[1] ? rnd(-1, 4) : 0;
        int64_t mq = varlen && chance(30) ? rnd(6, 8) : 0, mk = varlen && chance(30) ? rnd(6, 8) : 0;
        for (int m = (int)rnd(0, 3); m > 0; m--)
            mutate(&z, e, fl, 2, 2);
        if (chance(10)) /* window fields without the window, or out of range */
            wl = rnd(-5, 5), wr = rnd(-3, 3);
        if (chance(10))
            mq = rnd(-3, 9), mk = rnd(-3, 9);
        snapshot(&z, it);
        /* the offsets: valid, or sometimes not monotone or past the rows */
        if (varlen && c.cu_q.data == base_of(&z, 5) && c.cu_k.data == base_of(&z, 6)) {
            if (chance(15))
                offs_q[rnd(1, b)] = (int32_t)rnd(-2, 20);
            if (chance(15))
                offs_k[rnd(0, b)] = (int32_t)rnd(-2, 20);
            memcpy(z.before[5] + ARENA / 2, offs_q, sizeof offs_q);
            memcpy(z.before[6] + ARENA / 2, offs_k, sizeof offs_k);
            assert_int_equal(fab_copy(ctx, z.arena[5], z.before[5], ARENA), FAB_OK);
            assert_int_equal(fab_copy(ctx, z.arena[6], z.before[6], ARENA), FAB_OK);
            assert_int_equal(fab_synchronize(ctx), FAB_OK);
        }
        fab_status s;
        if (backward) {
            fab_attention_backward_params p;
            memset(&p, 0, sizeof p);
            p.q = c.q, p.k = c.k, p.v = c.v, p.out = c.out, p.dout = c.dout, p.lse = c.lse;
            p.dq = c.dq, p.dk = c.dk, p.dv = c.dv, p.cu_seqlens_q = c.cu_q, p.cu_seqlens_k = c.cu_k;
            p.causal = e[0], p.window = e[1], p.window_left = wl, p.window_right = wr;
            p.scale = fl[0], p.softcap = fl[1], p.max_seqlen_q = mq, p.max_seqlen_k = mk;
            s = fab_attention_backward(ctx, &p);
        } else {
            fab_attention_params p;
            memset(&p, 0, sizeof p);
            p.q = c.q, p.k = c.k, p.v = c.v, p.out = c.out, p.lse = c.lse;
            p.cu_seqlens_q = c.cu_q, p.cu_seqlens_k = c.cu_k;
            p.causal = e[0], p.window = e[1], p.window_left = wl, p.window_right = wr;
            p.scale = fl[0], p.softcap = fl[1], p.max_seqlen_q = mq, p.max_seqlen_k = mk;
            s = fab_attention_forward(ctx, &p);
        }
        check(&z, backward ? "fab_attention_backward" : "fab_attention_forward", s, it);
    }
    teardown(&z, "fab_attention_*");
}

/* The communicator the comm fuzzers call: one rank, the context's transport. */
static fab_comm *single_rank_comm(fab_context *ctx)
{
    fab_comm *comm = NULL;
    if (fab_comm_create(ctx, 1, 0, NULL, NULL, &comm) != FAB_OK)
        fail_msg("fab_comm_create (one rank): %s", fab_last_error());
    return comm;
}

static void destroy_comm(fab_comm *comm)
{
    if (fab_comm_destroy(comm) != FAB_OK) /* a fuzzed call must not have faulted it */
        fail_msg("fab_comm_destroy: %s", fab_last_error());
}

/* The collectives on a single-rank communicator (the same argument checks as any
 * other: check_coll in comm.c), all-reduce, reduce-scatter, all-gather, broadcast
 * and the ZeRO-1 pair, out of place or in place. A rejected call must also leave
 * the communicator usable: a call that failed for its arguments never faults it,
 * so every later call would fail (as BACKEND or TIMEOUT, which check() refuses). */
static void fuzz_comm(void **state)
{
    (void)state;
    fuzz z;
    fab_context *ctx = setup(&z);
    fab_comm *comm = single_rank_comm(ctx);
    static const fab_dtype dts[6] = {FAB_DTYPE_F32, FAB_DTYPE_F16, FAB_DTYPE_BF16,
                                     FAB_DTYPE_F64, FAB_DTYPE_I32, FAB_DTYPE_I64};
    static const char *names[6] = {"fab_allreduce", "fab_reduce_scatter", "fab_allgather", "fab_broadcast",
                                   "fab_zero_reduce_scatter", "fab_zero_allgather"};
    int n = iters_for(ctx, 1500);
    for (int it = 0; it < n; it++) {
        begin(&z, 0xc0a000, it);
        fab_tensor send, recv;
        add_field(&z, "send", &send, 0);
        add_field(&z, "recv", &recv, 1);
        int kind = (int)rnd(0, 5);
        fab_dtype dt = dts[rnd(0, kind >= 4 ? 2 : 5)]; /* ZeRO-1: float gradients and parameters */
        int64_t shape[2] = {rnd(1, 5), rnd(1, 7)};
        int ndim = (int)rnd(1, 2);
        make(&z, 0, dt, ndim, shape + 2 - ndim);
        make(&z, 1, dt, ndim, shape + 2 - ndim);
        if (chance(20)) /* in place: recv is send (with one rank, every kind's slice is all of it) */
            recv.data = send.data;
        int e[2] = {(int)rnd(0, 3), 0}; /* reduce op (sum for ZeRO's flag), root */
        for (int m = (int)rnd(0, 3); m > 0; m--)
            mutate(&z, e, NULL, 2, 0);
        snapshot(&z, it);
        fab_status st;
        switch (kind) {
        case 0: st = fab_allreduce(comm, &send, &recv, (fab_reduce_op)e[0]); break;
        case 1: st = fab_reduce_scatter(comm, &send, &recv, (fab_reduce_op)e[0]); break;
        case 2: st = fab_allgather(comm, &send, &recv); break;
        case 3: st = fab_broadcast(comm, &send, &recv, e[1]); break;
        case 4: st = fab_zero_reduce_scatter(comm, &send, &recv, e[0]); break;
        default: st = fab_zero_allgather(comm, &send, &recv); break;
        }
        if (st == FAB_OK)
            st = fab_comm_synchronize(comm);
        check(&z, names[kind], st, it);
    }
    destroy_comm(comm);
    teardown(&z, "fab_comm collectives");
}

/* Gradient exchange on a single-rank communicator: 1-3 gradients, broken or not,
 * registered; a registration that fails writes nothing. When every one got in, a
 * whole step (begin, ready in a random order, wait) must succeed and, one rank
 * averaging or summing with itself, leave each gradient as it was, bit for bit
 * (with reduce_bf16 too: on one rank f32 gradients travel as they are). */
static void fuzz_grad_sync(void **state)
{
    (void)state;
    fuzz z;
    fab_context *ctx = setup(&z);
    fab_comm *comm = single_rank_comm(ctx);
    static const size_t caps[5] = {0, 1, 8, 100, (size_t)1 << 20};
    int n = iters_for(ctx, 800);
    for (int it = 0; it < n; it++) {
        begin(&z, 0x95c000, it);
        fab_tensor g[3];
        int ng = (int)rnd(1, 3);
        for (int i = 0; i < ng; i++) {
            add_field(&z, "grad", &g[i], 1);
            int64_t shape[2] = {rnd(1, 4), rnd(1, 9)};
            int ndim = (int)rnd(1, 2);
            make(&z, i, float_dtype(1), ndim, shape + 2 - ndim);
        }
        for (int m = (int)rnd(0, 2); m > 0; m--)
            mutate(&z, NULL, NULL, 0, 0);
        fab_grad_sync_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.bucket_cap_bytes = caps[rnd(0, 4)];
        cfg.first_bucket_bytes = caps[rnd(0, 4)];
        cfg.sum = chance(50);
        cfg.reduce_bf16 = chance(30);
        snapshot(&z, it);
        fab_grad_sync *gs = NULL;
        if (fab_grad_sync_create(comm, &cfg, &gs) != FAB_OK)
            fail_msg("fab_grad_sync_create, iteration %d: %s", it, fab_last_error());
        int registered = 0;
        fab_status first_error = FAB_OK;
        for (int i = 0; i < ng; i++) {
            int index = -1;
            fab_status st = fab_grad_sync_register(gs, &g[i], &index);
            const char *why = impossible(&g[i]);
            if (st == FAB_OK && why)
                fail_msg("fab_grad_sync_register, iteration %d: accepted gradient %d with %s", it, i, why);
            if (st == FAB_OK && index != registered)
                fail_msg("fab_grad_sync_register, iteration %d: index %d, want %d", it, index, registered);
            registered += st == FAB_OK;
            if (st != FAB_OK && first_error == FAB_OK)
                first_error = st;
        }
        for (int i = 0; i < ng; i++)
            z.f[i].output = 0; /* registering writes nothing */
        if (first_error != FAB_OK) /* every arena as it was, each failure said why */
            check(&z, "fab_grad_sync_register", first_error, it);
        if (registered == ng) { /* a step must run and give every gradient back unchanged */
            int order[3] = {0, 1, 2};
            for (int i = ng - 1; i > 0; i--) {
                int j = (int)rnd(0, i), t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
            fab_status st = fab_grad_sync_begin(gs, 1);
            for (int i = 0; i < ng && st == FAB_OK; i++)
                st = fab_grad_sync_ready(gs, order[i]);
            if (st == FAB_OK)
                st = fab_grad_sync_wait(gs);
            if (st != FAB_OK)
                fail_msg("iteration %d: a step over %d accepted gradients failed: %s", it, ng, fab_last_error());
            check(&z, "fab_grad_sync_wait", FAB_OK, it); /* one rank: the exchange is the identity */
        }
        fab_grad_sync_destroy(gs);
    }
    destroy_comm(comm);
    teardown(&z, "fab_grad_sync_register");
}

int main(int argc, char **argv)
{
    fab_test_init(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fuzz_gelu),
        cmocka_unit_test(fuzz_matmul),
        cmocka_unit_test(fuzz_bias_grad),
        cmocka_unit_test(fuzz_attention),
        cmocka_unit_test(fuzz_comm),
        cmocka_unit_test(fuzz_grad_sync),
    };
    return fab_test_run(tests);
}
