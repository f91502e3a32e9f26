/*
 * test_comm.c: communicators, collectives, gradient exchange and ZeRO-1.
 *
 * One binary, three ways to run:
 *   test_comm --backend cpu                 one process, single-rank communicator (label cpu)
 *   test_comm --backend cuda                one process, one-GPU NCCL communicator (label gpu;
 *                                           skips without a GPU; label emu: the emulator's NCCL)
 *   mpirun -np P test_comm --backend cpu --mpi   P ranks over MPI (label mpi)
 *   mpirun -np P test_comm --backend cuda --mpi  P ranks over NCCL, bootstrapped by MPI (in an
 *                                           emulated build: the emulator's NCCL, label emu)
 * Every rank computes the expected result of every collective locally from the
 * values all ranks are known to contribute. Values are multiples of 1/4 below 64 in
 * magnitude, so sums over up to 4 ranks are exact in every dtype, bf16 included,
 * whatever order the transport reduces in.
 */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"

#include <float.h>
#include <math.h>
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef FAB_TEST_MPI
#include <mpi.h>

#include "fabriek_mpi.h"
#endif

#define INVALID FAB_ERR_INVALID_ARGUMENT

static int use_mpi, nranks = 1, my_rank;
static uint64_t seed;

static const fab_dtype all_dtypes[] = {FAB_DTYPE_F32, FAB_DTYPE_F16, FAB_DTYPE_BF16,
                                       FAB_DTYPE_F64, FAB_DTYPE_I32, FAB_DTYPE_I64};
#define NDTYPES (int)(sizeof all_dtypes / sizeof all_dtypes[0])
static const int64_t sizes[] = {1, 7, 127, 1029};
#define NSIZES (int)(sizeof sizes / sizeof sizes[0])

#ifdef FAB_TEST_MPI /* the fault tests, which need several ranks */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
#endif

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int is_int(fab_dtype d) { return d == FAB_DTYPE_I32 || d == FAB_DTYPE_I64; }

/* What rank r contributes at element i of the collective tagged `salt`. */
static double val(int r, int64_t i, uint64_t salt, fab_dtype d)
{
    uint64_t h = mix(seed ^ mix(salt * 1000003u + (uint64_t)r * 7919u + (uint64_t)i * 104729u));
    int k = (int)(h % 129) - 64;
    if (k == 0)
        k = 1; /* never zero */
    return is_int(d) ? k : k / 4.0;
}

static double combine(double a, double b, fab_reduce_op op)
{
    return op == FAB_REDUCE_MAX ? fmax(a, b) : op == FAB_REDUCE_MIN ? fmin(a, b) : a + b;
}

static double reduce_ref(int64_t i, uint64_t salt, fab_dtype d, fab_reduce_op op)
{
    double acc = val(0, i, salt, d);
    for (int r = 1; r < nranks; r++)
        acc = combine(acc, val(r, i, salt, d), op);
    return op == FAB_REDUCE_AVG ? acc / nranks : acc;
}

/* This rank's f32 values for collective `salt` and their sum over the ranks. */
static void summed_values(uint64_t salt, int64_t n, double *mine, double *sum)
{
    for (int64_t i = 0; i < n; i++) {
        mine[i] = val(my_rank, i, salt, FAB_DTYPE_F32);
        sum[i] = reduce_ref(i, salt, FAB_DTYPE_F32, FAB_REDUCE_SUM);
    }
}

/* The test's context. Under mpirun with the CUDA backend each rank takes the GPU
 * of its node-local rank (device 0 when the job shows each rank only one). */
static fab_context *comm_ctx(void)
{
#ifdef FAB_TEST_MPI
    if (use_mpi && fab_test_backend() == FAB_BACKEND_CUDA) {
        int local = 0;
        fab_context_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.backend = FAB_BACKEND_CUDA;
        fab_context *ctx = NULL;
        if (fab_mpi_local_rank(MPI_COMM_WORLD, &local) == FAB_OK) {
            cfg.device = local;
            if (fab_context_create(&cfg, &ctx) == FAB_OK)
                return ctx;
        }
    }
#endif
    return fab_test_context();
}

/* A CUDA communicator of a build with NCCL must be NCCL's, or these tests would
 * pass on the single-rank copy transport and prove nothing about NCCL. */
static void check_transport(fab_context *ctx, fab_comm *c)
{
    const char *transport = NULL;
    fab_comm_native(c, &transport, NULL);
    if (fab_context_backend(ctx) == FAB_BACKEND_CUDA && strstr(fab_build_info(), "NCCL ON") &&
        strcmp(transport, "nccl") != 0)
        fail_msg("a CUDA communicator runs on \"%s\", not NCCL, in a build with NCCL (%s)", transport,
                 fab_build_info());
}

static fab_comm *make_comm(fab_context *ctx, double timeout, int debug)
{
    fab_comm_config cfg = {timeout, debug};
    fab_comm *c = NULL;
    fab_status s;
#ifdef FAB_TEST_MPI
    if (use_mpi) {
        s = fab_comm_create_mpi(ctx, MPI_COMM_WORLD, &cfg, &c);
        if (s != FAB_OK)
            fail_msg("fab_comm_create_mpi: %s: %s", fab_status_name(s), fab_last_error());
        check_transport(ctx, c);
        return c;
    }
#endif
    fab_comm_unique_id id;
    s = fab_comm_get_unique_id(ctx, &id);
    if (s == FAB_OK)
        s = fab_comm_create(ctx, 1, 0, &id, &cfg, &c);
    if (s != FAB_OK)
        fail_msg("fab_comm_create: %s: %s", fab_status_name(s), fab_last_error());
    check_transport(ctx, c);
    return c;
}

static fab_tensor tensor1(void *data, fab_dtype d, int64_t n)
{
    fab_tensor t;
    assert_int_equal(fab_tensor_make(data, d, 1, &n, &t), FAB_OK);
    return t;
}

static void expect_ok(fab_status s, const char *what)
{
    if (s != FAB_OK)
        fail_msg("%s: %s: %s", what, fab_status_name(s), fab_last_error());
}

/* Downloads n elements of dtype d and compares them with ref, with the tolerance
 * of dtype `tol_dtype` (the dtype the values travelled in). */
/* mag: the scale of each element's error (NULL: ref itself) */
static void check_values_tol(const char *what, fab_context *ctx, fab_dtype d, const void *dev, const double *ref,
                             const double *mag, int64_t n, fab_tolerance tol)
{
    double *out = malloc(sizeof(double) * (size_t)n);
    assert_non_null(out);
    fab_test_download(ctx, d, dev, n, out);
    fab_test_check_close_mag(what, out, ref, mag ? mag : ref, n, tol);
    free(out);
}

static void check_values_as(const char *what, fab_context *ctx, fab_dtype d, fab_dtype tol_dtype, const void *dev,
                            const double *ref, int64_t n)
{
    fab_tolerance tol = fab_test_tolerance(tol_dtype);
    if (is_int(d) || d == FAB_DTYPE_F64)
        tol.atol = tol.rtol = tol.rel = 0; /* exact */
    check_values_tol(what, ctx, d, dev, ref, NULL, n, tol);
}

static void check_values(const char *what, fab_context *ctx, fab_dtype d, const void *dev, const double *ref,
                         int64_t n)
{
    check_values_as(what, ctx, d, d, dev, ref, n);
}

/* ------------------------------------------------------------- collectives */

enum { K_ALLREDUCE, K_REDUCE_SCATTER, K_ALLGATHER, K_BROADCAST };
static const char *kind_names[] = {"allreduce", "reduce_scatter", "allgather", "broadcast"};

/* Runs one collective (kind, dtype, op or root, count n per NCCL's counting,
 * in place or not) and checks every rank's result. */
static void run_collective(fab_context *ctx, fab_comm *comm, int kind, fab_dtype d, int op_or_root, int64_t n,
                           int in_place, uint64_t salt)
{
    char what[160];
    fab_reduce_op op = (fab_reduce_op)op_or_root;
    int root = op_or_root;
    int64_t ns = kind == K_REDUCE_SCATTER ? n * nranks : n; /* send elements */
    int64_t nr = kind == K_ALLGATHER ? n * nranks : n;      /* recv elements */
    double *send = malloc(sizeof(double) * (size_t)ns), *ref = malloc(sizeof(double) * (size_t)nr);
    assert_true(send && ref);
    for (int64_t i = 0; i < ns; i++)
        send[i] = val(my_rank, i, salt, d);
    switch (kind) {
    case K_ALLREDUCE:
        for (int64_t i = 0; i < n; i++)
            ref[i] = reduce_ref(i, salt, d, op);
        break;
    case K_REDUCE_SCATTER:
        for (int64_t i = 0; i < n; i++)
            ref[i] = reduce_ref((int64_t)my_rank * n + i, salt, d, op);
        break;
    case K_ALLGATHER:
        for (int r = 0; r < nranks; r++)
            for (int64_t i = 0; i < n; i++)
                ref[r * n + i] = val(r, i, salt, d);
        break;
    case K_BROADCAST:
        for (int64_t i = 0; i < n; i++)
            ref[i] = val(root, i, salt, d);
        break;
    }
    size_t es = fab_dtype_size(d);
    void *sdev = NULL, *rdev = NULL;
    fab_tensor st, rt;
    if (!in_place) {
        sdev = fab_test_upload(ctx, d, send, ns, NULL);
        rdev = fab_test_alloc_poisoned(ctx, d, nr);
        st = tensor1(sdev, d, ns);
        rt = tensor1(rdev, d, nr);
    } else if (kind == K_ALLGATHER) { /* send is this rank's slot of recv */
        double *full = malloc(sizeof(double) * (size_t)nr);
        for (int64_t i = 0; i < nr; i++)
            full[i] = NAN;
        if (is_int(d))
            for (int64_t i = 0; i < nr; i++)
                full[i] = -12345;
        memcpy(full + (int64_t)my_rank * n, send, sizeof(double) * (size_t)n);
        rdev = fab_test_upload(ctx, d, full, nr, NULL);
        free(full);
        rt = tensor1(rdev, d, nr);
        st = tensor1((char *)rdev + (size_t)my_rank * (size_t)n * es, d, n);
    } else { /* allreduce/broadcast: same buffer; reduce_scatter: recv is this rank's slice */
        sdev = fab_test_upload(ctx, d, send, ns, NULL);
        st = tensor1(sdev, d, ns);
        rt = kind == K_REDUCE_SCATTER ? tensor1((char *)sdev + (size_t)my_rank * (size_t)n * es, d, n) : st;
    }
    fab_status s = FAB_OK;
    switch (kind) {
    case K_ALLREDUCE: s = fab_allreduce(comm, &st, &rt, op); break;
    case K_REDUCE_SCATTER: s = fab_reduce_scatter(comm, &st, &rt, op); break;
    case K_ALLGATHER: s = fab_allgather(comm, &st, &rt); break;
    case K_BROADCAST: s = fab_broadcast(comm, my_rank == root || in_place ? &st : NULL, &rt, root); break;
    }
    snprintf(what, sizeof what, "%s %s %s%d n=%lld%s", kind_names[kind], fab_dtype_name(d),
             kind == K_BROADCAST ? "root=" : "op=", op_or_root, (long long)n, in_place ? " in place" : "");
    if (s != FAB_OK)
        fail_msg("%s: %s: %s", what, fab_status_name(s), fab_last_error());
    /* f64 is exact, but for AVG on NCCL: ncclAvg premultiplies every value by 1/p
     * rounded to f64 (exact only where p is a power of two) and sums the products,
     * so the result is within a few ulps of sum(|x|)/p of sum/p, not its correct
     * rounding */
    const char *transport = "";
    fab_comm_native(comm, &transport, NULL);
    if (d == FAB_DTYPE_F64 && op == FAB_REDUCE_AVG && (kind == K_ALLREDUCE || kind == K_REDUCE_SCATTER) &&
        (nranks & (nranks - 1)) != 0 && !strcmp(transport, "nccl")) {
        double *mag = malloc(sizeof(double) * (size_t)nr);
        assert_non_null(mag);
        for (int64_t i = 0; i < nr; i++) {
            int64_t e = kind == K_REDUCE_SCATTER ? (int64_t)my_rank * n + i : i;
            mag[i] = 0;
            for (int r = 0; r < nranks; r++)
                mag[i] += fabs(val(r, e, salt, d)) / nranks;
        }
        fab_tolerance ulps = {0, 2.0 * nranks * DBL_EPSILON, 2.0 * nranks * DBL_EPSILON};
        check_values_tol(what, ctx, d, rt.data, ref, mag, nr, ulps);
        free(mag);
    } else {
        check_values(what, ctx, d, rt.data, ref, nr);
    }
    if (in_place && kind == K_REDUCE_SCATTER) { /* the other slices of send keep their values */
        char what2[240];
        for (int r = 0; r < nranks; r++) {
            if (r == my_rank)
                continue;
            snprintf(what2, sizeof what2, "%s: send slice %d (not this rank's) after the call", what, r);
            check_values(what2, ctx, d, (char *)sdev + (size_t)r * (size_t)n * es, send + (int64_t)r * n, n);
        }
    }
    fab_test_free(ctx, sdev);
    fab_test_free(ctx, rdev);
    free(send);
    free(ref);
}

static void test_collectives(void **state)
{
    (void)state;
    fab_context *ctx = comm_ctx();
    fab_comm *comm = make_comm(ctx, 30, 0);
    uint64_t salt = 1;
    for (int di = 0; di < NDTYPES; di++) {
        fab_dtype d = all_dtypes[di];
        for (int si = 0; si < NSIZES; si++) {
            int64_t n = sizes[si];
            for (int ip = 0; ip < 2; ip++) {
                for (int op = FAB_REDUCE_SUM; op <= FAB_REDUCE_MIN; op++) {
                    if (op == FAB_REDUCE_AVG && is_int(d))
                        continue;
                    run_collective(ctx, comm, K_ALLREDUCE, d, op, n, ip, salt++);
                    run_collective(ctx, comm, K_REDUCE_SCATTER, d, op, n, ip, salt++);
                }
                run_collective(ctx, comm, K_ALLGATHER, d, 0, n, ip, salt++);
                run_collective(ctx, comm, K_BROADCAST, d, 0, n, ip, salt++);
                run_collective(ctx, comm, K_BROADCAST, d, nranks - 1, n, ip, salt++);
            }
        }
    }
    /* Past the MPI transport's ring threshold (64 KiB) at its default message
     * sizes: all-gather's whole-segment messages, all-reduce's chunks. */
    static const fab_dtype big_dtypes[2] = {FAB_DTYPE_F32, FAB_DTYPE_BF16};
    for (int di = 0; di < 2; di++)
        for (int ip = 0; ip < 2; ip++) {
            const int64_t n = 40001;
            run_collective(ctx, comm, K_ALLREDUCE, big_dtypes[di], FAB_REDUCE_SUM, n, ip, salt++);
            run_collective(ctx, comm, K_REDUCE_SCATTER, big_dtypes[di], FAB_REDUCE_SUM, n, ip, salt++);
            run_collective(ctx, comm, K_ALLGATHER, big_dtypes[di], 0, n, ip, salt++);
            run_collective(ctx, comm, K_BROADCAST, big_dtypes[di], 0, n, ip, salt++);
        }
    expect_ok(fab_barrier(comm), "fab_barrier");
    expect_ok(fab_comm_synchronize(comm), "fab_comm_synchronize");
    expect_ok(fab_comm_destroy(comm), "fab_comm_destroy");
    fab_context_destroy(ctx);
}

/* Empty tensors are valid and move nothing. */
static void test_empty(void **state)
{
    (void)state;
    fab_context *ctx = comm_ctx();
    fab_comm *comm = make_comm(ctx, 30, 0);
    fab_tensor e = tensor1(NULL, FAB_DTYPE_F32, 0);
    expect_ok(fab_allreduce(comm, &e, &e, FAB_REDUCE_SUM), "empty allreduce");
    expect_ok(fab_allgather(comm, &e, &e), "empty allgather");
    expect_ok(fab_comm_destroy(comm), "fab_comm_destroy");
    fab_context_destroy(ctx);
}

static void test_group(void **state)
{
    (void)state;
    fab_context *ctx = comm_ctx();
    fab_comm *comm = make_comm(ctx, 30, 0);
    const int64_t n = 77;
    double a[77], b[77], ra[77], *rb = malloc(sizeof(double) * 77 * (size_t)nranks);
    assert_non_null(rb);
    for (int64_t i = 0; i < n; i++) {
        a[i] = val(my_rank, i, 901, FAB_DTYPE_F32);
        b[i] = val(my_rank, i, 902, FAB_DTYPE_BF16);
        ra[i] = reduce_ref(i, 901, FAB_DTYPE_F32, FAB_REDUCE_MAX);
    }
    for (int r = 0; r < nranks; r++)
        for (int64_t i = 0; i < n; i++)
            rb[r * n + i] = val(r, i, 902, FAB_DTYPE_BF16);
    void *da = fab_test_upload(ctx, FAB_DTYPE_F32, a, n, NULL);
    void *db = fab_test_upload(ctx, FAB_DTYPE_BF16, b, n, NULL);
    void *dg = fab_test_alloc_poisoned(ctx, FAB_DTYPE_BF16, n * nranks);
    fab_tensor ta = tensor1(da, FAB_DTYPE_F32, n), tb = tensor1(db, FAB_DTYPE_BF16, n);
    fab_tensor tg = tensor1(dg, FAB_DTYPE_BF16, n * nranks);
    expect_ok(fab_comm_group_start(comm), "group_start");
    expect_ok(fab_comm_group_start(comm), "nested group_start");
    expect_ok(fab_allreduce(comm, &ta, &ta, FAB_REDUCE_MAX), "grouped allreduce");
    expect_ok(fab_comm_group_end(comm), "nested group_end");
    expect_ok(fab_allgather(comm, &tb, &tg), "grouped allgather");
    fab_test_expect_error(fab_barrier(comm), INVALID, "not inside");
    expect_ok(fab_comm_group_end(comm), "group_end");
    check_values("grouped allreduce max", ctx, FAB_DTYPE_F32, da, ra, n);
    check_values("grouped allgather bf16", ctx, FAB_DTYPE_BF16, dg, rb, n * nranks);
    free(rb);
    fab_test_expect_error(fab_comm_group_end(comm), INVALID, "no fab_comm_group_start is open");
    fab_test_free(ctx, da);
    fab_test_free(ctx, db);
    fab_test_free(ctx, dg);
    expect_ok(fab_comm_destroy(comm), "fab_comm_destroy");
    fab_context_destroy(ctx);
}

/* Even and odd ranks split into two communicators; the last rank opts out when
 * there are more than two. */
static void test_split(void **state)
{
    (void)state;
    fab_context *ctx = comm_ctx();
    fab_comm *comm = make_comm(ctx, 30, 0);
    int opt_out = nranks > 2 && my_rank == nranks - 1;
    int color = opt_out ? FAB_COMM_NO_COLOR : my_rank % 2;
    fab_comm *sub = (fab_comm *)1;
    expect_ok(fab_comm_split(comm, color, -my_rank, NULL, &sub), "fab_comm_split");
    if (opt_out) {
        assert_null(sub);
    } else {
        assert_non_null(sub);
        int srank = -1, ssize = 0, members[4], nm = 0;
        for (int r = 0; r < nranks; r++)
            if (!(nranks > 2 && r == nranks - 1) && r % 2 == color)
                members[nm++] = r;
        expect_ok(fab_comm_rank(sub, &srank), "fab_comm_rank");
        expect_ok(fab_comm_size(sub, &ssize), "fab_comm_size");
        assert_int_equal(ssize, nm);
        /* key = -rank: reversed order */
        assert_int_equal(members[nm - 1 - srank], my_rank);
        double x = my_rank + 1, want = 0;
        for (int i = 0; i < nm; i++)
            want += members[i] + 1;
        void *dx = fab_test_upload(ctx, FAB_DTYPE_F64, &x, 1, NULL);
        fab_tensor t = tensor1(dx, FAB_DTYPE_F64, 1);
        expect_ok(fab_allreduce(sub, &t, &t, FAB_REDUCE_SUM), "allreduce on the split communicator");
        check_values("split allreduce", ctx, FAB_DTYPE_F64, dx, &want, 1);
        fab_test_free(ctx, dx);
        expect_ok(fab_comm_destroy(sub), "destroy split");
    }
    expect_ok(fab_barrier(comm), "fab_barrier");
    expect_ok(fab_comm_destroy(comm), "fab_comm_destroy");
    fab_context_destroy(ctx);
}

#ifdef FAB_TEST_MPI
/* A rank that calls fab_comm_split only after the others have timed out: they
 * get FAB_ERR_TIMEOUT within the timeout (MPI_Comm_split would wait for it
 * forever), and so does the late rank (its all-gather completes, the others' requests
 * being live, but they are gone: it must not wait for them in
 * MPI_Comm_create_group). */
static void test_split_timeout(void **state)
{
    (void)state;
    if (nranks < 2 || fab_test_backend() != FAB_BACKEND_CPU)
        skip();
    fab_context *ctx = comm_ctx();
    const double timeout = 1.0, slack = 1.5;
    fab_comm *comm = make_comm(ctx, timeout, 0);
    const int late = my_rank == nranks - 1;
    if (late)
        MPI_Barrier(MPI_COMM_WORLD); /* after the others' timeouts */
    fab_comm *sub = (fab_comm *)1;
    double t0 = now_s();
    fab_status s = fab_comm_split(comm, 0, my_rank, NULL, &sub);
    double dt = now_s() - t0;
    fab_test_expect_error(s, FAB_ERR_TIMEOUT, "did not complete within 1 s");
    assert_null(sub);
    if (dt < timeout || dt > timeout + slack)
        fail_msg("%s rank timed out after %.3f s; expected within [%g, %g] s", late ? "the late" : "an on-time", dt,
                 timeout, timeout + slack);
    if (!late)
        MPI_Barrier(MPI_COMM_WORLD); /* lets the late rank start; MPI progresses meanwhile */
    MPI_Barrier(MPI_COMM_WORLD);
    fab_comm_destroy(comm);
    fab_context_destroy(ctx);
}
#endif

/* ----------------------------------------------------------- gradient sync */

typedef struct layout {
    int ngrads;
    int64_t n[16];
    fab_dtype d[16];
} layout;

static uint64_t lrng;
static uint64_t lrand(void) { return lrng = mix(lrng); }

/* Writes n values (rounded to d) into existing memory of the context. */
static void fill_dev(fab_context *ctx, fab_dtype d, void *dev, const double *v, int64_t n)
{
    size_t es = fab_dtype_size(d);
    unsigned char *h = malloc(es * (size_t)(n ? n : 1));
    assert_non_null(h);
    for (int64_t i = 0; i < n; i++) {
        unsigned char *p = h + es * (size_t)i;
        float f = (float)v[i];
        uint16_t u;
        int32_t i32 = (int32_t)v[i];
        int64_t i64 = (int64_t)v[i];
        switch (d) {
        case FAB_DTYPE_F32: memcpy(p, &f, 4); break;
        case FAB_DTYPE_F64: memcpy(p, &v[i], 8); break;
        case FAB_DTYPE_I32: memcpy(p, &i32, 4); break;
        case FAB_DTYPE_I64: memcpy(p, &i64, 8); break;
        case FAB_DTYPE_BF16: u = fab_f32_to_bf16(f); memcpy(p, &u, 2); break;
        default: u = fab_f32_to_f16(f); memcpy(p, &u, 2); break;
        }
    }
    expect_ok(fab_copy(ctx, dev, h, es * (size_t)n), "fab_copy");
    expect_ok(fab_synchronize(ctx), "fab_synchronize");
    free(h);
}

/* Registers a random layout, runs passes (an accumulation step first) with a random
 * ready order per rank, and checks each gradient is the average (or sum) over ranks
 * of what each rank held; after the accumulation step, that nothing moved.
 * flat: the gradients are slices of one buffer in registration order, so buckets
 * are all-reduced in place (padding only where a dtype's alignment needs it). */
static void run_grad_sync(fab_context *ctx, fab_comm *comm, int trial, int sum, int bf16, int flat)
{
    lrng = seed ^ mix((uint64_t)(trial * 31 + sum * 7 + bf16)); /* same layout on every rank */
    layout L;
    L.ngrads = 1 + (int)(lrand() % 12);
    for (int g = 0; g < L.ngrads; g++) {
        uint64_t r = lrand();
        L.n[g] = r % 5 == 0 ? 1 + (int64_t)(lrand() % 3) : 1 + (int64_t)(lrand() % 3000);
        L.d[g] = bf16 ? FAB_DTYPE_F32 : r % 3 == 0 ? FAB_DTYPE_BF16 : r % 7 == 0 ? FAB_DTYPE_F16 : FAB_DTYPE_F32;
    }
    fab_grad_sync_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.first_bucket_bytes = 64 + lrand() % 2048;
    cfg.bucket_cap_bytes = cfg.first_bucket_bytes + lrand() % 8192;
    cfg.sum = sum;
    cfg.reduce_bf16 = bf16;
    if (trial == 0) /* the defaults once */
        cfg.first_bucket_bytes = cfg.bucket_cap_bytes = 0;
    fab_grad_sync *gs = NULL;
    expect_ok(fab_grad_sync_create(comm, &cfg, &gs), "fab_grad_sync_create");
    void *dev[16], *flat_buf = NULL;
    size_t off[16], end = 0;
    for (int g = 0; g < L.ngrads; g++) {
        size_t es = fab_dtype_size(L.d[g]);
        off[g] = (end + es - 1) / es * es;
        end = off[g] + (size_t)L.n[g] * es;
    }
    if (flat)
        flat_buf = fab_test_alloc_poisoned(ctx, FAB_DTYPE_I32, (int64_t)(end + 3) / 4); /* all bits set: NaN */
    for (int g = 0; g < L.ngrads; g++) {
        dev[g] = flat ? (char *)flat_buf + off[g] : fab_test_alloc_poisoned(ctx, L.d[g], L.n[g]);
        fab_tensor t = tensor1(dev[g], L.d[g], L.n[g]);
        int idx = -1;
        expect_ok(fab_grad_sync_register(gs, &t, &idx), "fab_grad_sync_register");
        assert_int_equal(idx, g);
    }
    int nb = 0, prev = -1;
    for (int g = 0; g < L.ngrads; g++) {
        int b = -1;
        expect_ok(fab_grad_sync_bucket_of(gs, g, &b, &nb), "fab_grad_sync_bucket_of");
        assert_true(b == prev || b == prev + 1); /* buckets follow registration order */
        prev = b;
    }
    assert_true(nb >= 1 && nb <= L.ngrads);
    uint64_t orng = mix(seed ^ mix((uint64_t)my_rank * 977 + (uint64_t)trial)); /* this rank's ready order */
    for (int step = 0; step < 3; step++) {
        int communicate = step != 0;
        uint64_t salt = 5000 + (uint64_t)trial * 10 + (uint64_t)step;
        for (int g = 0; g < L.ngrads; g++) { /* "backward" writes this rank's gradients */
            double *h = malloc(sizeof(double) * (size_t)L.n[g]);
            for (int64_t i = 0; i < L.n[g]; i++)
                h[i] = val(my_rank, i, salt * 16 + (uint64_t)g, L.d[g]);
            fill_dev(ctx, L.d[g], dev[g], h, L.n[g]);
            free(h);
        }
        int order[16];
        for (int g = 0; g < L.ngrads; g++)
            order[g] = g;
        for (int g = L.ngrads - 1; g > 0; g--) {
            orng = mix(orng);
            int j = (int)(orng % (uint64_t)(g + 1)), t = order[g];
            order[g] = order[j];
            order[j] = t;
        }
        expect_ok(fab_grad_sync_begin(gs, communicate), "fab_grad_sync_begin");
        for (int g = 0; g < L.ngrads; g++)
            expect_ok(fab_grad_sync_ready(gs, order[g]), "fab_grad_sync_ready");
        expect_ok(fab_grad_sync_wait(gs), "fab_grad_sync_wait");
        for (int g = 0; g < L.ngrads; g++) {
            double *ref = malloc(sizeof(double) * (size_t)L.n[g]);
            for (int64_t i = 0; i < L.n[g]; i++) {
                uint64_t vs = salt * 16 + (uint64_t)g;
                if (!communicate) {
                    ref[i] = val(my_rank, i, vs, L.d[g]);
                    continue;
                }
                double acc = 0;
                for (int r = 0; r < nranks; r++)
                    acc += val(r, i, vs, L.d[g]);
                ref[i] = sum ? acc : acc / nranks;
            }
            char what[128];
            snprintf(what, sizeof what, "grad_sync trial %d step %d grad %d/%d (%s n=%lld, %d buckets)%s%s", trial,
                     step, g, L.ngrads, fab_dtype_name(L.d[g]), (long long)L.n[g], nb, sum ? " sum" : " avg",
                     bf16 ? " bf16" : "");
            check_values_as(what, ctx, L.d[g], bf16 && communicate ? FAB_DTYPE_BF16 : L.d[g], dev[g], ref, L.n[g]);
            free(ref);
        }
    }
    fab_grad_sync_destroy(gs);
    if (flat) { /* the alignment padding between slices is still the poison */
        size_t bytes = (end + 3) / 4 * 4;
        unsigned char *h = malloc(bytes);
        assert_non_null(h);
        fab_test_download_bytes(ctx, flat_buf, bytes, h);
        for (int g = 0; g <= L.ngrads; g++) {
            size_t from = g ? off[g - 1] + (size_t)L.n[g - 1] * fab_dtype_size(L.d[g - 1]) : 0;
            size_t to = g < L.ngrads ? off[g] : bytes;
            for (size_t i = from; i < to; i++)
                if (h[i] != 0xff)
                    fail_msg("grad_sync trial %d: padding byte %zu of the flat buffer was written", trial, i);
        }
        free(h);
    }
    for (int g = 0; g < L.ngrads && !flat; g++)
        fab_test_free(ctx, dev[g]);
    fab_test_free(ctx, flat_buf);
}

static void test_grad_sync(void **state)
{
    (void)state;
    fab_context *ctx = comm_ctx();
    fab_comm *comm = make_comm(ctx, 30, 0);
    /* gradients in separate buffers, in one flat buffer on every rank, or flat on
     * the even ranks only (in-place and packed buckets pairing up) */
    for (int trial = 0; trial < 18; trial++)
        run_grad_sync(ctx, comm, trial, trial % 3 == 1, fab_test_backend() == FAB_BACKEND_CPU && trial % 4 == 3,
                      trial % 6 >= 4 ? my_rank % 2 == 0 : trial % 6 >= 2);
    expect_ok(fab_comm_destroy(comm), "fab_comm_destroy");
    fab_context_destroy(ctx);
}

/* A plain collective in the middle of backward, between ready() calls, with ranks
 * marking their gradients ready in different orders: even ranks start bucket 0
 * before the all-reduce, odd ranks after it. Bucket all-reduces must not pair with
 * the user's all-reduce across ranks (gradient exchange has its own communicator). */
static void test_grad_sync_interleaved(void **state)
{
    (void)state;
    if (nranks < 2)
        skip();
    /* Not a promise on NCCL (fabriek.h, fab_grad_sync): there the ranks must issue
     * bucket and user collectives in the same order. */
    if (fab_test_backend() == FAB_BACKEND_CUDA) {
        printf("# test_grad_sync_interleaved: MPI only (NCCL needs the same order on every rank)\n");
        skip();
    }
    fab_context *ctx = comm_ctx();
    fab_comm *comm = make_comm(ctx, 10, 0);
    enum { N = 96 };
    fab_grad_sync_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.first_bucket_bytes = cfg.bucket_cap_bytes = N * 4; /* one gradient per bucket */
    cfg.sum = 1;
    fab_grad_sync *gs = NULL;
    expect_ok(fab_grad_sync_create(comm, &cfg, &gs), "fab_grad_sync_create");
    double h[3][N], ref[3][N];
    void *dev[3];
    for (int k = 0; k < 3; k++) { /* gradients 0, 1 and the user's tensor X (k = 2): same size and dtype */
        for (int i = 0; i < N; i++) {
            h[k][i] = val(my_rank, i, 8100 + (uint64_t)k, FAB_DTYPE_F32);
            ref[k][i] = reduce_ref(i, 8100 + (uint64_t)k, FAB_DTYPE_F32, FAB_REDUCE_SUM);
        }
        dev[k] = fab_test_upload(ctx, FAB_DTYPE_F32, h[k], N, NULL);
    }
    fab_tensor g0 = tensor1(dev[0], FAB_DTYPE_F32, N), g1 = tensor1(dev[1], FAB_DTYPE_F32, N);
    fab_tensor tx = tensor1(dev[2], FAB_DTYPE_F32, N);
    expect_ok(fab_grad_sync_register(gs, &g0, NULL), "register");
    expect_ok(fab_grad_sync_register(gs, &g1, NULL), "register");
    int nb = 0;
    expect_ok(fab_grad_sync_bucket_of(gs, 1, NULL, &nb), "bucket_of");
    assert_int_equal(nb, 2);
    expect_ok(fab_grad_sync_begin(gs, 1), "begin");
    if (my_rank % 2 == 0) {
        expect_ok(fab_grad_sync_ready(gs, 0), "ready 0"); /* bucket 0 starts */
        expect_ok(fab_allreduce(comm, &tx, &tx, FAB_REDUCE_SUM), "user allreduce during backward");
        expect_ok(fab_grad_sync_ready(gs, 1), "ready 1");
    } else {
        expect_ok(fab_grad_sync_ready(gs, 1), "ready 1"); /* waits for bucket 0 */
        expect_ok(fab_allreduce(comm, &tx, &tx, FAB_REDUCE_SUM), "user allreduce during backward");
        expect_ok(fab_grad_sync_ready(gs, 0), "ready 0"); /* buckets 0 and 1 start */
    }
    expect_ok(fab_grad_sync_wait(gs), "wait");
    expect_ok(fab_comm_synchronize(comm), "fab_comm_synchronize");
    check_values("gradient 0 (bucket 0)", ctx, FAB_DTYPE_F32, dev[0], ref[0], N);
    check_values("gradient 1 (bucket 1)", ctx, FAB_DTYPE_F32, dev[1], ref[1], N);
    check_values("the user's all-reduce between ready() calls", ctx, FAB_DTYPE_F32, dev[2], ref[2], N);
    fab_grad_sync_destroy(gs);
    for (int k = 0; k < 3; k++)
        fab_test_free(ctx, dev[k]);
    expect_ok(fab_comm_destroy(comm), "fab_comm_destroy");
    fab_context_destroy(ctx);
}

#ifdef FAB_TEST_MPI
/* The MPI transport's progress thread moves a bucket while its rank computes:
 * rank 0 marks its gradient ready and then "computes" (sleeps 2 s) without calling
 * fabriek. The other ranks' wait() cannot end before rank 0 is back unless rank
 * 0's side of the all-reduce moves on its own (rank 0 must sum what arrives and
 * send the result on, whether the ring or MPI's own collective carries it). */
static void test_grad_sync_progress(void **state)
{
    (void)state;
    int level = MPI_THREAD_SINGLE;
    const char *pt = getenv("FAB_COMM_PROGRESS_THREAD");
    if (use_mpi)
        MPI_Query_thread(&level);
    if (!use_mpi || nranks < 2 || fab_test_backend() != FAB_BACKEND_CPU || level != MPI_THREAD_MULTIPLE ||
        (pt && strcmp(pt, "0") == 0))
        skip(); /* no progress thread then */
    fab_context *ctx = comm_ctx();
    fab_comm *comm = make_comm(ctx, 30, 0);
    int N = 1 << 16; /* 256 KiB: the ring by default */
    const char *chunk = getenv("FAB_COMM_RING_CHUNK_BYTES");
    if (chunk && atol(chunk) >= 4 && atol(chunk) < 4096) /* the tests' tiny chunks: 64 per rank's segment, so */
        N = (int)(atol(chunk) / 4) * 64 * nranks;    /* the ring's messages fit the 2 s on loaded cores too */
    fab_grad_sync_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.sum = 1;
    fab_grad_sync *gs = NULL;
    expect_ok(fab_grad_sync_create(comm, &cfg, &gs), "fab_grad_sync_create");
    double *h = malloc(sizeof(double) * N), *ref = malloc(sizeof(double) * N);
    assert_non_null(h);
    assert_non_null(ref);
    summed_values(9100, N, h, ref);
    void *dev = fab_test_upload(ctx, FAB_DTYPE_F32, h, N, NULL);
    fab_tensor g = tensor1(dev, FAB_DTYPE_F32, N);
    expect_ok(fab_grad_sync_register(gs, &g, NULL), "register");
    expect_ok(fab_grad_sync_begin(gs, 1), "begin");
    MPI_Barrier(MPI_COMM_WORLD);
    expect_ok(fab_grad_sync_ready(gs, 0), "ready");
    if (my_rank == 0) {
        struct timespec nap = {2, 0};
        nanosleep(&nap, NULL); /* computing, not calling fabriek */
        expect_ok(fab_grad_sync_wait(gs), "wait");
    } else {
        double t0 = now_s();
        expect_ok(fab_grad_sync_wait(gs), "wait");
        double dt = now_s() - t0;
        if (dt > 1.0)
            fail_msg("rank %d waited %.2f s for a bucket while rank 0 computed for 2 s: rank 0's side did not "
                     "progress without it calling fabriek",
                     my_rank, dt);
    }
    check_values("the bucket reduced during rank 0's compute", ctx, FAB_DTYPE_F32, dev, ref, N);
    fab_grad_sync_destroy(gs);
    fab_test_free(ctx, dev);
    free(h);
    free(ref);
    expect_ok(fab_comm_destroy(comm), "fab_comm_destroy");
    fab_context_destroy(ctx);
}
#endif

/* NCCL: a communicator's kernels and its gradient exchange's (a duplicate, on a
 * stream of its own) reach the GPU in the order the host issued them, so that no
 * two ranks can run them in different orders and wait for each other (comm_nccl.c,
 * nccl_order). Here a 16 MiB bucket goes first, then a small all-reduce on the
 * user's communicator: once the context's stream has passed the small one, the
 * bucket must be reduced. Unordered, the small one ends first almost always. */
static void test_launch_order(void **state)
{
    (void)state;
    fab_context *ctx = comm_ctx();
    fab_comm *comm = make_comm(ctx, 60, 0);
    const char *transport = "";
    expect_ok(fab_comm_native(comm, &transport, NULL), "fab_comm_native");
    if (strcmp(transport, "nccl") != 0 || nranks < 2) {
        expect_ok(fab_comm_destroy(comm), "fab_comm_destroy");
        fab_context_destroy(ctx);
        skip(); /* MPI and a single rank: no kernels */
    }
    const int N = 4 << 20, n_small = 16;
    double *h = malloc(sizeof(double) * N), *ref = malloc(sizeof(double) * N);
    assert_non_null(h);
    assert_non_null(ref);
    summed_values(9300, N, h, ref);
    double hs[16], refs[16];
    summed_values(9301, n_small, hs, refs);
    void *big = fab_test_upload(ctx, FAB_DTYPE_F32, h, N, NULL);
    void *small = fab_test_upload(ctx, FAB_DTYPE_F32, hs, n_small, NULL);
    fab_tensor g = tensor1(big, FAB_DTYPE_F32, N), x = tensor1(small, FAB_DTYPE_F32, n_small);
    fab_grad_sync_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.sum = 1;
    fab_grad_sync *gs = NULL;
    expect_ok(fab_grad_sync_create(comm, &cfg, &gs), "fab_grad_sync_create");
    expect_ok(fab_grad_sync_register(gs, &g, NULL), "register");
    expect_ok(fab_grad_sync_begin(gs, 1), "begin");
    expect_ok(fab_grad_sync_ready(gs, 0), "ready"); /* the bucket starts */
    expect_ok(fab_allreduce(comm, &x, &x, FAB_REDUCE_SUM), "fab_allreduce after the bucket");
    expect_ok(fab_synchronize(ctx), "fab_synchronize"); /* the context's stream only */
    check_values("the small all-reduce", ctx, FAB_DTYPE_F32, small, refs, n_small);
    check_values("the bucket, once the all-reduce issued after it has ended", ctx, FAB_DTYPE_F32, big, ref, N);
    expect_ok(fab_grad_sync_wait(gs), "wait");
    fab_grad_sync_destroy(gs);
    fab_test_free(ctx, big);
    fab_test_free(ctx, small);
    free(h);
    free(ref);
    expect_ok(fab_comm_destroy(comm), "fab_comm_destroy");
    fab_context_destroy(ctx);
}

/* NCCL_COMM_BLOCKING=1 would make NCCL's communicators blocking, which no timeout
 * can abort: fab_comm_create refuses it, set in the environment or in NCCL's
 * configuration file (NCCL copies the file into the environment at its first
 * call only, so fabriek reads the file itself). */
static void test_nccl_blocking_refused(void **state)
{
    (void)state;
    if (use_mpi || fab_test_backend() != FAB_BACKEND_CUDA || !strstr(fab_build_info(), "NCCL ON"))
        skip(); /* NCCL communicators of one rank */
    fab_context *ctx = comm_ctx();
    fab_comm_unique_id id;
    expect_ok(fab_comm_get_unique_id(ctx, &id), "fab_comm_get_unique_id");
    fab_comm *c = NULL;
    setenv("NCCL_COMM_BLOCKING", "1", 1);
    fab_test_expect_error(fab_comm_create(ctx, 1, 0, &id, NULL, &c), FAB_ERR_UNSUPPORTED,
                          "NCCL_COMM_BLOCKING=1 (set in the environment)");
    assert_null(c);
    unsetenv("NCCL_COMM_BLOCKING");
    char path[] = "/tmp/fab_test_nccl_conf_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char text[] = "NCCL_DEBUG=WARN\nNCCL_COMM_BLOCKING=1\n";
    assert_int_equal(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    const char *old = getenv("NCCL_CONF_FILE");
    char *saved = old ? strdup(old) : NULL;
    setenv("NCCL_CONF_FILE", path, 1);
    fab_status s = fab_comm_create(ctx, 1, 0, &id, NULL, &c);
    char want[64];
    snprintf(want, sizeof want, "(set in %s)", path);
    fab_test_expect_error(s, FAB_ERR_UNSUPPORTED, want);
    assert_null(c);
    if (saved)
        setenv("NCCL_CONF_FILE", saved, 1);
    else
        unsetenv("NCCL_CONF_FILE");
    free(saved);
    unlink(path);
    /* and without it, the same id makes a communicator */
    expect_ok(fab_comm_create(ctx, 1, 0, &id, NULL, &c), "fab_comm_create");
    expect_ok(fab_comm_destroy(c), "fab_comm_destroy");
    fab_context_destroy(ctx);
}

/* Bucket layout follows the caps: 1 MiB first, then 25 MiB, as PyTorch DDP. */
static void test_grad_sync_buckets(void **state)
{
    (void)state;
    fab_context *ctx = NULL;
    fab_context_config cc;
    memset(&cc, 0, sizeof cc);
    cc.backend = FAB_BACKEND_CPU;
    assert_int_equal(fab_context_create(&cc, &ctx), FAB_OK);
    fab_comm *comm = NULL;
    expect_ok(fab_comm_create(ctx, 1, 0, NULL, NULL, &comm), "single-rank fab_comm_create");
    fab_grad_sync *gs = NULL;
    expect_ok(fab_grad_sync_create(comm, NULL, &gs), "fab_grad_sync_create");
    /* 4-byte elements: 0.75 MiB, 0.5 MiB (bucket 0 would pass 1 MiB: new bucket),
     * 20 MiB (fits 25), 10 MiB (new), 30 MiB (alone), bf16 (dtype changes: new) */
    const int64_t n[] = {196608, 131072, 5242880, 2621440, 7864320, 16};
    const fab_dtype d[] = {FAB_DTYPE_F32, FAB_DTYPE_F32, FAB_DTYPE_F32, FAB_DTYPE_F32, FAB_DTYPE_F32, FAB_DTYPE_BF16};
    const int want[] = {0, 1, 1, 2, 3, 4};
    void *mem[6];
    for (int g = 0; g < 6; g++) {
        mem[g] = malloc((size_t)n[g] * fab_dtype_size(d[g]));
        assert_non_null(mem[g]);
        fab_tensor t = tensor1(mem[g], d[g], n[g]);
        expect_ok(fab_grad_sync_register(gs, &t, NULL), "register");
    }
    for (int g = 0; g < 6; g++) {
        int b = -1, nb = 0;
        expect_ok(fab_grad_sync_bucket_of(gs, g, &b, &nb), "bucket_of");
        assert_int_equal(nb, 5);
        if (b != want[g])
            fail_msg("gradient %d is in bucket %d, expected %d", g, b, want[g]);
    }
    fab_grad_sync_destroy(gs);
    for (int g = 0; g < 6; g++)
        free(mem[g]);
    fab_comm_destroy(comm);
    fab_context_destroy(ctx);
}

/* ------------------------------------------------------------------ ZeRO-1 */

/* Reduce-scatter the flat gradients into shards, update each shard, all-gather the
 * parameters: every rank ends with the full update computed from the average gradient. */
static void test_zero1(void **state)
{
    (void)state;
    fab_context *ctx = comm_ctx();
    fab_comm *comm = make_comm(ctx, 30, 0);
    const int64_t numel = 1001;
    int64_t shard = fab_zero_shard_size(numel, nranks), padded = shard * nranks;
    assert_int_equal(shard, (numel + nranks - 1) / nranks);
    for (int in_place = 0; in_place < 2; in_place++) {
        double *g = calloc((size_t)padded, sizeof(double)), *p0 = calloc((size_t)padded, sizeof(double));
        double *want = calloc((size_t)padded, sizeof(double));
        for (int64_t i = 0; i < padded; i++) {
            g[i] = i < numel ? val(my_rank, i, 700 + (uint64_t)in_place, FAB_DTYPE_F32) : 0;
            p0[i] = i < numel ? val(0, i, 710, FAB_DTYPE_F32) : 0; /* same parameters everywhere */
            double avg = 0;
            for (int r = 0; r < nranks; r++)
                avg += i < numel ? val(r, i, 700 + (uint64_t)in_place, FAB_DTYPE_F32) : 0;
            want[i] = p0[i] - 0.5 * (avg / nranks);
        }
        void *dg = fab_test_upload(ctx, FAB_DTYPE_F32, g, padded, NULL);
        void *dp = fab_test_upload(ctx, FAB_DTYPE_F32, p0, padded, NULL);
        fab_tensor flat_g = tensor1(dg, FAB_DTYPE_F32, padded), flat_p = tensor1(dp, FAB_DTYPE_F32, padded);
        void *own = in_place ? NULL : fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, shard);
        void *gs_mem = in_place ? (char *)dg + (size_t)(my_rank * shard) * 4 : own;
        fab_tensor gshard = tensor1(gs_mem, FAB_DTYPE_F32, shard);
        expect_ok(fab_zero_reduce_scatter(comm, &flat_g, &gshard, 0), "fab_zero_reduce_scatter");
        /* the optimizer step on this rank's shard (host side, for the test) */
        double *gh = malloc(sizeof(double) * (size_t)shard), *ph = malloc(sizeof(double) * (size_t)shard);
        fab_test_download(ctx, FAB_DTYPE_F32, gs_mem, shard, gh);
        for (int64_t i = 0; i < shard; i++) {
            int64_t gi = my_rank * shard + i;
            double avg = 0;
            for (int r = 0; r < nranks; r++)
                avg += gi < numel ? val(r, gi, 700 + (uint64_t)in_place, FAB_DTYPE_F32) : 0;
            if (fabs(gh[i] - avg / nranks) > 1e-6)
                fail_msg("zero1 reduce-scatter: shard element %lld is %g, expected %g", (long long)i, gh[i],
                         avg / nranks);
            ph[i] = p0[gi] - 0.5 * gh[i];
        }
        void *pshard_mem = (char *)dp + (size_t)(my_rank * shard) * 4; /* update in place, then gather */
        fill_dev(ctx, FAB_DTYPE_F32, pshard_mem, ph, shard);
        fab_tensor pshard = tensor1(pshard_mem, FAB_DTYPE_F32, shard);
        expect_ok(fab_zero_allgather(comm, &pshard, &flat_p), "fab_zero_allgather");
        check_values("zero1 parameters after all-gather", ctx, FAB_DTYPE_F32, dp, want, padded);
        /* bad shapes */
        fab_tensor bad = tensor1(gs_mem, FAB_DTYPE_F32, shard - 1 > 0 ? shard - 1 : 1);
        if (nranks > 1 || shard > 1)
            fab_test_expect_error(fab_zero_reduce_scatter(comm, &flat_g, &bad, 0), INVALID, "pad it");
        fab_test_expect_error(fab_zero_allgather(comm, &pshard, NULL), INVALID, "flat_params is NULL");
        /* the collective's own checks name the helpers' arguments, not send and recv */
        fab_tensor strided = pshard;
        strided.stride[0] = 2;
        if (shard > 1)
            fab_test_expect_error(fab_zero_allgather(comm, &strided, &flat_p), INVALID,
                                  "fab_zero_allgather: param_shard.stride[0]=2");
        fab_tensor half = flat_g;
        half.dtype = FAB_DTYPE_BF16;
        fab_test_expect_error(fab_zero_reduce_scatter(comm, &half, &gshard, 0), INVALID,
                              "fab_zero_reduce_scatter: grad_shard.dtype=f32 must equal flat_grads.dtype=bf16");
        free(g), free(p0), free(want), free(gh), free(ph);
        fab_test_free(ctx, dg);
        fab_test_free(ctx, dp);
        fab_test_free(ctx, own);
    }
    expect_ok(fab_comm_destroy(comm), "fab_comm_destroy");
    fab_context_destroy(ctx);
}

/* ------------------------------------------------------------------ faults */

#ifdef FAB_TEST_MPI
/* When this rank is FAB_TEST_COMM_FAIL_RANK, fails here on purpose: the check that a
 * failing rank ends the whole MPI job at once instead of leaving the others in a
 * barrier until ctest's timeout (run by hand, see main). */
static void deliberate_failure(const char *where)
{
    const char *env = getenv("FAB_TEST_COMM_FAIL_RANK");
    if (env && env[0] && atoi(env) == my_rank)
        fail_msg("deliberate failure on rank %d in %s (FAB_TEST_COMM_FAIL_RANK)", my_rank, where);
}

/* Waits for what `s` left in flight: CUDA collectives are asynchronous, so a
 * lost peer shows at fab_comm_synchronize; MPI ones report it at once. */
static fab_status settle(fab_comm *comm, fab_status s)
{
    return s == FAB_OK ? fab_comm_synchronize(comm) : s;
}

/* The last rank does not take part: the others get FAB_ERR_TIMEOUT within the
 * timeout plus slack, and their communicator stays aborted. */
static void test_timeout(void **state)
{
    (void)state;
    if (nranks < 2)
        skip();
    fab_context *ctx = comm_ctx();
    const double timeout = 2.0, slack = 1.5;
    fab_comm *comm = make_comm(ctx, timeout, 0);
    double x[16];
    for (int i = 0; i < 16; i++)
        x[i] = i;
    void *dx = fab_test_upload(ctx, FAB_DTYPE_F32, x, 16, NULL);
    void *dy = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, 16);
    fab_tensor t = tensor1(dx, FAB_DTYPE_F32, 16);
    int absent = nranks - 1;
    if (my_rank != absent) {
        double t0 = now_s();
        fab_status s = settle(comm, fab_allreduce(comm, &t, &t, FAB_REDUCE_SUM));
        double dt = now_s() - t0;
        fab_test_expect_error(s, FAB_ERR_TIMEOUT, "did not complete within 2 s");
        if (dt < timeout || dt > timeout + slack)
            fail_msg("timed out after %.3f s; expected within [%g, %g] s", dt, timeout, timeout + slack);
        fab_test_expect_error(fab_comm_status(comm), FAB_ERR_TIMEOUT, "aborted earlier");
        fab_test_expect_error(fab_allreduce(comm, &t, &t, FAB_REDUCE_SUM), FAB_ERR_TIMEOUT, "destroy it");
        fab_test_expect_error(fab_barrier(comm), FAB_ERR_TIMEOUT, "aborted");
    }
    deliberate_failure("test_timeout");
    /* The late rank posts its half: with MPI the others' request then completes
     * inside MPI; with NCCL its own deadline ends it. */
    MPI_Barrier(MPI_COMM_WORLD);
    fab_status late = FAB_ERR_TIMEOUT;
    if (my_rank == absent) {
        /* MPI's own all-reduce completes here; fabriek's ring does not (the others
         * no longer move their aborted one) and times out in turn. */
        fab_tensor u = tensor1(dy, FAB_DTYPE_F32, 16);
        late = settle(comm, fab_allreduce(comm, &t, &u, FAB_REDUCE_SUM));
    }
    MPI_Barrier(MPI_COMM_WORLD);
    fab_comm_destroy(comm);
    if (late == FAB_OK) { /* buffers of a timed-out MPI collective stay with MPI */
        fab_test_free(ctx, dx);
        fab_test_free(ctx, dy);
    }
    fab_context_destroy(ctx);
}

/* Gradient exchange honours the deadline too: the last rank skips a pass, the
 * others' wait returns FAB_ERR_TIMEOUT in time. */
static void test_grad_sync_timeout(void **state)
{
    (void)state;
    if (nranks < 2)
        skip();
    fab_context *ctx = comm_ctx();
    const double timeout = 2.0, slack = 1.5;
    fab_comm *comm = make_comm(ctx, timeout, 0);
    double zeros[100] = {0};
    void *g0 = fab_test_upload(ctx, FAB_DTYPE_F32, zeros, 100, NULL);
    void *g1 = fab_test_upload(ctx, FAB_DTYPE_F32, zeros, 50, NULL);
    fab_grad_sync *gs = NULL;
    expect_ok(fab_grad_sync_create(comm, NULL, &gs), "fab_grad_sync_create");
    fab_tensor t0 = tensor1(g0, FAB_DTYPE_F32, 100), t1 = tensor1(g1, FAB_DTYPE_F32, 50);
    expect_ok(fab_grad_sync_register(gs, &t0, NULL), "register");
    expect_ok(fab_grad_sync_register(gs, &t1, NULL), "register");
    int absent = nranks - 1;
    if (my_rank != absent) {
        double t_start = now_s();
        expect_ok(fab_grad_sync_begin(gs, 1), "begin");
        expect_ok(fab_grad_sync_ready(gs, 1), "ready");
        expect_ok(fab_grad_sync_ready(gs, 0), "ready"); /* the bucket starts here */
        fab_status s = settle(comm, fab_grad_sync_wait(gs));
        double dt = now_s() - t_start;
        fab_test_expect_error(s, FAB_ERR_TIMEOUT, "did not complete within 2 s");
        if (dt < timeout || dt > timeout + slack)
            fail_msg("grad_sync timed out after %.3f s; expected within [%g, %g] s", dt, timeout, timeout + slack);
        fab_test_expect_error(fab_grad_sync_begin(gs, 1), FAB_ERR_TIMEOUT, "aborted earlier");
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (my_rank == absent) { /* late: its half lets the others' request finish inside MPI */
        expect_ok(fab_grad_sync_begin(gs, 1), "begin");
        (void)fab_grad_sync_ready(gs, 0);
        (void)fab_grad_sync_ready(gs, 1);
        (void)settle(comm, fab_grad_sync_wait(gs));
    }
    MPI_Barrier(MPI_COMM_WORLD);
    fab_grad_sync_destroy(gs);
    fab_comm_destroy(comm);
    fab_test_free(ctx, g0); /* the gradients themselves never reach MPI (buckets do) */
    fab_test_free(ctx, g1);
    fab_context_destroy(ctx);
}

/* MPI calls this when a communicator carrying the attribute is freed. */
static int note_comm_freed(MPI_Comm comm, int keyval, void *attr, void *extra)
{
    (void)comm;
    (void)keyval;
    (void)extra;
    *(int *)attr = 1;
    return MPI_SUCCESS;
}

/* A ring stopped half-way keeps its MPI communicator (comm_mpi.c, requests_done).
 * Ranks 0 and 1 on a communicator of their own: rank 0's reduce-scatter (on the
 * ring) times out alone; then rank 1 runs its side, which completes every request
 * rank 0 had posted, and finishes. Rank 0's ring is still in its first step: were
 * its communicator freed now, a later one could get its context id and take
 * messages still on their way to it as its own (what corrupted
 * test_grad_sync_progress in CI). So rank 0's destroy must not free it, and rank
 * 1's, whose ring finished, must. An attribute's delete callback tells which. */
static void test_ring_stopped_halfway(void **state)
{
    (void)state;
    if (!use_mpi || nranks < 2 || fab_test_backend() != FAB_BACKEND_CPU)
        skip(); /* the MPI transport's ring only */
    MPI_Comm pair = MPI_COMM_NULL;
    MPI_Comm_split(MPI_COMM_WORLD, my_rank < 2 ? 0 : MPI_UNDEFINED, my_rank, &pair);
    if (pair != MPI_COMM_NULL) {
        fab_context *ctx = comm_ctx();
        fab_comm_config cfg = {my_rank == 0 ? 0.5 : 30.0, 0}; /* rank 1's ring has all the time it needs */
        fab_comm *comm = NULL;
        expect_ok(fab_comm_create_mpi(ctx, pair, &cfg, &comm), "fab_comm_create_mpi");
        const char *transport = NULL;
        void *handle = NULL;
        expect_ok(fab_comm_native(comm, &transport, &handle), "fab_comm_native");
        assert_string_equal(transport, "mpi");
        int keyval = MPI_KEYVAL_INVALID, freed = 0;
        MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, note_comm_freed, &keyval, NULL);
        MPI_Comm_set_attr(*(MPI_Comm *)handle, keyval, &freed);

        /* On the ring: 64 KiB a rank by default (one message), 8 messages with the
         * ring tests' tiny chunks. */
        int64_t n = 16384;
        const char *chunk = getenv("FAB_COMM_RING_CHUNK_BYTES"), *ring_min = getenv("FAB_COMM_RING_MIN_BYTES");
        if (chunk && atol(chunk) >= 4 && atol(chunk) < 4096 && ring_min && atol(ring_min) <= 2 * 8 * atol(chunk))
            n = atol(chunk) / 4 * 8;
        double *h = malloc(sizeof(double) * 2 * n), *ref = malloc(sizeof(double) * n);
        assert_non_null(h);
        assert_non_null(ref);
        for (int64_t i = 0; i < 2 * n; i++)
            h[i] = val(my_rank, i, 9200, FAB_DTYPE_F32);
        for (int64_t i = 0; i < n; i++)
            ref[i] = val(0, n + i, 9200, FAB_DTYPE_F32) + val(1, n + i, 9200, FAB_DTYPE_F32);
        void *dx = fab_test_upload(ctx, FAB_DTYPE_F32, h, 2 * n, NULL);
        void *dy = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, n);
        fab_tensor tx = tensor1(dx, FAB_DTYPE_F32, 2 * n), ty = tensor1(dy, FAB_DTYPE_F32, n);
        if (my_rank == 0)
            fab_test_expect_error(fab_reduce_scatter(comm, &tx, &ty, FAB_REDUCE_SUM), FAB_ERR_TIMEOUT,
                                  "did not complete within 0.5 s");
        MPI_Barrier(pair); /* rank 0 has given up */
        if (my_rank == 1) {
            expect_ok(fab_reduce_scatter(comm, &tx, &ty, FAB_REDUCE_SUM), "the late rank's reduce_scatter");
            check_values("the late rank's reduce_scatter", ctx, FAB_DTYPE_F32, dy, ref, n);
        }
        /* Rank 1's messages reach rank 0 before this barrier's: rank 0 has seen
         * every request it posted complete when it returns. */
        MPI_Barrier(pair);
        fab_comm_destroy(comm);
        if (my_rank == 0 && freed)
            fail_msg("rank 0 freed the MPI communicator of its ring stopped half-way: a later communicator with the "
                     "same context id could take the messages still on their way to it");
        if (my_rank == 1 && !freed)
            fail_msg("rank 1 kept the MPI communicator of its finished ring");
        MPI_Comm_free_keyval(&keyval);
        MPI_Comm_free(&pair);
        if (my_rank == 1) { /* rank 0's buffers stay with its leaked communicator */
            fab_test_free(ctx, dx);
            fab_test_free(ctx, dy);
        }
        free(h);
        free(ref);
        fab_context_destroy(ctx);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

/* Debug mode, rank 0 early and alone: its debug-mode check (a small all-gather of
 * the collective's descriptor) times out; the others then arrive late and their
 * checks complete that all-gather inside MPI. MPI must not write into memory rank 0
 * got back: the chunks it allocates after the timeout, of the size of the gathered
 * descriptors (the heap reuses the size of what the check freed), must stay intact. */
static void test_debug_late_peer(void **state)
{
    (void)state;
    if (nranks < 2 || fab_test_backend() != FAB_BACKEND_CPU)
        skip();
    fab_context *ctx = comm_ctx();
    const double timeout = 1.0;
    fab_comm *comm = make_comm(ctx, timeout, 1);
    double x[16];
    for (int i = 0; i < 16; i++)
        x[i] = i;
    void *dx = fab_test_upload(ctx, FAB_DTYPE_F32, x, 16, NULL);
    fab_tensor t = tensor1(dx, FAB_DTYPE_F32, 16);
    enum { NPROBE = 64 };
    unsigned char *probe[NPROBE] = {0};
    const size_t psize = sizeof(int64_t) * 6 * (size_t)nranks; /* what the check gathers */
    if (my_rank == 0) {
        fab_test_expect_error(fab_allreduce(comm, &t, &t, FAB_REDUCE_SUM), FAB_ERR_TIMEOUT, "did not complete within 1 s");
        for (int i = 0; i < NPROBE; i++) {
            probe[i] = malloc(psize);
            assert_non_null(probe[i]);
            memset(probe[i], 0xA5, psize);
        }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (my_rank != 0) /* the check pairs with rank 0's stale one; the all-reduce then waits for rank 0 */
        fab_test_expect_error(fab_allreduce(comm, &t, &t, FAB_REDUCE_SUM), FAB_ERR_TIMEOUT, "within 1 s");
    MPI_Barrier(MPI_COMM_WORLD);
    int corrupted = -1;
    if (my_rank == 0) {
        double t0 = now_s();
        while (now_s() - t0 < 0.2) { /* let MPI progress whatever is still pending */
            int flag = 0;
            MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, MPI_STATUS_IGNORE);
        }
        for (int i = 0; i < NPROBE && corrupted < 0; i++)
            for (size_t b = 0; b < psize; b++)
                if (probe[i][b] != 0xA5)
                    corrupted = i;
    }
    /* Complete the late ranks' all-reduce on the underlying MPI communicator, when
     * it is MPI's own collective; on fabriek's ring (FAB_COMM_RING_MIN_BYTES at
     * most its 64 bytes) it stays pending on the late ranks, whose communicator is
     * aborted and never used again. */
    const char *ring_min = getenv("FAB_COMM_RING_MIN_BYTES");
    if (my_rank == 0 && !(ring_min && strtoull(ring_min, NULL, 10) <= sizeof(float) * 16)) {
        void *h = NULL;
        expect_ok(fab_comm_native(comm, NULL, &h), "fab_comm_native");
        float y[16] = {0};
        MPI_Request req; /* non-blocking: blocking and non-blocking collectives do not match */
        MPI_Iallreduce(MPI_IN_PLACE, y, 16, MPI_FLOAT, MPI_SUM, *(MPI_Comm *)h, &req);
        int done = 0;
        for (double t1 = now_s(); !done && now_s() - t1 < 10;)
            MPI_Test(&req, &done, MPI_STATUS_IGNORE);
        if (!done)
            fail_msg("the late ranks' all-reduce did not complete");
    }
    MPI_Barrier(MPI_COMM_WORLD);
    for (int i = 0; i < NPROBE; i++)
        free(probe[i]);
    fab_comm_destroy(comm);
    if (corrupted >= 0)
        fail_msg("after a debug-mode check timed out, MPI wrote into memory the library had freed (chunk %d)",
                 corrupted);
    fab_context_destroy(ctx); /* dx stays with MPI on the late ranks */
}

/* Debug mode turns mismatched collectives into FAB_ERR_INVALID_ARGUMENT on every
 * rank; nothing is written, and the communicator stays usable. */
static void test_debug_mismatch(void **state)
{
    (void)state;
    if (nranks < 2)
        skip();
    fab_context *ctx = comm_ctx();
    fab_comm *comm = make_comm(ctx, 20, 1);
    double ones[8], minus[32], out[32];
    for (int i = 0; i < 8; i++)
        ones[i] = 1;
    for (int i = 0; i < 32; i++)
        minus[i] = -7;
    void *a = fab_test_upload(ctx, FAB_DTYPE_F32, ones, 8, NULL);
    void *b = fab_test_upload(ctx, FAB_DTYPE_F32, minus, 8 * nranks, NULL);
    fab_tensor ta = tensor1(a, FAB_DTYPE_F32, 8), tb = tensor1(b, FAB_DTYPE_F32, 8 * nranks);
    fab_tensor tb8 = tensor1(b, FAB_DTYPE_F32, 8);
    fab_status s;
    /* rank 0 all-reduces, the others all-gather */
    if (my_rank == 0)
        s = fab_allreduce(comm, &ta, &tb8, FAB_REDUCE_SUM);
    else
        s = fab_allgather(comm, &ta, &tb);
    fab_test_expect_error(s, INVALID, "do not match across ranks at sequence number 0");
    fab_test_expect_error(s, INVALID, my_rank == 0 ? "rank 1 (seq 0) runs allgather" : "rank 0 runs allreduce sum");
    fab_test_download(ctx, FAB_DTYPE_F32, b, 8 * nranks, out);
    for (int i = 0; i < 8 * nranks; i++)
        assert_true(out[i] == -7); /* nothing written */
    /* same op, different count */
    fab_tensor tc = tensor1(a, FAB_DTYPE_F32, my_rank == 0 ? 8 : 4);
    fab_test_expect_error(fab_allreduce(comm, &tc, &tc, FAB_REDUCE_SUM), INVALID, "count=");
    /* a group of two against a group of one */
    expect_ok(fab_comm_group_start(comm), "group_start");
    expect_ok(fab_allreduce(comm, &ta, &ta, FAB_REDUCE_SUM), "grouped");
    if (my_rank == 0)
        expect_ok(fab_allreduce(comm, &ta, &ta, FAB_REDUCE_SUM), "grouped");
    fab_test_expect_error(fab_comm_group_end(comm), INVALID, "group of");
    fab_test_download(ctx, FAB_DTYPE_F32, a, 8, out);
    for (int i = 0; i < 8; i++)
        assert_true(out[i] == 1);
    /* gradient buckets that differ across ranks */
    fab_grad_sync *gs = NULL;
    expect_ok(fab_grad_sync_create(comm, NULL, &gs), "fab_grad_sync_create");
    fab_tensor g = tensor1(b, FAB_DTYPE_F32, my_rank == 0 ? 8 : 6);
    expect_ok(fab_grad_sync_register(gs, &g, NULL), "register");
    fab_test_expect_error(fab_grad_sync_begin(gs, 1), INVALID, "gradient buckets differ across ranks");
    fab_grad_sync_destroy(gs);
    /* still usable: a matching call works */
    expect_ok(fab_comm_status(comm), "fab_comm_status");
    expect_ok(settle(comm, fab_allreduce(comm, &ta, &ta, FAB_REDUCE_SUM)), "matching allreduce after a mismatch");
    fab_test_download(ctx, FAB_DTYPE_F32, a, 8, out);
    for (int i = 0; i < 8; i++)
        assert_true(out[i] == nranks);
    expect_ok(fab_comm_destroy(comm), "fab_comm_destroy");
    fab_test_free(ctx, a);
    fab_test_free(ctx, b);
    fab_context_destroy(ctx);
}
#endif

/* ------------------------------------------------------------ a lost peer */

/* A peer process that exits while a collective waits for it: NCCL reports
 * ncclRemoteError asynchronously, and the communicator's watchdog (or the next
 * call's poll) turns it into FAB_ERR_PEER, well before the timeout, and aborts.
 * The peer is this binary again, started as rank 1 (peer_rank1_main): it joins the
 * communicator and exits without taking part. Only on the emulator's NCCL, whose
 * ranks may be processes of one machine; a real NCCL would want a GPU per rank. */
static int peer_rank1_main(const char *hex)
{
    fab_comm_unique_id id;
    memset(&id, 0, sizeof id);
    for (size_t i = 0; i < sizeof id.bytes && hex[2 * i] && hex[2 * i + 1]; i++) {
        unsigned v = 0;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return 2;
        id.bytes[i] = (unsigned char)v;
    }
    fab_context_config cc;
    memset(&cc, 0, sizeof cc);
    cc.backend = FAB_BACKEND_CUDA;
    fab_context *ctx = NULL;
    fab_comm *comm = NULL;
    fab_comm_config cfg = {30, 0};
    if (fab_context_create(&cc, &ctx) != FAB_OK || fab_comm_create(ctx, 2, 1, &id, &cfg, &comm) != FAB_OK) {
        fprintf(stderr, "test_comm peer: %s\n", fab_last_error());
        return 1;
    }
    _exit(0); /* gone, communicator and all, without a word to rank 0 */
}

static void test_peer_exits(void **state)
{
    (void)state;
    if (use_mpi || fab_test_backend() != FAB_BACKEND_CUDA || !strstr(fab_build_info(), "emulated"))
        skip();
    fab_context *ctx = comm_ctx();
    const double timeout = 20.0;
    fab_comm_unique_id id;
    expect_ok(fab_comm_get_unique_id(ctx, &id), "fab_comm_get_unique_id");
    char hex[2 * sizeof id.bytes + 1];
    for (size_t i = 0; i < sizeof id.bytes; i++)
        snprintf(hex + 2 * i, 3, "%02x", id.bytes[i]);
    char *args[] = {"test_comm", "--peer-rank1", hex, NULL};
    extern char **environ;
    pid_t pid = 0;
    if (posix_spawn(&pid, "/proc/self/exe", NULL, NULL, args, environ) != 0)
        fail_msg("posix_spawn of the peer: %s", strerror(errno));
    fab_comm_config cfg = {timeout, 0};
    fab_comm *comm = NULL;
    fab_status s = fab_comm_create(ctx, 2, 0, &id, &cfg, &comm);
    int st = 0;
    waitpid(pid, &st, 0); /* gone for good (not a zombie) before the collective */
    if (s != FAB_OK)
        fail_msg("fab_comm_create with the peer: %s: %s", fab_status_name(s), fab_last_error());
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("the peer process did not join and exit cleanly (status %d)", st);
    double x[16] = {0};
    void *dx = fab_test_upload(ctx, FAB_DTYPE_F32, x, 16, NULL);
    fab_tensor t = tensor1(dx, FAB_DTYPE_F32, 16);
    double t0 = now_s();
    s = settle(comm, fab_allreduce(comm, &t, &t, FAB_REDUCE_SUM));
    double dt = now_s() - t0;
    fab_test_expect_error(s, FAB_ERR_PEER, "remote process exited");
    if (dt > timeout / 2)
        fail_msg("the lost peer took %.3f s to show; the watchdog polls every 50 ms", dt);
    fab_test_expect_error(fab_comm_status(comm), FAB_ERR_PEER, "aborted earlier");
    fab_comm_destroy(comm);
    fab_test_free(ctx, dx);
    fab_context_destroy(ctx);
}

/* -------------------------------------------------------------- bad inputs */

static void test_bad_arguments(void **state)
{
    (void)state;
    fab_context *ctx = comm_ctx();
    fab_comm *comm = make_comm(ctx, 30, 0);
    double v[64];
    for (int i = 0; i < 64; i++)
        v[i] = i + 1;
    void *ds = fab_test_upload(ctx, FAB_DTYPE_F32, v, 64, NULL);
    void *dr = fab_test_alloc_poisoned(ctx, FAB_DTYPE_F32, 64);
    unsigned char before_s[256], before_r[256], after[256];
    fab_test_download_bytes(ctx, ds, 256, before_s);
    fab_test_download_bytes(ctx, dr, 256, before_r);
    int64_t nrr = 64 / nranks * nranks;
    fab_tensor s = tensor1(ds, FAB_DTYPE_F32, 64), r = tensor1(dr, FAB_DTYPE_F32, 64), x;

#ifdef FAB_TEST_MPI
    if (use_mpi && fab_test_backend() == FAB_BACKEND_CPU) { /* by (nranks, rank) on MPI_COMM_WORLD */
        fab_comm *w = NULL;
        fab_comm_unique_id id;
        memset(&id, 0, sizeof id);
        expect_ok(fab_comm_create(ctx, nranks, my_rank, &id, NULL, &w), "fab_comm_create on MPI_COMM_WORLD");
        int32_t one = 1;
        fab_tensor t1 = tensor1(&one, FAB_DTYPE_I32, 1);
        expect_ok(fab_allreduce(w, &t1, &t1, FAB_REDUCE_SUM), "allreduce");
        assert_int_equal(one, nranks);
        const char *tp = NULL;
        void *h = NULL;
        expect_ok(fab_comm_native(w, &tp, &h), "fab_comm_native");
        assert_string_equal(tp, "mpi");
        assert_non_null(h);
        expect_ok(fab_comm_destroy(w), "destroy");
    }
#endif
    /* creation */
    fab_comm *c2 = (fab_comm *)1;
    fab_test_expect_error(fab_comm_create(ctx, 1, 0, NULL, NULL, NULL), INVALID, "out is NULL");
    fab_test_expect_error(fab_comm_create(NULL, 1, 0, NULL, NULL, &c2), INVALID, "ctx is NULL");
    assert_null(c2);
    fab_test_expect_error(fab_comm_create(ctx, 0, 0, NULL, NULL, &c2), INVALID, "nranks=0");
    fab_test_expect_error(fab_comm_create(ctx, 2, 5, NULL, NULL, &c2), INVALID, "rank=5 must be in [0, 2)");
    fab_test_expect_error(fab_comm_create(ctx, 2, -1, NULL, NULL, &c2), INVALID, "rank=-1");
    fab_comm_config badcfg = {-1, 0};
    fab_test_expect_error(fab_comm_create(ctx, 1, 0, NULL, &badcfg, &c2), INVALID, "cfg.timeout_seconds=-1");
    fab_test_expect_error(fab_comm_get_unique_id(ctx, NULL), INVALID, "id is NULL");
    fab_test_expect_error(fab_comm_split(NULL, 0, 0, NULL, &c2), INVALID, "comm is NULL");
    fab_test_expect_error(fab_comm_split(comm, -5, 0, NULL, &c2), INVALID, "color=-5");
    fab_test_expect_error(fab_comm_rank(NULL, NULL), INVALID, "comm is NULL");
    fab_test_expect_error(fab_comm_abort(NULL), INVALID, "comm is NULL");
    assert_int_equal(fab_comm_destroy(NULL), FAB_OK);
#ifdef FAB_TEST_MPI
    if (use_mpi) {
        fab_test_expect_error(fab_comm_create_mpi(ctx, MPI_COMM_NULL, NULL, &c2), INVALID, "MPI_COMM_NULL");
        fab_test_expect_error(fab_comm_create_mpi(NULL, MPI_COMM_WORLD, NULL, &c2), INVALID, "ctx is NULL");
        fab_test_expect_error(fab_mpi_local_rank(MPI_COMM_WORLD, NULL), INVALID, "local_rank is NULL");
        int local = -1;
        expect_ok(fab_mpi_local_rank(MPI_COMM_WORLD, &local), "fab_mpi_local_rank");
        assert_int_equal(local, my_rank); /* one node */
        if (fab_test_backend() == FAB_BACKEND_CPU)
            fab_test_expect_error(fab_comm_create(ctx, nranks + 1, 0, NULL, NULL, &c2), INVALID,
                                  "MPI_COMM_WORLD's size");
    }
#endif
    if (!use_mpi && fab_test_backend() == FAB_BACKEND_CPU) {
        fab_status st = fab_comm_create(ctx, 2, 0, NULL, NULL, &c2);
        assert_int_equal(st, FAB_ERR_UNSUPPORTED);
        assert_true(strstr(fab_last_error(), "MPI") != NULL);
    }

    /* collectives */
    fab_test_expect_error(fab_allreduce(NULL, &s, &r, FAB_REDUCE_SUM), INVALID, "comm is NULL");
    fab_test_expect_error(fab_allreduce(comm, NULL, &r, FAB_REDUCE_SUM), INVALID, "send is NULL");
    fab_test_expect_error(fab_allreduce(comm, &s, NULL, FAB_REDUCE_SUM), INVALID, "recv is NULL");
    fab_test_expect_error(fab_allreduce(comm, &s, &r, (fab_reduce_op)7), INVALID, "op=7 is not a fab_reduce_op");
    x = r;
    x.shape[0] = 63;
    fab_test_expect_error(fab_allreduce(comm, &s, &x, FAB_REDUCE_SUM), INVALID, "recv has 63 elements, send has 64");
    x = r;
    x.dtype = FAB_DTYPE_BF16;
    fab_test_expect_error(fab_allreduce(comm, &s, &x, FAB_REDUCE_SUM), INVALID, "recv.dtype=bf16");
    x = s;
    x.dtype = FAB_DTYPE_I32;
    fab_tensor xr = r;
    xr.dtype = FAB_DTYPE_I32;
    fab_test_expect_error(fab_allreduce(comm, &x, &xr, FAB_REDUCE_AVG), FAB_ERR_UNSUPPORTED, "op=avg needs a float");
    x.dtype = xr.dtype = FAB_DTYPE_F8_E4M3;
    fab_test_expect_error(fab_allreduce(comm, &x, &xr, FAB_REDUCE_SUM), FAB_ERR_UNSUPPORTED,
                          "recv.dtype=f8_e4m3 is not supported");
    x = s;
    x.shape[0] = 32;
    x.stride[0] = 2;
    fab_tensor r32 = tensor1(dr, FAB_DTYPE_F32, 32);
    fab_test_expect_error(fab_allreduce(comm, &x, &r32, FAB_REDUCE_SUM), INVALID, "send.stride[0]=2");
    x = s;
    x.data = NULL;
    fab_test_expect_error(fab_allreduce(comm, &x, &r, FAB_REDUCE_SUM), INVALID, "send.data is NULL");
    x = r;
    x.data = (char *)ds + 8; /* partial overlap */
    x.shape[0] = 32;
    fab_tensor s32 = tensor1(ds, FAB_DTYPE_F32, 32);
    fab_test_expect_error(fab_allreduce(comm, &s32, &x, FAB_REDUCE_SUM), INVALID, "overlap");
    fab_test_expect_error(fab_broadcast(comm, &s, &r, nranks), INVALID, "root=");
    fab_test_expect_error(fab_broadcast(comm, &s, &r, -1), INVALID, "root=-1");
    fab_test_expect_error(fab_broadcast(comm, NULL, &r, my_rank), INVALID, "send is NULL");
    fab_tensor rs = tensor1(dr, FAB_DTYPE_F32, nrr / nranks + 1);
    fab_test_expect_error(fab_reduce_scatter(comm, &s, &rs, FAB_REDUCE_SUM), INVALID, "nranks*recv");
    fab_test_expect_error(fab_reduce_scatter(comm, &s, &r, (fab_reduce_op)-1), INVALID, nranks == 1 ? "op=-1" : "");
    fab_tensor ag = tensor1(ds, FAB_DTYPE_F32, 3);
    fab_tensor agr = tensor1(dr, FAB_DTYPE_F32, 3 * nranks + 1);
    fab_test_expect_error(fab_allgather(comm, &ag, &agr), INVALID, "nranks*send");
    fab_test_expect_error(fab_barrier(NULL), INVALID, "comm is NULL");
    fab_test_expect_error(fab_comm_group_start(NULL), INVALID, "comm is NULL");
    fab_test_download_bytes(ctx, ds, 256, after);
    assert_memory_equal(before_s, after, 256);
    fab_test_download_bytes(ctx, dr, 256, after);
    assert_memory_equal(before_r, after, 256); /* nothing written */

    /* gradient exchange */
    fab_grad_sync *gs = (fab_grad_sync *)1;
    fab_test_expect_error(fab_grad_sync_create(NULL, NULL, &gs), INVALID, "comm is NULL");
    assert_null(gs);
    fab_test_expect_error(fab_grad_sync_create(comm, NULL, NULL), INVALID, "out is NULL");
    expect_ok(fab_grad_sync_create(comm, NULL, &gs), "fab_grad_sync_create");
    fab_test_expect_error(fab_grad_sync_register(gs, NULL, NULL), INVALID, "grad is NULL");
    x = s;
    x.dtype = FAB_DTYPE_I32;
    fab_test_expect_error(fab_grad_sync_register(gs, &x, NULL), FAB_ERR_UNSUPPORTED, "grad.dtype=i32");
    expect_ok(fab_grad_sync_register(gs, &s, NULL), "register");
    fab_test_expect_error(fab_grad_sync_register(gs, &s32, NULL), INVALID, "overlap");
    fab_test_expect_error(fab_grad_sync_ready(gs, 0), INVALID, "no pass is open");
    fab_test_expect_error(fab_grad_sync_wait(gs), INVALID, "no pass is open");
    fab_test_expect_error(fab_grad_sync_bucket_of(gs, 3, NULL, NULL), INVALID, "index=3");
    expect_ok(fab_grad_sync_begin(gs, 0), "begin");
    fab_test_expect_error(fab_grad_sync_begin(gs, 0), INVALID, "previous pass");
    fab_test_expect_error(fab_grad_sync_register(gs, &r, NULL), INVALID, "before the first fab_grad_sync_begin");
    fab_test_expect_error(fab_grad_sync_ready(gs, 1), INVALID, "index=1 must be in [0, 1)");
    fab_test_expect_error(fab_grad_sync_wait(gs), INVALID, "gradient 0 was not marked ready");
    expect_ok(fab_grad_sync_begin(gs, 0), "begin");
    expect_ok(fab_grad_sync_ready(gs, 0), "ready");
    fab_test_expect_error(fab_grad_sync_ready(gs, 0), INVALID, "already marked ready");
    expect_ok(fab_grad_sync_wait(gs), "wait");
    fab_grad_sync_destroy(gs);
    fab_test_download_bytes(ctx, ds, 256, after);
    assert_memory_equal(before_s, after, 256);

    /* an aborted communicator says so */
    expect_ok(fab_comm_abort(comm), "fab_comm_abort");
    fab_test_expect_error(fab_allreduce(comm, &s, &r, FAB_REDUCE_SUM), FAB_ERR_BACKEND, "fab_comm_abort was called");
    fab_test_free(ctx, ds);
    fab_test_free(ctx, dr);
    fab_comm_destroy(comm);
    fab_context_destroy(ctx);
}

#ifdef FAB_TEST_MPI
static void abort_job(int sig)
{
    (void)sig;
    fprintf(stderr, "test_comm: rank %d failed a check; aborting the MPI job\n", my_rank);
    MPI_Abort(MPI_COMM_WORLD, 1);
    _exit(1);
}
#endif

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mpi"))
            use_mpi = 1;
        if (!strcmp(argv[i], "--peer-rank1") && i + 1 < argc) /* test_peer_exits's other process */
            return peer_rank1_main(argv[i + 1]);
    }
    const char *env = getenv("FAB_TEST_SEED");
    seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL);
#ifdef FAB_TEST_MPI
    if (use_mpi) {
        int provided = 0; /* MULTIPLE lets the MPI transport run its progress thread */
        MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
        MPI_Comm_rank(MPI_COMM_WORLD, &my_rank);
        MPI_Comm_size(MPI_COMM_WORLD, &nranks);
        MPI_Bcast(&seed, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD); /* every rank must agree */
        /* A failing check on one rank must end the job at once: cmocka would go on to
         * the next test while the other ranks wait in a collective or MPI_Barrier of
         * this one (until ctest's timeout). CMOCKA_TEST_ABORT=1 makes cmocka call
         * abort() on a failure (after printing it); the handler turns that into
         * MPI_Abort, which takes every rank down. Check by hand that it works:
         *   FAB_TEST_COMM_FAIL_RANK=1 mpirun -np 2 test_comm --backend cpu --mpi
         * ends within seconds, failing. */
        setenv("CMOCKA_TEST_ABORT", "1", 1);
        signal(SIGABRT, abort_job);
    }
#else
    if (use_mpi) {
        fprintf(stderr, "test_comm: --mpi, but this build has no MPI\n");
        return 2;
    }
#endif
    if (my_rank == 0)
        printf("# comm test: %d rank%s%s, data seed %llu (replay with FAB_TEST_SEED=%llu)\n", nranks,
               nranks == 1 ? "" : "s", use_mpi ? " over MPI" : "", (unsigned long long)seed,
               (unsigned long long)seed);
    fab_test_init(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_collectives),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_group),
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_grad_sync),
        cmocka_unit_test(test_grad_sync_buckets),
        cmocka_unit_test(test_grad_sync_interleaved),
        cmocka_unit_test(test_launch_order),
        cmocka_unit_test(test_nccl_blocking_refused),
        cmocka_unit_test(test_zero1),
#ifdef FAB_TEST_MPI
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_split_timeout),
        cmocka_unit_test(test_grad_sync_timeout),
        cmocka_unit_test(test_ring_stopped_halfway),
        cmocka_unit_test(test_grad_sync_progress),
        cmocka_unit_test(test_debug_mismatch),
        cmocka_unit_test(test_debug_late_peer),
#endif
        cmocka_unit_test(test_peer_exits),
        cmocka_unit_test(test_bad_arguments),
    };
    int rc = fab_test_run(tests);
#ifdef FAB_TEST_MPI
    if (use_mpi)
        MPI_Finalize();
#endif
    return rc;
}
