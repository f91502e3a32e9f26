/*
 * shadow.cpp -- the shared-memory race detector.
 *
 * Every shared-memory access that goes through emulator code -- cp.async (a write),
 * ldmatrix (a read), stmatrix (a write), fab__ld_shared / fab__st_shared (a plain
 * read or write) -- is checked against a shadow record of its
 * 4-byte words: the last write (thread, clocks, whether it is a cp.async still in
 * flight) and, per warp, the last read since that write.  Two accesses by different
 * threads to the same word, at least one a write, must be ordered by happens-before;
 * otherwise the launch fails with a report naming both threads and both instructions.
 *
 * Readers: per warp and word the last read (epochs and lane); when lanes of one warp
 * read without a join of all its lanes between them (plain ld.shared; an ldmatrix is
 * one warp-wide read), a several-readers mark instead (slot_multi).
 *
 * Happens-before (vector clocks, FastTrack-style, at two levels):
 *   - between warps: each thread has a clock per warp of the block (vc); a barrier
 *     (bar.sync/__syncthreads, bar.arrive, bar.red) joins the clocks of the warps that
 *     arrive and hands the join to the warps that wait.  Exited threads count as arrived
 *     at later __syncthreads (as PTX's `exit` does for barriers), so what they did before
 *     exiting is ordered before what follows.  A named barrier with a thread count orders
 *     only the warps that took part in that phase.
 *   - between lanes of one warp: a clock per lane (lv); every warp collective
 *     (__syncwarp, shuffles, votes, mma, ldmatrix, ...) joins the lanes that take part,
 *     and so does a block barrier for the whole warp.  The collective's own accesses
 *     (ldmatrix's row reads) happen at the join, attributed to the lane giving the row
 *     address.
 *   - cp.async: the write happens at some moment between the issue and the
 *     cp.async.wait_group (or wait_all, or thread exit) that completes its group.  At
 *     issue it is checked as a write by the issuing thread; until the wait any access of
 *     those bytes (by any thread, the issuer included) is a race; at the wait it becomes
 *     an ordinary write with the issuer's clocks at the wait.
 *
 * Shadow storage: for the block's dynamic shared memory a flat array, one Cell per
 * 4-byte word plus nwarps reader slots, reused by every block the worker runs and reset
 * lazily by a generation stamp (no clearing per block); for anything else (static
 * __shared__ variables, which are thread_local) a hash map, cleared per block.
 */
#include <stdio.h>
#include <string.h>

#include <unordered_map>

#include "internal.h"

namespace fab_emu {

namespace {

const uint16_t kNone = 0xffff;
enum : uint8_t { F_PENDING = 1, F_WRITER_STMATRIX = 2, F_WRITER_STORE = 4 };

struct Cell {
    uint64_t gen;   /* block generation this record belongs to */
    uint16_t wtid;  /* last writer (linear thread index) or kNone */
    uint8_t flags;
    uint8_t gfence; /* written through the generic proxy: 0x80 | the writer's proxy_fences (7 bits) then; else 0 */
    uint32_t wwep;  /* writer's warp epoch */
    uint32_t wlep;  /* writer's lane epoch */
};

/* A reader slot: warp epoch << 32 | lane epoch << 5 | lane; 0 = none (epochs start at 1).
 * Lane epochs keep 26 bits; bit 31 marks a slot of several readers (slot_multi). */
const uint32_t kLepMask = 0x3ffffffu;
const uint64_t kMulti = 1ull << 31;
inline uint64_t slot_make(uint32_t wep, uint32_t lep, unsigned lane)
{
    return ((uint64_t)wep << 32) | ((uint64_t)(lep & kLepMask) << 5) | lane;
}
/* Several lanes of the warp read the word without a warp-wide join between them
 * (plain ld.shared; ldmatrix is one instruction): the slot keeps the readers' latest
 * warp epoch, the warp's count of full joins at the time (in the lane-epoch field),
 * and the last reader's lane (for the report). A write by a lane of the same warp is
 * ordered after all those reads once the warp has joined in full again. */
inline uint64_t slot_multi(uint32_t wep, uint32_t joins, unsigned lane)
{
    return ((uint64_t)wep << 32) | kMulti | ((uint64_t)(joins & kLepMask) << 5) | lane;
}

std::atomic<uint64_t> g_generation{0};

} // namespace

struct Shadow {
    uint64_t gen = 0;
    unsigned nwarps = 0, nthreads = 0;
    unsigned char *dyn = nullptr; /* the block's dynamic shared memory */
    size_t dyn_words = 0;
    std::vector<Cell> cells;      /* dynamic: one per word; reused, stamped */
    std::vector<uint64_t> readers;
    /* static __shared__ (anything not in dyn): word address -> index into scells */
    std::unordered_map<uintptr_t, uint32_t> smap;
    std::vector<Cell> scells;
    std::vector<uint64_t> sreaders;
    /* clocks */
    std::vector<uint32_t> vc, lv;
    std::vector<uint32_t> joins; /* per warp: joins of all its lanes (collectives, barriers) */
    bool reported = false;
};

static thread_local Shadow tl_shadow; /* per worker thread, reused by its blocks */

Shadow *shadow_acquire(Block &b)
{
    Shadow &s = tl_shadow;
    s.gen = ++g_generation;
    s.nwarps = b.nwarps;
    s.nthreads = b.nthreads;
    s.dyn = b.smem;
    s.dyn_words = b.launch->smem / 4;
    if (s.cells.size() < s.dyn_words) s.cells.resize(s.dyn_words, Cell{0, kNone, 0, 0, 0, 0});
    if (s.readers.size() < s.dyn_words * s.nwarps) s.readers.resize(s.dyn_words * s.nwarps, 0);
    s.smap.clear();
    s.scells.clear();
    s.sreaders.clear();
    s.vc.assign((size_t)b.nthreads * b.nwarps, 0);
    s.lv.assign((size_t)b.nthreads * 32, 0);
    s.joins.assign(b.nwarps, 0);
    s.reported = false;
    return &s;
}

void shadow_thread_init(Block &b, Thread &t)
{
    Shadow &s = *b.shadow;
    t.vc = &s.vc[(size_t)t.id.linear * s.nwarps];
    t.lv = &s.lv[(size_t)t.id.linear * 32];
    t.vc[t.id.warp] = 1;
    t.lv[t.id.lane] = 1;
}

/* ------------------------------------------------------------------ synchronisation */

void shadow_barrier_arrive(Block &b, Barrier &B, Thread &t, bool wait)
{
    (void)b;
    unsigned nw = b.shadow->nwarps;
    for (unsigned k = 0; k < nw; ++k)
        if (t.vc[k] > B.join[k]) B.join[k] = t.vc[k];
    /* bar.arrive: what this thread does from now on is not ordered before the waiters */
    if (!wait) t.vc[t.id.warp]++;
}

/* Lanes `lanes` of warp w synchronise: join their lane clocks (and those of exited
 * lanes, which count as having arrived). */
static void lane_join(Block &b, unsigned w, uint32_t lanes)
{
    uint32_t J[32] = {};
    uint32_t from = lanes | b.exited[w];
    if (from == 0xffffffffu) b.shadow->joins[w]++;
    for (uint32_t m = from; m; m &= m - 1) {
        unsigned l = (unsigned)__builtin_ctz(m);
        if (w * 32 + l >= b.nthreads) continue;
        const uint32_t *v = b.threads[w * 32 + l]->lv;
        for (int k = 0; k < 32; ++k) J[k] = v[k] > J[k] ? v[k] : J[k];
    }
    for (uint32_t m = lanes; m; m &= m - 1) {
        unsigned l = (unsigned)__builtin_ctz(m);
        memcpy(b.threads[w * 32 + l]->lv, J, sizeof J);
    }
}

static void lane_tick(Block &b, unsigned w, uint32_t lanes)
{
    for (uint32_t m = lanes; m; m &= m - 1) {
        unsigned l = (unsigned)__builtin_ctz(m);
        b.threads[w * 32 + l]->lv[l]++;
    }
}

void shadow_barrier_release(Block &b, Barrier &B, int id)
{
    Shadow &s = *b.shadow;
    unsigned nw = s.nwarps;
    if (B.count == 0) /* __syncthreads: exited threads count as arrived */
        for (unsigned i = 0; i < b.nthreads; ++i) {
            Thread &t = *b.threads[i];
            if (t.state != TState::Exited) continue;
            for (unsigned k = 0; k < nw; ++k)
                if (t.vc[k] > B.join[k]) B.join[k] = t.vc[k];
        }
    uint32_t released[32] = {};
    for (unsigned i = 0; i < b.nthreads; ++i) {
        Thread &t = *b.threads[i];
        if (t.state != TState::AtBarrier || t.bar_id != id) continue;
        memcpy(t.vc, B.join, nw * sizeof(uint32_t));
        t.vc[t.id.warp] = B.join[t.id.warp] + 1;
        released[t.id.warp] |= 1u << t.id.lane;
    }
    for (unsigned w = 0; w < nw; ++w)
        if (released[w]) {
            lane_join(b, w, released[w]);
            lane_tick(b, w, released[w]);
        }
}

void shadow_warp_sync_begin(Block &b, unsigned w, uint32_t lanes) { lane_join(b, w, lanes); }
void shadow_warp_sync_end(Block &b, unsigned w, uint32_t lanes) { lane_tick(b, w, lanes); }

/* ------------------------------------------------------------------ accesses */

static bool ordered_before(const Thread &t, uint16_t utid, uint32_t uwep, uint32_t ulep)
{
    unsigned uw = utid / 32, ul = utid % 32;
    if (uw != t.id.warp) return t.vc[uw] >= uwep;
    if (ul == t.id.lane) return true;
    return (t.lv[ul] & kLepMask) >= ulep;
}

static const char *op_name(ShadowOp op)
{
    switch (op) {
    case SH_LDMATRIX: return "ldmatrix (read)";
    case SH_STMATRIX: return "stmatrix (write)";
    case SH_LOAD: return "ld.shared (read)";
    case SH_STORE: return "st.shared (write)";
    case SH_TMA: return "cp.async.bulk.tensor (TMA write)";
    case SH_WGMMA: return "wgmma (read)";
    default: return "cp.async (write)";
    }
}

static std::string thread_desc(const Block &b, unsigned tid)
{
    const Thread &t = *b.threads[tid];
    char buf[96];
    snprintf(buf, sizeof buf, "thread (%u,%u,%u) [warp %u lane %u]", t.id.threadIdx.x, t.id.threadIdx.y,
             t.id.threadIdx.z, t.id.warp, t.id.lane);
    return buf;
}

static void report(Block &b, Thread &t, uintptr_t word, const char *kind, ShadowOp op, unsigned other,
                   const char *other_op, const char *why)
{
    Shadow &s = *b.shadow;
    if (s.reported || b.launch->failed) return;
    s.reported = true;
    char where_buf[128];
    if (s.dyn && word >= (uintptr_t)s.dyn && word < (uintptr_t)s.dyn + s.dyn_words * 4)
        snprintf(where_buf, sizeof where_buf, "bytes [%zu, %zu) of dynamic shared memory",
                 (size_t)(word - (uintptr_t)s.dyn), (size_t)(word - (uintptr_t)s.dyn) + 4);
    else
        snprintf(where_buf, sizeof where_buf, "the 4 bytes at %p (a static __shared__ variable)", (void *)word);
    char bidx[64];
    snprintf(bidx, sizeof bidx, "block (%u,%u,%u)", b.idx.x, b.idx.y, b.idx.z);
    std::string msg = "fab_emu: shared-memory race (" + std::string(kind) + ") in " +
                      kernel_name(b.launch->kernel) + ", " + bidx + ": " + thread_desc(b, t.id.linear) + " " +
                      op_name(op) + " of " + where_buf + " is not ordered with the " + other_op + " by " +
                      thread_desc(b, other) + " -- " + why;
    race_failure(b.launch, msg);
}

/* The shadow record of a word outside the dynamic shared memory (static __shared__). */
static __attribute__((noinline)) Cell &static_cell(Shadow &s, uintptr_t w, uint64_t **rd)
{
    auto it = s.smap.find(w);
    size_t i;
    if (it == s.smap.end()) {
        i = s.scells.size();
        s.smap.emplace(w, (uint32_t)i);
        s.scells.push_back(Cell{0, kNone, 0, 0, 0, 0});
        s.sreaders.resize(s.sreaders.size() + s.nwarps, 0);
    } else {
        i = it->second;
    }
    *rd = &s.sreaders[i * s.nwarps];
    return s.scells[i];
}

/* The shadow record of the word at address w (4-aligned), reset if stale. */
static inline __attribute__((always_inline)) Cell &cell_of(Shadow &s, uintptr_t w, uint64_t **rd)
{
    Cell *c;
    size_t i = (w - (uintptr_t)s.dyn) / 4;
    if (i < s.dyn_words) {
        c = &s.cells[i];
        *rd = &s.readers[i * s.nwarps];
    } else {
        c = &static_cell(s, w, rd);
    }
    if (__builtin_expect(c->gen != s.gen, 0)) {
        c->gen = s.gen;
        c->wtid = kNone;
        c->flags = 0;
        c->gfence = 0;
        memset(*rd, 0, s.nwarps * sizeof(uint64_t));
    }
    return *c;
}

static const char *writer_op(const Cell &c)
{
    return (c.flags & F_WRITER_STMATRIX) ? "stmatrix (write)"
           : (c.flags & F_WRITER_STORE)  ? "st.shared (write)"
                                         : "cp.async (write)";
}

static const char *const kNoSync =
    "no __syncthreads / bar.sync (for other warps) or __syncwarp (for lanes of one warp) orders them";
static const char *const kInFlight =
    "the cp.async is still in flight: its data may land at any moment until the issuing thread's "
    "cp.async.wait_group, and other threads may touch the bytes only after a barrier that follows that wait";

void shadow_read(Block &b, Thread &t, const void *p, unsigned bytes, ShadowOp op)
{
    Shadow &s = *b.shadow;
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)3, end = (uintptr_t)p + bytes;
    uint32_t wep = t.vc[t.id.warp], lep = t.lv[t.id.lane];
    for (; a < end; a += 4) {
        uint64_t *rd;
        Cell &c = cell_of(s, a, &rd);
        if (c.wtid != kNone) {
            if (c.flags & F_PENDING) {
                report(b, t, a, "read of a cp.async destination before its wait", op, c.wtid, "cp.async (write)",
                       kInFlight);
                return;
            }
            if (c.wtid != t.id.linear && !ordered_before(t, c.wtid, c.wwep, c.wlep)) {
                report(b, t, a, "read after write", op, c.wtid, writer_op(c), kNoSync);
                return;
            }
        }
        uint64_t &r = rd[t.id.warp];
        const unsigned rlane = (unsigned)(r & 31u);
        const uint32_t rwep = (uint32_t)(r >> 32), rfield = (uint32_t)(r >> 5) & kLepMask;
        if (r && (r & kMulti) && s.joins[t.id.warp] == rfield) /* still several unordered readers */
            r = slot_multi(rwep > wep ? rwep : wep, rfield, t.id.lane);
        else if (r && !(r & kMulti) && rlane != t.id.lane &&
                 !ordered_before(t, (uint16_t)(t.id.warp * 32 + rlane), rwep, rfield))
            r = slot_multi(rwep > wep ? rwep : wep, s.joins[t.id.warp], t.id.lane);
        else /* the first reader, or every earlier read is ordered before this one */
            r = slot_make(wep, lep, t.id.lane);
    }
}

void shadow_write(Block &b, Thread &t, const void *p, unsigned bytes, ShadowOp op, bool async)
{
    Shadow &s = *b.shadow;
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)3, end = (uintptr_t)p + bytes;
    uint32_t wep = t.vc[t.id.warp], lep = t.lv[t.id.lane];
    for (; a < end; a += 4) {
        uint64_t *rd;
        Cell &c = cell_of(s, a, &rd);
        if (c.wtid != kNone) {
            if (c.flags & F_PENDING) {
                report(b, t, a, "write while a cp.async to the same bytes is in flight", op, c.wtid,
                       "cp.async (write)", kInFlight);
                return;
            }
            if (c.wtid != t.id.linear && !ordered_before(t, c.wtid, c.wwep, c.wlep)) {
                report(b, t, a, "write after write", op, c.wtid, writer_op(c), kNoSync);
                return;
            }
        }
        for (unsigned k = 0; k < s.nwarps; ++k) {
            uint64_t r = rd[k];
            if (!r) continue;
            unsigned lane = (unsigned)(r & 31u), rtid = k * 32 + lane;
            const uint32_t rwep = (uint32_t)(r >> 32), rfield = (uint32_t)(r >> 5) & kLepMask;
            if (r & kMulti) { /* several readers in warp k */
                const bool ordered = k == t.id.warp ? s.joins[k] != rfield : t.vc[k] >= rwep;
                if (!ordered) {
                    report(b, t, a, "write after read", op, rtid, "ld.shared (read, one of several lanes)", kNoSync);
                    return;
                }
                continue;
            }
            if (rtid == t.id.linear) continue;
            if (!ordered_before(t, (uint16_t)rtid, rwep, rfield)) {
                report(b, t, a, "write after read", op, rtid, "ldmatrix or ld.shared (read)", kNoSync);
                return;
            }
        }
        memset(rd, 0, s.nwarps * sizeof(uint64_t));
        c.wtid = (uint16_t)t.id.linear;
        c.flags = (uint8_t)((async ? F_PENDING : 0) | (op == SH_STMATRIX ? F_WRITER_STMATRIX : 0) |
                            (op == SH_STORE ? F_WRITER_STORE : 0));
        c.wwep = wep;
        c.wlep = lep & kLepMask;
        c.gfence = op == SH_TMA ? 0 : (uint8_t)(0x80u | (t.proxy_fences & 0x7fu));
    }
}

void shadow_async_proxy_read(Block &b, Thread &t, const void *p, unsigned bytes)
{
    shadow_read(b, t, p, bytes, SH_WGMMA);
    Shadow &s = *b.shadow;
    if (s.reported || b.launch->failed) return;
    for (uintptr_t a = (uintptr_t)p & ~(uintptr_t)3, end = (uintptr_t)p + bytes; a < end; a += 4) {
        uint64_t *rd;
        Cell &c = cell_of(s, a, &rd);
        if (c.wtid == kNone || !(c.gfence & 0x80u)) continue;
        const Thread &w = *b.threads[c.wtid];
        if ((w.proxy_fences & 0x7fu) != (c.gfence & 0x7fu)) continue; /* the writer fenced since */
        s.reported = true;
        char where_buf[64];
        snprintf(where_buf, sizeof where_buf, "byte %zu of dynamic shared memory", (size_t)(a - (uintptr_t)s.dyn));
        race_failure(b.launch, "fab_emu: missing fence.proxy.async in " + kernel_name(b.launch->kernel) + ": " +
                                   thread_desc(b, t.id.linear) + " wgmma reads " + where_buf + ", written by " +
                                   thread_desc(b, c.wtid) + " with " + writer_op(c) +
                                   " (the generic proxy), which has not run fab__fence_proxy_async() since: the "
                                   "async proxy may not see the write");
        return;
    }
}

void shadow_release(Block &b, Thread &t, std::vector<uint32_t> &vc, std::vector<uint32_t> &lv)
{
    unsigned nw = b.shadow->nwarps;
    if (vc.size() < nw) vc.resize(nw, 0);
    if (lv.size() < (size_t)nw * 32) lv.resize((size_t)nw * 32, 0);
    for (unsigned k = 0; k < nw; ++k)
        if (t.vc[k] > vc[k]) vc[k] = t.vc[k];
    uint32_t *l = &lv[(size_t)t.id.warp * 32];
    for (int k = 0; k < 32; ++k)
        if (t.lv[k] > l[k]) l[k] = t.lv[k];
    /* what t does from now on is not ordered before those who acquire this */
    t.vc[t.id.warp]++;
    t.lv[t.id.lane]++;
}

void shadow_acquire(Block &b, Thread &t, const std::vector<uint32_t> &vc, const std::vector<uint32_t> &lv)
{
    unsigned nw = b.shadow->nwarps;
    for (unsigned k = 0; k < nw && k < vc.size(); ++k)
        if (vc[k] > t.vc[k]) t.vc[k] = vc[k];
    if (lv.size() >= (size_t)(t.id.warp + 1) * 32) {
        const uint32_t *l = &lv[(size_t)t.id.warp * 32];
        for (int k = 0; k < 32; ++k)
            if (l[k] > t.lv[k]) t.lv[k] = l[k];
    }
}

void shadow_async_done(Block &b, Thread &t, const void *p, unsigned bytes)
{
    Shadow &s = *b.shadow;
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)3, end = (uintptr_t)p + bytes;
    for (; a < end; a += 4) {
        uint64_t *rd;
        Cell &c = cell_of(s, a, &rd);
        /* Only if the record is still this thread's in-flight copy (a race may have
         * replaced it; that was reported). */
        if (c.wtid == t.id.linear && (c.flags & F_PENDING)) {
            c.flags &= (uint8_t)~F_PENDING;
            c.wwep = t.vc[t.id.warp];
            c.wlep = t.lv[t.id.lane] & kLepMask;
        }
    }
}

} // namespace fab_emu
