/*
 * gelu_cpu_math.h: GELU and its derivative on one float, the CPU's way: branch-free
 * exp and erfc that a compiler vectorises, shared by the GELU op (gelu_cpu.c) and
 * the CPU matmul's fused epilogue (matmul_cpu.c), so that on the CPU a fused
 * GELU gives the same bits as fab_gelu_forward / _backward on the pre-activation
 * (but for a NaN's sign: x86 keeps the first operand's NaN, and vectorised and
 * remainder loops may order an operand pair differently).
 *
 * Numerics, in f32:
 *  - exp, for arguments <= 88.7: Cody-Waite reduction by ln2 and a degree-6
 *    polynomial on [-ln2/2, ln2/2]: within 3 ulp (2.74 at most over every f32
 *    in [-87.3, 1], against the float64 exp); subnormal results rounded
 *    gradually, exactly 0 below -87.7. Every argument is <= 1: the sigmoid
 *    (tanh) forms take exp(-2|u|) and pick the tail's form by u's sign. One
 *    clamp, no fix-ups: the clamps and selects of a full-range exp were half
 *    of its instructions, and GCC duplicated the polynomial's inputs across them.
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

/* exp(x) for x <= 88.7 (every caller's argument is <= 1; an x past 88.7 gives
 * garbage, not infinity). No upper clamp and no fix-ups after the polynomial:
 * the clamp at -88 makes k = -127, whose scale 2^(k) has the bits of +0, so the
 * result is exactly 0 for x <= -87.7; above that the product p * 2^k rounds
 * gradually into the subnormals. NaN stays NaN. */
static inline FAB__GELU_INLINE float fab__exp_f32(float x)
{
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
    x = x < -88.0f ? -88.0f : x;
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
    return p * scale.f;
}

/* erfc(z) for z >= 0 (see the header comment) */
static inline FAB__GELU_INLINE float fab__erfc_nonneg_f32(float z)
{
    z = z > 10.0f ? 10.0f : z; /* erfc(10) < 2^-149 already; keeps z*z (and inf) finite */
    float t = 1.0f / fmaf(0.5f, z, 1.0f);
    /* P(t) = sum c_i t^i, i = 0..9, by Estrin's scheme: pairs, then powers of
     * t^2 and t^4. Its dependency chain is 4 FMAs after t^4 where Horner's is 9,
     * and the chain, not the FMA units, bounded the loop (the erf forms ran 10%
     * faster on a Zen 3 core). */
    float t2 = t * t, t4 = t2 * t2;
    float p01 = fmaf(fmaf(0.09678418f, t, 0.37409196f), t2, fmaf(1.00002368f, t, -1.26551223f));
    float p23 = fmaf(fmaf(1.48851587f, t, -1.13520398f), t2, fmaf(0.27886807f, t, -0.18628806f));
    float p4 = fmaf(0.17087277f, t, -0.82215223f);
    float p = fmaf(fmaf(p4, t4, p23), t4, p01);
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
        /* x sigmoid(2u) with e = exp(-2|u|) <= 1: x / (1 + e) for u >= 0,
         * x e / (1 + e) below */
        float u = 0.79788456080286536f * fmaf(0.044715f * x, x * x, x);
        float e = fab__exp_f32(-2.0f * fabsf(u));
        return (u >= 0.0f ? x : x * e) / (1.0f + e);
    }
    return x * fab__normal_cdf_f32(x);
}

static inline FAB__GELU_INLINE float fab__gelu_grad_f32(float x, int approximate)
{
    if (approximate) {
        /* past |x| = 20 the derivative is 0 or 1 in f32; clamping keeps x^2 and
         * du finite, so s (1 - s) du never becomes 0 * inf */
        x = x < -20.0f ? -20.0f : (x > 20.0f ? 20.0f : x);
        float x2 = x * x;
        float u = 0.79788456080286536f * fmaf(0.044715f * x, x2, x);
        /* s = sigmoid(2u) and s (1 - s) = e r^2 from one exp and one division,
         * e = exp(-2|u|), r = 1 / (1 + e); neither cancels in either tail */
        float e = fab__exp_f32(-2.0f * fabsf(u));
        float r = 1.0f / (1.0f + e);
        float s = u >= 0.0f ? r : e * r;
        float du = 0.79788456080286536f * fmaf(3.0f * 0.044715f, x2, 1.0f);
        return s + 2.0f * x * du * (e * r * r);
    }
    return fab__normal_cdf_f32(x) + x * 0.39894228040143268f * fab__exp_f32(-0.5f * x * x);
}

#endif
