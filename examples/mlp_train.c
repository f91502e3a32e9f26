/*
 * mlp_train.c: train a two-layer perceptron with fabriek, start to finish.
 *
 *   h = gelu(x W1ᵀ + b1)        one fab_matmul: bias and GELU fused, pre-activation kept
 *   y = h W2ᵀ + b2              one fab_matmul
 *   loss = mean((y - t)^2)      on the host (fabriek has no loss op yet)
 *   dW2, db2 = dyᵀ h, Σ dy      one fab_matmul (bias gradient from the same call)
 *   dh_pre = (dy W2) ⊙ gelu'    one fab_matmul (the GELU backward fused)
 *   dW1, db1 = dh_preᵀ x, Σ     one fab_matmul
 *   SGD step                    on the host (fabriek has no optimizer op yet)
 *
 * The target is a fixed random smooth function of x, so the loss must fall.
 * Usage: mlp_train [cpu|cuda|auto] [steps]. Exits 0 when the final loss is below a
 * quarter of the first (the example doubles as an end-to-end test).
 */
#include <fabriek.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { BATCH = 64, IN = 32, HIDDEN = 64, OUT = 8 };

#define CHECK(call)                                                                    \
    do {                                                                               \
        fab_status s_ = (call);                                                        \
        if (s_ != FAB_OK) {                                                            \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, fab_status_name(s_), \
                    fab_last_error());                                                 \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

/* A device buffer of n floats and its 2-d (or 1-d when rows == 0) tensor. */
typedef struct buffer {
    void *dev;
    float *host;
    int64_t n;
    fab_tensor t;
} buffer;

static buffer make(fab_context *ctx, int64_t rows, int64_t cols)
{
    buffer b;
    b.n = (rows ? rows : 1) * cols;
    b.host = calloc((size_t)b.n, sizeof(float));
    CHECK(fab_alloc(ctx, (size_t)b.n * sizeof(float), &b.dev));
    int64_t shape[2] = {rows, cols};
    if (rows)
        CHECK(fab_tensor_make(b.dev, FAB_DTYPE_F32, 2, shape, &b.t));
    else
        CHECK(fab_tensor_make(b.dev, FAB_DTYPE_F32, 1, &cols, &b.t));
    return b;
}

static void upload(fab_context *ctx, buffer *b) { CHECK(fab_copy(ctx, b->dev, b->host, (size_t)b->n * 4)); }

static void download(fab_context *ctx, buffer *b)
{
    CHECK(fab_copy(ctx, b->host, b->dev, (size_t)b->n * 4));
    CHECK(fab_synchronize(ctx));
}

static float uniform(unsigned *state)
{
    *state = *state * 1664525u + 1013904223u;
    return (float)(*state >> 8) / 16777216.0f * 2.0f - 1.0f;
}

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

    buffer x = make(ctx, BATCH, IN), t = make(ctx, BATCH, OUT);
    buffer w1 = make(ctx, HIDDEN, IN), b1 = make(ctx, 0, HIDDEN), w2 = make(ctx, OUT, HIDDEN), b2 = make(ctx, 0, OUT);
    buffer hpre = make(ctx, BATCH, HIDDEN), h = make(ctx, BATCH, HIDDEN), y = make(ctx, BATCH, OUT);
    buffer dy = make(ctx, BATCH, OUT), dhpre = make(ctx, BATCH, HIDDEN);
    buffer dw1 = make(ctx, HIDDEN, IN), db1 = make(ctx, 0, HIDDEN), dw2 = make(ctx, OUT, HIDDEN), db2 = make(ctx, 0, OUT);

    /* data: x uniform, t = sin(x R) for a fixed random R; weights ~ U(-1,1)/sqrt(fan_in) */
    unsigned seed = 12345;
    float r[IN * OUT];
    for (int i = 0; i < IN * OUT; i++)
        r[i] = uniform(&seed);
    for (int i = 0; i < BATCH * IN; i++)
        x.host[i] = uniform(&seed);
    for (int i = 0; i < BATCH; i++)
        for (int o = 0; o < OUT; o++) {
            float s = 0;
            for (int k = 0; k < IN; k++)
                s += x.host[i * IN + k] * r[k * OUT + o];
            t.host[i * OUT + o] = sinf(0.5f * s);
        }
    for (int i = 0; i < HIDDEN * IN; i++)
        w1.host[i] = uniform(&seed) / sqrtf(IN);
    for (int i = 0; i < OUT * HIDDEN; i++)
        w2.host[i] = uniform(&seed) / sqrtf(HIDDEN);
    upload(ctx, &x);
    upload(ctx, &w1);
    upload(ctx, &b1);
    upload(ctx, &w2);
    upload(ctx, &b2);

    const float lr = 0.1f;
    float first_loss = 0, loss = 0;
    for (int step = 0; step < steps; step++) {
        /* forward */
        fab_matmul_params l1 = {0};
        l1.a = x.t;
        l1.b = w1.t;
        l1.trans_b = FAB_OP_T;
        l1.c = h.t;
        l1.bias = b1.t;
        l1.activation = FAB_MATMUL_ACT_GELU_TANH;
        l1.pre_act = hpre.t;
        CHECK(fab_matmul(ctx, &l1));
        fab_matmul_params l2 = {0};
        l2.a = h.t;
        l2.b = w2.t;
        l2.trans_b = FAB_OP_T;
        l2.c = y.t;
        l2.bias = b2.t;
        CHECK(fab_matmul(ctx, &l2));

        /* loss and its gradient, on the host */
        download(ctx, &y);
        loss = 0;
        for (int i = 0; i < BATCH * OUT; i++) {
            float d = y.host[i] - t.host[i];
            loss += d * d / (BATCH * OUT);
            dy.host[i] = 2.0f * d / (BATCH * OUT);
        }
        if (step == 0)
            first_loss = loss;
        if (step % 50 == 0 || step == steps - 1)
            printf("step %4d  loss %.6f\n", step, loss);
        upload(ctx, &dy);

        /* backward */
        fab_matmul_params g2 = {0}; /* dW2 = dyᵀ h, db2 = Σ_batch dy */
        g2.a = dy.t;
        g2.trans_a = FAB_OP_T;
        g2.b = h.t;
        g2.c = dw2.t;
        g2.dbias = db2.t;
        g2.dbias_from = FAB_MATMUL_DBIAS_FROM_A;
        CHECK(fab_matmul(ctx, &g2));
        fab_matmul_params gh = {0}; /* dh_pre = (dy W2) ⊙ gelu'(h_pre) */
        gh.a = dy.t;
        gh.b = w2.t;
        gh.c = dhpre.t;
        gh.activation = FAB_MATMUL_ACT_GELU_TANH;
        gh.activation_backward = 1;
        gh.pre_act = hpre.t;
        CHECK(fab_matmul(ctx, &gh));
        fab_matmul_params g1 = {0}; /* dW1 = dh_preᵀ x, db1 = Σ_batch dh_pre */
        g1.a = dhpre.t;
        g1.trans_a = FAB_OP_T;
        g1.b = x.t;
        g1.c = dw1.t;
        g1.dbias = db1.t;
        g1.dbias_from = FAB_MATMUL_DBIAS_FROM_A;
        CHECK(fab_matmul(ctx, &g1));

        /* SGD, on the host */
        buffer *params[4] = {&w1, &b1, &w2, &b2}, *grads[4] = {&dw1, &db1, &dw2, &db2};
        for (int p = 0; p < 4; p++) {
            download(ctx, grads[p]);
            for (int64_t i = 0; i < params[p]->n; i++)
                params[p]->host[i] -= lr * grads[p]->host[i];
            upload(ctx, params[p]);
        }
    }
    CHECK(fab_synchronize(ctx));
    printf("loss %.6f -> %.6f\n", first_loss, loss);

    buffer *all[] = {&x, &t, &w1, &b1, &w2, &b2, &hpre, &h, &y, &dy, &dhpre, &dw1, &db1, &dw2, &db2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        CHECK(fab_free(ctx, all[i]->dev));
        free(all[i]->host);
    }
    fab_context_destroy(ctx);
    return loss < 0.25f * first_loss ? 0 : 1;
}
