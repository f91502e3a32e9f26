/*
 * test_banks.cu -- the emulator's shared-memory bank model (banks.cpp) against
 * access patterns whose wavefronts are known by hand: 32 banks of 4 bytes; an
 * ldmatrix matrix is one phase of 8 rows x 16 bytes; a cp.async instruction is
 * phases of 128 bytes (8 lanes of 16 bytes, 16 of 8, 32 of 4), and so are the
 * plain loads and stores of fab__ld_shared / fab__st_shared.
 */
#include "emu_test.h"
#include "kernels/bank_kernels.cuh"

struct Counts {
    unsigned long long requests, wavefronts, conflicts;
};

static fab_emu_stats g_before;
static void begin() { fab_emu_get_stats(&g_before); }
static Counts since()
{
    cudaDeviceSynchronize();
    fab_emu_stats s;
    fab_emu_get_stats(&s);
    return Counts{s.smem_requests - g_before.smem_requests, s.smem_wavefronts - g_before.smem_wavefronts,
                  s.smem_bank_conflicts - g_before.smem_bank_conflicts};
}

static void expect(const char *what, Counts c, unsigned long long requests, unsigned long long wavefronts,
                   unsigned long long conflicts)
{
    CHECK(c.requests == requests && c.wavefronts == wavefronts && c.conflicts == conflicts,
          "%s: %llu requests, %llu wavefronts, %llu conflicts; expected %llu, %llu, %llu", what, c.requests,
          c.wavefronts, c.conflicts, requests, wavefronts, conflicts);
}

static void test_ldmatrix(uint32_t *out)
{
    const size_t smem = 32 * 144;
    for (int trans = 0; trans < 2; ++trans) {
        begin(); /* 144-byte rows (16 bytes of padding): 8 rows in 8 bank groups */
        CHECK_CUDA(launch(k_bank_ldmatrix, 1, 32, smem, 144, 0, trans, out));
        expect("ldmatrix.x4, padded 144-byte rows", since(), 1, 4, 0);
        begin(); /* 128-byte rows: all 8 rows of a matrix in one bank group */
        CHECK_CUDA(launch(k_bank_ldmatrix, 1, 32, smem, 128, 0, trans, out));
        expect("ldmatrix.x4, 128-byte rows", since(), 1, 32, 28);
        begin(); /* 64-byte rows: two groups, four rows each */
        CHECK_CUDA(launch(k_bank_ldmatrix, 1, 32, smem, 64, 0, trans, out));
        expect("ldmatrix.x4, 64-byte rows", since(), 1, 16, 12);
        begin(); /* 64-byte rows with matmul_sm80's swizzle */
        CHECK_CUDA(launch(k_bank_ldmatrix, 1, 32, smem, 64, 1, trans, out));
        expect("ldmatrix.x4, swizzled 64-byte rows", since(), 1, 4, 0);
        begin(); /* every lane the same row: one wavefront per matrix */
        CHECK_CUDA(launch(k_bank_ldmatrix, 1, 32, smem, 0, 0, trans, out));
        expect("ldmatrix.x4, one row for all", since(), 1, 4, 0);
    }
    const char *ex = fab_emu_bank_conflict_example();
    CHECK(strstr(ex, "ldmatrix.x4 by warp 0") && strstr(ex, "matrix 0") && strstr(ex, "16 wavefronts where 4"),
          "the example names the instruction, warp, matrix and wavefronts: \"%s\"", ex);
}

static void test_cp_async(const unsigned char *src)
{
    const size_t smem = 4096;
    static const struct {
        const char *what;
        int size, stride;
        unsigned long long wavefronts, conflicts;
    } cases[] = {
        {"cp.async 16, contiguous", 16, 16, 4, 0},  {"cp.async 16, 128-byte stride", 16, 128, 32, 28},
        {"cp.async 16, 32-byte stride", 16, 32, 8, 4}, {"cp.async 8, contiguous", 8, 8, 2, 0},
        {"cp.async 4, contiguous", 4, 4, 1, 0},     {"cp.async 4, 8-byte stride", 4, 8, 2, 1},
    };
    for (const auto &c : cases) {
        begin();
        CHECK_CUDA(launch(k_bank_cp_async, 1, 32, smem, c.size, c.stride, 0, src));
        expect(c.what, since(), 1, c.wavefronts, c.conflicts);
    }
    const char *ex = fab_emu_bank_conflict_example();
    CHECK(strstr(ex, "cp.async (4 bytes") && strstr(ex, "2 wavefronts where 1"), "example: \"%s\"", ex);
    begin(); /* every lane the same word: a write-write race, so the race detector is off */
    int smemcheck = fab_emu_set_smemcheck(0);
    CHECK_CUDA(launch(k_bank_cp_async, 1, 32, smem, 4, 0, 0, src));
    fab_emu_set_smemcheck(smemcheck);
    expect("cp.async 4, one word for all", since(), 1, 1, 0);

    /* the copies on either side of a barrier are two instructions; the second has
     * lanes 0-15 only (2 phases); two warps, each its own instructions */
    begin();
    CHECK_CUDA(launch(k_bank_cp_async, 1, 64, smem, 16, 16, 1, src));
    expect("cp.async across a barrier, two warps", since(), 4, 12, 0);
    /* a loop of 48 chunks: iteration 0 all lanes (4 phases), iteration 1 lanes 0-15 (2) */
    begin();
    CHECK_CUDA(launch(k_bank_cp_loop, 1, 32, smem, 48, src));
    expect("cp.async loop of 48 chunks", since(), 2, 6, 0);
}

/* A kernel with internal linkage, so absent from the dynamic symbol table that
 * dladdr reads (as the library's kernels are, built with hidden symbols): the
 * emulator names it from the ELF .symtab. */
namespace {
__global__ void k_bank_named_from_symtab(float *out)
{
    FAB_DYNAMIC_SMEM(float, smem);
    fab__st_shared(smem + 2 * threadIdx.x, 1.0f); /* 2-word stride: 2 wavefronts */
    out[threadIdx.x] = 0;
}
} // namespace

static void test_kernel_name(float *out)
{
    begin();
    CHECK_CUDA(launch(k_bank_named_from_symtab, 1, 32, 256, out));
    expect("st.shared float, 2-word stride, internal-linkage kernel", since(), 1, 2, 1);
    const char *ex = fab_emu_bank_conflict_example();
    CHECK(strstr(ex, "k_bank_named_from_symtab") != nullptr, "the kernel is named: \"%s\"", ex);
}

static void test_plain(float *out)
{
    const size_t smem = 32 * 33 * 8;
    static const struct {
        const char *what;
        int stride, wide, write;
        unsigned long long wavefronts, conflicts;
    } cases[] = {
        {"st.shared float, contiguous", 1, 0, 1, 1, 0},
        {"st.shared float, 2-word stride", 2, 0, 1, 2, 1},
        {"ld.shared float, 33-word stride (a padded column)", 33, 0, 0, 1, 0},
        {"ld.shared float, one word for all", 0, 0, 0, 1, 0},
        {"st.shared float2, contiguous (2 half-warp phases)", 2, 1, 1, 2, 0},
        {"ld.shared float2, 4-word stride", 4, 1, 0, 4, 2},
    };
    for (const auto &c : cases) {
        begin();
        CHECK_CUDA(launch(k_bank_plain, 1, 32, smem, c.stride, c.wide, c.write, out));
        expect(c.what, since(), 1, c.wavefronts, c.conflicts);
    }
    const char *ex = fab_emu_bank_conflict_example();
    CHECK(strstr(ex, "ld.shared (8 bytes") && strstr(ex, "4 wavefronts where 2"), "example: \"%s\"", ex);
}

int main()
{
    fab_emu_set_racecheck(0); /* one run per launch: the counts as they are */
    uint32_t *out = nullptr;
    unsigned char *src = nullptr;
    CHECK_CUDA(cudaMalloc((void **)&out, 32 * sizeof(uint32_t)));
    CHECK_CUDA(cudaMalloc((void **)&src, 16));
    CHECK_CUDA(cudaMemset(src, 0, 16));
    CHECK(fab_emu_bank_conflict_example()[0] == '\0', "no conflict yet: \"%s\"", fab_emu_bank_conflict_example());
    test_ldmatrix(out);
    test_cp_async(src);
    test_plain(reinterpret_cast<float *>(out));
    test_kernel_name(reinterpret_cast<float *>(out));
    cudaFree(out);
    cudaFree(src);
    return emu_test_finish();
}
