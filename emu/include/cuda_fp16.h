/*
 * cuda_fp16.h -- fabriek SIMT emulator's __half and __half2.
 *
 * Storage and conversions are bit-exact with the GPU (fab_emu/half_bits.h).
 * Arithmetic computes in float and rounds once to half: float has 24 >= 2*11+2
 * significand bits, so for + - * / sqrt and fma (whose product is exact in float)
 * the double rounding is innocuous and the result equals the correctly rounded
 * half operation the GPU performs (add/mul.rn.f16).  fma rounds to odd in double first
 * (fab_emu::fma_round_odd), since its exact result is not a basic operation on halves.
 */
#ifndef FAB_EMU_CUDA_FP16_H
#define FAB_EMU_CUDA_FP16_H

#include "cuda_runtime.h"
#include "fab_emu/half_bits.h"

struct __half_raw {
    unsigned short x;
};
struct __half2_raw {
    unsigned short x, y;
};

struct alignas(2) __half {
    unsigned short __x;

    __half() = default;
    constexpr __half(const __half_raw &r) : __x(r.x) {}
    __half(float f) : __x(fab_emu::f32_to_f16_rn(f)) {}
    __half(double d) : __x(fab_emu::f32_to_f16_rn(fab_emu::f64_to_f32_round_odd(d))) {}
    __half(int v) : __half((double)v) {}
    __half(unsigned v) : __half((double)v) {}
    __half(short v) : __half((float)v) {}
    __half(unsigned short v) : __half((float)v) {}
    __half(long v) : __half((double)v) {}
    __half(unsigned long v) : __half((double)v) {}
    __half(long long v) : __half((double)v) {}
    __half(unsigned long long v) : __half((double)v) {}
    operator float() const { return fab_emu::f16_to_f32(__x); }
    operator __half_raw() const { return __half_raw{__x}; }
    __half &operator=(const __half_raw &r) { __x = r.x; return *this; }
};

struct alignas(4) __half2 {
    __half x, y;
    __half2() = default;
    constexpr __half2(const __half &a, const __half &b) : x(a), y(b) {}
    __half2(const __half2_raw &r) : x(__half_raw{r.x}), y(__half_raw{r.y}) {}
    operator __half2_raw() const { return __half2_raw{x.__x, y.__x}; }
};

typedef __half half;
typedef __half2 half2;

/* ---- conversions ---- */
static inline __half __float2half(float f) { return __half(f); }
static inline __half __float2half_rn(float f) { return __half(f); }
static inline __half __float2half_rz(float f) { return __half(__half_raw{fab_emu::f32_to_f16_rz(f)}); }
static inline __half __double2half(double d) { return __half(d); }
static inline float __half2float(__half h) { return fab_emu::f16_to_f32(h.__x); }
static inline __half2 __float2half2_rn(float f) { return __half2(__half(f), __half(f)); }
static inline __half2 __floats2half2_rn(float a, float b) { return __half2(__half(a), __half(b)); }
static inline __half2 __float22half2_rn(float2 f) { return __half2(__half(f.x), __half(f.y)); }
static inline float2 __half22float2(__half2 h) { return make_float2(__half2float(h.x), __half2float(h.y)); }
static inline float __low2float(__half2 h) { return __half2float(h.x); }
static inline float __high2float(__half2 h) { return __half2float(h.y); }
static inline __half __low2half(__half2 h) { return h.x; }
static inline __half __high2half(__half2 h) { return h.y; }
static inline __half2 __halves2half2(__half a, __half b) { return __half2(a, b); }
static inline __half2 __half2half2(__half a) { return __half2(a, a); }
static inline __half2 __lows2half2(__half2 a, __half2 b) { return __half2(a.x, b.x); }
static inline __half2 __highs2half2(__half2 a, __half2 b) { return __half2(a.y, b.y); }
static inline unsigned short __half_as_ushort(__half h) { return h.__x; }
static inline short __half_as_short(__half h) { return (short)h.__x; }
static inline __half __ushort_as_half(unsigned short u) { return __half(__half_raw{u}); }
static inline __half __short_as_half(short u) { return __half(__half_raw{(unsigned short)u}); }
static inline __half __int2half_rn(int v) { return __half(v); }
static inline int __half2int_rz(__half h) { return __float2int_rz(__half2float(h)); }
static inline int __half2int_rn(__half h) { return __float2int_rn(__half2float(h)); }

/* ---- arithmetic (one rounding each, see the header comment) ---- */
static inline __half __hadd(__half a, __half b) { return __half((float)a + (float)b); }
static inline __half __hsub(__half a, __half b) { return __half((float)a - (float)b); }
static inline __half __hmul(__half a, __half b) { return __half((float)a * (float)b); }
static inline __half __hdiv(__half a, __half b) { return __half((float)a / (float)b); }
static inline __half __hfma(__half a, __half b, __half c) { return __half(fab_emu::fma_round_odd((float)a, (float)b, (float)c)); }
static inline __half __hneg(__half a) { return __ushort_as_half((unsigned short)(a.__x ^ 0x8000u)); }
static inline __half __habs(__half a) { return __ushort_as_half((unsigned short)(a.__x & 0x7fffu)); }
/* max/min.f16: a NaN operand yields the other operand (as fmaxf). */
static inline __half __hmax(__half a, __half b) { return __half(fmaxf((float)a, (float)b)); }
static inline __half __hmin(__half a, __half b) { return __half(fminf((float)a, (float)b)); }
static inline bool __heq(__half a, __half b) { return (float)a == (float)b; }
static inline bool __hne(__half a, __half b) { return (float)a != (float)b; }
static inline bool __hlt(__half a, __half b) { return (float)a < (float)b; }
static inline bool __hle(__half a, __half b) { return (float)a <= (float)b; }
static inline bool __hgt(__half a, __half b) { return (float)a > (float)b; }
static inline bool __hge(__half a, __half b) { return (float)a >= (float)b; }
static inline bool __hisnan(__half a) { return (a.__x & 0x7fffu) > 0x7c00u; }
static inline int __hisinf(__half a) { return a.__x == 0x7c00u ? 1 : (a.__x == 0xfc00u ? -1 : 0); }
static inline __half hsqrt(__half a) { return __half(sqrtf((float)a)); }
static inline __half hrsqrt(__half a) { return __half(rsqrtf((float)a)); }
static inline __half hrcp(__half a) { return __half(1.0f / (float)a); }
static inline __half hexp(__half a) { return __half(expf((float)a)); }
static inline __half hlog(__half a) { return __half(logf((float)a)); }

static inline __half2 __hadd2(__half2 a, __half2 b) { return __half2(__hadd(a.x, b.x), __hadd(a.y, b.y)); }
static inline __half2 __hsub2(__half2 a, __half2 b) { return __half2(__hsub(a.x, b.x), __hsub(a.y, b.y)); }
static inline __half2 __hmul2(__half2 a, __half2 b) { return __half2(__hmul(a.x, b.x), __hmul(a.y, b.y)); }
static inline __half2 __h2div(__half2 a, __half2 b) { return __half2(__hdiv(a.x, b.x), __hdiv(a.y, b.y)); }
static inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) { return __half2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)); }
static inline __half2 __hneg2(__half2 a) { return __half2(__hneg(a.x), __hneg(a.y)); }
static inline __half2 __habs2(__half2 a) { return __half2(__habs(a.x), __habs(a.y)); }
static inline __half2 __hmax2(__half2 a, __half2 b) { return __half2(__hmax(a.x, b.x), __hmax(a.y, b.y)); }
static inline __half2 __hmin2(__half2 a, __half2 b) { return __half2(__hmin(a.x, b.x), __hmin(a.y, b.y)); }

/* ---- operators, as the real header provides them ---- */
static inline __half operator+(const __half &a, const __half &b) { return __hadd(a, b); }
static inline __half operator-(const __half &a, const __half &b) { return __hsub(a, b); }
static inline __half operator*(const __half &a, const __half &b) { return __hmul(a, b); }
static inline __half operator/(const __half &a, const __half &b) { return __hdiv(a, b); }
static inline __half &operator+=(__half &a, const __half &b) { return a = __hadd(a, b); }
static inline __half &operator-=(__half &a, const __half &b) { return a = __hsub(a, b); }
static inline __half &operator*=(__half &a, const __half &b) { return a = __hmul(a, b); }
static inline __half &operator/=(__half &a, const __half &b) { return a = __hdiv(a, b); }
static inline __half operator+(const __half &a) { return a; }
static inline __half operator-(const __half &a) { return __hneg(a); }
static inline __half &operator++(__half &a) { return a = __hadd(a, __half(1.0f)); }
static inline __half &operator--(__half &a) { return a = __hsub(a, __half(1.0f)); }
static inline __half operator++(__half &a, int) { __half o = a; ++a; return o; }
static inline __half operator--(__half &a, int) { __half o = a; --a; return o; }
static inline bool operator==(const __half &a, const __half &b) { return __heq(a, b); }
static inline bool operator!=(const __half &a, const __half &b) { return __hne(a, b); }
static inline bool operator<(const __half &a, const __half &b) { return __hlt(a, b); }
static inline bool operator<=(const __half &a, const __half &b) { return __hle(a, b); }
static inline bool operator>(const __half &a, const __half &b) { return __hgt(a, b); }
static inline bool operator>=(const __half &a, const __half &b) { return __hge(a, b); }
static inline __half2 operator+(const __half2 &a, const __half2 &b) { return __hadd2(a, b); }
static inline __half2 operator-(const __half2 &a, const __half2 &b) { return __hsub2(a, b); }
static inline __half2 operator*(const __half2 &a, const __half2 &b) { return __hmul2(a, b); }
static inline __half2 operator/(const __half2 &a, const __half2 &b) { return __h2div(a, b); }
static inline __half2 &operator+=(__half2 &a, const __half2 &b) { return a = __hadd2(a, b); }
static inline __half2 &operator-=(__half2 &a, const __half2 &b) { return a = __hsub2(a, b); }
static inline __half2 &operator*=(__half2 &a, const __half2 &b) { return a = __hmul2(a, b); }
static inline __half2 &operator/=(__half2 &a, const __half2 &b) { return a = __h2div(a, b); }
static inline __half2 operator-(const __half2 &a) { return __hneg2(a); }
static inline bool operator==(const __half2 &a, const __half2 &b) { return __heq(a.x, b.x) && __heq(a.y, b.y); }
static inline bool operator!=(const __half2 &a, const __half2 &b) { return __hne(a.x, b.x) && __hne(a.y, b.y); }

/* atomicAdd on __half2 (sm_60+): each half added atomically as one 32-bit word. */
static inline __half2 atomicAdd(__half2 *a, __half2 v)
{
    fab_emu::note_float_atomic(a, sizeof *a);
    return fab_emu::atomic_update(a, [v](__half2 o) { return __hadd2(o, v); });
}

#endif /* FAB_EMU_CUDA_FP16_H */
