/*
 * bce_with_logits.c: nn.BCEWithLogitsLoss on any number of outputs.
 * l = sum over outputs of max(f,0) - f y + log(1 + exp(-|f|)) (stable form
 * of -[y log s + (1-y) log(1-s)], s = sigmoid(f)); dL/df = c (s - y);
 * mean divides by every output element.
 */
#include <math.h>

#include "loss.h"
#include "../context.h"

static int64_t bce_mean_count(const cpk_tensor *f) {
  return cpk_tensor_numel(f);
}

static int bce_check_target(const cpk_tensor *f, const cpk_tensor *target) {
  return cpk__loss_check_float_target(&cpk__bce_with_logits_loss, f, target);
}

static double sigmoid(double x) {
  if (x >= 0)
    return 1.0 / (1.0 + exp(-x));
  double e = exp(x);
  return e / (1.0 + e);
}

static int bce_value_grad(cpk_context *ctx, double c, const cpk_tensor *f,
                          const cpk_tensor *target, double *loss,
                          cpk_tensor *grad) {
  int64_t m = cpk_tensor_numel(f);
  double total = 0.0;
  for (int64_t i = 0; i < m; i++) {
    double x = cpk_tensor_get(f, i), y = cpk_tensor_get(target, i);
    total += fmax(x, 0.0) - x * y + log1p(exp(-fabs(x)));
    cpk_tensor_set(grad, i, c * (sigmoid(x) - y));
  }
  *loss = c * total;
  return CPK_OK;
}

static int64_t bce_sqrt_columns(const cpk_tensor *f) {
  return cpk_tensor_numel(f) / f->shape[0];
}

/* The Hessian is diagonal, c s (1 - s) per output (s = sigmoid(f)):
 * out[v, n, j] = sqrt(c s_j (1 - s_j)) d_vj, one column per output. */
static int bce_sqrt_hessian(cpk_context *ctx, double c, const cpk_tensor *f,
                            const cpk_tensor *target, cpk_tensor *out) {
  const int64_t n = f->shape[0], d = bce_sqrt_columns(f);
  for (int64_t v = 0; v < d; v++)
    for (int64_t i = 0; i < n; i++) {
      double s = sigmoid(cpk_tensor_get(f, i * d + v));
      cpk_tensor_set(out, (v * n + i) * d + v, sqrt(c * s * (1.0 - s)));
    }
  return CPK_OK;
}

/* y_m ~ Bernoulli(s) per output; the loss gradient s - y_m, times
 * sqrt(c / M). */
static int bce_sqrt_hessian_mc(cpk_context *ctx, double c, const cpk_tensor *f,
                               int64_t m, cpk__rng *rng, cpk_tensor *out) {
  const int64_t total = cpk_tensor_numel(f), per = total / f->shape[0];
  const double scale = sqrt(c / (double)m);
  int64_t first, all;
  /* Draw-major over the whole batch: a shard skips the uniforms of the
   * samples before and after it in every draw. */
  cpk__context_shard(ctx, f->shape[0], &first, &all);
  for (int64_t v = 0; v < m; v++) {
    cpk__rng_skip(rng, first * per);
    for (int64_t i = 0; i < total; i++) {
      double s = sigmoid(cpk_tensor_get(f, i));
      double y = cpk__rng_uniform(rng) < s ? 1.0 : 0.0;
      cpk_tensor_set(out, v * total + i, scale * (s - y));
    }
    cpk__rng_skip(rng, (all - first - f->shape[0]) * per);
  }
  return CPK_OK;
}

/* c s (1 - s) u, elementwise. */
static int bce_hessian_mat(cpk_context *ctx, double c, const cpk_tensor *f,
                           const cpk_tensor *in, cpk_tensor *out) {
  const int64_t total = cpk_tensor_numel(f), v = cpk_tensor_numel(in) / total;
  for (int64_t i = 0; i < total; i++) {
    const double s = sigmoid(cpk_tensor_get(f, i)), h = c * s * (1.0 - s);
    for (int64_t col = 0; col < v; col++)
      cpk_tensor_set(out, col * total + i, h * cpk_tensor_get(in, col * total + i));
  }
  return CPK_OK;
}

const cpk__loss_def cpk__bce_with_logits_loss = {
    .kind = CPK_LOSS_BCE_WITH_LOGITS,
    .name = "bce_with_logits",
    .check_target = bce_check_target,
    .mean_count = bce_mean_count,
    .value_grad = bce_value_grad,
    .sqrt_columns = bce_sqrt_columns,
    .sqrt_hessian = bce_sqrt_hessian,
    .sqrt_hessian_mc = bce_sqrt_hessian_mc,
    .hessian_mat = bce_hessian_mat,
};
