/*
 * cuda_absent.c: the CUDA glue of a library built without a CUDA backend
 * (-DFAB_ENABLE_CUDA=OFF, or no nvcc found). Asking for CUDA says so; nothing
 * else here can be reached, because no CUDA context can exist.
 */
#include "../runtime.h"

static fab_status absent(void)
{
    return fab__fail(FAB_ERR_NO_DEVICE, "this fabriek was built without the CUDA backend (FAB_ENABLE_CUDA=OFF)");
}

bool fab__cuda_compiled(void) { return false; }
fab_status fab__cuda_usable(int device) { (void)device; return absent(); }
fab_status fab__cuda_context_init(fab_context *ctx, void *stream) { (void)ctx; (void)stream; return absent(); }
void fab__cuda_context_release(fab_context *ctx) { (void)ctx; }
fab_status fab__cuda_synchronize(fab_context *ctx) { (void)ctx; return absent(); }
fab_status fab__cuda_alloc(fab_context *ctx, size_t bytes, void **ptr) { (void)ctx; (void)bytes; (void)ptr; return absent(); }
fab_status fab__cuda_free(fab_context *ctx, void *ptr) { (void)ctx; (void)ptr; return absent(); }
fab_status fab__cuda_copy(fab_context *ctx, void *dst, const void *src, size_t bytes)
{
    (void)ctx; (void)dst; (void)src; (void)bytes;
    return absent();
}
fab_status fab__cuda_check_device_pointer(fab_context *ctx, const char *op, const char *name, const void *ptr)
{
    (void)ctx; (void)op; (void)name; (void)ptr;
    return absent();
}
fab_status fab__cuda_check_launch(const char *op) { (void)op; return absent(); }
