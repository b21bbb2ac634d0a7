/* batch_grad.c: per-sample gradients, P.grad_batch [N, *S]; with the mean
 * reduction they sum to the gradient (BackPACK's BatchGrad). */
#include "extension.h"

static int batch_grad_param(cpk__param_site *s) {
  const cpk_tensor *gb;
  int rc = cpk__site_grad_batch(s, &gb);
  /* The results take the tensor; the site keeps using it for the others. */
  return rc == CPK_OK ? cpk__site_result_take(s, "grad_batch", &s->grad_batch,
                                              &s->grad_batch_in_results)
                      : rc;
}

const cpk__extension cpk__batch_grad_ext = {"batch_grad", CPK__NEED_GRAD_BATCH,
                                           batch_grad_param};
