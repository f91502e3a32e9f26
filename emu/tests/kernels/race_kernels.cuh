/*
 * race_kernels.cuh -- kernels with a planted synchronisation bug (Sync = false) and
 * their correct twins (Sync = true), for the race check (test_race.cu).
 */
#pragma once
#include "../../../kernels/common/ptx.cuh"

/* 32x32 tile transpose through static shared memory; the bug: no __syncthreads
 * between writing the tile and reading its transpose. */
template <bool Sync>
__global__ void k_transpose_tile(const float *in, float *out)
{
    __shared__ float tile[32][33];
    int x = threadIdx.x, y = threadIdx.y;
    const float *src = in + blockIdx.x * 1024;
    tile[y][x] = src[y * 32 + x];
    if (Sync) __syncthreads();
    out[blockIdx.x * 1024 + y * 32 + x] = tile[x][y];
}

/* Lanes exchange values through shared memory; the bug: no __syncwarp. */
template <bool Sync>
__global__ void k_warp_exchange(const int *in, int *out)
{
    __shared__ int s[64];
    int t = threadIdx.x;
    s[t] = in[t];
    if (Sync) __syncwarp();
    out[t] = s[t ^ 31];
}

/* Each thread stages 16 bytes with cp.async, then the block reads its neighbour's; the
 * bug: the barrier comes without the cp.async wait. */
template <bool Wait>
__global__ void k_cp_async_stage(const float4 *in, float4 *out)
{
    FAB_DYNAMIC_SMEM(float4, s);
    int t = threadIdx.x, n = blockDim.x;
    fab__cp_async_16(&s[t], &in[blockIdx.x * n + t]);
    fab__cp_async_commit();
    if (Wait) fab__cp_async_wait<0>();
    __syncthreads();
    out[blockIdx.x * n + t] = s[(t + 1) % n];
    fab__cp_async_wait_all();
}
