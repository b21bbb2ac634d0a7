// hessian_cuda.cu: the CUDA twins of lib/ops_hessian.h (the exact
// Hessian's backward terms and KFRA's dense products). One thread per
// output element, grid-stride loops, 64-bit indices; no reductions, so every
// result equals the CPU reference (lib/ops_hessian.c) exactly, products
// rounded on their own as in ops_cuda.cu.
#include <cmath>
#include <cstdint>

#include "hessian_cuda.h"
#include "kernels_cuda.cuh"

using cpk_cuda::blocks_for;
using cpk_cuda::by_type;
using cpk_cuda::check_launch;
using cpk_cuda::enter;
using cpk_cuda::kThreads;
using cpk_cuda::launch;

namespace {

__device__ inline float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ inline double mul(double a, double b) { return __dmul_rn(a, b); }

// sqrt|v| of the CPU reference: taken in double, then rounded to T.
template <typename T> __device__ inline T root_of(T v) {
  return (T)sqrt(fabs((double)v));
}

template <typename T> __global__ void k_fill(int64_t n, T v, T *x) {
  CPK_CUDA_FOR(i, n) x[i] = v;
}

// blk [K, N, D]: element (r, j, i) = (w[r, i] e[j, i]) sqrt|s[j, r]|.
template <typename T>
__global__ void k_lazy_rows(int64_t k, int64_t n, int64_t d, const T *s,
                            const T *w, const T *e, T *blk) {
  CPK_CUDA_FOR(idx, k * n * d) {
    const int64_t i = idx % d, rj = idx / d, j = rj % n, r = rj / n;
    blk[idx] = mul(mul(w[r * d + i], e[j * d + i]), root_of(s[j * k + r]));
  }
}

// sign [K, N] (or [D, N]): element (r, j) = sign of src[j * stride + r].
template <typename T>
__global__ void k_signs(int64_t rows, int64_t n, int64_t stride, const T *src,
                        T *sign) {
  CPK_CUDA_FOR(idx, rows * n) {
    const int64_t j = idx % n, r = idx / n;
    sign[idx] = src[j * stride + r] < T(0) ? T(-1) : T(1);
  }
}

// blk [D, N, D]: element (i, j, i) = sqrt|dv[j, i]| (the rest untouched).
template <typename T>
__global__ void k_diag_roots(int64_t n, int64_t d, const T *dv, T *blk) {
  CPK_CUDA_FOR(idx, n * d) {
    const int64_t j = idx % n, i = idx / n;
    blk[(i * n + j) * d + i] = root_of(dv[j * d + i]);
  }
}

// y [C, B, A] from x [A, B, C], one thread per element of y.
template <typename T>
__global__ void k_swap_outer(int64_t a, int64_t b, int64_t c, const T *x,
                             T *y) {
  CPK_CUDA_FOR(idx, a * b * c) {
    const int64_t i = idx % a, kj = idx / a, j = kj % b, k = kj / b;
    y[idx] = x[(i * b + j) * c + k];
  }
}

// y [A, B, C] from x [A, C].
template <typename T>
__global__ void k_repeat_middle(int64_t a, int64_t b, int64_t c, const T *x,
                                T *y) {
  CPK_CUDA_FOR(idx, a * b * c) {
    const int64_t k = idx % c, i = idx / (b * c);
    y[idx] = x[i * c + k];
  }
}

} // namespace

extern "C" void cpk__cuda_fill(cpk__gpu *g, int f64, int64_t n, double value,
                               void *x) {
  if (n <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "fill", n, k_fill<T>, n, (T)value, (T *)x);
  });
}

extern "C" void cpk__cuda_lazy_rows(cpk__gpu *g, int f64, int64_t k,
                                    int64_t n, int64_t d, const void *s,
                                    const void *w, const void *e, void *blk,
                                    void *sign) {
  if (k <= 0 || n <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "lazy_rows", k * n * d, k_lazy_rows<T>, k, n, d, (const T *)s,
           (const T *)w, (const T *)e, (T *)blk);
    launch(g, "lazy_rows signs", k * n, k_signs<T>, k, n, k, (const T *)s,
           (T *)sign);
  });
}

extern "C" void cpk__cuda_diag_to_factor(cpk__gpu *g, int f64, int64_t n,
                                         int64_t d, const void *dv, void *blk,
                                         void *sign) {
  if (n <= 0 || d <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "diag_to_factor", n * d, k_diag_roots<T>, n, d, (const T *)dv,
           (T *)blk);
    launch(g, "diag_to_factor signs", d * n, k_signs<T>, d, n, d,
           (const T *)dv, (T *)sign);
  });
}

extern "C" void cpk__cuda_swap_outer_axes(cpk__gpu *g, int f64, int64_t a,
                                          int64_t b, int64_t c, const void *x,
                                          void *y) {
  if (a <= 0 || b <= 0 || c <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "swap_outer_axes", a * b * c, k_swap_outer<T>, a, b, c,
           (const T *)x, (T *)y);
  });
}

extern "C" void cpk__cuda_repeat_middle(cpk__gpu *g, int f64, int64_t a,
                                        int64_t b, int64_t c, const void *x,
                                        void *y) {
  if (a <= 0 || b <= 0 || c <= 0 || !enter(g))
    return;
  by_type(f64, [&](auto t) {
    using T = decltype(t);
    launch(g, "repeat_middle", a * b * c, k_repeat_middle<T>, a, b, c,
           (const T *)x, (T *)y);
  });
}
