/*
 * suite_gelu.c: GELU forward/backward bandwidth. GELU is memory-bound, so the
 * figure of merit is bytes moved per second (forward reads x and writes y: 2n
 * elements; backward reads x and dy and writes dx: 3n), and the baseline is a
 * plain device-to-device copy (fab_copy: n read + n written) timed in the same run.
 */
#include "bench.h"

#include <stdio.h>
#include <string.h>

typedef struct gelu_case {
    fab_context *ctx;
    fab_gelu_params fwd;
    fab_gelu_backward_params bwd;
    void *copy_dst, *copy_src;
    size_t copy_bytes;
} gelu_case;

static fab_status run_forward(void *arg) { gelu_case *c = arg; return fab_gelu_forward(c->ctx, &c->fwd); }
static fab_status run_backward(void *arg) { gelu_case *c = arg; return fab_gelu_backward(c->ctx, &c->bwd); }
static fab_status run_copy(void *arg) { gelu_case *c = arg; return fab_copy(c->ctx, c->copy_dst, c->copy_src, c->copy_bytes); }

/* Fills a buffer with values in [-4, 4) through the library's own conversions. */
static fab_status fill(fab_context *ctx, void *dev, fab_dtype dtype, int64_t n)
{
    size_t es = fab_dtype_size(dtype);
    const int64_t chunk = 1 << 20;
    static unsigned char host[(1 << 20) * 4];
    for (int64_t off = 0; off < n; off += chunk) {
        int64_t m = n - off < chunk ? n - off : chunk;
        for (int64_t i = 0; i < m; i++) {
            float v = (float)((off + i) * 2654435761u % 8000) / 1000.0f - 4.0f;
            if (dtype == FAB_DTYPE_F32)
                memcpy(host + 4 * i, &v, 4);
            else {
                uint16_t h = dtype == FAB_DTYPE_BF16 ? fab_f32_to_bf16(v) : fab_f32_to_f16(v);
                memcpy(host + 2 * i, &h, 2);
            }
        }
        fab_status s = fab_copy(ctx, (char *)dev + off * es, host, (size_t)m * es);
        if (s == FAB_OK)
            s = fab_synchronize(ctx);
        if (s != FAB_OK)
            return s;
    }
    return FAB_OK;
}

int bench_suite_gelu(bench *b)
{
    bool gpu = fab_context_backend(b->ctx) == FAB_BACKEND_CUDA;
    int64_t n = gpu ? (b->opt.quick ? (1 << 26) : (1 << 28)) : (b->opt.quick ? (1 << 22) : (1 << 24));
    const fab_dtype dtypes[] = {FAB_DTYPE_F32, FAB_DTYPE_BF16};
    int failed = 0;
    for (int d = 0; d < 2; d++) {
        fab_dtype dtype = dtypes[d];
        size_t bytes = (size_t)n * fab_dtype_size(dtype);
        void *x = NULL, *y = NULL, *dy = NULL;
        if (fab_alloc(b->ctx, bytes, &x) != FAB_OK || fab_alloc(b->ctx, bytes, &y) != FAB_OK ||
            fab_alloc(b->ctx, bytes, &dy) != FAB_OK || fill(b->ctx, x, dtype, n) != FAB_OK ||
            fill(b->ctx, dy, dtype, n) != FAB_OK) {
            fprintf(stderr, "fab-bench gelu: %s\n", fab_last_error());
            fab_free(b->ctx, x);
            fab_free(b->ctx, y);
            fab_free(b->ctx, dy);
            return 1;
        }
        gelu_case c;
        memset(&c, 0, sizeof c);
        c.ctx = b->ctx;
        fab_tensor_make(x, dtype, 1, &n, &c.fwd.x);
        fab_tensor_make(y, dtype, 1, &n, &c.fwd.y);
        c.bwd.x = c.fwd.x;
        fab_tensor_make(dy, dtype, 1, &n, &c.bwd.dy);
        c.bwd.dx = c.fwd.y;
        c.copy_dst = y;
        c.copy_src = x;
        c.copy_bytes = bytes;

        double copy_ms = bench_time_ms(b, run_copy, &c);
        double copy_rate = 2.0 * (double)bytes / (copy_ms * 1e-3) / 1e9;
        for (int approx = 0; approx < 2; approx++) {
            c.fwd.approximate = c.bwd.approximate = approx ? FAB_GELU_TANH : FAB_GELU_ERF;
            for (int dir = 0; dir < 2; dir++) {
                double ms = bench_time_ms(b, dir ? run_backward : run_forward, &c);
                bench_row *row = bench_add_row(b);
                if (!row || ms < 0 || copy_ms < 0) {
                    failed = 1;
                    continue;
                }
                snprintf(row->suite, sizeof row->suite, "gelu");
                snprintf(row->name, sizeof row->name, "gelu_%s %s", dir ? "backward" : "forward",
                         approx ? "tanh" : "erf");
                snprintf(row->shape, sizeof row->shape, "n=%lld", (long long)n);
                snprintf(row->dtype, sizeof row->dtype, "%s", fab_dtype_name(dtype));
                row->ms = ms;
                row->work = (dir ? 3.0 : 2.0) * (double)bytes;
                row->unit = "GB/s";
                row->rate = row->work / (ms * 1e-3) / 1e9;
                snprintf(row->baseline, sizeof row->baseline, "copy");
                row->baseline_rate = copy_rate;
                row->ratio = row->rate / copy_rate;
            }
        }
        fab_free(b->ctx, x);
        fab_free(b->ctx, y);
        fab_free(b->ctx, dy);
    }
    return failed;
}
