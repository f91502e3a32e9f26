/*
 * ptx.cpp -- emulation of the PTX instructions wrapped by kernels/common/ptx.cuh.
 *
 * Warp-wide instructions (.sync.aligned: mma, ldmatrix, stmatrix, movmatrix) are
 * warp collectives over all 32 lanes: every lane hands in its registers (or row
 * address), and the last lane to arrive reassembles the whole matrices from the
 * fragment layouts of the PTX ISA, computes, and hands every lane its part.
 *
 * Fragment notation (PTX ISA, "Matrix fragments for mma.m16n8k*"):
 *   groupID = lane >> 2, tig (threadID_in_group) = lane % 4.
 *   In a .b32 register holding two 16-bit elements, the lower half holds the element
 *   with the smaller column (or k) index.
 */
#include <stdio.h>
#include <string.h>

#include "fab_emu/half_bits.h"
#include "internal.h"

namespace fab_emu {

void count_instruction(int kind) { count_stat(kind == 0 ? STAT_MMA : STAT_LDMATRIX, 1); }

static void require_full_warp(const CollGroup &g, const char *what)
{
    if (g.present != 0xffffffffu)
        kernel_error("%s is .sync.aligned: all 32 lanes of the warp must execute it, but lanes 0x%08x have exited or "
                     "do not exist (block size not a multiple of 32?)",
                     what, ~g.present);
}

/* ------------------------------------------------------------------ mma.sync */

struct MmaIn {
    uint32_t a[4];
    uint32_t b[2];
    float c[4];
};

static double lo16(uint32_t r, bool bf16)
{
    uint16_t h = (uint16_t)(r & 0xffffu);
    return bf16 ? bf16_to_f32(h) : f16_to_f32(h);
}
static double hi16(uint32_t r, bool bf16)
{
    uint16_t h = (uint16_t)(r >> 16);
    return bf16 ? bf16_to_f32(h) : f16_to_f32(h);
}
/* A .tf32 operand: the hardware uses the sign, exponent and top 10 mantissa bits of the
 * 32-bit register and ignores the low 13 bits. */
static double tf32(uint32_t r) { return bits_f32(r & 0xffffe000u); }

static const char *const kMmaNames[] = {"mma.sync.m16n8k16.bf16", "mma.sync.m16n8k16.f16", "mma.sync.m16n8k8.f16",
                                        "mma.sync.m16n8k8.tf32"};

static void mma_fn(const CollGroup &g)
{
    MmaKind kind = (MmaKind)g.op;
    require_full_warp(g, kMmaNames[kind]);
    const int K = (kind == MMA_M16N8K16_BF16 || kind == MMA_M16N8K16_F16) ? 16 : 8;
    double A[16][16], B[16][8], C[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        const MmaIn &in = *static_cast<const MmaIn *>(g.in[lane]);
        int gid = lane >> 2, t = lane & 3;
        switch (kind) {
        case MMA_M16N8K16_BF16:
        case MMA_M16N8K16_F16: {
            bool bf = kind == MMA_M16N8K16_BF16;
            /* A 16x16: a[r] holds row gid + 8*(r&1), columns 2t + 8*(r>>1) + {0,1} */
            for (int r = 0; r < 4; ++r) {
                int row = gid + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
                A[row][col] = lo16(in.a[r], bf);
                A[row][col + 1] = hi16(in.a[r], bf);
            }
            /* B 16x8 (k x n): b[r] holds k = 2t + 8r + {0,1}, n = gid */
            for (int r = 0; r < 2; ++r) {
                B[2 * t + 8 * r][gid] = lo16(in.b[r], bf);
                B[2 * t + 8 * r + 1][gid] = hi16(in.b[r], bf);
            }
            break;
        }
        case MMA_M16N8K8_F16:
            /* A 16x8: a[r] holds row gid + 8r, columns 2t + {0,1};  B 8x8: b[0] holds k = 2t + {0,1}, n = gid */
            for (int r = 0; r < 2; ++r) {
                A[gid + 8 * r][2 * t] = lo16(in.a[r], false);
                A[gid + 8 * r][2 * t + 1] = hi16(in.a[r], false);
            }
            B[2 * t][gid] = lo16(in.b[0], false);
            B[2 * t + 1][gid] = hi16(in.b[0], false);
            break;
        case MMA_M16N8K8_TF32:
            /* A 16x8: a[r] holds row gid + 8*(r&1), column t + 4*(r>>1);  B 8x8: b[r] holds k = t + 4r, n = gid */
            for (int r = 0; r < 4; ++r) A[gid + 8 * (r & 1)][t + 4 * (r >> 1)] = tf32(in.a[r]);
            for (int r = 0; r < 2; ++r) B[t + 4 * r][gid] = tf32(in.b[r]);
            break;
        }
        /* C/D 16x8 f32: c[r] holds row gid + 8*(r>>1), column 2t + (r&1) */
        for (int r = 0; r < 4; ++r) C[gid + 8 * (r >> 1)][2 * t + (r & 1)] = in.c[r];
    }
    /* D = A*B + C.  Products of 16-bit (or tf32) values are exact in double and the sum of
     * 16 of them is exact to ~2^-53, so D is the correctly rounded result; the tensor core
     * may differ in the last bits (its accumulation order and alignment are unspecified). */
    double Bt[8][16]; /* B transposed, so the inner loop runs over contiguous k */
    for (int k = 0; k < K; ++k)
        for (int n = 0; n < 8; ++n) Bt[n][k] = B[k][n];
    for (int lane = 0; lane < 32; ++lane) {
        float *d = static_cast<float *>(g.out[lane]);
        int gid = lane >> 2, t = lane & 3;
        for (int r = 0; r < 4; ++r) {
            int row = gid + 8 * (r >> 1), col = 2 * t + (r & 1);
            double s = 0;
            for (int k = 0; k < K; ++k) s += A[row][k] * Bt[col][k];
            d[r] = (float)(s + C[row][col]);
        }
    }
    count_instruction(0);
}

void mma(MmaKind kind, float d[4], const uint32_t *a, const uint32_t *b, const float c[4])
{
    MmaIn in;
    memset(&in, 0, sizeof in);
    int na = kind == MMA_M16N8K8_F16 ? 2 : 4, nb = kind == MMA_M16N8K8_F16 ? 1 : 2;
    for (int i = 0; i < na; ++i) in.a[i] = a[i];
    for (int i = 0; i < nb; ++i) in.b[i] = b[i];
    for (int i = 0; i < 4; ++i) in.c[i] = c[i];
    warp_collective(mma_fn, kind, 0xffffffffu, &in, d, kMmaNames[kind]);
}

/* ------------------------------------------------------------------ ldmatrix / stmatrix / movmatrix */

/* op encoding for the collective: nmat * 4 + trans * 2 + store */
static int mat_op(int nmat, bool trans, bool store) { return nmat * 4 + (trans ? 2 : 0) + (store ? 1 : 0); }

struct MatIn {
    void *addr;
    uint32_t regs[4];
};

/* Row address checks: 16-byte aligned, and in shared memory, i.e. not in a cudaMalloc block. */
static void check_row(const void *p, const char *what, int lane)
{
    if ((uintptr_t)p % 16 != 0)
        kernel_error("%s: row address %p from lane %d is not 16-byte aligned", what, p, lane);
    if (is_device_memory(p, 16))
        kernel_error("%s: row address %p from lane %d points into global memory; the instruction reads .shared", what,
                     p, lane);
}

static void mat_fn(const CollGroup &g)
{
    int nmat = g.op / 4;
    bool trans = (g.op & 2) != 0, store = (g.op & 1) != 0;
    const char *what = store ? "stmatrix.sync.aligned.m8n8" : "ldmatrix.sync.aligned.m8n8";
    require_full_warp(g, what);
    /* M[m][row][col]: matrix m, 8x8 b16.  Row r of matrix m lives at the address of lane 8m + r. */
    uint16_t M[4][8][8];
    Block *b = tl_block;
    Thread *const *warp_threads = b->threads + tl_thread->id.warp * 32;
    if (!store) {
        for (int m = 0; m < nmat; ++m)
            for (int r = 0; r < 8; ++r) {
                const MatIn &in = *static_cast<const MatIn *>(g.in[8 * m + r]);
                check_row(in.addr, what, 8 * m + r);
                if (b->shadow) shadow_read(*b, *warp_threads[8 * m + r], in.addr, 16, SH_LDMATRIX);
                memcpy(M[m][r], in.addr, 16);
            }
    }
    /* Lane l's register for matrix m holds row l/4, columns 2(l%4) and 2(l%4)+1 -- or with .trans
     * the same positions of the transposed matrix, i.e. M[2(l%4)][l/4] and M[2(l%4)+1][l/4]. */
    for (int lane = 0; lane < 32; ++lane) {
        int gid = lane >> 2, t = lane & 3;
        for (int m = 0; m < nmat; ++m) {
            uint16_t *e0 = trans ? &M[m][2 * t][gid] : &M[m][gid][2 * t];
            uint16_t *e1 = trans ? &M[m][2 * t + 1][gid] : &M[m][gid][2 * t + 1];
            if (store) {
                uint32_t r = static_cast<const MatIn *>(g.in[lane])->regs[m];
                *e0 = (uint16_t)(r & 0xffffu);
                *e1 = (uint16_t)(r >> 16);
            } else {
                static_cast<uint32_t *>(g.out[lane])[m] = (uint32_t)*e0 | ((uint32_t)*e1 << 16);
            }
        }
    }
    if (store) {
        for (int m = 0; m < nmat; ++m)
            for (int r = 0; r < 8; ++r) {
                const MatIn &in = *static_cast<const MatIn *>(g.in[8 * m + r]);
                check_row(in.addr, what, 8 * m + r);
                if (b->shadow) shadow_write(*b, *warp_threads[8 * m + r], in.addr, 16, SH_STMATRIX, false);
                memcpy(in.addr, M[m][r], 16);
            }
    }
    const void *rows[32];
    for (int lane = 0; lane < 32; ++lane)
        rows[lane] = lane < 8 * nmat ? static_cast<const MatIn *>(g.in[lane])->addr : nullptr;
    bank_matrix(*b, tl_thread->id.warp, rows, nmat, store);
    count_instruction(1);
}

void ldmatrix(uint32_t *regs, int nmat, bool trans, const void *row_addr)
{
    MatIn in;
    in.addr = const_cast<void *>(row_addr);
    warp_collective(mat_fn, mat_op(nmat, trans, false), 0xffffffffu, &in, regs,
                    trans ? "ldmatrix.trans" : "ldmatrix");
}

void stmatrix(void *row_addr, const uint32_t *regs, int nmat, bool trans)
{
    MatIn in;
    in.addr = row_addr;
    for (int m = 0; m < nmat; ++m) in.regs[m] = regs[m];
    warp_collective(mat_fn, mat_op(nmat, trans, true), 0xffffffffu, &in, nullptr,
                    trans ? "stmatrix.trans" : "stmatrix");
}

/* movmatrix.sync.aligned.m8n8.trans.b16: the 8x8 matrix held in the ldmatrix fragment
 * layout is transposed; each lane gets its fragment of the transpose. */
static void movmatrix_fn(const CollGroup &g)
{
    require_full_warp(g, "movmatrix.sync.aligned.m8n8.trans");
    uint16_t M[8][8];
    for (int lane = 0; lane < 32; ++lane) {
        uint32_t r = *static_cast<const uint32_t *>(g.in[lane]);
        M[lane >> 2][2 * (lane & 3)] = (uint16_t)(r & 0xffffu);
        M[lane >> 2][2 * (lane & 3) + 1] = (uint16_t)(r >> 16);
    }
    for (int lane = 0; lane < 32; ++lane) {
        int gid = lane >> 2, t = lane & 3;
        *static_cast<uint32_t *>(g.out[lane]) = (uint32_t)M[2 * t][gid] | ((uint32_t)M[2 * t + 1][gid] << 16);
    }
}

uint32_t movmatrix_trans(uint32_t a)
{
    uint32_t out = 0;
    warp_collective(movmatrix_fn, 0, 0xffffffffu, &a, &out, "movmatrix");
    return out;
}

/* The race detector treats a warp collective as ordering the memory accesses of the
 * lanes taking part -- except mma and movmatrix, which touch no memory and are not
 * memory-ordering operations (and are the most frequent collectives: skipping them
 * keeps the detector cheap). */
bool collective_orders_memory(CollFn fn) { return fn != mma_fn && fn != movmatrix_fn; }

/* ------------------------------------------------------------------ red.global.add.vN.f32 */

void red_add_f32(float *addr, const float *v, int n)
{
    if (n != 2 && n != 4) kernel_error("red.global.add.v%d.f32: the vector has 2 or 4 elements", n);
    if ((uintptr_t)addr % (4u * (unsigned)n))
        kernel_error("red.global.add.v%d.f32: address %p is not aligned to %d bytes", n, (void *)addr, 4 * n);
    if (!is_device_memory(addr, 4 * (size_t)n))
        kernel_error("red.global.add.v%d.f32: [%p, +%d) is not inside a live cudaMalloc allocation", n, (void *)addr,
                     4 * n);
    note_float_atomic(addr, 4 * (size_t)n);
    for (int i = 0; i < n; i++) { /* each element atomically, as atom.add.f32 (atomic_add_f32: FTZ) */
        uint32_t old_bits = __atomic_load_n(reinterpret_cast<uint32_t *>(addr + i), __ATOMIC_RELAXED), new_bits;
        for (;;) {
            float old_v, new_v;
            memcpy(&old_v, &old_bits, 4);
            new_v = atomic_add_f32(old_v, v[i]);
            memcpy(&new_bits, &new_v, 4);
            if (__atomic_compare_exchange_n(reinterpret_cast<uint32_t *>(addr + i), &old_bits, new_bits, false,
                                            __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
                break;
        }
    }
}

/* ------------------------------------------------------------------ cp.async */

static void cp_do(const CpOp &op)
{
    if (op.src_bytes) memcpy(op.dst, op.src, op.src_bytes);
    if (op.bytes > op.src_bytes) memset((char *)op.dst + op.src_bytes, 0, op.bytes - op.src_bytes);
}

void cp_async_complete(Thread &t, unsigned long long limit)
{
    size_t n = 0;
    Block *b = tl_block;
    for (; n < t.cp_pending.size() && t.cp_pending[n].group < limit; ++n) {
        const CpOp &op = t.cp_pending[n];
        if (!op.landed) cp_do(op);
        if (b && b->shadow) shadow_async_done(*b, t, op.dst, op.bytes);
    }
    t.cp_pending.erase(t.cp_pending.begin(), t.cp_pending.begin() + (long)n);
}

/*
 * cp.async.{ca,cg}.shared.global [dst], [src], cp_size{, src_size}:
 * copies src_size bytes and zero-fills the rest of cp_size.  The copy may land at any
 * time before the cp.async.wait_group that covers its group; the emulator makes it land
 * at that wait (the latest legal moment), or immediately in the race check's first run,
 * so a kernel that reads the destination before waiting sees different data.
 */
void cp_async(void *dst, const void *src, int cp_size, int src_size, bool cg)
{
    Thread *t = tl_thread;
    if (!t) {
        fprintf(stderr, "fab_emu: cp.async outside a kernel\n");
        abort();
    }
    if (cp_size != 4 && cp_size != 8 && cp_size != 16) kernel_error("cp.async: cp-size %d is not 4, 8 or 16", cp_size);
    if (cg && cp_size != 16) kernel_error("cp.async.cg: cp-size must be 16 (got %d)", cp_size);
    if (src_size < 0 || src_size > cp_size)
        kernel_error("cp.async: src-size %d must be in [0, cp-size %d]", src_size, cp_size);
    if ((uintptr_t)dst % (unsigned)cp_size || (uintptr_t)src % (unsigned)cp_size)
        kernel_error("cp.async: dst %p and src %p must be aligned to cp-size %d", dst, src, cp_size);
    if (is_device_memory(dst, 1))
        kernel_error("cp.async: destination %p is global memory; it must be shared memory", dst);
    if (src_size > 0 && !is_device_memory(src, (size_t)src_size))
        kernel_error("cp.async: source [%p, +%d) is not inside a live cudaMalloc allocation", src, src_size);
    Block *b = tl_block;
    CpOp op{dst, src, (unsigned)cp_size, (unsigned)src_size, t->cp_open_group, b->launch->cp_immediate};
    count_stat(STAT_CP_ASYNC, 1);
    /* The write's window is [issue, the wait that completes the group]: checked here,
     * in flight until then (shadow.cpp). */
    if (b->shadow) shadow_write(*b, *t, dst, (unsigned)cp_size, SH_CP_ASYNC, true);
    if (op.landed) cp_do(op);
    t->cp_pending.push_back(op);
    bank_note(*t, dst, (unsigned)cp_size, SMEM_CP_ASYNC);
}

/* ------------------------------------------------------------------ plain shared accesses */

void shared_access(const void *p, unsigned bytes, bool write)
{
    Thread *t = tl_thread;
    if (!t) {
        fprintf(stderr, "fab_emu: a shared-memory access outside a kernel\n");
        abort();
    }
    const char *what = write ? "st.shared" : "ld.shared";
    if ((uintptr_t)p % bytes) kernel_error("%s: address %p is not aligned to its %u bytes", what, p, bytes);
    Block *b = tl_block;
    const uintptr_t a = (uintptr_t)p, base = (uintptr_t)b->smem;
    const bool dynamic = b->smem && a >= base && a + bytes <= base + b->launch->smem;
    /* else a static __shared__ variable, or a mistake: global memory is caught here
     * (stack and heap pointers are not) */
    if (!dynamic && is_device_memory(p, 1))
        kernel_error("%s: address %p is global memory, not shared memory", what, p);
    if (b->shadow) {
        if (write)
            shadow_write(*b, *t, p, bytes, SH_STORE, false);
        else
            shadow_read(*b, *t, p, bytes, SH_LOAD);
    }
    bank_note(*t, p, bytes, write ? SMEM_STORE : SMEM_LOAD);
}

void cp_async_commit()
{
    Thread *t = tl_thread;
    if (t) t->cp_open_group++;
}

/* cp.async.wait_group n: all but the n most recent committed groups are complete. */
void cp_async_wait(int n)
{
    Thread *t = tl_thread;
    if (!t) return;
    if (n < 0) kernel_error("cp.async.wait_group %d: N must be >= 0", n);
    unsigned long long committed = t->cp_open_group;
    if ((unsigned long long)n >= committed) return;
    cp_async_complete(*t, committed - (unsigned long long)n);
}

void cp_async_wait_all()
{
    cp_async_commit();
    cp_async_wait(0);
}

} // namespace fab_emu
