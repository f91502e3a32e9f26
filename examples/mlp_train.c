/*
 * mlp_train.c: train a two-layer perceptron with fabriek, start to finish (the
 * model, five fab_matmul calls per step, is in mlp.h).
 *
 * Usage: mlp_train [cpu|cuda|auto] [steps]. Exits 0 when the final loss is below a
 * quarter of the first (the example doubles as an end-to-end test).
 */
#include "mlp.h"

enum { BATCH = 64 };

int main(int argc, char **argv)
{
    fab_context_config cfg = {0};
    if (argc > 1 && strcmp(argv[1], "cpu") == 0)
        cfg.backend = FAB_BACKEND_CPU;
    else if (argc > 1 && strcmp(argv[1], "cuda") == 0)
        cfg.backend = FAB_BACKEND_CUDA;
    int steps = argc > 2 ? atoi(argv[2]) : 300;
    fab_context *ctx;
    CHECK(fab_context_create(&cfg, &ctx));
    printf("mlp_train on %s\n", fab_context_device_name(ctx));

    static float x[BATCH * MLP_IN], t[BATCH * MLP_OUT];
    mlp_data(BATCH, x, t);
    mlp m;
    mlp_init(&m, ctx, BATCH, x, t);
    float first_loss = 0, loss = 0;
    for (int step = 0; step < steps; step++) {
        loss = mlp_forward(&m, BATCH * MLP_OUT);
        if (step == 0)
            first_loss = loss;
        if (step % 50 == 0 || step == steps - 1)
            printf("step %4d  loss %.6f\n", step, loss);
        mlp_backward(&m, NULL, NULL);
        mlp_sgd(&m, 0.1f);
    }
    CHECK(fab_synchronize(ctx));
    printf("loss %.6f -> %.6f\n", first_loss, loss);
    mlp_free(&m);
    fab_context_destroy(ctx);
    return loss < 0.25f * first_loss ? 0 : 1;
}
