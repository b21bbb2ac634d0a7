/* ops_hessian.c: the CPU (reference) versions of the operations of
 * ops_hessian.h; a context on the CUDA device hands each one to its CUDA
 * twin (gpu/hessian_cuda.cu). */
#include "config.h"

#include <math.h>
#include <omp.h>

#include "ops_hessian.h"
#ifdef CPK_HAVE_CUDA
#include "hessian_cuda.h"
#endif
#include "ops_dispatch.h"

#define CPK_T float
#define CPK_SFX f32
#include "kernels/hessian.inc"
#undef CPK_T
#undef CPK_SFX

#define CPK_T double
#define CPK_SFX f64
#include "kernels/hessian.inc"
#undef CPK_T
#undef CPK_SFX

void cpk__fill(const cpk_context *ctx, cpk_dtype dt, int64_t n, double value,
               void *x) {
  ON_CUDA(ctx, cpk__cuda_fill(ctx->gpu, F64(dt), n, value, x));
  if (dt == CPK_F32)
    fill_f32(n, value, x);
  else
    fill_f64(n, value, x);
}

void cpk__lazy_rows(const cpk_context *ctx, cpk_dtype dt, int64_t k, int64_t n,
                    int64_t d, const void *s, const void *w, const void *e,
                    void *blk, void *sign) {
  ON_CUDA(ctx,
          cpk__cuda_lazy_rows(ctx->gpu, F64(dt), k, n, d, s, w, e, blk, sign));
  if (dt == CPK_F32)
    lazy_rows_f32(k, n, d, s, w, e, blk, sign);
  else
    lazy_rows_f64(k, n, d, s, w, e, blk, sign);
}

void cpk__diag_to_factor(const cpk_context *ctx, cpk_dtype dt, int64_t n,
                         int64_t d, const void *dv, void *blk, void *sign) {
  ON_CUDA(ctx,
          cpk__cuda_diag_to_factor(ctx->gpu, F64(dt), n, d, dv, blk, sign));
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
