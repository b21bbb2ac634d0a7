/*
 * sqrt_ggn.c: the square-root factor of the GGN, exact and Monte Carlo
 * (BackPACK's SqrtGGNExact, SqrtGGNMC): P.sqrt_ggn_exact [V, N, *S] =
 * J_theta^T S with S the backpropagated square root of the loss Hessian.
 * Stacked over parameters (flattened per column and sample) the factor F
 * gives the GGN as F F^T.
 */
#include "extension.h"

static int sqrt_ggn(cpk__param_site *s, const cpk_tensor *S,
                    const char *suffix) {
  const cpk__param *p = &s->layer->params[s->p];
  int64_t shape[CPK_MAX_DIMS + 2] = {S->shape[0], s->n};
  for (int i = 0; i < p->ndim; i++)
    shape[i + 2] = p->shape[i];
  cpk_tensor *out;
  /* param_jac_t_mat (beta 0) writes every element */
  int rc = cpk__site_result_uninit(s, suffix, p->ndim + 2, shape, &out);
  if (rc == CPK_OK)
    rc = cpk__site_block_param_jac(s, S, 0, s->n, out);
  return rc;
}

static int sqrt_ggn_exact(cpk__param_site *s) {
  return sqrt_ggn(s, s->sqrt_exact, "sqrt_ggn_exact");
}
static int sqrt_ggn_mc(cpk__param_site *s) {
  return sqrt_ggn(s, s->sqrt_mc, "sqrt_ggn_mc");
}

const cpk__extension cpk__sqrt_ggn_exact_ext = {
    "sqrt_ggn_exact", CPK__NEED_SQRT_EXACT | CPK__NEED_SQRT_CONTRACT,
    sqrt_ggn_exact};
const cpk__extension cpk__sqrt_ggn_mc_ext = {"sqrt_ggn_mc", CPK__NEED_SQRT_MC,
                                             sqrt_ggn_mc};
