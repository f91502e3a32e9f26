/*
 * suite_attention.c: attention forward/backward throughput.
 *
 * Work is counted by FlashAttention's convention: forward 4*b*hq*sq*sk*d flops
 * (two GEMMs), halved for causal; backward 2.5x the forward (five GEMMs; where
 * the CPU backward takes its two-pass schedule it does seven, see attention_cpu.c,
 * so the rate here is always the useful-work rate).
 *
 * Baseline, measured in the same run:
 *   CPU: fab_matmul's rate on a 1024^3 GEMM in the same dtype: how close the
 *        fused attention comes to the machine's dense GEMM rate. If fab_matmul
 *        fails, a naive materialised-softmax attention (S = QK^T, softmax, PV in
 *        plain f32 loops, below) is the baseline instead, and the row says so.
 *   GPU: cuDNN's fused flash attention (cudnn_attention.c: the cuDNN 9 graph API,
 *        loaded with dlopen), forward and backward, on the same inputs, for
 *        FlashAttention's benchmark shapes: 16k tokens per batch, model dim 2048,
 *        head dims 64, 128 and 256, sequence 512..16k (quick:
 *        512, 2048, 8192), causal and not; bf16, and f16 too without --quick;
 *        and head dim 96 (model dim 2016), every sequence, or 2048 only with
 *        --quick (on an H100 the Hopper kernels run it zero-padded to 128: its
 *        "sm80" rows below say whether that beats the sm80 kernels).
 *        Before timing, each case runs cuDNN and fabriek once and compares the
 *        outputs (out; dq, dk, dv), max |cudnn - fabriek| / max |fabriek| <= 2e-2:
 *        a mismatch prints why and the row's baseline reads "cudnn(mismatch)",
 *        ratio 0. Where cuDNN is missing or rejects the case (no library, no
 *        GPU, no engine, an execute that fails) the suite prints one line
 *        "attention: cuDNN baseline unavailable for <case>: <why>" on stderr and
 *        the row's baseline is "none" (ratio 0); fabriek's rows are still measured.
 *        A build without the cuDNN headers has no GPU baseline at all.
 *        One more row per case, "attn_backward determ.", times the deterministic
 *        backward (a context with deterministic = 1: separate dq kernel, 7 tile
 *        products) against the default fast one (dq atomics) of the same run:
 *        its ratio is what determinism costs. And a row "attn_forward sm80" times
 *        the sm80 forward (FAB_ATTN_SM90=0) against the default of the run (on an
 *        H100 the Hopper forward, attention_fwd_sm90.cu, at head dims 64, 96, 128
 *        and 256), and at head dims up to 128 "attn_forward sm80 16 rows/warp" the sm80
 *        forward's other variant (one m-tile per warp, 64-row blocks;
 *        FAB_ATTN_FWD_WARP_ROWS=16) against the sm80 default (two m-tiles,
 *        128-row blocks, on these grids): a ratio above 1 says the default picks
 *        wrong. Not when the caller set FAB_ATTN_FWD_WARP_ROWS or FAB_ATTN_SM90. Likewise "attn_backward sm80"
 *        times the sm80 backward against the default of the run (on an H100 the
 *        fast path's dk/dv kernel is the Hopper one, attention_bwd_sm90.cu, at head
 *        dims 64, 96 and 128), and "attn_backward sm80 64 keys/block" the sm80 dk/dv
 *        kernel with 64-key, 4-warp blocks (FAB_ATTN_BWD_KEYS=64) against the sm80
 *        default (128 keys, 8 warps, on these grids); not when the caller set
 *        FAB_ATTN_BWD_KEYS or FAB_ATTN_SM90.
 */
#include "bench.h"
#ifdef FAB_BENCH_CUDNN
#include "cudnn_attention.h"
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct attn_case {
    fab_context *ctx;
    fab_context *det_ctx; /* GPU: deterministic, for the deterministic backward row */
    fab_attention_params fwd;
    fab_attention_backward_params bwd;
    /* baselines */
    fab_matmul_params mm;
    const float *nq, *nk, *nv; /* naive: f32 host copies */
    float *ns, *no;
    int64_t b, s, h, d;
    int causal;
#ifdef FAB_BENCH_CUDNN
    bench_cudnn_attn *cudnn_fwd, *cudnn_bwd; /* the GPU baseline's plans */
    char cudnn_case[96];                      /* "bf16 b32 h16 s512 d64 causal", for messages */
#endif
} attn_case;

static fab_status run_fwd(void *arg) { attn_case *c = arg; return fab_attention_forward(c->ctx, &c->fwd); }
static fab_status run_bwd(void *arg) { attn_case *c = arg; return fab_attention_backward(c->ctx, &c->bwd); }
/* On its own context's stream: waits for it here (the timer synchronizes only b->ctx). */
static fab_status run_bwd_det(void *arg)
{
    attn_case *c = arg;
    fab_status s = fab_attention_backward(c->det_ctx, &c->bwd);
    return s == FAB_OK ? fab_synchronize(c->det_ctx) : s;
}
static fab_status run_mm(void *arg) { attn_case *c = arg; return fab_matmul(c->ctx, &c->mm); }

/* The naive baseline: one (batch, head) at a time, the whole s x s score matrix
 * in memory, contiguous [b, s, h, d] f32. */
static fab_status run_naive(void *arg)
{
    attn_case *c = arg;
    const int64_t s = c->s, h = c->h, d = c->d;
    const float scale = 1.0f / sqrtf((float)d);
    for (int64_t bh = 0; bh < c->b * h; bh++) {
        int64_t bi = bh / h, hi = bh % h;
        const float *q = c->nq + (bi * s * h + hi) * d, *k = c->nk + (bi * s * h + hi) * d;
        const float *v = c->nv + (bi * s * h + hi) * d;
        float *o = c->no + (bi * s * h + hi) * d;
        for (int64_t i = 0; i < s; i++) {
            float *row = c->ns + i * s, mx = -INFINITY, sum = 0;
            int64_t n = c->causal ? i + 1 : s;
            for (int64_t j = 0; j < n; j++) {
                float x = 0;
                for (int64_t e = 0; e < d; e++)
                    x += q[i * h * d + e] * k[j * h * d + e];
                row[j] = x * scale;
                mx = row[j] > mx ? row[j] : mx;
            }
            for (int64_t j = 0; j < n; j++)
                sum += (row[j] = expf(row[j] - mx));
            for (int64_t e = 0; e < d; e++)
                o[i * h * d + e] = 0;
            for (int64_t j = 0; j < n; j++)
                for (int64_t e = 0; e < d; e++)
                    o[i * h * d + e] += row[j] / sum * v[j * h * d + e];
        }
    }
    return FAB_OK;
}

/* Fills a device buffer of n elements with values in [-1, 1). */
static fab_status fill(fab_context *ctx, void *dev, fab_dtype dtype, int64_t n, unsigned salt)
{
    size_t es = fab_dtype_size(dtype);
    unsigned char *host = malloc((size_t)n * es);
    if (!host)
        return FAB_ERR_OUT_OF_MEMORY;
    for (int64_t i = 0; i < n; i++) {
        float v = (float)(((uint64_t)(i + 1) * 2654435761u * (salt + 1)) % 2000) / 1000.0f - 1.0f;
        if (dtype == FAB_DTYPE_F32) {
            memcpy(host + 4 * i, &v, 4);
        } else {
            uint16_t x = dtype == FAB_DTYPE_BF16 ? fab_f32_to_bf16(v) : fab_f32_to_f16(v);
            memcpy(host + 2 * i, &x, 2);
        }
    }
    fab_status s = fab_copy(ctx, dev, host, (size_t)n * es);
    if (s == FAB_OK)
        s = fab_synchronize(ctx);
    free(host);
    return s;
}

static void add_row(bench *b, const char *name, const attn_case *c, const char *dtype, double ms, double flops,
                    const char *unit, double scale, const char *base, double base_rate)
{
    bench_row *row = bench_add_row(b);
    if (!row)
        return;
    snprintf(row->suite, sizeof row->suite, "attention");
    snprintf(row->name, sizeof row->name, "%s%s", name, c->causal ? " causal" : "");
    snprintf(row->shape, sizeof row->shape, "b%lld h%lld s%lld d%lld", (long long)c->b, (long long)c->h,
             (long long)c->s, (long long)c->d);
    snprintf(row->dtype, sizeof row->dtype, "%s", dtype);
    row->ms = ms;
    row->work = flops;
    row->unit = unit;
    row->rate = flops / (ms * 1e-3) / scale;
    snprintf(row->baseline, sizeof row->baseline, "%s", base);
    row->baseline_rate = base_rate;
    row->ratio = base_rate > 0 ? row->rate / base_rate : 0;
}

/* The CPU's GEMM rate in GFLOP/s (fab_matmul, 1024^3, dtype), or <= 0. */
static double matmul_rate(bench *b, fab_dtype dtype)
{
    const int64_t n = 1024, shape[2] = {n, n};
    void *a = NULL, *bb = NULL, *cc = NULL;
    size_t bytes = (size_t)(n * n) * fab_dtype_size(dtype);
    double rate = -1;
    if (fab_alloc(b->ctx, bytes, &a) == FAB_OK && fab_alloc(b->ctx, bytes, &bb) == FAB_OK &&
        fab_alloc(b->ctx, bytes, &cc) == FAB_OK && fill(b->ctx, a, dtype, n * n, 1) == FAB_OK &&
        fill(b->ctx, bb, dtype, n * n, 2) == FAB_OK) {
        attn_case c;
        memset(&c, 0, sizeof c);
        c.ctx = b->ctx;
        fab_tensor_make(a, dtype, 2, shape, &c.mm.a);
        fab_tensor_make(bb, dtype, 2, shape, &c.mm.b);
        fab_tensor_make(cc, dtype, 2, shape, &c.mm.c);
        double ms = bench_time_ms(b, run_mm, &c);
        if (ms > 0)
            rate = 2.0 * n * n * n / (ms * 1e-3) / 1e9;
    }
    fab_free(b->ctx, a);
    fab_free(b->ctx, bb);
    fab_free(b->ctx, cc);
    return rate;
}

#ifdef FAB_BENCH_CUDNN
/* ------------------------------------------------- the GPU baseline: cuDNN */

#define CUDNN_TOLERANCE 2e-2 /* max |cudnn - fabriek| / max |fabriek|, bf16 and f16 */

/* One execution, waited for; 0 or nonzero with err filled. */
static int cudnn_exec(bench_cudnn_attn *a, char *err, size_t errlen)
{
    return bench_cudnn_attn_run(a, err, errlen) != 0 || bench_cudnn_attn_wait(a, err, errlen) != 0;
}

static fab_status run_cudnn(attn_case *c, bench_cudnn_attn *a)
{
    char err[1024];
    if (cudnn_exec(a, err, sizeof err) == 0)
        return FAB_OK;
    fprintf(stderr, "attention: cuDNN baseline unavailable for %s: %s\n", c->cudnn_case, err);
    return FAB_ERR_BACKEND;
}
static fab_status run_cudnn_fwd(void *arg) { attn_case *c = arg; return run_cudnn(c, c->cudnn_fwd); }
static fab_status run_cudnn_bwd(void *arg) { attn_case *c = arg; return run_cudnn(c, c->cudnn_bwd); }

/* max |x - y| / max |y| over n elements (bf16, f16 or f32) of two device arrays,
 * x cuDNN's and y fabriek's; +inf when either holds a NaN or an infinity, or a copy
 * fails. */
static double rel_diff(fab_context *ctx, const void *x, const void *y, fab_dtype dtype, int64_t n)
{
    const size_t es = fab_dtype_size(dtype), bytes = (size_t)n * es;
    unsigned char *hx = malloc(bytes), *hy = malloc(bytes);
    double diff = INFINITY, ymax = 0;
    if (hx && hy && fab_copy(ctx, hx, x, bytes) == FAB_OK && fab_copy(ctx, hy, y, bytes) == FAB_OK &&
        fab_synchronize(ctx) == FAB_OK) {
        diff = 0;
        for (int64_t i = 0; i < n; i++) {
            float a, r;
            if (dtype == FAB_DTYPE_F32) {
                memcpy(&a, hx + 4 * i, 4);
                memcpy(&r, hy + 4 * i, 4);
            } else {
                uint16_t u, v;
                memcpy(&u, hx + 2 * i, 2);
                memcpy(&v, hy + 2 * i, 2);
                a = dtype == FAB_DTYPE_BF16 ? fab_bf16_to_f32(u) : fab_f16_to_f32(u);
                r = dtype == FAB_DTYPE_BF16 ? fab_bf16_to_f32(v) : fab_f16_to_f32(v);
            }
            if (!isfinite(a) || !isfinite(r)) {
                diff = INFINITY;
                break;
            }
            diff = fmax(diff, fabs((double)a - r));
            ymax = fmax(ymax, fabs((double)r));
        }
        diff = ymax > 0 ? diff / ymax : (diff > 0 ? INFINITY : 0);
    }
    free(hx);
    free(hy);
    return diff;
}

/* cuDNN's rate for one case, forward and backward: the baseline's name ("none",
 * "cudnn" or "cudnn(mismatch)") and rate in the suite's unit (0: none). */
typedef struct cudnn_result {
    char fwd_name[32], bwd_name[32];
    double fwd_rate, bwd_rate;
} cudnn_result;

/* Builds cuDNN's plans for the case, checks them once against fabriek on the same
 * inputs (which also leaves fabriek's out and lse for the backward), times the ones
 * that match and frees them. cbuf: cuDNN's out, stats, dq, dk, dv. Never fails the
 * suite: whatever goes wrong on cuDNN's side is one line on stderr. Returns nonzero
 * only when fabriek itself failed (already reported). */
static int cudnn_baseline(bench *b, attn_case *c, void *const cbuf[5], fab_dtype dtype, double fwd_flops,
                          double unit_scale, int *announced, cudnn_result *r)
{
    snprintf(r->fwd_name, sizeof r->fwd_name, "none");
    snprintf(r->bwd_name, sizeof r->bwd_name, "none");
    r->fwd_rate = r->bwd_rate = 0;
    if (!cbuf[0]) { /* its buffers could not be allocated (already said) */
        return 0;
    }
    const int64_t n = c->b * c->s * c->h * c->d;
    char err[1024];
    bench_cudnn_attn_desc dsc;
    memset(&dsc, 0, sizeof dsc);
    dsc.bf16 = dtype == FAB_DTYPE_BF16;
    dsc.b = c->b, dsc.h = c->h, dsc.s = c->s, dsc.d = c->d;
    dsc.causal = c->causal;
    dsc.scale = 1.0f / sqrtf((float)c->d); /* fabriek's scale 0 */
    dsc.q = c->fwd.q.data, dsc.k = c->fwd.k.data, dsc.v = c->fwd.v.data;
    dsc.o = cbuf[0], dsc.stats = cbuf[1];
    dsc.dout = c->bwd.dout.data, dsc.dq = cbuf[2], dsc.dk = cbuf[3], dsc.dv = cbuf[4];

    /* forward: cuDNN and fabriek on the same inputs, compared before anything is timed */
    if (bench_cudnn_attn_create(&c->cudnn_fwd, &dsc, 0, err, sizeof err) != 0 ||
        cudnn_exec(c->cudnn_fwd, err, sizeof err) != 0) {
        fprintf(stderr, "attention: cuDNN baseline unavailable for %s: %s\n", c->cudnn_case, err);
        bench_cudnn_attn_destroy(c->cudnn_fwd);
        c->cudnn_fwd = NULL;
        return 0;
    }
    if (!*announced) {
        printf("attention: baseline: cuDNN %s, fused flash attention (backend graph API)\n", bench_cudnn_version());
        *announced = 1;
    }
    if (fab_attention_forward(c->ctx, &c->fwd) != FAB_OK || fab_synchronize(c->ctx) != FAB_OK) {
        fprintf(stderr, "fab-bench attention: %s\n", fab_last_error());
        bench_cudnn_attn_destroy(c->cudnn_fwd);
        c->cudnn_fwd = NULL;
        return 1;
    }
    const double dout = rel_diff(c->ctx, cbuf[0], c->fwd.out.data, dtype, n);
    const double dlse = rel_diff(c->ctx, cbuf[1], c->fwd.lse.data, FAB_DTYPE_F32, c->b * c->h * c->s);
    if (!(dout <= CUDNN_TOLERANCE)) {
        printf("attention: MISMATCH %s forward: max |cudnn - fabriek| / max |fabriek| = %.3g > %.0e (lse: %.3g); "
               "cuDNN's forward is not used as the baseline\n",
               c->cudnn_case, dout, CUDNN_TOLERANCE, dlse);
        snprintf(r->fwd_name, sizeof r->fwd_name, "cudnn(mismatch)");
    } else {
        double ms = bench_time_ms(b, run_cudnn_fwd, c);
        if (ms > 0) {
            snprintf(r->fwd_name, sizeof r->fwd_name, "cudnn");
            r->fwd_rate = fwd_flops / (ms * 1e-3) / unit_scale;
        }
    }
    char line[512];
    snprintf(line, sizeof line, "attention: cuDNN %s: forward engine %lld, workspace %zu B, diff out %.1e, lse %.1e",
             c->cudnn_case, (long long)bench_cudnn_attn_engine(c->cudnn_fwd),
             bench_cudnn_attn_workspace(c->cudnn_fwd), dout, dlse);

    /* backward: cuDNN's from its own out and stats, fabriek's from its own, the
     * same dout */
    {
        if (bench_cudnn_attn_create(&c->cudnn_bwd, &dsc, 1, err, sizeof err) != 0 ||
            cudnn_exec(c->cudnn_bwd, err, sizeof err) != 0) {
            fprintf(stderr, "attention: cuDNN baseline unavailable for %s (backward): %s\n", c->cudnn_case, err);
        } else if (fab_attention_backward(c->ctx, &c->bwd) != FAB_OK || fab_synchronize(c->ctx) != FAB_OK) {
            fprintf(stderr, "fab-bench attention: %s\n", fab_last_error());
            bench_cudnn_attn_destroy(c->cudnn_bwd);
            bench_cudnn_attn_destroy(c->cudnn_fwd);
            c->cudnn_fwd = c->cudnn_bwd = NULL;
            return 1;
        } else {
            const double ddq = rel_diff(c->ctx, cbuf[2], c->bwd.dq.data, dtype, n);
            const double ddk = rel_diff(c->ctx, cbuf[3], c->bwd.dk.data, dtype, n);
            const double ddv = rel_diff(c->ctx, cbuf[4], c->bwd.dv.data, dtype, n);
            const double worst = fmax(ddq, fmax(ddk, ddv)); /* fmax drops NaN, but rel_diff gives none */
            if (!(worst <= CUDNN_TOLERANCE)) {
                printf("attention: MISMATCH %s backward: max |cudnn - fabriek| / max |fabriek| = %.3g (dq), %.3g "
                       "(dk), %.3g (dv) > %.0e; cuDNN's backward is not used as the baseline\n",
                       c->cudnn_case, ddq, ddk, ddv, CUDNN_TOLERANCE);
                snprintf(r->bwd_name, sizeof r->bwd_name, "cudnn(mismatch)");
            } else {
                double ms = bench_time_ms(b, run_cudnn_bwd, c);
                if (ms > 0) {
                    snprintf(r->bwd_name, sizeof r->bwd_name, "cudnn");
                    r->bwd_rate = 2.5 * fwd_flops / (ms * 1e-3) / unit_scale;
                }
            }
            size_t len = strlen(line);
            snprintf(line + len, sizeof line - len,
                     "; backward engine %lld, workspace %zu B, diff dq %.1e, dk %.1e, dv %.1e",
                     (long long)bench_cudnn_attn_engine(c->cudnn_bwd), bench_cudnn_attn_workspace(c->cudnn_bwd), ddq,
                     ddk, ddv);
        }
    }
    printf("%s\n", line);
    bench_cudnn_attn_destroy(c->cudnn_bwd);
    bench_cudnn_attn_destroy(c->cudnn_fwd);
    c->cudnn_fwd = c->cudnn_bwd = NULL;
    return 0;
}
#endif

int bench_suite_attention(bench *b)
{
    const int gpu = fab_context_backend(b->ctx) == FAB_BACKEND_CUDA;
    /* CPU: bf16. GPU: bf16, and f16 as well in a full run. */
    const fab_dtype dtypes[2] = {FAB_DTYPE_BF16, FAB_DTYPE_F16};
    const int ndtypes = gpu && !b->opt.quick ? 2 : 1;
    /* CPU: one sequence of s tokens, model dim 1024. GPU: FlashAttention's
     * benchmark shapes, 16k tokens per batch (b = 16384 / s), model dim 2048. */
    const int64_t cpu_seqs[2] = {1024, 2048}, gpu_seqs[6] = {512, 1024, 2048, 4096, 8192, 16384};
    const int64_t gpu_quick[3] = {512, 2048, 8192}, dims[4] = {64, 128, 256, 96};
    const int ndims = gpu ? 4 : 2; /* 256 and 96: GPU only (the CPU has them, but slowly) */
    const int64_t *seqs = gpu ? (b->opt.quick ? gpu_quick : gpu_seqs) : cpu_seqs;
    const int nseq = gpu ? (b->opt.quick ? 3 : 6) : (b->opt.quick ? 1 : 2);
    const char *unit = gpu ? "TFLOP/s" : "GFLOP/s";
    const double unit_scale = gpu ? 1e12 : 1e9;
    int failed = 0;

    double base = 0;
    const char *base_name = "none";
    int naive = 0;
    fab_context *det_ctx = NULL;
#ifdef FAB_BENCH_CUDNN
    int cudnn_announced = 0;
#endif
    /* GPU, head dim <= 128: the forward also with 16 query rows per warp (these
     * grids fill the GPU, so left to itself it takes 32), unless the caller chose
     * a variant through FAB_ATTN_FWD_WARP_ROWS or FAB_ATTN_SM90 (the A/Bs set and clear it) */
    const int fwd_ab_allowed = gpu && !getenv("FAB_ATTN_FWD_WARP_ROWS") && !getenv("FAB_ATTN_SM90");
    /* the same for the dk/dv kernel's keys (both A/Bs set FAB_ATTN_SM90 and clear it after) */
    const int bwd_ab_allowed = gpu && !getenv("FAB_ATTN_BWD_KEYS") && !getenv("FAB_ATTN_SM90");
    if (gpu) {
#ifndef FAB_BENCH_CUDNN
        printf("attention: this fab-bench was built without the cuDNN headers: no GPU baseline (ratio 0)\n");
#endif
        fab_context_config dc;
        memset(&dc, 0, sizeof dc);
        dc.backend = FAB_BACKEND_CUDA; /* device 0, as fab-bench's own context */
        dc.deterministic = 1;
        if (fab_context_create(&dc, &det_ctx) != FAB_OK) {
            fprintf(stderr, "fab-bench attention: deterministic context: %s\n", fab_last_error());
            det_ctx = NULL;
            failed = 1;
        }
    } else {
        base = matmul_rate(b, dtypes[0]);
        base_name = "matmul 1024^3";
        naive = base <= 0;
        if (naive) {
            fprintf(stderr, "fab-bench attention: fab_matmul unavailable (%s); the naive attention is the baseline\n",
                    fab_last_error());
            base_name = "naive attn";
        }
    }

    /* GPU, full run: every sequence and head dim in bf16, then again in f16 */
    for (int ts = 0; ts < ndtypes * nseq; ts++) {
        const fab_dtype dtype = dtypes[ts / nseq];
        const int si = ts % nseq;
        for (int di = 0; di < ndims; di++) {
            const int64_t s = seqs[si], d = dims[di];
            if (d == 96 && b->opt.quick && s != 2048)
                continue;
            const int64_t h = gpu ? 2048 / d : 1024 / d, bsz = gpu ? 16384 / s : 1;
            const int64_t shape[4] = {bsz, s, h, d}, lshape[3] = {bsz, h, s}, n = bsz * s * h * d;
            const size_t bytes = (size_t)n * fab_dtype_size(dtype), lbytes = (size_t)(bsz * h * s) * 4;
            void *buf[8] = {NULL};
            void *lse = NULL;
            fab_status st = fab_alloc(b->ctx, lbytes, &lse);
            for (int i = 0; i < 8 && st == FAB_OK; i++) {
                st = fab_alloc(b->ctx, bytes, &buf[i]);
                if (st == FAB_OK && i < 4)
                    st = fill(b->ctx, buf[i], dtype, n, (unsigned)i + 3);
            }
            float *host = NULL;
            if (st == FAB_OK && naive) {
                host = malloc(sizeof(float) * (size_t)(4 * n + s * s));
                st = host ? FAB_OK : FAB_ERR_OUT_OF_MEMORY;
            }
            if (st != FAB_OK) {
                fprintf(stderr, "fab-bench attention: %s\n", fab_last_error());
                failed = 1;
            }
            /* cuDNN's own out, stats, dq, dk, dv (GPU; its inputs are fabriek's) */
            void *cbuf[5] = {NULL};
#ifdef FAB_BENCH_CUDNN
            if (gpu && st == FAB_OK) {
                fab_status cs = FAB_OK;
                for (int i = 0; i < 5 && cs == FAB_OK; i++)
                    cs = fab_alloc(b->ctx, i == 1 ? lbytes : bytes, &cbuf[i]);
                if (cs != FAB_OK) {
                    fprintf(stderr, "attention: cuDNN baseline unavailable for %s b%lld h%lld s%lld d%lld: "
                                    "its buffers: %s\n",
                            fab_dtype_name(dtype), (long long)bsz, (long long)h, (long long)s, (long long)d,
                            fab_last_error());
                    for (int i = 0; i < 5; i++) {
                        fab_free(b->ctx, cbuf[i]);
                        cbuf[i] = NULL;
                    }
                }
            }
#endif
            for (int causal = 0; causal < 2 && st == FAB_OK; causal++) {
                attn_case c;
                memset(&c, 0, sizeof c);
                c.ctx = b->ctx;
                c.det_ctx = det_ctx;
                c.b = bsz, c.s = s, c.h = h, c.d = d, c.causal = causal;
                fab_tensor_make(buf[0], dtype, 4, shape, &c.fwd.q);
                fab_tensor_make(buf[1], dtype, 4, shape, &c.fwd.k);
                fab_tensor_make(buf[2], dtype, 4, shape, &c.fwd.v);
                fab_tensor_make(buf[4], dtype, 4, shape, &c.fwd.out);
                fab_tensor_make(lse, FAB_DTYPE_F32, 3, lshape, &c.fwd.lse);
                c.fwd.causal = causal;
                c.bwd.q = c.fwd.q, c.bwd.k = c.fwd.k, c.bwd.v = c.fwd.v, c.bwd.out = c.fwd.out, c.bwd.lse = c.fwd.lse;
                fab_tensor_make(buf[3], dtype, 4, shape, &c.bwd.dout);
                fab_tensor_make(buf[5], dtype, 4, shape, &c.bwd.dq);
                fab_tensor_make(buf[6], dtype, 4, shape, &c.bwd.dk);
                fab_tensor_make(buf[7], dtype, 4, shape, &c.bwd.dv);
                c.bwd.causal = causal;
                /* the sm80 forward against the default at every head dim; its 16-row variant
                 * and the backward A/Bs up to 128 */
                const int fwd_ab = fwd_ab_allowed, rows_ab = fwd_ab_allowed && d <= 128;
                const int bwd_ab = bwd_ab_allowed && d <= 128;
                const double fwd_flops = 4.0 * bsz * h * s * s * d * (causal ? 0.5 : 1.0);
                double base_rate = base, bwd_base_rate = base;
                const char *fwd_base = base_name, *bwd_base = base_name;
#ifdef FAB_BENCH_CUDNN
                cudnn_result cr;
                if (gpu) {
                    snprintf(c.cudnn_case, sizeof c.cudnn_case, "%s b%lld h%lld s%lld d%lld%s",
                             fab_dtype_name(dtype), (long long)bsz, (long long)h, (long long)s, (long long)d,
                             causal ? " causal" : "");
                    if (cudnn_baseline(b, &c, cbuf, dtype, fwd_flops, unit_scale, &cudnn_announced, &cr) != 0) {
                        failed = 1;
                        continue;
                    }
                    fwd_base = cr.fwd_name, base_rate = cr.fwd_rate;
                    bwd_base = cr.bwd_name, bwd_base_rate = cr.bwd_rate;
                }
#endif
                if (naive) { /* f32 host copies of q, k, v */
                    float *hp = host;
                    c.nq = hp, c.nk = hp + n, c.nv = hp + 2 * n, c.no = hp + 3 * n, c.ns = hp + 4 * n;
                    for (int64_t i = 0; i < 3 * n; i++)
                        hp[i] = (float)((i * 2654435761u) % 2000) / 1000.0f - 1.0f;
                    double ms = bench_time_ms(b, run_naive, &c);
                    base_rate = bwd_base_rate = ms > 0 ? fwd_flops / (ms * 1e-3) / 1e9 : 0;
                }
                double fms = bench_time_ms(b, run_fwd, &c); /* also leaves out and lse for the backward */
                if (fms < 0) {
                    failed = 1;
                    continue;
                }
                add_row(b, "attn_forward", &c, fab_dtype_name(dtype), fms, fwd_flops, unit, unit_scale, fwd_base,
                        base_rate);
                if (fwd_ab) {
                    /* the sm80 forward against the default of this run (on an H100 the
                     * default is the Hopper forward at head dims 64, 128 and 256), and the
                     * sm80 forward's other variant against the sm80 default */
                    setenv("FAB_ATTN_SM90", "0", 1);
                    double ms80 = bench_time_ms(b, run_fwd, &c), ms16 = 0;
                    if (rows_ab && ms80 >= 0) {
                        setenv("FAB_ATTN_FWD_WARP_ROWS", "16", 1);
                        ms16 = bench_time_ms(b, run_fwd, &c);
                        unsetenv("FAB_ATTN_FWD_WARP_ROWS");
                    }
                    unsetenv("FAB_ATTN_SM90");
                    /* then the default's out and lse again, for the backward */
                    if (ms80 < 0 || ms16 < 0 || fab_attention_forward(c.ctx, &c.fwd) != FAB_OK) {
                        failed = 1;
                        continue;
                    }
                    add_row(b, "attn_forward sm80", &c, fab_dtype_name(dtype), ms80, fwd_flops, unit, unit_scale,
                            "default fwd", fwd_flops / (fms * 1e-3) / unit_scale);
                    if (rows_ab)
                        add_row(b, "attn_forward sm80 16 rows/warp", &c, fab_dtype_name(dtype), ms16, fwd_flops, unit,
                                unit_scale, "sm80 fwd", fwd_flops / (ms80 * 1e-3) / unit_scale);
                }
                double bms = bench_time_ms(b, run_bwd, &c);
                if (bms < 0) {
                    failed = 1;
                    continue;
                }
                add_row(b, "attn_backward", &c, fab_dtype_name(dtype), bms, 2.5 * fwd_flops, unit, unit_scale,
                        bwd_base, bwd_base_rate);
                if (bwd_ab) {
                    /* the sm80 backward against the default of this run (on an H100 the
                     * fast path's dk/dv kernel is the Hopper one at head dims 64 and 128),
                     * and the sm80 dk/dv kernel's other variant against the sm80 default */
                    setenv("FAB_ATTN_SM90", "0", 1);
                    double ms80 = bench_time_ms(b, run_bwd, &c);
                    setenv("FAB_ATTN_BWD_KEYS", "64", 1);
                    double ms64 = ms80 < 0 ? -1 : bench_time_ms(b, run_bwd, &c);
                    unsetenv("FAB_ATTN_BWD_KEYS");
                    unsetenv("FAB_ATTN_SM90");
                    if (ms64 < 0) {
                        failed = 1;
                        continue;
                    }
                    add_row(b, "attn_backward sm80", &c, fab_dtype_name(dtype), ms80, 2.5 * fwd_flops, unit,
                            unit_scale, "default bwd", 2.5 * fwd_flops / (bms * 1e-3) / unit_scale);
                    add_row(b, "attn_backward sm80 64 keys/block", &c, fab_dtype_name(dtype), ms64, 2.5 * fwd_flops,
                            unit, unit_scale, "sm80 bwd", 2.5 * fwd_flops / (ms80 * 1e-3) / unit_scale);
                }
                if (det_ctx) {
                    double dms = bench_time_ms(b, run_bwd_det, &c);
                    if (dms < 0) {
                        failed = 1;
                        continue;
                    }
                    add_row(b, "attn_backward determ.", &c, fab_dtype_name(dtype), dms, 2.5 * fwd_flops, unit,
                            unit_scale, "fast bwd", 2.5 * fwd_flops / (bms * 1e-3) / unit_scale);
                }
            }
            free(host);
            for (int i = 0; i < 8; i++)
                fab_free(b->ctx, buf[i]);
            for (int i = 0; i < 5; i++)
                fab_free(b->ctx, cbuf[i]);
            fab_free(b->ctx, lse);
        }
    }
    fab_context_destroy(det_ctx);
#ifdef FAB_BENCH_CUDNN
    if (gpu)
        bench_cudnn_unload();
#endif
    return failed;
}
