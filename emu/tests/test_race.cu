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
    fab_emu_set_smemcheck(1); /* whatever FAB_EMU_SMEMCHECK says */
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
    /* the same through fab__st_shared / fab__ld_shared: the detector sees it without
     * the schedule comparison, and names both accesses */
    fab_emu_set_racecheck(0);
    r = flags_race([&] { return launch(k_warp_exchange_plain<true>, dim3(1), dim3(64), 64 * 4, ii, io); }, &e);
    CHECK(!r && e == cudaSuccess, "correct plain warp exchange flagged: %s", fab_emu_last_message());
    r = flags_race([&] { return launch(k_warp_exchange_plain<false>, dim3(1), dim3(64), 64 * 4, ii, io); }, &e);
    CHECK(r && strstr(fab_emu_last_message(), "shared-memory race (") != nullptr &&
              strstr(fab_emu_last_message(), "ld.shared (read)") != nullptr &&
              strstr(fab_emu_last_message(), "st.shared (write)") != nullptr,
          "missing __syncwarp between st.shared and ld.shared: %s", fab_emu_last_message());
    /* all lanes read a word, then one lane writes it: caught whichever lane it is.
     * After the __syncwarp lane 31 (which completed it) runs on, then lanes 0..30:
     * lane 31 writes before the others read (read after write); lane 30 is the last
     * reader, which a record of one reader per warp would miss */
    for (int writer : {0, 17, 30, 31}) {
        r = flags_race([&] { return launch(k_read_all_then_write<true>, dim3(1), dim3(32), 16, writer, io); }, &e);
        CHECK(!r && e == cudaSuccess, "writer %d: reads, __syncwarp, write flagged: %s", writer,
              fab_emu_last_message());
        r = flags_race([&] { return launch(k_read_all_then_write<false>, dim3(1), dim3(32), 16, writer, io); }, &e);
        CHECK(r && strstr(fab_emu_last_message(), "shared-memory race (") != nullptr,
              "writer %d: write after the other lanes' reads, no __syncwarp, not caught: %s", writer,
              fab_emu_last_message());
    }
    fab_emu_set_racecheck(1);

    const int n = 64;
    float4 *fi = device_alloc<float4>(2 * n), *fo = device_alloc<float4>(2 * n);
    std::vector<float> hf(8 * n);
    for (int i = 0; i < 8 * n; ++i) hf[i] = (float)i;
    cudaMemcpy(fi, hf.data(), hf.size() * 4, cudaMemcpyHostToDevice);
    r = flags_race([&] { return launch(k_cp_async_stage<true>, dim3(2), dim3(n), n * 16, fi, fo); }, &e);
    CHECK(!r && e == cudaSuccess, "correct cp.async staging flagged: %s", fab_emu_last_message());
    r = flags_race([&] { return launch(k_cp_async_stage<false>, dim3(2), dim3(n), n * 16, fi, fo); }, &e);
    CHECK(r, "missing cp.async wait not caught");

    /* The attention kernel's cp.async double buffer read with ldmatrix, without the
     * trailing __syncthreads: the shared-memory race detector reports the write after
     * read, with and without FAB_EMU_RACECHECK; the correct kernel is silent and right. */
    {
        const int ntiles = 5, nblk = 2;
        std::vector<uint32_t> hs((size_t)nblk * ntiles * 128 * 4);
        EmuRng rng(7);
        for (auto &v : hs) v = (uint32_t)rng.next();
        uint4 *ps = device_alloc<uint4>(hs.size() / 4);
        uint32_t *po = device_alloc<uint32_t>(nblk * 128);
        cudaMemcpy(ps, hs.data(), hs.size() * 4, cudaMemcpyHostToDevice);
        std::vector<uint32_t> want(nblk * 128);
        for (int b = 0; b < nblk; ++b)
            for (int t = 0; t < 128; ++t) {
                uint32_t acc = 0;
                int lane = t % 32;
                for (int it = 0; it < ntiles; ++it)
                    for (int q = 0; q < 4; ++q) {
                        uint32_t r[4];
                        /* ldmatrix.x4: register m = matrix m (rows 8m..8m+7 of the 32), row lane/4, word lane%4 */
                        for (int m = 0; m < 4; ++m)
                            r[m] = hs[((size_t)(b * ntiles + it) * 128 + q * 32 + m * 8 + lane / 4) * 4 + lane % 4];
                        acc = acc * 31u + (r[0] ^ (r[1] << 1) ^ (r[2] << 2) ^ (r[3] << 3));
                    }
                want[b * 128 + t] = acc;
            }
        for (int rc = 1; rc >= 0; --rc) {
            fab_emu_set_racecheck(rc);
            r = flags_race([&] { return launch(k_pipeline_ldmatrix<true>, dim3(nblk), dim3(128), 256 * 16, ps, ntiles, po); },
                           &e);
            CHECK(!r && e == cudaSuccess, "racecheck=%d: correct cp.async/ldmatrix pipeline flagged: %s", rc,
                  fab_emu_last_message());
            std::vector<uint32_t> got(nblk * 128);
            cudaMemcpy(got.data(), po, got.size() * 4, cudaMemcpyDeviceToHost);
            int wrong = 0;
            for (int i = 0; i < nblk * 128; ++i) wrong += got[i] != want[i];
            CHECK(wrong == 0, "racecheck=%d: pipeline result wrong for %d threads", rc, wrong);
            r = flags_race([&] { return launch(k_pipeline_ldmatrix<false>, dim3(nblk), dim3(128), 256 * 16, ps, ntiles, po); },
                           &e);
            CHECK(r && e == cudaErrorLaunchFailure, "racecheck=%d: missing trailing __syncthreads in the pipeline not caught",
                  rc);
            CHECK(strstr(fab_emu_last_message(), "shared-memory race (") != nullptr &&
                      strstr(fab_emu_last_message(), "cp.async") != nullptr &&
                      strstr(fab_emu_last_message(), "ldmatrix") != nullptr,
                  "racecheck=%d: message: %s", rc, fab_emu_last_message());
        }
        /* With the detector off, the schedule comparison alone still sees it: the greedy
         * warp order lets warp 0 refill the stage before warp 1 read it. */
        fab_emu_set_racecheck(1);
        int old = fab_emu_set_smemcheck(0);
        r = flags_race([&] { return launch(k_pipeline_ldmatrix<false>, dim3(nblk), dim3(128), 256 * 16, ps, ntiles, po); },
                       &e);
        CHECK(r && strstr(fab_emu_last_message(), "race check") != nullptr,
              "schedule comparison missed the pipeline race: %s", fab_emu_last_message());
        fab_emu_set_smemcheck(old);
        fab_emu_set_racecheck(0);

        /* named barriers order only their participants */
        r = flags_race([&] { return launch(k_named_barrier_ldmatrix<false>, dim3(1), dim3(128), 32 * 16, ps, po); }, &e);
        CHECK(!r && e == cudaSuccess, "named barrier: correct kernel flagged: %s", fab_emu_last_message());
        r = flags_race([&] { return launch(k_named_barrier_ldmatrix<true>, dim3(1), dim3(128), 32 * 16, ps, po); }, &e);
        CHECK(r && strstr(fab_emu_last_message(), "read after write") != nullptr,
              "named barrier: read by a non-participant not caught: %s", fab_emu_last_message());
        cudaFree(ps);
        cudaFree(po);
        fab_emu_set_racecheck(1);
    }

    /* Order-dependent float atomics are not reported, and the words they add to keep
     * the forward schedule's sum; a plain-store race beside them still is. */
    {
        float *sum = device_alloc<float>(2);
        int *out = device_alloc<int>(4);
        cudaMemset(sum, 0, 8);
        r = flags_race([&] { return launch(k_float_atomic_sum<false>, dim3(3), dim3(32), 0, sum, out); }, &e);
        CHECK(!r && e == cudaSuccess, "order-dependent float atomicAdd flagged: %s", fab_emu_last_message());
        float hsum[2] = {-1, -1};
        cudaMemcpy(hsum, sum, 8, cudaMemcpyDeviceToHost);
        CHECK(hsum[0] == 0.0f && hsum[1] == 0.0f, "atomic sum %g (want the forward order's 0), neighbour %g", hsum[0],
              hsum[1]);
        r = flags_race([&] { return launch(k_float_atomic_sum<true>, dim3(3), dim3(32), 0, sum, out); }, &e);
        CHECK(r && e == cudaErrorLaunchFailure && strstr(fab_emu_last_message(), "race check") != nullptr,
              "store race beside float atomics not caught: %s", fab_emu_last_message());
        cudaFree(sum);
        cudaFree(out);
    }

    /* FAB_EMU_RACECHECK off: the buggy kernel runs without complaint (one schedule only). */
    fab_emu_set_racecheck(0);
    r = flags_race([&] { return launch(k_transpose_tile<false>, dim3(2), dim3(32, 32), 0, din, dout); }, &e);
    CHECK(!r && e == cudaSuccess, "race check off still reported");
    cudaFree(din); cudaFree(dout); cudaFree(ii); cudaFree(io); cudaFree(fi); cudaFree(fo);
    return emu_test_finish();
}
