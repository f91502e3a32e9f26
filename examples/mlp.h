/*
 * mlp.h: the two-layer perceptron of the examples (mlp_train.c on one process,
 * ddp_train.c data-parallel over MPI), written with fab_matmul only:
 *
 *   h = gelu(x W1ᵀ + b1)        one fab_matmul: bias and GELU fused, pre-activation kept
 *   y = h W2ᵀ + b2              one fab_matmul
 *   loss = Σ (y - t)^2 / norm   on the host (fabriek has no loss op yet)
 *   dW2, db2 = dyᵀ h, Σ dy      one fab_matmul (bias gradient from the same call)
 *   dh_pre = (dy W2) ⊙ gelu'    one fab_matmul (the GELU backward fused)
 *   dW1, db1 = dh_preᵀ x, Σ     one fab_matmul
 *   SGD step                    on the host (fabriek has no optimizer op yet)
 *
 * The data: x uniform in [-1, 1), the target t = sin(x R / 2) for a fixed random
 * R, so the loss must fall. Header-only, for the examples.
 */
#ifndef FAB_EXAMPLE_MLP_H
#define FAB_EXAMPLE_MLP_H

#include <fabriek.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MLP_IN = 32, MLP_HIDDEN = 64, MLP_OUT = 8 };

#define CHECK(call)                                                                    \
    do {                                                                               \
        fab_status s_ = (call);                                                        \
        if (s_ != FAB_OK) {                                                            \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, fab_status_name(s_), \
                    fab_last_error());                                                 \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

/* A buffer of n floats in the context's memory, a host copy, and its 2-d (or 1-d
 * when rows == 0) tensor. */
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

/* The whole data set: `rows` examples, the same for every process (seeded). */
static void mlp_data(int64_t rows, float *x, float *t)
{
    unsigned seed = 12345;
    float r[MLP_IN * MLP_OUT];
    for (int i = 0; i < MLP_IN * MLP_OUT; i++)
        r[i] = uniform(&seed);
    for (int64_t i = 0; i < rows * MLP_IN; i++)
        x[i] = uniform(&seed);
    for (int64_t i = 0; i < rows; i++)
        for (int o = 0; o < MLP_OUT; o++) {
            float s = 0;
            for (int k = 0; k < MLP_IN; k++)
                s += x[i * MLP_IN + k] * r[k * MLP_OUT + o];
            t[i * MLP_OUT + o] = sinf(0.5f * s);
        }
}

typedef struct mlp {
    fab_context *ctx;
    int64_t batch;                 /* rows this process trains on */
    buffer x, t;                   /* its rows of the data */
    buffer w1, b1, w2, b2;         /* parameters */
    buffer hpre, h, y, dy, dhpre;  /* activations and their gradients */
    buffer dw1, db1, dw2, db2;     /* parameter gradients */
} mlp;

/* A model on ctx training on `batch` rows (x [batch, IN], t [batch, OUT]);
 * weights ~ U(-1, 1)/sqrt(fan_in) from a fixed seed, biases 0. */
static void mlp_init(mlp *m, fab_context *ctx, int64_t batch, const float *x, const float *t)
{
    m->ctx = ctx;
    m->batch = batch;
    m->x = make(ctx, batch, MLP_IN), m->t = make(ctx, batch, MLP_OUT);
    m->w1 = make(ctx, MLP_HIDDEN, MLP_IN), m->b1 = make(ctx, 0, MLP_HIDDEN);
    m->w2 = make(ctx, MLP_OUT, MLP_HIDDEN), m->b2 = make(ctx, 0, MLP_OUT);
    m->hpre = make(ctx, batch, MLP_HIDDEN), m->h = make(ctx, batch, MLP_HIDDEN), m->y = make(ctx, batch, MLP_OUT);
    m->dy = make(ctx, batch, MLP_OUT), m->dhpre = make(ctx, batch, MLP_HIDDEN);
    m->dw1 = make(ctx, MLP_HIDDEN, MLP_IN), m->db1 = make(ctx, 0, MLP_HIDDEN);
    m->dw2 = make(ctx, MLP_OUT, MLP_HIDDEN), m->db2 = make(ctx, 0, MLP_OUT);
    memcpy(m->x.host, x, sizeof(float) * (size_t)m->x.n);
    memcpy(m->t.host, t, sizeof(float) * (size_t)m->t.n);
    unsigned seed = 777;
    for (int i = 0; i < MLP_HIDDEN * MLP_IN; i++)
        m->w1.host[i] = uniform(&seed) / sqrtf(MLP_IN);
    for (int i = 0; i < MLP_OUT * MLP_HIDDEN; i++)
        m->w2.host[i] = uniform(&seed) / sqrtf(MLP_HIDDEN);
    buffer *up[] = {&m->x, &m->w1, &m->b1, &m->w2, &m->b2};
    for (size_t i = 0; i < sizeof up / sizeof up[0]; i++)
        upload(ctx, up[i]);
}

/* Forward pass and loss Σ (y - t)^2 / norm over this process's rows; leaves
 * dy = d loss / dy on the device for the backward pass. */
static float mlp_forward(mlp *m, float norm)
{
    fab_matmul_params l1 = {0};
    l1.a = m->x.t;
    l1.b = m->w1.t;
    l1.trans_b = FAB_OP_T;
    l1.c = m->h.t;
    l1.bias = m->b1.t;
    l1.activation = FAB_MATMUL_ACT_GELU_TANH;
    l1.pre_act = m->hpre.t;
    CHECK(fab_matmul(m->ctx, &l1));
    fab_matmul_params l2 = {0};
    l2.a = m->h.t;
    l2.b = m->w2.t;
    l2.trans_b = FAB_OP_T;
    l2.c = m->y.t;
    l2.bias = m->b2.t;
    CHECK(fab_matmul(m->ctx, &l2));

    download(m->ctx, &m->y);
    float loss = 0;
    for (int64_t i = 0; i < m->y.n; i++) {
        float d = m->y.host[i] - m->t.host[i];
        loss += d * d / norm;
        m->dy.host[i] = 2.0f * d / norm;
    }
    upload(m->ctx, &m->dy);
    return loss;
}

/* The gradients in the order backward produces them: dW2, db2, dW1, db1. */
enum { MLP_NGRADS = 4 };
static buffer *mlp_grad(mlp *m, int i)
{
    buffer *g[MLP_NGRADS] = {&m->dw2, &m->db2, &m->dw1, &m->db1};
    return g[i];
}

/* Backward pass; ready(arg, i) (if given) as soon as the call writing gradient i
 * of mlp_grad's order has been issued. */
static void mlp_backward(mlp *m, void (*ready)(void *, int), void *arg)
{
    fab_matmul_params g2 = {0}; /* dW2 = dyᵀ h, db2 = Σ_batch dy */
    g2.a = m->dy.t;
    g2.trans_a = FAB_OP_T;
    g2.b = m->h.t;
    g2.c = m->dw2.t;
    g2.dbias = m->db2.t;
    g2.dbias_from = FAB_MATMUL_DBIAS_FROM_A;
    CHECK(fab_matmul(m->ctx, &g2));
    if (ready) {
        ready(arg, 0);
        ready(arg, 1);
    }
    fab_matmul_params gh = {0}; /* dh_pre = (dy W2) ⊙ gelu'(h_pre) */
    gh.a = m->dy.t;
    gh.b = m->w2.t;
    gh.c = m->dhpre.t;
    gh.activation = FAB_MATMUL_ACT_GELU_TANH;
    gh.activation_backward = 1;
    gh.pre_act = m->hpre.t;
    CHECK(fab_matmul(m->ctx, &gh));
    fab_matmul_params g1 = {0}; /* dW1 = dh_preᵀ x, db1 = Σ_batch dh_pre */
    g1.a = m->dhpre.t;
    g1.trans_a = FAB_OP_T;
    g1.b = m->x.t;
    g1.c = m->dw1.t;
    g1.dbias = m->db1.t;
    g1.dbias_from = FAB_MATMUL_DBIAS_FROM_A;
    CHECK(fab_matmul(m->ctx, &g1));
    if (ready) {
        ready(arg, 2);
        ready(arg, 3);
    }
}

/* SGD on the host: p -= lr * g for every parameter. */
static void mlp_sgd(mlp *m, float lr)
{
    buffer *params[4] = {&m->w2, &m->b2, &m->w1, &m->b1};
    for (int p = 0; p < MLP_NGRADS; p++) {
        buffer *g = mlp_grad(m, p);
        download(m->ctx, g);
        for (int64_t i = 0; i < params[p]->n; i++)
            params[p]->host[i] -= lr * g->host[i];
        upload(m->ctx, params[p]);
    }
}

static void mlp_free(mlp *m)
{
    buffer *all[] = {&m->x,   &m->t,  &m->w1, &m->b1,    &m->w2,  &m->b2,  &m->hpre, &m->h,
                     &m->y,   &m->dy, &m->dhpre, &m->dw1, &m->db1, &m->dw2, &m->db2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        CHECK(fab_free(m->ctx, all[i]->dev));
        free(all[i]->host);
    }
}

#endif
