/*
 * matmul_ukernel.c: the CPU GEMM's register-blocked micro-kernels (see
 * matmul_cpu.h for the contract), chosen at run time from the CPU's features.
 *
 * Idea: keep an MR x NR block of C in vector registers; per step of k, load one
 * row of the B panel (NR values, NR/W vectors), broadcast each of the MR values of
 * the A panel's column and FMA it with that row. Both panels are packed
 * contiguously, so the loop reads two sequential streams and never touches C
 * until the end. f32 throughout (FMA: one rounding per step).
 *
 *   AVX-512F  12 x 32: 24 zmm accumulators + 2 B vectors + 1 broadcast
 *   AVX2+FMA   6 x 16: 12 ymm accumulators + 2 B vectors + 1 broadcast
 *   portable   6 x 16: plain C (the compiler vectorises what it can)
 */
#include "matmul_cpu.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Tests only (tests/CMakeLists.txt): FAB_MM_FORCE_UKERNEL names the kernel every
 * GEMM of this copy of the library runs (k_avx512, k_avx2 or k_generic), so the
 * kernels this CPU would not pick are tested too. With FAB_MM_SIMDE the x86
 * intrinsics come from SIMDe's portable implementations: the AVX-512 kernel's
 * indexing and data flow then run, slowly, on a CPU without AVX-512 (its FMA may
 * round twice there, within the tests' tolerance). */
#if defined(FAB_MM_SIMDE)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/fma.h>
#define FAB_MM_X86 1
#define FAB_MM_AVX2
#define FAB_MM_AVX512
#elif defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FAB_MM_X86 1
#define FAB_MM_AVX2 __attribute__((target("avx2,fma")))
#define FAB_MM_AVX512 __attribute__((target("avx512f")))
#endif

/* ---------------------------------------------------------------- portable */

static void ukr_generic_6x16(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, float alpha,
                             float beta)
{
    float acc[6][16];
    memset(acc, 0, sizeof acc);
    for (int64_t p = 0; p < kc; p++) {
        for (int i = 0; i < 6; i++) {
            float ai = a[p * 6 + i];
            for (int j = 0; j < 16; j++)
                acc[i][j] += ai * b[p * 16 + j];
        }
    }
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 16; j++)
            c[i * ldc + j] = alpha * acc[i][j] + (beta == 0.0f ? 0.0f : beta * c[i * ldc + j]);
}

#ifdef FAB_MM_X86

/* ------------------------------------------------------------------- AVX2 */

FAB_MM_AVX2 static inline void store_row_avx2(float *c, __m256 x0, __m256 x1, __m256 va, __m256 vb, int rd)
{
    x0 = _mm256_mul_ps(x0, va);
    x1 = _mm256_mul_ps(x1, va);
    if (rd) {
        x0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c), x0);
        x1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c + 8), x1);
    }
    _mm256_storeu_ps(c, x0);
    _mm256_storeu_ps(c + 8, x1);
}

/* The loop needs 15 of the 16 ymm registers (12 accumulators, 2 B vectors, the
 * broadcast), so alpha and beta wait in memory until the stores: left in
 * registers, gcc -O3 kept them there and spilled an accumulator inside the loop
 * instead, a store and a reload on its FMA chain every 4 steps (8% of the
 * kernel's rate, 3-4% of a 2048^3 GEMM on a Zen 3 core). */
FAB_MM_AVX2 static void ukr_avx2_6x16(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, float alpha,
                                      float beta)
{
    volatile float alpha_mem = alpha, beta_mem = beta;
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    for (int64_t i = 0; i < 6; i++)
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
#define FAB_MM_STEP(P)                                                                   \
    do {                                                                                 \
        __m256 b0 = _mm256_load_ps(b + 16 * (P)), b1 = _mm256_load_ps(b + 16 * (P) + 8); \
        __m256 ax = _mm256_broadcast_ss(a + 6 * (P) + 0);                                \
        c00 = _mm256_fmadd_ps(ax, b0, c00);                                              \
        c01 = _mm256_fmadd_ps(ax, b1, c01);                                              \
        ax = _mm256_broadcast_ss(a + 6 * (P) + 1);                                       \
        c10 = _mm256_fmadd_ps(ax, b0, c10);                                              \
        c11 = _mm256_fmadd_ps(ax, b1, c11);                                              \
        ax = _mm256_broadcast_ss(a + 6 * (P) + 2);                                       \
        c20 = _mm256_fmadd_ps(ax, b0, c20);                                              \
        c21 = _mm256_fmadd_ps(ax, b1, c21);                                              \
        ax = _mm256_broadcast_ss(a + 6 * (P) + 3);                                       \
        c30 = _mm256_fmadd_ps(ax, b0, c30);                                              \
        c31 = _mm256_fmadd_ps(ax, b1, c31);                                              \
        ax = _mm256_broadcast_ss(a + 6 * (P) + 4);                                       \
        c40 = _mm256_fmadd_ps(ax, b0, c40);                                              \
        c41 = _mm256_fmadd_ps(ax, b1, c41);                                              \
        ax = _mm256_broadcast_ss(a + 6 * (P) + 5);                                       \
        c50 = _mm256_fmadd_ps(ax, b0, c50);                                              \
        c51 = _mm256_fmadd_ps(ax, b1, c51);                                              \
    } while (0)
    int64_t p = 0;
    for (; p + 4 <= kc; p += 4) {
        _mm_prefetch((const char *)(b + 16 * 8), _MM_HINT_T0);
        FAB_MM_STEP(0);
        FAB_MM_STEP(1);
        FAB_MM_STEP(2);
        FAB_MM_STEP(3);
        a += 24;
        b += 64;
    }
    for (; p < kc; p++) {
        FAB_MM_STEP(0);
        a += 6;
        b += 16;
    }
#undef FAB_MM_STEP
    alpha = alpha_mem;
    beta = beta_mem;
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    int rd = beta != 0.0f;
    store_row_avx2(c + 0 * ldc, c00, c01, va, vb, rd);
    store_row_avx2(c + 1 * ldc, c10, c11, va, vb, rd);
    store_row_avx2(c + 2 * ldc, c20, c21, va, vb, rd);
    store_row_avx2(c + 3 * ldc, c30, c31, va, vb, rd);
    store_row_avx2(c + 4 * ldc, c40, c41, va, vb, rd);
    store_row_avx2(c + 5 * ldc, c50, c51, va, vb, rd);
}

/* ---------------------------------------------------------------- AVX-512 */

/* 12 x 32: the accumulators are an array indexed by constants only, in fully
 * unrolled loops, so they live in registers. */
FAB_MM_AVX512 static void ukr_avx512_12x32(int64_t kc, const float *a, const float *b, float *c, int64_t ldc,
                                           float alpha, float beta)
{
    __m512 acc[12][2];
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) {
        acc[i][0] = _mm512_setzero_ps();
        acc[i][1] = _mm512_setzero_ps();
    }
    for (int64_t p = 0; p < kc; p++) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        _mm_prefetch((const char *)(b + 32 * 8), _MM_HINT_T0);
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) {
            __m512 ax = _mm512_set1_ps(a[i]);
            acc[i][0] = _mm512_fmadd_ps(ax, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(ax, b1, acc[i][1]);
        }
        a += 12;
        b += 32;
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) {
        __m512 x0 = _mm512_mul_ps(acc[i][0], va), x1 = _mm512_mul_ps(acc[i][1], va);
        if (beta != 0.0f) {
            x0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(c + i * ldc), x0);
            x1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(c + i * ldc + 16), x1);
        }
        _mm512_storeu_ps(c + i * ldc, x0);
        _mm512_storeu_ps(c + i * ldc + 16, x1);
    }
}

#endif /* FAB_MM_X86 */

/* Blocking: MR x KC of A stays in L1 during the micro-kernel and the run of B
 * panels it meets (b_run_bytes) in L2; KC x NC of B in L3. AVX-512: MC = KC =
 * 384 measured on a Zen 4 EPYC (1 MiB L2 per core; 2 threads) beat 144 x 256 by
 * 7% at 2048^3 and 1.5-4.5% on smaller shapes, and a KC of 128 by 2-5%: fewer C
 * tile updates and B packs per flop. The run: 768 KiB (AVX-512) and 256 KiB
 * (AVX2) measured on a Sapphire Rapids core (2 MiB L2), 1 thread, 2048^3:
 * against a B panel in L1 meeting every A panel, +9% AVX-512 (124 -> 135
 * GFLOP/s) and +0-5% AVX2; runs of 256-1024 KiB were within noise of each other,
 * the whole group as one run (3 MiB) lost 10%. AVX2's MC/KC/NC are BLIS's Zen values. */
static const fab__mm_ukernel k_generic = {"c 6x16", 6, 16, 144, 256, 4080, 256 << 10, ukr_generic_6x16};
#ifdef FAB_MM_X86
static const fab__mm_ukernel k_avx2 = {"avx2+fma 6x16", 6, 16, 144, 256, 4080, 256 << 10, ukr_avx2_6x16};
static const fab__mm_ukernel k_avx512 = {"avx512f 12x32", 12, 32, 384, 384, 4064, 768 << 10, ukr_avx512_12x32};
#endif

const fab__mm_ukernel *const *fab__mm_ukernels(int *count)
{
    static const fab__mm_ukernel *const only_c[] = {&k_generic};
#ifdef FAB_MM_X86
    static const fab__mm_ukernel *const with_avx512[] = {&k_avx512, &k_avx2, &k_generic};
    static const fab__mm_ukernel *const with_avx2[] = {&k_avx2, &k_generic};
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (__builtin_cpu_supports("avx512f") && avx2) {
        *count = 3;
        return with_avx512;
    }
    if (avx2) {
        *count = 2;
        return with_avx2;
    }
#endif
    *count = 1;
    return only_c;
}

const fab__mm_ukernel *fab__mm_pick_ukernel(void)
{
#ifdef FAB_MM_FORCE_UKERNEL
    return &FAB_MM_FORCE_UKERNEL;
#endif
    int n;
    return fab__mm_ukernels(&n)[0];
}
