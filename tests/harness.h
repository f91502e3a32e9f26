/*
 * harness.h: what every test file shares.
 *
 *  - One test binary runs on one backend, chosen by `--backend cpu|cuda`; ctest
 *    registers each binary once per backend (labels cpu, and gpu or emu).
 *  - Random inputs come from a seeded generator; the seed is printed and can be
 *    set with FAB_TEST_SEED to replay a failure.
 *  - Outputs are poisoned with NaN before each call, so an element the op did not
 *    write fails the comparison.
 *  - Results are compared with a float64 reference: relative error
 *    ||out - ref|| / max(||ref||, atol*sqrt(n)) and per element |out - ref| <= atol + rtol*|ref|.
 */
#ifndef FAB_TEST_HARNESS_H
#define FAB_TEST_HARNESS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "fabriek.h"

/* Parses --backend (cpu, cuda) and --filter (run only the tests whose names match,
 * with * and ? wildcards), picks and prints the seed. Call first in main(). */
void fab_test_init(int argc, char **argv);
fab_backend fab_test_backend(void);
const char *fab_test_backend_name(void);

/* A context for the test's backend. When that backend cannot run here (CUDA
 * without a GPU), the calling test is skipped with a message saying why. */
fab_context *fab_test_context(void);
fab_context *fab_test_context_with(const fab_context_config *cfg);

/* ---- random numbers (xoshiro256**, seeded per test for reproducibility) ---- */
void fab_test_reseed(uint64_t salt);
uint64_t fab_test_rand_u64(void);
double fab_test_uniform(double lo, double hi);
void fab_test_fill_uniform(double *v, int64_t n, double lo, double hi);

/* ---- buffers on the context's device ---- */
/* Rounds `values` to dtype, copies them to new memory of the context (fab_alloc)
 * and, when `rounded` is not NULL, writes the rounded values back there (the
 * inputs the reference must use). */
void *fab_test_upload(fab_context *ctx, fab_dtype dtype, const double *values, int64_t n, double *rounded);
/* New memory of the context filled with NaN (or 0xFF bytes for integer dtypes). */
void *fab_test_alloc_poisoned(fab_context *ctx, fab_dtype dtype, int64_t n);
/* Copies n elements back and converts them to double. */
void fab_test_download(fab_context *ctx, fab_dtype dtype, const void *dev, int64_t n, double *out);
/* Raw bytes back (for "nothing was written" checks). */
void fab_test_download_bytes(fab_context *ctx, const void *dev, size_t bytes, void *out);
void fab_test_free(fab_context *ctx, void *dev);

/* ---- comparison ---- */
typedef struct fab_tolerance {
    double atol, rtol; /* per element */
    double rel;        /* on the norm of the error */
} fab_tolerance;
/* Defaults per dtype: f32 1e-5, f16/bf16 1e-2 (DESIGN.md). */
fab_tolerance fab_test_tolerance(fab_dtype dtype);
/* Fails the running test (cmocka) with a message naming `what`, the first bad
 * element and the error norms, when out is not close to ref or holds NaN where
 * ref does not. */
void fab_test_check_close(const char *what, const double *out, const double *ref, int64_t n,
                          fab_tolerance tol);
/* The same, with each element's error measured against mag[i] >= |ref[i]|, the
 * size of the terms that were summed into it (as Σ|a·b| for a product): where
 * terms cancel, rounding error follows their size, not the small result's. The
 * norm check is then relative to ||mag||. mag = ref gives fab_test_check_close. */
void fab_test_check_close_mag(const char *what, const double *out, const double *ref, const double *mag, int64_t n,
                              fab_tolerance tol);

/* ---- gradient check ---- */
/* Checks analytic derivatives d[i] = d f_i / d x_i of an elementwise function
 * against central finite differences in float64: |d - fd| <= tol * (1 + |fd|). */
void fab_test_gradcheck_elementwise(const char *what, double (*f)(double x, const void *ctx),
                                    double (*df)(double x, const void *ctx), const void *fctx,
                                    const double *x, int64_t n, double tol);

/* ---- bad arguments ---- */
/* Asserts `got` == `want` and that fab_last_error() contains `needle`. */
#define fab_test_expect_error(got, want, needle) fab__test_expect_error((got), (want), (needle), __FILE__, __LINE__)
void fab__test_expect_error(fab_status got, fab_status want, const char *needle, const char *file, int line);

/* Runs the cmocka group with the backend's name in the group name. Its exit code:
 * the number of failed tests, or FAB_TEST_SKIP_EXIT when none failed but some were
 * skipped for want of a GPU, so ctest (SKIP_RETURN_CODE) reports "skipped", not
 * "passed". With FAB_TEST_REQUIRE_GPU=1 (tools/gpu-check.sh) a missing GPU fails. */
#define FAB_TEST_SKIP_EXIT 77
#define fab_test_run(tests) \
    fab_test_finish(_cmocka_run_group_tests(fab_test_group_name(#tests), tests, sizeof(tests) / sizeof((tests)[0]), NULL, NULL))
const char *fab_test_group_name(const char *base);
int fab_test_finish(int failures);

#endif
