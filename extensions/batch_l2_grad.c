/*
 * batch_l2_grad.c: squared norms of the per-sample gradients,
 * P.batch_l2 [N] = ||grad_batch[n]||^2 (BackPACK's BatchL2Grad).
 * Linear on [N, IN]: ||g_n x_n^T||^2 = ||g_n||^2 ||x_n||^2 (bias: ||g_n||^2),
 * without forming the gradients; otherwise over bounded chunks of them.
 */
#include "device.h"
#include "extension.h"
#include "ops.h"

typedef struct {
  cpk__param_site *site;
  cpk_tensor *out;
} norms_acc;

/* out[first + n] := ||chunk[n]||^2 for the samples of the chunk. */
static int add_chunk_norms(void *ud, int64_t first, const cpk_tensor *chunk) {
  const norms_acc *a = ud;
  const int64_t count = chunk->shape[0];
  cpk__row_sq_norms(a->site->ctx, chunk->dtype, count,
                    cpk_tensor_numel(chunk) / count, chunk->data, 0.0,
                    (char *)a->out->data +
                        (size_t)first * cpk_dtype_size(chunk->dtype));
  return CPK_OK;
}

static int batch_l2_param(cpk__param_site *s) {
  cpk_tensor *out, *xn = NULL;
  int rc = cpk__site_result(s, "batch_l2", 1, &s->n, &out);
  if (rc != CPK_OK)
    return rc;
  if (!cpk__site_is_dense_linear(s) || s->grad_batch != NULL) {
    norms_acc acc = {s, out};
    return cpk__site_foreach_chunk(s, add_chunk_norms, &acc);
  }
  const int64_t fo = s->g->shape[2], fi = s->x->shape[1];
  cpk__row_sq_norms(s->ctx, out->dtype, s->n, fo, s->g->data, 0.0, out->data);
  if (s->p == 0 && /* weight: times ||x_n||^2 */
      (rc = cpk__tensor_new_on(s->ctx, &xn, out->dtype, 1, &s->n)) == CPK_OK) {
    cpk__row_sq_norms(s->ctx, out->dtype, s->n, fi, s->x->data, 0.0, xn->data);
    cpk__mul_broadcast(s->ctx, out->dtype, 1, s->n, xn->data, out->data,
                       out->data);
  }
  cpk_tensor_free(xn);
  return rc;
}

const cpk__extension cpk__batch_l2_grad_ext = {"batch_l2_grad", CPK__NEED_PER_SAMPLE,
                                               batch_l2_param};
