/*
 * tma_host.cuh: host side of TMA for the Hopper kernels: the driver's
 * cuTensorMapEncodeTiled (through cudaGetDriverEntryPointByVersion: nothing links
 * libcuda), and the encoding of a tensor of 16-bit values in up to 5 dimensions
 * in swizzled boxes whose rows are one swizzle row (64 elements at 128 bytes, 32 at
 * 64) x box_rows. Include after ptx.cuh.
 */
#ifndef FAB_KERNELS_COMMON_TMA_HOST_CUH
#define FAB_KERNELS_COMMON_TMA_HOST_CUH

typedef CUresult (*fab__encode_tiled_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                         const cuuint64_t *, const cuuint32_t *, const cuuint32_t *,
                                         CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion,
                                         CUtensorMapFloatOOBfill);

/* The driver's cuTensorMapEncodeTiled, looked up once per file that includes this
 * (null if the driver lacks it; a race costs a second lookup). */
static fab__encode_tiled_fn fab__tma_encoder(void)
{
    static fab__encode_tiled_fn fn;
    static bool looked;
    if (!looked) {
        void *p = NULL;
        cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) ==
                cudaSuccess &&
            q == cudaDriverEntryPointSuccess)
            fn = (fab__encode_tiled_fn)p;
        looked = true;
    }
    return fn;
}

/* A map of `rank` (2..5) dimensions: dims[0] the contiguous one, strides[i] the
 * element stride of dimension i + 1 (one of a dimension of size 1 is never used:
 * any valid value is put there). A swizzle of swizzle_bytes (128 or 64), boxes of
 * swizzle_bytes / 2 x box_rows x 1 x ..., zero fill. False if the driver refuses
 * (or is missing). */
static bool fab__tma_encode_16bit(CUtensorMap *map, const void *base, bool bf16, int rank, const int64_t *dims,
                                  const int64_t *strides, int box_rows, int swizzle_bytes = 128)
{
    fab__encode_tiled_fn enc = fab__tma_encoder();
    if (!enc || (swizzle_bytes != 128 && swizzle_bytes != 64))
        return false;
    cuuint64_t d[5], s[4];
    cuuint32_t box[5], estr[5];
    int64_t valid = (dims[0] * 2 + 15) / 16 * 16; /* a stride for unused dimensions */
    for (int i = 0; i < rank; i++) {
        d[i] = (cuuint64_t)dims[i];
        box[i] = i == 0 ? (cuuint32_t)swizzle_bytes / 2 : i == 1 ? (cuuint32_t)box_rows : 1;
        estr[i] = 1;
        if (i > 0) {
            if (dims[i] > 1)
                valid = strides[i - 1] * 2;
            s[i - 1] = (cuuint64_t)(dims[i] > 1 ? strides[i - 1] * 2 : valid);
        }
    }
    return enc(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, (cuuint32_t)rank,
               const_cast<void *>(base), d, s, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
               swizzle_bytes == 64 ? CU_TENSOR_MAP_SWIZZLE_64B : CU_TENSOR_MAP_SWIZZLE_128B,
               CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/* Whether `kernel`, which splits its registers between warpgroups with setmaxnreg,
 * was given the `need` registers it splits (per block). setmaxnreg.inc waits until
 * the block's pool -- ptxas's count per thread times the block's threads, fixed at
 * launch -- holds what it asks for, so with fewer (another toolchain, a
 * -maxrregcount) the kernel would hang where it should fail. Today ptxas gives the
 * launch bounds' cap, 168 at 384 threads, and the splits use exactly that. Asks
 * the runtime once (*cache: -1 unknown, then 0 or 1) and says so once on stderr
 * when the answer is no: the caller then runs its sm80 kernel. Emulated: yes (the
 * emulator's pool is that cap, emu/src/setmaxnreg.cpp). */
static bool fab__setmaxnreg_pool_ok(const void *kernel, const char *name, int threads, int need, signed char *cache)
{
#ifdef FAB_EMULATE_CUDA
    (void)kernel, (void)name, (void)threads, (void)need, (void)cache;
    return true;
#else
    if (*cache < 0) { /* a race costs a second query, and at worst a second line */
        cudaFuncAttributes fa;
        const bool known = cudaFuncGetAttributes(&fa, kernel) == cudaSuccess;
        if (!known)
            (void)cudaGetLastError();
        *cache = known && fa.numRegs * threads >= need;
        if (!*cache)
            fprintf(stderr,
                    "fabriek: %s has %d registers a thread, %d in a block of %d threads, fewer than the %d its "
                    "setmaxnreg split needs; the sm80 kernel runs instead\n",
                    name, known ? fa.numRegs : -1, known ? fa.numRegs * threads : -1, threads, need);
    }
    return *cache == 1;
#endif
}

/* FAB__SM90A_PROBE(flag, fn): a device int `flag`, 1 in the code compiled for
 * sm_90a and 0 in any other (sm_80 code JIT-compiled on an H100, or plain sm_90,
 * where the wgmma wrappers trap), and `static bool fn(void)` reading it once: whether
 * the code the device runs for this file is sm_90a's. Always true emulated. */
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FAB__SM90A_CODE 1
#else
#define FAB__SM90A_CODE 0
#endif

/* FAB__SM90A_BODY: whether this pass compiles the body of an sm_90a-only kernel
 * (TMA, wgmma, setmaxnreg): the sm_90a device pass and the emulator. Each such kernel
 * wraps its body in `#if FAB__SM90A_BODY ... #else __trap(); #endif`. The other passes
 * (sm_80, sm_100a, the host) need only its signature: the launchers run it only where
 * FAB__SM90A_PROBE finds sm_90a code, and elsewhere its first wgmma would trap anyway.
 * This keeps cicc and ptxas from optimising dead bodies, about 35 s per file and
 * target on a 2-core build machine. */
#if defined(FAB_EMULATE_CUDA) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FAB__SM90A_BODY 1
#else
#define FAB__SM90A_BODY 0
#endif
#ifdef FAB_EMULATE_CUDA
#define FAB__SM90A_PROBE(flag, fn) \
    static bool fn(void) { return true; }
#else
#define FAB__SM90A_PROBE(flag, fn)                                                                        \
    __device__ int flag = FAB__SM90A_CODE;                                                                \
    static bool fn(void)                                                                                  \
    {                                                                                                     \
        static int have = -1; /* a race costs a second read */                                           \
        if (have < 0) {                                                                                   \
            int v = 0;                                                                                    \
            have = cudaMemcpyFromSymbol(&v, flag, sizeof v) == cudaSuccess && v == 1;                     \
        }                                                                                                 \
        return have == 1;                                                                                 \
    }
#endif

#endif
