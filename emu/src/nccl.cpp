/*
 * nccl.cpp -- the emulated NCCL (emu/include/nccl.h): enough of NCCL for fabriek's
 * CUDA communicators (src/comm/comm_nccl.c) to run, many ranks at a time, on a
 * machine without a GPU, so that their code (non-blocking creation, the watchdog,
 * abort, gradient exchange on a second stream) is tested rather than only compiled.
 *
 * Ranks meet in a shared-memory file (/dev/shm) named by the unique id: a header of
 * per-rank counters and one slot of kSlotBytes per rank. Ranks are usually processes
 * (mpirun), but threads of one process work the same way.
 *
 * A collective is asynchronous, as on a GPU: the call checks its arguments, queues
 * the work on the communicator's worker thread and returns; the stream holds it as
 * pending work (runtime.cpp) that the stream's later operations, events and
 * synchronising calls wait for. The worker moves the data in steps: in step t each
 * rank copies its part into its slot and publishes `posted = t`, waits until every
 * rank has posted t, reads what it needs from all slots, and publishes
 * `consumed = t`; a rank writes its slot for step t + 1 only once every rank has
 * consumed t. Reductions run in rank order in double (in the element type for
 * integers), rounded once, so every rank gets the same bits.
 *
 * A rank that never arrives leaves the others' worker waiting, and their streams
 * pending, exactly the hang fabriek's watchdog must catch. ncclCommAbort ends the
 * wait: the work in flight and everything queued completes without effect. A peer
 * process that has died (its pid gone) is reported as ncclRemoteError by
 * ncclCommGetAsyncError, as NCCL reports a broken connection; the collective stays
 * pending until the abort, as NCCL's kernel stays stuck.
 *
 * Non-blocking communicators (config.blocking = 0): init, split and finalize
 * return ncclInProgress and complete on the worker; ncclCommGetAsyncError says
 * ncclInProgress until then. Blocking ones wait in the call.
 *
 * Differences from NCCL: one machine only; no point-to-point calls; groups only
 * bracket calls (every collective is queued at once, which NCCL's semantics allow
 * since all ranks issue the same sequence); reductions round once, not per hop;
 * device buffers are host memory, so nothing checks that a pointer is a device one.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "fab_emu/half_bits.h"
#include "internal.h"
#include "nccl.h"

namespace {

using fab_emu::Pending;
using fab_emu::PendingRef;

constexpr int kMaxRanks = 64;
constexpr size_t kSlotBytes = size_t(1) << 20;
constexpr uint32_t kIdMagic = 0x4e454246u; /* "FBEN" */
/* Shared::pid of a rank that left: destroyed its communicator, or aborted it */
constexpr int kPidLeft = -1, kPidAborted = -2;

/* The start of the shared file; the slots follow at kHeaderBytes. Lock-free atomics
 * are address-free, so they work across processes. */
struct Shared {
    std::atomic<int> nranks;
    std::atomic<int> joined;
    std::atomic<int> pid[kMaxRanks];
    std::atomic<uint64_t> posted[kMaxRanks];
    std::atomic<uint64_t> consumed[kMaxRanks];
};
constexpr size_t kHeaderBytes = (sizeof(Shared) + 4095) / 4096 * 4096;

/* The unique id's layout (NCCL's is opaque too). */
struct IdBits {
    uint32_t magic;
    uint32_t pad;
    uint64_t key[2];
};
static_assert(sizeof(IdBits) <= NCCL_UNIQUE_ID_BYTES, "id fits");

enum class Kind { Init, AllReduce, ReduceScatter, AllGather, Broadcast, Split, Finalize };

struct Item {
    Kind kind;
    const void *send = nullptr;
    void *recv = nullptr;
    size_t count = 0;
    ncclDataType_t type = ncclFloat32;
    ncclRedOp_t op = ncclSum;
    int root = 0;
    int color = 0, key = 0;       /* Split */
    ncclComm_t child = nullptr;   /* Split: the new communicator, initialised here */
    std::vector<PendingRef> after; /* the stream's work ahead of this collective */
    PendingRef done;
};

} // namespace

struct ncclComm {
    IdBits id{};
    int nranks = 0, rank = -1;
    int blocking = 1;
    Shared *sh = nullptr;
    bool have_slot = false;  /* sh->pid[rank] is this process's */
    unsigned char *slots = nullptr;
    size_t map_bytes = 0;
    uint64_t step = 0;       /* worker only */
    uint64_t splits = 0;     /* ncclCommSplit calls, for the children's ids */
    std::atomic<int> aborted{0};
    std::atomic<int> async_error{ncclSuccess}; /* ncclInProgress while init is under way */
    std::atomic<int> busy{0}; /* split and finalize items queued and not done */
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::shared_ptr<Item>> queue;
    bool stop = false;
    std::thread worker;
};

namespace {

size_t type_size(ncclDataType_t t)
{
    switch (t) {
    case ncclInt8:
    case ncclUint8: return 1;
    case ncclFloat16:
    case ncclBfloat16: return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32: return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64: return 8;
    default: return 0;
    }
}

bool is_float(ncclDataType_t t)
{
    return t == ncclFloat16 || t == ncclBfloat16 || t == ncclFloat32 || t == ncclFloat64;
}

double load_f(const void *p, ncclDataType_t t, size_t i)
{
    switch (t) {
    case ncclFloat16: return fab_emu::f16_to_f32(((const uint16_t *)p)[i]);
    case ncclBfloat16: return fab_emu::bf16_to_f32(((const uint16_t *)p)[i]);
    case ncclFloat32: return ((const float *)p)[i];
    default: return ((const double *)p)[i];
    }
}

void store_f(void *p, ncclDataType_t t, size_t i, double v)
{
    switch (t) {
    case ncclFloat16: ((uint16_t *)p)[i] = fab_emu::f32_to_f16_rn(fab_emu::f64_to_f32_round_odd(v)); break;
    case ncclBfloat16: ((uint16_t *)p)[i] = fab_emu::f32_to_bf16_rn(fab_emu::f64_to_f32_round_odd(v)); break;
    case ncclFloat32: ((float *)p)[i] = (float)v; break;
    default: ((double *)p)[i] = v; break;
    }
}

/* Rounds v to the element type (for AVG's premultiplier, as NCCL forms it). */
double round_to(ncclDataType_t t, double v)
{
    unsigned char tmp[8];
    store_f(tmp, t, 0, v);
    return load_f(tmp, t, 0);
}

template <typename T> T combine_i(T a, T b, ncclRedOp_t op)
{
    switch (op) {
    case ncclProd: return (T)(a * b);
    case ncclMax: return a > b ? a : b;
    case ncclMin: return a < b ? a : b;
    default: return (T)(a + b);
    }
}

template <typename T> void reduce_ints(void *out, const unsigned char *const *in, int n, size_t cnt, ncclRedOp_t op)
{
    for (size_t i = 0; i < cnt; i++) {
        T acc = ((const T *)in[0])[i];
        for (int r = 1; r < n; r++) acc = combine_i(acc, ((const T *)in[r])[i], op);
        if (op == ncclAvg) acc = (T)(acc / (T)n);
        ((T *)out)[i] = acc;
    }
}

/* out[i] = op over r of in[r][i], in rank order. AVG: NCCL premultiplies each input
 * by 1/n rounded to the type (floats), or divides the sum (integers). */
void reduce(void *out, const unsigned char *const *in, int n, size_t cnt, ncclDataType_t t, ncclRedOp_t op)
{
    if (!is_float(t)) {
        switch (t) {
        case ncclInt8: reduce_ints<int8_t>(out, in, n, cnt, op); break;
        case ncclUint8: reduce_ints<uint8_t>(out, in, n, cnt, op); break;
        case ncclInt32: reduce_ints<int32_t>(out, in, n, cnt, op); break;
        case ncclUint32: reduce_ints<uint32_t>(out, in, n, cnt, op); break;
        case ncclInt64: reduce_ints<int64_t>(out, in, n, cnt, op); break;
        default: reduce_ints<uint64_t>(out, in, n, cnt, op); break;
        }
        return;
    }
    const double scale = op == ncclAvg ? round_to(t, 1.0 / n) : 1.0;
    for (size_t i = 0; i < cnt; i++) {
        double acc = load_f(in[0], t, i) * scale;
        for (int r = 1; r < n; r++) {
            double v = load_f(in[r], t, i) * scale;
            switch (op) {
            case ncclProd: acc *= v; break;
            case ncclMax: acc = v > acc ? v : acc; break;
            case ncclMin: acc = v < acc ? v : acc; break;
            default: acc += v; break;
            }
        }
        store_f(out, t, i, acc);
    }
}

double now_s()
{
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/* A peer process that no longer exists (a thread of this process never "dies"). */
bool peer_gone(ncclComm_t c)
{
    for (int r = 0; r < c->nranks; r++) {
        int pid = c->sh->pid[r].load();
        if (pid > 0 && pid != getpid() && kill(pid, 0) != 0 && errno == ESRCH) return true;
    }
    return false;
}

/* Spins, then sleeps, until ready() holds. ncclSuccess, or why it stopped waiting:
 * the communicator was aborted (ncclInternalError: the caller only completes its
 * work) or a peer died (ncclRemoteError). */
template <typename F> ncclResult_t wait_until(ncclComm_t c, F ready)
{
    double next_check = now_s() + 0.1;
    for (int spins = 0;; spins++) {
        if (ready()) return ncclSuccess;
        if (c->aborted.load()) return ncclInternalError;
        if (spins < 64) {
            std::this_thread::yield();
            continue;
        }
        struct timespec ts = {0, spins < 1000 ? 20000 : 200000};
        nanosleep(&ts, nullptr);
        if (now_s() > next_check) {
            if (peer_gone(c)) return ncclRemoteError;
            next_check = now_s() + 0.1;
        }
    }
}

/* One step of the exchange: `fill` writes this rank's slot (at most kSlotBytes),
 * `use` reads every rank's slot. */
template <typename Fill, typename Use> ncclResult_t exchange(ncclComm_t c, Fill fill, Use use)
{
    const uint64_t t = ++c->step;
    const int n = c->nranks;
    /* an aborted peer's slot is never read again: its NCCL communicator is gone,
     * and a rank that comes late waits (until its own timeout), as with NCCL */
    ncclResult_t r = wait_until(c, [&] {
        for (int q = 0; q < n; q++)
            if (c->sh->consumed[q].load(std::memory_order_acquire) < t - 1 || c->sh->pid[q].load() == kPidAborted)
                return false;
        return true;
    });
    if (r != ncclSuccess) return r;
    fill(c->slots + (size_t)c->rank * kSlotBytes);
    c->sh->posted[c->rank].store(t, std::memory_order_release);
    r = wait_until(c, [&] {
        for (int q = 0; q < n; q++)
            if (c->sh->posted[q].load(std::memory_order_acquire) < t || c->sh->pid[q].load() == kPidAborted)
                return false;
        return true;
    });
    if (r != ncclSuccess) return r;
    const unsigned char *all[kMaxRanks];
    for (int q = 0; q < n; q++) all[q] = c->slots + (size_t)q * kSlotBytes;
    use(all);
    c->sh->consumed[c->rank].store(t, std::memory_order_release);
    return ncclSuccess;
}

/* Elements [0, count) in steps of at most `per`: one exchange each, whose fill and
 * use get the step's first element i0 and length m. */
template <typename Fill, typename Use>
ncclResult_t in_steps(ncclComm_t c, size_t count, size_t per, Fill fill, Use use)
{
    for (size_t i0 = 0; i0 < count; i0 += per) {
        const size_t m = count - i0 < per ? count - i0 : per;
        ncclResult_t r = exchange(
            c, [&](unsigned char *slot) { fill(slot, i0, m); },
            [&](const unsigned char *const *all) { use(all, i0, m); });
        if (r != ncclSuccess) return r;
    }
    return ncclSuccess;
}

ncclResult_t run_collective(ncclComm_t c, const Item &it)
{
    const size_t es = type_size(it.type);
    const int n = c->nranks;
    const unsigned char *send = (const unsigned char *)it.send;
    unsigned char *recv = (unsigned char *)it.recv;
    const size_t per = kSlotBytes / es;
    switch (it.kind) {
    case Kind::AllReduce:
        return in_steps(
            c, it.count, per, [&](unsigned char *slot, size_t i0, size_t m) { memcpy(slot, send + i0 * es, m * es); },
            [&](const unsigned char *const *all, size_t i0, size_t m) {
                reduce(recv + i0 * es, all, n, m, it.type, it.op);
            });
    case Kind::ReduceScatter: /* rank q's block of every send buffer, summed into q's recv */
        return in_steps(
            c, it.count, per / (size_t)n,
            [&](unsigned char *slot, size_t i0, size_t m) {
                for (int q = 0; q < n; q++)
                    memcpy(slot + (size_t)q * m * es, send + ((size_t)q * it.count + i0) * es, m * es);
            },
            [&](const unsigned char *const *all, size_t i0, size_t m) {
                const unsigned char *mine[kMaxRanks];
                for (int q = 0; q < n; q++) mine[q] = all[q] + (size_t)c->rank * m * es;
                reduce(recv + i0 * es, mine, n, m, it.type, it.op);
            });
    case Kind::AllGather:
        return in_steps(
            c, it.count, per, [&](unsigned char *slot, size_t i0, size_t m) { memcpy(slot, send + i0 * es, m * es); },
            [&](const unsigned char *const *all, size_t i0, size_t m) {
                for (int q = 0; q < n; q++) memmove(recv + ((size_t)q * it.count + i0) * es, all[q], m * es);
            });
    case Kind::Broadcast:
        return in_steps(
            c, it.count, per,
            [&](unsigned char *slot, size_t i0, size_t m) {
                if (c->rank == it.root) memcpy(slot, send + i0 * es, m * es);
            },
            [&](const unsigned char *const *all, size_t i0, size_t m) {
                memmove(recv + i0 * es, all[it.root], m * es);
            });
    default: return ncclInternalError;
    }
}

std::string shm_name(const IdBits &id)
{
    char b[64];
    snprintf(b, sizeof b, "/fab_emu_nccl_%016llx%016llx", (unsigned long long)id.key[0],
             (unsigned long long)id.key[1]);
    return b;
}

/* Opens the shared file and takes this rank's place in it; then waits (on the
 * worker, or in the call for a blocking communicator) for every rank. */
ncclResult_t attach(ncclComm_t c)
{
    std::string name = shm_name(c->id);
    int fd = shm_open(name.c_str(), O_RDWR | O_CREAT, 0600);
    if (fd < 0) return ncclSystemError;
    c->map_bytes = kHeaderBytes + (size_t)c->nranks * kSlotBytes;
    struct stat st;
    if (fstat(fd, &st) != 0 || ((size_t)st.st_size < c->map_bytes && ftruncate(fd, (off_t)c->map_bytes) != 0)) {
        close(fd);
        return ncclSystemError;
    }
    void *p = mmap(nullptr, c->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        c->map_bytes = 0;
        return ncclSystemError;
    }
    c->sh = (Shared *)p;
    c->slots = (unsigned char *)p + kHeaderBytes;
    int expect = 0;
    if (!c->sh->nranks.compare_exchange_strong(expect, c->nranks) && expect != c->nranks)
        return ncclInvalidUsage; /* the ranks disagree on the size */
    expect = 0;
    if (!c->sh->pid[c->rank].compare_exchange_strong(expect, (int)getpid())) return ncclInvalidUsage; /* rank taken */
    c->have_slot = true;
    if (c->sh->joined.fetch_add(1) + 1 == c->nranks) shm_unlink(name.c_str()); /* all have it open */
    return ncclSuccess;
}

/* Until every rank of c has joined; waiter's abort (c's own, or for a split's
 * child its parent's) ends the wait. */
ncclResult_t wait_joined(ncclComm_t waiter, ncclComm_t c)
{
    return wait_until(waiter, [c] { return c->sh->joined.load() >= c->nranks; });
}

void start_worker(ncclComm_t c);

/* Split: every rank's (color, key) through one exchange; the ranks of a color,
 * ordered by key then old rank, form the child, whose id comes from the parent's
 * and the color. */
ncclResult_t run_split(ncclComm_t c, Item &it)
{
    int colors[kMaxRanks], keys[kMaxRanks];
    ncclResult_t r = exchange(
        c,
        [&](unsigned char *slot) {
            memcpy(slot, &it.color, sizeof(int));
            memcpy(slot + sizeof(int), &it.key, sizeof(int));
        },
        [&](const unsigned char *const *all) {
            for (int q = 0; q < c->nranks; q++) {
                memcpy(&colors[q], all[q], sizeof(int));
                memcpy(&keys[q], all[q] + sizeof(int), sizeof(int));
            }
        });
    if (r != ncclSuccess || !it.child) return r;
    int size = 0, rank = 0;
    for (int q = 0; q < c->nranks; q++) {
        if (colors[q] != it.color) continue;
        size++;
        if (keys[q] < it.key || (keys[q] == it.key && q < c->rank)) rank++;
    }
    ncclComm_t ch = it.child;
    ch->nranks = size;
    ch->rank = rank;
    ch->id.key[1] = ch->id.key[1] * 0x9e3779b97f4a7c15ull + (uint64_t)(uint32_t)it.color;
    /* the child's init is part of the split: here, under the parent's abort */
    r = attach(ch);
    if (r != ncclSuccess) return r;
    start_worker(ch);
    r = wait_joined(c, ch);
    if (r == ncclSuccess) ch->async_error.store(ncclSuccess);
    return r;
}

void worker_main(ncclComm_t c)
{
    for (;;) {
        std::shared_ptr<Item> it;
        {
            std::unique_lock<std::mutex> lk(c->mu);
            c->cv.wait(lk, [c] { return c->stop || !c->queue.empty(); });
            if (c->queue.empty()) return;
            it = c->queue.front();
            c->queue.pop_front();
        }
        ncclResult_t r = ncclSuccess;
        for (const PendingRef &p : it->after) {
            r = wait_until(c, [&p] { return p->is_done(); });
            if (r != ncclSuccess) break;
        }
        if (r == ncclSuccess && !c->aborted.load()) {
            switch (it->kind) {
            case Kind::Init:
                r = wait_joined(c, c);
                if (r == ncclSuccess) c->async_error.store(ncclSuccess);
                break;
            case Kind::Split: r = run_split(c, *it); break;
            case Kind::Finalize: break; /* everything queued before it is done */
            default: r = run_collective(c, *it); break;
            }
        }
        /* ncclInternalError here means aborted: nobody asks any more */
        if (r != ncclSuccess && r != ncclInternalError) c->async_error.store(r);
        if (it->kind == Kind::Split && r != ncclSuccess && it->child) it->child->async_error.store(r);
        /* A collective that met a dead peer stays stuck, as NCCL's kernel does, until
         * ncclCommAbort (or destroy) ends it: completing it here would let a stream
         * query read "done" for work that never happened. */
        const bool collective = it->kind != Kind::Init && it->kind != Kind::Split && it->kind != Kind::Finalize;
        if (r == ncclRemoteError && collective) {
            std::unique_lock<std::mutex> lk(c->mu);
            c->cv.wait(lk, [c] { return c->stop || c->aborted.load(); });
        }
        if (it->kind == Kind::Split || it->kind == Kind::Finalize) c->busy.fetch_sub(1);
        it->done->complete();
    }
}

void start_worker(ncclComm_t c)
{
    c->worker = std::thread(worker_main, c);
}

void enqueue(ncclComm_t c, std::shared_ptr<Item> it)
{
    if (!it->done) it->done = std::make_shared<Pending>();
    std::lock_guard<std::mutex> lk(c->mu);
    c->queue.push_back(std::move(it));
    c->cv.notify_one();
}

/* Attaches, then waits for the peers on the worker; a blocking communicator
 * waits for that in the call. */
void init_comm(ncclComm_t c, int blocking)
{
    ncclResult_t r = attach(c);
    if (r != ncclSuccess) {
        c->async_error.store(r);
        return;
    }
    start_worker(c);
    auto it = std::make_shared<Item>();
    it->kind = Kind::Init;
    enqueue(c, it);
    if (blocking) it->done->wait();
}

ncclComm_t new_comm(const IdBits &id, int nranks, int rank, int blocking)
{
    ncclComm_t c = new ncclComm;
    c->id = id;
    c->nranks = nranks;
    c->rank = rank;
    c->blocking = blocking;
    c->async_error.store(ncclInProgress);
    return c;
}

int config_blocking(const ncclConfig_t *config)
{
    const char *env = getenv("NCCL_COMM_BLOCKING");
    if (env && *env) return atoi(env) != 0;
    if (config && config->blocking != NCCL_CONFIG_UNDEF_INT) return config->blocking != 0;
    return 1;
}

/* Ends the worker and unmaps; the communicator's memory stays with the caller. */
void shut_down(ncclComm_t c)
{
    {
        std::lock_guard<std::mutex> lk(c->mu);
        c->stop = true;
        c->cv.notify_all();
    }
    if (c->worker.joinable()) c->worker.join();
    for (auto &it : c->queue) it->done->complete(); /* never ran: aborted */
    c->queue.clear();
    if (c->sh) {
        if (c->sh->joined.load() < c->nranks) /* given up before every rank came: leave no file behind */
            shm_unlink(shm_name(c->id).c_str());
        if (c->have_slot) /* left on purpose: not a dead peer */
            c->sh->pid[c->rank].store(c->aborted.load() ? kPidAborted : kPidLeft);
        munmap(c->sh, c->map_bytes);
    }
    c->sh = nullptr;
}

thread_local int tl_group_depth = 0;

/* Checks a collective's arguments as NCCL does (root, type and op first; the
 * buffers only when count > 0, since an empty collective is a no-op; a broadcast
 * reads the root's send buffer only) and queues it behind its stream's work. */
ncclResult_t post_coll(ncclComm_t comm, cudaStream_t s, Kind kind, const void *send, void *recv, size_t count,
                       ncclDataType_t type, ncclRedOp_t op, int root)
{
    if (!comm || type_size(type) == 0 || (unsigned)op >= ncclNumOps || !fab_emu::stream_is_valid(s))
        return ncclInvalidArgument;
    if (comm->aborted.load()) return ncclInvalidUsage;
    if (kind == Kind::Broadcast && (root < 0 || root >= comm->nranks)) return ncclInvalidArgument;
    if (count == 0) return ncclSuccess;
    bool reads_send = kind != Kind::Broadcast || comm->rank == root;
    if (!recv || (reads_send && !send)) return ncclInvalidArgument;
    auto it = std::make_shared<Item>();
    it->kind = kind;
    it->send = send;
    it->recv = recv;
    it->count = count;
    it->type = type;
    it->op = op;
    it->root = root;
    it->after = fab_emu::stream_pending(s);
    it->done = std::make_shared<Pending>();
    fab_emu::stream_add_pending(s, it->done);
    enqueue(comm, it); /* blocking or not, a collective is asynchronous to its stream */
    return ncclSuccess;
}

/* Split and finalize run on the worker, after what is queued: ncclInProgress
 * until then (non-blocking), or done in the call. */
ncclResult_t queue_host_op(ncclComm_t comm, std::shared_ptr<Item> it)
{
    comm->busy.fetch_add(1);
    enqueue(comm, it);
    if (!comm->blocking) return ncclInProgress;
    it->done->wait();
    return (ncclResult_t)comm->async_error.load();
}

} // namespace

extern "C" {

const char *ncclGetErrorString(ncclResult_t r)
{
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
    }
}

ncclResult_t ncclGetVersion(int *version)
{
    if (!version) return ncclInvalidArgument;
    *version = NCCL_VERSION_CODE;
    return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *uid)
{
    if (!uid) return ncclInvalidArgument;
    static std::atomic<uint64_t> counter{0};
    IdBits id{};
    id.magic = kIdMagic;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    id.key[0] = ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_nsec;
    id.key[1] = ((uint64_t)ts.tv_sec << 20) ^ counter.fetch_add(1) ^ ((uint64_t)(uintptr_t)&id << 7);
    memset(uid, 0, sizeof *uid);
    memcpy(uid->internal, &id, sizeof id);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank, ncclConfig_t *config)
{
    if (!comm) return ncclInvalidArgument;
    *comm = nullptr;
    IdBits id;
    memcpy(&id, commId.internal, sizeof id);
    if (id.magic != kIdMagic || nranks < 1 || nranks > kMaxRanks || rank < 0 || rank >= nranks)
        return ncclInvalidArgument;
    int blocking = config_blocking(config);
    ncclComm_t c = new_comm(id, nranks, rank, blocking);
    *comm = c;
    init_comm(c, blocking);
    ncclResult_t r = (ncclResult_t)c->async_error.load();
    return blocking ? r : (r == ncclInProgress || r == ncclSuccess ? ncclInProgress : r);
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank)
{
    return ncclCommInitRankConfig(comm, nranks, commId, rank, nullptr);
}

ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t *newcomm, ncclConfig_t *config)
{
    if (!comm || !newcomm || (color < 0 && color != NCCL_SPLIT_NOCOLOR)) return ncclInvalidArgument;
    if (comm->aborted.load()) return ncclInvalidUsage;
    *newcomm = nullptr;
    auto it = std::make_shared<Item>();
    it->kind = Kind::Split;
    it->color = color;
    it->key = key;
    IdBits id = comm->id;
    id.key[0] ^= ++comm->splits * 0xbf58476d1ce4e5b9ull;
    if (color != NCCL_SPLIT_NOCOLOR) {
        /* a NULL config: the child inherits the parent's (NCCL copies comm->config) */
        it->child = new_comm(id, 0, 0, config ? config_blocking(config) : comm->blocking);
        *newcomm = it->child;
    }
    return queue_host_op(comm, it);
}

ncclResult_t ncclCommFinalize(ncclComm_t comm)
{
    if (!comm) return ncclInvalidArgument;
    if (comm->aborted.load()) return ncclInvalidUsage;
    auto it = std::make_shared<Item>();
    it->kind = Kind::Finalize;
    return queue_host_op(comm, it);
}

ncclResult_t ncclCommDestroy(ncclComm_t comm)
{
    if (!comm) return ncclSuccess;
    shut_down(comm); /* what is queued still runs first, as NCCL's destroy waits for it */
    delete comm;
    return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm)
{
    if (!comm) return ncclSuccess;
    {
        std::lock_guard<std::mutex> lk(comm->mu); /* wakes a worker held by a dead peer */
        comm->aborted.store(1);
        comm->cv.notify_all();
    }
    shut_down(comm);
    delete comm;
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *err)
{
    if (!comm || !err) return ncclInvalidArgument;
    ncclResult_t e = (ncclResult_t)comm->async_error.load();
    if (e == ncclSuccess && comm->busy.load() > 0) e = ncclInProgress;
    if (e == ncclSuccess && comm->sh && !comm->aborted.load() && peer_gone(comm)) {
        comm->async_error.store(ncclRemoteError);
        e = ncclRemoteError;
    }
    *err = e;
    return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int *count)
{
    if (!comm || !count) return ncclInvalidArgument;
    *count = comm->nranks;
    return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank)
{
    if (!comm || !rank) return ncclInvalidArgument;
    *rank = comm->rank;
    return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int *device)
{
    if (!comm || !device) return ncclInvalidArgument;
    *device = 0;
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream)
{
    return post_coll(comm, stream, Kind::AllReduce, sendbuff, recvbuff, count, datatype, op, 0);
}

ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount, ncclDataType_t datatype,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream)
{
    return post_coll(comm, stream, Kind::ReduceScatter, sendbuff, recvbuff, recvcount, datatype, op, 0);
}

ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream)
{
    return post_coll(comm, stream, Kind::AllGather, sendbuff, recvbuff, sendcount, datatype, ncclSum, 0);
}

ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream)
{
    return post_coll(comm, stream, Kind::Broadcast, sendbuff, recvbuff, count, datatype, ncclSum, root);
}

ncclResult_t ncclGroupStart(void)
{
    tl_group_depth++;
    return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void)
{
    if (tl_group_depth == 0) return ncclInvalidUsage;
    tl_group_depth--;
    return ncclSuccess;
}

} // extern "C"
