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
  cpk__variance_of(s->ctx, out->dtype, cpk_tensor_numel(sgs), (double)s->n,
                   sgs->data, s->grad->data, out->data);
  return CPK_OK;
}

const cpk__extension cpk__variance_ext = {"variance", CPK__NEED_PER_SAMPLE,
                                          variance_param};
