/*
 * comm_mpi_ring.h: fabriek's own ring all-reduce, reduce-scatter and all-gather on MPI
 * point-to-point messages, progressed by polling (comm_mpi_ring.c).
 * Internal to the MPI transport.
 */
#ifndef FAB_COMM_MPI_RING_H
#define FAB_COMM_MPI_RING_H

#include <mpi.h>

#include "comm.h"

typedef struct fab__ring fab__ring;

/* Starts collective `k` (allreduce, reduce_scatter or allgather, counted as in
 * fab__coll) on `comm` with message tag `tag`: every rank must start its
 * collectives in the same order with the same tags. AVG is left to the caller
 * (the ring sums). Messages are at most `chunk_bytes` each. */
fab_status fab__ring_start(MPI_Comm comm, int tag, size_t chunk_bytes, const fab__coll *k, fab__ring **out);

/* Moves the ring on as far as it can without waiting. Returns MPI_SUCCESS or an
 * MPI error code (then *call names the MPI function); *done is 1 when finished;
 * *moved is set to 1 when a message was posted or completed (else left alone). */
int fab__ring_progress(fab__ring *r, int *done, int *moved, const char **call);

/* 1 when the ring has finished: no message of it is in flight to or from this
 * rank, and no peer will send it another. Not for a ring stopped half-way (after
 * a timeout) even when every request it posted has completed: its peers may still
 * send it the rest (see comm_mpi.c, requests_done). */
int fab__ring_finished(const fab__ring *r);

/* Frees a ring that has finished, or that MPI no longer touches. */
void fab__ring_free(fab__ring *r);

#endif
