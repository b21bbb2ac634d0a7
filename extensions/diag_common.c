/*
 * diag_common.c: diagonals of J_theta^T H J_theta at one parameter, where H
 * (the curvature at the layer output, per sample) is given as a factor
 * block S [V, N, *out] with optional signs, H_n = sum_v sign[v,n] S S^T, or
 * for linear layers on [N, IN] by its per-sample diagonal alone:
 *   linear weight:  diag[o, i] = sum_n h[n, o] x[n, i]^2,  bias: sum_n h[n,o]
 * because d y_n,o / d W_oi = x_n,i (and no other output depends on W_oi).
 * The linear form writes `out` ([*S], or [N, *S] per sample); the others
 * add to it.
 */
#include <string.h>

#include "device.h"
#include "diag_common.h"
#include "ops.h"

int cpk__rows_from_factor(const cpk_context *ctx, const cpk_tensor *S,
                          const cpk_tensor *sign, int64_t n, cpk_tensor **h) {
  const int64_t v = S->shape[0], k = cpk_tensor_numel(S) / (v * n);
  int64_t shape[2] = {n, k};
  int rc = cpk__tensor_new_on(ctx, h, S->dtype, 2, shape);
  if (rc == CPK_OK)
    cpk__sq_accumulate(ctx, S->dtype, v, n, k, S->data,
                       sign ? sign->data : NULL, n, 0, (*h)->data);
  return rc;
}

int cpk__diag_dense_linear(cpk__param_site *s, const cpk_tensor *h, int batch,
                           cpk_tensor *out) {
  const int64_t n = s->n, fi = s->x->shape[1], fo = h->shape[1];
  if (s->p == 1) { /* bias */
    if (batch)
      cpk__copy(s->ctx, h->dtype, n * fo, h->data, out->data);
    else
      cpk__sum_rows(s->ctx, h->dtype, 1, n, fo, h->data, 0.0, out->data);
    return CPK_OK;
  }
  cpk_tensor *x2;
  int rc = cpk__tensor_new_on(s->ctx, &x2, s->x->dtype, 2, s->x->shape);
  if (rc != CPK_OK)
    return rc;
  cpk__mul_broadcast(s->ctx, s->x->dtype, 1, n * fi, s->x->data, s->x->data,
                     x2->data);
  if (!batch)
    cpk__gemm(s->ctx, h->dtype, 1, 0, fo, fi, n, 1.0, h->data, fo, x2->data,
              fi, 0.0, out->data, fi);
  else /* out[n, o, i] = h[n, o] x2[n, i]: streamed, written once */
    cpk__outer_batch(s->ctx, h->dtype, 1, n, fo, fi, h->data, x2->data,
                     out->data);
  cpk_tensor_free(x2);
  return CPK_OK;
}

int cpk__diag_from_factor(cpk__param_site *s, const cpk_tensor *S,
                          const cpk_tensor *sign, int batch, cpk_tensor *out) {
  const int64_t v = S->shape[0], k = cpk_tensor_numel(s->grad);
  if (!batch && s->layer->kind->param_sq_sum != NULL) {
    /* summed squares straight from the layer, where it has a path */
    const int rc = s->layer->kind->param_sq_sum(
        s->layer, s->ctx, s->p, s->x, S, sign ? sign->data : NULL, s->n, out);
    if (rc != CPK__LAYER_DECLINED)
      return rc;
  }
  const int64_t step = cpk__site_chunk_samples(s, v);
  const cpk__param *p = &s->layer->params[s->p];
  int64_t shape[CPK_MAX_DIMS + 2] = {v, step};
  memcpy(shape + 2, p->shape, (size_t)p->ndim * sizeof *shape);
  cpk_tensor *jt;
  /* param_jac_t_mat (beta 0) writes every element */
  int rc =
      cpk__tensor_new_on_uninit(s->ctx, &jt, S->dtype, p->ndim + 2, shape);
  for (int64_t first = 0; rc == CPK_OK && first < s->n; first += step) {
    const int64_t count = s->n - first < step ? s->n - first : step;
    jt->shape[1] = count;
    if ((rc = cpk__site_block_param_jac(s, S, first, count, jt)) != CPK_OK)
      break;
    const size_t es = cpk_dtype_size(S->dtype);
    cpk__sq_accumulate(s->ctx, S->dtype, v, count, k, jt->data,
                       sign ? (const char *)sign->data + (size_t)first * es
                            : NULL,
                       s->n, !batch,
                       batch ? (char *)out->data + (size_t)(first * k) * es
                             : out->data);
  }
  cpk_tensor_free(jt);
  return rc;
}

int cpk__diag_from_diagonal(cpk__param_site *s, const cpk_tensor *d, int batch,
                            cpk_tensor *out) {
  cpk_tensor *x2 = NULL, *res = NULL, dblock;
  int64_t shape[CPK_MAX_DIMS + 1] = {1};
  memcpy(shape + 1, d->shape, (size_t)d->ndim * sizeof *shape);
  cpk__tensor_view(&dblock, d->dtype, d->data, d->ndim + 1, shape);
  int rc = cpk__tensor_new_on(s->ctx, &x2, s->x->dtype, s->x->ndim,
                              s->x->shape);
  if (rc == CPK_OK)
    rc = cpk__tensor_new_on(s->ctx, &res, out->dtype, out->ndim, out->shape);
  if (rc == CPK_OK) {
    cpk__mul_broadcast(s->ctx, s->x->dtype, 1, cpk_tensor_numel(x2),
                       s->x->data, s->x->data, x2->data);
    rc = s->layer->kind->param_jac_t_mat(s->layer, s->ctx, s->p, x2, &dblock,
                                         batch, 0.0, res);
  }
  if (rc == CPK_OK)
    cpk__axpy(s->ctx, out->dtype, cpk_tensor_numel(out), 1.0, res->data,
              out->data);
  cpk_tensor_free(x2);
  cpk_tensor_free(res);
  return rc;
}
