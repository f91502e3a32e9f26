/*
 * fabriek_mpi.h: making communicators from MPI, the usual path under Slurm (srun)
 * or mpirun. Optional: include it after <mpi.h>-using code only when the library was
 * built with MPI (FAB_ENABLE_MPI=ON and MPI found); the functions below exist only
 * then.
 *
 * One process per GPU. Pick the device from the node-local rank before making the
 * context, unless the job already confines each process to one GPU
 * (CUDA_VISIBLE_DEVICES set per task by Slurm's --gpus-per-task / --gpu-bind):
 *
 *   int provided;      (MPI_THREAD_MULTIPLE: CPU gradient exchange overlaps backward)
 *   MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
 *   int local; fab_mpi_local_rank(MPI_COMM_WORLD, &local);
 *   fab_context_config cc = {0}; cc.backend = FAB_BACKEND_CUDA; cc.device = local; (0 where
 *   each rank sees only its own GPU, as under srun --gpus-per-task=1)
 *   fab_context *ctx; fab_context_create(&cc, &ctx);
 *   fab_comm *comm;   fab_comm_create_mpi(ctx, MPI_COMM_WORLD, NULL, &comm);
 *   ... fab_comm_destroy(comm); fab_context_destroy(ctx); MPI_Finalize();
 */
#ifndef FABRIEK_MPI_H
#define FABRIEK_MPI_H

#include <mpi.h>

#include "fabriek.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The calling process's rank among the processes of `comm` on the same node
 * (MPI_Comm_split_type with MPI_COMM_TYPE_SHARED): 0 .. ranks-per-node - 1.
 * Collective over `comm`. */
FAB_API fab_status fab_mpi_local_rank(MPI_Comm comm, int *local_rank);

/* A communicator over the ranks of `comm` (collective over it; the ranks keep
 * their MPI ranks). MPI must be initialized.
 *  - CUDA context: NCCL; rank 0 makes the unique id and MPI broadcasts it.
 *  - CPU context: MPI itself, on a duplicate of `comm` (the caller may free `comm`).
 * cfg may be NULL. On failure *out is NULL. */
FAB_API fab_status fab_comm_create_mpi(fab_context *ctx, MPI_Comm comm, const fab_comm_config *cfg, fab_comm **out);

#ifdef __cplusplus
}
#endif

#endif /* FABRIEK_MPI_H */
