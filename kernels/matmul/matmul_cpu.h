/* matmul_cpu.h: internal to the CPU GEMM: the micro-kernel interface and blocking. */
#ifndef FAB_MATMUL_CPU_H
#define FAB_MATMUL_CPU_H

#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* c[MR x NR] (row stride ldc) = alpha * a_panel · b_panel + beta * c, where
 * a_panel holds kc columns of MR values and b_panel kc rows of NR values (both
 * 64-byte aligned). beta == 0: c is not read. */
typedef void (*fab__mm_ukernel_fn)(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, float alpha,
                                   float beta);

typedef struct fab__mm_ukernel {
    const char *name;
    int mr, nr;          /* register tile */
    int64_t mc, kc, nc;  /* cache blocking: A block MC x KC, A panel MR x KC (L1), B block KC x NC (L3) */
    size_t b_run_bytes;  /* the B panels (KC x NR each) one A panel meets in a row: L2 */
    fab__mm_ukernel_fn fn;
} fab__mm_ukernel;

/* The best micro-kernel this CPU runs (AVX-512, AVX2+FMA, or portable C). */
const fab__mm_ukernel *fab__mm_pick_ukernel(void);
/* Every micro-kernel this CPU can run, best first; *count gets how many (tests). */
const fab__mm_ukernel *const *fab__mm_ukernels(int *count);

#endif
