/*
 * gelu_math.h: GELU and its derivative on one float, for the CUDA code (the GELU
 * kernel and the matmul epilogues), in the forms PyTorch's formula takes here, in
 * f32. The CPU computes the same forms with gelu_cpu_math.h's vectorisable exp and
 * erfc (within about 1e-5 relative, 2e-7 absolute).
 * A .cu file defines FAB__HD as "__host__ __device__" before including this.
 */
#ifndef FAB_GELU_MATH_H
#define FAB_GELU_MATH_H

#include <math.h>

#ifndef FAB__HD
#define FAB__HD
#endif

#define FAB__SQRT1_2 0.70710678118654752f   /* 1/sqrt(2) */
#define FAB__INV_SQRT_2PI 0.39894228040143268f /* 1/sqrt(2*pi) */
#define FAB__SQRT_2_OVER_PI 0.79788456080286536f
#define FAB__GELU_TANH_K 0.044715f

/* The formulas are PyTorch's, rewritten so f32 keeps full relative accuracy in
 * the left tail, where 1 + erf(.) and 1 + tanh(.) cancel catastrophically:
 *   erf form:   x/2 (1 + erf(x/sqrt2)) = x/2 erfc(-x/sqrt2)
 *   tanh form:  x/2 (1 + tanh(u))      = x sigmoid(2u),  u = sqrt(2/pi) (x + 0.044715 x^3)
 * approximate: 0 = erf form, 1 = tanh form. */
static inline FAB__HD float fab__gelu(float x, int approximate)
{
    if (approximate) {
        float u = FAB__SQRT_2_OVER_PI * (x + FAB__GELU_TANH_K * x * x * x);
        return x / (1.0f + expf(-2.0f * u));
    }
    return 0.5f * x * erfcf(-x * FAB__SQRT1_2);
}

/* d gelu(x) / dx:
 *   erf form:  Phi(x) + x phi(x)
 *   tanh form: s + 2 x s (1 - s) du/dx, with s = sigmoid(2u), since
 *              1/2 (1 + tanh u) = s and 1 - tanh^2 u = 4 s (1 - s) */
static inline FAB__HD float fab__gelu_grad(float x, int approximate)
{
    if (approximate) {
        /* past |x| = 20 the derivative is 0 or 1 in f32; clamping keeps x^2 and
         * u finite, so s (1 - s) du never becomes 0 * inf */
        x = x < -20.0f ? -20.0f : (x > 20.0f ? 20.0f : x);
        float x2 = x * x;
        float u = FAB__SQRT_2_OVER_PI * (x + FAB__GELU_TANH_K * x2 * x);
        float s = 1.0f / (1.0f + expf(-2.0f * u));
        float one_minus_s = 1.0f / (1.0f + expf(2.0f * u));
        float du = FAB__SQRT_2_OVER_PI * (1.0f + 3.0f * FAB__GELU_TANH_K * x2);
        return s + 2.0f * x * s * one_minus_s * du;
    }
    return 0.5f * erfcf(-x * FAB__SQRT1_2) + x * FAB__INV_SQRT_2PI * expf(-0.5f * x * x);
}

#endif
