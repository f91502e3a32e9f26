/*
 * comm_mpi.c: the MPI transport of CPU communicators, and the MPI bootstrap of
 * every communicator (fabriek_mpi.h).
 *
 * Every collective is posted non-blocking and completed by polling against the
 * call's deadline, so a rank that never joins turns into FAB_ERR_TIMEOUT instead
 * of a hang: MPI's own (MPI_Iallreduce, ...), or for large all-reduce,
 * reduce-scatter and all-gather fabriek's ring on MPI_Isend/MPI_Irecv
 * (comm_mpi_ring.c; libnbc's are up to ~2x slower than the blocking calls there). With MPI_THREAD_MULTIPLE a
 * progress thread polls the side queue (gradient buckets) while the caller
 * computes; everything else is polled by the calling thread. MPI cannot cancel a posted
 * collective: after a timeout the communicator is only marked unusable, its MPI
 * communicator and the timed-out request are left alone (MPI may still write the
 * receive buffer if the late peer ever arrives), and nothing is freed that MPI
 * might touch.
 *
 * So MPI is only ever handed memory that outlives a timeout: the caller's tensors
 * (documented: they stay with MPI after a timeout), or buffers this file allocates
 * and owns (the debug-mode check's send/receive buffer, reduce_scatter's scratch,
 * the new MPI_Comm of MPI_Comm_idup, the unique id of the NCCL bootstrap). Results
 * are copied out of them only on success. On a timeout (or an MPI error) they stay
 * with the live request and are leaked on purpose: fab_comm_destroy frees the
 * state only when every request it knows of has completed by then. Never a stack
 * variable and never a buffer the caller may free.
 *
 * MPI has no bf16 or f16 type: those travel as MPI_UINT16_T and reduce with user
 * MPI_Ops that widen each pair to f32, combine and round back (RNE). AVG is SUM
 * followed by a division by nranks when the request completes.
 */
#define _POSIX_C_SOURCE 200809L
#include "comm.h"

#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "comm_mpi_ring.h"
#include "fabriek_mpi.h"

#define INVALID FAB_ERR_INVALID_ARGUMENT

/* All-reduce, reduce-scatter and all-gather of at least RING_MIN_DEFAULT bytes
 * run on fabriek's ring (comm_mpi_ring.c), in RING_CHUNK_DEFAULT messages
 * (all-gather: whole segments);
 * smaller ones on MPI's own non-blocking collectives. Both can be overridden
 * (FAB_COMM_RING_MIN_BYTES, FAB_COMM_RING_CHUNK_BYTES; the same on every rank). */
#define RING_MIN_DEFAULT ((size_t)64 << 10)
#define RING_CHUNK_DEFAULT ((size_t)1 << 20)

/* A posted request and what to do when it completes. */
typedef struct pending {
    MPI_Request req;
    void *buf;           /* AVG: divide buf[0:count) by nranks; RS in place: move */
    int64_t count;
    fab_dtype dtype;
    int avg;
    void *move_to;       /* reduce_scatter in place: the result lands at buf, belongs here */
    void *scratch;       /* owned (reduce_scatter in place): freed when the request completes */
    fab__ring *ring;     /* instead of req: fabriek's ring (comm_mpi_ring.c) */
} pending;

typedef struct mpi_state {
    MPI_Comm comm;
    MPI_Op ops16[2][3]; /* [f16, bf16][sum, max, min] */
    int have_ops;
    pending *pend[2];   /* [main, side] */
    int npend[2], cap[2];
    MPI_Request host_req; /* the debug-mode check's all-gather */
    void *host_buf;       /* its send and receive buffer, owned while host_req lives */
    pthread_mutex_t lock; /* guards side 1 (pend[1], npend[1], thread_err): shared with the thread */
    pthread_cond_t wake;  /* side 1 has work, or stop */
    pthread_t thread;     /* the progress thread (progress_main) */
    int thread_ok;        /* MPI_THREAD_MULTIPLE and not disabled: start it on the first side post */
    int thread_on, stop;
    int thread_err;       /* its MPI error, if any, and the call */
    const char *thread_call;
    size_t ring_min;      /* collectives of at least this many bytes take the ring */
    size_t ring_chunk;    /* the ring's message size */
    size_t gather_chunk;  /* all-gather's: whole segments (1 GiB cap) unless FAB_COMM_RING_CHUNK_BYTES is set */
    unsigned ring_seq;    /* rings started: their message tags */
    int ring_tags;        /* tags 1 .. ring_tags (MPI_TAG_UB): rings in flight at most */
} mpi_state;

/* ---------------------------------------------------------------- errors */

static fab_status mpi_error(fab_comm *c, const char *call, int err)
{
    char text[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(err, text, &len);
    fab_status s = FAB_ERR_BACKEND;
#ifdef MPIX_ERR_PROC_FAILED
    int cls = 0;
    MPI_Error_class(err, &cls);
    if (cls == MPIX_ERR_PROC_FAILED)
        s = FAB_ERR_PEER;
#endif
    if (c)
        return fab__comm_fault(c, s, "%s: %s failed: %s", c->op ? c->op : "fab_comm", call, text);
    return fab__fail(s, "%s failed: %s", call, text);
}

/* Polls *req against the deadline. */
static fab_status wait_one(fab_comm *c, MPI_Request *req, const char *what)
{
    int done = 0, spins = 0;
    for (;;) {
        int err = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (err != MPI_SUCCESS)
            return mpi_error(c, what, err);
        if (done)
            return FAB_OK;
        if (fab__comm_now() > c->deadline)
            return fab__comm_fault(c, FAB_ERR_TIMEOUT,
                                   "%s: %s did not complete within %.3g s on rank %d of %d (a peer is not taking part, "
                                   "or is stuck)",
                                   c->op ? c->op : "fab_comm", what, c->timeout_s, c->rank, c->nranks);
        fab__comm_backoff(&spins);
    }
}

/* ------------------------------------------------------- 16-bit reductions */

#define OP16(name, dtype, rop)                                                   \
    static void name(void *in, void *inout, int *len, MPI_Datatype *dt)        \
    {                                                                           \
        (void)dt;                                                               \
        fab__host_reduce(inout, in, *len, dtype, rop);                          \
    }
OP16(f16_sum, FAB_DTYPE_F16, FAB_REDUCE_SUM)
OP16(f16_max, FAB_DTYPE_F16, FAB_REDUCE_MAX)
OP16(f16_min, FAB_DTYPE_F16, FAB_REDUCE_MIN)
OP16(bf16_sum, FAB_DTYPE_BF16, FAB_REDUCE_SUM)
OP16(bf16_max, FAB_DTYPE_BF16, FAB_REDUCE_MAX)
OP16(bf16_min, FAB_DTYPE_BF16, FAB_REDUCE_MIN)

static fab_status make_ops(mpi_state *m)
{
    MPI_User_function *fns[2][3] = {{f16_sum, f16_max, f16_min}, {bf16_sum, bf16_max, bf16_min}};
    for (int d = 0; d < 2; d++)
        for (int o = 0; o < 3; o++) {
            int err = MPI_Op_create(fns[d][o], 1, &m->ops16[d][o]);
            if (err != MPI_SUCCESS)
                return mpi_error(NULL, "MPI_Op_create", err);
        }
    m->have_ops = 1;
    return FAB_OK;
}

static MPI_Datatype mpi_type(fab_dtype d)
{
    switch (d) {
    case FAB_DTYPE_F32: return MPI_FLOAT;
    case FAB_DTYPE_F64: return MPI_DOUBLE;
    case FAB_DTYPE_I32: return MPI_INT32_T;
    case FAB_DTYPE_I64: return MPI_INT64_T;
    default: return MPI_UINT16_T; /* f16, bf16 */
    }
}

static MPI_Op mpi_op(mpi_state *m, fab_dtype d, fab_reduce_op op)
{
    int o = op == FAB_REDUCE_MAX ? 1 : op == FAB_REDUCE_MIN ? 2 : 0;
    if (d == FAB_DTYPE_F16 || d == FAB_DTYPE_BF16)
        return m->ops16[d == FAB_DTYPE_BF16][o];
    return o == 1 ? MPI_MAX : o == 2 ? MPI_MIN : MPI_SUM;
}

/* ---------------------------------------------------------------- transport */

static pending *push(fab_comm *c, int side)
{
    mpi_state *m = c->impl;
    if (m->npend[side] == m->cap[side]) {
        int cap = m->cap[side] ? 2 * m->cap[side] : 16;
        pending *p = realloc(m->pend[side], sizeof *p * (size_t)cap);
        if (!p)
            return NULL;
        m->pend[side] = p;
        m->cap[side] = cap;
    }
    pending *p = &m->pend[side][m->npend[side]++];
    memset(p, 0, sizeof *p);
    p->req = MPI_REQUEST_NULL;
    return p;
}

static fab_status post_one(fab_comm *c, const fab__coll *k, int side)
{
    mpi_state *m = c->impl;
    size_t es = fab_dtype_size(k->dtype);
    int64_t total = k->kind == FAB__COLL_ALLGATHER || k->kind == FAB__COLL_REDUCE_SCATTER ? k->count * c->nranks
                                                                                          : k->count;
    int ring = (k->kind == FAB__COLL_ALLREDUCE || k->kind == FAB__COLL_REDUCE_SCATTER ||
                k->kind == FAB__COLL_ALLGATHER) &&
               (size_t)total * es >= m->ring_min; /* the ring's messages are chunks: any count fits */
    if (total > INT_MAX && !ring)
        return fab__fail(FAB_ERR_UNSUPPORTED, "%s: %lld elements is more than MPI's int count allows", c->op,
                         (long long)total);
    int n = (int)k->count;
    MPI_Datatype t = mpi_type(k->dtype);
    pending *p = push(c, side);
    if (!p)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: out of host memory", c->op);
    if (ring && m->npend[0] + m->npend[1] > m->ring_tags) {
        m->npend[side]--;
        return fab__fail(FAB_ERR_UNSUPPORTED,
                         "%s: more than %d collectives in flight on one communicator (MPI_TAG_UB); wait for some first",
                         c->op, m->ring_tags);
    }
    if (ring) {
        /* Every rank decides alike (same sizes, same settings) and starts its rings
         * in the same order, so the tags match. */
        int tag = 1 + (int)(m->ring_seq++ % (unsigned)m->ring_tags);
        fab_status s = fab__ring_start(m->comm, tag, k->kind == FAB__COLL_ALLGATHER ? m->gather_chunk : m->ring_chunk,
                                       k, &p->ring);
        if (s != FAB_OK) {
            char why[128];
            snprintf(why, sizeof why, "%s", fab_last_error());
            m->npend[side]--;
            return fab__fail(s, "%s: %s", c->op, why);
        }
        p->buf = k->recv;
        p->count = k->count;
        p->dtype = k->dtype;
        p->avg = k->op == FAB_REDUCE_AVG;
        return FAB_OK;
    }
    int err = MPI_SUCCESS;
    const char *call = "";
    switch (k->kind) {
    case FAB__COLL_ALLREDUCE:
        call = "MPI_Iallreduce";
        err = MPI_Iallreduce(k->send == k->recv ? MPI_IN_PLACE : k->send, k->recv, n, t, mpi_op(m, k->dtype, k->op),
                             m->comm, &p->req);
        break;
    case FAB__COLL_REDUCE_SCATTER: {
        call = "MPI_Ireduce_scatter_block";
        char *slice = (char *)k->send + (size_t)c->rank * (size_t)k->count * es;
        if (slice == k->recv) {
            /* NCCL's in-place layout (recv = this rank's slice of send), with NCCL's
             * result: only that slice changes. MPI_IN_PLACE would put the result at
             * the buffer's start and may use the rest as scratch, so the result goes
             * to a buffer of ours and is copied into the slice on completion. */
            p->scratch = malloc((size_t)n * es + 1);
            if (!p->scratch) {
                m->npend[side]--;
                return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: out of host memory", c->op);
            }
            err = MPI_Ireduce_scatter_block(k->send, p->scratch, n, t, mpi_op(m, k->dtype, k->op), m->comm, &p->req);
            p->move_to = slice;
        } else {
            err = MPI_Ireduce_scatter_block(k->send, k->recv, n, t, mpi_op(m, k->dtype, k->op), m->comm, &p->req);
        }
        break;
    }
    case FAB__COLL_ALLGATHER: {
        call = "MPI_Iallgather";
        char *slot = (char *)k->recv + (size_t)c->rank * (size_t)k->count * es;
        err = MPI_Iallgather(slot == k->send ? MPI_IN_PLACE : k->send, n, t, k->recv, n, t, m->comm, &p->req);
        break;
    }
    case FAB__COLL_BROADCAST:
        call = "MPI_Ibcast";
        if (c->rank == k->root && k->send != k->recv && n > 0)
            memcpy(k->recv, k->send, (size_t)n * es);
        err = MPI_Ibcast(k->recv, n, t, k->root, m->comm, &p->req);
        break;
    case FAB__COLL_BARRIER:
        call = "MPI_Ibarrier";
        err = MPI_Ibarrier(m->comm, &p->req);
        break;
    }
    if (err != MPI_SUCCESS) {
        free(p->scratch); /* not posted: MPI never saw it */
        m->npend[side]--;
        return mpi_error(c, call, err);
    }
    p->buf = p->scratch ? p->scratch : k->recv;
    p->count = k->count;
    p->dtype = k->dtype;
    p->avg = (k->kind == FAB__COLL_ALLREDUCE || k->kind == FAB__COLL_REDUCE_SCATTER) && k->op == FAB_REDUCE_AVG;
    return FAB_OK;
}

static void finish(fab_comm *c, int side)
{
    mpi_state *m = c->impl;
    for (int i = 0; i < m->npend[side]; i++) {
        pending *p = &m->pend[side][i];
        if (p->avg)
            fab__host_divide(p->buf, p->count, p->dtype, c->nranks);
        if (p->move_to)
            memcpy(p->move_to, p->buf, (size_t)p->count * fab_dtype_size(p->dtype));
        free(p->scratch);
        p->scratch = NULL;
        fab__ring_free(p->ring);
        p->ring = NULL;
    }
    m->npend[side] = 0;
}

/* Moves everything issued on `side` on without waiting; finishes it all when all
 * of it is done. Returns MPI_SUCCESS or an MPI error code (*call names the call).
 * Side 1 only under m->lock (the progress thread shares it). */
static int progress(fab_comm *c, int side, int *done, int *moved, const char **call)
{
    mpi_state *m = c->impl;
    int all = 1;
    for (int i = 0; i < m->npend[side]; i++) {
        pending *p = &m->pend[side][i];
        int one = 0, err;
        *call = "MPI_Test";
        if (p->ring) { /* every ring moves on, not only the first unfinished one */
            err = fab__ring_progress(p->ring, &one, moved, call);
        } else {
            int was_null = p->req == MPI_REQUEST_NULL;
            err = MPI_Test(&p->req, &one, MPI_STATUS_IGNORE);
            if (one && !was_null)
                *moved = 1;
        }
        if (err != MPI_SUCCESS)
            return err;
        all = all && one;
    }
    if (all)
        finish(c, side);
    *done = all;
    return MPI_SUCCESS;
}

static void lock_side(mpi_state *m, int side)
{
    if (side)
        pthread_mutex_lock(&m->lock);
}

static void unlock_side(mpi_state *m, int side)
{
    if (side)
        pthread_mutex_unlock(&m->lock);
}

/* Moves `side` on in the calling thread (and reports the progress thread's error). */
static fab_status poll_side(fab_comm *c, int side, int *done)
{
    mpi_state *m = c->impl;
    const char *call = "MPI_Test";
    lock_side(m, side);
    int err = side ? m->thread_err : MPI_SUCCESS; /* the progress thread's error, reported here */
    if (err != MPI_SUCCESS)
        call = m->thread_call;
    else {
        int moved = 0;
        err = progress(c, side, done, &moved, &call);
    }
    unlock_side(m, side);
    return err == MPI_SUCCESS ? FAB_OK : mpi_error(c, call, err);
}

/* fab__transport.test (fab_grad_sync_ready between layers of backward): with the
 * progress thread running, only looks, so that the caller's thread never spends
 * its time moving a bucket; else it moves what it can. It does not even wait for
 * the lock: the thread holds it while it reduces a ring's chunks, and a ready()
 * that waited for it each time would hold backward up for as long (an error the
 * thread met is reported by a later call). */
static fab_status mpi_test(fab_comm *c, int side, int *done)
{
    mpi_state *m = c->impl;
    if (!side || !m->thread_on)
        return poll_side(c, side, done);
    if (pthread_mutex_trylock(&m->lock) != 0) {
        *done = 0;
        return FAB_OK;
    }
    int err = m->thread_err;
    const char *call = m->thread_call;
    *done = m->npend[1] == 0;
    pthread_mutex_unlock(&m->lock);
    return err == MPI_SUCCESS ? FAB_OK : mpi_error(c, call, err);
}

static fab_status mpi_complete(fab_comm *c, int side, int host)
{
    (void)host;
    mpi_state *m = c->impl;
    int spins = 0;
    for (;;) {
        int done = 0;
        FAB__TRY(poll_side(c, side, &done)); /* waiting anyway: help the thread */
        if (done)
            return FAB_OK;
        if (fab__comm_now() > c->deadline) {
            lock_side(m, side);
            int npend = m->npend[side];
            unlock_side(m, side);
            return fab__comm_fault(c, FAB_ERR_TIMEOUT,
                                   "%s: %d collective%s did not complete within %.3g s on rank %d of %d (a peer is not "
                                   "taking part, or is stuck)",
                                   c->op ? c->op : "fab_comm", npend, npend == 1 ? "" : "s", c->timeout_s, c->rank,
                                   c->nranks);
        }
        fab__comm_backoff(&spins);
    }
}

enum { NAP_MIN_NS = 10000, NAP_MAX_NS = 200000 }; /* the progress thread's naps */

/* The progress thread: while collectives are pending on side 1 (gradient
 * exchange), polls them every 10 us (backing off to 200 us while nothing
 * moves), so MPI and the ring move data while the caller computes the rest of
 * the backward pass. It sleeps on m->wake when nothing is pending. An MPI error
 * stops it; mpi_test reports the error. */
static void *progress_main(void *arg)
{
    fab_comm *c = arg;
    mpi_state *m = c->impl;
#ifdef __linux__
    prctl(PR_SET_TIMERSLACK, 1000UL); /* 1 us: naps of ~10 us, not the default 50 us slack */
#endif
    long nap_ns = NAP_MIN_NS;
    pthread_mutex_lock(&m->lock);
    while (!m->stop) {
        if (m->npend[1] == 0 || m->thread_err != MPI_SUCCESS) {
            pthread_cond_wait(&m->wake, &m->lock);
            continue;
        }
        int done = 0, moved = 0;
        const char *call = "MPI_Test";
        int err = progress(c, 1, &done, &moved, &call);
        if (err != MPI_SUCCESS) {
            m->thread_err = err;
            m->thread_call = call;
            continue;
        }
        pthread_mutex_unlock(&m->lock);
        /* Data moving: poll again soon. Waiting on a peer (it is still computing):
         * back off, doubling up to NAP_MAX_NS, to leave the cores to the caller. */
        nap_ns = moved ? NAP_MIN_NS : (nap_ns * 2 < NAP_MAX_NS ? nap_ns * 2 : NAP_MAX_NS);
        if (!done) {
            struct timespec nap = {0, nap_ns};
            nanosleep(&nap, NULL);
        }
        pthread_mutex_lock(&m->lock);
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

static void stop_thread(mpi_state *m)
{
    if (!m->thread_on)
        return;
    pthread_mutex_lock(&m->lock);
    m->stop = 1;
    pthread_cond_signal(&m->wake);
    pthread_mutex_unlock(&m->lock);
    pthread_join(m->thread, NULL);
    m->thread_on = 0;
}

static fab_status mpi_post(fab_comm *c, const fab__coll *colls, int n, int side)
{
    mpi_state *m = c->impl;
    if (side && m->thread_ok && !m->thread_on && !m->stop) /* started by the first gradient bucket */
        m->thread_on = pthread_create(&m->thread, NULL, progress_main, c) == 0;
    fab_status s = FAB_OK;
    lock_side(m, side);
    for (int i = 0; i < n && s == FAB_OK; i++)
        s = post_one(c, &colls[i], side);
    if (side)
        pthread_cond_signal(&m->wake);
    unlock_side(m, side);
    if (s != FAB_OK)
        return s;
    return side ? FAB_OK : mpi_complete(c, 0, 1);
}

static fab_status mpi_fork(fab_comm *c)
{
    (void)c;
    return FAB_OK;
}

/* Host bytes from every rank (see fab__transport.allgather_host); `what` names
 * the exchange in a timeout's message. */
static fab_status gather_host(fab_comm *c, const void *mine, void *all, size_t bytes, const char *what)
{
    mpi_state *m = c->impl;
    if (m->host_req != MPI_REQUEST_NULL) /* a timed-out check; the communicator is aborted then */
        return fab__fail(FAB_ERR_INTERNAL, "%s: an earlier debug-mode check is still pending", c->op);
    /* MPI gets a buffer of the state's, never `mine` (the caller's stack) or `all`
     * (the caller's heap): after a timeout the request stays live and MPI may still
     * read and write it when a late peer arrives. */
    size_t total = bytes * ((size_t)c->nranks + 1);
    unsigned char *buf = malloc(total ? total : 1);
    if (!buf)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: out of host memory", c->op);
    memcpy(buf, mine, bytes);
    int err = MPI_Iallgather(buf, (int)bytes, MPI_BYTE, buf + bytes, (int)bytes, MPI_BYTE, m->comm, &m->host_req);
    if (err != MPI_SUCCESS) {
        m->host_req = MPI_REQUEST_NULL;
        free(buf);
        return mpi_error(c, "MPI_Iallgather", err);
    }
    m->host_buf = buf;
    fab_status s = wait_one(c, &m->host_req, what);
    if (s != FAB_OK)
        return s; /* buf stays with the live request (and m): see the top of this file */
    memcpy(all, buf + bytes, bytes * (size_t)c->nranks);
    free(buf);
    m->host_buf = NULL;
    return FAB_OK;
}

/* A byte count from the environment (tuning; every rank must see the same), or
 * `fallback` when unset or not a number. */
static size_t env_bytes(const char *name, size_t fallback)
{
    const char *v = getenv(name);
    char *end = NULL;
    if (!v || *v < '0' || *v > '9') /* unset, empty, or not a plain number ("-1" too) */
        return fallback;
    unsigned long long x = strtoull(v, &end, 10);
    return end && *end == '\0' ? (size_t)x : fallback;
}

static fab_status new_state(fab_comm *c, MPI_Comm dup)
{
    mpi_state *m = calloc(1, sizeof *m);
    if (!m)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "fab_comm_create_mpi: out of host memory");
    m->comm = dup;
    m->host_req = MPI_REQUEST_NULL;
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->wake, NULL);
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    const char *pt = getenv("FAB_COMM_PROGRESS_THREAD");
    m->thread_ok = level == MPI_THREAD_MULTIPLE && !(pt && strcmp(pt, "0") == 0);
    m->ring_min = env_bytes("FAB_COMM_RING_MIN_BYTES", RING_MIN_DEFAULT);
    m->ring_chunk = env_bytes("FAB_COMM_RING_CHUNK_BYTES", RING_CHUNK_DEFAULT);
    if (m->ring_chunk == 0)
        m->ring_chunk = RING_CHUNK_DEFAULT;
    if (m->ring_chunk > ((size_t)1 << 30)) /* a message's byte count is an int */
        m->ring_chunk = (size_t)1 << 30;
    m->gather_chunk = getenv("FAB_COMM_RING_CHUNK_BYTES") ? m->ring_chunk : (size_t)1 << 30;
    void *ub = NULL;
    int have_ub = 0;
    MPI_Comm_get_attr(dup, MPI_TAG_UB, &ub, &have_ub);
    m->ring_tags = have_ub && ub && *(int *)ub > 32767 ? *(int *)ub : 32767; /* the standard's minimum */
    MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
    fab_status s = make_ops(m);
    if (s != FAB_OK) {
        pthread_mutex_destroy(&m->lock);
        pthread_cond_destroy(&m->wake);
        free(m);
        return s;
    }
    MPI_Comm_rank(dup, &c->rank);
    MPI_Comm_size(dup, &c->nranks);
    c->impl = m;
    return FAB_OK;
}

static fab_status mpi_allgather_host(fab_comm *c, const void *mine, void *all, size_t bytes)
{
    return gather_host(c, mine, all, bytes, "an all-gather of host data (MPI_Iallgather)");
}

/* Orders the ranks of one color by (key, rank), as MPI_Comm_split does. */
static int cmp_member(const void *x, const void *y)
{
    const int *a = x, *b = y; /* {key, rank} */
    return a[0] != b[0] ? (a[0] < b[0] ? -1 : 1) : (a[1] > b[1]) - (a[1] < b[1]);
}

/* MPI_Comm_split would wait without a deadline for a rank that never calls it.
 * Instead every rank's (color, key) travels by the polled all-gather, then a
 * polled barrier makes sure every rank is still there (deadline: a missing or
 * late rank gives FAB_ERR_TIMEOUT), and only then does each color make its
 * communicator with the blocking MPI_Comm_create_group, collective over that
 * color's ranks, all of which have just passed the barrier. */
static fab_status mpi_split(fab_comm *c, int color, int key, fab_comm *out)
{
    mpi_state *m = c->impl;
    int mine[2] = {color, key};
    int *all = malloc(sizeof(int) * 2 * (size_t)c->nranks);
    int *members = malloc(sizeof(int) * 2 * (size_t)c->nranks);
    if (!all || !members) {
        free(all);
        free(members);
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: out of host memory", c->op);
    }
    fab_status s = gather_host(c, mine, all, sizeof mine, "the all-gather of colors and keys (MPI_Iallgather)");
    if (s == FAB_OK) {
        /* Agreement: a rank that arrives after the others timed out still completes
         * the all-gather (their requests stay live), but not this barrier, which
         * they never post: it times out here instead of hanging in
         * MPI_Comm_create_group below. (Left: a rank whose deadline passes between
         * the barrier completing and its noticing gives up while the others go on.) */
        MPI_Request req = MPI_REQUEST_NULL;
        int err = MPI_Ibarrier(m->comm, &req);
        s = err == MPI_SUCCESS ? wait_one(c, &req, "the agreement after the all-gather (MPI_Ibarrier)")
                               : mpi_error(c, "MPI_Ibarrier", err);
    }
    int n = 0;
    for (int r = 0; s == FAB_OK && r < c->nranks; r++)
        if (color != FAB_COMM_NO_COLOR && all[2 * r] == color) {
            members[2 * n] = all[2 * r + 1];
            members[2 * n + 1] = r;
            n++;
        }
    if (s != FAB_OK || color == FAB_COMM_NO_COLOR) {
        free(all);
        free(members);
        return s;
    }
    qsort(members, (size_t)n, sizeof(int) * 2, cmp_member);
    for (int i = 0; i < n; i++)
        all[i] = members[2 * i + 1]; /* the new communicator's ranks, in order */
    MPI_Group world = MPI_GROUP_NULL, part = MPI_GROUP_NULL;
    MPI_Comm nc = MPI_COMM_NULL;
    int err = MPI_Comm_group(m->comm, &world);
    const char *call = "MPI_Comm_group";
    if (err == MPI_SUCCESS) {
        call = "MPI_Group_incl";
        err = MPI_Group_incl(world, n, all, &part);
    }
    if (err == MPI_SUCCESS) {
        call = "MPI_Comm_create_group";
        err = MPI_Comm_create_group(m->comm, part, 0, &nc);
    }
    if (part != MPI_GROUP_NULL)
        MPI_Group_free(&part);
    if (world != MPI_GROUP_NULL)
        MPI_Group_free(&world);
    free(all);
    free(members);
    if (err != MPI_SUCCESS)
        return mpi_error(c, call, err);
    s = new_state(out, nc);
    if (s != FAB_OK)
        MPI_Comm_free(&nc);
    return s;
}

static fab_status mpi_poll(fab_comm *c)
{
    (void)c;
    return FAB_OK;
}

static void mpi_abort(fab_comm *c)
{
    /* Nothing can be cancelled; fault is set, the state is kept. The progress
     * thread (if any) runs on until fab_comm_destroy: this may be called with
     * m->lock held, so it cannot join here. */
    (void)c;
}

/* Tests every request the state knows of once (no wait); 1 when none is live any
 * more, so that nothing of the state's can still be touched by MPI, and no peer
 * will still send this rank a message on m->comm. A ring counts only once it has
 * finished: one stopped half-way by a timeout may have completed every request it
 * posted while its peers, which went on, still send it the rest. Were m->comm
 * freed then, a later communicator could get its context id and take those late
 * messages (same source, same tag: the rings of every communicator are tagged
 * from 1) as its own. That happened: test_grad_sync_progress summed 3-4 chunks of
 * zeros left over from test_grad_sync_timeout's bucket (CI, twice in ~250 runs).
 * test_ring_stopped_halfway checks the rule itself. */
static int requests_done(mpi_state *m)
{
    int live = 0;
    for (int side = 0; side < 2; side++)
        for (int i = 0; i < m->npend[side]; i++) {
            MPI_Request *r = &m->pend[side][i].req;
            int flag = 0;
            if (m->pend[side][i].ring ? !fab__ring_finished(m->pend[side][i].ring)
                                      : *r != MPI_REQUEST_NULL &&
                                            (MPI_Test(r, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS || !flag))
                live = 1;
        }
    if (m->host_req != MPI_REQUEST_NULL) {
        int flag = 0;
        if (MPI_Test(&m->host_req, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS || !flag)
            live = 1;
    }
    return !live;
}

static fab_status mpi_destroy(fab_comm *c)
{
    mpi_state *m = c->impl;
    fab_status s = FAB_OK;
    if (!m)
        return FAB_OK;
    stop_thread(m); /* from here on this thread alone touches m */
    if (c->fault == FAB_OK) {
        s = mpi_complete(c, 1, 1);
        if (s == FAB_OK)
            s = mpi_complete(c, 0, 1);
    }
    int idle = m->npend[0] == 0 && m->npend[1] == 0 && m->host_req == MPI_REQUEST_NULL;
    /* After a timeout the late peer may have turned up since: then the requests have
     * completed and everything can go (the caller's buffers are not touched again). */
    if (idle || requests_done(m)) {
        MPI_Comm_free(&m->comm);
        for (int d = 0; d < 2; d++)
            for (int o = 0; o < 3 && m->have_ops; o++)
                MPI_Op_free(&m->ops16[d][o]);
        for (int side = 0; side < 2; side++)
            for (int i = 0; i < m->npend[side]; i++) {
                free(m->pend[side][i].scratch);
                fab__ring_free(m->pend[side][i].ring);
            }
        free(m->pend[0]);
        free(m->pend[1]);
        free(m->host_buf);
        pthread_mutex_destroy(&m->lock);
        pthread_cond_destroy(&m->wake);
        free(m);
    }
    /* else (after a timeout): requests may still be live inside MPI; leave them,
     * their buffers (the state's scratch and check buffers among them), the MPI
     * communicator and m alone: leaked on purpose, as MPI may write them any time. */
    c->impl = NULL;
    return s;
}

static void *mpi_native(fab_comm *c)
{
    return &((mpi_state *)c->impl)->comm;
}

static fab_status mpi_dup(fab_comm *c, fab_comm *out);

static const fab__transport mpi_transport = {
    "mpi", mpi_post, mpi_test, mpi_complete, mpi_fork, fab__self_host_copy, fab__self_host_cast,
    mpi_allgather_host, mpi_split, mpi_dup, mpi_poll, mpi_abort, mpi_destroy, mpi_native, 1,
};

/* ----------------------------------------------------------------- creation */

static fab_status check_mpi_ready(const char *op)
{
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin)
        return fab__fail(INVALID, "%s: MPI is not initialized (call MPI_Init first)", op);
    return FAB_OK;
}

/* Polls a request of the creation path (no communicator of ours yet) against
 * c's deadline. On failure the request may still be live: the caller leaves what
 * it points into alone (leaked on purpose). */
static fab_status wait_bootstrap(fab_comm *c, MPI_Request *req, const char *call)
{
    int done = 0, spins = 0;
    while (!done) {
        int err = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (err != MPI_SUCCESS)
            return mpi_error(NULL, call, err);
        if (!done && fab__comm_now() > c->deadline)
            return fab__fail(FAB_ERR_TIMEOUT, "%s: %s did not complete within %.3g s (not every rank called it)", c->op,
                             call, c->timeout_s);
        if (!done)
            fab__comm_backoff(&spins);
    }
    return FAB_OK;
}

/* MPI_Comm_idup, polled against the deadline. MPI writes the new handle when the
 * request completes, so it goes to the heap: on a timeout that slot (and the
 * request) are leaked, never a dead stack frame. */
static fab_status dup_comm(fab_comm *c, MPI_Comm comm, MPI_Comm *dup)
{
    MPI_Comm *slot = malloc(sizeof *slot);
    if (!slot)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: out of host memory", c->op);
    *slot = MPI_COMM_NULL;
    MPI_Request req;
    int err = MPI_Comm_idup(comm, slot, &req);
    if (err != MPI_SUCCESS) {
        free(slot);
        return mpi_error(NULL, "MPI_Comm_idup", err);
    }
    FAB__TRY(wait_bootstrap(c, &req, "MPI_Comm_idup")); /* failed: slot stays with the request */
    *dup = *slot;
    free(slot);
    return FAB_OK;
}

static fab_status mpi_dup(fab_comm *c, fab_comm *out)
{
    mpi_state *m = c->impl;
    MPI_Comm nc = MPI_COMM_NULL;
    fab_status s = dup_comm(c, m->comm, &nc);
    if (s != FAB_OK) {
        if (s == FAB_ERR_TIMEOUT) /* the ranks are out of step on c: fault it as a collective would */
            return fab__comm_fault(c, s, "%s", fab_last_error());
        return s;
    }
    s = new_state(out, nc);
    if (s != FAB_OK)
        MPI_Comm_free(&nc);
    return s;
}

fab_status fab_comm_create_mpi(fab_context *ctx, MPI_Comm comm, const fab_comm_config *cfg, fab_comm **out)
{
    const char *op = "fab_comm_create_mpi";
    if (!out)
        return fab__fail(INVALID, "%s: out is NULL", op);
    *out = NULL;
    if (!ctx)
        return fab__fail(INVALID, "%s: ctx is NULL", op);
    if (cfg && !(cfg->timeout_seconds >= 0 && cfg->timeout_seconds < 1e9))
        return fab__fail(INVALID, "%s: cfg.timeout_seconds=%g must be >= 0 (0: 600 s)", op, cfg->timeout_seconds);
    FAB__TRY(check_mpi_ready(op));
    if (comm == MPI_COMM_NULL)
        return fab__fail(INVALID, "%s: comm is MPI_COMM_NULL", op);
    int inter = 0;
    MPI_Comm_test_inter(comm, &inter);
    if (inter)
        return fab__fail(INVALID, "%s: comm is an intercommunicator; an intracommunicator is needed", op);
    fab_comm *c = NULL;
    FAB__TRY(fab__comm_new(ctx, cfg, &c));
    fab__comm_arm(c, op);
    fab_status s = FAB_OK;
    if (ctx->backend == FAB_BACKEND_CUDA) {
#ifdef FAB_HAVE_NCCL
        int rank = 0, size = 1;
        MPI_Comm_rank(comm, &rank);
        MPI_Comm_size(comm, &size);
        /* On the heap: after a timeout the broadcast is still live and MPI writes
         * (or reads) the id whenever rank 0 turns up; it is leaked then. */
        fab_comm_unique_id *id = calloc(1, sizeof *id);
        if (!id) {
            free(c);
            return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
        }
        if (rank == 0)
            s = fab__nccl_unique_id(ctx, id);
        /* The id travels even when rank 0 failed (zeros), so no rank is left waiting;
         * a zero id then fails ncclCommInitRank on the others, bounded by the timeout. */
        MPI_Request req;
        int err = MPI_Ibcast(id, (int)sizeof *id, MPI_BYTE, 0, comm, &req);
        if (err != MPI_SUCCESS) {
            free(id);
            free(c);
            return mpi_error(NULL, "MPI_Ibcast", err);
        }
        fab_status b = wait_bootstrap(c, &req, "the unique id broadcast (MPI_Ibcast)");
        if (b != FAB_OK) { /* id stays with the live request */
            free(c);
            return b;
        }
        if (s == FAB_OK)
            s = fab__nccl_create(c, size, rank, id);
        free(id);
#else
        s = fab__fail(FAB_ERR_UNSUPPORTED, "%s: a CUDA context needs NCCL, and this fabriek was built without it", op);
#endif
    } else {
        MPI_Comm dup = MPI_COMM_NULL;
        s = dup_comm(c, comm, &dup);
        if (s == FAB_OK) {
            s = new_state(c, dup);
            if (s != FAB_OK)
                MPI_Comm_free(&dup);
            else
                c->tp = &mpi_transport;
        }
    }
    if (s != FAB_OK) {
        free(c);
        return s;
    }
    *out = c;
    return FAB_OK;
}

fab_status fab__mpi_create_world(fab_context *ctx, int nranks, int rank, const fab_comm_config *cfg, fab_comm **out)
{
    const char *op = "fab_comm_create";
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin)
        return fab__fail(FAB_ERR_UNSUPPORTED,
                         "%s: nranks=%d on a CPU context runs on MPI, which is not initialized; call MPI_Init and "
                         "fab_comm_create_mpi",
                         op, nranks);
    int wr = 0, ws = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &wr);
    MPI_Comm_size(MPI_COMM_WORLD, &ws);
    if (ws != nranks || wr != rank)
        return fab__fail(INVALID,
                         "%s: nranks=%d, rank=%d must be MPI_COMM_WORLD's size %d and rank %d for a CPU context "
                         "(fab_comm_create_mpi takes any MPI_Comm)",
                         op, nranks, rank, ws, wr);
    return fab_comm_create_mpi(ctx, MPI_COMM_WORLD, cfg, out);
}

fab_status fab_mpi_local_rank(MPI_Comm comm, int *local_rank)
{
    const char *op = "fab_mpi_local_rank";
    if (!local_rank)
        return fab__fail(INVALID, "%s: local_rank is NULL", op);
    FAB__TRY(check_mpi_ready(op));
    if (comm == MPI_COMM_NULL)
        return fab__fail(INVALID, "%s: comm is MPI_COMM_NULL", op);
    int rank = 0;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm node;
    int err = MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
    if (err != MPI_SUCCESS)
        return mpi_error(NULL, "MPI_Comm_split_type", err);
    MPI_Comm_rank(node, local_rank);
    MPI_Comm_free(&node);
    return FAB_OK;
}
