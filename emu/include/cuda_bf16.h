/*
 * cuda_bf16.h -- fabriek SIMT emulator's __nv_bfloat16 and __nv_bfloat162.
 *
 * Conversions are bit-exact with the GPU's cvt.rn.bf16.f32 / shift-back
 * (fab_emu/half_bits.h).  Arithmetic computes in float and rounds once to
 * bf16; float's 24 bits >= 2*8+2, so each result equals the correctly rounded
 * bf16 operation (the GPU computes __hadd/__hmul/__hfma with fma.rn.bf16); __hfma
 * itself rounds to odd in double first (fab_emu::fma_round_odd) to avoid double rounding.
 */
#ifndef FAB_EMU_CUDA_BF16_H
#define FAB_EMU_CUDA_BF16_H

#include "cuda_fp16.h"

struct __nv_bfloat16_raw {
    unsigned short x;
};
struct __nv_bfloat162_raw {
    unsigned short x, y;
};

struct alignas(2) __nv_bfloat16 {
    unsigned short __x;

    __nv_bfloat16() = default;
    constexpr __nv_bfloat16(const __nv_bfloat16_raw &r) : __x(r.x) {}
    __nv_bfloat16(float f) : __x(fab_emu::f32_to_bf16_rn(f)) {}
    __nv_bfloat16(double d) : __x(fab_emu::f32_to_bf16_rn(fab_emu::f64_to_f32_round_odd(d))) {}
    __nv_bfloat16(int v) : __nv_bfloat16((double)v) {}
    __nv_bfloat16(unsigned v) : __nv_bfloat16((double)v) {}
    __nv_bfloat16(short v) : __nv_bfloat16((float)v) {}
    __nv_bfloat16(unsigned short v) : __nv_bfloat16((float)v) {}
    __nv_bfloat16(long v) : __nv_bfloat16((double)v) {}
    __nv_bfloat16(unsigned long v) : __nv_bfloat16((double)v) {}
    __nv_bfloat16(long long v) : __nv_bfloat16((double)v) {}
    __nv_bfloat16(unsigned long long v) : __nv_bfloat16((double)v) {}
    operator float() const { return fab_emu::bf16_to_f32(__x); }
    operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
    __nv_bfloat16 &operator=(const __nv_bfloat16_raw &r) { __x = r.x; return *this; }
};

struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
    __nv_bfloat162() = default;
    constexpr __nv_bfloat162(const __nv_bfloat16 &a, const __nv_bfloat16 &b) : x(a), y(b) {}
    __nv_bfloat162(const __nv_bfloat162_raw &r) : x(__nv_bfloat16_raw{r.x}), y(__nv_bfloat16_raw{r.y}) {}
    operator __nv_bfloat162_raw() const { return __nv_bfloat162_raw{x.__x, y.__x}; }
};

typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

/* ---- conversions ---- */
static inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
static inline __nv_bfloat16 __float2bfloat16_rz(float f) { return __nv_bfloat16(__nv_bfloat16_raw{fab_emu::f32_to_bf16_rz(f)}); }
static inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }
static inline float __bfloat162float(__nv_bfloat16 h) { return fab_emu::bf16_to_f32(h.__x); }
static inline __nv_bfloat162 __float2bfloat162_rn(float f) { return __nv_bfloat162(__nv_bfloat16(f), __nv_bfloat16(f)); }
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return __nv_bfloat162(__nv_bfloat16(a), __nv_bfloat16(b)); }
static inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __nv_bfloat162(__nv_bfloat16(f.x), __nv_bfloat16(f.y)); }
static inline float2 __bfloat1622float2(__nv_bfloat162 h) { return make_float2(__bfloat162float(h.x), __bfloat162float(h.y)); }
static inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
static inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }
static inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
static inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }
static inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat162(a, b); }
static inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 a) { return __nv_bfloat162(a, a); }
static inline __nv_bfloat162 __lows2bfloat162(__nv_bfloat162 a, __nv_bfloat162 b) { return __nv_bfloat162(a.x, b.x); }
static inline __nv_bfloat162 __highs2bfloat162(__nv_bfloat162 a, __nv_bfloat162 b) { return __nv_bfloat162(a.y, b.y); }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
static inline short __bfloat16_as_short(__nv_bfloat16 h) { return (short)h.__x; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16(__nv_bfloat16_raw{u}); }
static inline __nv_bfloat16 __short_as_bfloat16(short u) { return __nv_bfloat16(__nv_bfloat16_raw{(unsigned short)u}); }
static inline __nv_bfloat16 __int2bfloat16_rn(int v) { return __nv_bfloat16(v); }
static inline int __bfloat162int_rz(__nv_bfloat16 h) { return __float2int_rz(__bfloat162float(h)); }
static inline int __bfloat162int_rn(__nv_bfloat16 h) { return __float2int_rn(__bfloat162float(h)); }

/* ---- arithmetic ---- */
typedef __nv_bfloat16 fab_emu_bf16;
static inline fab_emu_bf16 __hadd(fab_emu_bf16 a, fab_emu_bf16 b) { return fab_emu_bf16((float)a + (float)b); }
static inline fab_emu_bf16 __hsub(fab_emu_bf16 a, fab_emu_bf16 b) { return fab_emu_bf16((float)a - (float)b); }
static inline fab_emu_bf16 __hmul(fab_emu_bf16 a, fab_emu_bf16 b) { return fab_emu_bf16((float)a * (float)b); }
static inline fab_emu_bf16 __hdiv(fab_emu_bf16 a, fab_emu_bf16 b) { return fab_emu_bf16((float)a / (float)b); }
static inline fab_emu_bf16 __hfma(fab_emu_bf16 a, fab_emu_bf16 b, fab_emu_bf16 c) { return fab_emu_bf16(fab_emu::fma_round_odd((float)a, (float)b, (float)c)); }
static inline fab_emu_bf16 __hneg(fab_emu_bf16 a) { return __ushort_as_bfloat16((unsigned short)(a.__x ^ 0x8000u)); }
static inline fab_emu_bf16 __habs(fab_emu_bf16 a) { return __ushort_as_bfloat16((unsigned short)(a.__x & 0x7fffu)); }
static inline fab_emu_bf16 __hmax(fab_emu_bf16 a, fab_emu_bf16 b) { return fab_emu_bf16(fmaxf((float)a, (float)b)); }
static inline fab_emu_bf16 __hmin(fab_emu_bf16 a, fab_emu_bf16 b) { return fab_emu_bf16(fminf((float)a, (float)b)); }
static inline bool __heq(fab_emu_bf16 a, fab_emu_bf16 b) { return (float)a == (float)b; }
static inline bool __hne(fab_emu_bf16 a, fab_emu_bf16 b) { return (float)a != (float)b; }
static inline bool __hlt(fab_emu_bf16 a, fab_emu_bf16 b) { return (float)a < (float)b; }
static inline bool __hle(fab_emu_bf16 a, fab_emu_bf16 b) { return (float)a <= (float)b; }
static inline bool __hgt(fab_emu_bf16 a, fab_emu_bf16 b) { return (float)a > (float)b; }
static inline bool __hge(fab_emu_bf16 a, fab_emu_bf16 b) { return (float)a >= (float)b; }
static inline bool __hisnan(fab_emu_bf16 a) { return (a.__x & 0x7fffu) > 0x7f80u; }
static inline int __hisinf(fab_emu_bf16 a) { return a.__x == 0x7f80u ? 1 : (a.__x == 0xff80u ? -1 : 0); }
static inline fab_emu_bf16 hsqrt(fab_emu_bf16 a) { return fab_emu_bf16(sqrtf((float)a)); }
static inline fab_emu_bf16 hrsqrt(fab_emu_bf16 a) { return fab_emu_bf16(rsqrtf((float)a)); }
static inline fab_emu_bf16 hrcp(fab_emu_bf16 a) { return fab_emu_bf16(1.0f / (float)a); }
static inline fab_emu_bf16 hexp(fab_emu_bf16 a) { return fab_emu_bf16(expf((float)a)); }
static inline fab_emu_bf16 hlog(fab_emu_bf16 a) { return fab_emu_bf16(logf((float)a)); }

typedef __nv_bfloat162 fab_emu_bf162;
static inline fab_emu_bf162 __hadd2(fab_emu_bf162 a, fab_emu_bf162 b) { return fab_emu_bf162(__hadd(a.x, b.x), __hadd(a.y, b.y)); }
static inline fab_emu_bf162 __hsub2(fab_emu_bf162 a, fab_emu_bf162 b) { return fab_emu_bf162(__hsub(a.x, b.x), __hsub(a.y, b.y)); }
static inline fab_emu_bf162 __hmul2(fab_emu_bf162 a, fab_emu_bf162 b) { return fab_emu_bf162(__hmul(a.x, b.x), __hmul(a.y, b.y)); }
static inline fab_emu_bf162 __h2div(fab_emu_bf162 a, fab_emu_bf162 b) { return fab_emu_bf162(__hdiv(a.x, b.x), __hdiv(a.y, b.y)); }
static inline fab_emu_bf162 __hfma2(fab_emu_bf162 a, fab_emu_bf162 b, fab_emu_bf162 c) { return fab_emu_bf162(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)); }
static inline fab_emu_bf162 __hneg2(fab_emu_bf162 a) { return fab_emu_bf162(__hneg(a.x), __hneg(a.y)); }
static inline fab_emu_bf162 __habs2(fab_emu_bf162 a) { return fab_emu_bf162(__habs(a.x), __habs(a.y)); }
static inline fab_emu_bf162 __hmax2(fab_emu_bf162 a, fab_emu_bf162 b) { return fab_emu_bf162(__hmax(a.x, b.x), __hmax(a.y, b.y)); }
static inline fab_emu_bf162 __hmin2(fab_emu_bf162 a, fab_emu_bf162 b) { return fab_emu_bf162(__hmin(a.x, b.x), __hmin(a.y, b.y)); }

/* ---- operators ---- */
static inline fab_emu_bf16 operator+(const fab_emu_bf16 &a, const fab_emu_bf16 &b) { return __hadd(a, b); }
static inline fab_emu_bf16 operator-(const fab_emu_bf16 &a, const fab_emu_bf16 &b) { return __hsub(a, b); }
static inline fab_emu_bf16 operator*(const fab_emu_bf16 &a, const fab_emu_bf16 &b) { return __hmul(a, b); }
static inline fab_emu_bf16 operator/(const fab_emu_bf16 &a, const fab_emu_bf16 &b) { return __hdiv(a, b); }
static inline fab_emu_bf16 &operator+=(fab_emu_bf16 &a, const fab_emu_bf16 &b) { return a = __hadd(a, b); }
static inline fab_emu_bf16 &operator-=(fab_emu_bf16 &a, const fab_emu_bf16 &b) { return a = __hsub(a, b); }
static inline fab_emu_bf16 &operator*=(fab_emu_bf16 &a, const fab_emu_bf16 &b) { return a = __hmul(a, b); }
static inline fab_emu_bf16 &operator/=(fab_emu_bf16 &a, const fab_emu_bf16 &b) { return a = __hdiv(a, b); }
static inline fab_emu_bf16 operator+(const fab_emu_bf16 &a) { return a; }
static inline fab_emu_bf16 operator-(const fab_emu_bf16 &a) { return __hneg(a); }
static inline bool operator==(const fab_emu_bf16 &a, const fab_emu_bf16 &b) { return __heq(a, b); }
static inline bool operator!=(const fab_emu_bf16 &a, const fab_emu_bf16 &b) { return __hne(a, b); }
static inline bool operator<(const fab_emu_bf16 &a, const fab_emu_bf16 &b) { return __hlt(a, b); }
static inline bool operator<=(const fab_emu_bf16 &a, const fab_emu_bf16 &b) { return __hle(a, b); }
static inline bool operator>(const fab_emu_bf16 &a, const fab_emu_bf16 &b) { return __hgt(a, b); }
static inline bool operator>=(const fab_emu_bf16 &a, const fab_emu_bf16 &b) { return __hge(a, b); }
static inline fab_emu_bf162 operator+(const fab_emu_bf162 &a, const fab_emu_bf162 &b) { return __hadd2(a, b); }
static inline fab_emu_bf162 operator-(const fab_emu_bf162 &a, const fab_emu_bf162 &b) { return __hsub2(a, b); }
static inline fab_emu_bf162 operator*(const fab_emu_bf162 &a, const fab_emu_bf162 &b) { return __hmul2(a, b); }
static inline fab_emu_bf162 operator/(const fab_emu_bf162 &a, const fab_emu_bf162 &b) { return __h2div(a, b); }
static inline fab_emu_bf162 &operator+=(fab_emu_bf162 &a, const fab_emu_bf162 &b) { return a = __hadd2(a, b); }
static inline fab_emu_bf162 &operator*=(fab_emu_bf162 &a, const fab_emu_bf162 &b) { return a = __hmul2(a, b); }
static inline fab_emu_bf162 operator-(const fab_emu_bf162 &a) { return __hneg2(a); }

static inline __nv_bfloat162 atomicAdd(__nv_bfloat162 *a, __nv_bfloat162 v)
{
    fab_emu::note_float_atomic(a, sizeof *a);
    return fab_emu::atomic_update(a, [v](__nv_bfloat162 o) { return __hadd2(o, v); });
}

#endif /* FAB_EMU_CUDA_BF16_H */
