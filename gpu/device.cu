// device.cu: CUDA device discovery. Host code stays C; this file exposes
// extern "C" entry points declared in gpu.h.
#include <cstdio>

#include <cuda_runtime.h>

#include "gpu.h"

extern "C" int cpk__cuda_device_count(char *why, unsigned long len) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    snprintf(why, len, "no usable CUDA device: %s", cudaGetErrorString(err));
    return 0;
  }
  if (n == 0)
    snprintf(why, len, "no usable CUDA device: the driver reports none");
  return n;
}

extern "C" int cpk__cuda_built(void) { return 1; }
