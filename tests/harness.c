/* harness.c: see harness.h. */
#include "harness.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static fab_backend backend = FAB_BACKEND_CPU;
static bool skipped_no_device; /* a test skipped for want of a GPU */
static uint64_t base_seed;
static uint64_t rng[4];

/* The variant runs of tests/CMakeLists.txt (matmul_no_amx_cpu, attention_no_amx_cpu,
 * attention_avx2_cpu) turn a CPU path off through the environment. On a CPU without
 * that path they would repeat the default run, minutes under the sanitizers, so
 * they name the path in FAB_TEST_SKIP_WITHOUT ("amx-bf16", "avx512f") and exit as
 * skipped (ctest's SKIP_RETURN_CODE), saying why, where the device name of a CPU
 * context does not list it. */
static void skip_repeated_variant(void)
{
    const char *path = getenv("FAB_TEST_SKIP_WITHOUT");
    if (!path || !path[0] || backend != FAB_BACKEND_CPU)
        return;
    fab_context_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.backend = FAB_BACKEND_CPU;
    cfg.num_threads = 1;
    fab_context *ctx = NULL;
    if (fab_context_create(&cfg, &ctx) != FAB_OK)
        return; /* the tests themselves report it */
    char name[256];
    snprintf(name, sizeof name, "%s", fab_context_device_name(ctx));
    fab_context_destroy(ctx);
    if (!strstr(name, path)) {
        printf("# SKIP: this run turns off the %s path, which this CPU (%s) does not have: it would repeat the "
               "default run\n",
               path, name);
        exit(FAB_TEST_SKIP_EXIT);
    }
}

void fab_test_init(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc) {
            const char *b = argv[++i];
            if (strcmp(b, "cpu") == 0) {
                backend = FAB_BACKEND_CPU;
            } else if (strcmp(b, "cuda") == 0) {
                backend = FAB_BACKEND_CUDA;
            } else {
                fprintf(stderr, "unknown backend '%s' (cpu, cuda)\n", b);
                exit(2);
            }
        } else if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc) {
            cmocka_set_test_filter(argv[++i]); /* test names, '*' and '?' wildcards */
        }
    }
    skip_repeated_variant();
    const char *env = getenv("FAB_TEST_SEED");
    base_seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL);
    printf("# backend %s, seed %llu (replay with FAB_TEST_SEED=%llu)\n", fab_test_backend_name(),
           (unsigned long long)base_seed, (unsigned long long)base_seed);
    fab_test_reseed(0);
}

fab_backend fab_test_backend(void) { return backend; }
const char *fab_test_backend_name(void) { return backend == FAB_BACKEND_CUDA ? "cuda" : "cpu"; }

int fab_test_finish(int failures)
{
    if (failures == 0 && skipped_no_device)
        return FAB_TEST_SKIP_EXIT;
    return failures;
}

const char *fab_test_group_name(const char *base)
{
    static char name[128];
    snprintf(name, sizeof name, "%s[%s]", base, fab_test_backend_name());
    return name;
}

fab_context *fab_test_context_with(const fab_context_config *cfg)
{
    fab_context_config c;
    memset(&c, 0, sizeof c);
    if (cfg)
        c = *cfg;
    c.backend = backend;
    fab_context *ctx = NULL;
    fab_status s = fab_context_create(&c, &ctx);
    if (s == FAB_ERR_NO_DEVICE && backend == FAB_BACKEND_CUDA) {
        const char *require = getenv("FAB_TEST_REQUIRE_GPU");
        if (require && strcmp(require, "1") == 0)
            fail_msg("FAB_TEST_REQUIRE_GPU=1 but the CUDA backend cannot run: %s", fab_last_error());
        print_message("SKIP: the CUDA backend cannot run here: %s\n", fab_last_error());
        skipped_no_device = true;
        skip();
    }
    if (s != FAB_OK)
        fail_msg("fab_context_create(%s): %s: %s", fab_test_backend_name(), fab_status_name(s), fab_last_error());
    return ctx;
}

fab_context *fab_test_context(void) { return fab_test_context_with(NULL); }

/* ------------------------------------------------------------------ random */

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void fab_test_reseed(uint64_t salt)
{
    uint64_t s = base_seed ^ (salt * 0x2545f4914f6cdd1dull);
    for (int i = 0; i < 4; i++)
        rng[i] = splitmix(&s);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t fab_test_rand_u64(void)
{
    uint64_t r = rotl(rng[1] * 5, 7) * 9, t = rng[1] << 17;
    rng[2] ^= rng[0];
    rng[3] ^= rng[1];
    rng[1] ^= rng[2];
    rng[0] ^= rng[3];
    rng[2] ^= t;
    rng[3] = rotl(rng[3], 45);
    return r;
}

double fab_test_uniform(double lo, double hi)
{
    return lo + (hi - lo) * (double)(fab_test_rand_u64() >> 11) * 0x1.0p-53;
}

void fab_test_fill_uniform(double *v, int64_t n, double lo, double hi)
{
    for (int64_t i = 0; i < n; i++)
        v[i] = fab_test_uniform(lo, hi);
}

/* ----------------------------------------------------------------- buffers */

static void to_dtype(fab_dtype dtype, const double *v, int64_t n, void *out, double *rounded)
{
    for (int64_t i = 0; i < n; i++) {
        double r = v[i];
        switch (dtype) {
        case FAB_DTYPE_F32: ((float *)out)[i] = (float)v[i]; r = ((float *)out)[i]; break;
        case FAB_DTYPE_F16: ((uint16_t *)out)[i] = fab_f32_to_f16((float)v[i]); r = fab_f16_to_f32(((uint16_t *)out)[i]); break;
        case FAB_DTYPE_BF16: ((uint16_t *)out)[i] = fab_f32_to_bf16((float)v[i]); r = fab_bf16_to_f32(((uint16_t *)out)[i]); break;
        case FAB_DTYPE_F8_E4M3: ((uint8_t *)out)[i] = fab_f32_to_f8_e4m3((float)v[i], 1); r = fab_f8_e4m3_to_f32(((uint8_t *)out)[i]); break;
        case FAB_DTYPE_F8_E5M2: ((uint8_t *)out)[i] = fab_f32_to_f8_e5m2((float)v[i], 1); r = fab_f8_e5m2_to_f32(((uint8_t *)out)[i]); break;
        case FAB_DTYPE_I32: ((int32_t *)out)[i] = (int32_t)v[i]; r = ((int32_t *)out)[i]; break;
        case FAB_DTYPE_I64: ((int64_t *)out)[i] = (int64_t)v[i]; r = (double)((int64_t *)out)[i]; break;
        case FAB_DTYPE_F64: ((double *)out)[i] = v[i]; break;
        default: fail_msg("to_dtype: bad dtype %d", (int)dtype);
        }
        if (rounded)
            rounded[i] = r;
    }
}

static double from_dtype(fab_dtype dtype, const void *p, int64_t i)
{
    switch (dtype) {
    case FAB_DTYPE_F32: return ((const float *)p)[i];
    case FAB_DTYPE_F16: return fab_f16_to_f32(((const uint16_t *)p)[i]);
    case FAB_DTYPE_BF16: return fab_bf16_to_f32(((const uint16_t *)p)[i]);
    case FAB_DTYPE_F8_E4M3: return fab_f8_e4m3_to_f32(((const uint8_t *)p)[i]);
    case FAB_DTYPE_F8_E5M2: return fab_f8_e5m2_to_f32(((const uint8_t *)p)[i]);
    case FAB_DTYPE_I32: return ((const int32_t *)p)[i];
    case FAB_DTYPE_I64: return (double)((const int64_t *)p)[i];
    case FAB_DTYPE_F64: return ((const double *)p)[i];
    default: fail_msg("from_dtype: bad dtype %d", (int)dtype);
    }
    return 0;
}

static void *dev_alloc(fab_context *ctx, size_t bytes)
{
    void *p = NULL;
    fab_status s = fab_alloc(ctx, bytes ? bytes : 1, &p);
    if (s != FAB_OK)
        fail_msg("fab_alloc(%zu): %s", bytes, fab_last_error());
    return p;
}

static void copy_checked(fab_context *ctx, void *dst, const void *src, size_t bytes)
{
    fab_status s = fab_copy(ctx, dst, src, bytes);
    if (s == FAB_OK)
        s = fab_synchronize(ctx);
    if (s != FAB_OK)
        fail_msg("fab_copy: %s", fab_last_error());
}

void *fab_test_upload(fab_context *ctx, fab_dtype dtype, const double *values, int64_t n, double *rounded)
{
    size_t bytes = (size_t)n * fab_dtype_size(dtype);
    void *host = malloc(bytes ? bytes : 1);
    assert_non_null(host);
    to_dtype(dtype, values, n, host, rounded);
    void *dev = dev_alloc(ctx, bytes);
    copy_checked(ctx, dev, host, bytes);
    free(host);
    return dev;
}

void *fab_test_alloc_poisoned(fab_context *ctx, fab_dtype dtype, int64_t n)
{
    size_t bytes = (size_t)n * fab_dtype_size(dtype);
    void *host = malloc(bytes ? bytes : 1);
    assert_non_null(host);
    if (dtype == FAB_DTYPE_I32 || dtype == FAB_DTYPE_I64) {
        memset(host, 0xff, bytes);
    } else {
        double *nans = malloc((size_t)(n ? n : 1) * sizeof(double));
        assert_non_null(nans);
        for (int64_t i = 0; i < n; i++)
            nans[i] = NAN;
        to_dtype(dtype, nans, n, host, NULL);
        free(nans);
    }
    void *dev = dev_alloc(ctx, bytes);
    copy_checked(ctx, dev, host, bytes);
    free(host);
    return dev;
}

void fab_test_download_bytes(fab_context *ctx, const void *dev, size_t bytes, void *out)
{
    copy_checked(ctx, out, dev, bytes);
}

void fab_test_download(fab_context *ctx, fab_dtype dtype, const void *dev, int64_t n, double *out)
{
    size_t bytes = (size_t)n * fab_dtype_size(dtype);
    void *host = malloc(bytes ? bytes : 1);
    assert_non_null(host);
    copy_checked(ctx, host, dev, bytes);
    for (int64_t i = 0; i < n; i++)
        out[i] = from_dtype(dtype, host, i);
    free(host);
}

void fab_test_free(fab_context *ctx, void *dev)
{
    fab_status s = fab_free(ctx, dev);
    if (s != FAB_OK)
        fail_msg("fab_free: %s", fab_last_error());
}

/* -------------------------------------------------------------- comparison */

fab_tolerance fab_test_tolerance(fab_dtype dtype)
{
    fab_tolerance t;
    switch (dtype) {
    case FAB_DTYPE_F64: t.atol = 1e-12; t.rtol = 1e-10; t.rel = 1e-12; break;
    case FAB_DTYPE_F32: t.atol = 1e-5; t.rtol = 1e-5; t.rel = 1e-5; break;
    case FAB_DTYPE_F16: t.atol = 1e-3; t.rtol = 1e-2; t.rel = 1e-2; break;
    case FAB_DTYPE_BF16: t.atol = 1e-3; t.rtol = 1e-2; t.rel = 1e-2; break;
    default: t.atol = 1e-1; t.rtol = 1.5e-1; t.rel = 1e-1; break; /* fp8 */
    }
    return t;
}

void fab_test_check_close(const char *what, const double *out, const double *ref, int64_t n, fab_tolerance tol)
{
    fab_test_check_close_mag(what, out, ref, ref, n, tol);
}

void fab_test_check_close_mag(const char *what, const double *out, const double *ref, const double *mag, int64_t n,
                              fab_tolerance tol)
{
    double err2 = 0, ref2 = 0;
    int64_t bad = -1, nbad = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = out[i] - ref[i];
        bool ok = isnan(ref[i]) ? isnan(out[i]) : (!isnan(out[i]) && fabs(d) <= tol.atol + tol.rtol * fabs(mag[i]));
        if (!ok) {
            nbad++;
            if (bad < 0)
                bad = i;
        }
        if (!isnan(d)) {
            err2 += d * d;
            ref2 += mag[i] * mag[i];
        }
    }
    /* the norm of ref, floored at atol per element, so an all-tiny ref does not
     * turn rounding noise into a large relative error */
    double scale = fmax(sqrt(ref2), tol.atol * sqrt((double)n));
    double rel = scale > 0 ? sqrt(err2) / scale : 0;
    if (nbad > 0)
        fail_msg("%s: %lld of %lld elements off; first at [%lld]: got %.9g, want %.9g (atol %g, rtol %g); "
                 "relative error %.3g",
                 what, (long long)nbad, (long long)n, (long long)bad, out[bad], ref[bad], tol.atol, tol.rtol, rel);
    if (rel > tol.rel)
        fail_msg("%s: relative error %.3g > %.3g", what, rel, tol.rel);
}

void fab_test_gradcheck_elementwise(const char *what, double (*f)(double, const void *),
                                    double (*df)(double, const void *), const void *fctx,
                                    const double *x, int64_t n, double tol)
{
    for (int64_t i = 0; i < n; i++) {
        double h = 1e-5 * (1 + fabs(x[i]));
        double fd = (f(x[i] + h, fctx) - f(x[i] - h, fctx)) / (2 * h);
        double an = df(x[i], fctx);
        if (!(fabs(an - fd) <= tol * (1 + fabs(fd))))
            fail_msg("%s: gradient at x=%.17g: analytic %.17g, finite difference %.17g", what, x[i], an, fd);
    }
}

void fab__test_expect_error(fab_status got, fab_status want, const char *needle, const char *file, int line)
{
    if (got != want)
        fail_msg("%s:%d: status %s, want %s (message: \"%s\")", file, line, fab_status_name(got),
                 fab_status_name(want), fab_last_error());
    if (needle && !strstr(fab_last_error(), needle))
        fail_msg("%s:%d: message \"%s\" does not mention \"%s\"", file, line, fab_last_error(), needle);
}
