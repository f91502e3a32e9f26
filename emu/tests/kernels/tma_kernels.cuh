/*
 * tma_kernels.cuh -- test kernels for mbarrier and TMA (test_tma.cu; also built by
 * nvcc for sm_90a, where the same program checks the emulator against the hardware).
 *
 * k_tma_ring: a producer warp loads boxes of a 2-D tensor with TMA into a ring of
 * STAGES shared-memory stages; 4 consumer warps wait for each stage's `full`
 * barrier, copy the stage's raw bytes (swizzle and all) to global memory, and arrive
 * on its `empty` barrier, which the producer waits for before reusing the stage.
 * Box t starts at element (x0 + (t % tiles_x) * box_x, y0 + (t / tiles_x) * box_y);
 * x0, y0 may be negative, and the last boxes may run past the tensor (filled).
 */
#ifndef FAB_EMU_TEST_TMA_KERNELS_CUH
#define FAB_EMU_TEST_TMA_KERNELS_CUH

#include <stdint.h>

#include "../../../kernels/common/ptx.cuh"

enum { TMA_STAGES = 3, TMA_CONSUMERS = 128 };
enum TmaBug { TMA_OK = 0, TMA_NO_FULL_WAIT = 1, TMA_SHORT_EXPECT = 2, TMA_NO_EMPTY_ARRIVE = 3 };

struct TmaRing {
    int tiles, tiles_x, box_x, box_y, x0, y0;
    unsigned box_bytes, stage_bytes; /* stage_bytes: box_bytes rounded up to 1024 */
    int bug;                         /* TmaBug */
    int box_z, z0;                   /* box_z > 0: a rank-3 map; box t at (x, y0, z0 + (t / tiles_x) * box_z) */
};

__global__ void k_tma_ring(const __grid_constant__ CUtensorMap map, TmaRing r, uint32_t *out)
{
    FAB_DYNAMIC_SMEM(unsigned char, raw);
    unsigned char *stages = raw + ((1024 - ((uintptr_t)raw & 1023)) & 1023);
    __shared__ __align__(8) uint64_t full[TMA_STAGES], empty[TMA_STAGES];
    if (threadIdx.x == 0) {
        for (int s = 0; s < TMA_STAGES; ++s) {
            fab__mbarrier_init(&full[s], 1);
            fab__mbarrier_init(&empty[s], TMA_CONSUMERS);
        }
        fab__fence_mbarrier_init();
    }
    __syncthreads();
    if (threadIdx.x >= TMA_CONSUMERS) { /* the producer warp; one lane issues */
        if (threadIdx.x != TMA_CONSUMERS) return;
        for (int t = 0; t < r.tiles; ++t) {
            int s = t % TMA_STAGES;
            if (t >= TMA_STAGES) fab__mbarrier_wait(&empty[s], (unsigned)((t / TMA_STAGES - 1) & 1));
            unsigned expect = r.bug == TMA_SHORT_EXPECT ? r.box_bytes - 16 : r.box_bytes;
            fab__mbarrier_arrive_expect_tx(&full[s], expect);
            if (r.box_z)
                fab__tma_load_3d(stages + (size_t)s * r.stage_bytes, &map, r.x0 + (t % r.tiles_x) * r.box_x, r.y0,
                                 r.z0 + (t / r.tiles_x) * r.box_z, &full[s]);
            else
                fab__tma_load_2d(stages + (size_t)s * r.stage_bytes, &map, r.x0 + (t % r.tiles_x) * r.box_x,
                                 r.y0 + (t / r.tiles_x) * r.box_y, &full[s]);
        }
        return;
    }
    for (int t = 0; t < r.tiles; ++t) {
        int s = t % TMA_STAGES;
        if (r.bug != TMA_NO_FULL_WAIT) fab__mbarrier_wait(&full[s], (unsigned)((t / TMA_STAGES) & 1));
        const uint32_t *stage = reinterpret_cast<const uint32_t *>(stages + (size_t)s * r.stage_bytes);
        for (unsigned i = threadIdx.x; i < r.box_bytes / 4; i += TMA_CONSUMERS)
            out[(size_t)t * (r.box_bytes / 4) + i] = fab__ld_shared(stage + i);
        if (r.bug == TMA_NO_FULL_WAIT) /* wrong on purpose: read the stage, then wait for it */
            fab__mbarrier_wait(&full[s], (unsigned)((t / TMA_STAGES) & 1));
        if (r.bug != TMA_NO_EMPTY_ARRIVE) fab__mbarrier_arrive(&empty[s]);
    }
}

#endif
