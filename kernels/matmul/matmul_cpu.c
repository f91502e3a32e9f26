/*
 * matmul_cpu.c: fab_matmul on the host.
 *
 * Idea (BLIS): for each KC-deep slice of k, a KC x width block of op(B) is packed
 * into NR-wide panels (L3) and MC x KC blocks of op(A) into MR-high panels; a
 * register-blocked MR x NR micro-kernel (matmul_ukernel.c: AVX-512, AVX2+FMA or
 * portable C, picked at run time) streams one A panel (L1) and one B panel (L2)
 * and adds their product into C. f16/bf16 operands are widened to f32 while packing,
 * so the micro-kernel is f32 only.
 *
 * Threads: one OpenMP region per call; the packed B block is shared, the work
 * on it is handed out dynamically in tasks (see gemm_packed). The packing
 * buffers are the context's host scratch, so repeated calls reuse warm pages.
 *
 * Numerics: f32 FMA, the k-sum in KC-sized slices in order, so results depend
 * only on the shape, never on the thread count: deterministic. The f32 sum of
 * each slice lives in C itself (f32 C) or in an f32 scratch (f16/bf16 C), and the
 * epilogue (beta·C for scratch, bias, pre_act store, activation or its derivative,
 * rounding to C's dtype) runs once per element, right after the last slice, on an
 * A panel's rows across a run of B panels while they are in L1.
 *
 * bf16 A and B on a CPU with AMX take gemm_amx instead (matmul_amx.c: bf16 packed
 * as is, 32x32 blocks of C in AMX tiles, f32 sums; its numerics there).
 *
 * FAB_MATMUL_ALGO_REFERENCE runs plain loops with a float64 sum instead.
 */
#include "matmul.h"
#include "matmul_amx.h"
#include "matmul_cpu.h"

#include "../activation/gelu_cpu_math.h"
#include "../common/cpu_dtype.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FAB_MM_X86_INTRIN 1 /* functions with target("avx...") attributes, picked at run time */
#endif

/* ------------------------------------------------------------- element access */

static inline const char *bptr(const void *base, fab_dtype dt, int64_t off)
{
    return (const char *)base + off * (int64_t)fab_dtype_size(dt);
}

/* ----------------------------------------------------------------- epilogue */

/* v = act(v) over n values, a loop per activation so that each vectorises (the
 * GELUs are gelu_cpu_math.h's, as fab_gelu_forward: a fused GELU gives the bits
 * of the op on the pre-activation, NaN signs aside). Always inlined, so that each
 * of epilogue_row's ISA copies gets its own. */
static inline __attribute__((always_inline)) void act_fwd_n(fab_matmul_activation act, float *v, int n)
{
    switch (act) {
    case FAB_MATMUL_ACT_RELU:
        for (int j = 0; j < n; j++)
            v[j] = v[j] > 0.0f ? v[j] : 0.0f;
        break;
    case FAB_MATMUL_ACT_GELU_TANH:
#pragma omp simd
        for (int j = 0; j < n; j++)
            v[j] = fab__gelu_f32(v[j], 1);
        break;
    case FAB_MATMUL_ACT_GELU_ERF:
#pragma omp simd
        for (int j = 0; j < n; j++)
            v[j] = fab__gelu_f32(v[j], 0);
        break;
    default: break;
    }
}

/* v *= act'(x) over n values (as fab_gelu_backward for the GELUs) */
static inline __attribute__((always_inline)) void act_grad_n(fab_matmul_activation act, float *v, const float *x, int n)
{
    switch (act) {
    case FAB_MATMUL_ACT_RELU:
        for (int j = 0; j < n; j++)
            v[j] *= x[j] > 0.0f ? 1.0f : 0.0f;
        break;
    case FAB_MATMUL_ACT_GELU_TANH:
#pragma omp simd
        for (int j = 0; j < n; j++)
            v[j] *= fab__gelu_grad_f32(x[j], 1);
        break;
    case FAB_MATMUL_ACT_GELU_ERF:
#pragma omp simd
        for (int j = 0; j < n; j++)
            v[j] *= fab__gelu_grad_f32(x[j], 0);
        break;
    default: break;
    }
}

#define EPI_CHUNK 64 /* values per step of epilogue_row */

/* Finishes n values of row i (columns j0..) of one batch: w holds alpha·AB (plus
 * beta·C when `beta_done`); writes C (and pre_act in the forward pass). c_row and
 * p_row point at column j0 of the row in C / pre_act. Per element, in this
 * order: + beta·C, then (backward) · act'(pre_act), or (forward) + bias, store
 * pre_act, act; rounded once to C's dtype. A chunk at a time, each step one
 * loop (the conversions were a per-element switch: 15% of a bf16-output GEMM). */
FAB__VECTOR_CLONES
static void epilogue_row(const fab__mm_args *a, const float *w, int64_t j0, int64_t n, bool beta_done,
                         void *c_row, void *p_row)
{
    const bool add_beta = !beta_done && a->beta != 0.0f;
    const size_t ce = fab_dtype_size(a->c_dtype), be = a->bias ? fab_dtype_size(a->bias_dtype) : 0;
    float v[EPI_CHUNK], t[EPI_CHUNK];
    for (int64_t c0 = 0; c0 < n; c0 += EPI_CHUNK) {
        const int m = (int)(n - c0 < EPI_CHUNK ? n - c0 : EPI_CHUNK);
        char *c_at = (char *)c_row + c0 * (int64_t)ce, *p_at = p_row ? (char *)p_row + c0 * (int64_t)ce : NULL;
        memcpy(v, w + c0, sizeof(float) * (size_t)m);
        if (add_beta) {
            fab__load_row_f32(c_at, a->c_dtype, m, t);
            for (int j = 0; j < m; j++)
                v[j] += a->beta * t[j];
        }
        if (a->act_backward) {
            fab__load_row_f32(p_at, a->c_dtype, m, t);
            act_grad_n(a->act, v, t, m);
        } else {
            if (a->bias) {
                fab__load_row_f32((const char *)a->bias + (j0 + c0) * (int64_t)be, a->bias_dtype, m, t);
                for (int j = 0; j < m; j++)
                    v[j] += t[j];
            }
            if (p_at)
                fab__store_row_f32(p_at, a->c_dtype, m, v);
            act_fwd_n(a->act, v, m);
        }
        fab__store_row_f32(c_at, a->c_dtype, m, v);
    }
}

static bool epilogue_needed(const fab__mm_args *a, bool w_is_c)
{
    return !w_is_c || a->bias || a->pre_act || a->act != FAB_MATMUL_ACT_NONE;
}

/* ------------------------------------------------------------------ packing */

/* A panel is kc rows of w values (w = MR for A, NR for B); panels of one block
 * lie one after the other, w*kc floats apart. The packing routines read the
 * stored matrices in memory order, a stored row (or a run of one) at a time, so
 * the hardware prefetchers can stream them; they never walk down a column, which
 * would cost a cache miss per element. f16/bf16 runs are widened first into a
 * per-thread f32 staging buffer, then packed like f32. */

/* n f16/bf16 values widened to f32, exactly (f16 through F16C where the CPU has
 * it). A function of its own for FAB__VECTOR_CLONES: the packing that calls it is
 * built once, and the bf16 loop would otherwise be the baseline's SSE2 only. */
FAB__VECTOR_CLONES
static void widen(const uint16_t *restrict s, fab_dtype dt, int64_t n, float *restrict d)
{
    fab__load_row_f32(s, dt, (int)n, d); /* n: a packing block's run, at most max(KC, NC) */
}

/* src[off .. off+n) as f32: the source itself when it is f32, else widened into
 * stage. */
static inline const float *run_f32(const void *src, fab_dtype dt, int64_t off, int64_t n, float *stage)
{
    if (dt == FAB_DTYPE_F32)
        return (const float *)src + off;
    widen((const uint16_t *)src + off, dt, n, stage);
    return stage;
}

/* Both shapes of packing are small transposes. They go SCATTER_ROWS rows (or 8
 * columns) at a time, so that each destination line is written whole before the
 * next, and each source line is read whole: panels lie w*kc floats apart (16 KiB
 * for B), so walking one row across all panels would touch one cache set per
 * panel and run out of L1 ways. */
#define SCATTER_ROWS 8
#define FAB_MM_MAX_W 32 /* the widest register tile side (MR or NR) */

/* One panel from `nruns` contiguous runs of kc values: run r becomes column r of
 * the panel, d[p*w + r]; columns past nruns are zero. Inlined with a constant w,
 * the inner loops unroll. */
static inline __attribute__((always_inline)) void interleave_w(const float *const *run, int nruns, int64_t kc, int w,
                                                               float *d)
{
    int64_t p0 = 0;
    if (nruns == w) { /* whole 8-deep blocks: w runs x 8 values through a small buffer */
        float blk[FAB_MM_MAX_W][8];
        for (; p0 + 8 <= kc; p0 += 8) {
            for (int r = 0; r < w; r++)
                for (int t = 0; t < 8; t++)
                    blk[r][t] = run[r][p0 + t];
            for (int t = 0; t < 8; t++)
                for (int r = 0; r < w; r++)
                    d[(p0 + t) * w + r] = blk[r][t];
        }
    }
    for (int64_t p = p0; p < kc; p++) /* the rest, and panels with missing runs */
        for (int r = 0; r < w; r++)
            d[p * w + r] = r < nruns ? run[r][p] : 0.0f;
}

#ifdef FAB_MM_X86_INTRIN
/* interleave_w for whole panels (nruns == w, w a multiple of 4) with AVX: per 8
 * deep block, each group of 4 runs is a 4 x 8 transpose in registers (unpack,
 * shuffle), stored as eight 4-float pieces; the rest of kc as interleave_w. The
 * A panels of a row-major A (the common case) are packed this way; the scalar
 * loop spent 6% of a 512^3 GEMM there. */
__attribute__((target("avx"))) static void interleave_avx(const float *const *run, int64_t kc, int w, float *d)
{
    int64_t p0 = 0;
    for (; p0 + 8 <= kc; p0 += 8) {
        float *dp = d + p0 * w;
        for (int g = 0; g < w; g += 4) {
            __m256 a = _mm256_loadu_ps(run[g] + p0), b = _mm256_loadu_ps(run[g + 1] + p0);
            __m256 c = _mm256_loadu_ps(run[g + 2] + p0), e = _mm256_loadu_ps(run[g + 3] + p0);
            __m256 t0 = _mm256_unpacklo_ps(a, b), t1 = _mm256_unpackhi_ps(a, b); /* a0 b0 a1 b1 | a4 b4 a5 b5 */
            __m256 t2 = _mm256_unpacklo_ps(c, e), t3 = _mm256_unpackhi_ps(c, e);
            __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE); /* depth 0|4, 1|5 */
            __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE); /* depth 2|6, 3|7 */
            _mm_storeu_ps(dp + 0 * w + g, _mm256_castps256_ps128(u0));
            _mm_storeu_ps(dp + 1 * w + g, _mm256_castps256_ps128(u1));
            _mm_storeu_ps(dp + 2 * w + g, _mm256_castps256_ps128(u2));
            _mm_storeu_ps(dp + 3 * w + g, _mm256_castps256_ps128(u3));
            _mm_storeu_ps(dp + 4 * w + g, _mm256_extractf128_ps(u0, 1));
            _mm_storeu_ps(dp + 5 * w + g, _mm256_extractf128_ps(u1, 1));
            _mm_storeu_ps(dp + 6 * w + g, _mm256_extractf128_ps(u2, 1));
            _mm_storeu_ps(dp + 7 * w + g, _mm256_extractf128_ps(u3, 1));
        }
    }
    for (int64_t p = p0; p < kc; p++)
        for (int r = 0; r < w; r++)
            d[p * w + r] = run[r][p];
}
#endif

static void interleave(const float *const *run, int nruns, int64_t kc, int w, float *d)
{
#ifdef FAB_MM_X86_INTRIN
    if (nruns == w && w % 4 == 0 && __builtin_cpu_supports("avx")) {
        interleave_avx(run, kc, w, d);
        return;
    }
#endif
    switch (w) {
    case 6: interleave_w(run, nruns, kc, 6, d); break;
    case 12: interleave_w(run, nruns, kc, 12, d); break;
    case 16: interleave_w(run, nruns, kc, 16, d); break;
    case 32: interleave_w(run, nruns, kc, 32, d); break;
    default: interleave_w(run, nruns, kc, w, d); break;
    }
}

/* Rows p0 .. p0+nrows of consecutive panels from nrows runs of n values: values
 * [q*w, q*w + w) of run r go to d + q*w*kc + (p0+r)*w; the last panel's columns
 * past n are zero. */
static inline __attribute__((always_inline)) void scatter_w(const float *const *run, int nrows, int64_t n, int64_t p0,
                                                            int64_t kc, int w, float *d)
{
    int64_t q = 0;
    for (; q * w + w <= n; q++) {
        float *dq = d + q * w * kc + p0 * w;
        for (int r = 0; r < nrows; r++)
            for (int c = 0; c < w; c++)
                dq[r * w + c] = run[r][q * w + c];
    }
    if (q * w < n) {
        float *dq = d + q * w * kc + p0 * w;
        for (int r = 0; r < nrows; r++)
            for (int c = 0; c < w; c++)
                dq[r * w + c] = q * w + c < n ? run[r][q * w + c] : 0.0f;
    }
}

static void scatter(const float *const *run, int nrows, int64_t n, int64_t p0, int64_t kc, int w, float *d)
{
    switch (w) {
    case 6: scatter_w(run, nrows, n, p0, kc, 6, d); break;
    case 12: scatter_w(run, nrows, n, p0, kc, 12, d); break;
    case 16: scatter_w(run, nrows, n, p0, kc, 16, d); break;
    case 32: scatter_w(run, nrows, n, p0, kc, 32, d); break;
    default: scatter_w(run, nrows, n, p0, kc, w, d); break;
    }
}

/* Rows p .. p+nrows of panels from stored rows: stored row (p_src + r) holds n
 * values starting at column j of src (row stride ld). */
static void scatter_stored_rows(const void *src, fab_dtype dt, int64_t ld, int64_t p_src, int64_t j, int64_t n,
                                int64_t p, int nrows, int64_t kc, int w, float *d, float *stage)
{
    const float *run[SCATTER_ROWS];
    for (int r = 0; r < nrows; r++)
        run[r] = run_f32(src, dt, (p_src + r) * ld + j, n, stage + r * n);
    scatter(run, nrows, n, p, kc, w, d);
}

/* Packs a block of op(X) into w-wide panels: panel side i in [i0, i0+len) (rows of
 * op(A), columns of op(B); past len zero), depth p in [p0, p0+kc). along_k: X
 * stores each panel-side line as a run along k, element (i, p) at
 * src[i*ld + p] (A as stored, B transposed); else stored row p holds depth p of
 * every panel, element (i, p) at src[p*ld + i]. stage: max(w*kc,
 * SCATTER_ROWS*len) floats. */
static void pack_panels(const void *src, fab_dtype dt, int64_t ld, bool along_k, int64_t i0, int64_t len, int64_t p0,
                        int64_t kc, int w, float *dst, float *stage)
{
    if (along_k) {
        const float *run[FAB_MM_MAX_W];
        for (int64_t q = 0; q < len; q += w) {
            int n = (int)(len - q < w ? len - q : w);
            for (int r = 0; r < n; r++)
                run[r] = run_f32(src, dt, (i0 + q + r) * ld + p0, kc, stage + r * kc);
            interleave(run, n, kc, w, dst + q * kc);
        }
    } else {
        for (int64_t p = 0; p < kc; p += SCATTER_ROWS) {
            int rows = (int)(kc - p < SCATTER_ROWS ? kc - p : SCATTER_ROWS);
            scatter_stored_rows(src, dt, ld, p0 + p, i0, len, p, rows, kc, w, dst, stage);
        }
    }
}

/* op(A)[i0 .. i0+mc) x [p0 .. p0+kc) into MR-row panels. */
static void pack_a(const fab__mm_args *a, const void *A, int64_t i0, int64_t mc, int64_t p0, int64_t kc, int mr,
                   float *dst, float *stage)
{
    pack_panels(A, a->ab_dtype, a->lda, !a->trans_a, i0, mc, p0, kc, mr, dst, stage);
}

/* op(B)[p0 .. p0+kc) x [j0 .. j0+cols) into NR-column panels. */
static void pack_b(const fab__mm_args *a, const void *B, int64_t p0, int64_t kc, int64_t j0, int64_t cols, int nr,
                   float *dst, float *stage)
{
    pack_panels(B, a->ab_dtype, a->ldb, a->trans_b, j0, cols, p0, kc, nr, dst, stage);
}

/* ------------------------------------------------------------ packed GEMM */

typedef struct gemm_plan {
    const fab__mm_ukernel *uk;
    int64_t mc, kc;
    int64_t run;      /* B panels an A panel meets before the next A panel (L2) */
    bool w_is_c;      /* C is f32: sums accumulate in C itself */
    int64_t ldw;      /* row stride of the f32 scratch (f16/bf16 C, several k slices); 0: none */
} gemm_plan;

/* Where the f32 sums of one A panel's row of tiles across a run of B panels
 * go (rows i.., columns j.. of batch offset bt_c): C itself (f32 C), the f32
 * scratch (f16/bf16 C over several k slices: `scratch` is its place for (i, j)),
 * or the thread's run buffer (f16/bf16 C, one slice), finished right after. */
typedef struct run_sums {
    float *w;       /* sums of (i, j) */
    int64_t ldw;    /* their row stride */
    bool beta_done; /* whether w already holds beta·C */
} run_sums;

static run_sums run_sums_at(const fab__mm_args *a, const gemm_plan *g, int64_t bt_c, int64_t i, int64_t j,
                            float *scratch, float *runbuf)
{
    if (g->w_is_c)
        return (run_sums){(float *)a->c + bt_c + i * a->ldc + j, a->ldc, true};
    if (g->ldw) /* several k slices */
        return (run_sums){scratch, g->ldw, false};
    return (run_sums){runbuf, g->run * g->uk->nr, false};
}

/* One MR x NR tile: the micro-kernel on packed panels ap/bp for k slice number
 * `slice`, adding into w (stride ldw). mr_eff/nr_eff: the tile's real extent at
 * the edges, where the kernel writes to `tile` and only the real part is added. */
static void do_tile(const fab__mm_args *a, const gemm_plan *g, float *w, int64_t ldw, int mr_eff, int nr_eff,
                    int64_t kc, const float *ap, const float *bp, int slice, float *tile)
{
    const int MR = g->uk->mr, NR = g->uk->nr;
    /* beta for the micro-kernel: the first slice reads C only when C is w */
    float beta_k = slice == 0 ? (g->w_is_c ? a->beta : 0.0f) : 1.0f;
    if (mr_eff == MR && nr_eff == NR) {
        g->uk->fn(kc, ap, bp, w, ldw, a->alpha, beta_k);
    } else {
        g->uk->fn(kc, ap, bp, tile, NR, a->alpha, 0.0f);
        for (int r = 0; r < mr_eff; r++)
            for (int c = 0; c < nr_eff; c++) {
                float *o = &w[r * ldw + c];
                *o = tile[r * NR + c] + (beta_k == 0.0f ? 0.0f : beta_k * *o);
            }
    }
}

/* After the last k slice: the epilogue over rows i .. i+rows, columns j .. j+cols
 * (one A panel across a run of B panels: a few KiB, still in L1). A row of a run
 * at a time, not a row of a tile: per 16-column tile row the calls and loop set-up
 * took about half of a fused GELU's time (profile of the GPT-2 fc forward, AVX2). */
static void finish_run(const fab__mm_args *a, int64_t bt_c, int64_t bt_p, int64_t i, int64_t j, int rows, int64_t cols,
                       run_sums w)
{
    size_t ce = fab_dtype_size(a->c_dtype);
    for (int r = 0; r < rows; r++) {
        char *c_row = (char *)a->c + (bt_c + (i + r) * a->ldc + j) * (int64_t)ce;
        char *p_row = a->pre_act ? (char *)a->pre_act + (bt_p + (i + r) * a->ldp + j) * (int64_t)ce : NULL;
        epilogue_row(a, w.w + r * w.ldw, j, cols, w.beta_done, c_row, p_row);
    }
}

/* Threads share the packed K x NC block of op(B) (every k slice of it, packed
 * cooperatively: packing it once per thread would cost as much as the
 * arithmetic on small blocks). The block's work is then cut into tasks (MC rows
 * x a group of NR panels, all k slices) handed out dynamically, so a core that
 * other work takes away for a while delays only its own tasks; one barrier per
 * column block (after packing B), not one per k slice. A task packs its MC x KC
 * A block per slice; then each A panel (MR x KC, L1) runs against a run of the
 * group's B panels that fits L2 (b_run_bytes), before the next A panel. This is
 * the vector operand streaming from L2 and the broadcast one staying in L1; the
 * other way round (a B panel in L1 against every A panel) lost 5-11% on a
 * Sapphire Rapids core, whose 48 KiB L1 holds a 48 KiB B panel and nothing else. */
/* B is packed in units of this many panels (256 columns of NR = 16): a stored row
 * is read 1 KiB at a time, and there are units enough to share. */
#define B_UNIT_PANELS 16

static fab_status gemm_packed(fab_context *ctx, const fab__mm_args *a)
{
    gemm_plan g;
    memset(&g, 0, sizeof g);
    g.uk = fab__mm_pick_ukernel();
    const int MR = g.uk->mr, NR = g.uk->nr;
    if (MR > FAB_MM_MAX_W || NR > FAB_MM_MAX_W) /* the packing's run tables and buffers */
        return fab__fail(FAB_ERR_INTERNAL, "fab_matmul: micro-kernel %s is %dx%d, wider than FAB_MM_MAX_W=%d",
                         g.uk->name, MR, NR, FAB_MM_MAX_W);
    g.kc = g.uk->kc;
    g.mc = g.uk->mc;
    int64_t nc_max = g.uk->nc;
    /* a k just past a slice is better split evenly than with a thin last slice */
    int64_t nslices = (a->k + g.kc - 1) / g.kc;
    if (nslices > 1)
        g.kc = ((a->k + nslices - 1) / nslices + 7) / 8 * 8;
    nslices = (a->k + g.kc - 1) / g.kc;
    g.run = (int64_t)(g.uk->b_run_bytes / ((size_t)NR * (size_t)g.kc * sizeof(float)));
    if (g.run < 1)
        g.run = 1;
    double flops = 2.0 * (double)a->m * (double)a->n * (double)a->k * (double)a->batch;
    int threads = flops < 2e6 ? 1 : ctx->num_threads;
    /* row blocks of equal height (a multiple of MR), so no block is thin, and as
     * many as a multiple of the thread count where m allows, so that one row of
     * tasks keeps every thread busy to the end (15 blocks on 2 threads idle one
     * thread for a 16th of the time) */
    int64_t nblocks = (a->m + g.mc - 1) / g.mc;
    int64_t max_blocks = (a->m + MR - 1) / MR;
    nblocks = (nblocks + threads - 1) / threads * threads;
    if (nblocks > max_blocks)
        nblocks = max_blocks;
    g.mc = ((a->m + nblocks - 1) / nblocks + MR - 1) / MR * MR;
    int64_t n_round = (a->n + NR - 1) / NR * NR;
    if (nc_max > n_round)
        nc_max = n_round;
    if (g.run > nc_max / NR) /* a run is at most a column block */
        g.run = nc_max / NR;
    g.w_is_c = a->c_dtype == FAB_DTYPE_F32;
    if (!g.w_is_c && nslices > 1)
        g.ldw = nc_max;

    size_t b_floats = (size_t)g.kc * (size_t)nslices * (size_t)nc_max;
    size_t a_floats = (size_t)g.kc * (size_t)g.mc;
    /* an edge tile, and the run buffer (run_sums_at) */
    size_t t_floats = (size_t)(MR * NR) + (size_t)MR * (size_t)g.run * (size_t)NR;
    /* staging for f16/bf16 runs: MR or NR runs of kc, a row of an A block, or a
     * row of a B packing unit */
    size_t st_floats = (size_t)(MR > NR ? MR : NR) * (size_t)g.kc;
    if (st_floats < (size_t)(SCATTER_ROWS * g.mc))
        st_floats = (size_t)(SCATTER_ROWS * g.mc);
    if (st_floats < (size_t)(SCATTER_ROWS * B_UNIT_PANELS * NR))
        st_floats = (size_t)(SCATTER_ROWS * B_UNIT_PANELS * NR);
    size_t s_floats = g.ldw ? (size_t)a->m * (size_t)g.ldw : 0;
    size_t per_thread_floats = a_floats + t_floats + st_floats;
    size_t total = b_floats + s_floats + per_thread_floats * (size_t)threads;
    float *buf = fab__host_scratch_get(ctx, total * sizeof(float));
    if (!buf)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "fab_matmul: no host memory for the packing buffers (%zu bytes)",
                         total * sizeof(float));
    float *bbuf = buf, *scratch = buf + b_floats, *per_thread = scratch + s_floats;

#pragma omp parallel num_threads(threads)
    {
        int tid = 0, nt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        float *my_a = per_thread + per_thread_floats * (size_t)tid;
        float *my_tile = my_a + a_floats, *my_run = my_tile + MR * NR, *my_stage = my_tile + t_floats;
        for (int64_t bt = 0; bt < a->batch; bt++) {
            const void *A = bptr(a->a, a->ab_dtype, fab__mm_batch_offset(a, a->a_bstride, bt));
            const void *B = bptr(a->b, a->ab_dtype, fab__mm_batch_offset(a, a->b_bstride, bt));
            int64_t off_c = fab__mm_batch_offset(a, a->c_bstride, bt);
            int64_t off_p = a->pre_act ? fab__mm_batch_offset(a, a->p_bstride, bt) : 0;
            for (int64_t jc = 0; jc < a->n; jc += nc_max) {
                int64_t nc = a->n - jc < nc_max ? a->n - jc : nc_max;
                int64_t npanels = (nc + NR - 1) / NR;
                /* all k slices of this column block, packed by all threads in units
                 * of B_UNIT_PANELS panels: slice s of panel q at
                 * bbuf + s*KC*nc_max + q*NR*kc */
                int64_t units = (npanels + B_UNIT_PANELS - 1) / B_UNIT_PANELS;
#pragma omp for schedule(dynamic, 1)
                for (int64_t u = 0; u < units * nslices; u++) {
                    int64_t s = u / units, q = u % units * B_UNIT_PANELS;
                    int64_t p0 = s * g.kc, kc = a->k - p0 < g.kc ? a->k - p0 : g.kc;
                    int64_t cols = nc - q * NR < B_UNIT_PANELS * NR ? nc - q * NR : B_UNIT_PANELS * NR;
                    pack_b(a, B, p0, kc, jc + q * NR, cols, NR, bbuf + s * g.kc * nc_max + q * NR * kc, my_stage);
                }
                /* tasks: row blocks x panel groups; a group is wide (>= 512 columns
                 * where n allows), since its task repacks its A block per k slice */
                int64_t nic = (a->m + g.mc - 1) / g.mc;
                int64_t groups = (4 * (int64_t)nt + nic - 1) / nic;
                if (groups > (npanels * NR + 511) / 512)
                    groups = (npanels * NR + 511) / 512;
                if (groups < 1)
                    groups = 1;
                int64_t width = (npanels + groups - 1) / groups;
                groups = (npanels + width - 1) / width;
#pragma omp for schedule(dynamic, 1)
                for (int64_t t = 0; t < nic * groups; t++) {
                    int64_t ic = t / groups * g.mc, q0 = t % groups * width;
                    int64_t q1 = q0 + width < npanels ? q0 + width : npanels;
                    int64_t mc = a->m - ic < g.mc ? a->m - ic : g.mc;
                    for (int64_t s = 0; s < nslices; s++) {
                        int64_t p0 = s * g.kc, kc = a->k - p0 < g.kc ? a->k - p0 : g.kc;
                        const float *bs = bbuf + s * g.kc * nc_max;
                        pack_a(a, A, ic, mc, p0, kc, MR, my_a, my_stage);
                        /* each A panel (L1) meets the B panels of one L2-sized run
                         * of the group before the next A panel comes */
                        for (int64_t r0 = q0; r0 < q1; r0 += g.run) {
                            int64_t r1 = r0 + g.run < q1 ? r0 + g.run : q1;
                            int64_t j0 = jc + r0 * NR, cols = (r1 * NR < nc ? r1 * NR : nc) - r0 * NR;
                            for (int64_t ir = 0; ir < mc; ir += MR) {
                                int mr_eff = (int)(mc - ir < MR ? mc - ir : MR);
                                float *sc = g.ldw ? scratch + (ic + ir) * g.ldw + (j0 - jc) : NULL;
                                run_sums w = run_sums_at(a, &g, off_c, ic + ir, j0, sc, my_run);
                                for (int64_t q = r0; q < r1; q++) {
                                    int nr_eff = (int)(nc - q * NR < NR ? nc - q * NR : NR);
                                    do_tile(a, &g, w.w + (q - r0) * NR, w.ldw, mr_eff, nr_eff, kc, my_a + ir * kc,
                                            bs + q * NR * kc, (int)s, my_tile);
                                }
                                if (s == nslices - 1 && epilogue_needed(a, g.w_is_c))
                                    finish_run(a, off_c, off_p, ic + ir, j0, mr_eff, cols, w);
                            }
                        }
                    }
                }
            }
        }
    }
    fab__host_scratch_put(ctx, buf);
    return FAB_OK;
}

/* ------------------------------------------------------------ AMX bf16 GEMM */

/* bf16 A and B on a CPU with AMX (matmul_amx.c has the kernel and the packing).
 * Blocks: op(A) and op(B) are packed whole where they fit the workspace (else
 * in row and column blocks), every k slice of them, by all threads; then tasks of
 * MB x NB of C (256 x 256 where the shape gives every thread work) go out
 * dynamically. A task keeps its f32 sums in a per-thread buffer (256 KiB, L2) and
 * walks the k slices in order: per slice, each 32-row A panel (128 KiB) meets
 * each 32-column B panel of the task (all of them 1 MiB: L2). After the last slice
 * the epilogue (alpha, beta, bias, pre_act, activation, conversion) writes the
 * task's C rows.
 * The slice is deep: each kernel call stores its four C tiles and the next one
 * loads them back, a stall AMX cannot hide. Measured on a Sapphire Rapids core
 * (2 threads, warm caches, bf16 -> f32), 2048-deep slices against 256-deep ones:
 * 512^3 +7%, 2048^3 +40%, GPT-2 fc forward +23% and dW +14%; slices as deep as k
 * itself lost 23% at k = 8192, where a task's B panels no longer fit L2. */
#define AMX_SLICE_CHUNKS 64           /* 2048 k per slice */

static inline int64_t round_up(int64_t x, int64_t q)
{
    return (x + q - 1) / q * q;
}

static fab_status gemm_amx(fab_context *ctx, const fab__mm_args *a)
{
    const int64_t kp = round_up(a->k, FAB_AMX_CHUNK);
    const int nch_all = (int)(kp / FAB_AMX_CHUNK);
    const int nslices = (nch_all + AMX_SLICE_CHUNKS - 1) / AMX_SLICE_CHUNKS;
    double flops = 2.0 * (double)a->m * (double)a->n * (double)a->k * (double)a->batch;
    int threads = flops < 2e6 ? 1 : ctx->num_threads;
    /* task tiles: 256 x 256, halved (the larger side first) until every thread
     * has two tasks or both sides are one panel */
    int64_t m32 = round_up(a->m, 32), n32 = round_up(a->n, 32);
    int64_t mb = m32 < 256 ? m32 : 256, nb = n32 < 256 ? n32 : 256;
    while (((a->m + mb - 1) / mb) * ((a->n + nb - 1) / nb) * a->batch < 2 * threads && (mb > 32 || nb > 32)) {
        if (mb >= nb && mb > 32)
            mb = round_up(mb / 2, 32);
        else
            nb = round_up(nb / 2, 32);
    }
    /* packed blocks: as many task rows (columns) as half the workspace holds
     * (cfg.workspace_bytes, 32 MiB by default: 2048 x 2048 whole); but only a
     * block's tasks are shared, so where k is deep or the threads many, a block
     * grows past the workspace (the scratch is then the call's own) until it has
     * two tasks a thread or is the whole matrix */
    size_t c_floats = (size_t)mb * (size_t)nb, c_bytes = c_floats * sizeof(float) * (size_t)threads;
    size_t budget = ctx->workspace_bytes > c_bytes ? ctx->workspace_bytes - c_bytes : 0;
    int64_t lines = (int64_t)(budget / 2 / ((size_t)kp * sizeof(uint16_t)));
    const int64_t m_all = round_up(a->m, mb), n_all = round_up(a->n, nb);
    int64_t mca = lines / mb * mb, nca = lines / nb * nb;
    mca = mca < mb ? mb : mca > m_all ? m_all : mca;
    nca = nca < nb ? nb : nca > n_all ? n_all : nca;
    while ((mca / mb) * (nca / nb) < 2 * threads && (mca < m_all || nca < n_all)) {
        if ((mca <= nca && mca < m_all) || nca >= n_all)
            mca += mb;
        else
            nca += nb;
    }
    size_t a_elems = (size_t)mca * (size_t)kp, b_elems = (size_t)nca * (size_t)kp;
    size_t total = (a_elems + b_elems) * sizeof(uint16_t) + c_bytes;
    char *buf = fab__host_scratch_get(ctx, total);
    if (!buf)
        return fab__fail(FAB_ERR_OUT_OF_MEMORY, "fab_matmul: no host memory for the AMX packing buffers (%zu bytes)",
                         total);
    uint16_t *abuf = (uint16_t *)buf, *bbuf = abuf + a_elems;
    float *cbufs = (float *)(bbuf + b_elems);
    const size_t ce = fab_dtype_size(a->c_dtype);
    /* a plain f32 product (C = A B): the whole 32x32 blocks sum in C itself, the
     * edge blocks in the buffer and are copied (the epilogue and a copy of all of C
     * cost a fifth of a 512^3 GEMM) */
    const bool plain =
        a->c_dtype == FAB_DTYPE_F32 && a->beta == 0.0f && a->alpha == 1.0f && !epilogue_needed(a, true);
    /* slice s of a block with np panels starts at s * np * AMX_SLICE_CHUNKS chunks;
     * its panels are nch(s) chunks apart */
#define AMX_NCH(s) ((s) == nslices - 1 ? nch_all - (s) * AMX_SLICE_CHUNKS : AMX_SLICE_CHUNKS)
#define AMX_SLICE(base, np, s) ((base) + (size_t)(s) * (size_t)(np) * AMX_SLICE_CHUNKS * FAB_AMX_CHUNK_ELEMS)

#pragma omp parallel num_threads(threads)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *cbuf = cbufs + c_floats * (size_t)tid;
        fab__amx_begin();
        for (int64_t bt = 0; bt < a->batch; bt++) {
            const uint16_t *A = (const uint16_t *)a->a + fab__mm_batch_offset(a, a->a_bstride, bt);
            const uint16_t *B = (const uint16_t *)a->b + fab__mm_batch_offset(a, a->b_bstride, bt);
            int64_t off_c = fab__mm_batch_offset(a, a->c_bstride, bt);
            int64_t off_p = a->pre_act ? fab__mm_batch_offset(a, a->p_bstride, bt) : 0;
            for (int64_t ic = 0; ic < a->m; ic += mca) {
                int64_t rows_blk = a->m - ic < mca ? a->m - ic : mca, npa = (rows_blk + 31) / 32;
#pragma omp for schedule(dynamic, 1)
                for (int64_t u = 0; u < npa * nslices; u++) {
                    int s = (int)(u / npa);
                    fab__amx_pack_a(A, a->lda, a->trans_a, ic, a->m, (int64_t)s * AMX_SLICE_CHUNKS * 32, a->k,
                                    AMX_NCH(s), u % npa, AMX_SLICE(abuf, npa, s));
                }
                for (int64_t jc = 0; jc < a->n; jc += nca) {
                    int64_t cols_blk = a->n - jc < nca ? a->n - jc : nca, npb = (cols_blk + 31) / 32;
#pragma omp for schedule(dynamic, 1)
                    for (int64_t u = 0; u < npb * nslices; u++) {
                        int s = (int)(u / npb);
                        fab__amx_pack_b(B, a->ldb, a->trans_b, jc, a->n, (int64_t)s * AMX_SLICE_CHUNKS * 32, a->k,
                                        AMX_NCH(s), u % npb, AMX_SLICE(bbuf, npb, s));
                    }
                    int64_t tm = (rows_blk + mb - 1) / mb, tn = (cols_blk + nb - 1) / nb;
#pragma omp for schedule(dynamic, 1)
                    for (int64_t t = 0; t < tm * tn; t++) {
                        int64_t r0 = t / tn * mb, c0 = t % tn * nb;
                        int64_t rows = rows_blk - r0 < mb ? rows_blk - r0 : mb;
                        int64_t cols = cols_blk - c0 < nb ? cols_blk - c0 : nb;
                        /* the task's C, from its row ic + r0 and column jc + c0 */
                        float *c_task = plain ? (float *)a->c + off_c + (ic + r0) * a->ldc + jc + c0 : NULL;
                        for (int s = 0; s < nslices; s++) {
                            int nch = AMX_NCH(s);
                            const uint16_t *as = AMX_SLICE(abuf, npa, s), *bs = AMX_SLICE(bbuf, npb, s);
                            for (int64_t ip = r0 / 32; ip * 32 < r0 + rows; ip++)
                                for (int64_t q = c0 / 32; q * 32 < c0 + cols; q++) {
                                    /* a block: into C itself where plain and whole */
                                    const int64_t br = ip * 32 - r0, bc = q * 32 - c0;
                                    const bool in_c = plain && br + 32 <= rows && bc + 32 <= cols;
                                    fab__amx_kernel(nch, as + ip * nch * FAB_AMX_CHUNK_ELEMS,
                                                    bs + q * nch * FAB_AMX_CHUNK_ELEMS,
                                                    in_c ? c_task + br * a->ldc + bc : cbuf + br * nb + bc,
                                                    in_c ? a->ldc : nb, s > 0);
                                }
                        }
                        if (plain) { /* the edge blocks' real part */
                            for (int64_t br = 0; br < rows; br += 32)
                                for (int64_t bc = 0; bc < cols; bc += 32) {
                                    if (br + 32 <= rows && bc + 32 <= cols)
                                        continue;
                                    const int64_t h = rows - br < 32 ? rows - br : 32;
                                    const int64_t w = cols - bc < 32 ? cols - bc : 32;
                                    for (int64_t r = br; r < br + h; r++)
                                        memcpy(c_task + r * a->ldc + bc, cbuf + r * nb + bc, sizeof(float) * (size_t)w);
                                }
                            continue;
                        }
                        for (int64_t r = 0; r < rows; r++) {
                            float *w = cbuf + r * nb;
                            if (a->alpha != 1.0f)
                                for (int64_t j = 0; j < cols; j++)
                                    w[j] *= a->alpha;
                            int64_t i = ic + r0 + r, j = jc + c0;
                            char *c_row = (char *)a->c + (off_c + i * a->ldc + j) * (int64_t)ce;
                            char *p_row =
                                a->pre_act ? (char *)a->pre_act + (off_p + i * a->ldp + j) * (int64_t)ce : NULL;
                            epilogue_row(a, w, j, cols, false, c_row, p_row);
                        }
                    }
                }
            }
        }
        fab__amx_end();
    }
#undef AMX_NCH
#undef AMX_SLICE
    fab__host_scratch_put(ctx, buf);
    return FAB_OK;
}

/* --------------------------------------------------------------- reference */

static inline double load_d(const void *p, fab_dtype dt, int64_t i)
{
    return (double)fab__load_f(p, dt, i);
}

/* Plain loops, float64 sums, the same epilogue: the oracle the packed GEMM (and
 * the CUDA kernels, through the tests) is checked against. k = 0 runs here too. */
static fab_status gemm_reference(fab_context *ctx, const fab__mm_args *a)
{
    int64_t rows = a->batch * a->m;
    int threads = (double)rows * (double)a->n * (double)(a->k + 1) < 1e6 ? 1 : ctx->num_threads;
#pragma omp parallel num_threads(threads)
    {
        float *w = malloc((size_t)(a->n > 0 ? a->n : 1) * sizeof(float));
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            if (!w)
                continue;
            int64_t bt = r / a->m, i = r % a->m;
            int64_t oa = fab__mm_batch_offset(a, a->a_bstride, bt), ob = fab__mm_batch_offset(a, a->b_bstride, bt);
            int64_t oc = fab__mm_batch_offset(a, a->c_bstride, bt);
            int64_t op = a->pre_act ? fab__mm_batch_offset(a, a->p_bstride, bt) : 0;
            for (int64_t j = 0; j < a->n; j++) {
                double acc = 0.0;
                for (int64_t p = 0; p < a->k; p++) {
                    int64_t ia = oa + (a->trans_a ? p * a->lda + i : i * a->lda + p);
                    int64_t ib = ob + (a->trans_b ? j * a->ldb + p : p * a->ldb + j);
                    acc += load_d(a->a, a->ab_dtype, ia) * load_d(a->b, a->ab_dtype, ib);
                }
                w[j] = (float)(a->alpha * acc);
            }
            size_t ce = fab_dtype_size(a->c_dtype);
            char *c_row = (char *)a->c + (oc + i * a->ldc) * (int64_t)ce;
            char *p_row = a->pre_act ? (char *)a->pre_act + (op + i * a->ldp) * (int64_t)ce : NULL;
            epilogue_row(a, w, 0, a->n, false, c_row, p_row);
        }
        free(w);
    }
    return FAB_OK;
}

/* ---------------------------------------------------------------- dbias */

static fab_status dbias_cpu(fab_context *ctx, const fab__mm_args *a)
{
    if (a->dbias_from == FAB_MATMUL_DBIAS_FROM_C) {
        fab__bgrad_args g;
        memset(&g, 0, sizeof g);
        g.dy = a->c;
        g.dtype = a->c_dtype;
        g.n = a->n;
        g.nr = a->nb + 1;
        for (int j = 0; j < a->nb; j++) {
            g.shape[j] = a->batch_shape[j];
            g.stride[j] = a->c_bstride[j];
        }
        g.shape[a->nb] = a->m;
        g.stride[a->nb] = a->ldc;
        g.dbias = a->dbias;
        g.dbias_dtype = a->dbias_dtype;
        return fab__bias_grad_cpu(ctx, &g);
    }
    /* sums of op(A) over k and batch: dbias[i] for i < m */
    int threads = (double)a->m * (double)a->k * (double)a->batch < 1e6 ? 1 : ctx->num_threads;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < a->m; i++) {
        double s = 0.0;
        for (int64_t bt = 0; bt < a->batch; bt++) {
            int64_t oa = fab__mm_batch_offset(a, a->a_bstride, bt);
            for (int64_t p = 0; p < a->k; p++)
                s += load_d(a->a, a->ab_dtype, oa + (a->trans_a ? p * a->lda + i : i * a->lda + p));
        }
        fab__store_f(a->dbias, a->dbias_dtype, i, (float)s);
    }
    return FAB_OK;
}

fab_status fab__bias_grad_cpu(fab_context *ctx, const fab__bgrad_args *g)
{
    int64_t rows = 1;
    for (int j = 0; j < g->nr; j++)
        rows *= g->shape[j];
    int threads = (double)rows * (double)g->n < 1e6 ? 1 : ctx->num_threads;
    /* columns in chunks of 64 per thread; each chunk's sums in float64, in row order */
    int64_t nchunks = (g->n + 63) / 64;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t ch = 0; ch < nchunks; ch++) {
        double acc[64];
        int64_t j0 = ch * 64, w = g->n - j0 < 64 ? g->n - j0 : 64;
        for (int64_t j = 0; j < w; j++)
            acc[j] = 0.0;
        for (int64_t r = 0; r < rows; r++) {
            int64_t off = 0, idx = r;
            for (int j = g->nr - 1; j >= 0; j--) {
                off += (idx % g->shape[j]) * g->stride[j];
                idx /= g->shape[j];
            }
            for (int64_t j = 0; j < w; j++)
                acc[j] += load_d(g->dy, g->dtype, off + j0 + j);
        }
        for (int64_t j = 0; j < w; j++)
            fab__store_f(g->dbias, g->dbias_dtype, j0 + j, (float)acc[j]);
    }
    return FAB_OK;
}

/* ------------------------------------------------------------------- entry */

fab_status fab__matmul_cpu(fab_context *ctx, const fab__mm_args *a)
{
    if (a->m > 0 && a->n > 0 && a->batch > 0) {
        if (a->algo == FAB_MATMUL_ALGO_REFERENCE || a->k == 0)
            FAB__TRY(gemm_reference(ctx, a));
        else if (a->ab_dtype == FAB_DTYPE_BF16 && fab__amx_enabled("FAB_MATMUL_CPU_AMX"))
            FAB__TRY(gemm_amx(ctx, a));
        else
            FAB__TRY(gemm_packed(ctx, a));
    }
    if (a->dbias)
        return dbias_cpu(ctx, a);
    return FAB_OK;
}
