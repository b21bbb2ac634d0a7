/*
 * mse.c: nn.MSELoss. l = sum over output elements of (f - y)^2;
 * dL/df = 2 c (f - y); mean divides by every output element.
 */
#include "loss.h"

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

const cpk__loss_def cpk__mse_loss = {
    .kind = CPK_LOSS_MSE,
    .name = "mse",
    .check_target = mse_check_target,
    .mean_count = mse_mean_count,
    .value_grad = mse_value_grad,
};
