/*
 * fab-bench: fabriek's benchmark, for developers and for acceptance testing of a
 * machine. Each suite measures fabriek's ops and, in the same run, the baseline
 * they are judged against, and reports the ratio. Prints a table; --json FILE
 * writes a machine-readable report with the device, versions and commit; --svg
 * FILE the ratios as a bar chart; --check FILE judges the rows against a
 * thresholds file (bench_check.c) and prints PASS/FAIL.
 *
 *   fab-bench [--suite NAME]... [--quick] [--backend auto|cpu|cuda] [--reps N]
 *             [--json FILE] [--svg FILE] [--check FILE] [--list]
 *
 * Exit status: 0 all ran (and every rule of --check was met), 1 a suite or a
 * report failed, 2 bad usage or thresholds file, 3 all ran but a rule was not met.
 */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fab_git_commit.h" /* FAB_GIT_COMMIT, written at build time (cmake/git_commit.cmake) */

typedef struct suite {
    const char *name;
    const char *what;
    int (*run)(bench *b);
} suite;

static const suite suites[] = {
    {"gelu", "GELU forward/backward bandwidth vs a device copy", bench_suite_gelu},
    {"matmul", "GEMM throughput vs OpenBLAS sgemm (CPU) or cuBLASLt (GPU)", bench_suite_matmul},
    /* (suite: matmul) */
    {"attention", "attention forward/backward FLOP rate (CPU: vs fab_matmul; GPU: vs cuDNN)", bench_suite_attention},
    /* (suite: attention) */
    /* (suite: comm) */
    {"comm", "collective busbw vs the raw NCCL/MPI call; grad_sync overlap (run under mpirun/srun)", bench_suite_comm},
};
#define NSUITES (int)(sizeof suites / sizeof suites[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: fab-bench [--suite NAME]... [--quick] [--backend auto|cpu|cuda] [--reps N]\n"
               "                 [--json FILE] [--svg FILE] [--check FILE] [--list]\n"
               "Runs the benchmark suites (all by default) on the GPU when there is one, else the CPU.\n"
               "--check FILE judges the rows against thresholds (docs/ACCEPTANCE.md); exit status 3\n"
               "when one is not met.\n");
}

static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        if ((unsigned char)*s < 0x20)
            fprintf(f, "\\u%04x", *s);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

static int write_json(const char *path, bench *b, const char *date, const bench_check *check)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        return 1;
    }
    char host[256] = "unknown";
    gethostname(host, sizeof host - 1);
    fprintf(f, "{\n  \"tool\": \"fab-bench\",\n  \"fabriek_version\": ");
    json_string(f, fab_version());
    fprintf(f, ",\n  \"build\": ");
    json_string(f, fab_build_info());
    fprintf(f, ",\n  \"commit\": ");
    json_string(f, FAB_GIT_COMMIT);
    fprintf(f, ",\n  \"date\": ");
    json_string(f, date);
    fprintf(f, ",\n  \"host\": ");
    json_string(f, host);
    fprintf(f, ",\n  \"backend\": \"%s\",\n  \"device\": ",
            fab_context_backend(b->ctx) == FAB_BACKEND_CUDA ? "cuda" : "cpu");
    json_string(f, fab_context_device_name(b->ctx));
    fprintf(f, ",\n  \"quick\": %s,\n  \"reps\": %d,\n", b->opt.quick ? "true" : "false", b->opt.reps);
    if (check) {
        fprintf(f, "  \"check\": {\"file\": ");
        json_string(f, check->path);
        fprintf(f, ", \"rules\": %d, \"failed_rules\": %d, \"pass\": %s},\n", check->nrules, check->failed_rules,
                check->failed_rules ? "false" : "true");
    }
    fprintf(f, "  \"results\": [\n");
    for (int i = 0; i < b->nrows; i++) {
        bench_row *r = &b->rows[i];
        fprintf(f, "    {\"suite\": ");
        json_string(f, r->suite);
        fprintf(f, ", \"name\": ");
        json_string(f, r->name);
        fprintf(f, ", \"shape\": ");
        json_string(f, r->shape);
        fprintf(f, ", \"dtype\": ");
        json_string(f, r->dtype);
        fprintf(f, ", \"median_ms\": %.6g, \"work\": %.6g, \"unit\": ", r->ms, r->work);
        json_string(f, r->unit);
        fprintf(f, ", \"rate\": %.6g, \"baseline\": ", r->rate);
        json_string(f, r->baseline);
        fprintf(f, ", \"baseline_rate\": %.6g, \"ratio\": %.4f", r->baseline_rate, r->ratio);
        if (check)
            fprintf(f, ", \"check\": %s", r->check > 0 ? "\"pass\"" : r->check < 0 ? "\"fail\"" : "null");
        fprintf(f, "}%s\n", i + 1 < b->nrows ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    return fclose(f) != 0;
}

int main(int argc, char **argv)
{
    bench b;
    memset(&b, 0, sizeof b);
    b.opt.reps = 0;
    b.opt.warmup = 2;
    const char *json = NULL, *svg = NULL, *check_path = NULL;
    const char *wanted[16];
    int nwanted = 0;
    fab_context_config cfg;
    memset(&cfg, 0, sizeof cfg);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--quick")) {
            b.opt.quick = true;
        } else if (!strcmp(a, "--suite") && i + 1 < argc && nwanted < 16) {
            wanted[nwanted++] = argv[++i];
        } else if (!strcmp(a, "--json") && i + 1 < argc) {
            json = argv[++i];
        } else if (!strcmp(a, "--svg") && i + 1 < argc) {
            svg = argv[++i];
        } else if (!strcmp(a, "--check") && i + 1 < argc) {
            check_path = argv[++i];
        } else if (!strcmp(a, "--reps") && i + 1 < argc) {
            b.opt.reps = atoi(argv[++i]);
        } else if (!strcmp(a, "--backend") && i + 1 < argc) {
            const char *v = argv[++i];
            cfg.backend = !strcmp(v, "cpu") ? FAB_BACKEND_CPU : !strcmp(v, "cuda") ? FAB_BACKEND_CUDA : FAB_BACKEND_AUTO;
        } else if (!strcmp(a, "--list")) {
            for (int s = 0; s < NSUITES; s++)
                printf("%-10s %s\n", suites[s].name, suites[s].what);
            return 0;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    for (int w = 0; w < nwanted; w++) {
        int found = 0;
        for (int s = 0; s < NSUITES; s++)
            found |= !strcmp(wanted[w], suites[s].name);
        if (!found) {
            fprintf(stderr, "fab-bench: no suite '%s' (--list shows them)\n", wanted[w]);
            return 2;
        }
    }
    if (b.opt.reps <= 0)
        b.opt.reps = b.opt.quick ? 5 : 11;
    /* the thresholds are read before anything runs: a typo costs no machine time */
    bench_check check;
    if (check_path && bench_check_load(&check, check_path) != 0)
        return 2;

    bool comm_suite = nwanted == 0;
    for (int w = 0; w < nwanted; w++)
        comm_suite |= !strcmp(wanted[w], "comm");
    if (bench_mpi_start(&b, comm_suite) != 0)
        return 1;
    if (bench_context_create(&b, &cfg, &b.ctx) != FAB_OK) {
        fprintf(stderr, "fab-bench: %s\n", fab_last_error());
        return 1;
    }
    bool gpu = fab_context_backend(b.ctx) == FAB_BACKEND_CUDA;
    b.scrub_bytes = gpu ? (size_t)256 << 20 : (size_t)64 << 20; /* past L2 / last-level cache */
    if (fab_alloc(b.ctx, b.scrub_bytes, &b.scrub_a) != FAB_OK || fab_alloc(b.ctx, b.scrub_bytes, &b.scrub_b) != FAB_OK) {
        fprintf(stderr, "fab-bench: scrub buffers: %s\n", fab_last_error());
        return 1;
    }
    char date[32];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    printf("fab-bench %s (commit %s), %s\n%s\n", fab_version(), FAB_GIT_COMMIT, date, fab_build_info());
    printf("device: %s; median of %d runs after %d warm-up, caches scrubbed before each\n",
           fab_context_device_name(b.ctx), b.opt.reps, b.opt.warmup);
    if (!gpu)
        printf("note: CPU times; they say nothing about a GPU\n");

    int failed = 0;
    for (int s = 0; s < NSUITES; s++) {
        int run = nwanted == 0;
        for (int w = 0; w < nwanted; w++)
            run |= !strcmp(wanted[w], suites[s].name);
        if (run && suites[s].run(&b) != 0) {
            fprintf(stderr, "fab-bench: suite %s failed\n", suites[s].name);
            failed = 1;
        }
    }

    int unmet = check_path ? bench_check_apply(&check, &b) : 0;
    printf("\n%-6s %-24s %-18s %-5s %10s %12s %-8s %12s %7s%s\n", "suite", "op", "shape", "dtype", "ms", "rate",
           "baseline", "base rate", "ratio", check_path ? "  check" : "");
    for (int i = 0; i < b.nrows; i++) {
        bench_row *r = &b.rows[i];
        printf("%-6s %-24s %-18s %-5s %10.3f %7.1f %-4s %-8s %7.1f %-4s %6.2fx%s\n", r->suite, r->name, r->shape,
               r->dtype, r->ms, r->rate, r->unit, r->baseline, r->baseline_rate, r->unit, r->ratio,
               !check_path ? "" : r->check > 0 ? "  PASS" : r->check < 0 ? "  FAIL" : "  -");
    }
    if (check_path) {
        bench_check_print(&check, &b, stdout);
        if (b.rank != 0 && unmet) /* under MPI only rank 0's stdout is kept: say it where it is seen */
            fprintf(stderr, "fab-bench rank %d: %d acceptance rule%s not met on this rank\n", b.rank, unmet,
                    unmet == 1 ? "" : "s");
    }
    if (b.rank == 0) { /* one report per job, not one per rank */
        if (json && write_json(json, &b, date, check_path ? &check : NULL) != 0)
            failed = 1;
        else if (json)
            printf("\nreport: %s\n", json);
        char title[256];
        snprintf(title, sizeof title, "fab-bench %s (commit %s) %s, %s%s", fab_version(), FAB_GIT_COMMIT, date,
                 fab_context_device_name(b.ctx), b.opt.quick ? ", --quick" : "");
        if (svg && bench_write_svg(svg, &b, title) != 0)
            failed = 1;
        else if (svg)
            printf("plot: %s\n", svg);
    }
    if (check_path)
        bench_check_free(&check);
    fab_free(b.ctx, b.scrub_a);
    fab_free(b.ctx, b.scrub_b);
    fab_context_destroy(b.ctx);
    free(b.rows);
    return failed ? 1 : unmet ? 3 : 0;
}
