/*
 * test_race.cu -- the race check catches planted missing __syncthreads / __syncwarp /
 * cp.async waits, and stays silent on the correct kernels.
 */
#include <vector>

#include "emu_test.h"
#include "kernels/race_kernels.cuh"

/* Run a launch under the race check in return mode; report whether it flagged a race. */
template <class F>
static bool flags_race(F run, cudaError_t *err)
{
    unsigned long before = fab_emu_race_reports();
    *err = run();
    cudaGetLastError();
    return fab_emu_race_reports() != before;
}

int main()
{
    fab_emu_set_racecheck(1);
    fab_emu_set_error_mode(1);
    cudaError_t e;

    const int nt = 2 * 1024;
    std::vector<float> h(nt);
    for (int i = 0; i < nt; ++i) h[i] = (float)(i * 37 % 1001);
    float *din = device_alloc<float>(nt), *dout = device_alloc<float>(nt);
    cudaMemcpy(din, h.data(), nt * 4, cudaMemcpyHostToDevice);

    bool r = flags_race([&] { return launch(k_transpose_tile<true>, dim3(2), dim3(32, 32), 0, din, dout); }, &e);
    CHECK(!r && e == cudaSuccess, "correct transpose flagged (%s): %s", cudaGetErrorName(e), fab_emu_last_message());
    std::vector<float> o(nt);
    cudaMemcpy(o.data(), dout, nt * 4, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int b = 0; b < 2; ++b)
        for (int y = 0; y < 32; ++y)
            for (int x = 0; x < 32; ++x) bad += o[b * 1024 + y * 32 + x] != h[b * 1024 + x * 32 + y];
    CHECK(bad == 0, "transpose result wrong in %d places", bad);
    r = flags_race([&] { return launch(k_transpose_tile<false>, dim3(2), dim3(32, 32), 0, din, dout); }, &e);
    CHECK(r && e == cudaErrorLaunchFailure, "missing __syncthreads in the transpose not caught");
    CHECK(strstr(fab_emu_last_message(), "race check") != nullptr, "message: %s", fab_emu_last_message());

    std::vector<int> hi(64);
    for (int i = 0; i < 64; ++i) hi[i] = 5 * i + 1;
    int *ii = device_alloc<int>(64), *io = device_alloc<int>(64);
    cudaMemcpy(ii, hi.data(), 256, cudaMemcpyHostToDevice);
    r = flags_race([&] { return launch(k_warp_exchange<true>, dim3(1), dim3(64), 0, ii, io); }, &e);
    CHECK(!r && e == cudaSuccess, "correct warp exchange flagged: %s", fab_emu_last_message());
    r = flags_race([&] { return launch(k_warp_exchange<false>, dim3(1), dim3(64), 0, ii, io); }, &e);
    CHECK(r, "missing __syncwarp not caught");

    const int n = 64;
    float4 *fi = device_alloc<float4>(2 * n), *fo = device_alloc<float4>(2 * n);
    std::vector<float> hf(8 * n);
    for (int i = 0; i < 8 * n; ++i) hf[i] = (float)i;
    cudaMemcpy(fi, hf.data(), hf.size() * 4, cudaMemcpyHostToDevice);
    r = flags_race([&] { return launch(k_cp_async_stage<true>, dim3(2), dim3(n), n * 16, fi, fo); }, &e);
    CHECK(!r && e == cudaSuccess, "correct cp.async staging flagged: %s", fab_emu_last_message());
    r = flags_race([&] { return launch(k_cp_async_stage<false>, dim3(2), dim3(n), n * 16, fi, fo); }, &e);
    CHECK(r, "missing cp.async wait not caught");

    /* FAB_EMU_RACECHECK off: the buggy kernel runs without complaint (one schedule only). */
    fab_emu_set_racecheck(0);
    r = flags_race([&] { return launch(k_transpose_tile<false>, dim3(2), dim3(32, 32), 0, din, dout); }, &e);
    CHECK(!r && e == cudaSuccess, "race check off still reported");
    cudaFree(din); cudaFree(dout); cudaFree(ii); cudaFree(io); cudaFree(fi); cudaFree(fo);
    return emu_test_finish();
}
