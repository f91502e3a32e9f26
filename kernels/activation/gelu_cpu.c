/*
 * gelu_cpu.c: GELU forward/backward on the host.
 *
 * Idea: GELU on a CPU is bound by its transcendental functions, not by memory,
 * so the loop is written to vectorise: elements go through a small f32 block
 * buffer (converted from f16/bf16 on the way in and out), and the block is
 * computed with the branch-free exp and erfc of gelu_cpu_math.h (its numerics),
 * which the compiler turns into AVX-512 or AVX2/FMA code (function clones chosen
 * at run time by the CPU's features; a portable clone otherwise). OpenMP splits
 * the blocks across the context's threads.
 */
#include "gelu.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../common/cpu_dtype.h"
#include "gelu_cpu_math.h"

#define BLOCK 512

FAB__VECTOR_CLONES
static void load_block(const void *p, fab_dtype dtype, int64_t off, int m, float *restrict out)
{
    fab__load_row_f32((const char *)p + off * (int64_t)fab_dtype_size(dtype), dtype, m, out);
}

FAB__VECTOR_CLONES
static void store_block(void *p, fab_dtype dtype, int64_t off, int m, const float *restrict in)
{
    fab__store_row_f32((char *)p + off * (int64_t)fab_dtype_size(dtype), dtype, m, in);
}

/* out[i] = gelu(x[i]), or dy[i] * gelu'(x[i]) when dy is given */
FAB__VECTOR_CLONES
static void compute_block(const float *restrict x, const float *restrict dy, float *restrict out, int m,
                          int approximate)
{
    if (dy) {
        if (approximate) {
#pragma omp simd
            for (int i = 0; i < m; i++)
                out[i] = dy[i] * fab__gelu_grad_f32(x[i], 1);
        } else {
#pragma omp simd
            for (int i = 0; i < m; i++)
                out[i] = dy[i] * fab__gelu_grad_f32(x[i], 0);
        }
    } else if (approximate) {
#pragma omp simd
        for (int i = 0; i < m; i++)
            out[i] = fab__gelu_f32(x[i], 1);
    } else {
#pragma omp simd
        for (int i = 0; i < m; i++)
            out[i] = fab__gelu_f32(x[i], 0);
    }
}

fab_status fab__gelu_cpu(fab_context *ctx, const fab__gelu_args *a)
{
    const int approx = a->approximate == FAB_GELU_TANH;
    const int64_t nblocks = (a->n + BLOCK - 1) / BLOCK;
    /* below ~32K elements a parallel region costs more than it saves */
    const int threads = a->n < 32768 ? 1 : ctx->num_threads;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < nblocks; b++) {
        float x[BLOCK], dy[BLOCK], out[BLOCK];
        int64_t off = b * BLOCK;
        int m = (int)(a->n - off < BLOCK ? a->n - off : BLOCK);
        load_block(a->x, a->dtype, off, m, x);
        if (a->dy)
            load_block(a->dy, a->dtype, off, m, dy);
        compute_block(x, a->dy ? dy : NULL, out, m, approx);
        store_block(a->out, a->dtype, off, m, out);
    }
    return FAB_OK;
}
