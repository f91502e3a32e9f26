/*
 * test_numerics.cu -- cuda_fp16.h / cuda_bf16.h conversions and arithmetic against an
 * independent reference rounding (scaling by powers of two and nearbyint in double), and
 * the float intrinsics' documented behaviour.
 */
#include <limits.h>
#include <math.h>

#include "emu_test.h"
#include "../../kernels/common/ptx.cuh"

/* Reference round-to-nearest-even of x to a format with p mantissa bits, minimum normal
 * exponent emin and largest finite value maxf (overflow -> inf). */
static double ref_round(double x, int p, int emin, double maxf)
{
    if (isnan(x) || x == 0 || isinf(x)) return x;
    int e;
    frexp(fabs(x), &e);
    int E = e - 1 < emin ? emin : e - 1;
    double q = ldexp(1.0, E - p);
    double r = nearbyint(fabs(x) / q) * q;
    if (r > maxf) r = INFINITY;
    return copysign(r, x);
}
static const double kHalfMax = 65504.0, kBf16Max = 3.38953138925153547590470800371487866880e38;
static double ref_half(double x) { return ref_round(x, 10, -14, kHalfMax); }
static double ref_bf16(double x) { return ref_round(x, 7, -126, kBf16Max); }

static bool same(double got, double want)
{
    if (isnan(want)) return isnan(got);
    return got == want && signbit(got) == signbit(want);
}

static void test_half_conversions()
{
    int bad = 0;
    for (unsigned u = 0; u < 65536; ++u) { /* every half round-trips; NaN becomes 0x7fff */
        __half h = __ushort_as_half((unsigned short)u);
        float f = __half2float(h);
        unsigned short back = __half_as_ushort(__float2half(f));
        bool nan = (u & 0x7fff) > 0x7c00;
        bad += nan ? (back != 0x7fff || !isnan(f)) : back != u;
    }
    CHECK(bad == 0, "half round trip: %d values wrong", bad);
    bad = 0;
    for (unsigned u = 0; u < 0x7bff; ++u) { /* midpoints between neighbours tie to even, and their neighbours */
        double lo = __half2float(__ushort_as_half((unsigned short)u)),
               hi = __half2float(__ushort_as_half((unsigned short)(u + 1)));
        float mid = (float)((lo + hi) / 2);
        float below = nextafterf(mid, -INFINITY), above = nextafterf(mid, INFINITY);
        bad += __half2float(__float2half(mid)) != (u % 2 ? hi : lo);
        bad += __half2float(__float2half(below)) != lo;
        bad += __half2float(__float2half(above)) != hi;
        bad += !same(__half2float(__float2half(-mid)), -(u % 2 ? hi : lo));
    }
    CHECK(bad == 0, "half midpoints: %d wrong", bad);
    EmuRng rng(99);
    bad = 0;
    for (int i = 0; i < 2000000; ++i) {
        uint32_t bits = (uint32_t)rng.next();
        float f;
        if (i % 3 == 0) {
            memcpy(&f, &bits, 4); /* any pattern */
        } else {
            f = (float)ldexp(rng.uniform(-1, 1), (int)(rng.next() % 48) - 30); /* half range incl. subnormals */
        }
        double want = ref_half(f);
        double got = __half2float(__float2half_rn(f));
        bad += !same(got, want);
    }
    CHECK(bad == 0, "float->half RNE vs reference: %d of 2M wrong", bad);
    CHECK(__half_as_ushort(__float2half(NAN)) == 0x7fff && __half_as_ushort(__float2half(-INFINITY)) == 0xfc00 &&
              __half_as_ushort(__float2half(65519.0f)) == 0x7bff && __half_as_ushort(__float2half(65520.0f)) == 0x7c00 &&
              __half_as_ushort(__float2half(0x1p-24f)) == 0x0001 && __half_as_ushort(__float2half(0x1p-25f)) == 0 &&
              __half_as_ushort(__float2half(-0.0f)) == 0x8000,
          "half special values");
    CHECK(__half_as_ushort(__float2half_rz(65535.0f)) == 0x7bff && __half_as_ushort(__float2half_rz(1.9999f)) == 0x3fff,
          "half rz");
    /* double -> half rounds once: 1 + 2^-11 + 2^-40 is above the midpoint */
    CHECK(__half_as_ushort(__double2half(1.0 + 0x1p-11 + 0x1p-40)) == 0x3c01, "double->half double rounding");
    uint32_t nan_bits = __float_as_uint(__half2float(__ushort_as_half(0xfe01)));
    CHECK(nan_bits == 0x7fffffffu, "half NaN -> canonical float NaN (got 0x%08x)", nan_bits);
}

static void test_bf16_conversions()
{
    int bad = 0;
    for (unsigned u = 0; u < 65536; ++u) {
        __nv_bfloat16 h = __ushort_as_bfloat16((unsigned short)u);
        float f = __bfloat162float(h);
        unsigned short back = __bfloat16_as_ushort(__float2bfloat16(f));
        bool nan = (u & 0x7fff) > 0x7f80;
        bad += nan ? back != 0x7fff : back != u;
        bad += __float_as_uint(f) != (u << 16); /* exact widening */
    }
    CHECK(bad == 0, "bf16 round trip: %d wrong", bad);
    EmuRng rng(7);
    bad = 0;
    for (int i = 0; i < 2000000; ++i) {
        uint32_t bits = (uint32_t)rng.next();
        float f;
        memcpy(&f, &bits, 4);
        bad += !same(__bfloat162float(__float2bfloat16_rn(f)), ref_bf16(f));
    }
    CHECK(bad == 0, "float->bf16 RNE vs reference: %d of 2M wrong", bad);
    CHECK(__bfloat16_as_ushort(__float2bfloat16(3.4e38f)) == 0x7f80 &&
              __bfloat16_as_ushort(__float2bfloat16_rz(3.4e38f)) == 0x7f7f &&
              __bfloat16_as_ushort(__double2bfloat16(1.0 + 0x1p-8 + 0x1p-40)) == 0x3f81,
          "bf16 overflow / rz / double rounding");
    __nv_bfloat162 two = __floats2bfloat162_rn(1.5f, -2.25f);
    float2 f2 = __bfloat1622float2(two);
    CHECK(f2.x == 1.5f && f2.y == -2.25f && __low2float(two) == 1.5f && __high2float(two) == -2.25f, "bf162 pack");
    __nv_bfloat162 t2 = __float22bfloat162_rn(make_float2(0.1f, 0.2f));
    CHECK(__bfloat16_as_ushort(t2.x) == __bfloat16_as_ushort(__float2bfloat16(0.1f)), "float2 -> bf162");
}

static void test_arithmetic()
{
    EmuRng rng(3);
    int bad_h = 0, bad_b = 0;
    for (int i = 0; i < 200000; ++i) {
        __half a = __float2half((float)ldexp(rng.uniform(-1, 1), (int)(rng.next() % 30) - 15));
        __half b = __float2half((float)ldexp(rng.uniform(-1, 1), (int)(rng.next() % 30) - 15));
        __half c = __float2half((float)rng.uniform(-4, 4));
        double x = __half2float(a), y = __half2float(b), z = __half2float(c);
        bad_h += !same(__half2float(__hadd(a, b)), ref_half(x + y));
        bad_h += !same(__half2float(a * b), ref_half(x * y));
        bad_h += !same(__half2float(__hsub(a, b)), ref_half(x - y));
        if (y != 0) bad_h += !same(__half2float(a / b), ref_half(x / y));
        bad_h += !same(__half2float(__hfma(a, b, c)), ref_half(fma(x, y, z)));
        __nv_bfloat16 p = __float2bfloat16((float)ldexp(rng.uniform(-1, 1), (int)(rng.next() % 200) - 100));
        __nv_bfloat16 q = __float2bfloat16((float)ldexp(rng.uniform(-1, 1), (int)(rng.next() % 200) - 100));
        double u = __bfloat162float(p), v = __bfloat162float(q);
        bad_b += !same(__bfloat162float(p + q), ref_bf16(u + v));
        bad_b += !same(__bfloat162float(__hmul(p, q)), ref_bf16(u * v));
        /* fma operands within 2^+-8, so that fma in double is exact and ref_bf16 rounds once */
        __nv_bfloat16 r = __float2bfloat16((float)ldexp(rng.uniform(-1, 1), (int)(rng.next() % 16) - 8));
        __nv_bfloat16 s = __float2bfloat16((float)ldexp(rng.uniform(-1, 1), (int)(rng.next() % 16) - 8));
        __nv_bfloat16 t = __float2bfloat16((float)ldexp(rng.uniform(-1, 1), (int)(rng.next() % 16) - 8));
        double rr = __bfloat162float(r), ss = __bfloat162float(s), tt = __bfloat162float(t);
        bad_b += !same(__bfloat162float(__hfma(r, s, t)), ref_bf16(fma(rr, ss, tt)));
    }
    CHECK(bad_h == 0, "half arithmetic: %d wrong", bad_h);
    /* a tie that only a single rounding breaks correctly: 37/32 * 7/8 = 259/256 is a bf16
     * midpoint; minus 2^-100 it must round down to 258/256 (0x3f81) */
    CHECK(__bfloat16_as_ushort(__hfma(__float2bfloat16(1.15625f), __float2bfloat16(0.875f),
                                      __float2bfloat16(-0x1p-100f))) == 0x3f81,
          "bf16 fma single rounding");
    CHECK(bad_b == 0, "bf16 arithmetic: %d wrong", bad_b);
    __half2 h2 = __hfma2(__floats2half2_rn(1, 2), __floats2half2_rn(3, 4), __floats2half2_rn(0.5f, 0.25f));
    CHECK(__low2float(h2) == 3.5f && __high2float(h2) == 8.25f, "hfma2");
    CHECK(__hisnan(__hmax(__float2half(NAN), __float2half(1))) == false, "hmax with NaN returns the other");
}

static void test_intrinsics()
{
    int bad = 0;
    for (float x = -20; x <= 20; x += 0.013f) bad += fabs(__expf(x) - exp((double)x)) > (2 + fabs(1.16 * x)) * 1.2e-7 * exp((double)x) + 1e-30;
    CHECK(bad == 0, "__expf outside the documented bound %d times", bad);
    CHECK(__fdividef(1.0f, 0x1p127f) == 0.0f && __fdividef(3.0f, 4.0f) == 0.75f && isnan(__fdividef(INFINITY, 0x1p127f)),
          "__fdividef");
    CHECK(rsqrtf(4.0f) == 0.5f && __frcp_rn(3.0f) == 1.0f / 3.0f && __fmaf_rn(2, 3, 4) == 10.0f, "rsqrtf/frcp/fma");
    CHECK(__saturatef(NAN) == 0.0f && __saturatef(2.0f) == 1.0f && __saturatef(-1.0f) == 0.0f, "__saturatef");
    CHECK(__float2int_rn(2.5f) == 2 && __float2int_rn(3.5f) == 4 && __float2int_rn(-2.5f) == -2 &&
              __float2int_rn(NAN) == 0 && __float2int_rn(1e10f) == INT_MAX && __float2int_rz(-2.7f) == -2,
          "float2int");
    CHECK(__byte_perm(0x33221100u, 0x77665544u, 0x5410) == 0x55441100u && __brev(1u) == 0x80000000u &&
              __funnelshift_l(0x80000000u, 1u, 1) == 3u && __funnelshift_r(1u, 1u, 1) == 0x80000000u,
          "byte_perm/brev/funnelshift");
    CHECK(__popc(0xf0f0u) == 8 && __clz(0) == 32 && __clz(1) == 31 && __ffs(8) == 4 && __ffs(0) == 0 &&
              __umulhi(0x80000000u, 4u) == 2u,
          "bit intrinsics");
    CHECK(fab__cvt_rna_tf32(1.0f + 0x1p-11f) == 0x3f802000u && fab__cvt_rna_tf32(-1.0f - 0x1p-12f) == 0xbf800000u,
          "cvt.rna.tf32 ties away");
    CHECK(fabs(fab__tanh_approx(0.5f) - tanh(0.5)) < 1e-7 && fab__ex2_approx(3.0f) == 8.0f, "tanh/ex2 approx");
    CHECK(min(3, 5) == 3 && max(2.5f, 1.0f) == 2.5f && max(1u, 7u) == 7u, "min/max overloads");
}

int main()
{
    test_half_conversions();
    test_bf16_conversions();
    test_arithmetic();
    test_intrinsics();
    return emu_test_finish();
}
