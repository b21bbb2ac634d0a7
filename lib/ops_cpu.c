/* ops_cpu.c: the device operations. The CPU (reference) implementation is
 * here: BLAS for matrix products, OpenMP loops for the rest; a context on
 * the CUDA device hands each operation to its CUDA twin (gpu/ops_cuda.cu). */
#include "config.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "device.h"
#include "ops.h"
#ifdef CPK_HAVE_CUDA
#include "gpu_ops.h"
#endif
#include "ops_dispatch.h"

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
  ON_CUDA(ctx, cpk__cuda_gemm((ctx)->gpu, F64(dt), trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc));
  if (m == 0 || n == 0)
    return;
  enum CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  enum CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
#ifdef CPK_HAVE_DNNL
  if (dt == CPK_F32 && cpk__dnnl_sgemm(trans_a, trans_b, m, n, k, (float)alpha,
                                       a, lda, b, ldb, (float)beta, c,
                                       ldc) == CPK_OK)
    return;
#endif
  if (dt == CPK_F32)
    cblas_sgemm(CblasRowMajor, ta, tb, (blasint)m, (blasint)n, (blasint)k,
                (float)alpha, a, (blasint)lda, b, (blasint)ldb, (float)beta, c,
                (blasint)ldc);
  else
    cblas_dgemm(CblasRowMajor, ta, tb, (blasint)m, (blasint)n, (blasint)k,
                alpha, a, (blasint)lda, b, (blasint)ldb, beta, c, (blasint)ldc);
}

void cpk__gemm_strided(const cpk_context *ctx, cpk_dtype dt, int trans_a,
                       int trans_b, int64_t m, int64_t n, int64_t k,
                       double alpha, const void *a, int64_t lda,
                       int64_t stride_a, const void *b, int64_t ldb,
                       int64_t stride_b, double beta, void *c, int64_t ldc,
                       int64_t stride_c, int64_t count) {
  ON_CUDA(ctx, cpk__cuda_gemm_strided(ctx->gpu, F64(dt), trans_a, trans_b, m,
                                      n, k, alpha, a, lda, stride_a, b, ldb,
                                      stride_b, beta, c, ldc, stride_c,
                                      count));
  const size_t es = cpk_dtype_size(dt);
  if (count == 1) { /* BLAS's own threads, outside any parallel region */
    cpk__gemm(ctx, dt, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta,
              c, ldc);
    return;
  }
#pragma omp parallel for schedule(static) if (count > 1 && !omp_in_parallel())
  for (int64_t i = 0; i < count; i++)
    cpk__gemm(ctx, dt, trans_a, trans_b, m, n, k, alpha,
              (const char *)a + (size_t)(i * stride_a) * es, lda,
              (const char *)b + (size_t)(i * stride_b) * es, ldb, beta,
              (char *)c + (size_t)(i * stride_c) * es, ldc);
}

/* c[i, j] := c[j, i] below the diagonal, in tiles (both reads and writes
 * stay in cache). */
#define MIRROR_UPPER(T, n, c, ldc)                                             \
  do {                                                                         \
    const int64_t tile = 32, tiles = (n + tile - 1) / tile;                    \
    T *m = (T *)(c);                                                           \
    _Pragma("omp parallel for schedule(dynamic) if (n > 256)")                 \
    for (int64_t ti = 0; ti < tiles; ti++)                                     \
      for (int64_t tj = 0; tj <= ti; tj++)                                     \
        for (int64_t i = ti * tile; i < n && i < (ti + 1) * tile; i++)         \
          for (int64_t j = tj * tile; j < i && j < (tj + 1) * tile; j++)       \
            m[i * (ldc) + j] = m[j * (ldc) + i];                               \
  } while (0)

static void mirror_upper(cpk_dtype dt, int64_t n, void *c, int64_t ldc) {
  if (dt == CPK_F32)
    MIRROR_UPPER(float, n, c, ldc);
  else
    MIRROR_UPPER(double, n, c, ldc);
}

/* The upper triangle of C := alpha op(A) op(A)^T + beta C, one BLAS call. */
static void syrk_upper(cpk_dtype dt, int trans, int64_t n, int64_t k,
                       double alpha, const void *a, int64_t lda, double beta,
                       void *c, int64_t ldc) {
  const enum CBLAS_TRANSPOSE t = trans ? CblasTrans : CblasNoTrans;
  if (dt == CPK_F32)
    cblas_ssyrk(CblasRowMajor, CblasUpper, t, (blasint)n, (blasint)k,
                (float)alpha, a, (blasint)lda, (float)beta, c, (blasint)ldc);
  else
    cblas_dsyrk(CblasRowMajor, CblasUpper, t, (blasint)n, (blasint)k, alpha, a,
                (blasint)lda, beta, c, (blasint)ldc);
}

/* c[i, j] += sum_p part[p][i, j] over the upper triangle; parts [n, n]. */
static void add_upper(cpk_dtype dt, int64_t n, int64_t parts,
                      const void *part, void *c, int64_t ldc) {
#pragma omp parallel for schedule(dynamic, 16) if (n > 128)
  for (int64_t i = 0; i < n; i++)
    for (int64_t p = 0; p < parts; p++) {
      const int64_t off = p * n * n + i * n;
      if (dt == CPK_F32) {
        const float *src = (const float *)part + off;
        float *dst = (float *)c + i * ldc;
        for (int64_t j = i; j < n; j++)
          dst[j] += src[j];
      } else {
        const double *src = (const double *)part + off;
        double *dst = (double *)c + i * ldc;
        for (int64_t j = i; j < n; j++)
          dst[j] += src[j];
      }
    }
}

/* The upper triangle of C := alpha op(A) op(B)^T + beta C, a product the
 * caller knows to be symmetric, in row panels: panel [i0, i1) is
 * C[i0:i1, i0:n] = alpha op(A)[i0:i1, :] op(B)[i0:n, :]^T + beta C[i0:i1,
 * i0:n], one GEMM, with op(X) = X [n, k] (trans 0) or X^T for X [k, n]
 * (trans 1). The panels go to the threads one at a time, largest first,
 * each a single-threaded GEMM: with 16 panels that is 53% of the full
 * square's products, at the GEMM's rate. */
static void upper_panels(const cpk_context *ctx, cpk_dtype dt, int trans,
                         int64_t n, int64_t k, double alpha, const void *a,
                         int64_t lda, const void *b, int64_t ldb, double beta,
                         void *c, int64_t ldc, int64_t panels) {
  const size_t es = cpk_dtype_size(dt);
#pragma omp parallel for schedule(dynamic, 1) if (!omp_in_parallel())
  for (int64_t p = 0; p < panels; p++) {
    const int64_t i0 = p * n / panels, i1 = (p + 1) * n / panels;
    /* op(X)[i, :] is row i of X (trans 0) or column i (trans 1) */
    const char *ai = (const char *)a + (size_t)(trans ? i0 : i0 * lda) * es;
    const char *bi = (const char *)b + (size_t)(trans ? i0 : i0 * ldb) * es;
    cpk__gemm(ctx, dt, trans, !trans, i1 - i0, n - i0, k, alpha, ai, lda, bi,
              ldb, beta, (char *)c + (size_t)(i0 * ldc + i0) * es, ldc);
  }
}

/* Row panels of at least 64 rows, at most 16 of them; fewer than 4 do not
 * pay. */
static int64_t panel_count(int64_t n) { return n / 64 < 16 ? n / 64 : 16; }

void cpk__syrk(const cpk_context *ctx, cpk_dtype dt, int trans, int64_t n,
               int64_t k, double alpha, const void *a, int64_t lda, double beta,
               void *c, int64_t ldc) {
  /* On the GPU, and for a C too small for panels (panel_count) with few
   * products per entry (k < n/2), the GEMM's full square: faster than BLAS
   * syrk there. Otherwise with few products per entry the row panels
   * (n = 1000, k = 128: 0.63 ms against the full square's 1.15 ms and BLAS
   * syrk's 0.75 ms; float32, 2 threads); with many (n = 800, k = 25088)
   * BLAS syrk on each thread's share of k, below (81 ms against 104). */
  const int64_t panels = panel_count(n);
  if (cpk__on_cuda(ctx) || (2 * k < n && panels < 4)) {
    cpk__gemm(ctx, dt, trans, !trans, n, n, k, alpha, a, lda, a, lda, beta, c,
              ldc);
    return;
  }
  if (2 * k < n) {
    upper_panels(ctx, dt, trans, n, k, alpha, a, lda, a, lda, beta, c, ldc,
                 panels);
    mirror_upper(dt, n, c, ldc);
    return;
  }
  /* OpenBLAS threads a syrk over the rows of C, which leaves a small C
   * (n = 75 with k = 100,000: a convolution's input factor) on one core
   * much of the time. With several threads the k products are split
   * instead: each thread's part into its own [n, n] (at most 64 MiB in
   * all), then added. */
  const size_t es = cpk_dtype_size(dt);
  int64_t parts = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (parts > k / 256)
    parts = k / 256;
  char *part = NULL;
  if (parts > 1 && (size_t)(parts - 1) * (size_t)(n * n) * es <= (64u << 20) &&
      (part = cpk__malloc((size_t)(parts - 1) * (size_t)(n * n) * es)) == NULL)
    cpk_clear_error(); /* a failed scratch only costs the split */
  if (part == NULL) {
    syrk_upper(dt, trans, n, k, alpha, a, lda, beta, c, ldc);
  } else {
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t p = 0; p < parts; p++) {
      const int64_t k0 = p * k / parts, k1 = (p + 1) * k / parts;
      const char *ap = (const char *)a + (size_t)(trans ? k0 * lda : k0) * es;
      if (p == 0)
        syrk_upper(dt, trans, n, k1 - k0, alpha, ap, lda, beta, c, ldc);
      else
        syrk_upper(dt, trans, n, k1 - k0, alpha, ap, lda, 0.0,
                   part + (size_t)((p - 1) * n * n) * es, n);
    }
    add_upper(dt, n, parts - 1, part, c, ldc);
    cpk__free(part);
  }
  mirror_upper(dt, n, c, ldc);
}

void cpk__gemm_tn_symmetric(const cpk_context *ctx, cpk_dtype dt, int64_t n,
                            int64_t k, const void *a, int64_t lda,
                            const void *b, int64_t ldb, void *c, int64_t ldc) {
  /* Row panels where there are 4 (n = 1000, k = 500: 2.5 ms against 3.0
   * for the 10 blocks on and above the diagonal of a 4 x 4 split, and 4.6
   * for the full square; n = 3136, k = 1024: 65, 115 and 165 ms; float32,
   * 2 threads); smaller C, and on the GPU, the GEMM's full square. */
  const int64_t panels = panel_count(n);
  if (cpk__on_cuda(ctx) || panels < 4) {
    cpk__gemm(ctx, dt, 1, 0, n, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc);
    return;
  }
  upper_panels(ctx, dt, 1, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc, panels);
  mirror_upper(dt, n, c, ldc);
}

void cpk__copy_2d(const cpk_context *ctx, cpk_dtype dt, int64_t rows,
                  int64_t cols, const void *x, int64_t ldx, void *y,
                  int64_t ldy) {
  ON_CUDA(ctx, cpk__cuda_copy_2d((ctx)->gpu, F64(dt), rows, cols, x, ldx, y,
                                 ldy));
  const size_t es = cpk_dtype_size(dt);
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t i = 0; i < rows; i++)
    memcpy((char *)y + (size_t)(i * ldy) * es,
           (const char *)x + (size_t)(i * ldx) * es, (size_t)cols * es);
}

void cpk__copy(const cpk_context *ctx, cpk_dtype dt, int64_t n, const void *x,
               void *y) {
  ON_CUDA(ctx, cpk__cuda_copy((ctx)->gpu, F64(dt), n, x, y));
  if (x != y)
    memcpy(y, x, (size_t)n * cpk_dtype_size(dt));
}

void cpk__axpy(const cpk_context *ctx, cpk_dtype dt, int64_t n, double alpha,
               const void *x, void *y) {
  ON_CUDA(ctx, cpk__cuda_axpy((ctx)->gpu, F64(dt), n, alpha, x, y));
  if (dt == CPK_F32)
    axpy_f32(n, alpha, x, y);
  else
    axpy_f64(n, alpha, x, y);
}

void cpk__scale(const cpk_context *ctx, cpk_dtype dt, int64_t n, double alpha,
                void *x) {
  ON_CUDA(ctx, cpk__cuda_scale((ctx)->gpu, F64(dt), n, alpha, x));
  if (dt == CPK_F32)
    scale_f32(n, alpha, x);
  else
    scale_f64(n, alpha, x);
}

void cpk__sum_rows(const cpk_context *ctx, cpk_dtype dt, int64_t blocks,
                   int64_t rows, int64_t cols, const void *x, double beta,
                   void *out) {
  ON_CUDA(ctx, cpk__cuda_sum_rows((ctx)->gpu, F64(dt), blocks, rows, cols, x, beta, out));
  if (dt == CPK_F32)
    sum_rows_f32(blocks, rows, cols, x, beta, out);
  else
    sum_rows_f64(blocks, rows, cols, x, beta, out);
}

void cpk__mul_broadcast(const cpk_context *ctx, cpk_dtype dt, int64_t v,
                        int64_t m, const void *d, const void *in, void *out) {
  ON_CUDA(ctx, cpk__cuda_mul_broadcast((ctx)->gpu, F64(dt), v, m, d, in, out));
  if (dt == CPK_F32)
    mul_broadcast_f32(v, m, d, in, out);
  else
    mul_broadcast_f64(v, m, d, in, out);
}

void cpk__variance_of(const cpk_context *ctx, cpk_dtype dt, int64_t k,
                      double n, const void *sgs, const void *grad, void *out) {
  if (cpk__on_cuda(ctx)) { /* the device's ops */
    cpk__mul_broadcast(ctx, dt, 1, k, grad, grad, out);
    cpk__scale(ctx, dt, k, -1.0 / n, out);
    cpk__axpy(ctx, dt, k, 1.0, sgs, out);
    cpk__scale(ctx, dt, k, 1.0 / n, out);
    return;
  }
  if (dt == CPK_F32)
    variance_of_f32(k, n, sgs, grad, out);
  else
    variance_of_f64(k, n, sgs, grad, out);
}

void cpk__act_d1_mul(const cpk_context *ctx, cpk_dtype dt, cpk__act act,
                     double param, int64_t n, const void *x, const void *y,
                     const void *in, void *out) {
  ON_CUDA(ctx, cpk__cuda_act_d1_mul((ctx)->gpu, F64(dt), act, param, n, x, y,
                                    in, out));
  if (dt == CPK_F32)
    act_d1_mul_f32(act, param, n, x, y, in, out);
  else
    act_d1_mul_f64(act, param, n, x, y, in, out);
}

void cpk__act_eval(const cpk_context *ctx, cpk_dtype dt, cpk__act act,
                   double param, cpk__act_order order, int64_t n,
                   const void *x, const void *y, void *out) {
  ON_CUDA(ctx, cpk__cuda_act_eval((ctx)->gpu, F64(dt), act, param, order, n, x, y, out));
  if (dt == CPK_F32)
    act_eval_f32(act, param, order, n, x, y, out);
  else
    act_eval_f64(act, param, order, n, x, y, out);
}

void cpk__im2col(const cpk_context *ctx, cpk_dtype dt,
                 const cpk__im2col_geom *g, int64_t count, const void *x,
                 void *cols) {
  ON_CUDA(ctx, cpk__cuda_im2col((ctx)->gpu, F64(dt), g, count, x, cols));
  if (dt == CPK_F32)
    im2col_f32(g, count, x, cols);
  else
    im2col_f64(g, count, x, cols);
}

void cpk__col2im(const cpk_context *ctx, cpk_dtype dt,
                 const cpk__im2col_geom *g, int64_t count, const void *cols,
                 double beta, void *x) {
  ON_CUDA(ctx, cpk__cuda_col2im((ctx)->gpu, F64(dt), g, count, cols, beta, x));
  if (dt == CPK_F32)
    col2im_f32(g, count, cols, beta, x);
  else
    col2im_f64(g, count, cols, beta, x);
}

void cpk__im2col_transposed(const cpk_context *ctx, cpk_dtype dt,
                            const cpk__im2col_geom *g, int64_t count,
                            const void *y, void *cols) {
  ON_CUDA(ctx, cpk__cuda_im2col_transposed((ctx)->gpu, F64(dt), g, count, y, cols));
  if (dt == CPK_F32)
    im2col_transposed_f32(g, count, y, cols);
  else
    im2col_transposed_f64(g, count, y, cols);
}

void cpk__channel_bias(const cpk_context *ctx, cpk_dtype dt, int64_t count,
                       int64_t channels, int64_t m, const void *b, double beta,
                       void *y) {
  ON_CUDA(ctx, cpk__cuda_channel_bias((ctx)->gpu, F64(dt), count, channels, m, b, beta, y));
  if (dt == CPK_F32)
    channel_bias_f32(count, channels, m, b, beta, y);
  else
    channel_bias_f64(count, channels, m, b, beta, y);
}

void cpk__channel_sum(const cpk_context *ctx, cpk_dtype dt, int64_t count,
                      int64_t channels, int64_t m, const void *y, double beta,
                      void *out) {
  ON_CUDA(ctx, cpk__cuda_channel_sum((ctx)->gpu, F64(dt), count, channels, m, y, beta, out));
  if (dt == CPK_F32)
    channel_sum_f32(count, channels, m, y, beta, out);
  else
    channel_sum_f64(count, channels, m, y, beta, out);
}

void cpk__sq_accumulate(const cpk_context *ctx, cpk_dtype dt, int64_t v,
                        int64_t n, int64_t k, const void *x, const void *w,
                        int64_t w_stride, int collapse, void *y) {
  ON_CUDA(ctx, cpk__cuda_sq_accumulate((ctx)->gpu, F64(dt), v, n, k, x, w, w_stride, collapse, y));
  if (dt == CPK_F32)
    sq_accumulate_f32(v, n, k, x, w, w_stride, collapse, y);
  else
    sq_accumulate_f64(v, n, k, x, w, w_stride, collapse, y);
}

void cpk__outer_batch(const cpk_context *ctx, cpk_dtype dt, int64_t v,
                      int64_t n, int64_t m, int64_t k, const void *a,
                      const void *b, void *out) {
  ON_CUDA(ctx, cpk__cuda_outer_batch((ctx)->gpu, F64(dt), v, n, m, k, a, b, out));
  if (dt == CPK_F32)
    outer_batch_f32(v, n, m, k, a, b, out);
  else
    outer_batch_f64(v, n, m, k, a, b, out);
}

void cpk__row_sq_norms(const cpk_context *ctx, cpk_dtype dt, int64_t rows,
                       int64_t cols, const void *x, double beta, void *out) {
  ON_CUDA(ctx, cpk__cuda_row_sq_norms(ctx->gpu, F64(dt), rows, cols, x, beta,
                                      out));
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t r = 0; r < rows; r++) {
    double acc = 0.0;
    for (int64_t j = 0; j < cols; j++) {
      const double v = dt == CPK_F32 ? ((const float *)x)[r * cols + j]
                                     : ((const double *)x)[r * cols + j];
      acc += v * v;
    }
    if (dt == CPK_F32) {
      float *o = out;
      o[r] = (float)(beta == 0.0 ? acc : beta * o[r] + acc);
    } else {
      double *o = out;
      o[r] = beta == 0.0 ? acc : beta * o[r] + acc;
    }
  }
}
