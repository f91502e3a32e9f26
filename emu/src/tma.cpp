/*
 * tma.cpp -- emulation of sm_90's mbarrier objects and TMA tensor loads
 * (cp.async.bulk.tensor.2d ... mbarrier::complete_tx::bytes), and the emulator's
 * cuTensorMapEncodeTiled.
 *
 * mbarrier (PTX ISA, "Parallel Synchronization and Communication Instructions:
 * mbarrier"): an object in shared memory with an expected arrival count, a pending
 * count, a transaction count and a phase.  arrive decrements the pending count
 * (arrive.expect_tx first adds to the transaction count); a TMA load's bytes
 * decrement the transaction count when they land.  When both reach zero the phase
 * completes: the phase number advances and the pending count is reset.
 * try_wait.parity P is true once the phase of parity P has completed, i.e. while
 * the current phase's parity differs from P.  The emulator keeps the state beside
 * the 8 bytes (a table per block, by address), not in them.
 *
 * TMA loads land at the latest legal moment: when some thread next tests the
 * mbarrier they signal (or, in the race check's second schedule, at once).  Until then their destination holds what it held before
 * (the emulator poisons shared memory at block start), so a kernel that reads a
 * stage before waiting for its barrier reads garbage, and the race detector reports
 * any access to bytes still in flight.
 *
 * The tensor map: rank 1 to 5, element strides 1, no interleave; swizzle none, or
 * 32/64/128 bytes with rows (the box's inner dimension) exactly that wide.  The box
 * lands densely, dimension 0 fastest: row after row of box[0] * element-size bytes; a swizzle XORs the
 * 16-byte chunk index (address bits 4..) with the 128-byte line index (bits 7..),
 * log2(width / 16) bits each, on the absolute shared-memory address: the pattern
 * wgmma's swizzled layouts read (wgmma.cpp).  Elements outside the tensor are zero
 * (or NaN with CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA), and count as
 * transferred bytes.
 *
 * When the block's threads fail try_wait 2^20 times while no mbarrier of the block
 * moves, the block is deadlocked: the launch fails with the barrier's state.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cuda.h"
#include "internal.h"

namespace fab_emu {

static const unsigned long long kMapMagic = 0xfab7e45043a90001ull;
static const unsigned long long kSpinLimit = 1ull << 20;

/* ------------------------------------------------------------------ tensor maps */

static CUresult encode_fail(const char *why)
{
    fprintf(stderr, "fab_emu: cuTensorMapEncodeTiled: %s\n", why);
    return CUDA_ERROR_INVALID_VALUE;
}

static unsigned elem_size(CUtensorMapDataType t)
{
    switch (t) {
    case CU_TENSOR_MAP_DATA_TYPE_UINT8: return 1;
    case CU_TENSOR_MAP_DATA_TYPE_UINT16:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT16:
    case CU_TENSOR_MAP_DATA_TYPE_BFLOAT16: return 2;
    case CU_TENSOR_MAP_DATA_TYPE_UINT32:
    case CU_TENSOR_MAP_DATA_TYPE_INT32:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32_FTZ:
    case CU_TENSOR_MAP_DATA_TYPE_TFLOAT32:
    case CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ: return 4;
    case CU_TENSOR_MAP_DATA_TYPE_UINT64:
    case CU_TENSOR_MAP_DATA_TYPE_INT64:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT64: return 8;
    }
    return 0;
}

static CUresult encode_tiled(CUtensorMap *map, CUtensorMapDataType dtype, cuuint32_t rank, void *global,
                             const cuuint64_t *dims, const cuuint64_t *strides, const cuuint32_t *box,
                             const cuuint32_t *elem_strides, CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
                             CUtensorMapL2promotion l2, CUtensorMapFloatOOBfill oob)
{
    (void)l2;
    unsigned es = elem_size(dtype);
    if (!map || (uintptr_t)map % 64) return encode_fail("tensorMap is null or not 64-byte aligned");
    if (es == 0) return encode_fail("unknown tensorDataType");
    if (rank < 1 || rank > 5) return encode_fail("tensorRank must be in [1, 5]");
    if (!global || (uintptr_t)global % 16) return encode_fail("globalAddress is null or not 16-byte aligned");
    if (!dims || !box || !elem_strides || (rank > 1 && !strides)) return encode_fail("a null array argument");
    for (unsigned i = 0; i < rank; ++i) {
        if (dims[i] == 0 || dims[i] > (1ull << 32)) return encode_fail("globalDim must be in [1, 2^32]");
        if (box[i] == 0 || box[i] > 256) return encode_fail("boxDim must be in [1, 256]");
        if (elem_strides[i] != 1) return encode_fail("the emulator supports elementStrides of 1 only");
    }
    for (unsigned i = 0; i + 1 < rank; ++i)
        if (strides[i] % 16 || strides[i] >= (1ull << 40) || strides[i] == 0)
            return encode_fail("globalStrides must be non-zero multiples of 16 below 2^40");
    if (rank > 1 && strides[0] < dims[0] * es) return encode_fail("globalStrides[0] must cover a row");
    if ((box[0] * es) % 16) return encode_fail("boxDim[0] * element size must be a multiple of 16 bytes");
    if (interleave != CU_TENSOR_MAP_INTERLEAVE_NONE) return encode_fail("the emulator supports no interleave");
    unsigned sw = swizzle == CU_TENSOR_MAP_SWIZZLE_NONE ? 0
                  : swizzle == CU_TENSOR_MAP_SWIZZLE_32B ? 32
                  : swizzle == CU_TENSOR_MAP_SWIZZLE_64B ? 64
                  : swizzle == CU_TENSOR_MAP_SWIZZLE_128B ? 128
                                                         : 1;
    if (sw == 1) return encode_fail("the emulator supports swizzles none, 32B, 64B and 128B");
    if (sw && box[0] * es != sw)
        return encode_fail("with a swizzle the emulator needs boxDim[0] * element size equal to the swizzle width");
    bool is_float = dtype == CU_TENSOR_MAP_DATA_TYPE_FLOAT16 || dtype == CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 ||
                    dtype == CU_TENSOR_MAP_DATA_TYPE_FLOAT32 || dtype == CU_TENSOR_MAP_DATA_TYPE_FLOAT64 ||
                    dtype == CU_TENSOR_MAP_DATA_TYPE_FLOAT32_FTZ || dtype == CU_TENSOR_MAP_DATA_TYPE_TFLOAT32 ||
                    dtype == CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ;
    if (oob == CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA && !is_float)
        return encode_fail("NaN fill needs a floating-point data type");
    memset(map, 0, sizeof *map);
    map->opaque[0] = kMapMagic;
    map->opaque[1] = (uintptr_t)global;
    for (unsigned i = 0; i < 5; ++i) {
        map->opaque[2 + i] = i < rank ? dims[i] : 1;
        map->opaque[7 + i] = i == 0 ? es : i < rank ? strides[i - 1] : 0; /* bytes per index step */
    }
    for (unsigned i = 0; i < 5; ++i) map->opaque[12] |= (cuuint64_t)(i < rank ? box[i] - 1 : 0) << (8 * i);
    map->opaque[13] = es | (sw << 8) | ((cuuint64_t)(oob == CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA) << 16) |
                      ((cuuint64_t)dtype << 24) | ((cuuint64_t)rank << 32);
    return CUDA_SUCCESS;
}

static TensorMapDesc decode_map(const void *p, const char *what)
{
    const CUtensorMap *m = static_cast<const CUtensorMap *>(p);
    if (!m || (uintptr_t)m % 64 || m->opaque[0] != kMapMagic)
        kernel_error("%s: %p is not a tensor map made by cuTensorMapEncodeTiled (pass the CUtensorMap as a "
                     "__grid_constant__ kernel parameter or in global memory)",
                     what, p);
    TensorMapDesc d;
    d.base = (const unsigned char *)(uintptr_t)m->opaque[1];
    d.rank = (int)(m->opaque[13] >> 32);
    for (int i = 0; i < 5; ++i) {
        d.dim[i] = m->opaque[2 + i];
        d.stride[i] = m->opaque[7 + i];
        d.box[i] = (unsigned)((m->opaque[12] >> (8 * i)) & 0xffu) + 1;
    }
    d.elem = (unsigned)(m->opaque[13] & 0xffu);
    d.swizzle_bytes = (unsigned)((m->opaque[13] >> 8) & 0xffu);
    d.nan_fill = ((m->opaque[13] >> 16) & 1u) != 0;
    d.f16 = ((m->opaque[13] >> 24) & 0xffu) == CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    return d;
}

/* ------------------------------------------------------------------ mbarriers */

static Mbar *find_mbar(Block &b, const void *bar)
{
    for (Mbar &m : b.mbars)
        if (m.addr == bar) return &m;
    return nullptr;
}

static Mbar &get_mbar(Block &b, const void *bar, const char *what)
{
    Mbar *m = find_mbar(b, bar);
    if (!m) kernel_error("%s: %p is not an initialised mbarrier (mbarrier.init it first)", what, bar);
    return *m;
}

static void check_bar_address(const void *bar, const char *what)
{
    if ((uintptr_t)bar % 8) kernel_error("%s: mbarrier address %p is not 8-byte aligned", what, bar);
    if (is_device_memory(bar, 8)) kernel_error("%s: mbarrier address %p is in global memory, not .shared", what, bar);
}

/* The phase completes when every arrival is in and every transaction has landed. */
static void maybe_complete(Block &b, Mbar &m)
{
    if (m.pending != 0 || m.tx != 0) return;
    m.phase++;
    m.pending = m.count;
    if (b.shadow) {
        m.done_vc = m.join_vc;
        m.done_lv = m.join_lv;
    }
}

void fence_proxy_async()
{
    if (tl_thread) tl_thread->proxy_fences++;
}

void mbarrier_init(void *bar, unsigned count)
{
    const char *what = "mbarrier.init";
    check_bar_address(bar, what);
    if (count < 1 || count > (1u << 20) - 1) kernel_error("%s: count %u must be in [1, 2^20 - 1]", what, count);
    Block &b = *tl_block;
    Mbar *m = find_mbar(b, bar);
    if (!m) {
        b.mbars.push_back(Mbar());
        m = &b.mbars.back();
    } else if (!m->inflight.empty()) {
        kernel_error("%s: mbarrier %p is re-initialised while %zu TMA loads signal it", what, bar, m->inflight.size());
    }
    m->addr = bar;
    m->count = m->pending = count;
    m->tx = 0;
    m->phase = 0;
    m->join_vc.clear();
    m->done_vc.clear();
    m->join_lv.clear();
    m->done_lv.clear();
    b.mbar_progress++;
}

uint64_t mbarrier_arrive(void *bar, unsigned tx_bytes)
{
    const char *what = tx_bytes ? "mbarrier.arrive.expect_tx" : "mbarrier.arrive";
    Block &b = *tl_block;
    Mbar &m = get_mbar(b, bar, what);
    if (m.pending == 0) kernel_error("%s: more arrivals on mbarrier %p than its count %u in one phase", what, bar, m.count);
    uint64_t state = m.phase;
    m.tx += tx_bytes;
    m.pending--;
    if (b.shadow) shadow_release(b, *tl_thread, m.join_vc, m.join_lv);
    b.mbar_progress++;
    maybe_complete(b, m);
    return state;
}

void mbarrier_expect_tx(void *bar, unsigned tx_bytes)
{
    Block &b = *tl_block;
    Mbar &m = get_mbar(b, bar, "mbarrier.expect_tx");
    m.tx += tx_bytes;
    b.mbar_progress++;
}

/* Lands one TMA load: the box, row by row, swizzled, out-of-range elements filled. */
static void land(Block &b, Mbar &m, TmaCopy &c)
{
    const TensorMapDesc &d = c.map;
    const unsigned row_bytes = d.box[0] * d.elem;
    unsigned rows = 1;
    for (int i = 1; i < d.rank; ++i) rows *= d.box[i];
    const unsigned total = row_bytes * rows;
    const uintptr_t units = d.swizzle_bytes ? d.swizzle_bytes / 16 : 1;
    for (unsigned r = 0; r < rows; ++r)
        for (unsigned e = 0; e < d.box[0]; ++e) {
            /* the element's coordinates: e along dimension 0, r's digits along the others */
            long long gc[5];
            bool inside = true;
            size_t off = 0;
            for (int i = 0, rr = (int)r; i < d.rank; ++i) {
                long long idx = i == 0 ? (long long)e : (long long)(rr % (int)d.box[i]);
                if (i > 0) rr /= (int)d.box[i];
                gc[i] = (long long)c.coord[i] + idx;
                if (gc[i] < 0 || (unsigned long long)gc[i] >= d.dim[i])
                    inside = false;
                else
                    off += (size_t)gc[i] * d.stride[i];
            }
            uintptr_t a = (uintptr_t)c.dst + (uintptr_t)r * row_bytes + (uintptr_t)e * d.elem;
            a ^= ((a >> 7) & (units - 1)) << 4;
            unsigned char *dst = (unsigned char *)a;
            if (inside) {
                const unsigned char *src = d.base + off;
                if (!is_device_memory(src, d.elem))
                    kernel_error("cp.async.bulk.tensor: element (%lld, %lld, ...) at %p is not inside a live cudaMalloc "
                                 "allocation (was the tensor freed?)",
                                 gc[0], d.rank > 1 ? gc[1] : 0ll, (const void *)src);
                memcpy(dst, src, d.elem);
            } else if (d.nan_fill) {
                if (d.elem == 2) {
                    uint16_t nan16 = d.f16 ? 0x7e00 : 0x7fc0;
                    memcpy(dst, &nan16, 2);
                } else if (d.elem == 4) {
                    float f = NAN;
                    memcpy(dst, &f, 4);
                } else {
                    double x = NAN;
                    memcpy(dst, &x, 8);
                }
            } else {
                memset(dst, 0, d.elem);
            }
        }
    if (b.shadow) {
        /* the writes are the issuer's as of the issue (not what it did since), and
         * complete_tx releases them: run both with its clocks of then (the copy's
         * own, used up here) */
        Thread &issuer = *b.threads[c.issuer];
        uint32_t *vc = issuer.vc, *lv = issuer.lv;
        issuer.vc = c.vc.data();
        issuer.lv = c.lv.data();
        shadow_async_done(b, issuer, c.dst, total);
        shadow_release(b, issuer, m.join_vc, m.join_lv);
        issuer.vc = vc;
        issuer.lv = lv;
    }
    m.tx -= total;
}

bool wait_deadlocked(Block &b)
{
    if (b.mbar_seen != b.mbar_progress) {
        b.mbar_seen = b.mbar_progress;
        b.mbar_spins = 0;
    }
    return ++b.mbar_spins > kSpinLimit;
}

bool mbarrier_try_wait_parity(void *bar, unsigned parity)
{
    const char *what = "mbarrier.try_wait.parity";
    Block &b = *tl_block;
    Thread &t = *tl_thread;
    Mbar &m = get_mbar(b, bar, what);
    if (!m.inflight.empty()) {
        std::vector<TmaCopy> copies;
        copies.swap(m.inflight);
        for (TmaCopy &c : copies) land(b, m, c);
        b.mbar_progress++;
        maybe_complete(b, m);
    }
    if ((m.phase & 1u) != (parity & 1u)) { /* the phase of that parity has completed */
        if (b.shadow) shadow_acquire(b, t, m.done_vc, m.done_lv);
        return true;
    }
    if (wait_deadlocked(b))
        kernel_error("%s: deadlock: waiting for phase parity %u of mbarrier %p, which is in phase %llu with %u of %u "
                     "arrivals and %lld transaction bytes still to come, and no mbarrier of the block has moved "
                     "in %llu failed tries by its threads",
                     what, parity & 1u, bar, m.phase, m.pending, m.count, m.tx, kSpinLimit);
    yield(); /* let the threads that will arrive run */
    return false;
}

void tma_load(void *smem_dst, const void *tensor_map, const int *coord, int rank, void *bar)
{
    const char *what = "cp.async.bulk.tensor (TMA load)";
    Block &b = *tl_block;
    TensorMapDesc d = decode_map(tensor_map, what);
    if (rank != d.rank)
        kernel_error("%s: a .%dd load of a tensor map of rank %d", what, rank, d.rank);
    check_bar_address(bar, what);
    Mbar &m = get_mbar(b, bar, what);
    unsigned char *dst = static_cast<unsigned char *>(smem_dst);
    size_t bytes = (size_t)d.box[0] * d.elem;
    for (int i = 1; i < d.rank; ++i) bytes *= d.box[i];
    if ((uintptr_t)dst % 128) kernel_error("%s: shared-memory destination %p is not 128-byte aligned", what, smem_dst);
    if (is_device_memory(dst, 1)) kernel_error("%s: destination %p is global memory, not .shared", what, smem_dst);
    if (b.launch->smem == 0 || dst < b.smem || dst + bytes > b.smem + b.launch->smem)
        kernel_error("%s: the box of %zu bytes at %p does not fit in the block's %zu bytes of dynamic shared memory",
                     what, bytes, smem_dst, b.launch->smem);
    TmaCopy c;
    c.dst = dst;
    c.map = d;
    for (int i = 0; i < 5; ++i) c.coord[i] = i < rank ? coord[i] : 0;
    c.issuer = tl_thread->id.linear;
    if (b.shadow) {
        c.vc.assign(tl_thread->vc, tl_thread->vc + b.nwarps);
        c.lv.assign(tl_thread->lv, tl_thread->lv + 32);
    }
    if (b.shadow) shadow_write(b, *tl_thread, dst, (unsigned)bytes, SH_TMA, true);
    if (b.launch->cp_immediate) { /* the race check's other schedule: the load lands at once */
        land(b, m, c);
        b.mbar_progress++;
        maybe_complete(b, m);
        return;
    }
    m.inflight.push_back(c);
}

void tma_thread_exit(Block &b)
{
    if (b.live != 1) return; /* only the block's last thread */
    for (const Mbar &m : b.mbars)
        if (!m.inflight.empty())
            kernel_error("the block ends with %zu TMA loads to mbarrier %p that no thread waited for", m.inflight.size(),
                         m.addr);
}

} // namespace fab_emu

/* ------------------------------------------------------------------ driver entry point */

extern "C" cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **funcPtr, unsigned int cudaVersion,
                                                        unsigned long long flags,
                                                        enum cudaDriverEntryPointQueryResult *driverStatus)
{
    (void)cudaVersion;
    (void)flags;
    if (!symbol || !funcPtr) return fab_emu::record_error(cudaErrorInvalidValue);
    if (strcmp(symbol, "cuTensorMapEncodeTiled") == 0) {
        *funcPtr = reinterpret_cast<void *>(&fab_emu::encode_tiled);
        if (driverStatus) *driverStatus = cudaDriverEntryPointSuccess;
        return cudaSuccess;
    }
    *funcPtr = nullptr;
    if (driverStatus) *driverStatus = cudaDriverEntryPointSymbolNotFound;
    return cudaSuccess;
}
