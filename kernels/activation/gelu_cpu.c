/*
 * gelu_cpu.c: GELU forward/backward on the host.
 *
 * Idea: GELU on a CPU is bound by its transcendental functions more than by
 * memory, so the loop is written to vectorise: the branch-free exp and erfc of
 * gelu_cpu_math.h (its numerics), which the compiler turns into AVX-512 or
 * AVX2/FMA code (function clones chosen at run time by the CPU's features; a
 * portable clone otherwise). f32 tensors are read and written in place, so the
 * loads of the next elements overlap the arithmetic on these. f16/bf16 go
 * through an f32 buffer a block at a time, converted on the way in and out by
 * the row helpers of cpu_dtype.h: with the conversions inside the GELU loop, GCC
 * vectorised bf16 16 lanes at a time and spilled, and was slower. OpenMP splits
 * the blocks across the context's threads.
 */
#include "gelu.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../common/cpu_dtype.h"
#include "gelu_cpu_math.h"

#define BLOCK 512

/* out[i] = gelu(x[i]), or dy[i] * gelu'(x[i]) when dy is given. out may be x or
 * dy itself (in place): no restrict, and each iteration reads its element
 * before it writes it, which omp simd's vectors keep. */
static inline FAB__GELU_INLINE void gelu_span(const float *x, const float *dy, float *out, int m, int approximate)
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

/* Elements off .. off+m: f32 in place, f16/bf16 through f32 buffers (see the top).
 * Staging f32 as well cost 1.7-2.3x on 64 MiB tensors (fab-bench --suite gelu,
 * 2 threads of a Zen 3 EPYC): memory and arithmetic then ran one after the other. */
FAB__VECTOR_CLONES
static void gelu_block(const fab__gelu_args *a, int64_t off, int m, int approximate)
{
    if (a->dtype == FAB_DTYPE_F32) {
        gelu_span((const float *)a->x + off, a->dy ? (const float *)a->dy + off : NULL, (float *)a->out + off, m,
                  approximate);
        return;
    }
    const int64_t es = (int64_t)fab_dtype_size(a->dtype);
    float x[BLOCK], dy[BLOCK];
    fab__load_row_f32((const char *)a->x + off * es, a->dtype, m, x);
    if (a->dy)
        fab__load_row_f32((const char *)a->dy + off * es, a->dtype, m, dy);
    gelu_span(x, a->dy ? dy : NULL, x, m, approximate);
    fab__store_row_f32((char *)a->out + off * es, a->dtype, m, x);
}

fab_status fab__gelu_cpu(fab_context *ctx, const fab__gelu_args *a)
{
    const int approx = a->approximate == FAB_GELU_TANH;
    const int64_t nblocks = (a->n + BLOCK - 1) / BLOCK;
    /* below ~32K elements a parallel region costs more than it saves */
    const int threads = a->n < 32768 ? 1 : ctx->num_threads;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t off = b * BLOCK;
        gelu_block(a, off, (int)(a->n - off < BLOCK ? a->n - off : BLOCK), approx);
    }
    return FAB_OK;
}
