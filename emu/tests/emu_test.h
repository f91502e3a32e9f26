/*
 * emu_test.h -- a tiny test harness for the emulator's self-tests.
 *
 * CHECK(cond, fmt, ...) counts a pass or prints the failure; emu_test_finish() prints
 * the closing "N passed, N failed" line and returns the exit status.
 */
#ifndef FAB_EMU_TEST_H
#define FAB_EMU_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#ifdef FAB_EMULATE_CUDA
#include "fab_emu.h"
#endif

static int g_emu_pass = 0, g_emu_fail = 0;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (cond) {                                                             \
            g_emu_pass++;                                                       \
        } else {                                                                \
            g_emu_fail++;                                                       \
            fprintf(stderr, "FAIL %s:%d: %s -- ", __FILE__, __LINE__, #cond);   \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
        }                                                                       \
    } while (0)

#define CHECK_CUDA(call) CHECK((call) == cudaSuccess, "%s", cudaGetErrorName(cudaGetLastError()))

/* The GPU build of a Hopper test (wgmma, setmaxnreg: sm_90a code, which only sm_90
 * runs): 0 where this device is sm_90, else prints why and returns 77, ctest's skip.
 * Under the emulator always 0. */
static inline int emu_test_skip_unless_sm90(const char *what)
{
#ifndef FAB_EMULATE_CUDA
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (major != 9 || minor != 0) {
        printf("SKIP: %s needs sm_90a (this GPU is sm_%d%d)\n", what, major, minor);
        return 77;
    }
#else
    (void)what;
#endif
    return 0;
}

static inline int emu_test_finish(void)
{
    printf("%d passed, %d failed\n", g_emu_pass, g_emu_fail);
    return g_emu_fail ? 1 : 0;
}

/* Launch helper: grid/block/smem on the default stream. */
template <class... Exp, class... Act>
static cudaError_t launch(void (*k)(Exp...), dim3 grid, dim3 block, size_t smem, Act &&...args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    return cudaLaunchKernelEx(&cfg, k, static_cast<Act &&>(args)...);
}

/* Deterministic random numbers (xorshift64*), seed printed by the tests. */
struct EmuRng {
    unsigned long long s;
    explicit EmuRng(unsigned long long seed) : s(seed * 2654435761ull + 1) {}
    unsigned long long next()
    {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        return s * 2685821657736338717ull;
    }
    double uniform(double lo, double hi) { return lo + (hi - lo) * (double)(next() >> 11) * 0x1p-53; }
};

template <class T>
static T *device_alloc(size_t n)
{
    void *p = nullptr;
    if (cudaMalloc(&p, n * sizeof(T)) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc failed\n");
        exit(2);
    }
    return static_cast<T *>(p);
}

#endif
