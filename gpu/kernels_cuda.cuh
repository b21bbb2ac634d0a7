// kernels_cuda.cuh: what gpu_runtime.cu and ops_cuda.cu share (internal,
// C++ only): the definition of struct cpk__gpu, the recording of the first
// CUDA or cuBLAS failure in it, and launch-geometry helpers.
#ifndef CPK_KERNELS_CUDA_CUH
#define CPK_KERNELS_CUDA_CUH

#include <cstdarg>
#include <cstdint>
#include <cstdio>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "gpu_ops.h"

// One CUDA device in use (see gpu_ops.h). `error` holds the first failure
// since the last cpk__gpu_sync, `failed` says whether there is one. `holds`
// counts the context and every device allocation still made on the handle
// (cpk__gpu_hold); the handle goes when the last is let go.
struct cpk__gpu {
  int ordinal;
  int holds;
  cudaStream_t stream;
  cublasHandle_t blas;
  cudaMemPool_t pool; // the device's default pool, kept (never released)
  char name[256];
  char error[512];
  int failed;
};

namespace cpk_cuda {

// Keep "fmt ..." as the handle's error unless an earlier one is kept.
__attribute__((format(printf, 2, 3))) inline void
record(cpk__gpu *g, const char *fmt, ...) {
  if (g->failed)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g->error, sizeof g->error, fmt, ap);
  va_end(ap);
  g->failed = 1;
}

// Check a CUDA runtime status: on failure record "what: <description>" and
// return false. The runtime's last-error state is cleared, so that the check
// after the next kernel launch does not report this failure again.
inline bool check(cpk__gpu *g, cudaError_t err, const char *what) {
  if (err == cudaSuccess)
    return true;
  (void)cudaGetLastError();
  record(g, "%s: %s", what, cudaGetErrorString(err));
  return false;
}

// Check a cuBLAS status: "what: CUBLAS_STATUS_...".
inline bool check_blas(cpk__gpu *g, cublasStatus_t st, const char *what) {
  if (st == CUBLAS_STATUS_SUCCESS)
    return true;
  record(g, "%s: %s", what, cublasGetStatusName(st));
  return false;
}

// Check the launch of kernel `name` ("kernel <name>: <description>").
inline void check_launch(cpk__gpu *g, const char *name) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    record(g, "kernel %s: %s", name, cudaGetErrorString(err));
}

// Make the handle's device current for the calling thread (operations may
// come from any host thread); false, recorded, when that fails.
inline bool enter(cpk__gpu *g) {
  const cudaError_t err = cudaSetDevice(g->ordinal);
  if (err == cudaSuccess)
    return true;
  (void)cudaGetLastError();
  record(g, "cudaSetDevice(%d): %s", g->ordinal, cudaGetErrorString(err));
  return false;
}

// Threads per block of the one-thread-per-element kernels, and the most
// blocks one launch uses (the kernels loop over the rest: grid-stride).
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65536;

// Blocks for n elements at `threads` per block (n > 0).
inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return (unsigned)(b < kMaxBlocks ? b : kMaxBlocks);
}

// The grid-stride loop over [0, n) of the calling thread, 64-bit indices.
#define CPK_CUDA_FOR(i, n)                                                     \
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);   \
       i += (int64_t)gridDim.x * blockDim.x)

// Launch a one-thread-per-element kernel over n elements (nothing for
// n <= 0) on the handle's stream and check the launch.
template <typename... P, typename... A>
void launch(cpk__gpu *g, const char *name, int64_t n, void (*kernel)(P...),
            A... args) {
  if (n <= 0)
    return;
  kernel<<<blocks_for(n), kThreads, 0, g->stream>>>(args...);
  check_launch(g, name);
}

// Call f(T()) with T = double (f64) or float: f instantiates the operation
// for T.
template <typename F> void by_type(int f64, F f) {
  if (f64)
    f(double());
  else
    f(float());
}

} // namespace cpk_cuda

#endif // CPK_KERNELS_CUDA_CUH
