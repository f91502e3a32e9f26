/*
 * fab_emu/device.h -- the emulator's device-side interface (C++ only).
 *
 * cuda_runtime.h and kernels/common/ptx.cuh call these functions; kernels do
 * not call them directly.  Each emulated CUDA thread is a fiber; a fiber runs
 * until it reaches a block barrier or a warp collective, then hands control to
 * its block's scheduler (emu/src/scheduler.cpp), which resumes it once the
 * barrier or collective has completed.
 */
#ifndef FAB_EMU_DEVICE_H
#define FAB_EMU_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "../cuda_runtime_api.h"

/* The identity of the emulated thread that is running on this OS thread.
 * Readable from gdb: `p *fab_emu_cur`, or `break k.cu:42 if fab_emu_cur->linear == 37`. */
struct fab_emu_thread {
    uint3 threadIdx;
    uint3 blockIdx;
    dim3 blockDim;
    dim3 gridDim;
    unsigned int linear; /* threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z) */
    unsigned int warp;   /* linear / 32 */
    unsigned int lane;   /* linear % 32 */
};
extern thread_local const fab_emu_thread *fab_emu_cur;

/* CUDA's built-in variables, per worker OS thread; see cuda_runtime.h. */
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

namespace fab_emu {

/* The running emulated thread; aborts with a clear message if called outside a kernel. */
const fab_emu_thread &current_slow();
inline const fab_emu_thread &current()
{
    const fab_emu_thread *t = fab_emu_cur;
    return t ? *t : current_slow();
}

/* ---- block barriers (bar.sync / bar.arrive / bar.red) ---- */
enum BarrierReduce { BAR_NONE = 0, BAR_POPC = 1, BAR_AND = 2, BAR_OR = 3 };
/* id 0..15; count 0 = all threads of the block, else a multiple of 32.
 * wait=false is bar.arrive.  Returns the reduction (or 0).  file/line: where in the
 * kernel's source a __syncthreads* stands (its default arguments fill them in at the
 * call), to check that the whole block meets at the same one. */
int barrier(int id, int count, BarrierReduce red, int pred, bool wait, const char *file = nullptr, int line = 0);

/* ---- warp collectives ---- */
/* A rendezvous of the lanes named in a mask.  Every lane hands in a pointer to its input
 * and to its output; when the last lane of the group arrives, `fn` computes all outputs. */
struct CollGroup {
    uint32_t mask;    /* the membermask the lanes used */
    uint32_t present; /* lanes of mask that take part (not exited) */
    int op;           /* the operation; lanes of one group must agree */
    const void *in[32];
    void *out[32];
};
typedef void (*CollFn)(const CollGroup &g);
void warp_collective(CollFn fn, int op, uint32_t mask, const void *in, void *out, const char *what);
/* Emulator-detected misuse: prints `what`, then aborts or ends the launch (see fab_emu.h). */
[[noreturn]] void kernel_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A lane read a value the ISA leaves undefined; warn once per launch. */
void undefined_value_warning(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Count an instruction in fab_emu_stats (kind: 0 mma, 1 ldmatrix). */
void count_instruction(int kind);

/* Shuffle modes and the other warp operations, one code each. */
enum WarpOp {
    WOP_SHFL_IDX, WOP_SHFL_UP, WOP_SHFL_DOWN, WOP_SHFL_BFLY,
    WOP_SYNC, WOP_BALLOT, WOP_ANY, WOP_ALL, WOP_MATCH_ANY, WOP_MATCH_ALL,
    WOP_REDUCE_ADD, WOP_REDUCE_MIN_U, WOP_REDUCE_MAX_U, WOP_REDUCE_MIN_S, WOP_REDUCE_MAX_S,
    WOP_REDUCE_AND, WOP_REDUCE_OR, WOP_REDUCE_XOR,
    WOP_COUNT
};
/* One warp operation on a 64-bit value: shfl (b = lane/delta, c = PTX clamp/segment
 * operand), vote/match/reduce (value = predicate or operand).  Returns the lane's result;
 * *pred_out (if not null) gets match.all's predicate. */
uint64_t warp_op(WarpOp op, uint32_t mask, uint64_t value, int b, int c, int *pred_out);
/* Lanes of the calling warp that have not exited (the emulator's __activemask). */
uint32_t active_mask();

/* ---- memory ---- */
void *dynamic_smem();  /* the block's dynamic shared memory (exactly the launch's size) */
bool is_device_memory(const void *p, size_t bytes);  /* inside a live cudaMalloc block */

/* A floating-point atomic add on [addr, addr + bytes): its result legitimately
 * depends on the order of the adds, so the race check leaves those bytes out of
 * its comparison of the two schedules (a no-op when the race check is off). */
void note_float_atomic(const void *addr, size_t bytes);

/* Let the other threads of the block run (for __nanosleep / spin loops). */
void yield();

/* ---- PTX instructions (emu/src/ptx.cpp), called by kernels/common/ptx.cuh ---- */
enum MmaKind { MMA_M16N8K16_BF16, MMA_M16N8K16_F16, MMA_M16N8K8_F16, MMA_M16N8K8_TF32 };
/* d = a*b + c for this lane's fragments; a has 4 (k16, tf32) or 2 (f16 k8) registers,
 * b has 2 (k16, tf32) or 1 (f16 k8). */
void mma(MmaKind kind, float d[4], const uint32_t *a, const uint32_t *b, const float c[4]);
void ldmatrix(uint32_t *regs, int nmat, bool trans, const void *row_addr);
void stmatrix(void *row_addr, const uint32_t *regs, int nmat, bool trans);
uint32_t movmatrix_trans(uint32_t a);
/* red.global.add.vN.f32 (sm_90): adds v[0..n) to addr[0..n), n = 2 or 4, addr
 * aligned to 4n bytes in a live cudaMalloc block; each element an atomic add. */
void red_add_f32(float *addr, const float *v, int n);
/* The sum atom/red.add.f32 on global memory (and so float atomicAdd there) stores:
 * round to nearest even, subnormal inputs and result flushed to zero of the same sign
 * (PTX ISA, atom and red; the GPU's instruction is RED.E.ADD.F32.FTZ.RN). On shared
 * memory the GPU keeps subnormals. */
inline float atomic_add_f32(float a, float b)
{
    auto ftz = [](float x) { return x != 0.0f && __builtin_fabsf(x) < 1.17549435e-38f ? __builtin_copysignf(0.0f, x) : x; };
    return ftz(ftz(a) + ftz(b));
}
/* cp.async: cp_size 4, 8 or 16; src_size <= cp_size (rest zero-filled); cg = .cg */
void cp_async(void *dst, const void *src, int cp_size, int src_size, bool cg);
/* A plain load or store of `bytes` (4 or 8) at p in shared memory, before the kernel
 * makes it: checked (alignment, not global memory), shown to the race detector
 * and logged for the bank model. */
void shared_access(const void *p, unsigned bytes, bool write);
void cp_async_commit();
void cp_async_wait(int n);  /* wait_group n */
void cp_async_wait_all();

/* wgmma (emu/src/wgmma.cpp): one warp's part of wgmma.mma_async.m64nNk16.f32 with
 * 16-bit A and B.  d: this lane's N/2 accumulators; a: its 4 A registers, or null for
 * A in shared memory (desc_a).  Recorded at issue, computed at the wait_group that
 * retires it.  wgmma_desc: a shared-memory matrix descriptor whose start address is
 * the offset of `smem` in the block's dynamic shared memory. */
enum WgmmaKind { WGMMA_BF16, WGMMA_F16 };
void wgmma(WgmmaKind kind, int n, float *d, const uint32_t *a, uint64_t desc_a, uint64_t desc_b, bool accumulate,
           bool neg_a, bool neg_b, bool trans_a, bool trans_b);
void wgmma_fence();
void wgmma_commit();
void wgmma_wait(int n);
uint64_t wgmma_desc(const void *smem, unsigned lbo_bytes, unsigned sbo_bytes, int layout);
/* setmaxnreg.{inc,dec} n (emu/src/setmaxnreg.cpp): moves registers between the warp and
 * its block's pool; .inc waits until the pool has them. */
void setmaxnreg(unsigned n, bool inc);

/* mbarrier and TMA (emu/src/tma.cpp).  mbarrier_arrive with tx_bytes > 0 is
 * arrive.expect_tx; it returns the phase token.  try_wait yields when it fails, so a
 * spin loop around it lets the other threads run. */
/* fence.proxy.async: counted per thread for the race detector's proxy check */
void fence_proxy_async();
void mbarrier_init(void *bar, unsigned count);
uint64_t mbarrier_arrive(void *bar, unsigned tx_bytes);
void mbarrier_expect_tx(void *bar, unsigned tx_bytes);
bool mbarrier_try_wait_parity(void *bar, unsigned parity);
/* cp.async.bulk.tensor.<rank>d: coord[0..rank) the box's first element, dimension 0 first */
void tma_load(void *smem_dst, const void *tensor_map, const int *coord, int rank, void *bar);

} // namespace fab_emu

/* The launch entry used by cuda_runtime.h's cudaLaunchKernelEx template: runs
 * invoke(closure) once per emulated thread. */
cudaError_t fab_emu_launch(const cudaLaunchConfig_t *config, const void *kernel_id,
                           void (*invoke)(const void *closure), const void *closure);

#endif /* FAB_EMU_DEVICE_H */
