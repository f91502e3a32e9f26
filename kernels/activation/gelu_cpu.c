/*
 * gelu_cpu.c: GELU forward/backward on the host.
 *
 * Idea: GELU on a CPU is bound by its transcendental functions, not by memory,
 * so the loop is written to vectorise: elements go through a small f32 block
 * buffer (converted from f16/bf16 on the way in and out), and the block is
 * computed with branch-free exp and erfc that the compiler turns into AVX2/FMA
 * code (function clones chosen at run time by the CPU's features; a portable
 * clone otherwise). OpenMP splits the blocks across the context's threads.
 *
 * Numerics, in f32:
 *  - exp: Cody-Waite reduction by ln2 and a degree-6 polynomial on
 *    [-ln2/2, ln2/2]: within 2 ulp; 0 and infinity past the f32 range.
 *  - erfc(z), z >= 0: erfc(z) = t exp(-z^2 + P(t)), t = 1/(1 + z/2), with the
 *    Chebyshev-fitted P of Numerical Recipes' erfcc (fractional error < 1.2e-7);
 *    z^2 is split into hi + lo with an FMA so exp(-z^2) keeps full relative
 *    accuracy out to z ~ 9. erfc(-z) = 2 - erfc(z).
 *  - the forms of gelu_math.h (erfc and sigmoid) that do not cancel in the left
 *    tail. Results match gelu_math.h (which the CUDA kernel uses) within ~1e-6
 *    relative.
 */
#include "gelu.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../common/cpu_dtype.h"


/* The math helpers must inline into the block loops, or those loops call them per
 * element and do not vectorise; GCC's size heuristics stop inlining them otherwise. */
#define FAB__INLINE __attribute__((always_inline))

#define BLOCK 512

static inline FAB__INLINE float exp_f32(float x)
{
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
    float xin = x;
    x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    float k = (x * log2e + 12582912.0f) - 12582912.0f; /* round to nearest integer */
    float r = fmaf(k, -ln2_hi, x);
    r = fmaf(k, -ln2_lo, r);
    float p = 1.0f / 720.0f;
    p = fmaf(p, r, 1.0f / 120.0f);
    p = fmaf(p, r, 1.0f / 24.0f);
    p = fmaf(p, r, 1.0f / 6.0f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    fab__f32_bits scale;
    scale.u = (uint32_t)((int32_t)k + 127) << 23;
    float r_exp = p * scale.f;
    /* past the clamps: underflow to 0, overflow to infinity, as expf does */
    r_exp = xin < -87.3f ? 0.0f : r_exp;
    r_exp = xin > 88.7f ? INFINITY : r_exp;
    return r_exp;
}

/* erfc(z) for z >= 0 (see the header comment) */
static inline FAB__INLINE float erfc_nonneg_f32(float z)
{
    z = z > 10.0f ? 10.0f : z; /* erfc(10) < 2^-149 already; keeps z*z (and inf) finite */
    float t = 1.0f / fmaf(0.5f, z, 1.0f);
    float p = 0.17087277f;
    p = fmaf(p, t, -0.82215223f);
    p = fmaf(p, t, 1.48851587f);
    p = fmaf(p, t, -1.13520398f);
    p = fmaf(p, t, 0.27886807f);
    p = fmaf(p, t, -0.18628806f);
    p = fmaf(p, t, 0.09678418f);
    p = fmaf(p, t, 0.37409196f);
    p = fmaf(p, t, 1.00002368f);
    p = fmaf(p, t, -1.26551223f);
    float z2_hi = z * z;
    float z2_lo = fmaf(z, z, -z2_hi);
    return t * exp_f32(p - z2_hi) * (1.0f - z2_lo);
}

/* Phi(x) = erfc(-x/sqrt2)/2, the standard normal CDF */
static inline FAB__INLINE float normal_cdf_f32(float x)
{
    float z = fabsf(x) * 0.70710678118654752f;
    float half_erfc = 0.5f * erfc_nonneg_f32(z);
    return x < 0 ? half_erfc : 1.0f - half_erfc;
}

static inline FAB__INLINE float gelu_f32(float x, int approximate)
{
    if (approximate) {
        float u = 0.79788456080286536f * fmaf(0.044715f * x, x * x, x);
        return x / (1.0f + exp_f32(-2.0f * u));
    }
    return x * normal_cdf_f32(x);
}

static inline FAB__INLINE float gelu_grad_f32(float x, int approximate)
{
    if (approximate) {
        /* past |x| = 20 the derivative is 0 or 1 in f32; clamping keeps x^2 and
         * u finite, so s (1 - s) du never becomes 0 * inf */
        x = x < -20.0f ? -20.0f : (x > 20.0f ? 20.0f : x);
        float x2 = x * x;
        float u = 0.79788456080286536f * fmaf(0.044715f * x, x2, x);
        float s = 1.0f / (1.0f + exp_f32(-2.0f * u));
        float one_minus_s = 1.0f / (1.0f + exp_f32(2.0f * u));
        float du = 0.79788456080286536f * fmaf(3.0f * 0.044715f, x2, 1.0f);
        return s + 2.0f * x * s * one_minus_s * du;
    }
    return normal_cdf_f32(x) + x * 0.39894228040143268f * exp_f32(-0.5f * x * x);
}

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
                out[i] = dy[i] * gelu_grad_f32(x[i], 1);
        } else {
#pragma omp simd
            for (int i = 0; i < m; i++)
                out[i] = dy[i] * gelu_grad_f32(x[i], 0);
        }
    } else if (approximate) {
#pragma omp simd
        for (int i = 0; i < m; i++)
            out[i] = gelu_f32(x[i], 1);
    } else {
#pragma omp simd
        for (int i = 0; i < m; i++)
            out[i] = gelu_f32(x[i], 0);
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
