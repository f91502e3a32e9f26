/*
 * fab_emu.h -- control API of the fabriek SIMT emulator (C11 and C++).
 *
 * Tests use it to configure the virtual device, switch on the race check, and
 * make emulator-detected kernel errors return an error code instead of
 * aborting.  Every setting also has an environment variable so that existing
 * test binaries can be run under a different mode without recompiling:
 *
 *   FAB_EMU_DEVICE=h100|a100   virtual device preset (default h100)
 *   FAB_EMU_THREADS=N          OS worker threads that run blocks (default: cores, max 8)
 *   FAB_EMU_RACECHECK=1        run every launch under two schedules and compare
 *   FAB_EMU_ERRORS=abort|return  what a detected kernel error does (default abort)
 *   FAB_EMU_STACK_KB=N         fiber stack size per emulated thread
 *
 * See docs/EMULATOR.md.
 */
#ifndef FAB_EMU_H
#define FAB_EMU_H

#include "cuda_runtime_api.h"

/* The control API stays visible from a shared library built with hidden symbols
 * (libfabriek.so in an emulated build), so that its tests can reach the one
 * emulator that runs its kernels. */
#define FAB_EMU_API __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

/* Replace the virtual device's properties (device 0).  Returns cudaErrorInvalidValue
 * for impossible values (warpSize != 32, zero SMs, ...). */
FAB_EMU_API cudaError_t fab_emu_set_device_props(const struct cudaDeviceProp *prop);
/* Load a preset: "h100" (sm_90, 132 SMs, 227 KB opt-in smem) or "a100" (sm_80, 108 SMs, 163 KB). */
FAB_EMU_API cudaError_t fab_emu_set_device_preset(const char *name);
/* The virtual device's SM count (n >= 1; another n only reads it). Returns the
 * previous count. A persistent kernel sizes its grid by it: a few SMs make each
 * block take several tiles. Contexts read it when created. */
FAB_EMU_API int fab_emu_set_sm_count(int n);

/* Race check: 1 = every launch runs twice (forward and reverse thread/block order, cp.async
 * copies immediate vs deferred to the wait) from the same snapshot of device memory, and
 * the two results are compared byte for byte.  0 = off.  Returns the previous setting. */
FAB_EMU_API int fab_emu_set_racecheck(int on);
/* Number of launches the race check has reported since the process started (both the
 * schedule comparison and the shared-memory race detector count). */
FAB_EMU_API unsigned long fab_emu_race_reports(void);
/* Shared-memory race detector: 1 = check every shared-memory access made through the
 * PTX wrappers (cp.async, ldmatrix, stmatrix) for a conflicting access by another thread
 * not ordered by a barrier / __syncwarp / cp.async.wait_group (default: on; also
 * FAB_EMU_SMEMCHECK=0/1), in every run of the race check too.  Returns the previous
 * setting. */
FAB_EMU_API int fab_emu_set_smemcheck(int on);

/* Error mode: 0 = abort the process with a message on stderr (default, good under gdb);
 * 1 = stop the launch, print the message, and return cudaErrorLaunchFailure from the
 * launch (and cudaGetLastError).  Returns the previous mode. */
FAB_EMU_API int fab_emu_set_error_mode(int return_errors);
/* The last emulator error or race report message of this process ("" if none). */
FAB_EMU_API const char *fab_emu_last_message(void);
/* Bytes of redzone after each allocation (docs/EMULATOR.md, "Errors it reports"): a
 * launch that stored there fails with cudaErrorIllegalAddress. 0 under ASan, which
 * reports such stores itself. */
FAB_EMU_API int fab_emu_redzone_bytes(void);

/* Number of OS worker threads used to run blocks (>= 1).  Returns the previous value. */
FAB_EMU_API int fab_emu_set_threads(int n);

/* Counters of emulated work since the process started (for rate measurements). */
struct fab_emu_stats {
    unsigned long long launches;
    unsigned long long blocks;
    unsigned long long threads;
    unsigned long long mma;          /* warp-wide mma.sync instructions */
    unsigned long long ldmatrix;     /* warp-wide ldmatrix/stmatrix instructions */
    unsigned long long cp_async;     /* per-thread cp.async copies */
    unsigned long long collectives;  /* warp collectives (shfl, vote, syncwarp, mma, ...) */
    unsigned long long barriers;     /* completed block barriers */
    unsigned long long float_atomics; /* per-thread float atomic adds (atomicAdd, red.add.v2/v4.f32: one each) */
    /* Shared-memory banks (docs/EMULATOR.md, "Bank conflicts"): warp-wide ldmatrix,
     * stmatrix, cp.async and fab__ld_shared / fab__st_shared instructions modelled, the
     * wavefronts they take, and the wavefronts beyond the conflict-free ideal.  Bare C++
     * shared loads and stores are not seen. */
    unsigned long long smem_requests;
    unsigned long long smem_wavefronts;
    unsigned long long smem_bank_conflicts;
    unsigned long long wgmma;        /* warp-wide wgmma.mma_async operations computed (4 per warpgroup instruction) */
};
FAB_EMU_API void fab_emu_get_stats(struct fab_emu_stats *out);
/* The last bank conflict counted, described: instruction, kernel, block, warp, the
 * rows or lanes involved ("" if none since the process started).  The string stays
 * valid until this thread calls it again. */
FAB_EMU_API const char *fab_emu_bank_conflict_example(void);

#ifdef __cplusplus
}
#endif

#endif /* FAB_EMU_H */
