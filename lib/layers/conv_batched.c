/*
 * conv_batched.c: the convolution core batched over images, for the CUDA
 * device, where a call per image (conv_common.c's CPU scheme) would cost a
 * kernel launch per image and GEMM. Images go in chunks whose unfolding
 * [chunk, G*kx, Ly] fits the context's work budget; per group, one
 * strided-batched GEMM covers the chunk (the weight shared: stride 0).
 * Notation as in conv_common.h (cpk__conv_dims).
 */
#include "conv_common.h"

/* Images per chunk: the unfolding of one image is G*kx*Ly elements. */
static int64_t chunk_images(const cpk_context *ctx, const cpk__conv_dims *d,
                            int64_t count) {
  const size_t one = (size_t)(d->g * d->kx * d->ly) * d->es;
  int64_t c = d->unfold ? (int64_t)(ctx->work_bytes / (one ? one : 1)) : count;
  return c < 1 ? 1 : c > count ? count : c;
}

/* The unfolding of `count` images x (or x itself without one); *buf is the
 * scratch it lives in (NULL when none was needed). */
static int unfold_chunk(const cpk__conv *s, const cpk__conv_dims *d,
                        const cpk_context *ctx, cpk_dtype dt, int64_t count,
                        const char *x, char **buf, const char **cols) {
  if (!d->unfold) {
    *cols = x;
    return CPK_OK;
  }
  if (*buf == NULL) {
    size_t bytes;
    int rc = cpk__mul_size((size_t)(d->g * d->kx * d->ly) * d->es,
                           (size_t)count, &bytes, "convolution unfolding");
    if (rc != CPK_OK)
      return rc;
    if ((*buf = cpk__scratch_alloc(ctx, bytes)) == NULL)
      return CPK_ENOMEM;
  }
  cpk__im2col(ctx, dt, &s->geom, count, x, *buf);
  *cols = *buf;
  return CPK_OK;
}

/* The stride between the unfoldings of consecutive images. */
static int64_t cols_stride(const cpk__conv_dims *d) {
  return d->unfold ? d->g * d->kx * d->ly : d->xsz;
}

int cpk__conv_apply_batched(const cpk__conv *s, const cpk_context *ctx,
                            cpk_dtype dt, int64_t count, const void *x,
                            const void *w, const void *b, double beta,
                            void *y) {
  const cpk__conv_dims d = cpk__conv_dims_of(s, dt);
  const int64_t step = chunk_images(ctx, &d, count);
  char *buf = NULL;
  int rc = CPK_OK;
  for (int64_t i0 = 0; i0 < count && rc == CPK_OK; i0 += step) {
    const int64_t c = count - i0 < step ? count - i0 : step;
    const char *xi = (const char *)x + (size_t)(i0 * d.xsz) * d.es, *cols;
    char *yi = (char *)y + (size_t)(i0 * d.ysz) * d.es;
    if ((rc = unfold_chunk(s, &d, ctx, dt, c, xi, &buf, &cols)) != CPK_OK)
      break;
    if (b) /* y := beta*y + b, then y += W . cols */
      cpk__channel_bias(ctx, dt, c, s->cy, d.ly, b, beta, yi);
    for (int64_t g = 0; g < d.g; g++) /* Y_i[g] := W[g] cols_i[g] */
      cpk__gemm_strided(ctx, dt, 0, 0, d.cyg, d.ly, d.kx, 1.0,
                        (const char *)w + (size_t)(g * d.cyg * d.kx) * d.es,
                        d.kx, 0, cols + (size_t)(g * d.kx * d.ly) * d.es,
                        d.ly, cols_stride(&d), b ? 1.0 : beta,
                        yi + (size_t)(g * d.cyg * d.ly) * d.es, d.ly, d.ysz,
                        c);
  }
  cpk__scratch_free(ctx, buf);
  return rc;
}

int cpk__conv_adjoint_batched(const cpk__conv *s, const cpk_context *ctx,
                              cpk_dtype dt, int64_t count, const void *y,
                              const void *w, const void *b, double beta,
                              void *x) {
  const cpk__conv_dims d = cpk__conv_dims_of(s, dt);
  const int64_t step = chunk_images(ctx, &d, count);
  const double acc = b ? 1.0 : beta;
  char *buf = NULL;
  if (d.unfold) {
    size_t bytes;
    int rc = cpk__mul_size((size_t)(d.g * d.kx * d.ly) * d.es, (size_t)step,
                           &bytes, "convolution unfolding");
    if (rc != CPK_OK)
      return rc;
    if ((buf = cpk__scratch_alloc(ctx, bytes)) == NULL)
      return CPK_ENOMEM;
  }
  for (int64_t i0 = 0; i0 < count; i0 += step) {
    const int64_t c = count - i0 < step ? count - i0 : step;
    const char *yi = (const char *)y + (size_t)(i0 * d.ysz) * d.es;
    char *xi = (char *)x + (size_t)(i0 * d.xsz) * d.es;
    /* x := beta*x (+ b); cols_i[g] [kx, Ly] := W[g]^T y_i[g]; x += fold */
    char *cols = d.unfold ? buf : xi;
    if (b)
      cpk__channel_bias(ctx, dt, c, s->cx, d.lx, b, beta, xi);
    for (int64_t g = 0; g < d.g; g++)
      cpk__gemm_strided(ctx, dt, 1, 0, d.kx, d.ly, d.cyg, 1.0,
                        (const char *)w + (size_t)(g * d.cyg * d.kx) * d.es,
                        d.kx, 0, yi + (size_t)(g * d.cyg * d.ly) * d.es, d.ly,
                        d.ysz, d.unfold ? 0.0 : acc,
                        cols + (size_t)(g * d.kx * d.ly) * d.es, d.ly,
                        cols_stride(&d), c);
    if (d.unfold)
      cpk__col2im(ctx, dt, &s->geom, c, cols, acc, xi);
  }
  cpk__scratch_free(ctx, buf);
  return CPK_OK;
}

/* out_i[g] [cyg, kx] := Y_i[g] cols_i[g]^T for the c images of a chunk,
 * out_i at out + i*wsz. */
static void weight_products(const cpk__conv_dims *d, const cpk_context *ctx,
                            cpk_dtype dt, int64_t c, const char *yi,
                            const char *cols, char *out) {
  for (int64_t g = 0; g < d->g; g++)
    cpk__gemm_strided(ctx, dt, 0, 1, d->cyg, d->kx, d->ly, 1.0,
                      yi + (size_t)(g * d->cyg * d->ly) * d->es, d->ly,
                      d->ysz, cols + (size_t)(g * d->kx * d->ly) * d->es,
                      d->ly, cols_stride(d), 0.0,
                      out + (size_t)(g * d->cyg * d->kx) * d->es, d->kx,
                      d->wsz, c);
}

int cpk__conv_weight_grad_batched(const cpk__conv *s, const cpk_context *ctx,
                                  cpk_dtype dt, int64_t v, int64_t n,
                                  const void *x, int x_has_v, const void *y,
                                  int y_has_v, int per_sample, double beta,
                                  void *out) {
  const cpk__conv_dims d = cpk__conv_dims_of(s, dt);
  const int64_t step = chunk_images(ctx, &d, n);
  char *buf = NULL, *part = NULL;
  int rc = CPK_OK;
  if (!per_sample) { /* per-image products of a chunk, then their sum */
    size_t bytes;
    rc = cpk__mul_size((size_t)(step * d.wsz), d.es, &bytes,
                       "convolution weight products");
    if (rc == CPK_OK && (part = cpk__scratch_alloc(ctx, bytes)) == NULL)
      rc = CPK_ENOMEM;
  }
  for (int64_t i0 = 0; i0 < n && rc == CPK_OK; i0 += step) {
    const int64_t c = n - i0 < step ? n - i0 : step;
    const char *cols = NULL;
    for (int64_t b = 0; b < v && rc == CPK_OK; b++) {
      const char *xb = (const char *)x +
                       (size_t)(((x_has_v ? b * n : 0) + i0) * d.xsz) * d.es;
      const char *yb = (const char *)y +
                       (size_t)(((y_has_v ? b * n : 0) + i0) * d.ysz) * d.es;
      if ((b == 0 || x_has_v) &&
          (rc = unfold_chunk(s, &d, ctx, dt, c, xb, &buf, &cols)) != CPK_OK)
        break;
      if (per_sample) {
        weight_products(&d, ctx, dt, c, yb, cols,
                        (char *)out + (size_t)((b * n + i0) * d.wsz) * d.es);
        continue;
      }
      weight_products(&d, ctx, dt, c, yb, cols, part);
      cpk__sum_rows(ctx, dt, 1, c, d.wsz, part, i0 == 0 ? beta : 1.0,
                    (char *)out + (size_t)(b * d.wsz) * d.es);
    }
  }
  cpk__scratch_free(ctx, buf);
  cpk__scratch_free(ctx, part);
  return rc;
}
