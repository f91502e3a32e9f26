/*
 * test_runtime.cu -- the emulated runtime API: virtual device, memory, copies, streams,
 * events, error codes and names, launch-configuration errors.
 */
#include <chrono>
#include <vector>

#include "emu_test.h"

__global__ void k_fill(int *p, int v) { p[blockIdx.x * blockDim.x + threadIdx.x] = v; }

static void test_device()
{
    int n = 0, dev = -1;
    CHECK_CUDA(cudaGetDeviceCount(&n));
    CHECK(n == 1, "device count %d", n);
    CHECK_CUDA(cudaSetDevice(0));
    CHECK_CUDA(cudaGetDevice(&dev));
    CHECK(dev == 0, "device %d", dev);
    CHECK(cudaSetDevice(1) == cudaErrorInvalidDevice, "cudaSetDevice(1) accepted");
    CHECK(cudaGetLastError() == cudaErrorInvalidDevice, "last error not InvalidDevice");
    CHECK(cudaGetLastError() == cudaSuccess, "cudaGetLastError did not reset");
    cudaDeviceProp p;
    CHECK_CUDA(cudaGetDeviceProperties(&p, 0));
    CHECK(strcmp(p.name, "fabriek emulated H100") == 0 && p.major == 9 && p.minor == 0 && p.multiProcessorCount == 132 &&
              p.sharedMemPerBlockOptin == 227 * 1024 && p.totalGlobalMem == (80ull << 30) && p.warpSize == 32,
          "H100 preset: %s sm_%d%d %d SMs", p.name, p.major, p.minor, p.multiProcessorCount);
    int v = 0;
    CHECK_CUDA(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
    CHECK(v == 227 * 1024, "optin attr %d", v);
    CHECK_CUDA(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0));
    CHECK(v == 132, "SM attr %d", v);
    CHECK_CUDA(cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, 0));
    CHECK(v == 9, "major attr %d", v);
    CHECK(fab_emu_set_device_preset("a100") == cudaSuccess, "a100 preset");
    CHECK_CUDA(cudaGetDeviceProperties(&p, 0));
    CHECK(p.major == 8 && p.multiProcessorCount == 108 && p.sharedMemPerBlockOptin == 163 * 1024, "A100 preset");
    p.multiProcessorCount = 4;
    CHECK(fab_emu_set_device_props(&p) == cudaSuccess, "custom props");
    CHECK_CUDA(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0));
    CHECK(v == 4, "custom SM count %d", v);
    p.warpSize = 64;
    CHECK(fab_emu_set_device_props(&p) == cudaErrorInvalidValue, "warpSize 64 accepted");
    fab_emu_set_device_preset("h100");
    int rv = 0, dv = 0;
    CHECK_CUDA(cudaRuntimeGetVersion(&rv));
    CHECK_CUDA(cudaDriverGetVersion(&dv));
    CHECK(rv == 13000 && dv >= rv, "versions %d %d", rv, dv);
}

static void test_memory()
{
    void *d = nullptr;
    CHECK_CUDA(cudaMalloc(&d, 1000));
    CHECK(((uintptr_t)d % 256) == 0, "cudaMalloc alignment %p", d);
    std::vector<unsigned char> h(1000), back(1000);
    for (int i = 0; i < 1000; ++i) h[i] = (unsigned char)i;
    CHECK_CUDA(cudaMemcpy(d, h.data(), 1000, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(back.data(), d, 1000, cudaMemcpyDefault));
    CHECK(back == h, "round trip");
    CHECK_CUDA(cudaMemset((char *)d + 10, 0x5a, 20));
    CHECK_CUDA(cudaMemcpyAsync(back.data(), d, 1000, cudaMemcpyDeviceToHost, 0));
    CHECK(back[9] == 9 && back[10] == 0x5a && back[29] == 0x5a && back[30] == 30, "memset");
    CHECK(cudaMemcpy(d, h.data(), 1001, cudaMemcpyHostToDevice) == cudaErrorInvalidValue, "copy past the end accepted");
    CHECK(cudaMemset((char *)d + 999, 0, 2) == cudaErrorInvalidValue, "memset past the end accepted");
    CHECK(cudaMemcpy(d, h.data(), 4, (cudaMemcpyKind)7) == cudaErrorInvalidMemcpyDirection, "bad kind accepted");
    cudaPointerAttributes a;
    CHECK_CUDA(cudaPointerGetAttributes(&a, (char *)d + 5));
    CHECK(a.type == cudaMemoryTypeDevice, "attr type %d", (int)a.type);
    CHECK_CUDA(cudaPointerGetAttributes(&a, h.data()));
    CHECK(a.type == cudaMemoryTypeUnregistered, "host attr type %d", (int)a.type);
    void *ph = nullptr;
    CHECK_CUDA(cudaMallocHost(&ph, 64));
    CHECK_CUDA(cudaPointerGetAttributes(&a, ph));
    CHECK(a.type == cudaMemoryTypeHost, "pinned attr type %d", (int)a.type);
    CHECK_CUDA(cudaFreeHost(ph));
    size_t fr = 0, tot = 0;
    CHECK_CUDA(cudaMemGetInfo(&fr, &tot));
    CHECK(tot == (80ull << 30) && fr <= tot - 1000, "meminfo %zu %zu", fr, tot);
    CHECK_CUDA(cudaFree(d));
    CHECK(cudaFree(d) == cudaErrorInvalidValue, "double free accepted");
    CHECK(cudaMemcpy(d, h.data(), 4, cudaMemcpyHostToDevice) == cudaErrorInvalidValue, "copy to freed memory accepted");
    CHECK(cudaMalloc(&d, (81ull << 30)) == cudaErrorMemoryAllocation, "81 GB allocation accepted");
    CHECK_CUDA(cudaFree(nullptr));
    CHECK_CUDA(cudaMallocAsync(&d, 64, 0));
    CHECK(*(const unsigned *)d == 0xffffffffu, "fresh device memory is poisoned with 0xff");
    CHECK_CUDA(cudaFreeAsync(d, 0));
    cudaGetLastError();
}

static void test_streams_events()
{
    cudaStream_t s;
    cudaEvent_t e0, e1, nt;
    CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CHECK_CUDA(cudaEventCreate(&e0));
    CHECK_CUDA(cudaEventCreate(&e1));
    CHECK_CUDA(cudaEventCreateWithFlags(&nt, cudaEventDisableTiming));
    int *d = device_alloc<int>(64);
    CHECK_CUDA(cudaEventRecord(e0, s));
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(2);
    cfg.blockDim = dim3(32);
    cfg.stream = s;
    CHECK_CUDA(cudaLaunchKernelEx(&cfg, k_fill, d, 7));
    CHECK_CUDA(cudaEventRecord(e1, s));
    CHECK_CUDA(cudaStreamWaitEvent(0, e1, 0));
    int h[64];
    CHECK_CUDA(cudaMemcpyAsync(h, d, sizeof h, cudaMemcpyDeviceToHost, 0));
    CHECK(h[0] == 7 && h[63] == 7, "stream order: %d %d", h[0], h[63]);
    float ms = -1;
    CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    CHECK(ms >= 0, "elapsed %g", (double)ms);
    CHECK(cudaEventElapsedTime(&ms, e0, nt) == cudaErrorInvalidResourceHandle, "timing a DisableTiming event");
    /* event timing follows the host clock: a 20 ms wait between two records shows */
    CHECK_CUDA(cudaEventRecord(e0, s));
    {
        std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
        while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(20)) {
        }
    }
    CHECK_CUDA(cudaEventRecord(e1, s));
    CHECK_CUDA(cudaEventSynchronize(e1));
    CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    CHECK(ms >= 19.0f && ms < 10000.0f, "elapsed %g ms over a 20 ms wait", (double)ms);
    CHECK(cudaEventElapsedTime(&ms, e1, e0) == cudaSuccess && ms <= -19.0f, "reverse order: %g", (double)ms);
    /* no stream capture in the emulator: every valid stream reports None */
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusActive;
    CHECK_CUDA(cudaStreamIsCapturing(s, &cs));
    CHECK(cs == cudaStreamCaptureStatusNone, "capture status %d", (int)cs);
    cs = cudaStreamCaptureStatusActive;
    CHECK_CUDA(cudaStreamIsCapturing(0, &cs));
    CHECK(cs == cudaStreamCaptureStatusNone, "capture status of the legacy stream %d", (int)cs);
    CHECK(cudaStreamIsCapturing(s, NULL) == cudaErrorInvalidValue, "NULL status pointer accepted");
    cudaGetLastError();
    CHECK_CUDA(cudaStreamSynchronize(s));
    CHECK_CUDA(cudaEventSynchronize(e1));
    CHECK_CUDA(cudaStreamDestroy(s));
    CHECK(cudaStreamSynchronize(s) == cudaErrorInvalidResourceHandle, "destroyed stream accepted");
    CHECK(cudaStreamIsCapturing(s, &cs) == cudaErrorInvalidResourceHandle, "capture query on a destroyed stream");
    cudaGetLastError();
    cfg.stream = s;
    CHECK(cudaLaunchKernelEx(&cfg, k_fill, d, 1) == cudaErrorInvalidResourceHandle, "launch on destroyed stream");
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaEventDestroy(nt);
    CHECK_CUDA(cudaDeviceSynchronize());
    cudaGetLastError();
    cudaFree(d);
}

static void test_launch_errors_and_names()
{
    int *d = device_alloc<int>(2048);
    CHECK(launch(k_fill, dim3(1), dim3(1025), 0, d, 1) == cudaErrorInvalidConfiguration, "1025 threads accepted");
    CHECK(cudaPeekAtLastError() == cudaErrorInvalidConfiguration, "peek");
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "get");
    CHECK(launch(k_fill, dim3(1), dim3(8, 8, 65), 0, d, 1) == cudaErrorInvalidConfiguration, "blockDim.z 65 accepted");
    CHECK(launch(k_fill, dim3(1, 65536), dim3(1), 0, d, 1) == cudaErrorInvalidConfiguration, "gridDim.y 65536 accepted");
    CHECK(launch(k_fill, dim3(0), dim3(1), 0, d, 1) == cudaErrorInvalidConfiguration, "empty grid accepted");
    CHECK(launch(k_fill, dim3(1), dim3(32), 48 * 1024 + 1, d, 1) == cudaErrorInvalidValue, "48K+1 smem accepted");
    void *args[2];
    int v = 3;
    args[0] = &d;
    args[1] = &v;
    CHECK_CUDA(cudaLaunchKernel(k_fill, dim3(2), dim3(1024), args, 0, 0));
    int h[2048];
    cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
    CHECK(h[0] == 3 && h[2047] == 3, "cudaLaunchKernel: %d %d", h[0], h[2047]);
    cudaLaunchAttribute at;
    at.id = cudaLaunchAttributeClusterDimension;
    at.val.clusterDim.x = 2;
    at.val.clusterDim.y = at.val.clusterDim.z = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(2);
    cfg.blockDim = dim3(32);
    cfg.attrs = &at;
    cfg.numAttrs = 1;
    CHECK(cudaLaunchKernelEx(&cfg, k_fill, d, 1) == cudaErrorNotSupported, "clusters are not emulated yet");
    cudaGetLastError();
    CHECK(strcmp(cudaGetErrorName(cudaErrorInvalidValue), "cudaErrorInvalidValue") == 0, "name");
    CHECK(strcmp(cudaGetErrorString(cudaErrorInvalidValue), "invalid argument") == 0, "string");
    CHECK(strcmp(cudaGetErrorString(cudaErrorMemoryAllocation), "out of memory") == 0, "string oom");
    CHECK(strcmp(cudaGetErrorName((cudaError_t)12345), "unrecognized error code") == 0, "unknown code");
    CHECK(cudaErrorLaunchFailure == 719 && cudaErrorIllegalAddress == 700 && cudaErrorInvalidConfiguration == 9,
          "enum values");
    cudaFree(d);
}

/* A store just past or before an allocation lands in its redzone: the launch fails
 * (cudaErrorIllegalAddress) with a message giving the bytes' offsets; the
 * allocation stays usable and the next clean launch succeeds, also after a kernel
 * that hit two allocations' redzones and one that failed for another reason. */
__global__ void k_store_at(int *p, int i, int v) { p[i] = v; }
__global__ void k_store_two(int *p, int *q) { p[100] = q[100] = 1; }
__global__ void k_store_then_trap(int *p)
{
    p[100] = 1;
    __trap();
}

static void test_redzones()
{
    if (fab_emu_redzone_bytes() == 0) {
        printf("skipped: redzones (none under ASan, which reports such stores itself)\n");
        return;
    }
    int old = fab_emu_set_error_mode(1);
    int *d = device_alloc<int>(100), *d2 = device_alloc<int>(100);
    CHECK_CUDA(launch(k_store_at, dim3(1), dim3(1), 0, d, 99, 1));
    const struct {
        int index;
        const char *offsets;
    } bad[] = {{100, "[+400, +404)"}, {103, "[+412, +416)"}, {-1, "[-4, +0)"}};
    for (const auto &b : bad) {
        cudaError_t e = launch(k_store_at, dim3(1), dim3(1), 0, d, b.index, 7);
        cudaGetLastError();
        const char *m = fab_emu_last_message();
        CHECK(e == cudaErrorIllegalAddress, "store at [%d] of 100 ints: launch returned %s", b.index,
              cudaGetErrorName(e));
        CHECK(strstr(m, b.offsets) != nullptr && strstr(m, "k_store_at") != nullptr,
              "store at [%d]: message lacks '%s' or the kernel's name: %s", b.index, b.offsets, m);
        CHECK(strstr(m, b.index < 0 ? "before the start" : "past the end") != nullptr, "store at [%d]: %s", b.index, m);
    }
    CHECK_CUDA(launch(k_store_at, dim3(1), dim3(1), 0, d, 0, 5)); /* the redzones were refilled */
    int h[100];
    CHECK_CUDA(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    CHECK(h[0] == 5 && h[99] == 1, "allocation after the reports: %d %d", h[0], h[99]);
    cudaError_t e = launch(k_store_two, dim3(1), dim3(1), 0, d, d2);
    cudaGetLastError();
    CHECK(e == cudaErrorIllegalAddress && strstr(fab_emu_last_message(), "1 more allocation") != nullptr,
          "two allocations overrun: %s, %s", cudaGetErrorName(e), fab_emu_last_message());
    CHECK_CUDA(launch(k_store_at, dim3(1), dim3(1), 0, d2, 0, 5)); /* both refilled */
    e = launch(k_store_then_trap, dim3(1), dim3(1), 0, d);
    cudaGetLastError();
    CHECK(e == cudaErrorLaunchFailure, "trap after an overrun: %s", cudaGetErrorName(e));
    CHECK_CUDA(launch(k_store_at, dim3(1), dim3(1), 0, d, 0, 5)); /* not blamed for the trapped one's store */
    cudaFree(d);
    cudaFree(d2);
    fab_emu_set_error_mode(old);
}

int main()
{
    test_device();
    test_memory();
    test_streams_events();
    test_launch_errors_and_names();
    test_redzones();
    return emu_test_finish();
}
