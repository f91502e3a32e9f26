/*
 * suite_attention.c: attention forward/backward throughput.
 *
 * Work is counted by FlashAttention's convention: forward 4*b*hq*sq*sk*d flops
 * (two GEMMs), halved for causal; backward 2.5x the forward (five GEMMs; the CPU
 * backward really does seven, see attention_cpu.c, so its rate here is the
 * useful-work rate).
 *
 * Baseline, measured in the same run:
 *   CPU: fab_matmul's rate on a 1024^3 GEMM in the same dtype: how close the
 *        fused attention comes to the machine's dense GEMM rate. If fab_matmul
 *        fails, a naive materialised-softmax attention (S = QK^T, softmax, PV in
 *        plain f32 loops, below) is the baseline instead, and the row says so.
 *   GPU: cuDNN's fused attention should be the baseline; this suite does not
 *        drive cuDNN yet, so on a GPU it prints that, reports fabriek's TFLOP/s
 *        alone (baseline "none", ratio 0) for FlashAttention's benchmark shapes
 *        (16k tokens per batch, model dim 2048, head dims 64 and 128, sequence
 *        512..16k, causal and not; the forward also at head dim 256).
 *        One more row per case, "attn_backward determ.", times the deterministic
 *        backward (a context with deterministic = 1: separate dq kernel, 7 tile
 *        products) against the default fast one (dq atomics) of the same run:
 *        its ratio is what determinism costs.
 */
#include "bench.h"

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

int bench_suite_attention(bench *b)
{
    const int gpu = fab_context_backend(b->ctx) == FAB_BACKEND_CUDA;
    const fab_dtype dtype = FAB_DTYPE_BF16;
    /* CPU: one sequence of s tokens, model dim 1024. GPU: FlashAttention's
     * benchmark shapes, 16k tokens per batch (b = 16384 / s), model dim 2048. */
    const int64_t cpu_seqs[2] = {1024, 2048}, gpu_seqs[6] = {512, 1024, 2048, 4096, 8192, 16384};
    const int64_t gpu_quick[3] = {512, 2048, 8192}, dims[3] = {64, 128, 256};
    const int ndims = gpu ? 3 : 2; /* 256: GPU forward only (the CPU has it, but slowly) */
    const int64_t *seqs = gpu ? (b->opt.quick ? gpu_quick : gpu_seqs) : cpu_seqs;
    const int nseq = gpu ? (b->opt.quick ? 3 : 6) : (b->opt.quick ? 1 : 2);
    const char *unit = gpu ? "TFLOP/s" : "GFLOP/s";
    const double unit_scale = gpu ? 1e12 : 1e9;
    int failed = 0;

    double base = 0;
    const char *base_name = "none";
    int naive = 0;
    fab_context *det_ctx = NULL;
    if (gpu) {
        printf("attention: no cuDNN baseline in this suite yet: rows show fabriek's rate only (ratio 0)\n");
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
        base = matmul_rate(b, dtype);
        base_name = "matmul 1024^3";
        naive = base <= 0;
        if (naive) {
            fprintf(stderr, "fab-bench attention: fab_matmul unavailable (%s); the naive attention is the baseline\n",
                    fab_last_error());
            base_name = "naive attn";
        }
    }

    for (int si = 0; si < nseq; si++) {
        for (int di = 0; di < ndims; di++) {
            const int64_t s = seqs[si], d = dims[di];
            const int64_t h = gpu ? 2048 / d : 1024 / d, bsz = gpu ? 16384 / s : 1;
            const int64_t shape[4] = {bsz, s, h, d}, lshape[3] = {bsz, h, s}, n = bsz * s * h * d;
            const size_t bytes = (size_t)n * fab_dtype_size(dtype);
            void *buf[8] = {NULL};
            void *lse = NULL;
            fab_status st = fab_alloc(b->ctx, (size_t)(bsz * h * s) * 4, &lse);
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
                const double fwd_flops = 4.0 * bsz * h * s * s * d * (causal ? 0.5 : 1.0);
                double base_rate = base;
                if (naive) { /* f32 host copies of q, k, v */
                    float *hp = host;
                    c.nq = hp, c.nk = hp + n, c.nv = hp + 2 * n, c.no = hp + 3 * n, c.ns = hp + 4 * n;
                    for (int64_t i = 0; i < 3 * n; i++)
                        hp[i] = (float)((i * 2654435761u) % 2000) / 1000.0f - 1.0f;
                    double ms = bench_time_ms(b, run_naive, &c);
                    base_rate = ms > 0 ? fwd_flops / (ms * 1e-3) / 1e9 : 0;
                }
                double fms = bench_time_ms(b, run_fwd, &c); /* also leaves out and lse for the backward */
                if (fms < 0) {
                    failed = 1;
                    continue;
                }
                add_row(b, "attn_forward", &c, fab_dtype_name(dtype), fms, fwd_flops, unit, unit_scale, base_name,
                        base_rate);
                if (d > 128) /* no CUDA backward at head dim 256 */
                    continue;
                double bms = bench_time_ms(b, run_bwd, &c);
                if (bms < 0) {
                    failed = 1;
                    continue;
                }
                add_row(b, "attn_backward", &c, fab_dtype_name(dtype), bms, 2.5 * fwd_flops, unit, unit_scale, base_name,
                        base_rate);
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
            fab_free(b->ctx, lse);
        }
    }
    fab_context_destroy(det_ctx);
    return failed;
}
