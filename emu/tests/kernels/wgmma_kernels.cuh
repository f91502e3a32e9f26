/*
 * wgmma_kernels.cuh -- test kernels for wgmma (emulator: test_wgmma.cu; GPU: the same
 * program built by nvcc for sm_90a, which checks the emulator's reading of the PTX
 * ISA against the hardware).
 *
 * k_wgmma: each warpgroup g multiplies its 64 rows of A (rows 64g..) by B, K = 32 in
 * two k16 steps.  The host lays A and B out in shared-memory images (layout, LBO, SBO
 * and per-step start offsets in WgmmaCase); the kernel copies the images into dynamic
 * shared memory, runs the two wgmma, and writes D back through the documented
 * accumulator mapping.  RS: A comes from registers instead, loaded from row-major A
 * by mma.sync's A fragment mapping.
 */
#ifndef FAB_EMU_TEST_WGMMA_KERNELS_CUH
#define FAB_EMU_TEST_WGMMA_KERNELS_CUH

#include <stdint.h>

#include "../../../kernels/common/ptx.cuh"

struct WgmmaCase {
    /* shared-memory images: A (for both warpgroups, 2 x a_bytes) and B */
    unsigned a_bytes, b_bytes;
    int layout_a, layout_b;
    unsigned lbo_a, sbo_a, lbo_b, sbo_b;
    unsigned a_step[2], b_step[2]; /* start offset of k-step s in the image */
    int accumulate_first;          /* first step adds to C (else overwrites) */
    int read_early;                /* bug on purpose: read D before wait_group */
    int skip_wait;                 /* bug on purpose: never wait */
    int half_group;                /* bug on purpose: only warps 0-1 of each warpgroup issue */
    int no_fence;                  /* bug on purpose: no wgmma.fence */
    int st_shared;                 /* copy the images with fab__st_shared (seen by the proxy check): 1 with
                                    * fab__fence_proxy_async, 2 without it (a bug on purpose) */
};

/* D's fragment: d[4j + 2i + b] = D[row0 + g + 8i][8j + 2t + b] (g = lane/4, t = lane%4) */
template <int N>
static __device__ void wgmma_store_d(const float (&d)[N / 2], float *dout, int row0, int g, int t)
{
#pragma unroll
    for (int j = 0; j < N / 8; ++j)
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int b = 0; b < 2; ++b) dout[(row0 + g + 8 * i) * N + 8 * j + 2 * t + b] = d[4 * j + 2 * i + b];
}

template <int N, int TA, int TB, int F16, int RS>
__global__ void k_wgmma(WgmmaCase c, const unsigned char *a_img, const unsigned char *b_img, const uint16_t *a_rows,
                        const float *cin, float *dout)
{
    FAB_DYNAMIC_SMEM(unsigned char, raw);
    /* 1024-aligned: a 128-byte swizzle pattern starts at a multiple of 1024 */
    unsigned char *smem = raw + ((1024 - ((uintptr_t)raw & 1023)) & 1023);
    const int warpgroup = threadIdx.x / 128, wg_warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    if (c.st_shared) { /* 4-byte words through the wrapper the emulator sees */
        for (unsigned i = 4 * threadIdx.x; i < 2 * c.a_bytes; i += 4 * blockDim.x)
            fab__st_shared(reinterpret_cast<uint32_t *>(smem + i), *reinterpret_cast<const uint32_t *>(a_img + i));
        for (unsigned i = 4 * threadIdx.x; i < c.b_bytes; i += 4 * blockDim.x)
            fab__st_shared(reinterpret_cast<uint32_t *>(smem + 2 * c.a_bytes + i),
                           *reinterpret_cast<const uint32_t *>(b_img + i));
    } else {
        for (unsigned i = threadIdx.x; i < 2 * c.a_bytes; i += blockDim.x) smem[i] = a_img[i];
        for (unsigned i = threadIdx.x; i < c.b_bytes; i += blockDim.x) smem[2 * c.a_bytes + i] = b_img[i];
    }
    if (c.st_shared != 2) fab__fence_proxy_async();
    __syncthreads();
    const unsigned char *sa = smem + warpgroup * c.a_bytes, *sb = smem + 2 * c.a_bytes;
    if (c.half_group && wg_warp >= 2)
        return;

    float d[N / 2];
    const int row0 = 64 * warpgroup + 16 * wg_warp;
#pragma unroll
    for (int j = 0; j < N / 8; ++j)
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int b = 0; b < 2; ++b)
                d[4 * j + 2 * i + b] = cin[(row0 + g + 8 * i) * N + 8 * j + 2 * t + b];
#pragma unroll
    for (int s = 0; s < 2; ++s) {
        uint64_t db = fab__wgmma_desc(sb + c.b_step[s], c.lbo_b, c.sbo_b, c.layout_b);
        int acc = s > 0 || c.accumulate_first;
        if (RS) {
            /* mma.sync's A fragment: a[r] = A[g + 8(r&1)][16s + 2t + 8(r>>1) + {0,1}] */
            uint32_t a[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const uint16_t *p = a_rows + (row0 + g + 8 * (r & 1)) * 32 + 16 * s + 2 * t + 8 * (r >> 1);
                a[r] = (uint32_t)p[0] | ((uint32_t)p[1] << 16);
            }
            if (!c.no_fence) fab__wgmma_fence(); /* after the A registers are written, before wgmma reads them */
            if (F16)
                fab__wgmma_f16_rs<N, TB>(d, a, db, acc);
            else
                fab__wgmma_bf16_rs<N, TB>(d, a, db, acc);
        } else {
            uint64_t da = fab__wgmma_desc(sa + c.a_step[s], c.lbo_a, c.sbo_a, c.layout_a);
            if (s == 0 && !c.no_fence) fab__wgmma_fence(); /* the accumulators were written by ordinary instructions */
            if (F16)
                fab__wgmma_f16_ss<N, TA, TB>(d, da, db, acc);
            else
                fab__wgmma_bf16_ss<N, TA, TB>(d, da, db, acc);
        }
    }
    fab__wgmma_commit();
    if (c.read_early) /* wrong on purpose: the accumulators are not final before the wait */
        wgmma_store_d<N>(d, dout, row0, g, t);
    if (!c.skip_wait) fab__wgmma_wait<0>();
    if (!c.read_early) wgmma_store_d<N>(d, dout, row0, g, t);
}

#endif
