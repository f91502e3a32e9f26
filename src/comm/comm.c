/*
 * comm.c: communicators and collectives, transport-independent part.
 *
 * Every public call validates its arguments here, then hands a list of
 * fab__coll descriptors to the communicator's transport (comm_self below,
 * comm_mpi.c, comm_nccl.c). Grouped calls are queued and handed over together at
 * group_end. Debug mode adds a small all-gather of each collective's descriptor
 * before it runs, so ranks that disagree fail with a message instead of hanging.
 */
#define _POSIX_C_SOURCE 200809L
#include "comm.h"

#include <inttypes.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define INVALID FAB_ERR_INVALID_ARGUMENT

/* ------------------------------------------------------------ time, faults */

double fab__comm_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void fab__comm_arm(fab_comm *c, const char *op)
{
    c->op = op;
    c->deadline = fab__comm_now() + c->timeout_s;
}

void fab__comm_backoff(int *spins)
{
    /* MPI moves a non-blocking collective only while we poll it, so poll hard:
     * spin first (latency of small collectives), then yield the core between polls
     * (oversubscribed ranks, the peer we wait for), and only after ~0.2 s of
     * waiting (a late or lost peer) nap 50 us between polls. */
    ++*spins;
    if (*spins < 256)
        return;
    if (*spins < 200000) {
        sched_yield();
        return;
    }
    struct timespec ts = {0, 50000};
    nanosleep(&ts, NULL);
}

fab_status fab__comm_fault(fab_comm *c, fab_status status, const char *fmt, ...)
{
    char msg[sizeof c->fault_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->fault == FAB_OK) { /* the first fault is the one reported from now on: its status and its message */
        memcpy(c->fault_msg, msg, sizeof msg);
        c->fault = status;
        c->tp->abort_comm(c);
    }
    return fab__fail(status, "%s; the communicator is aborted", msg);
}

/* Takes the fault of duplicate d (fab__comm_dup) as c's own, if c has none. */
static void take_dup_fault(fab_comm *c, fab_comm *d)
{
    if (c->fault == FAB_OK && d->fault != FAB_OK)
        (void)fab__comm_fault(c, d->fault, "the gradient exchange's communicator was aborted (%s: %s)",
                              fab_status_name(d->fault), d->fault_msg);
}

/* Records a fault the transport found meanwhile (NCCL's watchdog), c's or one of
 * its duplicates'. */
static fab_status poll_faults(fab_comm *c)
{
    if (c->fault == FAB_OK) {
        fab_status s = c->tp->poll(c);
        if (s != FAB_OK)
            return s;
    }
    for (fab_comm *d = c->dups; d && c->fault == FAB_OK; d = d->next_dup) {
        if (d->fault == FAB_OK)
            (void)d->tp->poll(d);
        take_dup_fault(c, d);
    }
    return FAB_OK;
}

fab_status fab__comm_usable(fab_comm *c, const char *op)
{
    FAB__TRY(poll_faults(c));
    if (c->fault != FAB_OK)
        return fab__fail(c->fault, "%s: the communicator was aborted earlier (%s: %s); destroy it and create a new one",
                         op, fab_status_name(c->fault), c->fault_msg);
    return FAB_OK;
}

const char *fab__reduce_op_name(fab_reduce_op op)
{
    switch (op) {
    case FAB_REDUCE_SUM: return "sum";
    case FAB_REDUCE_AVG: return "avg";
    case FAB_REDUCE_MAX: return "max";
    case FAB_REDUCE_MIN: return "min";
    }
    return "?";
}

static const char *coll_name(fab__coll_kind k)
{
    switch (k) {
    case FAB__COLL_ALLREDUCE: return "allreduce";
    case FAB__COLL_REDUCE_SCATTER: return "reduce_scatter";
    case FAB__COLL_ALLGATHER: return "allgather";
    case FAB__COLL_BROADCAST: return "broadcast";
    case FAB__COLL_BARRIER: return "barrier";
    }
    return "group";
}

/* ---------------------------------------------------------- host arithmetic */

static float load_f(const void *p, int64_t i, fab_dtype d)
{
    if (d == FAB_DTYPE_F32)
        return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return d == FAB_DTYPE_BF16 ? fab_bf16_to_f32(h) : fab_f16_to_f32(h);
}

static void store_f(void *p, int64_t i, fab_dtype d, float v)
{
    if (d == FAB_DTYPE_F32)
        ((float *)p)[i] = v;
    else
        ((uint16_t *)p)[i] = d == FAB_DTYPE_BF16 ? fab_f32_to_bf16(v) : fab_f32_to_f16(v);
}

#define REDUCE_LOOP(T)                                                      \
    do {                                                                    \
        T *o = inout;                                                       \
        const T *x = in;                                                    \
        if (op == FAB_REDUCE_MAX)                                           \
            for (int64_t i = 0; i < n; i++) o[i] = x[i] > o[i] ? x[i] : o[i]; \
        else if (op == FAB_REDUCE_MIN)                                      \
            for (int64_t i = 0; i < n; i++) o[i] = x[i] < o[i] ? x[i] : o[i]; \
        else                                                                \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) o[i] += x[i]; \
    } while (0)

void fab__host_reduce(void *inout, const void *in, int64_t n, fab_dtype dtype, fab_reduce_op op)
{
    switch (dtype) {
    case FAB_DTYPE_F32: REDUCE_LOOP(float); break;
    case FAB_DTYPE_F64: REDUCE_LOOP(double); break;
    case FAB_DTYPE_I32: REDUCE_LOOP(int32_t); break;
    case FAB_DTYPE_I64: REDUCE_LOOP(int64_t); break;
    case FAB_DTYPE_F16:
    case FAB_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            float a = load_f(inout, i, dtype), b = load_f(in, i, dtype);
            float r = op == FAB_REDUCE_MAX ? (b > a ? b : a) : op == FAB_REDUCE_MIN ? (b < a ? b : a) : a + b;
            store_f(inout, i, dtype, r);
        }
        break;
    default: break;
    }
}

void fab__host_divide(void *x, int64_t n, fab_dtype dtype, int divisor)
{
    /* Divide rather than multiply by 1/p: sum/p is then correctly rounded, as a
     * reference computing sum/p gets it (1/3 is not exact). */
    if (dtype == FAB_DTYPE_F64) {
        for (int64_t i = 0; i < n; i++)
            ((double *)x)[i] /= divisor;
        return;
    }
    float div = (float)divisor;
    for (int64_t i = 0; i < n; i++)
        store_f(x, i, dtype, load_f(x, i, dtype) / div);
}

void fab__host_cast(void *dst, fab_dtype dst_dtype, const void *src, fab_dtype src_dtype, int64_t n, int divisor)
{
    if (dst_dtype == src_dtype && divisor == 1) {
        if (dst != src)
            memcpy(dst, src, (size_t)n * fab_dtype_size(dst_dtype));
        return;
    }
    float div = (float)divisor; /* divided, not multiplied by 1/p: as fab__host_divide */
    for (int64_t i = 0; i < n; i++)
        store_f(dst, i, dst_dtype, load_f(src, i, src_dtype) / div);
}

/* ---------------------------------------------------- single-rank transport */

static size_t coll_bytes(const fab__coll *k)
{
    return (size_t)k->count * fab_dtype_size(k->dtype);
}

static fab_status self_post(fab_comm *c, const fab__coll *colls, int n, int side)
{
    (void)side;
    for (int i = 0; i < n; i++) /* with one rank every collective is a copy */
        if (colls[i].kind != FAB__COLL_BARRIER && colls[i].send != colls[i].recv && colls[i].count > 0)
            FAB__TRY(fab_copy(c->ctx, colls[i].recv, colls[i].send, coll_bytes(&colls[i])));
    return FAB_OK;
}

static fab_status self_test(fab_comm *c, int side, int *done)
{
    (void)c, (void)side;
    *done = 1;
    return FAB_OK;
}

static fab_status self_complete(fab_comm *c, int side, int host)
{
    (void)side;
    return host ? fab_synchronize(c->ctx) : FAB_OK;
}

static fab_status self_fork(fab_comm *c)
{
    (void)c;
    return FAB_OK;
}

fab_status fab__self_host_copy(fab_comm *c, int side, void *dst, const void *src, size_t bytes)
{
    (void)side;
    if (bytes && dst != src)
        return fab_copy(c->ctx, dst, src, bytes);
    return FAB_OK;
}

fab_status fab__self_host_cast(fab_comm *c, int side, void *dst, fab_dtype dst_dtype, const void *src,
                               fab_dtype src_dtype, int64_t n, int divisor)
{
    (void)side;
    if (c->ctx->backend == FAB_BACKEND_CUDA && (dst_dtype != src_dtype || divisor != 1))
        return fab__fail(FAB_ERR_UNSUPPORTED, "fab_grad_sync: dtype conversion needs the NCCL transport");
    if (c->ctx->backend == FAB_BACKEND_CUDA)
        return fab__self_host_copy(c, side, dst, src, (size_t)n * fab_dtype_size(dst_dtype));
    fab__host_cast(dst, dst_dtype, src, src_dtype, n, divisor);
    return FAB_OK;
}

static fab_status self_allgather_host(fab_comm *c, const void *mine, void *all, size_t bytes)
{
    (void)c;
    memcpy(all, mine, bytes);
    return FAB_OK;
}

static fab_status self_split(fab_comm *c, int color, int key, fab_comm *out)
{
    (void)c, (void)color, (void)key;
    out->impl = NULL;
    out->rank = 0;
    out->nranks = 1;
    return FAB_OK;
}

static fab_status self_dup(fab_comm *c, fab_comm *out)
{
    return self_split(c, 0, 0, out);
}

static fab_status self_poll(fab_comm *c)
{
    (void)c;
    return FAB_OK;
}

static void self_abort(fab_comm *c)
{
    (void)c;
}

static fab_status self_destroy(fab_comm *c)
{
    (void)c;
    return FAB_OK;
}

static void *self_native(fab_comm *c)
{
    (void)c;
    return NULL;
}

const fab__transport fab__self_transport = {
    "self", self_post, self_test, self_complete, self_fork, fab__self_host_copy, fab__self_host_cast,
    self_allgather_host, self_split, self_dup, self_poll, self_abort, self_destroy, self_native, 0,
};

/* ------------------------------------------------------------ communicators */

fab_status fab__comm_new(fab_context *ctx, const fab_comm_config *cfg, fab_comm **out)
{
    fab_comm *c = calloc(1, sizeof *c);
    if (!c)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "fab_comm_create: out of host memory");
    c->ctx = ctx;
    c->tp = &fab__self_transport;
    c->timeout_s = cfg && cfg->timeout_seconds > 0 ? cfg->timeout_seconds : 600.0;
    const char *env = getenv("FAB_COMM_DEBUG");
    c->debug = (cfg && cfg->debug) || (env && env[0] && strcmp(env, "0") != 0);
    c->nranks = 1;
    *out = c;
    return FAB_OK;
}

fab_status fab__comm_dup(fab_comm *comm, const char *op, fab_comm **out)
{
    *out = NULL;
    fab_comm_config own = {comm->timeout_s, comm->debug};
    fab_comm *c = NULL;
    FAB__TRY(fab__comm_new(comm->ctx, &own, &c));
    c->debug = comm->debug;
    c->tp = comm->tp;
    fab__comm_arm(comm, op);
    c->op = op;
    c->deadline = comm->deadline;
    fab_status s = comm->tp->dup(comm, c);
    if (s != FAB_OK) {
        free(c);
        return s;
    }
    c->dup_of = comm;
    c->next_dup = comm->dups;
    comm->dups = c;
    *out = c;
    return FAB_OK;
}

static fab_status check_config(const char *op, const fab_comm_config *cfg)
{
    if (cfg && !(cfg->timeout_seconds >= 0 && cfg->timeout_seconds < 1e9))
        return fab__fail(INVALID, "%s: cfg.timeout_seconds=%g must be >= 0 (0: 600 s)", op, cfg->timeout_seconds);
    return FAB_OK;
}

fab_status fab_comm_get_unique_id(fab_context *ctx, fab_comm_unique_id *id)
{
    const char *op = "fab_comm_get_unique_id";
    if (!ctx)
        return fab__fail(INVALID, "%s: ctx is NULL", op);
    if (!id)
        return fab__fail(INVALID, "%s: id is NULL", op);
#ifdef FAB_HAVE_NCCL
    if (ctx->backend == FAB_BACKEND_CUDA)
        return fab__nccl_unique_id(ctx, id);
#endif
    /* CPU communicators meet through MPI, which needs no id; still make one that
     * is unlikely to collide, so a caller may use it as a job tag. */
    memset(id, 0, sizeof *id);
    memcpy(id->bytes, "fabriek-cpu", 11);
    uint64_t t = (uint64_t)(fab__comm_now() * 1e9) ^ (uint64_t)(uintptr_t)id;
    memcpy(id->bytes + 16, &t, sizeof t);
    return FAB_OK;
}

fab_status fab_comm_create(fab_context *ctx, int nranks, int rank, const fab_comm_unique_id *id,
                           const fab_comm_config *cfg, fab_comm **out)
{
    const char *op = "fab_comm_create";
    if (!out)
        return fab__fail(INVALID, "%s: out is NULL", op);
    *out = NULL;
    if (!ctx)
        return fab__fail(INVALID, "%s: ctx is NULL", op);
    if (nranks < 1)
        return fab__fail(INVALID, "%s: nranks=%d must be >= 1", op, nranks);
    if (rank < 0 || rank >= nranks)
        return fab__fail(INVALID, "%s: rank=%d must be in [0, %d)", op, rank, nranks);
    FAB__TRY(check_config(op, cfg));
#ifdef FAB_HAVE_NCCL
    if (ctx->backend == FAB_BACKEND_CUDA) {
        fab_comm_unique_id own;
        if (!id && nranks == 1) {
            FAB__TRY(fab__nccl_unique_id(ctx, &own));
            id = &own;
        }
        if (!id)
            return fab__fail(INVALID, "%s: id is NULL (rank 0 makes it with fab_comm_get_unique_id)", op);
        fab_comm *c = NULL;
        FAB__TRY(fab__comm_new(ctx, cfg, &c));
        fab_status s = fab__nccl_create(c, nranks, rank, id);
        if (s != FAB_OK) {
            free(c);
            return s;
        }
        *out = c;
        return FAB_OK;
    }
#endif
    (void)id; /* single-rank and MPI communicators meet without it */
    if (nranks == 1)
        return fab__comm_new(ctx, cfg, out);
    if (ctx->backend == FAB_BACKEND_CUDA)
        return fab__fail(FAB_ERR_UNSUPPORTED, "%s: nranks=%d needs NCCL, and this fabriek was built without it", op,
                         nranks);
#ifdef FAB_HAVE_MPI
    return fab__mpi_create_world(ctx, nranks, rank, cfg, out);
#else
    return fab__fail(FAB_ERR_UNSUPPORTED, "%s: nranks=%d on a CPU context needs MPI, and this fabriek was built without it",
                     op, nranks);
#endif
}

fab_status fab_comm_split(fab_comm *comm, int color, int key, const fab_comm_config *cfg, fab_comm **out)
{
    const char *op = "fab_comm_split";
    if (!out)
        return fab__fail(INVALID, "%s: out is NULL", op);
    *out = NULL;
    if (!comm)
        return fab__fail(INVALID, "%s: comm is NULL", op);
    if (color < FAB_COMM_NO_COLOR)
        return fab__fail(INVALID, "%s: color=%d must be >= 0 or FAB_COMM_NO_COLOR", op, color);
    FAB__TRY(check_config(op, cfg));
    FAB__TRY(fab__comm_usable(comm, op));
    if (comm->group_depth)
        return fab__fail(INVALID, "%s: not inside fab_comm_group_start/end", op);
    fab_comm_config own = {comm->timeout_s, comm->debug};
    fab_comm *c = NULL;
    FAB__TRY(fab__comm_new(comm->ctx, cfg ? cfg : &own, &c));
    c->tp = comm->tp;
    fab__comm_arm(comm, op);
    fab_status s = comm->tp->split(comm, color, key, c);
    if (s != FAB_OK || color == FAB_COMM_NO_COLOR) {
        free(c);
        return s;
    }
    *out = c;
    return FAB_OK;
}

fab_status fab_comm_destroy(fab_comm *comm)
{
    if (!comm)
        return FAB_OK;
    if (comm->fault == FAB_OK)
        fab__comm_arm(comm, "fab_comm_destroy");
    if (comm->dup_of) { /* a gradient exchange's: its fault stays its origin's */
        if (comm->fault == FAB_OK)
            (void)comm->tp->poll(comm);
        take_dup_fault(comm->dup_of, comm);
    }
    for (fab_comm **p = comm->dup_of ? &comm->dup_of->dups : NULL; p && *p; p = &(*p)->next_dup)
        if (*p == comm) {
            *p = comm->next_dup;
            break;
        }
    for (fab_comm *d = comm->dups; d; d = d->next_dup)
        d->dup_of = NULL;
    fab_status s = comm->tp->destroy(comm);
    free(comm->queue);
    free(comm);
    return s;
}

fab_status fab_comm_abort(fab_comm *comm)
{
    if (!comm)
        return fab__fail(INVALID, "fab_comm_abort: comm is NULL");
    (void)poll_faults(comm); /* a fault already found (NCCL's watchdog, here or in a gradient exchange)
                              * stays the one reported */
    if (comm->fault == FAB_OK) {
        comm->fault = FAB_ERR_BACKEND;
        snprintf(comm->fault_msg, sizeof comm->fault_msg, "fab_comm_abort was called");
        comm->tp->abort_comm(comm);
    }
    return FAB_OK;
}

fab_status fab_comm_rank(const fab_comm *comm, int *rank)
{
    if (!comm)
        return fab__fail(INVALID, "fab_comm_rank: comm is NULL");
    if (!rank)
        return fab__fail(INVALID, "fab_comm_rank: rank is NULL");
    *rank = comm->rank;
    return FAB_OK;
}

fab_status fab_comm_size(const fab_comm *comm, int *nranks)
{
    if (!comm)
        return fab__fail(INVALID, "fab_comm_size: comm is NULL");
    if (!nranks)
        return fab__fail(INVALID, "fab_comm_size: nranks is NULL");
    *nranks = comm->nranks;
    return FAB_OK;
}

fab_status fab_comm_native(const fab_comm *comm, const char **transport, void **handle)
{
    if (!comm)
        return fab__fail(INVALID, "fab_comm_native: comm is NULL");
    if (transport)
        *transport = comm->tp->name;
    if (handle)
        *handle = comm->impl ? comm->tp->native((fab_comm *)comm) : NULL;
    return FAB_OK;
}

fab_status fab_comm_status(fab_comm *comm)
{
    if (!comm)
        return fab__fail(INVALID, "fab_comm_status: comm is NULL");
    return fab__comm_usable(comm, "fab_comm_status");
}

fab_status fab_comm_synchronize(fab_comm *comm)
{
    const char *op = "fab_comm_synchronize";
    if (!comm)
        return fab__fail(INVALID, "%s: comm is NULL", op);
    FAB__TRY(fab__comm_usable(comm, op));
    fab__comm_arm(comm, op);
    FAB__TRY(comm->tp->complete(comm, 1, 1));
    return comm->tp->complete(comm, 0, 1);
}

/* -------------------------------------------------------------- collectives */

static const fab_dtype comm_dtypes[] = {FAB_DTYPE_F32, FAB_DTYPE_F16, FAB_DTYPE_BF16,
                                        FAB_DTYPE_F64, FAB_DTYPE_I32, FAB_DTYPE_I64};

static fab_status check_tensor_arg(fab_comm *c, const char *op, const char *name, const fab_tensor *t)
{
    if (!t)
        return fab__fail(INVALID, "%s: %s is NULL", op, name);
    FAB__TRY(fab__check_contiguous(op, name, t));
    bool ok = false;
    for (size_t i = 0; i < sizeof comm_dtypes / sizeof comm_dtypes[0]; i++)
        ok |= t->dtype == comm_dtypes[i];
    if (!ok)
        return fab__fail(FAB_ERR_UNSUPPORTED, "%s: %s.dtype=%s is not supported (f32, f16, bf16, f64, i32, i64)", op,
                         name, fab_dtype_name(t->dtype));
    return fab__check_memory(c->ctx, op, name, t);
}

static fab_status check_op(const char *op, fab_reduce_op rop, fab_dtype dtype)
{
    if ((int)rop < FAB_REDUCE_SUM || (int)rop > FAB_REDUCE_MIN)
        return fab__fail(INVALID, "%s: op=%d is not a fab_reduce_op (SUM, AVG, MAX, MIN)", op, (int)rop);
    if (rop == FAB_REDUCE_AVG && (dtype == FAB_DTYPE_I32 || dtype == FAB_DTYPE_I64))
        return fab__fail(FAB_ERR_UNSUPPORTED, "%s: op=avg needs a float dtype, not %s", op, fab_dtype_name(dtype));
    return FAB_OK;
}

/* Validates a collective's arguments and fills *k. Writes nothing else. Messages
 * call the tensors sn and rn (the caller's names for send and recv). */
static fab_status check_coll(fab_comm *c, const char *op, fab__coll_kind kind, const char *sn, const fab_tensor *send,
                             const char *rn, const fab_tensor *recv, fab_reduce_op rop, int root, fab__coll *k)
{
    if (!c)
        return fab__fail(INVALID, "%s: comm is NULL", op);
    FAB__TRY(fab__comm_usable(c, op));
    memset(k, 0, sizeof *k);
    k->kind = kind;
    if (kind == FAB__COLL_BARRIER)
        return FAB_OK;
    if (kind == FAB__COLL_BROADCAST && (root < 0 || root >= c->nranks))
        return fab__fail(INVALID, "%s: root=%d must be in [0, %d)", op, root, c->nranks);
    bool need_send = kind != FAB__COLL_BROADCAST || c->rank == root;
    FAB__TRY(check_tensor_arg(c, op, rn, recv));
    if (need_send || send) {
        FAB__TRY(check_tensor_arg(c, op, sn, send));
        FAB__TRY(fab__check_same_dtype(op, rn, recv, sn, send));
    }
    if (kind == FAB__COLL_ALLREDUCE || kind == FAB__COLL_REDUCE_SCATTER)
        FAB__TRY(check_op(op, rop, recv->dtype));
    int64_t ns = send ? fab_tensor_numel(send) : 0, nr = fab_tensor_numel(recv);
    int64_t p = c->nranks;
    k->op = rop;
    k->dtype = recv->dtype;
    k->root = root;
    k->recv = recv->data;
    k->send = send ? send->data : NULL;
    size_t es = fab_dtype_size(recv->dtype);
    bool slice_ok = false; /* the in-place layouts NCCL defines */
    switch (kind) {
    case FAB__COLL_ALLREDUCE:
    case FAB__COLL_BROADCAST:
        if (send && ns != nr)
            return fab__fail(INVALID, "%s: %s has %" PRId64 " elements, %s has %" PRId64 "; they must be equal", op,
                             rn, nr, sn, ns);
        k->count = nr;
        break;
    case FAB__COLL_REDUCE_SCATTER:
        if (!fab__is_n_times(ns, p, nr))
            return fab__fail(INVALID,
                             "%s: %s has %" PRId64 " elements; it must have nranks*%s = %" PRId64 "*%" PRId64, op,
                             sn, ns, rn, p, nr);
        k->count = nr;
        slice_ok = (const char *)send->data + (size_t)(c->rank * nr) * es == (const char *)recv->data && nr > 0;
        break;
    case FAB__COLL_ALLGATHER:
        if (!fab__is_n_times(nr, p, ns))
            return fab__fail(INVALID,
                             "%s: %s has %" PRId64 " elements; it must have nranks*%s = %" PRId64 "*%" PRId64, op,
                             rn, nr, sn, p, ns);
        k->count = ns;
        slice_ok = (const char *)recv->data + (size_t)(c->rank * ns) * es == (const char *)send->data && ns > 0;
        break;
    default:
        break;
    }
    if (send && !slice_ok)
        FAB__TRY(fab__check_no_partial_overlap(op, rn, recv, sn, send,
                                               kind == FAB__COLL_ALLREDUCE || kind == FAB__COLL_BROADCAST));
    return FAB_OK;
}

static void debug_log(fab_comm *c, const fab__coll *k, uint64_t seq)
{
    if (k->kind == FAB__COLL_BARRIER)
        fprintf(stderr, "fab_comm[rank %d/%d] #%" PRIu64 " barrier\n", c->rank, c->nranks, seq);
    else
        fprintf(stderr, "fab_comm[rank %d/%d] #%" PRIu64 " %s%s%s %s count=%" PRId64 " bytes=%zu%s\n", c->rank,
                c->nranks, seq, coll_name(k->kind),
                k->kind == FAB__COLL_ALLREDUCE || k->kind == FAB__COLL_REDUCE_SCATTER ? " " : "",
                k->kind == FAB__COLL_ALLREDUCE || k->kind == FAB__COLL_REDUCE_SCATTER ? fab__reduce_op_name(k->op) : "",
                fab_dtype_name(k->dtype), k->count, coll_bytes(k),
                k->kind == FAB__COLL_BROADCAST ? (k->root == 0 ? " root=0" : " root>0") : "");
}

/* What ranks compare in debug mode: (seq, kind, op, dtype, count, root); for a group
 * kind 0, count = number of collectives and root = a hash of them. */
enum { DESC_N = 6 };

static void describe(const fab__coll *k, uint64_t seq, int64_t d[DESC_N])
{
    d[0] = (int64_t)seq;
    d[1] = k->kind;
    d[2] = k->kind == FAB__COLL_ALLREDUCE || k->kind == FAB__COLL_REDUCE_SCATTER ? (int64_t)k->op : -1;
    d[3] = k->kind == FAB__COLL_BARRIER ? -1 : (int64_t)k->dtype;
    d[4] = k->count;
    d[5] = k->kind == FAB__COLL_BROADCAST ? k->root : -1;
}

static void describe_text(const int64_t *d, char *buf, size_t size)
{
    if (d[1] == 0)
        snprintf(buf, size, "a group of %" PRId64 " collectives (hash %" PRIx64 ")", d[4], (uint64_t)d[5]);
    else
        snprintf(buf, size, "%s%s%s %s count=%" PRId64 "%s", coll_name((fab__coll_kind)d[1]), d[2] >= 0 ? " " : "",
                 d[2] >= 0 ? fab__reduce_op_name((fab_reduce_op)d[2]) : "",
                 d[3] >= 0 ? fab_dtype_name((fab_dtype)d[3]) : "-", d[4], d[5] >= 0 ? " (root given)" : "");
}

/* Debug mode: all ranks exchange `mine` and agree, or all fail with the same message.
 * `all` may be freed whatever allgather_host returns: the transport hands MPI (or
 * NCCL) only buffers of its own and copies into `all` on success (a timed-out MPI
 * request keeps its buffers, see comm_mpi.c). */
static fab_status debug_check(fab_comm *c, const char *op, const int64_t mine[DESC_N])
{
    int64_t *all = malloc(sizeof(int64_t) * DESC_N * (size_t)c->nranks);
    if (!all)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
    fab_status s = c->tp->allgather_host(c, mine, all, sizeof(int64_t) * DESC_N);
    for (int r = 1; s == FAB_OK && r < c->nranks; r++) {
        if (memcmp(all, all + DESC_N * r, sizeof(int64_t) * DESC_N) != 0) {
            char a[128], b[128];
            describe_text(all, a, sizeof a);
            describe_text(all + DESC_N * r, b, sizeof b);
            s = fab__fail(INVALID,
                          "%s: collectives do not match across ranks at sequence number %" PRId64
                          ": rank 0 runs %s, rank %d (seq %" PRId64 ") runs %s; nothing was run",
                          op, all[0], a, r, all[DESC_N * r], b);
        }
    }
    free(all);
    return s;
}

/* Runs (or queues, inside a group) one validated collective. */
static fab_status issue(fab_comm *c, const char *op, const fab__coll *k)
{
    if (c->group_depth) {
        if (c->nqueue == c->capqueue) {
            int cap = c->capqueue ? 2 * c->capqueue : 16;
            fab__coll *q = realloc(c->queue, sizeof *q * (size_t)cap);
            if (!q)
                return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
            c->queue = q;
            c->capqueue = cap;
        }
        c->queue[c->nqueue++] = *k;
        return FAB_OK;
    }
    fab__comm_arm(c, op);
    if (c->debug) {
        int64_t d[DESC_N];
        describe(k, c->seq, d);
        debug_log(c, k, c->seq);
        if (c->nranks > 1)
            FAB__TRY(debug_check(c, op, d));
    }
    c->seq++;
    return c->tp->post(c, k, 1, 0);
}

fab_status fab__collective(fab_comm *comm, const char *op, fab__coll_kind kind, const char *send_name,
                           const fab_tensor *send, const char *recv_name, const fab_tensor *recv, fab_reduce_op rop,
                           int root)
{
    fab__coll k;
    FAB__TRY(check_coll(comm, op, kind, send_name, send, recv_name, recv, rop, root, &k));
    return issue(comm, op, &k);
}

fab_status fab_allreduce(fab_comm *comm, const fab_tensor *send, const fab_tensor *recv, fab_reduce_op op)
{
    return fab__collective(comm, "fab_allreduce", FAB__COLL_ALLREDUCE, "send", send, "recv", recv, op, 0);
}

fab_status fab_reduce_scatter(fab_comm *comm, const fab_tensor *send, const fab_tensor *recv, fab_reduce_op op)
{
    return fab__collective(comm, "fab_reduce_scatter", FAB__COLL_REDUCE_SCATTER, "send", send, "recv", recv, op, 0);
}

fab_status fab_allgather(fab_comm *comm, const fab_tensor *send, const fab_tensor *recv)
{
    return fab__collective(comm, "fab_allgather", FAB__COLL_ALLGATHER, "send", send, "recv", recv, FAB_REDUCE_SUM,
                           0);
}

fab_status fab_broadcast(fab_comm *comm, const fab_tensor *send, const fab_tensor *recv, int root)
{
    return fab__collective(comm, "fab_broadcast", FAB__COLL_BROADCAST, "send", send, "recv", recv, FAB_REDUCE_SUM,
                           root);
}

fab_status fab_barrier(fab_comm *comm)
{
    fab__coll k;
    FAB__TRY(check_coll(comm, "fab_barrier", FAB__COLL_BARRIER, NULL, NULL, NULL, NULL, FAB_REDUCE_SUM, 0, &k));
    if (comm->group_depth)
        return fab__fail(INVALID, "fab_barrier: not inside fab_comm_group_start/end");
    return issue(comm, "fab_barrier", &k);
}

fab_status fab_comm_group_start(fab_comm *comm)
{
    if (!comm)
        return fab__fail(INVALID, "fab_comm_group_start: comm is NULL");
    FAB__TRY(fab__comm_usable(comm, "fab_comm_group_start"));
    comm->group_depth++;
    return FAB_OK;
}

fab_status fab_comm_group_end(fab_comm *comm)
{
    const char *op = "fab_comm_group_end";
    if (!comm)
        return fab__fail(INVALID, "%s: comm is NULL", op);
    if (comm->group_depth == 0)
        return fab__fail(INVALID, "%s: no fab_comm_group_start is open", op);
    if (--comm->group_depth > 0)
        return FAB_OK; /* nested: the outermost end issues */
    int n = comm->nqueue;
    comm->nqueue = 0;
    FAB__TRY(fab__comm_usable(comm, op));
    if (n == 0)
        return FAB_OK;
    fab__comm_arm(comm, op);
    if (comm->debug) {
        uint64_t h = 1469598103934665603ull; /* FNV-1a over the descriptors */
        for (int i = 0; i < n; i++) {
            int64_t d[DESC_N];
            describe(&comm->queue[i], comm->seq + (uint64_t)i, d);
            debug_log(comm, &comm->queue[i], comm->seq + (uint64_t)i);
            for (size_t b = 0; b < sizeof d; b++)
                h = (h ^ ((unsigned char *)d)[b]) * 1099511628211ull;
        }
        int64_t g[DESC_N] = {(int64_t)comm->seq, 0, -1, -1, n, (int64_t)(h >> 1)};
        if (comm->nranks > 1)
            FAB__TRY(debug_check(comm, op, g));
    }
    comm->seq += (uint64_t)n;
    return comm->tp->post(comm, comm->queue, n, 0);
}
