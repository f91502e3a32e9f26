/*
 * test_ptx.cu -- each PTX wrapper against the PTX ISA's fragment layout tables.
 *
 * mma: random A, B, C are scattered into per-lane registers with the element tables of
 * the PTX ISA (written here element by element, independently of the emulator's code),
 * one mma runs, and D gathered through the C/D table is compared with A*B + C in double.
 * ldmatrix/stmatrix/movmatrix: each lane's registers are checked against the documented
 * mapping (row = lane/4, columns 2*(lane%4) + {0,1}; transposed with .trans).
 * cp.async: sizes 4/8/16, .ca/.cg, zero-fill, and wait_group semantics.
 */
#include <math.h>

#include <vector>

#include "emu_test.h"
#include "fab_emu/half_bits.h"
#include "kernels/ptx_kernels.cuh"

enum Kind { BF16_K16, F16_K16, F16_K8, TF32_K8 };

/* Round a double to the operand type and return (value, bits). */
static double quantize(Kind k, double x, uint32_t *bits)
{
    if (k == BF16_K16) {
        uint16_t b = fab_emu::f32_to_bf16_rn((float)x);
        *bits = b;
        return fab_emu::bf16_to_f32(b);
    }
    if (k == TF32_K8) {
        uint32_t u = fab__cvt_rna_tf32((float)x);
        *bits = u;
        return fab_emu::bits_f32(u);
    }
    uint16_t h = fab_emu::f32_to_f16_rn((float)x);
    *bits = h;
    return fab_emu::f16_to_f32(h);
}

/* PTX ISA tables: (row, col) of A element a_i / B element b_i held by a lane. */
static void a_pos(Kind k, int lane, int i, int *row, int *col)
{
    int g = lane >> 2, t = lane % 4;
    if (k == BF16_K16 || k == F16_K16) { /* a0..a7 */
        *row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
        *col = i < 4 ? t * 2 + (i & 1) : t * 2 + (i & 1) + 8;
    } else if (k == F16_K8) { /* a0..a3 */
        *row = i < 2 ? g : g + 8;
        *col = t * 2 + (i & 1);
    } else { /* tf32 a0..a3 */
        *row = (i == 0 || i == 2) ? g : g + 8;
        *col = i < 2 ? t : t + 4;
    }
}
static void b_pos(Kind k, int lane, int i, int *row, int *col)
{
    int g = lane >> 2, t = lane % 4;
    if (k == BF16_K16 || k == F16_K16) { /* b0..b3 */
        *row = i < 2 ? t * 2 + (i & 1) : t * 2 + (i & 1) + 8;
    } else if (k == F16_K8) { /* b0..b1 */
        *row = t * 2 + i;
    } else { /* tf32 b0..b1 */
        *row = i == 0 ? t : t + 4;
    }
    *col = g;
}
static void c_pos(int lane, int i, int *row, int *col)
{
    int g = lane >> 2, t = lane % 4;
    *row = i < 2 ? g : g + 8;
    *col = t * 2 + (i & 1);
}

static void test_mma(Kind kind, const char *name, unsigned long long seed)
{
    const int K = (kind == BF16_K16 || kind == F16_K16) ? 16 : 8;
    const int na = kind == F16_K8 ? 4 : (kind == TF32_K8 ? 4 : 8); /* elements of A per lane */
    const int nb = kind == F16_K8 ? 2 : (kind == TF32_K8 ? 2 : 4);
    const bool packed = kind != TF32_K8; /* two 16-bit elements per register */
    EmuRng rng(seed);
    double A[16][16], B[16][8], C[16][8];
    uint32_t Abits[16][16], Bbits[16][8];
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < K; ++c) A[r][c] = quantize(kind, rng.uniform(-2, 2), &Abits[r][c]);
    for (int r = 0; r < K; ++r)
        for (int c = 0; c < 8; ++c) B[r][c] = quantize(kind, rng.uniform(-2, 2), &Bbits[r][c]);
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 8; ++c) C[r][c] = (float)rng.uniform(-4, 4);

    std::vector<uint32_t> ha(32 * 4, 0), hb(32 * 2, 0);
    std::vector<float> hc(32 * 4), hd(32 * 4);
    for (int lane = 0; lane < 32; ++lane) {
        for (int i = 0; i < na; ++i) {
            int r, c;
            a_pos(kind, lane, i, &r, &c);
            if (packed)
                ha[4 * lane + i / 2] |= Abits[r][c] << (16 * (i & 1));
            else
                ha[4 * lane + i] = Abits[r][c] | (uint32_t)(rng.next() & 0x1fff); /* low bits ignored */
        }
        for (int i = 0; i < nb; ++i) {
            int r, c;
            b_pos(kind, lane, i, &r, &c);
            if (packed)
                hb[2 * lane + i / 2] |= Bbits[r][c] << (16 * (i & 1));
            else
                hb[2 * lane + i] = Bbits[r][c] | (uint32_t)(rng.next() & 0x1fff);
        }
        for (int i = 0; i < 4; ++i) {
            int r, c;
            c_pos(lane, i, &r, &c);
            hc[4 * lane + i] = (float)C[r][c];
        }
    }
    uint32_t *da = device_alloc<uint32_t>(128), *db = device_alloc<uint32_t>(64);
    float *dc = device_alloc<float>(128), *dd = device_alloc<float>(128);
    cudaMemcpy(da, ha.data(), 512, cudaMemcpyHostToDevice);
    cudaMemcpy(db, hb.data(), 256, cudaMemcpyHostToDevice);
    cudaMemcpy(dc, hc.data(), 512, cudaMemcpyHostToDevice);
    void (*k)(const uint32_t *, const uint32_t *, const float *, float *) =
        kind == BF16_K16 ? k_mma_bf16_k16 : kind == F16_K16 ? k_mma_f16_k16 : kind == F16_K8 ? k_mma_f16_k8 : k_mma_tf32_k8;
    CHECK_CUDA(launch(k, dim3(1), dim3(32), 0, da, db, dc, dd));
    cudaMemcpy(hd.data(), dd, 512, cudaMemcpyDeviceToHost);
    int bad = 0;
    double worst = 0;
    for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 4; ++i) {
            int r, c;
            c_pos(lane, i, &r, &c);
            double ref = C[r][c], mag = fabs(C[r][c]);
            for (int kk = 0; kk < K; ++kk) {
                ref += A[r][kk] * B[kk][c];
                mag += fabs(A[r][kk] * B[kk][c]);
            }
            double err = fabs(hd[4 * lane + i] - ref);
            worst = std::max(worst, err / mag);
            bad += err > 1e-6 * mag;
        }
    CHECK(bad == 0, "%s: %d of 128 D elements off (worst relative error %.3g)", name, bad, worst);
    cudaFree(da);
    cudaFree(db);
    cudaFree(dc);
    cudaFree(dd);
}

static void test_ldmatrix()
{
    /* M[m][r][c] = 1000 + 64m + 8r + c */
    std::vector<uint16_t> h(256);
    for (int i = 0; i < 256; ++i) h[i] = (uint16_t)(1000 + i);
    auto M = [&](int m, int r, int c) { return (uint32_t)h[64 * m + 8 * r + c]; };
    uint16_t *dsrc = device_alloc<uint16_t>(256), *dstored = device_alloc<uint16_t>(512);
    uint32_t *dout = device_alloc<uint32_t>(9 * 128);
    cudaMemcpy(dsrc, h.data(), 512, cudaMemcpyHostToDevice);
    CHECK_CUDA(launch(k_ldmatrix, dim3(1), dim3(32), 0, dsrc, dout, dstored));
    std::vector<uint32_t> o(9 * 128);
    std::vector<uint16_t> st(512);
    cudaMemcpy(o.data(), dout, o.size() * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(st.data(), dstored, 1024, cudaMemcpyDeviceToHost);
    const int nmats[6] = {1, 2, 4, 1, 2, 4};
    const char *names[6] = {"x1", "x2", "x4", "x1.trans", "x2.trans", "x4.trans"};
    for (int v = 0; v < 6; ++v) {
        bool trans = v >= 3;
        int bad = 0;
        for (int lane = 0; lane < 32; ++lane) {
            int g = lane / 4, t = lane % 4;
            for (int m = 0; m < nmats[v]; ++m) {
                uint32_t want = trans ? (M(m, 2 * t, g) | M(m, 2 * t + 1, g) << 16)
                                      : (M(m, g, 2 * t) | M(m, g, 2 * t + 1) << 16);
                bad += o[(v * 32 + lane) * 4 + m] != want;
            }
        }
        CHECK(bad == 0, "ldmatrix.%s: %d registers wrong", names[v], bad);
    }
    int bad = 0;
    for (int lane = 0; lane < 32; ++lane) {
        int g = lane / 4, t = lane % 4;
        bad += o[(6 * 32 + lane) * 4] != (M(0, 2 * t, g) | M(0, 2 * t + 1, g) << 16);
    }
    CHECK(bad == 0, "movmatrix.trans: %d registers wrong", bad);
    bad = 0;
    for (int i = 0; i < 512; ++i) bad += st[i] != h[i % 256];
    CHECK(bad == 0, "stmatrix(.trans) round trip: %d elements wrong", bad);
    cudaFree(dsrc);
    cudaFree(dstored);
    cudaFree(dout);
}

static void test_cp_async()
{
    std::vector<unsigned char> h(1024);
    for (int i = 0; i < 1024; ++i) h[i] = (unsigned char)(i * 7 + 3);
    unsigned char *dsrc = device_alloc<unsigned char>(1024), *dout = device_alloc<unsigned char>(1024);
    int *dpend = device_alloc<int>(32);
    cudaMemcpy(dsrc, h.data(), 1024, cudaMemcpyHostToDevice);
    CHECK_CUDA(launch(k_cp_async, dim3(1), dim3(32), 0, dsrc, dout, dpend));
    std::vector<unsigned char> o(1024);
    int pend[32];
    cudaMemcpy(o.data(), dout, 1024, cudaMemcpyDeviceToHost);
    cudaMemcpy(pend, dpend, 128, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int i = 0; i < 384; ++i) bad += o[i] != h[i];
    CHECK(bad == 0, "cp.async 4/8 (.ca): %d bytes wrong", bad);
    bad = 0;
    for (int l = 0; l < 32; ++l)
        for (int i = 0; i < 16; ++i) {
            int at = 384 + 16 * l + i;
            bad += o[at] != (i < l % 17 ? h[at] : 0);
        }
    CHECK(bad == 0, "cp.async 16 .cg zero-fill: %d bytes wrong", bad);
    bad = 0;
    for (int i = 896; i < 1024; ++i) bad += o[i] != h[i];
    CHECK(bad == 0, "cp.async 16 .ca + wait_all: %d bytes wrong", bad);
    int pending = 0;
    for (int l = 0; l < 32; ++l) pending += pend[l];
    CHECK(pending == 32, "wait_group 1 retired group 0 and left group 1 in flight in %d of 32 lanes", pending);
    cudaFree(dsrc);
    cudaFree(dout);
    cudaFree(dpend);
}

/* 24 threads add 2^-k (1, 2, 4, 8) to one float4: every partial sum is exact, so
 * the result is (1, 2, 4, 8)(2 - 2^-23) whatever the order; each red counts once. */
static void test_red_v4()
{
    float *sum = device_alloc<float>(4), *out = device_alloc<float>(4 * 24);
    cudaMemset(sum, 0, 16);
    cudaMemset(out, 0, 4 * 4 * 24);
    fab_emu_stats before, after;
    fab_emu_get_stats(&before);
    CHECK_CUDA(launch(k_red_v4, dim3(1), dim3(24), 0, sum, out));
    fab_emu_get_stats(&after);
    float h[4], o[4 * 24];
    cudaMemcpy(h, sum, 16, cudaMemcpyDeviceToHost);
    cudaMemcpy(o, out, sizeof o, cudaMemcpyDeviceToHost);
    const float want = 2.0f - ldexpf(1.0f, -23);
    for (int i = 0; i < 4; i++)
        CHECK(h[i] == (float)(1 << i) * want, "red.v4.f32: element %d = %.9g, want %.9g", i, h[i], (1 << i) * want);
    int bad = 0;
    for (int k = 0; k < 24; k++)
        bad += o[4 * k] != (float)k || o[4 * k + 1] != 0 || o[4 * k + 2] != 0 || o[4 * k + 3] != -(float)k;
    CHECK(bad == 0, "red.v4.f32: %d of 24 lanes' own vectors wrong", bad);
    CHECK(after.float_atomics - before.float_atomics == 48, "red.v4.f32: counted %llu float atomics, want 48",
          after.float_atomics - before.float_atomics);
    cudaFree(sum);
    cudaFree(out);
}

/* atom/red.add.f32 on global memory flush subnormal inputs and results to zero (PTX
 * ISA; the GPU's RED.E.ADD.F32.FTZ.RN), so the emulator's float atomics there do too:
 * a subnormal added to 0 or to 1 leaves it, a normal - normal whose difference is
 * subnormal gives a zero of the difference's sign, and a normal sum is exact as ever.
 * On shared memory the same adds keep their subnormals. */
static void test_atomic_ftz()
{
    const float m = 1.17549435e-38f; /* FLT_MIN, the smallest normal */
    const float x0[12] = {0.0f, 1.5f * m, -1.5f * m, 1.0f, 0.0f, 1.5f * m, -1.5f * m, 2.0f * m, 0, 0, 0, 0};
    const float y[8] = {0.25f * m, -m, m, 0.25f * m, -0.25f * m, -m, m, m};
    const float want[12] = {0.0f,     0.0f,      -0.0f,      1.0f,    0.0f, 0.0f, -0.0f, 3.0f * m, /* +0 + -0 = +0 */
                            0.25f * m, 0.5f * m, -0.5f * m, 1.0f + 0.25f * m};                   /* shared: kept */
    float *dx = device_alloc<float>(12), *dy = device_alloc<float>(8);
    cudaMemcpy(dx, x0, sizeof x0, cudaMemcpyHostToDevice);
    cudaMemcpy(dy, y, sizeof y, cudaMemcpyHostToDevice);
    CHECK_CUDA(launch(k_atomic_ftz, dim3(1), dim3(1), 0, dx, (const float *)dy));
    float h[12];
    cudaMemcpy(h, dx, sizeof h, cudaMemcpyDeviceToHost);
    for (int i = 0; i < 12; i++)
        CHECK(memcmp(&h[i], &want[i], 4) == 0, "%s: %a + %a gave %a, want %a",
              i < 4 ? "atomicAdd(float)" : i < 8 ? "red.v4.f32" : "atomicAdd(float) on shared memory", x0[i % 8],
              y[i % 8], h[i], want[i]);
    cudaFree(dx);
    cudaFree(dy);
}

static void expect_error(cudaError_t e, const char *what, const char *needle)
{
    cudaGetLastError();
    const char *m = fab_emu_last_message();
    CHECK(e == cudaErrorLaunchFailure && strstr(m, needle), "%s: %s / %s", what, cudaGetErrorName(e), m);
}

static void test_misuse()
{
    int old = fab_emu_set_error_mode(1);
    unsigned char *src = device_alloc<unsigned char>(64);
    uint16_t *g = device_alloc<uint16_t>(64);
    float *d = device_alloc<float>(16);
    expect_error(launch(k_cp_async_misaligned, dim3(1), dim3(1), 0, (const unsigned char *)src), "misaligned cp.async",
                 "must be aligned");
    expect_error(launch(k_ldmatrix_global, dim3(1), dim3(32), 0, (const uint16_t *)g), "ldmatrix from global",
                 "global memory");
    expect_error(launch(k_mma_half_warp, dim3(1), dim3(16), 0, d), "mma with half a warp", "all 32 lanes");
    expect_error(launch(k_red_v4_at, dim3(1), dim3(1), 0, d + 2), "misaligned red.v4", "not aligned to 16");
    alignas(16) static float host[4];
    expect_error(launch(k_red_v4_at, dim3(1), dim3(1), 0, host), "red.v4 on host memory", "cudaMalloc");
    fab_emu_set_error_mode(old);
    cudaFree(src);
    cudaFree(g);
    cudaFree(d);
}

int main()
{
    fab_emu_set_racecheck(0); /* test_cp_async observes in-flight copies on purpose */
    unsigned long long seed = 20240611;
    printf("seed %llu\n", seed);
    test_mma(BF16_K16, "mma.m16n8k16.bf16", seed);
    test_mma(F16_K16, "mma.m16n8k16.f16", seed + 1);
    test_mma(F16_K8, "mma.m16n8k8.f16", seed + 2);
    test_mma(TF32_K8, "mma.m16n8k8.tf32", seed + 3);
    test_ldmatrix();
    test_cp_async();
    test_red_v4();
    test_atomic_ftz();
    test_misuse();
    return emu_test_finish();
}
