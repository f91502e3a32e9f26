/*
 * bench.h: the pieces every fab-bench suite uses: timing by the median of
 * repetitions after warm-up with the cache scrubbed before each, and result rows
 * that the driver prints as a table and writes as JSON.
 */
#ifndef FAB_BENCH_H
#define FAB_BENCH_H

#include "fabriek.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct bench_options {
    bool quick;   /* smaller sizes and fewer repetitions */
    int reps;     /* timed repetitions per measurement */
    int warmup;   /* untimed runs first */
} bench_options;

typedef struct bench_row {
    char suite[16];
    char name[64];      /* what ran, e.g. "gelu_forward erf" */
    char shape[48];     /* "n=16777216" */
    char dtype[8];
    double ms;          /* median time of one call */
    double work;        /* flops or bytes per call */
    const char *unit;   /* "GB/s" or "TFLOP/s" or "GFLOP/s" */
    double rate;        /* work / time in unit */
    char baseline[32];  /* what it is compared with, measured in the same run */
    double baseline_rate;
    double ratio;       /* rate / baseline_rate */
} bench_row;

typedef struct bench {
    fab_context *ctx;
    bench_options opt;
    void *scrub_a, *scrub_b; /* cache scrubbing buffers */
    size_t scrub_bytes;
    bench_row *rows;
    int nrows, cap;
} bench;

/* Runs fn(arg) warmup + reps times with the caches scrubbed before each timed run;
 * returns the median time in milliseconds, or a negative value when fn failed
 * (after printing fab_last_error to stderr). */
typedef fab_status (*bench_fn)(void *arg);
double bench_time_ms(bench *b, bench_fn fn, void *arg);

bench_row *bench_add_row(bench *b);
double bench_now_ms(void);

/* Suites. Each adds rows; returns 0 on success. */
int bench_suite_gelu(bench *b);
int bench_suite_matmul(bench *b);
/* (suite: matmul) */
int bench_suite_attention(bench *b);
/* (suite: attention) */
/* (suite: comm) */
int bench_suite_comm(bench *b);

#endif
