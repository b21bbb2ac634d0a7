/* variance.c: P.variance (shape S) = sum_grad_squared / N - (grad / N)^2,
 * the biased variance over the rescaled per-sample gradients (BackPACK's
 * Variance). */
#include "extension.h"

static int variance_param(cpk__param_site *s) {
  const cpk_tensor *sgs;
  cpk_tensor *out;
  int rc = cpk__site_sum_grad_squared(s, &sgs);
  if (rc == CPK_OK)
    rc = cpk__site_result_like(s, "variance", -1, &out);
  if (rc != CPK_OK)
    return rc;
  const double inv_n = 1.0 / (double)s->n;
  const int64_t k = cpk_tensor_numel(sgs);
  for (int64_t i = 0; i < k; i++) {
    double mean = cpk_tensor_get(s->grad, i) * inv_n;
    cpk_tensor_set(out, i, cpk_tensor_get(sgs, i) * inv_n - mean * mean);
  }
  return CPK_OK;
}

const cpk__extension cpk__variance_ext = {"variance", 0, variance_param};
