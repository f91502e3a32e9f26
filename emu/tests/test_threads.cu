/*
 * test_threads.cu -- the emulator's thread model: indices, barriers (incl. named and
 * early exit), static and dynamic shared memory, shuffles, votes, atomics, and the
 * errors it must report (lane outside its mask, deadlock, mixed collectives).
 */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "emu_test.h"
#include "kernels/thread_kernels.cuh"

static void test_indices()
{
    dim3 grid(2, 3, 2), block(4, 2, 3);
    int n = 12 * 24;
    unsigned *d = device_alloc<unsigned>(n);
    CHECK_CUDA(launch(k_indices, grid, block, 0, d));
    std::vector<unsigned> h(n);
    cudaMemcpy(h.data(), d, n * 4, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (unsigned bz = 0; bz < 2; ++bz)
        for (unsigned by = 0; by < 3; ++by)
            for (unsigned bx = 0; bx < 2; ++bx)
                for (unsigned tz = 0; tz < 3; ++tz)
                    for (unsigned ty = 0; ty < 2; ++ty)
                        for (unsigned tx = 0; tx < 4; ++tx) {
                            unsigned b = bx + 2 * (by + 3 * bz), t = tx + 4 * (ty + 2 * tz);
                            unsigned want = (bx << 24) | (by << 20) | (bz << 16) | (tx << 8) | (ty << 4) | tz;
                            bad += h[b * 24 + t] != want;
                        }
    CHECK(bad == 0, "%d threads saw wrong indices", bad);
    cudaFree(d);
}

static void test_block_sum_and_barrier_reductions()
{
    const int nb = 16;
    std::vector<float> h(nb * 256);
    for (int i = 0; i < nb * 256; ++i) h[i] = (float)(i % 97) - 40.0f;
    float *din = device_alloc<float>(nb * 256), *dout = device_alloc<float>(nb);
    cudaMemcpy(din, h.data(), h.size() * 4, cudaMemcpyHostToDevice);
    CHECK_CUDA(launch(k_block_sum, dim3(nb), dim3(256), 0, din, dout));
    std::vector<float> o(nb);
    cudaMemcpy(o.data(), dout, nb * 4, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int b = 0; b < nb; ++b) {
        double s = 0;
        for (int i = 0; i < 256; ++i) s += h[b * 256 + i];
        bad += o[b] != (float)s;
    }
    CHECK(bad == 0, "%d block sums wrong", bad);

    int *r = device_alloc<int>(4);
    CHECK_CUDA(launch(k_sync_reduce, dim3(1), dim3(100), 0, r));
    int hr[4];
    cudaMemcpy(hr, r, 16, cudaMemcpyDeviceToHost);
    CHECK(hr[0] == 34 && hr[1] == 0 && hr[2] == 1 && hr[3] == 1, "count/and/or = %d %d %d %d", hr[0], hr[1], hr[2],
          hr[3]);
    cudaFree(din);
    cudaFree(dout);
    cudaFree(r);
}

static void test_early_exit_and_named_barriers()
{
    int n = 50;
    std::vector<int> h(128);
    for (int i = 0; i < 128; ++i) h[i] = i + 1;
    int *din = device_alloc<int>(128), *dout = device_alloc<int>(128);
    cudaMemcpy(din, h.data(), 512, cudaMemcpyHostToDevice);
    CHECK_CUDA(launch(k_early_exit, dim3(1), dim3(128), 0, din, dout, n));
    std::vector<int> o(128);
    cudaMemcpy(o.data(), dout, 512, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int t = 0; t < n; ++t) bad += o[t] != 2 * (n - t);
    CHECK(bad == 0, "early-exit kernel wrong in %d places", bad);

    CHECK_CUDA(launch(k_named_barrier, dim3(3), dim3(128), 0, dout));
    cudaMemcpy(o.data(), dout, 65 * 4, cudaMemcpyDeviceToHost);
    bad = 0;
    for (int t = 0; t < 64; ++t) bad += o[t] != t * t + 7;
    CHECK(bad == 0 && o[64] == 1, "named barrier producer/consumer wrong in %d places", bad);
    cudaFree(din);
    cudaFree(dout);
}

static void test_dynamic_smem()
{
    const int n = 16000; /* 64000 bytes: above the 48 KB default */
    std::vector<float> h(n);
    for (int i = 0; i < n; ++i) h[i] = (float)i;
    float *din = device_alloc<float>(n), *dout = device_alloc<float>(n);
    cudaMemcpy(din, h.data(), n * 4, cudaMemcpyHostToDevice);
    cudaError_t e = launch(k_dynamic_smem, dim3(1), dim3(256), n * 4, din, dout, n);
    CHECK(e == cudaErrorInvalidValue, "64000 B dynamic smem without the attribute: %s", cudaGetErrorName(e));
    CHECK(cudaGetLastError() == cudaErrorInvalidValue, "last error not recorded");
    CHECK_CUDA(cudaFuncSetAttribute(k_dynamic_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, n * 4));
    CHECK_CUDA(launch(k_dynamic_smem, dim3(2), dim3(256), n * 4, din, dout, n));
    std::vector<float> o(n);
    cudaMemcpy(o.data(), dout, n * 4, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int i = 0; i < n; ++i) bad += o[i] != (float)(n - 1 - i);
    CHECK(bad == 0, "dynamic smem reverse wrong in %d places", bad);
    e = cudaFuncSetAttribute(k_dynamic_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024);
    CHECK(e == cudaErrorInvalidValue, "attribute above the 227 KB opt-in limit accepted");
    cudaGetLastError();
    cudaFree(din);
    cudaFree(dout);
}

static void test_shuffles()
{
    int *d = device_alloc<int>(64 * 4);
    const int cases[][2] = {{32, 5}, {16, 3}, {8, 12}, {4, 1}, {32, 31}};
    for (auto &c : cases) {
        int width = c[0], arg = c[1];
        CHECK_CUDA(launch(k_shuffles, dim3(1), dim3(64), 0, d, width, arg));
        std::vector<int> o(64 * 4);
        cudaMemcpy(o.data(), d, o.size() * 4, cudaMemcpyDeviceToHost);
        int bad = 0;
        for (int tid = 0; tid < 64; ++tid) {
            int lane = tid % 32, base = tid - lane;
            int seg = lane / width * width;
            int idx = seg + (arg & (width - 1));
            int up = (lane % width) >= arg ? lane - arg : lane;
            int down = (lane % width) + arg < width ? lane + arg : lane;
            int x = lane ^ arg;
            int xr = x >= seg + width ? lane : x; /* later segments are not readable */
            bad += o[4 * tid + 0] != 1000 + base + idx;
            bad += o[4 * tid + 1] != 1000 + base + up;
            bad += o[4 * tid + 2] != 1000 + base + down;
            bad += o[4 * tid + 3] != 1000 + base + xr;
        }
        CHECK(bad == 0, "width %d arg %d: %d wrong shuffle results", width, arg, bad);
    }
    cudaFree(d);

    double *din = device_alloc<double>(32), *dout = device_alloc<double>(32);
    std::vector<double> h(32);
    double want = 0;
    for (int i = 0; i < 32; ++i) want += (h[i] = 1.0 / (i + 3));
    cudaMemcpy(din, h.data(), 256, cudaMemcpyHostToDevice);
    CHECK_CUDA(launch(k_warp_sum_double, dim3(1), dim3(32), 0, din, dout));
    cudaMemcpy(h.data(), dout, 256, cudaMemcpyDeviceToHost);
    CHECK(fabs(h[0] - want) < 1e-14 && h[31] == h[0], "double warp sum %.17g vs %.17g", h[0], want);
    cudaFree(din);
    cudaFree(dout);

    /* a shuffle reading an exited lane yields the poison value (and a warning) */
    int *e = device_alloc<int>(16);
    CHECK_CUDA(launch(k_shfl_from_exited, dim3(1), dim3(32), 0, e));
    int he[16];
    cudaMemcpy(he, e, 64, cudaMemcpyDeviceToHost);
    CHECK(he[0] == 80 && he[7] == 150 && he[8] == -1 && he[15] == -1, "exited-lane shuffle: %d %d %d %d", he[0], he[7],
          he[8], he[15]);
    cudaFree(e);
}

static void test_votes()
{
    unsigned *d = device_alloc<unsigned>(8 * 48);
    CHECK_CUDA(launch(k_votes, dim3(1), dim3(48), 0, d));
    std::vector<unsigned> o(8 * 48);
    cudaMemcpy(o.data(), d, o.size() * 4, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int tid = 0; tid < 48; ++tid) {
        unsigned lane = tid % 32, *r = &o[8 * tid];
        bool w1 = tid >= 32;
        if (lane < 16) bad += r[0] != 0x2222u || r[1] != 1 || r[2] != 1;
        else bad += r[0] != 0x22220000u || r[1] != 0 || r[2] != 0;
        bad += r[3] != (0xffu << (8 * (lane / 8)));
        bad += r[4] != 0xffffffffu || r[5] != 1;
        bad += r[6] != (w1 ? 120u : 496u);
        bad += r[7] != (w1 ? 0xffffu : 0xffffffffu);
    }
    CHECK(bad == 0, "%d wrong vote/match/reduce/activemask results", bad);
    cudaFree(d);
}

static void test_atomics()
{
    int *ci = device_alloc<int>(1), *mx = device_alloc<int>(1), *mn = device_alloc<int>(1), *cas = device_alloc<int>(1);
    unsigned *cu = device_alloc<unsigned>(1), *inc = device_alloc<unsigned>(1);
    unsigned long long *cull = device_alloc<unsigned long long>(1);
    float *cf = device_alloc<float>(1);
    double *cd = device_alloc<double>(1);
    cudaMemset(ci, 0, 4);
    cudaMemset(cu, 0, 4);
    cudaMemset(cull, 0, 8);
    cudaMemset(cf, 0, 4);
    cudaMemset(cd, 0, 8);
    cudaMemset(inc, 0, 4);
    int init_mx = -1, init_mn = 1 << 30, init_cas = -1;
    cudaMemcpy(mx, &init_mx, 4, cudaMemcpyHostToDevice);
    cudaMemcpy(mn, &init_mn, 4, cudaMemcpyHostToDevice);
    cudaMemcpy(cas, &init_cas, 4, cudaMemcpyHostToDevice);
    CHECK_CUDA(launch(k_atomics, dim3(8), dim3(128), 0, ci, cu, cull, cf, cd, mx, mn, inc, cas));
    int hi, hmx, hmn, hcas;
    unsigned hu, hinc;
    unsigned long long hull;
    float hf;
    double hd;
    cudaMemcpy(&hi, ci, 4, cudaMemcpyDefault);
    cudaMemcpy(&hu, cu, 4, cudaMemcpyDefault);
    cudaMemcpy(&hull, cull, 8, cudaMemcpyDefault);
    cudaMemcpy(&hf, cf, 4, cudaMemcpyDefault);
    cudaMemcpy(&hd, cd, 8, cudaMemcpyDefault);
    cudaMemcpy(&hmx, mx, 4, cudaMemcpyDefault);
    cudaMemcpy(&hmn, mn, 4, cudaMemcpyDefault);
    cudaMemcpy(&hinc, inc, 4, cudaMemcpyDefault);
    cudaMemcpy(&hcas, cas, 4, cudaMemcpyDefault);
    int wmx = -1, wmn = 1 << 30;
    for (int g = 0; g < 1024; ++g) {
        wmx = std::max(wmx, (g * 7919) % 1009);
        wmn = std::min(wmn, 1000 - (g * 7919) % 1009);
    }
    CHECK(hi == 1024 && hu == 2048 && hull == 3072 && hf == 512.0f && hd == 256.0, "add: %d %u %llu %g %g", hi, hu, hull,
          (double)hf, hd);
    CHECK(hmx == wmx && hmn == wmn, "max/min %d %d want %d %d", hmx, hmn, wmx, wmn);
    CHECK(hinc == 1024 % 10, "atomicInc wrap: %u", hinc);
    CHECK(hcas >= 0 && hcas < 1024, "atomicCAS winner %d", hcas);
    cudaFree(ci); cudaFree(cu); cudaFree(cull); cudaFree(cf); cudaFree(cd);
    cudaFree(mx); cudaFree(mn); cudaFree(inc); cudaFree(cas);
}

/* Errors the emulator must report.  Return mode: the launch fails with a message. */
static void expect_kernel_error(cudaError_t e, const char *what, const char *needle)
{
    cudaGetLastError();
    const char *m = fab_emu_last_message();
    CHECK(e == cudaErrorLaunchFailure, "%s: launch returned %s", what, cudaGetErrorName(e));
    CHECK(strstr(m, needle) != nullptr, "%s: message lacks '%s': %s", what, needle, m);
}

static void test_reported_errors()
{
    int old = fab_emu_set_error_mode(1);
    int *d = device_alloc<int>(64);
    unsigned *u = device_alloc<unsigned>(64);
    expect_kernel_error(launch(k_bad_mask, dim3(1), dim3(32), 0, d), "lane outside mask", "not in its membermask");
    expect_kernel_error(launch(k_deadlock, dim3(1), dim3(64), 0, d), "deadlock", "deadlock");
    expect_kernel_error(launch(k_split_barrier, dim3(1), dim3(64), 0, d), "__syncthreads at two places",
                        "two different ones");
    expect_kernel_error(launch(k_mixed_collectives, dim3(1), dim3(32), 0, u), "mixed collectives",
                        "different warp operations");
    expect_kernel_error(launch(k_named_barrier_open, dim3(1), dim3(128), 0, d), "bar.arrive never met",
                        "named barrier 3 open (64 of its 128 threads arrived)");
    /* the emulator recovers: a good launch afterwards works */
    CHECK_CUDA(launch(k_indices, dim3(1), dim3(32), 0, u));
    fab_emu_set_error_mode(old);

    /* Default (abort) mode: the process dies with the message on stderr. */
    int fds[2];
    if (pipe(fds) != 0) return;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        fab_emu_set_error_mode(0);
        launch(k_bad_mask, dim3(1), dim3(32), 0, d);
        _exit(0); /* not reached if the error aborts */
    }
    close(fds[1]);
    char buf[4096] = {0};
    size_t got = 0;
    ssize_t r;
    while (got < sizeof buf - 1 && (r = read(fds[0], buf + got, sizeof buf - 1 - got)) > 0) got += (size_t)r;
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "abort mode: child status 0x%x", status);
    CHECK(strstr(buf, "not in its membermask") != nullptr, "abort mode: stderr was: %s", buf);
    cudaFree(d);
    cudaFree(u);
}

int main()
{
    fab_emu_set_racecheck(0);
    test_indices();
    test_block_sum_and_barrier_reductions();
    test_early_exit_and_named_barriers();
    test_dynamic_smem();
    test_shuffles();
    test_votes();
    test_atomics();
    test_reported_errors();
    return emu_test_finish();
}
