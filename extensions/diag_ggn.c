/*
 * diag_ggn.c: diagonal of the generalized Gauss-Newton matrix, exact and
 * Monte Carlo, summed over the batch or per sample (BackPACK's DiagGGNExact,
 * DiagGGNMC, BatchDiagGGNExact, BatchDiagGGNMC).
 *
 * With S [V, N, *out] the square root of the loss Hessian backpropagated to
 * the layer output, the parameter's diagonal is
 *   diag = sum_{v,n} (J_theta,n^T S[v,n])^2    (per sample: no sum over n).
 * Linear layers on [N, IN] only need h[n,o] = sum_v S[v,n,o]^2
 * (diag_common.c); other layers go through J_theta^T S in chunks.
 */
#include "diag_common.h"

static int diag_ggn(cpk__param_site *s, const cpk_tensor *S, int batch,
                    const char *suffix) {
  cpk_tensor *out, *h;
  const int64_t lead = batch ? s->n : -1;
  int rc;
  if (!cpk__site_is_dense_linear(s))
    return (rc = cpk__site_result_like(s, suffix, lead, &out)) == CPK_OK
               ? cpk__diag_from_factor(s, S, NULL, batch, out)
               : rc;
  if ((rc = cpk__site_result_like_uninit(s, suffix, lead, &out)) != CPK_OK)
    return rc;
  if ((rc = cpk__rows_from_factor(s->ctx, S, NULL, s->n, &h)) == CPK_OK)
    rc = cpk__diag_dense_linear(s, h, batch, out);
  cpk_tensor_free(h);
  return rc;
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
