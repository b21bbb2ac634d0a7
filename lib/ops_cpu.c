/* ops_cpu.c: the CPU (reference) implementation of the device operations:
 * BLAS for matrix products, OpenMP loops for the rest. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "ops.h"

#define CPK_T float
#define CPK_SFX f32
#define CPK_FN(name) name##f
#include "kernels/elementwise.inc"
#undef CPK_T
#undef CPK_SFX
#undef CPK_FN

#define CPK_T double
#define CPK_SFX f64
#define CPK_FN(name) name
#include "kernels/elementwise.inc"
#undef CPK_T
#undef CPK_SFX
#undef CPK_FN

#include "kernels/conv_box.h"

#define CPK_T float
#define CPK_SFX f32
#include "kernels/im2col.inc"
#undef CPK_T
#undef CPK_SFX

#define CPK_T double
#define CPK_SFX f64
#include "kernels/im2col.inc"
#undef CPK_T
#undef CPK_SFX

void cpk__gemm(const cpk_context *ctx, cpk_dtype dt, int trans_a, int trans_b,
               int64_t m, int64_t n, int64_t k, double alpha, const void *a,
               int64_t lda, const void *b, int64_t ldb, double beta, void *c,
               int64_t ldc) {
  (void)ctx;
  if (m == 0 || n == 0)
    return;
  enum CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  enum CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  if (dt == CPK_F32)
    cblas_sgemm(CblasRowMajor, ta, tb, (blasint)m, (blasint)n, (blasint)k,
                (float)alpha, a, (blasint)lda, b, (blasint)ldb, (float)beta, c,
                (blasint)ldc);
  else
    cblas_dgemm(CblasRowMajor, ta, tb, (blasint)m, (blasint)n, (blasint)k,
                alpha, a, (blasint)lda, b, (blasint)ldb, beta, c, (blasint)ldc);
}

void cpk__copy(const cpk_context *ctx, cpk_dtype dt, int64_t n, const void *x,
               void *y) {
  (void)ctx;
  if (x != y)
    memcpy(y, x, (size_t)n * cpk_dtype_size(dt));
}

void cpk__axpy(const cpk_context *ctx, cpk_dtype dt, int64_t n, double alpha,
               const void *x, void *y) {
  (void)ctx;
  if (dt == CPK_F32)
    axpy_f32(n, alpha, x, y);
  else
    axpy_f64(n, alpha, x, y);
}

void cpk__scale(const cpk_context *ctx, cpk_dtype dt, int64_t n, double alpha,
                void *x) {
  (void)ctx;
  if (dt == CPK_F32)
    scale_f32(n, alpha, x);
  else
    scale_f64(n, alpha, x);
}

void cpk__sum_rows(const cpk_context *ctx, cpk_dtype dt, int64_t blocks,
                   int64_t rows, int64_t cols, const void *x, double beta,
                   void *out) {
  (void)ctx;
  if (dt == CPK_F32)
    sum_rows_f32(blocks, rows, cols, x, beta, out);
  else
    sum_rows_f64(blocks, rows, cols, x, beta, out);
}

void cpk__mul_broadcast(const cpk_context *ctx, cpk_dtype dt, int64_t v,
                        int64_t m, const void *d, const void *in, void *out) {
  (void)ctx;
  if (dt == CPK_F32)
    mul_broadcast_f32(v, m, d, in, out);
  else
    mul_broadcast_f64(v, m, d, in, out);
}

void cpk__act_eval(const cpk_context *ctx, cpk_dtype dt, cpk__act act,
                   double param, cpk__act_order order, int64_t n,
                   const void *x, const void *y, void *out) {
  (void)ctx;
  if (dt == CPK_F32)
    act_eval_f32(act, param, order, n, x, y, out);
  else
    act_eval_f64(act, param, order, n, x, y, out);
}

void cpk__im2col(const cpk_context *ctx, cpk_dtype dt,
                 const cpk__im2col_geom *g, int64_t count, const void *x,
                 void *cols) {
  (void)ctx;
  if (dt == CPK_F32)
    im2col_f32(g, count, x, cols);
  else
    im2col_f64(g, count, x, cols);
}

void cpk__col2im(const cpk_context *ctx, cpk_dtype dt,
                 const cpk__im2col_geom *g, int64_t count, const void *cols,
                 double beta, void *x) {
  (void)ctx;
  if (dt == CPK_F32)
    col2im_f32(g, count, cols, beta, x);
  else
    col2im_f64(g, count, cols, beta, x);
}

void cpk__im2col_transposed(const cpk_context *ctx, cpk_dtype dt,
                            const cpk__im2col_geom *g, int64_t count,
                            const void *y, void *cols) {
  (void)ctx;
  if (dt == CPK_F32)
    im2col_transposed_f32(g, count, y, cols);
  else
    im2col_transposed_f64(g, count, y, cols);
}

void cpk__channel_bias(const cpk_context *ctx, cpk_dtype dt, int64_t count,
                       int64_t channels, int64_t m, const void *b, double beta,
                       void *y) {
  (void)ctx;
  if (dt == CPK_F32)
    channel_bias_f32(count, channels, m, b, beta, y);
  else
    channel_bias_f64(count, channels, m, b, beta, y);
}

void cpk__channel_sum(const cpk_context *ctx, cpk_dtype dt, int64_t count,
                      int64_t channels, int64_t m, const void *y, double beta,
                      void *out) {
  (void)ctx;
  if (dt == CPK_F32)
    channel_sum_f32(count, channels, m, y, beta, out);
  else
    channel_sum_f64(count, channels, m, y, beta, out);
}

void cpk__sq_accumulate(const cpk_context *ctx, cpk_dtype dt, int64_t v,
                        int64_t n, int64_t k, const void *x, const void *w,
                        int64_t w_stride, int collapse, void *y) {
  (void)ctx;
  if (dt == CPK_F32)
    sq_accumulate_f32(v, n, k, x, w, w_stride, collapse, y);
  else
    sq_accumulate_f64(v, n, k, x, w, w_stride, collapse, y);
}

void cpk__outer_batch(const cpk_context *ctx, cpk_dtype dt, int64_t v,
                      int64_t n, int64_t m, int64_t k, const void *a,
                      const void *b, void *out) {
  (void)ctx;
  if (dt == CPK_F32)
    outer_batch_f32(v, n, m, k, a, b, out);
  else
    outer_batch_f64(v, n, m, k, a, b, out);
}
