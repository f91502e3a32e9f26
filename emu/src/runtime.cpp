/*
 * runtime.cpp -- the emulated CUDA runtime API: errors, the virtual device,
 * memory, streams and events.
 *
 * Device memory is host memory from posix_memalign (256-byte aligned), between
 * redzones checked after each launch (exactly the requested size under
 * AddressSanitizer, which then reports any access past its end), recorded in a
 * registry so copies and memsets can check that a device range lies inside one live
 * allocation.  New allocations are filled with 0xff bytes (NaN for every float
 * type) so a kernel that reads memory nobody wrote sees garbage, as on a GPU.
 *
 * Streams and events: every operation the emulator itself runs (kernels, copies,
 * memsets) runs to completion when it is enqueued, so stream order, cross-stream
 * waits and event ordering hold trivially; an event records the host time at which
 * it was recorded. The one exception is work that runs outside the emulator, on
 * another thread: the emulated NCCL's collectives (nccl.cpp), which wait for peer
 * processes. Such work is a `Pending` the stream holds until it completes: the
 * stream's next operation waits for it first, an event recorded behind it is not
 * ready until then (cudaEventQuery: cudaErrorNotReady, kept as the last error as
 * CUDA may keep it), cudaStreamWaitEvent hands
 * it on to the waiting stream, and the synchronising calls wait for it. The legacy
 * default stream waits for, and is waited for by, every stream created without
 * cudaStreamNonBlocking, as in CUDA.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>

#include "internal.h"

namespace fab_emu {

/* ------------------------------------------------------------------ errors */

static thread_local cudaError_t tl_last_error = cudaSuccess;

cudaError_t record_error(cudaError_t e)
{
    if (e != cudaSuccess) tl_last_error = e;
    return e;
}

static std::mutex g_msg_mutex;
static std::string g_last_message;

void set_last_message(const std::string &m)
{
    std::lock_guard<std::mutex> lk(g_msg_mutex);
    g_last_message = m;
}

/* ------------------------------------------------------------------ virtual device */

static void preset_h100(cudaDeviceProp &p)
{
    memset(&p, 0, sizeof p);
    snprintf(p.name, sizeof p.name, "fabriek emulated H100");
    p.totalGlobalMem = 80ull << 30;
    p.sharedMemPerBlock = 48 * 1024;
    p.regsPerBlock = 65536;
    p.warpSize = 32;
    p.memPitch = 2147483647;
    p.maxThreadsPerBlock = 1024;
    p.maxThreadsDim[0] = 1024;
    p.maxThreadsDim[1] = 1024;
    p.maxThreadsDim[2] = 64;
    p.maxGridSize[0] = 2147483647;
    p.maxGridSize[1] = 65535;
    p.maxGridSize[2] = 65535;
    p.totalConstMem = 65536;
    p.major = 9;
    p.minor = 0;
    p.multiProcessorCount = 132;
    p.canMapHostMemory = 1;
    p.concurrentKernels = 1;
    p.ECCEnabled = 1;
    p.asyncEngineCount = 2;
    p.unifiedAddressing = 1;
    p.memoryBusWidth = 5120;
    p.l2CacheSize = 50 * 1024 * 1024;
    p.persistingL2CacheMaxSize = 32 * 1024 * 1024;
    p.maxThreadsPerMultiProcessor = 2048;
    p.sharedMemPerMultiprocessor = 228 * 1024;
    p.regsPerMultiprocessor = 65536;
    p.managedMemory = 1;
    p.cooperativeLaunch = 1;
    p.sharedMemPerBlockOptin = 227 * 1024;
    p.maxBlocksPerMultiProcessor = 32;
    p.reservedSharedMemPerBlock = 1024;
    p.memoryPoolsSupported = 1;
    p.clusterLaunch = 1;
}

static void preset_a100(cudaDeviceProp &p)
{
    preset_h100(p);
    snprintf(p.name, sizeof p.name, "fabriek emulated A100");
    p.totalGlobalMem = 40ull << 30;
    p.major = 8;
    p.minor = 0;
    p.multiProcessorCount = 108;
    p.l2CacheSize = 40 * 1024 * 1024;
    p.persistingL2CacheMaxSize = 30 * 1024 * 1024;
    p.sharedMemPerMultiprocessor = 164 * 1024;
    p.sharedMemPerBlockOptin = 163 * 1024;
    p.clusterLaunch = 0;
}

static std::mutex g_dev_mutex;
static cudaDeviceProp g_props;
static bool g_props_ready = false;
static std::map<const void *, int> g_func_smem; /* cudaFuncAttributeMaxDynamicSharedMemorySize */

const cudaDeviceProp &device_props()
{
    std::lock_guard<std::mutex> lk(g_dev_mutex);
    if (!g_props_ready) {
        const char *d = getenv("FAB_EMU_DEVICE");
        if (d && strcmp(d, "a100") == 0)
            preset_a100(g_props);
        else
            preset_h100(g_props);
        g_props_ready = true;
    }
    return g_props;
}

int func_max_dynamic_smem(const void *func)
{
    std::lock_guard<std::mutex> lk(g_dev_mutex);
    auto it = g_func_smem.find(func);
    return it == g_func_smem.end() ? -1 : it->second;
}

/* ------------------------------------------------------------------ memory registry */

struct Alloc {
    size_t size;
    bool device; /* false: cudaMallocHost */
};
static std::mutex g_mem_mutex;
static std::map<uintptr_t, Alloc> g_allocs;
static size_t g_device_bytes = 0;

/* Every allocation sits between two redzones, REDZONE_FRONT bytes before it and
 * REDZONE_BACK after, filled with a pattern. A kernel's plain stores are host stores
 * the emulator does not see; check_redzones, after each launch, reports a store just
 * before or past an allocation, which would otherwise corrupt the heap or pass
 * unnoticed (on a GPU it corrupts a neighbour or faults). Under ASan there are none:
 * allocations are their exact size and ASan reports such an access as it happens. */
#ifdef FAB_EMU_ASAN
static const size_t REDZONE_FRONT = 0, REDZONE_BACK = 0;
#else
static const size_t REDZONE_FRONT = 256, REDZONE_BACK = 1024; /* FRONT keeps the 256-byte alignment */
#endif
static const size_t REDZONE_BYTES = REDZONE_FRONT + REDZONE_BACK;

/* The pattern, front zone then back zone. */
static const unsigned char *redzone_pattern()
{
    static unsigned char pat[REDZONE_BYTES + 1];
    static bool made;
    if (!made) { /* under g_mem_mutex */
        for (size_t i = 0; i < REDZONE_BYTES; ++i) pat[i] = (unsigned char)(0xa5u ^ (i * 29u));
        made = true;
    }
    return pat;
}

static void fill_redzones(unsigned char *p, size_t size)
{
    memcpy(p - REDZONE_FRONT, redzone_pattern(), REDZONE_FRONT);
    memcpy(p + size, redzone_pattern() + REDZONE_FRONT, REDZONE_BACK);
}

std::string check_redzones()
{
    if (REDZONE_BYTES == 0) return std::string();
    std::lock_guard<std::mutex> lk(g_mem_mutex);
    const unsigned char *pat = redzone_pattern();
    std::string report;
    int more = 0;
    for (auto &kv : g_allocs) {
        unsigned char *p = (unsigned char *)kv.first;
        const size_t n = kv.second.size;
        if (memcmp(p - REDZONE_FRONT, pat, REDZONE_FRONT) == 0 && memcmp(p + n, pat + REDZONE_FRONT, REDZONE_BACK) == 0)
            continue;
        long long lo = 0, hi = 0; /* the bad bytes' span, relative to the allocation's start */
        bool before = false, past = false;
        for (size_t i = 0; i < REDZONE_BYTES; ++i) {
            const long long at = i < REDZONE_FRONT ? (long long)i - (long long)REDZONE_FRONT
                                                   : (long long)(n + i - REDZONE_FRONT);
            if (p[at] == pat[i]) continue;
            if (!before && !past) lo = at;
            hi = at + 1;
            (i < REDZONE_FRONT ? before : past) = true;
        }
        fill_redzones(p, n); /* each overflow reported once */
        if (!report.empty()) {
            more++;
            continue;
        }
        char msg[400];
        snprintf(msg, sizeof msg,
                 "bytes in [%+lld, %+lld) relative to the start of the %s allocation [%p, +%zu) were written: a store "
                 "%s it (by this kernel, or by host code writing device memory directly since the last launch)",
                 lo, hi, kv.second.device ? "cudaMalloc" : "cudaMallocHost", (void *)p, n,
                 before && past ? "before the start and past the end of" : before ? "before the start of"
                                                                           : "past the end of");
        report = msg;
    }
    if (more) report += "; and around " + std::to_string(more) + " more allocation(s)";
    return report;
}

/* The allocation containing [p, p+n), or end(). n == 0 checks p only. */
static std::map<uintptr_t, Alloc>::iterator find_alloc(const void *p, size_t n)
{
    uintptr_t a = (uintptr_t)p;
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return g_allocs.end();
    --it;
    uintptr_t end = it->first + it->second.size;
    if (a < it->first || a >= end + (it->second.size == 0 ? 1 : 0)) return g_allocs.end();
    if (n > end - a) return g_allocs.end();
    return it;
}

bool is_device_memory(const void *p, size_t bytes)
{
    std::lock_guard<std::mutex> lk(g_mem_mutex);
    auto it = find_alloc(p, bytes);
    return it != g_allocs.end() && it->second.device;
}

/* Does p start inside some device allocation (whatever the length)? */
static bool starts_in_device(const void *p)
{
    auto it = find_alloc(p, 0);
    return it != g_allocs.end() && it->second.device;
}

std::vector<std::pair<unsigned char *, size_t>> device_allocations()
{
    std::lock_guard<std::mutex> lk(g_mem_mutex);
    std::vector<std::pair<unsigned char *, size_t>> v;
    for (auto &kv : g_allocs)
        if (kv.second.device) v.push_back({(unsigned char *)kv.first, kv.second.size});
    return v;
}

static cudaError_t do_malloc(void **ptr, size_t size, bool device)
{
    if (!ptr) return cudaErrorInvalidValue;
    *ptr = nullptr;
    if (size == 0) return cudaSuccess;
    const cudaDeviceProp &p = device_props();
    std::lock_guard<std::mutex> lk(g_mem_mutex);
    if (device && size > p.totalGlobalMem - g_device_bytes) return cudaErrorMemoryAllocation;
    void *m = nullptr;
    if (size > SIZE_MAX - REDZONE_FRONT - REDZONE_BACK ||
        posix_memalign(&m, 256, REDZONE_FRONT + size + REDZONE_BACK) != 0 || !m)
        return cudaErrorMemoryAllocation;
    unsigned char *user = (unsigned char *)m + REDZONE_FRONT;
    memset(user, 0xff, size);
    fill_redzones(user, size);
    g_allocs[(uintptr_t)user] = Alloc{size, device};
    if (device) g_device_bytes += size;
    *ptr = user;
    return cudaSuccess;
}

static cudaError_t do_free(void *ptr, bool device)
{
    if (!ptr) return cudaSuccess;
    std::lock_guard<std::mutex> lk(g_mem_mutex);
    auto it = g_allocs.find((uintptr_t)ptr);
    if (it == g_allocs.end() || it->second.device != device) {
        fprintf(stderr, "fab_emu: %s(%p): not a pointer returned by %s (or already freed)\n",
                device ? "cudaFree" : "cudaFreeHost", ptr, device ? "cudaMalloc" : "cudaMallocHost");
        return cudaErrorInvalidValue;
    }
    if (device) g_device_bytes -= it->second.size;
    g_allocs.erase(it);
    free((unsigned char *)ptr - REDZONE_FRONT);
    return cudaSuccess;
}

/* Check one side of a copy: a device side must lie inside one live allocation. */
static bool range_ok(const void *p, size_t n, bool must_be_device)
{
    if (!p) return false;
    if (must_be_device) {
        auto it = find_alloc(p, n);
        if (it == g_allocs.end() || !it->second.device) {
            fprintf(stderr, "fab_emu: device range [%p, +%zu) is not inside a live cudaMalloc allocation\n", p, n);
            return false;
        }
        return true;
    }
    /* Host side, or cudaMemcpyDefault: if it starts in device memory, it must end there too. */
    if (starts_in_device(p) && find_alloc(p, n) == g_allocs.end()) {
        fprintf(stderr, "fab_emu: range [%p, +%zu) runs past the end of its cudaMalloc allocation\n", p, n);
        return false;
    }
    return true;
}

static cudaError_t do_memcpy(void *dst, const void *src, size_t n, cudaMemcpyKind kind)
{
    if ((int)kind < 0 || kind > cudaMemcpyDefault) return cudaErrorInvalidMemcpyDirection;
    if (n == 0) return cudaSuccess;
    {
        std::lock_guard<std::mutex> lk(g_mem_mutex);
        bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
        bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
        if (!range_ok(dst, n, dst_dev) || !range_ok(src, n, src_dev)) return cudaErrorInvalidValue;
    }
    memmove(dst, src, n);
    return cudaSuccess;
}

static cudaError_t do_memset(void *p, int v, size_t n)
{
    if (n == 0) return cudaSuccess;
    {
        std::lock_guard<std::mutex> lk(g_mem_mutex);
        if (!range_ok(p, n, true)) return cudaErrorInvalidValue;
    }
    memset(p, v, n);
    return cudaSuccess;
}

/* ------------------------------------------------------------------ streams and events */

void Pending::complete()
{
    std::lock_guard<std::mutex> lk(mu);
    done = true;
    cv.notify_all();
}

void Pending::wait()
{
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [this] { return done; });
}

bool Pending::is_done()
{
    std::lock_guard<std::mutex> lk(mu);
    return done;
}

struct StreamObj {
    unsigned flags;
    std::vector<PendingRef> pending; /* under g_handle_mutex */
};
struct EventObj {
    unsigned flags;
    bool recorded;
    std::chrono::steady_clock::time_point when;
    std::vector<PendingRef> pending; /* what the stream had in flight at the record; under g_handle_mutex */
};
static std::mutex g_handle_mutex;
static std::set<const void *> g_streams, g_events;
static StreamObj g_legacy_stream{0, {}}; /* the NULL, legacy and per-thread default streams */
/* What destroyed streams still had pending: CUDA releases a stream once its work is
 * done, and device-wide synchronisation still waits for that work. */
static StreamObj g_orphans{cudaStreamNonBlocking, {}};

bool stream_is_valid(cudaStream_t s)
{
    if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return true;
    std::lock_guard<std::mutex> lk(g_handle_mutex);
    return g_streams.count(s) != 0;
}

/* Under g_handle_mutex; s valid. */
static StreamObj *stream_obj(cudaStream_t s)
{
    if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return &g_legacy_stream;
    return reinterpret_cast<StreamObj *>(s);
}

/* Under g_handle_mutex: appends what work on `st` must wait for (its own pending
 * work, and the legacy stream's or every blocking stream's, see the top), dropping
 * what has completed. */
static void collect_pending(StreamObj *st, std::vector<PendingRef> &out)
{
    auto take = [&out](StreamObj *o) {
        o->pending.erase(std::remove_if(o->pending.begin(), o->pending.end(),
                                        [](const PendingRef &p) { return p->is_done(); }),
                         o->pending.end());
        out.insert(out.end(), o->pending.begin(), o->pending.end());
    };
    take(st);
    if (st == &g_legacy_stream) {
        for (const void *h : g_streams) {
            StreamObj *o = reinterpret_cast<StreamObj *>(const_cast<void *>(h));
            if (!(o->flags & cudaStreamNonBlocking)) take(o);
        }
    } else if (!(st->flags & cudaStreamNonBlocking)) {
        take(&g_legacy_stream);
    }
}

std::vector<PendingRef> stream_pending(cudaStream_t s)
{
    std::vector<PendingRef> v;
    std::lock_guard<std::mutex> lk(g_handle_mutex);
    collect_pending(stream_obj(s), v);
    return v;
}

void stream_drain(cudaStream_t s)
{
    for (const PendingRef &p : stream_pending(s)) p->wait();
}

cudaError_t stream_add_pending(cudaStream_t s, PendingRef p)
{
    if (!stream_is_valid(s)) return cudaErrorInvalidResourceHandle;
    std::lock_guard<std::mutex> lk(g_handle_mutex);
    stream_obj(s)->pending.push_back(std::move(p));
    return cudaSuccess;
}

/* Every stream's work outside the emulator (cudaDeviceSynchronize, cudaFree). */
static void drain_all()
{
    std::vector<PendingRef> v;
    {
        std::lock_guard<std::mutex> lk(g_handle_mutex);
        collect_pending(&g_legacy_stream, v);
        collect_pending(&g_orphans, v);
        for (const void *h : g_streams) collect_pending(reinterpret_cast<StreamObj *>(const_cast<void *>(h)), v);
    }
    for (const PendingRef &p : v) p->wait();
}

static EventObj *event_obj(cudaEvent_t e)
{
    std::lock_guard<std::mutex> lk(g_handle_mutex);
    return (e && g_events.count(e)) ? reinterpret_cast<EventObj *>(e) : nullptr;
}

} // namespace fab_emu

using namespace fab_emu;

extern "C" {

/* ------------------------------------------------------------------ errors */

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = tl_last_error;
    tl_last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return tl_last_error; }

struct ErrorText {
    cudaError_t code;
    const char *name, *text;
};
static const ErrorText kErrors[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInitializationError, "cudaErrorInitializationError", "initialization error"},
    {cudaErrorCudartUnloading, "cudaErrorCudartUnloading", "driver shutting down"},
    {cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration", "invalid configuration argument"},
    {cudaErrorInvalidSymbol, "cudaErrorInvalidSymbol", "invalid device symbol"},
    {cudaErrorInvalidDevicePointer, "cudaErrorInvalidDevicePointer", "invalid device pointer"},
    {cudaErrorInvalidMemcpyDirection, "cudaErrorInvalidMemcpyDirection", "invalid copy direction for memcpy"},
    {cudaErrorInsufficientDriver, "cudaErrorInsufficientDriver",
     "CUDA driver version is insufficient for CUDA runtime version"},
    {cudaErrorInvalidDeviceFunction, "cudaErrorInvalidDeviceFunction", "invalid device function"},
    {cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorNoKernelImageForDevice, "cudaErrorNoKernelImageForDevice",
     "no kernel image is available for execution on the device"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle"},
    {cudaErrorNotReady, "cudaErrorNotReady", "device not ready"},
    {cudaErrorIllegalAddress, "cudaErrorIllegalAddress", "an illegal memory access was encountered"},
    {cudaErrorLaunchOutOfResources, "cudaErrorLaunchOutOfResources", "too many resources requested for launch"},
    {cudaErrorLaunchTimeout, "cudaErrorLaunchTimeout", "the launch timed out and was terminated"},
    {cudaErrorContextIsDestroyed, "cudaErrorContextIsDestroyed", "context is destroyed"},
    {cudaErrorAssert, "cudaErrorAssert", "device-side assert triggered"},
    {cudaErrorIllegalInstruction, "cudaErrorIllegalInstruction", "an illegal instruction was encountered"},
    {cudaErrorMisalignedAddress, "cudaErrorMisalignedAddress", "misaligned address"},
    {cudaErrorInvalidPc, "cudaErrorInvalidPc", "invalid program counter"},
    {cudaErrorLaunchFailure, "cudaErrorLaunchFailure", "unspecified launch failure"},
    {cudaErrorNotPermitted, "cudaErrorNotPermitted", "operation not permitted"},
    {cudaErrorNotSupported, "cudaErrorNotSupported", "operation not supported"},
    {cudaErrorStreamCaptureUnsupported, "cudaErrorStreamCaptureUnsupported",
     "operation not permitted when stream is capturing"},
    {cudaErrorUnknown, "cudaErrorUnknown", "unknown error"},
};

const char *cudaGetErrorString(cudaError_t e)
{
    for (const ErrorText &t : kErrors)
        if (t.code == e) return t.text;
    return "unrecognized error code";
}

const char *cudaGetErrorName(cudaError_t e)
{
    for (const ErrorText &t : kErrors)
        if (t.code == e) return t.name;
    return "unrecognized error code";
}

/* ------------------------------------------------------------------ device */

cudaError_t cudaGetDeviceCount(int *count)
{
    if (!count) return record_error(cudaErrorInvalidValue);
    *count = 1;
    return cudaSuccess;
}

static thread_local int tl_device = 0;

cudaError_t cudaSetDevice(int device)
{
    if (device != 0) return record_error(cudaErrorInvalidDevice);
    tl_device = device;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device)
{
    if (!device) return record_error(cudaErrorInvalidValue);
    *device = tl_device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device)
{
    if (!prop) return record_error(cudaErrorInvalidValue);
    if (device != 0) return record_error(cudaErrorInvalidDevice);
    *prop = device_props();
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device)
{
    if (!value) return record_error(cudaErrorInvalidValue);
    if (device != 0) return record_error(cudaErrorInvalidDevice);
    const cudaDeviceProp &p = device_props();
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: *value = p.maxThreadsDim[0]; break;
    case cudaDevAttrMaxBlockDimY: *value = p.maxThreadsDim[1]; break;
    case cudaDevAttrMaxBlockDimZ: *value = p.maxThreadsDim[2]; break;
    case cudaDevAttrMaxGridDimX: *value = p.maxGridSize[0]; break;
    case cudaDevAttrMaxGridDimY: *value = p.maxGridSize[1]; break;
    case cudaDevAttrMaxGridDimZ: *value = p.maxGridSize[2]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = (int)p.sharedMemPerBlock; break;
    case cudaDevAttrTotalConstantMemory: *value = (int)p.totalConstMem; break;
    case cudaDevAttrWarpSize: *value = p.warpSize; break;
    case cudaDevAttrMaxRegistersPerBlock: *value = p.regsPerBlock; break;
    case cudaDevAttrClockRate: *value = p.major >= 9 ? 1980000 : 1410000; break;
    case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
    case cudaDevAttrConcurrentKernels: *value = p.concurrentKernels; break;
    case cudaDevAttrMemoryClockRate: *value = p.major >= 9 ? 2619000 : 1215000; break;
    case cudaDevAttrGlobalMemoryBusWidth: *value = p.memoryBusWidth; break;
    case cudaDevAttrL2CacheSize: *value = p.l2CacheSize; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = p.maxThreadsPerMultiProcessor; break;
    case cudaDevAttrUnifiedAddressing: *value = p.unifiedAddressing; break;
    case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = (int)p.sharedMemPerMultiprocessor; break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: *value = p.regsPerMultiprocessor; break;
    case cudaDevAttrCooperativeLaunch: *value = p.cooperativeLaunch; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)p.sharedMemPerBlockOptin; break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: *value = p.maxBlocksPerMultiProcessor; break;
    case cudaDevAttrMemoryPoolsSupported: *value = p.memoryPoolsSupported; break;
    case cudaDevAttrClusterLaunch: *value = p.clusterLaunch; break;
    default: return record_error(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void)
{
    drain_all();
    return cudaSuccess;
}
cudaError_t cudaDeviceReset(void) { return cudaSuccess; }

cudaError_t cudaRuntimeGetVersion(int *v)
{
    if (!v) return record_error(cudaErrorInvalidValue);
    *v = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *v)
{
    if (!v) return record_error(cudaErrorInvalidValue);
    *v = CUDART_VERSION;
    return cudaSuccess;
}

/* ------------------------------------------------------------------ streams and events */

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags)
{
    if (!stream || (flags & ~1u)) return record_error(cudaErrorInvalidValue);
    StreamObj *s = new StreamObj{flags, {}};
    std::lock_guard<std::mutex> lk(g_handle_mutex);
    g_streams.insert(s);
    *stream = reinterpret_cast<cudaStream_t>(s);
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *stream) { return cudaStreamCreateWithFlags(stream, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    std::lock_guard<std::mutex> lk(g_handle_mutex);
    if (!stream || !g_streams.erase(stream)) return record_error(cudaErrorInvalidResourceHandle);
    StreamObj *st = reinterpret_cast<StreamObj *>(stream);
    g_orphans.pending.insert(g_orphans.pending.end(), st->pending.begin(), st->pending.end());
    delete st;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    if (!stream_is_valid(stream)) return record_error(cudaErrorInvalidResourceHandle);
    stream_drain(stream);
    return cudaSuccess;
}

/* Not ready is an answer, but it is kept as the thread's last error, as the CUDA
 * runtime may keep it (PyTorch clears it after every query): code that queries
 * must clear it, or its next kernel-launch check reports "device not ready". */
cudaError_t cudaStreamQuery(cudaStream_t stream)
{
    if (!stream_is_valid(stream)) return record_error(cudaErrorInvalidResourceHandle);
    for (const PendingRef &p : stream_pending(stream))
        if (!p->is_done()) return record_error(cudaErrorNotReady);
    return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags)
{
    (void)flags;
    EventObj *e = event_obj(event);
    if (!stream_is_valid(stream) || !e) return record_error(cudaErrorInvalidResourceHandle);
    std::lock_guard<std::mutex> lk(g_handle_mutex);
    StreamObj *st = stream_obj(stream);
    for (const PendingRef &p : e->pending)
        if (!p->is_done()) st->pending.push_back(p);
    return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, enum cudaStreamCaptureStatus *pCaptureStatus)
{
    if (!pCaptureStatus) return record_error(cudaErrorInvalidValue);
    if (!stream_is_valid(stream)) return record_error(cudaErrorInvalidResourceHandle);
    *pCaptureStatus = cudaStreamCaptureStatusNone; /* no graphs in the emulator */
    return cudaSuccess;
}

/* No graphs in the emulator: the mode is kept per thread and means nothing. */
cudaError_t cudaThreadExchangeStreamCaptureMode(enum cudaStreamCaptureMode *mode)
{
    static thread_local enum cudaStreamCaptureMode tl_mode = cudaStreamCaptureModeGlobal;
    if (!mode || *mode < cudaStreamCaptureModeGlobal || *mode > cudaStreamCaptureModeRelaxed)
        return record_error(cudaErrorInvalidValue);
    std::swap(*mode, tl_mode);
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags)
{
    if (!event || (flags & ~7u)) return record_error(cudaErrorInvalidValue);
    EventObj *e = new EventObj{flags, false, {}, {}};
    std::lock_guard<std::mutex> lk(g_handle_mutex);
    g_events.insert(e);
    *event = reinterpret_cast<cudaEvent_t>(e);
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *event) { return cudaEventCreateWithFlags(event, 0); }

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream)
{
    EventObj *e = event_obj(event);
    if (!e || !stream_is_valid(stream)) return record_error(cudaErrorInvalidResourceHandle);
    std::lock_guard<std::mutex> lk(g_handle_mutex);
    e->recorded = true;
    e->when = std::chrono::steady_clock::now(); /* the record's time, even behind pending work */
    e->pending.clear();
    collect_pending(stream_obj(stream), e->pending);
    return cudaSuccess;
}

static std::vector<PendingRef> event_pending(EventObj *e)
{
    std::lock_guard<std::mutex> lk(g_handle_mutex);
    return e->pending;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event)
{
    EventObj *e = event_obj(event);
    if (!e) return record_error(cudaErrorInvalidResourceHandle);
    for (const PendingRef &p : event_pending(e)) p->wait();
    return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event)
{
    EventObj *e = event_obj(event);
    if (!e) return record_error(cudaErrorInvalidResourceHandle);
    for (const PendingRef &p : event_pending(e))
        if (!p->is_done()) return record_error(cudaErrorNotReady); /* kept: see cudaStreamQuery */
    return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end)
{
    if (!ms) return record_error(cudaErrorInvalidValue);
    EventObj *a = event_obj(start), *b = event_obj(end);
    if (!a || !b) return record_error(cudaErrorInvalidResourceHandle);
    if ((a->flags | b->flags) & cudaEventDisableTiming) return record_error(cudaErrorInvalidResourceHandle);
    if (!a->recorded || !b->recorded) return record_error(cudaErrorInvalidResourceHandle);
    for (EventObj *x : {a, b})
        for (const PendingRef &p : event_pending(x))
            if (!p->is_done()) return record_error(cudaErrorNotReady);
    *ms = std::chrono::duration<float, std::milli>(b->when - a->when).count();
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event)
{
    std::lock_guard<std::mutex> lk(g_handle_mutex);
    if (!event || !g_events.erase(event)) return record_error(cudaErrorInvalidResourceHandle);
    delete reinterpret_cast<EventObj *>(event);
    return cudaSuccess;
}

/* ------------------------------------------------------------------ memory */

cudaError_t cudaMalloc(void **p, size_t size) { return record_error(do_malloc(p, size, true)); }
cudaError_t cudaFree(void *p)
{
    drain_all(); /* cudaFree synchronises the device */
    return record_error(do_free(p, true));
}
cudaError_t cudaMallocAsync(void **p, size_t size, cudaStream_t s)
{
    if (!stream_is_valid(s)) return record_error(cudaErrorInvalidResourceHandle);
    return cudaMalloc(p, size);
}
cudaError_t cudaFreeAsync(void *p, cudaStream_t s)
{
    if (!stream_is_valid(s)) return record_error(cudaErrorInvalidResourceHandle);
    stream_drain(s);
    return record_error(do_free(p, true));
}
cudaError_t cudaMallocHost(void **p, size_t size) { return record_error(do_malloc(p, size, false)); }
cudaError_t cudaHostAlloc(void **p, size_t size, unsigned int flags)
{
    (void)flags;
    return cudaMallocHost(p, size);
}
cudaError_t cudaFreeHost(void *p)
{
    drain_all();
    return record_error(do_free(p, false));
}

/* The synchronous copies and memsets run on the legacy stream. */
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind)
{
    stream_drain(nullptr);
    return record_error(do_memcpy(dst, src, n, kind));
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind, cudaStream_t s)
{
    if (!stream_is_valid(s)) return record_error(cudaErrorInvalidResourceHandle);
    stream_drain(s);
    return record_error(do_memcpy(dst, src, n, kind));
}

cudaError_t cudaMemcpy2D(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
                         enum cudaMemcpyKind kind)
{
    if (width > dpitch || width > spitch) return record_error(cudaErrorInvalidValue);
    stream_drain(nullptr);
    for (size_t r = 0; r < height; ++r) {
        cudaError_t e = do_memcpy((char *)dst + r * dpitch, (const char *)src + r * spitch, width, kind);
        if (e) return record_error(e);
    }
    return cudaSuccess;
}

cudaError_t cudaMemset(void *p, int v, size_t n)
{
    stream_drain(nullptr);
    return record_error(do_memset(p, v, n));
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s)
{
    if (!stream_is_valid(s)) return record_error(cudaErrorInvalidResourceHandle);
    stream_drain(s);
    return record_error(do_memset(p, v, n));
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    if (!free_bytes || !total_bytes) return record_error(cudaErrorInvalidValue);
    const cudaDeviceProp &p = device_props();
    std::lock_guard<std::mutex> lk(g_mem_mutex);
    *total_bytes = p.totalGlobalMem;
    *free_bytes = p.totalGlobalMem - g_device_bytes;
    return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *a, const void *ptr)
{
    if (!a) return record_error(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> lk(g_mem_mutex);
    auto it = find_alloc(ptr, 0);
    a->device = 0;
    if (it == g_allocs.end()) {
        a->type = cudaMemoryTypeUnregistered;
        a->devicePointer = nullptr;
        a->hostPointer = const_cast<void *>(ptr);
    } else if (it->second.device) {
        a->type = cudaMemoryTypeDevice;
        a->devicePointer = const_cast<void *>(ptr);
        a->hostPointer = nullptr;
    } else {
        a->type = cudaMemoryTypeHost;
        a->devicePointer = const_cast<void *>(ptr);
        a->hostPointer = const_cast<void *>(ptr);
    }
    return cudaSuccess;
}

/* ------------------------------------------------------------------ functions */

cudaError_t cudaFuncSetAttribute(const void *func, enum cudaFuncAttribute attr, int value)
{
    if (!func) return record_error(cudaErrorInvalidDeviceFunction);
    const cudaDeviceProp &p = device_props();
    switch (attr) {
    case cudaFuncAttributeMaxDynamicSharedMemorySize: {
        if (value < 0 || (size_t)value > p.sharedMemPerBlockOptin) return record_error(cudaErrorInvalidValue);
        std::lock_guard<std::mutex> lk(g_dev_mutex);
        g_func_smem[func] = value;
        return cudaSuccess;
    }
    case cudaFuncAttributePreferredSharedMemoryCarveout:
        return (value >= -1 && value <= 100) ? cudaSuccess : record_error(cudaErrorInvalidValue);
    default: return record_error(cudaErrorNotSupported);
    }
}

/* ------------------------------------------------------------------ fab_emu.h */

cudaError_t fab_emu_set_device_props(const struct cudaDeviceProp *prop)
{
    if (!prop || prop->warpSize != 32 || prop->multiProcessorCount < 1 || prop->maxThreadsPerBlock < 1 ||
        prop->maxThreadsPerBlock > 1024 || prop->sharedMemPerBlockOptin < prop->sharedMemPerBlock)
        return cudaErrorInvalidValue;
    device_props();
    std::lock_guard<std::mutex> lk(g_dev_mutex);
    g_props = *prop;
    return cudaSuccess;
}

cudaError_t fab_emu_set_device_preset(const char *name)
{
    cudaDeviceProp p;
    if (name && strcmp(name, "h100") == 0)
        preset_h100(p);
    else if (name && strcmp(name, "a100") == 0)
        preset_a100(p);
    else
        return cudaErrorInvalidValue;
    return fab_emu_set_device_props(&p);
}

int fab_emu_set_sm_count(int n)
{
    device_props();
    std::lock_guard<std::mutex> lk(g_dev_mutex);
    const int old = g_props.multiProcessorCount;
    if (n >= 1)
        g_props.multiProcessorCount = n;
    return old;
}

int fab_emu_redzone_bytes(void) { return (int)REDZONE_BACK; }

const char *fab_emu_last_message(void)
{
    std::lock_guard<std::mutex> lk(g_msg_mutex);
    static thread_local std::string copy;
    copy = g_last_message;
    return copy.c_str();
}

} // extern "C"
