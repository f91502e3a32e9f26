/*
 * bench_mpi.c: fab-bench under mpirun or srun.
 *
 * Every rank runs every suite it is given, on its own device: the GPU of its
 * node-local rank, or GPU 0 where the job shows each rank only one (srun
 * --gpus-per-task=1). Only rank 0 prints the table and writes the reports; the
 * others' stdout goes to /dev/null, and a rank that misses an acceptance rule says
 * so on stderr (fab-bench.c). In a build without MPI, or started without a
 * launcher, there is one rank: then MPI is initialised only for the comm suite
 * (its single-rank communicator), since an MPI library costs a start-up and, under
 * LeakSanitizer, reports leaks of its own.
 */
#include "bench.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef FAB_BENCH_MPI
#include <mpi.h>

#include "fabriek_mpi.h"

/* Started by mpirun, mpiexec or srun: the variables their process managers set. */
static bool launched_by_mpi(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i]))
            return true;
    const char *tasks = getenv("SLURM_STEP_NUM_TASKS");
    return tasks && atoi(tasks) > 1;
}

static void finalize_mpi(void)
{
    int done = 0;
    MPI_Finalized(&done);
    if (!done)
        MPI_Finalize();
}
#endif

int bench_mpi_start(bench *b, bool comm_suite)
{
    b->rank = 0;
    b->nranks = 1;
    b->local_rank = 0;
#ifdef FAB_BENCH_MPI
    if (!comm_suite && !launched_by_mpi())
        return 0;
    int provided = 0; /* MULTIPLE: the MPI transport's progress thread (comm suite) */
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "fab-bench: MPI_Init_thread failed\n");
        return -1;
    }
    atexit(finalize_mpi);
    MPI_Comm_rank(MPI_COMM_WORLD, &b->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &b->nranks);
    if (b->nranks > 1) {
        if (fab_mpi_local_rank(MPI_COMM_WORLD, &b->local_rank) != FAB_OK) {
            fprintf(stderr, "fab-bench: %s\n", fab_last_error());
            return -1;
        }
        if (b->rank != 0 && !freopen("/dev/null", "w", stdout)) { /* one table, from rank 0 */
            perror("fab-bench: /dev/null");
            return -1;
        }
    }
#else
    (void)comm_suite;
#endif
    return 0;
}

fab_status bench_context_create(const bench *b, fab_context_config *cfg, fab_context **ctx)
{
    *ctx = NULL;
    /* the node-local rank's GPU first, so that no rank touches GPU 0 unless it is its
     * own (a CUDA context there costs memory, or fails in exclusive-process mode) */
    if (b->nranks > 1 && b->local_rank > 0 && cfg->backend != FAB_BACKEND_CPU) {
        fab_context_config mine = *cfg;
        mine.backend = FAB_BACKEND_CUDA; /* AUTO would quietly fall back to the CPU */
        mine.device = b->local_rank;
        if (fab_context_create(&mine, ctx) == FAB_OK) {
            *cfg = mine;
            return FAB_OK;
        }
    }
    return fab_context_create(cfg, ctx); /* as asked: the job shows this rank one GPU, or none */
}
