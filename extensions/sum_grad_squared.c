/* sum_grad_squared.c: the second moment P.sum_grad_squared (shape S),
 * sum_n grad_batch[n]^2 (BackPACK's SumGradSquared); see site.c for the
 * closed form of linear layers. */
#include "extension.h"

static int sgs_param(cpk__param_site *s) {
  const cpk_tensor *sgs;
  int rc = cpk__site_sum_grad_squared(s, &sgs);
  /* The results take the tensor; variance may still read it. */
  return rc == CPK_OK ? cpk__site_result_take(s, "sum_grad_squared",
                                              &s->sum_grad_squared,
                                              &s->sum_grad_squared_in_results)
                      : rc;
}

const cpk__extension cpk__sum_grad_squared_ext = {"sum_grad_squared", CPK__NEED_PER_SAMPLE,
                                                  sgs_param};
