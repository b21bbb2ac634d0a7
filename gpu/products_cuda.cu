// products_cuda.cu: the CUDA twins of the forward-mode operations
// (products_cuda.h; the CPU references are lib/kernels/forward.inc, reached
// through lib/forward.c). Pure data movement (and one product per element),
// so the results equal the CPU's exactly.
#include <cstdint>

#include "kernels_cuda.cuh"
#include "products_cuda.h"

using cpk_cuda::blocks_for;
using cpk_cuda::check_launch;
using cpk_cuda::enter;
using cpk_cuda::kThreads;

namespace {

// Products are rounded as written (no contraction into an FMA).
template <typename T> __device__ inline T mul(T a, T b);
template <> __device__ inline float mul(float a, float b) {
  return __fmul_rn(a, b);
}
template <> __device__ inline double mul(double a, double b) {
  return __dmul_rn(a, b);
}

template <typename T>
__global__ void k_fwd_eye(int64_t c, int64_t n, int64_t d, int64_t i0,
                          const T *s, T *out) {
  CPK_CUDA_FOR(e, c * n) {
    const int64_t j = e / n, m = e % n;
    out[(j * n + m) * d + i0 + j] = s ? s[m * d + i0 + j] : (T)1;
  }
}

// One thread per element of the Jacobian's columns i0 .. i0+c-1.
template <typename T>
__global__ void k_fwd_scatter(int64_t c, int64_t n, int64_t dout, int64_t din,
                              int64_t i0, const T *r, T *jac) {
  CPK_CUDA_FOR(e, c * n * dout) {
    const int64_t j = e % c, mo = e / c; // mo = m * dout + o
    const int64_t m = mo / dout, o = mo % dout;
    jac[mo * din + i0 + j] = r[(j * n + m) * dout + o];
  }
}

template <typename T>
__global__ void k_rev_scatter(int64_t c, int64_t n, int64_t dout, int64_t din,
                              int64_t o0, const T *r, const T *s, T *jac) {
  CPK_CUDA_FOR(e, c * n * din) {
    const int64_t i = e % din, mj = e / din; // mj = m * c + j
    const int64_t m = mj / c, j = mj % c;
    const T x = r[(j * n + m) * din + i];
    jac[(m * dout + o0 + j) * din + i] = s ? mul(x, s[m * din + i]) : x;
  }
}

template <typename F> void by_type(int f64, F f) {
  if (f64)
    f(double());
  else
    f(float());
}

template <typename K, typename... A>
void launch(cpk__gpu *g, const char *name, int64_t total, K kernel,
            A... args) {
  kernel<<<blocks_for(total), kThreads, 0, g->stream>>>(args...);
  check_launch(g, name);
}

} // namespace

extern "C" void cpk__cuda_fwd_eye(cpk__gpu *g, int f64, int64_t c, int64_t n,
                                  int64_t d, int64_t i0, const void *s,
                                  void *out) {
  if (c <= 0 || n <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "fwd_eye", c * n, k_fwd_eye<T>, c, n, d, i0, (const T *)s,
           (T *)out);
  });
}

extern "C" void cpk__cuda_fwd_scatter(cpk__gpu *g, int f64, int64_t c,
                                      int64_t n, int64_t dout, int64_t din,
                                      int64_t i0, const void *r, void *jac) {
  if (c <= 0 || n <= 0 || dout <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "fwd_scatter", c * n * dout, k_fwd_scatter<T>, c, n, dout, din,
           i0, (const T *)r, (T *)jac);
  });
}

extern "C" void cpk__cuda_rev_scatter(cpk__gpu *g, int f64, int64_t c,
                                      int64_t n, int64_t dout, int64_t din,
                                      int64_t o0, const void *r, const void *s,
                                      void *jac) {
  if (c <= 0 || n <= 0 || din <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "rev_scatter", c * n * din, k_rev_scatter<T>, c, n, dout, din,
           o0, (const T *)r, (const T *)s, (T *)jac);
  });
}
