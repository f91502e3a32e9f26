/*
 * kernels/common/ptx.cuh -- the only place in fabriek with inline PTX.
 *
 * Each wrapper is a small named function with two bodies: the GPU one (inline asm,
 * compiled by nvcc) and the emulator one (FAB_EMULATE_CUDA: a call into emu/, which
 * implements the instruction's PTX ISA semantics on the CPU).  Kernels call only these.
 *
 * Conventions
 *   - Shared-memory operands are generic C++ pointers to shared memory.  The GPU body
 *     converts them with __cvta_generic_to_shared (one cvta, usually hoisted by the
 *     compiler); the emulator uses them directly.  There is no 32-bit "shared address"
 *     type to carry around.
 *   - Register fragments are uint32_t arrays, as in hand-written CUDA: two 16-bit
 *     values per register, the lower-indexed one in the low half (pack with
 *     fab__pack_bf16x2 / fab__pack_f16x2).  mma accumulators are float[4].
 *   - Fragment layouts are those of the PTX ISA ("Matrix fragments for mma.m16n8k16" etc.);
 *     each function's comment gives the mapping with groupID = lane/4, tig = lane%4.
 *   - Dynamic shared memory is declared with FAB_DYNAMIC_SMEM(type, name) (below), never
 *     with a raw `extern __shared__` array: the emulator cannot provide one.
 *
 * Targets: sm_80 and newer (sm_90a for stmatrix); wgmma is sm_90a only (it traps
 * elsewhere); mbarrier and TMA need sm_90.
 */
#ifndef FAB_KERNELS_COMMON_PTX_CUH
#define FAB_KERNELS_COMMON_PTX_CUH

#include <stdint.h>
#include <string.h>

#include <cuda.h> /* CUtensorMap (types only: nothing links libcuda) */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#ifdef FAB_EMULATE_CUDA
#include "fab_emu/device.h"
#endif

/* ------------------------------------------------------------------ dynamic shared memory */

/*
 * FAB_DYNAMIC_SMEM(type, name): inside a kernel, declares `type *name` pointing at the
 * block's dynamic shared memory (the launch's dynamicSmemBytes).  The base is at least
 * 16-byte aligned (CUDA's guarantee; the emulator gives 128).  Use it once per kernel
 * and carve sub-arrays from it.
 */
#ifdef FAB_EMULATE_CUDA
#define FAB_DYNAMIC_SMEM(type, name) type *name = reinterpret_cast<type *>(::fab_emu::dynamic_smem())
#else
#define FAB_DYNAMIC_SMEM(type, name)                                   \
    extern __shared__ __align__(16) unsigned char fab__dynamic_smem[]; \
    type *name = reinterpret_cast<type *>(fab__dynamic_smem)
#endif

/* ------------------------------------------------------------------ plain shared loads and stores */

/*
 * fab__st_shared(p, v) / fab__ld_shared(p): an ordinary store or load of a value in
 * shared memory (4 or 8 bytes: uint32_t, float, float2, ...). On the GPU a plain
 * dereference; under the emulator the access is also shown to its race detector
 * and bank model, which see nothing of a bare C++ access. Kernels use these for
 * the shared-memory traffic that does not go through ldmatrix, stmatrix or
 * cp.async.
 */
template <typename V>
static __device__ __forceinline__ void fab__st_shared(V *p, V v)
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::shared_access(p, sizeof(V), true);
#endif
    *p = v;
}

template <typename V>
static __device__ __forceinline__ V fab__ld_shared(const V *p)
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::shared_access(p, sizeof(V), false);
#endif
    return *p;
}

#ifndef FAB_EMULATE_CUDA
/* 32-bit .shared address of a generic pointer into shared memory. */
static __device__ __forceinline__ uint32_t fab__smem_u32(const void *p)
{
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

/* ------------------------------------------------------------------ packing helpers */

/* Two floats -> one register of two bf16 / f16 (round to nearest even); lo in the low half. */
static __device__ __forceinline__ uint32_t fab__pack_bf16x2(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t r;
    memcpy(&r, &v, 4);
    return r;
}
static __device__ __forceinline__ uint32_t fab__pack_f16x2(float lo, float hi)
{
    __half2 v = __floats2half2_rn(lo, hi);
    uint32_t r;
    memcpy(&r, &v, 4);
    return r;
}

/* ------------------------------------------------------------------ misc */

/* %laneid */
static __device__ __forceinline__ unsigned fab__lane_id()
{
#ifdef FAB_EMULATE_CUDA
    return ::fab_emu::current().lane;
#else
    unsigned r;
    asm volatile("mov.u32 %0, %%laneid;" : "=r"(r));
    return r;
#endif
}

/* cvt.rna.tf32.f32: round a float to tf32 (10 mantissa bits, nearest, ties away from zero);
 * the result is a float bit pattern with the low 13 bits zero.  NaN stays NaN. */
static __device__ __forceinline__ uint32_t fab__cvt_rna_tf32(float x)
{
#ifdef FAB_EMULATE_CUDA
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffffffu;
    if ((u & 0x7f800000u) == 0x7f800000u) return u; /* inf */
    return (u + 0x1000u) & 0xffffe000u;             /* add half an ulp of tf32, truncate: ties away */
#else
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#endif
}

/* tanh.approx.f32 (sm_75+).  GPU: max relative error about 2^-10.99; emulator: exact tanh. */
static __device__ __forceinline__ float fab__tanh_approx(float x)
{
#ifdef FAB_EMULATE_CUDA
    return (float)tanh((double)x);
#else
    float r;
    asm("tanh.approx.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
#endif
}

/* ex2.approx.f32: 2^x.  GPU: max relative error 2^-22 (about 2 ulp), subnormals kept;
 * emulator: exact 2^x rounded once. */
static __device__ __forceinline__ float fab__ex2_approx(float x)
{
#ifdef FAB_EMULATE_CUDA
    return (float)exp2((double)x);
#else
    float r;
    asm("ex2.approx.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
#endif
}

/* ------------------------------------------------------------------ named barriers */

/* bar.sync id, count: wait until `count` threads (a multiple of 32; whole warps) have
 * arrived at barrier `id` (0..15).  Barrier 0 with all threads is __syncthreads. */
static __device__ __forceinline__ void fab__bar_sync(unsigned id, unsigned count)
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::barrier((int)id, (int)count, ::fab_emu::BAR_NONE, 0, true);
#else
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(count) : "memory");
#endif
}

/* bar.arrive id, count: signal arrival without waiting (producer side). */
static __device__ __forceinline__ void fab__bar_arrive(unsigned id, unsigned count)
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::barrier((int)id, (int)count, ::fab_emu::BAR_NONE, 0, false);
#else
    asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(count) : "memory");
#endif
}

/* ------------------------------------------------------------------ mma.sync */

/*
 * mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: D = A*B + C for one warp.
 *   A 16x16 bf16 (row-major), 4 regs: a[r] = A[g + 8*(r&1)][2t + 8*(r>>1) + {0,1}]
 *   B 16x8  bf16 (k x n),     2 regs: b[r] = B[2t + 8r + {0,1}][g]
 *   C,D 16x8 f32,             4 regs: c[r] = C[g + 8*(r>>1)][2t + (r&1)]
 * with g = lane/4, t = lane%4.  d may alias c.
 */
static __device__ __forceinline__ void fab__mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4],
                                                              const uint32_t (&b)[2], const float (&c)[4])
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::mma(::fab_emu::MMA_M16N8K16_BF16, d, a, b, c);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
                   "f"(c[2]), "f"(c[3]));
#endif
}

/* As fab__mma_m16n8k16_bf16 with f16 A and B. */
static __device__ __forceinline__ void fab__mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4],
                                                             const uint32_t (&b)[2], const float (&c)[4])
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::mma(::fab_emu::MMA_M16N8K16_F16, d, a, b, c);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
                   "f"(c[2]), "f"(c[3]));
#endif
}

/*
 * mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32:
 *   A 16x8 f16, 2 regs: a[r] = A[g + 8r][2t + {0,1}]
 *   B 8x8  f16, 1 reg:  b[0] = B[2t + {0,1}][g]
 *   C,D as m16n8k16.
 */
static __device__ __forceinline__ void fab__mma_m16n8k8_f16(float (&d)[4], const uint32_t (&a)[2],
                                                            const uint32_t (&b)[1], const float (&c)[4])
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::mma(::fab_emu::MMA_M16N8K8_F16, d, a, b, c);
#else
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%8,%9,%10};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b[0]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}

/*
 * mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (operands: float bit patterns,
 * the low 13 mantissa bits are ignored by the hardware; round first with fab__cvt_rna_tf32):
 *   A 16x8, 4 regs: a[r] = A[g + 8*(r&1)][t + 4*(r>>1)]
 *   B 8x8,  2 regs: b[r] = B[t + 4r][g]
 *   C,D as m16n8k16.
 */
static __device__ __forceinline__ void fab__mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4],
                                                             const uint32_t (&b)[2], const float (&c)[4])
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::mma(::fab_emu::MMA_M16N8K8_TF32, d, a, b, c);
#else
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
                   "f"(c[2]), "f"(c[3]));
#endif
}

/* ------------------------------------------------------------------ ldmatrix / stmatrix / movmatrix */

/*
 * ldmatrix.sync.aligned.m8n8.xN{.trans}.shared.b16: loads N 8x8 matrices of 16-bit elements.
 * Lane 8m + r passes the address of row r of matrix m (16 bytes, 16-byte aligned); lanes
 * beyond 8N pass anything (ignored).  Register m of lane l receives row l/4, columns
 * 2(l%4) and 2(l%4)+1 of matrix m -- with .trans, of the transposed matrix.
 */
#ifdef FAB_EMULATE_CUDA
#define FAB__LDMATRIX(N, TRANS, regs, p) ::fab_emu::ldmatrix(regs, N, TRANS, p)
#endif

static __device__ __forceinline__ void fab__ldmatrix_x1(uint32_t (&r)[1], const void *smem_row)
{
#ifdef FAB_EMULATE_CUDA
    FAB__LDMATRIX(1, false, r, smem_row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];" : "=r"(r[0]) : "r"(fab__smem_u32(smem_row)));
#endif
}
static __device__ __forceinline__ void fab__ldmatrix_x2(uint32_t (&r)[2], const void *smem_row)
{
#ifdef FAB_EMULATE_CUDA
    FAB__LDMATRIX(2, false, r, smem_row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(fab__smem_u32(smem_row)));
#endif
}
static __device__ __forceinline__ void fab__ldmatrix_x4(uint32_t (&r)[4], const void *smem_row)
{
#ifdef FAB_EMULATE_CUDA
    FAB__LDMATRIX(4, false, r, smem_row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(fab__smem_u32(smem_row)));
#endif
}
static __device__ __forceinline__ void fab__ldmatrix_x1_trans(uint32_t (&r)[1], const void *smem_row)
{
#ifdef FAB_EMULATE_CUDA
    FAB__LDMATRIX(1, true, r, smem_row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];"
                 : "=r"(r[0])
                 : "r"(fab__smem_u32(smem_row)));
#endif
}
static __device__ __forceinline__ void fab__ldmatrix_x2_trans(uint32_t (&r)[2], const void *smem_row)
{
#ifdef FAB_EMULATE_CUDA
    FAB__LDMATRIX(2, true, r, smem_row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(fab__smem_u32(smem_row)));
#endif
}
static __device__ __forceinline__ void fab__ldmatrix_x4_trans(uint32_t (&r)[4], const void *smem_row)
{
#ifdef FAB_EMULATE_CUDA
    FAB__LDMATRIX(4, true, r, smem_row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(fab__smem_u32(smem_row)));
#endif
}

/*
 * stmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16 (sm_90): the inverse of ldmatrix.x4 --
 * lane 8m + r passes the address of row r of matrix m; register m of lane l holds row l/4,
 * columns 2(l%4), 2(l%4)+1 of matrix m (of its transpose with .trans).
 */
static __device__ __forceinline__ void fab__stmatrix_x4(void *smem_row, const uint32_t (&r)[4])
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::stmatrix(smem_row, r, 4, false);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1,%2,%3,%4};" ::"r"(fab__smem_u32(smem_row)),
                 "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
                 : "memory");
#else
    (void)smem_row;
    (void)r;
    __trap(); /* stmatrix needs sm_90 */
#endif
}
static __device__ __forceinline__ void fab__stmatrix_x4_trans(void *smem_row, const uint32_t (&r)[4])
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::stmatrix(smem_row, r, 4, true);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1,%2,%3,%4};" ::"r"(
                     fab__smem_u32(smem_row)),
                 "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
                 : "memory");
#else
    (void)smem_row;
    (void)r;
    __trap();
#endif
}

/* movmatrix.sync.aligned.m8n8.trans.b16: transpose an 8x8 b16 matrix held in the ldmatrix
 * fragment layout (lane l: row l/4, columns 2(l%4)+{0,1}). */
static __device__ __forceinline__ uint32_t fab__movmatrix_trans(uint32_t a)
{
#ifdef FAB_EMULATE_CUDA
    return ::fab_emu::movmatrix_trans(a);
#else
    uint32_t d;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(d) : "r"(a));
    return d;
#endif
}

/* ------------------------------------------------------------------ vector float reduction */

/*
 * red.global.add.v4.f32 [p], {x, y, z, w} (sm_90): adds four floats to p[0..3] (16-byte
 * aligned global memory) as one request; each element is an atomic add (round to
 * nearest even, subnormal inputs and results flushed to zero, as every f32 atom/red
 * add on global memory), the four in no particular order with respect to other
 * threads.  FAB_HAVE_RED_V4 says whether this compilation has the instruction
 * (sm_90 and later, and the emulator); without it the wrapper is four atomicAdd.
 */
#if defined(FAB_EMULATE_CUDA) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900)
#define FAB_HAVE_RED_V4 1
#else
#define FAB_HAVE_RED_V4 0
#endif
static __device__ __forceinline__ void fab__red_add_v4_f32(float *p, float x, float y, float z, float w)
{
#ifdef FAB_EMULATE_CUDA
    const float v[4] = {x, y, z, w};
    ::fab_emu::red_add_f32(p, v, 4);
#elif FAB_HAVE_RED_V4
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(__cvta_generic_to_global(p)), "f"(x), "f"(y),
                 "f"(z), "f"(w)
                 : "memory");
#else
    atomicAdd(p, x), atomicAdd(p + 1, y), atomicAdd(p + 2, z), atomicAdd(p + 3, w);
#endif
}

/* ------------------------------------------------------------------ cp.async */

/*
 * cp.async.{ca,cg}.shared.global [dst], [src], N{, src_bytes}: asynchronous copy of N bytes
 * from global to shared memory, both aligned to N.  The _zfill forms copy src_bytes
 * (0..N) and write zeros to the rest (src_bytes = 0 reads nothing: use it for
 * out-of-bounds tiles).  The data is guaranteed in shared memory only after
 * fab__cp_async_wait<n>() retires the copy's group (and, for other threads, a barrier).
 * .ca caches in L1 (4, 8, 16 bytes); .cg bypasses L1 (16 bytes only).
 */
static __device__ __forceinline__ void fab__cp_async_4(void *smem_dst, const void *gmem_src)
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::cp_async(smem_dst, gmem_src, 4, 4, false);
#else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(fab__smem_u32(smem_dst)),
                 "l"(__cvta_generic_to_global(gmem_src))
                 : "memory");
#endif
}
static __device__ __forceinline__ void fab__cp_async_8(void *smem_dst, const void *gmem_src)
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::cp_async(smem_dst, gmem_src, 8, 8, false);
#else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(fab__smem_u32(smem_dst)),
                 "l"(__cvta_generic_to_global(gmem_src))
                 : "memory");
#endif
}
static __device__ __forceinline__ void fab__cp_async_16(void *smem_dst, const void *gmem_src)
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::cp_async(smem_dst, gmem_src, 16, 16, true);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(fab__smem_u32(smem_dst)),
                 "l"(__cvta_generic_to_global(gmem_src))
                 : "memory");
#endif
}
static __device__ __forceinline__ void fab__cp_async_16_ca(void *smem_dst, const void *gmem_src)
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::cp_async(smem_dst, gmem_src, 16, 16, false);
#else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16;" ::"r"(fab__smem_u32(smem_dst)),
                 "l"(__cvta_generic_to_global(gmem_src))
                 : "memory");
#endif
}
static __device__ __forceinline__ void fab__cp_async_4_zfill(void *smem_dst, const void *gmem_src, unsigned src_bytes)
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::cp_async(smem_dst, gmem_src, 4, (int)src_bytes, false);
#else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(fab__smem_u32(smem_dst)),
                 "l"(__cvta_generic_to_global(gmem_src)), "r"(src_bytes)
                 : "memory");
#endif
}
static __device__ __forceinline__ void fab__cp_async_8_zfill(void *smem_dst, const void *gmem_src, unsigned src_bytes)
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::cp_async(smem_dst, gmem_src, 8, (int)src_bytes, false);
#else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(fab__smem_u32(smem_dst)),
                 "l"(__cvta_generic_to_global(gmem_src)), "r"(src_bytes)
                 : "memory");
#endif
}
static __device__ __forceinline__ void fab__cp_async_16_zfill(void *smem_dst, const void *gmem_src,
                                                              unsigned src_bytes)
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::cp_async(smem_dst, gmem_src, 16, (int)src_bytes, true);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(fab__smem_u32(smem_dst)),
                 "l"(__cvta_generic_to_global(gmem_src)), "r"(src_bytes)
                 : "memory");
#endif
}

/* cp.async.commit_group: close the group of this thread's outstanding cp.async copies. */
static __device__ __forceinline__ void fab__cp_async_commit()
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

/* cp.async.wait_group N: wait until at most N of this thread's committed groups are pending. */
template <int N>
static __device__ __forceinline__ void fab__cp_async_wait()
{
    static_assert(N >= 0 && N <= 7, "cp.async.wait_group takes a small immediate");
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

/* cp.async.wait_all: commit, then wait for every group. */
static __device__ __forceinline__ void fab__cp_async_wait_all()
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::cp_async_wait_all();
#else
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

/* ------------------------------------------------------------------ mbarrier and TMA (sm_90) */

/*
 * mbarrier: a 64-bit object in shared memory (uint64_t, 8-byte aligned) with an
 * arrival count, a transaction count (bytes) and a phase.  A phase completes when
 * `count` arrivals are in and the expected bytes have landed; waiters test the
 * parity of the phase they wait for (0 for the first, then 1, 0, ...).
 *
 *   fab__mbarrier_init(bar, count)             one thread, then fab__fence_mbarrier_init()
 *                                              and a __syncthreads before any use
 *   fab__mbarrier_arrive(bar)                  one arrival
 *   fab__mbarrier_arrive_expect_tx(bar, bytes) expect `bytes` more, and arrive
 *   fab__mbarrier_try_wait(bar, parity)        true once that phase has completed
 *   fab__mbarrier_wait(bar, parity)            spin on try_wait
 *
 * fab__tma_load_2d(dst, map, x, y, bar) (and _3d, _5d): the box of tensor map `map`
 * (encoded by cuTensorMapEncodeTiled) at element coordinates (x, y) -- x the inner dimension --
 * lands in shared memory at dst (128-byte aligned; 1024 for a 128-byte swizzle that
 * wgmma reads), and its bytes count against bar's transaction count.  One thread
 * issues it.  `map` must be a __grid_constant__ kernel parameter (or in global
 * memory).
 */
static __device__ __forceinline__ void fab__mbarrier_init(uint64_t *bar, unsigned count)
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::mbarrier_init(bar, count);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(fab__smem_u32(bar)), "r"(count) : "memory");
#else
    __trap();
#endif
}

/* Makes the initialised mbarriers visible to the async proxy (TMA) and the cluster. */
static __device__ __forceinline__ void fab__fence_mbarrier_init()
{
#if !defined(FAB_EMULATE_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}

static __device__ __forceinline__ uint64_t fab__mbarrier_arrive(uint64_t *bar)
{
#ifdef FAB_EMULATE_CUDA
    return ::fab_emu::mbarrier_arrive(bar, 0);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint64_t state;
    asm volatile("mbarrier.arrive.shared::cta.b64 %0, [%1];" : "=l"(state) : "r"(fab__smem_u32(bar)) : "memory");
    return state;
#else
    __trap();
    return 0;
#endif
}

static __device__ __forceinline__ void fab__mbarrier_arrive_expect_tx(uint64_t *bar, unsigned bytes)
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::mbarrier_arrive(bar, bytes);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(fab__smem_u32(bar)), "r"(bytes)
                 : "memory");
#else
    __trap();
#endif
}

static __device__ __forceinline__ bool fab__mbarrier_try_wait(uint64_t *bar, unsigned parity)
{
#ifdef FAB_EMULATE_CUDA
    return ::fab_emu::mbarrier_try_wait_parity(bar, parity);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint32_t ok;
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(ok)
                 : "r"(fab__smem_u32(bar)), "r"(parity)
                 : "memory");
    return ok != 0;
#else
    __trap();
    return false;
#endif
}

static __device__ __forceinline__ void fab__mbarrier_wait(uint64_t *bar, unsigned parity)
{
    while (!fab__mbarrier_try_wait(bar, parity)) {
    }
}

/* fab__tma_load_<r>d: a box of a rank-r tensor map at element coordinates c0
 * (dimension 0, the contiguous one), c1, ...; the map's rank must be r. */
static __device__ __forceinline__ void fab__tma_load_2d(void *smem_dst, const CUtensorMap *map, int c0, int c1,
                                                        uint64_t *bar)
{
#ifdef FAB_EMULATE_CUDA
    const int c[2] = {c0, c1};
    ::fab_emu::tma_load(smem_dst, map, c, 2, bar);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
            fab__smem_u32(smem_dst)),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(fab__smem_u32(bar))
        : "memory");
#else
    __trap();
#endif
}

static __device__ __forceinline__ void fab__tma_load_3d(void *smem_dst, const CUtensorMap *map, int c0, int c1, int c2,
                                                        uint64_t *bar)
{
#ifdef FAB_EMULATE_CUDA
    const int c[3] = {c0, c1, c2};
    ::fab_emu::tma_load(smem_dst, map, c, 3, bar);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
                 "%4}], [%5];" ::"r"(fab__smem_u32(smem_dst)),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(fab__smem_u32(bar))
                 : "memory");
#else
    __trap();
#endif
}

static __device__ __forceinline__ void fab__tma_load_5d(void *smem_dst, const CUtensorMap *map, int c0, int c1, int c2,
                                                        int c3, int c4, uint64_t *bar)
{
#ifdef FAB_EMULATE_CUDA
    const int c[5] = {c0, c1, c2, c3, c4};
    ::fab_emu::tma_load(smem_dst, map, c, 5, bar);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.tensor.5d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
                 "%4, %5, %6}], [%7];" ::"r"(fab__smem_u32(smem_dst)),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4),
                 "r"(fab__smem_u32(bar))
                 : "memory");
#else
    __trap();
#endif
}

/* ------------------------------------------------------------------ wgmma (sm_90a) */

/*
 * Warpgroup matrix multiply, sm_90a only (on other architectures these trap; the
 * emulator runs them anywhere).  A warpgroup is 4 consecutive warps, the first a
 * multiple of 4.  All 128 threads issue each of these together.
 *
 * fab__wgmma_bf16_ss<N, TRANS_A, TRANS_B>(d, desc_a, desc_b, accumulate):
 *   D(64xN, f32) = A(64x16) * B(16xN) + (accumulate ? D : 0), A and B in shared
 *   memory through descriptors (fab__wgmma_desc).  TRANS 0: the operand is K-major
 *   (A row-major M x K, B stored N x K); 1: MN-major.
 * fab__wgmma_bf16_rs<N, TRANS_B>(d, a, desc_b, accumulate): A from registers, each
 *   warp its 16 rows in mma.sync's A fragment layout.
 * (and _f16_ the same with f16 A and B.)  d: the lane's N/2 accumulators,
 *   d[4j + 2i + b] = D[16(warp%4) + lane/4 + 8i][8j + 2(lane%4) + b].
 * N: 16, 32, 64, 96, 128, 192 or 256 (tools/gen_wgmma.py writes the asm).
 *
 * Order: fab__wgmma_fence() before the first wgmma that touches accumulators
 * written by other instructions; fab__wgmma_commit() closes a group of issued
 * wgmma; fab__wgmma_wait<N>() waits until at most N groups are pending.  Only then
 * may the accumulators be read or the shared-memory operands be overwritten.
 * Shared-memory writes made by ordinary stores must be made visible to wgmma
 * (the async proxy) with fab__fence_proxy_async() first.
 */
enum { FAB_WGMMA_INTERLEAVE = 0, FAB_WGMMA_SWIZZLE_128B = 1, FAB_WGMMA_SWIZZLE_64B = 2, FAB_WGMMA_SWIZZLE_32B = 3 };

/* A shared-memory matrix descriptor: start address, leading and stride byte offsets
 * (multiples of 16; their meaning per layout is in emu/src/wgmma.cpp and the PTX
 * ISA's canonical layouts), base offset 0, layout FAB_WGMMA_*.  A swizzled tile
 * must start at a multiple of 8 times its swizzle width (1024 bytes for 128B). */
static __device__ __forceinline__ uint64_t fab__wgmma_desc(const void *smem, unsigned lbo_bytes, unsigned sbo_bytes,
                                                            int layout)
{
#ifdef FAB_EMULATE_CUDA
    return ::fab_emu::wgmma_desc(smem, lbo_bytes, sbo_bytes, layout);
#else
    return (uint64_t)((fab__smem_u32(smem) & 0x3ffffu) >> 4) | ((uint64_t)((lbo_bytes >> 4) & 0x3fffu) << 16) |
           ((uint64_t)((sbo_bytes >> 4) & 0x3fffu) << 32) | ((uint64_t)layout << 62);
#endif
}

static __device__ __forceinline__ void fab__wgmma_fence()
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::wgmma_fence();
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#else
    __trap();
#endif
}

static __device__ __forceinline__ void fab__wgmma_commit()
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::wgmma_commit();
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#else
    __trap();
#endif
}

template <int N>
static __device__ __forceinline__ void fab__wgmma_wait()
{
    static_assert(N >= 0 && N <= 7, "wgmma.wait_group takes a small immediate");
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::wgmma_wait(N);
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
#else
    __trap();
#endif
}

/* fab__wgmma_fence_regs(r): tells the compiler r's registers may change here, so it
 * neither moves other arithmetic on them across the wgmma issue/wait around it nor
 * keeps stale copies (CUTLASS's warpgroup_fence_operand). Put it on the
 * accumulators after each wait_group and before each wgmma.fence. No code. */
template <int N>
static __device__ __forceinline__ void fab__wgmma_fence_regs(float (&r)[N])
{
#ifndef FAB_EMULATE_CUDA
#pragma unroll
    for (int i = 0; i < N; i++)
        asm volatile("" : "+f"(r[i])::"memory");
#else
    (void)r;
#endif
}

/* The same for A fragments in registers (rs wgmma): put it on them after they are
 * written, before the wgmma.fence, and after the wait_group that retires their last
 * wgmma, so that their packing stays before the issue and nothing reuses them early. */
template <int M>
static __device__ __forceinline__ void fab__wgmma_fence_regs(uint32_t (&r)[M][4])
{
#ifndef FAB_EMULATE_CUDA
#pragma unroll
    for (int i = 0; i < M; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
            asm volatile("" : "+r"(r[i][j])::"memory");
#else
    (void)r;
#endif
}

/* fab__setmaxnreg_dec<N>() / _inc<N>() (sm_90a): the warpgroup's per-thread register
 * count becomes N (a multiple of 8 in [24, 256]).  A warp-specialised kernel's
 * producer gives registers back (dec) and its consumers take them (inc; it waits
 * until the block's pool has them), so the consumers may hold more than
 * 65536 / threads.  ptxas then budgets the code after each call with N.  All 4 warps
 * of the warpgroup execute the same ones, all lanes (.sync.aligned).  Elsewhere a
 * no-op: it changes no result. */
template <int N>
static __device__ __forceinline__ void fab__setmaxnreg_dec()
{
    static_assert(N >= 24 && N <= 256 && N % 8 == 0, "setmaxnreg takes a multiple of 8 in [24, 256]");
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::setmaxnreg(N, false);
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N));
#endif
}
template <int N>
static __device__ __forceinline__ void fab__setmaxnreg_inc()
{
    static_assert(N >= 24 && N <= 256 && N % 8 == 0, "setmaxnreg takes a multiple of 8 in [24, 256]");
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::setmaxnreg(N, true);
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N));
#endif
}

/* fence.proxy.async.shared::cta: this thread's ordinary shared-memory writes become
 * visible to the async proxy (wgmma operands, TMA stores).  A barrier after it
 * extends that to the other threads.  The emulator's race detector checks that
 * wgmma reads no bytes a thread wrote with fab__st_shared, stmatrix or cp.async
 * (the generic proxy) without a fence since (bare C++ stores it does not see). */
static __device__ __forceinline__ void fab__fence_proxy_async()
{
#ifdef FAB_EMULATE_CUDA
    ::fab_emu::fence_proxy_async();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

#ifndef FAB_EMULATE_CUDA
template <int N>
struct fab__wgmma_asm;
/* BEGIN wgmma asm, generated by tools/gen_wgmma.py: do not edit */
#define FAB__WGMMA_D16 "{%0, %1, %2, %3, %4, %5, %6, %7}, "
#define FAB__WGMMA_OUT16 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
template <> struct fab__wgmma_asm<16> {
    template <int F16, int TA, int TB>
    static __device__ __forceinline__ void ss(float (&d)[8], uint64_t da, uint64_t db, int acc)
    {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (F16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 " FAB__WGMMA_D16
                         "%8, %9, p, 1, 1, %11, %12;\n}\n" : FAB__WGMMA_OUT16 : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 " FAB__WGMMA_D16
                         "%8, %9, p, 1, 1, %11, %12;\n}\n" : FAB__WGMMA_OUT16 : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
#else
        __trap(); /* wgmma exists on sm_90a only */
#endif
    }
    template <int F16, int TB>
    static __device__ __forceinline__ void rs(float (&d)[8], const uint32_t (&a)[4], uint64_t db, int acc)
    {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (F16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 " FAB__WGMMA_D16
                         "{%8, %9, %10, %11}, %12, p, 1, 1, %14;\n}\n" : FAB__WGMMA_OUT16 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 " FAB__WGMMA_D16
                         "{%8, %9, %10, %11}, %12, p, 1, 1, %14;\n}\n" : FAB__WGMMA_OUT16 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
#else
        __trap(); /* wgmma exists on sm_90a only */
#endif
    }
};
#undef FAB__WGMMA_D16
#undef FAB__WGMMA_OUT16
#define FAB__WGMMA_D32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
#define FAB__WGMMA_OUT32 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
                         "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
template <> struct fab__wgmma_asm<32> {
    template <int F16, int TA, int TB>
    static __device__ __forceinline__ void ss(float (&d)[16], uint64_t da, uint64_t db, int acc)
    {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (F16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 " FAB__WGMMA_D32
                         "%16, %17, p, 1, 1, %19, %20;\n}\n" : FAB__WGMMA_OUT32 : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 " FAB__WGMMA_D32
                         "%16, %17, p, 1, 1, %19, %20;\n}\n" : FAB__WGMMA_OUT32 : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
#else
        __trap(); /* wgmma exists on sm_90a only */
#endif
    }
    template <int F16, int TB>
    static __device__ __forceinline__ void rs(float (&d)[16], const uint32_t (&a)[4], uint64_t db, int acc)
    {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (F16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 " FAB__WGMMA_D32
                         "{%16, %17, %18, %19}, %20, p, 1, 1, %22;\n}\n" : FAB__WGMMA_OUT32 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 " FAB__WGMMA_D32
                         "{%16, %17, %18, %19}, %20, p, 1, 1, %22;\n}\n" : FAB__WGMMA_OUT32 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
#else
        __trap(); /* wgmma exists on sm_90a only */
#endif
    }
};
#undef FAB__WGMMA_D32
#undef FAB__WGMMA_OUT32
#define FAB__WGMMA_D64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
#define FAB__WGMMA_OUT64 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
                         "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
                         "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
                         "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
template <> struct fab__wgmma_asm<64> {
    template <int F16, int TA, int TB>
    static __device__ __forceinline__ void ss(float (&d)[32], uint64_t da, uint64_t db, int acc)
    {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (F16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " FAB__WGMMA_D64
                         "%32, %33, p, 1, 1, %35, %36;\n}\n" : FAB__WGMMA_OUT64 : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " FAB__WGMMA_D64
                         "%32, %33, p, 1, 1, %35, %36;\n}\n" : FAB__WGMMA_OUT64 : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
#else
        __trap(); /* wgmma exists on sm_90a only */
#endif
    }
    template <int F16, int TB>
    static __device__ __forceinline__ void rs(float (&d)[32], const uint32_t (&a)[4], uint64_t db, int acc)
    {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (F16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " FAB__WGMMA_D64
                         "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n" : FAB__WGMMA_OUT64 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " FAB__WGMMA_D64
                         "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n" : FAB__WGMMA_OUT64 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
#else
        __trap(); /* wgmma exists on sm_90a only */
#endif
    }
};
#undef FAB__WGMMA_D64
#undef FAB__WGMMA_OUT64
#define FAB__WGMMA_D96 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47}, "
#define FAB__WGMMA_OUT96 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
                         "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
                         "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
                         "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
                         "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
                         "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
template <> struct fab__wgmma_asm<96> {
    template <int F16, int TA, int TB>
    static __device__ __forceinline__ void ss(float (&d)[48], uint64_t da, uint64_t db, int acc)
    {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (F16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %50, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n96k16.f32.f16.f16 " FAB__WGMMA_D96
                         "%48, %49, p, 1, 1, %51, %52;\n}\n" : FAB__WGMMA_OUT96 : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %50, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n96k16.f32.bf16.bf16 " FAB__WGMMA_D96
                         "%48, %49, p, 1, 1, %51, %52;\n}\n" : FAB__WGMMA_OUT96 : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
#else
        __trap(); /* wgmma exists on sm_90a only */
#endif
    }
    template <int F16, int TB>
    static __device__ __forceinline__ void rs(float (&d)[48], const uint32_t (&a)[4], uint64_t db, int acc)
    {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (F16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %53, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n96k16.f32.f16.f16 " FAB__WGMMA_D96
                         "{%48, %49, %50, %51}, %52, p, 1, 1, %54;\n}\n" : FAB__WGMMA_OUT96 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %53, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n96k16.f32.bf16.bf16 " FAB__WGMMA_D96
                         "{%48, %49, %50, %51}, %52, p, 1, 1, %54;\n}\n" : FAB__WGMMA_OUT96 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
#else
        __trap(); /* wgmma exists on sm_90a only */
#endif
    }
};
#undef FAB__WGMMA_D96
#undef FAB__WGMMA_OUT96
#define FAB__WGMMA_D128 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
#define FAB__WGMMA_OUT128 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
                         "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
                         "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
                         "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
                         "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
                         "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
                         "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
                         "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
template <> struct fab__wgmma_asm<128> {
    template <int F16, int TA, int TB>
    static __device__ __forceinline__ void ss(float (&d)[64], uint64_t da, uint64_t db, int acc)
    {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (F16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " FAB__WGMMA_D128
                         "%64, %65, p, 1, 1, %67, %68;\n}\n" : FAB__WGMMA_OUT128 : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " FAB__WGMMA_D128
                         "%64, %65, p, 1, 1, %67, %68;\n}\n" : FAB__WGMMA_OUT128 : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
#else
        __trap(); /* wgmma exists on sm_90a only */
#endif
    }
    template <int F16, int TB>
    static __device__ __forceinline__ void rs(float (&d)[64], const uint32_t (&a)[4], uint64_t db, int acc)
    {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (F16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " FAB__WGMMA_D128
                         "{%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n" : FAB__WGMMA_OUT128 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " FAB__WGMMA_D128
                         "{%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n" : FAB__WGMMA_OUT128 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
#else
        __trap(); /* wgmma exists on sm_90a only */
#endif
    }
};
#undef FAB__WGMMA_D128
#undef FAB__WGMMA_OUT128
#define FAB__WGMMA_D192 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95}, "
#define FAB__WGMMA_OUT192 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
                         "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
                         "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
                         "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
                         "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
                         "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
                         "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
                         "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
                         "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
                         "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
                         "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
                         "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])
template <> struct fab__wgmma_asm<192> {
    template <int F16, int TA, int TB>
    static __device__ __forceinline__ void ss(float (&d)[96], uint64_t da, uint64_t db, int acc)
    {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (F16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %98, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n192k16.f32.f16.f16 " FAB__WGMMA_D192
                         "%96, %97, p, 1, 1, %99, %100;\n}\n" : FAB__WGMMA_OUT192 : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %98, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n192k16.f32.bf16.bf16 " FAB__WGMMA_D192
                         "%96, %97, p, 1, 1, %99, %100;\n}\n" : FAB__WGMMA_OUT192 : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
#else
        __trap(); /* wgmma exists on sm_90a only */
#endif
    }
    template <int F16, int TB>
    static __device__ __forceinline__ void rs(float (&d)[96], const uint32_t (&a)[4], uint64_t db, int acc)
    {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (F16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %101, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n192k16.f32.f16.f16 " FAB__WGMMA_D192
                         "{%96, %97, %98, %99}, %100, p, 1, 1, %102;\n}\n" : FAB__WGMMA_OUT192 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %101, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n192k16.f32.bf16.bf16 " FAB__WGMMA_D192
                         "{%96, %97, %98, %99}, %100, p, 1, 1, %102;\n}\n" : FAB__WGMMA_OUT192 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
#else
        __trap(); /* wgmma exists on sm_90a only */
#endif
    }
};
#undef FAB__WGMMA_D192
#undef FAB__WGMMA_OUT192
#define FAB__WGMMA_D256 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
#define FAB__WGMMA_OUT256 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
                         "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
                         "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
                         "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
                         "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
                         "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
                         "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
                         "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
                         "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
                         "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
                         "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
                         "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
                         "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
                         "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
                         "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
                         "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
template <> struct fab__wgmma_asm<256> {
    template <int F16, int TA, int TB>
    static __device__ __forceinline__ void ss(float (&d)[128], uint64_t da, uint64_t db, int acc)
    {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (F16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 " FAB__WGMMA_D256
                         "%128, %129, p, 1, 1, %131, %132;\n}\n" : FAB__WGMMA_OUT256 : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " FAB__WGMMA_D256
                         "%128, %129, p, 1, 1, %131, %132;\n}\n" : FAB__WGMMA_OUT256 : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
#else
        __trap(); /* wgmma exists on sm_90a only */
#endif
    }
    template <int F16, int TB>
    static __device__ __forceinline__ void rs(float (&d)[128], const uint32_t (&a)[4], uint64_t db, int acc)
    {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (F16)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 " FAB__WGMMA_D256
                         "{%128, %129, %130, %131}, %132, p, 1, 1, %134;\n}\n" : FAB__WGMMA_OUT256 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " FAB__WGMMA_D256
                         "{%128, %129, %130, %131}, %132, p, 1, 1, %134;\n}\n" : FAB__WGMMA_OUT256 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
#else
        __trap(); /* wgmma exists on sm_90a only */
#endif
    }
};
#undef FAB__WGMMA_D256
#undef FAB__WGMMA_OUT256
/* END wgmma asm */
#endif

#ifdef FAB_EMULATE_CUDA
#define FAB__WGMMA_EMU(kind, a, da, trans_a)                                                                  \
    ::fab_emu::wgmma(::fab_emu::kind, N, d, a, da, desc_b, accumulate != 0, false, false, (trans_a) != 0, \
                     TRANS_B != 0)
#endif

template <int N, int TRANS_A, int TRANS_B>
static __device__ __forceinline__ void fab__wgmma_bf16_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                                          int accumulate)
{
#ifdef FAB_EMULATE_CUDA
    FAB__WGMMA_EMU(WGMMA_BF16, nullptr, desc_a, TRANS_A);
#else
    fab__wgmma_asm<N>::template ss<0, TRANS_A, TRANS_B>(d, desc_a, desc_b, accumulate);
#endif
}

template <int N, int TRANS_A, int TRANS_B>
static __device__ __forceinline__ void fab__wgmma_f16_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                                         int accumulate)
{
#ifdef FAB_EMULATE_CUDA
    FAB__WGMMA_EMU(WGMMA_F16, nullptr, desc_a, TRANS_A);
#else
    fab__wgmma_asm<N>::template ss<1, TRANS_A, TRANS_B>(d, desc_a, desc_b, accumulate);
#endif
}

template <int N, int TRANS_B>
static __device__ __forceinline__ void fab__wgmma_bf16_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b,
                                                          int accumulate)
{
#ifdef FAB_EMULATE_CUDA
    FAB__WGMMA_EMU(WGMMA_BF16, a, 0, 0);
#else
    fab__wgmma_asm<N>::template rs<0, TRANS_B>(d, a, desc_b, accumulate);
#endif
}

template <int N, int TRANS_B>
static __device__ __forceinline__ void fab__wgmma_f16_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b,
                                                         int accumulate)
{
#ifdef FAB_EMULATE_CUDA
    FAB__WGMMA_EMU(WGMMA_F16, a, 0, 0);
#else
    fab__wgmma_asm<N>::template rs<1, TRANS_B>(d, a, desc_b, accumulate);
#endif
}

#endif /* FAB_KERNELS_COMMON_PTX_CUH */
