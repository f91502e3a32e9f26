/*
 * comm_mpi_ring.c: ring all-reduce, reduce-scatter and all-gather on MPI
 * point-to-point messages, for the MPI transport's large collectives.
 *
 * Why not MPI_Iallreduce: Open MPI's non-blocking collectives (libnbc) run
 * about 2x slower than its blocking ones at 8 MiB and more, and a blocking call
 * cannot honour fabriek's timeout. This ring is non-blocking (polled, so the
 * deadline holds), and it pipelines: each segment travels in chunks of
 * at most `chunk_bytes` (1 MiB by default; a quarter segment for smaller ones,
 * not under 64 KiB), WINDOW chunks in flight each way, and each
 * chunk is summed as soon as it lands, while it is still in cache.
 *
 * The algorithm (n ranks, rank r, data cut into n segments):
 *   reduce-scatter, steps s = 0 .. n-2: send segment (r-s-1) mod n to rank r+1,
 *     receive segment (r-s-2) mod n from rank r-1 and add this rank's own input
 *     of it. After n-1 steps rank r holds segment r summed over every rank.
 *   all-gather, steps s = 0 .. n-2: send segment (r-s) mod n, receive segment
 *     (r-s-1) mod n into its place.
 * all-reduce is both phases; reduce-scatter the first; all-gather the second,
 * its own segment sent straight from the input and copied into place while the
 * first messages travel. All-gather messages are whole segments (at most 1 GiB):
 * with no sum to overlap, chunks only add handshakes. Open MPI 4.1's
 * MPI_Iallgather took 1.1-1.5x its blocking MPI_Allgather at 32-512 MiB on 2
 * ranks, where Isend/Irecv and a copy matched it; broadcast stays on MPI_Ibcast,
 * which matched MPI_Bcast (within 2%).
 * Each link carries 2(n-1)/n of the data for all-reduce, the optimum. Every
 * segment is summed along one chain and then copied, so all ranks get bitwise
 * the same result. Steps run in lockstep (the next step sends what this one
 * summed); chunks within a step overlap.
 *
 * Messages are raw bytes (MPI_BYTE); sums are fab__host_reduce (f16 and bf16 in
 * f32, rounded at each step, as MPI user ops do).
 */
#include "comm_mpi_ring.h"

#include <stdlib.h>
#include <string.h>

enum { WINDOW = 2 }; /* chunks in flight per direction; 2 measured as good as 4 */

struct fab__ring {
    MPI_Comm comm;
    int rank, n, tag;
    fab__coll_kind kind;
    fab_dtype dtype;
    fab_reduce_op op; /* AVG sums; the caller divides */
    size_t es;
    int64_t chunk; /* elements per message */
    int64_t count; /* as fab__coll counts it */
    const char *in;
    char *out;
    char *part[2]; /* reduce-scatter with n > 2: partial sums between steps */
    char *tmp;     /* WINDOW incoming chunks of the reduce-scatter phase */

    int phase; /* 0 reduce-scatter, 1 all-gather, 2 finished */
    size_t copy_mine; /* all-gather: bytes of this rank's input still to copy to its place in out */
    int step;
    int set_up; /* the step's fields below are valid */
    const char *src; /* sent */
    int64_t src_n;
    char *dst; /* received into (all-gather phase), or summed into (reduce-scatter phase) */
    const char *own; /* reduce-scatter: this rank's input of the received segment */
    int64_t dst_n;
    int64_t nsend, nrecv, sposted, sdone, rposted, rdone; /* chunks */
    MPI_Request sreq[WINDOW], rreq[WINDOW];
};

static int mod(int a, int n)
{
    return ((a % n) + n) % n;
}

/* All-reduce cuts count elements into n nearly equal segments; reduce-scatter
 * has segments of `count` elements. */
static int64_t seg_off(const fab__ring *r, int i)
{
    return r->kind == FAB__COLL_ALLREDUCE ? r->count * i / r->n : r->count * i;
}

static int64_t seg_len(const fab__ring *r, int i)
{
    return seg_off(r, i + 1) - seg_off(r, i);
}

static int64_t chunks(const fab__ring *r, int64_t elems)
{
    return (elems + r->chunk - 1) / r->chunk;
}

/* Fills the fields of the current (phase, step). */
static void set_up_step(fab__ring *r)
{
    int s = r->step, me = r->rank, n = r->n;
    size_t es = r->es;
    if (r->phase == 0) {
        int sseg = mod(me - s - 1, n), rseg = mod(me - s - 2, n);
        r->src_n = seg_len(r, sseg);
        r->dst_n = seg_len(r, rseg);
        r->own = r->in + (size_t)seg_off(r, rseg) * es;
        if (r->kind == FAB__COLL_ALLREDUCE) { /* partial sums live in the output */
            r->src = (s == 0 ? r->in : r->out) + (size_t)seg_off(r, sseg) * es;
            r->dst = r->out + (size_t)seg_off(r, rseg) * es;
        } else {
            r->src = s == 0 ? r->in + (size_t)seg_off(r, sseg) * es : r->part[(s - 1) & 1];
            r->dst = s == n - 2 ? r->out : r->part[s & 1];
        }
    } else {
        int sseg = mod(me - s, n), rseg = mod(me - s - 1, n);
        r->src_n = seg_len(r, sseg);
        r->dst_n = seg_len(r, rseg);
        r->src = r->out + (size_t)seg_off(r, sseg) * es;
        if (r->kind == FAB__COLL_ALLGATHER && s == 0) /* its own segment: not copied to out yet */
            r->src = r->in;
        r->dst = r->out + (size_t)seg_off(r, rseg) * es;
    }
    r->nsend = chunks(r, r->src_n);
    r->nrecv = chunks(r, r->dst_n);
    r->sposted = r->sdone = r->rposted = r->rdone = 0;
    r->set_up = 1;
}

static void next_step(fab__ring *r)
{
    r->set_up = 0;
    if (++r->step < r->n - 1)
        return;
    r->step = 0;
    r->phase = r->phase == 0 && r->kind == FAB__COLL_ALLREDUCE ? 1 : 2;
}

fab_status fab__ring_start(MPI_Comm comm, int tag, size_t chunk_bytes, const fab__coll *k, fab__ring **out)
{
    *out = NULL;
    fab__ring *r = calloc(1, sizeof *r);
    if (!r)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "out of host memory (ring state)");
    MPI_Comm_rank(comm, &r->rank);
    MPI_Comm_size(comm, &r->n);
    r->comm = comm;
    r->tag = tag;
    r->kind = k->kind;
    r->dtype = k->dtype;
    r->op = k->op == FAB_REDUCE_AVG ? FAB_REDUCE_SUM : k->op;
    r->es = fab_dtype_size(k->dtype);
    /* A segment in at least 4 chunks, so that even a few-MiB collective pipelines,
     * but no chunk under 64 KiB (per-message costs) unless chunk_bytes says so. */
    size_t seg_bytes_max = (size_t)((k->kind == FAB__COLL_ALLREDUCE ? (k->count + r->n - 1) / r->n : k->count)) * r->es;
    size_t cb = seg_bytes_max / 4 < chunk_bytes ? seg_bytes_max / 4 : chunk_bytes;
    if (cb < ((size_t)64 << 10))
        cb = chunk_bytes < ((size_t)64 << 10) ? chunk_bytes : (size_t)64 << 10;
    if (k->kind == FAB__COLL_ALLGATHER) /* no sum to overlap an arrival with: whole segments unless told */
        cb = chunk_bytes < seg_bytes_max ? chunk_bytes : seg_bytes_max;
    r->chunk = (int64_t)(cb / r->es);
    if (r->chunk < 1)
        r->chunk = 1;
    r->count = k->count;
    r->in = k->send;
    r->out = k->recv;
    for (int i = 0; i < WINDOW; i++)
        r->sreq[i] = r->rreq[i] = MPI_REQUEST_NULL;
    r->phase = 0;

    size_t seg_bytes = (size_t)k->count * r->es; /* reduce-scatter and all-gather segment */
    if (k->kind == FAB__COLL_ALLGATHER) { /* the second phase only */
        char *mine = r->out + (size_t)seg_off(r, r->rank) * r->es;
        r->copy_mine = mine != r->in ? seg_bytes : 0;
        r->phase = 1;
    }
    if (r->n == 1) { /* nothing travels */
        if (k->kind == FAB__COLL_ALLGATHER)
            r->copy_mine = 0;
        if (r->in != r->out)
            memcpy(r->out, r->in, seg_bytes);
        r->phase = 2;
    } else if (k->kind != FAB__COLL_ALLGATHER) { /* all-gather receives in place */
        r->tmp = malloc((size_t)WINDOW * (size_t)r->chunk * r->es);
        int parts = k->kind == FAB__COLL_REDUCE_SCATTER && r->n > 2;
        for (int i = 0; i < 2 && parts; i++)
            r->part[i] = malloc(seg_bytes ? seg_bytes : 1);
        if (!r->tmp || (parts && (!r->part[0] || !r->part[1]))) {
            fab__ring_free(r);
            return fab__fail(FAB_ERR_OUT_OF_MEMORY, "out of host memory (ring buffers of %zu bytes)", seg_bytes);
        }
    }
    *out = r;
    return FAB_OK;
}

/* Chunk j of the current step: its element offset and length in the segment. */
static int64_t chunk_len(const fab__ring *r, int64_t j, int64_t total)
{
    int64_t left = total - j * r->chunk;
    return left < r->chunk ? left : r->chunk;
}

/* A chunk of the reduce-scatter phase has landed in tmp: dst = own + it. */
static void sum_chunk(fab__ring *r, int64_t j)
{
    size_t off = (size_t)(j * r->chunk) * r->es;
    int64_t len = chunk_len(r, j, r->dst_n);
    char *d = r->dst + off;
    if (d != r->own + off)
        memcpy(d, r->own + off, (size_t)len * r->es);
    fab__host_reduce(d, r->tmp + (size_t)(j % WINDOW) * (size_t)r->chunk * r->es, len, r->dtype, r->op);
}

int fab__ring_progress(fab__ring *r, int *done, int *moved_any, const char **call)
{
    int right = mod(r->rank + 1, r->n), left = mod(r->rank - 1, r->n);
    for (;;) {
        if (r->phase == 2) {
            *done = 1;
            return MPI_SUCCESS;
        }
        if (!r->set_up)
            set_up_step(r);
        int moved = 0, err;
        while (r->sposted < r->nsend && r->sposted - r->sdone < WINDOW) {
            int64_t j = r->sposted;
            *call = "MPI_Isend";
            err = MPI_Isend(r->src + (size_t)(j * r->chunk) * r->es, (int)((size_t)chunk_len(r, j, r->src_n) * r->es),
                            MPI_BYTE, right, r->tag, r->comm, &r->sreq[j % WINDOW]);
            if (err != MPI_SUCCESS)
                return err;
            r->sposted++;
            moved = 1;
        }
        while (r->rposted < r->nrecv && r->rposted - r->rdone < WINDOW) {
            int64_t j = r->rposted;
            char *to = r->phase == 0 ? r->tmp + (size_t)(j % WINDOW) * (size_t)r->chunk * r->es
                                     : r->dst + (size_t)(j * r->chunk) * r->es;
            *call = "MPI_Irecv";
            err = MPI_Irecv(to, (int)((size_t)chunk_len(r, j, r->dst_n) * r->es), MPI_BYTE, left, r->tag, r->comm,
                            &r->rreq[j % WINDOW]);
            if (err != MPI_SUCCESS)
                return err;
            r->rposted++;
            moved = 1;
        }
        if (r->copy_mine) { /* while the first messages travel (MPI may move them meanwhile) */
            memmove(r->out + (size_t)seg_off(r, r->rank) * r->es, r->in, r->copy_mine);
            r->copy_mine = 0;
            moved = 1;
        }
        int flag = 0;
        *call = "MPI_Test";
        if (r->rdone < r->rposted) { /* chunks land in order: test the oldest */
            if ((err = MPI_Test(&r->rreq[r->rdone % WINDOW], &flag, MPI_STATUS_IGNORE)) != MPI_SUCCESS)
                return err;
            if (flag) {
                if (r->phase == 0)
                    sum_chunk(r, r->rdone);
                r->rdone++;
                moved = 1;
            }
        }
        if (r->sdone < r->sposted) {
            if ((err = MPI_Test(&r->sreq[r->sdone % WINDOW], &flag, MPI_STATUS_IGNORE)) != MPI_SUCCESS)
                return err;
            if (flag) {
                r->sdone++;
                moved = 1;
            }
        }
        if (moved)
            *moved_any = 1;
        if (r->sdone == r->nsend && r->rdone == r->nrecv) {
            next_step(r);
            continue;
        }
        if (!moved) {
            *done = 0;
            return MPI_SUCCESS;
        }
    }
}

int fab__ring_finished(const fab__ring *r)
{
    return r->phase == 2; /* reached once every request of the last step has completed */
}

void fab__ring_free(fab__ring *r)
{
    if (!r)
        return;
    free(r->tmp);
    free(r->part[0]);
    free(r->part[1]);
    free(r);
}
