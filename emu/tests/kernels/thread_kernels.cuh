/*
 * thread_kernels.cuh -- test kernels for the thread model: indices, barriers, shared
 * memory, warp collectives, atomics.  Plain CUDA: they also compile with nvcc
 * (emu/tests/nvcc_check.cu).
 */
#pragma once
#include "../../../kernels/common/ptx.cuh"

/* Every thread writes its identity: out[global linear id] = packed indices. */
__global__ void k_indices(unsigned *out)
{
    unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
    out[block * nthreads + tid] = (blockIdx.x << 24) | (blockIdx.y << 20) | (blockIdx.z << 16) | (threadIdx.x << 8) |
                                  (threadIdx.y << 4) | threadIdx.z;
}

/* Block sum with a static shared array and a tree of __syncthreads (256 threads). */
__global__ void k_block_sum(const float *in, float *out)
{
    __shared__ float buf[256];
    unsigned t = threadIdx.x;
    buf[t] = in[blockIdx.x * 256 + t];
    __syncthreads();
    for (unsigned s = 128; s > 0; s >>= 1) {
        if (t < s) buf[t] += buf[t + s];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = buf[0];
}

/* __syncthreads_count/_and/_or on the predicate (threadIdx.x % 3 == 0). */
__global__ void k_sync_reduce(int *out)
{
    int p = threadIdx.x % 3 == 0;
    int c = __syncthreads_count(p);
    int a = __syncthreads_and(p);
    int o = __syncthreads_or(p);
    int all = __syncthreads_and(1);
    if (threadIdx.x == 0) {
        out[0] = c;
        out[1] = a;
        out[2] = o;
        out[3] = all;
    }
}

/* Threads past n return early; the rest still meet at __syncthreads (legal: PTX counts
 * exited threads as arrived at barriers for all threads). */
__global__ void k_early_exit(const int *in, int *out, int n)
{
    __shared__ int s[128];
    int t = threadIdx.x;
    if (t >= n) return;
    s[t] = in[t] * 2;
    __syncthreads();
    out[t] = s[n - 1 - t];
}

/* Named barriers: warps 0-1 produce into shared memory and bar.arrive(1, 128); warps 2-3
 * bar.sync(1, 128) and consume.  Then everyone meets at barrier 2 (all 128 threads). */
__global__ void k_named_barrier(int *out)
{
    __shared__ int s[64];
    int t = threadIdx.x;
    if (t < 64) {
        s[t] = t * t + 7;
        fab__bar_arrive(1, 128);
    } else {
        fab__bar_sync(1, 128);
        out[t - 64] = s[t - 64];
    }
    fab__bar_sync(2, 128);
    if (t == 0) out[64] = 1;
}

/* Unbalanced: warps 0-1 arrive at named barrier 3 (a phase of 128 threads) that no
 * warp syncs at; the block ends with the phase open (an error). */
__global__ void k_named_barrier_open(int *out)
{
    if (threadIdx.x < 64)
        fab__bar_arrive(3, 128);
    if (threadIdx.x == 0)
        out[0] = 1;
}

/* Dynamic shared memory: a block reverses n floats through FAB_DYNAMIC_SMEM. */
__global__ void k_dynamic_smem(const float *in, float *out, int n)
{
    FAB_DYNAMIC_SMEM(float, s);
    for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = in[i];
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = s[n - 1 - i];
}

/* All shuffle kinds with a width: out[4*tid + k] for k = idx, up, down, xor. */
__global__ void k_shuffles(int *out, int width, int arg)
{
    int v = 1000 + (int)threadIdx.x;
    out[4 * threadIdx.x + 0] = __shfl_sync(0xffffffffu, v, arg, width);
    out[4 * threadIdx.x + 1] = __shfl_up_sync(0xffffffffu, v, (unsigned)arg, width);
    out[4 * threadIdx.x + 2] = __shfl_down_sync(0xffffffffu, v, (unsigned)arg, width);
    out[4 * threadIdx.x + 3] = __shfl_xor_sync(0xffffffffu, v, arg, width);
}

/* Warp sum of doubles with __shfl_xor_sync (64-bit shuffles). */
__global__ void k_warp_sum_double(const double *in, double *out)
{
    double v = in[threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[threadIdx.x] = v;
}

/* Votes in divergent halves: each half-warp votes with its own 16-lane mask. */
__global__ void k_votes(unsigned *out)
{
    unsigned lane = threadIdx.x % 32;
    unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    int pred = (lane % 4) == 1;
    unsigned *o = out + 8 * threadIdx.x;
    if (lane < 16) {
        o[0] = __ballot_sync(mask, pred);
        o[1] = (unsigned)__any_sync(mask, pred);
        o[2] = (unsigned)__all_sync(mask, 1);
    } else {
        o[0] = __ballot_sync(mask, pred);
        o[1] = (unsigned)__any_sync(mask, 0);
        o[2] = (unsigned)__all_sync(mask, pred);
    }
    __syncwarp();
    o[3] = __match_any_sync(0xffffffffu, (int)(lane / 8));
    int pall = 0;
    o[4] = __match_all_sync(0xffffffffu, 42, &pall);
    o[5] = (unsigned)pall;
    o[6] = __reduce_add_sync(0xffffffffu, lane);
    o[7] = __activemask();
}

/* Atomics from every thread of many blocks. */
__global__ void k_atomics(int *ci, unsigned *cu, unsigned long long *cull, float *cf, double *cd, int *mx, int *mn,
                          unsigned *inc, int *cas_winner)
{
    int g = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    atomicAdd(ci, 1);
    atomicAdd(cu, 2u);
    atomicAdd(cull, 3ull);
    atomicAdd(cf, 0.5f);
    atomicAdd(cd, 0.25);
    atomicMax(mx, (g * 7919) % 1009);
    atomicMin(mn, 1000 - (g * 7919) % 1009);
    atomicInc(inc, 9u);
    atomicCAS(cas_winner, -1, g);
}

/* A lane that leaves the warp early: __shfl_down from an exited lane is undefined. */
__global__ void k_shfl_from_exited(int *out)
{
    int lane = threadIdx.x % 32;
    if (lane >= 16) return;
    out[lane] = __shfl_down_sync(0xffffffffu, lane * 10, 8);
}

/* ---- kernels with planted errors (used with FAB_EMU_ERRORS=return) ---- */

/* The calling lane is not in its own mask. */
__global__ void k_bad_mask(int *out)
{
    out[threadIdx.x] = __shfl_sync(0x0000ffffu, (int)threadIdx.x, 0);
}

/* Deadlock: lanes 0-15 wait for lanes 16-31 in __syncwarp, which wait at __syncthreads. */
__global__ void k_deadlock(int *out)
{
    if (threadIdx.x % 32 < 16)
        __syncwarp(0xffffffffu);
    else
        __syncthreads();
    out[threadIdx.x] = 1;
}

/* __syncthreads at two places: warp 0 in one branch, warp 1 in the other. The
 * arrival counts match, but bar.sync is .aligned: undefined on the GPU. */
__global__ void k_split_barrier(int *out)
{
    if (threadIdx.x < 32) {
        out[threadIdx.x] = 1;
        __syncthreads();
        out[threadIdx.x] += 10;
    } else {
        out[threadIdx.x] = 2;
        __syncthreads();
        out[threadIdx.x] += 20;
    }
}

/* Different collectives with the same mask. */
__global__ void k_mixed_collectives(unsigned *out)
{
    if (threadIdx.x % 2)
        out[threadIdx.x] = __ballot_sync(0xffffffffu, 1);
    else
        out[threadIdx.x] = (unsigned)__any_sync(0xffffffffu, 1);
}
