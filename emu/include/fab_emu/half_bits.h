/*
 * fab_emu/half_bits.h -- bit-exact conversions between float and the 16-bit
 * formats, as the GPU's cvt instructions perform them.
 *
 *   f32 -> f16   cvt.rn.f16.f32: round to nearest even, subnormals kept,
 *                overflow to inf, NaN -> canonical 0x7fff.
 *   f16 -> f32   exact; NaN -> canonical 0x7fffffff (sign dropped, as the GPU).
 *   f32 -> bf16  cvt.rn.bf16.f32: round to nearest even, NaN -> 0x7fff.
 *   bf16 -> f32  exact (a 16-bit shift; NaN payload kept).
 *   _rz variants truncate (overflow gives the largest finite value).
 *   f64 -> 16-bit: double -> float with round-to-odd, then the float rounding; since
 *   float keeps >= 2 more bits than either 16-bit format this equals a direct rounding.
 */
#ifndef FAB_EMU_HALF_BITS_H
#define FAB_EMU_HALF_BITS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

namespace fab_emu {

inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

inline uint16_t f32_to_f16_rn(float f)
{
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fffu;              /* NaN */
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 (and inf) -> inf */
    if (ax < 0x33000000u) return (uint16_t)sign;        /* < 2^-25 -> zero */
    if (ax < 0x38800000u) {
        /* result is subnormal (or rounds up to the smallest normal): units of 2^-24 */
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e; /* 14..24 */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (q & 1u))) ++q;
        return (uint16_t)(sign | q);
    }
    uint32_t r = (ax >> 13) - ((127u - 15u) << 10); /* rebias exponent, keep 10 mantissa bits */
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r; /* a carry may reach inf: correct */
    return (uint16_t)(sign | r);
}

inline uint16_t f32_to_f16_rz(float f)
{
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fffu;
    if (ax == 0x7f800000u) return (uint16_t)(sign | 0x7c00u);
    if (ax >= 0x47800000u) return (uint16_t)(sign | 0x7bffu); /* >= 65536 -> max finite */
    if (ax < 0x33800000u) return (uint16_t)sign;              /* < 2^-24 */
    if (ax < 0x38800000u) {
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        return (uint16_t)(sign | (m >> (126u - e)));
    }
    return (uint16_t)(sign | ((ax >> 13) - ((127u - 15u) << 10)));
}

inline float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;
    if (e == 0x1fu) return m ? bits_f32(0x7fffffffu) : bits_f32(sign | 0x7f800000u);
    if (e == 0) {
        /* zero or subnormal: m * 2^-24, exact in float */
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

inline uint16_t f32_to_bf16_rn(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    x += 0x7fffu + ((x >> 16) & 1u); /* round half to even on the 16 dropped bits */
    return (uint16_t)(x >> 16);
}

inline uint16_t f32_to_bf16_rz(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    return (uint16_t)(x >> 16);
}

inline float bf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

/* double -> float rounding to odd (inexact results get an odd last bit). */
inline float f64_to_f32_round_odd(double d)
{
    float f = (float)d;
    if ((double)f != d && !isnan(d) && !isinf(f) && !(f32_bits(f) & 1u))
        f = nextafterf(f, d > (double)f ? INFINITY : -INFINITY);
    return f;
}

/* a*b + c rounded to odd in double, for a, b, c of a 16-bit format (a*b is exact in
 * double).  Rounding this to f16/bf16 then equals the single rounding of fma.rn.f16/bf16;
 * computing in float (or in double with round-to-nearest) would round twice and can miss
 * a tie-break (e.g. bf16 37/32 * 7/8 - 2^-100). */
inline double fma_round_odd(double a, double b, double c)
{
    double p = a * b;
    double s = p + c;
    if (isnan(s) || isinf(s)) return s;
    double bb = s - p; /* TwoSum: s + err == p + c exactly */
    double err = (p - (s - bb)) + (c - bb);
    uint64_t u;
    memcpy(&u, &s, 8);
    if (err != 0 && !(u & 1u)) s = nextafter(s, err > 0 ? INFINITY : -INFINITY);
    return s;
}

} // namespace fab_emu

#endif /* FAB_EMU_HALF_BITS_H */
