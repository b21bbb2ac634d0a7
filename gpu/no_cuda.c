/* no_cuda.c: the CUDA entry points of a build without CUDA. */
#include <stdio.h>

#include "gpu.h"

int cpk__cuda_device_count(char *why, unsigned long len) {
  snprintf(why, len, "this build of curvpack has no CUDA support "
                     "(configure found no CUDA toolkit)");
  return 0;
}

int cpk__cuda_built(void) { return 0; }
