/*
 * cudnn_attention.h: cuDNN's fused (flash) attention, forward and backward, as the
 * GPU baseline of fab-bench's attention suite.
 *
 * cuDNN is loaded at run time (dlopen "libcudnn.so.9"); nothing links against it,
 * so fab-bench starts on machines without cuDNN or a GPU driver and the calls
 * below just fail with a message. Built only with the CUDA backend ("gpu" mode);
 * see cudnn_attention.c for the graphs.
 *
 * Every function returning int returns 0 on success, or nonzero after writing to
 * err (when err is not NULL) a message that names the failing step (the graph,
 * the descriptor and the attribute) and cuDNN's own error text.
 */
#ifndef FAB_BENCH_CUDNN_ATTENTION_H
#define FAB_BENCH_CUDNN_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

typedef struct bench_cudnn_attn bench_cudnn_attn;

/* One attention problem, in fabriek's (FlashAttention's) layout. q, k, v, o, dout,
 * dq, dk, dv: [b, s, h, d] contiguous, all bf16 or all f16; stats: f32 [b, h, s]
 * contiguous, the natural-log log-sum-exp of the scaled scores (what fabriek calls
 * lse). Device pointers, 16-byte aligned. The forward reads q, k, v and writes o
 * and stats; the backward reads q, k, v, o, stats, dout and writes dq, dk, dv. */
typedef struct bench_cudnn_attn_desc {
    int bf16;               /* 1: bf16, 0: f16 */
    int64_t b, h, s, d;     /* batch, heads, sequence (queries = keys), head dim */
    int causal;             /* 1: key j allowed for query i when j <= i */
    float scale;            /* the scores are scale * q.k */
    void *stream;           /* cudaStream_t to run on; NULL: one the module creates and owns */
    void *q, *k, *v, *o, *stats;
    void *dout, *dq, *dk, *dv; /* backward only */
} bench_cudnn_attn_desc;

/* Loads cuDNN (once per process), builds the forward (backward = 0) or backward
 * (backward = 1) graph for desc, picks an engine by cuDNN's heuristics (mode A),
 * finalizes the execution plan and allocates its workspace. The pointers in desc
 * are bound now: every run reads and writes the same buffers. */
int bench_cudnn_attn_create(bench_cudnn_attn **out, const bench_cudnn_attn_desc *desc, int backward, char *err,
                            size_t errlen);
/* Enqueues one execution on the stream (asynchronous). */
int bench_cudnn_attn_run(bench_cudnn_attn *a, char *err, size_t errlen);
/* Waits for the stream; reports a CUDA error raised by the work on it. */
int bench_cudnn_attn_wait(bench_cudnn_attn *a, char *err, size_t errlen);
/* The global index of the engine the heuristics picked, and the workspace bytes. */
int64_t bench_cudnn_attn_engine(const bench_cudnn_attn *a);
size_t bench_cudnn_attn_workspace(const bench_cudnn_attn *a);
/* Frees the plan, its descriptors and device memory. NULL is a no-op. */
void bench_cudnn_attn_destroy(bench_cudnn_attn *a);

/* "9.19.0 (libcudnn.so.9)" once cuDNN was loaded, else NULL. */
const char *bench_cudnn_version(void);
/* Releases the process-wide cuDNN handle and stream and unloads the library (after
 * every bench_cudnn_attn is destroyed). The next create loads it again. */
void bench_cudnn_unload(void);

#endif
