/*
 * comm.h: the inside of fab_comm. comm.c holds everything the transports share
 * (argument checks, grouping, debug mode, deadlines, faults); a transport (self,
 * MPI, NCCL) only moves bytes. grad_sync.c is built on the same transport calls.
 * Internal; never installed.
 */
#ifndef FAB_COMM_INTERNAL_H
#define FAB_COMM_INTERNAL_H

#include "../runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fab__coll_kind {
    FAB__COLL_ALLREDUCE = 1,
    FAB__COLL_REDUCE_SCATTER,
    FAB__COLL_ALLGATHER,
    FAB__COLL_BROADCAST,
    FAB__COLL_BARRIER
} fab__coll_kind;

/* One collective, counted as NCCL counts: allreduce/broadcast `count` elements;
 * reduce_scatter `count` received per rank; allgather `count` sent per rank. */
typedef struct fab__coll {
    fab__coll_kind kind;
    fab_reduce_op op;
    fab_dtype dtype;
    int64_t count;
    const void *send;
    void *recv;
    int root;
} fab__coll;

/* Whether total == n * each (n > 0), without forming the product, which can
 * overflow for counts that pass every other check. */
static inline int fab__is_n_times(int64_t total, int64_t n, int64_t each)
{
    return total % n == 0 && total / n == each;
}

/* Validates and issues one collective (comm.c), as fab_allreduce and its siblings
 * do; the messages name the tensors send_name and recv_name (ZeRO-1's helpers call
 * them by their own names). Not for barriers. */
fab_status fab__collective(fab_comm *comm, const char *op, fab__coll_kind kind, const char *send_name,
                           const fab_tensor *send, const char *recv_name, const fab_tensor *recv, fab_reduce_op rop,
                           int root);

/* What a transport provides. `side` selects the communication stream of gradient
 * exchange (CUDA); CPU transports ignore it. Every wait honours comm->deadline. */
typedef struct fab__transport {
    const char *name;
    /* Issues n collectives together. CPU transports complete them before returning
     * unless `side` is set (then fab__transport.complete finishes them). */
    fab_status (*post)(fab_comm *c, const fab__coll *colls, int n, int side);
    /* Progress without blocking; *done when nothing issued on `side` is pending. */
    fab_status (*test)(fab_comm *c, int side, int *done);
    /* Finishes everything issued on `side`: CPU waits (deadline); CUDA orders the
     * context stream after the side stream, or with `host` waits on the host. */
    fab_status (*complete)(fab_comm *c, int side, int host);
    /* The side stream waits for the context stream's work so far (CUDA). */
    fab_status (*fork)(fab_comm *c);
    /* Copies / converts on `side` (CUDA) or at once (CPU); cast writes
     * dst = (dst_dtype)(src / divisor), the division in f32. */
    fab_status (*copy)(fab_comm *c, int side, void *dst, const void *src, size_t bytes);
    fab_status (*cast)(fab_comm *c, int side, void *dst, fab_dtype dst_dtype, const void *src,
                       fab_dtype src_dtype, int64_t n, int divisor);
    /* Host bytes from every rank, in rank order (debug mode's check); waits. The
     * transport reads `mine` and writes `all` only during the call (it copies them
     * through buffers of its own), so the caller may free both whatever it returns. */
    fab_status (*allgather_host)(fab_comm *c, const void *mine, void *all, size_t bytes);
    /* Fills out->impl, rank, nranks for the part of `c` with this color. */
    fab_status (*split)(fab_comm *c, int color, int key, fab_comm *out);
    /* Fills out->impl, rank, nranks with a duplicate of `c`: the same ranks in the
     * same order, on a transport communicator of its own (MPI_Comm_idup,
     * ncclCommSplit), so its collectives never pair with `c`'s. */
    fab_status (*dup)(fab_comm *c, fab_comm *out);
    /* FAB_OK, or a fault the transport reports asynchronously (NCCL). */
    fab_status (*poll)(fab_comm *c);
    void (*abort_comm)(fab_comm *c); /* the transport's own abort: ncclCommAbort, ... */
    /* Frees the transport state; waits (deadline) unless aborted. */
    fab_status (*destroy)(fab_comm *c);
    /* The transport's own handle (fab_comm_native). */
    void *(*native)(fab_comm *c);
    /* After a fault, may memory given to a collective still be written? MPI: yes
     * (a posted request cannot be cancelled, the peer may still deliver); NCCL: no
     * (ncclCommAbort ends its kernels). Decides whether grad_sync frees its
     * buckets after a fault or leaks them. */
    int buffers_busy_after_fault;
} fab__transport;

struct fab_comm {
    fab_context *ctx;
    const fab__transport *tp;
    void *impl; /* the transport's state */
    int rank, nranks;
    double timeout_s;
    double deadline; /* of the call in progress, on fab__comm_now()'s clock */
    const char *op;  /* the public call in progress, for messages */
    int debug;
    uint64_t seq; /* collectives issued so far */
    fab_status fault; /* FAB_OK while usable */
    char fault_msg[200];
    int group_depth;
    fab__coll *queue; /* collectives of the open group */
    int nqueue, capqueue;
    /* Gradient exchanges run on duplicates (fab__comm_dup). A duplicate's fault
     * (its watchdog's timeout, on NCCL) is this communicator's too, at its next
     * call: a peer that stopped in one stops the other. */
    struct fab_comm *dups;     /* this communicator's duplicates, linked by next_dup */
    struct fab_comm *dup_of;   /* on a duplicate: its origin, while that exists */
    struct fab_comm *next_dup;
};

/* Seconds on a monotonic clock. */
double fab__comm_now(void);
/* Sets comm->deadline = now + timeout for a call about to wait. */
void fab__comm_arm(fab_comm *c, const char *op);
/* Called between polls: spins, then sched_yield, then 50 us naps after a long wait. */
void fab__comm_backoff(int *spins);
/* Aborts `c` (transport abort + marks it) and records the fault; returns `status`. */
fab_status fab__comm_fault(fab_comm *c, fab_status status, const char *fmt, ...) FAB__PRINTF(3, 4);
/* FAB_OK, or the recorded fault with a message naming `op`. */
fab_status fab__comm_usable(fab_comm *c, const char *op);
/* Allocates a communicator shell for ctx with the config applied. */
fab_status fab__comm_new(fab_context *ctx, const fab_comm_config *cfg, fab_comm **out);
/* A duplicate of `comm` with its timeout and debug mode (gradient exchange's own
 * communicator). Collective over `comm`; `op` names the public call for messages. */
fab_status fab__comm_dup(fab_comm *comm, const char *op, fab_comm **out);
const char *fab__reduce_op_name(fab_reduce_op op);

/* Host reductions for the CPU transports and tests of them: inout = inout op in,
 * elementwise, n elements of dtype (f16/bf16 widened to f32 and rounded back). */
void fab__host_reduce(void *inout, const void *in, int64_t n, fab_dtype dtype, fab_reduce_op op);
/* x /= divisor in place (float dtypes; f16/bf16 in f32): AVG = SUM / nranks. */
void fab__host_divide(void *x, int64_t n, fab_dtype dtype, int divisor);
/* dst = (dst_dtype)(src / divisor) between f32, bf16 and f16, the division in f32
 * (a copy when the dtypes match and divisor is 1). */
void fab__host_cast(void *dst, fab_dtype dst_dtype, const void *src, fab_dtype src_dtype, int64_t n, int divisor);

/* Transports. */
extern const fab__transport fab__self_transport;
fab_status fab__self_host_copy(fab_comm *c, int side, void *dst, const void *src, size_t bytes);
fab_status fab__self_host_cast(fab_comm *c, int side, void *dst, fab_dtype dst_dtype, const void *src,
                               fab_dtype src_dtype, int64_t n, int divisor);
#ifdef FAB_HAVE_MPI
/* Joins MPI_COMM_WORLD (fab_comm_create on a CPU context with nranks > 1). */
fab_status fab__mpi_create_world(fab_context *ctx, int nranks, int rank, const fab_comm_config *cfg, fab_comm **out);
#endif
#ifdef FAB_HAVE_NCCL
/* comm_cast.cu: dst = (dst_dtype)(src / divisor), in f32, on a CUDA stream (f32,
 * bf16, f16); dst == src allowed. */
fab_status fab__comm_cast_cuda(void *dst, fab_dtype dst_dtype, const void *src, fab_dtype src_dtype, int64_t n,
                               float divisor, void *stream);
/* ncclGetUniqueId, on the context's device */
fab_status fab__nccl_unique_id(fab_context *ctx, fab_comm_unique_id *id);
fab_status fab__nccl_create(fab_comm *c, int nranks, int rank, const fab_comm_unique_id *id);
#endif

#ifdef __cplusplus
}
#endif

#endif
