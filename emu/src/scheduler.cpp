/*
 * scheduler.cpp -- launches, blocks, threads-as-fibers, barriers, warp collectives,
 * and the race check.
 *
 * Execution model.  A launch's blocks are handed out to worker OS threads (the
 * caller plus a pool).  A worker runs one block at a time: every CUDA thread of the
 * block is a fiber; the worker's scheduler loop resumes each runnable fiber in
 * thread order (or reverse order), and a fiber runs until it must wait -- at a
 * block barrier (bar.sync), a warp collective (shfl/vote/syncwarp/mma/ldmatrix ...),
 * or __nanosleep -- or until it returns.  So between two synchronisation points each
 * thread runs alone and to completion, which is one legal CUDA schedule; running
 * threads in reverse order is another, and the race check compares the two.
 *
 * Barriers follow PTX `barrier{.cta}`: arrival is counted per warp once all its
 * non-exited lanes arrived; a barrier for all threads completes when every warp has
 * arrived or exited (so threads that returned early do not hold it up, as in PTX's
 * `exit`); a barrier with a thread count completes when count/32 warps arrived.
 *
 * Warp collectives follow the .sync instructions: the lanes named in membermask that
 * have not exited rendezvous; the last to arrive computes every lane's result.
 * No progress possible (every live thread waiting) is reported as a deadlock.
 */
#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <condition_variable>
#include <thread>
#include <unordered_map>

#include "internal.h"

thread_local const fab_emu_thread *fab_emu_cur = nullptr;
thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace fab_emu {

thread_local Thread *tl_thread = nullptr;
thread_local Block *tl_block = nullptr;

/* ------------------------------------------------------------------ settings */

static int env_int(const char *name, int dflt)
{
    const char *v = getenv(name);
    return (v && *v) ? atoi(v) : dflt;
}

static std::atomic<int> g_racecheck{-1};    /* -1: read FAB_EMU_RACECHECK */
static std::atomic<int> g_error_return{-1}; /* -1: read FAB_EMU_ERRORS */
static std::atomic<int> g_threads{0};       /* 0: read FAB_EMU_THREADS */
static std::atomic<int> g_smemcheck{-1};    /* -1: read FAB_EMU_SMEMCHECK (default on) */
static std::atomic<unsigned long> g_race_reports{0};
static std::atomic<unsigned long long> g_stats[STAT_COUNT];

static bool racecheck_on()
{
    int v = g_racecheck.load();
    if (v < 0) {
        v = env_int("FAB_EMU_RACECHECK", 0) != 0;
        g_racecheck = v;
    }
    return v != 0;
}

bool smemcheck_on()
{
    int v = g_smemcheck.load();
    if (v < 0) {
        v = env_int("FAB_EMU_SMEMCHECK", 1) != 0;
        g_smemcheck = v;
    }
    return v != 0;
}

bool error_mode_return()
{
    int v = g_error_return.load();
    if (v < 0) {
        const char *e = getenv("FAB_EMU_ERRORS");
        v = (e && strcmp(e, "return") == 0) ? 1 : 0;
        g_error_return = v;
    }
    return v != 0;
}

static int worker_count()
{
    int v = g_threads.load();
    if (v <= 0) {
        unsigned hw = std::thread::hardware_concurrency();
        v = env_int("FAB_EMU_THREADS", (int)(hw == 0 ? 1 : (hw > 8 ? 8 : hw)));
        if (v < 1) v = 1;
        g_threads = v;
    }
    return v;
}

static size_t stack_bytes()
{
#if defined(__SANITIZE_ADDRESS__)
    int dflt = 256; /* ASan frames are several times larger */
#else
    int dflt = 64;
#endif
    int kb = env_int("FAB_EMU_STACK_KB", dflt);
    if (kb < 16) kb = 16;
    return (size_t)kb * 1024;
}

void count_stat(int which, unsigned long long n) { g_stats[which].fetch_add(n, std::memory_order_relaxed); }

/* ------------------------------------------------------------------ diagnostics */

/* The name of the function at address fn in the ELF file at `path`, loaded at
 * `base`, from its full symbol table (.symtab): the kernels of a library built
 * with hidden symbols, and those in anonymous namespaces, are not in the dynamic
 * table that dladdr reads. Each file's function symbols are read once. "" if
 * the file has no such symbol (stripped, or not ELF). */
struct SymtabFile {
    bool exec = false; /* ET_EXEC: symbol values are addresses, not offsets from the base */
    std::unordered_map<uintptr_t, std::string> names;
};
static std::string symtab_name(const char *path, uintptr_t base, const void *fn)
{
    static std::mutex mu;
    /* never destroyed: names may be wanted at exit (FAB_EMU_BANKS) */
    static auto *files = new std::unordered_map<std::string, SymtabFile>();
    std::lock_guard<std::mutex> lock(mu);
    auto it = files->find(path);
    if (it == files->end()) {
        SymtabFile &file = (*files)[path];
        std::unordered_map<uintptr_t, std::string> &names = file.names;
        FILE *f = fopen(path, "rb");
        std::vector<unsigned char> img;
        if (f) { /* read into the heap: this may run on a fiber's small stack */
            if (fseek(f, 0, SEEK_END) == 0) {
                long size = ftell(f);
                if (size > 0 && fseek(f, 0, SEEK_SET) == 0) {
                    img.resize((size_t)size);
                    if (fread(img.data(), 1, img.size(), f) != img.size()) img.clear();
                }
            }
            fclose(f);
        }
        const Elf64_Ehdr *eh = reinterpret_cast<const Elf64_Ehdr *>(img.data());
        if (img.size() >= sizeof(Elf64_Ehdr) && !memcmp(eh->e_ident, ELFMAG, SELFMAG) &&
            eh->e_ident[EI_CLASS] == ELFCLASS64 && eh->e_shentsize == sizeof(Elf64_Shdr) &&
            eh->e_shoff + (uint64_t)eh->e_shnum * sizeof(Elf64_Shdr) <= img.size()) {
            file.exec = eh->e_type == ET_EXEC;
            const Elf64_Shdr *sh = reinterpret_cast<const Elf64_Shdr *>(img.data() + eh->e_shoff);
            for (unsigned i = 0; i < eh->e_shnum; ++i) {
                if (sh[i].sh_type != SHT_SYMTAB || sh[i].sh_link >= eh->e_shnum) continue;
                const Elf64_Shdr &str = sh[sh[i].sh_link];
                if (sh[i].sh_offset + sh[i].sh_size > img.size() || str.sh_offset + str.sh_size > img.size()) continue;
                const Elf64_Sym *sym = reinterpret_cast<const Elf64_Sym *>(img.data() + sh[i].sh_offset);
                const char *strs = reinterpret_cast<const char *>(img.data() + str.sh_offset);
                for (size_t k = 0; k < sh[i].sh_size / sizeof(Elf64_Sym); ++k)
                    if (ELF64_ST_TYPE(sym[k].st_info) == STT_FUNC && sym[k].st_value && sym[k].st_name < str.sh_size)
                        names.emplace((uintptr_t)sym[k].st_value,
                                      std::string(strs + sym[k].st_name, strnlen(strs + sym[k].st_name,
                                                                                  str.sh_size - sym[k].st_name)));
            }
        }
        it = files->find(path);
    }
    const uintptr_t key = it->second.exec ? (uintptr_t)fn : (uintptr_t)fn - base;
    auto n = it->second.names.find(key);
    return n == it->second.names.end() ? std::string() : n->second;
}

std::string kernel_name(const void *fn)
{
    char buf[64];
    Dl_info info;
    if (fn && dladdr(fn, &info)) {
        std::string sym = info.dli_sname && info.dli_saddr == fn ? std::string(info.dli_sname) : std::string();
        if (sym.empty() && info.dli_fname && info.dli_fbase)
            sym = symtab_name(info.dli_fname, (uintptr_t)info.dli_fbase, fn);
        if (!sym.empty()) {
            int status = 0;
            char *d = abi::__cxa_demangle(sym.c_str(), nullptr, nullptr, &status);
            std::string s = (status == 0 && d) ? d : sym;
            free(d);
            return s;
        }
    }
    snprintf(buf, sizeof buf, "kernel at %p", fn);
    return buf;
}

std::string where()
{
    char buf[160];
    const Thread *t = tl_thread;
    if (!t) return "outside any kernel";
    snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u) [warp %u lane %u]", t->id.blockIdx.x,
             t->id.blockIdx.y, t->id.blockIdx.z, t->id.threadIdx.x, t->id.threadIdx.y, t->id.threadIdx.z, t->id.warp,
             t->id.lane);
    return buf;
}

static std::mutex g_print_mutex;

/* A failure of the launch detected by the scheduler (deadlock, race): print, then
 * abort or mark the launch failed. */
static void launch_failure(Launch *L, const std::string &msg)
{
    {
        std::lock_guard<std::mutex> lk(g_print_mutex);
        fprintf(stderr, "%s\n", msg.c_str());
        fflush(stderr);
    }
    set_last_message(msg);
    if (!error_mode_return()) abort();
    if (L) L->failed = true;
}

void race_failure(Launch *L, const std::string &msg)
{
    if (L && L->failed.exchange(true)) return; /* one report per launch */
    g_race_reports++;
    launch_failure(L, msg);
}

void kernel_error(const char *fmt, ...)
{
    char body[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    Thread *t = tl_thread;
    Block *b = tl_block;
    {
        /* scoped: the string must be destroyed before this fiber is abandoned */
        std::string msg = "fab_emu: kernel error in " + (b ? kernel_name(b->launch->kernel) : std::string("?")) +
                          ", " + where() + ": " + body;
        if (!t || !b) {
            fprintf(stderr, "%s\n", msg.c_str());
            abort();
        }
        launch_failure(b->launch, msg);
    }
    /* Return mode: abandon this fiber; the scheduler sees the failed launch and stops. */
    fiber_exit(t->fiber);
}

void undefined_value_warning(const char *fmt, ...)
{
    Block *b = tl_block;
    if (!b) return;
    if (b->launch->undefined_reads.fetch_add(1) != 0) return; /* first one per launch */
    char body[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    std::lock_guard<std::mutex> lk(g_print_mutex);
    fprintf(stderr, "fab_emu: warning in %s, %s: %s (the emulator returns 0xffffffff; further ones not shown)\n",
            kernel_name(b->launch->kernel).c_str(), where().c_str(), body);
}

const fab_emu_thread &current_slow()
{
    fprintf(stderr, "fab_emu: threadIdx/blockIdx/blockDim/gridDim used outside a kernel\n");
    abort();
}

/* ------------------------------------------------------------------ barriers */

static Thread &thread_at(Block &b, unsigned warp, unsigned lane) { return *b.threads[warp * 32 + lane]; }
static uint32_t existing_lanes(const Block &b, unsigned w)
{
    unsigned n = b.nthreads - w * 32;
    return n >= 32 ? 0xffffffffu : ((1u << n) - 1u);
}

/* Count warp w's arrival at B once all its non-exited lanes arrived. */
static void note_warp_arrival(Block &b, Barrier &B, unsigned w)
{
    if ((B.counted >> w) & 1u) return;
    if (B.arrived[w] == 0) return;
    if ((B.arrived[w] | b.exited[w]) != 0xffffffffu) return;
    B.counted |= 1u << w;
    B.warps_arrived++;
}

static bool barrier_complete(const Block &b, const Barrier &B)
{
    if (!B.active) return false;
    if (B.count > 0) return B.warps_arrived * 32 >= B.count;
    for (unsigned w = 0; w < b.nwarps; ++w)
        if (!((B.counted >> w) & 1u) && b.exited[w] != 0xffffffffu) return false;
    return true;
}

static void release_barrier(Block &b, int id, BarrierReduce red)
{
    Barrier &B = b.bars[id];
    int result = 0;
    if (red == BAR_POPC) result = B.popc;
    if (red == BAR_AND) result = B.all ? 1 : 0;
    if (red == BAR_OR) result = B.any ? 1 : 0;
    if (b.shadow) shadow_barrier_release(b, B, id);
    uint32_t waited = 0;
    for (unsigned i = 0; i < b.nthreads; ++i) {
        Thread &t = *b.threads[i];
        if (t.state == TState::AtBarrier && t.bar_id == id) {
            t.state = TState::Runnable;
            t.bar_result = result;
            waited |= 1u << (i / 32);
        }
    }
    /* a warp that waited here met here: its logged accesses are instructions (a warp
     * that only arrived, bar.arrive, runs on and is flushed where it next meets) */
    for (unsigned w = 0; w < b.nwarps; ++w)
        if ((waited >> w) & 1u) bank_flush_warp(b, w);
    B = Barrier();
    count_stat(STAT_BARRIERS, 1);
}

/* Reduction kind of the current phase of each barrier (the threads of a phase agree). */
static thread_local BarrierReduce tl_bar_red[16];

static void check_activemask(Block &b, unsigned w);

int barrier(int id, int count, BarrierReduce red, int pred, bool wait, const char *file, int line)
{
    Thread *t = tl_thread;
    Block *bp = tl_block;
    if (!t) {
        fprintf(stderr, "fab_emu: __syncthreads/bar.sync called outside a kernel\n");
        abort();
    }
    Block &b = *bp;
    if (id < 0 || id > 15) kernel_error("bar.sync/bar.arrive: barrier id %d is not in 0..15", id);
    if (count < 0 || count % 32 != 0 || (unsigned)count > b.nwarps * 32)
        kernel_error("bar.sync/bar.arrive: thread count %d must be a multiple of 32 and at most the block's %u warps * 32",
                     count, b.nwarps);
    if (!wait && count == 0) kernel_error("bar.arrive needs a nonzero thread count");
    Barrier &B = b.bars[id];
    if (!B.active) {
        B.active = true;
        B.count = count;
        tl_bar_red[id] = red;
    } else if (B.count != count) {
        kernel_error("barrier %d: this thread uses thread count %d but others in the same phase use %d%s", id, count,
                     B.count, (count == 0 || B.count == 0) ? " (0 = __syncthreads, all threads)" : "");
    }
    if (red != BAR_NONE) tl_bar_red[id] = red;
    /* bar.sync is barrier.sync.aligned: for a barrier of all threads the PTX ISA
     * wants every thread of the block at the same instruction, and the CUDA guide
     * allows __syncthreads in a branch only where the whole block takes the same
     * way. Two call sites meeting in one phase match in count, so the hardware
     * may let them pass, but nothing promises it: report it. (Named barriers with
     * a thread count are left alone: producers arrive where consumers sync.) */
    if (count == 0 && wait && file) {
        if (!B.site_file)
            B.site_file = file, B.site_line = line;
        else if (B.site_line != line || strcmp(B.site_file, file) != 0)
            kernel_error("__syncthreads: threads of the block reached two different ones in the same phase (%s:%d "
                         "and %s:%d); bar.sync is .aligned, so the whole block must execute the same barrier (a "
                         "__syncthreads inside a branch that differs between warps is undefined on the GPU)",
                         B.site_file, B.site_line, file, line);
    }
    uint32_t bit = 1u << t->id.lane;
    unsigned w = t->id.warp;
    if (B.arrived[w] & bit)
        kernel_error("barrier %d: this thread arrives twice in the same barrier phase (bar.arrive without a matching "
                     "completion?)",
                     id);
    B.arrived[w] |= bit;
    if (b.shadow) shadow_barrier_arrive(b, B, *t, wait);
    B.popc += pred != 0;
    B.all = B.all && pred != 0;
    B.any = B.any || pred != 0;
    if (wait) {
        t->state = TState::AtBarrier;
        t->bar_id = id;
    }
    note_warp_arrival(b, B, w);
    if (barrier_complete(b, B)) release_barrier(b, id, tl_bar_red[id]);
    if (t->state == TState::AtBarrier) {
        check_activemask(b, w);
        fiber_suspend(t->fiber);
    }
    return wait ? t->bar_result : 0;
}

/* ------------------------------------------------------------------ warp collectives */

/* Marker for lanes waiting in __activemask (not a membermask collective). */
static void activemask_marker(const CollGroup &) {}

/*
 * __activemask: the GPU returns the lanes executing the instruction together with the
 * caller.  The emulator lets the caller wait until every non-exited lane of its warp is
 * either in __activemask too or blocked elsewhere (a barrier or another collective); the
 * lanes found in __activemask are the converged ones and all get that mask.
 */
static void check_activemask(Block &b, unsigned w)
{
    if (!b.activemask_waiting[w]) return;
    uint32_t am = 0, blocked = b.waiting[w];
    for (unsigned l = 0; l < 32; ++l) {
        if ((b.exited[w] >> l) & 1u) continue;
        Thread &t = *b.threads[w * 32 + l];
        if (t.state == TState::AtBarrier) blocked |= 1u << l;
        if (t.state == TState::AtWarp && t.coll_fn == activemask_marker) am |= 1u << l;
    }
    if (!am || (~b.exited[w] & ~blocked) != 0) return;
    for (uint32_t m = am; m; m &= m - 1) {
        Thread &t = *b.threads[w * 32 + (unsigned)__builtin_ctz(m)];
        *static_cast<uint32_t *>(t.coll_out) = am;
        t.state = TState::Runnable;
    }
    b.waiting[w] &= ~am;
    b.activemask_waiting[w] = 0;
}

/* Complete every group of warp w whose lanes have all arrived with the same mask. */
static void try_complete_warp(Block &b, unsigned w)
{
    uint32_t pending = b.waiting[w];
    while (pending) {
        unsigned l = (unsigned)__builtin_ctz(pending);
        Thread &t = thread_at(b, w, l);
        if (t.coll_fn == activemask_marker) {
            pending &= ~(1u << l);
            continue;
        }
        uint32_t need = t.coll_mask & ~b.exited[w];
        if ((need & b.waiting[w]) != need) {
            pending &= ~(1u << l);
            continue;
        }
        bool same_mask = true;
        for (uint32_t m = need; m; m &= m - 1) {
            Thread &o = thread_at(b, w, (unsigned)__builtin_ctz(m));
            if (o.coll_mask != t.coll_mask) same_mask = false;
        }
        if (!same_mask) { /* a lane of this mask waits in another group; that may complete first */
            pending &= ~(1u << l);
            continue;
        }
        CollGroup g;
        g.mask = t.coll_mask;
        g.present = need;
        g.op = t.coll_op;
        for (unsigned j = 0; j < 32; ++j) {
            g.in[j] = nullptr;
            g.out[j] = nullptr;
        }
        for (uint32_t m = need; m; m &= m - 1) {
            unsigned j = (unsigned)__builtin_ctz(m);
            Thread &o = thread_at(b, w, j);
            if (o.coll_fn != t.coll_fn || o.coll_op != t.coll_op)
                kernel_error("lanes %u and %u of warp %u meet with membermask 0x%08x at different warp operations "
                             "(%s vs %s)",
                             l, j, w, t.coll_mask, t.coll_what, o.coll_what);
            g.in[j] = o.coll_in;
            g.out[j] = o.coll_out;
        }
        const bool track = b.shadow && collective_orders_memory(t.coll_fn);
        if (track) shadow_warp_sync_begin(b, w, need);
        t.coll_fn(g);
        if (track) shadow_warp_sync_end(b, w, need);
        if (need == ~b.exited[w]) bank_flush_warp(b, w); /* every live lane met here */
        for (uint32_t m = need; m; m &= m - 1) thread_at(b, w, (unsigned)__builtin_ctz(m)).state = TState::Runnable;
        b.waiting[w] &= ~need;
        pending &= ~need;
        count_stat(STAT_COLLECTIVES, 1);
    }
    check_activemask(b, w);
}

void warp_collective(CollFn fn, int op, uint32_t mask, const void *in, void *out, const char *what)
{
    Thread *t = tl_thread;
    if (!t) {
        fprintf(stderr, "fab_emu: warp collective %s called outside a kernel\n", what);
        abort();
    }
    Block &b = *tl_block;
    unsigned w = t->id.warp, lane = t->id.lane;
    if (!((mask >> lane) & 1u))
        kernel_error("%s: the calling lane %u is not in its membermask 0x%08x (PTX: undefined behaviour)", what, lane,
                     mask);
    uint32_t absent = mask & ~existing_lanes(b, w);
    (void)absent; /* lanes beyond the block size count as exited, as on the GPU */
    t->coll_fn = fn;
    t->coll_op = op;
    t->coll_mask = mask;
    t->coll_in = in;
    t->coll_out = out;
    t->coll_what = what;
    t->state = TState::AtWarp;
    b.waiting[w] |= 1u << lane;
    /* An arrival can only complete groups with this lane's mask, and only once all lanes of
     * the mask wait; until then there is nothing to check except __activemask waiters. */
    uint32_t need = mask & ~b.exited[w];
    if ((need & b.waiting[w]) == need)
        try_complete_warp(b, w);
    else
        check_activemask(b, w);
    if (t->state == TState::AtWarp) fiber_suspend(t->fiber);
}

/* The warp operations of cuda_runtime.h: one collective function for all of them. */
struct WopIn {
    uint64_t v;
    int b, c;
};
struct WopOut {
    uint64_t r;
    int pred;
};

static const char *const kWopNames[WOP_COUNT] = {
    "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync", "__syncwarp", "__ballot_sync",
    "__any_sync", "__all_sync", "__match_any_sync", "__match_all_sync", "__reduce_add_sync", "__reduce_min_sync",
    "__reduce_max_sync", "__reduce_min_sync", "__reduce_max_sync", "__reduce_and_sync", "__reduce_or_sync",
    "__reduce_xor_sync"};

static void wop_fn(const CollGroup &g)
{
    const WopIn *in[32];
    WopOut *out[32];
    for (int i = 0; i < 32; ++i) {
        in[i] = static_cast<const WopIn *>(g.in[i]);
        out[i] = static_cast<WopOut *>(g.out[i]);
    }
    uint32_t ballot = 0, all_eq = 1;
    uint64_t first = 0;
    bool have_first = false;
    uint32_t red_add = 0, red_and = 0xffffffffu, red_or = 0, red_xor = 0, red_minu = 0xffffffffu, red_maxu = 0;
    int32_t red_mins = INT32_MAX, red_maxs = INT32_MIN;
    for (uint32_t m = g.present; m; m &= m - 1) {
        int i = __builtin_ctz(m);
        uint64_t v = in[i]->v;
        uint32_t v32 = (uint32_t)v;
        if (v) ballot |= 1u << i;
        if (!have_first) {
            first = v;
            have_first = true;
        } else if (v != first) {
            all_eq = 0;
        }
        red_add += v32;
        red_and &= v32;
        red_or |= v32;
        red_xor ^= v32;
        red_minu = v32 < red_minu ? v32 : red_minu;
        red_maxu = v32 > red_maxu ? v32 : red_maxu;
        red_mins = (int32_t)v32 < red_mins ? (int32_t)v32 : red_mins;
        red_maxs = (int32_t)v32 > red_maxs ? (int32_t)v32 : red_maxs;
    }
    for (uint32_t m = g.present; m; m &= m - 1) {
        int lane = __builtin_ctz(m);
        WopOut &o = *out[lane];
        o.pred = 0;
        switch (g.op) {
        case WOP_SHFL_IDX:
        case WOP_SHFL_UP:
        case WOP_SHFL_DOWN:
        case WOP_SHFL_BFLY: {
            /* PTX shfl.sync: b[4:0] is the lane/delta/mask, c = segment mask (12:8) | clamp (4:0). */
            int bval = in[lane]->b & 0x1f, c = in[lane]->c;
            int segmask = (c >> 8) & 0x1f, cval = c & 0x1f;
            int max_lane = (lane & segmask) | (cval & ~segmask);
            int min_lane = lane & segmask;
            int j = lane;
            bool pval = false;
            if (g.op == WOP_SHFL_UP) { j = lane - bval; pval = j >= max_lane; }
            if (g.op == WOP_SHFL_DOWN) { j = lane + bval; pval = j <= max_lane; }
            if (g.op == WOP_SHFL_BFLY) { j = lane ^ bval; pval = j <= max_lane; }
            if (g.op == WOP_SHFL_IDX) { j = min_lane | (bval & ~segmask); pval = j <= max_lane; }
            if (!pval) j = lane;
            if (!((g.present >> j) & 1u)) {
                undefined_value_warning("%s: lane %d reads lane %d, which %s", kWopNames[g.op], lane, j,
                                        ((g.mask >> j) & 1u) ? "has exited (or is beyond the block)"
                                                             : "is not in membermask");
                o.r = ~0ull;
            } else {
                o.r = in[j]->v;
            }
            break;
        }
        case WOP_SYNC: o.r = 0; break;
        case WOP_BALLOT: o.r = ballot; break;
        case WOP_ANY: o.r = ballot != 0; break;
        case WOP_ALL: o.r = ballot == g.present; break;
        case WOP_MATCH_ANY: {
            uint32_t r = 0;
            for (uint32_t k = g.present; k; k &= k - 1) {
                int j = __builtin_ctz(k);
                if (in[j]->v == in[lane]->v) r |= 1u << j;
            }
            o.r = r;
            break;
        }
        case WOP_MATCH_ALL:
            o.r = all_eq ? g.mask : 0;
            o.pred = (int)all_eq;
            break;
        case WOP_REDUCE_ADD: o.r = red_add; break;
        case WOP_REDUCE_MIN_U: o.r = red_minu; break;
        case WOP_REDUCE_MAX_U: o.r = red_maxu; break;
        case WOP_REDUCE_MIN_S: o.r = (uint32_t)red_mins; break;
        case WOP_REDUCE_MAX_S: o.r = (uint32_t)red_maxs; break;
        case WOP_REDUCE_AND: o.r = red_and; break;
        case WOP_REDUCE_OR: o.r = red_or; break;
        case WOP_REDUCE_XOR: o.r = red_xor; break;
        default: o.r = 0;
        }
    }
}

uint64_t warp_op(WarpOp op, uint32_t mask, uint64_t value, int b, int c, int *pred_out)
{
    WopIn in{value, b, c};
    WopOut out{0, 0};
    warp_collective(wop_fn, op, mask, &in, &out, kWopNames[op]);
    if (pred_out) *pred_out = out.pred;
    return out.r;
}

uint32_t active_mask()
{
    Thread *t = tl_thread;
    if (!t) return 0;
    Block &b = *tl_block;
    uint32_t result = 0;
    t->coll_fn = activemask_marker;
    t->coll_op = 0;
    t->coll_mask = 0;
    t->coll_in = nullptr;
    t->coll_out = &result;
    t->coll_what = "__activemask";
    t->state = TState::AtWarp;
    b.waiting[t->id.warp] |= 1u << t->id.lane;
    b.activemask_waiting[t->id.warp] |= 1u << t->id.lane;
    try_complete_warp(b, t->id.warp);
    if (t->state == TState::AtWarp) fiber_suspend(t->fiber);
    return result;
}

void *dynamic_smem()
{
    if (!tl_block) {
        fprintf(stderr, "fab_emu: FAB_DYNAMIC_SMEM used outside a kernel\n");
        abort();
    }
    return tl_block->smem;
}

void note_float_atomic(const void *addr, size_t bytes)
{
    count_stat(STAT_FLOAT_ATOMICS, 1);
    Block *b = tl_block;
    if (!b || !b->launch->note_atomics) return;
    Launch &L = *b->launch;
    std::lock_guard<std::mutex> lk(L.atomic_mu);
    for (uintptr_t w = (uintptr_t)addr & ~(uintptr_t)3; w < (uintptr_t)addr + bytes; w += 4) L.atomic_words.push_back(w);
}

void yield()
{
    Thread *t = tl_thread;
    if (!t) return;
    t->yielded = true;
    fiber_suspend(t->fiber); /* stays Runnable: the scheduler resumes it next round */
}

/* ------------------------------------------------------------------ running a block */

/* Per OS thread: the Thread slots (with their fiber stacks) reused by every block. */
struct Worker {
    std::vector<Thread *> slots;
    Block block;
    ~Worker()
    {
        for (Thread *t : slots) {
            fiber_free(t->fiber);
            delete t;
        }
    }
};
static thread_local Worker tl_worker;

static void thread_exit(Block &b, Thread &t)
{
    /* Copies still in flight complete (the hardware finishes them). */
    cp_async_complete(t, ~0ull);
    t.state = TState::Exited;
    unsigned w = t.id.warp;
    b.exited[w] |= 1u << t.id.lane;
    b.live--;
    for (int id = 0; id < 16; ++id) {
        Barrier &B = b.bars[id];
        if (!B.active) continue;
        note_warp_arrival(b, B, w);
        if (barrier_complete(b, B)) release_barrier(b, id, tl_bar_red[id]);
    }
    try_complete_warp(b, w);
}

static void thread_main(void *arg)
{
    Thread *t = static_cast<Thread *>(arg);
    Block &b = *tl_block;
    b.launch->invoke(b.launch->closure);
    wgmma_thread_exit(b, *t);
    setmaxnreg_thread_exit(b);
    tma_thread_exit(b);
    thread_exit(b, *t);
}

static std::string describe_deadlock(Block &b)
{
    std::string s = "fab_emu: deadlock in " + kernel_name(b.launch->kernel) + ", block (" + std::to_string(b.idx.x) +
                    "," + std::to_string(b.idx.y) + "," + std::to_string(b.idx.z) +
                    "): no thread can proceed. Thread states:\n";
    /* Group consecutive threads that wait in the same place. */
    unsigned i = 0;
    while (i < b.nthreads) {
        auto desc = [&](const Thread &t) {
            char buf[200];
            switch (t.state) {
            case TState::Exited: return std::string("exited");
            case TState::AtBarrier: {
                const Barrier &B = b.bars[t.bar_id];
                if (B.count == 0)
                    snprintf(buf, sizeof buf, "wait at barrier %d for all threads (__syncthreads)", t.bar_id);
                else
                    snprintf(buf, sizeof buf, "wait at barrier %d for %d threads (%d warps arrived)", t.bar_id, B.count,
                             B.warps_arrived);
                return std::string(buf);
            }
            case TState::AtWarp:
                snprintf(buf, sizeof buf, "wait in %s with membermask 0x%08x", t.coll_what, t.coll_mask);
                return std::string(buf);
            default: return std::string("runnable");
            }
        };
        std::string d = desc(*b.threads[i]);
        unsigned j = i + 1;
        while (j < b.nthreads && desc(*b.threads[j]) == d) ++j;
        s += "    threads " + std::to_string(i) + (j - 1 > i ? "-" + std::to_string(j - 1) : "") + " (linear): " + d +
             "\n";
        i = j;
    }
    s += "  (a barrier not reached by all threads, a membermask naming a lane that waits elsewhere, or divergent "
         "collectives)";
    return s;
}

static void run_block(Launch &L, unsigned long long linear)
{
    Worker &wk = tl_worker;
    Block &b = wk.block;
    b = Block();
    b.launch = &L;
    b.idx.x = (unsigned)(linear % L.grid.x);
    b.idx.y = (unsigned)((linear / L.grid.x) % L.grid.y);
    b.idx.z = (unsigned)(linear / ((unsigned long long)L.grid.x * L.grid.y));
    b.nthreads = L.block.x * L.block.y * L.block.z;
    b.nwarps = (b.nthreads + 31) / 32;
    b.live = b.nthreads;
    for (unsigned w = 0; w < b.nwarps; ++w) b.exited[w] = ~existing_lanes(b, w);

    /* Dynamic shared memory: exactly the launch's size, so ASan sees overruns; poisoned. */
    void *smem = nullptr;
    if (posix_memalign(&smem, 128, L.smem) != 0 || (!smem && L.smem)) {
        fprintf(stderr, "fab_emu: out of host memory for %zu bytes of shared memory\n", L.smem);
        abort();
    }
    if (L.smem) memset(smem, L.smem_poison, L.smem);
    b.smem = static_cast<unsigned char *>(smem);
    b.shadow = L.shadow ? shadow_acquire(b) : nullptr;

    while (wk.slots.size() < b.nthreads) {
        Thread *t = new Thread(); /* kept for the worker's lifetime, with its fiber stack */
        fiber_alloc(t->fiber, stack_bytes());
        wk.slots.push_back(t);
    }
    std::vector<Thread *> &slots = wk.slots;
    b.threads = slots.data();
    for (unsigned i = 0; i < b.nthreads; ++i) {
        Thread &t = *slots[i];
        t.id.blockIdx = b.idx;
        t.id.blockDim = L.block;
        t.id.gridDim = L.grid;
        t.id.threadIdx.x = i % L.block.x;
        t.id.threadIdx.y = (i / L.block.x) % L.block.y;
        t.id.threadIdx.z = i / (L.block.x * L.block.y);
        t.id.linear = i;
        t.id.warp = i / 32;
        t.id.lane = i % 32;
        t.state = TState::Runnable;
        t.bar_id = -1;
        t.bar_result = 0;
        t.cp_pending.clear();
        t.cp_open_group = 0;
        t.vc = t.lv = nullptr;
        t.yielded = false;
        t.bank_cp.clear();
        t.proxy_fences = 0;
        if (b.shadow) shadow_thread_init(b, t);
        fiber_prepare(t.fiber, thread_main, &t);
    }
    tl_block = &b;
    ::blockIdx = b.idx;
    ::blockDim = L.block;
    ::gridDim = L.grid;

    bool failed = false;
    auto resume = [&](Thread &t) {
        tl_thread = &t;
        fab_emu_cur = &t.id;
        ::threadIdx = t.id.threadIdx;
        t.yielded = false;
        fiber_resume(t.fiber);
        tl_thread = nullptr;
        fab_emu_cur = nullptr;
        if (L.failed) failed = true;
    };
    while (b.live > 0 && !failed) {
        bool progressed = false;
        if (L.greedy) {
            /* Each warp in turn runs as far as it can (to a block barrier or its end)
             * before the next warp starts: the largest skew between warps that the
             * barriers allow, so a missing barrier changes what other warps read. */
            for (unsigned k = 0; k < b.nwarps && !failed; ++k) {
                unsigned w = L.reverse ? b.nwarps - 1 - k : k;
                for (bool again = true; again && !failed;) {
                    again = false;
                    for (unsigned j = 0; j < 32 && !failed; ++j) {
                        unsigned i = w * 32 + (L.reverse ? 31 - j : j);
                        if (i >= b.nthreads) continue;
                        Thread &t = *slots[i];
                        if (t.state != TState::Runnable) continue;
                        progressed = true;
                        resume(t);
                        if (!t.yielded) again = true; /* a spinning thread lets the others run */
                    }
                }
            }
        } else {
            for (unsigned k = 0; k < b.nthreads && !failed; ++k) {
                unsigned i = L.reverse ? b.nthreads - 1 - k : k;
                Thread &t = *slots[i];
                if (t.state != TState::Runnable) continue;
                progressed = true;
                resume(t);
            }
        }
        if (!progressed && b.live > 0 && !failed) {
            launch_failure(&L, describe_deadlock(b));
            failed = true;
        }
    }
    /* A named barrier's phase still open when the block ends: bar.arrive without the
     * bar.sync it was for, or one too many. Stricter than the GPU, which drops such
     * arrivals at exit; but hand-offs that do not balance are a bug waiting for the
     * next loop around them (an extra arrival lets a later phase pass early), so the
     * emulator wants them balanced. __syncthreads phases cannot be open here: exited
     * threads complete them. */
    for (int id = 0; id < 16 && !failed; ++id) {
        const Barrier &B = b.bars[id];
        if (!B.active) continue;
        int lanes = 0;
        for (unsigned w = 0; w < b.nwarps; ++w) lanes += __builtin_popcount(B.arrived[w]);
        char msg[400];
        snprintf(msg, sizeof msg,
                 "fab_emu: %s, block (%u,%u,%u): the block ended with a phase of named barrier %d open (%d of its "
                 "%d threads arrived): a bar.arrive with no bar.sync to meet it, or arrivals and waits that do not "
                 "balance",
                 kernel_name(b.launch->kernel).c_str(), b.idx.x, b.idx.y, b.idx.z, id, lanes, B.count);
        launch_failure(&L, msg);
        failed = true;
    }
    for (unsigned w = 0; w < b.nwarps && !failed; ++w) bank_flush_warp(b, w);
    tl_block = nullptr;
    free(smem);
    b.smem = nullptr;
    b.shadow = nullptr;
    count_stat(STAT_BLOCKS, 1);
    count_stat(STAT_THREADS, b.nthreads);
}

static void run_blocks(Launch &L)
{
    for (;;) {
        if (L.failed) return;
        unsigned long long i = L.next_block.fetch_add(1);
        if (i >= L.nblocks) return;
        run_block(L, L.reverse ? L.nblocks - 1 - i : i);
    }
}

/* ------------------------------------------------------------------ worker pool */

struct Pool {
    std::mutex m;
    std::condition_variable work_cv, done_cv;
    Launch *job = nullptr;
    unsigned long long generation = 0;
    int busy = 0;
    int size = 0;
};
static Pool *g_pool = new Pool(); /* never destroyed: workers sleep through process exit */

static void pool_worker()
{
    unsigned long long seen = 0;
    for (;;) {
        Launch *L;
        {
            std::unique_lock<std::mutex> lk(g_pool->m);
            g_pool->work_cv.wait(lk, [&] { return g_pool->generation != seen; });
            seen = g_pool->generation;
            L = g_pool->job;
        }
        run_blocks(*L);
        std::lock_guard<std::mutex> lk(g_pool->m);
        if (--g_pool->busy == 0) g_pool->done_cv.notify_all();
    }
}

static void run_launch(Launch &L, int workers)
{
    if (workers <= 1 || L.nblocks <= 1) {
        run_blocks(L);
        return;
    }
    {
        std::lock_guard<std::mutex> lk(g_pool->m);
        while (g_pool->size < workers - 1) {
            std::thread(pool_worker).detach();
            g_pool->size++;
        }
        g_pool->job = &L;
        g_pool->busy = g_pool->size;
        g_pool->generation++;
    }
    g_pool->work_cv.notify_all();
    run_blocks(L);
    std::unique_lock<std::mutex> lk(g_pool->m);
    g_pool->done_cv.wait(lk, [] { return g_pool->busy == 0; });
    g_pool->job = nullptr;
}

/* ------------------------------------------------------------------ race check */

/* Compare the results of the two schedules; returns a report or "". `skip`: the
 * sorted addresses of 4-byte words that float atomics added to (not compared). */
static std::string compare_results(const std::vector<std::pair<unsigned char *, size_t>> &allocs,
                                   const std::vector<std::vector<unsigned char>> &first,
                                   const std::vector<uintptr_t> &skip)
{
    std::string report;
    for (size_t a = 0; a < allocs.size(); ++a) {
        const unsigned char *now = allocs[a].first;
        const std::vector<unsigned char> &then = first[a];
        size_t n = allocs[a].second, ndiff = 0, at = 0;
        for (size_t i = 0; i < n; ++i)
            if (now[i] != then[i] &&
                !std::binary_search(skip.begin(), skip.end(), ((uintptr_t)(now + i)) & ~(uintptr_t)3)) {
                if (ndiff++ == 0) at = i;
            }
        if (!ndiff) continue;
        size_t w = at & ~(size_t)3;
        uint32_t fw = 0, rv = 0;
        if (w + 4 <= n) {
            memcpy(&fw, then.data() + w, 4);
            memcpy(&rv, now + w, 4);
        }
        char buf[400];
        snprintf(buf, sizeof buf,
                 "\n    allocation %p (%zu bytes): %zu bytes differ, first at byte offset %zu "
                 "(32-bit word at %zu: forward 0x%08x = %g, reverse 0x%08x = %g)",
                 (const void *)now, n, ndiff, at, w, fw, (double)__builtin_bit_cast(float, fw), rv,
                 (double)__builtin_bit_cast(float, rv));
        report += buf;
    }
    return report;
}

static std::mutex g_launch_mutex; /* one launch at a time (the pool is shared) */

static cudaError_t run_schedules(Launch &L);

/* Runs the launch, then checks the allocations' redzones (runtime.cpp), under the
 * launch lock: always, so that a failed launch's stores are not blamed on the next
 * one; reported for a launch that otherwise succeeded. */
static cudaError_t execute(Launch &L)
{
    std::lock_guard<std::mutex> lk(g_launch_mutex);
    cudaError_t e = run_schedules(L);
    const std::string bad = check_redzones();
    if (!bad.empty() && e == cudaSuccess) {
        launch_failure(&L, "fab_emu: kernel error in " + kernel_name(L.kernel) + ": " + bad);
        e = cudaErrorIllegalAddress;
    }
    return e;
}

/* One run, or under the race check the two schedules and their comparison. */
static cudaError_t run_schedules(Launch &L)
{
    count_stat(STAT_LAUNCHES, 1);
    L.shadow = smemcheck_on();
    if (!racecheck_on()) {
        L.reverse = false;
        L.greedy = false;
        L.cp_immediate = false;
        L.smem_poison = 0xff;
        run_launch(L, worker_count());
        return L.failed ? cudaErrorLaunchFailure : cudaSuccess;
    }
    /* Schedule A: forward order, cp.async copies land at issue. */
    auto allocs = device_allocations();
    std::vector<std::vector<unsigned char>> snapshot(allocs.size()), first(allocs.size());
    for (size_t a = 0; a < allocs.size(); ++a) snapshot[a].assign(allocs[a].first, allocs[a].first + allocs[a].second);
    L.reverse = false;
    L.greedy = true;
    L.cp_immediate = true;
    L.smem_poison = 0xff;
    L.note_atomics = true;
    run_launch(L, 1);
    if (L.failed) return cudaErrorLaunchFailure;
    for (size_t a = 0; a < allocs.size(); ++a) {
        first[a].assign(allocs[a].first, allocs[a].first + allocs[a].second);
        memcpy(allocs[a].first, snapshot[a].data(), allocs[a].second);
    }
    /* Schedule B: reverse thread and block order, copies land at the wait, other poison,
     * and a new OS thread: its static __shared__ variables (thread_local) start zeroed
     * instead of holding what earlier blocks left, so reads of unwritten shared memory
     * differ between the two runs too. */
    L.reverse = true;
    L.cp_immediate = false;
    L.smem_poison = 0x7f;
    L.next_block = 0;
    std::thread fresh([&L] { run_blocks(L); });
    fresh.join();
    if (L.failed) return cudaErrorLaunchFailure;
    std::sort(L.atomic_words.begin(), L.atomic_words.end());
    L.atomic_words.erase(std::unique(L.atomic_words.begin(), L.atomic_words.end()), L.atomic_words.end());
    std::string diff = compare_results(allocs, first, L.atomic_words);
    /* Leave the forward schedule's result in memory, as a normal run would. */
    for (size_t a = 0; a < allocs.size(); ++a) memcpy(allocs[a].first, first[a].data(), allocs[a].second);
    if (diff.empty()) return cudaSuccess;
    g_race_reports++;
    char head[256];
    snprintf(head, sizeof head, "fab_emu: race check: %s grid (%u,%u,%u) block (%u,%u,%u): ",
             kernel_name(L.kernel).c_str(), L.grid.x, L.grid.y, L.grid.z, L.block.x, L.block.y, L.block.z);
    launch_failure(&L, std::string(head) +
                           "device memory differs between the forward and the reverse thread schedule -- a missing "
                           "__syncthreads/__syncwarp/cp.async wait, a read of uninitialised shared memory, or an "
                           "order-dependent atomic:" +
                           diff);
    return cudaErrorLaunchFailure;
}

} // namespace fab_emu

using namespace fab_emu;

/* ------------------------------------------------------------------ launch entry */

cudaError_t fab_emu_launch(const cudaLaunchConfig_t *cfg, const void *kernel, void (*invoke)(const void *),
                           const void *closure)
{
    if (!cfg || !kernel) return record_error(cudaErrorInvalidValue);
    if (tl_thread) {
        fprintf(stderr, "fab_emu: kernel launch from inside a kernel (dynamic parallelism) is not emulated\n");
        abort();
    }
    const cudaDeviceProp &p = device_props();
    dim3 g = cfg->gridDim, b = cfg->blockDim;
    if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > (unsigned)p.maxThreadsDim[0] || b.y > (unsigned)p.maxThreadsDim[1] ||
        b.z > (unsigned)p.maxThreadsDim[2] ||
        (unsigned long long)b.x * b.y * b.z > (unsigned long long)p.maxThreadsPerBlock)
        return record_error(cudaErrorInvalidConfiguration);
    if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > (unsigned)p.maxGridSize[0] || g.y > (unsigned)p.maxGridSize[1] ||
        g.z > (unsigned)p.maxGridSize[2])
        return record_error(cudaErrorInvalidConfiguration);
    int opt = func_max_dynamic_smem(kernel);
    size_t limit = opt >= 0 ? (size_t)opt : p.sharedMemPerBlock;
    if (cfg->dynamicSmemBytes > limit) return record_error(cudaErrorInvalidValue);
    if (!stream_is_valid(cfg->stream)) return record_error(cudaErrorInvalidResourceHandle);
    stream_drain(cfg->stream); /* work outside the emulator ahead of it on the stream */
    for (unsigned i = 0; i < cfg->numAttrs; ++i) {
        const cudaLaunchAttribute &a = cfg->attrs[i];
        if (a.id == cudaLaunchAttributeClusterDimension &&
            (a.val.clusterDim.x > 1 || a.val.clusterDim.y > 1 || a.val.clusterDim.z > 1))
            return record_error(cudaErrorNotSupported); /* clusters: a later issue (Hopper) */
    }
    Launch L;
    L.invoke = invoke;
    L.closure = closure;
    L.kernel = kernel;
    L.grid = g;
    L.block = b;
    L.smem = cfg->dynamicSmemBytes;
    L.nblocks = (unsigned long long)g.x * g.y * g.z;
    cudaError_t e = execute(L);
    return e == cudaSuccess ? e : record_error(e);
}

extern "C" {

int fab_emu_set_smemcheck(int on)
{
    int old = smemcheck_on() ? 1 : 0;
    g_smemcheck = on ? 1 : 0;
    return old;
}

int fab_emu_set_racecheck(int on)
{
    int old = racecheck_on() ? 1 : 0;
    g_racecheck = on ? 1 : 0;
    return old;
}

unsigned long fab_emu_race_reports(void) { return g_race_reports.load(); }

int fab_emu_set_error_mode(int return_errors)
{
    int old = error_mode_return() ? 1 : 0;
    g_error_return = return_errors ? 1 : 0;
    return old;
}

int fab_emu_set_threads(int n)
{
    int old = worker_count();
    g_threads = n < 1 ? 1 : n;
    return old;
}

void fab_emu_get_stats(struct fab_emu_stats *out)
{
    out->launches = g_stats[STAT_LAUNCHES].load();
    out->blocks = g_stats[STAT_BLOCKS].load();
    out->threads = g_stats[STAT_THREADS].load();
    out->mma = g_stats[STAT_MMA].load();
    out->ldmatrix = g_stats[STAT_LDMATRIX].load();
    out->cp_async = g_stats[STAT_CP_ASYNC].load();
    out->collectives = g_stats[STAT_COLLECTIVES].load();
    out->barriers = g_stats[STAT_BARRIERS].load();
    out->float_atomics = g_stats[STAT_FLOAT_ATOMICS].load();
    out->smem_requests = g_stats[STAT_SMEM_REQUESTS].load();
    out->smem_wavefronts = g_stats[STAT_SMEM_WAVEFRONTS].load();
    out->smem_bank_conflicts = g_stats[STAT_SMEM_CONFLICTS].load();
    out->wgmma = g_stats[STAT_WGMMA].load();
}

} // extern "C"
