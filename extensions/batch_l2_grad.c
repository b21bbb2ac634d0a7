/*
 * batch_l2_grad.c: squared norms of the per-sample gradients,
 * P.batch_l2 [N] = ||grad_batch[n]||^2 (BackPACK's BatchL2Grad).
 * Linear on [N, IN]: ||g_n x_n^T||^2 = ||g_n||^2 ||x_n||^2 (bias: ||g_n||^2),
 * without forming the gradients; otherwise over bounded chunks of them.
 */
#include <stdio.h>

#include "extension.h"

/* out[n] := sum_k a[n, k]^2 for a [rows, cols]. */
static void row_sq_norms(const cpk_tensor *a, int64_t rows, int64_t cols,
                         int64_t first, double *out) {
  for (int64_t n = 0; n < rows; n++) {
    double acc = 0.0;
    for (int64_t k = 0; k < cols; k++) {
      double v = cpk_tensor_get(a, n * cols + k);
      acc += v * v;
    }
    out[first + n] = acc;
  }
}

static int add_chunk_norms(void *ud, int64_t first, const cpk_tensor *chunk) {
  int64_t count = chunk->shape[0];
  row_sq_norms(chunk, count, cpk_tensor_numel(chunk) / count, first, ud);
  return CPK_OK;
}

static int batch_l2_param(cpk__param_site *s) {
  cpk_tensor *out;
  int rc = cpk__site_result(s, "batch_l2", 1, &s->n, &out);
  if (rc != CPK_OK)
    return rc;
  double *norms = cpk__calloc((size_t)s->n * sizeof *norms);
  if (norms == NULL)
    return CPK_ENOMEM;
  if (cpk__site_is_dense_linear(s) && s->grad_batch == NULL) {
    const int64_t fo = s->g->shape[2], fi = s->x->shape[1];
    row_sq_norms(s->g, s->n, fo, 0, norms);
    if (s->p == 0) { /* weight: times ||x_n||^2 */
      double *xn = cpk__malloc((size_t)s->n * sizeof *xn);
      if (xn == NULL)
        rc = CPK_ENOMEM;
      else {
        row_sq_norms(s->x, s->n, fi, 0, xn);
        for (int64_t n = 0; n < s->n; n++)
          norms[n] *= xn[n];
      }
      cpk__free(xn);
    }
  } else {
    rc = cpk__site_foreach_chunk(s, add_chunk_norms, norms);
  }
  for (int64_t n = 0; rc == CPK_OK && n < s->n; n++)
    cpk_tensor_set(out, n, norms[n]);
  cpk__free(norms);
  return rc;
}

const cpk__extension cpk__batch_l2_grad_ext = {"batch_l2_grad", 0, batch_l2_param};
