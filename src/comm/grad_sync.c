/*
 * grad_sync.c: gradient exchange with buckets, as PyTorch DDP's reducer does it,
 * and the ZeRO-1 helpers.
 *
 * Gradients are registered in the order backward produces them and laid out in
 * buckets in that order. When every gradient of a bucket is ready, the bucket is
 * packed into its flat buffer and all-reduced on the communicator's side channel
 * (CUDA: its own stream; MPI: a non-blocking request), while backward goes on.
 * Buckets start strictly in index order (a complete bucket waits for the ones
 * before it): every rank must issue collectives in the same order, whatever order
 * its gradients became ready in. wait() finishes the side channel, orders the
 * context stream after it and unpacks the buffers into the gradients.
 *
 * A bucket whose gradients already lie back to back in memory, in registration
 * order and in the dtype that travels, is its own flat buffer (PyTorch's
 * gradient_as_bucket_view, found rather than imposed): it is all-reduced where it
 * lies, with no packing before and no unpacking after. Element for element it is
 * the packed buffer, so ranks that pack and ranks that do not still pair up.
 *
 * The bucket all-reduces run on a communicator of their own, a duplicate of the
 * user's made by fab_grad_sync_create (MPI_Comm_idup; ncclCommSplit with one color),
 * so they never pair with the user's collectives on `comm`: ranks may issue a
 * fab_allreduce between ready() calls at different points of their bucket
 * sequence. A fault of the user's communicator (fab_comm_abort, a timeout) is
 * passed on to the duplicate at the next fab_grad_sync_* call.
 */
#include "comm.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INVALID FAB_ERR_INVALID_ARGUMENT

typedef struct gs_grad {
    fab_tensor t;
    int64_t n;
    int64_t offset; /* in elements of its bucket */
    int bucket;
    int ready;
} gs_grad;

typedef struct gs_bucket {
    int first, count; /* its gradients: [first, first + count) */
    int64_t numel;
    fab_dtype dtype, wire; /* the gradients' dtype; what travels */
    void *buf;
    int in_place; /* buf is the gradients' own memory (see the top of the file) */
    int waiting;  /* gradients not ready yet in this pass */
} gs_bucket;

struct fab_grad_sync {
    fab_comm *user; /* the communicator given to create() */
    fab_comm *comm; /* its duplicate: the buckets' collectives run here */
    fab_grad_sync_config cfg;
    gs_grad *grads;
    int ngrads, capgrads;
    gs_bucket *buckets;
    int nbuckets;
    int built, in_pass, communicate;
    int next_bucket; /* first bucket not started in this pass */
};

fab_status fab_grad_sync_create(fab_comm *comm, const fab_grad_sync_config *cfg, fab_grad_sync **out)
{
    const char *op = "fab_grad_sync_create";
    if (!out)
        return fab__fail(INVALID, "%s: out is NULL", op);
    *out = NULL;
    if (!comm)
        return fab__fail(INVALID, "%s: comm is NULL", op);
    FAB__TRY(fab__comm_usable(comm, op));
    if (comm->group_depth)
        return fab__fail(INVALID, "%s: not inside fab_comm_group_start/end", op);
    fab_grad_sync *gs = calloc(1, sizeof *gs);
    if (!gs)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
    gs->user = comm;
    fab_status s = fab__comm_dup(comm, op, &gs->comm);
    if (s != FAB_OK) {
        free(gs);
        return s;
    }
    if (cfg)
        gs->cfg = *cfg;
    if (!gs->cfg.bucket_cap_bytes)
        gs->cfg.bucket_cap_bytes = (size_t)25 << 20;
    if (!gs->cfg.first_bucket_bytes)
        gs->cfg.first_bucket_bytes = (size_t)1 << 20;
    *out = gs;
    return FAB_OK;
}

fab_status fab_grad_sync_register(fab_grad_sync *gs, const fab_tensor *grad, int *index)
{
    const char *op = "fab_grad_sync_register";
    if (!gs)
        return fab__fail(INVALID, "%s: gs is NULL", op);
    if (!grad)
        return fab__fail(INVALID, "%s: grad is NULL", op);
    if (gs->built)
        return fab__fail(INVALID, "%s: gradients must be registered before the first fab_grad_sync_begin", op);
    FAB__TRY(fab__check_contiguous(op, "grad", grad));
    static const fab_dtype ok[] = {FAB_DTYPE_F32, FAB_DTYPE_F16, FAB_DTYPE_BF16};
    if (grad->dtype != ok[0] && grad->dtype != ok[1] && grad->dtype != ok[2])
        return fab__fail(FAB_ERR_UNSUPPORTED, "%s: grad.dtype=%s is not supported (f32, f16, bf16)", op,
                         fab_dtype_name(grad->dtype));
    FAB__TRY(fab__check_memory(gs->comm->ctx, op, "grad", grad));
    for (int i = 0; i < gs->ngrads; i++)
        FAB__TRY(fab__check_no_partial_overlap(op, "grad", grad, "an earlier gradient", &gs->grads[i].t, false));
    if (gs->ngrads == gs->capgrads) {
        int cap = gs->capgrads ? 2 * gs->capgrads : 64;
        gs_grad *g = realloc(gs->grads, sizeof *g * (size_t)cap);
        if (!g)
            return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
        gs->grads = g;
        gs->capgrads = cap;
    }
    gs_grad *g = &gs->grads[gs->ngrads];
    memset(g, 0, sizeof *g);
    g->t = *grad;
    g->n = fab_tensor_numel(grad);
    if (index)
        *index = gs->ngrads;
    gs->ngrads++;
    return FAB_OK;
}

/* The duplicate's state, after passing on a fault of the user's communicator. */
static fab_status gs_usable(fab_grad_sync *gs, const char *op)
{
    fab_comm *u = gs->user, *c = gs->comm;
    if (c->fault == FAB_OK && u->fault == FAB_OK)
        (void)fab__comm_usable(u, op); /* polls (NCCL's asynchronous errors) */
    if (c->fault == FAB_OK && u->fault != FAB_OK)
        (void)fab__comm_fault(c, u->fault, "the communicator was aborted (%s: %s)", fab_status_name(u->fault),
                              u->fault_msg);
    return fab__comm_usable(c, op);
}

static fab_dtype wire_dtype(const fab_grad_sync *gs, fab_dtype d)
{
    return gs->cfg.reduce_bf16 && d == FAB_DTYPE_F32 && gs->comm->nranks > 1 ? FAB_DTYPE_BF16 : d;
}

/* Whether bucket b's non-empty gradients lie back to back in memory, in
 * registration order, in the dtype that travels. */
static int lies_flat(const fab_grad_sync *gs, const gs_bucket *b)
{
    if (b->wire != b->dtype)
        return 0;
    size_t es = fab_dtype_size(b->dtype);
    const char *next = NULL; /* where the next non-empty gradient must start */
    for (int i = b->first; i < b->first + b->count; i++) {
        const gs_grad *g = &gs->grads[i];
        if (g->n == 0)
            continue;
        if (next && (const char *)g->t.data != next)
            return 0;
        next = (const char *)g->t.data + (size_t)g->n * es;
    }
    return 1;
}

/* Lays the gradients out in buckets and allocates the buffers of those that do
 * not lie flat. */
static fab_status build(fab_grad_sync *gs, const char *op)
{
    if (gs->built)
        return FAB_OK;
    gs->buckets = calloc((size_t)(gs->ngrads ? gs->ngrads : 1), sizeof *gs->buckets);
    if (!gs->buckets)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
    gs_bucket *b = NULL;
    for (int i = 0; i < gs->ngrads; i++) {
        gs_grad *g = &gs->grads[i];
        fab_dtype wire = wire_dtype(gs, g->t.dtype);
        size_t bytes = (size_t)g->n * fab_dtype_size(wire);
        /* bucket 0 is small so that communication starts early in backward */
        size_t limit = gs->nbuckets <= 1 ? gs->cfg.first_bucket_bytes : gs->cfg.bucket_cap_bytes;
        /* a gradient past the limit ends up alone in its bucket */
        if (!b || b->dtype != g->t.dtype || (size_t)b->numel * fab_dtype_size(b->wire) + bytes > limit) {
            b = &gs->buckets[gs->nbuckets++];
            b->first = i;
            b->dtype = g->t.dtype;
            b->wire = wire;
        }
        g->bucket = (int)(b - gs->buckets);
        g->offset = b->numel;
        b->numel += g->n;
        b->count++;
    }
    for (int k = 0; k < gs->nbuckets; k++) {
        gs_bucket *bk = &gs->buckets[k];
        size_t bytes = (size_t)bk->numel * fab_dtype_size(bk->wire);
        if (bytes > 0 && gs->comm->nranks > 1 && lies_flat(gs, bk)) {
            bk->in_place = 1;
            for (int i = bk->first; !bk->buf; i++) /* the first non-empty gradient (bytes > 0: there is one) */
                if (gs->grads[i].n > 0)
                    bk->buf = gs->grads[i].t.data;
        } else if (bytes > 0 && gs->comm->nranks > 1) {
            fab_status s = fab_alloc(gs->comm->ctx, bytes, &bk->buf);
            if (s != FAB_OK) {
                for (int j = 0; j < k; j++)
                    if (!gs->buckets[j].in_place)
                        fab_free(gs->comm->ctx, gs->buckets[j].buf);
                free(gs->buckets);
                gs->buckets = NULL;
                gs->nbuckets = 0;
                return s;
            }
        }
    }
    gs->built = 1;
    return FAB_OK;
}

/* Debug mode: every rank must have the same bucket layout, or the bucket
 * all-reduces would pair up wrongly; compare (buckets, elements, hash) once. */
static fab_status check_layout(fab_grad_sync *gs, const char *op)
{
    fab_comm *c = gs->comm;
    if (!c->debug || c->nranks == 1)
        return FAB_OK;
    uint64_t h = 1469598103934665603ull;
    int64_t total = 0;
    for (int k = 0; k < gs->nbuckets; k++) {
        int64_t v[2] = {gs->buckets[k].numel, gs->buckets[k].wire};
        total += v[0];
        for (size_t b = 0; b < sizeof v; b++)
            h = (h ^ ((unsigned char *)v)[b]) * 1099511628211ull;
    }
    int64_t mine[3] = {gs->nbuckets, total, (int64_t)(h >> 1)};
    /* `all` may be freed whatever allgather_host returns: the transport copies into
     * it only on success and keeps its own buffers for a request that timed out. */
    int64_t *all = malloc(sizeof mine * (size_t)c->nranks);
    if (!all)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
    fab__comm_arm(c, op);
    fab_status s = c->tp->allgather_host(c, mine, all, sizeof mine);
    for (int r = 1; s == FAB_OK && r < c->nranks; r++)
        if (memcmp(all, all + 3 * r, sizeof mine) != 0)
            s = fab__fail(INVALID,
                          "%s: gradient buckets differ across ranks: rank 0 has %" PRId64 " buckets of %" PRId64
                          " elements in all, rank %d has %" PRId64 " of %" PRId64
                          " (register the same gradients in the same order everywhere)",
                          op, all[0], all[1], r, all[3 * r], all[3 * r + 1]);
    free(all);
    return s;
}

fab_status fab_grad_sync_bucket_of(const fab_grad_sync *gs, int index, int *bucket, int *nbuckets)
{
    const char *op = "fab_grad_sync_bucket_of";
    if (!gs)
        return fab__fail(INVALID, "%s: gs is NULL", op);
    if (index < 0 || index >= gs->ngrads)
        return fab__fail(INVALID, "%s: index=%d must be in [0, %d)", op, index, gs->ngrads);
    FAB__TRY(build((fab_grad_sync *)gs, op));
    if (bucket)
        *bucket = gs->grads[index].bucket;
    if (nbuckets)
        *nbuckets = gs->nbuckets;
    return FAB_OK;
}

fab_status fab_grad_sync_begin(fab_grad_sync *gs, int communicate)
{
    const char *op = "fab_grad_sync_begin";
    if (!gs)
        return fab__fail(INVALID, "%s: gs is NULL", op);
    if (gs->in_pass)
        return fab__fail(INVALID, "%s: the previous pass has not ended with fab_grad_sync_wait", op);
    FAB__TRY(gs_usable(gs, op));
    if (!gs->built) {
        FAB__TRY(build(gs, op));
        FAB__TRY(check_layout(gs, op));
    }
    for (int i = 0; i < gs->ngrads; i++)
        gs->grads[i].ready = 0;
    for (int k = 0; k < gs->nbuckets; k++)
        gs->buckets[k].waiting = gs->buckets[k].count;
    gs->next_bucket = 0;
    gs->communicate = communicate != 0 && gs->comm->nranks > 1;
    gs->in_pass = 1;
    return FAB_OK;
}

/* Packs bucket k (unless it lies flat) and starts its all-reduce on the side
 * channel. */
static fab_status start_bucket(fab_grad_sync *gs, int k)
{
    fab_comm *c = gs->comm;
    gs_bucket *b = &gs->buckets[k];
    FAB__TRY(c->tp->fork(c)); /* after the backward kernels that wrote the gradients */
    size_t es = fab_dtype_size(b->wire);
    for (int i = b->first; i < b->first + b->count && !b->in_place; i++) {
        gs_grad *g = &gs->grads[i];
        void *dst = (char *)b->buf + (size_t)g->offset * es;
        if (b->wire == g->t.dtype)
            FAB__TRY(c->tp->copy(c, 1, dst, g->t.data, (size_t)g->n * es));
        else
            FAB__TRY(c->tp->cast(c, 1, dst, b->wire, g->t.data, g->t.dtype, g->n, 1));
    }
    /* A bucket that travels in bf16 is summed there and averaged on the way back
     * to f32 (wait), so the average is rounded once, in f32. */
    fab__coll coll = {FAB__COLL_ALLREDUCE, gs->cfg.sum || b->wire != b->dtype ? FAB_REDUCE_SUM : FAB_REDUCE_AVG,
                      b->wire, b->numel, b->buf, b->buf, 0};
    if (c->debug) /* the bucket all-reduce is one more collective in the log */
        fprintf(stderr, "fab_comm[rank %d/%d] #%" PRIu64 " grad_sync bucket %d allreduce %s %s count=%" PRId64 "\n",
                c->rank, c->nranks, c->seq, k, fab__reduce_op_name(coll.op), fab_dtype_name(b->wire), b->numel);
    c->seq++;
    return c->tp->post(c, &coll, 1, 1);
}

fab_status fab_grad_sync_ready(fab_grad_sync *gs, int index)
{
    const char *op = "fab_grad_sync_ready";
    if (!gs)
        return fab__fail(INVALID, "%s: gs is NULL", op);
    if (!gs->in_pass)
        return fab__fail(INVALID, "%s: no pass is open (call fab_grad_sync_begin)", op);
    if (index < 0 || index >= gs->ngrads)
        return fab__fail(INVALID, "%s: index=%d must be in [0, %d)", op, index, gs->ngrads);
    gs_grad *g = &gs->grads[index];
    if (g->ready)
        return fab__fail(INVALID, "%s: gradient %d was already marked ready in this pass", op, index);
    FAB__TRY(gs_usable(gs, op));
    g->ready = 1;
    gs->buckets[g->bucket].waiting--;
    if (!gs->communicate)
        return FAB_OK;
    fab_comm *c = gs->comm;
    fab__comm_arm(c, op);
    while (gs->next_bucket < gs->nbuckets && gs->buckets[gs->next_bucket].waiting == 0)
        FAB__TRY(start_bucket(gs, gs->next_bucket++));
    int done;
    return c->tp->test(c, 1, &done); /* MPI makes progress only inside MPI calls */
}

fab_status fab_grad_sync_wait(fab_grad_sync *gs)
{
    const char *op = "fab_grad_sync_wait";
    if (!gs)
        return fab__fail(INVALID, "%s: gs is NULL", op);
    if (!gs->in_pass)
        return fab__fail(INVALID, "%s: no pass is open (call fab_grad_sync_begin)", op);
    gs->in_pass = 0;
    fab_comm *c = gs->comm;
    int missing = -1;
    for (int i = 0; i < gs->ngrads && missing < 0; i++)
        if (!gs->grads[i].ready)
            missing = i;
    if (!gs->communicate) {
        if (missing >= 0)
            return fab__fail(INVALID, "%s: gradient %d was not marked ready in this pass", op, missing);
        return FAB_OK;
    }
    FAB__TRY(gs_usable(gs, op));
    fab__comm_arm(c, op);
    FAB__TRY(c->tp->complete(c, 1, 0)); /* what was started finishes, even on error */
    if (missing >= 0)
        return fab__fail(INVALID,
                         "%s: gradient %d was not marked ready in this pass; its bucket was not reduced and the other "
                         "ranks will time out waiting for it",
                         op, missing);
    for (int k = 0; k < gs->nbuckets; k++) {
        gs_bucket *b = &gs->buckets[k];
        size_t es = fab_dtype_size(b->wire);
        for (int i = b->first; i < b->first + b->count && !b->in_place; i++) {
            gs_grad *g = &gs->grads[i];
            const void *src = (char *)b->buf + (size_t)g->offset * es;
            if (b->wire == g->t.dtype)
                FAB__TRY(c->tp->copy(c, 0, g->t.data, src, (size_t)g->n * es));
            else
                FAB__TRY(c->tp->cast(c, 0, g->t.data, g->t.dtype, src, b->wire, g->n, gs->cfg.sum ? 1 : c->nranks));
        }
    }
    return FAB_OK;
}

void fab_grad_sync_destroy(fab_grad_sync *gs)
{
    if (!gs)
        return;
    fab_comm *c = gs->comm;
    if (gs->in_pass && gs->communicate && c->fault == FAB_OK) {
        fab__comm_arm(c, "fab_grad_sync_destroy");
        (void)c->tp->complete(c, 1, 1); /* never free a buffer a request still uses */
    }
    /* After a fault an MPI request may still write a bucket: leak it then (the
     * transport's destroy frees only what it no longer uses). NCCL's abort ended
     * its kernels; fab_free waits for the streams. */
    int keep = c->fault != FAB_OK && gs->communicate && c->tp->buffers_busy_after_fault;
    for (int k = 0; k < gs->nbuckets; k++)
        if (!keep && !gs->buckets[k].in_place)
            fab_free(c->ctx, gs->buckets[k].buf);
    (void)fab_comm_destroy(c);
    free(gs->buckets);
    free(gs->grads);
    free(gs);
}

/* ------------------------------------------------------------------ ZeRO-1 */

int64_t fab_zero_shard_size(int64_t numel, int nranks)
{
    if (numel <= 0 || nranks <= 0)
        return 0;
    return (numel + nranks - 1) / nranks;
}

fab_status fab_zero_reduce_scatter(fab_comm *comm, const fab_tensor *flat_grads, const fab_tensor *grad_shard, int sum)
{
    const char *op = "fab_zero_reduce_scatter";
    if (!comm)
        return fab__fail(INVALID, "%s: comm is NULL", op);
    if (!flat_grads)
        return fab__fail(INVALID, "%s: flat_grads is NULL", op);
    if (!grad_shard)
        return fab__fail(INVALID, "%s: grad_shard is NULL", op);
    int64_t nf = fab_tensor_numel(flat_grads), ns = fab_tensor_numel(grad_shard);
    /* a negative count (a bad shape) is left to the collective's checks, which name it */
    if (nf >= 0 && ns >= 0 && !fab__is_n_times(nf, comm->nranks, ns))
        return fab__fail(INVALID,
                         "%s: flat_grads has %" PRId64 " elements; it must be nranks*grad_shard = %d*%" PRId64
                         " (pad it to fab_zero_shard_size(numel, nranks)*nranks)",
                         op, nf, comm->nranks, ns);
    return fab__collective(comm, op, FAB__COLL_REDUCE_SCATTER, "flat_grads", flat_grads, "grad_shard", grad_shard,
                           sum ? FAB_REDUCE_SUM : FAB_REDUCE_AVG, 0);
}

fab_status fab_zero_allgather(fab_comm *comm, const fab_tensor *param_shard, const fab_tensor *flat_params)
{
    /* the collective's checks name these tensors, counts included */
    return fab__collective(comm, "fab_zero_allgather", FAB__COLL_ALLGATHER, "param_shard", param_shard, "flat_params",
                           flat_params, FAB_REDUCE_SUM, 0);
}
