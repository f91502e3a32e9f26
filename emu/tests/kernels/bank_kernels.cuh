/*
 * bank_kernels.cuh -- one- and two-warp kernels with known shared-memory bank
 * behaviour, for test_banks.cu. Each lane's shared address is a simple function of
 * its lane and a stride, so the host knows the wavefronts each access must take.
 */
#pragma once
#include "../../../kernels/common/ptx.cuh"

/* ldmatrix.x4 (or .trans) with lane l giving the row at l * row_bytes (+ a 16-byte
 * chunk XOR-swizzled by (row / 2) % 4 when swizzle, as matmul_sm80's 64-byte rows),
 * or every lane the same row when row_bytes is 0. */
__global__ void k_bank_ldmatrix(int row_bytes, int swizzle, int trans, uint32_t *out)
{
    FAB_DYNAMIC_SMEM(unsigned char, smem);
    int l = threadIdx.x;
    for (int i = l; i < 32 * 144 / 4; i += 32) reinterpret_cast<uint32_t *>(smem)[i] = 0;
    __syncwarp();
    int chunk = swizzle ? ((l >> 1) & 3) : 0;
    const unsigned char *row = smem + l * row_bytes + 16 * chunk;
    uint32_t r[4];
    if (trans)
        fab__ldmatrix_x4_trans(r, row);
    else
        fab__ldmatrix_x4(r, row);
    out[l] = r[0] ^ r[1] ^ r[2] ^ r[3];
}

/* One cp.async of `size` bytes per lane, lane l to l * stride bytes (+ 512 per
 * warp); with `second`, lanes 0-15 copy a second chunk after a block barrier, to
 * 2048 + 16 * l (+ 256 per warp). */
__global__ void k_bank_cp_async(int size, int stride, int second, const unsigned char *src)
{
    FAB_DYNAMIC_SMEM(unsigned char, smem);
    int l = threadIdx.x % 32, w = threadIdx.x / 32;
    unsigned char *dst = smem + 512 * w + l * stride;
    if (size == 4)
        fab__cp_async_4(dst, src);
    else if (size == 8)
        fab__cp_async_8(dst, src);
    else
        fab__cp_async_16(dst, src);
    fab__cp_async_wait_all();
    __syncthreads();
    if (second && l < 16) fab__cp_async_16(smem + 2048 + 256 * w + 16 * l, src);
    fab__cp_async_wait_all();
}

/* A loop with lane-dependent trip count: chunks c = lane, lane + 32, ... < n, chunk
 * c at 16 * c; no warp-wide meeting inside the loop. */
__global__ void k_bank_cp_loop(int n, const unsigned char *src)
{
    FAB_DYNAMIC_SMEM(unsigned char, smem);
    for (int c = threadIdx.x; c < n; c += 32) fab__cp_async_16(smem + 16 * c, src);
    fab__cp_async_wait_all();
}

/* One plain shared access per lane (fab__st_shared, or fab__ld_shared when !write):
 * a float, or with `wide` a float2, at word l * stride (stride in words; even for
 * a float2). */
__global__ void k_bank_plain(int stride, int wide, int write, float *out)
{
    FAB_DYNAMIC_SMEM(float, smem);
    int l = threadIdx.x;
    float v = 0;
    if (wide) {
        float2 *p = reinterpret_cast<float2 *>(smem + l * stride);
        if (write)
            fab__st_shared(p, make_float2(1.0f, 2.0f));
        else
            v = fab__ld_shared(p).x;
    } else {
        if (write)
            fab__st_shared(smem + l * stride, 1.0f);
        else
            v = fab__ld_shared(smem + l * stride);
    }
    out[l] = v;
}
