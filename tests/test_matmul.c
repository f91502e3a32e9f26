/*
 * test_matmul.c: fab_matmul and fab_matmul_bias_grad against a float64 reference,
 * for every dtype pair, both transposes, odd sizes, batched and strided operands
 * (broadcasts included), every epilogue; the backward products and the fused
 * DGELU + bias gradient by a finite-difference gradient check; determinism; and
 * every kind of bad argument.
 *
 * The per-element bound is the GEMM error bound: |out - ref| <= eps * (|alpha|
 * sum_p |a||b| + |beta c| + |bias|) * 1.5 + tiny, with eps per output dtype (f32
 * 2e-5, f16 2e-3, bf16 1e-2; f32 with TF32 from tf32's input rounding and k, see
 * eps_of), so cancellation never makes a correct result fail. TF32's tensor-core
 * path is also checked bit-exactly on inputs whose rounding to tf32 is known.
 */
#define _POSIX_C_SOURCE 200809L /* setenv, dup, fileno: AUTO's log is read back from stderr */
#include "harness.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef FAB_TEST_EMULATED
#include "fab_emu.h"
#endif

#define INVALID FAB_ERR_INVALID_ARGUMENT
#define UNSUPPORTED FAB_ERR_UNSUPPORTED
#define FAB_PI 3.14159265358979323846

static bool on_cuda(void) { return fab_test_backend() == FAB_BACKEND_CUDA; }

/* ------------------------------------------------------------- test matrices */

/* A (possibly batched, strided) matrix: host doubles of the whole storage span
 * (rounded to dtype), and the same on the context's device. */
typedef struct tmat {
    fab_dtype dt;
    int ndim;
    int64_t shape[4], stride[4];
    int64_t storage;
    double *host;
    void *dev;
} tmat;

/* shape[ndim]; rows padded by row_pad elements; batch dims with bit j of
 * zero_mask get stride 0; `fill` 0: poison (NaN) on the device, 1: random. */
static void tmat_make(fab_context *ctx, tmat *t, fab_dtype dt, int ndim, const int64_t *shape, int64_t row_pad,
                      unsigned zero_mask, int fill, double lo, double hi)
{
    memset(t, 0, sizeof *t);
    t->dt = dt;
    t->ndim = ndim;
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t->shape[i] = shape[i];
        if (i == ndim - 1) {
            t->stride[i] = 1;
            s = shape[i] + row_pad;
        } else if (i == ndim - 2) {
            t->stride[i] = s;
            s *= shape[i];
        } else if (zero_mask >> i & 1) {
            t->stride[i] = 0;
        } else {
            t->stride[i] = s;
            s *= shape[i];
        }
    }
    t->storage = 1;
    for (int i = 0; i < ndim; i++)
        t->storage += (shape[i] > 0 ? shape[i] - 1 : 0) * t->stride[i];
    t->storage += row_pad; /* room for the last row's padding: it must stay untouched */
    t->host = malloc(sizeof(double) * (size_t)t->storage);
    assert_non_null(t->host);
    if (fill) {
        fab_test_fill_uniform(t->host, t->storage, lo, hi);
        t->dev = fab_test_upload(ctx, dt, t->host, t->storage, t->host);
    } else {
        for (int64_t i = 0; i < t->storage; i++)
            t->host[i] = NAN;
        t->dev = fab_test_alloc_poisoned(ctx, dt, t->storage);
    }
}

static fab_tensor tmat_tensor(const tmat *t)
{
    fab_tensor x;
    memset(&x, 0, sizeof x);
    x.data = t->dev;
    x.dtype = t->dt;
    x.ndim = t->ndim;
    for (int i = 0; i < t->ndim; i++) {
        x.shape[i] = t->shape[i];
        x.stride[i] = t->stride[i];
    }
    return x;
}

static void tmat_free(fab_context *ctx, tmat *t)
{
    if (t->dev)
        fab_test_free(ctx, t->dev);
    free(t->host);
    memset(t, 0, sizeof *t);
}

/* Offset of batch index bidx[0..nb) (C's batch dims) in t, broadcasting. */
static int64_t tmat_batch_offset(const tmat *t, int nb, const int64_t *bidx)
{
    int tb = t->ndim - 2, off = 0;
    for (int j = 0; j < nb; j++) {
        int tj = j - (nb - tb);
        if (tj < 0 || t->shape[tj] == 1)
            continue;
        off += (int)(bidx[j] * t->stride[tj]);
    }
    return off;
}

/* ---------------------------------------------------------------- reference */

static double act_ref(int act, double x)
{
    switch (act) {
    case FAB_MATMUL_ACT_RELU: return x > 0 ? x : 0;
    case FAB_MATMUL_ACT_GELU_TANH: return 0.5 * x * (1 + tanh(sqrt(2 / FAB_PI) * (x + 0.044715 * x * x * x)));
    case FAB_MATMUL_ACT_GELU_ERF: return 0.5 * x * (1 + erf(x / sqrt(2)));
    default: return x;
    }
}

static double act_grad_ref(int act, double x)
{
    switch (act) {
    case FAB_MATMUL_ACT_RELU: return x > 0 ? 1 : 0;
    case FAB_MATMUL_ACT_GELU_TANH: {
        double k = sqrt(2 / FAB_PI), t = tanh(k * (x + 0.044715 * x * x * x));
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x);
    }
    case FAB_MATMUL_ACT_GELU_ERF: return 0.5 * (1 + erf(x / sqrt(2))) + x * exp(-0.5 * x * x) / sqrt(2 * FAB_PI);
    default: return 1;
    }
}

typedef struct mm_case {
    fab_dtype in, out;
    int64_t m, n, k;
    int ta, tb;
    int nb;                /* batch dims of C: 0, 1 or 2 */
    int64_t bshape[2];     /* C's batch shape */
    int a_nb, b_nb;        /* batch dims of A and B (<= nb; fewer broadcast) */
    int64_t a_bshape[2], b_bshape[2];
    unsigned a_zero, b_zero; /* stride-0 batch dims (bit j of A's/B's own dims) */
    int64_t pad;           /* row padding of every matrix */
    float alpha, beta;
    int bias;              /* 0 none, 1 C's dtype, 2 f32 */
    int act;
    int pre;               /* forward: store pre_act */
    int64_t pre_pad;       /* pre_act's rows padded this much more than C's (other strides) */
    int bwd;               /* activation_backward */
    int dbias;             /* 0 none, 1 from C, 2 from A */
    int algo;
    int tf32;
    int align8;            /* pad each matrix's rows to a multiple of 8 elements (tensor-core path) */
    int align4;            /* ... of 4 elements (16 bytes of f32: the TF32 tensor-core path) */
} mm_case;

static int64_t row_pad(const mm_case *cs, int64_t cols)
{
    if (cs->align8)
        return (8 - cols % 8) % 8;
    return cs->align4 ? (4 - cols % 4) % 4 : cs->pad;
}

/* TF32 (f32 inputs rounded to tf32, 10 mantissa bits, to nearest): each input is
 * off by a relative 2^-11 at most, so each product by (1 + 2^-11)^2 - 1 =
 * 2^-10 + 2^-22; the f32 sum of k products, one rounding per addition (per mma of
 * 8 products on the tensor cores, whose alignment may truncate: 2^-23 each), adds
 * at most k·2^-23, relative to sum |a b|, and the f32 epilogue a few roundings
 * (the + 8). So eps(k) = 2^-10 + 2^-22 + (k + 8)·2^-23, about 1e-3 at k = 0 and
 * 1.1e-3 at k = 1000 (check_bound multiplies by 1.5). */
static double eps_of(fab_dtype out, int tf32, int64_t k)
{
    if (out == FAB_DTYPE_BF16)
        return 1e-2;
    if (out == FAB_DTYPE_F16)
        return 2e-3;
    return tf32 ? ldexp(1, -10) + ldexp(1, -22) + (double)(k + 8) * ldexp(1, -23) : 2e-5;
}

static void check_bound(const char *what, const double *out, const double *ref, const double *bound, int64_t n,
                        double eps)
{
    double err2 = 0, ref2 = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(ref[i])) {
            if (!isnan(out[i]))
                fail_msg("%s: element %lld was written (%g) but must stay untouched", what, (long long)i, out[i]);
            continue;
        }
        double d = fabs(out[i] - ref[i]);
        if (!(d <= eps * bound[i] * 1.5 + 1e-30))
            fail_msg("%s: element %lld: got %.9g, want %.9g (|diff| %.3g > %.3g)", what, (long long)i, out[i],
                     ref[i], d, eps * bound[i] * 1.5);
        err2 += d * d;
        ref2 += ref[i] * ref[i];
    }
    (void)err2;
    (void)ref2;
}

/* With g_capture set, run_case keeps what fab_matmul writes to stderr (AUTO's
 * FAB_MATMUL_AUTOTUNE_LOG lines) in g_log. Only the call itself is captured, so a
 * failing check still reaches the real stderr. */
static bool g_capture;
static char g_log[8192];

static void capture_begin(FILE **tmp, int *saved)
{
    fflush(stderr);
    *tmp = tmpfile();
    assert_non_null(*tmp);
    *saved = dup(2);
    assert_true(*saved >= 0);
    assert_true(dup2(fileno(*tmp), 2) >= 0);
}

static void capture_end(FILE *tmp, int saved)
{
    fflush(stderr);
    int ok = dup2(saved, 2) >= 0;
    close(saved);
    assert_true(ok);
    rewind(tmp);
    size_t len = fread(g_log, 1, sizeof g_log - 1, tmp);
    g_log[len] = 0;
    fclose(tmp);
}

static void run_case(fab_context *ctx, const mm_case *cs)
{
    char what[256];
    snprintf(what, sizeof what, "matmul %s->%s m=%lld n=%lld k=%lld ta=%d tb=%d nb=%d pad=%lld a=%g b=%g bias=%d act=%d pre=%d bwd=%d dbias=%d algo=%d al8=%d al4=%d tf32=%d",
             fab_dtype_name(cs->in), fab_dtype_name(cs->out), (long long)cs->m, (long long)cs->n, (long long)cs->k,
             cs->ta, cs->tb, cs->nb, (long long)cs->pad, cs->alpha, cs->beta, cs->bias, cs->act, cs->pre, cs->bwd,
             cs->dbias, cs->algo, cs->align8, cs->align4, cs->tf32);
    fab_test_reseed((uint64_t)(cs->m * 1000003 + cs->n * 1009 + cs->k * 7 + cs->in * 3 + cs->out + cs->ta * 11 +
                               cs->tb * 13 + cs->act * 17 + cs->bwd * 19 + cs->bias * 23));
    int64_t sh[4];
    tmat A, B, C, P, bias, dbias;
    memset(&P, 0, sizeof P);
    memset(&bias, 0, sizeof bias);
    memset(&dbias, 0, sizeof dbias);
    /* A */
    for (int j = 0; j < cs->a_nb; j++)
        sh[j] = cs->a_bshape[j];
    sh[cs->a_nb] = cs->ta ? cs->k : cs->m;
    sh[cs->a_nb + 1] = cs->ta ? cs->m : cs->k;
    tmat_make(ctx, &A, cs->in, cs->a_nb + 2, sh, row_pad(cs, sh[cs->a_nb + 1]), cs->a_zero, 1, -1, 1);
    for (int j = 0; j < cs->b_nb; j++)
        sh[j] = cs->b_bshape[j];
    sh[cs->b_nb] = cs->tb ? cs->n : cs->k;
    sh[cs->b_nb + 1] = cs->tb ? cs->k : cs->n;
    tmat_make(ctx, &B, cs->in, cs->b_nb + 2, sh, row_pad(cs, sh[cs->b_nb + 1]), cs->b_zero, 1, -1, 1);
    for (int j = 0; j < cs->nb; j++)
        sh[j] = cs->bshape[j];
    sh[cs->nb] = cs->m;
    sh[cs->nb + 1] = cs->n;
    tmat_make(ctx, &C, cs->out, cs->nb + 2, sh, row_pad(cs, cs->n), 0, cs->beta != 0, -1, 1);
    if (cs->pre || cs->bwd)
        tmat_make(ctx, &P, cs->out, cs->nb + 2, sh, row_pad(cs, cs->n) + cs->pre_pad, 0, cs->bwd, -2, 2);
    if (cs->bias) {
        int64_t bn = cs->n;
        tmat_make(ctx, &bias, cs->bias == 2 ? FAB_DTYPE_F32 : cs->out, 1, &bn, 0, 0, 1, -1, 1);
    }
    int64_t dlen = cs->dbias == 2 ? cs->m : cs->n;
    if (cs->dbias) {
        fab_dtype ddt = (cs->m & 1) ? FAB_DTYPE_F32 : cs->out;
        tmat_make(ctx, &dbias, ddt, 1, &dlen, 0, 0, 0, 0, 0);
    }

    /* reference */
    double *refc = malloc(sizeof(double) * (size_t)C.storage), *bc = malloc(sizeof(double) * (size_t)C.storage);
    double *refp = P.storage ? malloc(sizeof(double) * (size_t)P.storage) : NULL;
    double *bp = P.storage ? calloc((size_t)P.storage, sizeof(double)) : NULL; /* pre_act's bounds */
    double *refd = calloc((size_t)(dlen > 0 ? dlen : 1), sizeof(double)), *bd = calloc((size_t)(dlen > 0 ? dlen : 1), sizeof(double));
    assert_true(refc && bc && refd && bd && (!P.storage || (refp && bp)));
    for (int64_t i = 0; i < C.storage; i++) {
        refc[i] = C.host[i]; /* untouched elements keep their value (NaN poison or C0) */
        bc[i] = 0;
    }
    if (refp)
        for (int64_t i = 0; i < P.storage; i++)
            refp[i] = P.host[i];
    double alpha = cs->alpha == 0 ? 1 : cs->alpha;
    int64_t batch = 1;
    for (int j = 0; j < cs->nb; j++)
        batch *= cs->bshape[j];
    for (int64_t bt = 0; bt < batch; bt++) {
        int64_t bidx[2] = {0, 0}, r = bt;
        for (int j = cs->nb - 1; j >= 0; j--) {
            bidx[j] = r % cs->bshape[j];
            r /= cs->bshape[j];
        }
        int64_t oa = tmat_batch_offset(&A, cs->nb, bidx), ob = tmat_batch_offset(&B, cs->nb, bidx);
        int64_t oc = tmat_batch_offset(&C, cs->nb, bidx), op = P.dev ? tmat_batch_offset(&P, cs->nb, bidx) : 0;
        int64_t lda = A.stride[A.ndim - 2], ldb = B.stride[B.ndim - 2], ldc = C.stride[C.ndim - 2];
        int64_t ldp = P.dev ? P.stride[P.ndim - 2] : 0;
        for (int64_t i = 0; i < cs->m; i++)
            for (int64_t j = 0; j < cs->n; j++) {
                double s = 0, sa = 0;
                for (int64_t p = 0; p < cs->k; p++) {
                    double x = A.host[oa + (cs->ta ? p * lda + i : i * lda + p)];
                    double y = B.host[ob + (cs->tb ? j * ldb + p : p * ldb + j)];
                    s += x * y;
                    sa += fabs(x * y);
                }
                int64_t ci = oc + i * ldc + j, pi = op + i * ldp + j;
                double v = alpha * s, bound = fabs(alpha) * sa;
                if (cs->beta != 0) {
                    v += cs->beta * C.host[ci];
                    bound += fabs(cs->beta * C.host[ci]);
                }
                if (cs->bwd) {
                    double g = act_grad_ref(cs->act, P.host[pi]);
                    v *= g;
                    bound *= fabs(g) > 1 ? fabs(g) : 1;
                } else {
                    if (cs->bias) {
                        v += bias.host[j];
                        bound += fabs(bias.host[j]);
                    }
                    if (cs->pre)
                        refp[pi] = v;
                    v = act_ref(cs->act, v);
                    bound *= 1.2;
                }
                refc[ci] = v;
                bc[ci] = bound + fabs(v);
                if (cs->pre && !cs->bwd)
                    bp[pi] = bc[ci];
                if (cs->dbias == 1) {
                    refd[j] += v;
                    bd[j] += bc[ci];
                }
            }
        if (cs->dbias == 2)
            for (int64_t i = 0; i < cs->m; i++)
                for (int64_t p = 0; p < cs->k; p++) {
                    double x = A.host[oa + (cs->ta ? p * lda + i : i * lda + p)];
                    refd[i] += x;
                    bd[i] += fabs(x);
                }
    }

    fab_matmul_params p;
    memset(&p, 0, sizeof p);
    p.a = tmat_tensor(&A);
    p.b = tmat_tensor(&B);
    p.c = tmat_tensor(&C);
    p.trans_a = cs->ta ? FAB_OP_T : FAB_OP_N;
    p.trans_b = cs->tb ? FAB_OP_T : FAB_OP_N;
    p.alpha = cs->alpha;
    p.beta = cs->beta;
    if (cs->bias)
        p.bias = tmat_tensor(&bias);
    p.activation = (fab_matmul_activation)cs->act;
    if (P.dev)
        p.pre_act = tmat_tensor(&P);
    p.activation_backward = cs->bwd;
    if (cs->dbias) {
        p.dbias = tmat_tensor(&dbias);
        p.dbias_from = cs->dbias == 2 ? FAB_MATMUL_DBIAS_FROM_A : FAB_MATMUL_DBIAS_FROM_C;
    }
    p.algo = (fab_matmul_algo)cs->algo;
    p.precision = cs->tf32 ? FAB_MATMUL_TF32 : FAB_MATMUL_EXACT;
    FILE *cap = NULL;
    int saved_fd = -1;
    if (g_capture)
        capture_begin(&cap, &saved_fd);
    fab_status s = fab_matmul(ctx, &p);
    if (g_capture)
        capture_end(cap, saved_fd);
    if (s != FAB_OK)
        fail_msg("%s: fab_matmul: %s: %s", what, fab_status_name(s), fab_last_error());

    double *out = malloc(sizeof(double) * (size_t)C.storage);
    assert_non_null(out);
    fab_test_download(ctx, cs->out, C.dev, C.storage, out);
    double eps = eps_of(cs->out, cs->tf32, cs->k);
    for (int64_t i = 0; i < C.storage; i++)
        if (!isnan(refc[i]) && bc[i] == 0) /* elements outside the view: must be unchanged */
            bc[i] = fabs(refc[i]) * 1e-30;
    check_bound(what, out, refc, bc, C.storage, eps);
    if (cs->pre) {
        double *outp = malloc(sizeof(double) * (size_t)P.storage);
        assert_non_null(outp);
        fab_test_download(ctx, cs->out, P.dev, P.storage, outp);
        char w2[300];
        snprintf(w2, sizeof w2, "%s: pre_act", what);
        for (int64_t i = 0; i < P.storage; i++)
            if (!isnan(refp[i]) && bp[i] == 0) /* elements outside the view: must be unchanged */
                bp[i] = fabs(refp[i]) * 1e-30;
        check_bound(w2, outp, refp, bp, P.storage, eps);
        free(outp);
    }
    if (cs->dbias) {
        double *outd = malloc(sizeof(double) * (size_t)dlen);
        assert_non_null(outd);
        fab_test_download(ctx, dbias.dt, dbias.dev, dlen, outd);
        char w2[300];
        snprintf(w2, sizeof w2, "%s: dbias", what);
        double e = dbias.dt == FAB_DTYPE_F32 ? eps : eps_of(dbias.dt, 0, 0);
        if (cs->dbias == 1 && e < eps)
            e = eps;
        for (int64_t i = 0; i < dlen; i++)
            bd[i] += 1e-30;
        check_bound(w2, outd, refd, bd, dlen, e > 2e-5 ? e : 2e-5);
        free(outd);
    }
    free(out);
    free(refc);
    free(bc);
    free(refp);
    free(bp);
    free(refd);
    free(bd);
    tmat_free(ctx, &A);
    tmat_free(ctx, &B);
    tmat_free(ctx, &C);
    tmat_free(ctx, &P);
    tmat_free(ctx, &bias);
    tmat_free(ctx, &dbias);
}

static mm_case plain(fab_dtype in, fab_dtype out, int64_t m, int64_t n, int64_t k, int ta, int tb)
{
    mm_case c;
    memset(&c, 0, sizeof c);
    c.in = in;
    c.out = out;
    c.m = m;
    c.n = n;
    c.k = k;
    c.ta = ta;
    c.tb = tb;
    return c;
}

static const fab_dtype pairs[][2] = {
    {FAB_DTYPE_F32, FAB_DTYPE_F32},   {FAB_DTYPE_F16, FAB_DTYPE_F16}, {FAB_DTYPE_F16, FAB_DTYPE_F32},
    {FAB_DTYPE_BF16, FAB_DTYPE_BF16}, {FAB_DTYPE_BF16, FAB_DTYPE_F32},
};
#define NPAIRS 5

/* Every dtype pair, both transposes, odd sizes (1, 7, 127, 129, 1000 in one
 * dimension at a time), more than one k slice, fabriek's kernel and the oracle. */
static void test_values(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    static const int64_t cpu_sizes[][3] = {{1, 1, 1},      {7, 7, 7},       {127, 129, 7},  {129, 127, 300},
                                           {1000, 7, 129}, {7, 1000, 127},  {33, 65, 1000}, {300, 260, 520},
                                           {1, 129, 127},  {127, 1, 129}};
    static const int64_t emu_sizes[][3] = {{1, 1, 1}, {7, 7, 7}, {127, 129, 7}, {65, 33, 129}, {16, 24, 1000}};
    const int64_t(*sizes)[3] = on_cuda() ? emu_sizes : cpu_sizes;
    int nsizes = on_cuda() ? 5 : 10;
    for (int pi = 0; pi < NPAIRS; pi++)
        for (int si = 0; si < nsizes; si++) {
            int t = (si + pi) & 3;
            mm_case c = plain(pairs[pi][0], pairs[pi][1], sizes[si][0], sizes[si][1], sizes[si][2], t & 1, t >> 1);
            run_case(ctx, &c);
            if (si < 4) { /* the other transposes on the smaller sizes */
                c.ta = !c.ta;
                c.tb = !c.tb;
                run_case(ctx, &c);
            }
        }
    /* the oracle itself, and forced NATIVE */
    mm_case c = plain(FAB_DTYPE_BF16, FAB_DTYPE_F32, 65, 47, 129, 1, 0);
    c.algo = FAB_MATMUL_ALGO_REFERENCE;
    run_case(ctx, &c);
    c.algo = FAB_MATMUL_ALGO_NATIVE;
    run_case(ctx, &c);
    /* k = 0: C = beta·C + bias */
    c = plain(FAB_DTYPE_F32, FAB_DTYPE_F32, 5, 9, 0, 0, 0);
    c.beta = 0.5f;
    c.bias = 1;
    run_case(ctx, &c);
    fab_context_destroy(ctx);
    if (!on_cuda()) {
        /* a workspace too small to keep: the CPU GEMM packs into a buffer of its
         * own on every call instead of the context's scratch */
        fab_context_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.workspace_bytes = 64;
        ctx = fab_test_context_with(&cfg);
        c = plain(FAB_DTYPE_BF16, FAB_DTYPE_BF16, 129, 127, 300, 1, 1);
        run_case(ctx, &c);
        c = plain(FAB_DTYPE_F32, FAB_DTYPE_F32, 300, 260, 520, 0, 0);
        run_case(ctx, &c);
        fab_context_destroy(ctx);
    }
}

/* Shared-memory bank conflicts of the tensor-core kernel, as the emulator's bank
 * model counts its cp.async, ldmatrix and plain shared accesses (docs/EMULATOR.md): a test
 * takes the count before its cases and requires that they added none (and that
 * the model saw the kernel's accesses at all). Elsewhere a no-op. */
typedef struct bank_mark {
    unsigned long long requests, conflicts;
} bank_mark;

static bank_mark banks_begin(void)
{
    bank_mark m = {0, 0};
#ifdef FAB_TEST_EMULATED
    struct fab_emu_stats s;
    fab_emu_get_stats(&s);
    m.requests = s.smem_requests, m.conflicts = s.smem_bank_conflicts;
#endif
    return m;
}

static void banks_expect_none(bank_mark m, const char *what)
{
#ifdef FAB_TEST_EMULATED
    struct fab_emu_stats s;
    fab_emu_get_stats(&s);
    print_message("%s: %llu shared-memory instructions, %llu bank-conflict wavefronts\n", what,
                  s.smem_requests - m.requests, s.smem_bank_conflicts - m.conflicts);
    assert_true(s.smem_requests > m.requests);
    if (s.smem_bank_conflicts != m.conflicts)
        fail_msg("%s: %llu bank-conflict wavefronts; the last: %s", what, s.smem_bank_conflicts - m.conflicts,
                 fab_emu_bank_conflict_example());
#else
    (void)m, (void)what;
#endif
}

/* bf16/f16 with every row stride a multiple of 8 elements: on CUDA this is the
 * tensor-core kernel (cp.async needs whole 16-byte chunks), so its predicated
 * edges in m, n and k, both transposes, the tile configurations the rule picks
 * (64x64, and 128x128 for the 33-batch grid on an emulated H100), batches and
 * epilogues are covered. On an (emulated) H100 the unbatched calls run the Hopper
 * kernel (matmul_sm90.cuh); run_tensor_core_shapes(0) turns it off, for the sm80
 * kernel's share. */
static void run_tensor_core_shapes(int sm90)
{
    if (!sm90)
        setenv("FAB_MATMUL_SM90", "0", 1);
    fab_context *ctx = fab_test_context();
    const bank_mark banks = banks_begin();
    static const int64_t sizes[][3] = {{1, 1, 1},     {7, 7, 7},      {16, 8, 32},   {127, 129, 7},
                                       {129, 127, 65}, {33, 1000, 40}, {1000, 17, 24}, {64, 72, 1000},
                                       {256, 256, 96}};
    const int ns = on_cuda() ? 9 : 5;
    for (int si = 0; si < ns; si++)
        for (int t = 0; t < 4; t++) {
            if (si >= 5 && t != (si & 3))
                continue;
            fab_dtype in = (si + t) & 1 ? FAB_DTYPE_F16 : FAB_DTYPE_BF16;
            mm_case c = plain(in, t & 2 ? FAB_DTYPE_F32 : in, sizes[si][0], sizes[si][1], sizes[si][2], t & 1, t >> 1);
            c.align8 = 1;
            c.algo = FAB_MATMUL_ALGO_NATIVE;
            if (si == 4) {
                c.act = t == 0 ? FAB_MATMUL_ACT_GELU_ERF : FAB_MATMUL_ACT_GELU_TANH;
                c.bias = 1 + (t & 1);
                c.pre = t != 3;
                c.beta = t == 2 ? 0.5f : 0.0f;
                c.dbias = t == 1 ? 1 : 0;
            }
            run_case(ctx, &c);
        }
    mm_case b = plain(FAB_DTYPE_BF16, FAB_DTYPE_BF16, 67, 45, 129, 0, 1);
    b.align8 = 1;
    b.act = FAB_MATMUL_ACT_GELU_TANH;
    b.bwd = 1;
    b.dbias = 1;
    run_case(ctx, &b);
    /* 33 x 4 blocks of 128x128 >= the SM count of an emulated H100 (132): the
     * large tile configuration, with edges in m, n and k */
    for (int t = 0; t < 4; t++) {
        fab_dtype in = t & 1 ? FAB_DTYPE_F16 : FAB_DTYPE_BF16;
        mm_case big = plain(in, t & 2 ? FAB_DTYPE_F32 : in, 129, 131, 40 + t, t & 1, t >> 1);
        big.align8 = 1;
        big.nb = 1;
        big.bshape[0] = 33;
        big.a_nb = big.b_nb = 1;
        big.a_bshape[0] = big.b_bshape[0] = 33;
        big.act = t == 3 ? FAB_MATMUL_ACT_RELU : 0;
        big.bias = t == 3;
        run_case(ctx, &big);
    }
    mm_case bt = plain(FAB_DTYPE_F16, FAB_DTYPE_F32, 33, 40, 70, 1, 0);
    bt.align8 = 1;
    bt.nb = 1;
    bt.bshape[0] = 3;
    bt.a_nb = 1;
    bt.a_bshape[0] = 3;
    run_case(ctx, &bt);
    if (on_cuda())
        banks_expect_none(banks, "tensor-core shapes");
    fab_context_destroy(ctx);
    unsetenv("FAB_MATMUL_SM90");
}

static void test_tensor_core_shapes(void **state)
{
    (void)state;
    run_tensor_core_shapes(1);
    if (on_cuda())
        run_tensor_core_shapes(0);
}

/* The Hopper kernel (matmul_sm90.cuh: TMA, mbarriers, wgmma) on an emulated H100:
 * that it is the one that runs (wgmma counted, 384-thread blocks of 128x128 by the
 * rule for these grids, or 128x256 forced), every transpose with edges in m, n and
 * k, k running through the stage ring several times, more m-tiles than one group
 * of the block order, and an epilogue. On a real GPU the same calls run (whatever
 * kernel the device gets). */
/* One case on the Hopper kernel; under the emulator, that it ran there: one
 * 384-thread block per tile of 128 x bn of the `batches` matrices, at most one per
 * SM (the persistent grid), and 8 consumer warps x 4 k steps of wgmma per 64-wide k
 * tile and tile of C. */
static void run_sm90_case(fab_context *ctx, const mm_case *c, int64_t batches, int64_t bn)
{
#ifdef FAB_TEST_EMULATED
    const int racecheck = fab_emu_set_racecheck(0); /* one run per launch: counts as they are */
    struct fab_emu_stats before, after;
    fab_emu_get_stats(&before);
#endif
    run_case(ctx, c);
#ifdef FAB_TEST_EMULATED
    fab_emu_get_stats(&after);
    fab_emu_set_racecheck(racecheck);
    const char *schedule = getenv("FAB_MATMUL_SM90_SCHEDULE");
    if (schedule && !strcmp(schedule, "pingpong"))
        bn = 128; /* its only tile */
    const int64_t tiles = batches * ((c->m + 127) / 128) * ((c->n + bn - 1) / bn), ktiles = (c->k + 63) / 64;
    const int64_t sms = fab_emu_set_sm_count(0); /* reads it */
    const char *grid = getenv("FAB_MATMUL_SM90_GRID"); /* "tiles": a block per tile */
    const int64_t blocks = (grid && !strcmp(grid, "tiles")) || tiles < sms ? tiles : sms;
    assert_int_equal(after.blocks - before.blocks, blocks);
    assert_int_equal(after.threads - before.threads, blocks * 384);
    assert_int_equal(after.wgmma - before.wgmma, tiles * 8 * 4 * ktiles);
#else
    (void)batches, (void)bn;
#endif
}

static void test_sm90_kernel(void **state)
{
    (void)state;
    if (!on_cuda()) {
        print_message("SKIP: the Hopper kernel is CUDA's\n");
        skip();
    }
    fab_context *ctx = fab_test_context();
    for (int v = 0; v < 8; v++) {
        const int t = v & 3, bn = v < 4 ? 128 : 256;
        if (bn == 256)
            setenv("FAB_MATMUL_SM90_TILE", "128x256", 1);
        fab_dtype in = (v ^ (v >> 2)) & 1 ? FAB_DTYPE_F16 : FAB_DTYPE_BF16;
        mm_case c = plain(in, t & 2 ? FAB_DTYPE_F32 : in, 1100 + v, 300 - 7 * v, 600 + 13 * v, t & 1, t >> 1);
        c.align8 = 1;
        c.algo = FAB_MATMUL_ALGO_NATIVE;
        if (t == 2 || v == 5) {
            c.act = FAB_MATMUL_ACT_GELU_TANH;
            c.bias = 1;
            c.pre = 1;
            c.beta = 0.5f;
        }
        run_sm90_case(ctx, &c, 1, bn);
        unsetenv("FAB_MATMUL_SM90_TILE");
    }
    /* batches: two batch dimensions (6 matrices), both transposes of each operand */
    for (int t = 0; t < 4; t++) {
        mm_case c = plain(t & 1 ? FAB_DTYPE_F16 : FAB_DTYPE_BF16, FAB_DTYPE_F32, 200 - t, 136 + 8 * t, 72, t & 1, t >> 1);
        c.align8 = 1;
        c.algo = FAB_MATMUL_ALGO_NATIVE;
        c.nb = c.a_nb = c.b_nb = 2;
        c.bshape[0] = c.a_bshape[0] = c.b_bshape[0] = 2;
        c.bshape[1] = c.a_bshape[1] = c.b_bshape[1] = 3;
        c.bias = t == 1;
        run_sm90_case(ctx, &c, 6, 128);
    }
#ifndef FAB_TEST_EMULATED
    /* persistent: 16 x 18 = 288 tiles of 128 x 128, more than an H100's SMs, so that
     * blocks take several each (the emulator's share is test_sm90_persistent) */
    mm_case big = plain(FAB_DTYPE_BF16, FAB_DTYPE_BF16, 2048, 2304, 200, 0, 1);
    big.align8 = 1;
    big.algo = FAB_MATMUL_ALGO_NATIVE;
    big.bias = 1;
    setenv("FAB_MATMUL_SM90_TILE", "128x128", 1);
    run_sm90_case(ctx, &big, 1, 128);
    unsetenv("FAB_MATMUL_SM90_TILE");
#endif
    fab_context_destroy(ctx);
}

/* The persistent grid on an emulated H100 of 4 SMs: 4 blocks take every tile in
 * turn (9, 6 or 12 tiles: unevenly too), the ring's stages and phases running on
 * from tile to tile through 4 or 3 stages with 1, 4, 5 or 9 k slices a tile, both
 * tile widths, every transpose, batches whose blocks cross from one matrix to the
 * next, an epilogue, once with a block per tile (FAB_MATMUL_SM90_GRID=tiles); some
 * under the race check too (two schedules, the same bits); then the tile-width
 * rule counting every matrix of a batch. */
#ifdef FAB_TEST_EMULATED
static int sm90_persistent_sms = 0; /* the SM count to restore */
#endif
#ifdef FAB_TEST_EMULATED
/* The persistent grid's cases on an emulated H100 of 4 SMs (the count restored
 * after them; restore_sm90_settings restores it when a case fails). */
static void run_sm90_persistent_cases(void)
{
    sm90_persistent_sms = fab_emu_set_sm_count(4);
    fab_context *ctx = fab_test_context();
    static const int ks[6] = {300, 16, 520, 64, 200, 257};
    for (int v = 0; v < 6; v++) {
        const int t = v & 3, bn = v % 2 ? 256 : 128;
        setenv("FAB_MATMUL_SM90_TILE", bn == 256 ? "128x256" : "128x128", 1);
        const fab_dtype in = v & 1 ? FAB_DTYPE_F16 : FAB_DTYPE_BF16;
        mm_case c = plain(in, t & 2 ? FAB_DTYPE_F32 : in, 300 + 11 * v, 330 - 9 * v, ks[v], t & 1, t >> 1);
        c.align8 = 1;
        c.algo = FAB_MATMUL_ALGO_NATIVE;
        int64_t batches = 1;
        if (v >= 4) { /* 3 matrices of 2 x 2 tiles of 128 x 128 (12 tiles), or of 2 x 1 of 128 x 256 */
            c.m = 200, c.n = 136, c.nb = c.a_nb = c.b_nb = 1;
            c.bshape[0] = c.a_bshape[0] = c.b_bshape[0] = batches = 3;
            c.ta = c.tb = v == 5;
        }
        if (v == 2) {
            c.act = FAB_MATMUL_ACT_GELU_TANH;
            c.bias = 1;
            c.pre = 1;
            c.beta = 0.5f;
        }
        run_sm90_case(ctx, &c, batches, bn);
        if (v == 4) { /* the same kernel with a block per tile (the benchmark's A/B) */
            setenv("FAB_MATMUL_SM90_GRID", "tiles", 1);
            run_sm90_case(ctx, &c, batches, bn);
            unsetenv("FAB_MATMUL_SM90_GRID");
        }
        if (v >= 3) {
            const int racecheck = fab_emu_set_racecheck(1);
            const unsigned long reports = fab_emu_race_reports();
            run_case(ctx, &c);
            assert_int_equal(fab_emu_race_reports(), reports);
            fab_emu_set_racecheck(racecheck);
        }
    }
    /* the tile rule, unforced: 2 matrices of 1 x 2 tiles of 128 x 256 fill the 4 SMs
     * (one matrix's would not), so 128 x 256 */
    unsetenv("FAB_MATMUL_SM90_TILE");
    mm_case c = plain(FAB_DTYPE_BF16, FAB_DTYPE_BF16, 100, 400, 72, 0, 1);
    c.align8 = 1;
    c.algo = FAB_MATMUL_ALGO_NATIVE;
    c.nb = c.a_nb = c.b_nb = 1;
    c.bshape[0] = c.a_bshape[0] = c.b_bshape[0] = 2;
    run_sm90_case(ctx, &c, 2, 256);
    fab_context_destroy(ctx);
    fab_emu_set_sm_count(sm90_persistent_sms);
    sm90_persistent_sms = 0;
}
#endif

static void test_sm90_persistent(void **state)
{
    (void)state;
#ifdef FAB_TEST_EMULATED
    if (!on_cuda()) {
        print_message("SKIP: the Hopper kernel is CUDA's\n");
        skip();
    }
    run_sm90_persistent_cases();
#else
    print_message("SKIP: gives an emulated GPU 4 SMs (test_sm90_kernel's large case is the GPU's)\n");
    skip();
#endif
}

/* The ping-pong schedule (FAB_MATMUL_SM90_SCHEDULE=pingpong): each consumer
 * warpgroup takes every other tile of its block whole and the two take turns for
 * their main loops. test_sm90_persistent's cases on 4 emulated SMs (blocks of 3
 * tiles give one warpgroup two, blocks of 1 leave the other none; 1 to 9 k slices
 * against 4 stages, so a warpgroup's first slices share stages with the other's
 * last), three under the race check; then test_sm90_kernel's, whose k slices run
 * through the ring many times. On a GPU, test_sm90_kernel's cases under the
 * schedule. */
static void test_sm90_pingpong(void **state)
{
    (void)state;
    if (!on_cuda()) {
        print_message("SKIP: the Hopper kernel is CUDA's\n");
        skip();
    }
    setenv("FAB_MATMUL_SM90_SCHEDULE", "pingpong", 1);
#ifdef FAB_TEST_EMULATED
    run_sm90_persistent_cases();
#endif
    test_sm90_kernel(state);
}

/* test_sm90_persistent's settings back, also when it failed midway */
static int restore_sm90_settings(void **state)
{
    (void)state;
    unsetenv("FAB_MATMUL_SM90_TILE");
    unsetenv("FAB_MATMUL_SM90_GRID");
    unsetenv("FAB_MATMUL_SM90_SCHEDULE");
#ifdef FAB_TEST_EMULATED
    if (sm90_persistent_sms > 0)
        fab_emu_set_sm_count(sm90_persistent_sms);
#endif
    return 0;
}

/* Each tile configuration of the tensor-core kernel, forced with
 * FAB_MATMUL_SM80_TILE: both transposes of each operand, bf16 and f16, C in the
 * input type or f32, edges in m, n and k, an epilogue, more m-tiles than one group
 * of the block order holds, and TF32. Under the
 * emulator, the rule as well: the grid sizes (blocks and threads) it launches for
 * 33 and 66 batches of 129 x 131, against the 132 SMs of an emulated H100. */
static void test_tensor_core_tiles(void **state)
{
    (void)state;
    if (!on_cuda()) {
        print_message("SKIP: the tile configurations are the CUDA tensor-core kernel's\n");
        skip();
    }
    setenv("FAB_MATMUL_SM90", "0", 1); /* the sm80 kernel's tiles, also where the Hopper kernel would apply */
    fab_context *ctx = fab_test_context();
    const bank_mark banks = banks_begin();
    static const char *const tiles[] = {"128x256", "128x128", "128x128w8", "64x64"};
    for (int ti = 0; ti < 4; ti++) {
        setenv("FAB_MATMUL_SM80_TILE", tiles[ti], 1);
        for (int t = 0; t < 4; t++) {
            fab_dtype in = (ti + t) & 1 ? FAB_DTYPE_F16 : FAB_DTYPE_BF16;
            mm_case c = plain(in, t & 2 ? FAB_DTYPE_F32 : in, 130 + t, 260 - 3 * t, 40 + 9 * t, t & 1, t >> 1);
            c.align8 = 1;
            c.algo = FAB_MATMUL_ALGO_NATIVE;
            if (t == ti) {
                c.act = FAB_MATMUL_ACT_GELU_TANH;
                c.bias = 1;
                c.pre = 1;
                c.beta = 0.5f;
            }
            run_case(ctx, &c);
        }
        /* 9 or 18 m-tiles: the block order's groups of 8 m-tiles, the last one short */
        mm_case tall = plain(FAB_DTYPE_BF16, FAB_DTYPE_F32, 1100, 300, 24, ti >> 1, ti & 1);
        tall.align8 = 1;
        tall.algo = FAB_MATMUL_ALGO_NATIVE;
        run_case(ctx, &tall);
        mm_case f = plain(FAB_DTYPE_F32, FAB_DTYPE_F32, 70, 140, 36, ti & 1, ti >> 1);
        f.tf32 = 1;
        f.align4 = 1;
        f.algo = FAB_MATMUL_ALGO_NATIVE;
        run_case(ctx, &f);
    }
    unsetenv("FAB_MATMUL_SM80_TILE");
    banks_expect_none(banks, "tile configurations");
#ifdef FAB_TEST_EMULATED
    static const struct { int64_t batch, blocks, threads; } rule[] = {
        {66, 2 * 1 * 66, 256}, /* 132 blocks of 128x256 fill the SMs: 8 warps */
        {33, 2 * 2 * 33, 128}, /* 128x256 would leave SMs idle; 128x128, 4 warps */
        {32, 3 * 3 * 32, 128}, /* 128 blocks of 128x128 would too: 64x64 */
    };
    const int racecheck = fab_emu_set_racecheck(0); /* one run per launch: counts as they are */
    for (int i = 0; i < 3; i++) {
        mm_case c = plain(FAB_DTYPE_BF16, FAB_DTYPE_BF16, 129, 131, 40, 0, 0);
        c.align8 = 1;
        c.algo = FAB_MATMUL_ALGO_NATIVE;
        c.nb = 1;
        c.bshape[0] = rule[i].batch;
        c.a_nb = c.b_nb = 1;
        c.a_bshape[0] = c.b_bshape[0] = rule[i].batch;
        struct fab_emu_stats before, after;
        fab_emu_get_stats(&before);
        run_case(ctx, &c);
        fab_emu_get_stats(&after);
        print_message("%lld batches of 129x131: %llu blocks, %llu threads\n", (long long)rule[i].batch,
                      after.blocks - before.blocks, after.threads - before.threads);
        assert_int_equal(after.blocks - before.blocks, rule[i].blocks);
        assert_int_equal(after.threads - before.threads, rule[i].blocks * rule[i].threads);
    }
    fab_emu_set_racecheck(racecheck);
#endif
    unsetenv("FAB_MATMUL_SM90");
    fab_context_destroy(ctx);
}

/* Batch layout variant v (0..3) of the batched tests: C [2, 3, m, n]; A [3, m, k]
 * broadcast over C's first dim; B [2, 1, k, n], or for v = 3 [2, 3, k, n] with a
 * stride-0 second dim; and an epilogue per variant. */
static void batched_variant(mm_case *c, int v)
{
    c->nb = 2;
    c->bshape[0] = 2;
    c->bshape[1] = 3;
    c->a_nb = 1;
    c->a_bshape[0] = 3;
    c->b_nb = 2;
    c->b_bshape[0] = 2;
    c->b_bshape[1] = v == 3 ? 3 : 1;
    c->b_zero = v == 3 ? 2u : 0u; /* B's second dim: size 3, stride 0 */
    c->beta = v == 2 ? 1.0f : 0.0f;
    c->act = v == 1 ? FAB_MATMUL_ACT_GELU_TANH : 0;
    c->pre = v == 1;
    c->bias = v == 1 ? 2 : 0;
    c->dbias = v == 2 ? 1 : v == 3 ? 2 : 0;
}

/* TF32 on f32 inputs: CUDA may round inputs, the CPU computes exactly. With rows
 * padded to 4 elements (16 bytes) CUDA runs the tensor-core kernel (m16n8k8.tf32):
 * both transposes of each operand (ldmatrix for a k-contiguous operand, 32-bit
 * shared loads for an m/n-contiguous one), edges in m, n and k (1, 7, 127, 129,
 * k slices of 16), both tile configurations, batches with broadcasts and padded
 * strides, every epilogue; the bound is eps_of's TF32 bound in k. Unpadded rows
 * (odd strides) take the SIMT kernel, exactly. */
static void test_tf32(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    const bank_mark banks = banks_begin();
    mm_case c = plain(FAB_DTYPE_F32, FAB_DTYPE_F32, 67, 45, 129, 0, 1);
    c.tf32 = 1;
    run_case(ctx, &c);
    static const int64_t sizes[][3] = {{1, 1, 1},      {7, 7, 7},     {127, 129, 7}, {129, 127, 33},
                                       {1, 129, 127},  {127, 1, 129}, {16, 8, 16},   {33, 1000, 40},
                                       {1000, 17, 24}, {64, 72, 1000}};
    const int ns = on_cuda() ? 10 : 6;
    for (int si = 0; si < ns; si++)
        for (int t = 0; t < 4; t++) {
            if (si >= 4 && t != (si & 3))
                continue;
            c = plain(FAB_DTYPE_F32, FAB_DTYPE_F32, sizes[si][0], sizes[si][1], sizes[si][2], t & 1, t >> 1);
            c.tf32 = 1;
            c.align4 = 1;
            c.align8 = si == 2; /* strides of 8 as well as 4 (+ 0, 1, 2 or 3) elements */
            c.algo = si & 1 ? FAB_MATMUL_ALGO_NATIVE : FAB_MATMUL_ALGO_AUTO;
            if (si == 3) { /* every epilogue, on both layouts of each operand */
                c.alpha = t == 1 ? -0.75f : 0.0f;
                c.act = t == 0 ? FAB_MATMUL_ACT_GELU_ERF : t == 1 ? FAB_MATMUL_ACT_RELU : FAB_MATMUL_ACT_GELU_TANH;
                c.bias = t == 3 ? 0 : 1 + (t & 1);
                c.pre = t < 2;
                c.bwd = t == 3;
                c.beta = t == 2 || t == 3 ? 0.5f : 0.0f;
                c.dbias = t == 1 ? 1 : t == 2 ? 2 : 0;
            }
            run_case(ctx, &c);
        }
    /* 33 x 4 blocks of 128x128 >= the SM count of an emulated H100 (132): the
     * large tile configuration, with edges in m, n and k */
    for (int t = 0; t < (on_cuda() ? 4 : 1); t++) {
        mm_case big = plain(FAB_DTYPE_F32, FAB_DTYPE_F32, 129, 131, 37 + t, t & 1, t >> 1);
        big.tf32 = 1;
        big.align4 = 1;
        big.algo = FAB_MATMUL_ALGO_NATIVE;
        big.nb = 1;
        big.bshape[0] = 33;
        big.a_nb = big.b_nb = 1;
        big.a_bshape[0] = big.b_bshape[0] = 33;
        big.act = t == 3 ? FAB_MATMUL_ACT_RELU : 0;
        big.bias = t == 3;
        run_case(ctx, &big);
    }
    /* batched: C [2, 3, m, n]; A [3, m, k]; B [2, 3, k, n] with a stride-0 dim or
     * [2, 1, k, n]; rows padded to 4 elements, so every batch stride is too */
    for (int v = 0; v < 4; v++) {
        c = plain(FAB_DTYPE_F32, FAB_DTYPE_F32, 29 + v, 37, 45 + 40 * v, v & 1, v >> 1);
        c.tf32 = 1;
        c.align4 = 1;
        c.algo = FAB_MATMUL_ALGO_NATIVE;
        batched_variant(&c, v);
        run_case(ctx, &c);
    }
    if (on_cuda())
        banks_expect_none(banks, "tf32");
    fab_context_destroy(ctx);
}

/* cvt.rna.tf32.f32 as the PTX ISA defines it, on the host: keep 10 of the 23
 * mantissa bits, to nearest, ties away from zero (finite values). */
static double tf32_rna(double x)
{
    float f = (float)x;
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x1000u) & 0xffffe000u;
    memcpy(&f, &u, 4);
    return f;
}

/* Proof that precision TF32 runs the tensor-core kernel and rounds as it should
 * (the test above passes with exact f32 too): one operand holds ±(1 + q·2^-13),
 * q = 0..7 (below, at and above half a tf32 ulp of 1, 2^-11), the other small
 * integers, so every partial sum is exact in f32 both with the inputs as given
 * and with them rounded to tf32. Then C must be exactly sum rna(a)·rna(b) with
 * TF32 and exactly sum a·b with EXACT, and the two differ. Both operands take the
 * fractional role, in both layouts. The CPU ignores TF32: exactly sum a·b there. */
static void test_tf32_rounding(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    const int64_t m = 37, n = 29, k = 77;
    for (int v = 0; v < 8; v++) {
        int ta = v & 1, tb = v >> 1 & 1, frac_b = v >> 2;
        fab_test_reseed((uint64_t)(7001 + v));
        int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
        int64_t lda = (ac + 3) / 4 * 4 + 4 * (v & 1), ldb = (bc + 3) / 4 * 4, ldc = n + 1;
        double *ha = malloc(sizeof(double) * (size_t)(ar * lda)), *hb = malloc(sizeof(double) * (size_t)(br * ldb));
        double *exact = malloc(sizeof(double) * (size_t)(m * ldc)), *rounded = malloc(sizeof(double) * (size_t)(m * ldc));
        double *out = malloc(sizeof(double) * (size_t)(m * ldc));
        assert_true(ha && hb && exact && rounded && out);
        for (int64_t i = 0; i < ar * lda; i++) {
            double sgn = fab_test_rand_u64() & 1 ? -1 : 1;
            double q = (double)(fab_test_rand_u64() % 8);
            ha[i] = frac_b ? sgn * (double)(1 + fab_test_rand_u64() % 3) : sgn * (1 + q * ldexp(1, -13));
        }
        for (int64_t i = 0; i < br * ldb; i++) {
            double sgn = fab_test_rand_u64() & 1 ? -1 : 1;
            double q = (double)(fab_test_rand_u64() % 8);
            hb[i] = frac_b ? sgn * (1 + q * ldexp(1, -13)) : sgn * (double)(1 + fab_test_rand_u64() % 3);
        }
        int differ = 0;
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                double se = 0, sr = 0;
                for (int64_t p = 0; p < k; p++) {
                    double x = ha[ta ? p * lda + i : i * lda + p], y = hb[tb ? j * ldb + p : p * ldb + j];
                    se += x * y;
                    sr += tf32_rna(x) * tf32_rna(y);
                }
                exact[i * ldc + j] = se;
                rounded[i * ldc + j] = sr;
                differ += se != sr;
            }
        assert_true(differ > m * n / 2); /* the inputs do exercise the rounding */
        void *da = fab_test_upload(ctx, FAB_DTYPE_F32, ha, ar * lda, NULL);
        void *db = fab_test_upload(ctx, FAB_DTYPE_F32, hb, br * ldb, NULL);
        void *dc = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, m * ldc);
        fab_matmul_params p;
        memset(&p, 0, sizeof p);
        int64_t sa[2] = {ar, ac}, sb[2] = {br, bc}, sc[2] = {m, n};
        assert_int_equal(fab_tensor_make(da, FAB_DTYPE_F32, 2, sa, &p.a), FAB_OK);
        assert_int_equal(fab_tensor_make(db, FAB_DTYPE_F32, 2, sb, &p.b), FAB_OK);
        assert_int_equal(fab_tensor_make(dc, FAB_DTYPE_F32, 2, sc, &p.c), FAB_OK);
        p.a.stride[0] = lda;
        p.b.stride[0] = ldb;
        p.c.stride[0] = ldc;
        p.trans_a = ta ? FAB_OP_T : FAB_OP_N;
        p.trans_b = tb ? FAB_OP_T : FAB_OP_N;
        p.algo = FAB_MATMUL_ALGO_NATIVE;
        for (int prec = 0; prec < 2; prec++) {
            p.precision = prec ? FAB_MATMUL_TF32 : FAB_MATMUL_EXACT;
            fab_status s = fab_matmul(ctx, &p);
            if (s != FAB_OK)
                fail_msg("tf32 rounding v=%d: %s", v, fab_last_error());
            fab_test_download(ctx, FAB_DTYPE_F32, dc, m * ldc, out);
            const double *want = prec && on_cuda() ? rounded : exact;
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < n; j++)
                    if (out[i * ldc + j] != want[i * ldc + j])
                        fail_msg("tf32 rounding ta=%d tb=%d rounded operand %c, precision %s: C[%lld][%lld] = %.9g, "
                                 "want %.9g (exact f32 %.9g, inputs rounded to tf32 %.9g)",
                                 ta, tb, frac_b ? 'B' : 'A', prec ? "TF32" : "EXACT", (long long)i, (long long)j,
                                 out[i * ldc + j], want[i * ldc + j], exact[i * ldc + j], rounded[i * ldc + j]);
        }
        fab_test_free(ctx, da);
        fab_test_free(ctx, db);
        fab_test_free(ctx, dc);
        free(ha);
        free(hb);
        free(exact);
        free(rounded);
        free(out);
    }
    fab_context_destroy(ctx);
}

/* Every epilogue: alpha, beta, bias (C's dtype and f32), each activation with and
 * without pre_act, the activation backward, both dbias sources. */
static void test_epilogues(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    const fab_dtype outs[][2] = {{FAB_DTYPE_F32, FAB_DTYPE_F32}, {FAB_DTYPE_BF16, FAB_DTYPE_BF16}, {FAB_DTYPE_F16, FAB_DTYPE_F32}};
    int64_t m = on_cuda() ? 37 : 131, n = on_cuda() ? 41 : 93, k = on_cuda() ? 70 : 300;
    for (int d = 0; d < 3; d++)
        for (int act = 0; act <= 3; act++) {
            mm_case c = plain(outs[d][0], outs[d][1], m, n, k, act & 1, (act >> 1) ^ (d & 1));
            c.act = act;
            c.bias = 1 + (act & 1);
            c.pre = act != 0;
            c.alpha = 0.75f;
            run_case(ctx, &c);
            c.beta = act == 2 ? 1.0f : -0.5f;
            c.pre = 0;
            c.dbias = 1;
            run_case(ctx, &c);
            if (act != 0) {
                mm_case b = plain(outs[d][0], outs[d][1], m, n, k, 0, 1);
                b.act = act;
                b.bwd = 1;
                b.dbias = 1;
                run_case(ctx, &b);
            }
        }
    mm_case c = plain(FAB_DTYPE_BF16, FAB_DTYPE_BF16, m, n, k, 1, 0);
    c.dbias = 2;
    run_case(ctx, &c);
    c.in = c.out = FAB_DTYPE_F32;
    c.ta = 0;
    run_case(ctx, &c);
    fab_context_destroy(ctx);
}

/* Batched: C [2, 3, m, n]; A [3, m, k] broadcast over the first dim; B [2, 1, k, n]
 * broadcast over the second; stride-0 batch dims; padded rows everywhere. */
static void test_batched_strided(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    for (int v = 0; v < 4; v++) {
        mm_case c = plain(v & 1 ? FAB_DTYPE_BF16 : FAB_DTYPE_F32, FAB_DTYPE_F32, 29 + v, 37, 45 + 40 * v, v & 1, v >> 1);
        c.pad = 3 + v;
        batched_variant(&c, v);
        run_case(ctx, &c);
    }
    fab_context_destroy(ctx);
}

/* ------------------------------------------------------------ gradient check */

/* A 2-layer MLP, L = sum(G ⊙ act(x·W1 + b1)·W2), W1 [k, h], W2 as torch stores
 * it, [n, h]. Its backward runs through fab_matmul only:
 *   dH   = G·W2                (A = G, B = W2)
 *   dPre = dH ⊙ act'(pre), db1 = column sums (activation_backward, dbias from C)
 *   dW1  = xᵀ·dPre             (trans_a)
 *   dx   = dPre·W1ᵀ            (trans_b)
 *   dW2  = Gᵀ·H, as [n, h]     (trans_a), db2 from A = column sums of G
 * and each is checked against central finite differences of L in float64. */
enum { GM = 7, GK = 5, GH = 9, GN = 6 };

static double mlp_loss(const double *x, const double *w1, const double *b1, const double *w2, const double *b2,
                       const double *g, int act)
{
    double L = 0;
    for (int i = 0; i < GM; i++) {
        double h[GH];
        for (int q = 0; q < GH; q++) {
            double s = b1[q];
            for (int p = 0; p < GK; p++)
                s += x[i * GK + p] * w1[p * GH + q];
            h[q] = act_ref(act, s);
        }
        for (int j = 0; j < GN; j++) {
            double s = b2[j];
            for (int q = 0; q < GH; q++)
                s += h[q] * w2[j * GH + q];
            L += g[i * GN + j] * s;
        }
    }
    return L;
}

static void *dev_f32(fab_context *ctx, const double *v, int64_t n)
{
    return fab_test_upload(ctx, FAB_DTYPE_F32, v, n, NULL);
}

static fab_tensor t2(void *data, int64_t r, int64_t c)
{
    fab_tensor t;
    int64_t sh[2] = {r, c};
    assert_int_equal(fab_tensor_make(data, FAB_DTYPE_F32, 2, sh, &t), FAB_OK);
    return t;
}

static fab_tensor t1(void *data, int64_t n)
{
    fab_tensor t;
    assert_int_equal(fab_tensor_make(data, FAB_DTYPE_F32, 1, &n, &t), FAB_OK);
    return t;
}

static void mm_ok(fab_context *ctx, const fab_matmul_params *p, const char *what)
{
    fab_status s = fab_matmul(ctx, p);
    if (s != FAB_OK)
        fail_msg("%s: %s", what, fab_last_error());
}

/* A and C side by side in one buffer X [m, k + n] (A its first k columns, C the
 * rest): their spans interleave, their elements do not, so the call is accepted,
 * writes only C's columns, and gives what separate buffers give. C moved one
 * column left, onto A's last, is refused with nothing written. */
static void test_interleaved(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    const int64_t m = 33, k = 24, n = 40, ld = k + n;
    double *hx = malloc(sizeof(double) * (size_t)(m * ld)), *hb = malloc(sizeof(double) * (size_t)(k * n));
    double *got = malloc(sizeof(double) * (size_t)(m * ld)), *want = malloc(sizeof(double) * (size_t)(m * n));
    assert_non_null(hx);
    assert_non_null(hb);
    assert_non_null(got);
    assert_non_null(want);
    fab_test_fill_uniform(hx, m * ld, -1, 1);
    fab_test_fill_uniform(hb, k * n, -1, 1);
    float *x = fab_test_upload(ctx, FAB_DTYPE_F32, hx, m * ld, hx);
    void *b = fab_test_upload(ctx, FAB_DTYPE_F32, hb, k * n, NULL), *c = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, m * n);
    fab_matmul_params p;
    memset(&p, 0, sizeof p);
    p.a = t2(x, m, k);
    p.a.stride[0] = ld;
    p.b = t2(b, k, n);
    p.c = t2(c, m, n);
    mm_ok(ctx, &p, "matmul into a buffer of its own");
    fab_test_download(ctx, FAB_DTYPE_F32, c, m * n, want);

    p.c = t2(x + k, m, n);
    p.c.stride[0] = ld;
    p.c.data = x + k - 1; /* onto A's last column */
    fab_test_expect_error(fab_matmul(ctx, &p), INVALID, "c overlaps a");
    fab_test_download(ctx, FAB_DTYPE_F32, x, m * ld, got);
    for (int64_t i = 0; i < m * ld; i++)
        if (!(got[i] == hx[i]))
            fail_msg("a refused matmul wrote X[%lld]", (long long)i);

    p.c.data = x + k;
    mm_ok(ctx, &p, "matmul with C beside A in one buffer");
    fab_test_download(ctx, FAB_DTYPE_F32, x, m * ld, got);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < ld; j++) {
            double g = got[i * ld + j], w = j < k ? hx[i * ld + j] : want[i * n + j - k];
            if (!(fabs(g - w) <= 1e-5 * (1 + fabs(w))) || (j < k && g != w))
                fail_msg("X[%lld][%lld] = %.9g, want %.9g (%s)", (long long)i, (long long)j, g, w,
                         j < k ? "A, unchanged" : "C, as in a buffer of its own");
        }
    fab_test_free(ctx, x);
    fab_test_free(ctx, b);
    fab_test_free(ctx, c);
    free(hx), free(hb), free(got), free(want);
    fab_context_destroy(ctx);
}

static void gradcheck_param(const char *what, double *param, int64_t n, const double *analytic, double *x,
                            double *w1, double *b1, double *w2, double *b2, const double *g, int act)
{
    for (int64_t i = 0; i < n; i++) {
        double keep = param[i], h = 1e-5;
        param[i] = keep + h;
        double lp = mlp_loss(x, w1, b1, w2, b2, g, act);
        param[i] = keep - h;
        double lm = mlp_loss(x, w1, b1, w2, b2, g, act);
        param[i] = keep;
        double fd = (lp - lm) / (2 * h);
        if (!(fabs(analytic[i] - fd) <= 1e-4 * (1 + fabs(fd))))
            fail_msg("gradcheck %s act=%d: element %lld: fab_matmul gives %.8g, finite differences %.8g", what, act,
                     (long long)i, analytic[i], fd);
    }
}

static void test_gradcheck(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    for (int act = FAB_MATMUL_ACT_GELU_TANH; act <= FAB_MATMUL_ACT_GELU_ERF; act++) {
        double x[GM * GK], w1[GK * GH], b1[GH], w2[GN * GH], b2[GN], g[GM * GN];
        fab_test_reseed(500 + (uint64_t)act);
        fab_test_fill_uniform(x, GM * GK, -1, 1);
        fab_test_fill_uniform(w1, GK * GH, -1, 1);
        fab_test_fill_uniform(b1, GH, -1, 1);
        fab_test_fill_uniform(w2, GN * GH, -1, 1);
        fab_test_fill_uniform(b2, GN, -1, 1);
        fab_test_fill_uniform(g, GM * GN, -1, 1);
        /* round to f32 so the library and the float64 loss see the same inputs */
        double *all[] = {x, w1, b1, w2, b2, g};
        int lens[] = {GM * GK, GK * GH, GH, GN * GH, GN, GM * GN};
        for (int a = 0; a < 6; a++)
            for (int i = 0; i < lens[a]; i++)
                all[a][i] = (float)all[a][i];
        void *dx = dev_f32(ctx, x, GM * GK), *dw1 = dev_f32(ctx, w1, GK * GH), *db1 = dev_f32(ctx, b1, GH);
        void *dw2 = dev_f32(ctx, w2, GN * GH), *dg = dev_f32(ctx, g, GM * GN);
        void *pre = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, GM * GH), *hh = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, GM * GH);
        void *dpre = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, GM * GH), *gb1 = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, GH);
        void *gw1 = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, GK * GH), *gx = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, GM * GK);
        void *gw2 = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, GN * GH), *gb2 = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, GN);
        fab_matmul_params p;
        /* forward: H = act(x·W1 + b1), pre saved */
        memset(&p, 0, sizeof p);
        p.a = t2(dx, GM, GK);
        p.b = t2(dw1, GK, GH);
        p.c = t2(hh, GM, GH);
        p.bias = t1(db1, GH);
        p.activation = (fab_matmul_activation)act;
        p.pre_act = t2(pre, GM, GH);
        mm_ok(ctx, &p, "forward");
        /* dPre = (G·W2) ⊙ act'(pre), db1 */
        memset(&p, 0, sizeof p);
        p.a = t2(dg, GM, GN);
        p.b = t2(dw2, GN, GH);
        p.c = t2(dpre, GM, GH);
        p.activation = (fab_matmul_activation)act;
        p.activation_backward = 1;
        p.pre_act = t2(pre, GM, GH);
        p.dbias = t1(gb1, GH);
        mm_ok(ctx, &p, "dgelu + bgrad");
        /* dW1 = xᵀ·dPre */
        memset(&p, 0, sizeof p);
        p.a = t2(dx, GM, GK);
        p.trans_a = FAB_OP_T;
        p.b = t2(dpre, GM, GH);
        p.c = t2(gw1, GK, GH);
        mm_ok(ctx, &p, "dW1");
        /* dx = dPre·W1ᵀ */
        memset(&p, 0, sizeof p);
        p.a = t2(dpre, GM, GH);
        p.b = t2(dw1, GK, GH);
        p.trans_b = FAB_OP_T;
        p.c = t2(gx, GM, GK);
        mm_ok(ctx, &p, "dx");
        /* dW2 [n, h] = Gᵀ·H, db2 = sums of Gᵀ over k (the rows of G) */
        memset(&p, 0, sizeof p);
        p.a = t2(dg, GM, GN);
        p.trans_a = FAB_OP_T;
        p.b = t2(hh, GM, GH);
        p.c = t2(gw2, GN, GH);
        p.dbias = t1(gb2, GN);
        p.dbias_from = FAB_MATMUL_DBIAS_FROM_A;
        mm_ok(ctx, &p, "dW2 + bgrad from A");

        double a_x[GM * GK], a_w1[GK * GH], a_b1[GH], a_w2[GN * GH], a_b2[GN];
        fab_test_download(ctx, FAB_DTYPE_F32, gx, GM * GK, a_x);
        fab_test_download(ctx, FAB_DTYPE_F32, gw1, GK * GH, a_w1);
        fab_test_download(ctx, FAB_DTYPE_F32, gb1, GH, a_b1);
        fab_test_download(ctx, FAB_DTYPE_F32, gw2, GN * GH, a_w2);
        fab_test_download(ctx, FAB_DTYPE_F32, gb2, GN, a_b2);
        gradcheck_param("dx", x, GM * GK, a_x, x, w1, b1, w2, b2, g, act);
        gradcheck_param("dW1", w1, GK * GH, a_w1, x, w1, b1, w2, b2, g, act);
        gradcheck_param("db1 (fused bgrad)", b1, GH, a_b1, x, w1, b1, w2, b2, g, act);
        gradcheck_param("dW2", w2, GN * GH, a_w2, x, w1, b1, w2, b2, g, act);
        gradcheck_param("db2 (bgrad from A)", b2, GN, a_b2, x, w1, b1, w2, b2, g, act);
        void *bufs[] = {dx, dw1, db1, dw2, dg, pre, hh, dpre, gb1, gw1, gx, gw2, gb2};
        for (int i = 0; i < 13; i++)
            fab_test_free(ctx, bufs[i]);
    }
    fab_context_destroy(ctx);
}

/* ------------------------------------------------------------ bias gradient */

static void test_bias_grad(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    for (int d = 0; d < 3; d++) {
        fab_dtype dt = d == 0 ? FAB_DTYPE_F32 : d == 1 ? FAB_DTYPE_F16 : FAB_DTYPE_BF16;
        int64_t shape[3] = {3, 129, 70};
        tmat dy, db;
        tmat_make(ctx, &dy, dt, 3, shape, 5, 0, 1, -1, 1);
        int64_t n = 70;
        tmat_make(ctx, &db, d == 2 ? FAB_DTYPE_BF16 : FAB_DTYPE_F32, 1, &n, 0, 0, 0, 0, 0);
        fab_matmul_bias_grad_params p;
        memset(&p, 0, sizeof p);
        p.dy = tmat_tensor(&dy);
        p.dbias = tmat_tensor(&db);
        assert_int_equal(fab_matmul_bias_grad(ctx, &p), FAB_OK);
        double ref[70], bound[70], out[70];
        for (int64_t j = 0; j < n; j++) {
            ref[j] = bound[j] = 0;
            for (int64_t b = 0; b < 3; b++)
                for (int64_t i = 0; i < 129; i++) {
                    double v = dy.host[b * dy.stride[0] + i * dy.stride[1] + j];
                    ref[j] += v;
                    bound[j] += fabs(v);
                }
        }
        fab_test_download(ctx, db.dt, db.dev, n, out);
        check_bound("fab_matmul_bias_grad", out, ref, bound, n, eps_of(db.dt, 0, 0));
        tmat_free(ctx, &dy);
        tmat_free(ctx, &db);
    }
    fab_context_destroy(ctx);
}

/* ------------------------------------------------------------- determinism */

static void test_deterministic(void **state)
{
    (void)state;
    fab_context_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.deterministic = 1;
    cfg.num_threads = on_cuda() ? 0 : 2;
    fab_context *ctx = fab_test_context_with(&cfg);
    int64_t m = on_cuda() ? 67 : 257, n = on_cuda() ? 45 : 300, k = on_cuda() ? 200 : 1000;
    double *av = malloc(sizeof(double) * (size_t)(m * k)), *bv = malloc(sizeof(double) * (size_t)(k * n));
    assert_true(av && bv);
    fab_test_fill_uniform(av, m * k, -1, 1);
    fab_test_fill_uniform(bv, k * n, -1, 1);
    for (int d = 0; d < 2; d++) {
        fab_dtype dt = d ? FAB_DTYPE_BF16 : FAB_DTYPE_F32;
        void *da = fab_test_upload(ctx, dt, av, m * k, NULL), *db = fab_test_upload(ctx, dt, bv, k * n, NULL);
        void *c1 = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, m * n), *c2 = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, m * n);
        void *g1 = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, n), *g2 = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, n);
        fab_matmul_params p;
        memset(&p, 0, sizeof p);
        int64_t sa[2] = {m, k}, sb[2] = {k, n}, sc[2] = {m, n};
        fab_tensor_make(da, dt, 2, sa, &p.a);
        fab_tensor_make(db, dt, 2, sb, &p.b);
        fab_tensor_make(c1, FAB_DTYPE_F32, 2, sc, &p.c);
        fab_tensor_make(g1, FAB_DTYPE_F32, 1, &n, &p.dbias);
        p.activation = FAB_MATMUL_ACT_GELU_TANH;
        mm_ok(ctx, &p, "deterministic run 1");
        p.c.data = c2;
        p.dbias.data = g2;
        if (on_cuda()) {
            mm_ok(ctx, &p, "deterministic run 2");
        } else { /* on the CPU the thread count must not matter either: run 1 had 2 */
            fab_context_config cfg3 = cfg;
            cfg3.num_threads = 3;
            fab_context *ctx3 = fab_test_context_with(&cfg3);
            mm_ok(ctx3, &p, "deterministic run 2, 3 threads");
            fab_context_destroy(ctx3);
        }
        size_t bytes = (size_t)(m * n) * 4;
        unsigned char *h1 = malloc(bytes), *h2 = malloc(bytes);
        assert_true(h1 && h2);
        fab_test_download_bytes(ctx, c1, bytes, h1);
        fab_test_download_bytes(ctx, c2, bytes, h2);
        assert_memory_equal(h1, h2, bytes);
        fab_test_download_bytes(ctx, g1, (size_t)n * 4, h1);
        fab_test_download_bytes(ctx, g2, (size_t)n * 4, h2);
        assert_memory_equal(h1, h2, (size_t)n * 4);
        free(h1);
        free(h2);
        void *bufs[] = {da, db, c1, c2, g1, g2};
        for (int i = 0; i < 6; i++)
            fab_test_free(ctx, bufs[i]);
    }
    free(av);
    free(bv);
    fab_context_destroy(ctx);
}

/* The tensor-core kernels' epilogue moves 8 columns a lane (16-byte loads and
 * stores) where C, pre_act and bias allow it, else one: the two forms must give
 * the same bits. For the Hopper kernel, the sm80 kernel (FAB_MATMUL_SM90=0) and its
 * TF32 form, several dtypes and every kind of epilogue, C (and pre_act) with and
 * without FAB_MATMUL_EPILOGUE=scalar are compared bitwise; n = 140 puts the last
 * 8 columns of each row half past n. Then a C whose base is one element past a
 * 16-byte boundary: it must take the scalar form (the vector form would fault on a
 * GPU, and the emulator traps it), with the same bits again. */
static void test_epilogue_widths(void **state)
{
    (void)state;
    if (!on_cuda()) {
        print_message("SKIP: the epilogue forms are the CUDA tensor-core kernels'\n");
        skip();
    }
    fab_context *ctx = fab_test_context();
    const int64_t m = 70, n = 140, k = 72, ldc = 144, span = m * ldc + 8; /* + 8: room for the shift */
    const struct {
        fab_dtype in, out;
        const char *sm90;
    } kinds[] = {{FAB_DTYPE_BF16, FAB_DTYPE_BF16, "1"}, {FAB_DTYPE_F16, FAB_DTYPE_F32, "1"},
                 {FAB_DTYPE_BF16, FAB_DTYPE_F32, "0"},  {FAB_DTYPE_F16, FAB_DTYPE_F16, "0"},
                 {FAB_DTYPE_F32, FAB_DTYPE_F32, "0"}};
    double *av = malloc(sizeof(double) * (size_t)(m * k)), *bv = malloc(sizeof(double) * (size_t)(k * ldc));
    double *cv = malloc(sizeof(double) * (size_t)(span + 1)), *pv = malloc(sizeof(double) * (size_t)(span + 1));
    double *biasv = malloc(sizeof(double) * (size_t)n);
    assert_true(av && bv && cv && pv && biasv);
    fab_test_fill_uniform(av, m * k, -1, 1);
    fab_test_fill_uniform(bv, k * ldc, -1, 1);
    fab_test_fill_uniform(cv, span + 1, -1, 1);
    fab_test_fill_uniform(pv, span + 1, -2, 2);
    fab_test_fill_uniform(biasv, n, -1, 1);
    for (size_t kd = 0; kd < sizeof kinds / sizeof kinds[0]; kd++) {
        const fab_dtype in = kinds[kd].in, out = kinds[kd].out;
        const size_t cb = fab_dtype_size(out), bytes = (size_t)span * cb;
        setenv("FAB_MATMUL_SM90", kinds[kd].sm90, 1);
        void *da = fab_test_upload(ctx, in, av, m * k, NULL), *db = fab_test_upload(ctx, in, bv, k * ldc, NULL);
        for (int e = 0; e < 4; e++) {
            /* 0: alpha, beta, f32 bias; 1: bias in C's dtype, pre_act stored, GELU (tanh);
             * 2: DGELU (erf) from pre_act, beta 1; 3: ReLU, beta, C-dtype bias, pre_act */
            const int bwd = e == 2, store_pre = e == 1 || e == 3;
            void *bias = e == 2 ? NULL : fab_test_upload(ctx, e == 0 ? FAB_DTYPE_F32 : out, biasv, n, NULL);
            unsigned char *got[3][2] = {{NULL, NULL}, {NULL, NULL}, {NULL, NULL}};
#ifdef FAB_TEST_EMULATED
            unsigned long long smem[3] = {0, 0, 0}; /* shared-memory instructions per form */
#endif
            for (int w = 0; w < 3; w++) { /* vector, FAB_MATMUL_EPILOGUE=scalar, misaligned C */
                if (w == 1)
                    setenv("FAB_MATMUL_EPILOGUE", "scalar", 1);
                else
                    unsetenv("FAB_MATMUL_EPILOGUE");
                const float beta = e == 0 ? -0.5f : e == 2 ? 1.0f : e == 3 ? 0.5f : 0.0f;
                const int64_t off = w == 2 ? 1 : 0; /* elements: 2 or 4 bytes past 16-byte alignment */
                /* the misaligned matrices start one element in: their values too */
                void *dc = fab_test_upload(ctx, out, cv + 1 - off, span, NULL);
                void *dp = bwd ? fab_test_upload(ctx, out, pv + 1 - off, span, NULL)
                               : fab_test_alloc_poisoned(ctx, out, span);
                fab_matmul_params p;
                memset(&p, 0, sizeof p);
                int64_t sa[2] = {m, k}, sb[2] = {k, n}, sc[2] = {m, n};
                fab_tensor_make(da, in, 2, sa, &p.a);
                fab_tensor_make(db, in, 2, sb, &p.b);
                p.b.stride[0] = ldc; /* B's rows too are whole 16-byte units: the tensor-core kernels run */
                fab_tensor_make((char *)dc + off * (int64_t)cb, out, 2, sc, &p.c);
                p.c.stride[0] = ldc;
                if (bwd || store_pre) {
                    fab_tensor_make((char *)dp + off * (int64_t)cb, out, 2, sc, &p.pre_act);
                    p.pre_act.stride[0] = ldc;
                }
                if (bias)
                    fab_tensor_make(bias, e == 0 ? FAB_DTYPE_F32 : out, 1, &n, &p.bias);
                p.alpha = 0.75f;
                p.beta = beta;
                p.activation = e == 0 ? FAB_MATMUL_ACT_NONE : e == 3 ? FAB_MATMUL_ACT_RELU
                               : e == 1 ? FAB_MATMUL_ACT_GELU_TANH : FAB_MATMUL_ACT_GELU_ERF;
                p.activation_backward = bwd;
                p.precision = in == FAB_DTYPE_F32 ? FAB_MATMUL_TF32 : FAB_MATMUL_EXACT;
                p.algo = FAB_MATMUL_ALGO_NATIVE;
                char what[128];
                snprintf(what, sizeof what, "%s->%s sm90=%s epilogue %d form %d", fab_dtype_name(in),
                         fab_dtype_name(out), kinds[kd].sm90, e, w);
#ifdef FAB_TEST_EMULATED
                struct fab_emu_stats before, after;
                fab_emu_get_stats(&before);
#endif
                bank_mark banks = banks_begin();
                mm_ok(ctx, &p, what);
                banks_expect_none(banks, what);
#ifdef FAB_TEST_EMULATED
                /* the kernel meant: wgmma on the Hopper one, mma.sync on the sm80 one */
                fab_emu_get_stats(&after);
                if (kinds[kd].sm90[0] == '1')
                    assert_true(after.wgmma > before.wgmma);
                else
                    assert_true(after.mma > before.mma && after.wgmma == before.wgmma);
                smem[w] = after.smem_requests - before.smem_requests;
#endif
                for (int o = 0; o < 2; o++) {
                    got[w][o] = malloc(bytes);
                    assert_non_null(got[w][o]);
                    fab_test_download_bytes(ctx, o ? dp : dc, bytes, got[w][o]);
                    if (w == 2) /* back to the others' positions */
                        memmove(got[w][o], got[w][o] + cb, bytes - cb);
                }
                fab_test_free(ctx, dc);
                fab_test_free(ctx, dp);
            }
#ifdef FAB_TEST_EMULATED
            /* the vector form ran: its 16-byte staging loads are fewer than the other forms' */
            if (!(smem[0] < smem[1] && smem[0] < smem[2]))
                fail_msg("%s->%s sm90=%s epilogue %d: %llu shared-memory instructions in the vector form, %llu and "
                         "%llu in the scalar ones: the vector form did not run",
                         fab_dtype_name(in), fab_dtype_name(out), kinds[kd].sm90, e, smem[0], smem[1], smem[2]);
#endif
            for (int w = 1; w < 3; w++)
                for (int o = 0; o < (store_pre ? 2 : 1); o++)
                    for (int64_t i = 0; i < m; i++)
                        if (memcmp(got[0][o] + (size_t)(i * ldc) * cb, got[w][o] + (size_t)(i * ldc) * cb,
                                   (size_t)n * cb))
                            fail_msg("%s->%s sm90=%s epilogue %d: %s of row %lld differs between the vector form "
                                     "and the %s",
                                     fab_dtype_name(in), fab_dtype_name(out), kinds[kd].sm90, e, o ? "pre_act" : "C",
                                     (long long)i, w == 1 ? "scalar form" : "misaligned C");
            for (int w = 0; w < 3; w++)
                for (int o = 0; o < 2; o++)
                    free(got[w][o]);
            if (bias)
                fab_test_free(ctx, bias);
        }
        fab_test_free(ctx, da);
        fab_test_free(ctx, db);
    }
    unsetenv("FAB_MATMUL_SM90");
    unsetenv("FAB_MATMUL_EPILOGUE");
    free(av);
    free(bv);
    free(cv);
    free(pv);
    free(biasv);
    fab_context_destroy(ctx);
}

/* ------------------------------------------------------------ AUTO's tuning */

/* Lines of g_log, and how many contain `needle`. */
static int log_lines(void)
{
    int n = 0;
    for (const char *q = g_log; *q; q++)
        n += *q == '\n';
    return n;
}

static int log_count(const char *needle)
{
    int n = 0;
    for (const char *q = strstr(g_log, needle); q; q = strstr(q + 1, needle))
        n++;
    return n;
}

/* The candidate after "-> " in g_log's (single) line. */
static void log_winner(char *out, size_t size)
{
    const char *q = strstr(g_log, "-> ");
    assert_non_null(q);
    q += 3;
    size_t i = 0;
    while (q[i] && q[i] != '\n' && q[i] != ' ' && i + 1 < size) {
        out[i] = q[i];
        i++;
    }
    out[i] = 0;
}

/* Calls where AUTO has two candidates: on a GPU cuBLASLt and the tensor-core
 * kernel (every case is one cuBLASLt expresses: tanh GELU, its backward, bias of
 * C's dtype, aligned pre_act), in the emulated build the tensor-core kernel and
 * the SIMT kernel (FAB_MATMUL_AUTOTUNE_SIMT). Each has an output the measurement
 * could spoil: beta != 0 (C is read: measured runs that wrote the caller's C would
 * leave beta·C counted more than once), a stored pre_act, the activation backward
 * (pre_act is an input), dbias from C and from A. */
static int autotune_cases(mm_case *cases)
{
    int n = 0;
    mm_case c = plain(FAB_DTYPE_BF16, FAB_DTYPE_BF16, 40, 24, 32, 0, 1); /* linear forward */
    c.align8 = 1, c.beta = 1, c.bias = 1, c.act = FAB_MATMUL_ACT_GELU_TANH, c.pre = 1;
    cases[n++] = c;
    c = plain(FAB_DTYPE_BF16, FAB_DTYPE_F32, 33, 40, 24, 0, 0); /* GELU backward, dbias from C */
    c.align8 = 1, c.beta = 0.5f, c.act = FAB_MATMUL_ACT_GELU_TANH, c.bwd = 1, c.dbias = 1;
    cases[n++] = c;
    c = plain(FAB_DTYPE_F16, FAB_DTYPE_F16, 24, 16, 40, 1, 0); /* weight gradient: dbias from A, accumulate */
    c.align8 = 1, c.beta = 1, c.dbias = 2;
    cases[n++] = c;
    c = plain(FAB_DTYPE_F32, FAB_DTYPE_F32, 20, 28, 36, 1, 1); /* TF32, f32 bias, ReLU */
    c.align4 = 1, c.tf32 = 1, c.beta = -1, c.bias = 1, c.act = FAB_MATMUL_ACT_RELU;
    cases[n++] = c;
    c = plain(FAB_DTYPE_BF16, FAB_DTYPE_BF16, 24, 16, 16, 0, 0); /* batched, pre_act stored */
    c.align8 = 1, c.beta = 1, c.act = FAB_MATMUL_ACT_GELU_TANH, c.pre = 1, c.nb = 1, c.bshape[0] = 3, c.a_nb = 1,
    c.a_bshape[0] = 3, c.b_nb = 0;
    cases[n++] = c;
    return n;
}

/* Whether the context's device has the tensor-core kernel (sm_80 or later). */
static bool has_sm80(fab_context *ctx)
{
    const char *q = strstr(fab_context_device_name(ctx), "(sm_");
    return q && atoi(q + 4) >= 80;
}

/* The autotune tests' setup: AUTO's log on, the SIMT kernel a candidate (emulated
 * builds only; a GPU build ignores it), measuring allowed, and a context of the
 * test's backend; NULL (everything undone) when it has no tensor-core kernel. */
static void autotune_env_clear(void)
{
    g_capture = false;
    unsetenv("FAB_MATMUL_AUTOTUNE");
    unsetenv("FAB_MATMUL_AUTOTUNE_LOG");
    unsetenv("FAB_MATMUL_AUTOTUNE_SIMT");
    unsetenv("FAB_MATMUL_AUTOTUNE_FILE");
}

static fab_context *autotune_begin(void)
{
    setenv("FAB_MATMUL_AUTOTUNE_LOG", "1", 1);
    setenv("FAB_MATMUL_AUTOTUNE_SIMT", "1", 1);
    unsetenv("FAB_MATMUL_AUTOTUNE");
    fab_context *ctx = fab_test_context();
    if (!has_sm80(ctx)) {
        fab_context_destroy(ctx);
        autotune_env_clear();
        return NULL;
    }
    return ctx;
}

/* A deterministic context runs the fixed heuristic on every call, `rounds` times
 * over the cases (g_capture set). */
static void expect_deterministic_heuristic(const mm_case *cases, int nc, int rounds, const char *what)
{
    fab_context_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.deterministic = 1;
    fab_context *ctx = fab_test_context_with(&cfg);
    for (int round = 0; round < rounds; round++)
        for (int i = 0; i < nc; i++) {
            run_case(ctx, &cases[i]);
            if (log_lines() != 1 || log_count(": heuristic (deterministic context) -> ") != 1)
                fail_msg("%s, case %d, call %d: want one heuristic line, got:\n%s", what, i, round + 1, g_log);
        }
    fab_context_destroy(ctx);
}

/* AUTO measures a call's candidates the first time it sees its key and uses the
 * cached winner afterwards (FAB_MATMUL_AUTOTUNE_LOG says which happened, one line
 * per call); the results are right both times. A deterministic context and
 * FAB_MATMUL_AUTOTUNE=0 use the fixed heuristic and never measure. */
static void test_autotune(void **state)
{
    (void)state;
    if (!on_cuda()) /* the CPU backend has one GEMM: nothing to choose */
        return;
    mm_case cases[8];
    int nc = autotune_cases(cases);
    fab_context *ctx = autotune_begin();
    if (!ctx)
        return;
    g_capture = true;
    char first[8][32];
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < nc; i++) {
            run_case(ctx, &cases[i]); /* fresh buffers each time: the same key */
            if (log_lines() != 1 || log_count(round ? ": cached -> " : ": tuned -> ") != 1)
                fail_msg("case %d, call %d: want one \"%s\" line, got:\n%s", i, round + 1,
                         round ? "cached" : "tuned", g_log);
            char w[32];
            log_winner(w, sizeof w);
            if (round == 0)
                strcpy(first[i], w);
            else if (strcmp(first[i], w) != 0)
                fail_msg("case %d: tuned %s, the cached call ran %s", i, first[i], w);
        }
    fab_context_destroy(ctx);

    expect_deterministic_heuristic(cases, nc, 2, "deterministic");

    /* FAB_MATMUL_AUTOTUNE=0 */
    setenv("FAB_MATMUL_AUTOTUNE", "0", 1);
    ctx = fab_test_context();
    run_case(ctx, &cases[0]);
    if (log_lines() != 1 || log_count(": heuristic (FAB_MATMUL_AUTOTUNE=0) -> ") != 1)
        fail_msg("FAB_MATMUL_AUTOTUNE=0: want one heuristic line, got:\n%s", g_log);
    fab_context_destroy(ctx);
    autotune_env_clear();
}

/* Reads the autotune file's lines into lines[] (at most max); returns the count. */
static int read_lines(const char *path, char lines[][512], int max)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int n = 0;
    while (n < max && fgets(lines[n], 512, f))
        n++;
    fclose(f);
    return n;
}

/* The line with its winner (the last field) swapped for the key's other candidate
 * (field 9, the candidate mask: bit 0 cuBLASLt, 1 tensor-core, 2 SIMT). */
static void flip_winner(const char *line, char *out, size_t size, char *flipped, size_t fsize)
{
    static const char *const names[3] = {"cuBLASLt", "tensor-core", "SIMT"};
    char copy[512], *field[16];
    int nf = 0;
    size_t l = strlen(line);
    assert_true(l < sizeof copy);
    memcpy(copy, line, l + 1);
    for (char *tok = strtok(copy, " \n"); tok && nf < 16; tok = strtok(NULL, " \n"))
        field[nf++] = tok;
    assert_int_equal(nf, 12);
    unsigned mask = (unsigned)atoi(field[8]);
    int other = -1;
    for (int c = 0; c < 3; c++)
        if (mask >> c & 1 && strcmp(names[c], field[11]) != 0)
            other = c;
    assert_true(other >= 0);
    size_t len = 0;
    for (int i = 0; i < 11; i++)
        len += (size_t)snprintf(out + len, size - len, "%s ", field[i]);
    snprintf(out + len, size - len, "%s\n", names[other]);
    snprintf(flipped, fsize, "%s", names[other]);
}

/* In a new context every case takes its choice from the autotune file, the one
 * `want` names, without measuring (run_case checks the results as always). */
static void expect_from_file(const mm_case *cases, int nc, char want[][32], const char *what)
{
    fab_context *ctx = fab_test_context();
    for (int i = 0; i < nc; i++) {
        run_case(ctx, &cases[i]);
        char w[32];
        if (log_lines() != 1 || log_count(": cached from file -> ") != 1)
            fail_msg("%s, case %d: want one \"cached from file\" line, got:\n%s", what, i, g_log);
        log_winner(w, sizeof w);
        if (strcmp(w, want[i]) != 0)
            fail_msg("%s, case %d: the file says %s, the call ran %s", what, i, want[i], w);
    }
    fab_context_destroy(ctx);
}

/* FAB_MATMUL_AUTOTUNE_FILE: a context appends each measurement to the file, a new
 * context (a new process, in real use) takes its choices from it without
 * measuring. The file decides: with every winner in it swapped for the other
 * candidate, the swapped one runs (and the results stay right). Lines of another
 * signature, or that do not parse, are skipped; a deterministic context ignores
 * the file; a file that cannot be created only means no file. */
static void test_autotune_file(void **state)
{
    (void)state;
    if (!on_cuda())
        return;
    char path[] = "/tmp/fab-autotune-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path); /* the first measurement creates it */
    setenv("FAB_MATMUL_AUTOTUNE_FILE", path, 1);
    fab_context *ctx = autotune_begin();
    if (!ctx)
        return;
    mm_case cases[8];
    int nc = autotune_cases(cases);
    char tuned[8][32], lines[16][512];
    g_capture = true;
    for (int i = 0; i < nc; i++) {
        run_case(ctx, &cases[i]);
        if (log_lines() != 1 || log_count(": tuned -> ") != 1)
            fail_msg("case %d: want one \"tuned\" line, got:\n%s", i, g_log);
        log_winner(tuned[i], sizeof tuned[i]);
    }
    fab_context_destroy(ctx);
    int nl = read_lines(path, lines, 16);
    if (nl != nc)
        fail_msg("%s holds %d lines after %d measurements", path, nl, nc);
    for (int i = 0; i < nl; i++) {
        size_t len = strlen(lines[i]), wl = strlen(tuned[i]);
        if (strncmp(lines[i], "fabriek-matmul-autotune-1 ", 26) != 0 || len < wl + 2 ||
            strncmp(lines[i] + len - wl - 1, tuned[i], wl) != 0 || lines[i][len - wl - 2] != ' ')
            fail_msg("line %d of %s does not end in its winner %s: %s", i, path, tuned[i], lines[i]);
    }

    /* a new context: every choice from the file, none measured */
    expect_from_file(cases, nc, tuned, "file as written");

    /* the file decides: winners swapped; ahead of them the original lines under
     * another signature, junk, an overlong line that ends in an original line, and
     * a line cut short, which must all be skipped; after them a repeat of an
     * original line (the first line of a key wins) and a last line without its
     * newline */
    char flipped[8][32];
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("not an autotune line\n\n", f);
    /* a line longer than any the library writes, whose tail from byte 1024 on (where
     * a 1 KiB line buffer would cut it) is a valid line: it must not be read as one */
    for (int i = 0; i < 1023; i++)
        fputc('x', f);
    fputs(lines[0], f);
    for (int i = 0; i < nl; i++) {
        const char *sig = strchr(lines[i], ' ') + 1;
        fprintf(f, "fabriek-matmul-autotune-1 other-device|cudart1%s", strchr(sig, ' '));
    }
    char cut[512];
    memcpy(cut, lines[0], sizeof cut);
    size_t half = strlen(cut) / 2;
    cut[half] = '\n';
    cut[half + 1] = 0;
    fputs(cut, f);
    for (int i = 0; i < nl; i++) {
        char out[512];
        flip_winner(lines[i], out, sizeof out, flipped[i], sizeof flipped[i]);
        fputs(out, f);
    }
    fputs(lines[0], f); /* unswapped again, but after: the first line of a key wins */
    fputs("fabriek-matmul-autotune-1 no newline at the end", f);
    fclose(f);
    expect_from_file(cases, nc, flipped, "swapped file");

    expect_deterministic_heuristic(cases, 1, 1, "deterministic, with a file");
    unlink(path);

    /* a file that cannot be created: measured as without one, and said so */
    setenv("FAB_MATMUL_AUTOTUNE_FILE", "/nonexistent-fab-dir/autotune.txt", 1);
    ctx = fab_test_context();
    run_case(ctx, &cases[0]);
    if (log_count(": tuned -> ") != 1 || log_count("cannot open FAB_MATMUL_AUTOTUNE_FILE") != 1)
        fail_msg("unwritable file: want a \"tuned\" line and a note, got:\n%s", g_log);
    fab_context_destroy(ctx);
    autotune_env_clear();
}

/* The cache holds 256 keys per context: the 257th new shape runs the heuristic
 * unmeasured, keys already in the cache keep their winner. */
static void test_autotune_cache_full(void **state)
{
    (void)state;
    if (!on_cuda())
        return;
    fab_context *ctx = autotune_begin();
    if (!ctx)
        return;
    const int64_t mmax = 257, n = 8, k = 8;
    double *v = malloc(sizeof(double) * (size_t)(mmax * k));
    assert_non_null(v);
    fab_test_fill_uniform(v, mmax * k, -1, 1);
    void *da = fab_test_upload(ctx, FAB_DTYPE_BF16, v, mmax * k, NULL);
    void *db = fab_test_upload(ctx, FAB_DTYPE_BF16, v, k * n, NULL);
    void *dc = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, mmax * n);
    for (int64_t m = 1; m <= mmax + 1; m++) {
        int64_t mr = m <= mmax ? m : 5; /* last: a key from the full cache */
        fab_matmul_params p;
        memset(&p, 0, sizeof p);
        int64_t sa[2] = {mr, k}, sb[2] = {k, n}, sc[2] = {mr, n};
        fab_tensor_make(da, FAB_DTYPE_BF16, 2, sa, &p.a);
        fab_tensor_make(db, FAB_DTYPE_BF16, 2, sb, &p.b);
        fab_tensor_make(dc, FAB_DTYPE_F32, 2, sc, &p.c);
        FILE *cap;
        int saved;
        capture_begin(&cap, &saved);
        fab_status s = fab_matmul(ctx, &p);
        capture_end(cap, saved);
        if (s != FAB_OK)
            fail_msg("m=%lld: %s: %s", (long long)mr, fab_status_name(s), fab_last_error());
        const char *want = m <= 256 ? ": tuned -> " : m == mmax ? ": heuristic (cache full) -> " : ": cached -> ";
        if (log_lines() != 1 || log_count(want) != 1)
            fail_msg("call %lld (m=%lld): want \"%s\", got:\n%s", (long long)m, (long long)mr, want, g_log);
    }
    double *out = malloc(sizeof(double) * (size_t)(5 * n));
    assert_non_null(out);
    fab_test_download(ctx, FAB_DTYPE_F32, dc, 5 * n, out);
    for (int64_t i = 0; i < 5; i++) /* bf16 inputs, f32 sums of 8 products */
        for (int64_t j = 0; j < n; j++) {
            double ref = 0;
            for (int64_t q = 0; q < k; q++)
                ref += (double)fab_bf16_to_f32(fab_f32_to_bf16((float)v[i * k + q])) *
                       (double)fab_bf16_to_f32(fab_f32_to_bf16((float)v[q * n + j]));
            if (!(fabs(out[i * n + j] - ref) <= 1e-5))
                fail_msg("c[%lld][%lld] = %g, want %g", (long long)i, (long long)j, out[i * n + j], ref);
        }
    free(out);
    free(v);
    fab_test_free(ctx, da);
    fab_test_free(ctx, db);
    fab_test_free(ctx, dc);
    fab_context_destroy(ctx);
    autotune_env_clear();
}

/* Empty products: m = 0 or n = 0 or an empty batch write nothing; dbias over no
 * rows is zero. */
static void test_empty(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    double v[64];
    fab_test_fill_uniform(v, 64, -1, 1);
    void *da = fab_test_upload(ctx, FAB_DTYPE_F32, v, 64, NULL);
    void *dc = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, 64);
    void *dg = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, 8);
    fab_matmul_params p;
    memset(&p, 0, sizeof p);
    int64_t sa[2] = {0, 8}, sb[2] = {8, 8}, sc[2] = {0, 8}, n = 8;
    assert_int_equal(fab_tensor_make(NULL, FAB_DTYPE_F32, 2, sa, &p.a), FAB_OK);
    assert_int_equal(fab_tensor_make(da, FAB_DTYPE_F32, 2, sb, &p.b), FAB_OK);
    assert_int_equal(fab_tensor_make(NULL, FAB_DTYPE_F32, 2, sc, &p.c), FAB_OK);
    mm_ok(ctx, &p, "m = 0");
    assert_int_equal(fab_tensor_make(dg, FAB_DTYPE_F32, 1, &n, &p.dbias), FAB_OK);
    mm_ok(ctx, &p, "m = 0 with dbias");
    double out[8], zero[8] = {0};
    fab_test_download(ctx, FAB_DTYPE_F32, dg, 8, out);
    for (int i = 0; i < 8; i++)
        if (out[i] != 0)
            fail_msg("dbias of an empty product: element %d is %g, want 0", i, out[i]);
    (void)zero;
    /* n = 0: nothing happens, C untouched */
    int64_t sa2[2] = {8, 8}, sb2[2] = {8, 0}, sc2[2] = {8, 0};
    memset(&p, 0, sizeof p);
    assert_int_equal(fab_tensor_make(da, FAB_DTYPE_F32, 2, sa2, &p.a), FAB_OK);
    assert_int_equal(fab_tensor_make(NULL, FAB_DTYPE_F32, 2, sb2, &p.b), FAB_OK);
    assert_int_equal(fab_tensor_make(dc, FAB_DTYPE_F32, 2, sc2, &p.c), FAB_OK);
    mm_ok(ctx, &p, "n = 0");
    double cb[64];
    fab_test_download(ctx, FAB_DTYPE_F32, dc, 64, cb);
    for (int i = 0; i < 64; i++)
        assert_true(isnan(cb[i]));
    fab_test_free(ctx, da);
    fab_test_free(ctx, dc);
    fab_test_free(ctx, dg);
    fab_context_destroy(ctx);
}

/* On the CPU a fused GELU is fab_gelu_forward / _backward itself (both take
 * kernels/activation/gelu_cpu_math.h): with an f32 C, C of the forward with bias
 * and GELU equals fab_gelu_forward of its pre_act bit for bit, and the backward
 * product times gelu'(pre_act) equals fab_gelu_backward of the plain product.
 * Odd m, n (vector loops' remainders) and pre-activations out to about +-10
 * (both tails); no NaN (whose sign may differ between the loops). */
static void test_cpu_fused_gelu(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    if (fab_context_backend(ctx) != FAB_BACKEND_CPU) {
        fab_context_destroy(ctx);
        print_message("SKIP: the bitwise claim is the CPU's (the CUDA epilogue and op take gelu_math.h)\n");
        skip();
    }
    const int64_t m = 37, n = 53, k = 64;
    double *x = malloc(sizeof(double) * (size_t)(m * k + k * n + n));
    assert_non_null(x);
    fab_test_fill_uniform(x, m * k + k * n + n, -1.2, 1.2);
    float *a = fab_test_upload(ctx, FAB_DTYPE_F32, x, m * k, NULL);
    float *b = fab_test_upload(ctx, FAB_DTYPE_F32, x + m * k, k * n, NULL);
    float *bias = fab_test_upload(ctx, FAB_DTYPE_F32, x + m * k + k * n, n, NULL);
    float *c = malloc(sizeof(float) * (size_t)(m * n)), *pre = malloc(sizeof(float) * (size_t)(m * n));
    float *op = malloc(sizeof(float) * (size_t)(m * n)), *plain = malloc(sizeof(float) * (size_t)(m * n));
    assert_true(c && pre && op && plain);
    int64_t sa[2] = {m, k}, sb[2] = {k, n}, sc[2] = {m, n};
    const fab_matmul_activation acts[2] = {FAB_MATMUL_ACT_GELU_TANH, FAB_MATMUL_ACT_GELU_ERF};
    const fab_gelu_approx approx[2] = {FAB_GELU_TANH, FAB_GELU_ERF};
    for (int v = 0; v < 2; v++) {
        fab_matmul_params p;
        memset(&p, 0, sizeof p);
        fab_tensor_make(a, FAB_DTYPE_F32, 2, sa, &p.a);
        fab_tensor_make(b, FAB_DTYPE_F32, 2, sb, &p.b);
        fab_tensor_make(c, FAB_DTYPE_F32, 2, sc, &p.c);
        fab_tensor_make(pre, FAB_DTYPE_F32, 2, sc, &p.pre_act);
        fab_tensor_make(bias, FAB_DTYPE_F32, 1, &n, &p.bias);
        p.activation = acts[v];
        mm_ok(ctx, &p, "fused GELU forward");
        float lo = 0, hi = 0;
        for (int64_t i = 0; i < m * n; i++)
            lo = pre[i] < lo ? pre[i] : lo, hi = pre[i] > hi ? pre[i] : hi;
        assert_true(lo < -6 && hi > 6); /* both tails */
        fab_gelu_params g;
        memset(&g, 0, sizeof g);
        fab_tensor_make(pre, FAB_DTYPE_F32, 2, sc, &g.x);
        fab_tensor_make(op, FAB_DTYPE_F32, 2, sc, &g.y);
        g.approximate = approx[v];
        assert_int_equal(fab_gelu_forward(ctx, &g), FAB_OK);
        if (memcmp(c, op, sizeof(float) * (size_t)(m * n)) != 0)
            fail_msg("%s: the fused forward differs from fab_gelu_forward of its pre_act",
                     v ? "GELU erf" : "GELU tanh");
        /* backward: plain product, then the fused one with activation_backward */
        memset(&p, 0, sizeof p);
        fab_tensor_make(a, FAB_DTYPE_F32, 2, sa, &p.a);
        fab_tensor_make(b, FAB_DTYPE_F32, 2, sb, &p.b);
        fab_tensor_make(plain, FAB_DTYPE_F32, 2, sc, &p.c);
        mm_ok(ctx, &p, "plain product");
        fab_tensor_make(c, FAB_DTYPE_F32, 2, sc, &p.c);
        fab_tensor_make(pre, FAB_DTYPE_F32, 2, sc, &p.pre_act);
        p.activation = acts[v];
        p.activation_backward = 1;
        mm_ok(ctx, &p, "fused GELU backward");
        fab_gelu_backward_params gb;
        memset(&gb, 0, sizeof gb);
        fab_tensor_make(pre, FAB_DTYPE_F32, 2, sc, &gb.x);
        fab_tensor_make(plain, FAB_DTYPE_F32, 2, sc, &gb.dy);
        fab_tensor_make(op, FAB_DTYPE_F32, 2, sc, &gb.dx);
        gb.approximate = approx[v];
        assert_int_equal(fab_gelu_backward(ctx, &gb), FAB_OK);
        if (memcmp(c, op, sizeof(float) * (size_t)(m * n)) != 0)
            fail_msg("%s: the fused backward differs from fab_gelu_backward of the product",
                     v ? "GELU erf" : "GELU tanh");
    }
    free(c), free(pre), free(op), free(plain), free(x);
    fab_test_free(ctx, a), fab_test_free(ctx, b), fab_test_free(ctx, bias);
    fab_context_destroy(ctx);
}

/* The CPU's bf16 path on AMX (matmul_amx.c), where this CPU has AMX-BF16 (the
 * device name says "amx-bf16"); test_values and the others run it too, and ctest's
 * matmul_no_amx_cpu runs them all again on the AVX-512 path. Here: shapes that cut
 * the 32-wide panels, the 32-deep chunks (odd k) and the 2048-deep k slices
 * unevenly, every transpose, epilogues, batches with broadcasts, and (a 64-byte
 * workspace) packed blocks smaller than the matrices, each against the float64
 * reference; and one product whose bits differ from the AVX-512 path's, so a
 * dispatch that never reached AMX would fail. */
static void test_cpu_amx(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    const char *off = getenv("FAB_MATMUL_CPU_AMX");
    if (off && strcmp(off, "0") == 0) {
        print_message("SKIP: FAB_MATMUL_CPU_AMX=0 turns the AMX path off\n");
        fab_context_destroy(ctx);
        skip();
    }
    if (on_cuda() || !strstr(fab_context_device_name(ctx), "amx-bf16")) {
        print_message("SKIP: %s has no AMX-BF16 path (a CPU without it, or the OS does not grant it)\n",
                      fab_context_device_name(ctx));
        fab_context_destroy(ctx);
        skip();
    }
    static const int64_t sizes[][3] = {{1, 1, 1},    {31, 33, 31},   {32, 32, 32},    {33, 31, 257},
                                       {64, 96, 256}, {65, 300, 513}, {257, 129, 33},  {300, 260, 520},
                                       {40, 70, 4133}, {33, 64, 2048}}; /* 3 slices, the last 37 deep; 1 slice */
    for (int si = 0; si < 10; si++)
        for (int t = 0; t < 4; t++) {
            mm_case c = plain(FAB_DTYPE_BF16, t & 2 ? FAB_DTYPE_F32 : FAB_DTYPE_BF16, sizes[si][0], sizes[si][1],
                              sizes[si][2], t & 1, t >> 1);
            c.pad = si & 1 ? 3 : 0;
            if (si == 5) { /* epilogues */
                c.act = t == 0 ? FAB_MATMUL_ACT_GELU_ERF : t == 1 ? FAB_MATMUL_ACT_RELU : FAB_MATMUL_ACT_GELU_TANH;
                c.bias = 1 + (t & 1);
                c.pre = t != 3;
                c.alpha = t == 2 ? 0.75f : 0.0f;
                c.beta = t == 2 ? 0.5f : 0.0f;
                c.dbias = t == 1 ? 2 : 0;
            }
            run_case(ctx, &c);
        }
    for (int v = 0; v < 4; v++) {
        mm_case c = plain(FAB_DTYPE_BF16, v & 1 ? FAB_DTYPE_BF16 : FAB_DTYPE_F32, 45 + v, 70, 300 + 40 * v, v & 1,
                          v >> 1);
        batched_variant(&c, v);
        c.pre_pad = c.pre ? 5 : 0; /* pre_act's row and batch strides not C's */
        run_case(ctx, &c);
    }
    mm_case g = plain(FAB_DTYPE_BF16, FAB_DTYPE_BF16, 67, 45, 129, 0, 1); /* DGELU */
    g.act = FAB_MATMUL_ACT_GELU_TANH;
    g.bwd = 1;
    g.dbias = 1;
    run_case(ctx, &g);

    /* the AVX-512 path's bits differ (another k order) */
    const int64_t m = 64, n = 64, k = 512;
    double *x = malloc(sizeof(double) * (size_t)(m * k + k * n));
    float *c0 = malloc(sizeof(float) * (size_t)(m * n)), *c1 = malloc(sizeof(float) * (size_t)(m * n));
    assert_true(x && c0 && c1);
    fab_test_fill_uniform(x, m * k + k * n, -1, 1);
    void *a = fab_test_upload(ctx, FAB_DTYPE_BF16, x, m * k, NULL);
    void *b = fab_test_upload(ctx, FAB_DTYPE_BF16, x + m * k, k * n, NULL);
    int64_t sa[2] = {m, k}, sb[2] = {k, n}, sc[2] = {m, n};
    fab_matmul_params p;
    memset(&p, 0, sizeof p);
    fab_tensor_make(a, FAB_DTYPE_BF16, 2, sa, &p.a);
    fab_tensor_make(b, FAB_DTYPE_BF16, 2, sb, &p.b);
    fab_tensor_make(c0, FAB_DTYPE_F32, 2, sc, &p.c);
    mm_ok(ctx, &p, "AMX product");
    setenv("FAB_MATMUL_CPU_AMX", "0", 1);
    fab_tensor_make(c1, FAB_DTYPE_F32, 2, sc, &p.c);
    mm_ok(ctx, &p, "AVX-512 product");
    unsetenv("FAB_MATMUL_CPU_AMX");
    int64_t differ = 0;
    for (int64_t i = 0; i < m * n; i++) {
        differ += c0[i] != c1[i];
        assert_true(fabs(c0[i] - c1[i]) <= 1e-4 * (1 + fabs(c1[i])));
    }
    print_message("AMX and AVX-512 products: %lld of %lld values differ in their last bits\n", (long long)differ,
                  (long long)(m * n));
    assert_true(differ > 0);
    free(x), free(c0), free(c1);
    fab_test_free(ctx, a), fab_test_free(ctx, b);
    fab_context_destroy(ctx);

    /* no workspace: packed blocks of two tasks a thread, several row or column blocks */
    fab_context_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.workspace_bytes = 64;
    ctx = fab_test_context_with(&cfg);
    mm_case c = plain(FAB_DTYPE_BF16, FAB_DTYPE_BF16, 300, 200, 1000, 0, 1);
    c.bias = 2;
    run_case(ctx, &c);
    c = plain(FAB_DTYPE_BF16, FAB_DTYPE_F32, 520, 130, 70, 1, 0);
    c.beta = 1.0f;
    run_case(ctx, &c);
    c = plain(FAB_DTYPE_BF16, FAB_DTYPE_F32, 200, 600, 300, 1, 1); /* column blocks */
    c.bias = 1;
    run_case(ctx, &c);
    fab_context_destroy(ctx);
}

/* ----------------------------------------------------------- bad arguments */

static void test_bad_arguments(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    enum { M = 8, K = 16, N = 12 };
    double v[M * K + K * N + 64];
    fab_test_fill_uniform(v, M * K + K * N + 64, -1, 1);
    void *da = fab_test_upload(ctx, FAB_DTYPE_F32, v, M * K, NULL);
    void *db = fab_test_upload(ctx, FAB_DTYPE_F32, v + M * K, K * N, NULL);
    void *dbias = fab_test_upload(ctx, FAB_DTYPE_F32, v, 64, NULL);
    void *dc = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, 4 * M * N);
    void *dp = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, M * N);
    void *dg = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, 64);
    static unsigned char before[4 * M * N * 4], after[4 * M * N * 4], gb[256], ga[256], pb[M * N * 4], pa[M * N * 4];
    fab_test_download_bytes(ctx, dc, sizeof before, before);
    fab_test_download_bytes(ctx, dg, sizeof gb, gb);
    fab_test_download_bytes(ctx, dp, sizeof pb, pb);

    fab_matmul_params good;
    memset(&good, 0, sizeof good);
    int64_t sa[2] = {M, K}, sb[2] = {K, N}, sc[2] = {M, N};
    assert_int_equal(fab_tensor_make(da, FAB_DTYPE_F32, 2, sa, &good.a), FAB_OK);
    assert_int_equal(fab_tensor_make(db, FAB_DTYPE_F32, 2, sb, &good.b), FAB_OK);
    assert_int_equal(fab_tensor_make(dc, FAB_DTYPE_F32, 2, sc, &good.c), FAB_OK);
    fab_matmul_params p;
    fab_tensor bias1, pre, dbv;
    int64_t nn = N, mm = M;
    assert_int_equal(fab_tensor_make(dbias, FAB_DTYPE_F32, 1, &nn, &bias1), FAB_OK);
    assert_int_equal(fab_tensor_make(dp, FAB_DTYPE_F32, 2, sc, &pre), FAB_OK);
    assert_int_equal(fab_tensor_make(dg, FAB_DTYPE_F32, 1, &nn, &dbv), FAB_OK);

#define EXPECT(mutation, status, needle)                             \
    do {                                                             \
        p = good;                                                    \
        mutation;                                                    \
        fab_test_expect_error(fab_matmul(ctx, &p), status, needle);  \
    } while (0)

    fab_test_expect_error(fab_matmul(NULL, &good), INVALID, "ctx is NULL");
    fab_test_expect_error(fab_matmul(ctx, NULL), INVALID, "params pointer is NULL");
    /* shapes */
    EXPECT(p.b.shape[0] = 15, INVALID, "b.shape[0]=15 must equal a.shape[1]=16");
    EXPECT(p.trans_b = FAB_OP_T, INVALID, "b.shape[1]=12 must equal a.shape[1]=16");
    EXPECT(p.c.shape[0] = 7, INVALID, "c.shape[0]=7 must equal a.shape[0]=8");
    EXPECT((p.c.shape[1] = 11, p.c.stride[0] = 11), INVALID, "c.shape[1]=11 must equal b.shape[1]=12");
    EXPECT(p.a.ndim = 1, INVALID, "a.ndim=1 must be >= 2");
    EXPECT(p.c.ndim = 9, INVALID, "c.ndim=9");
    EXPECT((p.a.ndim = 3, p.a.shape[0] = 2, p.a.shape[1] = M, p.a.shape[2] = K, p.a.stride[0] = M * K,
            p.a.stride[1] = K, p.a.stride[2] = 1),
           INVALID, "a.ndim=3 must be <= c.ndim=2");
    /* strides */
    EXPECT(p.a.stride[1] = 2, INVALID, "a.stride[1]=2 must be 1");
    EXPECT(p.b.stride[0] = 11, INVALID, "b.stride[0]=11 must be >= b.shape[1]=12");
    EXPECT(p.c.stride[0] = -1, INVALID, "c.stride[0]=-1");
    EXPECT((p.c.ndim = 3, p.c.shape[0] = 2, p.c.shape[1] = M, p.c.shape[2] = N, p.c.stride[0] = 0, p.c.stride[1] = N,
            p.c.stride[2] = 1),
           INVALID, "c.stride[0]=0 makes elements of c overlap");
    /* dtypes */
    EXPECT(p.b.dtype = FAB_DTYPE_BF16, UNSUPPORTED, "b.dtype=bf16 with a.dtype=f32 is not supported");
    EXPECT((p.a.dtype = FAB_DTYPE_I32, p.b.dtype = FAB_DTYPE_I32), UNSUPPORTED, "a.dtype=i32 is not supported");
    EXPECT((p.a.dtype = FAB_DTYPE_F8_E4M3, p.b.dtype = FAB_DTYPE_F8_E4M3), UNSUPPORTED, "a.dtype=f8_e4m3 is not supported");
    EXPECT(p.c.dtype = FAB_DTYPE_BF16, UNSUPPORTED, "c.dtype=bf16 with a.dtype=f32 is not supported");
    EXPECT(p.a.dtype = (fab_dtype)99, INVALID, "a.dtype=99");
    /* enums */
    EXPECT(p.trans_a = (fab_matmul_op)2, INVALID, "p.trans_a=2");
    EXPECT(p.trans_b = (fab_matmul_op)-1, INVALID, "p.trans_b=-1");
    EXPECT(p.activation = (fab_matmul_activation)4, INVALID, "p.activation=4");
    EXPECT(p.algo = (fab_matmul_algo)7, INVALID, "p.algo=7");
    EXPECT(p.precision = (fab_matmul_precision)3, INVALID, "p.precision=3");
    EXPECT(p.dbias_from = (fab_matmul_dbias_from)2, INVALID, "p.dbias_from=2");
    EXPECT(p.alpha = NAN, INVALID, "p.alpha and p.beta must not be NaN");
    EXPECT(p.activation_backward = 1, INVALID, "p.activation_backward needs p.activation");
    /* bias */
    EXPECT((p.bias = bias1, p.bias.shape[0] = N - 1), INVALID, "bias.shape[0]=11 must equal n=12");
    EXPECT((p.bias = bias1, p.bias.stride[0] = 2), INVALID, "bias.stride[0]=2 must be 1");
    EXPECT((p.bias = bias1, p.bias.dtype = FAB_DTYPE_F16), UNSUPPORTED, "bias.dtype=f16 is not supported");
    EXPECT((p.bias = bias1, p.bias.ndim = 2, p.bias.shape[0] = 1, p.bias.shape[1] = N, p.bias.stride[1] = 1), INVALID, "bias.ndim=2 must be 1");
    EXPECT((p.bias = bias1, p.bias.data = NULL), INVALID, "bias.data is NULL");
    EXPECT((p.bias = bias1, p.activation = FAB_MATMUL_ACT_RELU, p.activation_backward = 1, p.pre_act = pre), INVALID,
           "p.bias must be absent with p.activation_backward");
    /* pre_act */
    EXPECT(p.pre_act = pre, INVALID, "p.pre_act is given but p.activation is FAB_MATMUL_ACT_NONE");
    EXPECT((p.activation = FAB_MATMUL_ACT_GELU_ERF, p.activation_backward = 1), INVALID, "p.pre_act is required");
    EXPECT((p.activation = FAB_MATMUL_ACT_RELU, p.pre_act = pre, p.pre_act.shape[1] = N - 1), INVALID,
           "pre_act.shape[1]=11 must equal c.shape[1]=12");
    EXPECT((p.activation = FAB_MATMUL_ACT_RELU, p.pre_act = pre, p.pre_act.dtype = FAB_DTYPE_BF16), INVALID,
           "pre_act.dtype=bf16 must equal c.dtype=f32");
    /* dbias */
    EXPECT((p.dbias = dbv, p.dbias.shape[0] = M), INVALID, "dbias.shape[0]=8 must equal n (dbias_from C)=12");
    EXPECT((p.dbias = dbv, p.dbias_from = FAB_MATMUL_DBIAS_FROM_A), INVALID, "dbias.shape[0]=12 must equal m (dbias_from A)=8");
    /* aliasing */
    EXPECT(p.c.data = da, INVALID, "c overlaps a");
    EXPECT(p.c.data = (float *)db + 5, INVALID, "c overlaps b");
    EXPECT((p.bias = bias1, p.bias.data = (float *)dc + 3), INVALID, "c overlaps bias");
    EXPECT((p.activation = FAB_MATMUL_ACT_RELU, p.pre_act = pre, p.pre_act.data = (float *)dc + 1), INVALID, "c overlaps pre_act");
    EXPECT((p.activation = FAB_MATMUL_ACT_RELU, p.pre_act = pre, p.pre_act.data = db), INVALID, "pre_act overlaps b");
    EXPECT((p.dbias = dbv, p.dbias.data = (float *)dc + 2), INVALID, "dbias overlaps c");
    EXPECT((p.dbias = dbv, p.dbias.data = dp, p.activation = FAB_MATMUL_ACT_RELU, p.pre_act = pre), INVALID, "dbias overlaps pre_act");
    /* NULLs and alignment */
    EXPECT(p.a.data = NULL, INVALID, "a.data is NULL");
    EXPECT(p.c.data = NULL, INVALID, "c.data is NULL");
    EXPECT(p.b.data = (char *)db + 2, INVALID, "b.data");
    /* backend */
    if (!on_cuda())
        EXPECT(p.algo = FAB_MATMUL_ALGO_CUBLASLT, UNSUPPORTED, "FAB_MATMUL_ALGO_CUBLASLT needs a CUDA context");
    else {
        static float host_buf[M * K];
        EXPECT(p.a.data = host_buf, INVALID, "a.data");
    }
#undef EXPECT

    fab_matmul_bias_grad_params bg, q;
    memset(&bg, 0, sizeof bg);
    bg.dy = good.c;
    bg.dy.data = db; /* any readable [M, N] f32 */
    bg.dbias = dbv;
    fab_test_expect_error(fab_matmul_bias_grad(NULL, &bg), INVALID, "ctx is NULL");
    fab_test_expect_error(fab_matmul_bias_grad(ctx, NULL), INVALID, "params pointer is NULL");
    q = bg;
    q.dbias.shape[0] = N + 1;
    fab_test_expect_error(fab_matmul_bias_grad(ctx, &q), INVALID, "dbias.shape[0]=13 must equal dy's last dim=12");
    q = bg;
    q.dy.stride[1] = 3;
    fab_test_expect_error(fab_matmul_bias_grad(ctx, &q), INVALID, "dy.stride[1]=3 must be 1");
    q = bg;
    q.dy.dtype = FAB_DTYPE_I64;
    fab_test_expect_error(fab_matmul_bias_grad(ctx, &q), UNSUPPORTED, "dy.dtype=i64 is not supported");
    q = bg;
    q.dbias.data = (float *)db + 4;
    fab_test_expect_error(fab_matmul_bias_grad(ctx, &q), INVALID, "dbias overlaps dy");
    q = bg;
    q.dbias.dtype = FAB_DTYPE_F16;
    fab_test_expect_error(fab_matmul_bias_grad(ctx, &q), UNSUPPORTED, "dbias.dtype=f16 is not supported");

    /* nothing written by any rejected call */
    fab_test_download_bytes(ctx, dc, sizeof after, after);
    assert_memory_equal(before, after, sizeof before);
    fab_test_download_bytes(ctx, dg, sizeof ga, ga);
    assert_memory_equal(gb, ga, sizeof gb);
    fab_test_download_bytes(ctx, dp, sizeof pa, pa);
    assert_memory_equal(pb, pa, sizeof pb);
    (void)mm;
    void *bufs[] = {da, db, dbias, dc, dp, dg};
    for (int i = 0; i < 6; i++)
        fab_test_free(ctx, bufs[i]);
    fab_context_destroy(ctx);
}

int main(int argc, char **argv)
{
    fab_test_init(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_tf32),
        cmocka_unit_test(test_tf32_rounding),
        cmocka_unit_test(test_tensor_core_shapes),
        cmocka_unit_test(test_tensor_core_tiles),
        cmocka_unit_test(test_sm90_kernel),
        cmocka_unit_test_teardown(test_sm90_persistent, restore_sm90_settings),
        cmocka_unit_test_teardown(test_sm90_pingpong, restore_sm90_settings),
        cmocka_unit_test(test_epilogues),
        cmocka_unit_test(test_epilogue_widths),
        cmocka_unit_test(test_batched_strided),
        cmocka_unit_test(test_interleaved),
        cmocka_unit_test(test_gradcheck),
        cmocka_unit_test(test_bias_grad),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_autotune),
        cmocka_unit_test(test_autotune_cache_full),
        cmocka_unit_test(test_autotune_file),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_cpu_fused_gelu),
        cmocka_unit_test(test_cpu_amx),
        cmocka_unit_test(test_bad_arguments),
    };
    return fab_test_run(tests);
}
