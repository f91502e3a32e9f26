/*
 * gelu_cpu.c: GELU forward/backward on the host. One flat OpenMP loop over the
 * elements; each element is loaded as f32, computed in f32, stored rounded (RNE).
 */
#include "gelu.h"

#include "../common/cpu_dtype.h"
#include "gelu_math.h"

fab_status fab__gelu_cpu(fab_context *ctx, const fab__gelu_args *a)
{
    const int approx = a->approximate == FAB_GELU_TANH;
    const int64_t n = a->n;
    /* below ~32K elements a parallel region costs more than it saves */
    const int threads = n < 32768 ? 1 : ctx->num_threads;
    if (a->dy) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float x = fab__load_f(a->x, a->dtype, i);
            float dy = fab__load_f(a->dy, a->dtype, i);
            fab__store_f(a->out, a->dtype, i, dy * fab__gelu_grad(x, approx));
        }
    } else {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < n; i++)
            fab__store_f(a->out, a->dtype, i, fab__gelu(fab__load_f(a->x, a->dtype, i), approx));
    }
    return FAB_OK;
}
