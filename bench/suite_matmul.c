/*
 * suite_matmul.c: fab_matmul throughput (2·m·n·k flops per call) against the
 * library baseline measured in the same run:
 *   CPU: OpenBLAS cblas_sgemm (same thread count) for m = n = k in {512, 1024,
 *        2048} (--quick: 512, 1024); f32, and bf16 inputs (against the same sgemm,
 *        and, where fab-bench found libdnnl, a "matmul bf16 vs onednn" row against
 *        oneDNN's bf16 matmul primitive, bf16 in, f32 out: on an AMX CPU its AMX
 *        kernels, the fastest bf16 GEMM the CPU has besides ours);
 *        and GPT-2 124M's fc layer over 1024 tokens, forward and both backward
 *        products (f32 and bf16 inputs, the same transposes for sgemm and, bf16,
 *        for oneDNN; not with --quick), and the forward with its bias and GELU
 *        fused (f32, against the bare sgemm).
 *   GPU: cuBLASLt, through fab_matmul with algo = FAB_MATMUL_ALGO_CUBLASLT, for
 *        bf16 squares 1024..8192 and the linear layers of GPT-2 124M and LLaMA-7B
 *        training: forward y = x·Wᵀ, backward dx = dy·W and dW = dyᵀ·x; and at
 *        4096³ each tile configuration of the sm80 and of the Hopper kernel
 *        (matmul_sm90.cuh, which the other rows run on an H100), forced (A/B), and
 *        the Hopper kernel with a block per tile instead of its persistent grid
 *        (FAB_MATMUL_SM90_GRID=tiles; against the plain 4096³ row), and the
 *        epilogue a value per lane instead of 8 columns (FAB_MATMUL_EPILOGUE=scalar),
 *        and the Hopper kernel's ping-pong schedule (FAB_MATMUL_SM90_SCHEDULE=
 *        pingpong): each at 4096³ and at GPT-2's fc forward (k = 768).
 */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef FAB_BENCH_HAVE_OPENBLAS
#include <cblas.h>
#endif
#ifdef FAB_BENCH_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#if DNNL_VERSION_MAJOR != 2 /* the primitive descriptors below are oneDNN 2's (Debian 12 has 2.6) */
#undef FAB_BENCH_HAVE_ONEDNN
#endif
#endif

typedef struct mm_bench {
    fab_context *ctx;
    fab_matmul_params p;
#ifdef FAB_BENCH_HAVE_OPENBLAS
    int m, n, k, ta, tb;
    const float *a, *b;
    float *c;
#endif
} mm_bench;

static fab_status run_fab(void *arg)
{
    mm_bench *c = arg;
    return fab_matmul(c->ctx, &c->p);
}

#ifdef FAB_BENCH_HAVE_OPENBLAS
static fab_status run_openblas(void *arg)
{
    mm_bench *c = arg;
    cblas_sgemm(CblasRowMajor, c->ta ? CblasTrans : CblasNoTrans, c->tb ? CblasTrans : CblasNoTrans, c->m, c->n,
                c->k, 1.0f, c->a, c->ta ? c->m : c->k, c->b, c->tb ? c->k : c->n, 0.0f, c->c, c->n);
    return FAB_OK;
}
#endif

#ifdef FAB_BENCH_HAVE_ONEDNN
/* oneDNN's matmul primitive C[m,n] (f32) = op(A)·op(B) (bf16, row-major; stored
 * transposed where ta / tb, oneDNN's "ba" layout) on fab-bench's buffers, built
 * before the timing; its OpenMP threads are the process's, as fabriek's CPU
 * context's. */
typedef struct onednn_mm {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    dnnl_primitive_t prim;
    dnnl_memory_t a, b, c;
    const char *impl; /* the kernel oneDNN picked, e.g. brg:avx512_core_amx_bf16 */
} onednn_mm;

static void onednn_free(onednn_mm *o)
{
    if (o->a)
        dnnl_memory_destroy(o->a);
    if (o->b)
        dnnl_memory_destroy(o->b);
    if (o->c)
        dnnl_memory_destroy(o->c);
    if (o->prim)
        dnnl_primitive_destroy(o->prim);
    if (o->stream)
        dnnl_stream_destroy(o->stream);
    if (o->eng)
        dnnl_engine_destroy(o->eng);
    memset(o, 0, sizeof *o);
}

static bool onednn_setup(onednn_mm *o, int64_t m, int64_t n, int64_t k, int ta, int tb, void *a, void *b, void *c)
{
    memset(o, 0, sizeof *o);
    dnnl_memory_desc_t ad, bd, cd;
    dnnl_dims_t da = {m, k}, db = {k, n}, dc = {m, n};
    dnnl_matmul_desc_t md;
    dnnl_primitive_desc_t pd = NULL;
    bool ok = dnnl_engine_create(&o->eng, dnnl_cpu, 0) == dnnl_success &&
              dnnl_stream_create(&o->stream, o->eng, dnnl_stream_default_flags) == dnnl_success &&
              dnnl_memory_desc_init_by_tag(&ad, 2, da, dnnl_bf16, ta ? dnnl_ba : dnnl_ab) == dnnl_success &&
              dnnl_memory_desc_init_by_tag(&bd, 2, db, dnnl_bf16, tb ? dnnl_ba : dnnl_ab) == dnnl_success &&
              dnnl_memory_desc_init_by_tag(&cd, 2, dc, dnnl_f32, dnnl_ab) == dnnl_success &&
              dnnl_matmul_desc_init(&md, &ad, &bd, NULL, &cd) == dnnl_success &&
              dnnl_primitive_desc_create(&pd, &md, NULL, o->eng, NULL) == dnnl_success &&
              dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &o->impl) == dnnl_success &&
              dnnl_primitive_create(&o->prim, pd) == dnnl_success &&
              dnnl_memory_create(&o->a, &ad, o->eng, a) == dnnl_success &&
              dnnl_memory_create(&o->b, &bd, o->eng, b) == dnnl_success &&
              dnnl_memory_create(&o->c, &cd, o->eng, c) == dnnl_success;
    if (pd)
        dnnl_primitive_desc_destroy(pd); /* the primitive keeps what it needs; impl is static text */
    if (!ok)
        onednn_free(o);
    return ok;
}

static fab_status run_onednn(void *arg)
{
    onednn_mm *o = arg;
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, o->a}, {DNNL_ARG_WEIGHTS, o->b}, {DNNL_ARG_DST, o->c}};
    if (dnnl_primitive_execute(o->prim, o->stream, 3, args) != dnnl_success ||
        dnnl_stream_wait(o->stream) != dnnl_success)
        return FAB_ERR_INTERNAL;
    return FAB_OK;
}
#endif

/* Fills n elements of dtype with values in [-1, 1) through the library's conversions. */
static fab_status fill(fab_context *ctx, void *dev, fab_dtype dtype, int64_t n, unsigned salt)
{
    size_t es = fab_dtype_size(dtype);
    const int64_t chunk = 1 << 20;
    unsigned char *host = malloc((size_t)chunk * 4);
    if (!host)
        return FAB_ERR_OUT_OF_MEMORY;
    fab_status s = FAB_OK;
    for (int64_t off = 0; off < n && s == FAB_OK; off += chunk) {
        int64_t m = n - off < chunk ? n - off : chunk;
        for (int64_t i = 0; i < m; i++) {
            float v = (float)(((uint64_t)(off + i) * 2654435761u + salt * 40503u) % 2000) / 1000.0f - 1.0f;
            if (dtype == FAB_DTYPE_F32) {
                memcpy(host + 4 * i, &v, 4);
            } else {
                uint16_t h = dtype == FAB_DTYPE_BF16 ? fab_f32_to_bf16(v) : fab_f32_to_f16(v);
                memcpy(host + 2 * i, &h, 2);
            }
        }
        s = fab_copy(ctx, (char *)dev + off * (int64_t)es, host, (size_t)m * es);
        if (s == FAB_OK)
            s = fab_synchronize(ctx);
    }
    free(host);
    return s;
}

static void set_row(bench_row *row, const char *name, int64_t m, int64_t n, int64_t k, fab_dtype dt, double ms,
                    bool gpu)
{
    snprintf(row->suite, sizeof row->suite, "matmul");
    snprintf(row->name, sizeof row->name, "%s", name);
    snprintf(row->shape, sizeof row->shape, "%lldx%lldx%lld", (long long)m, (long long)n, (long long)k);
    snprintf(row->dtype, sizeof row->dtype, "%s", fab_dtype_name(dt));
    row->ms = ms;
    row->work = 2.0 * (double)m * (double)n * (double)k;
    row->unit = gpu ? "TFLOP/s" : "GFLOP/s";
    row->rate = row->work / (ms * 1e-3) / (gpu ? 1e12 : 1e9);
}

/* ------------------------------------------------------------------- CPU */

#define ROUNDS 3

/* One CPU GEMM, op(A)[m,k]·op(B)[k,n] into f32 C, with f32 inputs and, when
 * `with_bf16`, a second row with bf16 inputs; both against f32 sgemm, and the bf16
 * one in a third row against oneDNN's bf16 matmul where it is linked. With an
 * activation, fabriek's call also adds a bias [n] and applies it (the fused
 * layer; OpenBLAS's sgemm, the baseline, does neither). */
static int cpu_one(bench *b, const char *name, int64_t m, int64_t n, int64_t k, int ta, int tb, bool with_bf16,
                   fab_matmul_activation act)
{
    int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    void *a32 = NULL, *b32 = NULL, *c32 = NULL, *a16 = NULL, *b16 = NULL, *bias = NULL;
    int failed = 0;
    if ((act != FAB_MATMUL_ACT_NONE &&
         (fab_alloc(b->ctx, (size_t)n * 4, &bias) != FAB_OK || fill(b->ctx, bias, FAB_DTYPE_F32, n, 3) != FAB_OK)) ||
        fab_alloc(b->ctx, (size_t)(ar * ac) * 4, &a32) != FAB_OK ||
        fab_alloc(b->ctx, (size_t)(br * bc) * 4, &b32) != FAB_OK ||
        fab_alloc(b->ctx, (size_t)(m * n) * 4, &c32) != FAB_OK ||
        (with_bf16 && (fab_alloc(b->ctx, (size_t)(ar * ac) * 2, &a16) != FAB_OK ||
                       fab_alloc(b->ctx, (size_t)(br * bc) * 2, &b16) != FAB_OK ||
                       fill(b->ctx, a16, FAB_DTYPE_BF16, ar * ac, 1) != FAB_OK ||
                       fill(b->ctx, b16, FAB_DTYPE_BF16, br * bc, 2) != FAB_OK)) ||
        fill(b->ctx, a32, FAB_DTYPE_F32, ar * ac, 1) != FAB_OK || fill(b->ctx, b32, FAB_DTYPE_F32, br * bc, 2) != FAB_OK) {
        fprintf(stderr, "fab-bench matmul: %s\n", fab_last_error());
        failed = 1;
        goto done;
    }
    mm_bench c;
    memset(&c, 0, sizeof c);
    c.ctx = b->ctx;
    int64_t sa[2] = {ar, ac}, sb[2] = {br, bc}, sc[2] = {m, n};
    fab_tensor_make(a32, FAB_DTYPE_F32, 2, sa, &c.p.a);
    fab_tensor_make(b32, FAB_DTYPE_F32, 2, sb, &c.p.b);
    fab_tensor_make(c32, FAB_DTYPE_F32, 2, sc, &c.p.c);
    c.p.trans_a = ta ? FAB_OP_T : FAB_OP_N;
    c.p.trans_b = tb ? FAB_OP_T : FAB_OP_N;
    if (bias) {
        fab_tensor_make(bias, FAB_DTYPE_F32, 1, &n, &c.p.bias);
        c.p.activation = act;
    }
#ifdef FAB_BENCH_HAVE_OPENBLAS
    c.m = (int)m, c.n = (int)n, c.k = (int)k, c.ta = ta, c.tb = tb;
    c.a = a32;
    c.b = b32;
    c.c = c32;
#endif
    for (int d = 0; d < (with_bf16 ? 2 : 1); d++) {
        if (d == 1) {
            c.p.a.data = a16;
            c.p.a.dtype = FAB_DTYPE_BF16;
            c.p.b.data = b16;
            c.p.b.dtype = FAB_DTYPE_BF16;
        }
        /* fabriek and the baseline alternate for a few rounds and each keeps its
         * best median, so a burst of other load on a shared machine does not
         * decide the ratio; the baseline (f32 sgemm) runs again between the bf16
         * rounds, so both rows compare against it timed alongside them */
        double ms = -1, base_ms = -1, dnnl_ms = -1;
#ifdef FAB_BENCH_HAVE_ONEDNN
        onednn_mm o;
        bool with_dnnl = d == 1 && onednn_setup(&o, m, n, k, ta, tb, a16, b16, c32);
#endif
        for (int round = 0; round < ROUNDS; round++) {
#ifdef FAB_BENCH_HAVE_OPENBLAS
            double t_base = bench_time_ms(b, run_openblas, &c);
            base_ms = base_ms < 0 || (t_base > 0 && t_base < base_ms) ? t_base : base_ms;
#endif
#ifdef FAB_BENCH_HAVE_ONEDNN
            if (with_dnnl) {
                double t_dnnl = bench_time_ms(b, run_onednn, &o);
                dnnl_ms = dnnl_ms < 0 || (t_dnnl > 0 && t_dnnl < dnnl_ms) ? t_dnnl : dnnl_ms;
            }
#endif
            double t = bench_time_ms(b, run_fab, &c);
            if (t < 0) {
                ms = -1;
                break;
            }
            ms = ms < 0 || t < ms ? t : ms;
        }
        bench_row *row = ms < 0 ? NULL : bench_add_row(b);
        if (!row) {
            failed = 1;
        } else {
            char row_name[64];
            snprintf(row_name, sizeof row_name, "%s%s", name, d ? " bf16->f32" : "");
            set_row(row, row_name, m, n, k, d ? FAB_DTYPE_BF16 : FAB_DTYPE_F32, ms, false);
            if (base_ms > 0) {
                snprintf(row->baseline, sizeof row->baseline, "openblas sgemm");
                row->baseline_rate = row->work / (base_ms * 1e-3) / 1e9;
                row->ratio = row->rate / row->baseline_rate;
            } else {
                snprintf(row->baseline, sizeof row->baseline, "none (no OpenBLAS)");
            }
        }
#ifdef FAB_BENCH_HAVE_ONEDNN
        if (with_dnnl) {
            /* the same bf16 timing against oneDNN's */
            if (row && dnnl_ms > 0 && (row = bench_add_row(b)) != NULL) {
                char row_name[64];
                snprintf(row_name, sizeof row_name, "%s bf16 vs onednn", name);
                set_row(row, row_name, m, n, k, FAB_DTYPE_BF16, ms, false);
                snprintf(row->baseline, sizeof row->baseline, "onednn %s", o.impl);
                row->baseline_rate = row->work / (dnnl_ms * 1e-3) / 1e9;
                row->ratio = row->rate / row->baseline_rate;
            }
            onednn_free(&o);
        }
#endif
        (void)dnnl_ms;
    }
done:
    fab_free(b->ctx, bias);
    fab_free(b->ctx, a32);
    fab_free(b->ctx, b32);
    fab_free(b->ctx, c32);
    fab_free(b->ctx, a16);
    fab_free(b->ctx, b16);
    return failed;
}

static int cpu_suite(bench *b)
{
    const int64_t sizes[] = {512, 1024, 2048};
    int nsizes = b->opt.quick ? 2 : 3, failed = 0;
#ifdef FAB_BENCH_HAVE_OPENBLAS
    const char *env = getenv("OMP_NUM_THREADS");
    int threads = env && atoi(env) > 0 ? atoi(env) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    openblas_set_num_threads(threads);
#else
    printf("matmul: OpenBLAS was not found when fab-bench was configured: CPU rows have no baseline\n");
#endif
    for (int si = 0; si < nsizes; si++)
        failed |= cpu_one(b, "matmul", sizes[si], sizes[si], sizes[si], 0, 0, true, FAB_MATMUL_ACT_NONE);
    if (!b->opt.quick) {
        /* a training step's three products of one linear layer (tokens T, in ->
         * out): y = x·Wᵀ, dx = dy·W, dW = dyᵀ·x; GPT-2 124M's fc, T = 1024; and the
         * forward as the layer runs it, with its bias and GELU fused (against the
         * bare sgemm: what the epilogue costs) */
        const int64_t T = 1024, in = 768, out = 3072;
        failed |= cpu_one(b, "gpt2 fc fwd", T, out, in, 0, 1, true, FAB_MATMUL_ACT_NONE);
        failed |= cpu_one(b, "gpt2 fc fwd +bias+gelu", T, out, in, 0, 1, false, FAB_MATMUL_ACT_GELU_TANH);
        failed |= cpu_one(b, "gpt2 fc dx", T, in, out, 0, 0, true, FAB_MATMUL_ACT_NONE);
        failed |= cpu_one(b, "gpt2 fc dW", out, in, T, 1, 0, true, FAB_MATMUL_ACT_NONE);
    }
    return failed;
}

/* ------------------------------------------------------------------- GPU */

typedef struct gpu_shape {
    const char *name;
    int64_t m, n, k;
    int ta, tb;
} gpu_shape;

/* One GEMM, bf16 in and out with f32 accumulation, fabriek (auto) vs cuBLASLt. */
static int gpu_one(bench *b, const gpu_shape *g)
{
    int64_t ar = g->ta ? g->k : g->m, ac = g->ta ? g->m : g->k;
    int64_t br = g->tb ? g->n : g->k, bc = g->tb ? g->k : g->n;
    void *da = NULL, *db = NULL, *dc = NULL;
    int failed = 0;
    if (fab_alloc(b->ctx, (size_t)(ar * ac) * 2, &da) != FAB_OK || fab_alloc(b->ctx, (size_t)(br * bc) * 2, &db) != FAB_OK ||
        fab_alloc(b->ctx, (size_t)(g->m * g->n) * 2, &dc) != FAB_OK || fill(b->ctx, da, FAB_DTYPE_BF16, ar * ac, 1) != FAB_OK ||
        fill(b->ctx, db, FAB_DTYPE_BF16, br * bc, 2) != FAB_OK) {
        fprintf(stderr, "fab-bench matmul %s: %s\n", g->name, fab_last_error());
        failed = 1;
    } else {
        mm_bench c;
        memset(&c, 0, sizeof c);
        c.ctx = b->ctx;
        int64_t sa[2] = {ar, ac}, sb[2] = {br, bc}, sc[2] = {g->m, g->n};
        fab_tensor_make(da, FAB_DTYPE_BF16, 2, sa, &c.p.a);
        fab_tensor_make(db, FAB_DTYPE_BF16, 2, sb, &c.p.b);
        fab_tensor_make(dc, FAB_DTYPE_BF16, 2, sc, &c.p.c);
        c.p.trans_a = g->ta ? FAB_OP_T : FAB_OP_N;
        c.p.trans_b = g->tb ? FAB_OP_T : FAB_OP_N;
        c.p.algo = FAB_MATMUL_ALGO_CUBLASLT;
        double base_ms = bench_time_ms(b, run_fab, &c);
        c.p.algo = FAB_MATMUL_ALGO_NATIVE;
        double ms = bench_time_ms(b, run_fab, &c);
        bench_row *row = bench_add_row(b);
        if (!row || ms < 0 || base_ms < 0) {
            failed = 1;
        } else {
            set_row(row, g->name, g->m, g->n, g->k, FAB_DTYPE_BF16, ms, true);
            snprintf(row->baseline, sizeof row->baseline, "cublasLt");
            row->baseline_rate = row->work / (base_ms * 1e-3) / 1e12;
            row->ratio = row->rate / row->baseline_rate;
        }
    }
    fab_free(b->ctx, da);
    fab_free(b->ctx, db);
    fab_free(b->ctx, dc);
    return failed;
}

/* One "square <kernel> tile <t>" row at 4096^3 per tile, forced with `var`
 * (unless the caller set it). */
static int tile_rows(bench *b, const char *kernel, const char *what, const char *var, const char *const *tiles,
                     int n)
{
    if (getenv(var))
        return 0;
    int failed = 0;
    for (int i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "square %s %s %s", kernel, what, tiles[i]);
        gpu_shape g = {name, 4096, 4096, 4096, 0, 0};
        setenv(var, tiles[i], 1);
        failed |= gpu_one(b, &g);
        unsetenv(var);
    }
    return failed;
}

/* One row of the forward product y[m, n] = x[m, k]·W[n, k]ᵀ with `var` set to
 * `value` (unless the caller set it): an A/B against the same shape's plain row. */
static int forced_row(bench *b, const char *name, int64_t m, int64_t n, int64_t k, const char *var, const char *value)
{
    if (getenv(var))
        return 0;
    gpu_shape g = {name, m, n, k, 0, 1};
    setenv(var, value, 1);
    int failed = gpu_one(b, &g);
    unsetenv(var);
    return failed;
}

static int gpu_suite(bench *b)
{
    /* Is cuBLASLt in this build? (An emulated build has none, and is far too slow
     * to benchmark.) A 1x1x1 call answers. */
    {
        void *buf = NULL;
        if (fab_alloc(b->ctx, 64, &buf) != FAB_OK)
            return 1;
        mm_bench c;
        memset(&c, 0, sizeof c);
        c.ctx = b->ctx;
        int64_t one[2] = {1, 1};
        fab_tensor_make(buf, FAB_DTYPE_F32, 2, one, &c.p.a);
        fab_tensor_make((char *)buf + 16, FAB_DTYPE_F32, 2, one, &c.p.b);
        fab_tensor_make((char *)buf + 32, FAB_DTYPE_F32, 2, one, &c.p.c);
        c.p.algo = FAB_MATMUL_ALGO_CUBLASLT;
        fab_status s = fab_matmul(b->ctx, &c.p);
        fab_synchronize(b->ctx);
        fab_free(b->ctx, buf);
        if (s != FAB_OK) {
            printf("matmul: no cuBLASLt baseline in this build (%s); GPU rows skipped\n", fab_last_error());
            return 0;
        }
    }
    int failed = 0;
    static const int64_t squares[] = {1024, 2048, 4096, 8192};
    int nsq = b->opt.quick ? 3 : 4;
    for (int i = 0; i < nsq; i++) {
        gpu_shape g = {"square", squares[i], squares[i], squares[i], 0, 0};
        failed |= gpu_one(b, &g);
    }
    /* A/B of the tile configurations at 4096^3, each forced through its variable
     * unless the caller forced one: the sm80 kernel's (matmul_sm80.cuh, pick_tile;
     * FAB_MATMUL_SM90=0 so that an H100 runs them rather than the Hopper kernel,
     * which the plain "square" rows measure there), then the Hopper kernel's
     * (matmul_sm90.cu, pick_bn; only an H100 runs it: elsewhere those rows
     * measure the sm80 kernel again) */
    static const char *const sm80_tiles[] = {"128x256", "128x128", "128x128w8", "64x64"};
    static const char *const sm90_tiles[] = {"128x256", "128x128"}, *const sm90_grid[] = {"tiles"};
    setenv("FAB_MATMUL_SM90", "0", 1);
    failed |= tile_rows(b, "sm80", "tile", "FAB_MATMUL_SM80_TILE", sm80_tiles, 4);
    unsetenv("FAB_MATMUL_SM90");
    failed |= tile_rows(b, "sm90", "tile", "FAB_MATMUL_SM90_TILE", sm90_tiles, 2);
    failed |= tile_rows(b, "sm90", "grid", "FAB_MATMUL_SM90_GRID", sm90_grid, 1);
    /* the tensor-core kernels' epilogue a value per lane (FAB_MATMUL_EPILOGUE=scalar)
     * instead of 8 columns per lane: at 4096^3 (against the plain row) and at GPT-2's
     * fc forward, k = 768, where the epilogue's share is larger (against "gpt2 fc fwd") */
    static const char *const scalar[] = {"scalar"};
    failed |= tile_rows(b, "epilogue", "form", "FAB_MATMUL_EPILOGUE", scalar, 1);
    failed |= forced_row(b, "gpt2 fc fwd epilogue scalar", 8192, 3072, 768, "FAB_MATMUL_EPILOGUE", "scalar");
    /* the Hopper kernel's ping-pong schedule (FAB_MATMUL_SM90_SCHEDULE=pingpong, which
     * hides the epilogue behind the other warpgroup's products) at the same two shapes */
    static const char *const pingpong[] = {"pingpong"};
    failed |= tile_rows(b, "sm90", "schedule", "FAB_MATMUL_SM90_SCHEDULE", pingpong, 1);
    failed |= forced_row(b, "gpt2 fc fwd sm90 pingpong", 8192, 3072, 768, "FAB_MATMUL_SM90_SCHEDULE", "pingpong");
    /* linear layers: tokens T, in -> out. forward y[T,out] = x[T,in]·W[out,in]ᵀ;
     * dx[T,in] = dy[T,out]·W[out,in]; dW[out,in] = dy[T,out]ᵀ·x[T,in]. */
    typedef struct layer { const char *name; int64_t tokens, in, out; } layer;
    static const layer layers[] = {
        {"gpt2 qkv", 8192, 768, 2304},     {"gpt2 attn.proj", 8192, 768, 768}, {"gpt2 fc", 8192, 768, 3072},
        {"gpt2 fc.proj", 8192, 3072, 768}, {"llama qkv", 4096, 4096, 12288},   {"llama o", 4096, 4096, 4096},
        {"llama gate/up", 4096, 4096, 11008}, {"llama down", 4096, 11008, 4096},
    };
    int nl = (int)(sizeof layers / sizeof layers[0]);
    for (int i = 0; i < nl; i++) {
        if (b->opt.quick && i != 2 && i != 6)
            continue;
        const layer *l = &layers[i];
        char name[64];
        snprintf(name, sizeof name, "%s fwd", l->name);
        gpu_shape f = {name, l->tokens, l->out, l->in, 0, 1};
        failed |= gpu_one(b, &f);
        snprintf(name, sizeof name, "%s dx", l->name);
        gpu_shape dx = {name, l->tokens, l->in, l->out, 0, 0};
        failed |= gpu_one(b, &dx);
        snprintf(name, sizeof name, "%s dW", l->name);
        gpu_shape dw = {name, l->out, l->in, l->tokens, 1, 0};
        failed |= gpu_one(b, &dw);
    }
    return failed;
}

int bench_suite_matmul(bench *b)
{
    return fab_context_backend(b->ctx) == FAB_BACKEND_CUDA ? gpu_suite(b) : cpu_suite(b);
}
