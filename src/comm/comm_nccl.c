/*
 * comm_nccl.c: the NCCL transport of CUDA communicators.
 *
 * Communicators are created non-blocking (ncclConfig_t.blocking = 0): every NCCL
 * call returns at once, possibly with ncclInProgress, and we poll
 * ncclCommGetAsyncError against the deadline. Collectives run on the context's
 * stream; gradient exchange uses a second stream of the communicator (`side`), so
 * its all-reduces overlap the backward kernels on the context stream.
 *
 * A collective that never completes would block the stream forever, and with it
 * fab_synchronize. A watchdog thread per communicator (as PyTorch's ProcessGroupNCCL)
 * watches, per stream, a ring of events recorded after the collectives still in
 * flight, each with the time it was issued, and NCCL's asynchronous error; when the
 * oldest is older than the timeout, or on an error, it records the fault that
 * the next fabriek call on the communicator reports (FAB_ERR_TIMEOUT,
 * FAB_ERR_PEER) and calls ncclCommAbort, which makes the stuck kernels return.
 * A full ring re-records its newest slot (with the new time): never early, and
 * more posts cannot postpone the detection for long (comm_watch.h).
 *
 * NCCL forbids concurrent calls on one communicator. Once the caller has taken the
 * ncclComm_t (fab_comm_native) and may call NCCL on it from its own thread, the
 * watchdog stops polling ncclCommGetAsyncError (fabriek's own calls still do, on
 * the calling thread) and keeps only the timeout and its way out, ncclCommAbort
 * from its own thread, as PyTorch's ProcessGroupNCCL does (NCCL documents no
 * exception to its rule for it; a stuck collective leaves no other).
 *
 * AVG: NCCL premultiplies by 1/nranks rounded to the data type. For bf16 and a
 * rank count that is not a power of two that factor is off by up to 0.4% (1/3 is
 * 0.3340 in bf16), the same for every element: a bias. There fabriek posts SUM
 * and divides afterwards in f32 (comm_cast.cu), as the MPI transport does. f16
 * keeps ncclAvg: its 1/nranks is off by at most 0.05%, and premultiplying keeps
 * the sum inside f16's range. (fab_grad_sync's bf16 buckets are summed and
 * divided while unpacked, grad_sync.c.)
 *
 * Two communicators' kernels on one GPU must run in the same order on every rank:
 * before NCCL 2.26, NCCL kernels of different communicators in flight at once may
 * wait for each other in different orders on different ranks and hang (NCCL's
 * "Using multiple NCCL communicators concurrently"; CUDA_DEVICE_MAX_CONNECTIONS=1
 * makes it likely). A communicator and those split or duplicated from it (the
 * gradient exchange's among them) therefore share an `nccl_order`: each launch
 * waits on the stream for the family's previous launch and records itself, so
 * the GPU runs them in the order the host issued them, which every rank must
 * keep anyway. Not inside a CUDA graph capture (the graph fixes its own order),
 * and not across communicators made from separate unique ids.
 *
 * ncclCommAbort frees the NCCL communicator, and the watchdog and the calling
 * thread both may call it. So every use of the adopted communicator (m->comm) on
 * either thread happens under m->comm_lock with m->aborted checked first: whoever
 * aborts sets `aborted` under the lock, and nobody else touches m->comm after that
 * (calls on an aborted communicator return its fault instead). The abort itself
 * runs after the lock is released: it may take long (it waits for NCCL's streams),
 * and calls meanwhile return the fault instead of waiting for the lock. The
 * watchdog stores its fault before it aborts, so a thread that sees `aborted` also
 * sees why. fab_comm_destroy stops and joins the watchdog before ncclCommFinalize /
 * ncclCommDestroy.
 */
#define _POSIX_C_SOURCE 200809L
#include "comm.h"
#include "comm_watch.h"

#include <cuda_runtime_api.h>
/* NCCL up to 2.23 declares ncclBfloat16 only where cuda_bf16.h defined this macro,
 * which it does for C++ alone; this file is C */
#ifndef __CUDA_BF16_TYPES_EXIST__
#define __CUDA_BF16_TYPES_EXIST__
#endif
#include <nccl.h>
#include <pthread.h>
#include <pwd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The launch order of a family of communicators (see the top); reference-counted,
 * as a duplicate may outlive its origin. */
typedef struct nccl_order {
    pthread_mutex_t lock; /* around a family's launches: wait, launch, record */
    cudaEvent_t last;     /* recorded after the family's newest launch */
    int recorded;         /* `last` has been recorded */
    int refs;             /* communicators sharing it; under lock */
} nccl_order;

typedef struct nccl_state {
    ncclComm_t comm;
    nccl_order *order;       /* shared with the communicators split or duplicated from this one */
    int device;
    cudaStream_t side;       /* gradient exchange; created with the communicator */
    cudaEvent_t fork_ev, join_ev;
    void *scratch;           /* debug-mode check and barrier: 64 bytes per rank, and a slot */
    void *host_bounce;       /* pinned, as large as scratch: host all-gathers copy through it */
    /* watchdog */
    pthread_t thread;
    int have_thread;
    pthread_mutex_t comm_lock; /* around every call on `comm` after adopt(); see the top */
    pthread_mutex_t lock;    /* guards the rings below */
    fab__watch watch[2];                    /* [context stream, gradient-exchange stream] */
    cudaEvent_t marker[2][FAB__WATCH_SLOTS]; /* the watch slots' events */
    double timeout_s;
    atomic_int stop;
    atomic_int native_taken; /* fab_comm_native gave out m->comm: no async-error polling from the watchdog */
    atomic_int aborted;      /* set (under comm_lock) by whoever calls ncclCommAbort */
    atomic_int wd_fault;     /* a fab_status the watchdog found; stored before it aborts */
    char wd_msg[200];        /* written before wd_fault, read after it */
} nccl_state;

static fab_status nccl_fail(fab_status s, const char *op, const char *call, ncclResult_t r)
{
    return fab__fail(s, "%s: %s failed: %s", op, call, ncclGetErrorString(r));
}

static fab_status status_of(ncclResult_t r)
{
    return r == ncclRemoteError ? FAB_ERR_PEER : r == ncclInvalidArgument || r == ncclInvalidUsage
                                                     ? FAB_ERR_INVALID_ARGUMENT
                                                     : FAB_ERR_BACKEND;
}

static cudaStream_t stream_of(fab_comm *c, int side)
{
    nccl_state *m = c->impl;
    return side ? m->side : (cudaStream_t)c->ctx->stream;
}

static fab_status nccl_poll(fab_comm *c);

/* Takes comm_lock unless the communicator was aborted (then nothing may touch
 * m->comm any more): 1 with the lock held, 0 without it. */
static int lock_live(nccl_state *m)
{
    pthread_mutex_lock(&m->comm_lock);
    if (!atomic_load(&m->aborted))
        return 1;
    pthread_mutex_unlock(&m->comm_lock);
    return 0;
}

/* What a call on an aborted communicator returns: its fault. */
static fab_status aborted_fault(fab_comm *c)
{
    (void)nccl_poll(c); /* an abort is a fault: the watchdog's, or one already recorded */
    return fab__comm_usable(c, c->op ? c->op : "fab_comm");
}

/* Waits until `comm` leaves ncclInProgress, bounded by the deadline. `comm` is
 * either c's adopted communicator (polled under comm_lock; a failure aborts c) or
 * one not adopted yet (being created or split off): that one is aborted here on
 * every failure, so the caller never has to. */
static fab_status settle(fab_comm *c, ncclComm_t comm, const char *call)
{
    nccl_state *m = c->impl;
    int adopted = m && m->comm == comm;
    int spins = 0;
    for (;;) {
        ncclResult_t st = ncclSuccess, r;
        if (adopted) {
            if (!lock_live(m))
                return aborted_fault(c);
            r = ncclCommGetAsyncError(comm, &st);
            if (r == ncclSuccess && st == ncclSuccess) {
                /* Joins the call's group job now. NCCL 2.19-2.25 join it only in the
                 * communicator's next call that needs it ready (2.26 on: here,
                 * in ncclCommGetAsyncError); until then it points at this thread's
                 * job slot, which the next non-blocking call on another communicator
                 * reuses, and an abort from the watchdog would reach that one.
                 * (Not created or split ones: adopt() asks them first thing.) */
                int n;
                (void)ncclCommCount(comm, &n);
            }
            pthread_mutex_unlock(&m->comm_lock);
        } else {
            r = ncclCommGetAsyncError(comm, &st);
        }
        if (r != ncclSuccess) {
            if (adopted)
                return fab__comm_fault(c, FAB_ERR_BACKEND, "%s: ncclCommGetAsyncError (%s): %s", c->op, call,
                                       ncclGetErrorString(r));
            ncclCommAbort(comm);
            return nccl_fail(FAB_ERR_BACKEND, c->op, "ncclCommGetAsyncError", r);
        }
        if (st == ncclSuccess)
            return FAB_OK;
        if (st != ncclInProgress) {
            if (adopted)
                return fab__comm_fault(c, status_of(st), "%s: %s: %s", c->op, call, ncclGetErrorString(st));
            ncclCommAbort(comm);
            return nccl_fail(status_of(st), c->op, call, st);
        }
        if (fab__comm_now() > c->deadline) {
            if (adopted)
                return fab__comm_fault(c, FAB_ERR_TIMEOUT, "%s: %s did not complete within %.3g s", c->op, call,
                                       c->timeout_s);
            ncclCommAbort(comm);
            return fab__fail(FAB_ERR_TIMEOUT, "%s: %s did not complete within %.3g s", c->op, call, c->timeout_s);
        }
        fab__comm_backoff(&spins);
    }
}

/* ----------------------------------------------------------------- watchdog */

/* cudaErrorNotReady answers a query, yet the CUDA runtime may keep it as the
 * thread's last error (PyTorch clears it after every query), where the next
 * kernel-launch check (fab__cuda_check_launch) would report it as a failure.
 * Clears it, and only it. */
static cudaError_t query_answer(cudaError_t e)
{
    if (e == cudaErrorNotReady && cudaPeekAtLastError() == cudaErrorNotReady)
        (void)cudaGetLastError();
    return e;
}

static int marker_pending(void *events, int slot)
{
    return query_answer(cudaEventQuery(((cudaEvent_t *)events)[slot])) == cudaErrorNotReady;
}

/* Under m->lock: retires the done slots of stream s; the age of the oldest pending. */
static double watch_oldest_age(nccl_state *m, int s)
{
    return fab__watch_oldest_age(&m->watch[s], marker_pending, m->marker[s], fab__comm_now());
}

static void *watchdog(void *arg)
{
    nccl_state *m = arg;
    cudaSetDevice(m->device);
    /* Relaxed: this thread's event queries must not invalidate a CUDA graph
     * capture that another thread runs meanwhile (global mode would). */
    enum cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    cudaThreadExchangeStreamCaptureMode(&mode);
    while (!atomic_load(&m->stop) && !atomic_load(&m->aborted)) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        fab_status found = FAB_OK;
        char msg[sizeof m->wd_msg] = "";
        pthread_mutex_lock(&m->lock);
        for (int s = 0; s < 2 && found == FAB_OK; s++) {
            double age = watch_oldest_age(m, s);
            if (age > m->timeout_s) {
                found = FAB_ERR_TIMEOUT;
                snprintf(msg, sizeof msg,
                         "a collective on the %s stream did not complete within %.3g s (watchdog; issued %.3g s ago)",
                         s ? "gradient-exchange" : "context", m->timeout_s, age);
            }
        }
        pthread_mutex_unlock(&m->lock);
        if (atomic_load(&m->stop) || !lock_live(m))
            break; /* being destroyed, or aborted by the calling thread */
        ncclResult_t st = ncclSuccess;
        if (found == FAB_OK && !atomic_load(&m->native_taken) && ncclCommGetAsyncError(m->comm, &st) == ncclSuccess &&
            st != ncclSuccess && st != ncclInProgress) {
            found = status_of(st);
            snprintf(msg, sizeof msg, "NCCL reported an asynchronous error: %s", ncclGetErrorString(st));
        }
        if (found != FAB_OK) {
            /* the fault first: whoever sees `aborted` must find it */
            memcpy(m->wd_msg, msg, sizeof msg);
            atomic_store(&m->wd_fault, (int)found);
            atomic_store(&m->aborted, 1);
        }
        pthread_mutex_unlock(&m->comm_lock);
        if (found != FAB_OK) /* outside the lock (see the top); nobody else touches m->comm now */
            ncclCommAbort(m->comm); /* makes the stuck kernels return; frees the communicator */
    }
    return NULL;
}

/* 1: the stream is being captured into a CUDA graph; -1: cannot tell (the legacy
 * stream while another stream captures); 0: not. Leaves no error behind. */
static int capturing(cudaStream_t s)
{
    enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone; /* C: the enum keyword */
    if (cudaStreamIsCapturing(s, &cs) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1;
    }
    return cs != cudaStreamCaptureStatusNone;
}

/* Records "a collective was issued on this stream" for the watchdog: an event in
 * the next free slot, or in the newest one when all are in flight (see the top). */
static void arm(fab_comm *c, int side)
{
    nccl_state *m = c->impl;
    /* A collective captured into a CUDA graph runs when the graph is launched, not
     * now; an event recorded in the capture is not one the watchdog can query. */
    if (capturing(stream_of(c, side)) > 0)
        return;
    pthread_mutex_lock(&m->lock);
    (void)watch_oldest_age(m, side); /* frees the done slots */
    int slot = fab__watch_next_slot(&m->watch[side]);
    if (cudaEventRecord(m->marker[side][slot], stream_of(c, side)) == cudaSuccess)
        fab__watch_commit(&m->watch[side], slot, fab__comm_now());
    pthread_mutex_unlock(&m->lock);
}

/* ------------------------------------------------------------- launch order */

/* A family's order (see the top), with one reference; NULL when out of memory.
 * On the context's device. */
static nccl_order *order_new(void)
{
    nccl_order *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    if (cudaEventCreateWithFlags(&o->last, cudaEventDisableTiming) != cudaSuccess) {
        free(o);
        return NULL;
    }
    pthread_mutex_init(&o->lock, NULL);
    o->refs = 1;
    return o;
}

static nccl_order *order_ref(nccl_order *o)
{
    pthread_mutex_lock(&o->lock);
    o->refs++;
    pthread_mutex_unlock(&o->lock);
    return o;
}

static void order_unref(nccl_order *o)
{
    if (!o)
        return;
    pthread_mutex_lock(&o->lock);
    int left = --o->refs;
    pthread_mutex_unlock(&o->lock);
    if (left)
        return;
    cudaEventDestroy(o->last);
    pthread_mutex_destroy(&o->lock);
    free(o);
}

/* Before a launch on s: takes the family's lock and makes s wait for the family's
 * previous launch, on whichever stream it went. order_end must follow, whatever
 * happens to the launch (unless this fails: then the lock is not held). */
static fab_status order_begin(fab_comm *c, cudaStream_t s)
{
    nccl_order *o = ((nccl_state *)c->impl)->order;
    pthread_mutex_lock(&o->lock);
    if (!o->recorded || capturing(s) != 0)
        return FAB_OK;
    cudaError_t e = cudaStreamWaitEvent(s, o->last, 0);
    if (e == cudaSuccess)
        return FAB_OK;
    pthread_mutex_unlock(&o->lock);
    return fab__fail(FAB_ERR_BACKEND, "%s: ordering the collective after the previous one of its communicators: %s",
                     c->op, cudaGetErrorString(e));
}

/* After it: `launched` (the kernels are on s: NCCL settled) records the launch as
 * the family's newest; releases the lock. */
static void order_end(fab_comm *c, cudaStream_t s, int launched)
{
    nccl_order *o = ((nccl_state *)c->impl)->order;
    if (launched && capturing(s) == 0 && cudaEventRecord(o->last, s) == cudaSuccess)
        o->recorded = 1;
    pthread_mutex_unlock(&o->lock);
}

/* ---------------------------------------------------------------- transport */

static ncclDataType_t nccl_type(fab_dtype d)
{
    switch (d) {
    case FAB_DTYPE_F16: return ncclFloat16;
    case FAB_DTYPE_BF16: return ncclBfloat16;
    case FAB_DTYPE_F64: return ncclFloat64;
    case FAB_DTYPE_I32: return ncclInt32;
    case FAB_DTYPE_I64: return ncclInt64;
    default: return ncclFloat32;
    }
}

static ncclRedOp_t nccl_op(fab_reduce_op op)
{
    switch (op) {
    case FAB_REDUCE_AVG: return ncclAvg;
    case FAB_REDUCE_MAX: return ncclMax;
    case FAB_REDUCE_MIN: return ncclMin;
    default: return ncclSum;
    }
}

/* AVG posted as SUM and divided afterwards (see the top). */
static int avg_by_division(const fab_comm *c, const fab__coll *k)
{
    return k->op == FAB_REDUCE_AVG && k->dtype == FAB_DTYPE_BF16 && (c->nranks & (c->nranks - 1)) != 0 &&
           (k->kind == FAB__COLL_ALLREDUCE || k->kind == FAB__COLL_REDUCE_SCATTER);
}

static fab_status enter(fab_comm *c)
{
    cudaError_t e = cudaSetDevice(c->ctx->device);
    return e == cudaSuccess ? FAB_OK
                            : fab__fail(FAB_ERR_BACKEND, "%s: cudaSetDevice: %s", c->op, cudaGetErrorString(e));
}

static fab_status nccl_post(fab_comm *c, const fab__coll *colls, int n, int side)
{
    nccl_state *m = c->impl;
    FAB__TRY(enter(c));
    cudaStream_t s = stream_of(c, side);
    FAB__TRY(order_begin(c, s));
    if (!lock_live(m)) {
        order_end(c, s, 0);
        return aborted_fault(c);
    }
    ncclResult_t r = ncclGroupStart();
    for (int i = 0; i < n && (r == ncclSuccess || r == ncclInProgress); i++) {
        const fab__coll *k = &colls[i];
        size_t cnt = (size_t)k->count;
        ncclDataType_t t = nccl_type(k->dtype);
        ncclRedOp_t op = avg_by_division(c, k) ? ncclSum : nccl_op(k->op);
        switch (k->kind) {
        case FAB__COLL_ALLREDUCE:
            r = ncclAllReduce(k->send, k->recv, cnt, t, op, m->comm, s);
            break;
        case FAB__COLL_REDUCE_SCATTER:
            r = ncclReduceScatter(k->send, k->recv, cnt, t, op, m->comm, s);
            break;
        case FAB__COLL_ALLGATHER:
            r = ncclAllGather(k->send, k->recv, cnt, t, m->comm, s);
            break;
        case FAB__COLL_BROADCAST:
            r = ncclBroadcast(k->send ? k->send : k->recv, k->recv, cnt, t, k->root, m->comm, s);
            break;
        case FAB__COLL_BARRIER: /* a one-element all-reduce, then wait for it below */
            r = ncclAllReduce(m->scratch, m->scratch, 1, ncclInt32, ncclSum, m->comm, s);
            break;
        }
    }
    ncclResult_t e = ncclGroupEnd();
    pthread_mutex_unlock(&m->comm_lock);
    if (r == ncclSuccess || r == ncclInProgress)
        r = e;
    if (r != ncclSuccess && r != ncclInProgress) {
        order_end(c, s, 0);
        return fab__comm_fault(c, status_of(r), "%s: NCCL refused the collective: %s", c->op, ncclGetErrorString(r));
    }
    fab_status settled = settle(c, m->comm, "enqueueing the collective");
    order_end(c, s, settled == FAB_OK); /* non-blocking: on the stream only once settled */
    FAB__TRY(settled);
    arm(c, side); /* the collective is on the stream: watch it (before anything queued behind it) */
    fab_status divided = FAB_OK;
    for (int i = 0; i < n && divided == FAB_OK; i++) /* recv holds count elements for both kinds */
        if (avg_by_division(c, &colls[i]))
            divided = fab__comm_cast_cuda(colls[i].recv, colls[i].dtype, colls[i].recv, colls[i].dtype,
                                          colls[i].count, (float)c->nranks, s);
    if (divided != FAB_OK) /* recv would hold the sum: the result is lost */
        return fab__comm_fault(c, divided, "%s: AVG's division after the sum could not be launched (%s)", c->op,
                               fab_last_error());
    if (n == 1 && colls[0].kind == FAB__COLL_BARRIER)
        return c->tp->complete(c, side, 1);
    return FAB_OK;
}

static fab_status nccl_test(fab_comm *c, int side, int *done)
{
    if (capturing(stream_of(c, side))) { /* querying a capturing stream would end the capture */
        *done = 0;
        return fab__comm_usable(c, c->op ? c->op : "fab_comm");
    }
    cudaError_t e = query_answer(cudaStreamQuery(stream_of(c, side)));
    *done = e == cudaSuccess;
    if (e != cudaSuccess && e != cudaErrorNotReady)
        return fab__fail(FAB_ERR_BACKEND, "%s: cudaStreamQuery: %s", c->op, cudaGetErrorString(e));
    /* a watchdog abort makes the stream drain: the fault, not "done", is the answer */
    return fab__comm_usable(c, c->op ? c->op : "fab_comm");
}

static fab_status nccl_complete(fab_comm *c, int side, int host)
{
    nccl_state *m = c->impl;
    FAB__TRY(enter(c));
    if (!host) {
        if (!side)
            return FAB_OK; /* already in order on the context stream */
        cudaError_t e = cudaEventRecord(m->join_ev, m->side);
        if (e == cudaSuccess)
            e = cudaStreamWaitEvent((cudaStream_t)c->ctx->stream, m->join_ev, 0);
        return e == cudaSuccess ? FAB_OK
                                : fab__fail(FAB_ERR_BACKEND, "%s: joining the streams: %s", c->op, cudaGetErrorString(e));
    }
    if (capturing(stream_of(c, side)))
        return fab__fail(FAB_ERR_UNSUPPORTED, "%s: waits on the host, which cannot be part of a CUDA graph capture "
                                              "(the stream, or the legacy stream's neighbour, is being captured)",
                         c->op);
    int spins = 0;
    for (;;) {
        int done = 0;
        FAB__TRY(nccl_test(c, side, &done));
        if (done)
            return FAB_OK;
        if (fab__comm_now() > c->deadline)
            return fab__comm_fault(c, FAB_ERR_TIMEOUT,
                                   "%s: collectives did not complete within %.3g s on rank %d of %d (a peer is not "
                                   "taking part, or is stuck)",
                                   c->op, c->timeout_s, c->rank, c->nranks);
        fab__comm_backoff(&spins);
    }
}

static fab_status nccl_fork(fab_comm *c)
{
    nccl_state *m = c->impl;
    FAB__TRY(enter(c));
    cudaError_t e = cudaEventRecord(m->fork_ev, (cudaStream_t)c->ctx->stream);
    if (e == cudaSuccess)
        e = cudaStreamWaitEvent(m->side, m->fork_ev, 0);
    return e == cudaSuccess ? FAB_OK
                            : fab__fail(FAB_ERR_BACKEND, "%s: forking the streams: %s", c->op, cudaGetErrorString(e));
}

static fab_status nccl_copy(fab_comm *c, int side, void *dst, const void *src, size_t bytes)
{
    if (!bytes || dst == src)
        return FAB_OK;
    /* Default: the context's memory may be device, managed or pinned host memory. */
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_of(c, side));
    return e == cudaSuccess ? FAB_OK : fab__fail(FAB_ERR_BACKEND, "%s: cudaMemcpyAsync: %s", c->op, cudaGetErrorString(e));
}

static fab_status nccl_cast(fab_comm *c, int side, void *dst, fab_dtype dd, const void *src, fab_dtype sd, int64_t n,
                            int divisor)
{
    if (dd == sd && divisor == 1)
        return nccl_copy(c, side, dst, src, (size_t)n * fab_dtype_size(dd));
    return fab__comm_cast_cuda(dst, dd, src, sd, n, (float)divisor, stream_of(c, side));
}

/* Gathers `bytes` (<= 64) of host data from every rank (the debug-mode check).
 * Both copies go through a pinned buffer, so they are truly asynchronous on the
 * context's stream and the one wait below, nccl_complete, keeps the deadline (a
 * copy to pageable memory would block the host, with no deadline, until the
 * all-gather ended). */
static fab_status nccl_allgather_host(fab_comm *c, const void *mine, void *all, size_t bytes)
{
    nccl_state *m = c->impl;
    if (bytes > 64)
        return fab__fail(FAB_ERR_INTERNAL, "%s: debug check of %zu bytes", c->op, bytes);
    FAB__TRY(enter(c));
    cudaStream_t s = (cudaStream_t)c->ctx->stream;
    const size_t slot_off = 64 * (size_t)c->nranks; /* after the gathered area */
    char *slot = (char *)m->scratch + slot_off, *bounce = m->host_bounce;
    memcpy(bounce + slot_off, mine, bytes);
    cudaError_t e = cudaMemcpyAsync(slot, bounce + slot_off, bytes, cudaMemcpyHostToDevice, s);
    if (e != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "%s: cudaMemcpyAsync: %s", c->op, cudaGetErrorString(e));
    FAB__TRY(order_begin(c, s));
    if (!lock_live(m)) {
        order_end(c, s, 0);
        return aborted_fault(c);
    }
    ncclResult_t r = ncclAllGather(slot, m->scratch, bytes, ncclUint8, m->comm, s);
    pthread_mutex_unlock(&m->comm_lock);
    if (r != ncclSuccess && r != ncclInProgress) {
        order_end(c, s, 0);
        return fab__comm_fault(c, status_of(r), "%s: ncclAllGather (debug check): %s", c->op, ncclGetErrorString(r));
    }
    fab_status settled = settle(c, m->comm, "the debug-mode check");
    order_end(c, s, settled == FAB_OK);
    FAB__TRY(settled);
    arm(c, 0);
    e = cudaMemcpyAsync(bounce, m->scratch, bytes * (size_t)c->nranks, cudaMemcpyDeviceToHost, s);
    if (e != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "%s: cudaMemcpyAsync: %s", c->op, cudaGetErrorString(e));
    FAB__TRY(nccl_complete(c, 0, 1));
    memcpy(all, bounce, bytes * (size_t)c->nranks);
    return FAB_OK;
}

static fab_status nccl_poll(fab_comm *c)
{
    nccl_state *m = c->impl;
    if (!m || c->fault != FAB_OK)
        return FAB_OK;
    /* `aborted` before wd_fault: the watchdog stores them the other way round */
    int aborted = atomic_load(&m->aborted);
    int f = atomic_load(&m->wd_fault);
    if (f != FAB_OK) {
        c->fault = (fab_status)f;
        snprintf(c->fault_msg, sizeof c->fault_msg, "%s", m->wd_msg);
    } else if (aborted) { /* cannot happen unrecorded, but an aborted communicator is never usable */
        c->fault = FAB_ERR_BACKEND;
        snprintf(c->fault_msg, sizeof c->fault_msg, "the NCCL communicator was aborted");
    }
    return FAB_OK; /* fab__comm_usable reports c->fault */
}

/* ncclCommAbort, once: `aborted` set under comm_lock (the watchdog may be inside a
 * call on the communicator), the abort after it (see the top). */
static void abort_comm(nccl_state *m)
{
    pthread_mutex_lock(&m->comm_lock);
    int first = !atomic_exchange(&m->aborted, 1);
    pthread_mutex_unlock(&m->comm_lock);
    if (first)
        ncclCommAbort(m->comm); /* m->comm dangles from here on; `aborted` keeps everyone off it */
}

static void nccl_abort(fab_comm *c)
{
    nccl_state *m = c->impl;
    if (m)
        abort_comm(m);
}

static void free_state(nccl_state *m)
{
    if (m->have_thread) {
        atomic_store(&m->stop, 1);
        pthread_join(m->thread, NULL);
    }
    if (m->scratch)
        cudaFree(m->scratch);
    if (m->host_bounce)
        cudaFreeHost(m->host_bounce);
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < FAB__WATCH_SLOTS; i++)
            if (m->marker[s][i])
                cudaEventDestroy(m->marker[s][i]);
    if (m->fork_ev)
        cudaEventDestroy(m->fork_ev);
    if (m->join_ev)
        cudaEventDestroy(m->join_ev);
    if (m->side)
        cudaStreamDestroy(m->side);
    order_unref(m->order);
    pthread_mutex_destroy(&m->lock);
    pthread_mutex_destroy(&m->comm_lock);
    free(m);
}

static fab_status nccl_destroy(fab_comm *c)
{
    nccl_state *m = c->impl;
    if (!m)
        return FAB_OK;
    fab_status s = enter(c); /* on failure: no wait, no finalize; the communicator is aborted below */
    if (s == FAB_OK && c->fault == FAB_OK && !atomic_load(&m->aborted)) {
        /* the watchdog still watches these waits */
        s = nccl_complete(c, 1, 1);
        if (s == FAB_OK)
            s = nccl_complete(c, 0, 1);
    }
    /* Stop the watchdog before the communicator goes: from here on this thread is
     * the only one that touches m->comm. */
    if (m->have_thread) {
        atomic_store(&m->stop, 1);
        pthread_join(m->thread, NULL);
        m->have_thread = 0;
    }
    (void)nccl_poll(c); /* a fault the watchdog found meanwhile */
    if (s == FAB_OK && c->fault == FAB_OK && !atomic_load(&m->aborted)) {
        ncclResult_t r = ncclCommFinalize(m->comm);
        if (r != ncclSuccess && r != ncclInProgress)
            s = fab__comm_fault(c, status_of(r), "fab_comm_destroy: ncclCommFinalize: %s", ncclGetErrorString(r));
        else
            s = settle(c, m->comm, "ncclCommFinalize"); /* a failure aborts it */
    }
    if (s == FAB_OK && c->fault == FAB_OK && !atomic_load(&m->aborted))
        ncclCommDestroy(m->comm);
    else
        abort_comm(m); /* no-op when aborted already */
    free_state(m);
    c->impl = NULL;
    return s;
}

static fab_status nccl_split(fab_comm *c, int color, int key, fab_comm *out);

static fab_status nccl_dup(fab_comm *c, fab_comm *out)
{
    return nccl_split(c, 0, c->rank, out); /* one color, keys in rank order: the same ranks, in order */
}

static void *nccl_native(fab_comm *c)
{
    nccl_state *m = c->impl;
    /* under comm_lock: a watchdog poll under way ends before the caller has the handle */
    pthread_mutex_lock(&m->comm_lock);
    atomic_store(&m->native_taken, 1);
    void *h = atomic_load(&m->aborted) ? NULL : m->comm; /* NULL once aborted (freed by NCCL) */
    pthread_mutex_unlock(&m->comm_lock);
    return h;
}

static const fab__transport nccl_transport = {
    "nccl", nccl_post, nccl_test, nccl_complete, nccl_fork, nccl_copy, nccl_cast,
    nccl_allgather_host, nccl_split, nccl_dup, nccl_poll, nccl_abort, nccl_destroy, nccl_native, 0,
};

/* Wraps a created ncclComm_t: streams, events, scratch, watchdog. Takes over one
 * reference to `order` (its family's; NULL: out of memory) either way. */
static fab_status adopt(fab_comm *c, ncclComm_t comm, nccl_order *order)
{
    nccl_state *m = order ? calloc(1, sizeof *m) : NULL;
    if (!m) {
        ncclCommAbort(comm);
        order_unref(order);
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: out of host memory", c->op);
    }
    pthread_mutex_init(&m->lock, NULL);
    pthread_mutex_init(&m->comm_lock, NULL);
    m->comm = comm;
    m->order = order;
    m->device = c->ctx->device;
    m->timeout_s = c->timeout_s;
    int rank = 0, size = 1;
    ncclResult_t r = ncclCommUserRank(comm, &rank);
    if (r == ncclSuccess)
        r = ncclCommCount(comm, &size);
    if (r != ncclSuccess) {
        ncclCommAbort(comm);
        free_state(m);
        return nccl_fail(status_of(r), c->op, "ncclCommUserRank/ncclCommCount", r);
    }
    cudaError_t e = cudaStreamCreateWithFlags(&m->side, cudaStreamNonBlocking);
    if (e == cudaSuccess)
        e = cudaEventCreateWithFlags(&m->fork_ev, cudaEventDisableTiming);
    if (e == cudaSuccess)
        e = cudaEventCreateWithFlags(&m->join_ev, cudaEventDisableTiming);
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < FAB__WATCH_SLOTS && e == cudaSuccess; i++)
            e = cudaEventCreateWithFlags(&m->marker[s][i], cudaEventDisableTiming);
    if (e == cudaSuccess)
        e = cudaMalloc(&m->scratch, 64 * ((size_t)size + 1));
    if (e == cudaSuccess)
        e = cudaMallocHost(&m->host_bounce, 64 * ((size_t)size + 1));
    /* on the context's stream: the legacy default stream is not ordered with it */
    if (e == cudaSuccess)
        e = cudaMemsetAsync(m->scratch, 0, 64 * ((size_t)size + 1), (cudaStream_t)c->ctx->stream);
    if (e != cudaSuccess) {
        ncclCommAbort(comm);
        free_state(m);
        return fab__fail(FAB_ERR_BACKEND, "%s: setting up the communicator's stream: %s", c->op, cudaGetErrorString(e));
    }
    c->impl = m;
    c->tp = &nccl_transport;
    c->rank = rank;
    c->nranks = size;
    if (pthread_create(&m->thread, NULL, watchdog, m) == 0)
        m->have_thread = 1;
    else {
        c->impl = NULL;
        ncclCommAbort(comm);
        free_state(m);
        return fab__fail(FAB_ERR_BACKEND, "%s: cannot start the communicator's watchdog thread", c->op);
    }
    return FAB_OK;
}

static ncclConfig_t make_config(void)
{
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0; /* so that a stuck init or collective can be aborted */
    return cfg;
}

/* On the context's device: NCCL's first call may create a CUDA context, and on a
 * node whose every GPU is visible it would otherwise land on GPU 0. */
fab_status fab__nccl_unique_id(fab_context *ctx, fab_comm_unique_id *id)
{
    cudaError_t e = cudaSetDevice(ctx->device);
    if (e != cudaSuccess)
        return fab__fail(FAB_ERR_BACKEND, "fab_comm_get_unique_id: cudaSetDevice: %s", cudaGetErrorString(e));
    ncclUniqueId u;
    _Static_assert(sizeof u <= sizeof id->bytes, "ncclUniqueId fits fab_comm_unique_id");
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess)
        return nccl_fail(FAB_ERR_BACKEND, "fab_comm_get_unique_id", "ncclGetUniqueId", r);
    memset(id, 0, sizeof *id);
    memcpy(id->bytes, &u, sizeof u);
    return FAB_OK;
}

/* `name`=value in NCCL configuration file `path` (lines NAME=VALUE, as NCCL reads
 * them) into value; 1 when found. */
static int conf_file_value(const char *path, const char *name, char *value, size_t size)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[1024];
    size_t len = strlen(name);
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, name, len) == 0 && line[len] == '=') {
            size_t n = strlen(line + len + 1);
            n = n < size - 1 ? n : size - 1;
            memcpy(value, line + len + 1, n);
            value[n] = '\0';
            found = 1;
        }
    }
    fclose(f);
    return found;
}

/* The value NCCL will see for variable `name`: the environment's, else the first of
 * its configuration files that sets it (NCCL_CONF_FILE, or else ~/.nccl.conf; then
 * /etc/nccl.conf), which NCCL copies into the environment at its first call only.
 * *where says which; NULL when nothing sets it. */
static const char *nccl_setting(const char *name, char *value, size_t size, char *where, size_t wsize)
{
    const char *env = getenv(name);
    if (env) {
        snprintf(value, size, "%s", env);
        snprintf(where, wsize, "the environment");
        return value;
    }
    char path[1024] = "";
    const char *user = getenv("NCCL_CONF_FILE");
    if (user && *user) {
        snprintf(path, sizeof path, "%s", user);
    } else {
        const struct passwd *pw = getpwuid(getuid());
        if (pw && pw->pw_dir)
            snprintf(path, sizeof path, "%s/.nccl.conf", pw->pw_dir);
    }
    const char *files[2] = {path, "/etc/nccl.conf"};
    for (int i = 0; i < 2; i++)
        if (files[i][0] && conf_file_value(files[i], name, value, size)) {
            snprintf(where, wsize, "%s", files[i]);
            return value;
        }
    return NULL;
}

fab_status fab__nccl_create(fab_comm *c, int nranks, int rank, const fab_comm_unique_id *id)
{
    if (!c->op)
        fab__comm_arm(c, "fab_comm_create");
    fab__comm_arm(c, c->op);
    /* NCCL lets this variable override config.blocking; a blocking communicator
     * could hang in a call the timeout cannot abort */
    char value[64], where[1024];
    const char *blocking = nccl_setting("NCCL_COMM_BLOCKING", value, sizeof value, where, sizeof where);
    if (blocking && atoi(blocking) == 1)
        return fab__fail(FAB_ERR_UNSUPPORTED,
                         "%s: NCCL_COMM_BLOCKING=1 (set in %s) makes NCCL communicators blocking, and fab_comm needs "
                         "non-blocking ones to enforce its timeout; remove it", c->op, where);
    FAB__TRY(enter(c));
    ncclUniqueId u;
    memcpy(&u, id->bytes, sizeof u);
    ncclConfig_t cfg = make_config();
    ncclComm_t comm = NULL;
    ncclResult_t r = ncclCommInitRankConfig(&comm, nranks, u, rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        if (comm)
            ncclCommAbort(comm);
        return nccl_fail(status_of(r), c->op, "ncclCommInitRankConfig", r);
    }
    FAB__TRY(settle(c, comm, "ncclCommInitRankConfig"));
    return adopt(c, comm, order_new()); /* a new family */
}

static fab_status nccl_split(fab_comm *c, int color, int key, fab_comm *out)
{
    nccl_state *m = c->impl;
    FAB__TRY(enter(c));
    ncclConfig_t cfg = make_config();
    ncclComm_t nc = NULL;
    if (!lock_live(m))
        return aborted_fault(c);
    ncclResult_t r = ncclCommSplit(m->comm, color == FAB_COMM_NO_COLOR ? NCCL_SPLIT_NOCOLOR : color, key, &nc, &cfg);
    pthread_mutex_unlock(&m->comm_lock);
    if (r != ncclSuccess && r != ncclInProgress) {
        if (nc)
            ncclCommAbort(nc);
        return nccl_fail(status_of(r), c->op, "ncclCommSplit", r);
    }
    fab_status s = settle(c, m->comm, "ncclCommSplit");
    if (s != FAB_OK) { /* the parent is aborted now; the child goes too */
        if (nc)
            ncclCommAbort(nc);
        return s;
    }
    if (!nc)
        return FAB_OK; /* FAB_COMM_NO_COLOR */
    out->op = c->op;
    out->deadline = c->deadline;
    FAB__TRY(settle(out, nc, "ncclCommSplit")); /* out->impl is NULL: a failure aborts nc */
    return adopt(out, nc, order_ref(m->order)); /* the parent's family */
}
