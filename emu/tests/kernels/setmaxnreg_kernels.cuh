/*
 * setmaxnreg_kernels.cuh -- test kernel for setmaxnreg (test_setmaxnreg.cu; also built
 * by nvcc for sm_90a).
 *
 * k_setmaxnreg: 3 warpgroups, as a warp-specialised kernel: warpgroup 0 (the
 * producer) gives registers back, 1 and 2 (the consumers) take them, then every
 * thread writes out[i] = 3 i + 1, which the host checks.  The producer may first
 * sleep `delay` times (each a yield under the emulator), so the consumers' .inc
 * must wait for its .dec.  The other
 * modes (emulator only) are misuses the emulator must report.
 */
#ifndef FAB_EMU_TEST_SETMAXNREG_KERNELS_CUH
#define FAB_EMU_TEST_SETMAXNREG_KERNELS_CUH

#include "../../../kernels/common/ptx.cuh"

enum SmrMode {
    SMR_OK = 0,            /* producer 24, consumers 240: 128 (24 + 2 x 240) = 64512 = 384 x 168 */
    SMR_TOO_MANY = 1,      /* consumers 248: the pool never has enough (deadlock) */
    SMR_ODD_COUNT = 2,     /* 244 is not a multiple of 8 */
    SMR_HALF_GROUP = 3,    /* one consumer warp skips the .inc */
    SMR_INC_LOWERS = 4,    /* .inc to 160 from 168 */
    SMR_PARTIAL_WARP = 5,  /* lanes 16..31 of the producer warps leave before the .dec */
};

__global__ void __launch_bounds__(384, 1) k_setmaxnreg(int mode, int delay, int *out)
{
    const int i = threadIdx.x;
    if (i < 128) {
        for (int d = 0; d < delay; d++)
            __nanosleep(100); /* under the emulator a yield: the consumers reach their .inc first */
#ifdef FAB_EMULATE_CUDA
        if (mode == SMR_PARTIAL_WARP && i % 32 >= 16)
            return;
#endif
        fab__setmaxnreg_dec<24>();
        out[i] = 3 * i + 1;
        return;
    }
#ifdef FAB_EMULATE_CUDA
    if (mode == SMR_TOO_MANY)
        ::fab_emu::setmaxnreg(248, true);
    else if (mode == SMR_ODD_COUNT)
        ::fab_emu::setmaxnreg(244, true);
    else if (mode == SMR_HALF_GROUP && i / 32 == 5)
        ;
    else if (mode == SMR_INC_LOWERS)
        ::fab_emu::setmaxnreg(160, true);
    else
#endif
        fab__setmaxnreg_inc<240>();
    out[i] = 3 * i + 1;
}

#endif
