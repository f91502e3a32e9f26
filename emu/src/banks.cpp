/*
 * banks.cpp -- shared-memory bank conflicts of the accesses the emulator sees.
 *
 * Shared memory is 32 banks of 4-byte words; a warp's access is served in
 * wavefronts, each of which reads or writes at most one distinct word per bank
 * (lanes on the same word share it). The model, per warp-wide instruction:
 *   - ldmatrix / stmatrix: each 8x8 matrix is one phase of 8 rows x 16 bytes;
 *     ideal 1 wavefront per matrix, conflict-free when its 8 rows fall in 8
 *     different groups of 4 banks.
 *   - cp.async's destination writes, and the plain loads and stores kernels make
 *     through fab__ld_shared / fab__st_shared: the lanes of a warp are split into
 *     phases of 128 bytes (8 lanes for 16-byte accesses, 16 for 8-byte, all 32
 *     for 4-byte); ideal 1 wavefront per phase that has a lane.
 * Wavefronts of a phase = the largest number of distinct words any one bank
 * holds among the phase's accesses; conflicts = wavefronts - ideal.
 *
 * ldmatrix and stmatrix are warp collectives, so their 32 row addresses come
 * together. cp.async and plain accesses are issued per lane: each lane logs its
 * addresses, and when the whole warp next meets (a collective of all its live lanes, a block
 * barrier, the block's end) the k-th copies of its lanes are taken as one
 * instruction. That is the SIMT view of converged code, and of a loop whose
 * lanes run different trip counts (iteration k of the lanes that reach it). An
 * access that some lanes skip under a condition of their own inside such a stretch
 * shifts the count of those lanes: kernels make their shared accesses
 * unconditionally (or under warp-uniform conditions) and predicate what follows.
 *
 * Bare C++ loads and stores of shared memory are never seen; they are not
 * modelled. Addresses are taken relative to the block's
 * dynamic shared memory (128-byte aligned, as on the GPU).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mutex>
#include <string>

#include "internal.h"

namespace fab_emu {

/* The last conflict seen: its kernel, block and description; the kernel is named
 * only when fab_emu_bank_conflict_example asks (naming reads symbol tables). */
static std::mutex g_example_mu;
static const void *g_example_kernel;
static uint3 g_example_block;
static std::string g_example_what;

/* Bank-relative address: offset in the dynamic shared memory where it is one. */
static uintptr_t bank_addr(const Block &b, const void *p)
{
    uintptr_t a = (uintptr_t)p, base = (uintptr_t)b.smem;
    return (b.smem && a >= base && a - base < b.launch->smem) ? a - base : a;
}

/* Wavefronts needed by n accesses (addr[i], bytes[i]) served in one phase: the
 * most distinct words any one bank holds. A phase spans at most 128 bytes of
 * accesses, so at most 32 words (64 with room to spare). */
static unsigned phase_wavefronts(const uintptr_t *addr, const unsigned *bytes, int n)
{
    uintptr_t distinct[64];
    int nd = 0;
    for (int i = 0; i < n; ++i)
        for (uintptr_t w = addr[i] >> 2; w <= (addr[i] + bytes[i] - 1) >> 2; ++w) {
            int k = 0;
            while (k < nd && distinct[k] != w) ++k;
            if (k == nd && nd < 64) distinct[nd++] = w;
        }
    unsigned per_bank[32] = {}, worst = 0;
    for (int k = 0; k < nd; ++k)
        if (++per_bank[distinct[k] & 31] > worst) worst = per_bank[distinct[k] & 31];
    return worst;
}

/* One instruction's conflict: wavefronts > ideal (the caller counted the wavefronts). */
static void record_conflict(const Block &b, unsigned wavefronts, unsigned ideal, const std::string &what)
{
    count_stat(STAT_SMEM_CONFLICTS, wavefronts - ideal);
    std::lock_guard<std::mutex> lock(g_example_mu);
    g_example_kernel = b.launch->kernel;
    g_example_block = b.idx;
    g_example_what = what + ": " + std::to_string(wavefronts) + " wavefronts where " + std::to_string(ideal) +
                     " would do";
}

void bank_matrix(const Block &b, unsigned warp, const void *const row_addr[32], int nmat, bool store)
{
    unsigned total = 0;
    std::string detail;
    for (int m = 0; m < nmat; ++m) {
        uintptr_t addr[8];
        unsigned bytes[8];
        for (int r = 0; r < 8; ++r) {
            addr[r] = bank_addr(b, row_addr[8 * m + r]);
            bytes[r] = 16;
        }
        unsigned wf = phase_wavefronts(addr, bytes, 8);
        total += wf;
        if (wf > 1 && detail.empty()) {
            char buf[160];
            snprintf(buf, sizeof buf, "; matrix %d's rows (lanes %d-%d) at shared offsets 0x%lx, 0x%lx, 0x%lx, ...", m,
                     8 * m, 8 * m + 7, (unsigned long)addr[0], (unsigned long)addr[1], (unsigned long)addr[2]);
            detail = buf;
        }
    }
    count_stat(STAT_SMEM_REQUESTS, 1);
    count_stat(STAT_SMEM_WAVEFRONTS, total);
    if (total > (unsigned)nmat)
        record_conflict(b, total, (unsigned)nmat,
                        std::string(store ? "stmatrix" : "ldmatrix") + ".x" + std::to_string(nmat) + " by warp " +
                            std::to_string(warp) + detail);
}

void bank_note(Thread &t, const void *p, unsigned bytes, SmemKind kind)
{
    const Block &b = *tl_block;
    t.bank_cp.push_back(SmemAccess{bank_addr(b, p), bytes, kind});
}

static const char *kind_name(SmemKind k)
{
    return k == SMEM_CP_ASYNC ? "cp.async" : k == SMEM_STORE ? "st.shared" : "ld.shared";
}

void bank_flush_warp(const Block &b, unsigned w)
{
    Thread *const *lanes = b.threads + w * 32;
    size_t most = 0;
    for (unsigned l = 0; l < 32 && w * 32 + l < b.nthreads; ++l)
        if (lanes[l]->bank_cp.size() > most) most = lanes[l]->bank_cp.size();
    for (size_t k = 0; k < most; ++k) {
        /* instruction k of the warp: phases of 128 bytes by lane index */
        unsigned size = 4;
        SmemKind kind = SMEM_CP_ASYNC;
        for (unsigned l = 0; l < 32 && w * 32 + l < b.nthreads; ++l)
            if (k < lanes[l]->bank_cp.size()) {
                if (lanes[l]->bank_cp[k].bytes > size) size = lanes[l]->bank_cp[k].bytes;
                kind = lanes[l]->bank_cp[k].kind;
            }
        const unsigned per_phase = 128 / size;
        unsigned wavefronts = 0, ideal = 0;
        int worst_phase = -1;
        for (unsigned p0 = 0; p0 < 32; p0 += per_phase) {
            uintptr_t addr[32];
            unsigned bytes[32];
            int n = 0;
            for (unsigned l = p0; l < p0 + per_phase && w * 32 + l < b.nthreads; ++l)
                if (k < lanes[l]->bank_cp.size()) {
                    addr[n] = lanes[l]->bank_cp[k].addr;
                    bytes[n] = lanes[l]->bank_cp[k].bytes;
                    ++n;
                }
            if (!n) continue;
            unsigned wf = phase_wavefronts(addr, bytes, n);
            wavefronts += wf;
            ideal += 1;
            if (wf > 1 && worst_phase < 0) worst_phase = (int)p0;
        }
        count_stat(STAT_SMEM_REQUESTS, 1);
        count_stat(STAT_SMEM_WAVEFRONTS, wavefronts);
        if (wavefronts > ideal) {
            char buf[200];
            snprintf(buf, sizeof buf, "%s (%u bytes, the warp's access #%zu since it last met) by warp %u; lanes %d-%u",
                     kind_name(kind), size, k, w, worst_phase, worst_phase + per_phase - 1);
            record_conflict(b, wavefronts, ideal, buf);
        }
    }
    for (unsigned l = 0; l < 32 && w * 32 + l < b.nthreads; ++l) lanes[l]->bank_cp.clear();
}

} // namespace fab_emu

/* The last conflict, described (or ""). */
static std::string example_text()
{
    using namespace fab_emu;
    std::lock_guard<std::mutex> lock(g_example_mu);
    if (g_example_what.empty()) return std::string();
    return kernel_name(g_example_kernel) + ", block (" + std::to_string(g_example_block.x) + "," +
           std::to_string(g_example_block.y) + "," + std::to_string(g_example_block.z) + "): " + g_example_what;
}

/* FAB_EMU_BANKS=1: a summary of the model's counts on stderr at process exit. It
 * runs after thread-local objects are gone, so it builds its own text. */
static void print_bank_summary()
{
    fab_emu_stats s;
    fab_emu_get_stats(&s);
    const std::string ex = example_text();
    fprintf(stderr,
            "fab_emu: shared memory: %llu warp-wide ldmatrix/stmatrix/cp.async/ld.shared/st.shared instructions, "
            "%llu wavefronts, %llu of them bank conflicts%s%s\n",
            s.smem_requests, s.smem_wavefronts, s.smem_bank_conflicts, ex.empty() ? "" : "; last: ", ex.c_str());
}
static const int g_summary_at_exit = [] {
    const char *v = getenv("FAB_EMU_BANKS");
    if (v && *v && strcmp(v, "0") != 0) atexit(print_bank_summary);
    return 0;
}();

extern "C" const char *fab_emu_bank_conflict_example(void)
{
    static thread_local std::string copy;
    copy = example_text();
    return copy.c_str();
}
