/* Compiles the public header as strict C99 (never run). */
#include "fabriek.h"
int fab_header_c99_check(void);
int fab_header_c99_check(void) { return (int)sizeof(fab_tensor) + FAB_OK; }
