/* batch_grad.c: per-sample gradients, P.grad_batch [N, *S]; with the mean
 * reduction they sum to the gradient (BackPACK's BatchGrad). */
#include <stdio.h>

#include "extension.h"
#include "results.h"

static int batch_grad_param(cpk__param_site *s) {
  const cpk_tensor *gb;
  char name[96];
  int rc = cpk__site_grad_batch(s, &gb);
  if (rc != CPK_OK)
    return rc;
  snprintf(name, sizeof name, "%s.grad_batch", s->name);
  /* The results take the tensor; the site keeps using it for the others. */
  if ((rc = cpk__results_add(s->results, name, s->grad_batch)) != CPK_OK) {
    s->grad_batch = NULL; /* freed by cpk__results_add */
    return rc;
  }
  s->grad_batch_in_results = 1;
  return CPK_OK;
}

const cpk__extension cpk__batch_grad_ext = {"batch_grad", CPK__NEED_GRAD_BATCH,
                                           batch_grad_param};
