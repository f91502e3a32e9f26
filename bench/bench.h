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
#include <stdio.h>

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
    int check;          /* --check: 1 met every rule that matched it, -1 failed one, 0 none matched */
} bench_row;

typedef struct bench {
    fab_context *ctx;
    bench_options opt;
    void *scrub_a, *scrub_b; /* cache scrubbing buffers */
    size_t scrub_bytes;
    bench_row *rows;
    int nrows, cap;
    int rank, nranks;        /* under mpirun/srun (bench_mpi.c): only rank 0 prints and writes the reports */
    int local_rank;          /* on its node: picks the GPU */
} bench;

/* Runs fn(arg) warmup + reps times with the caches scrubbed before each timed run;
 * returns the median time in milliseconds, or a negative value when fn failed
 * (after printing fab_last_error to stderr). */
typedef fab_status (*bench_fn)(void *arg);
double bench_time_ms(bench *b, bench_fn fn, void *arg);

bench_row *bench_add_row(bench *b);

/* MPI (bench_mpi.c): where the build has it, initialises it when an MPI launcher
 * started the process or the comm suite will run; sets b->rank, b->nranks and
 * b->local_rank, and sends stdout of ranks other than 0 to /dev/null; 0, or -1
 * after printing why. */
int bench_mpi_start(bench *b, bool comm_suite);
/* A context as cfg asks, on the GPU of the node-local rank when there are several
 * ranks and the backend is CUDA (device 0 where the job shows the rank only one);
 * cfg is updated to what was made. */
fab_status bench_context_create(const bench *b, fab_context_config *cfg, fab_context **ctx);
double bench_now_ms(void);

/* Acceptance thresholds (bench_check.c; the file format is described there). */
typedef struct bench_rule {
    int line;                            /* in the file */
    char suite[64], name[64], shape[64], dtype[64]; /* fnmatch globs on the row's columns */
    int metric;                          /* 0 ratio, 1 rate, 2 base_rate, 3 ms */
    int at_most;                         /* 1: value <= limit; 0: value >= limit */
    double limit;
    int matched, failed;                 /* rows it matched, and of those the rows that missed it */
} bench_rule;

typedef struct bench_check {
    const char *path;
    bench_rule *rules;
    int nrules, cap;
    int failed_rules;                    /* rules that matched no row or that a row missed */
} bench_check;

/* Reads a thresholds file; nonzero (after a message naming the file and line) when
 * it cannot be read or a line is malformed. */
int bench_check_load(bench_check *c, const char *path);
/* Marks each row's check; returns the number of failed rules. */
int bench_check_apply(bench_check *c, bench *b);
void bench_check_print(const bench_check *c, const bench *b, FILE *f);
void bench_check_free(bench_check *c);

/* The rows as a bar chart of their ratios (bench_plot.c); nonzero on failure. */
int bench_write_svg(const char *path, const bench *b, const char *title);

/* Suites. Each adds rows; returns 0 on success. */
int bench_suite_gelu(bench *b);
int bench_suite_matmul(bench *b);
/* (suite: matmul) */
int bench_suite_attention(bench *b);
/* (suite: attention) */
/* (suite: comm) */
int bench_suite_comm(bench *b);

#endif
