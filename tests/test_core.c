/*
 * test_core.c: version, status, errors, tensors, contexts and memory helpers,
 * including every kind of bad argument to each of them.
 */
#include "harness.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INVALID FAB_ERR_INVALID_ARGUMENT

static void test_version_and_status(void **state)
{
    (void)state;
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", FAB_VERSION_MAJOR, FAB_VERSION_MINOR, FAB_VERSION_PATCH);
    assert_string_equal(fab_version(), want);
    assert_non_null(strstr(fab_build_info(), want));
    assert_non_null(strstr(fab_build_info(), "CUDA backend: "));
    assert_null(strstr(fab_build_info(), "unknown"));
    const char *seen[16];
    for (int s = 0; s <= FAB_ERR_INTERNAL; s++) {
        seen[s] = fab_status_name((fab_status)s);
        assert_non_null(strstr(seen[s], s == 0 ? "FAB_OK" : "FAB_ERR_"));
        for (int t = 0; t < s; t++)
            assert_string_not_equal(seen[s], seen[t]);
    }
    assert_string_equal(fab_status_name((fab_status)1234), "FAB_ERR_UNKNOWN");
}

static void *fail_in_thread(void *arg)
{
    (void)arg;
    fab_tensor t;
    fab_tensor_make(NULL, FAB_DTYPE_F32, -1, NULL, &t);
    return strstr(fab_last_error(), "ndim=-1") ? (void *)1 : NULL;
}

static void test_last_error_is_per_thread(void **state)
{
    (void)state;
    fab_tensor t;
    fab_test_expect_error(fab_tensor_make(NULL, (fab_dtype)42, 0, NULL, &t), INVALID, "dtype=42");
    pthread_t th;
    void *ok = NULL;
    assert_int_equal(pthread_create(&th, NULL, fail_in_thread, NULL), 0);
    assert_int_equal(pthread_join(th, &ok), 0);
    assert_ptr_equal(ok, (void *)1);
    assert_non_null(strstr(fab_last_error(), "dtype=42")); /* ours is untouched */
}

static void test_tensor_make(void **state)
{
    (void)state;
    float buf[24];
    int64_t shape[3] = {2, 3, 4};
    fab_tensor t;
    assert_int_equal(fab_tensor_make(buf, FAB_DTYPE_F32, 3, shape, &t), FAB_OK);
    assert_int_equal(t.stride[0], 12);
    assert_int_equal(t.stride[1], 4);
    assert_int_equal(t.stride[2], 1);
    assert_int_equal(fab_tensor_numel(&t), 24);
    assert_ptr_equal(t.data, buf);
    assert_int_equal(fab_tensor_make(buf, FAB_DTYPE_F32, 0, NULL, &t), FAB_OK); /* scalar */
    assert_int_equal(fab_tensor_numel(&t), 1);
    int64_t empty[2] = {0, 5};
    assert_int_equal(fab_tensor_make(NULL, FAB_DTYPE_BF16, 2, empty, &t), FAB_OK);
    assert_int_equal(fab_tensor_numel(&t), 0);
    assert_int_equal(fab_tensor_numel(NULL), 0);
    /* no element: 0 even where the other dims multiply past int64 (no overflow
     * on the way, which UBSan would report); a product past int64, or a negative
     * shape, in a hand-made tensor: -1 */
    fab_tensor raw;
    memset(&raw, 0, sizeof raw);
    raw.dtype = FAB_DTYPE_F32;
    raw.ndim = 3;
    raw.shape[0] = 6, raw.shape[1] = INT64_C(1) << 62, raw.shape[2] = 0;
    assert_int_equal(fab_tensor_numel(&raw), 0);
    raw.shape[2] = 1;
    assert_int_equal(fab_tensor_numel(&raw), -1);
    raw.shape[0] = -6;
    assert_int_equal(fab_tensor_numel(&raw), -1);
    /* a zero dim anywhere: the other dims may be as large as they like, before the
     * zero or after it, in fab_tensor_make and in a hand-made tensor an op checks */
    int64_t huge_empty[3][3] = {{0, INT64_C(1) << 32, INT64_C(1) << 32},
                                {INT64_C(1) << 32, INT64_C(1) << 32, 0},
                                {INT64_C(1) << 40, 0, INT64_C(1) << 40}};
    fab_context *ctx = fab_test_context();
    for (int i = 0; i < 3; i++) {
        fab_tensor e;
        if (fab_tensor_make(NULL, FAB_DTYPE_F32, 3, huge_empty[i], &e) != FAB_OK)
            fail_msg("fab_tensor_make of an empty tensor, case %d: %s", i, fab_last_error());
        assert_int_equal(fab_tensor_numel(&e), 0);
        fab_gelu_params g;
        memset(&g, 0, sizeof g);
        g.x = e;
        g.y = e;
        if (fab_gelu_forward(ctx, &g) != FAB_OK)
            fail_msg("fab_gelu_forward on an empty tensor, case %d: %s", i, fab_last_error());
    }
    fab_context_destroy(ctx);

    /* bad arguments leave *out untouched */
    fab_tensor keep;
    memset(&keep, 0x5a, sizeof keep);
    fab_tensor out = keep;
    fab_test_expect_error(fab_tensor_make(buf, FAB_DTYPE_F32, 3, shape, NULL), INVALID, "out is NULL");
    fab_test_expect_error(fab_tensor_make(buf, (fab_dtype)-3, 3, shape, &out), INVALID, "dtype=-3");
    fab_test_expect_error(fab_tensor_make(buf, FAB_DTYPE_F32, -1, shape, &out), INVALID, "ndim=-1");
    fab_test_expect_error(fab_tensor_make(buf, FAB_DTYPE_F32, 9, shape, &out), INVALID, "ndim=9");
    fab_test_expect_error(fab_tensor_make(buf, FAB_DTYPE_F32, 3, NULL, &out), INVALID, "shape is NULL");
    int64_t neg[3] = {2, -3, 4};
    fab_test_expect_error(fab_tensor_make(buf, FAB_DTYPE_F32, 3, neg, &out), INVALID, "shape[1]=-3");
    int64_t huge[3] = {INT64_MAX / 2, 4, 1};
    fab_test_expect_error(fab_tensor_make(buf, FAB_DTYPE_F32, 3, huge, &out), INVALID, "overflow");
    int64_t big_bytes[1] = {INT64_MAX / 2};
    fab_test_expect_error(fab_tensor_make(buf, FAB_DTYPE_F32, 1, big_bytes, &out), INVALID, "2^63 bytes");
    fab_test_expect_error(fab_tensor_make(NULL, FAB_DTYPE_F32, 3, shape, &out), INVALID, "tensor.data is NULL");
    fab_test_expect_error(fab_tensor_make((char *)buf + 2, FAB_DTYPE_F32, 3, shape, &out), INVALID, "not aligned");
    assert_memory_equal(&out, &keep, sizeof out);
}

static void test_context_config(void **state)
{
    (void)state;
    fab_context *ctx = (fab_context *)0x1;
    fab_context_config cfg;
    memset(&cfg, 0, sizeof cfg);
    fab_test_expect_error(fab_context_create(&cfg, NULL), INVALID, "out is NULL");
    cfg.backend = (fab_backend)7;
    fab_test_expect_error(fab_context_create(&cfg, &ctx), INVALID, "cfg.backend=7");
    assert_null(ctx);
    cfg.backend = FAB_BACKEND_CPU;
    cfg.device = -1;
    fab_test_expect_error(fab_context_create(&cfg, &ctx), INVALID, "cfg.device=-1");
    cfg.device = 0;
    cfg.num_threads = -2;
    fab_test_expect_error(fab_context_create(&cfg, &ctx), INVALID, "cfg.num_threads=-2");
    cfg.num_threads = 0;
    cfg.stream = (void *)0x1234;
    fab_test_expect_error(fab_context_create(&cfg, &ctx), INVALID, "cfg.stream");
    cfg.stream = NULL;
    cfg.num_threads = 3;
    assert_int_equal(fab_context_create(&cfg, &ctx), FAB_OK);
    assert_int_equal(fab_context_backend(ctx), FAB_BACKEND_CPU);
    assert_non_null(strstr(fab_context_device_name(ctx), "CPU: 3 threads"));
    assert_int_equal(fab_synchronize(ctx), FAB_OK);
    fab_context_destroy(ctx);
    fab_context_destroy(NULL);
    fab_test_expect_error(fab_synchronize(NULL), INVALID, "ctx is NULL");
    assert_int_equal(fab_context_backend(NULL), FAB_BACKEND_AUTO);
    assert_string_equal(fab_context_device_name(NULL), "");
}

/* AUTO picks CUDA exactly when an explicit CUDA request succeeds; without a GPU
 * the request fails cleanly with FAB_ERR_NO_DEVICE and a message. CI sets
 * FAB_TEST_EXPECT_NO_GPU=1 to require the latter. */
static void test_backend_selection(void **state)
{
    (void)state;
    fab_context_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.backend = FAB_BACKEND_CUDA;
    fab_context *cuda = NULL, *autoc = NULL;
    fab_status s = fab_context_create(&cfg, &cuda);
    const char *no_gpu = getenv("FAB_TEST_EXPECT_NO_GPU");
    if (no_gpu && strcmp(no_gpu, "1") == 0)
        assert_int_equal(s, FAB_ERR_NO_DEVICE);
    if (s != FAB_OK) {
        fab_test_expect_error(s, FAB_ERR_NO_DEVICE, NULL);
        assert_true(strlen(fab_last_error()) > 10);
        assert_null(cuda);
        print_message("CUDA unavailable, as reported: %s\n", fab_last_error());
    }
    assert_int_equal(fab_context_create(NULL, &autoc), FAB_OK);
    assert_int_equal(fab_context_backend(autoc), s == FAB_OK ? FAB_BACKEND_CUDA : FAB_BACKEND_CPU);
    if (s == FAB_OK) {
        cfg.device = 4096;
        fab_context *none = NULL;
        fab_test_expect_error(fab_context_create(&cfg, &none), FAB_ERR_NO_DEVICE, "cfg.device=4096");
    }
    fab_context_destroy(autoc);
    fab_context_destroy(cuda);
}

static void test_memory(void **state)
{
    (void)state;
    fab_context *ctx = fab_test_context();
    void *p = (void *)0x1;
    fab_test_expect_error(fab_alloc(ctx, 16, NULL), INVALID, "ptr is NULL");
    fab_test_expect_error(fab_alloc(NULL, 16, &p), INVALID, "ctx is NULL");
    assert_null(p);
    fab_test_expect_error(fab_alloc(ctx, 0, &p), INVALID, "bytes must be > 0");
    fab_test_expect_error(fab_alloc(ctx, SIZE_MAX, &p), FAB_ERR_OUT_OF_MEMORY, NULL);
    assert_null(p);
    assert_int_equal(fab_free(ctx, NULL), FAB_OK);
    fab_test_expect_error(fab_free(NULL, p), INVALID, "ctx is NULL");

    enum { N = 1000 };
    unsigned char host[N], back[N];
    for (int i = 0; i < N; i++)
        host[i] = (unsigned char)(i * 7 + 3);
    void *a = NULL, *b = NULL;
    assert_int_equal(fab_alloc(ctx, N, &a), FAB_OK);
    assert_int_equal(fab_alloc(ctx, N, &b), FAB_OK);
    assert_int_equal((uintptr_t)a % 256, 0);
    assert_int_equal(fab_copy(ctx, a, host, N), FAB_OK);
    assert_int_equal(fab_copy(ctx, b, a, N), FAB_OK); /* device to device */
    memset(back, 0, N);
    assert_int_equal(fab_copy(ctx, back, b, N), FAB_OK);
    assert_int_equal(fab_synchronize(ctx), FAB_OK);
    assert_memory_equal(back, host, N);
    assert_int_equal(fab_copy(ctx, back, b, 0), FAB_OK);
    fab_test_expect_error(fab_copy(NULL, back, b, N), INVALID, "ctx is NULL");
    fab_test_expect_error(fab_copy(ctx, NULL, b, N), INVALID, "dst is NULL");
    fab_test_expect_error(fab_copy(ctx, back, NULL, N), INVALID, "src is NULL");
    fab_test_expect_error(fab_copy(ctx, (char *)a + 10, a, 100), INVALID, "overlap");
    assert_int_equal(fab_free(ctx, a), FAB_OK);
    assert_int_equal(fab_free(ctx, b), FAB_OK);
    fab_context_destroy(ctx);
}

int main(int argc, char **argv)
{
    fab_test_init(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version_and_status),
        cmocka_unit_test(test_last_error_is_per_thread),
        cmocka_unit_test(test_tensor_make),
        cmocka_unit_test(test_context_config),
        cmocka_unit_test(test_backend_selection),
        cmocka_unit_test(test_memory),
    };
    return fab_test_run(tests);
}
