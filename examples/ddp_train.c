/*
 * ddp_train.c: data-parallel training of mlp.h's perceptron over MPI, as
 * PyTorch's DistributedDataParallel does it. Every rank holds the whole model and
 * trains on its share of each batch; fab_grad_sync sums the gradients, a bucket
 * starting as soon as backward has produced its gradients, and the optimizer
 * step waits for them.
 *
 *   mpirun -np 4 ddp_train [cpu|cuda] [steps]      (one GPU per rank for cuda)
 *
 * Each rank also trains the same model on the whole batch alone (a CPU context,
 * no communication): the data-parallel weights must equal those up to float
 * rounding, and the loss must fall. Exits 0 when both hold (a test).
 */
#include <mpi.h>

#include "fabriek_mpi.h"
#include "mlp.h"

enum { BATCH = 64 };

static void mark_ready(void *gs, int i) { CHECK(fab_grad_sync_ready(gs, i)); }

/* max |a - b| over the parameters, relative to max |b| */
static float weights_differ(mlp *a, mlp *b)
{
    buffer *pa[4] = {&a->w1, &a->b1, &a->w2, &a->b2}, *pb[4] = {&b->w1, &b->b1, &b->w2, &b->b2};
    float diff = 0, mag = 0;
    for (int p = 0; p < 4; p++) {
        download(a->ctx, pa[p]);
        download(b->ctx, pb[p]);
        for (int64_t i = 0; i < pa[p]->n; i++) {
            diff = fmaxf(diff, fabsf(pa[p]->host[i] - pb[p]->host[i]));
            mag = fmaxf(mag, fabsf(pb[p]->host[i]));
        }
    }
    return diff / mag;
}

int main(int argc, char **argv)
{
    int provided = 0; /* MULTIPLE: CPU gradient buckets travel during backward */
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    int rank = 0, nranks = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    fab_context_config cfg = {0};
    cfg.backend = FAB_BACKEND_CPU;
    if (argc > 1 && strcmp(argv[1], "cuda") == 0) {
        cfg.backend = FAB_BACKEND_CUDA;
        CHECK(fab_mpi_local_rank(MPI_COMM_WORLD, &cfg.device)); /* all GPUs visible: the node-local rank */
    }
    int steps = argc > 2 ? atoi(argv[2]) : 200;
    const float lr = 0.1f;
    if (BATCH % nranks != 0) {
        if (rank == 0)
            fprintf(stderr, "ddp_train: %d ranks do not divide the batch of %d\n", nranks, BATCH);
        MPI_Finalize();
        return 2;
    }
    fab_context *ctx = NULL;
    fab_status cs = fab_context_create(&cfg, &ctx);
    if (cs != FAB_OK && cfg.device > 0) {
        cfg.device = 0; /* the rank sees only its own GPU (srun --gpus-per-task=1): device 0 */
        cs = fab_context_create(&cfg, &ctx);
    }
    CHECK(cs);
    fab_comm *comm;
    CHECK(fab_comm_create_mpi(ctx, MPI_COMM_WORLD, NULL, &comm));
    if (rank == 0)
        printf("ddp_train: %d ranks on %s\n", nranks, fab_context_device_name(ctx));

    static float x[BATCH * MLP_IN], t[BATCH * MLP_OUT];
    mlp_data(BATCH, x, t);
    const int64_t rows = BATCH / nranks;
    mlp m;
    mlp_init(&m, ctx, rows, x + rank * rows * MLP_IN, t + rank * rows * MLP_OUT);

    /* The loss is normalised by the whole batch (norm below), so the ranks'
     * gradients add up to the whole batch's: sum them, do not average. */
    fab_grad_sync_config gc = {0};
    gc.sum = 1;
    fab_grad_sync *gs;
    CHECK(fab_grad_sync_create(comm, &gc, &gs));
    for (int i = 0; i < MLP_NGRADS; i++) /* in the order backward produces them */
        CHECK(fab_grad_sync_register(gs, &mlp_grad(&m, i)->t, NULL));

    fab_context_config rc = {0};
    rc.backend = FAB_BACKEND_CPU;
    fab_context *rctx;
    CHECK(fab_context_create(&rc, &rctx));
    mlp ref; /* the whole batch on this process alone */
    mlp_init(&ref, rctx, BATCH, x, t);

    const float norm = BATCH * MLP_OUT;
    float first = 0, loss = 0;
    for (int step = 0; step < steps; step++) {
        CHECK(fab_grad_sync_begin(gs, 1));
        float mine = mlp_forward(&m, norm);
        mlp_backward(&m, mark_ready, gs);
        CHECK(fab_grad_sync_wait(gs));
        mlp_sgd(&m, lr);
        MPI_Allreduce(&mine, &loss, 1, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); /* for the log */
        if (step == 0)
            first = loss;
        if (rank == 0 && (step % 50 == 0 || step == steps - 1))
            printf("step %4d  loss %.6f\n", step, loss);

        (void)mlp_forward(&ref, norm);
        mlp_backward(&ref, NULL, NULL);
        mlp_sgd(&ref, lr);
    }
    float differ = weights_differ(&m, &ref), worst = 0;
    MPI_Allreduce(&differ, &worst, 1, MPI_FLOAT, MPI_MAX, MPI_COMM_WORLD);
    const float tol = cfg.backend == FAB_BACKEND_CUDA ? 1e-3f : 1e-4f;
    int ok = loss < 0.25f * first && worst <= tol;
    if (rank == 0)
        printf("loss %.6f -> %.6f; weights vs one process on the whole batch: %.2g (max |diff| / max |w|, limit %g)"
               ": %s\n",
               first, loss, worst, tol, ok ? "ok" : "FAILED");

    fab_grad_sync_destroy(gs);
    mlp_free(&m);
    mlp_free(&ref);
    CHECK(fab_comm_destroy(comm));
    fab_context_destroy(ctx);
    fab_context_destroy(rctx);
    MPI_Finalize();
    return ok ? 0 : 1;
}
