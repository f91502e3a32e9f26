/*
 * cuda_runtime.h -- fabriek SIMT emulator's stand-in for CUDA's C++ runtime header.
 *
 * With this header a kernel file (.cu) compiles with the host C++ compiler:
 *   - the CUDA keywords become plain C++ (__global__/__device__ vanish,
 *     __shared__ becomes `static thread_local`: one copy per OS worker thread,
 *     and a worker runs one block at a time, so one copy per block);
 *   - threadIdx/blockIdx/blockDim/gridDim read the running emulated thread;
 *   - barriers, warp collectives and atomics call the emulator (emu/src/).
 * Numerics of the math intrinsics follow the CUDA Programming Guide; where the GPU
 * uses a hardware approximation the emulator computes the exact value (within the
 * documented error bound): see docs/EMULATOR.md, "Numerics".
 */
#ifndef FAB_EMU_CUDA_RUNTIME_H
#define FAB_EMU_CUDA_RUNTIME_H

#ifndef __cplusplus
#error "cuda_runtime.h (emulator) is C++; C files include cuda_runtime_api.h"
#endif

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_runtime_api.h"
#include "fab_emu/device.h"

/* ---- keywords ---- */
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __grid_constant__
/* Static shared memory: one instance per OS worker thread, i.e. per running block.
 * `extern __shared__` arrays cannot work this way: use FAB_DYNAMIC_SMEM (ptx.cuh). */
#define __shared__ static thread_local

/* ---- built-in variables ----
 * threadIdx, blockIdx, blockDim and gridDim are thread_local variables of the worker OS
 * thread (declared in fab_emu/device.h): the scheduler sets blockIdx/blockDim/gridDim when
 * a block starts and threadIdx before it resumes each thread's fiber.  (Not macros, so that
 * cudaLaunchConfig_t's .gridDim/.blockDim fields keep working.) */
static constexpr int warpSize = 32;

/* ---- vector constructors ---- */
static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
static inline int2 make_int2(int x, int y) { return int2{x, y}; }
static inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
static inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }
static inline double2 make_double2(double x, double y) { return double2{x, y}; }

/* ---- launch ---- */
namespace fab_emu {
/* The kernel and its converted arguments; every emulated thread calls the kernel
 * with its own copies of the arguments, as kernel parameters are per thread. */
template <class... Exp>
struct KernelClosure {
    void (*kernel)(Exp...);
    std::tuple<typename std::decay<Exp>::type...> args;
    static void invoke(const void *p)
    {
        const KernelClosure *c = static_cast<const KernelClosure *>(p);
        std::apply(c->kernel, c->args);
    }
};
} // namespace fab_emu

/* Same shape as the real header's C++ overload. */
template <typename... ExpTypes, typename... ActTypes>
static inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t *config, void (*kernel)(ExpTypes...),
                                             ActTypes &&...args)
{
    static_assert(sizeof...(ExpTypes) == sizeof...(ActTypes), "cudaLaunchKernelEx: wrong number of kernel arguments");
    fab_emu::KernelClosure<ExpTypes...> c{kernel, {std::forward<ActTypes>(args)...}};
    return fab_emu_launch(config, reinterpret_cast<const void *>(kernel), &fab_emu::KernelClosure<ExpTypes...>::invoke,
                          &c);
}

namespace fab_emu {
template <class... Exp, size_t... I>
inline cudaError_t launch_from_array(void (*kernel)(Exp...), const cudaLaunchConfig_t *cfg, void **args,
                                     std::index_sequence<I...>)
{
    return cudaLaunchKernelEx(cfg, kernel, *static_cast<typename std::decay<Exp>::type *>(args[I])...);
}
} // namespace fab_emu

/* cudaLaunchKernel with the kernel's type known (the real header's template form). */
template <class... Exp>
static inline cudaError_t cudaLaunchKernel(void (*kernel)(Exp...), dim3 grid, dim3 block, void **args,
                                           size_t smem = 0, cudaStream_t stream = 0)
{
    cudaLaunchConfig_t cfg = {grid, block, smem, stream, nullptr, 0};
    return fab_emu::launch_from_array(kernel, &cfg, args, std::index_sequence_for<Exp...>{});
}

/* __constant__/__device__ variables are ordinary globals under emulation. */
template <class T>
static inline cudaError_t cudaMemcpyToSymbol(T &symbol, const void *src, size_t count, size_t offset = 0,
                                             cudaMemcpyKind kind = cudaMemcpyHostToDevice)
{
    (void)kind;
    if (offset + count > sizeof(T)) return cudaErrorInvalidValue;
    memcpy(reinterpret_cast<char *>(&symbol) + offset, src, count);
    return cudaSuccess;
}
template <class T>
static inline cudaError_t cudaMemcpyFromSymbol(void *dst, const T &symbol, size_t count, size_t offset = 0,
                                               cudaMemcpyKind kind = cudaMemcpyDeviceToHost)
{
    (void)kind;
    if (offset + count > sizeof(T)) return cudaErrorInvalidValue;
    memcpy(dst, reinterpret_cast<const char *>(&symbol) + offset, count);
    return cudaSuccess;
}

/* ---- block barriers ---- */
/* The default arguments name the caller's source line: the emulator checks that a
 * block meets at one __syncthreads (bar.sync is .aligned), whatever copies of it
 * the host compiler makes. */
static inline void __syncthreads(const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    fab_emu::barrier(0, 0, fab_emu::BAR_NONE, 0, true, file, line);
}
static inline int __syncthreads_count(int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    return fab_emu::barrier(0, 0, fab_emu::BAR_POPC, pred != 0, true, file, line);
}
static inline int __syncthreads_and(int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    return fab_emu::barrier(0, 0, fab_emu::BAR_AND, pred != 0, true, file, line);
}
static inline int __syncthreads_or(int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    return fab_emu::barrier(0, 0, fab_emu::BAR_OR, pred != 0, true, file, line);
}

/* ---- warp collectives (PTX shfl.sync / vote.sync / match.sync / redux.sync / bar.warp.sync) ---- */
static inline void __syncwarp(unsigned mask = 0xffffffffu) { fab_emu::warp_op(fab_emu::WOP_SYNC, mask, 0, 0, 0, nullptr); }
static inline unsigned __activemask() { return fab_emu::active_mask(); }
static inline unsigned __ballot_sync(unsigned mask, int pred)
{
    return (unsigned)fab_emu::warp_op(fab_emu::WOP_BALLOT, mask, pred != 0, 0, 0, nullptr);
}
static inline int __any_sync(unsigned mask, int pred) { return (int)fab_emu::warp_op(fab_emu::WOP_ANY, mask, pred != 0, 0, 0, nullptr); }
static inline int __all_sync(unsigned mask, int pred) { return (int)fab_emu::warp_op(fab_emu::WOP_ALL, mask, pred != 0, 0, 0, nullptr); }

namespace fab_emu {
template <class T>
inline uint64_t to_bits(T v)
{
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp shuffle of an unsupported type");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
inline T from_bits(uint64_t b)
{
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}
/* CUDA's width argument becomes PTX's c operand: segment mask in bits 12:8, clamp in 4:0. */
inline int shfl_c(int width, bool up)
{
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
        kernel_error("__shfl*_sync: width %d is not a power of two in [1, 32]", width);
    return ((32 - width) << 8) | (up ? 0 : 0x1f);
}
} // namespace fab_emu

template <class T>
static inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize)
{
    return fab_emu::from_bits<T>(fab_emu::warp_op(fab_emu::WOP_SHFL_IDX, mask, fab_emu::to_bits(var), srcLane,
                                                  fab_emu::shfl_c(width, false), nullptr));
}
template <class T>
static inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize)
{
    return fab_emu::from_bits<T>(fab_emu::warp_op(fab_emu::WOP_SHFL_UP, mask, fab_emu::to_bits(var), (int)delta,
                                                  fab_emu::shfl_c(width, true), nullptr));
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize)
{
    return fab_emu::from_bits<T>(fab_emu::warp_op(fab_emu::WOP_SHFL_DOWN, mask, fab_emu::to_bits(var), (int)delta,
                                                  fab_emu::shfl_c(width, false), nullptr));
}
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize)
{
    return fab_emu::from_bits<T>(fab_emu::warp_op(fab_emu::WOP_SHFL_BFLY, mask, fab_emu::to_bits(var), laneMask,
                                                  fab_emu::shfl_c(width, false), nullptr));
}
template <class T>
static inline unsigned __match_any_sync(unsigned mask, T value)
{
    return (unsigned)fab_emu::warp_op(fab_emu::WOP_MATCH_ANY, mask, fab_emu::to_bits(value), 0, 0, nullptr);
}
template <class T>
static inline unsigned __match_all_sync(unsigned mask, T value, int *pred)
{
    return (unsigned)fab_emu::warp_op(fab_emu::WOP_MATCH_ALL, mask, fab_emu::to_bits(value), 0, 0, pred);
}
/* redux.sync (sm_80) */
static inline unsigned __reduce_add_sync(unsigned mask, unsigned v) { return (unsigned)fab_emu::warp_op(fab_emu::WOP_REDUCE_ADD, mask, v, 0, 0, nullptr); }
static inline int __reduce_add_sync(unsigned mask, int v) { return (int)fab_emu::warp_op(fab_emu::WOP_REDUCE_ADD, mask, (uint32_t)v, 0, 0, nullptr); }
static inline unsigned __reduce_min_sync(unsigned mask, unsigned v) { return (unsigned)fab_emu::warp_op(fab_emu::WOP_REDUCE_MIN_U, mask, v, 0, 0, nullptr); }
static inline unsigned __reduce_max_sync(unsigned mask, unsigned v) { return (unsigned)fab_emu::warp_op(fab_emu::WOP_REDUCE_MAX_U, mask, v, 0, 0, nullptr); }
static inline int __reduce_min_sync(unsigned mask, int v) { return (int)fab_emu::warp_op(fab_emu::WOP_REDUCE_MIN_S, mask, (uint32_t)v, 0, 0, nullptr); }
static inline int __reduce_max_sync(unsigned mask, int v) { return (int)fab_emu::warp_op(fab_emu::WOP_REDUCE_MAX_S, mask, (uint32_t)v, 0, 0, nullptr); }
static inline unsigned __reduce_and_sync(unsigned mask, unsigned v) { return (unsigned)fab_emu::warp_op(fab_emu::WOP_REDUCE_AND, mask, v, 0, 0, nullptr); }
static inline unsigned __reduce_or_sync(unsigned mask, unsigned v) { return (unsigned)fab_emu::warp_op(fab_emu::WOP_REDUCE_OR, mask, v, 0, 0, nullptr); }
static inline unsigned __reduce_xor_sync(unsigned mask, unsigned v) { return (unsigned)fab_emu::warp_op(fab_emu::WOP_REDUCE_XOR, mask, v, 0, 0, nullptr); }

/* ---- memory fences, sleeping, traps ---- */
/* Fibers of one block share an OS thread, so only blocks on other workers need a fence. */
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
/* __nanosleep lets the other threads of the block run, so spin-wait loops that sleep progress. */
static inline void __nanosleep(unsigned ns) { (void)ns; fab_emu::yield(); }
[[noreturn]] static inline void __trap() { fab_emu::kernel_error("__trap() executed"); }
static inline void __brkpt() { __builtin_trap(); }
static inline long long clock64() { return (long long)__builtin_ia32_rdtsc(); }

/* ---- atomics: real host atomics (blocks may run on several OS threads) ---- */
namespace fab_emu {
template <class T, class F>
inline T atomic_update(T *addr, F f)
{
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomic of unsupported size");
    typedef typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type U;
    U *p = reinterpret_cast<U *>(addr);
    U old_bits = __atomic_load_n(p, __ATOMIC_RELAXED);
    for (;;) {
        T old_v, new_v;
        memcpy(&old_v, &old_bits, sizeof(T));
        new_v = f(old_v);
        U new_bits;
        memcpy(&new_bits, &new_v, sizeof(T));
        if (__atomic_compare_exchange_n(p, &old_bits, new_bits, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return old_v;
    }
}
} // namespace fab_emu

static inline int atomicAdd(int *a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicAdd(unsigned *a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
static inline unsigned long long atomicAdd(unsigned long long *a, unsigned long long v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
/* Float adds as the GPU's atom/red.add.f32: round to nearest even; on global memory
 * subnormals are flushed to zero (fab_emu::atomic_add_f32), on shared memory they are
 * kept, as are double adds' (PTX ISA, atom). Their sum depends on the order: the race
 * check does not compare the words they add to. */
static inline float atomicAdd(float *a, float v)
{
    fab_emu::note_float_atomic(a, sizeof *a);
    return fab_emu::atomic_update(a, [a, v](float o) {
        const float sum = o + v, flushed = fab_emu::atomic_add_f32(o, v);
        /* the two differ only where a subnormal is involved: only then ask (a lock and
         * a lookup) whether a is global memory */
        return memcmp(&sum, &flushed, sizeof sum) == 0 || !fab_emu::is_device_memory(a, sizeof *a) ? sum : flushed;
    });
}
static inline double atomicAdd(double *a, double v)
{
    fab_emu::note_float_atomic(a, sizeof *a);
    return fab_emu::atomic_update(a, [v](double o) { return o + v; });
}
static inline int atomicSub(int *a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicSub(unsigned *a, unsigned v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }
static inline int atomicExch(int *a, int v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicExch(unsigned *a, unsigned v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }
static inline unsigned long long atomicExch(unsigned long long *a, unsigned long long v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }
static inline float atomicExch(float *a, float v) { return fab_emu::atomic_update(a, [v](float) { return v; }); }
#define FAB_EMU_ATOMIC_MINMAX(T)                                                                              \
    static inline T atomicMax(T *a, T v) { return fab_emu::atomic_update(a, [v](T o) { return o > v ? o : v; }); } \
    static inline T atomicMin(T *a, T v) { return fab_emu::atomic_update(a, [v](T o) { return o < v ? o : v; }); }
FAB_EMU_ATOMIC_MINMAX(int)
FAB_EMU_ATOMIC_MINMAX(unsigned)
FAB_EMU_ATOMIC_MINMAX(long long)
FAB_EMU_ATOMIC_MINMAX(unsigned long long)
#undef FAB_EMU_ATOMIC_MINMAX
static inline int atomicAnd(int *a, int v) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicAnd(unsigned *a, unsigned v) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); }
static inline int atomicOr(int *a, int v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicOr(unsigned *a, unsigned v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }
static inline int atomicXor(int *a, int v) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicXor(unsigned *a, unsigned v) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); }
/* atomicInc/Dec: wrap at `limit` as PTX atom.inc/.dec define. */
static inline unsigned atomicInc(unsigned *a, unsigned limit)
{
    return fab_emu::atomic_update(a, [limit](unsigned o) { return o >= limit ? 0u : o + 1; });
}
static inline unsigned atomicDec(unsigned *a, unsigned limit)
{
    return fab_emu::atomic_update(a, [limit](unsigned o) { return (o == 0 || o > limit) ? limit : o - 1; });
}
template <class T>
static inline T fab_emu_atomic_cas(T *a, T compare, T val)
{
    __atomic_compare_exchange_n(a, &compare, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare; /* the old value either way */
}
static inline int atomicCAS(int *a, int c, int v) { return fab_emu_atomic_cas(a, c, v); }
static inline unsigned atomicCAS(unsigned *a, unsigned c, unsigned v) { return fab_emu_atomic_cas(a, c, v); }
static inline unsigned long long atomicCAS(unsigned long long *a, unsigned long long c, unsigned long long v) { return fab_emu_atomic_cas(a, c, v); }
static inline unsigned short atomicCAS(unsigned short *a, unsigned short c, unsigned short v) { return fab_emu_atomic_cas(a, c, v); }

/* ---- loads/stores with cache hints: plain accesses ---- */
template <class T> static inline T __ldg(const T *p) { return *p; }
template <class T> static inline T __ldcg(const T *p) { return *p; }
template <class T> static inline T __ldca(const T *p) { return *p; }
template <class T> static inline T __ldcs(const T *p) { return *p; }
template <class T> static inline T __ldlu(const T *p) { return *p; }
template <class T> static inline T __ldcv(const T *p) { return *p; }
template <class T> static inline void __stcg(T *p, T v) { *p = v; }
template <class T> static inline void __stcs(T *p, T v) { *p = v; }
template <class T> static inline void __stwb(T *p, T v) { *p = v; }
template <class T> static inline void __stwt(T *p, T v) { *p = v; }
static inline size_t __cvta_generic_to_shared(const void *p) { return (size_t)p; }

/* ---- integer intrinsics ---- */
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned __brev(unsigned x)
{
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
/* prmt.b32 default mode: result byte i = byte s[i] of the 8-byte value {y,x}. */
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s)
{
    unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
static inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned sh)
{
    unsigned long long v = ((unsigned long long)hi << 32) | lo;
    return (unsigned)((v << (sh & 31)) >> 32);
}
static inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned sh)
{
    unsigned long long v = ((unsigned long long)hi << 32) | lo;
    return (unsigned)(v >> (sh & 31));
}
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
static inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
__extension__ typedef unsigned __int128 fab_emu_u128;
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) { return (unsigned long long)(((fab_emu_u128)a * b) >> 64); }
static inline int __mul24(int a, int b) { return (int)(((long long)(a << 8 >> 8)) * (b << 8 >> 8)); }

/* ---- min/max overloads as CUDA's math API ---- */
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
static inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
static inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
static inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

/* ---- bit casts ---- */
static inline unsigned __float_as_uint(float x) { unsigned u; memcpy(&u, &x, 4); return u; }
static inline float __uint_as_float(unsigned u) { float x; memcpy(&x, &u, 4); return x; }
static inline int __float_as_int(float x) { int u; memcpy(&u, &x, 4); return u; }
static inline float __int_as_float(int u) { float x; memcpy(&x, &u, 4); return x; }
static inline long long __double_as_longlong(double x) { long long u; memcpy(&u, &x, 8); return u; }
static inline double __longlong_as_double(long long u) { double x; memcpy(&x, &u, 8); return x; }

/* ---- float intrinsics ----
 * Correctly rounded ones (_rn) are exact on the host (SSE arithmetic is IEEE RNE; the
 * emulator never enables FTZ/DAZ).  The fast approximations are computed as accurately as
 * the host allows; the GPU's results may differ by up to the bound the CUDA Programming
 * Guide states for each (docs/EMULATOR.md lists them). */
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
/* rsqrt.approx.f32: GPU max error 2 ulp; here 1/sqrt rounded once. */
static inline float rsqrtf(float x) { return (float)(1.0 / sqrt((double)x)); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float __frsqrt_rn(float x) { return (float)(1.0 / sqrt((double)x)); }
/* __fdividef: GPU returns 0 for 2^126 < |y| < 2^128 (x finite) and otherwise x*(1/y) within 2 ulp. */
static inline float __fdividef(float x, float y)
{
    float ay = fabsf(y);
    if (ay > 0x1p126f && ay < INFINITY) return isinf(x) ? NAN : 0.0f * x * y;
    return x / y;
}
/* __expf = ex2.approx(x * log2 e): the product rounds to float first, as on the GPU;
 * ex2 is then computed exactly (GPU: 2 + floor(|1.16 x|) ulp over the whole). */
static inline float fab_emu__expf(float x) { return exp2f(x * 1.44269504088896341f); }
static inline float fab_emu__exp10f(float x) { return exp2f(x * 3.32192809488736235f); }
/* __logf = lg2.approx(x) * ln 2;  __log2f = lg2.approx(x). */
static inline float fab_emu__log2f(float x) { return log2f(x); }
static inline float fab_emu__logf(float x) { return log2f(x) * 0.693147180559945309f; }
static inline float fab_emu__log10f(float x) { return log2f(x) * 0.301029995663981195f; }
static inline float fab_emu__sinf(float x) { return sinf(x); }
static inline float fab_emu__cosf(float x) { return cosf(x); }
static inline float fab_emu__tanf(float x) { return tanf(x); }
static inline void fab_emu__sincosf(float x, float *s, float *c) { *s = sinf(x); *c = cosf(x); }
static inline float fab_emu__powf(float x, float y) { return exp2f(y * log2f(x)); }
/* glibc declares __expf, __logf, ... as its own internal functions, so these names are
 * macros for the emulator's versions (defined after <math.h> has been included). */
#define __expf fab_emu__expf
#define __exp10f fab_emu__exp10f
#define __log2f fab_emu__log2f
#define __logf fab_emu__logf
#define __log10f fab_emu__log10f
#define __sinf fab_emu__sinf
#define __cosf fab_emu__cosf
#define __tanf fab_emu__tanf
#define __sincosf fab_emu__sincosf
#define __powf fab_emu__powf
static inline float __saturatef(float x) { return isnan(x) ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
/* float -> int conversions (cvt.rni / cvt.rzi), NaN -> 0 and saturating as PTX cvt. */
namespace fab_emu {
inline int sat_int(double v)
{
    if (v != v) return 0;
    if (v >= 2147483647.0) return 2147483647;
    if (v <= -2147483648.0) return (-2147483647 - 1);
    return (int)v;
}
} // namespace fab_emu
static inline int __float2int_rn(float x) { return fab_emu::sat_int(nearbyint((double)x)); }
static inline int __float2int_rz(float x) { return fab_emu::sat_int(trunc((double)x)); }
static inline int __float2int_rd(float x) { return fab_emu::sat_int(floor((double)x)); }
static inline int __float2int_ru(float x) { return fab_emu::sat_int(ceil((double)x)); }
static inline float __int2float_rn(int x) { return (float)x; }
static inline float __uint2float_rn(unsigned x) { return (float)x; }

#endif /* FAB_EMU_CUDA_RUNTIME_H */
