/*
 * test_gemm.cu -- the tiled mma.sync + ldmatrix + cp.async GEMM against a float64
 * reference (128x96x256: an N edge that needs zero-fill), under the race check, with
 * the planted-race variant caught; then the emulated rates (printed, see docs/EMULATOR.md).
 */
#include <math.h>

#include <chrono>
#include <vector>

#include "emu_test.h"
#include "kernels/gemm_kernels.cuh"

struct Gemm {
    int M, N, K;
    std::vector<__nv_bfloat16> a, b;
    __nv_bfloat16 *da = nullptr, *db = nullptr;
    float *dc = nullptr;
    Gemm(int m, int n, int k, unsigned long long seed) : M(m), N(n), K(k), a((size_t)m * k), b((size_t)k * n)
    {
        EmuRng rng(seed);
        for (auto &x : a) x = __float2bfloat16((float)rng.uniform(-1, 1));
        for (auto &x : b) x = __float2bfloat16((float)rng.uniform(-1, 1));
        da = device_alloc<__nv_bfloat16>(a.size());
        db = device_alloc<__nv_bfloat16>(b.size());
        dc = device_alloc<float>((size_t)m * n); /* fresh device memory is NaN-poisoned */
        cudaMemcpy(da, a.data(), a.size() * 2, cudaMemcpyHostToDevice);
        cudaMemcpy(db, b.data(), b.size() * 2, cudaMemcpyHostToDevice);
    }
    ~Gemm()
    {
        cudaFree(da);
        cudaFree(db);
        cudaFree(dc);
    }
    template <bool Race>
    cudaError_t run()
    {
        dim3 grid((N + gemm::BN - 1) / gemm::BN, (M + gemm::BM - 1) / gemm::BM);
        return launch(k_gemm_bf16<Race>, grid, dim3(128), gemm::SMEM_BYTES, (const __nv_bfloat16 *)da,
                      (const __nv_bfloat16 *)db, dc, M, N, K);
    }
    /* per element |c - ref| <= 1e-5 * sum|a*b|, every element written; returns failures */
    int check(double *rel_norm)
    {
        std::vector<float> c((size_t)M * N);
        cudaMemcpy(c.data(), dc, c.size() * 4, cudaMemcpyDeviceToHost);
        int bad = 0;
        double num = 0, den = 0;
        for (int i = 0; i < M; ++i)
            for (int j = 0; j < N; ++j) {
                double ref = 0, mag = 0;
                for (int k = 0; k < K; ++k) {
                    double p = (double)__bfloat162float(a[(size_t)i * K + k]) * __bfloat162float(b[(size_t)k * N + j]);
                    ref += p;
                    mag += fabs(p);
                }
                double got = c[(size_t)i * N + j];
                num += (got - ref) * (got - ref);
                den += ref * ref;
                bad += !(fabs(got - ref) <= 1e-5 * mag + 1e-30); /* NaN (unwritten) fails too */
            }
        *rel_norm = sqrt(num / den);
        return bad;
    }
};

int main()
{
    unsigned long long seed = 1234567;
    printf("seed %llu\n", seed);
    fab_emu_set_error_mode(1);

    {
        Gemm g(128, 96, 256, seed);
        fab_emu_set_racecheck(1);
        cudaError_t e = g.run<false>();
        CHECK(e == cudaSuccess, "GEMM under the race check: %s %s", cudaGetErrorName(e), fab_emu_last_message());
        double rel;
        int bad = g.check(&rel);
        CHECK(bad == 0, "GEMM 128x96x256: %d elements off, ||out-ref||/||ref|| = %.3g", bad, rel);
        printf("gemm 128x96x256 bf16: ||out-ref||/||ref|| = %.3g\n", rel);
        unsigned long before = fab_emu_race_reports();
        e = g.run<true>();
        cudaGetLastError();
        CHECK(e == cudaErrorLaunchFailure && fab_emu_race_reports() == before + 1,
              "planted missing __syncthreads in the GEMM not caught (%s)", cudaGetErrorName(e));
        fab_emu_set_racecheck(0);
    }
    {
        /* odd sizes: M and N edges inside a tile */
        Gemm g(72, 40, 64, seed + 1);
        CHECK_CUDA(g.run<false>());
        double rel;
        int bad = g.check(&rel);
        CHECK(bad == 0, "GEMM 72x40x64: %d elements off (rel %.3g)", bad, rel);
    }
    {
        /* speed: 256^3 GEMM with the default worker count, and a pure mma.sync probe */
        Gemm g(256, 256, 256, seed + 2);
        fab_emu_stats s0, s1;
        fab_emu_get_stats(&s0);
        auto t0 = std::chrono::steady_clock::now();
        CHECK_CUDA(g.run<false>());
        auto t1 = std::chrono::steady_clock::now();
        fab_emu_get_stats(&s1);
        double ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
        double rel;
        CHECK(g.check(&rel) == 0, "GEMM 256^3 wrong (rel %.3g)", rel);
        int threads = fab_emu_set_threads(1);
        fab_emu_set_threads(threads);
        printf("gemm 256x256x256 bf16: %.1f ms on %d worker thread(s); %llu mma.sync, %llu ldmatrix, %llu cp.async\n",
               ms, threads, s1.mma - s0.mma, s1.ldmatrix - s0.ldmatrix, s1.cp_async - s0.cp_async);

        float *out = device_alloc<float>(8 * 128);
        const int iters = 2000;
        fab_emu_get_stats(&s0);
        t0 = std::chrono::steady_clock::now();
        CHECK_CUDA(launch(k_mma_loop, dim3(8), dim3(128), 0, out, iters));
        t1 = std::chrono::steady_clock::now();
        fab_emu_get_stats(&s1);
        double sec = std::chrono::duration<double>(t1 - t0).count();
        printf("mma.sync probe: %llu warp-level mma.sync in %.3f s = %.0f mma.sync/s (%.2f emulated GFLOP/s) on %d "
               "worker thread(s)\n",
               s1.mma - s0.mma, sec, (double)(s1.mma - s0.mma) / sec, (double)(s1.mma - s0.mma) * 4096 / sec / 1e9,
               threads);
        cudaFree(out);
    }
    return emu_test_finish();
}
