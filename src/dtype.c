/*
 * dtype.c: element sizes, names, and exact conversions between f32 and the
 * 16- and 8-bit float formats.
 *
 * All four narrow formats are "sign, E exponent bits, M mantissa bits, bias", so one
 * encoder and one decoder serve them; a small table says where each differs
 * (infinity or not, which codes are NaN, largest finite code).
 * Rounding is to nearest, ties to even, done on integers: no float arithmetic,
 * so the result does not depend on the host FPU's rounding mode or flush-to-zero.
 */
#include "runtime.h"

#include <math.h>
#include <string.h>

size_t fab_dtype_size(fab_dtype dtype)
{
    switch (dtype) {
    case FAB_DTYPE_F32: return 4;
    case FAB_DTYPE_F16: return 2;
    case FAB_DTYPE_BF16: return 2;
    case FAB_DTYPE_F8_E4M3: return 1;
    case FAB_DTYPE_F8_E5M2: return 1;
    case FAB_DTYPE_I32: return 4;
    case FAB_DTYPE_I64: return 8;
    case FAB_DTYPE_F64: return 8;
    case FAB_DTYPE_COUNT: break;
    }
    return 0;
}

const char *fab_dtype_name(fab_dtype dtype)
{
    switch (dtype) {
    case FAB_DTYPE_F32: return "f32";
    case FAB_DTYPE_F16: return "f16";
    case FAB_DTYPE_BF16: return "bf16";
    case FAB_DTYPE_F8_E4M3: return "f8_e4m3";
    case FAB_DTYPE_F8_E5M2: return "f8_e5m2";
    case FAB_DTYPE_I32: return "i32";
    case FAB_DTYPE_I64: return "i64";
    case FAB_DTYPE_F64: return "f64";
    case FAB_DTYPE_COUNT: break;
    }
    return "unknown";
}

typedef struct narrow_format {
    int ebits, mbits, bias;
    int has_inf;          /* E all ones, M zero is infinity (IEEE-like) */
    uint32_t max_finite;  /* largest finite code without the sign */
    uint32_t inf_code;    /* +infinity, when has_inf */
    uint32_t nan_code;    /* canonical quiet +NaN */
} narrow_format;

static const narrow_format F16 = {5, 10, 15, 1, 0x7bff, 0x7c00, 0x7e00};
static const narrow_format BF16 = {8, 7, 127, 1, 0x7f7f, 0x7f80, 0x7fc0};
static const narrow_format E4M3 = {4, 3, 7, 0, 0x7e, 0, 0x7f};
static const narrow_format E5M2 = {5, 2, 15, 1, 0x7b, 0x7c, 0x7e};

static uint32_t f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* Rounds |x| (bits `a`, not NaN or inf) to the format; returns the code without
 * sign, possibly past max_finite when it overflows. */
static uint32_t encode_magnitude(uint32_t a, const narrow_format *f)
{
    int exp32 = (int)(a >> 23);
    uint32_t m = a & 0x7fffff;
    int e; /* value = m * 2^(e - 23) */
    if (exp32 == 0) {
        e = -126;
    } else {
        e = exp32 - 127;
        m |= 0x800000;
    }
    if (m == 0)
        return 0;
    int emin = 1 - f->bias;
    int e_eff = e > emin ? e : emin;
    /* quantum of the target at this exponent: 2^(e_eff - mbits);
     * number of quanta = m >> shift, rounded to nearest even */
    int shift = 23 - f->mbits + (e_eff - e);
    uint32_t r;
    if (shift > 25) {
        r = 0; /* m < 2^24 <= half a quantum */
    } else {
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        r = m >> shift;
        if (rem > half || (rem == half && (r & 1)))
            r++;
    }
    /* code = ((E_eff - 1) << mbits) + r works for normals (r carries the implicit
     * bit, and a carry out of the mantissa bumps the exponent) and subnormals
     * (E_eff = 1, so code = r). */
    int biased = e_eff + f->bias;
    return ((uint32_t)(biased - 1) << f->mbits) + r;
}

static uint32_t encode(float x, const narrow_format *f, int saturate)
{
    uint32_t u = f32_bits(x);
    uint32_t sign = (u >> 31) << (f->ebits + f->mbits);
    uint32_t a = u & 0x7fffffff;
    if (a > 0x7f800000) {
        /* NaN: keep the top payload bits where the format has room, force quiet */
        uint32_t payload = (a & 0x7fffff) >> (23 - f->mbits);
        return sign | f->nan_code | payload;
    }
    uint32_t code = a == 0x7f800000 ? UINT32_MAX : encode_magnitude(a, f);
    if (code > f->max_finite) {
        if (saturate)
            return sign | f->max_finite;
        if (f->has_inf)
            return sign | f->inf_code;
        return sign | f->nan_code; /* e4m3: no infinity */
    }
    return sign | code;
}

static float decode(uint32_t v, const narrow_format *f)
{
    int nbits = f->ebits + f->mbits;
    uint32_t sign = (v >> nbits) & 1;
    uint32_t mag = v & ((1u << nbits) - 1);
    uint32_t E = mag >> f->mbits;
    uint32_t M = mag & ((1u << f->mbits) - 1);
    uint32_t s32 = sign << 31;
    uint32_t emax_code = (1u << f->ebits) - 1;
    if (f->has_inf && E == emax_code) {
        /* infinity or NaN, payload kept in the top mantissa bits */
        return bits_f32(s32 | 0x7f800000 | (M << (23 - f->mbits)));
    }
    if (!f->has_inf && mag == f->nan_code)
        return bits_f32(s32 | 0x7fc00000);
    float value;
    if (E == 0)
        value = ldexpf((float)M, 1 - f->bias - f->mbits);
    else
        value = ldexpf((float)(M | (1u << f->mbits)), (int)E - f->bias - f->mbits);
    return sign ? -value : value;
}

uint16_t fab_f32_to_f16(float x) { return (uint16_t)encode(x, &F16, 0); }
float fab_f16_to_f32(uint16_t h) { return decode(h, &F16); }
uint16_t fab_f32_to_bf16(float x) { return (uint16_t)encode(x, &BF16, 0); }
float fab_bf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }
uint8_t fab_f32_to_f8_e4m3(float x, int saturate) { return (uint8_t)encode(x, &E4M3, saturate); }
float fab_f8_e4m3_to_f32(uint8_t v) { return decode(v, &E4M3); }
uint8_t fab_f32_to_f8_e5m2(float x, int saturate) { return (uint8_t)encode(x, &E5M2, saturate); }
float fab_f8_e5m2_to_f32(uint8_t v) { return decode(v, &E5M2); }
