/*
 * gelu_cpu_math.h: GELU and its derivative on one float, the CPU's way: branch-free
 * exp and erfc that a compiler vectorises, shared by the GELU op (gelu_cpu.c) and
 * the CPU matmul's fused epilogue (matmul_cpu.c), so that on the CPU a fused
 * GELU gives the same bits as fab_gelu_forward / _backward on the pre-activation
 * (but for a NaN's sign: x86 keeps the first operand's NaN, and vectorised and
 * remainder loops may order an operand pair differently).
 *
 * Numerics, in f32:
 *  - exp: Cody-Waite reduction by ln2 and a degree-6 polynomial on
 *    [-ln2/2, ln2/2]: within 2 ulp; 0 and infinity past the f32 range.
 *  - erfc(z), z >= 0: erfc(z) = t exp(-z^2 + P(t)), t = 1/(1 + z/2), with the
 *    Chebyshev-fitted P of Numerical Recipes' erfcc (fractional error < 1.2e-7);
 *    z^2 is split into hi + lo with an FMA so exp(-z^2) keeps full relative
 *    accuracy out to z ~ 9. erfc(-z) = 2 - erfc(z).
 *  - the forms of gelu_math.h (erfc and sigmoid) that do not cancel in the left
 *    tail. Results match gelu_math.h (which the CUDA kernels use) within ~1e-5
 *    relative, 2e-7 absolute.
 * The helpers must inline into their callers' loops, or those loops call them
 * per element and do not vectorise; GCC's size heuristics stop inlining them
 * otherwise.
 */
#ifndef FAB_GELU_CPU_MATH_H
#define FAB_GELU_CPU_MATH_H

#include <math.h>
#include <stdint.h>

#include "../common/cpu_dtype.h"

#define FAB__GELU_INLINE __attribute__((always_inline))

static inline FAB__GELU_INLINE float fab__exp_f32(float x)
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
static inline FAB__GELU_INLINE float fab__erfc_nonneg_f32(float z)
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
    return t * fab__exp_f32(p - z2_hi) * (1.0f - z2_lo);
}

/* Phi(x) = erfc(-x/sqrt2)/2, the standard normal CDF */
static inline FAB__GELU_INLINE float fab__normal_cdf_f32(float x)
{
    float z = fabsf(x) * 0.70710678118654752f;
    float half_erfc = 0.5f * fab__erfc_nonneg_f32(z);
    return x < 0 ? half_erfc : 1.0f - half_erfc;
}

static inline FAB__GELU_INLINE float fab__gelu_f32(float x, int approximate)
{
    if (approximate) {
        float u = 0.79788456080286536f * fmaf(0.044715f * x, x * x, x);
        return x / (1.0f + fab__exp_f32(-2.0f * u));
    }
    return x * fab__normal_cdf_f32(x);
}

static inline FAB__GELU_INLINE float fab__gelu_grad_f32(float x, int approximate)
{
    if (approximate) {
        /* past |x| = 20 the derivative is 0 or 1 in f32; clamping keeps x^2 and
         * u finite, so s (1 - s) du never becomes 0 * inf */
        x = x < -20.0f ? -20.0f : (x > 20.0f ? 20.0f : x);
        float x2 = x * x;
        float u = 0.79788456080286536f * fmaf(0.044715f * x, x2, x);
        float s = 1.0f / (1.0f + fab__exp_f32(-2.0f * u));
        float one_minus_s = 1.0f / (1.0f + fab__exp_f32(2.0f * u));
        float du = 0.79788456080286536f * fmaf(3.0f * 0.044715f, x2, 1.0f);
        return s + 2.0f * x * s * one_minus_s * du;
    }
    return fab__normal_cdf_f32(x) + x * 0.39894228040143268f * fab__exp_f32(-0.5f * x * x);
}

#endif
