/* variance.c: P.variance (shape S) = sum_grad_squared / N - (grad / N)^2,
 * the biased variance over the rescaled per-sample gradients (BackPACK's
 * Variance). */
#include "extension.h"
#include "ops.h"

static int variance_param(cpk__param_site *s) {
  const cpk_tensor *sgs;
  cpk_tensor *out;
  int rc = cpk__site_sum_grad_squared(s, &sgs);
  if (rc == CPK_OK)
    rc = cpk__site_result_like_uninit(s, "variance", -1, &out);
  if (rc != CPK_OK)
    return rc;
  /* out = sgs / N - (grad / N)^2 = (sgs - grad^2 / N) / N */
  const int64_t k = cpk_tensor_numel(sgs);
  cpk__mul_broadcast(s->ctx, out->dtype, 1, k, s->grad->data, s->grad->data,
                     out->data);
  cpk__scale(s->ctx, out->dtype, k, -1.0 / (double)s->n, out->data);
  cpk__axpy(s->ctx, out->dtype, k, 1.0, sgs->data, out->data);
  cpk__scale(s->ctx, out->dtype, k, 1.0 / (double)s->n, out->data);
  return CPK_OK;
}

const cpk__extension cpk__variance_ext = {"variance", CPK__NEED_PER_SAMPLE,
                                          variance_param};
