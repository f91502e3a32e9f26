/*
 * setmaxnreg.cpp -- emulation of sm_90a's setmaxnreg.{inc,dec}.sync.aligned.u32 N.
 *
 * A warp-specialised kernel moves registers between warpgroups: the producer
 * releases what it does not need (.dec) and the consumers take it (.inc).  The
 * registers come from a pool per block: the block starts with R0 per thread, every
 * warp holding 32 R0, and the pool holds what .dec released.  An .inc waits until
 * the pool has 32 (N - current) registers for the warp; when no other warp will
 * free them the GPU hangs, and the emulator reports the deadlock instead.
 *
 * The emulator cannot know the count ptxas gave the kernel, so it takes R0 =
 * 65536 / threads rounded down to a multiple of 8, at most 256: the count of a kernel
 * compiled with __launch_bounds__(threads, 1) that uses the whole register file.
 * ptxas gives a kernel that contains setmaxnreg exactly that (it reports 168 for 384
 * threads whatever the code needs), and a kernel sized to that budget is what works
 * on the GPU: producer N_p and consumers N_c with 128 (N_p + 2 N_c) <= 384 R0 (64512
 * at R0 = 168), the registers the block holds from its launch.
 *
 * Checks (PTX ISA, setmaxnreg): N a multiple of 8 in [24, 256]; all 32 lanes of the
 * warp execute it (.sync.aligned); .inc never lowers and .dec never raises the
 * count; the warp belongs to a whole warpgroup; and, when the block ends, the 4
 * warps of each warpgroup executed the same sequence of setmaxnreg.
 */
#include "internal.h"

namespace fab_emu {

static unsigned initial_regs(const Block &b)
{
    unsigned r = 65536u / (b.nwarps * 32u) / 8u * 8u;
    return r > 256u ? 256u : r;
}

static RegWarp &reg_state(Block &b, unsigned w)
{
    if (b.regwarps.empty()) {
        b.regwarps.resize(b.nwarps);
        const unsigned r0 = initial_regs(b);
        for (RegWarp &rw : b.regwarps) rw.regs = r0;
    }
    return b.regwarps[w];
}

static void setmaxnreg_fn(const CollGroup &g)
{
    const unsigned n = (unsigned)g.op >> 1;
    const bool inc = g.op & 1;
    const char *what = inc ? "setmaxnreg.inc" : "setmaxnreg.dec";
    if (g.present != 0xffffffffu)
        kernel_error("%s is .sync.aligned: all 32 lanes of the warp must execute it, but lanes 0x%08x have exited", what,
                     ~g.present);
    Block &b = *tl_block;
    const unsigned w = tl_thread->id.warp;
    if (b.nthreads % 128 != 0)
        kernel_error("%s: the block has %u threads; setmaxnreg needs whole warpgroups (a multiple of 128)", what,
                     b.nthreads);
    RegWarp &rw = reg_state(b, w);
    if (inc ? n < rw.regs : n > rw.regs)
        kernel_error("%s %u: warp %u holds %u registers per thread; .inc may not lower the count, nor .dec raise it",
                     what, n, w, rw.regs);
    rw.history.push_back(inc ? (int)n : -(int)n);
    if (inc) {
        rw.want = n;
    } else {
        b.reg_free += 32ull * (rw.regs - n);
        rw.regs = n;
        b.mbar_progress++;
    }
}

void setmaxnreg(unsigned n, bool inc)
{
    if (n < 24 || n > 256 || n % 8)
        kernel_error("setmaxnreg %u: the count must be a multiple of 8 in [24, 256]", n);
    warp_collective(setmaxnreg_fn, (int)(n << 1 | (inc ? 1u : 0u)), 0xffffffffu, nullptr, nullptr,
                    inc ? "setmaxnreg.inc" : "setmaxnreg.dec");
    if (!inc) return;
    Block &b = *tl_block;
    RegWarp &rw = b.regwarps[tl_thread->id.warp];
    while (rw.want) { /* the first lane that finds the registers free takes them for the warp */
        const unsigned long long need = 32ull * (rw.want - rw.regs);
        if (b.reg_free >= need) {
            b.reg_free -= need;
            rw.regs = rw.want;
            rw.want = 0;
            b.mbar_progress++;
            break;
        }
        if (wait_deadlocked(b))
            kernel_error("setmaxnreg.inc %u: deadlock: warp %u waits for %llu registers but the block's pool has %llu, "
                         "and no warp has freed any (setmaxnreg.dec) or moved an mbarrier since; the block started "
                         "with %u per thread",
                         rw.want, tl_thread->id.warp, need, b.reg_free, initial_regs(b));
        yield();
    }
}

void setmaxnreg_thread_exit(Block &b)
{
    if (b.live != 1 || b.regwarps.empty()) return; /* only the block's last thread */
    for (unsigned g = 0; g + 3 < b.nwarps; g += 4)
        for (unsigned w = g + 1; w < g + 4; ++w)
            if (b.regwarps[w].history != b.regwarps[g].history)
                kernel_error("setmaxnreg is warpgroup-wide, but warps %u and %u of warpgroup %u ran different "
                             "sequences of it (%zu and %zu instructions): all 4 warps must execute each one",
                             g, w, g / 4, b.regwarps[g].history.size(), b.regwarps[w].history.size());
}

} // namespace fab_emu
