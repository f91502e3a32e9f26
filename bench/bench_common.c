/* bench_common.c: timing and rows (see bench.h). */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double bench_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_time_ms(bench *b, bench_fn fn, void *arg)
{
    int total = b->opt.warmup + b->opt.reps;
    double *times = calloc((size_t)b->opt.reps, sizeof(double));
    if (!times)
        return -1;
    for (int r = 0; r < total; r++) {
        /* evict the operands from L2 (GPU) or the last-level cache (CPU) */
        if (b->scrub_a && fab_copy(b->ctx, b->scrub_b, b->scrub_a, b->scrub_bytes) != FAB_OK)
            goto fail;
        if (fab_synchronize(b->ctx) != FAB_OK)
            goto fail;
        double t0 = bench_now_ms();
        if (fn(arg) != FAB_OK || fab_synchronize(b->ctx) != FAB_OK)
            goto fail;
        double t1 = bench_now_ms();
        if (r >= b->opt.warmup)
            times[r - b->opt.warmup] = t1 - t0;
    }
    qsort(times, (size_t)b->opt.reps, sizeof(double), cmp_double);
    double median = times[b->opt.reps / 2];
    free(times);
    return median;
fail:
    fprintf(stderr, "fab-bench: %s\n", fab_last_error());
    free(times);
    return -1;
}

bench_row *bench_add_row(bench *b)
{
    if (b->nrows == b->cap) {
        int cap = b->cap ? 2 * b->cap : 32;
        bench_row *rows = realloc(b->rows, (size_t)cap * sizeof *rows);
        if (!rows)
            return NULL;
        b->rows = rows;
        b->cap = cap;
    }
    bench_row *row = &b->rows[b->nrows++];
    memset(row, 0, sizeof *row);
    return row;
}
