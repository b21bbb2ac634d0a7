/*
 * diag_ggn.c: diagonal of the generalized Gauss-Newton matrix, exact and
 * Monte Carlo, summed over the batch or per sample (BackPACK's DiagGGNExact,
 * DiagGGNMC, BatchDiagGGNExact, BatchDiagGGNMC).
 *
 * With S [V, N, *out] the square root of the loss Hessian backpropagated to
 * the layer output, the parameter's diagonal is
 *   diag = sum_{v,n} (J_theta,n^T S[v,n])^2    (per sample: no sum over n).
 * Linear on [N, IN]: J_theta^T S[v,n] = S[v,n] x_n^T, so with
 * s2[n,o] = sum_v S[v,n,o]^2 the weight's diagonal is s2^T (X o X) and the
 * bias's sum_n s2[n]; other layers go through J_theta^T S in chunks of
 * samples.
 */
#include <string.h>

#include "extension.h"
#include "ops.h"

/* s2[n, k] := sum_v S[v, n, k]^2 over a block [V, N, K]. */
static int squares_over_columns(const cpk_tensor *S, int64_t n,
                                cpk_tensor **s2) {
  const int64_t v = S->shape[0], k = cpk_tensor_numel(S) / (v * n);
  int64_t shape[2] = {n, k};
  int rc = cpk_tensor_new(s2, S->dtype, 2, shape);
  if (rc != CPK_OK)
    return rc;
  for (int64_t c = 0; c < v; c++)
    for (int64_t i = 0; i < n * k; i++) {
      double e = cpk_tensor_get(S, c * n * k + i);
      cpk_tensor_set(*s2, i, cpk_tensor_get(*s2, i) + e * e);
    }
  return CPK_OK;
}

static int dense_linear(cpk__param_site *s, const cpk_tensor *S, int batch,
                        cpk_tensor *out) {
  const int64_t n = s->n, fi = s->x->shape[1];
  cpk_tensor *s2 = NULL, *x2 = NULL;
  int rc = squares_over_columns(S, n, &s2);
  const int64_t fo = rc == CPK_OK ? s2->shape[1] : 0;
  if (rc == CPK_OK && s->p == 1) { /* bias */
    if (batch)
      memcpy(out->data, s2->data, (size_t)(n * fo) * cpk_dtype_size(S->dtype));
    else
      cpk__sum_rows(s->ctx, S->dtype, 1, n, fo, s2->data, 0.0, out->data);
  } else if (rc == CPK_OK &&
             (rc = cpk_tensor_new(&x2, s->x->dtype, 2, s->x->shape)) ==
                 CPK_OK) {
    cpk__mul_broadcast(s->ctx, s->x->dtype, 1, n * fi, s->x->data, s->x->data,
                       x2->data);
    if (!batch) {
      cpk__gemm(s->ctx, S->dtype, 1, 0, fo, fi, n, 1.0, s2->data, fo, x2->data,
                fi, 0.0, out->data, fi);
    } else { /* out[n, o, i] = s2[n, o] x2[n, i]: a rank-one GEMM each */
      const size_t es = cpk_dtype_size(S->dtype);
      for (int64_t j = 0; j < n; j++)
        cpk__gemm(s->ctx, S->dtype, 1, 0, fo, fi, 1, 1.0,
                  (char *)s2->data + (size_t)(j * fo) * es, fo,
                  (char *)x2->data + (size_t)(j * fi) * es, fi, 0.0,
                  (char *)out->data + (size_t)(j * fo * fi) * es, fi);
    }
  }
  cpk_tensor_free(s2);
  cpk_tensor_free(x2);
  return rc;
}

/* Any layer: J_theta^T S in chunks of samples, squared and summed. */
static int generic(cpk__param_site *s, const cpk_tensor *S, int batch,
                   cpk_tensor *out) {
  const int64_t v = S->shape[0], k = cpk_tensor_numel(s->grad);
  const int64_t step = cpk__site_chunk_samples(s, v);
  const cpk__param *p = &s->layer->params[s->p];
  int64_t shape[CPK_MAX_DIMS + 2] = {v, step};
  memcpy(shape + 2, p->shape, (size_t)p->ndim * sizeof *shape);
  cpk_tensor *jt;
  int rc = cpk_tensor_new(&jt, S->dtype, p->ndim + 2, shape);
  for (int64_t first = 0; rc == CPK_OK && first < s->n; first += step) {
    const int64_t count = s->n - first < step ? s->n - first : step;
    jt->shape[1] = count;
    if ((rc = cpk__site_block_param_jac(s, S, first, count, jt)) != CPK_OK)
      break;
    for (int64_t c = 0; c < v; c++)
      for (int64_t j = 0; j < count; j++)
        for (int64_t i = 0; i < k; i++) {
          const double e = cpk_tensor_get(jt, (c * count + j) * k + i);
          const int64_t at = batch ? (first + j) * k + i : i;
          cpk_tensor_set(out, at, cpk_tensor_get(out, at) + e * e);
        }
  }
  cpk_tensor_free(jt);
  return rc;
}

static int diag_ggn(cpk__param_site *s, const cpk_tensor *S, int batch,
                    const char *suffix) {
  cpk_tensor *out;
  int rc = cpk__site_result_like(s, suffix, batch ? s->n : -1, &out);
  if (rc != CPK_OK)
    return rc;
  return cpk__site_is_dense_linear(s) ? dense_linear(s, S, batch, out)
                                      : generic(s, S, batch, out);
}

static int diag_ggn_exact(cpk__param_site *s) {
  return diag_ggn(s, s->sqrt_exact, 0, "diag_ggn_exact");
}
static int diag_ggn_mc(cpk__param_site *s) {
  return diag_ggn(s, s->sqrt_mc, 0, "diag_ggn_mc");
}
static int batch_diag_ggn_exact(cpk__param_site *s) {
  return diag_ggn(s, s->sqrt_exact, 1, "diag_ggn_exact_batch");
}
static int batch_diag_ggn_mc(cpk__param_site *s) {
  return diag_ggn(s, s->sqrt_mc, 1, "diag_ggn_mc_batch");
}

const cpk__extension cpk__diag_ggn_exact_ext = {
    "diag_ggn_exact", CPK__NEED_SQRT_EXACT, diag_ggn_exact};
const cpk__extension cpk__diag_ggn_mc_ext = {"diag_ggn_mc", CPK__NEED_SQRT_MC,
                                             diag_ggn_mc};
const cpk__extension cpk__batch_diag_ggn_exact_ext = {
    "batch_diag_ggn_exact", CPK__NEED_SQRT_EXACT, batch_diag_ggn_exact};
const cpk__extension cpk__batch_diag_ggn_mc_ext = {
    "batch_diag_ggn_mc", CPK__NEED_SQRT_MC, batch_diag_ggn_mc};
