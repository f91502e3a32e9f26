/*
 * cudnn_attention.c: cuDNN's fused flash attention (forward and backward) through
 * the cuDNN 9 backend ("graph") C API, loaded with dlopen. See cudnn_attention.h.
 *
 * cuDNN has no single "attention" call in its C API (before the unified SDPA
 * operation of recent versions): one describes the computation as a graph of
 * matmul, pointwise, reduction and reshape operations, and its runtime-fusion
 * flash-attention engine recognises the pattern that cudnn-frontend's `sdpa` and
 * `sdpa_backward` nodes emit. The graphs below follow that pattern operation for
 * operation (tensor types included), for the plain case: no bias, dropout,
 * padding or paging; causal is the top-left diagonal mask (the same as fabriek's
 * bottom-right one here, since seqlen_q = seqlen_k).
 *
 * Tensors use cuDNN's logical order [b, h, s, d]; fabriek's [b, s, h, d] storage
 * gives the strides (s*h*d, d, h*d, 1). K (and V in the backward) enter the graph
 * transposed, as [b, h, d, s] with strides (s*h*d, d, 1, h*d). Scores are
 * [b, h, s, s] and per-row values [b, h, s, 1]; intermediates are virtual f32
 * unless said otherwise. Scalars (scale, 1, -inf) are passed by value.
 *
 * Forward (inputs Q, K^T, V; outputs O, stats):
 *   S     = matmul(Q, K^T)                       virtual [b,h,s,s]
 *   S     = S * scale                            pointwise MUL
 *   (causal) row = GEN_INDEX(S, axis 2), col = GEN_INDEX(S, axis 3)   int32
 *            keep = CMP_GE(row, col)                                  boolean
 *            S = BINARY_SELECT(S, -inf, keep)       (keep ? S : -inf)
 *   m     = reduce MAX over the last axis        [b,h,s,1]
 *   E     = exp(S - m)                           SUB, EXP
 *   l     = reduce ADD (E)                       [b,h,s,1]
 *   stats = m + log(l)                           LOG, ADD   -> f32 output
 *   P     = E / l                                DIV; P is virtual in the io type
 *   O     = matmul(P, V)
 *
 * Backward (inputs Q, K^T, V^T, O, dO, stats; outputs dQ, dK, dV; two f32 buffers
 * of the module's own, as cudnn-frontend keeps in its workspace: Dsum [b,h,s,1]
 * and dQacc [b,h,s,d] contiguous):
 *   Dsum  = reduce ADD (dO * O) * 1              MUL, reduce, MUL -> Dsum (f32)
 *   S     = matmul(Q, K^T) * scale - stats       MUL, SUB
 *   (causal) the same mask as above, on S
 *   P     = exp(S)                               EXP
 *   P^T   = reshape(P)   [b,h,s_k,s_q], strides (.., .., 1, s), in the io type
 *   dV    = matmul(P^T, dO)
 *   dP    = matmul(dO, V^T)
 *   dS    = (dP - Dsum) * P * scale              SUB, MUL, MUL
 *   dS^T  = reshape(dS), as P^T;  dK = matmul(dS^T, Q)
 *   K     = reshape(K^T) back to [b,h,s,d]
 *   dQacc = matmul(dS, K)  (f32),   dQ = IDENTITY(dQacc)
 *
 * Then: operation graph -> heuristics (CUDNN_HEUR_MODE_A) -> the first engine
 * config whose execution plan finalizes -> its workspace (cudaMalloc) -> a
 * variant pack binding every non-virtual uid to its pointer -> cudnnBackendExecute.
 * Every cuDNN call is checked; a failure records the graph, the step, the
 * descriptor and the attribute, the status name and cudnnGetLastErrorString.
 */
#include "cudnn_attention.h"

#include <cuda_runtime_api.h>
#include <cudnn_graph.h>

#include <dlfcn.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ the library */

/* The entry points, typed from cudnn_graph.h's own declarations (only the types
 * are used: no symbol of cuDNN is referenced at link time). */
#define CUDNN_FN(name) __typeof__(name) *name
typedef struct cudnn_api {
    void *lib;
    CUDNN_FN(cudnnGetVersion);
    CUDNN_FN(cudnnGetErrorString);
    CUDNN_FN(cudnnGetLastErrorString); /* optional */
    CUDNN_FN(cudnnCreate);
    CUDNN_FN(cudnnDestroy);
    CUDNN_FN(cudnnSetStream);
    CUDNN_FN(cudnnBackendCreateDescriptor);
    CUDNN_FN(cudnnBackendDestroyDescriptor);
    CUDNN_FN(cudnnBackendSetAttribute);
    CUDNN_FN(cudnnBackendGetAttribute);
    CUDNN_FN(cudnnBackendFinalize);
    CUDNN_FN(cudnnBackendExecute);
    char libname[96];  /* what dlopen opened */
    size_t version;
    char name[160];    /* "9.19.0 (libcudnn.so.9)" */
    cudnnHandle_t handle;
    cudaStream_t stream; /* the module's own, for descs without one */
    int state;           /* 0: not tried, 1: ready, -1: failed (why) */
    char why[512];
} cudnn_api;
static cudnn_api api;

#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))

PRINTF_LIKE(3, 4) static void put(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* "CUDNN_STATUS_BAD_PARAM [2000]: <the detail from cudnnGetLastErrorString>" */
static void status_text(cudnnStatus_t st, char *buf, size_t len)
{
    char last[384] = "";
    if (api.cudnnGetLastErrorString)
        api.cudnnGetLastErrorString(last, sizeof last);
    const char *name = api.cudnnGetErrorString ? api.cudnnGetErrorString(st) : NULL;
    if (last[0])
        put(buf, len, "%s [%d]: %s", name ? name : "status", (int)st, last);
    else
        put(buf, len, "%s [%d]", name ? name : "status", (int)st);
}

static int load(void)
{
    if (api.state)
        return api.state > 0 ? 0 : -1;
    api.state = -1;
    const char *env = getenv("FAB_CUDNN_LIBRARY");
    /* the unversioned name last: it may be a development link to another major version */
    const char *tries[5] = {env, "libcudnn.so.9", NULL, "libcudnn.so", NULL};
#ifdef FAB_BENCH_CUDNN_DIR
    tries[2] = FAB_BENCH_CUDNN_DIR "/libcudnn.so.9";
#endif
    const char *first_error = NULL;
    char first[256] = "";
    for (int i = 0; i < 5 && !api.lib; i++) { /* once opened it stays open: see bench_cudnn_unload */
        if (!tries[i] || !tries[i][0])
            continue;
        api.lib = dlopen(tries[i], RTLD_NOW | RTLD_LOCAL);
        if (api.lib) {
            put(api.libname, sizeof api.libname, "%s", tries[i]);
        } else if (!first_error) {
            first_error = dlerror();
            put(first, sizeof first, "%s", first_error ? first_error : "dlopen failed");
        }
    }
    if (!api.lib) {
        put(api.why, sizeof api.why, "cuDNN not found: dlopen(libcudnn.so.9): %s (set FAB_CUDNN_LIBRARY)", first);
        return -1;
    }
#define LOAD(fn, required)                                                                       \
    do {                                                                                         \
        api.fn = (__typeof__(api.fn))dlsym(api.lib, #fn);                                        \
        if (!api.fn && (required)) {                                                             \
            put(api.why, sizeof api.why, "%s: symbol %s missing (not cuDNN 9?)", api.libname, #fn); \
            return -1;                                                                           \
        }                                                                                        \
    } while (0)
    LOAD(cudnnGetVersion, 1);
    LOAD(cudnnGetErrorString, 1);
    LOAD(cudnnGetLastErrorString, 0);
    LOAD(cudnnCreate, 1);
    LOAD(cudnnDestroy, 1);
    LOAD(cudnnSetStream, 1);
    LOAD(cudnnBackendCreateDescriptor, 1);
    LOAD(cudnnBackendDestroyDescriptor, 1);
    LOAD(cudnnBackendSetAttribute, 1);
    LOAD(cudnnBackendGetAttribute, 1);
    LOAD(cudnnBackendFinalize, 1);
    LOAD(cudnnBackendExecute, 1);
#undef LOAD
    api.version = api.cudnnGetVersion();
    put(api.name, sizeof api.name, "%zu.%zu.%zu (%s)", api.version / 10000, api.version / 100 % 100,
        api.version % 100, api.libname);
    /* The backend API's enums are those of cudnn_graph.h from major version 9. */
    if (api.version / 10000 != CUDNN_MAJOR) {
        put(api.why, sizeof api.why, "cuDNN %s: built for major version %d", api.name, CUDNN_MAJOR);
        return -1;
    }
    /* cudnn-frontend refuses 16-bit SDPA on these two releases for known bugs */
    if (api.version == 91000 || api.version == 91001) {
        put(api.why, sizeof api.why, "cuDNN %s: 9.10.0 and 9.10.1 have known SDPA bugs (cudnn-frontend refuses "
                                     "them); use another release", api.name);
        return -1;
    }
    cudnnStatus_t st = api.cudnnCreate(&api.handle);
    if (st != CUDNN_STATUS_SUCCESS) {
        char text[448];
        status_text(st, text, sizeof text);
        put(api.why, sizeof api.why, "cuDNN %s: cudnnCreate failed: %s", api.name, text);
        api.handle = NULL;
        return -1;
    }
    cudaError_t ce = cudaStreamCreateWithFlags(&api.stream, cudaStreamNonBlocking);
    if (ce != cudaSuccess) {
        put(api.why, sizeof api.why, "cudaStreamCreateWithFlags: %s", cudaGetErrorString(ce));
        api.stream = NULL;
        return -1;
    }
    api.state = 1;
    return 0;
}

const char *bench_cudnn_version(void) { return api.state > 0 ? api.name : NULL; }

void bench_cudnn_unload(void)
{
    if (api.handle && api.cudnnDestroy)
        api.cudnnDestroy(api.handle);
    if (api.stream)
        cudaStreamDestroy(api.stream);
    /* The library itself stays mapped (a later load reuses it): unloading cuDNN, its
     * sublibraries and their static state buys a benchmark nothing but risk. */
    cudnn_api keep = {.lib = api.lib};
    memcpy(keep.libname, api.libname, sizeof keep.libname);
    api = keep;
}

/* ------------------------------------------------------- graph building */

#define GRAPH_MAX_DESCS 256
#define GRAPH_MAX_OPS 48
#define GRAPH_MAX_IO 16
#define GRAPH_MAX_CONFIGS 32

typedef cudnnBackendDescriptor_t T; /* a tensor (or any) descriptor */

/* One graph and everything built from it. The builder functions do nothing once
 * g->failed is set, so the graph code below reads straight through; the first
 * failure is the one reported. */
typedef struct graph {
    const char *name; /* "cuDNN forward graph" / "cuDNN backward graph" */
    cudnnBackendDescriptor_t desc[GRAPH_MAX_DESCS]; /* all, destroyed in reverse order */
    cudnnBackendDescriptorType_t type[GRAPH_MAX_DESCS];
    int ndesc;
    cudnnBackendDescriptor_t op[GRAPH_MAX_OPS];
    int nop;
    int64_t uid[GRAPH_MAX_IO]; /* the variant pack: non-virtual uids and their pointers */
    void *ptr[GRAPH_MAX_IO];
    int nio;
    int64_t next_virtual_uid;
    cudnnBackendDescriptor_t plan, pack;
    int64_t engine;
    int64_t workspace_bytes;
    void *workspace;
    int failed;
    char err[768];
} graph;

PRINTF_LIKE(2, 3) static void fail(graph *g, const char *fmt, ...)
{
    if (g->failed)
        return;
    g->failed = 1;
    int n = snprintf(g->err, sizeof g->err, "%s: ", g->name);
    if (n < 0 || (size_t)n >= sizeof g->err)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->err + n, sizeof g->err - (size_t)n, fmt, ap);
    va_end(ap);
}

PRINTF_LIKE(3, 4) static void fail_status(graph *g, cudnnStatus_t st, const char *fmt, ...)
{
    if (g->failed)
        return;
    char what[256], text[448];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    status_text(st, text, sizeof text);
    fail(g, "%s failed: %s", what, text);
}

static const char *type_name(cudnnBackendDescriptorType_t t)
{
    switch (t) {
    case CUDNN_BACKEND_TENSOR_DESCRIPTOR: return "TENSOR";
    case CUDNN_BACKEND_POINTWISE_DESCRIPTOR: return "POINTWISE";
    case CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR: return "OPERATION_POINTWISE";
    case CUDNN_BACKEND_MATMUL_DESCRIPTOR: return "MATMUL";
    case CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR: return "OPERATION_MATMUL";
    case CUDNN_BACKEND_REDUCTION_DESCRIPTOR: return "REDUCTION";
    case CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR: return "OPERATION_REDUCTION";
    case CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR: return "OPERATION_RESHAPE";
    case CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR: return "OPERATIONGRAPH";
    case CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR: return "ENGINEHEUR";
    case CUDNN_BACKEND_ENGINECFG_DESCRIPTOR: return "ENGINECFG";
    case CUDNN_BACKEND_ENGINE_DESCRIPTOR: return "ENGINE";
    case CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR: return "EXECUTION_PLAN";
    case CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR: return "VARIANT_PACK";
    default: return "?";
    }
}

/* Creates a descriptor owned by g (NULL after a failure). */
static cudnnBackendDescriptor_t create(graph *g, cudnnBackendDescriptorType_t type, const char *what)
{
    if (g->failed)
        return NULL;
    if (g->ndesc == GRAPH_MAX_DESCS) {
        fail(g, "%s: more than %d descriptors", what, GRAPH_MAX_DESCS);
        return NULL;
    }
    cudnnBackendDescriptor_t d = NULL;
    cudnnStatus_t st = api.cudnnBackendCreateDescriptor(type, &d);
    if (st != CUDNN_STATUS_SUCCESS || !d) {
        fail_status(g, st, "cudnnBackendCreateDescriptor(CUDNN_BACKEND_%s_DESCRIPTOR) for %s", type_name(type), what);
        return NULL;
    }
    g->type[g->ndesc] = type;
    g->desc[g->ndesc++] = d;
    return d;
}

/* The type of a descriptor of g, for messages. */
static const char *type_of(const graph *g, cudnnBackendDescriptor_t d)
{
    for (int i = 0; i < g->ndesc; i++)
        if (g->desc[i] == d)
            return type_name(g->type[i]);
    return "?";
}

/* cudnnBackendSetAttribute, checked; `what` names the descriptor in messages. */
#define SET(g, d, what, attr, type, n, ptr) set_attr(g, d, what, attr, #attr, type, n, ptr)
static void set_attr(graph *g, cudnnBackendDescriptor_t d, const char *what, cudnnBackendAttributeName_t attr,
                     const char *attr_name, cudnnBackendAttributeType_t type, int64_t n, const void *ptr)
{
    if (g->failed)
        return;
    cudnnStatus_t st = api.cudnnBackendSetAttribute(d, attr, type, n, ptr);
    if (st != CUDNN_STATUS_SUCCESS)
        fail_status(g, st, "cudnnBackendSetAttribute(%s %s, %s)", type_of(g, d), what, attr_name);
}

static void finalize(graph *g, cudnnBackendDescriptor_t d, const char *what)
{
    if (g->failed)
        return;
    cudnnStatus_t st = api.cudnnBackendFinalize(d);
    if (st != CUDNN_STATUS_SUCCESS)
        fail_status(g, st, "cudnnBackendFinalize(%s %s)", type_of(g, d), what);
}

typedef struct shape {
    int64_t dim[4], stride[4];
} shape;

enum { T_IO, T_VIRTUAL, T_VALUE };

static T tensor(graph *g, const char *name, int kind, int64_t uid, cudnnDataType_t type, const shape *sh, void *ptr)
{
    /* scalars: dims = strides = {1,1,1,1} (cuDNN wants a pointwise op's operands
     * of equal rank; it rejects a rank-1 {1} against [b,h,s,s]) */
    static const int64_t ones[4] = {1, 1, 1, 1};
    T t = create(g, CUDNN_BACKEND_TENSOR_DESCRIPTOR, name);
    const int64_t nd = 4;
    const int64_t align = 16;
    const bool yes = true;
    SET(g, t, name, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
    SET(g, t, name, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, nd, kind == T_VALUE ? ones : sh->dim);
    SET(g, t, name, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, nd, kind == T_VALUE ? ones : sh->stride);
    SET(g, t, name, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    SET(g, t, name, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    if (kind == T_VIRTUAL)
        SET(g, t, name, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &yes);
    if (kind == T_VALUE)
        SET(g, t, name, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &yes);
    finalize(g, t, name);
    if (!g->failed && kind != T_VIRTUAL) {
        if (g->nio == GRAPH_MAX_IO) {
            fail(g, "%s: more than %d graph inputs and outputs", name, GRAPH_MAX_IO);
        } else {
            g->uid[g->nio] = uid;
            g->ptr[g->nio++] = ptr;
        }
    }
    return t;
}

static T io(graph *g, const char *name, int64_t uid, cudnnDataType_t type, const shape *sh, void *dev)
{
    return tensor(g, name, T_IO, uid, type, sh, dev);
}

static T value(graph *g, const char *name, int64_t uid, float *host)
{
    return tensor(g, name, T_VALUE, uid, CUDNN_DATA_FLOAT, NULL, host);
}

static T virt(graph *g, const char *name, cudnnDataType_t type, const shape *sh)
{
    return tensor(g, name, T_VIRTUAL, g->next_virtual_uid++, type, sh, NULL);
}

static void add_op(graph *g, cudnnBackendDescriptor_t op, const char *what)
{
    if (g->failed)
        return;
    if (g->nop == GRAPH_MAX_OPS) {
        fail(g, "%s: more than %d operations", what, GRAPH_MAX_OPS);
        return;
    }
    g->op[g->nop++] = op;
}

/* y = mode(x[, b[, t]]) in f32 (prec), or for GEN_INDEX y = index of x along axis. */
static void pointwise_op(graph *g, const char *name, cudnnPointwiseMode_t mode, cudnnDataType_t prec, int64_t axis, T x,
                         T b, T t, T y)
{
    cudnnBackendDescriptor_t pw = create(g, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, name);
    SET(g, pw, name, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    SET(g, pw, name, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
    if (mode == CUDNN_POINTWISE_GEN_INDEX)
        SET(g, pw, name, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    finalize(g, pw, name);
    cudnnBackendDescriptor_t op = create(g, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, name);
    SET(g, op, name, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw);
    SET(g, op, name, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    if (b)
        SET(g, op, name, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    if (t)
        SET(g, op, name, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t);
    SET(g, op, name, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    finalize(g, op, name);
    add_op(g, op, name);
}

/* f32 pointwise y = mode(x[, b]) into a given tensor, or into a new virtual f32 one. */
static void pw_to(graph *g, const char *name, cudnnPointwiseMode_t mode, T x, T b, T y)
{
    pointwise_op(g, name, mode, CUDNN_DATA_FLOAT, 0, x, b, NULL, y);
}
static T pw(graph *g, const char *name, cudnnPointwiseMode_t mode, T x, T b, const shape *ysh)
{
    T y = virt(g, name, CUDNN_DATA_FLOAT, ysh);
    pw_to(g, name, mode, x, b, y);
    return y;
}

/* c = a b over the last two dims (batched over the first two), f32 accumulation */
static void matmul(graph *g, const char *name, T a, T b, T c)
{
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t mm = create(g, CUDNN_BACKEND_MATMUL_DESCRIPTOR, name);
    SET(g, mm, name, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
    finalize(g, mm, name);
    cudnnBackendDescriptor_t op = create(g, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, name);
    SET(g, op, name, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a);
    SET(g, op, name, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    SET(g, op, name, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c);
    SET(g, op, name, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm);
    finalize(g, op, name);
    add_op(g, op, name);
}

/* y = reduction of x over the dims where y has extent 1, in f32 */
static void reduce(graph *g, const char *name, cudnnReduceTensorOp_t mode, T x, T y)
{
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t rd = create(g, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, name);
    SET(g, rd, name, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
    SET(g, rd, name, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
    finalize(g, rd, name);
    cudnnBackendDescriptor_t op = create(g, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, name);
    SET(g, op, name, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    SET(g, op, name, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    SET(g, op, name, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rd);
    finalize(g, op, name);
    add_op(g, op, name);
}

/* y = x seen with y's dims and strides (a logical reshape / transpose) */
static void reshape(graph *g, const char *name, T x, T y)
{
    cudnnBackendDescriptor_t op = create(g, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, name);
    SET(g, op, name, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    SET(g, op, name, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    finalize(g, op, name);
    add_op(g, op, name);
}

/* The causal mask as cudnn-frontend's diagonal band mask emits it (top-left,
 * right bound 0): keep (row >= col) ? x : -inf. */
static T causal_mask(graph *g, T x, const shape *ss, int64_t neg_inf_uid, float *neg_inf)
{
    T row = virt(g, "row index", CUDNN_DATA_INT32, ss);
    pointwise_op(g, "row index", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, 2, x, NULL, NULL, row);
    T col = virt(g, "column index", CUDNN_DATA_INT32, ss);
    pointwise_op(g, "column index", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, 3, x, NULL, NULL, col);
    T keep = virt(g, "row >= column", CUDNN_DATA_BOOLEAN, ss);
    pointwise_op(g, "row >= column", CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, 0, row, col, NULL, keep);
    T ninf = value(g, "-inf", neg_inf_uid, neg_inf);
    T y = virt(g, "causal select", CUDNN_DATA_FLOAT, ss);
    pointwise_op(g, "causal select", CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, 0, x, ninf, keep, y);
    return y;
}

/* --------------------------------------------------------- the two graphs */

struct bench_cudnn_attn {
    graph g;
    int backward;
    cudaStream_t stream;
    /* the by-value scalars: the variant pack points at these (16-byte aligned, as
     * every tensor is declared; calloc gives 16) */
    _Alignas(16) float scale;
    _Alignas(16) float one;
    _Alignas(16) float neg_inf;
    /* backward: cuDNN's f32 scratch (what cudnn-frontend puts in its workspace) */
    void *dsum, *dq_acc;
    size_t dq_acc_bytes;
    int clear_dq_acc; /* cuDNN < 9.6 expects dQacc zeroed before each run */
};

enum {
    UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_DO, UID_DQ, UID_DK, UID_DV,
    UID_SCALE, UID_ONE, UID_NEG_INF, UID_DSUM, UID_DQ_ACC,
    UID_FIRST_VIRTUAL = 100
};

typedef struct shapes {
    shape bhsd;  /* q, k, v, o, dO, dq, dk, dv: [b,h,s,d] over [b,s,h,d] storage */
    shape bhds;  /* k (and v) transposed: [b,h,d,s] */
    shape bhss;  /* scores */
    shape bhst;  /* scores transposed: [b,h,s_k,s_q] */
    shape rows;  /* [b,h,s,1]: stats, max, sum */
    shape dense; /* [b,h,s,d] contiguous (dQacc) */
    shape odd;   /* dO * O as cudnn-frontend declares it (virtual) */
} shapes;

static shapes make_shapes(int64_t b, int64_t h, int64_t s, int64_t d)
{
    shapes x = {
        .bhsd = {{b, h, s, d}, {s * h * d, d, h * d, 1}},
        .bhds = {{b, h, d, s}, {s * h * d, d, 1, h * d}},
        .bhss = {{b, h, s, s}, {h * s * s, s * s, s, 1}},
        .bhst = {{b, h, s, s}, {h * s * s, s * s, 1, s}},
        .rows = {{b, h, s, 1}, {h * s, s, 1, 1}},
        .dense = {{b, h, s, d}, {h * s * d, s * d, d, 1}},
        .odd = {{b, h, s, d}, {h * s * d, s * d, h * d, 1}},
    };
    return x;
}

static void build_forward(bench_cudnn_attn *a, const bench_cudnn_attn_desc *p)
{
    graph *g = &a->g;
    const cudnnDataType_t dt = p->bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
    const shapes x = make_shapes(p->b, p->h, p->s, p->d);

    T q = io(g, "Q", UID_Q, dt, &x.bhsd, p->q);
    T kt = io(g, "K^T", UID_K, dt, &x.bhds, p->k);
    T v = io(g, "V", UID_V, dt, &x.bhsd, p->v);
    T o = io(g, "O", UID_O, dt, &x.bhsd, p->o);
    T stats = io(g, "stats", UID_STATS, CUDNN_DATA_FLOAT, &x.rows, p->stats);
    T scale = value(g, "scale", UID_SCALE, &a->scale);

    T s = virt(g, "Q K^T", CUDNN_DATA_FLOAT, &x.bhss);
    matmul(g, "Q K^T", q, kt, s);
    s = pw(g, "S * scale", CUDNN_POINTWISE_MUL, s, scale, &x.bhss);
    if (p->causal)
        s = causal_mask(g, s, &x.bhss, UID_NEG_INF, &a->neg_inf);
    T m = virt(g, "row max", CUDNN_DATA_FLOAT, &x.rows);
    reduce(g, "row max", CUDNN_REDUCE_TENSOR_MAX, s, m);
    T e = pw(g, "S - max", CUDNN_POINTWISE_SUB, s, m, &x.bhss);
    e = pw(g, "exp", CUDNN_POINTWISE_EXP, e, NULL, &x.bhss);
    T l = virt(g, "row sum", CUDNN_DATA_FLOAT, &x.rows);
    reduce(g, "row sum", CUDNN_REDUCE_TENSOR_ADD, e, l);
    T logl = pw(g, "log sum", CUDNN_POINTWISE_LOG, l, NULL, &x.rows);
    pw_to(g, "stats = max + log sum", CUDNN_POINTWISE_ADD, m, logl, stats);
    T prob = virt(g, "P", dt, &x.bhss); /* P in the io type: the second matmul's A */
    pw_to(g, "P = exp / sum", CUDNN_POINTWISE_DIV, e, l, prob);
    matmul(g, "P V", prob, v, o);
}

static void build_backward(bench_cudnn_attn *a, const bench_cudnn_attn_desc *p)
{
    graph *g = &a->g;
    const cudnnDataType_t dt = p->bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
    const shapes x = make_shapes(p->b, p->h, p->s, p->d);

    T q = io(g, "Q", UID_Q, dt, &x.bhsd, p->q);
    T kt = io(g, "K^T", UID_K, dt, &x.bhds, p->k);
    T vt = io(g, "V^T", UID_V, dt, &x.bhds, p->v);
    T o = io(g, "O", UID_O, dt, &x.bhsd, p->o);
    T stats = io(g, "stats", UID_STATS, CUDNN_DATA_FLOAT, &x.rows, p->stats);
    T dout = io(g, "dO", UID_DO, dt, &x.bhsd, p->dout);
    T dq = io(g, "dQ", UID_DQ, dt, &x.bhsd, p->dq);
    T dk = io(g, "dK", UID_DK, dt, &x.bhsd, p->dk);
    T dv = io(g, "dV", UID_DV, dt, &x.bhsd, p->dv);
    T dsum = io(g, "Dsum", UID_DSUM, CUDNN_DATA_FLOAT, &x.rows, a->dsum);
    T dq_acc = io(g, "dQacc", UID_DQ_ACC, CUDNN_DATA_FLOAT, &x.dense, a->dq_acc);
    T scale = value(g, "scale", UID_SCALE, &a->scale);
    T one = value(g, "one", UID_ONE, &a->one);

    /* Dsum = rowsum(dO * O) */
    T t = pw(g, "dO * O", CUDNN_POINTWISE_MUL, dout, o, &x.odd);
    T r = virt(g, "rowsum(dO * O)", CUDNN_DATA_FLOAT, &x.rows);
    reduce(g, "rowsum(dO * O)", CUDNN_REDUCE_TENSOR_ADD, t, r);
    pw_to(g, "Dsum = rowsum * 1", CUDNN_POINTWISE_MUL, r, one, dsum);

    /* P = exp(scale Q K^T - stats), masked */
    T s = virt(g, "Q K^T", CUDNN_DATA_FLOAT, &x.bhss);
    matmul(g, "Q K^T", q, kt, s);
    s = pw(g, "S * scale", CUDNN_POINTWISE_MUL, s, scale, &x.bhss);
    s = pw(g, "S - stats", CUDNN_POINTWISE_SUB, s, stats, &x.bhss);
    if (p->causal)
        s = causal_mask(g, s, &x.bhss, UID_NEG_INF, &a->neg_inf);
    T prob = pw(g, "P = exp", CUDNN_POINTWISE_EXP, s, NULL, &x.bhss);

    /* dV = P^T dO */
    T pt = virt(g, "P^T", dt, &x.bhst);
    reshape(g, "P^T", prob, pt);
    matmul(g, "P^T dO", pt, dout, dv);

    /* dS = P (dO V^T - Dsum) scale */
    T dp = virt(g, "dO V^T", CUDNN_DATA_FLOAT, &x.bhss);
    matmul(g, "dO V^T", dout, vt, dp);
    T ds = pw(g, "dP - Dsum", CUDNN_POINTWISE_SUB, dp, dsum, &x.bhss);
    ds = pw(g, "* P", CUDNN_POINTWISE_MUL, ds, prob, &x.bhss);
    ds = pw(g, "dS = * scale", CUDNN_POINTWISE_MUL, ds, scale, &x.bhss);

    /* dK = dS^T Q */
    T dst = virt(g, "dS^T", dt, &x.bhst);
    reshape(g, "dS^T", ds, dst);
    matmul(g, "dS^T Q", dst, q, dk);

    /* dQ = dS K, accumulated in f32 */
    T k = virt(g, "K", CUDNN_DATA_FLOAT, &x.bhsd); /* f32 as cudnn-frontend's reshape output */
    reshape(g, "K = (K^T)^T", kt, k);
    matmul(g, "dS K", ds, k, dq_acc);
    pw_to(g, "dQ = dQacc", CUDNN_POINTWISE_IDENTITY, dq_acc, NULL, dq);
}

/* Operation graph -> heuristics -> plan -> workspace -> variant pack. */
static void build_plan(graph *g)
{
    cudnnBackendDescriptor_t og = create(g, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    SET(g, og, "operation graph", CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &api.handle);
    SET(g, og, "operation graph", CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g->nop, g->op);
    finalize(g, og, "operation graph (is the graph a pattern cuDNN fuses?)");

    const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    cudnnBackendDescriptor_t heur = create(g, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
    SET(g, heur, "heuristics", CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &og);
    SET(g, heur, "heuristics", CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    finalize(g, heur, "heuristics (mode A)");
    if (g->failed)
        return;

    int64_t count = 0;
    cudnnStatus_t st = api.cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                                    0, &count, NULL);
    if (st != CUDNN_STATUS_SUCCESS) {
        fail_status(g, st, "cudnnBackendGetAttribute(heuristics, CUDNN_ATTR_ENGINEHEUR_RESULTS count)");
        return;
    }
    if (count <= 0) {
        fail(g, "heuristics (mode A) returned no engine configuration for this graph (CUDNN_LOGLEVEL_DBG=2 "
             "CUDNN_LOGDEST_DBG=stderr shows cuDNN's reasons)");
        return;
    }
    if (count > GRAPH_MAX_CONFIGS)
        count = GRAPH_MAX_CONFIGS;
    cudnnBackendDescriptor_t cfg[GRAPH_MAX_CONFIGS];
    for (int64_t i = 0; i < count; i++)
        cfg[i] = create(g, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine configuration");
    if (g->failed)
        return;
    int64_t got = 0;
    st = api.cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got,
                                      cfg);
    if (st != CUDNN_STATUS_SUCCESS) {
        fail_status(g, st, "cudnnBackendGetAttribute(heuristics, CUDNN_ATTR_ENGINEHEUR_RESULTS)");
        return;
    }
    if (got <= 0) {
        fail(g, "heuristics (mode A) returned no engine configuration for this graph (CUDNN_LOGLEVEL_DBG=2 "
             "CUDNN_LOGDEST_DBG=stderr shows cuDNN's reasons)");
        return;
    }
    if (got > count)
        got = count;

    /* The first configuration whose plan finalizes wins (the heuristics' order). */
    char first[512] = "";
    int64_t chosen = -1;
    for (int64_t i = 0; i < got && chosen < 0; i++) {
        cudnnBackendDescriptor_t plan = create(g, CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "execution plan");
        SET(g, plan, "execution plan", CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &api.handle);
        SET(g, plan, "execution plan", CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
            &cfg[i]);
        if (g->failed)
            return;
        st = api.cudnnBackendFinalize(plan);
        if (st == CUDNN_STATUS_SUCCESS) {
            g->plan = plan;
            chosen = i;
        } else if (!first[0]) {
            char text[448];
            status_text(st, text, sizeof text);
            put(first, sizeof first, "%s", text);
        }
    }
    if (chosen < 0) {
        fail(g, "none of the %lld engine configurations from the heuristics finalized an execution plan "
                "(the first failed with %s)",
             (long long)got, first);
        return;
    }

    /* Which engine: for the report only, so failures here are ignored. */
    g->engine = -1;
    cudnnBackendDescriptor_t engine = create(g, CUDNN_BACKEND_ENGINE_DESCRIPTOR, "engine");
    if (g->failed)
        return;
    int64_t n = 0, index = -1;
    if (api.cudnnBackendGetAttribute(cfg[chosen], CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n,
                                     &engine) == CUDNN_STATUS_SUCCESS &&
        api.cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &index) ==
            CUDNN_STATUS_SUCCESS)
        g->engine = index;

    st = api.cudnnBackendGetAttribute(g->plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n,
                                      &g->workspace_bytes);
    if (st != CUDNN_STATUS_SUCCESS) {
        fail_status(g, st, "cudnnBackendGetAttribute(execution plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE)");
        return;
    }
    if (g->workspace_bytes > 0) {
        cudaError_t ce = cudaMalloc(&g->workspace, (size_t)g->workspace_bytes);
        if (ce != cudaSuccess) {
            g->workspace = NULL;
            fail(g, "cudaMalloc(workspace, %lld bytes): %s", (long long)g->workspace_bytes, cudaGetErrorString(ce));
            return;
        }
    }

    g->pack = create(g, CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack");
    SET(g, g->pack, "variant pack", CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, g->nio, g->uid);
    SET(g, g->pack, "variant pack", CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, g->nio, g->ptr);
    SET(g, g->pack, "variant pack", CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &g->workspace);
    finalize(g, g->pack, "variant pack");
}

static int dev_alloc(bench_cudnn_attn *a, void **p, size_t bytes, const char *what)
{
    cudaError_t ce = cudaMalloc(p, bytes);
    if (ce == cudaSuccess)
        return 0;
    *p = NULL;
    fail(&a->g, "cudaMalloc(%s, %zu bytes): %s", what, bytes, cudaGetErrorString(ce));
    return -1;
}

int bench_cudnn_attn_create(bench_cudnn_attn **out, const bench_cudnn_attn_desc *p, int backward, char *err,
                            size_t errlen)
{
    *out = NULL;
    if (load() != 0) {
        put(err, errlen, "%s", api.why);
        return -1;
    }
    if (p->b < 1 || p->h < 1 || p->s < 1 || p->d < 1 || p->d % 8 || !p->q || !p->k || !p->v || !p->o || !p->stats ||
        (backward && (!p->dout || !p->dq || !p->dk || !p->dv))) {
        put(err, errlen, "cuDNN attention: bad arguments (b, h, s, d >= 1, d a multiple of 8, every pointer set)");
        return -1;
    }
    /* before 9.16 cudnn-frontend works around the backward for sequence lengths that
     * are not a multiple of 128 (by padding); these graphs do not, so refuse */
    if (backward && api.version < 91600 && p->s % 128) {
        put(err, errlen, "cuDNN %s: the backward with s=%lld (not a multiple of 128) needs cudnn-frontend's "
                         "workaround before 9.16, which this baseline does not replicate", api.name, (long long)p->s);
        return -1;
    }
    bench_cudnn_attn *a = calloc(1, sizeof *a);
    if (!a) {
        put(err, errlen, "cuDNN attention: out of host memory");
        return -1;
    }
    a->g.name = backward ? "cuDNN backward graph" : "cuDNN forward graph";
    a->g.next_virtual_uid = UID_FIRST_VIRTUAL;
    a->g.engine = -1;
    a->backward = backward;
    a->stream = p->stream ? (cudaStream_t)p->stream : api.stream;
    a->scale = p->scale;
    a->one = 1.0f;
    /* what cudnn-frontend uses for masked scores: -inf from cuDNN 9.10, before it the lowest float */
    a->neg_inf = api.version >= 91000 ? -INFINITY : -FLT_MAX;
    if (backward) {
        const size_t rows = (size_t)(p->b * p->h * p->s);
        a->dq_acc_bytes = rows * (size_t)p->d * sizeof(float);
        a->clear_dq_acc = api.version < 90600;
        if (dev_alloc(a, &a->dsum, rows * sizeof(float), "Dsum") == 0)
            dev_alloc(a, &a->dq_acc, a->dq_acc_bytes, "dQacc");
        build_backward(a, p);
    } else {
        build_forward(a, p);
    }
    build_plan(&a->g);
    if (a->g.failed) {
        put(err, errlen, "%s", a->g.err);
        bench_cudnn_attn_destroy(a);
        return -1;
    }
    *out = a;
    return 0;
}

int bench_cudnn_attn_run(bench_cudnn_attn *a, char *err, size_t errlen)
{
    cudnnStatus_t st = api.cudnnSetStream(api.handle, a->stream);
    if (st != CUDNN_STATUS_SUCCESS) {
        char text[448];
        status_text(st, text, sizeof text);
        put(err, errlen, "%s: cudnnSetStream failed: %s", a->g.name, text);
        return -1;
    }
    if (a->clear_dq_acc) {
        cudaError_t ce = cudaMemsetAsync(a->dq_acc, 0, a->dq_acc_bytes, a->stream);
        if (ce != cudaSuccess) {
            put(err, errlen, "%s: cudaMemsetAsync(dQacc): %s", a->g.name, cudaGetErrorString(ce));
            return -1;
        }
    }
    st = api.cudnnBackendExecute(api.handle, a->g.plan, a->g.pack);
    if (st != CUDNN_STATUS_SUCCESS) {
        char text[448];
        status_text(st, text, sizeof text);
        put(err, errlen, "%s: cudnnBackendExecute (engine %lld) failed: %s", a->g.name, (long long)a->g.engine, text);
        return -1;
    }
    return 0;
}

int bench_cudnn_attn_wait(bench_cudnn_attn *a, char *err, size_t errlen)
{
    cudaError_t ce = cudaStreamSynchronize(a->stream);
    if (ce != cudaSuccess) {
        put(err, errlen, "%s: cudaStreamSynchronize after cuDNN: %s", a->g.name, cudaGetErrorString(ce));
        return -1;
    }
    return 0;
}

int64_t bench_cudnn_attn_engine(const bench_cudnn_attn *a) { return a->g.engine; }
size_t bench_cudnn_attn_workspace(const bench_cudnn_attn *a) { return (size_t)a->g.workspace_bytes; }

void bench_cudnn_attn_destroy(bench_cudnn_attn *a)
{
    if (!a)
        return;
    if (a->g.workspace || a->dsum || a->dq_acc)
        cudaStreamSynchronize(a->stream); /* no run may still use them */
    for (int i = a->g.ndesc - 1; i >= 0; i--)
        api.cudnnBackendDestroyDescriptor(a->g.desc[i]);
    cudaFree(a->g.workspace);
    cudaFree(a->dsum);
    cudaFree(a->dq_acc);
    free(a);
}
