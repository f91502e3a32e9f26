/*
 * test_tma.cu -- mbarrier and TMA tensor loads.
 *
 * A 2-D tensor of distinct 16-bit values goes through k_tma_ring (a producer warp,
 * TMA, a ring of 3 stages with full/empty mbarriers, 4 consumer warps) box by box,
 * for each swizzle; the raw bytes of every stage must match the host's own
 * placement: rows of box_x elements one after another, out-of-tensor elements zero,
 * and with a swizzle of W bytes the 16-byte chunk index within each 128-byte line
 * XORed with the line's index modulo W/16.  Boxes start left of and above the
 * tensor, and run past its right and bottom edges; a rank-3 view (planes of rows)
 * is loaded the same way.
 *
 * Built twice: under the emulator (label emu), and by nvcc for sm_90a (label gpu),
 * where the hardware's TMA and cuTensorMapEncodeTiled check the emulator's.  The
 * misuse cases (reading a stage before its barrier, a short expect_tx, a missing
 * arrival) run under the emulator only.
 */
#include <vector>

#include "emu_test.h"
#include "kernels/tma_kernels.cuh"

typedef CUresult (*EncodeTiled)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

static EncodeTiled get_encode()
{
    void *fn = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
        return nullptr;
    return reinterpret_cast<EncodeTiled>(fn);
}

static const int W = 100, H = 37, PITCH = 112; /* elements; the row pitch is 224 bytes */

static uint16_t value_at(int x, int y) { return (uint16_t)(1 + ((x * 131 + y * 977) & 0x7ffe)); }

/* Runs the ring over the whole tensor; returns 0 and checks the bytes, or the launch error. */
static cudaError_t run_ring(EncodeTiled encode, const uint16_t *d_tensor, CUtensorMapSwizzle swz, int box_x, int box_y,
                            int bug, bool check, int *bad_out = nullptr)
{
    const unsigned sw = swz == CU_TENSOR_MAP_SWIZZLE_NONE ? 0 : swz == CU_TENSOR_MAP_SWIZZLE_32B ? 32
                                                          : swz == CU_TENSOR_MAP_SWIZZLE_64B ? 64 : 128;
    CUtensorMap map;
    cuuint64_t dims[2] = {W, H}, strides[1] = {PITCH * 2};
    cuuint32_t box[2] = {(cuuint32_t)box_x, (cuuint32_t)box_y}, estr[2] = {1, 1};
    CUresult cr = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void *)d_tensor, dims, strides, box, estr,
                         CU_TENSOR_MAP_INTERLEAVE_NONE, swz, CU_TENSOR_MAP_L2_PROMOTION_NONE,
                         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    CHECK(cr == CUDA_SUCCESS, "cuTensorMapEncodeTiled: swizzle %u box %dx%d: %d", sw, box_x, box_y, (int)cr);
    if (cr != CUDA_SUCCESS) return cudaErrorInvalidValue;

    TmaRing r;
    memset(&r, 0, sizeof r);
    r.box_x = box_x;
    r.box_y = box_y;
    r.x0 = -box_x / 2;
    r.y0 = -3;
    r.tiles_x = (W - r.x0 + box_x - 1) / box_x;
    int tiles_y = (H - r.y0 + box_y - 1) / box_y;
    r.tiles = r.tiles_x * tiles_y;
    r.box_bytes = (unsigned)(box_x * box_y * 2);
    r.stage_bytes = (r.box_bytes + 1023) / 1024 * 1024;
    r.bug = bug;
    std::vector<uint32_t> out((size_t)r.tiles * r.box_bytes / 4, 0xdeadbeefu);
    uint32_t *d_out = device_alloc<uint32_t>(out.size());
    cudaMemcpy(d_out, out.data(), out.size() * 4, cudaMemcpyHostToDevice);
    size_t smem = (size_t)TMA_STAGES * r.stage_bytes + 1024;
    cudaFuncSetAttribute(k_tma_ring, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    cudaError_t e = launch(k_tma_ring, dim3(1), dim3(TMA_CONSUMERS + 32), smem, map, r, d_out);
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e == cudaSuccess) {
        cudaMemcpy(out.data(), d_out, out.size() * 4, cudaMemcpyDeviceToHost);
        int bad = 0, first_t = -1, first_x = 0, first_y = 0;
        const unsigned row_bytes = (unsigned)box_x * 2;
        for (int t = 0; t < r.tiles; ++t) {
            const unsigned char *stage = reinterpret_cast<const unsigned char *>(out.data()) + (size_t)t * r.box_bytes;
            for (int y = 0; y < box_y; ++y)
                for (int x = 0; x < box_x; ++x) {
                    int gx = r.x0 + (t % r.tiles_x) * box_x + x, gy = r.y0 + (t / r.tiles_x) * box_y + y;
                    uint16_t want = (gx >= 0 && gx < W && gy >= 0 && gy < H) ? value_at(gx, gy) : 0;
                    unsigned off = (unsigned)y * row_bytes + (unsigned)x * 2;
                    if (sw) {
                        unsigned line = off / 128, chunk = (off % 128) / 16;
                        off = line * 128 + ((chunk ^ (line % (sw / 16))) * 16) + off % 16;
                    }
                    uint16_t got;
                    memcpy(&got, stage + off, 2);
                    if (got != want && bad++ == 0) {
                        first_t = t;
                        first_x = x;
                        first_y = y;
                    }
                }
        }
        if (bad_out) *bad_out = bad;
        if (check)
            CHECK(bad == 0, "swizzle %u, box %dx%d, %d tiles: %d elements wrong, first tile %d (%d, %d)", sw, box_x,
                  box_y, r.tiles, bad, first_t, first_x, first_y);
    } else {
        cudaGetLastError();
    }
    cudaFree(d_out);
    return e;
}

/* A rank-3 view of the same memory: planes of 8 rows of W, 9 rows apart (a row
 * skipped between planes), 4 planes; boxes of box_x x 6 rows x 2 planes from row -1
 * and plane -1, so boxes run off every edge of every dimension. */
static void run_ring3(EncodeTiled encode, const uint16_t *d_tensor, CUtensorMapSwizzle swz, int box_x)
{
    const int ROWS = 8, PLANES = 4, BOX_Y = 6, BOX_Z = 2;
    CUtensorMap map;
    cuuint64_t dims[3] = {W, ROWS, PLANES}, strides[2] = {PITCH * 2, PITCH * 2 * 9};
    cuuint32_t box[3] = {(cuuint32_t)box_x, BOX_Y, BOX_Z}, estr[3] = {1, 1, 1};
    CUresult cr = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, (void *)d_tensor, dims, strides, box, estr,
                         CU_TENSOR_MAP_INTERLEAVE_NONE, swz, CU_TENSOR_MAP_L2_PROMOTION_NONE,
                         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    CHECK(cr == CUDA_SUCCESS, "cuTensorMapEncodeTiled rank 3: %d", (int)cr);
    if (cr != CUDA_SUCCESS) return;
    const unsigned sw = swz == CU_TENSOR_MAP_SWIZZLE_128B ? 128 : 0;
    TmaRing r;
    memset(&r, 0, sizeof r);
    r.box_x = box_x;
    r.box_y = BOX_Y;
    r.box_z = BOX_Z;
    r.x0 = -box_x / 2;
    r.y0 = -1;
    r.z0 = -1;
    r.tiles_x = (W - r.x0 + box_x - 1) / box_x;
    r.tiles = r.tiles_x * ((PLANES - r.z0 + BOX_Z - 1) / BOX_Z);
    r.box_bytes = (unsigned)(box_x * BOX_Y * BOX_Z * 2);
    r.stage_bytes = (r.box_bytes + 1023) / 1024 * 1024;
    std::vector<uint32_t> out((size_t)r.tiles * r.box_bytes / 4, 0xdeadbeefu);
    uint32_t *d_out = device_alloc<uint32_t>(out.size());
    size_t smem = (size_t)TMA_STAGES * r.stage_bytes + 1024;
    cudaFuncSetAttribute(k_tma_ring, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    CHECK_CUDA(launch(k_tma_ring, dim3(1), dim3(TMA_CONSUMERS + 32), smem, map, r, d_out));
    CHECK_CUDA(cudaDeviceSynchronize());
    cudaMemcpy(out.data(), d_out, out.size() * 4, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int t = 0; t < r.tiles; ++t) {
        const unsigned char *stage = reinterpret_cast<const unsigned char *>(out.data()) + (size_t)t * r.box_bytes;
        for (int z = 0; z < BOX_Z; ++z)
            for (int y = 0; y < BOX_Y; ++y)
                for (int x = 0; x < box_x; ++x) {
                    int gx = r.x0 + (t % r.tiles_x) * box_x + x, gy = r.y0 + y, gz = r.z0 + (t / r.tiles_x) * BOX_Z + z;
                    bool in = gx >= 0 && gx < W && gy >= 0 && gy < ROWS && gz >= 0 && gz < PLANES;
                    uint16_t want = in ? value_at(gx, gz * 9 + gy) : 0;
                    unsigned off = ((unsigned)z * BOX_Y + (unsigned)y) * (unsigned)box_x * 2 + (unsigned)x * 2;
                    if (sw) {
                        unsigned line = off / 128, chunk = (off % 128) / 16;
                        off = line * 128 + ((chunk ^ (line % (sw / 16))) * 16) + off % 16;
                    }
                    uint16_t got;
                    memcpy(&got, stage + off, 2);
                    bad += got != want;
                }
    }
    CHECK(bad == 0, "rank 3, swizzle %u, box %dx%dx%d: %d elements wrong", sw, box_x, BOX_Y, BOX_Z, bad);
    cudaFree(d_out);
}

int main()
{
#ifndef FAB_EMULATE_CUDA
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    if (major < 9) {
        printf("SKIP: TMA needs sm_90 or later (this GPU is sm_%d0)\n", major);
        return 77;
    }
#endif
    EncodeTiled encode = get_encode();
    CHECK(encode != nullptr, "cuTensorMapEncodeTiled not found");
    if (!encode) return emu_test_finish();
    std::vector<uint16_t> host((size_t)PITCH * H, 0xffff);
    for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) host[(size_t)y * PITCH + x] = value_at(x, y);
    uint16_t *d_tensor = device_alloc<uint16_t>(host.size());
    cudaMemcpy(d_tensor, host.data(), host.size() * 2, cudaMemcpyHostToDevice);

    struct {
        CUtensorMapSwizzle swz;
        int box_x, box_y;
    } cases[] = {{CU_TENSOR_MAP_SWIZZLE_NONE, 24, 5},  {CU_TENSOR_MAP_SWIZZLE_NONE, 8, 40},
                 {CU_TENSOR_MAP_SWIZZLE_32B, 16, 8},   {CU_TENSOR_MAP_SWIZZLE_64B, 32, 16},
                 {CU_TENSOR_MAP_SWIZZLE_128B, 64, 16}, {CU_TENSOR_MAP_SWIZZLE_128B, 64, 64}};
    for (auto &c : cases) CHECK_CUDA(run_ring(encode, d_tensor, c.swz, c.box_x, c.box_y, TMA_OK, true));

    run_ring3(encode, d_tensor, CU_TENSOR_MAP_SWIZZLE_NONE, 24);
    run_ring3(encode, d_tensor, CU_TENSOR_MAP_SWIZZLE_128B, 64);

    /* the encoder rejects what the hardware cannot do */
    CUtensorMap map;
    cuuint64_t dims[2] = {W, H}, bad_strides[1] = {PITCH * 2 + 8};
    cuuint32_t box[2] = {64, 16}, estr[2] = {1, 1};
    CHECK(encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, d_tensor, dims, bad_strides, box, estr,
                 CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_NONE,
                 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS,
          "a row stride that is not a multiple of 16 was accepted");

#ifdef FAB_EMULATE_CUDA
    int old = fab_emu_set_error_mode(1);
    /* a stage read before its barrier: the race detector reports it, or (without it) the
     * read sees the poisoned stage, the load landing only at the wait */
    int bad = 0;
    cudaError_t e = run_ring(encode, d_tensor, CU_TENSOR_MAP_SWIZZLE_128B, 64, 16, TMA_NO_FULL_WAIT, false, &bad);
    CHECK(e == cudaSuccess ? bad > 0 : strstr(fab_emu_last_message(), "race") != nullptr,
          "reading a stage before its barrier went unnoticed: %s", e == cudaSuccess ? "" : fab_emu_last_message());
    int smem_old = fab_emu_set_smemcheck(0), race_old = fab_emu_set_racecheck(0);
    bad = 0;
    e = run_ring(encode, d_tensor, CU_TENSOR_MAP_SWIZZLE_128B, 64, 16, TMA_NO_FULL_WAIT, false, &bad);
    CHECK(e == cudaSuccess && bad > 0, "without the race check, an early read saw the landed data (%d wrong)", bad);
    fab_emu_set_smemcheck(smem_old);
    fab_emu_set_racecheck(race_old);
    e = run_ring(encode, d_tensor, CU_TENSOR_MAP_SWIZZLE_128B, 64, 16, TMA_SHORT_EXPECT, true);
    CHECK(e != cudaSuccess && strstr(fab_emu_last_message(), "deadlock"), "short expect_tx: %s",
          fab_emu_last_message());
    e = run_ring(encode, d_tensor, CU_TENSOR_MAP_SWIZZLE_64B, 32, 16, TMA_NO_EMPTY_ARRIVE, true);
    CHECK(e != cudaSuccess && strstr(fab_emu_last_message(), "deadlock"), "no arrival on empty: %s",
          fab_emu_last_message());
    fab_emu_set_error_mode(old);
#endif
    cudaFree(d_tensor);
    return emu_test_finish();
}
