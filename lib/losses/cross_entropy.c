/*
 * cross_entropy.c: nn.CrossEntropyLoss with class-index targets.
 * f is [N, C, *S] (S: optional spatial axes), the target [N, *S] holds
 * integers in [0, C). With p = softmax over C at each (n, s):
 *   l_{n,s} = logsumexp(f_{n,:,s}) - f_{n,y,s},  dL/df = c (p - onehot(y)).
 */
#include <math.h>

#include "loss.h"

/* Positions per sample: the product of the spatial axes. */
static int64_t spatial(const cpk_tensor *f) {
  int64_t s = 1;
  for (int i = 2; i < f->ndim; i++)
    s *= f->shape[i];
  return s;
}

static int64_t ce_mean_count(const cpk_tensor *f) {
  return f->shape[0] * spatial(f);
}

static int ce_check_target(const cpk_tensor *f, const cpk_tensor *target) {
  char a[128], b[128], t[128];
  if (f->ndim < 2)
    return cpk__fail(CPK_ESHAPE,
                     "cross_entropy expects a model output of shape (N, C, ...)"
                     ", got %s",
                     cpk_shape_str(a, sizeof a, f->ndim, f->shape));
  if (target->dtype != CPK_I64 && target->dtype != CPK_I32)
    return cpk__fail(CPK_EINVAL,
                     "target: cross_entropy expects integer class indices "
                     "(int64 or int32), got %s",
                     cpk_dtype_name(target->dtype));
  int same = target->ndim == f->ndim - 1 && target->shape[0] == f->shape[0];
  for (int i = 1; same && i < target->ndim; i++)
    same = target->shape[i] == f->shape[i + 1];
  if (!same) {
    int64_t want[CPK_MAX_DIMS];
    want[0] = f->shape[0];
    for (int i = 2; i < f->ndim; i++)
      want[i - 1] = f->shape[i];
    return cpk__fail(CPK_ESHAPE,
                     "target: cross_entropy expects class indices of shape %s "
                     "for a model output of shape %s, got %s",
                     cpk_shape_str(a, sizeof a, f->ndim - 1, want),
                     cpk_shape_str(b, sizeof b, f->ndim, f->shape),
                     cpk_shape_str(t, sizeof t, target->ndim, target->shape));
  }
  int64_t n = cpk_tensor_numel(target), classes = f->shape[1];
  for (int64_t i = 0; i < n; i++) {
    double y = cpk_tensor_get(target, i);
    if (y < 0 || y >= (double)classes)
      return cpk__fail(CPK_ERANGE,
                       "target: class index %lld at flat index %lld is out of "
                       "range [0, %lld)",
                       (long long)y, (long long)i, (long long)classes);
  }
  return CPK_OK;
}

static int ce_value_grad(cpk_context *ctx, double c, const cpk_tensor *f,
                         const cpk_tensor *target, double *loss,
                         cpk_tensor *grad) {
  const int64_t n = f->shape[0], classes = f->shape[1], s = spatial(f);
  double total = 0.0;
  for (int64_t i = 0; i < n; i++)
    for (int64_t p = 0; p < s; p++) {
      const int64_t base = i * classes * s + p;
      double mx = -INFINITY, z = 0.0;
      for (int64_t k = 0; k < classes; k++)
        mx = fmax(mx, cpk_tensor_get(f, base + k * s));
      for (int64_t k = 0; k < classes; k++)
        z += exp(cpk_tensor_get(f, base + k * s) - mx);
      const int64_t y = (int64_t)cpk_tensor_get(target, i * s + p);
      total += mx + log(z) - cpk_tensor_get(f, base + y * s);
      for (int64_t k = 0; k < classes; k++) {
        double pk = exp(cpk_tensor_get(f, base + k * s) - mx) / z;
        cpk_tensor_set(grad, base + k * s, c * (pk - (k == y ? 1.0 : 0.0)));
      }
    }
  *loss = c * total;
  return CPK_OK;
}

const cpk__loss_def cpk__cross_entropy_loss = {
    .kind = CPK_LOSS_CROSS_ENTROPY,
    .name = "cross_entropy",
    .check_target = ce_check_target,
    .mean_count = ce_mean_count,
    .value_grad = ce_value_grad,
};
