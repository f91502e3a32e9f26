/*
 * test_wgmma.cu -- wgmma.mma_async against the PTX ISA's shared-memory layouts and
 * register fragments.
 *
 * The host lays random A (128x32, two warpgroups of 64 rows) and B (32xN) out in
 * shared-memory images for each canonical layout -- interleaved core matrices, and
 * the 32/64/128-byte swizzles, K-major and MN-major -- with its own placement
 * function below (written from the ISA's description: a swizzle XORs the 16-byte
 * chunk index within a 128-byte line with the line's index modulo the swizzle
 * width), runs two k16 steps, and compares D with A*B (+ C) in double. One case,
 * emulator only, starts an MN-major B inside a swizzle row (see below).
 *
 * Built twice: under the emulator (ctest label emu), and by nvcc for sm_90a when
 * CUDA is on (label gpu), where the same cases check the emulator's reading of the
 * ISA against the hardware.  The misuse cases (reading accumulators early, no
 * wait_group, no wgmma.fence, no fence.proxy.async, a misaligned swizzle, half a warpgroup issuing) run under the
 * emulator only.
 */
#include <math.h>

#include <vector>

#include "emu_test.h"
#include "kernels/wgmma_kernels.cuh"

enum { INTER = FAB_WGMMA_INTERLEAVE, SW128 = FAB_WGMMA_SWIZZLE_128B, SW64 = FAB_WGMMA_SWIZZLE_64B, SW32 = FAB_WGMMA_SWIZZLE_32B };
static const char *layout_name(int l)
{
    return l == INTER ? "interleave" : l == SW128 ? "128B" : l == SW64 ? "64B" : "32B";
}
static int row_bytes(int l) { return l == INTER ? 16 : l == SW128 ? 128 : l == SW64 ? 64 : 32; }

/* An operand's image: mn rows along M or N, K = 32. */
struct Image {
    int layout;
    bool mn_major;
    int mn;
    unsigned lbo, sbo, step[2], bytes;
    /* byte offset of element (i, k) */
    size_t at(int i, int k) const
    {
        if (layout == INTER) {
            if (!mn_major) /* core matrices 8 rows x 16 bytes; row groups adjacent, then k groups */
                return ((size_t)(k / 8) * (mn / 8) + i / 8) * 128 + (i % 8) * 16 + (k % 8) * 2;
            /* MN-major: 8 k-rows of 8 MN elements; k groups adjacent, then MN groups */
            return ((size_t)(i / 8) * 4 + k / 8) * 128 + (k % 8) * 16 + (i % 8) * 2;
        }
        const int rb = row_bytes(layout), per_row = rb / 2; /* elements per swizzle row */
        int line_row, elem;                                  /* the 16-bit element's row in its atom, and column */
        size_t atom;
        if (!mn_major) { /* rows are M/N, a row holds per_row k values; atoms along K */
            atom = (size_t)(k / per_row) * mn * rb + (size_t)(i / 8) * 8 * rb;
            line_row = i % 8;
            elem = k % per_row;
        } else { /* rows are k, a row holds per_row M/N values; 8-row groups along K, atoms along MN */
            atom = (size_t)(i / per_row) * 4 * 8 * rb + (size_t)(k / 8) * 8 * rb;
            line_row = k % 8;
            elem = i % per_row;
        }
        size_t in_atom = (size_t)line_row * rb + elem * 2;
        size_t line = in_atom / 128, chunk = (in_atom % 128) / 16;
        size_t units = (size_t)rb / 16; /* the swizzle's width in 16-byte chunks */
        chunk ^= line % units;
        return atom + line * 128 + chunk * 16 + in_atom % 16;
    }
};

static Image make_image(int layout, bool mn_major, int mn)
{
    Image im;
    im.layout = layout;
    im.mn_major = mn_major;
    im.mn = mn;
    const unsigned rb = (unsigned)row_bytes(layout);
    if (layout == INTER) {
        im.sbo = mn_major ? 512 : 128;
        im.lbo = mn_major ? 128 : (unsigned)(mn / 8) * 128;
        im.step[0] = 0;
        im.step[1] = 2 * im.lbo;
    } else if (!mn_major) {
        im.sbo = 8 * rb;
        im.lbo = 16; /* unused by a swizzled K-major operand */
        for (int s = 0; s < 2; ++s) {
            unsigned k0 = 16u * (unsigned)s, per_row = rb / 2;
            im.step[s] = (k0 / per_row) * (unsigned)mn * rb + (k0 % per_row) * 2;
        }
    } else {
        im.sbo = 8 * rb;
        im.lbo = 32 * rb;
        im.step[0] = 0;
        im.step[1] = 2 * 8 * rb;
    }
    size_t end = 0;
    for (int i = 0; i < mn; ++i)
        for (int k = 0; k < 32; ++k)
            if (im.at(i, k) + 2 > end) end = im.at(i, k) + 2;
    im.bytes = (unsigned)((end + 1023) / 1024 * 1024);
    return im;
}

static uint16_t to_bits(double x, bool f16, double *q)
{
    float f = (float)x;
    uint32_t u;
    memcpy(&u, &f, 4);
    if (!f16) { /* bf16, round to nearest even */
        uint16_t b = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        uint32_t back = (uint32_t)b << 16;
        memcpy(&f, &back, 4);
        *q = f;
        return b;
    }
    /* f16 of a value in [-2, 2] on a 2^-10 grid: exact (normal, 11 significant bits) */
    int m = (int)nearbyint(x * 1024.0);
    *q = m / 1024.0;
    if (m == 0) return 0;
    uint16_t sign = m < 0 ? 0x8000u : 0;
    unsigned a = (unsigned)(m < 0 ? -m : m);
    int e = 0;
    while ((a >> (e + 1)) != 0) ++e; /* a in [2^e, 2^(e+1)): value in [2^(e-10), ...) */
    unsigned mant = e <= 10 ? (a << (10 - e)) & 0x3ffu : (a >> (e - 10)) & 0x3ffu;
    return (uint16_t)(sign | (unsigned)(e + 5) << 10 | mant);
}

struct Result {
    double err;
    bool launched;
};

static int g_seed = 1;

template <int N, int TA, int TB, int F16, int RS>
static Result run_case(int la, int lb, int accumulate_first, int read_early = 0, int skip_wait = 0,
                       int misalign_b = 0, int half_group = 0, int no_fence = 0, int st_shared = 0, int b_col0 = 0)
{
    /* b_col0 (an MN-major swizzled B only): B is columns b_col0.. of a wider image, the
     * descriptor starting 2 b_col0 bytes into the swizzle row */
    Image ia = make_image(la, TA != 0, 64), ib = make_image(lb, TB != 0, N + b_col0);
    EmuRng rng((unsigned long long)g_seed++);
    std::vector<double> A(128 * 32), B(32 * N), C(128 * N);
    std::vector<uint16_t> a_rows(128 * 32);
    std::vector<unsigned char> a_img(2 * ia.bytes, 0), b_img(ib.bytes, 0);
    for (int r = 0; r < 128; ++r)
        for (int k = 0; k < 32; ++k) {
            uint16_t bits = to_bits(rng.uniform(-2, 2), F16 != 0, &A[r * 32 + k]);
            a_rows[r * 32 + k] = bits;
            memcpy(&a_img[(r / 64) * ia.bytes + ia.at(r % 64, k)], &bits, 2);
        }
    for (int k = 0; k < 32; ++k)
        for (int n = 0; n < N; ++n) {
            uint16_t bits = to_bits(rng.uniform(-2, 2), F16 != 0, &B[k * N + n]);
            memcpy(&b_img[ib.at(b_col0 + n, k)], &bits, 2);
        }
    std::vector<float> cin(128 * N), dout(128 * N, NAN);
    for (int i = 0; i < 128 * N; ++i) cin[i] = (float)(C[i] = rng.uniform(-1, 1));

    WgmmaCase c;
    memset(&c, 0, sizeof c);
    c.a_bytes = ia.bytes;
    c.b_bytes = ib.bytes;
    c.layout_a = la;
    c.layout_b = lb;
    c.lbo_a = ia.lbo;
    c.sbo_a = ia.sbo;
    c.lbo_b = ib.lbo;
    c.sbo_b = ib.sbo;
    for (int s = 0; s < 2; ++s) {
        c.a_step[s] = ia.step[s];
        c.b_step[s] = ib.step[s] + (misalign_b ? 128u : 0u) + 2u * (unsigned)b_col0;
    }
    c.accumulate_first = accumulate_first;
    c.read_early = read_early;
    c.skip_wait = skip_wait;
    c.half_group = half_group;
    c.no_fence = no_fence;
    c.st_shared = st_shared;

    unsigned char *d_a = device_alloc<unsigned char>(a_img.size()), *d_b = device_alloc<unsigned char>(b_img.size());
    uint16_t *d_rows = device_alloc<uint16_t>(a_rows.size());
    float *d_c = device_alloc<float>(cin.size()), *d_d = device_alloc<float>(dout.size());
    cudaMemcpy(d_a, a_img.data(), a_img.size(), cudaMemcpyHostToDevice);
    cudaMemcpy(d_b, b_img.data(), b_img.size(), cudaMemcpyHostToDevice);
    cudaMemcpy(d_rows, a_rows.data(), a_rows.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(d_c, cin.data(), cin.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_d, dout.data(), dout.size() * 4, cudaMemcpyHostToDevice);
    size_t smem = 2 * (size_t)ia.bytes + ib.bytes + 1024;
    cudaFuncSetAttribute(k_wgmma<N, TA, TB, F16, RS>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    cudaError_t e = launch(k_wgmma<N, TA, TB, F16, RS>, dim3(1), dim3(256), smem, c, d_a, d_b, d_rows, d_c, d_d);
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    Result res = {INFINITY, e == cudaSuccess};
    if (e == cudaSuccess) {
        cudaMemcpy(dout.data(), d_d, dout.size() * 4, cudaMemcpyDeviceToHost);
        double worst = 0;
        for (int r = 0; r < 128; ++r)
            for (int n = 0; n < N; ++n) {
                double s = accumulate_first ? C[r * N + n] : 0, mag = fabs(s);
                for (int k = 0; k < 32; ++k) {
                    s += A[r * 32 + k] * B[k * N + n];
                    mag += fabs(A[r * 32 + k] * B[k * N + n]);
                }
                double err = fabs((double)dout[r * N + n] - s) / (mag + 1e-30);
                if (!(err <= worst)) worst = err; /* NaN (never written) counts as infinite */
            }
        res.err = worst;
    } else {
        cudaGetLastError();
    }
    cudaFree(d_a);
    cudaFree(d_b);
    cudaFree(d_rows);
    cudaFree(d_c);
    cudaFree(d_d);
    return res;
}

static const double kTol = 1e-5; /* f32 accumulation of 32 products, relative to sum |a*b| */

template <int N, int TA, int TB, int F16, int RS>
static void check_case(int la, int lb, int acc)
{
    Result r = run_case<N, TA, TB, F16, RS>(la, lb, acc);
    CHECK(r.launched && r.err <= kTol, "m64n%dk16 %s %s: A %s%s, B %s%s, accumulate %d: %s, max rel err %.3g", N,
          F16 ? "f16" : "bf16", RS ? "rs" : "ss", RS ? "registers" : layout_name(la),
          RS ? "" : (TA ? " MN-major" : " K-major"), layout_name(lb), TB ? " MN-major" : " K-major", acc,
          r.launched ? "ran" : cudaGetErrorString(cudaGetLastError()), r.err);
}

/* Every A layout x every B layout at N = 64, both majors. */
template <int TA, int TB>
static void all_layouts_n64()
{
    const int layouts[4] = {INTER, SW32, SW64, SW128};
    for (int la : layouts)
        for (int lb : layouts) check_case<64, TA, TB, 0, 0>(la, lb, (la + lb) & 1);
}

/* Every B layout for the other shapes, types and A from registers. */
template <int N, int TB>
static void b_layouts()
{
    const int layouts[4] = {INTER, SW32, SW64, SW128};
    for (int lb : layouts) {
        check_case<N, 0, TB, 0, 0>(SW128, lb, 1);
        check_case<N, 1, TB, 1, 0>(INTER, lb, 0);
        check_case<N, 0, TB, 0, 1>(INTER, lb, 1);
        check_case<N, 0, TB, 1, 1>(INTER, lb, 0);
    }
}

#ifdef FAB_EMULATE_CUDA
static void check_misuse()
{
    int old = fab_emu_set_error_mode(1);
    /* accumulators read before wait_group: the emulator computes at the wait, so they are stale */
    Result early = run_case<64, 0, 0, 0, 0>(SW128, SW128, 1, 1);
    CHECK(early.launched && early.err > 1e-3, "reading D before wait_group went unnoticed (err %.3g)", early.err);
    Result nowait = run_case<64, 0, 0, 0, 0>(SW128, SW128, 1, 0, 1);
    CHECK(!nowait.launched && strstr(fab_emu_last_message(), "not retired by wgmma.wait_group"),
          "no wait_group: %s", fab_emu_last_message());
    Result mis = run_case<64, 0, 0, 0, 0>(SW128, SW128, 1, 0, 0, 1);
    CHECK(!mis.launched && strstr(fab_emu_last_message(), "swizzle needs its pattern to start"),
          "misaligned 128-byte swizzle: %s", fab_emu_last_message());
    Result half = run_case<64, 0, 0, 0, 0>(SW128, SW128, 1, 0, 0, 0, 1);
    CHECK(!half.launched && strstr(fab_emu_last_message(), "all 4 warps"), "half a warpgroup issuing: %s",
          fab_emu_last_message());
    Result unfenced = run_case<64, 0, 0, 0, 0>(SW128, SW128, 1, 0, 0, 0, 0, 1);
    CHECK(!unfenced.launched && strstr(fab_emu_last_message(), "without a wgmma.fence"), "no wgmma.fence: %s",
          fab_emu_last_message());
    /* images written with fab__st_shared: fenced, fine; unfenced, the race detector says so */
    Result fenced = run_case<64, 0, 0, 0, 0>(SW128, SW64, 1, 0, 0, 0, 0, 0, 1);
    CHECK(fenced.launched && fenced.err <= kTol, "st.shared images with fence.proxy.async: %s, err %.3g",
          fab_emu_last_message(), fenced.err);
    Result nofence = run_case<64, 0, 0, 0, 0>(SW128, SW64, 1, 0, 0, 0, 0, 0, 2);
    CHECK(!nofence.launched && strstr(fab_emu_last_message(), "missing fence.proxy.async"),
          "st.shared images without fence.proxy.async: %s", fab_emu_last_message());
    fab_emu_set_error_mode(old);
    struct fab_emu_stats st;
    fab_emu_get_stats(&st);
    CHECK(st.wgmma > 0, "wgmma count %llu", st.wgmma);
}
#endif

int main()
{
    if (int skip = emu_test_skip_unless_sm90("wgmma"))
        return skip;
    all_layouts_n64<0, 0>();
    all_layouts_n64<0, 1>();
    all_layouts_n64<1, 0>();
    all_layouts_n64<1, 1>();
    b_layouts<16, 0>();
    b_layouts<16, 1>();
    b_layouts<256, 0>();
    b_layouts<256, 1>();
    check_case<128, 0, 1, 0, 0>(SW128, SW128, 1);
    check_case<96, 1, 0, 0, 0>(SW64, SW32, 0);
    /* The Hopper attention backward's dQ at head dim 64: dS^T MN-major (128B) times
     * 32 head dims of K, MN-major in one 64-byte-swizzled box (one atom wide). */
    check_case<32, 1, 1, 0, 0>(SW128, SW64, 1);
#ifdef FAB_EMULATE_CUDA
    /* B MN-major, 128-byte swizzle, N = 32 starting 64 bytes into the swizzle row: no
     * canonical layout, and no kernel uses it (the backward above used to), so only
     * the emulator's address arithmetic is checked (the swizzle XORs address bits, so
     * the offset picks units 4..7), not the hardware's reading of it. */
    {
        Result r = run_case<32, 1, 1, 0, 0>(SW128, SW128, 1, 0, 0, 0, 0, 0, 0, 32);
        CHECK(r.launched && r.err <= kTol, "m64n32k16 bf16 ss, B MN-major 128B starting 64 bytes into the row: %s, "
              "max rel err %.3g", r.launched ? "ran" : cudaGetErrorString(cudaGetLastError()), r.err);
    }
    check_misuse();
#endif
    return emu_test_finish();
}
