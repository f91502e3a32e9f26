/*
 * wgmma.cpp -- emulation of sm_90a's warpgroup matrix multiply (wgmma.mma_async).
 *
 * One wgmma.m64nNk16 multiplies a 64x16 A by a 16xN B into a 64xN f32 accumulator
 * spread over the 4 warps of a warpgroup: warp w % 4 holds rows 16(w%4) .. +15, in
 * the layout of mma.sync's C fragment repeated every 8 columns (PTX ISA, "Matrix
 * fragments for wgmma.mma_async.m64nNk16", register D):
 *     d[4j + 2i + b] = D[16(w%4) + lane/4 + 8i][8j + 2(lane%4) + b].
 * The 4 warps' parts of the product are independent, so each warp is emulated on
 * its own, as a warp collective; when the block ends, the 4 warps of each
 * warpgroup must have issued as many (wgmma_thread_exit).
 *
 * Asynchrony.  wgmma only issues; its operands in shared memory and its
 * accumulators may be touched again only after wgmma.wait_group has retired its
 * group.  The emulator takes the latest legal moment: an operation is recorded at
 * issue and computed at the wait_group that retires it (or at the end of the
 * warp's thread, which is then an error).  A kernel that reads its accumulators
 * early sees old values; one that overwrites a stage still being read corrupts
 * the product, as it could on the GPU.
 *
 * Shared-memory operands (PTX ISA, "Matrix Descriptor Format" and the canonical
 * layouts; the same as CUTLASS's make_gmma_desc):
 *   bits 0-13 start address >> 4, 16-29 leading byte offset (LBO) >> 4, 32-45
 *   stride byte offset (SBO) >> 4, 49-51 base offset, 62-63 layout: 0 interleave
 *   (no swizzle), 1 128-byte, 2 64-byte, 3 32-byte swizzle.
 * With 16-byte units of 8 elements and W = 1, 2, 4, 8 units per swizzle row
 * (interleave, 32, 64, 128 bytes), element (i, k) of a K-major operand (i along M
 * or N) lies at
 *     interleave:  (i/8)*SBO + (k/8)*LBO + (i%8)*16 + (k%8)*2
 *     swizzled:    (i/8)*SBO + (i%8)*16W + (k/8)*16 + (k%8)*2
 * and of an MN-major operand at
 *     interleave:  (i/8)*SBO + (k/8)*LBO + (k%8)*16 + (i%8)*2
 *     swizzled:    (i/(8W))*LBO + (k/8)*SBO + (k%8)*16W + ((i/8)%W)*16 + (i%8)*2
 * from the start address.  A swizzle then XORs the 16-byte unit index (address
 * bits 4..) with the 128-byte row index (bits 7..), log2(W) bits of each, on the
 * absolute shared-memory address -- the pattern TMA writes with the same swizzle.
 * The emulator supports base offset 0 only, which needs the pattern's rows to start
 * at a multiple of 8*16W bytes (bits 7.. of the start address zero); it says so
 * otherwise.  The start address of an emulated descriptor is relative to the
 * block's dynamic shared memory (see fab__wgmma_desc), the only memory it can point
 * into.
 *
 * Numerics: products of 16-bit values summed in double, plus D, rounded once to
 * f32, as for mma.sync; the tensor core may differ in the last bits.
 */
#include <stdio.h>
#include <string.h>

#include "fab_emu/half_bits.h"
#include "internal.h"

namespace fab_emu {

static WgmmaWarp &warp_state(Block &b, unsigned w)
{
    if (b.wgmma.size() < b.nwarps) b.wgmma.resize(b.nwarps);
    return b.wgmma[w];
}

static const char *kind_name(WgmmaKind k) { return k == WGMMA_BF16 ? "bf16" : "f16"; }

static double elem16(uint16_t h, WgmmaKind k) { return k == WGMMA_BF16 ? bf16_to_f32(h) : f16_to_f32(h); }

/* Decoded descriptor. */
struct Desc {
    const unsigned char *start; /* absolute (host) address */
    unsigned lbo, sbo;          /* bytes */
    int w;                      /* 16-byte units per swizzle row: 1 (interleave), 2, 4, 8 */
};

static Desc decode(const Block &b, uint64_t desc, const char *what, const char *operand)
{
    Desc d;
    unsigned start = (unsigned)(desc & 0x3fffu) << 4;
    d.lbo = (unsigned)((desc >> 16) & 0x3fffu) << 4;
    d.sbo = (unsigned)((desc >> 32) & 0x3fffu) << 4;
    unsigned base_offset = (unsigned)((desc >> 49) & 7u);
    unsigned layout = (unsigned)(desc >> 62);
    static const int kUnits[4] = {1, 8, 4, 2};
    d.w = kUnits[layout];
    if (base_offset != 0)
        kernel_error("%s: descriptor of %s has base offset %u; the emulator supports 0 only (start the swizzle "
                     "pattern at a multiple of its %u bytes)",
                     what, operand, base_offset, 128u * d.w);
    if ((size_t)start >= b.launch->smem)
        kernel_error("%s: descriptor of %s starts at offset %u, past the block's %zu bytes of dynamic shared memory "
                     "(emulated descriptors hold offsets into dynamic shared memory: make them with fab__wgmma_desc)",
                     what, operand, start, b.launch->smem);
    d.start = b.smem + start;
    if (d.w > 1 && ((uintptr_t)d.start & (uintptr_t)(128 * d.w - 1) & ~(uintptr_t)127) != 0)
        kernel_error("%s: descriptor of %s: a %d-byte swizzle needs its pattern to start at a multiple of %d bytes "
                     "(address bits 7..%d zero), but the start address is %p",
                     what, operand, 16 * d.w, 128 * d.w, 6 + (d.w == 2 ? 1 : d.w == 4 ? 2 : 3), (void *)d.start);
    return d;
}

/* Address of element (i, k) (i along M or N) of an operand; see the header comment. */
static const unsigned char *element(const Desc &d, bool mn_major, int i, int k)
{
    size_t off;
    if (d.w == 1)
        off = mn_major ? (size_t)(i / 8) * d.sbo + (size_t)(k / 8) * d.lbo + (size_t)(k % 8) * 16 + (size_t)(i % 8) * 2
                       : (size_t)(i / 8) * d.sbo + (size_t)(k / 8) * d.lbo + (size_t)(i % 8) * 16 + (size_t)(k % 8) * 2;
    else if (!mn_major)
        off = (size_t)(i / 8) * d.sbo + (size_t)(i % 8) * 16 * d.w + (size_t)(k / 8) * 16 + (size_t)(k % 8) * 2;
    else
        off = (size_t)(i / (8 * d.w)) * d.lbo + (size_t)(k / 8) * d.sbo + (size_t)(k % 8) * 16 * d.w +
              (size_t)((i / 8) % d.w) * 16 + (size_t)(i % 8) * 2;
    uintptr_t a = (uintptr_t)d.start + off;
    uintptr_t mask = (uintptr_t)(d.w - 1);
    a ^= ((a >> 7) & mask) << 4;
    return (const unsigned char *)a;
}

static double load_operand(const Block &b, Thread &reader, const Desc &d, bool mn_major, int i, int k, WgmmaKind kind,
                           const char *what, const char *operand)
{
    const unsigned char *p = element(d, mn_major, i, k);
    if (p < b.smem || p + 2 > b.smem + b.launch->smem)
        kernel_error("%s: element (%d, %d) of %s lies at offset %td, outside the block's %zu bytes of dynamic shared "
                     "memory (check the descriptor's LBO/SBO)",
                     what, i, k, operand, p - b.smem, b.launch->smem);
    if (b.shadow) shadow_async_proxy_read(const_cast<Block &>(b), reader, p, 2);
    uint16_t h;
    memcpy(&h, p, 2);
    return elem16(h, kind);
}

/* Computes one recorded operation for warp w. */
static void execute(Block &b, unsigned w, const WgmmaOp &op)
{
    char what[96];
    snprintf(what, sizeof what, "wgmma.mma_async.m64n%dk16.f32.%s.%s (%s)", op.n, kind_name(op.kind),
             kind_name(op.kind), op.a_in_regs ? "A in registers" : "A in shared memory");
    Thread &reader = *b.threads[w * 32];
    const int row0 = 16 * (int)(w % 4);
    double A[16][16];
    if (op.a_in_regs) {
        /* as mma.sync's A: a[r] holds row g + 8(r&1), k 2t + 8(r>>1) + {0,1} */
        for (int lane = 0; lane < 32; ++lane) {
            int g = lane >> 2, t = lane & 3;
            for (int r = 0; r < 4; ++r) {
                uint32_t v = op.a[lane][r];
                A[g + 8 * (r & 1)][2 * t + 8 * (r >> 1)] = elem16((uint16_t)(v & 0xffffu), op.kind);
                A[g + 8 * (r & 1)][2 * t + 8 * (r >> 1) + 1] = elem16((uint16_t)(v >> 16), op.kind);
            }
        }
    } else {
        Desc da = decode(b, op.desc_a, what, "A");
        for (int i = 0; i < 16; ++i)
            for (int k = 0; k < 16; ++k)
                A[i][k] = load_operand(b, reader, da, op.trans_a, row0 + i, k, op.kind, what, "A");
    }
    Desc db = decode(b, op.desc_b, what, "B");
    std::vector<double> B((size_t)op.n * 16); /* B[n][k] */
    for (int n = 0; n < op.n; ++n)
        for (int k = 0; k < 16; ++k) B[(size_t)n * 16 + k] = load_operand(b, reader, db, op.trans_b, n, k, op.kind, what, "B");
    const double sign = (op.neg_a ? -1.0 : 1.0) * (op.neg_b ? -1.0 : 1.0);
    for (int lane = 0; lane < 32; ++lane) {
        float *d = op.d[lane];
        int g = lane >> 2, t = lane & 3;
        for (int j = 0; j < op.n / 8; ++j)
            for (int i = 0; i < 2; ++i)
                for (int bb = 0; bb < 2; ++bb) {
                    int row = g + 8 * i, col = 8 * j + 2 * t + bb;
                    double s = 0;
                    for (int k = 0; k < 16; ++k) s += A[row][k] * B[(size_t)col * 16 + k];
                    float &acc = d[4 * j + 2 * i + bb];
                    acc = (float)(sign * s + (op.accumulate ? (double)acc : 0.0));
                }
    }
    count_stat(STAT_WGMMA, 1);
}

/* ---- the collectives ---- */

struct IssueIn {
    WgmmaOp op; /* d[0] holds this lane's accumulators, a[0] its A registers */
};

static void issue_fn(const CollGroup &g)
{
    const WgmmaOp &op0 = static_cast<const IssueIn *>(g.in[0])->op;
    if (g.present != 0xffffffffu)
        kernel_error("wgmma.mma_async is .sync.aligned: all 32 lanes of each warp of the warpgroup must execute it, but "
                     "lanes 0x%08x have exited",
                     ~g.present);
    Block &b = *tl_block;
    unsigned w = tl_thread->id.warp;
    WgmmaOp op = op0;
    for (int lane = 0; lane < 32; ++lane) {
        const WgmmaOp &o = static_cast<const IssueIn *>(g.in[lane])->op;
        if (o.desc_a != op0.desc_a || o.desc_b != op0.desc_b || o.accumulate != op0.accumulate)
            kernel_error("wgmma.mma_async: lanes 0 and %d of warp %u pass different descriptors or scale-d; they "
                         "must be the same across the warp",
                         lane, w);
        op.d[lane] = o.d[0];
        memcpy(op.a[lane], o.a[0], sizeof op.a[lane]);
    }
    WgmmaWarp &ws = warp_state(b, w);
    if (!ws.fenced)
        kernel_error("wgmma.mma_async without a wgmma.fence since the warp's last wgmma.wait_group: PTX needs one "
                     "before the first wgmma and whenever the accumulators (or A registers) were touched by other "
                     "instructions, which the emulator cannot see -- so it asks for one after every wait");
    op.group = ws.committed;
    ws.issued++;
    ws.pending.push_back(op);
}

static void commit_fn(const CollGroup &g)
{
    if (g.present != 0xffffffffu)
        kernel_error("wgmma.commit_group is .sync.aligned, but lanes 0x%08x of the warp have exited", ~g.present);
    warp_state(*tl_block, tl_thread->id.warp).committed++;
}

static void wait_fn(const CollGroup &g)
{
    if (g.present != 0xffffffffu)
        kernel_error("wgmma.wait_group is .sync.aligned, but lanes 0x%08x of the warp have exited", ~g.present);
    Block &b = *tl_block;
    unsigned w = tl_thread->id.warp;
    WgmmaWarp &ws = warp_state(b, w);
    unsigned long long keep = (unsigned long long)g.op; /* groups that may stay pending */
    unsigned long long limit = ws.committed > keep ? ws.committed - keep : 0;
    size_t done = 0;
    while (done < ws.pending.size() && ws.pending[done].group < limit) ++done; /* pending is in issue order */
    for (size_t i = 0; i < done; ++i) execute(b, w, ws.pending[i]);
    ws.pending.erase(ws.pending.begin(), ws.pending.begin() + (ptrdiff_t)done);
    ws.fenced = false;
}

static void fence_fn(const CollGroup &g)
{
    if (g.present != 0xffffffffu)
        kernel_error("wgmma.fence is .sync.aligned, but lanes 0x%08x of the warp have exited", ~g.present);
    warp_state(*tl_block, tl_thread->id.warp).fenced = true;
}

void wgmma(WgmmaKind kind, int n, float *d, const uint32_t *a, uint64_t desc_a, uint64_t desc_b, bool accumulate,
           bool neg_a, bool neg_b, bool trans_a, bool trans_b)
{
    if (n < 8 || n > 256 || n % 8 != 0) kernel_error("wgmma.mma_async: N = %d; it must be a multiple of 8 in [8, 256]", n);
    if (a && trans_a) kernel_error("wgmma.mma_async: A in registers cannot be transposed (imm-trans-a)");
    IssueIn in;
    memset(&in, 0, sizeof in);
    in.op.kind = kind;
    in.op.n = n;
    in.op.a_in_regs = a != nullptr;
    in.op.trans_a = trans_a;
    in.op.trans_b = trans_b;
    in.op.neg_a = neg_a;
    in.op.neg_b = neg_b;
    in.op.accumulate = accumulate;
    in.op.desc_a = desc_a;
    in.op.desc_b = desc_b;
    in.op.d[0] = d;
    if (a) memcpy(in.op.a[0], a, sizeof in.op.a[0]);
    warp_collective(issue_fn, kind * 1024 + n * 2 + (a != nullptr), 0xffffffffu, &in, nullptr, "wgmma.mma_async");
}

void wgmma_fence() { warp_collective(fence_fn, 0, 0xffffffffu, nullptr, nullptr, "wgmma.fence"); }
void wgmma_commit() { warp_collective(commit_fn, 0, 0xffffffffu, nullptr, nullptr, "wgmma.commit_group"); }
void wgmma_wait(int n)
{
    if (n < 0 || n > 7) kernel_error("wgmma.wait_group %d: N must be in [0, 7]", n);
    warp_collective(wait_fn, n, 0xffffffffu, nullptr, nullptr, "wgmma.wait_group");
}

uint64_t wgmma_desc(const void *smem, unsigned lbo_bytes, unsigned sbo_bytes, int layout)
{
    Block *b = tl_block;
    if (!b) kernel_error("fab__wgmma_desc called outside a kernel");
    const unsigned char *p = static_cast<const unsigned char *>(smem);
    if (p < b->smem || p >= b->smem + b->launch->smem)
        kernel_error("fab__wgmma_desc: %p is not in the block's dynamic shared memory (the emulator's descriptors "
                     "reach only that)",
                     smem);
    uintptr_t off = (uintptr_t)(p - b->smem);
    if (off % 16 || lbo_bytes % 16 || sbo_bytes % 16)
        kernel_error("fab__wgmma_desc: start offset %zu, LBO %u and SBO %u must be multiples of 16 bytes", (size_t)off,
                     lbo_bytes, sbo_bytes);
    if (off >> 18 || lbo_bytes >> 18 || sbo_bytes >> 18 || layout < 0 || layout > 3)
        kernel_error("fab__wgmma_desc: start offset %zu, LBO %u or SBO %u past 14 bits of 16 bytes, or layout %d "
                     "not in 0..3",
                     (size_t)off, lbo_bytes, sbo_bytes, layout);
    return (uint64_t)(off >> 4) | ((uint64_t)(lbo_bytes >> 4) << 16) | ((uint64_t)(sbo_bytes >> 4) << 32) |
           ((uint64_t)layout << 62);
}

void wgmma_thread_exit(Block &b, Thread &t)
{
    if (b.wgmma.size() > t.id.warp && !b.wgmma[t.id.warp].pending.empty())
        kernel_error("the thread ends with %zu wgmma.mma_async of its warp not retired by wgmma.wait_group (its "
                     "accumulators are never written)",
                     b.wgmma[t.id.warp].pending.size());
    /* The block's last thread: wgmma is warpgroup-wide, so the 4 warps of each
     * warpgroup must have issued as many. */
    if (b.live != 1 || b.wgmma.empty()) return;
    for (unsigned g = 0; g + 3 < b.wgmma.size(); g += 4) {
        unsigned long long n0 = b.wgmma[g].issued;
        for (unsigned w = g + 1; w < g + 4; ++w) {
            unsigned long long nw = b.wgmma[w].issued;
            if (nw != n0)
                kernel_error("wgmma.mma_async is warpgroup-wide, but warp %u issued %llu and warp %u %llu: all 4 warps "
                             "of warpgroup %u must issue each one",
                             g, n0, w, nw, g / 4);
        }
    }
}

bool collective_is_wgmma_issue(CollFn fn) { return fn == issue_fn || fn == fence_fn || fn == commit_fn; }

} // namespace fab_emu
