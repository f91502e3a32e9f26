/* test_c_api.c -- cuda_runtime_api.h and fab_emu.h compile as C11 and work from C. */
#include <stdio.h>

#include <cuda_runtime_api.h>

#include "fab_emu.h"

int main(void)
{
    int pass = 0, fail = 0;
    struct cudaDeviceProp p;
    void *d = NULL;
    if (cudaGetDeviceProperties(&p, 0) == cudaSuccess && p.major == 9) pass++; else fail++;
    if (cudaMalloc(&d, 64) == cudaSuccess && cudaMemset(d, 0, 64) == cudaSuccess && cudaFree(d) == cudaSuccess) pass++; else fail++;
    dim3 g = {2, 1, 1};
    cudaLaunchConfig_t cfg = {g, {32, 1, 1}, 0, NULL, NULL, 0};
    if (cfg.gridDim.x == 2 && cfg.blockDim.x == 32) pass++; else fail++;
    printf("%d passed, %d failed\n", pass, fail);
    return fail != 0;
}
