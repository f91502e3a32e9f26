/* matmul_amx.h: the CPU's bf16 products on Intel AMX (matmul_amx.c): the GEMM's
 * path, and the CPU attention's tile products. */
#ifndef FAB_MATMUL_AMX_H
#define FAB_MATMUL_AMX_H

#include <stdbool.h>
#include <stdint.h>

#define FAB_AMX_CHUNK 32          /* k per chunk: one TDPBF16PS deep */
#define FAB_AMX_CHUNK_ELEMS 1024  /* bf16 values in one packed 32x32 chunk */

/* The CPU has AMX-BF16 and the OS enables its state (the device name says so). */
bool fab__amx_available(void);
/* Whether a product may use AMX now: not turned off by env_name=0
 * (FAB_MATMUL_CPU_AMX, FAB_ATTN_CPU_AMX), fab__amx_available(), and Linux granted
 * this process the tile state (asked here, once, the first time it is needed). */
bool fab__amx_enabled(const char *env_name);

void fab__amx_pack_a(const uint16_t *src, int64_t ld, bool trans, int64_t i0, int64_t m_end, int64_t p0,
                     int64_t k_end, int nch, int64_t panel, uint16_t *dst);
void fab__amx_pack_b(const uint16_t *src, int64_t ld, bool trans, int64_t j0, int64_t n_end, int64_t p0,
                     int64_t k_end, int nch, int64_t panel, uint16_t *dst);

/* dst[32 x 32] = the transpose of 32 rows of 32 floats at src (row stride ld). */
void fab__amx_transpose32_f32(const float *src, int64_t ld, float *dst);

/* Per thread, around its use of fab__amx_kernel: load the tile configuration,
 * then release the tile state. */
void fab__amx_begin(void);
void fab__amx_end(void);
void fab__amx_kernel(int nch, const uint16_t *a, const uint16_t *b, float *c, int64_t ldc, bool accumulate);

#endif
