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

/* The attention kernel's pipeline in miniature: 128 threads stream `ntiles` tiles of
 * 128 rows x 16 bytes through two shared-memory stages with cp.async (thread t copies
 * row t), and every warp reads each whole tile with ldmatrix.x4.  The bug: no
 * __syncthreads at the end of the loop body, so the cp.async that refills a stage in the
 * next iteration races with the ldmatrix reads of slower warps (write after read).
 * out[block * 128 + t] = a hash of the registers thread t received. */
template <bool TrailingSync>
__global__ void k_pipeline_ldmatrix(const uint4 *src, int ntiles, uint32_t *out)
{
    FAB_DYNAMIC_SMEM(uint4, stage); /* 2 x 128 rows */
    const int t = threadIdx.x, lane = t % 32;
    const uint4 *g = src + (size_t)blockIdx.x * ntiles * 128;
    fab__cp_async_16(&stage[t], &g[t]);
    fab__cp_async_commit();
    uint32_t acc = 0;
    for (int it = 0; it < ntiles; ++it) {
        const int s = it & 1;
        if (it + 1 < ntiles) {
            fab__cp_async_16(&stage[(s ^ 1) * 128 + t], &g[(it + 1) * 128 + t]);
            fab__cp_async_commit();
            fab__cp_async_wait<1>();
        } else {
            fab__cp_async_wait<0>();
        }
        __syncthreads();
        for (int q = 0; q < 4; ++q) {
            uint32_t r[4];
            fab__ldmatrix_x4(r, &stage[s * 128 + q * 32 + lane]);
            acc = acc * 31u + (r[0] ^ (r[1] << 1) ^ (r[2] << 2) ^ (r[3] << 3));
        }
        if (TrailingSync) __syncthreads(); /* the stage is refilled in the next iteration */
    }
    out[blockIdx.x * 128 + t] = acc;
}

/* Named barriers order only their participants.  Warp 0 stages a tile with cp.async and
 * waits; then warps 0 and 1 meet at bar.sync 1, 64 and warps 2 and 3 at bar.sync 2, 64.
 * Warp 1 reads the tile with ldmatrix (ordered); with Bug, warp 2 reads it too -- it
 * never synchronised with warp 0 (read after write). */
template <bool Bug>
__global__ void k_named_barrier_ldmatrix(const uint4 *src, uint32_t *out)
{
    FAB_DYNAMIC_SMEM(uint4, tile); /* 32 rows */
    const int t = threadIdx.x, warp = t / 32, lane = t % 32;
    if (warp == 0) {
        fab__cp_async_16(&tile[lane], &src[lane]);
        fab__cp_async_wait_all();
    }
    if (warp < 2)
        fab__bar_sync(1, 64);
    else
        fab__bar_sync(2, 64);
    uint32_t r[4] = {0, 0, 0, 0};
    if (warp == 1 || (Bug && warp == 2)) fab__ldmatrix_x4(r, &tile[lane]);
    out[t] = r[0] + r[1] + r[2] + r[3];
}

/* Three blocks add 1, 1e8, -1e8 to one float with atomicAdd: the sum depends on the
 * order (0 forward, 1 in reverse), which is not a race. Each block also stores its
 * index: to its own word of `out` (Racy = false), or all to out[0] (Racy = true: the
 * last writer wins, a race that the comparison must still see). */
template <bool Racy>
__global__ void k_float_atomic_sum(float *sum, int *out)
{
    const float v[3] = {1.0f, 1e8f, -1e8f};
    if (threadIdx.x == 0) {
        atomicAdd(sum, v[blockIdx.x % 3]);
        out[Racy ? 0 : blockIdx.x] = (int)blockIdx.x;
    }
}

/* k_warp_exchange through fab__st_shared / fab__ld_shared in dynamic shared memory:
 * the bug (no __syncwarp) is then seen by the shared-memory race detector itself,
 * not only by the schedule comparison. */
template <bool Sync>
__global__ void k_warp_exchange_plain(const int *in, int *out)
{
    FAB_DYNAMIC_SMEM(int, s);
    int t = threadIdx.x;
    fab__st_shared(s + t, in[t]);
    if (Sync) __syncwarp();
    out[t] = fab__ld_shared(s + (t ^ 31));
}

/* Every lane reads word 0 with fab__ld_shared, then lane `writer` overwrites it;
 * the bug: no __syncwarp between. Whichever lane writes, the reads of the others
 * are unordered with it (the detector keeps a multi-reader record). */
template <bool Sync>
__global__ void k_read_all_then_write(int writer, int *out)
{
    FAB_DYNAMIC_SMEM(int, s);
    if (threadIdx.x == 0) fab__st_shared(s, 5);
    __syncwarp();
    int v = fab__ld_shared(s);
    if (Sync) __syncwarp();
    if ((int)threadIdx.x == writer) fab__st_shared(s, 7);
    out[threadIdx.x] = v;
}
