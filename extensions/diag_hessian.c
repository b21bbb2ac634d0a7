/*
 * diag_hessian.c: the diagonal of the Hessian of the loss with respect to
 * every parameter, summed or per sample (BackPACK's DiagHessian,
 * BatchDiagHessian). Exact: the GGN part plus the residual terms of every
 * activation with a second derivative, carried backward once per pass as
 * hessian_terms.h describes.
 */
#include "extension.h"
#include "hessian_terms.h"

/* The result; zeroed unless the layer is linear on [N, IN], whose diagonal
 * is written at once (cpk__diag_dense_linear) rather than added up. */
static int result(cpk__param_site *s, const char *suffix, int64_t lead,
                  cpk_tensor **out) {
  return cpk__site_is_dense_linear(s)
             ? cpk__site_result_like_uninit(s, suffix, lead, out)
             : cpk__site_result_like(s, suffix, lead, out);
}

static int diag_hessian(cpk__param_site *s) {
  cpk_tensor *out;
  int rc = result(s, "diag_h", -1, &out);
  return rc == CPK_OK ? cpk__hterms_param_diag(s->hterms, s, 0, out) : rc;
}

static int batch_diag_hessian(cpk__param_site *s) {
  cpk_tensor *out;
  int rc = result(s, "diag_h_batch", s->n, &out);
  return rc == CPK_OK ? cpk__hterms_param_diag(s->hterms, s, 1, out) : rc;
}

const cpk__extension cpk__diag_hessian_ext = {
    "diag_hessian", CPK__NEED_HESSIAN_TERMS, diag_hessian};
const cpk__extension cpk__batch_diag_hessian_ext = {
    "batch_diag_hessian", CPK__NEED_HESSIAN_TERMS, batch_diag_hessian};
