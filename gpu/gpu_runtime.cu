// gpu_runtime.cu: the CUDA device handle of gpu_ops.h: opening a device
// (stream, cuBLAS handle, stream-ordered memory pool), allocation, copies
// and the reporting of the first failure at cpk__gpu_sync.
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "kernels_cuda.cuh"

using cpk_cuda::check;
using cpk_cuda::enter;

// Release what a (possibly partly) opened handle holds. Used on the error
// path of cpk__gpu_open and when the last hold is let go, which have no
// error to report: the statuses of these calls are deliberately not kept.
static void release(cpk__gpu *g) {
  if (g->blas != nullptr)
    (void)cublasDestroy(g->blas);
  if (g->stream != nullptr)
    (void)cudaStreamDestroy(g->stream);
  // Give the pool's unused memory back to the device (it is kept while the
  // handle is open: release threshold UINT64_MAX).
  if (g->pool != nullptr)
    (void)cudaMemPoolTrimTo(g->pool, 0);
  (void)cudaGetLastError();
  free(g);
}

// The error path of cpk__gpu_open: write why, release g, return 1.
__attribute__((format(printf, 4, 5))) static int
open_fail(cpk__gpu *g, char *why, size_t len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, len, fmt, ap);
  va_end(ap);
  release(g);
  return 1;
}

extern "C" int cpk__gpu_open(cpk__gpu **out, int ordinal, char *why,
                             size_t len) {
  *out = nullptr;
  cpk__gpu *g = static_cast<cpk__gpu *>(calloc(1, sizeof *g));
  if (g == nullptr) {
    snprintf(why, len, "cannot allocate the CUDA device handle");
    return 1;
  }
  g->ordinal = ordinal;
  g->holds = 1;
  cudaError_t err;
  cublasStatus_t st;
  if ((err = cudaSetDevice(ordinal)) != cudaSuccess)
    return open_fail(g, why, len, "cudaSetDevice(%d): %s", ordinal,
                     cudaGetErrorString(err));
  cudaDeviceProp prop;
  if ((err = cudaGetDeviceProperties(&prop, ordinal)) != cudaSuccess)
    return open_fail(g, why, len, "cudaGetDeviceProperties(%d): %s", ordinal,
                     cudaGetErrorString(err));
  snprintf(g->name, sizeof g->name, "%s", prop.name);
  int pools = 0;
  if ((err = cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported,
                                    ordinal)) != cudaSuccess)
    return open_fail(g, why, len,
                     "cudaDeviceGetAttribute(MemoryPoolsSupported): %s",
                     cudaGetErrorString(err));
  if (!pools)
    return open_fail(g, why, len,
                     "CUDA device %d (%s) does not support stream-ordered "
                     "memory pools (cudaMallocAsync)",
                     ordinal, g->name);
  if ((err = cudaDeviceGetDefaultMemPool(&g->pool, ordinal)) != cudaSuccess)
    return open_fail(g, why, len, "cudaDeviceGetDefaultMemPool(%d): %s",
                     ordinal, cudaGetErrorString(err));
  // Keep freed memory in the pool for reuse instead of returning it to the
  // device at every synchronization.
  uint64_t threshold = UINT64_MAX;
  if ((err = cudaMemPoolSetAttribute(g->pool, cudaMemPoolAttrReleaseThreshold,
                                     &threshold)) != cudaSuccess)
    return open_fail(g, why, len,
                     "cudaMemPoolSetAttribute(ReleaseThreshold): %s",
                     cudaGetErrorString(err));
  if ((err = cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking)) !=
      cudaSuccess)
    return open_fail(g, why, len, "cudaStreamCreateWithFlags: %s",
                     cudaGetErrorString(err));
  if ((st = cublasCreate(&g->blas)) != CUBLAS_STATUS_SUCCESS) {
    g->blas = nullptr;
    return open_fail(g, why, len, "cublasCreate: %s", cublasGetStatusName(st));
  }
  if ((st = cublasSetStream(g->blas, g->stream)) != CUBLAS_STATUS_SUCCESS)
    return open_fail(g, why, len, "cublasSetStream: %s",
                     cublasGetStatusName(st));
  // Strict FP32/FP64 arithmetic: no TF32 or other reduced-precision paths.
  if ((st = cublasSetMathMode(g->blas, CUBLAS_DEFAULT_MATH)) !=
      CUBLAS_STATUS_SUCCESS)
    return open_fail(g, why, len, "cublasSetMathMode: %s",
                     cublasGetStatusName(st));
  *out = g;
  return 0;
}

extern "C" void cpk__gpu_close(cpk__gpu *g) {
  if (g != nullptr)
    cpk__gpu_let_go(g);
}

extern "C" void cpk__gpu_hold(cpk__gpu *g) {
  __atomic_add_fetch(&g->holds, 1, __ATOMIC_RELAXED);
}

extern "C" void cpk__gpu_let_go(cpk__gpu *g) {
  if (__atomic_sub_fetch(&g->holds, 1, __ATOMIC_ACQ_REL) != 0)
    return;
  // Let queued work (and stream-ordered frees) finish first.
  if (cudaSetDevice(g->ordinal) == cudaSuccess)
    (void)cudaStreamSynchronize(g->stream);
  release(g);
}

extern "C" const char *cpk__gpu_name(const cpk__gpu *g) { return g->name; }

extern "C" void *cpk__gpu_alloc(cpk__gpu *g, size_t bytes, char *why,
                                size_t len) {
  // 0 bytes still gets a distinct, valid pointer.
  const size_t n = bytes > 0 ? bytes : 1;
  void *p = nullptr;
  cudaError_t err = cudaSetDevice(g->ordinal);
  if (err == cudaSuccess) {
    err = cudaMallocAsync(&p, n, g->stream);
    if (err == cudaErrorMemoryAllocation) {
      // Out of memory: wait for pending frees, return the pool's unused
      // memory to the device (other allocators may need it) and retry.
      (void)cudaGetLastError();
      err = cudaStreamSynchronize(g->stream);
      if (err == cudaSuccess)
        err = cudaMemPoolTrimTo(g->pool, 0);
      if (err == cudaSuccess)
        err = cudaMallocAsync(&p, n, g->stream);
    }
  }
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    snprintf(why, len, "cudaMallocAsync(%zu bytes) on CUDA device %d: %s",
             bytes, g->ordinal, cudaGetErrorString(err));
    return nullptr;
  }
  return p;
}

extern "C" void cpk__gpu_free(cpk__gpu *g, void *p) {
  if (p == nullptr || !enter(g))
    return;
  check(g, cudaFreeAsync(p, g->stream), "cudaFreeAsync");
}

// A copy of `bytes` on the stream, waited for; 0 on success, else 1 with the
// failure recorded. (cudaMemcpyDefault: the pointers tell the direction.)
static int copy_wait(cpk__gpu *g, void *dst, const void *src, size_t bytes,
                     const char *what) {
  if (bytes == 0)
    return 0;
  if (!enter(g))
    return 1;
  char step[64];
  snprintf(step, sizeof step, "cudaMemcpyAsync (%s)", what);
  if (!check(g, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, g->stream),
             step))
    return 1;
  snprintf(step, sizeof step, "cudaStreamSynchronize (%s)", what);
  return check(g, cudaStreamSynchronize(g->stream), step) ? 0 : 1;
}

extern "C" int cpk__gpu_upload(cpk__gpu *g, void *dst, const void *src,
                               size_t bytes) {
  return copy_wait(g, dst, src, bytes, "upload");
}

extern "C" int cpk__gpu_download(cpk__gpu *g, void *dst, const void *src,
                                 size_t bytes) {
  return copy_wait(g, dst, src, bytes, "download");
}

extern "C" void cpk__gpu_copy_d2d(cpk__gpu *g, void *dst, const void *src,
                                  size_t bytes) {
  if (bytes == 0 || dst == src || !enter(g))
    return;
  check(g,
        cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g->stream),
        "cudaMemcpyAsync (device to device)");
}

extern "C" void cpk__gpu_fill_bytes(cpk__gpu *g, void *p, int value,
                                    size_t bytes) {
  if (bytes == 0 || !enter(g))
    return;
  check(g, cudaMemsetAsync(p, value, bytes, g->stream), "cudaMemsetAsync");
}

extern "C" int cpk__gpu_sync(cpk__gpu *g, char *why, size_t len) {
  if (enter(g))
    check(g, cudaStreamSynchronize(g->stream), "cudaStreamSynchronize");
  if (!g->failed)
    return 0;
  snprintf(why, len, "%s", g->error);
  g->error[0] = '\0';
  g->failed = 0;
  return 1;
}
