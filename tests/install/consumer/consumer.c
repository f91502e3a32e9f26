/* A user's program: GELU of four numbers on whatever backend AUTO picks. */
#include <fabriek.h>
#include <math.h>
#include <stdio.h>

int main(void)
{
    fab_context *ctx;
    if (fab_context_create(NULL, &ctx) != FAB_OK) {
        fprintf(stderr, "context: %s\n", fab_last_error());
        return 1;
    }
    float host[4] = {-1.0f, 0.0f, 0.5f, 2.0f};
    void *dev;
    if (fab_alloc(ctx, sizeof host, &dev) != FAB_OK || fab_copy(ctx, dev, host, sizeof host) != FAB_OK)
        return 1;
    int64_t n = 4;
    fab_gelu_params p = {0};
    fab_tensor_make(dev, FAB_DTYPE_F32, 1, &n, &p.x);
    p.y = p.x; /* in place */
    if (fab_gelu_forward(ctx, &p) != FAB_OK || fab_copy(ctx, host, dev, sizeof host) != FAB_OK ||
        fab_synchronize(ctx) != FAB_OK) {
        fprintf(stderr, "gelu: %s\n", fab_last_error());
        return 1;
    }
    fab_free(ctx, dev);
    printf("fabriek %s on %s: gelu(2) = %.6f\n", fab_version(), fab_context_device_name(ctx), host[3]);
    fab_context_destroy(ctx);
    return fabsf(host[3] - 1.9544997f) < 1e-5f ? 0 : 1;
}
