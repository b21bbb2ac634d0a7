/* sum_grad_squared.c: the second moment P.sum_grad_squared (shape S),
 * sum_n grad_batch[n]^2 (BackPACK's SumGradSquared); see site.c for the
 * closed form of linear layers. */
#include <stdio.h>

#include "extension.h"
#include "results.h"

static int sgs_param(cpk__param_site *s) {
  const cpk_tensor *sgs;
  char name[96];
  int rc = cpk__site_sum_grad_squared(s, &sgs);
  if (rc != CPK_OK)
    return rc;
  snprintf(name, sizeof name, "%s.sum_grad_squared", s->name);
  /* The results take the tensor; variance may still read it. */
  if ((rc = cpk__results_add(s->results, name, s->sum_grad_squared)) !=
      CPK_OK) {
    s->sum_grad_squared = NULL; /* freed by cpk__results_add */
    return rc;
  }
  s->sum_grad_squared_in_results = 1;
  return CPK_OK;
}

const cpk__extension cpk__sum_grad_squared_ext = {"sum_grad_squared", CPK__NEED_PER_SAMPLE,
                                                  sgs_param};
