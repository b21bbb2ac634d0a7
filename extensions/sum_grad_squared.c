/* sum_grad_squared.c: the second moment P.sum_grad_squared (shape S),
 * sum_n grad_batch[n]^2 (BackPACK's SumGradSquared); see site.c for the
 * closed form of linear layers. */
#include "extension.h"
#include "ops.h"

static int sgs_param(cpk__param_site *s) {
  const cpk_tensor *sgs;
  cpk_tensor *out;
  int rc = cpk__site_sum_grad_squared(s, &sgs);
  if (rc == CPK_OK)
    rc = cpk__site_result_like(s, "sum_grad_squared", -1, &out);
  if (rc == CPK_OK)
    cpk__copy(s->ctx, sgs->dtype, cpk_tensor_numel(sgs), sgs->data,
              out->data);
  return rc;
}

const cpk__extension cpk__sum_grad_squared_ext = {"sum_grad_squared", CPK__NEED_PER_SAMPLE,
                                                  sgs_param};
