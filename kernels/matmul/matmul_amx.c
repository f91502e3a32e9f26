/*
 * matmul_amx.c: the CPU GEMM's bf16 path on Intel AMX (Sapphire Rapids and later).
 *
 * Idea: AMX has eight tile registers of 16 rows x 64 bytes and one instruction,
 * TDPBF16PS, that adds a 16x32 (bf16) by 32x16 (bf16, pairs interleaved) product
 * into a 16x16 f32 tile: 8192 multiply-adds per instruction; a core peaks near 15
 * times its AVX-512 f32 FMA rate (3.1 against 0.21 TFLOP/s measured on the
 * development machine's Xeon). The micro-kernel keeps a 32x32 block of C in
 * four tiles, and per 32-deep chunk of k loads two A tiles (rows 0-15, 16-31) and
 * two B tiles (columns 0-15, 16-31) and issues four TDPBF16PS: the densest use of
 * the eight registers (one tile load per product).
 *
 * Packing (see fab__amx_pack_a / _b): A into panels of 32 rows, one 32x32 chunk
 * after another, each row of a chunk 64 contiguous bytes; B into panels of 32
 * columns whose chunks hold 16 rows of k pairs, each row 32 columns x 2 values
 * ("VNNI" order: the two k of a pair side by side), as TDPBF16PS reads them. Edges
 * (rows, columns, k past the matrix) are zero, so the kernel always runs whole.
 *
 * Numerics: bf16 values are copied, never rounded; each product of two bf16 is
 * exact in f32, and the sums are f32 with round-to-nearest-even, as f32 FMAs
 * would give. Unlike the f32 path, AMX reads bf16 subnormal inputs as zero and flushes
 * subnormal f32 results to zero (as GPU tensor cores may), and the k order differs,
 * so results are not bitwise those of the AVX-512 path. Deterministic: the order
 * depends only on the shape.
 *
 * Availability: the CPU must report AMX-TILE and AMX-BF16, and Linux must grant
 * the process the tile state (arch_prctl ARCH_REQ_XCOMP_PERM, once per process).
 * FAB_MATMUL_CPU_AMX=0 in the environment turns the path off (the tests compare).
 */
#define _GNU_SOURCE /* syscall */
#include "matmul_amx.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__linux__) &&                                                          \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define FAB_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define FAB_AMX_TARGET __attribute__((target("amx-tile,amx-bf16")))
#endif

#ifdef FAB_AMX
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* 1: usable, -1: not; decided once per process (the permission is per process) */
static int amx_state;

static int amx_probe(void)
{
    unsigned eax, ebx, ecx, edx, lo, hi;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !((ecx >> 27) & 1)) /* OSXSAVE: xgetbv works */
        return -1;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || !((edx >> 24) & 1) || !((edx >> 22) & 1))
        return -1; /* AMX-TILE, AMX-BF16 */
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) /* the OS enabled the tile state (XTILECFG, XTILEDATA) */
        return -1;
    /* and grants it to this process (Linux 5.16 and later) */
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0)
        return -1;
    return 1;
}
#endif

bool fab__amx_available(void)
{
#ifdef FAB_AMX
    int s = __atomic_load_n(&amx_state, __ATOMIC_ACQUIRE);
    if (s == 0) {
        s = amx_probe(); /* idempotent: two threads may both probe */
        __atomic_store_n(&amx_state, s, __ATOMIC_RELEASE);
    }
    return s > 0;
#else
    return false;
#endif
}

bool fab__amx_enabled(void)
{
#ifdef FAB_MM_FORCE_UKERNEL
    return false; /* a test copy of the library whose GEMMs all run one forced micro-kernel */
#endif
    const char *env = getenv("FAB_MATMUL_CPU_AMX");
    if (env && env[0] == '0' && env[1] == '\0')
        return false;
    return fab__amx_available();
}

/* ------------------------------------------------------------------ packing */

/* One k slice of rows [i0, i0 + 32*npanels) of op(A) into panels: panel ip,
 * chunk ch, row r, column t at dst[(ip*nch + ch)*1024 + r*32 + t] = op(A)(i0 + ip*32
 * + r, p0 + ch*32 + t); zero past row m_end and past k_end. trans: A is stored
 * [k, m] (element (i, p) at src[p*ld + i]), else [m, k]. */
void fab__amx_pack_a(const uint16_t *src, int64_t ld, bool trans, int64_t i0, int64_t m_end, int64_t p0,
                     int64_t k_end, int nch, int64_t panel, uint16_t *dst)
{
    dst += panel * nch * 1024;
    int64_t ib = i0 + panel * 32;
    for (int ch = 0; ch < nch; ch++, dst += 1024) {
        int64_t pb = p0 + ch * 32;
        int rows = (int)(m_end - ib < 32 ? (m_end - ib > 0 ? m_end - ib : 0) : 32);
        int ks = (int)(k_end - pb < 32 ? (k_end - pb > 0 ? k_end - pb : 0) : 32);
        if (rows < 32 || ks < 32)
            memset(dst, 0, 1024 * sizeof(uint16_t));
        if (!trans) {
            for (int r = 0; r < rows; r++)
                memcpy(dst + r * 32, src + (ib + r) * ld + pb, (size_t)ks * sizeof(uint16_t));
        } else {
            /* a 32x32 transpose: stored row p holds the chunk's 32 rows side by side */
            for (int t = 0; t < ks; t++) {
                const uint16_t *s = src + (pb + t) * ld + ib;
                for (int r = 0; r < rows; r++)
                    dst[r * 32 + t] = s[r];
            }
        }
    }
}

/* One k slice of columns [j0, j0 + 32*npanels) of op(B) into panels: panel q,
 * chunk ch, pair row pp, column c, member e at dst[(q*nch + ch)*1024 + pp*64 + c*2
 * + e] = op(B)(p0 + ch*32 + 2*pp + e, j0 + q*32 + c); zero past n_end and k_end.
 * trans: B is stored [n, k] (element (p, j) at src[j*ld + p]), else [k, n]. */
void fab__amx_pack_b(const uint16_t *src, int64_t ld, bool trans, int64_t j0, int64_t n_end, int64_t p0,
                     int64_t k_end, int nch, int64_t panel, uint16_t *dst)
{
    dst += panel * nch * 1024;
    int64_t jb = j0 + panel * 32;
    for (int ch = 0; ch < nch; ch++, dst += 1024) {
        int64_t pb = p0 + ch * 32;
        int cols = (int)(n_end - jb < 32 ? (n_end - jb > 0 ? n_end - jb : 0) : 32);
        int ks = (int)(k_end - pb < 32 ? (k_end - pb > 0 ? k_end - pb : 0) : 32);
        if (cols < 32 || ks < 32)
            memset(dst, 0, 1024 * sizeof(uint16_t));
        if (!trans) {
            /* stored rows p and p+1 interleaved: one 32-bit word per column */
            uint32_t *d32 = (uint32_t *)dst;
            for (int pp = 0; pp < ks / 2; pp++) {
                const uint16_t *r0 = src + (pb + 2 * pp) * ld + jb, *r1 = r0 + ld;
                for (int c = 0; c < cols; c++)
                    d32[pp * 32 + c] = (uint32_t)r0[c] | (uint32_t)r1[c] << 16;
            }
            if (ks & 1) { /* an odd k end: the pair's second member stays zero */
                const uint16_t *r0 = src + (pb + ks - 1) * ld + jb;
                for (int c = 0; c < cols; c++)
                    dst[(ks / 2) * 64 + c * 2] = r0[c];
            }
        } else {
            /* stored row j holds column j's k values in order: pairs are adjacent */
            for (int c = 0; c < cols; c++) {
                const uint16_t *s = src + (jb + c) * ld + pb;
                for (int t = 0; t < ks; t++)
                    dst[(t >> 1) * 64 + c * 2 + (t & 1)] = s[t];
            }
        }
    }
}

/* ------------------------------------------------------------------- kernel */

#ifdef FAB_AMX
typedef struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

FAB_AMX_TARGET void fab__amx_begin(void)
{
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) { /* every tile 16 rows x 64 bytes */
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    /* not _tile_loadconfig: GCC 12's tells the compiler it reads only 8 bytes, so
     * the stores above would be dropped as dead */
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}

FAB_AMX_TARGET void fab__amx_end(void)
{
    _tile_release(); /* back to the init state: no 8 KiB to save at a context switch */
}

/* c[32 x 32] (f32, row stride ldc) = (accumulate ? c : 0) + a_panel · b_panel over
 * nch chunks. Tiles: 0-3 C (rows 0-15 | 16-31 x columns 0-15 | 16-31), 4-5 A, 6-7 B.
 * Loads and products alternate, so a product waits only for its own operands. */
FAB_AMX_TARGET void fab__amx_kernel(int nch, const uint16_t *a, const uint16_t *b, float *c, int64_t ldc,
                                    bool accumulate)
{
    const int64_t ldc_b = ldc * (int64_t)sizeof(float);
    /* GCC's tile intrinsics are asm statements that name no memory: the barriers
     * keep the compiler from moving this function's loads and stores across them
     * should it ever be inlined into its caller */
    __asm__ volatile("" : : : "memory");
    if (accumulate) {
        _tile_loadd(0, c, ldc_b);
        _tile_loadd(1, c + 16, ldc_b);
        _tile_loadd(2, c + 16 * ldc, ldc_b);
        _tile_loadd(3, c + 16 * ldc + 16, ldc_b);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int ch = 0; ch < nch; ch++, a += 1024, b += 1024) {
        _tile_loadd(4, a, 64);
        _tile_loadd(6, b, 128);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(7, b + 32, 128);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, a + 512, 64);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, ldc_b);
    _tile_stored(1, c + 16, ldc_b);
    _tile_stored(2, c + 16 * ldc, ldc_b);
    _tile_stored(3, c + 16 * ldc + 16, ldc_b);
    __asm__ volatile("" : : : "memory");
}
#else
void fab__amx_begin(void) {}
void fab__amx_end(void) {}
void fab__amx_kernel(int nch, const uint16_t *a, const uint16_t *b, float *c, int64_t ldc, bool accumulate)
{
    (void)nch, (void)a, (void)b, (void)c, (void)ldc, (void)accumulate;
    abort(); /* unreachable: fab__amx_available() is false */
}
#endif
