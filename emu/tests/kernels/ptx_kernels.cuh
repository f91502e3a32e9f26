/*
 * ptx_kernels.cuh -- one-warp test kernels for each wrapper of kernels/common/ptx.cuh.
 * The host side (test_ptx.cu) builds register fragments from the PTX ISA layout tables
 * and checks the results; these kernels only move registers in and out.
 */
#pragma once
#include "../../../kernels/common/ptx.cuh"

/* Each lane loads its A/B/C registers (a: 4 per lane, b: 2, c: 4), runs one mma, stores D. */
__global__ void k_mma_bf16_k16(const uint32_t *a, const uint32_t *b, const float *c, float *d)
{
    int l = threadIdx.x;
    uint32_t ra[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
    uint32_t rb[2] = {b[2 * l], b[2 * l + 1]};
    float rc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
    float rd[4];
    fab__mma_m16n8k16_bf16(rd, ra, rb, rc);
    for (int i = 0; i < 4; ++i) d[4 * l + i] = rd[i];
}

__global__ void k_mma_f16_k16(const uint32_t *a, const uint32_t *b, const float *c, float *d)
{
    int l = threadIdx.x;
    uint32_t ra[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
    uint32_t rb[2] = {b[2 * l], b[2 * l + 1]};
    float rc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
    fab__mma_m16n8k16_f16(rc, ra, rb, rc); /* d aliases c */
    for (int i = 0; i < 4; ++i) d[4 * l + i] = rc[i];
}

__global__ void k_mma_f16_k8(const uint32_t *a, const uint32_t *b, const float *c, float *d)
{
    int l = threadIdx.x;
    uint32_t ra[2] = {a[4 * l], a[4 * l + 1]};
    uint32_t rb[1] = {b[2 * l]};
    float rc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
    float rd[4];
    fab__mma_m16n8k8_f16(rd, ra, rb, rc);
    for (int i = 0; i < 4; ++i) d[4 * l + i] = rd[i];
}

__global__ void k_mma_tf32_k8(const uint32_t *a, const uint32_t *b, const float *c, float *d)
{
    int l = threadIdx.x;
    uint32_t ra[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
    uint32_t rb[2] = {b[2 * l], b[2 * l + 1]};
    float rc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
    float rd[4];
    fab__mma_m16n8k8_tf32(rd, ra, rb, rc);
    for (int i = 0; i < 4; ++i) d[4 * l + i] = rd[i];
}

/* ldmatrix: src holds 4 matrices of 8x8 u16 (row-major, contiguous).  They are placed in
 * shared memory with a padded row stride of 24 elements (48 bytes); lane 8m + r passes the
 * address of row r of matrix m.  out[(variant*32 + lane)*4 + m] = register m. Variants:
 * x1, x2, x4, x1.trans, x2.trans, x4.trans, movmatrix(x1), stmatrix.x4 round trip, stmatrix.x4.trans round trip. */
__global__ void k_ldmatrix(const uint16_t *src, uint32_t *out, uint16_t *stored)
{
    __shared__ __align__(16) uint16_t tile[4][8][24];
    __shared__ __align__(16) uint16_t back[2][4][8][24];
    int l = threadIdx.x;
    for (int i = l; i < 4 * 8 * 8; i += 32) tile[i / 64][(i / 8) % 8][i % 8] = src[i];
    __syncthreads();
    const void *row = &tile[l / 8][l % 8][0];
    uint32_t *o = out + l * 4;
    uint32_t r1[1], r2[2], r4[4];
    fab__ldmatrix_x1(r1, row);
    o[0 * 128] = r1[0];
    fab__ldmatrix_x2(r2, row);
    for (int m = 0; m < 2; ++m) o[1 * 128 + m] = r2[m];
    fab__ldmatrix_x4(r4, row);
    for (int m = 0; m < 4; ++m) o[2 * 128 + m] = r4[m];
    fab__ldmatrix_x1_trans(r1, row);
    o[3 * 128] = r1[0];
    fab__ldmatrix_x2_trans(r2, row);
    for (int m = 0; m < 2; ++m) o[4 * 128 + m] = r2[m];
    fab__ldmatrix_x4_trans(r4, row);
    for (int m = 0; m < 4; ++m) o[5 * 128 + m] = r4[m];
    fab__ldmatrix_x1(r1, row);
    o[6 * 128] = fab__movmatrix_trans(r1[0]);
    /* stmatrix: store what ldmatrix loaded; both directions must give the tile back */
    fab__ldmatrix_x4(r4, row);
    fab__stmatrix_x4(&back[0][l / 8][l % 8][0], r4);
    fab__ldmatrix_x4_trans(r4, row);
    fab__stmatrix_x4_trans(&back[1][l / 8][l % 8][0], r4);
    __syncthreads();
    for (int i = l; i < 2 * 4 * 8 * 8; i += 32) stored[i] = back[i / 256][(i / 64) % 4][(i / 8) % 8][i % 8];
}

/* cp.async: 4-, 8-byte .ca copies (group 0), 16-byte .cg copies with zero-fill of
 * (16 - l%17) bytes (group 1), 16-byte .ca copies (group 2, wait_all).
 * pending[l] = 1 if this lane's group-1 destination was still untouched right after
 * wait_group 1 (legal on a GPU, and what the emulator does: copies land at the wait). */
__global__ void k_cp_async(const unsigned char *src, unsigned char *out, int *pending)
{
    __shared__ __align__(16) unsigned char buf[1024];
    int l = threadIdx.x;
    for (int i = l; i < 1024; i += 32) buf[i] = 0xab;
    __syncthreads();
    fab__cp_async_4(&buf[4 * l], src + 4 * l);
    fab__cp_async_8(&buf[128 + 8 * l], src + 128 + 8 * l);
    fab__cp_async_commit();
    fab__cp_async_16_zfill(&buf[384 + 16 * l], src + 384 + 16 * l, (unsigned)(l % 17));
    fab__cp_async_commit();
    fab__cp_async_wait<1>();
    int untouched = 1;
    for (int i = 0; i < 16; ++i) untouched &= buf[384 + 16 * l + i] == 0xab;
    int group0_done = buf[4 * l] == src[4 * l] && buf[128 + 8 * l] == src[128 + 8 * l];
    pending[l] = untouched && group0_done;
    fab__cp_async_wait<0>();
    if (l < 8) fab__cp_async_16_ca(&buf[896 + 16 * l], src + 896 + 16 * l);
    fab__cp_async_wait_all();
    __syncthreads();
    for (int i = l; i < 1024; i += 32) out[i] = buf[i];
}

/* red.global.add.v4.f32: every thread of the grid adds (1, 2, 4, 8) * 2^-k, k =
 * its thread index, to the same 4 floats, then (k, 0, 0, -k) to its own 4 of out. */
__global__ void k_red_v4(float *sum, float *out)
{
    const float u = ldexpf(1.0f, -(int)threadIdx.x);
    fab__red_add_v4_f32(sum, u, 2 * u, 4 * u, 8 * u);
    fab__red_add_v4_f32(out + 4 * threadIdx.x, (float)threadIdx.x, 0, 0, -(float)threadIdx.x);
}

/* f32 atomic adds on global memory flush subnormals (inputs and results) to zero
 * of the same sign: x[i] += y[i] through atomicAdd for i < 4, through one red.v4 for
 * 4..7. On shared memory they keep them: x[8 + i] = x[i] + y[i] for i < 4, added there. */
__global__ void k_atomic_ftz(float *x, const float *y)
{
    __shared__ float s[4];
    for (int i = 0; i < 4; i++)
        s[i] = x[i];
    for (int i = 0; i < 4; i++)
        atomicAdd(&x[i], y[i]);
    fab__red_add_v4_f32(x + 4, y[4], y[5], y[6], y[7]);
    for (int i = 0; i < 4; i++) {
        atomicAdd(&s[i], y[i]);
        x[8 + i] = s[i];
    }
}

/* ---- misuse the emulator must report ---- */

/* cp.async with a destination that is not 16-byte aligned. */
__global__ void k_cp_async_misaligned(const unsigned char *src)
{
    __shared__ __align__(16) unsigned char buf[64];
    fab__cp_async_16(&buf[4], src);
    fab__cp_async_wait_all();
}

/* ldmatrix given a global-memory address. */
__global__ void k_ldmatrix_global(const uint16_t *g)
{
    uint32_t r[1];
    fab__ldmatrix_x1(r, g + 8 * (threadIdx.x % 8));
}

/* red.v4 on an address that is not 16-byte aligned (g + 2), or not device memory. */
__global__ void k_red_v4_at(float *g) { fab__red_add_v4_f32(g, 1, 1, 1, 1); }

/* mma in a 16-thread block: half the warp is missing. */
__global__ void k_mma_half_warp(float *d)
{
    uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float c[4] = {0, 0, 0, 0};
    fab__mma_m16n8k16_bf16(c, a, b, c);
    d[threadIdx.x] = c[0];
}
