/*
 * test_comm_cast.cu (emulated CUDA builds): the NCCL transport's conversion kernel,
 * src/comm/comm_cast.cu, under the emulator. The NCCL transport itself needs a GPU;
 * its two uses of this kernel do not: f32 <-> bf16 for gradient exchange in 16 bits,
 * and AVG on bf16 as SUM then a division by nranks in place.
 *
 * Every (src, dst) pair of f32, bf16 and f16, divisors 1 and 3, out of place and in
 * place, against the host doing the same: widen, one f32 division, round to nearest
 * even. Lengths 1, 255, 257 and 4096*256 + 3: past the capped grid, so the
 * grid-stride loop takes a second lap. Inputs include ties, NaN, ±0, subnormals and
 * values that overflow f16.
 */
#include <math.h>
#include <stdarg.h>

#include <vector>

#include "../emu/tests/emu_test.h"
#include "../src/comm/comm_cast.cu"

/* what runtime.h promises, for this stand-alone build of comm_cast.cu */
extern "C" fab_status fab__fail(fab_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return status;
}

extern "C" fab_status fab__cuda_check_launch(const char *op)
{
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? FAB_OK : fab__fail(FAB_ERR_BACKEND, "%s: %s", op, cudaGetErrorString(e));
}

static const fab_dtype kDtypes[] = {FAB_DTYPE_F32, FAB_DTYPE_BF16, FAB_DTYPE_F16};

static size_t dsize(fab_dtype d) { return d == FAB_DTYPE_F32 ? 4 : 2; }

/* The host side of the check: one element of a buffer, and the bits one value
 * rounds to (the 16-bit conversions are the emulator's, which emu_test_numerics
 * checks exhaustively against the formats' definitions). */
static float host_load(const std::vector<uint8_t> &buf, size_t i, fab_dtype d)
{
    float f;
    __nv_bfloat16 b;
    __half h;
    switch (d) {
    case FAB_DTYPE_F32: memcpy(&f, &buf[4 * i], 4); return f;
    case FAB_DTYPE_BF16: memcpy(&b, &buf[2 * i], 2); return __bfloat162float(b);
    default: memcpy(&h, &buf[2 * i], 2); return __half2float(h);
    }
}

static uint32_t host_expect(float v, fab_dtype d)
{
    uint32_t bits = 0;
    __nv_bfloat16 b;
    __half h;
    switch (d) {
    case FAB_DTYPE_F32: memcpy(&bits, &v, 4); break;
    case FAB_DTYPE_BF16: b = __float2bfloat16_rn(v), memcpy(&bits, &b, 2); break;
    default: h = __float2half_rn(v), memcpy(&bits, &h, 2); break;
    }
    return bits;
}

static uint32_t bits_at(const std::vector<uint8_t> &buf, size_t i, fab_dtype d)
{
    uint32_t bits = 0;
    memcpy(&bits, &buf[dsize(d) * i], dsize(d));
    return bits;
}

static int is_nan_bits(uint32_t b, fab_dtype d)
{
    if (d == FAB_DTYPE_F32)
        return (b & 0x7f800000u) == 0x7f800000u && (b & 0x7fffffu);
    if (d == FAB_DTYPE_BF16)
        return (b & 0x7f80) == 0x7f80 && (b & 0x7f);
    return (b & 0x7c00) == 0x7c00 && (b & 0x3ff);
}

/* n values in dtype d: random magnitudes over a wide range, then the special ones */
static std::vector<uint8_t> make_input(size_t n, fab_dtype d, EmuRng &rng)
{
    static const float special[] = {0.0f, -0.0f, NAN, INFINITY, -INFINITY, 1e-40f, -3e-39f, 70000.0f, -65520.0f,
                                    65519.0f, 1.00390625f /* a bf16 tie */, 1.0f + 0x1p-11f /* an f16 tie */,
                                    3.0f, -1.0f / 3.0f};
    std::vector<uint8_t> buf(n * dsize(d));
    for (size_t i = 0; i < n; i++) {
        float v = i < sizeof special / sizeof *special ? special[i]
                                                       : (float)(rng.uniform(-1, 1) * pow(2.0, rng.uniform(-30, 20)));
        if (d == FAB_DTYPE_F32)
            memcpy(&buf[4 * i], &v, 4);
        else {
            uint16_t h = (uint16_t)host_expect(v, d);
            memcpy(&buf[2 * i], &h, 2);
        }
    }
    return buf;
}

static void check_case(size_t n, fab_dtype sd, fab_dtype dd, float divisor, bool in_place, EmuRng &rng)
{
    if (in_place && dsize(sd) != dsize(dd))
        return; /* in place only where the sizes agree (AVG: bf16 onto itself) */
    std::vector<uint8_t> src = make_input(n, sd, rng);
    void *dsrc = device_alloc<uint8_t>(src.size());
    void *ddst = in_place ? dsrc : device_alloc<uint8_t>(n * dsize(dd)); /* NaN-poisoned */
    CHECK_CUDA(cudaMemcpy(dsrc, src.data(), src.size(), cudaMemcpyHostToDevice));
    cudaStream_t stream;
    CHECK_CUDA(cudaStreamCreate(&stream));
    CHECK(fab__comm_cast_cuda(ddst, dd, dsrc, sd, (int64_t)n, divisor, stream) == FAB_OK, "launch");
    CHECK_CUDA(cudaStreamSynchronize(stream));
    std::vector<uint8_t> out(n * dsize(dd));
    CHECK_CUDA(cudaMemcpy(out.data(), ddst, out.size(), cudaMemcpyDeviceToHost));
    size_t bad = 0, first = n;
    for (size_t i = 0; i < n; i++) {
        uint32_t want = host_expect(host_load(src, i, sd) / divisor, dd), got = bits_at(out, i, dd);
        if (got != want && !(is_nan_bits(got, dd) && is_nan_bits(want, dd)))
            if (bad++ == 0)
                first = i;
    }
    CHECK(bad == 0, "n=%zu %d->%d divisor=%g%s: %zu of %zu wrong, first at %zu", n, (int)sd, (int)dd, divisor,
          in_place ? " in place" : "", bad, n, first);
    CHECK_CUDA(cudaStreamDestroy(stream));
    cudaFree(dsrc);
    if (!in_place)
        cudaFree(ddst);
}

int main()
{
    EmuRng rng(20261206);
    const size_t small[] = {1, 255, 257};
    for (size_t n : small)
        for (fab_dtype sd : kDtypes)
            for (fab_dtype dd : kDtypes)
                for (float divisor : {1.0f, 3.0f})
                    for (bool in_place : {false, true})
                        check_case(n, sd, dd, divisor, in_place, rng);
    /* past 4096 blocks of 256: the uses that run on large buffers */
    const size_t big = 4096 * 256 + 3;
    check_case(big, FAB_DTYPE_BF16, FAB_DTYPE_BF16, 3.0f, true, rng);
    check_case(big, FAB_DTYPE_F32, FAB_DTYPE_BF16, 1.0f, false, rng);
    CHECK(fab__comm_cast_cuda(nullptr, FAB_DTYPE_F32, nullptr, FAB_DTYPE_F32, 0, 1.0f, nullptr) == FAB_OK,
          "n = 0 launches nothing");
    return emu_test_finish();
}
