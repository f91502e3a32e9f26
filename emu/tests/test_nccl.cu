/*
 * test_nccl.cu -- the emulated NCCL (emu/src/nccl.cpp) and the runtime's handling of
 * work that waits on a stream for a peer (runtime.cpp's Pending): blocking and
 * non-blocking init, every collective for every data type and reduction, in and out
 * of place, at sizes of one and of several exchange steps; argument errors; streams,
 * events and copies behind a collective still waiting for a peer; abort of such a
 * hang; split; finalize; and a peer process that dies.
 *
 * Ranks are threads of this process, each with its own stream (non-blocking streams:
 * on the emulator's one device the legacy stream would tie the ranks' streams
 * together), except the dead peer, a forked child. Buffers are freed only once every
 * rank is done, since cudaFree synchronises the (one, shared) device.
 */
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "emu_test.h"
#include "nccl.h"

/* CHECK from rank threads: the counters are plain ints. */
static std::mutex g_check_mu;
#define TCHECK(cond, ...)                                                       \
    do {                                                                        \
        std::lock_guard<std::mutex> tcheck_lk_(g_check_mu);                     \
        CHECK(cond, __VA_ARGS__);                                               \
    } while (0)

static double now_s()
{
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

/* Waits (bounded) until cond() holds; false on timeout. */
template <class F> static bool wait_for(F cond, double timeout_s = 10.0)
{
    const double t0 = now_s();
    while (!cond()) {
        if (now_s() - t0 > timeout_s) return false;
        sleep_ms(1);
    }
    return true;
}

static void run_ranks(int n, const std::function<void(int)> &fn)
{
    std::vector<std::thread> t;
    for (int r = 0; r < n; r++) t.emplace_back(fn, r);
    for (auto &x : t) x.join();
}

class RankBarrier {
  public:
    explicit RankBarrier(int n) : n_(n) {}
    void wait()
    {
        std::unique_lock<std::mutex> lk(mu_);
        const int g = gen_;
        if (++count_ == n_) {
            count_ = 0;
            gen_++;
            cv_.notify_all();
        } else {
            cv_.wait(lk, [&] { return gen_ != g; });
        }
    }

  private:
    std::mutex mu_;
    std::condition_variable cv_;
    int n_, count_ = 0, gen_ = 0;
};

/* ncclCommGetAsyncError until it is not ncclInProgress (or timeout: InProgress). */
static ncclResult_t wait_async(ncclComm_t c, double timeout_s = 10.0)
{
    ncclResult_t e = ncclInternalError;
    const double t0 = now_s();
    for (;;) {
        if (ncclCommGetAsyncError(c, &e) != ncclSuccess) return ncclInvalidArgument;
        if (e != ncclInProgress || now_s() - t0 > timeout_s) return e;
        sleep_ms(1);
    }
}

static ncclConfig_t make_config(int blocking)
{
    ncclConfig_t c = NCCL_CONFIG_INITIALIZER;
    c.blocking = blocking;
    return c;
}

/* An n-rank communicator, one init per thread (they must meet); ready on return. */
static std::vector<ncclComm_t> make_comms(int n, bool blocking)
{
    ncclUniqueId id;
    CHECK(ncclGetUniqueId(&id) == ncclSuccess, "ncclGetUniqueId");
    std::vector<ncclComm_t> c(n, nullptr);
    std::vector<ncclResult_t> r(n, ncclInternalError);
    run_ranks(n, [&](int k) {
        ncclConfig_t cfg = make_config(blocking ? 1 : 0);
        r[k] = ncclCommInitRankConfig(&c[k], n, id, k, &cfg);
        if (r[k] == ncclInProgress) r[k] = wait_async(c[k]);
    });
    for (int k = 0; k < n; k++)
        CHECK(r[k] == ncclSuccess && c[k], "make_comms(%d, %s) rank %d: %s", n, blocking ? "blocking" : "non-blocking",
              k, ncclGetErrorString(r[k]));
    return c;
}

static cudaStream_t new_stream()
{
    cudaStream_t s = nullptr;
    if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
        fprintf(stderr, "cudaStreamCreateWithFlags failed\n");
        exit(2);
    }
    return s;
}

/* ------------------------------------------------------------------ 1: init */

static void test_init_nonblocking()
{
    const int n = 3;
    ncclUniqueId id;
    CHECK(ncclGetUniqueId(&id) == ncclSuccess, "ncclGetUniqueId");
    std::atomic<int> saw_in_progress{0};
    std::atomic<bool> late_joining{false};
    ncclComm_t comm[n] = {};
    ncclResult_t ret[n], first[n], last[n];
    bool late_had_joined[n];
    run_ranks(n, [&](int r) {
        ncclConfig_t cfg = make_config(0);
        if (r == n - 1) { /* the late rank joins once the others have seen their init in progress */
            wait_for([&] { return saw_in_progress.load() == n - 1; });
            sleep_ms(50);
            late_joining = true;
        }
        ret[r] = ncclCommInitRankConfig(&comm[r], n, id, r, &cfg);
        first[r] = ncclInternalError;
        if (comm[r]) ncclCommGetAsyncError(comm[r], &first[r]);
        if (r < n - 1) saw_in_progress++;
        last[r] = comm[r] ? wait_async(comm[r]) : ncclInternalError;
        late_had_joined[r] = late_joining.load(); /* read after success */
    });
    for (int r = 0; r < n; r++) {
        CHECK(ret[r] == ncclInProgress, "non-blocking init rank %d returned %s, want ncclInProgress", r,
              ncclGetErrorString(ret[r]));
        CHECK(last[r] == ncclSuccess, "non-blocking init rank %d ended with %s", r, ncclGetErrorString(last[r]));
        if (r < n - 1) {
            CHECK(first[r] == ncclInProgress, "rank %d: GetAsyncError before the late rank joined: %s", r,
                  ncclGetErrorString(first[r]));
            CHECK(late_had_joined[r], "rank %d: init succeeded before the late rank joined", r);
        }
        int cnt = -1, rank = -1, dev = -1;
        CHECK(ncclCommCount(comm[r], &cnt) == ncclSuccess && cnt == n, "ncclCommCount %d", cnt);
        CHECK(ncclCommUserRank(comm[r], &rank) == ncclSuccess && rank == r, "ncclCommUserRank %d, want %d", rank, r);
        CHECK(ncclCommCuDevice(comm[r], &dev) == ncclSuccess && dev == 0, "ncclCommCuDevice %d", dev);
    }
    for (int r = 0; r < n; r++) CHECK(ncclCommDestroy(comm[r]) == ncclSuccess, "destroy rank %d", r);
}

static void test_init_blocking()
{
    const int n = 2;
    ncclUniqueId id;
    CHECK(ncclGetUniqueId(&id) == ncclSuccess, "ncclGetUniqueId");
    ncclComm_t comm[n] = {};
    ncclResult_t ret[n], async[n], ar[n], fin[n];
    int cnt[n], rank[n];
    float got[n][5];
    run_ranks(n, [&](int r) {
        /* rank 0: NULL config; rank 1: the initializer, blocking left undefined: both blocking */
        ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
        ret[r] = r == 0 ? ncclCommInitRank(&comm[r], n, id, r) : ncclCommInitRankConfig(&comm[r], n, id, r, &cfg);
        async[r] = ncclInternalError;
        cnt[r] = rank[r] = -1;
        ar[r] = fin[r] = ncclInternalError;
        if (ret[r] != ncclSuccess) return;
        ncclCommGetAsyncError(comm[r], &async[r]); /* no waiting: a blocking init is complete on return */
        ncclCommCount(comm[r], &cnt[r]);
        ncclCommUserRank(comm[r], &rank[r]);
        cudaStream_t s = new_stream();
        float h[5];
        for (int i = 0; i < 5; i++) h[i] = (float)(10 * r + i);
        float *d = device_alloc<float>(5);
        cudaMemcpyAsync(d, h, sizeof h, cudaMemcpyHostToDevice, s);
        ar[r] = ncclAllReduce(d, d, 5, ncclFloat32, ncclSum, comm[r], s);
        cudaMemcpyAsync(got[r], d, sizeof h, cudaMemcpyDeviceToHost, s);
        cudaStreamSynchronize(s);
        fin[r] = ncclCommFinalize(comm[r]); /* blocking: done on return */
        cudaStreamDestroy(s);
        cudaFree(d);
    });
    for (int r = 0; r < n; r++) {
        CHECK(ret[r] == ncclSuccess, "blocking init rank %d: %s", r, ncclGetErrorString(ret[r]));
        CHECK(async[r] == ncclSuccess, "blocking init rank %d: GetAsyncError %s", r, ncclGetErrorString(async[r]));
        CHECK(cnt[r] == n && rank[r] == r, "blocking rank %d: count %d rank %d", r, cnt[r], rank[r]);
        CHECK(ar[r] == ncclSuccess, "blocking allreduce rank %d: %s", r, ncclGetErrorString(ar[r]));
        bool ok = true;
        for (int i = 0; i < 5; i++) ok = ok && got[r][i] == (float)(10 + 2 * i);
        CHECK(ok, "blocking allreduce rank %d: %g %g ...", r, (double)got[r][0], (double)got[r][1]);
        CHECK(fin[r] == ncclSuccess, "blocking finalize rank %d: %s", r, ncclGetErrorString(fin[r]));
        CHECK(ncclCommDestroy(comm[r]) == ncclSuccess, "destroy");
    }
}

static void test_init_errors()
{
    ncclUniqueId id, bad;
    ncclGetUniqueId(&id);
    memset(&bad, 0, sizeof bad);
    ncclComm_t c = nullptr;
    CHECK(ncclCommInitRank(&c, 2, id, 2) == ncclInvalidArgument, "rank == nranks accepted");
    CHECK(ncclCommInitRank(&c, 2, id, -1) == ncclInvalidArgument, "rank -1 accepted");
    CHECK(ncclCommInitRank(&c, 0, id, 0) == ncclInvalidArgument, "0 ranks accepted");
    CHECK(ncclCommInitRank(&c, 1, bad, 0) == ncclInvalidArgument, "an id not from ncclGetUniqueId accepted");
    CHECK(ncclCommInitRank(nullptr, 1, id, 0) == ncclInvalidArgument, "NULL comm pointer accepted");
    /* one rank: a complete communicator on its own */
    CHECK(ncclCommInitRank(&c, 1, id, 0) == ncclSuccess && c, "1-rank communicator");
    ncclResult_t e = ncclInternalError;
    CHECK(ncclCommGetAsyncError(c, &e) == ncclSuccess && e == ncclSuccess, "1-rank async error %s",
          ncclGetErrorString(e));
    CHECK(ncclCommDestroy(c) == ncclSuccess, "destroy 1-rank");
    int v = 0;
    CHECK(ncclGetVersion(&v) == ncclSuccess && v == NCCL_VERSION_CODE, "version %d", v);
    CHECK(strcmp(ncclGetErrorString(ncclInProgress), "NCCL operation in progress") == 0, "error string");
    CHECK(ncclGroupEnd() == ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
}

/* ------------------------------------------------------------------ 2: collectives */

enum NumKind { SIGNED, UNSIGNED, FLOATING };
struct TypeInfo {
    ncclDataType_t t;
    const char *name;
    size_t es;
    NumKind kind;
    int prec, emin; /* floats: significand bits, least normal exponent */
};
static const TypeInfo kTypes[] = {
    {ncclInt8, "int8", 1, SIGNED, 0, 0},          {ncclUint8, "uint8", 1, UNSIGNED, 0, 0},
    {ncclInt32, "int32", 4, SIGNED, 0, 0},        {ncclUint32, "uint32", 4, UNSIGNED, 0, 0},
    {ncclInt64, "int64", 8, SIGNED, 0, 0},        {ncclUint64, "uint64", 8, UNSIGNED, 0, 0},
    {ncclFloat16, "float16", 2, FLOATING, 11, -14}, {ncclFloat32, "float32", 4, FLOATING, 24, -126},
    {ncclFloat64, "float64", 8, FLOATING, 53, -1022}, {ncclBfloat16, "bfloat16", 2, FLOATING, 8, -126},
};
static const char *const kOpNames[] = {"sum", "prod", "max", "min", "avg"};

/* Over the 1 MiB slot, not a multiple of it: allreduce takes 2 exchange steps, reduce-scatter 4. */
static const size_t kBigBytes = 1200000;
static size_t big_count(const TypeInfo &ti) { return kBigBytes / ti.es + 3; }

/* Rounds v to nearest-even at the type's precision (exact scaling by a power of two). */
static double round_to(const TypeInfo &ti, double v)
{
    if (v == 0 || ti.prec >= 53) return v;
    int e;
    frexp(v, &e); /* |v| in [2^(e-1), 2^e) */
    const int E = e - 1 < ti.emin ? ti.emin : e - 1;
    const double ulp = ldexp(1.0, E - (ti.prec - 1));
    return nearbyint(v / ulp) * ulp;
}

static double f16_value(uint16_t h)
{
    const int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 31 ? NAN : e == 0 ? ldexp((double)m, -24) : ldexp((double)(1024 + m), e - 25);
    return (h & 0x8000) ? -v : v;
}

static uint16_t f16_bits_exact(double v) /* v representable as a normal f16, or 0 */
{
    uint16_t s = signbit(v) ? 0x8000 : 0;
    v = fabs(v);
    if (v == 0) return s;
    int e;
    const double m = frexp(v, &e);
    return (uint16_t)(s | ((e - 1 + 15) << 10) | (int)((2 * m - 1) * 1024));
}

template <class T> static void st(unsigned char *q, T x) { memcpy(q, &x, sizeof x); }
template <class T> static T ld(const unsigned char *q)
{
    T x;
    memcpy(&x, q, sizeof x);
    return x;
}

/* Element i as a number (exact for the small values used here). */
static double get_num(const TypeInfo &ti, const unsigned char *p, size_t i)
{
    const unsigned char *q = p + i * ti.es;
    switch (ti.t) {
    case ncclInt8: return ld<int8_t>(q);
    case ncclUint8: return ld<uint8_t>(q);
    case ncclInt32: return ld<int32_t>(q);
    case ncclUint32: return ld<uint32_t>(q);
    case ncclInt64: return (double)ld<int64_t>(q);
    case ncclUint64: return (double)ld<uint64_t>(q);
    case ncclFloat16: return f16_value(ld<uint16_t>(q));
    case ncclBfloat16: {
        uint32_t u = (uint32_t)ld<uint16_t>(q) << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    case ncclFloat32: return ld<float>(q);
    default: return ld<double>(q);
    }
}

/* Writes v, exactly representable in the type, as element i. */
static void put_num(const TypeInfo &ti, unsigned char *p, size_t i, double v)
{
    unsigned char *q = p + i * ti.es;
    switch (ti.t) {
    case ncclInt8: st<int8_t>(q, (int8_t)v); break;
    case ncclUint8: st<uint8_t>(q, (uint8_t)v); break;
    case ncclInt32: st<int32_t>(q, (int32_t)v); break;
    case ncclUint32: st<uint32_t>(q, (uint32_t)v); break;
    case ncclInt64: st<int64_t>(q, (int64_t)v); break;
    case ncclUint64: st<uint64_t>(q, (uint64_t)v); break;
    case ncclFloat16: st<uint16_t>(q, f16_bits_exact(v)); break;
    case ncclBfloat16: {
        float f = (float)v;
        uint32_t u;
        memcpy(&u, &f, 4);
        st<uint16_t>(q, (uint16_t)(u >> 16));
        break;
    }
    case ncclFloat32: st<float>(q, (float)v); break;
    default: st<double>(q, v); break;
    }
}

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Rank r's element i: small integers ([-7, 7], or [0, 15] unsigned) or quarters in
 * [-8, 8]: sums exact, products of three exact in double (and wrapping in int8/uint8). */
static double input_value(const TypeInfo &ti, int r, size_t i, uint64_t salt)
{
    const uint64_t h = mix64(salt * 0x100000001b3ull ^ ((uint64_t)r << 40) ^ i);
    switch (ti.kind) {
    case SIGNED: return (double)((int)(h % 15) - 7);
    case UNSIGNED: return (double)(h % 16);
    default: return (double)((int)(h % 65) - 32) / 4.0;
    }
}

/* The reduction in the element type, in rank order; two's-complement wrap-around
 * (computed unsigned); avg: the sum divided by n, truncated (NCCL's SumPostDiv). */
template <class T> static uint64_t ref_int(const unsigned char *const *in, size_t i, int n, ncclRedOp_t op)
{
    T acc = ld<T>(in[0] + i * sizeof(T));
    for (int r = 1; r < n; r++) {
        const T x = ld<T>(in[r] + i * sizeof(T));
        switch (op) {
        case ncclProd: acc = (T)((uint64_t)acc * (uint64_t)x); break;
        case ncclMax: acc = x > acc ? x : acc; break;
        case ncclMin: acc = x < acc ? x : acc; break;
        default: acc = (T)((uint64_t)acc + (uint64_t)x); break;
        }
    }
    if (op == ncclAvg) acc = (T)(acc / (T)n);
    uint64_t b = 0;
    memcpy(&b, &acc, sizeof(T));
    return b;
}

static uint64_t ref_int_bits(const TypeInfo &ti, const unsigned char *const *in, size_t i, int n, ncclRedOp_t op)
{
    switch (ti.t) {
    case ncclInt8: return ref_int<int8_t>(in, i, n, op);
    case ncclUint8: return ref_int<uint8_t>(in, i, n, op);
    case ncclInt32: return ref_int<int32_t>(in, i, n, op);
    case ncclUint32: return ref_int<uint32_t>(in, i, n, op);
    case ncclInt64: return ref_int<int64_t>(in, i, n, op);
    default: return ref_int<uint64_t>(in, i, n, op);
    }
}

/* Floats: in double, in rank order, rounded once to the type; avg premultiplies each
 * input by 1/n rounded to the type, as NCCL does. */
static double ref_float(const TypeInfo &ti, const unsigned char *const *in, size_t i, int n, ncclRedOp_t op)
{
    const double scale = op == ncclAvg ? round_to(ti, 1.0 / n) : 1.0;
    double acc = get_num(ti, in[0], i) * scale;
    for (int r = 1; r < n; r++) {
        const double v = get_num(ti, in[r], i) * scale;
        switch (op) {
        case ncclProd: acc *= v; break;
        case ncclMax: acc = v > acc ? v : acc; break;
        case ncclMin: acc = v < acc ? v : acc; break;
        default: acc += v; break;
        }
    }
    return round_to(ti, acc);
}

struct CaseName {
    const char *coll;
    const TypeInfo *ti;
    const char *op;
    size_t count;
    bool inplace;
    int rank;
};

/* got[i] against the reduction of in[q][i] over the ranks q, element by element. */
static void check_reduced(const CaseName &c, ncclRedOp_t op, const unsigned char *const *in, int n,
                          const unsigned char *got)
{
    const TypeInfo &ti = *c.ti;
    size_t bad = 0, first = 0;
    double g0 = 0, w0 = 0;
    for (size_t i = 0; i < c.count; i++) {
        bool ok;
        double g = 0, w = 0;
        if (ti.kind == FLOATING) {
            g = get_num(ti, got, i);
            w = ref_float(ti, in, i, n, op);
            ok = g == w;
        } else {
            const uint64_t wb = ref_int_bits(ti, in, i, n, op);
            uint64_t gb = 0;
            memcpy(&gb, got + i * ti.es, ti.es);
            ok = gb == wb;
            if (!ok) {
                unsigned char tmp[8];
                memcpy(tmp, &wb, 8);
                g = get_num(ti, got, i);
                w = get_num(ti, tmp, 0);
            }
        }
        if (!ok && bad++ == 0) {
            first = i;
            g0 = g;
            w0 = w;
        }
    }
    TCHECK(bad == 0, "%s %s %s count %zu %s, rank %d: %zu wrong, first [%zu] = %.17g, want %.17g", c.coll, ti.name, c.op,
           c.count, c.inplace ? "in place" : "out of place", c.rank, bad, first, g0, w0);
}

/* got (count elements) against want, element by element. */
static void check_copy(const CaseName &c, const unsigned char *got, const unsigned char *want, size_t count,
                       const char *what)
{
    const size_t es = c.ti->es;
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < count; i++)
        if (memcmp(got + i * es, want + i * es, es) != 0 && bad++ == 0) first = i;
    TCHECK(bad == 0, "%s %s count %zu %s, rank %d, %s: %zu wrong, first [%zu] = %.17g, want %.17g", c.coll,
           c.ti->name, c.count, c.inplace ? "in place" : "out of place", c.rank, what, bad, first,
           bad ? get_num(*c.ti, got, first) : 0.0, bad ? get_num(*c.ti, want, first) : 0.0);
}

static void collectives_rank(int r, int n, ncclComm_t comm, RankBarrier &bar)
{
    cudaStream_t s = new_stream();
    size_t maxbytes = 0;
    for (const TypeInfo &ti : kTypes)
        if ((size_t)n * big_count(ti) * ti.es > maxbytes) maxbytes = (size_t)n * big_count(ti) * ti.es;
    unsigned char *dsend = device_alloc<unsigned char>(maxbytes), *drecv = device_alloc<unsigned char>(maxbytes);
    std::vector<unsigned char> got(maxbytes);
    std::vector<std::vector<unsigned char>> in(n);
    int cuda_bad = 0, nccl_bad = 0;
    std::string first_bad;
    auto cu = [&](cudaError_t e, const char *what) {
        if (e != cudaSuccess && cuda_bad++ == 0) first_bad = std::string(what) + ": " + cudaGetErrorName(e);
    };
    auto nc = [&](ncclResult_t e, const CaseName &c) {
        if (e != ncclSuccess && nccl_bad++ == 0)
            first_bad = std::string(c.coll) + " " + c.ti->name + ": " + ncclGetErrorString(e);
    };
    auto upload = [&](void *d, const void *h, size_t b) { cu(cudaMemcpyAsync(d, h, b, cudaMemcpyHostToDevice, s), "H2D"); };
    auto poison = [&](void *d, size_t b) { cu(cudaMemsetAsync(d, 0xa5, b, s), "memset"); };
    auto fetch = [&](const void *d, size_t b) {
        cu(cudaMemcpyAsync(got.data(), d, b, cudaMemcpyDeviceToHost, s), "D2H"); /* behind the collective */
        cu(cudaStreamSynchronize(s), "sync");
    };
    uint64_t salt = 0;
    for (const TypeInfo &ti : kTypes) {
        const size_t counts[3] = {1, 7, big_count(ti)};
        for (size_t count : counts) {
            salt++;
            const size_t bytes = count * ti.es;
            for (int q = 0; q < n; q++) { /* every rank's input: n blocks, for reduce-scatter */
                in[q].resize((size_t)n * bytes);
                for (size_t j = 0; j < (size_t)n * count; j++) put_num(ti, in[q].data(), j, input_value(ti, q, j, salt));
            }
            for (int inplace = 0; inplace < 2; inplace++) {
                for (int opi = 0; opi < (int)ncclNumOps; opi++) {
                    const ncclRedOp_t op = (ncclRedOp_t)opi;
                    const unsigned char *inp[8];
                    /* allreduce */
                    CaseName c = {"allreduce", &ti, kOpNames[opi], count, inplace != 0, r};
                    upload(dsend, in[r].data(), bytes);
                    unsigned char *recv = inplace ? dsend : drecv;
                    if (!inplace) poison(drecv, bytes);
                    nc(ncclAllReduce(dsend, recv, count, ti.t, op, comm, s), c);
                    fetch(recv, bytes);
                    for (int q = 0; q < n; q++) inp[q] = in[q].data();
                    check_reduced(c, op, inp, n, got.data());
                    if (!inplace) {
                        fetch(dsend, bytes);
                        check_copy(c, got.data(), in[r].data(), count, "send buffer afterwards");
                    }
                    /* reduce-scatter: rank r gets block r; in place, recvbuff = sendbuff + r*recvcount */
                    c.coll = "reduce_scatter";
                    upload(dsend, in[r].data(), (size_t)n * bytes);
                    recv = inplace ? dsend + r * bytes : drecv;
                    if (!inplace) poison(drecv, bytes);
                    nc(ncclReduceScatter(dsend, recv, count, ti.t, op, comm, s), c);
                    fetch(recv, bytes);
                    for (int q = 0; q < n; q++) inp[q] = in[q].data() + r * bytes;
                    check_reduced(c, op, inp, n, got.data());
                }
                /* allgather: in place, sendbuff = recvbuff + r*sendcount */
                CaseName c = {"allgather", &ti, "", count, inplace != 0, r};
                poison(drecv, (size_t)n * bytes);
                const unsigned char *send = dsend;
                if (inplace) {
                    upload(drecv + r * bytes, in[r].data(), bytes);
                    send = drecv + r * bytes;
                } else {
                    upload(dsend, in[r].data(), bytes);
                }
                nc(ncclAllGather(send, drecv, count, ti.t, comm, s), c);
                fetch(drecv, (size_t)n * bytes);
                for (int q = 0; q < n; q++) {
                    char what[32];
                    snprintf(what, sizeof what, "block %d", q);
                    check_copy(c, got.data() + q * bytes, in[q].data(), count, what);
                }
                /* broadcast from rank 0 and from the last rank; out of place, the others pass no send buffer */
                for (int root : {0, n - 1}) {
                    c.coll = root == 0 ? "broadcast(root 0)" : "broadcast(root n-1)";
                    unsigned char *sb, *rb;
                    if (inplace) {
                        upload(dsend, in[r].data(), bytes); /* the others' data must be overwritten */
                        sb = rb = dsend;
                    } else {
                        if (r == root) upload(dsend, in[r].data(), bytes);
                        poison(drecv, bytes);
                        sb = r == root ? dsend : nullptr;
                        rb = drecv;
                    }
                    nc(ncclBroadcast(sb, rb, count, ti.t, root, comm, s), c);
                    fetch(rb, bytes);
                    check_copy(c, got.data(), in[root].data(), count, "data");
                }
            }
        }
    }
    TCHECK(cuda_bad == 0 && nccl_bad == 0, "rank %d: %d CUDA and %d NCCL calls failed, first %s", r, cuda_bad, nccl_bad,
           first_bad.c_str());
    ncclResult_t e = ncclInternalError;
    ncclCommGetAsyncError(comm, &e);
    TCHECK(e == ncclSuccess, "rank %d: async error after the collectives: %s", r, ncclGetErrorString(e));
    bar.wait(); /* cudaFree synchronises the device: every rank's work first */
    cudaFree(dsend);
    cudaFree(drecv);
    cudaStreamDestroy(s);
}

static void test_collectives()
{
    const int n = 3;
    std::vector<ncclComm_t> comms = make_comms(n, false);
    for (ncclComm_t c : comms)
        if (!c) return;
    RankBarrier bar(n);
    run_ranks(n, [&](int r) { collectives_rank(r, n, comms[r], bar); });
    for (ncclComm_t c : comms) CHECK(ncclCommDestroy(c) == ncclSuccess, "destroy");
}

/* ------------------------------------------------------------------ 3: empty and bad calls */

static void test_arguments()
{
    std::vector<ncclComm_t> comm = make_comms(2, false);
    if (!comm[0] || !comm[1]) return;
    cudaStream_t s0 = new_stream(), s1 = new_stream();
    float *d0 = device_alloc<float>(16), *d1 = device_alloc<float>(16);
    /* count 0: nothing to do, no buffer looked at; rank 1 makes no matching call */
    CHECK(ncclAllReduce(nullptr, nullptr, 0, ncclFloat32, ncclSum, comm[0], s0) == ncclSuccess, "empty allreduce");
    CHECK(ncclReduceScatter(nullptr, nullptr, 0, ncclInt32, ncclMax, comm[0], s0) == ncclSuccess,
          "empty reduce-scatter");
    CHECK(ncclAllGather(nullptr, nullptr, 0, ncclUint8, comm[0], s0) == ncclSuccess, "empty allgather");
    CHECK(ncclBroadcast(nullptr, nullptr, 0, ncclFloat64, 0, comm[0], s0) == ncclSuccess, "empty broadcast");
    /* bad arguments (nothing queued: rank 1 makes no matching call either) */
    const ncclDataType_t badt = (ncclDataType_t)ncclNumTypes, negt = (ncclDataType_t)-1;
    CHECK(ncclAllReduce(d0, d0, 4, ncclFloat32, ncclSum, nullptr, s0) == ncclInvalidArgument, "NULL comm");
    CHECK(ncclReduceScatter(d0, d0, 4, ncclFloat32, ncclSum, nullptr, s0) == ncclInvalidArgument, "NULL comm (rs)");
    CHECK(ncclAllGather(d0, d1, 4, ncclFloat32, nullptr, s0) == ncclInvalidArgument, "NULL comm (ag)");
    CHECK(ncclBroadcast(d0, d0, 4, ncclFloat32, 0, nullptr, s0) == ncclInvalidArgument, "NULL comm (bc)");
    CHECK(ncclAllReduce(d0, d0, 4, badt, ncclSum, comm[0], s0) == ncclInvalidArgument, "datatype ncclNumTypes");
    CHECK(ncclAllReduce(d0, d0, 4, negt, ncclSum, comm[0], s0) == ncclInvalidArgument, "datatype -1");
    CHECK(ncclReduceScatter(d0, d0, 4, badt, ncclSum, comm[0], s0) == ncclInvalidArgument, "bad datatype (rs)");
    CHECK(ncclAllGather(d0, d1, 4, badt, comm[0], s0) == ncclInvalidArgument, "bad datatype (ag)");
    CHECK(ncclBroadcast(d0, d0, 4, badt, 0, comm[0], s0) == ncclInvalidArgument, "bad datatype (bc)");
    CHECK(ncclAllReduce(d0, d0, 4, ncclFloat32, (ncclRedOp_t)ncclNumOps, comm[0], s0) == ncclInvalidArgument,
          "op ncclNumOps");
    CHECK(ncclReduceScatter(d0, d0, 4, ncclFloat32, (ncclRedOp_t)-1, comm[0], s0) == ncclInvalidArgument, "op -1");
    CHECK(ncclBroadcast(d0, d0, 4, ncclFloat32, 2, comm[0], s0) == ncclInvalidArgument, "root == nranks");
    CHECK(ncclBroadcast(d0, d0, 4, ncclFloat32, -1, comm[0], s0) == ncclInvalidArgument, "root -1");
    CHECK(ncclAllReduce(nullptr, d0, 4, ncclFloat32, ncclSum, comm[0], s0) == ncclInvalidArgument, "NULL send");
    CHECK(ncclAllReduce(d0, nullptr, 4, ncclFloat32, ncclSum, comm[0], s0) == ncclInvalidArgument, "NULL recv");
    CHECK(ncclReduceScatter(nullptr, d0, 4, ncclFloat32, ncclSum, comm[0], s0) == ncclInvalidArgument,
          "NULL send (rs)");
    CHECK(ncclAllGather(d0, nullptr, 4, ncclFloat32, comm[0], s0) == ncclInvalidArgument, "NULL recv (ag)");
    CHECK(ncclAllGather(nullptr, d0, 4, ncclFloat32, comm[0], s0) == ncclInvalidArgument, "NULL send (ag)");
    CHECK(ncclBroadcast(nullptr, d0, 4, ncclFloat32, 0, comm[0], s0) == ncclInvalidArgument, "root's NULL send");
    CHECK(ncclBroadcast(d0, nullptr, 4, ncclFloat32, 1, comm[0], s0) == ncclInvalidArgument, "NULL recv (bc)");
    /* none of it left work behind on the stream (rank 1 never matched it) */
    CHECK(cudaStreamQuery(s0) == cudaSuccess, "rejected or empty calls left work pending on the stream");
    /* and the next real collective still pairs up: both ranks from this thread, in a group */
    float h0[16], h1[16], g0[16], g1[16];
    for (int i = 0; i < 16; i++) {
        h0[i] = (float)i;
        h1[i] = (float)(100 * i);
    }
    CHECK_CUDA(cudaMemcpy(d0, h0, sizeof h0, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(d1, h1, sizeof h1, cudaMemcpyHostToDevice));
    CHECK(ncclGroupStart() == ncclSuccess, "group start");
    CHECK(ncclAllReduce(d0, d0, 16, ncclFloat32, ncclSum, comm[0], s0) == ncclSuccess, "allreduce rank 0");
    CHECK(ncclAllReduce(d1, d1, 16, ncclFloat32, ncclSum, comm[1], s1) == ncclSuccess, "allreduce rank 1");
    CHECK(ncclGroupEnd() == ncclSuccess, "group end");
    CHECK_CUDA(cudaMemcpyAsync(g0, d0, sizeof g0, cudaMemcpyDeviceToHost, s0));
    CHECK_CUDA(cudaMemcpyAsync(g1, d1, sizeof g1, cudaMemcpyDeviceToHost, s1));
    bool ok = true;
    for (int i = 0; i < 16; i++) ok = ok && g0[i] == (float)(101 * i) && g1[i] == (float)(101 * i);
    CHECK(ok, "allreduce after the empty and rejected calls: %g %g", (double)g0[1], (double)g1[1]);
    cudaGetLastError();
    CHECK_CUDA(cudaStreamSynchronize(s0));
    CHECK_CUDA(cudaStreamSynchronize(s1));
    cudaFree(d0);
    cudaFree(d1);
    cudaStreamDestroy(s0);
    cudaStreamDestroy(s1);
    for (ncclComm_t c : comm) CHECK(ncclCommDestroy(c) == ncclSuccess, "destroy");
}

/* ------------------------------------------------------------------ 4: streams behind a pending collective */

static void test_pending_streams()
{
    std::vector<ncclComm_t> comm = make_comms(2, false);
    if (!comm[0] || !comm[1]) return;
    const int cnt = 1000;
    cudaStream_t s0 = new_stream(), s1 = new_stream(), s2 = new_stream(), idle = new_stream();
    float *d0 = device_alloc<float>(cnt), *d1 = device_alloc<float>(cnt);
    std::vector<float> h(cnt);
    for (int i = 0; i < cnt; i++) h[i] = (float)i;
    CHECK_CUDA(cudaMemcpy(d0, h.data(), cnt * 4, cudaMemcpyHostToDevice));
    for (int i = 0; i < cnt; i++) h[i] = (float)(1000 + i);
    CHECK_CUDA(cudaMemcpy(d1, h.data(), cnt * 4, cudaMemcpyHostToDevice));
    cudaEvent_t before, after;
    CHECK_CUDA(cudaEventCreate(&before));
    CHECK_CUDA(cudaEventCreateWithFlags(&after, cudaEventDisableTiming));

    std::atomic<int> phase{0};
    std::atomic<bool> rank1_posted{false};
    ncclResult_t r1 = ncclInternalError;
    std::vector<float> got1(cnt, -1.0f), got2(cnt, -1.0f);
    bool s2_copy_after_post = false;
    /* rank 1: posts only once rank 0's checks are done and its copy is queued */
    std::thread rank1([&] {
        wait_for([&] { return phase.load() >= 1; });
        sleep_ms(150);
        rank1_posted = true;
        r1 = ncclAllReduce(d1, d1, cnt, ncclFloat32, ncclSum, comm[1], s1);
        cudaMemcpyAsync(got1.data(), d1, cnt * 4, cudaMemcpyDeviceToHost, s1);
        cudaStreamSynchronize(s1);
    });
    /* a copy on the stream that waits for the event recorded behind the collective */
    std::thread waiter([&] {
        wait_for([&] { return phase.load() >= 1; });
        cudaMemcpyAsync(got2.data(), d0, cnt * 4, cudaMemcpyDeviceToHost, s2);
        s2_copy_after_post = rank1_posted.load();
    });

    CHECK_CUDA(cudaEventRecord(before, s0));
    CHECK(ncclAllReduce(d0, d0, cnt, ncclFloat32, ncclSum, comm[0], s0) == ncclSuccess, "allreduce rank 0");
    /* NotReady is kept as the last error (runtime.cpp says why): callers clear it */
    CHECK(cudaStreamQuery(s0) == cudaErrorNotReady, "stream with a collective waiting for rank 1 is ready");
    CHECK(cudaGetLastError() == cudaErrorNotReady, "cudaStreamQuery's NotReady not kept as the last error");
    CHECK(cudaEventQuery(before) == cudaSuccess, "event recorded before the collective is not ready");
    CHECK_CUDA(cudaEventRecord(after, s0));
    CHECK(cudaEventQuery(after) == cudaErrorNotReady, "event recorded behind the pending collective is ready");
    CHECK(cudaGetLastError() == cudaErrorNotReady, "cudaEventQuery's NotReady not kept as the last error");
    CHECK_CUDA(cudaStreamWaitEvent(s2, after, 0));
    CHECK(cudaStreamQuery(s2) == cudaErrorNotReady, "stream waiting on the event is ready");
    cudaGetLastError();
    CHECK(cudaStreamQuery(idle) == cudaSuccess, "an unrelated non-blocking stream is not ready");
    sleep_ms(50);
    CHECK(cudaStreamQuery(s0) == cudaErrorNotReady, "the collective completed without rank 1");
    ncclResult_t e = ncclInternalError;
    CHECK(ncclCommGetAsyncError(comm[0], &e) == ncclSuccess && e == ncclSuccess,
          "async error while a collective waits: %s", ncclGetErrorString(e));
    cudaGetLastError();

    phase = 1;
    std::vector<float> got0(cnt, -1.0f);
    CHECK_CUDA(cudaMemcpyAsync(got0.data(), d0, cnt * 4, cudaMemcpyDeviceToHost, s0));
    const bool copy_after_post = rank1_posted.load();
    CHECK(copy_after_post, "the copy behind the collective ran before rank 1 posted");
    int bad0 = 0, bad1 = 0, bad2 = 0;
    for (int i = 0; i < cnt; i++) {
        const float want = (float)(1000 + 2 * i);
        bad0 += got0[i] != want;
    }
    CHECK(bad0 == 0, "copy behind the collective: %d wrong (got0[1] = %g)", bad0, (double)got0[1]);
    rank1.join();
    waiter.join();
    for (int i = 0; i < cnt; i++) {
        const float want = (float)(1000 + 2 * i);
        bad1 += got1[i] != want;
        bad2 += got2[i] != want;
    }
    CHECK(r1 == ncclSuccess, "allreduce rank 1: %s", ncclGetErrorString(r1));
    CHECK(bad1 == 0, "rank 1's result: %d wrong", bad1);
    CHECK(s2_copy_after_post, "the copy on the stream waiting for the event ran before rank 1 posted");
    CHECK(bad2 == 0, "copy on the stream waiting for the event: %d wrong (got2[1] = %g)", bad2, (double)got2[1]);
    CHECK(cudaStreamQuery(s0) == cudaSuccess, "stream not ready after the collective completed");
    CHECK(cudaEventQuery(after) == cudaSuccess, "event not ready after the collective completed");
    CHECK(cudaStreamQuery(s2) == cudaSuccess, "waiting stream not ready after the collective completed");
    CHECK_CUDA(cudaEventSynchronize(after));
    CHECK_CUDA(cudaStreamSynchronize(s2));
    CHECK(cudaGetLastError() == cudaSuccess, "a sticky error");
    cudaEventDestroy(before);
    cudaEventDestroy(after);
    cudaFree(d0);
    cudaFree(d1);
    for (cudaStream_t s : {s0, s1, s2, idle}) cudaStreamDestroy(s);
    for (ncclComm_t c : comm) CHECK(ncclCommDestroy(c) == ncclSuccess, "destroy");
}

/* ------------------------------------------------------------------ 5: abort */

static void test_abort()
{
    std::vector<ncclComm_t> comm = make_comms(2, false);
    if (!comm[0] || !comm[1]) return;
    cudaStream_t s0 = new_stream();
    float *d0 = device_alloc<float>(64);
    /* rank 1 never posts: two collectives hang on rank 0's stream */
    CHECK(ncclAllReduce(d0, d0, 64, ncclFloat32, ncclSum, comm[0], s0) == ncclSuccess, "allreduce 1");
    CHECK(ncclBroadcast(d0, d0, 64, ncclFloat32, 1, comm[0], s0) == ncclSuccess, "broadcast behind it");
    sleep_ms(100);
    CHECK(cudaStreamQuery(s0) == cudaErrorNotReady, "hung collective reported ready");
    std::atomic<bool> aborting{false};
    ncclResult_t ra = ncclInternalError;
    double t_abort = 0;
    std::thread aborter([&] {
        sleep_ms(100);
        aborting = true;
        t_abort = now_s();
        ra = ncclCommAbort(comm[0]);
    });
    CHECK_CUDA(cudaStreamSynchronize(s0));
    const double t_done = now_s();
    const bool was_aborting = aborting.load();
    aborter.join();
    CHECK(was_aborting, "the stream drained before the abort");
    CHECK(ra == ncclSuccess, "ncclCommAbort: %s", ncclGetErrorString(ra));
    CHECK(t_done - t_abort < 5.0, "stream drained %.2f s after the abort", t_done - t_abort);
    CHECK(cudaStreamQuery(s0) == cudaSuccess, "stream not ready after the abort");
    /* the other rank, which never posted, goes cleanly */
    double t0 = now_s();
    ncclResult_t e = ncclInternalError;
    CHECK(ncclCommGetAsyncError(comm[1], &e) == ncclSuccess && e != ncclInProgress, "rank 1 async error %s",
          ncclGetErrorString(e));
    CHECK(ncclCommDestroy(comm[1]) == ncclSuccess, "destroy rank 1");
    CHECK(now_s() - t0 < 5.0, "rank 1's destroy took %.2f s", now_s() - t0);
    cudaGetLastError();
    cudaFree(d0);
    cudaStreamDestroy(s0);
}

/* ------------------------------------------------------------------ 6: split */

static void test_split_nonblocking()
{
    const int n = 4;
    std::vector<ncclComm_t> parent = make_comms(n, false);
    for (ncclComm_t c : parent)
        if (!c) return;
    const int color[n] = {0, 1, 0, NCCL_SPLIT_NOCOLOR};
    const int key[n] = {10, 9, 8, 7}; /* reverse order */
    /* the new rank and size each old rank should get */
    const int want_rank[n] = {1, 0, 0, -1}, want_size[n] = {2, 1, 2, 0};
    std::atomic<int> split_called{0};
    ncclResult_t ret[n], first[n], last[n], child_last[n], ar[n], fin[n], fin_last[n];
    int size[n], rank[n], bad[n];
    bool null_child[n];
    static int not_a_comm;
    run_ranks(n, [&](int r) {
        ncclComm_t child = reinterpret_cast<ncclComm_t>(&not_a_comm); /* must be overwritten */
        if (r == n - 1) wait_for([&] { return split_called.load() == n - 1; }); /* completes the split */
        ret[r] = ncclCommSplit(parent[r], color[r], key[r], &child, nullptr); /* NULL: the parent's config */
        first[r] = ncclInternalError;
        ncclCommGetAsyncError(parent[r], &first[r]);
        if (r < n - 1) split_called++;
        last[r] = wait_async(parent[r]);
        null_child[r] = child == nullptr;
        size[r] = rank[r] = -1;
        child_last[r] = ar[r] = fin[r] = fin_last[r] = ncclInternalError;
        bad[r] = -1;
        if (!child || child == reinterpret_cast<ncclComm_t>(&not_a_comm)) return;
        child_last[r] = wait_async(child);
        ncclCommCount(child, &size[r]);
        ncclCommUserRank(child, &rank[r]);
        /* an allreduce over the child: the sum over its members only */
        cudaStream_t s = new_stream();
        int h[5], g[5];
        for (int i = 0; i < 5; i++) h[i] = 100 * (r + 1) + i;
        int *d = device_alloc<int>(5);
        cudaMemcpyAsync(d, h, sizeof h, cudaMemcpyHostToDevice, s);
        ar[r] = ncclAllReduce(d, d, 5, ncclInt32, ncclSum, child, s);
        cudaMemcpyAsync(g, d, sizeof g, cudaMemcpyDeviceToHost, s);
        cudaStreamSynchronize(s);
        bad[r] = 0;
        for (int i = 0; i < 5; i++) {
            int want = 0;
            for (int q = 0; q < n; q++)
                if (color[q] == color[r]) want += 100 * (q + 1) + i;
            bad[r] += g[i] != want;
        }
        /* the child inherited the parent's non-blocking config: finalize is in progress first */
        fin[r] = ncclCommFinalize(child);
        fin_last[r] = wait_async(child);
        ncclCommDestroy(child);
        cudaStreamDestroy(s);
        cudaFree(d);
    });
    for (int r = 0; r < n; r++) {
        CHECK(ret[r] == ncclInProgress, "non-blocking split rank %d returned %s", r, ncclGetErrorString(ret[r]));
        if (r < n - 1)
            CHECK(first[r] == ncclInProgress, "rank %d: parent's async error before the last rank split: %s", r,
                  ncclGetErrorString(first[r]));
        CHECK(last[r] == ncclSuccess, "rank %d: split ended with %s", r, ncclGetErrorString(last[r]));
        if (color[r] == NCCL_SPLIT_NOCOLOR) {
            CHECK(null_child[r], "NOCOLOR rank %d got a communicator", r);
            continue;
        }
        CHECK(child_last[r] == ncclSuccess, "rank %d: child's async error %s", r, ncclGetErrorString(child_last[r]));
        CHECK(size[r] == want_size[r] && rank[r] == want_rank[r], "rank %d: child size %d rank %d, want %d %d", r,
              size[r], rank[r], want_size[r], want_rank[r]);
        CHECK(ar[r] == ncclSuccess && bad[r] == 0, "rank %d: allreduce over the child: %s, %d wrong", r,
              ncclGetErrorString(ar[r]), bad[r]);
        CHECK(fin[r] == ncclInProgress, "rank %d: child's finalize returned %s: the child did not inherit the "
              "parent's non-blocking config", r, ncclGetErrorString(fin[r]));
        CHECK(fin_last[r] == ncclSuccess, "rank %d: child's finalize ended with %s", r, ncclGetErrorString(fin_last[r]));
    }
    for (ncclComm_t c : parent) CHECK(ncclCommDestroy(c) == ncclSuccess, "destroy parent");
}

static void test_split_blocking()
{
    const int n = 4;
    std::vector<ncclComm_t> parent = make_comms(n, true);
    for (ncclComm_t c : parent)
        if (!c) return;
    /* color 5: old ranks 0, 1, 3 with keys 1, 0, 0 -> 1 (key 0), 3 (key 0, later old rank), 0 */
    const int color[n] = {5, 5, 7, 5}, key[n] = {1, 0, 0, 0};
    const int want_rank[n] = {2, 0, 0, 1}, want_size[n] = {3, 3, 1, 3};
    ncclResult_t ret[n], ar[n], fin[n];
    int size[n], rank[n], bad[n];
    run_ranks(n, [&](int r) {
        ncclComm_t child = nullptr;
        ret[r] = ncclCommSplit(parent[r], color[r], key[r], &child, nullptr); /* blocking: done on return */
        size[r] = rank[r] = bad[r] = -1;
        ar[r] = fin[r] = ncclInternalError;
        if (ret[r] != ncclSuccess || !child) return;
        ncclCommCount(child, &size[r]);
        ncclCommUserRank(child, &rank[r]);
        cudaStream_t s = new_stream();
        double h = (double)(r + 1), g = -1;
        double *d = device_alloc<double>(1);
        cudaMemcpyAsync(d, &h, 8, cudaMemcpyHostToDevice, s);
        ar[r] = ncclAllReduce(d, d, 1, ncclFloat64, ncclMax, child, s);
        cudaMemcpyAsync(&g, d, 8, cudaMemcpyDeviceToHost, s);
        cudaStreamSynchronize(s);
        bad[r] = g != (color[r] == 5 ? 4.0 : 3.0);
        fin[r] = ncclCommFinalize(child); /* inherited blocking: complete on return */
        ncclCommDestroy(child);
        cudaStreamDestroy(s);
        cudaFree(d);
    });
    for (int r = 0; r < n; r++) {
        CHECK(ret[r] == ncclSuccess, "blocking split rank %d: %s", r, ncclGetErrorString(ret[r]));
        CHECK(size[r] == want_size[r] && rank[r] == want_rank[r], "rank %d: child size %d rank %d, want %d %d", r,
              size[r], rank[r], want_size[r], want_rank[r]);
        CHECK(ar[r] == ncclSuccess && bad[r] == 0, "rank %d: max over the child: %s", r, ncclGetErrorString(ar[r]));
        CHECK(fin[r] == ncclSuccess, "rank %d: blocking child's finalize: %s", r, ncclGetErrorString(fin[r]));
    }
    for (ncclComm_t c : parent) CHECK(ncclCommDestroy(c) == ncclSuccess, "destroy parent");
}

/* ------------------------------------------------------------------ 7: finalize */

static void test_finalize()
{
    std::vector<ncclComm_t> comm = make_comms(2, false);
    if (!comm[0] || !comm[1]) return;
    cudaStream_t s[2] = {new_stream(), new_stream()};
    long long *d[2];
    std::atomic<int> finalized{0};
    ncclResult_t fin_ret[2], mid[2], last[2];
    long long got[2][3];
    run_ranks(2, [&](int r) {
        d[r] = device_alloc<long long>(3);
        long long h[3] = {r + 1LL, 10LL * (r + 1), -(r + 1LL)};
        cudaMemcpyAsync(d[r], h, sizeof h, cudaMemcpyHostToDevice, s[r]);
        if (r == 1) wait_for([&] { return finalized.load() == 1; }); /* rank 0's finalize waits for this */
        ncclAllReduce(d[r], d[r], 3, ncclInt64, ncclProd, comm[r], s[r]);
        fin_ret[r] = ncclCommFinalize(comm[r]);
        mid[r] = ncclInternalError;
        ncclCommGetAsyncError(comm[r], &mid[r]);
        if (r == 0) {
            sleep_ms(30);
            if (mid[r] == ncclInProgress) ncclCommGetAsyncError(comm[r], &mid[r]); /* rank 1 has not come */
            finalized = 1;
        }
        last[r] = wait_async(comm[r]);
        cudaMemcpyAsync(got[r], d[r], sizeof got[r], cudaMemcpyDeviceToHost, s[r]);
        cudaStreamSynchronize(s[r]);
    });
    for (int r = 0; r < 2; r++) {
        CHECK(fin_ret[r] == ncclInProgress, "non-blocking finalize rank %d returned %s", r,
              ncclGetErrorString(fin_ret[r]));
        if (r == 0)
            CHECK(mid[r] == ncclInProgress, "finalize complete while a collective waits: %s",
                  ncclGetErrorString(mid[r]));
        CHECK(last[r] == ncclSuccess, "finalize rank %d ended with %s", r, ncclGetErrorString(last[r]));
        CHECK(got[r][0] == 2 && got[r][1] == 200 && got[r][2] == 2, "product rank %d: %lld %lld %lld", r, got[r][0],
              got[r][1], got[r][2]);
        CHECK(ncclCommDestroy(comm[r]) == ncclSuccess, "destroy after finalize");
        cudaStreamDestroy(s[r]);
        cudaFree(d[r]);
    }
}

/* ------------------------------------------------------------------ 8: a dead peer */

static void test_dead_peer()
{
    ncclUniqueId id;
    CHECK(ncclGetUniqueId(&id) == ncclSuccess, "ncclGetUniqueId");
    fflush(stdout);
    fflush(stderr);
    const pid_t pid = fork();
    if (pid < 0) {
        CHECK(false, "fork failed");
        return;
    }
    if (pid == 0) { /* rank 1: joins, then leaves without a word */
        ncclComm_t c = nullptr;
        ncclResult_t r = ncclCommInitRank(&c, 2, id, 1);
        _exit(r == ncclSuccess ? 0 : 3);
    }
    ncclComm_t c = nullptr;
    ncclConfig_t cfg = make_config(0);
    ncclResult_t r = ncclCommInitRankConfig(&c, 2, id, 0, &cfg);
    if (r == ncclInProgress) r = wait_async(c);
    CHECK(r == ncclSuccess, "init with a child process: %s", ncclGetErrorString(r));
    int status = 0;
    const bool reaped = wait_for([&] { return waitpid(pid, &status, WNOHANG) == pid; });
    if (!reaped) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    CHECK(reaped && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: reaped %d, status %#x", (int)reaped,
          status);
    if (r != ncclSuccess) {
        ncclCommAbort(c);
        return;
    }
    cudaStream_t s = new_stream();
    float *d = device_alloc<float>(8);
    CHECK(ncclAllReduce(d, d, 8, ncclFloat32, ncclSum, c, s) == ncclSuccess, "allreduce with a dead peer");
    const double t0 = now_s();
    ncclResult_t e = ncclInProgress;
    wait_for([&] {
        ncclCommGetAsyncError(c, &e);
        return e != ncclSuccess && e != ncclInProgress;
    }, 5.0);
    const double dt = now_s() - t0;
    CHECK(e == ncclRemoteError, "async error with a dead peer: %s", ncclGetErrorString(e));
    CHECK(dt < 3.0, "dead peer reported after %.2f s", dt);
    /* the collective that could not complete holds the stream, as NCCL's stuck
     * kernel does, until the abort: "done" would claim work that never happened */
    std::atomic<bool> synced{false};
    std::thread t([&] {
        cudaStreamSynchronize(s);
        synced = true;
    });
    sleep_ms(300);
    CHECK(!synced.load() && cudaStreamQuery(s) == cudaErrorNotReady, "stream drained by the remote error alone");
    cudaGetLastError();
    CHECK(ncclCommAbort(c) == ncclSuccess, "abort after a remote error");
    const bool drained = wait_for([&] { return synced.load(); }, 5.0);
    CHECK(drained, "stream still pending after the abort");
    t.join();
    cudaGetLastError();
    cudaFree(d);
    cudaStreamDestroy(s);
}

static void on_alarm(int)
{
    static const char m[] = "test_nccl: timed out\n";
    ssize_t w = write(2, m, sizeof m - 1);
    (void)w;
    _exit(2);
}

int main()
{
    signal(SIGALRM, on_alarm);
    alarm(120);
    unsetenv("NCCL_COMM_BLOCKING");
    test_init_nonblocking();
    test_init_blocking();
    test_init_errors();
    test_collectives();
    test_arguments();
    test_pending_streams();
    test_abort();
    test_split_nonblocking();
    test_split_blocking();
    test_finalize();
    test_dead_peer(); /* last, and with no other thread of the test running: it forks */
    return emu_test_finish();
}
