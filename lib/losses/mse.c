/*
 * mse.c: nn.MSELoss. l = sum over output elements of (f - y)^2;
 * dL/df = 2 c (f - y); mean divides by every output element.
 */
#include <math.h>

#include "loss.h"
#include "../context.h"

static int64_t mse_mean_count(const cpk_tensor *f) {
  return cpk_tensor_numel(f);
}

static int mse_check_target(const cpk_tensor *f, const cpk_tensor *target) {
  return cpk__loss_check_float_target(&cpk__mse_loss, f, target);
}

static int mse_value_grad(cpk_context *ctx, double c, const cpk_tensor *f,
                          const cpk_tensor *target, double *loss,
                          cpk_tensor *grad) {
  int64_t m = cpk_tensor_numel(f);
  double total = 0.0;
  for (int64_t i = 0; i < m; i++) {
    double r = cpk_tensor_get(f, i) - cpk_tensor_get(target, i);
    total += r * r;
    cpk_tensor_set(grad, i, 2.0 * c * r);
  }
  *loss = c * total;
  return CPK_OK;
}

static int64_t mse_sqrt_columns(const cpk_tensor *f) {
  return cpk_tensor_numel(f) / f->shape[0];
}

/* The Hessian of c (f - y)^2 summed is 2c I: out[v, n, j] = sqrt(2c) d_vj. */
static int mse_sqrt_hessian(cpk_context *ctx, double c, const cpk_tensor *f,
                            const cpk_tensor *target, cpk_tensor *out) {
  const int64_t n = f->shape[0], d = mse_sqrt_columns(f);
  for (int64_t v = 0; v < d; v++)
    for (int64_t i = 0; i < n; i++)
      cpk_tensor_set(out, (v * n + i) * d + v, sqrt(2.0 * c));
  return CPK_OK;
}

/* y_m ~ Normal(f, 1/2) per output; the loss gradient 2 (f - y_m) =
 * -sqrt(2) z (z standard normal) has second moment 2 I, times sqrt(c / M). */
static int mse_sqrt_hessian_mc(cpk_context *ctx, double c, const cpk_tensor *f,
                               int64_t m, cpk__rng *rng, cpk_tensor *out) {
  const int64_t total = cpk_tensor_numel(f), per = total / f->shape[0];
  const double scale = sqrt(2.0 * c / (double)m);
  int64_t first, all;
  /* Draw-major over the whole batch: a shard skips the normals (two
   * uniforms each) of the samples before and after it in every draw. */
  cpk__context_shard(ctx, f->shape[0], &first, &all);
  for (int64_t v = 0; v < m; v++) {
    cpk__rng_skip(rng, 2 * first * per);
    for (int64_t i = 0; i < total; i++)
      cpk_tensor_set(out, v * total + i, -scale * cpk__rng_normal(rng));
    cpk__rng_skip(rng, 2 * (all - first - f->shape[0]) * per);
  }
  return CPK_OK;
}

/* 2c u. */
static int mse_hessian_mat(cpk_context *ctx, double c, const cpk_tensor *f,
                           const cpk_tensor *in, cpk_tensor *out) {
  const int64_t m = cpk_tensor_numel(in);
  for (int64_t i = 0; i < m; i++)
    cpk_tensor_set(out, i, 2.0 * c * cpk_tensor_get(in, i));
  return CPK_OK;
}

const cpk__loss_def cpk__mse_loss = {
    .kind = CPK_LOSS_MSE,
    .name = "mse",
    .check_target = mse_check_target,
    .mean_count = mse_mean_count,
    .value_grad = mse_value_grad,
    .sqrt_columns = mse_sqrt_columns,
    .sqrt_hessian = mse_sqrt_hessian,
    .sqrt_hessian_mc = mse_sqrt_hessian_mc,
    .hessian_mat = mse_hessian_mat,
};
