/*
 * internal.h -- state shared by the emulator's source files.
 *
 * One Launch describes a kernel launch.  A worker (an OS thread) runs one Block
 * of it at a time; the block's Threads are fibers on that worker.  Everything a
 * Block owns is touched only by its worker, so it needs no locks.
 */
#ifndef FAB_EMU_INTERNAL_H
#define FAB_EMU_INTERNAL_H

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "fab_emu.h"
#include "fab_emu/device.h"
#include "fiber.h"

namespace fab_emu {

enum class TState { Runnable, AtBarrier, AtWarp, Exited };

/* One cp.async copy waiting for its group's wait. */
struct CpOp {
    void *dst;
    const void *src;
    unsigned bytes, src_bytes;
    unsigned long long group;
    bool landed; /* data already copied (race check's first run); the window still ends at the wait */
};

/* A shared-memory access logged for the bank model (banks.cpp). */
enum SmemKind : unsigned char { SMEM_CP_ASYNC, SMEM_STORE, SMEM_LOAD };
struct SmemAccess {
    uintptr_t addr; /* bank-relative address */
    unsigned bytes;
    SmemKind kind;
};

struct Thread {
    fab_emu_thread id;
    Fiber fiber;
    TState state = TState::Exited;
    /* warp collective in progress */
    CollFn coll_fn = nullptr;
    int coll_op = 0;
    uint32_t coll_mask = 0;
    const void *coll_in = nullptr;
    void *coll_out = nullptr;
    const char *coll_what = "";
    /* barrier in progress */
    int bar_id = -1;
    int bar_result = 0;
    /* cp.async groups: ops carry the number of the group they belong to; the open
     * (uncommitted) group is number cp_open_group. */
    std::vector<CpOp> cp_pending;
    unsigned long long cp_open_group = 0;
    /* shared-memory race detector (shadow.cpp): happens-before clocks.  vc[w] for the
     * block's warps (vc[own warp] is this thread's epoch), lv[l] for the lanes of its own
     * warp (lv[own lane] is its lane epoch).  Null when the detector is off. */
    uint32_t *vc = nullptr;
    uint32_t *lv = nullptr;
    bool yielded = false; /* suspended by yield() (spin loop), not by a synchronisation */
    uint32_t proxy_fences = 0; /* fence.proxy.async executed (shadow.cpp's proxy check) */
    /* cp.async destinations and plain shared accesses since the warp last met (banks.cpp) */
    std::vector<SmemAccess> bank_cp;
};

/* One of the 16 named barriers of a block, for the current phase. */
struct Barrier {
    bool active = false;
    int count = 0;             /* 0: all threads of the block */
    uint32_t arrived[32] = {}; /* lanes arrived, per warp */
    uint32_t counted = 0;      /* warps whose arrival has been counted */
    int warps_arrived = 0;
    int popc = 0;
    bool all = true, any = false;
    uint32_t join[32] = {}; /* race detector: join of the arrivals' warp clocks */
    const char *site_file = nullptr; /* __syncthreads: where the phase's first thread called it */
    int site_line = 0;
};

struct Launch;

/* A wgmma.mma_async recorded at issue, computed when wait_group retires it (wgmma.cpp). */
struct WgmmaOp {
    WgmmaKind kind;
    int n;
    bool a_in_regs;
    bool trans_a, trans_b;
    bool neg_a, neg_b;
    bool accumulate;
    uint64_t desc_a, desc_b;
    float *d[32];
    uint32_t a[32][4]; /* A from registers */
    unsigned long long group;
};

/* TMA and mbarrier (tma.cpp). */
struct TensorMapDesc {   /* what the emulator's cuTensorMapEncodeTiled put in a CUtensorMap */
    const unsigned char *base;
    int rank;                           /* 1..5 */
    unsigned long long dim[5], stride[5]; /* elements; bytes between consecutive indices (stride[0] = elem) */
    unsigned box[5], elem, swizzle_bytes; /* swizzle_bytes 0 (none), 32, 64, 128 */
    bool nan_fill, f16; /* f16: NaN fill with f16's NaN (else bf16's, for 2-byte elements) */
};
struct TmaCopy {         /* a cp.async.bulk.tensor load not yet landed */
    unsigned char *dst;
    TensorMapDesc map;
    int coord[5];
    unsigned issuer;     /* linear thread index */
    std::vector<uint32_t> vc, lv; /* race detector: the issuer's clocks at the issue */
};
struct Mbar {            /* an initialised mbarrier object */
    const void *addr;
    unsigned count, pending;
    long long tx;
    unsigned long long phase;
    std::vector<TmaCopy> inflight;
    /* race detector: clocks released by arrivals of the current phase, and at the last completion */
    std::vector<uint32_t> join_vc, done_vc;
    std::vector<uint32_t> join_lv, done_lv; /* [warp][lane] */
};

struct WgmmaWarp { /* one warp's wgmma state */
    std::vector<WgmmaOp> pending;
    unsigned long long committed = 0; /* groups closed by commit_group; the open one has this number */
    unsigned long long issued = 0;    /* wgmma.mma_async issued by the warp in all */
    bool fenced = false;              /* a wgmma.fence since the warp's last wait_group */
};

struct RegWarp { /* one warp's setmaxnreg state (setmaxnreg.cpp) */
    unsigned regs = 0;        /* its per-thread register count now */
    unsigned want = 0;        /* a setmaxnreg.inc waiting for the pool; 0 when none */
    std::vector<int> history; /* the counts it set, negative for .dec */
};

struct Block {
    Launch *launch = nullptr;
    uint3 idx = {0, 0, 0};
    unsigned nthreads = 0, nwarps = 0, live = 0;
    Thread **threads = nullptr; /* the block's threads by linear index */
    uint32_t exited[32] = {};  /* per warp: exited lanes, and lanes that do not exist */
    uint32_t waiting[32] = {}; /* per warp: lanes waiting in a warp collective */
    uint32_t activemask_waiting[32] = {}; /* per warp: lanes waiting in __activemask */
    Barrier bars[16];
    unsigned char *smem = nullptr;
    struct Shadow *shadow = nullptr; /* race detector state; null when off */
    std::vector<WgmmaWarp> wgmma;    /* per warp: wgmma issued and not yet retired (wgmma.cpp) */
    std::vector<Mbar> mbars;         /* initialised mbarriers (tma.cpp) */
    /* deadlock detection (tma.cpp): mbarrier and setmaxnreg events (inits, arrivals,
     * landed loads, registers freed or taken), and the failed waits since the count
     * last changed */
    unsigned long long mbar_progress = 0, mbar_seen = 0, mbar_spins = 0;
    std::vector<RegWarp> regwarps; /* per warp, once a warp runs setmaxnreg */
    unsigned long long reg_free = 0; /* registers in the block's pool that no warp holds */
};

struct Launch {
    void (*invoke)(const void *) = nullptr;
    const void *closure = nullptr;
    const void *kernel = nullptr;
    dim3 grid, block;
    size_t smem = 0;
    unsigned long long nblocks = 0;
    /* schedule */
    bool reverse = false;      /* run threads (and blocks) in reverse order */
    bool cp_immediate = false; /* cp.async copies at issue instead of at the wait */
    unsigned char smem_poison = 0xff;
    bool greedy = false;       /* run each warp as far as it goes before the next one */
    bool shadow = false;       /* shared-memory race detector on (shadow.cpp) */
    /* progress and failure */
    std::atomic<unsigned long long> next_block{0};
    std::atomic<bool> failed{false};
    std::atomic<unsigned long long> undefined_reads{0};
    /* race check: 4-byte words that float atomics added to (note_float_atomic) */
    bool note_atomics = false;
    std::mutex atomic_mu;
    std::vector<uintptr_t> atomic_words;
};

/* The running thread and block of this OS thread (null outside a kernel). */
extern thread_local Thread *tl_thread;
extern thread_local Block *tl_block;

/* ---- runtime.cpp ---- */
const cudaDeviceProp &device_props();
int func_max_dynamic_smem(const void *func); /* -1 if never set */
bool stream_is_valid(cudaStream_t s);
/* Work that runs outside the emulator, on another thread (the emulated NCCL's
 * collectives): streams hold it until it completes (runtime.cpp's top). */
struct Pending {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    void complete();
    void wait();
    bool is_done();
};
using PendingRef = std::shared_ptr<Pending>;
/* Later operations on `s`, and events recorded on it, wait for p. */
cudaError_t stream_add_pending(cudaStream_t s, PendingRef p);
/* What work on `s` must wait for now (completed work dropped). */
std::vector<PendingRef> stream_pending(cudaStream_t s);
/* Waits for it: every operation the emulator runs on `s` first calls this. */
void stream_drain(cudaStream_t s);
cudaError_t record_error(cudaError_t e); /* sets the thread's last error; returns e */
/* Snapshot of live device allocations (base, size). */
std::vector<std::pair<unsigned char *, size_t>> device_allocations();
/* The first allocation whose redzones (runtime.cpp) were written since they were
 * filled, described and refilled; empty if none. */
std::string check_redzones();
void set_last_message(const std::string &m);

/* ---- settings (scheduler.cpp) ---- */
bool error_mode_return();
void count_stat(int which, unsigned long long n); /* index into fab_emu_stats fields */
enum { STAT_LAUNCHES, STAT_BLOCKS, STAT_THREADS, STAT_MMA, STAT_LDMATRIX, STAT_CP_ASYNC, STAT_COLLECTIVES, STAT_BARRIERS,
       STAT_FLOAT_ATOMICS, STAT_SMEM_REQUESTS, STAT_SMEM_WAVEFRONTS, STAT_SMEM_CONFLICTS, STAT_WGMMA, STAT_COUNT };

/* Describe the running thread: "block (1,0,0) thread (5,0,0)". */
std::string where();
/* Name a kernel by its address (dladdr + demangle, or the address). */
std::string kernel_name(const void *fn);

/* A race found by the detector: count it, print, then abort or fail the launch. */
void race_failure(Launch *L, const std::string &msg);
bool smemcheck_on();

/* ---- shadow.cpp: the shared-memory race detector ----
 * Every shared-memory access made by emulator code (cp.async, ldmatrix, stmatrix,
 * fab__ld_shared / fab__st_shared) is
 * checked against the last write and the reads since it, by happens-before: barriers
 * order the warps that take part, warp collectives the lanes that take part.  */
struct Shadow;
Shadow *shadow_acquire(Block &b);          /* per worker, reset for this block */
void shadow_thread_init(Block &b, Thread &t);
void shadow_barrier_arrive(Block &b, Barrier &B, Thread &t, bool wait);
void shadow_barrier_release(Block &b, Barrier &B, int id);
void shadow_warp_sync_begin(Block &b, unsigned w, uint32_t lanes); /* before a collective's work */
void shadow_warp_sync_end(Block &b, unsigned w, uint32_t lanes);   /* after it */
bool collective_orders_memory(CollFn fn); /* ptx.cpp: false for mma, movmatrix */
enum ShadowOp { SH_LDMATRIX, SH_STMATRIX, SH_CP_ASYNC, SH_LOAD, SH_STORE, SH_TMA, SH_WGMMA };
void shadow_read(Block &b, Thread &t, const void *p, unsigned bytes, ShadowOp op);
/* A read by the async proxy (wgmma): shadow_read, and bytes written through the
 * generic proxy (st.shared, stmatrix, cp.async) must have had a fence.proxy.async
 * by their writer since (Thread::proxy_fences). */
void shadow_async_proxy_read(Block &b, Thread &t, const void *p, unsigned bytes);
void shadow_write(Block &b, Thread &t, const void *p, unsigned bytes, ShadowOp op, bool async);
void shadow_async_done(Block &b, Thread &t, const void *p, unsigned bytes); /* the wait that completes it */
/* mbarrier: an arrival (or a TMA's completed transaction) releases t's clocks into
 * vc/lv (nwarps and nwarps*32 entries); a wait that sees the phase complete acquires them. */
void shadow_release(Block &b, Thread &t, std::vector<uint32_t> &vc, std::vector<uint32_t> &lv);
void shadow_acquire(Block &b, Thread &t, const std::vector<uint32_t> &vc, const std::vector<uint32_t> &lv);

/* ---- banks.cpp: the shared-memory bank model ----
 * ldmatrix/stmatrix are modelled as they execute; cp.async destinations and plain
 * accesses (shared_access) are logged per lane and modelled when the warp next meets
 * (bank_flush_warp). */
void bank_matrix(const Block &b, unsigned warp, const void *const row_addr[32], int nmat, bool store);
void bank_note(Thread &t, const void *p, unsigned bytes, SmemKind kind);
void bank_flush_warp(const Block &b, unsigned w);

/* ---- wgmma.cpp ---- */
/* A thread ends: its warp must have retired all its wgmma (kernel_error otherwise). */
void wgmma_thread_exit(Block &b, Thread &t);
/* ---- setmaxnreg.cpp ---- */
/* A thread ends: the 4 warps of each warpgroup ran the same setmaxnreg sequence. */
void setmaxnreg_thread_exit(Block &b);
/* ---- tma.cpp ---- */
/* Counts a failed wait for an mbarrier phase or for registers: true once the block's
 * threads failed 2^20 waits while no mbarrier or register count moved (deadlock). */
bool wait_deadlocked(Block &b);
/* The block's last thread ends: no TMA load may still be in flight. */
void tma_thread_exit(Block &b);

/* cp.async (ptx.cpp): perform the thread's pending copies of groups < limit. */
void cp_async_complete(Thread &t, unsigned long long limit);

} // namespace fab_emu

#endif
