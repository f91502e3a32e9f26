/*
 * test_dtype.c: dtype sizes and names, and the f32 <-> f16/bf16/e4m3/e5m2
 * conversions checked exhaustively: every code decodes to the value its bits
 * define, re-encodes to itself, and every rounding midpoint between neighbouring
 * codes (and the floats just either side of it) rounds as round-to-nearest-even says.
 */
#include "harness.h"

#include "../kernels/common/cpu_dtype.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct format {
    const char *name;
    int bits, ebits, mbits, bias;
    int ieee_specials; /* all-ones exponent is inf/NaN (f16, bf16, e5m2) */
    float (*decode)(uint32_t);
    uint32_t (*encode)(float, int saturate);
} format;

static float dec_f16(uint32_t v) { return fab_f16_to_f32((uint16_t)v); }
static uint32_t enc_f16(float x, int sat) { (void)sat; return fab_f32_to_f16(x); }
static float dec_bf16(uint32_t v) { return fab_bf16_to_f32((uint16_t)v); }
static uint32_t enc_bf16(float x, int sat) { (void)sat; return fab_f32_to_bf16(x); }
static float dec_e4m3(uint32_t v) { return fab_f8_e4m3_to_f32((uint8_t)v); }
static uint32_t enc_e4m3(float x, int sat) { return fab_f32_to_f8_e4m3(x, sat); }
static float dec_e5m2(uint32_t v) { return fab_f8_e5m2_to_f32((uint8_t)v); }
static uint32_t enc_e5m2(float x, int sat) { return fab_f32_to_f8_e5m2(x, sat); }

static const format formats[] = {
    {"f16", 16, 5, 10, 15, 1, dec_f16, enc_f16},
    {"bf16", 16, 8, 7, 127, 1, dec_bf16, enc_bf16},
    {"e4m3", 8, 4, 3, 7, 0, dec_e4m3, enc_e4m3},
    {"e5m2", 8, 5, 2, 15, 1, dec_e5m2, enc_e5m2},
};

/* The value of a code by the format's definition, computed independently in double. */
static double value_of(const format *f, uint32_t code, int *is_nan)
{
    uint32_t sign = code >> (f->bits - 1);
    uint32_t E = (code >> f->mbits) & ((1u << f->ebits) - 1);
    uint32_t M = code & ((1u << f->mbits) - 1);
    uint32_t emax = (1u << f->ebits) - 1;
    *is_nan = 0;
    double v;
    if (f->ieee_specials && E == emax) {
        if (M) {
            *is_nan = 1;
            return NAN;
        }
        v = INFINITY;
    } else if (!f->ieee_specials && E == emax && M == (1u << f->mbits) - 1) {
        *is_nan = 1; /* e4m3: S.1111.111 is the only NaN */
        return NAN;
    } else if (E == 0) {
        v = ldexp((double)M, 1 - f->bias - f->mbits);
    } else {
        v = ldexp((double)(M + (1u << f->mbits)), (int)E - f->bias - f->mbits);
    }
    return sign ? -v : v;
}

static void check_format(const format *f)
{
    uint32_t ncodes = 1u << f->bits, half = ncodes / 2;
    uint32_t max_finite = 0;
    for (uint32_t c = 0; c < ncodes; c++) {
        int nan;
        double want = value_of(f, c, &nan);
        float got = f->decode(c);
        if (nan) {
            if (!isnan(got))
                fail_msg("%s: code 0x%x must decode to NaN, got %g", f->name, c, got);
            if (!isnan(f->decode(f->encode(got, 0))))
                fail_msg("%s: NaN code 0x%x does not re-encode to NaN", f->name, c);
            continue;
        }
        if ((double)got != want || (signbit(got) != 0) != (c >= half))
            fail_msg("%s: code 0x%x decodes to %.9g, want %.9g", f->name, c, got, want);
        if (f->encode(got, 0) != c)
            fail_msg("%s: %.9g (code 0x%x) re-encodes to 0x%x", f->name, got, c, f->encode(got, 0));
        if (c < half && isfinite(want))
            max_finite = c;
    }

    /* midpoints of neighbouring positive finite codes, and their negatives */
    for (uint32_t c = 0; c < max_finite; c++) {
        float lo = f->decode(c), hi = f->decode(c + 1);
        float mid = (float)(((double)lo + (double)hi) / 2); /* exact: needs one more bit than the format */
        uint32_t even = (c & 1) ? c + 1 : c;
        uint32_t sign = 1u << (f->bits - 1);
        if (f->encode(mid, 0) != even || f->encode(-mid, 0) != (even | sign))
            fail_msg("%s: midpoint %.9g of 0x%x and 0x%x encodes to 0x%x, want 0x%x", f->name, mid, c, c + 1,
                     f->encode(mid, 0), even);
        if (f->encode(nextafterf(mid, 0), 0) != c || f->encode(nextafterf(mid, INFINITY), 0) != c + 1)
            fail_msg("%s: values beside midpoint %.9g round the wrong way", f->name, mid);
    }

    /* overflow: past the midpoint above the largest finite value */
    float maxv = f->decode(max_finite);
    double ulp = (double)maxv - (double)f->decode(max_finite - 1);
    float over_mid = (float)((double)maxv + ulp / 2);
    uint32_t overflow = f->ieee_specials ? (((1u << f->ebits) - 1) << f->mbits) : half - 1; /* inf or NaN */
    assert_int_equal(f->encode(nextafterf(over_mid, 0), 0), max_finite);
    assert_int_equal(f->encode(nextafterf(over_mid, INFINITY), 0), overflow);
    assert_int_equal(f->encode(INFINITY, 0), overflow);
    assert_int_equal(f->encode(-INFINITY, 0), overflow | half);
    assert_true(isnan(f->decode(f->encode(NAN, 0))));
    assert_true(isnan(f->decode(f->encode(-NAN, 1))));
    /* ties to even at the top: the largest code's mantissa is odd for IEEE-like formats */
    assert_int_equal(f->encode(over_mid, 0), (max_finite & 1) ? overflow : max_finite);
    if (f->bits == 8) {
        assert_int_equal(f->encode(INFINITY, 1), max_finite);
        assert_int_equal(f->encode(-1e30f, 1), max_finite | half);
        assert_int_equal(f->encode(1e30f, 1), max_finite);
    }
    /* the smallest values: below half the smallest subnormal goes to signed zero */
    float tiny = f->decode(1);
    assert_int_equal(f->encode(tiny / 2, 0), 0);                 /* tie to even: 0 */
    assert_int_equal(f->encode(nextafterf(tiny / 2, 1), 0), 1);  /* just above: rounds up */
    assert_int_equal(f->encode(-tiny / 4, 0), half);             /* -0 */
    assert_int_equal(f->encode(1e-45f, 0), 0);                   /* f32 subnormal input */
}

static void test_conversions_exhaustive(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++)
        check_format(&formats[i]);
}

/* f16 against the compiler's own _Float16 conversion on random f32 bit patterns. */
static void test_f16_matches_compiler(void **state)
{
    (void)state;
#if defined(__FLT16_MAX__)
    fab_test_reseed(11);
    for (int i = 0; i < 2000000; i++) {
        uint32_t bits = (uint32_t)fab_test_rand_u64();
        float x;
        memcpy(&x, &bits, 4);
        if (isnan(x))
            continue;
        _Float16 h = (_Float16)x;
        uint16_t want;
        memcpy(&want, &h, 2);
        if (fab_f32_to_f16(x) != want)
            fail_msg("f16(%a) = 0x%04x, compiler says 0x%04x", x, fab_f32_to_f16(x), want);
    }
#else
    skip();
#endif
}

/* The CPU kernels' row conversions (kernels/common/cpu_dtype.h: F16C where the CPU
 * has it, else plain loops) give the bits of the public conversions: every f16 and
 * bf16 code widened (a NaN only has to stay NaN), and random f32 bit patterns,
 * NaN included, rounded. The rows are 65543 long, so the 8-wide loops leave a
 * remainder. */
static void test_row_conversions(void **state)
{
    (void)state;
    enum { N = 65536 + 7 };
    static uint16_t codes[N], narrow[N];
    static float wide[N], vals[N];
    fab_test_reseed(13);
    for (int i = 0; i < N; i++) {
        uint32_t bits = (uint32_t)fab_test_rand_u64();
        memcpy(&vals[i], &bits, 4);
        codes[i] = (uint16_t)i;
    }
    for (int k = 0; k < 2; k++) {
        fab_dtype dt = k ? FAB_DTYPE_BF16 : FAB_DTYPE_F16;
        fab__load_row_f32(codes, dt, N, wide);
        for (int i = 0; i < N; i++) {
            float want = k ? fab_bf16_to_f32(codes[i]) : fab_f16_to_f32(codes[i]);
            if (isnan(want) ? !isnan(wide[i]) : memcmp(&want, &wide[i], 4) != 0)
                fail_msg("%s row widen of 0x%04x: %a, want %a", fab_dtype_name(dt), codes[i], wide[i], want);
        }
        fab__store_row_f32(narrow, dt, N, vals);
        for (int i = 0; i < N; i++) {
            uint16_t want = k ? fab_f32_to_bf16(vals[i]) : fab_f32_to_f16(vals[i]);
            if (narrow[i] != want)
                fail_msg("%s row rounding of %a: 0x%04x, want 0x%04x", fab_dtype_name(dt), vals[i], narrow[i], want);
        }
    }
}

/* The 8-bit formats against a brute-force nearest-code search, on random floats. */
static void test_f8_brute_force(void **state)
{
    (void)state;
    fab_test_reseed(12);
    for (int fi = 2; fi < 4; fi++) {
        const format *f = &formats[fi];
        for (int i = 0; i < 200000; i++) {
            float x = (float)fab_test_uniform(-2, 2) * ldexpf(1, (int)(fab_test_rand_u64() % 40) - 22);
            uint32_t best = 0;
            double best_d = INFINITY;
            for (uint32_t c = 0; c < 256; c++) {
                int nan;
                double v = value_of(f, c, &nan);
                if (nan || isinf(v))
                    continue;
                double d = fabs(v - x);
                if (d < best_d || (d == best_d && (c & 1) == 0 && v != 0)) {
                    best = c;
                    best_d = d;
                }
            }
            uint32_t got = f->encode(x, 1);
            int nan;
            if (value_of(f, got, &nan) != value_of(f, best, &nan))
                fail_msg("%s(%a): got 0x%02x (%g), nearest is 0x%02x (%g)", f->name, x, got,
                         value_of(f, got, &nan), best, value_of(f, best, &nan));
        }
    }
}

static void test_sizes_and_names(void **state)
{
    (void)state;
    const size_t sizes[] = {4, 2, 2, 1, 1, 4, 8, 8};
    const char *names[] = {"f32", "f16", "bf16", "f8_e4m3", "f8_e5m2", "i32", "i64", "f64"};
    for (int d = 0; d < FAB_DTYPE_COUNT; d++) {
        assert_int_equal(fab_dtype_size((fab_dtype)d), sizes[d]);
        assert_string_equal(fab_dtype_name((fab_dtype)d), names[d]);
    }
    assert_int_equal(fab_dtype_size((fab_dtype)99), 0);
    assert_int_equal(fab_dtype_size((fab_dtype)-1), 0);
    assert_string_equal(fab_dtype_name((fab_dtype)99), "unknown");
}

int main(int argc, char **argv)
{
    fab_test_init(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sizes_and_names),
        cmocka_unit_test(test_conversions_exhaustive),
        cmocka_unit_test(test_f16_matches_compiler),
        cmocka_unit_test(test_row_conversions),
        cmocka_unit_test(test_f8_brute_force),
    };
    return fab_test_run(tests);
}
