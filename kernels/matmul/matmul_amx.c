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
 * exact in f32, and the sums are f32. Not bit for bit a chain of f32 FMAs,
 * though: TDPBF16PS adds a pair's two products in its own way (1 + 2^-24 + 2^-24
 * gives 1 + 2^-23 where two FMAs give 1), still within f32 rounding. Unlike the
 * f32 path, AMX reads bf16 subnormal inputs as zero and flushes subnormal f32
 * results to zero (as GPU tensor cores may), and the k order differs, so results
 * are not bitwise those of the AVX-512 path. Deterministic: the order depends only
 * on the shape.
 *
 * Availability: the CPU must report AMX-TILE and AMX-BF16, and Linux must grant
 * the process the tile state (arch_prctl ARCH_REQ_XCOMP_PERM, once per process,
 * asked at the first product that would use it: see amx_grant_probe).
 * FAB_MATMUL_CPU_AMX=0 in the environment turns the path off (the tests compare);
 * the CPU attention's bf16 products use the same kernel (FAB_ATTN_CPU_AMX).
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

/* Decided once per process (the permission is per process): 1 yes, -1 no. */
static int amx_cpu_state, amx_granted_state;

/* The CPU has AMX-TILE and AMX-BF16, and the AVX-512 the packing uses (F, BW,
 * BF16: every AMX CPU so far), and the OS enabled their state in XCR0. */
static int amx_cpu_probe(void)
{
    unsigned eax, ebx, ecx, edx, lo, hi;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !((ecx >> 27) & 1)) /* OSXSAVE: xgetbv works */
        return -1;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || !((edx >> 24) & 1) || !((edx >> 22) & 1) ||
        !((ebx >> 16) & 1) || !((ebx >> 30) & 1))
        return -1; /* AMX-TILE, AMX-BF16, AVX512F, AVX512BW */
    if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) || !((eax >> 5) & 1))
        return -1; /* AVX512-BF16 */
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    /* opmask, ZMM state (5-7) and XTILECFG, XTILEDATA (17, 18) */
    return (lo & 0x600e0u) == 0x600e0u ? 1 : -1;
}

/* Probes once; idempotent, so two threads may both run it. */
static bool once(int *state, int (*probe)(void))
{
    int s = __atomic_load_n(state, __ATOMIC_ACQUIRE);
    if (s == 0) {
        s = probe();
        __atomic_store_n(state, s, __ATOMIC_RELEASE);
    }
    return s > 0;
}

/* Asks Linux (5.16 and later) for the 8 KiB of tile data. Only done when a
 * product is about to use AMX: from then on the kernel's signal frames for this
 * process are larger, which a small sigaltstack (e.g. 8 KiB) no longer holds. */
static int amx_grant_probe(void)
{
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 ? 1 : -1;
}
#endif

bool fab__amx_available(void)
{
#ifdef FAB_AMX
    bool has = once(&amx_cpu_state, amx_cpu_probe);
#ifdef FAB_MM_FORCE_UKERNEL
    has = false; /* a test copy of the library whose products run one forced kernel */
#endif
    return has;
#else
    return false;
#endif
}

bool fab__amx_enabled(const char *env_name)
{
    const char *env = getenv(env_name);
    if (env && env[0] == '0' && env[1] == '\0')
        return false;
#if defined(FAB_AMX)
    return fab__amx_available() && once(&amx_granted_state, amx_grant_probe);
#else
    return false;
#endif
}

/* ------------------------------------------------------------------ packing */

#ifdef FAB_AMX
#define FAB_AMX_AVX512 __attribute__((target("avx512f")))

/* 16 rows of 16 32-bit values (row r at src + r*src_stride bytes) stored
 * transposed (row c at dst + c*dst_stride bytes): 32-bit unpacks give each
 * 4-row group its columns per 128-bit lane, 64-bit unpacks join the group's rows,
 * and two 128-bit lane shuffles gather the four groups. */
FAB_AMX_AVX512 static void transpose16x16_u32(const char *src, int64_t src_stride, char *dst, int64_t dst_stride)
{
    __m512i r[16], t[16], u[16];
    for (int i = 0; i < 16; i++)
        r[i] = _mm512_loadu_si512(src + i * src_stride);
    for (int i = 0; i < 16; i += 2) { /* per lane: a0 b0 a1 b1 | a2 b2 a3 b3 */
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int g = 0; g < 4; g++) { /* u[4g + e], lane L: column 4L + e of rows 4g .. 4g+3 */
        u[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
    for (int e = 0; e < 4; e++) { /* lane L of group g to lane g of column 4L + e */
        __m512i y0 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x44), y1 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xEE);
        __m512i y2 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x44);
        __m512i y3 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xEE);
        _mm512_storeu_si512(dst + (0 + e) * dst_stride, _mm512_shuffle_i32x4(y0, y2, 0x88));
        _mm512_storeu_si512(dst + (4 + e) * dst_stride, _mm512_shuffle_i32x4(y0, y2, 0xDD));
        _mm512_storeu_si512(dst + (8 + e) * dst_stride, _mm512_shuffle_i32x4(y1, y3, 0x88));
        _mm512_storeu_si512(dst + (12 + e) * dst_stride, _mm512_shuffle_i32x4(y1, y3, 0xDD));
    }
}

/* dst[32 x 32] (row stride 32) = the transpose of 32 rows of 32 floats at src
 * (row stride ld floats): four 16x16 transposes of the values' bits. */
FAB_AMX_AVX512 void fab__amx_transpose32_f32(const float *src, int64_t ld, float *dst)
{
    for (int bi = 0; bi < 2; bi++)
        for (int bj = 0; bj < 2; bj++)
            transpose16x16_u32((const char *)(src + 16 * bi * ld + 16 * bj), ld * 4,
                               (char *)(dst + 16 * bj * 32 + 16 * bi), 128);
}

/* A whole chunk of a transposed A: stored rows pb .. pb+31 (32 values from ib
 * each) to dst[r*32 + t]. Pairs of stored rows become 32-bit words (k pair, row
 * r), w[pp][r]; the chunk's rows r are then w's columns, two 16x16 transposes. */
FAB_AMX_AVX512 static void pack_a_chunk_trans(const uint16_t *s, int64_t ld, uint16_t *dst)
{
    uint32_t w[16][32] __attribute__((aligned(64)));
    for (int pp = 0; pp < 16; pp++) {
        const uint16_t *r0 = s + 2 * pp * ld, *r1 = r0 + ld;
        for (int h = 0; h < 2; h++) {
            __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(r0 + 16 * h)));
            __m512i hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(r1 + 16 * h)));
            _mm512_store_si512(&w[pp][16 * h], _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
    transpose16x16_u32((const char *)&w[0][0], 128, (char *)dst, 64);
    transpose16x16_u32((const char *)&w[0][16], 128, (char *)(dst + 16 * 32), 64);
}

/* A whole chunk of an untransposed A: 32 rows of 64 bytes, a vector each (a
 * call to memcpy per row cost a fifth of a 512^3 GEMM). */
FAB_AMX_AVX512 static void pack_a_chunk(const uint16_t *s, int64_t ld, uint16_t *dst)
{
    for (int r = 0; r < 32; r++)
        _mm512_storeu_si512(dst + r * 32, _mm512_loadu_si512(s + r * ld));
}

/* A whole chunk of an untransposed B: stored rows p and p+1 interleaved into
 * pair row p/2 (column c's two values side by side), two permutes per pair. */
__attribute__((target("avx512f,avx512bw"))) static void pack_b_chunk(const uint16_t *s, int64_t ld, uint16_t *dst)
{
    /* lo: columns 0-15, word 2c from the first row's c, 2c+1 from the second's
     * (index 32 + c); hi: columns 16-31 */
    const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                        37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    for (int pp = 0; pp < 16; pp++) {
        const __m512i r0 = _mm512_loadu_si512(s + 2 * pp * ld), r1 = _mm512_loadu_si512(s + (2 * pp + 1) * ld);
        _mm512_storeu_si512(dst + pp * 64, _mm512_permutex2var_epi16(r0, lo, r1));
        _mm512_storeu_si512(dst + pp * 64 + 32, _mm512_permutex2var_epi16(r0, hi, r1));
    }
}

/* A whole chunk of a transposed B: stored rows jb .. jb+31 (32 k from pb each,
 * i.e. 16 k pairs as 32-bit words) to pair rows of 32 columns: two 16x16
 * transposes of 32-bit words, columns 0-15 and 16-31. */
FAB_AMX_AVX512 static void pack_b_chunk_trans(const uint16_t *s, int64_t ld, uint16_t *dst)
{
    transpose16x16_u32((const char *)s, 2 * ld, (char *)dst, 128);
    transpose16x16_u32((const char *)(s + 16 * ld), 2 * ld, (char *)(dst + 32), 128);
}
#endif


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
#ifdef FAB_AMX
            if (rows == 32 && ks == 32) {
                pack_a_chunk(src + ib * ld + pb, ld, dst);
                continue;
            }
#endif
            for (int r = 0; r < rows; r++)
                memcpy(dst + r * 32, src + (ib + r) * ld + pb, (size_t)ks * sizeof(uint16_t));
        } else {
            /* a 32x32 transpose: stored row p holds the chunk's 32 rows side by side */
#ifdef FAB_AMX
            if (rows == 32 && ks == 32) {
                pack_a_chunk_trans(src + pb * ld + ib, ld, dst);
                continue;
            }
#endif
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
#ifdef FAB_AMX
            if (cols == 32 && ks == 32) {
                pack_b_chunk(src + pb * ld + jb, ld, dst);
                continue;
            }
#endif
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
#ifdef FAB_AMX
            if (cols == 32 && ks == 32) {
                pack_b_chunk_trans(src + jb * ld + pb, ld, dst);
                continue;
            }
#endif
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
void fab__amx_transpose32_f32(const float *src, int64_t ld, float *dst)
{
    for (int r = 0; r < 32; r++)
        for (int c = 0; c < 32; c++)
            dst[c * 32 + r] = src[r * ld + c];
}
void fab__amx_begin(void) {}
void fab__amx_end(void) {}
/* never called: without FAB_AMX, fab__amx_enabled() is false */
void fab__amx_kernel(int nch, const uint16_t *a, const uint16_t *b, float *c, int64_t ldc, bool accumulate)
{
    (void)nch, (void)a, (void)b, (void)c, (void)ldc, (void)accumulate;
}
#endif
