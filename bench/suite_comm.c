/*
 * suite_comm.c: collective bandwidth and gradient-exchange overlap.
 *
 * Run one process per GPU (or per CPU rank) under mpirun or srun:
 *     srun -N2 --ntasks-per-node=4 --gpus-per-task=1 fab-bench --suite comm
 * On a single process without MPI it measures a single-rank communicator and
 * says so (busbw is 0 by definition there).
 *
 * Bandwidth by nccl-tests' definitions (doc/PERFORMANCE.md there): with S the
 * buffer size in bytes (allreduce, broadcast: the tensor; reduce_scatter: the send
 * buffer; allgather: the receive buffer) and t the time of one call,
 *     algbw = S / t,   busbw = algbw * f,   f = 2(n-1)/n allreduce, (n-1)/n
 *     reduce_scatter and allgather, 1 broadcast.
 * busbw is comparable with the hardware's link bandwidth whatever n is.
 * Each time is the median over repetitions of the slowest rank's time.
 * Baseline: the same call made directly on the transport (MPI_Allreduce,
 * ncclAllReduce, ...) on the same communicator, in the same run, alternating
 * with fabriek's call repetition by repetition; the ratio is the overhead of
 * fabriek's wrapper.
 *
 * grad_sync: a synthetic backward pass of 48 layers (sizes in bench_grad_sync),
 * each "computing" (device copies, as many as make the pass take about twice the
 * exchange alone) and then marking its gradient ready. Exposed communication is the part of the exchange
 * backward could not hide:
 *     exposed = T(backward + exchange + wait) - T(backward without exchange)
 *     fraction = exposed / T(exchange alone)
 * On the CPU the copy takes the very cores the MPI transport's progress thread
 * needs (all of them, on a small machine); a second row therefore "computes" by
 * sleeping as long as each copy took, leaving the host idle as a GPU node's is
 * during its kernels: it measures how much of the exchange fabriek's overlap
 * hides when the cores are free, not what this machine's cores could do.
 */
#include "bench.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef FAB_BENCH_MPI
#include <mpi.h>

#include "fabriek_mpi.h"
#endif
#ifdef FAB_BENCH_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

#define TRY(call)                      \
    do {                               \
        fab_status try_s_ = (call);    \
        if (try_s_ != FAB_OK)          \
            return try_s_;             \
    } while (0)

enum { C_ALLREDUCE, C_REDUCE_SCATTER, C_ALLGATHER, C_BROADCAST, C_COUNT };
static const char *cnames[] = {"allreduce", "reduce_scatter", "allgather", "broadcast"};

typedef struct comm_bench {
    fab_context *ctx;
    fab_comm *comm;
    const char *transport;
    void *native;
    int rank, nranks, mpi;
    void *a, *b; /* buffers of the largest size */
#ifdef FAB_BENCH_NCCL
    cudaStream_t raw_stream;
#endif
} comm_bench;

/* Zeroes `bytes` of the context's memory (NaN or denormal garbage would slow a CPU sum). */
static fab_status zero_fill(fab_context *ctx, void *dst, size_t bytes)
{
    static const unsigned char zeros[1 << 20];
    for (size_t off = 0; off < bytes; off += sizeof zeros) {
        size_t m = bytes - off < sizeof zeros ? bytes - off : sizeof zeros;
        TRY(fab_copy(ctx, (char *)dst + off, zeros, m));
    }
    return fab_synchronize(ctx);
}

static double slowest(comm_bench *cb, double ms)
{
#ifdef FAB_BENCH_MPI
    if (cb->mpi) {
        double m = ms;
        MPI_Allreduce(&ms, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        return m;
    }
#endif
    (void)cb;
    return ms;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* One call of collective k on S bytes of f32, through fabriek or directly. */
static fab_status run_one(comm_bench *cb, int k, size_t bytes, int raw)
{
    int64_t n = (int64_t)(bytes / 4), per = n / cb->nranks;
    if (!raw) {
        fab_tensor full, part;
        fab_tensor_make(cb->a, FAB_DTYPE_F32, 1, &n, &full);
        int64_t np = k == C_REDUCE_SCATTER || k == C_ALLGATHER ? per : n;
        fab_tensor_make(cb->b, FAB_DTYPE_F32, 1, &np, &part);
        int64_t ng = per * cb->nranks;
        fab_tensor gathered;
        fab_tensor_make(cb->a, FAB_DTYPE_F32, 1, &ng, &gathered);
        switch (k) {
        case C_ALLREDUCE: return fab_allreduce(cb->comm, &full, &full, FAB_REDUCE_SUM);
        case C_REDUCE_SCATTER: return fab_reduce_scatter(cb->comm, &gathered, &part, FAB_REDUCE_SUM);
        case C_ALLGATHER: return fab_allgather(cb->comm, &part, &gathered);
        default: return fab_broadcast(cb->comm, &full, &full, 0);
        }
    }
#ifdef FAB_BENCH_MPI
    if (!strcmp(cb->transport, "mpi")) {
        MPI_Comm c = *(MPI_Comm *)cb->native;
        int r = MPI_SUCCESS;
        switch (k) {
        case C_ALLREDUCE: r = MPI_Allreduce(MPI_IN_PLACE, cb->a, (int)n, MPI_FLOAT, MPI_SUM, c); break;
        case C_REDUCE_SCATTER: r = MPI_Reduce_scatter_block(cb->a, cb->b, (int)per, MPI_FLOAT, MPI_SUM, c); break;
        case C_ALLGATHER: r = MPI_Allgather(cb->b, (int)per, MPI_FLOAT, cb->a, (int)per, MPI_FLOAT, c); break;
        default: r = MPI_Bcast(cb->a, (int)n, MPI_FLOAT, 0, c); break;
        }
        return r == MPI_SUCCESS ? FAB_OK : FAB_ERR_BACKEND;
    }
#endif
#ifdef FAB_BENCH_NCCL
    if (!strcmp(cb->transport, "nccl")) {
        void *h = NULL; /* asked each time: NULL once the communicator was aborted (NCCL freed it) */
        fab_comm_native(cb->comm, NULL, &h);
        ncclComm_t c = (ncclComm_t)h;
        if (!c)
            return FAB_ERR_BACKEND;
        ncclResult_t r = ncclSuccess;
        switch (k) {
        case C_ALLREDUCE: r = ncclAllReduce(cb->a, cb->a, (size_t)n, ncclFloat32, ncclSum, c, cb->raw_stream); break;
        case C_REDUCE_SCATTER:
            r = ncclReduceScatter(cb->a, cb->b, (size_t)per, ncclFloat32, ncclSum, c, cb->raw_stream);
            break;
        case C_ALLGATHER: r = ncclAllGather(cb->b, cb->a, (size_t)per, ncclFloat32, c, cb->raw_stream); break;
        default: r = ncclBroadcast(cb->a, cb->a, (size_t)n, ncclFloat32, 0, c, cb->raw_stream); break;
        }
        /* fabriek's NCCL communicators are non-blocking: the call may return
         * ncclInProgress and enqueue its kernel later, from NCCL's thread. Until
         * the communicator says ncclSuccess the kernel may not be on the stream
         * yet (a sync would time nothing) and any next call on it is refused. */
        double t0 = bench_now_ms();
        while (r == ncclInProgress && bench_now_ms() - t0 < 60e3)
            if (ncclCommGetAsyncError(c, &r) != ncclSuccess)
                break;
        if (r != ncclSuccess) {
            fprintf(stderr, "fab-bench comm: raw NCCL %s: %s\n", cnames[k], ncclGetErrorString(r));
            return FAB_ERR_BACKEND;
        }
        return cudaStreamSynchronize(cb->raw_stream) == cudaSuccess ? FAB_OK : FAB_ERR_BACKEND;
    }
#endif
    /* single rank: the transport is a copy */
    if (k == C_ALLREDUCE || k == C_BROADCAST)
        return FAB_OK;
    return fab_copy(cb->ctx, cb->b, cb->a, (size_t)per * 4);
}

/* The slowest rank's time of one call, in ms; < 0 on failure. */
static double time_once(comm_bench *cb, int k, size_t bytes, int raw)
{
    if (fab_barrier(cb->comm) != FAB_OK)
        return -1;
    double t0 = bench_now_ms();
    if (run_one(cb, k, bytes, raw) != FAB_OK || fab_comm_synchronize(cb->comm) != FAB_OK)
        return -1;
    return slowest(cb, bench_now_ms() - t0);
}

/* Medians over reps of fabriek's call (*ms) and the raw call (*raw_ms). The two
 * alternate within each repetition, so a drift of the machine (another job, a
 * frequency change) weighs on both alike and the ratio stays honest. 0, or -1
 * on failure. */
static int time_coll(comm_bench *cb, bench *b, int k, size_t bytes, double *ms, double *raw_ms)
{
    int reps = b->opt.reps, total = b->opt.warmup + reps;
    double *t = calloc(2 * (size_t)reps, sizeof(double)), *traw = t + reps;
    if (!t)
        return -1;
    for (int r = 0; r < total; r++) {
        for (int raw = 0; raw < 2; raw++) {
            double dt = time_once(cb, k, bytes, raw);
            if (dt < 0) {
                fprintf(stderr, "fab-bench comm: %s %zu B%s: %s\n", cnames[k], bytes, raw ? " (raw)" : "",
                        fab_last_error());
                free(t);
                return -1;
            }
            if (r >= b->opt.warmup)
                (raw ? traw : t)[r - b->opt.warmup] = dt;
        }
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_double);
    qsort(traw, (size_t)reps, sizeof(double), cmp_double);
    *ms = t[reps / 2];
    *raw_ms = traw[reps / 2];
    free(t);
    return 0;
}

static double bus_factor(int k, int n)
{
    if (k == C_ALLREDUCE)
        return 2.0 * (n - 1) / n;
    if (k == C_BROADCAST)
        return 1.0;
    return (double)(n - 1) / n;
}

/* ---------------------------------------------------------------- grad sync */

typedef struct backward {
    comm_bench *cb;
    fab_grad_sync *gs;
    int layers;
    void *work_a, *work_b;
    size_t work_bytes;
    int copies;     /* each layer's backward: this many copies of work_bytes */
    double idle_ms; /* > 0: each layer's backward sleeps this long instead of copying */
} backward;

static void sleep_ms(double ms)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)((ms - 1000.0 * (double)ts.tv_sec) * 1e6);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* mode 0: backward only; 1: backward + exchange; 2: exchange alone */
static fab_status run_backward(backward *bw, int mode)
{
    fab_status s = fab_grad_sync_begin(bw->gs, mode != 0);
    for (int l = 0; s == FAB_OK && l < bw->layers; l++) {
        if (mode != 2 && bw->idle_ms > 0)
            sleep_ms(bw->idle_ms); /* the layer's backward, on an idle host */
        else if (mode != 2)
            for (int c = 0; s == FAB_OK && c < bw->copies; c++) /* the layer's backward */
                s = fab_copy(bw->cb->ctx, bw->work_b, bw->work_a, bw->work_bytes);
        if (s == FAB_OK)
            s = fab_grad_sync_ready(bw->gs, l);
    }
    if (s == FAB_OK)
        s = fab_grad_sync_wait(bw->gs);
    if (s == FAB_OK)
        s = fab_synchronize(bw->cb->ctx);
    return s;
}

static double time_backward(backward *bw, bench *b, int mode)
{
    int reps = b->opt.reps, total = b->opt.warmup + reps;
    double *t = calloc((size_t)reps, sizeof(double));
    if (!t)
        return -1;
    for (int r = 0; r < total; r++) {
        if (fab_barrier(bw->cb->comm) != FAB_OK)
            goto fail;
        double t0 = bench_now_ms();
        if (run_backward(bw, mode) != FAB_OK)
            goto fail;
        double dt = slowest(bw->cb, bench_now_ms() - t0);
        if (r >= b->opt.warmup)
            t[r - b->opt.warmup] = dt;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_double);
    double m = t[reps / 2];
    free(t);
    return m;
fail:
    fprintf(stderr, "fab-bench comm: grad_sync: %s\n", fab_last_error());
    free(t);
    return -1;
}

static int bench_grad_sync(comm_bench *cb, bench *b, bool gpu)
{
    enum { LAYERS = 48 };
    backward bw;
    memset(&bw, 0, sizeof bw);
    bw.cb = cb;
    bw.layers = LAYERS;
    bw.copies = 1;
    /* Gradients: 48 layers of 8 MiB (GPU: 32 MiB), 384 MiB in all, about GPT-2
     * 124M's 500 MB, so the default 25 MiB buckets number 16 or more and the last
     * one, which no backward can hide, is a small part of the exchange. --quick:
     * 1 MiB layers in 3 MiB buckets on the CPU (8 MiB layers on the GPU). */
    int64_t grad_n = gpu ? (b->opt.quick ? 2 << 20 : 8 << 20) : (b->opt.quick ? 1 << 18 : 2 << 20);
    fab_grad_sync_config gcfg;
    memset(&gcfg, 0, sizeof gcfg);
    if (!gpu && b->opt.quick)
        gcfg.bucket_cap_bytes = (size_t)3 << 20;
    bw.work_bytes = gpu ? (size_t)256 << 20 : (size_t)8 << 20;
    void *flat = NULL;
    int failed = 0;
    if (fab_alloc(cb->ctx, bw.work_bytes, &bw.work_a) != FAB_OK ||
        fab_alloc(cb->ctx, bw.work_bytes, &bw.work_b) != FAB_OK ||
        fab_grad_sync_create(cb->comm, &gcfg, &bw.gs) != FAB_OK) {
        fprintf(stderr, "fab-bench comm: grad_sync setup: %s\n", fab_last_error());
        failed = 1;
        goto done;
    }
    /* the gradients as slices of one buffer in registration order, as fabriek.h
     * advises: the buckets are all-reduced in place */
    if (fab_alloc(cb->ctx, (size_t)grad_n * 4 * LAYERS, &flat) != FAB_OK ||
        zero_fill(cb->ctx, flat, (size_t)grad_n * 4 * LAYERS) != FAB_OK) {
        fprintf(stderr, "fab-bench comm: grad_sync setup: %s\n", fab_last_error());
        failed = 1;
        goto done;
    }
    for (int l = 0; l < bw.layers; l++) {
        fab_tensor t;
        if (fab_tensor_make((char *)flat + (size_t)grad_n * 4 * (size_t)l, FAB_DTYPE_F32, 1, &grad_n, &t) != FAB_OK ||
            fab_grad_sync_register(bw.gs, &t, NULL) != FAB_OK) {
            fprintf(stderr, "fab-bench comm: grad_sync setup: %s\n", fab_last_error());
            failed = 1;
            goto done;
        }
    }
    double t_comm = time_backward(&bw, b, 2);
    /* the backward's compute sized to take about twice as long as the exchange,
     * as in training that is not bound by communication (overlap can hide no
     * more than the compute, and a pass whose compute only just covers the
     * exchange exposes every hiccup): copies per layer from the time of one */
    double t_one = t_comm >= 0 ? time_backward(&bw, b, 0) : -1;
    if (t_one > 0 && 2 * t_comm > t_one)
        bw.copies = (int)(2 * t_comm / t_one + 0.5);
    int nb = 0;
    fab_grad_sync_bucket_of(bw.gs, 0, NULL, &nb);
    printf("comm: grad_sync, %d layers x %.1f MiB f32 gradients in %d buckets, %d rank%s (%s); each layer's "
           "backward copies %d x %.0f MiB:\n",
           bw.layers, grad_n * 4.0 / (1 << 20), nb, cb->nranks, cb->nranks == 1 ? "" : "s", cb->transport, bw.copies,
           bw.work_bytes / 1048576.0);
    if (cb->nranks == 1)
        printf("      (one rank: nothing is exchanged, the fraction means nothing)\n");
    /* the copy as the backward; on the CPU again with the host idle instead */
    double copy_ms = 0; /* what one layer's copy took */
    for (int idle = 0; idle < (gpu ? 1 : 2) && t_comm >= 0; idle++) {
        bw.idle_ms = idle ? copy_ms : 0;
        double t_compute = time_backward(&bw, b, 0);
        if (!idle)
            copy_ms = t_compute / bw.layers;
        double t_total = t_compute >= 0 ? time_backward(&bw, b, 1) : -1;
        if (t_total < 0) {
            failed = 1;
            break;
        }
        double exposed = t_total - t_compute;
        if (exposed < 0)
            exposed = 0;
        printf("      %s: backward alone %.3f ms, exchange alone %.3f ms, both %.3f ms -> exposed %.3f ms = %.1f%% of "
               "the exchange (goal <= 10%%)\n",
               idle ? "backward sleeping as long as the copy (host idle)" : "backward copying", t_compute, t_comm,
               t_total, exposed, t_comm > 0 ? 100.0 * exposed / t_comm : 0.0);
        bench_row *row = cb->nranks > 1 ? bench_add_row(b) : NULL;
        if (row) {
            snprintf(row->suite, sizeof row->suite, "comm");
            snprintf(row->name, sizeof row->name, "%s", idle ? "grad_sync exposed, idle" : "grad_sync exposed");
            snprintf(row->shape, sizeof row->shape, "%dx%lld n=%d", bw.layers, (long long)grad_n, cb->nranks);
            snprintf(row->dtype, sizeof row->dtype, "f32");
            row->ms = t_total;
            row->work = exposed;
            row->unit = "%exp";
            row->rate = t_comm > 0 ? 100.0 * exposed / t_comm : 0;
            snprintf(row->baseline, sizeof row->baseline, "goal");
            row->baseline_rate = 10.0; /* percent exposed: the goal */
            row->ratio = row->rate / 10.0; /* <= 1 meets it */
        }
    }
    if (t_comm < 0)
        failed = 1;
done:
    fab_grad_sync_destroy(bw.gs);
    fab_free(cb->ctx, flat);
    fab_free(cb->ctx, bw.work_a);
    fab_free(cb->ctx, bw.work_b);
    return failed;
}

/* ----------------------------------------------------------------- the suite */

static fab_status make_comm(comm_bench *cb, bench *b)
{
    fab_context_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.backend = fab_context_backend(b->ctx);
    cb->rank = b->rank; /* MPI is fab-bench's (bench_mpi.c) */
    cb->nranks = b->nranks;
    cb->mpi = b->nranks > 1;
    TRY(bench_context_create(b, &cfg, &cb->ctx)); /* its own context, on fab-bench's device */
#ifdef FAB_BENCH_MPI
    if (cb->mpi)
        return fab_comm_create_mpi(cb->ctx, MPI_COMM_WORLD, NULL, &cb->comm);
#endif
    return fab_comm_create(cb->ctx, 1, 0, NULL, NULL, &cb->comm);
}

int bench_suite_comm(bench *b)
{
    comm_bench cb;
    memset(&cb, 0, sizeof cb);
    bool gpu = fab_context_backend(b->ctx) == FAB_BACKEND_CUDA;
    int failed = 0;
    if (make_comm(&cb, b) != FAB_OK) {
        fprintf(stderr, "fab-bench comm: %s\n", fab_last_error());
        failed = 1;
        goto out;
    }
    fab_comm_native(cb.comm, &cb.transport, &cb.native);
#ifdef FAB_BENCH_NCCL
    if (!strcmp(cb.transport, "nccl"))
        cudaStreamCreateWithFlags(&cb.raw_stream, cudaStreamNonBlocking);
#endif
    if (cb.nranks == 1)
        printf("comm: single process, single-rank communicator (%s): busbw is 0 by definition; run under "
               "mpirun/srun with several ranks for real figures\n",
               cb.transport);
    size_t max_bytes = b->opt.quick ? (size_t)64 << 20 : (size_t)1 << 30;
    if (fab_alloc(cb.ctx, max_bytes, &cb.a) != FAB_OK || fab_alloc(cb.ctx, max_bytes, &cb.b) != FAB_OK ||
        zero_fill(cb.ctx, cb.a, max_bytes) != FAB_OK || zero_fill(cb.ctx, cb.b, max_bytes) != FAB_OK) {
        fprintf(stderr, "fab-bench comm: %s\n", fab_last_error());
        failed = 1;
        goto out;
    }
    printf("comm: %d rank%s over %s; times: median of the slowest rank; baseline: the same call on the raw "
           "%s communicator\n",
           cb.nranks, cb.nranks == 1 ? "" : "s", cb.transport, cb.transport);
    printf("%-15s %12s %10s %10s %10s %10s %9s\n", "collective", "bytes", "fab ms", "algbw GB/s", "busbw GB/s",
           "raw ms", "overhead");
    for (int k = 0; k < C_COUNT; k++) {
        /* 8 B, x4 each step, and the largest size itself */
        for (size_t bytes = 8; bytes <= max_bytes; bytes = bytes == max_bytes ? SIZE_MAX
                                                            : bytes * 4 > max_bytes ? max_bytes : bytes * 4) {
            if (bytes / 4 < (size_t)cb.nranks) /* reduce_scatter/allgather need >= 1 element per rank */
                continue;
            size_t eff = (k == C_REDUCE_SCATTER || k == C_ALLGATHER) ? bytes / 4 / (size_t)cb.nranks *
                                                                            (size_t)cb.nranks * 4
                                                                      : bytes;
            double ms, raw;
            if (time_coll(&cb, b, k, eff, &ms, &raw) != 0) {
                failed = 1;
                continue;
            }
            double algbw = (double)eff / (ms * 1e-3) / 1e9, busbw = algbw * bus_factor(k, cb.nranks);
            double raw_bus = (double)eff / (raw * 1e-3) / 1e9 * bus_factor(k, cb.nranks);
            printf("%-15s %12zu %10.4f %10.3f %10.3f %10.4f %8.1f%%\n", cnames[k], eff, ms, algbw, busbw, raw,
                   100.0 * (ms / raw - 1));
            if (cb.nranks == 1) /* nothing moves: no row for the report */
                continue;
            bench_row *row = bench_add_row(b);
            if (!row) {
                failed = 1;
                continue;
            }
            snprintf(row->suite, sizeof row->suite, "comm");
            snprintf(row->name, sizeof row->name, "%s busbw", cnames[k]);
            snprintf(row->shape, sizeof row->shape, "bytes=%zu n=%d", eff, cb.nranks);
            snprintf(row->dtype, sizeof row->dtype, "f32");
            row->ms = ms;
            row->work = (double)eff;
            row->unit = "GB/s";
            row->rate = busbw;
            snprintf(row->baseline, sizeof row->baseline, "raw %s", cb.transport);
            row->baseline_rate = raw_bus;
            row->ratio = raw / ms; /* 1.0 = no overhead */
        }
    }
    failed |= bench_grad_sync(&cb, b, gpu);
out:
    if (cb.ctx) {
        fab_free(cb.ctx, cb.a);
        fab_free(cb.ctx, cb.b);
    }
#ifdef FAB_BENCH_NCCL
    if (cb.raw_stream)
        cudaStreamDestroy(cb.raw_stream);
#endif
    fab_comm_destroy(cb.comm);
    fab_context_destroy(cb.ctx);
    return failed;
}
