/*
 * test_setmaxnreg.cu -- setmaxnreg between warpgroups.
 *
 * k_setmaxnreg moves registers from a producer warpgroup to two consumer
 * warpgroups; every thread must then run to its store, with and without the
 * producer's .dec coming late.  Under the emulator the misuses must be reported:
 * asking for more than the block's pool (a hang on the GPU), a count that is not a
 * multiple of 8, a warpgroup whose warps disagree, an .inc that lowers the count, a
 * warp with lanes gone.
 *
 * Built twice: under the emulator (label emu), and by nvcc for sm_90a (label gpu),
 * where the good case runs on the hardware.
 */
#include <vector>

#include "emu_test.h"
#include "kernels/setmaxnreg_kernels.cuh"

static cudaError_t run(int mode, int delay, bool check)
{
    int *d_out = device_alloc<int>(384);
    cudaMemset(d_out, 0, 384 * sizeof(int));
    cudaError_t e = launch(k_setmaxnreg, dim3(2), dim3(384), 0, mode, delay, d_out);
    if (e == cudaSuccess)
        e = cudaDeviceSynchronize();
    if (e == cudaSuccess && check) {
        std::vector<int> out(384);
        cudaMemcpy(out.data(), d_out, 384 * sizeof(int), cudaMemcpyDeviceToHost);
        int bad = 0;
        for (int i = 0; i < 384; ++i)
            bad += out[i] != 3 * i + 1;
        CHECK(bad == 0, "mode %d delay %d: %d threads did not store", mode, delay, bad);
    }
    cudaFree(d_out);
    return e;
}

int main()
{
    if (int skip = emu_test_skip_unless_sm90("setmaxnreg"))
        return skip;
    CHECK_CUDA(run(SMR_OK, 0, true));
    CHECK_CUDA(run(SMR_OK, 50, true));
#ifdef FAB_EMULATE_CUDA
    int old = fab_emu_set_error_mode(1);
    struct {
        int mode;
        const char *says;
    } misuse[] = {{SMR_TOO_MANY, "deadlock"},
                  {SMR_ODD_COUNT, "multiple of 8"},
                  {SMR_HALF_GROUP, "different sequences"},
                  {SMR_INC_LOWERS, "may not lower"},
                  {SMR_PARTIAL_WARP, ".sync.aligned"}};
    for (auto &m : misuse) {
        cudaError_t e = run(m.mode, 0, false);
        CHECK(e != cudaSuccess && strstr(fab_emu_last_message(), m.says), "mode %d: %s (wanted \"%s\")", m.mode,
              e == cudaSuccess ? "not reported" : fab_emu_last_message(), m.says);
        cudaGetLastError();
    }
    fab_emu_set_error_mode(old);
#endif
    return emu_test_finish();
}
