/*
 * cpu_dtype.h: inline f32 <-> f16/bf16 conversions for CPU hot loops, bitwise
 * equal to fab_f32_to_f16 / fab_f32_to_bf16 (round to nearest even; NaN quiet).
 * Single f16 values go through the compiler's _Float16; rows of them (the row
 * helpers below) through F16C, 8 at a time, where the CPU has it.
 */
#ifndef FAB_CPU_DTYPE_H
#define FAB_CPU_DTYPE_H

#include "fabriek.h"

#include <stdint.h>
#include <string.h>

/* On a function: GCC builds it three times, for x86-64-v4 (AVX-512), x86-64-v3
 * (AVX2, FMA, F16C) and the baseline, and picks one when the library loads. The
 * same operations in each (ISO C: no contraction into FMAs), so the same bits:
 * GELU forward and backward hash equal from the v3 and v4 builds. v4 on a Zen 4
 * EPYC: GELU 1.2-1.9x faster than v3 (erf f32 17.6-21.4 -> 11.2 ms for 16M). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FAB__VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FAB__VECTOR_CLONES
#endif

/* Type punning through a union (defined in C, and vectorises; memcpy may not). */
typedef union fab__f32_bits {
    float f;
    uint32_t u;
} fab__f32_bits;

static inline float fab__bf16_load(uint16_t b)
{
    fab__f32_bits v;
    v.u = (uint32_t)b << 16;
    return v.f;
}

/* Branch-free, so loops over it vectorise. */
static inline uint16_t fab__bf16_store(float f)
{
    fab__f32_bits v;
    v.f = f;
    uint32_t u = v.u;
    uint32_t rounded = (u + 0x7fff + ((u >> 16) & 1)) >> 16; /* round to nearest, ties to even */
    uint32_t quiet_nan = (u >> 16) | 0x40;                     /* NaN stays NaN, quiet */
    return (uint16_t)((u & 0x7fffffff) > 0x7f800000 ? quiet_nan : rounded);
}

#if defined(__FLT16_MAX__) && !defined(__cplusplus)
static inline float fab__f16_load(uint16_t h)
{
    _Float16 v;
    memcpy(&v, &h, 2);
    return (float)v;
}
static inline uint16_t fab__f16_store(float f)
{
    _Float16 v = (_Float16)f;
    uint16_t h;
    memcpy(&h, &v, 2);
    return h;
}
#else
static inline float fab__f16_load(uint16_t h) { return fab_f16_to_f32(h); }
static inline uint16_t fab__f16_store(float f) { return fab_f32_to_f16(f); }
#endif

/* Loads element i of a buffer of dtype f32, f16 or bf16 as float. */
static inline float fab__load_f(const void *p, fab_dtype dtype, int64_t i)
{
    switch (dtype) {
    case FAB_DTYPE_F16: return fab__f16_load(((const uint16_t *)p)[i]);
    case FAB_DTYPE_BF16: return fab__bf16_load(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

/* Stores v, rounded to dtype, as element i. */
static inline void fab__store_f(void *p, fab_dtype dtype, int64_t i, float v)
{
    switch (dtype) {
    case FAB_DTYPE_F16: ((uint16_t *)p)[i] = fab__f16_store(v); break;
    case FAB_DTYPE_BF16: ((uint16_t *)p)[i] = fab__bf16_store(v); break;
    default: ((float *)p)[i] = v; break;
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FAB__F16C_ROWS 1
/* f16 rows 8 values at a time with F16C: GCC converts _Float16 one value at a
 * time even where F16C is there (a GELU over f16 ran 2.5-3.5x slower than over
 * bf16). Same bits as fab__f16_load / fab__f16_store: exact widening, rounding
 * to nearest even (the immediate, not MXCSR), NaN kept quiet with its top
 * payload bits. Called where fab__cpu_has_f16c() says so; a clone without F16C
 * calls them rather than inlining them. */
__attribute__((target("avx,f16c"))) static inline void fab__f16_row_to_f32(const uint16_t *s, int n, float *d)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
    for (; i < n; i++)
        d[i] = _cvtsh_ss(s[i]);
}

__attribute__((target("avx,f16c"))) static inline void fab__f32_row_to_f16(const float *s, int n, uint16_t *d)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(d + i), _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        d[i] = _cvtss_sh(s[i], _MM_FROUND_TO_NEAREST_INT);
}

/* libgcc's (compiler-rt's) constructor has run the CPU detection */
static inline int fab__cpu_has_f16c(void)
{
    return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
}
#endif

/* n values of a row of dtype f32, f16 or bf16 into f32, and back (rounded), with
 * the dtype switch outside the loop so that the loops vectorise. Inline: a
 * caller built as FAB__VECTOR_CLONES gets them built for each ISA. n is an int:
 * callers pass blocks, and with a 64-bit index GCC vectorised the 16-bit loops
 * worse (GELU's bf16 forward 10% slower). */
static inline void fab__load_row_f32(const void *src, fab_dtype dtype, int n, float *restrict d)
{
    const uint16_t *s = (const uint16_t *)src;
    switch (dtype) {
    case FAB_DTYPE_BF16:
#pragma omp simd
        for (int i = 0; i < n; i++)
            d[i] = fab__bf16_load(s[i]);
        break;
    case FAB_DTYPE_F16:
#ifdef FAB__F16C_ROWS
        if (fab__cpu_has_f16c()) {
            fab__f16_row_to_f32(s, n, d);
            break;
        }
#endif
#pragma omp simd
        for (int i = 0; i < n; i++)
            d[i] = fab__f16_load(s[i]);
        break;
    default: memcpy(d, src, sizeof(float) * (size_t)n); break;
    }
}

static inline void fab__store_row_f32(void *dst, fab_dtype dtype, int n, const float *restrict v)
{
    uint16_t *d = (uint16_t *)dst;
    switch (dtype) {
    case FAB_DTYPE_BF16:
#pragma omp simd
        for (int i = 0; i < n; i++)
            d[i] = fab__bf16_store(v[i]);
        break;
    case FAB_DTYPE_F16:
#ifdef FAB__F16C_ROWS
        if (fab__cpu_has_f16c()) {
            fab__f32_row_to_f16(v, n, d);
            break;
        }
#endif
#pragma omp simd
        for (int i = 0; i < n; i++)
            d[i] = fab__f16_store(v[i]);
        break;
    default: memcpy(dst, v, sizeof(float) * (size_t)n); break;
    }
}

#endif
