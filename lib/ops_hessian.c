/* ops_hessian.c: the CPU (reference) versions of the operations of
 * ops_hessian.h; a context on the CUDA device hands each one to its CUDA
 * twin (gpu/hessian_cuda.cu). */
#include "config.h"

#include <math.h>
#include <omp.h>

#include "ops_hessian.h"
#ifdef CPK_HAVE_CUDA
#include "hessian_cuda.h"
/* On a CUDA context, run `call` (the CUDA twin) and return. */
#define ON_CUDA(ctx, call)                                                     \
  do {                                                                         \
    if ((ctx) != NULL && (ctx)->device == CPK_DEVICE_CUDA) {                   \
      call;                                                                    \
      return;                                                                  \
    }                                                                          \
  } while (0)
#define F64(dt) ((dt) == CPK_F64)
#else
#define ON_CUDA(ctx, call) (void)(ctx)
#endif

/* The kernels for one element type T (suffix SFX). The square roots are
 * taken in double, as the host code they replace did (exact for float:
 * the double root rounds to the float one). */
#define CPK_HESSIAN_KERNELS(T, SFX)                                            \
  static void fill_##SFX(int64_t n, double value, T *x) {                      \
    const T v = (T)value;                                                      \
    _Pragma("omp parallel for simd schedule(static) if (n > 65536)")           \
    for (int64_t i = 0; i < n; i++)                                            \
      x[i] = v;                                                                \
  }                                                                            \
  static void lazy_rows_##SFX(int64_t k, int64_t n, int64_t d, const T *s,     \
                              const T *w, const T *e, T *blk, T *sign) {       \
    _Pragma("omp parallel for collapse(2) schedule(static) if (k * n * d > 65536)") \
    for (int64_t r = 0; r < k; r++)                                            \
      for (int64_t j = 0; j < n; j++) {                                        \
        const double sv = (double)s[j * k + r];                                \
        const T root = (T)sqrt(fabs(sv));                                      \
        const T *wr = w + r * d, *ej = e + j * d;                              \
        T *dst = blk + (r * n + j) * d;                                        \
        sign[r * n + j] = sv < 0 ? (T)-1 : (T)1;                               \
        for (int64_t i = 0; i < d; i++)                                        \
          dst[i] = (wr[i] * ej[i]) * root;                                     \
      }                                                                        \
  }                                                                            \
  static void diag_to_factor_##SFX(int64_t n, int64_t d, const T *dv, T *blk,  \
                                   T *sign) {                                  \
    _Pragma("omp parallel for collapse(2) schedule(static) if (n * d > 65536)") \
    for (int64_t i = 0; i < d; i++)                                            \
      for (int64_t j = 0; j < n; j++) {                                        \
        const double v = (double)dv[j * d + i];                                \
        sign[i * n + j] = v < 0 ? (T)-1 : (T)1;                                \
        blk[(i * n + j) * d + i] = (T)sqrt(fabs(v));                           \
      }                                                                        \
  }                                                                            \
  static void swap_outer_axes_##SFX(int64_t a, int64_t b, int64_t c,           \
                                    const T *x, T *y) {                        \
    _Pragma("omp parallel for collapse(2) schedule(static) if (a * b * c > 65536)") \
    for (int64_t k = 0; k < c; k++)                                            \
      for (int64_t j = 0; j < b; j++)                                          \
        for (int64_t i = 0; i < a; i++)                                        \
          y[(k * b + j) * a + i] = x[(i * b + j) * c + k];                     \
  }                                                                            \
  static void repeat_middle_##SFX(int64_t a, int64_t b, int64_t c, const T *x, \
                                  T *y) {                                      \
    _Pragma("omp parallel for collapse(2) schedule(static) if (a * b * c > 65536)") \
    for (int64_t i = 0; i < a; i++)                                            \
      for (int64_t j = 0; j < b; j++)                                          \
        for (int64_t k = 0; k < c; k++)                                        \
          y[(i * b + j) * c + k] = x[i * c + k];                               \
  }

CPK_HESSIAN_KERNELS(float, f32)
CPK_HESSIAN_KERNELS(double, f64)

void cpk__fill(const cpk_context *ctx, cpk_dtype dt, int64_t n, double value,
               void *x) {
  ON_CUDA(ctx, cpk__cuda_fill(ctx->gpu, F64(dt), n, value, x));
  if (dt == CPK_F32)
    fill_f32(n, value, x);
  else
    fill_f64(n, value, x);
}

void cpk__lazy_rows(const cpk_context *ctx, cpk_dtype dt, int64_t k,
                    int64_t n, int64_t d, const void *s, const void *w,
                    const void *e, void *blk, void *sign) {
  ON_CUDA(ctx, cpk__cuda_lazy_rows(ctx->gpu, F64(dt), k, n, d, s, w, e, blk,
                                   sign));
  if (dt == CPK_F32)
    lazy_rows_f32(k, n, d, s, w, e, blk, sign);
  else
    lazy_rows_f64(k, n, d, s, w, e, blk, sign);
}

void cpk__diag_to_factor(const cpk_context *ctx, cpk_dtype dt, int64_t n,
                         int64_t d, const void *dv, void *blk, void *sign) {
  ON_CUDA(ctx, cpk__cuda_diag_to_factor(ctx->gpu, F64(dt), n, d, dv, blk,
                                        sign));
  if (dt == CPK_F32)
    diag_to_factor_f32(n, d, dv, blk, sign);
  else
    diag_to_factor_f64(n, d, dv, blk, sign);
}

void cpk__swap_outer_axes(const cpk_context *ctx, cpk_dtype dt, int64_t a,
                          int64_t b, int64_t c, const void *x, void *y) {
  ON_CUDA(ctx, cpk__cuda_swap_outer_axes(ctx->gpu, F64(dt), a, b, c, x, y));
  if (dt == CPK_F32)
    swap_outer_axes_f32(a, b, c, x, y);
  else
    swap_outer_axes_f64(a, b, c, x, y);
}

void cpk__repeat_middle(const cpk_context *ctx, cpk_dtype dt, int64_t a,
                        int64_t b, int64_t c, const void *x, void *y) {
  ON_CUDA(ctx, cpk__cuda_repeat_middle(ctx->gpu, F64(dt), a, b, c, x, y));
  if (dt == CPK_F32)
    repeat_middle_f32(a, b, c, x, y);
  else
    repeat_middle_f64(a, b, c, x, y);
}
