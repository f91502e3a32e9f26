/* status.c: status names, the thread-local last-error message, the version. */
#include "runtime.h"

#include <stdarg.h>
#include <stdio.h>

#define FAB__STR2(x) #x
#define FAB__STR(x) FAB__STR2(x)

static _Thread_local char last_error[1024];

const char *fab_version(void)
{
    return FAB__STR(FAB_VERSION_MAJOR) "." FAB__STR(FAB_VERSION_MINOR) "." FAB__STR(FAB_VERSION_PATCH);
}

#ifndef FAB_BUILD_CUDA
#define FAB_BUILD_CUDA "unknown"
#endif
#ifndef FAB_BUILD_COMM
#define FAB_BUILD_COMM "unknown"
#endif
#if defined(__clang__)
#define FAB__COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define FAB__COMPILER "gcc " __VERSION__
#else
#define FAB__COMPILER "unknown compiler"
#endif

const char *fab_build_info(void)
{
    return "fabriek " FAB__STR(FAB_VERSION_MAJOR) "." FAB__STR(FAB_VERSION_MINOR) "." FAB__STR(FAB_VERSION_PATCH)
           "; CUDA backend: " FAB_BUILD_CUDA "; comm: " FAB_BUILD_COMM "; " FAB__COMPILER;
}

const char *fab_status_name(fab_status status)
{
    switch (status) {
    case FAB_OK: return "FAB_OK";
    case FAB_ERR_INVALID_ARGUMENT: return "FAB_ERR_INVALID_ARGUMENT";
    case FAB_ERR_UNSUPPORTED: return "FAB_ERR_UNSUPPORTED";
    case FAB_ERR_OUT_OF_MEMORY: return "FAB_ERR_OUT_OF_MEMORY";
    case FAB_ERR_NO_DEVICE: return "FAB_ERR_NO_DEVICE";
    case FAB_ERR_BACKEND: return "FAB_ERR_BACKEND";
    case FAB_ERR_TIMEOUT: return "FAB_ERR_TIMEOUT";
    case FAB_ERR_PEER: return "FAB_ERR_PEER";
    case FAB_ERR_INTERNAL: return "FAB_ERR_INTERNAL";
    }
    return "FAB_ERR_UNKNOWN";
}

const char *fab_last_error(void)
{
    return last_error;
}

fab_status fab__fail(fab_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}
