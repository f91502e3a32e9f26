// Compiles the public header as C++ (never run).
#include "fabriek.h"
int fab_header_cxx_check();
int fab_header_cxx_check() { return static_cast<int>(sizeof(fab_gelu_params)) + FAB_OK; }
